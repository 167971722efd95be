"""/metrics through prometheus_client: declared on first use, samplers, and several processes on
one host summed through PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.metrics import Metrics


def test_counters_histograms_and_samplers_render_in_the_exposition_format() -> None:
    """What operators alert on shows up under its Prometheus name with its labels."""
    metrics = Metrics()
    metrics.inc("billing_triage_alerts_total", kind="usage_spike")
    metrics.inc("billing_triage_alerts_total", 2, kind="usage_spike")
    metrics.observe_ack(0.004)
    metrics.set_gauge("billing_triage_outbox_pending", 3)
    metrics.add_sampler(lambda: [("billing_triage_provider_calls_total", {"provider": "orb"}, 7)])

    text = metrics.render()

    assert 'billing_triage_alerts_total{kind="usage_spike"} 3.0' in text
    assert "billing_triage_ack_seconds_count 1.0" in text
    assert 'billing_triage_ack_seconds_bucket{le="0.005"} 1.0' in text
    assert "billing_triage_outbox_pending 3.0" in text
    assert 'billing_triage_provider_calls_total{provider="orb"} 7.0' in text
    assert metrics.value("billing_triage_alerts_total", kind="usage_spike") == 3


def test_a_metric_keeps_the_labels_it_was_declared_with() -> None:
    """A call site with other label names is a programming error, caught at once."""
    metrics = Metrics()
    metrics.inc("billing_triage_errors_total", kind="usage")
    with pytest.raises(ValueError, match="labels"):
        metrics.inc("billing_triage_errors_total", code="usage")


_CHILD = """
import sys
from bot.metrics import Metrics
m = Metrics()
m.inc("billing_triage_commands_total", float(sys.argv[1]))
if len(sys.argv) > 2:
    print(m.render())
"""


def test_replicas_on_one_host_are_summed_in_multiprocess_mode(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set, any process's /metrics shows every process's counts."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for value in ("2", "3"):
        subprocess.run([sys.executable, "-c", _CHILD, value], env=env, check=True)
    shown = subprocess.run(
        [sys.executable, "-c", _CHILD, "0", "render"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "billing_triage_commands_total 5.0" in shown

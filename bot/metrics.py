"""Metrics for `GET /metrics`, on `prometheus_client` (the reference client: exposition format,
histograms, and multiprocess aggregation when replicas share a host).

One registry per app (tests build many apps in one process). Metrics are declared on first use,
so call sites stay one line: `metrics.inc("billing_triage_alerts_total", kind="usage_spike")`.
A metric keeps the label names of its first use.

Several processes on one host (e.g. replicas sharing a machine): set `PROMETHEUS_MULTIPROC_DIR`
to an empty directory shared by them (before they start, cleaned between deployments); each
process then writes its values there and any process's `/metrics` shows the sum over all of
them (prometheus_client's multiprocess mode). Sampled values (`add_sampler`) stay per process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: (name, labels, value) triples read at render time, e.g. provider call counters.
Sample = tuple[str, dict[str, str], float]


class _Sampled(Collector):
    def __init__(self, sample: Callable[[], Iterable[Sample]], kind: str) -> None:
        self._sample = sample
        self._family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for name, labels, value in list(self._sample()):
            base = name.removesuffix("_total") if self._family is CounterMetricFamily else name
            family = families.get(base)
            if family is None:
                family = families[base] = self._family(
                    base, base.replace("_", " "), labels=sorted(labels)
                )
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()


class Metrics:
    """The app's metrics: counters, gauges and histograms declared on first use."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, tuple[Any, tuple[str, ...]]] = {}
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def _get(self, kind: type[Any], name: str, labels: dict[str, str], **kwargs: Any) -> Any:
        names = tuple(sorted(labels))
        found = self._metrics.get(name)
        if found is None:
            metric = kind(name, name.replace("_", " "), names, registry=self.registry, **kwargs)
            self._metrics[name] = (metric, names)
        else:
            metric, known = found
            if known != names:
                raise ValueError(f"metric {name} has labels {known}, not {names}")
        return metric.labels(**labels) if names else metric

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add to a counter (`name` ends in `_total`)."""
        self._get(Counter, name, labels).inc(value)
        key = (name, tuple(sorted(labels.items())))
        self._values[key] = self._values.get(key, 0.0) + value

    def value(self, name: str, **labels: str) -> float:
        """What this process has added to a counter so far (0 if never)."""
        return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        self._get(Gauge, name, labels, multiprocess_mode="livesum").set(value)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """Record a duration in a histogram (`name` ends in `_seconds`)."""
        self._get(Histogram, name, labels, buckets=DURATION_BUCKETS).observe(seconds)

    def observe_ack(self, seconds: float) -> None:
        """Record one Slack request's time to answer (ack)."""
        self._get(Histogram, "billing_triage_ack_seconds", {}, buckets=ACK_BUCKETS).observe(seconds)

    def add_sampler(
        self,
        sample: Callable[[], Iterable[Sample]],
        *,
        kind: Literal["counter", "gauge"] = "counter",
    ) -> None:
        """Values read at render time from elsewhere: counters (e.g. the provider HTTP clients'
        calls) or gauges (e.g. alert precision from the database)."""
        self.registry.register(_Sampled(sample, kind))

    def render(self) -> str:
        """The Prometheus exposition text (summed over processes in multiprocess mode)."""
        if os.environ.get(MULTIPROC_ENV):
            combined = CollectorRegistry()
            MultiProcessCollector(combined)  # type: ignore[no-untyped-call]  # unannotated upstream
            return generate_latest(combined).decode()
        return generate_latest(self.registry).decode()

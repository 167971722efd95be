"""Prometheus text-format metrics without a dependency: counters and one latency histogram."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Process-local metrics rendered at `GET /metrics`."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self._ack_buckets = [0] * len(ACK_BUCKETS)
        self._ack_sum = 0.0
        self._ack_count = 0
        #: Extra samplers polled at render time (e.g. provider call counters).
        self.samplers: list[Callable[[], Iterable[tuple[str, dict[str, str], float]]]] = []

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add to a counter."""
        self.counters[(name, tuple(sorted(labels.items())))] += value

    def observe_ack(self, seconds: float) -> None:
        """Record one Slack request's time to answer (ack)."""
        self._ack_sum += seconds
        self._ack_count += 1
        for i, bound in enumerate(ACK_BUCKETS):
            if seconds <= bound:
                self._ack_buckets[i] += 1

    def render(self) -> str:
        """The Prometheus exposition text."""
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), value in sorted(self.counters.items()):
            if name not in seen:
                lines.append(f"# TYPE {name} counter")
                seen.add(name)
            lines.append(f"{name}{_labels(labels)} {value:g}")
        for sampler in self.samplers:
            for name, labels_map, value in sampler():
                if name not in seen:
                    lines.append(f"# TYPE {name} counter")
                    seen.add(name)
                lines.append(f"{name}{_labels(sorted(labels_map.items()))} {value:g}")
        lines.append("# TYPE billing_triage_ack_seconds histogram")
        for bound, count in zip(ACK_BUCKETS, self._ack_buckets, strict=True):
            lines.append(f'billing_triage_ack_seconds_bucket{{le="{bound}"}} {count}')
        lines.append(f'billing_triage_ack_seconds_bucket{{le="+Inf"}} {self._ack_count}')
        lines.append(f"billing_triage_ack_seconds_sum {self._ack_sum:.6f}")
        lines.append(f"billing_triage_ack_seconds_count {self._ack_count}")
        return "\n".join(lines) + "\n"

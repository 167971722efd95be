"""An `Anomaly` as JSON and back: what an alert row stores so its Slack message, the shell and
the chart can be rebuilt after a click, a restart or on another replica.

Pure: imports only the standard library and `bot.domain`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Any

from bot.domain.anomalies import AlertKind, Anomaly, Driver, SeriesPoint, Severity
from bot.domain.money import Money

#: Bumped when the payload's shape changes incompatibly.
PAYLOAD_VERSION = 1


def _money(m: Money | None) -> list[str] | None:
    return [m.decimal_str(), m.currency] if m is not None else None


def _unmoney(value: Any) -> Money | None:
    if not value:
        return None
    return Money.of(str(value[0]), str(value[1]))


def _dec(value: Decimal | None) -> str | None:
    return str(value) if value is not None else None


def _undec(value: Any) -> Decimal | None:
    return Decimal(str(value)) if value is not None else None


def anomaly_to_payload(a: Anomaly) -> dict[str, Any]:
    """Everything an alert shows, as JSON-safe values (amounts and numbers as strings)."""
    return {
        "v": PAYLOAD_VERSION,
        "account": a.account_id,
        "kind": a.kind.value,
        "severity": a.severity.value,
        "period": a.period.isoformat(),
        "expected": _money(a.expected),
        "actual": _money(a.actual),
        "impact": _money(a.impact),
        "impact_pct": _dec(a.impact_pct),
        "summary": a.summary,
        "why": a.why,
        "drivers": [
            {"label": d.label, "amount": _money(d.amount), "detail": d.detail} for d in a.drivers
        ],
        "provider": a.provider,
        "refs": list(a.refs),
        "series": [
            [
                p.day.isoformat(),
                str(p.actual),
                _dec(p.expected),
                _dec(p.low),
                _dec(p.high),
                p.anomalous,
            ]
            for p in a.series
        ],
        "fingerprint": a.fingerprint,
        "magnitude": str(a.magnitude),
        "resurfaced": a.resurfaced,
    }


def anomaly_from_payload(payload: Mapping[str, Any]) -> Anomaly:
    """The anomaly `anomaly_to_payload` stored. Raises `ValueError`/`KeyError` on a bad one."""
    impact = _unmoney(payload["impact"])
    expected = _unmoney(payload["expected"])
    actual = _unmoney(payload["actual"])
    if impact is None or expected is None or actual is None:
        raise ValueError("an alert payload needs expected, actual and impact")
    return Anomaly(
        account_id=str(payload["account"]),
        kind=AlertKind(payload["kind"]),
        severity=Severity(payload["severity"]),
        period=date.fromisoformat(str(payload["period"])),
        expected=expected,
        actual=actual,
        impact=impact,
        impact_pct=_undec(payload.get("impact_pct")),
        summary=str(payload.get("summary") or ""),
        why=str(payload.get("why") or ""),
        drivers=tuple(
            Driver(
                label=str(d.get("label") or ""),
                amount=_unmoney(d.get("amount")),
                detail=d.get("detail"),
            )
            for d in payload.get("drivers") or []
        ),
        provider=payload.get("provider") or "stripe",
        refs=tuple(str(r) for r in payload.get("refs") or []),
        series=tuple(
            SeriesPoint(
                day=date.fromisoformat(str(p[0])),
                actual=Decimal(str(p[1])),
                expected=_undec(p[2]),
                low=_undec(p[3]),
                high=_undec(p[4]),
                anomalous=bool(p[5]),
            )
            for p in payload.get("series") or []
        ),
        fingerprint=str(payload.get("fingerprint") or ""),
        magnitude=Decimal(str(payload.get("magnitude") or "0")),
        resurfaced=bool(payload.get("resurfaced")),
    )

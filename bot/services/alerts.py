"""Alerts as on-call sees them (DESIGN §5): store what a scan or a webhook found, deduplicated on
(account, kind, period); tell on-call about new alerts and about alerts that got worse, through
the outbox; record the buttons (Acknowledge, Not an anomaly, Snooze 24h) and what they teach.

Notification rules (each decision is one unit of work with the alert's state change):

- a new alert is posted to `ONCALL_CHANNEL` (`alert:<id>`, digest key `oncall:<channel>`, so a
  burst of new alerts becomes one digest message);
- a known alert is re-notified only when it got **worse** than what on-call was last told: a
  higher severity, or an impact at least `ESCALATE_IMPACT_RATIO` (1.25×) the notified one in
  the same currency (amounts of two currencies are never compared: a currency change alone is
  not worse). Then
  the original message is updated to the current figures and a reply is posted in its thread,
  also sent to the channel (so it notifies like a new post but keeps the alert's history in
  one place). An acknowledged alert that gets worse opens again;
- an alert snoozed 24 h stays quiet until the snooze ends; if it is still found after that, it
  opens again and on-call is reminded (in the thread, also sent to the channel);
- "Not an anomaly" stores a suppression: the detectors hold back the same pattern on that
  account until it grows past `DetectorConfig.suppression_growth`; when it does, the alert
  opens again and its text says why;
- scans that do not post (the CLI without `--post`) store alerts without notifying; the first
  posting scan or webhook after that notifies them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from bot.domain.alert_payload import anomaly_to_payload
from bot.domain.anomalies import AlertKind, Anomaly, Suppression
from bot.domain.records import (
    AlertDraft,
    AlertRecord,
    AuditEvent,
    FeedbackAction,
    FeedbackCount,
    OutgoingMessage,
    SuppressionRecord,
    UnitOfWork,
)
from bot.services.cases import alert_case

log = logging.getLogger("bot.alerts")

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2}
#: A known alert re-notifies when its impact reaches this multiple of the notified impact.
ESCALATE_IMPACT_RATIO = Decimal("1.25")
SNOOZE = timedelta(hours=24)
#: The outbox renderers the Slack edge registers for alerts.
RENDER_ALERT = "alert"
RENDER_ESCALATION = "alert_escalation"
DIGEST_PREFIX = "oncall:"


def alert_ref(alert_id: int) -> str:
    """The outbox ref naming an alert's Slack message."""
    return f"alert:{alert_id}"


def draft_of(anomaly: Anomaly, *, source: str) -> AlertDraft:
    """What gets stored for `anomaly`."""
    return AlertDraft(
        account_id=anomaly.account_id,
        kind=anomaly.kind.value,
        period=anomaly.period,
        severity=anomaly.severity.value,
        source=source,
        provider=anomaly.provider,
        currency=anomaly.currency,
        impact=anomaly.impact.amount,
        fingerprint=anomaly.fingerprint,
        magnitude=anomaly.magnitude,
        summary=anomaly.summary,
        payload=anomaly_to_payload(anomaly),
    )


def is_worse(
    severity: str,
    impact: Decimal,
    *,
    notified_severity: str | None,
    notified_impact: Decimal | None,
    currency: str | None = None,
    notified_currency: str | None = None,
) -> bool:
    """True when (severity, impact) is worse than what on-call was told (never told: True).

    Impacts compare only in one currency: when the alert's currency changed since on-call was
    told, only a higher severity makes it worse (no exchange rate is guessed)."""
    if notified_severity is None:
        return True
    if SEVERITY_RANK.get(severity, 0) > SEVERITY_RANK.get(notified_severity, 0):
        return True
    if currency and notified_currency and currency.lower() != notified_currency.lower():
        return False
    if notified_impact is None or notified_impact <= 0:
        return impact > 0
    return impact >= notified_impact * ESCALATE_IMPACT_RATIO


@dataclass(frozen=True, slots=True)
class Recorded:
    """What storing one anomaly did."""

    alert_id: int
    new: bool
    #: "post", "escalate", "remind" or None (nothing told).
    notified: str | None


def _key(alert_id: int, what: str) -> str:
    return f"alert:{alert_id}:{what}:{secrets.token_hex(4)}"


async def _notify(
    uow: UnitOfWork,
    alert: AlertRecord,
    *,
    channel: str,
    now: datetime,
    why: str,
) -> str:
    """Enqueue the post (first time) or the update plus escalation reply; record it."""
    if alert.notify_count == 0:
        await uow.outbox.enqueue(
            OutgoingMessage(
                key=f"alert:{alert.id}:post",
                op="post",
                channel=channel,
                ref=alert_ref(alert.id),
                render=RENDER_ALERT,
                payload={"alert_id": alert.id, "chart": True},
                digest_key=f"{DIGEST_PREFIX}{channel}",
            ),
            now=now,
        )
        done = "post"
    else:
        await uow.outbox.enqueue(
            OutgoingMessage(
                key=_key(alert.id, "update"),
                op="update",
                ref=alert_ref(alert.id),
                render=RENDER_ALERT,
                payload={"alert_id": alert.id},
            ),
            now=now,
        )
        await uow.outbox.enqueue(
            OutgoingMessage(
                key=f"alert:{alert.id}:{why}:{alert.notify_count}",
                op="post",
                channel=channel,
                thread_ref=alert_ref(alert.id),
                render=RENDER_ESCALATION,
                payload={
                    "alert_id": alert.id,
                    "why": why,
                    "from_severity": alert.notified_severity,
                    "from_impact": str(alert.notified_impact or ""),
                    "from_currency": alert.notified_currency or "",
                },
            ),
            now=now,
        )
        done = why
    await uow.alerts.mark_notified(
        alert.id, severity=alert.severity, impact=alert.impact, now=now, currency=alert.currency
    )
    return done


async def record_anomaly(
    uow: UnitOfWork,
    anomaly: Anomaly,
    *,
    source: str,
    now: datetime,
    channel: str | None,
    run_id: int | None = None,
) -> Recorded:
    """Store `anomaly` (new, or seen again) and enqueue what on-call must be told, in `uow`
    (the caller commits). `channel` None: store only, tell nobody."""
    draft = draft_of(anomaly, source=source)
    new_id = await uow.alerts.insert(draft, now=now, run_id=run_id)
    if new_id is not None:
        alert = await uow.alerts.get(new_id)
        assert alert is not None
        # Every alert is a case (DESIGN §11), stored with it.
        await uow.cases.record(
            alert_case(new_id, account_id=anomaly.account_id, kind=anomaly.kind.value, at=now)
        )
        told = await _notify(uow, alert, channel=channel, now=now, why="post") if channel else None
        return Recorded(new_id, True, told)
    found = await uow.alerts.find(anomaly.account_id, anomaly.kind.value, anomaly.period)
    assert found is not None, "insert conflicted, so the alert exists"
    worse = is_worse(
        draft.severity,
        draft.impact,
        notified_severity=found.notified_severity,
        notified_impact=found.notified_impact,
        currency=draft.currency,
        # Stored before currencies were kept: the alert's currency when it was last seen.
        notified_currency=found.notified_currency or found.currency,
    )
    reopen: str | None = None
    why = "escalate"
    if found.status == "snoozed":
        if found.snoozed_until is not None and found.snoozed_until > now:
            worse = False  # quiet until the snooze ends
        else:
            reopen, why, worse = "open", "remind", True
    elif found.status == "not_anomaly":
        # The detectors only return a suppressed pattern once it grew past the suppression.
        if anomaly.resurfaced:
            reopen, worse = "open", True
        else:
            worse = False
    elif found.status == "acknowledged" and worse and found.notified_severity is not None:
        reopen = "open"
    await uow.alerts.seen_again(found.id, draft, now=now, run_id=run_id, status=reopen)  # type: ignore[arg-type]
    if not (worse and channel):
        return Recorded(found.id, False, None)
    alert = await uow.alerts.get(found.id)
    assert alert is not None
    told = await _notify(uow, alert, channel=channel, now=now, why=why)
    return Recorded(found.id, False, told)


def suppressions_of(records: Sequence[SuppressionRecord]) -> list[Suppression]:
    """Stored suppressions as the detectors take them (unknown kinds are skipped)."""
    out = []
    for r in records:
        try:
            kind = AlertKind(r.kind)
        except ValueError:
            continue
        out.append(
            Suppression(
                account_id=r.account_id,
                kind=kind,
                fingerprint=r.fingerprint,
                magnitude=r.magnitude,
                created_at=r.created_at,
            )
        )
    return out


#: What each button does to the alert's status.
ACTION_STATUS = {"acknowledge": "acknowledged", "not_anomaly": "not_anomaly", "snooze": "snoozed"}


async def apply_feedback(
    uow: UnitOfWork,
    alert_id: int,
    action: FeedbackAction,
    *,
    user_id: str,
    now: datetime,
    slack_request: str | None = None,
) -> AlertRecord | None:
    """Record a button press on alert `alert_id`, change its status, store the suppression
    "Not an anomaly" teaches, audit it and enqueue the update of its message. None when the
    alert does not exist. The caller commits."""
    alert = await uow.alerts.get(alert_id)
    if alert is None:
        return None
    status = ACTION_STATUS[action]
    until = now + SNOOZE if action == "snooze" else None
    await uow.alerts.set_status(alert_id, status, user_id=user_id, now=now, snoozed_until=until)  # type: ignore[arg-type]
    await uow.alerts.add_feedback(alert_id, action, user_id=user_id, now=now)
    await uow.cases.update_alert(str(alert_id), feedback=status)
    if action == "not_anomaly":
        await uow.alerts.add_suppression(
            SuppressionRecord(
                account_id=alert.account_id,
                kind=alert.kind,
                fingerprint=alert.fingerprint,
                magnitude=alert.magnitude,
                created_at=now,
                alert_id=alert.id,
                user_id=user_id,
            )
        )
    await uow.audit.append(
        AuditEvent(
            id=None,
            at=now,
            actor=user_id,
            action=f"alert.{action}",
            subject=alert_ref(alert_id),
            detail={"account": alert.account_id, "kind": alert.kind, "period": alert.period},
            slack_request=slack_request,
        )
    )
    if alert.notify_count > 0:
        await uow.outbox.enqueue(
            OutgoingMessage(
                key=_key(alert_id, "update"),
                op="update",
                ref=alert_ref(alert_id),
                render=RENDER_ALERT,
                payload={"alert_id": alert_id},
            ),
            now=now,
        )
    return await uow.alerts.get(alert_id)


@dataclass(frozen=True, slots=True)
class KindPrecision:
    """Measured precision of one kind: acknowledged / (acknowledged + not an anomaly)."""

    kind: str
    alerts: int
    acknowledged: int
    not_anomaly: int
    snoozed: int

    @property
    def judged(self) -> int:
        """Alerts someone said yes or no to."""
        return self.acknowledged + self.not_anomaly

    @property
    def precision(self) -> Decimal | None:
        """None until someone judged an alert of this kind."""
        if self.judged == 0:
            return None
        return (Decimal(self.acknowledged) / Decimal(self.judged)).quantize(Decimal("0.01"))


def precision_of(counts: Sequence[FeedbackCount]) -> tuple[list[KindPrecision], KindPrecision]:
    """Per kind (sorted) and overall precision from stored feedback."""
    kinds = [
        KindPrecision(c.kind, c.alerts, c.acknowledged, c.not_anomaly, c.snoozed)
        for c in sorted(counts, key=lambda c: c.kind)
    ]
    overall = KindPrecision(
        "overall",
        sum(k.alerts for k in kinds),
        sum(k.acknowledged for k in kinds),
        sum(k.not_anomaly for k in kinds),
        sum(k.snoozed for k in kinds),
    )
    return kinds, overall

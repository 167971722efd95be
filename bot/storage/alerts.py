"""SQL repositories of issue 9: alerts with their feedback and suppressions (`SqlAlerts`), scan
runs and their work items (`SqlScans`), received webhooks (`SqlWebhooks`).

Work items are claimed like outbox entries: on PostgreSQL `SELECT … FOR UPDATE SKIP LOCKED` then
an UPDATE in the same transaction, so replicas never claim the same page; on SQLite the
transaction holds the single write lock. A claim is a lease: a replica that dies stops renewing
it, and the item is claimed again once it expires.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, and_, case, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.domain.records import (
    AlertDraft,
    AlertRecord,
    AlertStatus,
    FeedbackAction,
    FeedbackCount,
    ScanItem,
    ScanRunState,
    SuppressionRecord,
    WebhookEvent,
)
from bot.storage.sql import dialect_insert, rowcount
from bot.storage.tables import (
    AlertFeedbackRow,
    AlertRow,
    AlertSuppressionRow,
    ScanAccountRow,
    ScanItemRow,
    ScanRunRow,
    SlackMessageRow,
    WebhookEventRow,
)


def _alert(row: AlertRow) -> AlertRecord:
    return AlertRecord(
        id=row.id,
        account_id=row.account_id,
        kind=row.kind,
        period=date.fromisoformat(row.period),
        severity=row.severity,
        status=row.status,  # type: ignore[arg-type]  # stored from an AlertStatus
        source=row.source,
        provider=row.provider,
        currency=row.currency,
        impact=Decimal(row.impact),
        fingerprint=row.fingerprint,
        magnitude=Decimal(row.magnitude),
        summary=row.summary,
        payload=row.payload,
        first_seen_at=row.first_seen_at,
        last_seen_at=row.last_seen_at,
        last_run_id=row.last_run_id,
        notified_severity=row.notified_severity,
        notified_impact=_notified(row.notified_impact)[0],
        notified_currency=_notified(row.notified_impact)[1],
        notified_at=row.notified_at,
        notify_count=row.notify_count,
        status_by=row.status_by,
        status_at=row.status_at,
        snoozed_until=row.snoozed_until,
    )


def _notified(stored: str | None) -> tuple[Decimal | None, str | None]:
    """(amount, currency) of a stored `notified_impact`: "<amount> <currency>", or a bare
    amount (no currency known)."""
    if not stored:
        return None, None
    amount, _, currency = stored.partition(" ")
    return Decimal(amount), (currency or None)


def _draft_values(draft: AlertDraft) -> dict[str, Any]:
    return {
        "severity": draft.severity,
        "source": draft.source,
        "provider": draft.provider,
        "currency": draft.currency,
        "impact": str(draft.impact),
        "fingerprint": draft.fingerprint[:255],
        "magnitude": str(draft.magnitude),
        "summary": draft.summary[:500],
        "payload": dict(draft.payload),
    }


class SqlAlerts:
    """`Alerts` over `alerts`, `alert_feedback` and `alert_suppressions`."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, alert_id: int) -> AlertRecord | None:
        """The alert with `alert_id`."""
        row = await self._session.get(AlertRow, alert_id, populate_existing=True)
        return _alert(row) if row is not None else None

    async def find(self, account_id: str, kind: str, period: date) -> AlertRecord | None:
        """The alert deduplicated on (account, kind, period)."""
        row = await self._session.scalar(
            select(AlertRow)
            .where(
                AlertRow.account_id == account_id,
                AlertRow.kind == kind,
                AlertRow.period == period.isoformat(),
            )
            .execution_options(populate_existing=True)
        )
        return _alert(row) if row is not None else None

    async def insert(self, draft: AlertDraft, *, now: datetime, run_id: int | None) -> int | None:
        """Store a new open alert; None when (account, kind, period) exists already."""
        statement = (
            dialect_insert(self._session, AlertRow)
            .values(
                account_id=draft.account_id,
                kind=draft.kind,
                period=draft.period.isoformat(),
                status="open",
                first_seen_at=now,
                last_seen_at=now,
                last_run_id=run_id,
                notify_count=0,
                **_draft_values(draft),
            )
            .on_conflict_do_nothing(index_elements=["account_id", "kind", "period"])
            .returning(AlertRow.id)
        )
        result = await self._session.execute(statement)
        found = result.scalar_one_or_none()
        return int(found) if found is not None else None

    async def seen_again(
        self, alert_id: int, draft: AlertDraft, *, now: datetime, run_id: int | None,
        status: AlertStatus | None = None,
    ) -> None:  # fmt: skip
        """Refresh a known alert with what was found now (and optionally reopen it)."""
        values = {**_draft_values(draft), "last_seen_at": now}
        if run_id is not None:
            values["last_run_id"] = run_id
        if status is not None:
            values["status"] = status
            if status == "open":
                values["snoozed_until"] = None
        await self._session.execute(update(AlertRow).where(AlertRow.id == alert_id).values(values))

    async def mark_notified(
        self, alert_id: int, *, severity: str, impact: Decimal, now: datetime,
        currency: str | None = None,
    ) -> None:  # fmt: skip
        """Record that on-call was told about the alert at this severity and impact (its
        currency kept with the amount, in the same column: escalation never compares amounts
        of two currencies)."""
        await self._session.execute(
            update(AlertRow)
            .where(AlertRow.id == alert_id)
            .values(
                notified_severity=severity,
                notified_impact=f"{impact} {currency}" if currency else str(impact),
                notified_at=now,
                notify_count=AlertRow.notify_count + 1,
            )
        )

    async def set_status(
        self, alert_id: int, status: AlertStatus, *, user_id: str, now: datetime,
        snoozed_until: datetime | None = None,
    ) -> bool:  # fmt: skip
        """Change the status (who and when); False when the alert does not exist."""
        result = await self._session.execute(
            update(AlertRow)
            .where(AlertRow.id == alert_id)
            .values(status=status, status_by=user_id, status_at=now, snoozed_until=snoozed_until)
        )
        return rowcount(result) == 1

    async def add_feedback(
        self, alert_id: int, action: FeedbackAction, *, user_id: str, now: datetime
    ) -> None:
        """Record a button press."""
        self._session.add(
            AlertFeedbackRow(alert_id=alert_id, action=action, user_id=user_id, at=now)
        )
        await self._session.flush()

    async def add_suppression(self, suppression: SuppressionRecord) -> None:
        """Store a "Not an anomaly" pattern."""
        self._session.add(
            AlertSuppressionRow(
                account_id=suppression.account_id,
                kind=suppression.kind,
                fingerprint=suppression.fingerprint[:255],
                magnitude=str(suppression.magnitude),
                alert_id=suppression.alert_id,
                user_id=suppression.user_id,
                created_at=suppression.created_at,
            )
        )
        await self._session.flush()

    async def suppressions(self, account_ids: Sequence[str]) -> list[SuppressionRecord]:
        """The suppressions of these accounts."""
        if not account_ids:
            return []
        rows = await self._session.scalars(
            select(AlertSuppressionRow).where(AlertSuppressionRow.account_id.in_(list(account_ids)))
        )
        return [
            SuppressionRecord(
                account_id=r.account_id,
                kind=r.kind,
                fingerprint=r.fingerprint,
                magnitude=Decimal(r.magnitude),
                created_at=r.created_at,
                alert_id=r.alert_id,
                user_id=r.user_id,
            )
            for r in rows
        ]

    async def listing(
        self, *, statuses: Sequence[str] | None, limit: int, now: datetime
    ) -> list[AlertRecord]:
        """Alerts with one of `statuses` (all when None), newest period first."""
        query = select(AlertRow).order_by(AlertRow.period.desc(), AlertRow.id.desc()).limit(limit)
        if statuses is not None:
            wanted = list(statuses)
            condition: Any = AlertRow.status.in_(wanted)
            if "open" in wanted:  # a snooze that ran out is open again
                condition = or_(
                    condition,
                    and_(AlertRow.status == "snoozed", AlertRow.snoozed_until <= now),
                )
            query = query.where(condition)
        rows = await self._session.scalars(query.execution_options(populate_existing=True))
        return [_alert(r) for r in rows]

    async def for_run(self, run_id: int, *, after_id: int, limit: int) -> list[AlertRecord]:
        """Alerts a scan run saw, `limit` at a time after `after_id`."""
        rows = await self._session.scalars(
            select(AlertRow)
            .where(AlertRow.last_run_id == run_id, AlertRow.id > after_id)
            .order_by(AlertRow.id)
            .limit(limit)
        )
        return [_alert(r) for r in rows]

    async def feedback_counts(self) -> list[FeedbackCount]:
        """Per kind: alerts, and how many are acknowledged, not anomalies, snoozed."""

        def count(status: str) -> Any:
            return func.sum(case((AlertRow.status == status, 1), else_=0))

        rows = await self._session.execute(
            select(
                AlertRow.kind,
                func.count(),
                count("acknowledged"),
                count("not_anomaly"),
                count("snoozed"),
            ).group_by(AlertRow.kind)
        )
        return [
            FeedbackCount(
                kind=str(kind), alerts=int(n), acknowledged=int(ack or 0),
                not_anomaly=int(no or 0), snoozed=int(snoozed or 0),
            )
            for kind, n, ack, no, snoozed in rows.all()
        ]  # fmt: skip

    async def sharing_message(self, alert_id: int) -> list[int]:
        """The alerts posted in the same Slack message as `alert_id` (a digest)."""
        mine = await self._session.get(SlackMessageRow, f"alert:{alert_id}")
        if mine is None:
            return [alert_id]
        refs = await self._session.scalars(
            select(SlackMessageRow.ref).where(
                SlackMessageRow.channel == mine.channel,
                SlackMessageRow.ts == mine.ts,
                SlackMessageRow.ref.like("alert:%"),
            )
        )
        ids = sorted(int(ref.split(":", 1)[1]) for ref in refs if ref.split(":", 1)[1].isdigit())
        return ids or [alert_id]


# --- scans -------------------------------------------------------------------------------------


class SqlScans:
    """`Scans` over `scan_runs`, `scan_items` and `scan_accounts`."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def _locking(self, query: Select[Any]) -> Select[Any]:
        if self._session.get_bind().dialect.name == "postgresql":
            return query.with_for_update(skip_locked=True, of=ScanItemRow)
        return query

    async def start_run(self, *, coordinator: str, today: date, post: bool, now: datetime) -> int:
        """Create a running scan run; its ID."""
        row = ScanRunRow(
            status="running", coordinator=coordinator[:64], today=today.isoformat(), post=post,
            started_at=now, heartbeat_at=now, list_failures={},
        )  # fmt: skip
        self._session.add(row)
        await self._session.flush()
        return row.id

    async def abandon_stale(self, *, now: datetime, stale_after: float) -> int:
        """Close running runs whose coordinator stopped beating; cancel their open items."""
        cutoff = now - timedelta(seconds=stale_after)
        stale = list(
            await self._session.scalars(
                select(ScanRunRow.id).where(
                    ScanRunRow.status == "running", ScanRunRow.heartbeat_at < cutoff
                )
            )
        )
        if not stale:
            return 0
        await self._session.execute(
            update(ScanRunRow)
            .where(ScanRunRow.id.in_(stale))
            .values(status="abandoned", finished_at=now)
        )
        await self._session.execute(
            update(ScanItemRow)
            .where(ScanItemRow.run_id.in_(stale), ScanItemRow.status.in_(["pending", "claimed"]))
            .values(status="cancelled", claimed_by=None, lease_until=None)
        )
        return len(stale)

    async def heartbeat(self, run_id: int, *, now: datetime) -> None:
        """The coordinator is alive."""
        await self._session.execute(
            update(ScanRunRow).where(ScanRunRow.id == run_id).values(heartbeat_at=now)
        )

    async def add_item(
        self, run_id: int, *, provider: str, seq: int, customers: Sequence[Mapping[str, Any]]
    ) -> int:
        """Queue a page of customers; its item ID."""
        row = ScanItemRow(
            run_id=run_id, provider=provider, seq=seq, customers={"items": list(customers)},
            status="pending", attempts=0, accounts=0, skipped=0, alerts=0, new_alerts=0,
            failed={"accounts": []},
        )  # fmt: skip
        self._session.add(row)
        await self._session.flush()
        return row.id

    async def finish_listing(
        self, run_id: int, *, now: datetime, failures: Mapping[str, str]
    ) -> None:
        """Every page is queued."""
        await self._session.execute(
            update(ScanRunRow)
            .where(ScanRunRow.id == run_id)
            .values(listed_at=now, list_failures=dict(failures), heartbeat_at=now)
        )

    async def pending_items(self, run_id: int) -> int:
        """Items of the run nobody has claimed yet."""
        found = await self._session.scalar(
            select(func.count())
            .select_from(ScanItemRow)
            .where(ScanItemRow.run_id == run_id, ScanItemRow.status == "pending")
        )
        return int(found or 0)

    async def claim_item(
        self, *, holder: str, now: datetime, lease: float, run_id: int | None = None
    ) -> ScanItem | None:
        """Claim the oldest pending (or lease-expired) item of a running run."""
        claimable = or_(
            ScanItemRow.status == "pending",
            and_(ScanItemRow.status == "claimed", ScanItemRow.lease_until < now),
        )
        query = (
            select(ScanItemRow)
            .join(ScanRunRow, ScanRunRow.id == ScanItemRow.run_id)
            .where(claimable, ScanRunRow.status == "running")
            .order_by(ScanItemRow.id)
            .limit(1)
        )
        if run_id is not None:
            query = query.where(ScanItemRow.run_id == run_id)
        row = await self._session.scalar(self._locking(query))
        if row is None:
            return None
        run = await self._session.get(ScanRunRow, row.run_id)
        assert run is not None
        await self._session.execute(
            update(ScanItemRow)
            .where(ScanItemRow.id == row.id)
            .values(
                status="claimed",
                claimed_by=holder[:64],
                lease_until=now + timedelta(seconds=lease),
                attempts=ScanItemRow.attempts + 1,
            )
        )
        return ScanItem(
            id=row.id,
            run_id=row.run_id,
            provider=row.provider,
            seq=row.seq,
            customers=list(row.customers.get("items", [])),
            attempts=row.attempts + 1,
            today=date.fromisoformat(run.today),
            post=run.post,
        )

    async def renew_item(self, item_id: int, *, holder: str, now: datetime, lease: float) -> bool:
        """Extend the lease; False when `holder` lost the item."""
        result = await self._session.execute(
            update(ScanItemRow)
            .where(
                ScanItemRow.id == item_id,
                ScanItemRow.status == "claimed",
                ScanItemRow.claimed_by == holder[:64],
            )
            .values(lease_until=now + timedelta(seconds=lease))
        )
        return rowcount(result) == 1

    async def complete_item(
        self, item_id: int, *, holder: str, now: datetime, accounts: int, skipped: int,
        alerts: int, new_alerts: int, failed: Sequence[str],
    ) -> bool:  # fmt: skip
        """Record the item's outcome; False when `holder` no longer held it."""
        result = await self._session.execute(
            update(ScanItemRow)
            .where(
                ScanItemRow.id == item_id,
                ScanItemRow.status == "claimed",
                ScanItemRow.claimed_by == holder[:64],
            )
            .values(  # claimed_by stays: who did the item (a retried item: its last holder)
                status="done", finished_at=now, lease_until=None,
                accounts=accounts, skipped=skipped, alerts=alerts, new_alerts=new_alerts,
                failed={"accounts": list(failed)},
            )
        )  # fmt: skip
        return rowcount(result) == 1

    async def claim_accounts(
        self, run_id: int, account_keys: Sequence[str], *, item_id: int
    ) -> set[str]:
        """Take every free key of `account_keys` for `item_id` in one statement; the keys the
        item holds (those it took now or before: a retry of an item whose holder died)."""
        keys = list(dict.fromkeys(k[:255] for k in account_keys))
        if not keys:
            return set()
        await self._session.execute(
            dialect_insert(self._session, ScanAccountRow)
            .values([{"run_id": run_id, "account_key": k, "item_id": item_id} for k in keys])
            .on_conflict_do_nothing(index_elements=["run_id", "account_key"])
        )
        mine = await self._session.scalars(
            select(ScanAccountRow.account_key).where(
                ScanAccountRow.run_id == run_id,
                ScanAccountRow.item_id == item_id,
                ScanAccountRow.account_key.in_(keys),
            )
        )
        return set(mine)

    async def state(self, run_id: int) -> ScanRunState | None:
        """The run and its totals."""
        run = await self._session.get(ScanRunRow, run_id, populate_existing=True)
        if run is None:
            return None
        done = ScanItemRow.status == "done"
        totals = (
            await self._session.execute(
                select(
                    func.count(),
                    func.sum(case((done, 1), else_=0)),
                    func.sum(ScanItemRow.accounts),
                    func.sum(ScanItemRow.skipped),
                    func.sum(ScanItemRow.alerts),
                    func.sum(ScanItemRow.new_alerts),
                ).where(ScanItemRow.run_id == run_id)
            )
        ).one()
        failed_rows = await self._session.scalars(
            select(ScanItemRow.failed).where(ScanItemRow.run_id == run_id, done)
        )
        failed = tuple(a for f in failed_rows for a in f.get("accounts", []))
        items, items_done, accounts, skipped, alerts, new_alerts = (int(v or 0) for v in totals)
        return ScanRunState(
            id=run.id, status=run.status,  # type: ignore[arg-type]  # one of ScanStatus
            coordinator=run.coordinator, today=date.fromisoformat(run.today), post=run.post,
            started_at=run.started_at, listed_at=run.listed_at, finished_at=run.finished_at,
            items=items, items_done=items_done, accounts=accounts, skipped=skipped,
            alerts=alerts, new_alerts=new_alerts, failed=failed,
            list_failures={str(k): str(v) for k, v in run.list_failures.items()},
        )  # fmt: skip

    async def finish_if_complete(self, run_id: int, *, now: datetime) -> bool:
        """Mark the run done when it is listed and no item is left; True when the run is over
        (done now or before, or abandoned)."""
        left = (
            select(ScanItemRow.id)
            .where(ScanItemRow.run_id == run_id, ScanItemRow.status.in_(["pending", "claimed"]))
            .exists()
        )
        result = await self._session.execute(
            update(ScanRunRow)
            .where(
                ScanRunRow.id == run_id,
                ScanRunRow.status == "running",
                ScanRunRow.listed_at.is_not(None),
                ~left,
            )
            .values(status="done", finished_at=now)
        )
        if rowcount(result) == 1:
            return True
        status = await self._session.scalar(
            select(ScanRunRow.status).where(ScanRunRow.id == run_id)
        )
        return status != "running"

    async def prune(self, *, older_than: datetime) -> int:
        """Forget finished runs started before `older_than`."""
        old = list(
            await self._session.scalars(
                select(ScanRunRow.id).where(
                    ScanRunRow.started_at < older_than, ScanRunRow.status != "running"
                )
            )
        )
        if not old:
            return 0
        await self._session.execute(delete(ScanAccountRow).where(ScanAccountRow.run_id.in_(old)))
        await self._session.execute(delete(ScanItemRow).where(ScanItemRow.run_id.in_(old)))
        await self._session.execute(delete(ScanRunRow).where(ScanRunRow.id.in_(old)))
        return len(old)


# --- webhooks ----------------------------------------------------------------------------------


def _webhook(row: WebhookEventRow) -> WebhookEvent:
    return WebhookEvent(
        source=row.source,
        event_id=row.event_id,
        type=row.type,
        payload=row.payload,
        received_at=row.received_at,
        processed_at=row.processed_at,
        attempts=row.attempts,
    )


class SqlWebhooks:
    """`Webhooks` over `webhook_events`."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def store(
        self, source: str, event_id: str, *, type: str, payload: Mapping[str, Any], now: datetime
    ) -> bool:
        """Store a verified event; False for a duplicate."""
        statement = (
            dialect_insert(self._session, WebhookEventRow)
            .values(
                source=source,
                event_id=event_id[:255],
                type=type[:128],
                payload=dict(payload),
                received_at=now,
                attempts=0,
            )
            .on_conflict_do_nothing(index_elements=["source", "event_id"])
        )
        return rowcount(await self._session.execute(statement)) == 1

    async def get(self, source: str, event_id: str) -> WebhookEvent | None:
        """One stored event."""
        row = await self._session.get(
            WebhookEventRow, (source, event_id[:255]), populate_existing=True
        )
        return _webhook(row) if row is not None else None

    async def begin(self, source: str, event_id: str) -> bool:
        """Count a processing attempt; False when it was processed already."""
        result = await self._session.execute(
            update(WebhookEventRow)
            .where(
                WebhookEventRow.source == source,
                WebhookEventRow.event_id == event_id[:255],
                WebhookEventRow.processed_at.is_(None),
            )
            .values(attempts=WebhookEventRow.attempts + 1)
        )
        return rowcount(result) == 1

    async def mark_processed(
        self, source: str, event_id: str, *, now: datetime, outcome: str
    ) -> bool:
        """Record the outcome once."""
        result = await self._session.execute(
            update(WebhookEventRow)
            .where(
                WebhookEventRow.source == source,
                WebhookEventRow.event_id == event_id[:255],
                WebhookEventRow.processed_at.is_(None),
            )
            .values(processed_at=now, outcome=outcome[:64])
        )
        return rowcount(result) == 1

    async def unprocessed(self, *, received_before: datetime, limit: int) -> list[WebhookEvent]:
        """Events received before the cutoff and never processed, oldest first."""
        rows = await self._session.scalars(
            select(WebhookEventRow)
            .where(
                WebhookEventRow.processed_at.is_(None),
                WebhookEventRow.received_at < received_before,
            )
            .order_by(WebhookEventRow.received_at)
            .limit(limit)
        )
        return [_webhook(r) for r in rows]

    async def prune(self, *, older_than: datetime) -> int:
        """Forget processed events received before `older_than`."""
        result = await self._session.execute(
            delete(WebhookEventRow).where(
                WebhookEventRow.processed_at.is_not(None),
                WebhookEventRow.received_at < older_than,
            )
        )
        return rowcount(result)

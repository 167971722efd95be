"""SQL implementations of the outbox and the leases (`bot.domain.records.Outbox`, `Leases`).

Claims are one transaction: on PostgreSQL `SELECT … FOR UPDATE SKIP LOCKED` then an UPDATE of the
claimed rows, so replicas never claim the same entry; on SQLite the transaction holds the single
write lock (`BEGIN IMMEDIATE`), which serialises claimers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from bot.domain.records import OutboxEntry, OutgoingMessage, PostedMessage
from bot.storage.sql import dialect_insert, rowcount
from bot.storage.tables import LeaseRow, OutboxRow, SlackMessageRow

_MAX_ERROR = 255


def _entry(row: OutboxRow) -> OutboxEntry:
    message = OutgoingMessage(
        key=row.key,
        op=row.op,  # type: ignore[arg-type]  # stored from a DeliveryOp
        channel=row.channel,
        ref=row.ref,
        thread_ref=row.thread_ref,
        render=row.render,
        payload=row.payload,
        digest_key=row.digest_key,
    )
    return OutboxEntry(
        id=row.id,
        message=message,
        status=row.status,  # type: ignore[arg-type]  # one of the three we write
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        last_error=row.last_error,
        sent_at=row.sent_at,
    )


class SqlOutbox:
    """`Outbox` over the `outbox` and `slack_messages` tables."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def _locking(self, query: Select[Any]) -> Select[Any]:
        if self._session.get_bind().dialect.name == "postgresql":
            return query.with_for_update(skip_locked=True, of=OutboxRow)
        return query

    async def enqueue(self, message: OutgoingMessage, *, now: datetime) -> bool:
        """Store `message` for delivery; False when its `key` was enqueued before."""
        statement = (
            dialect_insert(self._session, OutboxRow)
            .values(
                key=message.key,
                op=message.op,
                channel=message.channel,
                ref=message.ref,
                thread_ref=message.thread_ref,
                render=message.render,
                payload=dict(message.payload),
                digest_key=message.digest_key,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=["key"])
        )
        return rowcount(await self._session.execute(statement)) == 1

    def _unclaimed(self, now: datetime) -> Any:
        return or_(OutboxRow.claimed_until.is_(None), OutboxRow.claimed_until < now)

    async def _claim(self, rows: Sequence[OutboxRow], holder: str, until: datetime) -> None:
        if rows:
            await self._session.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_([r.id for r in rows]))
                .values(claimed_by=holder, claimed_until=until)
            )

    async def claim_due(
        self, *, now: datetime, holder: str, lease: float, limit: int
    ) -> list[OutboxEntry]:
        """Claim up to `limit` due entries, oldest first, keeping per-ref order."""
        earlier = aliased(OutboxRow)
        blocked = (
            select(earlier.id)
            .where(
                earlier.ref == OutboxRow.ref,
                earlier.id < OutboxRow.id,
                earlier.status == "pending",
            )
            .exists()
        )
        query = (
            select(OutboxRow)
            .where(
                OutboxRow.status == "pending",
                OutboxRow.next_attempt_at <= now,
                self._unclaimed(now),
                or_(OutboxRow.ref.is_(None), ~blocked),
            )
            .order_by(OutboxRow.id)
            .limit(limit)
        )
        rows = list((await self._session.scalars(self._locking(query))).all())
        await self._claim(rows, holder, now + timedelta(seconds=lease))
        return [_entry(r) for r in rows]

    async def claim_digest(
        self, digest_key: str, *, now: datetime, holder: str, lease: float, limit: int = 50
    ) -> list[OutboxEntry]:
        """Claim the due entries sharing `digest_key` that nobody else holds (plus any this
        holder already claimed), oldest first."""
        query = (
            select(OutboxRow)
            .where(
                OutboxRow.status == "pending",
                OutboxRow.digest_key == digest_key,
                OutboxRow.next_attempt_at <= now,
                or_(self._unclaimed(now), OutboxRow.claimed_by == holder),
            )
            .order_by(OutboxRow.id)
            .limit(limit)
        )
        rows = list((await self._session.scalars(self._locking(query))).all())
        await self._claim(rows, holder, now + timedelta(seconds=lease))
        return [_entry(r) for r in rows]

    async def mark_sent(self, entry_ids: Sequence[int], *, now: datetime) -> None:
        """Record delivery."""
        if entry_ids:
            await self._session.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_(list(entry_ids)))
                .values(
                    status="sent",
                    sent_at=now,
                    attempts=OutboxRow.attempts + 1,
                    claimed_by=None,
                    claimed_until=None,
                    last_error=None,
                )
            )

    async def retry_later(self, entry_id: int, *, at: datetime, error: str) -> None:
        """Release the claim and try again at `at`."""
        await self._session.execute(
            update(OutboxRow)
            .where(OutboxRow.id == entry_id)
            .values(
                next_attempt_at=at,
                attempts=OutboxRow.attempts + 1,
                claimed_by=None,
                claimed_until=None,
                last_error=error[:_MAX_ERROR],
            )
        )

    async def mark_failed(self, entry_id: int, *, now: datetime, error: str) -> None:
        """Give up on an entry (a permanent Slack error)."""
        await self._session.execute(
            update(OutboxRow)
            .where(OutboxRow.id == entry_id)
            .values(
                status="failed",
                attempts=OutboxRow.attempts + 1,
                claimed_by=None,
                claimed_until=None,
                last_error=error[:_MAX_ERROR],
                sent_at=None,
            )
        )

    async def remember_post(self, posted: PostedMessage, *, now: datetime) -> None:
        """Store where the message `ref` was posted (a repost replaces the old location)."""
        statement = dialect_insert(self._session, SlackMessageRow).values(
            ref=posted.ref, channel=posted.channel, ts=posted.ts, posted_at=now
        )
        statement = statement.on_conflict_do_update(
            index_elements=["ref"],
            set_={"channel": statement.excluded.channel, "ts": statement.excluded.ts},
        )
        await self._session.execute(statement)

    async def posted(self, ref: str) -> PostedMessage | None:
        """Where the message `ref` was posted, if it was."""
        row = await self._session.get(SlackMessageRow, ref)
        return PostedMessage(ref=row.ref, channel=row.channel, ts=row.ts) if row else None

    async def has_failed_post(self, ref: str) -> bool:
        """True when the post that would have created the message `ref` failed for good."""
        found = await self._session.scalar(
            select(func.count())
            .select_from(OutboxRow)
            .where(and_(OutboxRow.ref == ref, OutboxRow.op != "update"))
            .where(OutboxRow.status == "failed")
        )
        return bool(found)

    async def stats(self) -> Mapping[str, int]:
        """Entry counts by status."""
        rows = await self._session.execute(
            select(OutboxRow.status, func.count()).group_by(OutboxRow.status)
        )
        counts = {"pending": 0, "sent": 0, "failed": 0}
        counts.update({str(status): int(n) for status, n in rows.all()})
        return counts

    async def failures(self, limit: int = 5) -> list[OutboxEntry]:
        """The latest failed entries."""
        rows = await self._session.scalars(
            select(OutboxRow)
            .where(OutboxRow.status == "failed")
            .order_by(OutboxRow.id.desc())
            .limit(limit)
        )
        return [_entry(r) for r in rows]


class SqlLeases:
    """`Leases` over the `leases` table: one conditional upsert decides who holds a name."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def acquire(self, name: str, *, holder: str, now: datetime, ttl: float) -> bool:
        """Take or renew `name` for `ttl` seconds; True when `holder` has it now."""
        expires = now + timedelta(seconds=ttl)
        statement = dialect_insert(self._session, LeaseRow).values(
            name=name, holder=holder, expires_at=expires
        )
        statement = statement.on_conflict_do_update(
            index_elements=["name"],
            set_={"holder": statement.excluded.holder, "expires_at": statement.excluded.expires_at},
            where=or_(LeaseRow.expires_at < now, LeaseRow.holder == holder),
        )
        return rowcount(await self._session.execute(statement)) == 1

    async def release(self, name: str, *, holder: str) -> None:
        """Give `name` up (only if `holder` holds it)."""
        await self._session.execute(
            update(LeaseRow)
            .where(LeaseRow.name == name, LeaseRow.holder == holder)
            .values(expires_at=datetime(1970, 1, 1, tzinfo=UTC))
        )

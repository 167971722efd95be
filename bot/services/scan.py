"""The anomaly scan (DESIGN §5, issue 9): every account of every enabled provider, streamed a
page at a time, checked by the detectors, stored as alerts and (when posting) told to on-call.

How a scan runs — the same code for the CLI, one replica and many:

1. The **coordinator** (the CLI, or the replica holding the `job:scan` lease) creates a scan run
   and lists each provider's customers page by page (`CustomerLister.customer_pages`), storing
   each page as a **work item**; it stays at most `list_ahead` unclaimed pages ahead of the
   workers, so neither memory nor the database holds every account. It beats a heartbeat all
   through the run: a run whose coordinator went silent is abandoned by the next scan.
2. **Workers** claim items (`FOR UPDATE SKIP LOCKED` on PostgreSQL, a lease that expires so a
   dead replica's item is claimed again) and scan their accounts. The coordinator is a worker
   too; on PostgreSQL every replica's `scan-worker` job helps with the running scan.
3. **One account, one scan**: an account in several providers appears on several pages. A worker
   claims the account keys of its page at once (our account ID, else `provider:customer_id`) in
   `scan_accounts`; the other pages skip them. The claimer finds the account's customers in the
   other providers by account ID and merges them into one snapshot. A retried item (its first
   holder died) re-claims its own accounts. A quiet account costs the database nothing more.
4. Snapshots are read through each provider's **scan view** (`ScanScoped`): the usage baseline,
   the newest `SCAN_INVOICES` invoices and `SCAN_PAYMENT_DAYS` of payments, not a lookup's 13
   months; the view shares the client's HTTP pacing and catalogue caches.
5. Provider calls go through an **AIMD limiter per provider**: the window of calls in flight
   halves when the provider answers 429 (at most once per `Retry-After`, or per second), and
   grows by one per window of successful calls. Below it the HTTP layer paces requests at the
   provider's rate (`ProviderHttp(rate=…)`, itself halved by a 429) and retries each 429 after
   its `Retry-After`; an account whose calls still fail is retried later in the same item
   (after the rest of the page, `account_attempts` times); one that finally fails is reported
   (the run is then incomplete; the CLI's exit code says so).
6. The run is done when it is listed and no item is left; its totals are the items' totals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from bot.domain.anomalies import Anomaly, DetectorConfig, detect
from bot.domain.identifiers import IdentifierKind
from bot.domain.models import (
    PROVIDERS,
    AccountRef,
    BillingSnapshot,
    CustomerRecord,
    ProviderSnapshot,
)
from bot.domain.money import Money
from bot.domain.ports import BillingProvider, CustomerLister, MessageDelivery, ScanScoped
from bot.domain.records import ScanItem, ScanRunState, Store
from bot.errors import ProviderError, ProviderRateLimited
from bot.services.alerts import record_anomaly, suppressions_of

log = logging.getLogger("bot.scan")


#: Invoices a scan reads per account and provider (lookups read 13 months): the newest one
#: checked for a jump, the seven before it its baseline reads (their median and the growth of
#: the last six months), an upcoming draft, and one spare for a one-off invoice in between.
SCAN_INVOICES = 10
#: Days of payments a scan reads: failures and duplicate charges alert within days, and a
#: dispute is usually opened within 120 days of its charge (later ones arrive by webhook).
SCAN_PAYMENT_DAYS = 180


def usage_days_needed(config: DetectorConfig) -> int:
    """Days of daily usage a scan snapshot needs (the baseline, the checked days and today);
    the composition root builds the provider clients with at least this much."""
    return config.lookback_days + config.usage_days_back + 1


# --- the adaptive limiter -----------------------------------------------------------------------


class AimdLimiter:
    """Additive-increase, multiplicative-decrease limit on one provider's calls in flight.

    `throttled()` halves the window (not below `minimum`, at most once per cooldown: the
    `Retry-After` given, else one second, so a burst of 429s halves it once); every successful
    call adds `1/window`, i.e. one per window of calls. Composes with the HTTP policy below it,
    which paces and retries individual requests."""

    def __init__(
        self,
        name: str,
        *,
        initial: int = 8,
        minimum: int = 1,
        maximum: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.minimum = max(1, minimum)
        self.maximum = max(self.minimum, maximum)
        self.window = float(min(max(initial, self.minimum), self.maximum))
        self.in_flight = 0
        self.decreases = 0
        self.peak = self.window
        self._clock = clock
        self._cool_until = 0.0
        self._pause_until = 0.0
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> AimdLimiter:
        async with self._changed:
            while True:
                wait = self._pause_until - self._clock()
                if wait <= 0 and self.in_flight < int(self.window):
                    break
                try:
                    async with asyncio.timeout(wait if wait > 0 else None):
                        await self._changed.wait()
                except TimeoutError:
                    pass
            self.in_flight += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        async with self._changed:
            self.in_flight -= 1
            # Wake only as many waiters as there are free slots (not all of them: dozens of
            # waiters re-checking after every call would cost more than the calls).
            self._changed.notify(max(1, int(self.window) - self.in_flight))

    def succeeded(self) -> None:
        """One call went through: grow by one per window of calls."""
        self.window = min(float(self.maximum), self.window + 1.0 / self.window)
        self.peak = max(self.peak, self.window)

    def throttled(self, retry_after: float | None = None, *, pause: bool = False) -> None:
        """The provider said 429: halve (once per cooldown); with `pause`, also hold new calls
        for `retry_after` (a call that ran out of retries)."""
        now = self._clock()
        delay = min(max(retry_after or 0.0, 0.0), 30.0)
        if now >= self._cool_until:
            self.window = max(float(self.minimum), self.window / 2)
            self.decreases += 1
            self._cool_until = now + max(1.0, delay)
        if pause and delay > 0:
            self._pause_until = max(self._pause_until, now + delay)


# --- customers on work items -------------------------------------------------------------------


def customer_to_json(c: CustomerRecord) -> dict[str, Any]:
    """A customer as a work item stores it (raw JSON included: clients read it back)."""
    return {
        "provider": c.provider,
        "customer_id": c.customer_id,
        "account_id": c.account_id,
        "name": c.name,
        "email": c.email,
        "currency": c.currency,
        "balance": [c.balance.decimal_str(), c.balance.currency] if c.balance else None,
        "delinquent": c.delinquent,
        "created_at": c.created_at.isoformat() if c.created_at else None,
        "dashboard_url": c.dashboard_url,
        "raw": dict(c.raw),
    }


def customer_from_json(data: Mapping[str, Any]) -> CustomerRecord:
    """The customer `customer_to_json` stored."""
    balance = data.get("balance")
    created = data.get("created_at")
    return CustomerRecord(
        provider=data["provider"],
        customer_id=str(data["customer_id"]),
        account_id=data.get("account_id"),
        name=data.get("name"),
        email=data.get("email"),
        currency=data.get("currency"),
        balance=Money.of(Decimal(balance[0]), balance[1]) if balance else None,
        delinquent=bool(data.get("delinquent")),
        created_at=datetime.fromisoformat(created) if created else None,
        dashboard_url=data.get("dashboard_url"),
        raw=data.get("raw") or {},
    )


def account_key(c: CustomerRecord) -> str:
    """What a run deduplicates accounts on: our account ID, else the provider's customer."""
    return c.account_id or f"{c.provider}:{c.customer_id}"


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanSummary:
    """What a finished (or abandoned) scan found, for the CLI's summary and the logs."""

    run_id: int
    complete: bool
    accounts: int
    alerts: int
    new_alerts: int
    failed_accounts: tuple[str, ...]
    list_failures: Mapping[str, str]
    seconds: float
    calls: Mapping[str, int] = field(default_factory=dict)
    throttled: Mapping[str, int] = field(default_factory=dict)


@dataclass
class Progress:
    """Live counts for a progress bar (this process's work; `listed` grows while listing)."""

    listed: int = 0
    scanned: int = 0
    skipped: int = 0
    alerts: int = 0
    failed: int = 0
    listing_done: bool = False


@dataclass
class _ItemResult:
    accounts: int = 0
    skipped: int = 0
    alerts: int = 0
    new_alerts: int = 0
    failed: list[str] = field(default_factory=list)


class _AccountFailed(Exception):
    def __init__(self, provider: str, error: ProviderError | TimeoutError) -> None:
        super().__init__(provider)
        self.provider = provider
        self.error = error


# --- the service --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """Knobs of a scan (settings `SCAN_CONCURRENCY`, `SCAN_PAGE_SIZE`, `SCAN_LEASE_SECONDS`)."""

    page_size: int = 100
    #: The listing stays at most this many unclaimed pages ahead of the workers: the database
    #: holds a few pages, not every account, and an account is scanned soon after it was listed.
    list_ahead: int = 4
    #: Accounts scanned at once by this process (bounds memory: one snapshot each).
    accounts_in_flight: int = 32
    #: Starting and largest AIMD window per provider (calls in flight).
    initial_window: int = 8
    max_window: int = 64
    #: Tries per account within an item (the first and the later retries).
    account_attempts: int = 3
    #: Seconds a claimed item stays ours without renewal (renewed every third of it).
    item_lease: float = 120.0
    #: A coordinator silent this long is dead; its run is abandoned by the next scan.
    stale_after: float = 300.0
    #: Seconds one provider call (snapshot or lookup) may take, retries included.
    call_timeout: float = 60.0


class ScanService:
    """Runs scans (as coordinator and worker) over the enabled providers."""

    def __init__(
        self,
        *,
        store: Store,
        providers: Mapping[str, BillingProvider],
        config: DetectorConfig,
        holder: str,
        channel: str | None,
        delivery: MessageDelivery | None = None,
        options: ScanOptions | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Any = None,
    ) -> None:
        self.store = store
        self.providers = dict(providers)
        #: What snapshots are read through: each provider's scan view when it has one (the
        #: recent window only), sharing the provider's HTTP client, pacing and caches.
        self.readers: dict[str, BillingProvider] = {
            name: (
                p.scan_view(invoices=SCAN_INVOICES, payment_days=SCAN_PAYMENT_DAYS)
                if isinstance(p, ScanScoped)
                else p
            )
            for name, p in self.providers.items()
        }
        self.config = config
        self.holder = holder
        self.channel = channel
        self.delivery = delivery
        self.options = options or ScanOptions()
        self.clock = clock
        self.metrics = metrics
        self.limiters = {
            name: AimdLimiter(
                name, initial=self.options.initial_window, maximum=self.options.max_window
            )
            for name in self.providers
        }
        self.progress = Progress()
        self._accounts = asyncio.Semaphore(self.options.accounts_in_flight)

    # -- entry points --------------------------------------------------------------------------

    async def run(
        self,
        *,
        post: bool,
        on_progress: Callable[[Progress], None] | None = None,
        today: date | None = None,
    ) -> ScanSummary:
        """One scan as coordinator: list every provider into work items while working on them,
        then wait for items other replicas hold. Raises nothing for provider faults (they are
        in the summary); database errors propagate."""
        started = time.monotonic()
        self.progress = Progress()
        now = self.clock()
        scan_day = today or now.date()
        calls_before = self._calls()
        async with self.store.uow() as uow:
            abandoned = await uow.scans.abandon_stale(now=now, stale_after=self.options.stale_after)
            run_id = await uow.scans.start_run(
                coordinator=self.holder, today=scan_day, post=post, now=now
            )
            await uow.commit()
        if abandoned:
            log.warning("abandoned scans whose coordinator died", extra={"runs": abandoned})
        listing = asyncio.create_task(self._list(run_id), name=f"scan-list:{run_id}")
        beating = asyncio.create_task(self._beat(run_id), name=f"scan-beat:{run_id}")
        try:
            await self._work(run_id=run_id, until_done=listing, on_progress=on_progress)
            await listing
            await self._await_completion(run_id, on_progress=on_progress)
        finally:
            for task in (listing, beating):
                if not task.done():
                    task.cancel()
            await asyncio.gather(listing, beating, return_exceptions=True)
        async with self.store.uow() as uow:
            state = await uow.scans.state(run_id)
        assert state is not None
        calls = self._calls()
        summary = self._summary(state, started, calls_before, calls)
        log.info(
            "scan finished",
            extra={"run": run_id, "accounts": summary.accounts, "alerts": summary.alerts,
                   "new": summary.new_alerts, "failed": len(summary.failed_accounts)},
        )  # fmt: skip
        return summary

    async def help_running(self) -> int:
        """Worker only (other replicas' periodic job): scan items of any running run until
        none is left to claim; the number of items done."""
        done = 0
        while True:
            item = await self._claim(None)
            if item is None:
                return done
            await self._process_item(item)
            done += 1

    # -- coordinator ---------------------------------------------------------------------------

    async def _beat(self, run_id: int) -> None:
        """Tell other replicas this coordinator is alive, all through the run (a run whose
        coordinator stops beating for `stale_after` is abandoned by the next scan)."""
        every = max(0.05, min(10.0, self.options.stale_after / 5))
        while True:
            await asyncio.sleep(every)
            try:
                async with self.store.uow() as uow:
                    await uow.scans.heartbeat(run_id, now=self.clock())
                    await uow.commit()
            except Exception:  # a database hiccup: the next beat tries again
                log.warning("scan heartbeat failed", extra={"run": run_id}, exc_info=True)

    async def _list(self, run_id: int) -> None:
        """Store every provider's customers as work items, a page at a time."""
        failures: dict[str, str] = {}
        seq = 0
        for name in [p for p in PROVIDERS if p in self.providers]:
            provider = self.providers[name]
            if not isinstance(provider, CustomerLister):
                failures[name] = "cannot list customers"
                continue
            try:
                async for page in provider.customer_pages(page_size=self.options.page_size):
                    self.limiters[name].succeeded()
                    seq += 1
                    await self._wait_for_room(run_id)
                    async with self.store.uow() as uow:
                        await uow.scans.add_item(
                            run_id,
                            provider=name,
                            seq=seq,
                            customers=[customer_to_json(c) for c in page],
                        )
                        await uow.commit()
                    self.progress.listed += len(page)
            except ProviderError as exc:
                log.warning(
                    "listing customers failed", extra={"provider": name, "error": exc.message}
                )
                failures[name] = exc.message
        async with self.store.uow() as uow:
            await uow.scans.finish_listing(run_id, now=self.clock(), failures=failures)
            await uow.commit()
        self.progress.listing_done = True

    async def _wait_for_room(self, run_id: int) -> None:
        """Hold the listing while `list_ahead` pages are waiting for a worker."""
        while True:
            async with self.store.uow() as uow:
                waiting = await uow.scans.pending_items(run_id)
            if waiting < max(1, self.options.list_ahead):
                return
            await asyncio.sleep(0.25)

    async def _await_completion(
        self, run_id: int, *, on_progress: Callable[[Progress], None] | None
    ) -> None:
        """Wait for items other replicas hold (claiming any whose holder died); return when the
        run is over (done, or abandoned by a scan that took this one for dead)."""
        while True:
            async with self.store.uow() as uow:
                over = await uow.scans.finish_if_complete(run_id, now=self.clock())
                await uow.commit()
            if over:
                return
            item = await self._claim(run_id)
            if item is not None:
                await self._process_item(item, on_progress=on_progress)
                continue
            await asyncio.sleep(0.5)

    # -- worker --------------------------------------------------------------------------------

    async def _claim(self, run_id: int | None) -> ScanItem | None:
        async with self.store.uow() as uow:
            item = await uow.scans.claim_item(
                holder=self.holder, now=self.clock(), lease=self.options.item_lease, run_id=run_id
            )
            await uow.commit()
        return item

    async def _work(
        self,
        *,
        run_id: int,
        until_done: asyncio.Task[None],
        on_progress: Callable[[Progress], None] | None,
    ) -> None:
        """Claim and process this run's items, two at a time, while the listing goes on."""

        async def lane() -> None:
            while True:
                item = await self._claim(run_id)
                if item is None:
                    if until_done.done():
                        return
                    await asyncio.sleep(0.05)
                    continue
                await self._process_item(item, on_progress=on_progress)

        await asyncio.gather(lane(), lane())

    async def _process_item(
        self, item: ScanItem, *, on_progress: Callable[[Progress], None] | None = None
    ) -> None:
        customers = [customer_from_json(c) for c in item.customers]
        result = _ItemResult()
        renew = asyncio.create_task(self._renew(item), name=f"scan-item:{item.id}")
        try:
            account_ids = [c.account_id for c in customers if c.account_id]
            # One transaction per page, not per account: the page's suppressions, and its
            # accounts claimed at once (one account, one scan); the other pages skip them.
            async with self.store.uow() as uow:
                suppressions = suppressions_of(await uow.alerts.suppressions(account_ids))
                mine = await uow.scans.claim_accounts(
                    item.run_id, [account_key(c) for c in customers], item_id=item.id
                )
                await uow.commit()
            pending = [c for c in customers if account_key(c) in mine]
            result.skipped = len(customers) - len(pending)
            self.progress.skipped += result.skipped
            for attempt in range(self.options.account_attempts):
                failed: list[tuple[CustomerRecord, _AccountFailed]] = []

                async def one(
                    c: CustomerRecord, failed: list[tuple[CustomerRecord, _AccountFailed]] = failed
                ) -> None:
                    async with self._accounts:
                        try:
                            await self._scan_account(item, c, suppressions, result)
                        except _AccountFailed as error:
                            failed.append((c, error))
                    if on_progress is not None:
                        on_progress(self.progress)

                await asyncio.gather(*(one(c) for c in pending))
                if not failed:
                    break
                pending = [c for c, _ in failed]
                if attempt + 1 < self.options.account_attempts:
                    # Let the limiter's pause (a provider's Retry-After) and backoff play out.
                    await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
                else:
                    for c, exc in failed:
                        key = account_key(c)
                        log.warning(
                            "account could not be scanned",
                            extra={"account": key, "provider": exc.provider},
                        )
                        result.failed.append(key)
                        self.progress.failed += 1
        finally:
            renew.cancel()
            await asyncio.gather(renew, return_exceptions=True)
        async with self.store.uow() as uow:
            ok = await uow.scans.complete_item(
                item.id, holder=self.holder, now=self.clock(), accounts=result.accounts,
                skipped=result.skipped, alerts=result.alerts, new_alerts=result.new_alerts,
                failed=result.failed,
            )  # fmt: skip
            await uow.commit()
        if not ok:
            log.warning("lost a scan item to another replica", extra={"item": item.id})

    async def _renew(self, item: ScanItem) -> None:
        while True:
            await asyncio.sleep(self.options.item_lease / 3)
            async with self.store.uow() as uow:
                kept = await uow.scans.renew_item(
                    item.id, holder=self.holder, now=self.clock(), lease=self.options.item_lease
                )
                await uow.commit()
            if not kept:
                return

    async def _scan_account(
        self,
        item: ScanItem,
        customer: CustomerRecord,
        suppressions: Sequence[Any],
        result: _ItemResult,
    ) -> None:
        snapshot = await self._snapshot(customer)
        found = detect(snapshot, config=self.config, today=item.today, suppressions=suppressions)
        channel = self.channel if item.post else None
        told = False
        now = self.clock()
        if found.anomalies:  # a quiet account costs the database nothing
            async with self.store.uow() as uow:
                for anomaly in found.anomalies:
                    recorded = await record_anomaly(
                        uow, anomaly, source="scan", now=now, channel=channel, run_id=item.run_id
                    )
                    result.alerts += 1
                    result.new_alerts += int(recorded.new)
                    told = told or recorded.notified is not None
                await uow.commit()
        if told and self.delivery is not None:
            self.delivery.wake()
        if self.metrics is not None:
            for anomaly in found.anomalies:
                self.metrics.inc("billing_triage_alerts_detected_total", kind=anomaly.kind.value)
        result.accounts += 1
        self.progress.scanned += 1
        self.progress.alerts += len(found.anomalies)

    # -- provider calls ------------------------------------------------------------------------

    async def _call(self, name: str, make: Callable[[], Any]) -> Any:
        """One provider call under that provider's limiter; throttling slows the limiter."""
        limiter = self.limiters[name]
        http = getattr(self.providers[name], "http", None)
        before = getattr(http, "throttled", 0)
        async with limiter:
            try:
                async with asyncio.timeout(self.options.call_timeout):
                    value = await make()
            except ProviderRateLimited as exc:
                limiter.throttled(getattr(http, "last_retry_after", None), pause=True)
                raise _AccountFailed(name, exc) from None
            except (ProviderError, TimeoutError) as exc:
                raise _AccountFailed(name, exc) from None
            finally:
                if getattr(http, "throttled", 0) > before:
                    limiter.throttled(getattr(http, "last_retry_after", None))
        limiter.succeeded()
        return value

    async def _snapshot(self, customer: CustomerRecord) -> BillingSnapshot:
        """The account's merged snapshot: this customer, plus its customers in the other
        providers found by account ID."""
        records: dict[str, CustomerRecord] = {customer.provider: customer}
        if customer.account_id:
            others = [n for n in self.providers if n != customer.provider]

            async def find(name: str) -> None:
                provider = self.readers[name]
                found: list[CustomerRecord] = await self._call(
                    name,
                    lambda: provider.find_customers(
                        IdentifierKind.ACCOUNT_ID, str(customer.account_id)
                    ),
                )
                matching = [r for r in found if r.account_id in (None, customer.account_id)]
                if matching:
                    records[name] = matching[0]

            await _all(find(n) for n in others)
        snaps: dict[str, ProviderSnapshot] = {}

        async def snap(name: str, record: CustomerRecord) -> None:
            provider = self.readers[name]
            snaps[name] = await self._call(name, lambda: provider.get_snapshot(record))

        await _all(snap(n, r) for n, r in records.items())
        order = {n: i for i, n in enumerate(PROVIDERS)}
        names = [c.name for c in records.values() if c.name]
        emails = [c.email for c in records.values() if c.email]
        return BillingSnapshot(
            account=AccountRef(
                account_id=customer.account_id,
                customer_ids={p: c.customer_id for p, c in records.items()},
                display_name=names[0] if names else None,
                email=emails[0] if emails else None,
            ),
            providers=tuple(sorted(snaps.values(), key=lambda s: order.get(s.provider, 9))),
            fetched_at=self.clock(),
        )

    # -- figures -------------------------------------------------------------------------------

    def _calls(self) -> dict[str, tuple[int, int]]:
        out = {}
        for name, provider in self.providers.items():
            http = getattr(provider, "http", None)
            out[name] = (int(getattr(http, "calls", 0)), int(getattr(http, "throttled", 0)))
        return out

    def _summary(
        self,
        state: ScanRunState,
        started: float,
        before: Mapping[str, tuple[int, int]],
        after: Mapping[str, tuple[int, int]],
    ) -> ScanSummary:
        complete = state.status == "done" and not state.failed and not state.list_failures
        return ScanSummary(
            run_id=state.id,
            complete=complete,
            accounts=state.accounts,
            alerts=state.alerts,
            new_alerts=state.new_alerts,
            failed_accounts=state.failed,
            list_failures=state.list_failures,
            seconds=time.monotonic() - started,
            calls={n: after[n][0] - before.get(n, (0, 0))[0] for n in after},
            throttled={n: after[n][1] - before.get(n, (0, 0))[1] for n in after},
        )


async def _all(aws: Any) -> None:
    """Await every coroutine concurrently; the first `_AccountFailed` wins (others cancelled)."""
    try:
        async with asyncio.TaskGroup() as group:
            for aw in aws:
                group.create_task(aw)
    except BaseExceptionGroup as error:
        leaf: BaseException = error
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


def anomalies_of(found: Sequence[Anomaly]) -> list[dict[str, str]]:
    """The `scan --json` objects of `found` (DESIGN §5)."""
    return [a.to_json() for a in found]

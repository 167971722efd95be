"""Account resolution and the merged billing snapshot (DESIGN §3 `status`).

Resolution: ask every provider that can search by the identifier's kind, concurrently; settle on
our account ID (several distinct ones → ambiguous); then find the account in the providers that
did not answer yet, by account ID. Customers that meet only through an email, with no account ID
in common, are listed apart when they are evidently different customers, and otherwise joined
but flagged "matched by email only" so the engineer can check.

The links cache remembers, per provider, what each provider answered for an identifier: its
customer, or (for a short while) that it has none. A provider that failed is never remembered, so
the cache never turns "was down" into "is not there": while any enabled provider has no fresh
answer in the cache, the identifier is resolved afresh and every provider is asked. Cached and
fresh paths share one time budget. Snapshots fan out to every provider at once; a provider that
fails or runs out of time is named in the result and the others still show.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from bot.domain.identifiers import AccountIdentifier, IdentifierKind
from bot.domain.mirrors import link_mirrors, unpaired_copies
from bot.domain.models import (
    AccountRef,
    BillingSnapshot,
    CustomerRecord,
    ProviderFailure,
    ProviderSnapshot,
)
from bot.domain.ports import BillingProvider
from bot.domain.records import AccountLink, UnitOfWork
from bot.errors import (
    AccountNotFound,
    AmbiguousAccount,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from bot.queueing import measuring, queue_seconds, within

log = logging.getLogger("bot.lookup")
T = TypeVar("T")

#: `AccountLink.customer_id` of a link that means "this provider answered: no such customer".
NOT_THERE = ""
#: How long a "no such customer" answer is trusted: short, so a customer created since shows
#: up soon, yet long enough that a Stripe-only account is not re-resolved on every lookup.
NEGATIVE_LINK_TTL = timedelta(minutes=10)
#: Share of the lookup's budget the cache read may take before it is given up on.
_CACHE_READ_SHARE = 0.5
#: Below this much budget a provider is not asked at all (the call could only time out); it is
#: named as not asked instead.
MIN_CALL_SECONDS = 0.05

#: Which identifier kind finds a provider's customer by that provider's own ID.
OWN_ID_KIND = {
    "stripe": IdentifierKind.STRIPE_CUSTOMER,
    "orb": IdentifierKind.ORB_CUSTOMER,
    "metronome": IdentifierKind.METRONOME_CUSTOMER,
}


def failure_reason(exc: BaseException) -> str:
    """A short, safe reason for the user ("timed out", "rate limited", …)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ProviderRateLimited):
        return "rate limited"
    if isinstance(exc, ProviderAuthError):
        return "authentication failed"
    if isinstance(exc, ProviderUnavailable):
        return "timed out" if "timed out" in exc.message else "unavailable"
    if isinstance(exc, ProviderError):
        return "unavailable"
    return "unavailable"


class Resolution:
    """Where an account lives: our account ID and one customer record per provider."""

    def __init__(
        self,
        account_id: str | None,
        customers: dict[str, CustomerRecord],
        failures: dict[str, str],
        *,
        skipped: dict[str, str] | None = None,
        email_only: tuple[str, ...] = (),
    ) -> None:
        self.account_id = account_id
        self.customers = customers
        self.failures = failures
        #: Providers not asked at all, and why.
        self.skipped = skipped or {}
        #: Providers whose customer joined only through the email (see `AccountRef`).
        self.email_only = email_only

    def ref(self) -> AccountRef:
        """The account as the domain names it."""
        names = [c.name for c in self.customers.values() if c.name]
        emails = [c.email for c in self.customers.values() if c.email]
        return AccountRef(
            account_id=self.account_id,
            customer_ids={p: c.customer_id for p, c in self.customers.items()},
            display_name=names[0] if names else None,
            email=emails[0] if emails else None,
            email_only=self.email_only,
        )


class LookupService:
    """Resolves ACCOUNT identifiers and builds `BillingSnapshot`s from every enabled provider."""

    def __init__(
        self,
        providers: Mapping[str, BillingProvider],
        *,
        database: Any = None,
        deadline: float = 18.0,
        resolve_timeout: float = 7.0,
        links_ttl: timedelta = timedelta(hours=6),
        negative_links_ttl: timedelta = NEGATIVE_LINK_TTL,
        min_call_seconds: float = MIN_CALL_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.providers = dict(providers)
        self._uow: Callable[[], UnitOfWork] | None = database.uow if database is not None else None
        self.deadline = deadline
        self.resolve_timeout = resolve_timeout
        self.links_ttl = links_ttl
        self.negative_links_ttl = negative_links_ttl
        self.min_call_seconds = min_call_seconds
        self.clock = clock

    async def _each(
        self,
        names: Sequence[str],
        call: Callable[[BillingProvider], Awaitable[T]],
        timeout: float,  # noqa: ASYNC109 - a budget shared by the fan-out, not one call's timeout
    ) -> dict[str, T | BaseException]:
        """Run `call` on each named provider concurrently, each bounded by `timeout` of the
        provider's own time: waiting in our own queue for that provider (rate pacing, connection
        slots) extends its budget, so a provider is never named as failing because we queued it."""

        async def one(name: str) -> T | BaseException:
            with measuring() as meter:
                try:
                    return await within(
                        _coro(call(self.providers[name])), max(0.01, timeout), meter=meter
                    )
                except (ProviderError, TimeoutError) as exc:
                    return exc

        results = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, results, strict=True))

    @staticmethod
    def _left(deadline: float) -> float:
        # Time waited in our own queues (in the enclosing `measuring()` scope) is not spent.
        return deadline + queue_seconds() - time.monotonic()

    async def resolve(
        self,
        ident: AccountIdentifier,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Resolution:
        """Find the account behind `ident` (see `_resolve`); time spent waiting in our own queues
        does not count against `timeout`."""
        with measuring():
            return await self._resolve(ident, timeout=timeout)

    async def _resolve(
        self,
        ident: AccountIdentifier,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Resolution:
        """Find the account behind `ident` within `timeout` (default `resolve_timeout`), from the
        links cache when it answers for every provider. Raises `AccountNotFound` /
        `AmbiguousAccount`; a resolution every provider failed raises the first provider error."""
        budget = timeout if timeout is not None else self.resolve_timeout
        deadline = time.monotonic() + budget
        cached = await self._cached(ident, deadline)
        if cached is not None:
            return cached
        failures: dict[str, str] = {}
        found: dict[str, list[CustomerRecord]] = {}
        errors: list[BaseException] = []
        asked_by_account_id: set[str] = set()  # providers that already answered for ident.value
        for kind in ident.kinds:
            names = [n for n in self.providers if n not in failures]
            if kind is IdentifierKind.ACCOUNT_ID:
                asked_by_account_id.update(names)

            def find(
                p: BillingProvider, k: IdentifierKind = kind
            ) -> Awaitable[list[CustomerRecord]]:
                return p.find_customers(k, ident.value)

            results = await self._each(names, find, self._left(deadline))
            for name, result in results.items():
                if isinstance(result, BaseException):
                    failures[name] = failure_reason(result)
                    errors.append(result)
                elif result:
                    found.setdefault(name, []).extend(result)
            if found:
                break
        if not found:
            if failures and len(failures) == len(self.providers):
                raise errors[0]
            raise AccountNotFound(_not_found_message(ident, failures))
        account_id, customers, email_only = _settle(ident, found)
        missing = [n for n in self.providers if n not in customers and n not in failures]
        if account_id == ident.value:
            missing = [n for n in missing if n not in asked_by_account_id]  # asked already
        skipped: dict[str, str] = {}
        if account_id and missing:
            if self._left(deadline) < self.min_call_seconds:
                skipped = dict.fromkeys(missing, "not asked: the lookup ran out of time")
                missing = []
            results = await self._each(
                missing,
                lambda p: p.find_customers(IdentifierKind.ACCOUNT_ID, account_id),
                self._left(deadline),
            )
            for name, result in results.items():
                if isinstance(result, BaseException):
                    failures[name] = failure_reason(result)
                elif result:
                    matching = [r for r in result if r.account_id in (None, account_id)]
                    if matching:
                        customers[name] = _pick(matching, account_id)
        resolution = Resolution(
            account_id, customers, failures, skipped=skipped, email_only=email_only
        )
        # Providers that answered and have no customer for this identifier; failed and skipped
        # ones are left out, so the next lookup asks them again.
        answered_none = [
            n
            for n in self.providers
            if n not in customers and n not in failures and n not in skipped
        ]
        await self._remember(ident, resolution, answered_none)
        return resolution

    async def snapshot(self, ident: AccountIdentifier) -> BillingSnapshot:
        """The account's billing state from every enabled provider, within the deadline (time
        waited in our own queues not counted)."""
        with measuring():
            return await self._snapshot(ident)

    async def _snapshot(self, ident: AccountIdentifier) -> BillingSnapshot:
        started = time.monotonic()
        resolution = await self.resolve(ident)
        return await self.snapshot_for(resolution, started=started)

    async def snapshot_for(
        self, resolution: Resolution, *, started: float | None = None
    ) -> BillingSnapshot:
        """The billing state of an account already resolved (`resolve`), within the deadline
        counted from `started` (a `time.monotonic()` reading; now when None)."""
        started = time.monotonic() if started is None else started
        remaining = self.deadline - (time.monotonic() - started - queue_seconds())
        names = list(resolution.customers)
        results = await self._each(
            names, lambda p: p.get_snapshot(resolution.customers[p.name]), remaining
        )
        snaps: list[ProviderSnapshot] = []
        failures = [ProviderFailure(n, r) for n, r in resolution.failures.items()]  # type: ignore[arg-type]
        for name in names:
            result = results[name]
            if isinstance(result, BaseException):
                log.warning(
                    "provider snapshot failed",
                    extra={"provider": name, "error": type(result).__name__},
                )
                failures.append(ProviderFailure(name, failure_reason(result)))  # type: ignore[arg-type]
            else:
                snaps.append(result)
        order = {n: i for i, n in enumerate(self.providers)}
        snaps.sort(key=lambda s: order.get(s.provider, 99))
        failures.sort(key=lambda f: order.get(f.provider, 99))
        skipped = [ProviderFailure(n, r) for n, r in resolution.skipped.items()]  # type: ignore[arg-type]
        # One bill, one invoice: Stripe copies of Orb or Metronome invoices are paired with
        # their sources, which take the copies' payment state.
        providers, mirrors = link_mirrors(snaps)
        orphans = unpaired_copies(providers, mirrors)
        return BillingSnapshot(
            account=resolution.ref(),
            providers=providers,
            failures=tuple(failures),
            fetched_at=self.clock(),
            skipped=tuple(sorted(skipped, key=lambda f: order.get(f.provider, 99))),
            mirrors=mirrors,
            unpaired_copies=orphans,
        )

    # --- the links cache ------------------------------------------------------------------

    def _key(self, ident: AccountIdentifier) -> str:
        value = ident.value.lower() if ident.primary is IdentifierKind.EMAIL else ident.value
        return f"{ident.primary.value}:{value}"

    async def _cached(self, ident: AccountIdentifier, deadline: float) -> Resolution | None:
        """The resolution from the links cache, or None when the cache cannot answer for every
        enabled provider (then the caller resolves afresh and asks them all)."""
        if self._uow is None:
            return None
        try:
            async with asyncio.timeout(max(0.01, self._left(deadline) * _CACHE_READ_SHARE)):
                async with self._uow() as uow:
                    links = await uow.links.get(self._key(ident))
        except Exception:  # a slow or broken cache never blocks a lookup
            log.warning("account links cache unavailable", exc_info=True)
            return None
        now = self.clock()
        fresh: dict[str, AccountLink] = {}
        for link in links:
            ttl = self.links_ttl if link.customer_id != NOT_THERE else self.negative_links_ttl
            if link.provider in self.providers and now - link.updated_at < ttl:
                fresh[link.provider] = link
        if set(fresh) != set(self.providers):
            return None  # a provider with no fresh answer (it failed, or is new): ask everyone
        positive = {n: link for n, link in fresh.items() if link.customer_id != NOT_THERE}
        account_ids = {link.account_id for link in positive.values()}
        if not positive or len(account_ids) != 1:
            return None
        account_id = account_ids.pop()
        results = await self._each(
            list(positive),
            lambda p: p.find_customers(OWN_ID_KIND[p.name], positive[p.name].customer_id),
            self._left(deadline),
        )
        customers: dict[str, CustomerRecord] = {}
        failures: dict[str, str] = {}
        for name, result in results.items():
            if isinstance(result, BaseException):
                failures[name] = failure_reason(result)
            elif result:
                customers[name] = result[0]
            else:
                return None  # a linked customer vanished: resolve afresh
        if not customers:
            return None
        return Resolution(account_id, customers, failures)

    async def _remember(
        self, ident: AccountIdentifier, resolution: Resolution, answered_none: Sequence[str]
    ) -> None:
        if self._uow is None or not resolution.customers or resolution.email_only:
            # Email-only joins are re-checked on every lookup: the flag must not get lost.
            return
        now = self.clock()
        key = self._key(ident)
        links = [
            AccountLink(
                identifier=key,
                account_id=resolution.account_id,
                provider=name,
                customer_id=record.customer_id,
                updated_at=now,
            )
            for name, record in resolution.customers.items()
        ]
        links.extend(
            AccountLink(
                identifier=key,
                account_id=resolution.account_id,
                provider=name,
                customer_id=NOT_THERE,
                updated_at=now,
            )
            for name in answered_none
        )
        try:
            async with self._uow() as uow:
                await uow.links.put(links)
                await uow.commit()
        except Exception:
            log.warning("could not cache account links", exc_info=True)


async def _coro(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _pick(records: list[CustomerRecord], account_id: str | None) -> CustomerRecord:
    matching = [r for r in records if r.account_id == account_id] or records
    return matching[0]


# Legal-form words that don't make two names different customers ("Acme, Inc." is "ACME").
_LEGAL_FORMS = frozenset(
    {"inc", "incorporated", "llc", "ltd", "limited", "corp", "corporation", "co", "company",
     "gmbh", "plc", "sa", "ag", "bv", "the"}
)  # fmt: skip


def _name_key(name: str) -> str:
    words = re.findall(r"[a-z0-9]+", name.casefold())
    return " ".join(w for w in words if w not in _LEGAL_FORMS)


def _settle(
    ident: AccountIdentifier, found: Mapping[str, list[CustomerRecord]]
) -> tuple[str | None, dict[str, CustomerRecord], tuple[str, ...]]:
    """(account ID, one customer per provider, providers joined by the email only).

    Raises `AmbiguousAccount` for several account IDs, several customers of one provider with
    none, or an email shared by evidently different customers (different names) of different
    providers with no account ID in common: those are listed, never merged.
    """
    account_ids = {r.account_id for recs in found.values() for r in recs if r.account_id}
    per_provider_multi = any(len(recs) > 1 for recs in found.values())
    if len(account_ids) > 1 or (not account_ids and per_provider_multi):
        raise AmbiguousAccount(_ambiguous_message(ident, found), candidates=_candidates(found))
    account_id = next(iter(account_ids)) if account_ids else None
    customers = {name: _pick(recs, account_id) for name, recs in found.items()}
    if ident.primary is not IdentifierKind.EMAIL or len(customers) < 2:
        return account_id, customers, ()
    without = tuple(n for n, c in customers.items() if c.account_id is None)
    if account_id is not None and not without:
        return account_id, customers, ()  # every provider's customer carries the account ID
    names = {_name_key(c.name) for c in customers.values() if c.name and _name_key(c.name)}
    if len(names) > 1:
        raise AmbiguousAccount(
            _ambiguous_message(ident, found, by_email=True), candidates=_candidates(found)
        )
    return account_id, customers, without if account_id is not None else tuple(customers)


def _candidates(found: Mapping[str, list[CustomerRecord]]) -> tuple[str, ...]:
    labels = [r.account_id or r.customer_id for recs in found.values() for r in recs]
    return tuple(dict.fromkeys(labels))


def _not_found_message(ident: AccountIdentifier, failures: Mapping[str, str]) -> str:
    text = f"No account matches `{ident.value}` in any billing provider."
    if failures:
        down = ", ".join(f"{_label(p)} ({r})" for p, r in failures.items())
        text += f" Not checked: {down}."
    return text + " Check the spelling, or try the `cus_…` ID or account ID."


def _ambiguous_message(
    ident: AccountIdentifier, found: Mapping[str, list[CustomerRecord]], *, by_email: bool = False
) -> str:
    options = []
    for recs in found.values():
        for r in recs:
            label = r.account_id or r.customer_id
            options.append(
                f"`{label}` ({_label(r.provider)} {r.customer_id}, {r.name or 'no name'})"
            )
    shown = "; ".join(options[:6])
    if by_email:
        return (
            f"`{ident.value}` matches different customers with no account ID in common: {shown}. "
            "They were matched by email only, so they are not merged; look up one of them by "
            "its customer ID."
        )
    return (
        f"`{ident.value}` matches several accounts: {shown}. "
        "Look up one of them by its account ID or customer ID."
    )


def _label(provider: str) -> str:
    return {"stripe": "Stripe", "orb": "Orb", "metronome": "Metronome"}.get(provider, provider)

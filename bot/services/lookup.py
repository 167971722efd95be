"""Account resolution and the merged billing snapshot (DESIGN §3 `status`).

Resolution: ask every provider that can search by the identifier's kind, concurrently; settle on
our account ID (several distinct ones → ambiguous); then find the account in the providers that
did not answer yet, by account ID. The links are cached. Snapshots fan out to every provider at
once; a provider that fails or runs out of time is named in the result and the others still show.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from bot.domain.identifiers import AccountIdentifier, IdentifierKind
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

log = logging.getLogger("bot.lookup")
T = TypeVar("T")

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
    ) -> None:
        self.account_id = account_id
        self.customers = customers
        self.failures = failures

    def ref(self) -> AccountRef:
        """The account as the domain names it."""
        names = [c.name for c in self.customers.values() if c.name]
        emails = [c.email for c in self.customers.values() if c.email]
        return AccountRef(
            account_id=self.account_id,
            customer_ids={p: c.customer_id for p, c in self.customers.items()},
            display_name=names[0] if names else None,
            email=emails[0] if emails else None,
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
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.providers = dict(providers)
        self._uow: Callable[[], UnitOfWork] | None = database.uow if database is not None else None
        self.deadline = deadline
        self.resolve_timeout = resolve_timeout
        self.links_ttl = links_ttl
        self.clock = clock

    async def _each(
        self,
        names: Sequence[str],
        call: Callable[[BillingProvider], Awaitable[T]],
        timeout: float,  # noqa: ASYNC109 - a budget shared by the fan-out, not one call's timeout
    ) -> dict[str, T | BaseException]:
        """Run `call` on each named provider concurrently, each bounded by `timeout`."""

        async def one(name: str) -> T | BaseException:
            try:
                async with asyncio.timeout(max(0.01, timeout)):
                    return await call(self.providers[name])
            except (ProviderError, TimeoutError) as exc:
                return exc

        results = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, results, strict=True))

    async def resolve(
        self,
        ident: AccountIdentifier,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Resolution:
        """Find the account behind `ident`. Raises `AccountNotFound` / `AmbiguousAccount`; a
        resolution every provider failed raises the first provider error."""
        budget = timeout if timeout is not None else self.resolve_timeout
        started = time.monotonic()
        cached = await self._cached(ident)
        if cached is not None:
            return cached
        failures: dict[str, str] = {}
        found: dict[str, list[CustomerRecord]] = {}
        errors: list[BaseException] = []
        asked: set[tuple[str, IdentifierKind, str]] = set()
        for kind in ident.kinds:
            names = [n for n in self.providers if n not in failures]
            asked.update((n, kind, ident.value) for n in names)

            def find(
                p: BillingProvider, k: IdentifierKind = kind
            ) -> Awaitable[list[CustomerRecord]]:
                return p.find_customers(k, ident.value)

            results = await self._each(names, find, budget)
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
        account_ids = {r.account_id for recs in found.values() for r in recs if r.account_id}
        per_provider_multi = any(len(recs) > 1 for recs in found.values())
        if len(account_ids) > 1 or (not account_ids and per_provider_multi):
            raise AmbiguousAccount(_ambiguous_message(ident, found), candidates=_candidates(found))
        account_id = next(iter(account_ids)) if account_ids else None
        customers = {name: _pick(recs, account_id) for name, recs in found.items()}
        # Providers that already answered "none" for this very account ID are not asked again.
        missing = [
            n
            for n in self.providers
            if n not in customers
            and n not in failures
            and (n, IdentifierKind.ACCOUNT_ID, account_id or "") not in asked
        ]
        if account_id and missing:
            remaining = budget - (time.monotonic() - started)
            results = await self._each(
                missing,
                lambda p: p.find_customers(IdentifierKind.ACCOUNT_ID, account_id),
                remaining,
            )
            for name, result in results.items():
                if isinstance(result, BaseException):
                    failures[name] = failure_reason(result)
                elif result:
                    matching = [r for r in result if r.account_id in (None, account_id)]
                    if matching:
                        customers[name] = _pick(matching, account_id)
        resolution = Resolution(account_id, customers, failures)
        await self._remember(ident, resolution)
        return resolution

    async def snapshot(self, ident: AccountIdentifier) -> BillingSnapshot:
        """The account's billing state from every enabled provider, within the deadline."""
        started = time.monotonic()
        resolution = await self.resolve(ident)
        return await self.snapshot_for(resolution, started=started)

    async def snapshot_for(
        self, resolution: Resolution, *, started: float | None = None
    ) -> BillingSnapshot:
        """The billing state of an account already resolved (`resolve`), within the deadline
        counted from `started` (a `time.monotonic()` reading; now when None)."""
        started = time.monotonic() if started is None else started
        remaining = self.deadline - (time.monotonic() - started)
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
        return BillingSnapshot(
            account=resolution.ref(),
            providers=tuple(snaps),
            failures=tuple(failures),
            fetched_at=self.clock(),
        )

    # --- the links cache ------------------------------------------------------------------

    def _key(self, ident: AccountIdentifier) -> str:
        value = ident.value.lower() if ident.primary is IdentifierKind.EMAIL else ident.value
        return f"{ident.primary.value}:{value}"

    async def _cached(self, ident: AccountIdentifier) -> Resolution | None:
        if self._uow is None:
            return None
        try:
            async with self._uow() as uow:
                links = await uow.links.get(self._key(ident))
        except Exception:
            log.warning("account links cache unavailable", exc_info=True)
            return None
        now = self.clock()
        fresh = [
            link
            for link in links
            if link.provider in self.providers and now - link.updated_at < self.links_ttl
        ]
        if not fresh:
            return None
        account_id = fresh[0].account_id
        names = [link.provider for link in fresh]
        results = await self._each(
            names,
            lambda p: p.find_customers(
                OWN_ID_KIND[p.name], next(x.customer_id for x in fresh if x.provider == p.name)
            ),
            self.resolve_timeout,
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

    async def _remember(self, ident: AccountIdentifier, resolution: Resolution) -> None:
        if self._uow is None or not resolution.customers:
            return
        now = self.clock()
        links = [
            AccountLink(
                identifier=self._key(ident),
                account_id=resolution.account_id,
                provider=name,
                customer_id=record.customer_id,
                updated_at=now,
            )
            for name, record in resolution.customers.items()
        ]
        try:
            async with self._uow() as uow:
                await uow.links.put(links)
                await uow.commit()
        except Exception:
            log.warning("could not cache account links", exc_info=True)


def _pick(records: list[CustomerRecord], account_id: str | None) -> CustomerRecord:
    matching = [r for r in records if r.account_id == account_id] or records
    return matching[0]


def _candidates(found: Mapping[str, list[CustomerRecord]]) -> tuple[str, ...]:
    labels = [r.account_id or r.customer_id for recs in found.values() for r in recs]
    return tuple(dict.fromkeys(labels))


def _not_found_message(ident: AccountIdentifier, failures: Mapping[str, str]) -> str:
    text = f"No account matches `{ident.value}` in any billing provider."
    if failures:
        down = ", ".join(f"{_label(p)} ({r})" for p, r in failures.items())
        text += f" Not checked: {down}."
    return text + " Check the spelling, or try the `cus_…` ID or account ID."


def _ambiguous_message(ident: AccountIdentifier, found: Mapping[str, list[CustomerRecord]]) -> str:
    options = []
    for recs in found.values():
        for r in recs:
            label = r.account_id or r.customer_id
            options.append(
                f"`{label}` ({_label(r.provider)} {r.customer_id}, {r.name or 'no name'})"
            )
    shown = "; ".join(options[:6])
    return (
        f"`{ident.value}` matches several accounts: {shown}. "
        "Look up one of them by its account ID or customer ID."
    )


def _label(provider: str) -> str:
    return {"stripe": "Stripe", "orb": "Orb", "metronome": "Metronome"}.get(provider, provider)

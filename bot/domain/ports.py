"""Ports the domain declares and the adapters implement (typing.Protocol, no inheritance)."""

from __future__ import annotations

from typing import Protocol

from bot.domain.identifiers import IdentifierKind
from bot.domain.models import CustomerRecord, ProviderName, ProviderSnapshot


class BillingProvider(Protocol):
    """Read access to one billing provider (Stripe, Orb, Metronome, or a sandbox one)."""

    name: ProviderName

    async def find_customers(self, kind: IdentifierKind, value: str) -> list[CustomerRecord]:
        """Customers matching an identifier of `kind`; [] when none match or the kind is not
        one this provider can search by. Raises `ProviderError` on provider faults."""
        ...

    async def get_snapshot(self, customer: CustomerRecord) -> ProviderSnapshot:
        """The customer's billing state: subscriptions, 12+ months of invoices with their lines,
        payments, refunds, disputes, balances and daily usage. Raises `ProviderError`."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class LLMClient(Protocol):
    """A chat model that turns a system and a user prompt into text. No tools, ever."""

    # ASYNC109: `timeout` is part of the port on purpose: the adapter hands it to the HTTP layer
    # per request, and callers still bound the whole call with `asyncio.timeout`.
    async def complete(
        self,
        *,
        system: str,
        user: str,
        max_tokens: int,
        timeout: float,  # noqa: ASYNC109
    ) -> str:
        """The model's reply text; raises `LLMUnavailable` on any failure."""
        ...

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

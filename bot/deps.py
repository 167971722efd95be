"""The dependency container handed to every listener: a leaf module typed against the ports
(the store and its units of work, the billing providers, the LLM), built only by the composition
root `bot.app.build_app`. Handlers import this module, never `bot.app`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from bot.domain.ports import (
    BillingProvider,
    ChartRenderer,
    LLMClient,
    MessageDelivery,
    TicketSource,
)
from bot.domain.records import Store
from bot.inflight import InFlight
from bot.metrics import Metrics
from bot.services.access import AccessService
from bot.services.approvals import ApprovalService
from bot.services.jobs import Scheduler
from bot.services.lookup import LookupService
from bot.settings import Settings

log = logging.getLogger("bot.deps")

#: Outcomes the observer keeps at most (the shell resets it per command; `serve` never reads it).
MAX_OBSERVED = 100


@dataclass
class Observer:
    """What the shell and `ask` want to know about a command's outcome (exit codes).

    Bounded: a long-running server records errors here too, so only the latest are kept."""

    errors: list[BaseException] = field(default_factory=list)

    def record(self, error: BaseException) -> None:
        """Remember `error` (the oldest are dropped beyond `MAX_OBSERVED`)."""
        self.errors.append(error)
        if len(self.errors) > MAX_OBSERVED:
            del self.errors[: len(self.errors) - MAX_OBSERVED]

    def reset(self) -> None:
        """Forget previous outcomes."""
        self.errors.clear()


@dataclass
class Deps:
    """Per-process dependencies, injected into every listener through `context["deps"]`."""

    settings: Settings
    database: Store
    providers: Mapping[str, BillingProvider]
    lookup: LookupService
    llm: LLMClient | None = None
    #: The outbox worker (None only in tests that build a bare container).
    delivery: MessageDelivery | None = None
    #: Periodic jobs (reconciler, expiry, scans, reports) run inside `serve` and `socket`.
    scheduler: Scheduler | None = None
    inflight: InFlight = field(default_factory=InFlight)
    metrics: Metrics = field(default_factory=Metrics)
    observer: Observer = field(default_factory=Observer)
    #: Draws alert charts (None: alerts show their sparkline only).
    charts: ChartRenderer | None = None
    #: Set when the sandbox answers instead of real providers (shown in the UI).
    sandbox: bool = False
    #: Seconds the LLM may take before the deterministic wording is used.
    llm_deadline: float = 8.0
    #: Zendesk (or the sandbox's Zendesk); None when tickets are not configured.
    tickets: TicketSource | None = None
    #: VIEWERS, REQUESTERS and FINANCE_APPROVERS checks (user groups cached ≤ 60 s).
    access: AccessService = field(default_factory=lambda: AccessService(None))
    #: Refund and credit requests (None only in tests that build a bare container).
    approvals: ApprovalService | None = None

    async def aclose(self) -> None:
        """Close provider clients, the LLM client and the database."""
        for provider in self.providers.values():
            try:
                await provider.aclose()
            except Exception:  # a failing close must not block the others
                log.exception("closing provider failed", extra={"provider": provider.name})
        if self.tickets is not None:
            try:
                await self.tickets.aclose()
            except Exception:
                log.exception("closing the ticket source failed")
        close = getattr(self.llm, "aclose", None)
        if close is not None:
            await close()
        await self.database.dispose()

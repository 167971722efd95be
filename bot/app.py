"""The composition root: `build_app(settings, *, overrides…)` wires settings, storage, providers,
the LLM and the Slack listeners into one Bolt `AsyncApp`. Nothing connects at import time; the
only place that imports handlers, integrations and storage together. The container it fills is
`bot.deps.Deps`; handlers depend on that, never on this module."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.deps import Deps
from bot.domain.anomalies import DetectorConfig
from bot.domain.approvals import ApprovalRules
from bot.domain.ports import BillingProvider, ChartRenderer, LLMClient, TicketSource
from bot.errors import ConfigError
from bot.metrics import Metrics
from bot.services.access import AccessService
from bot.services.approvals import ApprovalService
from bot.services.jobs import Scheduler, replica_id
from bot.services.lookup import LookupService
from bot.services.scan import usage_days_needed
from bot.settings import Settings
from bot.storage.db import Database
from bot.storage.migrate import upgrade
from handlers import register_all
from handlers.access import SlackGroupDirectory
from handlers.delivery import Delivery
from handlers.middleware import KEEP_EVENTS

log = logging.getLogger("bot.app")


_DEPS: weakref.WeakKeyDictionary[AsyncApp, Deps] = weakref.WeakKeyDictionary()


def deps_of(app: AsyncApp) -> Deps:
    """The dependencies `build_app` wired into `app`."""
    return _DEPS[app]


#: Days of daily usage every snapshot carries: what the anomaly scan's baseline needs.
USAGE_DAYS = usage_days_needed(DetectorConfig())


def build_providers(
    settings: Settings, world: object | None = None
) -> tuple[dict[str, BillingProvider], bool]:
    """Real provider clients for the keys that are set, or the sandbox when none is."""
    if settings.use_sandbox:
        from integrations.sandbox.providers import sandbox_providers
        from integrations.sandbox.world import SandboxWorld

        sandbox_world = world if isinstance(world, SandboxWorld) else None
        return dict(sandbox_providers(sandbox_world, usage_days=USAGE_DAYS)), True
    providers: dict[str, BillingProvider] = {}
    # Each provider is paced at its documented request rate unless *_RATE_LIMIT says otherwise.
    if settings.stripe_api_key is not None:
        from integrations import stripe

        key = settings.stripe_api_key.get_secret_value()
        providers["stripe"] = stripe.StripeBillingProvider(
            settings.stripe_api_key,
            base_url=settings.stripe_api_base,
            account_id_metadata_key=settings.stripe_account_id_metadata_key,
            rate_limit=settings.stripe_rate_limit or stripe.default_rate_limit(key),
            usage_days=USAGE_DAYS,
        )
    if settings.orb_api_key is not None:
        from integrations import orb

        providers["orb"] = orb.OrbBillingProvider(
            settings.orb_api_key,
            base_url=settings.orb_api_base,
            rate_limit=settings.orb_rate_limit or orb.DEFAULT_RATE_LIMIT,
            usage_days=USAGE_DAYS,
        )
    if settings.metronome_api_key is not None:
        from integrations import metronome

        providers["metronome"] = metronome.MetronomeBillingProvider(
            settings.metronome_api_key,
            base_url=settings.metronome_api_base,
            rate_limit=settings.metronome_rate_limit or metronome.DEFAULT_RATE_LIMIT,
            credit_product_id=settings.metronome_credit_product_id,
            usage_days=USAGE_DAYS,
        )
    return providers, False


def build_tickets(settings: Settings, world: object | None = None) -> TicketSource | None:
    """The Zendesk client when `ZENDESK_API_TOKEN` is set; the sandbox's Zendesk (tickets of
    the sandbox stories) when the sandbox answers for the providers; else None."""
    if settings.zendesk_enabled:
        from integrations.zendesk import ZendeskTicketSource

        base, token, email = (
            settings.zendesk_base,
            settings.zendesk_api_token,
            settings.zendesk_email,
        )
        if base is None or token is None or email is None:
            raise ConfigError(
                "ZENDESK_API_TOKEN needs ZENDESK_EMAIL and ZENDESK_SUBDOMAIN (or ZENDESK_API_BASE)."
            )
        hosts = (f"{settings.zendesk_subdomain}.zendesk.com",) if settings.zendesk_subdomain else ()
        return ZendeskTicketSource(base_url=base, email=email, token=token, hosts=hosts)
    if settings.use_sandbox:
        from integrations.sandbox.providers import sandbox_tickets
        from integrations.sandbox.world import SandboxWorld

        return sandbox_tickets(world if isinstance(world, SandboxWorld) else None)
    return None


def _sandbox_world(settings: Settings) -> object | None:
    """One sandbox world shared by the sandbox providers and the sandbox's Zendesk."""
    if not settings.use_sandbox:
        return None
    from integrations.sandbox.world import build_world

    return build_world()


def build_charts() -> ChartRenderer | None:
    """The chart renderer (matplotlib, headless); None when matplotlib is missing, so alerts
    fall back to their sparkline."""
    try:
        from integrations.charts import MatplotlibCharts
    except ImportError:  # pragma: no cover - matplotlib is a dependency; this is a safety net
        log.warning("matplotlib is not installed: alerts show sparklines without charts")
        return None
    return MatplotlibCharts()


def build_llm(settings: Settings) -> LLMClient | None:
    """The LLM client when `OPENAI_API_KEY` is set, else None (deterministic wording)."""
    if settings.openai_api_key is None:
        return None
    from integrations.llm import OpenAILLMClient

    return OpenAILLMClient(
        settings.openai_api_key, base_url=settings.openai_base_url, model=settings.openai_model
    )


def build_app(
    settings: Settings,
    *,
    providers: Mapping[str, BillingProvider] | None = None,
    llm: LLMClient | None = None,
    database: Database | None = None,
    slack_client: AsyncWebClient | None = None,
    process_before_response: bool = True,
    sandbox: bool | None = None,
    tickets: TicketSource | None = None,
    charts: ChartRenderer | None = None,
) -> AsyncApp:
    """Build the Bolt app with real adapters unless a test passes fakes (`tickets`: a ticket
    source; by default Zendesk when configured, the sandbox's with sandbox providers)."""
    world = _sandbox_world(settings) if providers is None else None
    if providers is None:
        providers, is_sandbox = build_providers(settings, world)
    else:
        is_sandbox = bool(sandbox)
    if tickets is None and (settings.zendesk_enabled or is_sandbox):
        tickets = build_tickets(settings, world)
    if llm is None:
        llm = build_llm(settings)
    db = database or Database(settings.database_url)
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    if slack_client is None:
        slack_client = AsyncWebClient(token=token, base_url=settings.slack_api_url)
    slack_client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
    signing = settings.slack_signing_secret
    app = AsyncApp(
        client=slack_client,
        signing_secret=signing.get_secret_value() if signing else "",
        process_before_response=process_before_response,
        raise_error_for_unhandled_request=False,
    )
    metrics = Metrics()
    holder = replica_id()
    lookup = LookupService(providers, database=db)
    delivery = Delivery(db, slack_client, metrics=metrics, holder=holder)
    access = AccessService(
        SlackGroupDirectory(slack_client),
        viewers=settings.viewer_set,
        requesters=settings.requester_set,
        approvers=settings.approvers,
    )
    approvals = ApprovalService(
        store=db,
        lookup=lookup,
        providers=providers,
        access=access,
        rules=ApprovalRules(
            dual_above=settings.dual_approval_above,
            per_currency=settings.dual_approval_thresholds,
            ttl=timedelta(hours=settings.request_ttl_hours),
        ),
        channel=settings.finance_channel,
        holder=holder,
        lease=settings.approvals_lease_seconds,
        wake=delivery.wake,
        metrics=metrics,
    )
    deps = Deps(
        settings=settings,
        database=db,
        providers=providers,
        lookup=lookup,
        llm=llm,
        delivery=delivery,
        scheduler=Scheduler(db, holder=holder),
        metrics=metrics,
        charts=charts or build_charts(),
        sandbox=is_sandbox,
        tickets=tickets,
        access=access,
        approvals=approvals,
    )
    metrics.add_sampler(lambda: _provider_samples(providers))
    _DEPS[app] = deps
    register_all(app, deps)
    return app


def _provider_samples(
    providers: Mapping[str, BillingProvider],
) -> list[tuple[str, dict[str, str], float]]:
    samples: list[tuple[str, dict[str, str], float]] = []
    for name, provider in providers.items():
        http = getattr(provider, "http", None)
        if http is None:
            continue
        samples.append(("billing_triage_provider_calls_total", {"provider": name}, http.calls))
        samples.append(("billing_triage_provider_errors_total", {"provider": name}, http.errors))
    return samples


async def startup(app: AsyncApp, *, background: bool = True) -> None:
    """Run migrations unless `AUTO_MIGRATE=0`, drop expired processed-event IDs, then (unless
    `background=False`, as in the shell, which delivers and runs jobs on demand) start the outbox
    worker and the periodic jobs."""
    deps = deps_of(app)
    if deps.settings.auto_migrate:
        await upgrade(deps.settings.database_url)
    try:
        async with deps.database.uow() as uow:
            await uow.events.prune(datetime.now(UTC) - KEEP_EVENTS)
            await uow.commit()
    except Exception:  # a database that is down at start shows in /healthz, not here
        log.warning("could not prune processed events at start", exc_info=True)
    if background:
        if isinstance(deps.delivery, Delivery):
            await deps.delivery.start()
        if deps.scheduler is not None:
            await deps.scheduler.start()


async def shutdown(app: AsyncApp, *, drain_timeout: float = 10.0) -> None:
    """Stop the periodic jobs (releasing their leases), let running listener work finish
    (bounded), deliver what it enqueued, then close every client."""
    deps = deps_of(app)
    if deps.scheduler is not None:
        await deps.scheduler.stop(timeout=drain_timeout)
    if not await deps.inflight.wait_idle(drain_timeout):
        log.warning("shutdown with work still running", extra={"running": deps.inflight.count})
    if isinstance(deps.delivery, Delivery):
        await deps.delivery.stop()
        try:
            await deps.delivery.drain(timeout=min(5.0, drain_timeout))
        except Exception:  # undelivered entries stay in the outbox for the next start
            log.warning("could not deliver the last messages at shutdown", exc_info=True)
    await deps.aclose()

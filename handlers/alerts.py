"""Anomaly alerts at the Slack edge: the outbox renderers (an alert, a digest of a burst, the
thread reply when one got worse), the buttons (Acknowledge / Not an anomaly / Snooze 24h, and the
same three in a digest's menus), `/billing alerts [open|all|stats]`, the precision on `/metrics`,
and the periodic jobs: the scan every `SCAN_INTERVAL_MINUTES`, the scan worker that lets every
PostgreSQL replica share a running scan, and the webhook reconciler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.deps import Deps
from bot.domain.alert_payload import anomaly_from_payload
from bot.domain.anomalies import AlertKind, Anomaly, DetectorConfig
from bot.domain.commands import AlertsCommand
from bot.domain.records import AlertRecord, FeedbackAction, RenderedMessage, SkipMessage
from bot.services.alerts import (
    DIGEST_PREFIX,
    RENDER_ALERT,
    RENDER_ESCALATION,
    KindPrecision,
    apply_feedback,
    precision_of,
)
from bot.services.jobs import Job
from bot.services.scan import ScanOptions, ScanService
from bot.services.webhooks import WebhookService
from bot.settings import Settings
from handlers import alert_views
from handlers.errors import after_ack
from handlers.views import Reply

log = logging.getLogger("handlers.alerts")

#: Charts uploaded with a digest (the rest show their sparkline).
DIGEST_CHARTS = 5
CHART_KINDS = (AlertKind.USAGE_SPIKE, AlertKind.INVOICE_JUMP)
LIST_LIMIT = 40
ACTIONS: Mapping[str, FeedbackAction] = {
    alert_views.ACK_ACTION: "acknowledge",
    alert_views.NOT_ANOMALY_ACTION: "not_anomaly",
    alert_views.SNOOZE_ACTION: "snooze",
}
CONFIRMATIONS = {
    "acknowledge": "You acknowledged",
    "not_anomaly": "You marked as not an anomaly",
    "snooze": "You snoozed for 24 hours",
}


def detector_config(settings: Settings) -> DetectorConfig:
    """The detectors' thresholds from the `ALERT_*` settings."""
    return DetectorConfig(
        spike_min_impact=settings.alert_spike_min_impact,
        spike_min_ratio=settings.alert_spike_min_ratio,
        spike_sigmas=settings.alert_spike_sigmas,
        jump_min_impact=settings.alert_jump_min_impact,
        jump_min_pct=settings.alert_jump_min_percent,
        payment_min_amount=settings.alert_payment_min_amount,
        duplicate_min_amount=settings.alert_duplicate_min_amount,
    )


def scan_service(deps: Deps, *, holder: str | None = None) -> ScanService:
    """A scan over `deps`' providers, posting (when a run says so) to `ONCALL_CHANNEL`."""
    return ScanService(
        store=deps.database,
        providers=deps.providers,
        config=detector_config(deps.settings),
        holder=holder or (deps.scheduler.holder if deps.scheduler else "cli"),
        channel=deps.settings.oncall_channel,
        delivery=deps.delivery,
        options=ScanOptions(
            accounts_in_flight=deps.settings.scan_concurrency,
            page_size=deps.settings.scan_page_size,
            item_lease=deps.settings.scan_lease_seconds,
            stale_after=deps.settings.scan_lease_seconds * 2.5,
        ),
        metrics=deps.metrics,
    )


def webhook_service(deps: Deps) -> WebhookService:
    """Webhook deliveries → alerts in `ONCALL_CHANNEL`."""
    return WebhookService(
        store=deps.database,
        providers=deps.providers,
        channel=deps.settings.oncall_channel,
        delivery=deps.delivery,
    )


def _growth(deps: Deps) -> Decimal:
    return detector_config(deps.settings).suppression_growth


async def _load(deps: Deps, ids: Sequence[int]) -> list[tuple[AlertRecord, Anomaly]]:
    out = []
    async with deps.database.uow() as uow:
        for alert_id in ids:
            alert = await uow.alerts.get(alert_id)
            if alert is None:
                continue
            try:
                out.append((alert, anomaly_from_payload(alert.payload)))
            except (KeyError, ValueError, TypeError):
                log.warning("alert payload unreadable", extra={"alert": alert_id})
    return out


async def _chart(deps: Deps, anomaly: Anomaly) -> tuple[str, str, bytes] | None:
    if deps.charts is None or anomaly.kind not in CHART_KINDS or not anomaly.series:
        return None
    charts = deps.charts
    try:
        png = await asyncio.to_thread(charts.render, anomaly)
    except Exception:  # a chart that cannot be drawn leaves the sparkline
        log.warning("chart rendering failed", exc_info=True)
        return None
    if png is None:
        return None
    name = f"{anomaly.account_id}-{anomaly.kind.value}-{anomaly.period.isoformat()}.png"
    title = f"{alert_views.kind_label(anomaly.kind.value)} · {anomaly.account_id}"
    return name, title, png


def register(app: AsyncApp, deps: Deps) -> None:
    """Register the renderers, the buttons and the periodic jobs."""
    growth = _growth(deps)
    precision_cache: dict[str, tuple[list[KindPrecision], KindPrecision]] = {}

    async def render_alert(payload: Mapping[str, Any]) -> RenderedMessage:
        alert_id = int(payload["alert_id"])
        with_chart = bool(payload.get("chart"))
        async with deps.database.uow() as uow:
            members = await uow.alerts.sharing_message(alert_id)
        if len(members) > 1 and not with_chart:  # an update of one alert of a digest
            items = await _load(deps, members)
            if not items:
                raise SkipMessage()
            text, blocks = alert_views.digest_blocks(items)
            return RenderedMessage(text=text, blocks=blocks)
        items = await _load(deps, [alert_id])
        if not items:
            raise SkipMessage()
        alert, anomaly = items[0]
        files: list[tuple[str, str, bytes]] = []
        note = None
        if with_chart:
            chart = await _chart(deps, anomaly)
            if chart is not None:
                files.append(chart)
                note = "chart in the thread"
        text, blocks = alert_views.alert_blocks(
            alert, anomaly, sandbox=deps.sandbox, growth=growth, chart=note
        )
        return RenderedMessage(text=text, blocks=blocks, files=files)

    async def render_digest(payloads: Sequence[Mapping[str, Any]]) -> RenderedMessage:
        ids = [int(p["alert_id"]) for p in payloads]
        items = await _load(deps, ids)
        if not items:
            raise SkipMessage()
        text, blocks = alert_views.digest_blocks(items)
        files: list[tuple[str, str, bytes]] = []
        for _alert, anomaly in items:
            if len(files) >= DIGEST_CHARTS:
                break
            chart = await _chart(deps, anomaly)
            if chart is not None:
                files.append(chart)
        return RenderedMessage(text=text, blocks=blocks, files=files)

    async def render_escalation(payload: Mapping[str, Any]) -> RenderedMessage:
        items = await _load(deps, [int(payload["alert_id"])])
        if not items:
            raise SkipMessage()
        alert, anomaly = items[0]
        text, blocks = alert_views.escalation_blocks(
            alert,
            anomaly,
            why=str(payload.get("why") or "escalate"),
            from_severity=payload.get("from_severity"),
            from_impact=payload.get("from_impact") or None,
            from_currency=payload.get("from_currency") or None,
        )
        return RenderedMessage(text=text, blocks=blocks, broadcast=True)

    if deps.delivery is not None:
        deps.delivery.register_renderer(RENDER_ALERT, render_alert)
        deps.delivery.register_renderer(RENDER_ESCALATION, render_escalation)
        deps.delivery.register_digest(DIGEST_PREFIX, render_digest)

    async def refresh_precision() -> None:
        async with deps.database.uow() as uow:
            counts = await uow.alerts.feedback_counts()
        precision_cache["now"] = precision_of(counts)

    def precision_samples() -> list[tuple[str, dict[str, str], float]]:
        cached = precision_cache.get("now")
        if cached is None:
            return []
        kinds, overall = cached
        samples: list[tuple[str, dict[str, str], float]] = []
        for k in [*kinds, overall]:
            labels = {"kind": k.kind}
            samples.append(("billing_triage_alerts", labels, float(k.alerts)))
            for answer, n in (("acknowledged", k.acknowledged), ("not_anomaly", k.not_anomaly),
                              ("snoozed", k.snoozed)):  # fmt: skip
                samples.append(("billing_triage_alert_feedback", {**labels, "answer": answer}, n))
            if k.precision is not None:
                samples.append(("billing_triage_alert_precision", labels, float(k.precision)))
        return samples

    deps.metrics.add_sampler(precision_samples, kind="gauge")

    async def press(
        action: FeedbackAction,
        alert_id: int,
        *,
        body: dict[str, Any],
        respond: AsyncRespond,
    ) -> None:
        user = str((body.get("user") or {}).get("id") or "unknown")
        now = datetime.now(UTC)
        async with deps.database.uow() as uow:
            alert = await apply_feedback(
                uow, alert_id, action, user_id=user, now=now,
                slack_request=str(body.get("trigger_id") or "") or None,
            )  # fmt: skip
            await uow.commit()
        if deps.delivery is not None:
            deps.delivery.wake()
        deps.metrics.inc("billing_triage_alert_clicks_total", action=action)
        await refresh_precision()
        if alert is None:
            text = "That alert no longer exists."
        else:
            what = f"{alert_views.kind_label(alert.kind)} on `{alert.account_id}` ({alert.period})"
            text = f"{CONFIRMATIONS[action]} {what}."
            if action == "not_anomaly":
                text += (
                    " The same pattern on this account won't alert again until it grows "
                    f"{growth.normalize()}× past this one."
                )
        await respond(text=text, response_type="ephemeral", replace_original=False)

    def button_listener(feedback: FeedbackAction) -> Any:
        # Bolt passes listeners only the arguments it knows by name, so the action a button
        # stands for is bound here, not as a default argument.
        async def handle_alert_button(
            ack: AsyncAck,
            body: dict[str, Any],
            action: dict[str, Any],
            respond: AsyncRespond,
            context: dict[str, Any],
            client: AsyncWebClient,
        ) -> None:
            await ack()
            alert_id = _int(action.get("value"))

            async def work() -> None:
                if alert_id is None:
                    await respond(text="That button is broken.", response_type="ephemeral",
                                  replace_original=False)  # fmt: skip
                    return
                await press(feedback, alert_id, body=body, respond=respond)

            after_ack(deps, work, body=body, context=context, client=client, respond=respond)

        return handle_alert_button

    for action_id, feedback in ACTIONS.items():
        app.action(action_id)(button_listener(feedback))

    @app.action(alert_views.MENU_ACTION)
    async def handle_alert_menu_action(
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: AsyncRespond,
        context: dict[str, Any],
        client: AsyncWebClient,
    ) -> None:
        await ack()
        value = str((action.get("selected_option") or {}).get("value") or "")
        name, _, raw_id = value.partition(":")
        alert_id = _int(raw_id)

        async def work() -> None:
            if name not in CONFIRMATIONS or alert_id is None:
                await respond(text="That menu is broken.", response_type="ephemeral",
                              replace_original=False)  # fmt: skip
                return
            await press(name, alert_id, body=body, respond=respond)  # type: ignore[arg-type]

        after_ack(deps, work, body=body, context=context, client=client, respond=respond)

    # -- periodic jobs ---------------------------------------------------------------------------

    if deps.scheduler is not None:
        scans = scan_service(deps)
        webhooks = webhook_service(deps)
        interval = deps.settings.scan_interval_minutes * 60

        async def scan_job() -> None:
            summary = await scans.run(post=deps.settings.oncall_channel is not None)
            deps.metrics.inc("billing_triage_scans_total", complete=str(summary.complete).lower())
            await refresh_precision()

        async def scan_worker_job() -> None:
            await scans.help_running()

        async def webhooks_job() -> None:
            await webhooks.reconcile()
            now = datetime.now(UTC)
            async with deps.database.uow() as uow:
                await uow.webhooks.prune(older_than=now - timedelta(days=30))
                await uow.scans.prune(older_than=now - timedelta(days=7))
                await uow.commit()

        async def stats_job() -> None:
            await refresh_precision()

        if interval > 0:
            deps.scheduler.add(Job("scan", every=interval, run=scan_job, exclusive=True,
                                   first_delay=min(60.0, interval)))  # fmt: skip
            if deps.database.dialect == "postgresql":
                # Every replica helps with the running scan's pages (SKIP LOCKED claims).
                deps.scheduler.add(
                    Job("scan-worker", every=5, run=scan_worker_job, exclusive=False,
                        first_delay=5)
                )  # fmt: skip
        deps.scheduler.add(Job("webhooks", every=60, run=webhooks_job, exclusive=True,
                               first_delay=30))  # fmt: skip
        deps.scheduler.add(Job("alert-stats", every=60, run=stats_job, exclusive=False))


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


async def alerts_reply(cmd: AlertsCommand, deps: Deps) -> Reply:
    """`/billing alerts [open|all|stats]`."""
    now = datetime.now(UTC)
    if cmd.scope == "stats":
        async with deps.database.uow() as uow:
            counts = await uow.alerts.feedback_counts()
        kinds, overall = precision_of(counts)
        return alert_views.stats_reply(kinds, overall)
    statuses = ["open"] if cmd.scope == "open" else None
    async with deps.database.uow() as uow:
        alerts = await uow.alerts.listing(statuses=statuses, limit=LIST_LIMIT, now=now)
    items: list[tuple[AlertRecord, Anomaly | None]] = []
    for alert in alerts:
        try:
            items.append((alert, anomaly_from_payload(alert.payload)))
        except (KeyError, ValueError, TypeError):
            items.append((alert, None))
    return alert_views.alerts_list_reply(items, scope=cmd.scope, limit=LIST_LIMIT)

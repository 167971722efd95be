"""Block Kit for anomaly alerts (DESIGN §5): one alert with its figures, why it fired, its
drivers, links, sparkline and buttons; a digest of a burst of new alerts; the reply in an
alert's thread when it got worse; `/billing alerts [open|all|stats]`.

Customer-controlled text (account names, line descriptions inside summaries) is escaped; every
builder stays within Slack's limits through the `handlers.views` helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from bot.domain.anomalies import AlertKind, Anomaly
from bot.domain.models import PROVIDER_LABELS
from bot.domain.records import AlertRecord
from bot.services.alerts import KindPrecision
from handlers.views import (
    MAX_BLOCKS,
    Block,
    Reply,
    button,
    clip,
    context,
    divider,
    escape,
    header,
    section,
)

ACK_ACTION = "alert_acknowledge"
NOT_ANOMALY_ACTION = "alert_not_anomaly"
SNOOZE_ACTION = "alert_snooze"
MENU_ACTION = "alert_menu"
ACTIONS_BLOCK = "alert_actions"
#: Alerts listed one per block in a digest (header and footer take the rest).
DIGEST_MAX = 45

KIND_LABELS = {
    "usage_spike": "Usage spike",
    "invoice_jump": "Invoice jump",
    "payment_failed": "Payment failed",
    "dispute_opened": "Dispute opened",
    "duplicate_charge": "Duplicate charge",
    "provider_alert": "Provider alert",
}
SEVERITY_ICONS = {
    "high": ":red_circle:",
    "medium": ":large_orange_circle:",
    "low": ":large_yellow_circle:",
}
STATUS_TEXT = {
    "open": "Open",
    "acknowledged": "Acknowledged",
    "not_anomaly": "Not an anomaly",
    "snoozed": "Snoozed",
}
# Dashboard pages of Stripe objects named in an alert's refs (IDs carry their kind's prefix).
STRIPE_PAGES = {
    "in_": "invoices",
    "ch_": "payments",
    "py_": "payments",
    "pi_": "payments",
    "dp_": "disputes",
    "du_": "disputes",
    "cus_": "customers",
}


def kind_label(kind: str) -> str:
    """ "Usage spike" for `usage_spike`."""
    return KIND_LABELS.get(kind, kind.replace("_", " ").capitalize())


def _when(moment: datetime | None) -> str:
    return moment.strftime("%b %-d %H:%M UTC") if moment else ""


def _pct(value: Decimal | None) -> str:
    if value is None:
        return ""
    sign = "+" if value > 0 else ""
    return f" ({sign}{value.quantize(Decimal('1'))}%)"


def links_text(anomaly: Anomaly, *, sandbox: bool) -> str | None:
    """Links to the provider's pages of the objects behind the alert."""
    if sandbox:
        refs = [f"`{escape(r)}`" for r in anomaly.refs[:6]]
        return ("*Objects:* " + ", ".join(refs)) if refs else None
    links = []
    for ref in anomaly.refs[:6]:
        page = next((p for prefix, p in STRIPE_PAGES.items() if ref.startswith(prefix)), None)
        if page is not None:
            links.append(f"<https://dashboard.stripe.com/{page}/{ref}|{escape(ref)}>")
        else:
            links.append(f"`{escape(ref)}`")
    return ("*Links:* " + " · ".join(links)) if links else None


def status_text(alert: AlertRecord, *, growth: Decimal | None = None) -> str:
    """Who pressed what, and what it means."""
    who = f"<@{alert.status_by}>" if alert.status_by else "someone"
    if alert.status == "acknowledged":
        return f":white_check_mark: Acknowledged by {who} · {_when(alert.status_at)}"
    if alert.status == "not_anomaly":
        grows = f"{growth.normalize()}×" if growth is not None else "clearly"
        return (
            f":no_entry_sign: Marked *not an anomaly* by {who} · {_when(alert.status_at)}. "
            f"This pattern on `{escape(alert.account_id)}` won't alert again until it changes "
            f"(grows {grows} past this one)."
        )
    if alert.status == "snoozed":
        return f":zzz: Snoozed by {who} until {_when(alert.snoozed_until)}"
    if alert.notify_count > 1:
        return f":arrow_up: Got worse since first posted · seen {_when(alert.last_seen_at)}"
    return f"Open · first seen {_when(alert.first_seen_at)}"


def action_buttons(alert_id: int) -> Block:
    """Acknowledge, Not an anomaly, Snooze 24h."""
    value = str(alert_id)
    return {
        "type": "actions",
        "block_id": f"{ACTIONS_BLOCK}:{alert_id}",
        "elements": [
            button("Acknowledge", ACK_ACTION, value, style="primary"),
            button("Not an anomaly", NOT_ANOMALY_ACTION, value),
            button("Snooze 24h", SNOOZE_ACTION, value),
        ],
    }


def _figures(anomaly: Anomaly) -> list[str]:
    expected = "—" if anomaly.kind is AlertKind.DISPUTE_OPENED else anomaly.expected.format()
    provider = PROVIDER_LABELS.get(anomaly.provider, anomaly.provider)
    return [
        f"*Expected*\n{expected}",
        f"*Actual*\n{anomaly.actual.format()}",
        f"*Impact*\n{anomaly.impact.format()}{_pct(anomaly.impact_pct)}",
        f"*Period*\n{anomaly.period.isoformat()}",
        f"*Severity*\n{anomaly.severity.value}",
        f"*Provider*\n{provider}",
    ]


def _drivers(anomaly: Anomaly) -> str | None:
    rows = []
    for d in anomaly.drivers[:5]:
        amount = f" *{d.amount.format()}*" if d.amount is not None else ""
        detail = f" — {escape(d.detail)}" if d.detail else ""
        rows.append(f"• {escape(d.label)}{amount}{detail}")
    return ("*Top drivers*\n" + "\n".join(rows)) if rows else None


def sparkline_text(anomaly: Anomaly) -> str | None:
    """The one-line shape of the series, with what it spans."""
    spark = anomaly.sparkline()
    if not spark:
        return None
    what = "invoices" if anomaly.kind is AlertKind.INVOICE_JUMP else "days"
    return f"`{spark}`  last {len(anomaly.series)} {what}"


def headline(alert: AlertRecord, anomaly: Anomaly) -> str:
    """The notification text: severity, kind, account, impact."""
    return (
        f"[{anomaly.severity.value}] {kind_label(anomaly.kind.value)} · {anomaly.account_id} · "
        f"{anomaly.impact.format()} · {anomaly.period.isoformat()}"
    )


def alert_blocks(
    alert: AlertRecord,
    anomaly: Anomaly,
    *,
    sandbox: bool = False,
    growth: Decimal | None = None,
    chart: str | None = None,
) -> tuple[str, list[Block]]:
    """One alert: text and blocks. `chart`: a note on the chart (in the thread, or why not)."""
    icon = SEVERITY_ICONS.get(anomaly.severity.value, "")
    blocks: list[Block] = [
        header(f"{kind_label(anomaly.kind.value)} · {anomaly.account_id}"),
        section(f"{icon} {escape(anomaly.summary)}", fields=_figures(anomaly)),
        section(f"*Why it fired:* {escape(anomaly.why)}"),
    ]
    drivers = _drivers(anomaly)
    if drivers:
        blocks.append(section(drivers))
    notes = [n for n in (sparkline_text(anomaly), chart) if n]
    if notes:
        blocks.append(context(*notes))
    links = links_text(anomaly, sandbox=sandbox)
    if links:
        blocks.append(section(links))
    blocks.append(context(status_text(alert, growth=growth)))
    blocks.append(action_buttons(alert.id))
    return headline(alert, anomaly), blocks[:MAX_BLOCKS]


def _menu(alert_id: int) -> Block:
    return {
        "type": "overflow",
        "action_id": MENU_ACTION,
        "options": [
            {"text": {"type": "plain_text", "text": text}, "value": f"{action}:{alert_id}"}
            for text, action in (
                ("Acknowledge", "acknowledge"),
                ("Not an anomaly", "not_anomaly"),
                ("Snooze 24h", "snooze"),
            )
        ],
    }


def digest_row(alert: AlertRecord, anomaly: Anomaly) -> str:
    """One alert of a digest, in one section."""
    icon = SEVERITY_ICONS.get(anomaly.severity.value, "")
    spark = anomaly.sparkline()
    line = (
        f"{icon} *{kind_label(anomaly.kind.value)}* · `{escape(anomaly.account_id)}` · "
        f"*{anomaly.impact.format()}*{_pct(anomaly.impact_pct)} · {anomaly.period.isoformat()}\n"
        f"{escape(clip(anomaly.summary, 300))}"
    )
    if spark:
        line += f"\n`{spark}`"
    if alert.status != "open":
        line += f"\n_{STATUS_TEXT[alert.status]}"
        line += f" by <@{alert.status_by}>_" if alert.status_by else "_"
    return line


def digest_blocks(items: Sequence[tuple[AlertRecord, Anomaly]]) -> tuple[str, list[Block]]:
    """A burst of alerts as one message: one line each with a menu of the three actions."""
    shown = list(items[:DIGEST_MAX])
    totals: dict[str, Decimal] = {}  # per currency: amounts of two currencies never add up
    for _alert, anomaly in items:
        totals[anomaly.currency] = totals.get(anomaly.currency, Decimal(0)) + anomaly.impact.amount
    text = f"{len(items)} new billing alerts"
    blocks: list[Block] = [header(f":rotating_light: {text}")]
    for alert, anomaly in shown:
        block = section(digest_row(alert, anomaly))
        block["accessory"] = _menu(alert.id)
        blocks.append(block)
    rest = len(items) - len(shown)
    foot = "Total impact " + " + ".join(
        f"{cur.upper()} {total.quantize(Decimal('0.01'))}" for cur, total in totals.items()
    )
    if rest > 0:
        foot += f" · {rest} more not shown: `/billing alerts`"
    blocks.append(context(foot + " · each alert's chart and details are in the thread"))
    return text, blocks[:MAX_BLOCKS]


def escalation_blocks(
    alert: AlertRecord,
    anomaly: Anomaly,
    *,
    why: str,
    from_severity: str | None,
    from_impact: str | None,
    from_currency: str | None = None,
) -> tuple[str, list[Block]]:
    """The thread reply (also sent to the channel) when an alert got worse or a snooze ended."""
    if why == "remind":
        text = (
            f"Snooze over and still firing: {kind_label(anomaly.kind.value)} on "
            f"{anomaly.account_id}, {anomaly.impact.format()} impact."
        )
    else:
        was = f"{from_severity or '?'}"
        if from_impact:
            was += f", {(from_currency or anomaly.currency).upper()} {from_impact}"
        text = (
            f"Got worse: {kind_label(anomaly.kind.value)} on {anomaly.account_id} is now "
            f"{anomaly.severity.value}, {anomaly.impact.format()} impact (was {was})."
        )
    blocks: list[Block] = [section(f":arrow_up: {escape(text)}")]
    spark = sparkline_text(anomaly)
    if spark:
        blocks.append(context(spark))
    return text, blocks


def alerts_list_reply(
    items: Sequence[tuple[AlertRecord, Anomaly | None]], *, scope: str, limit: int
) -> Reply:
    """`/billing alerts [open|all]`."""
    what = "open alerts" if scope == "open" else "alerts"
    if not items:
        text = f"No {what}." + (" Everything is quiet." if scope == "open" else "")
        return Reply(text=text, blocks=[section(f":white_check_mark: {text}")])
    blocks: list[Block] = [
        header(f"Billing {what} ({len(items)}{'+' if len(items) >= limit else ''})")
    ]
    for alert, anomaly in items[: MAX_BLOCKS - 3]:
        if anomaly is None:
            row = f"*{kind_label(alert.kind)}* · `{escape(alert.account_id)}` · {alert.period}"
        else:
            row = digest_row(alert, anomaly)
        if alert.status == "open" and anomaly is not None:
            block = section(row)
            block["accessory"] = _menu(alert.id)
        else:
            block = section(row)
        blocks.append(block)
    if len(items) > MAX_BLOCKS - 3:
        blocks.append(context(f"…and {len(items) - (MAX_BLOCKS - 3)} more."))
    blocks.append(
        context("`/billing alerts all` lists every alert · `/billing alerts stats` shows precision")
    )
    return Reply(text=f"{len(items)} {what}", blocks=blocks[:MAX_BLOCKS])


def stats_reply(kinds: Sequence[KindPrecision], overall: KindPrecision) -> Reply:
    """`/billing alerts stats`: measured precision per kind from on-call's feedback."""

    def row(k: KindPrecision) -> str:
        precision = f"{k.precision}" if k.precision is not None else "n/a"
        return (
            f"*{kind_label(k.kind) if k.kind != 'overall' else 'Overall'}* — precision "
            f"*{precision}* ({k.acknowledged} acknowledged, {k.not_anomaly} not an anomaly, "
            f"{k.snoozed} snoozed, {k.alerts} alerts)"
        )

    if overall.alerts == 0:
        text = "No alerts yet, so no precision to measure."
        return Reply(text=text, blocks=[section(text)])
    lines = [row(k) for k in kinds]
    blocks = [
        header("Alert precision"),
        section("\n".join(lines)),
        divider(),
        section(row(overall)),
        context(
            "Precision = acknowledged ÷ (acknowledged + not an anomaly). Snoozed and unanswered "
            "alerts are not counted."
        ),
    ]
    return Reply(text=f"Alert precision: {overall.precision or 'n/a'} overall", blocks=blocks)

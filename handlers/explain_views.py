"""Block Kit for `/billing explain` (why an invoice changed) and `/billing draft` (a customer reply
shown to the engineer only, with a "Regenerate" button).

Customer-controlled text (names, line descriptions) is escaped; every builder stays within
Slack's limits through the `handlers.views` helpers.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from decimal import Decimal

from bot.domain.findings import Explanation, Finding, FindingKind
from bot.domain.models import BillingSnapshot, Invoice, ProviderFailure
from bot.domain.money import Money
from bot.domain.sparkline import sparkline
from bot.services.explain import (
    KIND_LABELS,
    DraftResult,
    ExplainResult,
    comparable,
    has_unexplained,
    invoice_name,
    percent,
    provider_label,
    signed,
    without_amount,
)
from bot.services.wording import Wording
from handlers.account_views import fmt_date
from handlers.approval_views import request_button
from handlers.views import (
    MAX_SECTION,
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

#: Findings listed one by one; the rest are summed into one line.
FINDINGS_SHOWN = 8
DRAFT_REGENERATE_ACTION = "draft_regenerate"
DRAFT_ACTIONS_BLOCK = "draft_actions"
AI_LABEL = "AI wording, checked against the billing facts"
STANDARD_LABEL = "Standard wording"
# The dashboard page of one invoice, where the provider has one we know the address of.
INVOICE_DASHBOARDS = {"stripe": "https://dashboard.stripe.com/{mode}invoices/{id}"}


def _account_title(snapshot: BillingSnapshot) -> str:
    acct = snapshot.account
    return acct.display_name or acct.account_id or "Account"


def _context_line(snapshot: BillingSnapshot, invoice: Invoice, *, sandbox: bool) -> Block:
    parts = []
    if snapshot.account.account_id:
        parts.append(f"`{snapshot.account.account_id}`")
    parts.append(f"billed by {provider_label(invoice.provider)}")
    if sandbox:
        parts.append("sandbox data")
    if snapshot.fetched_at:
        parts.append(f"as of {snapshot.fetched_at.strftime('%b %-d %H:%M UTC')}")
    return context(" · ".join(parts))


def _failure_blocks(failures: tuple[ProviderFailure, ...]) -> list[Block]:
    return [
        context(
            f":warning: *{provider_label(f.provider)}: {f.reason}* — its invoices and payments "
            "are missing; this uses what the other providers returned."
        )
        for f in failures
    ]


def wording_context(wording: Wording) -> Block:
    """Where the text came from: the AI (checked) or the standard template, and why."""
    if wording.source == "llm":
        return context(f":sparkles: {AI_LABEL}")
    text = f":memo: {STANDARD_LABEL}"
    if wording.note:
        text += f" · {escape(wording.note)}"
    return context(text)


def summary_line(explanation: Explanation) -> str:
    """ "Invoice X is $A, $B more than Y ($C)" and its variants, in mrkdwn."""
    current, previous = explanation.current, explanation.previous
    this = f"Invoice `{current.id}` is *{current.total}*"
    if previous is None:
        return f"{this}; there is no earlier comparable invoice to compare it with."
    if not comparable(explanation):
        return (
            f"{this}; the previous invoice `{previous.id}` ({previous.total}) is in "
            f"{previous.total.currency.upper()}, so the change can't be attributed."
        )
    change = explanation.change
    if change.is_zero():
        return f"{this}, the same as `{previous.id}`."
    more = "more" if change.amount > 0 else "less"
    amount = change if change.amount > 0 else -change
    return f"{this}, *{amount} {more}* than `{previous.id}` ({previous.total})."


def usage_sparklines(snapshot: BillingSnapshot, *, days: int = 60) -> dict[str, str]:
    """metric name (lower-case) → a sparkline of its last `days` days of usage (cost where the
    provider gives one, else quantity), for usage findings."""
    series: dict[str, dict[date, Decimal]] = {}
    for prov in snapshot.providers:
        for point in prov.usage:
            if not point.metric:
                continue
            value = point.cost.amount if point.cost is not None else point.quantity
            if value is None:
                continue
            days_of = series.setdefault(point.metric.lower(), {})
            days_of[point.day] = days_of.get(point.day, Decimal(0)) + value
    out = {}
    for metric, by_day in series.items():
        values = [by_day[d] for d in sorted(by_day)][-days:]
        if len(values) >= 2:
            out[metric] = sparkline(values)
    return out


def _finding_row(rank: int, finding: Finding, sparks: Mapping[str, str] | None = None) -> str:
    kind = KIND_LABELS[finding.kind]
    row = f"{rank}. *{signed(finding.amount)}* · _{kind}_ — {escape(without_amount(finding))}"
    spark = (sparks or {}).get((finding.metric or "").lower())
    if spark and finding.kind is FindingKind.USAGE_GROWTH:
        row += f" `{spark}`"
    return row


def findings_text(
    explanation: Explanation,
    *,
    shown: int = FINDINGS_SHOWN,
    sparks: Mapping[str, str] | None = None,
) -> str | None:
    """The ranked findings, each with its amount; the long tail summed up."""
    findings = explanation.findings
    if not findings:
        return None
    heading = "*What changed*" if comparable(explanation) else "*What it is made of*"
    rows = [_finding_row(i, f, sparks) for i, f in enumerate(findings[:shown], start=1)]
    rest = findings[shown:]
    if rest:
        net = Money(sum((f.amount.amount for f in rest), Decimal(0)), rest[0].amount.currency)
        rows.append(f"…and {len(rest)} more smaller findings, together {signed(net)}.")
    # Rows are added whole while they fit, so a long list never ends mid-sentence.
    text = heading
    for index, row in enumerate(rows):
        if len(text) + len(row) + 1 > MAX_SECTION - 60:
            text += f"\n…{len(rows) - index} more rows not shown."
            break
        text += "\n" + row
    return text


def share_text(explanation: Explanation) -> str | None:
    """The explained share as a percentage, with what it leaves unexplained."""
    if not comparable(explanation) or explanation.change.is_zero():
        return None
    text = (
        f"*Explained:* {percent(explanation.explained_share)} of the change "
        f"({explanation.explained} of {explanation.change})"
    )
    if has_unexplained(explanation):
        text += (
            f"\n:grey_question: {explanation.unexplained} is not explained by the invoices' "
            "line items."
        )
    return text


def duplicates_text(explanation: Explanation) -> str | None:
    """Duplicate or retried charges, which don't change the invoice total."""
    dups = explanation.duplicate_payments
    if not dups:
        return None
    rows = [f"• *{f.amount}* — {escape(f.summary)}" for f in dups[:5]]
    return ":rotating_light: *Duplicate charges*\n" + "\n".join(rows)


def _invoice_link(invoice: Invoice, snapshot: BillingSnapshot, *, sandbox: bool) -> str:
    name = escape(invoice_name(invoice))
    label = f"<{invoice.url}|{name}>" if invoice.url else f"`{name}`"
    status = invoice.status.value.replace("_", " ")
    extra = "" if sandbox else _dashboard_link(invoice, snapshot)
    return f"{label} {fmt_date(invoice.created_at)} · {invoice.total} · {status}{extra}"


def _dashboard_link(invoice: Invoice, snapshot: BillingSnapshot) -> str:
    snap = snapshot.get(invoice.provider)
    customer_url = snap.customer.dashboard_url if snap is not None else None
    template = INVOICE_DASHBOARDS.get(invoice.provider)
    if template is not None:
        # Stripe's test-mode pages live under /test/; the customer's link says which mode it is.
        mode = "test/" if customer_url and "/test/" in customer_url else ""
        url = template.format(mode=mode, id=invoice.id)
    elif customer_url:
        url = customer_url
    else:
        return ""
    return f" · <{url}|{provider_label(invoice.provider)} dashboard>"


def invoices_text(explanation: Explanation, snapshot: BillingSnapshot, *, sandbox: bool) -> str:
    """Links to the explained invoice and the one it was compared with."""
    rows = [f"This: {_invoice_link(explanation.current, snapshot, sandbox=sandbox)}"]
    if explanation.previous is not None:
        previous = _invoice_link(explanation.previous, snapshot, sandbox=sandbox)
        rows.append(f"Compared with: {previous}")
    return "*Invoices*\n" + "\n".join(rows)


def explanation_view(result: ExplainResult, *, sandbox: bool = False) -> Reply:
    """The answer to `/billing explain`: summary, wording, ranked findings, share, links."""
    snapshot, explanation = result.snapshot, result.explanation
    current = explanation.current
    title = _account_title(snapshot)
    blocks: list[Block] = [
        header(f"{title} · why invoice {invoice_name(current)} changed"),
        _context_line(snapshot, current, sandbox=sandbox),
        *_failure_blocks(result.missing),
        section(summary_line(explanation)),
    ]
    if result.wording.text:
        blocks.append(section(escape(result.wording.text)))
    blocks.append(wording_context(result.wording))
    blocks.append(divider())
    for text in (
        findings_text(explanation, sparks=usage_sparklines(snapshot)),
        share_text(explanation),
        duplicates_text(explanation),
    ):
        if text:
            blocks.append(section(text))
    notes = [escape(n) for n in explanation.notes]
    if notes:
        blocks.append(context(clip("Notes: " + " ".join(notes), MAX_SECTION)))
    blocks.append(section(invoices_text(explanation, snapshot, sandbox=sandbox)))
    text = _plain_summary(explanation, escape(title))
    return Reply(text=text, blocks=blocks[:49])


def _plain_summary(explanation: Explanation, title: str) -> str:
    """The notification text (`title` already escaped: Slack parses this text too)."""
    current, previous = explanation.current, explanation.previous
    if previous is not None and comparable(explanation) and not explanation.change.is_zero():
        return (
            f"{title}: invoice {current.id} is {current.total}, {signed(explanation.change)} "
            f"vs {previous.id}"
        )
    return f"{title}: invoice {current.id} is {current.total}"


# --- draft ------------------------------------------------------------------------------------


def refund_request_buttons(result: DraftResult) -> list[Block]:
    """A "Request refund" button (refunds go through Stripe, so only for an account with a
    Stripe customer), prefilled from `result.refund_suggestion` (the duplicate charge's
    payment, amount and reason) when there is one."""
    account = result.snapshot.account
    stripe = account.customer_ids.get("stripe")
    if not stripe:
        return []
    target = account.account_id or stripe
    suggestion = result.refund_suggestion
    if suggestion is None:
        return [request_button(target, None, None, "")]
    return [request_button(target, suggestion.payment_id, suggestion.amount, suggestion.reason)]


def draft_view(result: DraftResult, *, regenerate: str, sandbox: bool = False) -> Reply:
    """The answer to `/billing draft`: the reply to copy, how it was worded, and the notes used.

    Shown to the engineer only; nothing is ever sent to a customer.
    """
    snapshot, explanation = result.snapshot, result.explanation
    current = explanation.current
    title = _account_title(snapshot)
    blocks: list[Block] = [
        header(f"Draft reply to {title}"),
        context(
            f":lock: Only you can see this; nothing is sent to the customer. About invoice "
            f"{escape(invoice_name(current))} ({current.total})"
            + (" · sandbox data" if sandbox else "")
        ),
        *_failure_blocks(result.missing),
        # plain_text: the engineer copies exactly what is shown, no mrkdwn surprises.
        {
            "type": "section",
            "block_id": "draft_text",
            "text": {
                "type": "plain_text",
                "text": clip(result.wording.text, MAX_SECTION),
                "emoji": False,
            },
        },
        wording_context(result.wording),
    ]
    if result.notes:
        blocks.append(context(f"Your notes: “{escape(clip(result.notes, 500))}”"))
    else:
        blocks.append(
            context(
                "No notes given. Add context after the account, e.g. "
                "`draft ACCOUNT customer says they were charged twice`."
            )
        )
    elements = [button("Regenerate", DRAFT_REGENERATE_ACTION, regenerate)]
    elements.extend(refund_request_buttons(result))
    blocks.append({"type": "actions", "block_id": DRAFT_ACTIONS_BLOCK, "elements": elements})
    text = f"Draft reply to {escape(title)} about invoice {escape(invoice_name(current))}"
    return Reply(text=text, blocks=blocks[:50], shareable=False)

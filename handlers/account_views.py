"""Block Kit for an account's billing snapshot (`/billing ACCOUNT`): providers side by side."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from bot.domain.models import (
    PROVIDER_LABELS,
    BillingSnapshot,
    Invoice,
    InvoiceMirror,
    PaymentStatus,
    ProviderSnapshot,
    Subscription,
    SubscriptionStatus,
)
from bot.domain.money import Money
from handlers.views import Block, Reply, clip, context, divider, escape, header, section

DASHBOARDS = {
    "stripe": "https://dashboard.stripe.com/customers/{id}",
    "orb": "https://app.withorb.com/customers/{id}",
    "metronome": "https://app.metronome.com/customers/{id}",
}
INVOICES_SHOWN = 4
ITEMS_SHOWN = 4


def fmt_date(when: datetime | None) -> str:
    """`Oct 1, 2026` (UTC), or an em dash."""
    return when.strftime("%b %-d, %Y") if when else "—"


def _status_icon(status: SubscriptionStatus) -> str:
    return {
        SubscriptionStatus.ACTIVE: ":large_green_circle:",
        SubscriptionStatus.TRIALING: ":large_blue_circle:",
        SubscriptionStatus.PAST_DUE: ":red_circle:",
        SubscriptionStatus.UNPAID: ":red_circle:",
    }.get(status, ":white_circle:")


def _current_sub(subs: tuple[Subscription, ...]) -> Subscription | None:
    live = [
        s for s in subs if s.status not in (SubscriptionStatus.CANCELED, SubscriptionStatus.ENDED)
    ]
    candidates = live or list(subs)
    return candidates[0] if candidates else None


def _period_spend(snap: ProviderSnapshot, sub: Subscription | None) -> tuple[Money | None, str]:
    """Current-period spend: the upcoming invoice if known, else costs since the period began."""
    if snap.upcoming_invoice is not None:
        return snap.upcoming_invoice.total, "upcoming invoice so far"
    start = sub.current_period_start.date() if sub and sub.current_period_start else None
    costs = [p.cost for p in snap.usage if p.cost is not None and (start is None or p.day >= start)]
    if not costs or start is None:
        return None, ""
    total = costs[0]
    for c in costs[1:]:
        if c.currency == total.currency:
            total = total + c
    return total, f"usage cost since {fmt_date(sub.current_period_start if sub else None)}"


def _usage_lines(snap: ProviderSnapshot, sub: Subscription | None) -> list[str]:
    start = sub.current_period_start.date() if sub and sub.current_period_start else None
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for point in snap.usage:
        if point.metric and point.quantity is not None and (start is None or point.day >= start):
            totals[point.metric] += point.quantity
    ranked = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:ITEMS_SHOWN]
    return [f"{escape(metric)}: {qty:,.0f}" for metric, qty in ranked]


def _invoice_line(inv: Invoice, *, link: bool, mirror: InvoiceMirror | None = None) -> str:
    label = f"`{inv.id}`"
    if link and inv.url:
        label = f"<{inv.url}|{inv.number or inv.id}>"
    text = (
        f"{label} {fmt_date(inv.created_at)} · *{inv.total}* · {inv.status.value.replace('_', ' ')}"
    )
    if mirror is not None and mirror.copy.id == inv.id:
        source = mirror.source
        text += f" · copy of {PROVIDER_LABELS.get(source.provider)} `{source.number or source.id}`"
    elif mirror is not None:
        text += f" · collected by Stripe as `{mirror.copy.id}`"
    return text


def provider_blocks(
    snap: ProviderSnapshot,
    *,
    sandbox: bool,
    mirrors: tuple[InvoiceMirror, ...] = (),
    unpaired: tuple[Invoice, ...] = (),
) -> list[Block]:
    """The blocks of one provider's column; `mirrors` pair invoices with their Stripe copies,
    `unpaired` are copies whose source is older than the history read."""
    label = PROVIDER_LABELS.get(snap.provider, snap.provider)
    cust = snap.customer
    sub = _current_sub(snap.subscriptions)
    paired = {m.copy.id: m for m in mirrors} | {m.source.id: m for m in mirrors}
    orphans = {i.id for i in unpaired}
    copies_of = sorted({m.source.provider for m in mirrors})
    only_copies = bool(snap.invoices) and all(
        i.id in orphans or (i.id in paired and paired[i.id].copy.id == i.id) for i in snap.invoices
    )
    ident = f"`{cust.customer_id}`"
    if not sandbox:
        ident = f"<{DASHBOARDS[snap.provider].format(id=cust.customer_id)}|{cust.customer_id}>"
    fields = [f"*{label}*\n{ident}"]
    if sub is not None:
        period = ""
        if sub.current_period_end:
            period = f"\nperiod ends {fmt_date(sub.current_period_end)}"
        fields.append(
            f"*Plan*\n{_status_icon(sub.status)} {escape(sub.plan_name or 'unnamed plan')} "
            f"({sub.status.value.replace('_', ' ')}){period}"
        )
    elif only_copies:
        billers = " and ".join(PROVIDER_LABELS.get(p, p) for p in copies_of)
        fields.append(f"*Role*\ncollects {billers}'s invoices (its invoices are copies)")
    elif snap.invoices or not snap.payments:
        fields.append("*Plan*\nno subscription")
    else:
        fields.append("*Role*\ntakes the card payments")
    spend, how = _period_spend(snap, sub)
    if spend is not None:
        fields.append(f"*Current period*\n{spend} ({how})")
    balance_lines = [
        f"{b.name or b.kind.replace('_', ' ')}: {b.remaining}"
        + (f" of {b.granted}" if b.granted is not None else "")
        for b in snap.balances
    ]
    has_balance_entry = any(b.kind == "customer_balance" for b in snap.balances)
    if cust.balance is not None and not cust.balance.is_zero() and not has_balance_entry:
        owed = cust.balance
        balance_lines.append(
            f"customer balance: {-owed} credit" if owed.amount < 0 else f"owes {owed}"
        )
    if balance_lines:
        fields.append("*Credits / balance*\n" + "\n".join(balance_lines[:ITEMS_SHOWN]))
    usage = _usage_lines(snap, sub)
    if usage:
        fields.append("*Usage this period*\n" + "\n".join(usage))
    if cust.delinquent:
        fields.append("*Delinquent*\n:red_circle: yes")
    blocks: list[Block] = [section(f"*{label}* · {escape(cust.name or '')}", fields=fields[:10])]

    details: list[str] = []
    if snap.invoices:
        invs = [
            _invoice_line(i, link=not sandbox, mirror=paired.get(i.id))
            + (" · copy of an older invoice" if i.id in orphans else "")
            for i in snap.invoices[:INVOICES_SHOWN]
        ]
        details.append("*Recent invoices*\n" + "\n".join(invs))
    if snap.payments:
        rows = [
            f"`{p.id}` {fmt_date(p.created_at)} · {p.amount} · {p.status.value}"
            + (
                f" · refunded {p.amount_refunded}"
                if p.amount_refunded and not p.amount_refunded.is_zero()
                else ""
            )
            for p in snap.payments[:ITEMS_SHOWN]
        ]
        details.append("*Recent payments*\n" + "\n".join(rows))
    failed = [p for p in snap.payments if p.status is PaymentStatus.FAILED][:ITEMS_SHOWN]
    if failed:
        rows = [
            f"`{p.id}` {fmt_date(p.created_at)} · {p.amount} · "
            f"{escape(p.failure_message or p.failure_code or 'failed')}"
            for p in failed
        ]
        details.append(":x: *Failed payments*\n" + "\n".join(rows))
    open_disputes = [d for d in snap.disputes if d.is_open]
    if open_disputes:
        rows = [
            f"`{d.id}` {d.amount} · {d.reason.replace('_', ' ')} · {d.status.replace('_', ' ')} · "
            f"*evidence due {fmt_date(d.evidence_due_by)}*"
            for d in open_disputes[:ITEMS_SHOWN]
        ]
        details.append(":rotating_light: *Open disputes*\n" + "\n".join(rows))
    if snap.refunds:
        rows = [
            f"`{r.id}` {fmt_date(r.created_at)} · {r.amount} · {r.status}"
            + (f" · {r.reason.replace('_', ' ')}" if r.reason else "")
            for r in snap.refunds[:ITEMS_SHOWN]
        ]
        details.append("*Refunds*\n" + "\n".join(rows))
    if details:
        blocks.append(section(clip("\n\n".join(details), 3000)))
    return blocks


def _labels(providers: tuple[str, ...]) -> str:
    names = [PROVIDER_LABELS.get(p, p) for p in providers]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def account_notes(snapshot: BillingSnapshot) -> list[Block]:
    """How the account was put together, where the engineer should know: customers joined by
    email only, and providers that were not asked."""
    blocks: list[Block] = []
    email_only = snapshot.account.email_only
    if email_only:
        blocks.append(
            context(
                f":link: *{_labels(email_only)} matched by email only* — no account ID in common "
                "with the rest; check that this is the same customer."
            )
        )
    for skipped in snapshot.skipped:
        label = PROVIDER_LABELS.get(skipped.provider, skipped.provider)
        blocks.append(context(f":information_source: *{label}: {skipped.reason}*."))
    return blocks


def snapshot_reply(snapshot: BillingSnapshot, *, sandbox: bool = False) -> Reply:
    """The whole account view."""
    acct = snapshot.account
    title = acct.display_name or acct.account_id or "Account"
    blocks: list[Block] = [header(f"{title} · {acct.account_id}" if acct.account_id else title)]
    notes = []
    if acct.email:
        notes.append(escape(acct.email))
    if sandbox:
        notes.append("sandbox data")
    if snapshot.fetched_at:
        notes.append(f"as of {snapshot.fetched_at.strftime('%b %-d %H:%M UTC')}")
    if notes:
        blocks.append(context(" · ".join(notes)))
    for failure in snapshot.failures:
        label = PROVIDER_LABELS.get(failure.provider, failure.provider)
        blocks.append(context(f":warning: *{label}: {failure.reason}* — the rest is shown."))
    blocks.extend(account_notes(snapshot))
    for snap in snapshot.providers:
        blocks.append(divider())
        blocks.extend(
            provider_blocks(
                snap,
                sandbox=sandbox,
                mirrors=snapshot.mirrors,
                unpaired=snapshot.unpaired_copies,
            )
        )
    if not snapshot.providers:
        blocks.append(section("No provider could answer for this account right now."))
    failed = ", ".join(
        f"{PROVIDER_LABELS.get(f.provider, f.provider)}: {f.reason}" for f in snapshot.failures
    )
    text = f"Billing state of {title}" + (f" ({failed})" if failed else "")
    return Reply(text=text, blocks=blocks[:49])

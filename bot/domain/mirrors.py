"""Mirrored invoices: an Orb or Metronome invoice and the Stripe invoice that collects it.

Orb- and Metronome-billed companies often invoice *through* Stripe: the billing provider creates
one Stripe invoice per invoice of its own, built from one-off invoice items (descriptions and
amounts, sometimes quantities; no prices), and Stripe collects the money. Both invoices are
real, but they are one bill: the billing provider's is the truth for what was billed and why,
the Stripe copy for how it was paid. This module pairs them so that nothing counts twice.

Recognition, strongest first (what is verified and what is assumed is in the README):

1. **A link either side names**: a Stripe invoice whose metadata carries the source invoice's ID
   (Orb's Stripe Invoicing sync writes `orb_invoice_id`), or a source invoice naming the Stripe
   invoice (Metronome's `external_invoice.invoice_id`).
2. **The same number** on both, with the same total.
3. **Amount and period**: a Stripe invoice shaped like a copy (no subscription, only one-off
   items) with the source's total (before or after tax Stripe added) and its service period,
   issued within a week after the source; only when exactly one pairing fits either side.

A paired source takes its payment state (status, paid, attempts) from the copy: Stripe is where
the money moved. Pure: standard library and `bot.domain` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from bot.domain.models import (
    Invoice,
    InvoiceMirror,
    InvoiceStatus,
    LineKind,
    ProviderSnapshot,
)

#: Service periods that agree within this much are the same period (time zones, midnight cuts).
PERIOD_SLACK = timedelta(days=1, hours=1)
#: A copy is created after its source is issued, usually within minutes; allow a week of sync
#: delays and manual finalisation.
COPY_DELAY = timedelta(days=7)
#: How far before the oldest paired copy an unpaired one still counts as a copy of an invoice
#: just outside the provider's history (a quarter covers quarterly billing).
ORPHAN_REACH = timedelta(days=95)


def _copy_shaped(inv: Invoice) -> bool:
    """No subscription, and every line a one-off item (or no lines listed)."""
    if inv.subscription_id is not None:
        return False
    return all(line.kind is LineKind.ONE_OFF for line in inv.lines)


def _service_period(inv: Invoice) -> tuple[datetime | None, datetime | None]:
    """The period the invoice bills: its lines' periods when they have them, else its own; a
    period of no length (a one-off Stripe invoice's is just its creation time) is unknown."""
    starts = [line.period_start for line in inv.lines if line.period_start]
    ends = [line.period_end for line in inv.lines if line.period_end]
    if starts and ends and min(starts) < max(ends):
        return min(starts), max(ends)
    if inv.period_start and inv.period_end and inv.period_start < inv.period_end:
        return inv.period_start, inv.period_end
    return None, None


def _close(a: datetime, b: datetime) -> bool:
    return abs(a - b) <= PERIOD_SLACK


def _same_period(source: Invoice, copy: Invoice) -> bool:
    """Both bill the same service period; where one side states none, the copy was created
    within a week after its source was issued."""
    start, end = _service_period(copy)
    if start and end and source.period_start and source.period_end:
        return _close(start, source.period_start) and _close(end, source.period_end)
    issued, created = source.created_at, copy.created_at
    if issued is None or created is None:
        return False
    return issued - PERIOD_SLACK <= created <= issued + COPY_DELAY


def _same_amount(source: Invoice, copy: Invoice) -> bool:
    if source.total.currency != copy.total.currency:
        return False
    if copy.total == source.total:
        return True
    # Stripe Tax may add tax on the copy of an invoice that has none of its own (Metronome).
    return copy.subtotal is not None and copy.subtotal == source.total and not source.tax


def _evidence(source: Invoice, copy: Invoice) -> str | None:
    if source.id in copy.links:
        return "metadata"
    if copy.id in source.links:
        return "external invoice ID"
    if source.collected_by not in (None, "stripe") or not _copy_shaped(copy):
        return None
    if not _same_amount(source, copy):
        return None
    if source.number and copy.number and source.number.casefold() == copy.number.casefold():
        return "number"
    if _same_period(source, copy):
        return "amount and period"
    return None


def find_mirrors(providers: Sequence[ProviderSnapshot]) -> tuple[InvoiceMirror, ...]:
    """Pairs of (source invoice, Stripe copy), each invoice in at most one pair."""
    stripe = next((p for p in providers if p.provider == "stripe"), None)
    if stripe is None:
        return ()
    sources = [inv for p in providers if p.provider != "stripe" for inv in p.invoices]
    if not sources or not stripe.invoices:
        return ()
    pairs: list[InvoiceMirror] = []
    taken_sources: set[str] = set()
    taken_copies: set[str] = set()
    # Named links first: they are certain, and they take their invoices out of the guessing.
    for copy in stripe.invoices:
        for source in sources:
            evidence = _evidence(source, copy)
            if evidence in ("metadata", "external invoice ID") and source.id not in taken_sources:
                pairs.append(InvoiceMirror(source, copy, evidence))
                taken_sources.add(source.id)
                taken_copies.add(copy.id)
                break
    guesses: dict[str, list[tuple[Invoice, str]]] = {}
    by_source: dict[str, int] = {}
    for copy in stripe.invoices:
        if copy.id in taken_copies:
            continue
        for source in sources:
            if source.id in taken_sources:
                continue
            evidence = _evidence(source, copy)
            if evidence is not None:
                guesses.setdefault(copy.id, []).append((source, evidence))
                by_source[source.id] = by_source.get(source.id, 0) + 1
    for copy in stripe.invoices:
        options = guesses.get(copy.id, [])
        # A number match decides among several; otherwise only a pairing that is unique on
        # both sides is trusted (monthly invoices of one amount are told apart by period).
        numbered = [o for o in options if o[1] == "number"]
        chosen = numbered if len(numbered) == 1 else options
        if len(chosen) == 1 and (numbered or by_source[chosen[0][0].id] == 1):
            source, evidence = chosen[0]
            pairs.append(InvoiceMirror(source, copy, evidence))
            taken_sources.add(source.id)
    return tuple(pairs)


def _collected(source: Invoice, copy: Invoice) -> Invoice:
    """The source with the payment state of the copy that collected it."""
    if copy.status is InvoiceStatus.DRAFT:
        return source  # not sent to the customer yet: nothing collected
    return replace(
        source,
        status=copy.status,
        amount_paid=copy.amount_paid if copy.amount_paid is not None else source.amount_paid,
        paid_at=copy.paid_at or source.paid_at,
        attempt_count=max(source.attempt_count, copy.attempt_count),
        collected_by="stripe",
    )


def unpaired_copies(
    providers: Sequence[ProviderSnapshot], mirrors: Sequence[InvoiceMirror]
) -> tuple[Invoice, ...]:
    """Copy-shaped Stripe invoices older than every paired copy, on an account that invoices
    through Stripe (two or more pairs): the copies of invoices from before the history read from
    the billing provider, whose list starts by service period where Stripe's starts by date."""
    if len(mirrors) < 2:
        return ()
    stripe = next((p for p in providers if p.provider == "stripe"), None)
    oldest = min((m.copy.created_at for m in mirrors if m.copy.created_at), default=None)
    if stripe is None or oldest is None:
        return ()
    paired = {m.copy.id for m in mirrors}
    return tuple(
        inv
        for inv in stripe.invoices
        if inv.id not in paired
        and _copy_shaped(inv)
        and inv.created_at is not None
        # Just before the first pair: one billing period at the edge of the history, not an
        # older one-off Stripe invoice from before the account was invoiced this way.
        and oldest - ORPHAN_REACH <= inv.created_at < oldest
    )


def link_mirrors(
    providers: Sequence[ProviderSnapshot],
) -> tuple[tuple[ProviderSnapshot, ...], tuple[InvoiceMirror, ...]]:
    """The providers' snapshots with each mirrored source invoice carrying its copy's payment
    state, and the mirror pairs (sources as updated)."""
    found = find_mirrors(providers)
    if not found:
        return tuple(providers), ()
    updated = {m.source.id: _collected(m.source, m.copy) for m in found}
    out = []
    for snap in providers:
        if snap.provider == "stripe" or not any(i.id in updated for i in snap.invoices):
            out.append(snap)
            continue
        invoices = tuple(updated.get(i.id, i) for i in snap.invoices)
        out.append(replace(snap, invoices=invoices))
    mirrors = tuple(replace(m, source=updated[m.source.id]) for m in found)
    return tuple(out), mirrors

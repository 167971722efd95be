"""Ticket triage (DESIGN §10): which account a ticket is about, its billing state, the explanation
of the invoice it is about and a draft reply to the customer's own words; and posting that draft
as an internal note exactly once.

Resolution order (the first source that names an account wins; it never guesses):
1. `ZENDESK_ACCOUNT_FIELD`: a ticket custom field (by ID) or organization field (by key);
2. the organization's `external_id`;
3. provider IDs or invoice numbers written in the ticket (`cus_…`, `in_…`, `ch_…`, `B02734D1-0017`);
4. the requester's email.
A source naming several accounts stops the search and lists them. To stay fast, every candidate
known so far is looked up concurrently with the remaining Zendesk reads; the order only decides
which answer counts.

Posting (§10.2) is a state machine in the database (`pending → posting → posted | unknown`): one
conditional UPDATE decides which click posts; the note ends with a marker line naming the draft,
so a note whose outcome is unknown is reconciled by reading the ticket's comments, never by
posting again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

from bot.domain.identifiers import AccountIdentifier, IdentifierKind, classify_account
from bot.domain.models import BillingSnapshot
from bot.domain.ports import LLMClient, TicketSource
from bot.domain.records import Store, TicketNote
from bot.domain.redact import redact
from bot.domain.tickets import (
    Ticket,
    TicketComment,
    TicketOrganization,
    TicketUser,
    identifiers_in,
    invoice_named,
    latest_public_comment,
    note_marker,
)
from bot.errors import (
    AccountNotFound,
    AmbiguousAccount,
    BotError,
    InvalidIdentifier,
    ProviderError,
    TicketNoteUnknown,
    UserError,
)
from bot.services.explain import (
    LLM_DEADLINE,
    DraftResult,
    ExplainResult,
    build_facts,
    draft_text,
    explain_snapshot,
    explain_text,
    refund_suggestion,
)
from bot.services.lookup import LookupService, Resolution
from bot.services.wording import word

log = logging.getLogger("bot.tickets")

#: The customer's message is quoted to the model under this name, first among the quoted data.
CUSTOMER_QUOTE = "customer message"
DRAFT_NOTES = (
    "Reply to the customer's latest message, quoted as [customer message]: answer their own "
    "question with the billing facts."
)
# The customer reports a double charge (not "our bill almost doubled"): the draft then leads
# with what the payments show.
_CHARGED_TWICE_RE = re.compile(
    r"\b(charged (?:us |me )?twice|billed (?:us |me )?twice|paid twice|double[- ]charged"
    r"|double (?:charge|payment)|duplicate (?:charge|payment)s?|two charges|charged again)\b",
    re.IGNORECASE,
)
#: A `posting` claim older than this belongs to a replica that died mid-post.
STALE_CLAIM = timedelta(seconds=60)
#: An `unknown` note not found on the ticket after this long certainly did not reach it.
UNKNOWN_GRACE = timedelta(minutes=2)

Outcome = Literal["matched", "ambiguous", "none"]


@dataclass(frozen=True, slots=True)
class TicketContext:
    """The ticket as Zendesk has it: requester, organization, comments, the customer's words."""

    ticket: Ticket
    requester: TicketUser | None
    organization: TicketOrganization | None
    comments: tuple[TicketComment, ...]
    latest: TicketComment | None
    url: str

    @property
    def customer_text(self) -> str | None:
        """The customer's latest public comment, card numbers and secrets redacted."""
        if self.latest is None:
            return None
        return redact(self.latest.body.strip())


@dataclass(frozen=True, slots=True)
class Attempt:
    """One resolution source: what it tried and what came of it."""

    source: str
    tried: tuple[str, ...]
    accounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class TriageResult:
    """A triaged ticket. `outcome` says whether one account matched; `candidates` lists them
    when several did; `attempts` says what was tried, in order."""

    context: TicketContext
    outcome: Outcome
    matched_by: str | None
    account_id: str | None
    candidates: tuple[str, ...]
    attempts: tuple[Attempt, ...]
    snapshot: BillingSnapshot | None = None
    explanation: ExplainResult | None = None
    draft: DraftResult | None = None
    #: Why there is no explanation (no invoices, a provider down), said to the engineer.
    problem: str | None = None
    draft_id: str | None = None
    invoice_id: str | None = None


# --------------------------------------------------------------------------- reading the ticket


def _field_value(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _account_ident(value: str | None) -> AccountIdentifier | None:
    if not value:
        return None
    try:
        return classify_account(value)
    except InvalidIdentifier:
        return None


class _Resolver:
    """Looks candidates up concurrently, each once; results are awaited in resolution order."""

    def __init__(self, lookup: LookupService) -> None:
        self._lookup = lookup
        self._tasks: dict[tuple[str, tuple[str, ...]], asyncio.Task[Resolution]] = {}

    def start(self, ident: AccountIdentifier) -> asyncio.Task[Resolution]:
        key = (ident.value, tuple(k.value for k in ident.kinds))
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(self._lookup.resolve(ident))
            self._tasks[key] = task
        return task

    async def outcome(
        self, idents: list[AccountIdentifier]
    ) -> tuple[dict[str, tuple[Resolution, AccountIdentifier]], list[str], list[BaseException]]:
        """Accounts found (label → resolution and the identifier that found it), candidates of
        ambiguous identifiers, and provider errors."""
        found: dict[str, tuple[Resolution, AccountIdentifier]] = {}
        ambiguous: list[str] = []
        errors: list[BaseException] = []
        for ident in idents:
            try:
                resolution = await self.start(ident)
            except AmbiguousAccount as exc:
                ambiguous.extend(exc.candidates or (ident.value,))
                continue
            except AccountNotFound:
                continue
            except ProviderError as exc:
                errors.append(exc)
                continue
            label = resolution.account_id or next(
                (c.customer_id for c in resolution.customers.values()), ident.value
            )
            found.setdefault(label, (resolution, ident))
        return found, ambiguous, errors

    def release(self) -> None:
        """Let lookups whose answer is no longer needed finish on their own. They are not
        cancelled: a lookup cancelled inside a database session (the links cache) can leave a
        pooled connection in an unknown state. Their outcome is collected and dropped."""
        for task in self._tasks.values():
            if task.done():
                _collect(task)
            else:
                _DETACHED.add(task)
                task.add_done_callback(_collect)


#: Lookups still running after their triage ended (held so they are not garbage collected).
_DETACHED: set[asyncio.Task[Resolution]] = set()


def _collect(task: asyncio.Task[Resolution]) -> None:
    """Retrieve an unneeded lookup's outcome: its "not found" is not an error to report."""
    _DETACHED.discard(task)
    if not task.cancelled():
        task.exception()


def _label_of(ident: AccountIdentifier) -> str:
    names = {
        IdentifierKind.STRIPE_CUSTOMER: "Stripe customer ID",
        IdentifierKind.STRIPE_INVOICE: "Stripe invoice ID",
        IdentifierKind.STRIPE_CHARGE: "Stripe charge ID",
        IdentifierKind.INVOICE_NUMBER: "invoice number",
    }
    return f"{names.get(ident.primary, 'ID')} {ident.value}"


async def _optional(aw: Awaitable[Any] | None) -> Any:
    return await aw if aw is not None else None


async def triage_ticket(
    *,
    tickets: TicketSource,
    lookup: LookupService,
    ticket_id: int,
    account_field: str | None,
    llm: LLMClient | None,
    deadline: float = LLM_DEADLINE,
) -> TriageResult:
    """Read the ticket, find its account (never guessing), explain and draft. Raises
    `TicketNotFound` and Zendesk's `ProviderError`s; billing provider faults are shown."""
    started = time.monotonic()
    ticket = await tickets.ticket(ticket_id)
    resolver = _Resolver(lookup)
    field_id = account_field.strip() if account_field else None
    ticket_field = (
        _field_value(ticket.custom_fields.get(int(field_id)))
        if field_id and field_id.isdigit()
        else None
    )
    field_ident = _account_ident(ticket_field)
    early_texts = [ticket.subject or "", ticket.description or ""]
    early_ids = identifiers_in(early_texts)
    # Look up what the ticket itself names while the other reads are on the way.
    for ident in [*([field_ident] if field_ident else []), *early_ids]:
        resolver.start(ident)
    try:
        comments, requester, organization = await asyncio.gather(
            tickets.comments(ticket_id),
            _optional(tickets.user(ticket.requester_id) if ticket.requester_id else None),
            _optional(
                tickets.organization(ticket.organization_id) if ticket.organization_id else None
            ),
        )
        org_field = (
            _field_value(organization.fields.get(field_id))
            if organization is not None and field_id
            else None
        )
        org_field_ident = _account_ident(org_field)
        org_ident = _account_ident(organization.external_id if organization else None)
        public_texts = [c.body for c in comments if c.public]
        text_ids = identifiers_in([*early_texts, *public_texts])
        email = (
            requester.email
            if requester is not None
            and requester.email
            and requester.role not in ("agent", "admin")
            else None
        )
        email_ident = _account_ident(email)
        levels: list[tuple[str, list[AccountIdentifier], tuple[str, ...]]] = [
            (
                "account field",
                [i for i in (field_ident, org_field_ident) if i is not None],
                (f"account field {field_id}: {ticket_field or org_field or 'empty'}",)
                if field_id
                else ("account field: ZENDESK_ACCOUNT_FIELD not set",),
            ),
            (
                "organization external ID",
                [org_ident] if org_ident else [],
                (
                    f"organization {organization.name or organization.id}: external ID "
                    f"{organization.external_id or 'not set'}"
                    if organization is not None
                    else "organization: none",
                ),
            ),
            (
                "IDs in the ticket",
                text_ids,
                tuple(_label_of(i) for i in text_ids) or ("IDs in the ticket: none",),
            ),
            (
                "requester email",
                [email_ident] if email_ident else [],
                (f"requester email {email}" if email else "requester email: none",),
            ),
        ]
        for _, idents, _ in levels[1:]:
            for ident in idents:
                resolver.start(ident)
        context = TicketContext(
            ticket=ticket,
            requester=requester,
            organization=organization,
            comments=tuple(comments),
            latest=latest_public_comment(comments, requester_id=ticket.requester_id),
            url=tickets.agent_url(ticket_id),
        )
        attempts: list[Attempt] = []
        errors: list[BaseException] = []
        for source, idents, tried in levels:
            found, ambiguous, level_errors = await resolver.outcome(idents)
            errors.extend(level_errors)
            labels = tuple(dict.fromkeys([*found, *ambiguous]))
            attempts.append(Attempt(source, tried, labels))
            if len(labels) > 1:
                return TriageResult(context, "ambiguous", source, None, labels, tuple(attempts))
            if len(found) == 1:
                label, (resolution, ident) = next(iter(found.items()))
                matched_by = _matched_by(source, ident, field_id, organization)
                resolver.release()
                return await _explain(
                    context=context,
                    resolution=resolution,
                    account=label,
                    matched_by=matched_by,
                    attempts=tuple(attempts),
                    lookup=lookup,
                    named=invoice_named(text_ids),
                    llm=llm,
                    deadline=deadline,
                    started=started,
                )
        if errors:
            raise errors[0]
        return TriageResult(context, "none", None, None, (), tuple(attempts))
    finally:
        resolver.release()


def _matched_by(
    source: str,
    ident: AccountIdentifier,
    field_id: str | None,
    organization: TicketOrganization | None,
) -> str:
    """How the account was found, in words ("matched by …")."""
    if source == "account field":
        return f"account field {field_id}"
    if source == "organization external ID":
        name = organization.name if organization is not None else None
        return f"organization external ID ({name})" if name else source
    if source == "IDs in the ticket":
        return f"{_label_of(ident)} in the ticket"
    return f"requester email {ident.value}"


async def _explain(
    *,
    context: TicketContext,
    resolution: Resolution,
    account: str,
    matched_by: str,
    attempts: tuple[Attempt, ...],
    lookup: LookupService,
    named: str | None,
    llm: LLMClient | None,
    deadline: float,
    started: float,
) -> TriageResult:
    snapshot = await lookup.snapshot_for(resolution, started=started)
    base = TriageResult(
        context,
        "matched",
        matched_by,
        resolution.account_id or account,
        (),
        attempts,
        snapshot=snapshot,
    )
    invoice_id = None
    if named is not None:
        wanted = named.lower()
        if any(
            i.id.lower() == wanted or (i.number or "").lower() == wanted for i in snapshot.invoices
        ):
            invoice_id = named
    try:
        explanation = explain_snapshot(snapshot, invoice_id)
    except UserError as exc:
        return dataclasses.replace(base, problem=exc.message)
    facts = build_facts(snapshot, explanation)
    customer = context.customer_text
    draft_facts = facts
    if customer:
        quoted = {CUSTOMER_QUOTE: customer, **facts.quoted}
        draft_facts = dataclasses.replace(facts, quoted=MappingProxyType(quoted))
    summary = explain_text(explanation, facts)
    reported = (
        "The customer says they were charged twice."
        if customer and _CHARGED_TWICE_RE.search(customer)
        else None
    )
    reply = draft_text(snapshot, explanation, notes=reported)
    explain_wording, draft_wording = await asyncio.gather(
        word(kind="explain", facts=facts, deterministic=summary, llm=llm, deadline=deadline),
        word(
            kind="draft",
            facts=draft_facts,
            deterministic=reply,
            llm=llm,
            engineer_notes=DRAFT_NOTES if customer else None,
            deadline=deadline,
        ),
    )
    explained = ExplainResult(snapshot, explanation, facts, summary, explain_wording)
    draft = DraftResult(
        snapshot=snapshot,
        explanation=explanation,
        facts=draft_facts,
        deterministic=reply,
        wording=draft_wording,
        notes=None,
        refund_suggestion=refund_suggestion(explanation),
    )
    return dataclasses.replace(
        base,
        explanation=explained,
        draft=draft,
        draft_id=new_draft_id(),
        invoice_id=explanation.current.id,
    )


def new_draft_id() -> str:
    """A fresh draft ID (names the note's marker line)."""
    return secrets.token_hex(8)


def note_body(draft: str, draft_id: str) -> str:
    """The internal note: the draft, then the marker line that identifies it."""
    return f"{draft.rstrip()}\n\n{note_marker(draft_id)}"


async def save_draft(
    store: Store, result: TriageResult, *, user: str | None, now: datetime | None = None
) -> bool:
    """Store the triage's draft as a `pending` note so a click can post it; False if there is
    no draft or it could not be stored (the button is then left out)."""
    if result.draft is None or result.draft_id is None:
        return False
    when = now or datetime.now(UTC)
    note = TicketNote(
        ticket_id=result.context.ticket.id,
        draft_id=result.draft_id,
        state="pending",
        body=note_body(result.draft.wording.text, result.draft_id),
        created_at=when,
        updated_at=when,
        account_id=result.account_id,
        created_by=user,
    )
    try:
        async with store.uow() as uow:
            await uow.ticket_notes.create(note)
            await uow.commit()
    except Exception:
        log.warning("could not store a draft note", exc_info=True)
        return False
    return True


# --------------------------------------------------------------------------- posting the note

NoteStatus = Literal["posted", "already_posted", "in_progress", "unknown", "failed", "missing"]


@dataclass(frozen=True, slots=True)
class NoteOutcome:
    """What came of a click on "Post as internal note"."""

    status: NoteStatus
    ticket_id: int
    draft_id: str
    posted_by: str | None = None
    comment_id: int | None = None
    message: str | None = None
    #: True when this call moved the note to `posted` (it should announce it).
    by_this_call: bool = False


Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


async def post_note(
    *,
    store: Store,
    tickets: TicketSource,
    ticket_id: int,
    draft_id: str,
    user: str,
    holder: str,
    clock: Clock = _now,
) -> NoteOutcome:
    """Post the draft as an internal note if nobody has; otherwise say who did or what is
    going on. A second click, a Slack retry or another replica never adds a second note."""
    now = clock()
    async with store.uow() as uow:
        won = await uow.ticket_notes.claim(ticket_id, draft_id, holder=holder, user=user, now=now)
        await uow.commit()
    if not won:
        return await _not_ours(
            store=store, tickets=tickets, ticket_id=ticket_id, draft_id=draft_id, clock=clock
        )
    async with store.uow() as uow:
        note = await uow.ticket_notes.get(ticket_id, draft_id)
    assert note is not None  # we just claimed it
    try:
        written = await tickets.add_internal_note(ticket_id, note.body)
    except TicketNoteUnknown as exc:
        async with store.uow() as uow:
            await uow.ticket_notes.mark_unknown(
                ticket_id, draft_id, holder=holder, error=exc.message, now=clock()
            )
            await uow.commit()
        log.warning("note outcome unknown; reconciling", extra={"ticket": ticket_id})
        refreshed = await _get(store, ticket_id, draft_id)
        return await reconcile_note(
            store=store, tickets=tickets, note=refreshed or note, clock=clock
        )
    except BotError as exc:
        # Certainly not added (401, 404, 422, 429): the draft can be posted again later.
        async with store.uow() as uow:
            await uow.ticket_notes.release(
                ticket_id,
                draft_id,
                from_state="posting",
                holder=holder,
                error=exc.message,
                now=clock(),
            )
            await uow.commit()
        return NoteOutcome("failed", ticket_id, draft_id, message=exc.message)
    except BaseException:
        # Cancelled or crashed mid-call: the outcome is unknown; the reconciler settles it.
        try:
            async with store.uow() as uow:
                await uow.ticket_notes.mark_unknown(
                    ticket_id, draft_id, holder=holder, error="interrupted", now=clock()
                )
                await uow.commit()
        except Exception:
            log.warning("could not mark an interrupted note", exc_info=True)
        raise
    async with store.uow() as uow:
        await uow.ticket_notes.mark_posted(
            ticket_id, draft_id, comment_id=written.comment_id, now=clock()
        )
        await uow.commit()
    return NoteOutcome(
        "posted",
        ticket_id,
        draft_id,
        posted_by=user,
        comment_id=written.comment_id,
        by_this_call=True,
    )


async def _get(store: Store, ticket_id: int, draft_id: str) -> TicketNote | None:
    async with store.uow() as uow:
        return await uow.ticket_notes.get(ticket_id, draft_id)


async def _not_ours(
    *, store: Store, tickets: TicketSource, ticket_id: int, draft_id: str, clock: Clock
) -> NoteOutcome:
    note = await _get(store, ticket_id, draft_id)
    if note is None:
        return NoteOutcome(
            "missing",
            ticket_id,
            draft_id,
            message="This draft is no longer known; run the ticket again.",
        )
    if note.state == "posted":
        return NoteOutcome(
            "already_posted",
            ticket_id,
            draft_id,
            posted_by=note.posted_by,
            comment_id=note.comment_id,
        )
    now = clock()
    if note.state == "posting":
        if note.claimed_at is not None and note.claimed_at < now - STALE_CLAIM:
            async with store.uow() as uow:
                await uow.ticket_notes.mark_unknown(
                    ticket_id,
                    draft_id,
                    holder=None,
                    error="claim went stale",
                    now=now,
                    stale_before=now - STALE_CLAIM,
                )
                await uow.commit()
            refreshed = await _get(store, ticket_id, draft_id)
            return await reconcile_note(
                store=store, tickets=tickets, note=refreshed or note, clock=clock
            )
        return NoteOutcome("in_progress", ticket_id, draft_id, posted_by=note.posted_by)
    if note.state == "unknown":
        return await reconcile_note(store=store, tickets=tickets, note=note, clock=clock)
    # `pending` again: a failed attempt just released it; the user may click again.
    return NoteOutcome("failed", ticket_id, draft_id, message=note.last_error or "Try again.")


async def reconcile_note(
    *, store: Store, tickets: TicketSource, note: TicketNote, clock: Clock = _now
) -> NoteOutcome:
    """Settle a note whose outcome is unknown by reading the ticket's comments for its marker:
    found → posted; not found long enough after the attempt → pending again (it never arrived);
    otherwise still unknown. Never posts."""
    marker = note_marker(note.draft_id)
    try:
        comments = await tickets.comments(note.ticket_id)
    except BotError as exc:
        return NoteOutcome(
            "unknown", note.ticket_id, note.draft_id, posted_by=note.posted_by, message=exc.message
        )
    found = next((c for c in comments if not c.public and marker in c.body), None)
    now = clock()
    if found is not None:
        async with store.uow() as uow:
            moved = await uow.ticket_notes.mark_posted(
                note.ticket_id, note.draft_id, comment_id=found.id, now=now
            )
            await uow.commit()
        return NoteOutcome(
            "posted",
            note.ticket_id,
            note.draft_id,
            posted_by=note.posted_by,
            comment_id=found.id,
            by_this_call=moved,
        )
    attempted = note.claimed_at or note.updated_at
    if note.state == "unknown" and attempted < now - UNKNOWN_GRACE:
        async with store.uow() as uow:
            await uow.ticket_notes.release(
                note.ticket_id,
                note.draft_id,
                from_state="unknown",
                error="the note did not reach the ticket",
                now=now,
                claimed_before=now - UNKNOWN_GRACE,
            )
            await uow.commit()
        return NoteOutcome(
            "failed",
            note.ticket_id,
            note.draft_id,
            message="The note did not reach the ticket; click again to post it.",
        )
    return NoteOutcome(
        "unknown",
        note.ticket_id,
        note.draft_id,
        posted_by=note.posted_by,
        message="Zendesk did not confirm the note in time; checking the ticket.",
    )


async def reconcile_unsettled(
    *, store: Store, tickets: TicketSource, clock: Clock = _now, limit: int = 50
) -> list[NoteOutcome]:
    """The reconciler job: settle notes left `unknown` (or `posting` by a replica that died)."""
    async with store.uow() as uow:
        notes = await uow.ticket_notes.unsettled(limit=limit)
    out: list[NoteOutcome] = []
    now = clock()
    for note in notes:
        current = note
        if note.state == "posting":
            if note.claimed_at is None or note.claimed_at >= now - STALE_CLAIM:
                continue
            async with store.uow() as uow:
                await uow.ticket_notes.mark_unknown(
                    note.ticket_id,
                    note.draft_id,
                    holder=None,
                    error="claim went stale",
                    now=now,
                    stale_before=now - STALE_CLAIM,
                )
                await uow.commit()
            current = await _get(store, note.ticket_id, note.draft_id) or note
        out.append(await reconcile_note(store=store, tickets=tickets, note=current, clock=clock))
    return out

"""The sandbox's Zendesk: a `WireRouter` answering Zendesk Support's API (`/api/v2`) with tickets
that belong to the sandbox world's stories, in Zendesk's wire format (named envelopes, integer
IDs, ISO 8601 times, offset and cursor pagination, Zendesk's error bodies).

As strict as Zendesk where it matters: API token auth (`{email}/token:{token}`, HTTP Basic) is
checked on every request (401 `Couldn't authenticate you`), unknown records are 404
`RecordNotFound`, a blank or oversized comment is 422 `RecordInvalid`, updates to one ticket are
limited (30 per 10 minutes, then 429 with `Retry-After`). `PUT /api/v2/tickets/{id}` applies what
it is sent, as Zendesk does (a comment without `public: false` is public and would email the
customer); every update is recorded in `updates` so tests can see whether anything other than a
private comment changed. State is per server instance.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from integrations.sandbox.wire import WireRequest, WireResponse

JSON = dict[str, Any]

SANDBOX_ZENDESK_BASE = "https://sandbox.zendesk.invalid"
SANDBOX_ZENDESK_EMAIL = "triage-bot@sandbox.example"
SANDBOX_ZENDESK_TOKEN = "sandbox-zendesk-token-0000"  # noqa: S105 - the sandbox's own, public
#: The ticket custom field holding our account ID in the sandbox (`ZENDESK_ACCOUNT_FIELD`).
SANDBOX_ACCOUNT_FIELD = 360012345678
#: The agent the bot's API token belongs to.
AGENT_ID = 9001
MAX_COMMENTS = 5000
UPDATES_PER_WINDOW = 30
UPDATE_WINDOW = 600.0
MAX_PER_PAGE = 100


class _Fail(Exception):
    def __init__(self, status: int, body: JSON, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def _not_found() -> _Fail:
    return _Fail(404, {"error": "RecordNotFound", "description": "Not found"})


def _invalid(description: str, details: JSON) -> _Fail:
    return _Fail(422, {"error": "RecordInvalid", "description": description, "details": details})


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class TicketUpdate:
    """One `PUT /api/v2/tickets/{id}` the server applied: what it changed."""

    ticket_id: int
    #: Ticket fields other than `comment` that the update set (status, assignee_id, …).
    changed: dict[str, Any] = field(default_factory=dict)
    comment_public: bool | None = None
    comment_id: int | None = None


@dataclass(frozen=True, slots=True)
class StoryTicket:
    """A sandbox ticket and the account it is about (None: it should match no account)."""

    ticket_id: int
    story: str
    account_id: str | None
    matched_by: str | None  # how the bot should find the account


def _story_tickets(world: Any) -> tuple[list[JSON], list[JSON], list[JSON], list[StoryTicket]]:
    """Tickets (with their comments under `_comments`), users and organizations."""
    now: datetime = world.now

    def ago(days: float, hours: float = 0) -> str:
        return _iso(now - timedelta(days=days, hours=hours))

    def stripe_id(account_id: str, kind: str, index: int = 0) -> str | None:
        data = world.stripe(account_id) if world.account(account_id) else None
        if data is None:
            return None
        objects = {
            "customer": [{"id": world.account(account_id).stripe_customer_id}],
            "invoice": data.invoices,
            "charge": data.charges,
        }[kind]
        return str(objects[index]["id"]) if len(objects) > index else None

    def invoice_number(account_id: str) -> str | None:
        data = world.stripe(account_id) if world.account(account_id) else None
        return str(data.invoices[0]["number"]) if data and data.invoices else None

    users: list[JSON] = [
        {
            "id": AGENT_ID,
            "name": "Billing Triage",
            "email": SANDBOX_ZENDESK_EMAIL,
            "role": "agent",
            "organization_id": None,
        },
        {
            "id": 9002,
            "name": "Sam Support",
            "email": "sam@support.example",
            "role": "agent",
            "organization_id": None,
        },
    ]
    orgs: list[JSON] = []
    tickets: list[JSON] = []
    meta: list[StoryTicket] = []

    def user(uid: int, name: str, email: str, org: int | None = None) -> int:
        users.append(
            {"id": uid, "name": name, "email": email, "role": "end-user", "organization_id": org}
        )
        return uid

    def ticket(
        tid: int,
        story: str,
        account: str | None,
        matched_by: str | None,
        *,
        subject: str,
        requester: int,
        org: int | None,
        comments: list[tuple[int, str, bool]],
        days: float,
        status: str = "open",
        fields: Mapping[int, Any] | None = None,
        tags: tuple[str, ...] = (),
    ) -> None:
        created = now - timedelta(days=days)
        rows = []
        for n, (author, body, public) in enumerate(comments):
            rows.append(
                {
                    "id": tid * 1000 + n + 1,
                    "type": "Comment",
                    "author_id": author,
                    "body": body,
                    "html_body": f"<p>{body}</p>",
                    "plain_body": body,
                    "public": public,
                    "attachments": [],
                    "audit_id": tid * 1000 + 500 + n,
                    "via": {"channel": "email" if author != 9002 else "web"},
                    "created_at": _iso(created + timedelta(hours=3 * n)),
                }
            )
        tickets.append(
            {
                "id": tid,
                "subject": subject,
                "raw_subject": subject,
                "description": comments[0][1],
                "status": status,
                "priority": "normal",
                "type": "question",
                "requester_id": requester,
                "submitter_id": requester,
                "assignee_id": 9002,
                "organization_id": org,
                "group_id": 360000000100,
                "tags": list(tags),
                "external_id": None,
                "via": {"channel": "email"},
                "custom_fields": [
                    {
                        "id": SANDBOX_ACCOUNT_FIELD,
                        "value": (fields or {}).get(SANDBOX_ACCOUNT_FIELD),
                    },
                    {"id": 360012340000, "value": "billing"},
                ],
                "created_at": _iso(created),
                "updated_at": rows[-1]["created_at"],
                "_comments": rows,
            }
        )
        meta.append(StoryTicket(tid, story, account, matched_by))

    orgs.append(
        {
            "id": 7001,
            "name": "Northwind Traders",
            "external_id": "acct_northwind",
            "domain_names": ["northwind.example"],
            "organization_fields": {},
            "tags": ["orb"],
        }
    )
    dana = user(5001, "Dana Whitfield", "dana@northwind.example", 7001)
    ticket(
        1001,
        "usage_spike",
        "acct_northwind",
        "organization",
        subject="Why did our invoice almost double?",
        requester=dana,
        org=7001,
        days=1.5,
        comments=[
            (
                dana,
                "Hi, our latest invoice is almost double the previous one. We did not change "
                "anything on our side. Can you explain?",
                True,
            ),
            (9002, "Thanks Dana, we're looking into it.", True),
            (9002, "Checking with billing; usage looks higher on two days.", False),
            (dana, "Any update? Our invoice almost doubled and finance is asking why.", True),
        ],
    )

    orgs.append(
        {
            "id": 7002,
            "name": "Globex",
            "external_id": None,
            "domain_names": ["globex.example"],
            "organization_fields": {},
            "tags": [],
        }
    )
    priya = user(5002, "Priya Raman", "priya@globex.example", 7002)
    number = invoice_number("acct_globex") or "B02734D1-0017"
    ticket(
        1002,
        "duplicate_charge",
        "acct_globex",
        "invoice number",
        subject="We were charged twice",
        requester=priya,
        org=7002,
        days=1,
        comments=[
            (
                priya,
                f"Hello, we were charged twice for invoice {number}. Both charges are on "
                "card 4242 4242 4242 4242. Please refund the second one.",
                True,
            ),
        ],
    )

    lee = user(5003, "Lee Ortiz", "lee@fabrikam.example")
    ticket(
        1003,
        "open_dispute",
        "acct_fabrikam",
        "account field",
        subject="Chargeback on our account?",
        requester=lee,
        org=None,
        days=2,
        fields={SANDBOX_ACCOUNT_FIELD: "acct_fabrikam"},
        comments=[
            (lee, "Our bank says there is a dispute on a payment to you. What happens now?", True),
        ],
    )

    contoso = user(5004, "Contoso Billing", "billing@contoso.example")
    ticket(
        1004,
        "failed_payment_dunning",
        "acct_contoso",
        "requester email",
        subject="Payment failed",
        requester=contoso,
        org=None,
        days=3,
        comments=[
            (contoso, "Our card payment failed again. Is our account going to be suspended?", True),
        ],
    )

    alex = user(5005, "Alex Morgan", "alex@unknown-startup.example")
    ticket(
        1005,
        "unknown_requester",
        None,
        None,
        subject="Question about my bill",
        requester=alex,
        org=None,
        days=0.5,
        comments=[
            (alex, "Hi, can you tell me why my bill went up this month?", True),
        ],
    )

    aperture = user(5006, "Aperture Accounts", "billing@aperture.example")
    ticket(
        1006,
        "ambiguous_email",
        None,
        None,
        subject="Invoice question",
        requester=aperture,
        org=None,
        days=4,
        comments=[
            (aperture, "Which of our accounts is this invoice for?", True),
        ],
    )

    hooli = user(5007, "Gavin B.", "gavin@hooli.example")
    hooli_cus = stripe_id("acct_hooli", "customer") or "cus_unknown000"
    ticket(
        1007,
        "expired_coupon",
        "acct_hooli",
        "Stripe customer ID",
        subject="Discount missing",
        requester=hooli,
        org=None,
        days=2,
        comments=[
            (hooli, f"Our discount seems to be gone this month. Customer {hooli_cus}.", True),
        ],
    )

    both = user(5008, "Shared Services", "ap@shared-services.example")
    first = stripe_id("acct_initech", "customer") or "cus_unknown001"
    second = stripe_id("acct_soylent", "customer") or "cus_unknown002"
    ticket(
        1008,
        "two_accounts",
        None,
        None,
        subject="Two accounts, one question",
        requester=both,
        org=None,
        days=5,
        comments=[
            (both, f"We pay for {first} and {second}; why did both bills change?", True),
        ],
    )

    initech = user(5009, "Bill Lumbergh", "bill@initech.example")
    initech_invoice = stripe_id("acct_initech", "invoice") or "in_unknown000"
    ticket(
        1009,
        "plan_change_proration",
        "acct_initech",
        "Stripe invoice ID",
        subject="Strange lines on our invoice",
        requester=initech,
        org=None,
        days=2,
        comments=[
            (initech, f"What are the two prorated lines on {initech_invoice}?", True),
        ],
    )
    return tickets, users, orgs, meta


def story_tickets(world: Any) -> list[StoryTicket]:
    """The sandbox tickets and the account each one is about (for tests and the README)."""
    return _story_tickets(world)[3]


class ZendeskSandboxServer:
    """A `WireRouter` answering Zendesk's API from the sandbox world (state per instance).

    `email`/`token`: the only credentials accepted. `write_delay`: seconds to wait *after* an
    update was applied before answering it (a timeout whose outcome is "added").
    """

    def __init__(
        self,
        world: Any,
        *,
        email: str = SANDBOX_ZENDESK_EMAIL,
        token: str = SANDBOX_ZENDESK_TOKEN,
        base_url: str = SANDBOX_ZENDESK_BASE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._auth = "Basic " + base64.b64encode(f"{email}/token:{token}".encode()).decode()
        self._agent_email = email
        self.base_url = base_url.rstrip("/")
        self._clock = clock
        tickets, users, orgs, meta = _story_tickets(world)
        self.story_tickets = meta
        self.tickets: dict[int, JSON] = {}
        self.comments: dict[int, list[JSON]] = {}
        for raw in tickets:
            self.comments[raw["id"]] = raw.pop("_comments")
            self.tickets[raw["id"]] = raw
        self.users: dict[int, JSON] = {u["id"]: u for u in users}
        self.organizations: dict[int, JSON] = {o["id"]: o for o in orgs}
        self.updates: list[TicketUpdate] = []
        self.write_delay = 0.0
        self._update_times: dict[int, list[float]] = {}
        self._seq = 0
        self._lock = asyncio.Lock()
        self._now = world.now

    # -- seeding (tests) -----------------------------------------------------------------------

    def add_ticket(
        self,
        ticket_id: int,
        *,
        subject: str,
        requester: JSON,
        comments: list[tuple[int, str, bool]],
        organization: JSON | None = None,
        custom_fields: Mapping[int, Any] | None = None,
    ) -> None:
        """Add a ticket (with its requester, organization and comments) to this server."""
        self.users[int(requester["id"])] = {
            "role": "end-user",
            "organization_id": None,
            **requester,
        }
        if organization is not None:
            self.organizations[int(organization["id"])] = {
                "external_id": None,
                "domain_names": [],
                "organization_fields": {},
                "tags": [],
                **organization,
            }
        created = self._now - timedelta(days=1)
        self.comments[ticket_id] = [
            {
                "id": ticket_id * 10_000 + n + 1,
                "type": "Comment",
                "author_id": author,
                "body": body,
                "html_body": f"<p>{body}</p>",
                "plain_body": body,
                "public": public,
                "attachments": [],
                "audit_id": ticket_id * 10_000 + 5000 + n,
                "created_at": _iso(created + timedelta(minutes=n)),
            }
            for n, (author, body, public) in enumerate(comments)
        ]
        self.tickets[ticket_id] = {
            "id": ticket_id,
            "subject": subject,
            "raw_subject": subject,
            "description": comments[0][1] if comments else "",
            "status": "open",
            "priority": None,
            "type": None,
            "requester_id": int(requester["id"]),
            "submitter_id": int(requester["id"]),
            "assignee_id": None,
            "organization_id": int(organization["id"]) if organization else None,
            "group_id": None,
            "tags": [],
            "external_id": None,
            "via": {"channel": "email"},
            "custom_fields": [{"id": k, "value": v} for k, v in (custom_fields or {}).items()],
            "created_at": _iso(created),
            "updated_at": _iso(created),
        }

    def private_notes(self, ticket_id: int) -> list[JSON]:
        """The internal notes on a ticket written by the bot's agent."""
        return [
            c
            for c in self.comments.get(ticket_id, [])
            if c["public"] is False and c["author_id"] == AGENT_ID
        ]

    def public_comments_by_agent(self, ticket_id: int) -> list[JSON]:
        """Public comments the bot's agent wrote (there must never be any)."""
        return [
            c
            for c in self.comments.get(ticket_id, [])
            if c["public"] and c["author_id"] == AGENT_ID
        ]

    # -- dispatch ------------------------------------------------------------------------------

    async def handle(self, request: WireRequest) -> WireResponse:
        """Answer one request the way Zendesk would."""
        try:
            if request.headers.get("authorization", "") != self._auth:
                raise _Fail(401, {"error": "Couldn't authenticate you"})
            path = re.sub(r"\.json$", "", request.path.rstrip("/"))
            m = re.fullmatch(r"/api/v2/tickets/(\d+)", path)
            if m and request.method == "GET":
                return self._ok({"ticket": self._ticket(int(m[1]))})
            if m and request.method == "PUT":
                return await self._update(int(m[1]), request)
            m = re.fullmatch(r"/api/v2/tickets/(\d+)/comments", path)
            if m and request.method == "GET":
                return self._ok(self._comments_page(int(m[1]), request))
            m = re.fullmatch(r"/api/v2/users/(\d+)", path)
            if m and request.method == "GET":
                return self._ok({"user": self._user(int(m[1]))})
            if path == "/api/v2/users/show_many" and request.method == "GET":
                ids = [int(i) for i in (request.q("ids") or "").split(",") if i.strip().isdigit()]
                return self._ok(
                    {"users": [self._user_json(self.users[i]) for i in ids if i in self.users]}
                )
            m = re.fullmatch(r"/api/v2/organizations/(\d+)", path)
            if m and request.method == "GET":
                org = self.organizations.get(int(m[1]))
                if org is None:
                    raise _not_found()
                return self._ok({"organization": self._org_json(org)})
            if path == "/api/v2/search" and request.method == "GET":
                return self._ok(self._search(request))
            raise _Fail(404, {"error": "InvalidEndpoint", "description": "Not found"})
        except _Fail as fail:
            return WireResponse.of_json(fail.body, status=fail.status, headers=fail.headers)

    def _ok(self, body: JSON) -> WireResponse:
        return WireResponse.of_json(
            body, headers={"x-rate-limit": "700", "x-rate-limit-remaining": "699"}
        )

    # -- reads ---------------------------------------------------------------------------------

    def _ticket(self, ticket_id: int) -> JSON:
        raw = self.tickets.get(ticket_id)
        if raw is None:
            raise _not_found()
        return {
            "url": f"{self.base_url}/api/v2/tickets/{ticket_id}.json",
            **raw,
            "fields": raw["custom_fields"],
        }

    def _user_json(self, raw: JSON) -> JSON:
        return {
            "url": f"{self.base_url}/api/v2/users/{raw['id']}.json",
            "external_id": None,
            "user_fields": {},
            "active": True,
            **raw,
        }

    def _user(self, user_id: int) -> JSON:
        raw = self.users.get(user_id)
        if raw is None:
            raise _not_found()
        return self._user_json(raw)

    def _org_json(self, raw: JSON) -> JSON:
        return {"url": f"{self.base_url}/api/v2/organizations/{raw['id']}.json", **raw}

    def _comments_page(self, ticket_id: int, request: WireRequest) -> JSON:
        if ticket_id not in self.tickets:
            raise _not_found()
        rows = self.comments[ticket_id]
        base = f"{self.base_url}/api/v2/tickets/{ticket_id}/comments.json"
        size = request.q("page[size]")
        if size is not None:
            if not size.isdigit() or not 1 <= int(size) <= MAX_PER_PAGE:
                raise _Fail(
                    400,
                    {
                        "error": "InvalidPaginationParameter",
                        "description": "page[size] must be between 1 and 100",
                    },
                )
            start = 0
            after = request.q("page[after]")
            if after:
                start = self._cursor(after)
            chunk = rows[start : start + int(size)]
            more = start + int(size) < len(rows)
            next_cursor = self._encode(start + int(size)) if more else None
            return {
                "comments": chunk,
                "meta": {
                    "has_more": more,
                    "after_cursor": next_cursor,
                    "before_cursor": self._encode(start) if start else None,
                },
                "links": {
                    "next": f"{base}?{urlencode({'page[size]': size, 'page[after]': next_cursor})}"
                    if more
                    else None,
                    "prev": None,
                },
            }
        per_page = int(request.q("per_page") or MAX_PER_PAGE)
        page = int(request.q("page") or 1)
        if not 1 <= per_page <= MAX_PER_PAGE or page < 1:
            raise _Fail(
                400,
                {
                    "error": "InvalidPaginationParameter",
                    "description": "per_page must be between 1 and 100",
                },
            )
        chunk = rows[(page - 1) * per_page : page * per_page]
        more = page * per_page < len(rows)
        return {
            "comments": chunk,
            "next_page": f"{base}?page={page + 1}&per_page={per_page}" if more else None,
            "previous_page": f"{base}?page={page - 1}&per_page={per_page}" if page > 1 else None,
            "count": len(rows),
        }

    @staticmethod
    def _encode(position: int) -> str:
        return base64.urlsafe_b64encode(json.dumps({"o": position}).encode()).decode().rstrip("=")

    @staticmethod
    def _cursor(text: str) -> int:
        try:
            padded = text + "=" * (-len(text) % 4)
            return int(json.loads(base64.urlsafe_b64decode(padded))["o"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _Fail(
                400, {"error": "InvalidPaginationParameter", "description": "Invalid cursor"}
            ) from None

    def _search(self, request: WireRequest) -> JSON:
        query = (request.q("query") or "").strip()
        if not query:
            raise _Fail(400, {"error": "InvalidQuery", "description": "query is required"})
        results = []
        terms = query.split()
        for raw in sorted(self.tickets.values(), key=lambda t: t["created_at"], reverse=True):
            if all(self._term_matches(raw, term) for term in terms):
                results.append({**self._ticket(raw["id"]), "result_type": "ticket"})
        per_page = min(MAX_PER_PAGE, int(request.q("per_page") or MAX_PER_PAGE))
        return {
            "results": results[:per_page],
            "facets": None,
            "next_page": None,
            "previous_page": None,
            "count": len(results),
        }

    def _term_matches(self, raw: JSON, term: str) -> bool:
        order = ["new", "open", "pending", "hold", "solved", "closed"]
        if term == "type:ticket":
            return True
        if term.startswith("requester:"):
            user = self.users.get(raw["requester_id"]) or {}
            return str(user.get("email", "")).lower() == term.split(":", 1)[1].lower()
        if term.startswith("status<"):
            wanted = term.split("<", 1)[1]
            return wanted in order and order.index(raw["status"]) < order.index(wanted)
        if term.startswith("status:"):
            return bool(raw["status"] == term.split(":", 1)[1])
        text = f"{raw['subject']} {raw['description']}".lower()
        return term.lower() in text

    # -- the update ----------------------------------------------------------------------------

    async def _update(self, ticket_id: int, request: WireRequest) -> WireResponse:
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            raise _Fail(
                400,
                {
                    "error": "Unprocessable Entity",
                    "description": "The request body is not valid JSON",
                },
            ) from None
        if not isinstance(body, dict) or not isinstance(body.get("ticket"), dict):
            raise _invalid(
                "Record validation errors", {"base": [{"description": "ticket is required"}]}
            )
        async with self._lock:
            raw = self.tickets.get(ticket_id)
            if raw is None:
                raise _not_found()
            now = self._clock()
            recent = [t for t in self._update_times.get(ticket_id, []) if now - t < UPDATE_WINDOW]
            if len(recent) >= UPDATES_PER_WINDOW:
                raise _Fail(
                    429,
                    {"error": "TooManyRequests", "description": "Ticket update limit reached"},
                    {"Retry-After": "60"},
                )
            changes: JSON = dict(body["ticket"])
            comment = changes.pop("comment", None)
            update = TicketUpdate(ticket_id=ticket_id)
            events: list[JSON] = []
            if comment is not None:
                if not isinstance(comment, dict):
                    raise _invalid(
                        "Record validation errors",
                        {"base": [{"description": "Comment is invalid"}]},
                    )
                text = str(comment.get("body") or comment.get("html_body") or "")
                if not text.strip():
                    raise _invalid(
                        "Record validation errors",
                        {
                            "base": [
                                {"description": "Comment: cannot be blank", "error": "BlankValue"}
                            ]
                        },
                    )
                if len(self.comments[ticket_id]) >= MAX_COMMENTS:
                    raise _invalid(
                        "Record validation errors",
                        {"base": [{"description": "Ticket has reached the comment limit"}]},
                    )
                public = comment.get("public", True) is not False
                self._seq += 1
                comment_id = ticket_id * 1000 + 900 + self._seq
                created = _iso(self._now + timedelta(seconds=self._seq))
                row = {
                    "id": comment_id,
                    "type": "Comment",
                    "author_id": AGENT_ID,
                    "body": text,
                    "html_body": f"<p>{text}</p>",
                    "plain_body": text,
                    "public": public,
                    "attachments": [],
                    "audit_id": comment_id + 1,
                    "created_at": created,
                }
                self.comments[ticket_id].append(row)
                update.comment_public = public
                update.comment_id = comment_id
                events.append(
                    {
                        "id": comment_id,
                        "type": "Comment",
                        "author_id": AGENT_ID,
                        "body": text,
                        "public": public,
                        "audit_id": comment_id + 1,
                    }
                )
            for key, value in changes.items():
                if key in ("safe_update", "updated_stamp"):
                    continue
                if raw.get(key) != value:
                    update.changed[key] = value
                    raw[key] = value
                    events.append(
                        {
                            "id": ticket_id * 1000 + 800 + self._seq,
                            "type": "Change",
                            "field_name": key,
                            "value": value,
                        }
                    )
            self._update_times[ticket_id] = [*recent, now]
            self.updates.append(update)
            raw["updated_at"] = _iso(self._now + timedelta(seconds=self._seq))
            answer = {
                "ticket": self._ticket(ticket_id),
                "audit": {
                    "id": (update.comment_id or ticket_id * 1000) + 1,
                    "ticket_id": ticket_id,
                    "author_id": AGENT_ID,
                    "created_at": raw["updated_at"],
                    "events": events,
                },
            }
        if self.write_delay:
            await asyncio.sleep(self.write_delay)
        return self._ok(answer)

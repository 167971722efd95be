"""Zendesk Support as a `TicketSource`: tickets, their comments (cursor-paginated), users,
organizations, search, and the one write the bot makes, an internal note, over Zendesk's REST API
(`/api/v2`) through the shared HTTP policy.

Auth is an API token: HTTP Basic with `{email}/token` as the user and the token as the password.
Errors map into the one exception tree with short, safe messages ("Zendesk: ticket 123 not found",
"Zendesk: authentication failed"). Reads are retried on 429 (honouring `Retry-After`), 5xx and
connection errors; the note (`PUT /api/v2/tickets/{id}.json`) is never retried, because Zendesk
would add it twice: an outcome that cannot be known raises `TicketNoteUnknown`.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx
from pydantic import SecretStr

from bot.domain.tickets import (
    NoteWritten,
    Ticket,
    TicketComment,
    TicketOrganization,
    TicketUser,
    host_of,
)
from bot.errors import (
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderNotFound,
    ProviderRateLimited,
    ProviderRequestError,
    ProviderUnavailable,
    TicketNoteUnknown,
    TicketNotFound,
)
from integrations.http import ProviderHttp, RetryPolicy

log = logging.getLogger("integrations.zendesk")

JSON = dict[str, Any]
PROVIDER = "zendesk"
#: Comments per page (Zendesk's cursor pagination allows up to 100).
PAGE_SIZE = 100
#: A ticket holds at most 5,000 comments; 60 pages of 100 is more than enough.
MAX_PAGES = 60
#: Zendesk's own limit on a comment body is far larger; ours keeps notes readable.
MAX_NOTE_CHARS = 60_000


def basic_auth(email: str, token: str) -> str:
    """The `Authorization` header value for API token auth (`{email}/token:{token}`)."""
    raw = f"{email}/token:{token}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def zendesk_error_message(response: httpx.Response) -> str:
    """A short message from Zendesk's error body (`error`, `description`), else the status."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, Mapping):
        error = body.get("error")
        description = body.get("description")
        if isinstance(error, Mapping):  # some endpoints nest {"title", "message"}
            text = error.get("message") or error.get("title")
            return str(text)[:200] if text else f"HTTP {response.status_code}"
        parts = [str(p) for p in (error, description) if isinstance(p, str) and p]
        if parts:
            return ": ".join(parts)[:200]
    return f"HTTP {response.status_code}"


def _dt(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _obj(body: Any, key: str) -> JSON:
    if not isinstance(body, dict) or not isinstance(body.get(key), dict):
        raise ProviderBadResponse(PROVIDER, f"Zendesk sent a malformed response (no {key})")
    return dict(body[key])


class ZendeskTicketSource:
    """`TicketSource` for one Zendesk instance. Create once; `aclose()` on shutdown."""

    def __init__(
        self,
        *,
        base_url: str,
        email: str,
        token: SecretStr | str,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        hosts: tuple[str, ...] = (),
        account_field: str | None = None,
    ) -> None:
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        self.base_url = base_url.rstrip("/")
        self._http = ProviderHttp(
            PROVIDER,
            base_url=self.base_url + "/api/v2",
            headers={
                "Authorization": basic_auth(email, secret),
                "Accept": "application/json",
                "User-Agent": "billing-triage",
            },
            policy=policy,
            transport=transport,
            error_parser=zendesk_error_message,
        )
        self.account_field = account_field
        own = host_of(self.base_url)
        self.hosts: tuple[str, ...] = tuple(
            dict.fromkeys([*(h.lower() for h in hosts), *([own] if own else [])])
        )

    @property
    def http(self) -> ProviderHttp:
        """The HTTP client (for call counters)."""
        return self._http

    async def aclose(self) -> None:
        """Release connections."""
        await self._http.aclose()

    def agent_url(self, ticket_id: int) -> str:
        """The ticket's page in the agent UI."""
        return f"{self.base_url}/agent/tickets/{ticket_id}"

    # -- HTTP --------------------------------------------------------------------------------

    async def _get(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        try:
            return await self._http.request("GET", path, params=params)
        except ProviderAuthError:
            raise ProviderAuthError(
                PROVIDER, "Zendesk: authentication failed (check ZENDESK_EMAIL and the API token)"
            ) from None
        except ProviderRateLimited:
            raise ProviderRateLimited(PROVIDER, "Zendesk: rate limited", status=429) from None
        except ProviderNotFound:
            raise
        except ProviderBadResponse:
            raise ProviderBadResponse(PROVIDER, "Zendesk: sent a malformed response") from None
        except ProviderUnavailable as exc:
            what = "timed out" if "timed out" in exc.message else "unavailable"
            raise ProviderUnavailable(PROVIDER, f"Zendesk: {what}", status=exc.status) from None

    # -- reads -------------------------------------------------------------------------------

    async def ticket(self, ticket_id: int) -> Ticket:
        """The ticket; `TicketNotFound` when Zendesk has none with that number."""
        try:
            body = await self._get(f"tickets/{ticket_id}.json")
        except ProviderNotFound:
            raise TicketNotFound(f"Zendesk: ticket {ticket_id} not found") from None
        return self._ticket(_obj(body, "ticket"))

    def _ticket(self, raw: JSON) -> Ticket:
        try:
            ticket_id = int(raw["id"])
        except (KeyError, TypeError, ValueError):
            raise ProviderBadResponse(PROVIDER, "Zendesk: sent a ticket without an ID") from None
        fields: dict[int, Any] = {}
        for item in raw.get("custom_fields") or raw.get("fields") or []:
            if isinstance(item, dict) and _int(item.get("id")) is not None:
                fields[int(item["id"])] = item.get("value")
        return Ticket(
            id=ticket_id,
            subject=raw.get("subject") if isinstance(raw.get("subject"), str) else None,
            description=raw.get("description") if isinstance(raw.get("description"), str) else None,
            status=str(raw.get("status") or "new"),
            requester_id=_int(raw.get("requester_id")),
            organization_id=_int(raw.get("organization_id")),
            custom_fields=fields,
            tags=tuple(str(t) for t in raw.get("tags") or []),
            created_at=_dt(raw.get("created_at")),
            updated_at=_dt(raw.get("updated_at")),
            url=self.agent_url(ticket_id),
        )

    async def comments(self, ticket_id: int) -> list[TicketComment]:
        """Every comment, oldest first, following Zendesk's cursor (`page[after]`)."""
        out: list[TicketComment] = []
        after: str | None = None
        for _ in range(MAX_PAGES):
            params = [("page[size]", str(PAGE_SIZE))]
            if after:
                params.append(("page[after]", after))
            try:
                body = await self._get(f"tickets/{ticket_id}/comments.json", params)
            except ProviderNotFound:
                raise TicketNotFound(f"Zendesk: ticket {ticket_id} not found") from None
            if not isinstance(body, dict) or not isinstance(body.get("comments"), list):
                raise ProviderBadResponse(PROVIDER, "Zendesk: sent a malformed comments page")
            for raw in body["comments"]:
                if isinstance(raw, dict) and _int(raw.get("id")) is not None:
                    out.append(
                        TicketComment(
                            id=int(raw["id"]),
                            author_id=_int(raw.get("author_id")),
                            body=str(raw.get("plain_body") or raw.get("body") or ""),
                            public=raw.get("public") is not False,
                            created_at=_dt(raw.get("created_at")),
                        )
                    )
            meta: JSON = body["meta"] if isinstance(body.get("meta"), dict) else {}
            after = meta.get("after_cursor") if meta.get("has_more") else None
            if not after:
                break
        return out

    async def user(self, user_id: int) -> TicketUser | None:
        """A user, or None when it does not exist."""
        try:
            raw = _obj(await self._get(f"users/{user_id}.json"), "user")
        except ProviderNotFound:
            return None
        return TicketUser(
            id=_int(raw.get("id")) or user_id,
            name=raw.get("name") if isinstance(raw.get("name"), str) else None,
            email=raw.get("email") if isinstance(raw.get("email"), str) else None,
            role=raw.get("role") if isinstance(raw.get("role"), str) else None,
            organization_id=_int(raw.get("organization_id")),
            external_id=str(raw["external_id"]) if raw.get("external_id") else None,
        )

    async def organization(self, organization_id: int) -> TicketOrganization | None:
        """An organization, or None when it does not exist."""
        try:
            raw = _obj(await self._get(f"organizations/{organization_id}.json"), "organization")
        except ProviderNotFound:
            return None
        fields = raw.get("organization_fields")
        return TicketOrganization(
            id=_int(raw.get("id")) or organization_id,
            name=raw.get("name") if isinstance(raw.get("name"), str) else None,
            external_id=str(raw["external_id"]) if raw.get("external_id") else None,
            fields=dict(fields) if isinstance(fields, dict) else {},
            domain_names=tuple(str(d) for d in raw.get("domain_names") or []),
        )

    async def search_tickets(self, query: str, *, limit: int = 25) -> list[Ticket]:
        """Tickets matching `query` (`type:ticket` is added), newest first, at most `limit`."""
        body = await self._get(
            "search.json",
            [
                ("query", f"type:ticket {query}".strip()),
                ("sort_by", "created_at"),
                ("sort_order", "desc"),
                ("per_page", str(min(100, max(1, limit)))),
            ],
        )
        if not isinstance(body, dict) or not isinstance(body.get("results"), list):
            raise ProviderBadResponse(PROVIDER, "Zendesk: sent malformed search results")
        found = [
            self._ticket(raw)
            for raw in body["results"]
            if isinstance(raw, dict) and raw.get("result_type", "ticket") == "ticket"
        ]
        return found[:limit]

    # -- the one write -----------------------------------------------------------------------

    async def add_internal_note(self, ticket_id: int, body: str) -> NoteWritten:
        """Add `body` as a private comment (`public: false`), nothing else. Never retried."""
        payload = {"ticket": {"comment": {"body": body[:MAX_NOTE_CHARS], "public": False}}}
        try:
            answer = await self._http.request(
                "PUT", f"tickets/{ticket_id}.json", json_body=payload, idempotent=False
            )
        except ProviderNotFound:
            raise TicketNotFound(f"Zendesk: ticket {ticket_id} not found") from None
        except ProviderAuthError:
            raise ProviderAuthError(PROVIDER, "Zendesk: authentication failed") from None
        except ProviderRateLimited:
            # 429 is answered before the update is applied: nothing was added.
            raise ProviderRateLimited(PROVIDER, "Zendesk: rate limited", status=429) from None
        except ProviderRequestError as exc:
            raise ProviderRequestError(
                PROVIDER, f"Zendesk refused the note ({exc.message})", status=exc.status
            ) from None
        except (ProviderUnavailable, ProviderBadResponse) as exc:
            # A timeout, a dropped connection, a 5xx or a garbled 200: Zendesk may have added it.
            raise TicketNoteUnknown(
                PROVIDER, "Zendesk: no answer to the note in time", status=exc.status
            ) from None
        except ProviderError:
            raise
        if not isinstance(answer, dict):
            raise TicketNoteUnknown(PROVIDER, "Zendesk: garbled answer to the note")
        audit: JSON = answer["audit"] if isinstance(answer.get("audit"), dict) else {}
        comment_id = None
        for event in audit.get("events") or []:
            if isinstance(event, dict) and event.get("type") == "Comment":
                comment_id = _int(event.get("id"))
        return NoteWritten(
            ticket_id=ticket_id, comment_id=comment_id, audit_id=_int(audit.get("id"))
        )

"""The one exception tree. `BotError` subclasses carry a stable `code` and a message that is safe
to show a user; anything else is an unknown error and is shown only as a reference id."""

from __future__ import annotations


class BotError(Exception):
    """Root of every error Billing Triage raises on purpose."""

    code = "bot_error"
    #: Exit code for `billing-triage ask` when this error answers the command.
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UserError(BotError):
    """The user asked for something we can't do as asked; the message says how to fix it."""

    code = "user_error"


class UsageError(UserError):
    """The command text does not fit the grammar (unknown subcommand, missing argument)."""

    code = "usage"
    exit_code = 2


class InvalidAmount(UserError):
    """An amount that does not parse, or is zero or negative."""

    code = "invalid_amount"


class InvalidIdentifier(UserError):
    """An ACCOUNT, payment or request identifier that is malformed."""

    code = "invalid_identifier"


class AccountNotFound(UserError):
    """No provider knows the account."""

    code = "account_not_found"


class AmbiguousAccount(UserError):
    """An email or ID that matches several customers; `candidates` names them (account IDs, or
    customer IDs where there is none)."""

    code = "ambiguous_account"

    def __init__(self, message: str, *, candidates: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


class NotImplementedYet(UserError):
    """A subcommand whose feature has not landed yet."""

    code = "coming_soon"
    exit_code = 0


class ConfigError(BotError):
    """Settings are missing or malformed; raised at start with one line per problem."""

    code = "config"
    exit_code = 2


class ProviderError(BotError):
    """A billing provider failed (after retries). `provider` names it for the user."""

    code = "provider_error"

    def __init__(self, provider: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status


class ProviderUnavailable(ProviderError):
    """Connection errors, timeouts, 5xx or 429 that outlasted the retry budget."""

    code = "provider_unavailable"


class ProviderRateLimited(ProviderUnavailable):
    """429s that outlasted the retry budget."""

    code = "provider_rate_limited"


class ProviderAuthError(ProviderError):
    """401/403: the key is wrong or lacks permission."""

    code = "provider_auth"


class ProviderNotFound(ProviderError):
    """404 from the provider for an object we asked for."""

    code = "provider_not_found"


class ProviderBadResponse(ProviderError):
    """The provider answered something we could not parse (malformed JSON, missing fields)."""

    code = "provider_bad_response"


class ProviderRequestError(ProviderError):
    """Other 4xx: the provider rejected our request."""

    code = "provider_request"


class TicketNotFound(UserError):
    """The ticketing system has no such ticket (or it was deleted)."""

    code = "ticket_not_found"


class TicketNoteUnknown(ProviderError):
    """An internal note was sent but whether it was added is unknown (timeout, dropped
    connection, 5xx): reconciled by reading the ticket's comments, never by posting again."""

    code = "ticket_note_unknown"


class LLMUnavailable(BotError):
    """The LLM could not produce a reply; `reason` is short, fixed text safe to show and log.

    Never shown as an error: the deterministic wording is used instead, with a note."""

    code = "llm_unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(f"AI wording unavailable ({reason})")
        self.reason = reason


class ProviderOutcomeUnknown(ProviderError):
    """A write whose outcome we did not see: a timeout, a connection reset after the request may
    have been sent, a 5xx (or a replayed 5xx), or the provider saying the original request with
    this key is still in flight. Never "failed": retry later with the SAME idempotency key, or
    look for the effect (`BillingWriter.find_write`)."""

    code = "provider_outcome_unknown"


class ProviderIdempotencyConflict(ProviderError):
    """The idempotency key was used before with a different body (Stripe 400
    `idempotency_error`, Orb or Metronome 409 on a different payload). A bug: the request changed
    after approval. Never work around it with a new key."""

    code = "provider_idempotency_conflict"


class RequestRefused(UserError):
    """A refund or credit request that cannot be made as asked (amount above what is left, a
    payment of another customer, a missing reason, …). `why` is a stable short code for the
    audit log; the message says what was wrong and how to fix it. Nothing was stored."""

    code = "request_refused"

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message)
        self.why = why


class AccessDenied(UserError):
    """The user is not allowed to do this (VIEWERS, REQUESTERS, FINANCE_APPROVERS)."""

    code = "access_denied"


class StoreUnavailable(BotError):
    """The database did not answer (down, restarting, unreachable). Nothing half-done is lost:
    every state change is one transaction, and the periodic jobs finish what was under way."""

    code = "store_unavailable"

    def __init__(self) -> None:
        super().__init__(
            "The database did not answer (it may be restarting). Nothing was lost: anything "
            "already approved or sent is finished automatically. Try again in a minute."
        )

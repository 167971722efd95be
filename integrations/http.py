"""The one HTTP policy for every provider: timeouts, retries (tenacity), `Retry-After`, a total
deadline per request, per-provider concurrency limits, and translation into `ProviderError`s.

Retry rules (STYLE point 9): only transient failures (connection errors, timeouts, 429, 5xx,
malformed bodies) and only for idempotent requests — reads, or writes that carry an idempotency
key. A provider hook may veto or force a retry from its own headers (`Stripe-Should-Retry`).

Writes (`write=True`: refunds and credits) must carry an idempotency key and every retry sends
the same key. When the policy gives up on a write, what the caller learns depends on whether any
attempt may have reached the provider:

- an attempt that timed out after connecting, lost its connection, got a 5xx, a 409 "still in
  flight" or an unreadable 2xx body may have been executed: `ProviderOutcomeUnknown`, never
  "failed" (the caller retries later with the same key, or looks for the effect);
- only when no attempt can have been executed (never connected: `httpx.ConnectError`,
  `ConnectTimeout`, `PoolTimeout`; or refused before execution with 429) is it
  `ProviderUnavailable` / `ProviderRateLimited`: nothing happened.

A provider's `classify` hook names write failures our error tree cannot tell from the status
alone, such as Stripe's 400 `idempotency_error` (`ProviderIdempotencyConflict`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from bot.domain.retry import parse_retry_after
from bot.errors import (
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderNotFound,
    ProviderOutcomeUnknown,
    ProviderRateLimited,
    ProviderRequestError,
    ProviderUnavailable,
)
from bot.queueing import queued

log = logging.getLogger("integrations.http")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Timeouts and retry budget for one provider."""

    connect_timeout: float = 3.0
    read_timeout: float = 8.0
    max_attempts: int = 4
    backoff_base: float = 0.25
    backoff_max: float = 4.0
    #: Server-given delays (`Retry-After`) are honoured up to this many seconds.
    max_retry_after: float = 8.0
    #: Total time for one request including every retry and wait.
    deadline: float = 15.0
    #: Requests in flight at once to this provider (per client instance): a bound on sockets;
    #: the request rate is what paces a provider (`ProviderHttp(rate=…)`).
    concurrency: int = 64


#: Hook deciding on a retry from a response: True force, False veto, None default rules.
RetryHook = Callable[[httpx.Response], bool | None]
#: Hook turning an error response body into a short, safe message (no secrets, no PII).
ErrorParser = Callable[[httpx.Response], str]
#: Hook naming the error class of a failed response when the status alone does not say it
#: (e.g. Stripe's 400 `idempotency_error`); None for the default mapping.
ErrorClassifier = Callable[[httpx.Response], type[ProviderError] | None]

#: Transport errors raised before a request could be sent: the provider never saw it.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class Transient(Exception):
    """An attempt failed in a way that may succeed on retry (`retry_after`: the server's hint).

    `sent` is False only when the provider certainly did not act on the attempt (it was never
    sent, or refused before execution); anything else counts as possibly executed."""

    def __init__(
        self,
        reason: str,
        *,
        response: httpx.Response | None = None,
        retry_after: float | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response
        self.retry_after = retry_after
        self.sent = sent
        if retry_after is None and response is not None:
            self.retry_after = retry_after_seconds(response)


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """A successful response: the decoded JSON body, the status and the headers."""

    status: int
    body: Any
    headers: httpx.Headers


_Transient = Transient  # the name used inside this module


async def call_with_policy(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    label: str,
    may_retry: bool = True,
    deadline: float | None = None,
    sleep: Callable[[float], Any] = asyncio.sleep,
    gate: Callable[[], AbstractAsyncContextManager[object]] | None = None,
) -> T:
    """Run `attempt` under the shared policy: retried while it raises `Transient` (and
    `may_retry`), with capped exponential backoff and jitter, `Retry-After` honoured up to
    `policy.max_retry_after`, at most `policy.max_attempts` tries, all within the deadline.
    Raises the last `Transient` when it gives up; any other exception at once.

    `gate` (our own pacing: a rate slot and a connection slot) is entered before each attempt
    and held during it; the time spent waiting to enter it is not counted against the deadline,
    which is the provider's time, not our queue's."""
    budget = deadline if deadline is not None else policy.deadline
    started = time.monotonic()
    waited = 0.0

    def elapsed() -> float:
        return time.monotonic() - started - waited

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        delay = min(policy.backoff_max, policy.backoff_base * (2 ** (state.attempt_number - 1)))
        delay = random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not crypto
        if isinstance(exc, Transient) and exc.retry_after is not None:
            delay = min(exc.retry_after, policy.max_retry_after)
        remaining = budget - elapsed()
        return max(0.0, min(delay, remaining))

    def should_retry(exc: BaseException) -> bool:
        if not isinstance(exc, Transient) or not may_retry:
            return False
        return budget - elapsed() > 0.05

    async def timed() -> T:
        remaining = budget - elapsed()
        if remaining <= 0:
            raise Transient("deadline exceeded", sent=False)
        try:
            async with asyncio.timeout(remaining):
                return await attempt()
        except TimeoutError as exc:
            raise Transient("timed out") from exc

    async def bounded() -> T:
        nonlocal waited
        if gate is None:
            return await timed()
        asked = time.monotonic()
        async with gate():
            waited += time.monotonic() - asked
            return await timed()

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait,
        retry=retry_if_exception(should_retry),
        sleep=sleep,
        reraise=True,
        before_sleep=lambda s: log.info(
            "retry",
            extra={"target": label, "attempt": s.attempt_number,
                   "reason": str(s.outcome.exception()) if s.outcome else ""},
        ),
    )  # fmt: skip
    return await retrying(bounded)


def _frozen(value: Any) -> Any:
    """A hashable, order-preserving form of request parameters, for coalescing identical reads."""
    if isinstance(value, Mapping):
        return tuple((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def decode_json(content: bytes) -> Any:
    """Parse a provider body: JSON numbers with fractions become `Decimal`, never float."""
    return json.loads(content, parse_float=Decimal)


def _json_number(value: Any) -> Any:
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return int(value)
        as_float = float(value)
        # Money has at most a few decimals, which a float's shortest repr keeps exactly; refuse
        # anything it would not, rather than send a different amount.
        if Decimal(repr(as_float)) != value:
            raise ValueError(f"{value} cannot be sent exactly as a JSON number")
        return as_float
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def encode_json(body: Any) -> bytes:
    """JSON bytes for a request body; `Decimal`s become exact JSON numbers."""
    return json.dumps(body, default=_json_number, separators=(",", ":")).encode()


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Seconds from the response's `Retry-After` / `retry-after-ms`, if present."""
    return parse_retry_after(response.headers)


def default_error_message(response: httpx.Response) -> str:
    """A short message from a JSON error body (`message`, `detail`, …), else the status."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping) and isinstance(err.get("message"), str):
            return str(err["message"])[:300]
        for key in ("detail", "message", "title"):
            if isinstance(body.get(key), str):
                return str(body[key])[:300]
    return f"HTTP {response.status_code}"


class RateLimiter:
    """Paces requests to one provider at `rate` per second, adapting to its 429s.

    Virtual scheduling (GCRA): each caller reserves the next slot synchronously, so callers are
    served first come first served and a burst of up to `burst` requests may go at once after
    a quiet spell. A 429 halves the rate (not below `min_rate`; once per `Retry-After`, or per
    second: callers refused together are one signal, and halving for each of them would drop
    the rate to the floor) and pauses every caller until the provider's `Retry-After` has
    passed; each success then wins back a hundredth of the configured rate, so a transient
    squeeze costs little and a persistent one settles below the provider's real limit.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        min_rate: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("a rate limit must be positive")
        self.max_rate = rate
        self.rate = rate
        self.min_rate = min(min_rate, rate)
        self.burst = burst if burst is not None else max(1.0, rate / 2)
        self._clock = clock
        self._sleep = sleep
        self._tat = 0.0  # theoretical arrival time of the next request
        self._paused_until = 0.0
        self._cool_until = 0.0  # no further halving before this
        #: 429s seen (for tests and /metrics).
        self.throttled = 0

    def reserve(self) -> float:
        """Reserve the next slot; seconds to wait before using it."""
        now = self._clock()
        interval = 1.0 / self.rate
        tat = max(self._tat, now, self._paused_until)
        allowed_at = max(tat - (self.burst - 1) * interval, self._paused_until)
        self._tat = tat + interval
        return max(0.0, allowed_at - now)

    async def acquire(self) -> None:
        """Wait for a slot."""
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)

    def throttle(self, retry_after: float | None) -> None:
        """The provider said 429: slow down, and pause everyone until `retry_after` passed."""
        self.throttled += 1
        now = self._clock()
        if now >= self._cool_until:
            self.rate = max(self.min_rate, self.rate / 2)
            self._cool_until = now + max(retry_after or 0.0, 1.0)
        pause = retry_after if retry_after is not None else 1.0 / self.rate
        self._paused_until = max(self._paused_until, now + pause)

    def succeeded(self) -> None:
        """A request went through: recover towards the configured rate."""
        if self.rate < self.max_rate:
            self.rate = min(self.max_rate, self.rate + self.max_rate / 100)


class ProviderHttp:
    """One provider's HTTP client under the shared policy. Created once, closed on shutdown."""

    def __init__(
        self,
        provider: str,
        *,
        base_url: str,
        headers: Mapping[str, str],
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_hook: RetryHook | None = None,
        error_parser: ErrorParser | None = None,
        classify: ErrorClassifier | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        rate: float | None = None,
    ) -> None:
        self.provider = provider
        #: Requests per second to this provider (None: not paced, e.g. the in-process sandbox).
        self.pacer = RateLimiter(rate) if rate else None
        #: Identical reads in flight, shared by every caller that asks meanwhile.
        self._flights: dict[tuple[Any, ...], asyncio.Task[HttpAnswer]] = {}
        self.policy = policy or RetryPolicy()
        self._retry_hook = retry_hook
        self._error_parser = error_parser or default_error_message
        self._classify = classify
        self._sleep = sleep
        self._limit = asyncio.Semaphore(self.policy.concurrency)
        p = self.policy
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=dict(headers),
            transport=transport,
            timeout=httpx.Timeout(p.read_timeout, connect=p.connect_timeout),
            follow_redirects=False,
        )
        #: Counters for /metrics: (provider, outcome) -> count.
        self.calls = 0
        self.errors = 0
        #: 429 answers seen (each retried or not) and the latest `Retry-After`, so a caller that
        #: paces itself (the anomaly scan's adaptive limiter) can slow down before failing.
        self.throttled = 0
        self.last_retry_after: float | None = None

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        form: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        idempotent: bool | None = None,
        deadline: float | None = None,
    ) -> Any:
        """Send one request under the policy and return the decoded JSON body.

        `path` is relative to the base URL (no leading slash needed). `idempotent` defaults to
        True for GET and for requests with an `idempotency_key`; POST reads (Metronome) pass True.
        Raises a `ProviderError` subclass when the request fails for good.
        """
        answer = await self.send(
            method,
            path,
            params=params,
            json_body=json_body,
            form=form,
            headers=headers,
            idempotency_key=idempotency_key,
            idempotent=idempotent,
            deadline=deadline,
        )
        return answer.body

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """A connection slot and a rate slot, waited for as queue time (never the provider's)."""
        with queued():
            await self._limit.acquire()
            try:
                if self.pacer is not None:
                    await self.pacer.acquire()
            except BaseException:
                self._limit.release()
                raise
        try:
            yield
        finally:
            self._limit.release()

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        form: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        idempotent: bool | None = None,
        deadline: float | None = None,
        write: bool = False,
    ) -> HttpAnswer:
        """Like `request`, returning the status and headers too.

        `write=True` marks a request that moves money: it must carry `idempotency_key` (every
        retry sends the same one), and when the policy gives up after an attempt that may have
        been executed it raises `ProviderOutcomeUnknown` (module docstring).

        Identical reads in flight at the same time (same method, path, parameters and body) are
        sent once and their answer shared; writes and keyed requests never are.
        """
        if write and not idempotency_key:
            raise ValueError("a write must carry an idempotency key")
        reads = (
            not write
            and idempotency_key is None
            and (method.upper() == "GET" or idempotent is True)
        )
        if not reads:
            return await self._send(
                method, path, params=params, json_body=json_body, form=form, headers=headers,
                idempotency_key=idempotency_key, idempotent=idempotent, deadline=deadline,
                write=write,
            )  # fmt: skip
        key = (method.upper(), path.lstrip("/"), _frozen(params), _frozen(json_body),
               _frozen(form), _frozen(headers))  # fmt: skip
        flight = self._flights.get(key)
        if flight is not None:
            answer = await asyncio.shield(flight)
            # Callers may keep or change what they got: followers get their own copy.
            return HttpAnswer(answer.status, copy.deepcopy(answer.body), answer.headers)
        flight = asyncio.get_running_loop().create_task(
            self._send(
                method, path, params=params, json_body=json_body, form=form, headers=headers,
                idempotent=idempotent, deadline=deadline,
            )
        )  # fmt: skip
        self._flights[key] = flight

        def landed(task: asyncio.Task[HttpAnswer]) -> None:
            if self._flights.get(key) is task:
                del self._flights[key]
            if not task.cancelled():
                task.exception()  # retrieved: a failure is raised to every waiting caller

        flight.add_done_callback(landed)
        return await asyncio.shield(flight)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        form: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        idempotent: bool | None = None,
        deadline: float | None = None,
        write: bool = False,
    ) -> HttpAnswer:
        may_retry = (
            idempotent
            if idempotent is not None
            else (method.upper() == "GET" or idempotency_key is not None)
        )
        send_headers = dict(headers or {})
        if idempotency_key is not None:
            send_headers["Idempotency-Key"] = idempotency_key
        content: bytes | None = None
        if json_body is not None:
            content = encode_json(json_body)
            send_headers["Content-Type"] = "application/json"
        elif isinstance(form, list | tuple):
            # Pairs (Stripe's bracketed keys, in order); httpx takes only a mapping as `data`.
            content = urlencode(list(form)).encode()
            send_headers["Content-Type"] = "application/x-www-form-urlencoded"
            form = None
        url = path.lstrip("/")
        #: Whether some attempt may have been executed by the provider (writes only matter).
        uncertain = False

        async def attempt() -> HttpAnswer:
            nonlocal uncertain
            try:
                try:
                    self.calls += 1
                    response = await self._client.request(
                        method,
                        url,
                        params=params,
                        content=content,
                        data=form,
                        headers=send_headers,
                    )
                except _NEVER_SENT as exc:
                    timed_out = isinstance(exc, httpx.TimeoutException)
                    raise _Transient(
                        "timed out" if timed_out else "connection failed", sent=False
                    ) from exc
                except httpx.TimeoutException as exc:
                    raise _Transient("timed out") from exc
                except httpx.TransportError as exc:
                    raise _Transient("connection failed") from exc
                return self._handle(response, may_retry=may_retry, write=write)
            except _Transient as exc:
                uncertain = uncertain or exc.sent
                raise
            except asyncio.CancelledError:
                # The deadline cancelled the attempt mid-flight: it may have been sent.
                uncertain = True
                raise

        try:
            return await call_with_policy(
                attempt,
                policy=self.policy,
                label=f"{self.provider} {url}",
                may_retry=may_retry,
                deadline=deadline,
                sleep=self._sleep,
                gate=self._slot,
            )
        except _Transient as exc:
            self.errors += 1
            if write and (uncertain or exc.sent):
                raise self._unknown(exc) from None
            raise self._give_up(exc) from None
        except ProviderError:
            self.errors += 1
            raise

    def _handle(
        self, response: httpx.Response, *, may_retry: bool, write: bool = False
    ) -> HttpAnswer:
        status = response.status_code
        if status == 429:
            self.throttled += 1
            self.last_retry_after = retry_after_seconds(response)
        if self.pacer is not None:
            if status == 429:
                self.pacer.throttle(retry_after_seconds(response))
            elif status < 500:
                self.pacer.succeeded()
        hook = self._retry_hook(response) if self._retry_hook else None
        if status < 300:
            try:
                body = decode_json(response.content) if response.content else None
                return HttpAnswer(status=status, body=body, headers=response.headers)
            except ValueError:
                if may_retry:
                    raise _Transient("malformed response", response=response) from None
                if write:
                    raise ProviderOutcomeUnknown(
                        self.provider,
                        f"{self._label()} sent an unreadable answer; the request may or may not "
                        "have been applied",
                        status=status,
                    ) from None
                raise ProviderBadResponse(
                    self.provider, f"{self._label()} sent a malformed response", status=status
                ) from None
        if hook is True or (hook is None and (status == 429 or status >= 500)):
            # A 429 is refused before anything runs; a 5xx or a 409 "in flight" may have run.
            raise _Transient(
                "rate limited" if status == 429 else f"HTTP {status}",
                response=response,
                sent=status != 429,
            )
        message = self._error_parser(response)
        # Idempotency verdicts only mean something for writes; reads keep the plain mapping.
        special = self._classify(response) if self._classify and write else None
        if special is not None:
            raise special(self.provider, message, status=status)
        if write and status == 409:
            # A conflict nobody classified (e.g. "still in flight" with retries vetoed): the
            # original request with this key may yet be applied.
            raise ProviderOutcomeUnknown(
                self.provider,
                f"{self._label()} is still handling an earlier request with this key; it may "
                "or may not be applied",
                status=status,
            )
        if status in (401, 403):
            raise ProviderAuthError(
                self.provider, f"{self._label()} rejected our credentials", status=status
            )
        if status == 404:
            raise ProviderNotFound(self.provider, message, status=status)
        if status == 429:
            raise ProviderRateLimited(
                self.provider, f"{self._label()} is rate limiting us", status=429
            )
        if status >= 500:
            if write:
                # A write the provider failed (or told us not to retry): it may have run.
                raise ProviderOutcomeUnknown(
                    self.provider,
                    f"{self._label()} failed while handling the request (HTTP {status}); "
                    "it may or may not have been applied",
                    status=status,
                )
            raise ProviderUnavailable(
                self.provider, f"{self._label()} is unavailable", status=status
            )
        raise ProviderRequestError(self.provider, message, status=status)

    def _unknown(self, exc: _Transient) -> ProviderOutcomeUnknown:
        status = exc.response.status_code if exc.response is not None else None
        what = {
            "timed out": "timed out",
            "deadline exceeded": "timed out",
            "connection failed": "dropped the connection",
            "malformed response": "sent an unreadable answer",
            "rate limited": "kept rate limiting us",
        }.get(exc.reason, f"kept failing ({exc.reason})")
        if status == 409:
            what = "kept answering that the original request is still in flight"
        return ProviderOutcomeUnknown(
            self.provider,
            f"{self._label()} {what}; the request may or may not have been applied",
            status=status,
        )

    def _give_up(self, exc: _Transient) -> ProviderError:
        status = exc.response.status_code if exc.response is not None else None
        if status == 429:
            return ProviderRateLimited(
                self.provider, f"{self._label()} is rate limiting us", status=429
            )
        if exc.reason == "malformed response":
            return ProviderBadResponse(
                self.provider, f"{self._label()} sent a malformed response", status=status
            )
        if exc.reason in ("timed out", "deadline exceeded"):
            return ProviderUnavailable(self.provider, f"{self._label()} timed out", status=status)
        return ProviderUnavailable(self.provider, f"{self._label()} is unavailable", status=status)

    def _label(self) -> str:
        return {
            "stripe": "Stripe",
            "orb": "Orb",
            "metronome": "Metronome",
            "zendesk": "Zendesk",
        }.get(self.provider, self.provider)

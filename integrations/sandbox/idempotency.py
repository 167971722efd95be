"""Idempotency keys as the providers keep them, race-free for the sandbox servers.

Each server keeps one `IdempotencyStore`. `claim` checks a key and claims it in one synchronous
step (no `await` between the check and the claim), so of N concurrent requests with one key
exactly one is told to run; the others see the key in flight, a mismatch, or the stored answer.
What a server does with each verdict is its provider's documented behaviour:

- `Mismatch` (same key, other body): Stripe 400 `idempotency_error`; Orb 409
  `resource_conflict`; Metronome 409.
- `InFlight` (the original still running): Stripe 409 `idempotency_key_in_use`; Orb 409
  `resource_conflict`; Metronome waits for it and replays its answer (`claim_or_wait`; Metronome
  does not document this case).
- `Replay`: Stripe the first answer, 500s included; Orb the first success, with
  `Idempotent-Replayed: true`; Metronome the first answer, errors included.

A claimed key must end in `finish` (store the answer) or `release` (store nothing, e.g. a request
that failed validation: a retry with the key runs again).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Final

from integrations.sandbox.wire import WireResponse


@dataclass(slots=True)
class _Slot:
    fingerprint: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    response: WireResponse | None = None  # None while the first request runs


class Claimed:
    """The caller owns the key: run the request, then `finish` or `release`."""


class Mismatch:
    """The key was first used with a different request."""


@dataclass(frozen=True, slots=True)
class InFlight:
    """The first request with this key is still running; `done` is set when it ends."""

    done: asyncio.Event


@dataclass(frozen=True, slots=True)
class Replay:
    """The stored answer of the first request with this key."""

    response: WireResponse


CLAIMED: Final = Claimed()
MISMATCH: Final = Mismatch()

Verdict = Claimed | Mismatch | InFlight | Replay


def fingerprint(method: str, path: str, params: Any) -> str:
    """A digest of what makes two requests "the same": method, path and decoded parameters
    (key order and encoding do not matter)."""
    canonical = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(f"{method} {path} {canonical}".encode()).hexdigest()


class IdempotencyStore:
    """Keys, their request fingerprints and stored answers, for one provider account."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    def claim(self, key: str, print_: str) -> Verdict:
        """Check `key` and, if unused, claim it for the caller — in one synchronous step."""
        slot = self._slots.get(key)
        if slot is None:
            self._slots[key] = _Slot(print_)
            return CLAIMED
        if slot.fingerprint != print_:
            return MISMATCH
        if slot.response is None:
            return InFlight(slot.done)
        return Replay(slot.response)

    async def claim_or_wait(self, key: str, print_: str) -> Claimed | Mismatch | Replay:
        """`claim`, waiting out a request still in flight with the key (Metronome's choice
        here): then its stored answer is replayed, or, if it stored none, the key is claimed."""
        while True:
            verdict = self.claim(key, print_)
            if not isinstance(verdict, InFlight):
                return verdict
            await verdict.done.wait()

    def finish(self, key: str, response: WireResponse) -> None:
        """Store the answer for a claimed key; later requests with it get it replayed."""
        slot = self._slots[key]
        slot.response = response
        slot.done.set()

    def release(self, key: str) -> None:
        """Give a claimed key back unanswered (nothing was done; a retry runs again)."""
        slot = self._slots.pop(key, None)
        if slot is not None:
            slot.done.set()

    def expire(self) -> int:
        """Forget every answered key, as the providers do after their retention window
        (Stripe 24 h, Orb 48 h); keys still in flight stay. Returns how many were forgotten."""
        answered = [k for k, slot in self._slots.items() if slot.response is not None]
        for key in answered:
            del self._slots[key]
        return len(answered)

    def __len__(self) -> int:
        return len(self._slots)

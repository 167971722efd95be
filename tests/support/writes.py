"""What the write tests share: a fast policy, one fresh sandbox server per test behind a loopback
fake server, and the real client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from integrations.http import RetryPolicy
from integrations.sandbox.world import SandboxWorld
from tests.support.fakeserver import FakeProviderServer, Seen
from tests.support.providers import small_world

#: Real retries, timeouts and deadlines, in tenths of a second: a hang costs three read timeouts.
WRITE_POLICY = RetryPolicy(
    connect_timeout=0.5,
    read_timeout=0.25,
    max_attempts=3,
    backoff_base=0.01,
    backoff_max=0.03,
    max_retry_after=0.05,
    deadline=3.0,
)

R = TypeVar("R")
C = TypeVar("C")


@dataclass
class WriteEnv(Generic[R, C]):
    """One test's world, sandbox router, loopback server and client."""

    world: SandboxWorld
    router: R
    server: FakeProviderServer
    client: C

    def posts(self, path: str) -> list[Seen]:
        """The POSTs the server received for `path` (a regex)."""
        return self.server.requests_to(path, "POST")

    def keys_seen(self, path: str) -> list[str | None]:
        """The `Idempotency-Key` of every POST the server received for `path`."""
        return [r.headers.get("idempotency-key") for r in self.posts(path)]


@asynccontextmanager
async def serving(router: Any) -> AsyncIterator[FakeProviderServer]:
    """`router` on 127.0.0.1."""
    async with FakeProviderServer(router) as server:
        yield server


def world() -> SandboxWorld:
    """The session's small sandbox world (shared and read-only)."""
    return small_world()

"""Who may do what: `VIEWERS` (see billing data at all), `REQUESTERS` (ask for refunds and
credits) and `FINANCE_APPROVERS` (approve or deny them), each a set of Slack user IDs and
user-group IDs (`S…`).

Group members come from a `GroupDirectory` (Slack's `usergroups.users.list`), cached for at most
`ttl` seconds (60), so someone removed from a group loses access within a minute. Concurrent
checks share one lookup per group. Any failure to read a group fails closed: the user is not a
member *right now* (nothing is cached, so the next check asks again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bot.domain.ports import GroupDirectory

log = logging.getLogger("bot.access")

#: The longest a group's member list is trusted (DESIGN §4.2: at most 60 s).
MAX_CACHE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Principals:
    """A configured set of user IDs (`U…`, `W…`) and group IDs (`S…`). `open_when_empty`:
    an empty set means everyone (VIEWERS, REQUESTERS) rather than nobody (FINANCE_APPROVERS)."""

    users: frozenset[str]
    groups: frozenset[str]
    open_when_empty: bool

    @classmethod
    def parse(cls, ids: Iterable[str], *, open_when_empty: bool) -> Principals:
        """Split IDs into users and groups."""
        items = {i.strip() for i in ids if i.strip()}
        groups = frozenset(i for i in items if i.startswith("S"))
        return cls(frozenset(items - groups), groups, open_when_empty)

    @property
    def empty(self) -> bool:
        """True when nobody is listed."""
        return not self.users and not self.groups


class AccessService:
    """Membership checks against the configured principals, with group lists cached."""

    def __init__(
        self,
        directory: GroupDirectory | None,
        *,
        viewers: Iterable[str] = (),
        requesters: Iterable[str] = (),
        approvers: Iterable[str] = (),
        ttl: float = MAX_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.viewers = Principals.parse(viewers, open_when_empty=True)
        self.requesters = Principals.parse(requesters, open_when_empty=True)
        self.approvers = Principals.parse(approvers, open_when_empty=False)
        self.ttl = min(ttl, MAX_CACHE_SECONDS)
        #: Monotonic seconds; tests move it to expire the cache.
        self.clock = clock
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: `usergroups.users.list` calls made (for tests and metrics).
        self.lookups = 0

    def forget(self, group_id: str | None = None) -> None:
        """Drop the cached members of `group_id` (all groups when None), e.g. on Slack's
        `subteam_members_changed` event."""
        if group_id is None:
            self._cache.clear()
        else:
            self._cache.pop(group_id, None)

    async def _members(self, group_id: str) -> frozenset[str] | None:
        """The group's members (cached ≤ ttl), or None when they cannot be read now."""
        cached = self._cache.get(group_id)
        if cached is not None and self.clock() - cached[0] < self.ttl:
            return cached[1]
        lock = self._locks.setdefault(group_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(group_id)
            if cached is not None and self.clock() - cached[0] < self.ttl:
                return cached[1]
            if self.directory is None:
                return None
            self.lookups += 1
            try:
                members = await self.directory.members(group_id)
            except Exception as exc:  # any failure means "not a member right now": fail closed
                log.warning(
                    "could not read a user group; refusing its members for now",
                    extra={"group": group_id, "error": type(exc).__name__},
                )
                self._cache.pop(group_id, None)
                return None
            self._cache[group_id] = (self.clock(), members)
            return members

    async def member(self, user_id: str, principals: Principals) -> bool:
        """True when `user_id` is listed directly or is in one of the listed groups (an empty,
        open set admits everyone)."""
        if principals.empty:
            return principals.open_when_empty
        if user_id in principals.users:
            return True
        for group in sorted(principals.groups):
            members = await self._members(group)
            if members is not None and user_id in members:
                return True
        return False

    async def can_view(self, user_id: str) -> bool:
        """May `user_id` see billing data at all (VIEWERS)?"""
        return await self.member(user_id, self.viewers)

    async def can_request(self, user_id: str) -> bool:
        """May `user_id` ask for refunds and credits (REQUESTERS)?"""
        return await self.member(user_id, self.requesters)

    async def can_approve(self, user_id: str) -> bool:
        """May `user_id` approve or deny requests (FINANCE_APPROVERS; nobody when unset)?"""
        return await self.member(user_id, self.approvers)

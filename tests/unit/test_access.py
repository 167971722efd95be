"""VIEWERS, REQUESTERS and FINANCE_APPROVERS checks with a fake group directory: users and
groups, the ≤ 60 s cache, one lookup for many concurrent checks, failing closed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bot.services.access import MAX_CACHE_SECONDS, AccessService


@dataclass
class FakeGroups:
    """A group directory that counts lookups and can fail or be slow."""

    groups: dict[str, set[str]] = field(default_factory=dict)
    calls: int = 0
    failing: bool = False
    delay: float = 0.0

    async def members(self, group_id: str) -> frozenset[str]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failing:
            raise RuntimeError("ratelimited")
        if group_id not in self.groups:
            raise LookupError("no_such_subteam")
        return frozenset(self.groups[group_id])


class Clock:
    """Monotonic seconds that tests move."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_empty_viewers_and_requesters_admit_everyone_but_nobody_approves() -> None:
    """Unset VIEWERS/REQUESTERS mean the whole workspace; unset FINANCE_APPROVERS means nobody."""
    access = AccessService(FakeGroups())
    assert await access.can_view("U1") and await access.can_request("U1")
    assert not await access.can_approve("U1")


async def test_users_are_listed_directly_or_through_a_group() -> None:
    """A listed user, or a member of a listed group, is in; anyone else is out."""
    groups = FakeGroups({"S1": {"U2"}})
    access = AccessService(groups, approvers=["U1", "S1"], viewers=["S1"])
    assert await access.can_approve("U1") and await access.can_approve("U2")
    assert not await access.can_approve("U3")
    assert await access.can_view("U2") and not await access.can_view("U1")


async def test_group_members_are_cached_at_most_sixty_seconds() -> None:
    """Many checks within a minute cost one lookup; a removal is seen once the cache expires,
    and a longer configured TTL is capped at 60 s."""
    groups = FakeGroups({"S1": {"U1", "U2"}})
    clock = Clock()
    access = AccessService(groups, approvers=["S1"], clock=clock, ttl=600)
    assert access.ttl == MAX_CACHE_SECONDS
    for _ in range(10):
        assert await access.can_approve("U2")
    assert groups.calls == 1
    groups.groups["S1"] = {"U1"}
    clock.now += 59
    assert await access.can_approve("U2")  # not seen yet
    clock.now += 2
    assert not await access.can_approve("U2")
    assert groups.calls == 2


async def test_concurrent_checks_share_one_lookup() -> None:
    """Twenty approvers clicking at once make one usergroups.users.list call."""
    groups = FakeGroups({"S1": {f"U{i}" for i in range(20)}}, delay=0.05)
    access = AccessService(groups, approvers=["S1"])
    results = await asyncio.gather(*(access.can_approve(f"U{i}") for i in range(20)))
    assert all(results) and groups.calls == 1


async def test_a_group_that_cannot_be_read_fails_closed_and_is_asked_again() -> None:
    """A failing lookup means "not a member right now"; nothing is cached, so the next check
    asks again and succeeds once Slack answers."""
    groups = FakeGroups({"S1": {"U1"}}, failing=True)
    access = AccessService(groups, approvers=["S1"], viewers=["S1"])
    assert not await access.can_approve("U1") and not await access.can_view("U1")
    groups.failing = False
    assert await access.can_approve("U1")
    assert groups.calls == 3


async def test_forget_drops_a_group_early() -> None:
    """`subteam_members_changed` can drop the cache before it expires."""
    groups = FakeGroups({"S1": {"U1"}})
    access = AccessService(groups, approvers=["S1"])
    assert await access.can_approve("U1")
    groups.groups["S1"] = set()
    access.forget("S1")
    assert not await access.can_approve("U1")

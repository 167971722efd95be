"""The sandbox: a seeded world of billing accounts in each provider's real wire format, served
by per-provider sandbox servers to the real provider clients when no provider key is set.

`build_world()` is the entry point; see `world.py` for its shape and `stories.py` for the planted
billing stories.
"""

from __future__ import annotations

from integrations.sandbox.stories import Story, stories_of
from integrations.sandbox.world import (
    MetronomeData,
    OrbData,
    SandboxAccount,
    SandboxWorld,
    StripeData,
    build_world,
)

__all__ = [
    "MetronomeData",
    "OrbData",
    "SandboxAccount",
    "SandboxWorld",
    "Story",
    "StripeData",
    "build_world",
    "stories_of",
]

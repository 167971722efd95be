"""The Slack edge: listeners, middleware, Block Kit views, the web routes and the one error
handler.

Each feature module has `register(app, deps)`; `register_all` wires them in order.
"""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from bot.deps import Deps
from handlers import (
    access,
    alerts,
    approvals,
    commands,
    errors,
    explain,
    mentions,
    middleware,
    report,
    zendesk,
)


def register_all(app: AsyncApp, deps: Deps) -> None:
    """Register middleware, listeners and the error handler on `app`."""
    middleware.register(app, deps)
    # The slash command's listener first: Bolt tries listeners in order, and each matcher it
    # tries costs an argument injection before the right one is found.
    commands.register(app, deps)
    access.register(app, deps)
    approvals.register(app, deps)
    explain.register(app, deps)
    alerts.register(app, deps)
    mentions.register(app, deps)
    zendesk.register(app, deps)
    report.register(app, deps)
    errors.register(app, deps)

"""`billing-triage shell` and `ask`: drive the real Bolt app locally.

Each line becomes a signed slash-command request dispatched through the same app Slack would
reach; the app's Web API calls (and `response_url` posts) are answered by `LocalSlack`, and what
the bot would post is rendered as terminal text. Buttons can be clicked (`:click N`,
`:approve`, `:deny`) and the acting user switched (`:as U123`).
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pydantic import SecretStr
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import build_app, deps_of, shutdown, startup
from bot.console.render import (
    buttons,
    describe_call,
    menu_options,
    render_message,
    render_view,
)
from bot.errors import BotError
from bot.settings import Settings
from integrations.sandbox.slack import LocalSlack, SlackCall

SHELL_CHANNEL = "C0LOCALSHELL"
#: Where `:scan` posts alerts when ONCALL_CHANNEL is not set.
SHELL_ONCALL = "C0LOCALONCALL"
DEFAULT_USER = "U0LOCALUSER"
WAIT_SECONDS = 60.0


@dataclass
class Outcome:
    """What one command printed and the exit code `ask` should use."""

    output: str
    exit_code: int


class LocalSession:
    """A local Slack workspace of one user talking to the real app."""

    def __init__(
        self,
        settings: Settings,
        *,
        user_id: str = DEFAULT_USER,
        build: Callable[..., AsyncApp] = build_app,
        **overrides: Any,
    ) -> None:
        self.user_id = user_id
        self._settings = settings
        self._build = build
        self._overrides = overrides
        self._secret = secrets.token_hex(16)
        self.slack = LocalSlack(bot_user_id="U0BILLINGBOT")
        self.app: AsyncApp | None = None
        self._counter = 0
        self._last_buttons: list[tuple[str, str, str | None, dict[str, Any]]] = []
        #: Where uploaded charts are saved (a temporary directory, made on the first chart).
        self.chart_dir: Path | None = None
        #: The modal opened or updated last (`:submit` fills and submits it).
        self._last_view: dict[str, Any] | None = None

    async def __aenter__(self) -> LocalSession:
        await self.slack.start()
        settings = self._settings.model_copy(
            update={
                "slack_bot_token": SecretStr(self.slack.token),
                "slack_signing_secret": SecretStr(self._secret),
                "oncall_channel": self._settings.oncall_channel or SHELL_ONCALL,
            }
        )
        client = AsyncWebClient(token=self.slack.token, base_url=self.slack.base_url)
        try:
            self.app = self._build(settings, slack_client=client, **self._overrides)
            await startup(self.app, background=False)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.app is not None:
            await shutdown(self.app, drain_timeout=5)
        await self.slack.stop()

    def _signed(self, body: str, content_type: str) -> dict[str, str | Sequence[str]]:
        ts = str(int(time.time()))
        signature = SignatureVerifier(self._secret).generate_signature(timestamp=ts, body=body)
        assert signature is not None
        return {
            "content-type": content_type,
            "x-slack-request-timestamp": ts,
            "x-slack-signature": signature,
        }

    async def _dispatch(self, body: str, content_type: str) -> tuple[Any, list[SlackCall]]:
        assert self.app is not None
        deps = deps_of(self.app)
        deps.observer.reset()
        start = len(self.slack.calls)
        request = AsyncBoltRequest(body=body, headers=self._signed(body, content_type))
        response = await self.app.async_dispatch(request)
        await self.settle()
        return response, list(self.slack.calls[start:])

    async def settle(self) -> None:
        """Wait for the listeners' work, then deliver what they put in the outbox (twice: a
        delivery can lead to more work, e.g. a renderer that enqueues a follow-up)."""
        assert self.app is not None
        deps = deps_of(self.app)
        for _ in range(2):
            await deps.inflight.wait_idle(WAIT_SECONDS)
            if deps.delivery is not None:
                await deps.delivery.drain(WAIT_SECONDS)

    async def command(self, text: str) -> Outcome:
        """Run `/billing TEXT` as the current user."""
        assert self.app is not None
        self._counter += 1
        key = f"cmd{self._counter}"
        form = {
            "token": "local",
            "team_id": self.slack.team_id,
            "team_domain": "local",
            "channel_id": SHELL_CHANNEL,
            "channel_name": "billing-shell",
            "user_id": self.user_id,
            "user_name": self.user_id.lower(),
            "command": deps_of(self.app).settings.billing_command,
            "text": text,
            "api_app_id": "A0LOCAL",
            "response_url": self.slack.response_url(key),
            "trigger_id": f"trigger.{self._counter}",
        }
        response, calls = await self._dispatch(urlencode(form), "application/x-www-form-urlencoded")
        return self._outcome(response, calls)

    async def scan(self) -> Outcome:
        """Run one anomaly scan that posts to the on-call channel, and show what was posted
        (charts are saved to a temporary directory)."""
        from handlers.alerts import scan_service

        assert self.app is not None
        deps = deps_of(self.app)
        deps.observer.reset()
        start = len(self.slack.calls)
        summary = await scan_service(deps, holder="shell").run(post=True)
        await self.settle()
        outcome = self._outcome(_NoAck(), list(self.slack.calls[start:]))
        state = "complete" if summary.complete else "incomplete"
        head = (
            f"Scan {state}: {summary.accounts} accounts, {summary.alerts} alerts "
            f"({summary.new_alerts} new)."
        )
        return Outcome(f"{head}\n{outcome.output}".strip(), outcome.exit_code)

    async def click(self, which: str) -> Outcome:
        """Click a button of the last output: its number, or its text (`approve`, `deny`)."""
        choice = self._find_button(which)
        if choice is None:
            names = ", ".join(f"{i + 1}: {b[0]}" for i, b in enumerate(self._last_buttons))
            return Outcome(f"No such button. Buttons: {names or 'none'}", 2)
        text, action_id, value, source = choice
        self._counter += 1
        action: dict[str, Any] = {
            "type": "button",
            "action_id": action_id,
            "block_id": source.get("block_id", "b"),
            "value": value or "",
            "text": {"type": "plain_text", "text": text},
            "action_ts": f"{time.time():.6f}",
        }
        if source.get("element"):  # a menu's option: Slack sends the option chosen
            action = {
                "type": source["element"],
                "action_id": action_id,
                "block_id": source.get("block_id", "b"),
                "selected_option": source["option"],
                "action_ts": f"{time.time():.6f}",
            }
        payload = {
            "type": "block_actions",
            "user": {
                "id": self.user_id,
                "username": self.user_id.lower(),
                "team_id": self.slack.team_id,
            },
            "team": {"id": self.slack.team_id, "domain": "local"},
            "api_app_id": "A0LOCAL",
            "token": "local",
            "trigger_id": f"trigger.{self._counter}",
            "response_url": source.get("response_url")
            or self.slack.response_url(f"act{self._counter}"),
            "container": source.get("container", {"type": "message", "is_ephemeral": True}),
            "channel": {"id": source.get("channel", SHELL_CHANNEL), "name": "billing-shell"},
            "actions": [action],
        }
        if "message" in source:
            payload["message"] = source["message"]
        body = urlencode({"payload": json.dumps(payload)})
        response, calls = await self._dispatch(body, "application/x-www-form-urlencoded")
        return self._outcome(response, calls)

    async def submit(self, values: dict[str, str]) -> Outcome:
        """Submit the modal opened last, its inputs filled from `values` (block ID or label →
        text; a select takes the value of the option whose value or text starts with it)."""
        view = self._last_view
        if view is None:
            return Outcome("No form is open.", 2)
        assert self.app is not None
        state: dict[str, Any] = {}
        for block in view.get("blocks") or []:
            if not isinstance(block, dict) or block.get("type") != "input":
                continue
            element = block.get("element") or {}
            block_id = str(block.get("block_id") or "")
            name = str((block.get("label") or {}).get("text") or "").lower()
            typed = values.get(block_id)
            if typed is None:
                typed = next((v for k, v in values.items() if name.startswith(k.lower())), None)
            action_id = str(element.get("action_id") or "input")
            if element.get("type") == "static_select":
                options = element.get("options") or []
                chosen = element.get("initial_option")
                if typed is not None:
                    chosen = next(
                        (o for o in options if str(o.get("value", "")).startswith(typed)
                         or str((o.get("text") or {}).get("text", "")).startswith(typed)),
                        None,
                    )  # fmt: skip
                state[block_id] = {action_id: {"type": "static_select", "selected_option": chosen}}
            else:
                value = typed if typed is not None else element.get("initial_value")
                state[block_id] = {action_id: {"type": "plain_text_input", "value": value}}
        self._counter += 1
        payload = {
            "type": "view_submission",
            "team": {"id": self.slack.team_id, "domain": "local"},
            "user": {"id": self.user_id, "username": self.user_id.lower(),
                     "team_id": self.slack.team_id},
            "api_app_id": "A0LOCAL",
            "token": "local",
            "trigger_id": f"trigger.{self._counter}",
            "view": {**view, "state": {"values": state}},
        }  # fmt: skip
        body = urlencode({"payload": json.dumps(payload)})
        response, calls = await self._dispatch(body, "application/x-www-form-urlencoded")
        outcome = self._outcome(response, calls)
        if response.body:
            try:
                ack = json.loads(response.body)
            except ValueError:
                ack = {}
            errors = ack.get("errors") if isinstance(ack, dict) else None
            if isinstance(errors, dict) and errors:
                lines = [f"  {k}: {v}" for k, v in errors.items()]
                return Outcome("The form was not accepted:\n" + "\n".join(lines), 1)
        return outcome

    def _find_button(self, which: str) -> tuple[str, str, str | None, dict[str, Any]] | None:
        wanted = which.strip().lower()
        if wanted.isdigit():
            index = int(wanted) - 1
            return self._last_buttons[index] if 0 <= index < len(self._last_buttons) else None
        for button in self._last_buttons:
            if button[0].lower().startswith(wanted) or button[1].lower().startswith(wanted):
                return button
        return None

    def _outcome(self, response: Any, calls: list[SlackCall]) -> Outcome:
        parts: list[str] = []
        # An answer without buttons (a refusal, a note) keeps the earlier ones clickable, so
        # `:as U2` then `:approve` works after someone else's click was refused.
        earlier, self._last_buttons = self._last_buttons, []
        if response.status == 401:
            return Outcome("The app refused the request (signature check failed).", 1)
        if response.body:
            try:
                ack = json.loads(response.body)
            except ValueError:
                ack = {"text": response.body}
            if isinstance(ack, dict) and (ack.get("text") or ack.get("blocks")):
                parts.append(render_message(text=ack.get("text"), blocks=ack.get("blocks")))
                self._collect(ack.get("blocks"), {})
        for call in calls:
            heading = describe_call(call)
            if heading is None:
                continue
            args = call.args
            if "view" in args:
                view = args["view"]
                view = json.loads(view) if isinstance(view, str) else view
                parts.append(f"── {heading}\n{render_view(view)}")
                stored = call.response.get("view")
                if isinstance(stored, dict) and stored.get("id"):
                    self._last_view = {**view, "id": stored["id"]}
                continue
            blocks = args.get("blocks")
            if isinstance(blocks, str):
                blocks = json.loads(blocks)
            if args.get("delete_original"):
                continue
            parts.append(f"── {heading}\n{render_message(text=args.get('text'), blocks=blocks)}")
            self._collect(blocks, self._source(call))
        parts.extend(self._saved_files(calls))
        if not self._last_buttons:
            self._last_buttons = earlier
        elif self._last_buttons:
            listing = "  ".join(f"[{i + 1}] {b[0]}" for i, b in enumerate(self._last_buttons))
            parts.append(f"(buttons: {listing} — type :click N)")
        return Outcome("\n".join(p.rstrip() for p in parts if p).strip(), self._exit_code())

    def _saved_files(self, calls: list[SlackCall]) -> list[str]:
        """Save the PNGs the app uploaded (alert charts) and say where."""
        lines = []
        for call in calls:
            if call.method != "files.completeUploadExternal" or not call.ok:
                continue
            for entry in call.response.get("files") or []:
                file = self.slack.files.get(str(entry.get("id")))
                if file is None or file.content is None:
                    continue
                if self.chart_dir is None:
                    self.chart_dir = Path(tempfile.mkdtemp(prefix="billing-triage-charts-"))
                path = self.chart_dir / Path(file.filename).name
                path.write_bytes(file.content)
                lines.append(f"── chart saved: {path}")
        return lines

    def _source(self, call: SlackCall) -> dict[str, Any]:
        if call.method == "response_url":
            return {"response_url": call.args.get("url"), "channel": SHELL_CHANNEL}
        ts = call.response.get("ts") or call.response.get("message_ts")
        channel = call.response.get("channel") or call.args.get("channel")
        return {
            "channel": channel,
            "container": {"type": "message", "message_ts": ts, "channel_id": channel,
                          "is_ephemeral": call.method == "chat.postEphemeral"},
            "message": {"ts": ts, "text": call.args.get("text"), "blocks": call.args.get("blocks")},
        }  # fmt: skip

    def _collect(self, blocks: Any, source: dict[str, Any]) -> None:
        if not isinstance(blocks, list):
            return
        for text, action_id, value in buttons(blocks):
            block_id = next(
                (
                    b.get("block_id", "b")
                    for b in blocks
                    if any(e.get("action_id") == action_id for e in b.get("elements", []))
                ),
                "b",
            )
            self._last_buttons.append((text, action_id, value, {**source, "block_id": block_id}))
        for menu in menu_options(blocks):
            extra = {"block_id": menu.block_id or "b", "element": menu.element,
                     "option": menu.option}  # fmt: skip
            self._last_buttons.append((menu.text, menu.action_id, menu.value, {**source, **extra}))

    def _exit_code(self) -> int:
        assert self.app is not None
        errors = deps_of(self.app).observer.errors
        if not errors:
            return 0
        error = errors[0]
        return error.exit_code if isinstance(error, BotError) else 1


class _NoAck:
    """Stands in for a Bolt response when no request was dispatched (`:scan`)."""

    status = 200
    body = ""


SHELL_HELP = """Type what you would type after /billing (e.g. `help`, `acct_northwind`).
  :scan        run an anomaly scan; alerts are posted to the on-call channel (charts saved)
  :as U123     act as another Slack user      :click N   click button N of the last answer
  :approve     click Approve                   :deny WHY  click Deny and give the reason
  :submit amount=25 reason=…   fill in and submit the form that is open
  :help        this help                       :quit      leave (or Ctrl-D)"""


async def run_shell(settings: Settings, *, user_id: str, read: Callable[[str], str] = input,
                    write: Callable[[str], None] = print) -> int:  # fmt: skip
    """The interactive loop."""
    import asyncio

    async with LocalSession(settings, user_id=user_id) as session:
        deps = deps_of(session.app) if session.app else None
        mode = "sandbox" if deps and deps.sandbox else ", ".join(deps.providers) if deps else ""
        write(f"Billing Triage shell ({mode}). You are {session.user_id}. :help for help.")
        while True:
            try:
                line = await asyncio.to_thread(read, f"{session.user_id}> ")
            except (EOFError, KeyboardInterrupt):
                write("")
                return 0
            line = line.strip()
            if not line:
                continue
            if line in (":q", ":quit", ":exit"):
                return 0
            if line == ":help":
                write(SHELL_HELP)
                continue
            if line.startswith(":as"):
                parts = line.split()
                if len(parts) == 2 and parts[1][:1] in ("U", "W"):
                    session.user_id = parts[1]
                    write(f"You are now {session.user_id}.")
                else:
                    write("Usage: :as U123")
                continue
            if line.startswith(":submit"):
                outcome = await session.submit(_form_values(line.removeprefix(":submit")))
                write(outcome.output)
                continue
            if line.startswith(":deny ") and len(line) > 6:
                outcome = await session.click("deny")
                if session._last_view is not None and outcome.exit_code == 0:
                    outcome = await session.submit({"deny_reason": line[6:].strip()})
                write(outcome.output)
                continue
            if line.startswith(":click") or line in (":approve", ":deny"):
                which = (
                    line.split(maxsplit=1)[1]
                    if line.startswith(":click") and " " in line
                    else line[1:]
                )
                outcome = await session.click(which)
            elif line == ":scan":
                outcome = await session.scan()
            elif line.startswith(":"):
                write(f"Unknown shell command {line}. :help for help.")
                continue
            else:
                outcome = await session.command(line)
            write(outcome.output)


def _form_values(text: str) -> dict[str, str]:
    """`amount=25 reason=duplicate charge` → {"amount": "25", "reason": "duplicate charge"}."""
    import re

    values: dict[str, str] = {}
    for match in re.finditer(r"(\w+)=(.*?)(?=\s+\w+=|$)", text.strip()):
        values[match.group(1)] = match.group(2).strip()
    return values


async def run_ask(settings: Settings, text: str, *, user_id: str,
                  write: Callable[[str], None] = print) -> int:  # fmt: skip
    """One command: print the answer, return the exit code."""
    async with LocalSession(settings, user_id=user_id) as session:
        outcome = await session.command(text)
        write(outcome.output)
        return outcome.exit_code

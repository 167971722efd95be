"""A local stand-in for the Slack Web API, served by aiohttp on 127.0.0.1.

`billing-triage shell` and `ask` point the Bolt app's `AsyncWebClient` at it, and the test-suite
uses it as "the fake Slack". It answers the methods Billing Triage calls the way Slack does
(response shapes after slackapi/java-slack-sdk `json-logs/samples/api/`), checks the bot token,
enforces the Block Kit limits of notes/slack.md §11 with Slack's `invalid_blocks` answer, serves
`response_url` posts (at most five per URL), records every call, and can be scripted to fail (429
with `Retry-After`, or any `ok: false` error).

Choices where Slack's behaviour is not documented (or not verified):
- a 6th post to one `response_url` gets HTTP 404 with `{"ok": false, "error": "used_url"}`;
- views that break a limit get `invalid_blocks` (real Slack answers `invalid_arguments` with the
  same `response_metadata.messages`), so one error code means "Block Kit rejected" everywhere;
- a call without any token gets `not_authed`, a wrong token `invalid_auth`, as on Slack;
- DM channel IDs are `"D" + user_id`, so a DM's channel names its user.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import quote

from aiohttp import web

__all__ = [
    "LocalSlack",
    "SlackCall",
    "SlackFile",
    "SlackMessage",
    "dm_channel_id",
    "validate_blocks",
    "validate_view",
]

log = logging.getLogger(__name__)

MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_TEXT = 40_000
MAX_RESPONSE_URL_POSTS = 5

# Arguments that slack_sdk sends as JSON strings inside form bodies.
_JSON_ARGS = ("blocks", "view", "attachments", "metadata")

_TS_BASE_MICROS = 1_700_000_000_000_000
_USER_ID_RE = re.compile(r"^[UW][A-Z0-9]+$")


@dataclass(frozen=True, slots=True)
class SlackCall:
    """One Web API call (or `response_url` post) as the stand-in received and answered it."""

    method: str
    args: dict[str, Any]
    response: dict[str, Any]
    ok: bool


@dataclass(slots=True)
class SlackMessage:
    """A message the stand-in holds; `chat.update` edits it in place."""

    channel: str
    ts: str
    text: str | None
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None = None
    user: str = ""
    bot_id: str | None = None
    edited: bool = False


@dataclass(slots=True)
class SlackFile:
    """A file uploaded through `files.getUploadURLExternal` and the upload URL; it is shared in
    a channel (and thread) once `files.completeUploadExternal` names it."""

    id: str
    filename: str
    length: int
    content: bytes | None = None
    title: str | None = None
    channel: str | None = None
    thread_ts: str | None = None
    completed: bool = False


@dataclass(slots=True)
class _Fault:
    error: str
    status: int
    retry_after: int | None
    remaining: int


class _ArgsError(Exception):
    """The request body could not be read as Slack arguments."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def dm_channel_id(user_id: str) -> str:
    """The IM channel ID the stand-in gives the bot's DM with `user_id` (reversible: drop the D)."""
    return "D" + user_id


# ---------------------------------------------------------------------------------------------
# Block Kit validation


_BLOCK_TYPES = frozenset(
    [
        "actions",
        "context",
        "divider",
        "file",
        "header",
        "image",
        "input",
        "markdown",
        "rich_text",
        "section",
        "table",
        "video",
    ]
)
_SELECT_TYPES = frozenset(
    [
        "static_select",
        "external_select",
        "users_select",
        "conversations_select",
        "channels_select",
        "multi_static_select",
        "multi_external_select",
        "multi_users_select",
        "multi_conversations_select",
        "multi_channels_select",
    ]
)
_INPUT_ELEMENT_TYPES = _SELECT_TYPES | frozenset(
    [
        "checkboxes",
        "datepicker",
        "datetimepicker",
        "email_text_input",
        "file_input",
        "number_input",
        "plain_text_input",
        "radio_buttons",
        "rich_text_input",
        "timepicker",
        "url_text_input",
    ]
)
_INTERACTIVE_TYPES = frozenset({"button", "overflow", "workflow_button"} | _INPUT_ELEMENT_TYPES)
_ELEMENT_TYPES = frozenset({"image"} | _INTERACTIVE_TYPES)


class _Checker:
    """Collects Slack-style validation messages: `<problem> [json-pointer:<where>]`."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, problem: str, pointer: str) -> None:
        self.errors.append(f"{problem} [json-pointer:{pointer}]")

    def string(self, value: Any, pointer: str, *, max_len: int, required: bool = False) -> None:
        if value is None:
            if required:
                self.fail("must provide a string", pointer)
            return
        if not isinstance(value, str):
            self.fail("must be a string", pointer)
        elif len(value) > max_len:
            self.fail(f"must be less than {max_len + 1} characters", pointer)

    def text(
        self,
        obj: Any,
        pointer: str,
        *,
        max_len: int,
        plain_only: bool = False,
        required: bool = True,
    ) -> None:
        if obj is None:
            if required:
                self.fail("must provide an object", pointer)
            return
        if not isinstance(obj, dict):
            self.fail("must provide an object", pointer)
            return
        kind = obj.get("type")
        if kind not in ("plain_text", "mrkdwn"):
            self.fail("must be a valid enum value", f"{pointer}/type")
        elif plain_only and kind != "plain_text":
            self.fail("must be plain_text", f"{pointer}/type")
        text = obj.get("text")
        if not isinstance(text, str):
            self.fail("must be a string", f"{pointer}/text")
        elif not text:
            self.fail("must be more than 0 characters", f"{pointer}/text")
        elif len(text) > max_len:
            self.fail(f"must be less than {max_len + 1} characters", f"{pointer}/text")

    def confirm(self, obj: Any, pointer: str) -> None:
        if obj is None:
            return
        if not isinstance(obj, dict):
            self.fail("must provide an object", pointer)
            return
        self.text(obj.get("title"), f"{pointer}/title", max_len=100, plain_only=True)
        self.text(obj.get("text"), f"{pointer}/text", max_len=300)
        self.text(obj.get("confirm"), f"{pointer}/confirm", max_len=30, plain_only=True)
        self.text(obj.get("deny"), f"{pointer}/deny", max_len=30, plain_only=True)

    def options(self, options: Any, pointer: str) -> None:
        if options is None:
            return
        if not isinstance(options, list):
            self.fail("must provide an array", pointer)
            return
        if len(options) > 100:
            self.fail("no more than 100 items allowed", pointer)
        for i, option in enumerate(options):
            where = f"{pointer}/{i}"
            if not isinstance(option, dict):
                self.fail("must provide an object", where)
                continue
            self.text(option.get("text"), f"{where}/text", max_len=75)
            self.string(option.get("value"), f"{where}/value", max_len=150)

    def element(self, el: Any, pointer: str, *, allowed: frozenset[str]) -> None:
        if not isinstance(el, dict):
            self.fail("must provide an object", pointer)
            return
        kind = el.get("type")
        if kind not in _ELEMENT_TYPES:
            self.fail(f"unsupported type: {kind}", f"{pointer}/type")
            return
        if kind not in allowed:
            self.fail(f"{kind} is not allowed here", f"{pointer}/type")
            return
        if kind == "image":
            self.string(el.get("alt_text"), f"{pointer}/alt_text", max_len=2000, required=True)
            if el.get("image_url") is None and el.get("slack_file") is None:
                self.fail("must provide image_url or slack_file", pointer)
            return
        self.string(el.get("action_id"), f"{pointer}/action_id", max_len=255)
        self.confirm(el.get("confirm"), f"{pointer}/confirm")
        if kind in ("button", "workflow_button"):
            self.text(el.get("text"), f"{pointer}/text", max_len=75, plain_only=True)
            self.string(el.get("value"), f"{pointer}/value", max_len=2000)
            self.string(el.get("url"), f"{pointer}/url", max_len=3000)
            self.string(el.get("accessibility_label"), f"{pointer}/accessibility_label", max_len=75)
            style = el.get("style")
            if style is not None and style not in ("primary", "danger"):
                self.fail("must be a valid enum value", f"{pointer}/style")
            return
        placeholder = el.get("placeholder")
        if placeholder is not None:
            self.text(placeholder, f"{pointer}/placeholder", max_len=150, plain_only=True)
        self.options(el.get("options"), f"{pointer}/options")
        if kind == "overflow":
            options = el.get("options")
            if not isinstance(options, list) or not 1 <= len(options) <= 5:
                self.fail("must provide between 1 and 5 options", f"{pointer}/options")
        if kind == "plain_text_input":
            max_length = el.get("max_length")
            if max_length is not None and (not isinstance(max_length, int) or max_length > 3000):
                self.fail("must be at most 3000", f"{pointer}/max_length")
            self.string(el.get("initial_value"), f"{pointer}/initial_value", max_len=3000)

    def block(self, block: Any, pointer: str) -> None:
        if not isinstance(block, dict):
            self.fail("must provide an object", pointer)
            return
        kind = block.get("type")
        if kind not in _BLOCK_TYPES:
            self.fail(f"unsupported type: {kind}", f"{pointer}/type")
            return
        self.string(block.get("block_id"), f"{pointer}/block_id", max_len=255)
        if kind == "section":
            self._section(block, pointer)
        elif kind == "header":
            self.text(block.get("text"), f"{pointer}/text", max_len=150, plain_only=True)
        elif kind == "context":
            self._list(block, "elements", pointer, max_items=10, item=self._context_element)
        elif kind == "actions":
            self._list(block, "elements", pointer, max_items=25, item=self._action_element)
        elif kind == "input":
            self.text(block.get("label"), f"{pointer}/label", max_len=2000, plain_only=True)
            self.text(
                block.get("hint"), f"{pointer}/hint", max_len=2000, plain_only=True, required=False
            )
            if block.get("element") is None:
                self.fail("must provide an object", f"{pointer}/element")
            else:
                self.element(block["element"], f"{pointer}/element", allowed=_INPUT_ELEMENT_TYPES)
        elif kind == "image":
            self.string(block.get("alt_text"), f"{pointer}/alt_text", max_len=2000, required=True)
            self.string(block.get("image_url"), f"{pointer}/image_url", max_len=3000)
            self.text(
                block.get("title"),
                f"{pointer}/title",
                max_len=2000,
                plain_only=True,
                required=False,
            )
        elif kind == "markdown":
            self.string(block.get("text"), f"{pointer}/text", max_len=12_000, required=True)

    def _section(self, block: dict[str, Any], pointer: str) -> None:
        text, fields = block.get("text"), block.get("fields")
        if text is None and fields is None:
            self.fail("must provide either text or fields", pointer)
        self.text(text, f"{pointer}/text", max_len=3000, required=False)
        if fields is not None:
            if not isinstance(fields, list) or not fields:
                self.fail("must provide a non-empty array", f"{pointer}/fields")
            else:
                if len(fields) > 10:
                    self.fail("no more than 10 items allowed", f"{pointer}/fields")
                for i, item in enumerate(fields):
                    self.text(item, f"{pointer}/fields/{i}", max_len=2000)
        accessory = block.get("accessory")
        if accessory is not None:
            self.element(accessory, f"{pointer}/accessory", allowed=_ELEMENT_TYPES)

    def _list(
        self,
        block: dict[str, Any],
        key: str,
        pointer: str,
        *,
        max_items: int,
        item: Callable[[Any, str], None],
    ) -> None:
        items = block.get(key)
        where = f"{pointer}/{key}"
        if not isinstance(items, list) or not items:
            self.fail("must provide a non-empty array", where)
            return
        if len(items) > max_items:
            self.fail(f"no more than {max_items} items allowed", where)
        for i, value in enumerate(items):
            item(value, f"{where}/{i}")

    def _context_element(self, el: Any, pointer: str) -> None:
        if isinstance(el, dict) and el.get("type") in ("plain_text", "mrkdwn"):
            self.text(el, pointer, max_len=3000)
        else:
            self.element(el, pointer, allowed=frozenset({"image"}))

    def _action_element(self, el: Any, pointer: str) -> None:
        self.element(el, pointer, allowed=_INTERACTIVE_TYPES)

    def blocks(self, blocks: Any, pointer: str, *, max_blocks: int) -> None:
        if not isinstance(blocks, list):
            self.fail("must provide an array", pointer)
            return
        if len(blocks) > max_blocks:
            self.fail(f"no more than {max_blocks} items allowed", pointer)
        seen: set[str] = set()
        for i, block in enumerate(blocks):
            self.block(block, f"{pointer}/{i}")
            block_id = block.get("block_id") if isinstance(block, dict) else None
            if isinstance(block_id, str):
                if block_id in seen:
                    self.fail(f"duplicate block_id {block_id!r}", f"{pointer}/{i}/block_id")
                seen.add(block_id)


def validate_blocks(
    blocks: Any, *, max_blocks: int = MAX_MESSAGE_BLOCKS, pointer: str = "/blocks"
) -> list[str]:
    """Slack's complaints about a message's `blocks`, one string each; empty when Slack accepts."""
    checker = _Checker()
    checker.blocks(blocks, pointer, max_blocks=max_blocks)
    return checker.errors


def validate_view(view: Any) -> list[str]:
    """Slack's complaints about a modal or Home tab view; empty when Slack accepts it."""
    checker = _Checker()
    if not isinstance(view, dict):
        checker.fail("must provide an object", "/view")
        return checker.errors
    kind = view.get("type")
    if kind not in ("modal", "home"):
        checker.fail("must be a valid enum value", "/view/type")
    blocks = view.get("blocks")
    checker.blocks(blocks, "/view/blocks", max_blocks=MAX_VIEW_BLOCKS)
    if kind == "modal":
        checker.text(view.get("title"), "/view/title", max_len=24, plain_only=True)
        checker.text(
            view.get("submit"), "/view/submit", max_len=24, plain_only=True, required=False
        )
        checker.text(view.get("close"), "/view/close", max_len=24, plain_only=True, required=False)
        has_input = isinstance(blocks, list) and any(
            isinstance(b, dict) and b.get("type") == "input" for b in blocks
        )
        if has_input and view.get("submit") is None:
            checker.fail("must provide submit when the view has input blocks", "/view/submit")
    checker.string(view.get("private_metadata"), "/view/private_metadata", max_len=3000)
    checker.string(view.get("callback_id"), "/view/callback_id", max_len=255)
    checker.string(view.get("external_id"), "/view/external_id", max_len=255)
    return checker.errors


def _invalid_blocks(errors: list[str]) -> dict[str, Any]:
    return {
        "ok": False,
        "error": "invalid_blocks",
        "errors": errors,
        "response_metadata": {"messages": [f"[ERROR] {e}" for e in errors]},
    }


def _error(code: str) -> dict[str, Any]:
    return {"ok": False, "error": code}


# ---------------------------------------------------------------------------------------------
# The server


Handler = Callable[[dict[str, Any]], dict[str, Any]]


class LocalSlack:
    """An in-process fake of the Slack Web API on 127.0.0.1 with a random port."""

    def __init__(
        self,
        *,
        bot_user_id: str = "UBOTTRIAGE",
        bot_id: str = "BBOTTRIAGE",
        team_id: str = "T0BILLING",
        token: str = "xoxb-local-0000",  # noqa: S107 - the stand-in's placeholder, not a secret
        usergroups: Mapping[str, list[str]] | None = None,
        users: Mapping[str, dict[str, Any]] | None = None,
        on_call: Callable[[SlackCall], None] | None = None,
    ) -> None:
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.team_id = team_id
        self.token = token
        #: Group ID → member user IDs; tests may change it between calls.
        self.usergroups: dict[str, list[str]] = {k: list(v) for k, v in (usergroups or {}).items()}
        #: User ID → fields merged over a generated profile. None: every U…/W… ID exists.
        self.users: dict[str, dict[str, Any]] | None = (
            None if users is None else {k: dict(v) for k, v in users.items()}
        )
        self.on_call = on_call
        self.calls: list[SlackCall] = []
        self.messages: list[SlackMessage] = []
        self.ephemerals: list[SlackMessage] = []
        self.views: dict[str, dict[str, Any]] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._response_url_posts: dict[str, int] = {}
        self._response_targets: dict[str, tuple[str, str | None]] = {}
        self._open_dms: set[str] = set()
        self._ts_counter = 0
        self._view_counter = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._handlers: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "views.open": self._views_open,
            "views.push": self._views_push,
            "views.update": self._views_update,
            "usergroups.users.list": self._usergroups_users_list,
            "users.info": self._users_info,
            "conversations.open": self._conversations_open,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
        }
        #: Uploaded files by ID (content kept, for tests and the shell's saved charts).
        self.files: dict[str, SlackFile] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 on a free port."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_post("/response/{key}", self._handle_response_url)
        app.router.add_post("/upload/{file_id}", self._handle_upload)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening; recorded calls and messages stay readable."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The port the server listens on (after `start()`)."""
        if self._port is None:
            raise RuntimeError("LocalSlack is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """The Web API base URL to give `AsyncWebClient(base_url=...)`."""
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(
        self, key: str, *, channel: str | None = None, message_ts: str | None = None
    ) -> str:
        """A `response_url` on this server; posts to it are recorded with `args["key"] == key`.

        Give the `channel` (and the `message_ts` of the message the interaction came from) to make
        posts act on stored messages: `response_type: in_channel` posts a message there,
        `replace_original: true` edits the original and `delete_original: true` deletes it.
        """
        if channel is not None:
            self._response_targets[key] = (channel, message_ts)
        return f"http://127.0.0.1:{self.port}/response/{quote(key, safe='')}"

    # -- inspection and scripting ------------------------------------------------------------

    def calls_to(self, method: str) -> list[SlackCall]:
        """The recorded calls of one method (`"response_url"` for response_url posts), in order."""
        return [c for c in self.calls if c.method == method]

    def responses_to(self, key: str) -> list[SlackCall]:
        """The recorded posts to `response_url(key)`, in order."""
        return [c for c in self.calls_to("response_url") if c.args.get("key") == key]

    def find_message(self, channel: str, ts: str) -> SlackMessage | None:
        """The stored (non-ephemeral) message at `channel`/`ts`, if any."""
        for message in self.messages:
            if message.channel == channel and message.ts == ts:
                return message
        return None

    def seed_message(
        self, *, channel: str, text: str, user: str, thread_ts: str | None = None
    ) -> SlackMessage:
        """Store a message posted by someone else (e.g. a user), to test what the bot may edit."""
        message = SlackMessage(
            channel=channel,
            ts=self._next_ts(),
            text=text,
            blocks=None,
            thread_ts=thread_ts,
            user=user,
        )
        self.messages.append(message)
        return message

    def clear_calls(self) -> None:
        """Forget the recorded calls (messages and views stay)."""
        self.calls.clear()

    async def wait_for(
        self,
        method: str,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 - one deadline per wait reads best in tests
    ) -> list[SlackCall]:
        """Wait until at least `count` calls of `method` are recorded; return all of them."""

        def enough() -> bool:
            return len(self.calls_to(method)) >= count

        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(enough)
        except TimeoutError:
            seen = [c.method for c in self.calls]
            raise TimeoutError(
                f"expected {count} {method} call(s) within {timeout}s, "
                f"got {len(self.calls_to(method))}; calls so far: {seen}"
            ) from None
        return self.calls_to(method)

    def fail_next(
        self,
        method: str,
        *,
        error: str = "ratelimited",
        status: int | None = None,
        retry_after: int | None = 1,
        times: int = 1,
    ) -> None:
        """Make the next `times` calls of `method` fail with `error`.

        `status` defaults to 429 for `ratelimited` (with `Retry-After: retry_after` unless None) and
        to 200 for any other error, which is how Slack reports `ok: false` errors.
        """
        code = status if status is not None else (429 if error == "ratelimited" else 200)
        self._faults.setdefault(method, []).append(
            _Fault(error=error, status=code, retry_after=retry_after, remaining=times)
        )

    # -- HTTP --------------------------------------------------------------------------------

    async def _handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        try:
            args = await _read_args(request)
        except _ArgsError as exc:
            return await self._answer(method, {}, _error(exc.error))
        given = _token(request, args)
        if given is None:
            return await self._answer(method, args, _error("not_authed"))
        if given != self.token:
            return await self._answer(method, args, _error("invalid_auth"))
        fault = self._take_fault(method)
        if fault is not None:
            return await self._answer_fault(method, args, fault)
        handler = self._handlers.get(method)
        try:
            response = handler(args) if handler is not None else {"ok": True}
        except Exception:
            # Arguments of a shape no handler expected: answer like Slack's own failure, recorded,
            # rather than a bare aiohttp 500 that no test could see.
            log.exception("LocalSlack failed to answer %s", method)
            return await self._answer(method, args, _error("internal_error"), status=500)
        return await self._answer(method, args, response)

    async def _handle_response_url(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        try:
            raw = await request.text()
            payload = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            payload = None
        if not isinstance(payload, dict):
            return await self._answer(
                "response_url", {"key": key}, _error("invalid_payload"), status=400
            )
        args = {"key": key, **payload}
        fault = self._take_fault("response_url")
        if fault is not None:
            return await self._answer_fault("response_url", args, fault)
        used = self._response_url_posts.get(key, 0)
        if used >= MAX_RESPONSE_URL_POSTS:
            return await self._answer("response_url", args, _error("used_url"), status=404)
        self._response_url_posts[key] = used + 1
        problem = self._check_message(payload, require_content=not payload.get("delete_original"))
        if problem is not None:
            return await self._answer("response_url", args, problem, status=400)
        self._apply_response(key, payload)
        return await self._answer("response_url", args, {"ok": True})

    def _apply_response(self, key: str, payload: dict[str, Any]) -> None:
        """Act on stored messages for a response_url tied to a channel (see `response_url`)."""
        target = self._response_targets.get(key)
        if target is None:
            return
        channel, message_ts = target
        original = self.find_message(channel, message_ts) if message_ts else None
        # Only explicit flags act on the original: Slack's defaults differ by interaction type.
        if payload.get("delete_original") is True:
            if original is not None:
                self.messages.remove(original)
        elif payload.get("replace_original") is True:
            if original is not None:
                original.text = payload.get("text", original.text)
                original.blocks = payload.get("blocks", original.blocks)
                original.edited = True
        elif payload.get("response_type") == "in_channel":
            thread_ts = payload.get("thread_ts")
            self.messages.append(
                SlackMessage(
                    channel=channel,
                    ts=self._next_ts(),
                    text=payload.get("text"),
                    blocks=payload.get("blocks"),
                    thread_ts=str(thread_ts) if thread_ts else None,
                    user=self.bot_user_id,
                    bot_id=self.bot_id,
                )
            )

    async def _handle_upload(self, request: web.Request) -> web.Response:
        """The upload URL: the file's bytes, raw or as a multipart `file` field (slack_sdk sends
        multipart). Slack answers `OK - <length>` as plain text."""
        file = self.files.get(request.match_info["file_id"])
        if file is None or file.completed:
            return web.Response(status=404, text="Not Found")
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            field = form.get("file") or next(iter(form.values()), None)
            handle = getattr(field, "file", None)
            content = handle.read() if handle is not None else str(field or "").encode()
        else:
            content = await request.read()
        if len(content) != file.length:
            # Slack refuses bytes that do not match the announced length.
            return web.Response(status=400, text="length mismatch")
        file.content = content
        self.calls.append(
            SlackCall(method="upload", args={"file_id": file.id, "bytes": len(content)},
                      response={"ok": True}, ok=True)
        )  # fmt: skip
        return web.Response(status=200, text=f"OK - {len(content)}")

    def _take_fault(self, method: str) -> _Fault | None:
        queue = self._faults.get(method)
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.pop(0)
        return fault

    async def _answer_fault(self, method: str, args: dict[str, Any], fault: _Fault) -> web.Response:
        headers: dict[str, str] = {}
        if fault.status == 429 and fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        return await self._answer(
            method, args, _error(fault.error), status=fault.status, headers=headers
        )

    async def _answer(
        self,
        method: str,
        args: dict[str, Any],
        response: dict[str, Any],
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        call = SlackCall(
            method=method,
            args=args,
            response=response,
            ok=bool(response.get("ok")) and status == 200,
        )
        self.calls.append(call)
        if self.on_call is not None:
            try:
                self.on_call(call)
            except Exception:
                # A faulty observer (e.g. the shell's printer) must not turn into a Slack error.
                log.exception("LocalSlack on_call hook failed")
        async with self._changed:
            self._changed.notify_all()
        return web.json_response(response, status=status, headers=headers)

    # -- helpers -----------------------------------------------------------------------------

    def _next_ts(self) -> str:
        self._ts_counter += 1
        micros = _TS_BASE_MICROS + self._ts_counter * 100
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _channel_for(self, channel: str) -> str:
        # Posting to a user ID lands in the bot's DM with that user, and Slack answers the D… ID.
        return dm_channel_id(channel) if _USER_ID_RE.match(channel) else channel

    def _check_message(
        self, args: Mapping[str, Any], *, require_content: bool = True
    ) -> dict[str, Any] | None:
        text, blocks = args.get("text"), args.get("blocks")
        if blocks is not None:
            if not isinstance(blocks, list):
                return _error("invalid_blocks_format")
            errors = validate_blocks(blocks)
            if errors:
                return _invalid_blocks(errors)
        if isinstance(text, str) and len(text) > MAX_TEXT:
            return _error("msg_too_long")
        has_content = bool(text) or bool(blocks) or bool(args.get("attachments"))
        if require_content and not has_content:
            return _error("no_text")
        return None

    def _message_json(self, message: SlackMessage) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "message",
            "user": message.user,
            "text": message.text or "",
            "ts": message.ts,
            "team": self.team_id,
        }
        if message.bot_id is not None:
            body["bot_id"] = message.bot_id
            body["app_id"] = "A0LOCALAPP"
        if message.blocks is not None:
            body["blocks"] = message.blocks
        if message.thread_ts is not None:
            body["thread_ts"] = message.thread_ts
        return body

    # -- methods -----------------------------------------------------------------------------

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://billing-local.slack.com/",
            "team": "Billing (local)",
            "user": "billing_triage",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if not channel or not isinstance(channel, str):
            return _error("channel_not_found")
        problem = self._check_message(args)
        if problem is not None:
            return problem
        thread_ts = args.get("thread_ts") or None
        message = SlackMessage(
            channel=self._channel_for(channel),
            ts=self._next_ts(),
            text=args.get("text"),
            blocks=args.get("blocks"),
            thread_ts=str(thread_ts) if thread_ts is not None else None,
            user=self.bot_user_id,
            bot_id=self.bot_id,
        )
        self.messages.append(message)
        return {
            "ok": True,
            "channel": message.channel,
            "ts": message.ts,
            "message": self._message_json(message),
        }

    def _chat_post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if not channel or not isinstance(channel, str):
            return _error("channel_not_found")
        user = args.get("user")
        if not user or not isinstance(user, str):
            return _error("user_not_found")
        problem = self._check_message(args)
        if problem is not None:
            return problem
        thread_ts = args.get("thread_ts") or None
        message = SlackMessage(
            channel=channel,
            ts=self._next_ts(),
            text=args.get("text"),
            blocks=args.get("blocks"),
            thread_ts=str(thread_ts) if thread_ts is not None else None,
            user=user,
            bot_id=self.bot_id,
        )
        self.ephemerals.append(message)
        return {"ok": True, "message_ts": message.ts}

    def _own_message(self, args: dict[str, Any], refusal: str) -> SlackMessage | dict[str, Any]:
        """The bot's stored message that `args` (channel, ts) points at, or Slack's error."""
        channel, ts = args.get("channel"), args.get("ts")
        if not channel or not isinstance(channel, str):
            return _error("channel_not_found")
        message = self.find_message(self._channel_for(channel), str(ts)) if ts else None
        if message is None:
            return _error("message_not_found")
        if message.user != self.bot_user_id:
            return _error(refusal)
        return message

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._own_message(args, "cant_update_message")
        if isinstance(message, dict):
            return message
        if args.get("text") is None and args.get("blocks") is None:
            return _error("no_text")
        problem = self._check_message(args, require_content=False)
        if problem is not None:
            return problem
        # As on Slack, a field that is not sent keeps its old value; `blocks=[]` removes blocks.
        if args.get("text") is not None:
            message.text = args["text"]
        if args.get("blocks") is not None:
            message.blocks = args["blocks"]
        message.edited = True
        return {
            "ok": True,
            "channel": message.channel,
            "ts": message.ts,
            "text": message.text or "",
            "message": self._message_json(message),
        }

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._own_message(args, "cant_delete_message")
        if isinstance(message, dict):
            return message
        self.messages.remove(message)
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _store_view(self, view: dict[str, Any], *, previous: str | None = None) -> dict[str, Any]:
        self._view_counter += 1
        view_id = f"V0LOCAL{self._view_counter:04d}"
        stored = self._view_json(view_id, view, root=previous or view_id, previous=previous)
        self.views[view_id] = stored
        return stored

    def _view_json(
        self, view_id: str, view: dict[str, Any], *, root: str, previous: str | None
    ) -> dict[str, Any]:
        return {
            "id": view_id,
            "team_id": self.team_id,
            "type": view.get("type", "modal"),
            "title": view.get("title"),
            "submit": view.get("submit"),
            "close": view.get("close"),
            "blocks": view.get("blocks", []),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "external_id": view.get("external_id", ""),
            "state": {"values": {}},
            "hash": f"1700000000.{view_id}",
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "root_view_id": root,
            "previous_view_id": previous,
            "app_id": "A0LOCALAPP",
            "bot_id": self.bot_id,
        }

    def _view_problem(self, args: dict[str, Any]) -> dict[str, Any] | None:
        view = args.get("view")
        if not isinstance(view, dict):
            return _error("invalid_arguments")
        errors = validate_view(view)
        return _invalid_blocks(errors) if errors else None

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("trigger_id") and not args.get("interactivity_pointer"):
            return _error("invalid_trigger_id")
        problem = self._view_problem(args)
        if problem is not None:
            return problem
        return {"ok": True, "view": self._store_view(args["view"])}

    def _views_push(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("trigger_id") and not args.get("interactivity_pointer"):
            return _error("invalid_trigger_id")
        problem = self._view_problem(args)
        if problem is not None:
            return problem
        return {"ok": True, "view": self._store_view(args["view"])}

    def _views_update(self, args: dict[str, Any]) -> dict[str, Any]:
        problem = self._view_problem(args)
        if problem is not None:
            return problem
        view_id, external_id = args.get("view_id"), args.get("external_id")
        current: dict[str, Any] | None = None
        if view_id:
            current = self.views.get(str(view_id))
        elif external_id:
            current = next(
                (v for v in self.views.values() if v.get("external_id") == external_id), None
            )
        else:
            return _error("invalid_arguments")
        if current is None:
            return _error("not_found")
        updated = self._view_json(
            current["id"],
            args["view"],
            root=current["root_view_id"],
            previous=current["previous_view_id"],
        )
        self.views[current["id"]] = updated
        return {"ok": True, "view": updated}

    def _usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        group = args.get("usergroup")
        if not group or group not in self.usergroups:
            return _error("no_such_subteam")
        return {"ok": True, "users": list(self.usergroups[group])}

    def _user_json(self, user_id: str) -> dict[str, Any] | None:
        is_bot = user_id == self.bot_user_id
        if not is_bot:
            if self.users is None:
                if not _USER_ID_RE.match(user_id):
                    return None
            elif user_id not in self.users:
                return None
        name = "billing_triage" if is_bot else user_id.lower()
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "deleted": False,
            "real_name": name,
            "tz": "Etc/UTC",
            "tz_label": "Coordinated Universal Time",
            "tz_offset": 0,
            "is_admin": False,
            "is_owner": False,
            "is_primary_owner": False,
            "is_restricted": False,
            "is_ultra_restricted": False,
            "is_bot": is_bot,
            "is_app_user": False,
            "updated": 1_700_000_000,
            "profile": {"real_name": name, "display_name": name, "team": self.team_id},
        }
        overrides = (self.users or {}).get(user_id, {})
        profile = {**user["profile"], **overrides.get("profile", {})}
        user.update(overrides)
        user["profile"] = profile
        return user

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self._user_json(str(args.get("user") or ""))
        if user is None:
            return _error("user_not_found")
        return {"ok": True, "user": user}

    def _files_get_upload_url(self, args: dict[str, Any]) -> dict[str, Any]:
        """`files.getUploadURLExternal`: `filename` and `length` (bytes) are required."""
        filename = args.get("filename")
        try:
            length = int(str(args.get("length")))
        except ValueError:
            return _error("invalid_arguments")
        if not filename or length <= 0:
            return _error("invalid_arguments")
        file_id = f"F{len(self.files) + 1:08d}"
        self.files[file_id] = SlackFile(id=file_id, filename=str(filename), length=length)
        return {
            "ok": True,
            "upload_url": f"http://127.0.0.1:{self.port}/upload/{file_id}",
            "file_id": file_id,
        }

    def _files_complete_upload(self, args: dict[str, Any]) -> dict[str, Any]:
        """`files.completeUploadExternal`: `files` (JSON `[{id, title?}]`) whose bytes were
        uploaded; shared to `channel_id` (and `thread_ts`) when given."""
        raw = args.get("files")
        try:
            entries = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            return _error("invalid_arguments")
        if not isinstance(entries, list) or not entries:
            return _error("invalid_arguments")
        done = []
        for entry in entries:
            file = self.files.get(str((entry or {}).get("id")))
            if file is None:
                return _error("file_not_found")
            if file.content is None:
                return _error("file_upload_not_complete")  # the bytes never reached the URL
            done.append((file, entry))
        channel = args.get("channel_id") or args.get("channels")
        thread_ts = args.get("thread_ts") or None
        if thread_ts and not channel:
            return _error("invalid_arguments")
        out = []
        for file, entry in done:
            file.title = str(entry.get("title") or file.filename)
            file.channel = str(channel) if channel else None
            file.thread_ts = str(thread_ts) if thread_ts else None
            file.completed = True
            out.append({"id": file.id, "title": file.title, "name": file.filename,
                        "size": file.length})  # fmt: skip
        return {"ok": True, "files": out}

    def _conversations_open(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if channel:
            return {"ok": True, "no_op": True, "already_open": True, "channel": {"id": channel}}
        users = args.get("users")
        if isinstance(users, str):
            users = [u.strip() for u in users.split(",") if u.strip()]
        if not users or not isinstance(users, list):
            return _error("users_list_not_supplied")
        if len(users) > 8:
            return _error("too_many_users")
        if any(self._user_json(str(u)) is None for u in users):
            return _error("user_not_found")
        if len(users) == 1:
            channel_id = dm_channel_id(str(users[0]))
        else:
            channel_id = "G" + "".join(sorted(str(u) for u in users))[:20]
        already = channel_id in self._open_dms
        self._open_dms.add(channel_id)
        body: dict[str, Any] = {"ok": True, "channel": {"id": channel_id}}
        if already:
            body["no_op"] = True
            body["already_open"] = True
        return body


async def _read_args(request: web.Request) -> dict[str, Any]:
    """Query string, then form or JSON body, merged; JSON-string arguments decoded."""
    args: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        if request.content_type == "application/json":
            raw = await request.text()
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise _ArgsError("invalid_json") from None
            if not isinstance(body, dict):
                raise _ArgsError("invalid_json")
            args.update(body)
        else:
            form = await request.post()
            for key, item in form.items():
                if isinstance(item, str):
                    args[key] = item
    for key in _JSON_ARGS:
        value = args.get(key)
        if isinstance(value, str):
            try:
                args[key] = json.loads(value)
            except ValueError:
                raise _ArgsError(
                    "invalid_blocks_format" if key == "blocks" else "invalid_arguments"
                ) from None
    return args


def _token(request: web.Request, args: dict[str, Any]) -> str | None:
    """The token the caller sent (and removed from `args` so it is never recorded)."""
    in_args = args.pop("token", None)
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header.removeprefix("Bearer ").strip()
    return in_args if isinstance(in_args, str) and in_args else None

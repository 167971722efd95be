"""Block Kit as readable terminal text, for `billing-triage shell` and `ask`.

Deterministic and plain: no wrapping, no ANSI escapes unless `color=True`. Slack's `mrkdwn` markup
is made readable (`<url|label>` → `label (url)`, `<@U1>` → `@U1`, `&amp;` → `&`, …); buttons are
shown as `[Approve] [Deny]` and listed by `buttons()` so the shell can click them; the options of
overflow and select menus (a digest's per-alert actions) are shown as `[⋯ Acknowledge | …]` and
listed by `menu_options()`, so the shell can choose them too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from integrations.sandbox.slack import SlackCall

__all__ = [
    "ButtonRef",
    "MenuOption",
    "button_refs",
    "buttons",
    "describe_call",
    "menu_options",
    "mrkdwn_to_text",
    "render_call",
    "render_message",
    "render_view",
]

RULE = "-" * 40

_BOLD = "\x1b[1m"
_BOLD_UNDERLINE = "\x1b[1;4m"
_DIM = "\x1b[2m"
_RESET = "\x1b[0m"

# A Slack markup token: `<…>` with no nested angle brackets (real ones arrive as &lt; &gt;).
_TOKEN_RE = re.compile(r"<([^<>]*)>")
_BOLD_RE = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")


@dataclass(frozen=True, slots=True)
class ButtonRef:
    """A clickable button found in blocks, with what a `block_actions` payload needs."""

    text: str
    action_id: str
    value: str | None
    block_id: str | None
    url: str | None = None
    style: str | None = None


def _unescape(text: str) -> str:
    # Only these three are escaped by Slack; `&amp;` last so `&amp;lt;` stays `&lt;`.
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _token_text(inner: str) -> str:
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        return "@" + (label or target[1:])
    if target.startswith("#"):
        return "#" + (label or target[1:])
    if target.startswith("!"):
        command = target[1:]
        if command.startswith("date^"):
            return label or command
        if command.startswith("subteam^"):
            handle = label or command.removeprefix("subteam^")
            return handle if handle.startswith("@") else "@" + handle
        return label or "@" + command
    if target.startswith("mailto:"):
        return label or target.removeprefix("mailto:")
    if not label or label == target:
        return target
    return f"{label} ({target})"


def mrkdwn_to_text(text: str, *, color: bool = False) -> str:
    """Slack `mrkdwn` made readable; `*bold*` is kept, or rendered bold when `color` is on."""
    parts: list[str] = []
    last = 0
    # Tokenise first, unescape after, so an escaped `&lt;` is never taken for a token start.
    for match in _TOKEN_RE.finditer(text):
        parts.append(_unescape(text[last : match.start()]))
        parts.append(_unescape(_token_text(match.group(1))))
        last = match.end()
    parts.append(_unescape(text[last:]))
    out = _EMOJI_RE.sub(lambda m: EMOJI.get(m.group(1), m.group(0)), "".join(parts))
    if color:
        out = _BOLD_RE.sub(lambda m: f"{_BOLD}{m.group(1)}{_RESET}", out)
    return out


#: The shortcodes the bot uses, shown as characters a terminal can print.
EMOJI = {
    "warning": "⚠", "x": "✗", "construction": "🚧", "hourglass_flowing_sand": "⏳",
    "large_green_circle": "●", "large_blue_circle": "●", "red_circle": "●", "white_circle": "○",
    "rotating_light": "🚨", "white_check_mark": "✓", "robot_face": "🤖", "memo": "📝",
    "lock": "🔒", "mag": "🔍", "moneybag": "💰", "information_source": "ℹ",
    "battery": "🔋", "link": "🔗",
    "inbox_tray": "📥", "ballot_box_with_check": "☑", "no_entry": "⛔", "hourglass": "⌛",
}  # fmt: skip
_EMOJI_RE = re.compile(r":([a-z0-9_+\-]+):")


def _text_of(obj: Any, *, color: bool = False) -> str:
    """A text object (plain_text or mrkdwn) as readable text; '' for anything else."""
    if not isinstance(obj, dict):
        return ""
    text = obj.get("text")
    if not isinstance(text, str):
        return ""
    if obj.get("type") == "mrkdwn":
        return mrkdwn_to_text(text, color=color)
    return text


def _paint(text: str, code: str, *, color: bool) -> str:
    return f"{code}{text}{_RESET}" if color and text else text


def _title(text: str, *, color: bool) -> list[str]:
    if color:
        return [_paint(text, _BOLD_UNDERLINE, color=True)]
    return [text, "=" * max(len(text), 3)]


def _field_text(field: Any, *, color: bool) -> str:
    # Fields are usually "*Label*\nvalue": show them as "Label: value" on one line.
    raw = field.get("text") if isinstance(field, dict) else None
    if not isinstance(raw, str):
        return ""
    label, newline, value = raw.partition("\n")
    if newline:
        bold = re.fullmatch(r"\*([^*\n]+)\*", label.strip())
        name = bold.group(1) if bold else label.strip()
        if field.get("type") == "mrkdwn":
            name = mrkdwn_to_text(name)
            value = mrkdwn_to_text(value, color=color)
        name = _paint(name, _BOLD, color=color)
        return f"{name}: {' '.join(value.split())}"
    return _text_of(field, color=color)


def _visible_len(text: str) -> int:
    return len(re.sub(r"\x1b\[[0-9;]*m", "", text))


def _fields(fields: list[Any], *, color: bool) -> list[str]:
    cells = [_field_text(f, color=color) for f in fields]
    left = cells[0::2]
    width = max((_visible_len(c) for c in left), default=0) + 4
    lines = []
    for i in range(0, len(cells), 2):
        first = cells[i]
        if i + 1 < len(cells):
            pad = " " * (width - _visible_len(first))
            lines.append(f"{first}{pad}{cells[i + 1]}")
        else:
            lines.append(first)
    return lines


def _element_text(el: Any, *, color: bool) -> str:
    """An interactive element as one bracketed label."""
    if not isinstance(el, dict):
        return ""
    kind = el.get("type")
    if kind in ("button", "workflow_button"):
        label = _text_of(el.get("text"))
        return _paint(f"[{label}]", _BOLD, color=color and el.get("style") == "primary")
    if kind == "overflow":
        options = [_text_of(o.get("text")) for o in el.get("options") or [] if isinstance(o, dict)]
        return f"[⋯ {' | '.join(options)}]" if options else "[…]"
    if kind == "image":
        return f"[image: {el.get('alt_text', '')}]"
    placeholder = _text_of(el.get("placeholder"))
    initial = el.get("initial_value") or el.get("initial_date") or el.get("initial_time")
    shown = initial or placeholder or el.get("action_id") or kind
    return f"[{shown} ▾]" if kind and "select" in str(kind) else f"[{shown}]"


def _rich_text(elements: Any) -> str:
    """The plain text of a rich_text block (sections, lists, quotes, preformatted)."""
    if not isinstance(elements, list):
        return ""
    out: list[str] = []
    for el in elements:
        if not isinstance(el, dict):
            continue
        kind = el.get("type")
        if kind == "text":
            out.append(str(el.get("text", "")))
        elif kind == "link":
            url, label = str(el.get("url", "")), el.get("text")
            out.append(f"{label} ({url})" if label and label != url else url)
        elif kind == "user":
            out.append("@" + str(el.get("user_id", "")))
        elif kind == "channel":
            out.append("#" + str(el.get("channel_id", "")))
        elif kind == "usergroup":
            out.append("@" + str(el.get("usergroup_id", "")))
        elif kind == "emoji":
            out.append(f":{el.get('name', '')}:")
        elif kind == "rich_text_list":
            items = [_rich_text(item.get("elements")) for item in el.get("elements", [])]
            out.append("\n".join(f"• {item}" for item in items) + "\n")
        else:
            out.append(_rich_text(el.get("elements")))
            if kind in ("rich_text_section", "rich_text_preformatted", "rich_text_quote"):
                out.append("\n")
    return "".join(out)


def _block_lines(block: Any, *, color: bool) -> list[str]:
    if not isinstance(block, dict):
        return []
    kind = block.get("type")
    if kind == "header":
        return _title(_text_of(block.get("text")), color=color)
    if kind == "divider":
        return [RULE]
    if kind == "section":
        lines: list[str] = []
        text = _text_of(block.get("text"), color=color)
        if text:
            lines.extend(text.split("\n"))
        fields = block.get("fields")
        if isinstance(fields, list) and fields:
            lines.extend(_fields(fields, color=color))
        accessory = block.get("accessory")
        if isinstance(accessory, dict) and accessory.get("type") != "image":
            lines.append(_element_text(accessory, color=color))
        return lines
    if kind == "context":
        parts = []
        for el in block.get("elements") or []:
            if isinstance(el, dict) and el.get("type") == "image":
                continue  # context images are decoration (avatars, icons)
            parts.append(_text_of(el))
        line = " · ".join(p for p in parts if p).replace("\n", " ")
        return ["  " + _paint(line, _DIM, color=color)] if line else []
    if kind == "actions":
        shown = [_element_text(el, color=color) for el in block.get("elements") or []]
        return [" ".join(s for s in shown if s)]
    if kind == "input":
        label = _text_of(block.get("label"))
        if block.get("optional"):
            label += " (optional)"
        element = block.get("element") if isinstance(block.get("element"), dict) else {}
        initial = element.get("initial_value") if isinstance(element, dict) else None
        option = element.get("initial_option") if isinstance(element, dict) else None
        if not initial and isinstance(option, dict):
            initial = _text_of(option.get("text"))
        lines = [f"{label}: {initial if initial else '____'}"]
        hint = _text_of(block.get("hint"))
        if hint:
            lines.append("  " + _paint(hint, _DIM, color=color))
        return lines
    if kind == "image":
        return [f"[image: {block.get('alt_text', '')}]"]
    if kind == "markdown":
        return str(block.get("text", "")).split("\n")
    if kind == "rich_text":
        return _rich_text(block.get("elements")).rstrip("\n").split("\n")
    return [f"[{kind} block]"]


def _render_blocks(blocks: list[Any], *, color: bool) -> list[str]:
    lines: list[str] = []
    for block in blocks:
        lines.extend(_block_lines(block, color=color))
    return lines


def render_message(*, text: str | None, blocks: list[Any] | None, color: bool = False) -> str:
    """A message as terminal text: its blocks when it has any, else its `text`."""
    if blocks:
        return "\n".join(_render_blocks(blocks, color=color))
    return mrkdwn_to_text(text or "", color=color)


def render_view(view: dict[str, Any], *, color: bool = False) -> str:
    """A modal as terminal text: title, blocks, then its close and submit buttons."""
    lines = _title(_text_of(view.get("title")) or "(untitled)", color=color)
    blocks = view.get("blocks")
    if isinstance(blocks, list):
        lines.extend(_render_blocks(blocks, color=color))
    footer = [f"[{_text_of(view.get('close')) or 'Cancel'}]"]
    submit = _text_of(view.get("submit"))
    if submit:
        footer.append(f"[{submit}]")
    lines.append(" ".join(footer))
    return "\n".join(lines)


def button_refs(blocks: list[Any] | None) -> list[ButtonRef]:
    """Every button in `blocks` (actions elements and section accessories), in display order."""
    found: list[ButtonRef] = []
    for block in blocks or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "actions":
            elements = block.get("elements") or []
        elif block.get("type") == "section":
            elements = [block.get("accessory")]
        else:
            continue
        for el in elements:
            if isinstance(el, dict) and el.get("type") == "button":
                found.append(
                    ButtonRef(
                        text=_text_of(el.get("text")),
                        action_id=str(el.get("action_id", "")),
                        value=el.get("value"),
                        block_id=block.get("block_id"),
                        url=el.get("url"),
                        style=el.get("style"),
                    )
                )
    return found


@dataclass(frozen=True, slots=True)
class MenuOption:
    """One option of an overflow or select menu found in blocks: what choosing it sends."""

    #: The option, and what its menu is about (the start of the section it sits in).
    text: str
    action_id: str
    value: str | None
    block_id: str | None
    #: `overflow` or `static_select`: the action's type in a `block_actions` payload.
    element: str
    option: dict[str, Any]


_MENUS = ("overflow", "static_select")


def menu_options(blocks: list[Any] | None) -> list[MenuOption]:
    """Every option of every overflow or select menu in `blocks`, in display order; each is
    labelled with its option text and the start of its section's text."""
    found: list[MenuOption] = []
    for block in blocks or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "actions":
            elements, about = block.get("elements") or [], ""
        elif block.get("type") == "section":
            elements = [block.get("accessory")]
            about = mrkdwn_to_text(_text_of(block.get("text"))).split("\n")[0].strip()
        else:
            continue
        for el in elements:
            if not isinstance(el, dict) or el.get("type") not in _MENUS:
                continue
            for option in el.get("options") or []:
                if not isinstance(option, dict):
                    continue
                label = _text_of(option.get("text"))
                found.append(
                    MenuOption(
                        text=f"{label} · {about[:48]}" if about else label,
                        action_id=str(el.get("action_id", "")),
                        value=option.get("value"),
                        block_id=block.get("block_id"),
                        element=str(el["type"]),
                        option=option,
                    )
                )
    return found


def buttons(blocks: list[Any] | None) -> list[tuple[str, str, str | None]]:
    """`(text, action_id, value)` of every button in `blocks`, in display order."""
    return [(b.text, b.action_id, b.value) for b in button_refs(blocks)]


def _view_title(call: SlackCall) -> str:
    view = call.args.get("view")
    return _text_of(view.get("title")) if isinstance(view, dict) else ""


def describe_call(call: SlackCall) -> str | None:
    """A one-line heading for a call worth showing, or None (auth.test, look-ups, …)."""
    method, args = call.method, call.args
    if not call.ok:
        error = call.response.get("error", "failed")
        return f"{method} failed: {error}"
    if method == "chat.postMessage":
        channel = str(call.response.get("channel") or args.get("channel", ""))
        # The stand-in names a DM after its user: "D" + user ID (localslack.dm_channel_id).
        is_dm = channel.startswith(("DU", "DW"))
        where = f"DM to {channel[1:]}" if is_dm else f"posted in {channel}"
        thread = args.get("thread_ts")
        return f"{where} (thread {thread})" if thread else where
    if method == "chat.postEphemeral":
        return f"ephemeral reply to {args.get('user', '?')} in {args.get('channel', '?')}"
    if method == "chat.update":
        return f"updated message {args.get('ts', '?')}"
    if method == "chat.delete":
        return f"deleted message {args.get('ts', '?')}"
    if method == "response_url":
        if args.get("delete_original"):
            return "deleted the original message"
        if args.get("replace_original") is True or args.get("replace_original") == "true":
            return "replaced the original message"
        if args.get("response_type") == "in_channel":
            return "posted in channel"
        return "ephemeral reply"
    if method in ("views.open", "views.push", "views.update"):
        verb = {"views.open": "opened", "views.push": "pushed", "views.update": "updated"}[method]
        return f"{verb} modal '{_view_title(call)}'"
    return None


def render_call(call: SlackCall, *, color: bool = False) -> str | None:
    """The heading and body of a call worth showing (see `describe_call`), or None."""
    heading = describe_call(call)
    if heading is None:
        return None
    heading_line = _paint(f"── {heading}", _DIM, color=color)
    if not call.ok or call.method == "chat.delete" or call.args.get("delete_original"):
        return heading_line
    if call.method.startswith("views."):
        view = call.args.get("view")
        body = render_view(view, color=color) if isinstance(view, dict) else ""
    else:
        blocks = call.args.get("blocks")
        body = render_message(
            text=call.args.get("text"),
            blocks=blocks if isinstance(blocks, list) else None,
            color=color,
        )
    return f"{heading_line}\n{body}" if body else heading_line

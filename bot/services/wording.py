"""Wording: the LLM puts computed billing facts into words, or the deterministic text is used.

The model never decides anything: it gets a bounded fact sheet (not raw JSON), customer-controlled
text only as quoted data, and no tools. Its reply is used only if every amount, date, ID and number
in it is in the facts and it promises no refund or credit the facts do not already state. Any
failure (no client, timeout, server error, bad reply, rejected reply) falls back to the
deterministic text with a note for the engineer; the LLM being down is never an error a user sees.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bot.domain.grounding import Facts, check_grounding, check_promises
from bot.domain.ports import LLMClient
from bot.domain.redact import quote, redact
from bot.domain.tokens import token_estimate
from bot.errors import LLMUnavailable

__all__ = ["LLMClient", "LLMUnavailable", "Prompt", "Wording", "token_estimate", "word"]

log = logging.getLogger("bot.llm")

Kind = Literal["explain", "draft"]

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
#: Reply budgets (completion tokens); the explain summary is short, the draft a few paragraphs.
MAX_REPLY_TOKENS: dict[Kind, int] = {"explain": 400, "draft": 700}
#: Longest reply we accept; a Slack section holds 3,000 characters.
MAX_REPLY_CHARS = 2800
MAX_FACT_LINE_CHARS = 400


@dataclass(frozen=True, slots=True)
class Wording:
    """Text to show, where it came from, and why the deterministic text was used (if it was)."""

    text: str
    source: Literal["llm", "deterministic"]
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Prompt:
    """A rendered prompt pair, its estimated size, and how many fact lines were left out."""

    system: str
    user: str
    tokens: int
    omitted: int


@functools.cache
def load_prompt(name: str) -> str:
    """The prompt template `prompts/<name>.txt` from the source checkout."""
    if not re.fullmatch(r"[a-z_]+", name):
        raise ValueError(f"bad prompt name: {name!r}")
    return (PROMPTS_DIR / f"{name}.txt").read_text(encoding="utf-8").strip() + "\n"


def _quoted_section(facts: Facts, *, limit: int, max_items: int, allowed: set[str]) -> str:
    items = list(facts.quoted.items())
    shown = items[:max_items]
    lines = [f"- {name}: {quote(text, limit, allowed_emails=allowed)}" for name, text in shown]
    if len(items) > len(shown):
        lines.append(f"- ({len(items) - len(shown)} more quoted items omitted)")
    return "\n".join(lines) if lines else "(none)"


def _fit_line(line: str, allowed: set[str]) -> str:
    clean = redact(" ".join(line.split()), allowed_emails=allowed)
    if len(clean) > MAX_FACT_LINE_CHARS:
        clean = clean[: MAX_FACT_LINE_CHARS - 1] + "…"
    return f"- {clean}"


# Progressively tighter bounds on customer text and notes, tried until the fixed part of the
# prompt leaves room for facts: (characters per quoted item, quoted items, note characters).
_SQUEEZE = ((200, 20, 600), (120, 10, 300), (60, 5, 160), (40, 2, 80))


def build_prompt(
    *, kind: Kind, facts: Facts, engineer_notes: str | None = None, max_prompt_tokens: int = 2000
) -> Prompt | None:
    """Render the system and user prompts within `max_prompt_tokens`, or None if impossible.

    Fact lines are kept in order and the lowest-priority ones dropped to fit; the prompt then says
    how many minor items were omitted.
    """
    system = load_prompt("system")
    template = load_prompt(kind)
    allowed = {i for i in facts.ids if "@" in i}
    lines = [_fit_line(line, allowed) for line in facts.lines]

    def render(n_lines: int, quoted: str, notes: str) -> str:
        shown = lines[:n_lines]
        omitted = len(lines) - n_lines
        if omitted:
            shown.append(f"- ({omitted} more minor items omitted)")
        return template.format_map(
            {"facts": "\n".join(shown) or "(none)", "quoted": quoted, "notes": notes}
        )

    system_tokens = token_estimate(system)
    for quote_limit, max_items, note_limit in _SQUEEZE:
        quoted = _quoted_section(facts, limit=quote_limit, max_items=max_items, allowed=allowed)
        notes = (
            quote(engineer_notes, note_limit, allowed_emails=allowed)
            if engineer_notes
            else "(none)"
        )
        fixed = system_tokens + token_estimate(render(0, quoted, notes))
        if fixed > max_prompt_tokens:
            continue
        # Greedy by priority; each line's cost is estimated alone, then the whole is re-checked
        # (the estimate is additive up to whitespace, so the re-check rarely drops more).
        budget = max_prompt_tokens - fixed
        n = 0
        for line in lines:
            cost = token_estimate(line) + 1
            if cost > budget:
                break
            budget -= cost
            n += 1
        while True:
            user = render(n, quoted, notes)
            tokens = system_tokens + token_estimate(user)
            if tokens <= max_prompt_tokens or n == 0:
                break
            n -= 1
        if tokens <= max_prompt_tokens:
            return Prompt(system=system, user=user, tokens=tokens, omitted=len(lines) - n)
    return None


def _clean_reply(text: str) -> str:
    out = text.strip()
    # Models sometimes wrap the whole reply in a code fence or quotes; the text inside is the reply.
    fence = re.fullmatch(r"```[a-zA-Z]*\n?(.*?)\n?```", out, re.DOTALL)
    if fence:
        out = fence.group(1).strip()
    if len(out) >= 2 and out[0] == out[-1] == '"':
        out = out[1:-1].strip()
    return out


_SLACK_CONTROL_RE = re.compile(r"<[!@#]|@(?:channel|here|everyone)\b")


#: How the notice names each kind of ungrounded mention: in general terms, never the value (the
#: value an LLM made up is exactly what must not be shown as if it meant something).
_KIND_NOUNS: dict[str, tuple[str, str]] = {
    "amount": ("an amount", "amounts"),
    "percentage": ("a percentage", "percentages"),
    "date": ("a date", "dates"),
    "id": ("an ID", "IDs"),
    "number": ("a number", "numbers"),
}


def _kinds_text(kinds: tuple[str, ...]) -> str:
    """`an amount`, `amounts and a date`: what the discarded text got wrong, without values."""
    counts = {kind: kinds.count(kind) for kind in dict.fromkeys(kinds)}
    parts = [_KIND_NOUNS[k][0 if n == 1 else 1] for k, n in counts.items() if k in _KIND_NOUNS]
    if not parts:
        return "something"
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _log_mentions(mentions: tuple[str, ...]) -> str:
    """The ungrounded mentions for the log (redacted like everything else we log)."""
    return "; ".join(redact(m)[:60] for m in mentions[:5])


async def word(
    *,
    kind: Kind,
    facts: Facts,
    deterministic: str,
    llm: LLMClient | None,
    engineer_notes: str | None = None,
    deadline: float = 8.0,
    max_prompt_tokens: int = 2000,
) -> Wording:
    """Word `facts` with the LLM if it answers in time with grounded text; else `deterministic`."""
    if llm is None:
        return Wording(deterministic, "deterministic", None)

    def fallback(note: str, reason: str) -> Wording:
        log.warning("llm wording not used: kind=%s reason=%s", kind, reason)
        return Wording(deterministic, "deterministic", note)

    def unavailable(reason: str) -> Wording:
        return fallback(f"AI wording unavailable ({reason}); showing the standard text", reason)

    prompt = build_prompt(
        kind=kind, facts=facts, engineer_notes=engineer_notes, max_prompt_tokens=max_prompt_tokens
    )
    if prompt is None:
        return unavailable("the facts do not fit the prompt budget")

    started = time.monotonic()
    try:
        async with asyncio.timeout(deadline):
            raw = await llm.complete(
                system=prompt.system,
                user=prompt.user,
                max_tokens=MAX_REPLY_TOKENS[kind],
                timeout=deadline,
            )
    except TimeoutError:
        return unavailable("timed out")
    except LLMUnavailable as exc:
        return unavailable(exc.reason)
    except Exception as exc:
        # Any client failure means "use the standard text". Only the type is logged: a foreign
        # exception's message may carry a request body or a key.
        return unavailable(f"unexpected {type(exc).__name__}")
    elapsed = time.monotonic() - started

    text = _clean_reply(raw or "")
    if not text:
        return unavailable("empty reply")
    if len(text) > MAX_REPLY_CHARS:
        return unavailable("reply too long")
    discarded = "AI wording discarded: it {what}; showing the standard text"
    if _SLACK_CONTROL_RE.search(text):
        return fallback(discarded.format(what="contained a Slack mention"), "slack mention")
    grounding = check_grounding(text, facts)
    if not grounding.ok:
        named = _kinds_text(grounding.kinds)
        are = "is" if len(grounding.problems) == 1 else "are"
        what = f"mentioned {named} that {are} not in the billing facts"
        # The values themselves go to the log only, for whoever tunes the prompt.
        return fallback(
            discarded.format(what=what),
            f"ungrounded {len(grounding.problems)} mention(s): {_log_mentions(grounding.problems)}",
        )
    promise = check_promises(text, facts)
    if promise is not None:
        what = "promised a refund or credit that is not in the billing facts"
        return fallback(discarded.format(what=what), "promise of money")

    log.info(
        "llm wording used: kind=%s prompt_tokens~%d omitted_lines=%d seconds=%.2f",
        kind, prompt.tokens, prompt.omitted, elapsed,
    )  # fmt: skip
    return Wording(text, "llm", None)

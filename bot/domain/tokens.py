"""Prompt size: a token estimate for GPT-style tokenizers, so prompts stay within budget."""

from __future__ import annotations

import math
import re

_PIECE_RE = re.compile(r"[A-Za-z]+|\d+|\s+|.", re.DOTALL)


def token_estimate(text: str) -> int:
    """Estimated tokens of `text` for GPT-style BPE tokenizers (cl100k/o200k), erring high.

    The estimate mirrors how those tokenizers pre-split text, since no token crosses those splits:
    digits go in groups of at most 3 (`1,234.56` is 6 tokens, so chars/4 would badly undercount
    a number-heavy fact sheet); each punctuation mark counts 1 and each non-ASCII character 2;
    a lowercase or Capitalised word counts one token per 4 letters, rounded up (common English
    words are one token); other letter runs (IDs, acronyms) one per 2 letters; a single space is
    free (it joins the next word) and any other whitespace run counts 1. A real tokenizer
    (tiktoken) is not used: it downloads its vocabulary at run time and our machines are offline.
    """
    total = 0
    for piece in _PIECE_RE.findall(text):
        first = piece[0]
        if first.isspace():
            total += 0 if piece == " " else 1
        elif first.isascii() and first.isalpha():
            plain = piece.islower() or (piece[0].isupper() and piece[1:].islower())
            total += math.ceil(len(piece) / (4 if plain or len(piece) == 1 else 2))
        elif first.isdigit() and first.isascii():
            total += math.ceil(len(piece) / 3)
        else:
            total += 1 if first.isascii() else 2
    return total

"""The provider specs and schemas vendored in `tests/contracts/` (see its README for where each
file comes from), read from the repository itself so that a bare clone's tests pass.

A missing file fails the test that needs it: a contract check that silently skips is a check
that silently stopped checking.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"


def contract_path(name: str) -> Path:
    """The path of one vendored file; fails the calling test when it is not there."""
    path = CONTRACTS / name
    if not path.is_file():
        pytest.fail(f"{name} is missing from {CONTRACTS}: it is vendored in the repository")
    return path


def load_contract(name: str) -> Any:
    """One vendored JSON file, freshly parsed (callers may change their copy)."""
    return json.loads(contract_path(name).read_text(encoding="utf-8"))

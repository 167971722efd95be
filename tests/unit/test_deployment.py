"""The deployment files say what the README promises: a slim non-root image with a health check,
a compose file with PostgreSQL, migrations once and replicas that do not migrate."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from bot.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_image_is_slim_non_root_and_checks_its_health() -> None:
    """The container runs as an unprivileged user and Docker probes /healthz."""
    text = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert bases and all(b.startswith("python:3.11-slim") for b in bases)
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*", text, re.MULTILINE)
    assert "/healthz" in text
    assert not re.search(r"(xoxb-|sk_live|sk_test)", text)


def test_compose_runs_migrations_once_and_replicas_without_auto_migrate() -> None:
    """One `db upgrade` before the replicas; every replica uses PostgreSQL through asyncpg."""
    services = _compose()["services"]
    assert services["db"]["image"].startswith("postgres:15")
    assert services["migrate"]["command"] == ["db", "upgrade"]
    replicas = [s for name, s in services.items() if name.startswith("app-")]
    assert len(replicas) >= 2
    for replica in replicas:
        env = replica["environment"]
        assert env["AUTO_MIGRATE"] == "0"
        assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert replica["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_example_env_names_only_real_settings() -> None:
    """Every variable in .env.example is one the app reads (a typo would be silently ignored)."""
    names = set()
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=", line)
        if match:
            names.add(match.group(1).lower())
    assert names and names <= set(Settings.model_fields)


def test_a_regular_install_ships_the_prompts_and_migrations() -> None:
    """`pip install .` (the image) ships the prompt files and the migrations, not only the code."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    assert "prompts" in setuptools["packages"]["find"]["include"]
    assert "*.txt" in setuptools["package-data"]["prompts"]
    assert any("versions" in p for p in setuptools["package-data"]["bot"])

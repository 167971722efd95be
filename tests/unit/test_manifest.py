"""manifest.yml against Slack's app manifest schema (vendored in tests/contracts/), offline."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests.support.contracts import load_contract

REPO = Path(__file__).resolve().parents[2]
SCHEMA_URL = (
    "https://raw.githubusercontent.com/slackapi/manifest-schema/v0.5.0/schemas/"
    "manifest.schema.{version}.json"
)
VERSIONS = ("1.0.0", "2.0.0")


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = load_contract(name)
    return data


@pytest.fixture(scope="module")
def validators() -> dict[str, Draft7Validator]:
    """The top-level schema and each version's schema, resolving the versioned URLs locally."""
    versioned = {v: _load(f"slack-manifest.schema.{v}.json") for v in VERSIONS}
    registry: Registry[Any] = Registry().with_resources(
        (SCHEMA_URL.format(version=v), Resource.from_contents(s, default_specification=DRAFT7))
        for v, s in versioned.items()
    )
    return {
        "top": Draft7Validator(_load("slack-manifest.schema.json"), registry=registry),
        **{v: Draft7Validator(s, registry=registry) for v, s in versioned.items()},
    }


@pytest.fixture
def manifest() -> dict[str, Any]:
    """The repository's manifest.yml, parsed."""
    data: dict[str, Any] = yaml.safe_load((REPO / "manifest.yml").read_text(encoding="utf-8"))
    return data


def _errors(validator: Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def _http_variant(manifest: dict[str, Any]) -> dict[str, Any]:
    url = "https://example.com/slack/events"
    prod = copy.deepcopy(manifest)
    prod["features"]["slash_commands"][0]["url"] = url
    prod["settings"]["event_subscriptions"]["request_url"] = url
    prod["settings"]["interactivity"]["request_url"] = url
    prod["settings"]["socket_mode_enabled"] = False
    return prod


def test_manifest_is_valid_for_slack(
    validators: dict[str, Draft7Validator], manifest: dict[str, Any]
) -> None:
    """Slack accepts manifest.yml as it is (top-level, v1 and v2 schemas)."""
    for name in ("top", *VERSIONS):
        assert _errors(validators[name], manifest) == [], name


def test_manifest_grants_what_the_bot_needs(manifest: dict[str, Any]) -> None:
    """The installed app has /billing, hears mentions, takes clicks, and has each scope it uses."""
    (command,) = manifest["features"]["slash_commands"]
    assert command["command"] == "/billing"
    assert command["usage_hint"]
    assert manifest["settings"]["event_subscriptions"]["bot_events"] == [
        "app_mention",
        "subteam_members_changed",
    ]
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == {
        "commands",
        "chat:write",
        "app_mentions:read",
        "usergroups:read",
        "users:read",
        "im:write",
        "files:write",
    }


def test_http_production_variant_is_valid(
    validators: dict[str, Draft7Validator], manifest: dict[str, Any]
) -> None:
    """The production app (HTTP mode, request URLs at /slack/events) validates too."""
    prod = _http_variant(manifest)
    for name in ("top", *VERSIONS):
        assert _errors(validators[name], prod) == [], name


@pytest.mark.parametrize(
    ("breakage", "complaint"),
    [
        ("command_without_slash", "features/slash_commands/0/command: 'billing' does not match"),
        ("interactivity_without_is_enabled", "settings/interactivity: 'is_enabled' is a required"),
        ("unknown_top_level_key", ": Additional properties are not allowed ('socket_mode'"),
    ],
)
def test_broken_manifests_are_rejected(
    validators: dict[str, Draft7Validator],
    manifest: dict[str, Any],
    breakage: str,
    complaint: str,
) -> None:
    """A manifest Slack would refuse is caught here, naming the field, not in Slack's settings."""
    broken = copy.deepcopy(manifest)
    if breakage == "command_without_slash":
        broken["features"]["slash_commands"][0]["command"] = "billing"
    elif breakage == "interactivity_without_is_enabled":
        del broken["settings"]["interactivity"]["is_enabled"]
    else:
        broken["socket_mode"] = True
    assert not validators["top"].is_valid(broken)
    for version in VERSIONS:
        errors = _errors(validators[version], broken)
        assert any(e.startswith(complaint) for e in errors), (version, errors)

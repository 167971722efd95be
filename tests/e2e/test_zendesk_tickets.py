"""`/billing ticket` and "Post as internal note" end to end: signed Slack requests into the
served app, the real Zendesk client over loopback to the fake Zendesk, the real provider clients
to the fake providers, and (for the LLM) a real OpenAI client to a fake OpenAI server."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from bot.app import build_app
from handlers.approval_views import REQUEST_REFUND_ACTION
from handlers.zendesk_views import NOTE_ACTION
from integrations.http import RetryPolicy
from integrations.llm import OpenAILLMClient
from integrations.sandbox.slack import LocalSlack, validate_blocks
from integrations.zendesk import ZendeskTicketSource
from tests.support.app import RunningApp, serve_app
from tests.support.fake_openai import FakeOpenAI
from tests.support.providers import FakeProviders
from tests.support.slack import FORM, block_actions_body, signed_headers
from tests.support.zendesk import ACCOUNT_FIELD, FakeZendesk

CARD = "4242 4242 4242 4242"


@asynccontextmanager
async def served(
    slack: LocalSlack,
    database_url: str,
    providers: FakeProviders,
    zendesk: FakeZendesk,
    *,
    llm_url: str | None = None,
    tickets: ZendeskTicketSource | None = None,
    **settings: Any,
) -> AsyncIterator[RunningApp]:
    """The app over the fake providers and the fake Zendesk."""
    llm = None
    if llm_url is not None:
        llm = OpenAILLMClient(
            "sk-test-FAKEKEY0123456789abcdef",
            base_url=llm_url,
            model="fake-model",
            policy=RetryPolicy(max_attempts=1),
        )
    build = functools.partial(build_app, tickets=tickets or zendesk.client(), llm=llm)
    settings.setdefault("zendesk_account_field", ACCOUNT_FIELD)
    async with serve_app(
        slack, database_url, providers=providers.clients(), build=build, **settings
    ) as running:
        running.deps.llm_deadline = 2.0
        yield running


def content(args: dict[str, Any]) -> str:
    """A message's text and blocks as one searchable string."""
    blocks = args.get("blocks") or []
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    return (args.get("text") or "") + "\n" + json.dumps(blocks, ensure_ascii=False)


def button_value(reply: dict[str, Any], action_id: str) -> str | None:
    """The value of the button `action_id` in a reply, if it has one."""
    for block in reply.get("blocks") or []:
        for element in block.get("elements", []) if block.get("type") == "actions" else []:
            if element.get("action_id") == action_id:
                return str(element.get("value"))
    return None


async def click(
    running: RunningApp,
    action_id: str,
    value: str,
    *,
    user: str = "U0SUPPORT",
    key: str = "click",
    retry: int | None = None,
) -> int:
    """Click a button on an ephemeral answer; the HTTP status of Slack's request."""
    body = block_actions_body(
        action_id,
        value,
        user_id=user,
        channel_id="C0SUPPORT",
        is_ephemeral=True,
        response_url=running.slack.response_url(key),
    )
    headers = signed_headers(body, content_type=FORM)
    if retry is not None:
        headers["X-Slack-Retry-Num"] = str(retry)
    response = await running.post_slack(body, headers)
    return response.status_code


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    """A fresh SQLite database file."""
    return f"sqlite+aiosqlite:///{tmp_path}/tickets.db"


@pytest.mark.parametrize(
    ("ticket", "account", "matched_by"),
    [
        (1003, "acct_fabrikam", "account field 360012345678"),
        (1001, "acct_northwind", "organization external ID (Northwind Traders)"),
        (1007, "acct_hooli", "Stripe customer ID cus_"),
        (1009, "acct_initech", "Stripe invoice ID in_"),
        (1002, "acct_globex", "invoice number B02734D1-0017 in the ticket"),
        (1004, "acct_contoso", "requester email billing@contoso.example"),
    ],
)
async def test_each_resolution_path_finds_the_account_and_says_how(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    sqlite_url: str,
    ticket: int,
    account: str,
    matched_by: str,
) -> None:
    """Account field, organization external ID, IDs and invoice numbers in the text, requester
    email: each finds the ticket's account, and the answer says which matched."""
    async with served(local_slack, sqlite_url, fake_providers, fake_zendesk) as running:
        reply = await running.answer(f"ticket {ticket}")
    text = content(reply)
    assert f"`{account}` · matched by {matched_by}" in text
    assert validate_blocks(reply["blocks"]) == []
    assert button_value(reply, NOTE_ACTION) is not None
    assert "Draft reply" in text


async def test_an_organization_field_names_the_account(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    sqlite_url: str,
) -> None:
    """ZENDESK_ACCOUNT_FIELD may be an organization field's key."""
    fake_zendesk.router.add_ticket(
        5555,
        subject="Tax?",
        requester={"id": 7100, "name": "Ops", "email": "ops@soylent-foods.example"},
        organization={
            "id": 7101,
            "name": "Soylent",
            "organization_fields": {"account_id": "acct_soylent"},
        },
        comments=[(7100, "Why is there more tax this month?", True)],
    )
    async with served(
        local_slack, sqlite_url, fake_providers, fake_zendesk, zendesk_account_field="account_id"
    ) as running:
        reply = await running.answer("ticket 5555")
    assert "`acct_soylent` · matched by account field account_id" in content(reply)


async def test_the_account_field_comes_before_the_requester_email(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    sqlite_url: str,
) -> None:
    """When the field and the requester name different accounts, the field wins (the order)."""
    fake_zendesk.router.add_ticket(
        5556,
        subject="Question",
        requester={"id": 7200, "name": "Hooli billing", "email": "billing@hooli.example"},
        custom_fields={int(ACCOUNT_FIELD): "acct_tyrell"},
        comments=[(7200, "Hello", True)],
    )
    async with served(local_slack, sqlite_url, fake_providers, fake_zendesk) as running:
        reply = await running.answer("ticket 5556")
    assert "`acct_tyrell` · matched by account field" in content(reply)


@pytest.mark.parametrize(
    ("ticket", "candidates", "by"),
    [
        (1006, ["acct_aperture", "acct_aperture_labs"], "requester email"),
        (1008, ["acct_initech", "acct_soylent"], "IDs in the ticket"),
    ],
)
async def test_several_matching_accounts_are_listed_never_guessed(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    sqlite_url: str,
    ticket: int,
    candidates: list[str],
    by: str,
) -> None:
    """Several accounts: the answer says so, lists them, and offers no draft to post."""
    async with served(local_slack, sqlite_url, fake_providers, fake_zendesk) as running:
        reply = await running.answer(f"ticket {ticket}")
    text = content(reply)
    assert f"Several accounts match* (by {by})" in text
    for candidate in candidates:
        assert f"`{candidate}`" in text
    assert button_value(reply, NOTE_ACTION) is None and "Draft reply" not in text


async def test_no_matching_account_says_what_was_tried(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    sqlite_url: str,
) -> None:
    """No account: said plainly, with each source tried, and no draft."""
    async with served(local_slack, sqlite_url, fake_providers, fake_zendesk) as running:
        reply = await running.answer("ticket 1005")
    text = content(reply)
    assert "No account matches this ticket" in text
    assert "requester email alex@unknown-startup.example" in text
    assert (
        button_value(reply, NOTE_ACTION) is None
        and button_value(reply, REQUEST_REFUND_ACTION) is None
    )


async def test_a_ticket_url_of_another_host_is_refused_before_any_request(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    sqlite_url: str,
) -> None:
    """A link to another Zendesk (or anything else) is refused and Zendesk is never called."""
    async with served(local_slack, sqlite_url, fake_providers, fake_zendesk) as running:
        reply = await running.answer("ticket <https://evil.zendesk.com/agent/tickets/1001>")
        missing = await running.answer("ticket 999999", key="missing")
    assert "is not this workspace's Zendesk" in content(reply)
    assert [r.path for r in fake_zendesk.server.requests] == ["/api/v2/tickets/999999.json"]
    assert "Zendesk: ticket 999999 not found" in content(missing)


async def test_a_ticket_link_on_the_configured_host_works(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    sqlite_url: str,
) -> None:
    """`https://{subdomain}.zendesk.com/agent/tickets/N` (as Slack sends it) names ticket N."""
    async with served(local_slack, sqlite_url, fake_providers, fake_zendesk) as running:
        reply = await running.answer("ticket <https://acme.zendesk.com/agent/tickets/1003>")
    assert "`acct_fabrikam`" in content(reply)


async def test_the_card_number_never_reaches_slack_or_the_llm(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    fake_openai: FakeOpenAI,
    sqlite_url: str,
) -> None:
    """The customer's message is quoted to the LLM and shown in Slack, card number redacted."""
    async with served(
        local_slack, sqlite_url, fake_providers, fake_zendesk, llm_url=fake_openai.base_url
    ) as running:
        reply = await running.answer("ticket 1002")
        slack_text = "\n".join(content(c.args) for c in local_slack.calls) + content(reply)
    assert fake_openai.requests, "the LLM was asked"
    prompts = "\n".join(r.user + r.system for r in fake_openai.requests)
    for leaked in (CARD, CARD.replace(" ", "")):
        assert leaked not in prompts and leaked not in slack_text
    assert "[card]" in slack_text
    draft_prompt = next(r.user for r in fake_openai.requests if "customer message" in r.user)
    assert "QUOTED DATA" in draft_prompt and "we were charged twice" in draft_prompt


async def test_posting_the_note_adds_one_private_comment_and_shows_who(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    sqlite_url: str,
) -> None:
    """One click: one internal note (the draft, then its marker line), nothing else changed on
    the ticket, no public comment; the message shows who posted it, with the link."""
    async with served(local_slack, sqlite_url, fake_providers, fake_zendesk) as running:
        reply = await running.answer("ticket 1002")
        value = button_value(reply, NOTE_ACTION)
        assert value is not None
        assert await click(running, NOTE_ACTION, value, user="U0POSTER") == 200
        await running.settle()
        posted = running.responses("click")
    notes = fake_zendesk.router.private_notes(1002)
    assert len(notes) == 1
    draft_id = json.loads(value)["d"]
    assert notes[0]["body"].endswith(f"— Billing Triage draft {draft_id}")
    assert [u.changed for u in fake_zendesk.router.updates] == [{}]
    assert fake_zendesk.router.public_comments_by_agent(1002) == []
    assert posted[-1]["replace_original"] is True
    assert "posted as an internal note on <" in content(posted[-1])
    assert "|#1002> by <@U0POSTER>" in content(posted[-1])


async def test_twenty_concurrent_clicks_and_a_slack_retry_add_one_note(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    sqlite_url: str,
) -> None:
    """Double clicks (20 at once) and Slack's retry of a click: exactly one PUT, one note."""
    fake_providers.set_latency(0)
    fake_zendesk.server.latency = 0.05
    async with served(local_slack, sqlite_url, fake_providers, fake_zendesk) as running:
        reply = await running.answer("ticket 1004")
        value = button_value(reply, NOTE_ACTION)
        assert value is not None
        statuses = await asyncio.gather(
            *(
                click(running, NOTE_ACTION, value, user=f"U0CLICK{n:02d}", key=f"c{n}")
                for n in range(20)
            )
        )
        await running.settle()
        assert await click(running, NOTE_ACTION, value, key="retry", retry=1) == 200
        await running.settle()
        answers = [content(r) for n in range(20) for r in running.responses(f"c{n}")]
        retry_answer = content(running.responses("retry")[-1])
    assert statuses == [200] * 20
    assert fake_zendesk.puts() == 1
    assert len(fake_zendesk.router.private_notes(1004)) == 1
    assert sum(":white_check_mark: posted as an internal note on" in a for a in answers) == 1
    assert "Already posted as an internal note" in retry_answer


async def test_a_timeout_after_zendesk_applied_the_note_is_reconciled_not_reposted(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    sqlite_url: str,
) -> None:
    """Zendesk adds the note but answers too late: the bot reads the ticket's comments, finds
    its marker, shows the note as posted, and a second click adds nothing."""
    fake_zendesk.router.write_delay = 2.0
    slow = fake_zendesk.client(policy=RetryPolicy(read_timeout=0.3, max_attempts=2, deadline=1.0))
    async with served(
        local_slack, sqlite_url, fake_providers, fake_zendesk, tickets=slow
    ) as running:
        reply = await running.answer("ticket 1003")
        value = button_value(reply, NOTE_ACTION)
        assert value is not None
        await click(running, NOTE_ACTION, value)
        await running.settle()
        first = content(running.responses("click")[-1])
        await asyncio.sleep(2.0)  # Zendesk's late answer arrives, unheard
        await click(running, NOTE_ACTION, value, key="again")
        await running.settle()
        second = content(running.responses("again")[-1])
    assert fake_zendesk.puts() == 1
    assert len(fake_zendesk.router.private_notes(1003)) == 1
    assert "posted as an internal note on" in first
    assert "Already posted" in second


@pytest.mark.postgres
async def test_two_app_instances_on_one_postgres_add_one_note(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    postgres_database_url: str,
) -> None:
    """Two replicas sharing PostgreSQL, clicked at once: one note."""
    url = postgres_database_url
    async with (
        served(local_slack, url, fake_providers, fake_zendesk) as one,
        served(local_slack, url, fake_providers, fake_zendesk) as two,
    ):
        reply = await one.answer("ticket 1001")
        value = button_value(reply, NOTE_ACTION)
        assert value is not None
        await asyncio.gather(
            *(
                click(app, NOTE_ACTION, value, key=f"{name}{n}")
                for n in range(5)
                for name, app in (("a", one), ("b", two))
            )
        )
        await one.settle()
        await two.settle()
    assert fake_zendesk.puts() == 1
    assert len(fake_zendesk.router.private_notes(1001)) == 1


async def test_a_mention_of_a_ticket_answers_privately(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    sqlite_url: str,
) -> None:
    """`@Billing Triage ticket 1001` triages it, for the engineer only (it holds a draft)."""
    from tests.support.slack import app_mention

    async with served(local_slack, sqlite_url, fake_providers, fake_zendesk) as running:
        await running.event(app_mention("<@UBOTTRIAGE> ticket 1001"), event_id="EvT1")
        await running.settle()
    ephemerals = local_slack.calls_to("chat.postEphemeral")
    assert ephemerals and "`acct_northwind`" in content(ephemerals[-1].args)
    assert local_slack.calls_to("chat.postMessage") == []


async def test_every_answer_is_recorded_as_a_case(
    local_slack: LocalSlack,
    fake_providers: FakeProviders,
    fake_zendesk: FakeZendesk,
    sqlite_url: str,
) -> None:
    """status, explain, draft, ticket and a mention each leave one case with its causes; the
    report over them names the causes; sharing an answer adds none."""
    from bot.services.report import build_report
    from handlers.views import SHARE_ACTION

    async with served(local_slack, sqlite_url, fake_providers, fake_zendesk) as running:
        status = await running.answer("acct_globex", key="s")
        await running.answer("explain acct_hooli", key="e")
        await running.answer("draft acct_northwind customer asks why", key="d")
        await running.answer("ticket 1002", key="t")
        share = button_value(status, SHARE_ACTION)
        assert share is not None
        await click(running, SHARE_ACTION, share, key="share")
        await running.settle()
        report = (await build_report(running.deps.database, days=7)).to_json()
    assert report["cases"] == 4
    causes = {c["cause"] for c in report["causes"]}
    assert {"duplicate_charge", "discount_ended", "usage_growth"} <= causes

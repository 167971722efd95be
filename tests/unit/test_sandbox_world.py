"""The sandbox world: deterministic, fast to index, deep enough history, consistent amounts, and
every planted story where the README says it is."""

from __future__ import annotations

import itertools
import json
import re
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from integrations.sandbox.accounts import METRONOME_KINDS, ORB_KINDS, STRIPE_KINDS
from integrations.sandbox.population import POPULATION
from integrations.sandbox.stories import proration_net, stories_of
from integrations.sandbox.world import SandboxAccount, SandboxWorld, build_world

NOW = datetime(2026, 3, 15, tzinfo=UTC)
STORY_KEYS = {
    "usage_spike", "plan_change_proration", "expired_coupon", "duplicate_charge",
    "failed_payment_dunning", "open_dispute", "new_addon", "tax_change", "depleted_credits",
    "multi_provider", "ambiguous_email",
}  # fmt: skip
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def world() -> SandboxWorld:
    """One world for the module: its accounts are built lazily and cached."""
    return build_world(seed=7, now=NOW)


def _story(world: SandboxWorld, key: str) -> Any:
    return next(s for s in stories_of(world) if s.key == key)


def _sample(world: SandboxWorld) -> list[SandboxAccount]:
    """Every story account and every 10th ordinary one."""
    ordinary = [a for a in world.accounts if a.story is None]
    return [a for a in world.accounts if a.story is not None] + ordinary[::10]


def _ordinary(world: SandboxWorld, billing: str) -> SandboxAccount:
    return next(a for a in world.accounts if a.story is None and a.billing == billing)


def _day(stamp: int) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _cents(text: str) -> int:
    return int(Decimal(text) * 100)


# --- determinism and speed ---------------------------------------------------------------------


def test_same_seed_and_now_give_identical_objects() -> None:
    """Two builds with the same seed and `now` serve byte-identical provider objects."""
    first, second = build_world(seed=7, now=NOW), build_world(seed=7, now=NOW)
    assert first.accounts == second.accounts
    picks = [a.account_id for a in first.accounts[:12]]
    picks += [_ordinary(first, kind).account_id for kind in ("stripe", "orb", "metronome")]
    for account_id in picks:
        a, b = first.bundle(account_id), second.bundle(account_id)
        assert json.dumps(_dump(a)) == json.dumps(_dump(b))


def _dump(bundle: Any) -> Any:
    out = {}
    for provider in ("stripe", "orb", "metronome"):
        data = getattr(bundle, provider)
        out[provider] = None if data is None else {k: getattr(data, k) for k in data.__slots__}
    return out


def test_another_seed_gives_other_ids() -> None:
    """A different seed makes a different world (other IDs), with the same story accounts."""
    a, b = build_world(seed=7, now=NOW), build_world(seed=8, now=NOW)
    assert a.accounts[0].account_id == b.accounts[0].account_id == "acct_northwind"
    assert a.accounts[0].stripe_customer_id != b.accounts[0].stripe_customer_id
    assert b.owner_of(str(a.accounts[0].stripe_customer_id)) is None


def test_default_now_is_today_at_midnight_utc() -> None:
    """Without `now` the world is anchored at today's midnight UTC, so story dates stay true."""
    w = build_world(ordinary_accounts=3)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert w.now in (today, today - timedelta(days=1))  # a run across midnight
    assert w.now.tzinfo is not None


def test_build_time_is_measured() -> None:
    """Building the index is cheap (printed, not asserted: budgets live in bench/)."""
    started = time.perf_counter()
    w = build_world()
    elapsed = time.perf_counter() - started
    print(f"build_world(): {elapsed * 1000:.1f} ms for {len(w.accounts)} accounts")
    assert len(w.accounts) == 300 + 12 + len(POPULATION)
    assert not w._bundles  # nothing generated until an account is looked at
    assert len(build_world(population=False).accounts) == 300 + 12


# --- the index ----------------------------------------------------------------------------------


def test_index_spreads_accounts_over_the_billing_providers(world: SandboxWorld) -> None:
    """Ordinary accounts are billed by Stripe (~40%), Orb (~35%) and Metronome (~25%)."""
    ordinary = [a for a in world.accounts if a.story is None and a.plant is None]
    assert len(ordinary) == 300
    share = {p: sum(a.billing == p for a in ordinary) / 300 for p in ("stripe", "orb", "metronome")}
    assert abs(share["stripe"] - 0.40) < 0.08
    assert abs(share["orb"] - 0.35) < 0.08
    assert abs(share["metronome"] - 0.25) < 0.08


def test_every_account_has_ids_in_its_providers_formats(world: SandboxWorld) -> None:
    """Account IDs, emails and provider customer IDs look like the real ones."""
    ids = [a.account_id for a in world.accounts]
    assert len(set(ids)) == len(ids)
    for acct in world.accounts:
        assert re.fullmatch(r"acct_[a-z0-9_]+", acct.account_id)
        assert acct.email.endswith(".example")
        assert re.fullmatch(r"cus_[A-Za-z0-9]{14}", acct.stripe_customer_id or "")
        if acct.billing == "orb":
            assert re.fullmatch(r"[A-Za-z0-9]{16}", acct.orb_customer_id or "")
        else:
            assert acct.orb_customer_id is None
        if acct.billing == "metronome" or acct.story == "multi_provider":
            assert UUID_RE.match(acct.metronome_customer_id or "")
        else:
            assert acct.metronome_customer_id is None
        assert acct.currency == "usd"


def test_customers_carry_our_account_id_everywhere(world: SandboxWorld) -> None:
    """Stripe metadata, Orb external_customer_id and Metronome ingest aliases name the account."""
    for acct in _sample(world):
        stripe = world.stripe(acct.account_id)
        assert stripe is not None
        assert stripe.customer["id"] == acct.stripe_customer_id
        assert stripe.customer["metadata"] == {"account_id": acct.account_id}
        assert stripe.customer["email"] == acct.email
        orb = world.orb(acct.account_id)
        if acct.orb_customer_id:
            assert orb is not None
            assert orb.customer["external_customer_id"] == acct.account_id
            assert orb.customer["payment_provider_id"] == acct.stripe_customer_id
        else:
            assert orb is None
        met = world.metronome(acct.account_id)
        if acct.metronome_customer_id:
            assert met is not None
            assert acct.account_id in met.customer["ingest_aliases"]
            assert met.customer["id"] == acct.metronome_customer_id
        else:
            assert met is None


def test_unknown_account_has_no_data(world: SandboxWorld) -> None:
    """An account ID the world does not have answers None, not an error."""
    assert world.account("acct_nobody") is None
    assert world.stripe("acct_nobody") is None
    assert world.orb("acct_nobody") is None
    assert world.metronome("acct_nobody") is None


# --- history -------------------------------------------------------------------------------------


def _daily_stripe(world: SandboxWorld, account_id: str) -> dict[str, list[int]]:
    data = world.stripe(account_id)
    assert data is not None
    return {
        meter: [s["aggregated_value"] for s in items]
        for meter, items in data.meter_event_summaries.items()
    }


def _daily_orb(world: SandboxWorld, account_id: str) -> list[Decimal]:
    data = world.orb(account_id)
    assert data is not None
    return [Decimal(c["total"]) for c in data.costs]


def _daily_metronome(world: SandboxWorld, account_id: str) -> dict[str, list[float]]:
    data = world.metronome(account_id)
    assert data is not None
    out: dict[str, list[float]] = {}
    for item in data.usage:
        out.setdefault(item["billable_metric_name"], []).append(item["value"])
    return out


def _invoices(world: SandboxWorld, acct: SandboxAccount) -> list[Obj]:
    data = getattr(world, acct.billing)(acct.account_id)
    return list(data.invoices)


def test_every_account_has_13_months_of_invoices_and_400_days_of_usage(
    world: SandboxWorld,
) -> None:
    """Each billing provider holds ≥ 13 monthly invoices and ≥ 400 days of daily usage or cost."""
    for acct in _sample(world):
        assert len(_invoices(world, acct)) >= 13, acct.account_id
        if acct.billing == "stripe":
            series = _daily_stripe(world, acct.account_id)
            assert series and all(len(v) >= 400 for v in series.values())
        elif acct.billing == "orb":
            assert len(_daily_orb(world, acct.account_id)) >= 400
        else:
            series_m = _daily_metronome(world, acct.account_id)
            assert series_m and all(len(v) >= 400 for v in series_m.values())


def test_invoices_are_newest_first_and_monthly(world: SandboxWorld) -> None:
    """Invoices come newest first, about a month apart, the latest before `now`."""
    for acct in _sample(world):
        invoices = _invoices(world, acct)
        if acct.billing == "stripe":
            dates = [_day(i["created"]) for i in invoices]
        elif acct.billing == "orb":
            dates = [_ts(i["invoice_date"]) for i in invoices]
        else:
            dates = [_ts(i["end_timestamp"]) for i in invoices]
        assert dates == sorted(dates, reverse=True)
        assert dates[0] < world.now
        gaps = {(a - b).days for a, b in itertools.pairwise(dates)}
        assert gaps <= {28, 29, 30, 31}, (acct.account_id, gaps)


def test_weekends_are_quieter_than_weekdays(world: SandboxWorld) -> None:
    """Usage has weekly seasonality: the weekday mean is above the weekend mean, per provider."""
    a_s = _ordinary(world, "stripe")
    data = world.stripe(a_s.account_id)
    assert data is not None
    for items in data.meter_event_summaries.values():
        weekday = [s["aggregated_value"] for s in items if _day(s["start_time"]).weekday() < 5]
        weekend = [s["aggregated_value"] for s in items if _day(s["start_time"]).weekday() >= 5]
        assert statistics.mean(weekday) > statistics.mean(weekend)
    a_o = _ordinary(world, "orb")
    orb = world.orb(a_o.account_id)
    assert orb is not None
    weekday_o = [Decimal(c["total"]) for c in orb.costs if _ts(c["timeframe_start"]).weekday() < 5]
    weekend_o = [Decimal(c["total"]) for c in orb.costs if _ts(c["timeframe_start"]).weekday() > 4]
    assert sum(weekday_o) / len(weekday_o) > sum(weekend_o) / len(weekend_o)
    a_m = _ordinary(world, "metronome")
    met = world.metronome(a_m.account_id)
    assert met is not None
    weekday_m = [u["value"] for u in met.usage if _ts(u["start_timestamp"]).weekday() < 5]
    weekend_m = [u["value"] for u in met.usage if _ts(u["start_timestamp"]).weekday() >= 5]
    assert statistics.mean(weekday_m) > statistics.mean(weekend_m)


def test_ordinary_accounts_grow_on_average(world: SandboxWorld) -> None:
    """Across ordinary accounts the latest invoices are, on average, above the first ones."""
    ratios = []
    for acct in [a for a in world.accounts if a.story is None][:40]:
        invoices = _invoices(world, acct)
        # `subtotal`: Stripe cents, Orb dollars, Metronome cents; a ratio needs no units.
        ratios.append(Decimal(invoices[1]["subtotal"]) / Decimal(invoices[-2]["subtotal"]))
    assert statistics.mean(ratios) > 1


# --- amounts add up ------------------------------------------------------------------------------


def _check_stripe_invoice(inv: Obj) -> None:
    lines = inv["lines"]["data"]
    assert inv["lines"]["has_more"] is False
    assert inv["subtotal"] == sum(li["amount"] for li in lines)
    discounts = sum(d["amount"] for li in lines for d in li["discount_amounts"])
    assert discounts == sum(d["amount"] for d in inv["total_discount_amounts"])
    taxes = sum(t["amount"] for li in lines for t in li["taxes"])
    assert taxes == sum(t["amount"] for t in inv["total_taxes"])
    assert inv["total_excluding_tax"] == inv["subtotal"] - discounts
    assert inv["total"] == inv["subtotal"] - discounts + taxes
    applied = inv["ending_balance"] - inv["starting_balance"]
    assert inv["amount_due"] == inv["total"] - applied
    assert inv["amount_remaining"] == inv["amount_due"] - inv["amount_paid"]
    if inv["status"] == "paid":
        assert inv["amount_paid"] == inv["amount_due"]
    assert "subscription" not in inv  # gone since basil: parent.subscription_details
    assert inv["parent"]["type"] == "subscription_details"


def _check_orb_invoice(inv: Obj) -> None:
    lines = inv["line_items"]
    assert _cents(inv["subtotal"]) == sum(_cents(li["subtotal"]) for li in lines)
    for li in lines:
        adjusted = _cents(li["adjusted_subtotal"]) - _cents(li["credits_applied"])
        assert _cents(li["amount"]) == adjusted
    taxes = sum(_cents(t["amount"]) for li in lines for t in li["tax_amounts"])
    assert _cents(inv["total"]) == sum(_cents(li["amount"]) for li in lines) + taxes
    assert inv["amount_due"] == inv["total"]
    paid = sum(_cents(p["amount"]) for p in inv["payment_attempts"] if p["succeeded"])
    assert paid == _cents(inv["amount_due"])


def _check_metronome_invoice(inv: Obj) -> None:
    assert inv["total"] == sum(li["total"] for li in inv["line_items"])
    for li in inv["line_items"]:
        assert isinstance(li["total"], int)
        if li["type"] == "applied_commit_or_credit":
            assert li["total"] < 0


def test_invoice_totals_add_up_the_way_each_provider_computes_them(world: SandboxWorld) -> None:
    """Totals = lines − discounts − credits + tax, in each provider's units, on every invoice."""
    check = {
        "stripe": _check_stripe_invoice,
        "orb": _check_orb_invoice,
        "metronome": _check_metronome_invoice,
    }
    for acct in _sample(world):
        for inv in _invoices(world, acct):
            check[acct.billing](inv)
        if acct.story == "multi_provider":
            met = world.metronome(acct.account_id)
            assert met is not None
            for inv in met.invoices:
                _check_metronome_invoice(inv)


def test_usage_lines_equal_the_daily_usage_of_their_period(world: SandboxWorld) -> None:
    """An invoice's usage quantity is the sum of the daily usage the provider reports for it."""
    acct = _ordinary(world, "stripe")
    data = world.stripe(acct.account_id)
    assert data is not None
    by_meter = {m["id"]: m for m in data.meters}
    for inv in data.invoices[:3]:
        for li in inv["lines"]["data"]:
            price = _price_of(data, li)
            meter = price["recurring"]["meter"]
            if meter is None:
                continue
            assert meter in by_meter
            days = data.meter_event_summaries[meter]
            start, end = li["period"]["start"], li["period"]["end"]
            used = sum(s["aggregated_value"] for s in days if start <= s["start_time"] < end)
            assert li["quantity"] == used
    acct = _ordinary(world, "orb")
    orb = world.orb(acct.account_id)
    assert orb is not None
    for inv in orb.invoices[:3]:
        for li in inv["line_items"]:
            if li["price"]["price_type"] != "usage_price":
                continue
            start, end = _ts(li["start_date"]), _ts(li["end_date"])
            used = sum(
                p["quantity"]
                for c in orb.costs
                if start <= _ts(c["timeframe_start"]) < end
                for p in c["per_price_costs"]
                if p["price_id"] == li["price"]["id"]
            )
            assert li["quantity"] == used
    acct = _ordinary(world, "metronome")
    met = world.metronome(acct.account_id)
    assert met is not None
    for inv in met.invoices[:3]:
        for li in inv["line_items"]:
            if li["type"] != "usage":
                continue
            start, end = _ts(li["starting_at"]), _ts(li["ending_before"])
            used = sum(
                u["value"]
                for u in met.usage
                if u["billable_metric_name"] == li["name"]
                and start <= _ts(u["start_timestamp"]) < end
            )
            assert li["quantity"] == used


def _price_of(data: Any, line: Obj) -> Obj:
    price_id = line["pricing"]["price_details"]["price"]
    for sub in data.subscriptions:
        for item in sub["items"]["data"]:
            if item["price"]["id"] == price_id:
                return dict(item["price"])
    # Plan lines of an earlier tier: the price object is not on the subscription any more.
    return {"id": price_id, "recurring": {"meter": None}}


def test_orb_and_metronome_invoices_are_paid_by_stripe_charges(world: SandboxWorld) -> None:
    """Each paid Orb or Metronome invoice has a successful Stripe payment of the same amount."""
    for acct in (_ordinary(world, "orb"), _ordinary(world, "metronome")):
        stripe = world.stripe(acct.account_id)
        assert stripe is not None
        assert not stripe.invoices and not stripe.subscriptions
        intents = {pi["id"]: pi for pi in stripe.payment_intents}
        if acct.billing == "orb":
            orb = world.orb(acct.account_id)
            assert orb is not None
            for inv in orb.invoices:
                for attempt in inv["payment_attempts"]:
                    intent = intents[attempt["payment_provider_id"]]
                    assert intent["amount"] == _cents(attempt["amount"])
                    assert intent["status"] == "succeeded"
                    assert intent["metadata"]["orb_invoice_id"] == inv["id"]
        else:
            met = world.metronome(acct.account_id)
            assert met is not None
            for inv in met.invoices:
                payment = inv["external_invoice"].get("external_payment_id")
                if inv["total"] > 0:
                    assert intents[payment]["amount"] == inv["total"]


def test_some_ordinary_accounts_have_partial_refunds(world: SandboxWorld) -> None:
    """A few ordinary accounts carry refunds, reflected on their charges."""
    refunded = 0
    for acct in [a for a in world.accounts if a.story is None][:80]:
        data = world.stripe(acct.account_id)
        assert data is not None
        for refund in data.refunds:
            refunded += 1
            charge = next(c for c in data.charges if c["id"] == refund["charge"])
            assert charge["amount_refunded"] == sum(r["amount"] for r in charge["refunds"]["data"])
            assert 0 < refund["amount"] <= charge["amount"]
            assert refund["status"] == "succeeded"
    assert refunded >= 3


# --- owner_of ---------------------------------------------------------------------------------


def _ids(obj: Any) -> Iterator[str]:
    """Every ID-looking string value in a provider object."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, str) and (key == "id" or key.endswith("_id") or key in _REFS):
                yield value
            else:
                yield from _ids(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _ids(value)


def _has(data: Any, field: str) -> bool:
    return data is not None and bool(getattr(data, field))


def _promotional_credit(data: Any) -> bool:
    return data is not None and any(b["type"] == "CREDIT" for b in data.balances)


_REFS = {"customer", "invoice", "charge", "payment_intent", "subscription", "subscription_item",
         "invoice_item", "discount", "latest_charge", "latest_invoice", "balance_transaction",
         "payment_method", "source", "default_payment_method"}  # fmt: skip


def test_owner_of_answers_for_every_object_kind(world: SandboxWorld) -> None:
    """Every object ID of every kind (Stripe, Orb, Metronome) maps back to its account."""
    seen: dict[str, set[str]] = {"stripe": set(), "orb": set(), "metronome": set()}
    ordinary = [a for a in world.accounts if a.story is None]
    refunded = next(a for a in ordinary if _has(world.stripe(a.account_id), "refunds"))
    credited = next(a for a in ordinary if _has(world.orb(a.account_id), "credit_blocks"))
    promoted = next(a for a in ordinary if _promotional_credit(world.metronome(a.account_id)))
    extra = [refunded, credited, promoted]
    for acct in [*(a for a in world.accounts if a.story is not None), *extra]:
        bundle = world.bundle(acct.account_id)
        assert bundle is not None
        for provider in ("stripe", "orb", "metronome"):
            data = getattr(bundle, provider)
            if data is None:
                continue
            for object_id in _ids(_dump(bundle)[provider]):
                decoded = world.codec.decode(object_id)
                if decoded is None:
                    continue  # catalog objects (prices, plans, products…) belong to nobody
                assert world.owner_of(object_id) == acct.account_id, object_id
                seen[decoded[0]].add(decoded[1])
    assert seen["stripe"] == set(STRIPE_KINDS)
    assert seen["orb"] == set(ORB_KINDS)
    assert seen["metronome"] == set(METRONOME_KINDS)


def test_owner_of_knows_customers_and_account_ids_without_building(world: SandboxWorld) -> None:
    """Customer IDs and account IDs resolve from the index alone."""
    fresh = build_world(seed=7, now=NOW)
    for acct in fresh.accounts[::7]:
        for object_id in (acct.stripe_customer_id, acct.orb_customer_id,
                          acct.metronome_customer_id, acct.account_id):  # fmt: skip
            if object_id:
                assert fresh.owner_of(object_id) == acct.account_id
    assert not fresh._bundles


def test_owner_of_rejects_foreign_and_shared_ids(world: SandboxWorld) -> None:
    """IDs the world did not make, and shared catalog IDs, belong to nobody."""
    acct = world.accounts[1]
    data = world.stripe(acct.account_id)
    assert data is not None
    price_id = data.invoices[0]["lines"]["data"][0]["pricing"]["price_details"]["price"]
    for object_id in (
        "cus_QXg1o8vcGmoR32", "in_1Pgc6tB7WZ01zgkWu9fdqL6I", "ch_1PgafuB7WZ01zgkWXYmPNZs8",
        "XuxCbt7x9L82yyeF", "617e39d8-68f4-4592-b8d2-c2bf26a76989", price_id, "", "acct_",
        "mtr_test_61Q8nQMqIFK9fRQmr41CMAXJrFdZ5MnA",
    ):  # fmt: skip
        assert world.owner_of(object_id) is None, object_id


def test_stripe_ids_look_real(world: SandboxWorld) -> None:
    """Stripe IDs have the real prefixes and shapes (`cus_` + 14, `in_1…` + 23)."""
    data = world.stripe("acct_initech")
    assert data is not None
    inv = data.invoices[0]
    assert re.fullmatch(r"in_1[A-Za-z0-9]{23}", inv["id"])
    assert all(re.fullmatch(r"il_1[A-Za-z0-9]{23}", li["id"]) for li in inv["lines"]["data"])
    assert re.fullmatch(r"sub_1[A-Za-z0-9]{23}", data.subscriptions[0]["id"])
    assert re.fullmatch(r"si_[A-Za-z0-9]{14}", data.subscriptions[0]["items"]["data"][0]["id"])
    assert re.fullmatch(r"ch_1[A-Za-z0-9]{23}", data.charges[0]["id"])
    assert re.fullmatch(r"pi_1[A-Za-z0-9]{23}", data.payment_intents[0]["id"])
    assert re.fullmatch(r"inpay_1[A-Za-z0-9]{23}", data.invoice_payments[0]["id"])
    assert re.fullmatch(r"mtr_test_[A-Za-z0-9]{32}", data.meters[0]["id"])
    price = data.subscriptions[0]["items"]["data"][0]["price"]
    assert re.fullmatch(r"price_1[A-Za-z0-9]{23}", price["id"])
    assert re.fullmatch(r"prod_[A-Za-z0-9]{14}", price["product"])


# --- the stories ------------------------------------------------------------------------------


def test_every_story_is_planted_once(world: SandboxWorld) -> None:
    """Each story has its account, provider, one-line description and, where it shows on an
    invoice, the latest and previous invoice of that account."""
    stories = stories_of(world)
    assert {s.key for s in stories} == STORY_KEYS
    assert len(stories) == len(STORY_KEYS)
    for story in stories:
        acct = world.account(story.account_id)
        assert acct is not None and acct.story == story.key
        assert acct.billing == story.provider
        assert story.email == acct.email
        assert story.description and "\n" not in story.description
        if story.key == "ambiguous_email":
            continue
        invoices = _invoices(world, acct)
        assert story.invoice_id == invoices[0]["id"]
        assert story.previous_invoice_id == invoices[1]["id"]
        assert world.owner_of(story.invoice_id or "") == acct.account_id
        if story.expected_finding is None:
            assert story.expected_amount is None
        else:
            assert story.expected_amount is not None and story.expected_amount > 0


def _lines_by_name(inv: Obj, provider: str) -> dict[str, Any]:
    if provider == "orb":
        return {li["name"]: li["amount"] for li in inv["line_items"]}
    if provider == "metronome":
        return {li["name"]: li["total"] for li in inv["line_items"]}
    return {
        li["description"].split(" × ", 1)[-1]: li["amount"]
        for li in inv["lines"]["data"]
        if not li["parent"]["subscription_item_details"]["proration"]
    }


def test_usage_spike_story(world: SandboxWorld) -> None:
    """Orb: API requests spiked days ago; only that line of the latest invoice grew, by the
    expected amount."""
    story = _story(world, "usage_spike")
    orb = world.orb(story.account_id)
    assert orb is not None
    latest, previous = orb.invoices[0], orb.invoices[1]
    new, old = _lines_by_name(latest, "orb"), _lines_by_name(previous, "orb")
    assert new.keys() == old.keys()
    changed = {name for name in new if new[name] != old[name]}
    assert changed == {"API requests"}
    assert Decimal(new["API requests"]) - Decimal(old["API requests"]) == story.expected_amount
    api = [
        (_ts(c["timeframe_start"]), Decimal(p["total"]))
        for c in orb.costs
        for p in c["per_price_costs"]
        if p["price"]["name"] == "API requests"
    ]
    peak_day, peak = max(api[-30:], key=lambda x: x[1])
    baseline = statistics.median(v for _, v in api[-40:-10])
    assert peak > 3 * baseline
    assert timedelta(days=2) <= world.now - peak_day <= timedelta(days=6)
    assert _ts(latest["line_items"][0]["start_date"]) <= peak_day < _ts(latest["invoice_date"])


def test_plan_change_proration_story(world: SandboxWorld) -> None:
    """Stripe: a mid-period upgrade puts a credit and a charge proration on the latest invoice
    next to the new plan's fee; the fee change is the expected amount, the prorations' net the
    second finding."""
    story = _story(world, "plan_change_proration")
    data = world.stripe(story.account_id)
    assert data is not None
    latest, previous = data.invoices[0], data.invoices[1]
    assert latest["billing_reason"] == "subscription_cycle"
    prorations = [
        li for li in latest["lines"]["data"]
        if li["parent"]["subscription_item_details"]["proration"]
    ]  # fmt: skip
    assert len(prorations) == 2
    credit, debit = sorted(prorations, key=lambda li: li["amount"])
    assert credit["amount"] < 0 < debit["amount"]
    assert credit["description"].startswith("Unused time on Growth")
    assert debit["description"].startswith("Remaining time on Pro")
    details = credit["parent"]["subscription_item_details"]
    assert details["proration_details"]["credited_items"]["invoice"] == previous["id"]
    assert details["invoice_item"].startswith("ii_")
    assert Decimal(credit["amount"] + debit["amount"]) / 100 == proration_net(world, story)
    assert story.expected_finding == "plan_change"
    assert story.expected_amount == Decimal("500.00")  # Pro $799 replaces Growth $299
    assert not any(
        li["parent"]["subscription_item_details"]["proration"] for li in previous["lines"]["data"]
    )
    new, old = _lines_by_name(latest, "stripe"), _lines_by_name(previous, "stripe")
    assert new.pop("Pro (at $799.00 / month)") == 79_900
    assert old.pop("Growth (at $299.00 / month)") == 29_900
    assert new == old  # usage unchanged
    assert "plan_change" in story.description


def test_expired_coupon_story(world: SandboxWorld) -> None:
    """Stripe: the previous invoice had a 20% discount, the latest has none, usage unchanged."""
    story = _story(world, "expired_coupon")
    data = world.stripe(story.account_id)
    assert data is not None
    latest, previous = data.invoices[0], data.invoices[1]
    assert previous["discounts"] and previous["total_discount_amounts"]
    assert not latest["discounts"] and not latest["total_discount_amounts"]
    discount = sum(d["amount"] for d in previous["total_discount_amounts"])
    assert Decimal(discount) / 100 == story.expected_amount
    assert abs(discount - previous["subtotal"] // 5) <= len(previous["lines"]["data"])
    assert _lines_by_name(latest, "stripe") == _lines_by_name(previous, "stripe")
    assert latest["total"] - previous["total"] == discount


def test_duplicate_charge_story(world: SandboxWorld) -> None:
    """Stripe: the latest invoice was paid twice within 24 hours, same amount, one invoice."""
    story = _story(world, "duplicate_charge")
    data = world.stripe(story.account_id)
    assert data is not None
    latest = data.invoices[0]
    payments = [p for p in data.invoice_payments if p["invoice"] == latest["id"]]
    assert len(payments) == 2 and all(p["status"] == "paid" for p in payments)
    intents = {p["payment"]["payment_intent"] for p in payments}
    charges = [c for c in data.charges if c["payment_intent"] in intents]
    assert len(charges) == 2
    assert all(c["status"] == "succeeded" for c in charges)
    assert charges[0]["amount"] == charges[1]["amount"] == latest["amount_due"]
    assert abs(charges[0]["created"] - charges[1]["created"]) < 24 * 3600
    assert Decimal(charges[0]["amount"]) / 100 == story.expected_amount
    assert latest["amount_overpaid"] == latest["amount_due"]
    assert data.customer["balance"] == -latest["amount_due"]


def test_failed_payment_dunning_story(world: SandboxWorld) -> None:
    """Stripe: the latest invoice is open after three declines, next retry scheduled, the
    subscription past_due."""
    story = _story(world, "failed_payment_dunning")
    data = world.stripe(story.account_id)
    assert data is not None
    latest = data.invoices[0]
    assert latest["status"] == "open"
    assert latest["attempt_count"] == 3 and latest["attempted"]
    assert latest["amount_paid"] == 0 and latest["amount_remaining"] == latest["amount_due"]
    assert _day(latest["next_payment_attempt"]) > world.now
    intent_id = latest["payments"]["data"][0]["payment"]["payment_intent"]
    failed = [c for c in data.charges if c["payment_intent"] == intent_id]
    assert len(failed) == 3 and all(c["status"] == "failed" for c in failed)
    assert {c["failure_code"] for c in failed} == {"card_declined"}
    assert "insufficient_funds" in {c["outcome"]["reason"] for c in failed}
    intent = next(p for p in data.payment_intents if p["id"] == intent_id)
    assert intent["status"] == "requires_payment_method"
    assert intent["last_payment_error"]["decline_code"] == "insufficient_funds"
    assert data.subscriptions[0]["status"] == "past_due"
    assert data.customer["delinquent"] is True
    assert story.expected_finding is None


def test_open_dispute_story(world: SandboxWorld) -> None:
    """Stripe: the latest invoice's charge is disputed, needs a response, evidence due in 5 days."""
    story = _story(world, "open_dispute")
    data = world.stripe(story.account_id)
    assert data is not None
    (dispute,) = data.disputes
    assert dispute["status"] == "needs_response"
    assert dispute["reason"] == "product_not_received"
    assert _day(dispute["evidence_details"]["due_by"]) == world.now + timedelta(days=5)
    assert _day(dispute["created"]) < world.now
    charge = next(c for c in data.charges if c["id"] == dispute["charge"])
    assert charge["disputed"] is True and dispute["amount"] == charge["amount"]
    latest_intent = data.invoices[0]["payments"]["data"][0]["payment"]["payment_intent"]
    assert charge["payment_intent"] == dispute["payment_intent"] == latest_intent
    assert story.expected_finding is None


def test_new_addon_story(world: SandboxWorld) -> None:
    """Metronome: a contract amendment added Premium Support, a new line on the latest invoice."""
    story = _story(world, "new_addon")
    met = world.metronome(story.account_id)
    assert met is not None
    new, old = (
        _lines_by_name(met.invoices[0], "metronome"),
        _lines_by_name(met.invoices[1], "metronome"),
    )
    assert set(new) - set(old) == {"Premium Support"}
    assert Decimal(new.pop("Premium Support")) / 100 == story.expected_amount
    assert new == old
    (contract,) = met.contracts
    (amendment,) = contract["amendments"]
    assert amendment["scheduled_charges"][0]["name"] == "Premium Support"


def test_tax_change_story(world: SandboxWorld) -> None:
    """Stripe: the tax rate went from 7% to 9% with the same lines, so only tax changed."""
    story = _story(world, "tax_change")
    data = world.stripe(story.account_id)
    assert data is not None
    latest, previous = data.invoices[0], data.invoices[1]
    assert _lines_by_name(latest, "stripe") == _lines_by_name(previous, "stripe")
    (tax_new,), (tax_old,) = latest["total_taxes"], previous["total_taxes"]
    assert tax_new["tax_rate_details"]["tax_rate"] != tax_old["tax_rate_details"]["tax_rate"]
    assert Decimal(tax_new["amount"] - tax_old["amount"]) / 100 == story.expected_amount
    assert tax_old["amount"] == round(tax_old["taxable_amount"] * 0.07)
    assert tax_new["amount"] == round(tax_new["taxable_amount"] * 0.09)
    rates = data.subscriptions[0]["default_tax_rates"]
    assert [r["percentage"] for r in rates] == [9.0]


def test_depleted_credits_story(world: SandboxWorld) -> None:
    """Metronome: the prepaid commit ran out during the latest period: less of it was applied,
    and its balance is now 0."""
    story = _story(world, "depleted_credits")
    met = world.metronome(story.account_id)
    assert met is not None
    latest, previous = met.invoices[0], met.invoices[1]

    def applied(inv: Obj) -> int:
        lines = inv["line_items"]
        return -sum(int(li["total"]) for li in lines if li["type"] == "applied_commit_or_credit")

    assert applied(previous) > applied(latest) > 0
    assert Decimal(applied(previous) - applied(latest)) / 100 == story.expected_amount
    usage = [li for li in latest["line_items"] if li["type"] != "applied_commit_or_credit"]
    usage_before = [li for li in previous["line_items"] if li["type"] != "applied_commit_or_credit"]
    assert [li["total"] for li in usage] == [li["total"] for li in usage_before]
    (commit,) = met.balances
    assert commit["balance"] == 0
    deductions = [e for e in commit["ledger"] if e["amount"] < 0]
    assert sum(e["amount"] for e in commit["ledger"]) == 0
    assert deductions[-1]["invoice_id"] == latest["id"]


def test_multi_provider_story(world: SandboxWorld) -> None:
    """One account in Stripe, Orb and Metronome at once; Stripe charges pay both providers."""
    story = _story(world, "multi_provider")
    bundle = world.bundle(story.account_id)
    assert bundle is not None
    assert bundle.stripe and bundle.orb and bundle.metronome
    assert bundle.orb.invoices and bundle.metronome.invoices
    kinds = {key for pi in bundle.stripe.payment_intents for key in pi["metadata"]}
    assert {"orb_invoice_id", "metronome_invoice_id"} <= kinds


def test_ambiguous_email_story(world: SandboxWorld) -> None:
    """Two Stripe customers with different account IDs share one email."""
    story = _story(world, "ambiguous_email")
    same = [a for a in world.accounts if a.email == story.email]
    assert len(same) == 2
    customers = [world.stripe(a.account_id) for a in same]
    assert all(c is not None for c in customers)
    metas = {c.customer["metadata"]["account_id"] for c in customers if c}
    assert metas == {a.account_id for a in same}
    emails = [a.email for a in world.accounts]
    assert emails.count(story.email) == 2
    assert sum(emails.count(e) > 1 for e in set(emails)) == 1  # the only shared email


def test_a_now_with_a_time_of_day_keeps_periods_at_midnight() -> None:
    """Given a `now` in the afternoon, periods still turn at midnight and the dispute is due
    exactly five days after `now`."""
    afternoon = NOW.replace(hour=13, minute=45)
    w = build_world(now=afternoon, ordinary_accounts=0)
    dispute = w.stripe("acct_fabrikam")
    assert dispute is not None
    assert _day(dispute.disputes[0]["evidence_details"]["due_by"]) == afternoon + timedelta(days=5)
    orb = w.orb("acct_northwind")
    assert orb is not None
    assert _ts(orb.invoices[0]["invoice_date"]).hour == 0
    assert _ts(orb.costs[-1]["timeframe_end"]) <= afternoon


def test_naive_now_is_refused() -> None:
    """A `now` without a time zone is a programming error, caught at once."""
    with pytest.raises(ValueError, match="aware"):
        build_world(now=datetime(2026, 3, 15))  # naive on purpose


def test_more_accounts_than_names_get_numbered_ids() -> None:
    """Past the list of company names, ordinary accounts are numbered (`acct_00001`…)."""
    w = build_world(now=NOW, ordinary_accounts=1200, population=False)
    ids = [a.account_id for a in w.accounts]
    assert len(set(ids)) == len(ids) == 1212
    assert "acct_00001" in ids
    assert w.owner_of(str(w.accounts[-1].stripe_customer_id)) == ids[-1]


def test_the_labelled_population_follows_the_ordinary_accounts(world: SandboxWorld) -> None:
    """Every population plant is an account after the stories and the ordinary ones, billed by
    the provider it names, its objects' IDs owned by it, and labelled only in the recent past."""
    accounts = {a.account_id: a for a in world.accounts}
    first = min(accounts[p.account_id].number for p in POPULATION)
    assert first == 12 + 300
    for plant in POPULATION:
        acct = accounts[plant.account_id]
        assert (acct.plant, acct.story, acct.billing) == (plant.key, None, plant.billing)
        assert all(0 <= ago <= 20 for _, ago in plant.expected)
    bundle = world.bundle(POPULATION[0].account_id)
    assert bundle is not None and bundle.orb is not None
    assert world.owner_of(bundle.orb.invoices[0]["id"]) == POPULATION[0].account_id

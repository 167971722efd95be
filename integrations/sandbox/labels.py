"""The truth the anomaly detectors are measured against: which alerts a scan of the sandbox world
at its `now` should raise, kept beside the data that makes them true.

`expected_alerts(world)` maps account IDs to `{(kind, period)}`; every account not listed should
raise no alert. The labels come from what was planted (the population's `Plant.expected`, the
stories below), never from running a detector. The ordinary accounts are drawn so that nothing in
them is an anomaly (their noise is bounded and their growth gentle, every payment succeeds), so
none of them is listed.

A scan looks only at recent days (`DetectorConfig.usage_days_back` complete days for usage,
`invoice_days_back` for invoices); a planted anomaly older than that window is not expected from
a scan at `now` (it was due when it happened), so it is left out here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from integrations.sandbox.population import POPULATION
from integrations.sandbox.specs import spec_for
from integrations.sandbox.stories import stories_of
from integrations.sandbox.world import SandboxWorld

__all__ = ["KINDS", "Label", "Quality", "Score", "expected_alerts", "score", "story_alerts"]

KINDS = ("usage_spike", "invoice_jump", "payment_failed", "dispute_opened", "duplicate_charge")
Label = tuple[str, date]  # (kind, period)

#: The default floors a spike and an invoice jump must clear (`DetectorConfig`).
_SPIKE_MIN = Decimal(50)
_JUMP_MIN = Decimal(100)
_JUMP_PCT = Decimal(25)


def story_alerts(world: SandboxWorld) -> dict[str, set[Label]]:
    """The planted stories that are anomalies, with their periods as the generator placed them:

    - northwind: API requests ×7 and ×5 on the 3rd and 2nd days before its latest invoice
      (which is a day old), so 4 and 3 days before `now`; and an invoice jump if the spike's
      extra cost clears the jump floors against the invoice before;
    - globex: its latest invoice (2 days old) paid again 5 h 13 min after it was finalized;
    - contoso: its latest invoice (8 days old) declined on finalizing, then twice more, and
      still unpaid: the failure is dated by the first decline;
    - fabrikam: a dispute opened 2 days before `now`;
    - massive: its latest invoice (3 days old) costs what the ones before did, but only because
      the prepaid commit paid for AI inference doubling: compared before credits (as the
      detector compares), it is an invoice jump, and on-call should hear the commit will run
      out months early.

    The other stories are tricky non-anomalies: a plan change with prorations (initech), an
    expired coupon (hooli), a contract amendment's new line (tyrell), a tax change (soylent),
    a used-up commit (cyberdyne), several providers (wonka), a shared email (aperture).
    """
    today = world.now.date()
    out: dict[str, set[Label]] = {}

    def days_ago(n: int) -> date:
        return today - timedelta(days=n)

    def latest(account_id: str) -> int:
        spec = spec_for(account_id)
        assert spec is not None
        return spec.latest_invoice_days_ago

    if world.account("acct_northwind") is not None:
        base = latest("acct_northwind")
        orb = world.orb("acct_northwind")
        assert orb is not None
        labels: set[Label] = set()
        for ago, factor in ((base + 3, 7), (base + 2, 5)):
            # The spike's extra cost must clear the money floor (the API volume is drawn per
            # seed: at the default seed it does, at some seeds the story is a small account).
            cost = _orb_cost(orb.costs, days_ago(ago), "API requests")
            if cost * (factor - 1) / factor >= _SPIKE_MIN:
                labels.add(("usage_spike", days_ago(ago)))
        story = next(s for s in stories_of(world) if s.account_id == "acct_northwind")
        assert story.expected_amount is not None
        previous = Decimal(orb.invoices[1]["total"])
        extra = story.expected_amount
        if extra >= _JUMP_MIN and extra * 100 >= _JUMP_PCT * previous:
            labels.add(("invoice_jump", days_ago(base)))
        if labels:
            out["acct_northwind"] = labels
    if world.account("acct_globex") is not None:
        out["acct_globex"] = {("duplicate_charge", days_ago(latest("acct_globex")))}
    if world.account("acct_contoso") is not None:
        out["acct_contoso"] = {("payment_failed", days_ago(latest("acct_contoso")))}
    if world.account("acct_fabrikam") is not None:
        out["acct_fabrikam"] = {("dispute_opened", days_ago(2))}
    if world.account("acct_massive") is not None:
        out["acct_massive"] = {("invoice_jump", days_ago(latest("acct_massive")))}
    return out


def _orb_cost(costs: list[dict[str, Any]], day: date, metric: str) -> Decimal:
    """One metric's cost on one day, from Orb's daily cost buckets."""
    stamp = day.isoformat()
    for bucket in costs:
        if str(bucket["timeframe_start"]).startswith(stamp):
            for item in bucket["per_price_costs"]:
                if item["price"]["name"] == metric:
                    return Decimal(str(item["total"]))
    return Decimal(0)


def expected_alerts(
    world: SandboxWorld, *, usage_days_back: int = 3, invoice_days_back: int = 7
) -> dict[str, set[Label]]:
    """account ID → the alerts a scan at `world.now` should raise (kind, period); accounts not
    listed should raise none. Usage spikes count only on the last `usage_days_back` complete days
    and invoice jumps on invoices of the last `invoice_days_back` days (the scan's windows)."""
    today = world.now.date()
    out = story_alerts(world)
    for plant in POPULATION:
        if world.account(plant.account_id) is None:
            continue
        out[plant.account_id] = {
            (kind, today - timedelta(days=ago)) for kind, ago in plant.expected
        }
    for account_id, labels in out.items():
        out[account_id] = {
            (kind, period)
            for kind, period in labels
            if not (kind == "usage_spike" and (today - period).days > usage_days_back)
            and not (kind == "invoice_jump" and (today - period).days > invoice_days_back)
        }
    return {account_id: labels for account_id, labels in out.items() if labels}


@dataclass(frozen=True, slots=True)
class Score:
    """True positives, false alarms and misses of one kind (or of all kinds)."""

    kind: str
    hits: int
    false_alarms: int
    misses: int

    @property
    def precision(self) -> float:
        """Share of raised alerts that were expected (1.0 when none was raised)."""
        raised = self.hits + self.false_alarms
        return self.hits / raised if raised else 1.0

    @property
    def recall(self) -> float:
        """Share of expected alerts that were raised (1.0 when none was expected)."""
        expected = self.hits + self.misses
        return self.hits / expected if expected else 1.0


@dataclass(frozen=True, slots=True)
class Quality:
    """How a scan compares with the labels: per kind, overall, and every miss and false alarm
    as (account ID, kind, period)."""

    per_kind: dict[str, Score]
    overall: Score
    misses: list[tuple[str, str, date]] = field(default_factory=list)
    false_alarms: list[tuple[str, str, date]] = field(default_factory=list)


def score(found: Mapping[str, set[Label]], expected: Mapping[str, set[Label]]) -> Quality:
    """Compare what a scan raised (account ID → {(kind, period)}) with the labels."""
    misses: list[tuple[str, str, date]] = []
    false_alarms: list[tuple[str, str, date]] = []
    hits: dict[str, int] = dict.fromkeys(KINDS, 0)
    for account_id in sorted(set(found) | set(expected)):
        raised = found.get(account_id, set())
        wanted = expected.get(account_id, set())
        for kind, _period in sorted(raised & wanted):
            hits[kind] = hits.get(kind, 0) + 1
        misses.extend((account_id, k, p) for k, p in sorted(wanted - raised))
        false_alarms.extend((account_id, k, p) for k, p in sorted(raised - wanted))
    per_kind = {
        kind: Score(
            kind,
            hits.get(kind, 0),
            sum(1 for _, k, _ in false_alarms if k == kind),
            sum(1 for _, k, _ in misses if k == kind),
        )
        for kind in KINDS
    }
    overall = Score("overall", sum(hits.values()), len(false_alarms), len(misses))
    return Quality(per_kind, overall, misses, false_alarms)

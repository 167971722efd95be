"""Budgets of `/billing explain` (issue 4): findings CPU time and the explain prompt's size.

Builds 13 monthly invoices (12 months of history) of N lines each with `bench/explain_findings.py`
(usage on many metrics, seats, add-ons that come and go, a plan change with prorations, a coupon,
tax, credits, a duplicate charge), wraps them in a billing snapshot, and measures:

- findings: `explain_snapshot` (pick the invoice, run the findings engine), CPU ms per call with
  `time.process_time` over many calls; budget under 50 ms for 300 lines;
- the fact sheet and both standard texts (`build_facts`, `explain_text`, `draft_text`), CPU ms;
- the explain and draft prompts (system + user) in estimated tokens, by `token_estimate`
  (documented in `bot/services/wording.py`: it mirrors how GPT tokenizers pre-split text and
  errs high); budget under 2,000 whatever the invoice size, so it is also shown for 1,000 and
  3,000 lines.

    python bench/explain.py [--lines 300 1000 3000] [--months 12] [--repeat 100]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# After the path setup: the invoice builders of the findings benchmark, next to this file.
from explain_findings import build_invoice, build_payments

from bot.domain.models import (
    AccountRef,
    BillingSnapshot,
    CustomerRecord,
    ProviderSnapshot,
    Subscription,
    SubscriptionStatus,
)
from bot.services.explain import (
    build_facts,
    draft_text,
    explain_snapshot,
    explain_text,
)
from bot.services.wording import build_prompt

FINDINGS_BUDGET_MS = 50.0
PROMPT_BUDGET_TOKENS = 2000
NOTES = "customer says they were charged twice and that usage looks much higher than last month"


def build_snapshot(lines: int, months: int) -> BillingSnapshot:
    """One Stripe account with `months + 1` invoices of `lines` lines and a year of payments."""
    rng = random.Random(7)
    invoices = [build_invoice(rng, month, lines) for month in range(months + 1)]
    payments = build_payments(invoices)
    customer = CustomerRecord("stripe", "cus_bench", "acct_bench", name="Bench Industries")
    subscription = Subscription(
        provider="stripe", id="sub_bench", status=SubscriptionStatus.ACTIVE, plan_name="Pro"
    )
    return BillingSnapshot(
        account=AccountRef("acct_bench", {"stripe": "cus_bench"}, display_name="Bench Industries"),
        providers=(
            ProviderSnapshot(
                "stripe",
                customer,
                subscriptions=(subscription,),
                invoices=tuple(reversed(invoices)),
                payments=tuple(reversed(payments)),
            ),
        ),
        fetched_at=datetime.now(UTC),
    )


def cpu_ms(call: Callable[[], object], repeat: int) -> float:
    """CPU milliseconds per call of `call`, over `repeat` calls after one warm-up."""
    call()
    started = time.process_time()
    for _ in range(repeat):
        call()
    return (time.process_time() - started) * 1000 / repeat


def measure(lines: int, months: int, repeat: int) -> bool:
    """Print one size's numbers; True when within both budgets."""
    snapshot = build_snapshot(lines, months)
    explanation = explain_snapshot(snapshot)
    findings_ms = cpu_ms(lambda: explain_snapshot(snapshot), repeat)

    def texts() -> object:
        facts = build_facts(snapshot, explanation)
        return explain_text(explanation, facts), draft_text(snapshot, explanation, notes=NOTES)

    texts_ms = cpu_ms(texts, max(1, repeat // 4))
    facts = build_facts(snapshot, explanation)
    explain_prompt = build_prompt(kind="explain", facts=facts)
    draft_prompt = build_prompt(kind="draft", facts=facts, engineer_notes=NOTES)
    assert explain_prompt is not None and draft_prompt is not None
    within_cpu = lines > 300 or findings_ms < FINDINGS_BUDGET_MS
    within_tokens = max(explain_prompt.tokens, draft_prompt.tokens) < PROMPT_BUDGET_TOKENS
    print(
        f"{lines:>5} lines × {months + 1} invoices: {len(explanation.findings)} findings, "
        f"{len(facts.lines)} fact lines"
    )
    budget = f" (budget {FINDINGS_BUDGET_MS:.0f} ms)" if lines <= 300 else ""
    print(f"      findings        {findings_ms:8.2f} ms CPU per call{budget}")
    print(f"      facts + texts   {texts_ms:8.2f} ms CPU per call")
    print(
        f"      explain prompt  {explain_prompt.tokens:8d} tokens (est.), "
        f"{explain_prompt.omitted} fact lines left out"
    )
    print(
        f"      draft prompt    {draft_prompt.tokens:8d} tokens (est.), "
        f"{draft_prompt.omitted} fact lines left out "
        f"(budget {PROMPT_BUDGET_TOKENS:,})"
    )
    return within_cpu and within_tokens


def main() -> None:
    """Measure every size and say whether each is within budget."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[300, 1000, 3000])
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=100)
    args = parser.parse_args()
    ok = True
    for lines in args.lines:
        repeat = max(5, args.repeat * 300 // max(lines, 300))
        ok = measure(lines, args.months, repeat) and ok
    print("within budget" if ok else "OVER BUDGET")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

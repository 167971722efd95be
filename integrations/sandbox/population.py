"""The sandbox's labelled population: accounts with a planted anomaly of every kind in every
provider shape, and tricky accounts that look unusual but are not anomalies, so the anomaly
detectors' quality is measured rather than guessed (`labels.expected_alerts`).

Pure data, like `specs`: the world indexes these accounts after the stories and the ordinary ones
(`build_world(population=True)`), the generator (`generate`) plants what each one says. Days are
counted back from the world's `now`, so the population stays valid as the calendar moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["POPULATION", "Plant", "plant_for"]

Kind = Literal[
    "usage_spike", "invoice_jump", "payment_failed", "dispute_opened", "duplicate_charge"
]
PaymentPlant = Literal["failed", "retried", "duplicate", "dispute"]

ALL = ("api_requests", "compute_hours", "storage_gb_days")


@dataclass(frozen=True, slots=True)
class Plant:
    """One population account: its usage shape, what is planted, and the alerts it should give.

    Usage: `level` places the account's daily volume of each metric in the metric's typical range
    (0 smallest, 1 largest, log scale) as it is now; `growth` compounds per month; `weekend` is
    the Saturday/Sunday factor; `noise` the day-to-day standard deviation (multiplicative).
    """

    key: str
    billing: Literal["stripe", "orb", "metronome"]
    title: str
    #: The latest invoice's date (the end of the latest billing period), days before `now`.
    latest_invoice_days_ago: int = 15
    metrics: tuple[str, ...] = ALL
    level: float = 0.7
    growth: float = 0.02
    weekend: float = 0.7
    noise: float = 0.06
    plan: str = "growth"
    #: (metric, days ago, factor): that day's usage multiplied.
    spikes: tuple[tuple[str, int, float], ...] = ()
    #: (days ago, factor): usage multiplied from that day on (a sustained rise).
    step: tuple[int, float] | None = None
    #: (every N days, the latest this many days ago, factor): a recurring peak (a monthly batch).
    peaks: tuple[int, int, float] | None = None
    #: Usage began this many days ago (ramping up over its first days); None = long history.
    usage_days: int | None = None
    #: (description, dollars): a one-time charge on the latest invoice.
    one_off: tuple[str, int] | None = None
    #: (description, dollars): a one-off credit line on the invoice before the latest (Stripe).
    credit: tuple[str, int] | None = None
    #: A planned plan change on the latest invoice: a Stripe mid-period upgrade with prorations,
    #: or a Metronome contract amendment adding a line.
    upgrade: bool = False
    #: Metronome: a contract amendment this many days ago (its new charge starts next period).
    amend_days_ago: int | None = None
    #: What happens to the latest invoice's payment.
    payment: PaymentPlant | None = None
    dispute_reason: str = "fraudulent"
    dispute_days_ago: int = 2
    #: The alerts a scan at `now` should raise: (kind, days before `now` of its period).
    expected: tuple[tuple[Kind, int], ...] = ()

    @property
    def account_id(self) -> str:
        """Our account ID of the plant."""
        return f"acct_pop_{self.key}"

    @property
    def name(self) -> str:
        """The customer's display name."""
        return "Pop " + self.key.replace("_", " ").title()

    @property
    def email(self) -> str:
        """The billing email."""
        return f"billing@pop-{self.key.replace('_', '-')}.example"


POPULATION: tuple[Plant, ...] = (
    # --- usage spikes: Orb costs -------------------------------------------------------------
    Plant("spike_orb_api", "orb", "API requests 5× yesterday",
       spikes=(("api_requests", 1, 5),), expected=(("usage_spike", 1),)),
    Plant("spike_orb_compute", "orb", "Compute hours 8× two days ago",
       spikes=(("compute_hours", 2, 8),), expected=(("usage_spike", 2),)),
    Plant("spike_orb_storage", "orb", "Storage 3× three days ago", level=0.8,
       spikes=(("storage_gb_days", 3, 3),), expected=(("usage_spike", 3),)),
    Plant("spike_orb_two_days", "orb", "API requests 4× on two days running",
       spikes=(("api_requests", 2, 4), ("api_requests", 1, 4)),
       expected=(("usage_spike", 2), ("usage_spike", 1))),
    Plant("spike_orb_growing", "orb", "API requests 4× on an account growing 30%/month",
       growth=0.3, spikes=(("api_requests", 1, 4),), expected=(("usage_spike", 1),)),
    Plant("spike_orb_weekend_heavy", "orb", "Compute 6× on a weekend-heavy account", weekend=2.2,
       spikes=(("compute_hours", 2, 6),), expected=(("usage_spike", 2),)),
    Plant("spike_orb_two_metrics", "orb", "API requests 6× and compute 4× on one day",
       spikes=(("api_requests", 1, 6), ("compute_hours", 1, 4)), expected=(("usage_spike", 1),)),
    Plant("spike_orb_noisy", "orb", "API requests 6× on a noisy account (20%)", noise=0.2,
       spikes=(("api_requests", 2, 6),), expected=(("usage_spike", 2),)),
    Plant("spike_orb_new_usage", "orb", "API requests 8× after 8 days of use (rules)",
       usage_days=9, spikes=(("api_requests", 1, 8),), expected=(("usage_spike", 1),)),
    Plant("spike_orb_large", "orb", "Storage 2× on a large account", level=0.95,
       spikes=(("storage_gb_days", 1, 2),), expected=(("usage_spike", 1),)),
    # --- usage spikes: Stripe meters ----------------------------------------------------------
    Plant("spike_stripe_api", "stripe", "API requests 6× yesterday",
       spikes=(("api_requests", 1, 6),), expected=(("usage_spike", 1),)),
    Plant("spike_stripe_compute", "stripe", "Compute hours 4× two days ago",
       spikes=(("compute_hours", 2, 4),), expected=(("usage_spike", 2),)),
    Plant("spike_stripe_storage", "stripe", "Storage 10× three days ago",
       spikes=(("storage_gb_days", 3, 10),), expected=(("usage_spike", 3),)),
    Plant("spike_stripe_growing", "stripe", "API requests 5× on an account growing 35%/month",
       growth=0.35, spikes=(("api_requests", 1, 5),), expected=(("usage_spike", 1),)),
    Plant("spike_stripe_new_usage", "stripe", "Compute 10× after 6 days of use (rules)",
       usage_days=7, spikes=(("compute_hours", 1, 10),), expected=(("usage_spike", 1),)),
    Plant("spike_stripe_weekend_heavy", "stripe", "Storage 5× on a weekend-heavy account",
       weekend=2.5, spikes=(("storage_gb_days", 2, 5),), expected=(("usage_spike", 2),)),
    # --- usage spikes: Metronome quantities (priced by the invoices' unit prices) -------------
    Plant("spike_metronome_api", "metronome", "API requests 5× yesterday",
       spikes=(("api_requests", 1, 5),), expected=(("usage_spike", 1),)),
    Plant("spike_metronome_compute", "metronome", "Compute hours 6× two days ago",
       spikes=(("compute_hours", 2, 6),), expected=(("usage_spike", 2),)),
    Plant("spike_metronome_storage", "metronome", "Storage 4× three days ago",
       spikes=(("storage_gb_days", 3, 4),), expected=(("usage_spike", 3),)),
    Plant("spike_metronome_noisy", "metronome", "API requests 7× on a noisy account (18%)",
       noise=0.18, spikes=(("api_requests", 1, 7),), expected=(("usage_spike", 1),)),
    Plant("spike_metronome_new_usage", "metronome", "Storage 6× after 9 days of use (rules)",
       usage_days=10, spikes=(("storage_gb_days", 1, 6),), expected=(("usage_spike", 1),)),
    Plant("spike_metronome_growing", "metronome", "Compute 5× on an account growing 30%/month",
       growth=0.3, spikes=(("compute_hours", 2, 5),), expected=(("usage_spike", 2),)),
    # --- invoice jumps ------------------------------------------------------------------------
    Plant("jump_stripe_one_off", "stripe", "A $4,000 one-time line on a normal invoice",
       latest_invoice_days_ago=2, one_off=("Onboarding services", 4_000),
       expected=(("invoice_jump", 2),)),
    Plant("jump_stripe_small_one_off", "stripe", "A $600 one-time line on a small account",
       latest_invoice_days_ago=5, level=0.25, plan="starter",
       one_off=("Extra seats (one-time)", 600), expected=(("invoice_jump", 5),)),
    Plant("jump_stripe_usage_step", "stripe", "Usage tripled for most of the last period",
       latest_invoice_days_ago=4, step=(22, 3), expected=(("invoice_jump", 4),)),
    Plant("jump_orb_one_off", "orb", "A $3,000 one-time Orb fee on a normal invoice",
       latest_invoice_days_ago=3, one_off=("Data migration", 3_000),
       expected=(("invoice_jump", 3),)),
    Plant("jump_orb_growing_one_off", "orb", "A $2,500 one-time fee, growing 30%/month",
       latest_invoice_days_ago=6, growth=0.3, one_off=("Premium onboarding", 2_500),
       expected=(("invoice_jump", 6),)),
    Plant("jump_orb_usage_step", "orb", "Usage 2.5× for most of the last period",
       latest_invoice_days_ago=2, step=(25, 2.5), expected=(("invoice_jump", 2),)),
    Plant("jump_metronome_one_off", "metronome", "A $5,000 one-time scheduled charge",
       latest_invoice_days_ago=1, one_off=("Implementation services", 5_000),
       expected=(("invoice_jump", 1),)),
    Plant("jump_metronome_usage_step", "metronome", "Usage tripled for most of the last period",
       latest_invoice_days_ago=5, step=(20, 3), expected=(("invoice_jump", 5),)),
    # --- failed payments ----------------------------------------------------------------------
    Plant("failed_stripe_declined", "stripe", "The latest invoice's payment was declined",
       latest_invoice_days_ago=2, payment="failed", expected=(("payment_failed", 2),)),
    Plant("failed_stripe_recent", "stripe", "The latest invoice's payment was declined",
       latest_invoice_days_ago=5, plan="pro", payment="failed",
       expected=(("payment_failed", 5),)),
    Plant("failed_stripe_still_unpaid", "stripe", "Declined 12 days ago and still unpaid",
       latest_invoice_days_ago=12, payment="failed", expected=(("payment_failed", 12),)),
    Plant("failed_orb_attempt", "orb", "Orb's payment attempt failed (payment_failed_at)",
       latest_invoice_days_ago=1, payment="failed", expected=(("payment_failed", 1),)),
    Plant("failed_orb_attempt_older", "orb", "Orb's payment attempt failed four days ago",
       latest_invoice_days_ago=4, payment="failed", expected=(("payment_failed", 4),)),
    Plant("failed_metronome_charge", "metronome", "The Stripe charge of a Metronome invoice failed",
       latest_invoice_days_ago=3, payment="failed", expected=(("payment_failed", 3),)),
    # --- disputes -----------------------------------------------------------------------------
    Plant("dispute_stripe_fraudulent", "stripe", "A fraudulent-charge dispute two days ago",
       latest_invoice_days_ago=9, payment="dispute", dispute_days_ago=2,
       expected=(("dispute_opened", 2),)),
    Plant("dispute_stripe_duplicate", "stripe", "A 'duplicate' dispute five days ago",
       latest_invoice_days_ago=8, payment="dispute", dispute_reason="duplicate",
       dispute_days_ago=5, expected=(("dispute_opened", 5),)),
    Plant("dispute_stripe_still_open", "stripe", "Opened 15 days ago, still needs a response",
       latest_invoice_days_ago=20, payment="dispute", dispute_reason="product_unacceptable",
       dispute_days_ago=15, expected=(("dispute_opened", 15),)),
    Plant("dispute_orb_canceled", "orb", "A subscription_canceled dispute on an Orb payment",
       latest_invoice_days_ago=7, payment="dispute", dispute_reason="subscription_canceled",
       dispute_days_ago=1, expected=(("dispute_opened", 1),)),
    Plant("dispute_metronome_unrecognized", "metronome", "An unrecognized-charge dispute",
       latest_invoice_days_ago=10, payment="dispute", dispute_reason="unrecognized",
       dispute_days_ago=3, expected=(("dispute_opened", 3),)),
    # --- duplicate charges --------------------------------------------------------------------
    Plant("duplicate_stripe_paid_twice", "stripe", "The latest invoice paid twice within hours",
       latest_invoice_days_ago=3, payment="duplicate", expected=(("duplicate_charge", 3),)),
    Plant("duplicate_stripe_paid_twice_older", "stripe", "An invoice paid twice six days ago",
       latest_invoice_days_ago=6, plan="scale", payment="duplicate",
       expected=(("duplicate_charge", 6),)),
    Plant("duplicate_orb_recharged", "orb", "An Orb invoice's charge run again by hand",
       latest_invoice_days_ago=2, payment="duplicate", expected=(("duplicate_charge", 2),)),
    Plant("duplicate_metronome_recharged", "metronome", "A Metronome invoice charged twice",
       latest_invoice_days_ago=4, payment="duplicate", expected=(("duplicate_charge", 4),)),
    # --- tricky accounts that are not anomalies -----------------------------------------------
    Plant("growth_orb_strong", "orb", "Steady 40%/month growth", growth=0.4,
       latest_invoice_days_ago=3),
    Plant("growth_stripe_strong", "stripe", "Steady 45%/month growth", growth=0.45,
       latest_invoice_days_ago=2),
    Plant("growth_metronome_strong", "metronome", "Steady 35%/month growth", growth=0.35,
       latest_invoice_days_ago=4),
    Plant("weekend_orb_heavy", "orb", "Weekends 2.5× weekdays", weekend=2.5),
    Plant("weekend_stripe_heavy", "stripe", "Weekends 3× weekdays", weekend=3.0),
    Plant("weekend_metronome_quiet", "metronome", "Weekends at a fifth of weekdays", weekend=0.2),
    Plant("upgrade_stripe_midperiod", "stripe", "A planned mid-period upgrade with prorations",
       latest_invoice_days_ago=2, plan="starter", upgrade=True),
    Plant("amendment_metronome_addon", "metronome", "An amendment added Premium Support",
       latest_invoice_days_ago=3, level=0.3, plan="starter", upgrade=True),
    Plant("amendment_metronome_usage", "metronome", "Usage 4× since an amendment two days ago",
       amend_days_ago=2, step=(2, 4)),
    Plant("retried_stripe_payment", "stripe", "Declined, then paid on the retry two days later",
       latest_invoice_days_ago=4, payment="retried"),
    Plant("retried_orb_payment", "orb", "An Orb payment attempt failed, the retry succeeded",
       latest_invoice_days_ago=5, payment="retried"),
    Plant("retried_metronome_payment", "metronome", "A declined charge paid on the retry",
       latest_invoice_days_ago=3, payment="retried"),
    Plant("credit_stripe_one_off", "stripe", "A one-off $800 credit last month, normal now",
       latest_invoice_days_ago=2, credit=("Service credit for the September outage", 800)),
    Plant("peak_orb_monthly", "orb", "A usual 4× batch every 30 days, one two days ago",
       peaks=(30, 2, 4)),
    Plant("peak_stripe_monthly", "stripe", "A usual 3× peak every 28 days, one yesterday",
       peaks=(28, 1, 3)),
    Plant("new_orb_five_days", "orb", "Usage began five days ago, ramping up", usage_days=5),
    Plant("new_stripe_five_days", "stripe", "Usage began five days ago, ramping up", usage_days=5),
    Plant("noisy_orb", "orb", "25% day-to-day noise", noise=0.25),
    Plant("noisy_metronome", "metronome", "30% day-to-day noise", noise=0.3),
    Plant("spike_orb_below_floor", "orb", "A 6× day on a tiny metric: under the $50 floor",
       level=0.02, spikes=(("api_requests", 1, 6),)),
)  # fmt: skip


_BY_ID = {p.account_id: p for p in POPULATION}


def plant_for(account_id: str) -> Plant | None:
    """The population plant of an account, if it is one."""
    return _BY_ID.get(account_id)

"""Generators for one sandbox account.

First a provider-neutral model of the account (monthly billing periods, daily usage per metric
with weekly seasonality, growth and noise, and its story's tweaks), then that model rendered into
the objects of the provider that bills it: Stripe Billing (subscriptions, meters, invoices), Orb
(plans, invoices, costs, credit blocks) or Metronome (contracts, usage invoices, commits). Every
account also has a Stripe customer whose card pays its invoices, whichever provider bills it.

Amounts are computed once, in integer cents, and written in each provider's own terms, so totals
add up exactly the way each provider computes them.
"""

from __future__ import annotations

import math
import random
from calendar import monthrange
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from integrations.sandbox.accounts import (
    STRIPE_PLATFORM_KEY,
    AccountBundle,
    IdCodec,
    MetronomeData,
    Obj,
    OrbData,
    SandboxAccount,
    StripeData,
    WorldIndex,
    b62,
    digest,
)
from integrations.sandbox.population import Plant, plant_for
from integrations.sandbox.specs import spec_for

PERIODS = 16  # invoiced monthly periods of history (about 16 months, > 400 days of usage)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
STRIPE_ACCOUNT = f"acct_1{STRIPE_PLATFORM_KEY}Ab"  # the sandbox platform's own Stripe account
USD_CENTS = {"id": "2714e483-4ff1-48e4-9e25-ac732e8f24f2", "name": "USD (cents)"}
ONE = Decimal(1)


# --- Small helpers ---------------------------------------------------------------------------


def add_months(anchor: datetime, months: int) -> datetime:
    """`anchor` moved by whole months, the day clamped to the month's end (Stripe's rule)."""
    year, month0 = divmod(anchor.month - 1 + months, 12)
    year += anchor.year
    day = min(anchor.day, monthrange(year, month0 + 1)[1])
    return anchor.replace(year=year, month=month0 + 1, day=day)


def ts(moment: datetime) -> int:
    """Stripe time: Unix seconds."""
    return int(moment.timestamp())


def iso(moment: datetime) -> str:
    """Orb time: ISO 8601 with offset."""
    return moment.isoformat()


def rfc(moment: datetime) -> str:
    """Metronome time: RFC 3339 in UTC."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def cents_of(quantity: int, unit_cents: Decimal) -> int:
    """A line's amount in cents, rounded half up like the providers round line amounts."""
    return int((unit_cents * quantity).quantize(ONE, rounding=ROUND_HALF_UP))


def percent_of(amount: int, percent: Decimal) -> int:
    """`percent`% of `amount` cents, rounded half away from zero."""
    return int((Decimal(amount) * percent / 100).quantize(ONE, rounding=ROUND_HALF_UP))


def decimal_str(value: Decimal) -> str:
    """A decimal string with at least two places (`"12.30"`, `"0.0035"`)."""
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def usd(cents: int) -> str:
    """Orb money: cents as a decimal string in dollars."""
    return decimal_str(Decimal(cents).scaleb(-2))


def catalog_id(seed: int, kind: str, name: str, width: int) -> str:
    """A shared catalog object's ID body (prices, products, plans…); owned by no account."""
    return b62(digest(f"catalog|{seed}|{kind}|{name}", 24) % 62**width, width)


def catalog_uuid(seed: int, kind: str, name: str) -> str:
    """A shared Metronome catalog UUID (products, metrics, rate cards)."""
    h = f"{digest(f'catalog-uuid|{seed}|{kind}|{name}', 16):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


@dataclass(frozen=True, slots=True)
class MetricDef:
    """A billable usage metric and its list price."""

    key: str
    name: str
    unit: str
    unit_cents: Decimal  # list price per unit, in cents
    daily_low: int  # range of an account's typical daily volume (log-uniform)
    daily_high: int


METRICS = {
    m.key: m
    for m in (
        MetricDef("api_requests", "API requests", "request", Decimal("0.02"), 20_000, 1_500_000),
        MetricDef("compute_hours", "Compute hours", "vCPU-hour", Decimal("9"), 20, 1_500),
        MetricDef("storage_gb_days", "Storage", "GB-day", Decimal("0.35"), 500, 150_000),
        MetricDef("inference_tokens", "AI inference", "1K tokens", Decimal("0.1"), 5_000, 400_000),
    )
}
BASE_METRICS = ("api_requests", "compute_hours", "storage_gb_days")
PLANS = {
    "starter": ("Starter", 9_900), "growth": ("Growth", 29_900), "pro": ("Pro", 79_900),
    "scale": ("Scale", 199_900),
}  # fmt: skip
STATES = (
    ("CA", "San Francisco", "94107"), ("TX", "Austin", "78701"), ("NY", "New York", "10001"),
    ("WA", "Seattle", "98101"), ("IL", "Chicago", "60601"), ("MA", "Boston", "02110"),
)  # fmt: skip
TAX_PERCENT = {
    "CA": Decimal("7.25"), "TX": Decimal("8.25"), "NY": Decimal("8.875"), "WA": Decimal("10.1"),
    "IL": Decimal("7"), "MA": Decimal("6.25"),
}  # fmt: skip


# --- The provider-neutral model --------------------------------------------------------------


@dataclass(slots=True)
class Series:
    """Daily usage of one metric from the first billing period to yesterday."""

    metric: MetricDef
    daily: list[int]
    cum: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Recompute the running sums after `daily` changed."""
        total = 0
        self.cum = [0]
        for value in self.daily:
            total += value
            self.cum.append(total)

    def total(self, first: int, stop: int) -> int:
        """Usage over days [first, stop)."""
        return self.cum[stop] - self.cum[first]


class Ids:
    """Next object ID of each kind for one account (sequence 0 is the account's customer)."""

    def __init__(self, codec: IdCodec, number: int) -> None:
        self._codec = codec
        self._number = number
        self._seq: dict[str, int] = {}

    def _next(self, key: str) -> int:
        seq = self._seq.get(key, 1)
        self._seq[key] = seq + 1
        return seq

    def stripe(self, prefix: str) -> str:
        """A new Stripe ID with this prefix."""
        return self._codec.stripe(prefix, self._number, self._next(f"s:{prefix}"))

    def orb(self, kind: str) -> str:
        """A new Orb ID of this kind."""
        return self._codec.orb(kind, self._number, self._next(f"o:{kind}"))

    def metronome(self, kind: str) -> str:
        """A new Metronome UUID of this kind."""
        return self._codec.metronome(kind, self._number, self._next(f"m:{kind}"))


@dataclass(slots=True)
class Model:
    """One account's billing facts before any provider renders them."""

    world: WorldIndex
    account: SandboxAccount
    story: str | None
    rng: random.Random
    ids: Ids
    bounds: list[datetime]  # period boundaries b_0..b_P (latest closed), b_{P+1} (next)
    created: datetime
    series: list[Series]  # what the billing provider rates
    extra_series: list[Series]  # multi-provider: what Metronome rates besides
    plan: str
    state: tuple[str, str, str]
    tax_percent: Decimal | None
    plant: Plant | None = None  # the labelled population's plant, if the account is one

    @property
    def seed(self) -> int:
        """The world's seed."""
        return self.world.seed

    @property
    def now(self) -> datetime:
        """The world's now."""
        return self.world.now

    def day(self, moment: datetime) -> int:
        """Index of the day of `moment` in the usage series."""
        return (moment - self.bounds[0]).days

    def quantity(self, series: Series, period: int) -> int:
        """Usage of period `period` ([b_j, b_{j+1}))."""
        return series.total(self.day(self.bounds[period]), self.day(self.bounds[period + 1]))


def _daily(
    rng: random.Random,
    days: int,
    first_weekday: int,
    base: float,
    growth: float,
    weekend: float,
    noise: float,
) -> list[int]:
    """Daily values: `base` compounding at `growth` a month, `weekend` × on Saturdays and
    Sundays, with multiplicative noise of standard deviation `noise`."""
    step = math.exp(math.log1p(growth) / 30.44)  # compound growth per day
    spread = noise * math.sqrt(6)  # U1 + U2 - 1 has variance 1/6: noise is the std deviation
    draw = rng.random
    out = []
    level = base
    for i in range(days):
        value = level * max(0.2, 1.0 + spread * (draw() + draw() - 1.0))
        if (first_weekday + i) % 7 >= 5:  # Saturday, Sunday
            value *= weekend
        out.append(int(value + 0.5))
        level *= step
    return out


def _level_last_period(model: Model, series: Series) -> None:
    """Make the last period's total equal the one before (stories: only the planted cause
    changes), scaling the days proportionally so the weekly shape stays."""
    b = model.bounds
    target = series.total(model.day(b[PERIODS - 2]), model.day(b[PERIODS - 1]))
    first, stop = model.day(b[PERIODS - 1]), model.day(b[PERIODS])
    current = series.total(first, stop)
    days = series.daily[first:stop]
    scaled = [(2 * v * target + current) // (2 * current) for v in days]
    scaled[scaled.index(max(scaled))] += target - sum(scaled)
    series.daily[first:stop] = scaled
    series.refresh()


def _model(world: WorldIndex, acct: SandboxAccount) -> Model:
    # Seeded synthetic data, not security: a plain PRNG is the point.
    rng = random.Random(f"{world.seed}:{acct.account_id}")  # noqa: S311
    rng.random()  # the index used the first draw to pick the billing provider
    spec = spec_for(acct.account_id)
    plant = plant_for(acct.account_id)
    now = world.now
    # Periods turn at midnight UTC even when `now` has a time of day.
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if spec is not None:
        latest = today - timedelta(days=spec.latest_invoice_days_ago)
    elif plant is not None:
        latest = today - timedelta(days=plant.latest_invoice_days_ago)
    else:
        anchor_day = rng.randint(1, 28)
        latest = today.replace(day=anchor_day)
        if today.day <= anchor_day:
            latest = add_months(latest, -1)
    bounds = [add_months(latest, j - PERIODS) for j in range(PERIODS + 2)]
    created = bounds[0] - timedelta(days=rng.randint(1, 20), hours=rng.randint(8, 18))
    # A population account is planted like a story (no random extras) with its own usage.
    story = spec.key if spec else (f"population:{plant.key}" if plant else None)
    days = (now - bounds[0]).days
    weekday = bounds[0].weekday()
    growth = 0.0 if story else rng.uniform(-0.01, 0.06)
    weekend = rng.uniform(0.55, 0.85)
    noise = 0.04 if story else rng.uniform(0.05, 0.12)

    def make(keys: tuple[str, ...] | list[str]) -> list[Series]:
        out = []
        for key in keys:
            metric = METRICS[key]
            base = math.exp(rng.uniform(math.log(metric.daily_low), math.log(metric.daily_high)))
            daily = _daily(rng, days, weekday, base, growth, weekend, noise)
            out.append(Series(metric, daily))
        return out

    if story:
        keys: list[str] = list(BASE_METRICS)
    else:
        chosen = set(rng.sample(BASE_METRICS, rng.choice((2, 3, 3))))
        keys = [k for k in BASE_METRICS if k in chosen]
    series = make(keys)
    extra = make(("inference_tokens",)) if story == "multi_provider" else []
    plan = rng.choices(list(PLANS), weights=(30, 40, 20, 10))[0]
    state = rng.choice(STATES)
    tax: Decimal | None = None
    taxed_share = {"stripe": 0.5, "orb": 0.3}.get(acct.billing, 0.0)
    if story is None and rng.random() < taxed_share:
        tax = TAX_PERCENT[state[0]]
    model = Model(
        world=world,
        account=acct,
        story=story,
        rng=rng,
        ids=Ids(world.codec, acct.number),
        bounds=bounds,
        created=created,
        series=series,
        extra_series=extra,
        plan=plan,
        state=state,
        tax_percent=tax,
        plant=plant,
    )
    if story:
        for s in [*series, *extra]:
            _level_last_period(model, s)
        if story == "usage_spike":
            spiked = series[0]  # API requests, two days shortly before the period closed
            last = model.day(bounds[PERIODS])
            spiked.daily[last - 3] *= 7
            spiked.daily[last - 2] *= 5
            spiked.refresh()
        if story == "plan_change_proration":
            model.plan = "growth"
        if story == "tax_change":
            model.state = ("IL", "Chicago", "60601")
        if story == "open_dispute":
            model.plan = "pro"
    if plant is not None:
        _plant_usage(model, plant)
    return model


# --- Stripe ----------------------------------------------------------------------------------


@dataclass(slots=True)
class StripeLine:
    """One invoice line before amounts of discount and tax are worked out."""

    description: str
    amount: int
    price: Obj
    quantity: int
    start: datetime
    end: datetime
    subscription_item: str
    proration: bool = False
    invoice_item: str | None = None
    credited: Obj | None = None


@dataclass(slots=True)
class Coupon:
    """A subscription discount active on invoices created in [start, end)."""

    discount_id: str
    coupon_id: str
    name: str
    percent: Decimal
    start: datetime
    end: datetime


class StripeCatalog:
    """The shared Stripe products, prices, meters and tax rates of the sandbox platform."""

    def __init__(self, seed: int, now: datetime) -> None:
        self.seed = seed
        self.created = ts(now - timedelta(days=900))

    def _id(self, prefix: str, name: str) -> str:
        if prefix in ("prod", "si"):
            return f"{prefix}_{catalog_id(self.seed, prefix, name, 14)}"
        if prefix == "mtr":
            return f"mtr_test_{catalog_id(self.seed, prefix, name, 32)}"
        return f"{prefix}_1{catalog_id(self.seed, prefix, name, 23)}"

    def meter(self, metric: MetricDef) -> Obj:
        """The `billing.meter` object of a metric."""
        return {
            "created": self.created,
            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
            "default_aggregation": {"formula": "sum"},
            "display_name": metric.name,
            "event_name": metric.key,
            "event_time_window": None,
            "id": self._id("mtr", metric.key),
            "livemode": False,
            "object": "billing.meter",
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": self.created,
            "value_settings": {"event_payload_key": "value"},
        }

    def price(self, key: str) -> Obj:
        """The price object of a plan tier (licensed) or a metric (metered)."""
        if key in PLANS:
            name, fee = PLANS[key]
            unit_amount: int | None = fee
            decimal = str(fee)
            meter = None
            usage_type = "licensed"
            product = self._id("prod", f"plan:{key}")
            nickname = f"{name} monthly"
        else:
            metric = METRICS[key]
            integral = metric.unit_cents == metric.unit_cents.to_integral_value()
            unit_amount = int(metric.unit_cents) if integral else None
            decimal = decimal_str(metric.unit_cents).rstrip("0").rstrip(".")
            meter = self._id("mtr", key)
            usage_type = "metered"
            product = self._id("prod", f"metric:{key}")
            nickname = metric.name
        recurring = {
            "interval": "month",
            "interval_count": 1,
            "meter": meter,
            "trial_period_days": None,
            "usage_type": usage_type,
        }
        return {
            "active": True,
            "billing_scheme": "per_unit",
            "created": self.created,
            "currency": "usd",
            "custom_unit_amount": None,
            "id": self._id("price", key),
            "livemode": False,
            "lookup_key": key,
            "metadata": {},
            "nickname": nickname,
            "object": "price",
            "product": product,
            "recurring": recurring,
            "tax_behavior": "exclusive",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "recurring",
            "unit_amount": unit_amount,
            "unit_amount_decimal": decimal,
        }

    def plan_of(self, price: Obj) -> Obj:
        """The legacy `plan` mirror of a price that subscription items still carry."""
        recurring = price["recurring"]
        return {
            "active": True,
            "amount": price["unit_amount"],
            "amount_decimal": price["unit_amount_decimal"],
            "billing_scheme": "per_unit",
            "created": price["created"],
            "currency": "usd",
            "id": price["id"],
            "interval": "month",
            "interval_count": 1,
            "livemode": False,
            "metadata": {},
            "meter": recurring["meter"],
            "nickname": price["nickname"],
            "object": "plan",
            "product": price["product"],
            "tiers_mode": None,
            "transform_usage": None,
            "trial_period_days": None,
            "usage_type": recurring["usage_type"],
        }

    def tax_rate(self, state: str, percent: Decimal) -> Obj:
        """A `tax_rate` object for a US state's sales tax."""
        return {
            "active": True,
            "country": "US",
            "created": self.created,
            "description": None,
            "display_name": "Sales Tax",
            "effective_percentage": float(percent),
            "flat_amount": None,
            "id": self._id("txr", f"{state}:{percent}"),
            "inclusive": False,
            "jurisdiction": state,
            "jurisdiction_level": "state",
            "livemode": False,
            "metadata": {},
            "object": "tax_rate",
            "percentage": float(percent),
            "rate_type": "percentage",
            "state": state,
            "tax_type": "sales_tax",
        }


def _money_label(cents: Decimal) -> str:
    return "$" + decimal_str(cents.scaleb(-2))


def _stripe_line(
    line: StripeLine,
    invoice_id: str,
    line_id: str,
    subscription_id: str,
    coupon: Coupon | None,
    tax_rate: Obj | None,
) -> tuple[Obj, int, int]:
    """The `line_item` dict, its discount and its tax."""
    discount = percent_of(line.amount, coupon.percent) if coupon else 0
    taxable = line.amount - discount
    tax = percent_of(taxable, Decimal(str(tax_rate["percentage"]))) if tax_rate else 0
    price = line.price
    details: Obj = {
        "invoice_item": line.invoice_item,
        "proration": line.proration,
        "proration_details": {"credited_items": line.credited},
        "subscription": subscription_id,
        "subscription_item": line.subscription_item,
    }
    obj = {
        "amount": line.amount,
        "currency": "usd",
        "description": line.description,
        "discount_amounts": (
            [{"amount": discount, "discount": coupon.discount_id}] if coupon else []
        ),
        "discountable": True,
        "discounts": [],
        "id": line_id,
        "invoice": invoice_id,
        "livemode": False,
        "metadata": {},
        "object": "line_item",
        "parent": {
            "invoice_item_details": None,
            "subscription_item_details": details,
            "type": "subscription_item_details",
        },
        "period": {"end": ts(line.end), "start": ts(line.start)},
        "pretax_credit_amounts": [],
        "pricing": {
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
        "quantity": line.quantity,
        "quantity_decimal": str(line.quantity),
        "subscription": subscription_id,
        "subtotal": line.amount,
        "taxes": (
            [
                {
                    "amount": tax,
                    "tax_behavior": "exclusive",
                    "tax_rate_details": {"tax_rate": tax_rate["id"]},
                    "taxability_reason": "standard_rated",
                    "taxable_amount": taxable,
                    "type": "tax_rate_details",
                }
            ]
            if tax_rate
            else []
        ),
    }
    return obj, discount, tax


class StripeBook:
    """Builds one account's Stripe objects: the customer, its payments, and (when Stripe bills
    the account) its subscription and invoices."""

    def __init__(self, model: Model) -> None:
        self.m = model
        self.ids = model.ids
        self.catalog = StripeCatalog(model.seed, model.now)
        acct = model.account
        assert acct.stripe_customer_id is not None
        self.customer_id = acct.stripe_customer_id
        self.payment_method = self.ids.stripe("pm")
        self.balance = 0  # the customer balance; negative = credit owed to the customer
        self.data = StripeData(customer={})
        self.fingerprint = b62(digest(f"fp|{acct.account_id}") % 62**16, 16)
        self.last4 = f"{digest(f'last4|{acct.account_id}') % 10_000:04d}"
        self.invoice_prefix = f"{digest(f'prefix|{acct.account_id}') % 16**8:08X}"

    # payments ------------------------------------------------------------------------------

    def _card(self, acct: SandboxAccount) -> Obj:
        return {
            "amount_authorized": None,
            "authorization_code": None,
            "brand": "visa",
            "checks": {
                "address_line1_check": None,
                "address_postal_code_check": "pass",
                "cvc_check": None,
            },
            "country": "US",
            "exp_month": 1 + digest(f"exp|{acct.account_id}") % 12,
            "exp_year": self.m.now.year + 2,
            "extended_authorization": {"status": "disabled"},
            "fingerprint": self.fingerprint,
            "funding": "credit",
            "incremental_authorization": {"status": "unavailable"},
            "installments": None,
            "last4": self.last4,
            "mandate": None,
            "multicapture": {"status": "unavailable"},
            "network": "visa",
            "network_token": {"used": False},
            "network_transaction_id": None,
            "overcapture": {"maximum_amount_capturable": 0, "status": "unavailable"},
            "regulated_status": "unregulated",
            "three_d_secure": None,
            "wallet": None,
        }

    def _charge(
        self,
        *,
        amount: int,
        created: datetime,
        intent_id: str,
        description: str,
        metadata: dict[str, str],
        decline: str | None,
    ) -> Obj:
        acct = self.m.account
        charge_id = self.ids.stripe("ch")
        ok = decline is None
        if ok:
            outcome = {
                "advice_code": None,
                "network_advice_code": None,
                "network_decline_code": None,
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "seller_message": "Payment complete.",
                "type": "authorized",
            }
        else:
            outcome = {
                "advice_code": "try_again_later",
                "network_advice_code": None,
                "network_decline_code": "51" if decline == "insufficient_funds" else "05",
                "network_status": "declined_by_network",
                "reason": decline,
                "risk_level": "normal",
                "seller_message": f"The bank returned the decline code `{decline}`.",
                "type": "issuer_declined",
            }
        receipt = b62(digest(f"receipt|{charge_id}", 32) % 62**40, 40)
        return {
            "amount": amount,
            "amount_captured": amount if ok else 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": None,
            "balance_transaction": self.ids.stripe("txn") if ok else None,
            "billing_details": {
                "address": {
                    "city": None,
                    "country": "US",
                    "line1": None,
                    "line2": None,
                    "postal_code": self.m.state[2],
                    "state": None,
                },
                "email": acct.email,
                "name": acct.name,
                "phone": None,
                "tax_id": None,
            },
            "calculated_statement_descriptor": "SANDBOX CLOUD",
            "captured": ok,
            "created": ts(created),
            "currency": "usd",
            "customer": self.customer_id,
            "description": description,
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": None if ok else "card_declined",
            "failure_message": None
            if ok
            else (
                "Your card has insufficient funds."
                if decline == "insufficient_funds"
                else "Your card was declined."
            ),
            "fraud_details": {},
            "id": charge_id,
            "livemode": False,
            "metadata": dict(metadata),
            "object": "charge",
            "on_behalf_of": None,
            "outcome": outcome,
            "paid": ok,
            "payment_intent": intent_id,
            "payment_method": self.payment_method,
            "payment_method_details": {"card": self._card(acct), "type": "card"},
            "receipt_email": acct.email,
            "receipt_number": None,
            "receipt_url": f"https://pay.stripe.com/receipts/payment/{receipt}",
            "refunded": False,
            "refunds": {
                "data": [],
                "has_more": False,
                "object": "list",
                "url": f"/v1/charges/{charge_id}/refunds",
            },
            "review": None,
            "shipping": None,
            "source": None,
            "source_transfer": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "succeeded" if ok else "failed",
            "transfer_data": None,
            "transfer_group": None,
        }

    def pay(
        self,
        *,
        amount: int,
        created: datetime,
        description: str,
        metadata: dict[str, str],
        attempts: list[tuple[datetime, str | None]] | None = None,
    ) -> tuple[Obj, list[Obj]]:
        """A payment intent and its charges; `attempts` = (time, decline code or None)."""
        intent_id = self.ids.stripe("pi")
        tries = attempts or [(created + timedelta(seconds=2), None)]
        charges = [
            self._charge(
                amount=amount,
                created=at,
                intent_id=intent_id,
                description=description,
                metadata=metadata,
                decline=decline,
            )
            for at, decline in tries
        ]
        last = charges[-1]
        ok = last["status"] == "succeeded"
        secret = b62(digest(f"secret|{intent_id}", 24) % 62**25, 25)
        intent = {
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": amount if ok else 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": None,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic",
            "client_secret": f"{intent_id}_secret_{secret}",
            "confirmation_method": "automatic",
            "created": ts(created),
            "currency": "usd",
            "customer": self.customer_id,
            "customer_account": None,
            "description": description,
            "excluded_payment_method_types": None,
            "id": intent_id,
            "last_payment_error": None
            if ok
            else {
                "charge": last["id"],
                "code": "card_declined",
                "decline_code": last["outcome"]["reason"],
                "doc_url": "https://stripe.com/docs/error-codes/card-declined",
                "message": last["failure_message"],
                "type": "card_error",
            },
            "latest_charge": last["id"],
            "livemode": False,
            "managed_payments": {"enabled": False},
            "metadata": dict(metadata),
            "next_action": None,
            "object": "payment_intent",
            "on_behalf_of": None,
            "payment_method": self.payment_method,
            "payment_method_configuration_details": None,
            "payment_method_options": {
                "card": {
                    "installments": None,
                    "mandate_options": None,
                    "network": None,
                    "request_three_d_secure": "automatic",
                }
            },
            "payment_method_types": ["card"],
            "processing": None,
            "receipt_email": None,
            "review": None,
            "setup_future_usage": "off_session",
            "shipping": None,
            "source": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": None,
            "status": "succeeded" if ok else "requires_payment_method",
            "transfer_data": None,
            "transfer_group": None,
        }
        self.data.payment_intents.append(intent)
        self.data.charges.extend(charges)
        return intent, charges

    def customer_txn(
        self,
        *,
        amount: int,
        created: datetime,
        kind: str,
        description: str | None,
        invoice_id: str | None = None,
    ) -> None:
        """Record a customer balance transaction (negative amount = credit to the customer)."""
        self.balance += amount
        self.data.balance_transactions.append(
            {
                "amount": amount,
                "checkout_session": None,
                "created": ts(created),
                "credit_note": None,
                "currency": "usd",
                "customer": self.customer_id,
                "customer_account": None,
                "description": description,
                "ending_balance": self.balance,
                "id": self.ids.stripe("cbtxn"),
                "invoice": invoice_id,
                "livemode": False,
                "metadata": {},
                "object": "customer_balance_transaction",
                "type": kind,
            }
        )

    def refund(self, charge: Obj, amount: int, created: datetime, reason: str) -> None:
        """A refund of part of a charge, reflected on the charge."""
        refund = {
            "amount": amount,
            "balance_transaction": self.ids.stripe("txn"),
            "charge": charge["id"],
            "created": ts(created),
            "currency": "usd",
            "customer": self.customer_id,
            "customer_account": None,
            "destination_details": {
                "card": {
                    "reference": f"{digest('arn|' + charge['id']) % 10**23:023d}",
                    "reference_status": "available",
                    "reference_type": "acquirer_reference_number",
                    "type": "refund",
                },
                "type": "card",
            },
            "id": self.ids.stripe("re"),
            "metadata": {},
            "object": "refund",
            "payment_intent": charge["payment_intent"],
            "payment_method": self.payment_method,
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
            "failure_balance_transaction": None,
            "pending_reason": None,
        }
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        charge["refunds"]["data"].insert(0, refund)
        self.data.refunds.insert(0, refund)

    def dispute(
        self,
        charge: Obj,
        created: datetime,
        due_by: datetime,
        reason: str = "product_not_received",
    ) -> None:
        """An open dispute (needs a response) on a charge."""
        dispute_id = self.ids.stripe("dp")
        fee = 1_500
        withdrawal = {
            "amount": -charge["amount"],
            "available_on": ts(created + 2 * DAY),
            "balance_type": "payments",
            "created": ts(created),
            "currency": "usd",
            "description": f"Chargeback withdrawal for {charge['id']}",
            "exchange_rate": None,
            "fee": fee,
            "fee_details": [
                {
                    "amount": fee,
                    "application": None,
                    "currency": "usd",
                    "description": "Dispute fee",
                    "type": "stripe_fee",
                }
            ],
            "id": self.ids.stripe("txn"),
            "net": -charge["amount"] - fee,
            "object": "balance_transaction",
            "reporting_category": "dispute",
            "source": dispute_id,
            "status": "available",
            "type": "adjustment",
        }
        evidence_keys = (
            "access_activity_log", "billing_address", "cancellation_policy",
            "cancellation_policy_disclosure", "cancellation_rebuttal", "customer_communication",
            "customer_email_address", "customer_name", "customer_purchase_ip",
            "customer_signature", "duplicate_charge_documentation",
            "duplicate_charge_explanation", "duplicate_charge_id", "product_description",
            "receipt", "refund_policy", "refund_policy_disclosure", "refund_refusal_explanation",
            "service_date", "service_documentation", "shipping_address", "shipping_carrier",
            "shipping_date", "shipping_documentation", "shipping_tracking_number",
            "uncategorized_file", "uncategorized_text",
        )  # fmt: skip
        evidence: Obj = dict.fromkeys(evidence_keys)
        evidence["enhanced_evidence"] = {}
        self.data.disputes.append(
            {
                "amount": charge["amount"],
                "balance_transactions": [withdrawal],
                "charge": charge["id"],
                "created": ts(created),
                "currency": "usd",
                "enhanced_eligibility_types": [],
                "evidence": evidence,
                "evidence_details": {
                    "due_by": ts(due_by),
                    "enhanced_eligibility": {},
                    "has_evidence": False,
                    "past_due": False,
                    "submission_count": 0,
                },
                "id": dispute_id,
                "is_charge_refundable": False,
                "livemode": False,
                "metadata": {},
                "object": "dispute",
                "payment_intent": charge["payment_intent"],
                "payment_method_details": {
                    "card": {
                        "brand": "visa",
                        "case_type": "chargeback",
                        "network_reason_code": "13.1",
                    },
                    "type": "card",
                },
                "reason": reason,
                "status": "needs_response",
            }
        )
        charge["disputed"] = True

    # the customer -------------------------------------------------------------------------

    def address(self) -> Obj:
        """The customer's billing address (invoices copy it when they finalize)."""
        state, city, postal = self.m.state
        return {
            "city": city,
            "country": "US",
            "line1": f"{100 + digest(self.m.account.account_id) % 900} Market Street",
            "line2": None,
            "postal_code": postal,
            "state": state,
        }

    def finish_customer(self, *, delinquent: bool = False) -> None:
        """Write the customer object with its final balance."""
        acct = self.m.account
        self.data.customer = {
            "address": self.address(),
            "balance": self.balance,
            "created": ts(self.m.created),
            "currency": "usd",
            "customer_account": None,
            "default_source": None,
            "delinquent": delinquent,
            "description": None,
            "discount": None,
            "email": acct.email,
            "id": self.customer_id,
            "invoice_prefix": self.invoice_prefix,
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": self.payment_method,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": {"account_id": acct.account_id},
            "name": acct.name,
            "next_invoice_sequence": len(self.data.invoices) + 1,
            "object": "customer",
            "phone": None,
            "preferred_locales": ["en-US"],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self.data.charges.sort(key=lambda c: (c["created"], c["id"]), reverse=True)
        self.data.payment_intents.sort(key=lambda c: (c["created"], c["id"]), reverse=True)
        self.data.refunds.sort(key=lambda c: (c["created"], c["id"]), reverse=True)

    def plant_refunds(self) -> None:
        """A partial refund on some ordinary accounts, on a recent successful charge."""
        if self.m.story is not None or self.m.rng.random() >= 0.12:
            return
        recent = [c for c in self.data.charges if c["status"] == "succeeded"][-6:]
        if not recent:
            return
        charge = self.m.rng.choice(recent)
        share = self.m.rng.choice((Decimal("0.1"), Decimal("0.25"), Decimal("0.5")))
        amount = max(100, percent_of(charge["amount"], share * 100))
        paid = datetime.fromtimestamp(charge["created"], self.m.now.tzinfo)
        created = min(paid + timedelta(days=self.m.rng.randint(2, 9), hours=3), self.m.now - HOUR)
        self.refund(charge, min(amount, charge["amount"]), created, "requested_by_customer")

    # Stripe Billing -----------------------------------------------------------------------

    def bill(self) -> None:
        """Subscription, meters, invoices and their payments for a Stripe-billed account."""
        m, b, ids = self.m, self.m.bounds, self.ids
        story = m.story
        subscription_id = ids.stripe("sub")
        plan_item = ids.stripe("si")
        metric_items = [ids.stripe("si") for _ in m.series]
        prices = {key: self.catalog.price(key) for key in PLANS}
        metric_prices = [self.catalog.price(s.metric.key) for s in m.series]

        upgrade_at: datetime | None = None
        if story == "plan_change_proration" or (m.plant is not None and m.plant.upgrade):
            upgrade_at = b[PERIODS - 1] + (b[PERIODS] - b[PERIODS - 1]) * 2 // 5
            upgrade_at = upgrade_at.replace(hour=14, minute=23, second=7)

        def plan_at(moment: datetime) -> str:
            if upgrade_at is not None and moment >= upgrade_at:
                return "pro"
            return m.plan

        coupons: list[Coupon] = []
        if story == "expired_coupon":
            coupons.append(
                self._coupon(
                    "ANNUAL20", "Annual prepay 20% off", b[PERIODS - 12], b[PERIODS - 1] + 5 * DAY
                )
            )
        elif story is None and m.rng.random() < 0.15:
            coupons.append(self._coupon("WELCOME20", "Welcome 20% off", b[0], b[2] + 5 * DAY))

        def tax_rate_at(k: int) -> Obj | None:
            if story == "tax_change":
                return self.catalog.tax_rate("IL", Decimal(7) if k < PERIODS else Decimal(9))
            if m.tax_percent is None:
                return None
            return self.catalog.tax_rate(m.state[0], m.tax_percent)

        goodwill: tuple[int, datetime, int] | None = None
        if story is None and m.rng.random() < 0.12:
            k = m.rng.randint(2, PERIODS - 3)
            goodwill = (
                k,
                b[k] + timedelta(days=m.rng.randint(3, 20), hours=15),
                m.rng.choice((2_500, 5_000, 10_000, 20_000)),
            )

        plan_lines: dict[int, str] = {}  # invoice index → its plan line ID (prorations credit it)
        invoices: list[Obj] = []
        for k in range(PERIODS + 1):
            created = b[k]
            if goodwill and goodwill[0] + 1 == k:
                self.customer_txn(
                    amount=-goodwill[2],
                    created=goodwill[1],
                    kind="adjustment",
                    description="Goodwill credit for an outage",
                )
            lines: list[StripeLine] = []
            if k == PERIODS and upgrade_at is not None:
                lines.extend(self._prorations(upgrade_at, prices, plan_item, invoices, plan_lines))
            tier = plan_at(created)
            fee_price = prices[tier]
            name, fee = PLANS[tier]
            lines.append(
                StripeLine(
                    description=f"1 × {name} (at {_money_label(Decimal(fee))} / month)",
                    amount=fee,
                    price=fee_price,
                    quantity=1,
                    start=b[k],
                    end=b[k + 1],
                    subscription_item=plan_item,
                )
            )
            if k >= 1:
                for s, price, item in zip(m.series, metric_prices, metric_items, strict=True):
                    quantity = m.quantity(s, k - 1)
                    label = _money_label(s.metric.unit_cents)
                    lines.append(
                        StripeLine(
                            description=f"{quantity:,} × {s.metric.name} "
                            f"(at {label} / {s.metric.unit})",
                            amount=cents_of(quantity, s.metric.unit_cents),
                            price=price,
                            quantity=quantity,
                            start=b[k - 1],
                            end=b[k],
                            subscription_item=item,
                        )
                    )
            coupon = next((c for c in coupons if c.start <= created < c.end), None)
            invoice = self._invoice(
                k=k,
                created=created,
                lines=lines,
                subscription_id=subscription_id,
                coupon=coupon,
                tax_rate=tax_rate_at(k),
                reason="subscription_create" if k == 0 else "subscription_cycle",
            )
            self._plant_lines(invoice, k)
            plan_lines[k] = next(
                li["id"]
                for li in invoice["lines"]["data"]
                if li["pricing"]["price_details"]["price"] == fee_price["id"]
                and not li["parent"]["subscription_item_details"]["proration"]
            )
            self._settle(invoice, k)
            invoices.append(invoice)

        invoices.reverse()
        self.data.invoices = invoices
        latest = invoices[0]
        if story == "open_dispute":
            charge = next(c for c in self.data.charges if c["payment_intent"] == _intent_of(latest))
            self.dispute(charge, m.now - 2 * DAY + 9 * HOUR, m.now + 5 * DAY)

        current = b[PERIODS]
        tier = plan_at(current)
        items = [self._item(plan_item, prices[tier], subscription_id, current, quantity=1)]
        for item_id, price in zip(metric_items, metric_prices, strict=True):
            items.append(self._item(item_id, price, subscription_id, current, quantity=None))
        tax_now = tax_rate_at(PERIODS)
        self.data.subscriptions = [
            self._subscription(subscription_id, items, latest["id"], tax_now)
        ]
        self.data.meters = [self.catalog.meter(s.metric) for s in m.series]
        self.data.meter_event_summaries = {
            meter["id"]: self._summaries(meter["id"], s)
            for meter, s in zip(self.data.meters, m.series, strict=True)
        }

    # the labelled population ---------------------------------------------------------------

    def _plant_lines(self, invoice: Obj, k: int) -> None:
        """A population account's one-time charge on the latest invoice, or one-off credit on
        the one before (before the invoice is settled, so its payment covers them)."""
        plant = self.m.plant
        if plant is None:
            return
        if plant.one_off and k == PERIODS:
            self._add_item(invoice, plant.one_off[0], plant.one_off[1] * 100)
        if plant.credit and k == PERIODS - 1:
            self._add_item(invoice, plant.credit[0], -plant.credit[1] * 100)

    def _add_item(self, invoice: Obj, description: str, amount: int) -> None:
        """An invoice item line (`invoice_item_details`) added to an untaxed, undiscounted
        invoice, with the invoice's amounts updated."""
        name = description.lower().replace(" ", "_")
        price_id = self.catalog._id("price", f"one_time:{name}")
        line = {
            "amount": amount,
            "currency": "usd",
            "description": description,
            "discount_amounts": [],
            "discountable": amount > 0,
            "discounts": [],
            "id": self.ids.stripe("il"),
            "invoice": invoice["id"],
            "livemode": False,
            "metadata": {},
            "object": "line_item",
            "parent": {
                "invoice_item_details": {
                    "invoice_item": self.ids.stripe("ii"),
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": None,
                },
                "subscription_item_details": None,
                "type": "invoice_item_details",
            },
            "period": {"end": invoice["created"], "start": invoice["created"]},
            "pretax_credit_amounts": [],
            "pricing": {
                "price_details": {
                    "price": price_id,
                    "product": self.catalog._id("prod", f"one_time:{name}"),
                },
                "type": "price_details",
                "unit_amount_decimal": str(amount),
            },
            "quantity": 1,
            "quantity_decimal": "1",
            "subscription": None,
            "subtotal": amount,
            "taxes": [],
        }
        invoice["lines"]["data"].append(line)
        for key in (
            "subtotal", "subtotal_excluding_tax", "total", "total_excluding_tax", "amount_due",
            "amount_remaining",
        ):  # fmt: skip
            invoice[key] += amount

    def _planted_payment(
        self, invoice: Obj, finalized: datetime, describe: str, *, retried: bool
    ) -> None:
        """A population account's latest invoice: declined and still open (retry scheduled), or
        declined and paid by the retry two days later."""
        due = invoice["amount_due"]
        attempts: list[tuple[datetime, str | None]] = [
            (
                finalized + timedelta(seconds=3),
                "insufficient_funds" if retried else "generic_decline",
            )
        ]
        if retried:
            attempts.append((finalized + 2 * DAY + timedelta(minutes=17), None))
        intent, charges = self.pay(
            amount=due, created=finalized, description=describe, metadata={}, attempts=attempts
        )
        if not retried:
            self._invoice_payment(invoice, intent, paid_at=None)
            retry = max(finalized + 3 * DAY, self.m.now + DAY)
            invoice.update(
                status="open",
                attempt_count=1,
                attempted=True,
                auto_advance=True,
                next_payment_attempt=ts(retry),
            )
            return
        paid_at = charges[-1]["created"]
        self._invoice_payment(invoice, intent, paid_at=paid_at)
        invoice.update(
            status="paid", amount_paid=due, amount_remaining=0, attempt_count=2, attempted=True
        )
        invoice["status_transitions"]["paid_at"] = paid_at

    def _coupon(self, coupon_id: str, name: str, start: datetime, end: datetime) -> Coupon:
        return Coupon(self.ids.stripe("di"), coupon_id, name, Decimal(20), start - HOUR, end)

    def _prorations(
        self,
        upgrade_at: datetime,
        prices: dict[str, Obj],
        plan_item: str,
        invoices: list[Obj],
        plan_lines: dict[int, str],
    ) -> list[StripeLine]:
        b = self.m.bounds
        period = (b[PERIODS] - b[PERIODS - 1]).total_seconds()
        left = Decimal((b[PERIODS] - upgrade_at).total_seconds()) / Decimal(period)
        old_name, old_fee = PLANS[self.m.plan]
        new_name, new_fee = PLANS["pro"]
        when = f"{upgrade_at.day} {upgrade_at:%b %Y}"
        previous = invoices[-1]
        credit = StripeLine(
            description=f"Unused time on {old_name} after {when}",
            amount=-int((old_fee * left).quantize(ONE, rounding=ROUND_HALF_UP)),
            price=prices[self.m.plan],
            quantity=1,
            start=upgrade_at,
            end=b[PERIODS],
            subscription_item=plan_item,
            proration=True,
            invoice_item=self.ids.stripe("ii"),
            credited={"invoice": previous["id"], "invoice_line_items": [plan_lines[PERIODS - 1]]},
        )
        debit = StripeLine(
            description=f"Remaining time on {new_name} after {when}",
            amount=int((new_fee * left).quantize(ONE, rounding=ROUND_HALF_UP)),
            price=prices["pro"],
            quantity=1,
            start=upgrade_at,
            end=b[PERIODS],
            subscription_item=plan_item,
            proration=True,
            invoice_item=self.ids.stripe("ii"),
        )
        return [credit, debit]

    def _invoice(
        self,
        *,
        k: int,
        created: datetime,
        lines: list[StripeLine],
        subscription_id: str,
        coupon: Coupon | None,
        tax_rate: Obj | None,
        reason: str,
    ) -> Obj:
        acct = self.m.account
        invoice_id = self.ids.stripe("in")
        data, discount_total, tax_total = [], 0, 0
        for line in lines:
            obj, discount, tax = _stripe_line(
                line, invoice_id, self.ids.stripe("il"), subscription_id, coupon, tax_rate
            )
            data.append(obj)
            discount_total += discount
            tax_total += tax
        subtotal = sum(line.amount for line in lines)
        excluding_tax = subtotal - discount_total
        total = excluding_tax + tax_total
        starting = self.balance
        applied = min(-starting, total) if starting < 0 and total > 0 else 0
        token = b62(digest(f"hosted|{invoice_id}", 48) % 62**60, 60)
        b = self.m.bounds
        return {
            "account_country": "US",
            "account_name": "Sandbox Cloud, Inc.",
            "account_tax_ids": None,
            "amount_due": total - applied,
            "amount_overpaid": 0,
            "amount_paid": 0,
            "amount_remaining": total - applied,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": False,
            "automatic_tax": {
                "disabled_reason": None,
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "automatically_finalizes_at": None,
            "billing_reason": reason,
            "collection_method": "charge_automatically",
            "created": ts(created),
            "currency": "usd",
            "custom_fields": None,
            "customer": self.customer_id,
            "customer_account": None,
            "customer_address": self.address(),
            "customer_email": acct.email,
            "customer_name": acct.name,
            "customer_phone": None,
            "customer_shipping": None,
            "customer_tax_exempt": "none",
            "customer_tax_ids": [],
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": [coupon.discount_id] if coupon else [],
            "due_date": None,
            "effective_at": ts(created + HOUR),
            "ending_balance": starting + applied,
            "footer": None,
            "from_invoice": None,
            "hosted_invoice_url": f"https://invoice.stripe.com/i/{STRIPE_ACCOUNT}/test_{token}",
            "id": invoice_id,
            "invoice_pdf": f"https://pay.stripe.com/invoice/{STRIPE_ACCOUNT}/test_{token}/pdf",
            "issuer": {"type": "self"},
            "last_finalization_error": None,
            "latest_revision": None,
            "lines": {
                "data": data,
                "has_more": False,
                "object": "list",
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
            "livemode": False,
            "metadata": {},
            "next_payment_attempt": None,
            "number": f"{self.invoice_prefix}-{k + 1:04d}",
            "object": "invoice",
            "on_behalf_of": None,
            "parent": {
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": subscription_id},
                "type": "subscription_details",
            },
            "payment_settings": {
                "default_mandate": None,
                "payment_method_options": None,
                "payment_method_types": None,
            },
            "payments": {
                "data": [],
                "has_more": False,
                "object": "list",
                "url": f"/v1/invoices/{invoice_id}/payments",
            },
            "period_end": ts(created if k == 0 else b[k]),
            "period_start": ts(created if k == 0 else b[k - 1]),
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": None,
            "rendering": None,
            "shipping_cost": None,
            "shipping_details": None,
            "starting_balance": starting,
            "statement_descriptor": None,
            "status": "draft",
            "status_transitions": {
                "finalized_at": ts(created + HOUR),
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": subtotal,
            "subtotal_excluding_tax": subtotal,
            "test_clock": None,
            "total": total,
            "total_discount_amounts": (
                [{"amount": discount_total, "discount": coupon.discount_id}] if coupon else []
            ),
            "total_excluding_tax": excluding_tax,
            "total_pretax_credit_amounts": [],
            "total_taxes": (
                [
                    {
                        "amount": tax_total,
                        "tax_behavior": "exclusive",
                        "tax_rate_details": {"tax_rate": tax_rate["id"]},
                        "taxability_reason": "standard_rated",
                        "taxable_amount": excluding_tax,
                        "type": "tax_rate_details",
                    }
                ]
                if tax_rate
                else []
            ),
            "webhooks_delivered_at": ts(created + timedelta(minutes=2)),
        }

    def _invoice_payment(self, invoice: Obj, intent: Obj, *, paid_at: int | None) -> Obj:
        payment = {
            "amount_paid": intent["amount"] if paid_at else None,
            "amount_requested": intent["amount"],
            "created": intent["created"],
            "currency": "usd",
            "id": self.ids.stripe("inpay"),
            "invoice": invoice["id"],
            "is_default": not invoice["payments"]["data"],
            "livemode": False,
            "object": "invoice_payment",
            "payment": {"payment_intent": intent["id"], "type": "payment_intent"},
            "status": "paid" if paid_at else "open",
            "status_transitions": {"canceled_at": None, "paid_at": paid_at},
        }
        invoice["payments"]["data"].append(payment)
        self.data.invoice_payments.append(payment)
        return payment

    def _settle(self, invoice: Obj, k: int) -> None:
        """Finalize an invoice, apply the customer balance and collect (or fail to)."""
        story, b = self.m.story, self.m.bounds
        finalized = b[k] + HOUR
        starting, ending = invoice["starting_balance"], invoice["ending_balance"]
        if ending != starting:
            self.customer_txn(
                amount=ending - starting,
                created=finalized,
                kind="applied_to_invoice",
                description=None,
                invoice_id=invoice["id"],
            )
        due = invoice["amount_due"]
        meta: dict[str, str] = {}  # Stripe links invoice payments through invoice_payments
        describe = "Subscription creation" if k == 0 else "Subscription update"
        invoice["status_transitions"]["finalized_at"] = ts(finalized)
        if due == 0:
            invoice.update(status="paid", attempted=True)
            invoice["status_transitions"]["paid_at"] = ts(finalized)
            return
        plant = self.m.plant
        if k == PERIODS and plant is not None and plant.payment in ("failed", "retried"):
            self._planted_payment(invoice, finalized, describe, retried=plant.payment == "retried")
            return
        if k == PERIODS and story == "failed_payment_dunning":
            attempts: list[tuple[datetime, str | None]] = [
                (finalized + timedelta(seconds=3), "generic_decline"),
                (finalized + 3 * DAY + timedelta(minutes=17), "insufficient_funds"),
                (finalized + 5 * DAY + timedelta(minutes=41), "insufficient_funds"),
            ]
            intent, _ = self.pay(
                amount=due,
                created=finalized,
                description=describe,
                metadata=meta,
                attempts=attempts,
            )
            self._invoice_payment(invoice, intent, paid_at=None)
            invoice.update(
                status="open",
                attempt_count=3,
                attempted=True,
                auto_advance=True,
                next_payment_attempt=ts(finalized + 10 * DAY),
            )
            return
        intent, charges = self.pay(
            amount=due, created=finalized, description=describe, metadata=meta
        )
        paid_at = charges[-1]["created"]
        self._invoice_payment(invoice, intent, paid_at=paid_at)
        invoice.update(
            status="paid", amount_paid=due, amount_remaining=0, attempt_count=1, attempted=True
        )
        invoice["status_transitions"]["paid_at"] = paid_at
        if k == PERIODS and (
            story == "duplicate_charge" or (plant is not None and plant.payment == "duplicate")
        ):
            # The customer also paid the hosted invoice page by hand a few hours later.
            again = finalized + timedelta(hours=5, minutes=13)
            intent2, charges2 = self.pay(
                amount=due, created=again, description="Payment for Invoice", metadata=meta
            )
            self._invoice_payment(invoice, intent2, paid_at=charges2[-1]["created"])
            invoice["amount_overpaid"] = due
            self.customer_txn(
                amount=-due,
                created=again + timedelta(seconds=5),
                kind="invoice_overpaid",
                description=None,
                invoice_id=invoice["id"],
            )

    def _item(
        self,
        item_id: str,
        price: Obj,
        subscription_id: str,
        current: datetime,
        quantity: int | None,
    ) -> Obj:
        b = self.m.bounds
        item: Obj = {
            "billing_thresholds": None,
            "created": ts(self.m.created + HOUR),
            "current_period_end": ts(b[PERIODS + 1]),
            "current_period_start": ts(current),
            "discounts": [],
            "id": item_id,
            "metadata": {},
            "object": "subscription_item",
            "plan": self.catalog.plan_of(price),
            "price": price,
            "subscription": subscription_id,
            "tax_rates": [],
        }
        if quantity is not None:  # metered items carry no quantity
            item["quantity"] = quantity
        return item

    def _subscription(
        self, subscription_id: str, items: list[Obj], latest_invoice: str, tax_rate: Obj | None
    ) -> Obj:
        b = self.m.bounds
        past_due = self.m.story == "failed_payment_dunning"
        return {
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
            "billing_cycle_anchor": ts(b[0]),
            "billing_cycle_anchor_config": None,
            "billing_mode": {"flexible": None, "type": "classic"},
            "billing_schedules": [],
            "billing_thresholds": None,
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically",
            "created": ts(b[0]),
            "currency": "usd",
            "customer": self.customer_id,
            "customer_account": None,
            "days_until_due": None,
            "default_payment_method": self.payment_method,
            "default_source": None,
            "default_tax_rates": [tax_rate] if tax_rate else [],
            "description": None,
            "discounts": [],
            "ended_at": None,
            "id": subscription_id,
            "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
            "items": {
                "data": items,
                "has_more": False,
                "object": "list",
                "url": f"/v1/subscription_items?subscription={subscription_id}",
            },
            "latest_invoice": latest_invoice,
            "livemode": False,
            "managed_payments": {"enabled": False},
            "metadata": {"account_id": self.m.account.account_id},
            "next_pending_invoice_item_invoice": None,
            "object": "subscription",
            "on_behalf_of": None,
            "pause_collection": None,
            "payment_settings": {
                "payment_method_options": None,
                "payment_method_types": None,
                "save_default_payment_method": "off",
            },
            "pending_invoice_item_interval": None,
            "pending_setup_intent": None,
            "pending_update": None,
            "schedule": None,
            "start_date": ts(b[0]),
            "status": "past_due" if past_due else "active",
            "test_clock": None,
            "transfer_data": None,
            "trial_end": None,
            "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
            "trial_start": None,
        }

    def _summaries(self, meter_id: str, series: Series) -> list[Obj]:
        start = ts(self.m.bounds[0])
        # One ID per meter; each day's summary appends the day number (cheap, still decodable).
        base = self.ids.stripe("mtrusg")
        out = []
        for i, value in enumerate(series.daily):
            out.append(
                {
                    "aggregated_value": value,
                    "end_time": start + (i + 1) * 86_400,
                    "id": f"{base}{_DAY_SUFFIX[i]}",
                    "livemode": False,
                    "meter": meter_id,
                    "object": "billing.meter_event_summary",
                    "start_time": start + i * 86_400,
                }
            )
        return out


_DAY_SUFFIX = [b62(i, 3) for i in range(3 * 366)]  # day numbers of meter summary IDs


def _intent_of(invoice: Obj) -> str:
    payments = invoice["payments"]["data"]
    return str(payments[0]["payment"]["payment_intent"])


# --- Orb -------------------------------------------------------------------------------------


class OrbBook:
    """Builds one account's Orb objects; payments go through the account's Stripe customer."""

    def __init__(self, model: Model, stripe: StripeBook) -> None:
        self.m = model
        self.stripe = stripe
        self.ids = model.ids
        acct = model.account
        assert acct.orb_customer_id is not None
        self.customer_id = acct.orb_customer_id
        self.catalog_created = model.now - timedelta(days=900)

    def _cid(self, kind: str, name: str) -> str:
        return catalog_id(self.m.seed, f"orb:{kind}", name, 20)

    def price(self, key: str) -> Obj:
        """One of the plan's prices (unit model): the fixed fee or a usage metric."""
        plan = self.m.plan
        fixed = key in PLANS
        if fixed:
            name = f"{PLANS[key][0]} platform fee"
            unit = usd(PLANS[key][1])
            item_name = "Platform fee"
        else:
            metric = METRICS[key]
            name = metric.name
            unit = decimal_str(metric.unit_cents.scaleb(-2))
            item_name = metric.name
        return {
            "id": self._cid("price", f"{plan}:{key}"),
            "billable_metric": None if fixed else {"id": self._cid("metric", key)},
            "billing_cycle_configuration": {"duration": 1, "duration_unit": "month"},
            "billing_mode": "in_arrear",
            "cadence": "monthly",
            "composite_price_filters": None,
            "conversion_rate": None,
            "conversion_rate_config": None,
            "created_at": iso(self.catalog_created),
            "credit_allocation": None,
            "currency": "USD",
            "dimensional_price_configuration": None,
            "discount": None,
            "external_price_id": None,
            "fixed_price_quantity": 1.0 if fixed else None,
            "invoice_grouping_key": None,
            "invoicing_cycle_configuration": None,
            "item": {"id": self._cid("item", item_name), "name": item_name},
            "license_type": None,
            "maximum": None,
            "maximum_amount": None,
            "metadata": {},
            "minimum": None,
            "minimum_amount": None,
            "model_type": "unit",
            "name": name,
            "plan_phase_order": None,
            "price_type": "fixed_price" if fixed else "usage_price",
            "replaces_price_id": None,
            "unit_config": {"prorated": False, "unit_amount": unit},
        }

    def customer(self) -> Obj:
        """The Orb customer (our account ID is its external_customer_id)."""
        acct = self.m.account
        token = b62(digest(f"portal|{self.customer_id}", 24) % 62**32, 32)
        return {
            "id": self.customer_id,
            "accounting_sync_configuration": None,
            "additional_emails": [],
            "auto_collection": True,
            "auto_issuance": None,
            "automatic_tax_enabled": None,
            "balance": "0.00",
            "billing_address": None,
            "created_at": iso(self.m.created),
            "currency": "USD",
            "default_payment_method": None,
            "email": acct.email,
            "email_delivery": True,
            "exempt_from_automated_tax": None,
            "external_customer_id": acct.account_id,
            "hierarchy": {"children": [], "parent": None},
            "metadata": {},
            "name": acct.name,
            "payment_configuration": None,
            "payment_provider": "stripe_charge",
            "payment_provider_id": acct.stripe_customer_id,
            "portal_url": f"https://portal.withorb.com/view?token={token}",
            "reporting_configuration": None,
            "shipping_address": None,
            "tax_id": None,
            "timezone": "UTC",
        }

    def bill(self) -> OrbData:
        """Plan, subscription, invoices, daily costs and credits of an Orb-billed account."""
        m, b = self.m, self.m.bounds
        customer = self.customer()
        fee_price = self.price(m.plan)
        usage_prices = [self.price(s.metric.key) for s in m.series]
        plan_name = PLANS[m.plan][0]
        plan = {
            "id": self._cid("plan", m.plan),
            "adjustments": [],
            "base_plan": None,
            "base_plan_id": None,
            "created_at": iso(self.catalog_created),
            "currency": "USD",
            "default_invoice_memo": None,
            "description": f"{plan_name}: platform fee plus usage",
            "discount": None,
            "external_plan_id": m.plan,
            "invoicing_currency": "USD",
            "maximum": None,
            "maximum_amount": None,
            "metadata": {},
            "minimum": None,
            "minimum_amount": None,
            "name": plan_name,
            "net_terms": 0,
            "plan_phases": None,
            "prices": [fee_price, *usage_prices],
            "product": {
                "created_at": iso(self.catalog_created),
                "id": self._cid("product", "platform"),
                "name": "Sandbox Cloud",
            },
            "status": "active",
            "trial_config": {"trial_period": None, "trial_period_unit": "days"},
            "version": 1,
        }
        subscription_id = self.ids.orb("subscription")
        data = OrbData(customer=customer)
        credit = self._credit_block()
        remaining = Decimal(credit[1]) if credit else Decimal(0)
        ledger: list[Obj] = []
        if credit:
            ledger.append(self._ledger(credit, "increment", remaining, Decimal(0), credit[2]))
        invoices = []
        for j in range(PERIODS):
            start, end = b[j], b[j + 1]
            credit_live = credit is not None and credit[2] <= end < credit[3]
            lines, used = [], Decimal(0)
            fee_cents = PLANS[m.plan][1]
            lines.append(self._line(fee_price, 1, fee_cents, start, end, Decimal(0)))
            for s, price in zip(m.series, usage_prices, strict=True):
                quantity = m.quantity(s, j)
                amount = cents_of(quantity, s.metric.unit_cents)
                apply = Decimal(0)
                if credit_live and remaining > 0:
                    apply = min(remaining, Decimal(amount).scaleb(-2))
                    remaining -= apply
                    used += apply
                lines.append(self._line(price, quantity, amount, start, end, apply))
            if j == PERIODS - 1 and m.plant is not None and m.plant.one_off:
                what, dollars = m.plant.one_off
                one_time = self._one_time_price(what, dollars * 100)
                lines.append(self._line(one_time, 1, dollars * 100, start, end, Decimal(0)))
            invoice = self._invoice(j, lines, subscription_id)
            if credit and used > 0:
                ledger.append(
                    self._ledger(
                        credit,
                        "decrement",
                        -used,
                        remaining + used,
                        end + HOUR,
                        invoice_id=invoice["id"],
                    )
                )
            invoices.append(invoice)
        invoices.reverse()
        data.invoices = invoices
        data.subscriptions = [
            self._subscription(subscription_id, customer, plan, [fee_price, *usage_prices])
        ]
        data.costs = self._costs(usage_prices)
        if credit:
            data.credit_blocks = [self._block(credit, remaining)]
            for i, entry in enumerate(ledger, start=1):
                entry["ledger_sequence_number"] = i
            data.ledger_entries = ledger
        return data

    def _credit_block(self) -> tuple[str, str, datetime, datetime] | None:
        """(block ID, amount in dollars, effective, expiry) for some ordinary accounts."""
        m = self.m
        if m.story is not None or m.rng.random() >= 0.25:
            return None
        k = m.rng.randint(PERIODS - 8, PERIODS - 2)
        effective = m.bounds[k] + timedelta(days=2, hours=16)
        amount = m.rng.choice((250, 500, 1_000, 2_500, 5_000))
        return self.ids.orb("credit_block"), f"{amount}.00", effective, effective + 365 * DAY

    def _block(self, credit: tuple[str, str, datetime, datetime], remaining: Decimal) -> Obj:
        block_id, amount, effective, expiry = credit
        return {
            "id": block_id,
            "balance": float(remaining),
            "credit_allocation": None,
            "credit_block_source": "manual",
            "credit_commitment": None,
            "effective_date": iso(effective),
            "expiry_date": iso(expiry),
            "filters": [],
            "maximum_initial_balance": float(Decimal(amount)),
            "metadata": {},
            "per_unit_cost_basis": "0.00",
            "status": "active",
        }

    def _ledger(
        self,
        credit: tuple[str, str, datetime, datetime],
        kind: str,
        amount: Decimal,
        starting: Decimal,
        created: datetime,
        invoice_id: str | None = None,
    ) -> Obj:
        acct = self.m.account
        entry: Obj = {
            "id": self.ids.orb("ledger_entry"),
            "amount": float(amount),
            "created_at": iso(created),
            "credit_block": {
                "id": credit[0],
                "expiry_date": iso(credit[3]),
                "filters": [],
                "per_unit_cost_basis": "0.00",
            },
            "currency": "USD",
            "customer": {"id": self.customer_id, "external_customer_id": acct.account_id},
            "description": "Promotional credit" if kind == "increment" else None,
            "ending_balance": float(starting + amount),
            "entry_status": "committed",
            "entry_type": kind,
            "ledger_sequence_number": 0,
            "metadata": {},
            "starting_balance": float(starting),
        }
        if kind == "increment":
            entry["created_invoices"] = None
        else:
            entry.update(event_id=None, invoice_id=invoice_id, price_id=None)
        return entry

    def _line(
        self,
        price: Obj,
        quantity: int,
        amount: int,
        start: datetime,
        end: datetime,
        credits: Decimal,
    ) -> Obj:
        subtotal = usd(amount)
        after = Decimal(amount).scaleb(-2) - credits
        tax: list[Obj] = []
        if self.m.tax_percent is not None:
            tax_cents = percent_of(int(after * 100), self.m.tax_percent)
            tax.append(
                {
                    "amount": usd(tax_cents),
                    "tax_rate_description": f"{self.m.state[0]} sales tax",
                    "tax_rate_percentage": decimal_str(self.m.tax_percent),
                }
            )
        return {
            "id": self.ids.orb("line_item"),
            "adjusted_subtotal": subtotal,
            "adjustments": [],
            "amount": decimal_str(after.quantize(Decimal("0.01"))),
            "credits_applied": decimal_str(credits.quantize(Decimal("0.01"))),
            "end_date": iso(end),
            "filter": None,
            "grouping": None,
            "name": price["name"],
            "partially_invoiced_amount": "0.00",
            "price": price,
            "quantity": float(quantity),
            "start_date": iso(start),
            "sub_line_items": [],
            "subtotal": subtotal,
            "tax_amounts": tax,
            "usage_customer_ids": None,
        }

    def _invoice(self, j: int, lines: list[Obj], subscription_id: str) -> Obj:
        m, b = self.m, self.m.bounds
        acct = m.account
        invoice_id = self.ids.orb("invoice")
        subtotal = sum(Decimal(li["subtotal"]) for li in lines)
        amounts = sum(Decimal(li["amount"]) for li in lines)
        taxes = sum(Decimal(t["amount"]) for li in lines for t in li["tax_amounts"])
        total = amounts + taxes
        invoice_date = b[j + 1]
        issued = invoice_date + HOUR
        code = digest(f"orbprefix|{self.customer_id}")
        prefix = "".join(chr(65 + code // 26**i % 26) for i in range(6))
        number = f"{prefix}-{j + 1:05d}"
        attempts: list[Obj] = []
        paid = issued
        total_cents = int(total * 100)
        failed: datetime | None = None
        if total_cents > 0:
            tries = _planted_tries(m, j, issued + timedelta(minutes=1), minutes=9)
            intent, charges = self.stripe.pay(
                amount=total_cents,
                created=issued + timedelta(minutes=1),
                description=f"Orb invoice {number}",
                metadata={"orb_invoice_id": invoice_id, "account_id": acct.account_id},
                attempts=tries,
            )
            for charge in charges:
                paid = datetime.fromtimestamp(charge["created"], m.now.tzinfo)
                attempts.append(
                    {
                        "id": self.ids.orb("payment_attempt"),
                        "amount": usd(total_cents),
                        "created_at": iso(paid),
                        "payment_provider": "stripe",
                        "payment_provider_id": intent["id"],
                        "receipt_pdf": None,
                        "succeeded": charge["status"] == "succeeded",
                    }
                )
            if charges[-1]["status"] != "succeeded":
                failed = paid
        token = b62(digest(f"orbview|{invoice_id}", 24) % 62**32, 32)
        invoice: Obj = {
            "id": invoice_id,
            "amount_due": usd(total_cents),
            "auto_collection": {
                "enabled": True,
                "next_attempt_at": None,
                "num_attempts": len(attempts),
                "previously_attempted_at": iso(paid) if attempts else None,
            },
            "billing_address": None,
            "created_at": iso(invoice_date),
            "credit_notes": [],
            "currency": "USD",
            "customer": {"id": self.customer_id, "external_customer_id": acct.account_id},
            "customer_balance_transactions": [],
            "customer_tax_id": None,
            "discount": None,
            "discounts": [],
            "due_date": iso(invoice_date),
            "eligible_to_issue_at": None,
            "hidden_line_item_count": 0,
            "hosted_invoice_url": f"https://portal.withorb.com/view?token={token}",
            "invoice_date": iso(invoice_date),
            "invoice_number": number,
            "invoice_pdf": None,
            "invoice_source": "subscription",
            "issue_failed_at": None,
            "issued_at": iso(issued),
            "line_items": lines,
            "maximum": None,
            "maximum_amount": None,
            "memo": None,
            "metadata": {},
            "minimum": None,
            "minimum_amount": None,
            "paid_at": iso(paid),
            "payment_attempts": attempts,
            "payment_failed_at": None,
            "payment_received_at": iso(paid) if attempts else None,
            "payment_started_at": iso(paid) if attempts else None,
            "scheduled_issue_at": None,
            "shipping_address": None,
            "status": "paid",
            "subscription": {"id": subscription_id},
            "subtotal": usd(int(subtotal * 100)),
            "sync_failed_at": None,
            "total": usd(total_cents),
            "voided_at": None,
            "will_auto_issue": False,
        }
        if failed is not None:  # a planted failed payment: issued, unpaid, retry scheduled
            invoice.update(
                status="issued",
                paid_at=None,
                payment_received_at=None,
                payment_failed_at=iso(failed),
            )
            invoice["auto_collection"]["next_attempt_at"] = iso(max(failed + 3 * DAY, m.now + DAY))
        return invoice

    def _one_time_price(self, name: str, cents: int) -> Obj:
        """A one-time fixed fee (an Orb price with `cadence: one_time`)."""
        price = self.price(self.m.plan)
        price.update(
            id=self._cid("price", f"one_time:{name}"),
            cadence="one_time",
            fixed_price_quantity=1.0,
            item={"id": self._cid("item", name), "name": name},
            name=name,
            unit_config={"prorated": False, "unit_amount": usd(cents)},
        )
        return price

    def _subscription(
        self, subscription_id: str, customer: Obj, plan: Obj, prices: list[Obj]
    ) -> Obj:
        b = self.m.bounds
        current, following = b[PERIODS], b[PERIODS + 1]
        intervals = [
            {
                "id": self.ids.orb("price_interval"),
                "billing_cycle_day": b[0].day,
                "can_defer_billing": False,
                "current_billing_period_end_date": iso(following),
                "current_billing_period_start_date": iso(current),
                "end_date": None,
                "filter": None,
                "fixed_fee_quantity_transitions": None,
                "price": price,
                "start_date": iso(b[0]),
                "usage_customer_ids": None,
            }
            for price in prices
        ]
        return {
            "id": subscription_id,
            "active_plan_phase_order": None,
            "adjustment_intervals": [],
            "auto_collection": True,
            "auto_issuance": None,
            "billing_cycle_anchor_configuration": {"day": b[0].day, "month": None, "year": None},
            "billing_cycle_day": b[0].day,
            "created_at": iso(b[0] - HOUR),
            "current_billing_period_end_date": iso(following),
            "current_billing_period_start_date": iso(current),
            "customer": customer,
            "default_invoice_memo": None,
            "discount_intervals": [],
            "end_date": None,
            "fixed_fee_quantity_schedule": [
                {
                    "end_date": None,
                    "price_id": prices[0]["id"],
                    "quantity": 1.0,
                    "start_date": iso(b[0]),
                }
            ],
            "invoicing_threshold": None,
            "maximum_intervals": [],
            "metadata": {},
            "minimum_intervals": [],
            "name": plan["name"],
            "net_terms": 0,
            "pending_subscription_change": None,
            "plan": plan,
            "price_intervals": intervals,
            "redeemed_coupon": None,
            "start_date": iso(b[0]),
            "status": "active",
            "trial_info": {"end_date": None},
        }

    def _costs(self, prices: list[Obj]) -> list[Obj]:
        m = self.m
        if not m.series:
            return []
        # Integer ten-thousandths of a dollar: exact for every list price, and fast.
        units = [int(s.metric.unit_cents * 100) for s in m.series]
        days = [iso(m.bounds[0] + i * DAY) for i in range(len(m.series[0].daily) + 1)]
        out = []
        for i in range(len(days) - 1):
            per_price, total = [], 0
            for s, price, unit in zip(m.series, prices, units, strict=True):
                quantity = s.daily[i]
                cost = unit * quantity
                total += cost
                text = _e4(cost)
                per_price.append(
                    {
                        "price": price,
                        "price_id": price["id"],
                        "quantity": float(quantity),
                        "subtotal": text,
                        "total": text,
                    }
                )
            text = _e4(total)
            out.append(
                {
                    "per_price_costs": per_price,
                    "subtotal": text,
                    "timeframe_end": days[i + 1],
                    "timeframe_start": days[i],
                    "total": text,
                }
            )
        return out


def _e4(value: int) -> str:
    """Ten-thousandths of a dollar as a decimal string with at least two places. (Exact: the
    float quotient is within far less than half a ten-thousandth of the true value.)"""
    text = f"{value / 10_000:.4f}"
    return text[:-2] + text[-2:].rstrip("0") if text[-2:] != "00" else text[:-2]


# --- Metronome -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """A Metronome prepaid commit (`PREPAID`) or credit (`CREDIT`) drawn down by usage."""

    kind: str
    id: str
    name: str
    amount: int  # cents
    start: datetime
    segment: str


class MetronomeBook:
    """Builds one account's Metronome objects; payments go through the account's Stripe customer."""

    def __init__(self, model: Model, stripe: StripeBook, series: list[Series]) -> None:
        self.m = model
        self.stripe = stripe
        self.series = series
        self.ids = model.ids
        acct = model.account
        assert acct.metronome_customer_id is not None
        self.customer_id = acct.metronome_customer_id
        self.contract_id = self.ids.metronome("contract")

    def _uuid(self, kind: str, name: str) -> str:
        return catalog_uuid(self.m.seed, kind, name)

    def customer(self) -> Obj:
        """The CustomerDetail (ingest aliases: our account ID and the billing email)."""
        acct = self.m.account
        return {
            "archived_at": None,
            "created_at": rfc(self.m.created),
            "current_billable_status": {"effective_at": rfc(self.m.created), "value": "billable"},
            "custom_fields": {},
            "customer_config": {"salesforce_account_id": None},
            "external_id": acct.account_id,
            "id": self.customer_id,
            "ingest_aliases": [acct.account_id, acct.email],
            "name": acct.name,
            "updated_at": rfc(self.m.created + DAY),
        }

    def bill(self) -> MetronomeData:
        """Contract, usage invoices, commits and daily usage of a Metronome-billed account."""
        m, b = self.m, self.m.bounds
        story = m.story
        data = MetronomeData(customer=self.customer())
        fee = PLANS[m.plan][1] if story != "multi_provider" else 49_900
        platform = self._schedule("Platform fee", fee, range(PERIODS + 1))
        addon = None
        addon_first, amended_at = PERIODS - 1, b[PERIODS - 1]
        plant = m.plant
        if story == "new_addon" or (plant is not None and plant.upgrade):
            addon = self._schedule("Premium Support", 50_000, range(PERIODS - 1, PERIODS + 1))
        elif plant is not None and plant.amend_days_ago is not None:
            # Amended a few days ago; its new charge starts with the next statement.
            addon = self._schedule("Premium Support", 50_000, range(PERIODS, PERIODS + 1))
            addon_first, amended_at = PERIODS, m.now - timedelta(days=plant.amend_days_ago)
        one_off = None
        if plant is not None and plant.one_off:
            what, dollars = plant.one_off
            one_off = self._schedule(what, dollars * 100, range(PERIODS - 1, PERIODS))
        grant = self._grant_plan()
        remaining = grant.amount if grant else 0
        deductions: list[tuple[datetime, int, str]] = []
        invoices = []
        for j in range(PERIODS):
            start, end = b[j], b[j + 1]
            invoice_id = self.ids.metronome("invoice")
            lines = [self._scheduled_line(platform, j, invoice_id)]
            if addon is not None and j >= addon_first:
                lines.append(self._scheduled_line(addon, j - addon_first, invoice_id))
            if one_off is not None and j == PERIODS - 1:
                lines.append(self._scheduled_line(one_off, 0, invoice_id))
            usage_total = 0
            for s in self.series:
                quantity = m.quantity(s, j)
                total = cents_of(quantity, s.metric.unit_cents)
                usage_total += total
                lines.append(
                    {
                        "credit_type": USD_CENTS,
                        "ending_before": rfc(end),
                        "name": s.metric.name,
                        "product_id": self._uuid("product", s.metric.key),
                        "product_type": "UsageProductListItem",
                        "quantity": quantity,
                        "starting_at": rfc(start),
                        "total": total,
                        "type": "usage",
                        "unit_price": _number(s.metric.unit_cents),
                    }
                )
            if grant is not None and grant.start <= start and remaining > 0:
                applied = min(remaining, usage_total)
                remaining -= applied
                deductions.append((end + HOUR, -applied, invoice_id))
                lines.append(
                    {
                        "applied_commit_or_credit": {"id": grant.id, "type": grant.kind},
                        "commit_id": grant.id,
                        "commit_segment_id": grant.segment,
                        # Metronome's name for both prepaid commits and credits.
                        "commit_type": "PrepaidCommit",
                        "credit_type": USD_CENTS,
                        "ending_before": rfc(end),
                        "name": grant.name,
                        "product_id": self._uuid("product", grant.name),
                        "product_type": "FixedProductListItem",
                        "starting_at": rfc(start),
                        "total": -applied,
                        "type": "applied_commit_or_credit",
                    }
                )
            invoices.append(self._invoice(invoice_id, j, lines))
        invoices.reverse()
        data.invoices = invoices
        balances = [self._grant(grant, remaining, deductions)] if grant else []
        data.balances = balances
        extra = [one_off] if one_off is not None else []
        data.contracts = [
            self._contract(platform, addon, balances, amended_at=amended_at, extra=extra)
        ]
        data.usage = self._usage()
        return data

    def _schedule(self, name: str, amount: int, periods: range) -> Obj:
        b = self.m.bounds
        return {
            "id": self.ids.metronome("scheduled_charge"),
            "name": name,
            "product": {"id": self._uuid("product", name), "name": name},
            "schedule": {
                "credit_type": USD_CENTS,
                "schedule_items": [
                    {
                        "amount": amount,
                        "id": self.ids.metronome("schedule_item"),
                        "invoice_id": None,
                        "quantity": 1,
                        "timestamp": rfc(b[j]),
                        "unit_price": amount,
                    }
                    for j in periods
                ],
            },
        }

    def _scheduled_line(self, charge: Obj, index: int, invoice_id: str) -> Obj:
        item = charge["schedule"]["schedule_items"][index]
        item["invoice_id"] = invoice_id
        return {
            "credit_type": USD_CENTS,
            "name": charge["name"],
            "product_id": charge["product"]["id"],
            "product_type": "FixedProductListItem",
            "quantity": 1,
            "scheduled_charge_id": charge["id"],
            "total": item["amount"],
            "type": "scheduled",
            "unit_price": item["unit_price"],
        }

    def _grant_plan(self) -> Grant | None:
        """The prepaid commit or promotional credit that pays for usage first, if any."""
        m, b = self.m, self.m.bounds
        if m.story == "depleted_credits":
            # Enough to cover every period but the last, and 30% of the last.
            usage = [
                sum(cents_of(m.quantity(s, j), s.metric.unit_cents) for s in self.series)
                for j in range(PERIODS)
            ]
            amount = sum(usage[:-1]) + usage[-1] * 3 // 10
            return self._new_grant("PREPAID", amount, b[0])
        if m.story is not None:
            return None
        draw = m.rng.random()
        if draw < 0.4:  # an annual prepaid commit, sized to about a year of usage
            start = b[PERIODS - 12]
            monthly = sum(
                cents_of(m.quantity(s, PERIODS - 12), s.metric.unit_cents) for s in self.series
            )
            amount = int(monthly * 12 * m.rng.uniform(0.8, 1.4)) // 100_000 * 100_000 + 100_000
            return self._new_grant("PREPAID", amount, start)
        if draw < 0.55:  # a promotional credit
            amount = m.rng.choice((10_000, 25_000, 50_000, 100_000))
            return self._new_grant("CREDIT", amount, b[PERIODS - m.rng.randint(3, 9)])
        return None

    def _new_grant(self, kind: str, amount: int, start: datetime) -> Grant:
        grant_id = self.ids.metronome("commit" if kind == "PREPAID" else "credit")
        name = "Prepaid commitment" if kind == "PREPAID" else "Promotional credit"
        return Grant(kind, grant_id, name, amount, start, self.ids.metronome("segment"))

    def _grant(
        self, grant: Grant, remaining: int, deductions: list[tuple[datetime, int, str]]
    ) -> Obj:
        """The commit or credit as `customerBalances/list` returns it (balance and ledger)."""
        prefix = "PREPAID_COMMIT" if grant.kind == "PREPAID" else "CREDIT"
        ledger: list[Obj] = [
            {
                "amount": grant.amount,
                "segment_id": grant.segment,
                "timestamp": rfc(grant.start),
                "type": f"{prefix}_SEGMENT_START",
            }
        ]
        for when, value, invoice_id in deductions:
            ledger.append(
                {
                    "amount": value,
                    "contract_id": self.contract_id,
                    "invoice_id": invoice_id,
                    "segment_id": grant.segment,
                    "timestamp": rfc(when),
                    "type": f"{prefix}_AUTOMATED_INVOICE_DEDUCTION",
                }
            )
        obj: Obj = {
            "access_schedule": {
                "credit_type": USD_CENTS,
                "schedule_items": [
                    {
                        "amount": grant.amount,
                        "ending_before": rfc(add_months(grant.start, 24)),
                        "id": grant.segment,
                        "starting_at": rfc(grant.start),
                    }
                ],
            },
            "applicable_product_ids": [self._uuid("product", s.metric.key) for s in self.series],
            "balance": remaining,
            "contract": {"id": self.contract_id},
            "id": grant.id,
            "ledger": ledger,
            "name": grant.name,
            "priority": 100 if grant.kind == "PREPAID" else 50,
            "product": {"id": self._uuid("product", grant.name), "name": grant.name},
            "type": grant.kind,
        }
        if grant.kind == "PREPAID":
            obj.update(
                created_at=rfc(grant.start - DAY),
                description="Prepaid usage commitment",
                rate_type="LIST_RATE",
            )
        else:
            obj["description"] = "Promotional credit"
        return obj

    def _invoice(self, invoice_id: str, j: int, lines: list[Obj]) -> Obj:
        m, b = self.m, self.m.bounds
        total = sum(li["total"] for li in lines)
        subtotal = sum(li["total"] for li in lines if li["type"] != "applied_commit_or_credit")
        issued = b[j + 1] + HOUR
        external: Obj = {
            "billing_provider_type": "stripe",
            "external_status": "PAID",
            "invoiced_sub_total": total,
            "invoiced_total": total,
            "issued_at_timestamp": rfc(issued),
        }
        if total > 0:
            intent, charges = self.stripe.pay(
                amount=total,
                created=issued + timedelta(minutes=2),
                description=f"Metronome invoice {invoice_id[:8]}",
                metadata={"metronome_invoice_id": invoice_id, "account_id": m.account.account_id},
                attempts=_planted_tries(m, j, issued + timedelta(minutes=2), minutes=31),
            )
            external["external_payment_id"] = intent["id"]
            if charges[-1]["status"] != "succeeded":
                external["external_status"] = "PAYMENT_FAILED"
        return {
            "contract_id": self.contract_id,
            "created_at": rfc(b[j + 1]),
            "credit_type": USD_CENTS,
            "custom_fields": {},
            "customer_id": self.customer_id,
            "end_timestamp": rfc(b[j + 1]),
            "external_invoice": external,
            "id": invoice_id,
            "invoice_adjustments": [],
            "issued_at": rfc(issued),
            "line_items": lines,
            "net_payment_terms_days": 0,
            "start_timestamp": rfc(b[j]),
            "status": "FINALIZED",
            "subtotal": subtotal,
            "total": total,
            "type": "USAGE",
        }

    def _contract(
        self,
        platform: Obj,
        addon: Obj | None,
        balances: list[Obj],
        *,
        amended_at: datetime | None = None,
        extra: list[Obj] | None = None,
    ) -> Obj:
        b = self.m.bounds
        others = extra or []  # one-time scheduled charges in the contract from the start
        amended = amended_at or b[PERIODS - 1]
        created = rfc(b[0] - 2 * DAY)

        def terms_of(grant: Obj) -> Obj:  # contracts carry grants without balance and ledger
            return {k: v for k, v in grant.items() if k not in ("balance", "ledger")}

        def terms(charges: list[Obj]) -> Obj:
            return {
                "commits": [terms_of(c) for c in balances if c["type"] != "CREDIT"],
                "created_at": created,
                "created_by": "sales@sandbox-cloud.example",
                "credits": [terms_of(c) for c in balances if c["type"] == "CREDIT"],
                "discounts": [],
                "name": f"{self.m.account.name} usage contract",
                "net_payment_terms_days": 0,
                "overrides": [],
                "professional_services": [],
                "rate_card_id": self._uuid("rate_card", "standard"),
                "recurring_commits": [],
                "recurring_credits": [],
                "reseller_royalties": [],
                "scheduled_charges": charges,
                "scheduled_charges_on_usage_invoices": "ALL",
                "starting_at": rfc(b[0]),
                "transitions": [],
                "usage_statement_schedule": {
                    "billing_anchor_date": rfc(b[0]),
                    "frequency": "MONTHLY",
                },
            }

        amendments = []
        if addon is not None:
            amendments.append(
                {
                    "commits": [],
                    "created_at": rfc(amended - 3 * DAY),
                    "created_by": "sales@sandbox-cloud.example",
                    "credits": [],
                    "discounts": [],
                    "id": self.ids.metronome("amendment"),
                    "overrides": [],
                    "professional_services": [],
                    "reseller_royalties": [],
                    "scheduled_charges": [addon],
                    "starting_at": rfc(amended),
                }
            )
        return {
            "amendments": amendments,
            "current": terms([platform, addon, *others] if addon else [platform, *others]),
            "custom_fields": {},
            "customer_id": self.customer_id,
            "id": self.contract_id,
            "initial": terms([platform, *others]),
            "scheduled_charges_on_usage_invoices": "ALL",
        }

    def _usage(self) -> list[Obj]:
        start = self.m.bounds[0]
        out = []
        stamps = [rfc(start + i * DAY) for i in range(len(self.series[0].daily) + 1)]
        for s in self.series:
            metric_id = self._uuid("billable_metric", s.metric.key)
            for i, value in enumerate(s.daily):
                out.append(
                    {
                        "billable_metric_id": metric_id,
                        "billable_metric_name": s.metric.name,
                        "customer_id": self.customer_id,
                        "end_timestamp": stamps[i + 1],
                        "start_timestamp": stamps[i],
                        "value": value,
                    }
                )
        out.sort(key=lambda u: str(u["start_timestamp"]))  # oldest first, metrics side by side
        return out


def _number(value: Decimal) -> int | float:
    """A JSON number for Metronome: an int when integral (cents are usually whole)."""
    return int(value) if value == value.to_integral_value() else float(value)


# --- The labelled population -----------------------------------------------------------------


def _plant_usage(model: Model, plant: Plant) -> None:
    """A population account's usage (`population.Plant`): its own level, growth, weekly shape
    and noise, then its planted steps, peaks, late start and spikes."""
    rng = random.Random(f"{model.seed}:plant:{plant.key}")  # noqa: S311 - seeded test data
    days = (model.now - model.bounds[0]).days
    months = days / 30.44
    series = []
    for key in plant.metrics:
        metric = METRICS[key]
        low, high = math.log(metric.daily_low), math.log(metric.daily_high)
        level_now = math.exp(low + plant.level * (high - low))
        base = level_now / (1 + plant.growth) ** months  # so the level is `level` today
        daily = _daily(
            rng, days, model.bounds[0].weekday(), base, plant.growth, plant.weekend, plant.noise
        )
        if plant.step is not None:
            since, factor = plant.step
            for i in range(days - since, days):
                daily[i] = int(daily[i] * factor + 0.5)
        if plant.peaks is not None:
            every, latest, factor = plant.peaks
            for i in range(days - latest, 0, -every):
                daily[i] = int(daily[i] * factor + 0.5)
        if plant.usage_days is not None:
            first = days - plant.usage_days
            for i in range(first):
                daily[i] = 0
            for i in range(first, min(days, first + 4)):  # ramping up over the first days
                daily[i] = int(daily[i] * (0.35 + 0.65 * (i - first) / 4) + 0.5)
        for spiked, ago, factor in plant.spikes:
            if spiked == key:
                daily[days - ago] = int(daily[days - ago] * factor + 0.5)
        series.append(Series(metric, daily))
    model.series = series
    model.plan = plant.plan
    model.tax_percent = None


def _planted_tries(
    model: Model, period: int, first: datetime, *, minutes: int
) -> list[tuple[datetime, str | None]] | None:
    """A population account's payment attempts for its latest Orb or Metronome invoice: one
    decline (failed), or a decline then a success two days later (retried); None otherwise."""
    plant = model.plant
    if period != PERIODS - 1 or plant is None or plant.payment not in ("failed", "retried"):
        return None
    tries: list[tuple[datetime, str | None]] = [(first + timedelta(seconds=2), "generic_decline")]
    if plant.payment == "retried":
        tries.append((first + 2 * DAY + timedelta(minutes=minutes), None))
    return tries


def _plant_payments(model: Model, stripe: StripeBook) -> None:
    """A population account's dispute on its latest payment, or (Orb and Metronome billing) the
    latest payment charged a second time by hand (Stripe-billed duplicates are in `_settle`)."""
    plant = model.plant
    assert plant is not None
    paid = [c for c in stripe.data.charges if c["status"] == "succeeded"]
    if not paid:
        return
    latest = max(paid, key=lambda c: (c["created"], c["id"]))
    if plant.payment == "dispute":
        created = model.now - timedelta(days=plant.dispute_days_ago) + 9 * HOUR
        due = max(created + 7 * DAY, model.now + 2 * DAY)
        stripe.dispute(latest, created, due, reason=plant.dispute_reason)
    elif plant.payment == "duplicate" and model.account.billing != "stripe":
        charged = datetime.fromtimestamp(latest["created"], model.now.tzinfo)
        gap = timedelta(hours=3) if model.account.billing == "orb" else timedelta(minutes=40)
        stripe.pay(
            amount=latest["amount"],
            created=charged + gap,
            description=latest["description"],
            metadata=dict(latest["metadata"]),
        )


# --- One account -----------------------------------------------------------------------------


def build_account(world: WorldIndex, acct: SandboxAccount) -> AccountBundle:
    """Generate all provider objects of one account."""
    model = _model(world, acct)
    stripe = StripeBook(model)
    orb = metronome = None
    if acct.billing == "stripe":
        stripe.bill()
    elif acct.billing == "orb":
        orb = OrbBook(model, stripe).bill()
    if acct.metronome_customer_id is not None:
        series = model.extra_series if acct.billing == "orb" else model.series
        metronome = MetronomeBook(model, stripe, series).bill()
    if model.plant is not None:
        _plant_payments(model, stripe)
    stripe.plant_refunds()
    stripe.finish_customer(delinquent=model.story == "failed_payment_dunning")
    return AccountBundle(stripe=stripe.data, orb=orb, metronome=metronome)

"""The synthetic bank: realistic transactions with planted risk patterns and known ground truth.

`seed_bank` (re)creates bank.accounts, bank.transactions, bank.risk_events and
bank.ground_truth as a pure function of its arguments (accounts, days, end date, seed,
rates, control flag): one `numpy.random.Generator(seed)`, array operations only, binary COPY.

Normal life (riskmodel/synthetic_life.py): accounts with a home country, segment, credit
limit, tenure and a spending scale; merchants with a category (mcc), a country and a
channel ("card_present", "online", "atm"; employers credit salaries online with mcc
"payroll" and a positive amount like every other row); daily counts with weekly seasonality;
favourite merchants; personal hours of day (timestamps are UTC, shifted by the home or
travel country's offset); monthly salaries; a trip abroad (probability 1 - exp(-1.5 days / 365)
per account), most of them preceded by an online airline ticket (mcc 4511). An account that
defaults is closed: it has no transactions after its default.

Planted patterns (riskmodel/synthetic_patterns.py). Every planted account gets one risk
event after its pattern's last transaction, reported 1-21 days later (the demo spec's
reporting_lag_days); only events reported by the end of `end_date` are in bank.risk_events
(the bank's knowledge on that day), while bank.ground_truth keeps every planted event_ts.
Look-alikes get the same kinds of transactions and no event.

- card_testing -> fraud. Planted: 5-10 tiny online charges (0.50-1.99) at new merchants within
  minutes, then 1-3 days later 2-4 large online charges (8-20x the account's usual amount).
  Look-alike: the same large purchases first, the tiny charges 1-3 days later.
  Order-dependent: tiny-before-large. Aggregate-visible: many tiny and large online charges
  (separates both groups from normal accounts, not from each other).
- account_takeover -> fraud. Planted: 4-7 charges over 1-4 days in a foreign country, at night
  in the home time zone, online or card present, amounts rising 1.4-1.9x each time.
  Look-alike ("travel after a purchase"): an airline ticket at home carrying the largest
  amount, then a trip 2-9 days later with the other amounts falling, at daytime local hours.
  Same count and total. Order-dependent: rising vs falling amounts, ticket first.
  Aggregate-visible: foreign share, night-time share (partly: travel shifts UTC hours).
- bust_out -> default. Planted: 12-25 purchases and ATM withdrawals (30%) over 2-6 weeks, their
  density and size ramping up, summing to 0.85-1.25x the credit limit; default 3-15 days after.
  Look-alike: the same transactions mirrored in time (spend that ramps down). Same totals.
  Order-dependent: the trend. Aggregate-visible: high spend relative to the limit, ATM share.
- compromised_merchant -> fraud or chargeback. One card-present merchant per home country is
  breached for 10 days. Planted: a visit during the breach, then 5-20 days later 2-4 online
  charges (3-10x usual). Look-alike: the same online charges first, then a visit to the same
  merchant after the breach closed. Order/timing-dependent: charges after a breach-time visit.
  Aggregate-visible: large online charges, a visit to a merchant that had a breach.
- background -> any type: unexplained events on otherwise normal accounts (label noise).

Control bank (`order_patterns=False`): look-alikes follow the planted order exactly, but with
amounts at 35% of the planted ones (and only 1-3 tiny charges for card testing), so planted and
look-alike differ in per-account aggregates and order carries nothing: a sequence model
should not beat a GBDT on aggregates there.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from riskmodel.errors import ConfigError
from riskmodel.settings import Settings
from riskmodel.synthetic_life import DAY, Txns, build_accounts, build_world, everyday
from riskmodel.synthetic_load import TXN_COLUMNS, Bank, load_bank, table_checksums, transaction_slots
from riskmodel.synthetic_patterns import (
    EVENT_TYPES,
    PATTERNS,
    Planted,
    account_takeover,
    background,
    bust_out,
    card_testing,
    compromised_merchant,
)

__all__ = ["TXN_COLUMNS", "Bank", "PatternRates", "SeedReport", "generate_bank", "load_bank",
           "pattern_counts", "seed_bank", "table_checksums", "transaction_slots"]

log = logging.getLogger("riskflow.synthetic")

MIN_DAYS = 45


@dataclass(frozen=True)
class PatternRates:
    """Share of accounts carrying each planted pattern, look-alikes per planted, background noise."""

    card_testing: float = 0.010
    account_takeover: float = 0.010
    bust_out: float = 0.006
    compromised_merchant: float = 0.010
    lookalike_ratio: float = 1.0
    background: float = 0.003

    def __post_init__(self) -> None:
        for name in ("card_testing", "account_takeover", "bust_out", "compromised_merchant",
                     "background"):
            value = getattr(self, name)
            if not 0.0 <= value <= 0.2:
                raise ConfigError(f"PatternRates.{name} = {value} must be within [0, 0.2]")
        if not 0.0 <= self.lookalike_ratio <= 5.0:
            raise ConfigError(f"PatternRates.lookalike_ratio = {self.lookalike_ratio} must be in [0, 5]")
        if sum(self.planted()) * (1 + self.lookalike_ratio) + self.background > 0.6:
            raise ConfigError("PatternRates: planted and look-alike accounts would exceed 60% of the bank")

    def planted(self) -> tuple[float, float, float, float]:
        """Planted rates in PATTERNS order (without background)."""
        return (self.card_testing, self.account_takeover, self.bust_out, self.compromised_merchant)


@dataclass(frozen=True)
class SeedReport:
    """What `seed_bank` loaded: rows per table, per-pattern counts, timing, stream checksums."""

    accounts: int
    days: int
    end_date: dt.date
    seed: int
    order_patterns: bool
    rows: dict[str, int]
    patterns: dict[str, dict[str, int]]
    seconds: float
    seconds_generate: float
    checksums: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-safe form for the CLI and benchmarks."""
        out = asdict(self)
        out["end_date"] = self.end_date.isoformat()
        return out


def _check(accounts: int, days: int, seed: int) -> None:
    if not 1 <= accounts <= 20_000_000:
        raise ConfigError(f"accounts = {accounts} must be within [1, 20000000]")
    if not MIN_DAYS <= days <= 3650:
        raise ConfigError(f"days = {days} must be within [{MIN_DAYS}, 3650] (patterns need room)")
    if seed < 0:
        raise ConfigError(f"seed = {seed} must be >= 0")


def _assign(rng: np.random.Generator, n: int, rates: PatternRates) -> list[tuple[np.ndarray, np.ndarray]]:
    """Disjoint account indices per pattern: (accounts, is_lookalike), then background accounts."""
    order = rng.permutation(n)
    taken = 0
    out = []
    for rate in rates.planted():
        planted = rng.binomial(n, rate)
        look = rng.binomial(n, min(1.0, rate * rates.lookalike_ratio))
        count = min(planted + look, n - taken)
        chosen = np.sort(order[taken:taken + count])
        is_look = np.zeros(count, bool)
        is_look[rng.permutation(count)[: max(0, count - planted)]] = True
        out.append((chosen, is_look))
        taken += count
    noise = rng.binomial(n, rates.background)
    out.append((np.sort(order[taken:taken + noise]), np.zeros(min(noise, n - taken), bool)))
    return out


def generate_bank(*, accounts: int, days: int, end_date: dt.date, seed: int,
                  order_patterns: bool = True, rates: PatternRates | None = None) -> Bank:
    """Generate the whole bank in memory (no database): a pure function of the arguments."""
    _check(accounts, days, seed)
    rates = rates or PatternRates()
    rng = np.random.default_rng(seed)
    first = end_date - dt.timedelta(days=days - 1)
    day0 = (first - dt.date(1970, 1, 1)).days
    day_of_month = np.array([(first + dt.timedelta(days=i)).day for i in range(days)])
    world = build_world(rng, accounts)
    acc = build_accounts(rng, world, accounts, days)
    life = everyday(rng, world, acc, days, first.weekday(), day_of_month)
    lo = min(14, days // 5)
    weeks_max = min(42, days // 3)
    spans = (7, 16, weeks_max + 16)
    groups = _assign(rng, accounts, rates)
    parts = []
    for i, (pattern, span) in enumerate(zip((card_testing, account_takeover, bust_out), spans,
                                            strict=True)):
        chosen, look = groups[i]
        start = rng.integers(lo, max(lo + 1, days - span), len(chosen))
        extra = (weeks_max,) if pattern is bust_out else ()
        parts.append(pattern(rng, world, acc, chosen, look, start, order_patterns, *extra))
    chosen, look = groups[3]
    parts.append(compromised_merchant(rng, world, acc, chosen, look, days, lo, order_patterns))
    parts.append(background(rng, groups[4][0], days))
    planted = Planted.concat(parts)
    txns = Txns.concat([life, planted.txns])
    txns = txns.select((txns.t >= 0) & (txns.t < _closed_at(planted, accounts, days)[txns.account]))
    txns = txns.select(np.argsort(txns.t, kind="stable"))
    end_us = (day0 + days) * DAY * 1_000_000
    return Bank(world, acc, txns, planted, day0, end_us, end_date)


def _closed_at(planted: Planted, accounts: int, days: int) -> np.ndarray:
    """Per account, the time its card stops working: a default closes it, else the window's end."""
    closed = np.full(accounts, days * DAY, np.int64)
    defaulted = planted.ev_type == EVENT_TYPES.index("default")
    np.minimum.at(closed, planted.ev_account[defaulted], planted.ev_time[defaulted])
    return closed


def pattern_counts(bank: Bank) -> dict[str, dict[str, int]]:
    """Planted and look-alike accounts and loaded events per pattern."""
    p = bank.planted
    reported = p.ev_reported * 1_000_000 + bank.day0_us < bank.end_us
    ev_pattern = p.gt_pattern[~p.gt_lookalike]  # events are aligned with the non-look-alike rows
    out = {}
    for code, name in enumerate(PATTERNS):
        mine = p.gt_pattern == code
        out[name] = {"planted": int((mine & ~p.gt_lookalike).sum()),
                     "lookalike": int((mine & p.gt_lookalike).sum()),
                     "events": int(((ev_pattern == code) & reported).sum())}
    return out


def seed_bank(settings: Settings, *, accounts: int, days: int, end_date: dt.date, seed: int,
              order_patterns: bool = True, rates: PatternRates | None = None,
              progress: bool = False) -> SeedReport:
    """Generate the synthetic bank and (re)load bank.* with it; the caller ran init_database first."""
    started = time.perf_counter()
    bank = generate_bank(accounts=accounts, days=days, end_date=end_date, seed=seed,
                         order_patterns=order_patterns, rates=rates)
    generated = time.perf_counter() - started
    rows, sums = load_bank(settings, bank, progress=progress)
    seconds = time.perf_counter() - started
    log.info("seed: %d accounts x %d days -> %d transactions in %.1f s (generate %.1f s)",
             accounts, days, rows["transactions"], seconds, generated)
    return SeedReport(accounts, days, end_date, seed, order_patterns, rows, pattern_counts(bank),
                      round(seconds, 3), round(generated, 3), sums)

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
import hashlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import psycopg
from psycopg import sql
from tqdm import tqdm

from riskmodel.db import connect
from riskmodel.errors import ConfigError, DatabaseError
from riskmodel.settings import Settings
from riskmodel.synthetic_copy import (
    bool_field,
    categorical,
    concat_tables,
    copy_rows,
    date_field,
    int4_field,
    int8_field,
    null_or,
    numeric_cents_field,
    text_table,
    timestamptz_field,
)
from riskmodel.synthetic_life import (
    CHANNELS,
    COUNTRIES,
    DAY,
    KIND_CHANNEL,
    MCC_CODES,
    SEGMENTS,
    Accounts,
    Txns,
    World,
    build_accounts,
    build_world,
    everyday,
)
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

log = logging.getLogger("riskflow.synthetic")

BANK = "bank"
TABLES = ("accounts", "transactions", "risk_events", "ground_truth")
ORDER_BY = {"accounts": ("account_id",), "transactions": ("txn_id",), "risk_events": ("event_id",),
            "ground_truth": ("account_id", "pattern")}
TXN_COLUMNS = ("txn_id", "account_id", "ts", "amount", "mcc", "channel", "country", "merchant_id")
INDEXES = (("transactions_ts_idx", "ts"), ("transactions_account_id_idx", "account_id"))
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


@dataclass(frozen=True)
class Bank:
    """A generated bank in memory, ready to load (transactions sorted by time; txn_id = row + 1)."""

    world: World
    acc: Accounts
    txns: Txns
    planted: Planted
    day0: int
    end_us: int
    end_date: dt.date

    @property
    def day0_us(self) -> int:
        """Microseconds since 1970 of the window's first midnight (UTC)."""
        return self.day0 * DAY * 1_000_000


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


def _account_slots(bank: Bank, end_date: dt.date):
    acc = bank.acc
    ids = np.arange(1, acc.n + 1, dtype=np.int64)
    end_day = (end_date - dt.date(1970, 1, 1)).days
    open_day = end_day - np.round(acc.tenure_months * 30.44).astype(np.int64)
    segments, countries = text_table(SEGMENTS), text_table(COUNTRIES)

    def slots(r: slice) -> list:
        return [int8_field(ids[r]), date_field(open_day[r]), numeric_cents_field(acc.credit_cents[r]),
                int4_field(acc.tenure_months[r]), categorical(acc.segment[r], segments),
                categorical(acc.home[r], countries)]
    return ["account_id", "open_date", "credit_limit", "tenure_months", "segment", "home_country"], slots


def transaction_slots(bank: Bank) -> tuple[list[str], Callable[[slice], list]]:
    """COPY columns of bank.transactions and the encoder of a block of `bank`'s transactions."""
    w, tx = bank.world, bank.txns
    tail = concat_tables(text_table([MCC_CODES[c] for c in w.mcc.tolist()]),
                         text_table([CHANNELS[KIND_CHANNEL[k]] for k in w.kind.tolist()]),
                         text_table([COUNTRIES[c] for c in w.country.tolist()]),
                         text_table(w.ids))

    def slots(r: slice) -> list:
        ids = np.arange(r.start + 1, r.stop + 1, dtype=np.int64)
        return [int8_field(ids), int8_field(tx.account[r] + 1),
                timestamptz_field(bank.day0_us + tx.t[r] * 1_000_000),
                numeric_cents_field(tx.cents[r]), categorical(tx.merchant[r], tail)]
    return list(TXN_COLUMNS), slots


def _event_slots(bank: Bank):
    p = bank.planted
    at = bank.day0_us + p.ev_time * 1_000_000
    rep = bank.day0_us + p.ev_reported * 1_000_000
    keep = np.flatnonzero(rep < bank.end_us)
    keep = keep[np.lexsort((p.ev_account[keep], at[keep]))]
    types = text_table(EVENT_TYPES)

    def slots(r: slice) -> list:
        k = keep[r]
        return [int8_field(p.ev_account[k] + 1), timestamptz_field(at[k]), timestamptz_field(rep[k]),
                categorical(p.ev_type[k], types)]
    return ["account_id", "event_ts", "reported_at", "event_type"], slots, len(keep)


def _truth_slots(bank: Bank):
    p = bank.planted
    order = np.argsort(p.gt_account, kind="stable")
    patterns = text_table(PATTERNS)

    def slots(r: slice) -> list:
        k = order[r]
        event = p.gt_event[k]
        return [int8_field(p.gt_account[k] + 1), categorical(p.gt_pattern[k], patterns),
                bool_field(p.gt_lookalike[k]), timestamptz_field(bank.day0_us + p.gt_start[k] * 1_000_000),
                null_or(timestamptz_field(bank.day0_us + np.maximum(event, 0) * 1_000_000), event >= 0)]
    return ["account_id", "pattern", "is_lookalike", "start_ts", "event_ts"], slots


def load_bank(settings: Settings, bank: Bank, *,
              progress: bool = False) -> tuple[dict[str, int], dict[str, str]]:
    """Replace the four bank tables with `bank` in one transaction; rows and sha256 per table stream."""
    acc_cols, acc_slots = _account_slots(bank, bank.end_date)
    txn_cols, txn_slots = transaction_slots(bank)
    ev_cols, ev_slots, n_events = _event_slots(bank)
    gt_cols, gt_slots = _truth_slots(bank)
    plan = [("accounts", acc_cols, bank.acc.n, acc_slots),
            ("transactions", txn_cols, len(bank.txns), txn_slots),
            ("risk_events", ev_cols, n_events, ev_slots),
            ("ground_truth", gt_cols, len(bank.planted.gt_account), gt_slots)]
    rows: dict[str, int] = {}
    sums: dict[str, str] = {}
    bar = tqdm(total=sum(p[2] for p in plan), unit="row", unit_scale=True, desc="seed: load",
               file=sys.stderr, disable=not progress)
    try:
        with connect(settings, admin=True) as conn, conn.cursor() as cur:
            cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
            for name, _col in INDEXES:
                cur.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(BANK, name)))
            cur.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(
                sql.SQL(", ").join(sql.Identifier(BANK, t) for t in TABLES)))
            for name, cols, n, slots in plan:
                digest = hashlib.sha256()
                rows[name] = copy_rows(cur, sql.Identifier(BANK, name), cols, n, slots, freeze=True,
                                       sink=digest.update, on_chunk=bar.update)
                sums[name] = digest.hexdigest()
            bar.set_description("seed: index")
            for name, col in INDEXES:
                cur.execute(sql.SQL("CREATE INDEX {} ON {} ({})").format(
                    sql.Identifier(name), sql.Identifier(BANK, "transactions"), sql.Identifier(col)))
            cur.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(
                sql.Identifier(BANK, t) for t in TABLES)))
    except psycopg.errors.UndefinedTable as exc:
        raise DatabaseError(f"seed: the demo source tables are missing (run `riskflow db init "
                            f"--demo-source`): {str(exc).strip().splitlines()[0]}") from None
    finally:
        bar.close()
    return rows, sums


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


def table_checksums(settings: Settings) -> dict[str, str]:
    """sha256 of each bank table's rows in key order (text COPY in UTC), for determinism checks."""
    out = {}
    with connect(settings, admin=True) as conn, conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        for name in TABLES:
            digest = hashlib.sha256()
            query = sql.SQL("COPY (SELECT * FROM {} ORDER BY {}) TO STDOUT").format(
                sql.Identifier(BANK, name), sql.SQL(", ").join(sql.Identifier(c) for c in ORDER_BY[name]))
            with cur.copy(query) as copy:
                for block in copy:
                    digest.update(block)
            out[name] = digest.hexdigest()
    return out

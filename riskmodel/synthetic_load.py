"""Loading a generated synthetic bank into bank.* with binary COPY, and checksums of what is there.

One transaction: drop the transactions indexes, TRUNCATE the four tables, COPY (FREEZE) each,
rebuild the indexes, ANALYZE. Row order is deterministic (transactions by time, txn_id = row + 1).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql
from tqdm import tqdm

from riskmodel.db import connect
from riskmodel.errors import DatabaseError, first_line
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
)
from riskmodel.synthetic_patterns import EVENT_TYPES, PATTERNS, Planted

BANK = "bank"
TABLES = ("accounts", "transactions", "risk_events", "ground_truth")
ORDER_BY = {"accounts": ("account_id",), "transactions": ("txn_id",), "risk_events": ("event_id",),
            "ground_truth": ("account_id", "pattern")}
TXN_COLUMNS = ("txn_id", "account_id", "ts", "amount", "mcc", "channel", "country", "merchant_id")
INDEXES = (("transactions_ts_idx", "ts"), ("transactions_account_id_idx", "account_id"))

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


def _account_slots(bank: Bank, end_date: dt.date) -> tuple[list[str], Callable[[slice], list]]:
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


def _event_slots(bank: Bank) -> tuple[list[str], Callable[[slice], list], int]:
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


def _truth_slots(bank: Bank) -> tuple[list[str], Callable[[slice], list]]:
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
                            f"--demo-source`): {first_line(exc)}") from None
    finally:
        bar.close()
    return rows, sums


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

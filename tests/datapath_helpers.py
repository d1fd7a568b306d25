"""A tiny deterministic bank for the data-path tests (small, fast, exact control over the rows)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
import polars as pl
from psycopg import sql

from riskmodel.db import connect
from riskmodel.features import FeatureState, fit_state
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec

TXN_COLUMNS = ["txn_id", "account_id", "ts", "amount", "mcc", "channel", "country", "merchant_id"]
END = date(2026, 6, 30)


def insert(settings: Settings, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Append rows to bank.<table> as the admin (the pipeline may not write source tables)."""
    with connect(settings, admin=True) as conn, conn.cursor() as cur:
        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier("bank", table), sql.SQL(", ").join(map(sql.Identifier, columns)))) as cp:
            for row in rows:
                cp.write_row(row)


def execute(settings: Settings, query: str, params: Sequence[Any] = ()) -> None:
    """Run one statement as the admin."""
    with connect(settings, admin=True) as conn:
        conn.execute(query, params)


def make_transactions(accounts: int, days: int, end: date = END, seed: int = 7,
                      per_day: float = 1.5) -> list[tuple]:
    """Random but seeded transactions for accounts 1..n over the `days` days ending at `end` (UTC)."""
    rng = np.random.default_rng(seed)
    n = int(accounts * days * per_day)
    start = datetime.combine(end - timedelta(days=days - 1), time(), tzinfo=UTC)
    secs = rng.integers(0, days * 86400, n)
    acc = rng.integers(1, accounts + 1, n)
    amount = np.round(rng.lognormal(3, 1.2, n), 2)
    mcc = rng.choice(["5411", "5812", "5999", "4829", "6011"], n, p=[.4, .3, .15, .1, .05])
    channel = rng.choice(["pos", "online", "atm"], n, p=[.6, .3, .1])
    country = rng.choice(["DE", "FR", "US"], n, p=[.8, .15, .05])
    merchant = rng.integers(1, 40, n)
    return [(i + 1, int(acc[i]), start + timedelta(seconds=int(secs[i])), float(amount[i]), str(mcc[i]),
             str(channel[i]), str(country[i]), f"m{merchant[i]}") for i in range(n)]


def seed_tiny_bank(settings: Settings, accounts: int = 30, days: int = 40, end: date = END,
                   seed: int = 7) -> list[tuple]:
    """Fill bank.accounts and bank.transactions with a small seeded bank; returns the transactions."""
    rng = np.random.default_rng(seed + 1)
    insert(settings, "accounts", ["account_id", "open_date", "credit_limit", "tenure_months", "segment",
                                  "home_country"],
           [(a, date(2020, 1, 1), float(rng.integers(5, 50) * 100), int(rng.integers(1, 90)),
             str(rng.choice(["retail", "premium", "student"])), "DE") for a in range(1, accounts + 1)])
    rows = make_transactions(accounts, days, end, seed)
    insert(settings, "transactions", TXN_COLUMNS, rows)
    return rows


def state_for(spec: FeatureSpec, rows: list[tuple], accounts: pl.DataFrame | None = None) -> FeatureState:
    """A FeatureState fitted on the given transaction tuples."""
    frame = pl.DataFrame(rows, schema=TXN_COLUMNS, orient="row")
    return fit_state(spec, frame, accounts)

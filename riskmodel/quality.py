"""Data-quality rules for an extracted batch of transactions, the quarantine, and the failure threshold.

Each bad row is caught by the first rule it breaks, in RULES order; good rows continue to the
lake. Bad rows go to `{schema}.quarantine` with their rule and a reason, once per
(source, rule, txn id, txn date) however often the extract reruns.
"""

from __future__ import annotations

import io
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import polars as pl
import psycopg
from psycopg import sql

from riskmodel.errors import DataQualityError
from riskmodel.spec import TransactionsSpec

log = logging.getLogger("riskflow.quality")

RULES = ("null_account", "null_timestamp", "bad_amount", "future_timestamp", "duplicate_txn_id")
FUTURE_TOLERANCE = timedelta(minutes=10)
TXN_DATE = "txn_date"


@dataclass
class QualityResult:
    """Good rows, bad rows (with `rule` and `reason`), and how many rows each rule caught."""

    good: pl.DataFrame
    bad: pl.DataFrame
    counts: dict[str, int]
    total: int

    @property
    def bad_fraction(self) -> float:
        """Share of the batch that was quarantined."""
        return self.bad.height / self.total if self.total else 0.0


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The instant local `day` starts in the business time zone, as an aware UTC datetime."""
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


def future_cutoff() -> datetime:
    """The first instant a row's timestamp counts as in the future: the extract's clock plus
    `FUTURE_TOLERANCE` for clock skew between the bank's systems."""
    return datetime.now(UTC) + FUTURE_TOLERANCE


def rule_exprs(tx: TransactionsSpec, future: datetime) -> list[tuple[str, pl.Expr, pl.Expr]]:
    """(rule, condition, reason) per rule; conditions are evaluated in order on the raw batch.

    `future` is `future_cutoff()`: rows stamped at or after it cannot have happened yet."""
    amount = pl.col(tx.amount).cast(pl.Float64)
    bad_amount = amount.is_null() | ~amount.is_finite() | (amount.abs() > tx.max_amount)
    amount_reason = (pl.when(amount.is_null()).then(pl.lit(f"{tx.amount} is null"))
                     .when(~amount.is_finite()).then(pl.lit(f"{tx.amount} is not finite"))
                     .when(amount.abs() > tx.max_amount)
                     .then(pl.lit(f"|{tx.amount}| > max_amount {tx.max_amount:g}"))
                     .otherwise(pl.lit(f"{tx.amount} < 0 and allow_negative is false")))
    if not tx.allow_negative:
        bad_amount = bad_amount | (amount < 0)
    dup = pl.col(tx.id).is_not_null() & ~pl.col(tx.id).is_first_distinct()
    return [
        ("null_account", pl.col(tx.account_id).is_null(), pl.lit(f"{tx.account_id} is null")),
        ("null_timestamp", pl.col(tx.timestamp).is_null(), pl.lit(f"{tx.timestamp} is null")),
        ("bad_amount", bad_amount, amount_reason),
        ("future_timestamp", pl.col(tx.timestamp) >= future,
         pl.lit(f"{tx.timestamp} is in the future (after the extract's clock + {FUTURE_TOLERANCE})")),
        ("duplicate_txn_id", dup, pl.lit(f"{tx.id} seen earlier in this batch")),
    ]


def check_batch(frame: pl.DataFrame, tx: TransactionsSpec, future: datetime) -> QualityResult:
    """Split `frame` (sorted deterministically) into good and bad rows by the rules, first match wins;
    `future` is `future_cutoff()`."""
    rules = rule_exprs(tx, future)
    code = pl.lit(None, pl.Int8)
    for k in reversed(range(len(rules))):
        code = pl.when(rules[k][1].fill_null(False)).then(pl.lit(k, pl.Int8)).otherwise(code)
    tagged = frame.with_columns(code.alias("_code"))
    good = tagged.filter(pl.col("_code").is_null()).drop("_code")
    bad = tagged.filter(pl.col("_code").is_not_null())
    rule_col = pl.lit(None, pl.String)
    reason_col = pl.lit(None, pl.String)
    for k in reversed(range(len(rules))):
        rule_col = pl.when(pl.col("_code") == k).then(pl.lit(rules[k][0])).otherwise(rule_col)
        reason_col = pl.when(pl.col("_code") == k).then(rules[k][2]).otherwise(reason_col)
    bad = bad.with_columns(rule_col.alias("rule"), reason_col.alias("reason")).drop("_code")
    counts = dict.fromkeys(RULES, 0)
    for rule, n in bad.group_by("rule").len().iter_rows():
        counts[rule] = int(n)
    return QualityResult(good, bad, counts, frame.height)


def quarantine(conn: psycopg.Connection, schema: str, run_id: uuid.UUID, source: str,
               tx: TransactionsSpec, bad: pl.DataFrame, tz: ZoneInfo) -> dict[str, int]:
    """Insert bad rows not quarantined before into `{schema}.quarantine` (caller's transaction).

    Returns how many rows each rule added."""
    added = dict.fromkeys(RULES, 0)
    if bad.is_empty():
        return added
    data_cols = [c for c in bad.columns if c not in ("rule", "reason")]
    rows = bad.select(
        pl.lit(str(run_id)).alias("run_id"), pl.lit(source).alias("source"), "rule", "reason",
        pl.col(tx.id).cast(pl.String).alias("txn_id"),
        pl.col(tx.account_id).cast(pl.String).alias("account_id"),
        pl.col(tx.timestamp).dt.convert_time_zone(tz.key).dt.date().alias("txn_date"),
        pl.struct([pl.col(c).cast(pl.String) for c in data_cols]).struct.json_encode().alias("row_data"),
    )
    buf = io.BytesIO()
    rows.write_csv(buf, include_header=False, null_value="")
    cols = ["run_id", "source", "rule", "reason", "txn_id", "account_id", "txn_date", "row_data"]
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS _rf_quarantine (run_id uuid, source text, rule text, "
                    "reason text, txn_id text, account_id text, txn_date date, row_data jsonb) "
                    "ON COMMIT DELETE ROWS")
        cur.execute("TRUNCATE _rf_quarantine")
        with cur.copy("COPY _rf_quarantine FROM STDIN (FORMAT CSV)") as cp:
            cp.write(buf.getvalue())
        target = sql.Identifier(schema, "quarantine")
        col_list = sql.SQL(", ").join(map(sql.Identifier, cols))
        cur.execute(sql.SQL(
            "INSERT INTO {target} ({cols}) SELECT {cols} FROM _rf_quarantine t WHERE NOT EXISTS ("
            "SELECT 1 FROM {target} q WHERE q.source = t.source AND q.rule = t.rule "
            "AND q.txn_id IS NOT DISTINCT FROM t.txn_id AND q.txn_date IS NOT DISTINCT FROM t.txn_date) "
            "ON CONFLICT (source, rule, txn_id, txn_date) WHERE txn_id IS NOT NULL DO NOTHING RETURNING rule"
        ).format(target=target, cols=col_list))
        for (rule,) in cur.fetchall():
            added[rule] += 1
    return added


def enforce_threshold(result: QualityResult, max_bad_fraction: float, source: str,
                      already_known: int = 0) -> None:
    """Raise DataQualityError naming the rules when the bad share exceeds `max_bad_fraction`.

    `already_known` bad rows (quarantined by an earlier run and not tied to this run's dates)
    do not count, so a handful of old undated rows cannot fail every small nightly batch."""
    counted = result.bad.height - already_known
    if not result.total or counted / result.total <= max_bad_fraction:
        return
    worst = sorted(((n, r) for r, n in result.counts.items() if n), reverse=True)
    detail = ", ".join(f"rule {r}: {n} rows" for n, r in worst)
    raise DataQualityError(
        f"{source}: {counted} of {result.total} rows ({counted / result.total:.2%}) failed quality "
        f"checks, above max_bad_fraction {max_bad_fraction:.2%} ({detail}); see the quarantine table")

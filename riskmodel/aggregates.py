"""Per-account aggregates at a cutoff, from the same prepared frame the sequence builder reads.

They feed the GBDT baseline and the model head: over 1, 3, 7, 30, 90 days, count / sum / mean /
max / std of amount, distinct categories and merchants, online / ATM / foreign shares, tiny
amounts, categories and countries new versus the 90 days before the window; plus the amount
trend (last 30 days vs the 60 before) and days since the last event. Raw scale, NaN-free.
Work is NumPy `bincount` over account-sorted rows and one Polars group-by per pair column.
"""

from __future__ import annotations

import numpy as np
import polars as pl

WINDOWS = (1, 3, 7, 30, 90)
NEW_LOOKBACK_DAYS = 90
HISTORY_DAYS = max(WINDOWS) + NEW_LOOKBACK_DAYS
DAY_US = 86_400_000_000

ACC = "_acc_idx"
TS = "_ts_us"
AMOUNT = "_amount"
ONLINE, ATM, FOREIGN, TINY = "_is_online", "_is_atm", "_is_foreign", "_is_tiny"
CATEGORY, MERCHANT, COUNTRY = "_category", "_merchant", "_country"


def aggregate_names(frame_columns: list[str]) -> list[str]:
    """Aggregate names, in column order, for a prepared frame with these columns."""
    names: list[str] = []
    for w in WINDOWS:
        names += [f"amount_count_{w}d", f"amount_sum_{w}d", f"amount_mean_{w}d", f"amount_max_{w}d",
                  f"amount_std_{w}d"]
        if CATEGORY in frame_columns:
            names += [f"distinct_categories_{w}d", f"new_categories_{w}d"]
        if MERCHANT in frame_columns:
            names.append(f"distinct_merchants_{w}d")
        if COUNTRY in frame_columns:
            names.append(f"new_countries_{w}d")
        names += [f"share_{flag[4:]}_{w}d" for flag in (ONLINE, ATM, FOREIGN) if flag in frame_columns]
        names.append(f"tiny_count_{w}d")
    return names + ["amount_trend_30_60", "days_since_last_event"]


def _group_max(idx: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, np.float64)
    if idx.size == 0:
        return out
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    out[idx[starts]] = np.maximum.reduceat(values, starts)
    return out


def _pair_counts(window: pl.DataFrame, column: str, end_us: int, n: int) -> tuple[dict[int, np.ndarray],
                                                                                  dict[int, np.ndarray]]:
    """Per window: distinct values of `column` per account, and those unseen in the 90 days before."""
    exprs = [pl.col(TS).max().alias("_last")]
    for w in WINDOWS:
        start = end_us - w * DAY_US
        prior = (pl.col(TS) < start) & (pl.col(TS) >= start - NEW_LOOKBACK_DAYS * DAY_US)
        exprs.append(prior.any().alias(f"_prior_{w}"))
    pairs = window.filter(pl.col(column).is_not_null()).group_by(ACC, column).agg(exprs)
    idx = pairs[ACC].to_numpy()
    last = pairs["_last"].to_numpy()
    distinct, new = {}, {}
    for w in WINDOWS:
        inside = last >= end_us - w * DAY_US
        distinct[w] = np.bincount(idx[inside], minlength=n).astype(np.float64)
        fresh = inside & ~pairs[f"_prior_{w}"].to_numpy()
        new[w] = np.bincount(idx[fresh], minlength=n).astype(np.float64)
    return distinct, new


def compute_aggregates(window: pl.DataFrame, n: int, end_us: int) -> tuple[np.ndarray, list[str]]:
    """(n, A) float32 aggregates for accounts 0..n-1 of an account-sorted frame ending before `end_us`."""
    idx = window[ACC].to_numpy()
    ts = window[TS].to_numpy()
    amount = window[AMOUNT].to_numpy().astype(np.float64)
    cols: list[np.ndarray] = []
    pairs = {c: _pair_counts(window, c, end_us, n) for c in (CATEGORY, MERCHANT, COUNTRY)
             if c in window.columns}
    flags = {c: window[c].to_numpy().astype(np.float64) for c in (ONLINE, ATM, FOREIGN, TINY)
             if c in window.columns}
    sums: dict[int, np.ndarray] = {}
    for w in WINDOWS:
        m = ts >= end_us - w * DAY_US
        i, a = idx[m], amount[m]
        count = np.bincount(i, minlength=n).astype(np.float64)
        total = np.bincount(i, weights=a, minlength=n)
        safe = np.maximum(count, 1.0)
        mean = total / safe
        var = np.bincount(i, weights=a * a, minlength=n) / safe - mean * mean
        cols += [count, total, mean, _group_max(i, a, n), np.sqrt(np.maximum(var, 0.0))]
        if CATEGORY in pairs:
            cols += [pairs[CATEGORY][0][w], pairs[CATEGORY][1][w]]
        if MERCHANT in pairs:
            cols.append(pairs[MERCHANT][0][w])
        if COUNTRY in pairs:
            cols.append(pairs[COUNTRY][1][w])
        for flag in (ONLINE, ATM, FOREIGN):
            if flag in flags:
                cols.append(np.bincount(i, weights=flags[flag][m], minlength=n) / safe)
        cols.append(np.bincount(i, weights=flags[TINY][m], minlength=n))
        sums[w] = total
    earlier = sums[90] - sums[30]
    cols.append(np.log1p(np.abs(sums[30])) - np.log1p(np.abs(earlier) / 2.0))
    last = np.full(n, end_us - HISTORY_DAYS * DAY_US, np.int64)
    if idx.size:
        ends = np.flatnonzero(np.r_[idx[1:] != idx[:-1], True])
        last[idx[ends]] = ts[ends]
    cols.append((end_us - last) / DAY_US)
    out = np.stack(cols, axis=1) if cols else np.zeros((n, 0))
    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    return out, aggregate_names(window.columns)

"""Per-account aggregates at a cutoff, from the same prepared frame the sequence builder reads.

They feed the GBDT baseline and the model head: over 1, 3, 7, 30, 90 days, count / sum / mean /
max / std of amount, distinct categories and merchants, online / ATM / foreign shares, tiny
amounts, categories and countries new versus the 90 days before the window; plus the amount
trend (last 30 days vs the 60 before) and days since the last event. Raw scale, NaN-free.
Work is NumPy `bincount` over account-sorted rows, plus one stable sort per pair column
(on vocabulary ids, so unseen values count as one).
"""

from __future__ import annotations

import numpy as np

WINDOWS = (1, 3, 7, 30, 90)
NEW_LOOKBACK_DAYS = 90
HISTORY_DAYS = max(WINDOWS) + NEW_LOOKBACK_DAYS
DAY_US = 86_400_000_000

ACC = "_acc_idx"
TS = "_ts_us"
AMOUNT = "_amount"
ONLINE, ATM, FOREIGN, TINY = "_is_online", "_is_atm", "_is_foreign", "_is_tiny"
CATEGORY, MERCHANT, COUNTRY = "_category", "_merchant", "_country"
FLAGS = (ONLINE, ATM, FOREIGN)


def aggregate_names(flags: list[str], pairs: list[str]) -> list[str]:
    """Aggregate names, in column order, given which flag and pair columns are present."""
    names: list[str] = []
    for w in WINDOWS:
        names += [f"amount_count_{w}d", f"amount_sum_{w}d", f"amount_mean_{w}d", f"amount_max_{w}d",
                  f"amount_std_{w}d"]
        if CATEGORY in pairs:
            names += [f"distinct_categories_{w}d", f"new_categories_{w}d"]
        if MERCHANT in pairs:
            names.append(f"distinct_merchants_{w}d")
        if COUNTRY in pairs:
            names.append(f"new_countries_{w}d")
        names += [f"share_{flag[4:]}_{w}d" for flag in FLAGS if flag in flags]
        names.append(f"tiny_count_{w}d")
    return names + ["amount_trend_30_60", "days_since_last_event"]


def _group_max(idx: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, np.float64)
    if idx.size == 0:
        return out
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    out[idx[starts]] = np.maximum.reduceat(values, starts)
    return out


def _pair_counts(idx: np.ndarray, ts: np.ndarray, ids: np.ndarray, end_us: int,
                 n: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per window: distinct ids per account, and those unseen in the 90 days before the window.

    Rows come sorted by (account, time); a stable sort by (account, id) keeps time order, so each
    row's previous occurrence of its id is the row before it. A pair counts as distinct in a
    window at its first row there (previous occurrence before the window start), and as new when
    that previous occurrence is also more than 90 days before the start. Ids are vocabulary ids
    (unseen values share id 1), so training and scoring count alike."""
    width = np.int64(int(ids.max()) + 1 if ids.size else 1)
    key = idx.astype(np.int64) * width + ids.astype(np.int64)
    order = np.argsort(key, kind="stable")
    key, ts_sorted, acc = key[order], ts[order], idx[order]
    prev = np.empty_like(ts_sorted)
    if ts_sorted.size:
        prev[1:] = np.where(key[1:] == key[:-1], ts_sorted[:-1], np.iinfo(np.int64).min)
        prev[0] = np.iinfo(np.int64).min
    distinct, new = {}, {}
    for w in WINDOWS:
        start = end_us - w * DAY_US
        inside = ts_sorted >= start
        distinct[w] = np.bincount(acc[inside & (prev < start)], minlength=n).astype(np.float64)
        fresh = inside & (prev < start - NEW_LOOKBACK_DAYS * DAY_US)
        new[w] = np.bincount(acc[fresh], minlength=n).astype(np.float64)
    return distinct, new


def compute_aggregates(idx: np.ndarray, ts: np.ndarray, amount: np.ndarray, tiny: np.ndarray,
                       flags: dict[str, np.ndarray], pair_ids: dict[str, np.ndarray], n: int,
                       end_us: int) -> tuple[np.ndarray, list[str]]:
    """(n, A) float32 aggregates for accounts 0..n-1 from rows sorted by (account, time) before `end_us`.

    `flags` maps ONLINE / ATM / FOREIGN to per-row booleans, `pair_ids` CATEGORY / MERCHANT /
    COUNTRY to per-row vocabulary ids; absent keys leave their aggregates out."""
    amount = amount.astype(np.float64)
    cols: list[np.ndarray] = []
    pairs = {c: _pair_counts(idx, ts, ids, end_us, n) for c, ids in pair_ids.items()}
    weights = {c: flags[c].astype(np.float64) for c in FLAGS if c in flags}
    tiny_w = tiny.astype(np.float64)
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
        for flag in FLAGS:
            if flag in weights:
                cols.append(np.bincount(i, weights=weights[flag][m], minlength=n) / safe)
        cols.append(np.bincount(i, weights=tiny_w[m], minlength=n))
        sums[w] = total
    earlier = sums[90] - sums[30]
    cols.append(np.log1p(np.abs(sums[30])) - np.log1p(np.abs(earlier) / 2.0))
    last = np.full(n, end_us - HISTORY_DAYS * DAY_US, np.int64)
    if idx.size:
        ends = np.flatnonzero(np.r_[idx[1:] != idx[:-1], True])
        last[idx[ends]] = ts[ends]
    cols.append((end_us - last) / DAY_US)
    out = np.nan_to_num(np.stack(cols, axis=1), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    return out, aggregate_names(list(weights), list(pairs))

"""Per-account aggregates at a cutoff, from the same prepared frame the sequence builder reads.

They feed the GBDT baseline and the model head: over 1, 3, 7, 30, 90 days, count / sum / mean /
max / std of amount, distinct categories and merchants, online / ATM / foreign shares, tiny
amounts, categories and countries new versus the 90 days before the window; plus the amount
trend (last 30 days vs the 60 before) and days since the last event. Raw scale, NaN-free.
Every row falls in one age band (the day boundaries of the windows and their lookbacks), so
each sum is one `bincount` over (account, band) followed by a running total over the bands,
and each pair column (account, vocabulary id) needs one sort of its values.
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

_EDGES = np.array(sorted({d for w in WINDOWS for d in (w, w + NEW_LOOKBACK_DAYS)}), np.int64)
_BANDS = len(_EDGES) + 1
_BAND_OF_DAY = np.searchsorted(_EDGES, np.arange(HISTORY_DAYS + 1), side="right").astype(np.int64)
_WINDOW_BANDS = {w: int(np.searchsorted(_EDGES, w, side="right")) for w in WINDOWS}
_LOOKBACK_BANDS = {w: (_WINDOW_BANDS[w], int(np.searchsorted(_EDGES, w + NEW_LOOKBACK_DAYS, side="right")))
                   for w in WINDOWS}


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


def age_bands(ts: np.ndarray, end_us: int) -> np.ndarray:
    """Each row's age band: how many window or lookback edges (in whole days before `end_us`) it is past.

    Window w (ts >= end - w days) is bands 0 .. _WINDOW_BANDS[w] - 1; rows older than the history
    fall in the last band, which no window or lookback covers."""
    days = np.minimum((end_us - 1 - ts) // DAY_US, HISTORY_DAYS)
    return _BAND_OF_DAY[days]


def _band_sums(cell: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    """(n, bands) running totals over the bands: column b sums each account's rows of bands 0..b."""
    per_band = np.bincount(cell, weights=weights, minlength=n * _BANDS).reshape(n, _BANDS)
    return np.cumsum(per_band, axis=1)


def _band_max(idx: np.ndarray, band: np.ndarray, amount: np.ndarray, n: int) -> np.ndarray:
    """(n, bands) running maxima of amount over bands 0..b (0 where an account has no row yet)."""
    out = np.full((n, _BANDS), -np.inf)
    if idx.size:
        cell = idx * _BANDS + band
        starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
        out.reshape(-1)[cell[starts]] = np.maximum.reduceat(amount, starts)
    out = np.maximum.accumulate(out, axis=1)
    return np.where(np.isinf(out), 0.0, out)


def _pattern_tables() -> tuple[np.ndarray, np.ndarray]:
    """For every set of bands a pair occurs in: its first band (or _BANDS if none), and which
    windows it is new in (bit i for WINDOWS[i]: in the window, absent from its 90-day lookback)."""
    masks = np.arange(1 << _BANDS)
    first = np.full(masks.size, _BANDS, np.int64)
    for b in reversed(range(_BANDS)):
        first[(masks >> b) & 1 == 1] = b
    new = np.zeros(masks.size, np.int64)
    for i, w in enumerate(WINDOWS):
        lo, hi = _LOOKBACK_BANDS[w]
        inside = (masks & ((1 << _WINDOW_BANDS[w]) - 1)) != 0
        before = (masks & (((1 << hi) - 1) ^ ((1 << lo) - 1))) != 0
        new[inside & ~before] |= 1 << i
    return first, new


_FIRST_BAND, _NEW_IN = _pattern_tables()
_NEW_PATTERNS = 1 << len(WINDOWS)
_PATTERN_WINDOWS = (np.arange(_NEW_PATTERNS)[:, None] >> np.arange(len(WINDOWS))[None, :]) & 1


def _pair_counts(idx: np.ndarray, band: np.ndarray, ids: np.ndarray,
                 n: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per window: distinct ids per account, and those not seen in the 90 days before the window.

    Per (account, id) pair, the set of bands it occurs in (a bitmask) comes from one bincount over
    (account, id, band) when that table is small (few ids), else from one sort of those values. A
    pair is distinct in window w when it occurs in one of the window's bands, and new when it does
    not also occur in the bands of the 90 days before the window. Ids are vocabulary ids (unseen
    values share id 1), so training and scoring count alike."""
    width = int(ids.max()) + 1 if ids.size else 1
    key = (idx.astype(np.int64) * width + ids.astype(np.int64)) * _BANDS + band
    if n * width * _BANDS <= 4 * key.size + 4096:
        occurs = np.bincount(key, minlength=n * width * _BANDS).reshape(n * width, _BANDS) > 0
        mask = occurs.astype(np.int64) @ (np.int64(1) << np.arange(_BANDS, dtype=np.int64))
        owner = np.repeat(np.arange(n, dtype=np.int64), width)
    else:
        code = np.sort(key)
        pair = code // _BANDS
        starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]]) if code.size else np.zeros(0, np.int64)
        mask = np.bitwise_or.reduceat(np.left_shift(1, code - pair * _BANDS), starts) if code.size else starts
        owner = pair[starts] // width
    first = np.bincount(owner * (_BANDS + 1) + _FIRST_BAND[mask], minlength=n * (_BANDS + 1))
    seen = np.cumsum(first.reshape(n, _BANDS + 1), axis=1)
    patterns = np.bincount(owner * _NEW_PATTERNS + _NEW_IN[mask], minlength=n * _NEW_PATTERNS)
    new_counts = patterns.reshape(n, _NEW_PATTERNS) @ _PATTERN_WINDOWS
    distinct = {w: seen[:, _WINDOW_BANDS[w] - 1].astype(np.float64) for w in WINDOWS}
    new = {w: new_counts[:, i].astype(np.float64) for i, w in enumerate(WINDOWS)}
    return distinct, new


def compute_aggregates(idx: np.ndarray, ts: np.ndarray, amount: np.ndarray, tiny: np.ndarray,
                       flags: dict[str, np.ndarray], pair_ids: dict[str, np.ndarray], n: int,
                       end_us: int) -> tuple[np.ndarray, list[str]]:
    """(n, A) float32 aggregates for accounts 0..n-1 from rows sorted by (account, time) before `end_us`.

    `flags` maps ONLINE / ATM / FOREIGN to per-row booleans, `pair_ids` CATEGORY / MERCHANT /
    COUNTRY to per-row vocabulary ids; absent keys leave their aggregates out."""
    idx = idx.astype(np.int64, copy=False)
    amount = amount.astype(np.float64, copy=False)
    band = age_bands(ts, end_us)
    cell = idx * _BANDS + band
    pairs = {c: _pair_counts(idx, band, ids, n) for c, ids in pair_ids.items()}
    count = _band_sums(cell, n)
    total = _band_sums(cell, n, amount)
    square = _band_sums(cell, n, amount * amount)
    high = _band_max(idx, band, amount, n)
    shares = {c: _band_sums(cell, n, flags[c].astype(np.float64)) for c in FLAGS if c in flags}
    tiny_count = _band_sums(cell, n, tiny.astype(np.float64))
    cols: list[np.ndarray] = []
    for w in WINDOWS:
        b = _WINDOW_BANDS[w] - 1
        safe = np.maximum(count[:, b], 1.0)
        mean = total[:, b] / safe
        var = square[:, b] / safe - mean * mean
        cols += [count[:, b], total[:, b], mean, high[:, b], np.sqrt(np.maximum(var, 0.0))]
        if CATEGORY in pairs:
            cols += [pairs[CATEGORY][0][w], pairs[CATEGORY][1][w]]
        if MERCHANT in pairs:
            cols.append(pairs[MERCHANT][0][w])
        if COUNTRY in pairs:
            cols.append(pairs[COUNTRY][1][w])
        cols += [shares[flag][:, b] / safe for flag in FLAGS if flag in shares]
        cols.append(tiny_count[:, b])
    b30, b90 = _WINDOW_BANDS[30] - 1, _WINDOW_BANDS[90] - 1
    earlier = total[:, b90] - total[:, b30]
    cols.append(np.log1p(np.abs(total[:, b30])) - np.log1p(np.abs(earlier) / 2.0))
    last = np.full(n, end_us - HISTORY_DAYS * DAY_US, np.int64)
    if idx.size:
        ends = np.flatnonzero(np.r_[idx[1:] != idx[:-1], True])
        last[idx[ends]] = ts[ends]
    cols.append((end_us - last) / DAY_US)
    out = np.nan_to_num(np.stack(cols, axis=1), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    return out, aggregate_names(list(shares), list(pairs))

"""The sequence builder: properties of the padded arrays, shards, and scoring/snapshot agreement."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from riskmodel.batch import SequenceBatch
from riskmodel.features import FeatureState, fit_state
from riskmodel.lake import extract
from riskmodel.sequences import build_cutoff, build_scoring_shards, prepare, shard_of, stable_hash
from riskmodel.settings import Settings
from riskmodel.snapshots import build_training_shards
from riskmodel.sources import read_accounts
from riskmodel.spec import FeatureSpec
from tests.datapath_helpers import END, TXN_COLUMNS, execute, seed_tiny_bank

D = date(2026, 3, 10)
L = 4
LOOKBACK = 10
D1 = datetime(2026, 3, 11, tzinfo=UTC)

event = st.tuples(st.integers(1, 6), st.integers(-14 * 24 * 60, 3 * 24 * 60), st.sampled_from("abcz"),
                  st.sampled_from(["online", "pos", "atm"]))


def small_spec(spec: FeatureSpec) -> FeatureSpec:
    """The demo spec with a short sequence and lookback, so small data exercises truncation."""
    return spec.model_copy(update={"max_seq_len": L, "lookback_days": LOOKBACK})


def events_frame(draws: list[tuple[int, int, str, str]]) -> pl.DataFrame:
    """Lake-shaped rows: txn_id = position, amount = position + 1, ts = D+1 + minutes."""
    return pl.DataFrame({
        "txn_id": list(range(len(draws))),
        "account_id": [a for a, *_ in draws],
        "ts": [D1 + timedelta(minutes=m) for _, m, *_ in draws],
        "amount": [float(i + 1) for i in range(len(draws))],
        "mcc": [c for *_, c, _ in draws],
        "channel": [ch for *_, ch in draws],
        "country": ["DE"] * len(draws),
        "merchant_id": [f"m{i % 3}" for i in range(len(draws))],
    }, schema_overrides={"ts": pl.Datetime("us", "UTC"), "account_id": pl.Int64, "txn_id": pl.Int64})


def fitted_state(spec: FeatureSpec) -> FeatureState:
    """Vocabularies that know mcc a/b/c but not z."""
    train = pl.DataFrame({"txn_id": [1, 2, 3, 4], "account_id": [1, 1, 1, 1], "ts": [D1] * 4,
                          "amount": [1.0, 10.0, 100.0, 5.0], "mcc": ["a", "a", "b", "c"],
                          "channel": ["pos", "online", "atm", "pos"], "country": ["DE"] * 4,
                          "merchant_id": ["m0", "m1", "m2", "m0"]})
    return fit_state(spec, train, None)


def expected_sequences(frame: pl.DataFrame) -> dict[int, list[int]]:
    """Per active account, txn ids of its last L events before D+1, oldest first (by ts, id)."""
    before = frame.filter(pl.col("ts") < D1).sort("ts", "txn_id")
    out = {}
    for acc, part in before.group_by("account_id"):
        if part["ts"].max() >= D1 - timedelta(days=LOOKBACK):
            out[acc[0]] = part["txn_id"].to_list()[-L:]
    return out


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(draws=st.lists(event, min_size=0, max_size=40), n_shards=st.integers(1, 3))
def test_builder_keeps_exactly_the_last_events(demo_spec: FeatureSpec, draws: list, n_shards: int) -> None:
    spec = small_spec(demo_spec).model_copy(update={"accounts": None})
    state = fitted_state(spec)
    frame = events_frame(draws)
    prep = prepare(frame, spec, state, ZoneInfo("UTC"), n_shards)
    shards = build_cutoff(prep, spec, D, ZoneInfo("UTC"))
    assert len(shards) == n_shards
    expected = expected_sequences(frame)
    seen: list[int] = []
    amount = state.stats["amount"]
    for k, batch in enumerate(shards):
        ids = batch.account_id.tolist()
        assert ids == sorted(ids)
        assert (shard_of(batch.account_id, n_shards) == k).all()
        seen += ids
        for i, acc in enumerate(ids):
            want = expected[acc]
            n = int(batch.lengths[i])
            assert n == len(want)
            amounts = np.array([t + 1.0 for t in want])
            norm = (np.sign(amounts) * np.log1p(np.abs(amounts)) - amount.mean) / amount.std
            np.testing.assert_allclose(batch.num[i, :n, 0], norm, rtol=1e-5)
            mcc = frame["mcc"].to_numpy()[want]
            vocab = state.vocab["mcc"]
            ids_want = [vocab.index(m) + 2 if m in vocab else 1 for m in mcc]
            assert batch.cat[i, :n, 0].tolist() == ids_want
            assert not batch.num[i, n:].any() and not batch.cat[i, n:].any() and not batch.time[i, n:].any()
            assert (batch.cat[i, :n] >= 1).all()
            ages = batch.time[i, :n, 1]
            assert (np.diff(ages) <= 1e-6).all()
    assert sorted(seen) == sorted(expected)
    assert len(seen) == len(set(seen))
    for batch in shards:
        assert np.isfinite(batch.agg).all()
        assert batch.agg.shape[1] == len(batch.names["agg"])


def test_unseen_categories_map_to_one_and_padding_to_zero(demo_spec: FeatureSpec) -> None:
    spec = small_spec(demo_spec).model_copy(update={"accounts": None})
    state = fitted_state(spec)
    frame = events_frame([(1, -60, "z", "pos"), (1, -30, "a", "pos"), (2, -10, "b", "atm")])
    batch = SequenceBatch.concat(build_cutoff(prepare(frame, spec, state, ZoneInfo("UTC"), 1), spec, D,
                                              ZoneInfo("UTC")))
    assert batch.account_id.tolist() == [1, 2]
    assert batch.lengths.tolist() == [2, 1]
    assert batch.cat[0, :2, 0].tolist() == [1, 2]
    assert batch.cat[1, 0, 0] == state.vocab["mcc"].index("b") + 2
    assert batch.cat[1, 1:].sum() == 0
    assert state.cat_cardinalities[0] == 5


def test_nothing_at_or_after_the_next_local_midnight_leaks(demo_spec: FeatureSpec) -> None:
    spec = small_spec(demo_spec).model_copy(update={"accounts": None})
    state = fitted_state(spec)
    tz = ZoneInfo("America/New_York")
    local_next = datetime(2026, 3, 11, tzinfo=tz).astimezone(UTC)
    minutes = [int((local_next - D1).total_seconds() // 60) + k for k in (-1, 0, 1)]
    frame = events_frame([(1, m, "a", "pos") for m in minutes])
    batch = SequenceBatch.concat(build_cutoff(prepare(frame, spec, state, tz, 1), spec, D, tz))
    assert batch.lengths.tolist() == [1]
    assert batch.agg[0, batch.names["agg"].index("amount_sum_1d")] == pytest.approx(1.0)


def test_stable_hash_is_fixed_across_processes() -> None:
    assert stable_hash(np.array([0, 1, 42], np.int64)).tolist() == [
        16294208416658607535, 10451216379200822465, 13679457532755275413]
    text = stable_hash(np.array(["acc-1", "acc-2", ""]))
    assert text[0] != text[1] and len(set(text.tolist())) == 3
    assert shard_of(np.arange(1000), 4).min() == 0 and shard_of(np.arange(1000), 4).max() == 3


def test_aggregates_count_windows_and_new_categories(demo_spec: FeatureSpec) -> None:
    spec = small_spec(demo_spec).model_copy(update={"accounts": None})
    state = fitted_state(spec)
    day = 24 * 60
    frame = events_frame([(1, -100 * day, "a", "pos"), (1, -20 * day, "a", "online"),
                          (1, -2 * day, "b", "atm"), (1, -60, "a", "online")])
    batch = SequenceBatch.concat(build_cutoff(prepare(frame, spec, state, ZoneInfo("UTC"), 1), spec, D,
                                              ZoneInfo("UTC")))
    agg = dict(zip(batch.names["agg"], batch.agg[0].tolist(), strict=True))
    assert agg["amount_count_1d"] == 1 and agg["amount_count_3d"] == 2 and agg["amount_count_30d"] == 3
    assert agg["amount_count_90d"] == 3
    assert agg["amount_sum_3d"] == pytest.approx(3 + 4)
    assert agg["amount_max_30d"] == pytest.approx(4)
    assert agg["share_online_30d"] == pytest.approx(2 / 3)
    assert agg["share_atm_3d"] == pytest.approx(1 / 2)
    assert agg["new_categories_3d"] == 1
    assert agg["new_categories_30d"] == 1
    assert agg["distinct_categories_30d"] == 2
    assert agg["days_since_last_event"] == pytest.approx(1 / 24, rel=1e-3)


@pytest.fixture()
def lake_bank(initialised: Settings, demo_spec: FeatureSpec) -> tuple[Settings, FeatureSpec, FeatureState]:
    """A tiny bank extracted to the lake, a short-horizon spec, and a state fitted on it."""
    settings = initialised.model_copy(update={"n_shards": 3})
    rows = seed_tiny_bank(settings, accounts=30, days=40)
    spec = demo_spec.model_copy(update={"horizon_days": 5, "reporting_lag_days": 2, "max_seq_len": 16})
    extract(settings, spec, END)
    frame = pl.DataFrame(rows, schema=TXN_COLUMNS, orient="row")
    return settings, spec, fit_state(spec, frame, read_accounts(settings, spec))


def test_scoring_and_snapshot_paths_give_identical_features(lake_bank, tmp_path) -> None:
    settings, spec, state = lake_bank
    t = END - timedelta(days=7)
    execute(settings, "INSERT INTO bank.risk_events (account_id, event_ts, reported_at, event_type) "
                      "VALUES (2, %s, %s, 'fraud')",
            (datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 6, 2, tzinfo=UTC)))
    score = SequenceBatch.concat([SequenceBatch.load(p) for p in
                                  build_scoring_shards(settings, spec, state, t, tmp_path / "s")])
    cutoffs = [t - timedelta(days=3), t]
    paths = build_training_shards(settings, spec, state, cutoffs, tmp_path / "t", as_of=END)
    train = SequenceBatch.concat([SequenceBatch.load(p) for p in paths if t.isoformat() in p.name])
    assert 2 in score.account_id.tolist() and 2 not in train.account_id.tolist()
    assert set(train.account_id.tolist()) == set(score.account_id.tolist()) - {2}
    assert len(train) >= 20
    pick = np.isin(score.account_id, train.account_id)
    order = np.argsort(train.account_id)
    same = score.subset(pick)
    train = train.subset(order)
    same = same.subset(np.argsort(same.account_id))
    for name in ("account_id", "num", "cat", "time", "lengths", "static_num", "static_cat", "agg", "cutoff"):
        np.testing.assert_array_equal(getattr(same, name), getattr(train, name), err_msg=name)
    assert same.names == train.names
    assert train.label is not None and score.label is None
    assert same.static_cat.shape == (len(same), 2) and (same.static_cat >= 2).all()
    ages = score.time[:, :, 1]
    real_pairs = np.arange(score.seq_len - 1)[None, :] < (score.lengths[:, None] - 1)
    assert (np.diff(ages, axis=1)[real_pairs] <= 0).all()
    padding = np.arange(score.seq_len)[None, :] >= score.lengths[:, None]
    assert (score.lengths > 0).all() and (score.cat[padding] == 0).all()
    foreign = same.agg[:, same.names["agg"].index("share_foreign_90d")]
    assert 0.05 < foreign.mean() < 0.4


DAY_US = 86_400_000_000
agg_row = st.tuples(st.integers(0, 3), st.integers(1, 200 * 24), st.floats(-50, 500, allow_nan=False),
                    st.booleans(), st.integers(1, 40))


def naive_aggregates(rows: list[tuple[int, int, float, bool, int]], n: int, end: int,
                     width: int) -> dict[str, np.ndarray]:
    """The aggregates' definitions, account by account (ts = end - hours; ids scaled into 1..width)."""
    from riskmodel.aggregates import HISTORY_DAYS, NEW_LOOKBACK_DAYS, WINDOWS

    out: dict[str, np.ndarray] = {}
    for a in range(n):
        mine = [(end - h * 3_600_000_000, x, f, 1 + (i * 7919) % width)
                for acc, h, x, f, i in rows if acc == a]
        for w in WINDOWS:
            start = end - w * DAY_US
            inside = [r for r in mine if r[0] >= start]
            amounts = np.array([r[1] for r in inside])
            count = len(inside)
            mean = amounts.sum() / max(count, 1)
            var = (amounts ** 2).sum() / max(count, 1) - mean ** 2
            lookback = {r[3] for r in mine if start - NEW_LOOKBACK_DAYS * DAY_US <= r[0] < start}
            values = {
                f"amount_count_{w}d": count, f"amount_sum_{w}d": amounts.sum(), f"amount_mean_{w}d": mean,
                f"amount_max_{w}d": amounts.max() if count else 0.0,
                f"amount_std_{w}d": np.sqrt(max(var, 0.0)),
                f"distinct_categories_{w}d": len({r[3] for r in inside}),
                f"new_categories_{w}d": len({r[3] for r in inside} - lookback),
                f"share_online_{w}d": sum(r[2] for r in inside) / max(count, 1),
                f"tiny_count_{w}d": sum(r[1] <= 2.0 for r in inside),
            }
            for name, value in values.items():
                out.setdefault(name, np.zeros(n))[a] = value
        s30 = sum(r[1] for r in mine if r[0] >= end - 30 * DAY_US)
        s90 = sum(r[1] for r in mine if r[0] >= end - 90 * DAY_US)
        trend = np.log1p(abs(s30)) - np.log1p(abs(s90 - s30) / 2)
        out.setdefault("amount_trend_30_60", np.zeros(n))[a] = trend
        last = max((r[0] for r in mine), default=end - HISTORY_DAYS * DAY_US)
        out.setdefault("days_since_last_event", np.zeros(n))[a] = (end - last) / DAY_US
    return out


@hsettings(max_examples=80, deadline=None)
@given(rows=st.lists(agg_row, min_size=0, max_size=60), width=st.sampled_from([3, 40, 5000]))
def test_aggregates_match_their_definitions(rows: list, width: int) -> None:
    """Band sums and pair bitmasks (table and sort paths) give what the per-account definitions say."""
    from riskmodel.aggregates import CATEGORY, ONLINE, compute_aggregates

    end = 1_800_000_000_000_000
    n = 4
    ordered = sorted(rows, key=lambda r: (r[0], -r[1]))
    idx = np.array([r[0] for r in ordered], np.int64)
    ts = end - np.array([r[1] for r in ordered], np.int64) * 3_600_000_000
    amount = np.array([r[2] for r in ordered], np.float64)
    ids = np.array([1 + (r[4] * 7919) % width for r in ordered], np.int32)
    online = {ONLINE: np.array([r[3] for r in ordered])}
    agg, names = compute_aggregates(idx, ts, amount, amount <= 2.0, online, {CATEGORY: ids}, n, end)
    want = naive_aggregates(rows, n, end, width)
    assert sorted(names) == sorted(want)
    for j, name in enumerate(names):
        np.testing.assert_allclose(agg[:, j], want[name].astype(np.float32), rtol=1e-5, atol=1e-3,
                                   err_msg=name)


def test_channel_flags_do_not_depend_on_the_channel_vocabulary(demo_spec: FeatureSpec) -> None:
    """Flags come from encoded ids when the vocabulary knows 'online' and 'atm', else from the text."""
    spec = small_spec(demo_spec).model_copy(update={"accounts": None})
    knows = fitted_state(spec)
    blind = dataclasses.replace(knows, vocab={**knows.vocab, "channel": ["pos"]})
    frame = events_frame([(1, -60, "a", "atm"), (1, -50, "a", "online"), (1, -40, "a", "pos"),
                          (1, -30, "a", "atm")])
    shares = []
    for state in (knows, blind):
        batch = SequenceBatch.concat(build_cutoff(prepare(frame, spec, state, ZoneInfo("UTC"), 1), spec, D,
                                                  ZoneInfo("UTC")))
        agg = dict(zip(batch.names["agg"], batch.agg[0].tolist(), strict=True))
        shares.append((agg["share_atm_1d"], agg["share_online_1d"]))
    assert shares[0] == shares[1] == (pytest.approx(0.5), pytest.approx(0.25))

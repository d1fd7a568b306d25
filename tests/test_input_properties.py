"""Bad input, property-based: every invalid feature-spec value and flow parameter is refused with an
error naming it, and nothing reaches the database; malformed transactions are each caught by the
first quality rule they break and counted (the per-rule examples live in test_quality.py)."""

from __future__ import annotations

import json
import math
import tomllib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import psycopg
import pytest
import torch
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from flows.backfill import backfill
from flows.cli import main as cli_main
from flows.nightly_scoring import nightly_scoring
from flows.params import MAX_SEED, BackfillParams, RetrainParams, ScoreParams
from flows.retrain import retrain
from riskmodel.clock import not_after_today, today, yesterday
from riskmodel.db import connect
from riskmodel.errors import ConfigError, DatabaseError
from riskmodel.quality import RULES, check_batch
from riskmodel.settings import DEMO_SPEC, Settings
from riskmodel.spec import FeatureSpec, SpecError, load_spec
from riskmodel.spec_check import check_spec
from tests.datapath_helpers import TXN_COLUMNS

FAST = hsettings(max_examples=40, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BASE = tomllib.loads(DEMO_SPEC.read_text())


def toml_value(value: Any) -> str:
    """One TOML value (strings through JSON escapes, which TOML basic strings share)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) \
            else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, int):
        return str(value)
    raise TypeError(type(value))


def toml_text(spec: dict[str, Any]) -> str:
    """A spec dict as TOML: top-level scalars, then one [section] per table."""
    top = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in spec.items() if not isinstance(v, dict)]
    sections = [f"[{json.dumps(k)}]\n" + "\n".join(f"{json.dumps(kk)} = {toml_value(vv)}"
                                                   for kk, vv in v.items())
                for k, v in spec.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n\n" + "\n\n".join(sections) + "\n"


def with_value(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """The demo spec with one key set (added when it is not there)."""
    spec = json.loads(json.dumps(BASE))
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return spec


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
not_a_number = words.filter(lambda w: w not in {"inf", "nan", "infinity"})
not_a_list = st.one_of(st.integers(), not_a_number)
too_long = st.text(min_size=1, max_size=8).filter(lambda s: "\x00" not in s).map(lambda s: (s * 64)[:70])
wide = st.text(alphabet="éß€😀", min_size=22, max_size=63).filter(lambda s: len(s.encode()) > 63)
bad_identifier = st.one_of(st.just(""), too_long, wide, st.text(max_size=5).map(lambda s: f"a\x00{s}"),
                           st.integers(), st.lists(words, max_size=2), st.booleans())
INT_FIELDS = {"horizon_days": (1, 3650), "lookback_days": (1, 3650), "max_seq_len": (1, 4096),
              "reporting_lag_days": (0, 3650)}
IDENT_FIELDS = [("transactions", "table"), ("transactions", "schema"), ("transactions", "id"),
                ("transactions", "account_id"), ("transactions", "timestamp"), ("transactions", "amount"),
                ("accounts", "table"), ("accounts", "account_id"), ("events", "table"),
                ("events", "account_id"), ("events", "timestamp"), ("events", "event_type"),
                ("events", "reported_at")]
TXN_COLS = ["txn_id", "account_id", "ts", "amount", "mcc", "channel", "country", "merchant_id"]


@st.composite
def out_of_range_int(draw: st.DrawFn, lo: int, hi: int) -> Any:
    """A value an int field in [lo, hi] must refuse: outside the range, a fraction, text, or a list."""
    return draw(st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1),
                          st.floats(lo, hi).filter(lambda f: not f.is_integer()), not_a_number,
                          st.lists(st.integers(lo, hi), min_size=1, max_size=2)))


@st.composite
def invalid_spec(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """(spec dict with exactly one invalid value, a word the error message must contain)."""
    kind = draw(st.sampled_from(["int", "ident", "ident_list", "positive", "bool", "positive_types",
                                 "unknown", "duplicate", "role", "section"]))
    if kind == "int":
        name = draw(st.sampled_from(sorted(INT_FIELDS)))
        return with_value((name,), draw(out_of_range_int(*INT_FIELDS[name]))), name
    if kind == "ident":
        section, name = draw(st.sampled_from(IDENT_FIELDS))
        return with_value((section, name), draw(bad_identifier)), f"{section}.{name}"
    if kind == "ident_list":
        section = draw(st.sampled_from(["transactions", "accounts"]))
        value = draw(st.one_of(not_a_list, st.lists(st.one_of(st.just(""), too_long, st.integers()),
                                                    min_size=1, max_size=2)))
        return with_value((section, "numeric"), value), f"{section}.numeric"
    if kind == "positive":
        name = draw(st.sampled_from(["max_amount", "tiny_amount"]))
        value = draw(st.one_of(st.floats(max_value=0.0), st.just(math.nan), not_a_number))
        return with_value(("transactions", name), value), f"transactions.{name}"
    if kind == "bool":
        value = draw(st.one_of(st.integers(min_value=2), words.filter(
            lambda w: w not in {"y", "n", "yes", "no", "on", "off", "t", "f", "true", "false"})))
        return with_value(("transactions", "allow_negative"), value), "transactions.allow_negative"
    if kind == "positive_types":
        return with_value(("events", "positive_types"), draw(st.one_of(st.just([]), not_a_list))), \
            "events.positive_types"
    if kind == "unknown":
        section = draw(st.sampled_from([None, "transactions", "accounts", "events"]))
        key = draw(words.map(lambda w: f"zz_{w}"))
        path = (key,) if section is None else (section, key)
        return with_value(path, draw(st.one_of(st.integers(), words))), ".".join(path)
    if kind == "duplicate":
        column = draw(st.sampled_from(TXN_COLS))
        return with_value(("transactions", "numeric"), [column]), column
    if kind == "role":
        role = draw(st.sampled_from(["merchant", "category", "country", "channel"]))
        column = draw(words.filter(lambda w: w not in TXN_COLS))
        return with_value(("transactions", role), column), f"transactions.{role}"
    section = draw(st.sampled_from(["transactions", "events"]))
    spec = json.loads(json.dumps(BASE))
    del spec[section]
    return spec, section


@FAST
@given(case=invalid_spec())
def test_every_invalid_spec_value_is_refused_naming_it(case: tuple[dict[str, Any], str],
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    spec, word = case
    path = tmp_path_factory.mktemp("spec") / "spec.toml"
    path.write_text(toml_text(spec))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert word in message, message
    assert "\n" not in message and message.startswith(f"feature spec {path}:")


def test_the_toml_writer_round_trips_the_demo_spec(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(toml_text(BASE))
    assert load_spec(path) == load_spec(DEMO_SPEC)


hostile_name = st.text(min_size=1, max_size=30).filter(
    lambda s: "\x00" not in s and len(s.encode()) <= 63 and s not in TXN_COLS)


@FAST
@given(name=hostile_name, role=st.sampled_from(["amount", "timestamp", "id"]))
def test_any_legal_name_is_only_ever_quoted(initialised: Settings, name: str, role: str) -> None:
    spec = FeatureSpec.model_validate(with_value(("transactions", role), name))
    with connect(initialised) as conn:
        problems = check_spec(conn, spec)
        tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'bank'"
                              ).fetchone()[0]
    found = [(p.table, p.column, p.message) for p in problems]
    assert found == [("bank.transactions", name, "column not found")]
    assert tables == 4


def _state(settings: Settings) -> dict[str, Any]:
    """Everything riskflow could have written: its tables' row counts, the schemas, the lake."""
    with connect(settings, admin=True) as conn:
        schemas = [r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' ORDER BY 1").fetchall()]
        tables = [r[0] for r in conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema IN ('riskflow', 'bank') ORDER BY 1").fetchall()]
        counts = {t: conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(
            psycopg.sql.Identifier(*t.split(".")))).fetchone()[0] for t in tables}
    lake = sorted(str(p) for p in settings.home.rglob("*")) if settings.home.exists() else []
    return {"schemas": schemas, "counts": counts, "lake": lake}


HOSTILE_TABLE = 'transactions"; DROP TABLE bank.accounts; --'


def test_db_init_and_check_spec_with_a_bad_spec_write_nothing(settings: Settings, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from riskmodel.schema import init_database

    monkeypatch.setenv("RISKFLOW_DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("RISKFLOW_HOME", str(settings.home))
    monkeypatch.setenv("RISKFLOW_SPEC", str(DEMO_SPEC))
    bad = tmp_path / "bad.toml"
    bad.write_text(toml_text(with_value(("lookback_days",), 0)))
    before = _state(settings)
    assert "riskflow" not in before["schemas"]
    assert cli_main(["db", "init", "--demo-source", "--spec", str(bad)]) == 2
    assert cli_main(["check-spec", "--spec", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("lookback_days") == 2 and "Traceback" not in err
    assert _state(settings) == before
    init_database(settings, load_spec(DEMO_SPEC), demo_source=True)
    seeded = _state(settings)
    hostile = tmp_path / "hostile.toml"
    hostile.write_text(toml_text(with_value(("transactions", "table"), HOSTILE_TABLE)))
    fresh = settings.model_copy(update={"db_schema": "riskflow_second"})
    with pytest.raises(DatabaseError, match="does not exist") as info:
        init_database(fresh, load_spec(hostile))
    assert "riskflow check-spec" in str(info.value)
    assert _state(settings) == seeded, "a failed init leaves nothing behind, and drops nothing"


def _ints_outside(lo: int, hi: int) -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1), not_a_number)


def _floats_outside(lo: float, hi: float, *, open_low: bool = False) -> st.SearchStrategy[Any]:
    below = st.floats(max_value=lo) if open_low else st.floats(max_value=lo, exclude_max=True)
    return st.one_of(below, st.floats(min_value=hi, exclude_min=True), st.just(math.nan), not_a_number)


RETRAIN_INVALID: dict[str, st.SearchStrategy[Any]] = {
    "as_of": st.one_of(not_a_number, st.just("2026-02-30"), st.dates(max_value=date(1969, 12, 31)),
                       st.dates(min_value=date(3000, 1, 1))),
    "train_days": _ints_outside(14, 3650),
    "cutoff_every_days": _ints_outside(1, 90),
    "horizon_days": _ints_outside(1, 3650),
    "epochs": _ints_outside(1, 500),
    "hidden_size": _ints_outside(4, 2048),
    "max_embedded_cardinality": _ints_outside(2, 10**9),
    "aggregate_dropout": st.one_of(st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
                                   st.floats(min_value=1.0, allow_nan=False, allow_infinity=False)),
    "ema_decay": st.one_of(st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
                           st.floats(min_value=1.0, allow_nan=False, allow_infinity=False)),
    "max_pos_weight": _floats_outside(1.0, 1e6),
    "max_train_minutes": _floats_outside(0.0, 24 * 60.0, open_low=True),
    "seed": _ints_outside(0, MAX_SEED),
    "promote_policy": words.filter(lambda w: w not in {"if_better", "always", "never"}),
    "min_ap_margin": _floats_outside(0.0, 1.0),
    "negative_keep": _floats_outside(0.0, 1.0, open_low=True),
    "baseline_cutoff_every_days": _ints_outside(1, 90),
    "baseline_negative_keep": _floats_outside(0.0, 1.0, open_low=True),
    "run_ablation": st.lists(st.booleans(), min_size=1, max_size=2),
    "blend_baseline": st.one_of(st.integers(min_value=2), st.text(alphabet="xyz", min_size=2, max_size=5)),
}


def test_every_retrain_parameter_has_invalid_examples() -> None:
    assert set(RETRAIN_INVALID) == set(RetrainParams.model_fields)


@FAST
@given(data=st.data())
def test_invalid_retrain_parameters_are_refused_naming_them(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(RETRAIN_INVALID)))
    value = data.draw(RETRAIN_INVALID[name])
    with pytest.raises(ValidationError) as info:
        RetrainParams(**{name: value})
    assert [e["loc"] for e in info.value.errors()] and all(e["loc"][0] == name for e in info.value.errors())
    assert name in str(info.value)


def test_seed_bound_is_what_the_trainers_accept() -> None:
    assert RetrainParams(seed=MAX_SEED).seed == MAX_SEED
    with pytest.raises(ValidationError, match="seed"):
        RetrainParams(seed=MAX_SEED + 1)


score_cases = st.one_of(
    st.tuples(st.just("device"), words.filter(lambda w: w not in {"auto", "cpu", "cuda"})),
    st.tuples(st.just("score_date"), st.one_of(not_a_number, st.dates(min_value=date(3000, 1, 1)),
                                               st.dates(max_value=date(1969, 12, 31)))),
    st.tuples(st.sampled_from(["shadow", "extract"]), st.one_of(st.integers(min_value=2), st.lists(
        st.booleans(), min_size=1))),
    st.tuples(words.map(lambda w: f"zz_{w}"), st.integers()),
)


@FAST
@given(case=score_cases)
def test_invalid_score_parameters_are_refused_naming_them(case: tuple[str, Any]) -> None:
    name, value = case
    with pytest.raises(ValidationError) as info:
        ScoreParams(**{name: value})
    assert all(e["loc"][0] == name for e in info.value.errors()), info.value.errors()


@FAST
@given(start=st.dates(date(1970, 1, 2), date(2999, 12, 31)), back=st.integers(1, 5000),
       parallel=st.one_of(st.integers(max_value=0), st.integers(min_value=33)))
def test_invalid_backfill_ranges_are_refused_naming_them(start: date, back: int, parallel: int) -> None:
    end = start - timedelta(days=back) if start - timedelta(days=back) >= date(1970, 1, 1) else None
    if end is not None:
        with pytest.raises(ValidationError, match=f"end {end} is before start {start}"):
            BackfillParams(start=start, end=end)
    with pytest.raises(ValidationError, match="max_parallel"):
        BackfillParams(start=start, end=start, max_parallel=parallel)
    far = date(1970, 1, 1) + timedelta(days=3661 + back)
    with pytest.raises(ValidationError, match="at most 10 years"):
        BackfillParams(start=date(1970, 1, 1), end=far)


def test_cli_and_flow_calls_with_bad_parameters_write_nothing(initialised: Settings, prefect_harness: None,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.exceptions import ParameterTypeError

    monkeypatch.setenv("RISKFLOW_DATABASE_URL", initialised.database_url.get_secret_value())
    monkeypatch.setenv("RISKFLOW_HOME", str(initialised.home))
    before = _state(initialised)
    cases = {"epochs": ["train", "--epochs", "0"], "negative_keep": ["train", "--negative-keep", "1.5"],
             "baseline_cutoff_every_days": ["train", "--baseline-every", "0"],
             "min_ap_margin": ["train", "--margin", "-0.1"], "seed": ["train", "--seed", "-3"],
             "max_parallel": ["backfill", "--start", "2026-06-01", "--end", "2026-06-02",
                              "--max-parallel", "0"],
             "is before --start": ["backfill", "--start", "2026-06-10", "--end", "2026-06-01"]}
    for word, argv in cases.items():
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert word in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as bad_date:
        cli_main(["score", "--date", "2026-02-30"])
    assert bad_date.value.code == 2 and "2026-02-30" in capsys.readouterr().err
    for call, word in ((lambda: nightly_scoring(params={"device": "tpu"}), "device"),
                       (lambda: retrain(params={"epochs": -1}), "epochs"),
                       (lambda: retrain(params={"train_days": 5}), "train_days"),
                       (lambda: backfill(params={"start": "2026-06-10", "end": "2026-06-01"}),
                        "before start")):
        with pytest.raises(ParameterTypeError, match=word):
            call()
    tomorrow = today(initialised.tz) + timedelta(days=1)
    for call, word in ((lambda: nightly_scoring(ScoreParams(score_date=tomorrow)), "score_date"),
                       (lambda: retrain(RetrainParams(as_of=tomorrow)), "as_of"),
                       (lambda: backfill(BackfillParams(start=tomorrow - timedelta(days=3), end=tomorrow)),
                        "end")):
        with pytest.raises(ConfigError, match=f"{word}={tomorrow} is after today"):
            call()
    if not torch.cuda.is_available():
        monkeypatch.setenv("RISKFLOW_DEVICE", "cuda")
        with pytest.raises(ConfigError, match="device='cuda' but torch sees no CUDA"):
            nightly_scoring(ScoreParams(score_date=tomorrow - timedelta(days=2)))
    assert _state(initialised) == before


def test_default_dates_follow_the_scheduled_time_in_the_business_zone() -> None:
    tz = ZoneInfo("America/New_York")
    scheduled = datetime(2026, 3, 9, 6, 30, tzinfo=UTC)
    assert today(tz, scheduled) == date(2026, 3, 9) and yesterday(tz, scheduled) == date(2026, 3, 8)
    assert yesterday(tz, datetime(2026, 3, 9, 3, 59, tzinfo=UTC)) == date(2026, 3, 7)
    assert yesterday(tz) == today(tz) - timedelta(days=1)
    assert not_after_today("score_date", today(tz), tz) == today(tz)
    with pytest.raises(ConfigError, match=r"as_of=.* is after today \(.* in America/New_York\)"):
        not_after_today("as_of", today(tz) + timedelta(days=1), tz)


def _oracle(row: dict[str, Any], max_amount: float, allow_negative: bool, end: datetime,
            first_ids: set[int]) -> str | None:
    """The first rule a row breaks, written out by hand (RULES order)."""
    amount = row["amount"]
    if row["account_id"] is None:
        return "null_account"
    if row["ts"] is None:
        return "null_timestamp"
    if amount is None or not math.isfinite(amount) or abs(amount) > max_amount \
            or (amount < 0 and not allow_negative):
        return "bad_amount"
    if row["ts"] >= end:
        return "future_timestamp"
    if row["txn_id"] is not None and row["_row"] not in first_ids:
        return "duplicate_txn_id"
    return None


NOON = datetime(2026, 6, 20, 12, tzinfo=UTC)
NEXT_MIDNIGHT = datetime(2026, 7, 1, tzinfo=UTC)
txn_row = st.fixed_dictionaries({
    "txn_id": st.one_of(st.none(), st.integers(1, 6)),
    "account_id": st.one_of(st.none(), st.integers(1, 3)),
    "ts": st.sampled_from([None, NOON, NEXT_MIDNIGHT - timedelta(microseconds=1), NEXT_MIDNIGHT,
                           NEXT_MIDNIGHT + timedelta(days=400)]),
    "amount": st.one_of(st.none(), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.01, 1e6, 1e6 + 1,
                                                    -2e7, 1e300]), st.floats(-50, 5000)),
    "mcc": st.sampled_from([None, "5411", "never-seen"]),
})


@FAST
@given(rows=st.lists(txn_row, min_size=1, max_size=25), allow_negative=st.booleans())
def test_every_malformed_row_is_caught_by_its_first_rule_and_counted(
        demo_spec: FeatureSpec, rows: list[dict], allow_negative: bool) -> None:
    frame = pl.DataFrame([{**r, "_row": i, "channel": "pos", "country": "DE", "merchant_id": "m1"}
                          for i, r in enumerate(rows)],
                         schema={"txn_id": pl.Int64, "account_id": pl.Int64, "ts": pl.Datetime("us", "UTC"),
                                 "amount": pl.Float64, "mcc": pl.String, "_row": pl.Int64,
                                 "channel": pl.String, "country": pl.String, "merchant_id": pl.String})
    tx = demo_spec.transactions.model_copy(update={"allow_negative": allow_negative})
    result = check_batch(frame.select([*TXN_COLUMNS, "_row"]), tx, NEXT_MIDNIGHT)
    seen: set[int] = set()
    first_ids = set()
    for i, r in enumerate(rows):
        if r["txn_id"] is not None and r["txn_id"] not in seen:
            seen.add(r["txn_id"])
            first_ids.add(i)
    want = {i: _oracle({**r, "_row": i}, tx.max_amount, allow_negative, NEXT_MIDNIGHT, first_ids)
            for i, r in enumerate(rows)}
    got = dict(zip(result.bad["_row"].to_list(), result.bad["rule"].to_list(), strict=True))
    assert got == {i: rule for i, rule in want.items() if rule is not None}
    assert sorted(result.good["_row"].to_list()) == [i for i, rule in want.items() if rule is None]
    assert result.counts == {rule: sum(1 for v in want.values() if v == rule) for rule in RULES}
    assert result.total == len(rows) and result.bad_fraction == pytest.approx(len(got) / len(rows))
    column = {"null_account": tx.account_id, "null_timestamp": tx.timestamp, "bad_amount": tx.amount,
              "future_timestamp": tx.timestamp, "duplicate_txn_id": tx.id}
    for rule, reason in result.bad.select("rule", "reason").iter_rows():
        assert reason.startswith(column[rule]) or f"|{column[rule]}|" in reason, (rule, reason)
    good = result.good
    assert good["amount"].is_finite().all() and good["account_id"].null_count() == 0
    assert good.is_empty() or good["ts"].max() < NEXT_MIDNIGHT

"""The synthetic bank: determinism, pattern rates, event timing, look-alikes, rules vs aggregates, CLI."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from psycopg import sql

from riskmodel.db import connect
from riskmodel.errors import ConfigError
from riskmodel.settings import Settings
from riskmodel.synthetic import (
    Bank,
    PatternRates,
    generate_bank,
    seed_bank,
    table_checksums,
)
from riskmodel.synthetic_life import CHANNELS, KIND_CHANNEL, ONLINE
from riskmodel.synthetic_patterns import PATTERNS

END = dt.date(2026, 6, 30)
RATES = PatternRates(card_testing=0.03, account_takeover=0.03, bust_out=0.03,
                     compromised_merchant=0.03, background=0.01)


def test_same_arguments_same_checksums_other_seed_differs(initialised: Settings) -> None:
    first = seed_bank(initialised, accounts=800, days=60, end_date=END, seed=11)
    sums = table_checksums(initialised)
    again = seed_bank(initialised, accounts=800, days=60, end_date=END, seed=11)
    assert table_checksums(initialised) == sums
    assert again.checksums == first.checksums and again.rows == first.rows
    other = seed_bank(initialised, accounts=800, days=60, end_date=END, seed=12)
    other_sums = table_checksums(initialised)
    assert all(other_sums[t] != sums[t] for t in ("accounts", "transactions", "ground_truth"))
    assert other.checksums["transactions"] != first.checksums["transactions"]


def test_loaded_tables_are_valid_and_patterns_at_their_rates(initialised: Settings) -> None:
    n = 3000
    report = seed_bank(initialised, accounts=n, days=90, end_date=END, seed=5, rates=RATES)
    with connect(initialised, admin=True) as conn:
        counted = {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                       sql.Identifier("bank", t))).fetchone()[0]
                   for t in ("accounts", "transactions", "risk_events", "ground_truth")}
        assert counted == report.rows
        assert report.rows["transactions"] > n * 90 * 0.4
        lo, hi, min_amount, channels, bad_ids = conn.execute(
            "SELECT min(ts), max(ts), min(amount), array_agg(DISTINCT channel), "
            "count(*) - count(DISTINCT txn_id) FROM bank.transactions").fetchone()
        assert lo >= dt.datetime(2026, 4, 2, tzinfo=dt.UTC) and hi < dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
        assert min_amount > 0 and set(channels) == set(CHANNELS) and bad_ids == 0
        bank = generate_bank(accounts=n, days=90, end_date=END, seed=5, rates=RATES)
        total, first_ts = conn.execute(
            "SELECT sum(amount), min(ts) FILTER (WHERE txn_id = 1) FROM bank.transactions").fetchone()
        assert total == Decimal(int(bank.txns.cents.sum())) / 100
        assert first_ts.timestamp() == bank.day0_us / 1e6 + bank.txns.t[0]
        nulls = conn.execute("SELECT bool_and((event_ts IS NULL) = is_lookalike) FROM bank.ground_truth"
                             ).fetchone()[0]
        assert nulls is True
        hours = conn.execute("SELECT count(DISTINCT extract(hour FROM ts AT TIME ZONE 'UTC')) "
                             "FROM bank.transactions").fetchone()[0]
        assert hours == 24
        idx = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'bank' AND tablename = 'transactions'")}
        assert idx == {"transactions_ts_idx", "transactions_account_id_idx"}
        per_pattern = dict(conn.execute(
            "SELECT pattern, count(*) FILTER (WHERE NOT is_lookalike) FROM bank.ground_truth "
            "GROUP BY pattern").fetchall())
        for name in PATTERNS[:4]:
            assert abs(per_pattern[name] - 0.03 * n) <= 4 * np.sqrt(0.03 * n) + 1, name
            assert report.patterns[name]["planted"] == per_pattern[name]
        # every event: after its pattern's transactions, reported later within the lag, and planted
        bad = conn.execute("""
            SELECT e.account_id, g.pattern FROM bank.risk_events e
              JOIN bank.ground_truth g USING (account_id)
             WHERE g.is_lookalike OR e.reported_at <= e.event_ts
                OR e.reported_at > e.event_ts + interval '21 days'
                OR (g.pattern <> 'background' AND (g.event_ts <> e.event_ts OR NOT EXISTS (
                    SELECT 1 FROM bank.transactions t WHERE t.account_id = e.account_id
                       AND t.ts >= g.start_ts AND t.ts < e.event_ts)))""").fetchall()
        assert bad == []
        orphans, lookalike_events, missing = conn.execute("""
            SELECT (SELECT count(*) FROM bank.risk_events e WHERE NOT EXISTS (
                        SELECT 1 FROM bank.ground_truth g WHERE g.account_id = e.account_id)),
                   (SELECT count(*) FROM bank.risk_events e JOIN bank.ground_truth g USING (account_id)
                     WHERE g.is_lookalike),
                   (SELECT count(*) FROM bank.ground_truth g WHERE NOT g.is_lookalike
                       AND g.event_ts < '2026-06-01' AND NOT EXISTS (
                        SELECT 1 FROM bank.risk_events e WHERE e.account_id = g.account_id))
        """).fetchone()
        assert (orphans, lookalike_events, missing) == (0, 0, 0)
        after_default = conn.execute("""
            SELECT count(*) FROM bank.transactions t JOIN bank.ground_truth g USING (account_id)
             WHERE g.pattern = 'bust_out' AND NOT g.is_lookalike AND t.ts >= g.event_ts""").fetchone()[0]
        assert after_default == 0


def _episodes(bank: Bank, code: int) -> tuple[list[dict], list[dict]]:
    """Per account of a pattern: its pattern transactions (time order), split planted / look-alike."""
    p, tx, w = bank.planted, bank.planted.txns, bank.world
    out: tuple[list[dict], list[dict]] = ([], [])
    for account, look in zip(p.gt_account[p.gt_pattern == code], p.gt_lookalike[p.gt_pattern == code],
                             strict=True):
        rows = np.flatnonzero(tx.account == account)
        rows = rows[np.argsort(tx.t[rows], kind="stable")]
        m = tx.merchant[rows]
        out[int(look)].append({"t": tx.t[rows], "amount": tx.cents[rows] / 100, "merchant": m,
                               "usual": bank.acc.scale[account],
                               "online": KIND_CHANNEL[w.kind[m]] == ONLINE,
                               "foreign": w.country[m] != bank.acc.home[account]})
    return out


def _rule(code: int, e: dict) -> bool:
    """A rule that knows the pattern's order: True means 'planted'."""
    t, amount = e["t"], e["amount"]
    if code == 0:  # tiny charges come before the largest one
        return bool(t[amount <= 2.0].min() < t[np.argmax(amount)])
    if code == 1:  # foreign amounts rise
        foreign = amount[e["foreign"]]
        return bool(foreign[-1] > foreign[0])
    if code == 2:  # spend ramps up
        return bool(np.corrcoef(t, amount)[0, 1] > 0)
    return bool(not e["online"][0])  # the card-present visit comes before the online charges


def _aggregates(episodes: list[dict]) -> tuple[float, float]:
    """Median pattern total relative to the account's usual amount, and mean transaction count."""
    return (float(np.median([e["amount"].sum() / e["usual"] for e in episodes])),
            float(np.mean([len(e["amount"]) for e in episodes])))


@pytest.mark.parametrize("code", range(4), ids=PATTERNS[:4])
def test_order_rule_separates_while_aggregates_match(code: int) -> None:
    bank = generate_bank(accounts=4000, days=120, end_date=END, seed=3, rates=RATES)
    planted, look = _episodes(bank, code)
    assert len(planted) >= 60 and len(look) >= 60
    accuracy = (sum(_rule(code, e) for e in planted) + sum(not _rule(code, e) for e in look)) / (
        len(planted) + len(look))
    assert accuracy >= 0.95, accuracy
    (sum_p, n_p), (sum_l, n_l) = _aggregates(planted), _aggregates(look)
    assert 0.8 <= sum_l / sum_p <= 1.25 and 0.85 <= n_l / n_p <= 1.15, (sum_l / sum_p, n_l / n_p)

    control = generate_bank(accounts=4000, days=120, end_date=END, seed=3, rates=RATES,
                            order_patterns=False)
    c_planted, c_look = _episodes(control, code)
    c_accuracy = (sum(_rule(code, e) for e in c_planted) + sum(not _rule(code, e) for e in c_look)) / (
        len(c_planted) + len(c_look))
    assert c_accuracy <= 0.65, c_accuracy
    assert _aggregates(c_look)[0] < 0.6 * _aggregates(c_planted)[0]


def test_pattern_accounts_stand_out_in_aggregates_from_normal_ones() -> None:
    bank = generate_bank(accounts=3000, days=90, end_date=END, seed=9, rates=RATES)
    tx, p = bank.txns, bank.planted
    tiny = np.bincount(tx.account[tx.cents <= 200], minlength=bank.acc.n)
    card_testing = p.gt_account[p.gt_pattern == 0]
    normal = np.setdiff1d(np.arange(bank.acc.n), p.gt_account)
    assert np.mean(tiny[card_testing] >= 5) > 0.9 and np.mean(tiny[normal] >= 5) < 0.02


def test_invalid_arguments_name_the_parameter() -> None:
    with pytest.raises(ConfigError, match="days"):
        generate_bank(accounts=100, days=10, end_date=END, seed=1)
    with pytest.raises(ConfigError, match="card_testing"):
        PatternRates(card_testing=0.5)


def test_cli_seed_json(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    monkeypatch.setenv("RISKFLOW_DATABASE_URL", database_url)
    monkeypatch.setenv("RISKFLOW_HOME", str(tmp_path / "home"))
    code = main(["seed", "--accounts", "400", "--days", "60", "--end-date", "2026-06-30", "--seed", "4",
                 "--no-order-patterns", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["order_patterns"] is False and payload["end_date"] == "2026-06-30"
    with connect(Settings(database_url=database_url), admin=True) as conn:
        assert conn.execute("SELECT count(*) FROM bank.transactions").fetchone()[0] == \
            payload["rows"]["transactions"] > 0
    assert main(["seed", "--accounts", "400", "--days", "60", "--end-date", "30/06/2026"]) == 2
    capsys.readouterr()
    assert main(["extract", "--date", "2026-06-30", "--json"]) == 0
    settings = Settings(database_url=database_url, home=tmp_path / "home")
    assert any(settings.home.joinpath("lake").rglob("*.parquet"))
    assert main(["seed", "--accounts", "300", "--days", "50", "--end-date", "2026-05-31", "--seed", "5"]) == 0
    assert not any(settings.home.joinpath("lake").rglob("*.parquet")), "a re-seeded bank starts a new lake"
    with connect(settings) as conn:
        assert conn.execute("SELECT count(*) FROM riskflow.extract_watermarks").fetchone()[0] == 0


def test_binary_encoder_round_trips_edge_values(initialised: Settings) -> None:
    from riskmodel.synthetic_copy import (
        categorical,
        copy_rows,
        null_or,
        numeric_cents_field,
        text_table,
        timestamptz_field,
    )

    cents = np.array([1, 99, 100, 123_456, 999_999_999_999_99, 10_000_00], dtype=np.int64)
    micros = np.array([0, 946_684_800_000_000, 1_782_777_600_123_456, -1, 5, 7], dtype=np.int64)
    valid = np.array([True, True, True, False, True, True])
    words = text_table(["", "é", "card_present"])
    codes = np.array([0, 1, 2, 2, 1, 0])
    with connect(initialised, admin=True) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE enc (a numeric(14, 2), t timestamptz, w text)")
        copy_rows(cur, sql.Identifier("enc"), ["a", "t", "w"], len(cents), lambda r: [
            numeric_cents_field(cents[r]), null_or(timestamptz_field(micros[r]), valid[r]),
            categorical(codes[r], words)], chunk_rows=4)
        got = cur.execute("SELECT a, t, w FROM enc").fetchall()
    assert [g[0] for g in got] == [Decimal(int(c)) / 100 for c in cents]
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert [g[1] for g in got] == [epoch + dt.timedelta(microseconds=int(m)) if v else None
                                   for m, v in zip(micros, valid, strict=True)]
    assert [g[2] for g in got] == ["", "é", "card_present", "card_present", "é", ""]

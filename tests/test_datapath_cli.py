"""`riskflow extract` and `riskflow bench` commands, and the shared benchmark row format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.common import ROW_KEYS, bench_row, in_child, scale_of
from flows.cli import main
from flows.commands.bench import COLUMNS, stages, table_columns
from riskmodel.errors import ConfigError
from riskmodel.settings import Settings
from tests.datapath_helpers import seed_tiny_bank


def _allocate(mb: int) -> int:
    block = np.ones(mb * 2**20, np.uint8)
    return int(block.sum())


def test_bench_row_has_the_agreed_keys_and_ratios() -> None:
    row = bench_row("extract", "S", rows=1000, seconds=2.0, peak_rss_mb=10, output_mb=1.5, baseline="b",
                    baseline_rate=100.0, limit="l", limit_rate=1000.0, details={"x": 1})
    assert tuple(k for k in row if k != "details") == ROW_KEYS
    assert row["rows_per_s"] == 500.0 and row["baseline_ratio"] == 5.0 and row["limit_ratio"] == 0.5
    assert scale_of("M").accounts == 100_000 and scale_of("S").days == 90
    with pytest.raises(ConfigError, match="scale"):
        scale_of("XL")


def test_in_child_reports_the_child_peak_rss() -> None:
    result, seconds, rss = in_child(_allocate, 150)
    assert result == 150 * 2**20
    assert rss > 150 and seconds > 0


def test_bench_stages_are_discovered_and_unknown_ones_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    assert {"extract", "sequences"} <= set(stages())
    assert "common" not in stages()
    assert main(["bench", "--stage", "nope", "--scale", "S"]) == 2
    assert "choose one of" in capsys.readouterr().err


def test_extract_command_prints_json(initialised: Settings, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rows = seed_tiny_bank(initialised, accounts=5, days=6)
    monkeypatch.setenv("RISKFLOW_DATABASE_URL", initialised.database_url.get_secret_value())
    monkeypatch.setenv("RISKFLOW_HOME", str(tmp_path / "cli-home"))
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("RISKFLOW_CONFIG", str(tmp_path / "empty.toml"))
    assert main(["extract", "--date", "2026-06-30", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["rows_written"] == len(rows) and payload["dates_written"] == 6
    lake = tmp_path / "cli-home" / "lake" / "transactions"
    assert (lake / "txn_date=2026-06-30" / "part-0.parquet").exists()


def test_each_bench_stage_prints_columns_its_rows_have() -> None:
    import importlib

    for stage in stages():
        module = importlib.import_module(f"bench.{stage}")
        if not hasattr(module, "TABLE_COLUMNS"):
            assert table_columns(module) == COLUMNS and set(COLUMNS) <= set(ROW_KEYS), stage
    assert "limit_ratio" in table_columns(importlib.import_module("bench.write"))

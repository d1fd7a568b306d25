"""Report folders: retention drops expired night folders only, and never a night still being written."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from riskmodel.reports import drop_expired_nights, night_folder

CUTOFF = dt.date(2026, 6, 10)


def test_only_expired_night_folders_go(tmp_path: Path) -> None:
    old, held, recent = (night_folder(tmp_path, CUTOFF - dt.timedelta(days=d)) for d in (9, 8, 0))
    others = [tmp_path / "night-latest", tmp_path / "v20260601T000000"]
    for folder in (old, held, recent, *others):
        folder.mkdir()
        (folder / "score_distribution.png").write_bytes(b"png")
    stray = tmp_path / f"night-{CUTOFF - dt.timedelta(days=7)}"
    stray.write_bytes(b"a file, not a night folder")
    assert drop_expired_nights(tmp_path, CUTOFF, keep={CUTOFF - dt.timedelta(days=8)}) == [old.name]
    assert not old.exists() and held.is_dir() and recent.is_dir() and stray.is_file()
    assert all(folder.is_dir() for folder in others)
    assert drop_expired_nights(tmp_path, CUTOFF) == [held.name]
    assert drop_expired_nights(tmp_path / "missing", CUTOFF) == []

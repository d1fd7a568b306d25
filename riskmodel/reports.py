"""Report folders under `Settings.reports`: one `night-<date>/` per scored night, dropped with the
night's score partition once past `retention_days`, so the folder does not grow without end."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Collection
from pathlib import Path

log = logging.getLogger("riskflow.reports")

NIGHT_PREFIX = "night-"


def night_folder(reports: Path, day: dt.date) -> Path:
    """Where the images of scored night `day` go."""
    return reports / f"{NIGHT_PREFIX}{day.isoformat()}"


def _night_of(path: Path) -> dt.date | None:
    """The date of a `night-<date>/` folder; None for anything else."""
    if not path.is_dir() or not path.name.startswith(NIGHT_PREFIX):
        return None
    try:
        return dt.date.fromisoformat(path.name.removeprefix(NIGHT_PREFIX))
    except ValueError:
        return None


def drop_expired_nights(reports: Path, cutoff: dt.date, keep: Collection[dt.date] = ()) -> list[str]:
    """Delete the `night-<date>/` folders of `reports` dated before `cutoff`, except the dates in
    `keep` (whose partitions a running write held, so it may still be writing its images); their
    names, sorted. Model-version folders and anything else there are left alone; a folder that
    cannot be removed is logged and kept (the scores are what matters, not their pictures)."""
    if not reports.is_dir():
        return []
    dropped = []
    for path in sorted(reports.iterdir()):
        day = _night_of(path)
        if day is None or day >= cutoff or day in keep:
            continue
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log.warning("retention: kept report folder %s: %s", path, exc)
            continue
        dropped.append(path.name)
    return dropped

"""Prefect artifacts: progress that updates in place, tables, and images people can look at.

Images are embedded in a markdown artifact as data URIs (the UI renders them without a file
server) and also written next to the run's other outputs so the CLI can point at them.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100] or "riskflow"


class Progress:
    """A progress artifact that a long task updates in place (0..100)."""

    def __init__(self, key: str, description: str) -> None:
        self._id: UUID = create_progress_artifact(0.0, key=artifact_key(key), description=description)
        self._last = 0.0

    def update(self, fraction: float, description: str | None = None) -> None:
        """Set progress to `fraction` (0..1); tiny steps are skipped to spare the API."""
        pct = max(0.0, min(100.0, 100.0 * fraction))
        if pct - self._last >= 1.0 or pct >= 100.0:
            update_progress_artifact(self._id, pct, description=description)
            self._last = pct


def _clean(value: Any) -> Any:
    """A JSON-ready table cell: non-finite floats empty, numpy scalars plain, dates ISO text,
    lists joined with "; "."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "; ".join(str(v) for v in value)
    return value


def publish_table(key: str, rows: Sequence[Mapping[str, Any]], description: str) -> None:
    """A table artifact of dict rows (non-finite floats become empty cells)."""
    clean = [{k: _clean(v) for k, v in row.items()} for row in rows]
    create_table_artifact(clean, key=artifact_key(key), description=description)


def publish_images(key: str, images: Mapping[str, bytes], out_dir: Path, description: str) -> list[Path]:
    """Write PNGs to `out_dir` and publish them together as one markdown artifact."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    parts = [f"## {description}"]
    for name, png in images.items():
        path = out_dir / f"{artifact_key(name)}.png"
        path.write_bytes(png)
        paths.append(path)
        encoded = base64.b64encode(png).decode()
        parts.append(f"### {name}\n\n![{name}](data:image/png;base64,{encoded})\n\n`{path}`")
    create_markdown_artifact("\n\n".join(parts), key=artifact_key(key), description=description)
    return paths


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """A markdown artifact (summaries)."""
    create_markdown_artifact(markdown, key=artifact_key(key), description=description)

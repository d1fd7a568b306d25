"""Business dates: "yesterday" and "today" are local dates in the configured time zone."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo


def today(tz: ZoneInfo) -> date:
    """The current local date in `tz`."""
    return datetime.now(tz).date()


def yesterday(tz: ZoneInfo) -> date:
    """The default score date: the last complete local business day."""
    return today(tz) - timedelta(days=1)

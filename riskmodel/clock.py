"""Business dates: "yesterday" and "today" are local dates in the configured time zone."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from riskmodel.errors import ConfigError


def today(tz: ZoneInfo, at: datetime | None = None) -> date:
    """The local date in `tz` at the aware moment `at` (now when None), as a plain `date` (Prefect
    hands a scheduled time over as a pendulum DateTime, whose `.date()` is pendulum's own type)."""
    local = (at or datetime.now(tz)).astimezone(tz)
    return date(local.year, local.month, local.day)


def yesterday(tz: ZoneInfo, at: datetime | None = None) -> date:
    """The default score date: the last complete local business day before `at` (now when None).

    A scheduled run passes its scheduled time, so a run that starts late still scores its own night."""
    return today(tz, at) - timedelta(days=1)


def not_after_today(name: str, day: date, tz: ZoneInfo) -> date:
    """`day`, refused when it is after today in `tz`: a future date would move "the latest night" of
    the views forward, count open label windows as closed and expire partitions by the wrong date."""
    now = today(tz)
    if day > now:
        raise ConfigError(f"{name}={day.isoformat()} is after today ({now.isoformat()} in {tz.key}); "
                          "give a date that has begun")
    return day

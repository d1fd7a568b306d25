"""Argument types and checks the command modules share: ISO dates, and the refusals a flow would
make, made before Prefect starts so that a mistake costs one line and no wait."""

from __future__ import annotations

import argparse
from datetime import date

from riskmodel.clock import not_after_today
from riskmodel.errors import ConfigError
from riskmodel.schema import require_current_schema
from tasks.context import settings_and_spec

DATE_METAVAR = "YYYY-MM-DD"


def iso_date(text: str) -> date:
    """A command-line date; argparse reports anything else as "not a date (YYYY-MM-DD)"."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date ({DATE_METAVAR}): {text!r}") from None


def preflight(dates: dict[str, date | None]) -> None:
    """Refuse now what the flow would refuse after starting Prefect: an unreadable spec, a date
    (named by its option) after today in the business zone, or a database that cannot be reached
    as the writer role or lacks riskflow's current tables."""
    settings, _ = settings_and_spec()
    for option, day in dates.items():
        if day is not None:
            not_after_today(option, day, settings.tz)
    require_current_schema(settings)


def ordered(start_option: str, start: date, end_option: str, end: date) -> None:
    """Refuse a range whose end comes before its start, naming both options."""
    if end < start:
        raise ConfigError(f"{end_option} {end.isoformat()} is before {start_option} {start.isoformat()}")


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Append "(default X)" to the help of every option of `parser` that has a default and does not
    state it already, so `--help` shows what a run without the option uses."""
    for action in parser._actions:
        stated = action.help and "default" in action.help
        if action.help and not stated and action.default not in (None, False, argparse.SUPPRESS):
            action.help = f"{action.help} (default %(default)s)"
    return parser

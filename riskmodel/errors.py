"""Exceptions riskflow raises on purpose; the CLI prints them as one line and exits 2."""


def first_line(error: BaseException | str) -> str:
    """The first non-blank line of an error's message (a driver's message runs over several), or
    the error's type name when the message is empty."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0]
    return type(error).__name__ if isinstance(error, BaseException) else ""


class RiskflowError(Exception):
    """Base class: an expected failure with a message that names what was wrong."""


class ConfigError(RiskflowError, ValueError):
    """A setting, parameter or spec value is invalid."""


class DatabaseError(RiskflowError):
    """The database is unreachable, or an operation on it failed in an expected way."""


class TransientDatabaseError(DatabaseError):
    """The database was unreachable, dropped the connection or kept a lock: the same call may work later.

    Tasks retry these (and driver connection errors) and nothing else: a bad query fails at once.
    """


class DataQualityError(RiskflowError):
    """Too many input rows failed a quality rule; the message names the rule."""


class ModelIntegrityError(RiskflowError):
    """A model artifact is missing, corrupted, or does not match its registered sha256."""

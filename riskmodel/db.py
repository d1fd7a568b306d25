"""Database access: the URL (or an embedded Postgres), connections as the writer role, locks.

Every connection the pipeline opens goes through `connect()` so that it runs as the
least-privilege writer role and never as a superuser, even on the embedded server.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path

import psycopg
from psycopg import sql

from riskmodel.errors import DatabaseError, TransientDatabaseError, first_line
from riskmodel.settings import Settings

log = logging.getLogger("riskflow.db")

# A URL's password runs to the last "@" of the URL (a raw "/", "?" or "#" in it is still the password);
# a libpq parameter's value may be quoted and have spaces around "=".
_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)\S*(@[^@\s/?#]*)", re.IGNORECASE)
_PASSWORD_PARAM = re.compile(r"(password)\s*=\s*('(?:[^'\\]|\\.)*'|[^&\s]*)", re.IGNORECASE)
# The server answered and refused these logins; another try with the same URL meets the same answer.
# (libpq gives no SQLSTATE for a failed connect, so the server's English message is what we read.)
_REFUSED_LOGIN = re.compile(r"password authentication failed|no pg_hba\.conf entry"
                            r"|permission denied for database|(role|database) \"[^\"]*\" does not exist")


def redact(text: str) -> str:
    """Replace any password in a URL or libpq string with `***` (for logs and errors)."""
    return _PASSWORD_PARAM.sub(r"\1=***", _PASSWORD.sub(r"\1***\2", text))


def stored_error(text: str) -> str:
    """An error as riskflow stores it in a table or artifact: redacted and at most 500 characters."""
    return redact(text)[:500]


def _passwords(target: str) -> set[str]:
    """The password of connection string `target`, as written and decoded (a driver's message may
    quote either, e.g. psycopg's "invalid percent-encoded token")."""
    found: set[str] = set()
    with suppress(psycopg.Error):  # not parsable: the URL branch below still reads it
        found.add(psycopg.conninfo.conninfo_to_dict(target).get("password") or "")
    if "://" in target:
        try:
            password = urllib.parse.urlsplit(target).password or ""
        except ValueError:  # e.g. a "[" in the password reads as a malformed IPv6 host
            password = ""
        found |= {password, urllib.parse.unquote(password)}
    return {p for p in found if p}


def scrub(text: str, target: str) -> str:
    """`text` with `target`'s password removed where a message quotes it, and any URL or libpq
    password redacted."""
    for password in sorted(_passwords(target), key=len, reverse=True):
        for quote in ('"', "'"):
            text = text.replace(f"{quote}{password}{quote}", f"{quote}***{quote}")
    return redact(text)


def connect_error(target: str, exc: BaseException, driver: str = "") -> DatabaseError:
    """A failed connect as our error: a refused login (bad password, unknown role or database) or a
    URL that cannot be parsed is a plain `DatabaseError`; anything else (refused, unreachable, server
    starting up) is transient. The message never holds the password."""
    message = first_line(scrub(str(exc), target))[:300]
    if isinstance(exc, psycopg.ProgrammingError):
        return DatabaseError(f"the database URL {redact(target)} cannot be parsed: {message} "
                             "(percent-encode special characters in the user name and password)")
    kind = DatabaseError if _REFUSED_LOGIN.search(message) else TransientDatabaseError
    return kind(f"cannot connect{driver} to Postgres at {redact(target)}: {message}")


@cache
def _embedded_url(pgdata: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        pgdata.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    url = server.get_uri()
    log.info("riskflow: RISKFLOW_DATABASE_URL unset; using embedded Postgres in %s", pgdata)
    return url


def embedded_pgdata(settings: Settings) -> Path:
    """The folder of the embedded Postgres riskflow starts when no database URL is configured."""
    return (settings.home / "pg").resolve()


def database_url(settings: Settings) -> str:
    """The configured URL, or that of an embedded Postgres under `home/pg` (started or reused)."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return _embedded_url(embedded_pgdata(settings))


def sqlalchemy_url(url: str) -> str:
    """The same URL for SQLAlchemy with the psycopg 3 driver."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


def connect(settings: Settings, *, admin: bool = False, autocommit: bool = False,
            url: str | None = None) -> psycopg.Connection:
    """Open a connection; unless `admin`, it runs as the writer role (`SET ROLE`)."""
    target = url or database_url(settings)
    try:
        conn = psycopg.connect(target, autocommit=autocommit, connect_timeout=15)
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
        raise connect_error(target, exc) from None
    if not admin and settings.run_as_writer:
        try:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(settings.writer_role)))
            if not autocommit:
                conn.commit()
        except psycopg.Error as exc:
            conn.close()
            raise DatabaseError(
                f"cannot SET ROLE {settings.writer_role!r} (run `riskflow db init` first, "
                f"or grant the role to this user): {first_line(exc)}"
            ) from None
    return conn


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (e.g. 'score:2026-01-31')."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def advisory_lock(conn: psycopg.Connection, name: str, *, timeout_s: float = 600.0,
                  poll_s: float = 0.2) -> Iterator[None]:
    """Hold a session advisory lock for `name`; wait at most `timeout_s`, then fail clearly."""
    key = lock_key(name)
    deadline = time.monotonic() + timeout_s
    while not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        if time.monotonic() > deadline:
            raise DatabaseError(f"another run holds the lock {name!r}; gave up after {timeout_s}s")
        time.sleep(poll_s)
    if not conn.autocommit:
        conn.commit()
    try:
        yield
    finally:
        if not conn.closed:
            try:
                if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                    conn.rollback()
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                if not conn.autocommit:
                    conn.commit()
            except psycopg.Error as exc:
                log.warning("could not release the lock %r (it ends with the session): %s", name,
                            first_line(exc))


def qualified(schema: str, table: str) -> sql.Identifier:
    """A quoted `schema.table` identifier."""
    return sql.Identifier(schema, table)

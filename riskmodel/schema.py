"""Apply `sql/` to a database: roles, riskflow's schema, views, and optionally the demo source.

`init_database` runs in one transaction and is idempotent: running it twice is a no-op.
Templates in `sql/` use `{schema}`, `{reader}`, `{writer}`, `{analyst}` placeholders that are filled
with quoted identifiers by psycopg.sql (and `{reader_name}`, `{writer_name}`, `{analyst_name}` with
quoted literals). Settings keep those names to characters that cannot end a comment or a
dollar-quoted block, and the templates' comments name no placeholder.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from riskmodel.db import connect
from riskmodel.errors import ConfigError, DatabaseError, first_line
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec

log = logging.getLogger("riskflow.schema")

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
ROLES_FILE = "roles.sql"
DEMO_SOURCE_FILE = "demo_source.sql"


@dataclass(frozen=True)
class InitReport:
    """What `init_database` applied."""

    schema: str
    files: list[str]
    source_tables: list[str]
    demo_source: bool
    reader_members: list[str] = field(default_factory=list)


def render(path: Path, settings: Settings) -> sql.Composed:
    """Fill a template's placeholders with quoted identifiers and literals."""
    return sql.SQL(path.read_text()).format(
        schema=sql.Identifier(settings.db_schema),
        reader=sql.Identifier(settings.reader_role),
        writer=sql.Identifier(settings.writer_role),
        analyst=sql.Identifier(settings.analyst_role),
        reader_name=sql.Literal(settings.reader_role),
        writer_name=sql.Literal(settings.writer_role),
        analyst_name=sql.Literal(settings.analyst_role),
    )


def owned_schema_files() -> list[Path]:
    """Files that define riskflow's own tables and views, in the order they apply."""
    skip = {ROLES_FILE, DEMO_SOURCE_FILE}
    return sorted(p for p in SQL_DIR.glob("*.sql") if p.name not in skip)


def _grant_sources(cur: psycopg.Cursor, settings: Settings, spec: FeatureSpec) -> list[str]:
    """Grant the reader SELECT on the spec's source tables, refusing any in a system schema or in
    riskflow's own (the grant runs as the admin: a spec must not hand out the catalog or the scores)."""
    refs = [r for r in (spec.transactions, spec.events, spec.accounts, spec.ground_truth) if r]
    tables = [(r.db_schema, r.table) for r in refs]
    for schema_name, table in tables:
        system = schema_name.lower() == "information_schema" or schema_name.lower().startswith("pg_")
        if system or schema_name == settings.db_schema:
            raise ConfigError(f"feature spec source {schema_name}.{table}: a source table cannot live in a "
                              f"system schema or in riskflow's own schema {settings.db_schema!r}")
    reader = sql.Identifier(settings.reader_role)
    for schema_name in sorted({s for s, _ in tables}):
        cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(schema_name), reader))
    for schema_name, table in tables:
        cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.Identifier(schema_name, table), reader))
    return [f"{s}.{t}" for s, t in tables]


def init_database(settings: Settings, spec: FeatureSpec, *, demo_source: bool = False) -> InitReport:
    """Create roles, riskflow's schema and views (and the demo source tables) in one transaction."""
    if not (SQL_DIR / ROLES_FILE).is_file():
        raise ConfigError(f"riskflow's SQL files are not in {SQL_DIR}: riskflow runs from its checkout "
                          "(install it with `pip install -e .`), not from a copied wheel")
    applied: list[str] = []
    with connect(settings, admin=True) as conn, conn.cursor() as cur:
        try:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('riskflow:db-init'))")
            cur.execute(render(SQL_DIR / ROLES_FILE, settings))
            applied.append(ROLES_FILE)
            if demo_source:
                cur.execute(render(SQL_DIR / DEMO_SOURCE_FILE, settings))
                applied.append(DEMO_SOURCE_FILE)
            sources = _grant_sources(cur, settings, spec)
            cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(settings.writer_role)))
            for path in owned_schema_files():
                cur.execute(render(path, settings))
                applied.append(path.name)
            cur.execute("RESET ROLE")
            members = _reader_members(cur, settings)
        except psycopg.errors.UndefinedTable as exc:
            raise DatabaseError(
                f"db init: a source table named by the spec does not exist "
                f"({first_line(exc)}); run `riskflow check-spec`"
            ) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise DatabaseError(
                f"db init needs a user that can create roles and schemas: "
                f"{first_line(exc)}"
            ) from None
    log.info("db init: applied %s to schema %s", ", ".join(applied), settings.db_schema)
    if members:
        log.warning("db init: %s hold the reader role %s, which reads the source tables but (since the "
                    "analyst role) no longer the analyst views; give analysts %s instead (GRANT %s TO "
                    "...; REVOKE %s FROM ...)", ", ".join(members), settings.reader_role,
                    settings.analyst_role, settings.analyst_role, settings.reader_role)
    return InitReport(settings.db_schema, applied, sources, demo_source, members)


def _reader_members(cur: psycopg.Cursor, settings: Settings) -> list[str]:
    """Roles granted the reader role directly, other than the writer: before the analyst role the
    docs told analysts to take the reader role, which reads the bank's source tables."""
    rows = cur.execute(
        "SELECT m.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid"
        " JOIN pg_roles m ON m.oid = a.member WHERE r.rolname = %s AND m.rolname <> %s ORDER BY 1",
        (settings.reader_role, settings.writer_role)).fetchall()
    return [r[0] for r in rows]


def own_tables() -> list[str]:
    """The tables riskflow's schema files create, in order (read from the files, so a table added
    there is checked for too)."""
    pattern = re.compile(r"CREATE TABLE IF NOT EXISTS \{schema\}\.(\w+)")
    return [name for path in owned_schema_files() for name in pattern.findall(path.read_text())]


def require_current_schema(settings: Settings) -> None:
    """Refuse, before any work, a database whose riskflow schema lacks a table this version uses (one
    initialised by an older riskflow, or never), naming the tables and the fix."""
    with connect(settings) as conn:
        missing = [r[0] for r in conn.execute(
            "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(format('%%I.%%I', %s::text, t)) IS NULL",
            (own_tables(), settings.db_schema)).fetchall()]
    if missing:
        raise DatabaseError(
            f"schema {settings.db_schema!r} lacks {', '.join(missing)}: its tables are older than this "
            "riskflow (or were never created); run `riskflow db init`, which adds what is missing and "
            "keeps every score")

"""Check a feature spec against the live database (information_schema), reporting every problem."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg

from riskmodel.spec import FeatureSpec, TableRef

NUMERIC_TYPES = {"smallint", "integer", "bigint", "numeric", "real", "double precision"}
ID_TYPES = {"smallint", "integer", "bigint", "numeric", "text", "character varying",
            "character", "uuid"}
CATEGORY_TYPES = ID_TYPES | {"boolean"}
TIMESTAMP_TYPES = {"timestamp with time zone"}


@dataclass(frozen=True)
class Problem:
    """One mismatch between the spec and the database."""

    table: str
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, str | None]:
        """JSON-friendly form."""
        return asdict(self)


def _expected_columns(spec: FeatureSpec) -> list[tuple[TableRef, str, set[str], str]]:
    t, e, a = spec.transactions, spec.events, spec.accounts
    want: list[tuple[TableRef, str, set[str], str]] = [
        (t, t.id, ID_TYPES, "an id (integer, text or uuid)"),
        (t, t.account_id, ID_TYPES, "an id (integer, text or uuid)"),
        (t, t.timestamp, TIMESTAMP_TYPES, "timestamptz"),
        (t, t.amount, NUMERIC_TYPES, "numeric"),
        *[(t, c, NUMERIC_TYPES, "numeric") for c in t.numeric],
        *[(t, c, CATEGORY_TYPES, "categorical (text, integer or boolean)") for c in t.categorical],
        (e, e.account_id, ID_TYPES, "an id (integer, text or uuid)"),
        (e, e.timestamp, TIMESTAMP_TYPES, "timestamptz"),
        (e, e.event_type, CATEGORY_TYPES, "categorical (text, integer or boolean)"),
    ]
    if e.reported_at:
        want.append((e, e.reported_at, TIMESTAMP_TYPES, "timestamptz"))
    if a is not None:
        want.append((a, a.account_id, ID_TYPES, "an id (integer, text or uuid)"))
        want += [(a, c, NUMERIC_TYPES, "numeric") for c in a.numeric]
        want += [(a, c, CATEGORY_TYPES, "categorical (text, integer or boolean)")
                 for c in a.categorical]
    g = spec.ground_truth
    if g is not None:
        want += [(g, g.account_id, ID_TYPES, "an id (integer, text or uuid)"),
                 (g, g.pattern, CATEGORY_TYPES, "categorical (text, integer or boolean)"),
                 (g, g.is_lookalike, {"boolean"}, "boolean")]
    return want


def check_spec(conn: psycopg.Connection, spec: FeatureSpec) -> list[Problem]:
    """Every missing table, missing column and wrongly typed column, in spec order."""
    refs = {r.qualified: r for r in (spec.transactions, spec.events, spec.accounts, spec.ground_truth) if r}
    rows = conn.execute(
        """SELECT table_schema, table_name, column_name, data_type
             FROM information_schema.columns
            WHERE (table_schema, table_name) IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
        ([r.db_schema for r in refs.values()], [r.table for r in refs.values()]),
    ).fetchall()
    columns: dict[str, dict[str, str]] = {}
    for schema_name, table, column, data_type in rows:
        columns.setdefault(f"{schema_name}.{table}", {})[column] = data_type
    problems: list[Problem] = []
    for name in refs:
        if name not in columns:
            problems.append(Problem(name, None, "table or view not found (or not readable)"))
    for ref, column, allowed, label in _expected_columns(spec):
        found = columns.get(ref.qualified)
        if found is None:
            continue
        if column not in found:
            problems.append(Problem(ref.qualified, column, "column not found"))
        elif found[column] not in allowed:
            problems.append(Problem(ref.qualified, column,
                                    f"has type {found[column]}, expected {label}"))
    return problems

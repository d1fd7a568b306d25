"""Ground truth of planted patterns (synthetic banks): evaluation reads it, training never does."""

from __future__ import annotations

from psycopg import sql

from riskmodel.db import connect
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec


def read_ground_truth(settings: Settings, spec: FeatureSpec) -> dict[str, str]:
    """account id (text) -> pattern name, or "look-alike:<pattern>"; empty without the table."""
    gt = spec.ground_truth
    if gt is None:
        return {}
    query = sql.SQL("SELECT {acc}::text, {pat}::text, {look} FROM {table} ORDER BY 1, 2").format(
        acc=sql.Identifier(gt.account_id), pat=sql.Identifier(gt.pattern),
        look=sql.Identifier(gt.is_lookalike), table=sql.Identifier(gt.db_schema, gt.table))
    with connect(settings) as conn:
        rows = conn.execute(query).fetchall()
    return {acc: (f"look-alike:{pat}" if look else pat) for acc, pat, look in rows}

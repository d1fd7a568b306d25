-- Analysts log in as members of the analyst role: they may read the analyst views and call the
-- analyst functions (both run with their owner's rights), but neither riskflow's tables nor the
-- bank's source tables, and they write nothing. The functions are not left executable by PUBLIC.
-- Databases initialised before the analyst role gave these objects to the reader role, which also
-- reads the raw source tables; that is taken back here. Applied by `riskflow db init` after the
-- views, as the writer role. Idempotent.

GRANT USAGE ON SCHEMA {schema} TO {analyst};
GRANT SELECT ON {schema}.latest_scores, {schema}.latest_night, {schema}.band_counts,
    {schema}.latest_movers TO {analyst};
REVOKE EXECUTE ON FUNCTION {schema}.score_movers(date, integer), {schema}.account_history(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION {schema}.score_movers(date, integer), {schema}.account_history(text) TO {analyst};

REVOKE SELECT ON {schema}.latest_scores, {schema}.latest_night, {schema}.band_counts,
    {schema}.latest_movers FROM {reader};
REVOKE EXECUTE ON FUNCTION {schema}.score_movers(date, integer), {schema}.account_history(text) FROM {reader};
REVOKE USAGE ON SCHEMA {schema} FROM {reader};

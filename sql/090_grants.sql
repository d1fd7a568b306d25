-- Analysts log in as members of {reader}: besides the source tables they may read the analyst
-- views and call the analyst functions (both run with their owner's rights), but not riskflow's
-- tables themselves, and they write nothing. The functions are not left executable by PUBLIC.
-- Applied by `riskflow db init` after the views, as the writer role. Idempotent.

GRANT USAGE ON SCHEMA {schema} TO {reader};
GRANT SELECT ON {schema}.latest_scores, {schema}.latest_night, {schema}.band_counts,
    {schema}.latest_movers TO {reader};
REVOKE EXECUTE ON FUNCTION {schema}.score_movers(date, integer), {schema}.account_history(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION {schema}.score_movers(date, integer), {schema}.account_history(text) TO {reader};

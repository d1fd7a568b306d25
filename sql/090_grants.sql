-- Analysts log in as members of {reader}: besides the source tables they may read the analyst
-- views (which run with their owner's rights), but not riskflow's tables themselves, and they
-- write nothing. Applied by `riskflow db init` after the views, as the writer role. Idempotent.

GRANT USAGE ON SCHEMA {schema} TO {reader};
GRANT SELECT ON {schema}.latest_scores, {schema}.latest_night, {schema}.band_counts TO {reader};

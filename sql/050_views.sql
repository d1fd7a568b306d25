-- Analyst views over the nightly scores, and the indexes that keep them fast with a year of
-- nightly partitions. Applied by `riskflow db init` after 001_schema.sql, as the writer role.
-- Placeholders in braces are quoted identifiers; literal braces are doubled. Idempotent.

-- One account's history across every partition is one probe per partition of the primary key
-- (account_id, score_date) in 001_schema.sql, the only index of a day partition: the latest scored
-- night (in latest_night, latest_movers and score_movers) is read from scored_nights. Databases
-- created before that kept a (score_date) index that every night paid for; it goes here.
-- write_scores pre-builds every index of risk_scores on each new day partition, so ATTACH only
-- links them.
DROP INDEX IF EXISTS {schema}.risk_scores_date_idx;

-- Every account's most recent score (accounts that stopped transacting keep their last one).
CREATE OR REPLACE VIEW {schema}.latest_scores AS
SELECT DISTINCT ON (s.account_id)
       s.account_id, s.score_date, s.risk_score, s.risk_band, s.reason_codes, s.model_version,
       s.scored_at
  FROM {schema}.risk_scores s
 ORDER BY s.account_id, s.score_date DESC;

-- The last night's scores only (one partition is read).
CREATE OR REPLACE VIEW {schema}.latest_night AS
SELECT s.account_id, s.score_date, s.risk_score, s.risk_band, s.reason_codes, s.model_version,
       s.scored_at
  FROM {schema}.risk_scores s
 WHERE s.score_date = (SELECT max(n.score_date) FROM {schema}.scored_nights n
                         WHERE n.score_table = 'risk_scores');

-- Accounts per band per night, with the band's share and mean score.
CREATE OR REPLACE VIEW {schema}.band_counts AS
SELECT s.score_date, s.risk_band, count(*) AS accounts,
       round(count(*)::numeric / sum(count(*)) OVER (PARTITION BY s.score_date), 6) AS share,
       avg(s.risk_score) AS mean_score
  FROM {schema}.risk_scores s
 GROUP BY s.score_date, s.risk_band;

-- The two functions below run with their owner's rights (SECURITY DEFINER, with a pinned
-- search_path), like the views, so analysts who may read the views may call them too; who may
-- call them is granted in 090_grants.sql.

-- The biggest score changes on `on_date` against the previous scored night (absolute change).
CREATE OR REPLACE FUNCTION {schema}.score_movers(on_date date, top_n integer DEFAULT 50)
RETURNS TABLE (account_id text, score_date date, risk_score double precision,
               previous_date date, previous_score double precision, change double precision,
               risk_band text, previous_band text, reason_codes text[])
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $movers$
    SELECT s.account_id, s.score_date, s.risk_score, p.score_date, p.risk_score,
           s.risk_score - p.risk_score, s.risk_band, p.risk_band, s.reason_codes
      FROM {schema}.risk_scores s
      JOIN {schema}.risk_scores p
        ON p.account_id = s.account_id
       AND p.score_date = (SELECT max(n.score_date) FROM {schema}.scored_nights n
                            WHERE n.score_table = 'risk_scores' AND n.score_date < on_date)
     WHERE s.score_date = on_date
     ORDER BY abs(s.risk_score - p.risk_score) DESC, s.account_id
     LIMIT top_n
$movers$;

-- Movers of the last night.
CREATE OR REPLACE VIEW {schema}.latest_movers AS
SELECT m.*
  FROM {schema}.score_movers((SELECT max(n.score_date) FROM {schema}.scored_nights n
                               WHERE n.score_table = 'risk_scores'), 50) m;

-- One account's score history, oldest first, with the change from its previous score.
CREATE OR REPLACE FUNCTION {schema}.account_history(for_account text)
RETURNS TABLE (score_date date, risk_score double precision, risk_band text,
               reason_codes text[], model_version text, change double precision)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $history$
    SELECT s.score_date, s.risk_score, s.risk_band, s.reason_codes, s.model_version,
           s.risk_score - lag(s.risk_score) OVER (ORDER BY s.score_date)
      FROM {schema}.risk_scores s
     WHERE s.account_id = for_account
     ORDER BY s.score_date
$history$;

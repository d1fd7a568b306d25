-- Tables riskflow owns. Applied by `riskflow db init` in one transaction, as the writer role,
-- inside riskflow's schema. Placeholders in braces are filled with quoted identifiers
-- (psycopg.sql), never pasted text. Every statement is idempotent.

-- One index per day partition: the primary key leads with account_id, so it serves one account's
-- history across partitions (one probe each) and a night's rows (partition pruning) alike.
-- account_id compares bytes (COLLATE "C"): index builds and joins skip the locale's strcoll, and
-- write_scores sends rows presorted in that order.
CREATE TABLE IF NOT EXISTS {schema}.risk_scores (
    score_date    date             NOT NULL,
    account_id    text COLLATE "C" NOT NULL,
    risk_score    double precision NOT NULL CHECK (risk_score >= 0 AND risk_score <= 1),
    risk_band     text             NOT NULL,
    model_version text             NOT NULL,
    reason_codes  text[]           NOT NULL,
    scored_at     timestamptz      NOT NULL,
    run_id        uuid             NOT NULL,
    PRIMARY KEY (account_id, score_date)
) PARTITION BY RANGE (score_date);

-- The nights each score table serves, per model version, written in the swap's transaction (and
-- deleted by the retention drop's), so "the latest night" and "nights scored by model M" are
-- reads of this small table rather than of the partitions. A risk_scores night has one version; a
-- shadow night has one row per challenger scored that night.
CREATE TABLE IF NOT EXISTS {schema}.scored_nights (
    score_table   text        NOT NULL CHECK (score_table IN ('risk_scores', 'risk_scores_shadow')),
    score_date    date        NOT NULL,
    model_version text        NOT NULL,
    run_id        uuid        NOT NULL,
    row_count     bigint      NOT NULL,
    written_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (score_table, score_date, model_version)
);

-- A challenger's nightly scores, same shape, so promotion can be judged on live traffic.
CREATE TABLE IF NOT EXISTS {schema}.risk_scores_shadow (
    LIKE {schema}.risk_scores INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    PRIMARY KEY (account_id, score_date, model_version)
) PARTITION BY RANGE (score_date);

-- Databases written before scored_nights existed: list their nights once, from the rows (each
-- branch reads its table only while scored_nights has nothing of it).
INSERT INTO {schema}.scored_nights (score_table, score_date, model_version, run_id, row_count)
SELECT s.score_table, s.score_date, s.model_version, min(s.run_id::text)::uuid, count(*)
  FROM (SELECT 'risk_scores' AS score_table, c.score_date, c.model_version, c.run_id
          FROM {schema}.risk_scores c
         WHERE NOT EXISTS (SELECT 1 FROM {schema}.scored_nights n WHERE n.score_table = 'risk_scores')
        UNION ALL
        SELECT 'risk_scores_shadow', h.score_date, h.model_version, h.run_id
          FROM {schema}.risk_scores_shadow h
         WHERE NOT EXISTS (SELECT 1 FROM {schema}.scored_nights n WHERE n.score_table = 'risk_scores_shadow')
       ) s
 GROUP BY s.score_table, s.score_date, s.model_version
    ON CONFLICT DO NOTHING;

-- Scores that a rerun replaced: what was served on any date stays answerable.
CREATE TABLE IF NOT EXISTS {schema}.risk_scores_audit (
    LIKE {schema}.risk_scores,
    replaced_at     timestamptz      NOT NULL DEFAULT now(),
    replaced_by_run uuid             NOT NULL
);
CREATE INDEX IF NOT EXISTS risk_scores_audit_date_idx
    ON {schema}.risk_scores_audit (score_date, account_id);

CREATE TABLE IF NOT EXISTS {schema}.model_versions (
    version        text        PRIMARY KEY,
    status         text        NOT NULL CHECK (status IN ('challenger', 'champion', 'retired')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    promoted_at    timestamptz,
    retired_at     timestamptz,
    train_start    date,
    train_end      date,
    spec_hash      text        NOT NULL,
    metrics        jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
    artifact_path  text        NOT NULL,
    sha256         text        NOT NULL CHECK (length(sha256) = 64)
);
-- At most one champion at any time.
CREATE UNIQUE INDEX IF NOT EXISTS model_versions_one_champion
    ON {schema}.model_versions (status) WHERE status = 'champion';

CREATE TABLE IF NOT EXISTS {schema}.extract_watermarks (
    lake        text        NOT NULL,
    source      text        NOT NULL,
    watermark   timestamptz NOT NULL,
    last_date   date        NOT NULL,
    first_date  date,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (lake, source)
);
-- The lake's first date, so losing its oldest partitions is noticed too (added after the table).
ALTER TABLE {schema}.extract_watermarks ADD COLUMN IF NOT EXISTS first_date date;

CREATE TABLE IF NOT EXISTS {schema}.quarantine (
    id             bigserial   PRIMARY KEY,
    run_id         uuid        NOT NULL,
    source         text        NOT NULL,
    rule           text        NOT NULL,
    reason         text        NOT NULL,
    txn_id         text,
    account_id     text,
    txn_date       date,
    row_data       jsonb       NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS quarantine_rule_idx ON {schema}.quarantine (rule, quarantined_at);
CREATE UNIQUE INDEX IF NOT EXISTS quarantine_once_idx
    ON {schema}.quarantine (source, rule, txn_id, txn_date) WHERE txn_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS {schema}.pipeline_runs (
    run_id        uuid        PRIMARY KEY,
    flow          text        NOT NULL,
    score_date    date,
    status        text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    watermark     timestamptz,
    model_version text,
    model_sha256  text,
    row_count     bigint,
    checksum      text,
    details       jsonb       NOT NULL DEFAULT '{{}}'::jsonb
);
CREATE INDEX IF NOT EXISTS pipeline_runs_date_idx ON {schema}.pipeline_runs (score_date, started_at);

-- The synthetic bank's source tables (`riskflow seed`). A real bank already has its own
-- and maps them in the feature spec instead. Idempotent; indexes are built after loading.

CREATE SCHEMA IF NOT EXISTS bank;

CREATE TABLE IF NOT EXISTS bank.accounts (
    account_id    bigint  PRIMARY KEY,
    open_date     date    NOT NULL,
    credit_limit  numeric(12, 2) NOT NULL,
    tenure_months integer NOT NULL,
    segment       text    NOT NULL,
    home_country  text    NOT NULL
);

-- No primary key on purpose: real feeds deliver duplicates, and quality checks catch them.
CREATE TABLE IF NOT EXISTS bank.transactions (
    txn_id      bigint      NOT NULL,
    account_id  bigint,
    ts          timestamptz,
    amount      numeric(14, 2),
    mcc         text,
    channel     text,
    country     text,
    merchant_id text
);

CREATE TABLE IF NOT EXISTS bank.risk_events (
    event_id    bigserial   PRIMARY KEY,
    account_id  bigint      NOT NULL,
    event_ts    timestamptz NOT NULL,
    reported_at timestamptz NOT NULL,
    event_type  text        NOT NULL
);

-- Ground truth of the planted patterns. Never read by training or scoring; evaluation only.
CREATE TABLE IF NOT EXISTS bank.ground_truth (
    account_id   bigint      NOT NULL,
    pattern      text        NOT NULL,
    is_lookalike boolean     NOT NULL,
    start_ts     timestamptz NOT NULL,
    event_ts     timestamptz,
    PRIMARY KEY (account_id, pattern)
);

-- Least-privilege roles, all NOLOGIN: grant them to login users.
-- reader: SELECT on the source tables named by the feature spec.
-- writer: owns riskflow's schema and is a member of reader; the pipeline runs as it
--   (`GRANT <writer> TO etl_user`).
-- analyst: reads the analyst views and calls the analyst functions (sql/090_grants.sql), and
--   nothing else: neither the source tables nor riskflow's tables (`GRANT <analyst> TO analyst`).

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {reader_name}) THEN
        EXECUTE format('CREATE ROLE %I NOLOGIN', {reader_name});
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {writer_name}) THEN
        EXECUTE format('CREATE ROLE %I NOLOGIN', {writer_name});
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {analyst_name}) THEN
        EXECUTE format('CREATE ROLE %I NOLOGIN', {analyst_name});
    END IF;
END
$roles$;

GRANT {reader} TO {writer};
CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {writer};
ALTER SCHEMA {schema} OWNER TO {writer};

-- Least-privilege roles. {reader}: SELECT on the source tables named by the feature spec.
-- {writer}: owns schema {schema} and is a member of {reader}. Both NOLOGIN: grant them to
-- the login users the pipeline runs as (`GRANT {writer} TO etl_user`).

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {reader_name}) THEN
        EXECUTE format('CREATE ROLE %I NOLOGIN', {reader_name});
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {writer_name}) THEN
        EXECUTE format('CREATE ROLE %I NOLOGIN', {writer_name});
    END IF;
END
$roles$;

GRANT {reader} TO {writer};
CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {writer};
ALTER SCHEMA {schema} OWNER TO {writer};

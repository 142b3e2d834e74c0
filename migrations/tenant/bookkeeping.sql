-- Which tenant migrations have run in this schema: created by the runner,
-- with the schema's search path, before it reads it.
CREATE TABLE IF NOT EXISTS provision_schema_migration (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

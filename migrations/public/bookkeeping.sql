-- Which public migrations have run: created by the runner before it reads it.
CREATE TABLE IF NOT EXISTS provision_public_migration (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

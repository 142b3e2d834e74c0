-- The tenant migration sets: the platform's Django migrations as
-- `provision import-migrations` read them, each set a version. A migration
-- is stored once, by its Django key; a set lists its plan by position.

CREATE TABLE provision_django_migration (
    app            text    NOT NULL,
    name           text    NOT NULL,
    -- Its SQL for a tenant schema, as `sqlmigrate` prints it there.
    sql            text    NOT NULL,
    checksum       text    NOT NULL,
    -- Descriptions of the operations that run Python (RunPython).
    python         jsonb   NOT NULL DEFAULT '[]',
    -- Whether Django's post-migrate content types and permissions may
    -- change after it.
    changes_models boolean NOT NULL,
    -- Whether it runs in the public schema (a shared app's); otherwise
    -- Django only records it there.
    in_public      boolean NOT NULL,
    -- The migrations it depends on, [[app, name], ...].
    parents        jsonb   NOT NULL DEFAULT '[]',
    -- The first set that had it.
    first_set      integer NOT NULL,
    PRIMARY KEY (app, name)
);

CREATE TABLE provision_migration_set (
    version          integer     PRIMARY KEY,
    checksum         text        NOT NULL,
    -- `CREATE TABLE django_migrations` as Django's recorder makes it.
    ledger_table_sql text        NOT NULL,
    -- A new tenant schema's content types and permissions, in Django's order.
    content_types    jsonb       NOT NULL,
    permissions      jsonb       NOT NULL,
    django           text,
    django_tenants   text,
    -- `built-in` or the manage.py it was read from.
    source           text        NOT NULL,
    imported_by      text        NOT NULL,
    imported_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT provision_migration_set_version_valid CHECK (version > 0),
    CONSTRAINT provision_migration_set_checksum_key UNIQUE (checksum)
);

CREATE TABLE provision_migration_set_member (
    set_version integer NOT NULL
        CONSTRAINT provision_migration_set_member_set_fk REFERENCES provision_migration_set (version),
    position    integer NOT NULL,
    app         text    NOT NULL,
    name        text    NOT NULL,
    PRIMARY KEY (set_version, position),
    CONSTRAINT provision_migration_set_member_key UNIQUE (set_version, app, name),
    CONSTRAINT provision_migration_set_member_migration_fk
        FOREIGN KEY (app, name) REFERENCES provision_django_migration (app, name),
    CONSTRAINT provision_migration_set_member_position_valid CHECK (position > 0)
);

-- A guard for a script written for set `version`: a newer set stops it
-- (SQLSTATE PV002), and the worker loads the newer set and tries again.
CREATE FUNCTION provision_assert_set(version integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    newest integer;
BEGIN
    SELECT max(s.version) INTO newest FROM provision_migration_set s;
    IF newest IS DISTINCT FROM version THEN
        RAISE EXCEPTION USING ERRCODE = 'PV002',
            MESSAGE = format('tenant migration set %s is in force, not %s', newest, version);
    END IF;
    RETURN true;
END
$$;

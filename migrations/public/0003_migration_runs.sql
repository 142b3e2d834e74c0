-- Migration runs: which tenant schemas each run had to bring to its target
-- set, and how each one ended. Work is handed to workers from here a bounded
-- batch at a time, so Redis never holds more than a few thousand jobs
-- whatever the number of schemas.

CREATE TABLE provision_migration_run (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trigger         text        NOT NULL,
    -- `all`: every tenant of tenants_client; `schema`: one.
    scope           text        NOT NULL,
    started_by      text        NOT NULL,
    -- The cron tick this run is for: at most one run per tick, however many
    -- workers fire it.
    tick            timestamptz,
    -- The tenant migration set it brings schemas to.
    target_version  integer     NOT NULL,
    state           text        NOT NULL DEFAULT 'running',
    -- Schemas behind, and already current, when the run started.
    total           integer     NOT NULL,
    already_current integer     NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT provision_migration_run_trigger_valid CHECK (trigger IN ('cron', 'operator')),
    CONSTRAINT provision_migration_run_scope_valid CHECK (scope IN ('all', 'schema')),
    CONSTRAINT provision_migration_run_cron_has_tick CHECK ((trigger = 'cron') = (tick IS NOT NULL)),
    CONSTRAINT provision_migration_run_state_valid CHECK (state IN ('running', 'finished')),
    CONSTRAINT provision_migration_run_finished_has_time CHECK ((state = 'finished') = (finished_at IS NOT NULL)),
    CONSTRAINT provision_migration_run_tick_key UNIQUE (tick)
);
-- One run of all schemas at a time: a second start finds the running one.
CREATE UNIQUE INDEX provision_migration_run_one_running
    ON provision_migration_run ((true)) WHERE state = 'running' AND scope = 'all';

CREATE TABLE provision_migration_run_schema (
    run_id      bigint      NOT NULL
        CONSTRAINT provision_migration_run_schema_run_fk REFERENCES provision_migration_run (id) ON DELETE CASCADE,
    schema_name text        NOT NULL,
    state       text        NOT NULL DEFAULT 'pending',
    attempt     integer     NOT NULL DEFAULT 0,
    -- Positions in the target set of the migrations the schema lacked when
    -- it was last looked at, and whether it had a django_migrations table;
    -- the job checks its ledger still says so.
    pending     integer[]   NOT NULL,
    has_ledger  boolean     NOT NULL,
    -- Positions this run applied.
    applied     integer[]   NOT NULL DEFAULT '{}',
    error       text,
    -- A retry after a transient error waits until then.
    not_before  timestamptz NOT NULL DEFAULT now(),
    queued_at   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, schema_name),
    CONSTRAINT provision_migration_run_schema_state_valid CHECK (
        state IN ('pending', 'queued', 'migrated', 'current', 'failed')),
    CONSTRAINT provision_migration_run_schema_failed_has_error CHECK ((state = 'failed') <= (error IS NOT NULL)),
    CONSTRAINT provision_migration_run_schema_queued_has_time CHECK ((state = 'queued') <= (queued_at IS NOT NULL))
);
-- The open rows of a run, by the key the workers look them up by.
CREATE INDEX provision_migration_run_schema_open_idx
    ON provision_migration_run_schema (run_id, schema_name) WHERE state IN ('pending', 'queued');
CREATE INDEX provision_migration_run_schema_by_schema_idx
    ON provision_migration_run_schema (schema_name, run_id);

-- Migrate-all runs: which schemas each run had to bring to its target
-- version, and how each one ended. Work is handed to workers from here a
-- bounded batch at a time, so Redis never holds more than a few thousand
-- jobs whatever the number of schemas.

CREATE TABLE provision_migration_run (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trigger         text        NOT NULL,
    started_by      text        NOT NULL,
    -- The cron tick this run is for: at most one run per tick, however many
    -- workers fire it.
    tick            timestamptz,
    target_version  integer     NOT NULL,
    state           text        NOT NULL DEFAULT 'running',
    -- Ready tenants behind, and already current, when the run started.
    total           integer     NOT NULL,
    already_current integer     NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT provision_migration_run_trigger_valid CHECK (trigger IN ('cron', 'operator')),
    CONSTRAINT provision_migration_run_cron_has_tick CHECK ((trigger = 'cron') = (tick IS NOT NULL)),
    CONSTRAINT provision_migration_run_state_valid CHECK (state IN ('running', 'finished')),
    CONSTRAINT provision_migration_run_finished_has_time CHECK ((state = 'finished') = (finished_at IS NOT NULL)),
    CONSTRAINT provision_migration_run_tick_key UNIQUE (tick)
);
-- One run at a time: a second start finds the running one.
CREATE UNIQUE INDEX provision_migration_run_one_running
    ON provision_migration_run ((true)) WHERE state = 'running';

CREATE TABLE provision_migration_run_schema (
    run_id      bigint      NOT NULL
        CONSTRAINT provision_migration_run_schema_run_fk REFERENCES provision_migration_run (id) ON DELETE CASCADE,
    schema_name text        NOT NULL,
    state       text        NOT NULL DEFAULT 'pending',
    attempt     integer     NOT NULL DEFAULT 0,
    -- Versions this run applied to the schema.
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
CREATE INDEX provision_migration_run_schema_open_idx
    ON provision_migration_run_schema (run_id, not_before) WHERE state IN ('pending', 'queued');
CREATE INDEX provision_tenant_behind_idx ON provision_tenant (schema_version) WHERE state = 'ready';

-- This project's own tables, beside the platform's. Nothing here refers to a
-- table of the platform (no foreign key, view or trigger), so the platform's
-- own commands (migrate_schemas, delete_tenant, the Django admin) never trip
-- over them, and its tables keep exactly the shape Django gives them.

-- One row per tenant this project was asked to provision: the request as it
-- was made and where its provisioning stands. Written before the job is
-- pushed, so PostgreSQL, not Redis, knows every tenant that was asked for.
-- Kept when the platform deletes the tenant: its history stays readable.
CREATE TABLE provision_tenant (
    schema_name         text        PRIMARY KEY,
    tenant_name         text        NOT NULL,
    domain              text        NOT NULL,
    admin_email         text        NOT NULL,
    -- Django-format hash, kept only until the admin user exists.
    admin_password_hash text,
    trial_days          integer     NOT NULL,
    seed_demo_data      boolean     NOT NULL,
    -- Hash of the request's details (all but the password): a repeated
    -- request with the same fingerprint is the same signup.
    request_fingerprint text        NOT NULL,
    state               text        NOT NULL DEFAULT 'requested',
    -- The step that failed, while state = 'failed'.
    failed_step         text,
    -- The state to resume from on retry, while state = 'failed'.
    failed_from_state   text,
    last_error          text,
    -- Executions of the current step so far; a crash counts, as the count is
    -- raised when an execution starts.
    attempt             integer     NOT NULL DEFAULT 0,
    demo_data_state     text        NOT NULL,
    demo_data_attempt   integer     NOT NULL DEFAULT 0,
    job_id              text,
    requested_by        text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    ready_at            timestamptz,
    CONSTRAINT provision_tenant_schema_name_valid CHECK (
        schema_name ~ '^[a-z][a-z0-9_]{0,62}$'
        AND schema_name NOT LIKE 'pg\_%'
        AND schema_name NOT IN ('public', 'information_schema')),
    CONSTRAINT provision_tenant_state_valid CHECK (
        state IN ('requested', 'registered', 'schema_created', 'migrated',
                  'admin_created', 'ready', 'failed')),
    CONSTRAINT provision_tenant_failed_has_step CHECK (
        (state = 'failed') = (failed_step IS NOT NULL AND failed_from_state IS NOT NULL)),
    CONSTRAINT provision_tenant_failed_from_valid CHECK (
        failed_from_state IS NULL OR failed_from_state IN
            ('requested', 'registered', 'schema_created', 'migrated', 'admin_created')),
    CONSTRAINT provision_tenant_ready_has_time CHECK ((state = 'ready') = (ready_at IS NOT NULL)),
    CONSTRAINT provision_tenant_password_dropped_after_admin CHECK (
        admin_password_hash IS NULL OR state NOT IN ('admin_created', 'ready')),
    CONSTRAINT provision_tenant_demo_data_state_valid CHECK (
        demo_data_state IN ('skipped', 'pending', 'seeded', 'failed')),
    CONSTRAINT provision_tenant_attempt_valid CHECK (attempt >= 0),
    CONSTRAINT provision_tenant_demo_data_attempt_valid CHECK (demo_data_attempt >= 0),
    CONSTRAINT provision_tenant_trial_days_valid CHECK (trial_days BETWEEN 0 AND 3650)
);
CREATE INDEX provision_tenant_state_idx ON provision_tenant (state, updated_at);
CREATE INDEX provision_tenant_created_idx ON provision_tenant (created_at DESC);

-- Every transition and every notable event of a tenant, oldest first by id:
-- of a tenant provisioned here, and of one the platform made (an operator's
-- fix, a migration), whose rows this project never owned.
CREATE TABLE provision_event (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schema_name text        NOT NULL,
    -- The provisioning state before and after; `external` for a tenant
    -- this project did not provision.
    from_state  text,
    to_state    text        NOT NULL,
    step        text        NOT NULL,
    attempt     integer     NOT NULL,
    error       text,
    -- What an operator's action changed (a domain fixed, a retry asked for).
    detail      text,
    actor       text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT provision_event_to_state_valid CHECK (
        to_state IN ('requested', 'registered', 'schema_created', 'migrated',
                     'admin_created', 'ready', 'failed', 'external'))
);
CREATE INDEX provision_event_schema_name_idx ON provision_event (schema_name, id);

-- Jobs whose payload could not be read (pushed by hand, or by another
-- version): set aside here with the error, for the operator, instead of
-- being retried or stopping a worker.
CREATE TABLE provision_rejected_job (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue       text        NOT NULL,
    job_id      text        NOT NULL,
    payload     text        NOT NULL,
    error       text        NOT NULL,
    actor       text        NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT provision_rejected_job_queue_job_id_key UNIQUE (queue, job_id)
);

-- A guard for statements sent together in one message: a check that fails
-- must stop the transaction there, as a `WHERE state = …` that matched no
-- row cannot by itself. SQLSTATE PV001 tells the worker it was this guard.
CREATE FUNCTION provision_assert(condition boolean, message text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF condition IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = 'PV001', MESSAGE = message;
    END IF;
    RETURN true;
END
$$;

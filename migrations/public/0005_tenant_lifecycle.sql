-- A tenant's life after signup: suspended and resumed, its deletion
-- scheduled, carried out behind a verified backup, and undone from that
-- backup. Keyed by schema name like the rest of this project's tables, with
-- no foreign key to the platform's, so that `delete_tenant` and the Django
-- admin keep working; it covers tenants made by hand as well as those made
-- here.

-- Deletions are numbered: the number names the staging schema that carries
-- the tenant's public rows into its backup.
CREATE SEQUENCE provision_deletion_id_seq;

-- One row per tenant an operator (or the nightly pass) has suspended,
-- resumed, scheduled for deletion, deleted or restored: where it stands now.
-- A tenant without a row has never been touched: its lifecycle follows
-- `tenants_client.is_active`.
CREATE TABLE provision_lifecycle (
    schema_name     text        PRIMARY KEY,
    state           text        NOT NULL,
    -- The tenant's name when the row was last written: what `status`
    -- shows once its `tenants_client` row is gone.
    tenant_name     text        NOT NULL,
    -- Why it was suspended or is being deleted, and who said so.
    reason          text,
    changed_by      text        NOT NULL,
    changed_at      timestamptz NOT NULL DEFAULT now(),
    -- The deletion: its number, when it is due, whether it keeps a backup.
    deletion_id     bigint,
    delete_after    timestamptz,
    with_backup     boolean,
    -- The backup file, once written; its SHA-256 once verified.
    backup_path     text,
    backup_bytes    bigint,
    backup_sha256   text,
    deleted_at      timestamptz,
    -- The backup a restore is working from.
    restore_backup_id bigint,
    -- Failures, as in `provision_tenant`.
    failed_step     text,
    failed_from_state text,
    last_error      text,
    attempt         integer     NOT NULL DEFAULT 0,
    job_id          text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT provision_lifecycle_schema_name_valid CHECK (
        schema_name ~ '^[a-z_][a-z0-9_-]{0,62}$' AND schema_name <> 'public'),
    CONSTRAINT provision_lifecycle_state_valid CHECK (
        state IN ('active', 'suspended', 'deletion_scheduled', 'backed_up', 'backup_verified',
                  'schema_dropped', 'deleted', 'restore_requested', 'schema_restored', 'failed')),
    CONSTRAINT provision_lifecycle_deletion_planned CHECK (
        state NOT IN ('deletion_scheduled', 'backed_up', 'backup_verified', 'schema_dropped', 'deleted')
        OR (deletion_id IS NOT NULL AND delete_after IS NOT NULL AND with_backup IS NOT NULL)),
    CONSTRAINT provision_lifecycle_backed_up_has_file CHECK (
        state NOT IN ('backed_up', 'backup_verified') OR backup_path IS NOT NULL),
    -- The drop never happens without a verified backup, unless the
    -- deletion was confirmed without one.
    CONSTRAINT provision_lifecycle_dropped_after_verified_backup CHECK (
        state NOT IN ('backup_verified', 'schema_dropped', 'deleted')
        OR NOT with_backup OR backup_sha256 IS NOT NULL),
    CONSTRAINT provision_lifecycle_sha256_valid CHECK (
        backup_sha256 IS NULL OR backup_sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT provision_lifecycle_deleted_has_time CHECK (state <> 'deleted' OR deleted_at IS NOT NULL),
    CONSTRAINT provision_lifecycle_restore_has_backup CHECK (
        state NOT IN ('restore_requested', 'schema_restored') OR restore_backup_id IS NOT NULL),
    CONSTRAINT provision_lifecycle_failed_has_step CHECK (
        (state = 'failed') = (failed_step IS NOT NULL AND failed_from_state IS NOT NULL)),
    CONSTRAINT provision_lifecycle_failed_from_valid CHECK (
        failed_from_state IS NULL OR failed_from_state IN
            ('deletion_scheduled', 'backed_up', 'backup_verified', 'schema_dropped',
             'restore_requested', 'schema_restored')),
    CONSTRAINT provision_lifecycle_attempt_valid CHECK (attempt >= 0)
);
CREATE INDEX provision_lifecycle_due_idx ON provision_lifecycle (delete_after)
    WHERE state = 'deletion_scheduled';

-- Every verified backup: what `restore-tenant` checks a file against, and
-- the tenant's public rows it holds (its domains, to refuse a restore onto
-- a taken one before anything is written).
CREATE TABLE provision_backup (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schema_name    text        NOT NULL,
    deletion_id    bigint      NOT NULL,
    -- The schema inside the file that holds the tenant's public rows.
    staging_schema text        NOT NULL,
    path           text        NOT NULL,
    bytes          bigint      NOT NULL,
    sha256         text        NOT NULL,
    domains        text[]      NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    restored_at    timestamptz,
    CONSTRAINT provision_backup_sha256_valid CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT provision_backup_bytes_valid CHECK (bytes > 0),
    CONSTRAINT provision_backup_deletion_id_key UNIQUE (deletion_id)
);
CREATE INDEX provision_backup_sha256_idx ON provision_backup (sha256);
CREATE INDEX provision_backup_schema_name_idx ON provision_backup (schema_name);

-- Events of a tenant's lifecycle go in the same history as its
-- provisioning, with the lifecycle state they led to.
ALTER TABLE provision_event ADD COLUMN lifecycle_state text;
ALTER TABLE provision_event ADD CONSTRAINT provision_event_lifecycle_state_valid CHECK (
    lifecycle_state IS NULL OR lifecycle_state IN
        ('active', 'suspended', 'deletion_scheduled', 'backed_up', 'backup_verified',
         'schema_dropped', 'deleted', 'restore_requested', 'schema_restored', 'failed'));

-- The one rule for where a tenant stands, from its provisioning state
-- (NULL: made outside this project), its lifecycle row's state and failed
-- step (NULL: never touched), and its `tenants_client` row (whether there
-- is one, and is_active). Used by the status view and by `provision list`
-- and the dashboard, so they always agree. Inlined by the planner.
CREATE FUNCTION provision_lifecycle_of(
    provisioning text, lifecycle text, failed_step text, in_client boolean, is_active boolean)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN provisioning = 'failed' THEN 'failed'
        WHEN provisioning IS NOT NULL AND provisioning <> 'ready' THEN 'provisioning'
        WHEN lifecycle = 'deletion_scheduled' THEN 'deletion_scheduled'
        WHEN lifecycle IN ('backed_up', 'backup_verified', 'schema_dropped') THEN 'deleting'
        WHEN lifecycle = 'deleted' THEN 'deleted'
        WHEN lifecycle IN ('restore_requested', 'schema_restored') THEN 'restoring'
        WHEN lifecycle = 'failed' AND failed_step IN ('restore_schema', 'restore_rows') THEN 'restore_failed'
        WHEN lifecycle = 'failed' THEN 'deletion_failed'
        WHEN NOT coalesce(in_client, false) THEN 'gone'
        WHEN is_active THEN 'active'
        ELSE 'suspended'
    END
$$;

-- `tenants_client.is_active` of a schema, NULL without a row. A function
-- and not a join, so the view below does not depend on the platform's
-- table: Django may alter it freely.
CREATE FUNCTION provision_client_is_active(schema text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    active boolean;
BEGIN
    SELECT c.is_active INTO active FROM public.tenants_client c WHERE c.schema_name = schema;
    RETURN active;
END
$$;

-- What the platform reads of its tenants' provisioning and lifecycle:
-- every tenant made here, and every tenant made elsewhere that an operator
-- has suspended, deleted or restored. Two arms, so that a look-up by
-- schema name is an index look-up in each, and `is_active` is read for
-- the rows asked for only.
CREATE OR REPLACE VIEW provision_tenant_status AS
SELECT t.schema_name,
       t.state,
       t.failed_step,
       coalesce(l.last_error, t.last_error) AS last_error,
       t.created_at AS requested_at,
       t.ready_at,
       provision_lifecycle_of(t.state, l.state, l.failed_step,
                              provision_client_is_active(t.schema_name) IS NOT NULL,
                              provision_client_is_active(t.schema_name)) AS lifecycle
FROM provision_tenant t
LEFT JOIN provision_lifecycle l ON l.schema_name = t.schema_name
UNION ALL
SELECT l.schema_name,
       'external',
       NULL,
       l.last_error,
       NULL,
       NULL,
       provision_lifecycle_of(NULL, l.state, l.failed_step,
                              provision_client_is_active(l.schema_name) IS NOT NULL,
                              provision_client_is_active(l.schema_name))
FROM provision_lifecycle l
WHERE NOT EXISTS (SELECT 1 FROM provision_tenant t WHERE t.schema_name = l.schema_name);

-- Demo data counts its attempts like a tenant's steps do, so a crash counts
-- and the one retry policy applies to it too.
ALTER TABLE provision_tenant ADD COLUMN demo_data_attempt integer NOT NULL DEFAULT 0
    CONSTRAINT provision_tenant_demo_data_attempt_valid CHECK (demo_data_attempt >= 0);

-- A run may cover one schema (`provision migrate --schema-name`) as well as
-- every schema behind (`--all`); only runs of all schemas exclude each
-- other.
ALTER TABLE provision_migration_run ADD COLUMN scope text NOT NULL DEFAULT 'all'
    CONSTRAINT provision_migration_run_scope_valid CHECK (scope IN ('all', 'schema'));
DROP INDEX provision_migration_run_one_running;
CREATE UNIQUE INDEX provision_migration_run_one_running
    ON provision_migration_run ((true)) WHERE state = 'running' AND scope = 'all';

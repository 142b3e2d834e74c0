-- The open rows of a run, indexed by the key the workers look them up by.
-- Ordered by not_before, the index matched a lookup of one schema only on
-- run_id, and the planner, finding it smaller than the primary key, chose it
-- for the per-schema outcome updates: each scanned every open row of the
-- run, a cost growing with the run (0.36 ms per schema at 600 open rows).
-- By (run_id, schema_name) it serves those lookups exactly, and the
-- dispatcher's scan in that order as before.
DROP INDEX provision_migration_run_schema_open_idx;
CREATE INDEX provision_migration_run_schema_open_idx
    ON provision_migration_run_schema (run_id, schema_name) WHERE state IN ('pending', 'queued');

-- Which tenant migration set each schema was last brought to in full, by a
-- transaction of this project (a tenant made, a schema migrated). A hint,
-- never a record: a schema's own `django_migrations` stays the only record
-- of what it has applied, and the platform's Django changes it without
-- touching this table.
--
-- A migration run's start takes a schema whose hint names an older set as
-- lacking just what that set lacks of the target, without reading its
-- ledger; the transaction that migrates it checks, under the schema's lock,
-- that its ledger holds exactly that, and reads it again if not. A schema
-- without a hint, or whose hint names the target itself, has its ledger
-- read. So a stale hint costs a second look, never a wrong migration.
CREATE TABLE provision_ledger_hint (
    schema_name text        PRIMARY KEY,
    set_version integer     NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT provision_ledger_hint_version_valid CHECK (set_version > 0)
);

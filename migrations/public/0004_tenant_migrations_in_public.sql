-- Which tenant migrations each schema has applied, for every schema in this
-- one table rather than a table inside each schema: the check before a
-- migration and its record then touch a table every session already has
-- open, instead of two relations per schema that are cold in the catalog
-- caches (about 0.7 ms per schema at a thousand schemas; bench/README.md).
CREATE TABLE provision_tenant_migration (
    schema_name text        NOT NULL,
    version     integer     NOT NULL,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, version),
    CONSTRAINT provision_tenant_migration_version_valid CHECK (version > 0)
);

-- Records kept inside the schemas by earlier versions move here.
DO $$
DECLARE
    s text;
BEGIN
    FOR s IN
        SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relname = 'provision_schema_migration' AND c.relkind = 'r' AND n.nspname <> 'public'
    LOOP
        EXECUTE format(
            'INSERT INTO public.provision_tenant_migration (schema_name, version, name, checksum, applied_at)
             SELECT %L, version, name, checksum, applied_at FROM %I.provision_schema_migration', s, s);
        EXECUTE format('DROP TABLE %I.provision_schema_migration', s);
    END LOOP;
END
$$;

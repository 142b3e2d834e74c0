"""Reads, from inside the platform's own Django, what a new tenant schema is
made of, for `provision import-migrations`. Run by `manage.py shell -c`, so
the platform's settings choose the database.

Everything happens inside one transaction that is rolled back: two scratch
schemas are made and thrown away, nothing of the platform is changed.

- Schema A is migrated as django-tenants migrates a new tenant
  (`migrate_schemas --schema`, what `Client.save()` runs). Its ledger,
  content types and permissions are what Django leaves in a new schema.
- Schema B replays the plan one migration at a time: each migration's SQL is
  collected as `sqlmigrate` would print it for a tenant whose schema is at
  the migration before (schema editors look at the live tables), then
  executed. B's catalog must then equal A's: the SQL alone makes what Django
  makes.

Writes one JSON document to the file named by PROVISION_EXPORT_OUT. The
catalog query is passed in PROVISION_CATALOG_SQL, so that this script and
the tests compare schemas with the same query.
"""

import json
import os
import sys
import uuid

import django
from django.conf import settings
from django.core.management import call_command
from django.db import connection, router, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.recorder import MigrationRecorder

FORMAT = 1


class Refused(Exception):
    """The platform cannot be exported as it is; the message says why."""


def fail(message):
    raise Refused(message)


def rows(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [list(r) for r in cursor.fetchall()]


def catalog(schema):
    """The catalog of `schema` as rows, by the shared catalog query."""
    with connection.cursor() as cursor:
        cursor.execute(os.environ["PROVISION_CATALOG_SQL"].replace("$1", "%(schema)s"), {"schema": schema})
        return [list(r) for r in cursor.fetchall()]


def python_operations(migration):
    """Descriptions of the operations of `migration` that run Python in a
    tenant schema (the router lets them run there) and print no SQL."""
    found = []

    def walk(operations):
        for op in operations:
            inner = getattr(op, "database_operations", None)
            if inner is not None:
                walk(inner)
                continue
            if op.reduces_to_sql:
                continue
            hints = getattr(op, "hints", {}) or {}
            if router.allow_migrate(connection.alias, migration.app_label, **hints) is False:
                continue
            found.append(op.describe())

    walk(migration.operations)
    return found


# Operations after which Django's post-migrate handlers have nothing new to
# create: they change fields, indexes or constraints, not which models exist
# or what permissions they declare.
FIELD_LEVEL = {
    "AddField", "AlterField", "RemoveField", "RenameField",
    "AddIndex", "RemoveIndex", "RenameIndex",
    "AddConstraint", "RemoveConstraint", "AlterConstraint",
    "AlterUniqueTogether", "AlterIndexTogether", "AlterOrderWithRespectTo",
    "AlterModelTable", "AlterModelTableComment", "AlterModelManagers",
}


def changes_models(migration):
    """Whether Django's post-migrate content types and permissions may change
    after `migration`: it creates, deletes or renames a model, or changes its
    options (permissions), or does anything this script cannot see into."""
    def walk(operations):
        for op in operations:
            inner = getattr(op, "database_operations", None)
            if inner is not None:
                if walk(inner) or walk(getattr(op, "state_operations", [])):
                    return True
                continue
            if op.__class__.__name__ not in FIELD_LEVEL:
                return True
        return False

    return walk(migration.operations)


def runs_in_public(migration):
    """Whether the router lets `migration` run in the public schema (a
    shared app's), or only records it there (a tenant app's)."""
    connection.set_schema_to_public()
    allowed = router.allow_migrate(connection.alias, migration.app_label) is not False
    return allowed


def tenant_app_labels():
    """Apps whose migrations create the tenant model's tables."""
    labels = set()
    for setting in ("TENANT_MODEL", "TENANT_DOMAIN_MODEL"):
        value = getattr(settings, setting, None)
        if value:
            labels.add(value.split(".")[0])
    return labels


def public_tables(executor, plan):
    """The SQL the tenant model's app migrations run in the public schema,
    when the public schema does not have those tables yet (an empty
    database): how `provision init` makes them on a database the platform
    has not migrated."""
    labels = tenant_app_labels()
    connection.set_schema_to_public()
    existing = set(connection.introspection.table_names())
    wanted = set()
    todo = [(m.app_label, m.name) for m, _ in plan if m.app_label in labels]
    while todo:
        key = todo.pop()
        if key in wanted:
            continue
        wanted.add(key)
        todo.extend(parent.key for parent in executor.loader.graph.node_map[key].parents)
    migrations = [m for m, _ in plan if (m.app_label, m.name) in wanted]
    tables = set()
    for m in migrations:
        for op in m.operations:
            name = getattr(op, "name", None)
            if op.__class__.__name__ == "CreateModel" and name:
                tables.add(("%s_%s" % (m.app_label, name)).lower())
    if tables & existing:
        return None
    statements = []
    for m in migrations:
        statements.append({"app": m.app_label, "name": m.name,
                           "sql": "\n".join(executor.loader.collect_sql([(m, False)]))})
    return statements


def export():
    if not hasattr(connection, "set_schema"):
        fail("the default database does not use django-tenants' backend "
             "(ENGINE django_tenants.postgresql_backend)")
    out = {"format": FORMAT, "django": django.get_version()}
    try:
        from importlib import metadata

        out["django_tenants"] = metadata.version("django-tenants")
    except Exception:
        out["django_tenants"] = None
    out["tenant_model"] = getattr(settings, "TENANT_MODEL", None)

    suffix = uuid.uuid4().hex[:12]
    made, replayed = "provision_import_a_" + suffix, "provision_import_b_" + suffix

    with transaction.atomic():
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes(), clean_start=True)
        out["public_tables"] = public_tables(executor, plan)

        # A: a new tenant schema, as django-tenants makes it.
        connection.set_schema_to_public()
        with connection.cursor() as cursor:
            cursor.execute('CREATE SCHEMA "%s"' % made)
        call_command("migrate_schemas", schema_name=made, tenant=True, interactive=False, verbosity=0)
        connection.set_schema(made, include_public=False)
        out["ledger"] = rows("SELECT app, name FROM django_migrations ORDER BY id")
        tables = [r[0] for r in rows(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1", [made])]
        out["content_types"] = []
        out["permissions"] = []
        if "django_content_type" in tables:
            out["content_types"] = rows("SELECT app_label, model FROM django_content_type ORDER BY id")
        if "auth_permission" in tables:
            out["permissions"] = rows(
                "SELECT ct.app_label, ct.model, p.codename, p.name FROM auth_permission p "
                "JOIN django_content_type ct ON ct.id = p.content_type_id ORDER BY p.id")
        if [list(k) for k in ((m.app_label, m.name) for m, _ in plan)] != out["ledger"]:
            fail("Django records a new schema's migrations in another order than its plan")
        for table in tables:
            if table in ("django_migrations", "django_content_type", "auth_permission"):
                continue
            count = rows('SELECT count(*) FROM "%s"."%s"' % (made, table))[0][0]
            if count:
                fail("a new tenant schema holds %d row(s) in %s after Django's migrations: "
                     "only django_migrations, django_content_type and auth_permission may "
                     "hold rows, since the rows of other tables are not replayed" % (count, table))
        made_catalog = catalog(made)

        # B: the plan replayed one migration at a time.
        connection.set_schema_to_public()
        with connection.cursor() as cursor:
            cursor.execute('CREATE SCHEMA "%s"' % replayed)
        connection.set_schema(replayed, include_public=False)
        recorder = MigrationRecorder(connection)
        with connection.schema_editor(collect_sql=True) as editor:
            editor.create_model(recorder.Migration)
        out["ledger_table_sql"] = "\n".join(editor.collected_sql)
        connection.set_schema(replayed)
        with connection.cursor() as cursor:
            cursor.execute(out["ledger_table_sql"])
        out["plan"] = []
        in_public = {(m.app_label, m.name): runs_in_public(m) for m, _ in plan}
        connection.set_schema(replayed)
        for migration, _ in plan:
            executor.loader.build_graph()
            sql = "\n".join(executor.loader.collect_sql([(migration, False)]))
            if any(line.strip() and not line.startswith("--") for line in sql.splitlines()):
                with connection.cursor() as cursor:
                    cursor.execute(sql)
            out["plan"].append({
                "app": migration.app_label,
                "name": migration.name,
                "sql": sql,
                "python": python_operations(migration),
                "changes_models": changes_models(migration),
                "public": in_public[(migration.app_label, migration.name)],
                "parents": sorted([p.key[0], p.key[1]] for p in
                                  executor.loader.graph.node_map[(migration.app_label, migration.name)].parents),
            })
        connection.set_schema(replayed, include_public=False)
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO django_migrations (app, name, applied) VALUES (%s, %s, now())",
                out["ledger"])
        replayed_catalog = catalog(replayed)
        if replayed_catalog != made_catalog:
            a = {tuple(r) for r in made_catalog}
            b = {tuple(r) for r in replayed_catalog}
            fail("replaying the migrations' SQL does not make the schema Django makes; "
                 "only Django has: %s; only the replay has: %s"
                 % (sorted(a - b)[:5], sorted(b - a)[:5]))
        connection.set_schema_to_public()
        transaction.set_rollback(True)
    return out


def main():
    target = os.environ["PROVISION_EXPORT_OUT"]
    try:
        document = export()
    except Refused as e:
        document = {"format": FORMAT, "refused": str(e)}
    with open(target, "w", encoding="utf-8") as f:
        json.dump(document, f, ensure_ascii=False)


main()
sys.exit(0)

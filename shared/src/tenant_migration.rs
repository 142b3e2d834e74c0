//! Bringing a tenant schema to a migration set, as Django would: each
//! migration's SQL with the search path django-tenants gives a migration
//! (the tenant's schema, then public), its row in the schema's own
//! `django_migrations` in the same transaction, and the content types and
//! permissions Django's post-migrate handlers would add.
//!
//! One generator, [`write_migrations`], writes it all. The fast way sends
//! every pending migration of up to five schemas as one transaction
//! (provisioning, migrate-all); the checked way ([`migrate_schema`]) sends
//! one transaction per migration, after reading the ledger, so a migration
//! that fails leaves those before it applied, as Django would, and is named.
//! Each transaction first checks, under the schemas' locks, that their
//! ledgers are still what they were read as, and that the set is still the
//! one in force.

use sqlx::PgConnection;

use crate::error::{ProvisionError, sqlstate_of};
use crate::ledger::Ledger;
use crate::locks::advisory_key;
use crate::migration_set::{Member, MigrationSet};
use crate::names::sqlstate;
use crate::sql::{Ident, Marker, Script};

/// A schema to migrate: its identifier and its ledger as it was read.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The schema.
    pub ident: &'a Ident,
    /// What its `django_migrations` held when it was read.
    pub ledger: &'a Ledger,
}

/// Statements that go into a migration's bookkeeping statement: data-
/// modifying CTEs `name AS (…)`, written for the positions applied and the
/// schemas they were applied to (such as a run's outcome).
pub type AlsoCte<'a> = dyn Fn(&mut Script, &[i32], &[Target<'_>]) + 'a;

/// Writes, for a transaction the caller opens and commits, what brings every
/// schema of `targets` (all with the same ledger) through the set's
/// migrations they lack; with `only`, through that one migration alone.
/// Returns the positions written (empty: nothing is pending).
///
/// A migration that runs Python is refused, naming it, unless the schemas
/// are fresh (no migration of the set applied): then what its Python leaves
/// is among the new-schema rows the set replays.
pub fn write_migrations(
    script: &mut Script,
    set: &MigrationSet,
    targets: &[Target<'_>],
    only: Option<i32>,
    also: Option<&AlsoCte<'_>>,
) -> Result<Vec<i32>, ProvisionError> {
    let Some(first) = targets.first() else {
        return Ok(Vec::new());
    };
    let post_migrate = only.is_none() && needs_post_migrate(set, first.ledger);
    let completes = only.is_none_or(|o| first.ledger.pending(set).last() == Some(&o));
    write_session_part(
        script,
        set,
        targets,
        only,
        first.ledger.is_fresh(),
        post_migrate,
        completes,
        also,
    )
}

/// Whether bringing a schema with `ledger` to `set` may leave Django's
/// post-migrate handlers something to add: the set has content types, and
/// the schema is new or a pending migration changes its models. (After
/// field-level migrations they would add nothing, so the statements are
/// spared.)
fn needs_post_migrate(set: &MigrationSet, ledger: &Ledger) -> bool {
    !set.content_types().is_empty()
        && (ledger == &Ledger::NoLedger
            || ledger
                .pending(set)
                .iter()
                .filter_map(|p| set.member(*p))
                .any(|m| m.changes_models))
}

/// [`write_migrations`] as one part of a session that began on a fresh
/// schema or not (which decides whether Python migrations may be
/// replayed), with whether the post-migrate rows follow, and whether the
/// part leaves the schemas with the whole set (then their ledger hints say
/// so), given.
#[allow(clippy::too_many_arguments)]
fn write_session_part(
    script: &mut Script,
    set: &MigrationSet,
    targets: &[Target<'_>],
    only: Option<i32>,
    fresh_session: bool,
    post_migrate: bool,
    completes: bool,
    also: Option<&AlsoCte<'_>>,
) -> Result<Vec<i32>, ProvisionError> {
    let Some(first) = targets.first() else {
        return Ok(Vec::new());
    };
    let pending = first.ledger.pending(set);
    let written: Vec<&Member> = pending
        .iter()
        .filter(|p| only.is_none_or(|o| o == **p))
        .filter_map(|p| set.member(*p))
        .collect();
    if written.is_empty() {
        return Ok(Vec::new());
    }
    if !fresh_session && let Some(m) = written.iter().find(|m| !m.python.is_empty()) {
        return Err(python_refused(m));
    }
    let positions: Vec<i32> = written.iter().map(|m| m.position).collect();
    let version = i64::from(set.version());

    script.sql("SELECT ");
    script.join(targets, ", ", |s, t| {
        s.sql("pg_advisory_xact_lock(")
            .int(advisory_key("migrate", t.ident.name()))
            .sql(")");
    });
    script.sql(";\n");
    // The bookkeeping, and the guard that the set and the ledgers are still
    // as they were read, in one statement before any DDL.
    script.sql("WITH ");
    if let Some(also) = also {
        also(script, &positions, targets);
        script.sql(",\n");
    }
    if completes {
        write_ledger_hints(script, targets, version);
        script.sql(",\n");
    }
    write_expected_keys(script, set, first.ledger);
    let names: Vec<&str> = targets.iter().map(|t| t.ident.name()).collect();
    let message = format!(
        "the migrations recorded in schema(s) {} changed since they were read",
        names.join(", ")
    );
    script
        .sql("\nSELECT public.provision_assert_set(")
        .int(version)
        .sql("), public.provision_assert(");
    script.join(targets, " AND ", write_ledger_is);
    script.sql(", ").text(&message).sql(") FROM expected;\n");

    for target in targets {
        script
            .sql("SET LOCAL search_path TO ")
            .ident(target.ident)
            .sql(", public;\n");
        if target.ledger == &Ledger::NoLedger {
            script.reviewed(set.ledger_table_sql());
        }
        for m in &written {
            script.reviewed(&m.sql);
        }
        // Literal rows, as the platform's recorder inserts them: no scan of
        // the set's table to plan in every schema.
        script
            .sql("INSERT INTO ")
            .ident(target.ident)
            .sql(".django_migrations (app, name, applied) VALUES ");
        script.join(&written, ", ", |s, m| {
            s.sql("(")
                .text(&m.app)
                .sql(", ")
                .text(&m.name)
                .sql(", clock_timestamp())");
        });
        script.sql(";\n");
        if post_migrate {
            write_post_migrate(script, target.ident, version);
        }
    }
    Ok(positions)
}

/// The CTE that records, in `provision_ledger_hint`, that `targets` now
/// have every migration of set `version`: what lets the next run's start
/// skip reading their ledgers (the run's transaction checks them anyway).
fn write_ledger_hints(script: &mut Script, targets: &[Target<'_>], version: i64) {
    script.sql("hint AS (\n INSERT INTO public.provision_ledger_hint (schema_name, set_version) VALUES ");
    script.join(targets, ", ", |s, t| {
        s.sql("(").text(t.ident.name()).sql(", ").int(version).sql(")");
    });
    script.sql(
        "\n ON CONFLICT (schema_name) DO UPDATE SET set_version = EXCLUDED.set_version, recorded_at = now())",
    );
}

/// The CTE `expected(applied, pending)`: the keys of the set's migrations
/// that `ledger` records, and of those it lacks, which the ledgers of a
/// group's targets (all read as `ledger`) are checked against.
fn write_expected_keys(script: &mut Script, set: &MigrationSet, ledger: &Ledger) {
    let applied: &[i32] = match ledger {
        Ledger::Applied(applied) => applied,
        Ledger::NoSchema | Ledger::NoLedger => &[],
    };
    let keys = |positions: &[i32]| -> Vec<String> {
        positions
            .iter()
            .filter_map(|p| set.member(*p))
            .map(Member::key)
            .collect()
    };
    script.sql("expected(applied, pending) AS (SELECT ARRAY[");
    script.join(keys(applied), ", ", |s, k| {
        s.text(&k);
    });
    script.sql("]::text[], ARRAY[");
    script.join(keys(&ledger.pending(set)), ", ", |s, k| {
        s.text(&k);
    });
    script.sql("]::text[])");
}

/// The condition that `target`'s ledger is what it was read as: it records
/// every key of `expected.applied` and none of `expected.pending` (keys
/// unknown to the set may be there too). Keys are compared as text, with
/// no join to the set's table: this runs once per schema migrated.
fn write_ledger_is(script: &mut Script, target: &Target<'_>) {
    match target.ledger {
        Ledger::NoSchema | Ledger::NoLedger => {
            script
                .sql("to_regclass(quote_ident(")
                .text(target.ident.name())
                .sql(") || '.django_migrations') IS NULL");
        }
        Ledger::Applied(applied) => {
            script.sql("(SELECT count(DISTINCT l.k) FILTER (WHERE l.k = ANY(expected.applied)) = ");
            script.int(i64::try_from(applied.len()).unwrap_or(i64::MAX));
            script.sql(
                " AND count(*) FILTER (WHERE l.k = ANY(expected.pending)) = 0 FROM (SELECT m.app || '.' || m.name AS k FROM ",
            );
            script.ident(target.ident).sql(".django_migrations m) AS l)");
        }
    }
}

/// The content types and permissions of the set that `schema` lacks, in
/// Django's order, so their ids come as Django's would: what its
/// post-migrate handlers add after a migration.
fn write_post_migrate(script: &mut Script, schema: &Ident, version: i64) {
    script.sql("INSERT INTO ").ident(schema).sql(
        ".django_content_type (app_label, model)
 SELECT e.value->>'app_label', e.value->>'model'
 FROM public.provision_migration_set s, jsonb_array_elements(s.content_types) WITH ORDINALITY AS e(value, ord)
 WHERE s.version = ",
    );
    script
        .int(version)
        .sql(" AND NOT EXISTS (SELECT 1 FROM ")
        .ident(schema)
        .sql(
            ".django_content_type c
     WHERE c.app_label = e.value->>'app_label' AND c.model = e.value->>'model')
 ORDER BY e.ord;\nINSERT INTO ",
        );
    script.ident(schema).sql(
        ".auth_permission (name, content_type_id, codename)
 SELECT e.value->>'name', c.id, e.value->>'codename'
 FROM public.provision_migration_set s
 CROSS JOIN jsonb_array_elements(s.permissions) WITH ORDINALITY AS e(value, ord)
 JOIN ",
    );
    script.ident(schema).sql(
        ".django_content_type c ON c.app_label = e.value->>'app_label' AND c.model = e.value->>'model'
 WHERE s.version = ",
    );
    script
        .int(version)
        .sql(" AND NOT EXISTS (SELECT 1 FROM ")
        .ident(schema)
        .sql(
            ".auth_permission p
     WHERE p.content_type_id = c.id AND p.codename = e.value->>'codename')
 ORDER BY e.ord;\n",
        );
}

/// The refusal of a migration that runs Python on a schema that has
/// migrations applied.
fn python_refused(m: &Member) -> ProvisionError {
    ProvisionError::Migration {
        migration: m.key(),
        message: format!(
            "runs Python ({}), which cannot be replayed as SQL on a schema that has migrations \
             applied; nothing was applied. Apply it with the platform's own command, \
             `python manage.py migrate_schemas` (or `--schema=<name>`), then migrate the rest here",
            m.python.join("; ")
        ),
    }
}

/// The Python migrations among what `ledger` lacks of `set`, when it is not
/// fresh: what `migrate` refuses, before anything is done.
pub fn refused_python<'a>(set: &'a MigrationSet, ledger: &Ledger) -> Option<&'a Member> {
    if ledger.is_fresh() {
        return None;
    }
    ledger
        .pending(set)
        .into_iter()
        .filter_map(|p| set.member(p))
        .find(|m| !m.python.is_empty())
}

/// What the checked way did to one schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaMigrated {
    /// Positions applied, in order (empty: it was current).
    pub applied: Vec<i32>,
}

/// The checked way for one schema whose ledger was just read: one
/// transaction per pending migration, in one message, each followed by a
/// marker that says it committed. Returns the markers, with the position
/// each stands for.
pub fn write_one_by_one(
    script: &mut Script,
    set: &MigrationSet,
    schema: &Ident,
    ledger: &Ledger,
) -> Result<Vec<(i32, Marker<bool>)>, ProvisionError> {
    let pending = ledger.pending(set);
    if let Some(m) = refused_python(set, ledger) {
        return Err(python_refused(m));
    }
    // After the last migration, whatever the migrations were: a session on a
    // new schema that stopped part-way left its post-migrate rows undone,
    // and the next one (the checked way) must add them.
    let post_migrate = !set.content_types().is_empty();
    let fresh = ledger.is_fresh();
    let last = pending.last().copied();
    let mut commits = Vec::with_capacity(pending.len());
    let mut before = ledger.clone();
    for position in pending {
        script.sql("BEGIN;\n");
        let target = [Target {
            ident: schema,
            ledger: &before,
        }];
        write_session_part(
            script,
            set,
            &target,
            Some(position),
            fresh,
            post_migrate && Some(position) == last,
            Some(position) == last,
            None,
        )?;
        script.sql("COMMIT;\n");
        commits.push((
            position,
            script.marker(|s| {
                s.sql("true");
            }),
        ));
        before = match before {
            Ledger::Applied(mut applied) => {
                applied.push(position);
                applied.sort_unstable();
                Ledger::Applied(applied)
            }
            Ledger::NoSchema | Ledger::NoLedger => Ledger::Applied(vec![position]),
        };
    }
    Ok(commits)
}

/// [`write_one_by_one`], sent: the migrations that committed, or the error
/// of the one that failed (those before it stay applied).
pub async fn migrate_schema(
    conn: &mut PgConnection,
    set: &MigrationSet,
    schema: &Ident,
    ledger: &Ledger,
) -> Result<SchemaMigrated, ProvisionError> {
    if ledger == &Ledger::NoSchema {
        return Err(ProvisionError::conflict(
            "schema_name",
            format!(
                "schema {:?} does not exist: its tenant row has no schema (`provision check` says how to fix it)",
                schema.name()
            ),
        ));
    }
    let mut script = Script::new();
    let commits = write_one_by_one(&mut script, set, schema, ledger)?;
    if commits.is_empty() {
        return Ok(SchemaMigrated { applied: Vec::new() });
    }
    let (output, error) = match script.finish()?.run(conn).await {
        Ok(output) => (output, None),
        Err(failure) => (failure.output, Some(failure.error)),
    };
    let done: Vec<i32> = commits
        .iter()
        .take_while(|(_, committed)| output.reached(*committed))
        .map(|(position, _)| *position)
        .collect();
    match error {
        None => Ok(SchemaMigrated { applied: done }),
        Some(error) => Err(explain_migration_error(
            set,
            schema.name(),
            commits[done.len()].0,
            error,
        )),
    }
}

/// The error of the migration at `position` failing in `schema_name`: a
/// guard means the ledger or the set changed meanwhile (look again); a
/// refused statement is the migration's fault, and named.
pub fn explain_migration_error(
    set: &MigrationSet,
    schema_name: &str,
    position: i32,
    error: sqlx::Error,
) -> ProvisionError {
    match sqlstate_of(&error).as_deref() {
        Some(sqlstate::GUARD_FAILED) => return ProvisionError::Contended(guard_message(&error)),
        Some(sqlstate::STALE_SET) => return ProvisionError::StaleSet(guard_message(&error)),
        _ => {}
    }
    let error = ProvisionError::Database(error);
    if !error.is_permanent() {
        return error;
    }
    ProvisionError::Migration {
        migration: set.member(position).map_or_else(|| "?".to_owned(), Member::key),
        message: format!("failed in schema {schema_name}: {error}"),
    }
}

/// The message of a failed guard.
pub fn guard_message(error: &sqlx::Error) -> String {
    error
        .as_database_error()
        .map_or_else(|| error.to_string(), |db| db.message().to_owned())
}

//! The migration runner for the public schema and for tenant schemas.
//!
//! Migrations run under an advisory lock that covers only their target (the
//! public schema, or one tenant schema), so different schemas migrate in
//! parallel and the same one never twice at once. Applied migrations are
//! recorded with a checksum of their SQL; a changed checksum is a permanent
//! error.
//!
//! A tenant schema's migrations are written by one generator,
//! [`write_migrations`]: the fast way sends them for one or a few schemas as
//! one transaction (provisioning, migrate-all), the checked way
//! ([`migrate_schema`]) reads what is recorded first and sends one
//! transaction per migration, which says exactly what is wrong.

use std::{fmt::Write as _, path::Path, sync::Arc};

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::error::{ProvisionError, sqlstate_of};
use crate::locks::advisory_key;
use crate::names::sqlstate;
use crate::sql::{Ident, Marker, ReviewedSql, Script};

/// A migration compiled into the binary (see `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedMigration {
    /// Its number: the file's prefix.
    pub version: i32,
    /// The file name between the number and `.sql`.
    pub name: &'static str,
    /// The SQL text.
    pub sql: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/embedded_migrations.rs"));

/// One migration, ready to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Its number; applied in increasing order.
    pub version: i32,
    /// Its name.
    pub name: String,
    /// The SQL text.
    pub sql: ReviewedSql,
    /// SHA-256 of the SQL text, hex.
    pub checksum: String,
}

impl Migration {
    /// A migration from its parts; the checksum is computed.
    pub fn new(version: i32, name: impl Into<String>, sql: impl Into<String>) -> Self {
        let sql = sql.into();
        let checksum = checksum(&sql);
        Self {
            version,
            name: name.into(),
            sql: ReviewedSql::new(sql),
            checksum,
        }
    }
}

/// SHA-256 of a migration's SQL, as hex.
pub fn checksum(sql: &str) -> String {
    let digest = Sha256::digest(sql.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        write!(hex, "{byte:02x}").expect("writing to a String");
    }
    hex
}

/// An ordered set of tenant migrations. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TenantMigrations {
    migrations: Arc<[Migration]>,
}

impl TenantMigrations {
    /// The tenant migrations compiled into this binary.
    pub fn embedded() -> Self {
        Self::from_embedded(TENANT_MIGRATIONS)
    }

    fn from_embedded(list: &[EmbeddedMigration]) -> Self {
        Self {
            migrations: list
                .iter()
                .map(|m| Migration::new(m.version, m.name, m.sql))
                .collect(),
        }
    }

    /// The migrations of a folder of `NNNN_name.sql` files: lets an operator
    /// (or a test, or the benchmark) run a newer set than the one built in.
    pub fn from_dir(dir: &Path) -> Result<Self, std::io::Error> {
        let mut list = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some((number, name)) = file.strip_suffix(".sql").and_then(|s| s.split_once('_')) else {
                continue;
            };
            let Ok(version) = number.parse::<i32>() else {
                continue;
            };
            list.push(Migration::new(version, name, std::fs::read_to_string(&path)?));
        }
        list.sort_by_key(|m| m.version);
        if list.windows(2).any(|w| w[0].version == w[1].version)
            || list.first().is_some_and(|m| m.version < 1)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: migration numbers must be unique and start at 1",
                    dir.display()
                ),
            ));
        }
        Ok(Self {
            migrations: list.into(),
        })
    }

    /// The migrations, in order.
    pub fn all(&self) -> &[Migration] {
        &self.migrations
    }

    /// The number of the newest migration (0 when there are none).
    pub fn latest(&self) -> i32 {
        self.migrations.last().map_or(0, |m| m.version)
    }
}

/// What migrating one schema did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaMigrated {
    /// Versions applied by this call, in order (empty: already current).
    pub applied: Vec<i32>,
    /// The schema's version afterwards.
    pub version: i32,
}

/// A schema to migrate: its identifier and its name.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The quoted identifier.
    pub ident: &'a Ident,
    /// The name, as recorded in `provision_tenant_migration`.
    pub name: &'a str,
}

/// Statements that go into the bookkeeping statement of a migration: a
/// data-modifying CTE `name AS (…)`, written for the versions applied and
/// the schemas they were applied to (such as a run's outcome).
pub type AlsoCte<'a> = dyn Fn(&mut Script, &[i32], &[Target<'_>]) + 'a;

/// Writes, for a transaction the caller opens and commits, what brings every
/// schema of `targets` from migration `applied` (the newest recorded in
/// each; 0 for none) through the migrations of `set` after it, up to and
/// including `through`: the schemas' locks, each migration in each schema
/// with the search path set to exactly that schema, then one statement that
/// records them, sets the tenants' `schema_version`, runs `also`, and
/// checks that the migrations recorded before were exactly those of `set`
/// up to `applied`. If they were not, the statement stops the script with
/// [`sqlstate::GUARD_FAILED`] and the transaction rolls back.
///
/// This is the one generator of a schema's migrations. The fast way sends
/// every pending migration of up to five schemas as one transaction; the
/// checked way ([`migrate_schema`]) sends one migration per transaction,
/// after reading what is recorded. One statement for all the bookkeeping,
/// and one for several schemas, because a script's statements are parsed
/// and planned anew each time: the bookkeeping of one schema costs about as
/// much as its migration, that of five little more (bench/README.md).
///
/// Returns the versions written; empty when nothing is pending.
pub fn write_migrations(
    script: &mut Script,
    set: &TenantMigrations,
    targets: &[Target<'_>],
    applied: i32,
    through: i32,
    also: Option<&AlsoCte<'_>>,
) -> Vec<i32> {
    let pending: Vec<&Migration> = set
        .all()
        .iter()
        .filter(|m| m.version > applied && m.version <= through)
        .collect();
    if pending.is_empty() || targets.is_empty() {
        return Vec::new();
    }
    script.sql("SELECT ");
    script.join(targets, ", ", |s, t| {
        s.sql("pg_advisory_xact_lock(")
            .int(advisory_key("migrate", t.name))
            .sql(")");
    });
    script.sql(";\n");
    for target in targets {
        script
            .sql("SET LOCAL search_path TO ")
            .ident(target.ident)
            .sql(";\n");
        for m in &pending {
            script.reviewed(&m.sql);
        }
    }
    let versions: Vec<i32> = pending.iter().map(|m| m.version).collect();
    let newest = *versions.last().expect("pending is not empty");
    script.sql("SET LOCAL search_path TO public;\nWITH recorded AS (\n INSERT INTO public.provision_tenant_migration (schema_name, version, name, checksum)\n VALUES ");
    let rows: Vec<(&Target<'_>, &&Migration)> = targets
        .iter()
        .flat_map(|t| pending.iter().map(move |m| (t, m)))
        .collect();
    script.join(rows, ", ", |s, (t, m)| {
        s.sql("(")
            .text(t.name)
            .sql(", ")
            .int(i64::from(m.version))
            .sql(", ")
            .text(&m.name)
            .sql(", ")
            .text(&m.checksum)
            .sql(")");
    });
    script.sql("),\nversioned AS (\n UPDATE public.provision_tenant SET schema_version = ");
    script.int(i64::from(newest)).sql(" WHERE schema_name IN (");
    script.join(targets, ", ", |s, t| {
        s.text(t.name);
    });
    script.sql("))");
    if let Some(also) = also {
        script.sql(",\n");
        also(script, &versions, targets);
    }
    // The guard reads the records as they were when the statement began,
    // before its own insert.
    let expected: Vec<String> = set
        .all()
        .iter()
        .filter(|m| m.version <= applied)
        .map(|m| format!("{}:{}", m.version, m.checksum))
        .collect();
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    let message = format!(
        "schema(s) {}: the recorded migrations are not those up to {applied} of this worker",
        names.join(", ")
    );
    script.sql("\nSELECT public.provision_assert(bool_and(coalesce(r.got, '') = ");
    script.text(&expected.join(",")).sql("), ").text(&message);
    script.sql(") AS guarded\nFROM (VALUES (");
    script.join(targets, "), (", |s, t| {
        s.text(t.name);
    });
    script.sql(
        ")) AS s(schema_name)\nLEFT JOIN LATERAL (\n SELECT string_agg(version || ':' || checksum, ',' ORDER BY version) AS got\n FROM public.provision_tenant_migration m WHERE m.schema_name = s.schema_name) r ON true;\n",
    );
    versions
}

/// The newest migration recorded for `schema_name`, after checking that
/// every recorded one is the migration of `set` it claims to be.
pub async fn recorded_version(
    conn: &mut PgConnection,
    set: &TenantMigrations,
    schema_name: &str,
) -> Result<i32, ProvisionError> {
    let recorded: Vec<(i32, String)> = sqlx::query_as(
        "SELECT version, checksum FROM public.provision_tenant_migration
         WHERE schema_name = $1 ORDER BY version",
    )
    .bind(schema_name)
    .fetch_all(&mut *conn)
    .await?;
    check_recorded(set, schema_name, &recorded)?;
    Ok(recorded.last().map_or(0, |r| r.0))
}

/// The checked way for one schema: what is recorded is read and checked
/// first, then the migrations after it go as one transaction each, in one
/// message; a migration that fails leaves the ones before it applied, and
/// its error names it.
pub async fn migrate_schema(
    conn: &mut PgConnection,
    set: &TenantMigrations,
    schema: &Ident,
) -> Result<SchemaMigrated, ProvisionError> {
    let applied = recorded_version(conn, set, schema.name()).await?;
    let mut script = Script::new();
    let commits = write_one_by_one(&mut script, set, schema, applied);
    if commits.is_empty() {
        return Ok(SchemaMigrated {
            applied: Vec::new(),
            version: applied,
        });
    }
    let result = script.finish()?.run(conn).await;
    let (output, error) = match result {
        Ok(output) => (output, None),
        Err(failure) => (failure.output, Some(failure.error)),
    };
    let done: Vec<i32> = commits
        .iter()
        .take_while(|(_, committed)| output.reached(*committed))
        .map(|(version, _)| *version)
        .collect();
    match error {
        None => Ok(SchemaMigrated {
            version: done.last().copied().unwrap_or(applied),
            applied: done,
        }),
        Some(error) => {
            let failed = commits[done.len()].0;
            Err(explain_migration_error(set, schema.name(), failed, error))
        }
    }
}

/// [`write_migrations`] for one schema, one transaction per migration after
/// `applied`, each followed by a marker that says it committed.
pub fn write_one_by_one(
    script: &mut Script,
    set: &TenantMigrations,
    schema: &Ident,
    applied: i32,
) -> Vec<(i32, Marker<bool>)> {
    let target = [Target {
        ident: schema,
        name: schema.name(),
    }];
    let mut commits = Vec::new();
    let mut from = applied;
    for m in set.all().iter().filter(|m| m.version > applied) {
        script.sql("BEGIN;\n");
        write_migrations(script, set, &target, from, m.version, None);
        script.sql("COMMIT;\n");
        commits.push((
            m.version,
            script.marker(|s| {
                s.sql("true");
            }),
        ));
        from = m.version;
    }
    commits
}

/// The error of migration `version` failing in `schema_name`: a guard means
/// another process migrated the schema meanwhile (look again); a refused
/// statement is the migration's fault.
pub fn explain_migration_error(
    set: &TenantMigrations,
    schema_name: &str,
    version: i32,
    error: sqlx::Error,
) -> ProvisionError {
    if sqlstate_of(&error).as_deref() == Some(sqlstate::GUARD_FAILED) {
        return ProvisionError::Contended(guard_message(&error));
    }
    let error = ProvisionError::Database(error);
    if !error.is_permanent() {
        return error;
    }
    let name = set
        .all()
        .iter()
        .find(|m| m.version == version)
        .map_or_else(|| "?".to_owned(), |m| m.name.clone());
    ProvisionError::Migration {
        version,
        name,
        message: format!("failed in schema {schema_name}: {error}"),
    }
}

/// The message of a failed guard ([`sqlstate::GUARD_FAILED`]).
pub fn guard_message(error: &sqlx::Error) -> String {
    error
        .as_database_error()
        .map_or_else(|| error.to_string(), |db| db.message().to_owned())
}

fn check_recorded(
    set: &TenantMigrations,
    schema: &str,
    recorded: &[(i32, String)],
) -> Result<(), ProvisionError> {
    for (version, recorded_checksum) in recorded {
        match set.all().iter().find(|m| m.version == *version) {
            Some(m) if &m.checksum == recorded_checksum => {}
            Some(m) => {
                return Err(ProvisionError::Migration {
                    version: m.version,
                    name: m.name.clone(),
                    message: format!(
                        "was changed after it was applied to schema {schema} \
                         (checksum {recorded_checksum} recorded, {} now); \
                         restore the file and add a new migration instead",
                        m.checksum
                    ),
                });
            }
            None => {
                return Err(ProvisionError::Migration {
                    version: *version,
                    name: String::from("?"),
                    message: format!(
                        "is applied to schema {schema} but unknown to this binary \
                         (newest known: {}); run a newer provision-worker",
                        set.latest()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Applies pending public migrations, once however many processes call this
/// together: each runs under one database-wide advisory lock, and the check
/// for pending ones costs a single query when there are none.
pub async fn apply_public_migrations(pool: &PgPool) -> Result<Vec<i32>, ProvisionError> {
    let mut conn = pool.acquire().await?;
    if public_pending_on(&mut conn).await?.is_empty() {
        return Ok(Vec::new());
    }
    let mut applied = Vec::new();
    for migration in PUBLIC_MIGRATIONS {
        let sum = checksum(migration.sql);
        // Under the lock: the bookkeeping table, then whether this migration
        // is recorded, and with which checksum.
        let mut script = Script::new();
        script.sql("BEGIN;\nSELECT pg_advisory_xact_lock(");
        script.int(advisory_key("migrate-public", "")).sql(");\n");
        script.sql(PUBLIC_BOOKKEEPING);
        let recorded: Marker<Option<String>> = script.marker(|s| {
            s.sql("(SELECT checksum FROM provision_public_migration WHERE version = ")
                .int(i64::from(migration.version))
                .sql(")");
        });
        let output = script.finish()?.run(&mut conn).await.map_err(|f| f.error)?;
        match output.get(recorded).transpose()?.flatten() {
            Some(recorded) if recorded == sum => {
                sqlx::query("ROLLBACK").execute(&mut *conn).await?;
                continue;
            }
            Some(recorded) => {
                sqlx::query("ROLLBACK").execute(&mut *conn).await?;
                return Err(ProvisionError::Migration {
                    version: migration.version,
                    name: migration.name.into(),
                    message: format!(
                        "public migration was changed after it was applied (checksum {recorded} recorded, {sum} now)"
                    ),
                });
            }
            None => {}
        }
        let mut script = Script::new();
        script
            .sql(migration.sql)
            .sql("\n;\nINSERT INTO provision_public_migration (version, name, checksum) VALUES (");
        script
            .int(i64::from(migration.version))
            .sql(", ")
            .text(migration.name)
            .sql(", ")
            .text(&sum)
            .sql(");\nCOMMIT;\n");
        script
            .finish()?
            .run(&mut conn)
            .await
            .map_err(|f| ProvisionError::Migration {
                version: migration.version,
                name: migration.name.into(),
                message: format!("public migration failed: {}", f.error),
            })?;
        applied.push(migration.version);
    }
    Ok(applied)
}

/// Public migrations built into this binary that the database has not
/// applied yet (all of them on an empty database).
pub async fn public_pending(pool: &PgPool) -> Result<Vec<i32>, ProvisionError> {
    let mut conn = pool.acquire().await?;
    public_pending_on(&mut conn).await
}

async fn public_pending_on(conn: &mut PgConnection) -> Result<Vec<i32>, ProvisionError> {
    let recorded: Vec<(i32, String)> =
        sqlx::query_as("SELECT version, checksum FROM provision_public_migration")
            .fetch_all(&mut *conn)
            .await
            .or_else(|e| match sqlstate_of(&e).as_deref() {
                // Nothing applied yet.
                Some(sqlstate::UNDEFINED_TABLE) => Ok(Vec::new()),
                _ => Err(e),
            })?;
    Ok(PUBLIC_MIGRATIONS
        .iter()
        .filter(|m| {
            !recorded
                .iter()
                .any(|(v, sum)| *v == m.version && *sum == checksum(m.sql))
        })
        .map(|m| m.version)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_sets_are_ordered_and_start_at_one() {
        for set in [PUBLIC_MIGRATIONS, TENANT_MIGRATIONS] {
            assert_eq!(set.first().map(|m| m.version), Some(1));
            assert!(set.windows(2).all(|w| w[0].version < w[1].version));
        }
        assert!(TenantMigrations::embedded().latest() >= 1);
    }

    #[test]
    fn a_changed_applied_migration_is_refused() {
        let set = TenantMigrations::embedded();
        let err = check_recorded(&set, "theo", &[(1, "0".repeat(64))]).unwrap_err();
        assert!(err.is_permanent());
        assert!(
            err.to_string().contains("was changed after it was applied"),
            "{err}"
        );
        let first = &set.all()[0];
        assert!(check_recorded(&set, "theo", &[(1, first.checksum.clone())]).is_ok());
    }
}

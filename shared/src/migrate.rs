//! The migration runner for the public schema and for tenant schemas.
//!
//! Migrations run under an advisory lock that covers only their target (the
//! public schema, or one tenant schema), so different schemas migrate in
//! parallel and the same one never twice at once. Applied migrations are
//! recorded with a checksum of their SQL; a changed checksum is a permanent
//! error.
//!
//! Two ways for tenant schemas: [`pending_migrations_sql`] writes all the
//! pending migrations of one or a few schemas as one transaction for a
//! one-message script
//! (the fast path of provisioning and migrate-all), and
//! [`migrate_schema_on`] applies them one transaction and round trips each,
//! reading and checking what is recorded first: the fallback, which says
//! exactly what is wrong.

use std::{fmt::Write as _, path::Path, sync::Arc};

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, PgPool};

use crate::error::ProvisionError;
use crate::ident::{advisory_key, quote_ident, trusted_sql};
use crate::script::literal;

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
    pub sql: String,
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
            sql,
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

/// Applies the pending migrations of `set` in `schema`, one transaction
/// each, with the search path set to exactly that schema, and keeps
/// `provision_tenant.schema_version` in step in the same transaction.
///
/// `schema` must already be validated (see [`crate::validate::schema_name`]).
pub async fn migrate_schema(
    pool: &PgPool,
    set: &TenantMigrations,
    schema: &str,
) -> Result<SchemaMigrated, ProvisionError> {
    let mut conn = pool.acquire().await?;
    migrate_schema_on(&mut conn, set, schema).await
}

/// [`migrate_schema`] on a connection the caller holds.
pub async fn migrate_schema_on(
    conn: &mut PgConnection,
    set: &TenantMigrations,
    schema: &str,
) -> Result<SchemaMigrated, ProvisionError> {
    let prelude = format!(
        "SELECT pg_advisory_xact_lock({key});\nSET LOCAL search_path TO {ident};",
        key = advisory_key("migrate", schema),
        ident = quote_ident(schema),
    );
    let mut applied = Vec::new();
    loop {
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(trusted_sql(prelude.as_str()))
            .execute(&mut *tx)
            .await?;
        let recorded: Vec<(i32, String)> = sqlx::query_as(
            "SELECT version, checksum FROM public.provision_tenant_migration
             WHERE schema_name = $1 ORDER BY version",
        )
        .bind(schema)
        .fetch_all(&mut *tx)
        .await?;
        check_recorded(set, schema, &recorded)?;
        let version = recorded.last().map_or(0, |r| r.0);
        let Some(next) = set.all().iter().find(|m| m.version > version) else {
            tx.rollback().await?;
            return Ok(SchemaMigrated { applied, version });
        };
        apply_one(&mut tx, next, schema).await?;
        tx.commit().await?;
        applied.push(next.version);
        if next.version == set.latest() {
            // Nothing after it: spare the transaction that would find so.
            return Ok(SchemaMigrated {
                applied,
                version: next.version,
            });
        }
    }
}

/// A data-modifying CTE, `name AS (…)`, written from the versions a
/// migration applies and the SQL list of the schemas it applies them to
/// (`'a', 'b'`, for `schema_name IN (…)`).
pub type AlsoCte<'a> = dyn Fn(&[i32], &str) -> String + 'a;

/// The statements that bring every schema of `schemas` from migration
/// `applied` (the newest one recorded for each; 0 for none) to the newest of
/// `set`, for a script (see [`crate::script`]) to run inside one
/// transaction: the schemas' locks, every pending migration in each schema,
/// then one statement that records them, sets the tenants'
/// `schema_version`, runs `also` (such as a run's outcome) and checks that
/// the migrations recorded before were exactly those of `set` up to
/// `applied`. If they were not, the script stops with
/// [`crate::script::GUARD_FAILED`] and everything rolls back; the caller
/// falls back to [`migrate_schema_on`], which says what is wrong.
///
/// One statement for all the bookkeeping, and one for several schemas,
/// because a script's statements are parsed and planned anew each time: the
/// bookkeeping of one schema costs about as much as its migration, that of
/// five little more (bench/README.md). `None` when nothing is pending.
pub fn pending_migrations_sql(
    set: &TenantMigrations,
    schemas: &[&str],
    applied: i32,
    also: Option<&AlsoCte<'_>>,
) -> Result<Option<(String, Vec<i32>)>, ProvisionError> {
    let pending: Vec<&Migration> = set.all().iter().filter(|m| m.version > applied).collect();
    if pending.is_empty() || schemas.is_empty() {
        return Ok(None);
    }
    let expected: Vec<String> = set
        .all()
        .iter()
        .filter(|m| m.version <= applied)
        .map(|m| format!("{}:{}", m.version, m.checksum))
        .collect();
    let schema_literals = schemas
        .iter()
        .map(|s| literal(s))
        .collect::<Result<Vec<_>, _>>()?;
    let locks: Vec<String> = schemas
        .iter()
        .map(|s| format!("pg_advisory_xact_lock({})", advisory_key("migrate", s)))
        .collect();
    let mut sql = format!("SELECT {};\n", locks.join(", "));
    let mut rows = Vec::with_capacity(pending.len() * schemas.len());
    for (schema, schema_literal) in schemas.iter().zip(&schema_literals) {
        writeln!(sql, "SET LOCAL search_path TO {};", quote_ident(schema)).expect("writing to a String");
        for m in &pending {
            // A newline first, so a file ending in a `--` comment cannot
            // swallow the semicolon.
            sql.push_str(m.sql.trim_end());
            sql.push_str("\n;\n");
            rows.push(format!(
                "({schema_literal}, {}, {}, {})",
                m.version,
                literal(&m.name)?,
                literal(&m.checksum)?
            ));
        }
    }
    let versions: Vec<i32> = pending.iter().map(|m| m.version).collect();
    let in_list = schema_literals.join(", ");
    let message = match schemas {
        [one] => {
            format!("schema {one}: its recorded migrations are not those up to {applied} of this worker")
        }
        _ => format!(
            "schemas {}: the recorded migrations of one or more are not those up to {applied} of this worker",
            schemas.join(", ")
        ),
    };
    // The guard reads the records as they were when the statement began,
    // before its own insert.
    write!(
        sql,
        "SET LOCAL search_path TO public;\n\
         WITH recorded AS (\n\
             INSERT INTO public.provision_tenant_migration (schema_name, version, name, checksum)\n\
             VALUES {rows}),\n\
         versioned AS (\n\
             UPDATE public.provision_tenant SET schema_version = {latest} WHERE schema_name IN ({in_list})){also}\n\
         SELECT public.provision_assert(bool_and(coalesce(r.got, '') = {expected}), {message}) AS guarded\n\
         FROM (VALUES ({values})) AS s(schema_name)\n\
         LEFT JOIN LATERAL (\n\
             SELECT string_agg(version || ':' || checksum, ',' ORDER BY version) AS got\n\
             FROM public.provision_tenant_migration m WHERE m.schema_name = s.schema_name) r ON true;\n",
        rows = rows.join(", "),
        latest = set.latest(),
        also = also.map(|cte| format!(",\n{}", cte(&versions, &in_list))).unwrap_or_default(),
        expected = literal(&expected.join(","))?,
        values = schema_literals.join("), ("),
        message = literal(&message)?,
    )
    .expect("writing to a String");
    Ok(Some((sql, versions)))
}

async fn apply_one(tx: &mut PgConnection, migration: &Migration, schema: &str) -> Result<(), ProvisionError> {
    if let Err(e) = sqlx::raw_sql(trusted_sql(migration.sql.as_str()))
        .execute(&mut *tx)
        .await
    {
        let error = ProvisionError::Database(e);
        if !error.is_permanent() {
            return Err(error);
        }
        return Err(ProvisionError::Migration {
            version: migration.version,
            name: migration.name.clone(),
            message: format!("failed in schema {schema}: {error}"),
        });
    }
    sqlx::query(
        "WITH recorded AS (
             INSERT INTO public.provision_tenant_migration (schema_name, version, name, checksum)
             VALUES ($4, $1, $2, $3)
         )
         UPDATE public.provision_tenant SET schema_version = $1 WHERE schema_name = $4",
    )
    .bind(migration.version)
    .bind(&migration.name)
    .bind(&migration.checksum)
    .bind(schema)
    .execute(&mut *tx)
    .await?;
    Ok(())
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
    let prelude = format!(
        "SELECT pg_advisory_xact_lock({key});\n{PUBLIC_BOOKKEEPING}",
        key = advisory_key("migrate-public", "")
    );
    let mut applied = Vec::new();
    for migration in PUBLIC_MIGRATIONS {
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(trusted_sql(prelude.as_str()))
            .execute(&mut *tx)
            .await?;
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT checksum FROM provision_public_migration WHERE version = $1")
                .bind(migration.version)
                .fetch_optional(&mut *tx)
                .await?;
        let sum = checksum(migration.sql);
        match recorded {
            Some(recorded) if recorded == sum => {
                tx.rollback().await?;
                continue;
            }
            Some(recorded) => {
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
        sqlx::raw_sql(trusted_sql(migration.sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| ProvisionError::Migration {
                version: migration.version,
                name: migration.name.into(),
                message: format!("public migration failed: {e}"),
            })?;
        sqlx::query("INSERT INTO provision_public_migration (version, name, checksum) VALUES ($1, $2, $3)")
            .bind(migration.version)
            .bind(migration.name)
            .bind(&sum)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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
            .or_else(|e| match crate::error::sqlstate(&e).as_deref() {
                // undefined_table: nothing applied yet.
                Some("42P01") => Ok(Vec::new()),
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

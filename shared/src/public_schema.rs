//! The public schema: this project's own tables (`migrations/public/`), and,
//! on a database the platform has not migrated yet (the demo), the
//! platform's tenant tables made as its Django makes them.
//!
//! This project's migrations run under one database-wide advisory lock, each
//! recorded with a checksum of its SQL in `provision_public_migration`; a
//! changed checksum is refused. They never touch a table of the platform.

use sqlx::{PgConnection, PgPool};

use crate::error::{ProvisionError, sqlstate_of};
use crate::locks::advisory_key;
use crate::migration_set::{MigrationSet, checksum};
use crate::names::sqlstate;
use crate::sql::{Marker, ReviewedSql, Script};

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

/// What preparing the public schema did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PublicPrepared {
    /// Whether the platform's tenant tables were made (the database had
    /// none).
    pub platform_tables_made: bool,
    /// This project's migrations applied, by number.
    pub applied: Vec<i32>,
}

/// Makes the public schema ready, once however many processes call this
/// together: the platform's tenant tables if the database has none, then
/// this project's pending migrations. Costs a single query when nothing is
/// to do.
pub async fn prepare_public_schema(pool: &PgPool) -> Result<PublicPrepared, ProvisionError> {
    let mut conn = pool.acquire().await?;
    let platform_missing = platform_tables_missing(&mut conn).await?;
    if !platform_missing && public_pending_on(&mut conn).await?.is_empty() {
        return Ok(PublicPrepared::default());
    }
    let mut prepared = PublicPrepared::default();
    if platform_missing {
        prepared.platform_tables_made = make_platform_tables(&mut conn).await?;
    }
    prepared.applied = apply_public_migrations(&mut conn).await?;
    Ok(prepared)
}

/// Records `<schema>.<base_domain>` as the default domain of requests made
/// through the SQL API, from this process's configuration.
pub async fn record_base_domain(pool: &PgPool, base_domain: &str) -> Result<(), ProvisionError> {
    crate::validate::domain(base_domain)?;
    sqlx::query(
        "INSERT INTO public.provision_setting (name, value) VALUES ('base_domain', $1)
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value WHERE provision_setting.value <> EXCLUDED.value",
    )
    .bind(base_domain)
    .execute(pool)
    .await?;
    Ok(())
}

async fn platform_tables_missing(conn: &mut PgConnection) -> Result<bool, ProvisionError> {
    Ok(
        sqlx::query_scalar("SELECT to_regclass('public.tenants_client') IS NULL")
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// On a database without `tenants_client`: the platform's tenant tables as
/// the platform model's `tenants` migrations make them, with Django's ledger
/// in the public schema and their rows in it, so the platform's own
/// `migrate_schemas --shared` later finds them applied. Under the same lock
/// as the public migrations. Returns whether it made them (another process
/// may have).
async fn make_platform_tables(conn: &mut PgConnection) -> Result<bool, ProvisionError> {
    let set = MigrationSet::built_in();
    let mut script = Script::new();
    script.sql("BEGIN;\nSELECT pg_advisory_xact_lock(");
    script.int(advisory_key("migrate-public", "")).sql(");\n");
    let missing: Marker<bool> = script.marker(|s| {
        s.sql("to_regclass('public.tenants_client') IS NULL");
    });
    let output = script.finish()?.run(conn).await.map_err(|f| f.error)?;
    if !output.get(missing).transpose()?.unwrap_or(false) {
        sqlx::query("ROLLBACK").execute(&mut *conn).await?;
        return Ok(false);
    }
    let mut script = Script::new();
    script.sql("SET LOCAL search_path TO public;\n");
    let ledger_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('public.django_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    if !ledger_exists {
        script.reviewed(set.ledger_table_sql());
    }
    for m in set.public_tables() {
        script.reviewed(&ReviewedSql::new(m.sql.clone()));
        script.sql("INSERT INTO public.django_migrations (app, name, applied) VALUES (");
        script
            .text(&m.app)
            .sql(", ")
            .text(&m.name)
            .sql(", clock_timestamp());\n");
    }
    script.sql("COMMIT;\n");
    script
        .finish()?
        .run(conn)
        .await
        .map_err(|f| ProvisionError::Migration {
            migration: "the platform's tenant tables".into(),
            message: f.error.to_string(),
        })?;
    Ok(true)
}

/// This project's pending public migrations, each in its own transaction
/// under the lock. A database made by the first version of this project
/// (before it followed the platform's migrations) is refused: its tenants
/// are not Django's, and converting them is not automatic.
async fn apply_public_migrations(conn: &mut PgConnection) -> Result<Vec<i32>, ProvisionError> {
    let mut applied = Vec::new();
    for migration in PUBLIC_MIGRATIONS {
        let sum = checksum(migration.sql);
        // Under the lock: the bookkeeping table, then whether this migration
        // is recorded, and with which checksum.
        let mut script = Script::new();
        script.sql("BEGIN;\nSELECT pg_advisory_xact_lock(");
        script.int(advisory_key("migrate-public", "")).sql(");\n");
        script.sql(PUBLIC_BOOKKEEPING);
        let legacy: Marker<bool> = script.marker(|s| {
            s.sql("to_regclass('public.provision_tenant_migration') IS NOT NULL");
        });
        let recorded: Marker<Option<String>> = script.marker(|s| {
            s.sql("(SELECT checksum FROM provision_public_migration WHERE version = ")
                .int(i64::from(migration.version))
                .sql(")");
        });
        let output = script.finish()?.run(conn).await.map_err(|f| f.error)?;
        if output.get(legacy).transpose()?.unwrap_or(false) {
            sqlx::query("ROLLBACK").execute(&mut *conn).await?;
            return Err(ProvisionError::Migration {
                migration: "public".into(),
                message: "this database was made by provision 0.1, whose tenant schemas are not the \
                          platform's Django migrations (they lack django_migrations); it is not \
                          upgraded in place: see README, \"Databases made by provision 0.1\""
                    .into(),
            });
        }
        match output.get(recorded).transpose()?.flatten() {
            Some(recorded) if recorded == sum => {
                sqlx::query("ROLLBACK").execute(&mut *conn).await?;
                continue;
            }
            Some(recorded) => {
                sqlx::query("ROLLBACK").execute(&mut *conn).await?;
                return Err(ProvisionError::Migration {
                    migration: format!("public {:04}_{}", migration.version, migration.name),
                    message: format!(
                        "was changed after it was applied (checksum {recorded} recorded, {sum} now)"
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
            .run(conn)
            .await
            .map_err(|f| ProvisionError::Migration {
                migration: format!("public {:04}_{}", migration.version, migration.name),
                message: format!("failed: {}", f.error),
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
        sqlx::query_as("SELECT version, checksum FROM public.provision_public_migration")
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
    fn public_migrations_are_ordered_from_one_and_bind_nothing_to_the_platforms_tables() {
        assert_eq!(PUBLIC_MIGRATIONS.first().map(|m| m.version), Some(1));
        assert!(PUBLIC_MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        for m in PUBLIC_MIGRATIONS {
            let sql = m
                .sql
                .to_lowercase()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            for binding in [
                "references tenants_",
                "references public.tenants_",
                " on tenants_",
                " on public.tenants_",
                "alter table tenants_",
                "alter table public.tenants_",
            ] {
                assert!(
                    !sql.contains(binding),
                    "public migration {} has {binding:?}: the platform's commands would trip over it",
                    m.version
                );
            }
            // A view over the platform's tables would stop Django from
            // altering or dropping the columns it reads.
            for statement in sql
                .split(';')
                .filter(|s| s.contains("create view") || s.contains("create or replace view"))
            {
                assert!(
                    !statement.contains("tenants_"),
                    "public migration {} has a view over the platform's tables: {statement}",
                    m.version
                );
            }
        }
    }
}

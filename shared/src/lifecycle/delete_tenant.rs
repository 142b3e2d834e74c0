//! The `DeleteTenant` job: back the tenant up, verify the backup, drop its
//! schema, delete its public rows. Each step is recorded and resumable (see
//! [`super::job`]); the schema is never dropped before the backup is
//! verified, unless the deletion was confirmed without one, which the
//! `provision_lifecycle_dropped_after_verified_backup` CHECK enforces too.
//!
//! The backup holds the tenant's schema and a staging schema,
//! `provision_rows_<deletion>`, with copies of its `tenants_client` and
//! `tenants_domain` rows: `pg_dump` cannot dump some rows of a table, and
//! one file that holds everything is one checksum to trust.

use std::path::Path;

use sqlx::PgConnection;

use super::archive::{self, holds_schema, holds_table_data};
use super::job::{LifecycleEnv, LifecycleOutcome, LifecycleRow, LifecycleStep, StepTx, run_lifecycle_job};
use crate::error::ProvisionError;
use crate::jobs::{JobKind, JobSink};
use crate::sql::{Ident, Marker, Script};

/// Runs (or resumes) the `DeleteTenant` job of `schema_name`.
pub async fn run_delete_tenant<S: JobSink>(
    env: &LifecycleEnv<'_, S>,
    schema_name: &str,
) -> Result<LifecycleOutcome, ProvisionError> {
    run_lifecycle_job(env, JobKind::DeleteTenant, schema_name, usize::MAX).await
}

/// [`run_delete_tenant`], stopping after at most `max_steps` steps.
pub async fn run_delete_tenant_steps<S: JobSink>(
    env: &LifecycleEnv<'_, S>,
    schema_name: &str,
    max_steps: usize,
) -> Result<LifecycleOutcome, ProvisionError> {
    run_lifecycle_job(env, JobKind::DeleteTenant, schema_name, max_steps).await
}

/// The staging schema of deletion `deletion_id`.
pub(crate) fn staging_schema(deletion_id: i64) -> Result<Ident, ProvisionError> {
    Ok(Ident::tenant_schema(&format!("provision_rows_{deletion_id}"))?)
}

fn deletion_id(row: &LifecycleRow) -> Result<i64, ProvisionError> {
    row.deletion_id
        .ok_or_else(|| ProvisionError::WrongState("the deletion has no number".into()))
}

/// `backup`: the schema and the staging schema to
/// `<PROVISION_BACKUP_DIR>/<schema>-<deletion>.dump`.
pub(super) async fn backup<S: JobSink>(
    env: &LifecycleEnv<'_, S>,
    conn: &mut PgConnection,
    schema: &Ident,
    row: &LifecycleRow,
) -> Result<(), ProvisionError> {
    let dir = env.backup_dir.ok_or_else(|| {
        ProvisionError::Backup(
            "PROVISION_BACKUP_DIR is not set: set it to a folder the worker may write, \
             then `provision retry` this tenant"
                .into(),
        )
    })?;
    let dir = backup_folder(dir).await?;
    let deletion_id = deletion_id(row)?;
    let staging = staging_schema(deletion_id)?;
    let file = dir.join(format!("{}-{deletion_id}.dump", schema.name()));
    stage_public_rows(conn, schema, &staging).await?;
    let kept = keep_backup(env, conn, schema, &staging, &file).await;
    if kept.is_err() {
        // Best effort: a retry makes it again, and a cancel drops it.
        let _ = drop_staging(conn, &staging).await;
    }
    kept
}

/// Makes the folder if missing; its absolute path, which the record keeps.
async fn backup_folder(dir: &Path) -> Result<std::path::PathBuf, ProvisionError> {
    tokio::fs::create_dir_all(dir).await.map_err(|e| {
        ProvisionError::Backup(format!("cannot make the backup folder {}: {e}", dir.display()))
    })?;
    tokio::fs::canonicalize(dir)
        .await
        .map_err(|e| ProvisionError::Backup(format!("cannot open the backup folder {}: {e}", dir.display())))
}

/// Copies the tenant's public rows into a fresh staging schema.
async fn stage_public_rows(
    conn: &mut PgConnection,
    schema: &Ident,
    staging: &Ident,
) -> Result<(), ProvisionError> {
    let mut script = Script::new();
    script.sql("BEGIN;\nDROP SCHEMA IF EXISTS ").ident(staging);
    script.sql(" CASCADE;\nCREATE SCHEMA ").ident(staging);
    script.sql(";\nCREATE TABLE ").ident(staging);
    script
        .sql(".tenants_client AS SELECT * FROM public.tenants_client WHERE schema_name = ")
        .text(schema.name());
    script.sql(";\nCREATE TABLE ").ident(staging);
    script
        .sql(
            ".tenants_domain AS SELECT d.* FROM public.tenants_domain d \
             JOIN public.tenants_client c ON c.id = d.tenant_id WHERE c.schema_name = ",
        )
        .text(schema.name());
    script.sql(";\n");
    let clients: Marker<i64> = script.marker(|s| {
        s.sql("(SELECT count(*) FROM ")
            .ident(staging)
            .sql(".tenants_client)");
    });
    script.sql("COMMIT;\n");
    let output = script.finish()?.run(conn).await.map_err(|f| f.error)?;
    match output.get(clients).transpose()? {
        Some(1) => Ok(()),
        _ => {
            drop_staging(conn, staging).await?;
            Err(ProvisionError::Backup(format!(
                "tenant {:?} has no tenants_client row any more: the platform deleted it",
                schema.name()
            )))
        }
    }
}

async fn drop_staging(conn: &mut PgConnection, staging: &Ident) -> Result<(), ProvisionError> {
    let mut script = Script::new();
    script
        .sql("DROP SCHEMA IF EXISTS ")
        .ident(staging)
        .sql(" CASCADE;\n");
    script.finish()?.run(conn).await.map_err(|f| f.error)?;
    Ok(())
}

/// Dumps, then records the file and drops the staging schema together.
async fn keep_backup<S: JobSink>(
    env: &LifecycleEnv<'_, S>,
    conn: &mut PgConnection,
    schema: &Ident,
    staging: &Ident,
    file: &Path,
) -> Result<(), ProvisionError> {
    let bytes = archive::dump_schemas(env.target, &[schema.name(), staging.name()], file).await?;
    let path = file.to_string_lossy();
    let mut step = StepTx::begin(conn, schema.name(), "deletion_scheduled").await?;
    let mut script = Script::new();
    script.sql("DROP SCHEMA ").ident(staging).sql(" CASCADE;\n");
    script.finish()?.run(&mut step.tx).await.map_err(|f| f.error)?;
    sqlx::query(
        "UPDATE public.provision_lifecycle SET backup_path = $2, backup_bytes = $3 WHERE schema_name = $1",
    )
    .bind(schema.name())
    .bind(path.as_ref())
    .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
    .execute(&mut *step.tx)
    .await?;
    let detail = format!("wrote {path} ({bytes} bytes)");
    step.finish("backed_up", LifecycleStep::Backup, &detail, env.actor)
        .await
}

/// `verify_backup`: `pg_restore -l` reads the file and finds the schema and
/// the public rows in it; its SHA-256 is recorded, with the domains it
/// holds, in `provision_backup`.
pub(super) async fn verify_backup<S: JobSink>(
    env: &LifecycleEnv<'_, S>,
    conn: &mut PgConnection,
    schema: &Ident,
    row: &LifecycleRow,
) -> Result<(), ProvisionError> {
    let path = row
        .backup_path
        .as_deref()
        .ok_or_else(|| ProvisionError::WrongState("the backup has no file".into()))?;
    let deletion_id = deletion_id(row)?;
    let staging = staging_schema(deletion_id)?;
    let contents = archive::list_contents(Path::new(path)).await?;
    if !holds_schema(&contents, schema.name())
        || !holds_table_data(&contents, staging.name(), "tenants_client")
    {
        return Err(ProvisionError::Backup(format!(
            "{path} does not hold schema {:?} and the tenant's public rows: it is taken again",
            schema.name()
        )));
    }
    let entries = contents
        .lines()
        .filter(|l| !l.starts_with(';') && !l.is_empty())
        .count();
    let (sha256, bytes) = archive::fingerprint(Path::new(path)).await?;
    let mut step = StepTx::begin(conn, schema.name(), "backed_up").await?;
    sqlx::query(
        "INSERT INTO public.provision_backup (schema_name, deletion_id, staging_schema, path, bytes, sha256, domains)
         SELECT $1, $2, $3, $4, $5, $6,
                coalesce((SELECT array_agg(d.domain ORDER BY d.is_primary DESC, d.domain)
                          FROM public.tenants_domain d JOIN public.tenants_client c ON c.id = d.tenant_id
                          WHERE c.schema_name = $1), '{}')
         ON CONFLICT (deletion_id) DO UPDATE
         SET path = EXCLUDED.path, bytes = EXCLUDED.bytes, sha256 = EXCLUDED.sha256,
             domains = EXCLUDED.domains, taken_at = now()",
    )
    .bind(schema.name())
    .bind(deletion_id)
    .bind(staging.name())
    .bind(path)
    .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
    .bind(&sha256)
    .execute(&mut *step.tx)
    .await?;
    sqlx::query(
        "UPDATE public.provision_lifecycle SET backup_sha256 = $2, backup_bytes = $3 WHERE schema_name = $1",
    )
    .bind(schema.name())
    .bind(&sha256)
    .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
    .execute(&mut *step.tx)
    .await?;
    let detail = format!("pg_restore lists {entries} entries; sha256 {sha256}");
    step.finish("backup_verified", LifecycleStep::VerifyBackup, &detail, env.actor)
        .await
}

/// `drop_schema`: once more, just before, the file must be the one
/// verified; then `DROP SCHEMA … CASCADE` and the state move together.
pub(super) async fn drop_schema<S: JobSink>(
    env: &LifecycleEnv<'_, S>,
    conn: &mut PgConnection,
    schema: &Ident,
    row: &LifecycleRow,
) -> Result<(), ProvisionError> {
    let detail = if row.with_backup == Some(false) {
        format!(
            "dropped schema {} without a backup, as confirmed with --no-backup",
            schema.name()
        )
    } else {
        let (path, recorded): (String, Option<String>) = sqlx::query_as(
            "SELECT backup_path, backup_sha256 FROM public.provision_lifecycle WHERE schema_name = $1",
        )
        .bind(schema.name())
        .fetch_one(&mut *conn)
        .await?;
        let (sha256, _) = archive::fingerprint(Path::new(&path)).await?;
        if recorded.as_deref() != Some(sha256.as_str()) {
            return Err(ProvisionError::Backup(format!(
                "{path} changed since it was verified (sha256 now {sha256}): the schema was not dropped"
            )));
        }
        format!("dropped schema {}; its backup is {path}", schema.name())
    };
    let mut step = StepTx::begin(conn, schema.name(), &row.state).await?;
    let mut script = Script::new();
    script
        .sql("DROP SCHEMA IF EXISTS ")
        .ident(schema)
        .sql(" CASCADE;\nDELETE FROM public.provision_ledger_hint WHERE schema_name = ")
        .text(schema.name())
        .sql(";\n");
    script.finish()?.run(&mut step.tx).await.map_err(|f| f.error)?;
    step.finish("schema_dropped", LifecycleStep::DropSchema, &detail, env.actor)
        .await
}

/// `delete_rows`: the tenant's domains, then its `tenants_client` row.
pub(super) async fn delete_rows<S: JobSink>(
    env: &LifecycleEnv<'_, S>,
    conn: &mut PgConnection,
    schema: &Ident,
    _row: &LifecycleRow,
) -> Result<(), ProvisionError> {
    let mut step = StepTx::begin(conn, schema.name(), "schema_dropped").await?;
    let domains = sqlx::query(
        "DELETE FROM public.tenants_domain
         WHERE tenant_id IN (SELECT id FROM public.tenants_client WHERE schema_name = $1)",
    )
    .bind(schema.name())
    .execute(&mut *step.tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM public.tenants_client WHERE schema_name = $1")
        .bind(schema.name())
        .execute(&mut *step.tx)
        .await?;
    sqlx::query("UPDATE public.provision_lifecycle SET deleted_at = now() WHERE schema_name = $1")
        .bind(schema.name())
        .execute(&mut *step.tx)
        .await?;
    let detail = format!("deleted the tenants_client row and {domains} domain(s)");
    step.finish("deleted", LifecycleStep::DeleteRows, &detail, env.actor)
        .await
}

//! The `RestoreTenant` job, and the request that starts it: a deleted
//! tenant back from its backup, schema, public rows and domains, active.
//!
//! The request checks, before anything is written, that the file is a
//! backup this project recorded (by its SHA-256) and that the tenant's
//! schema name and domains are free now. The job checks the file again,
//! `pg_restore`s it in one transaction (the tenant's schema and the staging
//! schema with its rows), then puts the rows back and drops the staging
//! schema in another.

use std::path::Path;

use sqlx::{PgConnection, PgPool};

use super::archive;
use super::job::{LifecycleEnv, LifecycleOutcome, LifecycleRow, LifecycleStep, StepTx, run_lifecycle_job};
use crate::error::{InvalidInput, ProvisionError};
use crate::jobs::{JobKind, JobSink};
use crate::operator::record_lifecycle_event;
use crate::sql::{Ident, Script};

/// Runs (or resumes) the `RestoreTenant` job of `schema_name`.
pub async fn run_restore_tenant<S: JobSink>(
    env: &LifecycleEnv<'_, S>,
    schema_name: &str,
) -> Result<LifecycleOutcome, ProvisionError> {
    run_lifecycle_job(env, JobKind::RestoreTenant, schema_name, usize::MAX).await
}

/// A backup as recorded when it was verified.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RecordedBackup {
    /// Its number in `provision_backup`.
    pub id: i64,
    /// The tenant it holds.
    pub schema_name: String,
    /// The schema in the file that holds the tenant's public rows.
    pub staging_schema: String,
    /// Where it was written.
    pub path: String,
    /// Its SHA-256.
    pub sha256: String,
    /// The tenant's domains when it was taken.
    pub domains: Vec<String>,
}

/// Checks that `file` is a recorded backup of a deleted tenant (of
/// `schema_name`, when given) whose name and domains are free, and asks
/// for its restore. Nothing is written when a check fails.
pub async fn request_restore(
    pool: &PgPool,
    file: &Path,
    schema_name: Option<&str>,
    actor: &str,
) -> Result<RecordedBackup, ProvisionError> {
    let (sha256, _) = archive::fingerprint(file).await.map_err(|e| InvalidInput {
        field: "backup",
        rule: e.to_string(),
    })?;
    let found: Option<RecordedBackup> = sqlx::query_as(
        "SELECT id, schema_name, staging_schema, path, sha256, domains FROM public.provision_backup
         WHERE sha256 = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(&sha256)
    .fetch_optional(pool)
    .await?;
    let Some(backup) = found else {
        let path = tokio::fs::canonicalize(file).await.map_or_else(
            |_| file.to_string_lossy().into_owned(),
            |p| p.to_string_lossy().into_owned(),
        );
        let recorded: Option<String> = sqlx::query_scalar(
            "SELECT sha256 FROM public.provision_backup WHERE path = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(&path)
        .fetch_optional(pool)
        .await?;
        let rule = match recorded {
            Some(recorded) => format!(
                "{path} has SHA-256 {sha256}, but the backup written there was recorded with {recorded}: \
                 the file is damaged or was replaced; nothing was restored"
            ),
            None => format!(
                "no backup with SHA-256 {sha256} is recorded; `provision status` of a deleted tenant shows its \
                 backup file and checksum"
            ),
        };
        return Err(InvalidInput {
            field: "backup",
            rule,
        }
        .into());
    };
    if let Some(asked) = schema_name
        && asked != backup.schema_name
    {
        return Err(InvalidInput {
            field: "schema_name",
            rule: format!("the backup holds tenant {:?}, not {asked:?}", backup.schema_name),
        }
        .into());
    }
    let schema = backup.schema_name.as_str();
    let mut tx = pool.begin().await?;
    let row: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT state, failed_step FROM public.provision_lifecycle WHERE schema_name = $1 FOR UPDATE",
    )
    .bind(schema)
    .fetch_optional(&mut *tx)
    .await?;
    let state = match row {
        Some((state, _)) if state == "deleted" => state,
        Some((state, Some(step))) if state == "failed" && step.starts_with("restore_") => state,
        Some((state, _)) => {
            return Err(ProvisionError::WrongState(format!(
                "tenant {schema:?} is {state}, not deleted: only a deleted tenant is restored"
            )));
        }
        None => return Err(ProvisionError::UnknownTenant(schema.to_owned())),
    };
    let taken: (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM public.tenants_client WHERE schema_name = $1),
                to_regnamespace(quote_ident($1)) IS NOT NULL",
    )
    .bind(schema)
    .fetch_one(&mut *tx)
    .await?;
    if taken.0 || taken.1 {
        return Err(ProvisionError::conflict(
            "schema_name",
            format!(
                "{schema:?} is taken now ({}); nothing was restored",
                if taken.0 {
                    "a tenant of tenants_client"
                } else {
                    "a schema of that name exists"
                }
            ),
        ));
    }
    let owner: Option<(String, String)> = sqlx::query_as(
        "SELECT d.domain, c.schema_name FROM public.tenants_domain d
         JOIN public.tenants_client c ON c.id = d.tenant_id WHERE d.domain = ANY($1) ORDER BY d.domain LIMIT 1",
    )
    .bind(&backup.domains)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((domain, other)) = owner {
        return Err(ProvisionError::conflict(
            "domain",
            format!("domain {domain:?} belongs to tenant {other:?} now; nothing was restored"),
        ));
    }
    sqlx::query(
        "UPDATE public.provision_lifecycle
         SET state = 'restore_requested', restore_backup_id = $3, failed_step = NULL, failed_from_state = NULL,
             last_error = NULL, attempt = 0, job_id = NULL, changed_by = $4, changed_at = now(), updated_at = now()
         WHERE schema_name = $1 AND state = $2",
    )
    .bind(schema)
    .bind(&state)
    .bind(backup.id)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    let detail = format!("from {} (sha256 {})", file.display(), backup.sha256);
    record_lifecycle_event(
        &mut tx,
        schema,
        "restore_requested",
        "restore_requested",
        Ok(&detail),
        actor,
    )
    .await?;
    tx.commit().await?;
    Ok(backup)
}

async fn backup_of(conn: &mut PgConnection, row: &LifecycleRow) -> Result<RecordedBackup, ProvisionError> {
    let id = row
        .restore_backup_id
        .ok_or_else(|| ProvisionError::WrongState("the restore names no backup".into()))?;
    Ok(sqlx::query_as(
        "SELECT id, schema_name, staging_schema, path, sha256, domains FROM public.provision_backup WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?)
}

/// `restore_schema`: the file checked against its checksum again, then
/// `pg_restore` in one transaction. A schema and staging schema found
/// already there are this step's own, from a run that stopped before it
/// could record them.
pub(super) async fn restore_schema<S: JobSink>(
    env: &LifecycleEnv<'_, S>,
    conn: &mut PgConnection,
    schema: &Ident,
    row: &LifecycleRow,
) -> Result<(), ProvisionError> {
    let backup = backup_of(conn, row).await?;
    let (sha256, _) = archive::fingerprint(Path::new(&backup.path)).await?;
    if sha256 != backup.sha256 {
        return Err(ProvisionError::Backup(format!(
            "{} has SHA-256 {sha256}, not the {} recorded: nothing was restored",
            backup.path, backup.sha256
        )));
    }
    let staging = Ident::tenant_schema(&backup.staging_schema)?;
    let (schema_there, staging_there): (bool, bool) = sqlx::query_as(
        "SELECT to_regnamespace(quote_ident($1)) IS NOT NULL, to_regnamespace(quote_ident($2)) IS NOT NULL",
    )
    .bind(schema.name())
    .bind(staging.name())
    .fetch_one(&mut *conn)
    .await?;
    let detail = match (schema_there, staging_there) {
        (true, true) => format!("schema {} was restored already", schema.name()),
        (true, false) => {
            return Err(ProvisionError::conflict(
                "schema_name",
                format!(
                    "a schema {:?} was made since the restore was asked",
                    schema.name()
                ),
            ));
        }
        (false, staging_there) => {
            if staging_there {
                let mut script = Script::new();
                script.sql("DROP SCHEMA ").ident(&staging).sql(" CASCADE;\n");
                script.finish()?.run(conn).await.map_err(|f| f.error)?;
            }
            archive::restore(env.target, Path::new(&backup.path)).await?;
            format!("pg_restore of {} (sha256 {})", backup.path, backup.sha256)
        }
    };
    let step = StepTx::begin(conn, schema.name(), "restore_requested").await?;
    step.finish(
        "schema_restored",
        LifecycleStep::RestoreSchema,
        &detail,
        env.actor,
    )
    .await
}

/// `restore_rows`: the tenant's `tenants_client` and `tenants_domain` rows
/// back from the staging schema, ids included, the tenant active; the
/// staging schema dropped.
pub(super) async fn restore_rows<S: JobSink>(
    env: &LifecycleEnv<'_, S>,
    conn: &mut PgConnection,
    schema: &Ident,
    row: &LifecycleRow,
) -> Result<(), ProvisionError> {
    let backup = backup_of(conn, row).await?;
    let staging = Ident::tenant_schema(&backup.staging_schema)?;
    let mut step = StepTx::begin(conn, schema.name(), "schema_restored").await?;
    let mut script = Script::new();
    for table in ["tenants_client", "tenants_domain"] {
        let columns = shared_columns(&mut step.tx, staging.name(), table).await?;
        script
            .sql("INSERT INTO public.")
            .ident(&Ident::catalog_name(table)?)
            .sql(" (");
        script.join(&columns, ", ", |s, c| {
            s.ident(c);
        });
        script.sql(") OVERRIDING SYSTEM VALUE SELECT ");
        script.join(&columns, ", ", |s, c| {
            s.ident(c);
        });
        script
            .sql(" FROM ")
            .ident(&staging)
            .sql(".")
            .ident(&Ident::catalog_name(table)?)
            .sql(";\n");
    }
    script
        .sql("UPDATE public.tenants_client SET is_active = true WHERE schema_name = ")
        .text(schema.name())
        .sql(";\nDROP SCHEMA ")
        .ident(&staging)
        .sql(" CASCADE;\n");
    script.finish()?.run(&mut step.tx).await.map_err(|f| f.error)?;
    sqlx::query("UPDATE public.provision_backup SET restored_at = now() WHERE id = $1")
        .bind(backup.id)
        .execute(&mut *step.tx)
        .await?;
    sqlx::query("UPDATE public.provision_lifecycle SET reason = NULL WHERE schema_name = $1")
        .bind(schema.name())
        .execute(&mut *step.tx)
        .await?;
    let detail = format!(
        "restored its tenants_client row and domains {}; active again",
        backup.domains.join(", ")
    );
    step.finish("active", LifecycleStep::RestoreRows, &detail, env.actor)
        .await
}

/// The columns `table` has both in the staging schema and in public now, in
/// public's order: a column the platform added since the backup takes its
/// default, one it dropped is left out.
async fn shared_columns(
    tx: &mut PgConnection,
    staging: &str,
    table: &str,
) -> Result<Vec<Ident>, ProvisionError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT p.column_name::text FROM information_schema.columns p
         JOIN information_schema.columns s
           ON s.table_schema = $1 AND s.table_name = p.table_name AND s.column_name = p.column_name
         WHERE p.table_schema = 'public' AND p.table_name = $2
         ORDER BY p.ordinal_position",
    )
    .bind(staging)
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    Ok(names
        .iter()
        .map(|n| Ident::catalog_name(n))
        .collect::<Result<Vec<_>, _>>()?)
}

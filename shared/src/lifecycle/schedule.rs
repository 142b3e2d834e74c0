//! When the lifecycle jobs run: `delete-tenant` schedules a deletion (the
//! tenant suspended at once), `cancel-delete` takes it back while nothing
//! is dropped yet, `retry` puts a failed job back where it failed, and
//! workers find the jobs that are owed (a deletion come due, a job lost)
//! and push each once, its id claimed in PostgreSQL first.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Lifecycle;
use super::suspend::{RowWrite, TenantFacts};
use crate::error::{InvalidInput, ProvisionError};
use crate::jobs::{JobKind, JobRequest, JobSink};
use crate::operator::record_lifecycle_event;

/// The grace period when `delete-tenant` names none.
pub const DEFAULT_GRACE_DAYS: u32 = 7;

/// The longest grace period.
pub const MAX_GRACE_DAYS: u32 = 3650;

/// When a deletion is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteWhen {
    /// This many days from now.
    GraceDays(u32),
    /// Now.
    Now,
}

/// A scheduled deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledDeletion {
    /// Its number.
    pub deletion_id: i64,
    /// When it is due.
    pub delete_after: DateTime<Utc>,
    /// Whether it keeps a backup.
    pub with_backup: bool,
    /// Whether it replaced a deletion scheduled before.
    pub rescheduled: bool,
}

/// `delete-tenant`: suspends the tenant and schedules its deletion. A
/// deletion scheduled already is scheduled again, as asked now.
pub async fn schedule_deletion(
    pool: &PgPool,
    schema_name: &str,
    when: DeleteWhen,
    with_backup: bool,
    reason: Option<&str>,
    actor: &str,
) -> Result<ScheduledDeletion, ProvisionError> {
    let days = match when {
        DeleteWhen::GraceDays(days) if days > MAX_GRACE_DAYS => {
            return Err(InvalidInput {
                field: "grace",
                rule: format!("at most {MAX_GRACE_DAYS} days (got {days})"),
            }
            .into());
        }
        DeleteWhen::GraceDays(days) => days,
        DeleteWhen::Now => 0,
    };
    if let Some(r) = reason {
        crate::validate::reason(r)?;
    }
    let mut tx = pool.begin().await?;
    let facts = TenantFacts::lock(&mut tx, schema_name).await?;
    let rescheduled = match facts.lifecycle() {
        Lifecycle::Active | Lifecycle::Suspended => false,
        Lifecycle::DeletionScheduled => true,
        _ => return Err(facts.refuse("delete")),
    };
    let (deletion_id, delete_after): (i64, DateTime<Utc>) = sqlx::query_as(
        "SELECT coalesce($1, nextval('public.provision_deletion_id_seq')), now() + make_interval(days => $2)",
    )
    .bind(facts.deletion_id.filter(|_| rescheduled))
    .bind(i32::try_from(days).unwrap_or(i32::MAX))
    .fetch_one(&mut *tx)
    .await?;
    let write = RowWrite {
        state: "deletion_scheduled",
        reason,
        actor,
        deletion: Some((deletion_id, delete_after, with_backup)),
    };
    let detail = format!(
        "deletion {deletion_id} due {}{}, {}{}",
        delete_after.to_rfc3339(),
        if days == 0 {
            " (now)".to_owned()
        } else {
            format!(" ({days} days)")
        },
        if with_backup {
            "with a backup"
        } else {
            "WITHOUT a backup (--no-backup)"
        },
        reason.map(|r| format!(": {r}")).unwrap_or_default()
    );
    write
        .write(&mut tx, &facts, false, "schedule_deletion", &detail)
        .await?;
    tx.commit().await?;
    Ok(ScheduledDeletion {
        deletion_id,
        delete_after,
        with_backup,
        rescheduled,
    })
}

/// `cancel-delete`: active again, while the schema is not dropped yet (in
/// the grace period, or a deletion stopped before its drop).
pub async fn cancel_deletion(pool: &PgPool, schema_name: &str, actor: &str) -> Result<(), ProvisionError> {
    let mut tx = pool.begin().await?;
    let facts = TenantFacts::lock(&mut tx, schema_name).await?;
    let nothing_dropped = matches!(
        facts.row_state.as_deref(),
        Some("deletion_scheduled" | "backed_up" | "backup_verified")
    ) || (facts.row_state.as_deref() == Some("failed")
        && matches!(
            facts.failed_from_state.as_deref(),
            Some("deletion_scheduled" | "backed_up" | "backup_verified")
        ));
    if !nothing_dropped {
        return Err(match facts.lifecycle() {
            Lifecycle::Deleting | Lifecycle::DeletionFailed | Lifecycle::Deleted => {
                ProvisionError::WrongState(format!(
                    "cannot cancel the deletion of tenant {schema_name:?}: its schema is dropped already; \
                 once it is deleted, `provision restore-tenant --backup FILE` brings it back"
                ))
            }
            _ => facts.refuse("cancel the deletion of"),
        });
    }
    if let Some(id) = facts.deletion_id {
        // What a backup step that stopped halfway left.
        let staging = super::delete_tenant::staging_schema(id)?;
        let mut script = crate::sql::Script::new();
        script
            .sql("DROP SCHEMA IF EXISTS ")
            .ident(&staging)
            .sql(" CASCADE;\n");
        script.finish()?.run(&mut tx).await.map_err(|f| f.error)?;
    }
    let write = RowWrite {
        state: "active",
        reason: None,
        actor,
        deletion: None,
    };
    let detail = match &facts.backup_path {
        Some(path) => format!("deletion cancelled, active again; the backup {path} is kept"),
        None => "deletion cancelled, active again".to_owned(),
    };
    write
        .write(&mut tx, &facts, true, "cancel_delete", &detail)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The job that carries a lifecycle row in `state`, if any.
pub fn job_for(state: &str) -> Option<JobKind> {
    match state {
        "deletion_scheduled" | "backed_up" | "backup_verified" | "schema_dropped" => {
            Some(JobKind::DeleteTenant)
        }
        "restore_requested" | "schema_restored" => Some(JobKind::RestoreTenant),
        _ => None,
    }
}

/// Puts failed lifecycle jobs back where they failed: `schema_name`'s, or
/// every one when `None`. Returns the tenants moved, with the job each
/// needs.
pub async fn retry_failed_lifecycle(
    pool: &PgPool,
    schema_name: Option<&str>,
    actor: &str,
) -> Result<Vec<(String, JobKind)>, ProvisionError> {
    let mut tx = pool.begin().await?;
    let moved: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "UPDATE public.provision_lifecycle
         SET state = failed_from_state, failed_step = NULL, failed_from_state = NULL,
             attempt = 0, job_id = NULL, updated_at = now()
         WHERE state = 'failed' AND ($1::text IS NULL OR schema_name = $1)
         RETURNING schema_name, state, last_error",
    )
    .bind(schema_name)
    .fetch_all(&mut *tx)
    .await?;
    let mut jobs = Vec::with_capacity(moved.len());
    for (schema, state, last_error) in moved {
        let detail = format!("last error: {}", last_error.as_deref().unwrap_or("none"));
        record_lifecycle_event(&mut tx, &schema, "retry", &state, Ok(&detail), actor).await?;
        if let Some(kind) = job_for(&state) {
            jobs.push((schema, kind));
        }
    }
    tx.commit().await?;
    Ok(jobs)
}

/// Lifecycle jobs owed, at most `limit`: deletions come due that no job
/// was pushed for, and jobs in progress that have not moved for
/// `stale_after` (lost with Redis, say). Marks them touched, so the next
/// pass leaves them alone for another `stale_after`. With the id noted for
/// each (`None`: never pushed).
pub async fn lifecycle_jobs_owed(
    pool: &PgPool,
    stale_after: Duration,
    limit: i64,
) -> Result<Vec<(String, JobKind, Option<String>)>, ProvisionError> {
    let owed: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "WITH owed AS (
             SELECT schema_name FROM public.provision_lifecycle
             WHERE (state = 'deletion_scheduled' AND delete_after <= now()
                    AND (job_id IS NULL OR updated_at < now() - make_interval(secs => $1)))
                OR (state IN ('backed_up', 'backup_verified', 'schema_dropped', 'restore_requested', 'schema_restored')
                    AND (job_id IS NULL OR updated_at < now() - make_interval(secs => $1)))
             ORDER BY delete_after NULLS FIRST
             LIMIT $2
             FOR UPDATE SKIP LOCKED)
         UPDATE public.provision_lifecycle l SET updated_at = now()
         FROM owed WHERE l.schema_name = owed.schema_name
         RETURNING l.schema_name, l.state, l.job_id",
    )
    .bind(stale_after.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(owed
        .into_iter()
        .filter_map(|(schema, state, job_id)| job_for(&state).map(|kind| (schema, kind, job_id)))
        .collect())
}

/// Pushes the lifecycle job of `schema_name` once whoever else tries at
/// the same time: its id is claimed first, where `expected` is the id known
/// before. Returns the new id, or `None` when someone else claimed it or
/// no job is owed. A push that fails gives the claim back.
pub async fn push_owed_lifecycle_job<S: JobSink>(
    pool: &PgPool,
    sink: &S,
    schema_name: &str,
    kind: JobKind,
    expected: Option<&str>,
) -> Result<Option<String>, ProvisionError> {
    let id = ulid::Ulid::generate().to_string();
    let states: &[&str] = match kind {
        JobKind::RestoreTenant => &super::job::RESTORE_STATES,
        _ => &super::job::DELETION_STATES,
    };
    let claimed: Option<String> = sqlx::query_scalar(
        "UPDATE public.provision_lifecycle SET job_id = $2
         WHERE schema_name = $1 AND job_id IS NOT DISTINCT FROM $3 AND state = ANY($4)
         RETURNING job_id",
    )
    .bind(schema_name)
    .bind(&id)
    .bind(expected)
    .bind(states)
    .fetch_optional(pool)
    .await?;
    if claimed.is_none() {
        return Ok(None);
    }
    let mut job = JobRequest::now(kind, schema_name);
    job.id = Some(id.clone());
    if let Err(e) = sink.push(job).await {
        sqlx::query(
            "UPDATE public.provision_lifecycle SET job_id = $3 WHERE schema_name = $1 AND job_id = $2",
        )
        .bind(schema_name)
        .bind(&id)
        .bind(expected)
        .execute(pool)
        .await?;
        return Err(e);
    }
    Ok(Some(id))
}

/// A deletion or restore that should have moved and has not.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StuckLifecycle {
    /// The tenant.
    pub schema_name: String,
    /// Its lifecycle row's state.
    pub state: String,
    /// The step that failed, if failed.
    pub failed_step: Option<String>,
    /// The last error.
    pub last_error: Option<String>,
    /// Since when it has not moved.
    pub since: DateTime<Utc>,
}

/// Deletions due for longer than `stuck_after` that no job has carried on,
/// jobs in progress that have not moved for as long, and failed ones.
pub async fn stuck_lifecycle_jobs(
    pool: &PgPool,
    stuck_after: Duration,
) -> Result<Vec<StuckLifecycle>, ProvisionError> {
    Ok(sqlx::query_as(
        "SELECT schema_name, state, failed_step, last_error,
                CASE WHEN state = 'deletion_scheduled' THEN delete_after ELSE updated_at END AS since
         FROM public.provision_lifecycle
         WHERE state = 'failed'
            OR (state = 'deletion_scheduled' AND delete_after < now() - make_interval(secs => $1))
            OR (state IN ('backed_up', 'backup_verified', 'schema_dropped', 'restore_requested', 'schema_restored')
                AND updated_at < now() - make_interval(secs => $1))
         ORDER BY schema_name",
    )
    .bind(stuck_after.as_secs_f64())
    .fetch_all(pool)
    .await?)
}

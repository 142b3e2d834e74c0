//! What an operator's retry and migration run do, whoever asks (`provision
//! retry`, `provision migrate`, the dashboard): one place that puts
//! failed work back, hands it to the queue and records who asked, so every
//! way in does exactly the same.

use sqlx::PgPool;

use crate::error::ProvisionError;
use crate::jobs::{JobKind, JobRequest, JobSink};
use crate::lifecycle::schedule::{push_owed_lifecycle_job, retry_failed_lifecycle};
use crate::migrate_all::retry_failed_migration;
use crate::operator::{record_event, retry_failed};
use crate::request::note_job_id;
use crate::state::TenantState;

/// Which failures a retry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryTarget<'a> {
    /// One tenant: its failed provisioning, its failed deletion or restore,
    /// or (ready) its schema's failed migration in its latest run. None of
    /// them is an error naming its state.
    Tenant(&'a str),
    /// Every failed tenant and every failed schema migration.
    AllFailed,
    /// These tenants' failed provisioning (the failed tenants of a filtered
    /// list); one that is no longer failed is passed over.
    Tenants(&'a [String]),
}

/// A tenant put back in the state it failed in, and its new job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequeuedTenant {
    /// The tenant.
    pub schema_name: String,
    /// The state it resumes from.
    pub state: TenantState,
    /// The `CreateTenant` job pushed for it.
    pub job_id: String,
}

/// What a retry re-queued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requeued {
    /// Tenants whose provisioning resumes.
    pub tenants: Vec<RequeuedTenant>,
    /// Schemas whose failed migration is pending again, with their run.
    pub migrations: Vec<(String, i64)>,
    /// Tenants whose deletion or restore resumes, with its job and the
    /// job's id.
    pub lifecycle: Vec<(String, JobKind, Option<String>)>,
}

impl Requeued {
    /// Tenants and schema migrations re-queued.
    pub fn len(&self) -> usize {
        self.tenants.len() + self.migrations.len() + self.lifecycle.len()
    }

    /// Whether nothing was re-queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Puts the failures of `target` back and re-queues them: each failed
/// tenant resumes from the state it failed in (the steps already done are
/// not redone) with a new `CreateTenant` job; each failed schema migration
/// goes back to pending in its run, which a dispatcher hands out. Both are
/// recorded in the tenant's history with `actor`.
pub async fn retry_and_requeue<S: JobSink>(
    pool: &PgPool,
    sink: &S,
    target: RetryTarget<'_>,
    actor: &str,
) -> Result<Requeued, ProvisionError> {
    let mut moved = Vec::new();
    let mut migrations = Vec::new();
    let mut lifecycle = Vec::new();
    match target {
        RetryTarget::Tenant(schema) => {
            let not_failed = match retry_failed(pool, Some(schema), actor).await {
                Ok(tenants) => {
                    moved = tenants;
                    None
                }
                // Not failed, or made by the platform (no provisioning
                // here): its schema's migration may still have failed.
                Err(e @ (ProvisionError::WrongState(_) | ProvisionError::UnknownTenant(_))) => Some(e),
                Err(e) => return Err(e),
            };
            migrations = retry_migrations(pool, Some(schema), actor).await?;
            lifecycle = retry_failed_lifecycle(pool, Some(schema), actor).await?;
            if let (Some(e), true) = (not_failed, migrations.is_empty() && lifecycle.is_empty()) {
                return Err(e);
            }
        }
        RetryTarget::AllFailed => {
            moved = retry_failed(pool, None, actor).await?;
            migrations = retry_migrations(pool, None, actor).await?;
            lifecycle = retry_failed_lifecycle(pool, None, actor).await?;
        }
        RetryTarget::Tenants(schemas) => {
            for schema in schemas {
                match retry_failed(pool, Some(schema), actor).await {
                    Ok(tenants) => moved.extend(tenants),
                    // Retried, or gone, since the list was read.
                    Err(ProvisionError::WrongState(_) | ProvisionError::UnknownTenant(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let mut tenants = Vec::with_capacity(moved.len());
    for (schema_name, state) in moved {
        let job_id = sink
            .push(JobRequest::now(JobKind::CreateTenant, &schema_name))
            .await?;
        note_job_id(pool, &schema_name, &job_id).await?;
        tenants.push(RequeuedTenant {
            schema_name,
            state,
            job_id,
        });
    }
    let mut lifecycle_jobs = Vec::with_capacity(lifecycle.len());
    for (schema_name, kind) in lifecycle {
        let job_id = push_owed_lifecycle_job(pool, sink, &schema_name, kind, None).await?;
        lifecycle_jobs.push((schema_name, kind, job_id));
    }
    Ok(Requeued {
        tenants,
        migrations,
        lifecycle: lifecycle_jobs,
    })
}

/// Sends failed schema migrations back to pending and records each in its
/// tenant's history.
async fn retry_migrations(
    pool: &PgPool,
    schema_name: Option<&str>,
    actor: &str,
) -> Result<Vec<(String, i64)>, ProvisionError> {
    let retried = retry_failed_migration(pool, schema_name).await?;
    if !retried.is_empty() {
        let mut conn = pool.acquire().await?;
        for (schema, run_id) in &retried {
            record_event(
                &mut conn,
                schema,
                "retry_migration",
                &format!("its failed migration in migrate-all run {run_id} is pending again"),
                actor,
            )
            .await?;
        }
    }
    Ok(retried)
}

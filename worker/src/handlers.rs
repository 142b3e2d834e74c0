//! The apalis handlers: each parses its payload, runs the plain function of
//! `shared` in a span naming the job, and turns the outcome into what the
//! queue library should do. Everything worth keeping is already recorded in
//! PostgreSQL by then.

use std::sync::Arc;

use apalis_core::error::{AbortError, BoxDynError};
use apalis_core::task::attempt::Attempt;
use apalis_core::task::data::Data;
use apalis_core::task::task_id::TaskId;
use provision_shared::jobs::{CreateTenant, JobKind, MigrateSchema, SeedDemoData};
use provision_shared::migrate::TenantMigrations;
use provision_shared::migrate_all::{SchemaOutcome, migrate_run_schemas, migrate_tenant};
use provision_shared::operator::record_rejected_job;
use provision_shared::provision::{
    JobEnv, JobOutcome, SeedOutcome, mark_demo_data_failed, run_create_tenant, run_seed_demo_data,
};
use provision_shared::{ProvisionError, TenantState, validate};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgPool;
use tracing::Instrument;

use crate::metrics::{JobResult, Metrics};
use provision_queue::RedisQueue;

/// What every handler shares.
#[derive(Debug)]
pub struct WorkerState {
    /// PostgreSQL, for the worker's own work: rejected payloads, the
    /// maintenance loop, the schedule, metrics.
    pub pool: PgPool,
    /// PostgreSQL, for the jobs: one pool per kind.
    pub job_pools: JobPools,
    /// The queues, for follow-up jobs.
    pub queue: RedisQueue,
    /// Tenant migrations to apply.
    pub migrations: TenantMigrations,
    /// This process's unique name, recorded as the actor of transitions.
    pub name: String,
    /// Executions of a step before its tenant is failed.
    pub max_attempts: i32,
    /// Job counters and step timings.
    pub metrics: Arc<Metrics>,
}

/// One PostgreSQL pool per job kind, each of its kind's concurrency plus
/// one (a job that holds its tenant's connection may briefly need a second,
/// to record a retry).
///
/// Why not one shared pool: sqlx hands a connection back to its pool in a
/// task of its own, after a round trip, so the next job often finds none
/// idle and the pool opens another, up to its limit; and the idle
/// connections are reused first in, first out, so from then on every one of
/// them takes its turn. Each backend that sat idle must then catch up on
/// the catalog invalidations of all the DDL the others ran, and its caches
/// start cold. With small pools per kind, the connections in turn are few,
/// and one kind's jobs cannot take the connections another kind needs.
#[derive(Debug)]
pub struct JobPools {
    create_tenant: PgPool,
    seed_demo_data: PgPool,
    migrate_schema: PgPool,
}

impl JobPools {
    /// Opens the three pools on `url` for `concurrency` jobs of each kind.
    pub async fn connect(url: &str, concurrency: usize) -> Result<Self, ProvisionError> {
        let size = u32::try_from(concurrency + 1).unwrap_or(u32::MAX);
        Ok(Self {
            create_tenant: provision_shared::db::connect(url, size).await?,
            seed_demo_data: provision_shared::db::connect(url, size).await?,
            migrate_schema: provision_shared::db::connect(url, size).await?,
        })
    }

    /// The pool of `kind`'s jobs.
    pub fn get(&self, kind: JobKind) -> &PgPool {
        match kind {
            JobKind::CreateTenant => &self.create_tenant,
            JobKind::SeedDemoData => &self.seed_demo_data,
            JobKind::MigrateSchema => &self.migrate_schema,
        }
    }

    /// Closes every pool's connections.
    pub async fn close(&self) {
        futures::join!(
            self.create_tenant.close(),
            self.seed_demo_data.close(),
            self.migrate_schema.close()
        );
    }
}

/// What every payload carries.
trait Payload {
    fn schema_name(&self) -> &str;

    /// Further schemas the job is for.
    fn more_schema_names(&self) -> &[String] {
        &[]
    }
}

impl Payload for CreateTenant {
    fn schema_name(&self) -> &str {
        &self.schema_name
    }
}

impl Payload for SeedDemoData {
    fn schema_name(&self) -> &str {
        &self.schema_name
    }
}

impl Payload for MigrateSchema {
    fn schema_name(&self) -> &str {
        &self.schema_name
    }

    fn more_schema_names(&self) -> &[String] {
        &self.more_schema_names
    }
}

/// The handlers' shared state, as apalis hands it over.
pub type State = Data<Arc<WorkerState>>;

/// Parses a payload; one that does not parse is set aside in
/// `provision_rejected_job` and ends its job without a retry.
async fn parse<T: DeserializeOwned + Payload>(
    state: &WorkerState,
    kind: JobKind,
    id: &TaskId,
    args: Value,
) -> Result<Option<T>, BoxDynError> {
    let parsed = serde_json::from_value::<T>(args.clone())
        .map_err(|e| e.to_string())
        .and_then(|job| {
            // A payload naming an impossible schema is as unreadable as one
            // that does not parse: no handler may touch it.
            std::iter::once(job.schema_name())
                .chain(job.more_schema_names().iter().map(String::as_str))
                .try_for_each(validate::schema_name)
                .map(|()| job)
                .map_err(|e| e.to_string())
        });
    match parsed {
        Ok(job) => Ok(Some(job)),
        Err(e) => {
            let queue = provision_queue::layout::queue_name(state.queue.namespace(), kind);
            tracing::error!(job = kind.name(), job_id = %id, error = %e, "rejected a job whose payload does not parse");
            record_rejected_job(
                &state.pool,
                &queue,
                &id.to_string(),
                &args.to_string(),
                &e,
                &state.name,
            )
            .await?;
            Ok(None)
        }
    }
}

/// What the library should do with an error that escaped the handler:
/// nothing more for a permanent one (it is recorded), its own retry for a
/// transient one (PostgreSQL was not there to record anything).
fn escape(error: ProvisionError) -> BoxDynError {
    if error.is_permanent() {
        tracing::error!(error = %error, "job failed permanently");
        Box::new(AbortError::new(error))
    } else {
        tracing::warn!(error = %error, "job failed before it could record anything; the queue will retry it");
        Box::new(error)
    }
}

/// The counter for a job that ended with `result`.
fn counted<T>(result: &Result<T, ProvisionError>) -> JobResult {
    match result {
        Ok(_) => JobResult::Succeeded,
        Err(e) if e.is_permanent() => JobResult::Failed,
        Err(_) => JobResult::Retried,
    }
}

/// `CreateTenant`.
pub async fn create_tenant(
    args: Value,
    state: State,
    id: TaskId,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    state.metrics.job(JobKind::CreateTenant, JobResult::Started);
    let Some(job) = parse::<CreateTenant>(&state, JobKind::CreateTenant, &id, args).await? else {
        state.metrics.job(JobKind::CreateTenant, JobResult::Failed);
        return Ok(());
    };
    let span = tracing::info_span!(
        "job",
        job = JobKind::CreateTenant.name(),
        job_id = %id,
        schema_name = %job.schema_name,
        delivery = attempt.current()
    );
    async {
        let env = JobEnv {
            pool: state.job_pools.get(JobKind::CreateTenant),
            sink: &state.queue,
            migrations: &state.migrations,
            actor: &state.name,
            max_attempts: state.max_attempts,
        };
        let result = run_create_tenant(&env, &job.schema_name).await;
        let counted = match &result {
            Ok(JobOutcome::Finished(TenantState::Failed)) => JobResult::Failed,
            Ok(JobOutcome::RetryScheduled { .. }) => JobResult::Retried,
            Ok(_) => JobResult::Succeeded,
            Err(e) if e.is_permanent() => JobResult::Failed,
            Err(_) => JobResult::Retried,
        };
        state.metrics.job(JobKind::CreateTenant, counted);
        match result {
            Ok(JobOutcome::Finished(final_state)) => {
                tracing::info!(state = %final_state, "job finished");
                Ok(())
            }
            Ok(outcome) => {
                tracing::info!(?outcome, "job ended");
                Ok(())
            }
            Err(e) => Err(escape(e)),
        }
    }
    .instrument(span)
    .await
}

/// `SeedDemoData`.
pub async fn seed_demo_data(
    args: Value,
    state: State,
    id: TaskId,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    state.metrics.job(JobKind::SeedDemoData, JobResult::Started);
    let Some(job) = parse::<SeedDemoData>(&state, JobKind::SeedDemoData, &id, args).await? else {
        state.metrics.job(JobKind::SeedDemoData, JobResult::Failed);
        return Ok(());
    };
    let span = tracing::info_span!(
        "job",
        job = JobKind::SeedDemoData.name(),
        job_id = %id,
        schema_name = %job.schema_name,
        delivery = attempt.current()
    );
    async {
        let pool = state.job_pools.get(JobKind::SeedDemoData);
        let result = run_seed_demo_data(pool, &job.schema_name, &state.name).await;
        state.metrics.job(JobKind::SeedDemoData, counted(&result));
        // Given up: a permanent error, or the last of the attempts.
        if let Err(e) = &result
            && (e.is_permanent() || attempt.current() >= usize::try_from(state.max_attempts).unwrap_or(8))
        {
            tracing::warn!(error = %e, "seeding demo data failed");
            mark_demo_data_failed(pool, &job.schema_name, &e.to_string(), &state.name)
                .await
                .map_err(escape)?;
            return Ok(());
        }
        match result {
            Ok(SeedOutcome::Seeded) => {
                tracing::info!("demo data seeded");
                Ok(())
            }
            Ok(SeedOutcome::AlreadySeeded) => {
                tracing::info!("demo data already there");
                Ok(())
            }
            Err(e) => Err(escape(e)),
        }
    }
    .instrument(span)
    .await
}

/// `MigrateSchema`.
pub async fn migrate_schema_job(
    args: Value,
    state: State,
    id: TaskId,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    state.metrics.job(JobKind::MigrateSchema, JobResult::Started);
    let Some(job) = parse::<MigrateSchema>(&state, JobKind::MigrateSchema, &id, args).await? else {
        state.metrics.job(JobKind::MigrateSchema, JobResult::Failed);
        return Ok(());
    };
    let span = tracing::info_span!(
        "job",
        job = JobKind::MigrateSchema.name(),
        job_id = %id,
        schema_name = %job.schema_name,
        delivery = attempt.current()
    );
    async {
        if let Some(run_id) = job.run_id {
            let mut schema_names = vec![job.schema_name.clone()];
            schema_names.extend(job.more_schema_names.iter().cloned());
            let result = migrate_run_schemas(
                state.job_pools.get(JobKind::MigrateSchema),
                &state.migrations,
                run_id,
                &schema_names,
                state.max_attempts,
            )
            .await;
            state.metrics.job(JobKind::MigrateSchema, counted(&result));
            for (schema_name, outcome) in result.map_err(escape)? {
                match &outcome {
                    SchemaOutcome::Failed(error) => {
                        tracing::warn!(run_id, schema_name, %error, "schema migration failed")
                    }
                    SchemaOutcome::Retrying(error) => {
                        tracing::warn!(run_id, schema_name, %error, "schema migration will be retried")
                    }
                    SchemaOutcome::NotQueued => {
                        tracing::info!(
                            run_id,
                            schema_name,
                            "schema no longer queued in its run (a duplicate job): skipped"
                        )
                    }
                    other => tracing::info!(run_id, schema_name, outcome = ?other, "schema migrated"),
                }
            }
            return Ok(());
        }
        let pool = state.job_pools.get(JobKind::MigrateSchema);
        let result = migrate_tenant(pool, &state.migrations, &job.schema_name, &state.name).await;
        state.metrics.job(JobKind::MigrateSchema, counted(&result));
        match result {
            Ok(done) => {
                tracing::info!(applied = ?done.applied, version = done.version, "schema migrated");
                Ok(())
            }
            // Recorded in the tenant's history.
            Err(e) if e.is_permanent() => {
                tracing::warn!(error = %e, "schema migration failed");
                Ok(())
            }
            Err(e) => Err(escape(e)),
        }
    }
    .instrument(span)
    .await
}

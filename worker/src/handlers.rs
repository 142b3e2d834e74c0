//! The apalis handlers: each parses its payload, runs the plain function of
//! `shared` in a span naming the job, and turns the outcome into what the
//! queue library should do. Everything worth keeping is already recorded in
//! PostgreSQL by then.

use std::sync::Arc;

use apalis_core::error::{AbortError, BoxDynError};
use apalis_core::task::attempt::Attempt;
use apalis_core::task::data::Data;
use apalis_core::task::task_id::TaskId;
use provision_queue::RedisQueue;
use provision_shared::create_tenant::{JobEnv, JobOutcome, run_create_tenant};
use provision_shared::demo_data::{SeedOutcome, run_seed_demo_data};
use provision_shared::jobs::{
    CreateTenant, DeleteTenant, JobKind, JobRequest, JobSink, MigrateSchema, Payload, RestoreTenant,
    SeedDemoData,
};
use provision_shared::lifecycle::archive::PgTarget;
use provision_shared::lifecycle::delete_tenant::run_delete_tenant;
use provision_shared::lifecycle::restore_tenant::run_restore_tenant;
use provision_shared::lifecycle::{LifecycleEnv, LifecycleOutcome};
use provision_shared::migrate_all::{SchemaOutcome, migrate_run_schemas};
use provision_shared::migration_set::SetInForce;
use provision_shared::operator::record_rejected_job;
use provision_shared::retry::{RetryPolicy, backoff_ms};
use provision_shared::{ProvisionError, TenantState, validate};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgPool;
use tracing::Instrument;

use crate::metrics::{JobResult, Metrics};

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
    /// The tenant migration set in force, swapped when a newer one is
    /// imported.
    pub migrations: SetInForce,
    /// This process's unique name, recorded as the actor of transitions.
    pub name: String,
    /// The one retry policy of every job kind.
    pub policy: RetryPolicy,
    /// Job counters and step timings.
    pub metrics: Arc<Metrics>,
    /// `PROVISION_BACKUP_DIR`, where deletions write their backups.
    pub backup_dir: Option<std::path::PathBuf>,
    /// Where `pg_dump` and `pg_restore` connect.
    pub pg_target: PgTarget,
    /// `PROVISION_SUSPEND_EXPIRED_AFTER`: the nightly pass suspends tenants
    /// whose `paid_until` passed this many days ago (`None`: never).
    pub suspend_expired_after: Option<u32>,
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
/// The two lifecycle kinds share one small pool, connected when their first
/// job comes: their jobs are rare, and spend most of their time in
/// `pg_dump` and `pg_restore`.
#[derive(Debug)]
pub struct JobPools {
    create_tenant: PgPool,
    seed_demo_data: PgPool,
    migrate_schema: PgPool,
    lifecycle: PgPool,
}

/// Lifecycle jobs run at once, per kind, at most.
pub const LIFECYCLE_CONCURRENCY: usize = 2;

impl JobPools {
    /// Opens the three pools on `url` for `concurrency` jobs of each kind.
    pub async fn connect(url: &str, concurrency: usize) -> Result<Self, ProvisionError> {
        let size = u32::try_from(concurrency + 1).unwrap_or(u32::MAX);
        Ok(Self {
            create_tenant: provision_shared::db::connect(url, size).await?,
            seed_demo_data: provision_shared::db::connect(url, size).await?,
            migrate_schema: provision_shared::db::connect(url, size).await?,
            lifecycle: provision_shared::db::connect_lazy(url, 2 * LIFECYCLE_CONCURRENCY as u32 + 1)?,
        })
    }

    /// The pool of `kind`'s jobs.
    pub fn get(&self, kind: JobKind) -> &PgPool {
        match kind {
            JobKind::CreateTenant => &self.create_tenant,
            JobKind::SeedDemoData => &self.seed_demo_data,
            JobKind::MigrateSchema => &self.migrate_schema,
            JobKind::DeleteTenant | JobKind::RestoreTenant => &self.lifecycle,
        }
    }

    /// Closes every pool's connections.
    pub async fn close(&self) {
        futures::join!(
            self.create_tenant.close(),
            self.seed_demo_data.close(),
            self.migrate_schema.close(),
            self.lifecycle.close()
        );
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
            if job.version() != T::VERSION {
                return Err(format!(
                    "payload version {} is not {}, the one this worker reads",
                    job.version(),
                    T::VERSION
                ));
            }
            // A payload naming an impossible schema is as unreadable as one
            // that does not parse: no handler may touch it.
            job.schema_names()
                .into_iter()
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

/// What becomes of a job whose error escaped its handler. A permanent one
/// is recorded, or was refused before anything was done: the job ends. A
/// transient one came before the attempt could be counted in PostgreSQL
/// (the database was away): the job is pushed again after the retry
/// policy's delay for this delivery, so the one policy holds here too. Only
/// if that push fails as well does the queue library keep the job for its
/// own retry; PostgreSQL still knows what is owed, and the reconciler
/// pushes it once both are back.
async fn escape(
    state: &WorkerState,
    error: ProvisionError,
    delivery: usize,
    mut again: JobRequest,
) -> Result<(), BoxDynError> {
    if error.is_permanent() {
        tracing::error!(error = %error, "job failed permanently");
        return Err(Box::new(AbortError::new(error)));
    }
    again.delay_ms = backoff_ms(i32::try_from(delivery).unwrap_or(i32::MAX));
    match state.queue.push(again).await {
        Ok(id) => {
            tracing::warn!(error = %error, retry_job_id = %id, "job failed before it could record anything; pushed again");
            Ok(())
        }
        Err(push) => {
            tracing::warn!(error = %error, push_error = %push, "job failed before it could record anything, and could not be pushed again; the queue library keeps it");
            Err(Box::new(error))
        }
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
        let again = || JobRequest::now(JobKind::CreateTenant, &job.schema_name);
        let set = match state.migrations.get() {
            Ok(set) => set,
            Err(e) => return escape(&state, e, attempt.current(), again()).await,
        };
        let env = JobEnv {
            pool: state.job_pools.get(JobKind::CreateTenant),
            sink: &state.queue,
            migrations: &set,
            actor: &state.name,
            policy: state.policy,
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
            Err(e) => {
                escape(
                    &state,
                    e,
                    attempt.current(),
                    JobRequest::now(JobKind::CreateTenant, &job.schema_name),
                )
                .await
            }
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
        let result =
            run_seed_demo_data(pool, &state.queue, &job.schema_name, &state.name, state.policy).await;
        let counted = match &result {
            Ok(SeedOutcome::Failed(_)) => JobResult::Failed,
            Ok(SeedOutcome::RetryScheduled { .. }) => JobResult::Retried,
            other => counted(other),
        };
        state.metrics.job(JobKind::SeedDemoData, counted);
        match result {
            Ok(SeedOutcome::Seeded) => tracing::info!("demo data seeded"),
            Ok(SeedOutcome::AlreadySeeded) => tracing::info!("demo data already there"),
            Ok(SeedOutcome::RetryScheduled {
                attempt,
                delay_ms,
                error,
            }) => {
                tracing::warn!(attempt, delay_ms, %error, "seeding demo data will be retried")
            }
            Ok(SeedOutcome::Failed(error)) => tracing::warn!(%error, "seeding demo data failed"),
            Err(e) => {
                return escape(
                    &state,
                    e,
                    attempt.current(),
                    JobRequest::now(JobKind::SeedDemoData, &job.schema_name),
                )
                .await;
            }
        }
        Ok(())
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
        let schema_names: Vec<String> = job.schema_names().into_iter().map(str::to_owned).collect();
        let run_id = job.run_id;
        let set = match state.migrations.get() {
            Ok(set) => set,
            Err(e) => {
                let mut again = JobRequest::migrate(job.run_id, &job.schema_name);
                again.more_schema_names = job.more_schema_names.clone();
                return escape(&state, e, attempt.current(), again).await;
            }
        };
        let result = migrate_run_schemas(
            state.job_pools.get(JobKind::MigrateSchema),
            &set,
            run_id,
            &schema_names,
            state.policy,
            &state.name,
        )
        .await;
        state.metrics.job(JobKind::MigrateSchema, counted(&result));
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(e) => {
                if let ProvisionError::StaleSet(why) = &e {
                    tracing::info!(%why, "loading the tenant migration set in force");
                    if let Err(reload) = state.migrations.reload(&state.pool).await {
                        tracing::warn!(error = %reload, "could not load the tenant migration set");
                    }
                }
                let mut again = JobRequest::migrate(run_id, &job.schema_name);
                again.more_schema_names = job.more_schema_names.clone();
                return escape(&state, e, attempt.current(), again).await;
            }
        };
        for (schema_name, outcome) in outcomes {
            match &outcome {
                SchemaOutcome::Failed(error) => {
                    tracing::warn!(run_id, schema_name, %error, "schema migration failed")
                }
                SchemaOutcome::Retrying(error) => {
                    tracing::warn!(run_id, schema_name, %error, "schema migration will be retried")
                }
                SchemaOutcome::NotQueued => tracing::info!(
                    run_id,
                    schema_name,
                    "schema no longer queued in its run (a duplicate job): skipped"
                ),
                other => tracing::info!(run_id, schema_name, outcome = ?other, "schema migrated"),
            }
        }
        Ok(())
    }
    .instrument(span)
    .await
}

/// `DeleteTenant`.
pub async fn delete_tenant(
    args: Value,
    state: State,
    id: TaskId,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    lifecycle_job::<DeleteTenant>(JobKind::DeleteTenant, args, state, id, attempt).await
}

/// `RestoreTenant`.
pub async fn restore_tenant(
    args: Value,
    state: State,
    id: TaskId,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    lifecycle_job::<RestoreTenant>(JobKind::RestoreTenant, args, state, id, attempt).await
}

/// The two lifecycle jobs: one payload shape, one way of ending.
async fn lifecycle_job<T: DeserializeOwned + Payload>(
    kind: JobKind,
    args: Value,
    state: State,
    id: TaskId,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    state.metrics.job(kind, JobResult::Started);
    let Some(job) = parse::<T>(&state, kind, &id, args).await? else {
        state.metrics.job(kind, JobResult::Failed);
        return Ok(());
    };
    let schema_name = job.schema_names()[0].to_owned();
    let span = tracing::info_span!(
        "job",
        job = kind.name(),
        job_id = %id,
        schema_name = %schema_name,
        delivery = attempt.current()
    );
    async {
        let env = LifecycleEnv {
            pool: state.job_pools.get(kind),
            sink: &state.queue,
            actor: &state.name,
            policy: state.policy,
            backup_dir: state.backup_dir.as_deref(),
            target: &state.pg_target,
        };
        let result = match kind {
            JobKind::RestoreTenant => run_restore_tenant(&env, &schema_name).await,
            _ => run_delete_tenant(&env, &schema_name).await,
        };
        let counted = match &result {
            Ok(LifecycleOutcome::Finished(s)) if s == "failed" => JobResult::Failed,
            Ok(LifecycleOutcome::RetryScheduled { .. }) => JobResult::Retried,
            other => counted(other),
        };
        state.metrics.job(kind, counted);
        match result {
            Ok(LifecycleOutcome::Finished(final_state)) => {
                tracing::info!(state = %final_state, "job finished");
                Ok(())
            }
            Ok(outcome) => {
                tracing::info!(?outcome, "job ended");
                Ok(())
            }
            Err(e) => escape(&state, e, attempt.current(), JobRequest::now(kind, &schema_name)).await,
        }
    }
    .instrument(span)
    .await
}

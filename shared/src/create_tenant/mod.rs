//! The `CreateTenant` job: a tenant's steps from its current state to
//! `ready`, each idempotent and recorded.
//!
//! Steps commit together with the guarded `UPDATE … WHERE state = $from`
//! that moves the state past them, so a crash leaves either both or
//! neither, and a step that already happened is never run again: the state
//! says it is done. A job's first try runs every step left as one
//! transaction (one state change, one history row per step); a step that
//! runs again goes alone, so what keeps failing is pinned to its step.
//! Steps of one tenant run under a per-tenant advisory lock
//! ([`lock::TenantLock`]), so two workers never interleave them.

mod lock;
mod steps;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::error::{ProvisionError, sqlstate_of, violated_constraint};
use crate::jobs::{JobKind, JobRequest, JobSink};
use crate::ledger::{Ledger, read_ledger};
use crate::migration_set::MigrationSet;
use crate::names::{constraint, sqlstate};
use crate::retry::{Next, RetryPolicy, backoff_ms};
use crate::sql::{Ident, Script, ScriptOutput};
use crate::state::{Step, TenantState};
use crate::tenant_migration::{explain_migration_error, guard_message, write_one_by_one};

use lock::{Begun, TenantLock, TenantRow};
use steps::{Planned, StepMarkers, Tenant, plan, write_steps};

/// What a job handler needs: the pool, where to push follow-up jobs, the
/// tenant migrations, who is acting, and the retry policy.
#[derive(Debug)]
pub struct JobEnv<'a, S> {
    /// PostgreSQL.
    pub pool: &'a PgPool,
    /// The queue, for follow-up jobs.
    pub sink: &'a S,
    /// The tenant migration set in force.
    pub migrations: &'a MigrationSet,
    /// Recorded as the actor of every transition (the worker's name).
    pub actor: &'a str,
    /// When a failed step is tried again, and when it is failed for good.
    pub policy: RetryPolicy,
}

/// How a job ended. Every variant is a normal end for the queue: what went
/// wrong is recorded in PostgreSQL, and retries are scheduled by the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The job moved the tenant to this final state.
    Finished(TenantState),
    /// Nothing to do: the tenant was already in this final state (a
    /// duplicate or late job).
    AlreadyFinal(TenantState),
    /// Another job holds the tenant right now; this one was pushed again to
    /// look a little later.
    Busy,
    /// Stopped after the number of steps asked for, in this state (tests
    /// step a provisioning this way).
    Paused(TenantState),
    /// A transient error; the job was pushed again to run after a delay.
    RetryScheduled {
        /// The step that hit the error.
        step: String,
        /// Which execution of that step this was.
        attempt: i32,
        /// Delay before the next one, in milliseconds.
        delay_ms: u64,
        /// The error.
        error: String,
    },
}

/// Runs (or resumes) the `CreateTenant` job of `schema_name`: every step
/// from the tenant's current state to `ready`.
pub async fn run_create_tenant<S: JobSink>(
    env: &JobEnv<'_, S>,
    schema_name: &str,
) -> Result<JobOutcome, ProvisionError> {
    run_create_tenant_steps(env, schema_name, usize::MAX).await
}

/// [`run_create_tenant`], stopping after at most `max_steps` steps: what a
/// crash between two steps leaves behind, on purpose.
pub async fn run_create_tenant_steps<S: JobSink>(
    env: &JobEnv<'_, S>,
    schema_name: &str,
    max_steps: usize,
) -> Result<JobOutcome, ProvisionError> {
    let schema = Ident::tenant_schema(schema_name)?;
    let Some((mut lock, begun)) = TenantLock::try_begin(env.pool, &schema).await? else {
        // Another job holds the tenant. It is most likely alive and will
        // finish; but its process may be dying with the lock not yet
        // released, so look again shortly rather than trust it. A duplicate
        // job ends for good once the tenant is ready.
        let mut again = JobRequest::now(JobKind::CreateTenant, schema_name);
        again.delay_ms = 2000 + backoff_ms(1);
        env.sink.push(again).await?;
        return Ok(JobOutcome::Busy);
    };
    let outcome = match begun {
        Begun::Row(row) => drive_steps(env, &mut lock, &schema, row, max_steps).await,
        Begun::Final(None) => Err(ProvisionError::UnknownTenant(schema_name.to_owned())),
        Begun::Final(Some(state)) => state
            .parse()
            .map(JobOutcome::AlreadyFinal)
            .map_err(ProvisionError::WrongState),
    };
    lock.release().await?;
    outcome
}

/// Runs the steps of a tenant whose lock this job holds. `row` was read as
/// the execution was counted (before anything else, so that a crash counts
/// as an attempt and a job that kills its worker cannot loop for ever).
async fn drive_steps<S: JobSink>(
    env: &JobEnv<'_, S>,
    lock: &mut TenantLock,
    schema: &Ident,
    mut row: TenantRow,
    max_steps: usize,
) -> Result<JobOutcome, ProvisionError> {
    let schema_name = schema.name();
    let mut state: TenantState = row.state.parse().map_err(ProvisionError::WrongState)?;
    if env.policy.exhausted(row.attempt) {
        let (step, _) = state.next_step().expect("non-final state");
        let error = env.policy.gave_up(row.last_error.as_deref());
        fail(lock.conn(), schema_name, state, step, &error, env.actor).await?;
        return Ok(JobOutcome::Finished(TenantState::Failed));
    }
    let mut steps_run = 0;
    let mut demo_data_state = None;
    // Every step left in one transaction, on a step's first execution only:
    // one that runs again (after a crash or a transient error) goes alone,
    // so that what keeps failing is pinned to its step. Not when resuming at
    // `migrate` either, where the migrations already applied are read first.
    let planned = plan(state, max_steps);
    if row.attempt == 1 && state != TenantState::SchemaCreated && !planned.is_empty() {
        let tenant = Tenant {
            schema,
            row: &row,
            migrations: env.migrations,
            actor: env.actor,
        };
        let mut script = Script::new();
        // The schema is new (made by this transaction, or by one before
        // it): its ledger does not exist yet.
        let markers = write_steps(
            &mut script,
            &tenant,
            &planned,
            row.attempt,
            Some(&Ledger::NoLedger),
        )?;
        let unlock = lock.write_unlock(&mut script);
        let sent = std::time::Instant::now();
        match script.finish()?.run(lock.conn()).await {
            Ok(output) => {
                lock.unlocked_by_script = output.reached(unlock);
                demo_data_state =
                    log_transitions(schema_name, &planned, &markers, &output, row.attempt, sent);
                state = planned.last().map_or(state, |p| p.to);
                steps_run = planned.len();
                row.attempt = 1;
            }
            Err(failure) => {
                // One transaction: nothing of it committed, unless the
                // connection was lost after its COMMIT. Look, then go on
                // step by step from there, which reports the failing step's
                // error exactly.
                let now: String =
                    sqlx::query_scalar("SELECT state FROM public.provision_tenant WHERE schema_name = $1")
                        .bind(schema_name)
                        .fetch_one(lock.conn())
                        .await?;
                tracing::debug!(schema_name, error = %failure.error, now = %now, "steps sent together stopped; going on one at a time");
                let now: TenantState = now.parse().map_err(ProvisionError::WrongState)?;
                if now != state {
                    steps_run = planned.len();
                    state = now;
                }
            }
        }
    }
    while let Some((step, next)) = state.next_step() {
        if steps_run == max_steps {
            return Ok(JobOutcome::Paused(state));
        }
        steps_run += 1;
        let planned = Planned {
            step,
            from: state,
            to: next,
        };
        let span = tracing::info_span!("step", step = step.as_str(), attempt = row.attempt);
        let _entered = span.enter();
        let started_at = std::time::Instant::now();
        match run_step(env, lock.conn(), schema, &row, planned).await {
            Ok(demo) => {
                tracing::info!(
                    schema_name,
                    from = state.as_str(),
                    to = next.as_str(),
                    step = step.as_str(),
                    attempt = row.attempt,
                    duration_ms = started_at.elapsed().as_secs_f64() * 1000.0,
                    "transition"
                );
                if step == Step::CreateAdmin {
                    row.admin_password_hash = None;
                }
                state = next;
                row.attempt = 1;
                demo_data_state = demo;
            }
            Err(error) => match env.policy.after(row.attempt, &error) {
                Next::GiveUp(message) => {
                    tracing::warn!(schema_name, step = step.as_str(), attempt = row.attempt, error = %message, "step failed");
                    fail(lock.conn(), schema_name, state, step, &message, env.actor).await?;
                    return Ok(JobOutcome::Finished(TenantState::Failed));
                }
                Next::RetryAfter(delay_ms) => {
                    let message = error.to_string();
                    tracing::warn!(schema_name, step = step.as_str(), attempt = row.attempt, delay_ms, error = %message, "step will be retried");
                    note_retry(
                        env.pool,
                        schema_name,
                        state,
                        step,
                        row.attempt,
                        &message,
                        env.actor,
                    )
                    .await?;
                    let mut job = JobRequest::now(JobKind::CreateTenant, schema_name);
                    job.delay_ms = delay_ms;
                    env.sink.push(job).await?;
                    return Ok(JobOutcome::RetryScheduled {
                        step: step.as_str().to_owned(),
                        attempt: row.attempt,
                        delay_ms,
                        error: message,
                    });
                }
            },
        }
    }
    if state == TenantState::Ready && demo_data_state.as_deref() == Some("pending") {
        // Demo data asked for at creation, or by `seed-demo-data` while the
        // tenant was being provisioned. Pushed once `ready` has committed;
        // if this push is lost (a crash, Redis away), the reconciler finds
        // the tenant ready with demo data pending and pushes it.
        if let Err(e) = env
            .sink
            .push(JobRequest::now(JobKind::SeedDemoData, schema_name))
            .await
        {
            tracing::warn!(schema_name, error = %e, "could not push the demo data job; the reconciler will");
        }
    }
    Ok(JobOutcome::Finished(state))
}

/// Logs a `transition` event per step the script got through, timed by the
/// server's clock; returns the tenant's demo data state as the state change
/// saw it.
fn log_transitions(
    schema_name: &str,
    planned: &[Planned],
    markers: &StepMarkers,
    output: &ScriptOutput,
    attempt: i32,
    sent: std::time::Instant,
) -> Option<String> {
    let time = |m| output.get::<DateTime<Utc>>(m).and_then(Result::ok);
    let mut previous = time(markers.started_at);
    for (i, (p, done)) in planned.iter().zip(&markers.done_at).enumerate() {
        let Some(done_at) = time(*done) else {
            break;
        };
        let duration_ms = previous.map_or_else(
            || sent.elapsed().as_secs_f64() * 1000.0,
            |p| (done_at - p).num_microseconds().unwrap_or(0) as f64 / 1000.0,
        );
        previous = Some(done_at);
        tracing::info!(
            schema_name,
            from = p.from.as_str(),
            to = p.to.as_str(),
            step = p.step.as_str(),
            attempt = if i == 0 { attempt } else { 1 },
            duration_ms,
            "transition"
        );
    }
    output.get(markers.moved).and_then(Result::ok).flatten()
}

/// Runs one step on its own: its effect and transition in one transaction.
/// For `migrate`, the schema's ledger is read first, and the migrations it
/// lacks go one transaction each before the transition, so one that fails
/// leaves those before it applied and is named. Returns the tenant's demo
/// data state as the transition saw it.
async fn run_step<S: JobSink>(
    env: &JobEnv<'_, S>,
    conn: &mut PgConnection,
    schema: &Ident,
    row: &TenantRow,
    planned: Planned,
) -> Result<Option<String>, ProvisionError> {
    let mut script = Script::new();
    let mut commits = Vec::new();
    if planned.step == Step::Migrate {
        let ledger = read_ledger(env.pool, env.migrations, schema.name()).await?;
        commits = write_one_by_one(&mut script, env.migrations, schema, &ledger)?;
    }
    let tenant = Tenant {
        schema,
        row,
        migrations: env.migrations,
        actor: env.actor,
    };
    let markers = write_steps(&mut script, &tenant, &[planned], row.attempt, None)?;
    match script.finish()?.run(conn).await {
        Ok(output) => Ok(output.get(markers.moved).transpose()?.flatten()),
        Err(failure) => {
            if let Some((position, _)) = commits.iter().find(|(_, done)| !failure.output.reached(*done)) {
                return Err(explain_migration_error(
                    env.migrations,
                    schema.name(),
                    *position,
                    failure.error,
                ));
            }
            Err(explain_step_error(env.pool, planned.step, failure.error, schema.name(), row).await)
        }
    }
}

/// Turns a step's failed statement into the error the operator should see.
async fn explain_step_error(
    pool: &PgPool,
    step: Step,
    error: sqlx::Error,
    schema_name: &str,
    row: &TenantRow,
) -> ProvisionError {
    match (step, sqlstate_of(&error).as_deref()) {
        (_, Some(sqlstate::GUARD_FAILED)) => ProvisionError::Contended(guard_message(&error)),
        (_, Some(sqlstate::STALE_SET)) => ProvisionError::StaleSet(guard_message(&error)),
        (Step::Register, _) => explain_register_conflict(pool, error, row).await,
        // Made by someone else, since this step commits the schema and the
        // transition together.
        (Step::CreateSchema, Some(sqlstate::DUPLICATE_SCHEMA)) => ProvisionError::conflict(
            "schema_name",
            format!(
                "schema {schema_name:?} already exists but was not created by this provisioning; \
                 drop it or choose another schema name"
            ),
        ),
        _ => ProvisionError::Database(error),
    }
}

async fn explain_register_conflict(pool: &PgPool, error: sqlx::Error, row: &TenantRow) -> ProvisionError {
    match violated_constraint(&error) {
        Some(constraint::CLIENT_SCHEMA_NAME_KEY) => ProvisionError::conflict(
            "schema_name",
            "a tenant with this schema_name already exists in tenants_client (made outside this project)",
        ),
        Some(constraint::DOMAIN_KEY) => {
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT c.schema_name FROM public.tenants_domain d
                 JOIN public.tenants_client c ON c.id = d.tenant_id WHERE d.domain = $1",
            )
            .bind(&row.domain)
            .fetch_optional(pool)
            .await
            .ok()
            .flatten();
            ProvisionError::conflict(
                "domain",
                format!(
                    "domain {:?} already belongs to tenant {}",
                    row.domain,
                    owner.map_or_else(|| "another tenant".to_owned(), |o| format!("{o:?}"))
                ),
            )
        }
        _ => ProvisionError::Database(error),
    }
}

/// Moves the tenant to `failed`, recording the step and the error.
async fn fail(
    conn: &mut PgConnection,
    schema_name: &str,
    from: TenantState,
    step: Step,
    error: &str,
    actor: &str,
) -> Result<(), ProvisionError> {
    sqlx::query(
        "WITH moved AS (
             UPDATE public.provision_tenant
             SET state = 'failed', failed_step = $3, failed_from_state = state,
                 last_error = $4, updated_at = now()
             WHERE schema_name = $1 AND state = $2
             RETURNING schema_name, attempt)
         INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, error, actor)
         SELECT schema_name, $2, 'failed', $3, attempt, $4, $5 FROM moved",
    )
    .bind(schema_name)
    .bind(from.as_str())
    .bind(step.as_str())
    .bind(error)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records a transient error of a step that will be tried again.
async fn note_retry(
    pool: &PgPool,
    schema_name: &str,
    state: TenantState,
    step: Step,
    attempt: i32,
    error: &str,
    actor: &str,
) -> Result<(), ProvisionError> {
    sqlx::query(
        "WITH noted AS (
             UPDATE public.provision_tenant SET last_error = $5, updated_at = now()
             WHERE schema_name = $1 AND state = $2
             RETURNING schema_name)
         INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, error, actor)
         SELECT schema_name, $2, $2, $3, $4, $5, $6 FROM noted",
    )
    .bind(schema_name)
    .bind(state.as_str())
    .bind(step.as_str())
    .bind(attempt)
    .bind(error)
    .bind(actor)
    .execute(pool)
    .await?;
    Ok(())
}

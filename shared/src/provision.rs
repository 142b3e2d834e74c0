//! Provisioning a tenant: the request (written by the client before it
//! pushes the job), the `CreateTenant` job as idempotent steps, and the
//! `SeedDemoData` job.
//!
//! Steps commit together with the guarded `UPDATE … WHERE state = $from`
//! that moves the state past them, so a crash leaves either both or
//! neither, and a step that already happened is never run again: the state
//! says it is done. A job's first try runs every step left as one
//! transaction (one state change, one history row per step); a step that
//! runs again goes one transaction per step, so what keeps failing is
//! pinned to its step. Steps of one tenant run under a per-tenant advisory
//! lock, so two workers never interleave them.

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::error::{InvalidInput, ProvisionError, violated_constraint};
use crate::ident::{advisory_key, quote_ident, schema_sql};
use crate::jobs::{JobKind, JobRequest, JobSink};
use crate::migrate::{TenantMigrations, migrate_schema_on, pending_migrations_sql};
use crate::script::literal;
use crate::state::{Step, TenantState};
use crate::validate;

/// A tenant as asked for: validated, the password already hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRequest {
    /// The PostgreSQL schema, and the tenant's key.
    pub schema_name: String,
    /// The display name (any UTF-8, Greek included).
    pub tenant_name: String,
    /// The primary domain.
    pub domain: String,
    /// The admin user's email.
    pub admin_email: String,
    /// The admin password in Django's argon2 format, never plain text.
    pub admin_password_hash: String,
    /// Days of trial (`paid_until` = today + this).
    pub trial_days: i32,
    /// Whether `SeedDemoData` follows.
    pub seed_demo_data: bool,
}

impl TenantRequest {
    /// Checks every field against the contract's rules.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        validate::schema_name(&self.schema_name)?;
        validate::tenant_name(&self.tenant_name)?;
        validate::domain(&self.domain)?;
        validate::email(&self.admin_email)?;
        validate::trial_days(self.trial_days)?;
        if !self.admin_password_hash.starts_with("argon2$argon2id$")
            && !self.admin_password_hash.starts_with("pbkdf2_sha256$")
        {
            return Err(InvalidInput {
                field: "admin_password_hash",
                rule: "must be a Django argon2 or pbkdf2_sha256 hash".into(),
            });
        }
        Ok(())
    }

    /// Identifies the request by its details, all but the password (whose
    /// hash differs on every submission): the same fingerprint twice is one
    /// signup submitted twice.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::json!([
            self.schema_name,
            self.tenant_name,
            self.domain,
            self.admin_email,
            self.trial_days,
            self.seed_demo_data,
        ]);
        crate::migrate::checksum(&canonical.to_string())
    }
}

/// What recording a request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new tenant was recorded in state `requested`.
    New,
    /// The same request was recorded before; the tenant is in this state.
    Existing(TenantState),
}

/// Refuses a request whose schema name or domain is taken. Used by
/// `--dry-run` and before recording; the register step checks again, since
/// only its unique constraints can settle a race.
pub async fn check_request_is_free(
    pool: &PgPool,
    request: &TenantRequest,
) -> Result<Option<TenantState>, ProvisionError> {
    let row: (Option<String>, Option<String>, bool, bool, Option<String>) = sqlx::query_as(
        "SELECT
             (SELECT request_fingerprint FROM public.provision_tenant WHERE schema_name = $1),
             (SELECT state FROM public.provision_tenant WHERE schema_name = $1),
             EXISTS (SELECT 1 FROM public.tenants_client WHERE schema_name = $1),
             to_regnamespace(quote_ident($1)) IS NOT NULL,
             (SELECT c.schema_name FROM public.tenants_domain d
                JOIN public.tenants_client c ON c.id = d.tenant_id WHERE d.domain = $2)",
    )
    .bind(&request.schema_name)
    .bind(&request.domain)
    .fetch_one(pool)
    .await?;
    let (fingerprint, state, client_exists, schema_exists, domain_owner) = row;
    if let (Some(fingerprint), Some(state)) = (fingerprint, state) {
        if fingerprint != request.fingerprint() {
            return Err(ProvisionError::conflict(
                "schema_name",
                format!(
                    "tenant {:?} was already requested with other details; \
                     `provision status --schema-name {}` shows them, or choose another schema name",
                    request.schema_name, request.schema_name
                ),
            ));
        }
        return Ok(Some(state.parse().map_err(ProvisionError::WrongState)?));
    }
    if client_exists {
        return Err(ProvisionError::conflict(
            "schema_name",
            format!(
                "a tenant with schema_name {:?} already exists in tenants_client (made outside this project)",
                request.schema_name
            ),
        ));
    }
    if schema_exists {
        return Err(ProvisionError::conflict(
            "schema_name",
            format!("schema {:?} already exists in the database", request.schema_name),
        ));
    }
    if let Some(owner) = domain_owner {
        return Err(ProvisionError::conflict(
            "domain",
            format!("domain {:?} already belongs to tenant {owner:?}", request.domain),
        ));
    }
    let requested_elsewhere: Option<String> = sqlx::query_scalar(
        "SELECT schema_name FROM public.provision_tenant
         WHERE domain = $1 AND schema_name <> $2 AND state <> 'failed' LIMIT 1",
    )
    .bind(&request.domain)
    .bind(&request.schema_name)
    .fetch_optional(pool)
    .await?;
    if let Some(owner) = requested_elsewhere {
        return Err(ProvisionError::conflict(
            "domain",
            format!(
                "domain {:?} is already requested by tenant {owner:?}",
                request.domain
            ),
        ));
    }
    Ok(None)
}

/// Records the request in state `requested`, or finds the same request made
/// before. A request for the same schema name with other details is a
/// conflict. `actor` is who asked (recorded in the history).
pub async fn record_request(
    pool: &PgPool,
    request: &TenantRequest,
    actor: &str,
) -> Result<Recorded, ProvisionError> {
    request.validate()?;
    if let Some(state) = check_request_is_free(pool, request).await? {
        return Ok(Recorded::Existing(state));
    }
    let inserted = sqlx::query(
        "WITH inserted AS (
             INSERT INTO public.provision_tenant
                 (schema_name, tenant_name, domain, admin_email, admin_password_hash, trial_days,
                  seed_demo_data, demo_data_state, request_fingerprint, requested_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $7 THEN 'pending' ELSE 'skipped' END, $8, $9)
             ON CONFLICT (schema_name) DO NOTHING
             RETURNING schema_name)
         INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, actor)
         SELECT schema_name, NULL, 'requested', 'request', 0, $9 FROM inserted",
    )
    .bind(&request.schema_name)
    .bind(&request.tenant_name)
    .bind(&request.domain)
    .bind(&request.admin_email)
    .bind(&request.admin_password_hash)
    .bind(request.trial_days)
    .bind(request.seed_demo_data)
    .bind(request.fingerprint())
    .bind(actor)
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Recorded::New);
    }
    // Another submission won the race: same details or a conflict.
    match check_request_is_free(pool, request).await? {
        Some(state) => Ok(Recorded::Existing(state)),
        None => Err(ProvisionError::WrongState(format!(
            "tenant {:?} vanished while it was being recorded; try again",
            request.schema_name
        ))),
    }
}

/// Notes the id of the job that carries the tenant's provisioning.
pub async fn note_job_id(pool: &PgPool, schema_name: &str, job_id: &str) -> Result<(), ProvisionError> {
    sqlx::query("UPDATE public.provision_tenant SET job_id = $2 WHERE schema_name = $1")
        .bind(schema_name)
        .bind(job_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// What a job handler needs: the pool, where to push follow-up jobs, the
/// tenant migrations, who is acting, and the retry cap.
#[derive(Debug)]
pub struct JobEnv<'a, S> {
    /// PostgreSQL.
    pub pool: &'a PgPool,
    /// The queue, for follow-up jobs.
    pub sink: &'a S,
    /// The tenant migrations to apply.
    pub migrations: &'a TenantMigrations,
    /// Recorded as the actor of every transition (the worker's name).
    pub actor: &'a str,
    /// Executions of one step before the tenant is failed.
    pub max_attempts: i32,
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

/// Holds the per-tenant advisory lock on its own connection. If dropped
/// without [`TenantLock::release`] (a cancelled job), the connection is
/// closed rather than returned to the pool, so the lock cannot leak.
struct TenantLock {
    conn: Option<PoolConnection<Postgres>>,
    key: i64,
    /// The steps' script ended with the unlock.
    unlocked_by_script: bool,
}

/// What a job found when it took the tenant's lock.
enum Begun {
    /// The tenant is not final: its row, with this execution counted.
    Row(TenantRow),
    /// The tenant is final (its state), or unknown (`None`).
    Final(Option<String>),
}

impl TenantLock {
    /// Takes the tenant's lock and, if it got it, counts this execution,
    /// in one message. The count commits without waiting for the disk: only
    /// a server crash could lose it, and with it one attempt's count.
    /// `None` when another job holds the lock.
    async fn try_begin(pool: &PgPool, schema_name: &str) -> Result<Option<(Self, Begun)>, ProvisionError> {
        use sqlx::{FromRow, Row};
        let mut conn = pool.acquire().await?;
        let key = advisory_key("tenant", schema_name);
        let s = literal(schema_name)?;
        let sql = format!(
            "BEGIN;
             SET LOCAL synchronous_commit TO off;
             WITH lock AS (SELECT pg_try_advisory_lock({key}) AS held),
                  started AS (
                      UPDATE public.provision_tenant SET attempt = attempt + 1, updated_at = now()
                      WHERE schema_name = {s} AND state NOT IN ('ready', 'failed') AND (SELECT held FROM lock)
                      RETURNING state, attempt, tenant_name, domain, admin_email, admin_password_hash,
                                trial_days, last_error)
             SELECT (SELECT held FROM lock) AS held,
                    (SELECT state FROM public.provision_tenant WHERE schema_name = {s}) AS found_state,
                    started.*
             FROM lock LEFT JOIN started ON true;
             COMMIT;"
        );
        let rows = crate::script::run(&mut conn, sql).await.map_err(|f| f.error)?;
        let row = rows
            .first()
            .ok_or_else(|| ProvisionError::WrongState("taking the tenant's lock returned nothing".into()))?;
        if !row.try_get::<bool, _>("held")? {
            return Ok(None);
        }
        let begun = if row.try_get::<Option<String>, _>("state")?.is_some() {
            Begun::Row(TenantRow::from_row(row)?)
        } else {
            Begun::Final(row.try_get("found_state")?)
        };
        let lock = Self {
            conn: Some(conn),
            key,
            unlocked_by_script: false,
        };
        Ok(Some((lock, begun)))
    }

    fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("lock is held")
    }

    /// The statement that releases the lock, for the end of a script.
    fn unlock_sql(&self) -> String {
        format!("SELECT pg_advisory_unlock({}) AS unlocked;\n", self.key)
    }

    async fn release(mut self) -> Result<(), ProvisionError> {
        if !self.unlocked_by_script {
            let key = self.key;
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(self.conn())
                .await?;
        }
        self.conn.take();
        Ok(())
    }
}

impl Drop for TenantLock {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}

/// The tenant's row, as a job sees it when it starts.
#[derive(Debug, sqlx::FromRow)]
struct TenantRow {
    state: String,
    attempt: i32,
    tenant_name: String,
    domain: String,
    admin_email: String,
    admin_password_hash: Option<String>,
    trial_days: i32,
    last_error: Option<String>,
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
    validate::schema_name(schema_name)?;
    let Some((mut lock, begun)) = TenantLock::try_begin(env.pool, schema_name).await? else {
        // Another job holds the tenant. It is most likely alive and will
        // finish; but its process may be dying with the lock not yet
        // released, so look again shortly rather than trust it. A duplicate
        // job ends for good once the tenant is ready.
        let mut again = JobRequest::now(JobKind::CreateTenant, schema_name);
        again.delay_ms = 2000 + retry_delay_ms(1);
        env.sink.push(again).await?;
        return Ok(JobOutcome::Busy);
    };
    let outcome = match begun {
        Begun::Row(row) => drive_steps(env, &mut lock, schema_name, row, max_steps).await,
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
    schema_name: &str,
    mut row: TenantRow,
    max_steps: usize,
) -> Result<JobOutcome, ProvisionError> {
    let unlock = lock.unlock_sql();
    // The connection field alone, so the flag beside it stays writable.
    let conn: &mut PgConnection = lock.conn.as_mut().expect("lock is held");
    let mut state: TenantState = row.state.parse().map_err(ProvisionError::WrongState)?;
    if row.attempt > env.max_attempts {
        let (step, _) = state.next_step().expect("non-final state");
        let error = format!(
            "gave up after {} attempts; last error: {}",
            env.max_attempts,
            row.last_error
                .as_deref()
                .unwrap_or("none recorded (the worker may have crashed)")
        );
        fail(conn, schema_name, state, step, &error, env.actor).await?;
        return Ok(JobOutcome::Finished(TenantState::Failed));
    }
    let mut steps_run = 0;
    let mut demo_data_state = None;
    // Fast path: every step left in one transaction, sent in one message.
    // Only on a step's first execution: one that runs again (after a crash
    // or a transient error) goes step by step, so that what keeps failing
    // is pinned to its step. Not when resuming at `migrate` either, where
    // the migrations already applied are not known without asking.
    let planned = plan_steps(state, max_steps);
    if row.attempt == 1
        && state != TenantState::SchemaCreated
        && let Some(mut sql) = steps_in_one_transaction(env, schema_name, &row, &planned)
    {
        sql.push_str(&unlock);
        let sent = std::time::Instant::now();
        match crate::script::run(conn, sql).await {
            Ok(rows) => {
                lock.unlocked_by_script = true;
                demo_data_state = record_transitions(schema_name, &planned, &rows, row.attempt, sent);
                state = planned.last().map_or(state, |p| p.2);
                steps_run = planned.len();
                row.attempt = 1;
            }
            Err(failure) => {
                // Nothing committed (a lost connection after the COMMIT
                // aside): look, then go on step by step from there, which
                // reports the failing step's error exactly.
                let (now, attempt): (String, i32) = sqlx::query_as(
                    "SELECT state, attempt FROM public.provision_tenant WHERE schema_name = $1",
                )
                .bind(schema_name)
                .fetch_one(&mut *conn)
                .await?;
                tracing::debug!(schema_name, error = %failure.error, stopped_in = %now, "steps sent together stopped; going on one at a time");
                let now: TenantState = now.parse().map_err(ProvisionError::WrongState)?;
                let done = planned.iter().take_while(|p| p.1 != now).count();
                record_transitions(schema_name, &planned[..done], &failure.rows, row.attempt, sent);
                if done > 0 {
                    row.attempt = attempt;
                }
                state = now;
                steps_run = done;
            }
        }
    }
    while let Some((step, next)) = state.next_step() {
        if steps_run == max_steps {
            return Ok(JobOutcome::Paused(state));
        }
        steps_run += 1;
        let span = tracing::info_span!("step", step = step.as_str(), attempt = row.attempt);
        let _entered = span.enter();
        let started_at = std::time::Instant::now();
        match run_step(env, conn, schema_name, &mut row, step, state, next).await {
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
                state = next;
                row.attempt = 1;
                demo_data_state = demo;
            }
            Err(error) if error.is_permanent() || row.attempt >= env.max_attempts => {
                let message = if error.is_permanent() {
                    error.to_string()
                } else {
                    format!("gave up after {} attempts: {error}", row.attempt)
                };
                tracing::warn!(schema_name, step = step.as_str(), attempt = row.attempt, error = %message, "step failed");
                fail(conn, schema_name, state, step, &message, env.actor).await?;
                return Ok(JobOutcome::Finished(TenantState::Failed));
            }
            Err(error) => {
                let delay_ms = retry_delay_ms(row.attempt);
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

/// The steps from `state` on, at most `max_steps`: (step, from, to).
fn plan_steps(mut state: TenantState, max_steps: usize) -> Vec<(Step, TenantState, TenantState)> {
    let mut plan = Vec::new();
    while let Some((step, next)) = state.next_step() {
        if plan.len() == max_steps {
            break;
        }
        plan.push((step, state, next));
        state = next;
    }
    plan
}

/// The script of the `planned` steps as one transaction, or `None` when
/// there are none or one cannot be written here (the step-by-step path then
/// reports why). Each step's effect is followed by a row with the server's
/// time, kept for its history row; then one guarded state change from the
/// first state to the last records every step. One transaction rather than
/// one per step: a crash leaves the tenant as it was, and the state changes
/// and history of five steps cost one statement instead of five, which
/// PostgreSQL must parse and plan anew in a script (bench/README.md).
fn steps_in_one_transaction<S: JobSink>(
    env: &JobEnv<'_, S>,
    schema_name: &str,
    row: &TenantRow,
    planned: &[(Step, TenantState, TenantState)],
) -> Option<String> {
    let (first, last) = (planned.first()?, planned.last()?);
    let mut sql = String::from("SELECT clock_timestamp() AS started_at;\nBEGIN;\n");
    sql.push_str(commit_mode(last.2));
    let mut events = Vec::with_capacity(planned.len());
    for (i, &(step, from, to)) in planned.iter().enumerate() {
        // Before `migrate`, the schema is new (created by this script or by
        // an earlier job): nothing is recorded in it yet.
        sql.push_str(&step_effect_sql(env, schema_name, row, step, 0).ok()?);
        let setting = format!("provision.done_{}", step.as_str());
        sql.push_str(&format!(
            "SELECT '{step}' AS step, set_config('{setting}', clock_timestamp()::text, true)::timestamptz AS done_at;\n",
            step = step.as_str(),
        ));
        events.push(StepEvent {
            step,
            from,
            to,
            attempt: if i == 0 { row.attempt } else { 1 },
            at: format!("current_setting('{setting}')::timestamptz"),
        });
    }
    sql.push_str(&transition_sql(schema_name, first.1, last.2, &events, env.actor).ok()?);
    sql.push_str("COMMIT;\n");
    Some(sql)
}

/// Logs a `transition` event per step the script returned a row for, timed
/// by the server's clock; returns the tenant's demo data state as the
/// state change saw it.
fn record_transitions(
    schema_name: &str,
    planned: &[(Step, TenantState, TenantState)],
    rows: &[sqlx::postgres::PgRow],
    attempt: i32,
    sent: std::time::Instant,
) -> Option<String> {
    use sqlx::Row;
    let mut previous: Option<chrono::DateTime<chrono::Utc>> = None;
    let mut steps = planned.iter();
    let mut demo = None;
    for row in rows {
        if let Ok(started) = row.try_get::<chrono::DateTime<chrono::Utc>, _>("started_at") {
            previous = Some(started);
            continue;
        }
        if let Ok(state) = row.try_get::<Option<String>, _>("demo_data_state") {
            demo = state;
            continue;
        }
        let Ok(done_at) = row.try_get::<chrono::DateTime<chrono::Utc>, _>("done_at") else {
            continue;
        };
        let Some((step, from, to)) = steps.next() else {
            break;
        };
        let duration_ms = previous.map_or_else(
            || sent.elapsed().as_secs_f64() * 1000.0,
            |p| (done_at - p).num_microseconds().unwrap_or(0) as f64 / 1000.0,
        );
        previous = Some(done_at);
        let attempt = if step == &planned[0].0 { attempt } else { 1 };
        tracing::info!(
            schema_name,
            from = from.as_str(),
            to = to.as_str(),
            step = step.as_str(),
            attempt,
            duration_ms,
            "transition"
        );
    }
    demo
}

/// Exponential backoff with jitter: about 0.5 s, 1 s, 2 s … capped at 60 s,
/// each scaled by a random factor in [0.5, 1.0) so retries spread out.
pub fn retry_delay_ms(attempt: i32) -> u64 {
    let exponent = u32::try_from(attempt.clamp(1, 8) - 1).expect("clamped");
    let base = (1000u64 << exponent).min(60_000);
    let mut byte = [0u8; 1];
    getrandom::fill(&mut byte).expect("the operating system's random source failed");
    base / 2 + base * u64::from(byte[0]) / 512
}

/// Runs one step on its own: its effect and transition in one message (for
/// `migrate`, the migration runner first, then the transition). Returns the
/// tenant's demo data state as the transition saw it.
async fn run_step<S: JobSink>(
    env: &JobEnv<'_, S>,
    conn: &mut PgConnection,
    schema_name: &str,
    row: &mut TenantRow,
    step: Step,
    from: TenantState,
    to: TenantState,
) -> Result<Option<String>, ProvisionError> {
    let applied = if step == Step::Migrate {
        migrate_schema_on(conn, env.migrations, schema_name)
            .await?
            .version
    } else {
        0
    };
    let sql = step_sql(env, schema_name, row, step, from, to, applied)?;
    let rows = match crate::script::run(conn, sql).await {
        Ok(rows) => rows,
        Err(failure) => {
            return Err(explain_step_error(env.pool, step, failure.error, schema_name, row).await);
        }
    };
    if step == Step::CreateAdmin {
        row.admin_password_hash = None;
    }
    use sqlx::Row;
    Ok(rows
        .last()
        .and_then(|r| r.try_get::<Option<String>, _>("demo_data_state").ok().flatten()))
}

/// One step of `schema_name` as a transaction for a script: its effect,
/// then its state change. `applied` is the newest migration recorded in the
/// schema (the `migrate` step applies the ones after it).
fn step_sql<S: JobSink>(
    env: &JobEnv<'_, S>,
    schema_name: &str,
    row: &TenantRow,
    step: Step,
    from: TenantState,
    to: TenantState,
    applied: i32,
) -> Result<String, ProvisionError> {
    let event = StepEvent {
        step,
        from,
        to,
        attempt: row.attempt,
        at: "clock_timestamp()".into(),
    };
    Ok(format!(
        "BEGIN;\n{mode}{effect}{transition}COMMIT;\n",
        mode = commit_mode(to),
        effect = step_effect_sql(env, schema_name, row, step, applied)?,
        transition = transition_sql(schema_name, from, to, &[event], env.actor)?,
    ))
}

/// The commit mode of a transaction that leaves the tenant in `to`: only
/// `ready` must be on disk before anyone hears of it. A server crash may
/// lose an earlier state's commit, but always together with its effect,
/// and the step runs again; the `ready` commit flushes every earlier one.
fn commit_mode(to: TenantState) -> &'static str {
    if to == TenantState::Ready {
        ""
    } else {
        "SET LOCAL synchronous_commit TO off;\n"
    }
}

/// What one step does to the database, as statements for a script.
fn step_effect_sql<S: JobSink>(
    env: &JobEnv<'_, S>,
    schema_name: &str,
    row: &TenantRow,
    step: Step,
    applied: i32,
) -> Result<String, ProvisionError> {
    use std::fmt::Write as _;
    let s = literal(schema_name)?;
    let ident = quote_ident(schema_name);
    let mut sql = String::new();
    match step {
        Step::Register => {
            let days = row.trial_days;
            write!(
                sql,
                "WITH client AS (
                     INSERT INTO public.tenants_client
                         (schema_name, name, paid_until, on_trial, is_active, trial_days, created_on)
                     VALUES ({s}, {name}, (now() AT TIME ZONE 'UTC')::date + {days}, {on_trial}, false, {days},
                             (now() AT TIME ZONE 'UTC')::date)
                     RETURNING id),
                 primary_domain AS (
                     INSERT INTO public.tenants_domain (domain, tenant_id, is_primary)
                     SELECT {domain}, id, true FROM client)
                 UPDATE public.provision_tenant SET tenant_id = (SELECT id FROM client)
                 WHERE schema_name = {s};\n",
                name = literal(&row.tenant_name)?,
                on_trial = days > 0,
                domain = literal(&row.domain)?,
            )
            .expect("writing to a String");
        }
        Step::CreateSchema => {
            // The schema did not exist, so any migration records under its
            // name are left from one dropped by hand: they are not its.
            write!(
                sql,
                "CREATE SCHEMA {ident};\n\
                 DELETE FROM public.provision_tenant_migration WHERE schema_name = {s};\n"
            )
            .expect("writing to a String");
        }
        Step::Migrate => {
            if let Some((migrations, _)) =
                pending_migrations_sql(env.migrations, &[schema_name], applied, None)?
            {
                sql.push_str(&migrations);
            }
        }
        Step::CreateAdmin => {
            let Some(hash) = row.admin_password_hash.as_deref() else {
                return Err(ProvisionError::WrongState(
                    "the admin password hash is gone before the admin was created".into(),
                ));
            };
            write!(
                sql,
                "INSERT INTO {ident}.users_customuser
                     (password, email, role, is_staff, is_superuser, is_active, email_verified, date_joined)
                 VALUES ({hash}, {email}, 'admin', true, true, true, true, now())
                 ON CONFLICT (email) DO NOTHING;\n",
                hash = literal(hash)?,
                email = literal(&row.admin_email)?,
            )
            .expect("writing to a String");
        }
        Step::Activate => {
            writeln!(
                sql,
                "UPDATE public.tenants_client SET is_active = true WHERE schema_name = {s};"
            )
            .expect("writing to a String");
        }
    }
    Ok(sql)
}

/// A step's row in the tenant's history.
struct StepEvent {
    step: Step,
    from: TenantState,
    to: TenantState,
    /// Which execution of the step this was.
    attempt: i32,
    /// SQL for when it was done.
    at: String,
}

/// Moves the tenant from `from` to `to` and records each of `events` (the
/// steps between, in order): one guarded statement, which stops the script
/// (the guard's SQLSTATE) if someone else moved the tenant. Returns a row
/// with the tenant's demo data state.
fn transition_sql(
    schema_name: &str,
    from: TenantState,
    to: TenantState,
    events: &[StepEvent],
    actor: &str,
) -> Result<String, ProvisionError> {
    let ready = to == TenantState::Ready;
    let drops_hash = matches!(to, TenantState::AdminCreated | TenantState::Ready);
    let rows: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "('{from}', '{to}', '{step}', {attempt}, {at})",
                from = e.from.as_str(),
                to = e.to.as_str(),
                step = e.step.as_str(),
                attempt = e.attempt,
                at = e.at,
            )
        })
        .collect();
    let steps: Vec<&str> = events.iter().map(|e| e.step.as_str()).collect();
    Ok(format!(
        "WITH moved AS (
             UPDATE public.provision_tenant
             SET state = '{to}',
                 attempt = {attempt_after},
                 last_error = NULL,
                 updated_at = now(),
                 ready_at = {ready_at},
                 admin_password_hash = {hash}
             WHERE schema_name = {s} AND state = '{from}'
             RETURNING schema_name, demo_data_state),
         recorded AS (
             INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, actor, at)
             SELECT moved.schema_name, e.from_state, e.to_state, e.step, e.attempt, {actor}, e.at
             FROM moved, (VALUES {rows}) AS e(from_state, to_state, step, attempt, at))
         SELECT public.provision_assert(EXISTS (SELECT 1 FROM moved), {message}) AS guarded,
                (SELECT demo_data_state FROM moved) AS demo_data_state;\n",
        s = literal(schema_name)?,
        to = to.as_str(),
        from = from.as_str(),
        attempt_after = if ready { "attempt" } else { "1" },
        ready_at = if ready { "clock_timestamp()" } else { "ready_at" },
        hash = if drops_hash { "NULL" } else { "admin_password_hash" },
        rows = rows.join(", "),
        actor = literal(actor)?,
        message = literal(&format!(
            "tenant {schema_name:?} left state {from} while step {} ran",
            steps.join(", ")
        ))?,
    ))
}

/// Turns a step's failed statement into the error the operator should see.
async fn explain_step_error(
    pool: &PgPool,
    step: Step,
    error: sqlx::Error,
    schema_name: &str,
    row: &TenantRow,
) -> ProvisionError {
    match (step, crate::error::sqlstate(&error).as_deref()) {
        (_, Some(crate::script::GUARD_FAILED)) => ProvisionError::WrongState(
            error
                .as_database_error()
                .map_or_else(|| error.to_string(), |db| db.message().to_owned()),
        ),
        (Step::Register, _) => explain_register_conflict(pool, error, row).await,
        // duplicate_schema: made by someone else, since this step commits
        // the schema and the transition together.
        (Step::CreateSchema, Some("42P06")) => ProvisionError::conflict(
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
        Some("tenants_client_schema_name_key") => ProvisionError::conflict(
            "schema_name",
            "a tenant with this schema_name already exists in tenants_client (made outside this project)",
        ),
        Some("tenants_domain_domain_key") => {
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

/// The demo data of the contract, named so it is seeded once per schema.
const DEMO_SEED: &str = "demo_data_v1";

/// What a `SeedDemoData` job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedOutcome {
    /// The building and its apartments were created.
    Seeded,
    /// They had been created before; nothing changed.
    AlreadySeeded,
}

/// Runs the `SeedDemoData` job: the building 'Κτίριο Demo' with its 10
/// apartments, once however often it runs. The claim on `provision_seed`
/// and the rows commit together.
pub async fn run_seed_demo_data(
    pool: &PgPool,
    schema_name: &str,
    actor: &str,
) -> Result<SeedOutcome, ProvisionError> {
    validate::schema_name(schema_name)?;
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM public.provision_tenant WHERE schema_name = $1")
            .bind(schema_name)
            .fetch_optional(pool)
            .await?;
    let state: TenantState = state
        .ok_or_else(|| ProvisionError::UnknownTenant(schema_name.to_owned()))?
        .parse()
        .map_err(ProvisionError::WrongState)?;
    if !matches!(
        state,
        TenantState::Migrated | TenantState::AdminCreated | TenantState::Ready
    ) {
        return Err(ProvisionError::WrongState(format!(
            "tenant {schema_name:?} is {state}: its tables are not ready for demo data"
        )));
    }
    let mut tx = pool.begin().await?;
    let apartments: i64 = sqlx::query_scalar(schema_sql(
        "WITH claim AS (
             INSERT INTO {schema}.provision_seed (name) VALUES ($1) ON CONFLICT DO NOTHING RETURNING name),
         building AS (
             INSERT INTO {schema}.buildings_building
                 (name, address, city, postal_code, apartments_count, financial_system_start_date)
             SELECT $2, $3, $4, $5, 10, date_trunc('month', now() AT TIME ZONE 'UTC')::date FROM claim
             RETURNING id),
         apartments AS (
             INSERT INTO {schema}.buildings_apartment (building_id, number, floor)
             SELECT building.id, n::text, (n - 1) / 2 FROM building, generate_series(1, 10) AS n
             RETURNING id)
         SELECT count(*) FROM apartments",
        schema_name,
    ))
    .bind(DEMO_SEED)
    .bind("Κτίριο Demo")
    .bind("Διεύθυνση 123")
    .bind("Αθήνα")
    .bind("10000")
    .fetch_one(&mut *tx)
    .await?;
    let outcome = if apartments > 0 {
        SeedOutcome::Seeded
    } else {
        SeedOutcome::AlreadySeeded
    };
    sqlx::query(
        "WITH seeded AS (
             UPDATE public.provision_tenant SET demo_data_state = 'seeded', updated_at = now()
             WHERE schema_name = $1 AND demo_data_state <> 'seeded'
             RETURNING schema_name, state)
         INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, actor)
         SELECT schema_name, state, state, 'seed_demo_data', 1, $2 FROM seeded",
    )
    .bind(schema_name)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Records that seeding demo data into `schema_name` failed for good.
pub async fn mark_demo_data_failed(
    pool: &PgPool,
    schema_name: &str,
    error: &str,
    actor: &str,
) -> Result<(), ProvisionError> {
    sqlx::query(
        "WITH failed AS (
             UPDATE public.provision_tenant SET demo_data_state = 'failed', updated_at = now()
             WHERE schema_name = $1 AND demo_data_state <> 'seeded'
             RETURNING schema_name, state)
         INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, error, actor)
         SELECT schema_name, state, state, 'seed_demo_data', 1, $2, $3 FROM failed",
    )
    .bind(schema_name)
    .bind(error)
    .bind(actor)
    .execute(pool)
    .await?;
    Ok(())
}

/// Asks for demo data on a tenant (the `seed-demo-data` command): marks it
/// pending so `status` shows it is on its way; a tenant still being
/// provisioned gets it when it becomes ready.
pub async fn request_demo_data(pool: &PgPool, schema_name: &str) -> Result<TenantState, ProvisionError> {
    validate::schema_name(schema_name)?;
    let state: Option<String> = sqlx::query_scalar(
        "UPDATE public.provision_tenant
         SET demo_data_state = CASE WHEN demo_data_state = 'seeded' THEN 'seeded' ELSE 'pending' END
         WHERE schema_name = $1 RETURNING state",
    )
    .bind(schema_name)
    .fetch_optional(pool)
    .await?;
    state
        .ok_or_else(|| ProvisionError::UnknownTenant(schema_name.to_owned()))?
        .parse()
        .map_err(ProvisionError::WrongState)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> TenantRequest {
        TenantRequest {
            schema_name: "theo".into(),
            tenant_name: "Theo Stam".into(),
            domain: "theo.newconcierge.app".into(),
            admin_email: "theo@example.com".into(),
            admin_password_hash: "argon2$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            trial_days: 30,
            seed_demo_data: true,
        }
    }

    #[test]
    fn fingerprint_ignores_the_password_hash_but_not_the_details() {
        let a = request();
        let mut b = request();
        b.admin_password_hash = "argon2$argon2id$other".into();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.domain = "other.newconcierge.app".into();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn retry_delays_grow_and_stay_capped() {
        for attempt in 1..=20 {
            let delay = retry_delay_ms(attempt);
            let base = (1000u64 << (attempt.clamp(1, 8) - 1)).min(60_000);
            assert!(delay >= base / 2 && delay < base, "attempt {attempt}: {delay}");
        }
    }
}

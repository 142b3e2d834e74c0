//! Provisioning a tenant: the request (written by the client before it
//! pushes the job), the `CreateTenant` job as idempotent steps, and the
//! `SeedDemoData` job.
//!
//! Every step is one transaction that does its effect and moves the state
//! with a guarded `UPDATE … WHERE state = $from`, so a crash leaves either
//! both or neither, and a step that already happened is never run again: the
//! state says it is done. Steps of one tenant run under a per-tenant advisory
//! lock, so two workers never interleave them.

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use crate::error::{InvalidInput, ProvisionError, violated_constraint};
use crate::ident::{advisory_key, quote_ident, schema_sql, trusted_sql};
use crate::jobs::{JobKind, JobRequest, JobSink};
use crate::migrate::{TenantMigrations, migrate_schema_on};
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
}

impl TenantLock {
    async fn try_acquire(
        pool: &PgPool,
        purpose: &str,
        schema_name: &str,
    ) -> Result<Option<Self>, ProvisionError> {
        let mut conn = pool.acquire().await?;
        let key = advisory_key(purpose, schema_name);
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(locked.then(|| Self {
            conn: Some(conn),
            key,
        }))
    }

    fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("lock is held")
    }

    async fn release(mut self) -> Result<(), ProvisionError> {
        let key = self.key;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(self.conn())
            .await?;
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
    tenant_id: Option<i32>,
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
    let Some(mut lock) = TenantLock::try_acquire(env.pool, "tenant", schema_name).await? else {
        // Another job holds the tenant. It is most likely alive and will
        // finish; but its process may be dying with the lock not yet
        // released, so look again shortly rather than trust it. A duplicate
        // job ends for good once the tenant is ready.
        let mut again = JobRequest::now(JobKind::CreateTenant, schema_name);
        again.delay_ms = 2000 + retry_delay_ms(1);
        env.sink.push(again).await?;
        return Ok(JobOutcome::Busy);
    };
    let outcome = drive_steps(env, lock.conn(), schema_name, max_steps).await;
    lock.release().await?;
    outcome
}

async fn drive_steps<S: JobSink>(
    env: &JobEnv<'_, S>,
    conn: &mut PgConnection,
    schema_name: &str,
    max_steps: usize,
) -> Result<JobOutcome, ProvisionError> {
    // Counting the execution before doing anything makes a crash count as an
    // attempt: a job that kills its worker cannot loop for ever.
    let started: Option<TenantRow> = sqlx::query_as(
        "UPDATE public.provision_tenant SET attempt = attempt + 1, updated_at = now()
         WHERE schema_name = $1 AND state NOT IN ('ready', 'failed')
         RETURNING state, attempt, tenant_name, domain, admin_email, admin_password_hash,
                   trial_days, tenant_id, last_error",
    )
    .bind(schema_name)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(mut row) = started else {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM public.provision_tenant WHERE schema_name = $1")
                .bind(schema_name)
                .fetch_optional(&mut *conn)
                .await?;
        return match state {
            None => Err(ProvisionError::UnknownTenant(schema_name.to_owned())),
            Some(state) => Ok(JobOutcome::AlreadyFinal(
                state.parse().map_err(ProvisionError::WrongState)?,
            )),
        };
    };
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
    while let Some((step, next)) = state.next_step() {
        if steps_run == max_steps {
            return Ok(JobOutcome::Paused(state));
        }
        steps_run += 1;
        let span = tracing::info_span!("step", step = step.as_str(), attempt = row.attempt);
        let _entered = span.enter();
        let started_at = std::time::Instant::now();
        match run_step(env, conn, schema_name, &mut row, step, state, next).await {
            Ok(()) => {
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
    Ok(JobOutcome::Finished(state))
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

async fn run_step<S: JobSink>(
    env: &JobEnv<'_, S>,
    conn: &mut PgConnection,
    schema_name: &str,
    row: &mut TenantRow,
    step: Step,
    from: TenantState,
    to: TenantState,
) -> Result<(), ProvisionError> {
    match step {
        Step::Register => {
            let mut tx = conn.begin().await?;
            let tenant_id = register(&mut tx, schema_name, row).await;
            let tenant_id = match tenant_id {
                Ok(id) => id,
                Err(e) => {
                    tx.rollback().await?;
                    return Err(explain_register_conflict(env.pool, e, row).await);
                }
            };
            sqlx::query("UPDATE public.provision_tenant SET tenant_id = $2 WHERE schema_name = $1")
                .bind(schema_name)
                .bind(tenant_id)
                .execute(&mut *tx)
                .await?;
            row.tenant_id = Some(tenant_id);
            transition(&mut tx, schema_name, from, to, step, row.attempt, env.actor).await?;
            tx.commit().await?;
        }
        Step::CreateSchema => {
            let mut tx = conn.begin().await?;
            let ident = quote_ident(schema_name);
            let ddl = format!(
                "CREATE SCHEMA {ident};\nSET LOCAL search_path TO {ident};\n{}\nSET LOCAL search_path TO public;",
                crate::migrate::TENANT_BOOKKEEPING
            );
            if let Err(e) = sqlx::raw_sql(trusted_sql(ddl)).execute(&mut *tx).await {
                tx.rollback().await?;
                return Err(match crate::error::sqlstate(&e).as_deref() {
                    // duplicate_schema: made by someone else, since this step
                    // commits the schema and the transition together.
                    Some("42P06") => ProvisionError::conflict(
                        "schema_name",
                        format!(
                            "schema {schema_name:?} already exists but was not created by this provisioning; \
                             drop it or choose another schema name"
                        ),
                    ),
                    _ => ProvisionError::Database(e),
                });
            }
            transition(&mut tx, schema_name, from, to, step, row.attempt, env.actor).await?;
            tx.commit().await?;
        }
        Step::Migrate => {
            migrate_schema_on(conn, env.migrations, schema_name).await?;
            let mut tx = conn.begin().await?;
            transition(&mut tx, schema_name, from, to, step, row.attempt, env.actor).await?;
            tx.commit().await?;
        }
        Step::CreateAdmin => {
            let Some(hash) = row.admin_password_hash.as_deref() else {
                return Err(ProvisionError::WrongState(
                    "the admin password hash is gone before the admin was created".into(),
                ));
            };
            let mut tx = conn.begin().await?;
            sqlx::query(schema_sql(
                "INSERT INTO {schema}.users_customuser
                     (password, email, role, is_staff, is_superuser, is_active, email_verified, date_joined)
                 VALUES ($1, $2, 'admin', true, true, true, true, now())
                 ON CONFLICT (email) DO NOTHING",
                schema_name,
            ))
            .bind(hash)
            .bind(&row.admin_email)
            .execute(&mut *tx)
            .await?;
            transition(&mut tx, schema_name, from, to, step, row.attempt, env.actor).await?;
            tx.commit().await?;
            row.admin_password_hash = None;
        }
        Step::Activate => {
            // Demo data asked for at creation, or by `seed-demo-data` while
            // the tenant was being provisioned.
            let demo: String = sqlx::query_scalar(
                "SELECT demo_data_state FROM public.provision_tenant WHERE schema_name = $1",
            )
            .bind(schema_name)
            .fetch_one(&mut *conn)
            .await?;
            if demo == "pending" {
                // Pushed before the transition commits: if we crash in
                // between, the step runs again and pushes again, and the seed
                // job runs once in effect however often it is delivered.
                env.sink
                    .push(JobRequest::now(JobKind::SeedDemoData, schema_name))
                    .await?;
            }
            let mut tx = conn.begin().await?;
            sqlx::query("UPDATE public.tenants_client SET is_active = true WHERE schema_name = $1")
                .bind(schema_name)
                .execute(&mut *tx)
                .await?;
            transition(&mut tx, schema_name, from, to, step, row.attempt, env.actor).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Inserts the tenant, inactive until `ready`, and its primary domain.
async fn register(tx: &mut PgConnection, schema_name: &str, row: &TenantRow) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "WITH client AS (
             INSERT INTO public.tenants_client
                 (schema_name, name, paid_until, on_trial, is_active, trial_days, created_on)
             VALUES ($1, $2, (now() AT TIME ZONE 'UTC')::date + $3, $3 > 0, false, $3,
                     (now() AT TIME ZONE 'UTC')::date)
             RETURNING id),
         primary_domain AS (
             INSERT INTO public.tenants_domain (domain, tenant_id, is_primary)
             SELECT $4, id, true FROM client)
         SELECT id FROM client",
    )
    .bind(schema_name)
    .bind(&row.tenant_name)
    .bind(row.trial_days)
    .bind(&row.domain)
    .fetch_one(&mut *tx)
    .await
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

/// Moves `schema_name` from `from` to `to` and records it: one guarded
/// statement, whose zero rows means someone else moved the tenant.
async fn transition(
    tx: &mut PgConnection,
    schema_name: &str,
    from: TenantState,
    to: TenantState,
    step: Step,
    attempt: i32,
    actor: &str,
) -> Result<(), ProvisionError> {
    let moved = sqlx::query(
        "WITH moved AS (
             UPDATE public.provision_tenant
             SET state = $3,
                 attempt = CASE WHEN $3 = 'ready' THEN attempt ELSE 1 END,
                 last_error = NULL,
                 updated_at = now(),
                 ready_at = CASE WHEN $3 = 'ready' THEN now() ELSE ready_at END,
                 admin_password_hash = CASE WHEN $3 IN ('admin_created', 'ready') THEN NULL
                                            ELSE admin_password_hash END
             WHERE schema_name = $1 AND state = $2
             RETURNING schema_name)
         INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, actor)
         SELECT schema_name, $2, $3, $4, $5, $6 FROM moved",
    )
    .bind(schema_name)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(step.as_str())
    .bind(attempt)
    .bind(actor)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 1 {
        Ok(())
    } else {
        Err(ProvisionError::WrongState(format!(
            "tenant {schema_name:?} left state {from} while step {step} ran"
        )))
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

//! Migrate-all runs: starting one (one cheap query, however many schemas),
//! handing its schemas to workers a bounded batch at a time, recording how
//! each schema ended, and finishing the run.
//!
//! A run is recorded in `provision_migration_run`, its schemas in
//! `provision_migration_run_schema`. A schema row moves
//! `pending → queued → migrated | current | failed`; a transient error sends
//! it back to `pending` with a delay, and `provision retry` sends a failed one
//! back to `pending`. The run finishes when no row is pending or queued.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::error::{ProvisionError, violated_constraint};
use crate::ident::advisory_key;
use crate::jobs::{JobKind, JobRequest, JobSink};
use crate::migrate::{SchemaMigrated, TenantMigrations, migrate_schema, pending_migrations_sql};
use crate::provision::retry_delay_ms;
use crate::script::literal;

/// At most this many jobs of migrate-all runs wait in Redis at once: far
/// below the ~8,000 where the queue library wedges.
pub const MAX_QUEUED: i64 = 1000;

/// A `queued` row older than this is assumed lost (Redis emptied, say) and
/// handed out again; migrating a schema twice is harmless.
pub const QUEUED_TIMEOUT_SECS: f64 = 120.0;

/// Who started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunTrigger {
    /// The nightly schedule, for the tick at this time.
    Cron(DateTime<Utc>),
    /// `provision migrate --all`.
    Operator,
}

/// What starting a run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStart {
    /// A new run, with its id.
    Started(i64),
    /// A run is already in progress: this one.
    AlreadyRunning(i64),
    /// The cron tick already has its run (started by another worker).
    TickTaken(i64),
}

/// Starts a migrate-all run to `target` (the newest tenant migration): every
/// ready tenant behind it becomes a pending row. One statement, whatever the
/// number of schemas; a run with nothing to do is finished at once.
pub async fn start_run(
    pool: &PgPool,
    trigger: RunTrigger,
    started_by: &str,
    target: i32,
) -> Result<RunStart, ProvisionError> {
    // The run in progress may finish between our insert's conflict and our
    // look for it: then try again.
    for _ in 0..5 {
        if let Some(start) = try_start_run(pool, trigger, started_by, target).await? {
            return Ok(start);
        }
    }
    Err(ProvisionError::WrongState(
        "migrate-all runs kept starting and finishing under us; try again".into(),
    ))
}

async fn try_start_run(
    pool: &PgPool,
    trigger: RunTrigger,
    started_by: &str,
    target: i32,
) -> Result<Option<RunStart>, ProvisionError> {
    let (kind, tick) = match trigger {
        RunTrigger::Cron(tick) => ("cron", Some(tick)),
        RunTrigger::Operator => ("operator", None),
    };
    let started: Result<Option<(i64, i32)>, sqlx::Error> = sqlx::query_as(
        "WITH run AS (
             INSERT INTO public.provision_migration_run
                 (trigger, started_by, tick, target_version, total, already_current, state, finished_at)
             SELECT $1, $2, $3, $4,
                    count(*) FILTER (WHERE schema_version < $4),
                    count(*) FILTER (WHERE schema_version >= $4),
                    CASE WHEN count(*) FILTER (WHERE schema_version < $4) = 0 THEN 'finished' ELSE 'running' END,
                    CASE WHEN count(*) FILTER (WHERE schema_version < $4) = 0 THEN now() END
             FROM public.provision_tenant WHERE state = 'ready'
             RETURNING id, total),
         behind AS (
             INSERT INTO public.provision_migration_run_schema (run_id, schema_name)
             SELECT run.id, t.schema_name FROM run, public.provision_tenant t
             WHERE t.state = 'ready' AND t.schema_version < $4)
         SELECT id, total FROM run",
    )
    .bind(kind)
    .bind(started_by)
    .bind(tick)
    .bind(target)
    .fetch_optional(pool)
    .await;
    match started {
        Ok(Some((id, _total))) => Ok(Some(RunStart::Started(id))),
        Ok(None) => Err(ProvisionError::WrongState("the run was not recorded".into())),
        Err(e) => match violated_constraint(&e) {
            Some("provision_migration_run_tick_key") => {
                let id: i64 =
                    sqlx::query_scalar("SELECT id FROM public.provision_migration_run WHERE tick = $1")
                        .bind(tick)
                        .fetch_one(pool)
                        .await?;
                Ok(Some(RunStart::TickTaken(id)))
            }
            Some("provision_migration_run_one_running") => {
                let id: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM public.provision_migration_run WHERE state = 'running'",
                )
                .fetch_optional(pool)
                .await?;
                Ok(id.map(RunStart::AlreadyRunning))
            }
            _ => Err(e.into()),
        },
    }
}

/// Hands up to [`MAX_QUEUED`] minus what is already queued of pending schema
/// rows to the queue as `MigrateSchema` jobs; sends rows queued too long ago
/// back to pending first. Only one process dispatches at a time (a
/// transaction-scoped advisory lock): the bound holds with any number of
/// workers. Returns how many jobs were pushed.
pub async fn dispatch<S: JobSink>(pool: &PgPool, sink: &S) -> Result<usize, ProvisionError> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(advisory_key("dispatch-migrations", ""))
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(0);
    }
    let claimed: Vec<(i64, String)> = sqlx::query_as(
        "WITH lost AS (
             UPDATE public.provision_migration_run_schema SET state = 'pending', updated_at = now()
             WHERE state = 'queued' AND queued_at < now() - make_interval(secs => $2)
             RETURNING run_id),
         room AS (
             SELECT greatest($1 - count(*), 0) AS n FROM public.provision_migration_run_schema
             WHERE state = 'queued' AND queued_at >= now() - make_interval(secs => $2)),
         next AS (
             SELECT s.run_id, s.schema_name FROM public.provision_migration_run_schema s
             JOIN public.provision_migration_run r ON r.id = s.run_id AND r.state = 'running'
             WHERE s.state = 'pending' AND s.not_before <= now()
             ORDER BY s.run_id, s.schema_name
             LIMIT (SELECT n FROM room)
             FOR UPDATE OF s SKIP LOCKED)
         UPDATE public.provision_migration_run_schema s
         SET state = 'queued', queued_at = now(), attempt = s.attempt + 1, updated_at = now()
         FROM next WHERE s.run_id = next.run_id AND s.schema_name = next.schema_name
         RETURNING s.run_id, s.schema_name",
    )
    .bind(MAX_QUEUED)
    .bind(QUEUED_TIMEOUT_SECS)
    .fetch_all(&mut *tx)
    .await?;
    // A run whose last two schemas ended at the same moment may have been
    // left running by both (each saw the other open): finish it here.
    sqlx::query(
        "UPDATE public.provision_migration_run r SET state = 'finished', finished_at = now()
         WHERE r.state = 'running' AND NOT EXISTS (
             SELECT 1 FROM public.provision_migration_run_schema s
             WHERE s.run_id = r.id AND s.state IN ('pending', 'queued'))",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // Pushed after the claim commits, so a job never finds its row not yet
    // queued. A crash in between leaves rows queued with no job: after
    // QUEUED_TIMEOUT_SECS they are handed out again.
    let jobs = batch_jobs(claimed);
    let schemas = jobs.iter().map(|j| 1 + j.more_schema_names.len()).sum();
    for job in jobs {
        sink.push(job).await?;
    }
    Ok(schemas)
}

/// At most this many schemas go in one `MigrateSchema` job.
pub const MAX_SCHEMAS_PER_JOB: usize = 25;

/// Groups claimed (run, schema) rows into `MigrateSchema` jobs: several
/// schemas per job, so the queue's fetch and acknowledgement are paid once
/// for many schemas, but at least about 32 jobs when there are that many
/// schemas, so every worker slot gets some.
fn batch_jobs(mut claimed: Vec<(i64, String)>) -> Vec<JobRequest> {
    claimed.sort_unstable();
    let per_job = (claimed.len() / 32).clamp(1, MAX_SCHEMAS_PER_JOB);
    let mut jobs: Vec<JobRequest> = Vec::new();
    for (run_id, schema_name) in claimed {
        match jobs.last_mut() {
            Some(job) if job.run_id == Some(run_id) && job.more_schema_names.len() + 1 < per_job => {
                job.more_schema_names.push(schema_name);
            }
            _ => {
                let mut job = JobRequest::now(JobKind::MigrateSchema, schema_name);
                job.run_id = Some(run_id);
                jobs.push(job);
            }
        }
    }
    jobs
}

/// Migrates one tenant's schema outside any run (`provision migrate
/// --schema-name`), recording the outcome in the tenant's history.
pub async fn migrate_tenant(
    pool: &PgPool,
    migrations: &TenantMigrations,
    schema_name: &str,
    actor: &str,
) -> Result<SchemaMigrated, ProvisionError> {
    let result = migrate_schema(pool, migrations, schema_name).await;
    let (detail, error) = match &result {
        Ok(done) if done.applied.is_empty() => (Some(format!("already at migration {}", done.version)), None),
        Ok(done) => (
            Some(format!("applied {:?}, now at {}", done.applied, done.version)),
            None,
        ),
        Err(e) if e.is_permanent() => (None, Some(e.to_string())),
        // A transient error is retried by the queue; not worth a history row.
        Err(_) => return result,
    };
    sqlx::query(
        "INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, error, detail, actor)
         SELECT schema_name, state, state, 'migrate_schema', 1, $2, $3, $4
         FROM public.provision_tenant WHERE schema_name = $1",
    )
    .bind(schema_name)
    .bind(error)
    .bind(detail)
    .bind(actor)
    .execute(pool)
    .await?;
    result
}

/// How one schema of a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaOutcome {
    /// Migrations were applied.
    Migrated(Vec<i32>),
    /// Nothing to apply.
    Current,
    /// A permanent error, or attempts used up.
    Failed(String),
    /// A transient error: pending again after a delay.
    Retrying(String),
    /// The schema's row was not queued: a duplicate or stale job, whose
    /// schema already ended (or was handed out again). Nothing was done.
    NotQueued,
}

/// At most this many schemas of a `MigrateSchema` job share one
/// transaction: their bookkeeping is then one statement for all of them,
/// which costs about what one schema's costs (bench/README.md). Few,
/// because a tenant's tables stay locked until its group commits (up to
/// five migrations' time, a few milliseconds for a column added) and a
/// failing migration rolls the others of its group back.
pub const SCHEMAS_PER_TRANSACTION: usize = 5;

/// Runs a run's `MigrateSchema` job for `schema_names`, in order, and
/// records how each ended; finishes the run when none is left open.
///
/// Schemas behind the run's target go the fast way: up to
/// [`SCHEMAS_PER_TRANSACTION`] at a time, their pending migrations, their
/// bookkeeping and their outcomes in one transaction (see
/// [`pending_migrations_sql`]), all of the job's transactions in one
/// message. Anything else (already current, a guard or a migration that
/// fails, a lost connection) goes through [`migrate_run_schema`], one schema
/// at a time, which looks again and reports exactly.
pub async fn migrate_run_schemas(
    pool: &PgPool,
    migrations: &TenantMigrations,
    run_id: i64,
    schema_names: &[String],
    max_attempts: i32,
) -> Result<Vec<(String, SchemaOutcome)>, ProvisionError> {
    let queued: Vec<(String, i32, i32)> = sqlx::query_as(
        "SELECT s.schema_name, r.target_version, coalesce(t.schema_version, 0)
         FROM public.provision_migration_run_schema s
         JOIN public.provision_migration_run r ON r.id = s.run_id
         LEFT JOIN public.provision_tenant t ON t.schema_name = s.schema_name
         WHERE s.run_id = $1 AND s.schema_name = ANY($2) AND s.state = 'queued'",
    )
    .bind(run_id)
    .bind(schema_names)
    .fetch_all(pool)
    .await?;
    // The version a schema would be migrated from the fast way; None when it
    // is not for the fast way.
    let fast_from = |schema_name: &String| {
        let (_, target, version) = queued.iter().find(|q| &q.0 == schema_name)?;
        (*version < *target && migrations.latest() >= *target).then_some(*version)
    };
    let outcome_cte = |applied: &[i32], in_list: &str| {
        format!(
            "outcome AS (
                 UPDATE public.provision_migration_run_schema
                 SET state = 'migrated', applied = '{{{applied}}}', error = NULL, updated_at = now()
                 WHERE run_id = {run_id} AND schema_name IN ({in_list}) AND state = 'queued')",
            applied = applied.iter().map(i32::to_string).collect::<Vec<_>>().join(","),
        )
    };
    let mut conn = pool.acquire().await?;
    let mut outcomes = Vec::with_capacity(schema_names.len());
    // Schemas from here on whose group stopped a script: each goes the
    // checked way.
    let mut checked_until = 0;
    let mut next = 0;
    while next < schema_names.len() {
        if next >= checked_until {
            // The schemas from `next` on that can go the fast way, in groups
            // migrated from the same version; a marker row after each COMMIT
            // says that group committed.
            let mut script = String::new();
            let mut sent: Vec<(&[String], Vec<i32>)> = Vec::new();
            let mut end = next;
            while let Some(version) = schema_names.get(end).and_then(fast_from) {
                let start = end;
                while end < schema_names.len()
                    && end - start < SCHEMAS_PER_TRANSACTION
                    && fast_from(&schema_names[end]) == Some(version)
                {
                    end += 1;
                }
                let group = &schema_names[start..end];
                let names: Vec<&str> = group.iter().map(String::as_str).collect();
                let Some((sql, applied)) =
                    pending_migrations_sql(migrations, &names, version, Some(&outcome_cte))?
                else {
                    break; // Not reached: the version is behind the newest.
                };
                write!(
                    script,
                    "BEGIN;\n{sql}COMMIT;\nSELECT {} AS committed;\n",
                    literal(&group[0])?
                )
                .expect("writing to a String");
                sent.push((group, applied));
            }
            if !sent.is_empty() {
                let rows = match crate::script::run(&mut conn, script).await {
                    Ok(rows) => rows,
                    Err(failure) => {
                        tracing::debug!(error = %failure.error, "schemas sent together stopped; the failing group goes one by one");
                        // The connection may be the reason: take another.
                        drop(conn);
                        conn = pool.acquire().await?;
                        failure.rows
                    }
                };
                let committed = rows
                    .iter()
                    .filter(|r| r.try_get::<String, _>("committed").is_ok())
                    .count();
                for (group, applied) in sent.iter().take(committed) {
                    for schema_name in group.iter() {
                        outcomes.push((schema_name.clone(), SchemaOutcome::Migrated(applied.clone())));
                    }
                    next += group.len();
                }
                if let Some((stopped, _)) = sent.get(committed) {
                    checked_until = next + stopped.len();
                }
                continue;
            }
        }
        // The schema at `next` is not for the fast way, or its group stopped
        // a script: the checked runner looks again and records exactly how
        // it ends.
        let schema_name = &schema_names[next];
        let outcome = if queued.iter().any(|q| &q.0 == schema_name) {
            migrate_run_schema(pool, migrations, run_id, schema_name, max_attempts).await?
        } else {
            SchemaOutcome::NotQueued
        };
        outcomes.push((schema_name.clone(), outcome));
        next += 1;
    }
    sqlx::query(
        "UPDATE public.provision_migration_run r SET state = 'finished', finished_at = now()
         WHERE r.id = $1 AND r.state = 'running' AND NOT EXISTS (
             SELECT 1 FROM public.provision_migration_run_schema s
             WHERE s.run_id = $1 AND s.state IN ('pending', 'queued'))",
    )
    .bind(run_id)
    .execute(&mut *conn)
    .await?;
    Ok(outcomes)
}

/// Runs a run's `MigrateSchema` job for `schema_name` and records how it
/// ended; finishes the run when it was the last open schema.
async fn migrate_run_schema(
    pool: &PgPool,
    migrations: &TenantMigrations,
    run_id: i64,
    schema_name: &str,
    max_attempts: i32,
) -> Result<SchemaOutcome, ProvisionError> {
    let row: Option<(i32, i32)> = sqlx::query_as(
        "SELECT s.attempt, r.target_version FROM public.provision_migration_run_schema s
         JOIN public.provision_migration_run r ON r.id = s.run_id
         WHERE s.run_id = $1 AND s.schema_name = $2 AND s.state = 'queued'",
    )
    .bind(run_id)
    .bind(schema_name)
    .fetch_optional(pool)
    .await?;
    let Some((attempt, target)) = row else {
        return Ok(SchemaOutcome::NotQueued);
    };
    let outcome = match migrate_schema(pool, migrations, schema_name).await {
        Ok(SchemaMigrated { version, .. }) if version < target => SchemaOutcome::Failed(format!(
            "this worker knows tenant migrations up to {version}, the run targets {target}: upgrade the worker"
        )),
        Ok(SchemaMigrated { applied, .. }) if applied.is_empty() => SchemaOutcome::Current,
        Ok(SchemaMigrated { applied, .. }) => SchemaOutcome::Migrated(applied),
        Err(e) if e.is_permanent() || attempt >= max_attempts => SchemaOutcome::Failed(e.to_string()),
        Err(e) => SchemaOutcome::Retrying(e.to_string()),
    };
    let (state, applied, error, delay_ms) = match &outcome {
        SchemaOutcome::Migrated(applied) => ("migrated", applied.clone(), None, 0),
        SchemaOutcome::Current => ("current", Vec::new(), None, 0),
        SchemaOutcome::Failed(e) => ("failed", Vec::new(), Some(e.clone()), 0),
        SchemaOutcome::Retrying(e) => ("pending", Vec::new(), Some(e.clone()), retry_delay_ms(attempt)),
        SchemaOutcome::NotQueued => return Ok(outcome),
    };
    sqlx::query(
        "WITH ended AS (
             UPDATE public.provision_migration_run_schema
             SET state = $3, applied = $4, error = $5, updated_at = now(),
                 not_before = now() + make_interval(secs => $6)
             WHERE run_id = $1 AND schema_name = $2 AND state = 'queued'
             RETURNING run_id)
         UPDATE public.provision_migration_run r SET state = 'finished', finished_at = now()
         WHERE r.id = $1 AND r.state = 'running' AND EXISTS (SELECT 1 FROM ended)
           AND NOT EXISTS (
               SELECT 1 FROM public.provision_migration_run_schema s
               WHERE s.run_id = $1 AND s.state IN ('pending', 'queued')
                 AND s.schema_name <> $2)
           AND $3 <> 'pending'",
    )
    .bind(run_id)
    .bind(schema_name)
    .bind(state)
    .bind(&applied)
    .bind(error)
    .bind(delay_ms as f64 / 1000.0)
    .execute(pool)
    .await?;
    Ok(outcome)
}

/// A run's progress and outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RunSummary {
    /// The run.
    pub run_id: i64,
    /// `running` or `finished`.
    pub state: String,
    /// `cron` or `operator`.
    pub trigger: String,
    /// Who started it.
    pub started_by: String,
    /// The tenant migration it brings schemas to.
    pub target_version: i32,
    /// Schemas that were behind when it started.
    pub total: i64,
    /// Schemas done so far (migrated, current or failed).
    pub done: i64,
    /// Schemas migrated.
    pub migrated: i64,
    /// Schemas already current: at the start, plus those found current.
    pub already_current: i64,
    /// Schemas failed.
    pub failed: i64,
    /// The failed schemas with their errors.
    pub failures: Vec<RunFailure>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A schema a run could not migrate.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, sqlx::FromRow)]
pub struct RunFailure {
    /// The schema.
    pub schema_name: String,
    /// Why.
    pub error: String,
}

/// The summary of run `run_id`.
pub async fn run_summary(pool: &PgPool, run_id: i64) -> Result<RunSummary, ProvisionError> {
    #[allow(clippy::type_complexity)]
    let row: (
        String,
        String,
        String,
        i32,
        i32,
        i32,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT r.state, r.trigger, r.started_by, r.target_version, r.total, r.already_current,
                    r.started_at, r.finished_at,
                    count(*) FILTER (WHERE s.state = 'migrated'),
                    count(*) FILTER (WHERE s.state = 'current'),
                    count(*) FILTER (WHERE s.state = 'failed')
             FROM public.provision_migration_run r
             LEFT JOIN public.provision_migration_run_schema s ON s.run_id = r.id
             WHERE r.id = $1 GROUP BY r.id",
    )
    .bind(run_id)
    .fetch_one(pool)
    .await?;
    let failures = sqlx::query_as(
        "SELECT schema_name, coalesce(error, '') AS error FROM public.provision_migration_run_schema
         WHERE run_id = $1 AND state = 'failed' ORDER BY schema_name LIMIT 100",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    let (state, trigger, started_by, target, total, current_at_start, started_at, finished_at, m, c, f) = row;
    Ok(RunSummary {
        run_id,
        state,
        trigger,
        started_by,
        target_version: target,
        total: i64::from(total),
        done: m + c + f,
        migrated: m,
        already_current: i64::from(current_at_start) + c,
        failed: f,
        failures,
        started_at,
        finished_at,
    })
}

/// Sends a ready tenant's failed migration (in its latest run) back to
/// pending, reopening that run. Returns the run, or `None` when the tenant
/// has no failed migration.
pub async fn retry_failed_migration(
    pool: &PgPool,
    schema_name: Option<&str>,
) -> Result<Vec<(String, i64)>, ProvisionError> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "UPDATE public.provision_migration_run_schema s
         SET state = 'pending', not_before = now(), attempt = 0, updated_at = now()
         FROM public.provision_migration_run r
         WHERE r.id = s.run_id AND s.state = 'failed' AND ($1::text IS NULL OR s.schema_name = $1)
           AND r.id = (SELECT max(run_id) FROM public.provision_migration_run_schema l
                       WHERE l.schema_name = s.schema_name)
         RETURNING s.schema_name, s.run_id",
    )
    .bind(schema_name)
    .fetch_all(&mut *tx)
    .await?;
    let mut runs: Vec<i64> = rows.iter().map(|(_, r)| *r).collect();
    runs.sort_unstable();
    runs.dedup();
    for run in runs {
        let reopened = sqlx::query(
            "UPDATE public.provision_migration_run SET state = 'running', finished_at = NULL
             WHERE id = $1 AND state = 'finished'",
        )
        .bind(run)
        .execute(&mut *tx)
        .await;
        if let Err(e) = reopened {
            return Err(match violated_constraint(&e) {
                Some("provision_migration_run_one_running") => ProvisionError::WrongState(
                    "another migrate-all run is in progress: retry once it has finished".into(),
                ),
                _ => e.into(),
            });
        }
    }
    tx.commit().await?;
    Ok(rows)
}

/// The run in progress, if any, else the latest.
pub async fn current_run(pool: &PgPool) -> Result<Option<i64>, ProvisionError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM public.provision_migration_run ORDER BY (state = 'running') DESC, id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?)
}

//! Migrate-all runs: starting one (one cheap query, however many schemas),
//! handing its schemas to workers a bounded batch at a time, recording how
//! each schema ended, and finishing the run.
//!
//! A run is recorded in `provision_migration_run`, its schemas in
//! `provision_migration_run_schema`. A schema row moves
//! `pending → queued → migrated | current | failed`; a transient error sends
//! it back to `pending` with a delay, and `provision retry` sends a failed one
//! back to `pending`. The run finishes when no row is pending or queued.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::error::{ProvisionError, violated_constraint};
use crate::jobs::{JobRequest, JobSink};
use crate::locks::advisory_key;
use crate::migrate::{SchemaMigrated, Target, TenantMigrations, migrate_schema, write_migrations};
use crate::names::constraint;
use crate::retry::{Next, RetryPolicy};
use crate::sql::{Ident, Marker, Script};

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

/// Which schemas a run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunScope<'a> {
    /// Every ready tenant behind the target (`migrate --all`, the schedule).
    All,
    /// One tenant's schema (`migrate --schema-name`), looked at whatever its
    /// recorded version, so a changed migration is reported.
    Schema(&'a str),
}

/// What starting a run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStart {
    /// A new run, with its id.
    Started(i64),
    /// A run of all schemas is already in progress: this one.
    AlreadyRunning(i64),
    /// The cron tick already has its run (started by another worker).
    TickTaken(i64),
}

/// Starts a migration run to `target` (the newest tenant migration): every
/// schema of `scope` behind it becomes a pending row. One statement,
/// whatever the number of schemas; a run with nothing to do is finished at
/// once.
pub async fn start_run(
    pool: &PgPool,
    trigger: RunTrigger,
    scope: RunScope<'_>,
    started_by: &str,
    target: i32,
) -> Result<RunStart, ProvisionError> {
    // The run in progress may finish between our insert's conflict and our
    // look for it: then try again.
    for _ in 0..5 {
        if let Some(start) = try_start_run(pool, trigger, scope, started_by, target).await? {
            return Ok(start);
        }
    }
    Err(ProvisionError::Contended(
        "migrate-all runs kept starting and finishing under us; try again".into(),
    ))
}

async fn try_start_run(
    pool: &PgPool,
    trigger: RunTrigger,
    scope: RunScope<'_>,
    started_by: &str,
    target: i32,
) -> Result<Option<RunStart>, ProvisionError> {
    let (kind, tick) = match trigger {
        RunTrigger::Cron(tick) => ("cron", Some(tick)),
        RunTrigger::Operator => ("operator", None),
    };
    let only = match scope {
        RunScope::All => None,
        RunScope::Schema(name) => Some(name),
    };
    let started: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(
        "WITH candidates AS (
             SELECT schema_name, $5::text IS NULL AND schema_version >= $4 AS current
             FROM public.provision_tenant
             WHERE state = 'ready' AND ($5::text IS NULL OR schema_name = $5)),
         run AS (
             INSERT INTO public.provision_migration_run
                 (trigger, scope, started_by, tick, target_version, total, already_current, state, finished_at)
             SELECT $1, CASE WHEN $5::text IS NULL THEN 'all' ELSE 'schema' END, $2, $3, $4,
                    count(*) FILTER (WHERE NOT current),
                    count(*) FILTER (WHERE current),
                    CASE WHEN count(*) FILTER (WHERE NOT current) = 0 THEN 'finished' ELSE 'running' END,
                    CASE WHEN count(*) FILTER (WHERE NOT current) = 0 THEN now() END
             FROM candidates
             RETURNING id),
         behind AS (
             INSERT INTO public.provision_migration_run_schema (run_id, schema_name)
             SELECT run.id, c.schema_name FROM run, candidates c WHERE NOT c.current)
         SELECT id FROM run",
    )
    .bind(kind)
    .bind(started_by)
    .bind(tick)
    .bind(target)
    .bind(only)
    .fetch_optional(pool)
    .await;
    match started {
        Ok(Some(id)) => Ok(Some(RunStart::Started(id))),
        Ok(None) => Err(ProvisionError::Contended("the run was not recorded".into())),
        Err(e) => match violated_constraint(&e) {
            Some(constraint::RUN_TICK_KEY) => {
                let id: i64 =
                    sqlx::query_scalar("SELECT id FROM public.provision_migration_run WHERE tick = $1")
                        .bind(tick)
                        .fetch_one(pool)
                        .await?;
                Ok(Some(RunStart::TickTaken(id)))
            }
            Some(constraint::ONE_RUNNING_RUN) => {
                let id: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM public.provision_migration_run WHERE state = 'running' AND scope = 'all'",
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
            Some(job) if job.run_id == run_id && job.more_schema_names.len() + 1 < per_job => {
                job.more_schema_names.push(schema_name);
            }
            _ => jobs.push(JobRequest::migrate(run_id, schema_name)),
        }
    }
    jobs
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

/// What a run's job needs to know of its run and of one queued schema.
#[derive(Debug, Clone, sqlx::FromRow)]
struct QueuedSchema {
    schema_name: String,
    /// The run's target.
    target_version: i32,
    /// `all` or `schema`: a run of one schema records its outcome in the
    /// tenant's history too.
    scope: String,
    /// The tenant's recorded version.
    schema_version: i32,
    /// Executions of this schema's migration in this run, this one counted.
    attempt: i32,
}

/// Runs a run's `MigrateSchema` job for `schema_names` and records how each
/// ended; finishes the run when none is left open. The outcomes come in the
/// job's order.
///
/// Schemas behind the run's target go the fast way: up to
/// [`SCHEMAS_PER_TRANSACTION`] at a time migrated from the same version,
/// their pending migrations, their bookkeeping and their outcomes in one
/// transaction, every group of the job in one message. A group that stops
/// the message goes the checked way schema by schema ([`migrate_schema`]),
/// and the groups after it are sent again; so does anything else (already
/// current, a worker that knows less than the run's target).
pub async fn migrate_run_schemas(
    pool: &PgPool,
    migrations: &TenantMigrations,
    run_id: i64,
    schema_names: &[String],
    policy: RetryPolicy,
    actor: &str,
) -> Result<Vec<(String, SchemaOutcome)>, ProvisionError> {
    let queued: Vec<QueuedSchema> = sqlx::query_as(
        "SELECT s.schema_name, r.target_version, r.scope, coalesce(t.schema_version, 0) AS schema_version,
                s.attempt
         FROM public.provision_migration_run_schema s
         JOIN public.provision_migration_run r ON r.id = s.run_id
         LEFT JOIN public.provision_tenant t ON t.schema_name = s.schema_name
         WHERE s.run_id = $1 AND s.schema_name = ANY($2) AND s.state = 'queued'",
    )
    .bind(run_id)
    .bind(schema_names)
    .fetch_all(pool)
    .await?;
    let mut outcomes: Vec<(String, SchemaOutcome)> = schema_names
        .iter()
        .filter(|name| !queued.iter().any(|q| &q.schema_name == *name))
        .map(|name| (name.clone(), SchemaOutcome::NotQueued))
        .collect();
    // In the job's order: the fast way in groups migrated from one version;
    // the rest the checked way.
    let mut groups: VecDeque<Vec<&QueuedSchema>> = VecDeque::new();
    let mut checked: Vec<&QueuedSchema> = Vec::new();
    for name in schema_names {
        let Some(q) = queued.iter().find(|q| &q.schema_name == name) else {
            continue;
        };
        let fast = q.schema_version < q.target_version && migrations.latest() >= q.target_version;
        if !fast {
            checked.push(q);
            continue;
        }
        match groups.back_mut() {
            Some(group)
                if group.len() < SCHEMAS_PER_TRANSACTION && group[0].schema_version == q.schema_version =>
            {
                group.push(q);
            }
            _ => groups.push_back(vec![q]),
        }
    }
    let mut conn = pool.acquire().await?;
    while !groups.is_empty() {
        let mut script = Script::new();
        let mut sent: Vec<(Vec<i32>, Marker<bool>)> = Vec::with_capacity(groups.len());
        for group in &groups {
            let idents = group
                .iter()
                .map(|q| Ident::tenant_schema(&q.schema_name))
                .collect::<Result<Vec<_>, _>>()?;
            let targets: Vec<Target<'_>> = idents
                .iter()
                .map(|ident| Target {
                    ident,
                    name: ident.name(),
                })
                .collect();
            let outcome = |s: &mut Script, applied: &[i32], targets: &[Target<'_>]| {
                write_migrated_outcome(s, run_id, applied, targets, &group[0].scope, actor);
            };
            script.sql("BEGIN;\n");
            let applied = write_migrations(
                &mut script,
                migrations,
                &targets,
                group[0].schema_version,
                migrations.latest(),
                Some(&outcome),
            );
            script.sql("COMMIT;\n");
            let committed = script.marker(|s| {
                s.sql("true");
            });
            sent.push((applied, committed));
        }
        let output = match script.finish()?.run(&mut conn).await {
            Ok(output) => output,
            Err(failure) => {
                tracing::debug!(run_id, error = %failure.error, "schemas sent together stopped; the failing group goes one by one");
                // The connection may be the reason: take another.
                drop(conn);
                conn = pool.acquire().await?;
                failure.output
            }
        };
        for (applied, committed) in sent {
            let group = groups.pop_front().expect("one group per marker");
            if output.reached(committed) {
                outcomes.extend(
                    group
                        .iter()
                        .map(|q| (q.schema_name.clone(), SchemaOutcome::Migrated(applied.clone()))),
                );
            } else {
                // This group stopped the message: its schemas go the checked
                // way; the groups after it were not run and are sent again.
                checked.extend(group);
                break;
            }
        }
    }
    for q in checked {
        let outcome = migrate_run_schema(&mut conn, migrations, run_id, q, policy, actor).await?;
        outcomes.push((q.schema_name.clone(), outcome));
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
    outcomes.sort_by_key(|(name, _)| schema_names.iter().position(|n| n == name));
    Ok(outcomes)
}

/// The CTEs that record a group's schemas as migrated in run `run_id`, and,
/// for a run of one schema, the tenant's history event.
fn write_migrated_outcome(
    script: &mut Script,
    run_id: i64,
    applied: &[i32],
    targets: &[Target<'_>],
    scope: &str,
    actor: &str,
) {
    script.sql("outcome AS (\n UPDATE public.provision_migration_run_schema\n SET state = 'migrated', applied = ARRAY[");
    script.join(applied, ", ", |s, v| {
        s.int(i64::from(*v));
    });
    script.sql("]::integer[], error = NULL, updated_at = now()\n WHERE run_id = ");
    script
        .int(run_id)
        .sql(" AND state = 'queued' AND schema_name IN (");
    script.join(targets, ", ", |s, t| {
        s.text(t.name);
    });
    script.sql("))");
    if scope == "schema" {
        let detail = format!(
            "applied {applied:?}, now at {}",
            applied.last().copied().unwrap_or_default()
        );
        script.sql(",\nevent AS (\n INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, detail, actor)\n SELECT schema_name, state, state, 'migrate_schema', 1, ");
        script.text(&detail).sql(", ").text(actor);
        script.sql(" FROM public.provision_tenant WHERE schema_name IN (");
        script.join(targets, ", ", |s, t| {
            s.text(t.name);
        });
        script.sql("))");
    }
}

/// The checked way for one queued schema of a run: [`migrate_schema`], then
/// its outcome recorded (and the run finished when it was its last open
/// schema). A transient error puts the schema back to pending after the
/// retry policy's delay.
async fn migrate_run_schema(
    conn: &mut sqlx::PgConnection,
    migrations: &TenantMigrations,
    run_id: i64,
    queued: &QueuedSchema,
    policy: RetryPolicy,
    actor: &str,
) -> Result<SchemaOutcome, ProvisionError> {
    let target = queued.target_version;
    let schema = Ident::tenant_schema(&queued.schema_name)?;
    let (outcome, delay_ms) = match migrate_schema(conn, migrations, &schema).await {
        Ok(SchemaMigrated { version, .. }) if version < target => (
            SchemaOutcome::Failed(format!(
                "this worker knows tenant migrations up to {version}, the run targets {target}: upgrade the worker"
            )),
            0,
        ),
        Ok(SchemaMigrated { applied, .. }) if applied.is_empty() => (SchemaOutcome::Current, 0),
        Ok(SchemaMigrated { applied, .. }) => (SchemaOutcome::Migrated(applied), 0),
        Err(e) => match policy.after(queued.attempt, &e) {
            Next::GiveUp(message) => (SchemaOutcome::Failed(message), 0),
            Next::RetryAfter(delay_ms) => (SchemaOutcome::Retrying(e.to_string()), delay_ms),
        },
    };
    let (state, applied, error, detail) = match &outcome {
        SchemaOutcome::Migrated(applied) => (
            "migrated",
            applied.clone(),
            None,
            Some(format!(
                "applied {applied:?}, now at {}",
                applied.last().copied().unwrap_or_default()
            )),
        ),
        SchemaOutcome::Current => ("current", Vec::new(), None, Some("already current".to_owned())),
        SchemaOutcome::Failed(e) => ("failed", Vec::new(), Some(e.clone()), None),
        SchemaOutcome::Retrying(e) => ("pending", Vec::new(), Some(e.clone()), None),
        SchemaOutcome::NotQueued => return Ok(outcome),
    };
    sqlx::query(
        "WITH ended AS (
             UPDATE public.provision_migration_run_schema
             SET state = $3, applied = $4, error = $5, updated_at = now(),
                 not_before = now() + make_interval(secs => $6)
             WHERE run_id = $1 AND schema_name = $2 AND state = 'queued'
             RETURNING run_id),
         event AS (
             INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, error, detail, actor)
             SELECT t.schema_name, t.state, t.state, 'migrate_schema', $9, $5, $7, $8
             FROM public.provision_tenant t
             WHERE t.schema_name = $2 AND $10 = 'schema' AND $3 <> 'pending' AND EXISTS (SELECT 1 FROM ended))
         UPDATE public.provision_migration_run r SET state = 'finished', finished_at = now()
         WHERE r.id = $1 AND r.state = 'running' AND EXISTS (SELECT 1 FROM ended)
           AND NOT EXISTS (
               SELECT 1 FROM public.provision_migration_run_schema s
               WHERE s.run_id = $1 AND s.state IN ('pending', 'queued')
                 AND s.schema_name <> $2)
           AND $3 <> 'pending'",
    )
    .bind(run_id)
    .bind(&queued.schema_name)
    .bind(state)
    .bind(&applied)
    .bind(error)
    .bind(delay_ms as f64 / 1000.0)
    .bind(detail)
    .bind(actor)
    .bind(queued.attempt)
    .bind(&queued.scope)
    .execute(&mut *conn)
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
                Some(constraint::ONE_RUNNING_RUN) => ProvisionError::WrongState(
                    "another migrate-all run is in progress: retry once it has finished".into(),
                ),
                _ => e.into(),
            });
        }
    }
    tx.commit().await?;
    Ok(rows)
}

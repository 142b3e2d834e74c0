//! Migration runs: starting one (every tenant's ledger read, a hundred
//! schemas a query, or taken at its hint when this project brought it to
//! an older set; the schemas behind recorded in one statement),
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

use crate::error::{ProvisionError, sqlstate_of, violated_constraint};
use crate::jobs::{JobRequest, JobSink};
use crate::ledger::{Ledger, ledgers_by_hint, read_ledger, read_ledgers};
use crate::locks::advisory_key;
use crate::migration_set::MigrationSet;
use crate::names::{constraint, sqlstate};
use crate::retry::{Next, RetryPolicy};
use crate::sql::{Ident, Marker, Script};
use crate::tenant_migration::{SchemaMigrated, Target, migrate_schema, refused_python, write_migrations};

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
    /// Every tenant of `tenants_client` but `public`, however it was made,
    /// but those whose deletion is under way (`migrate --all`, the
    /// schedule).
    All,
    /// One tenant's schema (`migrate --schema-name`).
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

/// Starts a migration run to `set`: every schema of `scope` whose ledger
/// lacks a migration of the set becomes a pending row, and a tenant whose
/// schema is missing a failed one. The ledgers are read a hundred schemas a
/// query, but for those whose hint names an older set ([`ledgers_by_hint`]);
/// the run and its rows are one statement. A run with nothing to do
/// is finished at once.
///
/// With a `sink`, the statement that records the rows also claims the
/// first of them, as far as [`dispatch`]'s bound allows, and they are pushed
/// as soon as it commits: the first schemas are migrated without waiting
/// for a dispatch of their own. Pass one only when the queue is reachable:
/// a claimed row whose push fails is handed out again after
/// [`QUEUED_TIMEOUT_SECS`], where an unclaimed one goes at the next
/// dispatch tick.
pub async fn start_run<S: JobSink>(
    pool: &PgPool,
    set: &MigrationSet,
    trigger: RunTrigger,
    scope: RunScope<'_>,
    started_by: &str,
    sink: Option<&S>,
) -> Result<RunStart, ProvisionError> {
    if scope == RunScope::All {
        record_in_public(pool, set).await?;
    }
    let names: Vec<String> = match scope {
        RunScope::All => {
            // Not a tenant whose deletion is under way: its schema is being
            // backed up, or is gone.
            sqlx::query_scalar(
                "SELECT c.schema_name FROM public.tenants_client c
                 WHERE c.schema_name <> 'public'
                   AND NOT EXISTS (SELECT 1 FROM public.provision_lifecycle l
                                   WHERE l.schema_name = c.schema_name
                                     AND (l.state IN ('backed_up', 'backup_verified', 'schema_dropped')
                                          OR (l.state = 'failed' AND l.failed_from_state IN
                                              ('backed_up', 'backup_verified', 'schema_dropped'))))
                 ORDER BY c.schema_name",
            )
            .fetch_all(pool)
            .await?
        }
        RunScope::Schema(name) => vec![name.to_owned()],
    };
    // Schemas this project brought to an older set are taken at their hint
    // (each job's transaction checks the ledger before it applies a thing);
    // the rest are read.
    let mut ledgers = ledgers_by_hint(pool, set, &names).await?;
    let unhinted: Vec<String> = names
        .iter()
        .filter(|n| !ledgers.contains_key(*n))
        .cloned()
        .collect();
    ledgers.extend(read_ledgers(pool, set, &unhinted).await?);
    let mut rows = RunRows::default();
    for name in names {
        match ledgers.get(&name) {
            Some(Ledger::NoSchema) | None => rows.push(
                name.clone(),
                &[],
                false,
                Some(format!(
                    "schema {name:?} does not exist: its tenant row has no schema \
                     (`provision check` says how to fix it)"
                )),
            ),
            Some(ledger) => {
                let pending = ledger.pending(set);
                if pending.is_empty() {
                    rows.current += 1;
                } else {
                    rows.push(name, &pending, ledger != &Ledger::NoLedger, None);
                }
            }
        }
    }
    // The run in progress may finish between our insert's conflict and our
    // look for it: then try again.
    let run = NewRun {
        target: set.version(),
        trigger,
        scope,
        started_by,
        claim: sink.is_some(),
    };
    for _ in 0..5 {
        if let Some((start, claimed)) = try_start_run(pool, &run, &rows).await? {
            // The run is recorded: a push that fails is the timeout's to
            // mend, not the caller's.
            if let Some(sink) = sink
                && let Err(e) = push_claimed(sink, claimed).await
            {
                tracing::warn!(error = %e, "could not hand out the run's first schemas; they are handed out again in {QUEUED_TIMEOUT_SECS} s");
            }
            return Ok(start);
        }
    }
    Err(ProvisionError::Contended(
        "migrate-all runs kept starting and finishing under us; try again".into(),
    ))
}

/// What the platform's `migrate_schemas` does in the public schema for a
/// tenant app's migration, which its router keeps out of it: records it in
/// `public.django_migrations` without running it (once what it depends on
/// is recorded there, as Django would refuse otherwise), so that afterwards
/// the platform's command finds nothing to apply. A shared app's migration,
/// which would run there, is the platform's `migrate_schemas --shared` to
/// apply. Returns how many were recorded.
async fn record_in_public(pool: &PgPool, set: &MigrationSet) -> Result<usize, ProvisionError> {
    let mut tx = pool.begin().await?;
    let has_ledger: bool = sqlx::query_scalar("SELECT to_regclass('public.django_migrations') IS NOT NULL")
        .fetch_one(&mut *tx)
        .await?;
    if !has_ledger {
        return Ok(0);
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(advisory_key("public-ledger", ""))
        .execute(&mut *tx)
        .await?;
    let recorded: Vec<(String, String)> = sqlx::query_as("SELECT app, name FROM public.django_migrations")
        .fetch_all(&mut *tx)
        .await?;
    let mut recorded: std::collections::HashSet<(String, String)> = recorded.into_iter().collect();
    let mut record: Vec<(String, String)> = Vec::new();
    for m in set.members() {
        let key = (m.app.clone(), m.name.clone());
        if m.in_public || recorded.contains(&key) || !m.parents.iter().all(|p| recorded.contains(p)) {
            continue;
        }
        recorded.insert(key.clone());
        record.push(key);
    }
    if record.is_empty() {
        return Ok(0);
    }
    sqlx::query(
        "INSERT INTO public.django_migrations (app, name, applied)
         SELECT app, name, clock_timestamp() FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS m(app, name, ord)
         ORDER BY ord",
    )
    .bind(record.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>())
    .bind(record.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(record.len())
}

/// The rows a run starts with.
#[derive(Debug, Default)]
struct RunRows {
    names: Vec<String>,
    /// Each schema's pending positions, as array literals (their lengths
    /// differ, so they cannot be one two-dimensional array).
    pending: Vec<String>,
    has_ledger: Vec<bool>,
    errors: Vec<Option<String>>,
    current: i32,
}

impl RunRows {
    fn push(&mut self, name: String, pending: &[i32], has_ledger: bool, error: Option<String>) {
        let list: Vec<String> = pending.iter().map(i32::to_string).collect();
        self.names.push(name);
        self.pending.push(format!("{{{}}}", list.join(",")));
        self.has_ledger.push(has_ledger);
        self.errors.push(error);
    }
}

/// What a run is started with.
struct NewRun<'a> {
    target: i32,
    trigger: RunTrigger,
    scope: RunScope<'a>,
    started_by: &'a str,
    /// Whether its first rows are claimed for the queue as it is recorded.
    claim: bool,
}

/// Records the run and its rows; `None` when the run in progress that
/// refused it has finished since. With `run.claim`, under the lock that
/// [`dispatch`] takes and within its bound, the first rows are recorded
/// already queued and returned.
async fn try_start_run(
    pool: &PgPool,
    run: &NewRun<'_>,
    rows: &RunRows,
) -> Result<Option<(RunStart, Vec<(i64, String)>)>, ProvisionError> {
    let (kind, tick) = match run.trigger {
        RunTrigger::Cron(tick) => ("cron", Some(tick)),
        RunTrigger::Operator => ("operator", None),
    };
    let scope_name = match run.scope {
        RunScope::All => "all",
        RunScope::Schema(_) => "schema",
    };
    let total = i32::try_from(rows.names.len()).unwrap_or(i32::MAX);
    let mut tx = pool.begin().await?;
    let room: i64 = if run.claim {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(advisory_key("dispatch-migrations", ""))
            .execute(&mut *tx)
            .await?;
        queue_room(&mut tx).await?
    } else {
        0
    };
    let mut room = usize::try_from(room).unwrap_or(0);
    let claimed: Vec<bool> = rows
        .errors
        .iter()
        .map(|error| {
            let claim = error.is_none() && room > 0;
            room -= usize::from(claim);
            claim
        })
        .collect();
    let started: Result<Option<(i64, Vec<String>)>, sqlx::Error> = sqlx::query_as(
        "WITH run AS (
             INSERT INTO public.provision_migration_run
                 (trigger, scope, started_by, tick, target_version, total, already_current, state, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7,
                     CASE WHEN $6 = 0 THEN 'finished' ELSE 'running' END,
                     CASE WHEN $6 = 0 THEN now() END)
             RETURNING id),
         behind AS (
             INSERT INTO public.provision_migration_run_schema
                 (run_id, schema_name, pending, has_ledger, state, error, queued_at, attempt)
             SELECT run.id, r.name, r.pending::integer[], r.has_ledger,
                    CASE WHEN r.error IS NOT NULL THEN 'failed' WHEN r.claimed THEN 'queued' ELSE 'pending' END,
                    r.error, CASE WHEN r.claimed THEN now() END, r.claimed::integer
             FROM run, unnest($8::text[], $9::text[], $10::boolean[], $11::text[], $12::boolean[])
                  AS r(name, pending, has_ledger, error, claimed)
             RETURNING schema_name, state)
         SELECT id, coalesce((SELECT array_agg(schema_name) FROM behind WHERE state = 'queued'), '{}')
         FROM run",
    )
    .bind(kind)
    .bind(scope_name)
    .bind(run.started_by)
    .bind(tick)
    .bind(run.target)
    .bind(total)
    .bind(rows.current)
    .bind(&rows.names)
    .bind(&rows.pending)
    .bind(&rows.has_ledger)
    .bind(&rows.errors)
    .bind(&claimed)
    .fetch_optional(&mut *tx)
    .await;
    let (started, claimed) = match started {
        Ok(Some(row)) => row,
        Ok(None) => return Err(ProvisionError::Contended("the run was not recorded".into())),
        Err(e) => {
            drop(tx);
            return match violated_constraint(&e) {
                Some(constraint::RUN_TICK_KEY) => {
                    let id: i64 =
                        sqlx::query_scalar("SELECT id FROM public.provision_migration_run WHERE tick = $1")
                            .bind(tick)
                            .fetch_one(pool)
                            .await?;
                    Ok(Some((RunStart::TickTaken(id), Vec::new())))
                }
                Some(constraint::ONE_RUNNING_RUN) => {
                    let id: Option<i64> = sqlx::query_scalar(
                        "SELECT id FROM public.provision_migration_run WHERE state = 'running' AND scope = 'all'",
                    )
                    .fetch_optional(pool)
                    .await?;
                    Ok(id.map(|id| (RunStart::AlreadyRunning(id), Vec::new())))
                }
                _ => Err(e.into()),
            };
        }
    };
    // A run of nothing but missing schemas has nothing open: finished.
    finish_if_done(&mut *tx, started).await?;
    tx.commit().await?;
    let claimed = claimed.into_iter().map(|name| (started, name)).collect();
    Ok(Some((RunStart::Started(started), claimed)))
}

/// Finishes run `run_id` when none of its schemas is pending or queued.
async fn finish_if_done<'e, E>(executor: E, run_id: i64) -> Result<(), ProvisionError>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query(
        "UPDATE public.provision_migration_run r SET state = 'finished', finished_at = now()
         WHERE r.id = $1 AND r.state = 'running' AND NOT EXISTS (
             SELECT 1 FROM public.provision_migration_run_schema s
             WHERE s.run_id = $1 AND s.state IN ('pending', 'queued'))",
    )
    .bind(run_id)
    .execute(executor)
    .await?;
    Ok(())
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
    let room = queue_room(&mut tx).await?;
    let claimed: Vec<(i64, String)> = sqlx::query_as(
        "WITH lost AS (
             UPDATE public.provision_migration_run_schema SET state = 'pending', updated_at = now()
             WHERE state = 'queued' AND queued_at < now() - make_interval(secs => $2)
             RETURNING run_id),
         next AS (
             SELECT s.run_id, s.schema_name FROM public.provision_migration_run_schema s
             JOIN public.provision_migration_run r ON r.id = s.run_id AND r.state = 'running'
             WHERE s.state = 'pending' AND s.not_before <= now()
             ORDER BY s.run_id, s.schema_name
             LIMIT $1
             FOR UPDATE OF s SKIP LOCKED)
         UPDATE public.provision_migration_run_schema s
         SET state = 'queued', queued_at = now(), attempt = s.attempt + 1, updated_at = now()
         FROM next WHERE s.run_id = next.run_id AND s.schema_name = next.schema_name
         RETURNING s.run_id, s.schema_name",
    )
    .bind(room)
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
    push_claimed(sink, claimed).await
}

/// How many more schema rows may be queued under [`MAX_QUEUED`]: rows
/// queued longer ago than [`QUEUED_TIMEOUT_SECS`] count as lost. Read
/// under the dispatch lock, by [`dispatch`] and by a run's start.
async fn queue_room(tx: &mut sqlx::PgConnection) -> Result<i64, ProvisionError> {
    Ok(sqlx::query_scalar(
        "SELECT greatest($1 - count(*), 0) FROM public.provision_migration_run_schema
         WHERE state = 'queued' AND queued_at >= now() - make_interval(secs => $2)",
    )
    .bind(MAX_QUEUED)
    .bind(QUEUED_TIMEOUT_SECS)
    .fetch_one(&mut *tx)
    .await?)
}

/// Pushes claimed (run, schema) rows as `MigrateSchema` jobs; returns how
/// many schemas. Called once the claim has committed, so a job never finds
/// its row not yet queued. A crash in between leaves rows queued with no
/// job: after [`QUEUED_TIMEOUT_SECS`] they are handed out again.
async fn push_claimed<S: JobSink>(sink: &S, claimed: Vec<(i64, String)>) -> Result<usize, ProvisionError> {
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
    /// The run's target set.
    target_version: i32,
    /// `all` or `schema`: a run of one schema records its outcome in the
    /// tenant's history too.
    scope: String,
    /// What the schema lacked when it was last looked at.
    pending: Vec<i32>,
    has_ledger: bool,
    /// Executions of this schema's migration in this run, this one counted.
    attempt: i32,
}

impl QueuedSchema {
    /// The ledger the row describes, in `set` (the run's target).
    fn ledger(&self, set: &MigrationSet) -> Ledger {
        if !self.has_ledger {
            return Ledger::NoLedger;
        }
        Ledger::Applied(
            set.members()
                .iter()
                .map(|m| m.position)
                .filter(|p| !self.pending.contains(p))
                .collect(),
        )
    }
}

/// A job's schemas to go the fast way, in transactions of up to
/// [`SCHEMAS_PER_TRANSACTION`] with the same ledger each.
type Groups<'q> = VecDeque<Vec<(&'q QueuedSchema, Ident, Ledger)>>;

/// Adds queued schema `q`, whose ledger is `ledger`, to the last group if it
/// has room and the same ledger, else to a new one; or to `checked` when its
/// migrations must be refused (Python on a schema that has migrations) or
/// its name is not a schema's.
fn add_to_groups<'q>(
    groups: &mut Groups<'q>,
    checked: &mut Vec<&'q QueuedSchema>,
    set: &MigrationSet,
    q: &'q QueuedSchema,
    ledger: Ledger,
) {
    let ident = match Ident::existing_schema(&q.schema_name) {
        Ok(ident) if refused_python(set, &ledger).is_none() => ident,
        _ => {
            checked.push(q);
            return;
        }
    };
    match groups.back_mut() {
        Some(group) if group.len() < SCHEMAS_PER_TRANSACTION && group[0].2 == ledger => {
            group.push((q, ident, ledger));
        }
        _ => groups.push_back(vec![(q, ident, ledger)]),
    }
}

/// Runs a run's `MigrateSchema` job for `schema_names` and records how each
/// ended; finishes the run when none is left open. The outcomes come in the
/// job's order.
///
/// Schemas go the fast way when their rows still describe them: up to
/// [`SCHEMAS_PER_TRANSACTION`] with the same ledger at a time, their pending
/// migrations, ledger rows, bookkeeping and outcomes in one transaction,
/// every group of the job in one message. The first group whose ledger
/// guard fails has its ledgers and those of the groups after it read again
/// in one query: the current ones are recorded so, the rest regrouped and
/// sent again. A group that stops the message otherwise (a migration that
/// fails, or a guard failing a second time) goes the checked way schema by
/// schema, which reads the ledger again ([`migrate_schema`]), and the groups
/// after it are sent again; so does a schema whose migrations this worker
/// must refuse (Python on a schema that has migrations).
pub async fn migrate_run_schemas(
    pool: &PgPool,
    set: &MigrationSet,
    run_id: i64,
    schema_names: &[String],
    policy: RetryPolicy,
    actor: &str,
) -> Result<Vec<(String, SchemaOutcome)>, ProvisionError> {
    let queued: Vec<QueuedSchema> = sqlx::query_as(
        "SELECT s.schema_name, r.target_version, r.scope, s.pending, s.has_ledger, s.attempt
         FROM public.provision_migration_run_schema s
         JOIN public.provision_migration_run r ON r.id = s.run_id
         WHERE s.run_id = $1 AND s.schema_name = ANY($2) AND s.state = 'queued'",
    )
    .bind(run_id)
    .bind(schema_names)
    .fetch_all(pool)
    .await?;
    if let Some(q) = queued.first()
        && q.target_version > set.version()
    {
        return Err(ProvisionError::StaleSet(format!(
            "run {run_id} targets tenant migration set {}, this worker has {}",
            q.target_version,
            set.version()
        )));
    }
    let mut outcomes: Vec<(String, SchemaOutcome)> = schema_names
        .iter()
        .filter(|name| !queued.iter().any(|q| &q.schema_name == *name))
        .map(|name| (name.clone(), SchemaOutcome::NotQueued))
        .collect();
    // In the job's order: the fast way in groups with the same ledger, for
    // rows written for this set; the rest the checked way.
    let mut groups: Groups<'_> = VecDeque::new();
    let mut checked: Vec<&QueuedSchema> = Vec::new();
    for name in schema_names {
        let Some(q) = queued.iter().find(|q| &q.schema_name == name) else {
            continue;
        };
        let ledger = q.ledger(set);
        if q.target_version == set.version() && !q.pending.is_empty() {
            add_to_groups(&mut groups, &mut checked, set, q, ledger);
        } else {
            checked.push(q);
        }
    }
    let mut conn = pool.acquire().await?;
    // A guard that fails says a ledger is not what the row (or its hint)
    // said: the platform's Django migrated it meanwhile, most often every
    // schema alike. The ledgers of the failing group and those after it are
    // then read once, in one query, and the schemas regrouped by what they
    // really lack; only a second failure sends them the checked way.
    let mut read_again = false;
    while !groups.is_empty() {
        let mut script = Script::new();
        let mut sent: Vec<(Vec<i32>, Marker<bool>)> = Vec::with_capacity(groups.len());
        for group in &groups {
            let targets: Vec<Target<'_>> = group
                .iter()
                .map(|(_, ident, ledger)| Target { ident, ledger })
                .collect();
            let scope = group[0].0.scope.as_str();
            let outcome = |s: &mut Script, applied: &[i32], targets: &[Target<'_>]| {
                write_migrated_outcome(s, run_id, applied, targets, scope, actor);
            };
            script.sql("BEGIN;\n");
            let applied = write_migrations(&mut script, set, &targets, None, Some(&outcome))?;
            script.sql("COMMIT;\n");
            let committed = script.marker(|s| {
                s.sql("true");
            });
            sent.push((applied, committed));
        }
        let (output, guard_failed) = match script.finish()?.run(&mut conn).await {
            Ok(output) => (output, false),
            Err(failure) => {
                tracing::debug!(run_id, error = %failure.error, "schemas sent together stopped");
                let guard_failed = sqlstate_of(&failure.error).as_deref() == Some(sqlstate::GUARD_FAILED);
                // The connection may be the reason: take another.
                drop(conn);
                conn = pool.acquire().await?;
                (failure.output, guard_failed)
            }
        };
        for (applied, committed) in sent {
            let group = groups.pop_front().expect("one group per marker");
            if output.reached(committed) {
                outcomes.extend(
                    group
                        .iter()
                        .map(|(q, _, _)| (q.schema_name.clone(), SchemaOutcome::Migrated(applied.clone()))),
                );
                continue;
            }
            // This group stopped the message; the groups after it were not
            // run and are sent again.
            if guard_failed && !read_again {
                read_again = true;
                let rest: Vec<&QueuedSchema> = group
                    .iter()
                    .chain(groups.iter().flatten())
                    .map(|(q, _, _)| *q)
                    .collect();
                groups.clear();
                let names: Vec<String> = rest.iter().map(|q| q.schema_name.clone()).collect();
                let ledgers = read_ledgers(pool, set, &names).await?;
                for q in rest {
                    match ledgers.get(&q.schema_name) {
                        Some(ledger @ Ledger::Applied(_)) if ledger.pending(set).is_empty() => {
                            record_outcome(&mut conn, set, run_id, q, &SchemaOutcome::Current, 0, actor)
                                .await?;
                            outcomes.push((q.schema_name.clone(), SchemaOutcome::Current));
                        }
                        Some(ledger @ (Ledger::Applied(_) | Ledger::NoLedger)) => {
                            add_to_groups(&mut groups, &mut checked, set, q, ledger.clone());
                        }
                        Some(Ledger::NoSchema) | None => checked.push(q),
                    }
                }
            } else {
                checked.extend(group.iter().map(|(q, _, _)| *q));
            }
            break;
        }
    }
    for q in checked {
        let outcome = migrate_run_schema(pool, &mut conn, set, run_id, q, policy, actor).await?;
        outcomes.push((q.schema_name.clone(), outcome));
    }
    finish_if_done(&mut *conn, run_id).await?;
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
        s.text(t.ident.name());
    });
    script.sql("))");
    if scope == "schema" {
        let detail = format!("applied {} migration(s)", applied.len());
        script.sql(
            ",\nevent AS (\n INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, detail, actor)\n SELECT x.name, coalesce(t.state, 'external'), coalesce(t.state, 'external'), 'migrate_schema', 1, ",
        );
        script.text(&detail).sql(", ").text(actor);
        script.sql(" FROM (VALUES (");
        script.join(targets, "), (", |s, t| {
            s.text(t.ident.name());
        });
        script.sql(")) AS x(name) LEFT JOIN public.provision_tenant t ON t.schema_name = x.name)");
    }
}

/// The checked way for one queued schema of a run: its ledger read again,
/// [`migrate_schema`], then its outcome recorded (and the run finished when
/// it was its last open schema). A transient error puts the schema back to
/// pending after the retry policy's delay.
async fn migrate_run_schema(
    pool: &PgPool,
    conn: &mut sqlx::PgConnection,
    set: &MigrationSet,
    run_id: i64,
    queued: &QueuedSchema,
    policy: RetryPolicy,
    actor: &str,
) -> Result<SchemaOutcome, ProvisionError> {
    let migrated = async {
        let schema = Ident::existing_schema(&queued.schema_name)?;
        let ledger = read_ledger(pool, set, &queued.schema_name).await?;
        migrate_schema(conn, set, &schema, &ledger).await
    }
    .await;
    let (outcome, delay_ms) = match migrated {
        Ok(SchemaMigrated { applied }) if applied.is_empty() => (SchemaOutcome::Current, 0),
        Ok(SchemaMigrated { applied }) => (SchemaOutcome::Migrated(applied), 0),
        Err(e) => match policy.after(queued.attempt, &e) {
            Next::GiveUp(message) => (SchemaOutcome::Failed(message), 0),
            Next::RetryAfter(delay_ms) => (SchemaOutcome::Retrying(e.to_string()), delay_ms),
        },
    };
    record_outcome(conn, set, run_id, queued, &outcome, delay_ms, actor).await?;
    Ok(outcome)
}

/// Records how queued schema `queued` of run `run_id` ended (a retry
/// pending again after `delay_ms`), with the tenant's history event for a
/// run of one schema, and finishes the run when it was its last open
/// schema.
async fn record_outcome(
    conn: &mut sqlx::PgConnection,
    set: &MigrationSet,
    run_id: i64,
    queued: &QueuedSchema,
    outcome: &SchemaOutcome,
    delay_ms: u64,
    actor: &str,
) -> Result<(), ProvisionError> {
    let (state, applied, error, detail) = match outcome {
        SchemaOutcome::Migrated(applied) => (
            "migrated",
            applied.clone(),
            None,
            Some(format!("applied {} migration(s)", applied.len())),
        ),
        SchemaOutcome::Current => ("current", Vec::new(), None, Some("already current".to_owned())),
        SchemaOutcome::Failed(e) => ("failed", Vec::new(), Some(e.clone()), None),
        SchemaOutcome::Retrying(e) => ("pending", Vec::new(), Some(e.clone()), None),
        SchemaOutcome::NotQueued => return Ok(()),
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
             SELECT $2, coalesce(t.state, 'external'), coalesce(t.state, 'external'), 'migrate_schema', $9, $5, $7, $8
             FROM (SELECT 1) AS one LEFT JOIN public.provision_tenant t ON t.schema_name = $2
             WHERE $10 = 'schema' AND $3 <> 'pending' AND EXISTS (SELECT 1 FROM ended)),
         -- A schema found current (its hint was stale): the next run need
         -- not look twice. A hint naming the target is never trusted, so
         -- one written from a read outside the schema's lock is safe.
         hint AS (
             INSERT INTO public.provision_ledger_hint (schema_name, set_version)
             SELECT $2, $11 WHERE $3 = 'current' AND EXISTS (SELECT 1 FROM ended)
             ON CONFLICT (schema_name) DO UPDATE SET set_version = EXCLUDED.set_version, recorded_at = now())
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
    .bind(set.version())
    .execute(&mut *conn)
    .await?;
    Ok(())
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
    /// Schemas taken as behind when it started: read so, or hinted so (a
    /// stale hint's schema then ends among the already current).
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

//! What `DeleteTenant` and `RestoreTenant` share: the tenant's advisory
//! lock (the one `CreateTenant` takes, so no two jobs of a tenant ever
//! interleave), counting each execution before it runs, the steps from the
//! lifecycle row's state onwards, and the one retry policy.
//!
//! Each step ends with one transaction that first locks the tenant's
//! lifecycle row and checks it is still in the state the step leaves, then
//! does the step's effect on the database and moves the state on, recorded
//! in the history. What a step does outside the database (a file written,
//! `pg_restore` run) is made so that doing it again is harmless.

use std::path::Path;

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use super::archive::PgTarget;
use super::{delete_tenant, restore_tenant};
use crate::error::ProvisionError;
use crate::jobs::{JobKind, JobRequest, JobSink};
use crate::locks::advisory_key;
use crate::operator::record_lifecycle_event;
use crate::retry::{Next, RetryPolicy, backoff_ms};
use crate::sql::Ident;

/// What a lifecycle job needs.
#[derive(Debug)]
pub struct LifecycleEnv<'a, S> {
    /// PostgreSQL.
    pub pool: &'a PgPool,
    /// The queue, for the job's retries.
    pub sink: &'a S,
    /// Recorded as the actor of every step.
    pub actor: &'a str,
    /// When a failed step is tried again, and when it is failed for good.
    pub policy: RetryPolicy,
    /// `PROVISION_BACKUP_DIR`: where backups are written (`None`: not set,
    /// and a deletion with a backup fails at its first step saying so).
    pub backup_dir: Option<&'a Path>,
    /// Where `pg_dump` and `pg_restore` connect: the database of `pool`.
    pub target: &'a PgTarget,
}

/// How a lifecycle job ended. Every variant is a normal end for the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleOutcome {
    /// The job brought the row to this state (`deleted`, `active` or
    /// `failed`).
    Finished(String),
    /// Nothing for this job to do: the row is in this state (a duplicate or
    /// late job, a deletion cancelled).
    NothingToDo(String),
    /// The deletion is not due before this time.
    NotDue(DateTime<Utc>),
    /// Another job holds the tenant; this one was pushed again for later.
    Busy,
    /// Stopped after the number of steps asked for, in this state.
    Paused(String),
    /// A transient error; the job was pushed again to run after a delay.
    RetryScheduled {
        /// The step that hit it.
        step: &'static str,
        /// Which execution of that step this was.
        attempt: i32,
        /// Delay before the next one, in milliseconds.
        delay_ms: u64,
        /// The error.
        error: String,
    },
}

/// A step of a lifecycle job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LifecycleStep {
    /// `pg_dump` the schema and the tenant's public rows.
    Backup,
    /// `pg_restore -l` the file and record its SHA-256.
    VerifyBackup,
    /// `DROP SCHEMA … CASCADE`.
    DropSchema,
    /// Delete the tenant's `tenants_domain` and `tenants_client` rows.
    DeleteRows,
    /// `pg_restore` the file: the schema and the staging schema.
    RestoreSchema,
    /// Put the public rows back, active, and drop the staging schema.
    RestoreRows,
}

impl LifecycleStep {
    /// The name in the history.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::VerifyBackup => "verify_backup",
            Self::DropSchema => "drop_schema",
            Self::DeleteRows => "delete_rows",
            Self::RestoreSchema => "restore_schema",
            Self::RestoreRows => "restore_rows",
        }
    }

    /// The step that leaves `row`'s state, and the state it leads to.
    fn next(row: &LifecycleRow) -> Option<(Self, &'static str)> {
        match row.state.as_str() {
            "deletion_scheduled" if row.with_backup == Some(false) => {
                Some((Self::DropSchema, "schema_dropped"))
            }
            "deletion_scheduled" => Some((Self::Backup, "backed_up")),
            "backed_up" => Some((Self::VerifyBackup, "backup_verified")),
            "backup_verified" => Some((Self::DropSchema, "schema_dropped")),
            "schema_dropped" => Some((Self::DeleteRows, "deleted")),
            "restore_requested" => Some((Self::RestoreSchema, "schema_restored")),
            "schema_restored" => Some((Self::RestoreRows, "active")),
            _ => None,
        }
    }

    /// Where a retry resumes after this step failed from `state`: a backup
    /// that does not verify is taken again.
    fn resume_from(self, state: &str) -> &str {
        match self {
            Self::VerifyBackup => "deletion_scheduled",
            _ => state,
        }
    }
}

/// The states each job works from.
pub(super) const DELETION_STATES: [&str; 4] = [
    "deletion_scheduled",
    "backed_up",
    "backup_verified",
    "schema_dropped",
];
pub(super) const RESTORE_STATES: [&str; 2] = ["restore_requested", "schema_restored"];

/// The lifecycle row as a job reads it when it starts.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct LifecycleRow {
    pub(super) state: String,
    /// Executions of the current step, this one counted.
    pub(super) attempt: i32,
    pub(super) deletion_id: Option<i64>,
    pub(super) with_backup: Option<bool>,
    pub(super) backup_path: Option<String>,
    pub(super) restore_backup_id: Option<i64>,
    pub(super) last_error: Option<String>,
}

/// Runs the lifecycle job `kind` of `schema_name` from the row's state to
/// the end, or for at most `max_steps` steps.
pub(super) async fn run_lifecycle_job<S: JobSink>(
    env: &LifecycleEnv<'_, S>,
    kind: JobKind,
    schema_name: &str,
    max_steps: usize,
) -> Result<LifecycleOutcome, ProvisionError> {
    let schema = Ident::tenant_schema(schema_name)?;
    let states: &[&str] = match kind {
        JobKind::RestoreTenant => &RESTORE_STATES,
        _ => &DELETION_STATES,
    };
    let mut conn = env.pool.acquire().await?;
    let key = advisory_key("tenant", schema_name);
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
    if !held {
        let mut again = JobRequest::now(kind, schema_name);
        again.delay_ms = 2000 + backoff_ms(1);
        env.sink.push(again).await?;
        return Ok(LifecycleOutcome::Busy);
    }
    let mut lock = HeldLock(Some(conn));
    let outcome = drive(env, kind, lock.conn(), &schema, states, max_steps).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(lock.conn())
        .await;
    if unlocked.is_ok() {
        lock.0.take();
    }
    outcome
}

/// A connection holding a tenant's session lock: closed, not pooled, if
/// dropped before the lock is released, so the lock cannot leak.
struct HeldLock(Option<PoolConnection<Postgres>>);

impl HeldLock {
    fn conn(&mut self) -> &mut PgConnection {
        self.0.as_mut().expect("held")
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(mut conn) = self.0.take() {
            conn.close_on_drop();
        }
    }
}

async fn drive<S: JobSink>(
    env: &LifecycleEnv<'_, S>,
    kind: JobKind,
    conn: &mut PgConnection,
    schema: &Ident,
    states: &[&str],
    max_steps: usize,
) -> Result<LifecycleOutcome, ProvisionError> {
    let schema_name = schema.name();
    // Not counted while a deletion is not due: a job that came early
    // leaves the row as it is.
    let found: Option<LifecycleRow> = sqlx::query_as(
        "UPDATE public.provision_lifecycle
         SET attempt = attempt + 1, updated_at = now()
         WHERE schema_name = $1 AND state = ANY($2)
           AND NOT (state = 'deletion_scheduled' AND delete_after > now())
         RETURNING state, attempt, deletion_id, with_backup, backup_path, restore_backup_id, last_error",
    )
    .bind(schema_name)
    .bind(states)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(mut row) = found else {
        let now: Option<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT state, delete_after FROM public.provision_lifecycle WHERE schema_name = $1",
        )
        .bind(schema_name)
        .fetch_optional(&mut *conn)
        .await?;
        return Ok(match now {
            None => return Err(ProvisionError::UnknownTenant(schema_name.to_owned())),
            Some((state, Some(due))) if state == "deletion_scheduled" => LifecycleOutcome::NotDue(due),
            Some((state, _)) => LifecycleOutcome::NothingToDo(state),
        });
    };
    if env.policy.exhausted(row.attempt) {
        let (step, _) = LifecycleStep::next(&row).expect("a job's state has a step");
        let error = env.policy.gave_up(row.last_error.as_deref());
        fail(conn, schema_name, &row.state, step, &error, env.actor).await?;
        return Ok(LifecycleOutcome::Finished("failed".into()));
    }
    let mut steps_run = 0;
    while let Some((step, to)) = LifecycleStep::next(&row) {
        if steps_run == max_steps {
            return Ok(LifecycleOutcome::Paused(row.state));
        }
        steps_run += 1;
        let started = std::time::Instant::now();
        let done = match step {
            LifecycleStep::Backup => delete_tenant::backup(env, conn, schema, &row).await,
            LifecycleStep::VerifyBackup => delete_tenant::verify_backup(env, conn, schema, &row).await,
            LifecycleStep::DropSchema => delete_tenant::drop_schema(env, conn, schema, &row).await,
            LifecycleStep::DeleteRows => delete_tenant::delete_rows(env, conn, schema, &row).await,
            LifecycleStep::RestoreSchema => restore_tenant::restore_schema(env, conn, schema, &row).await,
            LifecycleStep::RestoreRows => restore_tenant::restore_rows(env, conn, schema, &row).await,
        };
        match done {
            Ok(()) => {
                tracing::info!(
                    schema_name,
                    job = kind.name(),
                    from = row.state.as_str(),
                    to,
                    step = step.as_str(),
                    attempt = row.attempt,
                    duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "transition"
                );
                row.state = to.to_owned();
                row.attempt = 1;
                if step == LifecycleStep::Backup || step == LifecycleStep::VerifyBackup {
                    row.backup_path = sqlx::query_scalar(
                        "SELECT backup_path FROM public.provision_lifecycle WHERE schema_name = $1",
                    )
                    .bind(schema_name)
                    .fetch_one(&mut *conn)
                    .await?;
                }
            }
            // The row moved on under the step: cancelled, or another job
            // finished it. Nothing of the step committed.
            Err(ProvisionError::Contended(why)) => {
                tracing::info!(schema_name, step = step.as_str(), %why, "lifecycle job stopped");
                let state: String =
                    sqlx::query_scalar("SELECT state FROM public.provision_lifecycle WHERE schema_name = $1")
                        .bind(schema_name)
                        .fetch_one(&mut *conn)
                        .await?;
                return Ok(LifecycleOutcome::NothingToDo(state));
            }
            Err(error) => match env.policy.after(row.attempt, &error) {
                Next::GiveUp(message) => {
                    tracing::warn!(schema_name, step = step.as_str(), attempt = row.attempt, error = %message, "lifecycle step failed");
                    fail(conn, schema_name, &row.state, step, &message, env.actor).await?;
                    return Ok(LifecycleOutcome::Finished("failed".into()));
                }
                Next::RetryAfter(delay_ms) => {
                    let message = error.to_string();
                    tracing::warn!(schema_name, step = step.as_str(), attempt = row.attempt, delay_ms, error = %message, "lifecycle step will be retried");
                    note_retry(conn, schema_name, &row.state, step, &message, env.actor).await?;
                    let mut again = JobRequest::now(kind, schema_name);
                    again.delay_ms = delay_ms;
                    env.sink.push(again).await?;
                    return Ok(LifecycleOutcome::RetryScheduled {
                        step: step.as_str(),
                        attempt: row.attempt,
                        delay_ms,
                        error: message,
                    });
                }
            },
        }
    }
    Ok(LifecycleOutcome::Finished(row.state))
}

/// The last transaction of a step: it opens by locking the tenant's
/// lifecycle row and checking the row is still in the state the step
/// leaves, so a cancel and a step never both win; it ends by moving the
/// row on, recorded in the history.
pub(super) struct StepTx<'c> {
    /// The transaction, for the step's effect.
    pub(super) tx: sqlx::Transaction<'c, Postgres>,
    schema_name: String,
    from: String,
}

impl<'c> StepTx<'c> {
    /// Begins on `conn` and locks the row, which must be in `from`.
    pub(super) async fn begin(
        conn: &'c mut PgConnection,
        schema_name: &str,
        from: &str,
    ) -> Result<Self, ProvisionError> {
        let mut tx = sqlx::Connection::begin(conn).await?;
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM public.provision_lifecycle WHERE schema_name = $1 FOR UPDATE",
        )
        .bind(schema_name)
        .fetch_optional(&mut *tx)
        .await?;
        if state.as_deref() != Some(from) {
            return Err(ProvisionError::Contended(format!(
                "tenant {schema_name:?} is no longer {from} but {}",
                state.as_deref().unwrap_or("without a lifecycle row")
            )));
        }
        Ok(Self {
            tx,
            schema_name: schema_name.to_owned(),
            from: from.to_owned(),
        })
    }

    /// Moves the row to `to`, records `step` with `detail`, and commits.
    pub(super) async fn finish(
        mut self,
        to: &str,
        step: LifecycleStep,
        detail: &str,
        actor: &str,
    ) -> Result<(), ProvisionError> {
        sqlx::query(
            "UPDATE public.provision_lifecycle
             SET state = $3, attempt = 1, last_error = NULL, updated_at = now()
             WHERE schema_name = $1 AND state = $2",
        )
        .bind(&self.schema_name)
        .bind(&self.from)
        .bind(to)
        .execute(&mut *self.tx)
        .await?;
        record_lifecycle_event(
            &mut self.tx,
            &self.schema_name,
            step.as_str(),
            to,
            Ok(detail),
            actor,
        )
        .await?;
        self.tx.commit().await?;
        Ok(())
    }
}

/// Moves the row to `failed`, recording the step, the error and where a
/// retry resumes.
async fn fail(
    conn: &mut PgConnection,
    schema_name: &str,
    from: &str,
    step: LifecycleStep,
    error: &str,
    actor: &str,
) -> Result<(), ProvisionError> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let moved = sqlx::query(
        "UPDATE public.provision_lifecycle
         SET state = 'failed', failed_step = $3, failed_from_state = $4, last_error = $5, updated_at = now()
         WHERE schema_name = $1 AND state = $2",
    )
    .bind(schema_name)
    .bind(from)
    .bind(step.as_str())
    .bind(step.resume_from(from))
    .bind(error)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 1 {
        record_lifecycle_event(&mut tx, schema_name, step.as_str(), "failed", Err(error), actor).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Records a transient error of a step that will be tried again.
async fn note_retry(
    conn: &mut PgConnection,
    schema_name: &str,
    state: &str,
    step: LifecycleStep,
    error: &str,
    actor: &str,
) -> Result<(), ProvisionError> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let noted = sqlx::query(
        "UPDATE public.provision_lifecycle SET last_error = $3, updated_at = now()
         WHERE schema_name = $1 AND state = $2",
    )
    .bind(schema_name)
    .bind(state)
    .bind(error)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if noted == 1 {
        record_lifecycle_event(
            &mut tx,
            schema_name,
            step.as_str(),
            state,
            Err(&format!("will be retried: {error}")),
            actor,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

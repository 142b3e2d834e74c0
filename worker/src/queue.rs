//! The Redis queues, through apalis-redis: one queue per job kind under the
//! namespace, configured around the library's measured defaults (see
//! ARCHITECTURE.md).

use std::time::Duration;

use apalis_core::backend::TaskSink;
use apalis_core::backend::ext::poll_strategy::{PollWith, StreamStrategy};
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use provision_shared::ProvisionError;
use provision_shared::jobs::{JobKind, JobRequest, JobSink};
use serde_json::Value;

use crate::wake::{WakeSignal, Wakers};

/// How often a worker of `kind` heartbeats. A push wakes an idle worker at
/// once (see [`crate::wake`]); the heartbeat is the fallback when a wake-up
/// is lost and the poll for delayed jobs (retries), so it still bounds the
/// pick-up delay: 100 ms for `CreateTenant` and `MigrateSchema` (the
/// library's default of 30 s is what a signup must never see), half a
/// second for demo data.
pub fn heartbeat(kind: JobKind) -> Duration {
    match kind {
        JobKind::CreateTenant | JobKind::MigrateSchema => Duration::from_millis(100),
        JobKind::SeedDemoData => Duration::from_millis(500),
    }
}

/// How long a worker may go without a heartbeat before another takes over
/// its jobs: a crashed worker's jobs resume within this (plus one
/// heartbeat of the survivor).
pub const ORPHANED_AFTER: Duration = Duration::from_secs(5);

/// The apalis-redis configuration of `kind`'s queue under `namespace`.
///
/// One job fetched at a time: with larger batches a busy worker stops
/// heartbeating and its prefetched jobs are run twice.
pub fn queue_config(namespace: &str, kind: JobKind) -> Config {
    queue_config_beating(namespace, kind, heartbeat(kind))
}

/// [`queue_config`] with heartbeat `beat` instead of the kind's own.
pub fn queue_config_beating(namespace: &str, kind: JobKind, beat: Duration) -> Config {
    let missed = usize::try_from(ORPHANED_AFTER.as_millis() / beat.as_millis().max(1))
        .unwrap_or(10)
        .max(1);
    Config::default()
        .queue(kind.queue(namespace))
        .heartbeat_interval(beat)
        .missed_heartbeats(missed)
        .batch_size(1)
        .emit_events(false)
}

/// The storage of `kind`'s queue: payloads are JSON values, parsed into
/// their typed form by the handler, so a payload that does not parse is the
/// handler's to report rather than the library's to retry.
pub fn storage(conn: ConnectionManager, namespace: &str, kind: JobKind) -> RedisStorage<Value> {
    RedisStorage::new(conn).with_config(queue_config(namespace, kind))
}

/// The storage a job loop of `kind` fetches from: polled at its heartbeat
/// (`beat`, or the kind's own), and whenever `wakers` says a job of `kind`
/// was pushed.
pub fn woken_storage(
    conn: ConnectionManager,
    namespace: &str,
    kind: JobKind,
    beat: Option<Duration>,
    wakers: &Wakers,
) -> PollWith<RedisStorage<Value>, StreamStrategy<WakeSignal>> {
    let config = queue_config_beating(namespace, kind, beat.unwrap_or_else(|| heartbeat(kind)));
    PollWith::new(
        RedisStorage::new(conn).with_config(config),
        StreamStrategy::new(wakers.signal(kind)),
    )
}

/// Pushes jobs onto the queues: the [`JobSink`] of both binaries.
#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    namespace: String,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl RedisQueue {
    /// Connects to Redis at `url`; queues live under `namespace`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, ProvisionError> {
        let conn = tokio::time::timeout(Duration::from_secs(5), apalis_redis::connect(url))
            .await
            .map_err(|_| ProvisionError::Queue("timed out connecting".into()))?
            .map_err(|e| ProvisionError::Queue(e.to_string()))?;
        Ok(Self {
            conn,
            namespace: namespace.to_owned(),
        })
    }

    /// The connection, for the worker's own storages.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), ProvisionError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| ProvisionError::Queue(e.to_string()))
    }

    /// Jobs of `kind`'s queue by status: waiting (ready to run), scheduled
    /// (delayed, or due at the next poll), inflight (taken by a worker),
    /// dead (given up by the library).
    pub async fn depth_by_status(&self, kind: JobKind) -> Result<Vec<(&'static str, u64)>, ProvisionError> {
        let config = queue_config(&self.namespace, kind);
        let mut conn = self.conn.clone();
        let workers: Vec<String> = redis::cmd("ZRANGE")
            .arg(config.workers_set())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(|e| ProvisionError::Queue(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.cmd("LLEN").arg(config.active_jobs_list());
        pipe.cmd("ZCARD").arg(config.scheduled_jobs_set());
        pipe.cmd("SCARD").arg(config.dead_jobs_set());
        for worker in &workers {
            pipe.cmd("SCARD")
                .arg(format!("{}:{worker}", config.inflight_jobs_set()));
        }
        let counts: Vec<u64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| ProvisionError::Queue(e.to_string()))?;
        Ok(vec![
            ("waiting", counts[0]),
            ("scheduled", counts[1]),
            ("inflight", counts[3..].iter().sum()),
            ("dead", counts[2]),
        ])
    }

    /// Jobs of `kind` waiting or scheduled: what a new push queues behind.
    pub async fn depth(&self, kind: JobKind) -> Result<u64, ProvisionError> {
        let config = queue_config(&self.namespace, kind);
        let mut conn = self.conn.clone();
        let (waiting, scheduled): (u64, u64) = redis::pipe()
            .cmd("LLEN")
            .arg(config.active_jobs_list())
            .cmd("ZCARD")
            .arg(config.scheduled_jobs_set())
            .query_async(&mut conn)
            .await
            .map_err(|e| ProvisionError::Queue(e.to_string()))?;
        Ok(waiting + scheduled)
    }

    /// Seconds since the last heartbeat of process `name`'s loop of `kind`.
    pub async fn heartbeat_age(&self, kind: JobKind, name: &str) -> Result<Option<f64>, ProvisionError> {
        let config = queue_config(&self.namespace, kind);
        let mut conn = self.conn.clone();
        let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(config.workers_set())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(|e| ProvisionError::Queue(e.to_string()))?;
        // The loop restarted after a death has a suffixed name: take the
        // newest heartbeat of any of this process's loops of `kind`.
        let prefix = format!("{name}/{}", kind.name());
        let score = members
            .into_iter()
            .filter(|(member, _)| member.starts_with(&prefix))
            .map(|(_, score)| score)
            .reduce(f64::max);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Ok(score.map(|s| (now - s).max(0.0)))
    }

    /// Removes finished jobs of `kind` (at most `limit`): the library keeps
    /// every finished job's data and metadata for ever. PostgreSQL has the
    /// record of what they did.
    pub async fn clean_finished(&self, kind: JobKind, limit: usize) -> Result<usize, ProvisionError> {
        let config = queue_config(&self.namespace, kind);
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("SPOP")
            .arg(config.done_jobs_set())
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(|e| ProvisionError::Queue(e.to_string()))?;
        if ids.is_empty() {
            return Ok(0);
        }
        let meta = config.job_meta_hash();
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL").arg(config.job_data_hash()).arg(&ids).ignore();
        pipe.cmd("HDEL").arg(format!("{meta}:result")).arg(&ids).ignore();
        let meta_keys: Vec<String> = ids.iter().map(|id| format!("{meta}:{id}")).collect();
        pipe.cmd("DEL").arg(&meta_keys).ignore();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| ProvisionError::Queue(e.to_string()))?;
        Ok(ids.len())
    }

    /// Looks at the jobs a dead job loop of `kind` held (named
    /// `worker_name`): readable ones go back to the queue at once; ones the
    /// library cannot read (no metadata, no data, data that is not JSON),
    /// which would kill every loop that takes them, are set aside in
    /// `provision_rejected_job` and removed. Returns (returned, set aside).
    pub async fn quarantine_inflight(
        &self,
        kind: JobKind,
        worker_name: &str,
        pool: &sqlx::PgPool,
        actor: &str,
    ) -> Result<(usize, usize), ProvisionError> {
        use std::str::FromStr;
        let config = queue_config(&self.namespace, kind);
        let inflight = format!("{}:{worker_name}", config.inflight_jobs_set());
        let queue_err = |e: redis::RedisError| ProvisionError::Queue(e.to_string());
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&inflight)
            .query_async(&mut conn)
            .await
            .map_err(queue_err)?;
        let (mut returned, mut rejected) = (0, 0);
        for id in ids {
            let meta_key = format!("{}:{id}", config.job_meta_hash());
            let (data, meta): (Option<Vec<u8>>, Vec<Option<String>>) = redis::pipe()
                .cmd("HGET")
                .arg(config.job_data_hash())
                .arg(&id)
                .cmd("HMGET")
                .arg(&meta_key)
                .arg("attempts")
                .arg("max_attempts")
                .arg("status")
                .query_async(&mut conn)
                .await
                .map_err(queue_err)?;
            let problem = if TaskId::from_str(&id).is_err() {
                Some("its id is not a task id")
            } else if meta
                .first()
                .and_then(|a| a.as_deref())
                .and_then(|a| a.parse::<u32>().ok())
                .is_none()
                || meta
                    .get(1)
                    .and_then(|a| a.as_deref())
                    .and_then(|a| a.parse::<u32>().ok())
                    .is_none()
                || meta
                    .get(2)
                    .and_then(|a| a.as_deref())
                    .and_then(|a| apalis_core::task::status::Status::from_str(a).ok())
                    .is_none()
            {
                Some("its metadata (attempts, max_attempts, status) is missing or unreadable")
            } else {
                match &data {
                    None => Some("it has no payload"),
                    Some(bytes) if serde_json::from_slice::<Value>(bytes).is_err() => {
                        Some("its payload is not JSON")
                    }
                    Some(_) => None,
                }
            };
            match problem {
                None => {
                    redis::pipe()
                        .cmd("SREM")
                        .arg(&inflight)
                        .arg(&id)
                        .ignore()
                        .cmd("RPUSH")
                        .arg(config.active_jobs_list())
                        .arg(&id)
                        .ignore()
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(queue_err)?;
                    returned += 1;
                }
                Some(problem) => {
                    let payload = data
                        .map(|d| String::from_utf8_lossy(&d).into_owned())
                        .unwrap_or_default();
                    provision_shared::operator::record_rejected_job(
                        pool,
                        &kind.queue(&self.namespace),
                        &id,
                        &payload,
                        &format!("unreadable job, set aside: {problem}"),
                        actor,
                    )
                    .await?;
                    redis::pipe()
                        .cmd("SREM")
                        .arg(&inflight)
                        .arg(&id)
                        .ignore()
                        .cmd("HDEL")
                        .arg(config.job_data_hash())
                        .arg(&id)
                        .ignore()
                        .cmd("DEL")
                        .arg(&meta_key)
                        .ignore()
                        .query_async::<()>(&mut conn)
                        .await
                        .map_err(queue_err)?;
                    tracing::error!(job_id = %id, queue = kind.name(), problem, "set aside a job the queue library cannot read");
                    rejected += 1;
                }
            }
        }
        Ok((returned, rejected))
    }

    /// Workers of `kind`'s queue whose last heartbeat (seconds since the
    /// epoch) is at or after `since`.
    pub async fn workers_alive(&self, kind: JobKind, since: u64) -> Result<u64, ProvisionError> {
        let mut conn = self.conn.clone();
        redis::cmd("ZCOUNT")
            .arg(queue_config(&self.namespace, kind).workers_set())
            .arg(since)
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(|e| ProvisionError::Queue(e.to_string()))
    }
}

impl JobSink for RedisQueue {
    async fn push(&self, job: JobRequest) -> Result<String, ProvisionError> {
        let id = ulid::Ulid::generate();
        let mut builder = TaskBuilder::new(job.payload()).task_id(TaskId::from(id));
        if job.delay_ms > 0 {
            // The library schedules to the whole second and truncates, so a
            // short delay could run at once: round the due time up instead.
            let due = std::time::SystemTime::now() + Duration::from_millis(job.delay_ms);
            let since_epoch = due.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let secs = since_epoch.as_secs() + u64::from(since_epoch.subsec_nanos() > 0);
            builder = builder.run_at_timestamp(secs);
        }
        let mut storage = storage(self.conn.clone(), &self.namespace, job.kind);
        tokio::time::timeout(Duration::from_secs(10), storage.push_task(builder.build()))
            .await
            .map_err(|_| ProvisionError::Queue("timed out pushing a job".into()))?
            .map_err(|e| ProvisionError::Queue(e.to_string()))?;
        if job.delay_ms == 0 {
            // Wake an idle worker now rather than at its next heartbeat. The
            // job is safely queued already: a lost wake-up only delays it.
            let mut conn = self.conn.clone();
            let woken = redis::cmd("PUBLISH")
                .arg(crate::wake::channel(&self.namespace, job.kind))
                .arg(job.kind.name())
                .query_async::<u64>(&mut conn)
                .await;
            if let Err(e) = woken {
                tracing::debug!(error = %e, "could not announce a pushed job; a worker finds it at its heartbeat");
            }
        }
        Ok(id.to_string())
    }
}

//! The Redis queues, through apalis-redis: one queue per job kind under the
//! namespace, configured around the library's measured defaults (see
//! ARCHITECTURE.md).

use std::time::Duration;

use apalis_core::backend::TaskSink;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use provision_shared::ProvisionError;
use provision_shared::jobs::{JobKind, JobRequest, JobSink};
use serde_json::Value;

/// Heartbeat of every worker: also how often an idle worker looks for
/// scheduled jobs, so it bounds pick-up latency (the library's 30 s default
/// is what a signup must never wait).
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Heartbeats missed before another worker takes over a dead worker's jobs.
pub const MISSED_HEARTBEATS: usize = 5;

/// The apalis-redis configuration of `kind`'s queue under `namespace`.
///
/// One job fetched at a time: with larger batches a busy worker stops
/// heartbeating and its prefetched jobs are run twice.
pub fn queue_config(namespace: &str, kind: JobKind) -> Config {
    Config::default()
        .queue(kind.queue(namespace))
        .heartbeat_interval(HEARTBEAT)
        .missed_heartbeats(MISSED_HEARTBEATS)
        .batch_size(1)
        .emit_events(false)
}

/// The storage of `kind`'s queue: payloads are JSON values, parsed into
/// their typed form by the handler, so a payload that does not parse is the
/// handler's to report rather than the library's to retry.
pub fn storage(conn: ConnectionManager, namespace: &str, kind: JobKind) -> RedisStorage<Value> {
    RedisStorage::new(conn).with_config(queue_config(namespace, kind))
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
            builder = builder.run_after(Duration::from_millis(job.delay_ms));
        }
        let mut storage = storage(self.conn.clone(), &self.namespace, job.kind);
        tokio::time::timeout(Duration::from_secs(10), storage.push_task(builder.build()))
            .await
            .map_err(|_| ProvisionError::Queue("timed out pushing a job".into()))?
            .map_err(|e| ProvisionError::Queue(e.to_string()))?;
        Ok(id.to_string())
    }
}

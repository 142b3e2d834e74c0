//! Pushing jobs and reading the queues' depth: what the client and the
//! worker both do with Redis.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis_core::backend::TaskSink;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_redis::{ConnectionManager, RedisStorage};
use provision_shared::ProvisionError;
use provision_shared::jobs::{JobKind, JobRequest, JobSink};
use serde_json::Value;

use crate::layout::{queue_config, wake_channel};

/// The queues of one namespace: the [`JobSink`] of both binaries.
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

fn queue_error(e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::Queue(e.to_string())
}

impl RedisQueue {
    /// Connects to Redis at `url`; queues live under `namespace`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, ProvisionError> {
        let conn = tokio::time::timeout(Duration::from_secs(5), apalis_redis::connect(url))
            .await
            .map_err(|_| ProvisionError::Queue("timed out connecting".into()))?
            .map_err(queue_error)?;
        Ok(Self {
            conn,
            namespace: namespace.to_owned(),
        })
    }

    /// The connection, for the worker's own storages and janitor.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The apalis-redis storage of `kind`'s queue. Payloads are JSON values,
    /// parsed into their typed form by the handler, so a payload that does
    /// not parse is the handler's to report rather than the library's to
    /// retry.
    pub fn storage(&self, kind: JobKind) -> RedisStorage<Value> {
        RedisStorage::new(self.conn.clone()).with_config(queue_config(&self.namespace, kind))
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), ProvisionError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(queue_error)
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
            .map_err(queue_error)?;
        let mut pipe = redis::pipe();
        pipe.cmd("LLEN").arg(config.active_jobs_list());
        pipe.cmd("ZCARD").arg(config.scheduled_jobs_set());
        pipe.cmd("SCARD").arg(config.dead_jobs_set());
        for worker in &workers {
            pipe.cmd("SCARD")
                .arg(format!("{}:{worker}", config.inflight_jobs_set()));
        }
        let counts: Vec<u64> = pipe.query_async(&mut conn).await.map_err(queue_error)?;
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
            .map_err(queue_error)?;
        Ok(waiting + scheduled)
    }

    /// Seconds since the last heartbeat of process `name`'s loop of `kind`
    /// (its loops are named `<name>/<kind>`, with a suffix once restarted:
    /// the newest of them counts).
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
            .map_err(queue_error)?;
        let prefix = format!("{name}/{}", kind.name());
        let score = members
            .into_iter()
            .filter(|(member, _)| member.starts_with(&prefix))
            .map(|(_, score)| score)
            .reduce(f64::max);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Ok(score.map(|s| (now - s).max(0.0)))
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
            .map_err(queue_error)
    }
}

impl JobSink for RedisQueue {
    async fn push(&self, job: JobRequest) -> Result<String, ProvisionError> {
        let id = match job.id.as_deref().map(str::parse::<ulid::Ulid>) {
            Some(Ok(id)) => id,
            Some(Err(e)) => return Err(ProvisionError::Queue(format!("job id {:?}: {e}", job.id))),
            None => ulid::Ulid::generate(),
        };
        let mut builder = TaskBuilder::new(job.payload()).task_id(TaskId::from(id));
        if job.delay_ms > 0 {
            // The library schedules to the whole second and truncates, so a
            // short delay could run at once: round the due time up instead.
            let due = SystemTime::now() + Duration::from_millis(job.delay_ms);
            let since_epoch = due.duration_since(UNIX_EPOCH).unwrap_or_default();
            let secs = since_epoch.as_secs() + u64::from(since_epoch.subsec_nanos() > 0);
            builder = builder.run_at_timestamp(secs);
        }
        let mut storage = self.storage(job.kind);
        tokio::time::timeout(Duration::from_secs(10), storage.push_task(builder.build()))
            .await
            .map_err(|_| ProvisionError::Queue("timed out pushing a job".into()))?
            .map_err(queue_error)?;
        if job.delay_ms == 0 {
            // Wake an idle worker now rather than at its next heartbeat. The
            // job is safely queued already: a lost wake-up only delays it.
            let mut conn = self.conn.clone();
            let woken = redis::cmd("PUBLISH")
                .arg(wake_channel(&self.namespace, job.kind))
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

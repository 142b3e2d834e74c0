//! The worker's housekeeping of Redis: finished jobs removed (the library
//! keeps them for ever), and the jobs a dead job loop held looked at, so one
//! the library cannot read is set aside instead of killing every loop that
//! takes it.

use apalis_core::task::task_id::TaskId;
use provision_queue::RedisQueue;
use provision_queue::layout::{queue_config, queue_name};
use provision_shared::ProvisionError;
use provision_shared::jobs::JobKind;
use serde_json::Value;

/// Removes finished jobs of `kind` (at most `limit`): the library keeps
/// every finished job's data and metadata for ever. PostgreSQL has the
/// record of what they did.
pub async fn clean_finished(
    queue: &RedisQueue,
    kind: JobKind,
    limit: usize,
) -> Result<usize, ProvisionError> {
    let config = queue_config(queue.namespace(), kind);
    let mut conn = queue.connection();
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
    queue: &RedisQueue,
    kind: JobKind,
    worker_name: &str,
    pool: &sqlx::PgPool,
    actor: &str,
) -> Result<(usize, usize), ProvisionError> {
    use std::str::FromStr;
    let config = queue_config(queue.namespace(), kind);
    let inflight = format!("{}:{worker_name}", config.inflight_jobs_set());
    let queue_err = |e: redis::RedisError| ProvisionError::Queue(e.to_string());
    let mut conn = queue.connection();
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
                    &queue_name(queue.namespace(), kind),
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

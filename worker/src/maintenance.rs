//! The worker's background loop. Every worker process runs it; PostgreSQL
//! locks make sure only one does each kind of work at a time.
//!
//! - every 0.2 s: hand migrate-all work to the queue, a bounded batch at a time;
//! - every 5 s: push jobs PostgreSQL says are owed (never pushed because the
//!   queue was full, or lost with Redis; deletions whose grace period is
//!   over), as far as the queue has room;
//! - every 10 s: remove finished jobs from Redis.

use std::sync::Arc;
use std::time::Duration;

use provision_shared::ProvisionError;
use provision_shared::jobs::{JobKind, JobRequest, JobSink, MAX_QUEUE_DEPTH};
use provision_shared::lifecycle::schedule::{lifecycle_jobs_owed, push_owed_lifecycle_job};
use provision_shared::migrate_all::dispatch;
use provision_shared::reconcile::{demo_data_to_requeue, tenants_to_requeue};
use provision_shared::request::push_owed_job;
use tokio::sync::watch;

use crate::handlers::WorkerState;

/// How often the loop wakes.
const TICK: Duration = Duration::from_millis(200);

/// Runs until `stop` turns true. `stale_after`: how long a non-final tenant
/// may sit unchanged before its job is assumed lost.
pub async fn run(state: Arc<WorkerState>, stale_after: Duration, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        ticks += 1;
        match dispatch(&state.pool, &state.queue).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(jobs = n, "dispatched migrate-all jobs"),
            Err(e) => tracing::warn!(error = %e, "dispatching migrate-all jobs failed; trying again"),
        }
        if ticks % 25 == 1
            && let Err(e) = requeue_owed(&state, stale_after).await
        {
            tracing::warn!(error = %e, "re-queuing owed jobs failed; trying again");
        }
        if ticks % 50 == 2 {
            for kind in JobKind::ALL {
                match crate::janitor::clean_finished(&state.queue, kind, 2000).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::debug!(queue = kind.name(), jobs = n, "removed finished jobs from Redis")
                    }
                    Err(e) => tracing::warn!(error = %e, "cleaning finished jobs failed"),
                }
            }
        }
    }
}

/// Pushes the jobs PostgreSQL says are owed, as far as the queue has room.
pub(crate) async fn requeue_owed(state: &WorkerState, stale_after: Duration) -> Result<(), ProvisionError> {
    let depth = state.queue.depth(JobKind::CreateTenant).await?;
    let room = i64::try_from(MAX_QUEUE_DEPTH.saturating_sub(depth))
        .unwrap_or(0)
        .min(1000);
    for (schema, noted) in tenants_to_requeue(&state.pool, stale_after, room).await? {
        if let Some(job_id) = push_owed_job(&state.pool, &state.queue, &schema, noted.as_deref()).await? {
            tracing::info!(schema_name = %schema, job_id = %job_id, "pushed an owed CreateTenant job");
        }
    }
    for schema in demo_data_to_requeue(&state.pool, stale_after, 1000).await? {
        state
            .queue
            .push(JobRequest::now(JobKind::SeedDemoData, &schema))
            .await?;
        tracing::info!(schema_name = %schema, "pushed an owed SeedDemoData job");
    }
    // Deletions come due (the grace period over) and lifecycle jobs lost.
    for (schema, kind, noted) in lifecycle_jobs_owed(&state.pool, stale_after, 100).await? {
        if let Some(job_id) =
            push_owed_lifecycle_job(&state.pool, &state.queue, &schema, kind, noted.as_deref()).await?
        {
            tracing::info!(schema_name = %schema, job = kind.name(), job_id = %job_id, "pushed an owed lifecycle job");
        }
    }
    Ok(())
}

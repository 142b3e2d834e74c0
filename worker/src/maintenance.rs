//! The worker's background loop: hands migrate-all work to the queue a
//! bounded batch at a time. Every worker process runs it; PostgreSQL makes
//! sure only one dispatches at a time.

use std::sync::Arc;
use std::time::Duration;

use provision_shared::migrate_all::dispatch;
use tokio::sync::watch;

use crate::handlers::WorkerState;

/// How often the loop wakes.
const TICK: Duration = Duration::from_millis(500);

/// Runs until `stop` turns true.
pub async fn run(state: Arc<WorkerState>, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match dispatch(&state.pool, &state.queue).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(jobs = n, "dispatched migrate-all jobs"),
            Err(e) => tracing::warn!(error = %e, "dispatching migrate-all jobs failed; trying again"),
        }
    }
}

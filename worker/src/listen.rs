//! What PostgreSQL announces to a worker, on one listening connection: a
//! tenant requested (by `provision_request_tenant`, from the platform's own
//! transaction or from `provision create-tenant`), whose job this worker
//! pushes at once; and a tenant migration set imported, which it loads.
//!
//! Announcements are delivered only while the connection is up. Whenever it
//! (re)connects, the worker therefore loads the set in force and pushes
//! every job owed, and the reconciler of the maintenance loop stays as the
//! fallback. A push that fails (Redis away) leaves the request owed: it is
//! pushed when Redis is back.

use std::sync::Arc;
use std::time::Duration;

use provision_shared::jobs::{JobKind, MAX_QUEUE_DEPTH};
use provision_shared::migration_set::import::SET_CHANNEL;
use provision_shared::request::{REQUEST_CHANNEL, push_owed_job};
use tokio::sync::watch;

use crate::handlers::WorkerState;

/// Listens until `stop`; with `requests`, for requested tenants too.
pub async fn listen(
    state: Arc<WorkerState>,
    database_url: String,
    requests: bool,
    stale_after: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    while !*stop.borrow() {
        let connect = async {
            let mut listener = sqlx::postgres::PgListener::connect(&database_url).await?;
            listener.listen(SET_CHANNEL).await?;
            if requests {
                listener.listen(REQUEST_CHANNEL).await?;
            }
            Ok::<_, sqlx::Error>(listener)
        };
        let connected = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            listener = connect => listener,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(e) => {
                failures += 1;
                tracing::debug!(error = %e, "could not listen to PostgreSQL's announcements");
                let pause = Duration::from_millis(200 * u64::from(failures.min(25)));
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        failures = 0;
        tracing::info!(requests, "listening to PostgreSQL's announcements");
        // What was announced while no connection listened is lost: look.
        catch_up(&state, requests, stale_after).await;
        loop {
            let received = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(notice)) if notice.channel() == REQUEST_CHANNEL => {
                    let (state, schema) = (state.clone(), notice.payload().to_owned());
                    tokio::spawn(async move { push_requested(&state, &schema).await });
                }
                Ok(Some(_)) => reload_set(&state).await,
                // The connection was lost and made again.
                Ok(None) => {
                    tracing::info!(
                        requests,
                        "listening to PostgreSQL's announcements again, after a lost connection"
                    );
                    catch_up(&state, requests, stale_after).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "listening to PostgreSQL's announcements failed");
                    break;
                }
            }
        }
    }
}

async fn reload_set(state: &WorkerState) {
    match state.migrations.reload(&state.pool).await {
        Ok(Some(version)) => tracing::info!(version, "tenant migration set in force"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not load the tenant migration set"),
    }
}

async fn catch_up(state: &WorkerState, requests: bool, stale_after: Duration) {
    reload_set(state).await;
    if requests && let Err(e) = crate::maintenance::requeue_owed(state, stale_after).await {
        tracing::debug!(error = %e, "could not push the owed jobs; the reconciler will");
    }
}

/// Pushes the job of a tenant just requested, unless another process did,
/// or the queue is too deep (the reconciler pushes it as the queue drains).
async fn push_requested(state: &WorkerState, schema: &str) {
    let room = state
        .queue
        .depth(JobKind::CreateTenant)
        .await
        .map(|depth| depth < MAX_QUEUE_DEPTH);
    match room {
        Ok(true) => match push_owed_job(&state.pool, &state.queue, schema, None).await {
            Ok(Some(job_id)) => {
                tracing::info!(schema_name = %schema, %job_id, "pushed a requested tenant's job")
            }
            Ok(None) => {
                tracing::debug!(schema_name = %schema, "a requested tenant's job was pushed by another process")
            }
            Err(e) => {
                tracing::warn!(schema_name = %schema, error = %e, "could not push a requested tenant's job; it stays owed")
            }
        },
        Ok(false) => {
            tracing::info!(schema_name = %schema, "the queue is full; the requested tenant waits in PostgreSQL")
        }
        Err(e) => {
            tracing::warn!(schema_name = %schema, error = %e, "Redis does not answer; the requested tenant waits in PostgreSQL")
        }
    }
}

//! Starting and stopping the worker pool: database and public migrations
//! first, then one apalis worker per queue, all stopped together on
//! SIGTERM or Ctrl-C. The process fails when a worker's job loop dies, so
//! its supervisor restarts it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use apalis::prelude::WorkerBuilderExt;
use apalis_core::worker::builder::WorkerBuilder;
use provision_shared::db;
use provision_shared::jobs::JobKind;
use provision_shared::migrate::{TenantMigrations, apply_public_migrations};
use tokio::sync::watch;

use apalis_cron::CronScheduler;

use crate::handlers::{self, WorkerState};
use crate::metrics::{self, Metrics};
use crate::queue::{RedisQueue, storage};
use crate::{maintenance, schedule};

/// Everything the worker is told at start.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// PostgreSQL.
    pub database_url: String,
    /// Redis.
    pub redis_url: String,
    /// Prefix of every Redis key.
    pub namespace: String,
    /// Jobs run at once, per queue.
    pub concurrency: usize,
    /// Executions of a step before its tenant is failed.
    pub max_attempts: i32,
    /// Tenant migrations to apply.
    pub migrations: TenantMigrations,
    /// When the nightly migrate-all fires (`None`: never).
    pub migrate_all_cron: Option<cron::Schedule>,
    /// Where `/metrics` and `/healthz` are served (`None`: nowhere).
    pub metrics_addr: Option<SocketAddr>,
    /// How long running jobs may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How long a non-final tenant may sit unchanged before its job is
    /// assumed lost and pushed again.
    pub stale_after: Duration,
    /// Counters and histograms (shared with the logging layer).
    pub metrics: Arc<Metrics>,
}

/// A name no other process has: apalis tells workers apart by name when it
/// takes over a dead worker's jobs.
pub fn unique_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    let suffix = ulid::Ulid::generate().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[suffix.len() - 6..])
}

/// Resolves when SIGTERM or Ctrl-C arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C: stopping"),
        () = term => tracing::info!("SIGTERM: stopping"),
    }
}

/// Prepares the database (created if missing, public migrations applied
/// under a lock) and runs the workers until `stop` resolves.
pub async fn run_worker(
    settings: WorkerSettings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let created = db::create_database_if_missing(&settings.database_url)
        .await
        .with_context(|| format!("PostgreSQL at {}", db::redact_url(&settings.database_url)))?;
    if created {
        tracing::info!(database_url = %db::redact_url(&settings.database_url), "created the database");
    }
    let pool_size = u32::try_from(settings.concurrency * 2 + 4).unwrap_or(64);
    let pool = db::connect(&settings.database_url, pool_size)
        .await
        .with_context(|| format!("PostgreSQL at {}", db::redact_url(&settings.database_url)))?;
    let applied = apply_public_migrations(&pool)
        .await
        .context("applying public migrations")?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied public migrations");
    }
    let queue = RedisQueue::connect(&settings.redis_url, &settings.namespace)
        .await
        .with_context(|| format!("Redis at {}", db::redact_url(&settings.redis_url)))?;
    let name = unique_worker_name();
    let state = Arc::new(WorkerState {
        pool,
        queue: queue.clone(),
        migrations: settings.migrations.clone(),
        name: name.clone(),
        max_attempts: settings.max_attempts,
        metrics: settings.metrics.clone(),
    });
    if let Some(addr) = settings.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("serving metrics on {addr} (set PROVISION_METRICS_ADDR, or off)"))?;
        let bound = listener.local_addr()?;
        tracing::info!(addr = %bound, "serving /metrics and /healthz");
        tokio::spawn(metrics::serve(listener, state.clone(), settings.metrics.clone()));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
        Ok::<(), std::io::Error>(())
    };
    let conn = queue.connection();
    let ns = settings.namespace.as_str();
    let create = WorkerBuilder::new(format!("{name}/{}", JobKind::CreateTenant.name()))
        .backend(storage(conn.clone(), ns, JobKind::CreateTenant))
        .concurrency(settings.concurrency)
        .data(state.clone())
        .build(handlers::create_tenant)
        .run_until(stopped(stop_rx.clone()));
    let seed = WorkerBuilder::new(format!("{name}/{}", JobKind::SeedDemoData.name()))
        .backend(storage(conn.clone(), ns, JobKind::SeedDemoData))
        .concurrency(settings.concurrency)
        .data(state.clone())
        .build(handlers::seed_demo_data)
        .run_until(stopped(stop_rx.clone()));
    let migrate = WorkerBuilder::new(format!("{name}/{}", JobKind::MigrateSchema.name()))
        .backend(storage(conn.clone(), ns, JobKind::MigrateSchema))
        .concurrency(settings.concurrency)
        .data(state.clone())
        .build(handlers::migrate_schema_job)
        .run_until(stopped(stop_rx.clone()));

    let mut workers = tokio::task::JoinSet::new();
    workers.spawn(async move { ("create_tenant", create.await) });
    workers.spawn(async move { ("seed_demo_data", seed.await) });
    workers.spawn(async move { ("migrate_schema", migrate.await) });
    if let Some(schedule) = settings.migrate_all_cron.clone() {
        if let Err(e) = schedule::catch_up(&state, &schedule).await {
            tracing::warn!(error = %e, "could not check for a missed migrate-all tick");
        }
        let cron = WorkerBuilder::new(format!("{name}/cron"))
            .backend(CronScheduler::new(schedule))
            .data(state.clone())
            .build(schedule::on_tick)
            .run_until(stopped(stop_rx.clone()));
        workers.spawn(async move { ("migrate_all_cron", cron.await) });
    }
    let maintenance = tokio::spawn(maintenance::run(
        state.clone(),
        settings.stale_after,
        stop_rx.clone(),
    ));
    tracing::info!(worker = %name, namespace = %settings.namespace, concurrency = settings.concurrency, "worker starting");

    let stop = tokio::spawn(stop);
    let mut stopping = false;
    let mut failure = None;
    // Far in the future until a stop begins; then the end of the grace period.
    let grace_over = tokio::time::sleep(Duration::from_secs(u64::from(u32::MAX)));
    tokio::pin!(stop);
    tokio::pin!(grace_over);
    loop {
        tokio::select! {
            _ = &mut stop, if !stopping => {
                stopping = true;
                grace_over.as_mut().reset(tokio::time::Instant::now() + settings.shutdown_grace);
                let _ = stop_tx.send(true);
            }
            () = &mut grace_over => {
                tracing::warn!(
                    grace_seconds = settings.shutdown_grace.as_secs(),
                    "grace period over with jobs still running: they are abandoned, and another worker takes them over"
                );
                workers.abort_all();
                break;
            }
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok((queue_name, Ok(())))) if stopping => {
                    tracing::info!(queue = queue_name, "worker stopped");
                }
                Some(Ok((queue_name, result))) => {
                    let message = match result {
                        Ok(()) => format!("the {queue_name} worker stopped by itself"),
                        Err(e) => format!("the {queue_name} worker died: {e}"),
                    };
                    tracing::error!(queue = queue_name, "{message}");
                    settings.metrics.loops_alive.store(false, std::sync::atomic::Ordering::SeqCst);
                    failure.get_or_insert(message);
                    if !stopping {
                        stopping = true;
                        grace_over.as_mut().reset(tokio::time::Instant::now() + settings.shutdown_grace);
                        let _ = stop_tx.send(true);
                    }
                }
                Some(Err(e)) => {
                    settings.metrics.loops_alive.store(false, std::sync::atomic::Ordering::SeqCst);
                    failure.get_or_insert(format!("a worker task panicked: {e}"));
                    if !stopping {
                        stopping = true;
                        grace_over.as_mut().reset(tokio::time::Instant::now() + settings.shutdown_grace);
                        let _ = stop_tx.send(true);
                    }
                }
            }
        }
    }
    let _ = maintenance.await;
    // Give the pool a moment to close its connections cleanly.
    tokio::time::timeout(Duration::from_secs(5), state.pool.close())
        .await
        .ok();
    if let Some(message) = failure {
        bail!(message);
    }
    tracing::info!("worker stopped");
    Ok(())
}

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
use futures::FutureExt;
use futures::future::BoxFuture;
use provision_shared::db;
use provision_shared::jobs::JobKind;
use provision_shared::lifecycle::archive::PgTarget;
use provision_shared::migration_set::import::store_built_in_if_none;
use provision_shared::migration_set::{MigrationSet, SetInForce};
use provision_shared::public_schema::{prepare_public_schema, record_base_domain};
use std::sync::atomic::Ordering;
use tokio::sync::watch;

use apalis_cron::CronScheduler;

use crate::handlers::{self, JobPools, WorkerState};
use crate::metrics::{self, Metrics};
use crate::wake::{self, Wakers, woken_storage};
use crate::{maintenance, schedule};
use provision_queue::RedisQueue;

/// A job loop dying more than this many times within [`LOOP_DEATH_WINDOW`]
/// stops the process (exit 1), for its supervisor to restart. With the
/// restart backoff (0.5 s doubling to 10 s) that rides out about 45 s of a
/// Redis outage.
const MAX_LOOP_DEATHS: usize = 8;
/// See [`MAX_LOOP_DEATHS`].
const LOOP_DEATH_WINDOW: Duration = Duration::from_secs(120);

/// One apalis worker of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Loop {
    /// The worker of a job queue.
    Queue(JobKind),
    /// The nightly migrate-all schedule.
    Cron,
}

impl std::fmt::Display for Loop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Queue(kind) => f.write_str(kind.name()),
            Self::Cron => f.write_str("cron"),
        }
    }
}

/// The apalis name of a job loop: unique per process and per restart, as
/// the library's orphan recovery tells workers apart by name.
fn loop_name(process: &str, job_loop: Loop, generation: u32) -> String {
    match generation {
        0 => format!("{process}/{job_loop}"),
        g => format!("{process}/{job_loop}.{g}"),
    }
}

/// What starting a job loop needs.
struct JobLoops {
    state: Arc<WorkerState>,
    wakers: Wakers,
    heartbeat: Option<Duration>,
    concurrency: usize,
    schedule: Option<cron::Schedule>,
    stop: watch::Receiver<bool>,
}

type LoopEnd = (Loop, u32, Result<(), String>);

impl JobLoops {
    /// Runs one apalis worker until the stop signal; returns how it ended.
    fn run(&self, job_loop: Loop, generation: u32) -> BoxFuture<'static, LoopEnd> {
        let name = loop_name(&self.state.name, job_loop, generation);
        let mut stop = self.stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
            Ok::<(), std::io::Error>(())
        };
        let queue = &self.state.queue;
        let state = self.state.clone();
        let ended = match job_loop {
            Loop::Queue(JobKind::CreateTenant) => WorkerBuilder::new(name)
                .backend(woken_storage(
                    queue,
                    JobKind::CreateTenant,
                    self.heartbeat,
                    &self.wakers,
                ))
                .concurrency(self.concurrency)
                .data(state)
                .build(handlers::create_tenant)
                .run_until(stopped)
                .boxed(),
            Loop::Queue(JobKind::SeedDemoData) => WorkerBuilder::new(name)
                .backend(woken_storage(
                    queue,
                    JobKind::SeedDemoData,
                    self.heartbeat,
                    &self.wakers,
                ))
                .concurrency(self.concurrency)
                .data(state)
                .build(handlers::seed_demo_data)
                .run_until(stopped)
                .boxed(),
            Loop::Queue(JobKind::MigrateSchema) => WorkerBuilder::new(name)
                .backend(woken_storage(
                    queue,
                    JobKind::MigrateSchema,
                    self.heartbeat,
                    &self.wakers,
                ))
                .concurrency(self.concurrency)
                .data(state)
                .build(handlers::migrate_schema_job)
                .run_until(stopped)
                .boxed(),
            Loop::Queue(kind @ JobKind::DeleteTenant) => WorkerBuilder::new(name)
                .backend(woken_storage(queue, kind, self.heartbeat, &self.wakers))
                .concurrency(self.concurrency.min(handlers::LIFECYCLE_CONCURRENCY))
                .data(state)
                .build(handlers::delete_tenant)
                .run_until(stopped)
                .boxed(),
            Loop::Queue(kind @ JobKind::RestoreTenant) => WorkerBuilder::new(name)
                .backend(woken_storage(queue, kind, self.heartbeat, &self.wakers))
                .concurrency(self.concurrency.min(handlers::LIFECYCLE_CONCURRENCY))
                .data(state)
                .build(handlers::restore_tenant)
                .run_until(stopped)
                .boxed(),
            Loop::Cron => WorkerBuilder::new(name)
                .backend(CronScheduler::new(
                    self.schedule.clone().expect("cron loop needs a schedule"),
                ))
                .data(state)
                .build(schedule::on_tick)
                .run_until(stopped)
                .boxed(),
        };
        ended
            .map(move |result| (job_loop, generation, result.map_err(|e| e.to_string())))
            .boxed()
    }
}

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
    /// The job loops' heartbeat, when not each queue's own (see
    /// [`provision_queue::layout::heartbeat`]).
    pub heartbeat: Option<Duration>,
    /// The one retry policy of every job kind.
    pub policy: provision_shared::retry::RetryPolicy,
    /// When the nightly migrate-all fires (`None`: never).
    pub migrate_all_cron: Option<cron::Schedule>,
    /// Where `/metrics` and `/healthz` are served (`None`: nowhere).
    pub metrics_addr: Option<SocketAddr>,
    /// How long running jobs may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How long a non-final tenant may sit unchanged before its job is
    /// assumed lost and pushed again.
    pub stale_after: Duration,
    /// Whether a requested tenant's job is pushed when PostgreSQL announces
    /// the request (otherwise by the reconciler only, seconds later).
    pub listen_for_requests: bool,
    /// `<schema>.<this>` is a tenant's default domain, for the SQL API too.
    pub base_domain: String,
    /// Counters and histograms (shared with the logging layer).
    pub metrics: Arc<Metrics>,
    /// `PROVISION_BACKUP_DIR`: where deletions write their backups.
    pub backup_dir: Option<std::path::PathBuf>,
    /// `PROVISION_SUSPEND_EXPIRED_AFTER`: days after `paid_until` the
    /// nightly pass suspends a tenant (`None`: off).
    pub suspend_expired_after: Option<u32>,
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
    // The worker's own pool: the maintenance loop, the schedule, metrics
    // and rejected payloads. Jobs have pools of their own (`JobPools`).
    let pool = db::connect(&settings.database_url, 4)
        .await
        .with_context(|| format!("PostgreSQL at {}", db::redact_url(&settings.database_url)))?;
    let prepared = prepare_public_schema(&pool)
        .await
        .context("preparing the public schema")?;
    if prepared.platform_tables_made {
        tracing::info!("made the platform's tenant tables, as its Django migrations make them");
    }
    if !prepared.applied.is_empty() {
        tracing::info!(applied = ?prepared.applied, "applied public migrations");
    }
    record_base_domain(&pool, &settings.base_domain)
        .await
        .context("recording the base domain")?;
    if let Some(stored) = store_built_in_if_none(&pool)
        .await
        .context("storing the built-in tenant migration set")?
    {
        tracing::info!(
            version = stored.version,
            "stored the built-in tenant migration set"
        );
    }
    let set = MigrationSet::latest(&pool)
        .await
        .context("loading the tenant migration set")?;
    match &set {
        Some(set) => tracing::info!(
            version = set.version(),
            migrations = set.len(),
            "tenant migration set in force"
        ),
        None => tracing::warn!(
            "no tenant migration set is stored yet: tenants wait for `provision import-migrations`"
        ),
    }
    let queue = RedisQueue::connect(&settings.redis_url, &settings.namespace)
        .await
        .with_context(|| format!("Redis at {}", db::redact_url(&settings.redis_url)))?;
    let name = unique_worker_name();
    let job_pools = JobPools::connect(&settings.database_url, settings.concurrency)
        .await
        .with_context(|| format!("PostgreSQL at {}", db::redact_url(&settings.database_url)))?;
    let state = Arc::new(WorkerState {
        pool,
        job_pools,
        queue: queue.clone(),
        migrations: SetInForce::new(set),
        name: name.clone(),
        policy: settings.policy,
        metrics: settings.metrics.clone(),
        backup_dir: settings.backup_dir.clone(),
        pg_target: PgTarget::from_url(&settings.database_url),
        suspend_expired_after: settings.suspend_expired_after,
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
    let wakers = Wakers::new();
    let listener = tokio::spawn(wake::listen(
        settings.redis_url.clone(),
        settings.namespace.clone(),
        wakers.clone(),
        stop_rx.clone(),
    ));
    // Each job loop is also woken at its heartbeat interval. apalis-core's
    // backend polls its heartbeat timer only between fetches: a timer that
    // fires while a fetch is on its way is never polled again, and the idle
    // loop then neither heartbeats nor fetches until something else wakes
    // it. This wake-up keeps the cadence.
    let mut nudgers = tokio::task::JoinSet::new();
    for kind in JobKind::ALL {
        let (signal, mut stop) = (wakers.signal(kind), stop_rx.clone());
        let every = settings
            .heartbeat
            .unwrap_or_else(|| provision_queue::layout::heartbeat(kind));
        nudgers.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => signal.raise(),
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
    }
    let loops = JobLoops {
        state: state.clone(),
        wakers,
        heartbeat: settings.heartbeat,
        concurrency: settings.concurrency,
        schedule: settings.migrate_all_cron.clone(),
        stop: stop_rx.clone(),
    };
    let mut workers = tokio::task::JoinSet::new();
    // The generation of each queue's job loop now running (see `loop_name`).
    let mut generations: std::collections::HashMap<JobKind, u32> = Default::default();
    for kind in JobKind::ALL {
        workers.spawn(loops.run(Loop::Queue(kind), 0));
        generations.insert(kind, 0);
    }
    if let Some(schedule) = &settings.migrate_all_cron {
        if let Err(e) = schedule::catch_up(&state, schedule).await {
            tracing::warn!(error = %e, "could not check for a missed migrate-all tick");
        }
        workers.spawn(loops.run(Loop::Cron, 0));
    }
    let set_listener = tokio::spawn(crate::listen::listen(
        state.clone(),
        settings.database_url.clone(),
        settings.listen_for_requests,
        settings.stale_after,
        stop_rx.clone(),
    ));
    let maintenance = tokio::spawn(maintenance::run(
        state.clone(),
        settings.stale_after,
        stop_rx.clone(),
    ));
    tracing::info!(worker = %name, namespace = %settings.namespace, concurrency = settings.concurrency, "worker starting");

    let stop = tokio::spawn(stop);
    let mut stopping = false;
    let mut failure = None;
    let mut deaths: std::collections::HashMap<Loop, Vec<tokio::time::Instant>> = Default::default();
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
                // Hand the abandoned jobs back now rather than leave them
                // until another worker finds this one dead: the next worker
                // takes them at once (and waits for the tenant's lock, which
                // this process's connections give up as they close).
                for (kind, generation) in &generations {
                    let loop_name = loop_name(&name, Loop::Queue(*kind), *generation);
                    match crate::janitor::quarantine_inflight(&queue, *kind, &loop_name, &state.pool, &name).await {
                        Ok((0, 0)) => {}
                        Ok((returned, rejected)) => tracing::info!(returned, rejected, queue = kind.name(), "abandoned jobs returned to the queue"),
                        Err(e) => tracing::warn!(error = %e, queue = kind.name(), "could not return the abandoned jobs; another worker takes them over when this one is seen dead"),
                    }
                }
                break;
            }
            joined = workers.join_next() => {
                let (job_loop, generation, result) = match joined {
                    None => break,
                    Some(Ok(ended)) => ended,
                    Some(Err(e)) => {
                        settings.metrics.loops_alive.store(false, Ordering::SeqCst);
                        failure.get_or_insert(format!("a job loop panicked: {e}"));
                        stopping = true;
                        grace_over.as_mut().reset(tokio::time::Instant::now() + settings.shutdown_grace);
                        let _ = stop_tx.send(true);
                        continue;
                    }
                };
                if stopping {
                    if let Err(e) = result {
                        tracing::warn!(job_loop = %job_loop, error = %e, "job loop ended with an error while stopping");
                    }
                    continue;
                }
                let why = result.err().unwrap_or_else(|| "it stopped by itself".into());
                // A job loop dies when Redis goes away or loses its
                // registration (restarted empty), or when a job in it cannot
                // be read at all. Set such jobs aside and start the loop
                // again under a new name, backing off; dying too often means
                // something is wrong for good: exit for the supervisor.
                let now = tokio::time::Instant::now();
                let deaths = deaths.entry(job_loop).or_default();
                deaths.retain(|t| now.duration_since(*t) < LOOP_DEATH_WINDOW);
                deaths.push(now);
                if deaths.len() > MAX_LOOP_DEATHS {
                    let message = format!(
                        "the {job_loop} job loop died {} times within {} s; last: {why}",
                        deaths.len(),
                        LOOP_DEATH_WINDOW.as_secs()
                    );
                    tracing::error!("{message}");
                    settings.metrics.loops_alive.store(false, Ordering::SeqCst);
                    failure.get_or_insert(message);
                    stopping = true;
                    grace_over.as_mut().reset(tokio::time::Instant::now() + settings.shutdown_grace);
                    let _ = stop_tx.send(true);
                    continue;
                }
                let backoff = Duration::from_millis(500 * (1 << (deaths.len() - 1).min(5))).min(Duration::from_secs(10));
                tracing::warn!(job_loop = %job_loop, error = %why, restart_in_ms = backoff.as_millis() as u64, "job loop died; restarting it");
                if let Loop::Queue(kind) = job_loop {
                    let dead_name = loop_name(&name, job_loop, generation);
                    match crate::janitor::quarantine_inflight(&queue, kind, &dead_name, &state.pool, &name).await {
                        Ok((returned, rejected)) => tracing::info!(returned, rejected, "jobs of the dead loop returned to the queue or set aside"),
                        Err(e) => tracing::warn!(error = %e, "could not look at the dead loop's jobs"),
                    }
                }
                if let Loop::Queue(kind) = job_loop {
                    generations.insert(kind, generation + 1);
                }
                let restart = loops.run(job_loop, generation + 1);
                workers.spawn(async move {
                    tokio::time::sleep(backoff).await;
                    restart.await
                });
            }
        }
    }
    let _ = maintenance.await;
    let _ = listener.await;
    let _ = set_listener.await;
    nudgers.join_all().await;
    // Give the pool a moment to close its connections cleanly.
    tokio::time::timeout(Duration::from_secs(5), async {
        futures::join!(state.pool.close(), state.job_pools.close())
    })
    .await
    .ok();
    if let Some(message) = failure {
        bail!(message);
    }
    tracing::info!("worker stopped");
    Ok(())
}

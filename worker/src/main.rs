//! `provision-worker`: runs provisioning jobs from Redis.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use provision_queue::options::{ConnectionOptions, init_logging};
use provision_worker::metrics::{Metrics, StepTimings};
use provision_worker::run::{WorkerSettings, run_worker, shutdown_signal};
use provision_worker::schedule::parse_schedule;

/// The worker pool: runs CreateTenant, SeedDemoData, MigrateSchema,
/// DeleteTenant and RestoreTenant jobs from Redis, recording every
/// tenant's provisioning and lifecycle in PostgreSQL.
///
/// A missing database is created and pending public migrations are applied
/// at start. Stops on SIGTERM or Ctrl-C, giving running jobs the shutdown
/// grace. A job loop that dies is restarted; one that keeps dying (more than
/// 8 times in two minutes) makes the process exit 1, for its supervisor.
///
/// Example: DATABASE_URL=postgres://postgres@127.0.0.1/concierge provision-worker --concurrency 4
#[derive(Debug, Parser)]
#[command(name = "provision-worker", version)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionOptions,

    /// Jobs run at once, per queue.
    #[arg(long, env = "PROVISION_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,

    /// When the nightly migrate-all runs: six fields with seconds, UTC; off
    /// disables it.
    #[arg(long, env = "PROVISION_MIGRATE_ALL_CRON", default_value = "0 0 3 * * *")]
    migrate_all_cron: String,

    /// Where /metrics (Prometheus) and /healthz are served; off disables.
    #[arg(long, env = "PROVISION_METRICS_ADDR", default_value = "127.0.0.1:9898")]
    metrics_addr: String,

    /// Seconds running jobs may take to finish after SIGTERM before they are
    /// abandoned to other workers (a trailing s is accepted: 30s).
    #[arg(long, env = "PROVISION_SHUTDOWN_GRACE", default_value = "30", value_parser = parse_seconds)]
    shutdown_grace: u64,

    /// Seconds a tenant may sit unchanged in a non-final state before its
    /// job is assumed lost (Redis emptied) and pushed again.
    #[arg(long, env = "PROVISION_RECONCILE_AFTER", default_value = "120", value_parser = parse_seconds)]
    reconcile_after: u64,

    /// Milliseconds between an idle job loop's heartbeats, which are also
    /// its polls for delayed jobs (retries). A push wakes an idle loop at
    /// once anyway. A worker whose heartbeat is older than 5 s (or than one
    /// heartbeat, if longer) is taken for dead [default: 100, demo data 500].
    #[arg(long, env = "PROVISION_HEARTBEAT_MS", value_parser = clap::value_parser!(u64).range(10..=600_000))]
    heartbeat_ms: Option<u64>,

    /// Whether a requested tenant's job is pushed the moment PostgreSQL
    /// announces the request (on), or by the reconciler only, within about
    /// five seconds (off).
    #[arg(long, env = "PROVISION_LISTEN_FOR_REQUESTS", default_value = "on", value_parser = ["on", "off"])]
    listen_for_requests: String,

    /// Where deletions write their backups (`pg_dump`'s custom format); a
    /// deletion with a backup fails at its first step while this is unset.
    #[arg(long, env = "PROVISION_BACKUP_DIR", value_name = "DIR")]
    backup_dir: Option<std::path::PathBuf>,

    /// The nightly pass suspends tenants whose paid_until passed this many
    /// days ago (off by default).
    #[arg(long, env = "PROVISION_SUSPEND_EXPIRED_AFTER", value_name = "DAYS", value_parser = clap::value_parser!(u32).range(0..=3650))]
    suspend_expired_after: Option<u32>,

    /// Executions of a step before its tenant is marked failed.
    #[arg(long, env = "PROVISION_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=100))]
    max_attempts: i32,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let metrics = Metrics::new();
    init_logging(
        cli.connection.log_format,
        "info,sqlx=warn,apalis=warn,apalis_core=warn,apalis_redis=warn",
        Some(Box::new(StepTimings(metrics.clone()))),
    );
    let metrics_addr = if cli.metrics_addr.eq_ignore_ascii_case("off") {
        None
    } else {
        match cli.metrics_addr.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(e) => {
                tracing::error!(
                    "invalid --metrics-addr {:?}: {e} (host:port, or off)",
                    cli.metrics_addr
                );
                return ExitCode::from(2);
            }
        }
    };
    let migrate_all_cron = match parse_schedule(&cli.migrate_all_cron) {
        Ok(schedule) => schedule,
        Err(e) => {
            tracing::error!("invalid --migrate-all-cron: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = WorkerSettings {
        migrate_all_cron,
        metrics_addr,
        shutdown_grace: Duration::from_secs(cli.shutdown_grace),
        stale_after: Duration::from_secs(cli.reconcile_after),
        listen_for_requests: cli.listen_for_requests == "on",
        base_domain: cli.connection.base_domain.clone(),
        metrics,
        database_url: cli.connection.database_url,
        redis_url: cli.connection.redis_url,
        namespace: cli.connection.namespace,
        concurrency: usize::from(cli.concurrency),
        heartbeat: cli.heartbeat_ms.map(Duration::from_millis),
        backup_dir: cli.backup_dir,
        suspend_expired_after: cli.suspend_expired_after,
        policy: provision_shared::retry::RetryPolicy {
            max_attempts: cli.max_attempts,
        },
    };
    match run_worker(settings, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `30` or `30s`.
fn parse_seconds(value: &str) -> Result<u64, String> {
    value
        .trim()
        .trim_end_matches('s')
        .parse::<u64>()
        .map_err(|_| format!("{value:?} is not a number of seconds (like 30 or 30s)"))
}

//! Command-line options both binaries take, each with its environment
//! variable (a flag wins over its variable), and their logging.

use clap::{Args, ValueEnum};
use provision_shared::db;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Where PostgreSQL and Redis are, and the namespace this deployment uses.
#[derive(Debug, Clone, Args)]
pub struct ConnectionOptions {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", default_value = db::DEFAULT_DATABASE_URL, global = true)]
    pub database_url: String,

    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = db::DEFAULT_REDIS_URL, global = true)]
    pub redis_url: String,

    /// Prefix of every Redis key this project writes.
    #[arg(long, env = "PROVISION_NAMESPACE", default_value = db::DEFAULT_NAMESPACE, global = true)]
    pub namespace: String,

    /// Default domains are `<schema>.<base domain>`.
    #[arg(long, env = "PROVISION_BASE_DOMAIN", default_value = db::DEFAULT_BASE_DOMAIN, global = true)]
    pub base_domain: String,

    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
}

/// A layer that sees every event whatever the log filter (the worker's
/// step timings).
pub type UnfilteredLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Sends `tracing` output to stderr in `format`; `RUST_LOG` filters it
/// (`default_filter` otherwise). `unfiltered` sees every event.
pub fn init_logging(format: LogFormat, default_filter: &str, unfiltered: Option<UnfilteredLayer>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let output = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(unfiltered)
        .with(output.with_filter(filter))
        .init();
}

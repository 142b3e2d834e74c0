//! `/metrics` (Prometheus text format) and `/healthz` on `--metrics-addr`.
//!
//! Counters and the step-duration histogram live in this process; tenant
//! states, queue depths and the migrate-all progress are read from
//! PostgreSQL and Redis at scrape time, so every worker reports the same
//! truth. Step durations come from the `transition` events `shared` logs,
//! through a tracing layer: `shared` knows nothing of metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use provision_shared::jobs::JobKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

use crate::handlers::WorkerState;

/// Upper bounds of the step-duration buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How a job ended, for the job counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobResult {
    /// Picked up.
    Started,
    /// Ended with its work done (or nothing left to do).
    Succeeded,
    /// Will run again after a transient error.
    Retried,
    /// Ended failed (recorded as such).
    Failed,
}

impl JobResult {
    fn metric(self) -> &'static str {
        match self {
            Self::Started => "provision_jobs_started_total",
            Self::Succeeded => "provision_jobs_succeeded_total",
            Self::Retried => "provision_jobs_retried_total",
            Self::Failed => "provision_jobs_failed_total",
        }
    }
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// This process's counters and histograms.
#[derive(Debug, Default)]
pub struct Metrics {
    jobs: Mutex<BTreeMap<(JobResult, &'static str), u64>>,
    steps: Mutex<BTreeMap<String, Histogram>>,
    /// False once a job loop has died: `/healthz` then answers 503.
    pub loops_alive: AtomicBool,
}

impl Metrics {
    /// A new registry, loops alive.
    pub fn new() -> Arc<Self> {
        let metrics = Self::default();
        metrics.loops_alive.store(true, Ordering::SeqCst);
        Arc::new(metrics)
    }

    /// Counts one job event.
    pub fn job(&self, kind: JobKind, result: JobResult) {
        let mut jobs = self.jobs.lock().expect("metrics lock");
        *jobs.entry((result, kind.name())).or_default() += 1;
    }

    /// Records how long a step took.
    pub fn step(&self, step: &str, seconds: f64) {
        let mut steps = self.steps.lock().expect("metrics lock");
        let histogram = steps.entry(step.to_owned()).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                histogram.counts[i] += 1;
            }
        }
        histogram.sum += seconds;
        histogram.count += 1;
    }

    fn render_local(&self, out: &mut String) {
        let jobs = self.jobs.lock().expect("metrics lock");
        for result in [
            JobResult::Started,
            JobResult::Succeeded,
            JobResult::Retried,
            JobResult::Failed,
        ] {
            let name = result.metric();
            let _ = writeln!(out, "# HELP {name} Jobs by job name ({result:?}).");
            let _ = writeln!(out, "# TYPE {name} counter");
            for kind in JobKind::ALL {
                let n = jobs.get(&(result, kind.name())).copied().unwrap_or(0);
                let _ = writeln!(out, "{name}{{job=\"{}\"}} {n}", kind.name());
            }
        }
        drop(jobs);
        let steps = self.steps.lock().expect("metrics lock");
        let name = "provision_step_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time of one provisioning step, its transaction included."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (step, h) in steps.iter() {
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{step=\"{step}\",le=\"{bound}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(out, "{name}_bucket{{step=\"{step}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{step=\"{step}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{step=\"{step}\"}} {}", h.count);
        }
    }
}

/// A tracing layer that turns `transition` events (with `step` and
/// `duration_ms` fields) into step-duration observations.
#[derive(Debug)]
pub struct StepTimings(pub Arc<Metrics>);

#[derive(Default)]
struct TransitionFields {
    step: Option<String>,
    duration_ms: Option<f64>,
    is_transition: bool,
}

impl Visit for TransitionFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "duration_ms" {
            self.duration_ms = Some(value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "step" {
            self.step = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.is_transition = format!("{value:?}") == "transition";
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StepTimings {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = TransitionFields::default();
        event.record(&mut fields);
        if let (true, Some(step), Some(ms)) = (fields.is_transition, fields.step, fields.duration_ms) {
            self.0.step(&step, ms / 1000.0);
        }
    }
}

/// What is read at scrape time.
async fn render(state: &WorkerState, metrics: &Metrics) -> String {
    let mut out = String::new();
    metrics.render_local(&mut out);
    let by_state: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM public.provision_tenant GROUP BY state")
            .fetch_all(&state.pool)
            .await
            .unwrap_or_default();
    let _ = writeln!(out, "# HELP provision_tenants Tenants by provisioning state.");
    let _ = writeln!(out, "# TYPE provision_tenants gauge");
    for s in provision_shared::TenantState::ALL {
        let n = by_state
            .iter()
            .find(|(name, _)| name == s.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "provision_tenants{{state=\"{s}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP provision_queue_jobs Jobs in Redis by queue and status."
    );
    let _ = writeln!(out, "# TYPE provision_queue_jobs gauge");
    for kind in JobKind::ALL {
        if let Ok(depth) = state.queue.depth_by_status(kind).await {
            for (status, n) in depth {
                let _ = writeln!(
                    out,
                    "provision_queue_jobs{{queue=\"{}\",status=\"{status}\"}} {n}",
                    kind.name()
                );
            }
        }
    }
    let run: Option<(i64, String, i32, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT r.id, r.state, r.total,
                count(*) FILTER (WHERE s.state IN ('pending', 'queued')),
                count(*) FILTER (WHERE s.state = 'migrated'),
                count(*) FILTER (WHERE s.state = 'current'),
                count(*) FILTER (WHERE s.state = 'failed')
         FROM public.provision_migration_run r
         LEFT JOIN public.provision_migration_run_schema s ON s.run_id = r.id
         WHERE r.id = (SELECT max(id) FROM public.provision_migration_run)
         GROUP BY r.id",
    )
    .fetch_optional(&state.pool)
    .await
    .unwrap_or_default();
    if let Some((id, run_state, total, open, migrated, current, failed)) = run {
        let _ = writeln!(
            out,
            "# HELP provision_migrate_all_schemas Schemas of the latest migrate-all run by state."
        );
        let _ = writeln!(out, "# TYPE provision_migrate_all_schemas gauge");
        for (s, n) in [
            ("open", open),
            ("migrated", migrated),
            ("current", current),
            ("failed", failed),
        ] {
            let _ = writeln!(
                out,
                "provision_migrate_all_schemas{{run=\"{id}\",state=\"{s}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP provision_migrate_all_total Schemas behind when the latest run started."
        );
        let _ = writeln!(out, "# TYPE provision_migrate_all_total gauge");
        let _ = writeln!(out, "provision_migrate_all_total{{run=\"{id}\"}} {total}");
        let _ = writeln!(
            out,
            "# HELP provision_migrate_all_running Whether the latest run is still running."
        );
        let _ = writeln!(out, "# TYPE provision_migrate_all_running gauge");
        let _ = writeln!(
            out,
            "provision_migrate_all_running {}",
            i32::from(run_state == "running")
        );
    }
    if let Ok(Some(age)) = state
        .queue
        .heartbeat_age(JobKind::CreateTenant, &state.name)
        .await
    {
        let _ = writeln!(
            out,
            "# HELP provision_worker_heartbeat_age_seconds Age of this worker's last heartbeat in Redis."
        );
        let _ = writeln!(out, "# TYPE provision_worker_heartbeat_age_seconds gauge");
        let _ = writeln!(out, "provision_worker_heartbeat_age_seconds {age}");
    }
    out
}

/// `Ok` when the job loops, PostgreSQL and Redis are all alive; otherwise
/// what is not.
async fn health(state: &WorkerState, metrics: &Metrics) -> Result<(), String> {
    if !metrics.loops_alive.load(Ordering::SeqCst) {
        return Err("a job loop has stopped".into());
    }
    let pg = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await;
    if !matches!(pg, Ok(Ok(_))) {
        return Err("PostgreSQL does not answer".into());
    }
    let redis = tokio::time::timeout(Duration::from_secs(2), state.queue.ping()).await;
    if !matches!(redis, Ok(Ok(()))) {
        return Err("Redis does not answer".into());
    }
    Ok(())
}

/// Serves `/metrics` and `/healthz` until the listener fails.
pub async fn serve(listener: TcpListener, state: Arc<WorkerState>, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let (state, metrics) = (state.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await else {
                return;
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = match path {
                "/metrics" => (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    render(&state, &metrics).await,
                ),
                "/healthz" => match health(&state, &metrics).await {
                    Ok(()) => ("200 OK", "text/plain", "ok\n".to_owned()),
                    Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
                },
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics or /healthz\n".to_owned(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

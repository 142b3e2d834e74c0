//! `signup` (issue 16): from the commit of a signup's transaction that
//! called `provision_request_tenant` to the moment a worker starts the
//! tenant's job, when the worker listens for the request's notification,
//! beside the reconciler-only path (`PROVISION_LISTEN_FOR_REQUESTS=off`),
//! which is what a lost notification costs.
//!
//! "Job started" is the moment the job counts its execution (`attempt`
//! leaves 0), watched every millisecond by the bench's own session; the
//! clock starts when `COMMIT` returns to the signup's session.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use provision_shared::password::django_argon2_hash;
use sqlx::{Connection, PgConnection};

use crate::env::{BenchEnv, Worker};
use crate::fixtures::{self, PASSWORD};
use crate::lower_bound;
use crate::progress::Progress;
use crate::report::{Goal, Report, Samples, Unit, millis};

/// The worker concurrency of both paths.
const CONCURRENCY: usize = 4;
/// How often a listened-for signup's job is looked for.
const START_POLL: Duration = Duration::from_millis(1);
/// How often the reconciler path's signups are looked for: 0.1% of the
/// reconciler's period.
const RECONCILER_POLL: Duration = Duration::from_millis(5);
/// The worker's reconciler period (worker/src/maintenance.rs); the
/// reconciler path's signups are spread over it.
const RECONCILER_PERIOD: Duration = Duration::from_secs(5);
/// The longest any signup may take to reach `ready`.
const DEADLINE: Duration = Duration::from_secs(60);

/// What to measure.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Signups of each listened-for repetition, one at a time.
    pub(crate) signups: usize,
    /// Signups of each reconciler-only repetition, spread over one
    /// reconciler period.
    pub(crate) reconciler_signups: usize,
    /// Repetitions of each measurement.
    pub(crate) repeat: usize,
}

/// Runs the benchmark and adds its rows to `report`.
pub(crate) async fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> anyhow::Result<()> {
    // Hashed once, as the platform hashes before it calls the function.
    let mut sessions = Sessions {
        hash: django_argon2_hash(PASSWORD),
        signup: lower_bound::session(&env.database_url).await?,
        watcher: lower_bound::session(&env.database_url).await?,
    };
    listened(env, options, &mut sessions, report).await?;
    reconciled(env, options, &mut sessions, report).await
}

/// The bench's two sessions: one signs up as the platform does, one
/// watches for the jobs' start.
struct Sessions {
    /// The admin password's hash, as the platform passes it.
    hash: String,
    signup: PgConnection,
    watcher: PgConnection,
}

/// One signup at a time with one idle, listening worker.
async fn listened(
    env: &BenchEnv,
    options: &Options,
    sessions: &mut Sessions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let s = options.signups;
    eprintln!(
        "== signup commit → job started, listening: {s} signups × {}, one idle worker",
        options.repeat
    );
    let mut worker = env.start_worker(CONCURRENCY).await?;
    let mut median = Samples::default();
    let mut p99 = Samples::default();
    for rep in 0..options.repeat {
        let mut latencies = Samples::default();
        let mut progress = Progress::new(format!("signups #{}", rep + 1), s);
        for i in 0..s {
            let schema = format!("sig{rep}_{i:05}");
            // Spread over a second, so signups do not arrive in step with
            // anything periodic in the worker.
            tokio::time::sleep(Duration::from_secs(1).mul_f64((i as f64 * 0.618_033_988_749_895).fract()))
                .await;
            let committed = request_tenant(&mut sessions.signup, &schema, &sessions.hash).await?;
            loop {
                if started(&mut sessions.watcher, std::slice::from_ref(&schema))
                    .await?
                    .contains_key(&schema)
                {
                    latencies.push(millis(committed.elapsed()));
                    break;
                }
                check_progress(&mut worker, committed, &schema)?;
                tokio::time::sleep(START_POLL).await;
            }
            wait_ready(env, &mut worker, &[schema]).await?;
            progress.show(i + 1);
        }
        progress.finish(s);
        median.push(latencies.median());
        p99.push(latencies.percentile(99.0));
    }
    let complaints = worker.complaints();
    worker.stop().await?;
    report.row(
        format!("signup commit → job started, listening, median of {s}"),
        Unit::Ms,
        median,
        None,
        Goal::AtMost {
            scale: 1.0,
            limit: 100.0,
            text: "≤ 100 ms",
        },
    );
    report.row(
        format!("signup commit → job started, listening, p99 of {s}"),
        Unit::Ms,
        p99,
        None,
        Goal::None,
    );
    if !complaints.is_empty() {
        report.note(format!(
            "signup (listening): the worker complained: {}",
            complaints.join(" | ")
        ));
    }
    Ok(())
}

/// Signups spread over one reconciler period, with a worker that does not
/// listen: what each waits when its notification is lost.
async fn reconciled(
    env: &BenchEnv,
    options: &Options,
    sessions: &mut Sessions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let s = options.reconciler_signups;
    eprintln!(
        "== signup commit → job started, reconciler only: {s} signups × {}, over {:?} each",
        options.repeat, RECONCILER_PERIOD
    );
    let mut worker = env
        .start_worker_with(CONCURRENCY, &[("PROVISION_LISTEN_FOR_REQUESTS", "off")])
        .await?;
    let mut median = Samples::default();
    let mut p99 = Samples::default();
    for rep in 0..options.repeat {
        let names: Vec<String> = (0..s).map(|i| format!("rec{rep}_{i:05}")).collect();
        let mut committed = HashMap::new();
        let mut latencies = Samples::default();
        let mut progress = Progress::new(format!("reconciled #{}", rep + 1), s);
        let began = Instant::now();
        for (i, schema) in names.iter().enumerate() {
            let due = RECONCILER_PERIOD.mul_f64(i as f64 / s as f64);
            tokio::time::sleep(due.saturating_sub(began.elapsed())).await;
            let at = request_tenant(&mut sessions.signup, schema, &sessions.hash).await?;
            committed.insert(schema.clone(), at);
        }
        while !committed.is_empty() {
            let pending: Vec<String> = committed.keys().cloned().collect();
            for schema in started(&mut sessions.watcher, &pending).await?.into_keys() {
                if let Some(at) = committed.remove(&schema) {
                    latencies.push(millis(at.elapsed()));
                }
            }
            if let Some((schema, at)) = committed.iter().next() {
                check_progress(&mut worker, *at, schema)?;
            }
            progress.show(s - committed.len());
            tokio::time::sleep(RECONCILER_POLL).await;
        }
        progress.finish(s);
        wait_ready(env, &mut worker, &names).await?;
        median.push(latencies.median());
        p99.push(latencies.percentile(99.0));
    }
    worker.stop().await?;
    report.row(
        format!("signup commit → job started, reconciler only, median of {s}"),
        Unit::Ms,
        median,
        None,
        Goal::None,
    );
    report.row(
        format!("signup commit → job started, reconciler only, p99 of {s}"),
        Unit::Ms,
        p99,
        None,
        Goal::None,
    );
    report.note(format!(
        "signup, reconciler only: a request unpushed for 2 s is pushed by the next reconciler pass \
         (every {} s), so a lost notification costs 2 to {} s.",
        RECONCILER_PERIOD.as_secs(),
        RECONCILER_PERIOD.as_secs() + 2
    ));
    Ok(())
}

/// Calls `provision_request_tenant` in a transaction of its own, as the
/// platform's signup view does; returns when `COMMIT` came back.
async fn request_tenant(conn: &mut PgConnection, schema: &str, hash: &str) -> anyhow::Result<Instant> {
    let mut tx = conn.begin().await?;
    let recorded: String = sqlx::query_scalar(
        "SELECT recorded FROM public.provision_request_tenant(
             schema_name => $1, tenant_name => $2, domain => $3, admin_email => $4,
             admin_password_hash => $5, seed_demo_data => false, requested_by => $6)",
    )
    .bind(schema)
    .bind(format!("Bench {schema}"))
    .bind(fixtures::domain(schema))
    .bind(fixtures::admin_email(schema))
    .bind(hash)
    .bind(fixtures::ACTOR)
    .fetch_one(&mut *tx)
    .await
    .with_context(|| format!("requesting {schema}"))?;
    tx.commit().await?;
    let committed = Instant::now();
    ensure!(recorded == "new", "{schema} was recorded {recorded}, not new");
    Ok(committed)
}

/// Those of `schemas` whose job has started (counted an execution).
async fn started(conn: &mut PgConnection, schemas: &[String]) -> anyhow::Result<HashMap<String, i32>> {
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT schema_name, attempt FROM public.provision_tenant
         WHERE schema_name = ANY($1) AND (attempt > 0 OR state IN ('ready', 'failed'))",
    )
    .bind(schemas)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Fails when the worker died or `schema`, committed at `committed`, has
/// waited past the deadline.
fn check_progress(worker: &mut Worker, committed: Instant, schema: &str) -> anyhow::Result<()> {
    worker.ensure_alive()?;
    ensure!(
        committed.elapsed() < DEADLINE,
        "{schema}'s job had not started {DEADLINE:?} after its commit:\n{}",
        worker.log_tail()
    );
    Ok(())
}

/// Waits until every one of `schemas` is ready, so the next measurement
/// finds the worker idle.
async fn wait_ready(env: &BenchEnv, worker: &mut Worker, schemas: &[String]) -> anyhow::Result<()> {
    let began = Instant::now();
    loop {
        let (ready, failed): (i64, Option<String>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'ready'),
                    min(schema_name || ': ' || coalesce(last_error, '')) FILTER (WHERE state = 'failed')
             FROM public.provision_tenant WHERE schema_name = ANY($1)",
        )
        .bind(schemas)
        .fetch_one(&env.pool)
        .await?;
        if let Some(failed) = failed {
            bail!("a signup failed: {failed}");
        }
        if usize::try_from(ready)? == schemas.len() {
            return Ok(());
        }
        worker.ensure_alive()?;
        ensure!(
            began.elapsed() < DEADLINE,
            "{ready} of {} signups ready after {DEADLINE:?}",
            schemas.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

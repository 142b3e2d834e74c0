//! `provision` (issue 6): signup-to-ready latency with an idle worker
//! (from the request's commit to the `provision_tenant_state`
//! notification of `ready`),
//! throughput of one worker draining a backlog, the memory of the worker
//! and of one `provision create-tenant`, and (optionally) whether the
//! per-tenant cost grows with the number of tenants. Each against the same
//! tenant SQL replayed by plain sessions.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use provision_queue::RedisQueue;
use provision_queue::layout::heartbeat;
use provision_shared::db;
use provision_shared::jobs::JobKind;
use provision_shared::migration_set::MigrationSet;
use provision_shared::password::{ARGON2_MEMORY_KIB, django_argon2_hash};
use provision_shared::request::STATE_CHANNEL;
use tokio::io::AsyncWriteExt;

use crate::env::{BenchEnv, peak_rss_kib};
use crate::fixtures::{self, PASSWORD};
use crate::lower_bound::{self, run_on_sessions, time_one};
use crate::progress::Progress;
use crate::report::{Goal, Report, Samples, Unit, millis};

/// The worker concurrency every provisioning measurement uses.
const CONCURRENCY: usize = 4;
/// The largest backlog the throughput run pushes: apalis-redis wedges at
/// about 8,000 waiting jobs (apalis-redis-notes.md), which is a known
/// failure, not a figure.
pub(crate) const MAX_BACKLOG: usize = 5000;
/// How often the backlog's progress is looked at: 0.3% of a 30 s drain.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// Tasks recording requests before a drain.
const SETUP_PARALLEL: usize = 4;
/// The window at each end of the growth run.
const GROWTH_WINDOW: usize = 100;
/// The lower bound's sessions reconnect this often in the growth run, the
/// known cure for per-connection cache growth (postgres-notes.md).
const GROWTH_RECYCLE: usize = 500;

/// What to measure.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Tenants in each throughput run.
    pub(crate) tenants: usize,
    /// Signups in each latency run.
    pub(crate) signups: usize,
    /// Repetitions of each measurement.
    pub(crate) repeat: usize,
    /// Tenants of the growth run, if it is asked for.
    pub(crate) growth: Option<usize>,
}

/// Runs the benchmark and adds its rows to `report`.
pub(crate) async fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> anyhow::Result<()> {
    ensure!(
        options.tenants <= MAX_BACKLOG,
        "--tenants {} is above {MAX_BACKLOG}: a larger backlog wedges the queue library",
        options.tenants
    );
    if let Some(g) = options.growth {
        ensure!(
            (3 * GROWTH_WINDOW..=MAX_BACKLOG).contains(&g),
            "--growth-tenants must be between {} and {MAX_BACKLOG}",
            3 * GROWTH_WINDOW
        );
    }
    // Hashed once: the client hashes before it records, so this cost is
    // neither the worker's nor the floor's.
    let hash = django_argon2_hash(PASSWORD);
    let migrations = MigrationSet::in_force(&env.pool).await?;
    let queue = env.queue().await?;
    latency(env, options, &queue, &hash, &migrations, report).await?;
    throughput(env, options, &queue, &hash, &migrations, report).await?;
    client(env, options, report).await?;
    if let Some(tenants) = options.growth {
        growth(env, tenants, &queue, &hash, &migrations, report).await?;
    }
    Ok(())
}

/// The pause before signup `i`: spread evenly over one heartbeat (the
/// golden-ratio sequence), so the signups sample every moment of the idle
/// worker's polling cycle instead of arriving in step with it, as real
/// signups do.
fn pause(i: usize) -> Duration {
    let fraction = (i as f64 * 0.618_033_988_749_895).fract();
    heartbeat(JobKind::CreateTenant).mul_f64(fraction)
}

/// (a) One signup at a time with one idle worker: from the request to the
/// tenant's `ready`, against the tenant's SQL in one transaction.
async fn latency(
    env: &BenchEnv,
    options: &Options,
    queue: &RedisQueue,
    hash: &str,
    migrations: &MigrationSet,
    report: &mut Report,
) -> anyhow::Result<()> {
    let s = options.signups;
    eprintln!(
        "== signup → ready: {s} signups × {}, one idle worker (concurrency {CONCURRENCY})",
        options.repeat
    );
    let mut worker = env.start_worker(CONCURRENCY).await?;
    let mut conn = lower_bound::session(&env.database_url).await?;
    let mut listener = sqlx::postgres::PgListener::connect(&env.database_url).await?;
    listener.listen(STATE_CHANNEL).await?;
    let [mut median, mut p99, mut floor_median, mut floor_p99] = std::array::from_fn(|_| Samples::default());
    let mut before_registered = Samples::default();
    let mut registered_to_ready = Samples::default();
    for rep in 0..options.repeat {
        let mut system = Samples::default();
        let mut floor = Samples::default();
        let mut progress = Progress::new(format!("signups #{}", rep + 1), s);
        for i in 0..s {
            let schema = format!("lat{rep}_{i:05}");
            tokio::time::sleep(pause(i)).await;
            // From the request's commit (its COMMIT returned, as the
            // platform's signup sees it), to the `provision_tenant_state`
            // notification of `ready` (what the signup page waits on). The
            // job is pushed as `create-tenant` pushes it; a listening worker
            // may have pushed it already.
            fixtures::record(&env.pool, &schema, hash).await?;
            let started = Instant::now();
            fixtures::push(&env.pool, queue, &schema).await?;
            loop {
                match tokio::time::timeout(Duration::from_secs(1), listener.recv()).await {
                    Ok(notification) => {
                        let notification = notification?;
                        let said: serde_json::Value = serde_json::from_str(notification.payload())?;
                        if said["schema_name"] != schema.as_str() {
                            continue;
                        }
                        match said["state"].as_str() {
                            Some("ready") => break,
                            other => bail!("{schema} ended {other:?}"),
                        }
                    }
                    Err(_) => {
                        worker.ensure_alive()?;
                        ensure!(
                            started.elapsed() < Duration::from_secs(60),
                            "{schema} is not ready after 60 s"
                        );
                    }
                }
            }
            let elapsed = millis(started.elapsed());
            system.push(elapsed);
            if let Some(steps) = registered_to_ready_ms(env, &schema).await {
                before_registered.push(elapsed - steps);
                registered_to_ready.push(steps);
            }
            let floor_schema = format!("latlb{rep}_{i:05}");
            let sql = lower_bound::tenant(&floor_schema, hash, migrations);
            floor.push(millis(time_one(&mut conn, sql).await?));
            progress.show(i + 1);
        }
        progress.finish(s);
        median.push(system.median());
        p99.push(system.percentile(99.0));
        floor_median.push(floor.median());
        floor_p99.push(floor.percentile(99.0));
    }
    let complaints = worker.complaints();
    worker.stop().await?;
    report.row(
        format!("signup → ready, median of {s}"),
        Unit::Ms,
        median,
        Some(floor_median),
        Goal::RatioAtMost(1.2),
    );
    report.row(
        format!("signup → ready, p99 of {s}"),
        Unit::Ms,
        p99,
        Some(floor_p99),
        Goal::RatioAtMost(5.0),
    );
    report.note(format!(
        "signup → ready, where the time goes (medians over all signups): commit → tenant registered \
         (the job's push, its pick-up and the register step) {:.0} ms; registered → ready (the other four steps) {:.0} ms. \
         Signups are spread over the worker's {} ms heartbeat.",
        before_registered.median(),
        registered_to_ready.median(),
        heartbeat(JobKind::CreateTenant).as_millis(),
    ));
    note_complaints(report, "signup → ready", &complaints);
    Ok(())
}

/// From the `registered` to the `ready` transition of `schema`, by the
/// server's clock; `None` if the history cannot be read.
async fn registered_to_ready_ms(env: &BenchEnv, schema: &str) -> Option<f64> {
    sqlx::query_scalar::<_, Option<f64>>(
        "SELECT extract(epoch FROM max(at) FILTER (WHERE to_state = 'ready')
                               - min(at) FILTER (WHERE to_state = 'registered'))::float8 * 1000
         FROM public.provision_event WHERE schema_name = $1",
    )
    .bind(schema)
    .fetch_one(&env.pool)
    .await
    .ok()
    .flatten()
}

/// What a worker draining a backlog did.
struct Drain {
    elapsed: Duration,
    /// Median duration of each step, by the server's clock.
    steps: Option<String>,
    peak_rss_kib: Option<u64>,
    transactions: Option<i64>,
    complaints: Vec<String>,
}

/// Starts a worker on a queue that already holds the jobs of every tenant
/// whose schema name starts with `prefix`, and times it from its start
/// until all `n` are ready. Reads its peak memory just before stopping it.
async fn drain(env: &BenchEnv, prefix: &str, n: usize, label: &str) -> anyhow::Result<Drain> {
    let commits_before = env.transactions_committed().await;
    env.settle().await;
    let started = Instant::now();
    let mut worker = env.start_worker(CONCURRENCY).await?;
    let deadline = Duration::from_secs(120) + Duration::from_millis(500) * u32::try_from(n)?;
    let mut progress = Progress::new(label, n);
    let mut polls = 0;
    let elapsed = loop {
        let (ready, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'ready'), count(*) FILTER (WHERE state = 'failed')
             FROM public.provision_tenant WHERE starts_with(schema_name, $1)",
        )
        .bind(prefix)
        .fetch_one(&env.pool)
        .await?;
        polls += 1;
        if usize::try_from(ready)? >= n {
            break started.elapsed();
        }
        if failed > 0 {
            let errors: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT schema_name, last_error FROM public.provision_tenant
                 WHERE starts_with(schema_name, $1) AND state = 'failed' LIMIT 5",
            )
            .bind(prefix)
            .fetch_all(&env.pool)
            .await?;
            bail!("{failed} tenant(s) failed, e.g. {errors:?}");
        }
        worker.ensure_alive()?;
        ensure!(
            started.elapsed() < deadline,
            "{ready} of {n} tenants ready after {deadline:?}"
        );
        progress.show(usize::try_from(ready)?);
        tokio::time::sleep(DRAIN_POLL).await;
    };
    progress.finish(n);
    let peak_rss_kib = worker.peak_rss_kib();
    let complaints = worker.complaints();
    worker.stop().await?;
    let transactions = match (commits_before, env.transactions_committed().await) {
        (Some(before), Some(after)) => Some(after - before - polls),
        _ => None,
    };
    Ok(Drain {
        elapsed,
        steps: step_medians(env, prefix).await,
        peak_rss_kib,
        transactions,
        complaints,
    })
}

/// The median time of each step of the tenants under `prefix`: from the
/// previous transition's commit to this one's, by the server's clock (the
/// history records `clock_timestamp()`). The first step is left out: it
/// starts from the request, so it includes the wait in the backlog.
async fn step_medians(env: &BenchEnv, prefix: &str) -> Option<String> {
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT step, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)
         FROM (SELECT step, id, to_state,
                      extract(epoch FROM at - lag(at) OVER (PARTITION BY schema_name ORDER BY id))::float8
                          * 1000 AS ms
               FROM public.provision_event WHERE starts_with(schema_name, $1)) e
         WHERE ms IS NOT NULL AND to_state <> 'registered'
         GROUP BY step ORDER BY min(id)",
    )
    .bind(prefix)
    .fetch_all(&env.pool)
    .await
    .ok()?;
    (!rows.is_empty()).then(|| {
        rows.iter()
            .map(|(step, ms)| format!("{step} {ms:.1} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// (b) and (c): one worker draining a backlog of N tenants, against four
/// plain sessions provisioning N others, and the worker's peak memory.
async fn throughput(
    env: &BenchEnv,
    options: &Options,
    queue: &RedisQueue,
    hash: &str,
    migrations: &MigrationSet,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = options.tenants;
    // Each repetition adds 2n tenants, and both sides slow as the catalog
    // grows; taking turns at going first, over an even number of
    // repetitions, gives each side the same share of early and late places.
    let repeat = options.repeat.div_ceil(2) * 2;
    eprintln!("== throughput: a backlog of {n} tenants, one worker (concurrency {CONCURRENCY}), × {repeat}");
    let mut rate = Samples::default();
    let mut floor_rate = Samples::default();
    let mut rss = Samples::default();
    let mut per_tenant_transactions = Samples::default();
    let mut complaints = Vec::new();
    let mut steps = None;
    let mut floor_per_tenant = Samples::default();
    for rep in 0..repeat {
        let prefix = format!("tp{rep}");
        let names = fixtures::names(&prefix, n);
        fixtures::record_all(&env.pool, names.clone(), hash, SETUP_PARALLEL).await?;
        fixtures::push_all(&env.pool, queue, &names).await?;
        // Alternating which goes first: both see the catalog grow alike.
        let floor_first = rep % 2 == 1;
        let floor_names = fixtures::names(&format!("tplb{rep}"), n);
        let mut floor = None;
        if floor_first {
            floor = Some(throughput_floor(env, floor_names.clone(), hash, migrations, rep).await?);
        }
        let drained = drain(
            env,
            &format!("{prefix}_"),
            n,
            &format!("worker #{}: tenants ready", rep + 1),
        )
        .await?;
        if !floor_first {
            floor = Some(throughput_floor(env, floor_names, hash, migrations, rep).await?);
        }
        let floor = floor.unwrap_or_default();
        rate.push(n as f64 / drained.elapsed.as_secs_f64());
        floor_rate.push(n as f64 / floor.as_secs_f64());
        floor_per_tenant.push(millis(floor) * CONCURRENCY as f64 / n as f64);
        steps = drained.steps.or(steps);
        if let Some(kib) = drained.peak_rss_kib {
            rss.push(kib as f64 / 1024.0);
        }
        if let Some(t) = drained.transactions {
            per_tenant_transactions.push(t as f64 / n as f64);
        }
        complaints.extend(drained.complaints);
    }
    report.row(
        format!("throughput, backlog of {n}, concurrency {CONCURRENCY}"),
        Unit::PerSec,
        rate,
        Some(floor_rate),
        Goal::RatioAtLeast(0.9),
    );
    report.row(
        "worker peak RSS (VmHWM) during the drain",
        Unit::MiB,
        rss,
        None,
        Goal::AtMost {
            scale: 1.0,
            limit: 64.0,
            text: "< 64 MiB",
        },
    );
    if per_tenant_transactions.median().is_finite() {
        report.note(format!(
            "throughput: the worker committed about {:.1} transactions per tenant \
             (pg_stat_database, the bench's own polls subtracted); the lower bound commits 1.",
            per_tenant_transactions.median()
        ));
    }
    if let Some(steps) = steps {
        report.note(format!(
            "throughput, median time per step under load (one repetition): {steps}; \
             against {:.1} ms per tenant for a lower-bound session",
            floor_per_tenant.median()
        ));
    }
    report.note(format!(
        "throughput lower bound: {CONCURRENCY} plain sessions, one transaction per tenant in one round trip \
         (client and domain rows, CREATE SCHEMA, every tenant migration, bookkeeping rows, admin user); \
         the worker is timed from its process start, so its start-up and first pick-up are included."
    ));
    note_complaints(report, "throughput", &complaints);
    Ok(())
}

async fn throughput_floor(
    env: &BenchEnv,
    names: Vec<String>,
    hash: &str,
    migrations: &MigrationSet,
    rep: usize,
) -> anyhow::Result<Duration> {
    let (hash, migrations) = (hash.to_owned(), migrations.clone());
    env.settle().await;
    let run = run_on_sessions(
        &env.database_url,
        CONCURRENCY,
        names,
        &format!("lower bound #{}: tenants", rep + 1),
        Arc::new(move |schema| lower_bound::tenant(schema, &hash, &migrations)),
        None,
    )
    .await?;
    Ok(run.total())
}

/// (c) One `provision create-tenant` as an operator runs it: wall time and
/// peak memory, against the same work done in-process.
async fn client(env: &BenchEnv, options: &Options, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("== provision create-tenant × {}", options.repeat);
    let mut wall = Samples::default();
    let mut rss = Samples::default();
    let mut floor = Samples::default();
    let time = Path::new("/usr/bin/time");
    for rep in 0..options.repeat {
        let schema = format!("cli{rep}_00000");
        let out = env.dir.join(format!("time-{rep}.txt"));
        std::fs::create_dir_all(&env.dir)?;
        let provision = env.binary("provision");
        let mut cmd = if time.exists() {
            let mut cmd = env.client_command(time);
            cmd.arg("-f").arg("%M %e").arg("-o").arg(&out).arg(&provision);
            cmd
        } else {
            env.client_command(&provision)
        };
        cmd.args(["create-tenant", "--schema-name", &schema, "--tenant-name"])
            .arg(format!("Bench {schema}"))
            .arg("--domain")
            .arg(fixtures::domain(&schema))
            .arg("--admin-email")
            .arg(fixtures::admin_email(&schema))
            .args(["--admin-password-stdin", "--skip-demo-data", "--json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd.spawn().context("running provision")?;
        let pid = child.id().context("provision exited at once")?;
        let mut stdin = child.stdin.take().context("provision's stdin")?;
        stdin.write_all(format!("{PASSWORD}\n").as_bytes()).await?;
        drop(stdin);
        // Without /usr/bin/time, the peak is sampled from /proc while the
        // process runs: it may miss the last milliseconds, so it can only
        // read low, never high.
        let sampler = (!time.exists()).then(|| {
            tokio::spawn(async move {
                let mut peak = 0;
                while let Some(kib) = peak_rss_kib(pid) {
                    peak = peak.max(kib);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                peak
            })
        });
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .context("provision create-tenant did not end in 60 s")??;
        let elapsed = started.elapsed();
        ensure!(
            output.status.success(),
            "provision create-tenant failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        wall.push(millis(elapsed));
        let peak_kib = match sampler {
            Some(task) => Some(task.await?),
            None => std::fs::read_to_string(&out)
                .ok()
                .and_then(|t| t.split_whitespace().next().and_then(|k| k.parse::<u64>().ok())),
        };
        if let Some(kib) = peak_kib {
            rss.push(kib as f64 / 1024.0);
        }
        floor.push(millis(client_floor(env, &format!("clilb{rep}_00000")).await?));
    }
    report.row(
        "provision create-tenant, wall time",
        Unit::Ms,
        wall,
        Some(floor),
        Goal::AtMost {
            scale: 1.0,
            limit: 150.0,
            text: "< 150 ms",
        },
    );
    report.row(
        "provision create-tenant, peak RSS",
        Unit::MiB,
        rss,
        Some(Samples::new(vec![f64::from(ARGON2_MEMORY_KIB) / 1024.0])),
        Goal::AtMost {
            scale: 1.0,
            limit: 32.0,
            text: "< 32 MiB",
        },
    );
    report.note(format!(
        "create-tenant lower bounds: wall time = the same work in this process (connect to PostgreSQL \
         and Redis, argon2 hash, record, push) without starting a process; peak RSS = the argon2 \
         memory cost ({} MiB), which the hash must hold (computed, not measured). Peak RSS {}.",
        ARGON2_MEMORY_KIB / 1024,
        if time.exists() {
            "from /usr/bin/time"
        } else {
            "sampled from /proc every millisecond"
        }
    ));
    Ok(())
}

/// What `provision create-tenant` must do at the least, timed in-process.
async fn client_floor(env: &BenchEnv, schema: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let pool = db::connect(&env.database_url, 1).await?;
    let queue = RedisQueue::connect(&env.redis_url, &env.name).await?;
    let hash = django_argon2_hash(PASSWORD);
    fixtures::record(&pool, schema, &hash).await?;
    fixtures::push(&pool, &queue, schema).await?;
    let elapsed = started.elapsed();
    pool.close().await;
    Ok(elapsed)
}

/// (d) Whether a tenant costs more as tenants accumulate: the time per
/// tenant over the first and the last 100 of a long drain.
async fn growth(
    env: &BenchEnv,
    tenants: usize,
    queue: &RedisQueue,
    hash: &str,
    migrations: &MigrationSet,
    report: &mut Report,
) -> anyhow::Result<()> {
    eprintln!("== growth: a backlog of {tenants} tenants, one worker (concurrency {CONCURRENCY})");
    let names = fixtures::names("gr", tenants);
    fixtures::record_all(&env.pool, names.clone(), hash, SETUP_PARALLEL).await?;
    fixtures::push_all(&env.pool, queue, &names).await?;
    let drained = drain(env, "gr_", tenants, "growth: tenants ready").await?;
    let ready_ms: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM ready_at)::float8 * 1000 FROM public.provision_tenant
         WHERE starts_with(schema_name, 'gr_') ORDER BY ready_at",
    )
    .fetch_all(&env.pool)
    .await?;
    let system = windows(&ready_ms).context("too few ready tenants")?;

    let (hash, migrations) = (hash.to_owned(), migrations.clone());
    let floor_run = run_on_sessions(
        &env.database_url,
        CONCURRENCY,
        fixtures::names("grlb", tenants),
        "growth lower bound: tenants",
        Arc::new(move |schema| lower_bound::tenant(schema, &hash, &migrations)),
        Some(GROWTH_RECYCLE),
    )
    .await?;
    let floor_ms: Vec<f64> = floor_run.finished.iter().map(|d| millis(*d)).collect();
    let floor = windows(&floor_ms).context("too few lower-bound tenants")?;

    let one = |v: f64| Samples::new(vec![v]);
    report.row(
        format!("per tenant, first {GROWTH_WINDOW} of {tenants}"),
        Unit::Ms,
        one(system.0),
        Some(one(floor.0)),
        Goal::None,
    );
    report.row(
        format!("per tenant, last {GROWTH_WINDOW} of {tenants}"),
        Unit::Ms,
        one(system.1),
        Some(one(floor.1)),
        Goal::None,
    );
    report.row(
        "per tenant, last ÷ first",
        Unit::Factor,
        one(system.1 / system.0),
        Some(one(floor.1 / floor.0)),
        Goal::AtMost {
            scale: 1.0,
            limit: 1.5,
            text: "≤ 1.5×",
        },
    );
    report.note(format!(
        "growth: one run (not repeated), {:.1} tenants/s overall; per-tenant time = the span of {GROWTH_WINDOW} \
         consecutive completions ÷ {GROWTH_WINDOW}; the lower bound's sessions reconnect every {GROWTH_RECYCLE} tenants.",
        tenants as f64 / drained.elapsed.as_secs_f64()
    ));
    note_complaints(report, "growth", &drained.complaints);
    Ok(())
}

/// Time per completion over the first and the last window of sorted
/// completion times.
fn windows(times: &[f64]) -> Option<(f64, f64)> {
    let n = times.len();
    if n < 2 * GROWTH_WINDOW + 1 {
        return None;
    }
    let w = GROWTH_WINDOW as f64;
    Some((
        (times[GROWTH_WINDOW] - times[0]) / w,
        (times[n - 1] - times[n - 1 - GROWTH_WINDOW]) / w,
    ))
}

fn note_complaints(report: &mut Report, what: &str, complaints: &[String]) {
    if let Some(first) = complaints.first() {
        report.note(format!(
            "{what}: the worker logged {} warning(s), first: {first}",
            complaints.len()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_cover_the_heartbeat() {
        let pauses: Vec<Duration> = (0..50).map(pause).collect();
        assert!(pauses.iter().all(|p| *p < heartbeat(JobKind::CreateTenant)));
        assert!(pauses.iter().any(|p| *p < heartbeat(JobKind::CreateTenant) / 10));
        assert!(
            pauses
                .iter()
                .any(|p| *p > heartbeat(JobKind::CreateTenant) * 9 / 10)
        );
    }

    #[test]
    fn windows_take_each_end() {
        let times: Vec<f64> = (0..1000)
            .map(|i| f64::from(i) * if i < 500 { 1.0 } else { 2.0 })
            .collect();
        let (first, last) = windows(&times).unwrap();
        assert_eq!(first, 1.0);
        assert_eq!(last, 2.0);
        assert!(windows(&times[..150]).is_none());
    }
}

//! `migrate-all` (issue 3): a migrate-all run over N ready schemas with one
//! real worker process at concurrency 1, 4 and 8, each against the same DDL
//! applied by as many plain sessions; and a run with nothing to do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use provision_shared::ledger::read_ledgers;
use provision_shared::migrate_all::{RunScope, RunStart, RunTrigger, run_summary, start_run};
use provision_shared::migration_set::import::store;
use provision_shared::migration_set::{
    ExportDocument, ExportedMigration, Member, MigrationSet, built_in_export,
};
use provision_shared::password::django_argon2_hash;
use provision_shared::sql::{Ident, Marker, Script};

use crate::env::{BenchEnv, Worker, busy_share_since, machine_cpu, machine_user_cpu};
use crate::fixtures::{self, ACTOR, PASSWORD};
use crate::lower_bound::{add_column, in_schema, run_on_sessions};
use crate::progress::Progress;
use crate::report::{Goal, Report, Samples, Unit, millis};

/// The worker concurrencies (and lower-bound sessions) measured.
const CONCURRENCIES: [usize; 3] = [1, 4, 8];
/// How often the run's state is looked at: fine enough for runs of a
/// second, cheap enough (a primary-key lookup) not to slow them.
const POLL: Duration = Duration::from_millis(20);
/// Tasks making the ready tenants: four sessions is where one server of
/// this size stops getting faster (see postgres-notes.md).
const SETUP_PARALLEL: usize = 4;

/// What to measure.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Ready tenants to migrate.
    pub(crate) schemas: usize,
    /// Repetitions of each measurement.
    pub(crate) repeat: usize,
}

/// Runs the benchmark and adds its rows to `report`.
pub(crate) async fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let n = options.schemas;
    eprintln!(
        "== migrate-all: {n} schemas, concurrency {CONCURRENCIES:?}, {} repetition(s)",
        options.repeat
    );
    let hash = django_argon2_hash(PASSWORD);
    let names = fixtures::names("ma", n);
    fixtures::make_ready(&env.pool, names.clone(), &hash, SETUP_PARALLEL).await?;

    // The platform model's set, to which each measurement adds its own
    // migration and stores the result as the next set (what an import of
    // the platform's next release does).
    let mut document = built_in_export();
    // Every measurement, system or floor, adds a column of its own, so each
    // applies exactly one new migration to every schema, on tables that grow
    // alike for both.
    let mut column = 0;
    let mut noop = Samples::default();
    let mut noop_floor = Samples::default();
    for concurrency in CONCURRENCIES {
        let mut system = Samples::default();
        let mut floor = Samples::default();
        let mut profiles = Vec::new();
        let mut transactions = Samples::default();
        let mut floor_busy = Samples::default();
        let mut floor_user = Samples::default();
        for rep in 1..=options.repeat {
            column += 1;
            push_bench_migration(&mut document, column);
            let set = MigrationSet::from_export(&document, 0)?;
            store(&env.pool, &set, "bench", ACTOR, false).await?;
            let set = MigrationSet::in_force(&env.pool).await?;

            let commits_before = env.transactions_committed().await;
            env.settle().await;
            let mut worker = env.start_worker(concurrency).await?;
            let label = format!("migrate-all c={concurrency} #{rep}: schemas");
            let timed = timed_run(env, &mut worker, &set, n, &label).await?;
            let complaints = worker.complaints();
            worker.stop().await?;
            if let (Some(before), Some(after)) = (commits_before, env.transactions_committed().await) {
                transactions.push((after - before - timed.queries) as f64 / n as f64);
            }
            check_all_current(env, &set, &names).await?;
            system.push(millis(timed.elapsed));
            if let Some(profile) = run_profile(env, &timed).await {
                profiles.push(profile);
            }
            if !complaints.is_empty() {
                report.note(format!(
                    "migrate-all c={concurrency} #{rep}: the worker logged {} warning(s), first: {}",
                    complaints.len(),
                    complaints[0]
                ));
            }

            noop.push(millis(timed_noop(env, &set, n).await?));
            noop_floor.push(millis(timed_read_ledgers(env, &set, &names).await?));

            column += 1;
            let ddl = bench_member(column)?;
            env.settle().await;
            let machine_before = machine_cpu();
            let user_before = machine_user_cpu();
            let floor_run = run_on_sessions(
                &env.database_url,
                concurrency,
                names.clone(),
                &format!("lower bound c={concurrency} #{rep}: schemas"),
                Arc::new(move |schema| in_schema(schema, &ddl)),
                None,
            )
            .await?;
            floor.push(millis(floor_run.total()));
            if let Some(busy) = busy_share_since(machine_before) {
                floor_busy.push(busy);
            }
            if let Some((after, before)) = machine_user_cpu().zip(user_before) {
                floor_user.push(millis(after.saturating_sub(before)));
            }
        }
        report.row(
            format!("migrate-all, {n} schemas, concurrency {concurrency}"),
            Unit::MsForSchemas(n),
            system,
            Some(floor),
            Goal::RatioAtMost(1.3),
        );
        if let Some(profile) = median_profile(&profiles) {
            report.note(format!(
                "migrate-all c={concurrency} (medians): {profile}; about {:.1} transactions per schema \
                 (pg_stat_database, the bench's own queries subtracted; the lower bound commits 1); \
                 during the lower bound the machine's cores were {:.0}% busy, {:.0} ms of user CPU",
                transactions.median(),
                floor_busy.median() * 100.0,
                floor_user.median()
            ));
        }
    }
    report.row(
        format!("no-op migrate-all, {n} schemas current"),
        Unit::MsScaledTo10k(n),
        noop,
        Some(noop_floor),
        Goal::AtMost {
            scale: 10_000.0 / n.max(1) as f64,
            limit: 2000.0,
            text: "< 2 s at 10k",
        },
    );
    report.note(
        "migrate-all lower bound: the same migration SQL and its django_migrations row, by as many \
         plain sessions as the worker's concurrency, one transaction per schema in one round trip, \
         no bookkeeping. No-op lower bound: every tenant's ledger read by one plain session, a \
         hundred schemas a query (what knowing that nothing is behind costs).",
    );
    Ok(())
}

/// Adds bench migration `k` to the plan of `document`.
fn push_bench_migration(document: &mut ExportDocument, k: usize) {
    let name = format!("{:04}_bench_col_{k}", k + 1);
    document.plan.push(ExportedMigration {
        app: "buildings".into(),
        name: name.clone(),
        sql: add_column(k),
        python: Vec::new(),
        changes_models: false,
        public: false,
        parents: vec![
            document
                .plan
                .iter()
                .rev()
                .find(|m| m.app == "buildings")
                .map(|m| ("buildings".to_owned(), m.name.clone()))
                .expect("the platform model has buildings migrations"),
        ],
    });
    document.ledger.push(("buildings".into(), name));
}

/// Bench migration `k`, on its own, for the lower bound.
fn bench_member(k: usize) -> anyhow::Result<Member> {
    let mut document = built_in_export();
    push_bench_migration(&mut document, k);
    let set = MigrationSet::from_export(&document, 0)?;
    Ok(set.members().last().expect("the migration just added").clone())
}

/// The generous limit for a run over `n` schemas: a run that takes longer
/// is stuck, not slow.
fn deadline(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(50) * u32::try_from(n).unwrap_or(u32::MAX)
}

/// A run followed to its end.
pub(crate) struct TimedRun {
    /// From just before it started until it was seen finished.
    pub(crate) elapsed: Duration,
    run_id: i64,
    /// Queries the bench itself made meanwhile.
    queries: i64,
    /// How long `start_run` took: every ledger read, the schemas behind
    /// handed out as they were found.
    start: Duration,
    /// The worker's CPU time over the run, and the share of the machine's
    /// cores in use meanwhile.
    worker_cpu: Option<Duration>,
    machine_busy: Option<f64>,
    /// The machine's user-space CPU time over the run.
    user_cpu: Option<Duration>,
}

/// Starts a run to `version` and follows it to its end: the time an
/// operator waits for `provision migrate --all --wait`. Fails on a failed
/// schema, a dead worker or a run that never ends.
pub(crate) async fn timed_run(
    env: &BenchEnv,
    worker: &mut Worker,
    set: &MigrationSet,
    n: usize,
    label: &str,
) -> anyhow::Result<TimedRun> {
    let queue = env.queue().await?;
    let cpu_before = worker.cpu_time();
    let machine_before = machine_cpu();
    let user_before = machine_user_cpu();
    let started = Instant::now();
    let mut queries = 1;
    let run_id = start_operator_run(env, set, &queue).await?;
    let start = started.elapsed();
    let mut progress = Progress::new(label, n);
    let mut last_summary = Instant::now();
    loop {
        let state: String =
            sqlx::query_scalar("SELECT state FROM public.provision_migration_run WHERE id = $1")
                .bind(run_id)
                .fetch_one(&env.pool)
                .await?;
        if state == "finished" {
            let elapsed = started.elapsed();
            let summary = run_summary(&env.pool, run_id).await?;
            progress.finish(usize::try_from(summary.done).unwrap_or(0));
            ensure!(
                summary.failed == 0,
                "{} schema(s) failed: {:?}",
                summary.failed,
                summary.failures
            );
            ensure!(
                summary.migrated == i64::try_from(n)?,
                "{} of {n} schemas migrated: {summary:?}",
                summary.migrated
            );
            let worker_cpu = worker
                .cpu_time()
                .zip(cpu_before)
                .map(|(after, before)| after.saturating_sub(before));
            let machine_busy = busy_share_since(machine_before);
            let user_cpu = machine_user_cpu()
                .zip(user_before)
                .map(|(after, before)| after.saturating_sub(before));
            return Ok(TimedRun {
                elapsed,
                run_id,
                queries,
                start,
                worker_cpu,
                machine_busy,
                user_cpu,
            });
        }
        worker.ensure_alive()?;
        if started.elapsed() > deadline(n) {
            let summary = run_summary(&env.pool, run_id).await?;
            let open: Vec<(String, String, i32, Option<String>)> = sqlx::query_as(
                "SELECT schema_name, state, attempt, error FROM public.provision_migration_run_schema
                 WHERE run_id = $1 AND state IN ('pending', 'queued') ORDER BY schema_name LIMIT 5",
            )
            .bind(run_id)
            .fetch_all(&env.pool)
            .await?;
            bail!(
                "the run did not finish in {:?}: {summary:?}\nopen schemas: {open:?}\n\
                 Redis keys:\n{}\nworker log:\n{}",
                deadline(n),
                env.redis_summary().await,
                worker.log_tail()
            );
        }
        if last_summary.elapsed() >= Duration::from_secs(1) {
            let summary = run_summary(&env.pool, run_id).await?;
            queries += 2;
            progress.show(usize::try_from(summary.done).unwrap_or(0));
            last_summary = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Starts a run of every schema to `set` as `provision migrate --all` does:
/// its first schemas claimed as it is recorded and pushed to `queue`.
async fn start_operator_run(
    env: &BenchEnv,
    set: &MigrationSet,
    queue: &provision_queue::RedisQueue,
) -> anyhow::Result<i64> {
    match start_run(
        &env.pool,
        set,
        RunTrigger::Operator,
        RunScope::All,
        ACTOR,
        Some(queue),
    )
    .await?
    {
        RunStart::Started(id) => Ok(id),
        other => bail!("expected a new run, found {other:?}"),
    }
}

/// A run when every schema is current, timed the same way: every ledger
/// read, nothing found behind, the run finished at once.
async fn timed_noop(env: &BenchEnv, set: &MigrationSet, n: usize) -> anyhow::Result<Duration> {
    let queue = env.queue().await?;
    let started = Instant::now();
    let run_id = start_operator_run(env, set, &queue).await?;
    loop {
        let summary = run_summary(&env.pool, run_id).await?;
        if summary.state == "finished" {
            let elapsed = started.elapsed();
            ensure!(
                summary.total == 0 && summary.already_current == i64::try_from(n)?,
                "the no-op run had work: {summary:?}"
            );
            return Ok(elapsed);
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the no-op run did not finish: {summary:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The floor of a no-op run: every tenant's ledger read on one plain
/// session, a hundred schemas a query.
async fn timed_read_ledgers(
    env: &BenchEnv,
    set: &MigrationSet,
    names: &[String],
) -> anyhow::Result<Duration> {
    let mut conn = crate::lower_bound::session(&env.database_url).await?;
    let started = Instant::now();
    let mut seen = 0i64;
    for chunk in names.chunks(provision_shared::ledger::LEDGERS_PER_QUERY) {
        let mut script = Script::new();
        let count: Marker<i64> = script.marker(|s| {
            s.sql("(SELECT count(*) FROM (");
            s.join(chunk, " UNION ALL ", |s, name| {
                let ident = Ident::tenant_schema(name).expect("the bench names its schemas validly");
                s.sql("SELECT m.app, m.name FROM ")
                    .ident(&ident)
                    .sql(".django_migrations m");
            });
            s.sql(") AS rows)");
        });
        let output = script.finish()?.run(&mut conn).await.map_err(|f| f.error)?;
        seen += output.get(count).transpose()?.unwrap_or(0);
    }
    let elapsed = started.elapsed();
    ensure!(
        seen >= i64::try_from(names.len() * set.len())?,
        "the ledgers hold {seen} rows, fewer than every schema at every migration"
    );
    Ok(elapsed)
}

/// Checks that every schema's ledger has every migration of `set`: the run
/// did what it said.
async fn check_all_current(env: &BenchEnv, set: &MigrationSet, names: &[String]) -> anyhow::Result<()> {
    let ledgers = read_ledgers(&env.pool, set, names)
        .await
        .context("reading the ledgers")?;
    let behind = names
        .iter()
        .filter(|n| ledgers.get(*n).is_none_or(|l| !l.pending(set).is_empty()))
        .count();
    ensure!(
        behind == 0,
        "{behind} of {} schemas lack a migration of set {}",
        names.len(),
        set.version()
    );
    Ok(())
}

/// Where a run's time went, from the server's clock: until the first
/// schema was handed to the queue (dispatch), until the first was done
/// (queue pick-up), and from the first done to the last.
#[derive(Debug, Clone, Copy)]
struct RunProfile {
    start: f64,
    worker_cpu: Option<f64>,
    machine_busy: Option<f64>,
    user_cpu: Option<f64>,
    to_first_queued: f64,
    to_first_done: f64,
    first_to_last_done: f64,
}

/// The profile of run `run_id`, or `None` if it cannot be read (the
/// schema of these tables may have moved on; the figures stand anyway).
async fn run_profile(env: &BenchEnv, timed: &TimedRun) -> Option<RunProfile> {
    let run_id = timed.run_id;
    let row: (Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT extract(epoch FROM min(s.queued_at) - r.started_at)::float8 * 1000,
                extract(epoch FROM min(s.updated_at) - r.started_at)::float8 * 1000,
                extract(epoch FROM max(s.updated_at) - min(s.updated_at))::float8 * 1000
         FROM public.provision_migration_run r
         JOIN public.provision_migration_run_schema s ON s.run_id = r.id
         WHERE r.id = $1 GROUP BY r.started_at",
    )
    .bind(run_id)
    .fetch_one(&env.pool)
    .await
    .ok()?;
    Some(RunProfile {
        start: millis(timed.start),
        worker_cpu: timed.worker_cpu.map(millis),
        machine_busy: timed.machine_busy,
        user_cpu: timed.user_cpu.map(millis),
        to_first_queued: row.0?,
        to_first_done: row.1?,
        first_to_last_done: row.2?,
    })
}

fn median_profile(profiles: &[RunProfile]) -> Option<String> {
    if profiles.is_empty() {
        return None;
    }
    let median = |f: fn(&RunProfile) -> f64| Samples::new(profiles.iter().map(f).collect()).median();
    let median_of = |f: fn(&RunProfile) -> Option<f64>| {
        let values: Vec<f64> = profiles.iter().filter_map(f).collect();
        (!values.is_empty()).then(|| Samples::new(values).median())
    };
    let mut text = format!(
        "start_run {:.0} ms (while schemas are migrated); the run's row → first schema queued {:.0} ms, \
         → first schema done {:.0} ms, first → last done {:.0} ms",
        median(|p| p.start),
        median(|p| p.to_first_queued),
        median(|p| p.to_first_done),
        median(|p| p.first_to_last_done),
    );
    if let Some(cpu) = median_of(|p| p.worker_cpu) {
        text.push_str(&format!("; worker CPU {cpu:.0} ms"));
    }
    if let Some(busy) = median_of(|p| p.machine_busy) {
        text.push_str(&format!(", the machine's cores {:.0}% busy", busy * 100.0));
    }
    if let Some(user) = median_of(|p| p.user_cpu) {
        text.push_str(&format!(", {user:.0} ms of user CPU"));
    }
    Some(text)
}

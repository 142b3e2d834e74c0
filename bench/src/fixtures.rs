//! Tenants for the benchmarks: their requests, and the fast ways to record
//! many of them or make many ready ones, by calling the library the worker
//! runs directly instead of going through the queue.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use provision_shared::ProvisionError;
use provision_shared::create_tenant::{JobEnv, JobOutcome, run_create_tenant};
use provision_shared::jobs::{JobRequest, JobSink};
use provision_shared::migration_set::MigrationSet;
use provision_shared::request::{Recorded, TenantRequest, push_owed_job, record_request};
use provision_shared::retry::RetryPolicy;
use provision_shared::state::TenantState;
use sqlx::PgPool;

use crate::progress::Progress;

/// Who the bench records as the actor of what it does itself.
pub(crate) const ACTOR: &str = "provision-bench";

/// The admin password of every bench tenant; hashed once per run, since
/// the client hashes before it records and that cost is not the worker's.
pub(crate) const PASSWORD: &str = "bench-password-not-secret";

/// `n` schema names `<prefix>_<i>`, zero-padded so they sort in order.
pub(crate) fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}_{i:05}")).collect()
}

/// The tenant's primary domain: schema names may hold `_`, DNS labels not.
pub(crate) fn domain(schema: &str) -> String {
    format!("{}.bench.newconcierge.app", schema.replace('_', "-"))
}

/// The tenant's admin email.
pub(crate) fn admin_email(schema: &str) -> String {
    format!("admin@{}", domain(schema))
}

/// A request as a signup makes it, without demo data (seeding is a job of
/// its own, not part of becoming ready).
pub(crate) fn request(schema: &str, hash: &str) -> TenantRequest {
    TenantRequest {
        schema_name: schema.to_owned(),
        tenant_name: format!("Bench {schema}"),
        domain: domain(schema),
        admin_email: admin_email(schema),
        admin_password_hash: hash.to_owned(),
        trial_days: 30,
        seed_demo_data: false,
    }
}

/// Records `schema`'s request; it must be new.
pub(crate) async fn record(pool: &PgPool, schema: &str, hash: &str) -> anyhow::Result<()> {
    let recorded = record_request(pool, &request(schema, hash), ACTOR).await?;
    ensure!(
        recorded == Recorded::New,
        "{schema} was recorded before: {recorded:?}"
    );
    Ok(())
}

/// Pushes `schema`'s `CreateTenant` job, as `provision create-tenant`
/// does: its id claimed first, so a listening worker that was told of the
/// request and claimed it already is not doubled.
pub(crate) async fn push<S: JobSink>(pool: &PgPool, queue: &S, schema: &str) -> anyhow::Result<()> {
    push_owed_job(pool, queue, schema, None).await?;
    Ok(())
}

/// A sink that drops follow-up jobs: tenants made directly have none worth
/// running (no demo data, no retries expected).
#[derive(Debug)]
struct NoSink;

impl JobSink for NoSink {
    async fn push(&self, _job: JobRequest) -> Result<String, ProvisionError> {
        Ok("not-pushed".into())
    }
}

/// Makes every tenant of `names` ready at the built-in migrations by
/// running their `CreateTenant` steps in this process, `parallel` at a
/// time: the same SQL a worker runs, minus the queue, so setting up
/// thousands of tenants takes minutes, not an afternoon.
pub(crate) async fn make_ready(
    pool: &PgPool,
    names: Vec<String>,
    hash: &str,
    parallel: usize,
) -> anyhow::Result<()> {
    let pool = pool.clone();
    let hash: Arc<str> = hash.into();
    let migrations = MigrationSet::in_force(&pool).await?;
    for_each_parallel("creating ready tenants", names, parallel, move |schema| {
        let (pool, hash, migrations) = (pool.clone(), hash.clone(), migrations.clone());
        async move {
            record(&pool, &schema, &hash).await?;
            let env = JobEnv {
                pool: &pool,
                sink: &NoSink,
                migrations: &migrations,
                actor: ACTOR,
                policy: RetryPolicy { max_attempts: 8 },
            };
            let outcome = run_create_tenant(&env, &schema).await?;
            ensure!(
                outcome == JobOutcome::Finished(TenantState::Ready),
                "{schema}: {outcome:?}"
            );
            Ok(())
        }
    })
    .await
}

/// Records every request of `names`, `parallel` at a time.
pub(crate) async fn record_all(
    pool: &PgPool,
    names: Vec<String>,
    hash: &str,
    parallel: usize,
) -> anyhow::Result<()> {
    let pool = pool.clone();
    let hash: Arc<str> = hash.into();
    for_each_parallel("recording requests", names, parallel, move |schema| {
        let (pool, hash) = (pool.clone(), hash.clone());
        async move { record(&pool, &schema, &hash).await }
    })
    .await
}

/// Pushes a `CreateTenant` job for each of `names`, one after the other,
/// as the signups would have.
pub(crate) async fn push_all<S: JobSink>(pool: &PgPool, queue: &S, names: &[String]) -> anyhow::Result<()> {
    let mut progress = Progress::new("pushing jobs", names.len());
    for (i, schema) in names.iter().enumerate() {
        push(pool, queue, schema)
            .await
            .with_context(|| format!("pushing {schema}"))?;
        progress.show(i + 1);
    }
    progress.finish(names.len());
    Ok(())
}

/// Runs `work` on every item, `parallel` tasks each taking the next item
/// as it is free, with a progress line; the first error ends it.
pub(crate) async fn for_each_parallel<F, Fut>(
    label: &str,
    items: Vec<String>,
    parallel: usize,
    work: F,
) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let total = items.len();
    let items = Arc::new(items);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel.max(1) {
        let (items, next, done, work) = (items.clone(), next.clone(), done.clone(), work.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                work(item.clone()).await.with_context(|| item.clone())?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut progress = Progress::new(label, total);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(result) => result.context("a task panicked")??,
            },
            _ = tick.tick() => progress.show(done.load(Ordering::Relaxed)),
        }
    }
    progress.finish(done.load(Ordering::Relaxed));
    Ok(())
}

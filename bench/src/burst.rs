//! The signup burst during an outage (issue 5): N requests arrive while no
//! worker runs, pushed the way `provision create-tenant` pushes them (at most
//! `MAX_QUEUE_DEPTH` waiting in Redis; the rest wait in PostgreSQL), then
//! workers start. Prints the time to drain and the namespace's Redis memory
//! before, at its peak, and after the janitor has run. Fails if any tenant
//! is not ready, or not made exactly once.

use std::time::{Duration, Instant};

use anyhow::ensure;
use provision_shared::jobs::{JobKind, JobRequest, JobSink, MAX_QUEUE_DEPTH};
use provision_shared::password::django_argon2_hash;
use provision_shared::request::note_job_id;

use crate::env::{BenchEnv, Servers};
use crate::fixtures;
use crate::progress::Progress;

/// Runs the burst on a fresh database and namespace.
pub(crate) async fn run(
    servers: &Servers,
    tenants: usize,
    workers: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let env = BenchEnv::create(servers).await?;
    let result = burst(&env, tenants, workers, concurrency).await;
    env.remove().await;
    result
}

/// Bytes the namespace's keys take in Redis (`MEMORY USAGE` of each).
async fn namespace_bytes(env: &BenchEnv) -> anyhow::Result<u64> {
    let client = redis::Client::open(env.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    let mut total = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}:*", env.name))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        for key in keys {
            let bytes: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&key)
                .query_async(&mut conn)
                .await?;
            total += bytes.unwrap_or(0);
        }
        if next == 0 {
            return Ok(total);
        }
        cursor = next;
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / 1024.0 / 1024.0)
}

async fn burst(env: &BenchEnv, tenants: usize, workers: usize, concurrency: usize) -> anyhow::Result<()> {
    let hash = django_argon2_hash("burst-password");
    let names = fixtures::names("burst", tenants);
    fixtures::record_all(&env.pool, names.clone(), &hash, 8).await?;
    let queue = env.queue().await?;
    let mut pushed = 0;
    let mut progress = Progress::new("pushing as the client does", names.len());
    for schema in &names {
        if queue.depth(JobKind::CreateTenant).await? >= MAX_QUEUE_DEPTH {
            break;
        }
        let id = queue
            .push(JobRequest::now(JobKind::CreateTenant, schema.as_str()))
            .await?;
        note_job_id(&env.pool, schema, &id).await?;
        pushed += 1;
        progress.show(pushed);
    }
    progress.finish(pushed);
    let before = namespace_bytes(env).await?;
    println!(
        "burst: {tenants} requests recorded; {pushed} jobs in Redis, {} waiting in PostgreSQL; Redis (namespace) {}",
        tenants - pushed,
        mib(before)
    );

    let started = Instant::now();
    let mut running = Vec::new();
    for _ in 0..workers {
        running.push(env.start_worker(concurrency).await?);
    }
    let mut peak = before;
    let mut progress = Progress::new("draining", tenants);
    let limit = Duration::from_secs(120) + Duration::from_millis(500) * u32::try_from(tenants)?;
    loop {
        let ready: i64 = sqlx::query_scalar("SELECT count(*) FROM provision_tenant WHERE state = 'ready'")
            .fetch_one(&env.pool)
            .await?;
        progress.show(usize::try_from(ready)?);
        peak = peak.max(namespace_bytes(env).await?);
        if usize::try_from(ready)? == tenants {
            break;
        }
        for worker in &mut running {
            worker.ensure_alive()?;
        }
        ensure!(
            started.elapsed() < limit,
            "only {ready} of {tenants} ready after {limit:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    progress.finish(tenants);
    let drained = started.elapsed();
    // The janitor removes finished jobs every 10 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = namespace_bytes(env).await?;
    for worker in running {
        worker.stop().await?;
    }
    let (clients, schemas, failed): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tenants_client),
                (SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'burst%'),
                (SELECT count(*) FROM provision_tenant WHERE state <> 'ready')",
    )
    .fetch_one(&env.pool)
    .await?;
    ensure!(
        clients == i64::try_from(tenants)? && schemas == clients && failed == 0,
        "{clients} tenants, {schemas} schemas, {failed} not ready, for {tenants} requests"
    );
    println!(
        "burst: {tenants} tenants ready (one schema each) in {:.1} s ({:.1} tenants/s) with {workers} workers × {concurrency}",
        drained.as_secs_f64(),
        tenants as f64 / drained.as_secs_f64()
    );
    println!(
        "burst: Redis memory of the namespace: before {}, peak {}, after {}",
        mib(before),
        mib(peak),
        mib(after)
    );
    Ok(())
}

//! What the dashboard's pages read beyond `shared`'s status and tenant
//! list: the overview's figures, each one bounded query (an index, a
//! bounded scan, or a few Redis round trips) so the overview stays fast
//! with tens of thousands of tenants, and all of them in flight at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use provision_queue::RedisQueue;
use provision_shared::ProvisionError;
use provision_shared::jobs::JobKind;
use provision_shared::migrate_all::{RunSummary, run_summary};
use provision_shared::migration_set::MigrationSet;
use provision_shared::state::TenantState;
use provision_shared::tenant_search::{TenantCounts, TenantFilter, tenant_counts};
use sqlx::PgPool;
use tokio::sync::Mutex;

/// A worker whose heartbeat is older than this is not counted as alive
/// (as `provision check` counts them).
pub(crate) const WORKER_HEARTBEAT_FRESH: Duration = Duration::from_secs(15);

/// The step-duration chart reads at most this many of the latest events:
/// a bounded scan, however long the history.
pub(crate) const STEP_EVENTS: i64 = 5000;

/// Failures listed on the overview (the count covers them all).
const RECENT_FAILURES: i64 = 10;

/// Something that failed in the last 24 hours and is still failed.
#[derive(Debug, Clone)]
pub(crate) struct RecentFailure {
    pub(crate) schema_name: String,
    /// `provisioning`, or `migration` (in a migrate-all run).
    pub(crate) kind: &'static str,
    /// The step that failed (provisioning) or the run (migration).
    pub(crate) at_step: String,
    pub(crate) error: String,
    pub(crate) at: DateTime<Utc>,
}

/// Median and 95th percentile of one step's duration.
#[derive(Debug, Clone)]
pub(crate) struct StepDuration {
    pub(crate) step: String,
    pub(crate) count: i64,
    pub(crate) median_ms: f64,
    pub(crate) p95_ms: f64,
}

/// One queue as Redis has it now.
#[derive(Debug, Clone)]
pub(crate) struct QueueFigures {
    pub(crate) kind: JobKind,
    /// Workers of the queue with a fresh heartbeat.
    pub(crate) workers_alive: u64,
    /// Jobs by status: waiting, scheduled, inflight, dead.
    pub(crate) depth: Vec<(&'static str, u64)>,
}

/// The part of the overview that changes from second to second: what its
/// live region redraws.
#[derive(Debug, Clone)]
pub(crate) struct LiveOverview {
    pub(crate) counts: TenantCounts,
    /// The queues, or why Redis could not say.
    pub(crate) queues: Result<Vec<QueueFigures>, String>,
    pub(crate) failures: Vec<RecentFailure>,
    /// Tenants and schema migrations failed in the last 24 hours (and not
    /// retried since): all of them, not only those listed.
    pub(crate) failures_total: i64,
    /// The migrate-all run in progress, else the latest.
    pub(crate) run: Option<RunSummary>,
}

/// Everything the overview shows.
#[derive(Debug, Clone)]
pub(crate) struct Overview {
    pub(crate) live: LiveOverview,
    /// Tenants that became ready in each of the last 24 hours, oldest
    /// first.
    pub(crate) ready_per_hour: Vec<(DateTime<Utc>, i64)>,
    pub(crate) step_durations: Vec<StepDuration>,
}

/// The live part of the overview, its queries all in flight at once.
pub(crate) async fn overview_live(pool: &PgPool, queue: &RedisQueue) -> Result<LiveOverview, ProvisionError> {
    let everyone = TenantFilter::default();
    let (counts, queues, failures, run) = tokio::join!(
        tenant_counts(pool, &everyone),
        queue_figures(queue),
        recent_failures(pool),
        current_run(pool),
    );
    let (failures, failures_total) = failures?;
    Ok(LiveOverview {
        counts: counts?,
        queues,
        failures,
        failures_total,
        run: run?,
    })
}

/// The whole overview.
pub(crate) async fn overview(pool: &PgPool, queue: &RedisQueue) -> Result<Overview, ProvisionError> {
    let (live, ready_per_hour, step_durations) = tokio::join!(
        overview_live(pool, queue),
        ready_per_hour(pool),
        step_durations(pool)
    );
    Ok(Overview {
        live: live?,
        ready_per_hour: ready_per_hour?,
        step_durations: step_durations?,
    })
}

/// Workers alive and depths of every queue, or the error that stopped
/// Redis answering (shown in place of the figures).
async fn queue_figures(queue: &RedisQueue) -> Result<Vec<QueueFigures>, String> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(WORKER_HEARTBEAT_FRESH.as_secs());
    let each = JobKind::ALL.map(|kind| async move {
        let (alive, depth) = tokio::join!(queue.workers_alive(kind, since), queue.depth_by_status(kind));
        Ok::<_, ProvisionError>(QueueFigures {
            kind,
            workers_alive: alive?,
            depth: depth?,
        })
    });
    let [a, b, c, d, e] = each;
    let (a, b, c, d, e) = tokio::join!(a, b, c, d, e);
    [a, b, c, d, e]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// Tenants whose provisioning failed in the last 24 hours, and schemas
/// whose migration failed in a run of the last 24 hours, still failed:
/// the newest few of each and how many there are. Both read an index
/// (tenants by state and time; a run's schemas by run).
async fn recent_failures(pool: &PgPool) -> Result<(Vec<RecentFailure>, i64), ProvisionError> {
    #[derive(sqlx::FromRow)]
    struct Failed {
        schema_name: String,
        /// The step (a tenant) or the run (a schema migration).
        at_step: String,
        error: Option<String>,
        at: DateTime<Utc>,
        total: i64,
    }
    let tenants: Vec<Failed> = sqlx::query_as(
        "SELECT schema_name, coalesce(failed_step, '') AS at_step, last_error AS error, updated_at AS at,
                count(*) OVER () AS total
         FROM public.provision_tenant
         WHERE state = 'failed' AND updated_at > now() - interval '24 hours'
         ORDER BY updated_at DESC, schema_name LIMIT $1",
    )
    .bind(RECENT_FAILURES)
    .fetch_all(pool)
    .await?;
    let migrations: Vec<Failed> = sqlx::query_as(
        "SELECT s.schema_name, 'migrate-all run ' || s.run_id AS at_step, s.error, s.updated_at AS at,
                count(*) OVER () AS total
         FROM public.provision_migration_run_schema s
         WHERE s.run_id IN (SELECT id FROM public.provision_migration_run
                            WHERE finished_at IS NULL OR finished_at > now() - interval '24 hours')
           AND s.state = 'failed' AND s.updated_at > now() - interval '24 hours'
         ORDER BY s.updated_at DESC, s.schema_name LIMIT $1",
    )
    .bind(RECENT_FAILURES)
    .fetch_all(pool)
    .await?;
    let total = tenants.first().map_or(0, |r| r.total) + migrations.first().map_or(0, |r| r.total);
    let as_failure = |kind: &'static str| {
        move |f: Failed| RecentFailure {
            schema_name: f.schema_name,
            kind,
            at_step: f.at_step,
            error: f.error.unwrap_or_default(),
            at: f.at,
        }
    };
    let mut failures: Vec<RecentFailure> = tenants
        .into_iter()
        .map(as_failure("provisioning"))
        .chain(migrations.into_iter().map(as_failure("migration")))
        .collect();
    failures.sort_by_key(|f| std::cmp::Reverse(f.at));
    failures.truncate(usize::try_from(RECENT_FAILURES).unwrap_or(10));
    Ok((failures, total))
}

/// The id of the migrate-all run in progress, else of the latest one.
pub(crate) async fn current_run_id(pool: &PgPool) -> Result<Option<i64>, ProvisionError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM public.provision_migration_run WHERE scope = 'all'
         ORDER BY state = 'running' DESC, id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?)
}

async fn current_run(pool: &PgPool) -> Result<Option<RunSummary>, ProvisionError> {
    match current_run_id(pool).await? {
        Some(id) => Ok(Some(run_summary(pool, id).await?)),
        None => Ok(None),
    }
}

/// Whether run `run_id` exists.
pub(crate) async fn run_exists(pool: &PgPool, run_id: i64) -> Result<bool, ProvisionError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM public.provision_migration_run WHERE id = $1)")
            .bind(run_id)
            .fetch_one(pool)
            .await?,
    )
}

/// Tenants that became ready in each of the last 24 whole hours (the
/// current one last), zeros included.
async fn ready_per_hour(pool: &PgPool) -> Result<Vec<(DateTime<Utc>, i64)>, ProvisionError> {
    let this_hour = Utc::now()
        .duration_trunc(TimeDelta::hours(1))
        .unwrap_or_else(|_| Utc::now());
    let first = this_hour - TimeDelta::hours(23);
    let rows: Vec<(DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT date_trunc('hour', ready_at), count(*) FROM public.provision_tenant
         WHERE ready_at >= $1 GROUP BY 1",
    )
    .bind(first)
    .fetch_all(pool)
    .await?;
    Ok((0..24)
        .map(|i| {
            let hour = first + TimeDelta::hours(i);
            let count = rows.iter().find(|(h, _)| *h == hour).map_or(0, |r| r.1);
            (hour, count)
        })
        .collect())
}

/// How long each provisioning step took over the latest
/// [`STEP_EVENTS`] events: the time from the tenant's event before it to
/// the step's own (which, for `register`, includes the wait in the queue).
async fn step_durations(pool: &PgPool) -> Result<Vec<StepDuration>, ProvisionError> {
    let steps: Vec<&str> = TenantState::ALL
        .iter()
        .filter_map(|s| s.next_step().map(|(step, _)| step.as_str()))
        .collect();
    let rows: Vec<(String, i64, f64, f64)> = sqlx::query_as(
        "SELECT step, count(*),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                percentile_cont(0.95) WITHIN GROUP (ORDER BY ms)
         FROM (SELECT step, to_state,
                      extract(epoch FROM at - lag(at) OVER (PARTITION BY schema_name ORDER BY id))::float8 * 1000 AS ms
               FROM public.provision_event
               WHERE id > (SELECT coalesce(max(id), 0) FROM public.provision_event) - $2) AS e
         WHERE ms IS NOT NULL AND step = ANY($1) AND to_state <> 'failed'
         GROUP BY step",
    )
    .bind(&steps)
    .bind(STEP_EVENTS)
    .fetch_all(pool)
    .await?;
    // In the order of the steps, not of the rows.
    Ok(steps
        .iter()
        .filter_map(|step| rows.iter().find(|r| r.0 == *step))
        .map(|(step, count, median_ms, p95_ms)| StepDuration {
            step: step.clone(),
            count: *count,
            median_ms: *median_ms,
            p95_ms: *p95_ms,
        })
        .collect())
}

/// The run and error of the tenant's schema if it failed in its latest
/// run: what a retry of a ready tenant re-queues.
pub(crate) async fn failed_migration(
    pool: &PgPool,
    schema: &str,
) -> Result<Option<(i64, String)>, ProvisionError> {
    Ok(sqlx::query_as(
        "SELECT s.run_id, coalesce(s.error, '') FROM public.provision_migration_run_schema s
         WHERE s.schema_name = $1 AND s.state = 'failed'
           AND s.run_id = (SELECT max(run_id) FROM public.provision_migration_run_schema WHERE schema_name = $1)",
    )
    .bind(schema)
    .fetch_optional(pool)
    .await?)
}

/// The newest stored tenant migration set, loaded again only when a newer
/// one is stored: a page costs one small query for it, not the set's SQL.
#[derive(Debug, Default)]
pub(crate) struct SetCache {
    set: Mutex<Option<MigrationSet>>,
}

impl SetCache {
    pub(crate) async fn latest(&self, pool: &PgPool) -> Result<Option<MigrationSet>, ProvisionError> {
        let version: Option<i32> =
            sqlx::query_scalar("SELECT max(version) FROM public.provision_migration_set")
                .fetch_one(pool)
                .await?;
        let Some(version) = version else {
            return Ok(None);
        };
        let mut cached = self.set.lock().await;
        if let Some(set) = cached.as_ref().filter(|s| s.version() == version) {
            return Ok(Some(set.clone()));
        }
        let set = MigrationSet::load(pool, version).await?;
        *cached = Some(set.clone());
        Ok(Some(set))
    }
}

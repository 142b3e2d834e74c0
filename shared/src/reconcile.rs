//! PostgreSQL, not Redis, knows what is owed: this finds tenants whose job
//! is not (or no longer) in the queue, so the worker can push it again. A
//! job pushed twice is harmless; a job lost would leave a tenant stuck.

use std::time::Duration;

use sqlx::PgPool;

use crate::error::ProvisionError;
use crate::locks::advisory_key;

/// Tenants to push a `CreateTenant` job for, with the id of the job noted
/// for them (`None`: never pushed), at most `limit`: those never
/// pushed (the queue was full when they were requested), and those in a
/// non-final state that have not moved for `stale_after` (their job was
/// lost: Redis emptied, say). Marks them touched, so the next pass leaves
/// them alone for another `stale_after`. One process at a time.
pub async fn tenants_to_requeue(
    pool: &PgPool,
    stale_after: Duration,
    limit: i64,
) -> Result<Vec<(String, Option<String>)>, ProvisionError> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(advisory_key("reconcile", "tenants"))
        .fetch_one(&mut *tx)
        .await?;
    if !locked || limit <= 0 {
        return Ok(Vec::new());
    }
    let names = sqlx::query_as(
        "WITH owed AS (
             SELECT schema_name FROM public.provision_tenant
             WHERE state NOT IN ('ready', 'failed')
               AND ((job_id IS NULL AND created_at < now() - interval '2 seconds')
                    OR updated_at < now() - make_interval(secs => $1))
             ORDER BY created_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)
         UPDATE public.provision_tenant t SET updated_at = now()
         FROM owed WHERE t.schema_name = owed.schema_name
         RETURNING t.schema_name, t.job_id",
    )
    .bind(stale_after.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(names)
}

/// Ready tenants whose demo data has been pending for `stale_after`: their
/// `SeedDemoData` job was lost. Marks them touched, like
/// [`tenants_to_requeue`].
pub async fn demo_data_to_requeue(
    pool: &PgPool,
    stale_after: Duration,
    limit: i64,
) -> Result<Vec<String>, ProvisionError> {
    let names = sqlx::query_scalar(
        "WITH owed AS (
             SELECT schema_name FROM public.provision_tenant
             WHERE state = 'ready' AND demo_data_state = 'pending'
               AND updated_at < now() - make_interval(secs => $1)
             LIMIT $2
             FOR UPDATE SKIP LOCKED)
         UPDATE public.provision_tenant t SET updated_at = now()
         FROM owed WHERE t.schema_name = owed.schema_name
         RETURNING t.schema_name",
    )
    .bind(stale_after.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(names)
}

//! The operator's commands that change state outside a job: `init`'s public
//! tenant, and (with the same guarded updates as the jobs) retries.

use sqlx::PgPool;

use crate::error::ProvisionError;
use crate::validate;

/// Makes sure the public tenant (schema `public`) exists with `domain` among
/// its domains, primary if it has none. Returns whether anything was added.
pub async fn ensure_public_tenant(pool: &PgPool, domain: &str) -> Result<bool, ProvisionError> {
    validate::domain(domain)?;
    let mut tx = pool.begin().await?;
    let client = sqlx::query(
        "INSERT INTO public.tenants_client
             (schema_name, name, paid_until, on_trial, is_active, trial_days, created_on)
         VALUES ('public', 'Public', DATE '9999-12-31', false, true, 0, (now() AT TIME ZONE 'UTC')::date)
         ON CONFLICT (schema_name) DO NOTHING",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT c.schema_name FROM public.tenants_domain d
         JOIN public.tenants_client c ON c.id = d.tenant_id WHERE d.domain = $1",
    )
    .bind(domain)
    .fetch_optional(&mut *tx)
    .await?;
    let domain_added = match owner.as_deref() {
        Some("public") => 0,
        Some(other) => {
            return Err(ProvisionError::conflict(
                "public_domain",
                format!("domain {domain:?} already belongs to tenant {other:?}"),
            ));
        }
        None => sqlx::query(
            "INSERT INTO public.tenants_domain (domain, tenant_id, is_primary)
             SELECT $1, c.id, NOT EXISTS (
                 SELECT 1 FROM public.tenants_domain d WHERE d.tenant_id = c.id AND d.is_primary)
             FROM public.tenants_client c WHERE c.schema_name = 'public'",
        )
        .bind(domain)
        .execute(&mut *tx)
        .await?
        .rows_affected(),
    };
    tx.commit().await?;
    Ok(client + domain_added > 0)
}

/// Sets aside a job whose payload could not be read, with the error, once
/// per job id. The payload is cut to 2,000 characters.
pub async fn record_rejected_job(
    pool: &PgPool,
    queue: &str,
    job_id: &str,
    payload: &str,
    error: &str,
    actor: &str,
) -> Result<(), ProvisionError> {
    let payload: String = payload.chars().take(2000).collect();
    sqlx::query(
        "INSERT INTO public.provision_rejected_job (queue, job_id, payload, error, actor)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (queue, job_id) DO NOTHING",
    )
    .bind(queue)
    .bind(job_id)
    .bind(payload.replace('\0', "\u{FFFD}"))
    .bind(error)
    .bind(actor)
    .execute(pool)
    .await?;
    Ok(())
}

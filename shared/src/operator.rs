//! The operator's commands that change state outside a job: `init`'s public
//! tenant, and (with the same guarded updates as the jobs) retries.

use sqlx::PgPool;

use crate::error::{ProvisionError, violated_constraint};
use crate::names::constraint;
use crate::state::TenantState;
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

/// Puts failed tenants back in the state they failed in, ready for a new
/// `CreateTenant` job: `schema_name` alone, or every failed tenant when
/// `None`. Records who asked. Returns the tenants moved, with their state.
pub async fn retry_failed(
    pool: &PgPool,
    schema_name: Option<&str>,
    actor: &str,
) -> Result<Vec<(String, TenantState)>, ProvisionError> {
    let moved: Vec<(String, String)> = sqlx::query_as(
        "WITH moved AS (
             UPDATE public.provision_tenant
             SET state = failed_from_state, failed_step = NULL, failed_from_state = NULL,
                 attempt = 0, updated_at = now()
             WHERE state = 'failed' AND ($1::text IS NULL OR schema_name = $1)
             RETURNING schema_name, state, last_error)
         INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, detail, actor)
         SELECT schema_name, 'failed', state, 'retry', 0, 'last error: ' || coalesce(last_error, 'none'), $2
         FROM moved
         RETURNING schema_name, to_state",
    )
    .bind(schema_name)
    .bind(actor)
    .fetch_all(pool)
    .await?;
    if let (Some(schema), true) = (schema_name, moved.is_empty()) {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM public.provision_tenant WHERE schema_name = $1")
                .bind(schema)
                .fetch_optional(pool)
                .await?;
        return Err(match state {
            None => ProvisionError::UnknownTenant(schema.to_owned()),
            Some(state) => ProvisionError::WrongState(format!(
                "tenant {schema:?} is {state}, not failed: nothing to retry"
            )),
        });
    }
    moved
        .into_iter()
        .map(|(schema, state)| Ok((schema, state.parse().map_err(ProvisionError::WrongState)?)))
        .collect()
}

/// What `fix-domain` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainFix {
    /// The domain was added as the primary.
    Added,
    /// The tenant had it; it is now the primary.
    MadePrimary,
    /// It was already the primary: nothing changed.
    AlreadyPrimary,
    /// The tenant is not registered yet: its request now asks for this domain.
    RequestUpdated,
}

/// Makes `domain` the primary domain of `schema_name` (the guide's
/// `fix_tenant_domain`): adds it if missing, demotes any other primary, and
/// refuses a domain owned by another tenant. Recorded in the history.
pub async fn fix_domain(
    pool: &PgPool,
    schema_name: &str,
    domain: &str,
    actor: &str,
) -> Result<DomainFix, ProvisionError> {
    validate::domain(domain)?;
    let mut tx = pool.begin().await?;
    // Read as bigint whatever the platform declared (an AutoField's
    // integer, a BigAutoField's bigint); written back the same way.
    let tenant_id: Option<i64> =
        sqlx::query_scalar("SELECT id::bigint FROM public.tenants_client WHERE schema_name = $1 FOR UPDATE")
            .bind(schema_name)
            .fetch_optional(&mut *tx)
            .await?;
    let owner: Option<(String, bool)> = sqlx::query_as(
        "SELECT c.schema_name, d.is_primary FROM public.tenants_domain d
         JOIN public.tenants_client c ON c.id = d.tenant_id WHERE d.domain = $1 FOR UPDATE OF d",
    )
    .bind(domain)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((other, _)) = owner.as_ref().filter(|(owner, _)| owner != schema_name) {
        return Err(ProvisionError::conflict(
            "domain",
            format!("domain {domain:?} belongs to tenant {other:?}; it was left as it is"),
        ));
    }
    let Some(tenant_id) = tenant_id else {
        // Not registered yet (still requested, or failed before register):
        // the register step will use the new domain.
        let updated = sqlx::query(
            "UPDATE public.provision_tenant SET domain = $2, updated_at = now()
             WHERE schema_name = $1",
        )
        .bind(schema_name)
        .bind(domain)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(ProvisionError::UnknownTenant(schema_name.to_owned()));
        }
        record_event(
            &mut tx,
            schema_name,
            "fix_domain",
            &format!("requested domain is now {domain}"),
            actor,
        )
        .await?;
        tx.commit().await?;
        return Ok(DomainFix::RequestUpdated);
    };
    let fix = match owner {
        Some((_, true)) => {
            tx.rollback().await?;
            return Ok(DomainFix::AlreadyPrimary);
        }
        Some((_, false)) => DomainFix::MadePrimary,
        None => DomainFix::Added,
    };
    let demoted: Vec<String> = sqlx::query_scalar(
        "UPDATE public.tenants_domain SET is_primary = false
         WHERE tenant_id = $1 AND is_primary RETURNING domain",
    )
    .bind(tenant_id)
    .fetch_all(&mut *tx)
    .await?;
    let upsert = sqlx::query(
        "INSERT INTO public.tenants_domain (domain, tenant_id, is_primary) VALUES ($1, $2, true)
         ON CONFLICT (domain) DO UPDATE SET is_primary = true
         WHERE tenants_domain.tenant_id = EXCLUDED.tenant_id",
    )
    .bind(domain)
    .bind(tenant_id)
    .execute(&mut *tx)
    .await;
    match upsert {
        Ok(done) if done.rows_affected() == 1 => {}
        Ok(_) => {
            return Err(ProvisionError::conflict(
                "domain",
                format!("domain {domain:?} was just taken by another tenant"),
            ));
        }
        Err(e) if violated_constraint(&e) == Some(constraint::DOMAIN_KEY) => {
            return Err(ProvisionError::conflict(
                "domain",
                format!("domain {domain:?} was just taken by another tenant"),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let mut detail = match fix {
        DomainFix::Added => format!("{domain} added as primary"),
        _ => format!("{domain} made primary"),
    };
    if !demoted.is_empty() {
        detail.push_str(&format!("; no longer primary: {}", demoted.join(", ")));
    }
    record_event(&mut tx, schema_name, "fix_domain", &detail, actor).await?;
    tx.commit().await?;
    Ok(fix)
}

/// Records an operator's action in a tenant's history; a tenant made
/// outside this project is `external` there.
pub(crate) async fn record_event(
    tx: &mut sqlx::PgConnection,
    schema_name: &str,
    step: &str,
    detail: &str,
    actor: &str,
) -> Result<(), ProvisionError> {
    insert_event(tx, schema_name, step, None, Some(detail), None, actor).await
}

/// Records a step of a tenant's lifecycle in its history, with the
/// lifecycle state it led to, and what it did or the error that stopped it.
pub(crate) async fn record_lifecycle_event(
    tx: &mut sqlx::PgConnection,
    schema_name: &str,
    step: &str,
    lifecycle_state: &str,
    outcome: Result<&str, &str>,
    actor: &str,
) -> Result<(), ProvisionError> {
    let (detail, error) = match outcome {
        Ok(detail) => (Some(detail), None),
        Err(error) => (None, Some(error)),
    };
    insert_event(tx, schema_name, step, Some(lifecycle_state), detail, error, actor).await
}

async fn insert_event(
    tx: &mut sqlx::PgConnection,
    schema_name: &str,
    step: &str,
    lifecycle_state: Option<&str>,
    detail: Option<&str>,
    error: Option<&str>,
    actor: &str,
) -> Result<(), ProvisionError> {
    sqlx::query(
        "INSERT INTO public.provision_event
             (schema_name, from_state, to_state, step, attempt, detail, error, actor, lifecycle_state)
         SELECT $1, coalesce(t.state, 'external'), coalesce(t.state, 'external'), $2, coalesce(t.attempt, 0),
                $3, $4, $5, $6
         FROM (SELECT 1) AS one LEFT JOIN public.provision_tenant t ON t.schema_name = $1",
    )
    .bind(schema_name)
    .bind(step)
    .bind(detail)
    .bind(error)
    .bind(actor)
    .bind(lifecycle_state)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

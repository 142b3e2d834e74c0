//! A tenant as asked for: the request `provision create-tenant` records
//! before it pushes the job (an outbox: a request is never only in Redis),
//! checked against the contract's rules and against what exists.

use sqlx::PgPool;

use crate::error::{InvalidInput, ProvisionError};
use crate::state::TenantState;
use crate::validate;

/// A tenant as asked for: validated, the password already hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRequest {
    /// The PostgreSQL schema, and the tenant's key.
    pub schema_name: String,
    /// The display name (any UTF-8, Greek included).
    pub tenant_name: String,
    /// The primary domain.
    pub domain: String,
    /// The admin user's email.
    pub admin_email: String,
    /// The admin password in Django's argon2 format, never plain text.
    pub admin_password_hash: String,
    /// Days of trial (`paid_until` = today + this).
    pub trial_days: i32,
    /// Whether `SeedDemoData` follows.
    pub seed_demo_data: bool,
}

impl TenantRequest {
    /// Checks every field against the contract's rules.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        validate::schema_name(&self.schema_name)?;
        validate::tenant_name(&self.tenant_name)?;
        validate::domain(&self.domain)?;
        validate::email(&self.admin_email)?;
        validate::trial_days(self.trial_days)?;
        if !self.admin_password_hash.starts_with("argon2$argon2id$")
            && !self.admin_password_hash.starts_with("pbkdf2_sha256$")
        {
            return Err(InvalidInput {
                field: "admin_password_hash",
                rule: "must be a Django argon2 or pbkdf2_sha256 hash".into(),
            });
        }
        Ok(())
    }

    /// Identifies the request by its details, all but the password (whose
    /// hash differs on every submission): the same fingerprint twice is one
    /// signup submitted twice.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::json!([
            self.schema_name,
            self.tenant_name,
            self.domain,
            self.admin_email,
            self.trial_days,
            self.seed_demo_data,
        ]);
        crate::migration_set::checksum(&canonical.to_string())
    }
}

/// What recording a request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new tenant was recorded in state `requested`.
    New,
    /// The same request was recorded before; the tenant is in this state.
    Existing(TenantState),
}

/// Refuses a request whose schema name or domain is taken. Used by
/// `--dry-run` and before recording; the register step checks again, since
/// only its unique constraints can settle a race.
pub async fn check_request_is_free(
    pool: &PgPool,
    request: &TenantRequest,
) -> Result<Option<TenantState>, ProvisionError> {
    let row: (Option<String>, Option<String>, bool, bool, Option<String>) = sqlx::query_as(
        "SELECT
             (SELECT request_fingerprint FROM public.provision_tenant WHERE schema_name = $1),
             (SELECT state FROM public.provision_tenant WHERE schema_name = $1),
             EXISTS (SELECT 1 FROM public.tenants_client WHERE schema_name = $1),
             to_regnamespace(quote_ident($1)) IS NOT NULL,
             (SELECT c.schema_name FROM public.tenants_domain d
                JOIN public.tenants_client c ON c.id = d.tenant_id WHERE d.domain = $2)",
    )
    .bind(&request.schema_name)
    .bind(&request.domain)
    .fetch_one(pool)
    .await?;
    let (fingerprint, state, client_exists, schema_exists, domain_owner) = row;
    if let (Some(fingerprint), Some(state)) = (fingerprint, state) {
        if fingerprint != request.fingerprint() {
            return Err(ProvisionError::conflict(
                "schema_name",
                format!(
                    "tenant {:?} was already requested with other details; \
                     `provision status --schema-name {}` shows them, or choose another schema name",
                    request.schema_name, request.schema_name
                ),
            ));
        }
        return Ok(Some(state.parse().map_err(ProvisionError::WrongState)?));
    }
    if client_exists {
        return Err(ProvisionError::conflict(
            "schema_name",
            format!(
                "a tenant with schema_name {:?} already exists in tenants_client (made outside this project)",
                request.schema_name
            ),
        ));
    }
    if schema_exists {
        return Err(ProvisionError::conflict(
            "schema_name",
            format!("schema {:?} already exists in the database", request.schema_name),
        ));
    }
    if let Some(owner) = domain_owner {
        return Err(ProvisionError::conflict(
            "domain",
            format!("domain {:?} already belongs to tenant {owner:?}", request.domain),
        ));
    }
    let requested_elsewhere: Option<String> = sqlx::query_scalar(
        "SELECT schema_name FROM public.provision_tenant
         WHERE domain = $1 AND schema_name <> $2 AND state <> 'failed' LIMIT 1",
    )
    .bind(&request.domain)
    .bind(&request.schema_name)
    .fetch_optional(pool)
    .await?;
    if let Some(owner) = requested_elsewhere {
        return Err(ProvisionError::conflict(
            "domain",
            format!(
                "domain {:?} is already requested by tenant {owner:?}",
                request.domain
            ),
        ));
    }
    Ok(None)
}

/// Records the request in state `requested`, or finds the same request made
/// before. A request for the same schema name with other details is a
/// conflict. `actor` is who asked (recorded in the history).
pub async fn record_request(
    pool: &PgPool,
    request: &TenantRequest,
    actor: &str,
) -> Result<Recorded, ProvisionError> {
    request.validate()?;
    if let Some(state) = check_request_is_free(pool, request).await? {
        return Ok(Recorded::Existing(state));
    }
    let inserted = sqlx::query(
        "WITH inserted AS (
             INSERT INTO public.provision_tenant
                 (schema_name, tenant_name, domain, admin_email, admin_password_hash, trial_days,
                  seed_demo_data, demo_data_state, request_fingerprint, requested_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $7 THEN 'pending' ELSE 'skipped' END, $8, $9)
             ON CONFLICT (schema_name) DO NOTHING
             RETURNING schema_name)
         INSERT INTO public.provision_event (schema_name, from_state, to_state, step, attempt, actor)
         SELECT schema_name, NULL, 'requested', 'request', 0, $9 FROM inserted",
    )
    .bind(&request.schema_name)
    .bind(&request.tenant_name)
    .bind(&request.domain)
    .bind(&request.admin_email)
    .bind(&request.admin_password_hash)
    .bind(request.trial_days)
    .bind(request.seed_demo_data)
    .bind(request.fingerprint())
    .bind(actor)
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Recorded::New);
    }
    // Another submission won the race: same details or a conflict.
    match check_request_is_free(pool, request).await? {
        Some(state) => Ok(Recorded::Existing(state)),
        None => Err(ProvisionError::Contended(format!(
            "tenant {:?} vanished while it was being recorded; try again",
            request.schema_name
        ))),
    }
}

/// Notes the id of the job that carries the tenant's provisioning.
pub async fn note_job_id(pool: &PgPool, schema_name: &str, job_id: &str) -> Result<(), ProvisionError> {
    sqlx::query("UPDATE public.provision_tenant SET job_id = $2 WHERE schema_name = $1")
        .bind(schema_name)
        .bind(job_id)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> TenantRequest {
        TenantRequest {
            schema_name: "theo".into(),
            tenant_name: "Theo Stam".into(),
            domain: "theo.newconcierge.app".into(),
            admin_email: "theo@example.com".into(),
            admin_password_hash: "argon2$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            trial_days: 30,
            seed_demo_data: true,
        }
    }

    #[test]
    fn fingerprint_ignores_the_password_hash_but_not_the_details() {
        let a = request();
        let mut b = request();
        b.admin_password_hash = "argon2$argon2id$other".into();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.domain = "other.newconcierge.app".into();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}

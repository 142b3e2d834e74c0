//! A tenant as asked for: the request `provision create-tenant` records
//! before it pushes the job (an outbox: a request is never only in Redis),
//! checked against the contract's rules and against what exists.

use sqlx::{PgConnection, PgPool};

use crate::error::{InvalidInput, ProvisionError};
use crate::jobs::{JobKind, JobRequest, JobSink};
use crate::names::sqlstate;
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
    /// Checks every field against the contract's rules, before anything
    /// is sent: the same rules `provision_request_tenant` applies again.
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
}

/// What recording a request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new tenant was recorded in state `requested`.
    New,
    /// The same request was recorded before; the tenant is in this state.
    Existing(TenantState),
}

/// Sends `request` to `provision_request_tenant`, the SQL API the platform
/// calls too, on `conn`: one set of rules and one record, whoever asks.
async fn request_tenant(
    conn: &mut PgConnection,
    request: &TenantRequest,
    actor: &str,
) -> Result<Recorded, ProvisionError> {
    let found: Result<(String, String), sqlx::Error> = sqlx::query_as(
        "SELECT state, recorded FROM public.provision_request_tenant(
             schema_name => $1, tenant_name => $2, domain => $3, admin_email => $4,
             admin_password_hash => $5, trial_days => $6, seed_demo_data => $7, requested_by => $8)",
    )
    .bind(&request.schema_name)
    .bind(&request.tenant_name)
    .bind(&request.domain)
    .bind(&request.admin_email)
    // Empty in a dry run, which makes no hash: the API takes NULL.
    .bind(Some(request.admin_password_hash.as_str()).filter(|h| !h.is_empty()))
    .bind(request.trial_days)
    .bind(request.seed_demo_data)
    .bind(actor)
    .fetch_one(&mut *conn)
    .await;
    match found {
        Ok((_, recorded)) if recorded == "new" => Ok(Recorded::New),
        Ok((state, _)) => Ok(Recorded::Existing(
            state.parse().map_err(ProvisionError::WrongState)?,
        )),
        Err(e) => Err(refusal(e)),
    }
}

/// The API's refusal as this project's error: SQLSTATE PV010 is invalid
/// input, PV011 a conflict, each naming its field (the error's column).
fn refusal(error: sqlx::Error) -> ProvisionError {
    let Some(db) = error.as_database_error() else {
        return error.into();
    };
    let code = db.code().map(|c| c.into_owned());
    let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() else {
        return error.into();
    };
    let field = field_name(pg.column().unwrap_or("request"));
    let message = pg.message();
    let rule = message
        .split_once(": ")
        .map_or(message, |(_, rule)| rule)
        .to_owned();
    match code.as_deref() {
        Some(sqlstate::REQUEST_INVALID) => ProvisionError::Invalid(InvalidInput { field, rule }),
        Some(sqlstate::REQUEST_CONFLICT) => ProvisionError::conflict(field, rule),
        _ => error.into(),
    }
}

/// The API's field names, as the static names errors carry.
fn field_name(column: &str) -> &'static str {
    [
        "schema_name",
        "tenant_name",
        "domain",
        "admin_email",
        "admin_password_hash",
        "trial_days",
        "seed_demo_data",
    ]
    .into_iter()
    .find(|f| *f == column)
    .unwrap_or("request")
}

/// Refuses a request whose schema name or domain is taken, or which breaks
/// a rule, exactly as recording it would, and records nothing: the request
/// is sent in a transaction that is rolled back (`--dry-run`). Returns the
/// state of the same request made before, if any.
pub async fn check_request_is_free(
    pool: &PgPool,
    request: &TenantRequest,
) -> Result<Option<TenantState>, ProvisionError> {
    let mut tx = pool.begin().await?;
    let recorded = request_tenant(&mut tx, request, "dry run").await;
    tx.rollback().await?;
    match recorded? {
        Recorded::New => Ok(None),
        Recorded::Existing(state) => Ok(Some(state)),
    }
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
    let mut conn = pool.acquire().await?;
    request_tenant(&mut conn, request, actor).await
}

/// The channel a new request is announced on (by the trigger of
/// `provision_tenant`, at commit): a worker pushes its job at once.
pub const REQUEST_CHANNEL: &str = "provision_tenant_requested";

/// The channel a tenant reaching `ready` or `failed` is announced on, with
/// `{"schema_name", "state"}`: what the platform's signup page waits on.
pub const STATE_CHANNEL: &str = "provision_tenant_state";

/// Notes the id of the job that carries the tenant's provisioning.
pub async fn note_job_id(pool: &PgPool, schema_name: &str, job_id: &str) -> Result<(), ProvisionError> {
    sqlx::query("UPDATE public.provision_tenant SET job_id = $2 WHERE schema_name = $1")
        .bind(schema_name)
        .bind(job_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The id of the job noted for a tenant's provisioning, if any.
pub async fn job_id_of(pool: &PgPool, schema_name: &str) -> Result<Option<String>, ProvisionError> {
    Ok(
        sqlx::query_scalar("SELECT job_id FROM public.provision_tenant WHERE schema_name = $1")
            .bind(schema_name)
            .fetch_optional(pool)
            .await?
            .flatten(),
    )
}

/// Pushes the `CreateTenant` job of a tenant whose job is owed, once
/// whoever else tries at the same time (the client that recorded it, every
/// worker woken by its announcement, the reconciler): the job's id is
/// claimed in PostgreSQL first, where `expected` is the id known before
/// (`None`: never pushed; a stale one: lost with Redis). Returns the new
/// id, or `None` when someone else claimed it. A push that fails gives the
/// claim back, so the next try comes at once.
pub async fn push_owed_job<S: JobSink>(
    pool: &PgPool,
    sink: &S,
    schema_name: &str,
    expected: Option<&str>,
) -> Result<Option<String>, ProvisionError> {
    let id = ulid::Ulid::generate().to_string();
    let claimed: Option<String> = sqlx::query_scalar(
        "UPDATE public.provision_tenant SET job_id = $2
         WHERE schema_name = $1 AND job_id IS NOT DISTINCT FROM $3 AND state NOT IN ('ready', 'failed')
         RETURNING job_id",
    )
    .bind(schema_name)
    .bind(&id)
    .bind(expected)
    .fetch_optional(pool)
    .await?;
    if claimed.is_none() {
        return Ok(None);
    }
    let mut job = JobRequest::now(JobKind::CreateTenant, schema_name);
    job.id = Some(id.clone());
    if let Err(e) = sink.push(job).await {
        sqlx::query("UPDATE public.provision_tenant SET job_id = $3 WHERE schema_name = $1 AND job_id = $2")
            .bind(schema_name)
            .bind(&id)
            .bind(expected)
            .execute(pool)
            .await?;
        return Err(e);
    }
    Ok(Some(id))
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
    fn requests_are_validated_before_they_are_sent() {
        assert!(request().validate().is_ok());
        let mut plain = request();
        plain.admin_password_hash = "secure_password_123".into();
        assert_eq!(plain.validate().unwrap_err().field, "admin_password_hash");
    }
}

//! `suspend` and `resume`: `tenants_client.is_active` off and on, with who
//! and why in the lifecycle row and the history; and the nightly pass's
//! suspension of tenants whose `paid_until` is long past.
//!
//! Both read the tenant under row locks first, and refuse what its
//! lifecycle does not allow, naming it: a tenant being provisioned or
//! deleted is not suspended, a tenant whose deletion is scheduled is made
//! active again by `cancel-delete` only.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::{Lifecycle, SYSTEM_ACTOR};
use crate::error::{InvalidInput, ProvisionError};
use crate::operator::record_lifecycle_event;

/// What `suspend` or `resume` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switched {
    /// `is_active` was switched.
    Changed,
    /// It already was as asked: nothing changed.
    AlreadyThere,
}

/// A tenant as an operator's lifecycle command finds it, its rows locked
/// for the rest of the transaction.
#[derive(Debug, Clone)]
pub(super) struct TenantFacts {
    pub(super) schema_name: String,
    /// Its name, from `tenants_client` or its request.
    pub(super) name: Option<String>,
    pub(super) is_active: Option<bool>,
    pub(super) provisioning: Option<String>,
    pub(super) row_state: Option<String>,
    pub(super) failed_step: Option<String>,
    pub(super) failed_from_state: Option<String>,
    pub(super) deletion_id: Option<i64>,
    pub(super) delete_after: Option<DateTime<Utc>>,
    pub(super) backup_path: Option<String>,
}

impl TenantFacts {
    /// Reads and locks the tenant's `tenants_client` row and lifecycle row.
    pub(super) async fn lock(tx: &mut PgConnection, schema_name: &str) -> Result<Self, ProvisionError> {
        if schema_name == "public" {
            return Err(InvalidInput {
                field: "schema_name",
                rule:
                    "the public tenant holds every tenant's shared tables: it is never suspended or deleted"
                        .into(),
            }
            .into());
        }
        let client: Option<(String, bool)> = sqlx::query_as(
            "SELECT name, is_active FROM public.tenants_client WHERE schema_name = $1 FOR UPDATE",
        )
        .bind(schema_name)
        .fetch_optional(&mut *tx)
        .await?;
        let request: Option<(String, String)> = sqlx::query_as(
            "SELECT state, tenant_name FROM public.provision_tenant WHERE schema_name = $1 FOR SHARE",
        )
        .bind(schema_name)
        .fetch_optional(&mut *tx)
        .await?;
        type Row = (
            String,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<DateTime<Utc>>,
            Option<String>,
            String,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT state, failed_step, failed_from_state, deletion_id, delete_after, backup_path, tenant_name
             FROM public.provision_lifecycle WHERE schema_name = $1 FOR UPDATE",
        )
        .bind(schema_name)
        .fetch_optional(&mut *tx)
        .await?;
        if client.is_none() && request.is_none() && row.is_none() {
            return Err(ProvisionError::UnknownTenant(schema_name.to_owned()));
        }
        let name = client
            .as_ref()
            .map(|c| c.0.clone())
            .or_else(|| request.as_ref().map(|r| r.1.clone()))
            .or_else(|| row.as_ref().map(|r| r.6.clone()));
        Ok(Self {
            schema_name: schema_name.to_owned(),
            name,
            is_active: client.map(|c| c.1),
            provisioning: request.map(|r| r.0),
            row_state: row.as_ref().map(|r| r.0.clone()),
            failed_step: row.as_ref().and_then(|r| r.1.clone()),
            failed_from_state: row.as_ref().and_then(|r| r.2.clone()),
            deletion_id: row.as_ref().and_then(|r| r.3),
            delete_after: row.as_ref().and_then(|r| r.4),
            backup_path: row.and_then(|r| r.5),
        })
    }

    /// Where the tenant stands.
    pub(super) fn lifecycle(&self) -> Lifecycle {
        Lifecycle::of(
            self.provisioning.as_deref(),
            self.row_state
                .as_deref()
                .map(|s| (s, self.failed_step.as_deref())),
            self.is_active,
        )
    }

    /// `action` refused in the tenant's lifecycle, with what to do instead.
    pub(super) fn refuse(&self, action: &str) -> ProvisionError {
        let schema = &self.schema_name;
        let lifecycle = self.lifecycle();
        let hint = match lifecycle {
            Lifecycle::Provisioning => format!(
                " (provisioning state {}): wait until it is ready",
                self.provisioning.as_deref().unwrap_or("?")
            ),
            Lifecycle::Failed => format!(": `provision retry --schema-name {schema}` first"),
            Lifecycle::DeletionScheduled => format!(
                ", due {}: `provision cancel-delete --schema-name {schema}` makes it active again",
                self.delete_after.map_or_else(|| "?".into(), |d| d.to_rfc3339())
            ),
            Lifecycle::Deleting | Lifecycle::Restoring => ": wait until its job ends".into(),
            Lifecycle::DeletionFailed | Lifecycle::RestoreFailed => format!(
                " at step {}: `provision retry --schema-name {schema}` goes on",
                self.failed_step.as_deref().unwrap_or("?")
            ),
            Lifecycle::Deleted => ": `provision restore-tenant --backup FILE` brings it back".into(),
            Lifecycle::Gone => ": the platform deleted its tenants_client row".into(),
            Lifecycle::Active | Lifecycle::Suspended => String::new(),
        };
        ProvisionError::WrongState(format!(
            "cannot {action} tenant {schema:?}: it is {lifecycle}{hint}"
        ))
    }
}

/// The lifecycle row after an operator's command: its state, who, why,
/// and the deletion it plans (`None`: none), every job column reset.
pub(super) struct RowWrite<'a> {
    pub(super) state: &'a str,
    pub(super) reason: Option<&'a str>,
    pub(super) actor: &'a str,
    /// The deletion's number, due time and whether it keeps a backup.
    pub(super) deletion: Option<(i64, DateTime<Utc>, bool)>,
}

impl RowWrite<'_> {
    /// Writes the row, the tenant's `is_active`, and the history entry.
    pub(super) async fn write(
        &self,
        tx: &mut PgConnection,
        facts: &TenantFacts,
        is_active: bool,
        step: &str,
        detail: &str,
    ) -> Result<(), ProvisionError> {
        sqlx::query("UPDATE public.tenants_client SET is_active = $2 WHERE schema_name = $1")
            .bind(&facts.schema_name)
            .bind(is_active)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO public.provision_lifecycle
                 (schema_name, state, tenant_name, reason, changed_by, deletion_id, delete_after, with_backup)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (schema_name) DO UPDATE
             SET state = EXCLUDED.state, tenant_name = EXCLUDED.tenant_name, reason = EXCLUDED.reason,
                 changed_by = EXCLUDED.changed_by, changed_at = now(), deletion_id = EXCLUDED.deletion_id,
                 delete_after = EXCLUDED.delete_after, with_backup = EXCLUDED.with_backup,
                 backup_path = NULL, backup_bytes = NULL, backup_sha256 = NULL, deleted_at = NULL,
                 restore_backup_id = NULL, failed_step = NULL, failed_from_state = NULL, last_error = NULL,
                 attempt = 0, job_id = NULL, updated_at = now()",
        )
        .bind(&facts.schema_name)
        .bind(self.state)
        .bind(facts.name.as_deref().unwrap_or(&facts.schema_name))
        .bind(self.reason)
        .bind(self.actor)
        .bind(self.deletion.map(|d| d.0))
        .bind(self.deletion.map(|d| d.1))
        .bind(self.deletion.map(|d| d.2))
        .execute(&mut *tx)
        .await?;
        record_lifecycle_event(tx, &facts.schema_name, step, self.state, Ok(detail), self.actor).await
    }
}

/// `suspend`: the tenant's domains stop being served.
pub async fn suspend(
    pool: &PgPool,
    schema_name: &str,
    reason: Option<&str>,
    actor: &str,
) -> Result<Switched, ProvisionError> {
    if let Some(r) = reason {
        crate::validate::reason(r)?;
    }
    let mut tx = pool.begin().await?;
    let facts = TenantFacts::lock(&mut tx, schema_name).await?;
    match facts.lifecycle() {
        Lifecycle::Active => {}
        Lifecycle::Suspended if facts.row_state.as_deref() == Some("suspended") => {
            return Ok(Switched::AlreadyThere);
        }
        // Switched off by the platform: recorded now, with who and why.
        Lifecycle::Suspended => {}
        _ => return Err(facts.refuse("suspend")),
    }
    let write = RowWrite {
        state: "suspended",
        reason,
        actor,
        deletion: None,
    };
    let detail = format!("suspended: {}", reason.unwrap_or("no reason given"));
    write.write(&mut tx, &facts, false, "suspend", &detail).await?;
    tx.commit().await?;
    Ok(Switched::Changed)
}

/// `resume`: served again.
pub async fn resume(pool: &PgPool, schema_name: &str, actor: &str) -> Result<Switched, ProvisionError> {
    let mut tx = pool.begin().await?;
    let facts = TenantFacts::lock(&mut tx, schema_name).await?;
    match facts.lifecycle() {
        Lifecycle::Suspended => {}
        Lifecycle::Active => return Ok(Switched::AlreadyThere),
        _ => return Err(facts.refuse("resume")),
    }
    let write = RowWrite {
        state: "active",
        reason: None,
        actor,
        deletion: None,
    };
    write
        .write(&mut tx, &facts, true, "resume", "active again")
        .await?;
    tx.commit().await?;
    Ok(Switched::Changed)
}

/// The nightly pass's optional suspension
/// (`PROVISION_SUSPEND_EXPIRED_AFTER=DAYS`): every active tenant whose
/// `paid_until` is more than `days` days before `today`, recorded as by
/// the system. Returns the tenants suspended.
pub async fn suspend_expired(
    pool: &PgPool,
    days: u32,
    today: chrono::NaiveDate,
) -> Result<Vec<String>, ProvisionError> {
    let cutoff = today - chrono::Days::new(u64::from(days));
    let expired: Vec<(String, chrono::NaiveDate)> = sqlx::query_as(
        "SELECT c.schema_name, c.paid_until FROM public.tenants_client c
         WHERE c.schema_name <> 'public' AND c.is_active AND c.paid_until < $1
           AND NOT EXISTS (SELECT 1 FROM public.provision_tenant p
                           WHERE p.schema_name = c.schema_name AND p.state <> 'ready')
           AND NOT EXISTS (SELECT 1 FROM public.provision_lifecycle l
                           WHERE l.schema_name = c.schema_name AND l.state NOT IN ('active', 'suspended'))
         ORDER BY c.schema_name",
    )
    .bind(cutoff)
    .fetch_all(pool)
    .await?;
    let mut suspended = Vec::new();
    for (schema, paid_until) in expired {
        let reason = format!("paid_until {paid_until} passed more than {days} days ago");
        match suspend(pool, &schema, Some(&reason), SYSTEM_ACTOR).await {
            Ok(Switched::Changed) => suspended.push(schema),
            Ok(Switched::AlreadyThere)
            | Err(ProvisionError::WrongState(_) | ProvisionError::UnknownTenant(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(suspended)
}

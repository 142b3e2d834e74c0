//! A tenant's life after signup: suspended and resumed, deleted behind a
//! verified backup after a grace period, and restored from that backup.
//!
//! Where a tenant stands is one rule ([`Lifecycle::of`], and the SQL
//! function `provision_lifecycle_of` that every query uses) over its
//! provisioning state, its `provision_lifecycle` row and its
//! `tenants_client` row. The row's own states and the steps between them:
//!
//! ```text
//! (no row) ─suspend─▶ suspended ─resume─▶ active
//! active | suspended ─delete-tenant─▶ deletion_scheduled ─cancel-delete─▶ active
//! deletion_scheduled ─backup─▶ backed_up ─verify_backup─▶ backup_verified
//!     ─drop_schema─▶ schema_dropped ─delete_rows─▶ deleted
//! deletion_scheduled ─drop_schema (--no-backup)─▶ schema_dropped
//! deleted ─restore-tenant─▶ restore_requested ─restore_schema─▶ schema_restored ─restore_rows─▶ active
//! a job's state ─(permanent error, or attempts used up)─▶ failed ─retry─▶ where it failed
//! ```

pub mod archive;
pub mod delete_tenant;
mod job;
pub mod restore_tenant;
pub mod schedule;
pub mod suspend;

pub use job::{LifecycleEnv, LifecycleOutcome};

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::error::{InvalidInput, ProvisionError};

/// The actor of what the nightly pass does by itself.
pub const SYSTEM_ACTOR: &str = "system";

/// Where a tenant stands, as every command, the dashboard and the
/// `provision_tenant_status` view show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Being provisioned (a state before `ready`).
    Provisioning,
    /// Provisioning failed; waits for a retry.
    Failed,
    /// Served: `tenants_client.is_active`.
    Active,
    /// Not served: `is_active` is off (by `suspend`, or by the platform).
    Suspended,
    /// Suspended, its deletion due at a date.
    DeletionScheduled,
    /// Its `DeleteTenant` job is on its way.
    Deleting,
    /// Its deletion stopped at a step, with the error; `retry` goes on.
    DeletionFailed,
    /// Deleted by this project; its backup can bring it back.
    Deleted,
    /// Its `RestoreTenant` job is on its way.
    Restoring,
    /// Its restore stopped at a step, with the error; `retry` goes on.
    RestoreFailed,
    /// Its `tenants_client` row was deleted by the platform.
    Gone,
}

impl Lifecycle {
    /// Every lifecycle, in the order a tenant meets them.
    pub const ALL: [Lifecycle; 11] = [
        Self::Provisioning,
        Self::Failed,
        Self::Active,
        Self::Suspended,
        Self::DeletionScheduled,
        Self::Deleting,
        Self::DeletionFailed,
        Self::Deleted,
        Self::Restoring,
        Self::RestoreFailed,
        Self::Gone,
    ];

    /// The name queries, links and JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Failed => "failed",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::DeletionScheduled => "deletion_scheduled",
            Self::Deleting => "deleting",
            Self::DeletionFailed => "deletion_failed",
            Self::Deleted => "deleted",
            Self::Restoring => "restoring",
            Self::RestoreFailed => "restore_failed",
            Self::Gone => "gone",
        }
    }

    /// The rule of `provision_lifecycle_of` (migrations/public/0005), for
    /// a tenant read on its own: `provisioning` is its provisioning state
    /// (`None`: made outside this project), `row` its lifecycle row's
    /// state and failed step, `is_active` its `tenants_client.is_active`
    /// (`None`: no row).
    pub fn of(
        provisioning: Option<&str>,
        row: Option<(&str, Option<&str>)>,
        is_active: Option<bool>,
    ) -> Self {
        match (provisioning, row, is_active) {
            (Some("failed"), _, _) => Self::Failed,
            (Some(p), _, _) if p != "ready" => Self::Provisioning,
            (_, Some(("deletion_scheduled", _)), _) => Self::DeletionScheduled,
            (_, Some(("backed_up" | "backup_verified" | "schema_dropped", _)), _) => Self::Deleting,
            (_, Some(("deleted", _)), _) => Self::Deleted,
            (_, Some(("restore_requested" | "schema_restored", _)), _) => Self::Restoring,
            (_, Some(("failed", Some(step))), _) if RESTORE_STEPS.contains(&step) => Self::RestoreFailed,
            (_, Some(("failed", _)), _) => Self::DeletionFailed,
            (_, _, None) => Self::Gone,
            (_, _, Some(true)) => Self::Active,
            (_, _, Some(false)) => Self::Suspended,
        }
    }
}

/// The steps of a restore (the others of a lifecycle job are a deletion's).
const RESTORE_STEPS: [&str; 2] = ["restore_schema", "restore_rows"];

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lifecycle {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| InvalidInput {
                field: "lifecycle",
                rule: format!(
                    "{s:?} is not a lifecycle; one of {}",
                    Self::ALL.map(Lifecycle::as_str).join(", ")
                ),
            })
    }
}

/// A tenant's lifecycle row, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LifecycleDetail {
    /// The row's own state (see the module's diagram).
    pub state: String,
    /// Why it was suspended or is being deleted.
    pub reason: Option<String>,
    /// Who made the last change.
    pub changed_by: String,
    /// When.
    pub changed_at: DateTime<Utc>,
    /// When its deletion is (or was) due.
    pub delete_after: Option<DateTime<Utc>>,
    /// Whether the deletion keeps a backup (`false`: `--no-backup`).
    pub with_backup: Option<bool>,
    /// The backup file, once written.
    pub backup_path: Option<String>,
    /// Its size.
    pub backup_bytes: Option<i64>,
    /// Its SHA-256, once verified.
    pub backup_sha256: Option<String>,
    /// When the tenant was deleted.
    pub deleted_at: Option<DateTime<Utc>>,
    /// The step that failed, while failed.
    pub failed_step: Option<String>,
    /// The last error of a lifecycle job.
    pub last_error: Option<String>,
}

/// The lifecycle row of `schema_name`, if it has one.
pub async fn lifecycle_detail(
    pool: &PgPool,
    schema_name: &str,
) -> Result<Option<LifecycleDetail>, ProvisionError> {
    Ok(sqlx::query_as(
        "SELECT state, reason, changed_by, changed_at, delete_after, with_backup, backup_path,
                backup_bytes, backup_sha256, deleted_at, failed_step, last_error
         FROM public.provision_lifecycle WHERE schema_name = $1",
    )
    .bind(schema_name)
    .fetch_optional(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioning_comes_first_then_the_row_then_tenants_client() {
        assert_eq!(
            Lifecycle::of(Some("failed"), None, Some(false)),
            Lifecycle::Failed
        );
        assert_eq!(
            Lifecycle::of(Some("migrated"), None, Some(false)),
            Lifecycle::Provisioning
        );
        assert_eq!(
            Lifecycle::of(Some("requested"), None, None),
            Lifecycle::Provisioning
        );
        assert_eq!(Lifecycle::of(Some("ready"), None, Some(true)), Lifecycle::Active);
        assert_eq!(Lifecycle::of(None, None, Some(false)), Lifecycle::Suspended);
        assert_eq!(Lifecycle::of(Some("ready"), None, None), Lifecycle::Gone);
        assert_eq!(
            Lifecycle::of(Some("ready"), Some(("deletion_scheduled", None)), Some(false)),
            Lifecycle::DeletionScheduled
        );
        assert_eq!(
            Lifecycle::of(None, Some(("schema_dropped", None)), Some(false)),
            Lifecycle::Deleting
        );
        assert_eq!(
            Lifecycle::of(None, Some(("deleted", None)), None),
            Lifecycle::Deleted
        );
        assert_eq!(
            Lifecycle::of(None, Some(("failed", Some("backup"))), Some(false)),
            Lifecycle::DeletionFailed
        );
        assert_eq!(
            Lifecycle::of(None, Some(("failed", Some("restore_rows"))), None),
            Lifecycle::RestoreFailed
        );
        assert_eq!(
            Lifecycle::of(None, Some(("active", None)), Some(true)),
            Lifecycle::Active
        );
        assert_eq!(
            Lifecycle::of(None, Some(("suspended", None)), Some(false)),
            Lifecycle::Suspended
        );
    }

    #[test]
    fn names_round_trip() {
        for l in Lifecycle::ALL {
            assert_eq!(l.as_str().parse::<Lifecycle>(), Ok(l));
        }
        assert_eq!("paused".parse::<Lifecycle>().unwrap_err().field, "lifecycle");
    }
}

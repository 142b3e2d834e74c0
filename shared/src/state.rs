//! The provisioning states of a tenant and the steps between them. The same
//! names are enforced by the `provision_tenant_state_valid` CHECK in
//! `migrations/public/`.

use std::fmt;
use std::str::FromStr;

/// Where a tenant's provisioning stands.
///
/// ```text
/// requested ─register─▶ registered ─create_schema─▶ schema_created ─migrate─▶ migrated
///     ─create_admin─▶ admin_created ─activate─▶ ready
/// any non-final state ─(permanent error, or attempts used up)─▶ failed ─retry─▶ the state it failed in
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantState {
    /// `provision create-tenant` recorded the request and pushed the job.
    Requested,
    /// `tenants_client` and the primary `tenants_domain` rows exist (inactive).
    Registered,
    /// The schema exists (empty).
    SchemaCreated,
    /// Every tenant migration is applied.
    Migrated,
    /// The admin user exists; the password hash is dropped from the request.
    AdminCreated,
    /// Provisioned and active. Final.
    Ready,
    /// Stopped at a step, with the error recorded, until `provision retry`.
    Failed,
}

impl TenantState {
    /// Every state, in the order a provisioning moves through them.
    pub const ALL: [TenantState; 7] = [
        Self::Requested,
        Self::Registered,
        Self::SchemaCreated,
        Self::Migrated,
        Self::AdminCreated,
        Self::Ready,
        Self::Failed,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Registered => "registered",
            Self::SchemaCreated => "schema_created",
            Self::Migrated => "migrated",
            Self::AdminCreated => "admin_created",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }

    /// Whether no job moves the tenant out of this state by itself.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Ready | Self::Failed)
    }

    /// The step that leaves this state, and the state it leads to.
    pub fn next_step(self) -> Option<(Step, TenantState)> {
        match self {
            Self::Requested => Some((Step::Register, Self::Registered)),
            Self::Registered => Some((Step::CreateSchema, Self::SchemaCreated)),
            Self::SchemaCreated => Some((Step::Migrate, Self::Migrated)),
            Self::Migrated => Some((Step::CreateAdmin, Self::AdminCreated)),
            Self::AdminCreated => Some((Step::Activate, Self::Ready)),
            Self::Ready | Self::Failed => None,
        }
    }
}

impl fmt::Display for TenantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TenantState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown state {s:?}; valid states: {}", names.join(", "))
            })
    }
}

/// A unit of provisioning work: one transaction that does its effect and
/// records its transition together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Insert `tenants_client` (inactive) and its primary domain.
    Register,
    /// `CREATE SCHEMA`.
    CreateSchema,
    /// Apply the tenant migrations.
    Migrate,
    /// Insert the admin user.
    CreateAdmin,
    /// Enqueue the demo data if asked for, mark the tenant active.
    Activate,
}

impl Step {
    /// The name stored in the history and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::CreateSchema => "create_schema",
            Self::Migrate => "migrate",
            Self::CreateAdmin => "create_admin",
            Self::Activate => "activate",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_valid_ones() {
        for state in TenantState::ALL {
            assert_eq!(state.as_str().parse::<TenantState>(), Ok(state));
        }
        let err = "done".parse::<TenantState>().unwrap_err();
        assert!(err.contains("requested") && err.contains("failed"), "{err}");
    }

    #[test]
    fn every_non_final_state_has_one_step_forward_and_the_chain_ends_ready() {
        let mut state = TenantState::Requested;
        let mut steps = 0;
        while let Some((_, next)) = state.next_step() {
            state = next;
            steps += 1;
        }
        assert_eq!(state, TenantState::Ready);
        assert_eq!(steps, 5);
        assert!(TenantState::Failed.next_step().is_none());
    }
}

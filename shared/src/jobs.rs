//! Job payloads: a wire format, independent of Rust type paths. Each carries
//! only what its step needs to find its work in PostgreSQL, never a secret.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::error::ProvisionError;

/// The kinds of job, each with its own queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// [`CreateTenant`].
    CreateTenant,
    /// [`SeedDemoData`].
    SeedDemoData,
    /// [`MigrateSchema`].
    MigrateSchema,
    /// [`DeleteTenant`].
    DeleteTenant,
    /// [`RestoreTenant`].
    RestoreTenant,
}

impl JobKind {
    /// Every kind.
    pub const ALL: [JobKind; 5] = [
        Self::CreateTenant,
        Self::SeedDemoData,
        Self::MigrateSchema,
        Self::DeleteTenant,
        Self::RestoreTenant,
    ];

    /// The stable name: part of the queue's Redis keys and of log fields.
    pub fn name(self) -> &'static str {
        match self {
            Self::CreateTenant => "create_tenant",
            Self::SeedDemoData => "seed_demo_data",
            Self::MigrateSchema => "migrate_schema",
            Self::DeleteTenant => "delete_tenant",
            Self::RestoreTenant => "restore_tenant",
        }
    }
}

/// At most this many `CreateTenant` jobs wait in Redis: the queue library
/// wedges somewhere above 8,000. Requests beyond it wait in PostgreSQL and
/// are pushed by a worker as the queue drains.
pub const MAX_QUEUE_DEPTH: u64 = 5000;

/// What every payload carries: a version, which a reader checks before it
/// trusts the rest, and the schemas it is for.
pub trait Payload {
    /// The version this code writes and reads; a payload of another one is
    /// set aside like one that does not parse.
    const VERSION: u32;

    /// The payload's own version.
    fn version(&self) -> u32;

    /// The schemas the job is for, in order.
    fn schema_names(&self) -> Vec<&str>;
}

/// Provision the tenant requested under `schema_name`; the request itself
/// (names, domain, password hash) is in `provision_tenant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Payload version.
    pub v: u32,
    /// The tenant.
    pub schema_name: String,
}

/// Seed the contract's demo data into a ready tenant, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedDemoData {
    /// Payload version.
    pub v: u32,
    /// The tenant.
    pub schema_name: String,
}

/// Carry a tenant's scheduled deletion through its steps; what to delete
/// and how is in `provision_lifecycle`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteTenant {
    /// Payload version.
    pub v: u32,
    /// The tenant.
    pub schema_name: String,
}

/// Restore a deleted tenant from the backup its lifecycle row names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreTenant {
    /// Payload version.
    pub v: u32,
    /// The tenant.
    pub schema_name: String,
}

/// Apply pending tenant migrations to schemas of a migration run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateSchema {
    /// Payload version.
    pub v: u32,
    /// The first schema.
    pub schema_name: String,
    /// The run the schemas belong to.
    pub run_id: i64,
    /// Further schemas of the same run, migrated by the same job after
    /// `schema_name`, in order: one queue round trip for many schemas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_schema_names: Vec<String>,
}

impl Payload for CreateTenant {
    const VERSION: u32 = 1;

    fn version(&self) -> u32 {
        self.v
    }

    fn schema_names(&self) -> Vec<&str> {
        vec![&self.schema_name]
    }
}

impl Payload for SeedDemoData {
    const VERSION: u32 = 1;

    fn version(&self) -> u32 {
        self.v
    }

    fn schema_names(&self) -> Vec<&str> {
        vec![&self.schema_name]
    }
}

impl Payload for DeleteTenant {
    const VERSION: u32 = 1;

    fn version(&self) -> u32 {
        self.v
    }

    fn schema_names(&self) -> Vec<&str> {
        vec![&self.schema_name]
    }
}

impl Payload for RestoreTenant {
    const VERSION: u32 = 1;

    fn version(&self) -> u32 {
        self.v
    }

    fn schema_names(&self) -> Vec<&str> {
        vec![&self.schema_name]
    }
}

impl Payload for MigrateSchema {
    /// 2: every job belongs to a run (version 1 also migrated schemas
    /// outside any run).
    const VERSION: u32 = 2;

    fn version(&self) -> u32 {
        self.v
    }

    fn schema_names(&self) -> Vec<&str> {
        std::iter::once(self.schema_name.as_str())
            .chain(self.more_schema_names.iter().map(String::as_str))
            .collect()
    }
}

/// A job to push, with when it may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    /// Which queue.
    pub kind: JobKind,
    /// The tenant it is for.
    pub schema_name: String,
    /// For [`JobKind::MigrateSchema`]: the run it belongs to (0 for the
    /// other kinds).
    pub run_id: i64,
    /// For [`JobKind::MigrateSchema`] of a run: more schemas to migrate
    /// after `schema_name`.
    pub more_schema_names: Vec<String>,
    /// Not before this many milliseconds from now (0: at once).
    pub delay_ms: u64,
    /// The job's id, when it was claimed before the push (see
    /// [`crate::request::push_owed_job`]); the queue makes one otherwise.
    pub id: Option<String>,
}

impl JobRequest {
    /// A job of `kind` for `schema_name`, to run at once.
    pub fn now(kind: JobKind, schema_name: impl Into<String>) -> Self {
        Self {
            kind,
            schema_name: schema_name.into(),
            run_id: 0,
            more_schema_names: Vec::new(),
            delay_ms: 0,
            id: None,
        }
    }

    /// A `MigrateSchema` job for `schema_name` of run `run_id`, to run at
    /// once.
    pub fn migrate(run_id: i64, schema_name: impl Into<String>) -> Self {
        Self {
            run_id,
            ..Self::now(JobKind::MigrateSchema, schema_name)
        }
    }

    /// The payload as JSON.
    pub fn payload(&self) -> serde_json::Value {
        let schema_name = self.schema_name.clone();
        match self.kind {
            JobKind::CreateTenant => serde_json::to_value(CreateTenant {
                v: CreateTenant::VERSION,
                schema_name,
            }),
            JobKind::SeedDemoData => serde_json::to_value(SeedDemoData {
                v: SeedDemoData::VERSION,
                schema_name,
            }),
            JobKind::DeleteTenant => serde_json::to_value(DeleteTenant {
                v: DeleteTenant::VERSION,
                schema_name,
            }),
            JobKind::RestoreTenant => serde_json::to_value(RestoreTenant {
                v: RestoreTenant::VERSION,
                schema_name,
            }),
            JobKind::MigrateSchema => serde_json::to_value(MigrateSchema {
                v: MigrateSchema::VERSION,
                schema_name,
                run_id: self.run_id,
                more_schema_names: self.more_schema_names.clone(),
            }),
        }
        .expect("payloads are plain structs")
    }
}

/// Where handlers push follow-up jobs (demo data after a tenant, a retry
/// later). Implemented over the real queue by the worker crate; `shared`
/// knows nothing of it.
pub trait JobSink: Send + Sync {
    /// Pushes the job; returns its id.
    fn push(&self, job: JobRequest) -> impl Future<Output = Result<String, ProvisionError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_only_the_schema_name_and_version() {
        let value = JobRequest::now(JobKind::CreateTenant, "theo").payload();
        assert_eq!(value, serde_json::json!({"v": 1, "schema_name": "theo"}));
        let parsed: CreateTenant = serde_json::from_value(value).unwrap();
        assert_eq!(parsed.schema_name, "theo");
    }

    #[test]
    fn a_migration_job_names_its_run_and_schemas() {
        let mut job = JobRequest::migrate(7, "a");
        job.more_schema_names.push("b".into());
        let value = job.payload();
        assert_eq!(
            value,
            serde_json::json!({"v": 2, "schema_name": "a", "run_id": 7, "more_schema_names": ["b"]})
        );
        let parsed: MigrateSchema = serde_json::from_value(value).unwrap();
        assert_eq!(parsed.schema_names(), ["a", "b"]);
        let without_run = serde_json::json!({"v": 1, "schema_name": "a"});
        assert!(serde_json::from_value::<MigrateSchema>(without_run).is_err());
    }
}

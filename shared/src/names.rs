//! Names the code matches on, in one place: the SQLSTATEs PostgreSQL
//! answers with, and the constraints of `migrations/` whose violation means
//! something to an operator. Matched as constants, never as message text.

/// SQLSTATE codes.
pub mod sqlstate {
    /// `undefined_table`: a table the statement names does not exist.
    pub const UNDEFINED_TABLE: &str = "42P01";
    /// `duplicate_schema`.
    pub const DUPLICATE_SCHEMA: &str = "42P06";
    /// `duplicate_database`.
    pub const DUPLICATE_DATABASE: &str = "42P04";
    /// `invalid_catalog_name`: the database does not exist.
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// `cannot_connect_now`: the server is starting or stopping.
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// `admin_shutdown`.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// `crash_shutdown`.
    pub const CRASH_SHUTDOWN: &str = "57P02";
    /// `too_many_connections`.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// The class of connection exceptions.
    pub const CONNECTION_EXCEPTION_CLASS: &str = "08";
    /// `serialization_failure`.
    pub const SERIALIZATION_FAILURE: &str = "40001";
    /// `deadlock_detected`.
    pub const DEADLOCK_DETECTED: &str = "40P01";
    /// `lock_not_available`.
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    /// `query_canceled`: a statement or lock timeout.
    pub const QUERY_CANCELED: &str = "57014";
    /// `insufficient_resources`.
    pub const INSUFFICIENT_RESOURCES: &str = "53000";
    /// `disk_full`.
    pub const DISK_FULL: &str = "53100";
    /// `out_of_memory`.
    pub const OUT_OF_MEMORY: &str = "53200";
    /// `public.provision_assert`: a guard in a script found the database not
    /// as the script expected.
    pub const GUARD_FAILED: &str = "PV001";
    /// `public.provision_assert_set`: a script was written for a tenant
    /// migration set that is no longer the one in force.
    pub const STALE_SET: &str = "PV002";
    /// `provision_request_tenant`: a value breaks a rule (the error's column
    /// names the field).
    pub const REQUEST_INVALID: &str = "PV010";
    /// `provision_request_tenant`: a value clashes with what exists.
    pub const REQUEST_CONFLICT: &str = "PV011";
}

/// Constraints of `migrations/public/` (and of the platform's tables).
pub mod constraint {
    /// `tenants_client.schema_name` is unique.
    pub const CLIENT_SCHEMA_NAME_KEY: &str = "tenants_client_schema_name_key";
    /// `tenants_domain.domain` is unique.
    pub const DOMAIN_KEY: &str = "tenants_domain_domain_key";
    /// At most one migrate-all run per cron tick.
    pub const RUN_TICK_KEY: &str = "provision_migration_run_tick_key";
    /// At most one migrate-all run in progress.
    pub const ONE_RUNNING_RUN: &str = "provision_migration_run_one_running";
}

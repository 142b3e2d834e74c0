//! The provisioning system's core, shared by `provision` and
//! `provision-worker`: job handlers, the provisioning state machine and the
//! migration runner, as plain async functions over a PostgreSQL pool. It
//! knows nothing of the queue library; tests step these functions directly.

pub mod create_tenant;
pub mod db;
pub mod demo_data;
pub mod error;
pub mod jobs;
pub mod ledger;
pub mod lifecycle;
pub mod locks;
pub mod migrate_all;
pub mod migration_set;
pub mod names;
pub mod operator;
pub mod password;
pub mod public_schema;
pub mod reconcile;
pub mod request;
pub mod requeue;
pub mod retry;
pub mod sql;
pub mod state;
pub mod status;
pub mod tenant_migration;
pub mod tenant_search;
pub mod validate;

pub use error::{InvalidInput, ProvisionError};
pub use state::{Step, TenantState};

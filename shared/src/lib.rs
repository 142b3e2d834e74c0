//! The provisioning system's core, shared by `provision` and
//! `provision-worker`: job handlers, the provisioning state machine and the
//! migration runner, as plain async functions over a PostgreSQL pool. It
//! knows nothing of the queue library; tests step these functions directly.

pub mod db;
pub mod error;
pub mod ident;
pub mod jobs;
pub mod migrate;
pub mod migrate_all;
pub mod operator;
pub mod password;
pub mod provision;
pub mod reconcile;
pub mod script;
pub mod state;
pub mod status;
pub mod validate;

pub use error::{InvalidInput, ProvisionError};
pub use state::{Step, TenantState};

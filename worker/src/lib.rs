//! The worker pool: `shared`'s job handlers wired into apalis over Redis,
//! with the queue's wire protocol from `provision-queue`.

pub mod handlers;
pub mod janitor;
pub mod listen;
pub mod maintenance;
pub mod metrics;
pub mod run;
pub mod schedule;
pub mod wake;

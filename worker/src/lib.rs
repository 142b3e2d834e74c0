//! The worker pool's wiring of `shared` into apalis over Redis. The
//! `provision` client uses [`queue::RedisQueue`] to push jobs the same way.

pub mod handlers;
pub mod maintenance;
pub mod metrics;
pub mod options;
pub mod queue;
pub mod run;
pub mod schedule;
pub mod wake;

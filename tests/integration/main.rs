//! One integration-test binary: the real `provision` and `provision-worker`
//! against real PostgreSQL and Redis. Each test has its own database and
//! Redis namespace.

#![allow(unreachable_pub)] // helpers are shared between the test modules only

mod dashboard;
mod every_tenant;
mod helpers;
mod input;
mod lifecycle;
mod migrations;
mod observability;
mod operators;
mod platform;
mod provisioning;
mod resilience;
mod servers;
mod signup;

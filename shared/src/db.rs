//! Connecting to PostgreSQL: the pool settings that matter at thousands of
//! schemas, creating a missing database, and URLs safe to print.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::error::{ProvisionError, sqlstate_of};
use crate::names::sqlstate;
use crate::sql::{Ident, Script};

/// The default `DATABASE_URL`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/concierge";
/// The default `REDIS_URL`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The default `PROVISION_NAMESPACE`.
pub const DEFAULT_NAMESPACE: &str = "concierge";
/// The default `PROVISION_BASE_DOMAIN`.
pub const DEFAULT_BASE_DOMAIN: &str = "newconcierge.app";

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A pool for `url` with at most `max_connections`.
///
/// Connections are recycled after a minute: a connection that provisions
/// many tenants slows down as its per-connection caches grow (see
/// `shared/spec/postgres-notes.md`: flat when replaced every 500 tenants,
/// about what a busy connection does in a minute), and opening one costs a
/// few milliseconds.
///
/// The server checks every second that the client is still there while it
/// runs a statement: a worker killed mid-script would otherwise leave its
/// backend running the rest of the script, steps included.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, ProvisionError> {
    Ok(pool_options(max_connections)
        .connect_with(connect_options(url)?)
        .await?)
}

/// [`connect`] without connecting until a connection is first asked for:
/// for rare work, whose idle connection would otherwise sit there catching
/// up on every other connection's catalog invalidations.
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, ProvisionError> {
    Ok(pool_options(max_connections).connect_lazy_with(connect_options(url)?))
}

fn connect_options(url: &str) -> Result<PgConnectOptions, ProvisionError> {
    let options: PgConnectOptions = url.parse()?;
    Ok(options
        .options([("client_connection_check_interval", "1000")])
        .disable_statement_logging())
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .max_lifetime(Duration::from_secs(60))
        .idle_timeout(Duration::from_secs(60))
}

/// Creates the database named in `url` if it does not exist, connecting to
/// the server's `postgres` database to do so. Safe when several processes do
/// it at once.
pub async fn create_database_if_missing(url: &str) -> Result<bool, ProvisionError> {
    let options: PgConnectOptions = url.parse()?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    match sqlx::PgConnection::connect_with(&options).await {
        Ok(conn) => {
            conn.close().await?;
            return Ok(false);
        }
        Err(e) if sqlstate_of(&e).as_deref() == Some(sqlstate::INVALID_CATALOG_NAME) => {}
        Err(e) => return Err(e.into()),
    }
    let mut script = Script::new();
    script.sql("CREATE DATABASE ").ident(&Ident::database(&name)?);
    let mut admin = sqlx::PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let created = script.finish()?.run(&mut admin).await;
    admin.close().await?;
    match created {
        Ok(_) => Ok(true),
        // Another process made it first.
        Err(f) if sqlstate_of(&f.error).as_deref() == Some(sqlstate::DUPLICATE_DATABASE) => Ok(false),
        Err(f) => Err(f.error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/concierge"),
            "postgres://app:***@db:5432/concierge"
        );
        assert_eq!(redact_url(DEFAULT_DATABASE_URL), DEFAULT_DATABASE_URL);
        assert_eq!(redact_url("redis://:pw@r:6379"), "redis://:***@r:6379");
    }
}

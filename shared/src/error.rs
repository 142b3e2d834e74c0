//! One error type for everything `shared` does, that knows whether trying
//! again can help: the worker retries transient errors only.

use std::fmt;

use crate::names::sqlstate;

/// A field of a request that broke a rule: the message names both, so the
/// operator knows what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInput {
    /// The field as the user typed it: `schema_name`, `domain`, …
    pub field: &'static str,
    /// The rule that was broken, in words.
    pub rule: String,
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.rule)
    }
}

impl std::error::Error for InvalidInput {}

/// Why a provisioning operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The input broke a rule; nothing was written.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),

    /// The request clashes with what exists (a schema name or domain owned by
    /// another tenant, a re-create with other details). Permanent.
    #[error("conflict on {field}: {message}")]
    Conflict {
        /// The field whose value is taken.
        field: &'static str,
        /// What it clashes with.
        message: String,
    },

    /// No tenant by that schema name.
    #[error("no tenant with schema_name {0:?}; `provision list` shows the tenants")]
    UnknownTenant(String),

    /// The operation does not apply to the tenant's current state (a retry of
    /// a tenant that has not failed, say). Permanent: the state must change
    /// first.
    #[error("{0}")]
    WrongState(String),

    /// Something else changed what this operation was working on while it
    /// ran (another job moved the tenant on, a run finished under it).
    /// Transient: looking again finds the new state.
    #[error("{0}")]
    Contended(String),

    /// A migration is broken, or cannot be applied here.
    #[error("migration {migration}: {message}")]
    Migration {
        /// Which: `app.name` for a tenant migration, the file for a public one.
        migration: String,
        /// What went wrong.
        message: String,
    },

    /// No tenant migration set is stored yet (a database the platform made,
    /// before `import-migrations`). Transient: a job waits for the import.
    #[error(
        "no tenant migration set is stored: run `provision import-migrations --manage-py <the platform's manage.py>` \
         (a database `provision init` made from nothing has the built-in one)"
    )]
    NoMigrationSet,

    /// The tenant migration set in force changed while a job ran.
    /// Transient: the job runs again with the new set.
    #[error("{0}")]
    StaleSet(String),

    /// The platform's Django could not be run or read (a wrong path, a wrong
    /// Python, a settings error): what it said.
    #[error("{0}")]
    Platform(String),

    /// The platform's Django could not reach its database.
    #[error("{0}")]
    PlatformUnreachable(String),

    /// A backup could not be written, read or verified (the folder is not
    /// writable, the file is not what was recorded, `pg_dump` or
    /// `pg_restore` refused): what went wrong. Permanent: an operator must
    /// fix it, then `retry`.
    #[error("{0}")]
    Backup(String),

    /// `pg_dump` or `pg_restore` could not reach the server. Transient.
    #[error("{0}")]
    BackupUnreachable(String),

    /// The job queue could not be reached or refused the job.
    #[error("queue: {0}")]
    Queue(String),

    /// PostgreSQL said no, or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl ProvisionError {
    /// A conflict on `field`.
    pub fn conflict(field: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            field,
            message: message.into(),
        }
    }

    /// Whether trying again, unchanged, cannot succeed.
    ///
    /// Database errors are transient when the server or the connection is at
    /// fault (connection lost, timeout, serialization failure, deadlock, lock
    /// timeout, server shutting down) and permanent when the statement itself
    /// is refused (a constraint, a permission, bad SQL).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Invalid(_)
            | Self::Conflict { .. }
            | Self::UnknownTenant(_)
            | Self::WrongState(_)
            | Self::Migration { .. }
            | Self::Platform(_)
            | Self::Backup(_) => true,
            Self::Queue(_)
            | Self::Contended(_)
            | Self::StaleSet(_)
            | Self::NoMigrationSet
            | Self::PlatformUnreachable(_)
            | Self::BackupUnreachable(_) => false,
            Self::Database(e) => !is_transient_db_error(e),
        }
    }

    /// Whether PostgreSQL or Redis could not be reached at all (exit code 3
    /// for the client).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Queue(_) | Self::PlatformUnreachable(_) | Self::BackupUnreachable(_) => true,
            Self::Database(e) => is_connection_error(e),
            _ => false,
        }
    }

    /// A short stable code for scripts (`--json` errors, metrics labels).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_input",
            Self::Conflict { .. } => "conflict",
            Self::UnknownTenant(_) => "unknown_tenant",
            Self::WrongState(_) => "wrong_state",
            Self::Contended(_) => "contended",
            Self::Migration { .. } => "migration",
            Self::StaleSet(_) => "stale_migration_set",
            Self::NoMigrationSet => "no_migration_set",
            Self::Platform(_) => "platform",
            Self::PlatformUnreachable(_) => "platform_unreachable",
            Self::Backup(_) => "backup",
            Self::BackupUnreachable(_) => "backup_unreachable",
            Self::Queue(_) => "redis_unreachable",
            Self::Database(e) if is_connection_error(e) => "postgres_unreachable",
            Self::Database(_) => "database",
        }
    }

    /// The field at fault, where there is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Invalid(i) => Some(i.field),
            Self::Conflict { field, .. } => Some(field),
            Self::UnknownTenant(_) => Some("schema_name"),
            _ => None,
        }
    }
}

/// The server's SQLSTATE, if PostgreSQL answered with an error (compare
/// with the constants of [`crate::names::sqlstate`]).
pub fn sqlstate_of(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// The name of the constraint a statement broke, if any: matched against the
/// names in `migrations/`, never against message text.
pub fn violated_constraint(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => sqlstate_of(e).is_some_and(|code| {
            [
                sqlstate::CANNOT_CONNECT_NOW,
                sqlstate::ADMIN_SHUTDOWN,
                sqlstate::CRASH_SHUTDOWN,
                sqlstate::TOO_MANY_CONNECTIONS,
            ]
            .contains(&code.as_str())
                || code.starts_with(sqlstate::CONNECTION_EXCEPTION_CLASS)
        }),
        _ => false,
    }
}

fn is_transient_db_error(e: &sqlx::Error) -> bool {
    if is_connection_error(e) {
        return true;
    }
    match sqlstate_of(e) {
        Some(code) => [
            sqlstate::SERIALIZATION_FAILURE,
            sqlstate::DEADLOCK_DETECTED,
            sqlstate::LOCK_NOT_AVAILABLE,
            sqlstate::QUERY_CANCELED,
            sqlstate::INSUFFICIENT_RESOURCES,
            sqlstate::DISK_FULL,
            sqlstate::OUT_OF_MEMORY,
        ]
        .contains(&code.as_str()),
        None => matches!(e, sqlx::Error::Protocol(_)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_conflict_and_migration_errors_are_permanent() {
        let invalid = ProvisionError::from(InvalidInput {
            field: "schema_name",
            rule: "x".into(),
        });
        assert!(invalid.is_permanent());
        assert!(ProvisionError::conflict("domain", "taken").is_permanent());
        assert!(
            ProvisionError::Migration {
                migration: "buildings.0002_x".into(),
                message: "b".into()
            }
            .is_permanent()
        );
        assert!(!ProvisionError::StaleSet("newer".into()).is_permanent());
    }

    #[test]
    fn lost_connections_and_queue_errors_are_transient() {
        let io = sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert!(!ProvisionError::Database(io).is_permanent());
        assert!(!ProvisionError::Database(sqlx::Error::PoolTimedOut).is_permanent());
        assert!(!ProvisionError::Queue("down".into()).is_permanent());
        assert!(!ProvisionError::Contended("moved on".into()).is_permanent());
        assert!(ProvisionError::WrongState("not failed".into()).is_permanent());
    }
}

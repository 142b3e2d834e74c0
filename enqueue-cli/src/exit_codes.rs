//! The contract's exit codes, in one place, and the error that carries one.

use std::process::ExitCode;

use provision_shared::ProvisionError;
use provision_shared::db::redact_url;
use provision_shared::error::sqlstate_of;
use provision_shared::names::sqlstate;

/// Done.
pub(crate) const SUCCESS: u8 = 0;
/// The operation's outcome is a failure: a check failed, a waited-on job
/// failed, a refused retry.
pub(crate) const FAILURE: u8 = 1;
/// Invalid usage or input; nothing was written or enqueued.
pub(crate) const INVALID: u8 = 2;
/// PostgreSQL or Redis could not be reached.
pub(crate) const UNREACHABLE: u8 = 3;

/// An error on its way out of `provision`: the exit code, a stable code for
/// scripts, the message, and the field at fault.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) exit: u8,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) field: Option<&'static str>,
}

impl CliError {
    pub(crate) fn new(exit: u8, code: &str, message: impl Into<String>) -> Self {
        Self {
            exit,
            code: code.to_owned(),
            message: message.into(),
            field: None,
        }
    }

    /// Invalid input in `field`.
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            ..Self::new(INVALID, "invalid_input", message)
        }
    }

    /// From an error of `shared`, saying which server could not be reached
    /// (its URL without a password) when that is the cause.
    pub(crate) fn from_provision(error: ProvisionError, database_url: &str, redis_url: &str) -> Self {
        let exit = if error.is_unreachable() {
            UNREACHABLE
        } else {
            match error {
                ProvisionError::Invalid(_)
                | ProvisionError::Conflict { .. }
                | ProvisionError::UnknownTenant(_)
                | ProvisionError::Platform(_) => INVALID,
                _ => FAILURE,
            }
        };
        let message = match &error {
            ProvisionError::Queue(e) => format!(
                "Redis at {} could not be reached: {e}; is it running? (`provision check` tells more)",
                redact_url(redis_url)
            ),
            e if e.is_unreachable() => format!(
                "PostgreSQL at {} could not be reached: {e}; is it running? (`provision check` tells more)",
                redact_url(database_url)
            ),
            ProvisionError::Database(e) if sqlstate_of(e).as_deref() == Some(sqlstate::UNDEFINED_TABLE) => {
                format!(
                    "the database at {} has no provisioning tables yet: run `provision init` (or start provision-worker) first",
                    redact_url(database_url)
                )
            }
            ProvisionError::Database(e)
                if sqlstate_of(e).as_deref() == Some(sqlstate::INVALID_CATALOG_NAME) =>
            {
                format!(
                    "the database at {} does not exist: run `provision init` (or start provision-worker) first",
                    redact_url(database_url)
                )
            }
            e => e.to_string(),
        };
        Self {
            exit,
            code: error.code().to_owned(),
            message,
            field: error.field(),
        }
    }

    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

//! Several statements sent to PostgreSQL as one message (the simple query
//! protocol): a provisioning step, a whole provisioning, or one schema's
//! migration then costs one round trip instead of one per statement.
//!
//! The simple protocol has no bind parameters, so values go in as quoted
//! literals, made by [`literal`] and nowhere else; identifiers by
//! [`crate::ident::quote_ident`]. Scripts hold their own `BEGIN`/`COMMIT`:
//! when a statement fails, the server skips the rest of the message, what
//! committed before it stays, and [`run`] rolls back the open transaction.

use futures::TryStreamExt;
use sqlx::PgConnection;
use sqlx::postgres::PgRow;

use crate::error::InvalidInput;
use crate::ident::trusted_sql;

/// SQLSTATE of `public.provision_assert` (migration 0003): a guard in a
/// script found the database not as the script expected.
pub const GUARD_FAILED: &str = "PV001";

/// `value` as an SQL string literal: `it's` → `'it''s'`. A backslash makes
/// it an `E''` literal with the backslash doubled, so the result means the
/// same whatever `standard_conforming_strings` says. NUL, which no
/// PostgreSQL text can hold and which would end the message early, is
/// refused.
pub fn literal(value: &str) -> Result<String, InvalidInput> {
    if value.contains('\0') {
        return Err(InvalidInput {
            field: "value",
            rule: "must not contain the NUL character".into(),
        });
    }
    let backslash = value.contains('\\');
    let mut quoted = String::with_capacity(value.len() + 3);
    if backslash {
        quoted.push('E');
    }
    quoted.push('\'');
    for c in value.chars() {
        match c {
            '\'' => quoted.push_str("''"),
            '\\' => quoted.push_str("\\\\"),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    Ok(quoted)
}

/// A script that failed part-way: the rows its statements returned before
/// the error, and the error.
#[derive(Debug)]
pub struct ScriptFailure {
    /// Rows returned before the failing statement.
    pub rows: Vec<PgRow>,
    /// What the server (or the connection) said.
    pub error: sqlx::Error,
}

/// Sends `sql` as one message and returns every row its statements
/// returned, in order. On an error, rolls back the transaction the failing
/// statement was in (statements committed before it stay committed).
pub async fn run(conn: &mut PgConnection, sql: String) -> Result<Vec<PgRow>, ScriptFailure> {
    let mut rows = Vec::new();
    let error = {
        let mut stream = sqlx::raw_sql(trusted_sql(sql)).fetch(&mut *conn);
        loop {
            match stream.try_next().await {
                Ok(Some(row)) => rows.push(row),
                Ok(None) => return Ok(rows),
                Err(error) => break error,
            }
        }
    };
    // The server left the session in the failed transaction: end it. If the
    // connection itself is gone, this fails too, and the pool's check
    // before its next use discards it.
    let _ = sqlx::raw_sql(trusted_sql("ROLLBACK")).execute(&mut *conn).await;
    Err(ScriptFailure { rows, error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_quotes_and_escape_backslashes() {
        assert_eq!(literal("theo").unwrap(), "'theo'");
        assert_eq!(literal("it's").unwrap(), "'it''s'");
        assert_eq!(literal("Κτίριο").unwrap(), "'Κτίριο'");
        assert_eq!(literal(r"a\'b").unwrap(), r"E'a\\''b'");
        assert!(literal("a\0b").is_err());
    }
}

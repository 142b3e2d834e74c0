//! SQL identifiers and lock keys. Schema names are validated before they get
//! here; quoting them anyway means a bug elsewhere cannot become injection.

use sha2::{Digest, Sha256};

/// `name` as a quoted SQL identifier: `theo` → `"theo"`, doubling any `"`.
pub fn quote_ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// A stable 64-bit key for `pg_advisory_lock` from a purpose and a name, so
/// locks of different purposes on the same tenant never collide. Computed
/// here, not by `hashtext`, so it is an integer the caller can reason about.
pub fn advisory_key(purpose: &str, name: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"provision:")
        .chain_update(purpose.as_bytes())
        .chain_update(b":")
        .chain_update(name.as_bytes())
        .finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// SQL text for one schema: `template` is a constant in which every
/// `{schema}` becomes the schema's quoted identifier. With
/// [`trusted_sql`], the only places where SQL text is built at run time;
/// values always go in as bind parameters.
pub fn schema_sql(template: &'static str, schema: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(template.replace("{schema}", &quote_ident(schema)))
}

/// SQL text this project wrote itself (migration files, built-in
/// statements joined together), marked as audited for sqlx.
pub fn trusted_sql(sql: impl Into<String>) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(quote_ident("theo"), "\"theo\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn keys_differ_by_purpose_and_name() {
        assert_ne!(advisory_key("tenant", "theo"), advisory_key("migrate", "theo"));
        assert_ne!(advisory_key("tenant", "theo"), advisory_key("tenant", "theo2"));
        assert_eq!(advisory_key("tenant", "theo"), advisory_key("tenant", "theo"));
    }
}

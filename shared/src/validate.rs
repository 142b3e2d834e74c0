//! The rules of the contract for every value a request carries. Each check
//! returns an [`InvalidInput`] naming the field and the rule, so bad input is
//! refused before anything is written or enqueued.

use crate::error::InvalidInput;

/// Longest tenant name, in characters.
pub const TENANT_NAME_MAX_CHARS: usize = 100;
/// Longest trial, in days.
pub const TRIAL_DAYS_MAX: i32 = 3650;

fn invalid(field: &'static str, rule: impl Into<String>) -> InvalidInput {
    InvalidInput {
        field,
        rule: rule.into(),
    }
}

/// A PostgreSQL schema name this project may create: 1 to 63 characters of
/// `a-z`, `0-9` and `_`, starting with a letter; not `public`,
/// `information_schema`, nor starting with `pg_`.
pub fn schema_name(value: &str) -> Result<(), InvalidInput> {
    const FIELD: &str = "schema_name";
    const RULE: &str = "must be 1 to 63 characters of a-z, 0-9 and _, starting with a letter";
    if value.is_empty() || value.len() > 63 {
        return Err(invalid(
            FIELD,
            format!("{RULE} (got {} characters)", value.chars().count()),
        ));
    }
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !first_ok
        || !value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(invalid(FIELD, RULE));
    }
    if value == "public" || value == "information_schema" {
        return Err(invalid(FIELD, format!("{value:?} is reserved by PostgreSQL")));
    }
    if value.starts_with("pg_") {
        return Err(invalid(FIELD, "must not start with pg_ (reserved by PostgreSQL)"));
    }
    Ok(())
}

/// The schema of a tenant that may exist already, made by the platform:
/// django-tenants' own rule (1 to 63 characters of letters, digits and `_`,
/// not starting with a digit nor with `pg_`), wider than [`schema_name`]'s
/// for the tenants this project makes. `public` is the public tenant.
pub fn existing_schema_name(value: &str) -> Result<(), InvalidInput> {
    let first_ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if value.is_empty()
        || value.len() > 63
        || !first_ok
        || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || value.starts_with("pg_")
    {
        return Err(invalid(
            "schema_name",
            "must be a schema django-tenants accepts: 1 to 63 letters, digits and _, not starting with a digit or pg_",
        ));
    }
    Ok(())
}

/// A lower-case DNS name with at least two labels: labels of 1 to 63
/// characters of `a-z`, `0-9` and `-`, not starting or ending with `-`; 253
/// characters at most; the last label not all digits.
pub fn domain(value: &str) -> Result<(), InvalidInput> {
    dns_name(value).map_err(|rule| invalid("domain", rule))
}

fn dns_name(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 253 {
        return Err("must be a DNS name of 1 to 253 characters".into());
    }
    let labels: Vec<&str> = value.split('.').collect();
    if labels.len() < 2 {
        return Err(format!(
            "{value:?} must have at least two labels, like theo.newconcierge.app"
        ));
    }
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return Err("each label (between dots) must be 1 to 63 characters".into());
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err("must be lower case: only a-z, 0-9, - and dots".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label must not start or end with -".into());
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("the last label must not be all digits".into());
    }
    Ok(())
}

/// An email address: `local@domain`, the local part 1 to 64 printable ASCII
/// characters without spaces, quotes, `@`, `,`, `;`, `<`, `>` or `\`, the
/// domain a DNS name (any case), 254 characters in all at most.
pub fn email(value: &str) -> Result<(), InvalidInput> {
    const FIELD: &str = "admin_email";
    if value.len() > 254 {
        return Err(invalid(FIELD, "must be at most 254 characters"));
    }
    let Some((local, domain)) = value.rsplit_once('@') else {
        return Err(invalid(FIELD, "must look like name@example.com"));
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .chars()
            .all(|c| c.is_ascii_graphic() && !"\"'@,;<>\\()[]:".contains(c))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    if !local_ok {
        return Err(invalid(
            FIELD,
            "the part before @ must be 1 to 64 letters, digits or .!#$%&*+-/=?^_`{|}~ (no spaces or quotes)",
        ));
    }
    dns_name(&domain.to_ascii_lowercase()).map_err(|rule| invalid(FIELD, format!("the part after @ {rule}")))
}

/// A tenant's display name: any UTF-8 text (Greek included) of 1 to 100
/// characters, not only white space, without control characters (PostgreSQL
/// cannot store NUL, and the others only hide what a name says).
pub fn tenant_name(value: &str) -> Result<(), InvalidInput> {
    const FIELD: &str = "tenant_name";
    let count = value.chars().count();
    if value.trim().is_empty() {
        return Err(invalid(FIELD, "must not be empty"));
    }
    if count > TENANT_NAME_MAX_CHARS {
        return Err(invalid(
            FIELD,
            format!("must be at most {TENANT_NAME_MAX_CHARS} characters (got {count})"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(FIELD, "must not contain control characters"));
    }
    Ok(())
}

/// Why a tenant is suspended or deleted: 1 to 500 characters of any
/// language, without control characters.
pub fn reason(value: &str) -> Result<(), InvalidInput> {
    const FIELD: &str = "reason";
    let count = value.chars().count();
    if value.trim().is_empty() {
        return Err(invalid(FIELD, "must not be empty when given"));
    }
    if count > 500 {
        return Err(invalid(
            FIELD,
            format!("must be at most 500 characters (got {count})"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(FIELD, "must not contain control characters"));
    }
    Ok(())
}

/// Days of trial: 0 (no trial) to 3650.
pub fn trial_days(value: i32) -> Result<(), InvalidInput> {
    if (0..=TRIAL_DAYS_MAX).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            "trial_days",
            format!("must be between 0 and {TRIAL_DAYS_MAX}"),
        ))
    }
}

/// An admin password given by the operator: 8 to 1024 characters.
pub fn admin_password(value: &str) -> Result<(), InvalidInput> {
    let count = value.chars().count();
    if !(8..=1024).contains(&count) {
        return Err(invalid("admin_password", "must be 8 to 1024 characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_follow_the_contract() {
        for good in ["theo", "a", "t_1", &"a".repeat(63)] {
            assert!(schema_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Theo",
            "public",
            "information_schema",
            "pg_x",
            "1abc",
            "_a",
            "theo; DROP SCHEMA public",
            "thé",
            &"a".repeat(64),
        ] {
            let err = schema_name(bad).unwrap_err();
            assert_eq!(err.field, "schema_name", "{bad}");
        }
    }

    #[test]
    fn existing_schemas_follow_django_tenants_rule() {
        for good in ["theo", "Legacy", "_x", "public", "a1"] {
            assert!(existing_schema_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1a", "pg_x", "a-b", "a b", "thé", "a\"b", &"a".repeat(64)] {
            assert!(existing_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domains_are_lower_case_dns_names() {
        for good in ["theo.newconcierge.app", "a-b.c1.io", "x.localhost"] {
            assert!(domain(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "theo",
            "Theo.app",
            "-a.app",
            "a-.app",
            "a..app",
            "a.app.",
            "a_b.app",
            "1.2.3.4",
            "a'.app",
            &format!("{}.app", "a".repeat(64)),
        ] {
            assert!(domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_are_checked() {
        for good in ["theo@example.com", "a.b+c@Example.COM"] {
            assert!(email(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "theo",
            "@x.com",
            "a@",
            "a b@x.com",
            "a@x",
            "a\"@x.com",
            "a..b@x.com",
        ] {
            assert_eq!(email(bad).unwrap_err().field, "admin_email", "{bad}");
        }
    }

    #[test]
    fn tenant_names_take_greek_and_refuse_empty_long_or_control() {
        assert!(tenant_name("Κτίριο Demo — Θεό").is_ok());
        assert!(tenant_name(&"Θ".repeat(100)).is_ok());
        assert!(tenant_name(&"Θ".repeat(101)).is_err());
        assert!(tenant_name("  ").is_err());
        assert!(tenant_name("a\0b").is_err());
    }
}

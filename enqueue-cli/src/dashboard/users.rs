//! The dashboard's users file (`PROVISION_DASHBOARD_USERS`): one user a
//! line, `name:role:hash`, where the role is `viewer` (reads) or `operator`
//! (reads and acts) and the hash an argon2 PHC string, as
//! `provision dashboard --hash-password` prints it (a Django `argon2$…`
//! hash works too). `#` starts a comment line. The file is read once, at
//! start: the dashboard holds no password, only these hashes.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordVerifier};

/// What a signed-in user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Reads every page; has no action.
    Viewer,
    /// Reads, and acts: retries, domain fixes, migrate-all.
    Operator,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line of the file.
#[derive(Debug, Clone)]
struct User {
    role: Role,
    /// The PHC string, checked to parse when the file was read.
    hash: String,
}

/// A users file that could not be used: which line, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UsersFileError {
    /// From 1; 0 for the file as a whole.
    pub(crate) line: usize,
    pub(crate) message: String,
}

impl fmt::Display for UsersFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

/// The users, by name.
#[derive(Debug, Clone)]
pub(crate) struct Users {
    by_name: HashMap<String, User>,
    /// Verified for an unknown name, so that a wrong name costs what a
    /// wrong password does and the answer's delay does not tell them apart.
    decoy_hash: String,
}

/// A user name: what a person types, short and plain.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@'))
}

impl Users {
    /// Reads and checks the file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, UsersFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| UsersFileError {
            line: 0,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::parse(&text)
    }

    /// Checks every line: a name of letters, digits and `_ . - @` (up to
    /// 64), a role, an argon2 hash; no name twice; at least one user.
    pub(crate) fn parse(text: &str) -> Result<Self, UsersFileError> {
        let mut by_name = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let fail = |message: String| UsersFileError { line, message };
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(fail("expected name:role:hash".into()));
            };
            if !valid_name(name) {
                return Err(fail(format!(
                    "user name {name:?}: 1 to 64 of letters, digits and _ . - @"
                )));
            }
            let role = match role {
                "viewer" => Role::Viewer,
                "operator" => Role::Operator,
                other => {
                    return Err(fail(format!("role {other:?} of {name}: viewer or operator")));
                }
            };
            let hash = hash
                .strip_prefix("argon2")
                .filter(|h| h.starts_with('$'))
                .unwrap_or(hash);
            match PasswordHash::new(hash) {
                Ok(parsed) if parsed.algorithm.as_str().starts_with("argon2") => {}
                _ => {
                    return Err(fail(format!(
                        "the hash of {name} is not an argon2 hash ($argon2id$v=19$...); \
                         `provision dashboard --hash-password` makes one"
                    )));
                }
            }
            let user = User {
                role,
                hash: hash.to_owned(),
            };
            if by_name.insert(name.to_owned(), user).is_some() {
                return Err(fail(format!("user {name} is named twice")));
            }
        }
        if by_name.is_empty() {
            return Err(UsersFileError {
                line: 0,
                message: "the file names no user: nobody could sign in".into(),
            });
        }
        let decoy_hash = provision_shared::password::django_argon2_hash("not anyone's password")
            .trim_start_matches("argon2")
            .to_owned();
        Ok(Self { by_name, decoy_hash })
    }

    /// The role of `name` if `password` is theirs. Slow on purpose (an
    /// argon2 verification), whether the name exists or not: run it off
    /// the request threads.
    pub(crate) fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let (hash, role) = match self.by_name.get(name) {
            Some(user) => (user.hash.as_str(), Some(user.role)),
            None => (self.decoy_hash.as_str(), None),
        };
        let parsed = PasswordHash::new(hash).ok()?;
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        role.filter(|_| matches)
    }

    /// How many users the file names.
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }
}

/// The line `--hash-password` prints for `password`: an argon2id PHC
/// string with the cost the admin passwords use.
pub(crate) fn hash_password(password: &str) -> String {
    provision_shared::password::django_argon2_hash(password)
        .trim_start_matches("argon2")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_users_verifies_their_passwords_and_roles() {
        let text = format!(
            "# who may use the dashboard\n\nalice:operator:{}\nbob:viewer:argon2{}\n",
            hash_password("alice-password"),
            hash_password("bob-password"),
        );
        let users = Users::parse(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users.verify("alice", "alice-password"), Some(Role::Operator));
        assert_eq!(users.verify("bob", "bob-password"), Some(Role::Viewer));
        assert_eq!(users.verify("alice", "bob-password"), None);
        assert_eq!(users.verify("carol", "alice-password"), None);
    }

    #[test]
    fn a_bad_line_is_named_with_its_fault() {
        let hash = hash_password("x-password");
        let err = |text: &str| Users::parse(text).unwrap_err();
        assert_eq!(err("").line, 0);
        assert_eq!(err("# nobody\n").line, 0);
        assert_eq!(err("alice\n").line, 1);
        let e = err(&format!("alice:admin:{hash}"));
        assert!(e.message.contains("viewer or operator"), "{e}");
        let e = err("\nalice:viewer:plain-text-password");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("not an argon2 hash"), "{e}");
        let e = err(&format!("alice:viewer:{hash}\nalice:operator:{hash}"));
        assert_eq!((e.line, e.message.contains("twice")), (2, true));
        assert_eq!(err(&format!("al ice:viewer:{hash}")).line, 1);
    }
}

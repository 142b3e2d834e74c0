//! Advisory lock keys. Computed here, not by `hashtext`, so each is an
//! integer the caller can reason about, and locks of different purposes on
//! the same tenant never collide.

use sha2::{Digest, Sha256};

/// A stable 64-bit key for `pg_advisory_lock` from a purpose and a name.
pub fn advisory_key(purpose: &str, name: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"provision:")
        .chain_update(purpose.as_bytes())
        .chain_update(b":")
        .chain_update(name.as_bytes())
        .finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_purpose_and_name() {
        assert_ne!(advisory_key("tenant", "theo"), advisory_key("migrate", "theo"));
        assert_ne!(advisory_key("tenant", "theo"), advisory_key("tenant", "theo2"));
        assert_eq!(advisory_key("tenant", "theo"), advisory_key("tenant", "theo"));
    }
}

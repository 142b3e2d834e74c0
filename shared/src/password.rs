//! Admin passwords: hashed by the client before anything is enqueued, in the
//! format Django's `Argon2PasswordHasher` reads, so the plain text never
//! reaches Redis, a log or PostgreSQL.

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Argon2id cost: OWASP's first recommendation (19 MiB, 2 passes, 1 lane).
/// Django reads the parameters from the hash itself, and re-hashes with its
/// own on the first login.
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id passes.
pub const ARGON2_TIME_COST: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_PARALLELISM: u32 = 1;

/// Length of a generated password.
pub const GENERATED_PASSWORD_LEN: usize = 20;

/// `argon2$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`: Django's format.
pub fn django_argon2_hash(password: &str) -> String {
    let mut salt_bytes = [0u8; 16];
    getrandom::fill(&mut salt_bytes).expect("the operating system's random source failed");
    let salt = SaltString::encode_b64(&salt_bytes).expect("16 bytes is a valid salt");
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_TIME_COST, ARGON2_PARALLELISM, None)
        .expect("constant argon2 parameters are valid");
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let phc = hasher
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 accepts any password with valid parameters");
    // Django prefixes the PHC string (which starts with `$argon2id`) with the
    // name of its hasher.
    format!("argon2{phc}")
}

/// Whether `password` matches a hash made by [`django_argon2_hash`].
pub fn verify_django_argon2(password: &str, django_hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let Some(phc) = django_hash.strip_prefix("argon2") else {
        return false;
    };
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A strong random password: 20 characters from an alphabet without look-alikes
/// (about 115 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut out = String::with_capacity(GENERATED_PASSWORD_LEN);
    let mut buf = [0u8; 64];
    while out.len() < GENERATED_PASSWORD_LEN {
        getrandom::fill(&mut buf).expect("the operating system's random source failed");
        // Rejection sampling keeps every character equally likely.
        let limit = 256 - 256 % ALPHABET.len();
        for b in buf {
            if (b as usize) < limit && out.len() < GENERATED_PASSWORD_LEN {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_in_djangos_argon2_format_and_verifies() {
        let hash = django_argon2_hash("secure_password_123");
        assert!(
            hash.starts_with("argon2$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert_eq!(hash.split('$').count(), 6);
        assert!(hash.len() <= 128, "fits Django's password column");
        assert!(!hash.contains("secure_password_123"));
        assert!(verify_django_argon2("secure_password_123", &hash));
        assert!(!verify_django_argon2("wrong", &hash));
    }

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), GENERATED_PASSWORD_LEN);
        assert_ne!(a, b);
    }
}

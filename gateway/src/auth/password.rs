//! Stored credentials: bearer tokens as SHA-256, basic-auth passwords as PBKDF2.
//!
//! * **Bearer tokens** are long random strings (high entropy), so one SHA-256 suffices:
//!   nobody can search 2^128 tokens, and the config file then holds nothing that
//!   opens the API. The presented token is hashed and compared with every stored hash
//!   in constant time ([`ct_eq`]; no early exit on the first match either).
//! * **Passwords** are chosen by people (low entropy): a fast hash would be brute-forced
//!   offline from a leaked config. PBKDF2-HMAC-SHA256 (NIST SP 800-132, RFC 8018) is the
//!   slow, salted scheme `ring` already implements — no new crate — and its stored form is
//!   Django's, `pbkdf2_sha256$<iterations>$<salt>$<base64 of the 32-byte hash>`, so
//!   existing tools make hashes. bcrypt/argon2 would add a crate for the same guarantee.
//!   PBKDF2's cost per attempt is also a cost per *request*: the gateway verifies on the
//!   blocking pool, at most [`MAX_PARALLEL_HASHES`] at once, and remembers recent
//!   successes ([`super::Policy`]), as Caddy's basic auth does.

use base64::Engine;
use std::num::NonZeroU32;

/// Fewest PBKDF2 iterations accepted in a stored hash.
pub const MIN_ITERATIONS: u32 = 10_000;
/// Most PBKDF2 iterations accepted (each request pays them once, until cached).
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// PBKDF2 verifications running at once on the blocking pool (the rest wait).
pub const MAX_PARALLEL_HASHES: usize = 2;

/// Equality of two byte strings in time that depends only on their lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= std::hint::black_box(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// `64 hex digits` → the 32 bytes (either case).
pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A parsed `pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pbkdf2Hash {
    pub iterations: NonZeroU32,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

impl Pbkdf2Hash {
    pub fn parse(s: &str) -> Result<Pbkdf2Hash, String> {
        let form = "must be \"pbkdf2_sha256$<iterations>$<salt>$<base64 hash>\" (see docs/gateway.md, \"Authorization\")";
        let mut it = s.split('$');
        let (Some("pbkdf2_sha256"), Some(iter), Some(salt), Some(hash), None) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return Err(form.into());
        };
        let iterations: u32 = iter
            .parse()
            .map_err(|_| format!("{iter:?} is not an iteration count; {form}"))?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!(
                "{iterations} iterations: use {MIN_ITERATIONS} to {MAX_ITERATIONS}"
            ));
        }
        if salt.len() < 8 {
            return Err("the salt must have at least 8 characters".into());
        }
        let hash = base64::engine::general_purpose::STANDARD
            .decode(hash)
            .map_err(|_| format!("the hash is not standard base64; {form}"))?;
        if hash.len() != 32 {
            return Err(format!(
                "the hash has {} bytes; PBKDF2-HMAC-SHA256 gives 32",
                hash.len()
            ));
        }
        Ok(Pbkdf2Hash {
            iterations: NonZeroU32::new(iterations).expect("checked above"),
            salt: salt.as_bytes().to_vec(),
            hash,
        })
    }

    /// Whether `password` hashes to this (constant time in the comparison: `ring`).
    pub fn verify(&self, password: &[u8]) -> bool {
        ring::pbkdf2::verify(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password,
            &self.hash,
        )
        .is_ok()
    }

    /// Hash `password` the same way (tests and the documentation's examples).
    pub fn derive(iterations: u32, salt: &str, password: &[u8]) -> String {
        let mut out = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations).expect("iterations > 0"),
            salt.as_bytes(),
            password,
            &mut out,
        );
        format!(
            "pbkdf2_sha256${iterations}${salt}${}",
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_compares_whole_strings() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn sha256_hex() {
        // printf %s password | sha256sum
        let h =
            parse_sha256_hex("5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8")
                .unwrap();
        assert_eq!(h, sha256(b"password"));
        assert!(
            parse_sha256_hex("5E884898DA28047151D0E56F8DC6292773603D0D6AABBDD62A11EF721D1542D8")
                .is_some()
        );
        assert!(parse_sha256_hex("password").is_none());
        assert!(parse_sha256_hex(&"g".repeat(64)).is_none());
        assert!(parse_sha256_hex(&"é".repeat(32)).is_none());
    }

    #[test]
    fn pbkdf2_matches_django_and_python() {
        // python3 -c 'import hashlib,base64;print(base64.b64encode(hashlib.pbkdf2_hmac("sha256",b"secret",b"saltsalt",10000)).decode())'
        let h = Pbkdf2Hash::derive(10_000, "saltsalt", b"secret");
        assert_eq!(
            h,
            "pbkdf2_sha256$10000$saltsalt$Ud43QyQpfkrBrm7iUov0KEpocQ1H1A65JKeSZBcZ+HQ="
        );
        let p = Pbkdf2Hash::parse(&h).unwrap();
        assert!(p.verify(b"secret"));
        assert!(!p.verify(b"Secret"));
        assert!(!p.verify(b"secret "));
        for bad in [
            "secret",
            "pbkdf2_sha256$10$saltsalt$AAAA",
            "pbkdf2_sha256$x$saltsalt$AAAA",
            "pbkdf2_sha256$10000$salt$AAAA",
            "pbkdf2_sha256$10000$saltsalt$AAAA",
            "pbkdf2_sha1$10000$saltsalt$AAAA",
            "pbkdf2_sha256$10000$saltsalt$!!$x",
        ] {
            assert!(Pbkdf2Hash::parse(bad).is_err(), "{bad}");
        }
    }
}

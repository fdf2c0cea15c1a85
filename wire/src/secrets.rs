//! Secrets in the `narun-secrets` KV bucket, byte-compatible with the Go narun.
//!
//! An operator stores a secret with `narunctl secret set NAME VALUE`; an app spec refers to it
//! with `env: [{name: DB_PASSWORD, valueFromSecret: NAME}]`; narund decrypts it when it starts
//! an instance and puts the plaintext into the app's environment only (never on disk, never in
//! a log).
//!
//! # Format (Go `internal/crypto/crypto.go`)
//!
//! * AES-256-GCM with a fresh random 12-byte nonce per write.
//! * The **secret name is the additional authenticated data**: a ciphertext copied to another
//!   key does not decrypt, so secrets cannot be swapped behind the operator's back.
//! * The master key is the standard base64 (with padding) of exactly 32 random bytes, given
//!   inline or in a file (whitespace around it is ignored). Create one with
//!   `head -c 32 /dev/urandom | base64 > /etc/narun/master.key`.
//! * The KV value is the JSON [`StoredSecret`]:
//!   `{"name","ciphertext","nonce","description"?,"created_at","updated_at"}` where the byte
//!   fields are standard base64 (Go's `[]byte`) and the times RFC 3339 with nanoseconds.
//!
//! ```
//! use narun_wire::secrets::MasterKey;
//!
//! let key = MasterKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
//! let stored = key.seal("db-password", b"hunter2", Some("prod DB"), None).unwrap();
//! assert_eq!(key.open(&stored).unwrap(), b"hunter2");
//! // Renaming the secret (another AAD) makes it undecryptable.
//! let mut moved = stored.clone();
//! moved.name = "other".into();
//! assert!(key.open(&moved).is_err());
//! ```

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Length of the AES-256 master key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of the GCM nonce in bytes (Go: `gcm.NonceSize()`).
pub const NONCE_LEN: usize = 12;
/// How to create a master key, quoted in error messages.
const KEY_HINT: &str = "create one with `head -c 32 /dev/urandom | base64`";

/// Why a secret could not be sealed, opened or a key loaded. Messages never contain key
/// material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the master key must be standard base64 of exactly 32 bytes: {problem} ({KEY_HINT})")]
    InvalidKey { problem: String },
    #[error("cannot read the master key file {}: {source} ({KEY_HINT} and point the master key file setting at it)", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "secret '{name}' cannot be decrypted: the master key is not the one it was written with, \
         or the stored value was modified (tampered ciphertext or copied to another name); \
         check the master key or set the secret again"
    )]
    Decrypt { name: String },
    #[error("secret '{name}' is malformed: {problem}; set it again with `narunctl secret set`")]
    Malformed { name: String, problem: String },
    #[error("invalid secret name {name:?}: {problem}")]
    InvalidName { name: String, problem: String },
    #[error("encrypting secret '{name}' failed: {problem}")]
    Encrypt { name: String, problem: String },
}

/// The AES-256 key that encrypts every secret of a fleet. `Debug` never shows it.
#[derive(Clone)]
pub struct MasterKey([u8; KEY_LEN]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl Drop for MasterKey {
    // The crate's only unsafe code: a volatile write the compiler cannot elide.
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // Best effort: do not leave the key in freed memory.
        for b in self.0.iter_mut() {
            // SAFETY: a valid, aligned, exclusive reference to a byte of self.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl MasterKey {
    /// Parse the standard base64 form (surrounding whitespace is ignored, as Go trims the
    /// key file). Anything that does not decode to exactly 32 bytes is rejected.
    pub fn from_base64(s: &str) -> Result<MasterKey, SecretError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SecretError::InvalidKey {
                problem: "it is empty".into(),
            });
        }
        let bytes = STANDARD.decode(s).map_err(|e| SecretError::InvalidKey {
            problem: format!("not base64 ({e})"),
        })?;
        let len = bytes.len();
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| SecretError::InvalidKey {
            problem: format!("it decodes to {len} bytes"),
        })?;
        Ok(MasterKey(key))
    }

    /// Read the key from a file holding its base64 form (Go's `-master-key-path`).
    pub fn load(path: impl AsRef<Path>) -> Result<MasterKey, SecretError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::KeyFile {
            path: path.to_path_buf(),
            source,
        })?;
        MasterKey::from_base64(&text).map_err(|e| match e {
            SecretError::InvalidKey { problem } => SecretError::InvalidKey {
                problem: format!("{}: {problem}", path.display()),
            },
            other => other,
        })
    }

    /// A new random key (from the OS random source).
    pub fn generate() -> MasterKey {
        MasterKey(Aes256Gcm::generate_key(&mut OsRng).into())
    }

    /// The standard base64 form, as stored in a key file.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.0).into())
    }

    /// Encrypt `plaintext` as secret `name` with a fresh random nonce.
    ///
    /// `existing` is the secret currently stored under `name`, if any: its `created_at` is
    /// kept (and its description, unless a new one is given), `updated_at` becomes now.
    pub fn seal(
        &self,
        name: &str,
        plaintext: &[u8],
        description: Option<&str>,
        existing: Option<&StoredSecret>,
    ) -> Result<StoredSecret, SecretError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        self.seal_with_nonce(name, plaintext, description, existing, nonce.into())
    }

    fn seal_with_nonce(
        &self,
        name: &str,
        plaintext: &[u8],
        description: Option<&str>,
        existing: Option<&StoredSecret>,
        nonce: [u8; NONCE_LEN],
    ) -> Result<StoredSecret, SecretError> {
        validate_name(name)?;
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|e| SecretError::Encrypt {
                name: name.into(),
                problem: e.to_string(),
            })?;
        let now = crate::events::now_rfc3339();
        let existing = existing.filter(|e| e.name == name);
        Ok(StoredSecret {
            name: name.into(),
            ciphertext,
            nonce: nonce.to_vec(),
            description: description
                .map(str::to_string)
                .or_else(|| existing.map(|e| e.description.clone()))
                .unwrap_or_default(),
            created_at: existing
                .map(|e| e.created_at.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| now.clone()),
            updated_at: now,
        })
    }

    /// Decrypt a stored secret. Fails with [`SecretError::Decrypt`] for a wrong key, a
    /// modified ciphertext or nonce, or a secret stored under another name than it was
    /// sealed with.
    pub fn open(&self, secret: &StoredSecret) -> Result<Vec<u8>, SecretError> {
        if secret.nonce.len() != NONCE_LEN {
            return Err(SecretError::Malformed {
                name: secret.name.clone(),
                problem: format!(
                    "the nonce is {} bytes, expected {NONCE_LEN}",
                    secret.nonce.len()
                ),
            });
        }
        self.cipher()
            .decrypt(
                Nonce::from_slice(&secret.nonce),
                Payload {
                    msg: &secret.ciphertext,
                    aad: secret.name.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Decrypt {
                name: secret.name.clone(),
            })
    }
}

/// A secret name must be usable as a KV key: `[A-Za-z0-9_=/.-]`, not starting or ending
/// with `.`.
pub fn validate_name(name: &str) -> Result<(), SecretError> {
    let bad = |problem: &str| {
        Err(SecretError::InvalidName {
            name: name.into(),
            problem: problem.into(),
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.starts_with('.') || name.ends_with('.') {
        return bad("it must not start or end with '.'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c))
    {
        return bad("only letters, digits and - _ = . / are allowed (it is a KV key)");
    }
    Ok(())
}

/// The JSON value of a key in `narun-secrets` (Go `StoredSecret`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// The secret's name (= KV key, = AAD).
    pub name: String,
    /// AES-GCM output: encrypted bytes followed by the 16-byte tag.
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
    /// The 12-byte nonce.
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    /// Free text for operators (`omitempty` in Go).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// RFC 3339 (nanoseconds), kept across updates.
    #[serde(default)]
    pub created_at: String,
    /// RFC 3339 (nanoseconds) of the last write.
    #[serde(default)]
    pub updated_at: String,
}

impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSecret")
            .field("name", &self.name)
            .field("ciphertext_len", &self.ciphertext.len())
            .field("description", &self.description)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

impl StoredSecret {
    /// Parse a KV value. `key` names the secret in the error.
    pub fn from_json(key: &str, value: &[u8]) -> Result<StoredSecret, SecretError> {
        serde_json::from_slice(value).map_err(|e| SecretError::Malformed {
            name: key.into(),
            problem: format!("not a StoredSecret JSON value ({e})"),
        })
    }

    /// The KV value.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a StoredSecret always serializes")
    }
}

/// Go's `[]byte` JSON encoding: standard base64 with padding; `null` is empty.
mod b64 {
    use super::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(Vec::new()),
            Some(s) => STANDARD.decode(s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    /// Produced by Python `cryptography` 48:
    /// `AESGCM(bytes(range(32))).encrypt(bytes(range(100, 112)), b"s3cr3t value", b"db-password")`.
    const KAT_NONCE: &str = "ZGVmZ2hpamtsbW5v";
    const KAT_CT: &str = "Oyi9FEqdduhfDiqNQJqgeXCBJK94fT4kQF+TaQ==";

    fn kat() -> StoredSecret {
        StoredSecret::from_json(
            "db-password",
            format!(
                r#"{{"name":"db-password","ciphertext":"{KAT_CT}","nonce":"{KAT_NONCE}",
                   "created_at":"2025-01-02T03:04:05.123456789Z","updated_at":"2025-01-02T03:04:05.123456789Z"}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn known_answer_from_python_cryptography() {
        let key = MasterKey::from_base64(KEY).unwrap();
        assert_eq!(key.open(&kat()).unwrap(), b"s3cr3t value");
        let nonce: [u8; 12] = STANDARD.decode(KAT_NONCE).unwrap().try_into().unwrap();
        let sealed = key
            .seal_with_nonce("db-password", b"s3cr3t value", None, None, nonce)
            .unwrap();
        assert_eq!(STANDARD.encode(&sealed.ciphertext), KAT_CT);
    }

    #[test]
    fn json_shape_is_gos() {
        let key = MasterKey::from_base64(KEY).unwrap();
        let s = key.seal("a", b"x", None, None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["ciphertext", "created_at", "name", "nonce", "updated_at"]
        );
        assert_eq!(
            STANDARD.decode(v["nonce"].as_str().unwrap()).unwrap().len(),
            12
        );
        let d = key.seal("a", b"x", Some("about a"), None).unwrap();
        assert!(
            String::from_utf8(d.to_json())
                .unwrap()
                .contains(r#""description":"about a""#)
        );
    }

    #[test]
    fn update_keeps_created_at_and_uses_a_new_nonce() {
        let key = MasterKey::from_base64(KEY).unwrap();
        let first = key.seal("s", b"one", Some("d"), None).unwrap();
        let mut old = first.clone();
        old.created_at = "2020-01-01T00:00:00Z".into();
        let second = key.seal("s", b"two", None, Some(&old)).unwrap();
        assert_eq!(second.created_at, "2020-01-01T00:00:00Z");
        assert_eq!(second.description, "d");
        assert_ne!(second.nonce, first.nonce);
        assert_eq!(key.open(&second).unwrap(), b"two");
    }

    #[test]
    fn tampering_wrong_name_and_wrong_key_fail_clearly() {
        let key = MasterKey::from_base64(KEY).unwrap();
        let mut t = kat();
        t.ciphertext[0] ^= 1;
        let e = key.open(&t).unwrap_err().to_string();
        assert!(e.contains("'db-password' cannot be decrypted"), "{e}");

        let mut renamed = kat();
        renamed.name = "other".into();
        assert!(matches!(
            key.open(&renamed),
            Err(SecretError::Decrypt { name }) if name == "other"
        ));

        let other = MasterKey::generate();
        assert!(matches!(
            other.open(&kat()),
            Err(SecretError::Decrypt { .. })
        ));

        let mut short = kat();
        short.nonce.pop();
        assert!(matches!(
            key.open(&short),
            Err(SecretError::Malformed { .. })
        ));
    }

    #[test]
    fn key_parsing() {
        assert!(MasterKey::from_base64(&format!("  {KEY}\n")).is_ok());
        let e = MasterKey::from_base64("AAEC").unwrap_err().to_string();
        assert!(e.contains("decodes to 3 bytes"), "{e}");
        assert!(MasterKey::from_base64("not base64!").is_err());
        assert!(MasterKey::from_base64("").is_err());
        let g = MasterKey::generate();
        assert_eq!(MasterKey::from_base64(&g.to_base64()).unwrap().0, g.0);
        assert_eq!(format!("{g:?}"), "MasterKey(<redacted>)");

        let dir = std::env::temp_dir().join(format!("narun-key-{}", std::process::id()));
        std::fs::write(&dir, format!("{KEY}\n")).unwrap();
        assert!(MasterKey::load(&dir).is_ok());
        std::fs::remove_file(&dir).unwrap();
        let e = MasterKey::load(&dir).unwrap_err().to_string();
        assert!(e.contains("cannot read the master key file"), "{e}");
    }

    #[test]
    fn names_are_kv_keys() {
        assert!(validate_name("db-password").is_ok());
        assert!(validate_name("a/b_c=d.e").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("has space").is_err());
        assert!(validate_name(".x").is_err());
    }
}

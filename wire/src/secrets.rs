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
//!   `{"name","ciphertext","nonce","description"?,"apps"?,"created_at","updated_at"}` where
//!   the byte fields are standard base64 (Go's `[]byte`) and the times RFC 3339 with
//!   nanoseconds.
//!
//! # App scope (narun addition)
//!
//! A secret names the apps that may use it ([`Scope`], `narunctl secret set NAME --app A`):
//! the JSON field `"apps": ["a","b"]`, or `["*"]` for any app (`--any-app`). The scope is
//! **authenticated**: when it is present, the additional data is not the bare name but
//! [`Scope::associated_data`] = `narun-secret-scope-v1 NUL name NUL app NUL app …` (apps
//! sorted and deduplicated). Whoever can write the KV bucket but has no master key can
//! therefore neither widen, narrow nor remove the scope: the rewritten entry no longer
//! decrypts ([`SecretError::Decrypt`]). Such an AAD never equals a bare secret name (a name
//! cannot contain NUL), so a scoped ciphertext cannot pass as an unscoped one either.
//!
//! An entry without `apps` is [`Scope::Unscoped`]: exactly the Go format (AAD = name), as
//! written by the Go CLI or an older narunctl. It keeps decrypting, but
//! [`MasterKey::open_for_app`] hands it out only when the caller allows unscoped secrets
//! (narund's `[secrets] allow_unscoped`). A Go node-runner cannot decrypt a scoped secret (it
//! uses AAD = name): it fails the start instead of running with a wrong value.
//!
//! ```
//! use narun_wire::secrets::{MasterKey, Scope};
//!
//! let key = MasterKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
//! let scope = Scope::apps(["billing"]).unwrap();
//! let stored = key.seal_scoped("db-password", b"hunter2", Some("prod DB"), None, &scope).unwrap();
//! assert_eq!(key.open_for_app("db-password", &stored, "billing", false).unwrap(), b"hunter2");
//! // Another app is refused, and so is a scope rewritten without the key.
//! assert!(key.open_for_app("db-password", &stored, "web", false).is_err());
//! let mut widened = stored.clone();
//! widened.apps.push("web".into());
//! assert!(key.open(&widened).is_err());
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
use std::collections::BTreeSet;
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
         or the stored value was modified (tampered ciphertext or app scope, or copied to another \
         name); check the master key or set the secret again"
    )]
    Decrypt { name: String },
    #[error("secret '{name}' is malformed: {problem}; set it again with `narunctl secret set`")]
    Malformed { name: String, problem: String },
    #[error("invalid secret name {name:?}: {problem}")]
    InvalidName { name: String, problem: String },
    #[error("encrypting secret '{name}' failed: {problem}")]
    Encrypt { name: String, problem: String },
    #[error(
        "secret '{name}' may not be used by app '{app}': it is scoped to {scope}; to allow it, set \
         it again naming every app that may use it: `narunctl secret set {name} {flags}--app {app}`"
    )]
    NotInScope {
        name: String,
        app: String,
        /// The scope as [`Scope`]'s `Display` shows it.
        scope: String,
        /// `--app X ` for every app already in the scope.
        flags: String,
    },
    #[error(
        "secret '{name}' is unscoped (written by the Go CLI or an older narunctl, it names no \
         apps that may use it) and this node does not accept unscoped secrets; scope it with \
         `narunctl secret set {name} --app {app}`, or accept unscoped secrets on this node with \
         `[secrets] allow_unscoped = true` in narund.toml"
    )]
    Unscoped { name: String, app: String },
    #[error("invalid app scope: {problem}")]
    InvalidScope { problem: String },
    #[error(
        "the KV key '{key}' holds the secret '{name}' (copied to another key?); set '{key}' again \
         with `narunctl secret set`"
    )]
    WrongKey { key: String, name: String },
}

/// The `apps` entry of a secret any app may use.
pub const ANY_APP: &str = "*";
/// The first part of the additional authenticated data of a scoped secret.
const SCOPE_AAD_PREFIX: &[u8] = b"narun-secret-scope-v1";

/// Which apps may use a secret; authenticated with the master key (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// No `apps` field: the Go format (AAD = name). Used only where the caller allows it.
    Unscoped,
    /// `"apps": ["*"]`: every app (`narunctl secret set --any-app`).
    AnyApp,
    /// `"apps": [...]`: only these apps (never empty).
    Apps(BTreeSet<String>),
}

impl Scope {
    /// A scope of the given app names: at least one, each `^[A-Za-z0-9_-]+$` (an app name).
    pub fn apps<I, S>(apps: I) -> Result<Scope, SecretError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut set = BTreeSet::new();
        for app in apps {
            let app = app.into();
            if !crate::micro::valid_name(&app) {
                return Err(SecretError::InvalidScope {
                    problem: format!(
                        "{app:?} is not an app name (an app spec's name matches ^[A-Za-z0-9_-]+$)"
                    ),
                });
            }
            set.insert(app);
        }
        if set.is_empty() {
            return Err(SecretError::InvalidScope {
                problem: "no apps: name at least one (--app APP), or allow every app (--any-app)"
                    .into(),
            });
        }
        Ok(Scope::Apps(set))
    }

    /// The scope of a stored `apps` list. An empty list is [`Scope::Unscoped`]; `*` must be
    /// alone.
    fn from_stored(list: &[String]) -> Result<Scope, SecretError> {
        if list.is_empty() {
            return Ok(Scope::Unscoped);
        }
        if list.iter().any(|a| a == ANY_APP) {
            return if list.iter().all(|a| a == ANY_APP) {
                Ok(Scope::AnyApp)
            } else {
                Err(SecretError::InvalidScope {
                    problem: "'*' (any app) cannot be combined with app names".into(),
                })
            };
        }
        Scope::apps(list.iter().cloned())
    }

    /// The `apps` field: empty for [`Scope::Unscoped`].
    fn to_stored(&self) -> Vec<String> {
        match self {
            Scope::Unscoped => Vec::new(),
            Scope::AnyApp => vec![ANY_APP.into()],
            Scope::Apps(a) => a.iter().cloned().collect(),
        }
    }

    /// Whether `app` may use a secret of this scope. An unscoped secret allows every app (the
    /// caller decides whether unscoped secrets are used at all).
    pub fn allows(&self, app: &str) -> bool {
        match self {
            Scope::Unscoped | Scope::AnyApp => true,
            Scope::Apps(a) => a.contains(app),
        }
    }

    /// The AEAD additional data of secret `name` with this scope: the bare name when
    /// unscoped (Go), else `narun-secret-scope-v1 NUL name NUL app (NUL app)*`.
    pub fn associated_data(&self, name: &str) -> Vec<u8> {
        let apps = self.to_stored();
        if apps.is_empty() {
            return name.as_bytes().to_vec();
        }
        let mut aad = SCOPE_AAD_PREFIX.to_vec();
        for part in std::iter::once(name).chain(apps.iter().map(String::as_str)) {
            aad.push(0);
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Unscoped => f.write_str("no apps (unscoped)"),
            Scope::AnyApp => f.write_str("any app"),
            Scope::Apps(a) => {
                let list: Vec<&str> = a.iter().map(String::as_str).collect();
                write!(
                    f,
                    "app{} {}",
                    if a.len() == 1 { "" } else { "s" },
                    list.join(", ")
                )
            }
        }
    }
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

    /// Encrypt `plaintext` as the **unscoped** secret `name` (the Go format, see
    /// [`Scope::Unscoped`]) with a fresh random nonce.
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
        self.seal_scoped(name, plaintext, description, existing, &Scope::Unscoped)
    }

    /// Encrypt `plaintext` as secret `name` usable by the apps of `scope` (authenticated as
    /// additional data), with a fresh random nonce. `existing` as for [`MasterKey::seal`];
    /// its scope is replaced by `scope`.
    pub fn seal_scoped(
        &self,
        name: &str,
        plaintext: &[u8],
        description: Option<&str>,
        existing: Option<&StoredSecret>,
        scope: &Scope,
    ) -> Result<StoredSecret, SecretError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        self.seal_with_nonce(name, plaintext, description, existing, scope, nonce.into())
    }

    fn seal_with_nonce(
        &self,
        name: &str,
        plaintext: &[u8],
        description: Option<&str>,
        existing: Option<&StoredSecret>,
        scope: &Scope,
        nonce: [u8; NONCE_LEN],
    ) -> Result<StoredSecret, SecretError> {
        validate_name(name)?;
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &scope.associated_data(name),
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
            apps: scope.to_stored(),
            created_at: existing
                .map(|e| e.created_at.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| now.clone()),
            updated_at: now,
        })
    }

    /// Decrypt a stored secret, whatever its scope (see [`MasterKey::open_for_app`] for the
    /// check an app start needs). Fails with [`SecretError::Decrypt`] for a wrong key, a
    /// modified ciphertext, nonce or scope, or a secret stored under another name than it
    /// was sealed with.
    pub fn open(&self, secret: &StoredSecret) -> Result<Vec<u8>, SecretError> {
        let scope = secret.scope()?;
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
                    aad: &scope.associated_data(&secret.name),
                },
            )
            .map_err(|_| SecretError::Decrypt {
                name: secret.name.clone(),
            })
    }

    /// Decrypt the secret read from KV key `key` for app `app`, as narund does at a start:
    ///
    /// * the secret must have been sealed under the name `key` ([`SecretError::WrongKey`]);
    /// * an unscoped secret is refused unless `allow_unscoped` ([`SecretError::Unscoped`]),
    ///   before anything is decrypted;
    /// * the ciphertext and its scope must authenticate ([`SecretError::Decrypt`]);
    /// * the scope must include `app` ([`SecretError::NotInScope`]).
    pub fn open_for_app(
        &self,
        key: &str,
        secret: &StoredSecret,
        app: &str,
        allow_unscoped: bool,
    ) -> Result<Vec<u8>, SecretError> {
        if secret.name != key {
            return Err(SecretError::WrongKey {
                key: key.into(),
                name: secret.name.clone(),
            });
        }
        let scope = secret.scope()?;
        if scope == Scope::Unscoped && !allow_unscoped {
            return Err(SecretError::Unscoped {
                name: key.into(),
                app: app.into(),
            });
        }
        let plain = self.open(secret)?;
        if !scope.allows(app) {
            let flags = match &scope {
                Scope::Apps(a) => a.iter().map(|a| format!("--app {a} ")).collect(),
                _ => String::new(),
            };
            return Err(SecretError::NotInScope {
                name: key.into(),
                app: app.into(),
                scope: scope.to_string(),
                flags,
            });
        }
        Ok(plain)
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
    /// The apps that may use it (narun addition; `["*"]`: any app; absent: unscoped, the Go
    /// format). Authenticated: see [`Scope`]. Read it through [`StoredSecret::scope`].
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_is_empty"
    )]
    pub apps: Vec<String>,
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
            .field("apps", &self.apps)
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

    /// The apps that may use it, as stored (authenticated only by a successful
    /// [`MasterKey::open`]). A malformed list is [`SecretError::Malformed`].
    pub fn scope(&self) -> Result<Scope, SecretError> {
        Scope::from_stored(&self.apps).map_err(|e| SecretError::Malformed {
            name: self.name.clone(),
            problem: format!("its app scope is invalid ({e})"),
        })
    }
}

/// `null` (or absent) is an empty list.
fn null_is_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
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
            .seal_with_nonce(
                "db-password",
                b"s3cr3t value",
                None,
                None,
                &Scope::Unscoped,
                nonce,
            )
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

    fn scoped(apps: &[&str]) -> (MasterKey, StoredSecret) {
        let key = MasterKey::from_base64(KEY).unwrap();
        let s = key
            .seal_scoped(
                "db",
                b"pw",
                None,
                None,
                &Scope::apps(apps.iter().copied()).unwrap(),
            )
            .unwrap();
        (key, s)
    }

    #[test]
    fn scoped_secrets_open_only_for_their_apps() {
        let (key, s) = scoped(&["web", "billing", "web"]);
        assert_eq!(s.apps, ["billing", "web"], "sorted and deduplicated");
        assert_eq!(s.scope().unwrap().to_string(), "apps billing, web");
        for app in ["billing", "web"] {
            for allow_unscoped in [false, true] {
                assert_eq!(
                    key.open_for_app("db", &s, app, allow_unscoped).unwrap(),
                    b"pw"
                );
            }
        }
        let e = key.open_for_app("db", &s, "shop", true).unwrap_err();
        assert!(matches!(&e, SecretError::NotInScope { app, .. } if app == "shop"));
        let e = e.to_string();
        assert!(
            e.contains(
                "secret 'db' may not be used by app 'shop': it is scoped to apps billing, web"
            ) && e.contains("`narunctl secret set db --app billing --app web --app shop`"),
            "{e}"
        );
        let (key, one) = scoped(&["web"]);
        let e = key
            .open_for_app("db", &one, "shop", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("scoped to app web;") && e.contains("set db --app web --app shop`"),
            "{e}"
        );
        // A prefix or case variant of an app name is another app.
        assert!(key.open_for_app("db", &one, "we", false).is_err());
        assert!(key.open_for_app("db", &one, "Web", false).is_err());
    }

    #[test]
    fn any_app_needs_no_opt_in() {
        let key = MasterKey::from_base64(KEY).unwrap();
        let s = key
            .seal_scoped("db", b"pw", None, None, &Scope::AnyApp)
            .unwrap();
        assert_eq!(s.apps, ["*"]);
        assert_eq!(s.scope().unwrap().to_string(), "any app");
        assert_eq!(
            key.open_for_app("db", &s, "anything", false).unwrap(),
            b"pw"
        );
    }

    #[test]
    fn unscoped_go_secrets_need_the_opt_in() {
        let key = MasterKey::from_base64(KEY).unwrap();
        let go = kat();
        assert_eq!(go.scope().unwrap(), Scope::Unscoped);
        let e = key
            .open_for_app("db-password", &go, "web", false)
            .unwrap_err();
        assert!(matches!(e, SecretError::Unscoped { .. }));
        let e = e.to_string();
        assert!(
            e.contains("secret 'db-password' is unscoped")
                && e.contains("`narunctl secret set db-password --app web`")
                && e.contains("`[secrets] allow_unscoped = true`"),
            "{e}"
        );
        assert_eq!(
            key.open_for_app("db-password", &go, "web", true).unwrap(),
            b"s3cr3t value"
        );
        // `seal` still writes the Go format: no `apps`, AAD = name.
        let s = key.seal("x", b"v", None, None).unwrap();
        assert!(s.apps.is_empty());
        assert_eq!(Scope::Unscoped.associated_data("x"), b"x");
        // `"apps": null` is unscoped too.
        let mut v: serde_json::Value = serde_json::from_slice(&go.to_json()).unwrap();
        v["apps"] = serde_json::Value::Null;
        let nulled = StoredSecret::from_json("db-password", v.to_string().as_bytes()).unwrap();
        assert_eq!(key.open(&nulled).unwrap(), b"s3cr3t value");
    }

    #[test]
    fn a_rewritten_scope_does_not_decrypt() {
        let (key, s) = scoped(&["billing"]);
        let rewrites: [(&str, Vec<&str>); 5] = [
            ("widened", vec!["billing", "web"]),
            ("replaced", vec!["web"]),
            ("any app", vec!["*"]),
            ("removed (unscoped)", vec![]),
            ("renamed app", vec!["billinG"]),
        ];
        for (what, apps) in rewrites {
            let mut t = s.clone();
            t.apps = apps.iter().map(|a| a.to_string()).collect();
            for app in ["billing", "web"] {
                let e = key.open_for_app("db", &t, app, true).unwrap_err();
                assert!(
                    matches!(e, SecretError::Decrypt { .. }),
                    "{what} for {app}: {e}"
                );
            }
            // Through JSON, as a KV writer would do it.
            let t = StoredSecret::from_json("db", &t.to_json()).unwrap();
            assert!(key.open(&t).is_err(), "{what}");
        }
        // Scoping a Go secret without the key does not decrypt either.
        let mut go = kat();
        go.apps = vec!["web".into()];
        assert!(matches!(
            key.open_for_app("db-password", &go, "web", true),
            Err(SecretError::Decrypt { .. })
        ));
        // The order of the stored list does not matter (the AAD uses the sorted set).
        let (key, s) = scoped(&["a", "b"]);
        let mut t = s.clone();
        t.apps.reverse();
        assert_eq!(key.open(&t).unwrap(), b"pw");
    }

    #[test]
    fn malformed_scopes_and_moved_secrets_are_refused() {
        let (key, s) = scoped(&["a"]);
        for bad in [vec!["*", "a"], vec!["a b"], vec![""], vec!["a\u{0}b"]] {
            let mut t = s.clone();
            t.apps = bad.iter().map(|a| a.to_string()).collect();
            assert!(
                matches!(t.scope(), Err(SecretError::Malformed { .. })),
                "{bad:?}"
            );
            assert!(
                matches!(key.open(&t), Err(SecretError::Malformed { .. })),
                "{bad:?}"
            );
        }
        // The whole JSON copied to another KV key still carries its name: refused.
        let e = key.open_for_app("other", &s, "a", true).unwrap_err();
        assert!(matches!(e, SecretError::WrongKey { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("the KV key 'other' holds the secret 'db'")
        );
    }

    #[test]
    fn scope_construction_and_aad() {
        assert!(Scope::apps(Vec::<String>::new()).is_err());
        for bad in ["", "a.b", "a b", "*", "a/b", "é"] {
            assert!(Scope::apps([bad]).is_err(), "{bad:?}");
        }
        let s = Scope::apps(["b", "a_1", "b"]).unwrap();
        assert_eq!(
            s.associated_data("db"),
            b"narun-secret-scope-v1\0db\0a_1\0b".to_vec()
        );
        assert_eq!(
            Scope::AnyApp.associated_data("db"),
            b"narun-secret-scope-v1\0db\0*".to_vec()
        );
        // Apps that concatenate to the same text still give different additional data.
        assert_ne!(
            Scope::apps(["ab"]).unwrap().associated_data("x"),
            Scope::apps(["a", "b"]).unwrap().associated_data("x")
        );
        assert!(s.allows("a_1") && !s.allows("a"));
        assert!(Scope::AnyApp.allows("x") && Scope::Unscoped.allows("x"));
        let key = MasterKey::from_base64(KEY).unwrap();
        let stored = key.seal_scoped("db", b"v", Some("d"), None, &s).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&stored.to_json()).unwrap();
        assert_eq!(v["apps"], serde_json::json!(["a_1", "b"]));
        // An update replaces the scope and keeps created_at and the description.
        let mut old = stored.clone();
        old.created_at = "2020-01-01T00:00:00Z".into();
        let upd = key
            .seal_scoped("db", b"w", None, Some(&old), &Scope::AnyApp)
            .unwrap();
        assert_eq!(
            (
                upd.apps.clone(),
                upd.created_at.as_str(),
                upd.description.as_str()
            ),
            (vec!["*".to_string()], "2020-01-01T00:00:00Z", "d")
        );
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

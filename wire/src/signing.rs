//! Signed app binaries: who built or deployed a binary, and for what.
//!
//! `narunctl deploy --sign KEY` signs a [`BinaryClaim`] — the app, the tag, the platform and
//! the SHA-256 of the binary — with an ed25519 key in NATS nkey form (a seed `SU…` or `SA…`,
//! what `nk -gen user` or `narunctl keys generate` writes), and stores the signature, the
//! signer's public key and the signed digest in the object's metadata
//! ([`names::BINARY_META_SIGNATURE`], [`names::BINARY_META_SIGNER`],
//! [`names::BINARY_META_SIGNED_SHA256`]). A node with `[deploy] trusted_keys` ([`TrustedKeys`])
//! runs a binary only when that signature verifies with one of its keys for the app, tag and
//! platform it is about to run, and when the object's digest and the downloaded bytes are the
//! signed digest. Objects without these keys stay valid for nodes without trusted keys (and
//! for the Go runner, which ignores unknown metadata).
//!
//! The signed bytes ([`BinaryClaim::message`]) are a versioned, line-based text in a fixed
//! order; no field may be empty or contain a control character, so two different claims
//! never have the same message:
//!
//! ```text
//! narun-binary-signature-v1
//! app=<app>
//! tag=<tag>
//! os=<os>
//! arch=<arch>
//! sha256=<64 lower-case hex digits>
//! ```
//!
//! ```
//! use narun_wire::signing::{BinaryClaim, Signer, TrustedKeys};
//! let signer = Signer::generate();
//! let claim = BinaryClaim { app: "hello", tag: "v1", os: "linux", arch: "arm64", sha256: [7; 32] };
//! let meta: std::collections::HashMap<String, String> = signer
//!     .sign(&claim)
//!     .unwrap()
//!     .into_iter()
//!     .map(|(k, v)| (k.to_string(), v))
//!     .collect();
//! let trusted = TrustedKeys::parse([signer.public_key().as_str()]).unwrap();
//! assert_eq!(trusted.verify("hello", "v1", "linux", "arm64", &meta).unwrap(), [7; 32]);
//! assert!(trusted.verify("hello", "v2", "linux", "arm64", &meta).is_err());
//! ```

use crate::names;
use base64::Engine as _;
use nkeys::{KeyPair, KeyPairType};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// The object metadata entries of a signature: [`names::BINARY_META_SIGNATURE`],
/// [`names::BINARY_META_SIGNER`], [`names::BINARY_META_SIGNED_SHA256`] and their values.
pub type SignatureMetadata = [(&'static str, String); 3];

/// First line of [`BinaryClaim::message`]: the format of the signed bytes.
pub const MESSAGE_VERSION: &str = "narun-binary-signature-v1";

/// What a signature of an app binary says: this binary (by SHA-256) is the build of `app`
/// at `tag` for `os`/`arch` (Go's GOOS/GOARCH names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinaryClaim<'a> {
    pub app: &'a str,
    pub tag: &'a str,
    pub os: &'a str,
    pub arch: &'a str,
    pub sha256: [u8; 32],
}

impl BinaryClaim<'_> {
    /// The bytes that are signed (see the module docs). Fails when a field is empty or
    /// contains a control character (such a claim would not be unambiguous).
    pub fn message(&self) -> Result<Vec<u8>, SigningError> {
        let mut m = String::with_capacity(160);
        m.push_str(MESSAGE_VERSION);
        m.push('\n');
        for (field, value) in [
            ("app", self.app),
            ("tag", self.tag),
            ("os", self.os),
            ("arch", self.arch),
        ] {
            if value.is_empty() || value.chars().any(char::is_control) {
                return Err(SigningError::Field {
                    field,
                    value: value.to_owned(),
                });
            }
            let _ = writeln!(m, "{field}={value}");
        }
        let _ = writeln!(m, "sha256={}", hex(&self.sha256));
        Ok(m.into_bytes())
    }
}

/// A claim that cannot be signed or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error(
        "cannot sign a binary whose {field} is {value:?}: it must be non-empty and free of control characters"
    )]
    Field { field: &'static str, value: String },
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A signing key that cannot be used, or a trusted key that is not a public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the signing key {path}: {message}")]
    Read { path: String, message: String },
    #[error(
        "{path}: no nkey seed found (a line `SU…` or `SA…`); create one with `narunctl keys generate FILE` or `nk -gen user`"
    )]
    NoSeed { path: String },
    #[error("{what}: not a valid nkey seed ({message}); expected `SU…` or `SA…` (nk -gen user)")]
    BadSeed { what: String, message: String },
    #[error(
        "{key:?} is a secret seed, not a public key: give its public key (`narunctl keys public FILE` prints it)"
    )]
    SeedNotPublic { key: String },
    #[error("{key:?} is not a valid nkey public key ({message}); expected `U…` or `A…`")]
    BadPublic { key: String, message: String },
    #[error(
        "{key:?} is an X25519 (curve) key, which cannot sign; use a user or account key (`U…`, `A…`)"
    )]
    Curve { key: String },
}

/// Why a binary's signature is not accepted. The node adds the object's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "the binary is not signed (no '{missing}' in its metadata) and this node runs only binaries \
         signed by one of its [deploy] trusted_keys; deploy it with `narunctl deploy --sign KEY`"
    )]
    Unsigned { missing: &'static str },
    #[error(
        "the binary is signed by {signer}, which is not one of this node's [deploy] trusted_keys; \
         sign it with a trusted key, or add that public key to trusted_keys"
    )]
    Untrusted { signer: String },
    #[error(
        "the binary's '{key}' metadata {value:?} is malformed; deploy it again with `narunctl deploy --sign KEY`"
    )]
    Malformed { key: &'static str, value: String },
    #[error(
        "the signature by {signer} is not valid for {claim}: the object was signed for another \
         app, tag, platform or binary, or its metadata was changed after signing; deploy it \
         again with `narunctl deploy --sign KEY`"
    )]
    BadSignature {
        signer: String,
        /// `app <app>, tag <tag>, platform <os>/<arch> and digest <sha256 hex>`.
        claim: String,
    },
    #[error("{0}")]
    Claim(#[from] SigningError),
}

/// An ed25519 signing key (an nkey seed), held by narunctl.
pub struct Signer {
    key: KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        write!(f, "Signer({})", self.key.public_key())
    }
}

impl Signer {
    /// A new random user key (`SU…`).
    pub fn generate() -> Signer {
        Signer {
            key: KeyPair::new_user(),
        }
    }

    /// From an nkey seed (`SU…`, `SA…`, any type but curve keys).
    pub fn from_seed(seed: &str) -> Result<Signer, KeyError> {
        Self::from_seed_named(seed.trim(), "the signing key")
    }

    fn from_seed_named(seed: &str, what: &str) -> Result<Signer, KeyError> {
        let key = KeyPair::from_seed(seed).map_err(|e| KeyError::BadSeed {
            what: what.to_owned(),
            message: e.to_string(),
        })?;
        if key.key_pair_type() == KeyPairType::Curve {
            return Err(KeyError::Curve {
                key: key.public_key(),
            });
        }
        Ok(Signer { key })
    }

    /// From a file holding a seed: a file with just the seed (`nk -gen user > FILE`,
    /// `narunctl keys generate FILE`) or a NATS `.creds` file (its seed block).
    pub fn from_file(path: &Path) -> Result<Signer, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        // The seed is the one word starting with `S` that is as long as a seed (58
        // characters); in a .creds file the JWT and the armour lines are not.
        let seed = text
            .split_whitespace()
            .find(|w| w.starts_with('S') && w.len() == 58)
            .ok_or(KeyError::NoSeed {
                path: shown.clone(),
            })?;
        Self::from_seed_named(seed, &shown)
    }

    /// The seed (the secret), for writing a new key to a file.
    pub fn seed(&self) -> String {
        self.key.seed().unwrap_or_default()
    }

    /// The public key (`U…`, `A…`): what nodes list in `[deploy] trusted_keys`.
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// Sign `claim`: the object metadata entries to store with the binary (signature,
    /// signer, signed digest).
    pub fn sign(&self, claim: &BinaryClaim) -> Result<SignatureMetadata, SigningError> {
        let sig = self
            .key
            .sign(&claim.message()?)
            .map_err(|e| SigningError::Sign(e.to_string()))?;
        Ok([
            (
                names::BINARY_META_SIGNATURE,
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
            ),
            (names::BINARY_META_SIGNER, self.public_key()),
            (names::BINARY_META_SIGNED_SHA256, hex(&claim.sha256)),
        ])
    }
}

/// The public keys whose signatures a node accepts (`[deploy] trusted_keys`).
#[derive(Default)]
pub struct TrustedKeys {
    keys: Vec<(String, KeyPair)>,
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Clone for TrustedKeys {
    fn clone(&self) -> Self {
        // Public keys parse again (they were valid once).
        TrustedKeys::parse(self.keys.iter().map(|(k, _)| k.as_str())).unwrap_or_default()
    }
}

impl PartialEq for TrustedKeys {
    fn eq(&self, other: &Self) -> bool {
        self.public_keys().eq(other.public_keys())
    }
}

impl TrustedKeys {
    /// Parse public nkeys (`U…`, `A…`; surrounding whitespace ignored). A seed, a curve key
    /// or anything else is an error naming it.
    pub fn parse<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<TrustedKeys, KeyError> {
        let mut out = Vec::new();
        for key in keys {
            let key = key.trim();
            if key.starts_with('S') && nkeys::decode_seed(key).is_ok() {
                // Never echo a secret: only its public key.
                let public = KeyPair::from_seed(key)
                    .map(|k| k.public_key())
                    .unwrap_or_default();
                return Err(KeyError::SeedNotPublic {
                    key: format!("the seed of {public}"),
                });
            }
            let kp = KeyPair::from_public_key(key).map_err(|e| KeyError::BadPublic {
                key: key.to_owned(),
                message: e.to_string(),
            })?;
            if kp.key_pair_type() == KeyPairType::Curve {
                return Err(KeyError::Curve {
                    key: key.to_owned(),
                });
            }
            if !out.iter().any(|(k, _)| k == key) {
                out.push((key.to_owned(), kp));
            }
        }
        Ok(TrustedKeys { keys: out })
    }

    /// No trusted keys: deploys are not authenticated (every binary is accepted).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The public keys, in the configured order.
    pub fn public_keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(k, _)| k.as_str())
    }

    /// Check the signature in an object's `metadata` for the binary of `app`:`tag` on
    /// `os`/`arch`. Returns the signed SHA-256, which the binary must have.
    pub fn verify(
        &self,
        app: &str,
        tag: &str,
        os: &str,
        arch: &str,
        metadata: &HashMap<String, String>,
    ) -> Result<[u8; 32], VerifyError> {
        let get = |key: &'static str| {
            metadata
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .ok_or(VerifyError::Unsigned { missing: key })
        };
        let signature = get(names::BINARY_META_SIGNATURE)?;
        let signer = get(names::BINARY_META_SIGNER)?;
        let signed = get(names::BINARY_META_SIGNED_SHA256)?;
        let Some((_, key)) = self.keys.iter().find(|(k, _)| k == signer) else {
            return Err(VerifyError::Untrusted {
                signer: signer.to_owned(),
            });
        };
        let sha256 = unhex(signed).ok_or_else(|| VerifyError::Malformed {
            key: names::BINARY_META_SIGNED_SHA256,
            value: signed.to_owned(),
        })?;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature.trim_end_matches('='))
            .ok()
            .filter(|s| s.len() == 64)
            .ok_or_else(|| VerifyError::Malformed {
                key: names::BINARY_META_SIGNATURE,
                value: signature.to_owned(),
            })?;
        let claim = BinaryClaim {
            app,
            tag,
            os,
            arch,
            sha256,
        };
        key.verify(&claim.message()?, &sig)
            .map_err(|_| VerifyError::BadSignature {
                signer: signer.to_owned(),
                claim: format!("app {app}, tag {tag}, platform {os}/{arch} and digest {signed}"),
            })?;
        Ok(sha256)
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// 32 bytes from exactly 64 hex digits (either case).
fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(sha256: [u8; 32]) -> BinaryClaim<'static> {
        BinaryClaim {
            app: "hello",
            tag: "v1",
            os: "linux",
            arch: "arm64",
            sha256,
        }
    }

    fn meta(entries: [(&'static str, String); 3]) -> HashMap<String, String> {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    #[test]
    fn message_is_the_documented_canonical_text() {
        let mut sha = [0u8; 32];
        sha[0] = 0xab;
        sha[31] = 0x01;
        let m = String::from_utf8(claim(sha).message().unwrap()).unwrap();
        assert_eq!(
            m,
            "narun-binary-signature-v1\napp=hello\ntag=v1\nos=linux\narch=arm64\n\
             sha256=ab00000000000000000000000000000000000000000000000000000000000001\n"
        );
    }

    #[test]
    fn message_refuses_ambiguous_fields() {
        for (field, bad) in [
            ("app", ""),
            ("app", "a\ntag=x"),
            ("tag", "v1\r"),
            ("os", "linux\u{0}"),
            ("arch", ""),
            ("arch", "arm\u{85}"),
        ] {
            let mut c = claim([1; 32]);
            match field {
                "app" => c.app = bad,
                "tag" => c.tag = bad,
                "os" => c.os = bad,
                _ => c.arch = bad,
            }
            assert_eq!(
                c.message(),
                Err(SigningError::Field {
                    field,
                    value: bad.to_owned()
                }),
                "{field}={bad:?}"
            );
        }
    }

    #[test]
    fn messages_of_different_claims_differ() {
        // Moving characters between fields (the classic concatenation ambiguity) changes
        // the message.
        let a = BinaryClaim {
            app: "a-b",
            tag: "c",
            ..claim([1; 32])
        };
        let b = BinaryClaim {
            app: "a",
            tag: "b-c",
            ..claim([1; 32])
        };
        let c = BinaryClaim {
            os: "linux/arm",
            arch: "64",
            ..claim([1; 32])
        };
        let d = BinaryClaim {
            os: "linux",
            arch: "arm/64",
            ..claim([1; 32])
        };
        assert_ne!(a.message(), b.message());
        assert_ne!(c.message(), d.message());
        assert_ne!(claim([1; 32]).message(), claim([2; 32]).message());
    }

    #[test]
    fn signed_metadata_verifies_for_exactly_its_claim() {
        let signer = Signer::generate();
        assert!(signer.public_key().starts_with('U'));
        assert!(signer.seed().starts_with("SU"));
        let m = meta(signer.sign(&claim([9; 32])).unwrap());
        assert_eq!(m[names::BINARY_META_SIGNER], signer.public_key());
        assert_eq!(m[names::BINARY_META_SIGNED_SHA256], hex(&[9; 32]));
        let trusted = TrustedKeys::parse([signer.public_key().as_str()]).unwrap();
        assert_eq!(
            trusted.verify("hello", "v1", "linux", "arm64", &m),
            Ok([9; 32])
        );
        for (app, tag, os, arch) in [
            ("other", "v1", "linux", "arm64"),
            ("hello", "v2", "linux", "arm64"),
            ("hello", "v1", "darwin", "arm64"),
            ("hello", "v1", "linux", "amd64"),
        ] {
            assert!(
                matches!(
                    trusted.verify(app, tag, os, arch, &m),
                    Err(VerifyError::BadSignature { .. })
                ),
                "{app} {tag} {os} {arch}"
            );
        }
    }

    #[test]
    fn a_changed_signed_digest_fails() {
        let signer = Signer::generate();
        let trusted = TrustedKeys::parse([signer.public_key().as_str()]).unwrap();
        let mut m = meta(signer.sign(&claim([9; 32])).unwrap());
        m.insert(names::BINARY_META_SIGNED_SHA256.into(), hex(&[8; 32]));
        let err = trusted
            .verify("hello", "v1", "linux", "arm64", &m)
            .unwrap_err();
        assert!(matches!(err, VerifyError::BadSignature { .. }), "{err:?}");
        assert!(err.to_string().contains(&hex(&[8; 32])), "{err}");
        // Upper-case hex of the right digest is the same digest.
        m.insert(
            names::BINARY_META_SIGNED_SHA256.into(),
            hex(&[9; 32]).to_uppercase(),
        );
        assert_eq!(
            trusted.verify("hello", "v1", "linux", "arm64", &m),
            Ok([9; 32])
        );
    }

    #[test]
    fn a_changed_signature_fails() {
        let signer = Signer::generate();
        let trusted = TrustedKeys::parse([signer.public_key().as_str()]).unwrap();
        let mut m = meta(signer.sign(&claim([9; 32])).unwrap());
        let mut sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&m[names::BINARY_META_SIGNATURE])
            .unwrap();
        sig[10] ^= 1;
        m.insert(
            names::BINARY_META_SIGNATURE.into(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&sig),
        );
        assert!(matches!(
            trusted.verify("hello", "v1", "linux", "arm64", &m),
            Err(VerifyError::BadSignature { .. })
        ));
        m.insert(names::BINARY_META_SIGNATURE.into(), "not base64!".into());
        assert!(matches!(
            trusted.verify("hello", "v1", "linux", "arm64", &m),
            Err(VerifyError::Malformed { .. })
        ));
        m.insert(names::BINARY_META_SIGNATURE.into(), "AAAA".into());
        assert!(matches!(
            trusted.verify("hello", "v1", "linux", "arm64", &m),
            Err(VerifyError::Malformed { .. })
        ));
    }

    #[test]
    fn unsigned_untrusted_and_malformed_are_refused() {
        let signer = Signer::generate();
        let other = Signer::generate();
        let trusted = TrustedKeys::parse([other.public_key().as_str()]).unwrap();
        let full = meta(signer.sign(&claim([9; 32])).unwrap());
        assert_eq!(
            trusted.verify("hello", "v1", "linux", "arm64", &HashMap::new()),
            Err(VerifyError::Unsigned {
                missing: names::BINARY_META_SIGNATURE
            })
        );
        for key in [
            names::BINARY_META_SIGNATURE,
            names::BINARY_META_SIGNER,
            names::BINARY_META_SIGNED_SHA256,
        ] {
            let mut m = full.clone();
            m.remove(key);
            assert_eq!(
                trusted.verify("hello", "v1", "linux", "arm64", &m),
                Err(VerifyError::Unsigned { missing: key })
            );
            m.insert(key.into(), "  ".into());
            assert_eq!(
                trusted.verify("hello", "v1", "linux", "arm64", &m),
                Err(VerifyError::Unsigned { missing: key })
            );
        }
        let err = trusted
            .verify("hello", "v1", "linux", "arm64", &full)
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::Untrusted {
                signer: signer.public_key()
            }
        );
        assert!(err.to_string().contains("trusted_keys"), "{err}");
        // Both keys trusted: accepted.
        let both = TrustedKeys::parse([other.public_key().as_str(), signer.public_key().as_str()])
            .unwrap();
        assert!(both.verify("hello", "v1", "linux", "arm64", &full).is_ok());
        let mut m = full.clone();
        m.insert(names::BINARY_META_SIGNED_SHA256.into(), "xyz".into());
        assert!(matches!(
            both.verify("hello", "v1", "linux", "arm64", &m),
            Err(VerifyError::Malformed { .. })
        ));
    }

    #[test]
    fn account_keys_sign_too() {
        let account = Signer {
            key: KeyPair::new_account(),
        };
        let seed = account.seed();
        assert!(seed.starts_with("SA"));
        let again = Signer::from_seed(&seed).unwrap();
        assert!(again.public_key().starts_with('A'));
        let trusted = TrustedKeys::parse([again.public_key().as_str()]).unwrap();
        let m = meta(again.sign(&claim([3; 32])).unwrap());
        assert!(trusted.verify("hello", "v1", "linux", "arm64", &m).is_ok());
    }

    #[test]
    fn trusted_keys_parse_only_public_signing_keys() {
        let s = Signer::generate();
        let t = TrustedKeys::parse([format!(" {} ", s.public_key()).as_str()]).unwrap();
        assert_eq!(t.public_keys().collect::<Vec<_>>(), [s.public_key()]);
        assert!(!t.is_empty());
        assert!(TrustedKeys::parse([]).unwrap().is_empty());
        // A seed is refused without echoing it.
        let err = TrustedKeys::parse([s.seed().as_str()]).unwrap_err();
        assert!(matches!(err, KeyError::SeedNotPublic { .. }));
        assert!(!err.to_string().contains(&s.seed()), "{err}");
        assert!(err.to_string().contains(&s.public_key()), "{err}");
        assert!(matches!(
            TrustedKeys::parse(["Unot-a-key"]),
            Err(KeyError::BadPublic { .. })
        ));
        let curve = KeyPair::new(KeyPairType::Curve).public_key();
        assert!(matches!(
            TrustedKeys::parse([curve.as_str()]),
            Err(KeyError::Curve { .. })
        ));
        // Duplicates collapse; clone and equality go by the keys.
        let pk = s.public_key();
        let t = TrustedKeys::parse([pk.as_str(), pk.as_str()]).unwrap();
        assert_eq!(t.public_keys().count(), 1);
        assert_eq!(t.clone(), t);
    }

    #[test]
    fn seed_files_plain_and_creds() {
        let dir = std::env::temp_dir().join(format!("narun-signing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Signer::generate();
        let plain = dir.join("plain.nk");
        std::fs::write(&plain, format!("{}\n", s.seed())).unwrap();
        assert_eq!(
            Signer::from_file(&plain).unwrap().public_key(),
            s.public_key()
        );
        let creds = dir.join("user.creds");
        std::fs::write(
            &creds,
            format!(
                "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig\n\
                 ------END NATS USER JWT------\n\n************************* IMPORTANT *************************\n\
                 NKEY Seed printed below can be used to sign and prove identity.\n\n\
                 -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
                s.seed()
            ),
        )
        .unwrap();
        assert_eq!(
            Signer::from_file(&creds).unwrap().public_key(),
            s.public_key()
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let err = Signer::from_file(&empty).unwrap_err();
        assert!(matches!(err, KeyError::NoSeed { .. }), "{err:?}");
        assert!(err.to_string().contains("narunctl keys generate"), "{err}");
        let missing = Signer::from_file(&dir.join("missing")).unwrap_err();
        assert!(matches!(missing, KeyError::Read { .. }), "{missing:?}");
        // A damaged seed of the right length.
        let mut bad = s.seed();
        bad.replace_range(10..11, if &bad[10..11] == "A" { "B" } else { "A" });
        std::fs::write(&plain, &bad).unwrap();
        assert!(matches!(
            Signer::from_file(&plain),
            Err(KeyError::BadSeed { .. })
        ));
        assert!(matches!(
            Signer::from_seed(&KeyPair::new(KeyPairType::Curve).seed().unwrap()),
            Err(KeyError::Curve { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

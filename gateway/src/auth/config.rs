//! The `auth` table of an HTTP route, and its validation (no file I/O: key files are
//! read when the gateway binds, [`super::Policy::load`]).
//!
//! ```toml
//! [[gateway.routes]]
//! path = "/api/"
//! service = "api"
//! [gateway.routes.auth]
//! realm = "api"                       # WWW-Authenticate realm (default "narun")
//! forward_auth = false                # true: the app also receives `Authorization`
//! # Bearer tokens: name = SHA-256 of the token, hex (`printf %s "$TOKEN" | sha256sum`).
//! bearer = { ci = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8" }
//! # HTTP basic: user = PBKDF2-HMAC-SHA256 hash in Django's format.
//! basic = { alice = "pbkdf2_sha256$100000$c2FsdHNhbHQ$..." }
//! [gateway.routes.auth.jwt]
//! keys = [{ alg = "RS256", file = "/etc/narun/jwt/idp.pub", kid = "2026-1" }]
//! issuer = "https://id.example.com"
//! audience = ["api"]
//! leeway_sec = 30
//! claims = { role = "admin" }         # else 403
//! ```

use super::password;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// Default clock skew tolerated on `exp` and `nbf`, seconds.
pub const DEFAULT_LEEWAY_SEC: u64 = 30;
/// Largest accepted `leeway_sec`: five minutes (more turns expiry into a suggestion).
pub const MAX_LEEWAY_SEC: u64 = 300;
/// Default `realm` of the `WWW-Authenticate` challenge.
pub const DEFAULT_REALM: &str = "narun";

pub(crate) const AUTH_KEYS: &str = "realm, forward_auth, bearer, basic, jwt";
const JWT_KEYS: &str = "keys, issuer, audience, leeway_sec, require_exp, claims";
const JWT_KEY_KEYS: &str = "alg, file, kid";
/// The JWT algorithms a key may be used with (RFC 7518 names).
pub const JWT_ALGS: [&str; 3] = ["HS256", "RS256", "EdDSA"];

/// `[gateway.routes.auth]`: who may call the route. A request is let through when
/// any configured method accepts its `Authorization` header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// `realm` of the `WWW-Authenticate` challenges; default `narun`.
    pub realm: Option<String>,
    /// Forward the client's `Authorization` header to the app (default: removed).
    pub forward_auth: bool,
    /// Bearer tokens: name → lower-case hex SHA-256 of the token.
    pub bearer: BTreeMap<String, String>,
    /// HTTP basic: user → `pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`.
    pub basic: BTreeMap<String, String>,
    /// JSON Web Tokens (sent as `Bearer`).
    pub jwt: Option<JwtConfig>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// `[gateway.routes.auth.jwt]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtConfig {
    /// Verification keys; a token is checked with the key whose `kid` it names, else
    /// with every key of its `alg`.
    pub keys: Vec<JwtKeyConfig>,
    /// Required `iss` (exact match); omitted = any issuer.
    pub issuer: Option<String>,
    /// Accepted audiences: the token's `aud` must name one; empty = `aud` not checked.
    pub audience: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_sec: u64,
    /// Refuse tokens without `exp` (default true).
    pub require_exp: bool,
    /// Claims the identity must have, else 403: the claim equals the value, or (an
    /// array claim) contains it, or (`scope`/`scp` strings) lists it as a word. A list of
    /// values means any of them.
    pub claims: BTreeMap<String, ClaimValue>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            keys: Vec::new(),
            issuer: None,
            audience: Vec::new(),
            leeway_sec: DEFAULT_LEEWAY_SEC,
            require_exp: true,
            claims: BTreeMap::new(),
            unknown: BTreeMap::new(),
        }
    }
}

/// One JWT verification key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtKeyConfig {
    /// `HS256` (file = the shared secret's bytes, ≥ 32), `RS256` (PEM RSA public key,
    /// ≥ 2048 bits) or `EdDSA` (PEM Ed25519 public key).
    pub alg: String,
    pub file: String,
    /// Matched against the token header's `kid`, when both have one.
    pub kid: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// A required claim's value: a string, a boolean, an integer, or any of several strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClaimValue {
    Bool(bool),
    Int(i64),
    One(String),
    Any(Vec<String>),
}

fn push(errs: &mut Vec<(String, String)>, key: String, reason: impl Into<String>) {
    errs.push((key, reason.into()));
}

impl AuthConfig {
    /// Every problem of this table, as (key path, reason); `key` is the table's own
    /// path (`gateway.routes[3].auth`).
    pub(crate) fn problems(&self, key: &str) -> Vec<(String, String)> {
        let mut e = Vec::new();
        for k in self.unknown.keys() {
            push(
                &mut e,
                format!("{key}.{k}"),
                format!("unknown key (known keys: {AUTH_KEYS})"),
            );
        }
        if let Some(r) = &self.realm
            && (r.is_empty()
                || r.len() > 64
                || r.chars()
                    .any(|c| c == '"' || c == '\\' || !(' '..='~').contains(&c)))
        {
            push(
                &mut e,
                format!("{key}.realm"),
                format!("{r:?} must be 1-64 printable ASCII characters without '\"' or '\\'"),
            );
        }
        if self.bearer.is_empty() && self.basic.is_empty() && self.jwt.is_none() {
            push(
                &mut e,
                key.to_owned(),
                "lists no credentials: set `bearer`, `basic` or `jwt` (or remove `auth` to open the route)",
            );
        }
        for (name, hash) in &self.bearer {
            let k = format!("{key}.bearer.{name}");
            if name.is_empty() || name.chars().any(|c| c.is_control()) {
                push(&mut e, k.clone(), "the token's name must be non-empty text");
            }
            if password::parse_sha256_hex(hash).is_none() {
                push(
                    &mut e,
                    k,
                    "must be the token's SHA-256 as 64 hex digits (`printf %s \"$TOKEN\" | sha256sum`), not the token",
                );
            }
        }
        for (user, hash) in &self.basic {
            let k = format!("{key}.basic.{user}");
            if user.is_empty() || user.contains(':') || user.chars().any(|c| c.is_control()) {
                push(
                    &mut e,
                    k.clone(),
                    "a user name must be non-empty, without ':' or control characters",
                );
            }
            if let Err(why) = password::Pbkdf2Hash::parse(hash) {
                push(&mut e, k, why);
            }
        }
        if let Some(j) = &self.jwt {
            j.problems(&format!("{key}.jwt"), &mut e);
        }
        e
    }
}

impl JwtConfig {
    fn problems(&self, key: &str, e: &mut Vec<(String, String)>) {
        for k in self.unknown.keys() {
            push(
                e,
                format!("{key}.{k}"),
                format!("unknown key (known keys: {JWT_KEYS})"),
            );
        }
        if self.keys.is_empty() {
            push(
                e,
                format!("{key}.keys"),
                "is empty: list at least one key ({ alg = \"RS256\", file = \"/path/key.pem\" })",
            );
        }
        let mut kids = HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            let kk = format!("{key}.keys[{i}]");
            for u in k.unknown.keys() {
                push(
                    e,
                    format!("{kk}.{u}"),
                    format!("unknown key (known keys: {JWT_KEY_KEYS})"),
                );
            }
            if !JWT_ALGS.contains(&k.alg.as_str()) {
                push(
                    e,
                    format!("{kk}.alg"),
                    format!(
                        "{:?} is not supported; use one of {} (exact case)",
                        k.alg,
                        JWT_ALGS.join(", ")
                    ),
                );
            }
            if k.file.trim().is_empty() {
                push(e, format!("{kk}.file"), "is required (the key file's path)");
            }
            if let Some(kid) = &k.kid
                && !kids.insert(kid.as_str())
            {
                push(
                    e,
                    format!("{kk}.kid"),
                    format!("{kid:?} is used by another key"),
                );
            }
        }
        if self.leeway_sec > MAX_LEEWAY_SEC {
            push(
                e,
                format!("{key}.leeway_sec"),
                format!(
                    "{} is more than {MAX_LEEWAY_SEC} (five minutes)",
                    self.leeway_sec
                ),
            );
        }
        if let Some(iss) = &self.issuer
            && iss.is_empty()
        {
            push(
                e,
                format!("{key}.issuer"),
                "is empty; omit it to accept any issuer",
            );
        }
        for (i, a) in self.audience.iter().enumerate() {
            if a.is_empty() {
                push(e, format!("{key}.audience[{i}]"), "is empty");
            }
        }
        for (name, v) in &self.claims {
            if let ClaimValue::Any(list) = v
                && list.is_empty()
            {
                push(
                    e,
                    format!("{key}.claims.{name}"),
                    "is an empty list: no identity could have it",
                );
            }
        }
    }
}

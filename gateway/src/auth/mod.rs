//! API authorization per route: bearer tokens, HTTP basic and JWT (`[gateway.routes.auth]`).
//!
//! A route with an `auth` table lets a request through only when its one `Authorization`
//! header carries a credential that one of the route's methods accepts:
//!
//! | header | checked against | identity (`Narun-Auth-User` to the app) |
//! |---|---|---|
//! | `Bearer <token>` | `bearer` (SHA-256 of each token, [`password`]) | the token's name |
//! | `Bearer <a.b.c>` | `jwt` ([`jwt`]: signature, `exp`/`nbf`, `iss`, `aud`; then `claims`) | the `sub` claim |
//! | `Basic <base64 user:password>` | `basic` (PBKDF2, [`password`]) | the user |
//!
//! The answer to a refused request comes from the gateway, before the body is read or
//! anything reaches NATS ([`Policy::check`] is a pure decision plus the hashing):
//!
//! * no credential: **401** with one `WWW-Authenticate` challenge per method the route
//!   offers (`Bearer realm="…"`, `Basic realm="…", charset="UTF-8"`), no error (RFC 6750 §3.1);
//! * a wrong, expired or unverifiable credential: **401**, `error="invalid_token"` and an
//!   `error_description` in the Bearer challenge;
//! * two `Authorization` headers, an unparsable one: **400**, `error="invalid_request"`;
//! * a valid JWT without a required claim: **403**, `error="insufficient_scope"`.
//!
//! The app never sees the credential: `Authorization` is removed unless the route sets
//! `forward_auth = true`. The gateway sets `Narun-Auth-User` to the identity, and removes
//! a client's own `Narun-Auth-User` on every route, so an app can trust the header.
//! Every refusal is counted in `gateway_auth_failures_total{path,reason}`.

pub mod config;
pub mod jwt;
pub mod password;

use crate::config::{ConfigError, ConfigErrors};
use base64::Engine;
use config::AuthConfig;
use http::{HeaderMap, HeaderValue, StatusCode};
use password::{Pbkdf2Hash, ct_eq, sha256};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

/// Load the `auth` of every HTTP route (by route index), reading the JWT key files; every
/// unreadable or unusable file is reported, naming its key. `narund --check-config` runs it too.
pub fn load_policies(
    config: &crate::GatewayConfig,
) -> Result<std::collections::HashMap<usize, std::sync::Arc<Policy>>, ConfigErrors> {
    let mut policies = std::collections::HashMap::new();
    let mut errs = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        if let (Some(a), Some(_)) = (&r.auth, &r.path) {
            match Policy::load(a, &format!("gateway.routes[{i}].auth")) {
                Ok(p) => {
                    policies.insert(i, std::sync::Arc::new(p));
                }
                Err(e) => errs.extend(e.0),
            }
        }
    }
    // `[gateway.jobs.auth]` is loaded by the gateway itself; checked here with the rest.
    if let Some(a) = &config.jobs.auth
        && let Err(e) = Policy::load(a, "gateway.jobs.auth")
    {
        errs.extend(e.0);
    }
    if errs.is_empty() {
        Ok(policies)
    } else {
        Err(ConfigErrors(errs))
    }
}

/// Successful basic-auth verifications remembered (then forgotten all at once).
const CACHE_ENTRIES: usize = 1024;

static HASHING: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(password::MAX_PARALLEL_HASHES);

/// A refused request: what the gateway answers.
#[derive(Debug, Clone)]
pub struct Denial {
    pub status: StatusCode,
    /// The `reason` label of `gateway_auth_failures_total`:
    /// `missing`, `malformed`, `invalid`, `expired` or `forbidden`.
    pub reason: &'static str,
    /// `WWW-Authenticate` values, one per challenge.
    pub challenges: Vec<HeaderValue>,
    /// The plain-text body.
    pub message: &'static str,
}

/// The decision on one request.
#[derive(Debug)]
pub enum Outcome {
    /// Let through; the identity for `Narun-Auth-User` (`None`: not header-safe).
    Allowed(Option<HeaderValue>),
    Denied(Denial),
}

/// A route's `auth`, loaded (key files read, hashes parsed).
pub struct Policy {
    realm: String,
    /// Send `Authorization` on to the app.
    pub forward_auth: bool,
    bearer: Vec<(String, [u8; 32])>,
    basic: BTreeMap<String, (String, Pbkdf2Hash)>,
    /// Hashed for unknown users, so that they take as long as known ones.
    decoy: Option<Pbkdf2Hash>,
    jwt: Option<jwt::Verifier>,
    cache: Mutex<HashSet<[u8; 32]>>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("realm", &self.realm)
            .field("bearer", &self.bearer.len())
            .field("basic", &self.basic.len())
            .field("jwt", &self.jwt.is_some())
            .finish()
    }
}

/// Why a credential failed, before it becomes a [`Denial`].
enum Failure {
    Missing,
    BadRequest(&'static str),
    Invalid(&'static str),
    Expired(&'static str),
    Forbidden,
}

impl Policy {
    /// Load `cfg` (validated before): parse the hashes, read the JWT key files.
    /// Errors name `key.jwt.keys[i].file`.
    pub fn load(cfg: &AuthConfig, key: &str) -> Result<Policy, ConfigErrors> {
        let mut errs = Vec::new();
        let bearer = cfg
            .bearer
            .iter()
            .filter_map(|(n, h)| Some((n.clone(), password::parse_sha256_hex(h)?)))
            .collect();
        let basic: BTreeMap<_, _> = cfg
            .basic
            .iter()
            .filter_map(|(u, h)| Some((u.clone(), (h.clone(), Pbkdf2Hash::parse(h).ok()?))))
            .collect();
        let decoy = basic.values().next().map(|(_, h)| Pbkdf2Hash {
            iterations: h.iterations,
            salt: b"decoy-salt".to_vec(),
            hash: vec![0; 32],
        });
        let jwt = cfg.jwt.as_ref().map(|j| {
            let mut keys = Vec::new();
            for (i, k) in j.keys.iter().enumerate() {
                let at = format!("{key}.jwt.keys[{i}].file");
                let Some(alg) = jwt::Alg::parse(&k.alg) else {
                    continue;
                };
                match std::fs::read(&k.file) {
                    Err(e) => errs.push(ConfigError {
                        key: at,
                        reason: format!("cannot read {:?}: {e}", k.file),
                    }),
                    Ok(bytes) => match jwt::VerifyKey::load(alg, k.kid.clone(), &bytes) {
                        Ok(v) => keys.push(v),
                        Err(why) => errs.push(ConfigError {
                            key: at,
                            reason: format!("{:?}: {why}", k.file),
                        }),
                    },
                }
            }
            jwt::Verifier::new(j, keys)
        });
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        Ok(Policy {
            realm: cfg
                .realm
                .clone()
                .unwrap_or_else(|| config::DEFAULT_REALM.into()),
            forward_auth: cfg.forward_auth,
            bearer,
            basic,
            decoy,
            jwt,
            cache: Mutex::new(HashSet::new()),
        })
    }

    fn takes_bearer(&self) -> bool {
        !self.bearer.is_empty() || self.jwt.is_some()
    }

    /// The `WWW-Authenticate` values for a refusal; `error` goes into the Bearer challenge.
    fn challenges(&self, error: Option<(&str, &str)>) -> Vec<HeaderValue> {
        let mut out = Vec::new();
        if self.takes_bearer() {
            let mut c = format!("Bearer realm=\"{}\"", self.realm);
            if let Some((code, desc)) = error {
                c.push_str(&format!(", error=\"{code}\""));
                if !desc.is_empty() {
                    c.push_str(&format!(", error_description=\"{desc}\""));
                }
            }
            out.extend(HeaderValue::from_str(&c).ok());
        }
        if !self.basic.is_empty() {
            let c = format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.realm);
            out.extend(HeaderValue::from_str(&c).ok());
        }
        out
    }

    fn deny(&self, f: Failure) -> Denial {
        let (status, reason, error, message) = match f {
            Failure::Missing => (
                StatusCode::UNAUTHORIZED,
                "missing",
                None,
                "Unauthorized: credentials required",
            ),
            Failure::BadRequest(d) => (
                StatusCode::BAD_REQUEST,
                "malformed",
                Some(("invalid_request", d)),
                "Bad Request: malformed Authorization header",
            ),
            Failure::Invalid(d) => (
                StatusCode::UNAUTHORIZED,
                "invalid",
                Some(("invalid_token", d)),
                "Unauthorized: invalid credentials",
            ),
            Failure::Expired(d) => (
                StatusCode::UNAUTHORIZED,
                "expired",
                Some(("invalid_token", d)),
                "Unauthorized: credentials expired or not yet valid",
            ),
            Failure::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                Some(("insufficient_scope", "")),
                "Forbidden: the identity lacks a required claim",
            ),
        };
        Denial {
            status,
            reason,
            challenges: self.challenges(error),
            message,
        }
    }

    /// Decide on a request by its headers.
    pub async fn check(&self, headers: &HeaderMap) -> Outcome {
        match self.identify(headers).await {
            Ok(user) => {
                Outcome::Allowed(user.and_then(|u| HeaderValue::from_bytes(u.as_bytes()).ok()))
            }
            Err(f) => Outcome::Denied(self.deny(f)),
        }
    }

    async fn identify(&self, headers: &HeaderMap) -> Result<Option<String>, Failure> {
        let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
        let Some(value) = all.next() else {
            return Err(Failure::Missing);
        };
        if all.next().is_some() {
            return Err(Failure::BadRequest("more than one Authorization header"));
        }
        let value = value
            .to_str()
            .map_err(|_| Failure::BadRequest("non-ASCII Authorization header"))?
            .trim_matches([' ', '\t']);
        // RFC 9110 §11.4: auth-scheme 1*SP token68; the scheme is case-insensitive,
        // the credential is not.
        let (scheme, cred) = value
            .split_once(' ')
            .ok_or(Failure::BadRequest("expected \"<scheme> <credentials>\""))?;
        let cred = cred.trim_start_matches(' ');
        if cred.is_empty() || cred.contains([' ', '\t', ',']) {
            return Err(Failure::BadRequest("the credentials must be one token"));
        }
        if scheme.eq_ignore_ascii_case("bearer") && self.takes_bearer() {
            self.bearer(cred).map(Some)
        } else if scheme.eq_ignore_ascii_case("basic") && !self.basic.is_empty() {
            self.basic(cred).await.map(Some)
        } else {
            Err(Failure::Invalid("unsupported authorization scheme"))
        }
    }

    fn bearer(&self, token: &str) -> Result<String, Failure> {
        if !self.bearer.is_empty() {
            let h = sha256(token.as_bytes());
            // Compare with every stored hash: no early exit.
            let mut found = None;
            for (name, stored) in &self.bearer {
                if ct_eq(&h, stored) && found.is_none() {
                    found = Some(name);
                }
            }
            if let Some(name) = found {
                return Ok(name.clone());
            }
        }
        let Some(v) = &self.jwt else {
            return Err(Failure::Invalid("unknown token"));
        };
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(Failure::Invalid("unknown token"));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let claims = v.verify(token, now).map_err(|e| match e.reason() {
            "expired" => Failure::Expired(e.description()),
            _ => Failure::Invalid(e.description()),
        })?;
        if v.missing_claim(&claims).is_some() {
            return Err(Failure::Forbidden);
        }
        Ok(claims
            .get("sub")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_owned())
    }

    async fn basic(&self, cred: &str) -> Result<String, Failure> {
        let bad = Failure::BadRequest("Basic credentials must be base64 of \"user:password\"");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(cred)
            .map_err(|_| bad)?;
        let text = String::from_utf8(raw).map_err(|_| {
            Failure::BadRequest("Basic credentials must be base64 of \"user:password\"")
        })?;
        let Some((user, pass)) = text.split_once(':') else {
            return Err(Failure::BadRequest(
                "Basic credentials must be base64 of \"user:password\"",
            ));
        };
        let entry = self.basic.get(user);
        let cache_key = entry.map(|(stored, _)| {
            let mut k = Vec::with_capacity(user.len() + pass.len() + stored.len() + 2);
            k.extend_from_slice(user.as_bytes());
            k.push(0);
            k.extend_from_slice(pass.as_bytes());
            k.push(0);
            k.extend_from_slice(stored.as_bytes());
            sha256(&k)
        });
        if let Some(k) = &cache_key
            && self.cache.lock().expect("auth cache").contains(k)
        {
            return Ok(user.to_owned());
        }
        let hash = match entry {
            Some((_, h)) => h.clone(),
            None => self.decoy.clone().ok_or(Failure::Invalid("unknown user"))?,
        };
        let Ok(_permit) = HASHING.acquire().await else {
            return Err(Failure::Invalid("password check unavailable"));
        };
        let pass = pass.as_bytes().to_vec();
        let ok = tokio::task::spawn_blocking(move || hash.verify(&pass))
            .await
            .unwrap_or(false);
        match (ok, entry, cache_key) {
            (true, Some(_), Some(k)) => {
                let mut c = self.cache.lock().expect("auth cache");
                if c.len() >= CACHE_ENTRIES {
                    c.clear();
                }
                c.insert(k);
                Ok(user.to_owned())
            }
            _ => Err(Failure::Invalid("wrong user or password")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> Policy {
        let cfg: AuthConfig = toml::from_str(toml_text).unwrap();
        assert!(
            cfg.problems("auth").is_empty(),
            "{:?}",
            cfg.problems("auth")
        );
        Policy::load(&cfg, "auth").unwrap()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    async fn decide(
        p: &Policy,
        values: &[&str],
    ) -> Result<String, (u16, &'static str, Vec<String>)> {
        match p.check(&headers(values)).await {
            Outcome::Allowed(u) => Ok(u
                .map(|u| u.to_str().unwrap().to_owned())
                .unwrap_or_default()),
            Outcome::Denied(d) => Err((
                d.status.as_u16(),
                d.reason,
                d.challenges
                    .iter()
                    .map(|c| c.to_str().unwrap().to_owned())
                    .collect(),
            )),
        }
    }

    #[tokio::test]
    async fn bearer_and_basic() {
        let basic = password::Pbkdf2Hash::derive(10_000, "saltsalt", b"s3cret");
        let p = policy(&format!(
            "realm = \"api\"\n[bearer]\nci = \"{}\"\n[basic]\nalice = \"{basic}\"\n",
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        ));
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(decide(&p, &["Bearer password"]).await.unwrap(), "ci");
        assert_eq!(decide(&p, &["bearer  password "]).await.unwrap(), "ci");
        let basic_ok = format!("Basic {}", b64("alice:s3cret"));
        assert_eq!(decide(&p, &[&basic_ok]).await.unwrap(), "alice");
        // Again, from the cache.
        assert_eq!(decide(&p, &[&basic_ok]).await.unwrap(), "alice");
        let (st, reason, ch) = decide(&p, &[]).await.unwrap_err();
        assert_eq!((st, reason), (401, "missing"));
        assert_eq!(
            ch,
            [
                "Bearer realm=\"api\"",
                "Basic realm=\"api\", charset=\"UTF-8\""
            ]
        );
        for (v, status, reason) in [
            ("Bearer Password", 401, "invalid"),
            ("Bearer passwordx", 401, "invalid"),
            ("Bearer pass word", 400, "malformed"),
            ("Bearer", 400, "malformed"),
            ("Token password", 401, "invalid"),
            ("Basic !!!", 400, "malformed"),
        ] {
            let (s, r, _) = decide(&p, &[v]).await.unwrap_err();
            assert_eq!((s, r), (status, reason), "{v}");
        }
        let wrong = format!("Basic {}", b64("alice:S3cret"));
        assert_eq!(decide(&p, &[&wrong]).await.unwrap_err().0, 401);
        let nobody = format!("Basic {}", b64("bob:s3cret"));
        assert_eq!(decide(&p, &[&nobody]).await.unwrap_err().0, 401);
        let (s, _, ch) = decide(&p, &["Bearer password", "Bearer password"])
            .await
            .unwrap_err();
        assert_eq!(s, 400);
        assert!(ch[0].contains("error=\"invalid_request\""), "{ch:?}");
    }

    #[test]
    fn config_problems_name_their_key() {
        let cfg: AuthConfig = toml::from_str(
            "realm = 'a\"b'\nbearers = 1\n[bearer]\nci = \"password\"\n[basic]\n\"a:b\" = \"plain\"\n\
             [jwt]\nleeway_sec = 301\nkeys = [{ alg = \"none\", file = \"\" }, { alg = \"HS256\", file = \"/k\", kid = \"x\" }, { alg = \"RS256\", file = \"/k\", kid = \"x\", mode = 1 }]\n",
        )
        .unwrap();
        let got: Vec<String> = cfg
            .problems("gateway.routes[0].auth")
            .into_iter()
            .map(|(k, r)| format!("{k}: {r}"))
            .collect();
        for want in [
            "gateway.routes[0].auth.bearers: unknown key",
            "gateway.routes[0].auth.realm: ",
            "gateway.routes[0].auth.bearer.ci: must be the token's SHA-256",
            "gateway.routes[0].auth.basic.a:b: a user name must be non-empty, without ':'",
            "gateway.routes[0].auth.basic.a:b: must be \"pbkdf2_sha256$",
            "gateway.routes[0].auth.jwt.keys[0].alg: \"none\" is not supported",
            "gateway.routes[0].auth.jwt.keys[0].file: is required",
            "gateway.routes[0].auth.jwt.keys[2].mode: unknown key",
            "gateway.routes[0].auth.jwt.keys[2].kid: \"x\" is used by another key",
            "gateway.routes[0].auth.jwt.leeway_sec: 301 is more than 300",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "missing {want:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), 10, "{got:#?}");
        let empty: AuthConfig = toml::from_str("realm = \"x\"").unwrap();
        assert!(empty.problems("a")[0].1.contains("lists no credentials"));
    }
}

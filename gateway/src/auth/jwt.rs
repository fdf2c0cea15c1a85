//! JSON Web Token verification (RFC 7519 / 7515) on `ring`, `serde_json` and `base64`,
//! all three already linked into narund: no JWT crate.
//!
//! What is checked, in order, and why:
//!
//! 1. Shape: three segments of unpadded base64url (canonical: no padding, no stray
//!    bits), ≤ [`MAX_TOKEN_LEN`] bytes; the header is a JSON object.
//! 2. `alg` picks nothing by itself: every configured key is bound to *one* algorithm, and
//!    only keys whose algorithm equals the header's `alg` are tried (a `kid` narrows
//!    them further). So `alg: none` matches no key, and an HS256 token "signed" with an RSA
//!    public key (the classic algorithm confusion) is never checked against that public
//!    key as an HMAC secret. A `crit` header is refused (RFC 7515 §4.1.11: no extension is
//!    understood).
//! 3. The signature over `header.payload`, before the claims are even parsed.
//! 4. `exp` (required unless `require_exp = false`) and `nbf`, with the configured leeway;
//!    `iss` equal to `issuer`; `aud` (a string or an array) naming one `audience`.
//! 5. Then, separately ([`missing_claim`]), the required claims: a verified identity that
//!    lacks one is a 403, not a 401.

use super::config::{ClaimValue, JwtConfig};
use base64::Engine;
use ring::signature::{self, UnparsedPublicKey};
use serde_json::{Map, Value};
use tokio_rustls::rustls::pki_types::SubjectPublicKeyInfoDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

/// Longest token accepted (the whole compact serialization).
pub const MAX_TOKEN_LEN: usize = 8192;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A signature algorithm (RFC 7518 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    HS256,
    RS256,
    EdDSA,
}

impl Alg {
    pub fn parse(s: &str) -> Option<Alg> {
        match s {
            "HS256" => Some(Alg::HS256),
            "RS256" => Some(Alg::RS256),
            "EdDSA" => Some(Alg::EdDSA),
            _ => None,
        }
    }
}

enum KeyMaterial {
    Hmac(ring::hmac::Key),
    /// PKCS#1 `RSAPublicKey` DER, as ring takes it.
    Rsa(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// One verification key, bound to its algorithm.
pub struct VerifyKey {
    alg: Alg,
    kid: Option<String>,
    key: KeyMaterial,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyKey({:?}, kid {:?})", self.alg, self.kid)
    }
}

/// One DER TLV: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// SubjectPublicKeyInfo DER → (algorithm OID, public key bytes).
fn spki(der_bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (0x30, seq, _) = der(der_bytes)? else {
        return None;
    };
    let (0x30, alg, rest) = der(seq)? else {
        return None;
    };
    let (0x06, oid, _) = der(alg)? else {
        return None;
    };
    let (0x03, bits, _) = der(rest)? else {
        return None;
    };
    let (0, key) = bits.split_first()? else {
        return None;
    };
    Some((oid, key))
}

/// Bits of an RSA modulus in a PKCS#1 `RSAPublicKey`.
fn rsa_bits(pkcs1: &[u8]) -> Option<usize> {
    let (0x30, seq, _) = der(pkcs1)? else {
        return None;
    };
    let (0x02, n, _) = der(seq)? else {
        return None;
    };
    let n = match n.split_first() {
        Some((0, rest)) => rest,
        _ => n,
    };
    Some(n.len() * 8)
}

impl VerifyKey {
    /// A key from its file's bytes: HS256 = the secret (trailing whitespace removed,
    /// ≥ 32 bytes, RFC 7518 §3.2); RS256 / EdDSA = a PEM `PUBLIC KEY` (SPKI) of that type.
    pub fn load(alg: Alg, kid: Option<String>, bytes: &[u8]) -> Result<VerifyKey, String> {
        let key = match alg {
            Alg::HS256 => {
                let secret = bytes.trim_ascii_end();
                if secret.len() < 32 {
                    return Err(format!(
                        "an HS256 secret must have at least 32 bytes (RFC 7518 §3.2); this one has {}",
                        secret.len()
                    ));
                }
                KeyMaterial::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
            }
            Alg::RS256 | Alg::EdDSA => {
                let der = SubjectPublicKeyInfoDer::from_pem_slice(bytes).map_err(|e| {
                    format!(
                        "no PEM \"PUBLIC KEY\" block ({e}); export one with `openssl pkey -pubout`"
                    )
                })?;
                let Some((oid, key)) = spki(der.as_ref()) else {
                    return Err("the PUBLIC KEY block is not a valid SubjectPublicKeyInfo".into());
                };
                match alg {
                    Alg::RS256 => {
                        if oid != OID_RSA {
                            return Err(
                                "alg RS256 needs an RSA public key; this is another kind of key"
                                    .into(),
                            );
                        }
                        match rsa_bits(key) {
                            Some(bits) if bits >= 2048 => {}
                            Some(bits) => {
                                return Err(format!(
                                    "the RSA key has {bits} bits; RS256 needs at least 2048"
                                ));
                            }
                            None => return Err("the RSA public key cannot be parsed".into()),
                        }
                        KeyMaterial::Rsa(key.to_vec())
                    }
                    _ => {
                        if oid != OID_ED25519 || key.len() != 32 {
                            return Err("alg EdDSA needs an Ed25519 public key; this is another kind of key".into());
                        }
                        KeyMaterial::Ed25519(key.to_vec())
                    }
                }
            }
        };
        Ok(VerifyKey { alg, kid, key })
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match &self.key {
            KeyMaterial::Hmac(k) => ring::hmac::verify(k, msg, sig).is_ok(),
            KeyMaterial::Rsa(k) => {
                UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, k)
                    .verify(msg, sig)
                    .is_ok()
            }
            KeyMaterial::Ed25519(k) => UnparsedPublicKey::new(&signature::ED25519, k)
                .verify(msg, sig)
                .is_ok(),
        }
    }
}

/// Why a token was refused (all are 401 `invalid_token`); the text goes into
/// `error_description` and the log, never anything from the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    /// No configured key for the header's `alg` (and `kid`): `none`, confusion, unknown.
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    MissingExp,
    Issuer,
    Audience,
}

impl JwtError {
    pub fn description(self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed token",
            JwtError::Algorithm => "no key for the token's alg/kid",
            JwtError::Signature => "bad signature",
            JwtError::Expired => "token expired",
            JwtError::NotYetValid => "token not yet valid",
            JwtError::MissingExp => "token has no exp",
            JwtError::Issuer => "wrong issuer",
            JwtError::Audience => "wrong audience",
        }
    }

    /// The bounded `reason` label of `gateway_auth_failures_total`.
    pub fn reason(self) -> &'static str {
        match self {
            JwtError::Expired | JwtError::NotYetValid => "expired",
            JwtError::Malformed => "malformed",
            _ => "invalid",
        }
    }
}

/// The JWT rules of a route, with its keys loaded.
pub struct Verifier {
    pub keys: Vec<VerifyKey>,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub leeway: i64,
    pub require_exp: bool,
    pub claims: Vec<(String, ClaimValue)>,
}

impl Verifier {
    pub fn new(cfg: &JwtConfig, keys: Vec<VerifyKey>) -> Verifier {
        Verifier {
            keys,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway_sec as i64,
            require_exp: cfg.require_exp,
            claims: cfg
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Verify `token` at time `now` (Unix seconds); the claims on success.
    pub fn verify(&self, token: &str, now: i64) -> Result<Map<String, Value>, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Map<String, Value> = B64
            .decode(h64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        if header.contains_key("crit") {
            return Err(JwtError::Malformed);
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Alg::parse)
            .ok_or(JwtError::Algorithm)?;
        let kid = header.get("kid").and_then(Value::as_str);
        let sig = B64.decode(s64).map_err(|_| JwtError::Malformed)?;
        let signed = &token[..h64.len() + 1 + p64.len()];
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| k.alg == alg)
            .filter(|k| match (kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .peekable();
        if candidates.peek().is_none() {
            return Err(JwtError::Algorithm);
        }
        if !candidates.any(|k| k.verify(signed.as_bytes(), &sig)) {
            return Err(JwtError::Signature);
        }
        let claims: Map<String, Value> = B64
            .decode(p64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        let time = |name: &str| -> Result<Option<i64>, JwtError> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| Some(f.floor() as i64))
                    .ok_or(JwtError::Malformed),
            }
        };
        match time("exp")? {
            Some(exp) if now > exp.saturating_add(self.leeway) => return Err(JwtError::Expired),
            None if self.require_exp => return Err(JwtError::MissingExp),
            _ => {}
        }
        if let Some(nbf) = time("nbf")?
            && now.saturating_add(self.leeway) < nbf
        {
            return Err(JwtError::NotYetValid);
        }
        if let Some(iss) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(iss.as_str())
        {
            return Err(JwtError::Issuer);
        }
        if !self.audience.is_empty() {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => self.audience.contains(a),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.audience.iter().any(|w| w == a)),
                _ => false,
            };
            if !ok {
                return Err(JwtError::Audience);
            }
        }
        Ok(claims)
    }

    /// The first required claim the identity lacks (a 403), if any.
    pub fn missing_claim(&self, claims: &Map<String, Value>) -> Option<&str> {
        self.claims
            .iter()
            .find(|(name, want)| !has_claim(claims.get(name.as_str()), name, want))
            .map(|(n, _)| n.as_str())
    }
}

fn has_claim(got: Option<&Value>, name: &str, want: &ClaimValue) -> bool {
    let Some(got) = got else { return false };
    let one = |v: &Value| -> bool {
        match (want, v) {
            (ClaimValue::Bool(w), Value::Bool(g)) => w == g,
            (ClaimValue::Int(w), Value::Number(g)) => g.as_i64() == Some(*w),
            (ClaimValue::One(w), Value::String(g)) => {
                g == w || (matches!(name, "scope" | "scp") && g.split(' ').any(|s| s == w))
            }
            (ClaimValue::Any(ws), Value::String(g)) => ws.iter().any(|w| {
                g == w || (matches!(name, "scope" | "scp") && g.split(' ').any(|s| s == w))
            }),
            _ => false,
        }
    };
    match got {
        Value::Array(items) => items.iter().any(one),
        v => one(v),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::signature::KeyPair;

    /// Sign `header`/`claims` JSON with `sign` (compact serialization).
    pub fn token(header: &str, claims: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let msg = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let sig = sign(msg.as_bytes());
        format!("{msg}.{}", B64.encode(sig))
    }

    pub fn hs256(secret: &[u8]) -> impl Fn(&[u8]) -> Vec<u8> {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        move |m| ring::hmac::sign(&k, m).as_ref().to_vec()
    }

    fn verifier(keys: Vec<VerifyKey>) -> Verifier {
        let cfg = JwtConfig {
            audience: vec!["api".into()],
            issuer: Some("idp".into()),
            ..Default::default()
        };
        Verifier::new(&cfg, keys)
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_800_000_000;

    #[test]
    fn hs256_claims_and_times() {
        let v = verifier(vec![VerifyKey::load(Alg::HS256, None, SECRET).unwrap()]);
        let ok = |claims: &str| v.verify(&token(r#"{"alg":"HS256"}"#, claims, hs256(SECRET)), NOW);
        let c = format!(r#"{{"iss":"idp","aud":"api","exp":{}}}"#, NOW + 10);
        assert!(ok(&c).is_ok());
        let c = format!(r#"{{"iss":"idp","aud":["x","api"],"exp":{}}}"#, NOW - 29);
        assert!(ok(&c).is_ok(), "inside the leeway");
        let c = format!(r#"{{"iss":"idp","aud":"api","exp":{}}}"#, NOW - 31);
        assert_eq!(ok(&c), Err(JwtError::Expired));
        let c = format!(
            r#"{{"iss":"idp","aud":"api","exp":{},"nbf":{}}}"#,
            NOW + 99,
            NOW + 31
        );
        assert_eq!(ok(&c), Err(JwtError::NotYetValid));
        assert_eq!(
            ok(r#"{"iss":"idp","aud":"api"}"#),
            Err(JwtError::MissingExp)
        );
        let c = format!(r#"{{"iss":"idp","aud":"other","exp":{}}}"#, NOW + 10);
        assert_eq!(ok(&c), Err(JwtError::Audience));
        let c = format!(r#"{{"iss":"idp","exp":{}}}"#, NOW + 10);
        assert_eq!(ok(&c), Err(JwtError::Audience));
        let c = format!(r#"{{"iss":"evil","aud":"api","exp":{}}}"#, NOW + 10);
        assert_eq!(ok(&c), Err(JwtError::Issuer));
        let c = r#"{"iss":"idp","aud":"api","exp":"tomorrow"}"#;
        assert_eq!(ok(c), Err(JwtError::Malformed));
        // Wrong secret, alg none, unknown alg, crit, garbage.
        let c = format!(r#"{{"iss":"idp","aud":"api","exp":{}}}"#, NOW + 10);
        let t = token(
            r#"{"alg":"HS256"}"#,
            &c,
            hs256(b"another secret of 32 bytes.....!"),
        );
        assert_eq!(v.verify(&t, NOW), Err(JwtError::Signature));
        let t = token(r#"{"alg":"none"}"#, &c, |_| vec![]);
        assert_eq!(v.verify(&t, NOW), Err(JwtError::Algorithm));
        let t = token(r#"{"alg":"hs256"}"#, &c, hs256(SECRET));
        assert_eq!(v.verify(&t, NOW), Err(JwtError::Algorithm));
        let t = token(r#"{"alg":"HS256","crit":["x"]}"#, &c, hs256(SECRET));
        assert_eq!(v.verify(&t, NOW), Err(JwtError::Malformed));
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.e30", "e30.e30.e30="] {
            assert!(v.verify(bad, NOW).is_err(), "{bad}");
        }
        // A padded or re-encoded signature is not the same token.
        let t = token(r#"{"alg":"HS256"}"#, &c, hs256(SECRET));
        assert!(v.verify(&format!("{t}="), NOW).is_err());
    }

    #[test]
    fn keys_are_bound_to_one_algorithm() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(pair.public_key().as_ref());
        let pem_text = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&spki)
        );
        let ed = VerifyKey::load(Alg::EdDSA, Some("ed".into()), pem_text.as_bytes()).unwrap();
        let v = verifier(vec![ed]);
        let c = format!(r#"{{"iss":"idp","aud":"api","exp":{}}}"#, NOW + 10);
        let t = token(r#"{"alg":"EdDSA","kid":"ed"}"#, &c, |m| {
            pair.sign(m).as_ref().to_vec()
        });
        assert!(v.verify(&t, NOW).is_ok());
        let t = token(r#"{"alg":"EdDSA","kid":"other"}"#, &c, |m| {
            pair.sign(m).as_ref().to_vec()
        });
        assert_eq!(v.verify(&t, NOW), Err(JwtError::Algorithm));
        // Confusion: an HS256 token whose HMAC key is the public key file's bytes.
        let t = token(r#"{"alg":"HS256"}"#, &c, hs256(pem_text.as_bytes()));
        assert_eq!(v.verify(&t, NOW), Err(JwtError::Algorithm));
        // The wrong kind of key for the algorithm is refused at load time.
        assert!(VerifyKey::load(Alg::RS256, None, pem_text.as_bytes()).is_err());
        assert!(VerifyKey::load(Alg::EdDSA, None, SECRET).is_err());
        assert!(VerifyKey::load(Alg::HS256, None, b"short\n").is_err());
    }

    #[test]
    fn required_claims() {
        let mut cfg = JwtConfig::default();
        cfg.claims
            .insert("role".into(), ClaimValue::One("admin".into()));
        cfg.claims.insert(
            "scope".into(),
            ClaimValue::Any(vec!["write".into(), "all".into()]),
        );
        cfg.claims.insert("mfa".into(), ClaimValue::Bool(true));
        let v = Verifier::new(&cfg, vec![]);
        let m = |s: &str| serde_json::from_str::<Map<String, Value>>(s).unwrap();
        assert_eq!(
            v.missing_claim(&m(
                r#"{"role":["user","admin"],"scope":"read write","mfa":true}"#
            )),
            None
        );
        assert_eq!(
            v.missing_claim(&m(r#"{"role":"Admin","scope":"write","mfa":true}"#)),
            Some("role")
        );
        assert_eq!(
            v.missing_claim(&m(r#"{"role":"admin","scope":"read writer","mfa":true}"#)),
            Some("scope")
        );
        assert_eq!(
            v.missing_claim(&m(r#"{"role":"admin","scope":"all","mfa":"true"}"#)),
            Some("mfa")
        );
    }
}

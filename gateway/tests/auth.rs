//! API authorization (`[gateway.routes.auth]`) attacked through a real gateway, a real
//! nats-server and a real app: every refusal must come from the gateway, and what the app
//! receives must carry no credential and only the gateway's idea of the identity.

mod common;

use base64::Engine;
use common::*;
use http::{Request, StatusCode};
use narun_test_support::NatsServer;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// `printf %s ci-token-0123456789 | sha256sum`
const TOKEN: &str = "ci-token-0123456789";
const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes";

struct Keys {
    _dir: tempfile::TempDir,
    rsa: ring::signature::RsaKeyPair,
    ed: ring::signature::Ed25519KeyPair,
    rsa_pub_pem: Vec<u8>,
    toml: String,
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p("rsa.pem"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &p("rsa.pem"),
        "-pubout",
        "-out",
        &p("rsa.pub"),
    ]);
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", &p("ed.pem")]);
    openssl(&["pkey", "-in", &p("ed.pem"), "-pubout", "-out", &p("ed.pub")]);
    std::fs::write(p("hs.key"), format!("{HS_SECRET}\n")).unwrap();
    let der = |f: &str| PrivatePkcs8KeyDer::from_pem_file(Path::new(&p(f))).unwrap();
    let rsa = ring::signature::RsaKeyPair::from_pkcs8(der("rsa.pem").secret_pkcs8_der()).unwrap();
    let ed = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(
        der("ed.pem").secret_pkcs8_der(),
    )
    .unwrap();
    let sha = hex(ring::digest::digest(&ring::digest::SHA256, TOKEN.as_bytes()).as_ref());
    let basic =
        narun_gateway::auth::password::Pbkdf2Hash::derive(10_000, "a-salt-value", b"s3cret pass");
    let toml = format!(
        r#"
[gateway]
request_timeout_sec = 10

[[gateway.routes]]
path = "/open/"
service = "api"

[[gateway.routes]]
path = "/bearer/"
service = "api"
[gateway.routes.auth]
realm = "tokens"
bearer = {{ ci = "{sha}" }}

[[gateway.routes]]
path = "/basic/"
service = "api"
[gateway.routes.auth]
basic = {{ alice = "{basic}" }}

[[gateway.routes]]
path = "/jwt/"
service = "api"
[gateway.routes.auth.jwt]
keys = [{{ alg = "RS256", file = "{rsa}", kid = "rsa-1" }}, {{ alg = "HS256", file = "{hs}" }}, {{ alg = "EdDSA", file = "{ed}" }}]
issuer = "https://id.example"
audience = ["api"]

[[gateway.routes]]
path = "/admin/"
service = "api"
[gateway.routes.auth.jwt]
keys = [{{ alg = "RS256", file = "{rsa}" }}]
claims = {{ role = "admin" }}

[[gateway.routes]]
path = "/fwd/"
service = "api"
[gateway.routes.auth]
forward_auth = true
bearer = {{ ci = "{sha}" }}
"#,
        rsa = p("rsa.pub"),
        hs = p("hs.key"),
        ed = p("ed.pub"),
    );
    Keys {
        rsa_pub_pem: std::fs::read(p("rsa.pub")).unwrap(),
        _dir: dir,
        rsa,
        ed,
        toml,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jwt(header: &str, claims: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let msg = format!("{}.{}", B64URL.encode(header), B64URL.encode(claims));
    let sig = sign(msg.as_bytes());
    format!("{msg}.{}", B64URL.encode(sig))
}

fn rs256(k: &ring::signature::RsaKeyPair) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
    |m| {
        let mut sig = vec![0; k.public().modulus_len()];
        k.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            m,
            &mut sig,
        )
        .unwrap();
        sig
    }
}

fn hs256(secret: &[u8]) -> impl Fn(&[u8]) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    move |m| ring::hmac::sign(&k, m).as_ref().to_vec()
}

struct Setup {
    _server: NatsServer,
    gw: GatewayRun,
    api: EchoService,
    keys: Keys,
}

async fn setup() -> Setup {
    let keys = keys();
    let server = NatsServer::start();
    let client = server.connect().await;
    let api = echo_service(&client, "api").await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(gw_client, &keys.toml).await;
    Setup {
        _server: server,
        gw,
        api,
        keys,
    }
}

async fn call(s: &Setup, path: &str, auth: &[&str], extra: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(s.gw.url(path));
    for a in auth {
        b = b.header("authorization", *a);
    }
    for (n, v) in extra {
        b = b.header(*n, *v);
    }
    send(b.body(full("")).unwrap()).await
}

fn challenges(r: &Reply) -> Vec<String> {
    r.headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The app's view of the request headers (the echo service's JSON).
fn app_headers(r: &Reply) -> serde_json::Value {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["headers"].clone()
}

#[tokio::test]
async fn bearer_tokens_and_basic_auth() {
    let s = setup().await;
    // No credential: 401 with the challenge, and the app never hears of it.
    let r = call(&s, "/bearer/x", &[], &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenges(&r), ["Bearer realm=\"tokens\""]);
    assert_eq!(s.api.count(), 0);

    // The token: let through, the credential stripped, the identity set by the gateway
    // (a client's own Narun-Auth-User replaced).
    let bearer = format!("Bearer {TOKEN}");
    let r = call(&s, "/bearer/x", &[&bearer], &[("narun-auth-user", "root")]).await;
    let h = app_headers(&r);
    assert!(h.get("authorization").is_none(), "{h}");
    assert_eq!(h["narun-auth-user"], "ci");
    // The scheme is case-insensitive and spaces around are fine...
    let r = call(&s, "/bearer/x", &[&format!("bEaReR   {TOKEN} ")], &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // ...the token is not.
    for bad in [
        format!("Bearer {}", TOKEN.to_uppercase()),
        format!("Bearer {TOKEN}x"),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        format!("Basic {TOKEN}"),
        format!("Token {TOKEN}"),
    ] {
        let r = call(&s, "/bearer/x", &[&bad], &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}: {}", r.text());
        let desc = if bad.starts_with("Bearer") {
            "unknown token"
        } else {
            "unsupported authorization scheme"
        };
        assert_eq!(
            challenges(&r),
            [format!(
                "Bearer realm=\"tokens\", error=\"invalid_token\", error_description=\"{desc}\""
            )],
            "{bad}"
        );
    }
    // Whitespace inside the token, an empty one, two Authorization headers: 400.
    for bad in [
        vec![format!("Bearer {} {}", &TOKEN[..4], &TOKEN[4..])],
        vec!["Bearer".into()],
        vec![bearer.clone(), bearer.clone()],
    ] {
        let refs: Vec<&str> = bad.iter().map(String::as_str).collect();
        let r = call(&s, "/bearer/x", &refs, &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}: {}", r.text());
        assert!(
            challenges(&r)[0].contains("error=\"invalid_request\""),
            "{:?}",
            challenges(&r)
        );
    }

    // Basic.
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    let r = call(&s, "/basic/", &[], &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenges(&r), ["Basic realm=\"narun\", charset=\"UTF-8\""]);
    let ok = format!("Basic {}", b64("alice:s3cret pass"));
    let h = app_headers(&call(&s, "/basic/", &[&ok], &[]).await);
    assert!(h.get("authorization").is_none(), "{h}");
    assert_eq!(h["narun-auth-user"], "alice");
    for bad in [
        "alice:s3cret Pass",
        "alice:s3cret pass ",
        "bob:s3cret pass",
        "alice",
        ":",
    ] {
        let r = call(&s, "/basic/", &[&format!("Basic {}", b64(bad))], &[]).await;
        assert!(
            r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::BAD_REQUEST,
            "{bad}: {}",
            r.status
        );
    }

    // Open routes pass Authorization on, but never a client's Narun-Auth-User.
    let h = app_headers(
        &call(
            &s,
            "/open/",
            &["Bearer whatever"],
            &[("narun-auth-user", "root")],
        )
        .await,
    );
    assert_eq!(h["authorization"], "Bearer whatever");
    assert!(h.get("narun-auth-user").is_none(), "{h}");
    // forward_auth = true: the app gets the credential too.
    let h = app_headers(&call(&s, "/fwd/", &[&bearer], &[]).await);
    assert_eq!(h["authorization"], bearer.as_str());

    // Every refusal is counted, by route and reason; none reached the app.
    let m = get(&s.gw.metrics_url("/metrics")).await.text();
    for line in [
        "gateway_auth_failures_total{path=\"/bearer/\",reason=\"missing\"} 1",
        "gateway_auth_failures_total{path=\"/bearer/\",reason=\"invalid\"} 5",
        "gateway_auth_failures_total{path=\"/bearer/\",reason=\"malformed\"} 3",
        "gateway_auth_failures_total{path=\"/basic/\",reason=\"missing\"} 1",
    ] {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
    assert_eq!(s.api.count(), 5, "only the accepted requests reach the app");
}

#[tokio::test]
async fn jwt_signature_times_audience_and_claims() {
    let s = setup().await;
    let t = now();
    let good = format!(
        r#"{{"sub":"user-7","iss":"https://id.example","aud":"api","exp":{},"nbf":{}}}"#,
        t + 60,
        t - 5
    );
    let bearer = |tok: &str| format!("Bearer {tok}");
    // RS256 (kid), HS256, EdDSA: accepted, `sub` is the identity, the token stripped.
    for tok in [
        jwt(
            r#"{"alg":"RS256","kid":"rsa-1","typ":"JWT"}"#,
            &good,
            rs256(&s.keys.rsa),
        ),
        jwt(r#"{"alg":"HS256"}"#, &good, hs256(HS_SECRET.as_bytes())),
        jwt(r#"{"alg":"EdDSA"}"#, &good, |m| {
            s.keys.ed.sign(m).as_ref().to_vec()
        }),
    ] {
        let h = app_headers(&call(&s, "/jwt/", &[&bearer(&tok)], &[]).await);
        assert_eq!(h["narun-auth-user"], "user-7");
        assert!(h.get("authorization").is_none(), "{h}");
    }

    let refused = |claims: String, desc: &'static str| (claims, desc);
    let mut attacks: Vec<(String, String, &str)> = Vec::new();
    for (claims, desc) in [
        refused(
            format!(
                r#"{{"iss":"https://id.example","aud":"api","exp":{}}}"#,
                t - 60
            ),
            "token expired",
        ),
        refused(
            format!(
                r#"{{"iss":"https://id.example","aud":"api","exp":{},"nbf":{}}}"#,
                t + 600,
                t + 300
            ),
            "token not yet valid",
        ),
        refused(
            format!(
                r#"{{"iss":"https://id.example","aud":"other","exp":{}}}"#,
                t + 60
            ),
            "wrong audience",
        ),
        refused(
            format!(
                r#"{{"iss":"https://evil.example","aud":"api","exp":{}}}"#,
                t + 60
            ),
            "wrong issuer",
        ),
        refused(
            r#"{"iss":"https://id.example","aud":"api"}"#.to_owned(),
            "token has no exp",
        ),
    ] {
        attacks.push((
            format!("claims {claims}"),
            jwt(r#"{"alg":"RS256"}"#, &claims, rs256(&s.keys.rsa)),
            desc,
        ));
    }
    // alg=none, with and without a signature.
    attacks.push((
        "alg none".into(),
        jwt(r#"{"alg":"none"}"#, &good, |_| vec![]),
        "no key for the token's alg/kid",
    ));
    attacks.push((
        "alg None".into(),
        jwt(r#"{"alg":"None"}"#, &good, |_| vec![1]),
        "no key for the token's alg/kid",
    ));
    // Algorithm confusion: HS256 "signed" with the RSA public key file as the secret.
    attacks.push((
        "HS256 with the RS256 public key".into(),
        jwt(r#"{"alg":"HS256"}"#, &good, hs256(&s.keys.rsa_pub_pem)),
        "bad signature",
    ));
    // Unknown kid; a claim changed after signing; a signature from another key.
    attacks.push((
        "unknown kid".into(),
        jwt(
            r#"{"alg":"RS256","kid":"rsa-2"}"#,
            &good,
            rs256(&s.keys.rsa),
        ),
        "no key for the token's alg/kid",
    ));
    let signed = jwt(r#"{"alg":"RS256"}"#, &good, rs256(&s.keys.rsa));
    let mut parts: Vec<&str> = signed.split('.').collect();
    let forged = B64URL.encode(good.replace("user-7", "admin"));
    parts[1] = &forged;
    attacks.push(("payload changed".into(), parts.join("."), "bad signature"));
    attacks.push((
        "other HMAC secret".into(),
        jwt(
            r#"{"alg":"HS256"}"#,
            &good,
            hs256(b"another-secret-of-at-least-32-bytes!"),
        ),
        "bad signature",
    ));
    for (what, tok, desc) in &attacks {
        let r = call(&s, "/jwt/", &[&bearer(tok)], &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
        assert_eq!(
            challenges(&r),
            [format!(
                "Bearer realm=\"narun\", error=\"invalid_token\", error_description=\"{desc}\""
            )],
            "{what}"
        );
    }
    assert_eq!(s.api.count(), 3, "no refused token reached the app");

    // A valid identity without the required claim: 403, not 401.
    let claims = |role: &str| format!(r#"{{"sub":"u","role":"{role}","exp":{}}}"#, t + 60);
    let r = call(
        &s,
        "/admin/",
        &[&bearer(&jwt(
            r#"{"alg":"RS256"}"#,
            &claims("user"),
            rs256(&s.keys.rsa),
        ))],
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(
        challenges(&r),
        ["Bearer realm=\"narun\", error=\"insufficient_scope\""]
    );
    let r = call(
        &s,
        "/admin/",
        &[&bearer(&jwt(
            r#"{"alg":"RS256"}"#,
            &claims("admin"),
            rs256(&s.keys.rsa),
        ))],
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let m = get(&s.gw.metrics_url("/metrics")).await.text();
    for line in [
        "gateway_auth_failures_total{path=\"/jwt/\",reason=\"expired\"} 2",
        "gateway_auth_failures_total{path=\"/jwt/\",reason=\"invalid\"} 9",
        "gateway_auth_failures_total{path=\"/admin/\",reason=\"forbidden\"} 1",
    ] {
        assert!(m.contains(line), "missing {line:?} in\n{m}");
    }
}

#[tokio::test]
async fn a_refused_request_is_answered_before_its_body_is_read() {
    let s = setup().await;
    // A POST announcing 8 MiB but sending nothing: the 401 comes at once.
    let started = std::time::Instant::now();
    let mut c = tokio::net::TcpStream::connect(s.gw.http).await.unwrap();
    use tokio::io::AsyncWriteExt;
    c.write_all(b"POST /bearer/x HTTP/1.1\r\nHost: t\r\nContent-Length: 8000000\r\n\r\n")
        .await
        .unwrap();
    let r = narun_test_support::http1::read_response(&mut c).await;
    assert_eq!(r.status, 401, "{}", r.head);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(s.api.count(), 0);
}

#[tokio::test]
async fn bad_key_files_fail_the_bind_naming_the_key() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, "too short").unwrap();
    let text = format!(
        "[gateway]\nhttp_addr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\n\
         [[gateway.routes]]\npath = \"/a/\"\nservice = \"a\"\n\
         [gateway.routes.auth.jwt]\nkeys = [{{ alg = \"HS256\", file = {:?} }}, {{ alg = \"RS256\", file = \"/nonexistent/k.pem\" }}]\n",
        short.to_str().unwrap()
    );
    let cfg = narun_gateway::GatewayConfig::from_toml(&text).unwrap();
    let err = match narun_gateway::Gateway::bind(cfg, gateway_client(&server).await).await {
        Ok(_) => panic!("bound with bad key files"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("gateway.routes[0].auth.jwt.keys[0].file: ")
            && err.contains("at least 32 bytes"),
        "{err}"
    );
    assert!(
        err.contains("gateway.routes[0].auth.jwt.keys[1].file: cannot read \"/nonexistent/k.pem\""),
        "{err}"
    );
}

//! What Go narun left to Caddy, done by the gateway: HTTPS on the routed listener,
//! virtual hosts, and reverse-proxy routes to an HTTP service on the device — against a
//! real nats-server, real NATS apps and a real HTTP service.

mod common;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use narun_test_support::NatsServer;
use narun_test_support::http1::{RawResponse, read_response};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;

/// A CA and a server certificate for `localhost` signed by it.
fn pki(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (
        ca_cert.pem(),
        c.to_str().unwrap().to_owned(),
        k.to_str().unwrap().to_owned(),
    )
}

async fn request(io: &mut (impl AsyncRead + AsyncWrite + Unpin), head: &str) -> RawResponse {
    io.write_all(head.as_bytes()).await.unwrap();
    read_response(io).await
}

fn json(r: &RawResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

#[tokio::test]
async fn https_on_the_routed_listener() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path());
    let server = NatsServer::start();
    let client = server.connect().await;
    let api = echo_service(&client, "api").await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(
        gw_client,
        &format!(
            "[gateway]\nhttp_tls_cert = {cert:?}\nhttp_tls_key = {key:?}\n\
             [[gateway.routes]]\npath = \"/api/\"\nservice = \"api\"\n\
             [gateway.routes.auth]\nbearer = {{ ci = \"5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8\" }}\n"
        ),
    )
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let mut cc = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cc.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cc))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake with the gateway");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = request(
        &mut tls,
        "GET /api/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer password\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &json(&r)["headers"];
    assert_eq!(h["x-forwarded-proto"], "https");
    assert!(h.get("authorization").is_none(), "{h}");
    // Same connection, keep-alive: the auth still applies per request.
    let r = request(&mut tls, "GET /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(r.status, 401);
    assert_eq!(api.count(), 1);

    // Cleartext HTTP to the TLS listener gets no HTTP answer (the handshake fails).
    let mut plain = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    plain
        .write_all(
            b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer password\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut plain, &mut buf),
    )
    .await
    .expect("closed in time")
    .unwrap_or(0);
    assert!(
        !buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(api.count(), 1);

    // A missing key file fails the start, naming the key.
    let bad = narun_gateway::GatewayConfig::from_toml(&format!(
        "[gateway]\nhttp_addr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\nhttp_tls_cert = {cert:?}\nhttp_tls_key = \"/nonexistent.pem\"\n"
    ))
    .unwrap();
    let err = match narun_gateway::Gateway::bind(bad, gateway_client(&server).await).await {
        Ok(_) => panic!("bound without a key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("gateway.http_tls_key: cannot read"), "{err}");
}

#[tokio::test]
async fn virtual_hosts_pick_their_routes_by_host() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let a = echo_service(&client, "svc-a").await;
    let b = echo_service(&client, "svc-b").await;
    let d = echo_service(&client, "svc-default").await;
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(
        gw_client,
        r#"
[gateway]
[[gateway.routes]]
host = "a.example.com"
path = "/"
service = "svc-a"
[[gateway.routes]]
host = "*.b.example.com"
path = "/"
service = "svc-b"
[[gateway.routes]]
path = "/"
service = "svc-default"
"#,
    )
    .await;
    for (host, counts) in [
        ("a.example.com", (1, 0, 0)),
        ("A.Example.COM:8080", (2, 0, 0)),
        ("x.b.example.com", (2, 1, 0)),
        ("b.example.com", (2, 1, 1)),
        ("a.example.com.evil.test", (2, 1, 2)),
        ("evil.test", (2, 1, 3)),
    ] {
        let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        let r = request(&mut c, &format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
        assert_eq!(r.status, 200, "{host}");
        assert_eq!((a.count(), b.count(), d.count()), counts, "{host}");
    }
    // HTTP/2's :authority picks the host too (h2c with prior knowledge).
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://a.example.com/x")
        .body(())
        .unwrap();
    let (resp, _) = h2c.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!((a.count(), b.count(), d.count()), (3, 1, 3));
}

/// A plain HTTP/1.1 service on loopback that answers with a JSON echo of what it got;
/// `/slow` answers after 3 s, `/big` with 2 MB, `/hop` with hop-by-hop headers.
async fn http_service() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    if path == "/svc/slow" {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    let mut resp = http::Response::builder().status(200);
                    let body = if path == "/svc/big" {
                        Bytes::from(vec![b'x'; 2_000_000])
                    } else {
                        let headers: serde_json::Map<String, serde_json::Value> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").into()))
                            .collect();
                        let body = http_body_util::BodyExt::collect(req.into_body())
                            .await
                            .unwrap()
                            .to_bytes();
                        resp = resp
                            .header("connection", "x-hop-private")
                            .header("x-hop-private", "secret")
                            .header("keep-alive", "timeout=5")
                            .header("x-kept", "yes");
                        Bytes::from(
                            serde_json::json!({"path": path, "headers": headers, "body_len": body.len()})
                                .to_string(),
                        )
                    };
                    Ok::<_, Infallible>(resp.body(Full::new(body)).unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn reverse_proxy_routes_to_an_http_service() {
    let up = http_service().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let server = NatsServer::start();
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(
        gw_client,
        &format!(
            r#"
[gateway]
max_body_bytes = 1048576
[[gateway.routes]]
path = "/svc/"
proxy = "http://{up}"
timeout_sec = 1
[gateway.routes.auth]
bearer = {{ ci = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8" }}
[[gateway.routes]]
path = "/down/"
proxy = "http://{closed}"
"#
        ),
    )
    .await;
    let ask = |head: String| async move {
        let mut c = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        request(&mut c, &head).await
    };
    let auth = "Authorization: Bearer password\r\n";
    let r = ask(format!(
        "POST /svc/a/./b/../c?q=1 HTTP/1.1\r\nHost: device.local\r\n{auth}\
         Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=1\r\nTE: trailers\r\n\
         Upgrade: websocket\r\nProxy-Authorization: Basic eDp5\r\nX-Forwarded-For: 203.0.113.7\r\n\
         X-Forwarded-Proto: https\r\nContent-Length: 5\r\n\r\nhello"
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = json(&r);
    assert_eq!(j["path"], "/svc/a/c", "the normalised path");
    assert_eq!(j["body_len"], 5);
    let h = &j["headers"];
    for gone in [
        "authorization",
        "x-secret",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the service: {h}");
    }
    assert_eq!(h["host"], "device.local");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(
        h["x-forwarded-proto"], "https",
        "a proxy in front keeps its value"
    );
    assert!(h.get("x-request-id").is_some(), "{h}");
    // The service's hop-by-hop answer headers stop at the gateway.
    assert!(r.head.contains("x-kept: yes"), "{}", r.head);
    for gone in ["x-hop-private", "keep-alive"] {
        assert!(!r.head.contains(gone), "{gone}: {}", r.head);
    }
    // An HTTP/2 request's :authority becomes the service's Host.
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://h2.device.local/svc/h2")
        .header("authorization", "Bearer password")
        .body(())
        .unwrap();
    let (resp, _) = h2c.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let j: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(j["headers"]["host"], "h2.device.local", "{j}");
    // Auth applies before anything is sent.
    let r = ask("GET /svc/x HTTP/1.1\r\nHost: d\r\n\r\n".into()).await;
    assert_eq!(r.status, 401);
    // Timeout, oversized answer, unreachable service, body over the limit.
    let r = ask(format!("GET /svc/slow HTTP/1.1\r\nHost: d\r\n{auth}\r\n")).await;
    assert_eq!(r.status, 504, "{}", r.text());
    let r = ask(format!("GET /svc/big HTTP/1.1\r\nHost: d\r\n{auth}\r\n")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let r = ask("GET /down/x HTTP/1.1\r\nHost: d\r\n\r\n".into()).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let r = ask(format!(
        "POST /svc/x HTTP/1.1\r\nHost: d\r\n{auth}Content-Length: 2000000\r\n\r\n"
    ))
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
}

//! ACME against a real CA: Debian's `pebble` (Let's Encrypt's test CA) on loopback ports,
//! with `pebble-challtestsrv` as its DNS server (every name resolves to 127.0.0.1), so
//! pebble's validation reaches the gateway's listeners. The gateway starts without a
//! certificate, gets one (HTTP-01 on its plain listener, or TLS-ALPN-01 on its HTTPS
//! listener), serves it to a client that trusts only pebble's root, and a second start
//! serves the cached certificate with pebble gone.
#![cfg(feature = "acme")]

mod common;

use common::*;
use narun_gateway::{Gateway, GatewayConfig};
use narun_test_support::http1::read_response;
use narun_test_support::{NatsServer, free_ports, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

const DOMAIN: &str = "gw.narun.test";

/// A child process killed (and reaped) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// pebble and its DNS server, on free loopback ports.
struct Pebble {
    _dns: Proc,
    ca: Option<Proc>,
    acme_port: u16,
    mgmt_port: u16,
}

impl Pebble {
    /// Start them; pebble validates `DOMAIN` on `http_port` (HTTP-01) and `tls_port`
    /// (TLS-ALPN-01) of 127.0.0.1. `cert`/`key`: pebble's own HTTPS certificate.
    async fn start(dir: &Path, http_port: u16, tls_port: u16, cert: &str, key: &str) -> Pebble {
        Pebble::start_with(dir, http_port, tls_port, cert, key, None).await
    }

    /// The same; `validity_sec`: the lifetime of the certificates pebble issues.
    async fn start_with(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        cert: &str,
        key: &str,
        validity_sec: Option<u64>,
    ) -> Pebble {
        let [acme_port, mgmt_port, dns_port, dns_mgmt] = free_ports();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        // Older challtestsrv builds have no -doh flag: try again without it.
        let dns = match dns {
            Ok(mut c) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if c.try_wait().unwrap().is_some() {
                    Command::new("pebble-challtestsrv")
                        .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                        .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
                        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("pebble-challtestsrv (apt-get install pebble)")
                } else {
                    c
                }
            }
            Err(e) => panic!("pebble-challtestsrv (apt-get install pebble): {e}"),
        };
        let dns = Proc(dns);
        let mut config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = validity_sec {
            config["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let path = dir.join("pebble.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
        let ca = Command::new("pebble")
            .arg("-config")
            .arg(&path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble (apt-get install pebble)");
        let ca = Proc(ca);
        wait_for("pebble to listen", Duration::from_secs(90), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", acme_port))
                .await
                .ok()
        })
        .await;
        Pebble {
            _dns: dns,
            ca: Some(ca),
            acme_port,
            mgmt_port,
        }
    }
}

/// A CA and pebble's HTTPS certificate (localhost, 127.0.0.1) signed by it:
/// (CA PEM path, cert path, key path).
fn pebble_pki(dir: &Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    std::fs::write(p("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(p("pebble-cert.pem"), cert.pem()).unwrap();
    std::fs::write(p("pebble-key.pem"), key.serialize_pem()).unwrap();
    (p("ca.pem"), p("pebble-cert.pem"), p("pebble-key.pem"))
}

fn tls_client(roots: rustls::RootCertStore) -> tokio_rustls::TlsConnector {
    let mut cc = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cc.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cc))
}

/// pebble's root certificate, from its management endpoint (it makes a new one per run).
async fn pebble_root(mgmt_port: u16, test_ca: &str) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(test_ca).unwrap())
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", mgmt_port))
        .await
        .unwrap();
    let mut tls = tls_client(roots)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS with pebble's management endpoint");
    tls.write_all(b"GET /roots/0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf))
        .await
        .expect("pebble answers in time")
        .ok();
    let text = String::from_utf8_lossy(&buf);
    let start = text.find("-----BEGIN CERTIFICATE-----").expect(&text);
    CertificateDer::from_pem_slice(text[start..].as_bytes()).expect("pebble's root PEM")
}

/// `GET /hello/x` over HTTPS for DOMAIN at `addr`, trusting only `root`: the status and
/// the leaf certificate served, or the handshake error.
async fn https_get(
    addr: std::net::SocketAddr,
    root: &CertificateDer<'static>,
) -> Result<(u16, CertificateDer<'static>), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio::time::timeout(
        Duration::from_secs(10),
        tls_client(roots).connect(DOMAIN.try_into().unwrap(), tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    tls.write_all(format!("GET /hello/x HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let r = read_response(&mut tls).await;
    Ok((r.status, leaf))
}

/// A started gateway: the routed (HTTPS) and admin listeners, stop, its task.
type Started = (
    std::net::SocketAddr,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

async fn start(toml: &str, server: &NatsServer) -> Started {
    let cfg = GatewayConfig::from_toml(toml).unwrap_or_else(|e| panic!("config: {e}"));
    let client = gateway_client(server).await;
    wait_connected(&client).await;
    let gw = Gateway::bind(cfg, client).await.expect("bind");
    assert!(gw.http_tls());
    let (addr, admin) = (gw.http_addr(), gw.metrics_addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        gw.run(async move {
            let _ = rx.await;
        })
        .await
        .expect("gateway runs");
    });
    (addr, admin, tx, task)
}

/// A value of the gateway's `/metrics`.
async fn metric(admin: std::net::SocketAddr, series: &str) -> f64 {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let text = narun_test_support::http1::get(&mut s, "/metrics")
        .await
        .text();
    narun_test_support::http1::metric_value(&text, series)
}

async fn certificate_from_pebble(challenge: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (test_ca, pcert, pkey) = pebble_pki(dir.path());
    let [https_port, http01_port] = free_ports();
    let mut pebble = Pebble::start(dir.path(), http01_port, https_port, &pcert, &pkey).await;
    let server = NatsServer::start();
    let client = server.connect().await;
    let hello = echo_service(&client, "hello").await;
    let cache = dir.path().join("acme");
    let toml = format!(
        "[gateway]\nhttp_addr = \"127.0.0.1:{https_port}\"\nmetrics_addr = \"127.0.0.1:0\"\n\
         [gateway.acme]\ndirectory = \"https://127.0.0.1:{}/dir\"\naccept_terms = true\n\
         contact = [\"mailto:ops@narun.test\"]\ndomains = [\"{DOMAIN}\"]\ncache_dir = {:?}\n\
         challenge = \"{challenge}\"\nhttp_addr = \"127.0.0.1:{http01_port}\"\nca_file = {test_ca:?}\n\
         [[gateway.routes]]\npath = \"/hello/\"\nservice = \"hello\"\n",
        pebble.acme_port,
        cache.to_str().unwrap(),
    );
    let root = pebble_root(pebble.mgmt_port, &test_ca).await;

    // First start: no certificate; the gateway gets one from pebble.
    let (addr, admin, stop, task) = start(&toml, &server).await;
    assert_eq!(
        metric(admin, "gateway_acme_certificate_not_after_seconds").await,
        0.0
    );
    assert!(
        https_get(addr, &root).await.is_err(),
        "served a certificate before having one"
    );
    let (status, leaf) = wait_for(
        "an HTTPS answer with a certificate from pebble",
        Duration::from_secs(90),
        || async { https_get(addr, &root).await.ok() },
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(hello.count(), 1);
    assert_eq!(
        metric(admin, "gateway_acme_orders_total{result=\"ok\"}").await,
        1.0
    );
    let not_after = metric(admin, "gateway_acme_certificate_not_after_seconds").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(not_after > now + 86_400.0, "{not_after} vs now {now}");
    for f in ["account.json", "cert.pem", "key.pem", "cert.json"] {
        let mode = std::fs::metadata(cache.join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let cached = CertificateDer::from_pem_file(cache.join("cert.pem")).unwrap();
    assert_eq!(cached, leaf, "the served certificate is the cached one");
    let _ = stop.send(());
    task.await.unwrap();

    // Second start, pebble gone: the cached certificate is served at once.
    drop(pebble.ca.take());
    let (addr, admin, stop, task) = start(&toml, &server).await;
    assert_eq!(
        metric(admin, "gateway_acme_certificate_not_after_seconds").await,
        not_after
    );
    let (status, again) = https_get(addr, &root)
        .await
        .expect("the cached certificate is served from the first handshake");
    assert_eq!(status, 200);
    assert_eq!(again, leaf, "the same certificate, not a new one");
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_certificate_from_pebble_is_served_and_cached() {
    certificate_from_pebble("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_certificate_from_pebble_is_served_and_cached() {
    certificate_from_pebble("tls-alpn-01").await;
}

/// The CA cannot be reached: the failure is counted (and logged), the gateway and its
/// admin listener keep running, and a TLS-ALPN-01 validation handshake outside an order
/// gets no certificate.
#[tokio::test]
async fn an_unreachable_ca_fails_the_order_not_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let [ca_port] = free_ports(); // nothing listens there
    let server = NatsServer::start();
    let toml = format!(
        "[gateway]\nhttp_addr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\n\
         [gateway.acme]\ndirectory = \"https://127.0.0.1:{ca_port}/dir\"\naccept_terms = true\n\
         domains = [\"{DOMAIN}\"]\ncache_dir = {:?}\n",
        dir.path().join("acme").to_str().unwrap(),
    );
    let (addr, admin, stop, task) = start(&toml, &server).await;
    wait_for(
        "the failed order to be counted",
        Duration::from_secs(20),
        || async {
            (metric(admin, "gateway_acme_orders_total{result=\"failed\"}").await >= 1.0)
                .then_some(())
        },
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    assert_eq!(
        narun_test_support::http1::get(&mut s, "/healthz")
            .await
            .status,
        200
    );
    // No certificate: handshakes fail, for clients and for an `acme-tls/1` prober alike.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            rcgen::generate_simple_self_signed(vec![DOMAIN.into()])
                .unwrap()
                .cert
                .der()
                .clone(),
        )
        .unwrap();
    let mut cc = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cc.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(cc)).connect(DOMAIN.try_into().unwrap(), tcp),
    )
    .await
    .expect("the handshake ends in time");
    assert!(r.is_err(), "a validation certificate outside an order");
    assert!(!task.is_finished());
    let _ = stop.send(());
    task.await.unwrap();
}

/// Renewal without a restart: pebble issues certificates valid for 15 s, so the gateway
/// renews at 2/3 of that (10 s) and the next handshake gets the new certificate, on the
/// same running gateway; the cache holds the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_renewed_and_swapped_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (test_ca, pcert, pkey) = pebble_pki(dir.path());
    let [https_port] = free_ports();
    let pebble = Pebble::start_with(dir.path(), 0, https_port, &pcert, &pkey, Some(15)).await;
    let server = NatsServer::start();
    let client = server.connect().await;
    let _hello = echo_service(&client, "hello").await;
    let cache = dir.path().join("acme");
    let toml = format!(
        "[gateway]\nhttp_addr = \"127.0.0.1:{https_port}\"\nmetrics_addr = \"127.0.0.1:0\"\n\
         [gateway.acme]\ndirectory = \"https://127.0.0.1:{}/dir\"\naccept_terms = true\n\
         domains = [\"{DOMAIN}\"]\ncache_dir = {:?}\nca_file = {test_ca:?}\n\
         [[gateway.routes]]\npath = \"/hello/\"\nservice = \"hello\"\n",
        pebble.acme_port,
        cache.to_str().unwrap(),
    );
    let root = pebble_root(pebble.mgmt_port, &test_ca).await;
    let (addr, admin, stop, task) = start(&toml, &server).await;
    let (_, first) = wait_for("the first certificate", Duration::from_secs(60), || async {
        https_get(addr, &root).await.ok()
    })
    .await;
    let (status, second) = wait_for(
        "a renewed certificate on the running gateway",
        Duration::from_secs(60),
        || {
            let first = first.clone();
            let root = root.clone();
            async move {
                let (status, leaf) = https_get(addr, &root).await.ok()?;
                (leaf != first).then_some((status, leaf))
            }
        },
    )
    .await;
    assert_eq!(status, 200);
    assert!(metric(admin, "gateway_acme_orders_total{result=\"ok\"}").await >= 2.0);
    assert_eq!(
        CertificateDer::from_pem_file(cache.join("cert.pem")).unwrap(),
        second,
        "the cache holds the renewed certificate"
    );
    assert!(!task.is_finished());
    let _ = stop.send(());
    task.await.unwrap();
}

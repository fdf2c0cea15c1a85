//! gRPC over TLS: a real nats-server, the gateway with `grpc_tls_cert` /
//! `grpc_tls_key` (a CA and a server certificate generated here with rcgen),
//! `examples/grpc-hello` served over NATS in-process, and a tonic client that
//! trusts only that CA.

use futures_util::StreamExt;
use grpc_hello::pb::HelloRequest;
use grpc_hello::pb::greeter_client::GreeterClient;
use narun::{GrpcServer, NatsSettings, Options};
use narun_gateway::{Gateway, GatewayConfig, GatewayError};
use narun_test_support::{NatsServer, wait_connected};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// A CA, and a server certificate for `localhost` / `127.0.0.1` signed by it.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn new_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "narun test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn config(dir: &Path, cert: &str, key: &str) -> GatewayConfig {
    GatewayConfig::from_toml(&format!(
        r#"
        [gateway]
        http_addr = "127.0.0.1:0"
        grpc_addr = "127.0.0.1:0"
        metrics_addr = "127.0.0.1:0"
        grpc_tls_cert = "{}"
        grpc_tls_key = "{}"
        request_timeout_sec = 5
        shutdown_timeout_sec = 2
        [[gateway.routes]]
        grpc = "hello.v1.Greeter"
        service = "grpc-hello"
        "#,
        dir.join(cert).display(),
        dir.join(key).display()
    ))
    .expect("config")
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name("localhost"),
        )?
        .connect()
        .await
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest { name: name.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_client_over_tls_through_gateway() {
    let pki = new_pki();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.crt"), &pki.cert_pem).unwrap();
    std::fs::write(dir.path().join("server.key"), &pki.key_pem).unwrap();
    std::fs::write(dir.path().join("junk.pem"), "-----BEGIN NOTHING-----\n").unwrap();

    let nats = NatsServer::start();
    let settings = NatsSettings {
        url: nats.url(),
        ..Default::default()
    };
    let app = GrpcServer::start(
        Options::new("grpc-hello").nats(settings.clone()),
        grpc_hello::server(),
    )
    .await
    .expect("serve grpc-hello over NATS");
    let client = settings.connect("gateway-tls-test").await.expect("client");
    wait_connected(&client).await;

    // Bad TLS files: the error names the key and the file, nothing is bound.
    for (cert, key, expect) in [
        (
            "missing.crt",
            "server.key",
            "gateway.grpc_tls_cert: cannot read",
        ),
        ("junk.pem", "server.key", "gateway.grpc_tls_cert:"),
        ("server.crt", "server.crt", "gateway.grpc_tls_key:"),
    ] {
        let err = Gateway::bind(config(dir.path(), cert, key), client.clone())
            .await
            .err()
            .unwrap_or_else(|| panic!("{cert}/{key}: bind should fail"));
        assert!(matches!(err, GatewayError::Config(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(expect), "{cert}/{key}: {msg}");
    }

    let gw = Gateway::bind(config(dir.path(), "server.crt", "server.key"), client)
        .await
        .expect("bind gateway with TLS");
    assert!(gw.grpc_tls());
    let addr = gw.grpc_addr().expect("gRPC listener");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(gw.run(async {
        let _ = stop_rx.await;
    }));

    // The TLS handshake offers h2 via ALPN (what every gRPC client requires).
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes())
                .expect("CA PEM"),
        )
        .unwrap();
    let mut cc = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cc.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cc))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake with the gateway");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(tls);

    // Unary and server-streaming calls over TLS.
    let mut c = GreeterClient::new(tls_channel(addr, &pki.ca_pem).await.expect("TLS channel"));
    let r = c.say_hello(hello("tls")).await.expect("SayHello over TLS");
    assert_eq!(r.into_inner().message, "Hello, tls");
    let mut stream = c
        .say_hellos(hello("count:3"))
        .await
        .expect("SayHellos over TLS")
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("stream message in time")
    {
        got.push(m.expect("stream message").message);
    }
    assert_eq!(
        got,
        [
            "Hello #0, count:3",
            "Hello #1, count:3",
            "Hello #2, count:3"
        ]
    );
    let e = c.say_hello(hello("")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // A client that does not trust the CA cannot call.
    let other = new_pki();
    let untrusted = match tls_channel(addr, &other.ca_pem).await {
        Err(_) => true,
        Ok(ch) => GreeterClient::new(ch).say_hello(hello("x")).await.is_err(),
    };
    assert!(untrusted, "a client with another CA got through");

    // Cleartext h2c on the TLS port does not work either.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let cleartext_ok = match plain.connect().await {
        Err(_) => false,
        Ok(ch) => GreeterClient::new(ch).say_hello(hello("x")).await.is_ok(),
    };
    assert!(!cleartext_ok, "h2c call succeeded on the TLS listener");

    // And the TLS listener still serves after those failed handshakes.
    let r = c
        .say_hello(hello("again"))
        .await
        .expect("SayHello after bad clients");
    assert_eq!(r.into_inner().message, "Hello, again");

    app.shutdown().await;
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), gateway)
        .await
        .expect("gateway stops")
        .unwrap()
        .unwrap();
    nats.stop();
}

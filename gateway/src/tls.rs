//! TLS for the gRPC listener: load a PEM certificate chain and key into a
//! rustls server configuration that offers HTTP/2 via ALPN.
//!
//! ```toml
//! [gateway]
//! grpc_addr = "0.0.0.0:8443"
//! grpc_tls_cert = "/etc/narun/tls/gateway.crt"   # PEM: leaf certificate first, then intermediates
//! grpc_tls_key = "/etc/narun/tls/gateway.key"    # PEM: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key
//! ```
//!
//! The files are read once, when the gateway binds; errors name the config key
//! (`gateway.grpc_tls_cert: cannot read "/x.crt": No such file or directory`),
//! like every other configuration error.
//!
//! rustls uses the `ring` crypto provider explicitly (not the process-wide
//! default), so the gateway works whether or not another library in the same
//! process installed a default provider, and cross builds need no C toolchain
//! beyond the one `ring` already needs.

use crate::config::{ConfigError, ConfigErrors};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol id of HTTP/2, the only protocol gRPC uses.
pub const ALPN_H2: &[u8] = b"h2";

fn error(key: &str, reason: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        key: format!("gateway.{key}"),
        reason,
    }])
}

/// Read `cert_path` (PEM certificate chain) and `key_path` (PEM private key)
/// and build a TLS 1.2/1.3 server config that negotiates `h2`.
///
/// Errors name `gateway.grpc_tls_cert` or `gateway.grpc_tls_key` and say what
/// is wrong with the file: unreadable, no PEM block of the expected kind, or a
/// key that does not match the certificate.
pub fn server_config(
    cert_path: &str,
    key_path: &str,
) -> Result<rustls::ServerConfig, ConfigErrors> {
    build(
        cert_path,
        key_path,
        ("grpc_tls_cert", "grpc_tls_key"),
        &[ALPN_H2],
    )
}

/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The same for the routed HTTP listener (`http_tls_cert`, `http_tls_key`): offers
/// `h2` and `http/1.1` by ALPN; errors name those keys.
pub fn http_server_config(
    cert_path: &str,
    key_path: &str,
) -> Result<rustls::ServerConfig, ConfigErrors> {
    build(
        cert_path,
        key_path,
        ("http_tls_cert", "http_tls_key"),
        &[ALPN_H2, ALPN_HTTP1],
    )
}

fn build(
    cert_path: &str,
    key_path: &str,
    (cert_key, key_key): (&str, &str),
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, ConfigErrors> {
    let certs = load_certs(cert_key, cert_path)?;
    let key = load_key(key_key, key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| error(cert_key, format!("TLS setup failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            error(
                key_key,
                format!(
                    "{key_path:?} cannot be used with the certificate in {cert_path:?}: {e} \
                     (is it the private key of the first certificate in the chain?)"
                ),
            )
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn read(key: &str, path: &str) -> Result<Vec<u8>, ConfigErrors> {
    std::fs::read(Path::new(path)).map_err(|e| error(key, format!("cannot read {path:?}: {e}")))
}

fn load_certs(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigErrors> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(key, format!("{path:?} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(error(
            key,
            format!(
                "{path:?} contains no \"-----BEGIN CERTIFICATE-----\" block; give the PEM certificate chain, leaf first"
            ),
        ));
    }
    Ok(certs)
}

fn load_key(key: &str, path: &str) -> Result<PrivateKeyDer<'static>, ConfigErrors> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "contains no private key (expected a \"-----BEGIN PRIVATE KEY-----\", \
                 \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)"
                    .to_string()
            }
            other => format!("is not a valid PEM private key: {other}"),
        };
        error(key, format!("{path:?} {why}"))
    })
}

/// A routed-listener connection, cleartext or TLS. One type for both, so hyper's server
/// (HTTP/1.1 and HTTP/2 state machines) is compiled once, not once per stream type: a
/// second copy cost narund 62 KiB (docs/gateway.md, "HTTPS").
pub(crate) enum MaybeTls {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn msg(r: Result<rustls::ServerConfig, ConfigErrors>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn loads_a_pair_and_offers_h2() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        let cfg = server_config(c.to_str().unwrap(), k.to_str().unwrap()).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let (other_cert, _) = self_signed();
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
        std::fs::write(p("c.pem"), &cert).unwrap();
        std::fs::write(p("k.pem"), &key).unwrap();
        std::fs::write(p("other.pem"), &other_cert).unwrap();
        std::fs::write(p("junk.pem"), "not pem at all\n").unwrap();

        let e = msg(server_config(&p("missing.pem"), &p("k.pem")));
        assert!(
            e.starts_with("gateway.grpc_tls_cert: cannot read") && e.contains("No such file"),
            "{e}"
        );
        let e = msg(server_config(&p("c.pem"), &p("missing.pem")));
        assert!(e.starts_with("gateway.grpc_tls_key: cannot read"), "{e}");
        let e = msg(server_config(&p("junk.pem"), &p("k.pem")));
        assert!(
            e.starts_with("gateway.grpc_tls_cert:") && e.contains("no \"-----BEGIN CERTIFICATE"),
            "{e}"
        );
        // A certificate where the key belongs.
        let e = msg(server_config(&p("c.pem"), &p("c.pem")));
        assert!(
            e.starts_with("gateway.grpc_tls_key:") && e.contains("contains no private key"),
            "{e}"
        );
        // Key of another certificate.
        let e = msg(server_config(&p("other.pem"), &p("k.pem")));
        assert!(
            e.starts_with("gateway.grpc_tls_key:")
                && e.contains("cannot be used with the certificate"),
            "{e}"
        );
    }
}

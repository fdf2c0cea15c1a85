//! The HTTPS client instant-acme talks to the CA with: one HTTP/1.1 connection per request
//! over rustls (ring), trusting the system's roots plus `[gateway.acme] ca_file`.
//!
//! ACME needs a handful of requests per certificate, so no pool; every request is bounded
//! ([`REQUEST_TIMEOUT`]) and so is the answer ([`MAX_BODY`]). This replaces
//! instant-acme's default client (hyper-rustls and the platform verifier), which would
//! link a second HTTP client stack into narund.

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// Bound on one request to the CA: connect, TLS, request and the whole answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read from the CA (a certificate chain is a few KiB).
pub const MAX_BODY: usize = 1 << 20;

/// Root certificates: the system's, plus those of `ca_file`. Errors name the key.
pub(crate) fn roots(ca_file: Option<&str>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "ACME: reading a system root certificate failed");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{path:?} is not valid PEM: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "{path:?} contains no \"-----BEGIN CERTIFICATE-----\" block"
            ));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("{path:?}: a certificate is not usable as a root: {e}"))?;
        }
    }
    if roots.is_empty() {
        return Err(
            "no root certificates: the system has none (install ca-certificates) and ca_file is not set"
                .into(),
        );
    }
    Ok(roots)
}

/// instant-acme's [`HttpClient`] over tokio-rustls and hyper's HTTP/1.1 client.
pub(crate) struct Https {
    tls: tokio_rustls::TlsConnector,
}

impl Https {
    pub(crate) fn new(roots: rustls::RootCertStore) -> Result<Https, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![crate::tls::ALPN_HTTP1.to_vec()];
        Ok(Https {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Other(e.into())
}

async fn send(
    tls: tokio_rustls::TlsConnector,
    req: Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, Error> {
    let (mut parts, body) = req.into_parts();
    if parts.uri.scheme_str() != Some("https") {
        return Err(other(format!(
            "{}: the CA must be reached over https",
            parts.uri
        )));
    }
    let host = parts
        .uri
        .host()
        .ok_or_else(|| other(format!("{}: no host", parts.uri)))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parts.uri.port_u16().unwrap_or(443);
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| host.clone());
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| other(format!("connecting to {authority}: {e}")))?;
    let name = ServerName::try_from(host.clone())
        .map_err(|e| other(format!("{host:?} is not a TLS server name: {e}")))?;
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| other(format!("TLS with {authority}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // Origin-form target and a Host header, as HTTP/1.1 wants them.
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = target.parse().map_err(other)?;
    parts.headers.insert(
        header::HOST,
        http::HeaderValue::from_str(&authority).map_err(other)?,
    );
    let body = body.collect().await.map_err(other)?.to_bytes();
    let resp = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await
        .map_err(|e| other(format!("request to {authority}: {e}")))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| other(format!("reading the answer of {authority}: {e}")))?
        .to_bytes();
    Ok(BytesResponse::from(http::Response::from_parts(
        parts,
        Full::new(body),
    )))
}

impl HttpClient for Https {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move {
            tokio::time::timeout(REQUEST_TIMEOUT, send(tls, req))
                .await
                .map_err(|_| {
                    other(format!(
                        "no answer from the CA within {}s",
                        REQUEST_TIMEOUT.as_secs()
                    ))
                })?
        })
    }
}

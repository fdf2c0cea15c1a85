//! Automatic HTTPS certificates via ACME (RFC 8555): `[gateway.acme]` makes the routed
//! listener (`gateway.http_addr`) speak HTTPS with a certificate for `domains`, obtained
//! from a CA such as Let's Encrypt, kept on disk and renewed without a restart.
//!
//! ```toml
//! [gateway]
//! http_addr = "0.0.0.0:443"
//! [gateway.acme]
//! accept_terms = true
//! contact = ["mailto:admin@example.com"]
//! domains = ["api.example.com"]
//! # directory = "https://acme-v02.api.letsencrypt.org/directory"   (default)
//! # cache_dir = "/var/lib/narun/acme"                              (default)
//! # challenge = "tls-alpn-01"      (default) or "http-01" with http_addr = "0.0.0.0:80"
//! ```
//!
//! ```text
//!  bind: read cache_dir ──cached, not due──▶ serve it; sleep until 2/3 of its lifetime
//!            │ none, expired, other domains or CA
//!            ▼
//!  run:  order ─▶ challenges (TLS-ALPN-01 certificate in the Resolver, or HTTP-01 token
//!        on the plain listener) ─▶ CA validates ─▶ finalize (new key + CSR) ─▶ chain
//!            │ ok: write cache (0600), swap the Resolver's certificate (next handshake)
//!            │ error: log it, keep serving what we have, retry after 1 min … 1 h
//! ```
//!
//! Until the first certificate arrives, TLS handshakes on the routed listener fail (there
//! is nothing to serve); the gateway and narund run on regardless. The timing rules are
//! pure functions in [`schedule`]; [`client`] is the HTTPS client that talks to the CA.
//! The settings are [`config::AcmeConfig`].

#[cfg(feature = "acme")]
pub(crate) mod client;
pub mod config;
#[cfg(feature = "acme")]
pub mod schedule;

#[cfg(feature = "acme")]
pub(crate) use imp::*;

/// What `narund --check-config` checks of `[gateway.acme]` besides [`config`]'s
/// validation, without side effects: `ca_file` is readable PEM, and `cache_dir`, when it
/// exists, is a directory. Errors name the key.
pub fn preflight(config: &config::AcmeConfig) -> Result<(), crate::ConfigErrors> {
    let mut errs = Vec::new();
    #[cfg(feature = "acme")]
    if let Some(f) = &config.ca_file
        && let Err(e) = client::roots(Some(f))
    {
        errs.push(crate::ConfigError {
            key: "gateway.acme.ca_file".into(),
            reason: e,
        });
    }
    if let Ok(m) = std::fs::metadata(&config.cache_dir)
        && !m.is_dir()
    {
        errs.push(crate::ConfigError {
            key: "gateway.acme.cache_dir".into(),
            reason: format!("{:?} exists and is not a directory", config.cache_dir),
        });
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(crate::ConfigErrors(errs))
    }
}

#[cfg(feature = "acme")]
mod imp {
    use super::config::{AcmeConfig, Challenge};
    use super::schedule;
    use crate::config::{ConfigError, ConfigErrors};
    use bytes::Bytes;
    use http::{Response, StatusCode};
    use http_body_util::Full;
    use instant_acme::{
        Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
        NewOrder, OrderStatus, RetryPolicy,
    };
    use serde::{Deserialize, Serialize};
    use std::collections::HashMap;
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, RwLock};
    use std::time::{Duration, SystemTime};
    use tokio::net::TcpListener;
    use tokio::sync::{Semaphore, watch};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
    use tokio_rustls::rustls::sign::CertifiedKey;

    /// ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737).
    pub(crate) const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";
    /// Path prefix of HTTP-01 challenges.
    pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";
    /// Bound on one whole certificate order (all requests and the CA's validation).
    const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
    /// Connections the HTTP-01 listener serves at once.
    const HTTP01_MAX_CONNECTIONS: usize = 64;

    fn key_error(key: &str, reason: String) -> ConfigErrors {
        ConfigErrors(vec![ConfigError {
            key: format!("gateway.acme.{key}"),
            reason,
        }])
    }

    /// The certificate the routed listener serves, swapped in place when a new one arrives,
    /// and the TLS-ALPN-01 validation certificates of an order in progress.
    #[derive(Debug, Default)]
    pub(crate) struct Resolver {
        current: RwLock<Option<Arc<CertifiedKey>>>,
        alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    }

    impl ResolvesServerCert for Resolver {
        fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            let validation = hello
                .alpn()
                .is_some_and(|mut a| a.any(|p| p == ALPN_ACME_TLS));
            if validation {
                let name = hello.server_name()?;
                return self.alpn.lock().expect("not poisoned").get(name).cloned();
            }
            self.current.read().expect("not poisoned").clone()
        }
    }

    /// What is kept next to the certificate: which CA and names it is for.
    #[derive(Serialize, Deserialize, PartialEq)]
    struct CertMeta {
        directory: String,
        domains: Vec<String>,
    }

    /// The cached account: its credentials are only good at the CA that made them.
    #[derive(Serialize, Deserialize)]
    struct AccountFile {
        directory: String,
        credentials: AccountCredentials,
    }

    /// A certificate in use.
    struct Loaded {
        key: Arc<CertifiedKey>,
        renew_at: SystemTime,
        not_after: SystemTime,
    }

    /// `gateway_acme_orders_total{result}`.
    #[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
    struct OrderResult {
        /// `ok` or `failed`.
        result: &'static str,
    }

    /// The ACME machinery of one gateway.
    pub(crate) struct Acme {
        orders: prometheus_client::metrics::family::Family<
            OrderResult,
            prometheus_client::metrics::counter::Counter,
        >,
        not_after: prometheus_client::metrics::gauge::Gauge,
        config: AcmeConfig,
        resolver: Arc<Resolver>,
        /// HTTP-01: token → key authorization.
        tokens: Arc<Mutex<HashMap<String, String>>>,
        http: Option<(TcpListener, std::net::SocketAddr)>,
        client: Arc<super::client::Https>,
        current: Option<Loaded>,
    }

    fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, String> {
        let certs = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificate chain is not valid PEM: {e}"))?;
        let leaf = certs.first().ok_or("the certificate chain is empty")?;
        let (not_before, not_after) =
            schedule::validity(leaf).map_err(|e| format!("the certificate is unreadable: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| format!("the private key is not valid PEM: {e}"))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("the private key is unusable: {e}"))?;
        let ck = CertifiedKey::new(certs, signer);
        ck.keys_match()
            .map_err(|e| format!("the key does not match the certificate: {e}"))?;
        Ok(Loaded {
            key: Arc::new(ck),
            renew_at: schedule::renew_at(not_before, not_after),
            not_after,
        })
    }

    fn unix(t: SystemTime) -> i64 {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    /// Write `bytes` to `dir/name` readable by the owner only, atomically (a crash leaves
    /// the old file or the new one, never half of one).
    fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    }

    impl Acme {
        /// Check the settings that need the file system (`ca_file`, `cache_dir`), bind the
        /// HTTP-01 listener, and load a cached certificate so the first handshake has one.
        pub(crate) async fn bind(config: &AcmeConfig) -> Result<Acme, crate::GatewayError> {
            let roots = super::client::roots(config.ca_file.as_deref())
                .map_err(|e| key_error("ca_file", e))?;
            let client = super::client::Https::new(roots).map_err(|e| key_error("ca_file", e))?;
            let dir = PathBuf::from(&config.cache_dir);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| {
                    key_error(
                        "cache_dir",
                        format!("cannot create {:?}: {e}", config.cache_dir),
                    )
                })?;
            let http = match &config.http_addr {
                Some(a) => Some(crate::bind("ACME HTTP-01 challenges", a).await?),
                None => None,
            };
            let mut acme = Acme {
                orders: Default::default(),
                not_after: Default::default(),
                config: config.clone(),
                resolver: Arc::default(),
                tokens: Arc::default(),
                http,
                client: Arc::new(client),
                current: None,
            };
            match acme.load_cached() {
                Ok(Some(l)) => {
                    tracing::info!(
                        domains = ?acme.config.domains,
                        cache_dir = %acme.config.cache_dir,
                        "ACME: serving the cached certificate"
                    );
                    *acme.resolver.current.write().expect("not poisoned") = Some(l.key.clone());
                    acme.not_after.set(unix(l.not_after));
                    acme.current = Some(l);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    cache_dir = %acme.config.cache_dir,
                    error = %e,
                    "ACME: the cached certificate is unusable; ordering a new one"
                ),
            }
            Ok(acme)
        }

        /// Register `gateway_acme_orders_total{result}` and
        /// `gateway_acme_certificate_not_after_seconds` (0 = no certificate yet).
        pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
            registry.register(
                "gateway_acme_orders",
                "ACME certificate orders by result: ok, failed",
                self.orders.clone(),
            );
            registry.register(
                "gateway_acme_certificate_not_after_seconds",
                "Expiry (Unix time) of the certificate from ACME the routed listener serves; 0: none yet",
                self.not_after.clone(),
            );
        }

        /// The TLS configuration of the routed listener: the [`Resolver`]'s certificate,
        /// ALPN `h2`, `http/1.1` and `acme-tls/1` (validation only).
        pub(crate) fn server_config(&self) -> rustls::ServerConfig {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_no_client_auth()
                .with_cert_resolver(self.resolver.clone());
            config.alpn_protocols = vec![
                crate::tls::ALPN_H2.to_vec(),
                crate::tls::ALPN_HTTP1.to_vec(),
                ALPN_ACME_TLS.to_vec(),
            ];
            config
        }

        /// The HTTP-01 listener's address, when `http_addr` is set.
        pub(crate) fn http_addr(&self) -> Option<std::net::SocketAddr> {
            self.http.as_ref().map(|(_, a)| *a)
        }

        fn dir(&self) -> PathBuf {
            PathBuf::from(&self.config.cache_dir)
        }

        fn meta(&self) -> CertMeta {
            CertMeta {
                directory: self.config.directory.clone(),
                domains: self.config.domains.clone(),
            }
        }

        /// The cached certificate, when it is for this CA and these domains and not expired.
        fn load_cached(&self) -> Result<Option<Loaded>, String> {
            let dir = self.dir();
            let read = |n: &str| match std::fs::read(dir.join(n)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("cannot read {:?}: {e}", dir.join(n))),
            };
            let (Some(meta), Some(chain), Some(key)) =
                (read("cert.json")?, read("cert.pem")?, read("key.pem")?)
            else {
                return Ok(None);
            };
            let meta: CertMeta =
                serde_json::from_slice(&meta).map_err(|e| format!("cert.json: {e}"))?;
            if meta != self.meta() {
                tracing::info!(
                    "ACME: the cached certificate is for other domains or another CA; ordering a new one"
                );
                return Ok(None);
            }
            let l = certified_key(&chain, &key)?;
            if l.not_after <= SystemTime::now() {
                tracing::info!("ACME: the cached certificate has expired; ordering a new one");
                return Ok(None);
            }
            Ok(Some(l))
        }

        /// Obtain and renew certificates until `stop`; serve HTTP-01 challenges meanwhile.
        /// Never returns an error: failures are logged and retried.
        pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
            if let Some((listener, _)) = self.http.take() {
                tokio::spawn(serve_http01(listener, self.tokens.clone(), stop.clone()));
            }
            let mut failures = 0u32;
            loop {
                let wait = schedule::next_order_in(
                    self.current.as_ref().map(|l| l.renew_at),
                    SystemTime::now(),
                    failures,
                );
                if !wait.is_zero() {
                    tracing::debug!(?wait, "ACME: next certificate order");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(wait.min(schedule::RECHECK)) => {}
                    }
                    if wait > schedule::RECHECK {
                        continue; // look again with the clock as it is now
                    }
                }
                let ordered = tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    r = tokio::time::timeout(ORDER_TIMEOUT, self.order()) => r
                        .unwrap_or_else(|_| Err(format!("the order took more than {}s", ORDER_TIMEOUT.as_secs()))),
                };
                // Challenges of this order are not needed any more, whatever happened.
                self.tokens.lock().expect("not poisoned").clear();
                self.resolver.alpn.lock().expect("not poisoned").clear();
                match ordered {
                    Ok(l) => {
                        failures = 0;
                        tracing::info!(
                            domains = ?self.config.domains,
                            renew_in_sec = l.renew_at.duration_since(SystemTime::now()).unwrap_or_default().as_secs(),
                            "ACME: new certificate installed"
                        );
                        *self.resolver.current.write().expect("not poisoned") = Some(l.key.clone());
                        self.orders
                            .get_or_create(&OrderResult { result: "ok" })
                            .inc();
                        self.not_after.set(unix(l.not_after));
                        self.current = Some(l);
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        self.orders
                            .get_or_create(&OrderResult { result: "failed" })
                            .inc();
                        tracing::warn!(
                            domains = ?self.config.domains,
                            directory = %self.config.directory,
                            error = %e,
                            retry_in_sec = schedule::retry_delay(failures).as_secs(),
                            have_certificate = self.current.is_some(),
                            "ACME: obtaining a certificate failed"
                        );
                    }
                }
            }
        }

        async fn account(&self) -> Result<Account, String> {
            let dir = self.dir();
            let path = dir.join("account.json");
            let http = || {
                let c = self.client.clone();
                Box::new(Shared(c)) as Box<dyn instant_acme::HttpClient>
            };
            if let Ok(bytes) = std::fs::read(&path) {
                match serde_json::from_slice::<AccountFile>(&bytes) {
                    Ok(f) if f.directory == self.config.directory => {
                        return Account::builder_with_http(http())
                            .from_credentials(f.credentials)
                            .await
                            .map_err(|e| format!("loading the account at the CA: {e}"));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "ACME: unreadable account file; creating a new account")
                    }
                }
            }
            let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
            let (account, credentials) = Account::builder_with_http(http())
                .create(
                    &NewAccount {
                        contact: &contact,
                        terms_of_service_agreed: self.config.accept_terms,
                        only_return_existing: false,
                    },
                    self.config.directory.clone(),
                    None,
                )
                .await
                .map_err(|e| format!("creating an account at {}: {e}", self.config.directory))?;
            let file = AccountFile {
                directory: self.config.directory.clone(),
                credentials,
            };
            let json = serde_json::to_vec(&file).expect("credentials serialize");
            write_private(&dir, "account.json", &json)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            Ok(account)
        }

        /// One order, from account to installed-ready certificate (written to the cache).
        async fn order(&self) -> Result<Loaded, String> {
            let account = self.account().await?;
            let ids: Vec<Identifier> = self
                .config
                .domains
                .iter()
                .map(|d| Identifier::Dns(d.clone()))
                .collect();
            let mut order = account
                .new_order(&NewOrder::new(&ids))
                .await
                .map_err(|e| format!("new order: {e}"))?;
            let kind = match self.config.challenge {
                Challenge::Http01 => ChallengeType::Http01,
                Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let mut authzs = order.authorizations();
            while let Some(a) = authzs.next().await {
                let mut a = a.map_err(|e| format!("authorization: {e}"))?;
                match a.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => return Err(format!("an authorization is {other:?}")),
                }
                let mut ch = a.challenge(kind.clone()).ok_or_else(|| {
                    format!(
                        "the CA offers no {} challenge",
                        self.config.challenge.as_str()
                    )
                })?;
                let domain = ch.identifier().to_string();
                let ka = ch.key_authorization();
                match self.config.challenge {
                    Challenge::Http01 => {
                        self.tokens
                            .lock()
                            .expect("not poisoned")
                            .insert(ch.token.clone(), ka.as_str().to_owned());
                    }
                    Challenge::TlsAlpn01 => {
                        let cert = alpn_certificate(&domain, ka.digest().as_ref())?;
                        self.resolver
                            .alpn
                            .lock()
                            .expect("not poisoned")
                            .insert(domain.clone(), cert);
                    }
                }
                ch.set_ready()
                    .await
                    .map_err(|e| format!("challenge for {domain}: {e}"))?;
            }
            let retry = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .timeout(Duration::from_secs(120));
            let status = order
                .poll_ready(&retry)
                .await
                .map_err(|e| format!("waiting for validation: {e}"))?;
            if status != OrderStatus::Ready {
                let why = order
                    .state()
                    .error
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| {
                        "a challenge failed (is the domain's port reachable from the CA?)".into()
                    });
                return Err(format!("the order is {status:?}: {why}"));
            }
            let key_pem = order
                .finalize()
                .await
                .map_err(|e| format!("finalizing: {e}"))?;
            let chain_pem = order
                .poll_certificate(&retry)
                .await
                .map_err(|e| format!("downloading the certificate: {e}"))?;
            let loaded = certified_key(chain_pem.as_bytes(), key_pem.as_bytes())?;
            let dir = self.dir();
            let meta = serde_json::to_vec(&self.meta()).expect("serializes");
            for (name, bytes) in [
                ("key.pem", key_pem.as_bytes()),
                ("cert.pem", chain_pem.as_bytes()),
                ("cert.json", &meta[..]),
            ] {
                if let Err(e) = write_private(&dir, name, bytes) {
                    // Serve it anyway; the next start orders again.
                    tracing::warn!(path = %dir.join(name).display(), error = %e, "ACME: caching the certificate failed");
                }
            }
            Ok(loaded)
        }
    }

    /// `Arc<Https>` as instant-acme's boxed client.
    struct Shared(Arc<super::client::Https>);

    impl instant_acme::HttpClient for Shared {
        fn request(
            &self,
            req: http::Request<instant_acme::BodyWrapper<Bytes>>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                    > + Send,
            >,
        > {
            self.0.request(req)
        }
    }

    /// The self-signed TLS-ALPN-01 certificate for `domain` (RFC 8737 §3): the SHA-256 of
    /// the key authorization in the critical `acmeIdentifier` extension.
    fn alpn_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
        let err = |e: rcgen::Error| format!("TLS-ALPN-01 certificate for {domain}: {e}");
        let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(err)?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let cert = params.self_signed(&key).map_err(err)?;
        let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signer = rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| format!("TLS-ALPN-01 key: {e}"))?;
        Ok(Arc::new(CertifiedKey::new(
            vec![cert.der().clone()],
            signer,
        )))
    }

    /// The plain HTTP listener: `GET /.well-known/acme-challenge/<token>` answers the key
    /// authorization of a challenge in progress; everything else 404.
    async fn serve_http01(
        listener: TcpListener,
        tokens: Arc<Mutex<HashMap<String, String>>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let slots = Arc::new(Semaphore::new(HTTP01_MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "ACME HTTP-01 listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue; // over the bound: closed at once
            };
            let tokens = tokens.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    let answer = http01_answer(&tokens, req.method(), req.uri().path());
                    async move { Ok::<_, std::convert::Infallible>(answer) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(30), conn).await {
                    tracing::debug!(%peer, error = %e, "ACME HTTP-01 connection error");
                }
                drop(slot);
            });
        }
    }

    fn http01_answer(
        tokens: &Mutex<HashMap<String, String>>,
        method: &http::Method,
        path: &str,
    ) -> Response<Full<Bytes>> {
        let found = (method == http::Method::GET || method == http::Method::HEAD)
            .then(|| path.strip_prefix(HTTP01_PREFIX))
            .flatten()
            .and_then(|t| tokens.lock().expect("not poisoned").get(t).cloned());
        match found {
            Some(ka) => {
                let mut r = Response::new(Full::new(Bytes::from(ka)));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            None => {
                let mut r = Response::new(Full::new(Bytes::from_static(
                    b"404: this listener serves only ACME HTTP-01 challenges\n",
                )));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn http01_answers_only_known_tokens() {
            let tokens = Mutex::new(HashMap::from([(
                "tok".to_string(),
                "tok.thumb".to_string(),
            )]));
            let get = http::Method::GET;
            let r = http01_answer(&tokens, &get, "/.well-known/acme-challenge/tok");
            assert_eq!(r.status(), StatusCode::OK);
            for (m, p) in [
                (&get, "/.well-known/acme-challenge/other"),
                (&get, "/.well-known/acme-challenge/"),
                (&get, "/tok"),
                (&http::Method::POST, "/.well-known/acme-challenge/tok"),
            ] {
                assert_eq!(
                    http01_answer(&tokens, m, p).status(),
                    StatusCode::NOT_FOUND,
                    "{m} {p}"
                );
            }
        }

        #[test]
        fn the_cache_files_are_private() {
            let dir = tempfile::tempdir().unwrap();
            write_private(dir.path(), "key.pem", b"secret").unwrap();
            write_private(dir.path(), "key.pem", b"secret2").unwrap();
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(dir.path().join("key.pem")).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600);
            assert_eq!(
                std::fs::read(dir.path().join("key.pem")).unwrap(),
                b"secret2"
            );
        }
    }
}

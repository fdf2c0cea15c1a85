//! NATS Micro services ([ADR-32] v1): endpoints, stats and discovery.
//!
//! A *service* is a named, versioned set of *endpoints*. Each endpoint is a
//! subscription (in queue group `q` by default, so replicas share the load), and
//! every service instance also answers the discovery subjects
//!
//! ```text
//! $SRV.PING   $SRV.PING.<name>   $SRV.PING.<name>.<id>
//! $SRV.INFO   $SRV.INFO.<name>   $SRV.INFO.<name>.<id>
//! $SRV.STATS  $SRV.STATS.<name>  $SRV.STATS.<name>.<id>
//! ```
//!
//! with the `io.nats.micro.v1.{ping,info,stats}_response` JSON documents that
//! `nats micro`, `@nats-io/services` and the Python `micro` CLI read.
//!
//! # Why not `async_nats::service`?
//!
//! The async-nats release that our MSRV (Rust 1.88) resolves, 0.50, has two
//! discovery bugs fixed only in 0.51 (which needs Rust 1.89): a `$SRV` message
//! without a reply subject panics the verb task, so the service silently vanishes
//! from discovery, and `Service::stop()` can return an error before it unregisters.
//! Its verb task also dies for good on the first failed publish. This module owns
//! the verb layer instead (it is small), and adds what we need on top:
//!
//! * messages without a reply subject and failed publishes are logged and skipped;
//! * [`Service::stop`] always unsubscribes everything, and endpoints *drain*
//!   (already-received requests are still delivered) for graceful shutdown;
//! * [`Service::add_stats_endpoint`] registers an endpoint whose stats the caller
//!   records, for services that are clients rather than subscribers (the gateway
//!   reports per-route stats this way);
//! * [`Service::add_forwarding_endpoint`] lists an endpoint that is served elsewhere than
//!   on NATS (the gateway's HTTP and gRPC routes): no subject, no queue group;
//! * endpoints can opt out of the queue group.
//!
//! [ADR-32]: https://github.com/nats-io/nats-architecture-and-design/blob/main/adr/ADR-32.md

use async_nats::{Client, HeaderMap, Message, Subscriber};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Default queue group of endpoints (ADR-32).
pub const DEFAULT_QUEUE_GROUP: &str = "q";

/// `narun.svc.up.<name>`: where an instance of service `name` announces that it serves
/// ([`Service::announce`]; the payload is its `ping_response`).
pub fn announce_subject(name: &str) -> String {
    format!("narun.svc.up.{name}")
}

/// Errors from starting or extending a service.
#[derive(Debug, thiserror::Error)]
pub enum MicroError {
    #[error("invalid service name {0:?}: use only A-Z, a-z, 0-9, '-' and '_'")]
    InvalidName(String),
    #[error("invalid service version {0:?}: must be semantic versioning, e.g. 1.2.3")]
    InvalidVersion(String),
    #[error("invalid endpoint subject {0:?}: must be a non-empty NATS subject without spaces")]
    InvalidSubject(String),
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
}

/// How a service presents itself in discovery.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// `^[A-Za-z0-9_-]+$`; no dots, so it can be one subject token.
    pub name: String,
    /// Semantic version (`1.2.3`, `1.2.3-rc.1+build`).
    pub version: String,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
    /// Queue group for endpoints that don't set their own. Default `q`.
    pub queue_group: String,
}

impl ServiceConfig {
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        ServiceConfig {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            metadata: BTreeMap::new(),
            queue_group: DEFAULT_QUEUE_GROUP.to_owned(),
        }
    }
}

/// An endpoint of a service.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub name: String,
    pub subject: String,
    /// `None`: the service's queue group. `Some("")`: no queue group (every
    /// instance gets every request).
    pub queue_group: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

impl EndpointConfig {
    pub fn new(name: impl Into<String>, subject: impl Into<String>) -> Self {
        EndpointConfig {
            name: name.into(),
            subject: subject.into(),
            queue_group: None,
            metadata: BTreeMap::new(),
        }
    }
}

/// True for names ADR-32 accepts: `^[A-Za-z0-9_-]+$`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// True for semantic versions (SemVer 2.0 grammar, without leading-zero checks
/// in pre-release identifiers).
pub fn valid_semver(v: &str) -> bool {
    let (core, rest) = match v.find(['-', '+']) {
        Some(i) => (&v[..i], Some(&v[i..])),
        None => (v, None),
    };
    let nums: Vec<&str> = core.split('.').collect();
    let num_ok = |n: &&str| {
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && (n.len() == 1 || !n.starts_with('0'))
    };
    if nums.len() != 3 || !nums.iter().all(num_ok) {
        return false;
    }
    let ident_ok = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    match rest {
        None => true,
        Some(r) => {
            let (pre, build) = match r.find('+') {
                Some(i) => (&r[..i], Some(&r[i + 1..])),
                None => (r, None),
            };
            let pre_ok = pre.is_empty() || ident_ok(&pre[1..]);
            pre_ok && build.is_none_or(ident_ok)
        }
    }
}

fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(char::is_whitespace)
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
}

/// Counters of one endpoint. Cheap to record from many tasks at once.
#[derive(Debug, Default)]
pub struct EndpointStats {
    requests: AtomicU64,
    errors: AtomicU64,
    processing_ns: AtomicU64,
    last_error: Mutex<String>,
    /// Named counters of the endpoint's own ([`EndpointStats::count`]), published as
    /// the ADR-32 endpoint `data` object.
    counters: Mutex<BTreeMap<&'static str, u64>>,
}

impl EndpointStats {
    /// Record one handled request that took `elapsed`; `error` = `(code, description)`
    /// when it failed.
    pub fn record(&self, elapsed: Duration, error: Option<(&str, &str)>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.processing_ns.fetch_add(
            elapsed.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
        if let Some((code, desc)) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap() = format!("{code}:{desc}");
        }
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Add one to the named counter `name`; the counters appear as the endpoint's
    /// `data` in `$SRV.STATS` (`{"no_reply": 3}`), which `nats micro stats --json`
    /// and `nats micro info` show. Meant for rare events, not every request.
    pub fn count(&self, name: &'static str) {
        *self.counters.lock().unwrap().entry(name).or_default() += 1;
    }

    /// The named counter `name` (0 when never counted).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// The named counters as the ADR-32 `data` object (`{}` when there are none).
    fn data(&self) -> serde_json::Value {
        let counters = self.counters.lock().unwrap();
        serde_json::Value::Object(
            counters
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                .collect(),
        )
    }

    fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        self.processing_ns.store(0, Ordering::Relaxed);
        self.last_error.lock().unwrap().clear();
        self.counters.lock().unwrap().clear();
    }
}

struct EndpointEntry {
    config: EndpointConfig,
    queue_group: String,
    stats: Arc<EndpointStats>,
}

struct Inner {
    client: Client,
    id: String,
    config: ServiceConfig,
    started: String,
    endpoints: Mutex<Vec<EndpointEntry>>,
    verb_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop_verbs: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

/// Answer `$SRV.*` requests until told to stop (or the service is dropped), then
/// unsubscribe explicitly, so that a flush after `stop()` guarantees the server
/// no longer routes discovery requests to us.
async fn answer_discovery(
    weak: std::sync::Weak<Inner>,
    mut subs: Vec<(&'static str, Subscriber)>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let next = {
            let mut all = futures_util::stream::select_all(subs.iter_mut().map(|(verb, sub)| {
                let verb = *verb;
                sub.map(move |m| (verb, m))
            }));
            tokio::select! {
                _ = &mut stop => None,
                m = all.next() => m,
            }
        };
        let Some((verb, msg)) = next else { break };
        let Some(inner) = weak.upgrade() else { break };
        let Some(reply) = msg.reply else {
            tracing::debug!(subject = %msg.subject, "ignoring discovery request without reply subject");
            continue;
        };
        let service = Service { inner };
        let body = match verb {
            "PING" => serde_json::to_vec(&service.ping()),
            "INFO" => serde_json::to_vec(&service.info()),
            _ => serde_json::to_vec(&service.stats()),
        };
        let body = body.expect("discovery documents serialize");
        if let Err(e) = service.inner.client.publish(reply, body.into()).await {
            tracing::warn!(error = %e, verb, "failed to answer discovery request");
        }
    }
    for (_, sub) in subs.iter_mut() {
        let _ = sub.unsubscribe().await;
    }
}

/// A running service instance. Cloning shares the instance.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl Service {
    /// Validate the config, subscribe to the discovery subjects and return the service.
    pub async fn start(client: &Client, config: ServiceConfig) -> Result<Service, MicroError> {
        if !valid_name(&config.name) {
            return Err(MicroError::InvalidName(config.name));
        }
        if !valid_semver(&config.version) {
            return Err(MicroError::InvalidVersion(config.version));
        }
        let id = nuid::next().to_string();
        let mut subs: Vec<(&'static str, Subscriber)> = Vec::new();
        for verb in ["PING", "INFO", "STATS"] {
            for subject in [
                format!("$SRV.{verb}"),
                format!("$SRV.{verb}.{}", config.name),
                format!("$SRV.{verb}.{}.{id}", config.name),
            ] {
                let sub = client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|source| MicroError::Subscribe { subject, source })?;
                subs.push((verb, sub));
            }
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let inner = Arc::new(Inner {
            client: client.clone(),
            id,
            config,
            started: crate::events::now_rfc3339(),
            endpoints: Mutex::new(Vec::new()),
            verb_task: Mutex::new(None),
            stop_verbs: Mutex::new(Some(stop_tx)),
        });
        let task = tokio::spawn(answer_discovery(Arc::downgrade(&inner), subs, stop_rx));
        *inner.verb_task.lock().unwrap() = Some(task);
        Ok(Service { inner })
    }

    /// Subscribe an endpoint; requests arrive on the returned stream.
    pub async fn add_endpoint(&self, config: EndpointConfig) -> Result<Endpoint, MicroError> {
        let (queue_group, stats) = self.register(&config)?;
        let client = &self.inner.client;
        let subject = config.subject.clone();
        let subscriber = if queue_group.is_empty() {
            client.subscribe(subject.clone()).await
        } else {
            client.queue_subscribe(subject.clone(), queue_group).await
        }
        .map_err(|source| MicroError::Subscribe { subject, source })?;
        Ok(Endpoint {
            subscriber,
            client: client.clone(),
            stats,
        })
    }

    /// Register an endpoint that has no subscription of its own: its stats are
    /// recorded by the caller through the returned handle (e.g. a gateway route
    /// that forwards to `subject`).
    pub fn add_stats_endpoint(
        &self,
        config: EndpointConfig,
    ) -> Result<Arc<EndpointStats>, MicroError> {
        self.register(&config).map(|(_, stats)| stats)
    }

    /// Register an endpoint the service does not serve over NATS (no subscription, no
    /// subject): e.g. a gateway route, which receives HTTP or gRPC and forwards to another
    /// service's subject. INFO and STATS list it with an empty `subject` and `queue_group`
    /// (it answers nothing on NATS), and `metadata` says what it is; the caller records its
    /// stats through the returned handle.
    pub fn add_forwarding_endpoint(
        &self,
        name: impl Into<String>,
        metadata: BTreeMap<String, String>,
    ) -> Result<Arc<EndpointStats>, MicroError> {
        let name = name.into();
        if !valid_name(&name) {
            return Err(MicroError::InvalidName(name));
        }
        let stats = Arc::new(EndpointStats::default());
        self.inner.endpoints.lock().unwrap().push(EndpointEntry {
            config: EndpointConfig {
                name,
                subject: String::new(),
                queue_group: Some(String::new()),
                metadata,
            },
            queue_group: String::new(),
            stats: stats.clone(),
        });
        Ok(stats)
    }

    fn register(
        &self,
        config: &EndpointConfig,
    ) -> Result<(String, Arc<EndpointStats>), MicroError> {
        if !valid_name(&config.name) {
            return Err(MicroError::InvalidName(config.name.clone()));
        }
        if !valid_subject(&config.subject) {
            return Err(MicroError::InvalidSubject(config.subject.clone()));
        }
        let queue_group = config
            .queue_group
            .clone()
            .unwrap_or_else(|| self.inner.config.queue_group.clone());
        let stats = Arc::new(EndpointStats::default());
        self.inner.endpoints.lock().unwrap().push(EndpointEntry {
            config: config.clone(),
            queue_group: queue_group.clone(),
            stats: stats.clone(),
        });
        Ok((queue_group, stats))
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Say that this instance serves now: publish its [`PingResponse`] on
    /// [`announce_subject`] (a narun addition to ADR-32, which has no such event), so a
    /// gateway or client waiting for a responder learns it at once instead of polling.
    /// Call it once the endpoints are subscribed at the server. Best effort: a failure
    /// (e.g. no publish permission) is returned for logging, never fatal.
    pub async fn announce(&self) -> Result<(), async_nats::PublishError> {
        let body = serde_json::to_vec(&self.ping()).unwrap_or_default();
        self.inner
            .client
            .publish(announce_subject(self.name()), body.into())
            .await
    }

    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The `io.nats.micro.v1.ping_response` document.
    pub fn ping(&self) -> PingResponse {
        let c = &self.inner.config;
        PingResponse {
            kind: PING_TYPE.into(),
            name: c.name.clone(),
            id: self.inner.id.clone(),
            version: c.version.clone(),
            metadata: c.metadata.clone(),
        }
    }

    /// The `io.nats.micro.v1.info_response` document.
    pub fn info(&self) -> InfoResponse {
        let c = &self.inner.config;
        let endpoints = self
            .inner
            .endpoints
            .lock()
            .unwrap()
            .iter()
            .map(|e| EndpointInfo {
                name: e.config.name.clone(),
                subject: e.config.subject.clone(),
                queue_group: e.queue_group.clone(),
                metadata: e.config.metadata.clone(),
            })
            .collect();
        InfoResponse {
            kind: INFO_TYPE.into(),
            name: c.name.clone(),
            id: self.inner.id.clone(),
            version: c.version.clone(),
            metadata: c.metadata.clone(),
            description: c.description.clone(),
            endpoints,
        }
    }

    /// The `io.nats.micro.v1.stats_response` document.
    pub fn stats(&self) -> StatsResponse {
        let c = &self.inner.config;
        let endpoints = self
            .inner
            .endpoints
            .lock()
            .unwrap()
            .iter()
            .map(|e| {
                let requests = e.stats.requests.load(Ordering::Relaxed);
                let total = e.stats.processing_ns.load(Ordering::Relaxed);
                EndpointStatsResponse {
                    name: e.config.name.clone(),
                    subject: e.config.subject.clone(),
                    queue_group: e.queue_group.clone(),
                    num_requests: requests,
                    num_errors: e.stats.errors.load(Ordering::Relaxed),
                    last_error: e.stats.last_error.lock().unwrap().clone(),
                    processing_time: total,
                    average_processing_time: total.checked_div(requests).unwrap_or(0),
                    data: e.stats.data(),
                }
            })
            .collect();
        StatsResponse {
            kind: STATS_TYPE.into(),
            name: c.name.clone(),
            id: self.inner.id.clone(),
            version: c.version.clone(),
            metadata: c.metadata.clone(),
            started: self.inner.started.clone(),
            endpoints,
        }
    }

    /// Zero every endpoint's counters.
    pub fn reset(&self) {
        for e in self.inner.endpoints.lock().unwrap().iter() {
            e.stats.reset();
        }
    }

    /// Stop answering discovery. Endpoints are stopped by [`Endpoint::drain`] or
    /// by dropping them (dropping unsubscribes).
    ///
    /// When this returns (and NATS is reachable) the server has processed the
    /// unsubscribes: a PING right after `stop()` gets "no responders", not a
    /// time-out (async-nats' own `Service::stop` does not guarantee that).
    pub async fn stop(&self) {
        if let Some(tx) = self.inner.stop_verbs.lock().unwrap().take() {
            let _ = tx.send(());
        }
        let task = self.inner.verb_task.lock().unwrap().take();
        if let Some(task) = task {
            // Bounded: unsubscribing only queues commands on the client, which can
            // only stall while NATS is unreachable.
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!(service = %self.inner.config.name, "discovery task did not stop in time");
            }
        }
        crate::connect::sync_with_server(&self.inner.client, Duration::from_secs(5)).await;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.verb_task.get_mut().unwrap().take() {
            task.abort();
        }
    }
}

/// A stream of requests for one endpoint.
pub struct Endpoint {
    subscriber: Subscriber,
    client: Client,
    stats: Arc<EndpointStats>,
}

impl Request {
    /// When the endpoint took this request off its subscription.
    pub fn received(&self) -> Instant {
        self.received
    }

    /// This request's endpoint counters (to record the fate of a request that is
    /// never answered, e.g. one dropped at its deadline).
    pub fn stats(&self) -> &Arc<EndpointStats> {
        &self.stats
    }
}

impl Endpoint {
    /// Stop taking new requests: unsubscribe, but still deliver the requests the
    /// client has already received. The stream ends after the last of them.
    pub async fn drain(&mut self) {
        if let Err(e) = self.subscriber.drain().await {
            tracing::warn!(error = %e, "draining endpoint subscription");
        }
    }

    /// This endpoint's counters.
    pub fn stats(&self) -> Arc<EndpointStats> {
        self.stats.clone()
    }
}

impl Stream for Endpoint {
    type Item = Request;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Request>> {
        let this = &mut *self;
        match Pin::new(&mut this.subscriber).poll_next(cx) {
            Poll::Ready(Some(message)) => Poll::Ready(Some(Request {
                message,
                client: this.client.clone(),
                stats: this.stats.clone(),
                received: Instant::now(),
            })),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One request to an endpoint. Answer it with [`respond`](Self::respond) or
/// [`respond_error`](Self::respond_error); either records the stats.
pub struct Request {
    pub message: Message,
    client: Client,
    stats: Arc<EndpointStats>,
    received: Instant,
}

/// Why a reply could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    #[error("request has no reply subject")]
    NoReply,
    #[error("publishing the reply: {0}")]
    Publish(#[from] async_nats::PublishError),
}

impl Request {
    /// Reply with a payload and optional headers.
    pub async fn respond(
        self,
        payload: Bytes,
        headers: Option<HeaderMap>,
    ) -> Result<(), RespondError> {
        self.stats.record(self.received.elapsed(), None);
        self.send(payload, headers).await
    }

    /// Reply with an ADR-32 error: `Nats-Service-Error: <description>`,
    /// `Nats-Service-Error-Code: <code>` and `payload` (usually empty).
    pub async fn respond_error(
        self,
        code: u16,
        description: &str,
        payload: Bytes,
        headers: Option<HeaderMap>,
    ) -> Result<(), RespondError> {
        let code_s = code.to_string();
        // Header values cannot hold CR/LF; keep the description on one line.
        let description: String = description
            .chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
            .collect();
        self.stats
            .record(self.received.elapsed(), Some((&code_s, &description)));
        let mut h = headers.unwrap_or_default();
        h.insert(crate::names::SERVICE_ERROR_HEADER, description.as_str());
        h.insert(crate::names::SERVICE_ERROR_CODE_HEADER, code_s.as_str());
        self.send(payload, Some(h)).await
    }

    /// Reply with an ordinary payload (e.g. a BHTTP `502` response) that stands for a
    /// failure: counted in the endpoint's stats as an error with `code` and
    /// `description` (like [`respond_error`](Self::respond_error)), but sent without the
    /// ADR-32 error headers, so the caller reads the payload as usual.
    pub async fn respond_failed(
        self,
        code: u16,
        description: &str,
        payload: Bytes,
        headers: Option<HeaderMap>,
    ) -> Result<(), RespondError> {
        self.stats.record(
            self.received.elapsed(),
            Some((&code.to_string(), description)),
        );
        self.send(payload, headers).await
    }

    async fn send(self, payload: Bytes, headers: Option<HeaderMap>) -> Result<(), RespondError> {
        let reply = self.message.reply.clone().ok_or(RespondError::NoReply)?;
        match headers {
            Some(h) => self.client.publish_with_headers(reply, h, payload).await?,
            None => self.client.publish(reply, payload).await?,
        }
        Ok(())
    }
}

const PING_TYPE: &str = "io.nats.micro.v1.ping_response";
const INFO_TYPE: &str = "io.nats.micro.v1.info_response";
const STATS_TYPE: &str = "io.nats.micro.v1.stats_response";

/// `$SRV.PING` answer. Also used to parse other services' answers, so every
/// optional field tolerates `null`, `{}` or absence (Python, JS and Go differ).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PingResponse {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub name: String,
    pub id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
}

/// `$SRV.INFO` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InfoResponse {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub name: String,
    pub id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub description: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<EndpointInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointInfo {
    pub name: String,
    pub subject: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub queue_group: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
}

/// `$SRV.STATS` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsResponse {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub name: String,
    pub id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub started: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<EndpointStatsResponse>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointStatsResponse {
    pub name: String,
    pub subject: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub queue_group: String,
    #[serde(default)]
    pub num_requests: u64,
    #[serde(default)]
    pub num_errors: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub last_error: String,
    /// Nanoseconds.
    #[serde(default)]
    pub processing_time: u64,
    /// Nanoseconds.
    #[serde(default)]
    pub average_processing_time: u64,
    #[serde(default)]
    pub data: serde_json::Value,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions() {
        assert!(valid_name("hello-world_2"));
        assert!(!valid_name("hello.world"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        for v in ["0.1.0", "1.2.3-rc.1", "1.2.3+build.5", "10.20.30-alpha-1+x"] {
            assert!(valid_semver(v), "{v}");
        }
        for v in ["1.2", "01.2.3", "1.2.3-", "1.2.3+", "v1.2.3", "1.2.x", ""] {
            assert!(!valid_semver(v), "{v}");
        }
    }

    #[test]
    fn named_counters_are_the_endpoint_data() {
        let stats = EndpointStats::default();
        assert_eq!(stats.data(), serde_json::json!({}));
        stats.count("no_reply");
        stats.count("no_reply");
        stats.count("deadline_exceeded");
        assert_eq!(stats.counter("no_reply"), 2);
        assert_eq!(stats.counter("other"), 0);
        assert_eq!(
            stats.data(),
            serde_json::json!({"deadline_exceeded": 1, "no_reply": 2})
        );
        stats.reset();
        assert_eq!(stats.data(), serde_json::json!({}));
    }

    #[test]
    fn parses_peer_documents_with_null_empty_or_missing_fields() {
        // nats-py: metadata null, data null.
        let py = r#"{"type": "io.nats.micro.v1.stats_response", "name": "pyecho", "id": "x", "version": "1.0.0", "started": "2026-11-22T06:15:38.095Z", "endpoints": [{"name": "echo", "subject": "demo.echo", "queue_group": "q", "num_requests": 1, "num_errors": 0, "last_error": "", "processing_time": 57878, "average_processing_time": 57878, "data": null}], "metadata": null}"#;
        let s: StatsResponse = serde_json::from_str(py).unwrap();
        assert_eq!(s.endpoints[0].num_requests, 1);
        // JS: last_error/data/metadata omitted.
        let js = r#"{"type":"io.nats.micro.v1.info_response","name":"nodeecho","id":"y","version":"1.0.0","description":"d","metadata":{"lang":"node"},"endpoints":[{"subject":"njs.fail","name":"fail","queue_group":"q"}]}"#;
        let i: InfoResponse = serde_json::from_str(js).unwrap();
        assert!(i.endpoints[0].metadata.is_empty());
        // Go 1.22 pre-v1 ping: no type, no metadata.
        let go = r#"{"name":"goecho","id":"z","version":"1.0.0"}"#;
        let p: PingResponse = serde_json::from_str(go).unwrap();
        assert_eq!(p.kind, "");
    }
}

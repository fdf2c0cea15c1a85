//! Limits against hostile (or just broken) clients: what one client, or many,
//! may hold of the node's file descriptors, memory and time.
//!
//! The gateway runs inside narund, so what it holds is taken from supervision:
//! a gateway that used every fd would leave narund unable to restart a crashed
//! app (`EMFILE` on the pipes and pidfd). So every resource a client can make
//! the gateway hold is bounded here, and every refusal is counted:
//!
//! | resource | bound | what the client sees |
//! |---|---|---|
//! | connections (fds) | [`ConnLimiter`]: total, per IP; total ≤ ½ soft `RLIMIT_NOFILE` | the connection is closed right after `accept` |
//! | time without a request | [`Activity`]: `keepalive_timeout_sec` | the connection is closed |
//! | time not reading a response ("write stall") | [`Activity`]: `keepalive_timeout_sec` | the connection is closed |
//! | time to send a head | hyper's `header_read_timeout` | the connection is closed |
//! | time to send a body | [`Limits::read_body`]: `body_read_timeout_sec`, `min_body_rate` | 408, or gRPC `DEADLINE_EXCEEDED` |
//! | memory of bodies and gRPC reply buffers | [`Budget`] | 503 + `Retry-After`, or `RESOURCE_EXHAUSTED` |
//! | NATS requests in flight | a semaphore | 503 + `Retry-After`, or `RESOURCE_EXHAUSTED` |
//!
//! Memory and in-flight slots are *waited for* briefly (`overload_wait_ms`):
//! a short burst queues instead of failing, a sustained overload is refused.
//! Connections are not waited for: the accept loop must never block on a slot,
//! or a flood would hold the listen backlog instead.
//!
//! The metrics (`gateway_connections_refused_total`, `gateway_requests_shed_total`,
//! `gateway_client_timeouts_total`, `gateway_memory_budget_used_bytes`, ...) are
//! registered with the gateway's other metrics.

use crate::config::GatewayConfig;
use bytes::Bytes;
use futures_util::FutureExt;
use http_body::Body;
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Connections the metrics listener (`/metrics`, `/healthz`, `/readyz`) may
/// have open, outside `max_connections`, so monitoring still works during a
/// flood. They come out of the fd half left to narund.
pub const ADMIN_MAX_CONNECTIONS: usize = 32;

/// hyper's HTTP/1.1 read buffer per connection (its default is ~400 KiB): what a
/// connection may hold outside the memory budget while a body is read. Also the
/// largest request head.
pub const H1_MAX_BUF: usize = 64 * 1024;

/// HTTP/2 flow-control windows (hyper's default: 1 MiB each): what a client may
/// send on a connection before the gateway reads it, outside the memory budget.
pub const H2_WINDOW: u32 = 256 * 1024;

/// HTTP/2 send buffer per stream (hyper's default: ~400 KiB).
pub const H2_MAX_SEND_BUF: usize = 64 * 1024;

/// Before `min_body_rate` applies, a body has this long (a client's first
/// bytes may take a round trip or two).
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(1);

/// What the gRPC reply buffer charges per message on top of its payload: the
/// message's subject, headers and bookkeeping.
pub const MESSAGE_OVERHEAD: u64 = 512;

/// Which listener a connection or request came in on (a metrics label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Listener {
    Http,
    Grpc,
    Admin,
}

impl Listener {
    fn as_str(self) -> &'static str {
        match self {
            Listener::Http => "http",
            Listener::Grpc => "grpc",
            Listener::Admin => "metrics",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Total,
    PerIp,
}

/// Why a request was refused for lack of resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shed {
    /// The memory budget stayed exhausted for `overload_wait_ms`.
    Memory,
    /// Every in-flight slot stayed taken for `overload_wait_ms`.
    Inflight,
}

/// Which client timeout fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timeout {
    HeaderRead,
    Keepalive,
    BodyRead,
    /// A response (or a request's first poll) waited on the client too long.
    WriteStall,
}

/// The counters and gauges of this module.
struct LimitMetrics {
    refused: Family<Labels, Counter>,
    shed: Family<Labels, Counter>,
    timeouts: Family<Labels, Counter>,
    accept_errors: Family<ListenerLabel, Counter>,
    open: Family<ListenerLabel, Gauge>,
}

impl LimitMetrics {
    fn new(registry: &mut Registry, budget: &Budget, max_connections: usize) -> LimitMetrics {
        let m = LimitMetrics {
            refused: Default::default(),
            shed: Default::default(),
            timeouts: Default::default(),
            accept_errors: Default::default(),
            open: Default::default(),
        };
        registry.register(
            "gateway_connections_refused",
            "Connections closed right after accept, by listener and reason \
             (max_connections, max_connections_per_ip)",
            m.refused.clone(),
        );
        registry.register(
            "gateway_requests_shed",
            "Requests refused for lack of resources (503 + Retry-After, gRPC RESOURCE_EXHAUSTED), \
             by listener and reason (memory_budget, max_inflight_requests)",
            m.shed.clone(),
        );
        registry.register(
            "gateway_client_timeouts",
            "Clients cut off by a timeout, by listener and reason \
             (header_read, keepalive, body_read, write_stall)",
            m.timeouts.clone(),
        );
        registry.register(
            "gateway_accept_errors",
            "Failed accept() calls (e.g. EMFILE), each followed by a 50 ms pause",
            m.accept_errors.clone(),
        );
        registry.register(
            "gateway_connections_open",
            "Client connections open, by listener",
            m.open.clone(),
        );
        registry.register(
            "gateway_memory_budget_used_bytes",
            "Bytes of request bodies and gRPC reply buffers held now (memory_budget_bytes bounds it)",
            budget.used.clone(),
        );
        let limit = Gauge::<i64, AtomicI64>::default();
        limit.set(i64::try_from(budget.limit).unwrap_or(i64::MAX));
        registry.register(
            "gateway_memory_budget_bytes",
            "The memory budget (memory_budget_bytes)",
            limit,
        );
        let max = Gauge::<i64, AtomicI64>::default();
        max.set(max_connections as i64);
        registry.register(
            "gateway_max_connections",
            "The effective max_connections: configured value capped at half the soft RLIMIT_NOFILE",
            max,
        );
        m
    }
}

/// Every limit, shared by the HTTP and gRPC listeners.
pub(crate) struct Limits {
    conns: Arc<ConnLimiter>,
    admin_conns: Arc<ConnLimiter>,
    budget: Arc<Budget>,
    inflight: Arc<Semaphore>,
    wait: Duration,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    body_timeout: Duration,
    min_body_rate: u64,
    pub h2_max_concurrent_streams: u32,
    metrics: LimitMetrics,
}

/// The process's soft `RLIMIT_NOFILE` (`None`: unlimited).
pub(crate) fn nofile_soft_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// `configured` capped at half of the soft fd limit `soft` (at least 1).
pub fn effective_max_connections(configured: u32, soft: Option<u64>) -> usize {
    let configured = configured as usize;
    match soft {
        Some(soft) => configured.min(usize::try_from(soft / 2).unwrap_or(usize::MAX).max(1)),
        None => configured,
    }
}

impl Limits {
    /// The limits of `config`, metrics registered in `registry`. Reads the
    /// soft `RLIMIT_NOFILE` and logs the effective connection limit.
    pub(crate) fn new(config: &GatewayConfig, registry: &mut Registry) -> Limits {
        let soft = nofile_soft_limit();
        let max = effective_max_connections(config.max_connections, soft);
        tracing::info!(
            max_connections = max,
            configured = config.max_connections,
            nofile_soft_limit = ?soft,
            "gateway connection limit (at most half the soft RLIMIT_NOFILE; the rest is narund's)"
        );
        let budget = Arc::new(Budget::new(config.memory_budget_bytes));
        let metrics = LimitMetrics::new(registry, &budget, max);
        Limits {
            conns: Arc::new(ConnLimiter::new(
                max,
                (config.max_connections_per_ip as usize).min(max),
            )),
            admin_conns: Arc::new(ConnLimiter::new(
                ADMIN_MAX_CONNECTIONS,
                ADMIN_MAX_CONNECTIONS,
            )),
            budget,
            inflight: Arc::new(Semaphore::new(config.max_inflight_requests as usize)),
            wait: Duration::from_millis(config.overload_wait_ms),
            header_read_timeout: Duration::from_secs(config.header_read_timeout_sec),
            keepalive_timeout: Duration::from_secs(config.keepalive_timeout_sec),
            body_timeout: Duration::from_secs(config.body_read_timeout_sec),
            min_body_rate: config.min_body_rate,
            h2_max_concurrent_streams: config.h2_max_concurrent_streams,
            metrics,
        }
    }

    /// Admit a connection from `ip` on `listener`, or count the refusal.
    pub(crate) fn admit(&self, listener: Listener, ip: IpAddr) -> Option<ConnPermit> {
        let limiter = match listener {
            Listener::Admin => &self.admin_conns,
            _ => &self.conns,
        };
        match limiter.admit(ip) {
            Ok(mut p) => {
                let open = self.metrics.open.get_or_create(&ListenerLabel {
                    listener: listener.as_str(),
                });
                open.inc();
                p.open = Some(open.clone());
                Some(p)
            }
            Err(why) => {
                let reason = match why {
                    Refused::Total => "max_connections",
                    Refused::PerIp => "max_connections_per_ip",
                };
                tracing::debug!(%ip, listener = listener.as_str(), reason, "connection refused");
                self.metrics
                    .refused
                    .get_or_create(&Labels {
                        listener: listener.as_str(),
                        reason,
                    })
                    .inc();
                None
            }
        }
    }

    /// Count a failed `accept()`.
    pub(crate) fn accept_error(&self, listener: Listener) {
        self.metrics
            .accept_errors
            .get_or_create(&ListenerLabel {
                listener: listener.as_str(),
            })
            .inc();
    }

    /// Count a client timeout.
    pub(crate) fn timed_out(&self, listener: Listener, what: Timeout) {
        let reason = match what {
            Timeout::HeaderRead => "header_read",
            Timeout::Keepalive => "keepalive",
            Timeout::BodyRead => "body_read",
            Timeout::WriteStall => "write_stall",
        };
        self.metrics
            .timeouts
            .get_or_create(&Labels {
                listener: listener.as_str(),
                reason,
            })
            .inc();
    }

    /// Count a request refused for lack of resources.
    pub(crate) fn shed(&self, listener: Listener, why: Shed) {
        let reason = match why {
            Shed::Memory => "memory_budget",
            Shed::Inflight => "max_inflight_requests",
        };
        self.metrics
            .shed
            .get_or_create(&Labels {
                listener: listener.as_str(),
                reason,
            })
            .inc();
    }

    /// The shared memory budget.
    pub(crate) fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// A slot for one NATS request, waiting at most `overload_wait_ms`; counts
    /// the refusal.
    pub(crate) async fn inflight(&self, listener: Listener) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(p) = self.inflight.clone().try_acquire_owned() {
            return Ok(p);
        }
        match tokio::time::timeout(self.wait, self.inflight.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => {
                self.shed(listener, Shed::Inflight);
                Err(Shed::Inflight)
            }
        }
    }

    /// Read a whole request body of at most `limit` bytes within
    /// `body_read_timeout_sec` and at least `min_body_rate` after
    /// [`BODY_RATE_GRACE`], its memory charged to the budget (the returned
    /// [`Lease`] holds it) **as it is received**: a claimed `Content-Length` costs
    /// nothing until its bytes arrive, so headers alone cannot take the budget.
    /// The assembling buffer doubles, never beyond the known length (or `limit`):
    /// what is charged is at most twice what arrived and never more than
    /// `limit`. A body of one frame is kept as hyper read it. Counts timeouts
    /// and refusals.
    pub(crate) async fn read_body<B>(
        &self,
        listener: Listener,
        mut body: B,
        limit: usize,
    ) -> Result<(Bytes, Lease), BodyError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let start = Instant::now();
        let hard = start.checked_add(self.body_timeout);
        let mut lease = Lease::new(self.budget.clone());
        // The most the buffer may ever hold: the known length, else the limit.
        let cap = body
            .size_hint()
            .exact()
            .filter(|&n| n > 0 && n <= limit as u64)
            .map_or(limit, |n| n as usize);
        let mut first: Option<Bytes> = None;
        let mut buf: Vec<u8> = Vec::new();
        let mut total = 0usize;
        loop {
            let mut deadline = hard;
            if self.min_body_rate > 0 {
                // received >= rate * (t - grace) must hold at every t: the next
                // bytes are due by grace + received / rate.
                let due = BODY_RATE_GRACE
                    + Duration::from_secs_f64(total as f64 / self.min_body_rate as f64);
                let due = start.checked_add(due);
                deadline = match (deadline, due) {
                    (Some(h), Some(d)) => Some(h.min(d)),
                    (h, d) => h.or(d),
                };
            }
            // A frame already there (a small body arrives with its head) is taken
            // without arming a timer; the deadline applies to waiting only, as
            // `timeout_at` (which polls its future first) would apply it.
            let frame = if let Some(f) = body.frame().now_or_never() {
                f
            } else {
                let next = body.frame();
                match deadline {
                    Some(d) => match tokio::time::timeout_at(d, next).await {
                        Ok(f) => f,
                        Err(_) => {
                            self.timed_out(listener, Timeout::BodyRead);
                            return Err(BodyError::Timeout);
                        }
                    },
                    None => next.await,
                }
            };
            let frame = match frame {
                None => break,
                Some(Err(e)) => return Err(BodyError::Read(e.to_string())),
                Some(Ok(f)) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers: not forwarded
            };
            if data.is_empty() {
                continue;
            }
            total += data.len();
            if total > limit {
                return Err(BodyError::TooLarge);
            }
            // The memory the body needs now: the first frame as is, then the buffer.
            let needed = if first.is_none() && buf.is_empty() {
                data.len()
            } else {
                if buf.capacity() < total {
                    let target = total
                        .max(buf.capacity().saturating_mul(2))
                        .min(cap.max(total));
                    buf.reserve_exact(target - buf.len());
                }
                buf.capacity()
            };
            let more = (needed as u64).saturating_sub(lease.bytes);
            if more > 0 && !lease.grow(more, self.wait).await {
                self.shed(listener, Shed::Memory);
                return Err(BodyError::Overloaded);
            }
            if first.is_none() && buf.is_empty() {
                first = Some(data);
                continue;
            }
            if let Some(f) = first.take() {
                buf.extend_from_slice(&f);
            }
            buf.extend_from_slice(&data);
        }
        Ok((first.unwrap_or_else(|| Bytes::from(buf)), lease))
    }
}

/// Why [`Limits::read_body`] gave up.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// More than the limit.
    TooLarge,
    /// Slower than `min_body_rate`, or longer than `body_read_timeout_sec`.
    Timeout,
    /// The memory budget stayed exhausted.
    Overloaded,
    /// The client's stream failed (reset, bad chunking, ...).
    Read(String),
}

/// Open connections, in total and per client IP.
pub(crate) struct ConnLimiter {
    max: usize,
    per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl ConnLimiter {
    fn new(max: usize, per_ip: usize) -> ConnLimiter {
        ConnLimiter {
            max,
            per_ip,
            open: Mutex::new((0, HashMap::new())),
        }
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refused> {
        let mut g = self.open.lock().expect("lock");
        let (total, by_ip) = &mut *g;
        if *total >= self.max {
            return Err(Refused::Total);
        }
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        *total += 1;
        Ok(ConnPermit {
            limiter: self.clone(),
            ip,
            open: None,
        })
    }
}

/// One admitted connection; gives its slot back when dropped.
pub(crate) struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
    open: Option<Gauge>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut g = self.limiter.open.lock().expect("lock");
        let (total, by_ip) = &mut *g;
        *total -= 1;
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
        if let Some(open) = &self.open {
            open.dec();
        }
    }
}

/// The bytes every in-flight body and gRPC reply buffer may hold together.
/// The count lives in the exported gauge itself, so the metric is exact.
pub(crate) struct Budget {
    limit: u64,
    used: Gauge<i64, AtomicI64>,
    freed: Notify,
    /// Tasks waiting in [`Budget::take`]: a release wakes them only when there
    /// are any (the common case, no waiter, touches no lock).
    waiting: AtomicUsize,
}

impl Budget {
    /// The configured `memory_budget_bytes`.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    fn new(limit: u64) -> Budget {
        Budget {
            limit,
            used: Gauge::default(),
            freed: Notify::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Take `n` bytes if they fit.
    pub(crate) fn try_take(&self, n: u64) -> bool {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let limit = i64::try_from(self.limit).unwrap_or(i64::MAX);
        self.used
            .inner()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(n).filter(|&u| u <= limit)
            })
            .is_ok()
    }

    /// Take `n` bytes, waiting up to `wait` for others to give some back.
    async fn take(&self, n: u64, wait: Duration) -> bool {
        if self.try_take(n) {
            return true;
        }
        let deadline = Instant::now() + wait;
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_take(n) {
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return false;
            }
        }
    }

    fn give(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.used
            .inner()
            .fetch_sub(i64::try_from(n).unwrap_or(i64::MAX), Ordering::SeqCst);
        // SeqCst with the waiter's increment: a waiter that registered before this
        // release either sees the freed bytes in its `try_take` or is woken here.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    fn used(&self) -> u64 {
        self.used.get() as u64
    }
}

/// Counts a waiter of [`Budget::take`] for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bytes taken from the [`Budget`], given back when dropped.
pub(crate) struct Lease {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Lease {
    pub(crate) fn new(budget: Arc<Budget>) -> Lease {
        Lease { budget, bytes: 0 }
    }

    /// A lease of `n` bytes if they fit now (no waiting).
    pub(crate) fn try_new(budget: &Arc<Budget>, n: u64) -> Option<Lease> {
        budget.try_take(n).then(|| Lease {
            budget: budget.clone(),
            bytes: n,
        })
    }

    /// Hold `n` more bytes, waiting up to `wait`.
    async fn grow(&mut self, n: u64, wait: Duration) -> bool {
        if self.budget.take(n, wait).await {
            self.bytes += n;
            true
        } else {
            false
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// When a connection last had a request in flight, for the keep-alive timeout:
/// a connection with none for `keepalive_timeout_sec` is closed, however many
/// bytes it trickles (a request head is not in flight until it is complete).
///
/// It also tracks what the connection *owes* the gateway, for the write-stall
/// rule: a request in flight ([`Busy`]) is "owed" from the moment hyper has
/// something to do with it and has not done it yet — its service future is
/// created but not polled, its response body was handed over but not polled,
/// or the body gave hyper a frame and hyper has not come back for the next.
/// hyper stops polling exactly when it cannot write: the client's HTTP/2 flow
/// control window is closed (never a `WINDOW_UPDATE`, or
/// `SETTINGS_INITIAL_WINDOW_SIZE = 0`), or its HTTP/1.1 write buffer is full
/// because the client does not read. A body that returned `Pending` waits for
/// data, not for the client, and owes nothing. When anything has been owed for
/// `keepalive_timeout_sec` ([`Activity::expired`]), the connection is closed,
/// which drops its bodies and with them their in-flight slots and budget.
///
/// Each request's owed state is its own (an atomic per [`Busy`], registered
/// here), so a stream that progresses cannot hide another that is stalled. The
/// first request in flight uses a slot inside the [`Activity`] (an HTTP/1.1
/// connection never has more than one, so it allocates and locks nothing per
/// request); further concurrent ones (HTTP/2 streams) get an atomic of their own
/// in a list.
pub(crate) struct Activity {
    epoch: Instant,
    active: AtomicUsize,
    /// Milliseconds after `epoch` when the last request ended.
    idle_since: AtomicU64,
    /// The owed state of the request holding the inline slot (see `owed`).
    inline: AtomicU64,
    /// Whether a request holds the inline slot.
    inline_taken: AtomicBool,
    /// The owed state of every other request in flight: 0 when nothing is owed,
    /// else 1 + the milliseconds after `epoch` since when it is.
    owed: Mutex<Vec<Arc<AtomicU64>>>,
}

/// Where a [`Busy`] keeps its owed state.
enum Owed {
    /// [`Activity::inline`].
    Inline,
    /// An atomic of its own, listed in [`Activity::owed`].
    Listed(Arc<AtomicU64>),
}

/// A request in flight on a connection (see [`Activity`]), created owed: hyper
/// owes its service future a first poll.
pub(crate) struct Busy {
    activity: Arc<Activity>,
    owed: Owed,
}

impl Busy {
    fn cell(&self) -> &AtomicU64 {
        match &self.owed {
            Owed::Inline => &self.activity.inline,
            Owed::Listed(a) => a,
        }
    }

    /// hyper owes this request a poll from now on.
    pub(crate) fn owe(&self) {
        self.cell()
            .store(self.activity.now_ms() + 1, Ordering::Release);
    }

    /// hyper polled: nothing owed.
    pub(crate) fn paid(&self) {
        self.cell().store(0, Ordering::Release);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        match &self.owed {
            Owed::Inline => {
                self.activity.inline.store(0, Ordering::Release);
                self.activity.inline_taken.store(false, Ordering::Release);
            }
            Owed::Listed(mine) => {
                let mut owed = self.activity.owed.lock().expect("lock");
                if let Some(i) = owed.iter().position(|o| Arc::ptr_eq(o, mine)) {
                    owed.swap_remove(i);
                }
            }
        }
        let ms = self.activity.now_ms();
        self.activity.idle_since.store(ms, Ordering::Release);
        self.activity.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            inline: AtomicU64::new(0),
            inline_taken: AtomicBool::new(false),
            owed: Mutex::new(Vec::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A request in flight, owed (see [`Busy`]) until [`Busy::paid`].
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        let now = self.now_ms() + 1;
        let owed = if self
            .inline_taken
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.inline.store(now, Ordering::Release);
            Owed::Inline
        } else {
            let owed = Arc::new(AtomicU64::new(now));
            self.owed.lock().expect("lock").push(owed.clone());
            Owed::Listed(owed)
        };
        self.active.fetch_add(1, Ordering::AcqRel);
        Busy {
            activity: self.clone(),
            owed,
        }
    }

    /// Since when the longest-owed request is owed (`None`: nothing is).
    fn oldest_owed(&self) -> Option<Instant> {
        let owed = self.owed.lock().expect("lock");
        let ms = owed
            .iter()
            .map(|o| o.load(Ordering::Acquire))
            .chain(std::iter::once(self.inline.load(Ordering::Acquire)))
            .filter(|&o| o > 0)
            .min()?;
        Some(self.epoch + Duration::from_millis(ms - 1))
    }

    /// Completes once the connection has had no request in flight for
    /// `timeout` ([`Timeout::Keepalive`]), or a request has been owed for
    /// `timeout` ([`Timeout::WriteStall`]).
    pub(crate) async fn expired(&self, timeout: Duration) -> Timeout {
        loop {
            let now = Instant::now();
            let stall = self.oldest_owed().map(|t| t + timeout);
            if stall.is_some_and(|t| t <= now) {
                return Timeout::WriteStall;
            }
            // A request that becomes owed after `now` expires after `now + timeout`,
            // when this loop looks again anyway.
            let idle = if self.active.load(Ordering::Acquire) > 0 {
                now + timeout
            } else {
                let idle = self.epoch
                    + Duration::from_millis(self.idle_since.load(Ordering::Acquire))
                    + timeout;
                if idle <= now {
                    return Timeout::Keepalive;
                }
                idle
            };
            tokio::time::sleep_until(stall.map_or(idle, |s| s.min(idle))).await;
        }
    }
}

/// The largest frame a response body hands hyper ([`Holding`] splits larger
/// ones, without copying): the write-stall rule sees progress at least every
/// this many bytes the client reads (an HTTP response is otherwise one frame
/// of up to `max_payload`).
pub const RESPONSE_FRAME: usize = 64 * 1024;

/// A response body that keeps its request counted as in flight until the
/// body is done or dropped (a streamed gRPC answer is a request in flight
/// until its trailers), and keeps the request's owed state (see [`Activity`]):
/// owed from when hyper gets the body until it polls it, and from every frame
/// it returns until hyper comes back for the next one. Data frames are at most
/// [`RESPONSE_FRAME`] bytes.
pub(crate) struct Holding<B> {
    body: B,
    busy: Busy,
    /// What is left of a data frame larger than [`RESPONSE_FRAME`].
    rest: Bytes,
    /// A frame was returned and hyper has not polled since.
    frame_out: bool,
}

impl<B> Holding<B> {
    /// `body`, handed to hyper now.
    pub(crate) fn new(body: B, busy: Busy) -> Holding<B> {
        busy.owe();
        Holding {
            body,
            busy,
            rest: Bytes::new(),
            frame_out: false,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Holding<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        this.busy.paid();
        this.frame_out = false;
        let frame = if !this.rest.is_empty() {
            let n = this.rest.len().min(RESPONSE_FRAME);
            http_body::Frame::data(this.rest.split_to(n))
        } else {
            match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(mut data) => {
                        if data.len() > RESPONSE_FRAME {
                            this.rest = data.split_off(RESPONSE_FRAME);
                        }
                        http_body::Frame::data(data)
                    }
                    Err(f) => f,
                },
                other => return other,
            }
        };
        this.busy.owe();
        this.frame_out = true;
        Poll::Ready(Some(Ok(frame)))
    }

    /// Not the end right after a frame: hyper comes back for the end (and
    /// the write-stall rule sees whether it can), instead of dropping the body
    /// with its last frame still unwritten. A body that is empty from the
    /// start is (a gRPC trailers-only answer must stay one HEADERS frame).
    fn is_end_stream(&self) -> bool {
        !self.frame_out && self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut h = http_body::SizeHint::new();
        h.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            h.set_upper(upper + rest);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_limited_in_total_and_per_ip() {
        let l = Arc::new(ConnLimiter::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).err(), Some(Refused::PerIp));
        let _b1 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).err(), Some(Refused::Total));
        drop(a1);
        let _b2 = l.admit(b).unwrap();
        assert_eq!(l.open.lock().unwrap().0, 3);
    }

    #[test]
    fn the_fd_limit_caps_connections_at_half() {
        assert_eq!(effective_max_connections(512, Some(1024)), 512);
        assert_eq!(effective_max_connections(512, Some(256)), 128);
        assert_eq!(effective_max_connections(512, Some(1)), 1);
        assert_eq!(effective_max_connections(512, None), 512);
        assert_eq!(effective_max_connections(512, Some(u64::MAX)), 512);
    }

    /// `moving` keeps paying and owing again every 10 ms while another request of `a`
    /// owes: `a` still expires with a write stall, after `timeout` and not before.
    async fn write_stall_seen_while_progressing(a: &Activity, moving: &Busy, timeout: Duration) {
        let t = Instant::now();
        let progress = async {
            loop {
                moving.paid();
                tokio::time::sleep(Duration::from_millis(10)).await;
                moving.owe();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            why = a.expired(timeout) => assert_eq!(why, Timeout::WriteStall),
            _ = progress => unreachable!(),
            _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("stall not seen"),
        }
        assert!(t.elapsed() >= timeout, "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_progressing_request_does_not_hide_a_stalled_one() {
        let timeout = Duration::from_millis(300);
        let a = Activity::new();
        let stalled = a.busy(); // owed from the start: never polled
        let moving = a.busy();
        write_stall_seen_while_progressing(&a, &moving, timeout).await;
        // Requests in flight that owe nothing (waiting for data) keep the
        // connection open; once they end, it idles out.
        stalled.paid();
        moving.paid();
        assert!(
            tokio::time::timeout(Duration::from_millis(600), a.expired(timeout))
                .await
                .is_err()
        );
        drop((stalled, moving));
        let why = tokio::time::timeout(Duration::from_secs(10), a.expired(timeout)).await;
        assert_eq!(why.ok(), Some(Timeout::Keepalive));
        assert!(a.owed.lock().unwrap().is_empty());
    }

    /// The first request takes the inline slot, the others a listed atomic: a
    /// stalled listed request is seen while the inline one progresses, and the
    /// slot is free again for the next request once its holder is done.
    #[tokio::test]
    async fn a_stalled_second_stream_is_seen_behind_a_progressing_first() {
        let timeout = Duration::from_millis(300);
        let a = Activity::new();
        let moving = a.busy();
        assert!(matches!(moving.owed, Owed::Inline));
        let stalled = a.busy();
        assert!(matches!(stalled.owed, Owed::Listed(_)));
        write_stall_seen_while_progressing(&a, &moving, timeout).await;
        drop(moving);
        stalled.paid();
        assert!(a.oldest_owed().is_none());
        // The inline slot is free again: the next request takes it.
        let next = a.busy();
        assert!(matches!(next.owed, Owed::Inline));
        assert!(
            a.oldest_owed().is_some(),
            "a new request is owed its first poll"
        );
        drop((stalled, next));
        assert!(a.owed.lock().unwrap().is_empty());
        assert!(a.oldest_owed().is_none());
    }

    #[tokio::test]
    async fn holding_splits_large_frames_and_owes_each_until_the_next_poll() {
        let a = Activity::new();
        let busy = a.busy();
        busy.paid();
        assert!(a.oldest_owed().is_none());
        let body = http_body_util::Full::new(Bytes::from(vec![1u8; 200_000]));
        let mut h = Holding::new(body, busy);
        // Handed to hyper, not polled yet: owed.
        assert!(a.oldest_owed().is_some());
        assert_eq!(h.size_hint().exact(), Some(200_000));
        assert!(!h.is_end_stream());
        // An empty body is the end from the start (trailers-only gRPC answers).
        let empty = Holding::new(http_body_util::Empty::<Bytes>::new(), a.busy());
        assert!(empty.is_end_stream());
        drop(empty);
        let mut sizes = Vec::new();
        while let Some(f) = h.frame().await {
            sizes.push(f.unwrap().into_data().unwrap().len());
            assert!(a.oldest_owed().is_some(), "a frame taken is owed");
            assert!(!h.is_end_stream());
        }
        assert_eq!(sizes, [65536, 65536, 65536, 3392]);
        assert!(a.oldest_owed().is_none());
        assert!(h.is_end_stream());
        drop(h);
        assert!(a.owed.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_budget_is_shared_waited_for_and_given_back() {
        let b = Arc::new(Budget::new(100));
        let mut l1 = Lease::new(b.clone());
        assert!(l1.grow(60, Duration::ZERO).await);
        let mut l2 = Lease::new(b.clone());
        assert!(!l2.grow(41, Duration::from_millis(10)).await);
        assert!(l2.grow(40, Duration::ZERO).await);
        assert_eq!(b.used(), 100);
        // A waiter gets the bytes as soon as they are given back.
        let b2 = b.clone();
        let waiter = tokio::spawn(async move {
            let mut l = Lease::new(b2);
            let ok = l.grow(50, Duration::from_secs(30)).await;
            (ok, l)
        });
        drop(l1);
        let (ok, l3) = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(ok);
        assert_eq!(b.used(), 90);
        drop((l2, l3));
        assert_eq!(b.used(), 0);
        assert!(Lease::try_new(&b, 101).is_none());
        assert_eq!(b.used(), 0);
    }
}

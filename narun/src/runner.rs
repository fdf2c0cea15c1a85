//! The serving loop shared by HTTP ([`crate::Server`]) and gRPC services: one
//! ADR-32 endpoint, requests handled concurrently up to `max_inflight`, and a
//! graceful stop that drains the subscription and waits for in-flight requests.
//!
//! Before a request takes one of the `max_inflight` slots it is *admitted*:
//!
//! * a request without a reply subject is refused at once: nobody could read its
//!   answer, and a flood of them must not keep the slots from callers who wait.
//!   It is counted as an endpoint error (`400`) and under [`crate::STAT_NO_REPLY`],
//!   and logged at most once per [`LOG_EVERY`] with the number it stands for;
//! * a request carrying the caller's deadline ([`TIMEOUT_MS_HEADER`], set by the
//!   narun gateway) gets its deadline: the budget counted from when the request
//!   is taken off the subscription. If no slot frees up before it, the request
//!   never runs; if the handler is still running when it passes, its future is
//!   dropped (cancelled) and the slot is free again. Nothing is answered — the
//!   caller has given up — and the request is counted as an endpoint error
//!   (`504`) and under [`crate::STAT_DEADLINE_EXCEEDED`]. A request without the
//!   header (or with a malformed value) runs until its handler finishes, as
//!   before.

use crate::{Error, Options, STAT_DEADLINE_EXCEEDED, STAT_NO_REPLY, notify};
use futures_util::StreamExt;
use narun_wire::micro::{self, Endpoint, EndpointConfig, Service, ServiceConfig};
use narun_wire::names::{TIMEOUT_MS, TIMEOUT_MS_HEADER, parse_timeout_ms};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Refusals and dropped handlers are logged at most this often.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// A running endpoint. [`Running::shutdown`] stops it gracefully.
pub(crate) struct Running {
    pub(crate) service: Service,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

/// Connect, register service `opts.name` with endpoint `endpoint` on subject
/// `opts.name`, and serve every request with `handler` in its own task.
/// Returns once the subscription is in place at the server (bounded while NATS
/// is unreachable: it is then set up on connect).
pub(crate) async fn start<H, Fut>(
    opts: Options,
    endpoint: &str,
    what: &'static str,
    handler: H,
) -> Result<Running, Error>
where
    H: Fn(Arc<async_nats::Client>, micro::Request) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    opts.validate()?;
    #[cfg(feature = "otlp")]
    if !narun_wire::otlp::is_installed()
        && let Err(e) = narun_wire::otlp::install_from_env(&opts.name)
    {
        tracing::warn!(error = %e, "OpenTelemetry export stays off");
    }
    let client = opts.nats.connect(&format!("narun {}", opts.name)).await?;
    let mut config = ServiceConfig::new(&opts.name, &opts.version);
    config.description = opts.description.clone();
    config.metadata = opts.metadata.clone();
    let service = Service::start(&client, config).await?;
    let endpoint = service
        .add_endpoint(EndpointConfig::new(endpoint, &opts.name))
        .await?;
    narun_wire::connect::sync_with_server(&client, Duration::from_secs(5)).await;
    // Waiting gateways and clients learn at once that the service is here.
    if let Err(e) = service.announce().await {
        tracing::debug!(error = %e, "cannot announce the service");
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let watchdog = notify::ready(&format!("serving {what} {} on NATS", opts.name));
    let done = tokio::spawn(run(
        client, endpoint, opts, stop_rx, watchdog, what, handler,
    ));
    Ok(Running {
        service,
        stop: stop_tx,
        done,
    })
}

impl Running {
    /// Stop taking requests, finish the in-flight ones (bounded by
    /// [`Options::shutdown_timeout`]) and unregister from discovery.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
        self.service.stop().await;
    }
}

/// A warning logged at most once per [`LOG_EVERY`], saying how many events it
/// stands for, so that a flood of bad requests cannot flood the log.
struct Throttled {
    service: String,
    message: &'static str,
    /// When it was last logged, and the events since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    fn new(service: &str, message: &'static str) -> Arc<Throttled> {
        Arc::new(Throttled {
            service: service.to_owned(),
            message,
            state: Mutex::new((None, 0)),
        })
    }

    fn hit(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 += 1;
        let now = Instant::now();
        if state.0.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            tracing::warn!(service = %self.service, count = state.1, "{}", self.message);
            *state = (Some(now), 0);
        }
    }
}

/// A request that may take a slot, and when its caller stops waiting.
struct Admitted {
    request: micro::Request,
    deadline: Option<tokio::time::Instant>,
}

/// Admission and accounting of requests (see the module docs).
struct Gate {
    limit: Arc<Semaphore>,
    no_reply: Arc<Throttled>,
    expired: Arc<Throttled>,
}

impl Gate {
    /// Refuse a request without a reply subject; give the others their deadline.
    fn admit(&self, request: micro::Request) -> Option<Admitted> {
        if request.message.reply.is_none() {
            let stats = request.stats();
            stats.record(
                request.received().elapsed(),
                Some(("400", "request without a reply subject refused")),
            );
            stats.count(STAT_NO_REPLY);
            self.no_reply.hit();
            return None;
        }
        let deadline = request
            .message
            .headers
            .as_ref()
            .and_then(|h| h.get(TIMEOUT_MS))
            .and_then(|v| {
                let budget = parse_timeout_ms(v.as_str());
                if budget.is_none() {
                    tracing::debug!(
                        value = v.as_str(),
                        "ignoring a malformed {TIMEOUT_MS_HEADER} header"
                    );
                }
                budget
            })
            .and_then(|budget| {
                tokio::time::Instant::from_std(request.received()).checked_add(budget)
            });
        Some(Admitted { request, deadline })
    }

    /// A slot for `a`, or `None` (and `a` counted as expired) when its deadline
    /// passes first.
    async fn slot(&self, a: &Admitted) -> Option<OwnedSemaphorePermit> {
        let acquire = self.limit.clone().acquire_owned();
        let permit = match a.deadline {
            None => Some(acquire.await),
            Some(d) if d <= tokio::time::Instant::now() => None,
            Some(d) => tokio::time::timeout_at(d, acquire).await.ok(),
        };
        match permit {
            Some(p) => Some(p.expect("semaphore is never closed")),
            None => {
                expired(&self.expired, a.request.stats(), a.request.received());
                None
            }
        }
    }
}

fn expired(log: &Throttled, stats: &micro::EndpointStats, received: Instant) {
    stats.record(
        received.elapsed(),
        Some(("504", "deadline passed: request dropped unanswered")),
    );
    stats.count(STAT_DEADLINE_EXCEEDED);
    log.hit();
}

async fn run<H, Fut>(
    client: async_nats::Client,
    mut endpoint: Endpoint,
    opts: Options,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    watchdog: Option<notify::WatchdogGuard>,
    what: &'static str,
    handler: H,
) where
    H: Fn(Arc<async_nats::Client>, micro::Request) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let gate = Gate {
        limit: Arc::new(Semaphore::new(opts.max_inflight)),
        no_reply: Throttled::new(
            &opts.name,
            "refused requests without a reply subject (count since the last report)",
        ),
        expired: Throttled::new(
            &opts.name,
            "dropped requests whose caller's deadline passed (count since the last report)",
        ),
    };
    let spawn = {
        // Shared, not cloned per request: a `Client` clone is a dozen reference counts.
        let (client, handler, log) = (
            Arc::new(client.clone()),
            handler.clone(),
            gate.expired.clone(),
        );
        let inline = Arc::new(InlineGate::default());
        move |a: Admitted, permit: OwnedSemaphorePermit| {
            let deadline = a.deadline.map(|at| Deadline {
                at,
                log: log.clone(),
                stats: a.request.stats().clone(),
                received: a.request.received(),
            });
            // The deadline is visible to the handler (`narun::deadline`, and the
            // budget of the calls it makes with `narun::Client`).
            // So is its trace (`narun::trace::current`, and the calls it makes).
            let trace = crate::trace::incoming(a.request.message.headers.as_ref());
            let fut = crate::client::DEADLINE.scope(
                a.deadline,
                crate::trace::handle(trace, handler(client.clone(), a.request)),
            );
            run_or_spawn(fut, permit, inline.clone(), deadline)
        }
    };
    // Serve until told to stop (or the subscription ends). A request taken off
    // the subscription while waiting for a slot is kept for the drain below.
    let mut held = None;
    loop {
        let request = tokio::select! {
            _ = &mut stop => break,
            r = endpoint.next() => match r {
                Some(r) => r,
                None => break,
            },
        };
        let Some(admitted) = gate.admit(request) else {
            continue;
        };
        tokio::select! {
            _ = &mut stop => {
                held = Some(admitted);
                break;
            }
            permit = gate.slot(&admitted) => {
                if let Some(permit) = permit {
                    spawn(admitted, permit).await;
                }
            }
        }
    }
    // Graceful stop: no new requests, but those already delivered to us are
    // served; then wait for everything in flight.
    notify::stopping();
    tracing::info!(service = %opts.name, "stopping: draining in-flight {what} requests");
    endpoint.drain().await;
    let all = u32::try_from(opts.max_inflight).unwrap_or(u32::MAX);
    let drain_client = client.clone();
    let drain = async move {
        if let Some(admitted) = held
            && let Some(permit) = gate.slot(&admitted).await
        {
            spawn(admitted, permit).await;
        }
        // The drain completes when the server confirms the unsubscribe. While
        // NATS is unreachable that never happens (and nothing new can arrive),
        // so stop waiting for it as soon as the connection is down.
        use async_nats::connection::State;
        let mut check = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                next = endpoint.next() => match next {
                    Some(request) => {
                        if let Some(admitted) = gate.admit(request)
                            && let Some(permit) = gate.slot(&admitted).await
                        {
                            spawn(admitted, permit).await;
                        }
                    }
                    None => break,
                },
                _ = check.tick() => {
                    if drain_client.connection_state() != State::Connected {
                        break;
                    }
                }
            }
        }
        let _ = gate.limit.acquire_many(all).await;
    };
    if tokio::time::timeout(opts.shutdown_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            service = %opts.name,
            timeout = ?opts.shutdown_timeout,
            "in-flight {what} requests did not finish before the shutdown timeout"
        );
    }
    drop(watchdog);
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
}

/// [`SLOW_POLLS`] first polls in a row longer than this make the following
/// requests spawn at once for [`SPAWN_FOR`], so handlers that compute before they
/// first wait keep running in parallel on every worker thread. (In a row: a
/// single slow poll is more often the thread being preempted on a busy machine.)
const SLOW_FIRST_POLL: Duration = Duration::from_millis(2);
const SLOW_POLLS: u32 = 3;
const SPAWN_FOR: Duration = Duration::from_secs(1);

/// Until when requests skip the in-place first poll (see [`run_or_spawn`]).
struct InlineGate {
    base: std::time::Instant,
    /// Microseconds after `base`.
    spawn_until: std::sync::atomic::AtomicU64,
    /// Slow first polls in a row.
    slow: std::sync::atomic::AtomicU32,
}

impl Default for InlineGate {
    fn default() -> Self {
        InlineGate {
            base: std::time::Instant::now(),
            spawn_until: Default::default(),
            slow: Default::default(),
        }
    }
}

impl InlineGate {
    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// A request's deadline, and what to count when it passes.
struct Deadline {
    at: tokio::time::Instant,
    log: Arc<Throttled>,
    stats: Arc<micro::EndpointStats>,
    received: Instant,
}

/// The rest of a request's handler, in a task of its own: bounded by its
/// deadline (past it the future is dropped, which cancels it wherever it waits),
/// then `permit` is released.
fn spawn_rest<F>(
    fut: std::pin::Pin<Box<F>>,
    permit: OwnedSemaphorePermit,
    deadline: Option<Deadline>,
) where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        match deadline {
            None => fut.await,
            Some(d) => {
                if tokio::time::timeout_at(d.at, fut).await.is_err() {
                    expired(&d.log, &d.stats, d.received);
                }
            }
        }
        drop(permit);
    });
}

/// Run a request's handler in this task until it first has to wait, and spawn a
/// task for the rest only then; `permit` is released when it is done. The
/// deadline's timer is armed only then too: a handler that answers in its first
/// poll (most do) costs no timer (`timeout_at` would have polled it first as
/// well, so an answer ready at once was never refused for lateness).
///
/// Most handlers answer without waiting (the reply is a publish into the client's
/// buffer): this saves a task and, on the multi-thread runtime, the wake-up of
/// another worker thread per request, which cost more than the request itself
/// (`narun-bench gateway`, docs/benchmarks.md). A panic in that first poll is
/// contained here as it would be in a task of its own. Handlers that compute
/// long before their first wait would serialise here: after a few such polls
/// ([`SLOW_FIRST_POLL`]) requests are spawned directly for a while.
async fn run_or_spawn<F>(
    fut: F,
    permit: OwnedSemaphorePermit,
    gate: Arc<InlineGate>,
    deadline: Option<Deadline>,
) where
    F: Future<Output = ()> + Send + 'static,
{
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::atomic::Ordering::Relaxed;
    use std::task::Poll;
    let mut fut = Box::pin(fut);
    let start = gate.now();
    if start < gate.spawn_until.load(Relaxed) {
        spawn_rest(fut, permit, deadline);
        return;
    }
    let first = std::future::poll_fn(|cx| {
        Poll::Ready(catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))))
    })
    .await;
    let end = gate.now();
    if end.saturating_sub(start) <= SLOW_FIRST_POLL.as_micros() as u64 {
        gate.slow.store(0, Relaxed);
    } else if gate.slow.fetch_add(1, Relaxed) + 1 >= SLOW_POLLS {
        gate.slow.store(0, Relaxed);
        gate.spawn_until
            .store(end.saturating_add(SPAWN_FOR.as_micros() as u64), Relaxed);
    }
    match first {
        Ok(Poll::Pending) => spawn_rest(fut, permit, deadline),
        Ok(Poll::Ready(())) => {}
        Err(_) => tracing::error!("request handler panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_logs_once_per_period_and_counts_the_rest() {
        let t = Throttled::new("svc", "events");
        t.hit();
        let first = t.state.lock().unwrap().0.expect("logged at once");
        for _ in 0..299 {
            t.hit();
        }
        let state = *t.state.lock().unwrap();
        assert_eq!(
            state,
            (Some(first), 299),
            "299 hits wait for the next report"
        );
    }
}

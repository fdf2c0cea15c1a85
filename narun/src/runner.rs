//! The serving loop shared by HTTP ([`crate::Server`]) and gRPC services: one
//! ADR-32 endpoint, requests handled concurrently up to `max_inflight`, and a
//! graceful stop that drains the subscription and waits for in-flight requests.

use crate::{Error, Options, notify};
use futures_util::StreamExt;
use narun_wire::micro::{self, Endpoint, EndpointConfig, Service, ServiceConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

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
    H: Fn(async_nats::Client, micro::Request) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    opts.validate()?;
    let client = opts.nats.connect(&format!("narun {}", opts.name)).await?;
    let mut config = ServiceConfig::new(&opts.name, &opts.version);
    config.description = opts.description.clone();
    config.metadata = opts.metadata.clone();
    let service = Service::start(&client, config).await?;
    let endpoint = service
        .add_endpoint(EndpointConfig::new(endpoint, &opts.name))
        .await?;
    narun_wire::connect::sync_with_server(&client, Duration::from_secs(5)).await;
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

async fn run<H, Fut>(
    client: async_nats::Client,
    mut endpoint: Endpoint,
    opts: Options,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    watchdog: Option<notify::WatchdogGuard>,
    what: &'static str,
    handler: H,
) where
    H: Fn(async_nats::Client, micro::Request) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(opts.max_inflight));
    let spawn = {
        let (client, handler) = (client.clone(), handler.clone());
        let gate = Arc::new(InlineGate::default());
        move |request: micro::Request, permit: tokio::sync::OwnedSemaphorePermit| {
            run_or_spawn(handler(client.clone(), request), permit, gate.clone())
        }
    };
    // Serve until told to stop (or the subscription ends).
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = limit.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let request = tokio::select! {
            _ = &mut stop => break,
            r = endpoint.next() => match r {
                Some(r) => r,
                None => break,
            },
        };
        spawn(request, permit).await;
    }
    // Graceful stop: no new requests, but those already delivered to us are
    // served; then wait for everything in flight.
    notify::stopping();
    tracing::info!(service = %opts.name, "stopping: draining in-flight {what} requests");
    endpoint.drain().await;
    let all = u32::try_from(opts.max_inflight).unwrap_or(u32::MAX);
    let drain_client = client.clone();
    let drain = async move {
        // The drain completes when the server confirms the unsubscribe. While
        // NATS is unreachable that never happens (and nothing new can arrive),
        // so stop waiting for it as soon as the connection is down.
        use async_nats::connection::State;
        let mut check = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                next = endpoint.next() => match next {
                    Some(request) => {
                        let permit = limit.clone().acquire_owned().await.expect("semaphore open");
                        spawn(request, permit).await;
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
        let _ = limit.acquire_many(all).await;
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

/// Run a request's handler in this task until it first has to wait, and spawn a
/// task for the rest only then; `permit` is released when it is done.
///
/// Most handlers answer without waiting (the reply is a publish into the client's
/// buffer): this saves a task and, on the multi-thread runtime, the wake-up of
/// another worker thread per request, which cost more than the request itself
/// (`narun-bench gateway`, docs/benchmarks.md). A panic in that first poll is
/// contained here as it would be in a task of its own. Handlers that compute
/// long before their first wait would serialise here: after a few such polls
/// ([`SLOW_FIRST_POLL`]) requests are spawned directly for a while.
async fn run_or_spawn<F>(fut: F, permit: tokio::sync::OwnedSemaphorePermit, gate: Arc<InlineGate>)
where
    F: Future<Output = ()> + Send + 'static,
{
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::atomic::Ordering::Relaxed;
    use std::task::Poll;
    let mut fut = Box::pin(fut);
    let start = gate.now();
    if start < gate.spawn_until.load(Relaxed) {
        tokio::spawn(async move {
            fut.await;
            drop(permit);
        });
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
        Ok(Poll::Pending) => {
            tokio::spawn(async move {
                fut.await;
                drop(permit);
            });
        }
        Ok(Poll::Ready(())) => {}
        Err(_) => tracing::error!("request handler panicked"),
    }
}

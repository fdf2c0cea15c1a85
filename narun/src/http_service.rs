//! Driving a tower HTTP service from NATS Micro requests.

use crate::{Error, HTTP_ENDPOINT, Options, notify};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use narun_wire::bhttp;
use narun_wire::micro::{self, Endpoint, EndpointConfig, Service, ServiceConfig};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Service as TowerService, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serve an axum `Router` until SIGTERM or SIGINT, then stop gracefully.
pub async fn serve(opts: Options, router: axum::Router) -> Result<(), Error> {
    serve_service(opts, router).await
}

/// Serve any tower HTTP service until SIGTERM or SIGINT, then stop gracefully.
///
/// The service receives `http::Request<Full<Bytes>>` (the body is complete: NATS
/// carries whole messages) and may answer with any body type.
pub async fn serve_service<S, B>(opts: Options, service: S) -> Result<(), Error>
where
    S: TowerService<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let shutdown = termination_signal().map_err(Error::Signal)?;
    serve_until(opts, service, shutdown).await
}

/// Serve until `shutdown` completes, then stop gracefully.
pub async fn serve_until<S, B>(
    opts: Options,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    S: TowerService<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let server = Server::start(opts, service).await?;
    shutdown.await;
    server.shutdown().await;
    Ok(())
}

/// A running HTTP-over-NATS service. [`Server::shutdown`] stops it gracefully.
pub struct Server {
    service: Service,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Connect, register the service and its `handler` endpoint, and start
    /// serving. Returns once the endpoint subscription is in place (if NATS is
    /// reachable; otherwise it is set up as soon as the client connects).
    pub async fn start<S, B>(opts: Options, service: S) -> Result<Server, Error>
    where
        S: TowerService<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        opts.validate()?;
        let client = opts.nats.connect(&format!("narun {}", opts.name)).await?;
        let mut config = ServiceConfig::new(&opts.name, &opts.version);
        config.description = opts.description.clone();
        config.metadata = opts.metadata.clone();
        let svc = Service::start(&client, config).await?;
        let endpoint = svc
            .add_endpoint(EndpointConfig::new(HTTP_ENDPOINT, &opts.name))
            .await?;
        // Make the subscriptions effective at the server before announcing
        // readiness (bounded: while NATS is down they are sent on connect).
        narun_wire::connect::sync_with_server(&client, std::time::Duration::from_secs(5)).await;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let watchdog = notify::ready(&format!("serving {} on NATS", opts.name));
        let done = tokio::spawn(run(client, endpoint, service, opts, stop_rx, watchdog));
        Ok(Server {
            service: svc,
            stop: stop_tx,
            done,
        })
    }

    /// The ADR-32 service (id, stats, info).
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Stop taking requests, finish the in-flight ones (bounded by
    /// [`Options::shutdown_timeout`]) and unregister from discovery.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
        self.service.stop().await;
    }
}

async fn run<S, B>(
    client: async_nats::Client,
    mut endpoint: Endpoint,
    service: S,
    opts: Options,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    watchdog: Option<notify::WatchdogGuard>,
) where
    S: TowerService<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let limit = Arc::new(Semaphore::new(opts.max_inflight));
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
        tokio::spawn(handle(client.clone(), request, service.clone(), permit));
    }
    // Graceful stop: no new requests, but those already delivered to us are
    // served; then wait for everything in flight.
    notify::stopping();
    tracing::info!(service = %opts.name, "stopping: draining in-flight requests");
    endpoint.drain().await;
    let all = u32::try_from(opts.max_inflight).unwrap_or(u32::MAX);
    let drain_client = client.clone();
    let drain = async move {
        // The drain completes when the server confirms the unsubscribe. While
        // NATS is unreachable that never happens (and nothing new can arrive),
        // so stop waiting for it as soon as the connection is down.
        use async_nats::connection::State;
        let mut check = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tokio::select! {
                next = endpoint.next() => match next {
                    Some(request) => {
                        let permit = limit.clone().acquire_owned().await.expect("semaphore open");
                        tokio::spawn(handle(drain_client.clone(), request, service.clone(), permit));
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
            "in-flight requests did not finish before the shutdown timeout"
        );
    }
    drop(watchdog);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), client.flush()).await;
}

/// Answer one request: BHTTP in, the service, BHTTP out.
async fn handle<S, B>(
    client: async_nats::Client,
    request: micro::Request,
    service: S,
    _permit: OwnedSemaphorePermit,
) where
    S: TowerService<Request<Full<Bytes>>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let http_request = match bhttp::decode_request(&request.message.payload) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("Failed to decode BHTTP request: {e}");
            tracing::debug!(subject = %request.message.subject, "{msg}");
            let _ = request.respond_error(400, &msg, Bytes::new(), None).await;
            return;
        }
    };
    let (parts, body) = http_request.into_parts();
    let call = async move {
        let response = service
            .oneshot(Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(Into::into)?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(Into::into)?.to_bytes();
        Ok::<_, BoxError>((parts, body))
    };
    let (parts, body) = match AssertUnwindSafe(call).catch_unwind().await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "handler failed");
            internal_error()
        }
        Err(_) => {
            tracing::error!("handler panicked");
            internal_error()
        }
    };
    let mut payload = bhttp::encode_response(&parts, &body);
    let max = client.server_info().max_payload;
    if max > 0 && payload.len() > max {
        tracing::error!(
            size = payload.len(),
            max,
            "response exceeds the NATS max_payload"
        );
        let (parts, _) = plain(
            StatusCode::BAD_GATEWAY,
            "Response too large for NATS max_payload",
        );
        payload = bhttp::encode_response(&parts, b"Response too large for NATS max_payload\n");
    }
    if let Err(e) = request.respond(payload.into(), None).await {
        tracing::warn!(error = %e, "failed to send reply");
    }
}

fn internal_error() -> (http::response::Parts, Bytes) {
    plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
}

fn plain(status: StatusCode, text: &str) -> (http::response::Parts, Bytes) {
    let (parts, ()) = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(())
        .expect("static response")
        .into_parts();
    (parts, Bytes::from(format!("{text}\n")))
}

/// Completes on the first SIGTERM or SIGINT.
fn termination_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

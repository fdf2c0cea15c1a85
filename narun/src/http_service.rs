//! Driving a tower HTTP service from NATS Micro requests.

use crate::{Error, HTTP_ENDPOINT, Options, runner};
use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use narun_wire::bhttp;
use narun_wire::micro::{self, Service};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
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
pub struct Server(runner::Running);

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
        let handler = move |client, request| handle(client, request, service.clone());
        runner::start(opts, HTTP_ENDPOINT, "HTTP", handler)
            .await
            .map(Server)
    }

    /// The ADR-32 service (id, stats, info).
    pub fn service(&self) -> &Service {
        &self.0.service
    }

    /// Stop taking requests, finish the in-flight ones (bounded by
    /// [`Options::shutdown_timeout`]) and unregister from discovery.
    pub async fn shutdown(self) {
        self.0.shutdown().await
    }
}

/// Answer one request: BHTTP in, the service, BHTTP out.
async fn handle<S, B>(client: Arc<async_nats::Client>, request: micro::Request, service: S)
where
    S: TowerService<Request<Full<Bytes>>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let http_request = match bhttp::decode_request_shared(request.message.payload.clone()) {
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
        let body = read_all(body).await.map_err(Into::into)?;
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
    let max = client.max_payload();
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

/// The whole body. The usual answer is one data frame, taken as is: no list of
/// buffers is allocated (as `collect` would) and nothing is copied.
async fn read_all<B: http_body::Body>(body: B) -> Result<Bytes, B::Error> {
    use bytes::{Buf, BytesMut};
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    while !body.is_end_stream() {
        let Some(frame) = body.frame().await else {
            break;
        };
        let Ok(mut data) = frame?.into_data() else {
            continue; // trailers: BHTTP responses here carry none
        };
        let chunk = data.copy_to_bytes(data.remaining());
        match (&first, &mut more) {
            (None, _) => first = Some(chunk),
            (Some(f), None) => {
                let mut b = BytesMut::with_capacity(f.len() + chunk.len());
                b.extend_from_slice(f);
                b.extend_from_slice(&chunk);
                more = Some(b);
            }
            (Some(_), Some(b)) => b.extend_from_slice(&chunk),
        }
    }
    Ok(match more {
        Some(b) => b.freeze(),
        None => first.unwrap_or_default(),
    })
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

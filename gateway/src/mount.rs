//! Handlers of the embedding program on the routed listener: narund mounts its web
//! dashboard (`[dashboard]` in narund.toml, docs/dashboard.md) under a path prefix here.
//!
//! A request whose path starts with the prefix (or is the prefix without its trailing
//! slash) never reaches the route table: its body is read first (at most [`MAX_BODY`]
//! bytes, within [`BODY_TIMEOUT`]; else 413 or 408 from the gateway), then the handler
//! answers with any body, streamed or not (server-sent events stay open). Nothing is
//! mounted unless the embedding program calls [`crate::Gateway::set_mount`], so a gateway
//! without it behaves as before.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The body of a mounted handler's response.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;
/// What a mounted handler returns.
pub type Answer = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// Largest request body a mounted handler is given.
pub const MAX_BODY: usize = 64 * 1024;
/// Time a client has to send that body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A handler mounted on a path prefix.
pub trait Handler: Send + Sync + 'static {
    /// Answer `req` (its body read completely) from the client at `peer`.
    fn call(&self, req: Request<Bytes>, peer: SocketAddr) -> Answer;
}

/// `body` as a mounted handler's response body.
pub fn full(body: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(body.into()).boxed_unsync()
}

pub(crate) struct Mounted {
    pub(crate) prefix: String,
    pub(crate) handler: Arc<dyn Handler>,
}

impl Mounted {
    /// Whether `path` is below the prefix (or is the prefix without its trailing slash).
    pub(crate) fn matches(&self, path: &str) -> bool {
        path.starts_with(&self.prefix)
            || self
                .prefix
                .strip_suffix('/')
                .is_some_and(|p| !p.is_empty() && path == p)
    }

    /// Read the body (bounded), then let the handler answer.
    pub(crate) async fn serve(
        &self,
        req: Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let limited = http_body_util::Limited::new(body, MAX_BODY);
        let body = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return status(StatusCode::PAYLOAD_TOO_LARGE, "request body over 64 KiB");
            }
            Ok(Err(_)) => return status(StatusCode::BAD_REQUEST, "unreadable request body"),
            Err(_) => return status(StatusCode::REQUEST_TIMEOUT, "request body too slow"),
        };
        self.handler
            .call(Request::from_parts(parts, body), peer)
            .await
    }
}

fn status(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(full(text));
    *r.status_mut() = code;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Handler for Nothing {
        fn call(&self, _: Request<Bytes>, _: SocketAddr) -> Answer {
            Box::pin(async { Response::new(full("")) })
        }
    }

    #[test]
    fn prefix_matching() {
        let m = Mounted {
            prefix: "/_narun/".into(),
            handler: Arc::new(Nothing),
        };
        assert!(m.matches("/_narun/"));
        assert!(m.matches("/_narun"));
        assert!(m.matches("/_narun/api/nodes"));
        assert!(!m.matches("/_narunx"));
        assert!(!m.matches("/"));
        assert!(!m.matches("/hello/_narun/"));
    }
}

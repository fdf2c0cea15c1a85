//! The web dashboard (cargo feature `dashboard`, on by default; it needs `gateway`):
//! narund serves a page under `[dashboard] path` (default `/_narun/`) on the gateway's HTTP
//! listener ([`narun_gateway::mount`]) showing the nodes, the apps (desired against
//! running, reasons, restarts, releases), one app's instances with its live log and status
//! events and CPU/memory sparklines, and the Micro services; an admin token may restart,
//! scale, roll back and delete apps. docs/dashboard.md shows it.
//!
//! ```text
//! GET  <path>                       index.html, app.js, app.css (compiled in: assets/)
//! GET  <path>api/whoami             "admin" or "read"                   ┐ Authorization:
//! GET  <path>api/nodes | api/apps | api/services | api/apps/<app>       │ Bearer TOKEN
//! GET  <path>api/jobs               the newest async jobs (no request)  │
//! GET  <path>api/apps/<app>/metrics   the metrics ring, per node        │ (access)
//! GET  <path>api/apps/<app>/events    server-sent events: logs.<app>.>, │
//!                                     status.<app>.>                    │
//! POST <path>api/apps/<app>/{restart,scale,rollback,delete}  admin only ┘
//! ```
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | `[dashboard]` of narund.toml |
//! | [`access`] | tokens → roles, CSRF rules (pure) |
//! | [`api`] | the JSON views and the actions (NATS reads and writes) |
//! | [`jobs`] | the newest async jobs (state bucket of the gateways' `async` routes) |
//! | [`ring`] | the bounded per-app, per-node CPU/memory history: this node's sampler, the other nodes' heartbeats |
//!
//! Every answer carries a content security policy without inline script or style
//! ([`CSP`]); the page builds its DOM with `textContent`, never HTML from data.

pub mod access;
pub mod api;
pub mod config;
pub mod jobs;
pub mod ring;

use access::{Role, Tokens};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use narun_gateway::mount::{self, Answer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The content security policy of every answer.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Seconds between two comments on an idle event stream (proxies keep it open).
const KEEPALIVE: Duration = Duration::from_secs(15);

// The page, gzip-compressed (scripts/dashboard-assets.sh; the sources sit beside them):
// 7.7 KB in narund instead of 22 KB. Served with `Content-Encoding: gzip` to every client
// that accepts it ([`accepts_gzip`]); every browser does.
const INDEX: &[u8] = include_bytes!("assets/index.html.gz");
const JS: &[u8] = include_bytes!("assets/app.js.gz");
const CSS: &[u8] = include_bytes!("assets/app.css.gz");

struct Inner {
    prefix: String,
    tokens: Tokens,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    ring: Arc<Mutex<ring::Ring>>,
    sample_sec: u64,
}

/// The dashboard's handler (see the module doc).
#[derive(Clone)]
pub struct Dashboard(Arc<Inner>);

/// Mount the dashboard on `gateway` (when `[dashboard] enabled`) and start its metrics
/// sampler; nothing happens when it is disabled.
pub fn mount(
    gateway: &narun_gateway::Gateway,
    config: &config::DashboardConfig,
    client: &async_nats::Client,
    node: &crate::node::Node,
    cgroup_root: Option<std::path::PathBuf>,
    stop: CancellationToken,
) {
    if !config.enabled {
        return;
    }
    let ring = Arc::new(Mutex::new(ring::Ring::default()));
    crate::spawn(ring::sample_loop(
        node.clone(),
        async_nats::jetstream::new(client.clone()),
        cgroup_root,
        ring.clone(),
        Duration::from_secs(config.sample_sec),
        stop,
    ));
    let d = Dashboard(Arc::new(Inner {
        prefix: config.path.clone(),
        tokens: Tokens::from_config(config),
        client: client.clone(),
        js: async_nats::jetstream::new(client.clone()),
        ring,
        sample_sec: config.sample_sec,
    }));
    tracing::info!(
        path = %config.path,
        tokens = config.admin_tokens.len() + config.read_tokens.len(),
        "serving the dashboard (without tokens it shows nothing)"
    );
    gateway.set_mount(&config.path, Arc::new(d));
}

impl mount::Handler for Dashboard {
    fn call(&self, req: Request<Bytes>, _peer: SocketAddr) -> Answer {
        let d = self.clone();
        Box::pin(async move { d.answer(req).await })
    }
}

fn with_headers(mut r: Response<mount::Body>, content_type: &'static str) -> Response<mount::Body> {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, msg: &str) -> Response<mount::Body> {
    let msg = serde_json::Value::String(msg.to_owned());
    json(status, format!("{{\"error\":{msg}}}"))
}

fn json(status: StatusCode, v: String) -> Response<mount::Body> {
    let mut r = Response::new(mount::full(v));
    *r.status_mut() = status;
    with_headers(r, "application/json")
}

/// Whether a request with this `Accept-Encoding` takes a gzip body: yes without the
/// header (RFC 9110 §12.5.3: no preference), and when `gzip`, `x-gzip` or `*` is listed
/// without `q=0`.
pub fn accepts_gzip(accept_encoding: Option<&[u8]>) -> bool {
    let Some(v) = accept_encoding else {
        return true;
    };
    String::from_utf8_lossy(v).split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        matches!(coding.as_str(), "gzip" | "x-gzip" | "*") && !refused
    })
}

/// One of the page's files (gzip, see [`INDEX`]); 406 for a client that refuses gzip.
fn asset(
    req: &Request<Bytes>,
    body: &'static [u8],
    content_type: &'static str,
) -> Response<mount::Body> {
    let accept = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .map(|v| v.as_bytes());
    if !accepts_gzip(accept) {
        return text(
            StatusCode::NOT_ACCEPTABLE,
            "the dashboard's page is served gzip-compressed (Accept-Encoding: gzip); use a browser or curl --compressed",
        );
    }
    let mut r = with_headers(Response::new(mount::full(body)), content_type);
    let h = r.headers_mut();
    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    r
}

impl Dashboard {
    async fn answer(&self, req: Request<Bytes>) -> Response<mount::Body> {
        let path = req.uri().path().to_owned();
        let Some(rest) = path.strip_prefix(&self.0.prefix) else {
            // The prefix without its slash: where the page is.
            let mut r = Response::new(mount::full(""));
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            r.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&self.0.prefix).unwrap_or(HeaderValue::from_static("/")),
            );
            return with_headers(r, "text/plain");
        };
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        match rest {
            "" | "index.html" if get => return asset(&req, INDEX, "text/html; charset=utf-8"),
            "app.js" if get => return asset(&req, JS, "text/javascript; charset=utf-8"),
            "app.css" if get => return asset(&req, CSS, "text/css; charset=utf-8"),
            _ => {}
        }
        let Some(api) = rest.strip_prefix("api/") else {
            return text(StatusCode::NOT_FOUND, "not found");
        };
        let role = match self.0.tokens.role(req.headers()) {
            Ok(r) => r,
            Err(e) => {
                let mut r = text(e.status, e.message);
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"narun dashboard\""),
                );
                return r;
            }
        };
        let parts: Vec<&str> = api.split('/').collect();
        let (js, client) = (&self.0.js, &self.0.client);
        let result = match (get, parts.as_slice()) {
            (true, ["whoami"]) => Ok(serde_json::Value::String(role.as_str().into())),
            (true, ["nodes"]) => api::nodes(js).await,
            (true, ["apps"]) => api::apps(js).await,
            (true, ["services"]) => api::services(client).await,
            (true, ["jobs"]) => jobs::list(js).await,
            (_, ["apps", name, ..]) if !api::app_name_ok(name) => Err(api::err(
                StatusCode::BAD_REQUEST,
                "app name: letters, digits, '-' and '_' only (at most 64)",
            )),
            (true, ["apps", name]) => api::app(js, name).await,
            (true, ["apps", name, "metrics"]) => {
                let series = self.0.ring.lock().unwrap().series_json(name);
                let body = format!(
                    "{{\"sample_sec\":{},\"series\":{series}}}",
                    self.0.sample_sec
                );
                return json(StatusCode::OK, body);
            }
            (true, ["apps", name, "events"]) => return self.events(name),
            (
                false,
                [
                    "apps",
                    name,
                    verb @ ("restart" | "scale" | "rollback" | "delete"),
                ],
            ) => self.act(role, &req, name, verb).await,
            _ => Err(api::err(
                StatusCode::NOT_FOUND,
                "no such API path or method",
            )),
        };
        match result {
            Ok(v) => json(StatusCode::OK, v.to_string()),
            Err(e) => text(e.status, &e.message),
        }
    }

    async fn act(
        &self,
        role: Role,
        req: &Request<Bytes>,
        name: &str,
        verb: &str,
    ) -> api::ApiResult {
        access::check_action(
            role,
            req.method(),
            req.headers(),
            req.uri().authority().map(|a| a.as_str()),
        )
        .map_err(|e| api::err(e.status, e.message))?;
        let body: serde_json::Value = if req.body().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(req.body())
                .map_err(|e| api::err(StatusCode::BAD_REQUEST, format!("body: not JSON: {e}")))?
        };
        let js = &self.0.js;
        tracing::info!(app = name, action = verb, "dashboard action");
        match verb {
            "restart" => api::restart(&self.0.client, js, name).await,
            "scale" => api::scale(js, name, &body).await,
            "rollback" => api::rollback(js, name).await,
            _ => api::delete(js, name, &body).await,
        }
    }

    /// `text/event-stream` of the app's log lines (`event: log`) and status events
    /// (`event: status`), each `data` the JSON published on NATS; a comment every
    /// [`KEEPALIVE`]. The body itself reads the two subscriptions (no task of its own): when
    /// the page goes away hyper drops it, and the subscriptions end with it. A page that
    /// reads too slowly loses events to the NATS client's bounded subscription buffer.
    fn events(&self, name: &str) -> Response<mount::Body> {
        struct Live {
            logs: Option<async_nats::Subscriber>,
            status: Option<async_nats::Subscriber>,
            keep: tokio::time::Interval,
            started: bool,
        }
        let client = self.0.client.clone();
        let (logs, status) = (format!("logs.{name}.>"), format!("status.{name}.>"));
        let init = async move {
            Live {
                logs: client.subscribe(logs).await.ok(),
                status: client.subscribe(status).await.ok(),
                keep: tokio::time::interval(KEEPALIVE),
                started: false,
            }
        };
        let stream = futures_util::stream::once(init).flat_map(|live| {
            futures_util::stream::unfold(live, |mut l| async move {
                let frame = if !l.started {
                    l.started = true;
                    if l.logs.is_none() || l.status.is_none() {
                        return None;
                    }
                    Bytes::from_static(b": connected\n\n")
                } else {
                    let (Some(logs), Some(status)) = (l.logs.as_mut(), l.status.as_mut()) else {
                        return None;
                    };
                    tokio::select! {
                        m = logs.next() => sse("log", &m?.payload),
                        m = status.next() => sse("status", &m?.payload),
                        _ = l.keep.tick() => Bytes::from_static(b": keep-alive\n\n"),
                    }
                };
                Some((Ok(http_body::Frame::data(frame)), l))
            })
        });
        let body = http_body_util::StreamBody::new(stream).boxed_unsync();
        with_headers(Response::new(body), "text/event-stream")
    }
}

/// One server-sent event; `data` on one line (JSON payloads have no raw newline; any other
/// line break is cut into `data:` lines, as the format wants).
fn sse(event: &str, payload: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(payload);
    let mut out = format!("event: {event}\n");
    for line in text.lines() {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sse_frames() {
        assert_eq!(
            &super::sse("log", b"{\"a\":1}")[..],
            b"event: log\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            &super::sse("x", b"a\nb")[..],
            b"event: x\ndata: a\ndata: b\n\n"
        );
    }

    #[test]
    fn gzip_is_served_to_whoever_accepts_it() {
        use super::accepts_gzip;
        for yes in [
            None,
            Some("gzip"),
            Some("gzip, deflate, br, zstd"),
            Some("br;q=1.0, GZIP;q=0.5"),
            Some("*"),
            Some("x-gzip"),
        ] {
            assert!(accepts_gzip(yes.map(str::as_bytes)), "{yes:?}");
        }
        for no in [
            Some(""),
            Some("identity"),
            Some("gzip;q=0"),
            Some("br, gzip; q=0.000"),
            Some("*;q=0"),
            Some("gzipx"),
        ] {
            assert!(!accepts_gzip(no.map(str::as_bytes)), "{no:?}");
        }
    }

    /// The compiled-in .gz files are the sources beside them (scripts/dashboard-assets.sh).
    #[test]
    fn compressed_page_matches_its_sources() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/dashboard/assets");
        for (name, gz) in [
            ("index.html", super::INDEX),
            ("app.js", super::JS),
            ("app.css", super::CSS),
        ] {
            let plain = narun_test_support::gunzip(gz, &format!("{name}.gz"));
            let source = std::fs::read(dir.join(name)).unwrap();
            assert!(
                plain == source,
                "{name}.gz is stale: run scripts/dashboard-assets.sh"
            );
        }
    }
}

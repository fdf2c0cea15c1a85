//! Shared test fixtures: a real nats-server, a real gateway on loopback ports,
//! a real HTTP client, and small NATS Micro services written with `narun_wire`.
#![allow(dead_code)]

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use narun_gateway::{Gateway, GatewayConfig, GatewayError};
use narun_test_support::NatsServer;
pub use narun_test_support::{synced, wait_connected};
use narun_wire::micro::{EndpointConfig, Service, ServiceConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// A running gateway, stopped when dropped (or explicitly with [`GatewayRun::shutdown`]).
pub struct GatewayRun {
    pub http: SocketAddr,
    pub metrics: SocketAddr,
    /// The gRPC listener, when the config has `grpc_addr` and gRPC routes.
    pub grpc: Option<SocketAddr>,
    pub service_id: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), GatewayError>>>,
}

impl GatewayRun {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.metrics)
    }

    /// Trigger graceful shutdown; the returned handle finishes when `run` returns.
    pub fn shutdown(&mut self) -> JoinHandle<Result<(), GatewayError>> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.take().expect("gateway already shut down")
    }
}

impl Drop for GatewayRun {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A client that connects in the background and keeps reconnecting, as narund's.
pub async fn gateway_client(server: &NatsServer) -> async_nats::Client {
    let settings = narun_wire::connect::NatsSettings {
        url: server.url(),
        ..Default::default()
    };
    settings
        .connect("narun-gateway-test")
        .await
        .expect("client")
}

/// Start a gateway for `toml` (a document with `[gateway]` and routes); the
/// listeners are forced to loopback port 0 (`grpc_addr` too, when set).
pub async fn start_gateway(client: async_nats::Client, toml: &str) -> GatewayRun {
    let mut cfg = GatewayConfig::from_toml(toml).unwrap_or_else(|e| panic!("config: {e}"));
    cfg.http_addr = "127.0.0.1:0".into();
    cfg.metrics_addr = "127.0.0.1:0".into();
    if cfg.grpc_addr.is_some() {
        cfg.grpc_addr = Some("127.0.0.1:0".into());
    }
    let gw = Gateway::bind(cfg, client).await.expect("bind gateway");
    let (http, metrics, grpc) = (gw.http_addr(), gw.metrics_addr(), gw.grpc_addr());
    let service_id = gw.service().id().to_owned();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(gw.run(async move {
        let _ = rx.await;
    }));
    GatewayRun {
        http,
        metrics,
        grpc,
        service_id,
        stop: Some(tx),
        task: Some(task),
    }
}

pub fn http_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.text()))
    }
}

/// Send a request and read the whole answer (bounded by 30 s).
pub async fn send(req: Request<Body>) -> Reply {
    send_with(&http_client(), req).await
}

pub async fn send_with(client: &Client<HttpConnector, Body>, req: Request<Body>) -> Reply {
    let what = format!("{} {}", req.method(), req.uri());
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("read body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Reply {
    send(Request::get(url).body(full("")).unwrap()).await
}

/// What the echo service does, by request path (below its route):
/// * `.../sleep/<ms>`: answer after `ms` milliseconds (and report "received" first);
/// * `.../garbage`: reply bytes that are not BHTTP;
/// * `.../error/<code>`: an ADR-32 error reply with that code and text `failed <code>`;
/// * `.../status/<code>`: a BHTTP response with that status;
/// * `.../hop`: a BHTTP response carrying hop-by-hop headers;
/// * anything else: 200 with a JSON echo of the request.
pub struct EchoService {
    pub received: Arc<AtomicUsize>,
    /// One message per request received (the path), sent before answering.
    pub seen: mpsc::UnboundedReceiver<String>,
    pub service: Service,
}

impl EchoService {
    pub fn count(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

pub async fn echo_service(client: &async_nats::Client, name: &str) -> EchoService {
    let service = Service::start(client, ServiceConfig::new(name, "1.0.0"))
        .await
        .expect("start echo service");
    let mut ep = service
        .add_endpoint(EndpointConfig::new("handler", name))
        .await
        .expect("endpoint");
    synced(client).await;
    let received = Arc::new(AtomicUsize::new(0));
    let (tx, seen) = mpsc::unbounded_channel();
    let count = received.clone();
    tokio::spawn(async move {
        while let Some(req) = ep.next().await {
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move { answer(req, tx).await });
        }
    });
    EchoService {
        received,
        seen,
        service,
    }
}

async fn answer(req: narun_wire::micro::Request, seen: mpsc::UnboundedSender<String>) {
    let nats_headers: serde_json::Map<String, serde_json::Value> = req
        .message
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .map(|(k, v)| {
            let k: &str = k.as_ref();
            (k.to_owned(), serde_json::Value::from(v[0].as_str()))
        })
        .collect();
    let http_req = match narun_wire::bhttp::decode_request(&req.message.payload) {
        Ok(r) => r,
        Err(e) => {
            let _ = req
                .respond_error(400, &format!("bad bhttp: {e}"), Bytes::new(), None)
                .await;
            return;
        }
    };
    let path = http_req.uri().path().to_owned();
    let _ = seen.send(path.clone());
    let segs: Vec<&str> = path.split('/').collect();
    let tail = |name: &str| -> Option<&str> {
        segs.iter()
            .position(|s| *s == name)
            .and_then(|i| segs.get(i + 1).copied())
    };
    if let Some(ms) = tail("sleep") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    } else if segs.contains(&"garbage") {
        let _ = req
            .respond(Bytes::from_static(b"\xff\xffnot bhttp"), None)
            .await;
        return;
    } else if let Some(code) = tail("error") {
        let code: u16 = code.parse().unwrap();
        let _ = req
            .respond_error(code, &format!("failed {code}"), Bytes::new(), None)
            .await;
        return;
    } else if segs.contains(&"hop") {
        let mut msg = bhttp::Message::response(bhttp::StatusCode::try_from(200u16).unwrap());
        for (n, v) in [
            ("connection", "x-hop-private"),
            ("x-hop-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ] {
            msg.put_header(n.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        msg.write_content(b"hop");
        let mut out = Vec::new();
        msg.write_bhttp(bhttp::Mode::KnownLength, &mut out).unwrap();
        let _ = req.respond(out.into(), None).await;
        return;
    }
    let status = tail("status")
        .map(|s| s.parse::<u16>().unwrap())
        .unwrap_or(200);
    let headers: serde_json::Map<String, serde_json::Value> = http_req
        .headers()
        .keys()
        .map(|k| {
            let vals: Vec<&str> = http_req
                .headers()
                .get_all(k)
                .iter()
                .map(|v| v.to_str().unwrap_or("<binary>"))
                .collect();
            (
                k.as_str().to_owned(),
                serde_json::Value::from(vals.join(" | ")),
            )
        })
        .collect();
    let echo = serde_json::json!({
        "method": http_req.method().as_str(),
        "uri": http_req.uri().to_string(),
        "headers": headers,
        "nats_headers": nats_headers,
        "body_len": http_req.body().len(),
    });
    let resp = http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-app", "echo")
        .body(())
        .unwrap();
    let (parts, ()) = resp.into_parts();
    let out = narun_wire::bhttp::encode_response(&parts, echo.to_string().as_bytes());
    let _ = req.respond(out.into(), None).await;
}

//! A handler's log lines carry its trace: the library runs each request in a `request`
//! span with `trace_id`/`span_id`, which `tracing-subscriber`'s default format prints on
//! every line, and which narund lifts into the JSON log record
//! (`narun_wire::trace::find_trace_id`). Real nats-server, the service in this process.

use axum::{Router, routing::post};
use narun::trace::{TraceContext, TraceParent};
use narun::{Client, Options, Server};
use narun_test_support::{NatsServer, T};
use narun_wire::connect::NatsSettings;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_log_lines_carry_the_trace_id() {
    let out = Captured::default();
    let writer = out.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let server = NatsServer::start();
    let router = Router::new().route(
        "/work",
        post(|| async {
            tracing::info!("handling the work");
            "done"
        }),
    );
    let srv = Server::start(
        Options::new("traced").nats(NatsSettings {
            url: server.url(),
            ..Default::default()
        }),
        router,
    )
    .await
    .unwrap();

    // The caller's trace: a client call made in a context of its own.
    let parent =
        TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let ctx = TraceContext::child_of(&parent, None);
    let client = Client::new(server.connect().await).with_timeout(T);
    let req = http::Request::post("/work")
        .body(bytes::Bytes::new())
        .unwrap();
    let r = narun::trace::in_context(ctx.clone(), client.request("traced", req))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    srv.shutdown().await;

    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("handling the work"))
        .unwrap_or_else(|| panic!("the handler's line is logged: {text}"));
    let id = narun_wire::trace::find_trace_id(line.as_bytes())
        .unwrap_or_else(|| panic!("a trace id in {line:?}"));
    assert_eq!(id, b"4bf92f3577b34da6a3ce929d0e0e4736", "{line}");
    // The handler's span is a child of the caller's (`ctx`), not the caller's itself.
    assert!(line.contains("span_id="), "{line}");
    assert!(
        !line.contains(&format!("span_id={}", ctx.span_id)),
        "{line}"
    );
}

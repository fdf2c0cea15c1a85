//! Which requests take one of the app library's `max_inflight` slots, and for how
//! long: requests without a reply subject never do, and a request carrying the
//! caller's deadline (`Narun-Timeout-Ms`) gives its slot back when the deadline
//! passes. Real nats-server, the library serving an axum router.

use axum::{Router, routing::get};
use bytes::Bytes;
use futures_util::StreamExt;
use narun::{Options, STAT_DEADLINE_EXCEEDED, STAT_NO_REPLY, Server};
use narun_test_support::{NatsServer, T, synced, wait_for};
use narun_wire::bhttp;
use narun_wire::connect::NatsSettings;
use narun_wire::micro::StatsResponse;
use narun_wire::names::TIMEOUT_MS_HEADER;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

fn opts(server: &NatsServer, name: &str) -> Options {
    Options::new(name).nats(NatsSettings {
        url: server.url(),
        ..Default::default()
    })
}

fn bhttp_get(path: &str) -> Bytes {
    let (parts, ()) = http::Request::get(path)
        .header("host", "gw.test")
        .body(())
        .unwrap()
        .into_parts();
    bhttp::encode_request(&parts, b"").into()
}

/// A request the way the gateway sends it, answered within [`T`].
async fn call(client: &async_nats::Client, service: &str, path: &str) -> http::Response<Bytes> {
    let msg = tokio::time::timeout(T, client.request(service.to_owned(), bhttp_get(path)))
        .await
        .unwrap_or_else(|_| panic!("{path} was not answered within {T:?}"))
        .expect("request failed");
    bhttp::decode_response(&msg.payload).expect("BHTTP reply")
}

fn with_deadline(ms: &str) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(TIMEOUT_MS_HEADER, ms);
    h
}

/// The service's `$SRV.STATS` document, as an operator's `nats micro stats` reads it.
async fn stats(client: &async_nats::Client, service: &str) -> StatsResponse {
    let m = tokio::time::timeout(
        T,
        client.request(format!("$SRV.STATS.{service}"), Bytes::new()),
    )
    .await
    .expect("$SRV.STATS answered in time")
    .expect("$SRV.STATS");
    serde_json::from_slice(&m.payload).expect("stats document")
}

/// Sends a message when dropped: shows that a handler future was cancelled.
struct DropGuard(mpsc::UnboundedSender<&'static str>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        let _ = self.0.send("dropped");
    }
}

/// `/block` reports its start on `events` and waits for a permit of `gate`;
/// `/slow` reports its start and then waits forever, holding a [`DropGuard`];
/// `/fast` answers at once.
fn app(events: mpsc::UnboundedSender<&'static str>, gate: Arc<Semaphore>) -> Router {
    let (e1, e2) = (events.clone(), events);
    Router::new()
        .route(
            "/block",
            get(move || {
                let (events, gate) = (e1.clone(), gate.clone());
                async move {
                    let _ = events.send("block started");
                    gate.acquire().await.unwrap().forget();
                    "unblocked"
                }
            }),
        )
        .route(
            "/slow",
            get(move || {
                let events = e2.clone();
                async move {
                    let _guard = DropGuard(events.clone());
                    let _ = events.send("slow started");
                    std::future::pending::<()>().await;
                    "never"
                }
            }),
        )
        .route("/fast", get(|| async { "fast" }))
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<&'static str>) -> &'static str {
    tokio::time::timeout(T, events.recv())
        .await
        .expect("no handler event within T")
        .expect("events channel open")
}

#[tokio::test]
async fn requests_without_a_reply_subject_never_take_a_slot() {
    let server = NatsServer::start();
    let (tx, mut events) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    // The default limit, 256 slots: 300 requests without a reply subject to a
    // handler that blocks would take all of them.
    let srv = Server::start(opts(&server, "noreply"), app(tx, gate.clone()))
        .await
        .unwrap();
    assert_eq!(srv.service().name(), "noreply");
    let client = server.connect().await;
    for _ in 0..300 {
        client
            .publish("noreply", bhttp_get("/block"))
            .await
            .unwrap();
    }
    synced(&client).await;
    // A caller who waits is served at once, after all 300 (same connection:
    // NATS keeps their order).
    let resp = call(&client, "noreply", "/fast").await;
    assert_eq!(resp.body().as_ref(), b"fast");
    assert!(
        events.try_recv().is_err(),
        "a request without a reply subject ran its handler"
    );
    // Counted where an operator looks: `$SRV.STATS` (`nats micro stats`).
    let s = stats(&client, "noreply").await;
    let e = &s.endpoints[0];
    assert_eq!(e.data[STAT_NO_REPLY], 300, "{e:?}");
    assert_eq!(e.num_errors, 300, "{e:?}");
    assert_eq!(e.num_requests, 301, "{e:?}");
    assert!(e.last_error.contains("reply subject"), "{e:?}");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_handler_past_its_deadline_is_dropped_and_frees_its_slot() {
    let server = NatsServer::start();
    let (tx, mut events) = mpsc::unbounded_channel();
    let srv = Server::start(
        opts(&server, "deadline").max_inflight(1),
        app(tx, Arc::new(Semaphore::new(0))),
    )
    .await
    .unwrap();
    let client = server.connect().await;
    // The caller's reply inbox: nothing may arrive there for the dropped request.
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    synced(&client).await;
    let sent = Instant::now();
    client
        .publish_with_reply_and_headers("deadline", inbox, with_deadline("300"), bhttp_get("/slow"))
        .await
        .unwrap();
    synced(&client).await;
    assert_eq!(next_event(&mut events).await, "slow started");
    // One slot, held by /slow: this request waits for it.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            let resp = call(&client, "deadline", "/fast").await;
            (resp, Instant::now())
        })
    };
    assert_eq!(next_event(&mut events).await, "dropped");
    let dropped = Instant::now();
    assert!(
        dropped - sent >= Duration::from_millis(300),
        "dropped {:?} after sending, before its 300 ms deadline",
        dropped - sent
    );
    // The slot is free again: the waiting request is served right after.
    let (resp, answered) = waiting.await.unwrap();
    assert_eq!(resp.body().as_ref(), b"fast");
    assert!(answered >= dropped);
    // No reply for the dropped request (the caller has given up).
    synced(&client).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), replies.next())
            .await
            .is_err(),
        "the dropped request was answered"
    );
    let e = &srv.service().stats().endpoints[0];
    assert_eq!(e.data[STAT_DEADLINE_EXCEEDED], 1, "{e:?}");
    assert_eq!(e.num_errors, 1, "{e:?}");
    assert!(e.last_error.starts_with("504:"), "{e:?}");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_request_whose_deadline_passes_while_it_waits_for_a_slot_never_runs() {
    let server = NatsServer::start();
    let (tx, mut events) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let srv = Server::start(
        opts(&server, "queued").max_inflight(1),
        app(tx, gate.clone()),
    )
    .await
    .unwrap();
    let client = server.connect().await;
    // /block (no deadline) holds the only slot until the gate opens.
    let blocked = {
        let client = client.clone();
        tokio::spawn(async move { call(&client, "queued", "/block").await })
    };
    assert_eq!(next_event(&mut events).await, "block started");
    // Deadlines of 200 ms and 0 ms ("the time is up"), and a malformed value
    // (ignored: the request waits and runs like one without the header).
    for ms in ["200", "0"] {
        let inbox = client.new_inbox();
        client
            .publish_with_reply_and_headers("queued", inbox, with_deadline(ms), bhttp_get("/slow"))
            .await
            .unwrap();
    }
    wait_for(
        "both deadlines to pass while /block holds the slot",
        T,
        || {
            let n = srv.service().stats().endpoints[0].data[STAT_DEADLINE_EXCEEDED].as_u64();
            async move { (n == Some(2)).then_some(()) }
        },
    )
    .await;
    assert!(!blocked.is_finished());
    let malformed = {
        let client = client.clone();
        tokio::spawn(async move {
            let m = client
                .request_with_headers("queued", with_deadline("soon"), bhttp_get("/fast"))
                .await
                .expect("request with a malformed deadline");
            bhttp::decode_response(&m.payload).unwrap()
        })
    };
    gate.add_permits(1);
    assert_eq!(
        tokio::time::timeout(T, blocked)
            .await
            .unwrap()
            .unwrap()
            .body()
            .as_ref(),
        b"unblocked"
    );
    let resp = tokio::time::timeout(T, malformed).await.unwrap().unwrap();
    assert_eq!(resp.body().as_ref(), b"fast");
    let resp = call(&client, "queued", "/fast").await;
    assert_eq!(resp.body().as_ref(), b"fast");
    assert!(
        events.try_recv().is_err(),
        "a request whose deadline passed in the queue ran its handler"
    );
    let e = &srv.service().stats().endpoints[0];
    assert_eq!(e.num_errors, 2, "{e:?}");
    srv.shutdown().await;
}

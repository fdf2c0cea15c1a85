//! Services calling services (`narun::Client`) against a real nats-server, with both
//! services served by the library in this process: typed JSON calls, typed errors, and
//! the caller's deadline travelling with each call.

use axum::{Json, Router, routing::post};
use narun::{CallError, Client, Options, Server};
use narun_test_support::{NatsServer, T};
use narun_wire::connect::NatsSettings;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::mpsc;

fn opts(server: &NatsServer, name: &str) -> Options {
    Options::new(name).nats(NatsSettings {
        url: server.url(),
        ..Default::default()
    })
}

#[derive(Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Sum {
    sum: i64,
}

fn calc() -> Router {
    Router::new()
        .route(
            "/add",
            post(|Json(r): Json<Add>| async move { Json(Sum { sum: r.a + r.b }) }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
}

#[tokio::test]
async fn typed_calls_and_typed_errors() {
    let server = NatsServer::start();
    let srv = Server::start(opts(&server, "calc"), calc()).await.unwrap();
    let client = Client::new(server.connect().await).with_timeout(T);

    let s: Sum = client
        .call("calc", "/add", &Add { a: 2, b: 40 })
        .await
        .unwrap();
    assert_eq!(s, Sum { sum: 42 });

    // An HTTP error status comes back as such, with its body.
    let e = client
        .call::<_, Sum>("calc", "/nope", &Add { a: 1, b: 1 })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CallError::Status { status, .. } if *status == 404),
        "{e}"
    );
    assert_eq!(e.status(), 404);

    // A body the handler cannot parse: axum's 4xx, not a decode error on our side.
    let e = client
        .call::<_, Sum>("calc", "/add", &serde_json::json!({"a": "x"}))
        .await
        .unwrap_err();
    assert!(e.status().is_client_error(), "{e}");

    // An answer that is not the expected JSON.
    let e = client
        .call::<_, Vec<String>>("calc", "/add", &Add { a: 1, b: 1 })
        .await
        .unwrap_err();
    assert!(matches!(e, CallError::Decode { .. }), "{e}");

    // Nobody serves it: at once, not after the timeout.
    let started = std::time::Instant::now();
    let e = client
        .call::<_, Sum>("nobody", "/add", &Add { a: 1, b: 1 })
        .await
        .unwrap_err();
    assert!(
        matches!(e, CallError::NoResponders { waited, .. } if waited.is_zero()),
        "{e}"
    );
    assert!(e.to_string().contains("narunctl services ls"), "{e}");
    assert!(!e.to_string().contains("waited"), "{e}");
    assert!(started.elapsed() < T);

    // The client's own budget, and the header that tells the service about it.
    let short = Client::new(server.connect().await).with_timeout(Duration::from_millis(300));
    let e = short
        .call::<_, String>("calc", "/slow", &())
        .await
        .unwrap_err();
    assert!(
        matches!(e, CallError::Timeout { budget, .. } if budget == Duration::from_millis(300)),
        "{e}"
    );
    assert_eq!(e.status(), 504);

    // A service error (ADR-32 headers) is typed with its code: a payload that is not
    // Binary HTTP is refused by the library with 400.
    let nats = server.connect().await;
    let msg = tokio::time::timeout(T, nats.request("calc", "garbage".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        msg.headers
            .as_ref()
            .unwrap()
            .get("Nats-Service-Error-Code")
            .unwrap()
            .as_str(),
        "400"
    );
    srv.shutdown().await;
}

fn remaining() -> Option<Duration> {
    narun::deadline().map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
}

#[tokio::test]
async fn a_call_made_while_handling_a_request_keeps_to_its_deadline() {
    let server = NatsServer::start();
    // `back` reports the deadline it was given, then takes too long.
    let (back_tx, mut back_rx) = mpsc::unbounded_channel::<Option<Duration>>();
    let back = Router::new().route(
        "/slow",
        post(move || {
            let tx = back_tx.clone();
            async move {
                tx.send(remaining()).unwrap();
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }
        }),
    );
    let back_srv = Server::start(opts(&server, "back"), back).await.unwrap();
    // `front` calls back with a client whose own timeout is a minute: the budget must
    // come from the request front is handling.
    let (front_tx, mut front_rx) = mpsc::unbounded_channel::<Option<Duration>>();
    let nats = server.connect().await;
    let front = Router::new().route(
        "/work",
        post(move || {
            let (tx, nats) = (front_tx.clone(), nats.clone());
            async move {
                tx.send(remaining()).unwrap();
                let client = Client::new(nats).with_timeout(Duration::from_secs(60));
                match client.call::<_, String>("back", "/slow", &()).await {
                    Ok(s) => (http::StatusCode::OK, s),
                    Err(e) => (e.status(), e.to_string()),
                }
            }
        }),
    );
    let front_srv = Server::start(opts(&server, "front"), front).await.unwrap();

    let budget = Duration::from_millis(800);
    let caller = Client::new(server.connect().await).with_timeout(budget);
    let started = std::time::Instant::now();
    let e = caller
        .call::<_, String>("front", "/work", &())
        .await
        .unwrap_err();
    // front's inner call gives up just before front's own deadline, so front can still
    // answer: 504 with the inner timeout (or, on a machine too loaded to answer within
    // that margin, the caller's own timeout), within the caller's budget either way.
    let answered_504 = matches!(&e, CallError::Status { status, body, .. }
        if *status == 504 && String::from_utf8_lossy(body).contains("calling back /slow: no answer within"));
    assert!(
        answered_504 || matches!(e, CallError::Timeout { .. }),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let front_left = tokio::time::timeout(T, front_rx.recv())
        .await
        .unwrap()
        .unwrap()
        .expect("front's handler sees its caller's deadline");
    assert!(
        front_left <= budget && front_left > Duration::ZERO,
        "{front_left:?}"
    );
    // The deadline travelled one hop further: back was given at most what front had
    // left, not front's client's minute.
    let back_left = tokio::time::timeout(T, back_rx.recv())
        .await
        .unwrap()
        .unwrap()
        .expect("back's handler sees a deadline");
    assert!(back_left <= front_left, "{back_left:?} > {front_left:?}");
    // Outside a handler there is none.
    assert_eq!(narun::deadline(), None);
    front_srv.shutdown().await;
    back_srv.shutdown().await;
}

#[tokio::test]
async fn a_call_waits_for_its_service_to_appear() {
    let server = NatsServer::start();
    let client = Client::new(server.connect().await)
        .with_timeout(T)
        .wait_for_responder(T);
    // The call starts before the service exists; the service starts 300 ms later.
    let call = tokio::spawn({
        let client = client.clone();
        async move {
            let started = std::time::Instant::now();
            let r = client
                .call::<_, Sum>("late", "/add", &Add { a: 20, b: 22 })
                .await;
            (r, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished(), "the call waits");
    let srv = Server::start(opts(&server, "late"), calc()).await.unwrap();
    let (r, took) = tokio::time::timeout(T, call).await.unwrap().unwrap();
    assert_eq!(r.unwrap(), Sum { sum: 42 });
    assert!(took >= Duration::from_millis(300), "{took:?}");
    srv.shutdown().await;

    // Nobody ever serves it: a typed error once the wait is over, not before.
    let bound = Duration::from_millis(700);
    let waiting = Client::new(server.connect().await)
        .with_timeout(T)
        .wait_for_responder(bound);
    let started = std::time::Instant::now();
    let e = waiting
        .call::<_, Sum>("never", "/add", &Add { a: 1, b: 1 })
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&e, CallError::NoResponders { service, waited } if service == "never" && *waited >= bound),
        "{e}"
    );
    assert!(
        took >= bound && took < bound + Duration::from_secs(2),
        "{took:?}"
    );
    assert!(e.to_string().contains("waited"), "{e}");
    assert_eq!(e.status(), 503);

    // The wait never outlasts the call's budget: a 400 ms timeout ends it as a timeout
    // or no-responders after about 400 ms, whatever the wait asked for.
    let short = Client::new(server.connect().await)
        .with_timeout(Duration::from_millis(400))
        .wait_for_responder(Duration::from_secs(60));
    let started = std::time::Instant::now();
    let e = short
        .call::<_, Sum>("never", "/add", &Add { a: 1, b: 1 })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            CallError::NoResponders { .. } | CallError::Timeout { .. }
        ),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// Protobuf bodies (`narun::Protobuf`, feature `protobuf`): a prost request is sent as
/// `application/x-protobuf`, the service decodes it and answers a prost message; an answer
/// that is not the expected message is a typed `Decode` error, not a panic or garbage.
#[cfg(feature = "protobuf")]
#[tokio::test]
async fn protobuf_calls() {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, header};
    use prost::Message;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Mul {
        #[prost(int64, tag = "1")]
        a: i64,
        #[prost(int64, tag = "2")]
        b: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Product {
        #[prost(int64, tag = "1")]
        product: i64,
        #[prost(string, tag = "2")]
        content_type: String,
    }

    let router = Router::new()
        .route(
            "/mul",
            post(|headers: HeaderMap, body: Bytes| async move {
                let m = Mul::decode(body).expect("a Mul");
                let ct = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let p = Product {
                    product: m.a * m.b,
                    content_type: ct,
                };
                (
                    [(header::CONTENT_TYPE, narun::PROTOBUF_CONTENT_TYPE)],
                    p.encode_to_vec(),
                )
            }),
        )
        // Not a protobuf message: bytes that do not decode as a Product (field 1 as a
        // truncated varint).
        .route("/garbage", post(|| async { vec![0x08u8, 0xff] }));
    let server = NatsServer::start();
    let srv = Server::start(opts(&server, "mulsvc"), router)
        .await
        .unwrap();
    let client = Client::new(server.connect().await).with_timeout(T);

    let p: Product = client
        .call_with(&narun::Protobuf, "mulsvc", "/mul", &Mul { a: 6, b: 7 })
        .await
        .unwrap();
    assert_eq!(p.product, 42);
    assert_eq!(p.content_type, "application/x-protobuf");

    let e = client
        .call_with::<_, _, Product>(&narun::Protobuf, "mulsvc", "/garbage", &Mul { a: 1, b: 1 })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CallError::Decode { reason, .. } if reason.contains("protobuf")),
        "{e:?}"
    );
    srv.shutdown().await;
}

//! The generated `GreeterClient` on `narun::grpc::channel`: gRPC over NATS
//! without the gateway. A real nats-server, the real `grpc-hello` tonic server
//! served in-process by `narun::serve_grpc` (the same service the gateway's
//! tests call through the gateway).

use futures_util::StreamExt;
use grpc_hello::pb::greeter_client::GreeterClient;
use grpc_hello::pb::greeter_server::{Greeter, GreeterServer};
use grpc_hello::pb::{HelloReply, HelloRequest};
use narun::grpc::Channel;
use narun::{GrpcServer, NatsSettings, Options};
use narun_test_support::{NatsServer, synced, wait_connected, wait_for};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

/// Every call of these tests is bounded by this (a hung call fails the test).
const BOUND: Duration = Duration::from_secs(20);

struct Setup {
    nats: NatsServer,
    client: async_nats::Client,
    app: Option<GrpcServer>,
}

impl Setup {
    async fn start() -> Setup {
        Self::start_with("").await
    }

    async fn start_with(nats_config: &str) -> Setup {
        let nats = NatsServer::start_with_config(nats_config);
        let app = GrpcServer::start(
            Options::new("grpc-hello").nats(settings(&nats)),
            grpc_hello::server(),
        )
        .await
        .expect("serve grpc-hello over NATS");
        let client = settings(&nats)
            .connect("grpc-channel-test")
            .await
            .expect("client");
        wait_connected(&client).await;
        Setup {
            nats,
            client,
            app: Some(app),
        }
    }

    fn greeter(&self) -> GreeterClient<Channel> {
        GreeterClient::new(narun::grpc::channel(&self.client, "grpc-hello"))
    }

    async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

fn settings(nats: &NatsServer) -> NatsSettings {
    NatsSettings {
        url: nats.url(),
        ..Default::default()
    }
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest { name: name.into() }
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f).await.expect("call bounded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_server_streaming() {
    let s = Setup::start().await;
    let mut g = s.greeter();
    let r = bounded(g.say_hello(hello("narun")))
        .await
        .expect("unary call");
    assert_eq!(r.into_inner().message, "Hello, narun");

    let r = bounded(g.say_hellos(hello("count:5")))
        .await
        .expect("stream call");
    let mut stream = r.into_inner();
    let mut got = Vec::new();
    while let Some(m) = bounded(stream.next()).await {
        got.push(m.expect("stream message").message);
    }
    let want: Vec<String> = (0..5).map(|i| format!("Hello #{i}, count:5")).collect();
    assert_eq!(got, want);

    // An empty stream: status only.
    let r = bounded(g.say_hellos(hello("count:0"))).await.expect("call");
    let mut stream = r.into_inner();
    assert!(bounded(stream.next()).await.is_none());

    // Clones share nothing but the NATS client: concurrent calls each get their answer.
    let calls = (0..20).map(|i| {
        let mut g = g.clone();
        async move { g.say_hello(hello(&format!("n{i}"))).await }
    });
    let answers = bounded(futures_util::future::join_all(calls)).await;
    for (i, a) in answers.into_iter().enumerate() {
        assert_eq!(
            a.expect("concurrent call").into_inner().message,
            format!("Hello, n{i}")
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_message_details_and_metadata() {
    let s = Setup::start().await;
    let mut g = s.greeter();

    let e = bounded(g.say_hello(hello(""))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "name must not be empty");

    let e = bounded(g.say_hello(hello("details"))).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert_eq!(e.message(), "with details");
    assert_eq!(e.details(), grpc_hello::DETAILS);

    let e = bounded(g.say_hello(hello("meta-error"))).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.message(), "with metadata");
    assert_eq!(e.metadata().get("x-error-detail").unwrap(), "precondition");
    assert_eq!(
        e.metadata()
            .get_bin("x-error-bin")
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        &[0x00, 0x01, 0x02, 0xff]
    );
    // No protocol or transport header leaks into the metadata.
    for k in e.metadata().keys() {
        let name = match k {
            tonic::metadata::KeyRef::Ascii(k) => k.as_str(),
            tonic::metadata::KeyRef::Binary(k) => k.as_str(),
        };
        assert!(
            !name.starts_with("nats-") && !name.starts_with("narun-"),
            "leaked {name}"
        );
    }

    let e = bounded(g.say_hello(hello("panic"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_both_ways_with_trailers() {
    let s = Setup::start().await;
    let mut g = s.greeter();

    // Request metadata reaches the service; its response headers come back.
    let mut req = Request::new(hello("meta"));
    req.metadata_mut()
        .insert("x-echo", MetadataValue::from_static("ping"));
    req.metadata_mut()
        .insert_bin("x-echo-bin", MetadataValue::from_bytes(&[0, 1, 0xfe, 0xff]));
    let r = bounded(g.say_hello(req)).await.expect("call with metadata");
    assert_eq!(r.metadata().get("x-echo").unwrap(), "ping");
    assert_eq!(
        r.metadata()
            .get_bin("x-echo-bin")
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        &[0, 1, 0xfe, 0xff]
    );
    assert_eq!(r.into_inner().message, "Hello, meta [x-echo=ping]");

    // A stream: response header, one message, then an error status with trailers.
    let r = bounded(g.say_hellos(hello("fail")))
        .await
        .expect("stream call");
    assert_eq!(r.metadata().get("x-stream").unwrap(), "failing");
    let mut stream = r.into_inner();
    let first = bounded(stream.next())
        .await
        .expect("one message")
        .expect("ok");
    assert_eq!(first.message, "Hello #0, fail");
    let e = bounded(stream.next())
        .await
        .expect("the status")
        .expect_err("ends with an error");
    assert_eq!(e.code(), Code::Aborted);
    assert_eq!(e.message(), "stream failed");
    assert_eq!(e.metadata().get("x-trailer").unwrap(), "stream-failed");
    assert_eq!(
        e.metadata()
            .get_bin("x-trailer-bin")
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        &[0xde, 0xad, 0xbe, 0xef]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_are_honoured() {
    let s = Setup::start().await;
    let mut g = s.greeter();

    // tonic's per-call timeout (`grpc-timeout`).
    let mut req = Request::new(hello("sleep:5000"));
    req.set_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let e = bounded(g.say_hello(req)).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The deadline travelled: the service dropped its 5 s handler when it passed.
    let app = s.app.as_ref().unwrap();
    let dropped =
        || app.service().stats().endpoints[0].data[narun::STAT_DEADLINE_EXCEEDED].as_u64();
    wait_for(
        "the service to drop the handler at the caller's deadline",
        Duration::from_millis(2500),
        || {
            let n = dropped();
            async move { (n == Some(1)).then_some(()) }
        },
    )
    .await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // The channel's own timeout.
    let mut short = GreeterClient::new(
        narun::grpc::channel(&s.client, "grpc-hello").timeout(Duration::from_millis(300)),
    );
    let t = Instant::now();
    let e = bounded(short.say_hello(hello("sleep:5000")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // ... which a fast call does not hit.
    let r = bounded(short.say_hello(hello("sleep:10")))
        .await
        .expect("fast call");
    assert_eq!(r.into_inner().message, "Hello, sleep:10");
    s.stop().await;
}

/// A gRPC service that calls `grpc-hello` through a channel inside its handler
/// and reports what that inner call saw.
struct Front {
    channel: Channel,
    seen: tokio::sync::mpsc::Sender<(Code, Duration)>,
}

#[tonic::async_trait]
impl Greeter for Front {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let mut inner = GreeterClient::new(self.channel.clone());
        let t = Instant::now();
        let r = inner.say_hello(req.into_inner()).await;
        let code = r.as_ref().map(|_| Code::Ok).unwrap_or_else(|e| e.code());
        let _ = self.seen.send((code, t.elapsed())).await;
        r
    }

    type SayHellosStream = tonic::Streaming<HelloReply>;

    async fn say_hellos(
        &self,
        _req: Request<HelloRequest>,
    ) -> Result<Response<Self::SayHellosStream>, Status> {
        Err(Status::unimplemented("front: unary only"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_propagates_through_a_chain() {
    let s = Setup::start().await;
    let (tx, mut seen) = tokio::sync::mpsc::channel(4);
    let front_nats = settings(&s.nats).connect("front").await.expect("front");
    wait_connected(&front_nats).await;
    let front = GrpcServer::start(
        Options::new("grpc-front").nats(settings(&s.nats)),
        GreeterServer::new(Front {
            // The inner channel's own timeout is long: only the caller's deadline
            // (the front handler's `narun::deadline()`) can end the inner call early.
            channel: narun::grpc::channel(&front_nats, "grpc-hello")
                .timeout(Duration::from_secs(60)),
            seen: tx,
        }),
    )
    .await
    .expect("serve the front");

    // Through the chain, fast: the answer of grpc-hello comes back.
    let mut g = GreeterClient::new(narun::grpc::channel(&s.client, "grpc-front"));
    let r = bounded(g.say_hello(hello("chain")))
        .await
        .expect("chain call");
    assert_eq!(r.into_inner().message, "Hello, chain");
    assert_eq!(bounded(seen.recv()).await.unwrap().0, Code::Ok);

    // The caller gives the chain 600 ms; grpc-hello would take 8 s.
    let mut req = Request::new(hello("sleep:8000"));
    req.set_timeout(Duration::from_millis(600));
    let e = bounded(g.say_hello(req)).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    // The front's inner call gave up before the front's own deadline, with time
    // left to report it (without propagation it would wait 8 s, the front's
    // handler would be dropped first, and nothing would be reported).
    let (code, took) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("the inner call reports before the front's handler is dropped")
        .expect("the front is running");
    assert_eq!(code, Code::DeadlineExceeded);
    // About the caller's 600 ms less the margin (scheduling on a loaded machine
    // adds to it), far from the inner service's 8 s.
    assert!(took < Duration::from_secs(2), "inner call took {took:?}");
    front.shutdown().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_responders_and_oversize_map_to_statuses() {
    // A small max_payload, so the sizes stay small.
    let s = Setup::start_with("max_payload: 65536").await;
    let mut absent = GreeterClient::new(narun::grpc::channel(&s.client, "absent"));
    let t = Instant::now();
    let e = bounded(absent.say_hello(hello("anyone")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("absent"), "{}", e.message());
    // At once, not after the 10 s default budget.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let e = bounded(absent.say_hellos(hello("anyone")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // A service name that is no NATS subject: said so, at once.
    for bad in ["", "two words", "grpc.*", "a..b"] {
        let mut g = GreeterClient::new(narun::grpc::channel(&s.client, bad));
        let e = bounded(g.say_hello(hello("x"))).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(
            e.message().contains("not a service name"),
            "{}",
            e.message()
        );
    }

    let mut g = s.greeter();
    // A request NATS cannot carry.
    let e = bounded(g.say_hello(hello(&"x".repeat(70_000))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_payload"), "{}", e.message());
    // Just under the limit with the headers: refused cleanly, never a broken connection.
    let e = bounded(g.say_hello(hello(&"x".repeat(65_530))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // A reply NATS cannot carry: the service says so.
    let e = bounded(g.say_hello(hello("big:70000"))).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // The connection is still good.
    let r = bounded(g.say_hello(hello("after")))
        .await
        .expect("call after");
    assert_eq!(r.into_inner().message, "Hello, after");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_calls() {
    let s = Setup::start().await;
    let second = GrpcServer::start(
        Options::new("grpc-hello").nats(settings(&s.nats)),
        grpc_hello::server(),
    )
    .await
    .expect("second instance");
    let mut g = s.greeter();
    for i in 0..60 {
        bounded(g.say_hello(hello(&format!("r{i}"))))
            .await
            .expect("call");
    }
    let served = |srv: &GrpcServer| -> u64 {
        srv.service()
            .stats()
            .endpoints
            .iter()
            .map(|e| e.num_requests)
            .sum()
    };
    // Counted once the reply is sent: read when both counts add up.
    let (a, b) = wait_for("both instances' counts", Duration::from_secs(5), || {
        let (a, b) = (served(s.app.as_ref().unwrap()), served(&second));
        async move { (a + b == 60).then_some((a, b)) }
    })
    .await;
    assert!(a > 0 && b > 0, "one instance took every call: {a} / {b}");
    second.shutdown().await;
    s.stop().await;
}

/// The example of docs/app-library.md ("gRPC without the gateway"), between the
/// markers; `docs_example_is_the_code_tested` keeps the page equal to it.
async fn docs_example(nats: async_nats::Client) -> anyhow::Result<Vec<String>> {
    // docs/app-library.md: begin
    use grpc_hello::pb::HelloRequest;
    use grpc_hello::pb::greeter_client::GreeterClient;
    use std::time::Duration;

    // The generated client on a NATS channel to the service "grpc-hello".
    let mut greeter = GreeterClient::new(narun::grpc::channel(&nats, "grpc-hello"));

    // Unary, with metadata and a deadline (sent as grpc-timeout).
    let mut req = tonic::Request::new(HelloRequest {
        name: "narun".into(),
    });
    req.metadata_mut().insert("x-echo", "hi".parse()?);
    req.set_timeout(Duration::from_secs(2));
    let reply = greeter.say_hello(req).await?;
    assert_eq!(reply.metadata().get("x-echo").unwrap(), "hi");
    assert_eq!(reply.into_inner().message, "Hello, narun [x-echo=hi]");

    // Server streaming: the messages as the service sends them.
    let hellos = HelloRequest {
        name: "count:2".into(),
    };
    let mut stream = greeter.say_hellos(hellos).await?.into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await? {
        got.push(m.message);
    }

    // Failures are gRPC statuses.
    let empty = HelloRequest {
        name: String::new(),
    };
    let err = greeter.say_hello(empty).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // docs/app-library.md: end
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_example_runs() {
    let s = Setup::start().await;
    let got = bounded(docs_example(s.client.clone()))
        .await
        .expect("the docs example");
    assert_eq!(got, ["Hello #0, count:2", "Hello #1, count:2"]);
    s.stop().await;
}

#[test]
fn docs_example_is_the_code_tested() {
    let between = |text: &str, begin: &str, end: &str| -> String {
        let rest = text.split(begin).nth(1).expect(begin);
        let block = rest.split(end).next().expect(end);
        // Compared without indentation (the page is not indented).
        block
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let tested = between(
        include_str!("channel.rs"),
        "// docs/app-library.md: begin\n",
        "// docs/app-library.md: end",
    );
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/app-library.md"
    ))
    .expect("docs/app-library.md");
    let shown = between(
        &page,
        "<!-- tested: examples/grpc-hello/tests/channel.rs, docs_example -->\n```rust\n",
        "```",
    );
    assert_eq!(
        shown, tested,
        "docs/app-library.md's gRPC example differs from the tested code"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_style_consumer_answers_unary_calls() {
    use prost::Message;
    let s = Setup::start().await;
    // A responder answering as Go's `nconsumer` does: one plain reply with the raw
    // message, or an ADR-32 error; it checks what the channel sent.
    let responder = settings(&s.nats)
        .connect("go-style")
        .await
        .expect("responder");
    wait_connected(&responder).await;
    let mut sub = responder
        .queue_subscribe("go-consumer", "q".into())
        .await
        .expect("subscribe");
    synced(&responder).await;
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let h = m.headers.clone().unwrap_or_default();
            let method = h.get("X-Original-Grpc-Method").map(|v| v.to_string());
            let req = HelloRequest::decode(m.payload.clone()).expect("raw protobuf payload");
            let Some(reply) = m.reply else { continue };
            if method.as_deref() != Some("/hello.v1.Greeter/SayHello") {
                let mut e = async_nats::HeaderMap::new();
                e.insert("Nats-Service-Error-Code", "501");
                e.insert("Nats-Service-Error", "unknown method");
                responder
                    .publish_with_headers(reply, e, Default::default())
                    .await
                    .unwrap();
            } else if req.name == "bad" {
                let mut e = async_nats::HeaderMap::new();
                e.insert("Nats-Service-Error-Code", "3");
                e.insert("Nats-Service-Error", "bad name");
                responder
                    .publish_with_headers(reply, e, Default::default())
                    .await
                    .unwrap();
            } else {
                let out = HelloReply {
                    message: format!("Go says hello, {}", req.name),
                };
                responder
                    .publish(reply, out.encode_to_vec().into())
                    .await
                    .unwrap();
            }
        }
    });
    let mut g = GreeterClient::new(narun::grpc::channel(&s.client, "go-consumer"));
    let r = bounded(g.say_hello(hello("gopher"))).await.expect("unary");
    assert_eq!(r.into_inner().message, "Go says hello, gopher");
    let e = bounded(g.say_hello(hello("bad"))).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "bad name"));
    let e = bounded(g.say_hellos(hello("x"))).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::Unimplemented, "unknown method")
    );
    task.abort();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_is_unavailable_at_once_then_calls_work_again() {
    let s = Setup::start().await;
    let mut g = s.greeter();
    bounded(g.say_hello(hello("before"))).await.expect("call");
    s.nats.stop();
    wait_for("the client to notice", Duration::from_secs(10), || {
        let down = s.client.connection_state() != async_nats::connection::State::Connected;
        async move { down.then_some(()) }
    })
    .await;
    let t = Instant::now();
    let e = bounded(g.say_hello(hello("down"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("not connected"), "{}", e.message());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    s.nats.restart();
    // The client and the service reconnect; calls succeed again.
    let r = wait_for("calls to succeed again", Duration::from_secs(15), || {
        let mut g = g.clone();
        async move { g.say_hello(hello("again")).await.ok() }
    })
    .await;
    assert_eq!(r.into_inner().message, "Hello, again");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_metadata_cannot_forge_the_status_or_the_framing() {
    let s = Setup::start().await;
    // A responder putting protocol and transport names among its metadata.
    let forger = settings(&s.nats).connect("forger").await.expect("forger");
    wait_connected(&forger).await;
    let mut sub = forger
        .queue_subscribe("forger", "q".into())
        .await
        .expect("subscribe");
    synced(&forger).await;
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Some(reply) = m.reply else { continue };
            let mut h = async_nats::HeaderMap::new();
            for (n, v) in [
                ("Narun-Grpc-Seq", "0"),
                ("content-type", "text/html"),
                ("grpc-encoding", "gzip"),
                ("grpc-status", "0"),
                ("Narun-Timeout-Ms", "1"),
                ("x-head", "yes"),
            ] {
                h.insert(n, v);
            }
            // HelloReply { message: "hi" }
            let hi = prost::bytes::Bytes::from_static(b"\x0a\x02hi");
            let _ = forger.publish_with_headers(reply.clone(), h, hi).await;
            let mut h = async_nats::HeaderMap::new();
            for (n, v) in [
                ("Narun-Grpc-Status", "9"),
                ("Narun-Grpc-Message", "the real status"),
                ("grpc-status", "0"),
                ("grpc-message", "forged"),
                ("te", "gzip"),
                ("x-tail", "t"),
            ] {
                h.insert(n, v);
            }
            let _ = forger
                .publish_with_headers(reply, h, Default::default())
                .await;
        }
    });
    let mut g = GreeterClient::new(narun::grpc::channel(&s.client, "forger"));
    let r = bounded(g.say_hellos(hello("x")))
        .await
        .expect("response headers");
    let head = r.metadata();
    assert_eq!(head.get("x-head").unwrap(), "yes");
    assert_eq!(head.get("content-type").unwrap(), "application/grpc");
    for gone in [
        "grpc-encoding",
        "grpc-status",
        "narun-timeout-ms",
        "narun-grpc-seq",
    ] {
        assert!(head.get(gone).is_none(), "{gone} in {head:?}");
    }
    let mut stream = r.into_inner();
    let m = bounded(stream.next()).await.unwrap().expect("the message");
    assert_eq!(m.message, "hi");
    let e = bounded(stream.next()).await.unwrap().unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::FailedPrecondition, "the real status")
    );
    assert_eq!(e.metadata().get("x-tail").unwrap(), "t");
    assert!(e.metadata().get("te").is_none(), "{:?}", e.metadata());
    task.abort();
    s.stop().await;
}

//! gRPC end to end: real nats-server, the real gateway on a loopback port, the
//! `examples/grpc-hello` tonic server served over NATS by `narun::serve_grpc`,
//! and two real clients (tonic, and Python `grpcio`).

use bytes::Bytes;
use futures_util::StreamExt;
use grpc_hello::pb::HelloRequest;
use grpc_hello::pb::greeter_client::GreeterClient;
use narun::{GrpcServer, NatsSettings, Options};
use narun_gateway::{Gateway, GatewayConfig};
use narun_test_support::{NatsServer, wait_connected, wait_for};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

struct Setup {
    nats: NatsServer,
    grpc: SocketAddr,
    metrics: SocketAddr,
    app: Option<GrpcServer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    gateway: tokio::task::JoinHandle<()>,
}

impl Setup {
    async fn start() -> Setup {
        Self::start_with(true).await
    }

    /// `with_app`: also serve `grpc-hello` in-process.
    async fn start_with(with_app: bool) -> Setup {
        let nats = NatsServer::start();
        let settings = NatsSettings {
            url: nats.url(),
            ..Default::default()
        };
        let app = if with_app {
            Some(
                GrpcServer::start(
                    Options::new("grpc-hello").nats(settings.clone()),
                    grpc_hello::server(),
                )
                .await
                .expect("serve grpc-hello over NATS"),
            )
        } else {
            None
        };
        let config = GatewayConfig::from_toml(
            r#"
            [gateway]
            http_addr = "127.0.0.1:0"
            grpc_addr = "127.0.0.1:0"
            metrics_addr = "127.0.0.1:0"
            request_timeout_sec = 5
            shutdown_timeout_sec = 2
            [[gateway.routes]]
            grpc = "hello.v1.Greeter"
            service = "grpc-hello"
            [[gateway.routes]]
            grpc = "absent.v1.Nobody"
            service = "absent"
            [[gateway.routes]]
            grpc = "legacy.v1.Go"
            service = "go-consumer"
            "#,
        )
        .expect("config");
        let client = settings.connect("gateway-grpc-test").await.expect("client");
        wait_connected(&client).await;
        let gw = Gateway::bind(config, client).await.expect("bind gateway");
        let grpc = gw.grpc_addr().expect("gRPC listener");
        let metrics = gw.metrics_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let gateway = tokio::spawn(async move {
            gw.run(async {
                let _ = rx.await;
            })
            .await
            .expect("gateway run");
        });
        Setup {
            nats,
            grpc,
            metrics,
            app,
            stop: Some(tx),
            gateway,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .expect("h2c connection to the gRPC gateway")
    }

    async fn metrics(&self) -> String {
        let mut s = tokio::net::TcpStream::connect(self.metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("metrics answer in time")
            .unwrap();
        out
    }

    async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.gateway)
            .await
            .expect("gateway stops")
            .unwrap();
        self.nats.stop();
    }
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest { name: name.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_client_through_gateway() {
    let s = Setup::start().await;
    let mut c = GreeterClient::new(s.channel().await);

    // Success.
    let r = c.say_hello(hello("tonic")).await.expect("SayHello");
    assert_eq!(r.into_inner().message, "Hello, tonic");

    // Request metadata reaches the app.
    let mut req = tonic::Request::new(hello("meta"));
    req.metadata_mut()
        .insert("x-echo", "abc-123".parse().unwrap());
    let r = c.say_hello(req).await.expect("SayHello with metadata");
    assert_eq!(r.into_inner().message, "Hello, meta [x-echo=abc-123]");

    // Application error: code and message preserved.
    let e = c.say_hello(hello("")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(e.message(), "name must not be empty");

    // A panicking handler is INTERNAL, and the app keeps serving.
    let e = c.say_hello(hello("panic")).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(c.say_hello(hello("again")).await.is_ok());

    // A reply larger than the NATS max_payload (1 MiB here): RESOURCE_EXHAUSTED
    // from the app, not a timeout.
    let t = Instant::now();
    let e = c.say_hello(hello("big:2000000")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_payload"), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let r = c
        .say_hello(hello("big:100000"))
        .await
        .expect("100 kB reply");
    assert_eq!(r.into_inner().message.len(), 100_000);

    // Client deadline shorter than the handler: DEADLINE_EXCEEDED, promptly.
    let mut req = tonic::Request::new(hello("sleep:3000"));
    // As metadata, not `set_timeout`: tonic's own client-side timer would win
    // the race and report CANCELLED; here the gateway must enforce it.
    req.metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let t = Instant::now();
    let e = c.say_hello(req).await.unwrap_err();
    // tonic also runs a client-side timer for `grpc-timeout` and may report
    // its own CANCELLED "Timeout expired" first; the gateway's own
    // DEADLINE_EXCEEDED is checked in the metrics below.
    assert!(
        e.code() == Code::DeadlineExceeded
            || (e.code() == Code::Cancelled && e.message().contains("Timeout")),
        "{e:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );

    // Server streaming: every message in order, then OK.
    let mut st = c
        .say_hellos(hello("s"))
        .await
        .expect("SayHellos")
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = st.next().await {
        got.push(m.expect("stream item").message);
    }
    assert_eq!(got, ["Hello #0, s", "Hello #1, s", "Hello #2, s"]);
    let mut st = c
        .say_hellos(hello("count:50"))
        .await
        .expect("SayHellos")
        .into_inner();
    let mut n = 0;
    while let Some(m) = st.next().await {
        assert_eq!(m.expect("item").message, format!("Hello #{n}, count:50"));
        n += 1;
    }
    assert_eq!(n, 50);
    // A stream that fails after one message: the message, then the status.
    let mut st = c
        .say_hellos(hello("fail"))
        .await
        .expect("SayHellos")
        .into_inner();
    assert_eq!(st.next().await.unwrap().unwrap().message, "Hello #0, fail");
    let e = st.next().await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
    assert_eq!(e.message(), "stream failed");

    // Routed service with nobody serving it: UNAVAILABLE, fast.
    let mut raw = tonic::client::Grpc::new(s.channel().await);
    raw.ready().await.unwrap();
    let t = Instant::now();
    let e = raw
        .unary::<Bytes, Bytes, _>(
            tonic::Request::new(Bytes::new()),
            http::uri::PathAndQuery::from_static("/absent.v1.Nobody/Call"),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // Unknown service: UNIMPLEMENTED.
    raw.ready().await.unwrap();
    let e = raw
        .unary::<Bytes, Bytes, _>(
            tonic::Request::new(Bytes::new()),
            http::uri::PathAndQuery::from_static("/nope.v1.Nothing/Call"),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    assert!(e.message().contains("nope.v1.Nothing"), "{e:?}");

    // Health: SERVING while NATS is connected.
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let mut h = HealthClient::new(s.channel().await);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let st = h
        .check(check(""))
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(st, ServingStatus::Serving as i32);
    let st = h
        .check(check("hello.v1.Greeter"))
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(st, ServingStatus::Serving as i32);

    // The gateway's own deadline, with a raw HTTP/2 client that runs no timer
    // of its own: DEADLINE_EXCEEDED from the gateway, trailers-only.
    {
        use http_body_util::BodyExt;
        use prost::Message;
        let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http::<http_body_util::Full<Bytes>>();
        let msg = hello("sleep:3000").encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        framed.extend_from_slice(&msg);
        let req = http::Request::post(format!("http://{}/hello.v1.Greeter/SayHello", s.grpc))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "300m")
            .body(http_body_util::Full::new(Bytes::from(framed)))
            .unwrap();
        let t = Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(5), h2.request(req))
            .await
            .expect("gateway answers before the handler finishes")
            .expect("h2 response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap();
        let status = body
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .or(parts.headers.get("grpc-status"))
            .expect("grpc-status")
            .clone();
        assert_eq!(status, "4", "DEADLINE_EXCEEDED");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
    }

    // Metrics. The tonic call above is counted too when the gateway's deadline
    // fired before tonic's own timer reset the stream: 1 or 2.
    let m = s.metrics().await;
    let deadline = r#"grpc_gateway_requests_total{grpc_method="/hello.v1.Greeter/SayHello",grpc_code="DEADLINE_EXCEEDED"} "#;
    assert!(
        m.contains(&format!("{deadline}1")) || m.contains(&format!("{deadline}2")),
        "{m}"
    );
    for line in [
        r#"grpc_gateway_requests_total{grpc_method="/hello.v1.Greeter/SayHello",grpc_code="OK"} 4"#,
        r#"grpc_gateway_requests_total{grpc_method="/hello.v1.Greeter/SayHello",grpc_code="INVALID_ARGUMENT"} 1"#,
        r#"grpc_gateway_requests_total{grpc_method="/hello.v1.Greeter/SayHello",grpc_code="RESOURCE_EXHAUSTED"} 1"#,
        r#"grpc_gateway_requests_total{grpc_method="/absent.v1.Nobody/Call",grpc_code="UNAVAILABLE"} 1"#,
        r#"grpc_gateway_requests_total{grpc_method="unmatched",grpc_code="UNIMPLEMENTED"} 1"#,
        r#"grpc_gateway_requests_total{grpc_method="/hello.v1.Greeter/SayHellos",grpc_code="OK"} 2"#,
        r#"grpc_gateway_request_duration_seconds_count{grpc_method="/hello.v1.Greeter/SayHellos"} 3"#,
    ] {
        assert!(m.contains(line), "missing {line} in\n{m}");
    }

    // NATS down: health turns NOT_SERVING and calls fail fast with UNAVAILABLE.
    s.nats.stop();
    wait_for(
        "health NOT_SERVING after NATS stops",
        Duration::from_secs(10),
        || {
            let mut h = h.clone();
            async move {
                let st = h.check(check("")).await.ok()?.into_inner().status;
                (st == ServingStatus::NotServing as i32).then_some(())
            }
        },
    )
    .await;
    let t = Instant::now();
    let e = c.say_hello(hello("down")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // NATS back: app and gateway reconnect (the gateway's reply inbox is
    // resubscribed) and calls succeed again.
    s.nats.restart();
    let r = wait_for(
        "calls to succeed after NATS restarts",
        Duration::from_secs(20),
        || {
            let mut c = c.clone();
            async move { c.say_hello(hello("back")).await.ok() }
        },
    )
    .await;
    assert_eq!(r.into_inner().message, "Hello, back");
    s.stop().await;
}

/// The app library answers Go's gateway protocol (no stream header): one
/// reply with the raw message, or a micro error with the decimal gRPC code;
/// a missing method header is error 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_gateway_protocol() {
    let s = Setup::start().await;
    let nc = s.nats.connect().await;
    let req = |name: &str| {
        use prost::Message;
        let mut h = async_nats::HeaderMap::new();
        h.insert("X-Original-Grpc-Method", "/hello.v1.Greeter/SayHello");
        (h, Bytes::from(hello(name).encode_to_vec()))
    };
    let (h, p) = req("go");
    let r = nc
        .request_with_headers("grpc-hello", h, p)
        .await
        .expect("reply");
    use prost::Message;
    let reply = grpc_hello::pb::HelloReply::decode(r.payload).unwrap();
    assert_eq!(reply.message, "Hello, go");
    assert!(
        r.headers
            .is_none_or(|h| h.get("Nats-Service-Error-Code").is_none())
    );

    let (h, p) = req("");
    let r = nc.request_with_headers("grpc-hello", h, p).await.unwrap();
    let h = r.headers.expect("error headers");
    assert_eq!(h.get("Nats-Service-Error-Code").unwrap().as_str(), "3");
    assert_eq!(
        h.get("Nats-Service-Error").unwrap().as_str(),
        "name must not be empty"
    );
    assert!(r.payload.is_empty());

    let r = nc.request("grpc-hello", Bytes::new()).await.unwrap();
    let h = r.headers.expect("error headers");
    assert_eq!(h.get("Nats-Service-Error-Code").unwrap().as_str(), "400");
    assert_eq!(
        h.get("Nats-Service-Error").unwrap().as_str(),
        "Missing required X-Original-Grpc-Method header"
    );

    // Unknown method: tonic answers UNIMPLEMENTED (12).
    let mut h = async_nats::HeaderMap::new();
    h.insert("X-Original-Grpc-Method", "/hello.v1.Greeter/Nope");
    let r = nc
        .request_with_headers("grpc-hello", h, Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        r.headers
            .unwrap()
            .get("Nats-Service-Error-Code")
            .unwrap()
            .as_str(),
        "12"
    );
    s.stop().await;
}

/// The reply shapes of `narun::GrpcServer` under the stream framing the Rust gateway
/// requests (`Narun-Grpc-Stream: 1`): a call ending OK with exactly one message is
/// one plain reply (the unary Go form); zero messages, two messages or an error use
/// numbered messages and a status message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_framing_reply_shapes() {
    use prost::Message as _;
    let s = Setup::start().await;
    let nc = s.nats.connect().await;
    let prefix = nc.new_inbox();
    let mut replies = nc.subscribe(format!("{prefix}.*")).await.unwrap();
    nc.flush().await.unwrap();
    // (reply token, method, name)
    let calls = [
        ("unary", "SayHello", "one"),
        ("one", "SayHellos", "count:1"),
        ("none", "SayHellos", "count:0"),
        ("two", "SayHellos", "count:2"),
        ("fail", "SayHellos", "fail"),
    ];
    let mut seen: std::collections::BTreeMap<&str, Vec<async_nats::Message>> = Default::default();
    for (token, method, name) in calls {
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            "X-Original-Grpc-Method",
            format!("/hello.v1.Greeter/{method}").as_str(),
        );
        h.insert("Narun-Grpc-Stream", "1");
        nc.publish_with_reply_and_headers(
            "grpc-hello",
            format!("{prefix}.{token}"),
            h,
            Bytes::from(hello(name).encode_to_vec()),
        )
        .await
        .unwrap();
        // The call's last message: a plain reply, or a status message. Replies of one
        // call are published in order on the app's connection, before the next call.
        loop {
            let m = tokio::time::timeout(narun_test_support::T, replies.next())
                .await
                .unwrap_or_else(|_| panic!("no reply to {token}"))
                .expect("subscription");
            let last = m
                .headers
                .as_ref()
                .is_none_or(|h| h.get("Narun-Grpc-Seq").is_none());
            let t = m.subject.rsplit('.').next().unwrap().to_owned();
            assert_eq!(
                t, token,
                "replies of one call arrive before the next call's"
            );
            seen.entry(token).or_default().push(m);
            if last {
                break;
            }
        }
    }
    let header = |m: &async_nats::Message, n: &str| {
        m.headers
            .as_ref()
            .and_then(|h| h.get(n))
            .map(|v| v.as_str().to_owned())
    };
    for token in ["unary", "one"] {
        let r = &seen[token];
        assert_eq!(r.len(), 1, "{token}: one plain reply");
        assert_eq!(header(&r[0], "Narun-Grpc-Status"), None, "{token}");
        assert_eq!(header(&r[0], "Narun-Grpc-Seq"), None, "{token}");
        let reply = grpc_hello::pb::HelloReply::decode(r[0].payload.clone()).unwrap();
        assert!(
            reply.message.starts_with("Hello"),
            "{token}: {}",
            reply.message
        );
    }
    let none = &seen["none"];
    assert_eq!(none.len(), 1, "zero messages: the status alone");
    assert_eq!(header(&none[0], "Narun-Grpc-Status").as_deref(), Some("0"));
    let two = &seen["two"];
    assert_eq!(two.len(), 3, "two numbered messages and a status");
    assert_eq!(header(&two[0], "Narun-Grpc-Seq").as_deref(), Some("0"));
    assert_eq!(header(&two[1], "Narun-Grpc-Seq").as_deref(), Some("1"));
    assert_eq!(header(&two[2], "Narun-Grpc-Status").as_deref(), Some("0"));
    let fail = &seen["fail"];
    assert_eq!(fail.len(), 2, "one numbered message and the error status");
    assert_eq!(header(&fail[0], "Narun-Grpc-Seq").as_deref(), Some("0"));
    assert_eq!(header(&fail[1], "Narun-Grpc-Status").as_deref(), Some("10"));
    s.stop().await;
}

/// The `grpc-hello` binary as narund would run it: env from narund, served
/// through the gateway, discoverable, and stopping cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_binary_through_gateway() {
    let bin = narun_test_support::workspace_bin("grpc-hello", "grpc-hello", &[]);
    let s = Setup::start_with(false).await;
    let mut child = std::process::Command::new(bin)
        .env("NATS_URL", s.nats.url())
        .env("NARUN_APP_NAME", "grpc-hello")
        .env("NARUN_INSTANCE_ID", "grpc-hello-0")
        .env_remove("NOTIFY_SOCKET")
        .spawn()
        .expect("start grpc-hello");
    let channel = s.channel().await;
    let reply = wait_for(
        "grpc-hello to answer via the gateway",
        Duration::from_secs(20),
        || {
            let mut c = GreeterClient::new(channel.clone());
            async move { c.say_hello(hello("bin")).await.ok() }
        },
    )
    .await;
    assert_eq!(reply.into_inner().message, "Hello, bin");
    let nc = s.nats.connect().await;
    let info = nc
        .request("$SRV.INFO.grpc-hello", Bytes::new())
        .await
        .expect("$SRV.INFO");
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info["endpoints"][0]["name"], "grpc_handler", "{info}");
    assert_eq!(info["endpoints"][0]["subject"], "grpc-hello", "{info}");
    assert_eq!(
        info["metadata"]["narun_instance_id"], "grpc-hello-0",
        "{info}"
    );

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_for(
        "grpc-hello to exit after SIGTERM",
        Duration::from_secs(15),
        || {
            let r = child.try_wait().expect("try_wait");
            async move { r }
        },
    )
    .await;
    assert!(status.success(), "grpc-hello exited with {status}");
    s.stop().await;
}

/// A consumer answering like Go's `nconsumer` (one plain reply or a micro
/// error, no narun stream headers): the gateway maps both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_style_consumer_behind_gateway() {
    let s = Setup::start_with(false).await;
    let nc = s.nats.connect().await;
    let mut sub = nc.queue_subscribe("go-consumer", "q".into()).await.unwrap();
    let rc = nc.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Some(reply) = m.reply.clone() else {
                continue;
            };
            let method = m
                .headers
                .as_ref()
                .and_then(|h| h.get("X-Original-Grpc-Method"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let mut h = async_nats::HeaderMap::new();
            match method.as_str() {
                "/legacy.v1.Go/Echo" => {
                    let _ = rc.publish(reply, m.payload.clone()).await;
                    continue;
                }
                "/legacy.v1.Go/Invalid" => {
                    h.insert("Nats-Service-Error-Code", "3");
                    h.insert("Nats-Service-Error", "bad input: 100% wrong");
                }
                _ => {
                    h.insert("Nats-Service-Error-Code", "501");
                    h.insert(
                        "Nats-Service-Error",
                        format!("Method {method} not implemented").as_str(),
                    );
                }
            }
            let _ = rc.publish_with_headers(reply, h, Bytes::new()).await;
        }
    });
    narun_test_support::synced(&nc).await;
    let mut raw = tonic::client::Grpc::new(s.channel().await);
    let mut call = async |path: &'static str, body: &'static [u8]| {
        raw.ready().await.unwrap();
        raw.unary::<Bytes, Bytes, _>(
            tonic::Request::new(Bytes::from_static(body)),
            http::uri::PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
        .map(|r| r.into_inner())
    };
    assert_eq!(
        call("/legacy.v1.Go/Echo", b"\x0a\x02hi").await.unwrap(),
        Bytes::from_static(b"\x0a\x02hi")
    );
    let e = call("/legacy.v1.Go/Invalid", b"").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "bad input: 100% wrong");
    let e = call("/legacy.v1.Go/Other", b"").await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert_eq!(e.message(), "Method /legacy.v1.Go/Other not implemented");
    s.stop().await;
}

/// A call that finds no responders (the service's instances are moving to another server)
/// was never delivered: the gateway sends it again for up to 500 ms, so a call made while
/// the service is away is answered once it is back, and a responder gets it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_responders_is_sent_again_while_the_service_comes_up() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let s = Setup::start_with(false).await;
    let nc = s.nats.connect().await;
    let echo = async |channel: Channel| {
        let mut raw = tonic::client::Grpc::new(channel);
        raw.ready().await.unwrap();
        raw.unary::<Bytes, Bytes, _>(
            tonic::Request::new(Bytes::from_static(b"\x0a\x02hi")),
            http::uri::PathAndQuery::from_static("/legacy.v1.Go/Echo"),
            RawCodec,
        )
        .await
        .map(|r| r.into_inner())
    };

    // Nobody serves it: sent again for the window, then UNAVAILABLE.
    let t = Instant::now();
    let e = echo(s.channel().await).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "given up after {:?}: not sent again",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // The service appears 150 ms after the call (as an app reconnecting to another server).
    let channel = s.channel().await;
    let pending = tokio::spawn(async move { echo(channel).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let got = Arc::new(AtomicUsize::new(0));
    let mut sub = nc.subscribe("go-consumer").await.unwrap();
    let (rc, n) = (nc.clone(), got.clone());
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            n.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = m.reply {
                let _ = rc.publish(reply, m.payload).await;
            }
        }
    });
    narun_test_support::synced(&nc).await;
    let r = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(
        r.expect("answered once the service is back"),
        Bytes::from_static(b"\x0a\x02hi")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        got.load(Ordering::SeqCst),
        1,
        "the service got the call once"
    );
    s.stop().await;
}

/// Metadata both ways through the gateway: ASCII and `-bin` request metadata
/// reach the app; the app's response headers, trailers-only error metadata and
/// stream trailers (ASCII and `-bin`) reach the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_passes_through_both_ways() {
    use tonic::metadata::MetadataValue;
    let s = Setup::start().await;
    let mut c = GreeterClient::new(s.channel().await);

    let bin = [0x00, 0x01, 0x02, 0xfe, 0xff];
    let mut req = tonic::Request::new(hello("meta"));
    req.metadata_mut()
        .insert("x-echo", "abc-123".parse().unwrap());
    req.metadata_mut()
        .insert_bin("x-echo-bin", MetadataValue::from_bytes(&bin));
    let r = c.say_hello(req).await.expect("SayHello with metadata");
    assert_eq!(r.metadata().get("x-echo").unwrap(), "abc-123");
    let echoed = r.metadata().get_bin("x-echo-bin").expect("x-echo-bin");
    assert_eq!(echoed.to_bytes().unwrap().as_ref(), bin);
    assert_eq!(
        r.metadata().get("content-type").unwrap(),
        "application/grpc"
    );
    assert_eq!(r.into_inner().message, "Hello, meta [x-echo=abc-123]");

    // An error with metadata (trailers-only): status and metadata.
    let e = c.say_hello(hello("meta-error")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(e.message(), "with metadata");
    assert_eq!(e.metadata().get("x-error-detail").unwrap(), "precondition");
    let b = e.metadata().get_bin("x-error-bin").expect("x-error-bin");
    assert_eq!(b.to_bytes().unwrap().as_ref(), [0x00, 0x01, 0x02, 0xff]);

    // A stream: response header with the first message, trailers after it.
    let resp = c.say_hellos(hello("fail")).await.expect("SayHellos");
    assert_eq!(resp.metadata().get("x-stream").unwrap(), "failing");
    let mut st = resp.into_inner();
    assert_eq!(st.next().await.unwrap().unwrap().message, "Hello #0, fail");
    let e = st.next().await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    assert_eq!(e.metadata().get("x-trailer").unwrap(), "stream-failed");
    let b = e
        .metadata()
        .get_bin("x-trailer-bin")
        .expect("x-trailer-bin");
    assert_eq!(b.to_bytes().unwrap().as_ref(), [0xde, 0xad, 0xbe, 0xef]);
    s.stop().await;
}

/// A responder speaking the narun stream framing that puts protocol headers
/// among its metadata (`content-type`, `grpc-status`, `grpc-message`,
/// `grpc-encoding`, `te`, `narun-*`): the client gets the real status and
/// framing, and only the metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_metadata_cannot_forge_the_status_or_the_framing() {
    let s = Setup::start_with(false).await;
    let nc = s.nats.connect().await;
    let mut sub = nc.queue_subscribe("go-consumer", "q".into()).await.unwrap();
    let rc = nc.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Some(reply) = m.reply.clone() else {
                continue;
            };
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
            let _ = rc
                .publish_with_headers(reply.clone(), h, Bytes::from_static(b"\x0a\x02hi"))
                .await;
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
            let _ = rc.publish_with_headers(reply, h, Bytes::new()).await;
        }
    });
    narun_test_support::synced(&nc).await;
    let mut raw = tonic::client::Grpc::new(s.channel().await);
    raw.ready().await.unwrap();
    let resp = raw
        .server_streaming::<Bytes, Bytes, _>(
            tonic::Request::new(Bytes::new()),
            http::uri::PathAndQuery::from_static("/legacy.v1.Go/Forge"),
            RawCodec,
        )
        .await
        .expect("response headers");
    let head = resp.metadata();
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
    let mut st = resp.into_inner();
    assert_eq!(
        st.message().await.expect("the message"),
        Some(Bytes::from_static(b"\x0a\x02hi"))
    );
    let e = st.message().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(e.message(), "the real status");
    assert_eq!(e.metadata().get("x-tail").unwrap(), "t");
    for gone in ["te", "narun-grpc-status"] {
        assert!(e.metadata().get(gone).is_none(), "{gone} in {e:?}");
    }
    s.stop().await;
}

/// A client `grpc-timeout` shorter than the route timeout (5 s) is the
/// deadline the app gets: its handler (sleeping 3 s) is dropped at 300 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_handler_is_dropped_at_the_clients_shorter_deadline() {
    let s = Setup::start().await;
    let mut c = GreeterClient::new(s.channel().await);
    let mut req = tonic::Request::new(hello("sleep:3000"));
    req.metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let sent = Instant::now();
    let e = c.say_hello(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    let app = s.app.as_ref().unwrap();
    // Bounded below the 3 s the handler would take to finish by itself.
    wait_for(
        "the app to drop the handler at the client's deadline",
        Duration::from_millis(2500),
        || {
            let n = app.service().stats().endpoints[0].data[narun::STAT_DEADLINE_EXCEEDED].as_u64();
            async move { (n == Some(1)).then_some(()) }
        },
    )
    .await;
    assert!(sent.elapsed() < Duration::from_secs(3));
    // Still serving.
    let r = c.say_hello(hello("after")).await.expect("SayHello");
    assert_eq!(r.into_inner().message, "Hello, after");
    s.stop().await;
}

const PY_CLIENT: &str = r#"
import json, sys
out, addr = sys.argv[1], sys.argv[2]
sys.path.insert(0, out)
import grpc
import hello_pb2, hello_pb2_grpc

ch = grpc.insecure_channel(addr)
stub = hello_pb2_grpc.GreeterStub(ch)
res = {}
def call(key, f):
    try:
        res[key] = {"ok": f()}
    except grpc.RpcError as e:
        res[key] = {"code": e.code().name, "details": e.details()}
R = hello_pb2.HelloRequest
call("hello", lambda: stub.SayHello(R(name="py"), timeout=5).message)
call("meta", lambda: stub.SayHello(R(name="py"), metadata=[("x-echo", "p q")], timeout=5).message)
call("error", lambda: stub.SayHello(R(name=""), timeout=5).message)
call("deadline", lambda: stub.SayHello(R(name="sleep:3000"), timeout=0.3).message)
call("stream", lambda: [r.message for r in stub.SayHellos(R(name="py"), timeout=5)])
got = []
def failing():
    for r in stub.SayHellos(R(name="fail"), timeout=5):
        got.append(r.message)
call("stream_fail", failing)
res["stream_fail"]["got"] = got
raw = lambda m: ch.unary_unary(m, request_serializer=None, response_deserializer=None)
call("absent", lambda: raw("/absent.v1.Nobody/Call")(b"", timeout=5).hex())
call("unknown", lambda: raw("/nope.v1.Nothing/Call")(b"", timeout=5).hex())
print(json.dumps(res))
"#;

fn python_with_grpcio() -> &'static str {
    let ok = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with grpcio and grpcio-tools is required for this test: \
         run `python3 -m pip install -r interop/requirements.txt` (or scripts/setup.sh)"
    );
    "python3"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_through_gateway() {
    let py = python_with_grpcio();
    let dir = tempfile::tempdir().unwrap();
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/grpc-hello/proto");
    let out = dir.path().to_str().unwrap();
    let gen_ok = Command::new(py)
        .args(["-m", "grpc_tools.protoc", &format!("-I{proto_dir}")])
        .arg(format!("--python_out={out}"))
        .arg(format!("--grpc_python_out={out}"))
        .arg(format!("{proto_dir}/hello.proto"))
        .status()
        .expect("run grpc_tools.protoc");
    assert!(gen_ok.success(), "generating Python stubs failed");
    std::fs::write(dir.path().join("client.py"), PY_CLIENT).unwrap();

    let s = Setup::start().await;
    let script = dir.path().join("client.py");
    let addr = s.grpc.to_string();
    let outdir = out.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(outdir)
            .arg(addr)
            .output()
            .expect("run the Python client")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python client failed:\n{stderr}");
    let res: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(res["hello"]["ok"], "Hello, py");
    assert_eq!(res["meta"]["ok"], "Hello, py [x-echo=p q]");
    assert_eq!(res["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(res["error"]["details"], "name must not be empty");
    assert_eq!(res["deadline"]["code"], "DEADLINE_EXCEEDED");
    assert_eq!(
        res["stream"]["ok"],
        serde_json::json!(["Hello #0, py", "Hello #1, py", "Hello #2, py"])
    );
    assert_eq!(res["stream_fail"]["code"], "ABORTED");
    assert_eq!(
        res["stream_fail"]["got"],
        serde_json::json!(["Hello #0, fail"])
    );
    assert_eq!(res["absent"]["code"], "UNAVAILABLE");
    assert_eq!(res["unknown"]["code"], "UNIMPLEMENTED");
    s.stop().await;
}

/// Pass-through codec: the message bytes as they are.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

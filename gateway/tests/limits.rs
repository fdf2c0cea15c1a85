//! The gateway's limits against hostile clients (issue 18), attacked over real
//! sockets with a real nats-server: connection floods (total, per IP), slow
//! heads and bodies, bodies beyond the memory budget, a gRPC stream beyond it,
//! in-flight requests, HTTP/2 concurrent streams, and clients that stop reading
//! their responses (the write-stall rule).

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use narun_test_support::http1::{metric_value as value, read_response};
use narun_test_support::{NatsServer, wait_for};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const T: Duration = Duration::from_secs(10);

/// A TCP connection to `to` from the loopback address `from` (127.0.0.x: each
/// is a distinct client IP for the per-IP limit).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(T, s.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Whether the peer closes `s` (EOF or reset) within `within`.
async fn closed_by_peer(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // e.g. a 408 before the close
        }
    }
}

/// The metrics text of the gateway.
async fn metrics(gw: &GatewayRun) -> String {
    get(&gw.metrics_url("/metrics")).await.text()
}

/// Wait until the metric `series` has value `want`.
async fn wait_metric(gw: &GatewayRun, series: &str, want: f64) {
    wait_for(&format!("{series} = {want}"), T, || async {
        let m = metrics(gw).await;
        (value(&m, series) == want).then_some(())
    })
    .await
}

fn post_head(path: &str, len: usize) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n")
}

async fn setup(limits: &str) -> (NatsServer, EchoService, GatewayRun) {
    let nats = NatsServer::start();
    let client = gateway_client(&nats).await;
    wait_connected(&client).await;
    let echo = echo_service(&client, "echo").await;
    let gw = start_gateway(
        client,
        &format!(
            "[gateway]\n{limits}\n[[gateway.routes]]\npath = \"/echo/\"\nservice = \"echo\"\n"
        ),
    )
    .await;
    (nats, echo, gw)
}

#[tokio::test]
async fn connection_floods_are_refused_per_ip_and_in_total_while_a_client_is_served() {
    let (_nats, _echo, gw) = setup("max_connections = 16\nmax_connections_per_ip = 8").await;
    let open = "gateway_connections_open{listener=\"http\"}";

    // An idle flood from one address: 8 are kept, the other 32 are closed at once.
    let mut kept = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let mut s = connect_from("127.0.0.2", gw.http).await;
        if kept.len() < 8 {
            kept.push(s);
            wait_metric(&gw, open, kept.len() as f64).await;
        } else {
            assert!(
                closed_by_peer(&mut s, T).await,
                "connection beyond the per-IP limit stays open"
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 32);
    // The flooded connections are still open, idle.
    for s in &mut kept {
        assert!(!closed_by_peer(s, Duration::from_millis(1)).await);
    }

    // Another client is served meanwhile.
    let r = get(&gw.url("/echo/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A second flooder fills the total; then everyone is refused.
    for _ in 0..8 {
        kept.push(connect_from("127.0.0.3", gw.http).await);
    }
    wait_metric(&gw, open, 16.0).await;
    let mut s = connect_from("127.0.0.4", gw.http).await;
    assert!(closed_by_peer(&mut s, T).await, "17th connection kept");

    // Room again once a flooder goes.
    drop(kept.pop());
    wait_metric(&gw, open, 15.0).await;
    let r = get(&gw.url("/echo/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let m = metrics(&gw).await;
    let refused_per_ip =
        "gateway_connections_refused_total{listener=\"http\",reason=\"max_connections_per_ip\"}";
    let refused_total =
        "gateway_connections_refused_total{listener=\"http\",reason=\"max_connections\"}";
    assert_eq!(value(&m, refused_per_ip), 32.0, "{m}");
    assert_eq!(value(&m, refused_total), 1.0, "{m}");
    assert_eq!(value(&m, "gateway_max_connections"), 16.0, "{m}");
}

#[tokio::test]
async fn slow_heads_and_idle_connections_are_cut_off() {
    let (_nats, echo, gw) = setup("header_read_timeout_sec = 1\nkeepalive_timeout_sec = 2").await;

    // Slowloris: a request head that never ends, one header line at a time.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"GET /echo/x HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let cut = loop {
        tokio::time::sleep(Duration::from_millis(100)).await; // the attack's pace
        if s.write_all(b"X-Slow: yes\r\n").await.is_err() || t.elapsed() > T {
            break t.elapsed();
        }
    };
    assert!(cut < T, "a trickled head was never cut off");
    assert!(closed_by_peer(&mut s, T).await);

    // A connection that sends nothing at all (no version detected yet).
    let mut idle = TcpStream::connect(gw.http).await.unwrap();
    let t = Instant::now();
    assert!(closed_by_peer(&mut idle, T).await, "idle connection kept");
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );

    let m = metrics(&gw).await;
    assert_eq!(
        value(
            &m,
            "gateway_client_timeouts_total{listener=\"http\",reason=\"header_read\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            "gateway_client_timeouts_total{listener=\"http\",reason=\"keepalive\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(echo.count(), 0);
}

#[tokio::test]
async fn trickled_bodies_are_cut_off_by_rate_and_by_time() {
    let (_nats, echo, gw) = setup("body_read_timeout_sec = 3\nmin_body_rate = 1000").await;

    // (bytes per 100 ms, what cuts it off): 10 B/100 ms = 100 B/s is below the
    // minimum rate (cut after ~1 s of grace); 300 B/100 ms = 3000 B/s is fast
    // enough but the 100 000-byte body would take 33 s (cut at 3 s).
    for (step, min_took) in [(10usize, 1.0f64), (300, 2.9)] {
        let mut s = TcpStream::connect(gw.http).await.unwrap();
        s.write_all(post_head("/echo/x", 100_000).as_bytes())
            .await
            .unwrap();
        let (mut r, mut w) = s.into_split();
        let t = Instant::now();
        let writer = tokio::spawn(async move {
            let chunk = vec![b'a'; step];
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await; // the attack's pace
                if w.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let resp = read_response(&mut r).await;
        let took = t.elapsed().as_secs_f64();
        writer.abort();
        assert_eq!(resp.status, 408, "{}", String::from_utf8_lossy(&resp.body));
        assert!(resp.head.contains("connection: close"), "{}", resp.head);
        assert!(took >= min_took && took < 8.0, "step {step}: took {took}s");
    }
    let m = metrics(&gw).await;
    assert_eq!(
        value(
            &m,
            "gateway_client_timeouts_total{listener=\"http\",reason=\"body_read\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(value(&m, "gateway_memory_budget_used_bytes"), 0.0, "{m}");
    assert_eq!(echo.count(), 0, "a cut-off body reached the app");
}

#[tokio::test]
async fn bodies_beyond_the_memory_budget_get_503_and_the_budget_returns_to_zero() {
    let (_nats, _echo, gw) =
        setup("memory_budget_bytes = 1000000\nmax_body_bytes = 500000\noverload_wait_ms = 100")
            .await;
    let used = "gateway_memory_budget_used_bytes";

    // Three clients announce 250 000-byte bodies and send 200 000 bytes of them:
    // charged as they arrive, in a buffer that doubles up to the announced length
    // (750 000 in all).
    let mut holders = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.http).await.unwrap();
        s.write_all(post_head("/echo/held", 250_000).as_bytes())
            .await
            .unwrap();
        s.write_all(&vec![b'h'; 200_000]).await.unwrap();
        holders.push(s);
    }
    wait_metric(&gw, used, 750_000.0).await;

    // Four bodies of 300 000 do not fit in the 250 000 left: 503 + Retry-After.
    let mut refused = Vec::new();
    for _ in 0..4 {
        let s = TcpStream::connect(gw.http).await.unwrap();
        refused.push(tokio::spawn(async move {
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                w.write_all(post_head("/echo/more", 300_000).as_bytes())
                    .await
                    .unwrap();
                let _ = w.write_all(&vec![b'm'; 300_000]).await;
                w
            });
            let resp = read_response(&mut r).await;
            writer.abort();
            resp
        }));
    }
    for r in refused {
        let resp = r.await.unwrap();
        assert_eq!(resp.status, 503, "{}", String::from_utf8_lossy(&resp.body));
        assert!(resp.head.contains("retry-after: 1\r\n"), "{}", resp.head);
    }
    wait_metric(&gw, used, 750_000.0).await;

    // A chunked body of 100 000 (no length: charged as its buffer grows, up to about
    // twice the body) fits.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"POST /echo/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..2 {
        s.write_all(format!("{:x}\r\n", 50_000).as_bytes())
            .await
            .unwrap();
        s.write_all(&vec![b'c'; 50_000]).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    drop(s);
    wait_metric(&gw, used, 750_000.0).await;

    // The holders finish and are served.
    for s in &mut holders {
        s.write_all(&vec![b'h'; 50_000]).await.unwrap();
    }
    for mut s in holders {
        let resp = read_response(&mut s).await;
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        let echo: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(echo["body_len"], 250_000);
    }
    wait_metric(&gw, used, 0.0).await;
    let m = metrics(&gw).await;
    assert_eq!(
        value(
            &m,
            "gateway_requests_shed_total{listener=\"http\",reason=\"memory_budget\"}"
        ),
        4.0,
        "{m}"
    );
    assert_eq!(value(&m, "gateway_memory_budget_bytes"), 1_000_000.0, "{m}");
}

/// A `Content-Length` alone costs nothing: clients that announce the largest body
/// and then trickle cannot take the budget from others (only bytes that arrived are
/// charged).
#[tokio::test]
async fn announced_lengths_alone_do_not_take_the_memory_budget() {
    let (_nats, _echo, gw) =
        setup("memory_budget_bytes = 1000000\nmax_body_bytes = 500000\noverload_wait_ms = 100")
            .await;
    let mut claimers = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(gw.http).await.unwrap();
        s.write_all(post_head("/echo/claim", 500_000).as_bytes())
            .await
            .unwrap();
        s.write_all(b"0123456789").await.unwrap();
        claimers.push(s);
    }
    // All eight are reading their bodies: the budget holds their ten bytes each.
    wait_metric(&gw, "gateway_memory_budget_used_bytes", 80.0).await;
    // Room for a real body of 400 000.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(post_head("/echo/real", 400_000).as_bytes())
        .await
        .unwrap();
    s.write_all(&vec![b'r'; 400_000]).await.unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    drop(claimers);
    wait_metric(&gw, "gateway_memory_budget_used_bytes", 0.0).await;
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_get_503() {
    let (_nats, mut echo, gw) = setup("max_inflight_requests = 1\noverload_wait_ms = 100").await;
    let slow = tokio::spawn(get_owned(gw.url("/echo/sleep/3000")));
    let seen = tokio::time::timeout(T, echo.seen.recv()).await.unwrap();
    assert_eq!(seen.as_deref(), Some("/echo/sleep/3000"));
    let r = get(&gw.url("/echo/x")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(slow.await.unwrap().status, 200);
    // The slot is free again.
    assert_eq!(get(&gw.url("/echo/x")).await.status, 200);
    let m = metrics(&gw).await;
    assert_eq!(
        value(
            &m,
            "gateway_requests_shed_total{listener=\"http\",reason=\"max_inflight_requests\"}"
        ),
        1.0,
        "{m}"
    );
}

async fn get_owned(url: String) -> Reply {
    get(&url).await
}

/// Read HTTP/2 frames from `s` until RST_STREAM(REFUSED_STREAM) on `stream`;
/// returns the server's SETTINGS_MAX_CONCURRENT_STREAMS seen on the way.
async fn refused_stream(s: &mut TcpStream, stream: u32) -> Option<u32> {
    let mut max_streams = None;
    loop {
        let mut h = [0u8; 9];
        tokio::time::timeout(T, s.read_exact(&mut h))
            .await
            .expect("frames in time")
            .expect("a frame (connection closed?)");
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, id) = (
            h[3],
            u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        );
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).await.unwrap();
        match kind {
            4 if h[4] & 1 == 0 => {
                for kv in p.chunks(6) {
                    if u16::from_be_bytes([kv[0], kv[1]]) == 3 {
                        max_streams = Some(u32::from_be_bytes([kv[2], kv[3], kv[4], kv[5]]));
                    }
                }
            }
            3 if id == stream => {
                assert_eq!(
                    u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
                    7,
                    "REFUSED_STREAM"
                );
                return max_streams;
            }
            3 => panic!("stream {id} reset"),
            7 => panic!("GOAWAY: {p:?}"),
            _ => {}
        }
    }
}

/// Open streams 1, 3, 5 (POSTs whose bodies never come) on a prior-knowledge
/// h2 connection to `addr`: with a limit of 2 the third is refused.
async fn third_stream_refused(addr: SocketAddr, path: &str, grpc: bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    // HPACK: :method POST, :scheme http, :path <path>, :authority x, content-type.
    let mut block = vec![0x83, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 1, b'x']);
    if grpc {
        block.extend_from_slice(&[0x0f, 0x10, 16]); // content-type (static 31)
        block.extend_from_slice(b"application/grpc");
    }
    for id in [1u32, 3, 5] {
        let len = block.len() as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&[1, 4]); // HEADERS, END_HEADERS (no END_STREAM)
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&block);
    }
    s.write_all(&out).await.unwrap();
    assert_eq!(refused_stream(&mut s, 5).await, Some(2));
}

#[tokio::test]
async fn h2_concurrent_streams_are_limited_on_both_listeners() {
    let nats = NatsServer::start();
    let client = gateway_client(&nats).await;
    wait_connected(&client).await;
    let _echo = echo_service(&client, "echo").await;
    let gw = start_gateway(
        client,
        "[gateway]\nh2_max_concurrent_streams = 2\ngrpc_addr = \"127.0.0.1:0\"\n\
         [[gateway.routes]]\npath = \"/echo/\"\nservice = \"echo\"\n\
         [[gateway.routes]]\ngrpc = \"s.v1.S\"\nservice = \"echo\"\n",
    )
    .await;
    third_stream_refused(gw.http, "/echo/x", false).await;
    third_stream_refused(gw.grpc.expect("gRPC listener"), "/s.v1.S/M", true).await;
}

/// A gRPC call over raw h2c (hyper client): `msg` framed as the one request
/// message. Returns the response and its body unread.
async fn grpc_call(
    addr: SocketAddr,
    path: &str,
    msg: &[u8],
) -> http::Response<hyper::body::Incoming> {
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        // Small windows: a client that does not read soon stops the gateway's sending.
        .http2_initial_stream_window_size(65_535)
        .http2_initial_connection_window_size(65_535)
        .build_http::<http_body_util::Full<Bytes>>();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(msg);
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(Bytes::from(framed)))
        .unwrap();
    tokio::time::timeout(T, h2.request(req))
        .await
        .expect("gRPC answer in time")
        .expect("h2 response")
}

/// The grpc-status of a response (trailers or trailers-only), reading the body.
async fn grpc_status(resp: http::Response<hyper::body::Incoming>) -> (String, usize) {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(T, body.collect())
        .await
        .expect("body in time")
        .expect("body");
    let status = body
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or(parts.headers.get("grpc-status"))
        .expect("grpc-status")
        .to_str()
        .unwrap()
        .to_owned();
    (status, body.to_bytes().len())
}

/// A narun-style streaming app on the subject `streamer`: each request is
/// answered with `count` messages of `size` bytes, as fast as it can, then OK.
async fn streamer(nats: &NatsServer, count: u32, size: usize) {
    let app = nats.connect().await;
    let mut sub = app.subscribe("streamer").await.unwrap();
    synced(&app).await;
    tokio::spawn(async move {
        while let Some(req) = sub.next().await {
            let reply = req.reply.unwrap();
            for seq in 0..count {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Narun-Grpc-Seq", seq.to_string().as_str());
                app.publish_with_headers(reply.clone(), h, Bytes::from(vec![7u8; size]))
                    .await
                    .unwrap();
            }
            let mut h = async_nats::HeaderMap::new();
            h.insert("Narun-Grpc-Status", "0");
            app.publish_with_headers(reply, h, Bytes::new())
                .await
                .unwrap();
            app.flush().await.unwrap();
        }
    });
}

#[tokio::test]
async fn grpc_buffers_beyond_the_memory_budget_get_resource_exhausted() {
    let nats = NatsServer::start();
    let client = gateway_client(&nats).await;
    wait_connected(&client).await;
    // A streaming app: 128 messages of 64 KiB (8 MiB), as fast as it can.
    streamer(&nats, 128, 65536).await;
    let gw = start_gateway(
        client,
        "[gateway]\nmemory_budget_bytes = 524288\nmax_body_bytes = 65536\n\
         overload_wait_ms = 100\ngrpc_addr = \"127.0.0.1:0\"\n\
         [[gateway.routes]]\ngrpc = \"s.v1.S\"\nservice = \"streamer\"\n",
    )
    .await;
    let grpc = gw.grpc.expect("gRPC listener");

    // The client does not read while the app streams: the gateway buffers
    // until the budget is gone, then ends the call.
    let resp = grpc_call(grpc, "/s.v1.S/Stream", b"").await;
    wait_metric(
        &gw,
        "gateway_requests_shed_total{listener=\"grpc\",reason=\"memory_budget\"}",
        1.0,
    )
    .await;
    let (status, bytes) = grpc_status(resp).await;
    assert_eq!(status, "8", "RESOURCE_EXHAUSTED");
    assert!(bytes < 128 * 65536, "every message got through: {bytes}");
    wait_metric(&gw, "gateway_memory_budget_used_bytes", 0.0).await;

    // A request message larger than the whole budget (within max_payload) is too
    // large (RESOURCE_EXHAUSTED), not shed: retrying could never help.
    let resp = grpc_call(grpc, "/s.v1.S/Stream", &vec![1u8; 900_000]).await;
    assert_eq!(grpc_status(resp).await.0, "8", "RESOURCE_EXHAUSTED");
    wait_metric(&gw, "gateway_memory_budget_used_bytes", 0.0).await;
    let m = metrics(&gw).await;
    assert_eq!(
        value(
            &m,
            "gateway_requests_shed_total{listener=\"grpc\",reason=\"memory_budget\"}"
        ),
        1.0,
        "{m}"
    );
}

/// A raw HTTP/2 (h2c) client of `addr` that never reads: its
/// SETTINGS_INITIAL_WINDOW_SIZE is 0 and it never sends a WINDOW_UPDATE, so the
/// gateway may send response headers but not one byte of a body. Returns the
/// request handle and the connection task, which ends when the gateway closes
/// the connection.
async fn never_reading_h2(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = tokio::time::timeout(
        T,
        h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tcp),
    )
    .await
    .expect("h2 handshake in time")
    .expect("h2 handshake");
    (send, tokio::spawn(conn))
}

/// Open a stream on `send` (POST with a body when `body` is set, else GET) and
/// wait for its response head; returns the unread body (kept open by the caller).
async fn h2_request(
    send: &mut h2::client::SendRequest<Bytes>,
    uri: String,
    body: Option<Bytes>,
) -> Result<h2::RecvStream, h2::Error> {
    let mut req = http::Request::builder().uri(uri);
    if body.is_some() {
        req = req
            .method("POST")
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    let req = req.body(()).unwrap();
    let mut ready = tokio::time::timeout(T, send.clone().ready())
        .await
        .expect("stream slot in time")?;
    let (resp, mut stream) = ready.send_request(req, body.is_none())?;
    if let Some(b) = body {
        stream.send_data(b, true)?;
    }
    let resp = tokio::time::timeout(T, resp)
        .await
        .expect("response head in time")?;
    *send = ready;
    Ok(resp.into_body())
}

#[tokio::test]
async fn a_grpc_client_that_stops_reading_is_cut_off_and_frees_its_slot_and_budget() {
    let nats = NatsServer::start();
    let client = gateway_client(&nats).await;
    wait_connected(&client).await;
    // 64 messages of 16 KiB: more than the 16 the forwarding task queues, so
    // replies are buffered (charged to the budget) behind a client that reads nothing.
    streamer(&nats, 64, 16384).await;
    let gw = start_gateway(
        client,
        "[gateway]\nkeepalive_timeout_sec = 1\nmax_inflight_requests = 1\n\
         overload_wait_ms = 100\nrequest_timeout_sec = 60\ngrpc_addr = \"127.0.0.1:0\"\n\
         [[gateway.routes]]\ngrpc = \"s.v1.S\"\nservice = \"streamer\"\n",
    )
    .await;
    let grpc = gw.grpc.expect("gRPC listener");
    let used = "gateway_memory_budget_used_bytes";

    let (mut send, conn) = never_reading_h2(grpc).await;
    let t = Instant::now();
    let body = h2_request(
        &mut send,
        format!("http://{grpc}/s.v1.S/Stream"),
        Some(Bytes::from_static(&[0, 0, 0, 0, 0])),
    )
    .await
    .expect("response head");
    // The call holds the one in-flight slot and buffered replies.
    wait_for("buffered replies", T, || async {
        (value(&metrics(&gw).await, used) > 0.0).then_some(())
    })
    .await;

    // Closed by the write-stall rule (1 s), long before the call's 60 s deadline.
    let _ = tokio::time::timeout(T, conn)
        .await
        .expect("the stalled connection is closed in time");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    drop((body, send));
    wait_metric(&gw, used, 0.0).await;
    wait_metric(
        &gw,
        "gateway_client_timeouts_total{listener=\"grpc\",reason=\"write_stall\"}",
        1.0,
    )
    .await;

    // The slot is free: a client that reads gets the whole stream.
    let resp = grpc_call(grpc, "/s.v1.S/Stream", b"").await;
    let (status, bytes) = grpc_status(resp).await;
    assert_eq!(status, "0");
    assert_eq!(bytes, 64 * (5 + 16384));
    wait_metric(&gw, used, 0.0).await;
}

#[tokio::test]
async fn an_h2c_client_that_never_reads_its_responses_is_cut_off() {
    let (_nats, echo, gw) = setup("keepalive_timeout_sec = 1\nmax_inflight_requests = 1").await;

    // A request every 200 ms keeps the connection from idling; no response is read.
    let (mut send, mut conn) = never_reading_h2(gw.http).await;
    let t = Instant::now();
    let mut unread = Vec::new();
    let closed = loop {
        match h2_request(&mut send, gw.url("/echo/unread"), None).await {
            Ok(body) => unread.push(body),
            Err(_) => break true, // the connection is gone
        }
        if t.elapsed() > T {
            break false;
        }
        tokio::select! {
            _ = &mut conn => break true,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    };
    let took = t.elapsed();
    assert!(
        closed,
        "a client that never reads kept its connection for {took:?}"
    );
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(!unread.is_empty());
    assert!(
        echo.count() >= unread.len(),
        "{} {}",
        echo.count(),
        unread.len()
    );
    drop((unread, send));
    wait_metric(
        &gw,
        "gateway_client_timeouts_total{listener=\"http\",reason=\"write_stall\"}",
        1.0,
    )
    .await;
    let m = metrics(&gw).await;
    assert_eq!(
        value(
            &m,
            "gateway_client_timeouts_total{listener=\"http\",reason=\"keepalive\"}"
        ),
        0.0,
        "{m}"
    );
    assert_eq!(value(&m, "gateway_memory_budget_used_bytes"), 0.0, "{m}");
    // The one in-flight slot is free.
    let r = get(&gw.url("/echo/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn an_unread_grpc_stream_gives_its_slot_back_at_its_deadline() {
    let nats = NatsServer::start();
    let client = gateway_client(&nats).await;
    wait_connected(&client).await;
    streamer(&nats, 64, 16384).await;
    // The write-stall rule (30 s) is far off: the call's 1 s deadline must end it.
    let gw = start_gateway(
        client,
        "[gateway]\nkeepalive_timeout_sec = 30\nmax_inflight_requests = 1\n\
         overload_wait_ms = 100\nrequest_timeout_sec = 1\ngrpc_addr = \"127.0.0.1:0\"\n\
         [[gateway.routes]]\ngrpc = \"s.v1.S\"\nservice = \"streamer\"\n",
    )
    .await;
    let grpc = gw.grpc.expect("gRPC listener");
    let (mut send, conn) = never_reading_h2(grpc).await;
    let t = Instant::now();
    let _body = h2_request(
        &mut send,
        format!("http://{grpc}/s.v1.S/Stream"),
        Some(Bytes::from_static(&[0, 0, 0, 0, 0])),
    )
    .await
    .expect("response head");

    // Once the deadline (+ 1 s grace) passes, the forwarding task stops waiting
    // for the client and the one in-flight slot is free again.
    wait_for("the in-flight slot back", T, || async {
        let (status, _) = grpc_status(grpc_call(grpc, "/s.v1.S/Stream", b"").await).await;
        (status == "0").then_some(())
    })
    .await;
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(!conn.is_finished(), "the stalled connection is still open");
}

/// Not an attack the write-stall rule was needed for — hyper's HTTP/1.1 reads no
/// further request while a response is unwritten, so the keep-alive timeout
/// already applied — but the promise holds on both HTTP versions, and this
/// pins it (a request kept in flight while its response is unwritten would fail it).
#[tokio::test]
async fn an_http1_client_that_pipelines_and_never_reads_is_cut_off() {
    let (_nats, echo, gw) = setup("keepalive_timeout_sec = 1\nheader_read_timeout_sec = 60").await;
    let open = "gateway_connections_open{listener=\"http\"}";

    // Pipelined requests whose ~100 KB answers (the echoed headers, each `"`
    // escaped in JSON) are never read, from a socket with a small receive
    // buffer: once the kernel buffers are full, hyper cannot flush a response.
    let s = TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    let s = tokio::time::timeout(T, s.connect(gw.http))
        .await
        .expect("connect in time")
        .expect("connect");
    let pad = "\"".repeat(50_000);
    let (_r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..400 {
            let req = format!("GET /echo/x HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n");
            if w.write_all(req.as_bytes()).await.is_err() {
                return;
            }
        }
        // Keep the write side open: the client is stalled, not gone.
        std::future::pending::<()>().await;
    });
    wait_metric(&gw, open, 1.0).await;
    let t = Instant::now();
    wait_metric(&gw, open, 0.0).await;
    writer.abort();
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(echo.count() > 0);
    // hyper's HTTP/1.1 reads no further request while a response is unwritten:
    // it is cut off by the write-stall rule while it holds a response body, or
    // by the keep-alive timeout once the body is in hyper's 64 KiB buffer.
    let m = metrics(&gw).await;
    let stalled = value(
        &m,
        "gateway_client_timeouts_total{listener=\"http\",reason=\"write_stall\"}",
    ) + value(
        &m,
        "gateway_client_timeouts_total{listener=\"http\",reason=\"keepalive\"}",
    );
    assert_eq!(stalled, 1.0, "{m}");
    // Another client is served.
    let r = get(&gw.url("/echo/x")).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

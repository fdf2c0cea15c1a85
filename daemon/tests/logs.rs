//! Log forwarding with a real nats-server and real child processes: ordering, long lines, stream
//! tags, NATS outages (spool and resend), spool overflow, and an app that is never blocked.

use std::process::Stdio;
use std::time::Duration;

use async_nats::connection::State;
use futures_util::StreamExt;
use narun_test_support::{NatsServer, wait_for};
use narun_wire::events::LogLine;
use narund::logs::{LogForwarder, LogForwarderConfig, LogSink, LogStats};
use narund::uring::UringHandle;
use tokio::process::Command;

const NODE: &str = "node-1";

async fn client(server: &NatsServer) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(server.url())
        .await
        .expect("connect to the test nats-server")
}

/// A client of `server` subscribed to `subject`, the subscription confirmed by the server.
async fn subscribed(
    server: &NatsServer,
    subject: &str,
) -> (async_nats::Client, async_nats::Subscriber) {
    let client = client(server).await;
    let sub = client.subscribe(subject.to_owned()).await.unwrap();
    narun_test_support::synced(&client).await;
    (client, sub)
}

async fn recv_lines(sub: &mut async_nats::Subscriber, n: usize, timeout: Duration) -> Vec<LogLine> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        let msg = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {n} log lines arrived within {timeout:?}",
                    out.len()
                )
            })
            .expect("subscription open");
        out.push(serde_json::from_slice::<LogLine>(&msg.payload).expect("LogLine JSON"));
    }
    out
}

async fn wait_disconnected(client: &async_nats::Client) {
    wait_for(
        "the client to notice the server is gone",
        Duration::from_secs(10),
        || async { (client.connection_state() != State::Connected).then_some(()) },
    )
    .await;
}

/// Run `script` in `/bin/sh` with its stdout and stderr attached to `sink`, until it exits
/// (within `bound`: it must never be blocked on its output) and both pipes are read to
/// their end.
async fn run_app(sink: &LogSink, script: &str, bound: Duration) {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn /bin/sh");
    let (out, err) = (
        child.stdout.take().unwrap().into_owned_fd().unwrap(),
        child.stderr.take().unwrap().into_owned_fd().unwrap(),
    );
    let tasks = [sink.attach("stdout", out), sink.attach("stderr", err)];
    tokio::time::timeout(bound, child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!("the app did not exit within {bound:?}: it is blocked on its output")
        })
        .unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("pipe reader ends at EOF")
            .unwrap();
    }
}

#[tokio::test]
async fn thousand_lines_arrive_in_order_with_go_fields() {
    let server = NatsServer::start();
    let (client, mut sub) = subscribed(&server, "logs.hello.node-1").await;
    let (fwd, _task) = LogForwarder::new(client.clone(), NODE, 8 << 20, UringHandle::start());
    let sink = fwd.sink("hello", "hello-0");

    run_app(
        &sink,
        "for i in $(seq 1 1000); do echo line-$i; done",
        Duration::from_secs(20),
    )
    .await;

    let lines = recv_lines(&mut sub, 1000, Duration::from_secs(20)).await;
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l.message, format!("line-{}", i + 1));
        assert_eq!(l.stream, "stdout");
        assert_eq!(l.instance_id, "hello-0");
        assert_eq!(l.app_name, "hello");
        assert_eq!(l.node_id, NODE);
        assert!(!l.partial);
        assert_eq!(l.dropped_before, 0);
        assert!(
            time::OffsetDateTime::parse(
                &l.timestamp,
                &time::format_description::well_known::Rfc3339
            )
            .is_ok()
        );
    }
    assert!(fwd.flush(Duration::from_secs(10)).await);
    let stats = fwd.stats();
    assert_eq!(
        (stats.published, stats.dropped, stats.spooled_lines),
        (1000, 0, 0)
    );
}

/// A line naming a trace (`trace_id=<32 hex>`, as the narun library's handler spans print it
/// with tracing-subscriber's default format) carries it as the record's `trace_id`; other
/// lines, and malformed ids, carry none.
#[tokio::test]
async fn trace_ids_in_an_apps_lines_become_a_field() {
    let server = NatsServer::start();
    let (client, mut sub) = subscribed(&server, "logs.traced.node-1").await;
    let (fwd, _task) = LogForwarder::new(client.clone(), NODE, 8 << 20, UringHandle::start());
    let sink = fwd.sink("traced", "traced-0");
    let id = "4bf92f3577b34da6a3ce929d0e0e4736";
    run_app(
        &sink,
        &format!(
            "echo '2026-01-01T00:00:00Z  INFO request{{trace_id={id} span_id=00f067aa0ba902b7}}: hi'; \
             echo 'plain line'; echo 'trace_id={}'; echo 'trace_id=abc'",
            id.to_uppercase()
        ),
        Duration::from_secs(20),
    )
    .await;
    let lines = recv_lines(&mut sub, 4, Duration::from_secs(10)).await;
    let ids: Vec<Option<&str>> = lines.iter().map(|l| l.trace_id.as_deref()).collect();
    assert_eq!(ids, [Some(id), None, None, None], "{lines:?}");
    assert!(lines[0].message.contains(id), "the message is unchanged");
}

#[tokio::test]
async fn long_line_without_newline_arrives_in_partial_pieces() {
    let server = NatsServer::start();
    let (client, mut sub) = subscribed(&server, "logs.big.node-1").await;
    let (fwd, _task) = LogForwarder::new(client.clone(), NODE, 8 << 20, UringHandle::start());
    let sink = fwd.sink("big", "big-0");

    // 100 KiB of 'x', no newline at all.
    run_app(
        &sink,
        "head -c 102400 /dev/zero | tr '\\0' x",
        Duration::from_secs(20),
    )
    .await;
    assert!(fwd.flush(Duration::from_secs(10)).await);
    let n = fwd.stats().published as usize;
    assert_eq!(n, 2, "100 KiB at the 64 KiB limit is two pieces");
    let pieces = recv_lines(&mut sub, n, Duration::from_secs(10)).await;
    assert!(
        pieces[0].partial && !pieces[1].partial,
        "all pieces but the last are partial"
    );
    assert_eq!(pieces[0].message.len(), 64 * 1024);
    let joined: String = pieces.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(joined, "x".repeat(102_400));
}

#[tokio::test]
async fn stderr_is_tagged_stderr() {
    let server = NatsServer::start();
    let (client, mut sub) = subscribed(&server, "logs.hello.node-1").await;
    let (fwd, _task) = LogForwarder::new(client.clone(), NODE, 8 << 20, UringHandle::start());
    let sink = fwd.sink("hello", "hello-1");
    run_app(
        &sink,
        "echo to-out; echo to-err >&2",
        Duration::from_secs(20),
    )
    .await;
    let mut lines = recv_lines(&mut sub, 2, Duration::from_secs(10)).await;
    lines.sort_by(|a, b| a.message.cmp(&b.message));
    assert_eq!(
        (lines[0].message.as_str(), lines[0].stream.as_str()),
        ("to-err", "stderr")
    );
    assert_eq!(
        (lines[1].message.as_str(), lines[1].stream.as_str()),
        ("to-out", "stdout")
    );
}

#[tokio::test]
async fn lines_written_while_nats_is_down_arrive_after_restart() {
    let server = NatsServer::start();
    let (client, mut sub) = subscribed(&server, "logs.hello.node-1").await;
    let (fwd, _task) = LogForwarder::new(client.clone(), NODE, 8 << 20, UringHandle::start());
    let sink = fwd.sink("hello", "hello-0");

    // Before the outage: delivered and confirmed.
    sink.line("stdout", "before");
    assert!(fwd.flush(Duration::from_secs(10)).await);
    assert_eq!(
        recv_lines(&mut sub, 1, Duration::from_secs(10)).await[0].message,
        "before"
    );

    server.stop();
    wait_disconnected(&client).await;
    run_app(
        &sink,
        "for i in $(seq 1 500); do echo down-$i; done",
        Duration::from_secs(10),
    )
    .await;
    let stats = fwd.stats();
    assert_eq!(
        (stats.published, stats.spooled_lines, stats.dropped),
        (1, 500, 0),
        "{stats:?}"
    );
    assert!(
        !fwd.flush(Duration::from_millis(300)).await,
        "nothing can be confirmed while NATS is down"
    );

    server.restart();
    let lines = recv_lines(&mut sub, 500, Duration::from_secs(30)).await;
    let got: Vec<_> = lines.iter().map(|l| l.message.clone()).collect();
    let want: Vec<_> = (1..=500).map(|i| format!("down-{i}")).collect();
    assert_eq!(got, want);
    assert!(fwd.flush(Duration::from_secs(10)).await);
    assert_eq!(
        fwd.stats(),
        LogStats {
            published: 501,
            dropped: 0,
            spooled_lines: 0,
            spooled_bytes: 0
        }
    );
}

#[tokio::test]
async fn spool_overflow_drops_the_oldest_and_reports_the_count() {
    let server = NatsServer::start();
    let (client, mut sub) = subscribed(&server, "logs.hello.node-1").await;
    let mut cfg = LogForwarderConfig::new(NODE);
    // About 14 B per line of `over-N` in the spool (text + offset + a share of its read's
    // overhead): 10 000 lines do not fit.
    cfg.spool_bytes = 32 * 1024;
    let (fwd, _task) = LogForwarder::with_config(client.clone(), cfg, UringHandle::start());
    let sink = fwd.sink("hello", "hello-0");

    server.stop();
    wait_disconnected(&client).await;
    run_app(
        &sink,
        "for i in $(seq 1 10000); do echo over-$i; done",
        Duration::from_secs(10),
    )
    .await;
    let stats = fwd.stats();
    assert!(
        stats.dropped > 0 && stats.spooled_bytes <= 32 * 1024,
        "{stats:?}"
    );
    assert_eq!(
        stats.dropped as usize + stats.spooled_lines,
        10000,
        "{stats:?}"
    );

    server.restart();
    let lines = recv_lines(&mut sub, stats.spooled_lines, Duration::from_secs(30)).await;
    // The newest lines survive, in order; the first one says how many came before it.
    assert_eq!(lines[0].dropped_before, stats.dropped);
    assert!(lines[1..].iter().all(|l| l.dropped_before == 0));
    let first = stats.dropped as usize + 1;
    let got: Vec<_> = lines.iter().map(|l| l.message.clone()).collect();
    let want: Vec<_> = (first..=10000).map(|i| format!("over-{i}")).collect();
    assert_eq!(got, want);
    assert!(fwd.flush(Duration::from_secs(10)).await);
    assert_eq!(fwd.stats().published, stats.spooled_lines as u64);
}

#[tokio::test]
async fn app_writing_5_mib_while_nats_is_down_is_never_blocked() {
    let server = NatsServer::start();
    let client = client(&server).await;
    let (fwd, _task) = LogForwarder::new(client.clone(), NODE, 1 << 20, UringHandle::start());
    let sink = fwd.sink("chatty", "chatty-0");
    server.stop();
    wait_disconnected(&client).await;

    // 5 MiB of 100-byte lines.
    let started = std::time::Instant::now();
    run_app(
        &sink,
        &format!("yes {} | head -c 5242880", "a".repeat(99)),
        Duration::from_secs(10),
    )
    .await;
    let stats = fwd.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    assert!(stats.spooled_bytes <= 1 << 20, "{stats:?}");
    assert_eq!(
        stats.dropped as usize + stats.spooled_lines,
        5 * 1024 * 1024 / 100 + 1,
        "{stats:?}"
    );
    eprintln!(
        "5 MiB written and drained in {:?} with NATS down: {stats:?}",
        started.elapsed()
    );
}

/// A line whose JSON is larger than the server's `max_payload` can never be published: it is
/// dropped, counted, and reported on the next line; the lines around it still arrive in order.
#[tokio::test]
async fn a_line_too_big_for_the_server_is_dropped_and_reported() {
    let server = NatsServer::start_with_config("max_payload: 2048");
    let (client, mut sub) = subscribed(&server, "logs.hello.node-1").await;
    let mut cfg = LogForwarderConfig::new(NODE);
    cfg.max_line_bytes = 8192;
    let (fwd, _task) = LogForwarder::with_config(client.clone(), cfg, UringHandle::start());
    let sink = fwd.sink("hello", "hello-0");

    run_app(
        &sink,
        "echo before; head -c 4000 /dev/zero | tr '\\0' x; echo; echo after",
        Duration::from_secs(20),
    )
    .await;

    let lines = recv_lines(&mut sub, 2, Duration::from_secs(20)).await;
    assert_eq!(
        lines
            .iter()
            .map(|l| (l.message.as_str(), l.dropped_before))
            .collect::<Vec<_>>(),
        [("before", 0), ("after", 1)]
    );
    assert!(fwd.flush(Duration::from_secs(10)).await);
    let stats = fwd.stats();
    assert_eq!(
        (
            stats.published,
            stats.dropped,
            stats.spooled_lines,
            stats.spooled_bytes
        ),
        (2, 1, 0, 0)
    );
}

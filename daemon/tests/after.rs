//! The spec's `after = [...]` with the real `narund` binary and a real nats-server
//! (docs/spec.md, "Dependencies"): an app waits, `starting` with reason `after`, until the
//! service it names answers discovery pings; `narunctl apps ls` and `apps status` say what
//! it waits for; once a service of that name appears, it starts. With `afterTimeoutSec` it
//! starts anyway when the time is up, saying so on its stderr log.

use futures_util::StreamExt;
use narun_test_support::apps::SLEEPER;
use narun_test_support::{Narund, NatsServer, T, buckets, expect_ok, narunctl, synced, wait_for};
use narun_wire::events::{LogLine, StatusEvent};
use narun_wire::micro::{Service, ServiceConfig};
use narun_wire::names;
use narun_wire::status::{InstanceStatus, Reason};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_starts_only_once_the_services_it_is_after_answer() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let client = server.connect().await;
    let mut status = client
        .subscribe(names::status_subject("b", "n1"))
        .await
        .unwrap();
    synced(&client).await;
    let _narund = Narund::start(&server, "n1", "");
    b.upload("b", "v1", SLEEPER).await;
    b.put_spec(
        "b",
        &json!({"name": "b", "tag": "v1", "nodes": [{"name": "n1", "replicas": 1}],
                "after": ["a-svc"], "afterTimeoutSec": 0, "stopTimeoutSec": 2}),
    )
    .await;

    // It says what it waits for, and does not start.
    let waiting = tokio::time::timeout(T, async {
        while let Some(m) = status.next().await {
            let ev: StatusEvent = serde_json::from_slice(&m.payload).unwrap();
            assert_ne!(
                ev.status,
                InstanceStatus::Running,
                "started too early: {ev:?}"
            );
            if ev.reason == Some(Reason::After) {
                return ev;
            }
        }
        panic!("status subscription ended");
    })
    .await
    .expect("a `starting/after` event");
    assert_eq!(waiting.status, InstanceStatus::Starting);
    assert_eq!(waiting.error, "waiting for a-svc");
    assert_eq!(waiting.pid, None);
    let url = server.url();
    let ls = wait_for("apps ls to show the wait", T, || {
        let url = url.clone();
        async move {
            let out = expect_ok(&narunctl(&url, &["apps", "ls"]).await);
            out.contains("waiting for a-svc (b-0)").then_some(out)
        }
    })
    .await;
    assert!(ls.contains("waiting for a-svc"), "{ls}");
    let st = expect_ok(&narunctl(&url, &["apps", "status", "b"]).await);
    assert!(
        st.lines().any(|l| l.contains("b-0")
            && l.contains("starting")
            && l.contains("waiting for a-svc")),
        "{st}"
    );
    // Still not started a while later (the pings go on; nothing answers).
    let quiet = tokio::time::timeout(Duration::from_millis(1500), status.next()).await;
    if let Ok(Some(m)) = quiet {
        let ev: StatusEvent = serde_json::from_slice(&m.payload).unwrap();
        assert_ne!(
            ev.status,
            InstanceStatus::Running,
            "started without a-svc: {ev:?}"
        );
    }

    // A service named a-svc appears (any NATS Micro service answers the ping): b starts.
    let appeared = Instant::now();
    let _svc = Service::start(&client, ServiceConfig::new("a-svc", "1.0.0"))
        .await
        .unwrap();
    let running = tokio::time::timeout(T, async {
        while let Some(m) = status.next().await {
            let ev: StatusEvent = serde_json::from_slice(&m.payload).unwrap();
            if ev.status == InstanceStatus::Running {
                return ev;
            }
        }
        panic!("status subscription ended");
    })
    .await
    .expect("b runs once a-svc answers");
    assert!(running.pid.is_some());
    // Seen within the backoff's cap (2 s) plus the start, not at some timeout.
    assert!(
        appeared.elapsed() < Duration::from_secs(8),
        "{:?}",
        appeared.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_timeout_an_app_starts_anyway_and_says_so() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let client = server.connect().await;
    let mut status = client
        .subscribe(names::status_subject("c", "n1"))
        .await
        .unwrap();
    let mut logs = client
        .subscribe(names::log_subject("c", "n1"))
        .await
        .unwrap();
    synced(&client).await;
    let _narund = Narund::start(&server, "n1", "");
    b.upload("c", "v1", SLEEPER).await;
    let put = Instant::now();
    b.put_spec(
        "c",
        &json!({"name": "c", "tag": "v1", "nodes": [{"name": "n1", "replicas": 1}],
                "after": ["never-there", "nor-this"], "afterTimeoutSec": 2, "stopTimeoutSec": 2}),
    )
    .await;
    let mut seen = Vec::new();
    tokio::time::timeout(T, async {
        while let Some(m) = status.next().await {
            let ev: StatusEvent = serde_json::from_slice(&m.payload).unwrap();
            let running = ev.status == InstanceStatus::Running;
            seen.push((ev.status.to_string(), ev.error));
            if running {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("c never ran: {seen:?}"));
    assert!(
        put.elapsed() >= Duration::from_secs(2),
        "{:?}",
        put.elapsed()
    );
    assert!(
        seen.iter()
            .any(|(s, e)| s == "starting" && e == "waiting for never-there, nor-this"),
        "{seen:?}"
    );
    let line = tokio::time::timeout(T, async {
        while let Some(m) = logs.next().await {
            let l: LogLine = serde_json::from_slice(&m.payload).unwrap();
            if l.message.contains("starting without") {
                return l.message;
            }
        }
        String::new()
    })
    .await
    .expect("a warning on the instance's log");
    assert!(
        line.contains("never-there, nor-this") && line.contains("afterTimeoutSec = 2"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_deleted_while_it_waits_never_starts() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let client = server.connect().await;
    let mut status = client
        .subscribe(names::status_subject("d", "n1"))
        .await
        .unwrap();
    synced(&client).await;
    let _narund = Narund::start(&server, "n1", "");
    b.upload("d", "v1", SLEEPER).await;
    b.put_spec(
        "d",
        &json!({"name": "d", "tag": "v1", "nodes": [{"name": "n1", "replicas": 1}],
                "after": ["missing"], "afterTimeoutSec": 0}),
    )
    .await;
    let ev = next_event(&mut status).await;
    assert_eq!(
        (ev.status.clone(), ev.reason.clone()),
        (InstanceStatus::Starting, Some(Reason::After)),
        "{ev:?}"
    );
    b.configs.delete("d").await.unwrap();
    // The wait ends with the stop: `stopped`, never a process.
    let ev = next_event(&mut status).await;
    assert_eq!(ev.status, InstanceStatus::Stopped, "{ev:?}");
    assert_eq!(ev.pid, None);
}

/// The next status event on `status`, within [`T`].
async fn next_event(status: &mut async_nats::Subscriber) -> StatusEvent {
    let m = tokio::time::timeout(T, status.next())
        .await
        .expect("a status event")
        .unwrap();
    serde_json::from_slice(&m.payload).unwrap()
}

//! Issue 23, scale to zero, end to end: the real `narund` (feature `gateway`), a real
//! nats-server and the real hello app (`examples/hello`, the `narun` library).
//!
//! hello has `scaleToZero = { idleSec = 2 }`: once it has answered nothing for 2 s narund
//! stops it and reports `scaled_to_zero` (in the heartbeat and as a status event, not
//! failed). Then concurrent requests through the gateway, a GET and POSTs, wake it: the
//! gateway asks narund on `narun.control.<node>.wake`, waits for hello to announce itself
//! and forwards: every request gets hello's 200. A wake of an app without `scaleToZero`
//! (or of an unknown one) is refused with a reason and starts nothing.
#![cfg(feature = "gateway")]

use futures_util::StreamExt;
use narun_test_support::heartbeat;
use narun_test_support::http1;
use narun_test_support::{
    Narund, NatsServer, T, alive, buckets, free_ports, wait_for, workspace_bin,
};
use narun_wire::events::{StatusEvent, WakeReply, WakeRequest};
use narun_wire::names;
use narun_wire::status::InstanceStatus;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

const NODE: &str = "s2z";

async fn get(http: SocketAddr, path: &str) -> http1::RawResponse {
    http1::request(http, "GET", path, &[], b"").await
}

async fn wake(client: &async_nats::Client, app: &str) -> WakeReply {
    let body = serde_json::to_vec(&WakeRequest { app: app.into() }).unwrap();
    let msg = tokio::time::timeout(
        T,
        client.request(
            names::control_subject(NODE, names::CONTROL_WAKE),
            body.into(),
        ),
    )
    .await
    .expect("a wake answer in time")
    .expect("narund answers wake requests");
    serde_json::from_slice(&msg.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_app_scales_to_zero_and_a_request_wakes_it() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let hello = std::fs::read(workspace_bin("hello", "hello", &[])).unwrap();
    b.upload("hello", "v1", &hello).await;
    b.put_spec(
        "hello",
        &json!({"name": "hello", "tag": "v1", "scaleToZero": {"idleSec": 2},
            "nodes": [{"name": NODE, "replicas": 1}]}),
    )
    .await;
    // An always-on app next to it: a wake must never start it.
    b.upload("steady", "v1", narun_test_support::apps::SILENT_SLEEPER)
        .await;
    b.put_spec(
        "steady",
        &json!({"name": "steady", "tag": "v1", "nodes": [{"name": NODE, "replicas": 1}]}),
    )
    .await;

    let client = server.connect().await;
    let mut events = client
        .subscribe(format!("status.hello.{NODE}"))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let states = narun_wire::jetstream::NODE_STATES
        .ensure(&js)
        .await
        .unwrap();
    let mut beats = states.watch(NODE).await.unwrap();

    let [http_port, metrics_port] = free_ports();
    let _narund = Narund::builder(&server, NODE)
        .features(&["gateway"])
        .config(&format!(
            "[gateway]\nenabled = true\n\
             http_addr = \"127.0.0.1:{http_port}\"\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n\
             [[gateway.routes]]\npath = \"/hello/\"\nservice = \"hello\"\n"
        ))
        .start();
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();

    // hello serves (503 until it has started and registered).
    wait_for("hello to answer through the gateway", T, || async {
        // The listener is bound once narund has started its gateway.
        tokio::net::TcpStream::connect(http).await.ok()?;
        let r = get(http, "/hello/world").await;
        (r.status == 200).then_some(())
    })
    .await;
    let awake = heartbeat(&mut beats, "hello-0 running", |s| {
        s.instances
            .iter()
            .any(|i| i.instance_id == "hello-0" && i.status == InstanceStatus::Running)
    })
    .await;
    let pid = awake
        .instances
        .iter()
        .find(|i| i.instance_id == "hello-0")
        .and_then(|i| i.pid)
        .expect("hello-0's pid");
    let steady_pid = wait_for("steady running", T, || {
        let st = states.clone();
        async move {
            let e = st.get(NODE).await.ok()??;
            let s: narun_wire::events::NodeState = serde_json::from_slice(&e).ok()?;
            s.instances
                .iter()
                .find(|i| i.instance_id == "steady-0" && i.status == InstanceStatus::Running)
                .and_then(|i| i.pid)
        }
    })
    .await;

    // No request for idleSec: narund stops hello, and says it scaled it to zero.
    let slept = heartbeat(&mut beats, "hello-0 scaled_to_zero", |s| {
        s.instances
            .iter()
            .any(|i| i.instance_id == "hello-0" && i.status == InstanceStatus::ScaledToZero)
    })
    .await;
    let steady = slept
        .instances
        .iter()
        .find(|i| i.app_name == "steady")
        .unwrap();
    assert_eq!(steady.status, InstanceStatus::Running, "{slept:?}");
    wait_for("hello's process to end", T, || async {
        (!alive(pid)).then_some(())
    })
    .await;
    tokio::time::timeout(T, async {
        while let Some(m) = events.next().await {
            let e: StatusEvent = serde_json::from_slice(&m.payload).unwrap();
            if e.status == InstanceStatus::ScaledToZero {
                assert_eq!(e.instance_id, "hello-0");
                return;
            }
            assert_ne!(e.status, InstanceStatus::Failed, "{e:?}");
            assert_ne!(e.status, InstanceStatus::Crashed, "{e:?}");
        }
    })
    .await
    .expect("a scaled_to_zero status event");

    // Wakes that must start nothing: an always-on app, an unknown app, a bad request.
    let r = wake(&client, "steady").await;
    assert!(r.error.contains("app steady has no scaleToZero"), "{r:?}");
    assert!(r.started.is_empty());
    let r = wake(&client, "nope").await;
    assert!(
        r.error.contains("app nope is not deployed on node s2z"),
        "{r:?}"
    );
    let raw = client
        .request(
            names::control_subject(NODE, names::CONTROL_WAKE),
            "{\"ap".into(),
        )
        .await
        .unwrap();
    let r: WakeReply = serde_json::from_slice(&raw.payload).unwrap();
    assert!(r.error.starts_with("bad wake request"), "{r:?}");
    assert!(alive(steady_pid), "a refused wake touched steady");

    // Concurrent requests to the sleeping app: all wait for the wake and are served.
    let mut calls = Vec::new();
    for i in 0..4 {
        calls.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = if i % 2 == 0 {
                get(http, &format!("/hello/w{i}")).await
            } else {
                http1::request(
                    http,
                    "POST",
                    "/hello/echo",
                    &[],
                    format!("body {i}").as_bytes(),
                )
                .await
            };
            (i, r, started.elapsed())
        }));
    }
    for c in calls {
        let (i, r, took) = tokio::time::timeout(T, c).await.unwrap().unwrap();
        assert_eq!(
            r.status,
            200,
            "request {i} after {took:?}: {}{}",
            r.head,
            r.text()
        );
        let want = if i % 2 == 0 {
            format!("w{i}")
        } else {
            format!("body {i}")
        };
        assert!(r.text().contains(&want), "request {i}: {}", r.text());
    }
    let woke = heartbeat(&mut beats, "hello-0 running again", |s| {
        s.instances
            .iter()
            .any(|i| i.instance_id == "hello-0" && i.status == InstanceStatus::Running)
    })
    .await;
    let new_pid = woke
        .instances
        .iter()
        .find(|i| i.instance_id == "hello-0")
        .and_then(|i| i.pid)
        .unwrap();
    assert_ne!(new_pid, pid, "hello was started again");
    // Awake now: a wake is a no-op.
    let r = wake(&client, "hello").await;
    assert!(r.error.is_empty() && r.started.is_empty(), "{r:?}");
    assert_eq!(get(http, "/hello/again").await.status, 200);
    // And it sleeps again once idle.
    heartbeat(&mut beats, "hello-0 scaled_to_zero again", |s| {
        s.instances
            .iter()
            .any(|i| i.instance_id == "hello-0" && i.status == InstanceStatus::ScaledToZero)
    })
    .await;
    tokio::time::sleep(Duration::ZERO).await;
}

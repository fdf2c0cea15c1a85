//! Raw route mode: body as payload, HTTP headers as NATS headers, against a
//! Python `nats-py` micro service and a plain Rust subscriber.

mod common;

use common::*;
use futures_util::StreamExt;
use http::{HeaderValue, Request};
use narun_test_support::NatsServer;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const ROUTES: &str = r#"
[[gateway.routes]]
path = "/py/"
mode = "raw"
subject = "pyraw.echo"

[[gateway.routes]]
path = "/pyfail"
mode = "raw"
subject = "pyraw.fail"

[[gateway.routes]]
path = "/rust/"
mode = "raw"
subject = "raw.rust"
"#;

/// Start `tests/py/raw_service.py`; FAIL (not skip) when python3 or nats-py is missing.
async fn start_python(url: &str) -> tokio::process::Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/raw_service.py");
    let check = std::process::Command::new("python3")
        .args(["-c", "import nats.micro"])
        .output();
    match check {
        Err(e) => panic!(
            "the raw-mode test needs python3 ({e}); install it, e.g. `apt-get install python3 python3-pip`"
        ),
        Ok(o) if !o.status.success() => panic!(
            "the raw-mode test needs the nats-py package (>= 2.9, which has nats.micro): \
             `pip install nats-py`\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python3 raw_service.py");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("python service did not print `ready` within 20 s")
        .expect("read python stdout");
    assert_eq!(
        first.as_deref(),
        Some("ready"),
        "python service failed to start"
    );
    child
}

#[tokio::test]
async fn raw_mode_against_nats_py_micro_service() {
    let server = NatsServer::start();
    let _py = start_python(&server.url()).await;
    let client = gateway_client(&server).await;
    wait_connected(&client).await;
    let gw = start_gateway(client, ROUTES).await;

    let r = send(
        Request::post(gw.url("/py/items/7?sort=asc&x=%2F"))
            .header("content-type", "text/plain")
            .header("x-custom", "v1")
            .header("connection", "x-drop")
            .header("x-drop", "1")
            .header("x-request-id", "req-42")
            .body(full("hello raw"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    let h = &v["headers"];
    assert_eq!(v["body"], "hello raw");
    assert_eq!(h["X-Original-Method"], "POST");
    assert_eq!(h["X-Original-Path"], "/py/items/7");
    assert_eq!(h["X-Original-Query"], "sort=asc&x=%2F");
    assert_eq!(h["Content-Type"], "text/plain");
    assert_eq!(h["X-Custom"], "v1");
    assert_eq!(h["X-Request-Id"], "req-42");
    assert_eq!(h["X-Forwarded-For"], "127.0.0.1");
    assert!(
        h.get("Connection").is_none() && h.get("X-Drop").is_none(),
        "{h}"
    );
    // Reply headers: copied, minus hop-by-hop and the status header.
    assert_eq!(r.headers["x-py"], "yes");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["x-request-id"], "req-42");
    for gone in ["keep-alive", "x-response-status-code"] {
        assert!(!r.headers.contains_key(gone), "{gone}: {:?}", r.headers);
    }

    // A micro error from Python maps to its status with the description as body.
    let r = get(&gw.url("/pyfail")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.text(), "slow down\n");
}

#[tokio::test]
async fn raw_mode_skips_headers_nats_cannot_carry() {
    let server = NatsServer::start();
    let svc_client = server.connect().await;
    let mut sub = svc_client.subscribe("raw.rust").await.unwrap();
    synced(&svc_client).await;
    let responder = svc_client.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let names: Vec<String> = m
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|(k, _)| AsRef::<str>::as_ref(k).to_owned())
                .collect();
            let mut h = async_nats::HeaderMap::new();
            h.insert("X-Ok", "1");
            h.insert("Bad(Name)", "x");
            h.insert("Nats-Service-Whatever", "internal");
            responder
                .publish_with_headers(
                    m.reply.unwrap(),
                    h,
                    serde_json::to_vec(&names).unwrap().into(),
                )
                .await
                .unwrap();
        }
    });
    let client = gateway_client(&server).await;
    wait_connected(&client).await;
    let gw = start_gateway(client, ROUTES).await;

    let r = send(
        Request::get(gw.url("/rust/x"))
            .header("x-latin1", HeaderValue::from_bytes(b"caf\xe9").unwrap())
            .header("x-fine", "ok")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let names: Vec<String> = serde_json::from_slice(&r.body).unwrap();
    assert!(names.contains(&"X-Fine".to_owned()), "{names:?}");
    assert!(!names.contains(&"X-Latin1".to_owned()), "{names:?}");
    assert_eq!(r.headers["x-ok"], "1");
    assert!(!r.headers.contains_key("nats-service-whatever"));
    assert!(r.headers.keys().all(|k| k.as_str() != "bad(name)"));
}

/// An async raw route: the job runs through the raw forwarding (body as payload, HTTP
/// headers as NATS headers), the service sees `Narun-Job-Id` and `Narun-Job-Attempt` as
/// NATS headers, a `X-Response-Status-Code: 503` is retried, and the stored result keeps
/// the reply's body and headers.
#[tokio::test]
async fn async_raw_routes_run_jobs_with_nats_headers() {
    let server = NatsServer::start();
    let svc_client = server.connect().await;
    let mut sub = svc_client.subscribe("raw.jobs").await.unwrap();
    synced(&svc_client).await;
    let responder = svc_client.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let h = m.headers.clone().unwrap_or_default();
            let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned()).unwrap_or_default();
            let attempt = get("Narun-Job-Attempt");
            let mut out = async_nats::HeaderMap::new();
            out.insert("X-Seen-Job", get("Narun-Job-Id").as_str());
            // The first attempt fails with a 503: the job is retried.
            if attempt == "1" {
                out.insert("X-Response-Status-Code", "503");
            } else {
                out.insert("X-Response-Status-Code", "201");
            }
            let mut body = format!(
                "{} {} attempt {attempt}: {}",
                get("X-Original-Method"),
                get("X-Original-Path"),
                String::from_utf8_lossy(&m.payload)
            );
            if get("X-Original-Path") == "/jobs/big" {
                // More than half of max_payload: kept in the object store.
                body = "b".repeat(600_000);
            }
            responder
                .publish_with_headers(m.reply.unwrap(), out, body.into())
                .await
                .unwrap();
        }
    });
    let client = gateway_client(&server).await;
    wait_connected(&client).await;
    let gw = start_gateway(
        client,
        "[[gateway.routes]]\npath = \"/jobs/\"\nmode = \"raw\"\nsubject = \"raw.jobs\"\n\
         async = true\nretry_backoff_ms = 50\n",
    )
    .await;
    let r = send(
        Request::post(gw.url("/jobs/report"))
            .body(full("the body"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.headers["narun-job-id"].to_str().unwrap().to_owned();
    let v = narun_test_support::wait_for("the raw job to be done", Duration::from_secs(30), || {
        let url = gw.url(&format!("/_jobs/{id}"));
        async move {
            let v = get(&url).await.json();
            (v["state"] == "done").then_some(v)
        }
    })
    .await;
    assert_eq!(v["attempts"][0]["status"], 503, "{v}");
    assert_eq!(v["attempts"][1]["status"], 201, "{v}");
    assert_eq!(v["mode"], "raw");
    let r = get(&gw.url(&format!("/_jobs/{id}/result"))).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), "POST /jobs/report attempt 2: the body");
    assert_eq!(r.headers["x-seen-job"].to_str().unwrap(), id);

    // A large result goes to the object store and comes back whole.
    let r = send(Request::put(gw.url("/jobs/big")).body(full("")).unwrap()).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.headers["narun-job-id"].to_str().unwrap().to_owned();
    let v = narun_test_support::wait_for("the big job to be done", Duration::from_secs(30), || {
        let url = gw.url(&format!("/_jobs/{id}"));
        async move {
            let v = get(&url).await.json();
            (v["state"] == "done").then_some(v)
        }
    })
    .await;
    assert_eq!(v["result"]["stored"], "object", "{v}");
    assert_eq!(v["result"]["body_bytes"], 600_000, "{v}");
    let r = get(&gw.url(&format!("/_jobs/{id}/result"))).await;
    assert_eq!((r.status.as_u16(), r.body.len()), (201, 600_000));
    assert!(r.body.iter().all(|b| *b == b'b'));

    // Counted: two accepted, two done, each after one retried attempt.
    let m = get(&gw.metrics_url("/metrics")).await.text();
    for (event, n) in [("accepted", 2), ("done", 2), ("retried", 2)] {
        let line = format!("gateway_jobs_total{{event=\"{event}\"}} {n}");
        assert!(m.lines().any(|l| l == line), "no {line:?} in:\n{m}");
    }
    narun_test_support::http1::promtool_check(&m);
}

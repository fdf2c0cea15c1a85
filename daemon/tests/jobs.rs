//! Issue 22, async requests: the real narund (feature `gateway`) with `async` routes in
//! front of the real `hello` app, on a real nats-server.
//!
//! * `async_requests_are_stored_run_retried_and_answered`: 202 + `Location`, the job's
//!   state and attempts, the stored result (status, headers, body), the job headers the
//!   service sees, `Prefer: respond-async` on an `"allow"` route, retries until the
//!   service appears, failure after `max_attempts`, cancel, `narunctl jobs`, every hostile
//!   input of the job API, and the docs/jobs.md example run as written.
//! * `accepted_jobs_survive_a_sigkill_of_narund`: narund is killed (SIGKILL) while jobs
//!   run; a new narund finishes them: every accepted job ends `done`, with one result.
#![cfg(feature = "gateway")]

use narun_test_support::http1::{self, RawResponse};
use narun_test_support::{
    Buckets, Narund, NatsServer, T, buckets, free_ports, narunctl, text, wait_for,
};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const NODE: &str = "jobs";

/// The gateway part of narund's config: the docs/jobs.md routes, plus routes to
/// services that are missing (`late` appears later, `missing` never does, `parked`
/// retries slowly).
fn gateway_toml(http: u16, metrics: u16, ack_wait_sec: u64) -> String {
    format!(
        "[gateway]\nenabled = true\n\
         http_addr = \"127.0.0.1:{http}\"\nmetrics_addr = \"127.0.0.1:{metrics}\"\n\
         max_body_bytes = 65536\nmemory_budget_bytes = 1048576\n\
         [gateway.jobs]\nworkers = 4\nack_wait_sec = {ack_wait_sec}\nmax_backoff_sec = 1\n\
         [[gateway.routes]]\npath = \"/hello/echo\"\nservice = \"hello\"\nasync = true\n\
         max_attempts = 3\nretry_backoff_ms = 500\n\
         [[gateway.routes]]\npath = \"/hello/late\"\nservice = \"late\"\nasync = true\n\
         max_attempts = 100\nretry_backoff_ms = 100\n\
         [[gateway.routes]]\npath = \"/hello/slow\"\nservice = \"hello\"\nasync = true\n\
         [[gateway.routes]]\npath = \"/hello/\"\nservice = \"hello\"\nasync = \"allow\"\n\
         [[gateway.routes]]\npath = \"/missing/\"\nservice = \"missing\"\nasync = true\n\
         max_attempts = 2\nretry_backoff_ms = 50\n\
         [[gateway.routes]]\npath = \"/parked/\"\nservice = \"parked\"\nasync = true\n\
         retry_backoff_ms = 3600000\n"
    )
}

/// Upload the hello example as app `app` and deploy one instance on [`NODE`].
async fn deploy_hello(b: &Buckets, narund: &Narund, app: &str) {
    let bin = narun_test_support::workspace_bin("hello", "hello", &[]);
    let copy = narund.data_dir().join(format!("{app}-bin"));
    std::fs::copy(&bin, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    b.upload(app, "v1", format!("#!/bin/sh\nexec {}\n", copy.display()))
        .await;
    b.put_spec(
        app,
        &json!({"name": app, "tag": "v1", "nodes": [{"name": NODE, "replicas": 1}]}),
    )
    .await;
}

async fn req(
    gw: SocketAddr,
    method: &str,
    path: &str,
    h: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    http1::request(gw, method, path, h, body).await
}

/// POST (or `method`) a request that must be accepted as a job; its id.
async fn submit(
    gw: SocketAddr,
    method: &str,
    path: &str,
    h: &[(&str, &str)],
    body: &[u8],
) -> String {
    let r = req(gw, method, path, h, body).await;
    assert_eq!(r.status, 202, "{} {}", r.head, r.text());
    let id = r.header("narun-job-id").expect("a job id header");
    assert_eq!(
        r.header("location").as_deref(),
        Some(format!("/_jobs/{id}").as_str())
    );
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["state"], "queued");
    id
}

async fn record(gw: SocketAddr, id: &str) -> Value {
    let r = req(gw, "GET", &format!("/_jobs/{id}"), &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// Wait (bounded) until job `id` is in `state`; its record.
async fn wait_state(gw: SocketAddr, id: &str, state: &str) -> Value {
    wait_for(&format!("job {id} to be {state}"), T, || async {
        let v = record(gw, id).await;
        (v["state"] == state).then_some(v)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_requests_are_stored_run_retried_and_answered() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let [http_port, metrics_port] = free_ports();
    let narund = Narund::builder(&server, NODE)
        .features(&["gateway"])
        .config(&gateway_toml(http_port, metrics_port, 30))
        .start();
    let gw: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    deploy_hello(&b, &narund, "hello").await;
    wait_for("hello answers through the gateway", T, || async {
        let Ok(mut s) = tokio::net::TcpStream::connect(gw).await else {
            return None;
        };
        (http1::get(&mut s, "/hello/w").await.status == 200).then_some(())
    })
    .await;

    // An `async = true` route: 202, then done with the echoed body as result.
    let id = submit(
        gw,
        "POST",
        "/hello/echo",
        &[("Content-Type", "text/x-report")],
        b"make a report",
    )
    .await;
    let v = wait_state(gw, &id, "done").await;
    assert_eq!(v["service"], "hello");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["attempts"][0]["status"], 200);
    assert_eq!(v["attempts"][0]["node"], NODE);
    assert_eq!(v["result"]["status"], 200);
    let r = req(gw, "GET", &format!("/_jobs/{id}/result"), &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "make a report");
    assert_eq!(r.header("content-type").as_deref(), Some("text/x-report"));
    assert_eq!(r.header("narun-job-id").as_deref(), Some(id.as_str()));

    // An `"allow"` route: answered at once without `Prefer`, a job with it; the service
    // sees the job id and the attempt number.
    let r = req(gw, "GET", "/hello/world", &[], b"").await;
    assert_eq!(
        (r.status, r.text().starts_with("Hello, world!")),
        (200, true),
        "{}",
        r.text()
    );
    let r = req(
        gw,
        "GET",
        "/hello/headers",
        &[("Prefer", "respond-async")],
        b"",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        r.header("preference-applied").as_deref(),
        Some("respond-async")
    );
    let id = r.header("narun-job-id").unwrap();
    wait_state(gw, &id, "done").await;
    let r = req(gw, "GET", &format!("/_jobs/{id}/result"), &[], b"").await;
    let seen: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(seen["narun-job-id"], id.as_str(), "{seen}");
    assert_eq!(seen["narun-job-attempt"], "1", "{seen}");

    // Retries: `late` is not deployed yet (no responders), then it is; the job is done
    // after attempts that found nobody.
    let late = submit(gw, "GET", "/hello/late", &[], b"").await;
    let v = wait_state(gw, &late, "retrying").await;
    assert_eq!(v["attempts"][0]["status"], 503, "{v}");
    deploy_hello(&b, &narund, "late").await;
    let v = wait_state(gw, &late, "done").await;
    let attempts = v["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{v}");
    assert_eq!(attempts.last().unwrap()["status"], 200, "{v}");
    let r = req(gw, "GET", &format!("/_jobs/{late}/result"), &[], b"").await;
    assert!(
        r.text().starts_with("Hello, late! (from late-0)"),
        "{}",
        r.text()
    );

    // Failure after max_attempts (2): both attempts recorded, no result.
    let missing = submit(gw, "PUT", "/missing/x", &[], b"{}").await;
    let v = wait_state(gw, &missing, "failed").await;
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{v}");
    assert!(attempts.iter().all(|a| a["status"] == 503), "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("No backend service"),
        "{v}"
    );
    let r = req(gw, "GET", &format!("/_jobs/{missing}/result"), &[], b"").await;
    assert_eq!(r.status, 409);
    assert!(
        r.text().contains("is failed: it has no result"),
        "{}",
        r.text()
    );

    // Cancel: a retrying job (an hour's backoff) is cancelled; a cancelled or done one is not.
    let parked = submit(gw, "POST", "/parked/p", &[], b"p").await;
    wait_state(gw, &parked, "retrying").await;
    let r = req(gw, "DELETE", &format!("/_jobs/{parked}"), &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap()["state"],
        "cancelled"
    );
    let r = req(gw, "DELETE", &format!("/_jobs/{parked}"), &[], b"").await;
    assert_eq!(r.status, 409);
    assert!(
        r.text()
            .contains("is cancelled: only queued or retrying jobs can be cancelled"),
        "{}",
        r.text()
    );
    let done = late.clone();
    let r = req(gw, "DELETE", &format!("/_jobs/{done}"), &[], b"").await;
    assert_eq!(r.status, 409);
    assert!(r.text().contains("is done"), "{}", r.text());

    // Hostile input: bad ids, unknown ids, methods, sizes, routes.
    for (path, status, says) in [
        ("/_jobs/a.b", 400, "contains '.'"),
        ("/_jobs/", 400, "the job id is empty"),
        ("/_jobs/../etc/passwd", 400, "Bad job id"),
        (
            "/_jobs/NoSuchJob0000000000000",
            404,
            "no job NoSuchJob0000000000000",
        ),
        (
            "/_jobs/NoSuchJob0000000000000/result",
            404,
            "unknown, or its record expired",
        ),
    ] {
        let r = req(gw, "GET", path, &[], b"").await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(r.text().contains(says), "{path}: {}", r.text());
    }
    let long = format!("/_jobs/{}", "x".repeat(65));
    let r = req(gw, "GET", &long, &[], b"").await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = req(gw, "PUT", &format!("/_jobs/{done}"), &[], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD, DELETE"));
    let r = req(gw, "DELETE", &format!("/_jobs/{done}/result"), &[], b"").await;
    assert_eq!(r.status, 405);
    let big = vec![b'x'; 70_000];
    let r = req(gw, "POST", "/hello/echo", &[], &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("Request body too large"), "{}", r.text());
    let r = req(gw, "POST", "/nowhere", &[], b"x").await;
    assert_eq!(r.status, 404);

    // narunctl jobs: ls with filters, show, cancel and retry with clear refusals.
    let url = server.url();
    let out = narunctl(&url, &["jobs", "ls", "--service", "hello"]).await;
    let ls = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(ls.starts_with("ID"), "{ls}");
    assert!(ls.lines().count() >= 3 && ls.contains("done"), "{ls}");
    assert!(!ls.contains("missing"), "{ls}");
    let out = narunctl(&url, &["jobs", "ls", "--app", "missing", "--json"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["id"], missing.as_str());
    let out = narunctl(&url, &["jobs", "show", &missing]).await;
    let shown = text(&out.stdout);
    assert!(
        shown.contains("state:    failed") && shown.contains("attempt 2"),
        "{shown}"
    );
    let out = narunctl(&url, &["jobs", "cancel", &done]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is done: only queued or retrying jobs can be cancelled"),
        "{}",
        text(&out.stderr)
    );
    let out = narunctl(&url, &["jobs", "retry", &done]).await;
    assert!(
        text(&out.stderr).contains("only failed or cancelled jobs can be retried"),
        "{}",
        text(&out.stderr)
    );
    let out = narunctl(&url, &["jobs", "show", "a.b"]).await;
    assert!(
        text(&out.stderr).contains("contains '.'"),
        "{}",
        text(&out.stderr)
    );
    // Retry the failed job: a new run of 2 attempts, the first 2 kept.
    let out = narunctl(&url, &["jobs", "retry", &missing]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = wait_for("the retried job to fail again", T, || async {
        let v = record(gw, &missing).await;
        (v["state"] == "failed" && v["attempts"].as_array().unwrap().len() == 4).then_some(v)
    })
    .await;
    assert_eq!(
        (v["retries"].as_u64(), v["run_base"].as_u64()),
        (Some(1), Some(2)),
        "{v}"
    );
    assert_eq!(v["attempts"][3]["attempt"], 4);

    // The docs/jobs.md example, as written (its port replaced).
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/jobs.md"))
            .unwrap();
    let script = doc
        .split("<!-- test: jobs-curl -->\n```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the example in docs/jobs.md")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{http_port}"));
    let out = tokio::time::timeout(
        T,
        tokio::process::Command::new("sh")
            .arg("-ec")
            .arg(&script)
            .output(),
    )
    .await
    .expect("the docs example in time")
    .unwrap();
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    assert!(said.contains("\"state\": \"done\""), "{said}");
    assert!(
        said.contains("HTTP/1.1 200 OK") && said.trim_end().ends_with("make a report"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_jobs_survive_a_sigkill_of_narund() {
    const JOBS: usize = 24;
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let [http_port, metrics_port] = free_ports();
    let config = gateway_toml(http_port, metrics_port, 2);
    let mut first = Narund::builder(&server, NODE)
        .features(&["gateway"])
        .config(&config)
        .start();
    let gw: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    deploy_hello(&b, &first, "hello").await;
    wait_for("hello answers through the gateway", T, || async {
        let Ok(mut s) = tokio::net::TcpStream::connect(gw).await else {
            return None;
        };
        (http1::get(&mut s, "/hello/w").await.status == 200).then_some(())
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        ids.push(submit(gw, "GET", "/hello/slow?ms=400", &[], b"").await);
    }
    // Kill narund while some jobs are done and others are running.
    let js = async_nats::jetstream::new(server.connect().await);
    let state = js
        .get_key_value(narun_wire::jobs::STATE_BUCKET)
        .await
        .unwrap();
    let states = |state: async_nats::jetstream::kv::Store, ids: Vec<String>| async move {
        let mut out = Vec::new();
        for id in &ids {
            let (rec, _) = narun_wire::jobs::read(&state, id).await.unwrap().unwrap();
            out.push(rec);
        }
        out
    };
    wait_for("a job done and another running", T, || async {
        let recs = states(state.clone(), ids.clone()).await;
        let done = recs
            .iter()
            .filter(|r| r.state == narun_wire::jobs::JobState::Done)
            .count();
        let running = recs
            .iter()
            .filter(|r| r.state == narun_wire::jobs::JobState::Running)
            .count();
        (done >= 1 && running >= 1 && done < JOBS).then_some(())
    })
    .await;
    first.signal(libc::SIGKILL);
    first.wait().await;

    // A new narund (same node, same gateway config) finishes the queue.
    let second = Narund::builder(&server, NODE)
        .features(&["gateway"])
        .config(&config)
        .start();
    deploy_hello(&b, &second, "hello").await;
    let recs = wait_for("every accepted job to be done", T * 2, || async {
        let recs = states(state.clone(), ids.clone()).await;
        recs.iter()
            .all(|r| r.state == narun_wire::jobs::JobState::Done)
            .then_some(recs)
    })
    .await;
    let interrupted = recs
        .iter()
        .flat_map(|r| &r.attempts)
        .filter(|a| {
            a.error
                .as_deref()
                .is_some_and(|e| e.starts_with("interrupted"))
        })
        .count();
    eprintln!(
        "{JOBS} jobs done; {interrupted} attempt(s) interrupted by the SIGKILL and run again"
    );
    // Exactly one result per job, the service's answer.
    for id in &ids {
        let r = req(gw, "GET", &format!("/_jobs/{id}/result"), &[], b"").await;
        assert_eq!(
            (r.status, r.text()),
            (200, "slept 400 ms\n".to_string()),
            "{id}"
        );
    }
    // Nothing left in the queue.
    let info = wait_for("the queue to drain", T, || {
        let js = js.clone();
        async move {
            let mut s = js.get_stream(narun_wire::jobs::STREAM).await.ok()?;
            let i = s.info().await.ok()?;
            (i.state.messages == 0).then_some(i.state.messages)
        }
    })
    .await;
    assert_eq!(info, 0);
}

//! Issue 24: the web dashboard, seen through a real headless browser (Debian's chromium
//! driven by chromedriver, `narun_test_support::webdriver`) against a real narund with the
//! gateway, a real nats-server and an app deployed by the real narunctl.
//!
//! The browser test signs in with the admin token, sees the node online and the app
//! running 1/1, sees a log line appear live that was not there when the page opened,
//! scales 1 → 2 and sees both instances running; then signs in with the read-only token
//! and sees the same action refused (403, nothing written). The HTTP test attacks the
//! promises of docs/security.md ("Dashboard") directly: no token, a wrong token, a
//! read-only token acting, cross-origin and non-JSON actions, wildcard app names, env
//! values never sent, CSP on every answer. Screenshots go to the folder the test prints.
#![cfg(all(feature = "gateway", feature = "dashboard"))]

use narun_test_support::http1::{RawResponse, read_response};
use narun_test_support::webdriver::Browser;
use narun_test_support::{Narund, NatsServer, deploy_file, free_ports, text, upload_script};
use sha2::Digest;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const NODE: &str = "dash-node";
const ADMIN: &str = "admin-token-6b1f0c2e9d";
const READ: &str = "read-token-41aa93c07e";
/// Bound of each wait in the browser (a deploy, a scale: narund starts a script app).
const WAIT: Duration = Duration::from_secs(60);

fn sha_hex(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// narund with the gateway on `http` and the dashboard at its default path; one `async`
/// route (`/jobq/`, to a service nobody serves: its jobs fail after one attempt).
fn start(server: &NatsServer) -> (Narund, u16) {
    let [http, metrics] = free_ports();
    let config = format!(
        "[gateway]\nenabled = true\nhttp_addr = \"127.0.0.1:{http}\"\n\
         metrics_addr = \"127.0.0.1:{metrics}\"\n\
         [[gateway.routes]]\npath = \"/jobq/\"\nservice = \"nobody\"\nasync = true\n\
         max_attempts = 1\n\
         [events]\nstream = true\n\
         [dashboard]\nsample_sec = 1\nadmin_tokens = {{ ops = \"{}\" }}\n\
         read_tokens = {{ wall = \"{}\" }}\n",
        sha_hex(ADMIN),
        sha_hex(READ)
    );
    let narund = Narund::builder(server, NODE)
        .features(&["gateway"])
        .config(&config)
        .start();
    (narund, http)
}

/// Deploy `app` (prints `tick N` every 300 ms; an env value that must never be shown)
/// with narunctl on [`NODE`], 1 replica, and wait until it is ready.
async fn deploy_ticker(server: &NatsServer, app: &str) {
    deploy_ticker_on(server, app, NODE).await
}

/// [`deploy_ticker`] on `node`.
async fn deploy_ticker_on(server: &NatsServer, app: &str, node: &str) {
    let script = "#!/bin/sh\ni=0\nwhile true; do i=$((i+1)); echo \"tick $i\"; sleep 0.3; done\n";
    upload_script(server, app, "v1", script).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"{app}\"\ntag = \"v1\"\n[[nodes]]\nname = \"{node}\"\nreplicas = 1\n\
             [[env]]\nname = \"DB_PASSWORD\"\nvalue = \"hunter2-never-shown\"\n"
        ),
    )
    .unwrap();
    let out = deploy_file(&server.url(), &spec, "60s").await;
    assert!(out.status.success(), "deploy: {}", text(&out.stderr));
}

async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> RawResponse {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut s).await
}

/// GET `<path>api/<api>` with the admin token (200 expected) until `ok` takes the answer,
/// at most [`WAIT`].
async fn api_until<T>(
    port: u16,
    api: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    let admin = format!("Bearer {ADMIN}");
    let path = format!("/_narun/api/{api}");
    loop {
        let r = http(port, "GET", &path, &[("Authorization", &admin)], "").await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
        if let Some(t) = ok(&v) {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} within {WAIT:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `body` decompressed by Debian's gzip.
fn gunzip(body: &[u8]) -> String {
    String::from_utf8(narun_test_support::gunzip(body, "the response body")).unwrap()
}

fn numbers(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.rsplit("tick ").next()?.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_sees_node_app_live_log_and_scales_with_admin_token_only() {
    let server = NatsServer::start();
    let (_narund, port) = start(&server);
    deploy_ticker(&server, "ticker").await;

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    println!("screenshots: {}", shots.display());
    let url = format!("http://127.0.0.1:{port}/_narun/");
    // One async job for the jobs view.
    let queued = http(port, "POST", "/jobq/report", &[], "{}").await;
    assert_eq!(queued.status, 202, "{}", queued.text());
    let job = queued.header("narun-job-id").expect("a job id");
    // The browser's calls block: run them off the runtime.
    let shots2 = shots.clone();
    tokio::task::spawn_blocking(move || {
        let b = Browser::start(&shots2);
        b.goto(&url);
        b.wait_count("#login-view:not([hidden])", WAIT, 1);
        b.screenshot("login");
        b.type_into("#token", ADMIN);
        b.click("#login-button");
        b.wait_text("#who", WAIT, |t| t.contains("admin"));

        b.goto(&format!("{url}#/nodes"));
        b.wait_text(&format!("tr[data-node=\"{NODE}\"]"), WAIT, |t| {
            t.contains("online")
        });
        b.screenshot("nodes");

        b.goto(&format!("{url}#/apps"));
        b.wait_text("tr[data-app=\"ticker\"]", WAIT, |t| t.contains("1 / 1"));
        b.screenshot("apps");

        b.goto(&format!("{url}#/apps/ticker"));
        // A fresh line: one published after the page had shown its first lines.
        let first = b.wait_text("#log", WAIT, |t| !numbers(t).is_empty());
        let seen = numbers(&first).into_iter().max().unwrap();
        b.wait_text("#log", WAIT, |t| {
            numbers(t).into_iter().max().unwrap_or(0) > seen
        });
        let page = b.execute("return document.body.innerText").to_string();
        assert!(
            !page.contains("hunter2"),
            "an env value is on the page: {page}"
        );

        b.type_into("#scale-replicas", "2");
        b.click("#scale-button");
        b.wait_text("#message", WAIT, |t| t.contains("scaled ticker: 1 → 2"));
        b.wait_count("#instances tbody tr", WAIT, 2);
        b.wait_text("#instances tbody", WAIT, |t| {
            t.matches("running").count() == 2
        });
        // The sparklines have samples (one per second here).
        b.wait_count(
            &format!("div.sparks[data-node=\"{NODE}\"] svg.mem polyline"),
            WAIT,
            1,
        );
        b.screenshot("app-scaled");

        // The read-only token sees everything and may do nothing.
        b.click("#logout");
        b.wait_count("#login-view:not([hidden])", WAIT, 1);
        b.type_into("#token", READ);
        b.click("#login-button");
        b.wait_text("#who", WAIT, |t| t.contains("read-only"));
        b.goto(&format!("{url}#/apps/ticker"));
        b.wait_count("#instances tbody tr", WAIT, 2);
        b.type_into("#scale-replicas", "3");
        b.click("#scale-button");
        b.wait_text("#message", WAIT, |t| t.contains("scale refused: 403"));
        b.screenshot("read-only-refused");
        b.goto(&format!("{url}#/services"));
        b.wait_count("#services", WAIT, 1);
        b.goto(&format!("{url}#/jobs"));
        b.wait_text(&format!("tr[data-job=\"{job}\"]"), WAIT, |t| {
            t.contains("failed") && t.contains("1 / 1")
        });
        b.screenshot("jobs");
        b.goto(&format!("{url}#/nodes"));
        b.wait_text(&format!("tr[data-node=\"{NODE}\"] td.mem"), WAIT, |t| {
            t.contains(" free of ")
        });
        b.screenshot("nodes-read-only");
    })
    .await
    .expect("browser steps");

    // Nothing was written by the refused scale.
    let out = narun_test_support::narunctl(&server.url(), &["apps", "ls"]).await;
    let ls = text(&out.stdout);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("ticker") && l.contains(" 2 ")),
        "{ls}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_refuses_what_docs_security_promises() {
    let server = NatsServer::start();
    let (_narund, port) = start(&server);
    deploy_ticker(&server, "web").await;
    let admin = format!("Bearer {ADMIN}");
    let read = format!("Bearer {READ}");
    let json = ("Content-Type", "application/json");

    // The page itself (gzip): CSP without inline script, and no data in it.
    let page = http(port, "GET", "/_narun/", &[("Accept-Encoding", "gzip")], "").await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.head
            .contains("content-security-policy: default-src 'self'; script-src 'self'"),
        "{}",
        page.head
    );
    assert!(
        page.head.contains("content-encoding: gzip"),
        "{}",
        page.head
    );
    let html = gunzip(&page.body);
    assert!(html.contains("<script src="), "{html}");
    assert!(
        !html.contains("<script>"),
        "inline script in the page: {html}"
    );
    assert!(!html.contains("web"), "data in the page: {html}");
    // A client that refuses gzip is told so (406), not sent bytes it cannot read.
    let refused = http(
        port,
        "GET",
        "/_narun/app.js",
        &[("Accept-Encoding", "identity")],
        "",
    )
    .await;
    assert_eq!(refused.status, 406, "{}", refused.text());
    assert!(refused.text().contains("gzip"), "{}", refused.text());

    // No token, a wrong token: nothing (401), also for the event stream.
    for auth in [None, Some("Bearer wrong"), Some("Basic b3BzOm9wcw==")] {
        for path in [
            "/_narun/api/apps",
            "/_narun/api/nodes",
            "/_narun/api/apps/web/events",
        ] {
            let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
            let r = http(port, "GET", path, &h, "").await;
            assert_eq!(r.status, 401, "{path} {auth:?}: {}", r.text());
            assert!(!r.text().contains("web"), "{path}: {}", r.text());
        }
    }
    // The read-only token views, but every action is 403 and writes nothing.
    let r = http(
        port,
        "GET",
        "/_narun/api/apps/web",
        &[("Authorization", &read)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !r.text().contains("hunter2"),
        "an env value was sent: {}",
        r.text()
    );
    assert!(r.text().contains("DB_PASSWORD"), "{}", r.text());
    // The nodes view: each heartbeat carries the node's load, memory and disk.
    let r = http(
        port,
        "GET",
        "/_narun/api/nodes",
        &[("Authorization", &read)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let node = v["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["node_id"] == NODE))
        .unwrap_or_else(|| panic!("no heartbeat of {NODE}: {v}"));
    for load in ["load1", "load5", "load15"] {
        assert!(
            node[load].as_f64().is_some_and(|l| l >= 0.0),
            "{load}: {node}"
        );
    }
    let field = |k: &str| {
        node[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} is not a byte count: {node}"))
    };
    assert!(
        field("mem_total_bytes") >= field("mem_available_bytes"),
        "{node}"
    );
    assert!(field("mem_total_bytes") > 0, "{node}");
    assert!(
        field("disk_total_bytes") >= field("disk_free_bytes"),
        "{node}"
    );
    assert!(field("disk_total_bytes") > 0, "{node}");
    // The jobs view: the read-only token sees the async jobs (none yet, then the one
    // queued here) with state and attempts, and never the request's query, body or headers.
    let jobs = |auth: String| async move {
        let r = http(
            port,
            "GET",
            "/_narun/api/jobs",
            &[("Authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()
    };
    let v = jobs(read.clone()).await;
    assert_eq!(v["jobs"], serde_json::json!([]), "{v}");
    assert_eq!(v["shown"], 100, "{v}");
    let queued = http(
        port,
        "POST",
        "/jobq/report?token=query-s3cret",
        &[
            ("Content-Type", "text/plain"),
            ("X-Api-Key", "header-s3cret"),
        ],
        "body-s3cret",
    )
    .await;
    assert_eq!(queued.status, 202, "{}", queued.text());
    let id = queued.header("narun-job-id").expect("a job id");
    let job = narun_test_support::wait_for("the job failed in the jobs view", WAIT, || {
        let (jobs, read, id) = (&jobs, read.clone(), id.clone());
        async move {
            let v = jobs(read).await;
            let s = v.to_string();
            assert!(!s.contains("s3cret"), "a request detail was sent: {s}");
            let j = v["jobs"]
                .as_array()?
                .iter()
                .find(|j| j["id"] == id.as_str())?;
            (j["state"] == "failed").then(|| j.clone())
        }
    })
    .await;
    assert_eq!(job["service"], "nobody", "{job}");
    assert_eq!(job["route"], "/jobq/", "{job}");
    assert_eq!(
        (job["attempts"].as_u64(), job["max_attempts"].as_u64()),
        (Some(1), Some(1)),
        "{job}"
    );
    assert!(
        job["created"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{job}"
    );
    let r = http(port, "GET", "/_narun/api/jobs", &[], "").await;
    assert_eq!(r.status, 401, "jobs without a token: {}", r.text());
    for verb in ["restart", "scale", "rollback", "delete"] {
        let r = http(
            port,
            "POST",
            &format!("/_narun/api/apps/web/{verb}"),
            &[("Authorization", &read), json],
            r#"{"replicas": 0, "confirm": "web"}"#,
        )
        .await;
        assert_eq!(r.status, 403, "{verb}: {}", r.text());
    }
    // CSRF: the admin token from another origin, or without a JSON content type: refused.
    let scale = r#"{"replicas": 0}"#;
    let cross = http(
        port,
        "POST",
        "/_narun/api/apps/web/scale",
        &[
            ("Authorization", &admin),
            json,
            ("Origin", "http://evil.example"),
        ],
        scale,
    )
    .await;
    assert_eq!(cross.status, 403, "{}", cross.text());
    let form = http(
        port,
        "POST",
        "/_narun/api/apps/web/scale",
        &[("Authorization", &admin), ("Content-Type", "text/plain")],
        scale,
    )
    .await;
    assert_eq!(form.status, 415, "{}", form.text());
    // Hostile names never become subject wildcards or KV keys.
    for bad in ["*", ">", "a.b", "%2A"] {
        let r = http(
            port,
            "GET",
            &format!("/_narun/api/apps/{bad}/events"),
            &[("Authorization", &admin)],
            "",
        )
        .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    // A body over 64 KiB is refused before any handler sees it.
    let big = format!(
        "{{\"replicas\": 0, \"pad\": \"{}\"}}",
        "x".repeat(70 * 1024)
    );
    let r = http(
        port,
        "POST",
        "/_narun/api/apps/web/scale",
        &[("Authorization", &admin), json],
        &big,
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    // Delete needs the name typed as confirmation.
    let r = http(
        port,
        "POST",
        "/_narun/api/apps/web/delete",
        &[("Authorization", &admin), json],
        r#"{"confirm": "yes"}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // Nothing above changed the app: still one replica in app-configs.
    let r = http(
        port,
        "GET",
        "/_narun/api/apps/web",
        &[("Authorization", &admin)],
        "",
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["app"]["spec"]["nodes"][0]["replicas"], 1, "{v}");
    // And the admin token acts (same-origin, JSON): confirmed delete.
    let r = http(
        port,
        "POST",
        "/_narun/api/apps/web/delete",
        &[
            ("Authorization", &admin),
            json,
            ("Origin", &format!("http://127.0.0.1:{port}")),
        ],
        r#"{"confirm": "web"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http(
        port,
        "GET",
        "/_narun/api/apps/web",
        &[("Authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
}

/// The sparklines of an app on another node (one without the gateway or the dashboard)
/// come from that node's heartbeats: the API lists the node's series with its samples,
/// and the browser draws it. A job app's scheduled runs on that node are in the jobs
/// view.
#[tokio::test(flavor = "multi_thread")]
async fn other_nodes_sparklines_and_scheduled_runs() {
    const OTHER: &str = "dash-node-b";
    let server = NatsServer::start();
    let (_narund, port) = start(&server);
    // The same binary (one build per feature set in a test run), its gateway left off.
    let _other = Narund::builder(&server, OTHER)
        .features(&["gateway"])
        .start();
    deploy_ticker_on(&server, "remote", OTHER).await;
    // A job app on the other node, run every 2 s (exit 0).
    upload_script(
        &server,
        "nightly",
        "v1",
        "#!/bin/sh
echo ran
exit 0
",
    )
    .await;
    narun_test_support::buckets(&server)
        .await
        .put_spec(
            "nightly",
            &serde_json::json!({
                "name": "nightly", "tag": "v1", "mode": "exec", "runMode": "job",
                "schedule": "*/2 * * * * *", "maxAttempts": 1,
                "nodes": [{"name": OTHER, "replicas": 1}],
            }),
        )
        .await;

    // Two heartbeats of the other node with the app's memory: one at least 15 s after
    // the deploy's (narund heart-beats every 15 s and on every instance change).
    let samples = api_until(
        port,
        "apps/remote/metrics",
        "two samples of the other node",
        |v| {
            assert!(
                v["series"].get(NODE).is_none(),
                "the app does not run on the dashboard's node: {v}"
            );
            let s = v["series"][OTHER].as_array().cloned().unwrap_or_default();
            let with_memory = s
                .iter()
                .filter(|x| x["mem_bytes"].as_u64().unwrap_or(0) > 0);
            (with_memory.count() >= 2).then_some(s)
        },
    )
    .await;
    assert!(
        samples
            .windows(2)
            .all(|w| w[0]["t"].as_u64() <= w[1]["t"].as_u64()),
        "{samples:?}"
    );
    assert!(
        samples.iter().any(|x| x["cpu_pct"].as_f64().is_some()),
        "CPU from two heartbeats' cpu_usec: {samples:?}"
    );

    // The runs in the API: no error text, the exit code.
    let runs = api_until(port, "jobs", "a succeeded run of nightly", |v| {
        assert!(v.get("runs_error").is_none(), "{v}");
        let runs = v["runs"].as_array().cloned().unwrap_or_default();
        runs.iter()
            .any(|x| x["app"] == "nightly" && x["outcome"] == "succeeded")
            .then_some(runs)
    })
    .await;
    let done = runs
        .iter()
        .find(|x| x["app"] == "nightly" && x["outcome"] == "succeeded")
        .unwrap();
    assert_eq!(done["node"], OTHER, "{done}");
    assert_eq!(done["exit_code"], 0, "{done}");
    assert_eq!(done["trigger"], "schedule", "{done}");

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let url = format!("http://127.0.0.1:{port}/_narun/");
    tokio::task::spawn_blocking(move || {
        let b = Browser::start(&shots);
        b.goto(&url);
        b.wait_count("#login-view:not([hidden])", WAIT, 1);
        b.type_into("#token", READ);
        b.click("#login-button");
        b.wait_text("#who", WAIT, |t| t.contains("read-only"));
        b.goto(&format!("{url}#/apps/remote"));
        b.wait_count(
            &format!("div.sparks[data-node=\"{OTHER}\"] svg.mem polyline"),
            WAIT,
            1,
        );
        b.wait_text(&format!("div.sparks[data-node=\"{OTHER}\"]"), WAIT, |t| {
            t.contains(&format!("Memory on {OTHER}: ")) && t.contains("iB")
        });
        b.screenshot("other-node-sparklines");
        b.goto(&format!("{url}#/jobs"));
        b.wait_text(
            &format!("#runs tr[data-run^=\"nightly/\"][data-node=\"{OTHER}\"]"),
            WAIT,
            |t| t.contains("succeeded") && t.contains("schedule"),
        );
        b.screenshot("scheduled-runs");
    })
    .await
    .expect("browser steps");
}

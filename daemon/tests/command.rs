//! Command units (`mode = "command"`, docs/jobs.md "Command units") with a real
//! nats-server, the real narund and narunctl binaries and real processes: narund registers
//! the app's endpoint and runs a shell script once per request, as the spec's user in a
//! child cgroup of the instance's cgroup.
//!
//! Covered: a request through `narunctl request` (BHTTP) and a raw request; the header
//! block; a non-zero exit (502, stderr in the app's log); the time limit (504, nothing left
//! in the cgroup); `maxConcurrent` (503 when busy); hostile header names and values; the
//! user and cgroup of a run as seen from inside it; through narund's gateway (feature
//! `gateway`).

use bytes::Bytes;
use futures_util::StreamExt;
use narun_test_support::{Narund, NatsServer, T, buckets, narunctl, text, wait_for};
use narun_wire::events::LogLine;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const NODE: &str = "cmd-node";

/// The command of most tests: what it does depends on the path.
const SCRIPT: &str = r#"#!/bin/sh
case "$NARUN_REQUEST_PATH" in
/whoami)
  printf 'Status: 200\nContent-Type: text/plain\n\n'
  echo "uid=$(id -u)"
  echo "cgroup=$(grep '^0::' /proc/self/cgroup)"
  echo "method=$NARUN_REQUEST_METHOD query=$NARUN_REQUEST_QUERY key=$NARUN_REQUEST_HEADER_X_API_KEY"
  echo "body=$(cat)"
  ;;
/created)
  printf 'Status: 201 Created\r\nContent-Type: application/json\r\nX-Made-By: cmd\r\n\r\n'
  printf '{"made":true}'
  ;;
/env)
  printf 'Content-Type: text/plain\n\n'
  echo "PATH=$PATH"
  echo "LD_PRELOAD=${LD_PRELOAD-unset}"
  env | grep '^NARUN_REQUEST_' | sort
  ;;
/fail)
  echo "something broke for $NARUN_REQUEST_ID" >&2
  exit 3
  ;;
/slow)
  sleep 1000 &
  echo $! > slow.pids
  echo $$ >> slow.pids
  wait
  ;;
/hold)
  touch held
  sleep 4
  printf '\nheld'
  ;;
/big)
  printf '\n'
  head -c 200000 /dev/zero
  ;;
/noblock)
  echo 'no header block here'
  ;;
esac
"#;

/// A BHTTP request to `subject` with narund's client protocol (what `narunctl request`
/// and the gateway send); the decoded answer.
async fn call(
    client: &async_nats::Client,
    subject: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> http::Response<Bytes> {
    let mut b = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, http::HeaderValue::from_bytes(v).unwrap());
    }
    let (parts, ()) = b.body(()).unwrap().into_parts();
    let payload = narun_wire::bhttp::encode_request(&parts, body);
    let reply = tokio::time::timeout(T, client.request(subject.to_string(), payload.into()))
        .await
        .expect("an answer in time")
        .expect("an answer");
    narun_wire::bhttp::decode_response(&reply.payload).expect("a BHTTP answer")
}

fn body(r: &http::Response<Bytes>) -> String {
    String::from_utf8_lossy(r.body()).into_owned()
}

/// Deploy `script` as command unit `app` with `unit` as its `commandUnit` block and
/// `extra` merged into the spec; wait until its endpoint answers.
async fn deploy(
    server: &NatsServer,
    client: &async_nats::Client,
    app: &str,
    unit: serde_json::Value,
    extra: serde_json::Value,
) {
    let b = buckets(server).await;
    b.upload(app, "v1", SCRIPT).await;
    let mut spec = json!({"name": app, "tag": "v1", "mode": "command",
        "commandUnit": unit, "nodes": [{"name": NODE, "replicas": 1}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    b.put_spec(app, &spec).await;
    wait_for("the command unit's endpoint", T, || async {
        let payload = narun_wire::bhttp::encode_request(
            &http::Request::builder()
                .uri("/created")
                .body(())
                .unwrap()
                .into_parts()
                .0,
            b"",
        );
        let r = client.request(app.to_string(), payload.into()).await.ok()?;
        (narun_wire::bhttp::decode_response(&r.payload)
            .ok()?
            .status()
            == 201)
            .then_some(())
    })
    .await;
}

/// The instance cgroup of `app`'s first instance below narund's cgroup root.
fn instance_cgroup(narund: &Narund, app: &str) -> PathBuf {
    let prefix = format!("narun-{app}-0-");
    std::fs::read_dir(narund.cgroup_root())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .unwrap_or_else(|| {
            panic!(
                "no cgroup {prefix}* below {}",
                narund.cgroup_root().display()
            )
        })
        .path()
}

fn populated(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.events"))
        .unwrap()
        .contains("populated 1")
}

fn work_dir(narund: &Narund, app: &str) -> PathBuf {
    narund.data_dir().join(format!("instances/{app}-0/work"))
}

fn nobody_uid() -> String {
    let out = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_unit_answers_as_its_user_in_a_cgroup_of_its_own_per_run() {
    let server = NatsServer::start();
    let narund = Narund::start(&server, NODE, "");
    let client = server.connect().await;
    deploy(
        &server,
        &client,
        "cmd",
        json!({"outputHeaders": true}),
        json!({"user": "nobody"}),
    )
    .await;

    // Through narunctl request (BHTTP), with a query, a header and a body on stdin.
    let out = narunctl(
        &server.url(),
        &[
            "request",
            "cmd",
            "POST",
            "/whoami?x=1",
            "-d",
            "hello there",
            "-H",
            "X-Api-Key: k-123",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("HTTP/1.1 200 OK"), "{stdout}");
    assert!(stdout.contains("content-type: text/plain"), "{stdout}");
    assert!(
        stdout.contains("method=POST query=x=1 key=k-123"),
        "{stdout}"
    );
    assert!(stdout.contains("body=hello there"), "{stdout}");
    // Its user, seen from inside the run.
    assert!(
        stdout.contains(&format!("uid={}\n", nobody_uid())),
        "{stdout}"
    );
    // Its cgroup: a child of the instance cgroup, below narund's root.
    let cgroup = instance_cgroup(&narund, "cmd");
    let rel = cgroup
        .strip_prefix(narun_test_support::cgroup2_mount())
        .unwrap()
        .display()
        .to_string();
    assert!(
        stdout.contains(&format!("cgroup=0::/{rel}/narun-run-")),
        "{stdout} (instance cgroup {rel})"
    );
    // The run's cgroup is gone again, and nothing runs in the instance's.
    wait_for("the run's cgroup to be removed", T, || async {
        let runs = std::fs::read_dir(&cgroup)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("narun-run-"))
            .count();
        (runs == 0 && !populated(&cgroup)).then_some(())
    })
    .await;

    // The header block: status and headers.
    let r = call(&client, "cmd", "GET", "/created", &[], b"").await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["x-made-by"], "cmd");
    assert_eq!(body(&r), r#"{"made":true}"#);
    // A block that breaks the rules: 502 naming what is wrong.
    let r = call(&client, "cmd", "GET", "/noblock", &[], b"").await;
    assert_eq!(r.status(), 502);
    assert!(body(&r).contains("header line 1: no `:`"), "{}", body(&r));

    // A raw request (the gateway's raw routes): body in, body and status header out.
    let mut h = async_nats::HeaderMap::new();
    h.insert("X-Original-Method", "GET");
    h.insert("X-Original-Path", "/created");
    h.insert("X-Original-Query", "");
    let reply = tokio::time::timeout(
        T,
        client.request_with_headers("cmd".to_string(), h, Bytes::new()),
    )
    .await
    .unwrap()
    .unwrap();
    let rh = reply.headers.unwrap();
    assert_eq!(rh.get("X-Response-Status-Code").unwrap().as_str(), "201");
    assert_eq!(&reply.payload[..], br#"{"made":true}"#);

    // The unit is running, with no pid (its runs come and go).
    let states = narunctl(&server.url(), &["apps", "info", "cmd", "--json"]).await;
    let info = text(&states.stdout);
    assert!(info.contains("running"), "{info}{}", text(&states.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_502_and_504_with_stderr_in_the_log_and_nothing_left_behind() {
    let server = NatsServer::start();
    let narund = Narund::start(&server, NODE, "");
    let client = server.connect().await;
    let mut logs = client.subscribe(format!("logs.fail.{NODE}")).await.unwrap();
    deploy(
        &server,
        &client,
        "fail",
        json!({"outputHeaders": true, "timeoutSec": 1, "maxOutputBytes": 100000}),
        json!({}),
    )
    .await;

    // A non-zero exit: 502, and its stderr on the app's log subject.
    let r = call(
        &client,
        "fail",
        "GET",
        "/fail",
        &[("x-request-id", b"req-42")],
        b"",
    )
    .await;
    assert_eq!(r.status(), 502);
    assert!(body(&r).contains("exited with status 3"), "{}", body(&r));
    let line = tokio::time::timeout(T, async {
        loop {
            let m = logs.next().await.unwrap();
            let l: LogLine = serde_json::from_slice(&m.payload).unwrap();
            if l.message.contains("something broke") {
                return l;
            }
        }
    })
    .await
    .expect("the command's stderr in the app's log");
    assert_eq!(line.message, "something broke for req-42");
    assert_eq!(line.stream, "stderr");
    assert_eq!(line.instance_id, "fail-0");

    // Past timeoutSec: 504, every process of the run killed, the cgroup empty.
    let started = tokio::time::Instant::now();
    let r = call(&client, "fail", "GET", "/slow", &[], b"").await;
    assert_eq!(r.status(), 504, "{}", body(&r));
    assert!(body(&r).contains("did not finish within"), "{}", body(&r));
    assert!(started.elapsed() < Duration::from_secs(10));
    let pids: Vec<i32> = std::fs::read_to_string(work_dir(&narund, "fail").join("slow.pids"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(
            !narun_test_support::alive(pid),
            "pid {pid} of the run is still alive"
        );
    }
    assert!(!populated(&instance_cgroup(&narund, "fail")));

    // Past maxOutputBytes: 502 naming the setting.
    let r = call(&client, "fail", "GET", "/big", &[], b"").await;
    assert_eq!(r.status(), 502);
    assert!(
        body(&r).contains("commandUnit.maxOutputBytes"),
        "{}",
        body(&r)
    );

    // The failures are counted in the endpoint's stats, not as restarts.
    let stats = narunctl(&server.url(), &["svc", "stats", "fail", "--json"]).await;
    let stats = text(&stats.stdout);
    assert!(stats.contains("\"command_failed\": 2"), "{stats}");
    assert!(stats.contains("\"command_timeout\": 1"), "{stats}");
    let info = narunctl(&server.url(), &["apps", "info", "fail", "--json"]).await;
    let info = text(&info.stdout);
    assert!(info.contains("running"), "{info}");
    assert!(!info.contains("\"restarts\": 1"), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_runs_then_busy_503() {
    let server = NatsServer::start();
    let narund = Narund::start(&server, NODE, "");
    let client = server.connect().await;
    deploy(
        &server,
        &client,
        "one",
        json!({"maxConcurrent": 1, "maxQueued": 1, "queueTimeoutSec": 1,
            "timeoutSec": 20, "outputHeaders": true}),
        json!({}),
    )
    .await;
    let held = work_dir(&narund, "one").join("held");
    let first = {
        let client = client.clone();
        tokio::spawn(async move { call(&client, "one", "GET", "/hold", &[], b"").await })
    };
    wait_for("the first run to start", T, || async {
        held.exists().then_some(())
    })
    .await;
    // The only run is busy (for 4 s): the second request may wait, at most
    // queueTimeoutSec; the third may not even wait (maxQueued = 1): 503 at once. The
    // same connection keeps their order.
    let started = tokio::time::Instant::now();
    let (second, third) = tokio::join!(call(&client, "one", "GET", "/created", &[], b""), async {
        let r = call(&client, "one", "GET", "/created", &[], b"").await;
        (r, started.elapsed())
    },);
    let (third, third_after) = third;
    assert_eq!(third.status(), 503, "{}", body(&third));
    assert!(
        body(&third).contains("wait already (commandUnit.maxConcurrent, maxQueued)"),
        "{}",
        body(&third)
    );
    assert!(third_after < Duration::from_secs(1), "{third_after:?}");
    assert_eq!(second.status(), 503, "{}", body(&second));
    assert!(
        body(&second).contains("no run became free within 1000 ms"),
        "{}",
        body(&second)
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    let r = first.await.unwrap();
    assert_eq!((r.status().as_u16(), body(&r).as_str()), (200, "held"));
    // Free again.
    let r = call(&client, "one", "GET", "/created", &[], b"").await;
    assert_eq!(r.status(), 201);

    // Deleting the app stops the unit: no responders, its instance cgroup removed.
    let cgroup = instance_cgroup(&narund, "one");
    buckets(&server).await.configs.delete("one").await.unwrap();
    wait_for("the unit to stop answering", T, || async {
        match client.request("one".to_string(), Bytes::new()).await {
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Some(()),
            _ => None,
        }
    })
    .await;
    wait_for("the instance cgroup to be removed", T, || async {
        (!cgroup.exists()).then_some(())
    })
    .await;
}

/// The security promise of docs/security.md: request headers set only their own
/// `NARUN_REQUEST_HEADER_*` variable, whatever their names and values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_cannot_set_other_variables() {
    let server = NatsServer::start();
    let _narund = Narund::start(&server, NODE, "");
    let client = server.connect().await;
    deploy(
        &server,
        &client,
        "env",
        json!({"outputHeaders": true}),
        // A spec variable in the request namespace is not passed (no shadowing).
        json!({"env": [{"name": "NARUN_REQUEST_METHOD", "value": "spoofed"}]}),
    )
    .await;
    let long = vec![b'a'; 9000];
    let r = call(
        &client,
        "env",
        "GET",
        "/env",
        &[
            ("x_api_key", b"underscore"),
            ("ld.preload", b"/tmp/evil.so"),
            ("path", b"/tmp/evil"),
            ("x-bin", b"\xff\xfe"),
            ("x-long", &long),
            ("x-semi", b"a; LD_PRELOAD=/tmp/evil.so"),
            ("x-ok", b"fine"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status(), 200, "{}", body(&r));
    let env = body(&r);
    assert!(env.contains("PATH=/usr/local/sbin:"), "{env}");
    assert!(env.contains("LD_PRELOAD=unset"), "{env}");
    assert!(env.contains("NARUN_REQUEST_METHOD=GET\n"), "{env}");
    assert!(!env.contains("spoofed"), "{env}");
    assert!(env.contains("NARUN_REQUEST_HEADER_X_OK=fine\n"), "{env}");
    assert!(
        env.contains("NARUN_REQUEST_HEADER_PATH=/tmp/evil\n"),
        "{env}"
    );
    assert!(
        env.contains("NARUN_REQUEST_HEADER_X_SEMI=a; LD_PRELOAD=/tmp/evil.so\n"),
        "{env}"
    );
    // x_api_key, ld.preload, the non-UTF-8 and the too long value.
    assert!(env.contains("NARUN_REQUEST_DROPPED_HEADERS=4\n"), "{env}");
    assert!(
        !env.contains("underscore") && !env.contains("X_API_KEY"),
        "{env}"
    );
    // Every request variable is one of the documented ones.
    for line in env.lines().filter(|l| l.starts_with("NARUN_REQUEST_")) {
        let name = line.split('=').next().unwrap();
        assert!(
            name.starts_with("NARUN_REQUEST_HEADER_")
                || [
                    "NARUN_REQUEST_PROTOCOL",
                    "NARUN_REQUEST_METHOD",
                    "NARUN_REQUEST_PATH",
                    "NARUN_REQUEST_QUERY",
                    "NARUN_REQUEST_HOST",
                    "NARUN_REQUEST_CONTENT_LENGTH",
                    "NARUN_REQUEST_TIMEOUT_MS",
                    "NARUN_REQUEST_DROPPED_HEADERS",
                ]
                .contains(&name),
            "{line}"
        );
    }
    // A raw request whose path breaks the value rule: 400 naming it, nothing runs.
    let mut h = async_nats::HeaderMap::new();
    h.insert("X-Original-Method", "GET");
    h.insert("X-Original-Path", "/env\u{1b}[2J");
    let reply = tokio::time::timeout(
        T,
        client.request_with_headers("env".to_string(), h, Bytes::new()),
    )
    .await
    .unwrap()
    .unwrap();
    let rh = reply.headers.unwrap();
    assert_eq!(rh.get("Nats-Service-Error-Code").unwrap().as_str(), "400");
    assert!(
        rh.get("Nats-Service-Error")
            .unwrap()
            .as_str()
            .contains("path"),
        "{rh:?}"
    );
}

/// Through narund's own gateway: an HTTP route to the command unit.
#[cfg(feature = "gateway")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_unit_behind_the_gateway() {
    use narun_test_support::{free_ports, http1};
    use tokio::io::AsyncWriteExt;
    let server = NatsServer::start();
    let [http_port, metrics_port] = free_ports();
    let _narund = Narund::builder(&server, NODE)
        .features(&["gateway"])
        .config(&format!(
            "[gateway]\nenabled = true\n\
             http_addr = \"127.0.0.1:{http_port}\"\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n\
             [[gateway.routes]]\npath = \"/\"\nservice = \"gw\"\n"
        ))
        .start();
    let client = server.connect().await;
    deploy(
        &server,
        &client,
        "gw",
        json!({"outputHeaders": true}),
        json!({}),
    )
    .await;
    let get = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
            .await
            .ok()?;
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: example.test\r\nX-Api-Key: gw-key\r\n\
                 Content-Length: 4\r\nConnection: close\r\n\r\nping"
            )
            .as_bytes(),
        )
        .await
        .ok()?;
        let r = http1::read_response(&mut s).await;
        Some(format!("{}{}", r.head, r.text()))
    };
    let r = wait_for("the gateway to reach the command unit", T, || async {
        get("/whoami?g=1").await.filter(|r| r.contains("uid="))
    })
    .await;
    // (The harness gives the head lower-cased.)
    assert!(r.starts_with("http/1.1 200"), "{r}");
    assert!(r.contains("method=POST query=g=1 key=gw-key"), "{r}");
    assert!(r.contains("body=ping"), "{r}");
    let r = get("/created").await.unwrap();
    assert!(r.starts_with("http/1.1 201"), "{r}");
    assert!(r.contains("x-made-by: cmd"), "{r}");
    let r = get("/fail").await.unwrap();
    assert!(r.starts_with("http/1.1 502"), "{r}");
}

/// The fenced block after the first line of the "Command units" section of
/// `docs/jobs.md` that starts with `fence`.
fn docs_block(fence: &str) -> String {
    let all =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/jobs.md")).unwrap();
    let doc = &all[all
        .find("## Command units")
        .expect("a Command units section in docs/jobs.md")..];
    let start = doc
        .find(&format!("{fence}\n"))
        .unwrap_or_else(|| panic!("no {fence} block in docs/jobs.md"))
        + fence.len()
        + 1;
    let len = doc[start..].find("```\n").unwrap();
    doc[start..start + len].to_string()
}

/// docs/jobs.md, "Command units": the `tr` spec deployed with `narunctl deploy` answers as
/// shown, and the script answers as described.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_of_docs_jobs_md_runs() {
    let server = NatsServer::start();
    let _narund = Narund::start(&server, NODE, "");
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("upper.toml");
    std::fs::write(
        &spec,
        docs_block("```toml").replace("\"gw-1\"", &format!("\"{NODE}\"")),
    )
    .unwrap();
    let console = docs_block("```console");
    let mut commands = console.lines().filter(|l| l.starts_with("$ "));
    let deploy = commands.next().unwrap();
    assert_eq!(deploy, "$ narunctl deploy -f upper.toml /usr/bin/tr --wait");
    let out = narunctl(
        &server.url(),
        &[
            "deploy",
            "-f",
            spec.to_str().unwrap(),
            "/usr/bin/tr",
            "--wait=60s",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let request = commands.next().unwrap();
    assert_eq!(
        request,
        "$ narunctl request upper POST /shout -d 'hello, command units'"
    );
    let out = narunctl(
        &server.url(),
        &[
            "request",
            "upper",
            "POST",
            "/shout",
            "-d",
            "hello, command units",
        ],
    )
    .await;
    let expected: String = console
        .lines()
        .skip_while(|l| !l.starts_with("$ narunctl request"))
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(text(&out.stdout) + "\n", expected, "{}", text(&out.stderr));

    // The script, as described below the example.
    let client = server.connect().await;
    let b = buckets(&server).await;
    b.upload("greet", "v1", docs_block("```sh")).await;
    b.put_spec(
        "greet",
        &json!({"name": "greet", "tag": "v1", "mode": "command",
            "commandUnit": {"outputHeaders": true}, "nodes": [{"name": NODE, "replicas": 1}]}),
    )
    .await;
    let r = wait_for("the greet unit", T, || async {
        let out = narunctl(
            &server.url(),
            &[
                "request",
                "greet",
                "POST",
                "/hi",
                "-d",
                "abc",
                "-H",
                "X-User: ann",
            ],
        )
        .await;
        out.status.success().then(|| text(&out.stdout))
    })
    .await;
    let _ = &client;
    assert_eq!(
        r,
        "HTTP/1.1 200 OK\ncontent-type: text/plain\n\nhello ann, you sent 3 bytes to /hi\n"
    );
}

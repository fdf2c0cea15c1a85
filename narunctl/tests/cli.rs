//! End-to-end tests: the real `narunctl` binary against a real nats-server.

use async_nats::jetstream;
use futures_util::StreamExt;
use narun_test_support::{NatsServer, T, apps, narunctl, narunctl_bin, text};
use narun_wire::events::NodeState;
use narun_wire::micro::{EndpointConfig, ServiceConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A fake ELF binary with this OS ABI and machine, of more than one 128 KiB chunk.
fn fake_elf(dir: &Path, name: &str, osabi: u8, machine: u16) -> PathBuf {
    apps::fake_elf(dir, name, osabi, machine, 300_000)
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

const SPEC: &str = r#"
name = "hello"
tag = "v1"
[[nodes]]
name = "node-1"
replicas = 2
"#;

#[tokio::test]
async fn deploy_uploads_binaries_and_writes_the_spec() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "hello.toml", SPEC);
    let amd64 = dir.path().join("hello");
    std::fs::copy("/bin/true", &amd64).unwrap();
    let arm64 = fake_elf(dir.path(), "hello-arm64", 0, 183);

    let out = narunctl(
        &server.url(),
        &[
            "deploy",
            "--allow-offline",
            "-f",
            spec.to_str().unwrap(),
            amd64.to_str().unwrap(),
            arm64.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "deploy failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("hello-v1-linux-amd64"), "{stdout}");
    assert!(stdout.contains("SHA-256="), "digest printed: {stdout}");

    let client = server.connect().await;
    let js = jetstream::new(client);
    let store = js.get_object_store("app-binaries").await.unwrap();
    let info = store.info("hello-v1-linux-amd64").await.unwrap();
    assert_eq!(info.size as u64, std::fs::metadata(&amd64).unwrap().len());
    assert_eq!(info.metadata["narun-app-name"], "hello");
    assert_eq!(info.metadata["narun-goos"], "linux");
    assert_eq!(info.metadata["narun-goarch"], "amd64");
    assert_eq!(info.metadata["narun-version-tag"], "v1");
    assert_eq!(info.metadata["narun-original-file"], "hello");
    assert_eq!(
        info.description.as_deref(),
        Some("Binary for hello (linux/amd64) tag v1")
    );
    let info = store.info("hello-v1-linux-arm64").await.unwrap();
    assert_eq!(info.size, 300_064);
    let mut obj = store.get("hello-v1-linux-arm64").await.unwrap();
    let mut data = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut obj, &mut data)
        .await
        .unwrap();
    assert_eq!(data, std::fs::read(&arm64).unwrap());

    let kv = js.get_key_value("app-configs").await.unwrap();
    let value = kv.get("hello").await.unwrap().expect("spec written");
    let stored = narun_spec::AppSpec::from_kv_entry("hello", &value).unwrap();
    assert_eq!(stored.tag, "v1");
    assert_eq!(stored.nodes[0].replicas, 2);

    // `apps ls` and `apps info` read it back.
    let out = narunctl(&server.url(), &["apps", "ls"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("node-1 x2"),
        "{}",
        text(&out.stdout)
    );
    let out = narunctl(&server.url(), &["apps", "info", "hello", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["spec"]["tag"], "v1");
    assert_eq!(v["revision"], 1);
    assert_eq!(v["nodes"][0]["status"], "offline/unknown");

    // Delete, then it is gone.
    let out = narunctl(&server.url(), &["apps", "delete", "hello", "-y"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = narunctl(&server.url(), &["apps", "info", "hello"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn flag_form_builds_a_valid_exec_spec() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_elf(dir.path(), "svc", 3, 40);
    let out = narunctl(
        &server.url(),
        &[
            "deploy",
            "--allow-offline",
            "--name",
            "svc",
            "--tag",
            "v2",
            "--label",
            "role=edge",
            "--replicas",
            "3",
            bin.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let js = jetstream::new(server.connect().await);
    js.get_object_store("app-binaries")
        .await
        .unwrap()
        .info("svc-v2-linux-arm")
        .await
        .unwrap();
    let kv = js.get_key_value("app-configs").await.unwrap();
    let spec =
        narun_spec::AppSpec::from_kv_entry("svc", &kv.get("svc").await.unwrap().unwrap()).unwrap();
    spec.supported_on_narund().unwrap();
    assert_eq!(spec.mode.as_str(), "exec");
    let labels = std::collections::BTreeMap::from([("role".to_string(), "edge".to_string())]);
    assert_eq!(spec.desired_replicas("any", &labels), 3);

    // --no-binary reuses the uploaded object; with another tag it is refused.
    let out = narunctl(
        &server.url(),
        &[
            "deploy",
            "--allow-offline",
            "--name",
            "svc",
            "--tag",
            "v2",
            "--no-binary",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = narunctl(
        &server.url(),
        &[
            "deploy",
            "--allow-offline",
            "--name",
            "svc",
            "--tag",
            "v3",
            "--no-binary",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("svc-v3-linux-<arch>"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn bad_binaries_and_invalid_specs_are_refused_before_upload() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "hello.toml", SPEC);
    let script = write(dir.path(), "run.sh", "#!/bin/sh\necho hi\n");
    let freebsd = fake_elf(dir.path(), "bsd", 9, 62);
    let good = fake_elf(dir.path(), "good", 0, 62);
    let bytes = |name: &str, b: Vec<u8>| {
        let p = dir.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let mut rel = apps::elf_header(0, 62);
    rel[16] = 1; // ET_REL
    let object = bytes("main.o", rel);
    let mut core = apps::elf_header(0, 62);
    core[16] = 4; // ET_CORE
    let core = bytes("core", core);
    let big = bytes("s390x", apps::elf_header_big_endian(22));
    let trick = bytes("trick", apps::elf_then_shell("touch /tmp/owned"));

    for (bad, msg) in [
        (&script, "not an ELF"),
        (&freebsd, "freebsd"),
        (
            &object,
            "ELF relocatable object (ET_REL, a .o file), not an executable",
        ),
        (&core, "ELF core dump (ET_CORE), not an executable"),
        (&big, "big-endian ELF"),
        (
            &trick,
            "ELF header is truncated (47 bytes, a 64-bit ELF header has 64)",
        ),
    ] {
        let out = narunctl(
            &server.url(),
            &[
                "deploy",
                "-f",
                spec.to_str().unwrap(),
                good.to_str().unwrap(),
                bad.to_str().unwrap(),
            ],
        )
        .await;
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(
            err.contains(msg) && err.contains(bad.to_str().unwrap()),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }

    let invalid = write(
        dir.path(),
        "bad.yaml",
        "name: hello\ntag: v1\nnodes:\n  - name: n1\n    replicas: 0\n",
    );
    let out = narunctl(
        &server.url(),
        &[
            "deploy",
            "-f",
            invalid.to_str().unwrap(),
            good.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nodes[0].replicas"),
        "{}",
        text(&out.stderr)
    );

    let out = narunctl(&server.url(), &["deploy", "-f", spec.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no binary given"),
        "{}",
        text(&out.stderr)
    );

    // Nothing reached the server: neither the object store nor the KV bucket exists.
    let js = jetstream::new(server.connect().await);
    assert!(js.get_object_store("app-binaries").await.is_err());
    assert!(js.get_key_value("app-configs").await.is_err());
}

#[tokio::test]
async fn compare_and_set_detects_conflicts_and_force_overrides() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_elf(dir.path(), "app", 0, 62);
    let b = bin.to_str().unwrap();
    let url = server.url();
    let deploy = |tag: &'static str, extra: &'static [&'static str]| {
        let url = url.clone();
        let b = b.to_string();
        async move {
            let mut args = vec!["deploy", "--allow-offline", "--name", "app", "--tag", tag];
            args.extend_from_slice(extra);
            args.push(&b);
            narunctl(&url, &args).await
        }
    };
    assert!(deploy("v1", &[]).await.status.success());
    let ok = deploy("v2", &["--expect-revision", "1"]).await;
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    // Someone else deployed v2 after we read revision 1: refused.
    let out = deploy("v3", &["--expect-revision", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("conflict") && err.contains("--force"), "{err}");
    assert!(err.contains("nothing was uploaded"), "{err}");
    let store = jetstream::new(server.connect().await)
        .get_object_store("app-binaries")
        .await
        .unwrap();
    assert!(
        store.info("app-v3-linux-amd64").await.is_err(),
        "no v3 upload after a conflict"
    );
    // "Must not exist yet" fails too.
    let out = deploy("v3", &["--expect-revision", "0"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("conflict"),
        "{}",
        text(&out.stderr)
    );

    let out = deploy("v3", &["--force"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kv = jetstream::new(server.connect().await)
        .get_key_value("app-configs")
        .await
        .unwrap();
    let entry = kv.entry("app").await.unwrap().unwrap();
    assert_eq!(entry.revision, 3);
    let spec = narun_spec::AppSpec::from_kv_bytes(&entry.value).unwrap();
    assert_eq!(spec.tag, "v3");
}

#[tokio::test]
async fn unreachable_nats_is_one_line_and_usage_errors_exit_2() {
    let port = narun_test_support::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let out = narunctl(&url, &["--timeout", "1s", "nodes", "ls"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: cannot reach NATS at"), "{err}");

    let out = narunctl(&url, &["apps", "frobnicate"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = narunctl(
        &url,
        &["deploy", "--label", "novalue", "--name", "x", "--tag", "y"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let out = narunctl(&url, &["--help"]).await;
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("Exit codes"));
}

#[tokio::test]
async fn nodes_ls_shows_heartbeats() {
    let server = NatsServer::start();
    let js = jetstream::new(server.connect().await);
    // The KV bucket's backing stream, made directly: `create_key_value` cannot
    // parse the account info of the Debian nats-server 2.9.
    js.create_stream(jetstream::stream::Config {
        name: "KV_node-runner-states".into(),
        subjects: vec!["$KV.node-runner-states.>".into()],
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(45),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    let kv = js.get_key_value("node-runner-states").await.unwrap();
    let state = NodeState {
        node_id: "node-1".into(),
        last_seen: narun_wire::events::now_rfc3339(),
        start_time: narun_wire::events::now_rfc3339(),
        version: "0.1.0".into(),
        status: "running".into(),
        os: "linux".into(),
        arch: "arm64".into(),
        labels: [("role".to_string(), "edge".to_string())].into(),
        managed_instances: vec!["hello-0".into()],
        ..Default::default()
    };
    kv.put("node-1", serde_json::to_vec(&state).unwrap().into())
        .await
        .unwrap();
    // A Go node that stopped heartbeating a minute ago.
    let old = NodeState {
        node_id: "node-0".into(),
        last_seen: "2020-01-01T00:00:00Z".into(),
        status: "running".into(),
        ..Default::default()
    };
    kv.put("node-0", serde_json::to_vec(&old).unwrap().into())
        .await
        .unwrap();

    let out = narunctl(&server.url(), &["nodes", "ls", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let nodes: Vec<NodeState> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[1], state);

    let out = narunctl(&server.url(), &["nodes", "ls"]).await;
    let table = text(&out.stdout);
    let line1 = table.lines().find(|l| l.starts_with("node-1")).unwrap();
    assert!(
        line1.contains("running") && line1.contains("linux/arm64") && line1.contains("role=edge"),
        "{table}"
    );
    let line0 = table.lines().find(|l| l.starts_with("node-0")).unwrap();
    assert!(line0.contains("offline"), "{table}");

    // `apps ls` joins specs with the node states: node-1 runs hello-0 of 2.
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_elf(dir.path(), "hello", 0, 183);
    let out = narunctl(
        &server.url(),
        &[
            "deploy",
            "--name",
            "hello",
            "--tag",
            "v1",
            "--node",
            "node-1",
            "--replicas",
            "2",
            bin.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = narunctl(&server.url(), &["apps", "ls", "--json"]).await;
    let apps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(apps[0]["name"], "hello");
    assert_eq!(apps[0]["running"], 1);
    assert_eq!(apps[0]["desired_on_live_nodes"], 2);
    let out = narunctl(&server.url(), &["apps", "info", "hello"]).await;
    let info = text(&out.stdout);
    let row = info.lines().find(|l| l.starts_with("node-1")).unwrap();
    assert!(row.contains("running") && row.contains("hello-0"), "{info}");

    let out = narunctl(&server.url(), &["nodes", "info", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("node nope not found"));
}

#[tokio::test]
async fn svc_discovery_and_request_over_bhttp() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let mut config = ServiceConfig::new("echo", "1.2.3");
    config.description = "echoes the body".into();
    let service = narun_wire::micro::Service::start(&client, config)
        .await
        .unwrap();
    let mut endpoint = service
        .add_endpoint(EndpointConfig::new("handler", "echo"))
        .await
        .unwrap();
    // A tiny BHTTP app: answers 201 with the request body and the method in a header.
    tokio::spawn(async move {
        while let Some(req) = endpoint.next().await {
            let http_req = narun_wire::bhttp::decode_request(&req.message.payload).unwrap();
            let resp = http::Response::builder()
                .status(201)
                .header("x-method", http_req.method().as_str())
                .header("x-path", http_req.uri().path())
                .body(())
                .unwrap();
            let (parts, ()) = resp.into_parts();
            let payload = narun_wire::bhttp::encode_response(&parts, http_req.body());
            req.respond(payload.into(), None).await.unwrap();
        }
    });
    // A hand-written minimal service (as some other-language libraries answer):
    // no version, `metadata: null`, no endpoints.
    let mut raw = client.subscribe("$SRV.INFO").await.unwrap();
    let raw_client = client.clone();
    tokio::spawn(async move {
        while let Some(m) = raw.next().await {
            let body = br#"{"type":"io.nats.micro.v1.info_response","name":"legacy","id":"L1","metadata":null}"#;
            raw_client
                .publish(m.reply.unwrap(), body.as_slice().into())
                .await
                .unwrap();
        }
    });
    narun_test_support::synced(&client).await;
    let url = server.url();

    let out = narunctl(
        &url,
        &[
            "--timeout",
            "2s",
            "request",
            "echo",
            "PUT",
            "/things/1",
            "-d",
            "hello body",
            "-H",
            "X-A: 1",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("201 Created"), "{stdout}");
    assert!(
        stdout.contains("x-method: PUT") && stdout.contains("x-path: /things/1"),
        "{stdout}"
    );
    assert!(stdout.ends_with("hello body"), "{stdout}");

    let out = narunctl(&url, &["--timeout", "2s", "svc", "ls", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let infos: Vec<narun_wire::micro::InfoResponse> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(infos.len(), 2, "{infos:?}");
    assert_eq!(infos[0].name, "echo");
    assert_eq!(infos[0].id, service.id());
    assert_eq!(infos[0].description, "echoes the body");
    assert_eq!(
        (infos[1].name.as_str(), infos[1].id.as_str()),
        ("legacy", "L1")
    );
    let out = narunctl(&url, &["--timeout", "2s", "svc", "ls"]).await;
    let table = text(&out.stdout);
    assert!(
        table.starts_with("NAME") && table.contains("legacy"),
        "{table}"
    );

    let out = narunctl(&url, &["--timeout", "2s", "svc", "info", "echo", "--json"]).await;
    let infos: Vec<narun_wire::micro::InfoResponse> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(infos[0].endpoints[0].subject, "echo");

    let out = narunctl(&url, &["--timeout", "2s", "svc", "stats", "echo", "--json"]).await;
    let stats: Vec<narun_wire::micro::StatsResponse> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats[0].endpoints[0].num_requests, 1);
    let out = narunctl(&url, &["--timeout", "2s", "svc", "stats", "echo"]).await;
    let table = text(&out.stdout);
    assert!(
        table.contains("REQUESTS") && table.contains(service.id()),
        "{table}"
    );

    let out = narunctl(&url, &["--timeout", "2s", "svc", "ping"]).await;
    assert!(text(&out.stdout).contains(service.id()));

    // Unknown service: clear errors, exit 1.
    let out = narunctl(&url, &["--timeout", "1s", "svc", "info", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no instance of service nope"));
    let out = narunctl(&url, &["--timeout", "1s", "request", "nope", "/"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no service is listening on nope"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn logs_follows_and_filters_until_interrupted() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let server = NatsServer::start();
    let client = server.connect().await;
    // `logs` refuses an app nobody knows: store its spec first (no node runs it here).
    narun_test_support::buckets(&server)
        .await
        .put_spec(
            "hello",
            &serde_json::json!({"name": "hello", "tag": "v1", "nodes": [{"name": "node-1", "replicas": 1}]}),
        )
        .await;
    let mut child = tokio::process::Command::new(narunctl_bin())
        .args([
            "--nats",
            &server.url(),
            "logs",
            "hello",
            "--instance",
            "hello-1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    // No stream: no history, said so, then live lines.
    let note = tokio::time::timeout(T, stderr.next_line())
        .await
        .expect("narunctl logs says there is no history")
        .unwrap()
        .unwrap();
    assert!(note.starts_with("note: no log history"), "{note}");
    let ready = tokio::time::timeout(T, stderr.next_line())
        .await
        .expect("narunctl logs reports its subscription")
        .unwrap()
        .unwrap();
    assert!(ready.contains("following logs.hello.*"), "{ready}");

    let line = |instance: &str, msg: &str| narun_wire::events::LogLine {
        instance_id: instance.into(),
        app_name: "hello".into(),
        node_id: "node-1".into(),
        stream: "stdout".into(),
        message: msg.into(),
        timestamp: "2026-01-02T03:04:05.123456789Z".into(),
        partial: false,
        dropped_before: 0,
        trace_id: None,
    };
    for (subject, l) in [
        ("logs.hello.node-1", line("hello-0", "filtered out")),
        ("logs.other.node-1", line("hello-1", "other app")),
        ("logs.hello.node-1", line("hello-1", "hi there")),
    ] {
        client
            .publish(subject, serde_json::to_vec(&l).unwrap().into())
            .await
            .unwrap();
    }
    narun_test_support::synced(&client).await;
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let got = tokio::time::timeout(T, stdout.next_line())
        .await
        .expect("a log line in time")
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        "2026-01-02T03:04:05.123Z  node-1  hello-1  stdout  hi there"
    );

    // Ctrl-C ends it cleanly.
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(T, child.wait())
        .await
        .expect("exits after SIGINT")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        stdout.next_line().await.unwrap(),
        None,
        "nothing else printed"
    );
}

//! Discovery of our services by third-party ADR-32 clients: the official JS
//! services client (`@nats-io/services`) and the Python `micro` CLI (`nats-micro`).
//!
//! The peers are installed by `scripts/setup.sh` (`npm install` in `interop/`,
//! `pip install -r interop/requirements.txt`). A missing peer fails the test with
//! the command that installs it: these tests are part of the contract.

use axum::{Router, routing::get};
use narun::{Options, Server};
use narun_test_support::NatsServer;
use narun_wire::connect::NatsSettings;
use std::path::PathBuf;
use std::process::Command;

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../interop")
}

async fn start(server: &NatsServer, name: &str) -> Server {
    let app = Router::new().route("/", get(|| async { "ok" }));
    let opts = Options::new(name)
        .version("1.4.2")
        .description("interop test service")
        .metadata("lang", "rust")
        .nats(NatsSettings {
            url: server.url(),
            ..Default::default()
        });
    Server::start(opts, app).await.unwrap()
}

/// Run a command on a blocking thread (the service answers on the async runtime meanwhile).
async fn run(mut cmd: Command, install_hint: &'static str) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!("cannot run the interop peer ({e}); install it with: {install_hint}")
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_js_services_client_lists_describes_and_shows_stats() {
    let dir = interop_dir();
    assert!(
        dir.join("node_modules/@nats-io/services").exists(),
        "JS peer missing: run `npm install --prefix {}` (scripts/setup.sh does)",
        dir.display()
    );
    let server = NatsServer::start();
    let srv = start(&server, "interop-js").await;
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("discover.js"))
        .arg(server.url())
        .arg("interop-js");
    let (ok, stdout, stderr) = run(cmd, "apt-get install nodejs npm").await;
    assert!(ok, "discover.js failed:\n{stdout}\n{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_verb = |v: &str| -> &serde_json::Value {
        &lines.iter().find(|l| l["verb"] == v).unwrap()["replies"][0]
    };
    let ping = by_verb("ping");
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
    assert_eq!(ping["name"], "interop-js");
    assert_eq!(ping["version"], "1.4.2");
    assert_eq!(ping["id"], srv.service().id());
    let info = by_verb("info");
    assert_eq!(info["description"], "interop test service");
    assert_eq!(info["endpoints"][0]["name"], "handler");
    assert_eq!(info["endpoints"][0]["subject"], "interop-js");
    assert_eq!(info["endpoints"][0]["queue_group"], "q");
    let stats = by_verb("stats");
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response");
    assert_eq!(stats["endpoints"][0]["num_requests"], 0);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_micro_cli_pings_describes_and_shows_stats() {
    let server = NatsServer::start();
    let srv = start(&server, "interop-py").await;
    // One request so the stats are not all zero.
    let client = server.connect().await;
    let (parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
    let payload = narun_wire::bhttp::encode_request(&parts, b"");
    client.request("interop-py", payload.into()).await.unwrap();

    for verb in ["ping", "info", "stats"] {
        let mut cmd = Command::new("micro");
        cmd.args([verb, "-s", &server.url(), "--timeout", "1", "interop-py"]);
        let (ok, stdout, stderr) = run(cmd, "pip install -r interop/requirements.txt").await;
        assert!(ok, "`micro {verb}` failed:\n{stdout}\n{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("`micro {verb}` printed no JSON ({e}):\n{stdout}\n{stderr}")
        });
        let first = if v.is_array() { &v[0] } else { &v };
        assert_eq!(first["name"], "interop-py", "micro {verb}: {stdout}");
        assert_eq!(first["id"], srv.service().id(), "micro {verb}: {stdout}");
        match verb {
            "info" => assert_eq!(first["endpoints"][0]["subject"], "interop-py", "{stdout}"),
            "stats" => assert_eq!(first["endpoints"][0]["num_requests"], 1, "{stdout}"),
            _ => {}
        }
    }
    srv.shutdown().await;
}

//! End-to-end tests of `deploy --wait`, `images`, `logs --since/-f` and the generated
//! completions/man pages: the real `narunctl` binary against a real nats-server and,
//! where status or logs are needed, a real `narund` running real app processes.

use async_nats::jetstream;
use narun_test_support::{NatsServer, workspace_bin};
use narun_wire::names;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// Run narunctl against `url` with `args`; bounded to 60 s.
async fn narunctl(url: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_narunctl"));
    cmd.arg("--nats").arg(url).args(args).env_remove("NATS_URL");
    cmd.stdin(std::process::Stdio::null());
    cmd.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("narunctl finished within 60 s")
        .expect("narunctl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A real narund process with its own data dir and cgroup root; stopped with SIGTERM
/// (it then stops its apps) when dropped.
struct Narund {
    child: std::process::Child,
    _data: tempfile::TempDir,
    cgroup: String,
}

impl Narund {
    fn start(server: &NatsServer, node: &str, extra_toml: &str) -> Narund {
        let data = tempfile::tempdir().unwrap();
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cgroup = format!("narun-test-ctl-{}-{node}", std::process::id());
        let conf = data.path().join("narund.toml");
        std::fs::write(
            &conf,
            format!(
                "node_id = \"{node}\"\ndata_dir = \"{d}\"\nruntime_dir = \"{d}/run\"\n\
                 [nats]\nurl = \"{url}\"\n\
                 [apps]\ndefault_user = \"nobody\"\n[cgroup]\nroot = \"{cgroup}\"\n{extra_toml}",
                d = data.path().display(),
                url = server.url(),
            ),
        )
        .unwrap();
        let child = std::process::Command::new(workspace_bin("narund", "narund", &[]))
            .arg("--config")
            .arg(&conf)
            .env("NARUND_LOG", "warn")
            .spawn()
            .unwrap();
        Narund {
            child,
            _data: data,
            cgroup,
        }
    }
}

impl Drop for Narund {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/unified/{}", self.cgroup));
    }
}

/// Put a shell script as the binary `<app>-<tag>-linux-<arch of this machine>`.
async fn upload_script(server: &NatsServer, app: &str, tag: &str, script: &str) {
    let js = jetstream::new(server.connect().await);
    let store = narun_wire::jetstream::ensure_object_store(
        &js,
        names::APP_BINARIES_BUCKET,
        "Stores application binaries.",
    )
    .await
    .unwrap();
    let object = names::binary_object_name(app, tag, names::go_os(), names::go_arch());
    store
        .put(
            object.as_str(),
            &mut std::io::Cursor::new(script.as_bytes().to_vec()),
        )
        .await
        .unwrap();
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_reports_ready_and_failures_with_the_log_tail() {
    let server = NatsServer::start();
    let _narund = Narund::start(&server, "wait-node", "");
    let dir = tempfile::tempdir().unwrap();
    let url = server.url();

    // A good app: two instances, ready once they have run for settleSec.
    upload_script(
        &server,
        "good",
        "v1",
        "#!/bin/sh\necho \"up: $NARUN_INSTANCE_ID\"\nexec sleep 1000\n",
    )
    .await;
    let spec = write(
        dir.path(),
        "good.toml",
        "name = \"good\"\ntag = \"v1\"\nsettleSec = 1\n[[nodes]]\nname = \"wait-node\"\nreplicas = 2\n",
    );
    let started = std::time::Instant::now();
    let out = narunctl(
        &url,
        &[
            "deploy",
            "-f",
            spec.to_str().unwrap(),
            "--no-binary",
            "--wait=40s",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "deploy --wait failed: {}\n{stdout}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("good:v1 is ready on 2 instance(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("wait-node good-1: running"), "{stdout}");
    println!(
        "deploy --wait of 2 instances (settleSec 1): {:.2}s",
        started.elapsed().as_secs_f64()
    );

    // A new version whose process exits 1 at once, restart = "no": exit 1 with the
    // reason and the app's own last words.
    upload_script(
        &server,
        "good",
        "v2",
        "#!/bin/sh\necho 'v2 cannot open its config' >&2\nexit 1\n",
    )
    .await;
    let spec = write(
        dir.path(),
        "bad.toml",
        "name = \"good\"\ntag = \"v2\"\nrestart = \"no\"\nsettleSec = 1\n[[nodes]]\nname = \"wait-node\"\nreplicas = 2\n",
    );
    let out = narunctl(
        &url,
        &[
            "deploy",
            "-f",
            spec.to_str().unwrap(),
            "--no-binary",
            "--wait=40s",
        ],
    )
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}\n{}", text(&out.stdout));
    assert!(err.contains("deploy of good:v2 failed"), "{err}");
    assert!(
        err.contains("good-0 on wait-node: crashed (exit-code: exit status 1)"),
        "{err}"
    );
    assert!(err.contains("v2 cannot open its config"), "log tail: {err}");

    // The v1 instances kept running (narund rolled the replacement back): a redeploy
    // of v1 is ready at once, from the heartbeat alone.
    let spec = write(
        dir.path(),
        "good.toml",
        "name = \"good\"\ntag = \"v1\"\nsettleSec = 1\n[[nodes]]\nname = \"wait-node\"\nreplicas = 2\n",
    );
    let out = narunctl(
        &url,
        &[
            "deploy",
            "-f",
            spec.to_str().unwrap(),
            "--no-binary",
            "--wait=40s",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_times_out_when_no_node_is_selected() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    upload_script(&server, "lonely", "v1", "#!/bin/sh\nexec sleep 1000\n").await;
    let spec = write(
        dir.path(),
        "lonely.toml",
        "name = \"lonely\"\ntag = \"v1\"\n[[nodes]]\nname = \"nowhere\"\nreplicas = 1\n",
    );
    let out = narunctl(
        &server.url(),
        &[
            "deploy",
            "-f",
            spec.to_str().unwrap(),
            "--no-binary",
            "--wait=1s",
        ],
    )
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no online node is selected by the spec of lonely"),
        "{err}"
    );
}

//! Harness shared by narunctl's end-to-end tests (each test file includes it with
//! `mod common;`; not every file uses every helper): the real `narunctl` binary, a real
//! `narund` process, app binaries put straight into `app-binaries`.
#![allow(dead_code)]

use async_nats::jetstream;
use narun_test_support::{NatsServer, workspace_bin};
use narun_wire::names;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;

/// Run `cmd` (a narunctl command line being built) to the end, bounded to 90 s.
pub async fn run(mut cmd: tokio::process::Command) -> Output {
    cmd.stdin(std::process::Stdio::null());
    cmd.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("narunctl finished within 90 s")
        .expect("narunctl runs")
}

/// A narunctl command with no NATS or context settings from the test's environment
/// (`NATS_URL`, `NARUN_CONTEXT`, `NARUNCTL_CONFIG`, and `HOME`/`XDG_CONFIG_HOME` pointing
/// at an empty directory, so no context file of the machine is read).
pub fn narunctl_cmd(home: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_narunctl"));
    for v in [
        "NATS_URL",
        "NARUN_CONTEXT",
        "NARUNCTL_CONFIG",
        "XDG_CONFIG_HOME",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("HOME", home);
    cmd
}

/// `narunctl --nats URL ARGS…` with a clean environment.
pub async fn narunctl(url: &str, args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = narunctl_cmd(home.path());
    cmd.arg("--nats").arg(url).args(args);
    run(cmd).await
}

/// `narunctl deploy -f SPEC --no-binary --wait=WAIT` (binaries put in the store
/// beforehand, e.g. with [`upload_script`]).
pub async fn deploy_file(url: &str, spec: &std::path::Path, wait: &str) -> Output {
    let wait = format!("--wait={wait}");
    narunctl(
        url,
        &["deploy", "-f", spec.to_str().unwrap(), "--no-binary", &wait],
    )
    .await
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A real narund process with its own data dir and cgroup root; stopped with SIGTERM
/// (it then stops its apps) when dropped.
pub struct Narund {
    child: std::process::Child,
    data: tempfile::TempDir,
    cgroup: String,
}

impl Narund {
    pub fn start(server: &NatsServer, node: &str, extra_toml: &str) -> Narund {
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
            .env_remove("NARUN_MASTER_KEY_FILE")
            .spawn()
            .unwrap();
        Narund {
            child,
            data,
            cgroup,
        }
    }

    /// narund's data dir (instances' working dirs are below it).
    pub fn data_dir(&self) -> &std::path::Path {
        self.data.path()
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
pub async fn upload_script(server: &NatsServer, app: &str, tag: &str, script: &str) {
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

/// Whether `pid` exists and is not a zombie (not every test file uses it).
#[allow(unused_imports)]
pub use narun_test_support::alive;

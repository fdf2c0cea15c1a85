//! Node configuration that cannot lie (docs/config.md, "Checking a configuration" and
//! "One narund per data dir and cgroup root"): the real `narund` binary as a process.
//!
//! * `narund --check-config` refuses what a start refuses, naming each setting, and a start
//!   refuses the same: a missing NATS creds file, a 5 000-byte node id, a relative or empty
//!   `data_dir`, a cgroup root outside the cgroup2 mount (`/etc`); for a good file it prints
//!   the effective settings and changes nothing.
//! * A second narund on the data dir, or on the cgroup root, of a running one refuses to start
//!   and names the first one's pid; the first one's app keeps running (same pid).

use narun_test_support::apps::SILENT_SLEEPER;
use narun_test_support::{
    Narund, NatsServer, T, alive, buckets, cgroup2_mount, heartbeat, kill_and_remove_cgroups,
    narund_toml, wait_for, workspace_bin,
};
use narun_wire::events::NodeState;
use narun_wire::status::InstanceStatus;
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A narund process of a test: killed on drop (also when the test fails because it did not
/// refuse to start), with whatever it left in `cgroup_root`.
struct Proc {
    child: Child,
    cgroup_root: Option<PathBuf>,
}

impl Proc {
    /// `narund <args>` in `cwd`, stdout and stderr piped, `NARUND_LOG=warn`.
    fn spawn(args: &[&str], cwd: &Path, cgroup_root: Option<PathBuf>) -> Proc {
        let child = Command::new(workspace_bin("narund", "narund", &[]))
            .args(args)
            .current_dir(cwd)
            .env("NARUND_LOG", "warn")
            .env_remove("NARUND_CONFIG")
            .env_remove("NARUND_NODE_ID")
            .env_remove("NARUND_DATA_DIR")
            .env_remove("NARUND_RUNTIME_DIR")
            .env_remove("NATS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start narund");
        Proc { child, cgroup_root }
    }

    /// Wait (at most [`T`]) for it to exit; its exit code, stdout and stderr.
    async fn exited(mut self, what: &str) -> (Option<i32>, String, String) {
        let child = &mut self.child;
        let status = wait_for(what, T, || {
            let s = child.try_wait().unwrap();
            async move { s }
        })
        .await;
        let (mut out, mut err) = (String::new(), String::new());
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code(), out, err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(root) = &self.cgroup_root {
            kill_and_remove_cgroups(root);
        }
    }
}

/// A `narund.toml` with these top-level settings, NATS on a port nobody listens on, and
/// `tail` (tables) after them.
fn config(node_id: &str, data_dir: &str, runtime_dir: &str, tail: &str) -> String {
    format!(
        "node_id = \"{node_id}\"\ndata_dir = \"{data_dir}\"\nruntime_dir = \"{runtime_dir}\"\n\
         [nats]\nurl = \"nats://127.0.0.1:1\"\n{tail}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_what_start_refuses_and_prints_the_effective_settings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let root_name = format!("narun-test-node-config-{}", std::process::id());
    let cgroup = format!("[cgroup]\nroot = \"{root_name}\"\n");
    let (data, run) = (format!("{d}/data"), format!("{d}/run"));
    let long_id = "n".repeat(5000);
    let missing_creds =
        format!("[nats]\nurl = \"nats://127.0.0.1:1\"\ncreds = \"{d}/missing.creds\"\n{cgroup}");
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "missing creds file",
            format!(
                "node_id = \"cfg\"\ndata_dir = \"{data}\"\nruntime_dir = \"{run}\"\n{missing_creds}"
            ),
            &["nats.creds: cannot read", "missing.creds"],
        ),
        (
            "5000-byte node_id",
            config(&long_id, &data, &run, &cgroup),
            &["node_id: is 5000 bytes long; at most 64"],
        ),
        (
            "relative data_dir",
            config("cfg", "var/lib/narun", &run, &cgroup),
            &["data_dir: var/lib/narun is a relative path"],
        ),
        (
            "empty data_dir",
            config("cfg", "", &run, &cgroup),
            &["data_dir: is empty"],
        ),
        (
            "cgroup root /etc",
            config("cfg", &data, &run, "[cgroup]\nroot = \"/etc\"\n"),
            &["cgroup.root: /etc is not a directory on the cgroup2 filesystem"],
        ),
        (
            "all of them at once",
            format!(
                "node_id = \"{long_id}\"\ndata_dir = \"\"\nruntime_dir = \"rel\"\n\
                 [nats]\ncreds = \"{d}/missing.creds\"\n[cgroup]\nroot = \"/etc\"\n"
            ),
            &[
                "node_id: is 5000 bytes long",
                "data_dir: is empty",
                "runtime_dir: rel is a relative path",
                "nats.creds: cannot read",
                "cgroup.root: /etc is not a directory",
            ],
        ),
    ];
    let root = cgroup2_mount().join(&root_name);
    for (i, (what, toml, wants)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&file, toml).unwrap();
        let file = file.to_str().unwrap();
        let cwd = tempfile::tempdir().unwrap();
        // --check-config refuses, naming the setting.
        let (code, out, err) = Proc::spawn(&["--check-config", "--config", file], cwd.path(), None)
            .exited(&format!("narund --check-config ({what}) to exit"))
            .await;
        assert_eq!(
            code,
            Some(2),
            "{what}: --check-config exit code; stdout:\n{out}\nstderr:\n{err}"
        );
        for want in *wants {
            assert!(
                err.contains(want),
                "{what}: --check-config must say {want:?}:\n{err}"
            );
        }
        assert!(err.contains(file), "{what}: names the file:\n{err}");
        // A start refuses the same, with the same words, before doing anything.
        let (code, out, start_err) =
            Proc::spawn(&["--config", file], cwd.path(), Some(root.clone()))
                .exited(&format!("narund ({what}) to refuse to start"))
                .await;
        assert_eq!(
            code,
            Some(2),
            "{what}: start exit code; stdout:\n{out}\nstderr:\n{start_err}"
        );
        for want in *wants {
            assert!(
                start_err.contains(want),
                "{what}: start must say {want:?}:\n{start_err}"
            );
        }
        assert!(
            !root.exists(),
            "{what}: a refused start creates no cgroup root"
        );
        assert!(
            std::fs::read_dir(cwd.path()).unwrap().next().is_none(),
            "{what}: a refused start creates nothing in its working directory"
        );
    }

    // A good file: the effective settings, exit 0, nothing created.
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        config(
            "good-node",
            &data,
            &run,
            &format!("{cgroup}[labels]\nrole = \"edge\"\n"),
        ),
    )
    .unwrap();
    let (code, out, err) = Proc::spawn(
        &[
            "--check-config",
            "--config",
            good.to_str().unwrap(),
            "--nats-url",
            "nats://10.0.0.1:4222",
        ],
        dir.path(),
        None,
    )
    .exited("narund --check-config (good file) to exit")
    .await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for want in [
        "node_id = \"good-node\"".to_owned(),
        format!("data_dir = \"{data}\""),
        format!("runtime_dir = \"{run}\""),
        "url = \"nats://10.0.0.1:4222\"".to_owned(), // the flag wins
        "role = \"edge\"".to_owned(),
        "default_user = \"\"".to_owned(), // defaults filled in
        "keep_versions = 3".to_owned(),
        format!("root = \"{root_name}\""),
        format!(
            "# cgroup root: {} (configured; created at start",
            root.display()
        ),
        "# data_dir lock: free".to_owned(),
    ] {
        assert!(
            out.contains(&want),
            "effective settings must show {want:?}:\n{out}"
        );
    }
    assert!(!root.exists(), "--check-config creates no cgroup");
    assert!(
        !Path::new(&data).exists(),
        "--check-config creates no data dir"
    );
}

/// The pid of the running instance `id` in a heartbeat.
fn running_pid(s: &NodeState, id: &str) -> Option<i32> {
    s.instances
        .iter()
        .find(|i| i.instance_id == id && i.status == InstanceStatus::Running)
        .and_then(|i| i.pid)
}

/// A narund running `keep-0` (a sleeper) on `node`; its app's pid and the heartbeat watch.
async fn first_narund(
    server: &NatsServer,
    node: &str,
) -> (Narund, i32, async_nats::jetstream::kv::Watch) {
    let b = buckets(server).await;
    b.upload("keep", "v1", SILENT_SLEEPER).await;
    let spec = json!({"name": "keep", "tag": "v1", "nodes": [{"name": node, "replicas": 1}]});
    b.put_spec("keep", &spec).await;
    let mut watch = b.states.watch(node).await.unwrap();
    let narund = Narund::start(server, node, "");
    let s = heartbeat(&mut watch, "keep-0 running", |s| {
        running_pid(s, "keep-0").is_some()
    })
    .await;
    (narund, running_pid(&s, "keep-0").unwrap(), watch)
}

/// After a second narund was refused: the first one and its app run on, same pid.
async fn first_keeps_running(
    first: &mut Narund,
    pid: i32,
    watch: &mut async_nats::jetstream::kv::Watch,
) {
    assert!(first.is_running(), "the first narund runs on");
    assert!(alive(pid), "the first narund's app (pid {pid}) runs on");
    let procs = std::fs::read_dir(first.cgroup_root())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("narun-keep-0-"))
        .map(|e| std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap())
        .collect::<String>();
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "the app is still in its cgroup under the first narund's root: {procs:?}"
    );
    // And the first narund still reports it, same pid (the next heartbeat).
    heartbeat(watch, "keep-0 still running with the same pid", |s| {
        running_pid(s, "keep-0") == Some(pid)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_narund_on_the_same_data_dir_refuses_naming_the_first() {
    let server = NatsServer::start();
    let (mut first, pid, mut watch) = first_narund(&server, "lock-data").await;
    // Same node, same data dir, its own cgroup root.
    let conf_dir = tempfile::tempdir().unwrap();
    let root_name = format!("narun-test-node-config-second-{}", std::process::id());
    let conf = conf_dir.path().join("narund.toml");
    let toml = narund_toml("lock-data", first.data_dir(), &server.url(), &root_name, "");
    std::fs::write(&conf, toml).unwrap();
    let (code, out, err) = Proc::spawn(
        &["--config", conf.to_str().unwrap()],
        conf_dir.path(),
        Some(cgroup2_mount().join(&root_name)),
    )
    .exited("the second narund to refuse to start")
    .await;
    assert_ne!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains(&format!(
            "another narund (pid {}) is running on data_dir",
            first.pid()
        )),
        "names the first narund's pid and the data dir:\n{err}"
    );
    assert!(err.contains("narund.lock"), "{err}");
    first_keeps_running(&mut first, pid, &mut watch).await;
    assert!(first.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_narund_on_the_same_cgroup_root_refuses_naming_the_first() {
    let server = NatsServer::start();
    let (mut first, pid, mut watch) = first_narund(&server, "lock-cg").await;
    // Another node with its own data dir, but the first one's cgroup root.
    let data = tempfile::tempdir().unwrap();
    let root = first.cgroup_root();
    let conf = data.path().join("narund.toml");
    let toml = narund_toml(
        "lock-cg-second",
        data.path(),
        &server.url(),
        root.to_str().unwrap(),
        "",
    );
    std::fs::write(&conf, toml).unwrap();
    let (code, out, err) = Proc::spawn(&["--config", conf.to_str().unwrap()], data.path(), None)
        .exited("the second narund to refuse to start")
        .await;
    assert_ne!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains(&format!(
            "another narund (pid {}) uses the cgroup root {}",
            first.pid(),
            root.display()
        )),
        "names the first narund's pid and the cgroup root:\n{err}"
    );
    first_keeps_running(&mut first, pid, &mut watch).await;
    assert!(first.terminate().await.success());
}

/// Without `node_id`, the real narund takes its id from the provisioning file
/// (`node_id_file`), else from `/etc/machine-id` the way `systemd-id128 --app-specific`
/// derives it, which is also narunctl's default node (`narun_wire::names::default_node_id`);
/// a provisioning file with no valid id refuses the start, naming the key and the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_node_id_comes_from_the_provisioning_file_then_the_machine_id() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let conf = dir.path().join("narund.toml");
    let file = dir.path().join("node-id");
    let write = |node_id_file: &Path| {
        std::fs::write(
            &conf,
            format!(
                "node_id_file = \"{}\"\ndata_dir = \"{d}/data\"\nruntime_dir = \"{d}/run\"\n\
                 [nats]\nurl = \"nats://127.0.0.1:1\"\n[cgroup]\nenabled = false\n",
                node_id_file.display()
            ),
        )
        .unwrap()
    };
    let check = |what: &'static str| {
        let conf = conf.display().to_string();
        async move {
            Proc::spawn(&["--config", &conf, "--check-config"], Path::new("/"), None)
                .exited(what)
                .await
        }
    };

    // 1. The provisioning file.
    write(&file);
    std::fs::write(&file, "edge-0042\n").unwrap();
    let (code, out, err) = check("check-config with a node id file").await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("node_id = \"edge-0042\""), "{out}");
    assert!(
        out.contains(&format!(
            "# node_id: edge-0042 (from the provisioning file {};",
            file.display()
        )),
        "{out}"
    );

    // 2. Not there: the machine id, as systemd derives app-specific ids, and the same id
    //    narunctl defaults to (when this machine has /etc/narun/node-id, that file).
    let absent = dir.path().join("absent");
    write(&absent);
    let (code, out, err) = check("check-config without a node id file").await;
    assert_eq!(code, Some(0), "{err}");
    let narunctl_default = narun_wire::names::default_node_id().unwrap();
    let has_default_file = Path::new(narun_wire::node_id::DEFAULT_NODE_ID_FILE).exists();
    if !has_default_file {
        assert!(
            out.contains(&format!("node_id = \"{narunctl_default}\"")),
            "narund and narunctl agree on the default node id {narunctl_default}:\n{out}"
        );
    }
    let machine_id =
        std::fs::read_to_string(narun_wire::node_id::MACHINE_ID_FILE).unwrap_or_default();
    if machine_id.trim().len() == 32 {
        let derived = Command::new("systemd-id128")
            .args([
                "machine-id",
                &format!("--app-specific={}", narun_wire::node_id::NODE_ID_APP_ID),
            ])
            .output();
        match derived {
            Ok(o) if o.status.success() => {
                let id = String::from_utf8(o.stdout).unwrap().trim().to_owned();
                assert!(
                    out.contains(&format!("node_id = \"{id}\"")),
                    "systemd-id128 says {id}:\n{out}"
                );
                assert!(out.contains("(from /etc/machine-id"), "{out}");
                assert!(
                    !out.contains(machine_id.trim()),
                    "the machine id stays private"
                );
                if !has_default_file {
                    assert_eq!(narunctl_default, id);
                }
            }
            _ => eprintln!("systemd-id128 not available: derived id not cross-checked"),
        }
    }

    // 3. A provisioning file with a host name in it (dots): refused, naming key and file.
    write(&file);
    std::fs::write(&file, "edge-0042.example.com\n").unwrap();
    let (code, _, err) = check("check-config with a bad node id file").await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "node_id_file: node id file {}: first line",
            file.display()
        )) && err.contains("contains '.'"),
        "{err}"
    );
}

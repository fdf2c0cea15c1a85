//! Secrets (`valueFromSecret`) and mounted files (`mounts`) against a real nats-server, real
//! processes and real cgroups.
//!
//! Secrets are written the way narunctl (or the Go CLI) writes them: a `StoredSecret` JSON in
//! the `narun-secrets` KV bucket; one of them is encrypted by Python `cryptography` to prove
//! byte compatibility with a third-party AES-GCM. What the app sees is read from
//! `/proc/<pid>/environ` and from its work dir.

mod common;

use async_nats::jetstream::{self, kv, object_store::ObjectStore};
use narun_test_support::{NatsServer, wait_for};
use narun_wire::events::StatusEvent;
use narun_wire::names;
use narun_wire::secrets::MasterKey;
use narun_wire::status::{InstanceStatus, Reason};
use narund::node::{Supervisor, SupervisorConfig};
use narund::uring::UringHandle;
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const T: Duration = Duration::from_secs(20);
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Prints its identity, then sleeps with its environment intact (`exec`).
const SLEEPER: &str = "#!/bin/sh\necho \"hello from $NARUN_INSTANCE_ID\"\nexec sleep 1000\n";

struct Harness {
    server: NatsServer,
    configs: kv::Store,
    binaries: ObjectStore,
    secrets: kv::Store,
    files: ObjectStore,
    sup: Supervisor,
    data: tempfile::TempDir,
    node: String,
    key: MasterKey,
    key_file: PathBuf,
    events: Arc<Mutex<Vec<StatusEvent>>>,
    stop: watch::Sender<bool>,
    cgroup_root: PathBuf,
}

impl Harness {
    async fn new() -> Harness {
        let _ = narund::node::become_subreaper();
        let server = NatsServer::start();
        let client = server.connect().await;
        let js = jetstream::new(client.clone());
        let configs =
            narun_wire::jetstream::ensure_kv(&js, names::APP_CONFIGS_BUCKET, "specs", 1, None)
                .await
                .unwrap();
        let binaries =
            narun_wire::jetstream::ensure_object_store(&js, names::APP_BINARIES_BUCKET, "bins")
                .await
                .unwrap();
        let secrets =
            narun_wire::jetstream::ensure_kv(&js, names::SECRETS_BUCKET, "secrets", 1, None)
                .await
                .unwrap();
        let files = narun_wire::jetstream::ensure_object_store(
            &js,
            names::FILES_BUCKET,
            names::FILES_DESCRIPTION,
        )
        .await
        .unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let key = MasterKey::generate();
        let key_file = data.path().join("master.key");
        std::fs::write(&key_file, format!("{}\n", key.to_base64())).unwrap();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let node = format!("node-{n}");
        let cg = format!("narun-test-secrets-{}-{n}", std::process::id());
        // From narund's own config type, so new settings get their defaults here too.
        let mut config = narund::config::Config {
            node_id: node.clone(),
            data_dir: data.path().to_path_buf(),
            runtime_dir: data.path().join("run"),
            ..Default::default()
        };
        config.nats.url = server.url();
        config.apps.default_user = "nobody".into();
        config.apps.restart_backoff_max_sec = 1;
        config.cgroup.root = Some(PathBuf::from(&cg));
        config.secrets.master_key_file = key_file.clone();
        let cfg = SupervisorConfig::from_config(&config);
        let (sup, _logs) = Supervisor::new(cfg, client.clone(), UringHandle::start()).await;
        sup.set_master_key_file(&key_file);
        let cgroup_root = sup
            .cgroup_root()
            .map(|r| r.path().to_path_buf())
            .unwrap_or_default();
        let events = common::collect::<StatusEvent>(&client, "status.>").await;
        let stop = common::start_reconciler(&sup, &client).await;
        Harness {
            server,
            configs,
            binaries,
            secrets,
            files,
            sup,
            data,
            node,
            key,
            key_file,
            events,
            stop,
            cgroup_root,
        }
    }

    /// Deploy `app` running [`SLEEPER`] with these extra spec fields.
    async fn deploy(&self, app: &str, extra: serde_json::Value) {
        let object = names::binary_object_name(app, "v1", names::go_os(), names::go_arch());
        self.binaries
            .put(
                object.as_str(),
                &mut std::io::Cursor::new(SLEEPER.as_bytes().to_vec()),
            )
            .await
            .unwrap();
        let mut spec = json!({
            "name": app, "tag": "v1",
            "nodes": [{"name": self.node, "replicas": 1}],
            "stopTimeoutSec": 3, "restart": "always",
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        self.configs
            .put(app, serde_json::to_vec(&spec).unwrap().into())
            .await
            .unwrap();
    }

    /// Store a secret the way `narunctl secret set` does.
    async fn set_secret(&self, key: &MasterKey, name: &str, value: &str) {
        let stored = key.seal(name, value.as_bytes(), None, None).unwrap();
        self.secrets
            .put(name, stored.to_json().into())
            .await
            .unwrap();
    }

    async fn wait_event(&self, what: &str, pred: impl Fn(&StatusEvent) -> bool) -> StatusEvent {
        wait_for(what, T, || {
            let found = self
                .events
                .lock()
                .unwrap()
                .iter()
                .find(|e| pred(e))
                .cloned();
            async move { found }
        })
        .await
    }

    /// Wait (bounded) until the snapshot of `app`-0 satisfies `pred`.
    async fn wait_state(
        &self,
        app: &str,
        pred: impl Fn(&narund::node::Snapshot) -> bool,
    ) -> narund::node::Snapshot {
        let got = tokio::time::timeout(T, async {
            loop {
                if let Some(s) = self.sup.snapshot(app, 0).filter(|s| pred(s)) {
                    return s;
                }
                // Re-check on every change, and periodically (a change may land between
                // the check and the registration of the waiter).
                tokio::select! {
                    _ = self.sup.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
        .await;
        got.unwrap_or_else(|_| {
            panic!(
                "{app}-0 never reached the expected state: {:?}\nevents: {:#?}",
                self.sup.snapshot(app, 0),
                self.events.lock().unwrap()
            )
        })
    }

    async fn running_pid(&self, app: &str) -> i32 {
        self.wait_state(app, |s| {
            s.status == InstanceStatus::Running && s.pid.is_some()
        })
        .await
        .pid
        .unwrap()
    }

    fn work(&self, app: &str) -> PathBuf {
        self.data
            .path()
            .join("instances")
            .join(format!("{app}-0"))
            .join("work")
    }

    async fn finish(self) {
        let _ = self.stop.send(true);
        self.sup.shutdown().await;
    }
}

impl Drop for Harness {
    /// Also runs when a test panics: no app process and no cgroup outlives the test.
    fn drop(&mut self) {
        common::kill_and_remove_cgroups(&self.cgroup_root);
    }
}

fn environ(pid: i32) -> BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    String::from_utf8_lossy(&raw)
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A `StoredSecret` JSON produced by Python `cryptography` (AESGCM, aad = name), or `None`
/// when the module is not installed.
fn python_sealed(key: &MasterKey, name: &str, value: &str) -> Option<Vec<u8>> {
    let script = r#"
import base64, json, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key = base64.b64decode(sys.argv[1]); name = sys.argv[2]; value = sys.argv[3].encode()
nonce = os.urandom(12)
ct = AESGCM(key).encrypt(nonce, value, name.encode())
print(json.dumps({"name": name, "ciphertext": base64.b64encode(ct).decode(),
  "nonce": base64.b64encode(nonce).decode(), "description": "from python",
  "created_at": "2025-01-02T03:04:05.123456789Z", "updated_at": "2025-01-02T03:04:05.123456789Z"}))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &key.to_base64(), name, value])
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_mounts_reach_the_app() {
    let h = Harness::new().await;
    h.set_secret(&h.key, "db-password", "s3cr3t with spaces = and ünïcode")
        .await;
    let python = python_sealed(&h.key, "api-token", "token-from-python");
    match &python {
        Some(v) => {
            h.secrets.put("api-token", v.clone().into()).await.unwrap();
        }
        None => eprintln!("python3 cryptography not available: skipping the Python-sealed secret"),
    }
    let content = "listen = 8080\n".repeat(20_000); // > one 128 KiB object chunk
    h.files
        .put("app-config", &mut std::io::Cursor::new(content.clone()))
        .await
        .unwrap();

    let mut env = vec![
        json!({"name": "DB_PASSWORD", "valueFromSecret": "db-password"}),
        json!({"name": "PLAIN", "value": "plain"}),
    ];
    if python.is_some() {
        env.push(json!({"name": "API_TOKEN", "valueFromSecret": "api-token"}));
    }
    h.deploy(
        "vault",
        json!({
            "env": env,
            "mounts": [{"path": "conf/./app.toml", "source": {"objectStore": "app-config"}}],
        }),
    )
    .await;
    let pid = h.running_pid("vault").await;
    let vars = environ(pid);
    assert_eq!(
        vars.get("DB_PASSWORD").map(String::as_str),
        Some("s3cr3t with spaces = and ünïcode")
    );
    assert_eq!(vars.get("PLAIN").map(String::as_str), Some("plain"));
    if python.is_some() {
        assert_eq!(
            vars.get("API_TOKEN").map(String::as_str),
            Some("token-from-python"),
            "a secret sealed by Python cryptography must decrypt in Rust"
        );
    }

    let mounted = h.work("vault").join("conf/app.toml");
    assert_eq!(std::fs::read_to_string(&mounted).unwrap(), content);
    let md = std::fs::metadata(&mounted).unwrap();
    assert_eq!(md.mode() & 0o777, 0o644);
    if unsafe { libc::geteuid() } == 0 {
        let nobody = std::fs::metadata(h.work("vault")).unwrap().uid();
        assert_eq!(md.uid(), nobody, "the mounted file belongs to the app user");
        let dir = std::fs::metadata(h.work("vault").join("conf")).unwrap();
        assert_eq!((dir.uid(), dir.mode() & 0o777), (nobody, 0o755));
    }
    // The plaintext is nowhere in narund's data dir.
    assert!(
        !dir_contains(h.data.path(), b"s3cr3t with spaces"),
        "a secret value was written to the data dir"
    );
    h.finish().await;
}

fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            dir_contains(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_secrets_and_missing_files_fail_only_their_app() {
    let h = Harness::new().await;
    h.set_secret(&MasterKey::generate(), "other-key", "x").await;
    h.deploy(
        "nosecret",
        json!({"env": [{"name": "A", "valueFromSecret": "does-not-exist"}]}),
    )
    .await;
    h.deploy(
        "wrongkey",
        json!({"env": [{"name": "A", "valueFromSecret": "other-key"}]}),
    )
    .await;
    h.deploy(
        "nofile",
        json!({"mounts": [{"path": "x.conf", "source": {"objectStore": "missing-file"}}]}),
    )
    .await;
    h.deploy("fine", json!({"env": [{"name": "A", "value": "1"}]}))
        .await;

    let e = h
        .wait_event("nosecret failed", |e| {
            e.app_name == "nosecret" && e.status == InstanceStatus::Failed
        })
        .await;
    assert_eq!(e.reason, Some(Reason::Secret));
    assert!(
        e.error
            .starts_with("Failed to resolve secret 'does-not-exist': not found"),
        "{}",
        e.error
    );
    let e = h
        .wait_event("wrongkey failed", |e| {
            e.app_name == "wrongkey" && e.status == InstanceStatus::Failed
        })
        .await;
    assert_eq!(e.reason, Some(Reason::Secret));
    assert!(e.error.contains("cannot be decrypted"), "{}", e.error);
    let e = h
        .wait_event("nofile failed", |e| {
            e.app_name == "nofile" && e.status == InstanceStatus::Failed
        })
        .await;
    assert_eq!(e.reason, Some(Reason::Mount));
    assert!(
        e.error
            .starts_with("Failed to process mount x.conf: file 'missing-file' not found"),
        "{}",
        e.error
    );
    h.running_pid("fine").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_master_key_then_nats_down_fail_with_reason_secret() {
    let h = Harness::new().await;
    h.set_secret(&h.key, "s", "v").await;
    // No master key: the start fails, naming the secret and the file.
    std::fs::remove_file(&h.key_file).unwrap();
    h.deploy(
        "app",
        json!({"env": [{"name": "S", "valueFromSecret": "s"}]}),
    )
    .await;
    let e = h
        .wait_event("failed without a key", |e| {
            e.app_name == "app" && e.status == InstanceStatus::Failed
        })
        .await;
    assert_eq!(e.reason, Some(Reason::Secret));
    assert!(
        e.error.contains("Failed to resolve secret 's'")
            && e.error.contains("master.key")
            && e.error.contains("head -c 32 /dev/urandom | base64"),
        "{}",
        e.error
    );

    // With the key back, the next apply starts it (the key file is read at each start).
    std::fs::write(&h.key_file, h.key.to_base64()).unwrap();
    h.deploy(
        "app",
        json!({"env": [{"name": "S", "valueFromSecret": "s"}], "args": ["again"]}),
    )
    .await;
    let pid = h.running_pid("app").await;
    assert_eq!(environ(pid).get("S").map(String::as_str), Some("v"));

    // NATS goes away and the app crashes: the restart cannot read the secret and there is
    // no copy on disk, so it fails with reason `secret` instead of starting without it.
    h.server.stop();
    // SAFETY: kill(2) on the app's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let snap = h
        .wait_state("app", |s| s.status == InstanceStatus::Failed)
        .await;
    assert_eq!(snap.reason, Some(Reason::Secret));
    h.finish().await;
}

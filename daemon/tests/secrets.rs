//! Secrets (`valueFromSecret`) and mounted files (`mounts`) against a real nats-server, real
//! processes and real cgroups.
//!
//! Secrets are written the way narunctl (or the Go CLI) writes them: a `StoredSecret` JSON in
//! the `narun-secrets` KV bucket; one of them is encrypted by Python `cryptography` to prove
//! byte compatibility with a third-party AES-GCM. What the app sees is read from
//! `/proc/<pid>/environ` and from its work dir.

mod common;

use common::Harness;
use narun_test_support::apps::SLEEPER;
use narun_wire::secrets::MasterKey;
use narun_wire::status::{InstanceStatus, Reason};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Apps run [`SLEEPER`] and restart always.
async fn harness() -> Harness {
    Harness::builder("secrets")
        .config(|c| c.apps.restart_backoff_max_sec = 1)
        .secrets()
        .spec_fields(json!({"stopTimeoutSec": 3, "restart": "always"}))
        .start()
        .await
}

/// Store a secret the way `narunctl secret set` does.
async fn set_secret(h: &Harness, key: &MasterKey, name: &str, value: &str) {
    let stored = key.seal(name, value.as_bytes(), None, None).unwrap();
    h.secrets()
        .bucket
        .put(name, stored.to_json().into())
        .await
        .unwrap();
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
    let h = harness().await;
    set_secret(
        &h,
        &h.secrets().key,
        "db-password",
        "s3cr3t with spaces = and ünïcode",
    )
    .await;
    let python = python_sealed(&h.secrets().key, "api-token", "token-from-python");
    match &python {
        Some(v) => {
            h.secrets()
                .bucket
                .put("api-token", v.clone().into())
                .await
                .unwrap();
        }
        None => eprintln!("python3 cryptography not available: skipping the Python-sealed secret"),
    }
    let content = "listen = 8080\n".repeat(20_000); // > one 128 KiB object chunk
    h.secrets()
        .files
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
        "v1",
        SLEEPER,
        json!({
            "env": env,
            "mounts": [{"path": "conf/./app.toml", "source": {"objectStore": "app-config"}}],
        }),
    )
    .await;
    let pid = h.running_pid("vault", 0).await;
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
    assert_eq!(md.mode() & 0o777, 0o600, "the app's user only");
    if unsafe { libc::geteuid() } == 0 {
        let nobody = std::fs::metadata(h.work("vault")).unwrap().uid();
        assert_eq!(md.uid(), nobody, "the mounted file belongs to the app user");
        let dir = std::fs::metadata(h.work("vault").join("conf")).unwrap();
        assert_eq!((dir.uid(), dir.mode() & 0o777), (nobody, 0o700));
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
    let h = harness().await;
    set_secret(&h, &MasterKey::generate(), "other-key", "x").await;
    h.deploy(
        "nosecret",
        "v1",
        SLEEPER,
        json!({"env": [{"name": "A", "valueFromSecret": "does-not-exist"}]}),
    )
    .await;
    h.deploy(
        "wrongkey",
        "v1",
        SLEEPER,
        json!({"env": [{"name": "A", "valueFromSecret": "other-key"}]}),
    )
    .await;
    h.deploy(
        "nofile",
        "v1",
        SLEEPER,
        json!({"mounts": [{"path": "x.conf", "source": {"objectStore": "missing-file"}}]}),
    )
    .await;
    h.deploy(
        "fine",
        "v1",
        SLEEPER,
        json!({"env": [{"name": "A", "value": "1"}]}),
    )
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
    h.running_pid("fine", 0).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_master_key_then_nats_down_fail_with_reason_secret() {
    let h = harness().await;
    set_secret(&h, &h.secrets().key, "s", "v").await;
    // No master key: the start fails, naming the secret and the file.
    std::fs::remove_file(&h.secrets().key_file).unwrap();
    h.deploy(
        "app",
        "v1",
        SLEEPER,
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
    std::fs::write(&h.secrets().key_file, h.secrets().key.to_base64()).unwrap();
    h.deploy(
        "app",
        "v1",
        SLEEPER,
        json!({"env": [{"name": "S", "valueFromSecret": "s"}], "args": ["again"]}),
    )
    .await;
    let pid = h.running_pid("app", 0).await;
    assert_eq!(environ(pid).get("S").map(String::as_str), Some("v"));

    // NATS goes away and the app crashes: the restart cannot read the secret and there is
    // no copy on disk, so it fails with reason `secret` instead of starting without it.
    h.server.stop();
    // SAFETY: kill(2) on the app's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let snap = h
        .wait_state("app", 0, |s| s.status == InstanceStatus::Failed)
        .await;
    assert_eq!(snap.reason, Some(Reason::Secret));
    h.finish().await;
}

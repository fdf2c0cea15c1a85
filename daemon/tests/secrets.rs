//! Secrets (`valueFromSecret`) and mounted files (`mounts`) against a real nats-server, real
//! processes and real cgroups.
//!
//! Secrets are written the way narunctl (or the Go CLI) writes them: a `StoredSecret` JSON in
//! the `narun-secrets` KV bucket, scoped to the apps that may use them (or unscoped, the Go
//! format); one of them is encrypted by Python `cryptography` to prove byte compatibility with
//! a third-party AES-GCM. A KV writer without the master key rewrites scopes. What the app
//! sees is read from `/proc/<pid>/environ` and from its work dir.

mod common;

use common::Harness;
use narun_test_support::apps::SLEEPER;
use narun_test_support::environ;
use narun_wire::events::StatusEvent;
use narun_wire::secrets::{MasterKey, Scope, StoredSecret};
use narun_wire::status::{InstanceStatus, Reason};
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Apps run [`SLEEPER`] and restart always; `[secrets] allow_unscoped` as given.
async fn harness_with(allow_unscoped: bool) -> Harness {
    Harness::builder("secrets")
        .config(move |c| {
            c.apps.restart_backoff_max_sec = 1;
            c.secrets.allow_unscoped = allow_unscoped;
        })
        .secrets()
        .spec_fields(json!({"stopTimeoutSec": 3, "restart": "always"}))
        .start()
        .await
}

/// The default node config (unscoped secrets refused).
async fn harness() -> Harness {
    harness_with(false).await
}

/// Store a secret the way `narunctl secret set NAME --app A…` does (`apps` empty: `--any-app`).
async fn set_secret(h: &Harness, key: &MasterKey, name: &str, value: &str, apps: &[&str]) {
    let scope = if apps.is_empty() {
        Scope::AnyApp
    } else {
        Scope::apps(apps.iter().copied()).unwrap()
    };
    let stored = key
        .seal_scoped(name, value.as_bytes(), None, None, &scope)
        .unwrap();
    put(h, name, stored.to_json()).await;
}

/// Write a KV value as anyone with write access to `narun-secrets` can.
async fn put(h: &Harness, name: &str, value: Vec<u8>) {
    h.secrets().bucket.put(name, value.into()).await.unwrap();
}

/// The stored secret, as a KV writer reads it.
async fn get(h: &Harness, name: &str) -> StoredSecret {
    let v = h.secrets().bucket.get(name).await.unwrap().unwrap();
    StoredSecret::from_json(name, &v).unwrap()
}

/// The `failed` event of `app`, which must have reason `secret`.
async fn secret_failure(h: &Harness, app: &str) -> StatusEvent {
    let e = h
        .wait_event(&format!("{app} failed"), |e| {
            e.app_name == app && e.status == InstanceStatus::Failed
        })
        .await;
    assert_eq!(e.reason, Some(Reason::Secret), "{}", e.error);
    e
}

/// No instance of `app` ever ran.
fn never_started(h: &Harness, app: &str) {
    let started = h
        .events(app)
        .iter()
        .any(|e| e.status == InstanceStatus::Running);
    assert!(!started, "{app} must never start without its secret");
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
        &["other", "vault"],
    )
    .await;
    let content = "listen = 8080\n".repeat(20_000); // > one 128 KiB object chunk
    h.secrets()
        .files
        .put("app-config", &mut std::io::Cursor::new(content.clone()))
        .await
        .unwrap();

    let env = vec![
        json!({"name": "DB_PASSWORD", "valueFromSecret": "db-password"}),
        json!({"name": "PLAIN", "value": "plain"}),
    ];
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
    set_secret(&h, &MasterKey::generate(), "other-key", "x", &["wrongkey"]).await;
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
            .starts_with("Failed to resolve secret 'does-not-exist': not found")
            && e.error
                .contains("`narunctl secret set does-not-exist --app nosecret …`"),
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
    set_secret(&h, &h.secrets().key, "s", "v", &["app"]).await;
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
    let env = environ(pid);
    assert_eq!(
        env.get("S").map(String::as_str),
        Some("v"),
        "pid {pid}: {:?} ({env:?}); events: {:?}",
        std::fs::read_to_string(format!("/proc/{pid}/cmdline")),
        h.events("app")
            .iter()
            .map(|e| (e.status.as_str().to_string(), e.pid, e.error.clone()))
            .collect::<Vec<_>>()
    );

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_given_only_to_the_apps_of_its_scope() {
    let h = harness().await;
    let key = h.secrets().key.clone();
    set_secret(&h, &key, "b-only", "for b", &["b"]).await;
    set_secret(&h, &key, "shared", "for a and b", &["a", "b"]).await;
    set_secret(&h, &key, "fleet", "for anyone", &[]).await;
    // Go format (or an older narunctl): no scope.
    let legacy = key.seal("legacy", b"old value", None, None).unwrap();
    put(&h, "legacy", legacy.to_json()).await;
    // A KV writer without the key widens the scope of `b-only` into `b-copy` (same value)
    // and lets `a` use it: the entry no longer authenticates.
    let mut widened = key
        .seal_scoped("b-copy", b"for b", None, None, &Scope::apps(["b"]).unwrap())
        .unwrap();
    widened.apps.push("thief".into());
    put(&h, "b-copy", widened.to_json()).await;

    let uses = |names: &[(&str, &str)]| json!({"env": names.iter().map(|(var, secret)| json!({"name": var, "valueFromSecret": secret})).collect::<Vec<_>>()});
    h.deploy(
        "a",
        "v1",
        SLEEPER,
        uses(&[("S", "shared"), ("B", "b-only")]),
    )
    .await;
    h.deploy(
        "b",
        "v1",
        SLEEPER,
        uses(&[("S", "shared"), ("B", "b-only"), ("F", "fleet")]),
    )
    .await;
    h.deploy("old", "v1", SLEEPER, uses(&[("L", "legacy")]))
        .await;
    h.deploy("thief", "v1", SLEEPER, uses(&[("B", "b-copy")]))
        .await;

    // `b` is in every scope it uses; `fleet` (any app) needs no opt-in.
    let vars = environ(h.running_pid("b", 0).await);
    assert_eq!(vars.get("S").map(String::as_str), Some("for a and b"));
    assert_eq!(vars.get("B").map(String::as_str), Some("for b"));
    assert_eq!(vars.get("F").map(String::as_str), Some("for anyone"));

    // `a` may use `shared` but not `b-only`: refused, naming both and the fix.
    let e = secret_failure(&h, "a").await;
    assert!(
        e.error.starts_with(
            "Failed to resolve secret 'b-only': secret 'b-only' may not be used by app 'a': it is scoped to app b;"
        ) && e.error.contains("`narunctl secret set b-only --app b --app a`"),
        "{}",
        e.error
    );
    // Unscoped: refused by default, naming the opt-in.
    let e = secret_failure(&h, "old").await;
    assert!(
        e.error.contains("secret 'legacy' is unscoped")
            && e.error.contains("`narunctl secret set legacy --app old`")
            && e.error.contains("`[secrets] allow_unscoped = true`"),
        "{}",
        e.error
    );
    // A widened scope does not decrypt.
    let e = secret_failure(&h, "thief").await;
    assert!(
        e.error.contains("secret 'b-copy' cannot be decrypted"),
        "{}",
        e.error
    );
    for app in ["a", "old", "thief"] {
        never_started(&h, app);
    }
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unscoped_go_secrets_need_allow_unscoped() {
    let h = harness_with(true).await;
    let key = h.secrets().key.clone();
    // Sealed by Python `cryptography` exactly as the Go CLI does (AAD = name), when available.
    let python = python_sealed(&key, "api-token", "token-from-python");
    let go_value = match &python {
        Some(v) => {
            put(&h, "api-token", v.clone()).await;
            "token-from-python"
        }
        None => {
            eprintln!("python3 cryptography not available: sealing the Go format in Rust");
            let s = key
                .seal("api-token", b"token-from-rust", None, None)
                .unwrap();
            put(&h, "api-token", s.to_json()).await;
            "token-from-rust"
        }
    };
    // Scoped to `b`: allow_unscoped does not open it to others.
    set_secret(&h, &key, "b-only", "for b", &["b"]).await;
    // A KV writer strips the scope of a secret (making it look like a Go one).
    set_secret(&h, &key, "stripped", "never seen", &["b"]).await;
    let mut s = get(&h, "stripped").await;
    s.apps.clear();
    put(&h, "stripped", s.to_json()).await;

    h.deploy(
        "go",
        "v1",
        SLEEPER,
        json!({"env": [{"name": "API_TOKEN", "valueFromSecret": "api-token"}]}),
    )
    .await;
    h.deploy(
        "a",
        "v1",
        SLEEPER,
        json!({"env": [{"name": "B", "valueFromSecret": "b-only"}]}),
    )
    .await;
    h.deploy(
        "c",
        "v1",
        SLEEPER,
        json!({"env": [{"name": "X", "valueFromSecret": "stripped"}]}),
    )
    .await;

    let vars = environ(h.running_pid("go", 0).await);
    assert_eq!(vars.get("API_TOKEN").map(String::as_str), Some(go_value));
    let e = secret_failure(&h, "a").await;
    assert!(
        e.error.contains("may not be used by app 'a'"),
        "{}",
        e.error
    );
    let e = secret_failure(&h, "c").await;
    assert!(
        e.error.contains("secret 'stripped' cannot be decrypted"),
        "{}",
        e.error
    );
    never_started(&h, "a");
    never_started(&h, "c");
    h.finish().await;
}

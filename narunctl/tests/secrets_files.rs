//! `narunctl secret` and `narunctl files` end to end: the real binary against a real
//! nats-server, checked by reading the buckets directly (Go wire format), and once through a
//! real narund that gives the decrypted secret and the mounted file to a real app.

use async_nats::jetstream::{self, object_store};
use narun_test_support::{
    Narund, NatsServer, T, expect_failed, expect_ok, narunctl, narunctl_with, text, upload_script,
    wait_for,
};
use narun_wire::names;
use narun_wire::secrets::{MasterKey, StoredSecret};
use std::path::{Path, PathBuf};
use std::process::Output;

/// Exit code 1 with a single `error: …` line on stderr; returns that line.
fn failed(out: &Output) -> String {
    let err = expect_failed(out);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

fn key_file(dir: &Path) -> (MasterKey, PathBuf) {
    let key = MasterKey::generate();
    let path = dir.join("master.key");
    std::fs::write(&path, format!("{}\n", key.to_base64())).unwrap();
    (key, path)
}

async fn stored_secret(server: &NatsServer, name: &str) -> Option<StoredSecret> {
    let js = jetstream::new(server.connect().await);
    let kv = js.get_key_value(names::SECRETS_BUCKET).await.unwrap();
    kv.get(name)
        .await
        .unwrap()
        .map(|v| StoredSecret::from_json(name, &v).unwrap())
}

#[tokio::test]
async fn secret_set_ls_rm() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let (key, kf) = key_file(dir.path());
    let kf = kf.to_str().unwrap();

    // VALUE on the command line, key from --master-key-file.
    let out = narunctl(
        &url,
        &[
            "secret",
            "set",
            "db",
            "p4ss w0rd",
            "--app",
            "web",
            "--master-key-file",
            kf,
        ],
    )
    .await;
    assert_eq!(expect_ok(&out).trim(), "secret db created for app web");
    let first = stored_secret(&server, "db").await.unwrap();
    assert_eq!(first.name, "db");
    assert_eq!(first.nonce.len(), 12);
    assert_eq!(key.open(&first).unwrap(), b"p4ss w0rd");

    // The value from stdin (trailing newline dropped), the key from NARUN_MASTER_KEY_PATH;
    // created_at is kept, a new nonce is used.
    let out = narunctl_with(
        &url,
        &[
            "secret",
            "set",
            "db",
            "--description",
            "prod database",
            "--app",
            "web",
        ],
        &[("NARUN_MASTER_KEY_PATH", kf)],
        Some(b"from stdin\n"),
    )
    .await;
    assert_eq!(expect_ok(&out).trim(), "secret db updated for app web");
    let second = stored_secret(&server, "db").await.unwrap();
    assert_eq!(key.open(&second).unwrap(), b"from stdin");
    assert_eq!(second.created_at, first.created_at);
    assert_ne!(second.nonce, first.nonce);
    assert_eq!(second.description, "prod database");

    // --from-file, the key inline from NARUN_MASTER_KEY (Go's variable).
    let vf = dir.path().join("token.txt");
    std::fs::write(&vf, "tok\nen").unwrap();
    let out = narunctl_with(
        &url,
        &[
            "secret",
            "set",
            "token",
            "--from-file",
            vf.to_str().unwrap(),
            "--any-app",
        ],
        &[("NARUN_MASTER_KEY", &key.to_base64())],
        None,
    )
    .await;
    expect_ok(&out);
    let token = stored_secret(&server, "token").await.unwrap();
    assert_eq!(key.open(&token).unwrap(), b"tok\nen");

    // ls: metadata only, never the ciphertext.
    let out = narunctl(&url, &["secret", "ls", "--json"]).await;
    let stdout = expect_ok(&out);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let names_: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names_, ["db", "token"]);
    assert_eq!(v[0]["description"], "prod database");
    assert!(!stdout.contains("ciphertext") && !stdout.contains("nonce"));
    let table = expect_ok(&narunctl(&url, &["secret", "ls"]).await);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("prod database"), "{table}");

    // Errors: no key, a bad key, a bad name, a missing secret.
    let e = failed(&narunctl(&url, &["secret", "set", "x", "v", "--any-app"]).await);
    assert!(e.contains("no master key"), "{e}");
    let e = failed(
        &narunctl_with(
            &url,
            &["secret", "set", "x", "v", "--any-app"],
            &[("NARUN_MASTER_KEY", "c2hvcnQ=")],
            None,
        )
        .await,
    );
    assert!(e.contains("exactly 32 bytes"), "{e}");
    let e = failed(
        &narunctl(
            &url,
            &[
                "secret",
                "set",
                "bad name",
                "v",
                "--any-app",
                "--master-key-file",
                kf,
            ],
        )
        .await,
    );
    assert!(e.contains("invalid secret name"), "{e}");
    let e = failed(&narunctl(&url, &["secret", "rm", "nope", "-y"]).await);
    assert!(e.contains("secret nope not found"), "{e}");
    // Without -y and without a terminal nothing is asked and nothing is deleted.
    let e = failed(&narunctl(&url, &["secret", "rm", "db"]).await);
    assert!(
        e.contains("not confirmed: stdin is not a terminal; pass -y"),
        "{e}"
    );
    assert!(stored_secret(&server, "db").await.is_some());

    // rm purges: no value and no history of the ciphertext remain.
    assert_eq!(
        expect_ok(&narunctl(&url, &["secret", "rm", "db", "-y"]).await).trim(),
        "deleted secret db"
    );
    assert!(stored_secret(&server, "db").await.is_none());
    let js = jetstream::new(server.connect().await);
    let mut stream = js
        .get_stream(format!("KV_{}", names::SECRETS_BUCKET))
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    // One message for `token`, one purge marker for `db`: the ciphertexts of `db` are gone.
    assert_eq!(info.state.messages, 2, "{:?}", info.state);

    // Usage errors exit 2.
    let out = narunctl(&url, &["secret", "set"]).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn secret_set_names_the_apps_that_may_use_it() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let (key, kf) = key_file(dir.path());
    let kf = kf.to_str().unwrap();
    let set = |args: &[&str]| {
        let mut v = vec!["secret", "set"];
        v.extend_from_slice(args);
        v.extend_from_slice(&["--master-key-file", kf]);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let url = url.clone();
        async move {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            narunctl(&url, &a).await
        }
    };

    // A scope is required, and it is either apps or --any-app: usage errors (exit 2).
    let out = run(set(&["x", "v"])).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("--app") && err.contains("--any-app"), "{err}");
    let out = run(set(&["x", "v", "--app", "a", "--any-app"])).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // Not an app name: exit 1, naming it.
    let e = failed(&run(set(&["x", "v", "--app", "a.b"])).await);
    assert!(
        e.contains("invalid app scope") && e.contains("\"a.b\" is not an app name"),
        "{e}"
    );

    // Several apps (sorted, deduplicated), authenticated with the key; `secrets` works too.
    let out = run(set(&[
        "db", "pw", "--app", "web", "--app", "billing", "--app", "web",
    ]))
    .await;
    assert_eq!(
        expect_ok(&out).trim(),
        "secret db created for apps billing, web"
    );
    let db = stored_secret(&server, "db").await.unwrap();
    assert_eq!(db.apps, ["billing", "web"]);
    assert!(
        stored_secret(&server, "x").await.is_none(),
        "refused sets store nothing"
    );
    assert_eq!(key.open_for_app("db", &db, "web", false).unwrap(), b"pw");
    assert!(key.open_for_app("db", &db, "shop", false).is_err());
    let mut widened = db.clone();
    widened.apps.push("shop".into());
    assert!(key.open_for_app("db", &widened, "shop", false).is_err());

    // Setting it again replaces the scope.
    let mut args = set(&["db", "pw2", "--app", "shop"]);
    args[0] = "secrets".into();
    assert_eq!(
        expect_ok(&run(args).await).trim(),
        "secret db updated for app shop"
    );
    let db = stored_secret(&server, "db").await.unwrap();
    assert_eq!(db.apps, ["shop"]);
    assert_eq!(key.open_for_app("db", &db, "shop", false).unwrap(), b"pw2");
    assert!(key.open_for_app("db", &db, "web", false).is_err());

    // --any-app: still authenticated, any app may use it.
    expect_ok(&run(set(&["fleet", "f", "--any-app"])).await);
    let fleet = stored_secret(&server, "fleet").await.unwrap();
    assert_eq!(fleet.apps, ["*"]);
    assert_eq!(key.open_for_app("fleet", &fleet, "x", false).unwrap(), b"f");

    // A Go-format secret (no scope) is listed as unscoped.
    let js = jetstream::new(server.connect().await);
    let kv = js.get_key_value(names::SECRETS_BUCKET).await.unwrap();
    let go = key.seal("legacy", b"l", None, None).unwrap();
    kv.put("legacy", go.to_json().into()).await.unwrap();

    let v: serde_json::Value = serde_json::from_str(&expect_ok(
        &narunctl(&url, &["secret", "ls", "--json"]).await,
    ))
    .unwrap();
    let apps: Vec<(&str, &serde_json::Value)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), &r["apps"]))
        .collect();
    assert_eq!(
        apps,
        [
            ("db", &serde_json::json!(["shop"])),
            ("fleet", &serde_json::json!(["*"])),
            ("legacy", &serde_json::Value::Null),
        ]
    );
    let table = expect_ok(&narunctl(&url, &["secret", "ls"]).await);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0][..2], ["NAME", "APPS"], "{table}");
    assert_eq!(lines[1][..2], ["db", "shop"], "{table}");
    assert_eq!(lines[2][..2], ["fleet", "(any"], "{table}");
    assert_eq!(lines[3][..2], ["legacy", "(unscoped)"], "{table}");
}

#[tokio::test]
async fn files_add_ls_rm() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    let content = "x = 1\n".repeat(50_000); // several object chunks
    std::fs::write(&path, &content).unwrap();

    let out = narunctl(
        &url,
        &["files", "add", "app-config", path.to_str().unwrap()],
    )
    .await;
    let stdout = expect_ok(&out);
    assert!(
        stdout.contains("-> app-config (300000 bytes, SHA-256="),
        "{stdout}"
    );

    let js = jetstream::new(server.connect().await);
    let store = js.get_object_store(names::FILES_BUCKET).await.unwrap();
    let info = store.info("app-config").await.unwrap();
    assert_eq!(info.size, content.len());
    assert_eq!(
        info.metadata.get("original-filename").map(String::as_str),
        Some("app.toml")
    );
    let ts = info.metadata.get("upload-timestamp").unwrap();
    assert!(
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(),
        "{ts}"
    );
    assert_eq!(
        info.description.as_deref(),
        Some("Shared file 'app-config' uploaded from 'app.toml'")
    );

    let v: serde_json::Value = serde_json::from_str(&expect_ok(
        &narunctl(&url, &["files", "ls", "--json"]).await,
    ))
    .unwrap();
    assert_eq!(v[0]["name"], "app-config");
    assert_eq!(v[0]["size"], 300_000);
    assert_eq!(v[0]["original_filename"], "app.toml");
    let table = expect_ok(&narunctl(&url, &["files", "ls"]).await);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("app-config"), "{table}");

    let e = failed(&narunctl(&url, &["files", "add", "a/b", path.to_str().unwrap()]).await);
    assert!(e.contains("must not be empty or contain '/'"), "{e}");
    let e = failed(&narunctl(&url, &["files", "add", "d", dir.path().to_str().unwrap()]).await);
    assert!(e.contains("is not a regular file"), "{e}");

    assert_eq!(
        expect_ok(&narunctl(&url, &["files", "rm", "app-config", "-y"]).await).trim(),
        "deleted file app-config"
    );
    let gone = store.info("app-config").await;
    // Deleted objects stay as a tombstone (`deleted: true`) or are not found at all.
    assert!(
        matches!(&gone, Ok(i) if i.deleted)
            || matches!(&gone, Err(e) if e.kind() == object_store::InfoErrorKind::NotFound),
        "{gone:?}"
    );
    let e = failed(&narunctl(&url, &["files", "rm", "app-config", "-y"]).await);
    assert!(e.contains("not found"), "{e}");
    let e = failed(&narunctl(&url, &["files", "rm", "whatever"]).await);
    assert!(e.contains("not found"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narund_gives_the_app_the_secret_and_the_file() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let (_key, kf) = key_file(dir.path());
    let narund = Narund::start(
        &server,
        "sec-node",
        &format!("[secrets]\nmaster_key_file = \"{}\"\n", kf.display()),
    );

    expect_ok(
        &narunctl(
            &url,
            &[
                "secret",
                "set",
                "db-password",
                "hunter2 = ok",
                "--app",
                "vault",
                "--master-key-file",
                kf.to_str().unwrap(),
            ],
        )
        .await,
    );
    let conf = dir.path().join("settings.ini");
    std::fs::write(&conf, "[app]\ngreeting = hi\n").unwrap();
    expect_ok(&narunctl(&url, &["files", "add", "settings", conf.to_str().unwrap()]).await);

    // The app copies what it got into its work dir, then stays up.
    // (Written to a temporary name and renamed, so the test never reads a partial file.)
    let script = "#!/bin/sh\nprintf '%s' \"$DB_PASSWORD\" > s.tmp && mv s.tmp seen-secret\n\
                  cp etc/settings.ini f.tmp && mv f.tmp seen-file\nexec sleep 1000\n";
    upload_script(&server, "vault", "v1", script).await;
    let spec = dir.path().join("vault.toml");
    std::fs::write(
        &spec,
        "name = \"vault\"\ntag = \"v1\"\n\
         env = [{ name = \"DB_PASSWORD\", valueFromSecret = \"db-password\" }]\n\
         [[nodes]]\nname = \"sec-node\"\nreplicas = 1\n\
         [[mounts]]\npath = \"etc/settings.ini\"\nsource = { objectStore = \"settings\" }\n",
    )
    .unwrap();
    expect_ok(
        &narunctl(
            &url,
            &["deploy", "-f", spec.to_str().unwrap(), "--no-binary"],
        )
        .await,
    );

    let work = narund.data_dir().join("instances/vault-0/work");
    let seen = wait_for("the app to write what it got", T, || {
        let secret = std::fs::read_to_string(work.join("seen-secret")).ok();
        let file = std::fs::read_to_string(work.join("seen-file")).ok();
        async move {
            match (secret, file) {
                (Some(s), Some(f)) => Some((s, f)),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(seen.0, "hunter2 = ok");
    assert_eq!(seen.1, "[app]\ngreeting = hi\n");
}

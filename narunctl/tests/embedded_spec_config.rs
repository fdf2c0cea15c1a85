//! The spec travels with the binary, and apps read a typed configuration (issue 23), with
//! the real narunctl, a real nats-server and the real example app `configured`
//! (examples/configured: `narun::embed_spec!("../narun.toml")` and `narun::config`).
//!
//! * `inspect` shows the embedded spec, platform, size and SHA-256; a corrupted `.narun`
//!   section is a clear error in `inspect` and `deploy`;
//! * `deploy BIN` without a spec file writes the embedded spec; flags override its values;
//!   `-f SPEC` replaces it;
//! * `config set|get|edit`: invalid documents are refused before anything is written; the
//!   running app sees each new valid value (within the wait bound), keeps its value when
//!   one does not pass its own validation.

use async_nats::jetstream;
use narun_test_support::{
    NatsServer, T, expect_failed, expect_ok, narunctl, narunctl_with, text, wait_for, workspace_bin,
};
use std::path::{Path, PathBuf};
use tokio::io::AsyncBufReadExt;

fn configured() -> PathBuf {
    workspace_bin("configured", "configured", &[])
}

async fn stored_spec(server: &NatsServer, app: &str) -> serde_json::Value {
    let kv = jetstream::new(server.connect().await)
        .get_key_value(narun_wire::names::APP_CONFIGS_BUCKET)
        .await
        .unwrap();
    let e = kv.entry(app).await.unwrap().expect("a stored spec");
    serde_json::from_slice(&e.value).unwrap()
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A copy of `bin` in `dir` with the first `from` replaced by `to` (same length).
fn patched(bin: &Path, dir: &Path, from: &[u8], to: &[u8]) -> PathBuf {
    let mut bytes = std::fs::read(bin).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the bytes to patch");
    bytes[at..at + to.len()].copy_from_slice(to);
    let p = dir.join("patched");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_uses_the_spec_embedded_in_the_binary_and_flags_override_it() {
    let bin = configured();
    let bin_s = bin.to_str().unwrap();
    let server = NatsServer::start();
    let url = server.url();

    // inspect: no NATS needed.
    let out = expect_ok(&narunctl("nats://127.0.0.1:1", &["inspect", bin_s]).await);
    assert!(
        out.contains("spec:      embedded (section .narun, ")
            && out.contains("app greeter, tag v1, valid"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "platform:  linux/{}",
            narun_wire::names::go_arch()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("sha256:    {}", sha256_hex(&bin))),
        "{out}"
    );
    assert!(out.contains("  | replicas = 2"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&expect_ok(
        &narunctl(&url, &["inspect", "--json", bin_s]).await,
    ))
    .unwrap();
    assert_eq!(json[0]["spec"]["app"], "greeter");
    assert_eq!(json[0]["spec"]["valid"], true);
    assert_eq!(json[0]["size"], std::fs::metadata(&bin).unwrap().len());

    // deploy BIN: the embedded spec, as written in examples/configured/narun.toml.
    let out = narunctl(&url, &["deploy", "--allow-offline", bin_s]).await;
    expect_ok(&out);
    assert!(
        text(&out.stderr).contains("using the spec embedded in"),
        "{}",
        text(&out.stderr)
    );
    let spec = stored_spec(&server, "greeter").await;
    assert_eq!(spec["tag"], "v1");
    assert_eq!(spec["stopTimeoutSec"], 5);
    assert_eq!(
        spec["nodes"],
        serde_json::json!([{"labels": {"role": "edge"}, "replicas": 2}])
    );
    assert!(
        spec["binaryDigests"]
            .as_object()
            .is_some_and(|d| !d.is_empty()),
        "{spec}"
    );

    // apps diff reads the embedded spec as deploy does (and writes nothing).
    let out = expect_ok(
        &narunctl(
            &url,
            &["apps", "diff", "--tag", "v2", "--replicas", "3", bin_s],
        )
        .await,
    );
    assert!(
        out.contains("-       \"replicas\": 2")
            && out.contains("+       \"replicas\": 3")
            && out.contains("+   \"tag\": \"v2\""),
        "{out}"
    );
    assert_eq!(stored_spec(&server, "greeter").await["tag"], "v1");

    // Flags override single values; the rest of the embedded spec stays.
    expect_ok(
        &narunctl(
            &url,
            &[
                "deploy",
                "--allow-offline",
                "--tag",
                "v2",
                "--replicas",
                "3",
                bin_s,
            ],
        )
        .await,
    );
    let spec = stored_spec(&server, "greeter").await;
    assert_eq!(spec["tag"], "v2");
    assert_eq!(spec["stopTimeoutSec"], 5);
    assert_eq!(
        spec["nodes"],
        serde_json::json!([{"labels": {"role": "edge"}, "replicas": 3}])
    );

    // -f SPEC is the whole spec: the embedded one is not used.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("other.toml");
    std::fs::write(
        &file,
        "name = \"greeter\"\ntag = \"v3\"\n[[nodes]]\nname = \"n9\"\nreplicas = 1\n",
    )
    .unwrap();
    let out = narunctl(
        &url,
        &[
            "deploy",
            "--allow-offline",
            "-f",
            file.to_str().unwrap(),
            bin_s,
        ],
    )
    .await;
    expect_ok(&out);
    assert!(
        text(&out.stderr).contains("is not used"),
        "{}",
        text(&out.stderr)
    );
    let spec = stored_spec(&server, "greeter").await;
    assert_eq!(spec["tag"], "v3");
    assert_eq!(
        spec["nodes"],
        serde_json::json!([{"name": "n9", "replicas": 1}])
    );
    assert!(spec.get("stopTimeoutSec").is_none(), "{spec}");

    // A corrupted record: a clear error naming the binary and the section, nothing
    // written; inspect says the same.
    let bad = patched(&bin, dir.path(), b"NARUNSP1", b"NARUNSPX");
    let bad_s = bad.to_str().unwrap();
    let err = expect_failed(&narunctl(&url, &["deploy", "--allow-offline", bad_s]).await);
    assert!(
        err.contains("the embedded spec (section .narun) is invalid")
            && err.contains("not \"NARUNSP1\"")
            && err.contains(bad_s),
        "{err}"
    );
    let out = narunctl(&url, &["inspect", bad_s]).await;
    let err = expect_failed(&out);
    assert!(err.contains("not \"NARUNSP1\""), "{err}");
    // A record that claims more bytes than its section has.
    let mut len = b"NARUNSP1".to_vec();
    len.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
    let bytes = std::fs::read(&bin).unwrap();
    let at = bytes.windows(8).position(|w| w == b"NARUNSP1").unwrap();
    let bad = patched(&bin, dir.path(), &bytes[at..at + 12], &len);
    let err =
        expect_failed(&narunctl(&url, &["deploy", "--allow-offline", bad.to_str().unwrap()]).await);
    assert!(err.contains("says 2147483647 bytes"), "{err}");
    assert_eq!(stored_spec(&server, "greeter").await["tag"], "v3");

    // No spec anywhere.
    let err = expect_failed(&narunctl(&url, &["deploy", "--allow-offline", "/bin/true"]).await);
    assert!(err.contains("no spec: give -f SPEC"), "{err}");
}

/// The app's stdout lines, as they come.
struct App {
    _child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl App {
    fn start(url: &str) -> App {
        let mut child = tokio::process::Command::new(configured())
            .env_clear()
            .env("NATS_URL", url)
            .env("NARUN_APP_NAME", "greeter")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(l)) = out.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        App {
            _child: child,
            lines,
        }
    }

    /// Wait (bounded by T) for a line containing every one of `parts`.
    async fn line(&mut self, parts: &[&str]) -> String {
        tokio::time::timeout(T, async {
            loop {
                let l = self.lines.recv().await.expect("the app's stdout ended");
                if parts.iter().all(|p| l.contains(p)) {
                    return l;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no line with {parts:?} from the app within {T:?}"))
    }
}

/// The body of `narunctl request` (it prints the status line and headers first).
fn body(out: &str) -> String {
    out.split_once("\n\n")
        .map(|(_, b)| b)
        .unwrap_or(out)
        .to_string()
}

async fn greet(url: &str) -> String {
    body(&expect_ok(
        &narunctl(url, &["request", "greeter", "/greeter/bob"]).await,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_follows_the_configuration_narunctl_sets() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.to_str().unwrap().to_owned()
    };

    // Refused before anything is written, each naming what is wrong.
    let out = narunctl_with(
        &url,
        &["config", "set", "greeter", "-"],
        &[],
        Some(b"greeting = \n"),
    )
    .await;
    let err = expect_failed(&out);
    assert!(
        err.contains("stdin is not valid TOML")
            && err.contains("line 1")
            && err.contains("nothing was written"),
        "{err}"
    );
    let err = expect_failed(
        &narunctl(
            &url,
            &["config", "set", "greeter", &file("a.json", "[1, 2]")],
        )
        .await,
    );
    assert!(err.contains("must be a JSON object"), "{err}");
    let err = expect_failed(
        &narunctl(
            &url,
            &["config", "set", "greeter", &file("b.json", "{\"a\": ")],
        )
        .await,
    );
    assert!(err.contains("b.json is not valid JSON"), "{err}");
    let err =
        expect_failed(&narunctl(&url, &["config", "set", "a.b", &file("c.json", "{}")]).await);
    assert!(err.contains("'.' is not allowed"), "{err}");
    let err = expect_failed(&narunctl(&url, &["config", "get", "greeter"]).await);
    assert!(err.contains("no configuration for greeter"), "{err}");

    // TOML in, JSON stored; get shows it and its revision.
    let out = expect_ok(
        &narunctl(
            &url,
            &[
                "config",
                "set",
                "greeter",
                &file("c1.toml", "greeting = \"Hi\"\n"),
            ],
        )
        .await,
    );
    assert!(out.contains("(narun-config revision 1)"), "{out}");
    let out = narunctl(&url, &["config", "get", "greeter"]).await;
    let value: serde_json::Value = serde_json::from_str(&expect_ok(&out)).unwrap();
    assert_eq!(value, serde_json::json!({"greeting": "Hi"}));
    assert!(
        text(&out.stderr).contains("revision 1"),
        "{}",
        text(&out.stderr)
    );

    // The app starts with revision 1.
    let mut app = App::start(&url);
    let answer = wait_for("the app to answer", T, || {
        let url = url.clone();
        async move {
            let out = narunctl(&url, &["request", "greeter", "/greeter/bob"]).await;
            out.status.success().then(|| body(&text(&out.stdout)))
        }
    })
    .await;
    assert_eq!(answer, "Hi, bob! (config revision 1)\n");

    // A new value: the app applies it (its log says so) and answers with it.
    expect_ok(
        &narunctl(
            &url,
            &[
                "config",
                "set",
                "greeter",
                &file("c2.json", r#"{"greeting": "Howdy", "max_name_len": 2}"#),
            ],
        )
        .await,
    );
    app.line(&["configuration updated", "revision=2"]).await;
    // --expect-revision: refused when someone wrote since.
    let err = expect_failed(
        &narunctl(
            &url,
            &[
                "config",
                "set",
                "greeter",
                &file("c2b.toml", "greeting = \"Late\"\n"),
                "--expect-revision",
                "1",
            ],
        )
        .await,
    );
    assert!(
        err.contains("conflict: the configuration of greeter is no longer at revision 1"),
        "{err}"
    );
    assert_eq!(greet(&url).await, "Howdy, bo! (config revision 2)\n");

    // Valid JSON the app's validation refuses: rejected by the app, previous value kept.
    expect_ok(
        &narunctl(
            &url,
            &[
                "config",
                "set",
                "greeter",
                &file("c3.toml", "greeting = \"\"\n"),
            ],
        )
        .await,
    );
    let l = app.line(&["configuration rejected"]).await;
    assert!(
        l.contains("greeting must not be empty") && l.contains("kept=2"),
        "{l}"
    );
    assert_eq!(greet(&url).await, "Howdy, bo! (config revision 2)\n");

    // edit: through $EDITOR, checked, written at the revision it read.
    let out = narunctl_with(
        &url,
        &["config", "edit", "greeter", "--toml"],
        &[(
            "EDITOR",
            "sed -i -e 's/greeting = \"\"/greeting = \"Hey\"/'",
        )],
        None,
    )
    .await;
    assert!(
        expect_ok(&out).contains("(narun-config revision 4)"),
        "{}",
        text(&out.stdout)
    );
    app.line(&["configuration updated", "revision=4"]).await;
    assert_eq!(greet(&url).await, "Hey, bob! (config revision 4)\n");
    // An edit that breaks the document: refused, kept in a file, nothing written.
    let out = narunctl_with(
        &url,
        &["config", "edit", "greeter"],
        &[("EDITOR", "sed -i -e 's/}/]/'")],
        None,
    )
    .await;
    let err = expect_failed(&out);
    assert!(
        err.contains("the edited configuration is not valid JSON")
            && err.contains("Your edit is kept in"),
        "{err}"
    );
    let kept = err
        .split("kept in ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap()
        .to_string();
    assert!(std::fs::read_to_string(&kept).unwrap().contains(']'));
    std::fs::remove_file(&kept).unwrap();
    let out = expect_ok(&narunctl(&url, &["config", "get", "greeter", "--json"]).await);
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["revision"], 4);
    assert_eq!(got["value"]["greeting"], "Hey");
}

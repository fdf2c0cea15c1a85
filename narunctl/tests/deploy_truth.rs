//! Deploys cannot lie (issue 20): the real narunctl against a real nats-server and narund.
//!
//! * a tag's binary is immutable: another binary under an existing tag is refused with both
//!   digests, the identical one is a no-op, and `--force` replaces it *and* makes the node
//!   run the new digest (the spec pins it in `binaryDigests`); a node refuses an object
//!   that is not the one its spec pins;
//! * a spec that selects no online node is refused (listing the online nodes and their
//!   labels) unless `--allow-offline`; the flag form defaults to this host's node id only
//!   when that node is online;
//! * `deploy --dry-run` and `apps diff` show the spec diff and per node what starts and
//!   stops, and write nothing;
//! * an upload on a terminal shows a progress bar; piped, it does not.

use async_nats::jetstream;
use narun_test_support::{
    Narund, NatsServer, T, apps, expect_failed, expect_ok, narunctl, narunctl_bin, text, wait_for,
};
use narun_wire::events::NodeState;
use narun_wire::names;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_str().unwrap().to_owned()
}

/// `/bin/sleep`, with `extra` appended when not empty (the kernel ignores trailing bytes,
/// so it still runs): two binaries with different digests that both run.
fn sleep_binary(dir: &Path, name: &str, extra: &[u8]) -> PathBuf {
    let mut bytes = std::fs::read("/bin/sleep").unwrap();
    bytes.extend_from_slice(extra);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn nats_digest(path: &Path) -> String {
    use base64::Engine as _;
    use sha2::Digest;
    let d = sha2::Sha256::digest(std::fs::read(path).unwrap());
    format!(
        "SHA-256={}",
        base64::engine::general_purpose::URL_SAFE.encode(d)
    )
}

/// Wait until the node's heartbeat shows `instance` running the binary with hex `digest`.
async fn wait_digest(server: &NatsServer, node: &str, instance: &str, digest: &str) {
    let kv = jetstream::new(server.connect().await)
        .get_key_value(names::NODE_STATES_BUCKET)
        .await
        .unwrap();
    wait_for(
        &format!("{node}'s heartbeat to show {instance} running digest {digest}"),
        T,
        || {
            let kv = kv.clone();
            async move {
                let v = kv.get(node).await.ok()??;
                let s: NodeState = serde_json::from_slice(&v).ok()?;
                s.instances
                    .iter()
                    .any(|i| {
                        i.instance_id == instance
                            && i.digest == digest
                            && i.status.to_string() == "running"
                    })
                    .then_some(())
            }
        },
    )
    .await;
}

async fn object_info(
    server: &NatsServer,
    object: &str,
) -> Option<async_nats::jetstream::object_store::ObjectInfo> {
    let js = jetstream::new(server.connect().await);
    let store = js.get_object_store(names::APP_BINARIES_BUCKET).await.ok()?;
    store.info(object).await.ok()
}

async fn spec_revision(server: &NatsServer, app: &str) -> Option<u64> {
    let js = jetstream::new(server.connect().await);
    let kv = js.get_key_value(names::APP_CONFIGS_BUCKET).await.ok()?;
    kv.entry(app).await.ok()?.map(|e| e.revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_is_immutable_unless_forced_and_force_switches_the_node() {
    const NODE: &str = "imm-node";
    let server = NatsServer::start();
    let url = server.url();
    let _narund = Narund::start(&server, NODE, "");
    let dir = tempfile::tempdir().unwrap();
    let a = sleep_binary(dir.path(), "imm", b"");
    let b = sleep_binary(dir.path(), "imm-b", b"\0another build");
    let spec = write(
        dir.path(),
        "imm.toml",
        &format!(
            "name = \"imm\"\ntag = \"v1\"\nargs = [\"1000\"]\nsettleSec = 1\n\
             [[nodes]]\nname = \"{NODE}\"\nreplicas = 1\n"
        ),
    );
    let object = names::binary_object_name("imm", "v1", names::go_os(), names::go_arch());
    let deploy = |bin: &Path, extra: &[&str]| {
        let mut args = vec!["deploy", "-f", &spec];
        args.extend_from_slice(extra);
        let bin = bin.to_str().unwrap().to_owned();
        let url = url.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
            args.push(&bin);
            narunctl(&url, &args).await
        }
    };

    expect_ok(&deploy(&a, &["--wait=60s"]).await);
    wait_digest(&server, NODE, "imm-0", &sha256_hex(&a)).await;
    let before = object_info(&server, &object).await.unwrap();
    let rev = spec_revision(&server, "imm").await.unwrap();

    // Another binary under the same tag: refused, both digests named, nothing changed.
    let err = expect_failed(&deploy(&b, &[]).await);
    assert!(
        err.contains(&nats_digest(&a)) && err.contains(&nats_digest(&b)),
        "{err}"
    );
    assert!(
        err.contains("immutable") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let after = object_info(&server, &object).await.unwrap();
    assert_eq!(after.digest, before.digest);
    assert_eq!(after.nuid, before.nuid);
    assert_eq!(spec_revision(&server, "imm").await, Some(rev));

    // The identical binary again: a no-op success (no upload, no new spec revision).
    let out = expect_ok(&deploy(&a, &[]).await);
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(
        object_info(&server, &object).await.unwrap().nuid,
        before.nuid
    );
    assert_eq!(spec_revision(&server, "imm").await, Some(rev));

    // --force: the object is replaced, the spec pins the new digest, and the node runs it.
    let out = expect_ok(&deploy(&b, &["--force", "--wait=60s"]).await);
    assert!(out.contains("uploaded"), "{out}");
    assert_eq!(
        object_info(&server, &object).await.unwrap().digest,
        Some(nats_digest(&b))
    );
    let js = jetstream::new(server.connect().await);
    let kv = js.get_key_value(names::APP_CONFIGS_BUCKET).await.unwrap();
    let stored =
        narun_spec::AppSpec::from_kv_bytes(&kv.get("imm").await.unwrap().unwrap()).unwrap();
    assert_eq!(
        stored.binary_digest(names::go_os(), names::go_arch()),
        Some(nats_digest(&b).as_str())
    );
    wait_digest(&server, NODE, "imm-0", &sha256_hex(&b)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_without_an_online_node_is_refused_and_the_flag_form_defaults_to_this_host() {
    let host = names::default_node_id().unwrap();
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bin = sleep_binary(dir.path(), "lone", b"");
    let b = bin.to_str().unwrap();

    // No narund at all: the flag form names this host's node id, which is not online.
    let err = expect_failed(
        &narunctl(
            &url,
            &[
                "--timeout",
                "1s",
                "deploy",
                "--name",
                "lone",
                "--tag",
                "v1",
                b,
            ],
        )
        .await,
    );
    assert!(
        err.contains(&format!("this host's node {host} is not online")) && err.contains("none"),
        "{err}"
    );
    assert!(object_info(&server, "lone-v1-linux-amd64").await.is_none());

    let _narund = Narund::start(&server, &host, "[labels]\nrole = \"edge\"\n");
    let kv = jetstream::new(server.connect().await);
    wait_for("the node's first heartbeat", T, || {
        let kv = kv.clone();
        let host = host.clone();
        async move {
            let s = kv.get_key_value(names::NODE_STATES_BUCKET).await.ok()?;
            s.get(&host).await.ok()?.map(|_| ())
        }
    })
    .await;

    // A spec naming a node that does not exist: refused, the online nodes listed.
    let spec = write(
        dir.path(),
        "ghost.toml",
        "name = \"lone\"\ntag = \"v1\"\nargs = [\"1000\"]\n[[nodes]]\nname = \"ghost\"\nreplicas = 1\n",
    );
    let err = expect_failed(&narunctl(&url, &["--timeout", "1s", "deploy", "-f", &spec, b]).await);
    assert!(err.contains("selects no online node"), "{err}");
    assert!(err.contains(&format!("{host} (role=edge)")), "{err}");
    assert!(err.contains("--allow-offline"), "{err}");
    assert_eq!(spec_revision(&server, "lone").await, None);

    // --allow-offline writes it.
    expect_ok(&narunctl(&url, &["deploy", "-f", &spec, "--allow-offline", b]).await);
    assert!(spec_revision(&server, "lone").await.is_some());

    // The flag form now defaults to this host's node, which is online. (Not waited for:
    // the flag form passes `sleep` no argument.)
    let out = narunctl(&url, &["deploy", "--name", "flagapp", "--tag", "v1", b]).await;
    expect_ok(&out);
    assert!(
        text(&out.stderr).contains(&format!("this host's node {host}")),
        "{}",
        text(&out.stderr)
    );
    let js = jetstream::new(server.connect().await);
    let kv = js.get_key_value(names::APP_CONFIGS_BUCKET).await.unwrap();
    let stored =
        narun_spec::AppSpec::from_kv_bytes(&kv.get("flagapp").await.unwrap().unwrap()).unwrap();
    assert_eq!(stored.nodes[0].name.as_deref(), Some(host.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_apps_diff_show_the_change_and_write_nothing() {
    const NODE: &str = "dry-node";
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let a = sleep_binary(dir.path(), "dry", b"");
    let b = sleep_binary(dir.path(), "dry-b", b"\0v2");
    let spec = |tag: &str, replicas: u32| {
        write(
            dir.path(),
            &format!("dry-{tag}-{replicas}.toml"),
            &format!(
                "name = \"dry\"\ntag = \"{tag}\"\nargs = [\"1000\"]\nsettleSec = 1\n\
                 [[nodes]]\nname = \"{NODE}\"\nreplicas = {replicas}\n"
            ),
        )
    };
    let (v1, v2) = (spec("v1", 1), spec("v2", 2));
    let js = jetstream::new(server.connect().await);

    // Nothing exists yet: a dry run creates no bucket and no object.
    let out = narunctl(
        &url,
        &[
            "deploy",
            "-f",
            &v1,
            "--dry-run",
            "--allow-offline",
            a.to_str().unwrap(),
        ],
    )
    .await;
    let stdout = expect_ok(&out);
    assert!(stdout.contains("new app"), "{stdout}");
    assert!(stdout.contains("+   \"tag\": \"v1\""), "{stdout}");
    assert!(
        stdout.contains("dry run: nothing was uploaded or written"),
        "{stdout}"
    );
    assert!(js.get_key_value(names::APP_CONFIGS_BUCKET).await.is_err());
    assert!(
        js.get_object_store(names::APP_BINARIES_BUCKET)
            .await
            .is_err()
    );

    let _narund = Narund::start(&server, NODE, "");
    expect_ok(
        &narunctl(
            &url,
            &["deploy", "-f", &v1, "--wait=60s", a.to_str().unwrap()],
        )
        .await,
    );
    wait_digest(&server, NODE, "dry-0", &sha256_hex(&a)).await;
    let rev = spec_revision(&server, "dry").await.unwrap();
    let v2_object = names::binary_object_name("dry", "v2", names::go_os(), names::go_arch());

    // v2 with 2 replicas: the diff of the tag, the upload, and on the node a replacement
    // and a start.
    for args in [
        vec!["deploy", "-f", &v2, "--dry-run", b.to_str().unwrap()],
        vec!["apps", "diff", "-f", &v2, b.to_str().unwrap()],
    ] {
        let stdout = expect_ok(&narunctl(&url, &args).await);
        assert!(
            stdout.contains(&format!("app-configs revision {rev}")),
            "{stdout}"
        );
        assert!(stdout.contains("-   \"tag\": \"v1\""), "{stdout}");
        assert!(stdout.contains("+   \"tag\": \"v2\""), "{stdout}");
        assert!(
            stdout.contains(&format!("{v2_object}  upload {}", b.display())),
            "{stdout}"
        );
        let row = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(NODE))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(
            row.contains("online") && row.contains("replace dry-0, start dry-1"),
            "{row}"
        );
    }
    // The same as JSON.
    let out = expect_ok(
        &narunctl(
            &url,
            &["apps", "diff", "--json", "-f", &v2, b.to_str().unwrap()],
        )
        .await,
    );
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["current_revision"], rev);
    assert_eq!(plan["spec"]["tag"], "v2");
    assert_eq!(plan["binaries"][0]["action"], "upload");
    assert_eq!(plan["nodes"][0]["node"], NODE);
    assert_eq!(
        plan["nodes"][0]["changes"],
        serde_json::json!(["replace dry-0", "start dry-1"])
    );
    assert_eq!(plan["refusals"], serde_json::json!([]));
    // Nothing was written.
    assert_eq!(spec_revision(&server, "dry").await, Some(rev));
    assert!(object_info(&server, &v2_object).await.is_none());

    // binaryDigests in a spec file is not taken (deploy writes it), even when it is garbage.
    let garbage = write(
        dir.path(),
        "garbage.toml",
        &format!(
            "name = \"dry\"\ntag = \"v1\"\nargs = [\"1000\"]\nsettleSec = 1\n\
             binaryDigests = {{ \"dry-v1-linux-amd64\" = \"SHA-256=nope\" }}\n\
             [[nodes]]\nname = \"{NODE}\"\nreplicas = 1\n"
        ),
    );
    let out = narunctl(&url, &["apps", "diff", "-f", &garbage]).await;
    let stdout = expect_ok(&out);
    assert!(
        text(&out.stderr).contains("binaryDigests in"),
        "{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("  unchanged"), "{stdout}");

    // The same spec again: unchanged on the node.
    let stdout = expect_ok(&narunctl(&url, &["apps", "diff", "-f", &v1]).await);
    assert!(stdout.contains("  unchanged"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(NODE))
        .unwrap();
    assert!(row.ends_with("unchanged"), "{row}");

    // A dry run of a deploy that would be refused says why and exits 1; `apps diff`
    // only notes it.
    let out = narunctl(
        &url,
        &["deploy", "-f", &v1, "--dry-run", b.to_str().unwrap()],
    )
    .await;
    let err = expect_failed(&out);
    assert!(
        err.contains("would be refused") && err.contains("immutable"),
        "{err}"
    );
    assert!(
        text(&out.stdout).contains("only with --force"),
        "{}",
        text(&out.stdout)
    );
    let stdout =
        expect_ok(&narunctl(&url, &["apps", "diff", "-f", &v1, b.to_str().unwrap()]).await);
    assert!(
        stdout.contains("note: deploy would refuse this"),
        "{stdout}"
    );
    assert_eq!(spec_revision(&server, "dry").await, Some(rev));
}

/// Run the shell command line `line` on a pseudo-terminal (`script` from util-linux) with
/// narunctl's clean test environment; returns what the terminal showed.
async fn on_a_terminal(line: &str) -> String {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = narun_test_support::narunctl_cmd(home.path());
    let cmd = cmd.as_std_mut();
    let mut script = tokio::process::Command::new("script");
    script
        .args(["-qec", line, "/dev/null"])
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
    for (k, v) in cmd.get_envs() {
        if v.is_none() {
            script.env_remove(k);
        }
    }
    let out = narun_test_support::run(script).await;
    let tty = text(&out.stdout);
    assert!(out.status.success(), "{tty}\n{}", text(&out.stderr));
    tty
}

#[tokio::test]
async fn an_upload_shows_a_progress_bar_on_a_terminal_and_none_when_piped() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bin = apps::fake_elf(dir.path(), "big", 0, apps::elf_machine(), 10 * 1024 * 1024);
    let bin = bin.to_str().unwrap();

    // Piped: no progress noise on stderr.
    let out = narunctl(
        &url,
        &[
            "deploy",
            "--name",
            "big",
            "--tag",
            "v1",
            "--allow-offline",
            bin,
        ],
    )
    .await;
    expect_ok(&out);
    let err = text(&out.stderr);
    assert!(!err.contains("ETA") && !err.contains('\r'), "{err:?}");

    // On a terminal (`script` gives narunctl a pty): the bar, with bytes, rate and ETA.
    let tty = on_a_terminal(&format!(
        "{} --nats {url} deploy --name big --tag v2 --allow-offline {bin}",
        narunctl_bin().display()
    ))
    .await;
    assert!(tty.contains("big-v2-linux-"), "{tty}");
    assert!(tty.contains("10.0 MiB / 10.0 MiB"), "{tty:?}");
    assert!(
        tty.contains("100%") && tty.contains("/s") && tty.contains("ETA"),
        "{tty:?}"
    );
    assert!(tty.contains("uploaded"), "{tty}");

    // --json on a terminal: no bar, one JSON object.
    let tty = on_a_terminal(&format!(
        "{} --nats {url} deploy --json --name big --tag v3 --allow-offline {bin}",
        narunctl_bin().display()
    ))
    .await;
    assert!(!tty.contains("ETA"), "{tty:?}");
    let json = &tty[tty.find('{').unwrap_or_else(|| panic!("{tty}"))..];
    let result: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(result["binaries"][0]["action"], "uploaded");
    assert_eq!(result["tag"], "v3");
}

/// narund itself refuses an object that was replaced behind the spec's back: the spec pins
/// one digest (`binaryDigests`), the object holds another; the instance fails with reason
/// `verify` and never runs the other bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_an_object_that_is_not_the_one_the_spec_pins() {
    const NODE: &str = "pin-node";
    let server = NatsServer::start();
    let b = narun_test_support::buckets(&server).await;
    let _narund = Narund::start(&server, NODE, "");
    let dir = tempfile::tempdir().unwrap();
    let pinned = sleep_binary(dir.path(), "pinned", b"");
    let other = sleep_binary(dir.path(), "other", b"\0swapped");
    b.upload("pin", "v1", std::fs::read(&other).unwrap()).await;
    let object = names::binary_object_name("pin", "v1", names::go_os(), names::go_arch());
    b.put_spec(
        "pin",
        &serde_json::json!({
            "name": "pin", "tag": "v1", "mode": "exec", "args": ["1000"],
            "nodes": [{"name": NODE, "replicas": 1}],
            "binaryDigests": {object.clone(): nats_digest(&pinned)},
        }),
    )
    .await;
    let kv = b.states.clone();
    let reason = wait_for("pin-0 to fail with a reason", T, || {
        let kv = kv.clone();
        async move {
            let v = kv.get(NODE).await.ok()??;
            let s: NodeState = serde_json::from_slice(&v).ok()?;
            let i = s.instances.iter().find(|i| i.instance_id == "pin-0")?;
            assert!(i.pid.is_none(), "pin-0 must never run: {i:?}");
            i.reason.clone().map(|r| (r, i.status.to_string()))
        }
    })
    .await;
    assert_eq!(reason.0, narun_wire::status::Reason::Verify, "{reason:?}");
    assert_eq!(reason.1, "failed");
}

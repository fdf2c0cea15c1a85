//! What operators see is the truth (issue 20): `apps ls|info` and `nodes ls|info` count
//! failed instances apart from running ones, with the reason and the rollbacks;
//! `narunctl events` shows the status-event history (stream) and live events; `apps
//! scale` and `apps rollback` change the stored spec and follow the rollout with --wait.
//! The real narunctl binary against a real nats-server and a real narund running real
//! processes.

use narun_test_support::apps::sleeper_saying;
use narun_test_support::{
    Narund, NatsServer, Running, T, deploy_file, narunctl, text, upload_script, wait_for,
};
use narun_wire::events::{NodeState, Releases, StatusEvent};
use narun_wire::names;
use narun_wire::status::InstanceStatus;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn spec(dir: &Path, app: &str, tag: &str, node: &str, replicas: u32, extra: &str) -> PathBuf {
    write(
        dir,
        &format!("{app}-{tag}.toml"),
        &format!(
            "name = \"{app}\"\ntag = \"{tag}\"\nsettleSec = 1\nstopTimeoutSec = 5\n{extra}\n\
             [[nodes]]\nname = \"{node}\"\nreplicas = {replicas}\n"
        ),
    )
}

/// `narunctl deploy -f SPEC --no-binary` without waiting.
async fn deploy_nowait(url: &str, spec: &Path) {
    let out = narunctl(
        url,
        &["deploy", "-f", spec.to_str().unwrap(), "--no-binary"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `apps ls --json`, as a map by app name.
async fn apps_ls(url: &str) -> serde_json::Map<String, serde_json::Value> {
    let out = narunctl(url, &["apps", "ls", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter()
        .map(|a| (a["name"].as_str().unwrap().to_string(), a))
        .collect()
}

const CRASH3: &str = "#!/bin/sh\necho 'cannot open /etc/app.conf' >&2\nexit 3\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_failed_apart_from_running_with_reasons_and_rollbacks() {
    const NODE: &str = "st-node";
    let server = NatsServer::start();
    let url = server.url();
    let _narund = Narund::start(&server, NODE, "");
    let dir = tempfile::tempdir().unwrap();
    upload_script(&server, "web", "v1", sleeper_saying("up")).await;
    upload_script(&server, "web", "v2", "#!/bin/sh\nexit 1\n").await;
    upload_script(&server, "broken", "v1", CRASH3).await;

    let out = deploy_file(&url, &spec(dir.path(), "web", "v1", NODE, 2, ""), "40s").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    deploy_nowait(
        &url,
        &spec(dir.path(), "broken", "v1", NODE, 1, "restart = \"no\""),
    )
    .await;

    // The crashed instance is counted as failed, never as running, with its reason.
    let apps = wait_for("broken-0 failed in apps ls", T, || async {
        let apps = apps_ls(&url).await;
        (apps["broken"]["failed"] == 1).then_some(apps)
    })
    .await;
    let broken = &apps["broken"];
    assert_eq!(broken["running"], 0, "{broken}");
    assert_eq!(broken["ready"], 0, "{broken}");
    assert_eq!(broken["desired"], 1, "{broken}");
    assert_eq!(broken["last"]["reason"], "exit code 3", "{broken}");
    assert_eq!(broken["last"]["code"], "exit-code", "{broken}");
    assert!(broken["last"]["time"].as_str().unwrap().starts_with("20"));
    let web = &apps["web"];
    assert_eq!(
        (
            &web["desired"],
            &web["running"],
            &web["ready"],
            &web["failed"]
        ),
        (&2.into(), &2.into(), &2.into(), &0.into()),
        "{web}"
    );

    let out = narunctl(&url, &["apps", "ls"]).await;
    let table = text(&out.stdout);
    println!("{table}");
    assert!(
        table.starts_with(
            "APP     TAG  NODES/REPLICAS  DESIRED  RUNNING  READY  FAILED  RESTARTING  LAST"
        ),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with("broken")).unwrap();
    assert!(row.contains("exit code 3 (broken-0, "), "{row}");

    // A v2 that crashes is rolled back: v1 keeps running, the rollback shows as such.
    let out = deploy_file(
        &url,
        &spec(dir.path(), "web", "v2", NODE, 2, "restart = \"no\""),
        "40s",
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let apps = wait_for("the rollback of web in apps ls", T, || async {
        let apps = apps_ls(&url).await;
        (!apps["web"]["rollbacks"].as_array()?.is_empty()).then_some(apps)
    })
    .await;
    let web = &apps["web"];
    let rollback = web["rollbacks"][0].as_str().unwrap();
    assert!(rollback.starts_with("v2 → v1: "), "{web}");
    assert_eq!(web["running"], 2, "v1 keeps running: {web}");
    assert_eq!(web["failed"], 0, "{web}");
    let out = narunctl(&url, &["apps", "ls"]).await;
    let table = text(&out.stdout);
    println!("{table}");
    let row = table.lines().find(|l| l.starts_with("web")).unwrap();
    assert!(row.contains("rolled back v2 → v1: "), "{row}");

    // apps info: per node and per instance, with the reason.
    let out = narunctl(&url, &["apps", "info", "broken"]).await;
    let info = text(&out.stdout);
    println!("{info}");
    let node_row = info.lines().find(|l| l.starts_with(NODE)).unwrap();
    let cells: Vec<&str> = node_row.split_whitespace().collect();
    assert_eq!(cells[1..7], ["running", "1", "0", "0", "1", "0"], "{info}");
    let inst = info.lines().find(|l| l.starts_with("broken-0")).unwrap();
    assert!(
        inst.contains("crashed") && inst.contains("last crashed: exit code 3"),
        "{inst}"
    );
    let out = narunctl(&url, &["apps", "status", "web", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ready"], 2, "{v}");
    assert_eq!(v["instances"][0]["ready"], true, "{v}");
    assert_eq!(v["instances"][0]["tag"], "v1", "{v}");
    assert!(
        v["instances"][0]["since"]
            .as_str()
            .unwrap()
            .starts_with("20")
    );

    // nodes ls/info: the node's instances by state.
    let out = narunctl(&url, &["nodes", "ls"]).await;
    let table = text(&out.stdout);
    println!("{table}");
    let row = table.lines().find(|l| l.starts_with(NODE)).unwrap();
    assert!(row.ends_with("2 running, 1 failed"), "{row}");
    let out = narunctl(&url, &["nodes", "info", NODE]).await;
    let info = text(&out.stdout);
    let row = info.lines().find(|l| l.starts_with("broken-0")).unwrap();
    assert!(row.contains("crashed: exit code 3"), "{info}");
    // The heartbeat's load, memory and disk.
    for line in ["Load:        ", "Memory:      ", "Disk:        "] {
        assert!(info.contains(line), "no {line:?}: {info}");
    }
    assert!(info.contains(" free of "), "{info}");

    // A crash loop is restarting (not running, not failed) and still says why; past
    // its start limit it is failed, with that reason.
    upload_script(&server, "loop", "v1", CRASH3).await;
    upload_script(&server, "limited", "v1", CRASH3).await;
    deploy_nowait(
        &url,
        &spec(
            dir.path(),
            "loop",
            "v1",
            NODE,
            1,
            "restart = \"always\"\nstartLimitIntervalSec = 0",
        ),
    )
    .await;
    deploy_nowait(
        &url,
        &spec(
            dir.path(),
            "limited",
            "v1",
            NODE,
            1,
            "restart = \"always\"\nstartLimitBurst = 2\nstartLimitIntervalSec = 300",
        ),
    )
    .await;
    let apps = wait_for("loop restarting and limited failed", T, || async {
        let apps = apps_ls(&url).await;
        (apps["loop"]["restarting"] == 1 && apps["limited"]["failed"] == 1).then_some(apps)
    })
    .await;
    let (looping, limited) = (&apps["loop"], &apps["limited"]);
    // A spec narunctl accepts but narund refuses (mode landlock): the reason is shown.
    upload_script(&server, "jail", "v1", sleeper_saying("up")).await;
    deploy_nowait(
        &url,
        &spec(dir.path(), "jail", "v1", NODE, 1, "mode = \"landlock\""),
    )
    .await;
    let jail = wait_for("the refused spec of jail in apps ls", T, || async {
        let apps = apps_ls(&url).await;
        (apps["jail"]["last"]["code"] == "invalid-spec").then(|| apps["jail"].clone())
    })
    .await;
    assert!(
        jail["last"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid spec: not supported by narund"),
        "{jail}"
    );
    assert_eq!(jail["last"]["instance"], format!("node {NODE}"));
    assert_eq!(jail["running"], 0, "{jail}");
    // A valid spec of the app clears it.
    deploy_nowait(&url, &spec(dir.path(), "jail", "v1", NODE, 1, "")).await;
    wait_for("jail ready and no longer refused", T, || async {
        let apps = apps_ls(&url).await;
        (apps["jail"]["ready"] == 1 && apps["jail"]["last"].is_null()).then_some(())
    })
    .await;
    assert_eq!(looping["running"], 0, "{looping}");
    assert_eq!(looping["failed"], 0, "{looping}");
    assert_eq!(looping["last"]["reason"], "exit code 3", "{looping}");
    assert_eq!(limited["running"], 0, "{limited}");
    assert_eq!(limited["last"]["code"], "start-limit", "{limited}");
    assert!(
        limited["last"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("start limit"),
        "{limited}"
    );
}

/// The STATUS column of an `events` line (time, node, instance, tag, status, detail).
fn status_of(line: &str) -> &str {
    line.split_whitespace().nth(4).unwrap_or_default()
}

/// A running `narunctl events …`, its stdout lines and stderr lines.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_show_the_stream_history_then_follow_and_are_live_without_it() {
    const NODE: &str = "ev-node";
    let server = NatsServer::start();
    let url = server.url();
    let _narund = Narund::start(&server, NODE, "[events]\nstream = true\n");
    let js = async_nats::jetstream::new(server.connect().await);
    wait_for("narund to create the narun-status stream", T, || async {
        js.get_stream(names::STATUS_STREAM).await.ok().map(|_| ())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    upload_script(&server, "ev", "v1", CRASH3).await;
    deploy_nowait(
        &url,
        &spec(dir.path(), "ev", "v1", NODE, 1, "restart = \"no\""),
    )
    .await;

    // History: the events published before narunctl ran, from the stream, then exit.
    let history = wait_for("the crash of ev-0 in the event history", T, || async {
        let out = narunctl(&url, &["events", "--app", "ev"]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        stdout
            .lines()
            .any(|l| l.contains("ev-0") && l.contains("crashed") && l.contains("exit code 3"))
            .then_some((stdout, text(&out.stderr)))
    })
    .await;
    println!("{}{}", history.1, history.0);
    assert!(
        history.1.contains("from the last 1h (stream narun-status)"),
        "{}",
        history.1
    );
    let starting = history.0.lines().position(|l| status_of(l) == "starting");
    let crashed = history.0.lines().position(|l| status_of(l) == "crashed");
    assert!(starting < crashed && starting.is_some(), "{}", history.0);
    let out = narunctl(&url, &["events", "--app", "ev", "--json"]).await;
    let last: StatusEvent =
        serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last.instance_id, "ev-0");
    assert!(last.status.is_down(), "{last:?}");
    // A filter that is not one subject token is refused by name.
    let out = narunctl(&url, &["events", "--app", "a.>"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--app \"a.>\": not an app name"),
        "{}",
        text(&out.stderr)
    );
    // An app with no events: nothing, exit 0.
    let out = narunctl(&url, &["events", "--app", "none"]).await;
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{}",
        text(&out.stderr)
    );

    // --follow: history, then the events of a new deploy as they happen.
    let mut f = Running::spawn(&url, &["events", "--app", "ev", "--follow"]);
    f.stderr_until("then following").await;
    f.stdout_until("the old crash", |l| l.contains(" crashed "))
        .await;
    upload_script(&server, "ev", "v2", sleeper_saying("up")).await;
    deploy_nowait(&url, &spec(dir.path(), "ev", "v2", NODE, 1, "")).await;
    let line = f
        .stdout_until("v2 running", |l| {
            l.contains(" v2 ") && l.contains(" running ")
        })
        .await;
    assert!(line.contains("ev-0") && line.contains("pid "), "{line}");

    // Without the stream there is no history: a note, and live events.
    let bare = NatsServer::start();
    let burl = bare.url();
    let _bare_narund = Narund::start(&bare, "bare-node", "");
    upload_script(&bare, "ev", "v1", sleeper_saying("up")).await;
    let mut f = Running::spawn(&burl, &["events"]);
    f.stderr_until("note: no event history: the stream narun-status does not exist")
        .await;
    f.stderr_until("following status.*.*").await;
    deploy_nowait(&burl, &spec(dir.path(), "ev", "v1", "bare-node", 1, "")).await;
    let line = f
        .stdout_until("a live running event", |l| status_of(l) == "running")
        .await;
    assert!(
        line.contains("bare-node") && line.contains("ev-0"),
        "{line}"
    );
}

/// Tags and states of `app`'s instances in the node's heartbeat, once `ok` holds.
async fn heartbeat_until(
    server: &NatsServer,
    node: &str,
    what: &str,
    ok: impl Fn(&NodeState) -> bool,
) -> NodeState {
    let js = async_nats::jetstream::new(server.connect().await);
    let kv = js.get_key_value(names::NODE_STATES_BUCKET).await.unwrap();
    wait_for(what, T, || async {
        let v = kv.get(node).await.ok()??;
        let s: NodeState = serde_json::from_slice(&v).ok()?;
        ok(&s).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_scale_and_rollback_change_the_spec_and_wait() {
    const NODE: &str = "op-node";
    let server = NatsServer::start();
    let url = server.url();
    let _narund = Narund::start(&server, NODE, "");
    let dir = tempfile::tempdir().unwrap();
    upload_script(&server, "web", "v1", sleeper_saying("v1 up")).await;
    upload_script(&server, "web", "v2", sleeper_saying("v2 up")).await;
    for tag in ["v1", "v2"] {
        let out = deploy_file(&url, &spec(dir.path(), "web", tag, NODE, 1, ""), "40s").await;
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // Both rollouts were seen ready: remembered, newest first.
    let js = async_nats::jetstream::new(server.connect().await);
    let rel = js.get_key_value(names::RELEASES_BUCKET).await.unwrap();
    let releases: Releases =
        serde_json::from_slice(&rel.get("web").await.unwrap().unwrap()).unwrap();
    let tags: Vec<&str> = releases.releases.iter().map(|r| r.tag.as_str()).collect();
    assert_eq!(tags, ["v2", "v1"]);

    // scale: 1 → 3 on the node, ready when --wait returns.
    let out = narunctl(
        &url,
        &["apps", "scale", "web", "3", "--node", NODE, "--wait=40s"],
    )
    .await;
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    assert!(
        stdout.contains(&format!("scaled web on {NODE}: 1 → 3 replica(s)")),
        "{stdout}"
    );
    assert!(
        stdout.contains("web:v2 is ready on 3 instance(s)"),
        "{stdout}"
    );
    let apps = apps_ls(&url).await;
    assert_eq!(apps["web"]["ready"], 3, "{}", apps["web"]);
    let out = narunctl(&url, &["apps", "scale", "web", "3"]).await;
    assert!(text(&out.stdout).contains("already has 3 replica(s)"));

    // rollback: back to v1 (the newest good release with another tag), placement kept.
    let out = narunctl(&url, &["apps", "rollback", "web", "--wait=40s"]).await;
    let stdout = text(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    assert!(stdout.contains("rolled back web: v2 → v1"), "{stdout}");
    assert!(
        stdout.contains("web:v1 is ready on 3 instance(s)"),
        "{stdout}"
    );
    let kv = js.get_key_value(names::APP_CONFIGS_BUCKET).await.unwrap();
    let stored =
        narun_spec::AppSpec::from_kv_bytes(&kv.get("web").await.unwrap().unwrap()).unwrap();
    assert_eq!((stored.tag.as_str(), stored.nodes[0].replicas), ("v1", 3));
    heartbeat_until(&server, NODE, "3 instances of web running v1", |s| {
        s.instances
            .iter()
            .filter(|i| i.app_name == "web" && i.tag == "v1" && i.status == InstanceStatus::Running)
            .count()
            == 3
    })
    .await;
    // And forward again: the newest good release that is not v1 is v2.
    let out = narunctl(&url, &["apps", "rollback", "web", "--to", "v2"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("rolled back web: v1 → v2"));

    // Refusals, each naming what is wrong; nothing is written.
    let cases: &[(&[&str], &str)] = &[
        (
            &["apps", "rollback", "web", "--to", "v9"],
            "no binary web-v9-linux-<arch>",
        ),
        (
            &["apps", "scale", "web", "-1"],
            "replicas must be 0 or more",
        ),
        (&["apps", "scale", "nope", "2"], "app nope not found"),
        (
            &["apps", "scale", "web", "2", "--selector", "role"],
            "\"role\" is not KEY=VALUE",
        ),
        (&["apps", "rollback", "nope"], "app nope not found"),
    ];
    for (args, want) in cases {
        let out = narunctl(&url, args).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // An app deployed once has nothing to go back to.
    upload_script(&server, "solo", "v1", sleeper_saying("up")).await;
    deploy_nowait(&url, &spec(dir.path(), "solo", "v1", NODE, 1, "")).await;
    let out = narunctl(&url, &["apps", "rollback", "solo"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no earlier good release of solo is remembered"),
        "{err}"
    );
    let stored =
        narun_spec::AppSpec::from_kv_bytes(&kv.get("web").await.unwrap().unwrap()).unwrap();
    assert_eq!(stored.tag, "v2", "refusals wrote nothing");

    // A stored spec that does not parse is rolled back to the newest good release.
    kv.put("web", "{not a spec".into()).await.unwrap();
    let out = narunctl(&url, &["apps", "rollback", "web", "--wait=40s"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("warning: the stored spec of web cannot be parsed"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("rolled back web: unreadable spec → v1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("web:v1 is ready on 3 instance(s)"),
        "{stdout}"
    );
}

//! `narunctl apps restart` against a real nats-server and a real narund running real
//! processes: new pids and run ids, one replica at a time, other apps untouched, and the
//! failures (unknown app, app not on the node, node that does not answer) as exit 1.

use narun_test_support::apps::sleeper_saying;
use narun_test_support::{
    Narund, NatsServer, T, alive, collect, deploy_file, narunctl, text, upload_script, wait_for,
};
use narun_wire::events::{NodeState, RestartReply, StatusEvent};
use narun_wire::names;
use narun_wire::status::InstanceStatus;
use std::collections::{BTreeMap, BTreeSet};

const NODE: &str = "rs-node";

/// A sleeper that prints its instance and run id.
fn sleeper() -> String {
    sleeper_saying("up: $NARUN_INSTANCE_ID $NARUN_RUN_ID")
}

/// `instance → pid` of the running instances in the node's heartbeat, once `ok` holds.
async fn running_pids(
    states: &async_nats::jetstream::kv::Store,
    what: &str,
    ok: impl Fn(&BTreeMap<String, i32>) -> bool,
) -> BTreeMap<String, i32> {
    wait_for(what, T, || async {
        let v = states.get(NODE).await.ok()??;
        let s: NodeState = serde_json::from_slice(&v).ok()?;
        let pids: BTreeMap<String, i32> = s
            .instances
            .iter()
            .filter(|i| i.status == InstanceStatus::Running)
            .filter_map(|i| Some((i.instance_id.clone(), i.pid?)))
            .collect();
        ok(&pids).then_some(pids)
    })
    .await
}

fn deploy_spec(dir: &std::path::Path, app: &str, replicas: u32) -> std::path::PathBuf {
    let p = dir.join(format!("{app}.toml"));
    // startLimitBurst = 1: a second start that counted toward the start limit within
    // 5 minutes would fail with reason start-limit.
    std::fs::write(
        &p,
        format!(
            "name = \"{app}\"\ntag = \"v1\"\nsettleSec = 1\nstopTimeoutSec = 5\n\
             startLimitBurst = 1\nstartLimitIntervalSec = 300\n\
             [[nodes]]\nname = \"{NODE}\"\nreplicas = {replicas}\n"
        ),
    )
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_restart_restarts_each_instance_one_at_a_time() {
    let server = NatsServer::start();
    let url = server.url();
    let client = server.connect().await;
    let events = collect::<StatusEvent>(&client, "status.>").await;
    let _narund = Narund::start(&server, NODE, "");
    let dir = tempfile::tempdir().unwrap();
    upload_script(&server, "web", "v1", sleeper()).await;
    upload_script(&server, "other", "v1", sleeper()).await;
    for (app, replicas) in [("web", 2), ("other", 1)] {
        let spec = deploy_spec(dir.path(), app, replicas);
        let out = deploy_file(&url, &spec, "40s").await;
        assert!(out.status.success(), "deploy {app}: {}", text(&out.stderr));
    }
    let js = async_nats::jetstream::new(client.clone());
    let states = js.get_key_value(names::NODE_STATES_BUCKET).await.unwrap();
    let before = running_pids(&states, "web-0, web-1 and other-0 running", |p| {
        ["web-0", "web-1", "other-0"]
            .iter()
            .all(|i| p.contains_key(*i))
    })
    .await;
    let old_runs: BTreeMap<String, String> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.status == InstanceStatus::Running)
        .map(|e| (e.instance_id.clone(), e.run_id.clone()))
        .collect();
    let mark = events.lock().unwrap().len();

    let started = std::time::Instant::now();
    let out = narunctl(&url, &["apps", "restart", "web"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    println!(
        "apps restart of 2 replicas (settleSec 1): {:.2}s\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    assert!(stdout.starts_with("NODE"), "{stdout}");
    let line = stdout.lines().nth(1).unwrap_or_default();
    assert!(
        line.starts_with(NODE) && line.contains(" ok ") && line.contains("web-0,web-1"),
        "{stdout}"
    );

    // New processes for both replicas, the old ones are gone, the other app kept its pid.
    let after = running_pids(&states, "new pids of web-0 and web-1", |p| {
        ["web-0", "web-1"]
            .iter()
            .all(|i| p.get(*i).is_some_and(|pid| Some(pid) != before.get(*i)))
    })
    .await;
    for i in ["web-0", "web-1"] {
        let old = before[i];
        wait_for(
            &format!("old pid {old} of {i} to be gone"),
            T,
            || async move { (!alive(old)).then_some(()) },
        )
        .await;
        assert!(alive(after[i]), "{i}");
    }
    assert_eq!(
        after.get("other-0"),
        before.get("other-0"),
        "other-0 untouched"
    );
    assert!(alive(before["other-0"]));

    // The status events: per replica stopped → starting → running with a new run id;
    // web-1 is stopped only after web-0 runs again, so the app never has zero replicas.
    let evs: Vec<StatusEvent> = events.lock().unwrap()[mark..].to_vec();
    assert!(
        !evs.iter().any(|e| e.app_name == "other"),
        "no event for other: {evs:#?}"
    );
    let web: Vec<&StatusEvent> = evs.iter().filter(|e| e.app_name == "web").collect();
    let seq = |i: &str| -> Vec<&str> {
        web.iter()
            .filter(|e| e.instance_id == i)
            .map(|e| e.status.as_str())
            .collect()
    };
    let pos = |i: &str, status: &str| {
        web.iter()
            .position(|e| e.instance_id == i && e.status.as_str() == status)
            .unwrap_or_else(|| panic!("no {status} event of {i}: {web:#?}"))
    };
    for i in ["web-0", "web-1"] {
        let s = seq(i);
        let stopped = pos(i, "stopped");
        let starting = pos(i, "starting");
        let running = pos(i, "running");
        assert!(stopped < starting && starting < running, "{i}: {s:?}");
        assert!(
            !s.iter()
                .any(|s| matches!(*s, "failed" | "crashed" | "backoff")),
            "{i}: {s:?}"
        );
        let new_run = &web[running].run_id;
        assert!(!new_run.is_empty(), "{i}: running event without run id");
        assert_ne!(Some(new_run), old_runs.get(i), "{i}: run id unchanged");
        assert_eq!(web[running].pid, Some(after[i]), "{i}");
    }
    assert!(
        pos("web-0", "running") < web.iter().position(|e| e.instance_id == "web-1").unwrap(),
        "web-1 was touched before web-0 ran again: {:?}",
        web.iter()
            .map(|e| format!("{} {}", e.instance_id, e.status))
            .collect::<Vec<_>>()
    );
    let mut down = BTreeSet::new();
    for e in &web {
        match e.status.as_str() {
            "running" => {
                down.remove(&e.instance_id);
            }
            _ => {
                down.insert(e.instance_id.clone());
            }
        }
        assert!(down.len() < 2, "both replicas down at once: {web:#?}");
    }

    // One instance, JSON reply; a second restart of web-1 does not hit its start limit
    // (burst 1): an operator restart is not a crash.
    let out = narunctl(
        &url,
        &["apps", "restart", "web", "--instance", "web-1", "--json"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let replies: Vec<RestartReply> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].node_id, NODE);
    assert_eq!(replies[0].restarted, ["web-1"]);
    assert!(replies[0].error.is_empty(), "{:?}", replies[0]);
    running_pids(&states, "web-1 running with a third pid", |p| {
        p.get("web-1")
            .is_some_and(|pid| *pid != after["web-1"] && *pid != before["web-1"])
            && p.get("web-0") == after.get("web-0")
    })
    .await;

    // Failures: exit 1 with one clear line.
    let out = narunctl(&url, &["apps", "restart", "nope"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("app nope not found in app-configs"), "{err}");

    upload_script(&server, "elsewhere", "v1", sleeper()).await;
    let out = narunctl(
        &url,
        &[
            "deploy",
            "--allow-offline",
            "--name",
            "elsewhere",
            "--tag",
            "v1",
            "--node",
            "ghost",
            "--no-binary",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = narunctl(&url, &["apps", "restart", "elsewhere"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no node runs app elsewhere"), "{err}");

    let out = narunctl(&url, &["apps", "restart", "elsewhere", "--node", NODE]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("app elsewhere has no instances on node {NODE}")),
        "{err}"
    );
    assert!(
        text(&out.stdout).contains("failed"),
        "{}",
        text(&out.stdout)
    );

    let out = narunctl(
        &url,
        &["apps", "restart", "web", "--node", "ghost", "--node", NODE],
    )
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("failed on 1 of 2 node(s)") && err.contains("node ghost does not answer"),
        "{err}"
    );
    // narund survived all of it and still serves.
    running_pids(&states, "web and other still running", |p| {
        ["web-0", "web-1", "other-0"]
            .iter()
            .all(|i| p.contains_key(*i))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_does_not_come_back_stops_the_restart() {
    use std::os::unix::fs::PermissionsExt;
    let server = NatsServer::start();
    let url = server.url();
    let client = server.connect().await;
    let _narund = Narund::start(&server, NODE, "");
    // The app fails to start once `broken` exists (in a directory `nobody` can read).
    let marker_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(marker_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let marker = marker_dir.path().join("broken");
    let script = format!(
        "#!/bin/sh\nif [ -e {m} ]; then echo 'config broken' >&2; exit 1; fi\nexec sleep 1000\n",
        m = marker.display()
    );
    upload_script(&server, "web", "v1", &script).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = deploy_spec(dir.path(), "web", 2);
    let out = deploy_file(&url, &spec, "40s").await;
    assert!(out.status.success(), "deploy: {}", text(&out.stderr));
    let js = async_nats::jetstream::new(client.clone());
    let states = js.get_key_value(names::NODE_STATES_BUCKET).await.unwrap();
    let before = running_pids(&states, "web-0 and web-1 running", |p| {
        p.contains_key("web-0") && p.contains_key("web-1")
    })
    .await;

    std::fs::write(&marker, "").unwrap();
    let out = narunctl(&url, &["apps", "restart", "web"]).await;
    let err = text(&out.stderr);
    println!("{}{err}", text(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        // The crash, or the start limit narund decides at that crash (it follows at once).
        (err.contains("web-0 did not come back after the restart (crashed")
            || err.contains("web-0 did not come back after the restart (start-limit"))
            && err.contains("1 later instance(s) were not restarted"),
        "{err}"
    );
    // web-1 was left alone: same process, still running.
    assert!(alive(before["web-1"]), "web-1 keeps running");
    let now = running_pids(&states, "web-1 in the heartbeat", |p| {
        p.contains_key("web-1")
    })
    .await;
    assert_eq!(now["web-1"], before["web-1"]);

    // Requests narund cannot use are answered with an error, and narund goes on.
    for (payload, want) in [
        (&b"not json"[..], "bad restart request"),
        (&br#"{"app": ""}"#[..], "\"app\" is empty"),
        (
            &br#"{"app": "web", "instance": "web-7"}"#[..],
            "web-7 is not an instance of web",
        ),
    ] {
        let subject = names::control_subject(NODE, names::CONTROL_RESTART);
        let reply = tokio::time::timeout(T, client.request(subject, payload.to_vec().into()))
            .await
            .expect("an answer")
            .expect("narund answers");
        let reply: RestartReply = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply.node_id, NODE);
        assert!(reply.error.contains(want), "{reply:?}");
        assert!(reply.restarted.is_empty());
    }
    // Fixed again: a restart brings web-0 back (its crash loop does not block it).
    std::fs::remove_file(&marker).unwrap();
    let out = narunctl(&url, &["apps", "restart", "web", "--instance", "web-0"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    running_pids(&states, "web-0 running again", |p| p.contains_key("web-0")).await;
}

/// A flood of restart requests cannot grow narund's tasks without bound: while one
/// restart waits for the new run to settle (60 s) and 63 wait behind it, the 65th and
/// later are refused at once with a reply that says the node is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_restart_requests_is_refused_beyond_the_bound() {
    const FLOOD: usize = 70;
    const BOUND: usize = 64; // daemon/src/node/control.rs IN_FLIGHT
    let server = NatsServer::start();
    let client = server.connect().await;
    let _narund = Narund::start(&server, NODE, "");
    upload_script(&server, "slow", "v1", sleeper()).await;
    narun_test_support::buckets(&server)
        .await
        .put_spec(
            "slow",
            &serde_json::json!({
                "name": "slow", "tag": "v1", "mode": "exec", "settleSec": 60,
                "stopTimeoutSec": 2, "nodes": [{"name": NODE, "replicas": 1}],
            }),
        )
        .await;
    let js = async_nats::jetstream::new(client.clone());
    let states = js.get_key_value("node-runner-states").await.unwrap();
    running_pids(&states, "slow running", |p| p.len() == 1).await;

    let subject = names::control_subject(NODE, names::CONTROL_RESTART);
    let body = serde_json::to_vec(&serde_json::json!({"app": "slow"})).unwrap();
    // Sent in order; the ones narund handles do not answer within 3 s (the first waits
    // 60 s for its new run to settle, the others for the first).
    let requests = (0..FLOOD).map(|_| {
        let (client, subject, body) = (client.clone(), subject.clone(), body.clone());
        async move {
            tokio::time::timeout(
                std::time::Duration::from_secs(3),
                client.request(subject, body.into()),
            )
            .await
        }
    });
    let mut busy = 0;
    for r in futures_util::future::join_all(requests).await {
        if let Ok(Ok(msg)) = r {
            let reply: RestartReply = serde_json::from_slice(&msg.payload).unwrap();
            assert_eq!(reply.node_id, NODE, "{reply:?}");
            assert!(reply.error.contains("is busy"), "{reply:?}");
            busy += 1;
        }
    }
    assert_eq!(
        busy,
        FLOOD - BOUND,
        "refused at once: those beyond the bound"
    );
}

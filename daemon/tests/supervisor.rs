//! The supervisor and the reconciler against a real nats-server, real processes (small
//! `/bin/sh` apps uploaded as the binary) and real cgroups.
//!
//! Each test deploys the way narunctl does (object in `app-binaries`, JSON spec in
//! `app-configs`) and observes what an operator sees: `status.<app>.<node>` events, log
//! lines, `/proc`.

mod common;

use common::Harness;
use narun_test_support::apps::{SLEEPER, TICKER};
use narun_test_support::{T, alive, kill_and_remove_cgroups, wait_for, wait_gone};
use narun_wire::events::LogLine;
use narun_wire::status::{InstanceStatus, Reason};
use serde_json::json;
use std::time::Duration;

async fn harness() -> Harness {
    Harness::builder("supervisor")
        .config(|c| {
            c.apps.restart_backoff_max_sec = 1;
            c.logs.spool_bytes = 1 << 20;
        })
        .spec_fields(json!({"settleSec": 1, "stopTimeoutSec": 3}))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_logs_env_scale_and_delete() {
    // A variable of the daemon's own environment must never reach an app.
    unsafe { std::env::set_var("NARUND_TEST_SECRET_MARKER", "leaked") };
    let h = harness().await;
    h.upload("web", "v1", SLEEPER).await;
    let t0 = std::time::Instant::now();
    h.put_spec("web", h.spec("web", "v1", 1)).await;

    let pid0 = h.running_pid("web", 0).await;
    eprintln!(
        "measured: KV put → running (download + verify + cgroup + spawn): {:?}",
        t0.elapsed()
    );
    h.wait_log("hello line", |l| {
        l.app_name == "web" && l.message == "hello from web-0" && l.stream == "stdout"
    })
    .await;
    let environ = std::fs::read(format!("/proc/{pid0}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    let vars: Vec<&str> = environ.split('\0').filter(|v| !v.is_empty()).collect();
    assert!(vars.contains(&"NARUN_APP_NAME=web"), "{vars:?}");
    assert!(vars.contains(&"NARUN_INSTANCE_ID=web-0"), "{vars:?}");
    assert!(vars.contains(&"NARUN_REPLICA_INDEX=0"), "{vars:?}");
    assert!(vars.contains(&format!("NATS_URL={}", h.server.url()).as_str()));
    assert!(vars.contains(&"USER=nobody"), "{vars:?}");
    assert!(
        !environ.contains("NARUND_TEST_SECRET_MARKER") && !environ.contains("CARGO"),
        "daemon env leaked into the app: {vars:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid0}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.contains("65534"), "runs as nobody: {uid_line}");
    let cgroup = std::fs::read_to_string(format!("/proc/{pid0}/cgroup")).unwrap();
    assert!(cgroup.contains("narun-web-0-"), "in its cgroup: {cgroup}");

    // Scale up to 3, then down to 1: highest index first.
    h.put_spec("web", h.spec("web", "v1", 3)).await;
    let pid1 = h.running_pid("web", 1).await;
    let pid2 = h.running_pid("web", 2).await;
    h.put_spec("web", h.spec("web", "v1", 1)).await;
    wait_gone(pid1).await;
    wait_gone(pid2).await;
    h.wait_event("web-1 stopped", |e| {
        e.instance_id == "web-1" && e.status == InstanceStatus::Stopped
    })
    .await;
    let ev = h.events("web");
    let stopped = |id: &str| {
        ev.iter()
            .position(|e| e.instance_id == id && e.status == InstanceStatus::Stopped)
            .unwrap_or_else(|| panic!("{id} stopped: {ev:?}"))
    };
    assert!(stopped("web-2") < stopped("web-1"), "highest index first");
    assert!(alive(pid0), "web-0 untouched by scaling");

    // Delete: everything stops, the cgroup goes.
    let t1 = std::time::Instant::now();
    h.configs.delete("web").await.unwrap();
    wait_gone(pid0).await;
    eprintln!(
        "measured: KV delete → process gone (SIGTERM path): {:?}",
        t1.elapsed()
    );
    h.wait_event("web-0 stopped", |e| {
        e.instance_id == "web-0" && e.status == InstanceStatus::Stopped
    })
    .await;
    wait_for("instance cgroups removed", T, || {
        let left = std::fs::read_dir(&h.cgroup_root)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("narun-"))
            })
            .unwrap_or(false);
        async move { (!left).then_some(()) }
    })
    .await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_change_replaces_instance_by_instance() {
    let h = harness().await;
    h.upload("api", "v1", SLEEPER).await;
    h.upload("api", "v2", SLEEPER).await;
    h.put_spec("api", h.spec("api", "v1", 2)).await;
    let old0 = h.running_pid("api", 0).await;
    let old1 = h.running_pid("api", 1).await;
    h.put_spec("api", h.spec("api", "v2", 2)).await;
    wait_gone(old0).await;
    wait_gone(old1).await;
    h.wait_event("api-1 v1 stopped", |e| {
        e.instance_id == "api-1" && e.tag == "v1" && e.status == InstanceStatus::Stopped
    })
    .await;
    let ev = h.events("api");
    let pos = |id: &str, tag: &str, status: &str| {
        ev.iter()
            .position(|e| e.instance_id == id && e.tag == tag && e.status.as_str() == status)
            .unwrap_or_else(|| panic!("{id} {tag} {status} in {ev:#?}"))
    };
    // New run of index 0 runs before the old one stops; index 1 only starts after that.
    assert!(pos("api-0", "v2", "running") < pos("api-0", "v1", "stopped"));
    assert!(pos("api-0", "v1", "stopped") < pos("api-1", "v2", "starting"));
    assert!(pos("api-1", "v2", "running") < pos("api-1", "v1", "stopped"));
    // At no point were both old instances stopped while no new one ran.
    assert!(alive(h.running_pid("api", 0).await));
    assert!(alive(h.running_pid("api", 1).await));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restarts_with_backoff_until_the_start_limit() {
    let h = harness().await;
    h.upload("crashy", "v1", "#!/bin/sh\necho boom >&2\nexit 3\n")
        .await;
    let mut spec = h.spec("crashy", "v1", 1);
    spec["startLimitBurst"] = json!(3);
    spec["startLimitIntervalSec"] = json!(60);
    h.put_spec("crashy", spec).await;
    let failed = h
        .wait_event("start-limit failure", |e| {
            e.instance_id == "crashy-0" && e.status == InstanceStatus::Failed
        })
        .await;
    assert_eq!(failed.reason, Some(Reason::StartLimit));
    let ev = h.events("crashy");
    let statuses: Vec<&str> = ev.iter().map(|e| e.status.as_str()).collect();
    assert_eq!(
        statuses,
        [
            "starting", "running", "crashed", "backoff", "starting", "running", "crashed",
            "backoff", "starting", "running", "crashed", "failed"
        ],
        "{ev:#?}"
    );
    let crashed = ev
        .iter()
        .find(|e| e.status == InstanceStatus::Crashed)
        .unwrap();
    assert_eq!(crashed.exit_code, Some(3));
    assert_eq!(crashed.reason, Some(Reason::ExitCode));
    let runs: std::collections::HashSet<&str> = ev
        .iter()
        .filter(|e| e.status == InstanceStatus::Running)
        .map(|e| e.run_id.as_str())
        .collect();
    assert_eq!(runs.len(), 3, "every start is a new run id");
    h.wait_log("stderr line", |l| {
        l.stream == "stderr" && l.message == "boom"
    })
    .await;
    let snap = wait_for("ended", T, || {
        let s = h.sup.snapshot("crashy", 0).filter(|s| s.ended);
        async move { s }
    })
    .await;
    // The third crash decides the start limit: no restart was scheduled after it.
    assert_eq!(snap.restarts, 2);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_exit_follows_the_restart_policy() {
    let h = harness().await;
    h.upload("job", "v1", "#!/bin/sh\necho done\nexit 0\n")
        .await;
    for (i, policy) in ["no", "on-failure", "always"].iter().enumerate() {
        let app = format!("job{i}");
        h.upload(&app, "v1", "#!/bin/sh\necho done\nexit 0\n").await;
        let mut spec = h.spec(&app, "v1", 1);
        spec["restart"] = json!(policy);
        spec["startLimitBurst"] = json!(2);
        h.put_spec(&app, spec).await;
        let snap = wait_for(&format!("{app} ended"), T, || {
            let s = h.sup.snapshot(&app, 0).filter(|s| s.ended);
            async move { s }
        })
        .await;
        let last = snap.status.clone();
        h.wait_event(&format!("{app} {last} event"), |e| {
            e.instance_id == format!("{app}-0") && e.status == last
        })
        .await;
        let ev = h.events(&app);
        let starts = ev
            .iter()
            .filter(|e| e.status == InstanceStatus::Running)
            .count();
        let stopped = ev
            .iter()
            .find(|e| e.status == InstanceStatus::Stopped)
            .unwrap();
        assert_eq!(stopped.exit_code, Some(0));
        if *policy == "always" {
            assert_eq!(starts, 2, "{policy}: {ev:#?}");
            assert_eq!(snap.status, InstanceStatus::Failed);
            assert_eq!(snap.reason, Some(Reason::StartLimit));
        } else {
            assert_eq!(starts, 1, "{policy}: {ev:#?}");
            assert_eq!(snap.status, InstanceStatus::Stopped, "{policy}");
        }
    }
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_binary_and_invalid_spec_keep_the_old_version_running() {
    let h = harness().await;
    h.upload("svc", "v1", SLEEPER).await;
    h.put_spec("svc", h.spec("svc", "v1", 1)).await;
    let pid = h.running_pid("svc", 0).await;

    // A tag without a binary: the new run fails, the old one keeps running.
    h.put_spec("svc", h.spec("svc", "v9", 1)).await;
    let failed = h
        .wait_event("v9 failed", |e| {
            e.tag == "v9" && e.status == InstanceStatus::Failed
        })
        .await;
    assert_eq!(failed.reason, Some(Reason::Fetch));
    assert!(failed.error.contains("not found"), "{}", failed.error);

    // Garbage and a key/name mismatch: reported, not applied.
    h.configs.put("svc", "{not json".into()).await.unwrap();
    h.wait_event("invalid spec", |e| {
        e.status == InstanceStatus::InvalidSpec
            && e.reason == Some(Reason::InvalidSpec)
            && e.app_name == "svc"
    })
    .await;
    let mut other = h.spec("svc", "v1", 3);
    other["name"] = json!("other");
    h.put_spec("svc", other).await;
    wait_for("two invalid reports", T, || {
        let n = h
            .events("svc")
            .iter()
            .filter(|e| e.status == InstanceStatus::InvalidSpec)
            .count();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    assert!(alive(pid), "the v1 instance keeps running");
    assert_eq!(h.sup.snapshot("svc", 0).unwrap().pid, Some(pid));
    assert!(
        h.sup.snapshot("svc", 1).is_none(),
        "invalid replicas=3 not applied"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_forking_app_leaves_no_process_after_stop() {
    let h = harness().await;
    // Like narund: orphans are re-parented to us (subreaper) and must be reaped, not left
    // as zombies.
    let _reaper =
        narund::instance::reaper::spawn_reaper(None, tokio_util::sync::CancellationToken::new());
    let script = "#!/bin/sh\n(sleep 1000 & echo $! > orphan.pid)\nexec sleep 1000\n";
    h.upload("forky", "v1", script).await;
    h.put_spec("forky", h.spec("forky", "v1", 1)).await;
    let pid = h.running_pid("forky", 0).await;
    let pidfile = h.data.path().join("instances/forky-0/work/orphan.pid");
    let orphan: i32 = wait_for("orphan pid file", T, || {
        let p = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        async move { p }
    })
    .await;
    assert!(alive(orphan));
    h.configs.delete("forky").await.unwrap();
    wait_gone(pid).await;
    wait_for("orphan reaped (no zombie left)", T, || async move {
        (!std::path::Path::new(&format!("/proc/{orphan}")).exists()).then_some(())
    })
    .await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_survive_nats_loss_and_start_from_local_state() {
    let h = harness().await;
    h.upload("edge", "v1", SLEEPER).await;
    h.put_spec("edge", h.spec("edge", "v1", 1)).await;
    let pid = h.running_pid("edge", 0).await;

    // NATS dies: the app keeps running.
    h.server.stop();
    wait_for("client disconnected", T, || {
        let c = h.client.connection_state();
        async move { (c != async_nats::connection::State::Connected).then_some(()) }
    })
    .await;
    assert!(alive(pid));
    assert_eq!(
        h.sup.snapshot("edge", 0).unwrap().status,
        InstanceStatus::Running
    );

    // NATS comes back: reconciliation resumes (a scale-up is applied), nothing restarted.
    h.server.restart();
    wait_for("client reconnected", T, || {
        let c = h.client.connection_state();
        async move { (c == async_nats::connection::State::Connected).then_some(()) }
    })
    .await;
    h.put_spec("edge", h.spec("edge", "v1", 2)).await;
    let pid1 = h.running_pid("edge", 1).await;
    assert_eq!(
        h.sup.snapshot("edge", 0).unwrap().pid,
        Some(pid),
        "edge-0 untouched"
    );

    // narund restarts while NATS is down again: the apps come back from local state.
    h.server.stop();
    h.sup.shutdown().await;
    wait_gone(pid).await;
    wait_gone(pid1).await;
    let (sup2, root2) = h.second_node().await;
    assert_eq!(
        sup2.start_offline().await,
        1,
        "one app (with two instances)"
    );
    let pid2 = wait_for("edge-0 running offline", T, || {
        let s = sup2.snapshot("edge", 0);
        async move {
            s.filter(|s| s.status == InstanceStatus::Running)
                .and_then(|s| s.pid)
        }
    })
    .await;
    assert!(alive(pid2));
    let pid3 = wait_for("edge-1 running offline", T, || {
        let s = sup2.snapshot("edge", 1);
        async move {
            s.filter(|s| s.status == InstanceStatus::Running)
                .and_then(|s| s.pid)
        }
    })
    .await;
    sup2.shutdown().await;
    wait_gone(pid2).await;
    wait_gone(pid3).await;
    kill_and_remove_cgroups(&root2);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_to_cgroup_kill_after_the_stop_timeout() {
    let h = harness().await;
    // Ignores SIGTERM: only the cgroup kill after stopTimeoutSec ends it.
    let script = "#!/bin/sh\ntrap '' TERM\necho armed\nwhile :; do sleep 0.2; done\n";
    h.upload("stubborn", "v1", script).await;
    let mut spec = h.spec("stubborn", "v1", 1);
    spec["stopTimeoutSec"] = json!(1);
    h.put_spec("stubborn", spec).await;
    let pid = h.running_pid("stubborn", 0).await;
    h.wait_log("armed", |l| {
        l.app_name == "stubborn" && l.message == "armed"
    })
    .await;
    let t0 = std::time::Instant::now();
    h.configs.delete("stubborn").await.unwrap();
    let stopped = h
        .wait_event("stubborn stopped", |e| {
            e.instance_id == "stubborn-0" && e.status == InstanceStatus::Stopped
        })
        .await;
    let took = t0.elapsed();
    assert!(!alive(pid));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(6),
        "SIGTERM ignored → SIGKILL after stopTimeoutSec=1, took {took:?}"
    );
    assert_eq!(stopped.reason, None);
    h.finish().await;
}

/// The scenario: NATS is down for 30 s. The app keeps running (same pid, never
/// blocked on its stdout), and every line it wrote meanwhile is delivered once NATS is
/// back: the counter in the lines has no gap from before the outage to after it.
///
/// And (issue 19) narund re-creates its app-configs watch itself as soon as it is
/// connected again: a spec change written right after NATS is back is applied within
/// seconds of its put (async-nats alone took ~10 s after such an outage), with nothing
/// replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_second_nats_outage_loses_no_log_line_and_misses_no_spec_change() {
    const OUTAGE: Duration = Duration::from_secs(30);
    /// The goal is 2 s on an idle machine (docs/benchmarks.md); the bound leaves room for
    /// a loaded CI machine and stays well below the ~10 s of the lazy repair.
    const APPLY_BOUND: Duration = Duration::from_secs(5);
    let h = harness().await;
    h.upload("ticker", "v1", TICKER).await;
    h.put_spec("ticker", h.spec("ticker", "v1", 1)).await;
    let pid = h.running_pid("ticker", 0).await;
    h.upload("edge", "v1", SLEEPER).await;
    h.put_spec("edge", h.spec("edge", "v1", 1)).await;
    let edge = h.running_pid("edge", 0).await;
    let tick = |l: &LogLine| -> Option<u64> {
        (l.app_name == "ticker")
            .then(|| l.message.strip_prefix("tick ")?.parse().ok())
            .flatten()
    };
    let before = tick(&h.wait_log("a first tick", |l| tick(l).is_some()).await).unwrap();

    h.server.stop();
    wait_for("client disconnected", T, || {
        let c = h.client.connection_state();
        async move { (c != async_nats::connection::State::Connected).then_some(()) }
    })
    .await;
    // The outage itself is the scenario under test, so this is a fixed duration, not a
    // synchronisation.
    tokio::time::sleep(OUTAGE).await;
    assert!(alive(pid), "the app runs through the outage");
    h.server.restart();
    // The put is acknowledged by the server that came back.
    h.put_spec("edge", h.spec("edge", "v1", 2)).await;
    let put = std::time::Instant::now();
    wait_for(
        "the scale-up written right after the outage",
        APPLY_BOUND,
        || {
            let s = h.sup.snapshot("edge", 1);
            async move {
                s.filter(|s| s.status == InstanceStatus::Running)
                    .and_then(|s| s.pid)
            }
        },
    )
    .await;
    eprintln!("spec change applied {:?} after its put", put.elapsed());
    assert_eq!(
        h.sup.snapshot("edge", 0).unwrap().pid,
        Some(edge),
        "edge-0 untouched: nothing was replayed"
    );

    // Lines written during the outage arrive: at least 30 s at 10 lines/s (allow for a
    // slow machine: half of that), and one line written after NATS came back.
    let during = OUTAGE.as_secs() * 10 / 2;
    let last = tick(
        &h.wait_log("ticks written during the outage, delivered after it", |l| {
            tick(l).is_some_and(|n| n > before + during)
        })
        .await,
    )
    .unwrap();
    let mut seen: Vec<u64> = h.logs.lock().unwrap().iter().filter_map(tick).collect();
    seen.sort_unstable();
    seen.dedup();
    let first = seen[0];
    let missing: Vec<u64> = (first..=last)
        .filter(|n| seen.binary_search(n).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} tick(s) lost between {first} and {last}: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert_eq!(
        h.sup.snapshot("ticker", 0).unwrap().pid,
        Some(pid),
        "not restarted"
    );
    h.finish().await;
}

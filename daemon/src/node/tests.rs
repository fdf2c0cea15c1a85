//! The node's logic against the in-memory kernel ([`crate::testing::FakeKernel`]):
//! rolling replace, rollback, re-adoption. No root, no NATS server, no real processes;
//! binaries come from the local cache, as in a start without NATS.

use super::*;
use crate::testing::{FakeKernel, Script};
use narun_wire::status::{InstanceStatus, Reason};
use sha2::Digest;

const T: Duration = Duration::from_secs(10);

async fn offline_client() -> async_nats::Client {
    // Nothing listens there: the client keeps trying in the background, publishes queue.
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect("nats://127.0.0.1:1")
        .await
        .expect("a client that connects in the background")
}

async fn node(k: &FakeKernel, dir: &std::path::Path) -> Node {
    let settings = Settings {
        node_id: "n1".into(),
        data_dir: dir.join("data"),
        runtime_dir: dir.join("run"),
        default_user: "nobody".into(),
        restart_backoff_max: Duration::from_millis(200),
        allow_scripts: true,
        ..Settings::default()
    };
    Node::new(NodeParts {
        settings,
        client: offline_client().await,
        uring: UringHandle::start(),
        processes: Arc::new(k.clone()),
        cgroups: Some(Arc::new(k.clone())),
    })
    .await
    .0
}

fn spec(tag: &str, replicas: i64, settle_sec: u64) -> AppSpec {
    let mut s: AppSpec = serde_json::from_value(serde_json::json!({
        "name": "web", "tag": tag,
        "env": [{"name": "TAG", "value": tag}],
        "nodes": [{"name": "n1", "replicas": replicas}],
    }))
    .unwrap();
    s.settle_sec = settle_sec;
    s
}

/// Put a binary for `spec` into the node's cache and pin it in the local state, so the
/// start takes it from there (no NATS here).
fn seed_binary(node: &Node, spec: &AppSpec) {
    let bytes = format!("#!/bin/sh\n# {} {}\n", spec.name, spec.tag);
    let digest = Sha256Digest(sha2::Sha256::digest(bytes.as_bytes()).into());
    let path = node.host().cache.path_for(&spec.name, &digest);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    node.host()
        .local
        .persist_spec_with_digest(spec, &digest.to_hex());
}

/// Wait until every index below `n` of `web` runs with `tag`; returns their pids.
async fn running(node: &Node, n: u32, tag: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for i in 0..n {
        let h = node.inner.apps.lock().unwrap()["web"].instances[&i].clone();
        assert_eq!(h.spec.tag, tag, "web-{i}");
        let s = h
            .wait_for(T, |s| s.status == InstanceStatus::Running)
            .await
            .unwrap_or_else(|s| panic!("web-{i} not running: {s:?}"));
        pids.push(s.pid.unwrap());
    }
    pids
}

#[tokio::test]
async fn a_changed_spec_replaces_instances_one_at_a_time() {
    let (k, dir) = (FakeKernel::new(), tempfile::tempdir().unwrap());
    let node = node(&k, dir.path()).await;
    let v1 = spec("v1", 2, 0);
    seed_binary(&node, &v1);
    node.apply(v1, 1).await;
    let old = running(&node, 2, "v1").await;

    let v2 = spec("v2", 2, 0);
    seed_binary(&node, &v2);
    node.apply(v2.clone(), 2).await;
    let new = running(&node, 2, "v2").await;
    for (o, n) in old.iter().zip(&new) {
        assert_ne!(o, n);
    }
    // Each old process got the stop signal and is gone; the new ones run v2 in their cgroups.
    for p in k.processes().iter().filter(|p| old.contains(&p.pid)) {
        assert!(!p.alive, "{p:?}");
        assert_eq!(p.signals, [libc::SIGTERM], "{p:?}");
    }
    let alive = k.alive("web");
    assert_eq!(alive.len(), 2, "{alive:?}");
    assert!(
        alive
            .iter()
            .all(|p| p.env["TAG"] == "v2" && p.cgroup.is_some())
    );
    assert_eq!(k.cgroups().len(), 2, "the old runs' cgroups are removed");
    // The second replacement started only after the first one was done: web-1's new run
    // has a higher pid than web-0's, and old web-0 was stopped before new web-1 started.
    assert!(new[0] < new[1] && old[0] < new[1]);
    // A replica change alone restarts nothing.
    let v2_3 = spec("v2", 3, 0);
    seed_binary(&node, &v2_3);
    node.apply(v2_3, 3).await;
    let now = running(&node, 3, "v2").await;
    assert_eq!(&now[..2], &new[..]);
}

#[tokio::test]
async fn a_new_spec_that_does_not_come_up_is_rolled_back() {
    let (k, dir) = (FakeKernel::new(), tempfile::tempdir().unwrap());
    let node = node(&k, dir.path()).await;
    let v1 = spec("v1", 2, 0);
    seed_binary(&node, &v1);
    node.apply(v1.clone(), 1).await;
    let old = running(&node, 2, "v1").await;

    // v2 exits 1 as soon as it starts.
    k.script(
        "web",
        "v2",
        Script {
            exit_at_start: Some(1),
            ..Default::default()
        },
    );
    let v2 = spec("v2", 2, 1);
    seed_binary(&node, &v2);
    node.apply(v2.clone(), 2).await;

    // The old runs keep serving; the rollout stopped at web-0.
    assert_eq!(running(&node, 2, "v1").await, old);
    let states = node.instances();
    let rb = states[0].rolled_back.as_ref().expect("web-0 rolled back");
    assert_eq!(
        (rb.tag.as_str(), rb.reason.clone()),
        ("v2", Some(Reason::Crashed))
    );
    assert_eq!(rb.config_hash, v2.run_hash());
    assert!(states[1].rolled_back.is_none(), "web-1 was not tried");
    let v2_runs = |k: &FakeKernel| {
        k.processes()
            .iter()
            .filter(|p| p.env["TAG"] == "v2")
            .count()
    };
    assert_eq!(v2_runs(&k), 1, "one try of v2");
    assert!(k.alive("web").iter().all(|p| p.env["TAG"] == "v1"));
    // A restart of narund starts v1 again: the local state has the previous spec.
    let persisted = node.state_file().load().unwrap();
    assert_eq!(persisted.apps["web"].spec["tag"], "v1");

    // A replay of the same revision does not try again; a new revision does.
    node.apply(v2.clone(), 2).await;
    assert_eq!(v2_runs(&k), 1);
    seed_binary(&node, &v2);
    node.apply(v2, 3).await;
    assert_eq!(v2_runs(&k), 2);
}

/// Build a node in a runtime of its own, apply `spec`, wait until it runs, then drop
/// the runtime: its tasks die like narund would, its fake processes keep running.
fn run_and_die(k: &FakeKernel, dir: &std::path::Path, spec: AppSpec) -> i32 {
    let (k, dir) = (k.clone(), dir.to_path_buf());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let node = node(&k, &dir).await;
            seed_binary(&node, &spec);
            node.apply(spec, 1).await;
            let pid = running(&node, 1, "v1").await[0];
            // Records are written by the record writer thread, after the in-memory state
            // says running: the narund that "dies" here had its record on disk.
            assert!(
                node.host().local.flush(T).await,
                "the record reached the disk"
            );
            pid
        })
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn a_restarted_narund_adopts_the_run_it_finds_and_restarts_it_when_it_ends() {
    let (k, dir) = (FakeKernel::new(), tempfile::tempdir().unwrap());
    let pid = run_and_die(&k, dir.path(), spec("v1", 1, 0));
    assert_eq!(k.alive("web").len(), 1);

    let node = node(&k, dir.path()).await;
    assert_eq!(node.adoptable_count(), 1);
    assert_eq!(node.start_offline().await, 1);
    let h = node.inner.apps.lock().unwrap()["web"].instances[&0].clone();
    let s = h
        .wait_for(T, |s| s.status != InstanceStatus::Starting)
        .await
        .unwrap();
    assert_eq!(
        (s.status, s.reason, s.pid),
        (InstanceStatus::Running, Some(Reason::Adopted), Some(pid))
    );
    assert_eq!(k.alive("web").len(), 1, "nothing started next to it");

    // Its exit status is unknown (not our child): a crash, restarted by policy.
    k.exit(pid, 0);
    let s = h
        .wait_for(T, |s| {
            s.status == InstanceStatus::Running && s.pid.is_some_and(|p| p != pid)
        })
        .await
        .unwrap_or_else(|s| panic!("not restarted: {s:?}"));
    assert_eq!(s.restarts, 1);
}

#[tokio::test]
async fn a_recycled_pid_is_not_adopted() {
    let (k, dir) = (FakeKernel::new(), tempfile::tempdir().unwrap());
    let pid = run_and_die(&k, dir.path(), spec("v1", 1, 0));
    k.recycle(pid);

    let node = node(&k, dir.path()).await;
    assert_eq!(node.adoptable_count(), 0);
    // Its cgroup was stale: killed and removed.
    assert!(k.alive("web").is_empty());
    node.start_offline().await;
    let fresh = running(&node, 1, "v1").await[0];
    assert_ne!(fresh, pid);
    let s = node.snapshot("web", 0).unwrap();
    assert_eq!(s.reason, None, "a fresh start, not an adoption");
}

#[tokio::test]
async fn unclaimed_runs_are_killed_when_adoption_ends() {
    let (k, dir) = (FakeKernel::new(), tempfile::tempdir().unwrap());
    let pid = run_and_die(&k, dir.path(), spec("v1", 1, 0));
    let node = node(&k, dir.path()).await;
    assert_eq!(node.adoptable_count(), 1);
    // The spec is gone from the local state before the new narund applies it.
    node.host().local.forget_spec("web");
    assert_eq!(node.start_offline().await, 0);
    assert_eq!(node.adoptable_count(), 0);
    assert!(
        !k.processes().iter().any(|p| p.pid == pid && p.alive),
        "the unclaimed run is killed"
    );
    assert!(k.cgroups().is_empty());
}

#[tokio::test]
async fn a_node_dropped_without_a_stop_leaves_its_apps_running() {
    // narund exiting with `apps.on_exit = "detach"`: the node goes away, the runs stay.
    let (k, dir) = (FakeKernel::new(), tempfile::tempdir().unwrap());
    let node = node(&k, dir.path()).await;
    let v1 = spec("v1", 1, 0);
    seed_binary(&node, &v1);
    node.apply(v1, 1).await;
    let pid = running(&node, 1, "v1").await[0];
    drop(node);
    // Give the instance task every chance to act on the dropped handle.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let p = k.processes().into_iter().find(|p| p.pid == pid).unwrap();
    assert!(p.alive && p.signals.is_empty(), "{p:?}");
}

#[tokio::test]
async fn an_instance_stopped_before_it_ran_never_starts() {
    let (k, dir) = (FakeKernel::new(), tempfile::tempdir().unwrap());
    let node = node(&k, dir.path()).await;
    let v1 = spec("v1", 1, 0);
    seed_binary(&node, &v1);
    // The stop lands before the new task is first polled.
    let h = node.host().spawn_instance(Arc::new(v1), 0, 0, None);
    h.stop().await;
    let s = h.snapshot();
    assert!(s.ended && s.status == InstanceStatus::Stopped, "{s:?}");
    assert!(k.processes().is_empty(), "nothing was spawned");
}

#[tokio::test]
async fn more_replicas_than_the_node_allows_change_nothing() {
    let (k, dir) = (FakeKernel::new(), tempfile::tempdir().unwrap());
    let node = node(&k, dir.path()).await;
    assert_eq!(node.settings().max_replicas_per_node, 64);
    let v1 = spec("v1", 2, 0);
    seed_binary(&node, &v1);
    node.apply(v1.clone(), 1).await;
    let before = running(&node, 2, "v1").await;

    // 65 instances (valid for the spec, past the node's limit), also with a new tag.
    let many = spec("v2", 65, 0);
    many.validate().unwrap();
    node.apply(many.clone(), 2).await;
    assert_eq!(
        running(&node, 2, "v1").await,
        before,
        "the old instances keep running"
    );
    assert_eq!(node.instances().len(), 2);
    assert_eq!(k.alive("web").len(), 2);
    // The local state keeps the last valid spec, so a restart starts v1 again.
    let persisted = node.state_file().load_specs().unwrap();
    assert_eq!(persisted.len(), 1);
    assert_eq!(persisted[0].0, v1);
    // At the limit it applies.
    let at_limit = spec("v1", 64, 0);
    seed_binary(&node, &at_limit);
    node.apply(at_limit, 3).await;
    assert_eq!(running(&node, 64, "v1").await[..2], before[..]);
}

#[tokio::test]
async fn local_state_past_the_node_limit_starts_nothing() {
    let (k, dir) = (FakeKernel::new(), tempfile::tempdir().unwrap());
    let node = node(&k, dir.path()).await;
    let many = spec("v1", 1000, 0);
    seed_binary(&node, &many);
    assert_eq!(node.start_offline().await, 1);
    assert!(node.instances().is_empty());
    assert!(k.alive("web").is_empty());
}

#[tokio::test]
async fn parsing_is_bounded_and_never_on_the_runtime_thread() {
    let slots = Arc::new(tokio::sync::Semaphore::new(reconcile::PARSERS));
    // The hostile entry of issue 17: refused at once by the spec's pre-scan.
    let hostile = format!("name: web\ntag: v1\nargs: {}", "[".repeat(100_000));
    let t = std::time::Instant::now();
    let e = reconcile::parse_entry(&slots, "web", hostile.as_bytes())
        .await
        .unwrap_err();
    assert!(e.contains("more than the limit of 64 levels"), "{e}");
    assert!(t.elapsed() < T);
    let big = vec![b'#'; narun_spec::MAX_SPEC_BYTES + 1];
    let e = reconcile::parse_entry(&slots, "web", &big)
        .await
        .unwrap_err();
    assert!(e.contains("limit of 1048576 bytes"), "{e}");
    // While both slots are taken (runaway parses), the next one is refused after
    // PARSE_TIMEOUT instead of waiting; its own parse time starts only with a slot.
    let _held = slots.clone().acquire_many_owned(2).await.unwrap();
    let t = std::time::Instant::now();
    let ok = serde_json::to_vec(&spec("v1", 1, 0)).unwrap();
    let e = reconcile::parse_entry(&slots, "web", &ok)
        .await
        .unwrap_err();
    assert!(e.contains("no parse slot became free within 2 s"), "{e}");
    assert!(t.elapsed() >= reconcile::PARSE_TIMEOUT && t.elapsed() < T);
    drop(_held);
    assert_eq!(
        reconcile::parse_entry(&slots, "web", &ok).await.unwrap(),
        spec("v1", 1, 0)
    );
}

#[tokio::test]
async fn a_crash_stays_the_instances_last_failure_after_it_runs_again() {
    let (k, dir) = (FakeKernel::new(), tempfile::tempdir().unwrap());
    let node = node(&k, dir.path()).await;
    let s = spec("v1", 1, 0);
    seed_binary(&node, &s);
    node.apply(s, 1).await;
    let pid = running(&node, 1, "v1").await[0];
    let first = node.instances();
    assert_eq!(first[0].last_failure, None);
    assert!(!first[0].since.is_empty(), "{first:?}");

    k.exit(pid, 3);
    let h = node.inner.apps.lock().unwrap()["web"].instances[&0].clone();
    h.wait_for(T, |s| {
        s.status == InstanceStatus::Running && s.pid.is_some_and(|p| p != pid)
    })
    .await
    .unwrap_or_else(|s| panic!("not restarted: {s:?}"));
    let st = node.instances();
    let f = st[0].last_failure.clone().expect("the crash is remembered");
    assert_eq!(
        (f.status, f.reason, f.exit_code, f.tag.as_str()),
        (
            InstanceStatus::Crashed,
            Some(Reason::ExitCode),
            Some(3),
            "v1"
        )
    );
    assert_eq!(f.error, "exit status 3");
    assert_eq!(st[0].status, InstanceStatus::Running);
    let at = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
    };
    assert!(
        at(&st[0].since) >= at(&f.time),
        "running again since after the crash: {st:?}"
    );
}

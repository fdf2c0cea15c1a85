//! narund survives its own crash without restarting healthy apps (docs/supervisor.md,
//! "Re-adoption"): the real `narund` binary, a real nats-server, real processes and
//! cgroups. The test plays systemd's part: it owns the `NOTIFY_SOCKET`, keeps the fds
//! narund parks there (`FDSTORE=1`) and hands them to the next narund as fds 3, 4, …
//! with `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`.

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use narun_test_support::apps::{SLEEPER, TICKER};
use narun_test_support::{
    Buckets, NatsServer, T, alive, buckets, cgroup2_mount, heartbeat, kill_and_remove_cgroups,
    narund_toml, wait_for, wait_gone, workspace_bin,
};
use narun_wire::events::{LogLine, NodeState, StatusEvent};
use narun_wire::names;
use narun_wire::status::{InstanceStatus, Reason};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upload `script` as `app`:v1 and put a spec with `replicas` on `node`.
async fn deploy(b: &Buckets, app: &str, node: &str, script: &str, replicas: u32) {
    b.upload(app, "v1", script).await;
    let spec = json!({"name": app, "tag": "v1", "nodes": [{"name": node, "replicas": replicas}]});
    b.put_spec(app, &spec).await;
}

/// One node of these tests: narund's data dir with its `narund.toml`, the cgroup root (unique
/// to the test; on drop, whatever is left in it is killed and removed), and the fd store of
/// the pretend systemd that starts narund.
struct Node {
    data: tempfile::TempDir,
    conf: PathBuf,
    cgroup_root: PathBuf,
    systemd: FdStore,
}

impl Node {
    /// `node` on `server` with the cgroup root `narun-test-<name>-<pid>`.
    fn new(server: &NatsServer, node: &str, name: &str, on_exit: &str) -> Node {
        let cgroup_root = format!("narun-test-{name}-{}", std::process::id());
        let data = tempfile::tempdir().unwrap();
        let dir = data.path();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let conf = dir.join("narund.toml");
        let on_exit = format!("on_exit = \"{on_exit}\"");
        let toml = narund_toml(node, dir, &server.url(), &cgroup_root, &on_exit);
        std::fs::write(&conf, toml).unwrap();
        Node {
            systemd: FdStore::bind(dir.join("systemd-notify.sock")),
            cgroup_root: cgroup2_mount().join(&cgroup_root),
            conf,
            data,
        }
    }

    /// narund, started by the pretend systemd.
    fn start_narund(&self) -> tokio::process::Child {
        spawn_narund(&self.conf, &self.systemd.path, Vec::new())
    }

    /// Start narund and wait until `replicas` instances of `app` run and each has parked its
    /// two pipes in the fd store; returns narund and the pids of the instances.
    async fn start_parked(
        &self,
        watch: &mut kv::Watch,
        app: &str,
        replicas: usize,
    ) -> (tokio::process::Child, BTreeMap<String, i32>) {
        let narund = self.start_narund();
        let state = heartbeat(watch, &format!("{replicas} running {app}"), |s| {
            running_pids(s, app).len() == replicas
        })
        .await;
        wait_for(&format!("{} parked pipes", 2 * replicas), T, || async {
            (self.systemd.names().len() == 2 * replicas).then_some(())
        })
        .await;
        (narund, running_pids(&state, app))
    }

    /// What systemd does after narund died: start it again with the `n` fds it stored.
    fn restart_with_stored_fds(&self, n: usize) -> tokio::process::Child {
        let stored: Vec<(String, OwnedFd)> = std::mem::take(&mut *self.systemd.fds.lock().unwrap())
            .into_iter()
            .collect();
        assert_eq!(stored.len(), n, "{stored:?}");
        spawn_narund(&self.conf, &self.systemd.path, stored)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        kill_and_remove_cgroups(&self.cgroup_root);
    }
}

/// The next heartbeat of `node` for which `pred` holds.
fn running_pids(s: &NodeState, app: &str) -> BTreeMap<String, i32> {
    s.instances
        .iter()
        .filter(|i| i.app_name == app && i.status == InstanceStatus::Running)
        .filter_map(|i| Some((i.instance_id.clone(), i.pid?)))
        .collect()
}

fn instance_cgroups(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n.starts_with("narun-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The fd store of a pretend systemd: a datagram socket that keeps the fds sent with
/// `FDSTORE=1` under their `FDNAME=` and drops them on `FDSTOREREMOVE=1`.
struct FdStore {
    path: PathBuf,
    fds: Arc<Mutex<BTreeMap<String, OwnedFd>>>,
}

impl FdStore {
    fn bind(path: PathBuf) -> FdStore {
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let fds: Arc<Mutex<BTreeMap<String, OwnedFd>>> = Default::default();
        let table = fds.clone();
        std::thread::spawn(move || {
            loop {
                let Some((text, fd)) = recv_with_fd(&sock) else {
                    return;
                };
                let name = text
                    .lines()
                    .find_map(|l| l.strip_prefix("FDNAME="))
                    .unwrap_or("stored")
                    .to_string();
                let mut t = table.lock().unwrap();
                if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
                    t.remove(&name);
                } else if text.lines().any(|l| l == "FDSTORE=1")
                    && let Some(fd) = fd
                {
                    t.insert(name, fd);
                }
            }
        });
        FdStore { path, fds }
    }

    fn names(&self) -> Vec<String> {
        self.fds.lock().unwrap().keys().cloned().collect()
    }
}

/// One blocking `recvmsg` with room for one `SCM_RIGHTS` fd.
fn recv_with_fd(sock: &std::os::unix::net::UnixDatagram) -> Option<(String, Option<OwnedFd>)> {
    let mut buf = vec![0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: plain data, zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points to live buffers of the given sizes.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return None;
    }
    let mut fd = None;
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some((String::from_utf8_lossy(&buf[..n as usize]).into_owned(), fd))
}

/// Start narund like systemd would after a restart: `fds` become fds 3, 4, … (close-on-exec
/// cleared by `dup2`), `LISTEN_FDS`/`LISTEN_FDNAMES` name them and `LISTEN_PID` is the pid
/// of the exec'd narund (`sh` sets it to its own pid, then execs narund in place).
fn spawn_narund(
    conf: &Path,
    notify_socket: &Path,
    fds: Vec<(String, OwnedFd)>,
) -> tokio::process::Child {
    let bin = workspace_bin("narund", "narund", &[]);
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(&bin)
        .arg("--config")
        .arg(conf)
        .env("NARUND_LOG", "info")
        .env("NOTIFY_SOCKET", notify_socket)
        .env_remove("LISTEN_PID")
        .kill_on_drop(true);
    if !fds.is_empty() {
        let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
        cmd.env("LISTEN_FDS", fds.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        // Out of the way of 3.. first, so no dup2 overwrites a source.
        let high: Vec<RawFd> = fds
            .iter()
            .map(|(_, fd)| {
                // SAFETY: F_DUPFD_CLOEXEC on a valid fd.
                let h = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
                assert!(h >= 100, "dup: {}", std::io::Error::last_os_error());
                h
            })
            .collect();
        let high_copy = high.clone();
        // SAFETY: only async-signal-safe dup2 between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for (i, h) in high_copy.iter().enumerate() {
                    if libc::dup2(*h, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        for h in high {
            // SAFETY: our own duplicates, closed once the child has its copies.
            unsafe { libc::close(h) };
        }
        drop(fds);
        return child;
    }
    cmd.spawn().unwrap()
}

async fn sigkill(child: &mut tokio::process::Child) {
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGKILL) };
    tokio::time::timeout(T, child.wait())
        .await
        .expect("narund dies")
        .unwrap();
}

/// Highest `tick N` per instance among the log lines received so far.
fn last_ticks(lines: &[LogLine]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in lines {
        if let Some(n) = l
            .message
            .strip_prefix("tick ")
            .and_then(|n| n.parse::<u64>().ok())
        {
            let e = m.entry(l.instance_id.clone()).or_insert(0);
            *e = (*e).max(n);
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_narund_readopts_running_apps_and_keeps_their_logs() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let (configs, states) = (&b.configs, &b.states);
    let client = server.connect().await;
    let (app, node) = ("ticker", "readopt-node");
    deploy(&b, app, node, TICKER, 2).await;
    let n = Node::new(&server, node, "readopt", "stop");
    let cgroup_root = &n.cgroup_root;

    let mut logs = client
        .subscribe(names::log_subject(app, node))
        .await
        .unwrap();
    let mut status = client
        .subscribe(names::status_subject(app, node))
        .await
        .unwrap();
    narun_test_support::synced(&client).await;
    let mut watch = states.watch(node).await.unwrap();

    // Both runs park both pipes in the (pretend) fd store.
    let (mut first, pids) = n.start_parked(&mut watch, app, 2).await;
    // Some lines flowed before the crash.
    let mut before = Vec::new();
    while last_ticks(&before).len() < 2 {
        let m = tokio::time::timeout(T, logs.next()).await.unwrap().unwrap();
        before.push(serde_json::from_slice::<LogLine>(&m.payload).unwrap());
    }

    sigkill(&mut first).await;
    for pid in pids.values() {
        assert!(alive(*pid), "the app survives narund's death");
    }
    // Everything published up to now is from the first narund.
    narun_test_support::synced(&client).await;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), logs.next()).await {
        before.push(serde_json::from_slice::<LogLine>(&m.payload).unwrap());
    }
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), status.next()).await {}
    let ticks_before = last_ticks(&before);

    // systemd starts narund again, with the stored fds.
    let mut second = n.restart_with_stored_fds(4);
    let state = heartbeat(&mut watch, "the same two pids running", |s| {
        running_pids(s, app) == pids
    })
    .await;
    let ids: Vec<&str> = state
        .instances
        .iter()
        .map(|i| i.instance_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["ticker-0", "ticker-1"],
        "exactly one instance per index"
    );

    // Log lines keep coming through the adopted pipes, counters continuing.
    let mut after = Vec::new();
    tokio::time::timeout(T, async {
        loop {
            let m = logs.next().await.unwrap();
            after.push(serde_json::from_slice::<LogLine>(&m.payload).unwrap());
            let t = last_ticks(&after);
            if ["ticker-0", "ticker-1"]
                .iter()
                .all(|i| t.get(*i).copied().unwrap_or(0) > ticks_before[*i] + 3)
            {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("log lines after the restart: {after:?}"));
    for i in ["ticker-0", "ticker-1"] {
        let ticks: Vec<u64> = after
            .iter()
            .filter(|l| l.instance_id == i)
            .filter_map(|l| l.message.strip_prefix("tick ")?.parse().ok())
            .collect();
        assert!(
            ticks.windows(2).all(|w| w[1] == w[0] + 1),
            "{i}: counters increase one by one: {ticks:?}"
        );
    }

    // Status events since the restart: adopted as running, never `starting`.
    narun_test_support::synced(&client).await;
    let mut events = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), status.next()).await {
        events.push(serde_json::from_slice::<StatusEvent>(&m.payload).unwrap());
    }
    assert!(
        events.iter().all(|e| e.status != InstanceStatus::Starting),
        "no new start: {events:?}"
    );
    for i in ["ticker-0", "ticker-1"] {
        assert!(
            events.iter().any(|e| e.instance_id == i
                && e.status == InstanceStatus::Running
                && e.reason == Some(Reason::Adopted)),
            "{i} adopted: {events:?}"
        );
    }

    // Stopping an adopted run kills its whole cgroup (the `sleep` children too).
    assert_eq!(instance_cgroups(cgroup_root).len(), 2);
    configs.delete(app).await.unwrap();
    wait_for("adopted runs stopped", T, || async {
        (pids.values().all(|p| !alive(*p)) && instance_cgroups(cgroup_root).is_empty())
            .then_some(())
    })
    .await;
    // The records go with the runs (a later narund must not adopt anything of them).
    let records = n.data.path().join("state/instances.json");
    wait_for("records removed with the runs", T, || async {
        let text = std::fs::read_to_string(&records).unwrap();
        (text.trim() == "{}").then_some(())
    })
    .await;

    unsafe { libc::kill(second.id().unwrap() as i32, libc::SIGTERM) };
    let st = tokio::time::timeout(T, second.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success(), "{st:?}");
}

/// A panic in the firmware build (`panic = "abort"`, Cargo.toml; docs/design.md "Panics in
/// the firmware build") ends narund with SIGABRT: no destructor, no shutdown, no `Stopping`.
/// The apps keep running, and the narund systemd starts again adopts the same processes
/// with their pipes, without a single new start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narund_ended_by_abort_readopts_its_apps() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let client = server.connect().await;
    let (app, node) = ("ticker", "abort-node");
    deploy(&b, app, node, TICKER, 2).await;
    let n = Node::new(&server, node, "abort", "stop");
    let mut status = client
        .subscribe(names::status_subject(app, node))
        .await
        .unwrap();
    narun_test_support::synced(&client).await;
    let mut watch = b.states.watch(node).await.unwrap();
    let (mut first, pids) = n.start_parked(&mut watch, app, 2).await;

    unsafe { libc::kill(first.id().unwrap() as i32, libc::SIGABRT) };
    let st = tokio::time::timeout(T, first.wait())
        .await
        .expect("narund ends")
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGABRT), "{st:?}");
    for pid in pids.values() {
        assert!(alive(*pid), "the app survives narund's abort");
    }
    narun_test_support::synced(&client).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), status.next()).await {}

    let mut second = n.restart_with_stored_fds(4);
    heartbeat(&mut watch, "the same two pids running", |s| {
        running_pids(s, app) == pids
    })
    .await;
    narun_test_support::synced(&client).await;
    let mut events = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), status.next()).await {
        events.push(serde_json::from_slice::<StatusEvent>(&m.payload).unwrap());
    }
    assert!(
        events.iter().all(|e| e.status != InstanceStatus::Starting),
        "no new start: {events:?}"
    );
    for i in ["ticker-0", "ticker-1"] {
        assert!(
            events.iter().any(|e| e.instance_id == i
                && e.status == InstanceStatus::Running
                && e.reason == Some(Reason::Adopted)),
            "{i} adopted: {events:?}"
        );
    }
    unsafe { libc::kill(second.id().unwrap() as i32, libc::SIGTERM) };
    let st = tokio::time::timeout(T, second.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success(), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_leaves_apps_running_and_a_dead_record_is_started_fresh() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let (configs, states) = (&b.configs, &b.states);
    let (app, node) = ("sleepy", "detach-node");
    deploy(&b, app, node, SLEEPER, 1).await;
    let n = Node::new(&server, node, "detach", "detach");
    let cgroup_root = &n.cgroup_root;
    let mut watch = states.watch(node).await.unwrap();

    let mut first = n.start_narund();
    let state = heartbeat(&mut watch, "sleepy-0 running", |s| {
        running_pids(s, app).len() == 1
    })
    .await;
    let pid = running_pids(&state, app)["sleepy-0"];
    let old_cgroups = instance_cgroups(cgroup_root);
    assert_eq!(old_cgroups.len(), 1);

    // on_exit = "detach": SIGTERM ends narund, the app keeps running, the key stays.
    unsafe { libc::kill(first.id().unwrap() as i32, libc::SIGTERM) };
    let st = tokio::time::timeout(T, first.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success(), "{st:?}");
    assert!(alive(pid), "detached app still runs");
    assert!(states.get(node).await.unwrap().is_some(), "node key kept");
    assert_eq!(instance_cgroups(cgroup_root), old_cgroups);

    // The recorded process dies while no narund runs: the next narund cannot adopt it,
    // removes its stale cgroup (with the leftovers in it) and starts the instance fresh.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the app is gone", T, || async {
        (!alive(pid)).then_some(())
    })
    .await;
    let mut second = n.start_narund();
    let state = heartbeat(&mut watch, "a fresh sleepy-0", |s| {
        running_pids(s, app)
            .get("sleepy-0")
            .is_some_and(|p| *p != pid)
    })
    .await;
    assert_eq!(state.instances.len(), 1);
    let now = instance_cgroups(cgroup_root);
    assert_eq!(now.len(), 1);
    assert_ne!(
        now, old_cgroups,
        "the stale cgroup was removed, a new one made"
    );

    // Cleanup: a detaching narund leaves the app, so stop it through the spec.
    configs.delete(app).await.unwrap();
    wait_for("app stopped", T, || async {
        instance_cgroups(cgroup_root).is_empty().then_some(())
    })
    .await;
    unsafe { libc::kill(second.id().unwrap() as i32, libc::SIGTERM) };
    let _ = tokio::time::timeout(T, second.wait()).await;
}

/// The two ways down of a detaching narund (`narund.service`, docs/embedded.md "Apps at
/// system shutdown"): SIGTERM (`systemctl restart narund`) leaves the app to the next
/// narund, which re-adopts it (same pid); SIGUSR2 (what the unit's `ExecStop=` sends when
/// the system shuts down) stops the app with narund although `on_exit = "detach"`: its
/// process and cgroup are gone, the node's heartbeat key is deleted, narund exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_stops_detached_apps_that_a_restart_keeps() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let states = &b.states;
    let (app, node) = ("shutdown-app", "shutdown-node");
    deploy(&b, app, node, SLEEPER, 1).await;
    let n = Node::new(&server, node, "sigusr2", "detach");
    let mut watch = states.watch(node).await.unwrap();

    // systemctl restart narund: SIGTERM, the app stays, the next narund adopts it.
    let (mut first, pids) = n.start_parked(&mut watch, app, 1).await;
    let pid = pids[&format!("{app}-0")];
    unsafe { libc::kill(first.id().unwrap() as i32, libc::SIGTERM) };
    let st = tokio::time::timeout(T, first.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success(), "{st:?}");
    assert!(
        alive(pid),
        "SIGTERM with on_exit = detach leaves the app running"
    );
    let mut second = n.restart_with_stored_fds(2);
    heartbeat(&mut watch, "the app re-adopted with its pid", |s| {
        running_pids(s, app).get(&format!("{app}-0")) == Some(&pid)
    })
    .await;
    assert_eq!(instance_cgroups(&n.cgroup_root).len(), 1);

    // System shutdown: SIGUSR2 stops narund and, despite detach, the app.
    unsafe { libc::kill(second.id().unwrap() as i32, libc::SIGUSR2) };
    let st = tokio::time::timeout(T, second.wait())
        .await
        .expect("narund exits after SIGUSR2")
        .unwrap();
    assert!(st.success(), "{st:?}");
    wait_gone(pid).await;
    wait_for("the instance cgroup removed", T, || async {
        instance_cgroups(&n.cgroup_root).is_empty().then_some(())
    })
    .await;
    assert!(
        states.get(node).await.unwrap().is_none(),
        "a node stopped with its apps deletes its heartbeat key"
    );
}

/// A `notify` app with `watchdogSec` that narund re-adopts keeps its readiness and its
/// watchdog: the new narund binds the run's notify socket again, so the app's pings (sent
/// by path, as sd_notify clients do) reach it and the adopted run lives on; when the app
/// stops pinging, the new narund aborts it with reason `watchdog`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readopted_notify_app_keeps_its_watchdog() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let (configs, states) = (&b.configs, &b.states);
    let client = server.connect().await;
    let (app, node) = ("watched", "readopt-watchdog-node");
    let n = Node::new(&server, node, "readopt-wd", "stop");
    let flag = n.data.path().join("stop-pinging");
    // Pings every 200 ms while the flag file is absent; sendto fails while no narund is
    // bound to the socket, which the app shrugs off (as libsystemd's sd_notify does).
    let script = "#!/usr/bin/python3\n\
        import os, socket, time\n\
        def notify(msg):\n\
        \x20   s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
        \x20   try:\n\
        \x20       s.sendto(msg.encode(), os.environ['NOTIFY_SOCKET'])\n\
        \x20   except OSError:\n\
        \x20       pass\n\
        \x20   s.close()\n\
        notify('READY=1')\n\
        while not os.path.exists(os.environ['STOP_PINGING']):\n\
        \x20   notify('WATCHDOG=1')\n\
        \x20   time.sleep(0.2)\n\
        time.sleep(1000)\n";
    b.upload(app, "v1", script).await;
    let spec = json!({
        "name": app, "tag": "v1", "nodes": [{"name": node, "replicas": 1}],
        "notify": true, "watchdogSec": 1, "restart": "no", "stopTimeoutSec": 2,
        "env": [{"name": "STOP_PINGING", "value": flag.display().to_string()}],
    });
    b.put_spec(app, &spec).await;
    let mut status = client
        .subscribe(names::status_subject(app, node))
        .await
        .unwrap();
    narun_test_support::synced(&client).await;
    let mut watch = states.watch(node).await.unwrap();

    let (mut first, pids) = n.start_parked(&mut watch, app, 1).await;
    let pid = pids["watched-0"];
    sigkill(&mut first).await;
    assert!(alive(pid));
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), status.next()).await {}

    let mut second = n.restart_with_stored_fds(2);
    let adopted = next_status(&mut status).await;
    assert_eq!(
        (adopted.status.clone(), adopted.reason.clone(), adopted.pid),
        (InstanceStatus::Running, Some(Reason::Adopted), Some(pid)),
        "{adopted:?}"
    );
    // Five watchdog intervals with the adopted run pinging the new narund: no abort.
    let quiet = tokio::time::timeout(Duration::from_secs(5), status.next()).await;
    assert!(
        quiet.is_err(),
        "the pinging adopted run was disturbed: {:?}",
        quiet.map(|m| m.map(|m| String::from_utf8_lossy(&m.payload).into_owned()))
    );
    assert!(alive(pid));

    // The app stops pinging: the new narund's watchdog fires.
    std::fs::write(&flag, "").unwrap();
    let ended = loop {
        let e = next_status(&mut status).await;
        if e.status != InstanceStatus::Running {
            break e;
        }
    };
    assert_eq!(ended.reason, Some(Reason::Watchdog), "{ended:?}");
    wait_gone(pid).await;

    configs.delete(app).await.unwrap();
    unsafe { libc::kill(second.id().unwrap() as i32, libc::SIGTERM) };
    let _ = tokio::time::timeout(T, second.wait()).await;
}

/// The next status event (at most [`T`]).
async fn next_status(status: &mut async_nats::Subscriber) -> StatusEvent {
    let m = tokio::time::timeout(T, status.next())
        .await
        .expect("a status event")
        .unwrap();
    serde_json::from_slice(&m.payload).unwrap()
}

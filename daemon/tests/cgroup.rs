//! Real-cgroup2 tests for `narund::cgroup`.
//!
//! Every test works below its own test root, a fresh child of the cgroup2 mount root
//! (`narund-test-<pid>-<n>`), which a guard kills and removes at the end, also when the test panics.
//! Tests are skipped (with a printed reason) only when cgroup2 is not mounted at all.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use narund::cgroup::{
    CgroupError, CgroupRoot, InstanceCgroup, Layout, LayoutKind, Limits, RootOrigin, instance_name,
};

/// A per-test cgroup directory under the cgroup2 mount root; killed and removed on drop.
struct TestRoot {
    path: PathBuf,
    mount: PathBuf,
}

impl TestRoot {
    fn new() -> Option<TestRoot> {
        static N: AtomicU32 = AtomicU32::new(0);
        let layout = Layout::detect().expect("read /proc/self/{mountinfo,cgroup}");
        let Some(mount) = layout.mount else {
            eprintln!(
                "SKIP: cgroup2 is not mounted on this host (layout {})",
                layout.kind
            );
            return None;
        };
        let path = mount.mount_point.join(format!(
            "narund-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        become_subreaper();
        Some(TestRoot {
            path,
            mount: mount.mount_point,
        })
    }

    fn root(&self) -> CgroupRoot {
        CgroupRoot::discover(Some(&self.path)).expect("discover configured test root")
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        // Kill everything below, wait (bounded) for populated 0, rmdir deepest first.
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_to_string(self.path.join("cgroup.events"))
            .map(|t| t.contains("populated 1"))
            .unwrap_or(false)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        fn rm(dir: &Path) {
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        rm(&e.path());
                    }
                }
            }
            let _ = fs::remove_dir(dir);
        }
        rm(&self.path);
        if self.path.exists() {
            eprintln!(
                "WARNING: could not remove test cgroup {}",
                self.path.display()
            );
        }
    }
}

/// Orphaned grandchildren (the double-forked sleeps) are re-parented to us instead of PID 1, so the test can
/// reap them and check that they are really gone (PID 1 on this machine does not reap zombies).
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain prctl.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    });
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Bounded wait for a condition that has no event to await (process start-up inside a shell).
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `sh` that leaves two daemons behind (a plain background job and a `setsid` one) plus a foreground sleep.
fn spawn_forking_shell(cg: &InstanceCgroup) -> std::process::Child {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("(sleep 1000 &) ; (setsid sleep 1000 &) ; sleep 1000")
        .stdin(Stdio::null());
    cg.place_command(&mut cmd).expect("place command");
    cmd.spawn().expect("spawn /bin/sh")
}

fn sleeps_in(cg: &InstanceCgroup) -> Vec<i32> {
    cg.pids()
        .unwrap()
        .into_iter()
        .filter(|p| comm(*p) == "sleep")
        .collect()
}

/// Reap `pid` if it is (or became, via subreaper) our child, then check it no longer exists.
fn assert_gone(pid: i32) {
    let mut status = 0;
    // SAFETY: plain waitpid on a specific pid.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    if rc == pid {
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
            "pid {pid} ended by status {status:#x}, expected SIGKILL"
        );
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists ({})",
        fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default()
    );
}

async fn group_and_kill(use_fallback: bool) {
    let Some(t) = TestRoot::new() else { return };
    let root = t.root();
    assert_eq!(root.origin(), RootOrigin::Configured);
    let cg = InstanceCgroup::create(
        &root,
        &instance_name("grp", 0, "0123456789"),
        &Limits::default(),
    )
    .expect("create instance cgroup");
    assert_eq!(cg.name(), "narun-grp-0-01234567");

    let mut child = spawn_forking_shell(&cg);
    wait_until("3 sleeps in the cgroup", Duration::from_secs(5), || {
        sleeps_in(&cg).len() == 3
    });
    let mut pids = cg.pids().unwrap();
    assert!(
        pids.contains(&(child.id() as i32)),
        "the shell itself is in the cgroup"
    );
    pids.sort();

    // Each process says so in /proc/<pid>/cgroup.
    let rel = cg.path().strip_prefix(&t.mount).unwrap();
    let want = format!("0::/{}", rel.display());
    for pid in &pids {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            text.lines().any(|l| l == want),
            "pid {pid}: {text:?} lacks {want}"
        );
    }
    assert!(cg.is_populated().unwrap());

    let started = Instant::now();
    if use_fallback {
        cg.kill_each().expect("kill_each");
    } else {
        cg.kill().expect("kill");
    }
    cg.wait_empty(Duration::from_secs(5))
        .await
        .expect("cgroup empties after kill");
    eprintln!(
        "kill (fallback={use_fallback}) → populated 0 in {:?}",
        started.elapsed()
    );
    assert!(cg.pids().unwrap().is_empty(), "cgroup.procs empty");
    assert!(!cg.is_populated().unwrap());

    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    for pid in pids {
        assert_gone(pid);
    }
    assert!(!cg.is_frozen().unwrap(), "fallback thaws again");

    let path = cg.path().to_path_buf();
    cg.remove(Duration::from_secs(5)).await.expect("remove");
    assert!(!path.exists());
}

#[tokio::test]
async fn double_forked_daemons_are_grouped_and_cgroup_kill_leaves_nothing() {
    group_and_kill(false).await;
}

#[tokio::test]
async fn fallback_kill_without_cgroup_kill_leaves_nothing() {
    group_and_kill(true).await;
}

#[tokio::test]
async fn tokio_command_is_placed_too() {
    let Some(t) = TestRoot::new() else { return };
    let root = t.root();
    let cg = InstanceCgroup::create(&root, "narun-tokio-0-x", &Limits::default()).unwrap();
    let mut cmd = tokio::process::Command::new("/bin/sleep");
    cmd.arg("1000");
    cg.place_command(cmd.as_std_mut()).unwrap();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().unwrap() as i32;
    assert_eq!(
        cg.pids().unwrap(),
        vec![pid],
        "placed before exec, so already there"
    );
    cg.kill().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("child exits after kill")
        .unwrap();
    assert!(!status.success());
    cg.remove(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn remove_of_busy_cgroup_kills_then_removes() {
    let Some(t) = TestRoot::new() else { return };
    let root = t.root();
    let cg = InstanceCgroup::create(&root, "narun-busy-0-x", &Limits::default()).unwrap();
    let mut child = spawn_forking_shell(&cg);
    wait_until("3 sleeps", Duration::from_secs(5), || {
        sleeps_in(&cg).len() == 3
    });
    let pids = cg.pids().unwrap();
    let path = cg.path().to_path_buf();
    cg.remove(Duration::from_secs(5))
        .await
        .expect("remove busy cgroup");
    assert!(!path.exists());
    child.wait().unwrap();
    for pid in pids {
        assert_gone(pid);
    }
}

#[tokio::test]
async fn wait_empty_times_out_while_processes_remain() {
    let Some(t) = TestRoot::new() else { return };
    let root = t.root();
    let cg = InstanceCgroup::create(&root, "narun-wait-0-x", &Limits::default()).unwrap();
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("1000");
    cg.place_command(&mut cmd).unwrap();
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    let err = cg.wait_empty(Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, CgroupError::Timeout { .. }), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(err.to_string().contains("still has processes"), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
    cg.wait_empty(Duration::from_secs(5)).await.unwrap();
    cg.remove(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn wait_empty_is_event_driven() {
    // The event arrives well before the 10 s timeout; with a broken inotify path this would time out.
    let Some(t) = TestRoot::new() else { return };
    let root = t.root();
    let cg = InstanceCgroup::create(&root, "narun-ev-0-x", &Limits::default()).unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg("read x"); // exits when stdin closes
    cmd.stdin(Stdio::piped());
    cg.place_command(&mut cmd).unwrap();
    let mut child = cmd.spawn().unwrap();
    assert!(cg.is_populated().unwrap());
    let stdin = child.stdin.take().unwrap();
    let waiter = async { cg.wait_empty(Duration::from_secs(10)).await };
    let started = Instant::now();
    let closer = async {
        tokio::task::yield_now().await;
        drop(stdin);
    };
    let (res, ()) = tokio::join!(waiter, closer);
    res.unwrap();
    let took = started.elapsed();
    eprintln!("wait_empty woke {took:?} after the last process exited");
    assert!(took < Duration::from_secs(2), "{took:?}");
    child.wait().unwrap();
    cg.remove(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn freeze_and_thaw() {
    let Some(t) = TestRoot::new() else { return };
    let root = t.root();
    let cg = InstanceCgroup::create(&root, "narun-frz-0-x", &Limits::default()).unwrap();
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("1000");
    cg.place_command(&mut cmd).unwrap();
    let mut child = cmd.spawn().unwrap();
    cg.freeze().unwrap();
    wait_until("frozen 1", Duration::from_secs(5), || {
        cg.is_frozen().unwrap()
    });
    let state = |pid: u32| {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .rsplit(')')
            .next()
            .unwrap()
            .trim()
            .chars()
            .next()
            .unwrap()
    };
    // Frozen tasks sleep in the freezer (state S or D, never R).
    assert_ne!(state(child.id()), 'R');
    cg.thaw().unwrap();
    wait_until("frozen 0", Duration::from_secs(5), || {
        !cg.is_frozen().unwrap()
    });
    cg.kill().unwrap();
    child.wait().unwrap();
    cg.remove(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn limits_without_controllers_are_reported_unenforced_while_grouping_works() {
    let Some(t) = TestRoot::new() else { return };
    let root = t.root();
    let report = root.enable_controllers();
    eprintln!("controller report on this host: {report:?}");
    let enforceable = root.enforceable().unwrap();
    assert_eq!(report.enabled, enforceable);
    for (name, on) in [
        ("memory", enforceable.memory),
        ("cpu", enforceable.cpu),
        ("pids", enforceable.pids),
    ] {
        assert_eq!(
            report
                .failures
                .iter()
                .any(|f| f.starts_with(&format!("{name}:"))),
            !on,
            "a failure line exactly for each controller that is not enabled: {report:?}"
        );
    }

    let limits = Limits {
        cpu_weight: Some(50),
        pids_max: Some(64),
        ..Limits::from_spec(64, 128, 0.5)
    };
    let cg = InstanceCgroup::create(&root, "narun-lim-0-x", &limits).expect("create with limits");
    let mut expected = Vec::new();
    if !enforceable.memory {
        expected.extend(["memory.high", "memory.max"]);
    }
    if !enforceable.cpu {
        expected.extend(["cpu.max", "cpu.weight"]);
    }
    if !enforceable.pids {
        expected.push("pids.max");
    }
    assert_eq!(cg.unenforced(), expected.as_slice());
    if enforceable.memory {
        assert_eq!(
            fs::read_to_string(cg.path().join("memory.max"))
                .unwrap()
                .trim(),
            (128u64 << 20).to_string()
        );
    }
    if root.layout() == LayoutKind::Hybrid {
        // This machine: no controllers delegated to cgroup2.
        eprintln!("hybrid host: unenforced = {:?}", cg.unenforced());
    }
    // No memory controller → zeros, not an error.
    if !enforceable.memory {
        assert_eq!(cg.memory_events().unwrap(), Default::default());
    }
    // Grouping still works.
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("1000");
    cg.place_command(&mut cmd).unwrap();
    let mut child = cmd.spawn().unwrap();
    assert_eq!(cg.pids().unwrap(), vec![child.id() as i32]);
    cg.remove(Duration::from_secs(5)).await.unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn stale_cleanup_removes_only_our_prefix() {
    let Some(t) = TestRoot::new() else { return };
    let root = t.root();
    let stale = InstanceCgroup::create(&root, "narun-old-0-aaaaaaaa", &Limits::default()).unwrap();
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("1000");
    stale.place_command(&mut cmd).unwrap();
    let mut orphan = cmd.spawn().unwrap();
    let kept = InstanceCgroup::create(&root, "narun-live-0-bbbbbbbb", &Limits::default()).unwrap();
    // Foreign siblings: systemd's supervisor leaf and some other tool's cgroup, one of them busy.
    let supervisor = t.path.join("supervisor");
    let foreign = t.path.join("other-tool");
    fs::create_dir(&supervisor).unwrap();
    fs::create_dir(&foreign).unwrap();
    let mut foreign_proc = Command::new("/bin/sleep").arg("1000").spawn().unwrap();
    fs::write(foreign.join("cgroup.procs"), foreign_proc.id().to_string()).unwrap();

    assert_eq!(
        root.list_instances().unwrap(),
        vec![
            "narun-live-0-bbbbbbbb".to_string(),
            "narun-old-0-aaaaaaaa".to_string()
        ]
    );
    let keep: HashSet<String> = [kept.name().to_string()].into();
    let removed = root
        .cleanup_stale(&keep, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(removed, vec!["narun-old-0-aaaaaaaa".to_string()]);
    assert!(!stale.path().exists());
    assert!(kept.path().exists());
    assert!(supervisor.exists() && foreign.exists());
    assert_eq!(
        fs::read_to_string(foreign.join("cgroup.procs"))
            .unwrap()
            .trim(),
        foreign_proc.id().to_string(),
        "foreign process untouched"
    );
    assert!(
        orphan.wait().unwrap().code().is_none(),
        "stale instance process was killed"
    );
    foreign_proc.kill().unwrap();
    foreign_proc.wait().unwrap();
}

#[tokio::test]
async fn bad_names_and_duplicates_are_errors() {
    let Some(t) = TestRoot::new() else { return };
    let root = t.root();
    let err = InstanceCgroup::create(&root, "supervisor", &Limits::default()).unwrap_err();
    assert!(matches!(err, CgroupError::InvalidName { .. }), "{err}");
    let err = InstanceCgroup::create(&root, "narun-../x", &Limits::default()).unwrap_err();
    assert!(matches!(err, CgroupError::InvalidName { .. }), "{err}");
    let _a = InstanceCgroup::create(&root, "narun-dup-0-x", &Limits::default()).unwrap();
    let err = InstanceCgroup::create(&root, "narun-dup-0-x", &Limits::default()).unwrap_err();
    assert!(matches!(err, CgroupError::AlreadyExists(_)), "{err}");
    assert!(err.to_string().contains("cleanup_stale"), "{err}");
    // Opening for re-attach works, a missing one is an error naming the path.
    assert!(InstanceCgroup::open(&root, "narun-dup-0-x").is_ok());
    let err = InstanceCgroup::open(&root, "narun-missing-0-x").unwrap_err();
    assert!(err.to_string().contains("narun-missing-0-x"), "{err}");
}

#[test]
fn configured_root_outside_cgroup2_is_rejected() {
    let Some(_t) = TestRoot::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let err = CgroupRoot::discover(Some(dir.path())).unwrap_err();
    assert!(matches!(err, CgroupError::NotCgroup2 { .. }), "{err}");
    // `..` must not escape the cgroup2 mount, and nothing is created on the way.
    let err = CgroupRoot::discover(Some(Path::new("../../tmp/narund-escape"))).unwrap_err();
    assert!(matches!(err, CgroupError::NotCgroup2 { .. }), "{err}");
    assert!(!Path::new("/tmp/narund-escape").exists());
}

#[test]
fn layout_of_this_host() {
    let layout = Layout::detect().unwrap();
    eprintln!("layout: {layout:?}");
    let v2_at_sys_fs_cgroup = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "));
    match layout.kind {
        LayoutKind::None => eprintln!("SKIP: cgroup2 not mounted"),
        LayoutKind::Unified => assert!(v2_at_sys_fs_cgroup),
        LayoutKind::Hybrid => {
            assert!(!v2_at_sys_fs_cgroup);
            assert!(
                layout
                    .own_dir()
                    .unwrap()
                    .starts_with(&layout.mount.unwrap().mount_point)
            );
        }
    }
}

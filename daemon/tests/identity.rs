//! One identity per app and safe placement under work dirs (issue 17, findings 2 and 3),
//! against a real nats-server, real processes and the real kernel (narund as root).
//!
//! * Apps that name no `user` run under dynamic uids of their own: a process with one app's
//!   uid (what that app could run) cannot read the other's `/proc/<pid>/environ`, enter its
//!   work dir or read its mounted file; the same command under the other app's own uid can
//!   (so the refusals are the kernel's permission checks, not a broken command).
//! * An app's uid is recorded and survives a restart of narund.
//! * An app that keeps swapping a directory of a mount path for a symlink to an outside
//!   directory while narund places the file again and again never gets narund to write
//!   outside its work dir; with the symlink in place the start fails naming the path.

mod common;

use common::Harness;
use narun_test_support::apps::SLEEPER;
use narun_test_support::environ;
use narun_test_support::{T, kill_and_remove_cgroups, wait_for, wait_gone};
use narun_wire::status::{InstanceStatus, Reason};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

const RANGE: std::ops::RangeInclusive<u32> = 61184..=65519;

fn is_root() -> bool {
    // SAFETY: plain geteuid.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("SKIP: needs root (euid != 0)");
            return;
        }
    };
}

/// narund with dynamic users (`default_user` empty, the default of narund.toml), a
/// master key and the files bucket; apps restart always.
async fn dynamic_harness() -> Harness {
    Harness::builder("identity")
        .config(|c| {
            c.apps.default_user = String::new();
            c.apps.restart_backoff_max_sec = 1;
        })
        .secrets()
        .spec_fields(json!({"stopTimeoutSec": 3, "restart": "always"}))
        .start()
        .await
}

/// The (real uid, real gid) of `pid` from `/proc/<pid>/status`.
fn ids_of(pid: i32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| -> u32 {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("Uid:"), field("Gid:"))
}

/// What a command run by [`sh_as`] printed and its exit code.
#[derive(Debug)]
struct Ran {
    rc: i32,
    stdout: String,
}

/// Run `sh -c script` as uid = gid = `id` with no supplementary groups (std drops them
/// when switching from root): what an app with that uid could do. The exit code comes
/// through stdout: the in-process narund is a child subreaper that may reap it first.
fn sh_as(id: u32, script: &str) -> Ran {
    use std::io::Read;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{script}\necho \"rc=$?\""))
        .current_dir("/")
        .uid(id)
        .gid(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = child.wait();
    let (stdout, rc) = out
        .trim_end()
        .rsplit_once("rc=")
        .expect("the script ran to its end");
    Ran {
        rc: rc.parse().unwrap(),
        stdout: stdout.to_string(),
    }
}

/// A child process killed (and reaped if still ours) when dropped, also on a panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_without_a_user_cannot_reach_each_other() {
    require_root!();
    let h = dynamic_harness().await;
    h.secrets()
        .files
        .put(
            "beta-conf",
            &mut std::io::Cursor::new("beta private config\n"),
        )
        .await
        .unwrap();
    h.deploy("alpha", "v1", SLEEPER, json!({})).await;
    h.deploy(
        "beta",
        "v1",
        SLEEPER,
        json!({
            "env": [{"name": "BETA_TOKEN", "value": "beta-token-123"}],
            "mounts": [{"path": "conf/app.toml", "source": {"objectStore": "beta-conf"}}],
        }),
    )
    .await;
    let (pa, pb) = (
        h.running_pid("alpha", 0).await,
        h.running_pid("beta", 0).await,
    );
    let (ua, ga) = ids_of(pa);
    let (ub, gb) = ids_of(pb);
    assert_ne!(ua, ub, "two apps without `user` share uid {ua}");
    assert!(RANGE.contains(&ua) && RANGE.contains(&ub), "{ua} {ub}");
    assert_eq!((ga, gb), (ua, ub), "gid == uid");

    let work = h.work("beta");
    let env = environ(pb);
    assert_eq!(env["USER"], "narun-beta");
    assert_eq!(env["LOGNAME"], "narun-beta");
    assert_eq!(Path::new(&env["HOME"]), work);

    // The work dir, the directory narund created for the mount, the file: the app's only.
    let md = |p: &Path| std::fs::symlink_metadata(p).unwrap();
    let owned = |p: &Path| (md(p).uid(), md(p).gid(), md(p).mode() & 0o7777);
    assert_eq!(owned(&work), (ub, ub, 0o700));
    assert_eq!(owned(&work.join("conf")), (ub, ub, 0o700));
    assert_eq!(owned(&work.join("conf/app.toml")), (ub, ub, 0o600));
    // Its parents are narund's: enterable, not listable, not writable.
    assert_eq!(owned(work.parent().unwrap()), (0, 0, 0o711));
    assert_eq!(
        owned(work.parent().unwrap().parent().unwrap()),
        (0, 0, 0o711)
    );

    // The attack, as alpha's uid: beta's environment, work dir and file.
    let environ_b = format!("/proc/{pb}/environ");
    let steal = format!("cat {environ_b} | tr '\\0' '\\n' | grep BETA_TOKEN");
    let out = sh_as(ua, &steal);
    assert!(
        out.rc != 0 && !out.stdout.contains("beta-token"),
        "alpha's uid read beta's environment: {out:?}"
    );
    let w = work.display();
    for (what, script) in [
        ("write into beta's work dir", format!("echo x > {w}/pwned")),
        ("list beta's work dir", format!("ls {w}")),
        ("read beta's mounted file", format!("cat {w}/conf/app.toml")),
    ] {
        let out = sh_as(ua, &script);
        assert_ne!(out.rc, 0, "alpha's uid could {what}: {out:?}");
    }
    assert!(!work.join("pwned").exists());
    // The same commands work under beta's own uid: the refusals above are permissions.
    let out = sh_as(ub, &steal);
    assert!(out.stdout.contains("BETA_TOKEN=beta-token-123"), "{out:?}");
    let out = sh_as(ub, &format!("cat {w}/conf/app.toml && ls {w}"));
    assert_eq!(out.rc, 0, "{out:?}");
    assert!(out.stdout.contains("beta private config"), "{out:?}");

    // Both ids are recorded in the data dir.
    let rec: BTreeMap<String, u32> = serde_json::from_slice(
        &std::fs::read(h.data.path().join("state/dynamic-users.json")).unwrap(),
    )
    .unwrap();
    assert_eq!((rec["alpha"], rec["beta"]), (ua, ub));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_uid_is_recorded_and_survives_a_restart_of_narund() {
    require_root!();
    let h = dynamic_harness().await;
    // A recorded id wins over the hash of the name (ids are read when first needed).
    let recorded = 65000;
    let hashed = RANGE.start() + (narund::privileges::dynamic::fnv1a(b"edge") % 4336) as u32;
    assert_ne!(recorded, hashed);
    std::fs::create_dir_all(h.data.path().join("state")).unwrap();
    std::fs::write(
        h.data.path().join("state/dynamic-users.json"),
        format!("{{\"edge\": {recorded}}}"),
    )
    .unwrap();
    h.deploy("edge", "v1", SLEEPER, json!({})).await;
    let pid = h.running_pid("edge", 0).await;
    assert_eq!(ids_of(pid), (recorded, recorded));

    // A new narund on the same data dir (offline start from local state).
    h.sup.shutdown().await;
    wait_gone(pid).await;
    let (sup2, root2) = h.second_node().await;
    assert_eq!(sup2.start_offline().await, 1);
    let pid2 = wait_for("edge-0 running after the restart", T, || {
        let s = sup2.snapshot("edge", 0);
        async move {
            s.filter(|s| s.status == InstanceStatus::Running)
                .and_then(|s| s.pid)
        }
    })
    .await;
    assert_eq!(ids_of(pid2), (recorded, recorded));
    assert_eq!(std::fs::metadata(h.work("edge")).unwrap().uid(), recorded);
    sup2.shutdown().await;
    wait_gone(pid2).await;
    kill_and_remove_cgroups(&root2);
    h.finish().await;
}

/// Swaps `<work>/conf/sub` between the real directory and a symlink to `outside` as fast as
/// it can, and deletes the placed file so narund places it again at every start.
const SWAPPER: &str = r#"
import os, sys
os.chdir(sys.argv[1])
out = sys.argv[2]
while True:
    try:
        os.unlink("sub/app.toml")
    except OSError:
        pass
    try:
        os.rename("sub", "sub.real")
        os.symlink(out, "sub")
        os.unlink("sub")
        os.rename("sub.real", "sub")
    except OSError:
        pass
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_into_a_mount_path_never_redirects_the_write() {
    require_root!();
    // The fixed default user (`nobody`): the race needs no dynamic user.
    let h = Harness::builder("identity")
        .secrets()
        .spec_fields(json!({"stopTimeoutSec": 3, "settleSec": 0}))
        .start()
        .await;
    // 1 MiB: the download takes a while, a wide window for a check-then-use placement.
    let content = "x".repeat(1 << 20);
    h.secrets()
        .files
        .put("race-conf", &mut std::io::Cursor::new(content))
        .await
        .unwrap();
    // Root's directory the app cannot write to.
    let outside = tempfile::tempdir().unwrap();
    h.deploy(
        "racer",
        "v1",
        SLEEPER,
        json!({"mounts": [{"path": "conf/sub/app.toml", "source": {"objectStore": "race-conf"}}]}),
    )
    .await;
    h.running_pid("racer", 0).await;
    let work = h.work("racer");
    let uid = std::fs::metadata(&work).unwrap().uid();

    // The app's uid swaps, narund places the file again at every restart.
    let swapper = KillOnDrop(
        Command::new("python3")
            .arg("-c")
            .arg(SWAPPER)
            .arg(work.join("conf"))
            .arg(outside.path())
            .current_dir("/")
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut failed = 0;
    for _ in 0..15 {
        let reply = tokio::time::timeout(T, h.sup.restart_app("racer", None))
            .await
            .expect("a restart within T");
        failed += usize::from(!reply.error.is_empty());
    }
    drop(swapper);
    let leaked: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leaked.is_empty(),
        "narund wrote outside the work dir: {leaked:?}"
    );
    eprintln!("{failed} of 15 restarts failed while the swapper ran");

    // With the symlink in place for good: the start fails, naming the path.
    let conf = work.join("conf");
    if conf.join("sub.real").exists() {
        std::fs::remove_dir_all(conf.join("sub")).ok();
        std::fs::remove_file(conf.join("sub")).ok();
        std::fs::rename(conf.join("sub.real"), conf.join("sub")).unwrap();
    }
    std::fs::remove_dir_all(conf.join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.path(), conf.join("sub")).unwrap();
    let from = h.events.lock().unwrap().len();
    let reply = h.sup.restart_app("racer", None).await;
    assert!(!reply.error.is_empty(), "{reply:?}");
    let named = format!("{} is a symlink", conf.join("sub").display());
    let e = wait_for("a mount failure naming the symlink", T, || {
        let hit = h.events.lock().unwrap()[from..]
            .iter()
            .find(|e| e.app_name == "racer" && e.reason == Some(Reason::Mount))
            .cloned();
        async move { hit }
    })
    .await;
    assert!(e.error.contains(&named), "{}", e.error);
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    h.finish().await;
}

//! Real-process tests for `narund::privileges` (they need root, which this test machine is).
//!
//! Each test spawns a real child with a [`PrivilegePlan`] and reads the kernel's view of it from
//! `/proc/<pid>/status`.

use std::collections::HashMap;
use std::fs;
use std::process::{Command, Stdio};

use caps::Capability;
use narund::privileges::{
    AppIdentity, NARUND_CAPS, PrivilegeError, PrivilegePlan, drop_own_bounding_set, mask_of,
};

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

/// `/proc/<pid>/status` as key → value.
fn status_of(pid: u32) -> HashMap<String, String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn hex(mask: u64) -> String {
    format!("{mask:016x}")
}

/// Spawn `/bin/sleep 1000` under `plan`, return its status, kill it.
fn status_under(plan: PrivilegePlan) -> HashMap<String, String> {
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("1000").current_dir("/").stdin(Stdio::null());
    plan.install(&mut cmd);
    // spawn() returns after a successful exec, so the status shows the final credentials.
    let mut child = cmd.spawn().expect("spawn with privilege plan");
    let st = status_of(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    st
}

fn assert_caps(st: &HashMap<String, String>, mask: u64) {
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(st[key], hex(mask), "{key} in {st:?}");
    }
}

#[test]
fn nobody_with_net_bind_service() {
    require_root!();
    let who = AppIdentity::resolve(Some("nobody"), "nobody", false).unwrap();
    assert_eq!(who.uid, 65534);
    let plan = PrivilegePlan::new(&who, &[Capability::CAP_NET_BIND_SERVICE]).unwrap();
    assert_eq!(plan.keep_caps, 0x400);
    let st = status_under(plan);
    let (u, g) = (who.uid, who.gid);
    assert_eq!(st["Uid"], format!("{u}\t{u}\t{u}\t{u}"));
    assert_eq!(st["Gid"], format!("{g}\t{g}\t{g}\t{g}"));
    assert_eq!(st["Groups"], "", "no supplementary groups");
    assert_caps(&st, 0x400);
    assert_eq!(st["NoNewPrivs"], "1");
}

#[test]
fn no_capabilities_gives_empty_sets() {
    require_root!();
    let who = AppIdentity::resolve(Some("nobody"), "nobody", false).unwrap();
    let st = status_under(PrivilegePlan::new(&who, &[]).unwrap());
    assert_eq!(st["Uid"].split('\t').next(), Some("65534"));
    assert_caps(&st, 0);
    assert_eq!(st["NoNewPrivs"], "1");
}

#[test]
fn explicit_root_keeps_uid_0_but_only_listed_caps() {
    require_root!();
    let who = AppIdentity::resolve(Some("root"), "nobody", true).unwrap();
    assert_eq!(who.uid, 0);
    let keep = [Capability::CAP_NET_BIND_SERVICE, Capability::CAP_KILL];
    let st = status_under(PrivilegePlan::new(&who, &keep).unwrap());
    assert_eq!(st["Uid"], "0\t0\t0\t0");
    assert_eq!(st["Groups"], "");
    assert_caps(&st, mask_of(&keep));
    assert_eq!(st["NoNewPrivs"], "1");
}

#[test]
fn unknown_user_and_implicit_root_are_clear_errors() {
    let err = AppIdentity::resolve(Some("no-such-user-narun"), "nobody", true).unwrap_err();
    assert!(matches!(err, PrivilegeError::UnknownUser { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-user-narun") && msg.contains("/etc/passwd"),
        "{msg}"
    );
    let err = AppIdentity::resolve(None, "root", true).unwrap_err();
    assert!(
        matches!(err, PrivilegeError::RootNotAllowed { .. }),
        "{err}"
    );
}

/// Runs a Python snippet as `nobody` that binds a free port below 1024 on 127.0.0.1.
/// Exit 0 = bound, 13 = EACCES.
fn bind_low_port_as_nobody(keep: &[Capability]) -> Option<i32> {
    let python = std::path::Path::new("/usr/bin/python3");
    if !python.exists() {
        return None;
    }
    let who = AppIdentity::resolve(Some("nobody"), "nobody", false).unwrap();
    let plan = PrivilegePlan::new(&who, keep).unwrap();
    let script = r#"
import errno, socket, sys
for port in range(600, 1000):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print("bound", port)
        sys.exit(0)
    except PermissionError:
        sys.exit(13)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
sys.exit(2)
"#;
    let mut cmd = Command::new(python);
    cmd.arg("-I").arg("-c").arg(script).current_dir("/");
    plan.install(&mut cmd);
    let out = cmd.output().expect("run python3");
    eprintln!(
        "python (keep {keep:?}): {:?} {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out.status.code()
}

#[test]
fn kept_capability_really_works_across_exec() {
    require_root!();
    let Some(code) = bind_low_port_as_nobody(&[Capability::CAP_NET_BIND_SERVICE]) else {
        eprintln!("SKIP: /usr/bin/python3 not available");
        return;
    };
    assert_eq!(code, 0, "nobody + CAP_NET_BIND_SERVICE binds a port < 1024");

    let start: u32 = fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .map(|s| s.trim().parse().unwrap_or(1024))
        .unwrap_or(1024);
    if start <= 600 {
        eprintln!("SKIP negative check: ip_unprivileged_port_start = {start}");
        return;
    }
    assert_eq!(
        bind_low_port_as_nobody(&[]),
        Some(13),
        "without the capability: EACCES"
    );
}

#[test]
fn capability_outside_bounding_set_is_rejected_in_the_parent() {
    require_root!();
    // Drop CAP_NET_RAW from this thread's bounding set only, then ask for it.
    std::thread::spawn(|| {
        let keep: Vec<Capability> = NARUND_CAPS.to_vec();
        drop_own_bounding_set(&keep).unwrap();
        let who = AppIdentity::resolve(Some("nobody"), "nobody", false).unwrap();
        let err = PrivilegePlan::new(&who, &[Capability::CAP_NET_RAW]).unwrap_err();
        assert!(
            matches!(err, PrivilegeError::CapabilityUnavailable { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("CAP_NET_RAW"), "{err}");
    })
    .join()
    .unwrap();
}

#[test]
fn own_bounding_set_is_reduced_to_narund_caps() {
    require_root!();
    // Capabilities are per thread: do it on a fresh thread so the rest of the test process is unaffected.
    let st = std::thread::spawn(|| {
        let dropped = drop_own_bounding_set(NARUND_CAPS).expect("drop own bounding set");
        assert_ne!(dropped, 0);
        assert_eq!(
            dropped & mask_of(NARUND_CAPS),
            0,
            "kept caps are not dropped"
        );
        let st: HashMap<String, String> = fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        // A child of this thread can still be given one of the kept caps.
        let who = AppIdentity::resolve(Some("nobody"), "nobody", false).unwrap();
        let plan = PrivilegePlan::new(&who, &[Capability::CAP_NET_BIND_SERVICE]).unwrap();
        let child = status_under(plan);
        (st, child)
    })
    .join()
    .unwrap();
    let (own, child) = st;
    let main = status_of(std::process::id());
    // Only what the process had to begin with can be kept (this machine lacks CAP_SYS_RESOURCE).
    let initial = u64::from_str_radix(&main["CapBnd"], 16).unwrap();
    let mask = mask_of(NARUND_CAPS) & initial;
    assert_eq!(own["CapBnd"], hex(mask));
    assert_eq!(own["CapPrm"], hex(mask));
    assert_eq!(own["CapEff"], hex(mask));
    assert_eq!(own["CapInh"], hex(0));
    assert_eq!(own["CapAmb"], hex(0));
    assert_caps(&child, 0x400);
    // The main test thread still has everything.
    assert_ne!(main["CapBnd"], hex(mask));
}

#[tokio::test]
async fn cgroup_placement_then_privilege_drop_in_one_spawn() {
    require_root!();
    use narund::cgroup::{CgroupRoot, InstanceCgroup, Layout, Limits};
    let Some(mount) = Layout::detect().unwrap().mount else {
        eprintln!("SKIP: cgroup2 not mounted");
        return;
    };
    let dir = mount
        .mount_point
        .join(format!("narund-privtest-{}", std::process::id()));
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = fs::write(self.0.join("cgroup.kill"), "1");
            for _ in 0..500 {
                if fs::read_to_string(self.0.join("cgroup.events"))
                    .is_ok_and(|t| t.contains("populated 0"))
                {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if let Ok(rd) = fs::read_dir(&self.0) {
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    let _ = fs::remove_dir(e.path());
                }
            }
            let _ = fs::remove_dir(&self.0);
        }
    }
    fs::create_dir(&dir).unwrap();
    let _guard = Rm(dir.clone());
    let root = CgroupRoot::discover(Some(&dir)).unwrap();
    let cg = InstanceCgroup::create(&root, "narun-priv-0-x", &Limits::default()).unwrap();

    let who = AppIdentity::resolve(Some("nobody"), "nobody", false).unwrap();
    let plan = PrivilegePlan::new(&who, &[]).unwrap();
    let mut cmd = Command::new("/bin/sleep");
    cmd.arg("1000").current_dir("/");
    cg.place_command(&mut cmd).unwrap(); // first: needs root
    plan.install(&mut cmd); // then: drop to nobody
    let mut child = cmd.spawn().unwrap();
    assert_eq!(cg.pids().unwrap(), vec![child.id() as i32]);
    assert_eq!(
        status_of(child.id())["Uid"].split('\t').next(),
        Some("65534")
    );
    cg.kill().unwrap();
    cg.wait_empty(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    child.wait().unwrap();
    cg.remove(std::time::Duration::from_secs(5)).await.unwrap();
}

//! The privilege boundary as an attacker with write access to `app-configs` and
//! `app-binaries` sees it (narund as root, a real nats-server, real processes): a spec gets
//! no capability the node does not grant, an app cannot regain root's, and only ELF
//! executables of this node run (never a shell reading a file the kernel refused).

mod common;

use common::Harness;
use narun_test_support::apps;
use narun_wire::events::StatusEvent;
use narun_wire::status::{InstanceStatus, Reason};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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

/// A directory every uid may write into (so an app that runs, as whoever, can leave a
/// marker there), and the marker's path in it.
fn marker_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let marker = dir.path().join("ran");
    (dir, marker)
}

fn failed(e: &StatusEvent, app: &str) -> bool {
    e.app_name == app && e.status == InstanceStatus::Failed
}

/// A python3 app that reports what it can do: `setresuid(0)`, reading `secret`, its
/// capability sets and securebits, and the capability sets of a program it executes.
fn prober(secret: &Path) -> String {
    format!(
        r#"#!/usr/bin/python3
import ctypes, os, subprocess
def caps():
    f = {{}}
    for l in open("/proc/self/status"):
        k, _, v = l.partition(":")
        f[k] = v.strip()
    return "Eff=%s Prm=%s Bnd=%s Amb=%s" % (f["CapEff"], f["CapPrm"], f["CapBnd"], f["CapAmb"])
try:
    os.setresuid(0, 0, 0)
    print("setresuid: ok uid=%d" % os.getuid(), flush=True)
except OSError as e:
    print("setresuid: errno %d" % e.errno, flush=True)
try:
    print("read: " + open("{secret}").read().strip(), flush=True)
except OSError as e:
    print("read: errno %d" % e.errno, flush=True)
print("uid=%d caps: %s" % (os.getuid(), caps()), flush=True)
print("securebits: %d" % ctypes.CDLL(None).prctl(27, 0, 0, 0, 0), flush=True)
CHILD = """
f = dict(l.rstrip("\\n").split(":\\t", 1) for l in open("/proc/self/status") if ":\\t" in l)
print("child: Eff=%s Prm=%s Bnd=%s" % (f["CapEff"], f["CapPrm"], f["CapBnd"]), flush=True)
"""
subprocess.run(["/usr/bin/python3", "-c", CHILD])
print("done", flush=True)
os.execv("/bin/sleep", ["sleep", "1000"])
"#,
        secret = secret.display()
    )
}

/// A root-only file standing in for `/etc/narun/master.key`.
fn root_only_secret() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = dir.path().join("master.key");
    std::fs::write(&p, "TOP-SECRET\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, p)
}

/// The lines `app` printed, once it printed `done`.
async fn report(h: &Harness, app: &str) -> Vec<String> {
    h.wait_log(&format!("{app} reports"), |l| {
        l.app_name == app && l.message == "done"
    })
    .await;
    h.logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.app_name == app)
        .map(|l| l.message.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_asking_for_cap_setuid_is_refused_and_never_runs() {
    require_root!();
    let h = Harness::builder("caps-setuid").start().await;
    let (_dir, marker) = marker_dir();
    let script = format!("#!/bin/sh\ntouch {}\nexec sleep 1000\n", marker.display());
    for (app, caps) in [
        ("setuid", vec!["CAP_SETUID"]),
        ("admin", vec!["net_bind_service", "sys_admin"]),
    ] {
        h.deploy(
            app,
            "v1",
            &script,
            serde_json::json!({ "capabilities": caps }),
        )
        .await;
        let e = h
            .wait_event(&format!("{app} refused"), |e| failed(e, app))
            .await;
        assert_eq!(e.reason, Some(Reason::Capability), "{e:?}");
        let cap = if app == "setuid" {
            "CAP_SETUID"
        } else {
            "CAP_SYS_ADMIN"
        };
        assert!(
            e.error
                .contains(&format!("capability {cap} is not allowed on this node"))
                && e.error
                    .contains("allowed_capabilities = [CAP_NET_BIND_SERVICE]")
                && e.error.contains("root-equivalent"),
            "{}",
            e.error
        );
        assert!(
            h.events(app).iter().all(|e| e.pid.is_none()),
            "never ran: {:?}",
            h.events(app)
        );
    }
    assert!(!marker.exists(), "the refused app never ran");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_root_equivalent_capability_still_needs_allow_root() {
    require_root!();
    let h = Harness::builder("caps-listed")
        .config(|c| {
            c.apps.allowed_capabilities = vec!["CAP_NET_BIND_SERVICE".into(), "CAP_SETUID".into()];
        })
        .start()
        .await;
    let (_dir, marker) = marker_dir();
    let script = format!("#!/bin/sh\ntouch {}\nexec sleep 1000\n", marker.display());
    h.deploy(
        "listed",
        "v1",
        &script,
        serde_json::json!({ "capabilities": ["CAP_SETUID"] }),
    )
    .await;
    let e = h
        .wait_event("listed refused", |e| failed(e, "listed"))
        .await;
    assert_eq!(e.reason, Some(Reason::Capability), "{e:?}");
    assert!(
        e.error.contains("capability CAP_SETUID is root-equivalent")
            && e.error.contains("allow_root = false"),
        "{}",
        e.error
    );
    assert!(!marker.exists(), "the refused app never ran");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_granted_nothing_cannot_become_root_or_read_root_files() {
    require_root!();
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("SKIP: /usr/bin/python3 not available");
        return;
    }
    let h = Harness::builder("caps-nothing").start().await;
    let (_secret_dir, secret) = root_only_secret();
    h.deploy("probe", "v1", &prober(&secret), serde_json::json!({}))
        .await;
    let lines = report(&h, "probe").await;
    println!("{lines:#?}");
    let has = |s: &str| lines.iter().any(|l| l == s);
    assert!(has("setresuid: errno 1"), "EPERM: {lines:?}");
    assert!(has("read: errno 13"), "EACCES: {lines:?}");
    assert!(!lines.iter().any(|l| l.contains("TOP-SECRET")));
    let zero = "0000000000000000";
    assert!(
        has(&format!(
            "uid=65534 caps: Eff={zero} Prm={zero} Bnd={zero} Amb={zero}"
        )),
        "{lines:?}"
    );
    assert!(has("securebits: 239"), "locked securebits: {lines:?}");
    assert!(
        has(&format!("child: Eff={zero} Prm={zero} Bnd={zero}")),
        "{lines:?}"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_root_app_without_capabilities_has_none_and_keeps_none_across_exec() {
    require_root!();
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("SKIP: /usr/bin/python3 not available");
        return;
    }
    let h = Harness::builder("caps-root")
        .config(|c| c.apps.allow_root = true)
        .start()
        .await;
    let (_secret_dir, secret) = root_only_secret();
    h.deploy(
        "rootprobe",
        "v1",
        &prober(&secret),
        serde_json::json!({ "user": "root" }),
    )
    .await;
    let lines = report(&h, "rootprobe").await;
    println!("{lines:#?}");
    let has = |s: &str| lines.iter().any(|l| l == s);
    let zero = "0000000000000000";
    assert!(
        has(&format!(
            "uid=0 caps: Eff={zero} Prm={zero} Bnd={zero} Amb={zero}"
        )),
        "{lines:?}"
    );
    // uid 0 with SECBIT_NOROOT: a program it executes gets no capabilities either.
    assert!(has("securebits: 239"), "locked securebits: {lines:?}");
    assert!(
        has(&format!("child: Eff={zero} Prm={zero} Bnd={zero}")),
        "{lines:?}"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elf_header_followed_by_a_shell_script_never_runs() {
    require_root!();
    let h = Harness::builder("caps-elf").start().await;
    let (_dir, marker) = marker_dir();
    let touch = format!("touch {}", marker.display());
    // The header check refuses the first (its header is cut short by shell text); the
    // second passes it and is refused by the kernel (ENOEXEC), which must not make narund
    // run it through /bin/sh.
    for (app, bytes, says) in [
        ("elfsh", apps::elf_then_shell(&touch), "is refused: ELF"),
        (
            "elfinterp",
            apps::elf_enoexec_then_shell(&touch),
            "the kernel refused to execute",
        ),
    ] {
        h.upload(app, "v1", &bytes).await;
        h.put_spec(app, h.spec(app, "v1", 1)).await;
        let e = h
            .wait_event(&format!("{app} refused"), |e| failed(e, app))
            .await;
        assert_eq!(e.reason, Some(Reason::ExecFormat), "{e:?}");
        assert!(e.error.contains(says), "{}", e.error);
        assert!(!marker.exists(), "{app}: the shell lines never ran");
    }
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_and_foreign_executables_run_only_where_allowed() {
    require_root!();
    let h = Harness::builder("caps-script")
        .config(|c| c.apps.allow_scripts = false)
        .start()
        .await;
    let (_dir, marker) = marker_dir();
    let script = format!("#!/bin/sh\ntouch {}\nexec sleep 1000\n", marker.display());
    h.deploy("script", "v1", &script, serde_json::json!({}))
        .await;
    let e = h
        .wait_event("script refused", |e| failed(e, "script"))
        .await;
    assert_eq!(e.reason, Some(Reason::ExecFormat), "{e:?}");
    assert!(
        e.error.contains("not an ELF executable") && e.error.contains("allow_scripts"),
        "{}",
        e.error
    );
    // An executable of another machine (the header of an s390x or arm64 binary).
    let other = if narun_wire::elf::ElfInfo::HOST.machine == 183 {
        62
    } else {
        183
    };
    let mut foreign = apps::elf_header(0, other);
    foreign.extend_from_slice(b"\n");
    h.upload("foreign", "v1", &foreign).await;
    h.put_spec("foreign", h.spec("foreign", "v1", 1)).await;
    let e = h
        .wait_event("foreign refused", |e| failed(e, "foreign"))
        .await;
    assert_eq!(e.reason, Some(Reason::ExecFormat), "{e:?}");
    assert!(
        e.error.contains("but this node is") && e.error.contains(&format!("ELF machine {other}")),
        "{}",
        e.error
    );
    assert!(!marker.exists());
    h.finish().await;
}

//! Issue 20, "the first five minutes": the README's first command, `scripts/demo.sh`, run
//! the way CI runs it (`--check`) with the debug binaries of this build (`NARUN_BIN_DIR`, no
//! release build). The script starts a real nats-server and narund (gateway feature),
//! deploys the hello app with `narunctl deploy --wait`, calls it through the gateway, and
//! shows `narunctl apps ls` and `narunctl logs hello`.
//!
//! The test checks what a newcomer sees: the answer through the gateway, `apps ls` with
//! hello running 1/1, a log line of hello; that hello ran under a dynamic uid (no user was
//! created: the machine has no account for it); and that the script leaves nothing behind:
//! no process started from its directory, no cgroup, no files.
#![cfg(feature = "gateway")]

use narun_test_support::workspace_bin;
use narun_test_support::{cgroup2_mount, free_ports, kill_and_remove_cgroups, narunctl_bin};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The whole demo: three process starts, an upload, a deploy --wait (the app settles for
/// `settleSec`, 2 s by default), a few narunctl calls, and the stop of everything.
const BOUND: Duration = Duration::from_secs(180);

/// Pids of the processes whose command line or executable mentions `dir`.
fn processes_below(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let exe = std::fs::read_link(e.path().join("exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if (cmdline.contains(&needle) || exe.contains(&needle)) && narun_test_support::alive(pid) {
            found.push((pid, format!("{cmdline} [{exe}]")));
        }
    }
    found
}

/// The lines printed after the `$ <command>` line of `command`, up to the next blank line.
fn section<'a>(stdout: &'a str, command: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with(&format!("$ {command}")))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_check_deploys_hello_through_narund_and_leaves_nothing_behind() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    // The app's dynamic user must reach its work dir below the demo's directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let bin = dir.path().join("bin");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&bin).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o711)).unwrap();
    for (name, path) in [
        // Built with the gateway now: other tests of the suite build target/<profile>/narund
        // without features (the path CARGO_BIN_EXE_narund names too).
        (
            "narund",
            workspace_bin("narund", "narund", &["--features", "gateway"]),
        ),
        ("narunctl", narunctl_bin()),
        ("hello", workspace_bin("hello", "hello", &[])),
    ] {
        std::os::unix::fs::symlink(path, bin.join(name)).unwrap();
    }
    let [nats, http, metrics] = free_ports();

    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(root.join("scripts/demo.sh"))
        .arg("--check")
        .env("NARUN_BIN_DIR", &bin)
        .env("TMPDIR", &tmp)
        .env("NATS_PORT", nats.to_string())
        .env("HTTP_PORT", http.to_string())
        .env("METRICS_PORT", metrics.to_string())
        .env_remove("NATS_URL")
        .env_remove("NARUN_CONTEXT")
        .env_remove("NARUNCTL_CONFIG")
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn().expect("bash runs scripts/demo.sh");
    let pid = child.id().expect("the script's pid") as i32;
    // The script names its cgroup root after its own pid (bash's `$$`).
    let cgroup_root: PathBuf = cgroup2_mount().join(format!("narun-demo-{pid}"));
    let out = match tokio::time::timeout(BOUND, child.wait_with_output()).await {
        Ok(out) => out.expect("the script's output"),
        Err(_) => {
            // SIGTERM: the script's trap stops narund and nats-server; then whatever is left.
            // SAFETY: kill(2) on the process group this test created.
            unsafe { libc::kill(-pid, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(5));
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            kill_and_remove_cgroups(&cgroup_root);
            panic!("scripts/demo.sh --check did not finish within {BOUND:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let shown = format!("--- stdout:\n{stdout}\n--- stderr:\n{stderr}");

    // Nothing is left behind: checked before the test's own safety net below.
    let mut left = processes_below(dir.path());
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = processes_below(dir.path());
    }
    for (pid, _) in &left {
        // SAFETY: kill(2) of a process started from this test's directory.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let cgroup_left = cgroup_root.exists();
    kill_and_remove_cgroups(&cgroup_root);
    assert!(
        left.is_empty(),
        "processes of the demo still run after it exited: {left:?}\n{shown}"
    );
    assert!(
        !cgroup_left,
        "the demo left its cgroup root {}\n{shown}",
        cgroup_root.display()
    );
    let files: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(
        files.is_empty(),
        "the demo left files in {}: {files:?}\n{shown}",
        tmp.display()
    );

    assert!(out.status.success(), "demo.sh --check failed\n{shown}");
    assert!(
        stdout.contains("narunctl deploy --name hello --tag v1"),
        "the demo shows the deploy\n{shown}"
    );
    let answer = section(&stdout, "curl ");
    assert_eq!(
        answer,
        ["Hi, world! (from hello-0)"],
        "the answer through the gateway\n{shown}"
    );
    let apps = section(&stdout, "narunctl apps ls");
    assert!(
        apps.iter().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.first() == Some(&"hello") && cols.get(1) == Some(&"v1")
        }),
        "apps ls shows hello v1 (the script checked it runs 1 of 1)\n{shown}"
    );
    let logs = section(&stdout, "narunctl logs hello");
    assert!(
        logs.iter().any(|l| l.contains("hello-0")),
        "narunctl logs hello shows a line of hello-0\n{shown}"
    );
    // The app ran under a dynamic uid (systemd's range, the default dynamic_uid_range).
    let uid: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("== hello runs as uid "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("the demo names hello's uid\n{shown}"));
    assert!(
        (61184..=65519).contains(&uid),
        "hello ran as uid {uid}, not a dynamic uid\n{shown}"
    );
}

//! The real `narunctl` binary, run the way an operator runs it.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

use crate::workspace_bin;

/// How long one narunctl command may take before the test fails.
pub const NARUNCTL_BOUND: Duration = Duration::from_secs(90);

/// Path of the `narunctl` binary: the one cargo built for the running test
/// (`CARGO_BIN_EXE_narunctl`, set for narunctl's own tests), else built on demand
/// ([`workspace_bin`]).
pub fn narunctl_bin() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_narunctl")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_bin("narunctl", "narunctl", &[]))
}

/// A narunctl command with no NATS, context or master key settings from the test's
/// environment (`NATS_URL`, `NARUN_CONTEXT`, `NARUNCTL_CONFIG`, `NARUN_MASTER_KEY`,
/// `NARUN_MASTER_KEY_PATH`, and `HOME`/`XDG_CONFIG_HOME` pointing at `home`, so no context
/// file of the machine is read).
pub fn narunctl_cmd(home: &Path) -> tokio::process::Command {
    narunctl_cmd_via(&[], home)
}

/// [`narunctl_cmd`] run through `wrapper` (a program and its arguments, e.g. `["setpriv",
/// "--bounding-set=-dac_override", "--"]`), which then runs narunctl; no wrapper when empty.
pub fn narunctl_cmd_via(wrapper: &[&str], home: &Path) -> tokio::process::Command {
    let mut cmd = match wrapper.split_first() {
        None => tokio::process::Command::new(narunctl_bin()),
        Some((program, args)) => {
            let mut c = tokio::process::Command::new(program);
            c.args(args).arg(narunctl_bin());
            c
        }
    };
    for v in [
        "NATS_URL",
        "NARUN_CONTEXT",
        "NARUNCTL_CONFIG",
        "XDG_CONFIG_HOME",
        "NARUN_MASTER_KEY",
        "NARUN_MASTER_KEY_PATH",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("HOME", home);
    cmd
}

/// Run `cmd` (a narunctl command line being built) to the end, stdin closed, bounded by
/// [`NARUNCTL_BOUND`].
pub async fn run(cmd: tokio::process::Command) -> Output {
    run_with_input(cmd, None).await
}

async fn run_with_input(mut cmd: tokio::process::Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().expect("narunctl runs");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(input).await.unwrap();
        drop(w);
    }
    tokio::time::timeout(NARUNCTL_BOUND, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("narunctl finished within {NARUNCTL_BOUND:?}"))
        .expect("narunctl output")
}

/// `narunctl --nats URL ARGS…` with a clean environment ([`narunctl_cmd`]).
pub async fn narunctl(url: &str, args: &[&str]) -> Output {
    narunctl_with(url, args, &[], None).await
}

/// [`narunctl`] with these environment variables set and `stdin` (if given) as its input.
pub async fn narunctl_with(
    url: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = narunctl_cmd(home.path());
    cmd.arg("--nats")
        .arg(url)
        .args(args)
        .envs(env.iter().copied());
    run_with_input(cmd, stdin).await
}

/// `narunctl deploy -f SPEC --no-binary --wait=WAIT` (binaries put in the store
/// beforehand, e.g. with [`crate::upload_script`]).
pub async fn deploy_file(url: &str, spec: &Path, wait: &str) -> Output {
    let wait = format!("--wait={wait}");
    narunctl(
        url,
        &["deploy", "-f", spec.to_str().unwrap(), "--no-binary", &wait],
    )
    .await
}

/// Output bytes as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A long-running narunctl (`logs`, which follows) whose stdout and stderr lines are read
/// as they come; killed on drop.
pub struct Running {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stderr: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    _home: tempfile::TempDir,
}

impl Running {
    /// `narunctl --nats URL ARGS…` with a clean environment ([`narunctl_cmd`]), stdin
    /// closed.
    pub fn spawn(url: &str, args: &[&str]) -> Running {
        use tokio::io::AsyncBufReadExt;
        let home = tempfile::tempdir().unwrap();
        let mut child = narunctl_cmd(home.path())
            .arg("--nats")
            .arg(url)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Running {
            stdout: tokio::io::BufReader::new(child.stdout.take().unwrap()).lines(),
            stderr: tokio::io::BufReader::new(child.stderr.take().unwrap()).lines(),
            child,
            _home: home,
        }
    }

    /// The next line on stdout, within [`crate::T`].
    pub async fn stdout_line(&mut self) -> String {
        tokio::time::timeout(crate::T, self.stdout.next_line())
            .await
            .expect("a stdout line in time")
            .unwrap()
            .expect("stdout still open")
    }

    /// The next line on stderr, within [`crate::T`].
    pub async fn stderr_line(&mut self) -> String {
        tokio::time::timeout(crate::T, self.stderr.next_line())
            .await
            .expect("a stderr line in time")
            .unwrap()
            .expect("stderr still open")
    }

    /// The first stdout line for which `wanted` holds (`what` names it in the panic),
    /// within [`crate::T`].
    pub async fn stdout_until(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        until(&mut self.stdout, "stdout", what, wanted).await
    }

    /// The first stderr line containing `what`, within [`crate::T`].
    pub async fn stderr_until(&mut self, what: &str) -> String {
        until(&mut self.stderr, "stderr", what, |l| l.contains(what)).await
    }

    /// SIGINT (Ctrl-C); it must exit 0 within [`crate::T`].
    pub async fn interrupt(mut self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = tokio::time::timeout(crate::T, self.child.wait())
            .await
            .expect("exits after SIGINT")
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
}

/// The JSON of one app log line as narund publishes it on `logs.<app>.<node>`, stamped now.
pub fn log_line(app: &str, node: &str, instance: &str, msg: &str) -> Vec<u8> {
    serde_json::to_vec(&narun_wire::events::LogLine {
        instance_id: instance.into(),
        app_name: app.into(),
        node_id: node.into(),
        stream: "stdout".into(),
        message: msg.into(),
        timestamp: narun_wire::events::now_rfc3339(),
        partial: false,
        dropped_before: 0,
        trace_id: None,
    })
    .unwrap()
}

async fn until<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    stream: &str,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    tokio::time::timeout(crate::T, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if wanted(&l) {
                return l;
            }
        }
        panic!("narunctl ended before printing {what:?} on {stream}")
    })
    .await
    .unwrap_or_else(|_| panic!("no {what:?} on {stream} within {:?}", crate::T))
}

/// Its stdout, after asserting that the command exited 0 (else both outputs in the panic).
pub fn expect_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Its stderr, after asserting that the command exited 1 (narunctl's "failed" status).
pub fn expect_failed(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

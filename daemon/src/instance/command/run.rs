//! One run of a command unit: the binary started for one request in a child cgroup of
//! the instance's cgroup (`narun-run-<n>`), as the app's user with its capabilities and
//! open files limit, with the instance's environment plus the request's
//! ([`super::request`]); the body on stdin, stdout and stderr read up to their bounds; a
//! run past its time, or writing past a bound, is killed with `cgroup.kill` (the process
//! group without cgroups). When the started process exits, whatever it left in the run's
//! cgroup is killed too (systemd's `KillMode=control-group`), and the cgroup removed.

use super::request::CommandRequest;
use super::response::{Reply, parse_output};
use crate::cgroup::RunCgroup;
use crate::instance::process::{Processes, SpawnError, SpawnRequest};
use crate::logs::LogSink;
use crate::privileges::PrivilegePlan;
use narun_spec::CommandUnitSpec;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// How long a killed run may take to be gone before narund stops waiting for it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What every run of one start of a command unit shares, prepared once (binary, user,
/// work dir, secrets, environment, cgroup).
pub(in crate::instance) struct Prepared {
    pub instance_id: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The instance's environment (spec `env` without `NARUN_REQUEST_*`, secrets,
    /// `NARUN_*`, NATS): each run adds its request's variables.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub nofile: (u64, u64),
    pub privileges: Option<PrivilegePlan>,
    /// The instance's cgroup (its runs are its children); `None` without cgroups.
    pub cgroup: Option<Box<dyn RunCgroup>>,
    pub processes: Arc<dyn Processes>,
    pub sink: LogSink,
    pub settings: CommandUnitSpec,
    /// Numbers the runs' cgroups.
    pub seq: AtomicU64,
    /// The start's NATS credentials file, removed when the start ends.
    pub _nats_creds: Option<crate::instance::nats_identity::CredsFile>,
}

/// How a run went wrong, for the endpoint's stats: the `data` counter and the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::instance) enum Failure {
    /// Non-zero exit, killed by a signal, output over a bound, a bad header block, or
    /// not started at all.
    Failed,
    /// Past its time: killed.
    Timeout,
}

impl Failure {
    /// The endpoint `data` counter.
    pub fn counter(self) -> &'static str {
        match self {
            Failure::Failed => super::STAT_FAILED,
            Failure::Timeout => super::STAT_TIMEOUT,
        }
    }
}

/// A run's answer, and the failure it stands for.
pub(in crate::instance) struct Ran {
    pub reply: Reply,
    pub failure: Option<Failure>,
}

impl Prepared {
    /// Run the binary for `req`, for at most `budget`.
    pub async fn run(&self, req: &CommandRequest, budget: Duration) -> Ran {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let failed = |status: u16, text: String, failure: Failure| {
            self.sink.line("stderr", &format!("narund: {text}"));
            Ran {
                reply: Reply::failure(status, &text),
                failure: Some(failure),
            }
        };
        let cgroup = match &self.cgroup {
            Some(parent) => match parent.child(&format!("narun-run-{n}")) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    return failed(
                        502,
                        format!("the command could not be started: its cgroup: {e}"),
                        Failure::Failed,
                    );
                }
            },
            None => None,
        };
        let timeout_ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX);
        let mut env = self.env.clone();
        env.extend(req.env(timeout_ms));
        let ran = match self.spawn(env, cgroup.as_deref()).await {
            Ok((proc, pipes)) => {
                self.follow(proc, pipes, cgroup.as_deref(), req, budget)
                    .await
            }
            Err(e) => failed(
                502,
                format!("the command could not be started: {e}"),
                Failure::Failed,
            ),
        };
        if let Some(cg) = cgroup
            && let Err(e) = cg.remove(KILL_WAIT).await
        {
            tracing::warn!(instance = %self.instance_id, error = %e, "removing a command run's cgroup");
        }
        ran
    }

    /// Start the binary with pipes for stdin, stdout and stderr (retrying `ETXTBSY`, as a
    /// start does: another thread's fork may hold a freshly written binary open).
    async fn spawn(
        &self,
        env: Vec<(String, String)>,
        cgroup: Option<&dyn RunCgroup>,
    ) -> Result<(Box<dyn crate::instance::process::Proc>, [OwnedFd; 3]), String> {
        let mut attempt = 0;
        loop {
            let (in_r, in_w) = std::io::pipe().map_err(|e| format!("creating a pipe: {e}"))?;
            let (out_r, out_w) = std::io::pipe().map_err(|e| format!("creating a pipe: {e}"))?;
            let (err_r, err_w) = std::io::pipe().map_err(|e| format!("creating a pipe: {e}"))?;
            let result = self.processes.spawn(SpawnRequest {
                program: self.program.clone(),
                args: self.args.clone(),
                env: env.clone(),
                cwd: self.cwd.clone(),
                stdin: Some(OwnedFd::from(in_r)),
                stdout: OwnedFd::from(out_w),
                stderr: OwnedFd::from(err_w),
                nofile: self.nofile,
                cgroup,
                privileges: self.privileges,
            });
            match result {
                Ok(proc) => {
                    return Ok((
                        proc,
                        [
                            OwnedFd::from(in_w),
                            OwnedFd::from(out_r),
                            OwnedFd::from(err_r),
                        ],
                    ));
                }
                Err(SpawnError::Spawn(e))
                    if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 20 =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(SpawnError::Spawn(e)) => {
                    return Err(format!("starting {}: {e}", self.program.display()));
                }
                Err(SpawnError::Place(e)) => return Err(format!("placing into the cgroup: {e}")),
            }
        }
    }

    /// Feed stdin, read stdout and stderr within their bounds, wait for the exit within
    /// `budget`; then the answer.
    async fn follow(
        &self,
        mut proc: Box<dyn crate::instance::process::Proc>,
        [stdin, stdout, stderr]: [OwnedFd; 3],
        cgroup: Option<&dyn RunCgroup>,
        req: &CommandRequest,
        budget: Duration,
    ) -> Ran {
        let pid = proc.pid();
        let kill = || match cgroup {
            Some(cg) => {
                if let Err(e) = cg.kill() {
                    tracing::warn!(error = %e, "cgroup.kill of a command run failed, killing its process group");
                    self.processes.signal_group(pid, libc::SIGKILL);
                }
            }
            None => self.processes.signal_group(pid, libc::SIGKILL),
        };
        let max_out = usize::try_from(self.settings.max_output_bytes()).unwrap_or(usize::MAX);
        let max_err = usize::try_from(self.settings.max_stderr_bytes()).unwrap_or(usize::MAX);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut out_over, mut err_over) = (false, false);
        let body = req.body.clone();
        let feed = async move {
            // A command that does not read its stdin (EPIPE) is fine.
            if let Ok(mut w) = pipe::Sender::from_owned_fd(stdin) {
                let _ = w.write_all(&body).await;
            }
        };
        let wait = async {
            let status = proc.wait().await;
            // The started process is gone: so is whatever it left behind, which would
            // otherwise keep the pipes open.
            kill();
            status
        };
        let all = async {
            tokio::join!(
                feed,
                read_bounded(stdout, max_out, &mut out, &mut out_over, &kill),
                read_bounded(stderr, max_err, &mut err, &mut err_over, &kill),
                wait,
            )
        };
        let status = match tokio::time::timeout(budget, all).await {
            Ok((_, _, _, status)) => Some(status),
            Err(_) => {
                kill();
                if tokio::time::timeout(KILL_WAIT, proc.wait()).await.is_err() {
                    tracing::warn!(instance = %self.instance_id, pid, "a killed command run did not end");
                }
                None
            }
        };
        if let Some(cg) = cgroup
            && let Err(e) = cg.wait_empty(KILL_WAIT).await
        {
            tracing::warn!(instance = %self.instance_id, error = %e, "a command run's cgroup did not empty");
        }
        // stderr goes to the app's log, as an app's does, whatever the outcome.
        for line in err.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            self.sink.line("stderr", &String::from_utf8_lossy(line));
        }
        let failed = |status: u16, text: String, failure: Failure| {
            self.sink.line("stderr", &format!("narund: {text}"));
            Ran {
                reply: Reply::failure(status, &text),
                failure: Some(failure),
            }
        };
        let status = match status {
            None => {
                return failed(
                    504,
                    format!(
                        "the command did not finish within {} ms (commandUnit.timeoutSec, or the caller's deadline); it was killed",
                        budget.as_millis()
                    ),
                    Failure::Timeout,
                );
            }
            Some(Err(e)) => {
                return failed(
                    502,
                    format!("waiting for the command failed: {e}"),
                    Failure::Failed,
                );
            }
            Some(Ok(status)) => status,
        };
        if out_over {
            return failed(
                502,
                format!(
                    "the command wrote more than {max_out} bytes to stdout (commandUnit.maxOutputBytes); it was killed"
                ),
                Failure::Failed,
            );
        }
        if err_over {
            return failed(
                502,
                format!(
                    "the command wrote more than {max_err} bytes to stderr (commandUnit.maxStderrBytes); it was killed"
                ),
                Failure::Failed,
            );
        }
        match status.map(|s| (s.code(), s.signal())) {
            Some((Some(0), _)) => match parse_output(out, self.settings.output_headers) {
                Ok(reply) => Ran {
                    reply,
                    failure: None,
                },
                Err(text) => failed(502, text, Failure::Failed),
            },
            Some((Some(code), _)) => failed(
                502,
                format!("the command exited with status {code} (its stderr is in the app's log)"),
                Failure::Failed,
            ),
            Some((None, Some(sig))) => failed(
                502,
                format!(
                    "the command was killed by signal {} (its stderr is in the app's log)",
                    narun_spec::signal_name(&sig.to_string()).unwrap_or_else(|| sig.to_string())
                ),
                Failure::Failed,
            ),
            _ => failed(
                502,
                "the command ended with an unknown status".into(),
                Failure::Failed,
            ),
        }
    }
}

/// Read `fd` to EOF into `buf`, at most `max` bytes: past them, `over` is set, `kill` is
/// called and reading stops (the writer then gets `EPIPE`, if it still lives).
async fn read_bounded(
    fd: OwnedFd,
    max: usize,
    buf: &mut Vec<u8>,
    over: &mut bool,
    kill: &(dyn Fn() + Sync),
) {
    let Ok(mut rx) = pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match rx.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if buf.len() + n > max {
                    let room = max - buf.len();
                    buf.extend_from_slice(&chunk[..room]);
                    *over = true;
                    kill();
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

//! How a run ended, classified the way systemd does. Pure: no I/O.

use narun_spec::ExitKind;
use narun_wire::status::{InstanceStatus, Reason};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// How one run ended: what the restart policy sees ([`ExitKind`]) and what is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub kind: ExitKind,
    pub status: InstanceStatus,
    pub exit_code: i32,
    pub reason: Reason,
    pub error: String,
}

/// What is known of the end of the main process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Its exit status.
    Status(ExitStatus),
    /// It exited, but its status is unknown: it was not narund's child (a run re-adopted
    /// from a previous narund, or a `MAINPID=` process another process reaped).
    Unknown,
    /// Waiting for it failed.
    WaitFailed(String),
}

/// Classify an exit status the way systemd does: exit 0 and the "clean" signals
/// (SIGHUP, SIGINT, SIGTERM, SIGPIPE) are clean; an OOM kill in the run's cgroup wins
/// over everything else.
pub fn classify(st: ExitStatus, oom: bool) -> Outcome {
    if oom {
        return Outcome {
            kind: ExitKind::OomKill,
            status: InstanceStatus::Crashed,
            exit_code: st.code().unwrap_or(-1),
            reason: Reason::OomKill,
            error: "killed by the OOM killer (memory.max)".into(),
        };
    }
    if let Some(code) = st.code() {
        return if code == 0 {
            Outcome {
                kind: ExitKind::Clean,
                status: InstanceStatus::Stopped,
                exit_code: 0,
                reason: Reason::ExitCode,
                error: "exit status 0".into(),
            }
        } else {
            Outcome {
                kind: ExitKind::ExitCode,
                status: InstanceStatus::Crashed,
                exit_code: code,
                reason: Reason::ExitCode,
                error: format!("exit status {code}"),
            }
        };
    }
    let sig = st.signal().unwrap_or(0);
    let clean = matches!(
        sig,
        libc::SIGHUP | libc::SIGINT | libc::SIGTERM | libc::SIGPIPE
    );
    Outcome {
        kind: if clean {
            ExitKind::Clean
        } else {
            ExitKind::Signal
        },
        status: if clean {
            InstanceStatus::Stopped
        } else {
            InstanceStatus::Crashed
        },
        exit_code: -1,
        reason: Reason::Signal,
        error: format!(
            "killed by signal {}",
            narun_spec::signal_name(&sig.to_string()).unwrap_or_else(|| sig.to_string())
        ),
    }
}

/// The outcome of an [`Exit`]. An unknown status counts as exit 0 here; the lifecycle
/// decides what an unknown status of a re-adopted run means.
pub fn outcome(exit: &Exit, oom: bool) -> Outcome {
    match exit {
        Exit::Status(st) => classify(*st, oom),
        Exit::Unknown => classify(ExitStatus::from_raw(0), oom),
        Exit::WaitFailed(e) => Outcome {
            kind: ExitKind::Signal,
            status: InstanceStatus::Crashed,
            exit_code: -1,
            reason: Reason::Wait,
            error: format!("waiting for the process: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(raw: i32) -> ExitStatus {
        ExitStatus::from_raw(raw)
    }

    #[test]
    fn classify_follows_systemd() {
        assert_eq!(classify(st(0), false).kind, ExitKind::Clean);
        assert_eq!(classify(st(3 << 8), false).kind, ExitKind::ExitCode);
        assert_eq!(classify(st(3 << 8), false).exit_code, 3);
        assert_eq!(classify(st(libc::SIGTERM), false).kind, ExitKind::Clean);
        assert_eq!(classify(st(libc::SIGPIPE), false).kind, ExitKind::Clean);
        assert_eq!(classify(st(libc::SIGSEGV), false).kind, ExitKind::Signal);
        assert_eq!(
            classify(st(libc::SIGSEGV), false).error,
            "killed by signal SIGSEGV"
        );
        assert_eq!(classify(st(libc::SIGKILL), true).kind, ExitKind::OomKill);
        assert_eq!(classify(st(0), true).status, InstanceStatus::Crashed);
    }

    #[test]
    fn unknown_and_failed_waits() {
        assert_eq!(outcome(&Exit::Unknown, false).kind, ExitKind::Clean);
        let o = outcome(&Exit::WaitFailed("ECHILD".into()), false);
        assert_eq!(
            (o.status, o.reason),
            (InstanceStatus::Crashed, Reason::Wait)
        );
        assert_eq!(o.error, "waiting for the process: ECHILD");
    }
}

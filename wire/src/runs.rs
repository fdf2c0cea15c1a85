//! Scheduled runs (`runMode = "job"`): what narund, narunctl and other nodes agree on.
//!
//! * **Run events.** Every attempt of a job run is a [`crate::events::StatusEvent`] on
//!   `status.<app>.<node>` (so the `narun-status` stream keeps it) whose `job` field is a
//!   [`JobRun`]: the run id, the occurrence, the attempt, the outcome, the duration, and
//!   the log subject of its output. `exit_code` is the event's own.
//! * **Run now.** `narunctl run APP` asks each node that runs the app on
//!   `narun.control.<node>.run` ([`crate::names::control_subject`], [`CONTROL_RUN`]) with a
//!   [`RunRequest`]; narund answers a [`RunReply`]. A `fleet` job gets the same request
//!   id on every node, and the occurrence lock below lets one node run it.
//! * **Fleet lock.** A `scope = "fleet"` occurrence is run by the node that creates the key
//!   [`lock_key`] in the KV bucket [`JOB_LOCKS`] (create-if-absent); its value is a
//!   [`JobLock`]. The holder renews `until` while the run goes on and writes `done` at the
//!   end; a node that sees a `running` lock whose `until` has passed takes it over with a
//!   compare-and-swap on the key's revision, so exactly one node takes over.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::jetstream::KvBucket;

/// Verb of [`crate::names::control_subject`] for `narunctl run`.
pub const CONTROL_RUN: &str = "run";

/// The KV bucket of the fleet-scope occurrence locks (a day of history per key).
pub const JOB_LOCKS: KvBucket = KvBucket {
    name: "narun-job-locks",
    description: "narun fleet-scope job occurrence locks (one key per app and occurrence)",
    history: 1,
    max_age: Some(Duration::from_secs(24 * 3600)),
};

/// How long a fleet lock holds without renewal: a holder that died is taken over this
/// long after its last renewal.
pub const LOCK_TTL: Duration = Duration::from_secs(6);

/// Key of the lock of `app`'s occurrence `occurrence` (a [`JobRun::id`]).
pub fn lock_key(app: &str, occurrence: &str) -> String {
    format!("{app}.{occurrence}")
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Its `schedule`.
    #[default]
    Schedule,
    /// An occurrence missed while narund was down, within `startingDeadlineSec`.
    Missed,
    /// `narunctl run`.
    Manual,
}

/// The job part of a run's status event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JobRun {
    /// The run's id (`NARUN_JOB_ID`): `<unix seconds of the occurrence>` for a scheduled
    /// run, `m<request id>` for `narunctl run`. The same on every node for one occurrence.
    pub id: String,
    /// The occurrence, RFC 3339 UTC (`NARUN_JOB_SCHEDULED_AT`; the request time for a
    /// manual run).
    pub scheduled_at: String,
    pub trigger: Trigger,
    /// 1-based (`NARUN_JOB_ATTEMPT`).
    pub attempt: u32,
    pub max_attempts: u32,
    /// `started`, `succeeded`, `retrying` (failed, another attempt follows), `failed` (no
    /// attempt left), `skipped` (`concurrency = forbid` while a run runs), `replaced`
    /// (stopped by a newer occurrence), `stopped` (the spec changed or narund stopped).
    pub outcome: String,
    /// How long the attempt ran (from spawn to exit), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Where its output went (`logs.<app>.<node>`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log_subject: String,
    /// The instance that ran it (`<app>-<index>`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
}

/// `narunctl run`: run `app` now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RunRequest {
    pub app: String,
    /// Chosen by narunctl, the same for every node; a fleet job runs once per id.
    pub id: String,
}

/// narund's answer to a [`RunRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RunReply {
    pub node_id: String,
    pub app: String,
    /// The run's [`JobRun::id`] when a run was started (or handed to the fleet lock).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job_id: String,
    /// Why nothing runs (unknown app, not a job, `forbid` while running, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// State of a fleet lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockState {
    Running,
    Done,
}

/// Value of a [`JOB_LOCKS`] key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLock {
    pub node_id: String,
    pub state: LockState,
    /// Unix seconds after which a `running` lock may be taken over.
    pub until: i64,
    /// The attempt the holder is at (a taker goes on with the next one).
    pub attempt: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_stable() {
        let r = JobRun {
            id: "1700000000".into(),
            scheduled_at: "2023-11-14T22:13:20Z".into(),
            trigger: Trigger::Missed,
            attempt: 2,
            max_attempts: 3,
            outcome: "retrying".into(),
            duration_ms: Some(12),
            log_subject: "logs.a.n".into(),
            instance: "a-0".into(),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"id":"1700000000","scheduled_at":"2023-11-14T22:13:20Z","trigger":"missed","attempt":2,"max_attempts":3,"outcome":"retrying","duration_ms":12,"log_subject":"logs.a.n","instance":"a-0"}"#
        );
        assert_eq!(serde_json::from_str::<JobRun>(&j).unwrap(), r);
        let l = JobLock {
            node_id: "n".into(),
            state: LockState::Done,
            until: 5,
            attempt: 1,
        };
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"node_id":"n","state":"done","until":5,"attempt":1}"#
        );
        assert_eq!(lock_key("a", "17"), "a.17");
    }
}

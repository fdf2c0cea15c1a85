//! Offline-first local state: the last applied app specs, persisted in the data dir.
//!
//! narund must bring its apps back after a reboot even when NATS is not reachable
//! (an embedded device often boots before its uplink). So every spec narund applies
//! is written to `<data_dir>/state/apps.json`, together with the SHA-256 of the binary
//! the instances of that spec last ran. At start, before NATS answers, the node
//! starts every persisted app from the binary cache (the digest pins the exact file,
//! verified again before use); once NATS is up the reconciler replays `app-configs`
//! and corrects whatever changed meanwhile.
//!
//! Writes are atomic: a temporary file in the same directory, `fsync`, `rename`, then
//! `fsync` of the directory. A crash leaves either the old or the new file.
//!
//! **Owns** the files of `<data_dir>/state/` ([`StateFile`], [`RecordFile`], [`UidFile`], and [`Local`],
//! the one owner of both while narund runs) and systemd's fd store ([`fdstore`]).
//! **May call** nothing else in narund (a leaf: the node and its instances call it).
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the file formats ([`PersistedState`], [`InstanceRecord`]) and atomic writes |
//! | `local.rs` | [`Local`]: the applied specs with their digests, the records and the dynamic uids, in memory and on disk |
//! | `fdstore.rs` | the log pipes of running apps parked in systemd's fd store across narund restarts |

use narun_spec::AppSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One persisted app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedApp {
    /// The spec as stored in `app-configs` (canonical JSON).
    pub spec: serde_json::Value,
    /// Hex SHA-256 of the binary last started for this spec (empty = unknown).
    #[serde(default)]
    pub digest: String,
}

/// The file content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    #[serde(default)]
    pub apps: BTreeMap<String, PersistedApp>,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("local state {}: {source} (check the data dir's permissions and free space)", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("local state {} is not valid JSON: {source}; move it away to start without local state", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The state file of a data dir.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// `<data_dir>/state/apps.json`.
    pub fn new(data_dir: &Path) -> StateFile {
        StateFile {
            path: data_dir.join("state").join("apps.json"),
        }
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read the state; a missing file is an empty state.
    pub fn load(&self) -> Result<PersistedState, StateError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PersistedState::default()),
            Err(source) => Err(StateError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// The specs of the state that still parse (others are logged and skipped).
    pub fn load_specs(&self) -> Result<Vec<(AppSpec, String)>, StateError> {
        let state = self.load()?;
        let mut out = Vec::new();
        for (name, app) in state.apps {
            let bytes = serde_json::to_vec(&app.spec).unwrap_or_default();
            match AppSpec::from_kv_entry(&name, &bytes) {
                Ok(spec) => out.push((spec, app.digest)),
                Err(e) => tracing::warn!(app = %name, error = %e, "ignoring a persisted spec"),
            }
        }
        Ok(out)
    }

    /// Atomically replace the file with `state`.
    pub fn save(&self, state: &PersistedState) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(state).expect("the state always serializes");
        write_atomic(&self.path, &json)
    }
}

/// What narund knows about one running process, so that a later narund (after a crash,
/// an upgrade or `on_exit = "detach"`) can take it over instead of killing it. Written
/// when a run becomes `running`, removed when the run ends; see docs/supervisor.md,
/// "Re-adoption".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub app: String,
    pub index: u32,
    pub instance_id: String,
    pub run_id: String,
    /// The main process (the started one, or the app's `MAINPID=`).
    pub pid: i32,
    /// Process group of the run (= the pid narund started): stopped with `killpg` when
    /// there is no cgroup.
    pub pgid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot): a recycled pid has another.
    pub start_time: u64,
    /// Name of the instance cgroup below the cgroup root (empty = no cgroup).
    #[serde(default)]
    pub cgroup: String,
    /// `run_hash` of the spec the process runs.
    pub run_hash: String,
    /// Hex SHA-256 of the binary.
    pub digest: String,
    /// KV revision of the spec (0 = from local state).
    #[serde(default)]
    pub revision: u64,
    /// `NOTIFY_SOCKET` of the run (empty without sd_notify).
    #[serde(default)]
    pub notify_socket: String,
}

/// `<data_dir>/state/instances.json`: the [`InstanceRecord`]s by run id, written
/// atomically like the app state.
#[derive(Debug, Clone)]
pub struct RecordFile {
    path: PathBuf,
}

impl RecordFile {
    /// `<data_dir>/state/instances.json`.
    pub fn new(data_dir: &Path) -> RecordFile {
        RecordFile {
            path: data_dir.join("state").join("instances.json"),
        }
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read the records; a missing file is none.
    pub fn load(&self) -> Result<BTreeMap<String, InstanceRecord>, StateError> {
        load_map(&self.path)
    }

    /// Atomically replace the file with `records`.
    pub fn save(&self, records: &BTreeMap<String, InstanceRecord>) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(records).expect("records always serialize");
        self.save_bytes(&json)
    }

    /// Atomically replace the file with `json` (records serialized by the caller).
    pub fn save_bytes(&self, json: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.path, json)
    }
}

/// A JSON map file of the state dir (records, dynamic uids); a missing file is empty.
fn load_map<V: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<BTreeMap<String, V>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(StateError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `<data_dir>/state/dynamic-users.json`: the dynamic uid of every app that ever ran
/// under one (`{"app": uid}`, see `crate::privileges::dynamic`), written atomically like
/// the app state.
#[derive(Debug, Clone)]
pub struct UidFile {
    path: PathBuf,
}

impl UidFile {
    /// `<data_dir>/state/dynamic-users.json`.
    pub fn new(data_dir: &Path) -> UidFile {
        UidFile {
            path: data_dir.join("state").join("dynamic-users.json"),
        }
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read the ids; a missing file is none.
    pub fn load(&self) -> Result<BTreeMap<String, u32>, StateError> {
        load_map(&self.path)
    }

    /// Atomically replace the file with `ids`.
    pub fn save(&self, ids: &BTreeMap<String, u32>) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(ids).expect("ids always serialize");
        write_atomic(&self.path, &json)
    }
}

/// Write `bytes` to `path` atomically: temporary file in the same directory, `fsync`,
/// `rename`, `fsync` of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let prefix = format!(
        ".{}.",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    );
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Start time of `pid` (field 22 of `/proc/<pid>/stat`, clock ticks since boot), `None`
/// when the process does not exist.
pub fn process_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid …": comm may contain spaces and parentheses; after the last ')'
    // field 3 (state) comes first, so field 22 is the 20th.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The JSON value stored for a spec.
pub fn spec_value(spec: &AppSpec) -> serde_json::Value {
    serde_json::from_slice(&spec.to_kv_json()).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_roundtrip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        assert_eq!(file.load().unwrap(), PersistedState::default());
        let mut spec = AppSpec::new("hello", "v1");
        spec.nodes = vec![narun_spec::NodeSelector::by_name("n1", 2)];
        let mut st = PersistedState::default();
        st.apps.insert(
            "hello".into(),
            PersistedApp {
                spec: spec_value(&spec),
                digest: "ab".repeat(32),
            },
        );
        file.save(&st).unwrap();
        assert_eq!(file.load().unwrap(), st);
        let specs = file.load_specs().unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].0.name, "hello");
        // No temporary files are left next to the state.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["apps.json"]);
    }

    #[test]
    fn records_roundtrip_and_start_time_of_self() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::new(dir.path());
        assert!(file.load().unwrap().is_empty());
        let me = std::process::id() as i32;
        let st = process_start_time(me).expect("own start time");
        assert!(st > 0);
        assert_eq!(process_start_time(me), Some(st), "stable");
        assert_eq!(process_start_time(-1), None);
        let rec = InstanceRecord {
            app: "a".into(),
            index: 1,
            instance_id: "a-1".into(),
            run_id: "r".into(),
            pid: me,
            pgid: me,
            start_time: st,
            cgroup: "narun-a-1-r".into(),
            run_hash: "h".into(),
            digest: "d".into(),
            revision: 7,
            notify_socket: String::new(),
        };
        let mut m = BTreeMap::new();
        m.insert("r".to_string(), rec);
        file.save(&m).unwrap();
        assert_eq!(file.load().unwrap(), m);
    }

    #[test]
    fn uid_file_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let file = UidFile::new(dir.path());
        assert!(file.load().unwrap().is_empty());
        let ids: BTreeMap<String, u32> =
            [("a".to_string(), 61200), ("b".to_string(), 61201)].into();
        file.save(&ids).unwrap();
        assert_eq!(file.load().unwrap(), ids);
        assert!(file.path().ends_with("state/dynamic-users.json"));
    }

    #[test]
    fn persisted_specs_past_the_spec_limits_are_ignored() {
        // A state written before the limits existed: 4294967295 replicas must not come
        // back at start-up (it is skipped with a warning; the others load).
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        let mut st = PersistedState::default();
        for (name, replicas) in [("huge", 4_294_967_295u64), ("ok", 2)] {
            st.apps.insert(
                name.into(),
                PersistedApp {
                    spec: serde_json::json!({"name": name, "tag": "v1", "nodes": [{"name": "n1", "replicas": replicas}]}),
                    digest: String::new(),
                },
            );
        }
        file.save(&st).unwrap();
        let specs = file.load_specs().unwrap();
        let names: Vec<&str> = specs.iter().map(|(s, _)| s.name.as_str()).collect();
        assert_eq!(names, ["ok"]);
    }

    #[test]
    fn corrupt_state_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        std::fs::create_dir_all(file.path().parent().unwrap()).unwrap();
        std::fs::write(file.path(), b"{garbage").unwrap();
        let e = file.load().unwrap_err().to_string();
        assert!(e.contains("move it away"), "{e}");
    }
}

pub mod fdstore;
mod local;
pub use local::Local;

//! Offline-first local state: the last applied app specs, persisted in the data dir.
//!
//! narund must bring its apps back after a reboot even when NATS is not reachable
//! (an embedded device often boots before its uplink). So every spec narund applies
//! is written to `<data_dir>/state/apps.json`, together with the SHA-256 of the binary
//! the instances of that spec last ran. At start, before NATS answers, the supervisor
//! starts every persisted app from the binary cache (the digest pins the exact file,
//! verified again before use); once NATS is up the reconciler replays `app-configs`
//! and corrects whatever changed meanwhile.
//!
//! Writes are atomic: a temporary file in the same directory, `fsync`, `rename`, then
//! `fsync` of the directory. A crash leaves either the old or the new file.

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
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".apps.json.")
            .tempfile_in(dir)
            .map_err(io)?;
        let json = serde_json::to_vec_pretty(state).expect("the state always serializes");
        tmp.write_all(&json).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
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
    fn corrupt_state_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        std::fs::create_dir_all(file.path().parent().unwrap()).unwrap();
        std::fs::write(file.path(), b"{garbage").unwrap();
        let e = file.load().unwrap_err().to_string();
        assert!(e.contains("move it away"), "{e}");
    }
}

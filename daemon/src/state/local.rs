//! [`Local`]: the node's local state in memory and on disk — the applied specs with the
//! digests their instances ran (`apps.json`) and the records of running processes
//! (`instances.json`). One owner, so every write goes through the same place.

use super::{
    InstanceRecord, PersistedApp, PersistedState, RecordFile, StateError, StateFile, UidFile,
    spec_value,
};
use narun_spec::AppSpec;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// The local state of a data dir (see the module docs). Write failures are logged, never
/// fatal: apps keep running, only a later start without NATS may lack them.
#[derive(Debug)]
pub struct Local {
    file: StateFile,
    apps: Mutex<PersistedState>,
    records_file: RecordFile,
    records: Mutex<BTreeMap<String, InstanceRecord>>,
    uids_file: UidFile,
    /// The dynamic uid of each app; `None` until first needed (read then).
    uids: Mutex<Option<BTreeMap<String, u32>>>,
}

impl Local {
    /// Load the state of `data_dir` (unreadable state is logged and starts empty).
    /// Returns it with the records a previous narund left, which the caller sorts into
    /// adoptable and rejected runs before [`Local::keep_records`].
    pub fn load(data_dir: &Path) -> (Local, BTreeMap<String, InstanceRecord>) {
        let file = StateFile::new(data_dir);
        let apps = file.load().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "starting without local state");
            PersistedState::default()
        });
        let records_file = RecordFile::new(data_dir);
        let records = records_file.load().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the records of running instances; their processes are not re-adopted");
            BTreeMap::new()
        });
        (
            Local {
                file,
                apps: Mutex::new(apps),
                records_file,
                records: Mutex::new(BTreeMap::new()),
                uids_file: UidFile::new(data_dir),
                uids: Mutex::new(None),
            },
            records,
        )
    }

    /// The state file.
    pub fn file(&self) -> &StateFile {
        &self.file
    }

    /// The persisted specs that still parse, with their digests.
    pub fn specs(&self) -> Vec<(AppSpec, String)> {
        self.file.load_specs().unwrap_or_default()
    }

    /// Keep exactly these records (the adopted runs of a previous narund) and write them.
    pub fn keep_records(&self, kept: BTreeMap<String, InstanceRecord>) {
        let mut records = self.records.lock().unwrap();
        *records = kept;
        self.write_records(&records);
    }

    /// Persist `spec` as the app's spec; the digest stays when the spec is unchanged.
    pub fn persist_spec(&self, spec: &AppSpec) {
        let mut st = self.apps.lock().unwrap();
        let value = spec_value(spec);
        let digest = match st.apps.get(&spec.name) {
            Some(old) if old.spec == value => old.digest.clone(),
            _ => String::new(),
        };
        st.apps.insert(
            spec.name.clone(),
            PersistedApp {
                spec: value,
                digest,
            },
        );
        self.save(&st);
    }

    /// Persist `spec` as the app's spec with the binary `digest` it ran (a rollback: the
    /// previous spec is what a restart of narund should start, even offline).
    pub fn persist_spec_with_digest(&self, spec: &AppSpec, digest: &str) {
        let mut st = self.apps.lock().unwrap();
        st.apps.insert(
            spec.name.clone(),
            PersistedApp {
                spec: spec_value(spec),
                digest: digest.to_string(),
            },
        );
        self.save(&st);
    }

    /// The app has no spec any more.
    pub fn forget_spec(&self, app: &str) {
        let mut st = self.apps.lock().unwrap();
        if st.apps.remove(app).is_some() {
            self.save(&st);
        }
    }

    /// The hex digest persisted for exactly this spec (offline starts).
    pub fn digest_of(&self, spec: &AppSpec) -> Option<String> {
        let st = self.apps.lock().unwrap();
        st.apps
            .get(&spec.name)
            .filter(|a| a.spec == spec_value(spec) && !a.digest.is_empty())
            .map(|a| a.digest.clone())
    }

    /// An instance of `spec` runs the binary with this hex digest.
    pub fn record_digest(&self, spec: &AppSpec, digest: &str) {
        let mut st = self.apps.lock().unwrap();
        if let Some(app) = st.apps.get_mut(&spec.name)
            && app.spec == spec_value(spec)
            && app.digest != digest
        {
            app.digest = digest.to_string();
            self.save(&st);
        }
    }

    /// Insert or replace the record of a running run (written only when it changed).
    pub fn put_record(&self, rec: InstanceRecord) {
        let mut records = self.records.lock().unwrap();
        if records.get(&rec.run_id) == Some(&rec) {
            return;
        }
        records.insert(rec.run_id.clone(), rec);
        self.write_records(&records);
    }

    /// The run has ended: a later narund must not adopt anything of it.
    pub fn remove_record(&self, run_id: &str) {
        let mut records = self.records.lock().unwrap();
        if records.remove(run_id).is_some() {
            self.write_records(&records);
        }
    }

    /// The dynamic uid of `app`: `choose` gets every recorded id (this app's included) and
    /// returns the id to use (`None`: none free). A new or changed id is written before it
    /// is returned, so it is never handed out twice, also across restarts; a write failure
    /// is an error (the id is not used).
    pub fn dynamic_uid(
        &self,
        app: &str,
        choose: impl FnOnce(&BTreeMap<String, u32>) -> Option<u32>,
    ) -> Result<Option<u32>, StateError> {
        let mut guard = self.uids.lock().unwrap();
        if guard.is_none() {
            *guard = Some(self.uids_file.load()?);
        }
        let ids = guard.as_mut().expect("just loaded");
        let Some(uid) = choose(ids) else {
            return Ok(None);
        };
        if ids.get(app) != Some(&uid) {
            let mut next = ids.clone();
            next.insert(app.to_string(), uid);
            self.uids_file.save(&next)?;
            *ids = next;
        }
        Ok(Some(uid))
    }

    /// Where the dynamic uids are recorded.
    pub fn dynamic_uid_file(&self) -> &std::path::Path {
        self.uids_file.path()
    }

    fn save(&self, st: &PersistedState) {
        if let Err(e) = self.file.save(st) {
            tracing::warn!(error = %e, "persisting local state");
        }
    }

    fn write_records(&self, records: &BTreeMap<String, InstanceRecord>) {
        if let Err(e) = self.records_file.save(records) {
            tracing::warn!(error = %e, "writing the records of running instances");
        }
    }
}

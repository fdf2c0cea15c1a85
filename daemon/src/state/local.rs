//! [`Local`]: the node's local state in memory and on disk — the applied specs with the
//! digests their instances ran (`apps.json`) and the records of running processes
//! (`instances.json`). One owner, so every write goes through the same place.
//!
//! # Records are written off the runtime, in batches
//!
//! A restart changes the records twice (the ended run's record goes, the new run's comes),
//! and each atomic write costs two `fsync`s (~10 ms each on an SD card or a loaded disk).
//! Done on a runtime thread, that was most of the restart latency. So
//! [`Local::put_record`] and [`Local::remove_record`] only change the map in memory and
//! wake the record writer: one thread (`narund-records`) that writes the whole map
//! atomically, once for everything that changed while the previous write ran (a batch),
//! and then announces the generation it wrote ([`Local::durable`]). Callers that must not
//! get ahead of the disk wait for that generation: the `running` status event of a run is
//! published only once its record is on disk (`crate::instance`), so whoever saw `running`
//! can rely on a later narund re-adopting the run; [`Local::flush`] waits for everything
//! (narund's exit). A narund killed between a change and its write loses only that change:
//! the file is always the old or the new map (atomic rename), never a torn one.
//!
//! Nobody waits for a removal, and a record left behind is harmless (a later narund adopts
//! only a live pid with the recorded start time in the recorded cgroup, `crate::instance::
//! adopt`): so the writer holds a removal back for up to [`REMOVAL_DELAY`], and a restart's
//! new record, which comes within the backoff, takes it along. One atomic write (two
//! `fsync`s) per restart instead of two: about a third less of narund's CPU per restart.

use super::{
    InstanceRecord, PersistedApp, PersistedState, RecordFile, StateError, StateFile, UidFile,
    spec_value,
};
use narun_spec::AppSpec;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The local state of a data dir (see the module docs). Write failures are logged, never
/// fatal: apps keep running, only a later start without NATS may lack them.
#[derive(Debug)]
pub struct Local {
    file: StateFile,
    apps: Mutex<PersistedState>,
    records: Arc<Records>,
    /// The last generation of the records the writer has written. A failed write is
    /// logged and retried every second; the generation stays behind until it succeeds.
    durable: watch::Receiver<u64>,
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
        let records_shared = Arc::new(Records {
            file: records_file,
            state: Mutex::new(RecordState::default()),
            wake: Condvar::new(),
        });
        let (durable_tx, durable) = watch::channel(0);
        let writer = records_shared.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("narund-records".into())
            .spawn(move || writer.run(durable_tx))
        {
            tracing::error!(error = %e, "cannot start the record writer thread; records of running instances are not written");
        }
        (
            Local {
                file,
                apps: Mutex::new(apps),
                records: records_shared,
                durable,
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
    pub fn keep_records(&self, kept: BTreeMap<String, InstanceRecord>) -> u64 {
        self.records.change(true, |records| {
            *records = kept;
            true
        })
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

    /// Insert or replace the record of a running run (written only when it changed, by the
    /// record writer). Returns the generation that holds it: it is on disk once
    /// [`Local::durable`] reaches it.
    pub fn put_record(&self, rec: InstanceRecord) -> u64 {
        self.records.change(true, |records| {
            if records.get(&rec.run_id) == Some(&rec) {
                return false;
            }
            records.insert(rec.run_id.clone(), rec);
            true
        })
    }

    /// The run has ended: a later narund must not adopt anything of it (written by the
    /// record writer within [`REMOVAL_DELAY`], usually together with the restart's new
    /// record; see the module docs).
    pub fn remove_record(&self, run_id: &str) -> u64 {
        self.records
            .change(false, |records| records.remove(run_id).is_some())
    }

    /// The records as they are in memory (what the next write puts on disk).
    pub fn records(&self) -> BTreeMap<String, InstanceRecord> {
        self.records.state.lock().unwrap().map.clone()
    }

    /// The generation of the records last written to disk: watch it to wait for a
    /// generation [`Local::put_record`] returned.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// Wait (at most `timeout`) until every change made so far is on disk. Returns
    /// whether it is.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let want = self.records.urge();
        let mut rx = self.durable.clone();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|g| *g >= want)).await,
            Ok(Ok(_))
        )
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
}

impl Drop for Local {
    /// The record writer ends once it has written what is left.
    fn drop(&mut self) {
        self.records.state.lock().unwrap().closed = true;
        self.records.wake.notify_one();
    }
}

/// How long the removal of an ended run's record may wait for company on disk: a restart's
/// new record usually comes within the backoff, and then one write carries both.
const REMOVAL_DELAY: Duration = Duration::from_secs(2);

/// The records in memory and the writer's side of them.
#[derive(Debug)]
struct Records {
    file: RecordFile,
    state: Mutex<RecordState>,
    /// Wakes the writer when `generation` moves past what it wrote.
    wake: Condvar,
}

#[derive(Debug, Default)]
struct RecordState {
    map: BTreeMap<String, InstanceRecord>,
    /// Counts the changes of `map`.
    generation: u64,
    /// A change since the last write that someone waits for (a new record, a flush): the
    /// writer starts at once.
    urgent: bool,
    /// When the oldest change not yet written that nobody waits for (a removal) was made:
    /// the writer waits up to [`REMOVAL_DELAY`] after it for an urgent one to share the write.
    lazy_since: Option<std::time::Instant>,
    /// The [`Local`] is gone: the writer writes what is left and ends.
    closed: bool,
    /// Writes done (for tests: a restart's removal and new record share one).
    writes: u64,
    /// The generation of the last write.
    written: u64,
}

impl Records {
    /// Apply `f` to the map; when it says it changed something, a new generation is due
    /// for the writer: at once when `urgent`, else within [`REMOVAL_DELAY`] (or with the
    /// next urgent change). Returns the generation that holds the map after `f`.
    fn change(
        &self,
        urgent: bool,
        f: impl FnOnce(&mut BTreeMap<String, InstanceRecord>) -> bool,
    ) -> u64 {
        let mut st = self.state.lock().unwrap();
        if f(&mut st.map) {
            st.generation += 1;
            if urgent {
                st.urgent = true;
                self.wake.notify_one();
            } else if st.lazy_since.is_none() {
                st.lazy_since = Some(std::time::Instant::now());
                // The writer sleeps until it has something urgent or a second passed; it
                // recomputes its wait from `lazy_since`.
                self.wake.notify_one();
            }
        }
        st.generation
    }

    /// Write everything changed so far at once; returns its generation.
    fn urge(&self) -> u64 {
        let mut st = self.state.lock().unwrap();
        if st.generation != st.written {
            st.urgent = true;
            self.wake.notify_one();
        }
        st.generation
    }

    /// The writer thread: wait for a generation it has not written, take the map as it
    /// is then (every change since the last write: one batch), write it atomically
    /// outside the lock, announce the generation. Ends when narund's [`Local`] is dropped
    /// (its `Drop` wakes the writer; an idle writer never wakes on its own).
    fn run(&self, durable: watch::Sender<u64>) {
        let mut written = 0;
        loop {
            let (generation, bytes) = {
                let mut st = self.state.lock().unwrap();
                loop {
                    // Nothing unwritten: no timeout, an idle narund's writer sleeps until a
                    // change or the end.
                    if st.generation == written {
                        if st.closed {
                            return;
                        }
                        st = self.wake.wait(st).unwrap();
                        continue;
                    }
                    // Due: an urgent change, the end, or a lazy one that waited long enough.
                    if st.urgent || st.closed {
                        break;
                    }
                    match st
                        .lazy_since
                        .and_then(|t| REMOVAL_DELAY.checked_sub(t.elapsed()))
                    {
                        Some(left) if !left.is_zero() => {
                            st = self.wake.wait_timeout(st, left).unwrap().0;
                        }
                        _ => break,
                    }
                }
                st.urgent = false;
                st.lazy_since = None;
                (
                    st.generation,
                    serde_json::to_vec_pretty(&st.map).expect("records always serialize"),
                )
            };
            if let Err(e) = self.file.save_bytes(&bytes) {
                // Not durable: try again in a second (a full disk may get room), whatever
                // else changes meanwhile; waiters keep waiting (bounded on their side).
                tracing::warn!(error = %e, retry_in_s = 1, "writing the records of running instances");
                if self.state.lock().unwrap().closed {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            written = generation;
            {
                let mut st = self.state.lock().unwrap();
                st.writes += 1;
                st.written = generation;
            }
            durable.send_replace(generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(run_id: &str) -> InstanceRecord {
        InstanceRecord {
            app: "a".into(),
            index: 0,
            instance_id: "a-0".into(),
            run_id: run_id.into(),
            pid: 1,
            pgid: 1,
            start_time: 1,
            cgroup: String::new(),
            run_hash: "h".into(),
            digest: "d".into(),
            revision: 0,
            notify_socket: String::new(),
        }
    }

    /// A restart: the ended run's record goes, the new run's comes within the backoff; one
    /// atomic write carries both.
    #[tokio::test]
    async fn a_removal_waits_for_the_next_record_and_shares_its_write() {
        let dir = tempfile::tempdir().unwrap();
        let (local, _) = Local::load(dir.path());
        let mut durable = local.durable();
        let g = local.put_record(rec("old"));
        tokio::time::timeout(Duration::from_secs(5), durable.wait_for(|d| *d >= g))
            .await
            .expect("written within 5 s")
            .unwrap();
        let writes = local.records.state.lock().unwrap().writes;
        local.remove_record("old");
        let g = local.put_record(rec("new"));
        tokio::time::timeout(Duration::from_secs(5), durable.wait_for(|d| *d >= g))
            .await
            .expect("written within 5 s")
            .unwrap();
        assert_eq!(local.records.state.lock().unwrap().writes, writes + 1);
        let on_disk = RecordFile::new(dir.path()).load().unwrap();
        assert_eq!(on_disk.keys().collect::<Vec<_>>(), ["new"]);
    }

    #[tokio::test]
    async fn records_reach_the_disk_by_generation_and_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (local, left) = Local::load(dir.path());
        assert!(left.is_empty());
        let file = RecordFile::new(dir.path());
        // A record is on disk once its generation is durable.
        let g = local.put_record(rec("r1"));
        assert_eq!(g, 1);
        let mut durable = local.durable();
        tokio::time::timeout(Duration::from_secs(5), durable.wait_for(|d| *d >= g))
            .await
            .expect("written within 5 s")
            .unwrap();
        assert!(file.load().unwrap().contains_key("r1"));
        // The same record again changes nothing (no new generation, no write).
        assert_eq!(local.put_record(rec("r1")), g);
        // A burst of changes (written in batches): the last generation covers them all, the file holds the
        // final map.
        let mut last = g;
        for i in 0..200 {
            last = local.put_record(rec(&format!("x{i}")));
            if i % 2 == 1 {
                last = local.remove_record(&format!("x{}", i - 1));
            }
        }
        assert_eq!(last, g + 300);
        assert!(local.flush(Duration::from_secs(10)).await, "flushed");
        assert_eq!(*local.durable().borrow(), last);
        let on_disk = file.load().unwrap();
        assert_eq!(on_disk, local.records());
        assert_eq!(on_disk.len(), 101, "r1 and the odd x");
        // Removing an unknown run is no change.
        assert_eq!(local.remove_record("nope"), last);
        // A removal alone reaches the disk too, without a flush (within REMOVAL_DELAY).
        let g = local.remove_record("r1");
        tokio::time::timeout(REMOVAL_DELAY * 5, durable.wait_for(|d| *d >= g))
            .await
            .expect("a removal is written within its delay")
            .unwrap();
        assert!(!file.load().unwrap().contains_key("r1"));
        // Nothing is left half-written next to the file.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["instances.json"]);
    }
}

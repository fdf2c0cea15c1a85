//! An in-memory kernel for unit tests: [`FakeKernel`] implements both seams,
//! [`Processes`] and [`Cgroups`], so the instance driver, rollouts and re-adoption run
//! without root, real processes or cgroupfs (youki's `TestManager`, for processes too).
//! The real kernel paths have their own integration tests (`daemon/tests/`).
//!
//! A fake process "runs" until it is signalled (unless it ignores the signal), killed with
//! its cgroup or process group, or told to exit ([`FakeKernel::exit`]); what it does at
//! start is chosen per program by a [`Script`].

use crate::cgroup::{CgroupError, Cgroups, Limits, RunCgroup};
use crate::instance::process::{Proc, Processes, SpawnError, SpawnRequest};
use futures_util::future::BoxFuture;
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What a fake process does.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Exit with this code right after the start.
    pub exit_at_start: Option<i32>,
    /// Signals it ignores (any other signal ends it, reported as killed by that signal).
    pub ignore: Vec<i32>,
}

/// One fake process.
#[derive(Debug, Clone)]
pub struct FakeProcess {
    pub pid: i32,
    pub pgid: i32,
    pub program: String,
    pub env: BTreeMap<String, String>,
    pub cgroup: Option<String>,
    pub start_time: u64,
    /// Signals it received.
    pub signals: Vec<i32>,
    pub alive: bool,
    exit: watch::Sender<Option<ExitStatus>>,
    script: Script,
}

#[derive(Default)]
struct Table {
    next_pid: i32,
    procs: BTreeMap<i32, FakeProcess>,
    /// Live cgroups and the ones removed.
    cgroups: HashSet<String>,
    removed: Vec<String>,
    /// Script by program file name (the binary's path ends with the digest: scripts are
    /// chosen by the `NARUN_APP_NAME` and the tag the test gives).
    scripts: BTreeMap<String, Script>,
}

/// The in-memory kernel. Cheap to clone; clones share the same processes, so a second
/// node built on a clone finds the processes of the first (re-adoption).
#[derive(Clone, Default)]
pub struct FakeKernel {
    t: Arc<Mutex<Table>>,
}

impl FakeKernel {
    pub fn new() -> FakeKernel {
        let k = FakeKernel::default();
        k.t.lock().unwrap().next_pid = 1000;
        k
    }

    /// Processes whose `NARUN_APP_NAME` is `app` and whose spec tag (`NARUN_TAG` is not
    /// given to apps; the test puts `TAG=<tag>` into the spec's env) is `tag` follow
    /// `script`.
    pub fn script(&self, app: &str, tag: &str, script: Script) {
        self.t
            .lock()
            .unwrap()
            .scripts
            .insert(format!("{app}:{tag}"), script);
    }

    /// Every process ever started, by pid.
    pub fn processes(&self) -> Vec<FakeProcess> {
        self.t.lock().unwrap().procs.values().cloned().collect()
    }

    /// The live processes of `app`.
    pub fn alive(&self, app: &str) -> Vec<FakeProcess> {
        self.processes()
            .into_iter()
            .filter(|p| p.alive && p.env.get("NARUN_APP_NAME").map(String::as_str) == Some(app))
            .collect()
    }

    /// Live cgroups.
    pub fn cgroups(&self) -> Vec<String> {
        let mut v: Vec<String> = self.t.lock().unwrap().cgroups.iter().cloned().collect();
        v.sort();
        v
    }

    /// Make `pid` exit with `code`.
    pub fn exit(&self, pid: i32, code: i32) {
        end(
            &mut self.t.lock().unwrap(),
            pid,
            ExitStatus::from_raw(code << 8),
        );
    }

    /// Give `pid` another start time (as if the pid was reused by another process).
    pub fn recycle(&self, pid: i32) {
        if let Some(p) = self.t.lock().unwrap().procs.get_mut(&pid) {
            p.start_time += 1;
        }
    }
}

fn end(t: &mut Table, pid: i32, status: ExitStatus) {
    if let Some(p) = t.procs.get_mut(&pid)
        && p.alive
    {
        p.alive = false;
        p.exit.send_replace(Some(status));
    }
}

fn deliver(t: &mut Table, pid: i32, signal: i32) {
    let ends = match t.procs.get_mut(&pid) {
        Some(p) if p.alive => {
            p.signals.push(signal);
            !p.script.ignore.contains(&signal)
        }
        _ => false,
    };
    if ends {
        end(t, pid, ExitStatus::from_raw(signal));
    }
}

struct FakeProc {
    pid: i32,
    exit: watch::Receiver<Option<ExitStatus>>,
    /// Started by this narund: its status is known.
    child: bool,
}

impl Proc for FakeProc {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<Option<ExitStatus>>> {
        Box::pin(async move {
            let status = *self
                .exit
                .wait_for(|s| s.is_some())
                .await
                .map_err(|_| io::Error::other("fake process table gone"))?;
            Ok(if self.child { status } else { None })
        })
    }
}

impl Processes for FakeKernel {
    fn spawn(&self, req: SpawnRequest<'_>) -> Result<Box<dyn Proc>, SpawnError> {
        let cgroup = req.cgroup;
        let env: BTreeMap<String, String> = req.env.into_iter().collect();
        let mut t = self.t.lock().unwrap();
        t.next_pid += 1;
        let pid = t.next_pid;
        let key = format!(
            "{}:{}",
            env.get("NARUN_APP_NAME").cloned().unwrap_or_default(),
            env.get("TAG").cloned().unwrap_or_default()
        );
        let script = t.scripts.get(&key).cloned().unwrap_or_default();
        let (tx, rx) = watch::channel(None);
        t.procs.insert(
            pid,
            FakeProcess {
                pid,
                pgid: pid,
                program: req.program.to_string_lossy().into_owned(),
                env,
                cgroup: cgroup.map(|c| c.name().to_string()),
                start_time: pid as u64 * 100,
                signals: Vec::new(),
                alive: true,
                exit: tx,
                script: script.clone(),
            },
        );
        if let Some(code) = script.exit_at_start {
            end(&mut t, pid, ExitStatus::from_raw(code << 8));
        }
        Ok(Box::new(FakeProc {
            pid,
            exit: rx,
            child: true,
        }))
    }

    fn follow(&self, pid: i32) -> io::Result<Box<dyn Proc>> {
        let t = self.t.lock().unwrap();
        match t.procs.get(&pid) {
            Some(p) if p.alive => Ok(Box::new(FakeProc {
                pid,
                exit: p.exit.subscribe(),
                child: false,
            })),
            _ => Err(io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }

    fn signal(&self, pid: i32, signal: i32) {
        deliver(&mut self.t.lock().unwrap(), pid, signal);
    }

    fn signal_group(&self, pgid: i32, signal: i32) {
        let mut t = self.t.lock().unwrap();
        let pids: Vec<i32> = t
            .procs
            .values()
            .filter(|p| p.alive && p.pgid == pgid)
            .map(|p| p.pid)
            .collect();
        for pid in pids {
            deliver(&mut t, pid, signal);
        }
    }

    fn start_time(&self, pid: i32) -> Option<u64> {
        let t = self.t.lock().unwrap();
        t.procs.get(&pid).filter(|p| p.alive).map(|p| p.start_time)
    }

    fn is_zombie(&self, _pid: i32) -> bool {
        false
    }

    fn cgroup_of(&self, pid: i32) -> Option<String> {
        let t = self.t.lock().unwrap();
        let p = t.procs.get(&pid).filter(|p| p.alive)?;
        Some(format!("/fake/{}", p.cgroup.as_deref()?))
    }
}

/// A fake cgroup: a name in the table.
struct FakeGroup {
    name: String,
    k: FakeKernel,
}

impl Cgroups for FakeKernel {
    fn create(&self, name: &str, _limits: &Limits) -> Result<Box<dyn RunCgroup>, CgroupError> {
        self.t.lock().unwrap().cgroups.insert(name.to_string());
        Ok(Box::new(FakeGroup {
            name: name.to_string(),
            k: self.clone(),
        }))
    }

    fn open(&self, name: &str) -> Result<Box<dyn RunCgroup>, CgroupError> {
        if !self.t.lock().unwrap().cgroups.contains(name) {
            return Err(CgroupError::Io {
                op: "open",
                path: format!("/fake/{name}").into(),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        Ok(Box::new(FakeGroup {
            name: name.to_string(),
            k: self.clone(),
        }))
    }

    fn cleanup_stale<'a>(
        &'a self,
        keep: &'a HashSet<String>,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, CgroupError>> {
        Box::pin(async move {
            let stale: Vec<String> = {
                let t = self.t.lock().unwrap();
                t.cgroups
                    .iter()
                    .filter(|c| !keep.contains(*c))
                    .cloned()
                    .collect()
            };
            for name in &stale {
                kill_group(&self.t, name);
                let mut t = self.t.lock().unwrap();
                t.cgroups.remove(name);
                t.removed.push(name.clone());
            }
            Ok(stale)
        })
    }

    fn layout(&self) -> String {
        "unified".into()
    }

    fn controllers(&self) -> Vec<String> {
        vec!["memory".into(), "cpu".into(), "pids".into()]
    }

    fn proc_path(&self, name: &str) -> String {
        format!("/fake/{name}")
    }
}

fn kill_group(t: &Mutex<Table>, name: &str) {
    let mut t = t.lock().unwrap();
    let pids: Vec<i32> = t
        .procs
        .values()
        .filter(|p| p.alive && p.cgroup.as_deref() == Some(name))
        .map(|p| p.pid)
        .collect();
    for pid in pids {
        end(&mut t, pid, ExitStatus::from_raw(libc::SIGKILL));
    }
}

impl RunCgroup for FakeGroup {
    fn name(&self) -> &str {
        &self.name
    }

    fn unenforced(&self) -> Vec<String> {
        Vec::new()
    }

    fn place(&self, _cmd: &mut std::process::Command) -> Result<(), CgroupError> {
        Ok(())
    }

    fn kill(&self) -> Result<(), CgroupError> {
        kill_group(&self.k.t, &self.name);
        Ok(())
    }

    fn oom_kills(&self) -> u64 {
        0
    }

    fn wait_empty(&self, _timeout: Duration) -> BoxFuture<'_, Result<(), CgroupError>> {
        Box::pin(async { Ok(()) })
    }

    fn remove(self: Box<Self>, _timeout: Duration) -> BoxFuture<'static, Result<(), CgroupError>> {
        kill_group(&self.k.t, &self.name);
        let mut t = self.k.t.lock().unwrap();
        t.cgroups.remove(&self.name);
        t.removed.push(self.name.clone());
        Box::pin(async { Ok(()) })
    }
}

//! The in-process narund of narund's integration tests (each test file is its own crate and
//! includes this module with `mod common;`; not every file uses every part): narund's
//! [`Daemon`], built and run through narund's library API against a real nats-server,
//! running real processes in real cgroups. Everything that does not need narund's library
//! (the nats-server, buckets, sample apps, the narund binary as a process, the waits) is in
//! `narun_test_support`.
#![allow(dead_code)]

use async_nats::jetstream::{kv, object_store::ObjectInfo, object_store::ObjectStore};
use narun_test_support::{Buckets, NatsServer, T, buckets, collect, kill_and_remove_cgroups};
use narun_wire::events::{LogLine, StatusEvent};
use narun_wire::secrets::MasterKey;
use narun_wire::status::InstanceStatus;
use narund::config::Config;
use narund::daemon::Daemon;
use narund::instance::Snapshot;
use narund::node::Node;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What narund is composed from in these tests.
struct Composition {
    /// narund's configuration.
    config: Config,
    /// Run narund ([`Daemon::run`]: reconciler, heartbeat, control, …) and wait for its
    /// first complete replay of `app-configs`; otherwise only the node is used.
    run: bool,
}

/// A running narund: its shutdown signal and task.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    /// Kept so narund's reload channel stays open.
    _reloads: tokio::sync::mpsc::Sender<Result<Config, String>>,
}

/// The one place these tests put narund together: [`Daemon::new`] builds it. Its NATS
/// client is the tests' client too (as for narund, subscriptions are restored before
/// anything is published after a reconnect, so no line is lost to the test's own
/// re-subscription).
async fn compose(c: &Composition) -> Daemon {
    Daemon::new(c.config.clone()).await.expect("narund builds")
}

/// Run `daemon` ([`Daemon::run`]) when the composition says so, until the returned
/// [`Running`] is shut down. Returns its node and where its cgroups live.
async fn launch(c: &Composition, daemon: Daemon) -> (Node, PathBuf, Option<Running>) {
    let node = daemon.node().clone();
    let cgroup_root = daemon
        .cgroup_root()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if !c.run {
        return (node, cgroup_root, None);
    }
    let mut ready = daemon.ready();
    let shutdown = CancellationToken::new();
    let (reloads_tx, reloads) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(daemon.run(shutdown.clone(), reloads));
    tokio::time::timeout(T, ready.wait_for(|r| *r))
        .await
        .expect("first reconcile")
        .unwrap();
    let running = Running {
        shutdown,
        task,
        _reloads: reloads_tx,
    };
    (node, cgroup_root, Some(running))
}

/// The master key of a harness built with [`HarnessBuilder::secrets`], and the buckets
/// of secrets and shared files.
pub struct Secrets {
    pub key: MasterKey,
    /// Where narund reads the key (in the harness's data dir).
    pub key_file: PathBuf,
    /// `narun-secrets`.
    pub bucket: kv::Store,
    /// `narun-files`.
    pub files: ObjectStore,
}

/// narund in this process, on its own nats-server, data dir
/// and cgroup root, with every status event and log line collected.
///
/// Dropping it (also when a test panics) kills every app it started and removes its cgroups.
pub struct Harness {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub configs: kv::Store,
    pub binaries: ObjectStore,
    pub sup: Node,
    /// narund's data dir (mode 0755: the apps' user reaches their work dirs).
    pub data: tempfile::TempDir,
    pub node: String,
    /// Every `status.>` event, in arrival order.
    pub events: Arc<Mutex<Vec<StatusEvent>>>,
    /// Every `logs.>` line, in arrival order.
    pub logs: Arc<Mutex<Vec<LogLine>>>,
    pub cgroup_root: PathBuf,
    /// The buckets of `configs` and `binaries`.
    buckets: Buckets,
    secrets: Option<Secrets>,
    composition: Composition,
    spec_fields: serde_json::Value,
    running: Option<Running>,
}

/// A change to narund's configuration: [`HarnessBuilder::config`].
type ConfigTweak = Box<dyn FnOnce(&mut Config)>;

/// How the harness of a test file differs from the others: [`Harness::builder`].
pub struct HarnessBuilder {
    name: &'static str,
    node: Option<String>,
    tweaks: Vec<ConfigTweak>,
    secrets: bool,
    spec_fields: serde_json::Value,
}

impl HarnessBuilder {
    /// The node id (default: `node-<n>`, unique in the test process).
    pub fn node(mut self, node: &str) -> Self {
        self.node = Some(node.to_owned());
        self
    }

    /// Change narund's configuration (after the harness has set node, directories, NATS
    /// URL, default user `nobody`, `allow_scripts` and the cgroup root).
    pub fn config(mut self, tweak: impl FnOnce(&mut Config) + 'static) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// A master key file for narund, and the secrets and files buckets: [`Harness::secrets`].
    pub fn secrets(mut self) -> Self {
        self.secrets = true;
        self
    }

    /// Fields every spec of [`Harness::spec`] and [`Harness::deploy`] gets (JSON object).
    pub fn spec_fields(mut self, fields: serde_json::Value) -> Self {
        self.spec_fields = fields;
        self
    }

    pub async fn start(self) -> Harness {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let server = NatsServer::start();
        let b = buckets(&server).await;
        let data = tempfile::tempdir().unwrap();
        std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let node = self.node.unwrap_or_else(|| format!("node-{n}"));
        // From narund's own config type, so new settings get their defaults here too.
        let mut config = Config {
            node_id: node.clone(),
            data_dir: data.path().to_path_buf(),
            runtime_dir: data.path().join("run"),
            ..Default::default()
        };
        config.nats.url = server.url();
        config.apps.default_user = "nobody".into();
        // The sample apps are `#!` scripts.
        config.apps.allow_scripts = true;
        config.cgroup.root = Some(PathBuf::from(format!(
            "narun-test-{}-{}-{n}",
            self.name,
            std::process::id()
        )));
        // narund trims its own binary's pages when settled; in a test that binary is the test.
        config.memory.exec_readaround = true;
        for tweak in self.tweaks {
            tweak(&mut config);
        }
        let secrets = if self.secrets {
            Some(secrets(&server, data.path()).await)
        } else {
            None
        };
        if let Some(s) = &secrets {
            config.secrets.master_key_file = s.key_file.clone();
        }
        let composition = Composition { config, run: true };
        let daemon = compose(&composition).await;
        let client = daemon.client().clone();
        narun_test_support::wait_connected(&client).await;
        let events = collect::<StatusEvent>(&client, "status.>").await;
        let logs = collect::<LogLine>(&client, "logs.>").await;
        let (sup, cgroup_root, running) = launch(&composition, daemon).await;
        Harness {
            server,
            client,
            configs: b.configs.clone(),
            binaries: b.binaries.clone(),
            buckets: b,
            sup,
            data,
            node,
            events,
            logs,
            cgroup_root,
            secrets,
            composition,
            spec_fields: self.spec_fields,
            running,
        }
    }
}

/// A fresh master key in `dir`, and the buckets of secrets and files on `server`.
async fn secrets(server: &NatsServer, dir: &Path) -> Secrets {
    let js = async_nats::jetstream::new(server.connect().await);
    let bucket = narun_wire::jetstream::SECRETS.ensure(&js).await.unwrap();
    let files = narun_wire::jetstream::FILES.ensure(&js).await.unwrap();
    let key = MasterKey::generate();
    let key_file = dir.join("master.key");
    std::fs::write(&key_file, format!("{}\n", key.to_base64())).unwrap();
    Secrets {
        key,
        key_file,
        bucket,
        files,
    }
}

impl Harness {
    /// A harness whose cgroup root is named after `name` (the test file).
    pub fn builder(name: &'static str) -> HarnessBuilder {
        HarnessBuilder {
            name,
            node: None,
            tweaks: Vec::new(),
            secrets: false,
            spec_fields: serde_json::json!({}),
        }
    }

    /// The master key and buckets of [`HarnessBuilder::secrets`].
    pub fn secrets(&self) -> &Secrets {
        self.secrets
            .as_ref()
            .expect("a harness built with HarnessBuilder::secrets")
    }

    /// A second narund on this harness's node and data dir (as after a restart of narund),
    /// not running (only its node is used), with its own cgroup root (returned). The caller
    /// shuts it down and removes its cgroups.
    pub async fn second_node(&self) -> (Node, PathBuf) {
        let mut config = self.composition.config.clone();
        config.cgroup.root = config.cgroup.root.map(|r| {
            let mut r = r.into_os_string();
            r.push("-second");
            r.into()
        });
        let c = Composition { config, run: false };
        let (node, root, _) = launch(&c, compose(&c).await).await;
        (node, root)
    }

    /// Put `script` (for example one of `narun_test_support::apps`) as the binary of
    /// `app`:`tag`.
    pub async fn upload(&self, app: &str, tag: &str, script: impl AsRef<[u8]>) -> ObjectInfo {
        self.buckets.upload(app, tag, script).await
    }

    /// Put `spec` as the spec of `app` in `app-configs`; returns the revision.
    pub async fn put_spec(&self, app: &str, spec: serde_json::Value) -> u64 {
        self.buckets.put_spec(app, &spec).await
    }

    /// The spec of `app`:`tag` with `replicas` on this node, with the harness's spec fields.
    pub fn spec(&self, app: &str, tag: &str, replicas: u32) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "name": app, "tag": tag,
            "nodes": [{"name": self.node, "replicas": replicas}],
        });
        merge(&mut spec, &self.spec_fields);
        spec
    }

    /// Upload `script` as `app`:`tag` and put a one-replica spec with `extra` fields.
    pub async fn deploy(&self, app: &str, tag: &str, script: &str, extra: serde_json::Value) {
        self.upload(app, tag, script).await;
        let mut spec = self.spec(app, tag, 1);
        merge(&mut spec, &extra);
        self.put_spec(app, spec).await;
    }

    /// The status events of `app` (by app name or instance id) so far.
    pub fn events(&self, app: &str) -> Vec<StatusEvent> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.app_name == app || e.instance_id.starts_with(app))
            .cloned()
            .collect()
    }

    /// The first event (in arrival order) matching `pred`, and its position; waits at
    /// most [`T`] for it.
    pub async fn wait_event_at(
        &self,
        what: &str,
        pred: impl Fn(&StatusEvent) -> bool,
    ) -> (usize, StatusEvent) {
        let found = tokio::time::timeout(T, async {
            loop {
                let hit = self
                    .events
                    .lock()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .find(|(_, e)| pred(e))
                    .map(|(i, e)| (i, e.clone()));
                if let Some(hit) = hit {
                    return hit;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "no event: {what}\nevents: {:#?}",
                self.events.lock().unwrap()
            )
        })
    }

    /// The first event (in arrival order) matching `pred`; waits at most [`T`] for it.
    pub async fn wait_event(&self, what: &str, pred: impl Fn(&StatusEvent) -> bool) -> StatusEvent {
        self.wait_event_at(what, pred).await.1
    }

    /// The first log line (in arrival order) matching `pred`; waits at most [`T`] for it.
    pub async fn wait_log(&self, what: &str, pred: impl Fn(&LogLine) -> bool) -> LogLine {
        narun_test_support::wait_for(what, T, || {
            let found = self.logs.lock().unwrap().iter().find(|e| pred(e)).cloned();
            async move { found }
        })
        .await
    }

    /// Wait (at most [`T`]) until the snapshot of `app`-`index` satisfies `pred`.
    pub async fn wait_state(
        &self,
        app: &str,
        index: u32,
        pred: impl Fn(&Snapshot) -> bool,
    ) -> Snapshot {
        let got = tokio::time::timeout(T, async {
            loop {
                if let Some(s) = self.sup.snapshot(app, index).filter(|s| pred(s)) {
                    return s;
                }
                // Re-check on every change, and periodically (a change may land between
                // the check and the registration of the waiter).
                tokio::select! {
                    _ = self.sup.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
        .await;
        got.unwrap_or_else(|_| {
            panic!(
                "{app}-{index} never reached the expected state: {:?}\nevents: {:#?}",
                self.sup.snapshot(app, index),
                self.events(app)
            )
        })
    }

    /// The pid of `app`-`index` once it runs (at most [`T`]).
    pub async fn running_pid(&self, app: &str, index: u32) -> i32 {
        self.wait_state(app, index, |s| {
            s.status == InstanceStatus::Running && s.pid.is_some()
        })
        .await
        .pid
        .unwrap()
    }

    /// The work dir of `app`-0.
    pub fn work(&self, app: &str) -> PathBuf {
        self.data
            .path()
            .join("instances")
            .join(format!("{app}-0"))
            .join("work")
    }

    /// Shut narund down (its apps stop, `apps.on_exit = "stop"`).
    pub async fn finish(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown.cancel();
            r.task.await.unwrap().unwrap();
        }
        self.sup.shutdown().await;
    }
}

impl Drop for Harness {
    /// Also runs when a test panics: no app process and no cgroup outlives the test.
    fn drop(&mut self) {
        kill_and_remove_cgroups(&self.cgroup_root);
    }
}

/// Set the fields of the JSON object `extra` in the JSON object `spec`.
fn merge(spec: &mut serde_json::Value, extra: &serde_json::Value) {
    for (k, v) in extra.as_object().expect("spec fields are a JSON object") {
        spec[k] = v.clone();
    }
}

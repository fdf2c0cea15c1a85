//! The composition root: [`Daemon::new`] builds narund from its configuration,
//! [`Daemon::run`] runs it until a shutdown signal (mini-redis' `run(listener, shutdown)`).
//!
//! ```text
//! Daemon::new(config)                          Daemon::run(shutdown, reloads)
//!   NATS client (connects in the background)     gateway (feature `gateway`)
//!   child subreaper                              orphan reaper ─┐
//!   cgroups: discover (or fail), controllers     memory trim    │ every task gets
//!   Node: local state, re-adoption, stale        offline start  │ `shutdown`
//!         cgroups, log forwarder                 reconciler ────┤ (one token)
//!   gateway bound (feature `gateway`)            heartbeat      │
//!                                                control, log stream ┘
//!                                                sd_notify: READY, STATUS, WATCHDOG, reload
//!                                              then: stop or detach the apps (stop: also
//!                                                when `StopApps` is set), flush logs
//! ```
//!
//! `main.rs` only parses flags, loads and checks the configuration
//! ([`crate::preflight::check`]), takes the data dir and cgroup root locks ([`crate::lock`]),
//! trims narund's own privileges and memory, turns signals into `shutdown` and `reloads`,
//! and calls these two. Tests build narund the same way (without the locks: several test
//! narunds share a process).

use crate::config::{Config, OnExit, Settings};
use crate::instance::process::Kernel;
use crate::instance::reaper;
use crate::node::{Node, NodeParts, heartbeat};
use crate::uring::UringHandle;
use anyhow::Context;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// narund, built ([`Daemon::new`]) and ready to [`run`](Daemon::run).
pub struct Daemon {
    config: Config,
    client: async_nats::Client,
    /// The client's connection events (a lost connection ends waits at once).
    events: narun_wire::connect::ConnectionEvents,
    node: Node,
    /// Where the instance cgroups live (`None` without cgroups).
    cgroup_root: Option<std::path::PathBuf>,
    /// Turns true after the first complete replay of `app-configs`.
    ready: tokio::sync::watch::Sender<bool>,
    /// The `/metrics` listener (`[metrics] addr`), bound by `new`.
    metrics: Option<tokio::net::TcpListener>,
    #[cfg(feature = "gateway")]
    gateway: Option<narun_gateway::Gateway>,
    /// Set: the coming shutdown stops the apps whatever `apps.on_exit` says.
    stop_apps: StopApps,
}

/// Makes the next shutdown of a [`Daemon`] stop its apps even with
/// `apps.on_exit = "detach"`: `SIGUSR2` in `main.rs`, which `narund.service` sends on its
/// way down when the system shuts down (docs/embedded.md, "Apps at system shutdown"),
/// while `systemctl restart narund` (SIGTERM) still leaves them to the next narund.
#[derive(Clone, Debug, Default)]
pub struct StopApps(Arc<std::sync::atomic::AtomicBool>);

impl StopApps {
    /// Stop the apps at the next shutdown (set it before cancelling `shutdown`).
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Daemon {
    /// Build narund: the NATS client (which keeps connecting in the background: narund
    /// never waits for NATS), the cgroups, the node with its local state and the runs of a
    /// previous narund, and the gateway when it is enabled.
    pub async fn new(config: Config) -> anyhow::Result<Daemon> {
        tracing::info!(node_id = %config.node_id, nats = %config.nats.url, "narund starting");
        if let crate::config::NodeIdOrigin::Derived(source) = &config.node_id_origin {
            tracing::info!(node_id = %config.node_id, "node id from {source} (node_id is not set)");
        }
        let (client, events) = config
            .nats
            .connect_with_events(&format!("narund {}", config.node_id))
            .await
            .context("NATS settings")?;
        #[cfg(feature = "gateway")]
        let gateway = if config.gateway.enabled {
            let gateway = narun_gateway::Gateway::bind(config.gateway.clone(), client.clone())
                .await
                .context("starting the gateway")?;
            gateway.set_connection_events(events.clone());
            gateway.set_node_id(&config.node_id);
            tracing::info!(http = %gateway.http_addr(), metrics = %gateway.metrics_addr(), "gateway listening");
            Some(gateway)
        } else {
            None
        };
        if !Settings::from_config(&config).app_nats.configured() {
            tracing::warn!(
                "apps get no NATS credentials and connect anonymously (never with narund's); \
                 set [apps] nats_creds_dir or nats_account_signing_key in narund.toml to give each app its own NATS user"
            );
        }
        let trusted = config
            .deploy
            .trusted_keys()
            .context("[deploy] trusted_keys")?;
        if trusted.is_empty() {
            tracing::warn!(
                "deploys are not authenticated: [deploy] trusted_keys is empty, so narund runs any \
                 binary in app-binaries whose content matches its digest; list the public keys of \
                 your deployers there and deploy with `narunctl deploy --sign KEY`"
            );
        } else {
            tracing::info!(
                keys = trusted.public_keys().count(),
                "deploys must be signed by a trusted key"
            );
        }
        if let Err(e) = reaper::become_subreaper() {
            tracing::warn!(error = %e, "cannot become a child subreaper; orphans of apps go to PID 1");
        }
        // A root narund cannot use is an error, never a silent "no cgroups": running apps
        // without cgroups takes `[cgroup] enabled = false`.
        let root = if config.cgroup.enabled {
            let root = crate::cgroup::CgroupRoot::discover(config.cgroup.configured_root())
                .context(if config.cgroup.configured_root().is_some() {
                    "cgroup.root"
                } else {
                    "cgroup (the root derived from narund's own cgroup; set [cgroup] root, or enabled = false)"
                })?;
            let report = root.enable_controllers();
            for f in &report.failures {
                tracing::info!(detail = %f, "cgroup controller not enabled");
            }
            Some(root)
        } else {
            tracing::warn!(
                "[cgroup] enabled = false: apps run without cgroups (limits unenforced, stop by process group)"
            );
            None
        };
        let cgroup_root = root.as_ref().map(|r| r.path().to_path_buf());
        let cgroups = root.map(|r| Arc::new(r) as Arc<dyn crate::cgroup::Cgroups>);
        let (node, _log_task) = Node::new(NodeParts {
            settings: Settings::from_config(&config),
            client: client.clone(),
            uring: UringHandle::start(),
            processes: Arc::new(Kernel),
            cgroups,
        })
        .await;
        if let Some(root) = &cgroup_root {
            node.set_cgroup_root(root.clone());
        }
        node.set_master_key_file(&config.secrets.master_key_file);
        node.set_allow_unscoped_secrets(config.secrets.allow_unscoped);
        let metrics = if config.metrics.addr.is_empty() {
            None
        } else {
            let addr = &config.metrics.addr;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .and_then(|l| Ok((l.local_addr()?, l)))
                .with_context(|| {
                    format!("[metrics] addr: cannot listen on {addr} (is another process using the port?)")
                })?;
            let advertised = config.metrics.advertised(l.0, &crate::config::hostname());
            tracing::info!(addr = %l.0, advertised = %advertised, "serving /metrics");
            node.set_metrics_addr(advertised);
            Some(l.1)
        };
        Ok(Daemon {
            config,
            client,
            events,
            node,
            cgroup_root,
            ready: tokio::sync::watch::Sender::new(false),
            metrics,
            #[cfg(feature = "gateway")]
            gateway,
            stop_apps: StopApps::default(),
        })
    }

    /// The switch that makes the coming shutdown stop the apps whatever `apps.on_exit`
    /// says ([`StopApps`]).
    pub fn stop_apps_on_exit(&self) -> StopApps {
        self.stop_apps.clone()
    }

    /// The node (its instance table), for callers that drive it directly.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Where the instance cgroups live (`None`: narund runs apps without cgroups).
    pub fn cgroup_root(&self) -> Option<&std::path::Path> {
        self.cgroup_root.as_deref()
    }

    /// Turns true once [`run`](Daemon::run) has replayed `app-configs` completely.
    pub fn ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The address `/metrics` is served on (`None`: `[metrics] addr` is empty).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The NATS client narund publishes with.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Run until `shutdown` is cancelled: start the apps of the local state, follow
    /// `app-configs`, heart-beat, answer operator requests, speak sd_notify; then stop
    /// the apps (or leave them running with `apps.on_exit = "detach"`). Each item of
    /// `reloads` is a configuration read again after SIGHUP (or why it could not be).
    pub async fn run(
        self,
        shutdown: CancellationToken,
        mut reloads: mpsc::Receiver<Result<Config, String>>,
    ) -> anyhow::Result<()> {
        let Daemon {
            config,
            client,
            events,
            node,
            ready,
            metrics,
            cgroup_root,
            #[cfg(feature = "gateway")]
            gateway,
            stop_apps,
        } = self;
        let mut tasks: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
        #[cfg(feature = "gateway")]
        if let Some(gateway) = gateway {
            #[cfg(feature = "dashboard")]
            crate::dashboard::mount(
                &gateway,
                &config.dashboard,
                &client,
                &node,
                cgroup_root.clone(),
                shutdown.clone(),
            );
            let stop = shutdown.clone();
            crate::spawn_in(&mut tasks, async move {
                gateway
                    .run(async move { stop.cancelled().await })
                    .await
                    .context("gateway")
            });
        }
        let start_time = narun_wire::events::now_rfc3339();
        if let Some(listener) = metrics {
            // Computed on each scrape: no timer of its own (crate::metrics).
            let scrape = crate::metrics::collect::Scrape {
                node: node.clone(),
                client: client.clone(),
                cgroup_root,
                started: std::time::Instant::now(),
                started_unix: std::time::SystemTime::now(),
            };
            let stop = shutdown.clone();
            crate::spawn_in(&mut tasks, async move {
                let render = move || {
                    let scrape = scrape.clone();
                    async move { scrape.render().await }
                };
                crate::metrics::server::serve(listener, render, stop).await;
                Ok(())
            });
        }
        // The reaper outlives the shutdown signal: orphans of the apps narund stops then
        // are reaped too.
        let reaper_stop = CancellationToken::new();
        let _reaper = reaper::spawn_reaper(
            Some(node.liveness().register("reaper")),
            reaper_stop.clone(),
        );
        // systemd's watchdog (WatchdogSec= in the unit): ping at half the interval, and
        // only while the reconciler, heartbeat and reaper make progress (crate::liveness),
        // so a wedged loop lets systemd restart narund. A loop counts as stuck after half
        // the interval of silence (at most 10 s).
        let watchdog_period = sd_notify::watchdog_enabled().map(|p| p / 2);
        if let Some(half) = watchdog_period {
            node.liveness()
                .set_stall_after(half.min(crate::liveness::STALL_AFTER));
        }
        {
            // Trim narund's binary again each time it settles (crate::memory).
            let (node, stop, memory) = (node.clone(), shutdown.clone(), config.memory.clone());
            crate::spawn_in(&mut tasks, async move {
                crate::memory::trim_when_settled(
                    memory,
                    move || {
                        let node = node.clone();
                        async move { node.changed().await }
                    },
                    stop,
                )
                .await;
                Ok(())
            });
        }
        {
            // Renew the NATS users narund minted for apps ([apps] nats_account_signing_key).
            let (settings, stop) = (Settings::from_config(&config), shutdown.clone());
            crate::spawn_in(&mut tasks, async move {
                crate::instance::nats_identity::renew_loop(settings, stop).await;
                Ok(())
            });
        }
        {
            // The lock bucket the minted app users may use but not create.
            let settings = Settings::from_config(&config);
            let (client, stop) = (client.clone(), shutdown.clone());
            crate::spawn_in(&mut tasks, async move {
                crate::instance::nats_identity::ensure_locks_bucket(settings, client, stop).await;
                Ok(())
            });
        }
        {
            // The republish narun::config follows, on a bucket made without it.
            let (client, stop) = (client.clone(), shutdown.clone());
            crate::spawn_in(&mut tasks, async move {
                crate::instance::nats_identity::ensure_config_bucket(client, stop).await;
                Ok(())
            });
        }
        let offline = node.start_offline().await;
        let mut replayed = ready.subscribe();
        {
            let (node, client, stop) = (node.clone(), client.clone(), shutdown.clone());
            let events = events.clone();
            crate::spawn_in(&mut tasks, async move {
                crate::node::watch::run(node, client, events, ready, stop).await;
                Ok(())
            });
        }
        {
            let (node, client, stop) = (node.clone(), client.clone(), shutdown.clone());
            let start_time = start_time.clone();
            let events = events.clone();
            crate::spawn_in(&mut tasks, async move {
                heartbeat::run_heartbeat(node, client, events, start_time, stop).await;
                Ok(())
            });
        }
        {
            // Operator requests (`narunctl apps restart`) on narun.control.<node>.*.
            let (node, client, stop) = (node.clone(), client.clone(), shutdown.clone());
            crate::spawn_in(&mut tasks, async move {
                crate::node::control::run(node, client, stop).await;
                Ok(())
            });
        }
        {
            // Scale to zero: idle apps sleep; wakes on narun.control.<node>.wake.
            let (node, client, stop) = (node.clone(), client.clone(), shutdown.clone());
            crate::spawn_in(&mut tasks, async move {
                crate::node::sleep::run(node, client, stop).await;
                Ok(())
            });
        }
        {
            let (node, client, stop) = (node.clone(), client.clone(), shutdown.clone());
            crate::spawn_in(&mut tasks, async move {
                crate::node::sleep::serve_wake(node, client, stop).await;
                Ok(())
            });
        }
        {
            // `narunctl run` on narun.control.<node>.run.
            let (node, client, stop) = (node.clone(), client.clone(), shutdown.clone());
            crate::spawn_in(&mut tasks, async move {
                crate::node::runs::serve(node, client, stop).await;
                Ok(())
            });
        }
        if config.logs.stream {
            let limits = crate::logs::stream::Limits::from_config(&config.logs);
            let (client, stop) = (client.clone(), shutdown.clone());
            let replicas = config.nats.stream_replicas;
            crate::spawn_in(&mut tasks, async move {
                crate::logs::stream::HISTORY
                    .run(client, limits, replicas, stop)
                    .await;
                Ok(())
            });
        }
        if config.events.stream {
            let limits = config.events.limits();
            let (client, stop) = (client.clone(), shutdown.clone());
            let replicas = config.nats.stream_replicas;
            crate::spawn_in(&mut tasks, async move {
                crate::node::history::HISTORY
                    .run(client, limits, replicas, stop)
                    .await;
                Ok(())
            });
        }
        // READY=1 after the first reconcile, or at once when apps were started from local
        // state (NATS may be far away). Without either, READY comes after 30 s anyway:
        // narund is working, it is only waiting for NATS.
        let ready_wait = async move {
            if offline == 0 {
                let _ =
                    tokio::time::timeout(Duration::from_secs(30), replayed.wait_for(|r| *r)).await;
            }
        };
        tokio::pin!(ready_wait);
        let mut ready_sent = false;
        let mut stuck: Option<String> = None;
        // STATUS= follows the instances and the NATS connection: looked at when either
        // changes (no timer: an idle narund does not wake for it), sent when the line
        // changes; a reload's result stays appended until the next reload.
        let instances_changed = node.host().changed.notified();
        tokio::pin!(instances_changed);
        instances_changed.as_mut().enable();
        let mut status_due = false;
        let mut last_status = String::new();
        let mut reload_note: Option<String> = None;
        let mut watchdog =
            tokio::time::interval(watchdog_period.unwrap_or(Duration::from_secs(3600)));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let link = events.link();
            let nats_changed = async {
                if link.connected {
                    events.lost_after(link.losses).await
                } else {
                    events.connected().await
                }
            };
            tokio::select! {
                _ = watchdog.tick(), if watchdog_period.is_some() => {
                    match node.liveness().check() {
                        Ok(()) => {
                            if stuck.take().is_some() {
                                tracing::info!("narund makes progress again; watchdog pings resumed");
                                last_status.clear();
                                status_due = true;
                            }
                            notify(&[NotifyState::Watchdog]);
                        }
                        Err(what) => {
                            // No ping: systemd's watchdog fires unless this clears in time.
                            if stuck.as_deref() != Some(&what) {
                                tracing::error!(%what, "narund is stuck; withholding WATCHDOG=1");
                                notify(&[NotifyState::Status(&format!("stuck: {what}"))]);
                            }
                            stuck = Some(what);
                        }
                    }
                }
                _ = &mut instances_changed => {
                    // Armed again before the line is made: no change is missed.
                    instances_changed.set(node.host().changed.notified());
                    instances_changed.as_mut().enable();
                    status_due = true;
                }
                _ = nats_changed => status_due = true,
                _ = &mut ready_wait, if !ready_sent => {
                    ready_sent = true;
                    status_due = true;
                    notify(&[
                        NotifyState::Ready,
                        NotifyState::Status(&format!(
                            "node {} up; {} app(s) from local state; NATS {}",
                            config.node_id, offline, config.nats.url
                        )),
                    ]);
                }
                _ = shutdown.cancelled() => break,
                Some(new) = reloads.recv() => {
                    // Type=notify-reload wants MONOTONIC_USEC with RELOADING=1.
                    let mut reloading = vec![NotifyState::Reloading];
                    reloading.extend(NotifyState::monotonic_usec_now().ok());
                    notify(&reloading);
                    let status = reload(&node, &config, new).await;
                    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
                    last_status = status.clone();
                    reload_note = (status != "configuration reloaded").then_some(status);
                }
                Some(res) = tasks.join_next() => {
                    res.context("task panicked")??;
                }
            }
            if status_due && ready_sent && stuck.is_none() {
                status_due = false;
                let connected =
                    client.connection_state() == async_nats::connection::State::Connected;
                let mut line = heartbeat::status_line(&node.instances(), connected);
                if let Some(note) = &reload_note {
                    line = format!("{line}; {note}");
                }
                if line != last_status {
                    notify(&[NotifyState::Status(&line)]);
                    last_status = line;
                }
            }
        }
        notify(&[NotifyState::Stopping]);
        let on_exit = if stop_apps.is_set() {
            tracing::info!("asked to stop the apps too (SIGUSR2)");
            OnExit::Stop
        } else {
            config.apps.on_exit
        };
        match on_exit {
            OnExit::Stop => {
                tracing::info!("narund stopping");
                heartbeat::shutdown(&node, &client, &start_time).await;
            }
            OnExit::Detach => {
                // The apps keep running; their records and parked log pipes stay for the
                // next narund, which re-adopts them (docs/supervisor.md, "Re-adoption").
                tracing::info!("narund stopping; apps keep running (apps.on_exit = \"detach\")");
            }
        }
        node.flush_logs(Duration::from_secs(2)).await;
        // The record writer works in batches off the runtime: what it has not written yet
        // goes to disk now, so a detached run is re-adopted by the next narund.
        if !node.host().local.flush(Duration::from_secs(2)).await {
            tracing::warn!("the records of running instances were not all written");
        }
        while let Some(res) = tasks.join_next().await {
            res.context("task panicked")??;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        reaper_stop.cancel();
        Ok(())
    }
}

/// `SIGHUP`: apply what can change while apps run ([`crate::config::Reloadable`]:
/// labels, default user, `allow_root`, restart backoff). An invalid file changes nothing.
/// Returns the one-line result for systemd's `STATUS=`.
async fn reload(node: &Node, current: &Config, new: Result<Config, String>) -> String {
    let new = match new {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload failed, keeping the running configuration: {e}");
            return format!("reload failed, running configuration kept: {e}").replace('\n', "; ");
        }
    };
    let mut needs_restart = node.reload(Settings::from_config(&new)).await;
    if new.metrics != current.metrics {
        needs_restart.push("metrics changed: restart narund to apply it".into());
    }
    node.set_master_key_file(&new.secrets.master_key_file);
    node.set_allow_unscoped_secrets(new.secrets.allow_unscoped);
    #[cfg(feature = "gateway")]
    let needs_restart = {
        let mut v = needs_restart;
        if new.gateway != current.gateway {
            v.push("gateway changed: restart narund to apply it".into());
        }
        #[cfg(feature = "dashboard")]
        if new.dashboard != current.dashboard {
            v.push("dashboard changed: restart narund to apply it".into());
        }
        v
    };
    for line in &needs_restart {
        tracing::warn!("reload: {line}");
    }
    if needs_restart.is_empty() {
        tracing::info!("configuration reloaded");
        "configuration reloaded".into()
    } else {
        format!(
            "configuration reloaded; {} setting(s) need a restart",
            needs_restart.len()
        )
    }
}

/// Tell systemd (`$NOTIFY_SOCKET`); bounded, so a service manager that stops reading
/// cannot block narund ([`crate::state::fdstore::notify`]).
fn notify(state: &[NotifyState]) {
    let text: String = state.iter().map(|s| format!("{s}\n")).collect();
    if let Err(e) = crate::state::fdstore::notify(&text) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

//! `narund`: the narun node daemon.
//!
//! Loads `/etc/narun/narund.toml` (flags and env override it), connects to NATS
//! (retrying forever: narund never exits because NATS is down), runs the embedded
//! HTTP gateway when built with the `gateway` feature and enabled, supervises the
//! apps of this node (local state first, then `app-configs`; see `docs/supervisor.md`),
//! heart-beats into `node-runner-states`, and speaks sd_notify to systemd (`READY=1`,
//! `STATUS=`, `STOPPING=1`).

use anyhow::Context;
use clap::Parser;
use narund::config::{Config, DEFAULT_CONFIG_PATH, Overrides};
use sd_notify::NotifyState;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "narund",
    version,
    about = "narun node daemon: runs apps from NATS, exposes them over HTTP"
)]
struct Cli {
    /// Configuration file. When not given, /etc/narun/narund.toml is used if it exists.
    #[arg(short, long, env = "NARUND_CONFIG")]
    config: Option<PathBuf>,
    /// Node id (default: host name). Overrides `node_id`.
    #[arg(long, env = "NARUND_NODE_ID")]
    node_id: Option<String>,
    /// NATS server URL(s). Overrides `nats.url`.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// Data directory. Overrides `data_dir`.
    #[arg(long, env = "NARUND_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Runtime directory. Overrides `runtime_dir`.
    #[arg(long, env = "NARUND_RUNTIME_DIR")]
    runtime_dir: Option<PathBuf>,
    /// Check the configuration, print the effective settings and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    // Log pipes of running apps that systemd kept in its fd store for us (LISTEN_FDS);
    // taken before any thread exists because it edits the environment.
    // SAFETY: single-threaded here.
    let received = unsafe { narund::state::fdstore::take_from_env() };
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NARUND_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: under systemd stderr goes to the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if received > 0 {
        tracing::info!(
            fds = received,
            "received log pipes of running apps from systemd's fd store"
        );
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("narund: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        println!(
            "config ok: node_id={} nats={} data_dir={}",
            config.node_id,
            config.nats.url,
            config.data_dir.display()
        );
        return ExitCode::SUCCESS;
    }
    // Keep only the pages of narund's binary it runs resident (before the runtime's threads).
    narund::memory::apply(&config.memory);
    // Keep only NARUND_CAPS in the bounding set (and effective/permitted set), now, while
    // this is the only thread: capabilities are per thread, and the runtime's threads
    // inherit what the main thread has when they are created.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        match narund::privileges::drop_own_bounding_set(narund::privileges::NARUND_CAPS) {
            Ok(dropped) => tracing::info!(
                dropped = format!("{dropped:#x}"),
                "capability bounding set reduced to NARUND_CAPS"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot reduce the capability bounding set; apps are limited only by their own plans"
            ),
        }
    }
    let runtime = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("narund: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime. Without the gateway narund's work is waiting: on processes, timers,
/// NATS and the io_uring thread (which reads pipes and hashes binaries), so one thread runs
/// it all (`current_thread`); the runtime's worker threads, their stacks and malloc arenas,
/// and the multi-thread scheduler's code would only add memory (docs/benchmarks.md, "narund
/// memory"). The gateway proxies HTTP and gRPC and uses every core.
fn runtime_builder() -> tokio::runtime::Builder {
    #[cfg(feature = "gateway")]
    return tokio::runtime::Builder::new_multi_thread();
    #[cfg(not(feature = "gateway"))]
    tokio::runtime::Builder::new_current_thread()
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let (path, required) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let mut config = Config::load(&path, required)?;
    config.apply(&Overrides {
        node_id: cli.node_id.clone(),
        nats_url: cli.nats_url.clone(),
        data_dir: cli.data_dir.clone(),
        runtime_dir: cli.runtime_dir.clone(),
    });
    config
        .validate()
        .map_err(|p| anyhow::anyhow!("after applying flags and environment:\n{p}"))?;
    Ok(config)
}

/// `SIGHUP`: read the configuration again (same file, flags and environment) and apply
/// what can change while apps run ([`narund::node::Reloadable`]: labels, default
/// user, `allow_root`, restart backoff). An invalid file changes nothing. Returns the
/// one-line result for systemd's `STATUS=`.
async fn reload(
    cli: &Cli,
    #[cfg_attr(not(feature = "gateway"), allow(unused_variables))] current: &Config,
    sup: &narund::node::Supervisor,
) -> String {
    let new = match load_config(cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload failed, keeping the running configuration: {e:#}");
            return format!("reload failed, running configuration kept: {e:#}").replace('\n', "; ");
        }
    };
    let needs_restart = sup
        .reload(narund::node::SupervisorConfig::from_config(&new))
        .await;
    sup.set_master_key_file(&new.secrets.master_key_file);
    #[cfg(feature = "gateway")]
    let needs_restart = {
        let mut v = needs_restart;
        if new.gateway != current.gateway {
            v.push("gateway changed: restart narund to apply it".into());
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

async fn run(cli: &Cli, config: Config) -> anyhow::Result<()> {
    tracing::info!(node_id = %config.node_id, nats = %config.nats.url, "narund starting");
    let client = config
        .nats
        .connect(&format!("narund {}", config.node_id))
        .await
        .context("NATS settings")?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let config_memory = config.memory.clone();
    let mut tasks: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();

    #[cfg(feature = "gateway")]
    if config.gateway.enabled {
        let gateway = narun_gateway::Gateway::bind(config.gateway.clone(), client.clone())
            .await
            .context("starting the gateway")?;
        tracing::info!(http = %gateway.http_addr(), metrics = %gateway.metrics_addr(), "gateway listening");
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            gateway
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .context("gateway")
        });
    }
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;

    // The supervisor runs always, with or without NATS.
    if let Err(e) = narund::node::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphans of apps go to PID 1");
    }
    let start_time = narun_wire::events::now_rfc3339();
    let (sup, _log_task) = narund::node::Supervisor::new(
        narund::node::SupervisorConfig::from_config(&config),
        client.clone(),
        narund::uring::UringHandle::start(),
    )
    .await;
    sup.set_master_key_file(&config.secrets.master_key_file);
    let _reaper = narund::node::spawn_reaper(Some(
        sup.liveness().register("reaper", narund::node::REAP_EVERY),
    ));
    // systemd's watchdog (WatchdogSec= in the unit): ping at half the interval, and only
    // while the reconciler, heartbeat and reaper make progress (narund::liveness), so a
    // wedged loop lets systemd restart narund. A loop counts as stuck after half the
    // interval of silence (at most 10 s).
    let watchdog_period = sd_notify::watchdog_enabled().map(|p| p / 2);
    if let Some(half) = watchdog_period {
        sup.liveness()
            .set_stall_after(half.min(narund::liveness::STALL_AFTER));
    }
    {
        // Trim narund's binary again each time it settles (narund::memory).
        let (sup, stop) = (sup.clone(), stop_rx.clone());
        tasks.spawn(async move {
            narund::memory::trim_when_settled(
                config_memory,
                move || {
                    let sup = sup.clone();
                    async move { sup.changed().await }
                },
                stop,
            )
            .await;
            Ok(())
        });
    }
    let offline = sup.start_offline().await;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    {
        let (sup, client, stop) = (sup.clone(), client.clone(), stop_rx.clone());
        tasks.spawn(async move {
            narund::node::reconcile::run(sup, client, Some(ready_tx), stop).await;
            Ok(())
        });
    }
    {
        let (sup, client, stop) = (sup.clone(), client.clone(), stop_rx.clone());
        let start_time = start_time.clone();
        tasks.spawn(async move {
            narund::node::heartbeat::run_heartbeat(sup, client, start_time, stop).await;
            Ok(())
        });
    }
    {
        // Operator requests (`narunctl apps restart`) on narun.control.<node>.*.
        let (sup, client, stop) = (sup.clone(), client.clone(), stop_rx.clone());
        tasks.spawn(async move {
            narund::node::control::run(sup, client, stop).await;
            Ok(())
        });
    }
    if config.logs.stream {
        let limits = narund::logs::stream::Limits::from_config(&config.logs);
        let (client, stop) = (client.clone(), stop_rx.clone());
        tasks.spawn(async move {
            narund::logs::stream::run(client, limits, stop).await;
            Ok(())
        });
    }
    // READY=1 after the first reconcile, or at once when apps were started from local state
    // (NATS may be far away). Without either, READY comes after 30 s anyway: narund is
    // working, it is only waiting for NATS.
    let ready_wait = async move {
        if offline == 0 {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), ready_rx).await;
        }
    };
    tokio::pin!(ready_wait);
    let mut ready_sent = false;
    let mut stuck: Option<String> = None;
    // STATUS= follows the instances and the NATS connection (checked every 2 s, sent
    // when it changes); a reload's result stays appended until the next reload.
    let mut status_tick = tokio::time::interval(std::time::Duration::from_secs(2));
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = String::new();
    let mut reload_note: Option<String> = None;
    let mut watchdog =
        tokio::time::interval(watchdog_period.unwrap_or(std::time::Duration::from_secs(3600)));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = watchdog.tick(), if watchdog_period.is_some() => {
                match sup.liveness().check() {
                    Ok(()) => {
                        if stuck.take().is_some() {
                            tracing::info!("narund makes progress again; watchdog pings resumed");
                            last_status.clear();
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
            _ = status_tick.tick(), if ready_sent && stuck.is_none() => {
                let connected =
                    client.connection_state() == async_nats::connection::State::Connected;
                let mut line = narund::node::heartbeat::status_line(&sup.instances(), connected);
                if let Some(note) = &reload_note {
                    line = format!("{line}; {note}");
                }
                if line != last_status {
                    notify(&[NotifyState::Status(&line)]);
                    last_status = line;
                }
            }
            _ = &mut ready_wait, if !ready_sent => {
                ready_sent = true;
                notify(&[
                    NotifyState::Ready,
                    NotifyState::Status(&format!(
                        "node {} up; {} app(s) from local state; NATS {}",
                        config.node_id, offline, config.nats.url
                    )),
                ]);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                // Type=notify-reload wants MONOTONIC_USEC with RELOADING=1.
                let mut reloading = vec![NotifyState::Reloading];
                reloading.extend(NotifyState::monotonic_usec_now().ok());
                notify(&reloading);
                let status = reload(cli, &config, &sup).await;
                notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
                last_status = status.clone();
                reload_note = (status != "configuration reloaded").then_some(status);
            }
            Some(res) = tasks.join_next() => {
                res.context("task panicked")??;
            }
        }
    }
    notify(&[NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    match config.apps.on_exit {
        narund::config::OnExit::Stop => {
            tracing::info!("narund stopping");
            narund::node::heartbeat::shutdown(&sup, &client, &start_time).await;
        }
        narund::config::OnExit::Detach => {
            // The apps keep running; their records and parked log pipes stay for the next
            // narund, which re-adopts them (docs/supervisor.md, "Re-adoption").
            tracing::info!("narund stopping; apps keep running (apps.on_exit = \"detach\")");
        }
    }
    sup.flush_logs(std::time::Duration::from_secs(2)).await;
    while let Some(res) = tasks.join_next().await {
        res.context("task panicked")??;
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), client.flush()).await;
    Ok(())
}

/// Tell systemd (`$NOTIFY_SOCKET`); bounded, so a service manager that stops reading
/// cannot block narund ([`narund::state::fdstore::notify`]).
fn notify(state: &[NotifyState]) {
    let text: String = state.iter().map(|s| format!("{s}\n")).collect();
    if let Err(e) = narund::state::fdstore::notify(&text) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

//! `narund`: the narun node daemon.
//!
//! Loads `/etc/narun/narund.toml` (flags and env override it), connects to NATS
//! (retrying forever: narund never exits because NATS is down), runs the embedded
//! HTTP gateway when built with the `gateway` feature and enabled, supervises the
//! apps of this node (local state first, then `app-configs`; see `docs/supervisor.md`),
//! heart-beats into `node-runner-states`, and speaks sd_notify to systemd (`READY=1`,
//! `STATUS=`, `STOPPING=1`, and `RELOADING=1` … `READY=1` around a SIGHUP reload).
//!
//! Signals: SIGTERM/SIGINT stop narund (the apps too, or not with `apps.on_exit =
//! "detach"`); SIGUSR2 stops narund and its apps whatever `apps.on_exit` says (system
//! shutdown, see `systemd/narund.service`); SIGHUP reloads the configuration.
//!
//! Before anything else it checks the configuration ([`narund::preflight::check`], the same
//! check `--check-config` runs) and takes its locks on the data dir and the cgroup root
//! ([`narund::lock`]): a second narund on either refuses to start, naming the first. Then it
//! raises its soft open files limit to the hard one ([`narund::nofile::raise_own`]).
#![deny(unsafe_code)]

use anyhow::Context;
use narund::cli::{Cli, Command};
use narund::config::{Config, DEFAULT_CONFIG_PATH, Overrides};
use narund::daemon::Daemon;
use narund::preflight::Checked;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// narund's umask, and so the one apps start with: systemd's default for services.
const NARUND_UMASK: libc::mode_t = 0o022;

fn main() -> ExitCode {
    // Log pipes of running apps that systemd kept in its fd store for us (LISTEN_FDS);
    // taken before any thread exists because it edits the environment.
    // SAFETY: single-threaded here, and nothing took fds 3, 4, … yet.
    #[allow(unsafe_code)]
    let fds = unsafe { narund::sys::env::take_listen_fds() };
    let received = narund::state::fdstore::receive(fds);
    let cli = match narund::cli::parse() {
        Ok(Command::Run(cli)) => cli,
        Ok(Command::Help) => {
            print!("{}", narund::cli::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("narund {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("narund: {e}");
            return ExitCode::from(2);
        }
    };
    let (filter, bad_filter) = log_filter(std::env::var("NARUND_LOG").ok().as_deref());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours only on a terminal: under systemd stderr goes to the journal.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
    if let Some(e) = bad_filter {
        tracing::warn!(error = %e, "NARUND_LOG is not a valid filter; logging at info");
    }
    if received > 0 {
        tracing::info!(
            fds = received,
            "received log pipes of running apps from systemd's fd store"
        );
    }
    let (config, checked) = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("narund: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        print!("{}", narund::preflight::effective(&config, &checked));
        return ExitCode::SUCCESS;
    }
    // The umask of a service under systemd (UMask=0022), however narund was started: what it
    // creates without an explicit mode (data_dir, runtime_dir, the binary cache) must be
    // searchable by apps, which run as users of their own. From a shell with umask 077 the
    // cache came out 0700 and every app failed to start (`spawn: … Permission denied`).
    let umask = narund::sys::process::set_umask(NARUND_UMASK);
    if umask != NARUND_UMASK {
        tracing::info!(
            was = format!("{umask:03o}"),
            now = format!("{NARUND_UMASK:03o}"),
            "umask set (what narund creates must be reachable by apps)"
        );
    }
    // Held until narund exits (the kernel releases them if it dies).
    let _locks = match take_locks(&config, &checked) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("narund: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Keep only the pages of narund's binary it runs resident (before the runtime's threads).
    narund::memory::apply(&config.memory);
    // Keep only NARUND_CAPS in the bounding set (and effective/permitted set), now, while
    // this is the only thread: capabilities are per thread, and the runtime's threads
    // inherit what the main thread has when they are created.
    if narund::sys::process::geteuid() == 0 {
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
    // All the file descriptors the hard limit allows (the gateway's connections must not
    // starve supervision of fds); apps still start with soft 1024 (narund::nofile).
    narund::nofile::raise_own();
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
/// The log filter from `NARUND_LOG`: comma-separated `target=level` directives and an
/// optional bare default level (`info`, `narund=debug,async_nats=warn`; tracing-subscriber's
/// `filter::Targets` syntax, the `EnvFilter` syntax without span and field filters, which
/// would pull a regex engine into narund). Unset or empty: `info`. Unparsable: `info`, and
/// the parse error to log once logging runs.
fn log_filter(var: Option<&str>) -> (Targets, Option<String>) {
    let info = Targets::new().with_default(LevelFilter::INFO);
    match var.map(str::trim) {
        None | Some("") => (info, None),
        // `Targets` would take `narund[span]` as a target name that matches nothing.
        Some(text) if text.contains(['[', ']', '{', '}']) => (
            info,
            Some(format!(
                "{text:?}: span and field filters ([...], {{...}}) are not supported"
            )),
        ),
        Some(text) => match text.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (info, Some(format!("{text:?}: {e}"))),
        },
    }
}

/// C's `pow`, for the one caller narund has: tokio's multi-thread scheduler (the gateway's
/// runtime) updates its task poll-time average with `f64::powf` after each batch of polls.
/// glibc keeps `pow` in `libm.so.6`, which the process would load for this function alone:
/// its relocated and IFUNC-resolved pages are ~0.5 MiB resident ("narund memory with 10
/// supervised apps" in docs/benchmarks.md). Defined here, the symbol resolves in narund
/// itself and the linker (`--as-needed`) leaves libm out of the optimised (LTO) builds; an
/// unoptimised build may still list it for a caller LTO would have removed. `libm::pow` is
/// musl's `pow` (within 1 ulp) in Rust. glibc only: musl's static libc has `pow` itself,
/// and a build without the gateway has no caller (current-thread runtime).
#[cfg(all(feature = "gateway", target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // no_mangle: the symbol tokio's `f64::powf` links to
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

fn runtime_builder() -> tokio::runtime::Builder {
    #[cfg(feature = "gateway")]
    return tokio::runtime::Builder::new_multi_thread();
    #[cfg(not(feature = "gateway"))]
    tokio::runtime::Builder::new_current_thread()
}

/// Read the file, apply flags and environment, and check the result
/// ([`narund::preflight::check`]): every problem at once, each naming its setting.
fn load_config(cli: &Cli) -> anyhow::Result<(Config, Checked)> {
    let (path, required) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let mut config = Config::read(&path, required)?;
    config.apply(&Overrides {
        node_id: cli.node_id.clone(),
        nats_url: cli.nats_url.clone(),
        data_dir: cli.data_dir.clone(),
        runtime_dir: cli.runtime_dir.clone(),
    });
    match narund::preflight::check(&config) {
        Ok(checked) => Ok((config, checked)),
        Err(problems) => Err(anyhow::anyhow!(
            "config file {} (with flags and environment applied) cannot be used:\n  {}",
            path.display(),
            problems.join("\n  ")
        )),
    }
}

/// One narund per data dir and per cgroup root: create the cgroup root, then lock both.
fn take_locks(config: &Config, checked: &Checked) -> anyhow::Result<narund::lock::NodeLocks> {
    let root = match &checked.cgroup_root {
        Some(loc) => {
            loc.mkdir().context("cgroup root")?;
            Some(loc.path())
        }
        None => None,
    };
    Ok(narund::lock::NodeLocks::acquire(&config.data_dir, root)?)
}

/// Run narund ([`Daemon`]) until SIGTERM or SIGINT (apps stopped or left running per
/// `apps.on_exit`) or SIGUSR2 (apps stopped whatever `apps.on_exit` says: what
/// `narund.service` sends when the system shuts down); SIGHUP reads the configuration
/// again (same file, flags and environment) and hands it to the daemon.
async fn run(cli: &Cli, config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut hup = signal(SignalKind::hangup())?;
    let daemon = Daemon::new(config).await?;
    let stop_apps = daemon.stop_apps_on_exit();
    let shutdown = CancellationToken::new();
    let (reload_tx, reloads) = tokio::sync::mpsc::channel(1);
    let daemon = narund::spawn(daemon.run(shutdown.clone(), reloads));
    tokio::pin!(daemon);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr2.recv() => {
                stop_apps.set();
                break;
            }
            _ = hup.recv() => {
                let new = load_config(cli).map(|(c, _)| c).map_err(|e| format!("{e:#}"));
                let _ = reload_tx.send(new).await;
            }
            res = &mut daemon => return res.context("narund panicked")?,
        }
    }
    shutdown.cancel();
    daemon.await.context("narund panicked")?
}

#[cfg(test)]
mod tests {
    use super::log_filter;
    use tracing_subscriber::filter::LevelFilter;

    #[test]
    fn log_filter_syntax() {
        let (f, err) = log_filter(None);
        assert!(err.is_none());
        assert!(f.would_enable("narund::node", &tracing::Level::INFO));
        assert!(!f.would_enable("narund::node", &tracing::Level::DEBUG));
        assert_eq!(
            log_filter(Some("  ")).0.default_level(),
            Some(LevelFilter::INFO)
        );

        let (f, err) = log_filter(Some("narund=debug,async_nats=warn"));
        assert!(err.is_none());
        assert!(f.would_enable("narund::instance::task", &tracing::Level::DEBUG));
        assert!(!f.would_enable("async_nats::client", &tracing::Level::INFO));
        assert!(f.would_enable("async_nats::client", &tracing::Level::WARN));
        // Like EnvFilter: a target list without a bare level enables nothing else.
        assert!(!f.would_enable("tokio_uring", &tracing::Level::ERROR));

        let (f, err) = log_filter(Some("warn,narund::node=trace"));
        assert!(err.is_none());
        assert!(f.would_enable("narund::node::reconcile", &tracing::Level::TRACE));
        assert!(!f.would_enable("narund::instance", &tracing::Level::INFO));
        assert!(f.would_enable("rustls", &tracing::Level::WARN));

        assert_eq!(
            log_filter(Some("OFF")).0.default_level(),
            Some(LevelFilter::OFF)
        );
    }

    #[test]
    fn bad_log_filter_falls_back_to_info_and_says_why() {
        for bad in [
            "narund=loud",
            "narund[span]=debug",
            "narund[{id=1}]",
            "a=b=c",
        ] {
            let (f, err) = log_filter(Some(bad));
            let err = err.unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(err.contains(bad), "{err}");
            assert_eq!(f.default_level(), Some(LevelFilter::INFO));
        }
    }

    /// The `pow` narund defines instead of loading libm agrees with the definition (exact
    /// where the result is representable, within 1 ulp elsewhere) and IEEE's special cases.
    #[cfg(all(feature = "gateway", target_os = "linux", target_env = "gnu"))]
    #[test]
    fn pow_agrees_with_exp_ln_and_ieee_special_cases() {
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
        assert_eq!(super::pow(0.8, 0.0), 1.0);
        assert_eq!(super::pow(0.8, 1.0), 0.8);
        assert_eq!(super::pow(-2.0, 3.0), -8.0);
        assert_eq!(super::pow(9.0, 0.5), 3.0);
        assert!(super::pow(-1.0, 0.5).is_nan());
        assert_eq!(super::pow(0.0, -1.0), f64::INFINITY);
        // tokio's use: 1 - (1 - 0.1)^n for a batch of n polls.
        for n in 1..=256 {
            let want = (n as f64 * 0.9f64.ln()).exp();
            let got = super::pow(0.9, n as f64);
            assert!(
                (got - want).abs() <= want * 1e-13,
                "0.9^{n}: {got} vs {want}"
            );
        }
    }
}

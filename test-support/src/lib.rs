//! Test harness for narun, shared by the tests of every crate of the workspace: a **real**
//! `nats-server` with JetStream owned by the test, the buckets narund works with, the sample
//! apps the tests deploy, a real `narund` process, the real `narunctl` binary, and the waits
//! and clean-ups around them.
//!
//! ```no_run
//! # async fn demo() {
//! let server = narun_test_support::NatsServer::start();
//! let client = async_nats::connect(server.url()).await.unwrap();
//! server.stop();          // the client sees a disconnect
//! server.restart();       // same port, same store dir: JetStream state survives
//! # }
//! ```
//!
//! * The server listens on a free loopback port chosen at start, with its own
//!   temporary store directory (removed on drop).
//! * [`NatsCluster`]: several routed servers with clustered JetStream (replicated buckets).
//! * [`NatsServer::stop`] / [`NatsServer::restart`] keep the port and the store,
//!   so tests can simulate an outage.
//! * The binary is `nats-server` from `PATH`, or `$NATS_SERVER_BIN`. When it is
//!   missing the harness panics with a message that says how to install it.
//! * Dropping the harness kills the server; nothing is left running.
//!
//! The rest, by module:
//!
//! * [`T`]: the bound of every wait; [`wait_for`], [`wait_gone`], [`wait_connected`],
//!   [`synced`], [`collect`] and [`heartbeat`] wait with it.
//! * [`apps`]: the sample apps (small scripts uploaded as an app's binary).
//! * [`Buckets`] / [`buckets`]: the buckets narund works with, and uploads into
//!   `app-binaries` the way narunctl names them ([`upload_app`], [`upload_script`]).
//! * [`Narund`]: the real `narund` binary as a process, with its own data dir and cgroup
//!   root ([`narund_toml`] writes its configuration).
//! * [`narunctl`](narunctl()) and friends: the real `narunctl` binary with a clean environment.
//! * [`kill_and_remove_cgroups`]: the clean-up of a test's cgroups, also when it panics.

pub mod apps;
mod buckets;
mod cgroup;
mod cluster;
pub mod http1;
mod narunctl;
mod narund;
mod waits;
pub mod webdriver;

pub use buckets::{Buckets, buckets, buckets_on, upload_app, upload_script};
pub use cgroup::{cgroup2_mount, kill_and_remove_cgroups};
pub use cluster::NatsCluster;
pub use narunctl::{
    NARUNCTL_BOUND, Running, deploy_file, expect_failed, expect_ok, log_line, narunctl,
    narunctl_bin, narunctl_cmd, narunctl_cmd_via, narunctl_with, run, text,
};
pub use narund::{Narund, NarundBuilder, narund_toml};
pub use waits::{T, collect, heartbeat, synced, wait_connected, wait_gone};

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long to wait for `nats-server` to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How often [`NatsServer::start`] picks fresh ports when one was taken
/// between choosing it and nats-server binding it.
const START_ATTEMPTS: u32 = 5;

/// Why nats-server did not come up.
struct SpawnFailure {
    /// It exited because a port was taken (worth retrying on other ports).
    port_in_use: bool,
    message: String,
}

/// A running (or stopped) `nats-server -js` owned by a test.
pub struct NatsServer {
    port: u16,
    monitor_port: u16,
    store: tempfile::TempDir,
    extra_config: String,
    child: Mutex<Option<Child>>,
}

impl NatsServer {
    /// Start a server with JetStream on a free loopback port.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Start a server with extra `nats-server` configuration (for example
    /// `max_payload: 65536`), appended to the generated config file.
    pub fn start_with_config(extra_config: &str) -> Self {
        let store = tempfile::Builder::new()
            .prefix("narun-nats-")
            .tempdir()
            .expect("create a temporary JetStream store dir");
        let [port, monitor_port] = free_ports();
        let mut server = NatsServer {
            port,
            monitor_port,
            store,
            extra_config: extra_config.to_owned(),
            child: Mutex::new(None),
        };
        // A port that was free when we asked can be taken before nats-server
        // binds it (by another test's outgoing connection, say): pick fresh
        // ports and try again, a bounded number of times.
        let mut attempts = 1;
        while let Err(failure) = server.try_spawn() {
            if !failure.port_in_use || attempts == START_ATTEMPTS {
                panic!("{}", failure.message);
            }
            attempts += 1;
            [server.port, server.monitor_port] = free_ports();
        }
        server
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/varz`, `/healthz`, …).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Connect a plain async-nats client.
    pub async fn connect(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to test nats-server at {}: {e}", self.url()))
    }

    /// The server's process id while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id())
    }

    /// True while the server process is alive.
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap();
        match child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kill the server (SIGKILL) and wait for it to exit. The port and the
    /// store directory are kept for [`restart`](Self::restart).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port with the same store.
    pub fn restart(&self) {
        self.stop();
        self.spawn();
    }

    fn config_path(&self) -> PathBuf {
        self.store.path().join("nats.conf")
    }

    fn spawn(&self) {
        if let Err(failure) = self.try_spawn() {
            panic!("{}", failure.message);
        }
    }

    fn try_spawn(&self) -> Result<(), SpawnFailure> {
        let bin = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let jetstream_dir = self.store.path().join("js");
        let config = format!(
            "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{mon}\njetstream {{\n  store_dir: {dir:?}\n}}\n{extra}\n",
            port = self.port,
            mon = self.monitor_port,
            dir = jetstream_dir.display().to_string(),
            extra = self.extra_config,
        );
        std::fs::write(self.config_path(), config).expect("write nats-server config");
        let mut child = match Command::new(&bin)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{}` not found: the narun tests need a real nats-server with JetStream. \
                 Install it with `apt-get install nats-server` (Debian/Ubuntu) or point \
                 NATS_SERVER_BIN at a nats-server binary.",
                bin.display()
            ),
            Err(e) => panic!("failed to start {}: {e}", bin.display()),
        };
        // Drain stderr on a thread so the server never blocks on a full pipe,
        // and keep the tail for error messages.
        let stderr = child.stderr.take().expect("piped stderr");
        let log = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
        let log_writer = log.clone();
        let (log_closed, log_done) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log_writer.lock().unwrap();
                if l.len() > 200 {
                    l.remove(0);
                }
                l.push(line);
            }
            drop(log_closed);
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // The drain thread sees EOF once the server is gone; wait
                // for it (bounded) so the log holds the fatal line.
                let _ = log_done.recv_timeout(Duration::from_secs(2));
                let log = log.lock().unwrap().join("\n");
                return Err(SpawnFailure {
                    port_in_use: log.contains("address already in use"),
                    message: format!("nats-server exited during start-up ({status}):\n{log}"),
                });
            }
            // Ours says so on stderr; the INFO greeting alone could come
            // from another test's server that holds the port.
            let said_ready = log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("Server is ready"));
            if said_ready && self.ready() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "nats-server did not become ready on 127.0.0.1:{} within {:?}:\n{}",
                    self.port,
                    READY_TIMEOUT,
                    log.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        *self.child.lock().unwrap() = Some(child);
        Ok(())
    }

    /// The server is ready once its client port greets us with `INFO`.
    fn ready(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).is_ok() && &buf == b"INFO"
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `gz` decompressed by Debian's `gzip -dc` (a real gzip, not the code under test); panics
/// naming `what` when it is no gzip data.
pub fn gunzip(gz: &[u8], what: &str) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip (Debian's gzip package)");
    child.stdin.take().unwrap().write_all(gz).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what} is no gzip data");
    out.stdout
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Ask the kernel for a free loopback TCP port.
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// Ask the kernel for `N` distinct free loopback TCP ports.
///
/// All `N` listeners are held until every port is known: asking one at a
/// time can hand out the same port twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [TcpListener; N] = std::array::from_fn(|_| {
        TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port")
    });
    listeners.map(|l| {
        l.local_addr()
            .expect("local address of a bound port")
            .port()
    })
}

/// Poll `cond` until it returns `Some`, for at most `timeout`.
///
/// For state that has no event to await (a file appearing, a process
/// exiting); panics with `what` when the time runs out.
pub async fn wait_for<V, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> V
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<V>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The environment of process `pid` (`/proc/<pid>/environ`) as a map. Waits (bounded by
/// [`T`]) while it reads empty: a process that has just been reported started may be
/// inside `execve` past the point where its parent learns of the exec (the close-on-exec
/// pipe), but before the kernel has set up its new environment, which then reads empty.
pub fn environ(pid: i32) -> std::collections::BTreeMap<String, String> {
    let deadline = std::time::Instant::now() + T;
    loop {
        let raw = std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap_or_else(|e| panic!("reading /proc/{pid}/environ: {e}"));
        if !raw.is_empty() {
            return String::from_utf8_lossy(&raw)
                .split('\0')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/proc/{pid}/environ stayed empty for {T:?}"
        );
        // A kernel state with no event to await: poll briefly.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Path of a binary of this workspace, built on demand.
///
/// Integration tests that run *other* packages' binaries (the `hello` example,
/// `narund`, `narunctl`) call this: it runs `cargo build -p <package> --bin <bin>`
/// once per test process, with the same profile and target dir as the running
/// test, so the binary is never stale. Extra cargo arguments (e.g. `--features
/// gateway`) go in `extra_args`.
pub fn workspace_bin(package: &str, bin: &str, extra_args: &[&str]) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let key = format!("{package}/{bin}/{}", extra_args.join(" "));
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = built.get(&key) {
        return p.clone();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin])
        .args(extra_args)
        .env("CARGO_TARGET_DIR", &target_dir);
    // Not the variables cargo set for the running test (its package's manifest dir, name,
    // …): build scripts that watch them (ring's watches CARGO_MANIFEST_DIR) would make this
    // build and the next `cargo test` rebuild each other's dependencies.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*key,
                "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            cmd.env_remove(&*key);
        }
    }
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    let path = profile_dir.join(bin);
    assert!(
        path.exists(),
        "{} missing after cargo build",
        path.display()
    );
    built.insert(key, path.clone());
    path
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_distinct() {
        let ports: [u16; 32] = super::free_ports();
        let unique: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
    }

    /// A port held by another test's server is recognised as taken (the
    /// failure `start` retries on), not mistaken for our server being ready.
    #[test]
    fn a_port_held_by_another_server_is_reported_as_in_use() {
        let other = super::NatsServer::start();
        let [monitor_port] = super::free_ports();
        let server = super::NatsServer {
            port: other.port(),
            monitor_port,
            store: tempfile::tempdir().unwrap(),
            extra_config: String::new(),
            child: std::sync::Mutex::new(None),
        };
        let failure = server.try_spawn().expect_err("the client port is taken");
        assert!(failure.port_in_use, "{}", failure.message);
    }
}

//! Command line definition (`narunctl <noun> <verb>`): the clap types and the value
//! parsers of their flags. What each command does is in `cmd/`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
Examples:
  narunctl deploy -f hello.toml target/aarch64-unknown-linux-gnu/release/hello
  narunctl deploy --name hello --tag v2 --label role=edge --replicas 2 ./hello-arm64 ./hello-amd64
  narunctl apps ls
  narunctl nodes ls
  narunctl logs hello --node node-1
  narunctl svc stats hello
  narunctl request hello POST /echo -d 'hi' -H 'Content-Type: text/plain'
  narunctl apps restart hello

Defaults for the connection flags can come from a context file
(~/.config/narun/config.toml, or $XDG_CONFIG_HOME/narun/config.toml):
  current = \"lab\"
  [contexts.lab]
  nats = \"nats://lab-nats:4222\"
Precedence: flag > environment > context file > built-in default.

Exit codes: 0 ok, 1 the operation failed, 2 usage error (also: a bad context file).";

/// Operate a narun fleet over NATS: deploy apps, inspect nodes, follow logs,
/// query services.
#[derive(Debug, Parser)]
#[command(name = "narunctl", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub context: ContextArgs,
    #[command(subcommand)]
    pub cmd: Command,
}

/// How to reach NATS. Every flag can also come from the environment.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "NATS_URL", default_value = narun_wire::connect::DEFAULT_URL, global = true)]
    pub nats: String,
    /// Credentials file (JWT + nkey seed).
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub creds: Option<PathBuf>,
    /// File holding an nkey seed (`SU…`).
    #[arg(long, env = "NATS_NKEY_SEED_FILE", global = true)]
    pub nkey: Option<PathBuf>,
    /// NATS user name for user/password authentication. (`--user` is accepted as a hidden
    /// alias of older narunctl versions; in narun `user` otherwise means an app's Unix user.)
    #[arg(
        long = "nats-user",
        alias = "user",
        value_name = "USER",
        env = "NATS_USER",
        global = true
    )]
    pub user: Option<String>,
    /// Password for --nats-user.
    #[arg(long, env = "NATS_PASSWORD", global = true, hide_env_values = true)]
    pub password: Option<String>,
    /// PEM file of CA certificates to trust (enables TLS).
    #[arg(long, env = "NATS_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key.
    #[arg(long, env = "NATS_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS; needs --tls-cert.
    #[arg(long, env = "NATS_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// How long to wait for NATS and for each answer (e.g. 500ms, 5s, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
    /// Replicas (1-5) of a bucket narunctl has to create [default: 3 when the NATS cluster
    /// announces 3 or more servers, else 1]. Existing buckets keep theirs: see
    /// `admin replicas`.
    #[arg(long, env = "NARUN_STREAM_REPLICAS", value_name = "N", value_parser = parse_replicas, global = true)]
    pub stream_replicas: Option<usize>,
}

/// A replica count: 1 to 5 (JetStream's range).
pub fn parse_replicas(s: &str) -> Result<usize, String> {
    let max = narun_wire::jetstream::MAX_REPLICAS;
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a replica count (1 to {max})")),
    }
}

/// Which context file and context give the defaults of the flags above
/// (see `docs/narunctl.md`, "Context file").
#[derive(Debug, Args)]
pub struct ContextArgs {
    /// Context file with defaults for the global flags
    /// [default: $XDG_CONFIG_HOME/narun/config.toml or ~/.config/narun/config.toml].
    #[arg(long, env = "NARUNCTL_CONFIG", value_name = "PATH", global = true)]
    pub context_file: Option<PathBuf>,
    /// Use this `[contexts.NAME]` of the context file instead of its `current`.
    #[arg(long, env = "NARUN_CONTEXT", value_name = "NAME", global = true)]
    pub context: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload binaries and write the app spec (validated locally first).
    Deploy(DeployArgs),
    /// Deployed apps: list, inspect, delete.
    #[command(subcommand)]
    Apps(AppsCmd),
    /// Nodes running narund (or a Go node-runner): list, inspect.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// App logs (`logs.<app>.<node>`): the last lines, then follow.
    Logs(LogsArgs),
    /// NATS Micro services (ADR-32 discovery): list, info, stats, ping.
    #[command(subcommand)]
    Svc(SvcCmd),
    /// Send one HTTP request to a service over NATS (Binary HTTP, like the gateway).
    Request(RequestArgs),
    /// Encrypted secrets for `valueFromSecret` (KV `narun-secrets`, AES-256-GCM).
    #[command(subcommand, alias = "secrets")]
    Secret(SecretCmd),
    /// Shared files for spec `mounts` (object store `narun-files`).
    #[command(subcommand)]
    Files(FilesCmd),
    /// App binaries in the object store `app-binaries`: list, remove.
    #[command(subcommand)]
    Images(ImagesCmd),
    /// Print a shell completion script for bash, zsh or fish.
    Completions(CompletionsArgs),
    /// Write the man pages (narunctl.1 and one page per subcommand).
    Man(ManArgs),
    /// Signing keys for `deploy --sign`: generate one, print a key's public key.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Cluster administration: the replicas of narun's buckets and streams.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Status events (`status.<app>.<node>`): the history kept by the `narun-status`
    /// stream (narund `[events] stream = true`), then, with --follow, live.
    Events(EventsArgs),
    /// Async jobs (gateway `async` routes): list, show, retry, cancel (docs/jobs.md).
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Run a job app (`runMode = "job"`) now.
    Run(RunArgs),
    /// Job run history: every attempt with its exit code and duration.
    #[command(subcommand)]
    Runs(RunsCmd),
    /// Named gateways' route sets in KV (`gateway.<name>.routes`, docs/gateway.md).
    #[command(subcommand)]
    Gateway(GatewayCmd),
    /// What a binary is: platform, size, SHA-256 and the spec embedded in it (no NATS).
    Inspect(InspectArgs),
    /// App configuration (KV `narun-config`, read by `narun::config`): get, set, edit.
    #[command(subcommand)]
    Config(ConfigCmd),
}

/// `gateway routes set|get`.
#[derive(Debug, Subcommand)]
pub enum GatewayCmd {
    /// The route set a named gateway serves besides its configured routes.
    #[command(subcommand)]
    Routes(GatewayRoutesCmd),
}

/// `gateway routes set NAME FILE` / `gateway routes get NAME`.
#[derive(Debug, Subcommand)]
pub enum GatewayRoutesCmd {
    /// Store a route set (TOML `[[routes]]`, as `[[gateway.routes]]`) for gateway NAME and
    /// report what the running gateways of that name made of it.
    Set {
        /// The gateway's `[gateway] name`.
        name: String,
        /// The TOML route set, `-` for stdin.
        file: PathBuf,
    },
    /// Print the route set stored for gateway NAME.
    Get {
        /// The gateway's `[gateway] name`.
        name: String,
    },
    /// Remove gateway NAME's route set (it then serves its configured routes only).
    Rm {
        /// The gateway's `[gateway] name`.
        name: String,
    },
}

/// `jobs ls|show|retry|cancel`.
#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// Jobs, newest first: id, state, service, request, attempts, age.
    Ls(JobsLsArgs),
    /// One job's record: state, request, every attempt, result.
    Show {
        /// The job id (`Narun-Job-Id`, the last part of `Location: /_jobs/<id>`).
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Queue a failed or cancelled job again: a new run with `max_attempts` more attempts.
    Retry { id: String },
    /// Cancel a queued or retrying job (a running or finished one cannot be).
    Cancel { id: String },
}

/// `jobs ls [--app A] [--service S] [--state STATE] [--limit N] [--json]`.
#[derive(Debug, Args)]
pub struct JobsLsArgs {
    /// Only jobs of this app (async jobs: the service the route calls, usually the app name).
    #[arg(long)]
    pub app: Option<String>,
    /// Only jobs of this service (the route's target).
    #[arg(long)]
    pub service: Option<String>,
    /// Only jobs in this state: queued, running, retrying, done, failed, cancelled.
    #[arg(long)]
    pub state: Option<String>,
    /// At most this many jobs (the newest).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `events [--app A] [--node N] [--since DUR] [--follow] [--json]`.
///
/// With the `narun-status` stream: the events of the last --since (default 1h), then
/// exit, or keep following with --follow. Without the stream there is no history:
/// narunctl says so on stderr and follows live events until Ctrl-C.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this app.
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
    /// Only this node.
    #[arg(long, value_name = "NODE_ID")]
    pub node: Option<String>,
    /// History to show from the stream (e.g. 10m, 2h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub since: Duration,
    /// After the history, keep following new events until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// One JSON status event per line, as narund published it.
    #[arg(long)]
    pub json: bool,
}

/// `apps scale NAME N [--node NODE | --selector K=V,…] [--wait[=TIMEOUT]]`.
///
/// Sets the replicas of one node selector of the stored spec (compare-and-set, like
/// deploy). Without --node/--selector the spec must have exactly one selector.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// App name.
    pub name: String,
    /// Replicas wanted (0 or more).
    #[arg(value_name = "N", allow_negative_numbers = true)]
    pub replicas: i64,
    /// The selector naming this node (added when the spec has none).
    #[arg(long, value_name = "NODE_ID", conflicts_with = "selector")]
    pub node: Option<String>,
    /// The label selector with exactly these labels, e.g. `role=edge,zone=a` (added when
    /// the spec has none).
    #[arg(long, value_name = "K=V,…")]
    pub selector: Option<String>,
    /// Follow the rollout until every selected instance is ready (default 120 s), like
    /// `deploy --wait`.
    #[arg(
        long,
        value_name = "TIMEOUT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "120s",
        value_parser = parse_duration
    )]
    pub wait: Option<Duration>,
}

/// `apps rollback NAME [--to TAG] [--wait[=TIMEOUT]]`.
///
/// Writes back the spec of an earlier release (its tag, binary and settings; the
/// current node selectors stay). Without --to: the newest release that became ready
/// (remembered in the KV bucket `narun-releases` by every successful `--wait`) whose
/// tag differs from the current one, else the tag nodes still run after narund rolled
/// a failed rollout back.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// App name.
    pub name: String,
    /// Go back to this tag (its remembered spec, else the current spec with this tag;
    /// its binary must still be in app-binaries).
    #[arg(long, value_name = "TAG")]
    pub to: Option<String>,
    /// Follow the rollout until every selected instance is ready (default 120 s), like
    /// `deploy --wait`.
    #[arg(
        long,
        value_name = "TIMEOUT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "120s",
        value_parser = parse_duration
    )]
    pub wait: Option<Duration>,
}

/// `admin replicas N [--dry-run]`.
#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Set the replicas of every existing narun bucket and stream (KV_app-configs,
    /// KV_node-runner-states, KV_narun-secrets, KV_narun-releases, OBJ_app-binaries,
    /// OBJ_narun-files, narun-logs, narun-status) to N, in place: JetStream copies the data to the new peers while the
    /// streams stay in use. Prints one line per stream.
    Replicas {
        /// Replicas wanted (1-5; at most the servers in the cluster).
        #[arg(value_name = "N", value_parser = parse_replicas)]
        replicas: usize,
        /// Only list what would change.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// `keys generate FILE` | `keys public FILE`.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Write a new ed25519 signing key (an nkey seed `SU…`, like `nk -gen user`) to FILE
    /// (mode 0600, never overwritten) and print its public key (`U…`), the value for
    /// `[deploy] trusted_keys` in narund.toml.
    Generate {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the public key of the signing key in FILE (a seed file or a .creds file).
    Public {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// `deploy -f spec.toml BIN…` or `deploy --name N --tag T [--node ID|--label k=v] BIN…`.
///
/// Each BIN is a Linux ELF executable; its OS/arch is read from its header and
/// it is stored as `<app>-<tag>-linux-<arch>` in the `app-binaries` object
/// store. The spec is written to `app-configs` only if it is valid and every
/// upload succeeded. An existing spec is replaced with compare-and-set: if
/// someone changed it while you deployed, the deploy fails (use --force).
///
/// A tag's binary is immutable: another binary under an existing tag is refused
/// (both digests shown) unless --force; the same binary is not uploaded again. The
/// spec records the digest of every binary (`binaryDigests`), so nodes run exactly
/// those. A spec that selects no online node is refused unless --allow-offline.
/// --dry-run shows the spec diff and, per node, what would start and stop.
///
/// Without -f, a spec embedded in the binaries (`narun::embed_spec!`, section `.narun`)
/// is used, with --name, --tag, --node/--label and --replicas replacing its values; -f
/// SPEC replaces it entirely.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").args(["file", "name"]))]
pub struct DeployArgs {
    /// App spec file (.toml, .yaml/.yml or .json).
    #[arg(short = 'f', long = "file", value_name = "SPEC", conflicts_with_all = ["tag", "node", "label", "replicas"])]
    pub file: Option<PathBuf>,
    /// App name (flag form; builds a spec with mode exec).
    #[arg(long, requires = "tag")]
    pub name: Option<String>,
    /// Binary tag / version (flag form).
    #[arg(long)]
    pub tag: Option<String>,
    /// Run on this node ID (repeatable). Default without --node/--label: this host's node
    /// id (narund's default `node_id`: /etc/narun/node-id, else derived from
    /// /etc/machine-id, else the host name), if that node is online.
    #[arg(long, value_name = "NODE_ID")]
    pub node: Vec<String>,
    /// Run on every node having this label (repeatable, all must match).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
    /// Instances per selected node (flag form; with an embedded spec and no
    /// --node/--label: of each of its selectors) [default: 1].
    #[arg(long)]
    pub replicas: Option<i64>,
    /// Overwrite the stored spec even if it changed since we read it, and replace a
    /// binary already uploaded under this tag with another one (nodes switch to it).
    #[arg(long, conflicts_with = "expect_revision")]
    pub force: bool,
    /// Replace the stored spec only if its revision is still REV (as printed
    /// by `deploy` and `apps info`); 0 = only if the app does not exist yet.
    #[arg(long, value_name = "REV")]
    pub expect_revision: Option<u64>,
    /// Deploy without uploading: the binary object must already exist.
    #[arg(long, conflicts_with = "binaries")]
    pub no_binary: bool,
    /// How long one binary upload may take.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub upload_timeout: Duration,
    /// Sign every binary (app, tag, platform, SHA-256) with the ed25519 key in KEY_FILE: an
    /// nkey seed `SU…`/`SA…` (`narunctl keys generate FILE`, `nk -gen user`) or a .creds
    /// file. Nodes with `[deploy] trusted_keys` run only binaries signed by one of their keys.
    #[arg(long, value_name = "KEY_FILE", conflicts_with = "no_binary")]
    pub sign: Option<PathBuf>,
    /// After writing the spec, follow narund's status events until every
    /// selected instance runs the new spec and is ready (`--wait` = 120 s,
    /// `--wait=5m`). Exit 1 with the reason and the instance's last log lines
    /// if one fails, crashes for good, is rolled back, or time runs out.
    #[arg(
        long,
        value_name = "TIMEOUT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "120s",
        value_parser = parse_duration
    )]
    pub wait: Option<Duration>,
    /// Write the spec even if it selects no online node (they run it when they come
    /// online).
    #[arg(long)]
    pub allow_offline: bool,
    /// Show what would change (spec diff, binaries, per node what starts and stops) and
    /// write nothing. Exit 1 if the deploy would be refused.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result (with --dry-run: the plan) as one JSON object instead of lines,
    /// and no progress bar.
    #[arg(long, conflicts_with = "wait")]
    pub json: bool,
    /// Linux ELF executables, one per architecture.
    #[arg(value_name = "BIN")]
    pub binaries: Vec<PathBuf>,
}

/// `apps diff -f SPEC [BIN…]` or `apps diff --name N --tag T [--node ID|--label k=v] [BIN…]`:
/// what `deploy` with the same arguments would change — the spec diff against the stored
/// spec, the binaries it would upload, and per node the instances that would start, be
/// replaced or stop. Nothing is written. Without -f, the spec embedded in the binaries is
/// used as `deploy` uses it.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").args(["file", "name"]))]
pub struct DiffArgs {
    /// App spec file (.toml, .yaml/.yml or .json).
    #[arg(short = 'f', long = "file", value_name = "SPEC", conflicts_with_all = ["tag", "node", "label", "replicas"])]
    pub file: Option<PathBuf>,
    /// App name (flag form, as in `deploy`).
    #[arg(long, requires = "tag")]
    pub name: Option<String>,
    /// Binary tag / version (flag form).
    #[arg(long)]
    pub tag: Option<String>,
    /// Run on this node ID (repeatable; default: this host's node id).
    #[arg(long, value_name = "NODE_ID")]
    pub node: Vec<String>,
    /// Run on every node having this label (repeatable, all must match).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
    /// Instances per selected node (flag form; with an embedded spec and no
    /// --node/--label: of each of its selectors) [default: 1].
    #[arg(long)]
    pub replicas: Option<i64>,
    #[command(flatten)]
    pub json: JsonFlag,
    /// Binaries `deploy` would upload (their digests are compared with the stored objects).
    #[arg(value_name = "BIN")]
    pub binaries: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AppsCmd {
    /// Table of apps: tag, where they run, desired/running/ready/failed/restarting
    /// instances and the last reason something went wrong.
    Ls(JsonFlag),
    /// The stored spec and, per node and per instance, desired vs reported state.
    #[command(alias = "show", alias = "status")]
    Info {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Delete the app spec (narund then stops its instances).
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long = "yes")]
        yes: bool,
    },
    /// Restart the app's instances (stop, then start again), one at a time per node.
    Restart(RestartArgs),
    /// What `deploy` with these arguments would change (spec diff, per node starts and
    /// stops); writes nothing.
    Diff(DiffArgs),
    /// Set the replicas of the app on a node or label selector.
    Scale(ScaleArgs),
    /// Go back to the previous good release (or --to TAG).
    Rollback(RollbackArgs),
}

/// `apps restart NAME [--node NODE]…`: like `systemctl restart` for each instance.
///
/// Each node that runs the app (from the node heartbeats, or the nodes given with
/// --node) stops its instances one at a time (stop signal, stopTimeoutSec, then
/// SIGKILL of the cgroup), starts each again with a new run id and waits until it is
/// ready before the next, so an app with two replicas never has none. Nodes work in
/// parallel. Exit 1 if any node failed or no node runs the app.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// App name.
    pub name: String,
    /// Only on this node (repeatable; asked even if its heartbeat lists no instance).
    #[arg(long, value_name = "NODE_ID")]
    pub node: Vec<String>,
    /// Only this instance, e.g. `hello-1`.
    #[arg(long, value_name = "INSTANCE_ID")]
    pub instance: Option<String>,
    /// How long each node may take for all its instances to stop and be ready again.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub restart_timeout: Duration,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// Table of nodes (offline if no heartbeat for 45 s).
    Ls(JsonFlag),
    /// Everything a node reports about itself and its instances.
    Info {
        node: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `logs [APP] [--node N] [--instance I] [--tail N|--since D] [--no-follow] [--raw]`.
///
/// Prints the last lines (10 by default; from the `narun-logs` stream, narund
/// `[logs] stream = true`), then follows new lines until Ctrl-C. Columns: time, node,
/// instance, stream, message. Colours of app output are kept on a terminal and
/// stripped when stdout is a pipe or file; other control sequences are always removed.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// App name (default: all apps). An app that is neither deployed, running nor in the
    /// log history is an error that lists close names.
    pub app: Option<String>,
    /// Only this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Only this instance (e.g. `hello-0`; filtered here, --tail counts its lines).
    #[arg(long)]
    pub instance: Option<String>,
    /// Print the JSON log lines as received (nothing stripped, no columns).
    #[arg(long)]
    pub raw: bool,
    /// Start with the last N lines (`all`: every stored line; 0: none) [default: 10, or
    /// `all` with --since]. Needs the `narun-logs` stream.
    #[arg(long, short = 'n', value_name = "N", value_parser = parse_tail)]
    pub tail: Option<u64>,
    /// Start with the lines of the last DURATION (e.g. 10m, 2h); with --tail, at most
    /// that many of them. Needs the `narun-logs` stream.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Print the history (--tail/--since) and exit instead of following new lines.
    #[arg(long, conflicts_with = "follow")]
    pub no_follow: bool,
    /// Follow new lines (the default; kept for older scripts).
    #[arg(short = 'f', long, hide = true)]
    pub follow: bool,
    /// Colours of app output: `auto` keeps them when stdout is a terminal, `always` also
    /// into a pipe (`| less -R`), `never` strips them. Other control sequences are always
    /// removed.
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = ColorWhen::Auto)]
    pub color: ColorWhen,
}

/// `logs --color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

/// `--tail`: a line count, or `all` (as `u64::MAX`).
pub fn parse_tail(s: &str) -> Result<u64, String> {
    match s.trim() {
        "all" | "-1" => Ok(u64::MAX),
        t => t
            .parse()
            .map_err(|_| format!("{s:?} is not a line count: use e.g. 10, 0 or all")),
    }
}

#[derive(Debug, Subcommand)]
pub enum ImagesCmd {
    /// Table of uploaded binaries with their app, tag, platform and digest.
    Ls(JsonFlag),
    /// Delete binaries by object name (as shown by `images ls`).
    Rm {
        /// Object names, e.g. `hello-v1-linux-arm64`.
        #[arg(required = true, value_name = "OBJECT")]
        objects: Vec<String>,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(short = 'y', long = "yes")]
        yes: bool,
    },
}

/// `completions bash|zsh|fish`: e.g.
/// `narunctl completions bash > /etc/bash_completion.d/narunctl`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to generate the script for.
    pub shell: clap_complete::Shell,
}

/// `man [--out DIR]`: roff man pages generated from this definition.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write `narunctl.1`, `narunctl-deploy.1`, … into; without
    /// it, narunctl.1 is printed to stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SvcCmd {
    /// Every service instance that answers `$SRV.INFO`.
    Ls(JsonFlag),
    /// Endpoints and metadata of each instance of a service.
    Info {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Per-endpoint request counters of each instance of a service.
    Stats {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Ping all services (or one) and show round-trip times.
    Ping {
        name: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Encrypt a value here and store it as NAME (created or replaced).
    Set(SecretSetArgs),
    /// Names, app scopes, descriptions and update times (values are never shown).
    #[command(alias = "list")]
    Ls(JsonFlag),
    /// Purge a secret (no history is kept).
    #[command(alias = "delete")]
    Rm {
        name: String,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long = "yes")]
        yes: bool,
    },
}

/// `secret set NAME [VALUE] --app APP…|--any-app`: the value comes from VALUE,
/// --from-file, or stdin (one trailing newline removed). It is encrypted with the master
/// key on this machine, bound to the apps that may use it; only the ciphertext goes to
/// NATS.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("scope").required(true).args(["app", "any_app"]))]
pub struct SecretSetArgs {
    /// Secret name (= KV key; letters, digits, - _ = . /).
    pub name: String,
    /// The value (visible in shell history and `ps`; prefer --from-file or stdin).
    #[arg(conflicts_with = "from_file")]
    pub value: Option<String>,
    /// Read the value from this file (exact bytes).
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    /// Free text shown by `secret ls`.
    #[arg(long, alias = "desc")]
    pub description: Option<String>,
    /// An app (spec `name`) that may use the secret; repeat for several. Replaces the
    /// scope of an existing secret. narund refuses to start any other app that uses it.
    #[arg(long, value_name = "APP", conflicts_with = "any_app")]
    pub app: Vec<String>,
    /// Every app may use the secret (still authenticated: a KV writer cannot change it).
    #[arg(long)]
    pub any_app: bool,
    #[command(flatten)]
    pub key: MasterKeyArgs,
}

/// The fleet's master key (standard base64 of 32 bytes), as in the Go CLI.
#[derive(Debug, Args)]
pub struct MasterKeyArgs {
    /// File holding the base64 master key (wins over --master-key).
    #[arg(
        long,
        alias = "master-key-path",
        env = "NARUN_MASTER_KEY_PATH",
        value_name = "FILE"
    )]
    pub master_key_file: Option<PathBuf>,
    /// The base64 master key itself.
    #[arg(
        long,
        env = "NARUN_MASTER_KEY",
        hide_env_values = true,
        value_name = "BASE64"
    )]
    pub master_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum FilesCmd {
    /// Upload PATH as NAME (created or replaced).
    Add {
        /// Object name, referenced by `mounts[].source.objectStore` (no '/').
        name: String,
        /// A regular file.
        path: PathBuf,
        /// How long the upload may take.
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        upload_timeout: Duration,
    },
    /// Name, size, modification time, original file name, digest.
    #[command(alias = "list")]
    Ls(JsonFlag),
    /// Delete a file.
    #[command(alias = "delete")]
    Rm {
        name: String,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long = "yes")]
        yes: bool,
    },
}

/// `request SERVICE [METHOD] PATH`: METHOD defaults to GET (POST with -d).
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Service name (= NATS subject).
    pub service: String,
    /// `[METHOD] PATH`, e.g. `/hello` or `POST /echo`.
    #[arg(num_args = 1..=2, required = true, value_name = "[METHOD] PATH")]
    pub target: Vec<String>,
    /// Request body (`@file` reads a file).
    #[arg(short = 'd', long = "data")]
    pub data: Option<String>,
    /// Header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
}

/// Parse `500ms`, `5s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 5s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit {unit:?}: use ms, s, m or h")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("invalid label {s:?}: expected KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn tails() {
        assert_eq!(parse_tail("10").unwrap(), 10);
        assert_eq!(parse_tail("0").unwrap(), 0);
        assert_eq!(parse_tail("all").unwrap(), u64::MAX);
        assert!(parse_tail("ten").is_err());
        assert!(parse_tail("-2").is_err());
    }
}

/// `run APP [--node NODE]… [--json]`: run a job app now.
///
/// Asks each online node the stored spec selects (or the nodes given with --node) on
/// `narun.control.<node>.run`; a `scope = "fleet"` job gets one request id on every node
/// and runs once in the fleet. The run's attempts, exit codes and durations are status
/// events: `narunctl runs ls --app APP`. Exit 1 if no node started it.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// App name (a spec with `runMode = "job"`).
    pub name: String,
    /// Only on this node (repeatable; asked even if the spec does not seem to select it).
    #[arg(long, value_name = "NODE_ID")]
    pub node: Vec<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `runs ls --app APP [--node N] [--since DUR] [--json]`: the history of a job's runs.
#[derive(Debug, Subcommand)]
pub enum RunsCmd {
    /// The attempts of the job's runs (from the `narun-status` stream), oldest first.
    Ls(RunsLsArgs),
}

/// Flags of `runs ls`.
#[derive(Debug, Args)]
pub struct RunsLsArgs {
    /// The job app.
    #[arg(long, value_name = "APP")]
    pub app: String,
    /// Only this node.
    #[arg(long, value_name = "NODE_ID")]
    pub node: Option<String>,
    /// History to show (e.g. 10m, 2h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub since: Duration,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `inspect BIN… [--json]`: read each binary's ELF header and section table, hash it,
/// and print its platform, size, SHA-256 (hex and the object store's form) and the spec
/// embedded with `narun::embed_spec!` (section `.narun`), checked like `deploy` checks
/// it. Exit 1 if a file is not an executable narun runs or its embedded spec is invalid.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Linux ELF executables.
    #[arg(value_name = "BIN", required = true)]
    pub binaries: Vec<PathBuf>,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `config get|set|edit APP`: the configuration `narun::config` gives app APP.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the app's configuration (JSON, or TOML with --toml) on stdout and its
    /// revision on stderr.
    Get {
        /// App name (the KV key).
        app: String,
        /// Print it as TOML.
        #[arg(long, conflicts_with = "json")]
        toml: bool,
        /// One JSON object: app, revision, created, value.
        #[arg(long)]
        json: bool,
    },
    /// Write the app's configuration from FILE (`-`: stdin): a JSON object or a TOML
    /// document (by the file's extension, else JSON when it starts with `{`, else TOML),
    /// checked before it is written and stored as JSON.
    Set(ConfigSetArgs),
    /// Edit the app's configuration in $VISUAL / $EDITOR (default vi); it is checked
    /// before it is written, and written only if nobody changed it meanwhile.
    Edit {
        /// App name (the KV key).
        app: String,
        /// Edit it as TOML instead of JSON.
        #[arg(long)]
        toml: bool,
    },
}

/// `config set APP FILE|- [--expect-revision REV]`.
#[derive(Debug, Args)]
pub struct ConfigSetArgs {
    /// App name (the KV key).
    pub app: String,
    /// A .json or .toml file, or `-` for stdin.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Write only if the stored configuration is still at revision REV (0: only if there
    /// is none).
    #[arg(long, value_name = "REV")]
    pub expect_revision: Option<u64>,
}

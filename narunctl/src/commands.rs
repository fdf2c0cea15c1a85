//! The commands: connect, do one thing, print, return an error with context.

use crate::cli::{AppsCmd, Cli, Command, ConnArgs, DeployArgs, LogsArgs, NodesCmd, RequestArgs};
use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{self, kv, object_store};
use futures_util::StreamExt;
use narun_spec::AppSpec;
use narun_wire::connect::NatsSettings;
use narun_wire::events::{LogLine, NodeState};
use narun_wire::names;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Run one parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let conn = cli.conn;
    match cli.cmd {
        Command::Deploy(args) => deploy(&conn, args).await,
        Command::Apps(AppsCmd::Ls(j)) => apps_ls(&conn, j.json).await,
        Command::Apps(AppsCmd::Info { name, json }) => apps_info(&conn, &name, json.json).await,
        Command::Apps(AppsCmd::Delete { name, yes }) => apps_delete(&conn, &name, yes).await,
        Command::Apps(AppsCmd::Restart(args)) => crate::restart::run(&conn, args).await,
        Command::Nodes(NodesCmd::Ls(j)) => nodes_ls(&conn, j.json).await,
        Command::Nodes(NodesCmd::Info { node, json }) => nodes_info(&conn, &node, json.json).await,
        Command::Logs(args) => logs(&conn, args).await,
        Command::Svc(cmd) => crate::svc::run(&conn, cmd).await,
        Command::Request(args) => request(&conn, args).await,
        Command::Secret(cmd) => crate::secret::run(&conn, cmd).await,
        Command::Files(cmd) => crate::files::run(&conn, cmd).await,
        Command::Images(cmd) => crate::images::run(&conn, cmd).await,
        Command::Completions(a) => {
            let mut script = Vec::new();
            crate::cli::completions(a.shell, &mut script);
            write_stdout(&script)
        }
        Command::Man(a) => {
            let mut page = Vec::new();
            let written = crate::cli::man_pages(a.out.as_deref(), &mut page)
                .context("writing the man pages")?;
            for p in written {
                println!("wrote {}", p.display());
            }
            write_stdout(&page)
        }
    }
}

/// Write generated output; a closed pipe (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow!("writing to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

/// Connect and prove the server answers within `--timeout`.
///
/// `NatsSettings::options` retries the initial connect forever (right for
/// daemons); a CLI must fail fast instead, so we bound a `flush` (a PING/PONG
/// round trip) and report an unreachable server in one line.
pub async fn connect(conn: &ConnArgs, what: &str) -> Result<async_nats::Client> {
    let settings = NatsSettings {
        url: conn.nats.clone(),
        creds: conn.creds.clone(),
        nkey_seed: conn.nkey.clone(),
        user: conn.user.clone(),
        password: conn.password.clone(),
        tls_ca: conn.tls_ca.clone(),
        tls_cert: conn.tls_cert.clone(),
        tls_key: conn.tls_key.clone(),
    };
    let name = format!("narunctl-{what}-{}", std::process::id() % 10_000);
    let opts = settings.options(&name).await?;
    let client = opts
        .connect(conn.nats.as_str())
        .await
        .map_err(|e| anyhow!("cannot reach NATS at {}: {e}", conn.nats))?;
    match tokio::time::timeout(conn.timeout, client.flush()).await {
        Ok(Ok(())) => Ok(client),
        Ok(Err(e)) => bail!("cannot reach NATS at {}: {e}", conn.nats),
        Err(_) => bail!(
            "cannot reach NATS at {} within {:?} (is nats-server running? set --nats, NATS_URL or `nats` in the context file)",
            conn.nats,
            conn.timeout
        ),
    }
}

pub(crate) fn js(client: &async_nats::Client, timeout: Duration) -> jetstream::Context {
    let mut js = jetstream::new(client.clone());
    js.set_timeout(timeout);
    js
}

/// Await `fut` at most `timeout`; `what` names the operation in the error.
pub(crate) async fn bounded<T, E: std::fmt::Display>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow!("{what}: {e}")),
        Err(_) => Err(anyhow!("{what}: no answer within {timeout:?}")),
    }
}

/// Open the object store `bucket`; `None` if it does not exist.
pub(crate) async fn open_object_store(
    js: &jetstream::Context,
    bucket: &str,
    timeout: Duration,
) -> Result<Option<object_store::ObjectStore>> {
    bounded(
        timeout,
        &format!("opening object store {bucket}"),
        narun_wire::jetstream::open_object_store(js, bucket),
    )
    .await
}

/// Ask `question` on stderr and succeed only if the operator types `yes`. Without a
/// terminal on stdin nothing is asked (a script must not hang): the answer is no, and
/// the error says to pass `-y`.
pub(crate) fn confirm(question: &str) -> Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!("not confirmed: stdin is not a terminal; pass -y to skip the question");
    }
    eprint!("{question} Type 'yes': ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != "yes" {
        bail!("not confirmed; nothing deleted (use -y to skip the question)");
    }
    Ok(())
}

/// Open the KV bucket `bucket`; `None` if it does not exist.
pub(crate) async fn open_kv(
    js: &jetstream::Context,
    bucket: &str,
    timeout: Duration,
) -> Result<Option<kv::Store>> {
    bounded(
        timeout,
        &format!("opening KV bucket {bucket}"),
        narun_wire::jetstream::open_kv(js, bucket),
    )
    .await
}

/// Every `(key, value)` of a bucket whose value is present.
async fn kv_entries(store: &kv::Store, timeout: Duration) -> Result<Vec<(String, bytes::Bytes)>> {
    let bucket = store.name.clone();
    let keys: Vec<String> = bounded(timeout, &format!("listing keys of {bucket}"), async {
        let mut keys = store.keys().await?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            out.push(k?);
        }
        Ok::<_, async_nats::Error>(out)
    })
    .await?;
    let mut out = Vec::new();
    for k in keys {
        let v = bounded(timeout, &format!("reading {bucket}/{k}"), store.get(&k)).await?;
        if let Some(v) = v {
            out.push((k, v));
        }
    }
    Ok(out)
}

pub(crate) async fn node_states(
    js: &jetstream::Context,
    timeout: Duration,
) -> Result<Vec<NodeState>> {
    let Some(store) = open_kv(js, names::NODE_STATES_BUCKET, timeout).await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (key, value) in kv_entries(&store, timeout).await? {
        match serde_json::from_slice::<NodeState>(&value) {
            Ok(s) => out.push(s),
            Err(e) => eprintln!("warning: node state {key} is not valid JSON: {e}"),
        }
    }
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(out)
}

// ---------------------------------------------------------------- deploy

struct Binary {
    path: PathBuf,
    platform: crate::elf::Platform,
}

async fn deploy(conn: &ConnArgs, args: DeployArgs) -> Result<()> {
    // 1. Build and validate the spec before touching the network.
    let spec = match &args.file {
        Some(path) => AppSpec::from_path(path)?,
        None => {
            let name = args.name.clone().unwrap_or_default();
            let tag = args.tag.clone().unwrap_or_default();
            let mut spec = AppSpec::new(name, tag);
            for n in &args.node {
                spec.nodes
                    .push(narun_spec::NodeSelector::by_name(n.clone(), args.replicas));
            }
            if !args.label.is_empty() {
                spec.nodes.push(narun_spec::NodeSelector::by_labels(
                    args.label.clone(),
                    args.replicas,
                ));
            }
            if spec.nodes.is_empty() {
                spec.nodes
                    .push(narun_spec::NodeSelector::by_name("local", args.replicas));
            }
            spec
        }
    };
    spec.validate()
        .map_err(|e| anyhow!("invalid app spec (nothing was uploaded):\n{e}"))?;
    for w in spec.warnings() {
        eprintln!("warning: {w}");
    }
    if let Err(e) = spec.supported_on_narund() {
        for line in e.to_string().lines() {
            eprintln!("warning: narund will not run this spec: {line}");
        }
    }

    // 2. Check every binary before uploading any.
    let mut binaries: Vec<Binary> = Vec::new();
    for path in &args.binaries {
        let mut header = [0u8; 64];
        let n = read_prefix(path, &mut header)
            .with_context(|| format!("cannot read binary {}", path.display()))?;
        let platform = crate::elf::detect(&header[..n])
            .map_err(|e| anyhow!("{}: {e} (nothing was uploaded)", path.display()))?;
        if let Some(other) = binaries.iter().find(|b| b.platform == platform) {
            bail!(
                "{} and {} are both {platform}: give one binary per architecture",
                other.path.display(),
                path.display()
            );
        }
        binaries.push(Binary {
            path: path.clone(),
            platform,
        });
    }
    if binaries.is_empty() && !args.no_binary {
        bail!(
            "no binary given: pass one Linux executable per architecture after the flags, \
             or --no-binary to reuse objects already uploaded for {}:{}",
            spec.name,
            spec.tag
        );
    }

    // 3. Read the spec revision we will replace (compare-and-set), then upload.
    //    A conflict seen now fails before any upload; one that happens during
    //    the upload is caught by the CAS write in 4.
    let client = connect(conn, "deploy").await?;
    let js = js(&client, conn.timeout);
    let kv = bounded(
        conn.timeout,
        &format!("opening KV bucket {}", names::APP_CONFIGS_BUCKET),
        narun_wire::jetstream::APP_CONFIGS.ensure(&js),
    )
    .await?;
    let key = spec.name.clone();
    let current = match bounded(conn.timeout, "reading the current spec", kv.entry(&key)).await? {
        Some(e) if e.operation == kv::Operation::Put => e.revision,
        _ => 0,
    };
    let expected = args.expect_revision.unwrap_or(current);
    if !args.force && expected != current {
        bail!(
            "conflict: the stored spec of {key} is at revision {current}, not {expected} \
             (someone else changed it); nothing was uploaded. Check `narunctl apps info {key}` \
             and retry, or use --force to overwrite"
        );
    }
    let store = bounded(
        conn.timeout,
        &format!("opening object store {}", names::APP_BINARIES_BUCKET),
        narun_wire::jetstream::APP_BINARIES.ensure(&js),
    )
    .await?;
    if args.no_binary {
        let mut found = Vec::new();
        for arch in ["amd64", "arm64", "arm", "riscv64", "386"] {
            let object = spec.binary_object_name("linux", arch);
            if let Ok(Ok(info)) = tokio::time::timeout(conn.timeout, store.info(&object)).await
                && !info.deleted
            {
                found.push(object);
            }
        }
        if found.is_empty() {
            bail!(
                "--no-binary: no object {} exists in app-binaries; upload a binary first",
                spec.binary_object_name("linux", "<arch>")
            );
        }
        for f in found {
            println!("using existing {f}");
        }
    }
    for b in &binaries {
        let (os, arch) = (b.platform.os, b.platform.arch);
        let object = spec.binary_object_name(os, arch);
        let original = b
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta = object_store::ObjectMetadata {
            name: object.clone(),
            description: Some(format!(
                "Binary for {} ({os}/{arch}) tag {}",
                spec.name, spec.tag
            )),
            metadata: HashMap::from([
                ("narun-app-name".to_string(), spec.name.clone()),
                ("narun-goos".to_string(), os.to_string()),
                ("narun-goarch".to_string(), arch.to_string()),
                ("narun-version-tag".to_string(), spec.tag.clone()),
                ("narun-original-file".to_string(), original),
            ]),
            ..Default::default()
        };
        let mut file = tokio::fs::File::open(&b.path)
            .await
            .with_context(|| format!("cannot open {}", b.path.display()))?;
        let info = bounded(
            args.upload_timeout,
            &format!("uploading {} as {object}", b.path.display()),
            store.put(meta, &mut file),
        )
        .await?;
        println!(
            "uploaded {} -> {object} ({} bytes, {})",
            b.path.display(),
            info.size,
            info.digest.as_deref().unwrap_or("no digest")
        );
    }

    // 4. Write the spec with compare-and-set against the revision read in 3.
    //    With --wait, subscribe to the app's status and logs first: core NATS keeps
    //    no history, and narund reacts to the write within milliseconds.
    let follower = match args.wait {
        Some(_) => Some(crate::wait::Follower::subscribe(&client, &spec.name, conn.timeout).await?),
        None => None,
    };
    let value: bytes::Bytes = spec.to_kv_json().into();
    let written = value.clone();
    let revision = if args.force {
        bounded(conn.timeout, "writing the spec", kv.put(&key, value)).await?
    } else {
        let result = match expected {
            rev if rev > 0 => tokio::time::timeout(conn.timeout, kv.update(&key, value, rev))
                .await
                .map(|r| {
                    r.map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    })
                }),
            _ => tokio::time::timeout(conn.timeout, kv.create(&key, value))
                .await
                .map(|r| {
                    r.map_err(|e| {
                        (
                            e.kind() == kv::CreateErrorKind::AlreadyExists,
                            e.to_string(),
                        )
                    })
                }),
        };
        match result {
            Ok(Ok(rev)) => rev,
            Ok(Err((true, _))) => bail!(
                "conflict: the stored spec of {key} is no longer at revision {expected} \
                 (someone else changed it); check `narunctl apps info {key}` and retry, \
                 or use --force to overwrite"
            ),
            Ok(Err((false, e))) => bail!("writing the spec of {key}: {e}"),
            Err(_) => bail!(
                "writing the spec of {key}: no answer within {:?}",
                conn.timeout
            ),
        }
    };
    println!(
        "deployed {}:{} (app-configs revision {revision}, config hash {})",
        spec.name,
        spec.tag,
        spec.config_hash()
    );
    if let (Some(follower), Some(timeout)) = (follower, args.wait) {
        // What narund hashes is the spec as it parses it back from the KV value.
        let stored = AppSpec::from_kv_bytes(&written)
            .map_err(|e| anyhow!("the spec just written cannot be parsed back: {e}"))?;
        follower.wait(stored, timeout, conn.timeout).await?;
    }
    Ok(())
}

fn read_prefix(path: &PathBuf, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

// ---------------------------------------------------------------- apps

/// Short description of the node selectors: `node-1 x2, role=edge x1`.
fn describe_nodes(spec: &AppSpec) -> String {
    if spec.nodes.is_empty() {
        return "-".into();
    }
    spec.nodes
        .iter()
        .map(|n| {
            let target = match (&n.name, &n.labels) {
                (Some(name), _) => name.clone(),
                (None, Some(l)) if l.is_empty() => "*".into(),
                (None, Some(l)) => l
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                (None, None) => "?".into(),
            };
            format!("{target} x{}", n.replicas)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Instance IDs of `app` a node reports (detailed list when present, else
/// Go's `managed_instances` named `<app>-<n>`).
pub(crate) fn node_instances(state: &NodeState, app: &str) -> Vec<String> {
    if !state.instances.is_empty() {
        return state
            .instances
            .iter()
            .filter(|i| i.app_name == app)
            .map(|i| i.instance_id.clone())
            .collect();
    }
    state
        .managed_instances
        .iter()
        .filter(|id| {
            id.strip_prefix(app)
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .cloned()
        .collect()
}

pub(crate) async fn load_specs(
    js: &jetstream::Context,
    timeout: Duration,
) -> Result<Vec<(String, Result<AppSpec, String>)>> {
    let Some(store) = open_kv(js, names::APP_CONFIGS_BUCKET, timeout).await? else {
        return Ok(Vec::new());
    };
    Ok(kv_entries(&store, timeout)
        .await?
        .into_iter()
        .map(|(k, v)| {
            let spec = AppSpec::from_kv_bytes(&v).map_err(|e| e.to_string());
            (k, spec)
        })
        .collect())
}

async fn apps_ls(conn: &ConnArgs, json: bool) -> Result<()> {
    let client = connect(conn, "apps").await?;
    let js = js(&client, conn.timeout);
    let specs = load_specs(&js, conn.timeout).await?;
    let states = node_states(&js, conn.timeout).await?;
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (key, spec) in specs {
        match spec {
            Ok(spec) => {
                let desired: u32 = states
                    .iter()
                    .map(|s| spec.desired_replicas(&s.node_id, &s.labels))
                    .sum();
                let running: usize = states.iter().map(|s| node_instances(s, &key).len()).sum();
                out.push(serde_json::json!({
                    "name": key, "tag": spec.tag, "nodes": spec.nodes,
                    "desired_on_live_nodes": desired, "running": running,
                }));
                rows.push(vec![
                    key,
                    spec.tag.clone(),
                    describe_nodes(&spec),
                    format!("{running}/{desired}"),
                ]);
            }
            Err(e) => {
                out.push(serde_json::json!({"name": key, "error": e}));
                rows.push(vec![
                    key,
                    "?".into(),
                    format!("invalid spec: {e}"),
                    "-".into(),
                ]);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&["APP", "TAG", "NODES/REPLICAS", "RUNNING/DESIRED"], &rows);
    }
    Ok(())
}

async fn apps_info(conn: &ConnArgs, name: &str, json: bool) -> Result<()> {
    let client = connect(conn, "apps").await?;
    let js = js(&client, conn.timeout);
    let store = open_kv(&js, names::APP_CONFIGS_BUCKET, conn.timeout)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "app {name} not found: bucket app-configs does not exist (nothing deployed yet)"
            )
        })?;
    let entry = bounded(
        conn.timeout,
        &format!("reading app-configs/{name}"),
        store.entry(name),
    )
    .await?
    .filter(|e| e.operation == kv::Operation::Put)
    .ok_or_else(|| anyhow!("app {name} not found in app-configs (see `narunctl apps ls`)"))?;
    let (value, revision) = (entry.value, entry.revision);
    let spec = AppSpec::from_kv_bytes(&value)
        .map_err(|e| anyhow!("the stored spec of {name} cannot be parsed: {e}"))?;
    let states = node_states(&js, conn.timeout).await?;
    let mut nodes = Vec::new();
    for s in &states {
        let desired = spec.desired_replicas(&s.node_id, &s.labels);
        let instances = node_instances(s, name);
        if desired == 0 && instances.is_empty() {
            continue;
        }
        nodes.push((
            s.node_id.clone(),
            node_status(s),
            desired.to_string(),
            instances,
        ));
    }
    for sel in &spec.nodes {
        if let Some(n) = &sel.name
            && !states.iter().any(|s| &s.node_id == n)
        {
            nodes.push((
                n.clone(),
                "offline/unknown".into(),
                sel.replicas.to_string(),
                Vec::new(),
            ));
        }
    }
    if json {
        let nodes: Vec<_> = nodes
            .iter()
            .map(|(n, st, d, i)| serde_json::json!({"node": n, "status": st, "desired": d, "running": i.len(), "instances": i}))
            .collect();
        let out = serde_json::json!({"spec": spec, "revision": revision, "config_hash": spec.config_hash(), "nodes": nodes});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "App {name} (tag {}, revision {revision}, config hash {})",
        spec.tag,
        spec.config_hash()
    );
    println!("{}", serde_json::to_string_pretty(&spec)?);
    println!();
    let rows: Vec<Vec<String>> = nodes
        .into_iter()
        .map(|(n, st, d, i)| {
            let ids = if i.is_empty() {
                "-".into()
            } else {
                i.join(",")
            };
            vec![n, st, d, i.len().to_string(), ids]
        })
        .collect();
    print_table(
        &["NODE", "STATUS", "DESIRED", "RUNNING", "INSTANCES"],
        &rows,
    );
    Ok(())
}

async fn apps_delete(conn: &ConnArgs, name: &str, yes: bool) -> Result<()> {
    let client = connect(conn, "apps").await?;
    let js = js(&client, conn.timeout);
    let store = open_kv(&js, names::APP_CONFIGS_BUCKET, conn.timeout)
        .await?
        .ok_or_else(|| anyhow!("app {name} not found: bucket app-configs does not exist"))?;
    let exists = bounded(
        conn.timeout,
        &format!("reading app-configs/{name}"),
        store.get(name),
    )
    .await?;
    if exists.is_none() {
        bail!("app {name} not found in app-configs (see `narunctl apps ls`)");
    }
    if !yes {
        eprint!("Delete app {name}? Its instances will be stopped on every node. Type 'yes': ");
        std::io::stderr().flush().ok();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        if line.trim() != "yes" {
            bail!("not confirmed; nothing deleted (use -y to skip the question)");
        }
    }
    bounded(
        conn.timeout,
        &format!("deleting app-configs/{name}"),
        store.delete(name),
    )
    .await?;
    println!("deleted app {name}");
    Ok(())
}

// ---------------------------------------------------------------- nodes

pub(crate) fn age(ts: &str) -> Option<Duration> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    let d = time::OffsetDateTime::now_utc() - t;
    Some(Duration::from_secs(d.whole_seconds().max(0) as u64))
}

fn node_status(s: &NodeState) -> String {
    match age(&s.last_seen) {
        Some(a) if a.as_secs() <= names::NODE_STATE_TTL_SECS => s.status.to_string(),
        _ => "offline".into(),
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn labels_str(l: &BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn nodes_ls(conn: &ConnArgs, json: bool) -> Result<()> {
    let client = connect(conn, "nodes").await?;
    let states = node_states(&js(&client, conn.timeout), conn.timeout).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&states)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = states
        .iter()
        .map(|s| {
            vec![
                s.node_id.clone(),
                node_status(s),
                age(&s.start_time).map(human).unwrap_or_else(|| "-".into()),
                format!("{}/{}", s.os, s.arch),
                s.version.clone(),
                labels_str(&s.labels),
            ]
        })
        .collect();
    print_table(
        &["NODE", "STATUS", "AGE", "OS/ARCH", "VERSION", "LABELS"],
        &rows,
    );
    Ok(())
}

async fn nodes_info(conn: &ConnArgs, node: &str, json: bool) -> Result<()> {
    let client = connect(conn, "nodes").await?;
    let states = node_states(&js(&client, conn.timeout), conn.timeout).await?;
    let s = states
        .into_iter()
        .find(|s| s.node_id == node)
        .ok_or_else(|| anyhow!("node {node} not found in node-runner-states (offline for more than 45 s, or never started)"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("Node:        {}", s.node_id);
    println!("Status:      {}", node_status(&s));
    println!("Last seen:   {}", s.last_seen);
    println!("Started:     {}", s.start_time);
    println!("Version:     {}", s.version);
    println!("Platform:    {}/{}", s.os, s.arch);
    println!("Labels:      {}", labels_str(&s.labels));
    if !s.cgroup_layout.is_empty() {
        println!(
            "Cgroups:     {} [{}]",
            s.cgroup_layout,
            s.cgroup_controllers.join(",")
        );
    }
    if let Some(u) = s.io_uring {
        println!("io_uring:    {u}");
    }
    println!();
    if s.instances.is_empty() {
        println!(
            "Managed instances: {}",
            if s.managed_instances.is_empty() {
                "-".into()
            } else {
                s.managed_instances.join(", ")
            }
        );
    } else {
        let rows: Vec<Vec<String>> = s
            .instances
            .iter()
            .map(|i| {
                vec![
                    i.instance_id.clone(),
                    i.app_name.clone(),
                    i.tag.clone(),
                    i.status.to_string(),
                    i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    i.restarts.to_string(),
                ]
            })
            .collect();
        print_table(
            &["INSTANCE", "APP", "TAG", "STATUS", "PID", "RESTARTS"],
            &rows,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- logs

/// `logs`: from the `narun-logs` stream when it exists (history with `--since`, then
/// live, all through one ordered consumer, so nothing is lost or repeated where the
/// history ends), otherwise live lines from a core subscription.
async fn logs(conn: &ConnArgs, args: LogsArgs) -> Result<()> {
    let client = connect(conn, "logs").await?;
    let subject = names::log_subject(
        args.app.as_deref().unwrap_or("*"),
        args.node.as_deref().unwrap_or("*"),
    );
    let js = js(&client, conn.timeout);
    let stream = match tokio::time::timeout(conn.timeout, js.get_stream(names::LOG_STREAM)).await {
        Ok(Ok(s)) => Some(s),
        // Not found, or no JetStream at all: live lines only.
        Ok(Err(_)) => None,
        Err(_) => bail!(
            "looking up the log stream {}: no answer within {:?}",
            names::LOG_STREAM,
            conn.timeout
        ),
    };
    match stream {
        Some(stream) => logs_from_stream(&client, stream, &subject, &args, conn.timeout).await,
        None => {
            if args.since.is_some() {
                eprintln!(
                    "note: no log history: the stream {} does not exist (set `[logs] stream = true` in narund's config); showing live lines only",
                    names::LOG_STREAM
                );
            }
            logs_live(&client, &subject, &args, conn.timeout).await
        }
    }
}

/// A SIGINT (Ctrl-C) listener, registered now: one listener for the whole command, so
/// a signal that arrives while a message is being printed is not lost (a fresh
/// `tokio::signal::ctrl_c()` per loop turn misses signals between turns, and once tokio
/// owns SIGINT a missed one is ignored for good).
fn sigint() -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| anyhow!("installing the SIGINT handler: {e}"))
}

/// Print one log message; false when stdout is closed (e.g. piped into `head`).
fn print_log(out: &mut impl Write, payload: &[u8], args: &LogsArgs) -> bool {
    let line = serde_json::from_slice::<LogLine>(payload);
    if let (Some(want), Ok(l)) = (&args.instance, &line)
        && &l.instance_id != want
    {
        return true;
    }
    let text = match (&line, args.raw) {
        (Ok(l), false) => format!(
            "[{}] [{}] [{}] {}",
            l.timestamp, l.instance_id, l.stream, l.message
        ),
        _ => String::from_utf8_lossy(payload).into_owned(),
    };
    writeln!(out, "{text}").is_ok()
}

async fn logs_live(
    client: &async_nats::Client,
    subject: &str,
    args: &LogsArgs,
    timeout: Duration,
) -> Result<()> {
    let mut sub = client
        .subscribe(subject.to_string())
        .await
        .map_err(|e| anyhow!("subscribing to {subject}: {e}"))?;
    if !narun_wire::connect::sync_with_server(client, timeout).await {
        bail!("subscribing to {subject}: the server did not confirm within {timeout:?}");
    }
    let mut interrupt = sigint()?;
    eprintln!("following {subject} (Ctrl-C to stop)");
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            msg = sub.next() => {
                let Some(msg) = msg else { bail!("the NATS subscription to {subject} ended") };
                if !print_log(&mut stdout, &msg.payload, args) {
                    return Ok(());
                }
            }
        }
    }
}

async fn logs_from_stream(
    client: &async_nats::Client,
    stream: jetstream::stream::Stream,
    subject: &str,
    args: &LogsArgs,
    timeout: Duration,
) -> Result<()> {
    use jetstream::consumer::{DeliverPolicy, push};
    let mut interrupt = sigint()?;
    let deliver_policy = match args.since {
        Some(since) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::now_utc()
                - time::Duration::try_from(since).unwrap_or(time::Duration::ZERO),
        },
        None => DeliverPolicy::New,
    };
    // Without --since narunctl always follows (like Go's `narun logs`).
    let follow = args.follow || args.since.is_none();
    let consumer = bounded(
        timeout,
        &format!("creating a consumer on {}", names::LOG_STREAM),
        stream.create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: subject.to_string(),
            deliver_policy,
            ..Default::default()
        }),
    )
    .await?;
    let pending = consumer.cached_info().num_pending;
    match (args.since, follow) {
        (Some(since), true) => eprintln!(
            "{pending} line(s) of {subject} from the last {since:?} (stream {}), then following (Ctrl-C to stop)",
            names::LOG_STREAM
        ),
        (Some(since), false) => eprintln!(
            "{pending} line(s) of {subject} from the last {since:?} (stream {})",
            names::LOG_STREAM
        ),
        (None, _) => eprintln!(
            "following {subject} (stream {}; Ctrl-C to stop)",
            names::LOG_STREAM
        ),
    }
    if !follow && pending == 0 {
        return Ok(());
    }
    let mut messages = bounded(timeout, "starting the log consumer", consumer.messages()).await?;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            msg = messages.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => bail!("reading {subject} from {}: {e}", names::LOG_STREAM),
                    None => bail!("the consumer on {} ended", names::LOG_STREAM),
                };
                if !print_log(&mut stdout, &msg.payload, args) {
                    return Ok(());
                }
                // The history is printed once the server has nothing more pending.
                if !follow && msg.info().is_ok_and(|i| i.pending == 0) {
                    stdout.flush().ok();
                    return Ok(());
                }
            }
        }
    }
}

// ---------------------------------------------------------------- request

async fn request(conn: &ConnArgs, args: RequestArgs) -> Result<()> {
    let (method, path) = match args.target.as_slice() {
        [path] => (
            if args.data.is_some() { "POST" } else { "GET" }.to_string(),
            path.clone(),
        ),
        [m, path] => (m.to_uppercase(), path.clone()),
        _ => bail!("expected [METHOD] PATH"),
    };
    let body: Vec<u8> = match &args.data {
        Some(d) if d.starts_with('@') => {
            std::fs::read(&d[1..]).with_context(|| format!("cannot read body file {}", &d[1..]))?
        }
        Some(d) => d.clone().into_bytes(),
        None => Vec::new(),
    };
    let mut builder = http::Request::builder()
        .method(method.as_str())
        .uri(path.as_str());
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("invalid header {h:?}: expected 'Name: value'"))?;
        builder = builder.header(k.trim(), v.trim());
    }
    let req = builder
        .body(())
        .map_err(|e| anyhow!("invalid request {method} {path}: {e}"))?;
    let (parts, ()) = req.into_parts();
    let payload = narun_wire::bhttp::encode_request(&parts, &body);
    let client = connect(conn, "request").await?;
    let reply = match tokio::time::timeout(
        conn.timeout,
        client.request(args.service.clone(), payload.into()),
    )
    .await
    {
        Ok(Ok(m)) => m,
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            bail!(
                "no service is listening on {} (see `narunctl svc ls`)",
                args.service
            )
        }
        Ok(Err(e)) => bail!("request to {}: {e}", args.service),
        Err(_) => bail!(
            "request to {}: no answer within {:?}",
            args.service,
            conn.timeout
        ),
    };
    if let Some(h) = &reply.headers
        && let Some(err) = h.get(names::SERVICE_ERROR_HEADER)
    {
        let code = h
            .get(names::SERVICE_ERROR_CODE_HEADER)
            .map(|c| c.as_str().to_string())
            .unwrap_or_default();
        bail!(
            "service {} answered with error {code}: {}",
            args.service,
            err.as_str()
        );
    }
    let resp = narun_wire::bhttp::decode_response(&reply.payload).map_err(|e| {
        anyhow!(
            "the answer of {} is not a Binary HTTP response: {e}",
            args.service
        )
    })?;
    let mut out = std::io::stdout();
    writeln!(out, "{:?} {}", resp.version(), resp.status())?;
    for (k, v) in resp.headers() {
        writeln!(out, "{k}: {}", String::from_utf8_lossy(v.as_bytes()))?;
    }
    writeln!(out)?;
    out.write_all(resp.body())?;
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------- output

/// Print left-aligned columns separated by two spaces.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

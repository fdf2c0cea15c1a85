//! One invocation's NATS session: connecting (failing fast), the JetStream context, the
//! `--timeout` every operation is bounded by, opening the contract's buckets, and
//! reading the shared state several commands need (node heartbeats, stored specs).
//!
//! A leaf module: it knows [`ConnArgs`] and the wire contract, and no command. Bucket
//! creation and "does not exist" detection are `narun_wire::jetstream`'s; this module
//! only bounds them in time and words the errors the same way for every command.

use crate::cli::ConnArgs;
use anyhow::{Result, anyhow, bail};
use async_nats::jetstream::{self, kv, object_store};
use futures_util::{Stream, StreamExt};
use narun_spec::AppSpec;
use narun_wire::connect::NatsSettings;
use narun_wire::events::NodeState;
use narun_wire::jetstream::{APP_CONFIGS, KvBucket, NODE_STATES, ObjectBucket};
use narun_wire::names;
use std::future::Future;
use std::time::Duration;

/// A connected client, its JetStream context and the per-operation timeout.
pub struct Session {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// `--timeout`: how long each answer may take.
    pub timeout: Duration,
    /// `--stream-replicas`: replicas of a bucket created here (`None`: the cluster's default).
    pub replicas: Option<usize>,
}

impl Session {
    /// Connect and prove the server answers within `--timeout`; `what` names the
    /// connection (`narunctl-<what>-<pid>`, as the server's monitoring shows it).
    ///
    /// `NatsSettings::options` retries the initial connect forever (right for
    /// daemons); a CLI must fail fast instead, so we bound a `flush` (a PING/PONG
    /// round trip) and report an unreachable server in one line.
    pub async fn connect(conn: &ConnArgs, what: &str) -> Result<Session> {
        let settings = NatsSettings {
            url: conn.nats.clone(),
            creds: conn.creds.clone(),
            nkey_seed: conn.nkey.clone(),
            user: conn.user.clone(),
            password: conn.password.clone(),
            tls_ca: conn.tls_ca.clone(),
            tls_cert: conn.tls_cert.clone(),
            tls_key: conn.tls_key.clone(),
            inbox_prefix: None,
            stream_replicas: conn.stream_replicas,
        };
        let name = format!("narunctl-{what}-{}", std::process::id() % 10_000);
        // One parser for every server list (`narun_wire::connect::parse_server_list`): the
        // error names the entry that is wrong.
        let addrs = settings
            .server_addrs()
            .map_err(|e| anyhow!("{e} (from --nats, NATS_URL or the context's `nats`)"))?;
        check_readable(conn)?;
        let opts = settings.options(&name).await?;
        let shown = settings.url_without_userinfo();
        // The client retries its first connection in the background, so a server that
        // refuses (or a wrong password) would only show as the `--timeout` of the first
        // round trip. Its error event ends the wait at once instead: the first one
        // means every server of the list failed one round (`ConnectErrorKind` only, so
        // the cause is asked of the servers again in `why_unreachable`).
        let (failed_tx, mut failed) = tokio::sync::mpsc::unbounded_channel::<String>();
        let opts = opts.event_callback(move |event| {
            let failed_tx = failed_tx.clone();
            async move {
                if let async_nats::Event::ClientError(e) = event {
                    let _ = failed_tx.send(e.to_string());
                }
            }
        });
        let addrs_for_probe = addrs.clone();
        let client = opts
            .connect(addrs)
            .await
            .map_err(|e| anyhow!("cannot reach NATS at {shown}: {e}"))?;
        tokio::select! {
            res = tokio::time::timeout(conn.timeout, client.flush()) => match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("cannot reach NATS at {shown}: {e}"),
                Err(_) => bail!(
                    "cannot reach NATS at {shown} within {:?} (is nats-server running? set --nats, NATS_URL or `nats` in the context file)",
                    conn.timeout
                ),
            },
            Some(error) = failed.recv() => {
                bail!("{}", why_unreachable(&addrs_for_probe, &shown, &error).await)
            }
        }
        let mut js = jetstream::new(client.clone());
        js.set_timeout(conn.timeout);
        Ok(Session {
            client,
            js,
            timeout: conn.timeout,
            replicas: conn.stream_replicas,
        })
    }

    /// [`bounded`] by `--timeout`.
    pub async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T> {
        bounded(self.timeout, what, fut).await
    }

    /// Open the KV bucket; `None` if it does not exist.
    pub async fn open_kv(&self, bucket: &KvBucket) -> Result<Option<kv::Store>> {
        self.bounded(&opening_kv(bucket), bucket.open(&self.js))
            .await
    }

    /// Open the KV bucket, creating it if it does not exist (with `--stream-replicas`).
    pub async fn ensure_kv(&self, bucket: &KvBucket) -> Result<kv::Store> {
        self.bounded(
            &opening_kv(bucket),
            bucket.ensure_replicas(&self.js, self.replicas),
        )
        .await
    }

    /// Open the object store; `None` if it does not exist.
    pub async fn open_object_store(
        &self,
        bucket: &ObjectBucket,
    ) -> Result<Option<object_store::ObjectStore>> {
        self.bounded(&opening_object_store(bucket), bucket.open(&self.js))
            .await
    }

    /// Open the object store, creating it if it does not exist (with `--stream-replicas`).
    pub async fn ensure_object_store(
        &self,
        bucket: &ObjectBucket,
    ) -> Result<object_store::ObjectStore> {
        self.bounded(
            &opening_object_store(bucket),
            bucket.ensure_replicas(&self.js, self.replicas),
        )
        .await
    }

    /// The keys of a bucket that hold a value.
    pub async fn kv_keys(&self, store: &kv::Store) -> Result<Vec<String>> {
        let bucket = store.name.clone();
        self.bounded(&format!("listing keys of {bucket}"), async {
            let mut keys = store.keys().await?;
            let mut out = Vec::new();
            while let Some(k) = keys.next().await {
                out.push(k?);
            }
            Ok::<_, async_nats::Error>(out)
        })
        .await
    }

    /// Every `(key, value)` of a bucket whose value is present.
    pub async fn kv_entries(&self, store: &kv::Store) -> Result<Vec<(String, bytes::Bytes)>> {
        let bucket = store.name.clone();
        let keys = self.kv_keys(store).await?;
        let mut out = Vec::new();
        for k in keys {
            let v = self
                .bounded(&format!("reading {bucket}/{k}"), store.get(&k))
                .await?;
            if let Some(v) = v {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    /// The heartbeats in `node-runner-states`, by node id (none if the bucket does not
    /// exist); a value that does not parse is a warning on stderr.
    pub async fn node_states(&self) -> Result<Vec<NodeState>> {
        let Some(store) = self.open_kv(&NODE_STATES).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (key, value) in self.kv_entries(&store).await? {
            match serde_json::from_slice::<NodeState>(&value) {
                Ok(s) => out.push(s),
                Err(e) => eprintln!("warning: node state {key} is not valid JSON: {e}"),
            }
        }
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(out)
    }

    /// Every stored spec in `app-configs` by key, or why it does not parse (none if the
    /// bucket does not exist).
    pub async fn load_specs(&self) -> Result<Vec<(String, Result<AppSpec, String>)>> {
        let Some(store) = self.open_kv(&APP_CONFIGS).await? else {
            return Ok(Vec::new());
        };
        Ok(self
            .kv_entries(&store)
            .await?
            .into_iter()
            .map(|(k, v)| {
                let spec = AppSpec::from_kv_bytes(&v).map_err(|e| e.to_string());
                (k, spec)
            })
            .collect())
    }
}

/// The files of the connection flags can be read; a permission problem says whose file it
/// is and who narunctl runs as ([`crate::hint::read_error`]), before async-nats words it
/// more vaguely.
fn check_readable(conn: &ConnArgs) -> Result<()> {
    for (what, path) in [
        ("the --creds file", &conn.creds),
        ("the --nkey seed file", &conn.nkey),
        ("the --tls-ca file", &conn.tls_ca),
        ("the --tls-cert file", &conn.tls_cert),
        ("the --tls-key file", &conn.tls_key),
    ] {
        let Some(path) = path else { continue };
        if let Err(e) = std::fs::File::open(path) {
            bail!("{}", crate::hint::read_error(what, path, &e));
        }
    }
    Ok(())
}

/// How long the TCP probe of [`why_unreachable`] waits for each server.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The error line for a first connection that failed with the client's `error` (e.g.
/// `client error: IO error`): when every server refuses TCP or does not resolve, their
/// causes (one TCP connection to each, at most [`PROBE_TIMEOUT`], in parallel);
/// otherwise the client's error with a hint for its kind.
async fn why_unreachable(addrs: &[async_nats::ServerAddr], shown: &str, error: &str) -> String {
    let probes = addrs.iter().map(|a| async move {
        let target = (a.host().to_string(), a.port());
        match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(target)).await {
            Ok(Ok(_)) | Err(_) => None,
            Ok(Err(e)) => Some(format!("{}:{}: {e}", a.host(), a.port())),
        }
    });
    let failures = futures_util::future::join_all(probes).await;
    let detail = error.strip_prefix("client error: ").unwrap_or(error);
    if !failures.is_empty() && failures.iter().all(Option::is_some) {
        let why: Vec<String> = failures.into_iter().flatten().collect();
        return format!(
            "cannot reach NATS at {shown}: {} (is nats-server running there? set --nats, NATS_URL or `nats` in the context file)",
            why.join("; ")
        );
    }
    let detail = detail.strip_prefix("nats: ").unwrap_or(detail);
    let hint = if detail.contains("authorization violation") {
        "check --nats-user/--password, --creds or --nkey (or the context file)"
    } else if detail.contains("TLS") {
        "check --tls-ca, --tls-cert and --tls-key, and the URL's scheme"
    } else {
        "is it a NATS server? set --nats, NATS_URL or `nats` in the context file"
    };
    format!("cannot connect to NATS at {shown}: {detail} ({hint})")
}

fn opening_kv(bucket: &KvBucket) -> String {
    format!("opening KV bucket {}", bucket.name)
}

fn opening_object_store(bucket: &ObjectBucket) -> String {
    format!("opening object store {}", bucket.name)
}

/// Await `fut` at most `timeout`; `what` names the operation in the error.
pub async fn bounded<T, E: std::fmt::Display>(
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

/// Every item of `stream`, waiting at most `timeout` for each; `what` names the listing
/// in the error.
pub async fn collect_each<T, E: std::fmt::Display>(
    stream: impl Stream<Item = Result<T, E>>,
    timeout: Duration,
    what: &str,
) -> Result<Vec<T>> {
    let mut stream = std::pin::pin!(stream);
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(timeout, stream.next()).await {
            Ok(Some(item)) => out.push(item.map_err(|e| anyhow!("{what}: {e}"))?),
            Ok(None) => return Ok(out),
            Err(_) => bail!("{what}: no answer within {timeout:?}"),
        }
    }
}

/// Why a request to one node's control subject brought no usable answer.
#[derive(Debug)]
pub enum NodeAskError {
    /// Nobody listens on the subject (node offline, or a narund without that verb).
    NoResponders,
    /// No answer within the timeout.
    TimedOut,
    /// An answer that is not the expected JSON.
    Unreadable(String),
    /// Any other NATS failure.
    Other(String),
}

/// Send `body` to `subject` (one node's `narun.control.<node>.<verb>`) and read its JSON
/// answer, waiting at most `timeout`. Each verb words the failures for its operator.
pub async fn ask_node<R: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    body: bytes::Bytes,
    timeout: Duration,
) -> Result<R, NodeAskError> {
    let req = async_nats::Request::new()
        .payload(body)
        .timeout(Some(timeout));
    match client.send_request(subject, req).await {
        Ok(msg) => serde_json::from_slice(&msg.payload)
            .map_err(|e| NodeAskError::Unreadable(e.to_string())),
        Err(e) => Err(match e.kind() {
            async_nats::RequestErrorKind::NoResponders => NodeAskError::NoResponders,
            async_nats::RequestErrorKind::TimedOut => NodeAskError::TimedOut,
            _ => NodeAskError::Other(e.to_string()),
        }),
    }
}

/// Whether a heartbeat is recent enough for its node to count as online (the bucket's
/// TTL: a node silent for longer is offline).
pub fn heartbeat_fresh(state: &NodeState) -> bool {
    crate::output::age(&state.last_seen).is_some_and(|a| a.as_secs() <= names::NODE_STATE_TTL_SECS)
}

/// The status a node reports, or `offline` once its heartbeat is stale.
pub fn node_status(state: &NodeState) -> String {
    if heartbeat_fresh(state) {
        state.status.to_string()
    } else {
        "offline".into()
    }
}

/// Instance IDs of `app` a node reports (detailed list when present, else
/// Go's `managed_instances` named `<app>-<n>`).
pub fn node_instances(state: &NodeState, app: &str) -> Vec<String> {
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

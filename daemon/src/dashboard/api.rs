//! The JSON the dashboard page reads, and its actions: the same buckets, subjects and
//! requests `narunctl` uses (`node-runner-states`, `app-configs`, `narun-releases`,
//! `$SRV.STATS`, `narun.control.<node>.restart`), each NATS call bounded by [`TIMEOUT`].
//!
//! No secret value ever leaves here: the specs shown have every `env` value replaced by
//! [`HIDDEN`] (a `valueFromSecret` names a key of `narun-secrets`, never its value; a plain
//! `value` may be a credential as well).

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use http::StatusCode;
use narun_spec::AppSpec;
use narun_wire::events::RestartRequest;
use narun_wire::jetstream::{APP_CONFIGS, APP_RELEASES, NODE_STATES};
use narun_wire::names;
use serde_json::{Value, json};
use std::future::Future;
use std::time::Duration;

/// Bound of each NATS call of a request.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long `$SRV.STATS` answers are gathered.
pub const GATHER: Duration = Duration::from_millis(500);
/// How long a restart may take on a node.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(30);
/// What an env value is shown as.
pub const HIDDEN: &str = "(hidden)";

/// A failed request: the status and the message the page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

pub type ApiResult = Result<Value, ApiError>;

pub fn err(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    err(StatusCode::SERVICE_UNAVAILABLE, format!("{what}: {e}"))
}

async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(unavailable(what, format!("no answer within {TIMEOUT:?}"))),
    }
}

/// An app name usable in a subject and a KV key (letters, digits, `-`, `_`; ≤ 64).
pub fn app_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Every value of a KV bucket (none when the bucket does not exist).
async fn entries(
    js: &jetstream::Context,
    bucket: &narun_wire::jetstream::KvBucket,
) -> Result<Vec<(String, bytes::Bytes)>, ApiError> {
    let what = format!("reading {}", bucket.name);
    let Some(store) = bounded(&what, bucket.open(js)).await? else {
        return Ok(Vec::new());
    };
    let keys: Vec<String> = bounded(&what, async {
        let mut keys = store.keys().await?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            out.push(k?);
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(out)
    })
    .await?;
    let mut out = Vec::new();
    for k in keys {
        if let Some(v) = bounded(&what, store.get(&k)).await? {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// Every value of a KV bucket that is JSON, by key.
pub(crate) async fn json_entries(
    js: &jetstream::Context,
    bucket: &narun_wire::jetstream::KvBucket,
) -> Result<Vec<(String, Value)>, ApiError> {
    Ok(entries(js, bucket)
        .await?
        .into_iter()
        .filter_map(|(k, v)| Some((k, serde_json::from_slice(&v).ok()?)))
        .collect())
}

/// The heartbeats as stored (the page counts their instances; nothing in them is secret).
async fn node_states(js: &jetstream::Context) -> Result<Vec<Value>, ApiError> {
    Ok(json_entries(js, &NODE_STATES)
        .await?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// Now, Unix milliseconds: the page measures heartbeat ages against narund's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What every view starts with: narund's clock, the heartbeat TTL and the heartbeats.
fn frame(states: Vec<Value>) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("now".into(), now_ms().into());
    m.insert("ttl_sec".into(), names::NODE_STATE_TTL_SECS.into());
    m.insert("nodes".into(), Value::Array(states));
    m
}

/// `GET api/nodes`.
pub async fn nodes(js: &jetstream::Context) -> ApiResult {
    Ok(Value::Object(frame(node_states(js).await?)))
}

/// The spec as JSON, every env value hidden.
pub fn redacted(spec: &AppSpec) -> Value {
    let mut v: Value = serde_json::from_slice(&spec.to_kv_json()).unwrap_or(Value::Null);
    if let Some(env) = v.get_mut("env").and_then(Value::as_array_mut) {
        for e in env {
            if let Some(o) = e.as_object_mut() {
                for key in ["value", "valueFromSecret", "value_from_secret"] {
                    if o.contains_key(key) {
                        o.insert(key.into(), Value::String(HIDDEN.into()));
                    }
                }
            }
        }
    }
    v
}

/// Per node id: the replicas `spec` asks of it ([`AppSpec::desired_replicas`], the rule
/// narund applies), for the nodes that have a heartbeat.
fn desired(spec: &AppSpec, states: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    for s in states {
        let Some(id) = s["node_id"].as_str() else {
            continue;
        };
        let labels = s["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let n = spec.desired_replicas(id, &labels);
        if n > 0 {
            out.insert(id.to_owned(), n.into());
        }
    }
    Value::Object(out)
}

/// The spec entry of `name`: redacted spec and desired replicas, or why it is unusable.
fn app_entry(name: &str, bytes: &[u8], states: &[Value]) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("name".into(), name.into());
    match AppSpec::from_kv_bytes(bytes) {
        Ok(spec) => {
            m.insert("spec".into(), redacted(&spec));
            m.insert("desired".into(), desired(&spec, states));
        }
        Err(e) => {
            m.insert("error".into(), format!("spec cannot be parsed: {e}").into());
        }
    }
    Value::Object(m)
}

/// `GET api/apps`.
pub async fn apps(js: &jetstream::Context) -> ApiResult {
    let states = node_states(js).await?;
    let apps: Vec<Value> = entries(js, &APP_CONFIGS)
        .await?
        .iter()
        .map(|(k, v)| app_entry(k, v, &states))
        .collect();
    let mut m = frame(states);
    m.insert("apps".into(), Value::Array(apps));
    Ok(Value::Object(m))
}

async fn stored(js: &jetstream::Context, name: &str) -> Result<(kv::Store, kv::Entry), ApiError> {
    let what = format!("reading app-configs/{name}");
    let store = bounded(&what, APP_CONFIGS.open(js))
        .await?
        .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("app {name} not found")))?;
    let entry = bounded(&what, store.entry(name))
        .await?
        .filter(|e| e.operation == kv::Operation::Put)
        .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("app {name} not found")))?;
    Ok((store, entry))
}

fn parse(name: &str, entry: &kv::Entry) -> Result<AppSpec, ApiError> {
    AppSpec::from_kv_bytes(&entry.value).map_err(|e| {
        err(
            StatusCode::CONFLICT,
            format!("the stored spec of {name} cannot be parsed: {e}"),
        )
    })
}

/// The remembered good releases of `name` (`narun-releases`, newest first; none when
/// the bucket or key does not exist).
async fn releases(js: &jetstream::Context, name: &str) -> Result<Vec<Value>, ApiError> {
    let what = format!("reading narun-releases/{name}");
    let Some(store) = bounded(&what, APP_RELEASES.open(js)).await? else {
        return Ok(Vec::new());
    };
    let v: Value = match bounded(&what, store.get(name)).await? {
        Some(v) => serde_json::from_slice(&v).unwrap_or_default(),
        None => Value::Null,
    };
    Ok(match v {
        Value::Object(mut m) => match m.remove("releases") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    })
}

/// `GET api/apps/<name>`.
pub async fn app(js: &jetstream::Context, name: &str) -> ApiResult {
    let (_, entry) = stored(js, name).await?;
    let states = node_states(js).await?;
    let Value::Object(mut app) = app_entry(name, &entry.value, &states) else {
        unreachable!("app_entry makes an object")
    };
    // Tags and times only: a remembered spec holds env values.
    let history: Vec<Value> = releases(js, name)
        .await?
        .iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            m.insert("tag".into(), r["tag"].clone());
            m.insert("time".into(), r["time"].clone());
            Value::Object(m)
        })
        .collect();
    app.insert("revision".into(), entry.revision.into());
    app.insert("releases".into(), Value::Array(history));
    let mut m = frame(states);
    m.insert("app".into(), Value::Object(app));
    Ok(Value::Object(m))
}

/// `GET api/services`: the `$SRV.STATS` answers gathered for [`GATHER`].
pub async fn services(client: &async_nats::Client) -> ApiResult {
    let inbox = client.new_inbox();
    let mut sub = bounded("subscribing", client.subscribe(inbox.clone())).await?;
    bounded(
        "asking $SRV.STATS",
        client.publish_with_reply("$SRV.STATS", inbox, bytes::Bytes::new()),
    )
    .await?;
    let mut out: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + GATHER;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if let Ok(s @ Value::Object(_)) = serde_json::from_slice::<Value>(&m.payload) {
            out.push(s);
        }
        if out.len() >= 1000 {
            break;
        }
    }
    Ok(Value::Array(out))
}

/// Write `spec` at `revision` (compare-and-set, like narunctl).
async fn write(store: &kv::Store, spec: &AppSpec, revision: u64) -> Result<u64, ApiError> {
    let name = spec.name.as_str();
    spec.validate().map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            format!("the new spec of {name} is not valid (nothing was written): {e}"),
        )
    })?;
    match tokio::time::timeout(
        TIMEOUT,
        store.update(name, spec.to_kv_json().into(), revision),
    )
    .await
    {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(err(
            StatusCode::CONFLICT,
            format!("the spec of {name} changed meanwhile; nothing was written, reload and retry"),
        )),
        Ok(Err(e)) => Err(unavailable(&format!("writing the spec of {name}"), e)),
        Err(_) => Err(unavailable(
            &format!("writing the spec of {name}"),
            "no answer",
        )),
    }
}

/// `POST api/apps/<name>/scale` `{"replicas": N, "node": "optional node id"}`.
pub async fn scale(js: &jetstream::Context, name: &str, body: &Value) -> ApiResult {
    let replicas = body["replicas"]
        .as_i64()
        .filter(|r| (0..=1000).contains(r))
        .ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                "replicas: a whole number 0-1000 is required",
            )
        })?;
    let node = match &body["node"] {
        Value::Null => None,
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => return Err(err(StatusCode::BAD_REQUEST, "node: must be a node id")),
    };
    let (store, entry) = stored(js, name).await?;
    let mut spec = parse(name, &entry)?;
    let index = match &node {
        Some(n) => spec.nodes.iter().position(|s| s.name.as_deref() == Some(n)),
        None if spec.nodes.len() == 1 => Some(0),
        None => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!(
                    "{name} has {} node selectors: say which node",
                    spec.nodes.len()
                ),
            ));
        }
    };
    let index = match (index, node) {
        (Some(i), _) => i,
        (None, Some(n)) => {
            spec.nodes.push(narun_spec::NodeSelector::by_name(n, 0));
            spec.nodes.len() - 1
        }
        (None, None) => unreachable!("one selector: index 0"),
    };
    let before = spec.nodes[index].replicas;
    spec.nodes[index].replicas = replicas;
    let revision = write(&store, &spec, entry.revision).await?;
    Ok(
        json!({"message": format!("scaled {name}: {before} → {replicas} replica(s)"), "revision": revision}),
    )
}

/// `POST api/apps/<name>/rollback`: the newest remembered good release with another tag
/// (the current node selectors stay), like `narunctl apps rollback`.
pub async fn rollback(js: &jetstream::Context, name: &str) -> ApiResult {
    let (store, entry) = stored(js, name).await?;
    let current = parse(name, &entry)?;
    let rel = releases(js, name).await?;
    let Some(r) = rel
        .iter()
        .find(|r| r["tag"].as_str().is_some_and(|t| t != current.tag))
    else {
        return Err(err(
            StatusCode::CONFLICT,
            format!("no earlier good release of {name} is remembered (narun-releases)"),
        ));
    };
    let bytes = serde_json::to_vec(&r["spec"]).unwrap_or_default();
    let mut target = AppSpec::from_kv_bytes(&bytes).map_err(|e| {
        err(
            StatusCode::CONFLICT,
            format!(
                "the remembered spec of {name}:{} cannot be parsed: {e}",
                r["tag"]
            ),
        )
    })?;
    target.nodes = current.nodes.clone();
    let revision = write(&store, &target, entry.revision).await?;
    Ok(
        json!({"message": format!("rolled back {name}: {} → {}", current.tag, target.tag), "revision": revision}),
    )
}

/// `POST api/apps/<name>/delete` `{"confirm": "<name>"}`.
pub async fn delete(js: &jetstream::Context, name: &str, body: &Value) -> ApiResult {
    if body["confirm"].as_str() != Some(name) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("confirm: type the app's name ({name}) to delete it"),
        ));
    }
    let (store, _) = stored(js, name).await?;
    bounded(&format!("deleting app-configs/{name}"), store.delete(name)).await?;
    Ok(json!({"message": format!("deleted app {name}: its instances stop on every node")}))
}

/// `POST api/apps/<name>/restart`: ask every node that runs the app (`narunctl apps restart`).
pub async fn restart(
    client: &async_nats::Client,
    js: &jetstream::Context,
    name: &str,
) -> ApiResult {
    stored(js, name).await?;
    let nodes: Vec<String> = node_states(js)
        .await?
        .iter()
        .filter(|s| {
            s["instances"]
                .as_array()
                .is_some_and(|i| i.iter().any(|i| i["app_name"] == name))
        })
        .filter_map(|s| s["node_id"].as_str().map(str::to_owned))
        .collect();
    if nodes.is_empty() {
        return Err(err(StatusCode::CONFLICT, format!("no node runs {name}")));
    }
    let body: bytes::Bytes = serde_json::to_vec(&RestartRequest {
        app: name.to_string(),
        instance: String::new(),
    })
    .unwrap_or_default()
    .into();
    let asks = nodes.iter().map(|node| {
        let subject = names::control_subject(node, names::CONTROL_RESTART);
        let body = body.clone();
        async move {
            let r = tokio::time::timeout(RESTART_TIMEOUT, client.request(subject, body)).await;
            match r {
                Ok(Ok(m)) => match serde_json::from_slice::<Value>(&m.payload) {
                    Ok(r) if r["error"].as_str().is_none_or(str::is_empty) => {
                        json!({"node_id": node, "restarted": r["restarted"]})
                    }
                    Ok(r) => json!({"node_id": node, "error": r["error"]}),
                    Err(e) => json!({"node_id": node, "error": format!("unreadable answer: {e}")}),
                },
                Ok(Err(e)) => json!({"node_id": node, "error": e.to_string()}),
                Err(_) => json!({"node_id": node, "error": format!("no answer within {RESTART_TIMEOUT:?}")}),
            }
        }
    });
    let replies = futures_util::future::join_all(asks).await;
    let failed = replies.iter().filter(|r| r.get("error").is_some()).count();
    Ok(json!({
        "message": format!("restart of {name}: {} node(s) ok, {failed} failed", replies.len() - failed),
        "nodes": replies,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_become_subject_wildcards_are_refused() {
        for ok in ["hello", "web-1", "a_b"] {
            assert!(app_name_ok(ok), "{ok}");
        }
        for bad in ["", "a.b", "*", ">", "a b", "../x", &"x".repeat(65)] {
            assert!(!app_name_ok(bad), "{bad}");
        }
    }

    #[test]
    fn env_values_are_hidden() {
        let spec = AppSpec::from_kv_bytes(
            br#"{"name":"web","tag":"v1","nodes":[{"name":"n1","replicas":1}],
                 "env":[{"name":"PASSWORD","value":"hunter2"},{"name":"TOKEN","valueFromSecret":"web-token"}]}"#,
        )
        .unwrap();
        let shown = redacted(&spec).to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("web-token"), "{shown}");
        assert!(
            shown.contains("PASSWORD") && shown.contains(HIDDEN),
            "{shown}"
        );
    }
}

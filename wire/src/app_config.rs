//! App configuration in KV (`narun::config`, `narunctl config get|set|edit`): the bucket,
//! the key of an app, what a value may be, and what an app's NATS user needs to read its
//! own configuration and nothing else.
//!
//! * Bucket [`BUCKET`] (`narun-config`), created by narunctl on the first `config set`; key
//!   = the app's name (spec `name`, `NARUN_APP_NAME`); value = one JSON object, at most
//!   [`MAX_BYTES`] (narunctl converts TOML to JSON before writing, so apps parse JSON only).
//! * The bucket **republishes** every value written (and every deletion marker) to
//!   [`change_subject`] `narun.cfg.<app>` ([`republish`]: `$KV.narun-config.>` →
//!   `narun.cfg.>`, whole messages with the `Nats-Sequence` and `KV-Operation` headers). It is
//!   created in one place, [`ensure`], which also adds the republish to a bucket created
//!   without it (narunctl `config set|edit`; narund at start, [`upgrade`]). nats-server
//!   < 2.10 refuses to add a republish to an existing stream
//!   ([`RepublishState::Refused`]): apps then see changes only when `narun::config` reads
//!   its key again (every 30 s, and after each reconnect).
//! * An app (`narun::config`) subscribes to [`change_subject`] of its key, then reads the
//!   current value with a JetStream **direct get** of its own key
//!   ([`direct_get_subject`]: `$JS.API.DIRECT.GET.KV_narun-config.$KV.narun-config.<app>`,
//!   empty body, the answer to its inbox), and applies the republished values newer than
//!   the one it has. It creates no consumer: a push consumer's `deliver_subject` is not
//!   checked against its creator's publish permissions by nats-server (issue #8274), so a
//!   user allowed to create one could make the server publish to any subject.
//! * What an app's NATS user needs ([`read_permissions`], [`subscribe_permissions`]):
//!   publish to the direct get subject of its own key, subscribe to its own change
//!   subject; nothing else in `narun-config`, and no `$JS.API.CONSUMER.CREATE…`.
//!   (Publishing to `narun.cfg.>` must stay the stream's: do not give users that.)

use crate::jetstream::{JetStreamError, KvBucket};
use async_nats::jetstream::{self, kv, stream::Republish};

/// The KV bucket of app configurations.
pub const BUCKET: &str = "narun-config";

/// The bucket's settings: a few revisions kept per app (for looking back), no expiry.
pub const KV: KvBucket = KvBucket {
    name: BUCKET,
    description: "narun app configuration (narun::config), key = app name",
    history: 5,
    max_age: None,
};

/// The largest configuration value (JSON bytes).
pub const MAX_BYTES: usize = 256 * 1024;

/// The name of the bucket's stream.
pub fn stream() -> String {
    KV.stream_name()
}

/// The subject of app `app`'s key in the stream: `$KV.narun-config.<app>`.
pub fn subject(app: &str) -> String {
    format!("$KV.{BUCKET}.{app}")
}

/// Where the bucket republishes its values: `narun.cfg.<app>` for key `<app>`.
pub const CHANGE_PREFIX: &str = "narun.cfg";

/// The subject a change of `app`'s configuration is republished to: `narun.cfg.<app>`.
pub fn change_subject(app: &str) -> String {
    format!("{CHANGE_PREFIX}.{app}")
}

/// The JetStream API subject of a direct get of `app`'s current value (the last message of
/// its key): `$JS.API.DIRECT.GET.KV_narun-config.$KV.narun-config.<app>`, empty body.
pub fn direct_get_subject(app: &str) -> String {
    format!("$JS.API.DIRECT.GET.{}.{}", stream(), subject(app))
}

/// The bucket's republish: every message of `$KV.narun-config.<app>` to
/// `narun.cfg.<app>`, headers and body.
pub fn republish() -> Republish {
    Republish {
        source: format!("$KV.{BUCKET}.>"),
        destination: format!("{CHANGE_PREFIX}.>"),
        headers_only: false,
    }
}

/// The bucket's backing stream as created: [`KV`]'s settings, direct get allowed, and the
/// [`republish`].
pub fn stream_config(replicas: usize) -> jetstream::stream::Config {
    let mut config = crate::jetstream::kv_stream_config(
        KV.name,
        KV.description,
        KV.history,
        KV.max_age,
        replicas,
    );
    config.republish = Some(republish());
    config
}

/// Whether the bucket republishes its changes (what [`ensure`] and [`upgrade`] found or did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepublishState {
    /// It did already (or was just created with it).
    Present,
    /// It did not; the republish was added.
    Added,
    /// It does not and the server refused to add it (nats-server < 2.10 cannot change a
    /// stream's republish): apps see changes only at their periodic re-read
    /// (`narun::config`, every 30 s). The server's answer.
    Refused(String),
    /// There is no bucket ([`upgrade`] only).
    NoBucket,
}

/// Open the bucket, creating it (with `replicas`, `None`: the default) when it does not
/// exist, and add the [`republish`] (and direct get) to a bucket that lacks them (made by
/// an older narunctl): the one place the bucket is created (narunctl `config set|edit`).
pub async fn ensure(
    js: &jetstream::Context,
    replicas: Option<usize>,
) -> Result<(kv::Store, RepublishState), JetStreamError> {
    let replicas = crate::jetstream::replicas_or_default(js, replicas);
    let store = crate::jetstream::ensure_kv_stream(js, BUCKET, stream_config(replicas)).await?;
    with_republish(js, store).await
}

/// Add the [`republish`] (and direct get) to the bucket when it exists and lacks them
/// (narund at start, so the apps of a cluster whose bucket an older narunctl made follow
/// their changes at once).
pub async fn upgrade(js: &jetstream::Context) -> Result<RepublishState, JetStreamError> {
    match crate::jetstream::open_kv(js, BUCKET).await? {
        Some(store) => with_republish(js, store).await.map(|(_, state)| state),
        None => Ok(RepublishState::NoBucket),
    }
}

async fn with_republish(
    js: &jetstream::Context,
    store: kv::Store,
) -> Result<(kv::Store, RepublishState), JetStreamError> {
    let config = &store.stream.cached_info().config;
    if config.republish.as_ref() == Some(&republish()) && config.allow_direct {
        return Ok((store, RepublishState::Present));
    }
    let mut config = config.clone();
    config.republish = Some(republish());
    config.allow_direct = true;
    if let Err(e) = js.update_stream(config).await {
        return match e.kind() {
            // The server's answer: it will not (an older nats-server).
            jetstream::context::CreateStreamErrorKind::JetStream(_) => {
                Ok((store, RepublishState::Refused(e.to_string())))
            }
            _ => Err(JetStreamError::Create {
                what: "KV bucket",
                bucket: BUCKET.into(),
                message: format!("adding the republish to {CHANGE_PREFIX}.>: {e}"),
            }),
        };
    }
    let store = crate::jetstream::open_kv(js, BUCKET)
        .await?
        .ok_or_else(|| JetStreamError::Open {
            what: "KV bucket",
            bucket: BUCKET.into(),
            message: "deleted while being updated".into(),
        })?;
    Ok((store, RepublishState::Added))
}

/// What app `app`'s NATS user must be allowed to publish to for `narun::config`: the
/// direct get of its own key (the answer comes to its inbox). No consumer creation.
pub fn read_permissions(app: &str) -> Vec<String> {
    vec![direct_get_subject(app)]
}

/// What app `app`'s NATS user must be allowed to subscribe to for `narun::config`: the
/// changes of its own key.
pub fn subscribe_permissions(app: &str) -> Vec<String> {
    vec![change_subject(app)]
}

/// `None` when `app` can be a configuration key (an app name: 1 to 256 of `A-Z a-z 0-9 - _`,
/// nothing that is a subject wildcard or separator), else what is wrong.
pub fn key_problem(app: &str) -> Option<String> {
    if app.is_empty() || app.len() > 256 {
        return Some(format!("app name {app:?}: 1 to 256 characters"));
    }
    app.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        .map(|c| format!("app name {app:?}: {c:?} is not allowed (letters, digits, '-' and '_')"))
}

/// Check a configuration value: one JSON object of at most [`MAX_BYTES`]. Returns it parsed.
pub fn check_value(bytes: &[u8]) -> Result<serde_json::Value, String> {
    if bytes.len() > MAX_BYTES {
        return Err(format!(
            "the configuration has {} bytes, more than the {MAX_BYTES} accepted",
            bytes.len()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err(format!(
            "the configuration must be a JSON object (a TOML table), not {}",
            kind(&v)
        ));
    }
    Ok(v)
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_the_key() {
        assert_eq!(subject("web"), "$KV.narun-config.web");
        assert_eq!(change_subject("web"), "narun.cfg.web");
        assert_eq!(
            read_permissions("web"),
            ["$JS.API.DIRECT.GET.KV_narun-config.$KV.narun-config.web"]
        );
        assert_eq!(subscribe_permissions("web"), ["narun.cfg.web"]);
        // The republish maps each key to its change subject (same wildcard both sides).
        let r = republish();
        assert_eq!(
            (r.source.as_str(), r.destination.as_str()),
            ("$KV.narun-config.>", "narun.cfg.>")
        );
        assert!(!r.headers_only);
        let c = stream_config(1);
        assert_eq!(c.name, "KV_narun-config");
        assert!(c.allow_direct);
        assert_eq!(c.republish, Some(r));
        assert!(
            !read_permissions("web")
                .iter()
                .any(|p| p.contains("CONSUMER") || p.contains("$JS.FC"))
        );
    }

    #[test]
    fn keys_are_app_names_without_wildcards() {
        assert_eq!(key_problem("web-1_a"), None);
        for bad in ["", "a.b", "a*", ">", "a b", "ä", &"x".repeat(257)] {
            assert!(key_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn values_are_json_objects_of_bounded_size() {
        assert!(check_value(br#"{"a": 1}"#).is_ok());
        assert!(check_value(b"[1]").unwrap_err().contains("not an array"));
        assert!(check_value(b"{").unwrap_err().contains("not valid JSON"));
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_BYTES));
        assert!(
            check_value(big.as_bytes())
                .unwrap_err()
                .contains("more than")
        );
    }
}

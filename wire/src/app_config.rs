//! App configuration in KV (`narun::config`, `narunctl config get|set|edit`): the bucket,
//! the key of an app, what a value may be, and what an app's NATS user needs to read its
//! own configuration and nothing else.
//!
//! * Bucket [`BUCKET`] (`narun-config`), created by narunctl on the first `config set`; key
//!   = the app's name (spec `name`, `NARUN_APP_NAME`); value = one JSON object, at most
//!   [`MAX_BYTES`] (narunctl converts TOML to JSON before writing, so apps parse JSON only).
//! * An app reads its key through a JetStream **ordered push consumer** whose API subject
//!   names the key: `$JS.API.CONSUMER.CREATE.KV_narun-config.<consumer>.$KV.narun-config.<app>`
//!   ([`consumer_create_subject`]). nats-server refuses a create whose configured filter
//!   differs from the one in the subject, so a permission on that subject with the app's
//!   key ([`read_permissions`]) lets an app watch its own key and no other. The consumer
//!   first delivers the current value (deliver policy last-per-subject), then every change.
//!   async-nats' own `Store::watch` creates unnamed consumers (`$JS.API.CONSUMER.CREATE.<stream>`,
//!   no key in the subject), which such a user may not do.

use crate::jetstream::KvBucket;

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

/// The JetStream API subject that creates consumer `consumer` watching `app`'s key.
pub fn consumer_create_subject(consumer: &str, app: &str) -> String {
    format!(
        "$JS.API.CONSUMER.CREATE.{}.{consumer}.{}",
        stream(),
        subject(app)
    )
}

/// What app `app`'s NATS user must be allowed to publish to for `narun::config`: creating
/// a consumer of its own key (any consumer name), and answering that consumer's flow
/// control. Its deliveries come to the app's own inboxes.
pub fn read_permissions(app: &str) -> Vec<String> {
    vec![
        consumer_create_subject("*", app),
        format!("$JS.FC.{}.>", stream()),
    ]
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
        assert_eq!(
            consumer_create_subject("c1", "web"),
            "$JS.API.CONSUMER.CREATE.KV_narun-config.c1.$KV.narun-config.web"
        );
        assert_eq!(
            read_permissions("web"),
            [
                "$JS.API.CONSUMER.CREATE.KV_narun-config.*.$KV.narun-config.web",
                "$JS.FC.KV_narun-config.>"
            ]
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

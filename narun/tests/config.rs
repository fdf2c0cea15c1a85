//! `narun::config` against a real nats-server: the start (stored value, default, missing,
//! invalid), changes followed through the watch, rejected values and deletions keeping the
//! previous value, a bucket created after the app started, handles that share one watch.

use narun::{ConfigError, ConfigOptions};
use narun_test_support::{NatsServer, T};
use narun_wire::app_config;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Settings {
    greeting: String,
    #[serde(default)]
    limit: u32,
}

fn positive(s: &Settings) -> Result<(), String> {
    if s.limit == 0 {
        Err("limit must be > 0".into())
    } else {
        Ok(())
    }
}

fn opts() -> ConfigOptions<Settings> {
    ConfigOptions::new().app("web").validate(positive)
}

#[tokio::test]
async fn start_change_reject_delete() {
    let server = NatsServer::start();
    let nats = server.connect().await;
    let kv = app_config::KV
        .ensure(&async_nats::jetstream::new(nats.clone()))
        .await
        .unwrap();

    // Nothing stored, no default: an error naming the key and the command.
    let e = opts().watch(&nats).await.err().unwrap();
    assert!(matches!(e, ConfigError::Missing { .. }), "{e}");
    assert!(
        e.to_string().contains("narunctl config set web FILE"),
        "{e}"
    );
    // An invalid stored value and no default: an error with the reason.
    kv.put("web", r#"{"greeting": "hi", "limit": 0}"#.into())
        .await
        .unwrap();
    let e = opts().watch(&nats).await.err().unwrap();
    assert!(
        e.to_string()
            .contains("(revision 1) is invalid: does not validate: limit must be > 0"),
        "{e}"
    );
    // ... with a default: the default.
    let dflt = Settings {
        greeting: "default".into(),
        limit: 1,
    };
    let c = opts()
        .default_value(dflt.clone())
        .watch(&nats)
        .await
        .unwrap();
    assert_eq!((*c.get()).clone(), dflt);
    assert_eq!(c.revision(), 0);

    kv.put("web", r#"{"greeting": "hello", "limit": 2}"#.into())
        .await
        .unwrap();
    let mut c = opts().watch(&nats).await.unwrap();
    assert_eq!(c.get().greeting, "hello");
    assert_eq!(c.revision(), 2);
    let mut other = c.clone();

    // A change arrives; a clone sees it too.
    kv.put("web", r#"{"greeting": "howdy", "limit": 3}"#.into())
        .await
        .unwrap();
    tokio::time::timeout(T, c.changed()).await.unwrap().unwrap();
    assert_eq!((c.get().greeting.as_str(), c.revision()), ("howdy", 3));
    tokio::time::timeout(T, other.changed())
        .await
        .unwrap()
        .unwrap();

    // Rejected (validation, type, not JSON) and deleted: the value stays; the next good
    // value is applied, so the watch went on.
    for bad in [
        r#"{"greeting": "x", "limit": 0}"#,
        r#"{"greeting": 5}"#,
        "not json",
    ] {
        kv.put("web", bad.into()).await.unwrap();
    }
    kv.delete("web").await.unwrap();
    kv.put("web", r#"{"greeting": "hey", "limit": 9}"#.into())
        .await
        .unwrap();
    tokio::time::timeout(T, c.changed()).await.unwrap().unwrap();
    assert_eq!((c.get().greeting.as_str(), c.revision()), ("hey", 8));
    assert_eq!(c.get().limit, 9);

    // Another app's key is another configuration.
    kv.put("api", r#"{"greeting": "api", "limit": 1}"#.into())
        .await
        .unwrap();
    let api = ConfigOptions::<Settings>::new()
        .app("api")
        .watch(&nats)
        .await
        .unwrap();
    assert_eq!(api.get().greeting, "api");
    assert_eq!(c.get().greeting, "hey");

    // Names that are not keys are refused before anything is asked.
    let e = ConfigOptions::<Settings>::new()
        .app("a.*")
        .watch(&nats)
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("is not allowed"), "{e}");
}

#[tokio::test]
async fn a_bucket_created_later_is_picked_up() {
    let server = NatsServer::start();
    let nats = server.connect().await;
    // No bucket, no default: missing.
    let e = opts().watch(&nats).await.err().unwrap();
    assert!(matches!(e, ConfigError::Missing { .. }), "{e}");
    // No bucket, a default: the default now, the stored value once there is one.
    let mut c = opts()
        .default_value(Settings {
            greeting: "default".into(),
            limit: 1,
        })
        .watch(&nats)
        .await
        .unwrap();
    assert_eq!(c.get().greeting, "default");
    let kv = app_config::KV
        .ensure(&async_nats::jetstream::new(nats.clone()))
        .await
        .unwrap();
    kv.put("web", r#"{"greeting": "late", "limit": 1}"#.into())
        .await
        .unwrap();
    // The library looks for the bucket every 5 s.
    tokio::time::timeout(T + Duration::from_secs(5), c.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.get().greeting, "late");
}

#[tokio::test]
async fn the_watch_survives_a_restart_of_the_server() {
    let server = NatsServer::start();
    let nats = server.connect().await;
    let kv = app_config::KV
        .ensure(&async_nats::jetstream::new(nats.clone()))
        .await
        .unwrap();
    kv.put("web", r#"{"greeting": "before", "limit": 1}"#.into())
        .await
        .unwrap();
    let mut c = opts().watch(&nats).await.unwrap();
    assert_eq!(c.get().greeting, "before");
    // SIGKILL and start again (same port, same store): the client reconnects, async-nats
    // recreates the ordered consumer (the old one died with the server).
    server.restart();
    // Written through a new connection, once JetStream is back (it recovers the stream
    // from the store after the restart).
    let admin = server.connect().await;
    narun_test_support::wait_for("the value written after the restart", T, || {
        let admin = admin.clone();
        async move {
            let js = async_nats::jetstream::new(admin);
            let kv = app_config::KV.open(&js).await.ok()??;
            kv.put("web", r#"{"greeting": "after", "limit": 1}"#.into())
                .await
                .ok()
        }
    })
    .await;
    tokio::time::timeout(T, c.changed())
        .await
        .expect("the change after the restart arrives")
        .unwrap();
    assert_eq!(c.get().greeting, "after");
}

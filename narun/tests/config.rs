//! `narun::config` against a real nats-server: the start (stored value, default, missing,
//! invalid), changes followed through the bucket's republish, rejected values and deletions
//! keeping the previous value, a bucket created after the app started, handles that share
//! one watch, an older bucket given its republish, changes written while the app was
//! disconnected.

use narun::{ConfigError, ConfigOptions};
use narun_test_support::{NatsServer, T};
use narun_wire::app_config;
use std::sync::Arc;
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
    let (kv, _) = app_config::ensure(&async_nats::jetstream::new(nats.clone()), None)
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
    let (kv, _) = app_config::ensure(&async_nats::jetstream::new(nats.clone()), None)
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
    let (kv, _) = app_config::ensure(&async_nats::jetstream::new(nats.clone()), None)
        .await
        .unwrap();
    kv.put("web", r#"{"greeting": "before", "limit": 1}"#.into())
        .await
        .unwrap();
    let mut c = opts().watch(&nats).await.unwrap();
    assert_eq!(c.get().greeting, "before");
    // SIGKILL and start again (same port, same store): the client reconnects and
    // async-nats subscribes to the change subject again.
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

/// The bucket `app_config::ensure` creates republishes every change, whole, on the key's
/// change subject, with its sequence; deletions with their `KV-Operation` header.
#[tokio::test]
async fn the_bucket_republishes_each_change() {
    let server = NatsServer::start();
    let nats = server.connect().await;
    let js = async_nats::jetstream::new(nats.clone());
    let (kv, state) = app_config::ensure(&js, None).await.unwrap();
    assert_eq!(state, app_config::RepublishState::Present);
    assert_eq!(
        kv.stream.cached_info().config.republish,
        Some(app_config::republish())
    );
    let mut raw = nats
        .subscribe(app_config::change_subject("web"))
        .await
        .unwrap();
    let mut all = nats
        .subscribe(format!("{}.>", app_config::CHANGE_PREFIX))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    kv.put("api", r#"{"a": 1}"#.into()).await.unwrap();
    kv.put("web", r#"{"greeting": "new", "limit": 1}"#.into())
        .await
        .unwrap();
    let m = next(&mut raw).await;
    let h = m.headers.unwrap();
    assert_eq!(h.get("Nats-Sequence").unwrap().as_str(), "2");
    assert_eq!(
        h.get("Nats-Subject").unwrap().as_str(),
        app_config::subject("web")
    );
    assert_eq!(&m.payload[..], br#"{"greeting": "new", "limit": 1}"#);
    // Each key on its own subject.
    assert_eq!(next(&mut all).await.subject.as_str(), "narun.cfg.api");
    assert_eq!(next(&mut all).await.subject.as_str(), "narun.cfg.web");
    kv.delete("web").await.unwrap();
    let m = next(&mut raw).await;
    assert_eq!(
        m.headers.unwrap().get("KV-Operation").unwrap().as_str(),
        "DEL"
    );
}

async fn next(s: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(T, futures_util::StreamExt::next(s))
        .await
        .expect("a republished message")
        .unwrap()
}

/// A bucket made without the republish (an older narunctl): the app still reads its value
/// (direct get); `app_config::ensure` (narunctl `config set`, narund at start) adds the
/// republish where the server allows it (nats-server 2.10 and newer), and changes arrive
/// at once; an older server refuses, and changes arrive at the library's periodic re-read.
#[tokio::test]
async fn an_older_bucket_gets_the_republish_or_the_periodic_read() {
    let server = NatsServer::start();
    let nats = server.connect().await;
    let js = async_nats::jetstream::new(nats.clone());
    let old = app_config::KV.ensure(&js).await.unwrap();
    assert_eq!(old.stream.cached_info().config.republish, None);
    old.put("web", r#"{"greeting": "old", "limit": 1}"#.into())
        .await
        .unwrap();
    let mut c = opts().watch(&nats).await.unwrap();
    assert_eq!((c.get().greeting.as_str(), c.revision()), ("old", 1));

    let version = nats.server_info().version;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let modern = (parts.next(), parts.next()) >= (Some(2), Some(10));
    let (kv, state) = app_config::ensure(&js, None).await.unwrap();
    let bound = if modern {
        assert_eq!(state, app_config::RepublishState::Added, "{version}");
        assert_eq!(
            app_config::upgrade(&js).await.unwrap(),
            app_config::RepublishState::Present
        );
        // Well within the periodic re-read: the republish delivered it.
        Duration::from_secs(10)
    } else {
        let app_config::RepublishState::Refused(why) = state else {
            panic!("{version}: {state:?}")
        };
        assert!(why.contains("RePublish"), "{why}");
        // The library reads its key again every 30 s.
        Duration::from_secs(30 + 10)
    };
    kv.put("web", r#"{"greeting": "new", "limit": 1}"#.into())
        .await
        .unwrap();
    tokio::time::timeout(bound, c.changed())
        .await
        .expect("the change arrives")
        .unwrap();
    assert_eq!((c.get().greeting.as_str(), c.revision()), ("new", 2));
}

/// A change written while the app's connection is down is not republished to it; the
/// library reads its key again after the reconnect.
#[tokio::test]
async fn a_change_written_while_disconnected_arrives_after_the_reconnect() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = NatsServer::start();
    let admin = server.connect().await;
    let (kv, _) = app_config::ensure(&async_nats::jetstream::new(admin.clone()), None)
        .await
        .unwrap();
    kv.put("web", r#"{"greeting": "before", "limit": 1}"#.into())
        .await
        .unwrap();
    // The app's client waits 6 s before each reconnect (not before its first connect).
    let slow = Arc::new(AtomicBool::new(false));
    let slow_cb = slow.clone();
    let app = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(move |_| {
            if slow_cb.load(Ordering::Relaxed) {
                Duration::from_secs(6)
            } else {
                Duration::ZERO
            }
        })
        .connect(server.url())
        .await
        .unwrap();
    slow.store(true, Ordering::Relaxed);
    let mut c = opts().watch(&app).await.unwrap();
    assert_eq!(c.get().greeting, "before");
    drop(kv);
    drop(admin);

    server.restart();
    let admin = server.connect().await;
    narun_test_support::wait_for("the value written after the restart", T, || {
        let admin = admin.clone();
        async move {
            let js = async_nats::jetstream::new(admin);
            let kv = app_config::KV.open(&js).await.ok()??;
            kv.put("web", r#"{"greeting": "missed", "limit": 1}"#.into())
                .await
                .ok()
        }
    })
    .await;
    // Written while the app was disconnected: the republish went to nobody.
    assert_ne!(
        app.connection_state(),
        async_nats::connection::State::Connected,
        "the app reconnected before the write: the test proves nothing"
    );
    tokio::time::timeout(T, c.changed())
        .await
        .expect("the change made while disconnected arrives after the reconnect")
        .unwrap();
    assert_eq!(c.get().greeting, "missed");
}

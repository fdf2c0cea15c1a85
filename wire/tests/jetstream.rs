//! The buckets of the contract against a real nats-server: "does not exist" is told
//! apart from other failures by JetStream's error code, not by matching error text.

use narun_test_support::NatsServer;
use narun_wire::jetstream::{self, APP_BINARIES, APP_CONFIGS, NODE_STATES};
use std::time::Duration;

#[tokio::test]
async fn missing_buckets_are_none_then_ensure_creates_them_once() {
    let server = NatsServer::start();
    let js = async_nats::jetstream::new(server.connect().await);

    assert!(APP_CONFIGS.open(&js).await.unwrap().is_none());
    assert!(APP_BINARIES.open(&js).await.unwrap().is_none());

    let kv = APP_CONFIGS.ensure(&js).await.unwrap();
    kv.put("hello", "{}".into()).await.unwrap();
    // A second ensure opens the same bucket (nothing is re-created or lost).
    let again = APP_CONFIGS.ensure(&js).await.unwrap();
    assert_eq!(
        again.get("hello").await.unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    assert!(APP_CONFIGS.open(&js).await.unwrap().is_some());

    APP_BINARIES.ensure(&js).await.unwrap();
    assert!(APP_BINARIES.open(&js).await.unwrap().is_some());

    // The heartbeat bucket carries its TTL.
    let states = NODE_STATES.ensure(&js).await.unwrap();
    let info = states.status().await.unwrap();
    assert_eq!(info.max_age(), Duration::from_secs(45));
}

#[tokio::test]
async fn a_server_without_jetstream_is_an_error_not_a_missing_bucket() {
    // Core NATS only: the JetStream API does not answer, which must not read as "no bucket".
    let server = NatsServer::start_with_config("jetstream: disabled");
    let mut js = async_nats::jetstream::new(server.connect().await);
    js.set_timeout(Duration::from_millis(500));
    let err = jetstream::open_kv(&js, "app-configs").await.unwrap_err();
    assert!(err.to_string().contains("app-configs"), "{err}");
}

//! The cluster harness itself: three routed servers keep a replicated stream writable
//! when the member a client is connected to is killed.

use narun_test_support::{NatsCluster, T};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_replicated_stream_survives_the_loss_of_one_member() {
    let cluster = NatsCluster::start(3).await;
    assert_eq!(cluster.urls().split(',').count(), 3);
    let client = async_nats::ConnectOptions::new()
        .retain_servers_order()
        .connect(cluster.addrs())
        .await
        .expect("connect to the cluster");
    let js = async_nats::jetstream::new(client.clone());
    tokio::time::timeout(
        T,
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "PROBE".into(),
            subjects: vec!["probe".into()],
            num_replicas: 3,
            ..Default::default()
        }),
    )
    .await
    .expect("stream creation within the bound")
    .expect("create an R3 stream");
    let publish = |body: &'static str| {
        let js = js.clone();
        // A message id: a retry after a lost ack is not stored twice.
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .message_id(body)
            .payload(body.into());
        async move { js.send_publish("probe", msg).await?.await }
    };
    publish("one").await.expect("publish before the kill");

    // The client connected to the first address it was given; kill that member.
    cluster.server(0).stop();
    let deadline = Instant::now() + T;
    let acked = loop {
        match tokio::time::timeout(Duration::from_secs(2), publish("two")).await {
            Ok(Ok(ack)) => break ack,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("the stream stayed unwritable after one member died: {other:?}"),
        }
    };
    assert_eq!(
        acked.sequence, 2,
        "both messages are in the stream, once each"
    );
}

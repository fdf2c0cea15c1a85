//! ADR-32 services against a real nats-server.

use bytes::Bytes;
use futures_util::StreamExt;
use narun_test_support::{NatsServer, T};
use narun_wire::micro::{
    EndpointConfig, InfoResponse, PingResponse, Service, ServiceConfig, StatsResponse,
};
use std::time::Duration;

async fn request(
    client: &async_nats::Client,
    subject: &str,
) -> Result<async_nats::Message, async_nats::RequestError> {
    tokio::time::timeout(T, client.request(subject.to_owned(), Bytes::new()))
        .await
        .unwrap_or_else(|_| panic!("request to {subject} timed out"))
}

/// Scatter-gather: publish to `subject` and collect replies until `quiet` passes without one.
async fn gather(client: &async_nats::Client, subject: &str) -> Vec<async_nats::Message> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(subject.to_owned(), inbox, Bytes::new())
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        // The server answers a publish nobody listens to with a 503 status message.
        if m.status != Some(async_nats::StatusCode::NO_RESPONDERS) {
            out.push(m);
        }
    }
    out
}

#[tokio::test]
async fn discovery_on_every_subject_form_and_endpoint_stats() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let mut config = ServiceConfig::new("echo-svc", "1.2.3");
    config.description = "echo for tests".into();
    config.metadata.insert("lang".into(), "rust".into());
    let svc = Service::start(&client, config).await.unwrap();
    let mut ep = svc
        .add_endpoint(EndpointConfig::new("handler", "echo-svc"))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(req) = ep.next().await {
            if req.message.payload.as_ref() == b"fail" {
                req.respond_error(503, "unavailable\nnow", Bytes::new(), None)
                    .await
                    .unwrap();
            } else {
                let payload = req.message.payload.clone();
                req.respond(payload, None).await.unwrap();
            }
        }
    });

    let caller = server.connect().await;
    let reply = tokio::time::timeout(T, caller.request("echo-svc", "hi".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.payload.as_ref(), b"hi");
    let err = tokio::time::timeout(T, caller.request("echo-svc", "fail".into()))
        .await
        .unwrap()
        .unwrap();
    let h = err.headers.expect("error reply has headers");
    assert_eq!(h.get("Nats-Service-Error-Code").unwrap().as_str(), "503");
    assert_eq!(
        h.get("Nats-Service-Error").unwrap().as_str(),
        "unavailable now"
    );

    let id = svc.id().to_owned();
    for subject in [
        "$SRV.PING".to_owned(),
        "$SRV.PING.echo-svc".into(),
        format!("$SRV.PING.echo-svc.{id}"),
    ] {
        let m = request(&caller, &subject).await.unwrap();
        let p: PingResponse = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(p.kind, "io.nats.micro.v1.ping_response", "{subject}");
        assert_eq!(
            (p.name.as_str(), p.id.as_str(), p.version.as_str()),
            ("echo-svc", id.as_str(), "1.2.3")
        );
        assert_eq!(p.metadata["lang"], "rust");
    }
    let m = request(&caller, "$SRV.INFO.echo-svc").await.unwrap();
    let info: InfoResponse = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(info.kind, "io.nats.micro.v1.info_response");
    assert_eq!(info.description, "echo for tests");
    assert_eq!(info.endpoints.len(), 1);
    assert_eq!(info.endpoints[0].name, "handler");
    assert_eq!(info.endpoints[0].subject, "echo-svc");
    assert_eq!(info.endpoints[0].queue_group, "q");

    let m = request(&caller, &format!("$SRV.STATS.echo-svc.{id}"))
        .await
        .unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    // Strict peers (Python `micro`) need every field present.
    for key in [
        "num_requests",
        "num_errors",
        "last_error",
        "processing_time",
        "average_processing_time",
        "queue_group",
        "data",
    ] {
        assert!(
            raw["endpoints"][0].get(key).is_some(),
            "stats endpoint lacks {key}: {raw}"
        );
    }
    let stats: StatsResponse = serde_json::from_value(raw).unwrap();
    assert_eq!(stats.kind, "io.nats.micro.v1.stats_response");
    assert_eq!(stats.endpoints[0].num_requests, 2);
    assert_eq!(stats.endpoints[0].num_errors, 1);
    assert_eq!(stats.endpoints[0].last_error, "503:unavailable now");
    assert!(stats.endpoints[0].processing_time > 0);
    // A PING for another service name is not answered by us.
    assert!(gather(&caller, "$SRV.PING.other").await.is_empty());
}

#[tokio::test]
async fn discovery_survives_messages_without_reply_and_stop_unregisters() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let svc = Service::start(&client, ServiceConfig::new("sturdy", "0.1.0"))
        .await
        .unwrap();
    let caller = server.connect().await;
    // async-nats 0.50 panics its verb task on this; we must keep answering.
    for verb in ["PING", "INFO", "STATS"] {
        caller
            .publish(format!("$SRV.{verb}.sturdy"), Bytes::new())
            .await
            .unwrap();
    }
    narun_test_support::synced(&caller).await;
    let m = request(&caller, "$SRV.PING.sturdy").await.unwrap();
    let p: PingResponse = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(p.name, "sturdy");

    svc.stop().await;
    // Right after stop(), discovery must say "no responders" (not time out).
    let err = request(&caller, "$SRV.PING.sturdy").await.unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
}

#[tokio::test]
async fn replicas_share_a_queue_group_and_opt_out_gets_all() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let a = Service::start(&client, ServiceConfig::new("rep", "1.0.0"))
        .await
        .unwrap();
    let b = Service::start(&client, ServiceConfig::new("rep", "1.0.0"))
        .await
        .unwrap();
    let mut ea = a
        .add_endpoint(EndpointConfig::new("handler", "rep.work"))
        .await
        .unwrap();
    let mut eb = b
        .add_endpoint(EndpointConfig::new("handler", "rep.work"))
        .await
        .unwrap();
    let mut bc = EndpointConfig::new("broadcast", "rep.all");
    bc.queue_group = Some(String::new());
    let mut ba = a.add_endpoint(bc.clone()).await.unwrap();
    let mut bb = b.add_endpoint(bc).await.unwrap();
    narun_test_support::synced(&client).await;
    // Two instances answer PING.
    assert_eq!(gather(&client, "$SRV.PING.rep").await.len(), 2);
    for _ in 0..20 {
        client.publish("rep.work", Bytes::new()).await.unwrap();
    }
    client.publish("rep.all", Bytes::new()).await.unwrap();
    narun_test_support::synced(&client).await;
    let mut got = 0;
    while got < 20 {
        tokio::select! {
            Some(_) = ea.next() => got += 1,
            Some(_) = eb.next() => got += 1,
            _ = tokio::time::sleep(T) => panic!("only {got} of 20 queue requests arrived"),
        }
    }
    // Each queue request went to exactly one instance: nothing more is pending.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), ea.next())
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(50), eb.next())
            .await
            .is_err()
    );
    // The no-queue endpoint delivered the broadcast to both.
    tokio::time::timeout(T, ba.next()).await.unwrap().unwrap();
    tokio::time::timeout(T, bb.next()).await.unwrap().unwrap();
}

#[tokio::test]
async fn drain_delivers_already_received_requests_then_ends() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let svc = Service::start(&client, ServiceConfig::new("drainer", "1.0.0"))
        .await
        .unwrap();
    let mut ep = svc
        .add_endpoint(EndpointConfig::new("handler", "drainer"))
        .await
        .unwrap();
    narun_test_support::synced(&client).await;
    let caller = server.connect().await;
    for i in 0..5 {
        caller
            .publish("drainer", format!("{i}").into())
            .await
            .unwrap();
    }
    narun_test_support::synced(&caller).await;
    // Wait until the first request is here, so all five were delivered to us.
    let first = tokio::time::timeout(T, ep.next()).await.unwrap().unwrap();
    assert_eq!(first.message.payload.as_ref(), b"0");
    ep.drain().await;
    let mut rest = Vec::new();
    while let Some(r) = tokio::time::timeout(T, ep.next())
        .await
        .expect("drain must end the stream")
    {
        rest.push(r.message.payload.clone());
    }
    assert_eq!(
        rest,
        ["1", "2", "3", "4"].map(|s| Bytes::from(s.as_bytes()))
    );
    // Nothing is subscribed any more.
    let err = request(&caller, "drainer").await.unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
}

#[tokio::test]
async fn invalid_names_and_versions_are_rejected() {
    let server = NatsServer::start();
    let client = server.connect().await;
    assert!(
        Service::start(&client, ServiceConfig::new("a.b", "1.0.0"))
            .await
            .is_err()
    );
    assert!(
        Service::start(&client, ServiceConfig::new("ok", "1.0"))
            .await
            .is_err()
    );
    let svc = Service::start(&client, ServiceConfig::new("ok", "1.0.0"))
        .await
        .unwrap();
    assert!(
        svc.add_endpoint(EndpointConfig::new("bad name", "x"))
            .await
            .is_err()
    );
    assert!(
        svc.add_endpoint(EndpointConfig::new("h", "a..b"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn connect_settings_authenticate_with_user_and_password() {
    use narun_wire::connect::NatsSettings;
    let server =
        NatsServer::start_with_config("authorization {\n  user: app\n  password: s3cret\n}\n");
    let good = NatsSettings {
        url: server.url(),
        user: Some("app".into()),
        password: Some("s3cret".into()),
        ..Default::default()
    };
    let client = good.connect("auth test").await.unwrap();
    tokio::time::timeout(T, client.flush())
        .await
        .expect("authenticated client must reach the server")
        .unwrap();
    // Wrong password: the client never gets to a connected state.
    let bad = NatsSettings {
        password: Some("wrong".into()),
        ..good.clone()
    };
    let client = bad.connect("auth test").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), client.flush())
            .await
            .is_err(),
        "a wrong password must not connect"
    );
    // A credentials file that does not exist is a clear error naming the path.
    let missing = NatsSettings {
        url: server.url(),
        creds: Some("/nonexistent/app.creds".into()),
        ..Default::default()
    };
    let err = missing.connect("auth test").await.unwrap_err().to_string();
    assert!(err.contains("/nonexistent/app.creds"), "{err}");
}

/// A forwarding endpoint (the gateway's routes) is listed with its metadata, no subject
/// and no queue group, and subscribes to nothing; a bad name is refused.
#[tokio::test]
async fn forwarding_endpoints_are_listed_without_a_subject() {
    let server = NatsServer::start();
    let client = server.connect().await;
    let svc = Service::start(&client, ServiceConfig::new("fwd-svc", "1.0.0"))
        .await
        .unwrap();
    let md = [("target".to_string(), "elsewhere".to_string())].into();
    let stats = svc.add_forwarding_endpoint("route_a", md).unwrap();
    stats.record(Duration::from_millis(1), None);
    assert!(
        svc.add_forwarding_endpoint("bad name", Default::default())
            .is_err()
    );
    let info: InfoResponse =
        serde_json::from_slice(&request(&client, "$SRV.INFO.fwd-svc").await.unwrap().payload)
            .unwrap();
    assert_eq!(info.endpoints.len(), 1);
    let ep = &info.endpoints[0];
    assert_eq!((ep.name.as_str(), ep.subject.as_str()), ("route_a", ""));
    assert_eq!(ep.queue_group, "");
    assert_eq!(ep.metadata["target"], "elsewhere");
    let st: StatsResponse = serde_json::from_slice(
        &request(&client, "$SRV.STATS.fwd-svc")
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(st.endpoints[0].num_requests, 1);
    // Nobody answers the target subject on the service's behalf.
    assert!(request(&client, "elsewhere").await.is_err());
}

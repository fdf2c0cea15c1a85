//! The gateway's Prometheus HTTP service-discovery document (`GET /sd/nodes` on its
//! metrics listener), against a real nats-server and real narund processes: every live
//! node with `[metrics]` is a target (the address from its heartbeat), with its labels;
//! each target really serves metrics promtool accepts; a node that stops leaves the list.

mod common;

use common::*;
use narun_test_support::http1::{get as raw_get, promtool_check};
use narun_test_support::{Narund, NatsServer, T, wait_for};
use serde_json::Value;

/// The document, once `ok` holds for it.
async fn sd_until(gw: &GatewayRun, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, T, || async {
        let r = get(&gw.metrics_url("/sd/nodes")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers["content-type"], "application/json");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        ok(&v).then_some(v)
    })
    .await
}

fn nodes(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|g| g["labels"]["node"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_discovery_lists_every_live_node_with_metrics() {
    let server = NatsServer::start();
    let gw_client = gateway_client(&server).await;
    wait_connected(&gw_client).await;
    let gw = start_gateway(
        gw_client,
        "[[gateway.routes]]\npath = \"/x/\"\nservice = \"x\"\n",
    )
    .await;
    // No node yet (the bucket may not even exist): an empty list, not an error.
    let v = sd_until(&gw, "an empty document", |v| v.as_array().is_some()).await;
    assert_eq!(v, serde_json::json!([]));

    let metrics = "[metrics]\naddr = \"127.0.0.1:0\"\n[labels]\nrole = \"edge\"\n";
    let a = Narund::start(&server, "sd-a", metrics);
    let mut b = Narund::start(&server, "sd-b", metrics);
    // A node without [metrics] heart-beats too, and is no target.
    let _c = Narund::start(&server, "sd-c", "");
    let v = sd_until(&gw, "sd-a and sd-b listed", |v| {
        nodes(v) == ["sd-a", "sd-b"]
    })
    .await;
    for group in v.as_array().unwrap() {
        let labels = &group["labels"];
        assert_eq!(labels["__meta_narun_node_id"], labels["node"]);
        assert_eq!(labels["__meta_narun_label_role"], "edge");
        assert_eq!(labels["__meta_narun_os"], "linux");
        let targets = group["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 1, "{group}");
        // The target serves narund's metrics, valid for promtool.
        let target = targets[0].as_str().unwrap();
        let mut s = tokio::net::TcpStream::connect(target).await.unwrap();
        let r = raw_get(&mut s, "/metrics").await;
        assert_eq!(r.status, 200);
        let text = r.text();
        let node = labels["node"].as_str().unwrap();
        assert!(
            text.contains(&format!("narun_node_info{{node_id=\"{node}\"")),
            "{target} is not {node}: {text}"
        );
        promtool_check(&text);
    }

    // sd-b stops (its key is deleted): it leaves the document.
    b.terminate().await;
    sd_until(&gw, "only sd-a listed", |v| nodes(v) == ["sd-a"]).await;
    drop(a);
}

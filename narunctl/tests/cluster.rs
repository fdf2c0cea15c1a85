//! narunctl against a 3-server NATS cluster: server lists, the replicas of what it creates,
//! and `admin replicas` moving R1 buckets to R3 in place (nats-server 2.9.10 included).

use narun_test_support::{NatsCluster, apps, narunctl, text};
use narun_wire::jetstream::{self, APP_CONFIGS, NODE_STATES};

async fn replicas(js: &async_nats::jetstream::Context, stream: &str) -> (usize, usize) {
    let mut s = js.get_stream(stream).await.unwrap();
    let info = s.info().await.unwrap();
    let peers = info.cluster.as_ref().map_or(0, |c| c.replicas.len());
    (info.config.num_replicas, peers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_list_works_and_r1_buckets_move_to_r3() {
    let cluster = NatsCluster::start(3).await;
    let client = async_nats::connect(cluster.addrs()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    // R1 buckets, as narun made them before this cluster existed.
    APP_CONFIGS.ensure_replicas(&js, Some(1)).await.unwrap();
    NODE_STATES.ensure_replicas(&js, Some(1)).await.unwrap();
    assert_eq!(replicas(&js, "KV_app-configs").await.0, 1);

    let urls = cluster.urls();
    assert!(urls.contains(','), "{urls}");

    // A comma-separated list is a list of servers (it was one bad URL before).
    let dir = tempfile::tempdir().unwrap();
    let bin = apps::fake_elf(dir.path(), "hello", 0, apps::elf_machine(), 1000);
    let out = narunctl(
        &urls,
        &[
            "deploy",
            "--allow-offline",
            "--name",
            "hello",
            "--tag",
            "v1",
            "--node",
            "n1",
            bin.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // app-binaries did not exist: narunctl created it with the cluster's default, 3.
    assert_eq!(replicas(&js, "OBJ_app-binaries").await.0, 3);
    // An explicit --stream-replicas wins.
    let out = narunctl(
        &urls,
        &[
            "--stream-replicas",
            "1",
            "files",
            "add",
            "cfg",
            bin.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(replicas(&js, "OBJ_narun-files").await.0, 1);

    // A bad entry is named.
    let bad = format!("{},nats://127.0.0.1:x", cluster.server(0).url());
    let out = narunctl(&bad, &["apps", "ls"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("server 2 of 2") && err.contains("nats://127.0.0.1:x"),
        "{err}"
    );
    let out = narunctl(&urls, &["--stream-replicas", "7", "apps", "ls"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // Dry run: lists, changes nothing.
    let out = narunctl(&urls, &["admin", "replicas", "3", "--dry-run"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    eprintln!("{listing}");
    for (stream, action) in [
        ("KV_app-configs", "would change"),
        ("KV_node-runner-states", "would change"),
        ("OBJ_app-binaries", "unchanged"),
        ("OBJ_narun-files", "would change"),
        ("KV_narun-secrets", "missing"),
        ("narun-logs", "missing"),
        ("KV_narun-releases", "missing"),
        ("narun-status", "missing"),
    ] {
        let line = listing
            .lines()
            .find(|l| l.starts_with(stream))
            .unwrap_or_else(|| panic!("{stream} listed: {listing}"));
        assert!(line.ends_with(action), "{line}");
    }
    assert_eq!(replicas(&js, "KV_app-configs").await.0, 1);

    // For real: every existing stream gets 3 replicas, in place, data kept.
    let configs = APP_CONFIGS.ensure(&js).await.unwrap();
    configs.put("kept", "value".into()).await.unwrap();
    let out = narunctl(&urls, &["admin", "replicas", "3", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 9, "{rows}");
    for stream in [
        "KV_app-configs",
        "KV_node-runner-states",
        "OBJ_app-binaries",
        "OBJ_narun-files",
    ] {
        narun_test_support::wait_for(
            &format!("{stream} has 3 replicas with 2 followers"),
            narun_test_support::T,
            || async { (replicas(&js, stream).await == (3, 2)).then_some(()) },
        )
        .await;
    }
    let configs = jetstream::open_kv(&js, "app-configs")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        configs.get("kept").await.unwrap().as_deref(),
        Some(&b"value"[..])
    );
    // And back (R3 → R1 works the same way); more replicas than servers is refused by name.
    let out = narunctl(&urls, &["admin", "replicas", "5"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("KV_app-configs"),
        "{}",
        text(&out.stderr)
    );
}

//! Issue 17, findings 6 and 7: `narunctl deploy` applies the spec limits before it
//! touches the network, answers at once on a hostile file, and names the limit.

use narun_test_support::{NatsServer, T, buckets, deploy_file, text};
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_refuses_a_deeply_nested_spec_at_once_naming_the_limit() {
    let server = NatsServer::start();
    let b = buckets(&server).await;
    let dir = tempfile::tempdir().unwrap();
    // The hostile file of issue 17: 100 KB of nested YAML flow sequences (libyaml took a
    // minute on it, and narunctl hung).
    let nested = dir.path().join("nested.yaml");
    std::fs::write(
        &nested,
        format!("name: nested\ntag: v1\nargs: {}", "[".repeat(100_000)),
    )
    .unwrap();
    let huge = dir.path().join("huge.json");
    std::fs::write(
        &huge,
        r#"{"name": "huge", "tag": "v1", "nodes": [{"name": "n1", "replicas": 4294967295}]}"#,
    )
    .unwrap();

    let t = Instant::now();
    let out = tokio::time::timeout(T, deploy_file(&server.url(), &nested, "5s"))
        .await
        .expect("narunctl answered");
    let took = t.elapsed();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("nests 100001 levels deep, more than the limit of 64 levels"),
        "{err}"
    );
    assert!(err.contains("line 3"), "{err}");
    eprintln!("narunctl refused the nested spec in {took:?}");
    assert!(took.as_secs() < 10, "took {took:?}");

    let out = tokio::time::timeout(T, deploy_file(&server.url(), &huge, "5s"))
        .await
        .expect("narunctl answered");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("nodes[0].replicas: must be at most 1024") && err.contains("got 4294967295"),
        "{err}"
    );
    // Nothing was uploaded.
    for app in ["nested", "huge"] {
        assert!(b.configs.get(app).await.unwrap().is_none(), "{app} stored");
    }
}

//! `narunctl deploy --wait` shows the node's refusal of a capability: the real `narunctl`
//! against a real nats-server and a real `narund` (root).

use narun_test_support::{Narund, NatsServer, deploy_file, text, upload_script};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_names_the_capability_the_node_refused() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    if !status.lines().any(|l| l.starts_with("Uid:\t0\t")) {
        eprintln!("SKIP: needs root (narund changes users)");
        return;
    }
    let server = NatsServer::start();
    let _narund = Narund::start(&server, "cap-node", "");
    let dir = tempfile::tempdir().unwrap();
    upload_script(
        &server,
        "grab",
        "v1",
        "#!/bin/sh\nexec sleep 1000\n".to_string(),
    )
    .await;
    let spec = dir.path().join("grab.toml");
    std::fs::write(
        &spec,
        "name = \"grab\"\ntag = \"v1\"\ncapabilities = [\"CAP_SETUID\"]\n\
         [[nodes]]\nname = \"cap-node\"\nreplicas = 1\n",
    )
    .unwrap();
    let out = deploy_file(&server.url(), &spec, "40s").await;
    let err = text(&out.stderr);
    println!("{}{err}", text(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("deploy of grab:v1 failed"), "{err}");
    assert!(
        err.contains("grab-0 on cap-node: failed (capability: capability CAP_SETUID is not allowed on this node"),
        "{err}"
    );
}

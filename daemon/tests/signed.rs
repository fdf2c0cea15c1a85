//! Signed deploys on a node with `[deploy] trusted_keys` (in-process narund, real
//! nats-server, real processes): a binary signed by a trusted key runs; an unsigned one, one
//! signed by another key, and one whose object digest was rewritten to an older cached
//! binary's (the rollback attack of someone with write access to `app-binaries` but no key)
//! are refused with reason `signature` while the running version stays.

mod common;

use async_nats::jetstream::{
    self,
    object_store::{ObjectInfo, ObjectMetadata, ObjectStore},
};
use common::Harness;
use narun_test_support::{alive, apps::sleeper_saying};
use narun_wire::names;
use narun_wire::signing::{BinaryClaim, Signer};
use narun_wire::status::{InstanceStatus, Reason};
use narund::fetch::Sha256Digest;
use serde_json::json;
use sha2::Digest;

/// Upload `script` as `app`:`tag` for this machine with the signature metadata
/// `narunctl deploy --sign` adds.
async fn upload_signed(
    store: &ObjectStore,
    app: &str,
    tag: &str,
    script: &str,
    key: &Signer,
) -> ObjectInfo {
    let (os, arch) = (names::go_os(), names::go_arch());
    let claim = BinaryClaim {
        app,
        tag,
        os,
        arch,
        sha256: sha2::Sha256::digest(script.as_bytes()).into(),
    };
    let meta = ObjectMetadata {
        name: names::binary_object_name(app, tag, os, arch),
        metadata: key
            .sign(&claim)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ..Default::default()
    };
    store
        .put(meta, &mut std::io::Cursor::new(script.as_bytes().to_vec()))
        .await
        .unwrap()
}

/// Rewrite the object's info message with another digest, keeping the rest (signature
/// included): what write access to `app-binaries` allows without the signing key.
async fn rewrite_digest(client: &async_nats::Client, info: &ObjectInfo, digest: &str) {
    use base64::Engine;
    let mut meta = serde_json::to_value(info).unwrap();
    meta["digest"] = json!(digest);
    let encoded = base64::engine::general_purpose::URL_SAFE.encode(info.name.as_bytes());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Rollup", "sub");
    jetstream::new(client.clone())
        .publish_with_headers(
            format!("$O.{}.M.{encoded}", names::APP_BINARIES_BUCKET),
            headers,
            serde_json::to_vec(&meta).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn harness(node: &str, trusted: &Signer) -> Harness {
    let pk = trusted.public_key();
    Harness::builder("signed")
        .node(node)
        .spec_fields(json!({"settleSec": 1}))
        .config(move |c| {
            c.apps.restart_backoff_max_sec = 1;
            c.deploy.trusted_keys = vec![pk];
        })
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_binaries_signed_by_a_trusted_key_run() {
    let (key, other) = (Signer::generate(), Signer::generate());
    let h = harness("sig", &key).await;
    upload_signed(&h.binaries, "sg", "v1", &sleeper_saying("v1"), &key).await;
    h.put_spec("sg", h.spec("sg", "v1", 1)).await;
    let pid = h.running_pid("sg", 0).await;

    // Unsigned: refused, with what to do.
    h.upload("sg", "v2", &sleeper_saying("v2")).await;
    h.put_spec("sg", h.spec("sg", "v2", 1)).await;
    let failed = h
        .wait_event("v2 refused", |e| {
            e.tag == "v2" && e.status == InstanceStatus::Failed
        })
        .await;
    assert_eq!(failed.reason, Some(Reason::Signature), "{failed:?}");
    let object = names::binary_object_name("sg", "v2", names::go_os(), names::go_arch());
    assert!(failed.error.contains(&object), "{}", failed.error);
    assert!(failed.error.contains("is not signed"), "{}", failed.error);
    assert!(
        failed.error.contains("narunctl deploy --sign"),
        "{}",
        failed.error
    );

    // Signed by a key this node does not trust: refused, naming the signer.
    upload_signed(&h.binaries, "sg", "v3", &sleeper_saying("v3"), &other).await;
    h.put_spec("sg", h.spec("sg", "v3", 1)).await;
    let failed = h
        .wait_event("v3 refused", |e| {
            e.tag == "v3" && e.status == InstanceStatus::Failed
        })
        .await;
    assert_eq!(failed.reason, Some(Reason::Signature), "{failed:?}");
    assert!(
        failed.error.contains(&other.public_key()),
        "{}",
        failed.error
    );

    // Neither ever ran; v1 runs on.
    assert!(
        !h.events("sg")
            .iter()
            .any(|e| e.tag != "v1" && e.status == InstanceStatus::Running),
        "{:#?}",
        h.events("sg")
    );
    assert!(alive(pid));
    let snap = h.sup.snapshot("sg", 0).unwrap();
    assert_eq!(
        (snap.status, snap.pid),
        (InstanceStatus::Running, Some(pid))
    );

    // A signed v4 replaces it.
    upload_signed(&h.binaries, "sg", "v4", &sleeper_saying("v4"), &key).await;
    h.put_spec("sg", h.spec("sg", "v4", 1)).await;
    h.wait_event("v4 running", |e| {
        e.tag == "v4" && e.status == InstanceStatus::Running
    })
    .await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_digest_cannot_roll_a_node_back_to_a_cached_binary() {
    let key = Signer::generate();
    let h = harness("rbk", &key).await;
    let v1 = upload_signed(&h.binaries, "rb", "v1", &sleeper_saying("old bytes"), &key).await;
    h.put_spec("rb", h.spec("rb", "v1", 1)).await;
    let pid = h.running_pid("rb", 0).await;
    let d1 = Sha256Digest::from_nats(v1.digest.as_deref().unwrap()).unwrap();
    h.wait_log("v1's line", |l| l.message.contains("old bytes"))
        .await;
    assert_eq!(h.sup.snapshot("rb", 0).unwrap().digest, d1.to_hex());

    // v2 is signed and uploaded; before the nodes fetch it, its digest is rewritten to v1's
    // (whose bytes every node that ran v1 has cached).
    let v2 = upload_signed(&h.binaries, "rb", "v2", &sleeper_saying("new bytes"), &key).await;
    let d2 = Sha256Digest::from_nats(v2.digest.as_deref().unwrap()).unwrap();
    rewrite_digest(&h.client, &v2, &d1.to_nats()).await;
    assert_eq!(
        h.binaries.info(&v2.name).await.unwrap().digest.as_deref(),
        Some(d1.to_nats().as_str())
    );
    h.put_spec("rb", h.spec("rb", "v2", 1)).await;

    let failed = h
        .wait_event("v2 refused", |e| {
            e.tag == "v2" && e.status == InstanceStatus::Failed
        })
        .await;
    assert_eq!(failed.reason, Some(Reason::Signature), "{failed:?}");
    for part in [v2.name.clone(), d1.to_nats(), d2.to_nats()] {
        assert!(failed.error.contains(&part), "{part} in {}", failed.error);
    }
    assert!(!failed.error.contains("reachable"), "{}", failed.error);
    // The old bytes never ran as v2; v1 runs on, unchanged.
    assert!(
        !h.events("rb")
            .iter()
            .any(|e| e.tag == "v2" && e.status == InstanceStatus::Running),
        "{:#?}",
        h.events("rb")
    );
    let old_lines = h
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.message.contains("old bytes"))
        .count();
    assert_eq!(old_lines, 1, "the old bytes started once, as v1");
    assert!(alive(pid));
    let snap = h.sup.snapshot("rb", 0).unwrap();
    assert_eq!(
        (snap.status, snap.pid),
        (InstanceStatus::Running, Some(pid))
    );
    assert_eq!(snap.digest, d1.to_hex());
    h.finish().await;
}

/// narund's whole stderr from start to a clean exit after its first heartbeat.
async fn narund_log(extra_toml: &str) -> String {
    use futures_util::StreamExt;
    let server = narun_test_support::NatsServer::start();
    let b = narun_test_support::buckets(&server).await;
    let mut watch = b.states.watch("log-node").await.unwrap();
    let mut narund = narun_test_support::Narund::builder(&server, "log-node")
        .config(extra_toml)
        .stderr_piped()
        .start();
    let mut stderr = narund.take_stderr().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    tokio::time::timeout(narun_test_support::T, watch.next())
        .await
        .expect("a heartbeat")
        .unwrap()
        .unwrap();
    assert!(narund.terminate().await.success());
    reader.join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narund_warns_once_at_start_when_deploys_are_not_authenticated() {
    const WARNING: &str = "deploys are not authenticated";
    let log = narund_log("").await;
    assert_eq!(log.matches(WARNING).count(), 1, "{log}");
    let key = Signer::generate();
    let log = narund_log(&format!(
        "[deploy]\ntrusted_keys = [\"{}\"]\n",
        key.public_key()
    ))
    .await;
    assert_eq!(log.matches(WARNING).count(), 0, "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

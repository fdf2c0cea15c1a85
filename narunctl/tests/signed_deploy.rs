//! `narunctl keys` and `deploy --sign` against a real nats-server, and a real narund with
//! `[deploy] trusted_keys` running the signed binary and refusing an unsigned one.

use async_nats::jetstream;
use narun_test_support::{Narund, NatsServer, expect_ok, narunctl, text};
use narun_wire::names;
use narun_wire::signing::TrustedKeys;
use std::path::Path;

/// `narunctl keys generate FILE`: the public key it prints.
async fn generate(url: &str, file: &Path) -> String {
    let out = narunctl(url, &["keys", "generate", file.to_str().unwrap()]).await;
    expect_ok(&out).trim().to_owned()
}

fn spec(dir: &Path, node: &str, tag: &str) -> String {
    let p = dir.join(format!("signed-{tag}.toml"));
    std::fs::write(
        &p,
        format!(
            "name = \"signed\"\ntag = \"{tag}\"\nargs = [\"1000\"]\nsettleSec = 1\n\
             [[nodes]]\nname = \"{node}\"\nreplicas = 1\n"
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn keys_generate_and_public() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deployer.nk");
    let public = generate(&server.url(), &file).await;
    assert!(public.starts_with('U') && public.len() == 56, "{public}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(&file).unwrap().starts_with("SU"));
    let out = narunctl(&server.url(), &["keys", "public", file.to_str().unwrap()]).await;
    assert_eq!(expect_ok(&out).trim(), public);
    // Never overwritten.
    let out = narunctl(&server.url(), &["keys", "generate", file.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("never overwritten"),
        "{}",
        text(&out.stderr)
    );
    let out = narunctl(
        &server.url(),
        &["keys", "public", dir.path().join("none").to_str().unwrap()],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deploy_runs_on_a_node_that_trusts_the_key_and_unsigned_is_refused() {
    const NODE: &str = "signed-node";
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("deployer.nk");
    let public = generate(&url, &key).await;
    let _narund = Narund::start(
        &server,
        NODE,
        &format!("[deploy]\ntrusted_keys = [\"{public}\"]\n"),
    );
    let bin = dir.path().join("sleep");
    std::fs::copy("/bin/sleep", &bin).unwrap();

    let out = narunctl(
        &url,
        &[
            "deploy",
            "-f",
            &spec(dir.path(), NODE, "v1"),
            "--sign",
            key.to_str().unwrap(),
            "--wait=60s",
            bin.to_str().unwrap(),
        ],
    )
    .await;
    expect_ok(&out);
    assert!(text(&out.stderr).contains(&public), "{}", text(&out.stderr));

    // The object carries a signature that verifies for exactly this app, tag and platform.
    let store = jetstream::new(server.connect().await)
        .get_object_store(names::APP_BINARIES_BUCKET)
        .await
        .unwrap();
    let (os, arch) = (names::go_os(), names::go_arch());
    let info = store
        .info(&names::binary_object_name("signed", "v1", os, arch))
        .await
        .unwrap();
    assert_eq!(info.metadata[names::BINARY_META_SIGNER], public);
    let trusted = TrustedKeys::parse([public.as_str()]).unwrap();
    let signed = trusted
        .verify("signed", "v1", os, arch, &info.metadata)
        .unwrap();
    let sha = {
        use sha2::Digest;
        <[u8; 32]>::from(sha2::Sha256::digest(std::fs::read(&bin).unwrap()))
    };
    assert_eq!(signed, sha);

    // Unsigned: the node refuses it with reason `signature`; `deploy --wait` says so.
    let out = narunctl(
        &url,
        &[
            "deploy",
            "-f",
            &spec(dir.path(), NODE, "v2"),
            "--wait=60s",
            bin.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("signature"), "{stderr}");

    // --sign with --no-binary is a usage error: there is nothing to sign.
    let out = narunctl(
        &url,
        &[
            "deploy",
            "-f",
            &spec(dir.path(), NODE, "v1"),
            "--no-binary",
            "--sign",
            key.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
}

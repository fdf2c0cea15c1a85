//! Binary fetch against a real nats-server with JetStream: streaming, verification, the
//! content-addressed cache and its garbage collection, on the io_uring and the fallback path.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{
    self,
    object_store::{ObjectInfo, ObjectMetadata, ObjectStore},
};
use narun_test_support::NatsServer;
use narun_wire::signing::{BinaryClaim, Signer, TrustedKeys};
use narund::fetch::{BinaryCache, Bucket, FetchError, Sha256Digest};
use narund::uring::{UringHandle, UringMode};
use sha2::Digest;

const OS: &str = "linux";
const ARCH: &str = "arm64";

async fn store(server: &NatsServer) -> (async_nats::Client, Bucket) {
    let client = server.connect().await;
    let js = jetstream::new(client.clone());
    let os = js
        .create_object_store(jetstream::object_store::Config {
            bucket: narun_wire::names::APP_BINARIES_BUCKET.into(),
            description: Some("Stores application binaries.".into()),
            ..Default::default()
        })
        .await
        .expect("create the app-binaries object store");
    (
        client,
        Bucket::new(&js, narun_wire::names::APP_BINARIES_BUCKET, os),
    )
}

/// Deterministic, non-repeating-ish content of `len` bytes, different per `seed`.
fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ seed as u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn put(store: &ObjectStore, app: &str, tag: &str, data: &[u8]) -> Sha256Digest {
    let name = narun_wire::names::binary_object_name(app, tag, OS, ARCH);
    let info = store
        .put(name.as_str(), &mut std::io::Cursor::new(data.to_vec()))
        .await
        .expect("put object");
    let d = Sha256Digest::from_nats(info.digest.as_deref().unwrap()).unwrap();
    assert_eq!(d.0, <[u8; 32]>::from(sha2::Sha256::digest(data)));
    d
}

fn modes() -> [UringMode; 2] {
    [UringMode::Auto, UringMode::Disabled]
}

#[tokio::test]
async fn fetch_verifies_and_installs_an_executable() {
    let server = NatsServer::start();
    let (_c, os) = store(&server).await;
    let data = content(300_000, 1);
    let digest = put(&os, "hello", "v1", &data).await;
    for mode in modes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BinaryCache::new(dir.path(), 3, UringHandle::start_with(mode));
        let bin = cache.fetch(&os, "hello", "v1", OS, ARCH).await.unwrap();
        assert!(bin.downloaded);
        assert_eq!(bin.digest, digest);
        assert_eq!(
            bin.path,
            dir.path().join("binaries/hello").join(digest.to_hex())
        );
        assert_eq!(std::fs::read(&bin.path).unwrap(), data, "{mode:?}");
        let mode_bits = std::fs::metadata(&bin.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode_bits, 0o755);
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("binaries/hello"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}

#[tokio::test]
async fn cache_hit_does_not_download_again() {
    let server = NatsServer::start();
    let (_c, os) = store(&server).await;
    let data = content(200_000, 2);
    let digest = put(&os, "hello", "v1", &data).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = BinaryCache::new(dir.path(), 3, UringHandle::start());
    let first = cache.fetch(&os, "hello", "v1", OS, ARCH).await.unwrap();
    let ino = std::fs::metadata(&first.path).unwrap().ino();

    let second = cache.fetch(&os, "hello", "v1", OS, ARCH).await.unwrap();
    assert!(!second.downloaded);
    assert_eq!(second.path, first.path);
    assert_eq!(std::fs::metadata(&second.path).unwrap().ino(), ino);

    // With the object gone from the store, the cache still answers for the known digest.
    let name = narun_wire::names::binary_object_name("hello", "v1", OS, ARCH);
    os.delete(&name).await.unwrap();
    let third = cache
        .fetch_verified(&os, "hello", &name, &digest)
        .await
        .unwrap();
    assert!(!third.downloaded);
    assert_eq!(std::fs::read(&third.path).unwrap(), data);
}

#[tokio::test]
async fn corrupt_cache_file_is_downloaded_again() {
    let server = NatsServer::start();
    let (_c, os) = store(&server).await;
    let data = content(100_000, 3);
    put(&os, "hello", "v1", &data).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = BinaryCache::new(dir.path(), 3, UringHandle::start());
    let first = cache.fetch(&os, "hello", "v1", OS, ARCH).await.unwrap();
    let mut corrupt = data.clone();
    corrupt[500] ^= 0xff;
    std::fs::write(&first.path, &corrupt).unwrap();

    let again = cache.fetch(&os, "hello", "v1", OS, ARCH).await.unwrap();
    assert!(again.downloaded, "a corrupt cache file must not be reused");
    assert_eq!(std::fs::read(&again.path).unwrap(), data);
}

#[tokio::test]
async fn wrong_digest_is_rejected_and_leaves_no_file() {
    let server = NatsServer::start();
    let (_c, os) = store(&server).await;
    let data = content(150_000, 4);
    put(&os, "hello", "v1", &data).await;
    let name = narun_wire::names::binary_object_name("hello", "v1", OS, ARCH);
    let wrong = Sha256Digest(sha2::Sha256::digest(b"something else").into());
    for mode in modes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BinaryCache::new(dir.path(), 3, UringHandle::start_with(mode));
        let err = cache
            .fetch_verified(&os, "hello", &name, &wrong)
            .await
            .unwrap_err();
        match &err {
            FetchError::Mismatch {
                expected, actual, ..
            } => {
                assert_eq!(*expected, wrong);
                assert_eq!(actual.0, <[u8; 32]>::from(sha2::Sha256::digest(&data)));
            }
            other => panic!("expected Mismatch, got {other:?}"),
        }
        assert!(err.to_string().contains(&name), "{err}");
        let left: Vec<_> = std::fs::read_dir(cache.app_dir("hello"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.is_empty(),
            "no file may remain after a mismatch: {left:?}"
        );
    }
}

#[tokio::test]
async fn missing_object_names_object_and_platform() {
    let server = NatsServer::start();
    let (_c, os) = store(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = BinaryCache::new(dir.path(), 3, UringHandle::start());
    let err = cache
        .fetch(&os, "hello", "v9", "linux", "riscv64")
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("'hello-v9-linux-riscv64'"), "{msg}");
    assert!(msg.contains("linux/riscv64"), "{msg}");
}

#[tokio::test]
async fn gc_keeps_newest_and_protected_versions() {
    let server = NatsServer::start();
    let (_c, os) = store(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = BinaryCache::new(dir.path(), 2, UringHandle::start());
    let mut fetched = Vec::new();
    for (i, tag) in ["v1", "v2", "v3", "v4"].iter().enumerate() {
        put(&os, "hello", tag, &content(10_000 + i, 10 + i as u8)).await;
        let bin = cache.fetch(&os, "hello", tag, OS, ARCH).await.unwrap();
        // Make the use order unambiguous regardless of file system timestamp granularity.
        let t = SystemTime::now() - Duration::from_secs(100 - i as u64 * 10);
        std::fs::File::options()
            .write(true)
            .open(&bin.path)
            .unwrap()
            .set_modified(t)
            .unwrap();
        fetched.push(bin);
    }
    // v1 runs somewhere: protected. v3 and v4 are the two newest.
    let protected: HashSet<_> = [fetched[0].digest].into_iter().collect();
    let removed = cache.gc("hello", &protected).await.unwrap();
    assert_eq!(removed, vec![fetched[1].path.clone()]);
    assert!(fetched[0].path.exists());
    assert!(!fetched[1].path.exists());
    assert!(fetched[2].path.exists());
    assert!(fetched[3].path.exists());

    // Without protection the oldest goes too; running gc again is a no-op.
    let removed = cache.gc("hello", &HashSet::new()).await.unwrap();
    assert_eq!(removed, vec![fetched[0].path.clone()]);
    assert!(cache.gc("hello", &HashSet::new()).await.unwrap().is_empty());
    // An app that was never fetched has nothing to collect.
    assert!(cache.gc("other", &HashSet::new()).await.unwrap().is_empty());
}

#[tokio::test]
async fn twenty_mib_object_streams_with_identical_digests_on_both_paths() {
    let server = NatsServer::start();
    let (_c, os) = store(&server).await;
    let data = content(20 * 1024 * 1024, 5);
    let digest = put(&os, "big", "v1", &data).await;
    let mut digests = Vec::new();
    for mode in modes() {
        let uring = UringHandle::start_with(mode);
        let dir = tempfile::tempdir().unwrap();
        let cache = BinaryCache::new(dir.path(), 3, uring.clone());
        let bin = cache.fetch(&os, "big", "v1", OS, ARCH).await.unwrap();
        assert_eq!(bin.digest, digest);
        assert_eq!(
            std::fs::metadata(&bin.path).unwrap().len(),
            data.len() as u64
        );
        digests.push(Sha256Digest(uring.hash_file(&bin.path).await.unwrap()));
    }
    assert_eq!(digests, vec![digest, digest]);
}

/// Put `data` as `app`:`tag` with the metadata `narunctl deploy --sign` adds, signed by
/// `signer` for `signed_tag` (normally `tag`).
async fn put_signed(
    store: &ObjectStore,
    app: &str,
    tag: &str,
    signed_tag: &str,
    data: &[u8],
    signer: &Signer,
) -> ObjectInfo {
    let name = narun_wire::names::binary_object_name(app, tag, OS, ARCH);
    let claim = BinaryClaim {
        app,
        tag: signed_tag,
        os: OS,
        arch: ARCH,
        sha256: sha2::Sha256::digest(data).into(),
    };
    let meta = ObjectMetadata {
        name,
        metadata: signer
            .sign(&claim)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ..Default::default()
    };
    store
        .put(meta, &mut std::io::Cursor::new(data.to_vec()))
        .await
        .expect("put signed object")
}

/// What an attacker with write access to `app-binaries` (and no signing key) can do: rewrite
/// the object's info message, keeping everything but the digest.
async fn rewrite_digest(client: &async_nats::Client, info: &ObjectInfo, digest: &Sha256Digest) {
    use base64::Engine;
    let mut meta = serde_json::to_value(info).unwrap();
    meta["digest"] = serde_json::json!(digest.to_nats());
    let encoded = base64::engine::general_purpose::URL_SAFE.encode(info.name.as_bytes());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Rollup", "sub");
    jetstream::new(client.clone())
        .publish_with_headers(
            format!("$O.{}.M.{encoded}", narun_wire::names::APP_BINARIES_BUCKET),
            headers,
            serde_json::to_vec(&meta).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

fn trusting(dir: &std::path::Path, keys: &[&Signer]) -> BinaryCache {
    let pks: Vec<String> = keys.iter().map(|k| k.public_key()).collect();
    BinaryCache::new(dir, 3, UringHandle::start())
        .with_trusted_keys(TrustedKeys::parse(pks.iter().map(String::as_str)).unwrap())
}

#[tokio::test]
async fn trusted_keys_accept_only_binaries_signed_for_this_app_tag_and_platform() {
    let server = NatsServer::start();
    let (_c, os) = store(&server).await;
    let (good, other) = (Signer::generate(), Signer::generate());
    let data = content(200_000, 20);
    put_signed(&os, "hello", "v1", "v1", &data, &good).await;
    put(&os, "hello", "unsigned", &data).await;
    put_signed(&os, "hello", "other-key", "other-key", &data, &other).await;
    // v1's signature copied onto v2: valid, but for another tag.
    put_signed(&os, "hello", "v2", "v1", &data, &good).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = trusting(dir.path(), &[&good]);

    let bin = cache.fetch(&os, "hello", "v1", OS, ARCH).await.unwrap();
    assert_eq!(std::fs::read(&bin.path).unwrap(), data);

    for (tag, want) in [
        ("unsigned", "is not signed"),
        ("other-key", "not one of this node's [deploy] trusted_keys"),
        ("v2", "is not valid for app hello, tag v2"),
    ] {
        let err = cache.fetch(&os, "hello", tag, OS, ARCH).await.unwrap_err();
        assert!(
            matches!(err, FetchError::Signature { .. }),
            "{tag}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&format!("'hello-{tag}-{OS}-{ARCH}'")), "{msg}");
        assert!(msg.contains(want), "{tag}: {msg}");
        assert!(!msg.contains("reachable"), "{msg}");
    }
    // Without trusted keys every one of them is accepted, as today.
    let open = BinaryCache::new(dir.path(), 3, UringHandle::start());
    for tag in ["unsigned", "other-key", "v2"] {
        open.fetch(&os, "hello", tag, OS, ARCH).await.unwrap();
    }
}

#[tokio::test]
async fn a_rewritten_digest_cannot_roll_back_to_a_cached_binary() {
    let server = NatsServer::start();
    let (client, os) = store(&server).await;
    let key = Signer::generate();
    let (old, new) = (content(150_000, 21), content(150_000, 22));
    let v1 = put_signed(&os, "hello", "v1", "v1", &old, &key).await;
    let v2 = put_signed(&os, "hello", "v2", "v2", &new, &key).await;
    let d1 = Sha256Digest::from_nats(v1.digest.as_deref().unwrap()).unwrap();
    let d2 = Sha256Digest::from_nats(v2.digest.as_deref().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = trusting(dir.path(), &[&key]);
    // The node ran v1, so its bytes are cached.
    cache.fetch(&os, "hello", "v1", OS, ARCH).await.unwrap();

    rewrite_digest(&client, &v2, &d1).await;

    // Without trusted keys the node would run v1's bytes as v2 (the attack).
    let open = BinaryCache::new(dir.path(), 3, UringHandle::start());
    let rolled_back = open.fetch(&os, "hello", "v2", OS, ARCH).await.unwrap();
    assert_eq!(std::fs::read(&rolled_back.path).unwrap(), old);

    // With trusted keys it is refused, naming the object and both digests.
    let err = cache.fetch(&os, "hello", "v2", OS, ARCH).await.unwrap_err();
    match &err {
        FetchError::SignedDigest {
            expected, actual, ..
        } => assert_eq!((*expected, *actual), (d2, d1)),
        other => panic!("expected SignedDigest, got {other:?}"),
    }
    let msg = err.to_string();
    for part in [
        format!("'hello-v2-{OS}-{ARCH}'"),
        d1.to_string(),
        d2.to_string(),
    ] {
        assert!(msg.contains(&part), "{part} in {msg}");
    }
    assert!(!msg.contains("reachable"), "{msg}");
    // Also when v2 was cached before.
    rewrite_digest(&client, &v2, &d2).await;
    cache.fetch(&os, "hello", "v2", OS, ARCH).await.unwrap();
    rewrite_digest(&client, &v2, &d1).await;
    assert!(matches!(
        cache.fetch(&os, "hello", "v2", OS, ARCH).await,
        Err(FetchError::SignedDigest { .. })
    ));
}

#[tokio::test]
async fn a_stream_that_does_not_match_its_digest_names_object_and_both_digests() {
    let server = NatsServer::start();
    let (client, os) = store(&server).await;
    for (len, seed) in [(300_000, 23), (1000, 24)] {
        let data = content(len, seed);
        let info = {
            let name = narun_wire::names::binary_object_name("hello", "v1", OS, ARCH);
            os.put(name.as_str(), &mut std::io::Cursor::new(data.clone()))
                .await
                .unwrap()
        };
        let actual = Sha256Digest(sha2::Sha256::digest(&data).into());
        let claimed = Sha256Digest(sha2::Sha256::digest(b"another binary").into());
        rewrite_digest(&client, &info, &claimed).await;
        let dir = tempfile::tempdir().unwrap();
        let cache = BinaryCache::new(dir.path(), 3, UringHandle::start());
        let err = cache.fetch(&os, "hello", "v1", OS, ARCH).await.unwrap_err();
        match &err {
            FetchError::Mismatch {
                object,
                expected,
                actual: got,
            } => {
                assert_eq!(object, &info.name);
                assert_eq!((*expected, *got), (claimed, actual));
            }
            other => panic!("expected Mismatch, got {other:?}"),
        }
        let msg = err.to_string();
        for part in [info.name.clone(), claimed.to_string(), actual.to_string()] {
            assert!(msg.contains(&part), "{part} in {msg}");
        }
        assert!(!msg.contains("reachable"), "NATS is reachable: {msg}");
        let left: Vec<_> = std::fs::read_dir(cache.app_dir("hello"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// `binaryDigests`: an object replaced under the same tag is refused for a spec that names
/// the old digest (nothing downloaded), and fetched for a spec that names the new one.
#[tokio::test]
async fn a_spec_digest_refuses_a_replaced_object_and_fetches_the_named_one() {
    let server = NatsServer::start();
    let (_c, os) = store(&server).await;
    let old = put(&os, "hello", "v1", &content(150_000, 7)).await;
    let new = put(&os, "hello", "v1", &content(150_000, 8)).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = BinaryCache::new(dir.path(), 3, UringHandle::start());
    let err = cache
        .fetch_expecting(&os, "hello", "v1", OS, ARCH, Some(&old))
        .await
        .unwrap_err();
    match &err {
        FetchError::SpecDigest {
            expected, actual, ..
        } => assert_eq!((*expected, *actual), (old, new)),
        e => panic!("expected SpecDigest, got {e}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&old.to_nats()) && msg.contains(&new.to_nats()),
        "{msg}"
    );
    assert!(!cache.app_dir("hello").join(new.to_hex()).exists());
    let bin = cache
        .fetch_expecting(&os, "hello", "v1", OS, ARCH, Some(&new))
        .await
        .unwrap();
    assert_eq!(bin.digest, new);
}

/// The chunks' consumer cannot be created (here: the stream allows one consumer and another
/// holds it; in a cluster: the stream has no leader). async-nats' own reader panics there
/// (`unwrap` in `Object::poll_read`), which the firmware build (`panic = "abort"`) cannot
/// catch: narund's reader returns an error naming the cause, and reads the object once the
/// consumer can be created.
#[tokio::test]
async fn a_consumer_that_cannot_be_created_is_an_error_not_a_panic() {
    use narund::fetch::object::{Chunks, ObjectError};
    let server = NatsServer::start();
    let client = server.connect().await;
    let js = jetstream::new(client.clone());
    let bucket = "hogged";
    // The object store's stream, as async-nats creates it, with room for one consumer.
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: format!("OBJ_{bucket}"),
            subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
            discard: jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            allow_direct: true,
            max_consumers: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let store = Bucket::new(&js, bucket, js.get_object_store(bucket).await.unwrap());
    let data = content(300_000, 31);
    store
        .put("app", &mut std::io::Cursor::new(data.clone()))
        .await
        .unwrap();
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("hog".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    let err = match tokio::time::timeout(Duration::from_secs(10), Chunks::open(&store, "app"))
        .await
        .expect("an answer within 10 s")
    {
        Err(e) => e,
        Ok(_) => panic!("a consumer was created past the stream's limit"),
    };
    assert!(matches!(err, ObjectError::Consumer(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("consumer"), "{msg}");

    stream.delete_consumer("hog").await.unwrap();
    let mut chunks = Chunks::open(&store, "app").await.unwrap();
    assert_eq!(chunks.info().size, data.len());
    let mut got = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), chunks.next())
        .await
        .expect("a chunk within 10 s")
        .unwrap()
    {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, data);
}

//! The JetStream buckets narund works with, and app binaries put into `app-binaries`.

use async_nats::jetstream::{self, kv, object_store::ObjectInfo, object_store::ObjectStore};
use narun_wire::names;

use crate::NatsServer;

/// The buckets narund works with (`app-configs`, `app-binaries`, `node-runner-states`).
pub struct Buckets {
    pub configs: kv::Store,
    pub binaries: ObjectStore,
    pub states: kv::Store,
}

/// Open the buckets narund works with on `server`, creating them the way narund does
/// (same settings and descriptions) when they do not exist yet.
pub async fn buckets(server: &NatsServer) -> Buckets {
    buckets_on(&jetstream::new(server.connect().await)).await
}

/// [`buckets`] through `js` (e.g. a client of a [`crate::NatsCluster`]: the buckets get
/// the replicas narund would give them there).
pub async fn buckets_on(js: &jetstream::Context) -> Buckets {
    use narun_wire::jetstream::{APP_BINARIES, APP_CONFIGS, NODE_STATES};
    Buckets {
        configs: APP_CONFIGS.ensure(js).await.unwrap(),
        binaries: APP_BINARIES.ensure(js).await.unwrap(),
        states: NODE_STATES.ensure(js).await.unwrap(),
    }
}

impl Buckets {
    /// [`upload_app`] into these buckets.
    pub async fn upload(&self, app: &str, tag: &str, binary: impl AsRef<[u8]>) -> ObjectInfo {
        upload_app(&self.binaries, app, tag, binary).await
    }

    /// Put `spec` (the JSON narunctl writes) as the spec of `app`; returns the revision.
    pub async fn put_spec(&self, app: &str, spec: &serde_json::Value) -> u64 {
        self.configs
            .put(app, serde_json::to_vec(spec).unwrap().into())
            .await
            .unwrap()
    }
}

/// Put `binary` (for example one of [`crate::apps`]) into `store` as the binary of
/// `app`:`tag` for this machine: the object `<app>-<tag>-linux-<arch>` narund fetches
/// ([`names::binary_object_name`] with this machine's GOOS/GOARCH). Without the metadata
/// `narunctl deploy` adds (narund does not need it; `narunctl images ls` shows `-`).
pub async fn upload_app(
    store: &ObjectStore,
    app: &str,
    tag: &str,
    binary: impl AsRef<[u8]>,
) -> ObjectInfo {
    let object = names::binary_object_name(app, tag, names::go_os(), names::go_arch());
    store
        .put(
            object.as_str(),
            &mut std::io::Cursor::new(binary.as_ref().to_vec()),
        )
        .await
        .unwrap_or_else(|e| panic!("upload {object}: {e}"))
}

/// [`upload_app`] on `server`, creating `app-binaries` when it does not exist yet.
pub async fn upload_script(
    server: &NatsServer,
    app: &str,
    tag: &str,
    script: impl AsRef<[u8]>,
) -> ObjectInfo {
    let js = jetstream::new(server.connect().await);
    upload_app(
        &narun_wire::jetstream::APP_BINARIES
            .ensure(&js)
            .await
            .unwrap(),
        app,
        tag,
        script,
    )
    .await
}

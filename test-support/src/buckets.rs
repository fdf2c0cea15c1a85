//! The JetStream buckets narund works with, and app binaries put into `app-binaries`.

use async_nats::jetstream::{self, kv, object_store::ObjectInfo, object_store::ObjectStore};
use narun_wire::names;
use std::time::Duration;

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
    let js = jetstream::new(server.connect().await);
    let configs = narun_wire::jetstream::ensure_kv(
        &js,
        names::APP_CONFIGS_BUCKET,
        "Stores application service specifications for node runners.",
        1,
        None,
    )
    .await
    .unwrap();
    let binaries = binaries(&js).await;
    let states = narun_wire::jetstream::ensure_kv(
        &js,
        names::NODE_STATES_BUCKET,
        "narun node heartbeats",
        1,
        Some(Duration::from_secs(names::NODE_STATE_TTL_SECS)),
    )
    .await
    .unwrap();
    Buckets {
        configs,
        binaries,
        states,
    }
}

async fn binaries(js: &jetstream::Context) -> ObjectStore {
    narun_wire::jetstream::ensure_object_store(
        js,
        names::APP_BINARIES_BUCKET,
        "Stores application binaries.",
    )
    .await
    .unwrap()
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
    upload_app(&binaries(&js).await, app, tag, script).await
}

//! What an instance gets from NATS besides its binary: secret env values and mounted files.
//!
//! Both are resolved by the instance task at every start of an instance, after the binary is
//! fetched and the work dir exists, and before the process is spawned (Go:
//! `startAppInstance`, see `narun-go-reference.md` §3.7):
//!
//! * **Mounts** — `mounts: [{path: conf/app.toml, source: {objectStore: app-config}}]` places
//!   the object `app-config` of the `narun-files` object store at `<work>/conf/app.toml`.
//!   The object is streamed into a temporary file next to the target, SHA-256 verified against
//!   the object's digest, fsynced and renamed (the same code as binaries,
//!   `crate::fetch::download_verified`); a file that already has the right digest is left
//!   alone. Parent directories are created `0755`, files are `0644`, both owned by the app's
//!   user. A missing object fails the start with reason `mount`. When NATS is unreachable a
//!   file placed by an earlier start is used as it is (offline first); a file that was never
//!   placed fails the start.
//! * **Secrets** — `env: [{name: DB_PASSWORD, valueFromSecret: db-password}]` reads the key
//!   `db-password` of the `narun-secrets` KV bucket (bounded: [`SECRET_GET_TIMEOUT`]),
//!   decrypts it with the master key ([`narun_wire::secrets`]) and puts the plaintext in the
//!   app's environment. The plaintext only lives in narund's memory and the app's
//!   environment: it is never written to disk and never logged, so a start without NATS
//!   fails with reason `secret` instead of using a stale copy. A missing master key file,
//!   bucket, key, or a value that does not decrypt also fails the start with reason
//!   `secret`; the message names the secret (`Failed to resolve secret 'db-password': …`)
//!   and other apps are unaffected.
//! * **Secret scope** — a secret names the apps that may use it (`narunctl secret set NAME
//!   --app APP`, authenticated with the master key, see [`narun_wire::secrets::Scope`]). A
//!   secret whose scope does not include the spec's `name`, or whose scope was rewritten
//!   without the key, fails the start with reason `secret` (the message names the secret,
//!   the app and the `narunctl` command that allows it). A secret that names no apps (the
//!   Go format) is used only when `[secrets] allow_unscoped = true`; otherwise the start
//!   fails naming that setting. An app never starts without one of its secrets.
//!
//! The master key file comes from narund's config (`[secrets] master_key_file`, env
//! `NARUN_MASTER_KEY_FILE`); it is read at each start that needs it, so a rotated key
//! takes effect without restarting narund.

use crate::fetch::{FetchError, Sha256Digest, download_verified, persist_synced};
use crate::uring::UringHandle;
use async_nats::jetstream::{self, object_store};
use narun_spec::AppSpec;
use narun_wire::names;
use narun_wire::secrets::{MasterKey, StoredSecret};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Bound of one secret lookup (open the bucket and get the key), like Go's 5 s KV get.
pub const SECRET_GET_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of the metadata request for a mounted file.
pub const MOUNT_INFO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of the download of one mounted file.
pub const MOUNT_FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Where narund looks for the master key when the config names no other file.
pub const DEFAULT_MASTER_KEY_FILE: &str = "/etc/narun/master.key";

/// Why an instance's secrets or mounts could not be prepared. The `Display` form is the
/// status event's `error` text (Go's wording).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("Failed to resolve secret '{secret}': {message}")]
    Secret { secret: String, message: String },
    #[error("Failed to process mount {path}: {message}")]
    Mount { path: String, message: String },
}

impl InputError {
    /// The status event `reason`: `secret` or `mount`.
    pub fn reason(&self) -> narun_wire::status::Reason {
        match self {
            InputError::Secret { .. } => narun_wire::status::Reason::Secret,
            InputError::Mount { .. } => narun_wire::status::Reason::Mount,
        }
    }
}

/// Resolves secrets and places mounted files for instance starts. Owned by the node's [`crate::instance::Host`].
pub struct AppInputs {
    client: async_nats::Client,
    uring: UringHandle,
    master_key_file: Mutex<PathBuf>,
    /// `[secrets] allow_unscoped`.
    allow_unscoped: AtomicBool,
}

impl AppInputs {
    /// Inputs read through `client`, with the master key at [`DEFAULT_MASTER_KEY_FILE`] until
    /// [`AppInputs::set_master_key_file`] says otherwise.
    pub fn new(client: async_nats::Client, uring: UringHandle) -> AppInputs {
        AppInputs {
            client,
            uring,
            master_key_file: Mutex::new(DEFAULT_MASTER_KEY_FILE.into()),
            allow_unscoped: AtomicBool::new(false),
        }
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The `(name, plaintext)` pairs of every `valueFromSecret` variable of `spec`.
    pub async fn secret_env(&self, spec: &AppSpec) -> Result<Vec<(String, String)>, InputError> {
        let wanted: Vec<_> = spec
            .env
            .iter()
            .filter(|e| !e.value_from_secret.is_empty())
            .collect();
        let Some(first) = wanted.first() else {
            return Ok(Vec::new());
        };
        let fail = |secret: &str, message: String| InputError::Secret {
            secret: secret.into(),
            message,
        };
        let key_file = self.master_key_file.lock().unwrap().clone();
        let key = MasterKey::load(&key_file).map_err(|e| {
            fail(
                &first.value_from_secret,
                format!("no usable master key: {e}"),
            )
        })?;
        let mut out = Vec::with_capacity(wanted.len());
        for var in wanted {
            let secret = var.value_from_secret.as_str();
            if !self.connected() {
                return Err(fail(
                    secret,
                    "NATS is not connected; secrets are read from the narun-secrets bucket at \
                     every start and never stored on the device, the start is retried when the \
                     spec is applied again"
                        .into(),
                ));
            }
            let stored =
                tokio::time::timeout(SECRET_GET_TIMEOUT, self.get_secret(secret, &spec.name))
                    .await
                    .map_err(|_| {
                        fail(
                            secret,
                            format!("no answer from NATS within {SECRET_GET_TIMEOUT:?}"),
                        )
                    })?
                    .map_err(|m| fail(secret, m))?;
            let allow_unscoped = self.allow_unscoped.load(Ordering::Relaxed);
            let plain = key
                .open_for_app(secret, &stored, &spec.name, allow_unscoped)
                .map_err(|e| fail(secret, e.to_string()))?;
            if stored.apps.is_empty() {
                tracing::warn!(app = %spec.name, secret, "using a secret that names no apps (allowed by [secrets] allow_unscoped); scope it with `narunctl secret set {secret} --app {}`", spec.name);
            }
            let value = String::from_utf8(plain).map_err(|_| {
                fail(
                    secret,
                    "the value is not valid UTF-8 and cannot be an environment variable".into(),
                )
            })?;
            out.push((var.name.clone(), value));
        }
        Ok(out)
    }

    async fn get_secret(&self, secret: &str, app: &str) -> Result<StoredSecret, String> {
        let js = jetstream::new(self.client.clone());
        let kv = narun_wire::jetstream::open_kv(&js, names::SECRETS_BUCKET)
            .await
            .map_err(|e| format!("opening the {} bucket: {e}", names::SECRETS_BUCKET))?
            .ok_or_else(|| {
                format!(
                    "the {} KV bucket does not exist; create the secret with `narunctl secret set {secret} --app {app} …`",
                    names::SECRETS_BUCKET
                )
            })?;
        let value = kv
            .get(secret)
            .await
            .map_err(|e| format!("reading {}/{secret}: {e}", names::SECRETS_BUCKET))?
            .ok_or_else(|| {
                format!(
                    "not found in the {} bucket; create it with `narunctl secret set {secret} --app {app} …`",
                    names::SECRETS_BUCKET
                )
            })?;
        StoredSecret::from_json(secret, &value).map_err(|e| e.to_string())
    }

    /// Place every mount of `spec` below `work`, owned by `owner` (uid, gid) when given.
    pub async fn place_mounts(
        &self,
        spec: &AppSpec,
        work: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<(), InputError> {
        if spec.mounts.is_empty() {
            return Ok(());
        }
        let mut store = None;
        for m in &spec.mounts {
            let fail = |message: String| InputError::Mount {
                path: m.path.clone(),
                message,
            };
            let rel = clean_relative(&m.path).map_err(fail)?;
            let object = m.source.object_store.as_str();
            let dest = prepare_parent(work, &rel, owner).map_err(fail)?;
            if !self.connected() {
                if std::fs::symlink_metadata(&dest).is_ok_and(|md| md.is_file()) {
                    tracing::warn!(spec = %spec.name, path = %m.path, object, "NATS is not connected: using the file placed by an earlier start");
                    continue;
                }
                return Err(fail(format!(
                    "NATS is not connected and '{object}' was never placed here; it is fetched when the spec is applied again"
                )));
            }
            if store.is_none() {
                store = Some(self.files_store().await.map_err(fail)?);
            }
            let store = store.as_ref().expect("just set");
            self.place_one(store, object, &dest, owner)
                .await
                .map_err(fail)?;
        }
        Ok(())
    }

    async fn files_store(&self) -> Result<object_store::ObjectStore, String> {
        let js = jetstream::new(self.client.clone());
        match tokio::time::timeout(
            MOUNT_INFO_TIMEOUT,
            narun_wire::jetstream::open_object_store(&js, names::FILES_BUCKET),
        )
        .await
        {
            Ok(Ok(Some(s))) => Ok(s),
            Ok(Ok(None)) => Err(format!(
                "the {} object store does not exist; upload the file with `narunctl files add`",
                names::FILES_BUCKET
            )),
            Ok(Err(e)) => Err(format!(
                "opening the {} object store: {e}",
                names::FILES_BUCKET
            )),
            Err(_) => Err(format!(
                "opening the {} object store: no answer within {MOUNT_INFO_TIMEOUT:?}",
                names::FILES_BUCKET
            )),
        }
    }

    async fn place_one(
        &self,
        store: &object_store::ObjectStore,
        object: &str,
        dest: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<(), String> {
        let not_found = || {
            format!(
                "file '{object}' not found in the {} object store; upload it with `narunctl files add {object} PATH`",
                names::FILES_BUCKET
            )
        };
        let info = match tokio::time::timeout(MOUNT_INFO_TIMEOUT, store.info(object)).await {
            Ok(Ok(i)) => i,
            Ok(Err(e)) if e.kind() == object_store::InfoErrorKind::NotFound => {
                return Err(not_found());
            }
            Ok(Err(e)) => return Err(format!("object store request for '{object}': {e}")),
            Err(_) => {
                return Err(format!(
                    "object store request for '{object}': no answer within {MOUNT_INFO_TIMEOUT:?}"
                ));
            }
        };
        let digest_text = info.digest.clone().unwrap_or_default();
        let expected = Sha256Digest::from_nats(&digest_text).ok_or_else(|| {
            format!("object '{object}' has digest '{digest_text}', expected 'SHA-256=…'; upload it again")
        })?;
        if std::fs::symlink_metadata(dest).is_ok_and(|md| md.is_file())
            && self.uring.hash_file(dest).await.ok() == Some(expected.0)
        {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(dest, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", dest.display()))?;
            }
            return Ok(());
        }
        let dir = dest.parent().unwrap_or(Path::new("."));
        let downloaded = tokio::time::timeout(
            MOUNT_FETCH_TIMEOUT,
            download_verified(
                store,
                names::FILES_BUCKET,
                object,
                dir,
                &expected,
                &self.uring,
            ),
        )
        .await
        .map_err(|_| format!("downloading '{object}' took longer than {MOUNT_FETCH_TIMEOUT:?}"))?;
        let (tmp, bytes) = downloaded.map_err(|e| match e {
            FetchError::NotFound { .. } => not_found(),
            e => e.to_string(),
        })?;
        persist_synced(tmp, dest, 0o644, owner)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(object, path = %dest.display(), bytes, digest = %expected, "mounted file placed");
        Ok(())
    }
}

/// `path` as a clean relative path: `.` components dropped; absolute paths, `..` and an
/// empty result rejected (the spec validation rejects them too; this is the last line).
pub fn clean_relative(path: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err("the path must not contain '..'".into());
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("the path must be relative to the instance work dir".into());
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("the path is empty".into());
    }
    Ok(out)
}

/// Create the directories between `work` and `work/rel` (mode 0755, owned by `owner`) and
/// return the destination path. Every directory on the way must be a real directory inside
/// `work`: a symlink planted by the app (which owns its work dir) must not redirect narund's
/// root-owned write outside of it, and the destination must not be a directory or symlink.
fn prepare_parent(work: &Path, rel: &Path, owner: Option<(u32, u32)>) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let mut dir = work.to_path_buf();
    let parents: Vec<_> = rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for c in parents {
        dir.push(c);
        match std::fs::symlink_metadata(&dir) {
            Ok(md) if md.is_dir() => continue,
            Ok(_) => {
                return Err(format!(
                    "{} exists and is not a directory (a symlink or file in the work dir is in the way)",
                    dir.display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
    }
    let dest = work.join(rel);
    match std::fs::symlink_metadata(&dest) {
        Ok(md) if !md.is_file() => Err(format!(
            "{} exists and is not a regular file; remove it",
            dest.display()
        )),
        _ => Ok(dest),
    }
}

impl AppInputs {
    /// Read the master key for `valueFromSecret` from `path` from now on (narund's
    /// `[secrets] master_key_file`).
    pub fn set_master_key_file(&self, path: impl Into<PathBuf>) {
        *self.master_key_file.lock().unwrap() = path.into();
    }

    /// Hand out secrets that name no apps from now on (narund's `[secrets] allow_unscoped`).
    pub fn set_allow_unscoped(&self, allow: bool) {
        self.allow_unscoped.store(allow, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_relative_paths() {
        assert_eq!(clean_relative("a/./b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(clean_relative("./x").unwrap(), PathBuf::from("x"));
        assert!(clean_relative("../x").is_err());
        assert!(clean_relative("a/../../x").is_err());
        assert!(clean_relative("/etc/passwd").is_err());
        assert!(clean_relative(".").is_err());
        assert!(clean_relative("").is_err());
    }

    #[test]
    fn parents_are_created_and_symlinks_refused() {
        let work = tempfile::tempdir().unwrap();
        let dest = prepare_parent(work.path(), Path::new("a/b/c.txt"), None).unwrap();
        assert_eq!(dest, work.path().join("a/b/c.txt"));
        assert!(work.path().join("a/b").is_dir());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(work.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);

        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), work.path().join("evil")).unwrap();
        let e = prepare_parent(work.path(), Path::new("evil/x"), None).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        std::os::unix::fs::symlink("/etc/passwd", work.path().join("link")).unwrap();
        assert!(prepare_parent(work.path(), Path::new("link"), None).is_err());
        std::fs::create_dir(work.path().join("dir")).unwrap();
        assert!(prepare_parent(work.path(), Path::new("dir"), None).is_err());
    }
}

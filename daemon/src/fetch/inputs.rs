//! What an instance gets from NATS besides its binary: secret env values and mounted files.
//!
//! Both are resolved by the instance task at every start of an instance, after the binary is
//! fetched and the work dir exists, and before the process is spawned (Go:
//! `startAppInstance`, see `narun-go-reference.md` §3.7):
//!
//! * **Mounts** — `mounts: [{path: conf/app.toml, source: {objectStore: app-config}}]` places
//!   the object `app-config` of the `narun-files` object store at `<work>/conf/app.toml`.
//!   The object is streamed into a temporary file next to the target, SHA-256 verified against
//!   the object's digest, fsynced (the same code as binaries, `crate::fetch::download_verified`)
//!   in narund's own instance directory (the work dir's root-owned parent) and renamed into
//!   place; a file that already has the right digest is left alone. Every path below the work
//!   dir is resolved on directory fds without following symlinks ([`Target`]): a symlink the
//!   app planted fails the start with reason `mount` naming the path, and nothing is ever
//!   written outside the work dir. Parent directories are created `0700`, files are `0600`,
//!   both owned by the app's user (its dynamic user, docs/spec.md). A missing object fails the
//!   start with reason `mount`. When NATS is unreachable a
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

use crate::fetch::{Bucket, Durability, FetchError, Sha256Digest, download_verified};
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
    master_key_file: Mutex<PathBuf>,
    /// `[secrets] allow_unscoped`.
    allow_unscoped: AtomicBool,
}

impl AppInputs {
    /// Inputs read through `client`, with the master key at [`DEFAULT_MASTER_KEY_FILE`] until
    /// [`AppInputs::set_master_key_file`] says otherwise.
    pub fn new(client: async_nats::Client) -> AppInputs {
        AppInputs {
            client,
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
    /// Every path is resolved beneath `work` without following symlinks (see
    /// [`Target`]); the download is staged in `work`'s parent directory
    /// (narund's own, root-owned instance directory) and renamed into place.
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
            let target = blocking({
                let (work, rel) = (work.to_path_buf(), rel.clone());
                move || Target::open(&work, &rel, owner)
            })
            .await
            .map_err(fail)?;
            if !self.connected() {
                let placed = blocking({
                    let t = target.clone_fd().map_err(fail)?;
                    move || t.existing(None, owner)
                })
                .await
                .map_err(fail)?;
                if placed {
                    tracing::warn!(spec = %spec.name, path = %m.path, object, "NATS is not connected: using the file placed by an earlier start");
                    continue;
                }
                return Err(fail(format!(
                    "NATS is not connected and no copy of '{object}' that narund placed is here (never placed, or replaced by the app: a file with other links or another owner is not used); it is fetched when the spec is applied again"
                )));
            }
            if store.is_none() {
                store = Some(self.files_store().await.map_err(fail)?);
            }
            let store = store.as_ref().expect("just set");
            let staging = work.parent().unwrap_or(work);
            self.place_one(store, object, target, staging, owner)
                .await
                .map_err(fail)?;
        }
        Ok(())
    }

    async fn files_store(&self) -> Result<Bucket, String> {
        let js = jetstream::new(self.client.clone());
        match tokio::time::timeout(
            MOUNT_INFO_TIMEOUT,
            narun_wire::jetstream::open_object_store(&js, names::FILES_BUCKET),
        )
        .await
        {
            Ok(Ok(Some(s))) => Ok(Bucket::new(&js, names::FILES_BUCKET, s)),
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
        store: &Bucket,
        object: &str,
        target: Target,
        staging: &Path,
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
        let t = target.clone_fd()?;
        if blocking(move || t.existing(Some(expected), owner)).await? {
            return Ok(());
        }
        // Staged in narund's own directory (the app cannot reach it), then renamed into
        // the directory fd resolved above: no path under the work dir is used by name.
        let downloaded = tokio::time::timeout(
            MOUNT_FETCH_TIMEOUT,
            download_verified(store, object, staging, &expected, Durability::Now),
        )
        .await
        .map_err(|_| format!("downloading '{object}' took longer than {MOUNT_FETCH_TIMEOUT:?}"))?;
        let (tmp, bytes) = downloaded.map_err(|e| match e {
            FetchError::NotFound { .. } => not_found(),
            e => e.to_string(),
        })?;
        let shown = target.shown.clone();
        let staging = staging.to_path_buf();
        blocking(move || target.install(tmp, &staging, owner)).await?;
        tracing::info!(object, path = %shown, bytes, digest = %expected, "mounted file placed");
        Ok(())
    }
}

/// Run a blocking file-system step on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("file placement task failed: {e}"))?
}

/// Mode of a mounted file: readable and writable by the app's user only.
pub const MOUNT_FILE_MODE: u32 = 0o600;
/// Mode of the directories narund creates for mounts: the app's user only.
pub const MOUNT_DIR_MODE: u32 = 0o700;

/// Where one mounted file goes: its parent directory, opened beneath the work dir without
/// following symlinks, and its file name.
///
/// # Placement
///
/// The app owns its work dir and may swap any directory of a mount path for a symlink at
/// any moment, so no path below the work dir is used by name after the work dir itself
/// is opened (`O_NOFOLLOW`): the parent directory is opened with
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (Linux ≥ 5.6; older kernels walk it
/// with `openat(O_NOFOLLOW | O_DIRECTORY)` per component), missing directories are created
/// with `mkdirat` on the fd of their parent, and the file arrives by `renameat` from narund's
/// staging directory into that fd, then `fchown`/`fchmod` happen on fds. A symlink on the
/// way fails the start with reason `mount`, naming the path; nothing is written outside the
/// work dir.
#[derive(Debug)]
pub struct Target {
    parent: std::os::fd::OwnedFd,
    name: std::ffi::OsString,
    /// `<work>/<path>` for messages.
    shown: String,
}

impl Target {
    /// Open (creating what is missing: mode [`MOUNT_DIR_MODE`], owned by `owner`) the parent
    /// directory of `work/rel`. `rel` is a clean relative path ([`clean_relative`]).
    pub fn open(work: &Path, rel: &Path, owner: Option<(u32, u32)>) -> Result<Target, String> {
        use crate::sys::beneath as at;
        use std::os::fd::AsFd;
        let shown = |p: &Path| work.join(p).display().to_string();
        let why = |p: &Path, e: std::io::Error| match e.raw_os_error() {
            Some(libc::ELOOP | libc::EXDEV | libc::ENOTDIR) => {
                // Which component is in the way (by path, for the message only).
                let mut at_path = PathBuf::new();
                let mut what = "not a directory";
                for c in p.components() {
                    at_path.push(c);
                    match std::fs::symlink_metadata(work.join(&at_path)) {
                        Ok(md) if md.is_symlink() => {
                            what = "a symlink";
                            break;
                        }
                        Ok(md) if !md.is_dir() => break,
                        _ => {}
                    }
                }
                let at_path = if at_path.as_os_str().is_empty() {
                    p
                } else {
                    &at_path
                };
                format!(
                    "{} is {what}; narund never follows symlinks inside the work dir and \
                     writes nothing outside it: remove it (the start is retried)",
                    shown(at_path)
                )
            }
            _ => format!("{}: {e}", shown(p)),
        };
        let root = at::open_dir_nofollow(work).map_err(|e| why(Path::new(""), e))?;
        let name = rel
            .file_name()
            .ok_or_else(|| format!("{}: no file name", shown(rel)))?
            .to_os_string();
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = match at::open_dir_beneath(root.as_fd(), parent_rel) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // Walk and create, one component at a time on directory fds.
                let mut cur = root;
                let mut sofar = PathBuf::new();
                for c in parent_rel.components() {
                    let c = c.as_os_str();
                    sofar.push(c);
                    let next = match at::open_dir_beneath(cur.as_fd(), Path::new(c)) {
                        Ok(fd) => fd,
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                            match at::mkdir_at(cur.as_fd(), c, MOUNT_DIR_MODE) {
                                Ok(()) => {}
                                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                                Err(e) => return Err(why(&sofar, e)),
                            }
                            let fd = at::open_dir_at(cur.as_fd(), c).map_err(|e| why(&sofar, e))?;
                            if let Some((uid, gid)) = owner {
                                at::fchown(fd.as_fd(), uid, gid).map_err(|e| why(&sofar, e))?;
                            }
                            at::fchmod(fd.as_fd(), MOUNT_DIR_MODE).map_err(|e| why(&sofar, e))?;
                            fd
                        }
                        Err(e) => return Err(why(&sofar, e)),
                    };
                    cur = next;
                }
                cur
            }
            Err(e) => return Err(why(parent_rel, e)),
        };
        Ok(Target {
            parent,
            name,
            shown: shown(rel),
        })
    }

    fn clone_fd(&self) -> Result<Target, String> {
        Ok(Target {
            parent: self
                .parent
                .try_clone()
                .map_err(|e| format!("{}: {e}", self.shown))?,
            name: self.name.clone(),
            shown: self.shown.clone(),
        })
    }

    /// Whether a regular file is already there (with content `expected`, when given); if so
    /// it gets `owner` and [`MOUNT_FILE_MODE`]. A symlink, directory or other entry there is
    /// an error.
    pub fn existing(
        &self,
        expected: Option<Sha256Digest>,
        owner: Option<(u32, u32)>,
    ) -> Result<bool, String> {
        use crate::sys::beneath as at;
        use std::os::fd::AsFd;
        match at::stat_at(self.parent.as_fd(), &self.name) {
            Ok(libc::S_IFREG) => {}
            Ok(_) => {
                return Err(format!(
                    "{} exists and is not a regular file (a symlink or directory the app put \
                     there?); remove it",
                    self.shown
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(format!("{}: {e}", self.shown)),
        }
        let mut file = match at::open_file_at(self.parent.as_fd(), &self.name) {
            Ok(f) => f,
            // Swapped between the stat and the open: placed again below.
            Err(_) => return Ok(false),
        };
        let err = |e: std::io::Error| format!("{}: {e}", self.shown);
        let (kind, file_uid, ..) = at::fstat_owner(file.as_fd()).map_err(err)?;
        if kind != libc::S_IFREG {
            return Ok(false);
        }
        // Only a file narund placed counts: one name, owned by the app (or by narund when
        // it runs apps as itself). A hard link the app made to a file of someone else
        // (`/etc/shadow`, the master key) must never get the app as owner: it is not
        // accepted (online it is replaced by a verified copy, offline the start fails).
        let links = at::fstat_links(file.as_fd()).map_err(err)?;
        let expected_uid = owner
            .map(|(uid, _)| uid)
            .unwrap_or_else(crate::sys::process::geteuid);
        if links != 1 || file_uid != expected_uid {
            return Ok(false);
        }
        if let Some(expected) = expected {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            crate::sys::fs::set_nonblocking(file.as_fd(), false).map_err(err)?;
            std::io::copy(&mut file, &mut h).map_err(err)?;
            if h.finalize().as_slice() != expected.0 {
                return Ok(false);
            }
        }
        if let Some((uid, gid)) = owner {
            at::fchown(file.as_fd(), uid, gid).map_err(err)?;
        }
        at::fchmod(file.as_fd(), MOUNT_FILE_MODE).map_err(err)?;
        Ok(true)
    }

    /// Give the verified temporary file `tmp` (in the directory `staging`, narund's own)
    /// `owner` and [`MOUNT_FILE_MODE`] and rename it into place (replacing whatever
    /// non-directory is there, a symlink included, without following it), then fsync the
    /// directory.
    pub fn install(
        &self,
        tmp: tempfile::NamedTempFile,
        staging: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<(), String> {
        use crate::sys::beneath as at;
        use std::os::fd::AsFd;
        let err = |e: std::io::Error| format!("{}: {e}", self.shown);
        if let Some((uid, gid)) = owner {
            at::fchown(tmp.as_file().as_fd(), uid, gid).map_err(err)?;
        }
        at::fchmod(tmp.as_file().as_fd(), MOUNT_FILE_MODE).map_err(err)?;
        let staging_fd = at::open_dir_nofollow(staging).map_err(err)?;
        let tmp_name = tmp
            .path()
            .file_name()
            .ok_or_else(|| format!("{}: temporary file without a name", self.shown))?
            .to_os_string();
        let (_file, tmp_path) = tmp.into_parts();
        match at::rename_at(
            staging_fd.as_fd(),
            &tmp_name,
            self.parent.as_fd(),
            &self.name,
        ) {
            Ok(()) => {
                // Renamed away: nothing left to delete.
                let _ = tmp_path.keep();
            }
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                return Err(format!(
                    "{} exists and is a directory; remove it",
                    self.shown
                ));
            }
            Err(e) => return Err(err(e)),
        }
        std::fs::File::from(self.parent.try_clone().map_err(err)?)
            .sync_all()
            .map_err(err)
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

    fn target(work: &Path, rel: &str) -> Result<Target, String> {
        Target::open(work, &clean_relative(rel).unwrap(), None)
    }

    /// A verified temporary file with `content` in `staging` (as `download_verified` leaves it).
    fn staged(staging: &Path, content: &[u8]) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut t = tempfile::NamedTempFile::new_in(staging).unwrap();
        t.write_all(content).unwrap();
        t
    }

    #[test]
    fn parents_are_created_and_files_placed_0600() {
        use std::os::unix::fs::PermissionsExt;
        let inst = tempfile::tempdir().unwrap();
        let work = inst.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let t = target(&work, "a/b/c.txt").unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&work.join("a")), MOUNT_DIR_MODE);
        assert_eq!(mode(&work.join("a/b")), MOUNT_DIR_MODE);
        assert!(!t.existing(None, None).unwrap());
        t.install(staged(inst.path(), b"v1"), inst.path(), None)
            .unwrap();
        assert_eq!(std::fs::read(work.join("a/b/c.txt")).unwrap(), b"v1");
        assert_eq!(mode(&work.join("a/b/c.txt")), MOUNT_FILE_MODE);
        assert!(t.existing(None, None).unwrap());
        let digest = |b: &[u8]| {
            use sha2::Digest;
            Sha256Digest(sha2::Sha256::digest(b).into())
        };
        assert!(t.existing(Some(digest(b"v1")), None).unwrap());
        assert!(!t.existing(Some(digest(b"v2")), None).unwrap());
        // Only the placed file is left: the staged temporary was renamed away.
        assert_eq!(std::fs::read_dir(inst.path()).unwrap().count(), 1);
        // Existing parents are reused.
        target(&work, "a/b/d.txt").unwrap();
    }

    #[test]
    fn a_hard_link_to_a_file_of_someone_else_is_never_taken_over() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let inst = tempfile::tempdir().unwrap();
        let work = inst.path().join("work");
        std::fs::create_dir(&work).unwrap();
        // A file the app does not own (the master key, /etc/shadow), hard-linked by the app
        // to its mount path on the same file system.
        let victim = inst.path().join("victim");
        std::fs::write(&victim, b"secret").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o640)).unwrap();
        let before = std::fs::metadata(&victim).unwrap();
        std::fs::hard_link(&victim, work.join("conf")).unwrap();
        let t = target(&work, "conf").unwrap();
        let me = crate::sys::process::geteuid();
        let app = Some((me.wrapping_add(4242), me.wrapping_add(4242)));
        // Neither as the app's file (another owner, two links) nor as narund's (two links).
        assert!(!t.existing(None, app).unwrap());
        assert!(!t.existing(None, None).unwrap());
        let after = std::fs::metadata(&victim).unwrap();
        assert_eq!(
            (after.uid(), after.gid(), after.mode()),
            (before.uid(), before.gid(), before.mode())
        );
    }

    #[test]
    fn symlinks_in_the_work_dir_are_never_followed() {
        let inst = tempfile::tempdir().unwrap();
        let work = inst.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), work.join("evil")).unwrap();
        for rel in ["evil/x", "evil/deeper/x"] {
            let e = target(&work, rel).unwrap_err();
            assert!(e.contains("/evil is a symlink"), "{e}");
        }
        std::fs::write(work.join("file"), b"").unwrap();
        let e = target(&work, "file/x").unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        // A symlink as the file itself is replaced, never written through.
        std::os::unix::fs::symlink(outside.path().join("victim"), work.join("link")).unwrap();
        let t = target(&work, "link").unwrap();
        assert!(
            t.existing(None, None)
                .unwrap_err()
                .contains("not a regular file")
        );
        t.install(staged(inst.path(), b"x"), inst.path(), None)
            .unwrap();
        assert!(!outside.path().join("victim").exists());
        assert!(
            std::fs::symlink_metadata(work.join("link"))
                .unwrap()
                .is_file()
        );
        // A directory as the file is an error naming it.
        std::fs::create_dir(work.join("dir")).unwrap();
        let t = target(&work, "dir").unwrap();
        let e = t
            .install(staged(inst.path(), b"x"), inst.path(), None)
            .unwrap_err();
        assert!(e.contains("dir"), "{e}");
        // The work dir itself must not be a symlink.
        let link = inst.path().join("worklink");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        assert!(target(&link, "x").is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}

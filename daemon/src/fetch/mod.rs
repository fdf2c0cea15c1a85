//! App binaries from the NATS Object Store, verified and cached by content.
//!
//! `narun deploy` uploads a binary as the object `<app>-<tag>-<os>-<arch>` into the `app-binaries`
//! bucket. The object store records its SHA-256 as `SHA-256=<base64url with padding>`. A node
//! fetches it like this (Go: `fetchAndStoreBinary`, see `narun-go-reference.md` §3.6):
//!
//! 1. `info()` the object. A missing object means "no build for this platform":
//!    [`FetchError::NotFound`] names the object and the platform.
//! 2. Parse the digest ([`Sha256Digest::from_nats`]); anything but `SHA-256=` is
//!    [`FetchError::BadDigest`].
//!    With `[deploy] trusted_keys` ([`BinaryCache::with_trusted_keys`]) the object must be
//!    signed by one of them for this app, tag and platform ([`narun_wire::signing`]): else
//!    [`FetchError::Signature`]. Its digest must be the signed one, else
//!    [`FetchError::SignedDigest`] — so a rewritten digest cannot point the node at another
//!    (older, cached) binary — and from here on the signed digest is the one expected.
//! 3. The cache path is content-addressed: `<data_dir>/binaries/<app>/<sha256-hex>`. If that file
//!    exists and still hashes to the digest, it is reused and nothing is downloaded.
//! 4. Otherwise the object is **streamed** into a temporary file in the same directory chunk by
//!    chunk ([`object::Chunks`]: never the whole binary in memory, and a store that does not
//!    answer is an error, not a panic) and hashed **as it streams** (the bytes written are the
//!    bytes hashed; no second read of the file), compared, made `0755` and renamed into place.
//!    Any failure (digest mismatch, short stream, full disk) deletes the temporary file: a
//!    file at a cache path is complete and verified, and older versions are untouched. The
//!    instance starts **without waiting for the disk**: the file and its directory are
//!    fsynced right after, off the start's path ([`sync_in_background`]). Only a power loss
//!    within those moments can leave a torn file at a cache path, and no cached file is ever
//!    run unverified: every use after a narund start hashes it first
//!    ([`BinaryCache::fetch_verified`], the offline start), and a corrupt one is removed and
//!    fetched again (from NATS: a node that lost power in those moments and boots without
//!    NATS cannot start that app until NATS is back). (The fsync before the rename cost a
//!    100-node fleet on one disk ~1 GiB of synchronous writes on the deploy's path:
//!    docs/benchmarks.md, "Fleet … ceiling".) Files mounted into work dirs ([`inputs`]) are
//!    still fsynced before they are placed.
//!    When the chunks do not hash to the object's digest (the store's `SHA-256=` or the
//!    expected one), [`FetchError::Mismatch`] names the object, the expected and the actual digest.
//!
//!    When the spec names the digest its platform must run (`binaryDigests`, written by
//!    `narunctl deploy`), the object's digest must be that one, else
//!    [`FetchError::SpecDigest`]: an object replaced under the same tag is never run by a
//!    spec that did not ask for it, and a spec that does (`deploy --force`) has another
//!    run hash, so nodes replace their instances. (The cache was never the problem: it is
//!    keyed by content; what kept the old binary running was an unchanged spec.)
//!
//! [`BinaryCache::gc`] keeps the newest N versions per app (by last use: a cache hit refreshes
//! the file's mtime) and never removes a digest the caller marks as protected (binaries of running
//! instances).
//!
//! When NATS is unreachable an instance can still start from a digest the node remembers:
//! [`BinaryCache::fetch_verified`] answers from the cache without talking to the store.
//!
//! **Owns** what a start takes from NATS: the binary cache (this file) and the secrets and
//! mounted files of [`inputs`]. **May call** [`crate::uring`] (hashing) and nothing else in
//! narund; instances call it.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::object_store;
use base64::Engine as _;
use tokio::io::AsyncWriteExt;

use narun_wire::signing::{TrustedKeys, VerifyError};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::uring::UringHandle;
use sha2::Digest as _;

/// Prefix of temporary download files inside an app's cache directory.
const TEMP_PREFIX: &str = ".download-";

/// Temporary files older than this are leftovers of a crash and are removed by [`BinaryCache::gc`].
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// A SHA-256 digest, convertible to and from the NATS object store form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parse the object store's `SHA-256=<base64url>` digest. Padding is optional (nats.go and
    /// async-nats write it; the Go runner trims it before comparing), and the standard base64
    /// alphabet is accepted too. Returns `None` for other algorithms or malformed values.
    pub fn from_nats(s: &str) -> Option<Sha256Digest> {
        let b64 = s.strip_prefix("SHA-256=")?;
        let normalized: String = b64
            .trim_end_matches('=')
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(normalized)
            .ok()?;
        Some(Sha256Digest(bytes.try_into().ok()?))
    }

    /// `SHA-256=<base64url with padding>`, exactly as the object store writes it.
    pub fn to_nats(&self) -> String {
        format!(
            "SHA-256={}",
            base64::engine::general_purpose::URL_SAFE.encode(self.0)
        )
    }

    /// Lower-case hex, the cache file name.
    pub fn to_hex(&self) -> String {
        use fmt::Write;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// Parse the hex form written by [`to_hex`](Self::to_hex).
    pub fn from_hex(s: &str) -> Option<Sha256Digest> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Sha256Digest(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nats())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

/// A verified, executable binary in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBinary {
    /// `<data_dir>/binaries/<app>/<sha256-hex>`, mode 0755.
    pub path: PathBuf,
    pub digest: Sha256Digest,
    /// False when the file was already cached and nothing was downloaded.
    pub downloaded: bool,
}

/// Why a binary could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "binary object '{object}' for platform {platform} not found in the '{bucket}' object store; \
         upload a build for this platform (narunctl deploy) or fix the app's tag"
    )]
    NotFound {
        object: String,
        platform: String,
        bucket: String,
    },
    #[error(
        "object '{object}' has digest '{digest}', expected 'SHA-256=<base64url>'; re-upload it with a current client"
    )]
    BadDigest { object: String, digest: String },
    #[error(
        "object '{object}': downloaded content hashes to {actual}, the expected digest is {expected}; \
         the download was discarded (a corrupt upload or transfer, or object metadata changed after the upload)"
    )]
    Mismatch {
        object: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error(
        "object '{object}': the stream ended after {got} of {expected} bytes; the download was discarded"
    )]
    ShortRead {
        object: String,
        expected: u64,
        got: u64,
    },
    #[error("I/O on {}: {source} (check free space and permissions of the data dir)", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The object store answered with an error (NATS is reachable).
    #[error("object store request for '{object}' failed: {message}")]
    Nats { object: String, message: String },
    /// No answer in time from NATS/JetStream.
    #[error(
        "object store request for '{object}' got no answer: {message} (is NATS/JetStream reachable?)"
    )]
    Unreachable { object: String, message: String },
    /// The node has trusted keys and the object's signature is missing or not valid for it.
    #[error("object '{object}': {reason}")]
    Signature { object: String, reason: VerifyError },
    /// The object is validly signed, but its digest is not the signed one.
    #[error(
        "object '{object}': the object store's digest is {actual}, the signed digest is {expected}; \
         refused (its metadata was changed after signing, e.g. to point at another binary); \
         deploy it again with `narunctl deploy --sign KEY`"
    )]
    SignedDigest {
        object: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    /// The spec names the digest to run (`binaryDigests`) and the object's is another.
    #[error(
        "object '{object}' has digest {actual}, the spec expects {expected} (binaryDigests): \
         the object was replaced after the spec was written; refused. Deploy again \
         (`narunctl deploy`, with --force to replace the binary of an existing tag)"
    )]
    SpecDigest {
        object: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The content-addressed cache of app binaries under `<data_dir>/binaries`.
#[derive(Debug, Clone)]
pub struct BinaryCache {
    root: PathBuf,
    keep_versions: usize,
    uring: UringHandle,
    /// `[deploy] trusted_keys`: when not empty, [`fetch`](Self::fetch) accepts only binaries
    /// signed by one of them.
    trusted: Arc<TrustedKeys>,
    /// Cache hits and downloads, for `/metrics`.
    stats: Arc<FetchStats>,
}

/// What [`BinaryCache::fetch_verified`] did, counted for `/metrics` ([`crate::metrics`]).
#[derive(Debug, Default)]
pub struct FetchStats {
    /// Binaries found valid in the cache.
    pub cache_hits: std::sync::atomic::AtomicU64,
    /// Downloads that failed (after their retries).
    pub failed: std::sync::atomic::AtomicU64,
    /// Bytes of verified downloads.
    pub bytes: std::sync::atomic::AtomicU64,
    /// Verified downloads and how long each took (retries included).
    pub downloads: crate::metrics::counters::Durations,
}

impl BinaryCache {
    /// A cache in `<data_dir>/binaries` that keeps `keep_versions` versions per app on
    /// [`gc`](Self::gc) (at least 1). Directories are created on first use.
    pub fn new(data_dir: impl AsRef<Path>, keep_versions: usize, uring: UringHandle) -> Self {
        BinaryCache {
            root: data_dir.as_ref().join("binaries"),
            keep_versions: keep_versions.max(1),
            uring,
            trusted: Arc::new(TrustedKeys::default()),
            stats: Arc::default(),
        }
    }

    /// Cache hits and downloads so far.
    pub fn stats(&self) -> &FetchStats {
        &self.stats
    }

    /// Accept only binaries signed by one of `keys` (none: every binary whose content matches
    /// its digest, as the Go runner does).
    pub fn with_trusted_keys(mut self, keys: TrustedKeys) -> Self {
        self.trusted = Arc::new(keys);
        self
    }

    /// `<data_dir>/binaries/<app>` (app name sanitised for the file system).
    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.root.join(sanitize(app))
    }

    /// Where the binary with this digest is cached.
    pub fn path_for(&self, app: &str, digest: &Sha256Digest) -> PathBuf {
        self.app_dir(app).join(digest.to_hex())
    }

    /// Fetch `<app>-<tag>-<os>-<arch>` from `store` (the `app-binaries` bucket), verified, from
    /// the cache when possible. `os`/`arch` use Go's names ([`narun_wire::names::go_os`],
    /// [`narun_wire::names::go_arch`]).
    pub async fn fetch(
        &self,
        store: &Bucket,
        app: &str,
        tag: &str,
        os: &str,
        arch: &str,
    ) -> Result<CachedBinary, FetchError> {
        self.fetch_expecting(store, app, tag, os, arch, None).await
    }

    /// [`fetch`](Self::fetch), and when the spec names the digest this platform must run
    /// (`binaryDigests`, `want`), only an object with that digest:
    /// [`FetchError::SpecDigest`] otherwise (the object was replaced after the spec was
    /// written), before anything is downloaded.
    pub async fn fetch_expecting(
        &self,
        store: &Bucket,
        app: &str,
        tag: &str,
        os: &str,
        arch: &str,
        want: Option<&Sha256Digest>,
    ) -> Result<CachedBinary, FetchError> {
        let object = narun_wire::names::binary_object_name(app, tag, os, arch);
        let info = store.info(&object).await.map_err(|e| match e.kind() {
            object_store::InfoErrorKind::NotFound => FetchError::NotFound {
                object: object.clone(),
                platform: format!("{os}/{arch}"),
                bucket: narun_wire::names::APP_BINARIES_BUCKET.into(),
            },
            object_store::InfoErrorKind::TimedOut => FetchError::Unreachable {
                object: object.clone(),
                message: e.to_string(),
            },
            _ => FetchError::Nats {
                object: object.clone(),
                message: e.to_string(),
            },
        })?;
        let stored =
            Sha256Digest::from_nats(&info.digest.clone().unwrap_or_default()).ok_or_else(|| {
                FetchError::BadDigest {
                    object: object.clone(),
                    digest: info.digest.clone().unwrap_or_default(),
                }
            })?;
        let expected = if self.trusted.is_empty() {
            stored
        } else {
            let signed = self
                .trusted
                .verify(app, tag, os, arch, &info.metadata)
                .map_err(|reason| FetchError::Signature {
                    object: object.clone(),
                    reason,
                })?;
            let signed = Sha256Digest(signed);
            if signed != stored {
                return Err(FetchError::SignedDigest {
                    object,
                    expected: signed,
                    actual: stored,
                });
            }
            signed
        };
        if let Some(want) = want
            && *want != expected
        {
            return Err(FetchError::SpecDigest {
                object,
                expected: *want,
                actual: expected,
            });
        }
        self.fetch_verified(store, app, &object, &expected).await
    }

    /// Make sure the binary with digest `expected` is cached for `app`, downloading `object` from
    /// `store` only when the cache has no valid copy. The digest comes from the caller (the
    /// object's info, or one remembered from an earlier run), so this also works with NATS down
    /// when the binary is cached.
    pub async fn fetch_verified(
        &self,
        store: &Bucket,
        app: &str,
        object: &str,
        expected: &Sha256Digest,
    ) -> Result<CachedBinary, FetchError> {
        let dir = self.app_dir(app);
        let path = dir.join(expected.to_hex());
        if let Some(hit) = self.cached(&path, expected).await? {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        // A download the object store does not answer (e.g. while a clustered stream or
        // JetStream's meta group elects a new leader after a server died) is tried again
        // after 250 ms, doubling, for up to FETCH_RETRY: nothing cached can replace it.
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(250);
        let (tmp, got) = loop {
            let got = download_verified(store, object, &dir, expected, Durability::Later).await;
            match got {
                Err(e @ (FetchError::Unreachable { .. } | FetchError::Nats { .. }))
                    if start.elapsed() + pause < FETCH_RETRY =>
                {
                    tracing::warn!(object, error = %e, retry_in = ?pause, "binary download failed");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                Ok(ok) => break ok,
            }
        };
        self.stats.downloads.record(start.elapsed());
        self.stats.bytes.fetch_add(got, Ordering::Relaxed);
        persist(tmp, &path, 0o755, None, Durability::Later).await?;
        sync_in_background(path.clone());
        tracing::info!(object, path = %path.display(), digest = %expected, bytes = got, "binary cached");
        Ok(CachedBinary {
            path,
            digest: *expected,
            downloaded: true,
        })
    }

    /// A cache hit: the file exists and hashes to `expected`. A corrupt file is removed.
    async fn cached(
        &self,
        path: &Path,
        expected: &Sha256Digest,
    ) -> Result<Option<CachedBinary>, FetchError> {
        match tokio::fs::metadata(path).await {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        }
        let actual = Sha256Digest(self.uring.hash_file(path).await.map_err(io_err(path))?);
        if actual != *expected {
            tracing::warn!(path = %path.display(), %expected, %actual, "cached binary is corrupt; downloading again");
            tokio::fs::remove_file(path).await.map_err(io_err(path))?;
            return Ok(None);
        }
        // Record the use for gc (newest used first) and repair the mode if someone changed it.
        let p = path.to_path_buf();
        let _ = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let f = std::fs::File::options().write(true).open(&p)?;
            f.set_modified(SystemTime::now())?;
            f.set_permissions(std::fs::Permissions::from_mode(0o755))
        })
        .await;
        Ok(Some(CachedBinary {
            path: path.to_path_buf(),
            digest: *expected,
            downloaded: false,
        }))
    }

    /// Remove old versions of `app`: keep the `keep_versions` most recently used, plus every
    /// digest in `protected` (binaries of instances that exist). Also removes temporary files
    /// left behind by a crash. Returns the removed paths.
    pub async fn gc(
        &self,
        app: &str,
        protected: &HashSet<Sha256Digest>,
    ) -> Result<Vec<PathBuf>, FetchError> {
        let dir = self.app_dir(app);
        let keep = self.keep_versions;
        let protected = protected.clone();
        tokio::task::spawn_blocking(move || gc_dir(&dir, keep, &protected))
            .await
            .map_err(|e| FetchError::Io {
                path: PathBuf::new(),
                source: io::Error::other(e),
            })?
    }
}

/// When a downloaded file reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// fsynced before it is renamed into place (and the directory after): mounted files.
    Now,
    /// Renamed into place from the page cache; the caller fsyncs it afterwards
    /// ([`sync_in_background`]): app binaries, which every later use hashes again anyway.
    Later,
}

/// Stream `object` of `store` into a new temporary file in `dir` (created if needed), hashing
/// what is written as it goes, fsync it when `durability` is [`Durability::Now`], and check
/// its size and SHA-256 against `expected`.
///
/// The chunks are read with [`object::Chunks`] (errors, never a panic, when the store's
/// stream does not answer). Returns the verified temporary file and its size. Dropping the
/// file deletes it, so every error path (mismatch, short stream, full disk) leaves nothing
/// behind. Used for app binaries and for files mounted into instance work dirs
/// (`crate::fetch::inputs`).
pub(crate) async fn download_verified(
    store: &Bucket,
    object: &str,
    dir: &Path,
    expected: &Sha256Digest,
    durability: Durability,
) -> Result<(tempfile::NamedTempFile, u64), FetchError> {
    tokio::fs::create_dir_all(dir).await.map_err(io_err(dir))?;
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    let tmp_path = tmp.path().to_path_buf();
    let mut chunks = object::Chunks::open(store, object)
        .await
        .map_err(|e| match e {
            object::ObjectError::NotFound => FetchError::NotFound {
                object: object.to_string(),
                platform: platform_of(object),
                bucket: store.name().into(),
            },
            object::ObjectError::TimedOut(_) | object::ObjectError::Consumer(_) => {
                FetchError::Unreachable {
                    object: object.to_string(),
                    message: e.to_string(),
                }
            }
            _ => FetchError::Nats {
                object: object.to_string(),
                message: e.to_string(),
            },
        })?;
    let expected_size = chunks.info().size as u64;
    let store_digest = chunks.info().digest.clone();

    let mut out = tokio::fs::File::from_std(tmp.as_file().try_clone().map_err(io_err(&tmp_path))?);
    let mut got: u64 = 0;
    // The bytes written are the bytes hashed: one pass, no second read of the file.
    let mut hasher = sha2::Sha256::new();
    // Chunks (128 KiB by default) are written as they arrive: never the whole binary in memory.
    while let Some(chunk) = chunks.next().await.map_err(|e| FetchError::Nats {
        object: object.to_string(),
        message: e.to_string(),
    })? {
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(io_err(&tmp_path))?;
        got += chunk.len() as u64;
    }
    drop(chunks);
    out.flush().await.map_err(io_err(&tmp_path))?;
    if durability == Durability::Now {
        out.sync_all().await.map_err(io_err(&tmp_path))?;
    }
    drop(out);
    // The bytes decide, not the store's digest.
    let actual = Sha256Digest(hasher.finalize().into());
    let mismatch = || {
        tracing::warn!(object, %expected, %actual, "digest mismatch, download discarded");
        FetchError::Mismatch {
            object: object.to_string(),
            expected: *expected,
            actual,
        }
    };
    // The chunks do not match the store's own digest: a mismatch comes before a short read.
    // When the bytes are the expected ones (the store's digest is only written differently)
    // the checks below decide.
    let store_says_wrong_digest = store_digest
        .as_deref()
        .and_then(Sha256Digest::from_nats)
        .is_some_and(|d| d != actual);
    if store_says_wrong_digest && actual != *expected {
        return Err(mismatch());
    }
    if got != expected_size {
        return Err(FetchError::ShortRead {
            object: object.to_string(),
            expected: expected_size,
            got,
        });
    }
    if actual != *expected {
        return Err(mismatch());
    }
    Ok((tmp, got))
}

/// fsync `path` and its directory on the blocking pool, not waited for: the disk catches up
/// with a binary that is already running (see the module docs). A failure is logged; the
/// next use of the file hashes it anyway.
pub(crate) fn sync_in_background(path: PathBuf) {
    tokio::task::spawn_blocking(move || {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let synced = std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::File::open(&dir)?.sync_all());
        if let Err(error) = synced {
            tracing::warn!(path = %path.display(), %error, "fsync of a cached binary failed");
        }
    });
}

/// How long [`BinaryCache::fetch_verified`] retries a download the object store did not
/// answer.
pub const FETCH_RETRY: std::time::Duration = std::time::Duration::from_secs(20);

/// Make the verified temporary file `tmp` final: set `mode` (and `owner` uid/gid when given),
/// rename it atomically to `dest` (same directory) and, with [`Durability::Now`], fsync the
/// directory, so after a crash `dest` is either the old file or the complete new one.
pub(crate) async fn persist(
    tmp: tempfile::NamedTempFile,
    dest: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
    durability: Durability,
) -> Result<(), FetchError> {
    let final_path = dest.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), FetchError> {
        let tmp_path = tmp.path().to_path_buf();
        std::fs::set_permissions(&tmp_path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp_path))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&tmp_path, Some(uid), Some(gid)).map_err(io_err(&tmp_path))?;
        }
        tmp.persist(&final_path).map_err(|e| FetchError::Io {
            path: final_path.clone(),
            source: e.error,
        })?;
        if durability == Durability::Later {
            return Ok(());
        }
        let dir = final_path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    })
    .await
    .map_err(|e| FetchError::Io {
        path: dest.to_path_buf(),
        source: io::Error::other(e),
    })?
}

fn gc_dir(
    dir: &Path,
    keep: usize,
    protected: &HashSet<Sha256Digest>,
) -> Result<Vec<PathBuf>, FetchError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let now = SystemTime::now();
    let mut versions = Vec::new();
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else { continue };
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if name.starts_with(TEMP_PREFIX) {
            if now.duration_since(mtime).unwrap_or_default() > STALE_TEMP
                && std::fs::remove_file(&path).is_ok()
            {
                removed.push(path);
            }
            continue;
        }
        if let Some(d) = Sha256Digest::from_hex(&name) {
            versions.push((mtime, d, path));
        }
    }
    // Newest first; ties broken by name so the order is stable.
    versions.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, digest, path) in versions.into_iter().skip(keep) {
        if protected.contains(&digest) {
            continue;
        }
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        removed.push(path);
    }
    Ok(removed)
}

/// `<os>/<arch>` from an object name `<app>-<tag>-<os>-<arch>` (best effort, for messages).
fn platform_of(object: &str) -> String {
    let mut parts = object.rsplitn(3, '-');
    match (parts.next(), parts.next()) {
        (Some(arch), Some(os)) => format!("{os}/{arch}"),
        _ => "unknown".into(),
    }
}

/// File-system-safe name (Go's `san`): keep `[A-Za-z0-9._-]`, map the rest to `_`, at most 100
/// characters, and never `.` or `..`.
pub fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    match s.as_str() {
        "" => "_".into(),
        "." => "_._".into(),
        ".." => "_.._".into(),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_with_and_without_padding() {
        use sha2::Digest;
        // The SHA-256 of the empty string, whose forms are well known.
        let empty = Sha256Digest(sha2::Sha256::digest(b"").into());
        let nats = empty.to_nats();
        assert_eq!(nats, "SHA-256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU=");
        assert_eq!(Sha256Digest::from_nats(&nats), Some(empty));
        assert_eq!(
            Sha256Digest::from_nats(nats.trim_end_matches('=')),
            Some(empty)
        );
        assert_eq!(
            Sha256Digest::from_nats("SHA-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
            Some(empty)
        );
        assert_eq!(
            empty.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Sha256Digest::from_hex(&empty.to_hex()), Some(empty));
        assert_eq!(Sha256Digest::from_nats("SHA-512=abc"), None);
        assert_eq!(Sha256Digest::from_nats("SHA-256=tooshort"), None);
    }

    #[test]
    fn sanitize_like_go() {
        assert_eq!(sanitize("hello"), "hello");
        assert_eq!(sanitize("a/b c"), "a_b_c");
        assert_eq!(sanitize(".."), "_.._");
        assert_eq!(sanitize("."), "_._");
        assert_eq!(sanitize(&"x".repeat(150)).len(), 100);
    }

    #[test]
    fn platform_from_object_name() {
        assert_eq!(platform_of("my-app-v1-linux-arm64"), "linux/arm64");
    }
}

pub mod inputs;
pub mod object;

pub use object::Bucket;

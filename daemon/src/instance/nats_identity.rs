//! The NATS identity of an app: apps never get narund's own credentials.
//!
//! An instance's environment holds `NATS_URL` (and `NATS_TLS_CA`, a trust anchor, not a
//! credential), plus, in this order of precedence (`[apps]` of `narund.toml`):
//!
//! 1. **`nats_creds_dir`**: when `<dir>/<app>.creds` exists, a copy of it;
//! 2. **`nats_account_signing_key`**: a user JWT minted for the instance, signed with the
//!    account's key, allowed only
//!    * to subscribe to the app's service subject `<app>` (any queue group), the discovery
//!      subjects `$SRV.PING|INFO|STATS`, `$SRV.*.<app>`, `$SRV.*.<app>.*`, and its own
//!      inboxes `_INBOX_<app>.>`;
//!    * to publish to its own inboxes, to its service's announcement `narun.svc.up.<app>`
//!      (`narun_wire::micro::announce_subject`: gateways waiting for it learn it serves), and to the reply subjects of requests it received
//!      (`resp`: any number of messages for [`RESPONSE_TTL`], so streamed replies work);
//!    * to read its own configuration key of `narun-config` (`narun::config`: a direct get
//!      of that key, and a subscription to its republished changes `narun.cfg.<app>`;
//!      [`narun_wire::app_config::read_permissions`], no consumer creation); narund adds
//!      the republish to an older bucket at start ([`ensure_config_bucket`]);
//!    * to send requests to the services its spec names in `calls` and `after` (their
//!      subject `<service>`; the answers come to its inbox), and to no other app;
//!    * to use its own locks in the KV bucket `narun-locks` (keys `<app>.*`,
//!      [`narun_wire::locks::app_permissions`]); narund creates that bucket
//!      ([`ensure_locks_bucket`]) since the app may not;
//!
//!    with `NARUN_INBOX_PREFIX=_INBOX_<app>` so the `narun` library uses those inboxes.
//!    The JWT is valid for [`USER_JWT_TTL`]; [`renew_loop`] rewrites the file with a new
//!    one (and a new user key) once it is [`RENEW_AFTER`] old. A client that reads the
//!    file at every connect (the `narun` library, nats.go's `UserCredentials`) keeps
//!    working: when the server closes the connection at the old JWT's expiry, the
//!    reconnect uses the new file;
//! 3. neither: no credentials (narund warns once at start that apps connect anonymously).
//!
//! The file is `<runtime_dir>/nats/<app>/<instance>.<run>.creds` (`NATS_CREDS`; one per
//! run, since the old and the new run of an instance overlap during a replace): the
//! directories belong to root (0711), the file to root with the app's group, mode 0440,
//! so the app reads it but cannot change it (narund renews from the path, never from the
//! file's claims). It is removed when the run ends ([`CredsFile`]); a file of no live run
//! (left by a narund that died) is removed by the next renewal check.

use crate::config::{AppNats, Settings};
use base64::Engine;
use narun_wire::names::env;
use nkeys::KeyPair;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a minted user JWT is valid.
pub const USER_JWT_TTL: Duration = Duration::from_secs(24 * 3600);
/// A minted JWT is replaced once its file is this old (8 h before it expires).
pub const RENEW_AFTER: Duration = Duration::from_secs(16 * 3600);
/// How often [`renew_loop`] looks for JWTs to renew.
pub const RENEW_CHECK_EVERY: Duration = Duration::from_secs(600);
/// How long an app may answer a request it received (all messages of a streamed reply).
pub const RESPONSE_TTL: Duration = Duration::from_secs(600);

/// Why an app's NATS credentials could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("NATS credentials of app {app}: {what} {path}: {source}")]
    Io {
        app: String,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "NATS credentials of app {app}: {message} (check [apps] nats_account_signing_key in narund.toml)"
    )]
    Key { app: String, message: String },
}

/// Read an account nkey seed (`SA…`) from `path`.
pub fn load_signing_key(path: &Path) -> Result<KeyPair, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let seed = text.trim();
    if !seed.starts_with("SA") {
        return Err(format!(
            "{} must hold an account nkey seed (SA…, from `nsc` or `nk -gen account`)",
            path.display()
        ));
    }
    KeyPair::from_seed(seed).map_err(|e| format!("{}: invalid nkey seed: {e}", path.display()))
}

/// The inbox prefix of app `app`'s minted NATS user.
pub fn inbox_prefix(app: &str) -> String {
    format!("_INBOX_{app}")
}

/// The services an app of `spec` may call: its `calls` and its `after`, once each.
pub fn callees(spec: &narun_spec::AppSpec) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in spec.calls.iter().chain(&spec.after) {
        if !out.contains(s) && *s != spec.name {
            out.push(s.clone());
        }
    }
    out
}

/// What a minted user of `app` may publish to and subscribe to; it may call the services
/// `callees` (valid service names: one subject token each, checked by the spec).
pub fn permissions(app: &str, callees: &[String]) -> (Vec<String>, Vec<String>) {
    let inbox = format!("{}.>", inbox_prefix(app));
    let mut publish = vec![inbox.clone(), narun_wire::micro::announce_subject(app)];
    // `narun::config`: a direct get of its own key of `narun-config`, nothing else there.
    publish.extend(narun_wire::app_config::read_permissions(app));
    publish.extend(
        callees
            .iter()
            .filter(|c| narun_spec::deps::service_name_problem(c).is_none())
            .cloned(),
    );
    publish.extend(narun_wire::locks::app_permissions(app));
    let mut subscribe = vec![
        app.to_owned(),
        "$SRV.PING".into(),
        "$SRV.INFO".into(),
        "$SRV.STATS".into(),
        format!("$SRV.*.{app}"),
        format!("$SRV.*.{app}.*"),
        inbox,
    ];
    // `narun::config`: the republished changes of its own key.
    subscribe.extend(narun_wire::app_config::subscribe_permissions(app));
    (publish, subscribe)
}

/// The claims of a user JWT for instance `instance` of `app` (NATS JWT v2).
pub fn user_claims(
    app: &str,
    callees: &[String],
    instance: &str,
    user: &str,
    issuer: &str,
    account: Option<&str>,
    now: u64,
) -> serde_json::Value {
    let (publish, subscribe) = permissions(app, callees);
    let mut nats = serde_json::json!({
        "pub": { "allow": publish },
        "sub": { "allow": subscribe },
        "resp": { "max": -1, "ttl": RESPONSE_TTL.as_nanos() as u64 },
        "subs": -1, "data": -1, "payload": -1,
        "type": "user", "version": 2,
    });
    if let Some(account) = account.filter(|a| *a != issuer) {
        nats["issuer_account"] = account.into();
    }
    serde_json::json!({
        "iat": now,
        "exp": now + USER_JWT_TTL.as_secs(),
        "iss": issuer,
        "name": instance,
        "sub": user,
        "nats": nats,
    })
}

/// Sign `claims` as a NATS JWT (`ed25519-nkey`) with `signer`; sets `jti`.
pub fn encode_jwt(mut claims: serde_json::Value, signer: &KeyPair) -> Result<String, String> {
    use sha2::Digest;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let digest = sha2::Sha256::digest(claims.to_string().as_bytes());
    claims["jti"] = digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<String>()
        .into();
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = b64.encode(claims.to_string());
    let signing_input = format!("{header}.{body}");
    let sig = signer
        .sign(signing_input.as_bytes())
        .map_err(|e| format!("signing: {e}"))?;
    Ok(format!("{signing_input}.{}", b64.encode(sig)))
}

/// A `.creds` file (the format `nsc` writes and NATS clients read).
pub fn creds_text(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// Mint the `.creds` text of a new user for `instance` of `app`, signed with `signer`.
pub fn mint(
    app: &str,
    callees: &[String],
    instance: &str,
    signer: &KeyPair,
    account: Option<&str>,
    now: u64,
) -> Result<String, String> {
    let user = KeyPair::new_user();
    let claims = user_claims(
        app,
        callees,
        instance,
        &user.public_key(),
        &signer.public_key(),
        account,
        now,
    );
    let jwt = encode_jwt(claims, signer)?;
    let seed = user.seed().map_err(|e| e.to_string())?;
    Ok(creds_text(&jwt, &seed))
}

/// Where run `run_id` of instance `instance` of `app` finds its credentials.
pub fn creds_path(runtime_dir: &Path, app: &str, instance: &str, run_id: &str) -> PathBuf {
    let s = crate::fetch::sanitize;
    runtime_dir
        .join("nats")
        .join(s(app))
        .join(format!("{}.{}.creds", s(instance), s(run_id)))
}

/// The credentials files of the runs of this narund (what renewal renews), with the
/// services each run may call (a renewed user keeps them).
static LIVE: std::sync::Mutex<std::collections::BTreeMap<PathBuf, Vec<String>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The callees of a live run's file; `None`: no live run has it.
fn live_callees(path: &Path) -> Option<Vec<String>> {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(path)
        .cloned()
}

/// The operator's creds file of `app` when `[apps] nats_creds_dir` has one.
fn provisioned(cfg: &AppNats, app: &str) -> Option<PathBuf> {
    let p = cfg.creds_dir.as_ref()?.join(format!("{app}.creds"));
    p.is_file().then_some(p)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The credentials file of a run: removed when the run ends.
#[derive(Debug)]
pub struct CredsFile(PathBuf);

impl CredsFile {
    fn hold(path: PathBuf, callees: &[String]) -> CredsFile {
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.clone(), callees.to_vec());
        CredsFile(path)
    }

    /// The file of run `run_id` of `instance`, if one exists (a re-adopted run whose app
    /// may call `callees`).
    pub fn existing(
        settings: &Settings,
        app: &str,
        instance: &str,
        run_id: &str,
        callees: &[String],
    ) -> Option<CredsFile> {
        let p = creds_path(&settings.runtime_dir, app, instance, run_id);
        p.is_file().then(|| CredsFile::hold(p, callees))
    }
}

impl Drop for CredsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// The NATS variables of an instance's environment (name, value).
pub type NatsEnv = Vec<(String, String)>;

/// The NATS variables of an instance's environment, and its credentials file when it gets
/// one. `owner` is the app's (uid, gid) when narund runs as root; a minted user may call
/// the services `callees` ([`callees`]).
pub fn prepare(
    settings: &Settings,
    app: &str,
    instance: &str,
    run_id: &str,
    owner: Option<(u32, u32)>,
    callees: &[String],
) -> Result<(NatsEnv, Option<CredsFile>), IdentityError> {
    let cfg = &settings.app_nats;
    // Never narund's `user:password@` (a URL may carry it).
    let mut vars = vec![(
        env::NATS_URL.to_owned(),
        settings.nats.url_without_userinfo(),
    )];
    if let Some(ca) = &settings.nats.tls_ca {
        vars.push((env::NATS_TLS_CA.into(), ca.display().to_string()));
    }
    let text = if let Some(src) = provisioned(cfg, app) {
        std::fs::read_to_string(&src).map_err(|source| IdentityError::Io {
            app: app.into(),
            what: "reading",
            path: src.clone(),
            source,
        })?
    } else if let Some(key) = &cfg.signing_key {
        let key_err = |message: String| IdentityError::Key {
            app: app.into(),
            message,
        };
        let signer = load_signing_key(key).map_err(key_err)?;
        vars.push((env::INBOX_PREFIX.into(), inbox_prefix(app)));
        mint(
            app,
            callees,
            instance,
            &signer,
            cfg.account.as_deref(),
            unix_now(),
        )
        .map_err(key_err)?
    } else {
        return Ok((vars, None));
    };
    let path = creds_path(&settings.runtime_dir, app, instance, run_id);
    let file = CredsFile::hold(path.clone(), callees);
    write_creds(&path, &text, owner.map(|(_, gid)| gid)).map_err(|(what, p, source)| {
        IdentityError::Io {
            app: app.into(),
            what,
            path: p,
            source,
        }
    })?;
    vars.push((env::NATS_CREDS.into(), path.display().to_string()));
    Ok((vars, Some(file)))
}

type WriteError = (&'static str, PathBuf, std::io::Error);

/// Write `text` to `path` atomically: root's file, readable by group `gid` (0440; 0400
/// without a group), below directories of narund's (0711, not listable).
fn write_creds(path: &Path, text: &str, gid: Option<u32>) -> Result<(), WriteError> {
    let app_dir = path.parent().expect("creds path has a parent");
    for dir in [app_dir.parent().expect("creds dir has a parent"), app_dir] {
        std::fs::create_dir_all(dir).map_err(|e| ("creating", dir.to_owned(), e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| ("chmod", dir.to_owned(), e))?;
    }
    let tmp = path.with_extension(format!("creds.tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mode = if gid.is_some() { 0o440 } else { 0o400 };
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o400)
            .open(&tmp)?;
        if let Some(gid) = gid {
            std::os::unix::fs::fchown(&f, None, Some(gid))?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(("writing", tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ("renaming to", path.to_owned(), e)
    })
}

/// Renew the minted credentials below `<runtime_dir>/nats` whose file is at least
/// [`RENEW_AFTER`] old (by `now`): a new user and JWT for the same app and instance (from
/// the path, never from the file), same group. Apps with a provisioned creds file are
/// left alone. Files of no live run of this narund are removed. Returns how many files
/// were renewed.
pub fn renew_due(settings: &Settings, signer: Option<&KeyPair>, now: SystemTime) -> usize {
    let cfg = &settings.app_nats;
    let Ok(apps) = std::fs::read_dir(settings.runtime_dir.join("nats")) else {
        return 0;
    };
    let mut renewed = 0;
    for app_dir in apps.flatten() {
        let app = app_dir.file_name().to_string_lossy().into_owned();
        let signer = signer.filter(|_| provisioned(cfg, &app).is_none());
        let Ok(files) = std::fs::read_dir(app_dir.path()) else {
            continue;
        };
        for f in files.flatten() {
            let path = f.path();
            let Some(instance) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".creds"))
                .and_then(|n| n.split_once('.'))
                .map(|(instance, _run)| instance.to_owned())
            else {
                continue;
            };
            let Some(callees) = live_callees(&path) else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let Some(signer) = signer else {
                continue;
            };
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if !meta.is_file() || age < RENEW_AFTER {
                continue;
            }
            let secs = now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let gid = (meta.mode() & 0o040 != 0).then_some(meta.gid());
            let result = mint(
                &app,
                &callees,
                &instance,
                signer,
                cfg.account.as_deref(),
                secs,
            )
            .map_err(|e| e.to_string())
            .and_then(|text| {
                write_creds(&path, &text, gid)
                    .map_err(|(what, p, e)| format!("{what} {}: {e}", p.display()))
            });
            match result {
                Ok(()) => renewed += 1,
                Err(e) => {
                    tracing::warn!(app = %app, instance = %instance, error = %e, "cannot renew the app's NATS credentials; it loses NATS access when its JWT expires")
                }
            }
        }
    }
    renewed
}

/// Create the KV bucket `narun-locks` when it does not exist, retrying (1 s doubling up
/// to a minute) until it exists or `stop`: the users narund mints may open it but not
/// create it ([`narun_wire::locks::app_permissions`]). Nothing to do when apps get no
/// minted users.
pub async fn ensure_locks_bucket(
    settings: Settings,
    client: async_nats::Client,
    stop: tokio_util::sync::CancellationToken,
) {
    if settings.app_nats.signing_key.is_none() {
        return;
    }
    let js = async_nats::jetstream::new(client);
    let mut delay = Duration::from_secs(1);
    loop {
        let ensure =
            narun_wire::jetstream::LOCKS.ensure_replicas(&js, settings.nats.stream_replicas);
        match tokio::time::timeout(Duration::from_secs(10), ensure).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot create the narun-locks bucket yet; retrying")
            }
            Err(_) => tracing::debug!("creating the narun-locks bucket timed out; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// Add the republish `narun::config` follows to the KV bucket `narun-config` when it exists
/// without (made by an older narunctl; [`narun_wire::app_config::upgrade`]), retrying (1 s
/// doubling up to a minute) until done or `stop`. A missing bucket is left to narunctl
/// (`config set` creates it with the republish).
pub async fn ensure_config_bucket(
    client: async_nats::Client,
    stop: tokio_util::sync::CancellationToken,
) {
    let js = async_nats::jetstream::new(client);
    let mut delay = Duration::from_secs(1);
    loop {
        let upgrade = narun_wire::app_config::upgrade(&js);
        match tokio::time::timeout(Duration::from_secs(10), upgrade).await {
            Ok(Ok(narun_wire::app_config::RepublishState::Refused(why))) => {
                tracing::warn!(
                    reason = %why,
                    "the KV bucket narun-config does not republish its changes and the server refused to add that (nats-server < 2.10): apps see configuration changes within 30 s instead of at once"
                );
                return;
            }
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot check the narun-config bucket yet; retrying")
            }
            Err(_) => tracing::debug!("checking the narun-config bucket timed out; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// Every [`RENEW_CHECK_EVERY`] until `stop`: renew minted credentials and remove files of
/// runs that no longer exist (nothing to do when apps get no credentials). The key is
/// read again each time, so a rotated key file is used from the next renewal on.
pub async fn renew_loop(settings: Settings, stop: tokio_util::sync::CancellationToken) {
    if !settings.app_nats.configured() {
        return;
    }
    let key = settings.app_nats.signing_key.clone();
    let mut tick = tokio::time::interval(RENEW_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (settings, key) = (settings.clone(), key.clone());
        let work = tokio::task::spawn_blocking(move || {
            let signer = key.as_deref().and_then(|k| {
                load_signing_key(k)
                    .inspect_err(|e| tracing::warn!(error = %e, "cannot renew apps' NATS credentials: the signing key cannot be read"))
                    .ok()
            });
            renew_due(&settings, signer.as_ref(), SystemTime::now());
        });
        let _ = work.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(jwt: &str) -> (serde_json::Value, serde_json::Value) {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let h = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        let c = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        (h, c)
    }

    #[test]
    fn minted_jwt_is_signed_and_scoped_to_the_app() {
        let account = KeyPair::new_account();
        let text = mint("web", &[], "web-0", &account, None, 1_000).unwrap();
        let (jwt, user) = narun_wire::connect::parse_creds(&text).unwrap();
        let (h, c) = decode(&jwt);
        assert_eq!(h["alg"], "ed25519-nkey");
        assert_eq!(c["iss"], account.public_key());
        assert_eq!(c["sub"], user.public_key());
        assert_eq!(c["name"], "web-0");
        assert_eq!(c["iat"], 1_000);
        assert_eq!(c["exp"], 1_000 + USER_JWT_TTL.as_secs());
        assert!(c["jti"].as_str().unwrap().len() == 64);
        assert!(c["nats"].get("issuer_account").is_none());
        let publish: Vec<String> =
            serde_json::from_value(c["nats"]["pub"]["allow"].clone()).unwrap();
        let mut want = vec![
            "_INBOX_web.>".to_string(),
            "narun.svc.up.web".to_string(),
            "$JS.API.DIRECT.GET.KV_narun-config.$KV.narun-config.web".to_string(),
        ];
        want.extend(narun_wire::locks::app_permissions("web"));
        assert_eq!(publish, want);
        let sub: Vec<String> = serde_json::from_value(c["nats"]["sub"]["allow"].clone()).unwrap();
        assert_eq!(
            sub,
            [
                "web",
                "$SRV.PING",
                "$SRV.INFO",
                "$SRV.STATS",
                "$SRV.*.web",
                "$SRV.*.web.*",
                "_INBOX_web.>",
                "narun.cfg.web"
            ]
        );
        // No consumer creation on narun-config (a push consumer delivers anywhere).
        assert!(
            !publish
                .iter()
                .any(|p| p.contains("narun-config") && p.contains("CONSUMER"))
        );
        assert!(
            !sub.iter()
                .any(|s| s.contains('>') && !s.starts_with("_INBOX_web."))
        );
        assert_eq!(c["nats"]["resp"]["max"], -1);
        // The signature covers header and claims.
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        account.verify(input.as_bytes(), &sig).unwrap();
        assert!(account.verify(b"other", &sig).is_err());
    }

    #[test]
    fn an_app_may_call_what_its_spec_names_and_nothing_else() {
        let mut spec = narun_spec::AppSpec::new("web", "v1");
        spec.calls = vec!["db".into(), "auth".into()];
        spec.after = vec!["db".into(), "cache".into()];
        assert_eq!(callees(&spec), ["db", "auth", "cache"]);
        let (publish, subscribe) = permissions("web", &callees(&spec));
        for svc in ["db", "auth", "cache"] {
            assert!(publish.contains(&svc.to_string()), "{svc}");
            assert!(!subscribe.contains(&svc.to_string()), "{svc}");
        }
        // A name that is not one subject token is never granted (the spec refuses it too).
        let (publish, _) = permissions("web", &["a.>".to_string(), ">".into(), "*".into()]);
        assert!(
            !publish.iter().any(|p| p == ">" || p == "*" || p == "a.>"),
            "{publish:?}"
        );
        // No wildcard outside the app's inbox and its own lock keys.
        for p in &publish {
            assert!(
                !p.contains('>')
                    || p.starts_with("_INBOX_web.")
                    || p.contains(".web.>")
                    || p.starts_with("$JS.FC.KV_"),
                "{p}"
            );
        }
    }

    #[test]
    fn a_signing_key_names_its_account() {
        let (account, signing) = (KeyPair::new_account(), KeyPair::new_account());
        let text = mint("a", &[], "a-1", &signing, Some(&account.public_key()), 5).unwrap();
        let (jwt, _) = narun_wire::connect::parse_creds(&text).unwrap();
        let (_, c) = decode(&jwt);
        assert_eq!(c["iss"], signing.public_key());
        assert_eq!(c["nats"]["issuer_account"], account.public_key());
        // The account's own key: no issuer_account.
        let text = mint("a", &[], "a-1", &account, Some(&account.public_key()), 5).unwrap();
        let (_, c) = decode(&narun_wire::connect::parse_creds(&text).unwrap().0);
        assert!(c["nats"].get("issuer_account").is_none());
    }

    #[test]
    fn signing_keys_must_be_account_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, KeyPair::new_user().seed().unwrap()).unwrap();
        assert!(
            load_signing_key(&p)
                .unwrap_err()
                .contains("account nkey seed")
        );
        std::fs::write(&p, "SAxyz").unwrap();
        assert!(load_signing_key(&p).unwrap_err().contains("invalid"));
        let acc = KeyPair::new_account();
        std::fs::write(&p, format!("  {}\n", acc.seed().unwrap())).unwrap();
        assert_eq!(load_signing_key(&p).unwrap().public_key(), acc.public_key());
        assert!(
            load_signing_key(&dir.path().join("none"))
                .unwrap_err()
                .contains("cannot read")
        );
    }

    fn settings(dir: &Path, cfg: AppNats) -> Settings {
        Settings {
            runtime_dir: dir.join("run"),
            app_nats: cfg,
            ..Settings::default()
        }
    }

    fn env_of(vars: &[(String, String)], k: &str) -> Option<String> {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn precedence_provisioned_then_minted_then_none() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("acc.nk");
        std::fs::write(&key, KeyPair::new_account().seed().unwrap()).unwrap();
        let creds_dir = dir.path().join("apps");
        std::fs::create_dir(&creds_dir).unwrap();
        std::fs::write(creds_dir.join("a.creds"), "provisioned").unwrap();
        let mut s = settings(
            dir.path(),
            AppNats {
                creds_dir: Some(creds_dir),
                signing_key: Some(key),
                account: None,
            },
        );
        s.nats.password = Some("narund-secret".into());
        s.nats.user = Some("narund".into());

        let (vars, file) = prepare(&s, "a", "a-0", "r1", None, &[]).unwrap();
        let path = creds_path(&s.runtime_dir, "a", "a-0", "r1");
        assert_eq!(
            env_of(&vars, "NATS_CREDS"),
            Some(path.display().to_string())
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "provisioned");
        assert_eq!(env_of(&vars, "NARUN_INBOX_PREFIX"), None);
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o400);
        drop(file);
        assert!(!path.exists(), "removed when the run ends");

        let (vars, _file) = prepare(&s, "b", "b-3", "r2", Some((65534, 65534)), &[]).unwrap();
        let path = creds_path(&s.runtime_dir, "b", "b-3", "r2");
        // The next run of the same instance (a replace) has its own file.
        let (_, next) = prepare(&s, "b", "b-3", "r3", Some((65534, 65534)), &[]).unwrap();
        drop(next);
        assert!(path.exists(), "the other run's file stays");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("BEGIN NATS USER JWT")
        );
        assert_eq!(
            env_of(&vars, "NARUN_INBOX_PREFIX").as_deref(),
            Some("_INBOX_b")
        );
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o440);
        assert_eq!(meta.gid(), 65534);
        assert_eq!(meta.uid(), nix_uid());
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(dir_mode, 0o711);

        s.app_nats = AppNats::default();
        let (vars, file) = prepare(&s, "c", "c-0", "r1", None, &[]).unwrap();
        assert!(file.is_none());
        assert_eq!(vars, [("NATS_URL".to_string(), s.nats.url.clone())]);
        // Never narund's own credentials.
        for (k, v) in vars {
            assert!(!v.contains("narund-secret") && k != "NATS_PASSWORD" && k != "NATS_USER");
        }
    }

    fn nix_uid() -> u32 {
        std::fs::metadata("/proc/self").unwrap().uid()
    }

    #[test]
    fn renewal_replaces_old_minted_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let acc = KeyPair::new_account();
        let key = dir.path().join("acc.nk");
        std::fs::write(&key, acc.seed().unwrap()).unwrap();
        let creds_dir = dir.path().join("apps");
        std::fs::create_dir(&creds_dir).unwrap();
        let s = settings(
            dir.path(),
            AppNats {
                creds_dir: Some(creds_dir.clone()),
                signing_key: Some(key),
                account: None,
            },
        );
        let (_, _minted) = prepare(&s, "m", "m-0", "r1", None, &["calc".to_string()]).unwrap();
        let path = creds_path(&s.runtime_dir, "m", "m-0", "r1");
        // A file of a run that no longer exists (narund died) goes at the next check.
        let (_, gone) = prepare(&s, "m", "m-1", "r1", None, &[]).unwrap();
        let orphan = creds_path(&s.runtime_dir, "m", "m-1", "r1");
        std::mem::forget(gone);
        super::LIVE.lock().unwrap().remove(&orphan);
        assert!(orphan.exists());
        let before = std::fs::read_to_string(&path).unwrap();
        let now = SystemTime::now();
        assert_eq!(renew_due(&s, Some(&acc), now), 0, "young files stay");
        assert!(!orphan.exists(), "orphaned file removed");
        let later = now + RENEW_AFTER + Duration::from_secs(1);
        // A provisioned file of another app is never touched.
        std::fs::write(creds_dir.join("p.creds"), "op").unwrap();
        let (_, _prov) = prepare(&s, "p", "p-0", "r1", None, &[]).unwrap();
        assert_eq!(renew_due(&s, Some(&acc), later), 1);
        let after = std::fs::read_to_string(&path).unwrap();
        assert_ne!(before, after);
        let (jwt, _) = narun_wire::connect::parse_creds(&after).unwrap();
        let (_, c) = decode(&jwt);
        assert_eq!(c["name"], "m-0");
        // The renewed user may still call what the run's spec allowed.
        let publish: Vec<String> =
            serde_json::from_value(c["nats"]["pub"]["allow"].clone()).unwrap();
        assert!(publish.contains(&"calc".to_string()), "{publish:?}");
        let later_secs = later.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(c["exp"], later_secs + USER_JWT_TTL.as_secs());
        assert_eq!(
            std::fs::read_to_string(creds_path(&s.runtime_dir, "p", "p-0", "r1")).unwrap(),
            "op"
        );
    }
}

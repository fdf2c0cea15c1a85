//! NATS connection settings shared by apps, narund, the gateway and narunctl.
//!
//! The same settings travel three ways: from narund's TOML config, from command
//! line flags, and from narund to every app through the environment:
//!
//! | env var | meaning |
//! |---|---|
//! | `NATS_URL` | server URL(s), comma separated (default `nats://127.0.0.1:4222`) |
//! | `NATS_CREDS` | path of a `.creds` file (JWT + nkey seed) |
//! | `NATS_NKEY_SEED_FILE` | path of a file holding an nkey seed (`SU…`) |
//! | `NATS_USER`, `NATS_PASSWORD` | user/password authentication |
//! | `NATS_TLS_CA` | PEM file of CA certificates to trust (enables TLS) |
//! | `NATS_TLS_CERT`, `NATS_TLS_KEY` | client certificate and key (PEM) for mutual TLS |
//! | `NARUN_INBOX_PREFIX` | prefix of the client's reply inboxes instead of `_INBOX` (narund sets `_INBOX_<app>` for apps whose NATS user may only use its own inboxes) |
//!
//! A `.creds` file is read again at every (re)connect, so a file rewritten with a renewed
//! JWT (narund renews the JWTs it mints for apps) is used from the next reconnect on.
//!
//! ## Server lists and failover
//!
//! `url` may name several servers of one cluster, comma separated
//! (`nats://a:4222,nats://b:4222`); [`NatsSettings::server_addrs`] is the one parser
//! (every process of narun goes through it) and names the entry that is wrong. The
//! servers are tried **in the order given** (the first one is preferred; give devices
//! different orders to spread them), the ones the server announces in its INFO
//! (`connect_urls`) are added after them. A lost connection is re-established on the
//! next server at once (the first attempt has no delay, then 25 ms, 50 ms, … capped at
//! 1 s per attempt), a PING every 10 s finds a silent server dead after two missed PONGs.
//!
//! async-nats keeps a request pending across a reconnect until its own timeout, though
//! its message or its reply was lost with the old connection. [`ConnectionEvents`]
//! (from [`NatsSettings::connect_with_events`]) says when the connection was lost, so a
//! caller can fail or retry such a request at once ([`ConnectionEvents::unless_lost`]).

use crate::names::env;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Default server URL, as in nats.go.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// Where and how to connect to NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    pub url: String,
    pub creds: Option<PathBuf>,
    pub nkey_seed: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Prefix of reply inboxes (`NARUN_INBOX_PREFIX`); `None` = `_INBOX`. Only from the
    /// environment: narund's own `[nats]` table has no such key.
    #[serde(skip)]
    pub inbox_prefix: Option<String>,
    /// Replicas of the JetStream streams narun creates (`app-configs`, `app-binaries`, …):
    /// 1 to 5; `None` = 3 when the cluster announces ≥ 3 servers, else 1
    /// ([`crate::jetstream::default_replicas`]). Never from or to the environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_replicas: Option<usize>,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: DEFAULT_URL.to_owned(),
            creds: None,
            nkey_seed: None,
            user: None,
            password: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            inbox_prefix: None,
            stream_replicas: None,
        }
    }
}

/// A setting that cannot work, found before connecting.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("NATS settings: {0}")]
    Settings(String),
    #[error("reading NATS credentials from {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
}

impl NatsSettings {
    /// Read the settings from the environment variables in the table above.
    /// Unset or empty variables keep the defaults.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`from_env`](Self::from_env), with a custom lookup (for tests and
    /// for reading another process's environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let mut s = NatsSettings::default();
        if let Some(url) = get(env::NATS_URL) {
            s.url = url;
        }
        s.creds = get(env::NATS_CREDS).map(PathBuf::from);
        s.nkey_seed = get(env::NATS_NKEY_SEED_FILE).map(PathBuf::from);
        s.user = get(env::NATS_USER);
        s.password = get(env::NATS_PASSWORD);
        s.tls_ca = get(env::NATS_TLS_CA).map(PathBuf::from);
        s.tls_cert = get(env::NATS_TLS_CERT).map(PathBuf::from);
        s.tls_key = get(env::NATS_TLS_KEY).map(PathBuf::from);
        s.inbox_prefix = get(env::INBOX_PREFIX);
        s
    }

    /// The environment variables that give an app these settings.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![(env::NATS_URL, self.url.clone())];
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        for (k, val) in [
            (env::NATS_CREDS, path(&self.creds)),
            (env::NATS_NKEY_SEED_FILE, path(&self.nkey_seed)),
            (env::NATS_USER, self.user.clone()),
            (env::NATS_PASSWORD, self.password.clone()),
            (env::NATS_TLS_CA, path(&self.tls_ca)),
            (env::NATS_TLS_CERT, path(&self.tls_cert)),
            (env::NATS_TLS_KEY, path(&self.tls_key)),
            (env::INBOX_PREFIX, self.inbox_prefix.clone()),
        ] {
            if let Some(val) = val {
                v.push((k, val));
            }
        }
        v
    }

    /// Check the combination before connecting: one authentication method at
    /// most, a password with a user, a client key with a client certificate.
    pub fn validate(&self) -> Result<(), ConnectError> {
        let auth = [
            self.creds.is_some(),
            self.nkey_seed.is_some(),
            self.user.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if auth > 1 {
            return Err(ConnectError::Settings(
                "set only one of creds, nkey_seed or user/password".into(),
            ));
        }
        if self.password.is_some() && self.user.is_none() {
            return Err(ConnectError::Settings(
                "password is set but user is not".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConnectError::Settings(
                "tls_cert and tls_key must be set together".into(),
            ));
        }
        parse_server_list(&self.url).map_err(|e| ConnectError::Settings(format!("url: {e}")))?;
        if let Some(r) = self.stream_replicas
            && !(1..=crate::jetstream::MAX_REPLICAS).contains(&r)
        {
            return Err(ConnectError::Settings(format!(
                "stream_replicas = {r}: JetStream keeps 1 to {} replicas of a stream",
                crate::jetstream::MAX_REPLICAS
            )));
        }
        if let Some(p) = &self.inbox_prefix
            && (p.is_empty()
                || p.starts_with('.')
                || p.ends_with('.')
                || p.contains(|c: char| c.is_whitespace() || c == '*' || c == '>'))
        {
            return Err(ConnectError::Settings(format!(
                "inbox prefix {p:?} must be a subject without wildcards, spaces or a leading/trailing dot (e.g. _INBOX_myapp)"
            )));
        }
        Ok(())
    }

    /// Build async-nats connect options with our defaults: reconnect forever,
    /// retry the initial connect (so a process starts while NATS is down), the servers
    /// in the order given, and the authentication and TLS set here.
    pub async fn options(&self, name: &str) -> Result<async_nats::ConnectOptions, ConnectError> {
        self.validate()?;
        let mut o = if let Some(creds) = &self.creds {
            // Checked now, so a missing or broken file is an error at once; then read
            // again at every connect, so a renewed file is picked up on reconnect.
            read_creds(creds).map_err(|source| ConnectError::Credentials {
                path: creds.clone(),
                source,
            })?;
            let path = creds.clone();
            async_nats::ConnectOptions::with_auth_callback(move |nonce| {
                let path = path.clone();
                async move {
                    let (jwt, key) = read_creds(&path).map_err(|e| {
                        async_nats::AuthError::new(format!(
                            "reading NATS credentials from {}: {e}",
                            path.display()
                        ))
                    })?;
                    let mut auth = async_nats::Auth::new();
                    auth.signature = Some(
                        key.sign(&nonce)
                            .map_err(|e| async_nats::AuthError::new(e.to_string()))?,
                    );
                    auth.jwt = Some(jwt);
                    Ok(auth)
                }
            })
        } else if let Some(seed_file) = &self.nkey_seed {
            let seed =
                std::fs::read_to_string(seed_file).map_err(|source| ConnectError::Credentials {
                    path: seed_file.clone(),
                    source,
                })?;
            async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
        } else if let Some(user) = &self.user {
            async_nats::ConnectOptions::with_user_and_password(
                user.clone(),
                self.password.clone().unwrap_or_default(),
            )
        } else {
            async_nats::ConnectOptions::new()
        };
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            o = o
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            o = o.custom_inbox_prefix(prefix);
        }
        Ok(o.name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .retain_servers_order()
            .connection_timeout(Duration::from_secs(5))
            .ping_interval(PING_INTERVAL)
            .reconnect_delay_callback(reconnect_delay))
    }

    /// Connect (returns at once; the client connects in the background and
    /// keeps reconnecting).
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, ConnectError> {
        Ok(self.connect_with_events(name).await?.0)
    }

    /// [`connect`](Self::connect), with the client's [`ConnectionEvents`].
    pub async fn connect_with_events(
        &self,
        name: &str,
    ) -> Result<(async_nats::Client, ConnectionEvents), ConnectError> {
        let addrs = self.server_addrs()?;
        let (events, opts) = ConnectionEvents::install(self.options(name).await?);
        let urls = self.url_without_userinfo();
        let client = opts
            .connect(addrs)
            .await
            .map_err(|source| ConnectError::Connect { url: urls, source })?;
        Ok((client, events))
    }

    /// The servers of [`url`](Self::url): comma separated, each `nats://`, `tls://`, `ws://`
    /// or `wss://` (`host:port` alone means `nats://`). The error names the one that is not
    /// a NATS URL.
    pub fn server_addrs(&self) -> Result<Vec<async_nats::ServerAddr>, ConnectError> {
        parse_server_list(&self.url).map_err(ConnectError::Settings)
    }

    /// [`url`](Self::url) without the `user:password@` of any server, for places the
    /// credentials must not reach (apps' `NATS_URL`, printed settings).
    pub fn url_without_userinfo(&self) -> String {
        self.url
            .split(',')
            .map(|u| strip_userinfo(u.trim()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How often the client PINGs the server: a server that answers no PING for two
/// intervals counts as dead (async-nats' rule), so a silent server (a frozen host, a cut
/// cable without RST) is left after ~20 s. A killed server is noticed at once (the
/// socket closes).
pub const PING_INTERVAL: Duration = Duration::from_secs(10);

/// Delay before reconnect attempt `attempt` (1, 2, …; counted across servers since the
/// last successful connect): none for the first, so a killed server's clients are on the
/// next server within milliseconds; then 25 ms, 50 ms, … capped at 1 s, so a server that
/// comes back is in use within a second and a dead cluster is not hammered.
pub fn reconnect_delay(attempt: usize) -> Duration {
    match attempt {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis((25u64 << (n - 2).min(6)).min(1_000)),
    }
}

/// Parse a server list: comma separated, each `nats://`, `tls://`, `ws://` or `wss://`
/// (`host:port` alone means `nats://`), blanks around entries ignored. The error names
/// the entry (by position and text, without its `user:password@`) that is not a NATS URL.
pub fn parse_server_list(list: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    if entries.iter().all(|e| e.is_empty()) {
        return Err(
            "no server given (one or more, comma separated, e.g. nats://a:4222,nats://b:4222)"
                .into(),
        );
    }
    let many = entries.len() > 1;
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let shown = strip_userinfo(entry);
        let which = if many {
            format!("server {} of {} ({shown:?})", i + 1, entries.len())
        } else {
            format!("{shown:?}")
        };
        if entry.is_empty() {
            return Err(format!("{which} is empty (a stray comma?)"));
        }
        if entry.contains(char::is_whitespace) {
            return Err(format!("{which} contains a space"));
        }
        let addr = entry
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| format!("{which} is not a NATS server URL: {e}"))?;
        if addr.host().is_empty() {
            return Err(format!("{which} has no host"));
        }
        out.push(addr);
    }
    Ok(out)
}

/// `entry` without a `user:password@` in its authority.
fn strip_userinfo(u: &str) -> String {
    let (scheme, rest) = match u.find("://") {
        Some(i) => u.split_at(i + 3),
        None => ("", u),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}{}", &rest[at + 1..]),
        None => u.to_owned(),
    }
}

/// The state of one client's connection, as [`ConnectionEvents`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    /// Connected now.
    pub connected: bool,
    /// Connections lost so far (each `Disconnected` event).
    pub losses: u64,
}

/// What happened to one client's connection, from its event callback: watch it to learn
/// at once that the connection was lost (async-nats itself keeps requests pending across
/// a reconnect until their timeout). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionEvents {
    rx: tokio::sync::watch::Receiver<Link>,
}

/// The connection was lost while waiting (the operation may or may not have reached the
/// server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection to NATS was lost while waiting for the answer")]
pub struct ConnectionLost;

impl ConnectionEvents {
    /// Events of the client `opts` will connect: returns the options with an event
    /// callback that feeds them (and logs each event).
    pub fn install(
        opts: async_nats::ConnectOptions,
    ) -> (ConnectionEvents, async_nats::ConnectOptions) {
        let (tx, rx) = tokio::sync::watch::channel(Link::default());
        let tx = std::sync::Arc::new(tx);
        let opts = opts.event_callback(move |event| {
            let tx = tx.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS connected");
                        tx.send_modify(|l| l.connected = true);
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting");
                        tx.send_modify(|l| {
                            l.connected = false;
                            l.losses += 1;
                        });
                    }
                    other => tracing::info!(event = %other, "NATS"),
                }
            }
        });
        (ConnectionEvents { rx }, opts)
    }

    /// The state now.
    pub fn link(&self) -> Link {
        *self.rx.borrow()
    }

    /// Resolves once the client is connected (at once if it is).
    pub async fn connected(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|l| l.connected).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once more than `losses` connections have been lost (at once if that is
    /// already so); never, if the client is gone.
    pub async fn lost_after(&self, losses: u64) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|l| l.losses > losses).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once connected after more than `losses` losses.
    pub async fn reconnected_after(&self, losses: u64) {
        let mut rx = self.rx.clone();
        if rx
            .wait_for(|l| l.losses > losses && l.connected)
            .await
            .is_err()
        {
            std::future::pending::<()>().await;
        }
    }

    /// Await `fut`, or fail with [`ConnectionLost`] as soon as the connection is lost
    /// while it runs (a lost request, whose answer would otherwise be awaited until its
    /// timeout).
    pub async fn unless_lost<F: std::future::Future>(
        &self,
        fut: F,
    ) -> Result<F::Output, ConnectionLost> {
        let before = self.link().losses;
        tokio::select! {
            biased;
            out = fut => Ok(out),
            _ = self.lost_after(before) => Err(ConnectionLost),
        }
    }
}

/// The user JWT and the nkey of a `.creds` file (the decorated format `nsc` and narund
/// write: the first `-----BEGIN…-----` block holds the JWT, the one after
/// `BEGIN USER NKEY SEED` the seed).
pub fn parse_creds(text: &str) -> Result<(String, nkeys::KeyPair), String> {
    let block = |marker: &str| -> Option<String> {
        let mut lines = text.lines().map(str::trim);
        lines.find(|l| l.starts_with("---") && l.contains(marker))?;
        lines
            .find(|l| !l.is_empty())
            .filter(|l| !l.starts_with("---"))
            .map(str::to_owned)
    };
    let jwt = block("JWT").ok_or("no user JWT block (-----BEGIN NATS USER JWT-----)")?;
    let seed = block("SEED").ok_or("no nkey seed block (-----BEGIN USER NKEY SEED-----)")?;
    let key = nkeys::KeyPair::from_seed(&seed).map_err(|e| format!("invalid nkey seed: {e}"))?;
    Ok((jwt, key))
}

fn read_creds(path: &std::path::Path) -> std::io::Result<(String, nkeys::KeyPair)> {
    let text = std::fs::read_to_string(path)?;
    parse_creds(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Wait until the server has processed every command this client sent before
/// the call (subscribes, unsubscribes, publishes), bounded by `timeout`.
///
/// `Client::flush` only writes the client's buffer to the socket; it does not
/// wait for the server. This publishes to a private inbox we subscribe to and
/// waits for the message to come back: the server handles one connection's
/// commands in order, so everything sent earlier has taken effect by then.
/// Returns false on time-out (e.g. while NATS is unreachable).
pub async fn sync_with_server(client: &async_nats::Client, timeout: Duration) -> bool {
    use futures_util::StreamExt;
    // While disconnected there is nothing to wait for: subscriptions are re-sent
    // on reconnect. A client still making its first connection ("Pending") gets
    // the bounded wait.
    if client.connection_state() == async_nats::connection::State::Disconnected {
        return false;
    }
    let work = async {
        let inbox = client.new_inbox();
        let mut sub = client.subscribe(inbox.clone()).await.ok()?;
        client.publish(inbox, bytes::Bytes::new()).await.ok()?;
        sub.next().await
    };
    matches!(tokio::time::timeout(timeout, work).await, Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_removed_from_every_server() {
        let s = NatsSettings {
            url: "nats://narund:hunter2@a:4222, tls://u@b:4223,c:4222,user:pw@d:1,ws://e/x@y"
                .into(),
            ..Default::default()
        };
        let clean = s.url_without_userinfo();
        assert_eq!(clean, "nats://a:4222,tls://b:4223,c:4222,d:1,ws://e/x@y");
        assert!(!clean.contains("hunter2"));
    }
    use std::collections::HashMap;

    #[test]
    fn env_round_trip() {
        let s = NatsSettings {
            url: "nats://a:1,nats://b:2".into(),
            nkey_seed: Some("/etc/narun/app.nk".into()),
            tls_ca: Some("/ca.pem".into()),
            inbox_prefix: Some("_INBOX_app".into()),
            ..Default::default()
        };
        let env: HashMap<_, _> = s.to_env().into_iter().collect();
        let back = NatsSettings::from_lookup(|k| env.get(k).cloned());
        assert_eq!(back, s);
    }

    #[test]
    fn comma_separated_urls_are_servers() {
        let s = NatsSettings {
            url: "nats://a:1, tls://b:2,c".into(),
            ..Default::default()
        };
        let addrs = s.server_addrs().unwrap();
        assert_eq!(addrs.len(), 3);
        assert_eq!(addrs[1].host(), "b");
        assert_eq!(addrs[2].port(), 4222);
        // As one URL the list is not one (what connect passed before).
        assert!(s.url.parse::<async_nats::ServerAddr>().is_err());
        for bad in ["http://a:1", "nats://a:1,nats://b:x", " , "] {
            let s = NatsSettings {
                url: bad.into(),
                ..Default::default()
            };
            assert!(s.server_addrs().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_server_is_named_without_its_password() {
        let err = |list: &str| parse_server_list(list).unwrap_err();
        let e = err("nats://a:4222,nats://u:hunter2@b:x,nats://c:4222");
        assert!(e.starts_with("server 2 of 3 (\"nats://b:x\")"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(err("nats://a:1,,nats://b:2").contains("server 2 of 3 (\"\") is empty"));
        assert!(err("nats://a:1,nats://b 2").contains("contains a space"));
        assert!(err("").contains("no server given"));
        assert!(err("http://a:1").starts_with("\"http://a:1\" is not a NATS server URL"));
        // validate() says which key.
        let s = NatsSettings {
            url: "nats://a:1,bad:port".into(),
            ..Default::default()
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("url: server 2 of 2 (\"bad:port\")"), "{e}");
        let ok = parse_server_list(" nats://a:1 , tls://b:2 ,c:3").unwrap();
        assert_eq!(ok.len(), 3);
        assert!(ok[1].tls_required());
    }

    #[test]
    fn stream_replicas_are_1_to_5() {
        for (r, ok) in [(0, false), (1, true), (3, true), (5, true), (6, false)] {
            let s = NatsSettings {
                stream_replicas: Some(r),
                ..Default::default()
            };
            assert_eq!(s.validate().is_ok(), ok, "{r}");
            if !ok {
                assert!(
                    s.validate()
                        .unwrap_err()
                        .to_string()
                        .contains("stream_replicas")
                );
            }
        }
        // Never an app's business: not in the environment.
        let s = NatsSettings {
            stream_replicas: Some(3),
            ..Default::default()
        };
        assert!(!s.to_env().iter().any(|(_, v)| v == "3"));
    }

    #[test]
    fn reconnects_start_at_once_and_back_off_to_a_second() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), ms(25));
        assert_eq!(reconnect_delay(3), ms(50));
        assert_eq!(reconnect_delay(7), ms(800));
        assert_eq!(reconnect_delay(8), ms(1000));
        assert_eq!(reconnect_delay(usize::MAX), ms(1000));
    }

    #[tokio::test]
    async fn a_lost_connection_ends_the_wait_at_once() {
        let (tx, rx) = tokio::sync::watch::channel(Link {
            connected: true,
            losses: 0,
        });
        let events = ConnectionEvents { rx };
        // Finishes normally while connected.
        assert_eq!(events.unless_lost(async { 7 }).await, Ok(7));
        // A wait that would take an hour ends when the connection is lost.
        let short = Duration::from_millis(20);
        let mut waiting =
            Box::pin(events.unless_lost(tokio::time::sleep(Duration::from_secs(3600))));
        assert!(tokio::time::timeout(short, &mut waiting).await.is_err());
        tx.send_modify(|l| {
            l.connected = false;
            l.losses += 1;
        });
        let r = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("ended at once");
        assert_eq!(r, Err(ConnectionLost));
        // reconnected_after waits for the connection after that loss.
        let mut back = Box::pin(events.reconnected_after(0));
        assert!(tokio::time::timeout(short, &mut back).await.is_err());
        tx.send_modify(|l| l.connected = true);
        tokio::time::timeout(Duration::from_secs(5), back)
            .await
            .expect("reconnected");
        // A loss counted before the wait began does not end it.
        assert_eq!(events.unless_lost(async { 1 }).await, Ok(1));
    }

    #[test]
    fn conflicting_auth_is_rejected() {
        let s = NatsSettings {
            creds: Some("/c".into()),
            user: Some("u".into()),
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("only one"));
        let s = NatsSettings {
            tls_cert: Some("/c".into()),
            ..Default::default()
        };
        assert!(s.validate().is_err());
        for bad in ["", "_INBOX.", ".x", "a b", "_INBOX_*", "x.>"] {
            let s = NatsSettings {
                inbox_prefix: Some(bad.into()),
                ..Default::default()
            };
            assert!(s.validate().is_err(), "{bad:?}");
        }
        let s = NatsSettings {
            inbox_prefix: Some("_INBOX_my-app".into()),
            ..Default::default()
        };
        s.validate().unwrap();
    }

    #[test]
    fn creds_files_parse() {
        let key = nkeys::KeyPair::new_user();
        let text = format!(
            "-----BEGIN NATS USER JWT-----\neyJhbGciOi.x.y\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            key.seed().unwrap()
        );
        let (jwt, k) = parse_creds(&text).unwrap();
        assert_eq!(jwt, "eyJhbGciOi.x.y");
        assert_eq!(k.public_key(), key.public_key());
        assert!(parse_creds("nothing").unwrap_err().contains("JWT"));
        let no_seed = "-----BEGIN NATS USER JWT-----\nabc\n------END NATS USER JWT------\n";
        assert!(parse_creds(no_seed).unwrap_err().contains("seed"));
    }
}

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
        if self.url.trim().is_empty() {
            return Err(ConnectError::Settings("url is empty".into()));
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
    /// retry the initial connect (so a process starts while NATS is down), and
    /// the authentication and TLS set here.
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
            .connection_timeout(Duration::from_secs(5))
            .ping_interval(Duration::from_secs(20))
            .reconnect_delay_callback(|attempt| {
                // 50 ms, 100 ms, 200 ms … capped at 1 s (Go narun: a fixed 2 s), so a
                // server that comes back is in use within a second.
                Duration::from_millis((50u64 << attempt.min(5)).min(1_000))
            }))
    }

    /// Connect (returns at once; the client connects in the background and
    /// keeps reconnecting).
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, ConnectError> {
        let addrs = self.server_addrs()?;
        let opts = self.options(name).await?;
        let urls = self.url.clone();
        opts.connect(addrs)
            .await
            .map_err(|source| ConnectError::Connect { url: urls, source })
    }

    /// The servers of [`url`](Self::url): comma separated, each `nats://`, `tls://`, `ws://`
    /// or `wss://` (`host:port` alone means `nats://`). The error names the one that is not
    /// a NATS URL.
    pub fn server_addrs(&self) -> Result<Vec<async_nats::ServerAddr>, ConnectError> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| ConnectError::Settings(format!("url {u:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|addrs| {
                if addrs.is_empty() {
                    Err(ConnectError::Settings("url is empty".into()))
                } else {
                    Ok(addrs)
                }
            })
    }

    /// [`url`](Self::url) without the `user:password@` of any server, for places the
    /// credentials must not reach (apps' `NATS_URL`, printed settings).
    pub fn url_without_userinfo(&self) -> String {
        self.url
            .split(',')
            .map(|u| {
                let u = u.trim();
                let (scheme, rest) = match u.find("://") {
                    Some(i) => u.split_at(i + 3),
                    None => ("", u),
                };
                let authority_end = rest.find('/').unwrap_or(rest.len());
                match rest[..authority_end].rfind('@') {
                    Some(at) => format!("{scheme}{}", &rest[at + 1..]),
                    None => u.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
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

//! `[gateway.acme]`: the settings of automatic certificates ([`super`]). Always compiled,
//! so a config with the table is understood (and refused with a clear error) by a build
//! without the `acme` feature.

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Let's Encrypt's production directory (the default `directory`).
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Default `cache_dir`: the account key, certificate and its key (files mode 0600).
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/narun/acme";

/// How the CA checks that this gateway answers for a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Challenge {
    /// RFC 8737: a special certificate on the HTTPS listener (`http_addr`), reached by the
    /// CA on port 443 of the domain. Needs no other listener.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// RFC 8555 §8.3: `http://<domain>/.well-known/acme-challenge/<token>` on port 80,
    /// served by the plain listener `[gateway.acme] http_addr`.
    #[serde(rename = "http-01")]
    Http01,
}

impl Challenge {
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }
}

/// The `[gateway.acme]` table: the routed listener (`gateway.http_addr`) speaks HTTPS
/// with a certificate for `domains`, obtained and renewed from the CA at `directory`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AcmeConfig {
    /// The CA's ACME directory URL (https). Default: Let's Encrypt production.
    pub directory: String,
    /// Must be `true`: you agree to the CA's terms of service (the CA refuses accounts
    /// that do not).
    pub accept_terms: bool,
    /// Contact URIs of the account (`"mailto:admin@example.com"`); the CA writes about
    /// expiring certificates and policy changes. May be empty.
    pub contact: Vec<String>,
    /// DNS names the certificate is for (no wildcards: they need DNS-01).
    pub domains: Vec<String>,
    /// Where the account key, the certificate chain and its key are kept (0700 directory,
    /// 0600 files), so a restart serves at once and does not ask the CA again.
    pub cache_dir: String,
    /// `"tls-alpn-01"` (default; port 443 of the domain must reach `gateway.http_addr`) or
    /// `"http-01"` (port 80 must reach `http_addr` below).
    pub challenge: Challenge,
    /// Plain HTTP listener serving `/.well-known/acme-challenge/` (HTTP-01); required with
    /// `challenge = "http-01"`. Other paths are answered 404.
    pub http_addr: Option<String>,
    /// PEM file of root certificates trusted for the directory's HTTPS besides the
    /// system's (a private CA, or a test CA such as pebble's).
    pub ca_file: Option<String>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            directory: LETS_ENCRYPT.into(),
            accept_terms: false,
            contact: Vec::new(),
            domains: Vec::new(),
            cache_dir: DEFAULT_CACHE_DIR.into(),
            challenge: Challenge::default(),
            http_addr: None,
            ca_file: None,
            unknown: BTreeMap::new(),
        }
    }
}

const ACME_KEYS: &str =
    "directory, accept_terms, contact, domains, cache_dir, challenge, http_addr, ca_file";

/// A domain the gateway can get a certificate for: a lower-case DNS name with at least two
/// labels, no wildcard, no IP address.
fn check_domain(d: &str) -> Result<(), &'static str> {
    if d.starts_with("*.") {
        return Err(
            "is a wildcard: wildcard certificates need DNS-01, which the gateway does not do; list the names",
        );
    }
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Err("is an IP address: give a DNS name");
    }
    if d.is_empty() || d.len() > 253 {
        return Err("is not a DNS name (e.g. \"api.example.com\")");
    }
    if d.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("must be lower case");
    }
    let labels: Vec<&str> = d.split('.').collect();
    let ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !ok {
        return Err(
            "is not a DNS name: letters, digits, '-' and at least one '.', no port (e.g. \"api.example.com\")",
        );
    }
    Ok(())
}

impl AcmeConfig {
    /// Every problem with its key path (`gateway.acme.domains[1]: ...`).
    pub(crate) fn validate(&self, tls_files: bool, out: &mut Vec<ConfigError>) {
        let mut push = |key: String, reason: String| out.push(ConfigError { key, reason });
        if !cfg!(feature = "acme") {
            push(
                "gateway.acme".into(),
                "this build has no ACME support (cargo feature `acme` of narun-gateway; \
                 narund's `gateway` feature includes it): remove the table or use certificate \
                 files (http_tls_cert, http_tls_key)"
                    .into(),
            );
        }
        for k in self.unknown.keys() {
            push(
                format!("gateway.acme.{k}"),
                format!("unknown key (known keys: {ACME_KEYS})"),
            );
        }
        if tls_files {
            push(
                "gateway.acme".into(),
                "cannot be used with http_tls_cert/http_tls_key: the certificate of the HTTPS \
                 listener comes either from files or from ACME"
                    .into(),
            );
        }
        match http::Uri::try_from(self.directory.as_str()) {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {}
            _ => push(
                "gateway.acme.directory".into(),
                format!(
                    "{:?} is not an https:// URL (e.g. {LETS_ENCRYPT:?})",
                    self.directory
                ),
            ),
        }
        if !self.accept_terms {
            push(
                "gateway.acme.accept_terms".into(),
                "must be true: the CA only issues certificates to accounts that agree to its \
                 terms of service (read them at the directory's \"termsOfService\" URL)"
                    .into(),
            );
        }
        for (i, c) in self.contact.iter().enumerate() {
            let ok = c
                .strip_prefix("mailto:")
                .is_some_and(|a| a.contains('@') && !a.contains(|ch: char| ch.is_whitespace()));
            if !ok {
                push(
                    format!("gateway.acme.contact[{i}]"),
                    format!("{c:?} is not a contact URI: write \"mailto:admin@example.com\""),
                );
            }
        }
        if self.domains.is_empty() {
            push(
                "gateway.acme.domains".into(),
                "is empty: list the DNS names the certificate is for".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, d) in self.domains.iter().enumerate() {
            if let Err(why) = check_domain(d) {
                push(format!("gateway.acme.domains[{i}]"), format!("{d:?} {why}"));
            } else if !seen.insert(d.as_str()) {
                push(
                    format!("gateway.acme.domains[{i}]"),
                    format!("{d:?} is listed twice"),
                );
            }
        }
        if self.cache_dir.is_empty() || !self.cache_dir.starts_with('/') {
            push(
                "gateway.acme.cache_dir".into(),
                format!(
                    "{:?} is not an absolute path (e.g. {DEFAULT_CACHE_DIR:?})",
                    self.cache_dir
                ),
            );
        }
        match &self.http_addr {
            Some(a) if a.parse::<std::net::SocketAddr>().is_err() => push(
                "gateway.acme.http_addr".into(),
                format!("{a:?} is not an IP:port address (e.g. \"0.0.0.0:80\")"),
            ),
            None if self.challenge == Challenge::Http01 => push(
                "gateway.acme.http_addr".into(),
                "is required with challenge = \"http-01\" (the plain HTTP listener the CA \
                 reaches on port 80, e.g. \"0.0.0.0:80\")"
                    .into(),
            ),
            _ => {}
        }
        if self.ca_file.as_deref() == Some("") {
            push("gateway.acme.ca_file".into(), "is empty".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match crate::GatewayConfig::from_toml(text) {
            Ok(_) => vec![],
            Err(crate::LoadError::Invalid(e)) => e.0.iter().map(|e| e.to_string()).collect(),
            Err(crate::LoadError::Parse(e)) => vec![format!("parse: {e}")],
        }
    }

    /// Without the feature every `[gateway.acme]` also gets "this build has no ACME support".
    fn without_feature_note(mut errs: Vec<String>) -> Vec<String> {
        if !cfg!(feature = "acme") {
            let before = errs.len();
            errs.retain(|e| !e.starts_with("gateway.acme: this build has no ACME support"));
            assert_eq!(errs.len() + 1, before, "{errs:?}");
        }
        errs
    }

    #[test]
    fn every_problem_is_named_by_its_key() {
        let ok = "[gateway]\n[gateway.acme]\naccept_terms = true\ndomains = [\"a.example\"]\n";
        assert!(without_feature_note(errors(ok)).is_empty());
        let cfg = crate::GatewayConfig::from_toml(ok).or_else(|_| {
            // Without the feature the table is refused; its defaults are still these.
            toml::from_str::<AcmeConfig>("").map(|a| crate::GatewayConfig {
                acme: Some(a),
                ..Default::default()
            })
        });
        let a = cfg.unwrap().acme.unwrap();
        assert_eq!(a.directory, LETS_ENCRYPT);
        assert_eq!(a.cache_dir, DEFAULT_CACHE_DIR);
        assert_eq!(a.challenge, Challenge::TlsAlpn01);

        let errs = without_feature_note(errors(
            "[gateway]\nhttp_tls_cert = \"/c\"\nhttp_tls_key = \"/k\"\n[gateway.acme]\n\
             directory = \"http://ca.example/dir\"\ncontact = [\"admin@example.com\"]\n\
             domains = [\"*.example.com\", \"a.example\", \"a.example\", \"10.0.0.1\"]\n\
             cache_dir = \"acme\"\nchallenge = \"http-01\"\nca_file = \"\"\ncolour = 1\n",
        ));
        let expect = [
            "gateway.acme.colour: unknown key",
            "gateway.acme: cannot be used with http_tls_cert/http_tls_key",
            "gateway.acme.directory: \"http://ca.example/dir\" is not an https:// URL",
            "gateway.acme.accept_terms: must be true",
            "gateway.acme.contact[0]: \"admin@example.com\" is not a contact URI",
            "gateway.acme.domains[0]: \"*.example.com\" is a wildcard",
            "gateway.acme.domains[2]: \"a.example\" is listed twice",
            "gateway.acme.domains[3]: \"10.0.0.1\" is an IP address",
            "gateway.acme.cache_dir: \"acme\" is not an absolute path",
            "gateway.acme.http_addr: is required with challenge = \"http-01\"",
            "gateway.acme.ca_file: is empty",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
        let errs = errors("[gateway.acme]\nchallenge = \"dns-01\"\n");
        assert!(errs[0].contains("unknown variant"), "{errs:?}");
        let errs = without_feature_note(errors(
            "[gateway.acme]\naccept_terms = true\ndomains = []\nhttp_addr = \"x\"\n",
        ));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("gateway.acme.domains: is empty"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("gateway.acme.http_addr: \"x\" is not an IP:port"),
            "{errs:?}"
        );
    }

    #[test]
    fn domains_are_dns_names() {
        assert!(check_domain("api.example.com").is_ok());
        assert!(check_domain("a-b.example").is_ok());
        for bad in [
            "*.example.com",
            "127.0.0.1",
            "localhost",
            "Example.com",
            "a..b",
            "-a.b",
            "a.b:443",
            "",
        ] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }
}

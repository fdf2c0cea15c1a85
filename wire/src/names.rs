//! Bucket names, subject names and the app environment contract shared with the Go narun.
//!
//! These strings are the wire contract: a Go `node-runner`, the Go `narun` CLI and
//! our Rust binaries read and write the same buckets and subjects.

/// KV bucket: key = app name, value = the app spec (JSON here; YAML from the Go CLI).
pub const APP_CONFIGS_BUCKET: &str = "app-configs";
/// KV bucket: key = node id, value = [`crate::events::NodeState`] JSON. TTL 45 s in Go.
pub const NODE_STATES_BUCKET: &str = "node-runner-states";
/// KV bucket: key = secret name, value = `StoredSecret` JSON (AES-256-GCM).
pub const SECRETS_BUCKET: &str = "narun-secrets";
/// Object store: app binaries named `<app>-<tag>-<os>-<arch>`.
pub const APP_BINARIES_BUCKET: &str = "app-binaries";
/// Object store: shared files mounted into app work dirs.
pub const FILES_BUCKET: &str = "narun-files";
/// Description of the `narun-files` object store (Go).
pub const FILES_DESCRIPTION: &str = "Shared files for Narun applications";
/// Object metadata key: the uploaded file's base name (Go `files add`).
pub const FILE_META_ORIGINAL_FILENAME: &str = "original-filename";
/// Object metadata key: RFC 3339 UTC upload time (Go `files add`).
pub const FILE_META_UPLOAD_TIMESTAMP: &str = "upload-timestamp";

/// Node state entries expire after this long without a heartbeat (Go: 45 s).
pub const NODE_STATE_TTL_SECS: u64 = 45;

/// JetStream stream that keeps `logs.>` when narund's `[logs] stream = true`
/// (a narun addition; the Go runner has no log history).
pub const LOG_STREAM: &str = "narun-logs";

/// KV bucket: key = app name, value = [`crate::events::Releases`] JSON (narun addition).
pub const RELEASES_BUCKET: &str = "narun-releases";

/// KV bucket: key = lock name, value = [`crate::locks::LockHolder`] JSON; the app
/// library's locks and leader elections (`narun::lock`, narun addition).
pub const LOCKS_BUCKET: &str = "narun-locks";

/// JetStream stream that keeps `status.>` (the status events) when narund's
/// `[events] stream = true`, for `narunctl events` (a narun addition).
pub const STATUS_STREAM: &str = "narun-status";

/// `logs.<app>.<node>`: one JSON [`crate::events::LogLine`] per line of app output.
pub fn log_subject(app: &str, node: &str) -> String {
    format!("logs.{app}.{node}")
}

/// `status.<app>.<node>`: [`crate::events::StatusEvent`] JSON.
pub fn status_subject(app: &str, node: &str) -> String {
    format!("status.{app}.{node}")
}

/// `narun.control.<node>.<verb>`: core NATS request-reply subjects narund answers for
/// operator actions on its node (a narun addition; Go node-runners do not listen).
/// Verbs: `restart` ([`crate::events::RestartRequest`] → [`crate::events::RestartReply`]),
/// `wake` ([`CONTROL_WAKE`]).
pub fn control_subject(node: &str, verb: &str) -> String {
    format!("narun.control.{node}.{verb}")
}

/// Verb of [`control_subject`] for `narunctl apps restart`.
pub const CONTROL_RESTART: &str = "restart";

/// Verb of [`control_subject`] a gateway uses to start an app that was scaled to zero
/// ([`crate::events::WakeRequest`] → [`crate::events::WakeReply`]).
pub const CONTROL_WAKE: &str = "wake";

/// The node id narund uses when neither its config nor its flags set one, with narund's
/// default `node_id_file`: the provisioning file `/etc/narun/node-id`, else an id derived
/// from `/etc/machine-id`, else the host name ([`crate::node_id`] has the rule).
/// `narunctl deploy`'s flag form defaults its node to it. Err: the provisioning file exists
/// but holds no valid node id.
pub fn default_node_id() -> Result<String, crate::node_id::NodeIdFileError> {
    crate::node_id::resolve(std::path::Path::new(crate::node_id::DEFAULT_NODE_ID_FILE))
        .map(|r| r.id)
}

/// Object name of an app binary: `<app>-<tag>-<os>-<arch>` (Go GOOS/GOARCH names).
pub fn binary_object_name(app: &str, tag: &str, os: &str, arch: &str) -> String {
    format!("{app}-{tag}-{os}-{arch}")
}

/// Object metadata key of a signed app binary (`narunctl deploy --sign`, a narun addition;
/// Go peers ignore it): the ed25519 signature, base64url without padding, of
/// [`crate::signing::BinaryClaim::message`].
pub const BINARY_META_SIGNATURE: &str = "narun-signature";
/// Object metadata key of a signed app binary: the signer's public nkey (`U…`, `A…`).
pub const BINARY_META_SIGNER: &str = "narun-signer";
/// Object metadata key of a signed app binary: the SHA-256 that was signed, lower-case hex.
/// A node with trusted keys runs the object only when the object store's digest and the
/// downloaded bytes are this digest.
pub const BINARY_META_SIGNED_SHA256: &str = "narun-signed-sha256";

/// Go's GOARCH name for the architecture this binary was compiled for
/// (`amd64`, `arm64`, `arm`, `riscv64`, `386`).
pub fn go_arch() -> &'static str {
    go_arch_of(std::env::consts::ARCH)
}

/// Map a Rust `target_arch` name to Go's GOARCH name.
pub fn go_arch_of(rust_arch: &str) -> &'static str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "x86" => "386",
        _ => "unknown",
    }
}

/// Go's GOOS name for this platform (`linux`).
pub fn go_os() -> &'static str {
    std::env::consts::OS
}

/// NATS header carrying the gRPC method (`/pkg.Svc/Method`), Go compatible.
pub const GRPC_METHOD_HEADER: &str = "X-Original-Grpc-Method";
/// NATS Micro error description header (ADR-32).
pub const SERVICE_ERROR_HEADER: &str = "Nats-Service-Error";
/// NATS Micro error code header (ADR-32).
pub const SERVICE_ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";
/// HTTP request header the gateway sets on routes with `auth`: the authenticated
/// identity (bearer token name, basic user, JWT `sub`). The gateway removes a client's
/// own value on every route, so an app behind it can trust the header.
pub const AUTH_USER_HEADER: &str = "Narun-Auth-User";
/// Content type the gateway sets on BHTTP requests (the Go consumer ignores it).
pub const BHTTP_CONTENT_TYPE: &str = "application/bhttp";

/// NATS request header: the time the caller still waits for the answer, in whole
/// milliseconds, counted from when the request was sent (a narun addition; Go peers
/// neither send nor read it). The gateway sets it on every request; the `narun` app
/// library drops the handler once it has passed. Relative, not a clock time, so the
/// gateway's and the app's clocks need not agree (see docs/protocol.md).
pub const TIMEOUT_MS_HEADER: &str = "Narun-Timeout-Ms";

/// [`TIMEOUT_MS_HEADER`] as a NATS header name, built at compile time (looking a
/// header up or setting it by `&str` validates and copies the name every time).
pub const TIMEOUT_MS: async_nats::HeaderName =
    async_nats::HeaderName::from_static(TIMEOUT_MS_HEADER);

/// Largest accepted [`TIMEOUT_MS_HEADER`] value: 9 digits, about 11.5 days.
pub const MAX_TIMEOUT_MS: u64 = 999_999_999;

/// Parse a [`TIMEOUT_MS_HEADER`] value: 1 to 9 ASCII digits (surrounding blanks
/// allowed), `0` meaning the time is already up. Anything else is `None`, and the
/// request is treated as carrying no deadline.
pub fn parse_timeout_ms(v: &str) -> Option<std::time::Duration> {
    let v = v.trim();
    if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().map(std::time::Duration::from_millis)
}

/// The [`TIMEOUT_MS_HEADER`] value for a remaining budget: whole milliseconds,
/// rounded down, within `0..=`[`MAX_TIMEOUT_MS`].
pub fn timeout_ms_value(left: std::time::Duration) -> String {
    left.as_millis().min(u128::from(MAX_TIMEOUT_MS)).to_string()
}

/// Environment variables narund sets for every app instance (Go compatible
/// names), read by the `narun` library.
pub mod env {
    pub const APP_NAME: &str = "NARUN_APP_NAME";
    pub const INSTANCE_ID: &str = "NARUN_INSTANCE_ID";
    pub const RUN_ID: &str = "NARUN_RUN_ID";
    pub const REPLICA_INDEX: &str = "NARUN_REPLICA_INDEX";
    pub const NODE_ID: &str = "NARUN_NODE_ID";
    pub const NODE_OS: &str = "NARUN_NODE_OS";
    pub const NODE_ARCH: &str = "NARUN_NODE_ARCH";
    pub const INSTANCE_ROOT: &str = "NARUN_INSTANCE_ROOT";
    /// NATS connection settings (see [`crate::connect::NatsSettings`]).
    pub const NATS_URL: &str = "NATS_URL";
    pub const NATS_CREDS: &str = "NATS_CREDS";
    pub const NATS_NKEY_SEED_FILE: &str = "NATS_NKEY_SEED_FILE";
    pub const NATS_USER: &str = "NATS_USER";
    pub const NATS_PASSWORD: &str = "NATS_PASSWORD";
    pub const NATS_TLS_CA: &str = "NATS_TLS_CA";
    pub const NATS_TLS_CERT: &str = "NATS_TLS_CERT";
    pub const NATS_TLS_KEY: &str = "NATS_TLS_KEY";
    /// Prefix of the app's reply inboxes (`_INBOX_<app>`), set by narund when it mints the
    /// app's NATS user, whose permissions allow only that prefix.
    pub const INBOX_PREFIX: &str = "NARUN_INBOX_PREFIX";
}

/// The environment of one run of a command unit (`mode = "command"`, docs/jobs.md): what
/// narund tells the command about the request it answers. Every name starts with
/// [`request_env::PREFIX`]; a spec's own `env` entries with that prefix are not passed to
/// runs (the request's values cannot be shadowed, and a request cannot set any other
/// variable).
pub mod request_env {
    /// Prefix of every request variable.
    pub const PREFIX: &str = "NARUN_REQUEST_";
    /// `bhttp` (the gateway's HTTP routes, `narunctl request`) or `raw` (raw routes).
    pub const PROTOCOL: &str = "NARUN_REQUEST_PROTOCOL";
    /// The HTTP method (`GET`, `POST`, …).
    pub const METHOD: &str = "NARUN_REQUEST_METHOD";
    /// The path, without the query, as sent (not percent-decoded).
    pub const PATH: &str = "NARUN_REQUEST_PATH";
    /// The query without `?` (empty when there is none), as sent.
    pub const QUERY: &str = "NARUN_REQUEST_QUERY";
    /// The host (`:authority`, raw: `X-Original-Host`); may be empty.
    pub const HOST: &str = "NARUN_REQUEST_HOST";
    /// The request id (`X-Request-Id`), when there is one.
    pub const ID: &str = "NARUN_REQUEST_ID";
    /// Bytes of the body, which the command reads on stdin.
    pub const CONTENT_LENGTH: &str = "NARUN_REQUEST_CONTENT_LENGTH";
    /// Milliseconds this run may take before narund kills it.
    pub const TIMEOUT_MS: &str = "NARUN_REQUEST_TIMEOUT_MS";
    /// Prefix of one variable per request header: `X-Api-Key` → `NARUN_REQUEST_HEADER_X_API_KEY`.
    pub const HEADER_PREFIX: &str = "NARUN_REQUEST_HEADER_";
    /// How many request headers were not passed (a name or value the sanitiser refuses,
    /// or over the count and size bounds); absent when none was dropped.
    pub const DROPPED_HEADERS: &str = "NARUN_REQUEST_DROPPED_HEADERS";
}

/// Longest accepted node id, in bytes: like an app name (`narun-spec`'s `MAX_NAME_LEN`)
/// and a Linux host name (`HOST_NAME_MAX`, the default node id). The node id is a subject
/// token of [`log_subject`], [`status_subject`] and [`control_subject`], the key of the
/// node in [`NODE_STATES_BUCKET`] and part of narund's connection name; NATS refuses a
/// protocol line longer than its `max_control_line` (4 KiB by default), so a long id
/// would break every one of them.
pub const MAX_NODE_ID_LEN: usize = 64;

/// Why `id` cannot be a node id (`None`: it can): empty, longer than
/// [`MAX_NODE_ID_LEN`], or a character outside `A-Z a-z 0-9 - _` (it is a single
/// subject token and a KV key).
pub fn node_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("is empty".into());
    }
    if id.len() > MAX_NODE_ID_LEN {
        return Some(format!(
            "is {} bytes long; at most {MAX_NODE_ID_LEN} (it is a NATS subject token and KV key)",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Some(format!(
            "{id:?} contains {c:?}; use only A-Z a-z 0-9 - _ (it is a NATS subject token and KV key)"
        ));
    }
    None
}

#[cfg(test)]
mod node_id_tests {
    use super::*;

    #[test]
    fn timeout_ms_values() {
        use std::time::Duration;
        assert_eq!(parse_timeout_ms("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout_ms(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_timeout_ms("999999999"),
            Some(Duration::from_millis(MAX_TIMEOUT_MS))
        );
        for bad in ["", " ", "-1", "+5", "1.5", "5s", "1e3", "1000000000", "١٢"] {
            assert_eq!(parse_timeout_ms(bad), None, "{bad:?}");
        }
        assert_eq!(timeout_ms_value(Duration::from_micros(2500)), "2");
        assert_eq!(timeout_ms_value(Duration::from_secs(u64::MAX)), "999999999");
        assert_eq!(
            parse_timeout_ms(&timeout_ms_value(Duration::from_secs(10))),
            Some(Duration::from_secs(10))
        );
        let mut h = async_nats::HeaderMap::new();
        h.insert(TIMEOUT_MS_HEADER, "5");
        assert_eq!(h.get(TIMEOUT_MS).map(|v| v.as_str()), Some("5"));
    }

    #[test]
    fn node_ids() {
        assert_eq!(node_id_problem("node-1_A"), None);
        assert_eq!(node_id_problem(&"a".repeat(MAX_NODE_ID_LEN)), None);
        let long = node_id_problem(&"a".repeat(MAX_NODE_ID_LEN + 1)).unwrap();
        assert!(
            long.contains("65 bytes") && long.contains("at most 64"),
            "{long}"
        );
        assert!(node_id_problem(&"a".repeat(5000)).unwrap().contains("5000"));
        assert!(node_id_problem("").unwrap().contains("empty"));
        for bad in ["a.b", "a b", "a*", "a>", "é", "a/b", "a\0"] {
            assert!(node_id_problem(bad).is_some(), "{bad:?}");
        }
    }
}

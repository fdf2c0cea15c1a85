//! A request to a command unit as the command sees it: decoded from the NATS message
//! (BHTTP, or the gateway's raw protocol) into [`CommandRequest`], and turned into the
//! `NARUN_REQUEST_*` environment of one run by [`CommandRequest::env`]. Pure: no I/O.
//!
//! # Which protocol
//!
//! A message with an `X-Original-Method` NATS header (what the gateway's raw routes send,
//! always overwriting a client's) is **raw**, whatever its `Content-Type` (on a raw route
//! that header is the client's: a client must not make its body be read as a BHTTP
//! request choosing its own path and headers): the payload is the body, the
//! method, path, query and host come from `X-Original-*`, the other NATS headers are the
//! request headers. Every other message is **BHTTP** (the gateway's HTTP routes,
//! `narunctl request`, the `narun` library's peers); a payload that is not BHTTP is a
//! `400`, as for an app using the `narun` library.
//!
//! # Sanitising (the security promise)
//!
//! Request headers come from anyone who can reach the gateway, so nothing in them may
//! set a variable other than its own `NARUN_REQUEST_HEADER_<NAME>`, nor make the start of
//! the run fail:
//!
//! * a header **name** is passed only when it is 1 to [`MAX_NAME_LEN`] bytes of
//!   `A-Z a-z 0-9 -`; it becomes `NARUN_REQUEST_HEADER_` + the name upper-cased with `-` as
//!   `_`. Any other byte (`_`, `=`, `.`, NUL, non-ASCII …) drops the header: with `_`
//!   refused, `X_Api_Key` cannot pose as `X-Api-Key` (the CGI/nginx confusion);
//! * a header **value** is passed only when it is UTF-8 without control characters (any
//!   of U+0000–U+001F except tab, U+007F) and at most [`MAX_VALUE_LEN`] bytes; repeated
//!   headers are joined with `, ` (`Cookie` with `; `);
//! * at most [`MAX_HEADERS`] headers and [`MAX_HEADER_BYTES`] of names and values in
//!   all (well below the kernel's 128 KiB per string and `ARG_MAX`); the rest is dropped;
//! * dropped headers are counted in `NARUN_REQUEST_DROPPED_HEADERS`, never fatal;
//! * the method, path, query and host follow the value rule too (at most
//!   [`MAX_VALUE_LEN`] bytes); one that breaks it is a `400` naming it, since a request
//!   cannot go on without them.
//!
//! The environment of a run is the instance's (spec `env`, secrets, `NARUN_*`) minus any
//! spec variable starting with `NARUN_REQUEST_`, plus these: nothing else.

use bytes::Bytes;
use narun_wire::names::request_env as n;

/// Longest header name passed to a command.
pub const MAX_NAME_LEN: usize = 64;
/// Longest value (header, path, query, host, method) passed to a command.
pub const MAX_VALUE_LEN: usize = 8 * 1024;
/// Most headers passed to a command.
pub const MAX_HEADERS: usize = 64;
/// Most bytes of header names and values passed to a command in all.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How the request came, and so how the answer goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Binary HTTP (RFC 9292) in, BHTTP response out.
    Bhttp,
    /// The gateway's raw protocol: body in, body out with `X-Response-Status-Code`.
    Raw,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Bhttp => "bhttp",
            Protocol::Raw => "raw",
        }
    }
}

/// One request, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRequest {
    pub protocol: Protocol,
    pub method: String,
    pub path: String,
    pub query: String,
    pub host: String,
    /// Headers in the order received (BHTTP) or sorted by name (raw), names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

/// The raw protocol's request headers (gateway `mode = "raw"`).
const ORIGINAL_METHOD: &str = "X-Original-Method";
const ORIGINAL_PATH: &str = "X-Original-Path";
const ORIGINAL_QUERY: &str = "X-Original-Query";
const ORIGINAL_HOST: &str = "X-Original-Host";

/// Decode a NATS request: `headers` are the NATS headers (name, values), `payload` the
/// message payload. `Err` is the text of a `400` answer.
pub fn decode(headers: &[(String, Vec<String>)], payload: Bytes) -> Result<CommandRequest, String> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    };
    if let Some(method) = get(ORIGINAL_METHOD) {
        let r = CommandRequest {
            protocol: Protocol::Raw,
            method: method.to_string(),
            path: get(ORIGINAL_PATH).unwrap_or("/").to_string(),
            query: get(ORIGINAL_QUERY).unwrap_or("").to_string(),
            host: get(ORIGINAL_HOST).unwrap_or("").to_string(),
            headers: headers
                .iter()
                .filter(|(k, _)| !is_transport_header(k))
                .flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.as_bytes().to_vec())))
                .collect(),
            body: payload,
        };
        return r.checked();
    }
    let req = narun_wire::bhttp::decode_request_shared(payload)
        .map_err(|e| format!("Failed to decode BHTTP request: {e}"))?;
    let (parts, body) = req.into_parts();
    let r = CommandRequest {
        protocol: Protocol::Bhttp,
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        host: parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        body,
    };
    r.checked()
}

/// NATS headers of the raw protocol and of NATS itself, which are not request headers.
fn is_transport_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("x-original-")
        || lower.starts_with("nats-")
        || lower == narun_wire::names::TIMEOUT_MS_HEADER.to_ascii_lowercase()
}

/// A value a command may see: UTF-8, no control character but tab, bounded.
fn clean_value(v: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(v).ok()?;
    (s.len() <= MAX_VALUE_LEN && !s.chars().any(|c| c.is_control() && c != '\t')).then_some(s)
}

/// The variable of header `name`, or `None` when the name is refused.
pub fn header_var(name: &str) -> Option<String> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return None;
    }
    let upper: String = name
        .bytes()
        .map(|b| {
            if b == b'-' {
                '_'
            } else {
                b.to_ascii_uppercase() as char
            }
        })
        .collect();
    Some(format!("{}{upper}", n::HEADER_PREFIX))
}

impl CommandRequest {
    /// The method, path, query and host must be clean values (see the module docs).
    fn checked(self) -> Result<CommandRequest, String> {
        for (what, v) in [
            ("method", &self.method),
            ("path", &self.path),
            ("query", &self.query),
            ("host", &self.host),
        ] {
            if clean_value(v.as_bytes()).is_none() {
                return Err(format!(
                    "the request {what} is not passed to a command: it must be UTF-8 without control characters and at most {MAX_VALUE_LEN} bytes"
                ));
            }
        }
        if self.method.is_empty() {
            return Err("the request has no method".into());
        }
        Ok(self)
    }

    /// The request id (`X-Request-Id`), when it is a clean value.
    pub fn id(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
            .and_then(|(_, v)| clean_value(v))
    }

    /// The `NARUN_REQUEST_*` variables of a run that may take `timeout_ms` (see the
    /// module docs for what is passed and what is dropped).
    pub fn env(&self, timeout_ms: u64) -> Vec<(String, String)> {
        let mut env = vec![
            (n::PROTOCOL.to_string(), self.protocol.as_str().to_string()),
            (n::METHOD.to_string(), self.method.clone()),
            (n::PATH.to_string(), self.path.clone()),
            (n::QUERY.to_string(), self.query.clone()),
            (n::HOST.to_string(), self.host.clone()),
            (n::CONTENT_LENGTH.to_string(), self.body.len().to_string()),
            (n::TIMEOUT_MS.to_string(), timeout_ms.to_string()),
        ];
        if let Some(id) = self.id() {
            env.push((n::ID.to_string(), id.to_string()));
        }
        // Joined by variable, in the order first seen.
        let mut vars: Vec<(String, String)> = Vec::new();
        let mut dropped = 0usize;
        let mut bytes = 0usize;
        for (name, value) in &self.headers {
            let (Some(var), Some(value)) = (header_var(name), clean_value(value)) else {
                dropped += 1;
                continue;
            };
            match vars.iter_mut().find(|(v, _)| *v == var) {
                Some((_, joined)) => {
                    let sep = if name.eq_ignore_ascii_case("cookie") {
                        "; "
                    } else {
                        ", "
                    };
                    if joined.len() + sep.len() + value.len() > MAX_VALUE_LEN
                        || bytes + sep.len() + value.len() > MAX_HEADER_BYTES
                    {
                        dropped += 1;
                        continue;
                    }
                    bytes += sep.len() + value.len();
                    joined.push_str(sep);
                    joined.push_str(value);
                }
                None => {
                    if vars.len() >= MAX_HEADERS
                        || bytes + var.len() + value.len() > MAX_HEADER_BYTES
                    {
                        dropped += 1;
                        continue;
                    }
                    bytes += var.len() + value.len();
                    vars.push((var, value.to_string()));
                }
            }
        }
        env.extend(vars);
        if dropped > 0 {
            env.push((n::DROPPED_HEADERS.to_string(), dropped.to_string()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bhttp(method: &str, uri: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Bytes {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, http::HeaderValue::from_bytes(v).unwrap());
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        narun_wire::bhttp::encode_request(&parts, body).into()
    }

    fn var<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_bhttp_request_becomes_its_variables() {
        let payload = bhttp(
            "POST",
            "http://example.com/greet/x?name=a%20b&x=1",
            &[
                ("x-api-key", b"k1"),
                ("x-request-id", b"rid-1"),
                ("cookie", b"a=1"),
                ("cookie", b"b=2"),
                ("accept", b"text/plain"),
                ("accept", b"*/*"),
            ],
            b"body!",
        );
        let r = decode(&[], payload).unwrap();
        assert_eq!(r.protocol, Protocol::Bhttp);
        let env = r.env(1500);
        assert_eq!(var(&env, "NARUN_REQUEST_METHOD"), Some("POST"));
        assert_eq!(var(&env, "NARUN_REQUEST_PATH"), Some("/greet/x"));
        assert_eq!(var(&env, "NARUN_REQUEST_QUERY"), Some("name=a%20b&x=1"));
        assert_eq!(var(&env, "NARUN_REQUEST_HOST"), Some("example.com"));
        assert_eq!(var(&env, "NARUN_REQUEST_CONTENT_LENGTH"), Some("5"));
        assert_eq!(var(&env, "NARUN_REQUEST_TIMEOUT_MS"), Some("1500"));
        assert_eq!(var(&env, "NARUN_REQUEST_ID"), Some("rid-1"));
        assert_eq!(var(&env, "NARUN_REQUEST_HEADER_X_API_KEY"), Some("k1"));
        assert_eq!(var(&env, "NARUN_REQUEST_HEADER_COOKIE"), Some("a=1; b=2"));
        assert_eq!(
            var(&env, "NARUN_REQUEST_HEADER_ACCEPT"),
            Some("text/plain, */*")
        );
        assert_eq!(var(&env, "NARUN_REQUEST_DROPPED_HEADERS"), None);
        assert_eq!(&r.body[..], b"body!");
    }

    #[test]
    fn a_raw_request_claiming_to_be_bhttp_stays_raw() {
        // A client on a raw route sends `Content-Type: application/bhttp` and a BHTTP
        // request as its body: it must not choose the path or the headers (e.g. the
        // identity header the gateway sets after authorization).
        let inner = bhttp("GET", "/admin", &[("narun-auth-user", b"admin")], b"");
        let headers = vec![
            (ORIGINAL_METHOD.to_string(), vec!["POST".to_string()]),
            (ORIGINAL_PATH.to_string(), vec!["/api/x".to_string()]),
            (
                "Content-Type".to_string(),
                vec![narun_wire::names::BHTTP_CONTENT_TYPE.to_string()],
            ),
        ];
        let r = decode(&headers, inner.clone()).unwrap();
        assert_eq!(r.protocol, Protocol::Raw);
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/api/x");
        assert_eq!(r.body, inner, "the payload is the body, as sent");
        let env = r.env(1);
        assert_eq!(var(&env, "NARUN_REQUEST_HEADER_NARUN_AUTH_USER"), None);
    }

    #[test]
    fn hostile_header_names_and_values_are_dropped_and_counted() {
        let long = vec![b'v'; MAX_VALUE_LEN + 1];
        let payload = bhttp(
            "GET",
            "/",
            &[
                // `_` could pose as `-`; `.`, `!` are legal HTTP token bytes, not env ones.
                ("x_api_key", b"spoof"),
                ("ld.preload", b"/tmp/x.so"),
                ("a!b", b"1"),
                // Non-UTF-8 and control characters.
                ("x-bin", b"\xff\xfe"),
                ("x-long", &long),
                ("x-fine", b"ok\tok"),
            ],
            b"",
        );
        let env = decode(&[], payload).unwrap().env(1);
        assert_eq!(var(&env, "NARUN_REQUEST_HEADER_X_FINE"), Some("ok\tok"));
        assert_eq!(var(&env, "NARUN_REQUEST_DROPPED_HEADERS"), Some("5"));
        for (k, v) in &env {
            assert!(k.starts_with("NARUN_REQUEST_"), "{k}");
            assert!(!k.contains('=') && !k.contains('\0') && !v.contains('\0'));
            assert!(v.len() <= MAX_VALUE_LEN);
        }
        assert_eq!(
            env.iter()
                .filter(|(k, _)| k.starts_with("NARUN_REQUEST_HEADER_"))
                .count(),
            1
        );
    }

    #[test]
    fn header_count_and_size_are_bounded() {
        let names: Vec<String> = (0..200).map(|i| format!("x-h{i}")).collect();
        let value = vec![b'v'; 4000];
        let headers: Vec<(&str, &[u8])> = names
            .iter()
            .map(|n| (n.as_str(), value.as_slice()))
            .collect();
        let env = decode(&[], bhttp("GET", "/", &headers, b""))
            .unwrap()
            .env(1);
        let passed: usize = env
            .iter()
            .filter(|(k, _)| k.starts_with("NARUN_REQUEST_HEADER_"))
            .map(|(k, v)| k.len() + v.len())
            .sum();
        assert!(passed <= MAX_HEADER_BYTES, "{passed}");
        let count = env
            .iter()
            .filter(|(k, _)| k.starts_with("NARUN_REQUEST_HEADER_"))
            .count();
        let dropped: usize = var(&env, "NARUN_REQUEST_DROPPED_HEADERS")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(count + dropped, 200);
    }

    #[test]
    fn a_raw_request_takes_the_gateway_headers() {
        let h = |k: &str, v: &str| (k.to_string(), vec![v.to_string()]);
        let headers = vec![
            h("X-Original-Method", "PUT"),
            h("X-Original-Path", "/r/a"),
            h("X-Original-Query", "q=1"),
            h("X-Original-Host", "h.example"),
            h("Narun-Timeout-Ms", "5000"),
            h("Content-Type", "text/plain"),
            h("X-Request-Id", "r2"),
        ];
        let r = decode(&headers, Bytes::from_static(b"raw body")).unwrap();
        assert_eq!(r.protocol, Protocol::Raw);
        let env = r.env(10);
        assert_eq!(var(&env, "NARUN_REQUEST_PROTOCOL"), Some("raw"));
        assert_eq!(var(&env, "NARUN_REQUEST_METHOD"), Some("PUT"));
        assert_eq!(var(&env, "NARUN_REQUEST_PATH"), Some("/r/a"));
        assert_eq!(var(&env, "NARUN_REQUEST_QUERY"), Some("q=1"));
        assert_eq!(var(&env, "NARUN_REQUEST_HOST"), Some("h.example"));
        assert_eq!(var(&env, "NARUN_REQUEST_ID"), Some("r2"));
        assert_eq!(
            var(&env, "NARUN_REQUEST_HEADER_CONTENT_TYPE"),
            Some("text/plain")
        );
        assert_eq!(var(&env, "NARUN_REQUEST_HEADER_NARUN_TIMEOUT_MS"), None);
        assert_eq!(var(&env, "NARUN_REQUEST_HEADER_X_ORIGINAL_PATH"), None);
        // Raw headers may carry what HTTP would not: control characters, `=` in names.
        let mut odd = headers.clone();
        odd.push(h("X-Ctl", "a\u{1}b"));
        odd.push(h("A=B", "c"));
        let env = decode(&odd, Bytes::new()).unwrap().env(1);
        assert_eq!(var(&env, "NARUN_REQUEST_DROPPED_HEADERS"), Some("2"));
        assert!(
            env.iter()
                .all(|(k, v)| k.starts_with("NARUN_REQUEST_") && !v.contains('\u{1}'))
        );
        // A raw path with a control character cannot be passed: 400.
        let mut bad = headers.clone();
        bad[1] = h("X-Original-Path", "/a\u{1b}[2J");
        assert!(decode(&bad, Bytes::new()).unwrap_err().contains("path"));
        // Not BHTTP and not raw: 400.
        assert!(decode(&[], Bytes::from_static(b"\xff\xff")).is_err());
    }
}

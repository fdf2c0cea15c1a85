//! CORS per route (`[gateway.routes.cors]`): the gateway answers browsers' preflights
//! itself and adds the `Access-Control-*` headers to the route's answers.
//!
//! ```toml
//! [gateway.routes.cors]
//! allow_origins = ["https://app.example.com"]   # exact origins, or ["*"]
//! allow_methods = ["GET", "POST"]               # default: the route's methods (or GET, HEAD, POST)
//! allow_headers = ["content-type", "authorization"]
//! expose_headers = ["x-request-id"]
//! allow_credentials = false
//! max_age_sec = 600
//! ```
//!
//! * **Preflight** (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) to a
//!   route with `cors`: answered by the gateway, never forwarded, no `auth` needed
//!   (browsers send no credentials on it) — 204 with the allowed origin, methods,
//!   headers and max age if the origin, the method and every requested header are allowed,
//!   else 403 without any `Access-Control-*` header.
//! * **Other requests** with an allowed `Origin`: `Access-Control-Allow-Origin` is that
//!   origin (or `*` for `["*"]` without credentials), plus `-Allow-Credentials`,
//!   `-Expose-Headers` and `Vary: Origin` — on the app's answers and on the gateway's own
//!   (401, 429, …), so the page can read them. An origin that is not allowed is **never
//!   reflected**: the answer carries no `Access-Control-*` header at all, and the app's own
//!   `Access-Control-*` headers are removed on routes with `cors` (the gateway decides).
//! * `["*"]` together with `allow_credentials = true` is refused at load (the Fetch standard
//!   forbids it, and reflecting any origin with credentials hands every site the user's session).

use http::{HeaderMap, HeaderValue, Method, header};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const KEYS: &str =
    "allow_origins, allow_methods, allow_headers, expose_headers, allow_credentials, max_age_sec";
/// Largest `max_age_sec`: one day (browsers cap it lower anyway).
pub const MAX_MAX_AGE_SEC: u64 = 86_400;

/// `[gateway.routes.cors]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CorsConfig {
    /// Exact origins (`scheme://host[:port]`), or `["*"]` for any.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for; default: the route's `methods`, else GET, HEAD, POST.
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for (case-insensitive).
    pub allow_headers: Vec<String>,
    /// Response headers the page may read.
    pub expose_headers: Vec<String>,
    /// Allow cookies / `Authorization` from the page.
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer; default 600.
    pub max_age_sec: Option<u64>,
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
        && rest.chars().all(|c| c.is_ascii_graphic())
        && o.parse::<http::Uri>().is_ok()
}

fn valid_token(s: &str) -> bool {
    http::HeaderName::from_bytes(s.as_bytes()).is_ok()
}

impl CorsConfig {
    /// Problems as (key path, reason).
    pub(crate) fn problems(&self, key: &str) -> Vec<(String, String)> {
        let mut e = Vec::new();
        for k in self.unknown.keys() {
            e.push((
                format!("{key}.{k}"),
                format!("unknown key (known keys: {KEYS})"),
            ));
        }
        if self.allow_origins.is_empty() {
            e.push((
                format!("{key}.allow_origins"),
                "is required: the origins allowed (\"https://app.example.com\"), or [\"*\"]".into(),
            ));
        }
        let any = self.allow_origins.iter().any(|o| o == "*");
        for (i, o) in self.allow_origins.iter().enumerate() {
            if o == "*" {
                if self.allow_origins.len() > 1 {
                    e.push((
                        format!("{key}.allow_origins[{i}]"),
                        "\"*\" must be the only origin".into(),
                    ));
                }
            } else if !valid_origin(o) {
                e.push((
                    format!("{key}.allow_origins[{i}]"),
                    format!("{o:?} is not an origin: write scheme://host[:port], without path or trailing '/'"),
                ));
            } else if o.bytes().any(|b| b.is_ascii_uppercase()) {
                e.push((
                    format!("{key}.allow_origins[{i}]"),
                    format!("{o:?}: write it in lower case, as browsers send it"),
                ));
            }
        }
        if any && self.allow_credentials {
            e.push((
                format!("{key}.allow_credentials"),
                "cannot be true with allow_origins = [\"*\"]: list the origins that may send credentials".into(),
            ));
        }
        for (i, m) in self.allow_methods.iter().flatten().enumerate() {
            if Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).is_err() || m.is_empty()
            {
                e.push((
                    format!("{key}.allow_methods[{i}]"),
                    format!("{m:?} is not an HTTP method"),
                ));
            }
        }
        for (field, list) in [
            ("allow_headers", &self.allow_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            for (i, h) in list.iter().enumerate() {
                if !valid_token(h) {
                    e.push((
                        format!("{key}.{field}[{i}]"),
                        format!("{h:?} is not a header name"),
                    ));
                }
            }
        }
        if let Some(a) = self.max_age_sec
            && a > MAX_MAX_AGE_SEC
        {
            e.push((
                format!("{key}.max_age_sec"),
                format!("{a} is more than {MAX_MAX_AGE_SEC} (one day)"),
            ));
        }
        e
    }
}

/// A route's CORS rules, with its header values built once.
#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    headers: Vec<String>,
    allow_headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// A preflight's answer.
pub enum Preflight {
    /// 204 with these headers.
    Allowed(HeaderMap),
    /// 403, no CORS headers.
    Refused,
}

static VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");

impl Cors {
    /// `route_methods`: the route's `methods` (the default of `allow_methods`).
    pub fn new(cfg: &CorsConfig, route_methods: Option<&[String]>) -> Cors {
        let methods: Vec<Method> = cfg
            .allow_methods
            .as_deref()
            .or(route_methods)
            .map(|l| {
                l.iter()
                    .filter_map(|m| {
                        Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).ok()
                    })
                    .collect()
            })
            .unwrap_or_else(|| vec![Method::GET, Method::HEAD, Method::POST]);
        let join = |v: Vec<&str>| HeaderValue::from_str(&v.join(", ")).ok();
        let headers: Vec<String> = cfg
            .allow_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        Cors {
            any_origin: cfg.allow_origins.iter().any(|o| o == "*"),
            origins: cfg.allow_origins.clone(),
            allow_methods: join(methods.iter().map(Method::as_str).collect())
                .unwrap_or(HeaderValue::from_static("GET")),
            methods,
            allow_headers: if headers.is_empty() {
                None
            } else {
                join(headers.iter().map(String::as_str).collect())
            },
            headers,
            expose: if cfg.expose_headers.is_empty() {
                None
            } else {
                join(cfg.expose_headers.iter().map(String::as_str).collect())
            },
            credentials: cfg.allow_credentials,
            max_age: HeaderValue::from(cfg.max_age_sec.unwrap_or(600)),
        }
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any_origin && !self.credentials {
            return Some(HeaderValue::from_static("*"));
        }
        let o = origin.to_str().ok()?;
        (self.any_origin || self.origins.iter().any(|a| a == o)).then(|| origin.clone())
    }

    /// Whether `req` is a CORS preflight (OPTIONS + Origin + Access-Control-Request-Method);
    /// the requested method.
    pub fn preflight_method(method: &Method, h: &HeaderMap) -> Option<Method> {
        if method != Method::OPTIONS || !h.contains_key(header::ORIGIN) {
            return None;
        }
        let m = h.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        Method::from_bytes(m.as_bytes()).ok()
    }

    /// Answer a preflight.
    pub fn preflight(&self, h: &HeaderMap, method: &Method) -> Preflight {
        let Some(origin) = h.get(header::ORIGIN).and_then(|o| self.allow_origin(o)) else {
            return Preflight::Refused;
        };
        if !self.methods.contains(method) {
            return Preflight::Refused;
        }
        for v in h.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            let Ok(v) = v.to_str() else {
                return Preflight::Refused;
            };
            for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !self.headers.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                    return Preflight::Refused;
                }
            }
        }
        let mut out = HeaderMap::new();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        if let Some(a) = &self.allow_headers {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, a.clone());
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        out.append(header::VARY, VARY_ORIGIN.clone());
        Preflight::Allowed(out)
    }

    /// Set the CORS headers of an answer to a request with `origin` (`None`: none sent),
    /// replacing whatever the app set.
    pub fn decorate(&self, origin: Option<&HeaderValue>, resp: &mut HeaderMap) {
        for h in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            resp.remove(h);
        }
        if !self.any_origin || self.credentials {
            resp.append(header::VARY, VARY_ORIGIN.clone());
        }
        let Some(allowed) = origin.and_then(|o| self.allow_origin(o)) else {
            return;
        };
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if self.credentials {
            resp.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.expose {
            resp.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(t: &str) -> Cors {
        let c: CorsConfig = toml::from_str(t).unwrap();
        assert!(c.problems("cors").is_empty(), "{:?}", c.problems("cors"));
        Cors::new(&c, None)
    }

    fn req(origin: &str, method: &str, headers: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            method.parse().unwrap(),
        );
        if !headers.is_empty() {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                headers.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn preflights_and_decoration() {
        let c = cors(
            "allow_origins = [\"https://app.example\"]\nallow_headers = [\"Content-Type\"]\nallow_credentials = true\n",
        );
        let Preflight::Allowed(h) = c.preflight(
            &req("https://app.example", "POST", "content-type"),
            &Method::POST,
        ) else {
            panic!("refused");
        };
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, HEAD, POST");
        for (o, m, hs) in [
            ("https://evil.example", "POST", ""),
            ("https://app.example.evil", "POST", ""),
            ("https://APP.example", "POST", ""),
            ("null", "POST", ""),
            ("https://app.example", "DELETE", ""),
            ("https://app.example", "POST", "content-type, x-admin"),
        ] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(
                matches!(c.preflight(&req(o, m.as_str(), hs), &m), Preflight::Refused),
                "{o} {m} {hs}"
            );
        }
        let mut resp = HeaderMap::new();
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".parse().unwrap());
        c.decorate(Some(&"https://evil.example".parse().unwrap()), &mut resp);
        assert!(
            resp.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
            "{resp:?}"
        );
        c.decorate(Some(&"https://app.example".parse().unwrap()), &mut resp);
        assert_eq!(
            resp[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        let any = cors("allow_origins = [\"*\"]\n");
        let mut resp = HeaderMap::new();
        any.decorate(Some(&"https://x.example".parse().unwrap()), &mut resp);
        assert_eq!(resp[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    #[test]
    fn config_problems() {
        let c: CorsConfig = toml::from_str(
            "allow_origins = [\"*\", \"https://a.example/\", \"HTTPS://B.example\"]\nallow_credentials = true\n\
             allow_methods = [\"G T\"]\nallow_headers = [\"bad header\"]\nmax_age_sec = 86401\norigins = 1\n",
        )
        .unwrap();
        let got: Vec<String> = c
            .problems("r.cors")
            .into_iter()
            .map(|(k, r)| format!("{k}: {r}"))
            .collect();
        for want in [
            "r.cors.origins: unknown key",
            "r.cors.allow_origins[0]: \"*\" must be the only origin",
            "r.cors.allow_origins[1]: \"https://a.example/\" is not an origin",
            "r.cors.allow_origins[2]: \"HTTPS://B.example\"",
            "r.cors.allow_credentials: cannot be true",
            "r.cors.allow_methods[0]: \"G T\" is not an HTTP method",
            "r.cors.allow_headers[0]: \"bad header\" is not a header name",
            "r.cors.max_age_sec: 86401 is more than 86400",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "missing {want:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), 8, "{got:#?}");
    }
}

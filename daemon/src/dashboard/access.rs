//! Who may do what on the dashboard: pure decisions on request headers, unit-tested here.
//!
//! * **Authentication**: every API request carries `Authorization: Bearer <token>`. The
//!   token is hashed (SHA-256) and compared in constant time with every configured hash,
//!   like the gateway's bearer tokens (`narun_gateway::auth::password`): the config file
//!   holds nothing that opens the dashboard. An admin token gives [`Role::Admin`], a
//!   read-only token [`Role::Read`]; anything else is 401.
//! * **Authorization**: actions (POST) need [`Role::Admin`], else 403.
//! * **CSRF**: the page keeps the token in `sessionStorage` and sends it in a header,
//!   which a browser never attaches by itself to a cross-site request (no cookie exists
//!   to ride along). Actions also require `Content-Type: application/json` (a cross-site
//!   form cannot send it without a CORS preflight, which is never granted), an `Origin`,
//!   when present, equal to the request's own host, and `Sec-Fetch-Site`, when present,
//!   `same-origin`.

use http::{HeaderMap, Method, StatusCode, header};
use narun_gateway::auth::password::{ct_eq, parse_sha256_hex, sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// View everything (no secret values exist on the page).
    Read,
    /// View and act: restart, scale, rollback, delete.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// A refused request: the status and a message for the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: &'static str,
}

fn refuse(status: StatusCode, message: &'static str) -> Refusal {
    Refusal { status, message }
}

/// The configured tokens, as hashes.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    admin: Vec<[u8; 32]>,
    read: Vec<[u8; 32]>,
}

impl Tokens {
    /// From `[dashboard]` (hashes validated before; an unparsable one is skipped).
    pub fn from_config(c: &super::config::DashboardConfig) -> Tokens {
        let parse = |m: &std::collections::BTreeMap<String, String>| {
            m.values().filter_map(|h| parse_sha256_hex(h)).collect()
        };
        Tokens {
            admin: parse(&c.admin_tokens),
            read: parse(&c.read_tokens),
        }
    }

    /// The role of the request's one `Authorization: Bearer` header.
    pub fn role(&self, headers: &HeaderMap) -> Result<Role, Refusal> {
        let mut auth = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (auth.next(), auth.next()) else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "a token is required (Authorization: Bearer TOKEN, once)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(refuse(
                StatusCode::UNAUTHORIZED,
                "the Authorization header is not `Bearer TOKEN`",
            ))?;
        let h = sha256(token.as_bytes());
        // Compare with every hash (no early exit).
        let admin = self.admin.iter().fold(false, |m, a| ct_eq(a, &h) | m);
        let read = self.read.iter().fold(false, |m, a| ct_eq(a, &h) | m);
        match (admin, read) {
            (true, _) => Ok(Role::Admin),
            (false, true) => Ok(Role::Read),
            _ => Err(refuse(StatusCode::UNAUTHORIZED, "unknown token")),
        }
    }
}

/// Whether a request of `role` may perform an action (a POST): see the module doc.
/// `authority`: the request URI's authority, which carries the host over HTTP/2
/// (`:authority`, no `Host` header); used when there is no `Host`.
pub fn check_action(
    role: Role,
    method: &Method,
    headers: &HeaderMap,
    authority: Option<&str>,
) -> Result<(), Refusal> {
    if method != Method::POST {
        return Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "actions are POST requests",
        ));
    }
    if role != Role::Admin {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "this token may only view: actions need an admin token",
        ));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "actions need Content-Type: application/json",
        ));
    }
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "cross-site request refused (Sec-Fetch-Site)",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(authority);
        let origin_host = origin.to_str().ok().and_then(|o| {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
        });
        if host.is_none() || origin_host != host {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "cross-origin request refused (Origin is not this host)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hex(token: &str) -> String {
        sha256(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn tokens() -> Tokens {
        Tokens::from_config(&super::super::config::DashboardConfig {
            admin_tokens: [("ops".to_string(), hex("admin-secret"))].into(),
            read_tokens: [("wall".to_string(), hex("read-secret"))].into(),
            ..Default::default()
        })
    }

    fn with(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn roles_from_tokens() {
        let t = tokens();
        let role = |h: &[(&'static str, &str)]| t.role(&with(h));
        assert_eq!(
            role(&[("authorization", "Bearer admin-secret")]),
            Ok(Role::Admin)
        );
        assert_eq!(
            role(&[("authorization", "Bearer read-secret")]),
            Ok(Role::Read)
        );
        for bad in [
            vec![],
            vec![("authorization", "Bearer nope")],
            vec![("authorization", "Basic YTpi")],
            vec![("authorization", "Bearer ")],
            vec![
                ("authorization", "Bearer admin-secret"),
                ("authorization", "Bearer admin-secret"),
            ],
        ] {
            assert_eq!(
                role(&bad).unwrap_err().status,
                StatusCode::UNAUTHORIZED,
                "{bad:?}"
            );
        }
        // No tokens configured: nothing is let in.
        let none = Tokens::default();
        assert!(none.role(&with(&[("authorization", "Bearer x")])).is_err());
    }

    #[test]
    fn actions_need_admin_json_and_same_origin() {
        let ok = with(&[
            ("content-type", "application/json"),
            ("host", "dev:8080"),
            ("origin", "http://dev:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(check_action(Role::Admin, &Method::POST, &ok, None), Ok(()));
        assert_eq!(
            check_action(Role::Read, &Method::POST, &ok, None)
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            check_action(Role::Admin, &Method::GET, &ok, None)
                .unwrap_err()
                .status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        let cases: [(&[(&'static str, &str)], StatusCode); 4] = [
            (
                &[("content-type", "text/plain")],
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                &[
                    ("content-type", "application/json"),
                    ("host", "dev:8080"),
                    ("origin", "http://evil:8080"),
                ],
                StatusCode::FORBIDDEN,
            ),
            (
                &[
                    ("content-type", "application/json"),
                    ("origin", "http://dev:8080"),
                ],
                StatusCode::FORBIDDEN,
            ),
            (
                &[
                    ("content-type", "application/json"),
                    ("sec-fetch-site", "cross-site"),
                ],
                StatusCode::FORBIDDEN,
            ),
        ];
        for (h, want) in cases {
            assert_eq!(
                check_action(Role::Admin, &Method::POST, &with(h), None)
                    .unwrap_err()
                    .status,
                want,
                "{h:?}"
            );
        }
        // A same-origin fetch without Origin (older browsers on GET-like POSTs) is fine.
        assert_eq!(
            check_action(
                Role::Admin,
                &Method::POST,
                &with(&[("content-type", "application/json; charset=utf-8")]),
                None
            ),
            Ok(())
        );
        // Over HTTP/2 the host is the URI's authority (no Host header): same origin is
        // accepted, another origin refused.
        let h2 = with(&[
            ("content-type", "application/json"),
            ("origin", "https://dev.example:8443"),
        ]);
        assert_eq!(
            check_action(Role::Admin, &Method::POST, &h2, Some("dev.example:8443")),
            Ok(())
        );
        assert_eq!(
            check_action(Role::Admin, &Method::POST, &h2, Some("other.example"))
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            check_action(Role::Admin, &Method::POST, &h2, None)
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
    }
}

//! Request paths as the gateway routes and forwards them: normalised per RFC 3986 §6.2.2.
//!
//! An app that percent-decodes its path would otherwise see another path than the one the
//! gateway routed: `/hello/%2e%2e/admin` matches the `/hello/` route but means `/admin`.
//! So, before routing, [`normalize`]:
//!
//! 1. **percent-decodes the unreserved characters** (`A-Z a-z 0-9 - . _ ~`; `%2e` is `.`)
//!    and writes the other escapes with upper-case hex (`%c3%a9` → `%C3%A9`);
//! 2. **refuses** a `%` not followed by two hex digits, escapes an app could decode
//!    into a separator or a control character: `%2F` (`/`), `%5C` (`\`), `%00`–`%1F`, `%7F`,
//!    and a literal `\` (which some frameworks take for `/`) ([`PathError`]; the gateway
//!    answers 400);
//! 3. **removes dot segments** (`/a/./b` → `/a/b`, `/a/b/../c` → `/a/c`); a `..` above the
//!    root is refused, and [`Normalized::climb`] records how far up a `..` went, so the
//!    router can refuse one that climbs out of a route ([`Normalized::climbs_out_of`]): out
//!    of the route the path was sent through ([`Normalized::through`], the decoded path
//!    before dot segments are removed) or out of the route it ends up in. Under the prefix
//!    route `/hello/`, `/hello/a/../b` is `/hello/b`, but `/hello/../admin` is a 400.
//!
//! Everything else stays as the client sent it (`//` is not collapsed; the query is not
//! part of the path). The app receives the normalised path. A path without `%` and without
//! dot segments is returned as is, borrowed: the common case costs one scan.

use std::borrow::Cow;

/// Why a request path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F`, `%5C` or an escaped control character.
    EncodedSeparator,
    /// A literal `\`, which some apps and frameworks take for `/`.
    Backslash,
    /// A `..` segment above the root, or out of the matched route.
    Climbs,
}

impl PathError {
    /// The 400 answer's text.
    pub fn message(self) -> &'static str {
        match self {
            PathError::BadEscape => "Invalid path: '%' must be followed by two hex digits",
            PathError::EncodedSeparator => {
                "Invalid path: encoded '/', '\\' and control characters (%2F, %5C, %00-%1F, %7F) are not allowed"
            }
            PathError::Climbs => "Invalid path: '..' segments may not climb out of the route",
            PathError::Backslash => "Invalid path: '\\' is not allowed (use '/')",
        }
    }
}

/// A normalised request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized<'a> {
    /// The path to route and forward.
    pub path: Cow<'a, str>,
    /// The percent-decoded path before dot segments were removed: the path the client sent
    /// the request "through".
    pub through: Cow<'a, str>,
    /// The fewest segments left after a `..` removed one (`None`: no `..` removed any).
    pub climb: Option<usize>,
}

impl Normalized<'_> {
    /// Whether a `..` removed one of the first `depth` segments ([`depth`] of the route
    /// that matched the normalised path).
    pub fn climbs_out_of(&self, depth: usize) -> bool {
        self.climb.is_some_and(|c| c < depth)
    }
}

/// How many leading segments of a request path a route owns: `/` owns none, the prefix
/// route `/hello/` one (`hello`), the exact route `/api/status` two (every segment).
pub fn depth(route: &str) -> usize {
    let slashes = route.bytes().filter(|b| *b == b'/').count();
    if route.ends_with('/') {
        slashes - 1
    } else {
        slashes
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn has_dot_segment(path: &str) -> bool {
    path.contains("/.") && path.split('/').any(|s| s == "." || s == "..")
}

/// Normalise a request path (the URI's path, no query). A path that does not start with
/// `/` (`*`, or empty) is returned unchanged: it matches no route.
pub fn normalize(path: &str) -> Result<Normalized<'_>, PathError> {
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if !path.starts_with('/') || (!path.contains('%') && !has_dot_segment(path)) {
        return Ok(Normalized {
            path: Cow::Borrowed(path),
            through: Cow::Borrowed(path),
            climb: None,
        });
    }
    // 1 and 2: percent-encoding normalisation.
    let decoded: Cow<'_, str> = if path.contains('%') {
        let b = path.as_bytes();
        let mut out = String::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'%' {
                // Request paths from hyper are ASCII; keep any other byte's char intact.
                let c = path[i..].chars().next().expect("in bounds");
                out.push(c);
                i += c.len_utf8();
                continue;
            }
            let (Some(hi), Some(lo)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = hi << 4 | lo;
            if v == b'/' || v == b'\\' || v < 0x20 || v == 0x7f {
                return Err(PathError::EncodedSeparator);
            }
            if is_unreserved(v) {
                out.push(v as char);
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[usize::from(hi)] as char);
                out.push(HEX[usize::from(lo)] as char);
            }
            i += 3;
        }
        Cow::Owned(out)
    } else {
        Cow::Borrowed(path)
    };
    if !has_dot_segment(&decoded) {
        return Ok(Normalized {
            path: decoded.clone(),
            through: decoded,
            climb: None,
        });
    }
    // 3: remove dot segments (RFC 3986 §5.2.4, on whole segments).
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let mut climb: Option<usize> = None;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::Climbs);
                }
                climb = Some(climb.map_or(out.len(), |c| c.min(out.len())));
            }
            s => out.push(s),
        }
        // A trailing `.` or `..` leaves a directory: `/a/b/..` is `/a/`.
        if i == last && (*seg == "." || *seg == "..") {
            out.push("");
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(Normalized {
        path: Cow::Owned(path),
        through: decoded,
        climb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<(String, Option<usize>), PathError> {
        normalize(p).map(|n| (n.path.into_owned(), n.climb))
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in ["/", "/a/b", "/a//b/", "/a/.b/..c/d..", "*", ""] {
            let n = normalize(p).unwrap();
            assert!(matches!(n.path, Cow::Borrowed(_)), "{p}");
            assert_eq!(n.path, p);
            assert_eq!(n.climb, None);
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_upper_cased() {
        assert_eq!(norm("/%41%7a%2D%2e%5f%7E").unwrap().0, "/Az-._~");
        assert_eq!(norm("/caf%c3%a9?").unwrap().0, "/caf%C3%A9?");
        assert_eq!(norm("/a%20b").unwrap().0, "/a%20b");
        assert_eq!(norm("/a%3Fb").unwrap().0, "/a%3Fb");
    }

    #[test]
    fn bad_and_dangerous_escapes_are_refused() {
        for p in ["/a%", "/a%2", "/a%zz", "/a%2g", "/%%41"] {
            assert_eq!(norm(p), Err(PathError::BadEscape), "{p}");
        }
        for p in [
            "/a%2Fb",
            "/a%2f..%2fb",
            "/a%5cb",
            "/a%00",
            "/a%0a",
            "/a%7f",
            "/a%1F",
        ] {
            assert_eq!(norm(p), Err(PathError::EncodedSeparator), "{p}");
        }
    }

    #[test]
    fn dot_segments_are_removed_and_climbs_recorded() {
        assert_eq!(norm("/a/./b").unwrap(), ("/a/b".into(), None));
        assert_eq!(norm("/a/b/.").unwrap(), ("/a/b/".into(), None));
        assert_eq!(norm("/.").unwrap(), ("/".into(), None));
        assert_eq!(norm("/a/b/../c").unwrap(), ("/a/c".into(), Some(1)));
        assert_eq!(norm("/a/b/..").unwrap(), ("/a/".into(), Some(1)));
        assert_eq!(norm("/a/b/c/../../d").unwrap(), ("/a/d".into(), Some(1)));
        assert_eq!(norm("/a/..").unwrap(), ("/".into(), Some(0)));
        assert_eq!(norm("/a//../b").unwrap(), ("/a/b".into(), Some(1)));
        assert_eq!(
            norm("/hello/%2e%2e/admin").unwrap(),
            ("/admin".into(), Some(0))
        );
        assert_eq!(norm("/hello/%2E/x").unwrap(), ("/hello/x".into(), None));
        for p in ["/..", "/../a", "/a/../..", "/%2e%2e/x"] {
            assert_eq!(norm(p), Err(PathError::Climbs), "{p}");
        }
    }

    #[test]
    fn route_depths_and_climbing_out() {
        assert_eq!(depth("/"), 0);
        assert_eq!(depth("/hello/"), 1);
        assert_eq!(depth("/api/v1/"), 2);
        assert_eq!(depth("/health"), 1);
        assert_eq!(depth("/api/status"), 2);
        let inside = normalize("/hello/a/../b").unwrap();
        assert_eq!(inside.path, "/hello/b");
        assert!(!inside.climbs_out_of(depth("/hello/")));
        let out = normalize("/hello/../admin").unwrap();
        assert_eq!(out.through, "/hello/../admin");
        assert!(out.climbs_out_of(depth("/hello/")));
        assert!(out.climbs_out_of(depth("/admin")));
        assert!(!out.climbs_out_of(depth("/")));
        let back = normalize("/hello/../hello/x").unwrap();
        assert!(
            back.climbs_out_of(depth("/hello/")),
            "left the route and came back"
        );
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in [
            "/a/./b/../c/%41%2e%2E/d",
            "/x/%c3%a9/../y",
            "/a//../b/.",
            "/hello/%7euser",
        ] {
            let once = norm(p).unwrap().0;
            assert_eq!(norm(&once).unwrap().0, once, "{p}");
        }
    }
}

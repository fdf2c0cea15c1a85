//! Turning failures into one line that says what to do: close matches for a mistyped
//! name, who may read a file that cannot be read, whether a NATS server refused the
//! connection at once, and a closed stdout.
//!
//! Every narunctl failure ends as one `error: <cause> (<hint>)` line on stderr (`main`).
//! The functions here are pure or read only what they describe (a file's owner and mode,
//! `/proc/self`, `/etc/passwd`), so they are unit-tested without NATS.
//!
//! Broken pipes: `narunctl nodes ls | head -1` closes stdout while narunctl still
//! writes. Rust ignores SIGPIPE, so the write fails with `EPIPE`, and `println!` panics
//! on a failed write. [`quiet_on_broken_pipe`] installs a panic hook that turns exactly
//! that panic into a quiet exit 0, for every command at once (they print with
//! `println!`), and [`is_broken_pipe`] lets `main` do the same for an error that carries
//! `EPIPE` up as a value.

use std::io;
use std::path::Path;

/// Up to three candidates close to `word` (Levenshtein distance at most a third of its
/// length, at least 1, or one contains the other), closest first, for "did you mean …?".
pub fn close_matches<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    let max = (word.chars().count() / 3).max(1);
    let lower = word.to_lowercase();
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .filter(|c| *c != word && !c.is_empty())
        .filter_map(|c| {
            let d = levenshtein(&lower, &c.to_lowercase());
            let contains = lower.len() >= 3
                && (c.to_lowercase().contains(&lower) || lower.contains(&c.to_lowercase()));
            (d <= max || contains).then_some((d, c))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, c)| c).collect()
}

/// `; did you mean a, b?` or nothing.
pub fn did_you_mean(matches: &[&str]) -> String {
    if matches.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", matches.join(", "))
    }
}

/// Edit distance (insertions, deletions, substitutions) between two strings, by chars.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Why a subject token (an app name or node id given on the command line) cannot be one:
/// empty, or a character NATS gives a meaning to (`.` `*` `>`, white space, controls).
pub fn subject_token_problem(token: &str) -> Option<String> {
    if token.is_empty() {
        return Some("is empty".into());
    }
    token
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
        .map(|c| format!("{token:?} contains {c:?}, which cannot be part of a NATS subject token"))
}

/// The text of a failed read of `path` (`what` names it: "the --creds file"), with a hint
/// when it is a permission problem: the file's owner and mode, who narunctl runs as, and
/// what to do.
pub fn read_error(what: &str, path: &Path, e: &io::Error) -> String {
    let mut s = format!("cannot read {what} {}: {e}", path.display());
    if e.kind() == io::ErrorKind::PermissionDenied {
        s.push_str(&format!(" ({})", permission_hint(path)));
    }
    s
}

/// `owner root, mode 0600; narunctl runs as uid 1000 (alice): …` for a path that cannot
/// be read or searched.
pub fn permission_hint(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let me = current_uid();
    let who = match me {
        Some(uid) => format!("narunctl runs as {}", user_label(uid)),
        None => "narunctl's user".to_string(),
    };
    // The deepest part of the path we may look at says whose it is.
    let mut shown = None;
    let mut p = Some(path);
    while let Some(cur) = p {
        if let Ok(m) = std::fs::metadata(cur) {
            shown = Some(format!(
                "{}{} is owned by {}, mode {:04o}",
                if cur == path { "" } else { "its parent " },
                if cur == path {
                    "it".to_string()
                } else {
                    cur.display().to_string()
                },
                user_label(m.uid()),
                m.mode() & 0o7777
            ));
            break;
        }
        p = cur.parent();
    }
    format!(
        "{}{who}: make it readable for this user (chown/chmod, or add the user to the file's group), or run narunctl as a user who may read it",
        shown.map(|s| format!("{s}; ")).unwrap_or_default()
    )
}

/// Our effective uid: the owner of `/proc/self`.
pub fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// `uid 1000 (alice)`, or `uid 1000` when `/etc/passwd` does not name it; `root` for 0.
pub fn user_label(uid: u32) -> String {
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| user_name(&t, uid));
    match name {
        Some(n) if uid == 0 => n,
        Some(n) => format!("uid {uid} ({n})"),
        None => format!("uid {uid}"),
    }
}

/// The name of `uid` in the text of an `/etc/passwd`.
pub fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id = f.nth(1)?.parse::<u32>().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

/// The kind of the OS error a message such as `… (os error 32)` ends with (how Rust
/// renders an `io::Error`), if it ends with one.
pub fn os_error_kind(message: &str) -> Option<io::ErrorKind> {
    let (_, tail) = message.rsplit_once("(os error ")?;
    let code: i32 = tail.strip_suffix(')')?.parse().ok()?;
    Some(io::Error::from_raw_os_error(code).kind())
}

/// Whether an error is a write to a closed pipe (anywhere in its chain).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || os_error_kind(&c.to_string()) == Some(io::ErrorKind::BrokenPipe)
    })
}

/// A generic hint for an error whose text ends with a permission error from the OS and
/// carries no hint of its own yet.
pub fn generic_permission_hint(rendered: &str) -> Option<String> {
    let kind = os_error_kind(rendered.trim_end())?;
    (kind == io::ErrorKind::PermissionDenied).then(|| {
        let who = current_uid()
            .map(user_label)
            .unwrap_or_else(|| "this user".into());
        format!(
            "narunctl runs as {who}: check the owner and mode of the file or directory named above, or run narunctl as a user who may use it"
        )
    })
}

/// Whether a panic message is `println!`'s "failed printing to stdout: Broken pipe (os
/// error 32)" (or stderr's).
pub fn is_broken_pipe_panic(message: &str) -> bool {
    message.starts_with("failed printing to std")
        && os_error_kind(message) == Some(io::ErrorKind::BrokenPipe)
}

/// Install the panic hook that ends narunctl quietly with status 0 when the reader of its
/// output went away (see the module docs); any other panic goes to the default hook.
pub fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if is_broken_pipe_panic(message) {
            std::process::exit(0);
        }
        default(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("hello", "hello"), 0);
        assert_eq!(levenshtein("helo", "hello"), 1);
        assert_eq!(levenshtein("hlelo", "hello"), 2);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }

    #[test]
    fn close_matches_rank_and_bound() {
        let apps = ["hello", "hello-api", "world", "help", "x"];
        assert_eq!(close_matches("helo", apps), vec!["hello", "help"]);
        assert_eq!(close_matches("wrld", apps), vec!["world"]);
        assert!(close_matches("zzzzzz", apps).is_empty());
        // The exact name is not a suggestion; substrings are.
        assert_eq!(close_matches("hello", apps), vec!["hello-api"]);
        assert_eq!(did_you_mean(&["a", "b"]), "; did you mean a, b?");
        assert_eq!(did_you_mean(&[]), "");
    }

    #[test]
    fn subject_tokens() {
        assert!(subject_token_problem("hello-1_x").is_none());
        for bad in ["", "a.b", "a*", ">", "a b", "a\tb"] {
            assert!(subject_token_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn os_errors_and_pipes() {
        assert_eq!(
            os_error_kind("failed printing to stdout: Broken pipe (os error 32)"),
            Some(io::ErrorKind::BrokenPipe)
        );
        assert!(is_broken_pipe_panic(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(is_broken_pipe_panic(
            "failed printing to stderr: Broken pipe (os error 32)"
        ));
        assert!(!is_broken_pipe_panic("index out of bounds (os error 32)"));
        assert!(!is_broken_pipe_panic("failed printing to stdout: oops"));
        assert_eq!(
            os_error_kind("x: Permission denied (os error 13)"),
            Some(io::ErrorKind::PermissionDenied)
        );
        assert!(generic_permission_hint("x: Permission denied (os error 13)").is_some());
        assert!(generic_permission_hint("x: No such file (os error 2)").is_none());
        let e = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }

    #[test]
    fn passwd_names() {
        let t = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/usr/sbin/nologin\nbad\n";
        assert_eq!(user_name(t, 0).as_deref(), Some("root"));
        assert_eq!(user_name(t, 65534).as_deref(), Some("nobody"));
        assert_eq!(user_name(t, 7), None);
    }
}

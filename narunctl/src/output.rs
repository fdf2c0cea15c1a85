//! Presenting results: tables, `--json`, raw bytes on stdout, human sizes, durations and
//! ages, and the `Type 'yes'` confirmation prompt.
//!
//! A leaf module: it imports no command, and knows nothing about NATS.

use anyhow::{Result, anyhow, bail};
use std::io::Write;
use std::time::Duration;

/// Left-aligned columns separated by two spaces, header first; trailing blanks trimmed.
pub fn table_lines<R: AsRef<[String]>>(header: &[&str], rows: &[R]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.as_ref().iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut lines = vec![line(header.to_vec())];
    for r in rows {
        lines.push(line(r.as_ref().iter().map(String::as_str).collect()));
    }
    lines
}

/// Print a [`table_lines`] table.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    for l in table_lines(header, rows) {
        println!("{l}");
    }
}

/// Print `value` as pretty JSON (`--json`).
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Write generated output; a closed pipe (`| head`) is not an error.
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow!("writing to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

/// Ask `question` on stderr and succeed only if the operator types `yes`. Without a
/// terminal on stdin nothing is asked (a script must not hang): the answer is no, and
/// the error says to pass `-y`.
pub fn confirm(question: &str) -> Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!("not confirmed: stdin is not a terminal; pass -y to skip the question");
    }
    ask_yes(question)
}

/// Ask `question` on stderr, read one line from stdin, succeed only on `yes` (whether
/// stdin is a terminal is the caller's business).
pub fn ask_yes(question: &str) -> Result<()> {
    eprint!("{question} Type 'yes': ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != "yes" {
        bail!("not confirmed; nothing deleted (use -y to skip the question)");
    }
    Ok(())
}

/// Time since an RFC 3339 timestamp (zero if it is in the future); `None` if it does not
/// parse.
pub fn age(ts: &str) -> Option<Duration> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    let d = time::OffsetDateTime::now_utc() - t;
    Some(Duration::from_secs(d.whole_seconds().max(0) as u64))
}

/// `42s`, `3m5s`, `2h10m`, `4d3h`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `1.2 MiB`-style size.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A timestamp in RFC 3339 (what `ls` tables and `--json` show); `None` if there is none
/// or it cannot be formatted.
pub fn rfc3339(t: Option<time::OffsetDateTime>) -> Option<String> {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
}

/// Make text from an app safe to print: escape sequences other than colours (SGR,
/// `ESC [ … m`) are removed (cursor moves, screen clears, window titles and hyperlinks
/// (OSC), device queries), and so are control characters other than tab; colours are
/// kept only if `keep_colors` (stdout is a terminal). A sequence cut off at the end of the
/// text is removed too. Text without controls is returned as is.
///
/// A small state machine over chars, following ECMA-48: `ESC [` (or the 8-bit CSI,
/// U+009B) starts a control sequence of parameter bytes `0x30–0x3F`, intermediate bytes
/// `0x20–0x2F` and one final byte `0x40–0x7E`; `ESC ]`, `ESC P`, `ESC X`, `ESC ^`, `ESC _`
/// start a string ended by BEL or `ESC \`; any other `ESC` takes intermediates and one
/// final byte.
pub fn clean_controls(text: &str, keep_colors: bool) -> std::borrow::Cow<'_, str> {
    fn is_control(c: char) -> bool {
        (c.is_control() && c != '\t') || c == '\u{7f}'
    }
    if !text.chars().any(is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    enum State {
        Text,
        Esc,
        /// In a control sequence (its bytes so far are in `seq`).
        Csi,
        /// In an OSC/DCS/… string; `esc` after an ESC (maybe the ST `ESC \`).
        Str {
            esc: bool,
        },
        /// After `ESC` and intermediates.
        EscIntermediate,
    }
    let mut out = String::with_capacity(text.len());
    let mut seq = String::new();
    let mut state = State::Text;
    for c in text.chars() {
        state = match state {
            State::Text => match c {
                '\u{1b}' => {
                    seq.clear();
                    State::Esc
                }
                '\u{9b}' => {
                    seq.clear();
                    seq.push_str("\u{1b}[");
                    State::Csi
                }
                '\u{90}' | '\u{9d}' | '\u{98}' | '\u{9e}' | '\u{9f}' => State::Str { esc: false },
                c if is_control(c) => State::Text,
                c => {
                    out.push(c);
                    State::Text
                }
            },
            State::Esc => match c {
                '[' => {
                    seq.push_str("\u{1b}[");
                    State::Csi
                }
                ']' | 'P' | 'X' | '^' | '_' => State::Str { esc: false },
                '\u{20}'..='\u{2f}' => State::EscIntermediate,
                _ => State::Text,
            },
            State::EscIntermediate => match c {
                '\u{20}'..='\u{2f}' => State::EscIntermediate,
                _ => State::Text,
            },
            State::Csi => match c {
                '\u{20}'..='\u{3f}' => {
                    seq.push(c);
                    State::Csi
                }
                '\u{40}'..='\u{7e}' => {
                    // SGR: only digits, `;` and `:` as parameters, final `m`.
                    let params = &seq[2..];
                    if keep_colors
                        && c == 'm'
                        && params
                            .chars()
                            .all(|p| p.is_ascii_digit() || p == ';' || p == ':')
                    {
                        out.push_str(&seq);
                        out.push('m');
                    }
                    State::Text
                }
                // Not a valid sequence: drop what we have, go on with the text.
                _ => State::Text,
            },
            State::Str { esc } => match c {
                '\u{7}' | '\u{9c}' => State::Text,
                '\\' if esc => State::Text,
                '\u{1b}' => State::Str { esc: true },
                _ => State::Str { esc: false },
            },
        };
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_cleaned() {
        let red = "\u{1b}[31mred\u{1b}[0m plain";
        assert_eq!(clean_controls(red, true), red);
        assert_eq!(clean_controls(red, false), "red plain");
        assert_eq!(
            clean_controls("a\u{1b}[1;38;5;196mb", true),
            "a\u{1b}[1;38;5;196mb"
        );
        assert_eq!(clean_controls("a\u{1b}[1;38:2::255:0:0mb", false), "ab");
        // Cursor moves, clears, private modes: removed even on a terminal.
        assert_eq!(
            clean_controls("a\u{1b}[2Jb\u{1b}[10;1Hc\u{1b}[?25ld", true),
            "abcd"
        );
        // OSC title and hyperlinks, ended by BEL or ST.
        assert_eq!(clean_controls("x\u{1b}]0;pwned\u{7}y", true), "xy");
        assert_eq!(
            clean_controls("\u{1b}]8;;http://e.x\u{1b}\\link\u{1b}]8;;\u{1b}\\", true),
            "link"
        );
        // Other escapes, controls, DEL, 8-bit CSI, a cut-off sequence.
        assert_eq!(clean_controls("a\u{1b}(Bb\u{1b}7c", true), "abc");
        assert_eq!(
            clean_controls("a\rb\u{7}c\u{8}d\u{7f}e\tf", true),
            "abcde\tf"
        );
        assert_eq!(clean_controls("a\u{9b}31mb", true), "a\u{1b}[31mb");
        assert_eq!(clean_controls("a\u{9b}31mb", false), "ab");
        assert_eq!(clean_controls("end\u{1b}[31", true), "end");
        assert_eq!(clean_controls("end\u{1b}", true), "end");
        assert_eq!(clean_controls("naïve ✓", false), "naïve ✓");
        assert!(matches!(
            clean_controls("plain", false),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(10 * 1024 * 1024), "10.0 MiB");
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(10 * 1024 * 1024), "10.0 MiB");
    }
}

//! The Prometheus text exposition format (version 0.0.4), written by hand: narund without
//! the gateway links no metrics library, and what it exposes is a few dozen gauges and
//! counters computed at scrape time.
//!
//! A [`Exposition`] is a string being written; [`Exposition::family`] starts a metric
//! family (its `# HELP` and `# TYPE` lines are written with its first sample, so a family
//! without samples leaves nothing behind) and [`Family::sample`] adds one series:
//!
//! ```text
//! # HELP narun_instance_restarts_total Restarts of the instance since narund started it.
//! # TYPE narun_instance_restarts_total counter
//! narun_instance_restarts_total{app="web",instance="web-0"} 2
//! ```
//!
//! Label values and help texts are escaped as the format says (`\\`, `\"`, `\n`), so any
//! app name or reason text yields a valid document.

use std::fmt::Write;

/// The `# TYPE` of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Only `_sum` and `_count` (no quantiles): a duration's total and how many.
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
}

/// A text exposition being written.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// One metric family of an [`Exposition`]; see the module docs.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
    kind: Kind,
    help: &'a str,
    started: bool,
}

impl Exposition {
    /// Start the family `name` (a counter's name ends in `_total`).
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &'a str) -> Family<'a> {
        debug_assert!(valid_name(name), "{name}");
        debug_assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
        Family {
            out: &mut self.out,
            name,
            kind,
            help,
            started: false,
        }
    }

    /// The document.
    pub fn finish(self) -> String {
        self.out
    }
}

impl Family<'_> {
    /// One series: `labels` (name, value) and its value.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.suffixed("", labels, value)
    }

    /// One series of a summary: `suffix` is `_sum` or `_count`.
    pub fn suffixed(&mut self, suffix: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        if !self.started {
            self.started = true;
            let _ = writeln!(self.out, "# HELP {} {}", self.name, escape_help(self.help));
            let _ = writeln!(self.out, "# TYPE {} {}", self.name, self.kind.as_str());
        }
        self.out.push_str(self.name);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                debug_assert!(valid_name(k), "{k}");
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_into(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(self.out, value);
        self.out.push('\n');
        self
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn valid_name(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Integers without a fraction, other values as Rust prints them (Go's `ParseFloat`
/// reads both), and the format's `NaN`, `+Inf`, `-Inf`.
fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_escape_and_values() {
        let mut e = Exposition::default();
        e.family("a_total", Kind::Counter, "A \\ counter\nwith two lines.")
            .sample(&[("app", "we\"b\\\n")], 3.0)
            .sample(&[], 0.5);
        // No samples: nothing written.
        e.family("empty", Kind::Gauge, "Nothing.");
        e.family("d_seconds", Kind::Summary, "Durations.")
            .suffixed("_sum", &[], 1.25)
            .suffixed("_count", &[], 2.0);
        e.family("g", Kind::Gauge, "Special values.")
            .sample(&[("v", "nan")], f64::NAN)
            .sample(&[("v", "inf")], f64::INFINITY)
            .sample(&[("v", "-inf")], f64::NEG_INFINITY)
            .sample(&[("v", "big")], 1e20)
            .sample(&[("v", "neg")], -2.0);
        assert_eq!(
            e.finish(),
            "# HELP a_total A \\\\ counter\\nwith two lines.\n\
             # TYPE a_total counter\n\
             a_total{app=\"we\\\"b\\\\\\n\"} 3\n\
             a_total 0.5\n\
             # HELP d_seconds Durations.\n\
             # TYPE d_seconds summary\n\
             d_seconds_sum 1.25\n\
             d_seconds_count 2\n\
             # HELP g Special values.\n\
             # TYPE g gauge\n\
             g{v=\"nan\"} NaN\n\
             g{v=\"inf\"} +Inf\n\
             g{v=\"-inf\"} -Inf\n\
             g{v=\"big\"} 100000000000000000000\n\
             g{v=\"neg\"} -2\n"
        );
    }

    #[test]
    fn names() {
        for ok in ["a", "_a", "a:b_c9", "narun_node_load1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a-b", "a b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}

//! What narund does with an app's output when its share of the node's log spool is full:
//! [`LogOverflow`] (`logOverflow` in the spec).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Log overflow policy. Default `drop`.
///
/// * `drop`: narund always drains the app's stdout/stderr; when its spool is full it drops the
///   app's oldest unsent lines and counts them exactly, per app and instance (the next line of
///   that instance carries `dropped_before`). The app never waits for logging.
/// * `block`: narund stops reading the app's pipes while the app's share of the spool is full,
///   so the app's writes block (backpressure) and no line is lost; other apps and narund itself
///   go on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LogOverflow {
    /// Drop the oldest lines and count them (the default).
    #[default]
    Drop,
    /// Stop reading the app's output while its share of the spool is full.
    Block,
    /// Anything else (invalid, reported by validation).
    Other(String),
}

impl LogOverflow {
    /// All valid policies, in their wire spelling.
    pub const NAMES: &'static [&'static str] = &["drop", "block"];

    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            LogOverflow::Drop => "drop",
            LogOverflow::Block => "block",
            LogOverflow::Other(s) => s,
        }
    }

    /// Parse a policy, case-insensitively; empty means the default (`drop`).
    pub fn parse(s: &str) -> LogOverflow {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "drop" => LogOverflow::Drop,
            "block" => LogOverflow::Block,
            _ => LogOverflow::Other(s.to_string()),
        }
    }
}

impl fmt::Display for LogOverflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for LogOverflow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for LogOverflow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LogOverflow;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a log overflow policy (drop or block)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LogOverflow, E> {
                Ok(LogOverflow::parse(v))
            }
            fn visit_none<E: de::Error>(self) -> Result<LogOverflow, E> {
                Ok(LogOverflow::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<LogOverflow, E> {
                Ok(LogOverflow::default())
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<LogOverflow, D2::Error> {
                d.deserialize_any(self)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for name in LogOverflow::NAMES {
            let p = LogOverflow::parse(name);
            assert!(!matches!(p, LogOverflow::Other(_)), "{name}");
            assert_eq!(p.as_str(), *name);
        }
        assert_eq!(LogOverflow::parse(" BLOCK "), LogOverflow::Block);
        assert_eq!(LogOverflow::parse(""), LogOverflow::Drop);
        assert_eq!(
            LogOverflow::parse("wait"),
            LogOverflow::Other("wait".into())
        );
    }
}

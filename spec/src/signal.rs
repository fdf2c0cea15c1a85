//! The stop signal: [`Signal`], written `SIGTERM`, `TERM`, `term` or `15`.
//! The name and number tables are in `linux.rs`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::serde_helpers::optional_scalar_string;

/// A signal, written `SIGTERM`, `TERM`, `term` or `15`. Known signals are
/// kept in their canonical `SIGXXX` form; unknown text is kept as written so
/// that validation can report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal(String);

impl Default for Signal {
    fn default() -> Self {
        Signal("SIGTERM".to_string())
    }
}

impl Signal {
    /// Parse a signal; unknown names are kept (and fail validation).
    pub fn parse(s: &str) -> Signal {
        match crate::linux::signal_name(s) {
            Some(name) => Signal(name),
            None => Signal(s.to_string()),
        }
    }

    /// The canonical name (`SIGTERM`), or the invalid text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The signal number (generic Linux numbering), `None` if unknown.
    pub fn number(&self) -> Option<i32> {
        crate::linux::signal_number(&self.0)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text: Option<String> = optional_scalar_string(d)?;
        Ok(match text {
            None => Signal::default(),
            Some(t) if t.trim().is_empty() => Signal::default(),
            Some(t) => Signal::parse(&t),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_parse_keeps_unknown_text() {
        assert_eq!(Signal::parse("int").as_str(), "SIGINT");
        assert_eq!(Signal::parse("int").number(), Some(2));
        assert_eq!(Signal::parse("SIGFOO").as_str(), "SIGFOO");
        assert_eq!(Signal::parse("SIGFOO").number(), None);
    }
}

//! Reading specs from TOML, YAML and JSON, and normalising them.
//!
//! Parsing happens twice, on purpose: once into [`AppSpec`] (serde errors keep
//! their line and column), once into a generic value to list the keys the
//! spec does not know. Go ignores unknown keys, so we accept them too, but
//! report them as warnings: `CPUCores: 0.1` in a Go example silently did
//! nothing, and a warning is how an operator finds out.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::app::{AppSpec, ParseWarnings};
use crate::validate::{SpecErrors, SpecWarning};

/// A spec file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML (`.toml`), for files operators write.
    Toml,
    /// YAML (`.yaml`, `.yml`), the Go format.
    Yaml,
    /// JSON (`.json`), what narunctl stores in the KV bucket.
    Json,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Toml => "TOML",
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        })
    }
}

impl Format {
    /// The format a file name implies, from its extension.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// A 1-based position in the parsed text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, starting at 1.
    pub line: usize,
    /// Column (in characters), starting at 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why a spec could not be read (before validation).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The text is not valid TOML/YAML/JSON or does not have the spec's shape
    /// (e.g. a string where a number belongs).
    #[error("invalid {format} app spec{}: {message}", at(.location))]
    Syntax {
        /// Format being parsed.
        format: Format,
        /// Where the parser stopped, when it says.
        location: Option<Location>,
        /// The parser's message (without the location).
        message: String,
    },
    /// The file could not be read.
    #[error("cannot read app spec {}: {source}", .path.display())]
    Read {
        /// File path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file name has no known extension.
    #[error("cannot tell the format of {}: name it *.toml, *.yaml, *.yml or *.json", .path.display())]
    UnknownExtension {
        /// File path.
        path: PathBuf,
    },
    /// The document is larger than [`crate::MAX_SPEC_BYTES`].
    #[error(
        "app spec is {bytes} bytes, more than the limit of {max} bytes (1 MiB); a spec names a binary and its settings: put large data into files (mounts)"
    )]
    TooLarge {
        /// Size found (for a file: at least this).
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Mappings and lists nest deeper than [`crate::MAX_NESTING_DEPTH`]; found by a
    /// linear scan, before the parser sees the text.
    #[error(
        "{format} app spec nests {depth} levels deep, more than the limit of {max} levels (first passed at {location}); not parsed"
    )]
    TooDeep {
        /// Format being parsed.
        format: Format,
        /// Deepest nesting found.
        depth: usize,
        /// The limit.
        max: usize,
        /// Where the nesting first went past the limit.
        location: Location,
    },
    /// A YAML alias (`*name`): refused before parsing, because nested aliases expand a
    /// small document into billions of events.
    #[error(
        "YAML app spec uses an alias (`*name`) at {location}; aliases are not allowed in specs (a few nested ones expand to billions of entries): write the values out"
    )]
    YamlAlias {
        /// Where the first alias is.
        location: Location,
    },
    /// A KV value is not UTF-8 text.
    #[error(
        "app spec is not UTF-8 text (invalid byte at offset {valid_up_to}); expected JSON or YAML"
    )]
    NotUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
}

fn at(location: &Option<Location>) -> String {
    match location {
        Some(l) => format!(" at {l}"),
        None => String::new(),
    }
}

impl ParseError {
    /// Where the parser stopped, if known.
    pub fn location(&self) -> Option<Location> {
        match self {
            ParseError::Syntax { location, .. } => *location,
            ParseError::TooDeep { location, .. } => Some(*location),
            ParseError::YamlAlias { location } => Some(*location),
            _ => None,
        }
    }
}

/// Parse, validate, or check a KV entry: everything that can go wrong when
/// loading a spec for use.
#[derive(Debug, thiserror::Error)]
pub enum SpecLoadError {
    /// Could not be parsed.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// Parsed but invalid (every problem listed).
    #[error("invalid app spec:\n{0}")]
    Invalid(#[from] SpecErrors),
    /// The KV key and `name` differ (Go node-runners refuse such a spec too).
    #[error("app spec stored under key {key:?} is named {name:?}: the key must equal the name")]
    KeyMismatch {
        /// The `app-configs` key.
        key: String,
        /// The spec's `name`.
        name: String,
    },
}

/// Strip a trailing ` at line L column C` that serde_json and serde_yaml add.
fn strip_location_suffix(message: String, loc: Option<Location>) -> String {
    if let Some(l) = loc {
        let suffix = format!(" at line {} column {}", l.line, l.column);
        if let Some(stripped) = message.strip_suffix(&suffix) {
            return stripped.to_string();
        }
    }
    message
}

/// Line and column (1-based, in characters) of a byte offset.
fn location_of(text: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    Location { line, column }
}

fn toml_error(text: &str, e: toml::de::Error) -> ParseError {
    ParseError::Syntax {
        format: Format::Toml,
        location: e.span().map(|s| location_of(text, s.start)),
        message: e.message().to_string(),
    }
}

fn yaml_error(e: serde_yaml::Error) -> ParseError {
    let location = e.location().map(|l| Location {
        line: l.line(),
        column: l.column(),
    });
    ParseError::Syntax {
        format: Format::Yaml,
        location,
        message: strip_location_suffix(e.to_string(), location),
    }
}

fn json_error(e: serde_json::Error) -> ParseError {
    let location = (e.line() > 0).then(|| Location {
        line: e.line(),
        column: e.column(),
    });
    ParseError::Syntax {
        format: Format::Json,
        location,
        message: strip_location_suffix(e.to_string(), location),
    }
}

/// The document limits ([`crate::limits`]), checked before any parser runs.
fn check_limits(text: &str, format: Format) -> Result<(), ParseError> {
    use crate::limits::{DocumentProblem, MAX_NESTING_DEPTH, MAX_SPEC_BYTES, check_document};
    match check_document(text, format) {
        Ok(()) => Ok(()),
        Err(DocumentProblem::TooLarge { bytes }) => Err(ParseError::TooLarge {
            bytes,
            max: MAX_SPEC_BYTES,
        }),
        Err(DocumentProblem::TooDeep { depth, offset }) => Err(ParseError::TooDeep {
            format,
            depth,
            max: MAX_NESTING_DEPTH,
            location: location_of(text, offset),
        }),
        Err(DocumentProblem::YamlAlias { offset }) => Err(ParseError::YamlAlias {
            location: location_of(text, offset),
        }),
    }
}

impl AppSpec {
    /// Parse a TOML spec (normalised, unknown keys kept as warnings; not
    /// validated: call [`AppSpec::validate`]).
    ///
    /// Every parse checks the document limits first: at most
    /// [`crate::MAX_SPEC_BYTES`] bytes and [`crate::MAX_NESTING_DEPTH`] levels of
    /// nesting ([`ParseError::TooLarge`], [`ParseError::TooDeep`]), so parsing
    /// takes time linear in the size of the text.
    pub fn from_toml_str(text: &str) -> Result<AppSpec, ParseError> {
        check_limits(text, Format::Toml)?;
        let spec: AppSpec = toml::from_str(text).map_err(|e| toml_error(text, e))?;
        let generic = toml::from_str::<Value>(text).ok();
        Ok(finish(spec, generic))
    }

    /// Parse a YAML spec (the Go format). See [`AppSpec::from_toml_str`].
    pub fn from_yaml_str(text: &str) -> Result<AppSpec, ParseError> {
        check_limits(text, Format::Yaml)?;
        // An empty document is an empty spec (as for Go's yaml.Unmarshal);
        // validation then says what is missing.
        let spec: AppSpec = match serde_yaml::from_str::<Option<AppSpec>>(text) {
            Ok(spec) => spec.unwrap_or_default(),
            Err(e) => return Err(yaml_error(e)),
        };
        let generic = serde_yaml::from_str::<Value>(text).ok();
        Ok(finish(spec, generic))
    }

    /// Parse a JSON spec. See [`AppSpec::from_toml_str`].
    pub fn from_json_str(text: &str) -> Result<AppSpec, ParseError> {
        check_limits(text, Format::Json)?;
        let spec: AppSpec = serde_json::from_str(text).map_err(json_error)?;
        // From the bytes: the same `Value` (the text is UTF-8 already), and the parser
        // instance narund's state files and replies use anyway (one copy in the binary).
        let generic = serde_json::from_slice::<Value>(text.as_bytes()).ok();
        Ok(finish(spec, generic))
    }

    /// Parse text in the given format.
    pub fn from_str_as(text: &str, format: Format) -> Result<AppSpec, ParseError> {
        match format {
            Format::Toml => AppSpec::from_toml_str(text),
            Format::Yaml => AppSpec::from_yaml_str(text),
            Format::Json => AppSpec::from_json_str(text),
        }
    }

    /// Parse a value of the `app-configs` KV bucket: JSON (written by
    /// narunctl) or YAML (written by the Go `narun` CLI). Text starting with
    /// `{` is read as JSON (for JSON error messages), anything else as YAML.
    pub fn from_kv_bytes(bytes: &[u8]) -> Result<AppSpec, ParseError> {
        if bytes.len() > crate::MAX_SPEC_BYTES {
            return Err(ParseError::TooLarge {
                bytes: bytes.len(),
                max: crate::MAX_SPEC_BYTES,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| ParseError::NotUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.trim_start().starts_with('{') {
            AppSpec::from_json_str(text)
        } else {
            AppSpec::from_yaml_str(text)
        }
    }

    /// Read a spec file; the format comes from the extension (`.toml`,
    /// `.yaml`/`.yml`, `.json`).
    pub fn from_path(path: impl AsRef<Path>) -> Result<AppSpec, ParseError> {
        let path = path.as_ref();
        let format = Format::from_path(path).ok_or_else(|| ParseError::UnknownExtension {
            path: path.to_path_buf(),
        })?;
        let read = |source| ParseError::Read {
            path: path.to_path_buf(),
            source,
        };
        // Never read more than the limit (plus one byte, to know it is more).
        let mut text = String::new();
        use std::io::Read;
        std::fs::File::open(path)
            .map_err(read)?
            .take(crate::MAX_SPEC_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() > crate::MAX_SPEC_BYTES {
            return Err(ParseError::TooLarge {
                bytes: std::fs::metadata(path).map_or(text.len(), |m| {
                    usize::try_from(m.len()).unwrap_or(usize::MAX)
                }),
                max: crate::MAX_SPEC_BYTES,
            });
        }
        AppSpec::from_str_as(&text, format)
    }

    /// Read a spec file and validate it (what `narunctl deploy` wants).
    pub fn load(path: impl AsRef<Path>) -> Result<AppSpec, SpecLoadError> {
        let spec = AppSpec::from_path(path)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Parse and validate an `app-configs` entry, and check that the key is
    /// the spec's name (what narund does on every KV update). It does not call
    /// [`AppSpec::supported_on_narund`]: a spec for Go node-runners is valid.
    pub fn from_kv_entry(key: &str, value: &[u8]) -> Result<AppSpec, SpecLoadError> {
        let spec = AppSpec::from_kv_bytes(value)?;
        spec.validate()?;
        if spec.name != key {
            return Err(SpecLoadError::KeyMismatch {
                key: key.to_string(),
                name: spec.name.clone(),
            });
        }
        Ok(spec)
    }

    /// Put values in their canonical form, in place. Parsing already does it;
    /// call it after changing a spec in code. Idempotent.
    ///
    /// * `metrics.path` defaults to `/metrics` when `metrics.port` is set (Go);
    /// * `nonet.localPorts[].protocol` is trimmed and lower-cased, empty → `tcp` (Go);
    /// * `capabilities` become `CAP_X` (upper-case, prefixed), duplicates removed;
    /// * `stopSignal` becomes its `SIGXXX` name when known.
    pub fn normalize(&mut self) {
        if self.metrics.port != 0 && self.metrics.path.is_empty() {
            self.metrics.path = "/metrics".to_string();
        }
        for pf in &mut self.nonet.local_ports {
            let p = pf.protocol.trim().to_ascii_lowercase();
            pf.protocol = if p.is_empty() { "tcp".to_string() } else { p };
        }
        let mut caps: Vec<String> = Vec::with_capacity(self.capabilities.len());
        for c in &self.capabilities {
            let n = crate::linux::normalize_capability(c);
            if !caps.contains(&n) {
                caps.push(n);
            }
        }
        self.capabilities = caps;
        self.stop_signal = crate::signal::Signal::parse(self.stop_signal.as_str());
        // Scheduled runs: known spellings in lower case, the defaults as absent (so
        // writing a default out changes no hash).
        for (value, default) in [
            (&mut self.run_mode, "service"),
            (&mut self.concurrency, "forbid"),
            (&mut self.scope, "node"),
        ] {
            let v = value.trim().to_ascii_lowercase();
            if v == default {
                value.clear();
            } else if ["job", "replace", "allow", "fleet"].contains(&v.as_str()) {
                *value = v;
            }
        }
        self.schedule = self.schedule.trim().to_string();
    }
}

fn finish(mut spec: AppSpec, generic: Option<Value>) -> AppSpec {
    spec.normalize();
    if let Some(v) = generic {
        let mut warnings = Vec::new();
        unknown_keys(&v, &APP, "", &mut warnings);
        spec.parse_warnings = ParseWarnings(warnings);
    }
    spec
}

/// The shape of the spec, to find unknown keys. Keep in sync with `types.rs`
/// (a test serialises a spec with every field set and expects no warning).
enum Shape {
    /// A value whose insides are not checked (scalars, label maps, lists of scalars).
    Any,
    /// A mapping with these keys.
    Struct(&'static [(&'static str, Shape)]),
    /// A list of this shape.
    List(&'static Shape),
}

use Shape::{Any, List, Struct};

static APP: Shape = Struct(&[
    ("name", Any),
    ("tag", Any),
    ("command", Any),
    ("args", Any),
    (
        "env",
        List(&Struct(&[
            ("name", Any),
            ("value", Any),
            ("valueFromSecret", Any),
        ])),
    ),
    (
        "nodes",
        List(&Struct(&[
            ("name", Any),
            ("labels", Any),
            ("replicas", Any),
        ])),
    ),
    ("mode", Any),
    (
        "landlock",
        Struct(&[
            ("shared", Any),
            ("stdio", Any),
            ("tty", Any),
            ("tmp", Any),
            ("vminfo", Any),
            ("dns", Any),
            ("certs", Any),
            ("paths", List(&Struct(&[("path", Any), ("modes", Any)]))),
        ]),
    ),
    (
        "jail",
        Struct(&[
            ("hostname", Any),
            ("ip4Addresses", Any),
            ("allowRawSockets", Any),
            ("devfsRuleset", Any),
            ("mountSystemCerts", Any),
        ]),
    ),
    (
        "mounts",
        List(&Struct(&[
            ("path", Any),
            ("source", Struct(&[("objectStore", Any)])),
        ])),
    ),
    (
        "nonet",
        Struct(&[(
            "localPorts",
            List(&Struct(&[("port", Any), ("protocol", Any)])),
        )]),
    ),
    ("metrics", Struct(&[("port", Any), ("path", Any)])),
    ("user", Any),
    ("memoryMB", Any),
    ("memoryMaxMB", Any),
    ("cpuCores", Any),
    ("networkNamespacePath", Any),
    ("cgroupParent", Any),
    ("restart", Any),
    ("startLimitBurst", Any),
    ("startLimitIntervalSec", Any),
    ("pidsMax", Any),
    ("cpuWeight", Any),
    ("capabilities", Any),
    ("notify", Any),
    ("watchdogSec", Any),
    ("startTimeoutSec", Any),
    ("settleSec", Any),
    ("stopSignal", Any),
    ("stopTimeoutSec", Any),
    ("nofileMax", Any),
    ("logOverflow", Any),
    ("binaryDigests", Any),
    (
        "commandUnit",
        Struct(&[
            ("maxConcurrent", Any),
            ("maxQueued", Any),
            ("queueTimeoutSec", Any),
            ("timeoutSec", Any),
            ("maxOutputBytes", Any),
            ("maxStderrBytes", Any),
            ("outputHeaders", Any),
        ]),
    ),
    ("runMode", Any),
    ("schedule", Any),
    ("timezone", Any),
    ("concurrency", Any),
    ("startingDeadlineSec", Any),
    ("scope", Any),
    ("maxAttempts", Any),
    ("after", Any),
    ("afterTimeoutSec", Any),
    ("calls", Any),
    ("scaleToZero", Struct(&[("idleSec", Any)])),
]);

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn unknown_keys(value: &Value, shape: &Shape, path: &str, out: &mut Vec<SpecWarning>) {
    match (shape, value) {
        (Struct(fields), Value::Object(map)) => {
            for (key, v) in map {
                match fields.iter().find(|(k, _)| k == key) {
                    Some((_, inner)) => unknown_keys(v, inner, &join(path, key), out),
                    None => {
                        let hint = fields
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(key))
                            .map(|(k, _)| {
                                format!("; did you mean {k:?}? (keys are case-sensitive)")
                            })
                            .unwrap_or_default();
                        out.push(SpecWarning {
                            path: join(path, key),
                            message: format!("unknown key, ignored{hint}"),
                        });
                    }
                }
            }
        }
        (List(inner), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                unknown_keys(item, inner, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_of_counts_lines_and_chars() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(location_of(text, 0), Location { line: 1, column: 1 });
        assert_eq!(location_of(text, 6), Location { line: 2, column: 1 });
        // 'é' is two bytes but one column.
        assert_eq!(location_of(text, 9), Location { line: 2, column: 3 });
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(Format::from_path(Path::new("a.TOML")), Some(Format::Toml));
        assert_eq!(Format::from_path(Path::new("a.yml")), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("a.yaml")), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("a.json")), Some(Format::Json));
        assert_eq!(Format::from_path(Path::new("a.txt")), None);
        assert_eq!(Format::from_path(Path::new("toml")), None);
    }
}

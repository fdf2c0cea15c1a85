//! Limits of a spec, and the cheap pre-scan that enforces the document limits before
//! anything parses it.
//!
//! A spec comes over the network (`app-configs`) into a daemon running as root, so its
//! size must not decide how much memory or time narund spends on it. Two kinds of limit:
//!
//! * **document limits**, checked by [`check_document`] before the parser sees the text:
//!   at most [`MAX_SPEC_BYTES`] bytes and [`MAX_NESTING_DEPTH`] levels of nested
//!   mappings and lists. The YAML parser (libyaml) costs time proportional to the
//!   document length × its flow nesting (`[[[[…`: 100 KB took a minute), so the depth
//!   is measured by a linear scan first and a deeper document is never parsed;
//! * **field limits** (how many `env`, `args`, `mounts`, replicas, how long a name, how
//!   big a timeout), checked by [`crate::AppSpec::validate`] with the other rules.
//!
//! Every limit is a constant here and listed in `docs/spec.md`; errors name the limit
//! and the value found.

/// Largest accepted spec document: 1 MiB.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;
/// Deepest accepted nesting of mappings and lists (a real spec needs 5).
pub const MAX_NESTING_DEPTH: usize = 64;
/// Largest `replicas` of one `nodes` entry (a node may allow fewer:
/// narund's `apps.max_replicas_per_node`).
pub const MAX_REPLICAS: i64 = 1024;
/// Most entries in `nodes`.
pub const MAX_NODES: usize = 256;
/// Most labels in one `nodes[].labels` selector.
pub const MAX_LABELS: usize = 64;
/// Longest label key or value, bytes.
pub const MAX_LABEL_LEN: usize = 256;
/// Most entries in `args`.
pub const MAX_ARGS: usize = 1024;
/// Most entries in `env`.
pub const MAX_ENV: usize = 1024;
/// Longest environment variable name, bytes.
pub const MAX_ENV_NAME_LEN: usize = 256;
/// Longest single argument or environment value, bytes.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// Most bytes of `args` and `env` together (each string counted with its NUL and, for
/// env, `NAME=`): well below Linux's `ARG_MAX`, so a valid spec never fails `execve`
/// with `E2BIG`.
pub const MAX_EXEC_BYTES: usize = 256 * 1024;
/// Most entries in `mounts`.
pub const MAX_MOUNTS: usize = 64;
/// Most entries in `capabilities` (there are 41 Linux capabilities).
pub const MAX_CAPABILITIES: usize = 64;
/// Most entries in `landlock.paths` and in `nonet.localPorts`.
pub const MAX_LIST_ITEMS: usize = 256;
/// Longest path or path-like field (mount paths, `networkNamespacePath`,
/// `cgroupParent`, `metrics.path`, `landlock.paths[].path`, `command`), bytes: `PATH_MAX`.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest object or secret name (`mounts[].source.objectStore`,
/// `env[].valueFromSecret`), bytes.
pub const MAX_OBJECT_NAME_LEN: usize = 255;
/// Longest `user`, bytes (`LOGIN_NAME_MAX`).
pub const MAX_USER_LEN: usize = 256;
/// Largest of `startTimeoutSec`, `stopTimeoutSec`, `settleSec`, `watchdogSec` and
/// `startLimitIntervalSec`: one day.
pub const MAX_DURATION_SEC: u64 = 86_400;
/// Largest `memoryMB` and `memoryMaxMB`: 16 TiB.
pub const MAX_MEMORY_MB: u64 = 16 * 1024 * 1024;
/// Largest `pidsMax` (Linux's `PID_MAX_LIMIT`).
pub const MAX_PIDS: u64 = 4 * 1024 * 1024;
/// Largest `nofileMax` (2^30; Linux's own ceiling of `fs.nr_open` is about 2^31 on 64-bit
/// and 2^30 on 32-bit machines). A node grants at most its `apps.nofile_max`.
pub const MAX_NOFILE: u64 = 1 << 30;
/// Largest `cpuCores`.
pub const MAX_CPU_CORES: f64 = 4096.0;

use crate::parse::Format;

/// What [`check_document`] found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DocumentProblem {
    /// Longer than [`MAX_SPEC_BYTES`].
    TooLarge { bytes: usize },
    /// Nested deeper than [`MAX_NESTING_DEPTH`]: the deepest level found and the byte
    /// offset where the limit was first passed.
    TooDeep { depth: usize, offset: usize },
    /// A YAML alias (`*name`) at this byte offset: an alias replays its anchor's events,
    /// so a few nested aliases under 1 MiB expand to billions of events (a "billion
    /// laughs"); specs never need them (Go narun writes none).
    YamlAlias { offset: usize },
}

/// The document limits: size, then nesting depth (a linear scan: `nesting_depth` below describes it).
pub(crate) fn check_document(text: &str, format: Format) -> Result<(), DocumentProblem> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(DocumentProblem::TooLarge { bytes: text.len() });
    }
    let mut m = Max {
        limit: MAX_NESTING_DEPTH,
        max: 0,
        first: None,
        alias: None,
    };
    scan(text.as_bytes(), format, &mut m);
    if let Some(offset) = m.first {
        return Err(DocumentProblem::TooDeep {
            depth: m.max,
            offset,
        });
    }
    match m.alias {
        Some(offset) => Err(DocumentProblem::YamlAlias { offset }),
        None => Ok(()),
    }
}

/// The deepest nesting of mappings and lists in `text`, and the byte offset where it
/// first went past `limit` (if it did). One pass, no allocation beyond a stack of
/// indentation columns; never fails (it measures, the parser judges).
///
/// JSON and TOML count brackets outside strings and comments (TOML adds the segments of
/// table headers and dotted keys). YAML follows libyaml's scanner: flow collections
/// (`[`, `{`) outside quoted and plain scalars, comments and block scalars, plus the
/// block indentation levels. Where the scan cannot be sure it counts a level rather
/// than miss one: a document may be refused that libyaml would find one level
/// shallower, never the other way round.
#[cfg(test)]
pub(crate) fn nesting_depth(text: &[u8], format: Format, limit: usize) -> (usize, Option<usize>) {
    let mut m = Max {
        limit,
        max: 0,
        first: None,
        alias: None,
    };
    scan(text, format, &mut m);
    (m.max, m.first)
}

fn scan(text: &[u8], format: Format, m: &mut Max) {
    match format {
        Format::Json => json_depth(text, m),
        Format::Toml => toml_depth(text, m),
        Format::Yaml => Yaml::new(text).run(m),
    }
}

struct Max {
    limit: usize,
    max: usize,
    first: Option<usize>,
    /// Byte offset of the first YAML alias (`*name`).
    alias: Option<usize>,
}

impl Max {
    fn see(&mut self, depth: usize, at: usize) {
        self.max = self.max.max(depth);
        if depth > self.limit && self.first.is_none() {
            self.first = Some(at);
        }
    }
}

fn json_depth(b: &[u8], m: &mut Max) {
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' | b'{' => {
                depth += 1;
                m.see(depth, i);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
}

fn toml_depth(b: &[u8], m: &mut Max) {
    let mut brackets = 0usize;
    // Whether the innermost open bracket is an inline table (`{`), up to 64 levels (deeper
    // ones count as arrays: only a key's dots could be missed there).
    let mut tables: u64 = 0;
    // Segments of the current table header (`[a.b]` = 2, `[[a.b]]` = 3).
    let mut table = 0usize;
    // Segments of the key being written on this line (dotted keys).
    let mut key = 1usize;
    let mut line_start = true;
    let mut in_key = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if line_start && brackets == 0 && !matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
            line_start = false;
            if c == b'[' {
                // A table header: count its segments.
                let double = b.get(i + 1) == Some(&b'[');
                table = 1 + usize::from(double);
                i += 1 + usize::from(double);
                while i < b.len() && b[i] != b'\n' && b[i] != b']' {
                    match b[i] {
                        b'.' => {
                            table += 1;
                            m.see(table, i);
                        }
                        q @ (b'"' | b'\'') => i = skip_toml_string(b, i, q) - 1,
                        _ => {}
                    }
                    i += 1;
                }
                m.see(table, i);
                continue;
            }
            in_key = c != b'#';
            key = 1;
        }
        match c {
            b'\n' => {
                line_start = true;
                in_key = false;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' => {
                i = skip_toml_string(b, i, c);
                continue;
            }
            b'.' if in_key => {
                key += 1;
                m.see(table + key + brackets, i);
            }
            b'=' => {
                in_key = false;
                m.see(table + key + brackets, i);
            }
            b'{' | b'[' => {
                brackets += 1;
                tables = (tables << 1) | u64::from(c == b'{');
                in_key = c == b'{';
                m.see(table + key + brackets, i);
            }
            b',' if brackets > 0 => in_key = tables & 1 == 1,
            b']' | b'}' => {
                brackets = brackets.saturating_sub(1);
                tables >>= 1;
                in_key = false;
            }
            _ => {}
        }
        i += 1;
    }
}

/// The offset just after the TOML string starting at `i` with quote `q` (basic or
/// literal, single- or multi-line).
fn skip_toml_string(b: &[u8], mut i: usize, q: u8) -> usize {
    let triple = b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q);
    if triple {
        i += 3;
        while i < b.len() {
            if q == b'"' && b[i] == b'\\' {
                i += 2;
                continue;
            }
            if b[i] == q && b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q) {
                return i + 3;
            }
            i += 1;
        }
        return i;
    }
    i += 1;
    while i < b.len() && b[i] != q && b[i] != b'\n' {
        i += if q == b'"' && b[i] == b'\\' { 2 } else { 1 };
    }
    i + 1
}

/// A linear emulation of the parts of libyaml's scanner that decide nesting: flow
/// levels, block indentation levels, and what is text (quoted and plain scalars,
/// comments, block scalars).
struct Yaml<'a> {
    b: &'a [u8],
    i: usize,
    /// Column (in characters) of `i`.
    col: usize,
    flow: usize,
    /// Per flow level (innermost in bit 0, 64 levels deep): whether it is a sequence,
    /// where `a: b` is one more level (a single-pair mapping).
    flow_seqs: u64,
    /// Block indentation columns (libyaml's `indents` + `indent`), each with whether it
    /// is a sequence (an "indentless" sequence shares its mapping's column).
    indents: Vec<(usize, bool)>,
    /// A simple key may start here (libyaml's `simple_key_allowed`).
    key_allowed: bool,
    /// Column of the simple key on this line, if one started.
    key_col: Option<usize>,
}

fn blank(c: Option<u8>) -> bool {
    matches!(c, Some(b' ' | b'\t'))
}

fn blankz(c: Option<u8>) -> bool {
    matches!(c, None | Some(b' ' | b'\t' | b'\r' | b'\n'))
}

fn is_break(c: Option<u8>) -> bool {
    matches!(c, Some(b'\r' | b'\n'))
}

impl<'a> Yaml<'a> {
    fn new(b: &'a [u8]) -> Self {
        Yaml {
            b,
            i: 0,
            col: 0,
            flow: 0,
            flow_seqs: 0,
            indents: Vec::new(),
            key_allowed: true,
            key_col: None,
        }
    }

    fn at(&self, k: usize) -> Option<u8> {
        self.b.get(self.i + k).copied()
    }

    /// Move one byte; columns count characters, lines start after `\n`.
    fn bump(&mut self) {
        match self.b.get(self.i) {
            Some(b'\n') => self.col = 0,
            Some(&c) if c & 0xC0 != 0x80 => self.col += 1,
            _ => {}
        }
        self.i += 1;
    }

    fn line_break(&mut self) {
        if self.at(0) == Some(b'\r') && self.at(1) == Some(b'\n') {
            self.bump();
        }
        if self.at(0) == Some(b'\r') {
            // A lone CR is a line break too.
            self.i += 1;
            self.col = 0;
        } else {
            self.bump();
        }
    }

    fn indent(&self) -> isize {
        self.indents.last().map_or(-1, |&(c, _)| c as isize)
    }

    fn depth(&self) -> usize {
        self.indents.len() + self.flow
    }

    fn doc_marker(&self) -> bool {
        self.col == 0
            && (self.b[self.i..].starts_with(b"---") || self.b[self.i..].starts_with(b"..."))
            && blankz(self.at(3))
    }

    fn roll(&mut self, col: usize, seq: bool, m: &mut Max) {
        let top = self.indents.last().copied();
        let indentless = seq && top == Some((col, false));
        if self.flow == 0 && (self.indent() < col as isize || indentless) {
            self.indents.push((col, seq));
            m.see(self.depth(), self.i);
        }
    }

    fn start_key(&mut self) {
        if self.key_allowed && self.key_col.is_none() {
            self.key_col = Some(self.col);
        }
    }

    fn run(mut self, m: &mut Max) {
        while self.i < self.b.len() {
            // To the next token: blanks, comments, line breaks.
            match self.at(0) {
                Some(b' ' | b'\t') => {
                    self.bump();
                    continue;
                }
                Some(b'#') => {
                    while !is_break(self.at(0)) && self.i < self.b.len() {
                        self.bump();
                    }
                    continue;
                }
                Some(b'\r' | b'\n') => {
                    self.line_break();
                    if self.flow == 0 {
                        self.key_allowed = true;
                    }
                    self.key_col = None;
                    continue;
                }
                _ => {}
            }
            if self.flow == 0 {
                while self.indent() > self.col as isize {
                    self.indents.pop();
                }
                // Anything but `- ` at an indentless sequence's column ends it.
                let entry = self.at(0) == Some(b'-') && blankz(self.at(1));
                if !entry
                    && self.indents.last() == Some(&(self.col, true))
                    && self.indents.len() > 1
                {
                    let below = self.indents[self.indents.len() - 2];
                    if below.0 == self.col {
                        self.indents.pop();
                    }
                }
            }
            if self.doc_marker() {
                self.indents.clear();
                self.i += 3;
                self.col += 3;
                self.key_allowed = false;
                continue;
            }
            let c = self.at(0).unwrap_or(0);
            let next = self.at(1);
            match c {
                b'[' | b'{' => {
                    self.start_key();
                    self.flow += 1;
                    self.flow_seqs = (self.flow_seqs << 1) | u64::from(c == b'[');
                    m.see(self.depth(), self.i);
                    self.key_allowed = true;
                    self.bump();
                }
                b']' | b'}' => {
                    self.flow = self.flow.saturating_sub(1);
                    self.flow_seqs >>= 1;
                    self.key_allowed = false;
                    self.bump();
                }
                b',' => {
                    self.key_allowed = true;
                    self.key_col = None;
                    self.bump();
                }
                b'-' if blankz(next) => {
                    self.roll(self.col, true, m);
                    self.key_allowed = true;
                    self.key_col = None;
                    self.bump();
                }
                b'?' if self.flow > 0 || blankz(next) => {
                    self.roll(self.col, false, m);
                    if self.flow > 0 && self.flow_seqs & 1 == 1 {
                        m.see(self.depth() + 1, self.i);
                    }
                    self.key_allowed = self.flow == 0;
                    self.key_col = None;
                    self.bump();
                }
                b':' if self.flow > 0 || blankz(next) => {
                    let col = self.key_col.take().unwrap_or(self.col);
                    self.roll(col, false, m);
                    if self.flow > 0 && self.flow_seqs & 1 == 1 {
                        m.see(self.depth() + 1, self.i);
                    }
                    self.key_allowed = self.flow == 0;
                    self.bump();
                }
                b'*' | b'&' | b'!' => {
                    if c == b'*' && m.alias.is_none() {
                        m.alias = Some(self.i);
                    }
                    self.start_key();
                    while !(blankz(self.at(0))
                        || self.flow > 0
                            && matches!(self.at(0), Some(b',' | b'[' | b']' | b'{' | b'}')))
                    {
                        self.bump();
                    }
                    // The simple key (if any) started at the anchor or tag.
                    self.key_allowed = false;
                }
                b'|' | b'>' if self.flow == 0 => self.block_scalar(),
                b'\'' | b'"' => {
                    self.start_key();
                    self.quoted(c);
                    self.key_allowed = false;
                }
                _ => {
                    self.start_key();
                    self.plain();
                }
            }
        }
    }

    fn quoted(&mut self, q: u8) {
        self.bump();
        while self.i < self.b.len() {
            if self.doc_marker() {
                return;
            }
            match self.at(0) {
                Some(b'\'') if q == b'\'' => {
                    self.bump();
                    if self.at(0) != Some(b'\'') {
                        return;
                    }
                    self.bump();
                }
                Some(b'\\') if q == b'"' => {
                    self.bump();
                    if is_break(self.at(0)) {
                        self.line_break();
                    } else {
                        self.bump();
                    }
                }
                Some(b'"') if q == b'"' => {
                    self.bump();
                    return;
                }
                Some(b'\r' | b'\n') => self.line_break(),
                _ => self.bump(),
            }
        }
    }

    /// libyaml's `yaml_parser_scan_plain_scalar`: where a plain scalar ends.
    fn plain(&mut self) {
        let indent = self.indent() + 1;
        let mut broke = false;
        loop {
            if self.doc_marker() || self.at(0) == Some(b'#') {
                break;
            }
            while !blankz(self.at(0)) {
                let c = self.at(0);
                if (c == Some(b':') && blankz(self.at(1)))
                    || (self.flow > 0 && matches!(c, Some(b',' | b'[' | b']' | b'{' | b'}')))
                {
                    break;
                }
                self.bump();
            }
            if !(blank(self.at(0)) || is_break(self.at(0))) {
                break;
            }
            while blank(self.at(0)) || is_break(self.at(0)) {
                if is_break(self.at(0)) {
                    self.line_break();
                    broke = true;
                } else {
                    self.bump();
                }
            }
            if self.flow == 0 && (self.col as isize) < indent {
                break;
            }
        }
        self.key_allowed = broke;
        if broke {
            self.key_col = None;
        }
    }

    /// libyaml's block scalar (`|`, `>`): its content lines are text.
    fn block_scalar(&mut self) {
        self.bump();
        let mut increment = 0usize;
        while let Some(c @ (b'+' | b'-' | b'0'..=b'9')) = self.at(0) {
            if c.is_ascii_digit() {
                increment = usize::from(c - b'0');
            }
            self.bump();
        }
        // The rest of the header line: blanks and a comment.
        while !is_break(self.at(0)) && self.i < self.b.len() {
            self.bump();
        }
        let parent = self.indent();
        let mut indent = if increment > 0 {
            (parent.max(0) as usize) + increment
        } else {
            0
        };
        let mut max_indent = 0;
        loop {
            // Eat the indentation spaces and empty lines.
            if is_break(self.at(0)) {
                self.line_break();
            } else {
                break;
            }
            while (indent == 0 || self.col < indent) && self.at(0) == Some(b' ') {
                self.bump();
            }
            max_indent = max_indent.max(self.col);
            if is_break(self.at(0)) {
                continue;
            }
            if indent == 0 {
                indent = max_indent.max((parent + 1).max(1) as usize);
            }
            if self.col != indent || self.i >= self.b.len() {
                break;
            }
            // A content line: text to its end.
            while !is_break(self.at(0)) && self.i < self.b.len() {
                self.bump();
            }
        }
        self.key_allowed = true;
        self.key_col = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(text: &str, f: Format) -> usize {
        nesting_depth(text.as_bytes(), f, MAX_NESTING_DEPTH).0
    }

    #[test]
    fn json_counts_brackets_outside_strings() {
        assert_eq!(depth(r#"{"a": [1, {"b": 2}]}"#, Format::Json), 3);
        assert_eq!(depth(r#"{"a": "[[[[\"[[", "b": []}"#, Format::Json), 2);
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        let (d, at) = nesting_depth(deep.as_bytes(), Format::Json, 64);
        assert_eq!((d, at), (65, Some(64)));
    }

    #[test]
    fn toml_counts_headers_dotted_keys_and_brackets() {
        assert_eq!(depth("name = \"a\"\n", Format::Toml), 1);
        assert_eq!(depth("a.b.c = 1\n", Format::Toml), 3);
        assert_eq!(depth("[x.y]\nz = [[1], {q = 2}]\n", Format::Toml), 5);
        assert_eq!(depth("[[nodes]]\nreplicas = 1\n", Format::Toml), 3);
        assert_eq!(
            depth("s = \"[[[[.\" # [[[[\nt = '''\n[[[[\n'''\n", Format::Toml),
            1
        );
        let floats = vec!["1.5"; 200].join(", ");
        assert_eq!(
            depth(
                &format!("x = [{floats}]\ny = {{a.b = [1.5, 2.5]}}\n"),
                Format::Toml
            ),
            4
        );
        assert!(depth(&format!("a = {}", "[".repeat(100)), Format::Toml) >= 100);
        assert!(depth(&format!("{} = 1", vec!["a"; 100].join(".")), Format::Toml) >= 100);
        assert!(depth(&format!("[{}]", vec!["a"; 100].join(".")), Format::Toml) >= 100);
    }

    #[test]
    fn yaml_block_and_flow_levels() {
        let spec = "name: a\ntag: v1\nnodes:\n  - labels: {role: edge}\n    replicas: 2\nlandlock:\n  paths:\n    - path: /x\n      modes: r\n";
        assert_eq!(depth(spec, Format::Yaml), 4);
        assert_eq!(depth("args: [a, [b, {c: d}]]\n", Format::Yaml), 4);
        assert_eq!(depth("a:\n  b:\n    c:\n      d: 1\n", Format::Yaml), 4);
        assert_eq!(depth("- - - a\n", Format::Yaml), 3);
        assert_eq!(depth("", Format::Yaml), 0);
    }

    #[test]
    fn yaml_text_is_not_nesting() {
        // Quoted scalars, plain scalars in block context, comments and block scalars.
        for text in [
            "a: '[[[[ '' [[['\n",
            "a: \"[[[[ \\\" [[[\"\n",
            "a: b[[[[[[\n",
            "a: b # [[[[[[\n",
            "# [[[[[[\n",
            "a: |\n  [[[[[[\n  [[[[\nb: 1\n",
            "a: >-\n    [[[[[[\n\n    [[[[\n",
            "a: it's [[[[\n",
            "a: 'multi\n  line [[[[[[[[ '\n",
        ] {
            assert!(depth(text, Format::Yaml) <= 1, "{text:?}");
        }
    }

    #[test]
    fn yaml_nesting_hidden_behind_lookalikes_is_counted() {
        // In a flow collection a plain scalar ends at `,`: the quote is part of it.
        let n = "[[[[[[[[[[".repeat(7);
        for text in [
            format!("a: [it's, {n}'\n"),
            format!("a: [b\n 'c, {n}'\n"),
            format!("a: b\n  'c\nx: {n}\ny: '\n"),
            format!("a: [b#c, {n}\n"),
            format!("a: |\nb: {n}\n"),
            format!("  - key: |\n    x: {n}\n"),
            format!("a: [\"\\\\\", {n}\"]\n"),
            format!("k: &anchor {n}\n"),
            format!("k: [!tag{n}\n"),
        ] {
            assert!(depth(&text, Format::Yaml) > 64, "{text:?}");
        }
    }

    #[test]
    fn yaml_scan_is_linear() {
        // The hostile document of issue 17: 100 KB of `[`.
        let text = format!("name: a\nargs: {}", "[".repeat(100_000));
        let t = std::time::Instant::now();
        let (d, at) = nesting_depth(text.as_bytes(), Format::Yaml, 64);
        assert_eq!(d, 100_001, "the mapping and 100 000 flow levels");
        assert_eq!(at, Some(14 + 63));
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    /// Depth of a parsed value (a scalar is 0).
    fn value_depth(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(value_depth).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(value_depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn yaml_scan_never_counts_less_than_the_parser_finds() {
        // Random documents from YAML's tricky pieces: whatever libyaml parses, the scan
        // must find at least as deep.
        const PIECES: &[&str] = &[
            "a", "b: ", ":", " ", "  ", "\n", "\n  ", "\n    ", "- ", "[", "]", "{", "}", ", ",
            "'", "\"", "#", " #", "|\n", ">-\n", "\\", "&x ", "*x", "!t ", "? ", "it's", "---\n",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut parsed = 0;
        for _ in 0..30_000 {
            let n = 1 + (next() % 30) as usize;
            let text: String = (0..n)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            let Ok(v) = serde_yaml::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            parsed += 1;
            let found = depth(&text, Format::Yaml);
            assert!(
                found >= value_depth(&v),
                "{text:?}: scan {found}, parsed {}",
                value_depth(&v)
            );
        }
        assert!(parsed > 1000, "only {parsed} documents parsed");
    }

    #[test]
    fn size_is_checked_first() {
        let big = "#".repeat(MAX_SPEC_BYTES + 1);
        assert_eq!(
            check_document(&big, Format::Yaml),
            Err(DocumentProblem::TooLarge {
                bytes: MAX_SPEC_BYTES + 1
            })
        );
        assert_eq!(check_document(&big[1..], Format::Yaml), Ok(()));
    }
}

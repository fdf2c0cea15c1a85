//! Splitting a pipe's bytes into lines: [`LineSplitter`] (pure: no I/O, no allocation per line
//! in the common case) and the word-at-a-time newline search it uses.

/// Splits a byte stream into lines. Pure: no I/O, no allocation per line in the common case.
///
/// * A line ends at `\n`; a `\r` right before it is dropped (`\r\n` endings).
/// * A line longer than `max_line_bytes` is emitted in pieces as the bytes arrive (it never waits
///   for the newline): every piece but the last has `partial = true`, the last piece (ending at the
///   newline or at EOF) has `partial = false`, so a reader can join them back. Pieces are cut at a
///   UTF-8 character boundary when the text is UTF-8.
/// * Invalid UTF-8 becomes U+FFFD (lossy).
/// * [`finish`](Self::finish) emits the unterminated rest at EOF.
///
/// ```
/// use narund::logs::LineSplitter;
/// let mut s = LineSplitter::new(1024);
/// let mut lines = Vec::new();
/// s.feed(b"one\r\ntw", &mut |l: &str, partial| lines.push((l.to_string(), partial)));
/// s.feed(b"o\nthree", &mut |l: &str, partial| lines.push((l.to_string(), partial)));
/// s.finish(&mut |l: &str, partial| lines.push((l.to_string(), partial)));
/// assert_eq!(lines, [("one".into(), false), ("two".into(), false), ("three".into(), false)]);
/// ```
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter for lines of at most `max_line_bytes` (at least 4, so a UTF-8 character fits).
    pub fn new(max_line_bytes: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max: max_line_bytes.max(4),
        }
    }

    /// Feed a chunk; `emit(text, partial)` is called for every complete line or piece.
    pub fn feed(&mut self, chunk: &[u8], emit: &mut impl FnMut(&str, bool)) {
        self.feed_bytes(chunk, &mut |line, partial| {
            emit(&String::from_utf8_lossy(line), partial)
        })
    }

    /// End of stream: emit what is left as a last line.
    pub fn finish(&mut self, emit: &mut impl FnMut(&str, bool)) {
        self.finish_bytes(&mut |line, partial| emit(&String::from_utf8_lossy(line), partial))
    }

    /// Like [`feed`](Self::feed) but the lines are handed out as raw bytes, possibly invalid
    /// UTF-8 (the forwarder converts them while it serializes, without a `String` per line).
    /// The lines and pieces are the same as `feed`'s.
    pub fn feed_bytes(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while !chunk.is_empty() {
            match find_newline(chunk) {
                Some(i) => {
                    let line = &chunk[..i];
                    chunk = &chunk[i + 1..];
                    if self.buf.is_empty() && line.len() <= self.max {
                        // Fast path: the whole line is inside this chunk; no copy.
                        emit(strip_cr(line), false);
                    } else {
                        self.buf.extend_from_slice(line);
                        self.emit_long_pieces(emit);
                        emit(strip_cr(&self.buf), false);
                        self.buf.clear();
                    }
                }
                None => {
                    self.buf.extend_from_slice(chunk);
                    chunk = &[];
                    self.emit_long_pieces(emit);
                }
            }
        }
    }

    /// Like [`finish`](Self::finish), with raw bytes (see [`feed_bytes`](Self::feed_bytes)).
    pub fn finish_bytes(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        if !self.buf.is_empty() {
            emit(strip_cr(&self.buf), false);
            self.buf.clear();
        }
    }

    /// Bytes held back waiting for a newline.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// While more than `max` bytes are buffered, emit `max`-sized partial pieces.
    fn emit_long_pieces(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        let mut start = 0;
        while self.buf.len() - start > self.max {
            let mut cut = start + self.max;
            // Do not split a UTF-8 sequence: back up over continuation bytes (at most 3).
            let floor = cut - 3;
            while cut > floor && (self.buf[cut] & 0xC0) == 0x80 {
                cut -= 1;
            }
            if (self.buf[cut] & 0xC0) == 0x80 {
                cut = start + self.max; // not UTF-8 anyway
            }
            emit(&self.buf[start..cut], true);
            start = cut;
        }
        if start > 0 {
            self.buf.drain(..start);
        }
    }
}

/// Index of the first `\n` in `bytes`, 8 bytes at a time ("has a zero byte" word trick: the
/// lowest marked byte of a word is always a real match).
fn find_newline(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut i = 0;
    while let Some(word) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("8 bytes")) ^ (ONES * b'\n' as u64);
        let marks = w.wrapping_sub(ONES) & !w & HIGH;
        if marks != 0 {
            return Some(i + marks.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    bytes[i..].iter().position(|&b| b == b'\n').map(|p| i + p)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut |l: &str, p| out.push((l.to_string(), p)));
        }
        s.finish(&mut |l: &str, p| out.push((l.to_string(), p)));
        out
    }

    fn l(s: &str, p: bool) -> (String, bool) {
        (s.to_string(), p)
    }

    #[test]
    fn lines_across_chunks_and_crlf() {
        assert_eq!(
            split(100, &[b"a\nb", b"c\r", b"\n\nd\r\n"]),
            vec![l("a", false), l("bc", false), l("", false), l("d", false)]
        );
    }

    #[test]
    fn unterminated_rest_is_flushed_at_eof() {
        assert_eq!(split(100, &[b"x\ny"]), vec![l("x", false), l("y", false)]);
        assert!(split(100, &[]).is_empty());
    }

    #[test]
    fn long_lines_are_split_without_waiting_for_the_newline() {
        let mut s = LineSplitter::new(4);
        let mut out = Vec::new();
        s.feed(b"abcdefghij", &mut |t: &str, p| out.push(l(t, p)));
        // Emitted before any newline arrived; at most `max` bytes are held back.
        assert_eq!(out, vec![l("abcd", true), l("efgh", true)]);
        assert_eq!(s.pending(), 2);
        s.feed(b"k\nz\n", &mut |t: &str, p| out.push(l(t, p)));
        assert_eq!(
            out,
            vec![
                l("abcd", true),
                l("efgh", true),
                l("ijk", false),
                l("z", false)
            ]
        );
        // A long line inside one chunk.
        assert_eq!(
            split(4, &[b"123456789\n"]),
            vec![l("1234", true), l("5678", true), l("9", false)]
        );
    }

    #[test]
    fn pieces_do_not_cut_utf8_characters() {
        // "é" is 2 bytes: "aaaé" would be cut inside the character at 4 bytes.
        let out = split(4, &["aaaébb\n".as_bytes()]);
        assert_eq!(out, vec![l("aaa", true), l("ébb", false)]);
        let joined: String = out.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(joined, "aaaébb");
    }

    #[test]
    fn find_newline_finds_the_first_one_anywhere() {
        for len in 0..20 {
            for pos in 0..len {
                for later in [None, Some(pos + 1), Some(len - 1)] {
                    // Bytes around '\n' (0x0a) and with high bits, to tempt the word trick.
                    let mut v: Vec<u8> =
                        (0..len).map(|i| [0x0b, 0x09, 0x8a, 0xff][i % 4]).collect();
                    v[pos] = b'\n';
                    if let Some(l) = later.filter(|&l| l < len) {
                        v[l] = b'\n';
                    }
                    assert_eq!(find_newline(&v), Some(pos), "{v:?}");
                }
            }
            let none: Vec<u8> = (0..len).map(|i| [0x0b, 0x09, 0x8a, 0x00][i % 4]).collect();
            assert_eq!(find_newline(&none), None);
        }
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(
            split(100, &[b"ok\xff\xfeok\n"]),
            vec![l("ok\u{fffd}\u{fffd}ok", false)]
        );
    }
}

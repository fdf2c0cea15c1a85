//! A line diff of two texts (the stored spec and the new one, as `to_kv_json` writes
//! them), printed like `diff -u` without headers: `-` removed, `+` added, two lines of
//! context around each change, `@@` between distant hunks.
//!
//! Longest common subsequence over the lines after the common prefix and suffix are set
//! aside. Specs are small; past [`MAX_CELLS`] table cells (a 1 MiB spec rewritten
//! entirely) the middle is shown as all removed then all added, which is still correct.

/// Largest LCS table (lines × lines) computed.
const MAX_CELLS: usize = 4_000_000;

/// Lines of context shown around a change.
const CONTEXT: usize = 2;

/// One line of the diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

/// Every line of `old` and `new`, in order, marked same, removed or added.
pub fn diff<'a>(old: &'a str, new: &'a str) -> Vec<Line<'a>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut out: Vec<Line> = a[..prefix].iter().map(|l| Line::Same(l)).collect();
    if am.len().saturating_mul(bm.len()) > MAX_CELLS {
        out.extend(am.iter().map(|l| Line::Removed(l)));
        out.extend(bm.iter().map(|l| Line::Added(l)));
    } else {
        // lcs[i][j]: length of the LCS of am[i..] and bm[j..].
        let w = bm.len() + 1;
        let mut lcs = vec![0u32; (am.len() + 1) * w];
        for i in (0..am.len()).rev() {
            for j in (0..bm.len()).rev() {
                lcs[i * w + j] = if am[i] == bm[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < am.len() && j < bm.len() {
            if am[i] == bm[j] {
                out.push(Line::Same(am[i]));
                i += 1;
                j += 1;
            } else if lcs[(i + 1) * w + j] >= lcs[i * w + j + 1] {
                out.push(Line::Removed(am[i]));
                i += 1;
            } else {
                out.push(Line::Added(bm[j]));
                j += 1;
            }
        }
        out.extend(am[i..].iter().map(|l| Line::Removed(l)));
        out.extend(bm[j..].iter().map(|l| Line::Added(l)));
    }
    out.extend(a[a.len() - suffix..].iter().map(|l| Line::Same(l)));
    out
}

/// The diff as text lines (`- x`, `+ y`, `  z`), only the changes with [`CONTEXT`] lines
/// around them; empty when the texts are equal.
pub fn render(lines: &[Line]) -> Vec<String> {
    let changed: Vec<usize> = (0..lines.len())
        .filter(|&i| !matches!(lines[i], Line::Same(_)))
        .collect();
    let mut out = Vec::new();
    let mut shown_to: Option<usize> = None; // one past the last line printed
    for &c in &changed {
        let from = c.saturating_sub(CONTEXT);
        let start = match shown_to {
            Some(end) if end >= from => end,
            Some(_) => {
                out.push("@@".to_string());
                from
            }
            None => from,
        };
        let end = (c + CONTEXT + 1).min(lines.len());
        for l in &lines[start.min(end)..end] {
            out.push(match l {
                Line::Same(s) => format!("  {s}"),
                Line::Removed(s) => format!("- {s}"),
                Line::Added(s) => format!("+ {s}"),
            });
        }
        shown_to = Some(end.max(shown_to.unwrap_or(0)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_changes() {
        let t = "a\nb\nc\n";
        assert!(render(&diff(t, t)).is_empty());
    }

    #[test]
    fn a_changed_line_shows_with_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n";
        assert_eq!(
            render(&diff(old, new)),
            ["  3", "  4", "- 5", "+ five", "  6", "  7"]
        );
    }

    #[test]
    fn distant_changes_are_separate_hunks() {
        let old = "a\n1\n2\n3\n4\n5\n6\nb\n";
        let new = "A\n1\n2\n3\n4\n5\n6\nB\n";
        assert_eq!(
            render(&diff(old, new)),
            ["- a", "+ A", "  1", "  2", "@@", "  5", "  6", "- b", "+ B"]
        );
    }

    #[test]
    fn insertions_and_removals_in_the_middle() {
        let old = "{\n  \"a\": 1,\n  \"c\": 3\n}\n";
        let new = "{\n  \"a\": 1,\n  \"b\": 2,\n  \"c\": 3\n}\n";
        let d = diff(old, new);
        assert_eq!(d.iter().filter(|l| matches!(l, Line::Added(_))).count(), 1);
        assert!(d.contains(&Line::Added("  \"b\": 2,")));
        assert!(!d.iter().any(|l| matches!(l, Line::Removed(_))));
        // From nothing: everything is added.
        assert!(diff("", new).iter().all(|l| matches!(l, Line::Added(_))));
    }

    #[test]
    fn huge_rewrites_fall_back_to_remove_then_add() {
        let old: String = (0..3000).map(|i| format!("o{i}\n")).collect();
        let new: String = (0..3000).map(|i| format!("n{i}\n")).collect();
        let d = diff(&old, &new);
        assert_eq!(d.len(), 6000);
        assert!(matches!(d[0], Line::Removed("o0")));
        assert!(matches!(d[3000], Line::Added("n0")));
    }
}

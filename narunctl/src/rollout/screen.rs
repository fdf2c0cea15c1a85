//! [`Screen`]: the live table of `deploy --wait`.

use crate::output::table_lines;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

/// The live table: redrawn in place on a terminal, one line per change otherwise.
pub struct Screen {
    tty: bool,
    /// Lines drawn last time (terminal).
    drawn: usize,
    /// Last printed text per row (plain output).
    printed: BTreeMap<(String, String), String>,
}

impl Screen {
    /// `tty`: whether stdout is a terminal.
    pub fn new(tty: bool) -> Screen {
        Screen {
            tty,
            drawn: 0,
            printed: BTreeMap::new(),
        }
    }

    /// A line above the table.
    pub fn title(&mut self, text: String) {
        println!("{text}");
    }

    /// Show `rows` (node, instance, status, restarts, detail) after `elapsed`.
    pub fn draw(&mut self, rows: &[[String; 5]], elapsed: Duration) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            let mut text = String::new();
            if self.drawn > 0 {
                // Back to the first line of the last drawing, clear to the end of the screen.
                text.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
            }
            let header = ["NODE", "INSTANCE", "STATUS", "RESTARTS", "DETAIL"];
            let mut lines = vec![format!("elapsed {}s", elapsed.as_secs())];
            lines.extend(table_lines(&header, rows));
            for l in &lines {
                text.push_str(l);
                text.push('\n');
            }
            self.drawn = lines.len();
            let _ = out.write_all(text.as_bytes());
        } else {
            for r in rows {
                let key = (r[0].clone(), r[1].clone());
                let line = format!("{} {}: {} restarts={} {}", r[0], r[1], r[2], r[3], r[4]);
                // Print on a status change, not on every settling second.
                let summary = format!("{} {}", r[2], if r[4] == "ready" { "ready" } else { "" });
                if self.printed.get(&key) != Some(&summary) {
                    let _ = writeln!(out, "{}", line.trim_end());
                    self.printed.insert(key, summary);
                }
            }
        }
        let _ = out.flush();
    }

    /// Stop redrawing: what follows is printed below the table.
    pub fn finish(&mut self) {
        self.drawn = 0;
    }
}

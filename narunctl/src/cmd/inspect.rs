//! `narunctl inspect BIN…`: what `deploy` would see in a binary, without NATS — its
//! platform (the ELF header, `narun_wire::elf::inspect`), size, SHA-256 (hex, and the
//! object store's `SHA-256=` form `deploy` prints and `images ls` shows), and the spec
//! embedded with `narun::embed_spec!` (section `.narun`, `narun_wire::elf::embedded_spec`),
//! parsed and validated as `deploy` would use it.

use crate::cli::InspectArgs;
use crate::plan;
use anyhow::{Result, bail};
use narun_spec::{AppSpec, NodeSelector};
use serde_json::json;
use std::path::Path;

/// Run `inspect`.
pub fn run(args: InspectArgs) -> Result<()> {
    let mut failed = Vec::new();
    let mut reports = Vec::new();
    for path in &args.binaries {
        let r = inspect(path);
        if let Some(problem) = &r.problem {
            failed.push(format!("{}: {problem}", path.display()));
        }
        reports.push(r);
    }
    if args.json.json {
        let all: Vec<serde_json::Value> = reports.iter().map(Report::to_json).collect();
        crate::output::print_json(&all)?;
    } else {
        for (i, r) in reports.iter().enumerate() {
            if i > 0 {
                println!();
            }
            r.print();
        }
    }
    match failed.len() {
        0 => Ok(()),
        1 => bail!("{}", failed[0]),
        n => bail!("{n} binaries have problems: {}", failed.join("; ")),
    }
}

/// What `inspect` found in one file.
struct Report {
    path: String,
    platform: Result<(String, String), String>,
    size: Option<u64>,
    sha256: Option<[u8; 32]>,
    /// The embedded spec: `Ok(None)` none, `Ok(Some)` its text and what checking it says.
    spec: Result<Option<(String, SpecCheck)>, String>,
    /// The first thing that makes `inspect` exit 1.
    problem: Option<String>,
}

struct SpecCheck {
    app: String,
    tag: String,
    /// Empty: valid.
    errors: Vec<String>,
    warnings: Vec<String>,
    has_nodes: bool,
}

fn inspect(path: &Path) -> Report {
    let mut problem = None;
    let platform = (|| {
        let mut header = [0u8; 64];
        let mut f = std::fs::File::open(path)?;
        let n = read_full(&mut f, &mut header)?;
        let info = narun_wire::elf::inspect(&header[..n])?;
        let p = info.platform()?;
        Ok::<_, anyhow::Error>((p.to_string(), info.target().to_string()))
    })()
    .map_err(|e| format!("{e:#}"));
    if let Err(e) = &platform {
        problem.get_or_insert(e.clone());
    }
    let size = std::fs::metadata(path).ok().map(|m| m.len());
    let sha256 = plan::sha256_of(path).ok();
    let spec = match plan::read_embedded(path) {
        Ok(None) => Ok(None),
        Ok(Some(text)) => {
            let check = check_spec(&text);
            if let Err(e) = &check {
                problem.get_or_insert(e.clone());
            } else if let Ok(c) = &check
                && !c.errors.is_empty()
            {
                problem.get_or_insert(format!(
                    "the embedded spec is invalid: {}",
                    c.errors.join("; ")
                ));
            }
            check.map(|c| Some((text, c)))
        }
        Err(e) => {
            // The path is in the report's heading already.
            let e = e.to_string();
            let e = e
                .strip_prefix(&format!("{}: ", path.display()))
                .unwrap_or(&e)
                .to_string();
            if platform.is_ok() {
                problem.get_or_insert(e.clone());
            }
            Err(e)
        }
    };
    Report {
        path: path.display().to_string(),
        platform,
        size,
        sha256,
        spec,
        problem,
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Parse and validate an embedded spec as `deploy` would use it (a spec without node
/// selectors gets this host's node, as `deploy` gives it).
fn check_spec(text: &str) -> Result<SpecCheck, String> {
    let spec = AppSpec::from_str_as(text, narun_spec::Format::Toml)
        .map_err(|e| format!("the embedded spec does not parse: {e}"))?;
    let has_nodes = !spec.nodes.is_empty();
    let mut checked = spec.clone();
    if !has_nodes {
        checked.nodes.push(NodeSelector::by_name("this-host", 1));
    }
    let errors = match checked.validate() {
        Ok(()) => Vec::new(),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    };
    Ok(SpecCheck {
        app: spec.name.clone(),
        tag: spec.tag.clone(),
        errors,
        warnings: checked.warnings().iter().map(|w| w.to_string()).collect(),
        has_nodes,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

impl Report {
    fn print(&self) {
        println!("file:      {}", self.path);
        match &self.platform {
            Ok((p, target)) => println!("platform:  {p} ({target})"),
            Err(e) => println!("platform:  - ({e})"),
        }
        if let Some(n) = self.size {
            println!("size:      {n} bytes ({})", crate::output::human_size(n));
        }
        if let Some(d) = &self.sha256 {
            println!("sha256:    {}", hex(d));
            println!("digest:    {}", plan::nats_digest(d));
        }
        match &self.spec {
            Ok(None) => println!("spec:      none embedded (deploy needs -f SPEC or --name/--tag)"),
            Err(e) => println!("spec:      unreadable: {e}"),
            Ok(Some((text, c))) => {
                let verdict = if c.errors.is_empty() {
                    "valid".to_string()
                } else {
                    format!("INVALID: {}", c.errors.join("; "))
                };
                println!(
                    "spec:      embedded (section .narun, {} bytes): app {}, tag {}, {verdict}",
                    text.len(),
                    if c.app.is_empty() { "-" } else { &c.app },
                    if c.tag.is_empty() { "-" } else { &c.tag },
                );
                if !c.has_nodes {
                    println!(
                        "           no nodes: deploy runs it on this host's node unless --node/--label"
                    );
                }
                for w in &c.warnings {
                    println!("           warning: {w}");
                }
                for line in text.trim_end().lines() {
                    println!("  | {line}");
                }
            }
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let spec = match &self.spec {
            Ok(None) => serde_json::Value::Null,
            Ok(Some((text, c))) => json!({
                "text": text,
                "app": c.app,
                "tag": c.tag,
                "valid": c.errors.is_empty(),
                "errors": c.errors,
                "warnings": c.warnings,
            }),
            Err(e) => json!({"error": e}),
        };
        json!({
            "file": self.path,
            "platform": self.platform.as_ref().ok().map(|(p, _)| p),
            "target": self.platform.as_ref().ok().map(|(_, t)| t),
            "error": self.problem,
            "size": self.size,
            "sha256": self.sha256.as_ref().map(|d| hex(d)),
            "digest": self.sha256.as_ref().map(plan::nats_digest),
            "spec": spec,
        })
    }
}

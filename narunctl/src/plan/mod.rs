//! What a deploy would do, before it does it: the spec it writes (built from a file or
//! the flags), the binaries it checks and uploads, the diff against the stored spec and,
//! per node, which instances start, are replaced and stop. `deploy` acts on it;
//! `deploy --dry-run` and `apps diff` only print it.
//!
//! # The rules a plan enforces ([`Plan::refusals`])
//!
//! * **A tag is immutable**: an object `<app>-<tag>-<os>-<arch>` that exists with another
//!   digest than the binary given is not replaced unless `--force`. The same digest is a
//!   no-op (nothing uploaded).
//! * **The spec pins its binaries**: `binaryDigests` is set to the digest of every
//!   object of the tag (the uploaded one, or the one already stored), so a node runs
//!   exactly what was deployed, and a binary replaced with `--force` changes the spec:
//!   nodes replace their instances (narund refuses an object whose digest is not the
//!   spec's).
//! * **Somebody runs it**: a spec that gives no instance to any online node is refused,
//!   listing the online nodes and their labels, unless `--allow-offline`. The flag form
//!   without `--node`/`--label` selects this host's node id (narund's default
//!   `node_id`, [`narun_wire::names::default_node_id`]), which must then be online.
//!   Before refusing, `deploy` reads the heartbeats again for up to `--timeout`
//!   ([`Plan::await_selected`]), so a node that has just started counts.
//!
//! # Who does what
//!
//! * this file: gathering (the stored spec, heartbeats, object infos: reads only, nothing
//!   is created) and printing;
//! * [`text_diff`]: the line diff of the two specs (pure);
//! * [`placement`]: per node actions and the online selection (pure).

pub mod placement;
pub mod text_diff;

use crate::session::Session;
use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::kv;
use narun_spec::{AppSpec, NodeSelector};
use narun_wire::events::NodeState;
use narun_wire::jetstream::{APP_BINARIES, APP_CONFIGS};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The architectures narunctl probes for objects of a tag (Go's GOARCH names).
pub const ARCHES: [&str; 5] = ["amd64", "arm64", "arm", "riscv64", "386"];

/// Where the spec comes from: `-f FILE`, the spec embedded in the binaries, or the flag
/// form.
pub struct SpecSource<'a> {
    pub file: Option<&'a Path>,
    pub name: Option<&'a str>,
    pub tag: Option<&'a str>,
    pub node: &'a [String],
    pub label: &'a [(String, String)],
    pub replicas: i64,
    /// The spec embedded in the binaries given ([`embedded_spec`]).
    pub embedded: Option<&'a Embedded>,
    /// `--replicas` was given (with an embedded spec and no `--node`/`--label`, it sets
    /// the replicas of each of the embedded spec's selectors).
    pub replicas_given: bool,
}

/// A spec embedded in a binary (`narun::embed_spec!`, section `.narun`).
#[derive(Debug, Clone)]
pub struct Embedded {
    /// The first binary that carries it.
    pub path: PathBuf,
    /// The spec text (TOML).
    pub text: String,
}

/// The spec embedded in `binaries` (`None`: none of them has one). Binaries that embed a
/// spec must embed the same one; a malformed section is an error naming the binary.
pub fn embedded_spec(binaries: &[PathBuf]) -> Result<Option<Embedded>> {
    let mut found: Option<Embedded> = None;
    for path in binaries {
        let Some(text) = read_embedded(path)? else {
            continue;
        };
        match &found {
            Some(e) if e.text != text => bail!(
                "{} and {} embed different specs: give one with -f SPEC, or rebuild them from the same spec",
                e.path.display(),
                path.display()
            ),
            Some(_) => {}
            None => {
                found = Some(Embedded {
                    path: path.clone(),
                    text,
                })
            }
        }
    }
    Ok(found)
}

/// The spec embedded in one binary, if any.
pub fn read_embedded(path: &Path) -> Result<Option<String>> {
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot read binary {}", path.display()))?;
    narun_wire::elf::embedded_spec(&mut f).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The spec to deploy, and — for the flag form (or an embedded spec) without
/// `--node`/`--label` — the node it defaulted to (this host's node id).
///
/// Precedence: `-f SPEC` is the whole spec (an embedded one is not used); else the
/// embedded spec, whose `name`, `tag` and node selectors the flags replace (`--replicas`
/// alone sets the replicas of each embedded selector); else the flags alone.
pub fn build_spec(src: &SpecSource) -> Result<(AppSpec, Option<String>)> {
    if let (Some(path), Some(e)) = (src.file, src.embedded) {
        eprintln!(
            "note: the spec embedded in {} is not used: -f {} is the spec",
            e.path.display(),
            path.display()
        );
    }
    if let (None, Some(e)) = (src.file, src.embedded) {
        let mut spec = AppSpec::from_str_as(&e.text, narun_spec::Format::Toml).map_err(|err| {
            anyhow!(
                "the spec embedded in {} (section .narun) does not parse: {err}",
                e.path.display()
            )
        })?;
        if !spec.binary_digests.is_empty() {
            spec.binary_digests.clear();
        }
        if let Some(n) = src.name {
            spec.name = n.to_string();
        }
        if let Some(t) = src.tag {
            spec.tag = t.to_string();
        }
        if !src.node.is_empty() || !src.label.is_empty() {
            spec.nodes.clear();
            add_flag_selectors(&mut spec, src);
        } else if src.replicas_given {
            for sel in &mut spec.nodes {
                sel.replicas = src.replicas;
            }
        }
        let default_node = default_selector(&mut spec, src.replicas)?;
        return Ok((spec, default_node));
    }
    if src.file.is_none() && (src.name.is_none() || src.tag.is_none()) {
        bail!(
            "no spec: give -f SPEC, or --name and --tag, or a binary that embeds its spec (narun::embed_spec!)"
        );
    }
    if let Some(path) = src.file {
        let mut spec = AppSpec::from_path(path)?;
        if !spec.binary_digests.is_empty() {
            // Written from the binaries (Plan::gather), never taken from a file.
            eprintln!(
                "warning: binaryDigests in {} is ignored: deploy writes it from the binaries",
                path.display()
            );
            spec.binary_digests.clear();
        }
        return Ok((spec, None));
    }
    let mut spec = AppSpec::new(src.name.unwrap_or_default(), src.tag.unwrap_or_default());
    add_flag_selectors(&mut spec, src);
    let default_node = default_selector(&mut spec, src.replicas)?;
    Ok((spec, default_node))
}

/// The selectors of `--node` and `--label`.
fn add_flag_selectors(spec: &mut AppSpec, src: &SpecSource) {
    for n in src.node {
        spec.nodes
            .push(NodeSelector::by_name(n.clone(), src.replicas));
    }
    if !src.label.is_empty() {
        spec.nodes.push(NodeSelector::by_labels(
            src.label.iter().cloned(),
            src.replicas,
        ));
    }
}

/// A spec without selectors runs on this host's node: its id, when it was added.
fn default_selector(spec: &mut AppSpec, replicas: i64) -> Result<Option<String>> {
    if !spec.nodes.is_empty() {
        return Ok(None);
    }
    // The node id narund has here by default (narun_wire::node_id); a bad provisioning
    // file is named rather than guessed around.
    let id = narun_wire::names::default_node_id()
        .map_err(|e| anyhow::anyhow!("no --node or --label given, and {e}"))?;
    spec.nodes.push(NodeSelector::by_name(id.clone(), replicas));
    Ok(Some(id))
}

/// A binary given on the command line, checked and hashed.
pub struct LocalBinary {
    pub path: PathBuf,
    pub platform: narun_wire::elf::Platform,
    pub sha256: [u8; 32],
}

impl LocalBinary {
    /// Its digest as the object store writes it.
    pub fn digest(&self) -> String {
        nats_digest(&self.sha256)
    }
}

/// Check every binary (a Linux ELF executable, one per architecture) and hash it,
/// before anything is uploaded.
pub fn check_binaries(paths: &[PathBuf]) -> Result<Vec<LocalBinary>> {
    let mut out: Vec<LocalBinary> = Vec::new();
    for path in paths {
        let mut header = [0u8; 64];
        let n = read_prefix(path, &mut header)
            .with_context(|| format!("cannot read binary {}", path.display()))?;
        let platform = narun_wire::elf::inspect(&header[..n])
            .and_then(|info| info.platform())
            .map_err(|e| anyhow!("{}: {e} (nothing was uploaded)", path.display()))?;
        if let Some(other) = out.iter().find(|b| b.platform == platform) {
            bail!(
                "{} and {} are both {platform}: give one binary per architecture",
                other.path.display(),
                path.display()
            );
        }
        let sha256 =
            sha256_of(path).with_context(|| format!("cannot read binary {}", path.display()))?;
        out.push(LocalBinary {
            path: path.clone(),
            platform,
            sha256,
        });
    }
    Ok(out)
}

/// What happens to one object of the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectAction {
    /// No object yet: upload.
    Upload,
    /// The object holds exactly this binary: nothing to upload.
    Unchanged,
    /// The object holds another binary (digest `stored`): refused unless `--force`.
    Replace { stored: String },
    /// No binary given for this platform: the stored object is used as it is.
    Keep,
}

/// One object `<app>-<tag>-<os>-<arch>`: stored, given, or both.
pub struct ObjectPlan {
    pub object: String,
    /// Index into the binaries given, if one is for this platform.
    pub local: Option<usize>,
    /// The stored object's digest and metadata, if it exists.
    pub stored: Option<(String, HashMap<String, String>)>,
    pub action: ObjectAction,
}

/// Everything a deploy of `spec` would change.
pub struct Plan {
    /// The spec to write, `binaryDigests` filled in.
    pub spec: AppSpec,
    /// The stored spec: revision and raw value (`None`: a new app, or the key was
    /// deleted).
    pub current: Option<(u64, bytes::Bytes)>,
    pub states: Vec<NodeState>,
    pub objects: Vec<ObjectPlan>,
    /// Set when the flag form defaulted the node to this host's node id.
    pub default_node: Option<String>,
}

impl Plan {
    /// Read what a deploy of `spec` with `binaries` would replace: the stored spec, the
    /// heartbeats, and every object of the spec's tag. Nothing is created or written.
    pub async fn gather(
        session: &Session,
        mut spec: AppSpec,
        default_node: Option<String>,
        binaries: &[LocalBinary],
    ) -> Result<Plan> {
        let current = match session.open_kv(&APP_CONFIGS).await? {
            Some(kv) => match session
                .bounded("reading the current spec", kv.entry(&spec.name))
                .await?
            {
                Some(e) if e.operation == kv::Operation::Put => Some((e.revision, e.value)),
                _ => None,
            },
            None => None,
        };
        let states = session.node_states().await?;
        let store = session.open_object_store(&APP_BINARIES).await?;
        let mut objects = Vec::new();
        let mut arches: Vec<(&str, &str)> = ARCHES.iter().map(|a| ("linux", *a)).collect();
        for b in binaries {
            let p = (b.platform.os, b.platform.arch);
            if !arches.contains(&p) {
                arches.push(p);
            }
        }
        for (os, arch) in arches {
            let object = spec.binary_object_name(os, arch);
            let stored = match &store {
                Some(store) => {
                    match tokio::time::timeout(session.timeout, store.info(&object)).await {
                        Ok(Ok(info)) if !info.deleted => {
                            Some((info.digest.clone().unwrap_or_default(), info.metadata))
                        }
                        Ok(Ok(_)) => None,
                        Ok(Err(e))
                            if e.kind()
                                == async_nats::jetstream::object_store::InfoErrorKind::NotFound =>
                        {
                            None
                        }
                        Ok(Err(e)) => bail!("reading object {object}: {e}"),
                        Err(_) => bail!(
                            "reading object {object}: no answer within {:?}",
                            session.timeout
                        ),
                    }
                }
                None => None,
            };
            let local = binaries
                .iter()
                .position(|b| b.platform.os == os && b.platform.arch == arch);
            let action = match (&stored, local) {
                (None, None) => continue,
                (None, Some(_)) => ObjectAction::Upload,
                (Some(_), None) => ObjectAction::Keep,
                (Some((d, _)), Some(i)) => {
                    if digest_bytes(d) == Some(binaries[i].sha256) {
                        ObjectAction::Unchanged
                    } else {
                        ObjectAction::Replace { stored: d.clone() }
                    }
                }
            };
            objects.push(ObjectPlan {
                object,
                local,
                stored,
                action,
            });
        }
        // Pin what each platform runs: the binary given, else the stored object.
        spec.binary_digests.clear();
        for o in &objects {
            let digest = match (o.local, &o.stored) {
                (Some(i), _) => binaries[i].digest(),
                (None, Some((d, _))) => match digest_bytes(d) {
                    Some(b) => nats_digest(&b),
                    None => continue, // not SHA-256: narund says so when it fetches
                },
                (None, None) => continue,
            };
            spec.binary_digests.insert(o.object.clone(), digest);
        }
        Ok(Plan {
            spec,
            current,
            states,
            objects,
            default_node,
        })
    }

    /// When the spec selects no online node, read the heartbeats again every 250 ms for up
    /// to `within` (`--timeout`): a node that has just started (`systemctl start narund;
    /// narunctl deploy …`) sends its first heartbeat within moments, and is then
    /// selected. Returns at once when a node is selected.
    pub async fn await_selected(
        &mut self,
        session: &Session,
        within: std::time::Duration,
    ) -> Result<()> {
        if !placement::selected_online(&self.spec, &self.states).is_empty() {
            return Ok(());
        }
        eprintln!(
            "no online node is selected by the spec of {} yet; waiting up to {within:?} for one",
            self.spec.name
        );
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            self.states = session.node_states().await?;
            if !placement::selected_online(&self.spec, &self.states).is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// The stored spec, parsed (`None` if there is none or it does not parse).
    pub fn current_spec(&self) -> Option<AppSpec> {
        self.current
            .as_ref()
            .and_then(|(_, v)| AppSpec::from_kv_bytes(v).ok())
    }

    /// Why a deploy of this plan must not happen: replaced binaries without `force`, no
    /// online node selected without `allow_offline`. Empty: go ahead.
    pub fn refusals(
        &self,
        binaries: &[LocalBinary],
        force: bool,
        allow_offline: bool,
    ) -> Vec<String> {
        let mut out = Vec::new();
        if !force {
            for o in &self.objects {
                if let (ObjectAction::Replace { stored }, Some(i)) = (&o.action, o.local) {
                    out.push(format!(
                        "{} already exists with digest {stored}, and {} has digest {}: \
                         a tag is immutable. Deploy it under a new tag, or pass --force to \
                         replace the binary (nodes then switch to it)",
                        o.object,
                        binaries[i].path.display(),
                        binaries[i].digest()
                    ));
                }
            }
        }
        if !allow_offline && placement::selected_online(&self.spec, &self.states).is_empty() {
            let online = placement::describe_online(&self.states);
            out.push(match &self.default_node {
                Some(id) => format!(
                    "no --node or --label given, and this host's node {id} is not online \
                     (online nodes: {online}); pass --node NODE_ID or --label KEY=VALUE, \
                     or --allow-offline to deploy to {id} anyway"
                ),
                None => format!(
                    "the spec of {} selects no online node (online nodes: {online}); \
                     fix its nodes, or pass --allow-offline to write it anyway",
                    self.spec.name
                ),
            });
        }
        out
    }

    /// The plan as JSON (`--dry-run --json`, `apps diff --json`): the app, the stored
    /// revision (`null`: a new app), the spec to write, the diff lines, the binaries, the
    /// per-node changes and why the deploy would be refused (empty: it would go ahead).
    pub fn to_json(&self, binaries: &[LocalBinary], refusals: &[String]) -> serde_json::Value {
        let new = String::from_utf8_lossy(&self.spec.to_kv_json()).into_owned();
        let old = self
            .current
            .as_ref()
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let spec: serde_json::Value = serde_json::from_str(&new).unwrap_or(serde_json::Value::Null);
        let objects: Vec<serde_json::Value> = self
            .objects
            .iter()
            .map(|o| {
                let local = o.local.map(|i| &binaries[i]);
                let action = match &o.action {
                    ObjectAction::Upload => "upload",
                    ObjectAction::Unchanged => "unchanged",
                    ObjectAction::Replace { .. } => "replace",
                    ObjectAction::Keep => "keep",
                };
                serde_json::json!({
                    "object": o.object,
                    "action": action,
                    "file": local.map(|b| b.path.display().to_string()),
                    "digest": local.map(LocalBinary::digest)
                        .or_else(|| o.stored.as_ref().map(|(d, _)| d.clone())),
                    "stored_digest": o.stored.as_ref().map(|(d, _)| d.clone()),
                })
            })
            .collect();
        let old_spec = self.current_spec();
        let nodes: Vec<serde_json::Value> =
            placement::plan_nodes(&self.spec.name, old_spec.as_ref(), &self.spec, &self.states)
                .into_iter()
                .map(|p| {
                    serde_json::json!({
                        "node": p.node,
                        "online": p.online,
                        "running": p.running,
                        "desired": p.desired,
                        "changes": p.actions.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    })
                })
                .collect();
        serde_json::json!({
            "app": self.spec.name,
            "tag": self.spec.tag,
            "current_revision": self.current.as_ref().map(|(rev, _)| *rev),
            "spec": spec,
            "diff": text_diff::render(&text_diff::diff(&old, &new)),
            "binaries": objects,
            "nodes": nodes,
            "refusals": refusals,
        })
    }

    /// Print the spec diff, the binaries and the per-node changes.
    pub fn print(&self, binaries: &[LocalBinary]) {
        let new = String::from_utf8_lossy(&self.spec.to_kv_json()).into_owned();
        match &self.current {
            None => println!(
                "spec {} (new app, app-configs has no entry):",
                self.spec.name
            ),
            Some((rev, _)) => println!("spec {} (app-configs revision {rev}):", self.spec.name),
        }
        let old = self
            .current
            .as_ref()
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let lines = text_diff::render(&text_diff::diff(&old, &new));
        if lines.is_empty() {
            println!("  unchanged");
        }
        for l in lines {
            println!("  {l}");
        }
        println!();
        println!("binaries:");
        if self.objects.is_empty() {
            println!(
                "  none (no binary given and no object of tag {})",
                self.spec.tag
            );
        }
        for o in &self.objects {
            let local = o.local.map(|i| &binaries[i]);
            let what = match (&o.action, local) {
                (ObjectAction::Upload, Some(b)) => {
                    format!("upload {} ({})", b.path.display(), b.digest())
                }
                (ObjectAction::Unchanged, Some(b)) => {
                    format!("unchanged ({}, already uploaded)", b.digest())
                }
                (ObjectAction::Replace { stored }, Some(b)) => format!(
                    "replace {stored} with {} ({}; only with --force)",
                    b.digest(),
                    b.path.display()
                ),
                _ => format!(
                    "keep {}",
                    o.stored.as_ref().map(|(d, _)| d.as_str()).unwrap_or("-")
                ),
            };
            println!("  {}  {what}", o.object);
        }
        println!();
        println!("nodes:");
        let old = self.current_spec();
        let plans = placement::plan_nodes(&self.spec.name, old.as_ref(), &self.spec, &self.states);
        if plans.is_empty() {
            println!("  no node runs or is selected for {}", self.spec.name);
            return;
        }
        let rows = placement::rows(&plans);
        for l in
            crate::output::table_lines(&["NODE", "STATUS", "RUNNING", "DESIRED", "CHANGES"], &rows)
        {
            println!("  {l}");
        }
    }
}

/// `SHA-256=<base64url with padding>`, the object store's form.
pub fn nats_digest(sha256: &[u8; 32]) -> String {
    use base64::Engine as _;
    format!(
        "SHA-256={}",
        base64::engine::general_purpose::URL_SAFE.encode(sha256)
    )
}

/// The 32 bytes of an object store digest `SHA-256=<base64url>` (padding optional, the
/// standard alphabet accepted); `None` for anything else.
pub fn digest_bytes(stored: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let b64 = stored
        .strip_prefix("SHA-256=")?
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .ok()?
        .try_into()
        .ok()
}

/// SHA-256 of the file at `path`.
pub fn sha256_of(path: &Path) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hasher.finalize().into())
}

fn read_prefix(path: &Path, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_in_every_spelling() {
        use sha2::Digest;
        let d: [u8; 32] = sha2::Sha256::digest(b"").into();
        let nats = nats_digest(&d);
        assert_eq!(nats, "SHA-256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU=");
        assert_eq!(digest_bytes(&nats), Some(d));
        assert_eq!(digest_bytes(nats.trim_end_matches('=')), Some(d));
        assert_eq!(
            digest_bytes("SHA-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
            Some(d)
        );
        assert_eq!(digest_bytes("SHA-512=47DEQpj8HBSa"), None);
    }

    #[test]
    fn flags_override_the_embedded_spec_and_a_spec_file_replaces_it() {
        let embedded = Embedded {
            path: "app".into(),
            text: "name = \"web\"\ntag = \"v1\"\nstopTimeoutSec = 7\n\
                   [[nodes]]\nname = \"n1\"\nreplicas = 3\n"
                .into(),
        };
        let src = SpecSource {
            file: None,
            name: None,
            tag: None,
            node: &[],
            label: &[],
            replicas: 1,
            embedded: Some(&embedded),
            replicas_given: false,
        };
        let (spec, default) = build_spec(&src).unwrap();
        assert_eq!((spec.name.as_str(), spec.tag.as_str()), ("web", "v1"));
        assert_eq!(spec.nodes, [NodeSelector::by_name("n1", 3)]);
        assert_eq!(default, None);
        // --tag replaces the tag, the rest stays.
        let (spec, _) = build_spec(&SpecSource {
            tag: Some("v2"),
            ..src
        })
        .unwrap();
        assert_eq!((spec.name.as_str(), spec.tag.as_str()), ("web", "v2"));
        assert_eq!(spec.nodes, [NodeSelector::by_name("n1", 3)]);
        // --replicas alone: every embedded selector; --node: the selectors.
        let (spec, _) = build_spec(&SpecSource {
            replicas: 5,
            replicas_given: true,
            ..src
        })
        .unwrap();
        assert_eq!(spec.nodes, [NodeSelector::by_name("n1", 5)]);
        let nodes = ["n2".to_string()];
        let (spec, _) = build_spec(&SpecSource {
            node: &nodes,
            ..src
        })
        .unwrap();
        assert_eq!(spec.nodes, [NodeSelector::by_name("n2", 1)]);
        // -f: the file is the spec.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "name = \"api\"\ntag = \"v9\"\n").unwrap();
        let (spec, _) = build_spec(&SpecSource {
            file: Some(&file),
            ..src
        })
        .unwrap();
        assert_eq!((spec.name.as_str(), spec.tag.as_str()), ("api", "v9"));
        // A spec that does not parse names the binary and the section.
        let bad = Embedded {
            path: "app".into(),
            text: "name = ".into(),
        };
        let e = build_spec(&SpecSource {
            embedded: Some(&bad),
            ..src
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("the spec embedded in app (section .narun) does not parse"),
            "{e}"
        );
        // Nothing at all.
        let e = build_spec(&SpecSource {
            embedded: None,
            ..src
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("no spec: give -f SPEC"), "{e}");
    }

    #[test]
    fn flag_form_defaults_to_this_hosts_node_id() {
        let src = SpecSource {
            file: None,
            name: Some("hello"),
            tag: Some("v1"),
            node: &[],
            label: &[],
            replicas: 2,
            embedded: None,
            replicas_given: true,
        };
        let (spec, default) = build_spec(&src).unwrap();
        let id = narun_wire::names::default_node_id().unwrap();
        assert_eq!(default.as_deref(), Some(id.as_str()));
        assert_eq!(spec.nodes, [NodeSelector::by_name(id, 2)]);
        let nodes = ["n1".to_string()];
        let (spec, default) = build_spec(&SpecSource {
            node: &nodes,
            ..src
        })
        .unwrap();
        assert_eq!(default, None);
        assert_eq!(spec.nodes, [NodeSelector::by_name("n1", 2)]);
    }
}

//! Which node id a device has when nobody configured one: one rule for narund (its
//! `node_id`) and narunctl (the node `narunctl deploy`'s flag form targets by default).
//!
//! One image is flashed onto many devices, so everything baked into the image (the config
//! file, the host name) is the same on each of them. The chain, first match wins:
//!
//! 1. `node_id` in narund's config (or `--node-id`, `NARUND_NODE_ID`): not decided here;
//! 2. the **provisioning file** (`node_id_file`, default [`DEFAULT_NODE_ID_FILE`]): its
//!    first line, written per device at provisioning time. Missing or blank: next step. A
//!    line that is no valid node id is an error naming the file (never a silent fallback
//!    to an id the operator did not choose);
//! 3. **`/etc/machine-id`**, which systemd generates on each device's first boot: narund
//!    does not publish it (the machine id is meant to stay private to the device; it ends
//!    up in NATS subjects and KV keys) but an id derived from it exactly like
//!    `sd_id128_get_machine_app_specific(3)` with narun's application id
//!    [`NODE_ID_APP_ID`], so on the device
//!    `systemd-id128 machine-id --app-specific=fe40dde083ad423db561e3dfc28eb6fa` prints it.
//!    An empty file or `uninitialized` (an image before its first boot) counts as missing;
//! 4. the **host name** (`/proc/sys/kernel/hostname`), then `localhost`.
//!
//! [`choose`] is the rule without I/O (unit-tested); [`resolve`] reads the files.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Where narund and narunctl look for a provisioned node id (narund: `node_id_file`).
pub const DEFAULT_NODE_ID_FILE: &str = "/etc/narun/node-id";

/// systemd's machine id (machine-id(5)).
pub const MACHINE_ID_FILE: &str = "/etc/machine-id";

/// narun's application id for the machine-derived node id (a random 128-bit value chosen
/// once; changing it changes the node id of every device without a configured one).
pub const NODE_ID_APP_ID: &str = "fe40dde083ad423db561e3dfc28eb6fa";

/// Where a node id came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeIdSource {
    /// The provisioning file at this path.
    File(PathBuf),
    /// Derived from `/etc/machine-id`.
    MachineId,
    /// The host name (or `localhost` when it is empty).
    Hostname,
}

impl std::fmt::Display for NodeIdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeIdSource::File(p) => write!(f, "the provisioning file {}", p.display()),
            NodeIdSource::MachineId => write!(
                f,
                "{MACHINE_ID_FILE} (systemd-id128 machine-id --app-specific={NODE_ID_APP_ID})"
            ),
            NodeIdSource::Hostname => write!(f, "the host name"),
        }
    }
}

/// A node id and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedNodeId {
    pub id: String,
    pub source: NodeIdSource,
}

/// The provisioning file exists but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node id file {}: {problem}", path.display())]
pub struct NodeIdFileError {
    pub path: PathBuf,
    pub problem: String,
}

/// The rule without I/O. `file`: the provisioning file's path and text (`None`: it does not
/// exist); `machine_id`: the text of `/etc/machine-id` (`None`: unreadable); `hostname`:
/// the host name.
pub fn choose(
    file: Option<(&Path, &str)>,
    machine_id: Option<&str>,
    hostname: &str,
) -> Result<ResolvedNodeId, NodeIdFileError> {
    if let Some((path, text)) = file {
        let line = text.lines().next().unwrap_or("").trim();
        if !line.is_empty() {
            if let Some(problem) = crate::names::node_id_problem(line) {
                return Err(NodeIdFileError {
                    path: path.to_owned(),
                    problem: format!("first line {problem}"),
                });
            }
            return Ok(ResolvedNodeId {
                id: line.to_owned(),
                source: NodeIdSource::File(path.to_owned()),
            });
        }
    }
    if let Some(machine) = machine_id.and_then(parse_machine_id) {
        let app = parse_machine_id(NODE_ID_APP_ID).expect("NODE_ID_APP_ID is 32 hex digits");
        return Ok(ResolvedNodeId {
            id: hex(&app_specific_id(&machine, &app)),
            source: NodeIdSource::MachineId,
        });
    }
    let host = hostname.trim();
    Ok(ResolvedNodeId {
        id: if host.is_empty() { "localhost" } else { host }.to_owned(),
        source: NodeIdSource::Hostname,
    })
}

/// [`choose`] with the files of this machine: `node_id_file`, [`MACHINE_ID_FILE`] and
/// `/proc/sys/kernel/hostname`. A provisioning file that exists but cannot be read is an
/// error too.
pub fn resolve(node_id_file: &Path) -> Result<ResolvedNodeId, NodeIdFileError> {
    let file = match read_bounded(node_id_file) {
        Ok(bytes) => Some(String::from_utf8(bytes).map_err(|_| NodeIdFileError {
            path: node_id_file.to_owned(),
            problem: "is not UTF-8 text".into(),
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(NodeIdFileError {
                path: node_id_file.to_owned(),
                problem: format!("cannot be read: {e}"),
            });
        }
    };
    let machine = std::fs::read_to_string(MACHINE_ID_FILE).ok();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    choose(
        file.as_deref().map(|t| (node_id_file, t)),
        machine.as_deref(),
        &host,
    )
}

/// At most [`MAX_FILE_BYTES`] of `path` (a node id is one short line; a path pointing at
/// `/dev/zero` or a huge file must not exhaust memory). More is an error.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "longer than {MAX_FILE_BYTES} bytes (a node id is one line of at most 64)"
        )));
    }
    Ok(bytes)
}

/// The most narund reads of a provisioning file.
const MAX_FILE_BYTES: u64 = 4096;

/// A machine id as machine-id(5) writes it: 32 hex digits and a newline. Anything else
/// (empty, `uninitialized`, garbage) is `None`.
fn parse_machine_id(text: &str) -> Option<[u8; 16]> {
    let t = text.trim();
    if t.len() != 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok()?;
    }
    (id != [0u8; 16]).then_some(id)
}

/// `sd_id128_get_machine_app_specific(3)`: HMAC-SHA256 keyed with the machine id over the
/// application id, the first 16 bytes made a version 4 UUID.
fn app_specific_id(machine: &[u8; 16], app: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 64];
    key[..16].copy_from_slice(machine);
    let pad = |x: u8| key.map(|k| k ^ x);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(app)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&outer[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINE: &str = "0123456789abcdef0123456789abcdef\n";
    /// `systemd-id128 machine-id --app-specific=fe40dde083ad423db561e3dfc28eb6fa` on a
    /// machine whose /etc/machine-id is `MACHINE` (also computed with Python's hmac).
    const DERIVED: &str = "ff4849614fe841058410440a736d5111";

    #[test]
    fn the_provisioning_file_wins_then_machine_id_then_host_name() {
        let path = Path::new("/etc/narun/node-id");
        let r = choose(Some((path, "edge-17\n")), Some(MACHINE), "h").unwrap();
        assert_eq!(r.id, "edge-17");
        assert_eq!(r.source, NodeIdSource::File(path.into()));
        // Only the first line counts, surrounding blanks are dropped.
        let r = choose(Some((path, "  edge-18 \r\n# note\n")), None, "h").unwrap();
        assert_eq!(r.id, "edge-18");

        for blank in ["", "\n", "   \n\n"] {
            let r = choose(Some((path, blank)), Some(MACHINE), "h").unwrap();
            assert_eq!(
                (r.id.as_str(), r.source),
                (DERIVED, NodeIdSource::MachineId)
            );
        }
        let r = choose(None, Some(MACHINE), "h").unwrap();
        assert_eq!(r.id, DERIVED);

        for unset in [
            "",
            "uninitialized\n",
            "xyz",
            "0123",
            &"0".repeat(32),
            &"g".repeat(32),
        ] {
            let r = choose(None, Some(unset), "edge\n").unwrap();
            assert_eq!(
                (r.id.as_str(), r.source),
                ("edge", NodeIdSource::Hostname),
                "{unset:?}"
            );
        }
        assert_eq!(choose(None, None, " ").unwrap().id, "localhost");
    }

    #[test]
    fn a_bad_provisioning_file_is_an_error_naming_it() {
        let path = Path::new("/data/node-id");
        for (text, want) in [
            ("edge.17\n", "contains '.'"),
            (&"a".repeat(65) as &str, "at most 64"),
            ("é\n", "contains 'é'"),
        ] {
            let e = choose(Some((path, text)), Some(MACHINE), "h").unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with("node id file /data/node-id: first line"),
                "{msg}"
            );
            assert!(msg.contains(want), "{msg}");
        }
    }

    #[test]
    fn derived_id_is_systemds_app_specific_machine_id() {
        let machine = parse_machine_id(MACHINE).unwrap();
        let app = parse_machine_id(NODE_ID_APP_ID).unwrap();
        assert_eq!(hex(&app_specific_id(&machine, &app)), DERIVED);
        // A valid node id (a NATS subject token and KV key).
        assert_eq!(crate::names::node_id_problem(DERIVED), None);
        // Upper-case machine ids are the same id.
        assert_eq!(parse_machine_id(&MACHINE.to_uppercase()), Some(machine));
    }

    #[test]
    fn resolve_reads_the_file_and_reports_unreadable_ones() {
        let dir = std::env::temp_dir().join(format!("narun-node-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("node-id");
        std::fs::write(&f, "dev-1\n").unwrap();
        assert_eq!(resolve(&f).unwrap().id, "dev-1");
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(resolve(&f).unwrap_err().to_string().contains("not UTF-8"));
        // A directory where the file should be: cannot be read, said so.
        let e = resolve(&dir).unwrap_err();
        assert!(e.to_string().contains("cannot be read"), "{e}");
        // /dev/zero or a huge file: refused after 4 KiB, not read to the end.
        let e = resolve(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("longer than 4096 bytes"), "{e}");
        // Missing: the rest of the chain (whatever this machine has).
        let r = resolve(&dir.join("absent")).unwrap();
        assert_ne!(r.source, NodeIdSource::File(dir.join("absent")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

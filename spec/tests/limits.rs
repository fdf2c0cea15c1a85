//! The spec limits (`narun_spec::MAX_*`, docs/spec.md "Limits"): one case per limit, each
//! at the limit (accepted) and one past it (refused with the limit and the value found),
//! and the document limits checked before parsing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use narun_spec::*;

fn base() -> AppSpec {
    let mut s = AppSpec::new("app", "v1");
    s.nodes.push(NodeSelector::by_name("n1", 1));
    s
}

/// `mutate(spec, at_limit)`: at the limit the spec is valid; one past it, the only
/// error is at `path` and names the limit and the value found.
#[track_caller]
fn limit(path: &str, limit: &str, found: &str, mutate: impl Fn(&mut AppSpec, bool)) {
    let mut ok = base();
    mutate(&mut ok, true);
    if let Err(e) = ok.validate() {
        panic!("{path} at its limit must be valid, got:\n{e}");
    }
    let mut bad = base();
    mutate(&mut bad, false);
    let errors = bad
        .validate()
        .expect_err(&format!("{path} past its limit was accepted"));
    assert_eq!(errors.errors().len(), 1, "{errors}");
    let e = &errors.errors()[0];
    assert_eq!(e.path, path, "{errors}");
    assert!(e.message.contains(limit), "{e}: no limit {limit:?}");
    assert!(e.message.contains(found), "{e}: no value {found:?}");
}

fn n(at: bool, max: usize) -> usize {
    if at { max } else { max + 1 }
}

#[test]
fn replicas() {
    limit("nodes[0].replicas", "at most 1024", "got 1025", |s, at| {
        s.nodes[0].replicas = n(at, MAX_REPLICAS as usize) as i64
    });
    let mut s = base();
    s.nodes[0].replicas = 4_294_967_295;
    let e = s.validate().unwrap_err().to_string();
    assert!(
        e.contains("at most 1024") && e.contains("got 4294967295"),
        "{e}"
    );
    assert!(e.contains("max_replicas_per_node"), "{e}");
}

#[test]
fn counts_of_lists() {
    limit("nodes", "limit of 256", "has 257", |s, at| {
        s.nodes = (0..n(at, MAX_NODES))
            .map(|i| NodeSelector::by_name(format!("n{i}"), 1))
            .collect()
    });
    limit("nodes[0].labels", "limit of 64", "has 65", |s, at| {
        s.nodes[0] =
            NodeSelector::by_labels((0..n(at, MAX_LABELS)).map(|i| (format!("k{i}"), "v")), 1)
    });
    limit("args", "limit of 1024", "has 1025", |s, at| {
        s.args = vec!["a".into(); n(at, MAX_ARGS)]
    });
    limit("env", "limit of 1024", "has 1025", |s, at| {
        s.env = (0..n(at, MAX_ENV))
            .map(|i| EnvVar::value(format!("V{i}"), "x"))
            .collect()
    });
    limit("mounts", "limit of 64", "has 65", |s, at| {
        s.mounts = (0..n(at, MAX_MOUNTS))
            .map(|i| MountSpec {
                path: format!("f{i}"),
                source: MountSource {
                    object_store: "o".into(),
                },
            })
            .collect()
    });
    limit("landlock.paths", "limit of 256", "has 257", |s, at| {
        s.landlock.paths = vec![LandlockPath::default(); n(at, MAX_LIST_ITEMS)]
    });
    limit("nonet.localPorts", "limit of 256", "has 257", |s, at| {
        s.nonet.local_ports = vec![
            PortForward {
                port: 2000,
                protocol: "tcp".into()
            };
            n(at, MAX_LIST_ITEMS)
        ]
    });
    assert!(CAPABILITIES.len() <= MAX_CAPABILITIES);
    let mut s = base();
    s.capabilities = vec!["CAP_CHOWN".into(); MAX_CAPABILITIES + 1];
    let e = s.validate().unwrap_err();
    assert!(
        e.get("capabilities")
            .is_some_and(|e| e.message.contains("limit of 64")),
        "{e}"
    );
}

#[test]
fn lengths_of_strings() {
    let long = |at: bool, max: usize| "x".repeat(n(at, max));
    limit("args[0]", "limit of 32768 bytes", "32769 bytes", |s, at| {
        s.args = vec![long(at, MAX_VALUE_BYTES)]
    });
    limit(
        "env[0].value",
        "limit of 32768 bytes",
        "32769 bytes",
        |s, at| s.env = vec![EnvVar::value("A", long(at, MAX_VALUE_BYTES))],
    );
    limit("env[0].name", "limit of 256 bytes", "257 bytes", |s, at| {
        s.env = vec![EnvVar::value(long(at, MAX_ENV_NAME_LEN), "v")]
    });
    limit(
        "env[0].valueFromSecret",
        "limit of 255 bytes",
        "256 bytes",
        |s, at| s.env = vec![EnvVar::from_secret("A", long(at, MAX_OBJECT_NAME_LEN))],
    );
    limit(
        "mounts[0].path",
        "limit of 4096 bytes",
        "4097 bytes",
        |s, at| {
            s.mounts = vec![MountSpec {
                path: long(at, MAX_PATH_LEN),
                source: MountSource {
                    object_store: "o".into(),
                },
            }]
        },
    );
    limit(
        "mounts[0].source.objectStore",
        "limit of 255 bytes",
        "256 bytes",
        |s, at| {
            s.mounts = vec![MountSpec {
                path: "f".into(),
                source: MountSource {
                    object_store: long(at, MAX_OBJECT_NAME_LEN),
                },
            }]
        },
    );
    limit("user", "limit of 256 bytes", "257 bytes", |s, at| {
        s.user = long(at, MAX_USER_LEN)
    });
    limit(
        "cgroupParent",
        "limit of 4096 bytes",
        "4097 bytes",
        |s, at| s.cgroup_parent = long(at, MAX_PATH_LEN),
    );
    limit(
        "nodes[0].name",
        "limit of 255 bytes",
        "256 bytes",
        |s, at| s.nodes[0].name = Some(long(at, MAX_OBJECT_NAME_LEN)),
    );
    limit(
        "nodes[0].labels.k",
        "limit of 256 bytes",
        "257 bytes",
        |s, at| s.nodes[0] = NodeSelector::by_labels([("k", long(at, MAX_LABEL_LEN))], 1),
    );
    // Names keep their own limits.
    limit("name", "at most 64", "", |s, at| {
        s.name = long(at, MAX_NAME_LEN)
    });
}

#[test]
fn args_and_env_together() {
    // 16 values of 16 KiB are each fine, but together past MAX_EXEC_BYTES.
    let mut s = base();
    s.env = (0..16)
        .map(|i| EnvVar::value(format!("V{i}"), "x".repeat(16 * 1024)))
        .collect();
    let e = s.validate().unwrap_err();
    let env = e.get("env").expect("an error about env");
    assert!(env.message.contains("limit of 262144 bytes"), "{e}");
    s.env.truncate(15);
    s.validate().unwrap();
}

#[test]
fn magnitudes() {
    let mut s = base();
    s.start_timeout_sec = MAX_DURATION_SEC;
    s.stop_timeout_sec = MAX_DURATION_SEC;
    s.start_limit_interval_sec = MAX_DURATION_SEC;
    s.memory_mb = MAX_MEMORY_MB;
    s.pids_max = Some(MAX_PIDS);
    s.cpu_cores = MAX_CPU_CORES;
    s.validate().unwrap();
    s.start_timeout_sec = u64::MAX;
    s.stop_timeout_sec = MAX_DURATION_SEC + 1;
    s.start_limit_interval_sec = u64::MAX;
    s.settle_sec = MAX_DURATION_SEC + 1;
    s.notify = true;
    s.watchdog_sec = Some(u64::MAX);
    s.memory_mb = u64::MAX;
    s.memory_max_mb = u64::MAX;
    s.pids_max = Some(u64::MAX);
    s.cpu_cores = 1e9;
    let e = s.validate().unwrap_err();
    for path in [
        "startTimeoutSec",
        "stopTimeoutSec",
        "settleSec",
        "startLimitIntervalSec",
        "watchdogSec",
        "memoryMB",
        "memoryMaxMB",
        "pidsMax",
        "cpuCores",
    ] {
        let err = e
            .get(path)
            .unwrap_or_else(|| panic!("no error at {path}:\n{e}"));
        assert!(err.message.contains("at most"), "{err}");
    }
}

#[test]
fn open_files() {
    limit(
        "nofileMax",
        "at most 1073741824",
        "got 1073741825",
        |s, at| s.nofile_max = Some(if at { MAX_NOFILE } else { MAX_NOFILE + 1 }),
    );
    let mut s = base();
    s.nofile_max = Some(u64::MAX);
    let e = s.validate().unwrap_err().to_string();
    assert!(
        e.contains("nofileMax: must be at most 1073741824") && e.contains("apps.nofile_max"),
        "{e}"
    );
    // Spelled like the other fields, in every format, and written back the same way.
    for text in [
        "name: app\ntag: v1\nnofileMax: 4096\n",
        "{\"name\": \"app\", \"tag\": \"v1\", \"nofileMax\": 4096}",
    ] {
        let s = AppSpec::from_kv_bytes(text.as_bytes()).unwrap();
        assert_eq!(s.nofile_max, Some(4096), "{text}");
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());
        let json = String::from_utf8(s.to_kv_json()).unwrap();
        assert!(json.contains("\"nofileMax\": 4096"), "{json}");
    }
    let s = AppSpec::from_toml_str("name = \"app\"\ntag = \"v1\"\nnofileMax = 2048\n").unwrap();
    assert_eq!(s.nofile_max, Some(2048));
    // Absent: not written, so the hash of a spec without it is what it was before.
    assert!(
        !String::from_utf8(base().to_kv_json())
            .unwrap()
            .contains("nofileMax")
    );
    assert!(AppSpec::from_kv_bytes(b"name: app\ntag: v1\nnofileMax: -1\n").is_err());
    assert!(AppSpec::from_kv_bytes(b"name: app\ntag: v1\nnofileMax: lots\n").is_err());
}

#[test]
fn document_size_is_limited_before_parsing() {
    let mut text = "name: a\ntag: v1\n".to_string();
    text.push_str(&"#".repeat(MAX_SPEC_BYTES - text.len()));
    AppSpec::from_yaml_str(&text).unwrap();
    text.push('#');
    let e = AppSpec::from_yaml_str(&text).unwrap_err();
    assert!(
        matches!(e, ParseError::TooLarge { bytes, max } if bytes == MAX_SPEC_BYTES + 1 && max == MAX_SPEC_BYTES)
    );
    let msg = e.to_string();
    assert!(
        msg.contains("1048577 bytes") && msg.contains("limit of 1048576 bytes"),
        "{msg}"
    );
    assert!(matches!(
        AppSpec::from_kv_bytes(text.as_bytes()),
        Err(ParseError::TooLarge { .. })
    ));
    // A file is not even read past the limit.
    let dir = std::env::temp_dir().join(format!("narun-spec-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.yaml");
    std::fs::write(&path, &text).unwrap();
    let e = AppSpec::from_path(&path).unwrap_err().to_string();
    assert!(e.contains("1048577 bytes"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The hostile document of issue 17 and its cousins in every format: refused quickly,
/// naming the limit, the depth found and where.
#[test]
fn nesting_is_limited_before_parsing() {
    let cases = [
        (
            Format::Yaml,
            format!("name: a\nargs: {}", "[".repeat(100_000)),
        ),
        (
            Format::Yaml,
            format!("name: a\nx: {}{}", "[".repeat(50_000), "]".repeat(50_000)),
        ),
        (
            Format::Yaml,
            format!("name: a\nx: {}", "{a: ".repeat(25_000)),
        ),
        (
            Format::Json,
            format!("{{\"name\": \"a\", \"x\": {}", "[".repeat(100_000)),
        ),
        (
            Format::Toml,
            format!("name = \"a\"\nx = {}", "[".repeat(100_000)),
        ),
        (Format::Toml, format!("[{}]\n", vec!["a"; 1000].join("."))),
    ];
    for (format, text) in cases {
        let t = Instant::now();
        let e = AppSpec::from_str_as(&text, format).unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{format}: took {:?}",
            t.elapsed()
        );
        assert!(
            matches!(e, ParseError::TooDeep { max: 64, .. }),
            "{format}: {e}"
        );
        let msg = e.to_string();
        assert!(msg.contains("more than the limit of 64 levels"), "{msg}");
        assert!(msg.contains("line "), "{msg}");
    }
    let e = AppSpec::from_kv_bytes(format!("name: a\nargs: {}", "[".repeat(100_000)).as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("nests 100001 levels deep"), "{e}");
    // At the limit: parsed (and refused for its shape, not its depth).
    let at = format!("name: a\nargs: {}{}", "[".repeat(63), "]".repeat(63));
    match AppSpec::from_yaml_str(&at) {
        Err(ParseError::Syntax { .. }) => {}
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn real_specs_are_far_from_the_limits() {
    let mut labels = BTreeMap::new();
    labels.insert("role".to_string(), "edge".to_string());
    let spec = AppSpec::from_yaml_str(
        "name: a\ntag: v1\nnodes:\n  - labels: {role: edge}\n    replicas: 1024\nlandlock:\n  paths:\n    - {path: /x, modes: r}\n",
    )
    .unwrap();
    spec.validate().unwrap();
    assert_eq!(spec.desired_replicas("n", &labels), 1024);
}

/// A "billion laughs": three levels of aliases under 100 KB would replay ~10^11 events in
/// the YAML parser. Aliases are refused by the pre-scan, at once, naming where; an anchor
/// alone, a `*` inside quotes or inside a plain scalar is not an alias.
#[test]
fn yaml_aliases_are_refused_before_parsing() {
    let x = vec!["x"; 10_000].join(",");
    let a = vec!["*a"; 1000].join(",");
    let b = vec!["*b"; 1000].join(",");
    let text = format!("name: app\ntag: v1\nz: &a [{x}]\ny: &b [{a}]\nw: [{b}]\n");
    let t = Instant::now();
    let e = AppSpec::from_yaml_str(&text).expect_err("an aliased spec was accepted");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let msg = e.to_string();
    assert!(msg.contains("alias (`*name`)"), "{msg}");
    assert!(msg.contains("line 4"), "{msg}");
    let e = AppSpec::from_kv_bytes(text.as_bytes()).expect_err("KV form accepted it");
    assert!(e.to_string().contains("alias"), "{e}");

    for ok in [
        "name: app\ntag: v1\nargs: [\"*a\", '*b', a*b]\n",
        "name: app\ntag: v1\nlabels: {k: &x v}\n",
    ] {
        if let Err(e) = AppSpec::from_yaml_str(ok) {
            assert!(!e.to_string().contains("alias"), "{ok:?}: {e}");
        }
    }
}

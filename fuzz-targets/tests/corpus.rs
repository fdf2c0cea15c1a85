//! Replays the committed seed corpus `fuzz/corpus/<target>/*` (and any crash inputs
//! kept as regressions there) through the fuzz target bodies, on stable Rust, as part
//! of `cargo test --workspace`. A target without seeds fails: every target ships some.

use narun_fuzz_targets::TARGETS;
use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn every_target_replays_its_seed_corpus() {
    for (target, run) in TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus of {target}: {}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds in {}", dir.display());
        for file in &files {
            let data = std::fs::read(file).expect("read seed");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(
                outcome.is_ok(),
                "fuzz target {target} panics on {} (replay: cargo fuzz run {target} {})",
                file.display(),
                file.display()
            );
        }
    }
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (target, _) in TARGETS {
        let src = dir.join("fuzz_targets").join(format!("{target}.rs"));
        let text =
            std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        assert!(
            text.contains(&format!("narun_fuzz_targets::{target}(")),
            "{} must call narun_fuzz_targets::{target}",
            src.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no [[bin]] {target}"
        );
    }
}

/// The seeds reach the deep paths of their targets (not only the early error returns),
/// so a refactor that makes them bounce off a parser is noticed.
#[test]
fn seeds_reach_the_checked_paths() {
    let seed = |target: &str, name: &str| std::fs::read(corpus_dir(target).join(name)).unwrap();
    for name in ["go-indeterminate-post", "known-length-put-with-trailer"] {
        narun_wire::bhttp::decode_request(&seed("bhttp_request", name)).unwrap();
    }
    for name in ["go-indeterminate-chunks", "informational-then-200"] {
        narun_wire::bhttp::decode_response(&seed("bhttp_response", name)).unwrap();
    }
    for name in ["kv-json-narunctl", "kv-json-bom", "kv-yaml-go-reference"] {
        let spec = narun_spec::AppSpec::from_kv_bytes(&seed("spec", name)).unwrap();
        spec.validate().unwrap();
    }
    for (name, body) in [("toml-hello", "T"), ("yaml-hello", "Y"), ("json-full", "J")] {
        let data = seed("spec", name);
        assert_eq!(&data[..1], body.as_bytes());
        let text = std::str::from_utf8(&data[1..]).unwrap();
        let spec = match body {
            "T" => narun_spec::AppSpec::from_toml_str(text),
            "Y" => narun_spec::AppSpec::from_yaml_str(text),
            _ => narun_spec::AppSpec::from_json_str(text),
        };
        spec.unwrap().validate().unwrap();
    }
    let key = narun_wire::secrets::MasterKey::from_base64(narun_fuzz_targets::SEED_KEY).unwrap();
    for name in [
        "kat-db-password",
        "with-description",
        "empty-plaintext",
        "go-no-times",
    ] {
        let stored =
            narun_wire::secrets::StoredSecret::from_json(name, &seed("secret", name)).unwrap();
        key.open(&stored).unwrap();
    }
    let m = narund::instance::notify::Message::parse(&seed("sd_notify", "all-keys"));
    assert!(m.ready && m.watchdog_ping && m.main_pid == Some(42));
}

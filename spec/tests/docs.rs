//! The examples in docs/spec.md parse, validate and agree with spec/examples.

use std::path::PathBuf;

use narun_spec::{AppSpec, Format};

fn doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/spec.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Fenced code blocks of `docs/spec.md` with the given info string.
fn blocks(lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in doc().lines() {
        match &mut current {
            None if line == format!("```{lang}") => current = Some(String::new()),
            Some(_) if line == "```" => out.push(current.take().unwrap()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

fn example(name: &str) -> AppSpec {
    AppSpec::from_path(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .unwrap()
}

#[test]
fn doc_examples_are_valid_and_match_the_example_files() {
    let toml = blocks("toml");
    let yaml = blocks("yaml");
    let json = blocks("json");
    assert_eq!((toml.len(), yaml.len(), json.len()), (2, 2, 1));

    // The command unit of "Command units: `commandUnit`".
    let command = AppSpec::from_str_as(&toml[0], Format::Toml).unwrap();
    command.validate().unwrap();
    assert_eq!(command, example("command.toml"));

    let doc_toml = AppSpec::from_str_as(&toml[1], Format::Toml).unwrap();
    doc_toml.validate().unwrap();
    assert_eq!(doc_toml, example("hello.toml"));

    let doc_yaml = AppSpec::from_str_as(&yaml[0], Format::Yaml).unwrap();
    doc_yaml.validate().unwrap();
    assert_eq!(doc_yaml, example("hello.yaml"));

    let smallest = AppSpec::from_str_as(&yaml[1], Format::Yaml).unwrap();
    smallest.validate().unwrap();

    // The JSON shown is what to_kv_json stores for the TOML example.
    let stored = AppSpec::from_kv_bytes(json[0].as_bytes()).unwrap();
    assert_eq!(stored, doc_toml);
    let shown: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
    let actual: serde_json::Value = serde_json::from_slice(&doc_toml.to_kv_json()).unwrap();
    assert_eq!(shown, actual);
}

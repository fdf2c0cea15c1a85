//! `regex-lite` under the name `regex`.
//!
//! The workspace patches crates.io's `regex` with this crate (`[patch.crates-io]` in the
//! workspace `Cargo.toml`). The only dependent in any binary is async-nats (prost-build, a
//! build dependency of the grpc-hello example, is the other), which compiles a handful of
//! fixed patterns once (`LazyLock<Regex>`) and uses `Regex::new`, `is_match` and
//! `captures`, all of which `regex-lite` has with the same signatures. `regex-lite`
//! matches ASCII classes only (`\w`, `\d`, `\s`); every pattern async-nats uses is about
//! ASCII text (bucket, key and object names, the server version, the JWT / nkey seed
//! lines of a `.creds` file), and the tests below run each of them against the inputs
//! they exist for.
//!
//! Why: the full `regex` (its meta engine in regex-automata, regex-syntax with the
//! Unicode tables, aho-corasick) cost narund ~0.4 MB of flash for these seven patterns.

pub use regex_lite::*;

#[cfg(test)]
mod tests {
    use super::Regex;

    // The patterns as async-nats 0.50 writes them (src/jetstream/kv/mod.rs,
    // object_store/mod.rs, client.rs, auth_utils.rs, service/mod.rs).
    const BUCKET: &str = r"\A[a-zA-Z0-9_-]+\z";
    const KEY: &str = r"\A[-/_=\.a-zA-Z0-9]+\z";
    const VERSION: &str = r"\Av?([0-9]+)\.?([0-9]+)?\.?([0-9]+)?";
    const USER_CONFIG: &str =
        r"\s*(?:(?:[-]{3,}.*[-]{3,}\r?\n)([\w\-.=]+)(?:\r?\n[-]{3,}.*[-]{3,}\r?\n))";
    const SEMVER: &str = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$";
    const SERVICE_NAME: &str = r"^[A-Za-z0-9\-_]+$";

    #[test]
    fn bucket_and_key_names() {
        let bucket = Regex::new(BUCKET).unwrap();
        assert!(bucket.is_match("app-configs"));
        assert!(bucket.is_match("node_runner_states"));
        assert!(!bucket.is_match("app.configs"));
        assert!(!bucket.is_match(""));
        assert!(!bucket.is_match("bad\nname"));
        assert!(!bucket.is_match("é"));
        let key = Regex::new(KEY).unwrap();
        assert!(key.is_match("hello.node-1"));
        assert!(key.is_match("a/b=c_d.e"));
        assert!(!key.is_match("a b"));
        assert!(!key.is_match("a*"));
        assert!(!key.is_match("key\n"));
        assert!(!key.is_match(""));
    }

    #[test]
    fn server_version() {
        let re = Regex::new(VERSION).unwrap();
        let c = re.captures("v2.10.14-RC.1").unwrap();
        assert_eq!(c.get(1).unwrap().as_str(), "2");
        assert_eq!(c.get(2).unwrap().as_str(), "10");
        assert_eq!(c.get(3).unwrap().as_str(), "14");
        let c = re.captures("2.11").unwrap();
        assert_eq!(&c[1], "2");
        assert_eq!(&c[2], "11");
        assert!(c.get(3).is_none());
    }

    #[test]
    fn creds_file() {
        let re = Regex::new(USER_CONFIG).unwrap();
        let creds = "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJ9.sig_-=\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\n\n-----BEGIN USER NKEY SEED-----\nSUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4\n------END USER NKEY SEED------\n";
        let found: Vec<&str> = re
            .captures_iter(creds)
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        assert_eq!(
            found,
            [
                "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJ9.sig_-=",
                "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4"
            ]
        );
    }

    /// prost-build (a build dependency of examples/grpc-hello) resolves to this shim too;
    /// its two patterns clean up doc comments of generated code.
    #[test]
    fn prost_build_doc_comment_patterns() {
        let url = Regex::new(r"https?://[^\s)]+").unwrap();
        assert_eq!(
            url.find("see (https://example.com/a_b) now")
                .unwrap()
                .as_str(),
            "https://example.com/a_b"
        );
        let link = Regex::new(r"(^|[^\]\\])\[(([^\]]*[^\\])?)\]([^(\[]|$)").unwrap();
        let c = link.captures("a [Foo] b").unwrap();
        assert_eq!(&c[2], "Foo");
        assert!(link.captures("a [Foo](x) b").is_none());
    }

    #[test]
    fn service_version_and_name() {
        let semver = Regex::new(SEMVER).unwrap();
        assert!(semver.is_match("1.0.0"));
        assert!(semver.is_match("0.1.0-alpha.1+build.5"));
        assert!(!semver.is_match("01.0.0"));
        assert!(!semver.is_match("1.0"));
        let name = Regex::new(SERVICE_NAME).unwrap();
        assert!(name.is_match("narun-hello_1"));
        assert!(!name.is_match("hello.world"));
        assert!(!name.is_match(""));
    }
}

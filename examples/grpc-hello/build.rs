//! Generates the `hello.v1` server and client with tonic-prost-build.
//! Needs `protoc` (Debian: `protobuf-compiler`; `scripts/setup.sh` installs it),
//! or `PROTOC=/path/to/protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/hello.proto");
    tonic_prost_build::configure()
        // No `connect()` helper: the example needs no TCP transport (clients bring a channel).
        .build_transport(false)
        .compile_protos(&["proto/hello.proto"], &["proto"])?;
    Ok(())
}

//! The committed `src/generated/hello.v1.rs` is what tonic-prost-build makes of
//! `proto/hello.proto` today (the same settings the build script used to apply). It is
//! committed so that no build needs `protoc` (`cross build` runs in images without one);
//! this test needs it (`protoc` on the PATH or `PROTOC`; scripts/setup.sh installs
//! Debian's `protobuf-compiler`). After changing the proto or upgrading tonic/prost:
//! `UPDATE_GENERATED=1 cargo test -p grpc-hello --test generated`.

use std::path::Path;

#[test]
fn committed_code_is_what_the_proto_generates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_protos(&[root.join("proto/hello.proto")], &[root.join("proto")])
        .unwrap_or_else(|e| {
            panic!("generating from proto/hello.proto (is protoc installed? set PROTOC): {e}")
        });
    let fresh = std::fs::read_to_string(out.path().join("hello.v1.rs")).unwrap();
    let committed_path = root.join("src/generated/hello.v1.rs");
    if std::env::var_os("UPDATE_GENERATED").is_some() {
        std::fs::write(&committed_path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap();
    assert!(
        committed == fresh,
        "{} is stale: it differs from what proto/hello.proto generates; run \
         `UPDATE_GENERATED=1 cargo test -p grpc-hello --test generated` and commit the result",
        committed_path.display()
    );
}

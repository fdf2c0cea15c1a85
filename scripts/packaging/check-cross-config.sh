#!/usr/bin/env bash
# Static checks of the cross-compilation settings (fast; the real cross build is
# scripts/packaging/cross-check.sh):
#   * Cross.toml parses, uses only keys of the cross 0.2.5 schema, pins every image to
#     a release tag or digest, and covers both device targets;
#   * cross.toml is a symlink to (or an identical copy of) Cross.toml;
#   * `cross build` of the default members needs nothing the cross-rs images lack: no
#     default member has a build script that runs protoc (prost-build, tonic-build, ...;
#     the gRPC example commits its generated code), unless Cross.toml installs
#     protobuf-compiler in a pre-build step for every target;
#   * .cargo/config.toml contains only [target.<triple>] tables (nothing that changes
#     native builds: no [build], target-dir, [profile], ...) with a linker and a qemu
#     runner for both device targets.
# Exit status: 0 = all passed, 1 = a check failed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

python3 - <<'PY'
import os, re, sys, tomllib

TARGETS = ["aarch64-unknown-linux-gnu", "armv7-unknown-linux-gnueabihf"]
failures = 0

def ok(msg): print(f"[check-cross-config] ok: {msg}")
def fail(msg):
    global failures
    failures += 1
    print(f"[check-cross-config] FAIL: {msg}", file=sys.stderr)

try:
    cross = tomllib.load(open("Cross.toml", "rb"))
    ok("Cross.toml parses")
except (OSError, tomllib.TOMLDecodeError) as e:
    fail(f"Cross.toml: {e}")
    cross = {}

extra = set(cross) - {"build", "target"}
if extra:
    fail(f"Cross.toml: unknown top-level keys {sorted(extra)}")
build_keys = {"xargo", "build-std", "default-target", "pre-build", "dockerfile", "env"}
if set(cross.get("build", {})) - build_keys:
    fail(f"Cross.toml [build]: unknown keys {sorted(set(cross['build']) - build_keys)}")
target_keys = {"xargo", "build-std", "image", "dockerfile", "pre-build", "runner", "env"}
for t in TARGETS:
    tbl = cross.get("target", {}).get(t)
    if tbl is None:
        fail(f"Cross.toml has no [target.{t}]")
        continue
    if set(tbl) - target_keys:
        fail(f"Cross.toml [target.{t}]: keys {sorted(set(tbl) - target_keys)} are not in the cross 0.2.5 schema")
    image = tbl.get("image", "")
    if not isinstance(image, str) or not re.fullmatch(r"[a-z0-9./_-]+(:\d+\.\d+\.\d+|@sha256:[0-9a-f]{64})", image):
        fail(f"Cross.toml [target.{t}] image {image!r} is not pinned to a release tag or digest")
    else:
        ok(f"Cross.toml {t}: image {image}")

if os.path.islink("cross.toml"):
    if os.readlink("cross.toml") == "Cross.toml":
        ok("cross.toml is a symlink to Cross.toml")
    else:
        fail(f"cross.toml points to {os.readlink('cross.toml')}, not Cross.toml")
elif os.path.exists("cross.toml"):
    if open("cross.toml", "rb").read() == open("Cross.toml", "rb").read():
        ok("cross.toml is identical to Cross.toml")
    else:
        fail("cross.toml differs from Cross.toml (cross only reads Cross.toml)")
else:
    fail("cross.toml is missing")

# Build scripts that need protoc: the cross-rs images have none.
PROTOC_BUILD_DEPS = {"prost-build", "tonic-build", "tonic-prost-build", "protobuf-codegen", "protoc-bin-vendored"}
try:
    ws = tomllib.load(open("Cargo.toml", "rb"))["workspace"]
    members = ws.get("default-members", ws.get("members", []))
except (OSError, tomllib.TOMLDecodeError, KeyError) as e:
    fail(f"Cargo.toml [workspace]: {e}")
    members = []
needs_protoc = []
for m in members:
    try:
        pkg = tomllib.load(open(os.path.join(m, "Cargo.toml"), "rb"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(f"{m}/Cargo.toml: {e}")
        continue
    deps = set(pkg.get("build-dependencies", {})) & PROTOC_BUILD_DEPS
    if deps:
        needs_protoc.append(f"{m} ({', '.join(sorted(deps))})")
if needs_protoc:
    missing = [t for t in TARGETS
               if "protobuf-compiler" not in " ".join(cross.get("target", {}).get(t, {}).get("pre-build", []) or [])]
    if missing:
        fail(f"default members {needs_protoc} run protoc in their build scripts, which the cross-rs "
             f"images lack, and Cross.toml installs protobuf-compiler (pre-build) not for {missing}: "
             "commit the generated code (as examples/grpc-hello does) or add the pre-build step")
    else:
        ok(f"protoc for {needs_protoc}: installed by Cross.toml pre-build steps")
else:
    ok(f"no default member runs protoc at build time ({len(members)} default members): cross's images suffice")

try:
    cfg = tomllib.load(open(".cargo/config.toml", "rb"))
except (OSError, tomllib.TOMLDecodeError) as e:
    fail(f".cargo/config.toml: {e}")
    cfg = {}
if set(cfg) - {"target"}:
    fail(f".cargo/config.toml: top-level {sorted(set(cfg) - {'target'})} would affect native builds; only [target.<foreign triple>] belongs here")
for t, tbl in cfg.get("target", {}).items():
    if t not in TARGETS:
        fail(f".cargo/config.toml: [target.{t}] is not a device target")
for t in TARGETS:
    tbl = cfg.get("target", {}).get(t, {})
    if not tbl.get("linker"):
        fail(f".cargo/config.toml: no linker for {t}")
    if "qemu-" not in str(tbl.get("runner", "")):
        fail(f".cargo/config.toml: no qemu runner for {t}")
    if tbl.get("linker") and "qemu-" in str(tbl.get("runner", "")):
        ok(f".cargo/config.toml {t}: linker {tbl['linker']}, runner {tbl['runner']}")

if failures:
    print(f"[check-cross-config] {failures} check(s) FAILED", file=sys.stderr)
    sys.exit(1)
print("[check-cross-config] all checks passed")
PY

#!/usr/bin/env bash
# bump-pin.sh [COMMIT]: make meta-narun and the Buildroot package build COMMIT (default
# HEAD), in one command:
#   - SRCREV (meta-narun/recipes-narun/narun/narun_0.1.0.bb) and NARUN_VERSION
#     (buildroot-external/package/narun/narun.mk) = COMMIT;
#   - narun-crates.inc regenerated from COMMIT's Cargo.lock (the format of
#     `bitbake -c update_crates narun`);
#   - narun-crate-licenses.inc regenerated from `cargo metadata` of COMMIT;
#   - narun.hash: sha256 of COMMIT's LICENSE and of the source archive Buildroot makes
#     for COMMIT (br-source-hash.sh: needs crates.io once per commit).
# Then commit the result. A commit cannot pin itself: the pin names COMMIT, and the commit
# you make now carries the pin. Pin a commit whose tree is what the layers should build
# (usually the commit before the bump, i.e. HEAD when you run this).
# CI's scripts/packaging/check-pins.sh verifies the result (and builds COMMIT offline).
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 scripts/packaging/pins.py bump "${1:-HEAD}"
git status --short -- meta-narun buildroot-external
echo "now: git commit -am 'packaging: pin $(git rev-parse --short "${1:-HEAD}") in meta-narun and Buildroot (bump-pin.sh)'"

#!/usr/bin/env bash
# br-source-hash.sh COMMIT: print "<sha256>  narun-COMMIT-git4-cargo4.tar.gz", the hash
# Buildroot 2025.08 .. 2026.02.x (LTS) checks for the narun source archive of COMMIT
# (buildroot-external/package/narun/narun.hash).
#
# Buildroot makes that archive at download time and hashes it after vendoring the crates:
#   support/download/git: checkout of COMMIT, archived with mk_tar_gz (the date is the
#     commit date, files only, sorted, owner 0, POSIX format, gzip -n), `.git` left out;
#   support/download/cargo-post-process: unpacked, `cargo vendor --manifest-path
#     Cargo.toml --locked VENDOR > .cargo/config.toml` with the host cargo (Rust 1.88 in
#     those releases), archived again with mk_tar_gz (same date).
# This script does the same steps with the same commands (mk_tar_gz below is Buildroot's
# support/download/helpers function, rewritten here), so the hash matches as long as
# `cargo +1.88 vendor` writes what Buildroot's host-rust 1.88 writes (the same cargo).
# The result is cached per commit in $NARUN_PIN_CACHE/br-hash/ (default ~/.cache/narun-pin).
# cargo runs with its own CARGO_HOME ($NARUN_PIN_CACHE/br-cargo-home, as Buildroot's
# BR_CARGO_HOME): it downloads the crates from crates.io once, and never waits for the
# package cache lock of other cargo processes on the machine.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
commit=$(git -C "$REPO" rev-parse --verify "${1:?usage: $0 COMMIT}^{commit}")
CACHE=${NARUN_PIN_CACHE:-$HOME/.cache/narun-pin}
TOOLCHAIN=${NARUN_BR_CARGO_TOOLCHAIN:-1.88}
name="narun-$commit-git4-cargo4.tar.gz"
mkdir -p "$CACHE/br-hash"
cached="$CACHE/br-hash/$commit-$TOOLCHAIN"
if [ -s "$cached" ]; then
    printf '%s  %s\n' "$(cat "$cached")" "$name"
    exit 0
fi

# Buildroot's mk_tar_gz IN_DIR BASE_DIR DATE OUT [EXCLUDED_GLOB...]
mk_tar_gz() {
    local in_dir="$1" base_dir="$2" date="$3" out="$4" glob tmp pax_options
    shift 4
    local -a find_opts=()
    for glob; do find_opts+=(-or -path "./${glob#./}"); done
    date="$(date -d "$date" -u +%Y-%m-%dT%H:%M:%S+00:00)"
    pax_options="delete=atime,delete=ctime,delete=mtime"
    pax_options+=",exthdr.name=%d/PaxHeaders/%f,exthdr.mtime={$date}"
    tmp="$(mktemp --tmpdir="$(pwd)")"
    pushd "$in_dir" >/dev/null
    find . -not -type d -and -not \( -false "${find_opts[@]}" \) >"$tmp.list"
    LC_ALL=C sort <"$tmp.list" >"$tmp.sorted"
    tar cf - --transform="s#^\./#$base_dir/#S" \
        --numeric-owner --owner=0 --group=0 --mtime="$date" \
        --format=posix --pax-option="$pax_options" --mode='go=u,go-w' \
        -T "$tmp.sorted" >"$tmp.tar"
    gzip -6 -n <"$tmp.tar" >"$out"
    rm -f "$tmp" "$tmp".{list,sorted,tar}
    popd >/dev/null
}

work=$(mktemp -d "$CACHE/br-src.XXXXXX")
trap 'rm -rf "$work"' EXIT
base="narun-$commit"
umask 022
mkdir "$work/$base"
# A checkout of COMMIT (the repository has no export-ignore/export-subst attributes, so
# git archive gives the checkout's files).
git -C "$REPO" archive --format=tar "$commit" | tar -x -C "$work/$base"
date=$(git -C "$REPO" log -1 --pretty=format:%ci "$commit")
(
    cd "$work/$base"
    mkdir -p .cargo
    CARGO_HOME="$CACHE/br-cargo-home" cargo "+$TOOLCHAIN" vendor --manifest-path Cargo.toml --locked VENDOR >.cargo/config.toml 2>"$work/vendor.log" ||
        { cat "$work/vendor.log" >&2; exit 1; }
)
(cd "$work" && mk_tar_gz "$work/$base" "$base" "$date" "$work/$name")
sum=$(sha256sum "$work/$name" | awk '{print $1}')
printf '%s\n' "$sum" >"$cached"
printf '%s  %s\n' "$sum" "$name"

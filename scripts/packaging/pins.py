#!/usr/bin/env python3
"""The commit the Yocto recipe and the Buildroot package build ("the pin"), checked and bumped.

Both layers build a fixed commit of this repository: SRCREV in
meta-narun/recipes-narun/narun/narun_0.1.0.bb and NARUN_VERSION in
buildroot-external/package/narun/narun.mk. Yocto builds it offline from the crates listed
in narun-crates.inc (fetched and checked by bitbake), so that list must equal the pinned
commit's Cargo.lock, not today's. A commit cannot name itself, so the pin always names an
earlier commit; bump-pin.sh moves it (and everything derived from it) in one command.

    pins.py check [--no-build]   # what scripts/packaging/check-pins.sh runs in CI
    pins.py bump [COMMIT]        # what scripts/packaging/bump-pin.sh runs (default HEAD)

`check` verifies, for the pinned commit P:
  1. SRCREV == NARUN_VERSION, and P is an ancestor of HEAD (a commit of this history);
  2. narun-crates.inc lists exactly the crates.io packages of `git show P:Cargo.lock`
     (name, version, sha256; nothing extra, nothing missing), in the format OE-core's
     cargo-update-recipe-crates class writes (gen-crates-inc.py --root for a tree);
  3. the crates build: `git archive P` into a directory, a vendor directory made from the
     .crate files that narun-crates.inc lists (each verified against its sha256, unpacked,
     with the .cargo-checksum.json bitbake's crate fetcher writes), source replacement in
     $CARGO_HOME/config.toml as OE's cargo_common class writes it, and
     `cargo build --locked --offline -p narund -p narunctl --features narund/gateway`
     (debug profile; a cached target dir keeps the second run warm);
  4. narun-crate-licenses.inc equals what `cargo metadata` of P says about the crates
     compiled into narund and narunctl;
  5. narun.hash has the LICENSE line of P, and the archive line for NARUN_VERSION
     (the archive itself is rebuilt and compared by br-source-hash.sh, see check-pins.sh).

`bump` sets SRCREV and NARUN_VERSION to COMMIT, regenerates narun-crates.inc and
narun-crate-licenses.inc from COMMIT's Cargo.lock / `cargo metadata`, and rewrites
narun.hash (LICENSE sha256 of COMMIT, archive sha256 from br-source-hash.sh).

Crates come from ~/.cargo/registry/cache when there, else from static.crates.io (the
download is verified against the sha256 in narun-crates.inc either way). Cache directory:
$NARUN_PIN_CACHE (default ~/.cache/narun-pin): downloads/, vendor/, src/, target/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    sys.exit("pins.py: needs Python >= 3.11 (tomllib)")

REPO = Path(__file__).resolve().parents[2]
RECIPE_DIR = REPO / "meta-narun" / "recipes-narun" / "narun"
RECIPE = RECIPE_DIR / "narun_0.1.0.bb"
CRATES_INC = RECIPE_DIR / "narun-crates.inc"
LICENSES_INC = RECIPE_DIR / "narun-crate-licenses.inc"
BR_PKG = REPO / "buildroot-external" / "package" / "narun"
BR_MK = BR_PKG / "narun.mk"
BR_HASH = BR_PKG / "narun.hash"
CACHE = Path(os.environ.get("NARUN_PIN_CACHE", Path.home() / ".cache" / "narun-pin"))
CRATES_IO_DL = "https://static.crates.io/crates/{name}/{name}-{version}.crate"
# The packages the layers build, and the feature set that covers both configurations
# (Yocto PACKAGECONFIG[gateway], Buildroot BR2_PACKAGE_NARUN_GATEWAY).
BUILD_ARGS = ["-p", "narund", "-p", "narunctl", "--features", "narund/gateway"]
# The device architecture used to pick platform-specific dependencies for the licences.
LICENSE_PLATFORM = "aarch64-unknown-linux-gnu"
# Buildroot archive name format of the supported LTS (2025.08 .. 2026.02.x: -git4, -cargo4).
BR_ARCHIVE_SUFFIX = "-git4-cargo4.tar.gz"

# Licence names that exist in OE-core's meta/files/common-licenses (checked against the
# wrynose branch). A crate with another licence makes `bump` fail: check that OE knows
# the name (or map it in SPDX_TO_OE) before adding it here.
OE_LICENSES = {
    "0BSD", "Apache-2.0", "Apache-2.0-with-LLVM-exception", "BSD-2-Clause", "BSD-3-Clause",
    "BSL-1.0", "CDLA-Permissive-2.0", "ISC", "MIT", "MIT-0", "MPL-2.0", "Unicode-3.0",
    "Unicode-DFS-2016", "Unlicense", "Zlib",
}
# SPDX "X WITH Y" -> the OE licence name.
SPDX_WITH_TO_OE = {("Apache-2.0", "LLVM-exception"): "Apache-2.0-with-LLVM-exception"}


class PinError(Exception):
    """A problem with the pin that the user must fix; the message says what and how."""


def log(msg: str) -> None:
    print(f"[pins] {msg}", flush=True)


def git(*args: str, binary: bool = False):
    out = subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True)
    return out.stdout if binary else out.stdout.decode()


# --- the pin in the two layers ------------------------------------------------------------

SRCREV_RE = re.compile(r'^SRCREV = "([0-9a-f]*)"$', re.M)
BR_VERSION_RE = re.compile(r"^NARUN_VERSION = (\S*)$", re.M)


def read_pins() -> tuple[str, str]:
    m1 = SRCREV_RE.search(RECIPE.read_text())
    m2 = BR_VERSION_RE.search(BR_MK.read_text())
    if not m1:
        raise PinError(f'{RECIPE.relative_to(REPO)}: no line SRCREV = "<40 hex digits>"')
    if not m2:
        raise PinError(f"{BR_MK.relative_to(REPO)}: no line NARUN_VERSION = <commit>")
    return m1.group(1), m2.group(1)


def resolve_commit(rev: str) -> str:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    except subprocess.CalledProcessError:
        raise PinError(
            f"{rev} is not a commit of this repository (a shallow clone? fetch the history: "
            "git fetch --unshallow)"
        ) from None


# --- crates: Cargo.lock and narun-crates.inc ----------------------------------------------


def lock_crates(lock_text: str, where: str) -> dict[tuple[str, str], str]:
    """crates.io packages of a Cargo.lock: (name, version) -> sha256."""
    try:
        lock = tomllib.loads(lock_text)
    except tomllib.TOMLDecodeError as e:
        raise PinError(f"{where}: not valid TOML: {e}") from None
    crates = {}
    for p in lock.get("package", []):
        if "crates.io" not in p.get("source", ""):
            continue
        if "checksum" not in p:
            raise PinError(f"{where}: {p['name']} {p['version']} from crates.io has no checksum")
        crates[(p["name"], p["version"])] = p["checksum"]
    return crates


URI_RE = re.compile(r"^\s*crate://crates\.io/([^/\s]+)/([^\s;\\]+)(;\S*)?\s*\\?$")
SUM_RE = re.compile(r'^SRC_URI\[([^\]]+)\.sha256sum\] = "([0-9a-f]{64})"$')


def inc_crates(path: Path) -> dict[tuple[str, str], str]:
    """crate:// entries of narun-crates.inc with their sha256: (name, version) -> sha256."""
    uris: list[tuple[str, str]] = []
    sums: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if m := URI_RE.match(line):
            uris.append((m.group(1), m.group(2)))
        elif m := SUM_RE.match(line):
            if m.group(1) in sums:
                raise PinError(f"{path.relative_to(REPO)}:{n}: second checksum for {m.group(1)}")
            sums[m.group(1)] = m.group(2)
        elif "crate://" in line or "sha256sum" in line:
            raise PinError(f"{path.relative_to(REPO)}:{n}: malformed line: {line.strip()}")
    crates = {}
    for name, version in uris:
        key = f"{name}-{version}"
        if key not in sums:
            raise PinError(f"{path.relative_to(REPO)}: crate {key} has no SRC_URI[{key}.sha256sum]")
        if (name, version) in crates:
            raise PinError(f"{path.relative_to(REPO)}: crate {key} is listed twice")
        crates[(name, version)] = sums.pop(key)
    if sums:
        raise PinError(f"{path.relative_to(REPO)}: checksums without a crate:// entry: {', '.join(sorted(sums))}")
    return crates


def compare_crates(lock: dict, inc: dict) -> list[str]:
    problems = []
    for key in sorted(lock.keys() - inc.keys()):
        problems.append(f"missing from narun-crates.inc: {key[0]} {key[1]}")
    for key in sorted(inc.keys() - lock.keys()):
        problems.append(f"in narun-crates.inc but not in the pinned Cargo.lock: {key[0]} {key[1]}")
    for key in sorted(lock.keys() & inc.keys()):
        if lock[key] != inc[key]:
            problems.append(f"checksum of {key[0]} {key[1]}: Cargo.lock {lock[key]}, narun-crates.inc {inc[key]}")
    return problems


def gen_crates_inc(commit: str) -> str:
    """narun-crates.inc for `commit`, byte for byte what cargo-update-recipe-crates writes."""
    sys.path.insert(0, str(Path(__file__).parent))
    import importlib

    gen = importlib.import_module("gen-crates-inc")
    with tempfile.TemporaryDirectory() as tmp:
        export_tree(commit, Path(tmp))
        return gen.generate(Path(tmp))


# --- source tree and vendored crates ------------------------------------------------------


def export_tree(commit: str, dest: Path) -> None:
    """`git archive commit` unpacked into dest (file mtimes = the commit time)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def crate_file(name: str, version: str, checksum: str) -> Path:
    """A .crate file with the expected sha256: from cargo's cache, our cache, or downloaded."""
    fname = f"{name}-{version}.crate"
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    candidates = sorted((cargo_home / "registry" / "cache").glob(f"*/{fname}"))
    candidates.append(CACHE / "downloads" / fname)
    for c in candidates:
        if c.is_file() and sha256_file(c) == checksum:
            return c
    dest = CACHE / "downloads" / fname
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = CRATES_IO_DL.format(name=name, version=version)
    for attempt in range(3):
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                data = r.read()
            break
        except OSError as e:
            if attempt == 2:
                raise PinError(f"cannot download {url}: {e}") from None
            time.sleep(2)
    got = hashlib.sha256(data).hexdigest()
    if got != checksum:
        raise PinError(f"{url}: sha256 {got}, but narun-crates.inc says {checksum}")
    tmp = dest.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def vendor(crates: dict[tuple[str, str], str], vendor_dir: Path) -> None:
    """The directory source bitbake's crate fetcher makes: <name>-<version>/ per crate with
    a .cargo-checksum.json naming the package checksum (and no per-file checksums)."""
    vendor_dir.mkdir(parents=True, exist_ok=True)
    wanted = {f"{n}-{v}" for n, v in crates}
    for stale in vendor_dir.iterdir():
        if stale.name not in wanted:
            shutil.rmtree(stale)
    fetched = 0
    for (name, version), checksum in sorted(crates.items()):
        d = vendor_dir / f"{name}-{version}"
        marker = d / ".cargo-checksum.json"
        crate = crate_file(name, version, checksum)  # verified against the sha256 every run
        try:
            if json.loads(marker.read_text()).get("package") == checksum:
                continue
        except (OSError, ValueError):
            pass
        if d.exists():
            shutil.rmtree(d)
        tmp = Path(tempfile.mkdtemp(dir=vendor_dir, prefix=".unpack-"))
        with tarfile.open(crate) as tf:
            try:
                tf.extractall(tmp, filter="data")
            except TypeError:  # Python < 3.11.4 without extraction filters
                names = tf.getnames()
                if any(n.startswith("/") or ".." in Path(n).parts for n in names):
                    raise PinError(f"{crate}: unsafe path in the archive") from None
                tf.extractall(tmp)
        top = tmp / f"{name}-{version}"
        if not (top / "Cargo.toml").is_file():
            raise PinError(f"{crate}: no {name}-{version}/Cargo.toml inside")
        top.rename(d)
        shutil.rmtree(tmp)
        marker.write_text(json.dumps({"files": {}, "package": checksum}))
        fetched += 1
    log(f"vendor dir {vendor_dir}: {len(crates)} crates ({fetched} unpacked this run)")


def cargo_home(vendor_dir: Path) -> Path:
    """A CARGO_HOME whose config.toml replaces crates.io with the vendor dir, as OE's
    cargo_common_do_configure writes it (crates.io is never contacted)."""
    home = CACHE / "cargo-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        "# Written by scripts/packaging/pins.py, as OE-core's cargo_common class does.\n"
        "[source.bitbake]\n"
        f'directory = "{vendor_dir}"\n\n'
        "[source.crates-io]\n"
        'replace-with = "bitbake"\n'
        'local-registry = "/nonexistent"\n\n'
        "[net]\noffline = true\n"
    )
    return home


def prepare(commit: str, crates: dict) -> tuple[Path, dict[str, str]]:
    """Source tree of `commit` and the environment for an offline cargo run on it."""
    src = CACHE / "src"
    export_tree(commit, src)
    vendor_dir = CACHE / "vendor"
    vendor(crates, vendor_dir)
    env = dict(os.environ)
    env["CARGO_HOME"] = str(cargo_home(vendor_dir))
    env.pop("RUSTC_WRAPPER", None)
    # rustup's proxies find the toolchains through RUSTUP_HOME, which defaults to
    # ~/.rustup, not to $CARGO_HOME; keep the user's PATH for them.
    return src, env


def build(src: Path, env: dict[str, str]) -> None:
    target = os.environ.get("NARUN_PIN_TARGET_DIR", str(Path.home() / ".cache" / "narun-pin-target"))
    env = dict(env, CARGO_TARGET_DIR=target, CARGO_INCREMENTAL="0", CARGO_PROFILE_DEV_DEBUG="0", CARGO_TERM_COLOR="never")
    cmd = ["cargo", "build", "--locked", "--offline", *BUILD_ARGS]
    log(f"in {src} (target dir {target}): {' '.join(cmd)}")
    t0 = time.monotonic()
    rc = subprocess.run(cmd, cwd=src, env=env).returncode
    log(f"cargo build took {time.monotonic() - t0:.0f} s")
    if rc != 0:
        raise PinError(f"cargo build --locked --offline of the pinned commit failed (exit {rc})")


# --- crate licences -----------------------------------------------------------------------

TOKEN_RE = re.compile(r"\s*(\(|\)|/|[A-Za-z0-9.+-]+)")


def spdx_to_oe(expr: str, where: str) -> str:
    """An SPDX expression (cargo's `license`, also the legacy "A/B") in OE syntax."""
    tokens = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = TOKEN_RE.match(expr, pos)
        if not m:
            raise PinError(f"{where}: cannot parse licence expression {expr!r}")
        tokens.append(m.group(1))
        pos = m.end()
    out: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in ("OR", "/"):
            out.append("|")
        elif t == "AND":
            out.append("&")
        elif t in ("(", ")"):
            out.append(t)
        elif i + 2 < len(tokens) and tokens[i + 1] == "WITH":
            name = SPDX_WITH_TO_OE.get((t, tokens[i + 2]))
            if not name:
                raise PinError(f"{where}: no OE licence name for {t} WITH {tokens[i + 2]} (add it to SPDX_WITH_TO_OE in {Path(__file__).name})")
            out.append(name)
            i += 2
        else:
            name = t[:-1] if t.endswith("+") else t
            if name not in OE_LICENSES:
                raise PinError(
                    f"{where}: licence {t!r} is not in the list of names OE-core knows (OE_LICENSES in "
                    f"{Path(__file__).name}); check meta/files/common-licenses of OE-core and add it"
                )
            out.append(name)
        i += 1
    # Pure alternatives ("MIT OR Apache-2.0" and "Apache-2.0 OR MIT") in one spelling.
    if "&" not in out and "(" not in out:
        names = sorted(set(x for x in out if x != "|"))
        return " | ".join(names)
    s = " ".join(out).replace("( ", "(").replace(" )", ")")
    return s


def crate_licenses(src: Path, env: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(name, version, SPDX licence, OE licence) of every crates.io package compiled into
    narund (feature gateway) or narunctl for the device: normal dependencies, transitively
    (proc macros included: their expansions are in the binaries)."""
    cmd = ["cargo", "metadata", "--format-version", "1", "--locked", "--offline",
           "--filter-platform", LICENSE_PLATFORM, "--features", "narund/gateway"]
    out = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise PinError(f"cargo metadata failed: {out.stderr.strip()[-2000:]}")
    meta = json.loads(out.stdout)
    pkgs = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    roots = [p["id"] for p in meta["packages"] if p["name"] in ("narund", "narunctl") and p["source"] is None]
    if len(roots) != 2:
        raise PinError("cargo metadata: narund or narunctl not found in the workspace")
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k["kind"] is None for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    rows = []
    for pid in seen:
        p = pkgs[pid]
        if not (p["source"] or "").startswith(("registry+", "sparse+")):
            continue
        lic = p.get("license")
        where = f"crate {p['name']} {p['version']}"
        if not lic:
            raise PinError(f"{where} has no `license` in its Cargo.toml (license-file: {p.get('license_file')}); "
                           "declare it by hand in the recipe")
        rows.append((p["name"], p["version"], lic, spdx_to_oe(lic, where)))
    return sorted(rows)


def gen_licenses_inc(commit: str, rows: list[tuple[str, str, str, str]]) -> str:
    exprs: list[str] = []
    for *_, oe in rows:
        if oe not in exprs:
            exprs.append(oe)
    exprs.sort(key=lambda e: (e.count("|") + e.count("&"), e))
    width = max(len(f"{n} {v}") for n, v, _, _ in rows)
    lines = [
        "# Autogenerated by scripts/packaging/bump-pin.sh from `cargo metadata` of SRCREV",
        f"# {commit}: the crates.io packages compiled into narund (with the gateway",
        "# feature) and narunctl for the device, their licences (cargo's `license` field,",
        "# SPDX) and, in NARUN_CRATES_LICENSE, the conjunction of those licences in OE syntax",
        "# (AND -> &, OR and / -> |, one spelling per set of alternatives), as OE-core's",
        "# rpm-sequoia recipe declares the crates it links. The recipe's LICENSE is narun's own",
        "# Apache-2.0 & ${NARUN_CRATES_LICENSE}. Do not edit: CI (check-pins.sh) compares this",
        "# file with the one generated from the pinned commit.",
        "#",
    ]
    for name, version, spdx, _ in rows:
        lines.append(f"# {f'{name} {version}':<{width}}  {spdx}")
    lines.append("")
    body = (" & \\\n" + " " * len('NARUN_CRATES_LICENSE = "')).join(f"({e})" if ("|" in e or "&" in e) else e for e in exprs)
    lines.append(f'NARUN_CRATES_LICENSE = "{body}"')
    return "\n".join(lines) + "\n"


# --- Buildroot hash file ------------------------------------------------------------------


def br_archive_name(version: str) -> str:
    return f"narun-{version}{BR_ARCHIVE_SUFFIX}"


def license_sha256(commit: str) -> str:
    try:
        data = git("show", f"{commit}:LICENSE", binary=True)
    except subprocess.CalledProcessError:
        raise PinError(f"commit {commit[:12]} has no LICENSE file at the repository root; pin a later commit") from None
    return hashlib.sha256(data).hexdigest()


def read_hash_file() -> dict[str, str]:
    hashes = {}
    for line in BR_HASH.read_text().splitlines():
        f = line.split()
        if len(f) == 3 and f[0] == "sha256":
            hashes[f[2]] = f[1]
    return hashes


def write_hash_file(version: str, archive_sha: str, lic_sha: str) -> None:
    BR_HASH.write_text(
        "# Generated by scripts/packaging/bump-pin.sh; check-pins.sh verifies both lines.\n"
        "# The archive is the one Buildroot 2025.08 .. 2026.02.x (LTS) makes for NARUN_VERSION:\n"
        "# git checkout + `cargo vendor` (host Rust 1.88), archive format -git4-cargo4; other\n"
        "# Buildroot releases name and hash it differently (see buildroot-external/README.md).\n"
        f"sha256  {archive_sha}  {br_archive_name(version)}\n"
        f"sha256  {lic_sha}  LICENSE\n"
    )


def br_source_hash(commit: str) -> str:
    out = subprocess.run(["bash", str(Path(__file__).parent / "br-source-hash.sh"), commit],
                         stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise PinError(f"br-source-hash.sh {commit[:12]} failed (exit {out.returncode})")
    return out.stdout.split()[0]


# --- commands -----------------------------------------------------------------------------


def cmd_check(args) -> int:
    failures = 0

    def fail(msg: str) -> None:
        nonlocal failures
        failures += 1
        print(f"[pins] FAIL: {msg}", file=sys.stderr, flush=True)

    srcrev, br_version = read_pins()
    log(f"Yocto SRCREV {srcrev}, Buildroot NARUN_VERSION {br_version}")
    if srcrev != br_version:
        fail("SRCREV (meta-narun) and NARUN_VERSION (Buildroot) differ: run scripts/packaging/bump-pin.sh")
    if not re.fullmatch(r"[0-9a-f]{40}", srcrev):
        raise PinError(f"SRCREV {srcrev!r} is not a full commit id (40 hex digits)")
    commit = resolve_commit(srcrev)
    if subprocess.run(["git", "-C", str(REPO), "merge-base", "--is-ancestor", commit, "HEAD"]).returncode != 0:
        fail(f"the pinned commit {commit[:12]} is not an ancestor of HEAD")
    else:
        log(f"pinned commit {commit[:12]} ({git('log', '-1', '--format=%cs %s', commit).strip()}) is an ancestor of HEAD")

    lock = lock_crates(git("show", f"{commit}:Cargo.lock"), f"{commit[:12]}:Cargo.lock")
    inc = inc_crates(CRATES_INC)
    problems = compare_crates(lock, inc)
    if problems:
        for p in problems[:40]:
            print(f"    {p}", file=sys.stderr)
        fail(f"narun-crates.inc ({len(inc)} crates) does not match Cargo.lock of {commit[:12]} ({len(lock)} crates): "
             f"{len(problems)} difference(s); run scripts/packaging/bump-pin.sh")
    else:
        log(f"narun-crates.inc = Cargo.lock of {commit[:12]}: {len(lock)} crates, names, versions and checksums")
    want_inc = gen_crates_inc(commit)
    if CRATES_INC.read_text() != want_inc:
        fail("narun-crates.inc is not in the format cargo-update-recipe-crates writes for the pinned commit "
             "(run scripts/packaging/bump-pin.sh)")

    hashes = read_hash_file()
    try:
        lic = license_sha256(commit)
        if hashes.get("LICENSE") != lic:
            fail(f"narun.hash: LICENSE sha256 is {hashes.get('LICENSE')}, the pinned commit's LICENSE has {lic}")
        else:
            log("narun.hash: LICENSE sha256 matches the pinned commit")
    except PinError as e:
        fail(str(e))
    name = br_archive_name(br_version)
    if name not in hashes:
        fail(f"narun.hash has no line for {name}")
    if "BR_NO_CHECK_HASH_FOR" in BR_MK.read_text():
        fail("narun.mk must not use BR_NO_CHECK_HASH_FOR")

    if args.no_build:
        log("--no-build: vendored build and licence check skipped")
    else:
        # Vendor what narun-crates.inc lists (what bitbake would fetch), not the lock.
        src, env = prepare(commit, inc)
        try:
            build(src, env)
            log("the pinned commit builds offline from the vendored crates of narun-crates.inc")
        except PinError as e:
            fail(str(e))
        if not problems:
            want = gen_licenses_inc(commit, crate_licenses(src, env))
            if LICENSES_INC.read_text() != want:
                fail("narun-crate-licenses.inc differs from `cargo metadata` of the pinned commit "
                     "(run scripts/packaging/bump-pin.sh)")
            else:
                log("narun-crate-licenses.inc matches cargo metadata of the pinned commit")
    if failures:
        print(f"[pins] {failures} check(s) FAILED", file=sys.stderr)
        return 1
    log("all pin checks passed")
    return 0


def cmd_bump(args) -> int:
    commit = resolve_commit(args.commit)
    if subprocess.run(["git", "-C", str(REPO), "merge-base", "--is-ancestor", commit, "HEAD"]).returncode != 0:
        raise PinError(f"{args.commit} ({commit[:12]}) is not an ancestor of HEAD")
    log(f"pinning {commit} ({git('log', '-1', '--format=%cs %s', commit).strip()})")
    lic = license_sha256(commit)
    lock = lock_crates(git("show", f"{commit}:Cargo.lock"), f"{commit[:12]}:Cargo.lock")

    # 1. crates list (the class's format) and the vendored crates it names
    CRATES_INC.write_text(gen_crates_inc(commit))
    log(f"wrote {CRATES_INC.relative_to(REPO)} ({len(lock)} crates)")
    # 2. licences of the compiled crates
    src, env = prepare(commit, lock)
    rows = crate_licenses(src, env)
    LICENSES_INC.write_text(gen_licenses_inc(commit, rows))
    log(f"wrote {LICENSES_INC.relative_to(REPO)} ({len(rows)} crates compiled into the binaries)")
    # 3. the pins
    RECIPE.write_text(SRCREV_RE.sub(f'SRCREV = "{commit}"', RECIPE.read_text(), count=1))
    BR_MK.write_text(BR_VERSION_RE.sub(f"NARUN_VERSION = {commit}", BR_MK.read_text(), count=1))
    log(f"SRCREV and NARUN_VERSION = {commit}")
    # 4. Buildroot hashes
    archive_sha = args.archive_sha256 or br_source_hash(commit)
    write_hash_file(commit, archive_sha, lic)
    log(f"wrote {BR_HASH.relative_to(REPO)}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="check the pin (CI)")
    c.add_argument("--no-build", action="store_true", help="skip the vendored cargo build and the licence check")
    b = sub.add_parser("bump", help="pin COMMIT and regenerate everything derived from it")
    b.add_argument("commit", nargs="?", default="HEAD")
    b.add_argument("--archive-sha256", help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:
        return cmd_check(args) if args.cmd == "check" else cmd_bump(args)
    except PinError as e:
        print(f"[pins] FAIL: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

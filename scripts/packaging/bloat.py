#!/usr/bin/env python3
"""Which crates take the space in a binary: symbol sizes from `nm`, grouped by crate.

Usage: bloat.py [--nm aarch64-linux-gnu-nm] [--top 25] BINARY

BINARY must keep its symbol table (build with CARGO_PROFILE_RELEASE_STRIP=false; the
workspace release profile strips). Each symbol is attributed to the crate named by the
first path segment of its demangled name: `<tokio::x::Y as core::future::Future>::poll`
counts for tokio (the implementing type), generic instantiations count for the crate
that defines the function, which is how cargo-bloat attributes them too. With LTO many
small functions are inlined into their callers, so this is an estimate of where code
lives, not an exact bill. `drop_in_place<X>` counts for X's crate, `<T as Trait>::f`
whose type was generic (`&T`) for the trait's crate, ring's C/assembly symbols and
tables for ring; other symbols without a Rust path are listed as `[C/other]`.
"""

import argparse
import collections
import re
import subprocess
import sys

SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# C and assembly symbols of ring (its prefixed symbols and its unprefixed tables).
RING_C = re.compile(
    r"^(ring_core_|GFp_|ecp_nistz|p256_|p384_|fe_|ge_|x25519_|ChaCha20_|aes_|gcm_|"
    r"sha256_block|sha512_block|bn_|LIMBS_|CRYPTO_|OPENSSL_|poly1305|table_select|"
    r"k25519|chacha20_poly1305)"
)


def crate_of(name: str) -> str:
    if RING_C.match(name):
        return "ring"
    # `core::ptr::drop_in_place<tokio::...>`: the type being dropped owns the code.
    if name.startswith("core::ptr::drop_in_place<"):
        return crate_of(name[len("core::ptr::drop_in_place<"):])
    s = name
    # Strip leading punctuation of qualified paths: `<`, `&`, `mut `, `dyn `, `*const `.
    while True:
        t = s.lstrip("<&*( ")
        for kw in ("mut ", "dyn ", "const ", "impl "):
            if t.startswith(kw):
                t = t[len(kw):]
        if t == s:
            break
        s = t
    m = SEGMENT.match(s)
    if m and s[m.end():].startswith(" as "):
        # `<T as Trait>::f` after inlining lost the type (`&T`, `f64`, `[T]`): the trait's crate.
        return crate_of(s[m.end() + 4:])
    if not m or not s[m.end():].startswith("::"):
        return "[C/other]"
    return m.group(0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nm", default="nm")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("binary")
    a = ap.parse_args()
    out = subprocess.run(
        [a.nm, "--print-size", "--size-sort", "--demangle=rust", a.binary],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    sizes = collections.Counter()
    total = 0
    for line in out.splitlines():
        parts = line.split(" ", 3)
        if len(parts) != 4:
            continue
        _addr, size, _kind, name = parts
        n = int(size, 16)
        total += n
        # Strip the legacy-mangling hash suffix `::h0123456789abcdef`.
        name = re.sub(r"::h[0-9a-f]{16}$", "", name)
        sizes[crate_of(name)] += n
    if total == 0:
        print(f"{a.binary}: no symbols (stripped?)", file=sys.stderr)
        return 1
    print(f"{'crate':<28} {'KiB':>8} {'share':>6}")
    for crate, n in sizes.most_common(a.top):
        print(f"{crate:<28} {n / 1024:>8.0f} {100 * n / total:>5.1f}%")
    rest = sum(n for _, n in sizes.most_common()[a.top:])
    print(f"{'(others)':<28} {rest / 1024:>8.0f} {100 * rest / total:>5.1f}%")
    print(f"{'symbols total':<28} {total / 1024:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

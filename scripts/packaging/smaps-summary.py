#!/usr/bin/env python3
"""Resident memory of one process by mapping, from a saved /proc/<pid>/smaps.

    python3 scripts/packaging/smaps-summary.py <smaps file>... [--top N]

Groups the mappings by what they are: the binary (split by permissions: text r-xp,
read-only data r--p, relocated data rw-p), each shared library, [heap], [stack], thread
stacks (anonymous mappings of 8 MiB with a guard page before them), io_uring rings
(anon_inode:[io_uring]) and other anonymous memory; prints Rss, Pss and Private_Dirty in
KiB. With several files (the rounds of rss_bench --smaps), prints the median per group.
"""
import re
import statistics
import sys
from collections import defaultdict

HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ (\d+)\s*(.*)$")


def groups(path):
    out = defaultdict(lambda: [0, 0, 0])
    key = None
    prev_guard_end = None
    for line in open(path):
        m = HEADER.match(line)
        if m:
            start, end, perms, inode, name = m.groups()
            size = int(end, 16) - int(start, 16)
            name = name.strip()
            if name.startswith("/"):
                base = name.rsplit("/", 1)[-1]
                kind = {"r-xp": "text", "r--p": "rodata", "rw-p": "data"}.get(perms, perms)
                key = f"{base} {kind}"
            elif name in ("[heap]", "[stack]", "[vdso]", "[vvar]", "[vsyscall]"):
                key = name
            elif "io_uring" in name:
                key = "io_uring rings"
            elif name:
                key = name
            elif perms == "---p":
                key = "guard pages"
            elif int(start, 16) == prev_guard_end and size >= 1 << 20:
                key = "thread stacks"
            else:
                key = "anon (malloc arenas, mmaps)"
            prev_guard_end = int(end, 16) if perms == "---p" else None
            continue
        for i, field in enumerate(("Rss:", "Pss:", "Private_Dirty:")):
            if line.startswith(field) and key is not None:
                out[key][i] += int(line.split()[1])
    return out


def main():
    args = sys.argv[1:]
    top = 25
    if "--top" in args:
        i = args.index("--top")
        top = int(args[i + 1])
        del args[i : i + 2]
    per_file = [groups(p) for p in args]
    keys = set().union(*per_file)
    rows = []
    for k in keys:
        vals = [f.get(k, [0, 0, 0]) for f in per_file]
        rows.append((k, *(int(statistics.median(v[i] for v in vals)) for i in range(3))))
    rows.sort(key=lambda r: -r[1])
    print(f"{'mapping':<40} {'Rss':>8} {'Pss':>8} {'Priv_Dirty':>10}")
    for r in rows[:top]:
        print(f"{r[0]:<40} {r[1]:>8} {r[2]:>8} {r[3]:>10}")
    tot = [sum(r[i] for r in rows) for i in (1, 2, 3)]
    print(f"{'total (of the medians)':<40} {tot[0]:>8} {tot[1]:>8} {tot[2]:>10}")


if __name__ == "__main__":
    main()

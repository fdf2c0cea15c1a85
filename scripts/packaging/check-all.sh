#!/usr/bin/env bash
# Runs the packaging checks: systemd unit files, the layers' pin (check-pins.sh: builds
# the pinned commit offline from the vendored crates; minutes on a fresh machine, seconds
# once its caches in ~/.cache are warm), Yocto layer, Buildroot external tree (after
# check-pins.sh: it uses the narund that check-pins.sh built), cross settings, and the
# Debian packages when cargo-deb is installed (check-deb.sh: ~15 s over existing debug
# builds of narund and narunctl, which it builds if missing; skipped, saying so, without
# cargo-deb). The slow cross build is separate: scripts/packaging/cross-check.sh.
# Exit status: 0 = all passed, 1 = at least one failed. Prints "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")" || exit 1

passed=0
failed=0
for check in check-systemd.sh check-pins.sh check-yocto.sh check-buildroot.sh check-cross-config.sh check-deb.sh; do
    printf '=== %s\n' "$check"
    t0=$(date +%s)
    if bash "./$check"; then
        passed=$((passed + 1))
        printf '=== %s: PASSED (%s s)\n' "$check" "$(($(date +%s) - t0))"
    else
        failed=$((failed + 1))
        printf '=== %s: FAILED (%s s)\n' "$check" "$(($(date +%s) - t0))"
    fi
done
# The scripts themselves (shellcheck was installed by check-buildroot.sh if missing).
printf '=== shellcheck scripts/packaging/*.sh scripts/demo.sh\n'
if command -v shellcheck >/dev/null && shellcheck -S warning ./*.sh ../demo.sh; then
    passed=$((passed + 1))
    printf '=== shellcheck: PASSED\n'
else
    failed=$((failed + 1))
    printf '=== shellcheck: FAILED (missing or findings above)\n'
fi
echo "packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

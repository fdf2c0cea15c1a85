#!/usr/bin/env bash
# Runs a `systemd-analyze` that knows every directive of systemd/narund.service
# (systemd >= 254: Type=notify-reload 253, RestartSteps=/RestartMaxDelaySec=/
# DelegateSubgroup= 254), with the arguments given.
#
# The host's systemd-analyze is used when it is new enough. Debian 12 ships 252: then the
# systemd 254 build of bookworm-backports is unpacked (not installed: the host's systemd
# stays as it is) into ${XDG_CACHE_HOME:-$HOME/.cache}/narun-systemd-analyze-254 and run
# from there with its own libsystemd-shared. The download happens once (scripts/setup.sh
# runs `systemd-analyze.sh --version` for that); apt-get uses a private sources list and
# state directory, so the machine's apt configuration is not touched.
#
# Exit status: systemd-analyze's; 3 if no systemd-analyze >= 254 can be had (offline and
# not cached), with the reason on stderr.
set -uo pipefail

MIN=254
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/narun-systemd-analyze-$MIN
ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)

version_of() { "$@" --version 2>/dev/null | sed -n -E '1s/^systemd ([0-9]+).*/\1/p'; }

if command -v systemd-analyze >/dev/null && [ "$(version_of systemd-analyze)" -ge "$MIN" ] 2>/dev/null; then
    exec systemd-analyze "$@"
fi

run_cached() {
    LD_LIBRARY_PATH="$CACHE/usr/lib/$MULTIARCH/systemd" "$CACHE/usr/bin/systemd-analyze" "$@"
}

if [ "$(version_of run_cached)" != "$MIN" ]; then
    . /etc/os-release 2>/dev/null
    if [ "${VERSION_CODENAME:-}" != bookworm ]; then
        echo "systemd-analyze.sh: the host's systemd-analyze is older than $MIN and only Debian 12 (bookworm) hosts can fetch a newer one (this is ${PRETTY_NAME:-unknown})" >&2
        exit 3
    fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
    echo "deb http://deb.debian.org/debian bookworm-backports main" >"$work/sources.list"
    apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "APT::Sandbox::User=root"
        -o "APT::Architecture=$ARCH")
    echo "systemd-analyze.sh: fetching systemd $MIN from bookworm-backports into $CACHE (once)" >&2
    if ! (apt-get "${apt_opts[@]}" update -qq &&
        cd "$work" && apt-get "${apt_opts[@]}" download -qq systemd/bookworm-backports libsystemd-shared/bookworm-backports) >&2; then
        echo "systemd-analyze.sh: cannot download systemd $MIN from bookworm-backports" >&2
        exit 3
    fi
    rm -rf "$CACHE.tmp" && mkdir -p "$CACHE.tmp"
    for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$CACHE.tmp" || exit 3; done
    rm -rf "$CACHE" && mv "$CACHE.tmp" "$CACHE"
    if [ "$(version_of run_cached)" != "$MIN" ]; then
        echo "systemd-analyze.sh: the unpacked systemd-analyze does not run (missing libraries?)" >&2
        exit 3
    fi
fi
run_cached "$@"

SUMMARY = "narun node daemon (narund) and operator CLI (narunctl)"
DESCRIPTION = "narund runs and supervises apps on embedded Linux devices from \
               specs kept in NATS, and can embed an HTTP/gRPC gateway to NATS \
               services. narunctl is the command line client."
HOMEPAGE = "https://github.com/narun-rs/narun"
BUGTRACKER = "https://github.com/narun-rs/narun/issues"
SECTION = "console/network"
CVE_PRODUCT = "narun"
# narun itself is Apache-2.0 (LICENSE at the repository root); narund and narunctl also
# contain the crates they link, whose licences narun-crate-licenses.inc declares
# (generated from `cargo metadata` of SRCREV by scripts/packaging/bump-pin.sh).
LICENSE = "Apache-2.0 & ${NARUN_CRATES_LICENSE}"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

# A development snapshot: the package version becomes 0.1.0+git<AUTOINC>+<commit>
# (OE appends the SRCPV part itself since 4.3; no ${SRCPV} here).
PV = "0.1.0+git"

# SRCREV ("the pin") is a commit of the narun repository whose Cargo.lock equals
# narun-crates.inc; it is also NARUN_VERSION of the Buildroot package. Move it with
# scripts/packaging/bump-pin.sh [COMMIT] (updates both layers, the crate lists, licences
# and hashes in one go); CI (scripts/packaging/check-pins.sh) builds the pinned commit
# offline from the listed crates. To build a local checkout instead, use externalsrc
# (see README.md and kas/qemuarm64.yml).
# destsuffix=${BP} and no S= : the source lands in the default S on scarthgap
# (${WORKDIR}/${BP}) and on whinlatter/wrynose (${UNPACKDIR}/${BP}).
SRC_URI = "git://github.com/narun-rs/narun.git;protocol=https;branch=main;destsuffix=${BP}"
SRCREV = "9e2f3eeaf6786a4e077120aefa63fbf7e420a73d"

inherit cargo cargo-update-recipe-crates systemd useradd

# crate:// SRC_URI entries and checksums for every crate in Cargo.lock.
# Generated for SRCREV by scripts/packaging/bump-pin.sh (the format of `bitbake -c update_crates`).
require ${BPN}-crates.inc
# NARUN_CRATES_LICENSE: the licences of the crates compiled into the binaries.
require ${BPN}-crate-licenses.inc

# The workspace's release profile strips the binaries (strip = true, no debug info), which
# OE's package QA rejects (already-stripped) and which leaves nothing for ${PN}-dbg. Let OE
# strip them and split the debug symbols into ${PN}-dbg instead: no stripping by cargo,
# line tables for symbolized backtraces (set "full" in a bbappend for a debugger).
export CARGO_PROFILE_RELEASE_STRIP = "none"
export CARGO_PROFILE_RELEASE_DEBUG = "line-tables-only"
export CARGO_PROFILE_FIRMWARE_STRIP = "none"
export CARGO_PROFILE_FIRMWARE_DEBUG = "line-tables-only"
export CARGO_PROFILE_FIRMWARE_GATEWAY_STRIP = "none"
export CARGO_PROFILE_FIRMWARE_GATEWAY_DEBUG = "line-tables-only"
# The package overrides of the binaries' own crates set strip = true again (an override
# resets it; Cargo.toml says why): undo that too.
NARUN_NO_STRIP = "--config profile.release.package.narunctl.strip=false \
                  --config profile.firmware.package.narund.strip=false \
                  --config profile.firmware-gateway.package.narund.strip=false"

# Without the gateway narund is built with the workspace's `firmware` profile (the release
# profile with panic = "abort" and narund, the runtime and the NATS client at opt-level "z":
# aarch64 narund under 4 MB, docs/benchmarks.md); with the gateway, `firmware-gateway`:
# release with unwinding (a panic while serving one request ends that connection, not
# narund) and narund's own crates at "z" (-458 KB; the gateway costs 4-11 % more CPU per
# request than with --release, docs/benchmarks.md "Binary size, firmware-gateway profile").
BUILD_MODE = "${@bb.utils.contains_any('PACKAGECONFIG', 'gateway acme', '--profile firmware-gateway', '--profile firmware', d)}"
BUILD_DIR = "${@bb.utils.contains_any('PACKAGECONFIG', 'gateway acme', 'firmware-gateway', 'firmware', d)}"

# gateway: embed the HTTP/gRPC gateway in narund (cargo feature narund/gateway).
# scheduled-runs: `runMode = "job"` apps (cron schedules, `narunctl run`).
# command-units: `mode = "command"` apps (a binary run per request).
# dashboard: the web dashboard on the gateway's listener (needs gateway).
# acme: certificates for the gateway's HTTPS from an ACME CA (implies gateway; ~420 KB).
# narund is built with --no-default-features, so what is not listed here is left out; a
# spec that needs it is reported invalid, naming the feature. Without the last two,
# aarch64 narund is ~200 KB smaller (docs/benchmarks.md, "Binary size, firmware profile").
PACKAGECONFIG ??= "scheduled-runs command-units"
PACKAGECONFIG[gateway] = "--features narund/gateway,,"
PACKAGECONFIG[scheduled-runs] = "--features narund/scheduled-runs,,"
PACKAGECONFIG[command-units] = "--features narund/command-units,,"
PACKAGECONFIG[dashboard] = "--features narund/dashboard,,"
PACKAGECONFIG[acme] = "--features narund/acme,,"

# Default app user ([apps] default_user in narund.toml). systemd images also get it
# from sysusers.d; useradd creates it for every init system at rootfs time.
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --no-create-home --home-dir /nonexistent --shell /sbin/nologin --user-group narun-app"

SYSTEMD_PACKAGES = "${PN}"
SYSTEMD_SERVICE:${PN} = "narund.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

# Build only the two binaries: the workspace also has examples and benchmarks, and
# cargo_do_install would install every executable it finds.
do_compile() {
    oe_cargo_build -p narund -p narunctl --no-default-features ${PACKAGECONFIG_CONFARGS} ${NARUN_NO_STRIP}
}

do_install() {
    install -d ${D}${bindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/narund ${D}${bindir}/narund
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/narunctl ${D}${bindir}/narunctl

    install -d ${D}${sysconfdir}/narun
    install -m 0644 ${S}/daemon/config/narund.toml ${D}${sysconfdir}/narun/narund.toml

    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/narund.service ${D}${systemd_system_unitdir}/narund.service
    install -d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/narun-tmpfiles.conf ${D}${nonarch_libdir}/tmpfiles.d/narun.conf
    install -d ${D}${nonarch_libdir}/sysusers.d
    install -m 0644 ${S}/systemd/narun-sysusers.conf ${D}${nonarch_libdir}/sysusers.d/narun.conf
}

PACKAGES =+ "${PN}-ctl"

FILES:${PN} += "${nonarch_libdir}/sysusers.d/narun.conf"
FILES:${PN} += "${nonarch_libdir}/tmpfiles.d/narun.conf"
FILES:${PN}-ctl += "${bindir}/narunctl"

CONFFILES:${PN} = "${sysconfdir}/narun/narund.toml"

RRECOMMENDS:${PN} += "${PN}-ctl"
RPROVIDES:${PN} += "narund"
RPROVIDES:${PN}-ctl += "narunctl"

# narun's workspace needs Rust >= 1.88. Skip the recipe with a clear reason on a
# release that ships an older one (stock scarthgap: 1.75) instead of failing in
# do_compile; meta-lts-mixins (branch scarthgap/rust) raises RUSTVERSION. The check is
# a string comparison at parse time, so the usual cost of anonymous python is nil.
# nooelint: oelint.task.noanonpython
python __anonymous() {
    rustver = (d.getVar("RUSTVERSION") or "").rstrip("%")
    if rustver and bb.utils.vercmp_string_op(rustver, "1.88", "<"):
        raise bb.parse.SkipRecipe("narun needs Rust >= 1.88, this build has %s; on scarthgap add "
                                  "the meta-lts-mixins layer, branch scarthgap/rust" % rustver)
}

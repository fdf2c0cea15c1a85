################################################################################
#
# narun
#
################################################################################

# The commit of the narun repository this package builds: the same as SRCREV in
# meta-narun. Move both, with the crate list and narun.hash, with
# scripts/packaging/bump-pin.sh [COMMIT]; CI (check-pins.sh) checks that they agree.
NARUN_VERSION = 9e2f3eeaf6786a4e077120aefa63fbf7e420a73d
NARUN_SITE = https://github.com/narun-rs/narun.git
NARUN_SITE_METHOD = git
NARUN_LICENSE = Apache-2.0
NARUN_LICENSE_FILES = LICENSE

# The workspace root has a virtual manifest (no [package]), so NARUN_SUBDIR stays
# empty: vendoring (download post-process) then covers the whole Cargo.lock. The
# default cargo build step builds only the packages listed here; the install step
# is overridden because `cargo install --path ./` rejects a virtual manifest.
NARUN_CARGO_BUILD_OPTS = -p narund --no-default-features
ifeq ($(BR2_PACKAGE_NARUN_SCHEDULED_RUNS),y)
NARUN_CARGO_BUILD_OPTS += --features narund/scheduled-runs
endif
ifeq ($(BR2_PACKAGE_NARUN_COMMAND_UNITS),y)
NARUN_CARGO_BUILD_OPTS += --features narund/command-units
endif
ifeq ($(BR2_PACKAGE_NARUN_GATEWAY),y)
NARUN_CARGO_BUILD_OPTS += --features narund/gateway
ifeq ($(BR2_PACKAGE_NARUN_DASHBOARD),y)
NARUN_CARGO_BUILD_OPTS += --features narund/dashboard
endif
ifeq ($(BR2_PACKAGE_NARUN_ACME),y)
NARUN_CARGO_BUILD_OPTS += --features narund/acme
endif
endif
# The workspace's device profiles on top of release (Buildroot's cargo step always passes
# --release; check-buildroot.sh compares these lists with Cargo.toml). Without the gateway,
# `firmware`: panic = "abort" and these crates at opt-level "z" (aarch64 narund under 4 MB,
# docs/benchmarks.md). With the gateway, `firmware-gateway`: narund must unwind, and only
# narund's own crates go to "z" (the gateway costs 4-11 % more CPU per request than a plain
# --release build: docs/benchmarks.md, "Binary size, firmware-gateway profile").
ifeq ($(BR2_PACKAGE_NARUN_GATEWAY),y)
NARUN_Z_CRATES = narund tokio-uring io-uring tryhard
else
NARUN_Z_CRATES = narund narun-wire tokio tokio-util tokio-uring io-uring \
	async-nats tryhard futures-util futures-core futures-channel bytes http
NARUN_CARGO_BUILD_OPTS += --config 'profile.release.panic="abort"'
endif
NARUN_CARGO_BUILD_OPTS += \
	$(foreach c,$(NARUN_Z_CRATES),--config 'profile.release.package.$(c).opt-level="z"') \
	--config 'profile.release.package.narund.strip=true'
ifeq ($(BR2_PACKAGE_NARUN_NARUNCTL),y)
NARUN_CARGO_BUILD_OPTS += -p narunctl
endif

NARUN_BIN_DIR = $(@D)/target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)

ifeq ($(BR2_PACKAGE_NARUN_NARUNCTL),y)
define NARUN_INSTALL_NARUNCTL
	$(INSTALL) -D -m 0755 $(NARUN_BIN_DIR)/narunctl $(TARGET_DIR)/usr/bin/narunctl
endef
endif

define NARUN_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(NARUN_BIN_DIR)/narund $(TARGET_DIR)/usr/bin/narund
	$(NARUN_INSTALL_NARUNCTL)
	$(INSTALL) -D -m 0644 $(@D)/daemon/config/narund.toml \
		$(TARGET_DIR)/etc/narun/narund.toml
endef

define NARUN_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/systemd/narund.service \
		$(TARGET_DIR)/usr/lib/systemd/system/narund.service
	$(INSTALL) -D -m 0644 $(@D)/systemd/narun-tmpfiles.conf \
		$(TARGET_DIR)/usr/lib/tmpfiles.d/narun.conf
	$(INSTALL) -D -m 0644 $(@D)/systemd/narun-sysusers.conf \
		$(TARGET_DIR)/usr/lib/sysusers.d/narun.conf
endef

define NARUN_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(NARUN_PKGDIR)/S90narund \
		$(TARGET_DIR)/etc/init.d/S90narund
endef

# Default app user ([apps] default_user in narund.toml); no home, no login.
define NARUN_USERS
	narun-app -1 narun-app -1 * - - - narun default app user
endef

$(eval $(cargo-package))

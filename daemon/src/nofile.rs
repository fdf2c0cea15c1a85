//! Open files (`RLIMIT_NOFILE`): narund's own limit, and the one every app starts with.
//!
//! # narund: soft limit raised to the hard limit
//!
//! Everything narund supervises with is a file descriptor: the pipes of every app's stdout
//! and stderr, pidfds, sd_notify sockets, cgroup files, the NATS connection, and with the
//! gateway every client connection. At the conventional soft limit of 1024 a few hundred
//! idle HTTP connections used them up, and then a crashed app could not be started again
//! (`EMFILE`) and its cgroup leaked (issue 18). So at start-up, before the async runtime
//! starts its threads, narund raises its soft limit to the hard limit ([`raise_own`]). The
//! hard limit is the service manager's: `systemd/narund.service` sets
//! `LimitNOFILE=1024:524288` (systemd's own default for services, stated so an older
//! systemd or another `DefaultLimitNOFILE=` does not leave narund lower), and the Buildroot
//! init script `S90narund` sets the same limit with `ulimit -n`. When the raise
//! fails narund starts anyway, with a warning.
//!
//! # Apps: soft 1024, hard from the spec or the node
//!
//! Apps do not inherit narund's raised limit. Every app starts, like a systemd service,
//! with the soft limit **1024** ([`APP_SOFT`]; lower only when its hard limit is lower):
//! `select(2)` cannot watch an fd ≥ `FD_SETSIZE` (1024), so a program that uses it breaks
//! in odd ways when it may open more; a program that wants more raises its own soft limit up
//! to its hard one, as it would under systemd. The hard limit ([`for_app`]) is the spec's
//! `nofileMax`, or else the node's `[apps] nofile_max` (default [`DEFAULT_NOFILE_MAX`] =
//! 524288, systemd's default hard limit), never more than narund's own hard limit. A spec
//! asking for more than the node grants does not start: `failed`, reason `rlimit`, with a
//! message naming `apps.nofile_max` (or narund's hard limit), like a capability the node
//! does not allow. The child sets both limits between `fork` and `exec`
//! ([`crate::sys::rlimit::set_nofile_before_exec`]), so the app has them from its first
//! instruction and everything it starts inherits them.

/// The soft `RLIMIT_NOFILE` every app starts with (`FD_SETSIZE`, systemd's default soft
/// limit for services).
pub const APP_SOFT: u64 = 1024;

/// Default of `[apps] nofile_max`: systemd's default hard limit for services.
pub const DEFAULT_NOFILE_MAX: u64 = 524_288;

/// Raise narund's own soft `RLIMIT_NOFILE` to its hard limit and log it (old → new, at
/// info). Never fails: when the limit cannot be read or raised, narund warns and goes on
/// with what it has. Returns narund's limit afterwards `(soft, hard)`, if it could be read.
pub fn raise_own() -> Option<(u64, u64)> {
    let (soft, hard) = match crate::sys::rlimit::nofile() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open files limit (RLIMIT_NOFILE)");
            return None;
        }
    };
    if soft >= hard {
        tracing::info!(
            soft,
            hard,
            "open files limit (RLIMIT_NOFILE) already at its hard limit"
        );
        return Some((soft, hard));
    }
    match crate::sys::rlimit::set_nofile(hard, hard) {
        Ok(()) => {
            tracing::info!(
                from = soft,
                to = hard,
                "raised the soft open files limit (RLIMIT_NOFILE) to the hard limit; apps still start with soft {APP_SOFT}"
            );
            Some((hard, hard))
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                soft,
                hard,
                "cannot raise the soft open files limit (RLIMIT_NOFILE) to the hard limit; narund runs out of file descriptors sooner"
            );
            Some((soft, hard))
        }
    }
}

/// The `RLIMIT_NOFILE` an app gets: `(soft, hard)`. `spec` is its `nofileMax`, `node_max`
/// the node's `apps.nofile_max`, `narund_hard` narund's own hard limit (no app gets more:
/// its limit is only ever lowered). `Err`: the spec asks for more than the node grants, with
/// the message for the `rlimit` status event.
pub fn for_app(spec: Option<u64>, node_max: u64, narund_hard: u64) -> Result<(u64, u64), String> {
    let granted = node_max.min(narund_hard);
    let hard = match spec {
        None => granted,
        Some(asked) if asked <= granted => asked,
        Some(asked) if asked <= node_max => {
            return Err(format!(
                "the spec asks for nofileMax = {asked} open files, more than narund's own hard \
                 limit of {narund_hard} (RLIMIT_NOFILE; apps.nofile_max = {node_max}); lower \
                 nofileMax or raise narund's hard limit (LimitNOFILE= in narund.service, \
                 ulimit -H -n)"
            ));
        }
        Some(asked) => {
            return Err(format!(
                "the spec asks for nofileMax = {asked} open files, more than \
                 apps.nofile_max = {node_max} (narund.toml) allows; lower nofileMax or raise \
                 the setting"
            ));
        }
    };
    Ok((APP_SOFT.min(hard), hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_get_soft_1024_and_the_hard_limit_of_the_spec_or_the_node() {
        // Silent spec: the node's value, below narund's own.
        assert_eq!(for_app(None, 524_288, 1_048_576), Ok((1024, 524_288)));
        // ... and never above narund's own.
        assert_eq!(for_app(None, 524_288, 65_536), Ok((1024, 65_536)));
        // The spec's, within what the node grants.
        assert_eq!(for_app(Some(4096), 524_288, 65_536), Ok((1024, 4096)));
        assert_eq!(for_app(Some(65_536), 65_536, 65_536), Ok((1024, 65_536)));
        // Below 1024 the soft limit follows the hard one.
        assert_eq!(for_app(Some(256), 524_288, 65_536), Ok((256, 256)));
        assert_eq!(for_app(None, 100, 65_536), Ok((100, 100)));
        assert_eq!(for_app(None, 524_288, 512), Ok((512, 512)));
    }

    #[test]
    fn a_spec_above_what_the_node_grants_is_refused_naming_the_limit() {
        let e = for_app(Some(8192), 4096, 1_048_576).unwrap_err();
        assert!(
            e.contains("nofileMax = 8192")
                && e.contains("apps.nofile_max = 4096 (narund.toml)")
                && e.contains("raise the setting"),
            "{e}"
        );
        let e = for_app(Some(100_000), 524_288, 65_536).unwrap_err();
        assert!(
            e.contains("nofileMax = 100000")
                && e.contains("narund's own hard limit of 65536")
                && e.contains("LimitNOFILE="),
            "{e}"
        );
        assert!(for_app(Some(u64::MAX), u64::MAX - 1, u64::MAX).is_err());
    }

    #[test]
    fn raising_the_own_limit_reaches_the_hard_limit() {
        // The test process stands in for narund: after the raise, soft = hard.
        let (soft, hard) = raise_own().expect("RLIMIT_NOFILE readable");
        assert_eq!(soft, hard);
        assert_eq!(crate::sys::rlimit::nofile().unwrap(), (hard, hard));
    }
}

//! Scale to zero: the `scaleToZero` block, [`ScaleToZero`].
//!
//! ```toml
//! scaleToZero = { idleSec = 300 }
//! ```
//!
//! An app with this block is a service that may sleep: narund stops its instances once
//! the service has answered no request for `idleSec` seconds (it reads the service's
//! NATS Micro request counters, `$SRV.STATS.<app>`), reports them as `scaled_to_zero`
//! (not failed), and starts them again when a gateway asks it to (`narun.control.<node>.wake`,
//! sent when a request finds no responder). The block changes no run: editing `idleSec`
//! restarts nothing ([`crate::AppSpec::run_hash`] leaves it out).

use serde::{Deserialize, Serialize};

/// Smallest `scaleToZero.idleSec`.
pub const MIN_IDLE_SEC: u64 = 1;
/// Largest `scaleToZero.idleSec` (7 days).
pub const MAX_IDLE_SEC: u64 = 7 * 24 * 3600;

/// The `scaleToZero` block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ScaleToZero {
    /// Seconds without a request after which the app's instances are stopped
    /// ([`MIN_IDLE_SEC`]..=[`MAX_IDLE_SEC`]). Required.
    pub idle_sec: u64,
}

impl ScaleToZero {
    /// The idle time as a duration.
    pub fn idle(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.idle_sec)
    }

    /// Problems of the block, as (key under `scaleToZero`, message).
    pub(crate) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(MIN_IDLE_SEC..=MAX_IDLE_SEC).contains(&self.idle_sec) {
            out.push((
                "idleSec",
                format!(
                    "must be {MIN_IDLE_SEC}..={MAX_IDLE_SEC} seconds, got {} (seconds without a request before the instances stop)",
                    self.idle_sec
                ),
            ));
        }
        out
    }
}

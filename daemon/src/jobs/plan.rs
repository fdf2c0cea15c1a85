//! The decisions of a job, pure: when the next occurrence is (in the spec's zone), which
//! missed occurrence runs at boot, what an occurrence does while a run still runs, how
//! long a retry waits. No clock, no I/O: the runner passes the time in.

use super::tz::Zone;
use narun_spec::{Civil, Concurrency, Cron};
use std::time::Duration;

/// Wait before the retry that follows failed attempt `attempt` (1-based): 1 s, 2 s, 4 s …
/// capped at [`RETRY_MAX`].
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// The wait after failed attempt `attempt` (1-based).
pub fn retry_delay(attempt: u32) -> Duration {
    let shift = attempt.saturating_sub(1).min(20);
    (RETRY_BASE * (1u32 << shift)).min(RETRY_MAX)
}

/// What an occurrence does, given how many runs of the job are still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start a run.
    Start,
    /// Do not run (`forbid` while a run runs): reported as `skipped`.
    Skip,
    /// Stop the running runs (reported as `replaced`), then start.
    ReplaceThenStart,
}

/// `concurrency` against the runs still going.
pub fn decide(concurrency: Concurrency, running: usize) -> Decision {
    match (concurrency, running) {
        (_, 0) | (Concurrency::Allow, _) => Decision::Start,
        (Concurrency::Forbid, _) => Decision::Skip,
        (Concurrency::Replace, _) => Decision::ReplaceThenStart,
    }
}

/// The first occurrence strictly after the Unix time `after` (seconds), as a Unix time:
/// the cron is read in `zone`'s wall clock. A wall-clock time that does not exist (skipped
/// by a DST jump forward) does not run; one that happens twice (a jump back) runs once,
/// at its first instant. `None`: no occurrence within the cron's horizon.
pub fn next_occurrence(cron: &Cron, zone: &Zone, after: i64) -> Option<i64> {
    // Walk the wall clock: start at the local time of `after`, take the cron's next civil
    // match, map it back to instants; a match with no instant (a gap) or only instants
    // not after `after` (the repeated hour) moves the walk on. Bounded: a gap skips at
    // most its own length of matches.
    let mut local = after + i64::from(zone.offset_at(after));
    for _ in 0..10_000 {
        let c = cron.next_after(Civil::from_secs(local))?;
        let l = c.to_secs();
        if let Some(u) = zone.instants_of(l).into_iter().filter(|u| *u > after).min() {
            return Some(u);
        }
        local = l;
    }
    None
}

/// The occurrence missed while narund was down that runs now: the latest occurrence in
/// `(last, now]` that is at most `deadline` seconds old. `last` is the occurrence narund
/// handled last (`None`: never ran here, so nothing was missed); `deadline` the spec's
/// `startingDeadlineSec` (`None`: missed runs are skipped).
pub fn missed(
    cron: &Cron,
    zone: &Zone,
    last: Option<i64>,
    now: i64,
    deadline: Option<u64>,
) -> Option<i64> {
    let (last, deadline) = (last?, i64::try_from(deadline?).ok()?);
    let from = last.max(now.saturating_sub(deadline));
    if from >= now {
        return None;
    }
    // Find the latest occurrence ≤ now without walking every one of a long window (a
    // per-second schedule and a deadline of a day): widen a window back from `now`
    // until it holds one, then walk only that window.
    let mut width: i64 = 1;
    loop {
        let start = now.saturating_sub(width).max(from);
        let first = next_occurrence(cron, zone, start).filter(|t| *t <= now);
        if let Some(mut t) = first {
            while let Some(n) = next_occurrence(cron, zone, t).filter(|n| *n <= now) {
                t = n;
            }
            return Some(t);
        }
        if start == from {
            return None;
        }
        width = width.saturating_mul(2);
    }
}

/// The RFC 3339 UTC text of a Unix time (seconds).
pub fn rfc3339(secs: i64) -> String {
    format!("{}Z", Civil::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(s: &str) -> Cron {
        Cron::parse(s).unwrap()
    }

    fn t(s: &str) -> i64 {
        // "YYYY-MM-DDTHH:MM:SS" as UTC.
        let n = |a: usize, b: usize| s[a..b].parse::<u32>().unwrap();
        Civil {
            year: i64::from(n(0, 4)),
            month: n(5, 7),
            day: n(8, 10),
            hour: n(11, 13),
            minute: n(14, 16),
            second: n(17, 19),
        }
        .to_secs()
    }

    #[test]
    fn retries_back_off_and_cap() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(3), Duration::from_secs(4));
        assert_eq!(retry_delay(9), Duration::from_secs(256));
        assert_eq!(retry_delay(10), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
        assert_eq!(retry_delay(0), Duration::from_secs(1));
    }

    #[test]
    fn concurrency_decisions() {
        use Concurrency::*;
        for c in [Forbid, Replace, Allow] {
            assert_eq!(decide(c, 0), Decision::Start, "{c:?}");
        }
        assert_eq!(decide(Forbid, 1), Decision::Skip);
        assert_eq!(decide(Forbid, 3), Decision::Skip);
        assert_eq!(decide(Replace, 1), Decision::ReplaceThenStart);
        assert_eq!(decide(Allow, 1), Decision::Start);
        assert_eq!(decide(Allow, 7), Decision::Start);
    }

    #[test]
    fn next_in_utc() {
        let z = Zone::Utc;
        assert_eq!(
            next_occurrence(&cron("0 3 * * *"), &z, t("2026-12-04T03:00:00")),
            Some(t("2026-12-05T03:00:00"))
        );
        assert_eq!(
            next_occurrence(&cron("* * * * * *"), &z, t("2026-12-04T03:00:00")),
            Some(t("2026-12-04T03:00:01"))
        );
    }

    #[test]
    fn next_in_a_fixed_zone() {
        // UTC+2 all year: 03:00 local is 01:00 UTC.
        let z = Zone::fixed(7200);
        assert_eq!(
            next_occurrence(&cron("0 3 * * *"), &z, t("2026-12-04T00:00:00")),
            Some(t("2026-12-04T01:00:00"))
        );
        assert_eq!(
            next_occurrence(&cron("0 3 * * *"), &z, t("2026-12-04T01:00:00")),
            Some(t("2026-12-05T01:00:00"))
        );
    }

    #[test]
    fn dst_gaps_skip_and_repeats_run_once() {
        // Central Europe, 2026: clocks go 02:00 → 03:00 on March 29 (01:00 UTC) and
        // 03:00 → 02:00 on October 25 (01:00 UTC).
        let z = Zone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        // 02:30 does not exist on March 29: the next run is March 30, 02:30 CEST.
        assert_eq!(
            next_occurrence(&cron("30 2 * * *"), &z, t("2026-03-28T12:00:00")),
            Some(t("2026-03-30T00:30:00"))
        );
        // 02:30 happens twice on October 25: it runs at the first one (00:30 UTC) only.
        let first = next_occurrence(&cron("30 2 * * *"), &z, t("2026-10-24T12:00:00"));
        assert_eq!(first, Some(t("2026-10-25T00:30:00")));
        assert_eq!(
            next_occurrence(&cron("30 2 * * *"), &z, first.unwrap()),
            Some(t("2026-10-26T01:30:00"))
        );
        // Hourly across the jump forward: 01:00, (02:00 missing), 03:00 local.
        let h = cron("0 * * * *");
        let a = next_occurrence(&h, &z, t("2026-03-28T23:30:00")).unwrap();
        assert_eq!(a, t("2026-03-29T00:00:00")); // 01:00 CET
        let b = next_occurrence(&h, &z, a).unwrap();
        assert_eq!(b, t("2026-03-29T01:00:00")); // 03:00 CEST
    }

    #[test]
    fn missed_runs() {
        let z = Zone::Utc;
        let daily = cron("0 3 * * *");
        let now = t("2026-12-04T03:10:00");
        let last = Some(t("2026-12-03T03:00:00"));
        // Missed today's 03:00 (10 min ago): runs with a deadline of 15 min, not 5.
        assert_eq!(
            missed(&daily, &z, last, now, Some(900)),
            Some(t("2026-12-04T03:00:00"))
        );
        assert_eq!(missed(&daily, &z, last, now, Some(300)), None);
        // No deadline: never. Never ran here: nothing missed.
        assert_eq!(missed(&daily, &z, last, now, None), None);
        assert_eq!(missed(&daily, &z, None, now, Some(900)), None);
        // Already handled.
        assert_eq!(
            missed(&daily, &z, Some(t("2026-12-04T03:00:00")), now, Some(900)),
            None
        );
        // Several missed: only the latest runs, once.
        assert_eq!(
            missed(
                &daily,
                &z,
                Some(t("2026-11-01T03:00:00")),
                now,
                Some(86_400 * 60)
            ),
            Some(t("2026-12-04T03:00:00"))
        );
        // A per-second schedule with a long deadline is found without walking the window.
        assert_eq!(
            missed(&cron("* * * * * *"), &z, Some(0), now, Some(86_400 * 365)),
            Some(now)
        );
        assert_eq!(
            missed(&cron("*/7 * * * *"), &z, Some(0), now, Some(86_400)),
            Some(t("2026-12-04T03:07:00"))
        );
        // The clock went back (last in the future): nothing.
        assert_eq!(missed(&daily, &z, Some(now + 10), now, Some(900)), None);
    }

    #[test]
    fn rfc3339_text() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(t("2026-12-04T03:10:05")), "2026-12-04T03:10:05Z");
    }
}

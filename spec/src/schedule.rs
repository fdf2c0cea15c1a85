//! Scheduled runs: `runMode = "job"`, the cron expression of `schedule` ([`Cron`]), and
//! the choices of a job ([`RunMode`], [`Concurrency`], [`Scope`]).
//!
//! Everything here is pure: a [`Cron`] answers "which wall-clock second comes next"
//! over a [`Civil`] time (a calendar date and time of day, no zone). narund maps civil
//! times to instants with the spec's `timezone`; this crate never reads a clock or a
//! file.
//!
//! # Cron expressions
//!
//! Five fields (`minute hour day-of-month month day-of-week`, seconds = 0) or six
//! (`second minute hour day-of-month month day-of-week`), each a `,` list of `*`, `N`,
//! `N-M`, with an optional `/step`; `?` = `*`; months `JAN`-`DEC`, weekdays `SUN`-`SAT`
//! (0 and 7 are Sunday); macros `@yearly` (`@annually`), `@monthly`, `@weekly`,
//! `@daily` (`@midnight`), `@hourly`. As in Vixie cron, when both day fields are
//! restricted a day matches if **either** matches (`0 0 1 * MON`: the 1st and every
//! Monday). An expression that can never match (`0 0 30 FEB *`) is refused.

use std::fmt;

/// Longest accepted `schedule` text.
pub const MAX_SCHEDULE_LEN: usize = 256;
/// Largest `maxAttempts`.
pub const MAX_ATTEMPTS: u32 = 100;
/// Default `maxAttempts`: one run and two retries.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// How far [`Cron::next_after`] looks ahead (years) before it says "never".
const HORIZON_YEARS: i64 = 9;

/// `runMode`: a long-running service (the default) or a job that runs to completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Run continuously, restarted by `restart`.
    Service,
    /// Run to completion, on `schedule` and on `narunctl run`; retried up to `maxAttempts`.
    Job,
}

/// `concurrency`: what an occurrence does while the previous run still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Skip the new occurrence (the default).
    Forbid,
    /// Stop the running run, then start the new one.
    Replace,
    /// Start the new run next to the running one.
    Allow,
}

/// `scope`: who runs an occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every selected node runs it (the default).
    Node,
    /// Exactly one of the selected nodes runs it (a KV lock per occurrence).
    Fleet,
}

impl RunMode {
    /// Valid spellings.
    pub const NAMES: &'static [&'static str] = &["service", "job"];
    /// Parse (case-insensitive; empty = `service`).
    pub fn parse(s: &str) -> Option<RunMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "service" => Some(RunMode::Service),
            "job" => Some(RunMode::Job),
            _ => None,
        }
    }
}

impl Concurrency {
    /// Valid spellings.
    pub const NAMES: &'static [&'static str] = &["forbid", "replace", "allow"];
    /// Parse (case-insensitive; empty = `forbid`).
    pub fn parse(s: &str) -> Option<Concurrency> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "forbid" => Some(Concurrency::Forbid),
            "replace" => Some(Concurrency::Replace),
            "allow" => Some(Concurrency::Allow),
            _ => None,
        }
    }
}

impl Scope {
    /// Valid spellings.
    pub const NAMES: &'static [&'static str] = &["node", "fleet"];
    /// Parse (case-insensitive; empty = `node`).
    pub fn parse(s: &str) -> Option<Scope> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "node" => Some(Scope::Node),
            "fleet" => Some(Scope::Fleet),
            _ => None,
        }
    }
}

/// A calendar date and time of day, without a zone (proleptic Gregorian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Civil {
    pub year: i64,
    /// 1-12.
    pub month: u32,
    /// 1-31.
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// Days since 1970-01-01 of a date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days in `month` of `year`.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Civil {
    /// The civil time `secs` seconds after 1970-01-01 00:00:00 (a Unix time read as UTC,
    /// or a local time's seconds).
    pub fn from_secs(secs: i64) -> Civil {
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
        }
    }

    /// Seconds since 1970-01-01 00:00:00 of this civil time.
    pub fn to_secs(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour * 3600 + self.minute * 60 + self.second)
    }

    /// Day of the week, 0 = Sunday.
    pub fn weekday(&self) -> u32 {
        (days_from_civil(self.year, self.month, self.day) + 4).rem_euclid(7) as u32
    }
}

impl fmt::Display for Civil {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// A parsed cron expression (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u64,
    /// Bits 1-31.
    days: u64,
    /// Bits 1-12.
    months: u64,
    /// Bits 0-6, Sunday = 0.
    weekdays: u64,
    days_star: bool,
    weekdays_star: bool,
}

/// Why a cron expression was refused (the message names the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(pub String);

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One field: its name, range and names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// First name's value.
    names_from: u32,
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    names_from: 0,
};
const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    names_from: 0,
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    names_from: 0,
};
const DAY: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
    names_from: 0,
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &MONTHS,
    names_from: 1,
};
const WEEKDAY: Field = Field {
    name: "day of week",
    min: 0,
    max: 7,
    names: &WEEKDAYS,
    names_from: 0,
};

impl Field {
    fn value(&self, s: &str) -> Result<u32, CronError> {
        if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + self.names_from);
        }
        let v: u32 = s.parse().map_err(|_| {
            CronError(format!(
                "{} field: {s:?} is not a number{}",
                self.name,
                if self.names.is_empty() {
                    String::new()
                } else {
                    format!(
                        " or a name ({}-{})",
                        self.names[0],
                        self.names[self.names.len() - 1]
                    )
                }
            ))
        })?;
        if v < self.min || v > self.max {
            return Err(CronError(format!(
                "{} field: {v} is out of range {}-{}",
                self.name, self.min, self.max
            )));
        }
        Ok(v)
    }

    /// Parse one field into a bit set; `true` with it when the field is `*`/`?`.
    fn parse(&self, text: &str) -> Result<(u64, bool), CronError> {
        let mut bits = 0u64;
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        CronError(format!(
                            "{} field: step {s:?} must be a number > 0",
                            self.name
                        ))
                    })?;
                    (r, step)
                }
                None => (part, 1),
            };
            let (lo, hi) = if range == "*" || range == "?" {
                (
                    self.min,
                    if self.names_from == 0 && self.max == 7 {
                        6
                    } else {
                        self.max
                    },
                )
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a)?, self.value(b)?);
                if a > b {
                    return Err(CronError(format!(
                        "{} field: range {range:?} goes backwards",
                        self.name
                    )));
                }
                (a, b)
            } else {
                let a = self.value(range)?;
                // `N/step` means `N-max/step`.
                (a, if part.contains('/') { self.max } else { a })
            };
            let mut v = lo;
            while v <= hi {
                bits |= 1 << v;
                v += step;
            }
        }
        Ok((bits, text == "*" || text == "?"))
    }
}

impl Cron {
    /// Parse a cron expression (see the module docs).
    pub fn parse(expr: &str) -> Result<Cron, CronError> {
        let expr = expr.trim();
        if expr.len() > MAX_SCHEDULE_LEN {
            return Err(CronError(format!(
                "is {} bytes long, more than the limit of {MAX_SCHEDULE_LEN}",
                expr.len()
            )));
        }
        let expanded = match expr.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            m if m.starts_with('@') => {
                return Err(CronError(format!(
                    "unknown macro {expr:?} (use @yearly, @monthly, @weekly, @daily or @hourly)"
                )));
            }
            _ => expr,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (sec, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(CronError(format!(
                    "has {n} fields; expected 5 (minute hour day-of-month month day-of-week) or 6 (with seconds first)"
                )));
            }
        };
        let (seconds, _) = SECOND.parse(sec)?;
        let (minutes, _) = MINUTE.parse(rest[0])?;
        let (hours, _) = HOUR.parse(rest[1])?;
        let (days, days_star) = DAY.parse(rest[2])?;
        let (months, _) = MONTH.parse(rest[3])?;
        let (mut weekdays, weekdays_star) = WEEKDAY.parse(rest[4])?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        let cron = Cron {
            seconds,
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_star,
            weekdays_star,
        };
        // A day of month no selected month has (`30 FEB`) never runs.
        if cron.next_after(Civil::from_secs(0)).is_none() {
            return Err(CronError(format!(
                "{expr:?} never matches a date (no selected month has the selected day)"
            )));
        }
        Ok(cron)
    }

    fn day_matches(&self, c: &Civil) -> bool {
        let dom = self.days & (1 << c.day) != 0;
        let dow = self.weekdays & (1 << c.weekday()) != 0;
        match (self.days_star, self.weekdays_star) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    /// The first civil second strictly after `t` that matches; `None` if none within
    /// nine years (only for expressions [`Cron::parse`] refuses).
    pub fn next_after(&self, t: Civil) -> Option<Civil> {
        let mut c = Civil::from_secs(t.to_secs() + 1);
        let end = t.year + HORIZON_YEARS;
        while c.year <= end {
            if self.months & (1 << c.month) == 0 {
                let (y, m) = if c.month == 12 {
                    (c.year + 1, 1)
                } else {
                    (c.year, c.month + 1)
                };
                c = Civil {
                    year: y,
                    month: m,
                    day: 1,
                    hour: 0,
                    minute: 0,
                    second: 0,
                };
                continue;
            }
            if !self.day_matches(&c) {
                c = Civil::from_secs(
                    Civil {
                        hour: 0,
                        minute: 0,
                        second: 0,
                        ..c
                    }
                    .to_secs()
                        + 86_400,
                );
                continue;
            }
            if self.hours & (1 << c.hour) == 0 {
                c = Civil::from_secs(c.to_secs() - i64::from(c.minute * 60 + c.second) + 3600);
                continue;
            }
            if self.minutes & (1 << c.minute) == 0 {
                c = Civil::from_secs(c.to_secs() - i64::from(c.second) + 60);
                continue;
            }
            if self.seconds & (1 << c.second) == 0 {
                c = Civil::from_secs(c.to_secs() + 1);
                continue;
            }
            return Some(c);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Civil {
        // "YYYY-MM-DDTHH:MM:SS"
        let n = |a: usize, b: usize| s[a..b].parse::<u32>().unwrap();
        Civil {
            year: i64::from(n(0, 4)),
            month: n(5, 7),
            day: n(8, 10),
            hour: n(11, 13),
            minute: n(14, 16),
            second: n(17, 19),
        }
    }

    fn next(expr: &str, after: &str) -> String {
        Cron::parse(expr)
            .unwrap()
            .next_after(at(after))
            .unwrap()
            .to_string()
    }

    #[test]
    fn civil_round_trips_and_weekdays() {
        for secs in [
            0i64,
            951_782_400,
            -86_400,
            1_700_000_000,
            4_102_444_800,
            253_402_300_799,
        ] {
            assert_eq!(Civil::from_secs(secs).to_secs(), secs);
        }
        assert_eq!(Civil::from_secs(0).to_string(), "1970-01-01T00:00:00");
        assert_eq!(Civil::from_secs(0).weekday(), 4); // a Thursday
        assert_eq!(at("2000-02-29T00:00:00").weekday(), 2); // a Tuesday
        assert_eq!(at("2026-12-04T00:00:00").weekday(), 5); // a Friday
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2024, 2), 29);
    }

    #[test]
    fn next_occurrences() {
        let cases = [
            ("* * * * *", "2026-01-01T00:00:00", "2026-01-01T00:01:00"),
            ("* * * * *", "2026-01-01T00:00:59", "2026-01-01T00:01:00"),
            ("* * * * * *", "2026-01-01T00:00:00", "2026-01-01T00:00:01"),
            (
                "*/15 * * * * *",
                "2026-01-01T00:00:14",
                "2026-01-01T00:00:15",
            ),
            (
                "*/15 * * * * *",
                "2026-01-01T00:00:45",
                "2026-01-01T00:01:00",
            ),
            ("0 3 * * *", "2026-01-01T03:00:00", "2026-01-02T03:00:00"),
            ("0 3 * * *", "2026-12-31T04:00:00", "2027-01-01T03:00:00"),
            ("30 2 29 2 *", "2026-03-01T00:00:00", "2028-02-29T02:30:00"),
            ("0 0 * * MON", "2026-12-04T12:00:00", "2026-12-07T00:00:00"),
            ("0 0 * * 7", "2026-12-04T12:00:00", "2026-12-06T00:00:00"),
            ("0 0 * * 0", "2026-12-04T12:00:00", "2026-12-06T00:00:00"),
            // Both day fields restricted: either matches (Vixie cron).
            ("0 0 1 * MON", "2026-12-04T12:00:00", "2026-12-07T00:00:00"),
            ("0 0 1 * MON", "2026-12-28T12:00:00", "2027-01-01T00:00:00"),
            ("0 0 31 * *", "2026-04-01T00:00:00", "2026-05-31T00:00:00"),
            (
                "0 9-17/4 * * MON-FRI",
                "2026-12-04T13:00:00",
                "2026-12-04T17:00:00",
            ),
            (
                "0 9-17/4 * * MON-FRI",
                "2026-12-04T17:00:00",
                "2026-12-07T09:00:00",
            ),
            (
                "5,10 0 * JAN,jul *",
                "2026-01-31T00:10:00",
                "2026-07-01T00:05:00",
            ),
            ("0 12 * * *", "2026-12-04T11:59:59", "2026-12-04T12:00:00"),
            ("@hourly", "2026-12-04T11:59:59", "2026-12-04T12:00:00"),
            ("@daily", "2026-12-04T11:59:59", "2026-12-05T00:00:00"),
            ("@weekly", "2026-12-04T11:59:59", "2026-12-06T00:00:00"),
            ("@monthly", "2026-12-04T11:59:59", "2027-01-01T00:00:00"),
            ("@yearly", "2026-12-04T11:59:59", "2027-01-01T00:00:00"),
            ("0 0 0 ? * *", "2026-12-04T11:59:59", "2026-12-05T00:00:00"),
            (
                "10/20 * * * *",
                "2026-12-04T00:00:00",
                "2026-12-04T00:10:00",
            ),
            (
                "10/20 * * * *",
                "2026-12-04T00:51:00",
                "2026-12-04T01:10:00",
            ),
        ];
        for (expr, after, want) in cases {
            assert_eq!(next(expr, after), want, "{expr} after {after}");
        }
    }

    #[test]
    fn every_result_matches_and_none_is_skipped() {
        // Brute force over a year: next_after agrees with a second-by-second scan.
        for expr in ["0 */7 * * *", "0 0 13 * FRI"] {
            let cron = Cron::parse(expr).unwrap();
            let matches = |c: &Civil| {
                cron.seconds & (1 << c.second) != 0
                    && cron.minutes & (1 << c.minute) != 0
                    && cron.hours & (1 << c.hour) != 0
                    && cron.months & (1 << c.month) != 0
                    && cron.day_matches(c)
            };
            let mut t = at("2026-01-01T00:00:00").to_secs();
            let end = at("2027-01-01T00:00:00").to_secs();
            let mut n = cron.next_after(Civil::from_secs(t)).unwrap();
            while t < end {
                t += 60;
                let c = Civil::from_secs(t);
                if matches(&c) {
                    assert_eq!(n, c, "{expr}");
                    n = cron.next_after(c).unwrap();
                }
                assert!(n.to_secs() > t);
            }
        }
    }

    #[test]
    fn bad_expressions_name_the_field() {
        let cases = [
            ("", "has 0 fields"),
            ("* * * *", "has 4 fields"),
            ("* * * * * * *", "has 7 fields"),
            ("60 * * * *", "minute field: 60 is out of range 0-59"),
            ("* 24 * * *", "hour field: 24 is out of range 0-23"),
            ("* * 0 * *", "day of month field: 0 is out of range 1-31"),
            ("* * * 13 *", "month field: 13 is out of range 1-12"),
            ("* * * * 8", "day of week field: 8 is out of range 0-7"),
            (
                "* * * FOO *",
                "month field: \"FOO\" is not a number or a name (JAN-DEC)",
            ),
            (
                "*/0 * * * *",
                "minute field: step \"0\" must be a number > 0",
            ),
            ("5-1 * * * *", "minute field: range \"5-1\" goes backwards"),
            ("61 * * * * *", "second field: 61 is out of range 0-59"),
            ("0 0 30 2 *", "never matches a date"),
            ("0 0 31 APR,JUN *", "never matches a date"),
            ("@reboot", "unknown macro"),
            ("x * * * *", "minute field: \"x\" is not a number"),
            ("1,,2 * * * *", "minute field: \"\" is not a number"),
        ];
        for (expr, want) in cases {
            let e = Cron::parse(expr).unwrap_err().to_string();
            assert!(e.contains(want), "{expr:?}: {e}");
        }
        assert!(Cron::parse(&"1,".repeat(200)).is_err());
    }

    #[test]
    fn choices_parse() {
        assert_eq!(RunMode::parse(""), Some(RunMode::Service));
        assert_eq!(RunMode::parse("JOB"), Some(RunMode::Job));
        assert_eq!(RunMode::parse("cron"), None);
        assert_eq!(Concurrency::parse(""), Some(Concurrency::Forbid));
        assert_eq!(Concurrency::parse("Replace"), Some(Concurrency::Replace));
        assert_eq!(Concurrency::parse("allow"), Some(Concurrency::Allow));
        assert_eq!(Concurrency::parse("parallel"), None);
        assert_eq!(Scope::parse(""), Some(Scope::Node));
        assert_eq!(Scope::parse("fleet"), Some(Scope::Fleet));
        assert_eq!(Scope::parse("cluster"), None);
    }
}

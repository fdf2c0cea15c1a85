//! Time zones for `timezone`, from the system's tz database: the TZif files of
//! `/usr/share/zoneinfo` (or `$TZDIR`), RFC 8536, with the POSIX TZ rule of their footer
//! for the times after the last transition (the "slim" files of modern tzdata hold only
//! that rule). No tables are compiled into narund: a node that schedules jobs with a
//! `timezone` needs the zone's file (Debian/Yocto/Buildroot package `tzdata`); without
//! `timezone` (UTC) nothing is read.

use narun_spec::{Civil, days_in_month};
use std::path::PathBuf;

/// Largest TZif file read (the biggest in tzdata is a few KiB).
const MAX_TZIF_BYTES: u64 = 256 * 1024;

/// A time zone: how far its wall clock is from UTC at any instant.
#[derive(Debug, Clone, PartialEq)]
pub enum Zone {
    Utc,
    Tz(Box<TzData>),
}

/// A zone's transitions and its rule for the times after them.
#[derive(Debug, Clone, PartialEq)]
pub struct TzData {
    /// Unix times of the transitions, ascending.
    transitions: Vec<i64>,
    /// The offset (seconds east of UTC) from each transition on.
    offsets: Vec<i32>,
    /// The offset before the first transition.
    initial: i32,
    /// For times after the last transition (or all times, without transitions).
    rule: Option<Rule>,
}

/// A POSIX TZ rule (`CET-1CEST,M3.5.0,M10.5.0/3`).
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Fixed(i32),
    Dst {
        std: i32,
        dst: i32,
        start: (Day, i32),
        end: (Day, i32),
    },
}

/// The day of a DST change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Day {
    /// `Mm.w.d`: weekday `d` (0 = Sunday) of week `w` (5 = the last) of month `m`.
    Month(u32, u32, u32),
    /// `Jn`: day 1-365, February 29 never counted.
    Julian1(u32),
    /// `n`: day 0-365, February 29 counted.
    Julian0(u32),
}

/// Why a zone cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error(
        "unknown timezone {name:?}: cannot read {path}: {err} (install the tz database, e.g. the tzdata package, or set TZDIR)"
    )]
    Read {
        name: String,
        path: String,
        err: std::io::Error,
    },
    #[error("timezone {name:?}: {path} is not a valid TZif file: {why}")]
    Invalid {
        name: String,
        path: String,
        why: String,
    },
}

impl Zone {
    /// A zone always `offset` seconds east of UTC.
    pub fn fixed(offset: i32) -> Zone {
        Zone::Tz(Box::new(TzData {
            transitions: vec![],
            offsets: vec![],
            initial: offset,
            rule: Some(Rule::Fixed(offset)),
        }))
    }

    /// A zone from a POSIX TZ rule alone.
    pub fn posix(rule: &str) -> Option<Zone> {
        Some(Zone::Tz(Box::new(TzData {
            transitions: vec![],
            offsets: vec![],
            initial: 0,
            rule: Some(parse_rule(rule)?),
        })))
    }

    /// The zone named `name` (`""` = UTC) from `$TZDIR` or `/usr/share/zoneinfo`. `UTC`
    /// works without the database.
    pub fn load(name: &str) -> Result<Zone, ZoneError> {
        if name.is_empty() {
            return Ok(Zone::Utc);
        }
        let dir = std::env::var_os("TZDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/share/zoneinfo"));
        let path = dir.join(name);
        let read = || -> std::io::Result<Vec<u8>> {
            use std::io::Read;
            let mut buf = Vec::new();
            std::fs::File::open(&path)?
                .take(MAX_TZIF_BYTES)
                .read_to_end(&mut buf)?;
            Ok(buf)
        };
        let bytes = match read() {
            Ok(b) => b,
            Err(_) if matches!(name, "UTC" | "Etc/UTC" | "Zulu" | "Etc/Zulu") => {
                return Ok(Zone::Utc);
            }
            Err(err) => {
                return Err(ZoneError::Read {
                    name: name.into(),
                    path: path.display().to_string(),
                    err,
                });
            }
        };
        parse_tzif(&bytes)
            .map(|d| Zone::Tz(Box::new(d)))
            .map_err(|why| ZoneError::Invalid {
                name: name.into(),
                path: path.display().to_string(),
                why,
            })
    }

    /// Seconds east of UTC at the Unix time `t`.
    pub fn offset_at(&self, t: i64) -> i32 {
        match self {
            Zone::Utc => 0,
            Zone::Tz(d) => d.offset_at(t),
        }
    }

    /// The instants whose wall-clock time is `local` (seconds of a civil time): none in
    /// a gap, two in a repeated hour, ascending.
    pub fn instants_of(&self, local: i64) -> Vec<i64> {
        let mut o = [-54_000i64, 0, 54_000].map(|d| self.offset_at(local + d));
        // Three values: sorted by hand (a generic sort is kilobytes of code per type).
        for (a, b) in [(0, 1), (1, 2), (0, 1)] {
            if o[a] > o[b] {
                o.swap(a, b);
            }
        }
        // Distinct offsets, descending, give distinct instants, ascending.
        let mut out: Vec<i64> = Vec::with_capacity(2);
        for (i, &off) in o.iter().enumerate().rev() {
            if i + 1 < o.len() && o[i + 1] == off {
                continue;
            }
            let u = local - i64::from(off);
            if u + i64::from(self.offset_at(u)) == local {
                out.push(u);
            }
        }
        out
    }
}

impl TzData {
    fn offset_at(&self, t: i64) -> i32 {
        match self.transitions.last() {
            Some(last) if t >= *last && self.rule.is_some() => {}
            Some(_) => {
                return match self.transitions.partition_point(|x| *x <= t) {
                    0 => self.initial,
                    i => self.offsets[i - 1],
                };
            }
            None if self.rule.is_none() => return self.initial,
            None => {}
        }
        match self.rule.as_ref().expect("checked above") {
            Rule::Fixed(o) => *o,
            Rule::Dst {
                std,
                dst,
                start,
                end,
            } => {
                let year = Civil::from_secs(t + i64::from(*std)).year;
                let change = |(day, time): &(Day, i32), before: i32| {
                    day_start(year, *day) + i64::from(*time) - i64::from(before)
                };
                let (s, e) = (change(start, *std), change(end, *dst));
                let in_dst = if s < e {
                    s <= t && t < e
                } else {
                    !(e <= t && t < s)
                };
                if in_dst { *dst } else { *std }
            }
        }
    }
}

/// Seconds (local) of 00:00 of `day` in `year`.
fn day_start(year: i64, day: Day) -> i64 {
    let jan1 = Civil {
        year,
        month: 1,
        day: 1,
        hour: 0,
        minute: 0,
        second: 0,
    }
    .to_secs();
    match day {
        Day::Julian0(n) => jan1 + i64::from(n) * 86_400,
        Day::Julian1(n) => {
            let leap = days_in_month(year, 2) == 29;
            let n = if leap && n >= 60 { n } else { n - 1 };
            jan1 + i64::from(n) * 86_400
        }
        Day::Month(m, w, d) => {
            let first = Civil {
                year,
                month: m,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
            };
            let mut day = 1 + (d + 7 - first.weekday()) % 7 + (w - 1) * 7;
            while day > days_in_month(year, m) {
                day -= 7;
            }
            Civil { day, ..first }.to_secs()
        }
    }
}

/// `[+-]hh[:mm[:ss]]` in seconds, and the rest.
fn parse_hms(s: &str) -> Option<(i32, &str)> {
    let (sign, s) = match s.as_bytes().first()? {
        b'-' => (-1, &s[1..]),
        b'+' => (1, &s[1..]),
        _ => (1, s),
    };
    let mut total = 0i32;
    let mut rest = s;
    for (i, unit) in [3600, 60, 1].into_iter().enumerate() {
        if i > 0 {
            match rest.strip_prefix(':') {
                Some(r) => rest = r,
                None => break,
            }
        }
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 3 {
            return None;
        }
        let v: i32 = rest[..n].parse().ok()?;
        total += v * unit;
        rest = &rest[n..];
    }
    Some((sign * total, rest))
}

/// A zone abbreviation (`CET` or `<+03>`), and the rest.
fn parse_abbr(s: &str) -> Option<&str> {
    if let Some(r) = s.strip_prefix('<') {
        return Some(&r[r.find('>')? + 1..]);
    }
    let n = s.bytes().take_while(u8::is_ascii_alphabetic).count();
    (n >= 3).then(|| &s[n..])
}

fn parse_day(s: &str) -> Option<(Day, &str)> {
    let num = |s: &str| -> Option<(u32, usize)> {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        Some((s[..n].parse().ok()?, n))
    };
    if let Some(r) = s.strip_prefix('M') {
        let mut parts = [0u32; 3];
        let mut rest = r;
        for (i, p) in parts.iter_mut().enumerate() {
            if i > 0 {
                rest = rest.strip_prefix('.')?;
            }
            let (v, n) = num(rest)?;
            *p = v;
            rest = &rest[n..];
        }
        let [m, w, d] = parts;
        ((1..=12).contains(&m) && (1..=5).contains(&w) && d <= 6)
            .then_some((Day::Month(m, w, d), rest))
    } else if let Some(r) = s.strip_prefix('J') {
        let (v, n) = num(r)?;
        (1..=365).contains(&v).then_some((Day::Julian1(v), &r[n..]))
    } else {
        let (v, n) = num(s)?;
        (v <= 365).then_some((Day::Julian0(v), &s[n..]))
    }
}

fn parse_change(s: &str) -> Option<((Day, i32), &str)> {
    let (day, rest) = parse_day(s)?;
    match rest.strip_prefix('/') {
        Some(r) => {
            let (t, rest) = parse_hms(r)?;
            Some(((day, t), rest))
        }
        None => Some(((day, 7200), rest)),
    }
}

/// A POSIX TZ rule (the footer of a TZif v2+ file).
pub fn parse_rule(s: &str) -> Option<Rule> {
    let rest = parse_abbr(s)?;
    let (std_west, rest) = parse_hms(rest)?;
    let std = -std_west;
    if rest.is_empty() {
        return Some(Rule::Fixed(std));
    }
    let rest = parse_abbr(rest)?;
    let (dst, rest) = match rest.as_bytes().first() {
        Some(b',') | None => (std + 3600, rest),
        _ => {
            let (w, r) = parse_hms(rest)?;
            (-w, r)
        }
    };
    let rest = rest.strip_prefix(',')?;
    let (start, rest) = parse_change(rest)?;
    let rest = rest.strip_prefix(',')?;
    let (end, rest) = parse_change(rest)?;
    rest.is_empty().then_some(Rule::Dst {
        std,
        dst,
        start,
        end,
    })
}

/// Parse a TZif file (RFC 8536, versions 1 to 4).
fn parse_tzif(b: &[u8]) -> Result<TzData, String> {
    struct Header {
        isut: usize,
        isstd: usize,
        leap: usize,
        time: usize,
        types: usize,
        chars: usize,
    }
    fn header(b: &[u8]) -> Result<(u8, Header), String> {
        if b.len() < 44 || &b[..4] != b"TZif" {
            return Err("no TZif header".into());
        }
        let n =
            |i: usize| u32::from_be_bytes(b[20 + 4 * i..24 + 4 * i].try_into().unwrap()) as usize;
        Ok((
            b[4],
            Header {
                isut: n(0),
                isstd: n(1),
                leap: n(2),
                time: n(3),
                types: n(4),
                chars: n(5),
            },
        ))
    }
    let (version, h1) = header(b)?;
    let (b, h, time_size) = if version >= b'2' {
        let v1 = h1.time * 5 + h1.types * 6 + h1.chars + h1.leap * 8 + h1.isstd + h1.isut;
        let rest = b.get(44 + v1..).ok_or("truncated version 1 data")?;
        let (_, h2) = header(rest)?;
        (rest, h2, 8)
    } else {
        (b, h1, 4)
    };
    if h.types == 0 || h.types > 256 {
        return Err(format!("{} local time types", h.types));
    }
    let data = &b[44..];
    let need = h.time * (time_size + 1) + h.types * 6 + h.chars;
    if data.len() < need {
        return Err("truncated data".into());
    }
    let times = &data[..h.time * time_size];
    let idx = &data[h.time * time_size..h.time * (time_size + 1)];
    let types = &data[h.time * (time_size + 1)..h.time * (time_size + 1) + h.types * 6];
    let utoff = |i: usize| i32::from_be_bytes(types[6 * i..6 * i + 4].try_into().unwrap());
    let mut transitions = Vec::with_capacity(h.time);
    let mut offsets = Vec::with_capacity(h.time);
    for i in 0..h.time {
        let t = if time_size == 8 {
            i64::from_be_bytes(times[8 * i..8 * i + 8].try_into().unwrap())
        } else {
            i64::from(i32::from_be_bytes(
                times[4 * i..4 * i + 4].try_into().unwrap(),
            ))
        };
        let ty = usize::from(idx[i]);
        if ty >= h.types {
            return Err(format!("transition {i} names local time type {ty}"));
        }
        if transitions.last().is_some_and(|l| *l >= t) {
            return Err("transitions out of order".into());
        }
        transitions.push(t);
        offsets.push(utoff(ty));
    }
    let rule = if version >= b'2' {
        let footer_at = need + h.leap * 12 + h.isstd + h.isut;
        let footer = data.get(footer_at..).unwrap_or_default();
        let text = std::str::from_utf8(footer).unwrap_or_default();
        let line = text
            .trim_start_matches('\n')
            .split('\n')
            .next()
            .unwrap_or("");
        if line.is_empty() {
            None
        } else {
            Some(parse_rule(line).ok_or_else(|| format!("unsupported TZ rule {line:?}"))?)
        }
    } else {
        None
    };
    Ok(TzData {
        transitions,
        offsets,
        initial: utoff(0),
        rule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(y: i64, m: u32, d: u32, h: u32, mi: u32) -> i64 {
        Civil {
            year: y,
            month: m,
            day: d,
            hour: h,
            minute: mi,
            second: 0,
        }
        .to_secs()
    }

    #[test]
    fn posix_rules() {
        assert_eq!(parse_rule("UTC0"), Some(Rule::Fixed(0)));
        assert_eq!(parse_rule("<+03>-3"), Some(Rule::Fixed(3 * 3600)));
        assert_eq!(parse_rule("EST5"), Some(Rule::Fixed(-5 * 3600)));
        assert_eq!(parse_rule("IST-5:30"), Some(Rule::Fixed(5 * 3600 + 1800)));
        let us = parse_rule("EST5EDT,M3.2.0,M11.1.0").unwrap();
        assert_eq!(
            us,
            Rule::Dst {
                std: -18000,
                dst: -14400,
                start: (Day::Month(3, 2, 0), 7200),
                end: (Day::Month(11, 1, 0), 7200),
            }
        );
        for bad in [
            "",
            "C",
            "CET",
            "CET-1CEST",
            "CET-1CEST,M13.5.0,M10.5.0",
            "CET-1CEST,M3.5.0",
        ] {
            assert_eq!(parse_rule(bad), None, "{bad}");
        }
    }

    #[test]
    fn offsets_follow_the_rule() {
        let z = Zone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        // 2026: summer time from March 29 01:00 UTC to October 25 01:00 UTC.
        assert_eq!(z.offset_at(t(2026, 1, 15, 12, 0)), 3600);
        assert_eq!(z.offset_at(t(2026, 3, 29, 0, 59)), 3600);
        assert_eq!(z.offset_at(t(2026, 3, 29, 1, 0)), 7200);
        assert_eq!(z.offset_at(t(2026, 10, 25, 0, 59)), 7200);
        assert_eq!(z.offset_at(t(2026, 10, 25, 1, 0)), 3600);
        // Southern hemisphere: Sydney, DST from October to April.
        let syd = Zone::posix("AEST-10AEDT,M10.1.0,M4.1.0/3").unwrap();
        assert_eq!(syd.offset_at(t(2026, 1, 15, 0, 0)), 11 * 3600);
        assert_eq!(syd.offset_at(t(2026, 7, 15, 0, 0)), 10 * 3600);
        // Gaps and repeats.
        assert_eq!(z.instants_of(t(2026, 3, 29, 2, 30)), Vec::<i64>::new());
        assert_eq!(
            z.instants_of(t(2026, 10, 25, 2, 30)),
            vec![t(2026, 10, 25, 0, 30), t(2026, 10, 25, 1, 30)]
        );
        assert_eq!(
            z.instants_of(t(2026, 6, 1, 12, 0)),
            vec![t(2026, 6, 1, 10, 0)]
        );
    }

    #[test]
    fn julian_days() {
        // J60 is March 1 in every year; 59 (zero-based) is Feb 29 in a leap year.
        assert_eq!(day_start(2024, Day::Julian1(60)), t(2024, 3, 1, 0, 0));
        assert_eq!(day_start(2026, Day::Julian1(60)), t(2026, 3, 1, 0, 0));
        assert_eq!(day_start(2024, Day::Julian0(59)), t(2024, 2, 29, 0, 0));
        assert_eq!(day_start(2026, Day::Month(3, 5, 0)), t(2026, 3, 29, 0, 0));
        assert_eq!(day_start(2026, Day::Month(11, 1, 0)), t(2026, 11, 1, 0, 0));
    }

    /// A TZif v2 file built by hand: one transition to +1h at t=1000, footer `CET-1`.
    #[test]
    fn tzif_files_parse_and_bad_ones_are_refused() {
        fn header(version: u8, time: u32, types: u32, chars: u32) -> Vec<u8> {
            let mut h = b"TZif".to_vec();
            h.push(version);
            h.extend([0u8; 15]);
            for n in [0u32, 0, 0, time, types, chars] {
                h.extend(n.to_be_bytes());
            }
            h
        }
        let mut f = header(b'2', 0, 1, 4);
        f.extend(0i32.to_be_bytes());
        f.extend([0, 0]);
        f.extend(b"UTC\0");
        f.extend(header(b'2', 1, 2, 8));
        f.extend(1000i64.to_be_bytes());
        f.push(1);
        f.extend(0i32.to_be_bytes());
        f.extend([0, 0]);
        f.extend(3600i32.to_be_bytes());
        f.extend([0, 4]);
        f.extend(b"UTC\0CET\0");
        f.extend(b"\nCET-1\n");
        let d = parse_tzif(&f).unwrap();
        let z = Zone::Tz(Box::new(d));
        assert_eq!(z.offset_at(999), 0);
        assert_eq!(z.offset_at(1000), 3600);
        assert_eq!(z.offset_at(10_000_000_000), 3600);
        assert!(parse_tzif(b"nope").is_err());
        assert!(parse_tzif(&f[..60]).is_err());
        let mut bad = f.clone();
        let at = bad.len() - 7 - 8 - 6 - 6 - 1;
        bad[at] = 9; // a transition naming a type that does not exist
        assert!(parse_tzif(&bad).is_err());
    }

    #[test]
    fn system_zones_when_installed() {
        // The real tz database, if this machine has it (the test is skipped otherwise).
        let Ok(z) = Zone::load("Europe/Paris") else {
            return;
        };
        assert_eq!(z.offset_at(t(2026, 1, 15, 12, 0)), 3600);
        assert_eq!(z.offset_at(t(2026, 7, 15, 12, 0)), 7200);
        assert_eq!(z.offset_at(t(2080, 7, 15, 12, 0)), 7200);
        assert_eq!(z.offset_at(t(1900, 1, 1, 0, 0)), 561);
        assert!(matches!(
            Zone::load("Nowhere/Atlantis"),
            Err(ZoneError::Read { .. })
        ));
        assert_eq!(Zone::load("").unwrap(), Zone::Utc);
    }
}

//! When to renew and when to retry: pure functions of a certificate's validity and of the
//! number of failures in a row, unit-tested without a CA.
//!
//! * A certificate is renewed at **2/3 of its lifetime** (a 90-day Let's Encrypt
//!   certificate at day 60, leaving 30 days of retries before it expires).
//! * A failed attempt (CA unreachable, a challenge the CA could not validate, a rate
//!   limit) is retried after 1 min, doubling up to 1 h: about six attempts in the first
//!   hour, then one an hour (Let's Encrypt allows 5 failed validations per hour and name).
//!
//! The validity is read from the leaf certificate's DER ([`validity`]): a small walk
//! through the `TBSCertificate` to its `Validity` (RFC 5280 §4.1), no X.509 library.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// First pause after a failed attempt.
pub const RETRY_MIN: Duration = Duration::from_secs(60);
/// Longest pause between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(3600);

/// When a certificate valid from `not_before` to `not_after` is renewed: at 2/3 of its
/// lifetime.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + life * 2 / 3
}

/// Longest single sleep: the wait is computed again after it, so a wall clock that jumps
/// (a device without a real-time clock that learns the time from NTP after boot) does not
/// leave a renewal sleeping for years.
pub const RECHECK: Duration = Duration::from_secs(3600);

/// How long to wait before the next order: at once without a certificate, until its
/// renewal time with one, the backoff after `failures` failed attempts in a row.
pub fn next_order_in(renew_at: Option<SystemTime>, now: SystemTime, failures: u32) -> Duration {
    if failures > 0 {
        return retry_delay(failures);
    }
    renew_at
        .and_then(|r| r.duration_since(now).ok())
        .unwrap_or(Duration::ZERO)
}

/// The pause after `failures` failed attempts in a row (1 = the first failure).
pub fn retry_delay(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    (RETRY_MIN * (1u32 << shift)).min(RETRY_MAX)
}

/// One DER element: (tag, contents, rest of the input).
fn tlv(der: &[u8]) -> Result<(u8, &[u8], &[u8]), &'static str> {
    let (&tag, rest) = der.split_first().ok_or("truncated")?;
    let (&first, mut rest) = rest.split_first().ok_or("truncated")?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err("bad length");
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | b as usize;
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err("truncated");
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A `UTCTime` (tag 0x17, `YYMMDDHHMMSSZ`) or `GeneralizedTime` (0x18, `YYYYMMDDHHMMSSZ`).
fn time(tag: u8, v: &[u8]) -> Result<SystemTime, &'static str> {
    let s = std::str::from_utf8(v).map_err(|_| "bad time")?;
    let s = s.strip_suffix('Z').ok_or("time is not in UTC")?;
    let (year, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy: i64 = s[..2].parse().map_err(|_| "bad time")?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        (0x18, 14) => (s[..4].parse().map_err(|_| "bad time")?, &s[4..]),
        _ => return Err("bad time"),
    };
    let n = |i: usize| -> Result<u32, &'static str> {
        rest.get(i..i + 2)
            .and_then(|t| t.parse().ok())
            .ok_or("bad time")
    };
    let (mo, d, h, mi, se) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err("bad time");
    }
    let secs = days_from_civil(year, mo, d) * 86_400 + (h * 3600 + mi * 60 + se) as i64;
    let secs = u64::try_from(secs).map_err(|_| "time before 1970")?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

/// `(notBefore, notAfter)` of a DER X.509 certificate.
pub fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), &'static str> {
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return Err("not a certificate");
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != 0x30 {
        return Err("not a certificate");
    }
    let mut rest = tbs;
    // [0] version (optional), serialNumber, signature, issuer, then validity.
    let (tag, _, r) = tlv(rest)?;
    rest = if tag == 0xa0 { tlv(r)?.2 } else { r };
    rest = tlv(rest)?.2; // signature AlgorithmIdentifier
    rest = tlv(rest)?.2; // issuer
    let (tag, validity, _) = tlv(rest)?;
    if tag != 0x30 {
        return Err("no validity");
    }
    let (t1, v1, r) = tlv(validity)?;
    let (t2, v2, _) = tlv(r)?;
    Ok((time(t1, v1)?, time(t2, v2)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds_of_the_lifetime() {
        let nb = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = nb + Duration::from_secs(90 * 86_400);
        assert_eq!(renew_at(nb, na), nb + Duration::from_secs(60 * 86_400));
        // A certificate "valid" backwards renews at once.
        assert_eq!(renew_at(na, nb), na);
    }

    #[test]
    fn the_next_order_is_due_at_once_at_renewal_or_after_the_backoff() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let later = now + Duration::from_secs(500);
        assert_eq!(next_order_in(None, now, 0), Duration::ZERO);
        assert_eq!(next_order_in(Some(later), now, 0), Duration::from_secs(500));
        assert_eq!(next_order_in(Some(now), later, 0), Duration::ZERO); // overdue
        assert_eq!(next_order_in(Some(later), now, 3), retry_delay(3));
        assert_eq!(next_order_in(None, now, 1), RETRY_MIN);
    }

    #[test]
    fn retries_double_up_to_an_hour() {
        let d: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(d, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(retry_delay(0), RETRY_MIN);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn reads_the_validity_of_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2024, 2, 29);
        p.not_after = rcgen::date_time_ymd(2051, 12, 31); // GeneralizedTime (after 2049)
        let cert = p.self_signed(&key).unwrap();
        let (nb, na) = validity(cert.der()).unwrap();
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs(nb), 1_709_164_800); // date -d 2024-02-29Z +%s
        assert_eq!(secs(na), 2_587_593_600); // date -d 2051-12-31Z +%s
        assert!(validity(&cert.der()[..40]).is_err());
        assert!(validity(b"").is_err());
        assert!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}

//! Wall-clock timestamps parsed by hand (no chrono): `2023-11-16 18:15:46.6805900`
//! (Azure) and RFC 3339 `2025-01-02T03:04:05.123Z` / `+01:00`. Results are integer
//! nanoseconds since the Unix epoch (UTC), so differences across midnight, month and
//! year ends are exact.

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian), after
/// Howard Hinnant's `days_from_civil`.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

fn digits(s: &[u8], what: &str) -> Result<u32, String> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(format!("expected digits for the {what}"));
    }
    Ok(s.iter().fold(0u32, |a, b| a * 10 + (b - b'0') as u32))
}

/// Parses `YYYY-MM-DD?HH:MM:SS[.fraction]` (`?` being a space or `T`) at the start of
/// `s`; returns (ns since epoch as i128, rest of the string).
fn parse_date_time(s: &str) -> Result<(i128, &str), String> {
    let b = s.as_bytes();
    let expected = "expected a timestamp like `2023-11-16 18:15:46.6805900`";
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return Err(format!("{expected}, got `{s}`"));
    }
    if b[10] != b' ' && b[10] != b'T' && b[10] != b't' {
        return Err(format!("{expected}, got `{s}`"));
    }
    let bad = |e: String| format!("{e} in timestamp `{s}`");
    let year = digits(&b[0..4], "year").map_err(bad)? as i64;
    let month = digits(&b[5..7], "month").map_err(bad)?;
    let day = digits(&b[8..10], "day").map_err(bad)?;
    let hour = digits(&b[11..13], "hour").map_err(bad)?;
    let minute = digits(&b[14..16], "minute").map_err(bad)?;
    let second = digits(&b[17..19], "second").map_err(bad)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(format!("no such date in timestamp `{s}`"));
    }
    // A leap second (60) is accepted and counted as the next second.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(format!("time of day out of range in timestamp `{s}`"));
    }
    let mut i = 19;
    let mut frac_ns: i128 = 0;
    if i < b.len() && (b[i] == b'.' || b[i] == b',') {
        i += 1;
        let start = i;
        let mut scale: i128 = 100_000_000;
        while i < b.len() && b[i].is_ascii_digit() {
            // Digits beyond nanoseconds are truncated.
            frac_ns += (b[i] - b'0') as i128 * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return Err(format!("expected digits after the decimal point in `{s}`"));
        }
    }
    let days = days_from_civil(year, month, day) as i128;
    let secs = days * 86_400 + hour as i128 * 3600 + minute as i128 * 60 + second as i128;
    Ok((secs * 1_000_000_000 + frac_ns, &s[i..]))
}

/// An Azure-style timestamp without zone (taken as UTC) to ns since the epoch.
pub fn parse_naive_timestamp(s: &str) -> Result<i128, String> {
    let (ns, rest) = parse_date_time(s.trim())?;
    if !rest.is_empty() {
        return Err(format!("unexpected `{rest}` after the timestamp `{s}`"));
    }
    Ok(ns)
}

/// RFC 3339 (`T` or space separator; `Z`, `+HH:MM`, `-HH:MM` or no zone = UTC) to ns
/// since the epoch.
pub fn parse_rfc3339(s: &str) -> Result<i128, String> {
    let (ns, rest) = parse_date_time(s.trim())?;
    let offset_s: i128 = match rest.as_bytes() {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2], "zone hours")? as i128;
            let m = digits(&[*m1, *m2], "zone minutes")? as i128;
            let off = h * 3600 + m * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => {
            return Err(format!(
                "expected `Z` or a zone offset like `+01:00` after the time in `{s}`"
            ));
        }
    };
    Ok(ns - offset_s * 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        // 2023-11-16 = 19677 days after the epoch.
        assert_eq!(days_from_civil(2023, 11, 16), 19_677);
    }

    #[test]
    fn azure_timestamp_and_day_rollover() {
        let a = parse_naive_timestamp("2023-11-16 18:15:46.6805900").unwrap();
        assert_eq!(
            a,
            (19_677i128 * 86_400 + 18 * 3600 + 15 * 60 + 46) * 1_000_000_000 + 680_590_000
        );
        let before = parse_naive_timestamp("2023-12-31 23:59:59.9").unwrap();
        let after = parse_naive_timestamp("2024-01-01 00:00:00.1").unwrap();
        assert_eq!(after - before, 200_000_000);
        let feb = parse_naive_timestamp("2024-02-28 23:00:00").unwrap();
        let mar = parse_naive_timestamp("2024-03-01 01:00:00").unwrap();
        assert_eq!(mar - feb, (24 + 2) * 3600 * 1_000_000_000);
        assert!(parse_naive_timestamp("2023-02-29 00:00:00").is_err());
        assert!(parse_naive_timestamp("2023-11-16 25:00:00").is_err());
        assert!(parse_naive_timestamp("yesterday").is_err());
        assert!(parse_naive_timestamp("2023-11-16 18:15:46.").is_err());
    }

    #[test]
    fn rfc3339_zones() {
        let z = parse_rfc3339("2025-01-02T03:04:05.5Z").unwrap();
        let p = parse_rfc3339("2025-01-02T04:04:05.5+01:00").unwrap();
        let n = parse_rfc3339("2025-01-02 03:04:05.500").unwrap();
        assert_eq!(z, p);
        assert_eq!(z, n);
        assert!(parse_rfc3339("2025-01-02T03:04:05 UTC").is_err());
    }
}

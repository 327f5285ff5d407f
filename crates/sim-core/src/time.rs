//! Simulated time: integer nanoseconds, never floating point, so that event order and
//! every derived figure are exactly reproducible.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::{Add, AddAssign, Sub};

/// A span of simulated time in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimDuration(pub u64);

/// An instant of simulated time: nanoseconds since the start of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimTime(pub u64);

pub const NANOS_PER_SEC: u64 = 1_000_000_000;

impl SimDuration {
    pub const ZERO: SimDuration = SimDuration(0);

    pub const fn from_nanos(ns: u64) -> Self {
        SimDuration(ns)
    }
    pub const fn from_millis(ms: u64) -> Self {
        SimDuration(ms * 1_000_000)
    }
    pub const fn from_secs(s: u64) -> Self {
        SimDuration(s * NANOS_PER_SEC)
    }
    /// Rounds to the nearest nanosecond; negative and NaN inputs become zero.
    /// Inlined: twice per workflow in a plain model (arrival gap, service time).
    #[inline(always)]
    pub fn from_secs_f64(s: f64) -> Self {
        if s.is_nan() || s <= 0.0 {
            SimDuration(0)
        } else {
            let ns = s * NANOS_PER_SEC as f64;
            if ns >= u64::MAX as f64 {
                SimDuration(u64::MAX)
            } else {
                SimDuration(round_non_negative(ns))
            }
        }
    }
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_SEC as f64
    }

    /// Parses "250ms", "1.5s", "6m", "1h", "2d", "750us", "10ns", or a bare number of
    /// seconds ("0.25").
    pub fn parse(text: &str) -> Result<Self, DurationParseError> {
        let t = text.trim();
        let err = || DurationParseError {
            input: text.to_string(),
            too_long: false,
        };
        if t.is_empty() {
            return Err(err());
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num = num.replace('_', "");
        if num.is_empty() || num.starts_with('.') && num.len() == 1 {
            return Err(err());
        }
        let value: f64 = num.parse().map_err(|_| err())?;
        let scale_ns: f64 = match unit.trim() {
            "" | "s" | "sec" | "secs" => 1e9,
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "m" | "min" | "mins" => 60e9,
            "h" | "hr" | "hours" => 3600e9,
            "d" | "days" => 86_400e9,
            _ => return Err(err()),
        };
        let ns = value * scale_ns;
        if !ns.is_finite() || ns >= u64::MAX as f64 {
            return Err(DurationParseError {
                input: text.to_string(),
                too_long: true,
            });
        }
        Ok(SimDuration(ns.round() as u64))
    }
}

/// A duration string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", if *too_long {
    format!("`{input}` is too long a duration: at most about 213,500 days (2^64 nanoseconds)")
} else {
    format!("`{input}` is not a duration: expected a number with a unit, like \"250ms\", \"1.5s\", \"6m\" or \"1h\"")
})]
pub struct DurationParseError {
    pub input: String,
    /// Well formed, but past what integer nanoseconds hold.
    pub too_long: bool,
}

impl fmt::Display for SimDuration {
    /// Prints the shortest exact form in the largest unit that keeps it readable:
    /// 250ms, 1.5s, 6m, 1h, 90s.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        let units: [(u64, &str); 6] = [
            (3_600 * NANOS_PER_SEC, "h"),
            (60 * NANOS_PER_SEC, "m"),
            (NANOS_PER_SEC, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ];
        if ns == 0 {
            return write!(f, "0s");
        }
        for (scale, name) in units {
            // Largest unit in which the value is exact to three decimals.
            if ns >= scale && (ns as u128 * 1000).is_multiple_of(scale as u128) {
                let milli = ns as u128 * 1000 / scale as u128;
                let (whole, frac) = (milli / 1000, milli % 1000);
                if frac == 0 {
                    return write!(f, "{whole}{name}");
                }
                let frac = format!("{frac:03}");
                return write!(f, "{whole}.{}{name}", frac.trim_end_matches('0'));
            }
        }
        write!(f, "{ns}ns")
    }
}

impl fmt::Display for SimTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={}", SimDuration(self.0))
    }
}

impl SimTime {
    pub const ZERO: SimTime = SimTime(0);
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_SEC as f64
    }
    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: SimTime) -> SimDuration {
        SimDuration(self.0.saturating_sub(earlier.0))
    }
}

impl Add<SimDuration> for SimTime {
    type Output = SimTime;
    fn add(self, d: SimDuration) -> SimTime {
        SimTime(self.0.saturating_add(d.0))
    }
}
impl AddAssign<SimDuration> for SimTime {
    fn add_assign(&mut self, d: SimDuration) {
        self.0 = self.0.saturating_add(d.0);
    }
}
impl Sub<SimTime> for SimTime {
    type Output = SimDuration;
    fn sub(self, o: SimTime) -> SimDuration {
        self.since(o)
    }
}
impl Add for SimDuration {
    type Output = SimDuration;
    fn add(self, o: SimDuration) -> SimDuration {
        SimDuration(self.0.saturating_add(o.0))
    }
}

impl Serialize for SimDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Serialize for SimTime {
    /// Integer nanoseconds since the start of the run.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for SimDuration {
    /// Accepts a duration string ("250ms") or a plain number of seconds.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(i64),
            Float(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => SimDuration::parse(&t).map_err(serde::de::Error::custom),
            Raw::Int(i) if i >= 0 => Ok(SimDuration::from_secs(i as u64)),
            Raw::Float(x) if x >= 0.0 && x.is_finite() => Ok(SimDuration::from_secs_f64(x)),
            _ => Err(serde::de::Error::custom(
                "a duration must not be negative: expected e.g. \"250ms\" or a number of seconds >= 0",
            )),
        }
    }
}

/// `x.round() as u64` for `0 <= x < 2^64`, without a libm call (the baseline x86-64
/// target has no rounding instruction): the fractional part of a double is exact, so
/// this rounds half away from zero exactly like `f64::round`.
#[inline]
pub fn round_non_negative(x: f64) -> u64 {
    // Below 2^63 the signed conversions are single instructions (the unsigned ones are
    // branchy sequences on the baseline target); same truncation, same value.
    if (0.0..9_223_372_036_854_775_808.0).contains(&x) {
        // The fraction is as likely above a half as below: add the comparison, not a
        // branch on it.
        let t = x as i64;
        return t as u64 + (x - t as f64 >= 0.5) as u64;
    }
    let t = x as u64;
    if x - t as f64 >= 0.5 { t + 1 } else { t }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rounding_without_libm_matches_f64_round() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut values = vec![
            0.0,
            0.5,
            1.5,
            2.5,
            0.49999999999999994,
            4503599627370495.5,
            1e18,
            // Either side of 2^63, where the signed fast path ends.
            9223372036854774784.0,
            9223372036854775808.0,
            1.5e19,
        ];
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bits = (x >> 12) | 0x3ff0_0000_0000_0000;
            let unit = f64::from_bits(bits) - 1.0;
            values.push(unit * 10f64.powi((x % 19) as i32));
        }
        for v in values {
            assert_eq!(round_non_negative(v), v.round() as u64, "{v}");
        }
    }

    use super::*;

    #[test]
    fn parses_human_durations() {
        assert_eq!(SimDuration::parse("250ms").unwrap().0, 250_000_000);
        assert_eq!(SimDuration::parse("1.5s").unwrap().0, 1_500_000_000);
        assert_eq!(SimDuration::parse("6m").unwrap().0, 360 * NANOS_PER_SEC);
        assert_eq!(SimDuration::parse("1h").unwrap().0, 3600 * NANOS_PER_SEC);
        assert_eq!(SimDuration::parse("750us").unwrap().0, 750_000);
        assert_eq!(SimDuration::parse("0.25").unwrap().0, 250_000_000);
        assert!(SimDuration::parse("fast").is_err());
        assert!(SimDuration::parse("10 parsecs").is_err());
        assert!(SimDuration::parse("").is_err());
        assert!(SimDuration::parse("-5s").is_err());
        // Well formed but past u64 nanoseconds: said so, not "not a duration".
        let e = SimDuration::parse("3000000d").unwrap_err().to_string();
        assert!(e.contains("too long") && e.contains("213,500 days"), "{e}");
        assert!(SimDuration::parse("200000d").is_ok());
        let e = SimDuration::parse("fast").unwrap_err().to_string();
        assert!(e.contains("not a duration"), "{e}");
    }

    #[test]
    fn prints_and_round_trips() {
        for s in [
            "250ms", "1.5s", "6m", "1h", "90s", "1.25ms", "17ns", "0s", "2.5h",
        ] {
            let d = SimDuration::parse(s).unwrap();
            let printed = d.to_string();
            assert_eq!(SimDuration::parse(&printed).unwrap(), d, "{s} -> {printed}");
        }
        assert_eq!(SimDuration::parse("1.5s").unwrap().to_string(), "1.5s");
        assert_eq!(SimDuration::parse("250ms").unwrap().to_string(), "250ms");
        assert_eq!(SimDuration::parse("90m").unwrap().to_string(), "1.5h");
        assert_eq!(SimDuration::parse("1h").unwrap().to_string(), "1h");
    }
}

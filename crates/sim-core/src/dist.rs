//! Distributions as written in scenario files, and their samplers.
//!
//! Values are plain numbers in the quantity's unit (seconds for times, tokens for token
//! counts). Time values may also be written as duration strings ("800ms"), which are
//! converted to seconds.

use crate::time::SimDuration;
use rand::{Rng, RngExt};
use rand_distr::{Distribution, Exp1, Gamma, LogNormal, Normal};
use serde::{Deserialize, Deserializer};

/// A number, or a duration string converted to seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Num(pub f64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(i) => Ok(Num(i as f64)),
            Raw::Float(x) => Ok(Num(x)),
            Raw::Text(t) => SimDuration::parse(&t)
                .map(|d| Num(d.as_secs_f64()))
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Deserializes a distribution of counts (tokens, branches, review minutes), whose
/// parameters must be plain numbers: a duration string such as "2m" would otherwise be
/// read as 120 (seconds) tokens or minutes. Used with `deserialize_with`.
pub fn counts<'de, D: Deserializer<'de>>(d: D) -> Result<DistSpec, D::Error> {
    let v = toml::Value::deserialize(d)?;
    if let Some(t) = v.as_table() {
        for (k, x) in t {
            let text = match x {
                toml::Value::String(s) => Some(s.as_str()),
                toml::Value::Array(a) => a.iter().find_map(|e| e.as_str()),
                _ => None,
            };
            if let (Some(s), false) = (
                text,
                matches!(k.as_str(), "dist" | "csv" | "file" | "column"),
            ) {
                return Err(serde::de::Error::custom(format!(
                    "`{k}` = \"{s}\": expected a plain number (this distribution counts tokens, branches or minutes, not a duration)"
                )));
            }
        }
    }
    v.try_into().map_err(serde::de::Error::custom)
}

/// [`counts`] for an optional field (with `#[serde(default)]`).
pub fn counts_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DistSpec>, D::Error> {
    counts(d).map(Some)
}

/// z such that Phi(z) = 0.99, for lognormals quoted as (median, p99).
const Z99: f64 = 2.326_347_874_040_841;

/// z such that Phi(z) = 0.999, for [`Sampler::high`].
const Z999: f64 = 3.090_232_306_167_813;

/// A distribution as written in a scenario: `{ dist = "exponential", mean = "100ms" }`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum DistSpec {
    /// Always `value`.
    Constant { value: Num },
    /// Same as constant; the queueing-theory name (M/D/1).
    Deterministic { value: Num },
    /// Uniform on [low, high].
    Uniform { low: Num, high: Num },
    /// Exponential with the given mean.
    Exponential { mean: Num },
    /// Normal, truncated at zero (resampled, not clamped).
    Normal { mean: Num, std: Num },
    /// Lognormal given by its median and 99th percentile, as latencies are quoted.
    Lognormal { median: Num, p99: Num },
    /// Gamma given by mean and coefficient of variation.
    Gamma { mean: Num, cv: f64 },
    /// Uniform choice among the listed values.
    Empirical { values: Vec<Num> },
}

/// A validated, ready-to-draw distribution.
#[derive(Clone, Debug)]
pub enum Sampler {
    Constant(f64),
    Uniform(f64, f64),
    /// (scale of a unit exponential draw, mean): the scale is `1 / (1 / mean)`, exactly
    /// what `rand_distr::Exp::new(1 / mean)` multiplies its unit draw by.
    Exponential(f64, f64),
    Normal(Normal<f64>, f64),
    LogNormal(LogNormal<f64>, f64),
    /// (distribution, mean, shape).
    Gamma(Gamma<f64>, f64, f64),
    Empirical(Vec<f64>, f64),
}

fn finite_nonneg(name: &str, v: f64) -> Result<f64, String> {
    if !v.is_finite() || v < 0.0 {
        Err(format!("`{name}` must be a finite number >= 0, got {v}"))
    } else {
        Ok(v)
    }
}

fn positive(name: &str, v: f64) -> Result<f64, String> {
    if !v.is_finite() || v <= 0.0 {
        Err(format!("`{name}` must be a finite number > 0, got {v}"))
    } else {
        Ok(v)
    }
}

impl DistSpec {
    /// Validates parameters and builds the sampler; the error says which parameter and
    /// what was expected (the caller adds the key path).
    pub fn sampler(&self) -> Result<Sampler, String> {
        Ok(match self {
            DistSpec::Constant { value } | DistSpec::Deterministic { value } => {
                Sampler::Constant(finite_nonneg("value", value.0)?)
            }
            DistSpec::Uniform { low, high } => {
                let lo = finite_nonneg("low", low.0)?;
                let hi = finite_nonneg("high", high.0)?;
                if hi < lo {
                    return Err(format!("`high` ({hi}) must be >= `low` ({lo})"));
                }
                Sampler::Uniform(lo, hi)
            }
            DistSpec::Exponential { mean } => {
                let m = positive("mean", mean.0)?;
                let lambda = 1.0 / m;
                Sampler::Exponential(1.0 / lambda, m)
            }
            DistSpec::Normal { mean, std } => {
                let m = finite_nonneg("mean", mean.0)?;
                let s = finite_nonneg("std", std.0)?;
                let n = Normal::new(m, s).map_err(|e| e.to_string())?;
                Sampler::Normal(n, truncated_normal_mean(m, s))
            }
            DistSpec::Lognormal { median, p99 } => {
                let med = positive("median", median.0)?;
                let q = positive("p99", p99.0)?;
                if q < med {
                    return Err(format!("`p99` ({q}) must be >= `median` ({med})"));
                }
                let sigma = (q.ln() - med.ln()) / Z99;
                let ln = LogNormal::new(med.ln(), sigma).map_err(|e| e.to_string())?;
                Sampler::LogNormal(ln, med * (sigma * sigma / 2.0).exp())
            }
            DistSpec::Gamma { mean, cv } => {
                let m = positive("mean", mean.0)?;
                let cv = positive("cv", *cv)?;
                let shape = 1.0 / (cv * cv);
                let g = Gamma::new(shape, m / shape).map_err(|e| e.to_string())?;
                Sampler::Gamma(g, m, shape)
            }
            DistSpec::Empirical { values } => {
                if values.is_empty() {
                    return Err("`values` must list at least one value".into());
                }
                let mut v = Vec::with_capacity(values.len());
                for (i, x) in values.iter().enumerate() {
                    v.push(finite_nonneg(&format!("values[{i}]"), x.0)?);
                }
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                Sampler::Empirical(v, mean)
            }
        })
    }
}

impl Sampler {
    /// Draws one value (never negative).
    #[inline(always)]
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match self {
            Sampler::Constant(v) => *v,
            Sampler::Uniform(lo, hi) => lo + (hi - lo) * rng.random::<f64>(),
            // The unit draw sampled here rather than through `Exp` (the same numbers):
            // it inlines into the caller.
            Sampler::Exponential(scale, _) => {
                let unit: f64 = Exp1.sample(rng);
                unit * scale
            }
            Sampler::Normal(d, _) => {
                // Truncation at zero by rejection; bounded so that a degenerate
                // parameterisation cannot hang a run.
                for _ in 0..1000 {
                    let x = d.sample(rng);
                    if x >= 0.0 {
                        return x;
                    }
                }
                0.0
            }
            Sampler::LogNormal(d, _) => d.sample(rng),
            Sampler::Gamma(d, ..) => d.sample(rng),
            Sampler::Empirical(v, _) => v[rng.random_range(0..v.len())],
        }
    }

    /// Draws a duration, the value being in seconds.
    #[inline]
    pub fn sample_duration<R: Rng + ?Sized>(&self, rng: &mut R) -> SimDuration {
        SimDuration::from_secs_f64(self.sample(rng))
    }

    /// Draws a token count (rounded to the nearest integer).
    #[inline]
    pub fn sample_tokens<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let x = self.sample(rng);
        if x >= u64::MAX as f64 {
            u64::MAX
        } else {
            crate::time::round_non_negative(x)
        }
    }

    /// The largest value a draw can take, where it is finite (constant, uniform,
    /// empirical); `None` for unbounded distributions.
    pub fn max_value(&self) -> Option<f64> {
        match self {
            Sampler::Constant(v) => Some(*v),
            Sampler::Uniform(_, hi) => Some(*hi),
            Sampler::Empirical(v, _) => v.iter().copied().reduce(f64::max),
            Sampler::Exponential(..)
            | Sampler::Normal(..)
            | Sampler::LogNormal(..)
            | Sampler::Gamma(..) => None,
        }
    }

    /// E[X^2] where it has a simple closed form (constant, uniform, exponential,
    /// empirical); `None` otherwise. Used by the M/G/1 (Pollaczek-Khinchine) formula.
    pub fn second_moment(&self) -> Option<f64> {
        match self {
            Sampler::Constant(v) => Some(v * v),
            Sampler::Uniform(lo, hi) => Some((lo * lo + lo * hi + hi * hi) / 3.0),
            Sampler::Exponential(_, m) => Some(2.0 * m * m),
            Sampler::Empirical(v, _) => Some(v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64),
            Sampler::Normal(..) | Sampler::LogNormal(..) | Sampler::Gamma(..) => None,
        }
    }

    /// The distribution's mean (of the truncated normal, for `Normal`).
    pub fn mean(&self) -> f64 {
        match self {
            Sampler::Constant(v) => *v,
            Sampler::Uniform(lo, hi) => (lo + hi) / 2.0,
            Sampler::Exponential(_, m)
            | Sampler::Normal(_, m)
            | Sampler::LogNormal(_, m)
            | Sampler::Gamma(_, m, _)
            | Sampler::Empirical(_, m) => *m,
        }
    }

    /// The largest value a draw can take (constant, uniform, empirical), or about the
    /// 99.9th percentile of an unbounded distribution (exponential: mean x ln 1000;
    /// normal: mean + 3.09 std, before truncation; lognormal: exactly; gamma: the
    /// Wilson-Hilferty approximation). What `check` compares with hard limits such as
    /// a model's context length.
    pub fn high(&self) -> f64 {
        match self {
            Sampler::Constant(v) => *v,
            Sampler::Uniform(_, hi) => *hi,
            Sampler::Empirical(v, _) => v.iter().copied().fold(0.0, f64::max),
            Sampler::Exponential(_, m) => m * 1000f64.ln(),
            Sampler::Normal(d, _) => d.from_zscore(Z999).max(0.0),
            Sampler::LogNormal(d, _) => d.from_zscore(Z999),
            Sampler::Gamma(_, m, k) => {
                let c = 1.0 / (9.0 * k);
                (m * (1.0 - c + Z999 * c.sqrt()).max(0.0).powi(3)).max(0.0)
            }
        }
    }

    /// E[min(round(X), cap)]: the mean of a count drawn as the simulator draws a
    /// fan-out (rounded to the nearest integer) and then capped. Exact for constant and
    /// empirical, by the survival function for uniform, exponential, normal and
    /// lognormal (E[min(R, c)] = sum over k = 1..c of P(X >= k - 1/2), up to a million
    /// terms), and otherwise (gamma, or a tail too long) an average over 65,536 draws of
    /// a fixed stream (deterministic).
    pub fn mean_capped_count(&self, cap: u64) -> f64 {
        let round_cap = |x: f64| crate::time::round_non_negative(x).min(cap) as f64;
        let survival = |x: f64| -> f64 {
            match self {
                Sampler::Uniform(lo, hi) => {
                    if hi <= lo {
                        (x <= *lo) as u8 as f64
                    } else {
                        ((hi - x) / (hi - lo)).clamp(0.0, 1.0)
                    }
                }
                Sampler::Exponential(_, m) => (-x.max(0.0) / m).exp(),
                Sampler::Normal(d, _) => {
                    // Truncated at zero: P(X >= x | X >= 0).
                    let (m, s) = (d.mean(), d.std_dev());
                    let tail = |y: f64| {
                        if s == 0.0 {
                            (m >= y) as u8 as f64
                        } else {
                            0.5 * erfc((y - m) / (s * std::f64::consts::SQRT_2))
                        }
                    };
                    let kept = tail(0.0);
                    if kept <= 0.0 {
                        0.0
                    } else {
                        (tail(x.max(0.0)) / kept).min(1.0)
                    }
                }
                Sampler::LogNormal(d, _) => {
                    if x <= 0.0 {
                        return 1.0;
                    }
                    let (mu, sigma) = ln_params(d);
                    if sigma <= 0.0 {
                        ((mu.exp()) >= x) as u8 as f64
                    } else {
                        0.5 * erfc((x.ln() - mu) / (sigma * std::f64::consts::SQRT_2))
                    }
                }
                _ => 0.0,
            }
        };
        let sampled = || {
            use rand::SeedableRng;
            let mut rng = crate::rng::SimRng::seed_from_u64(0x0066_616e_2d6f_7574);
            let n = 1 << 16;
            (0..n)
                .map(|_| round_cap(self.sample(&mut rng)))
                .sum::<f64>()
                / n as f64
        };
        match self {
            Sampler::Constant(v) => round_cap(*v),
            Sampler::Empirical(v, _) => {
                v.iter().map(|&x| round_cap(x)).sum::<f64>() / v.len() as f64
            }
            Sampler::Gamma(..) => sampled(),
            _ => {
                // At most a million terms: a heavy lognormal tail under a huge cap would
                // take billions, and there the rounding no longer matters, so
                // E[min(X, c)] of the continuous lognormal is taken instead.
                let mut sum = 0.0;
                for k in 1..=cap {
                    let p = survival(k as f64 - 0.5);
                    if p < 1e-12 {
                        return sum;
                    }
                    if k > 1_000_000
                        && let Sampler::LogNormal(d, mean) = self
                    {
                        let (mu, sigma) = ln_params(d);
                        let phi = |z: f64| 1.0 - 0.5 * erfc(z / std::f64::consts::SQRT_2);
                        let c = cap as f64;
                        return mean * phi((c.ln() - mu - sigma * sigma) / sigma)
                            + c * (1.0 - phi((c.ln() - mu) / sigma));
                    }
                    sum += p;
                }
                sum
            }
        }
    }

    /// E[X^2] of any distribution: [`Sampler::second_moment`] where it has one, the
    /// closed forms of the lognormal (mean^2 e^(sigma^2)) and the gamma (mean^2 (1 +
    /// 1/shape)), and mean^2 for the truncated normal (no simple form; a lower bound).
    /// (`second_moment` stays narrower: it decides where `check` prints M/G/1 theory.)
    pub fn mean_square(&self) -> f64 {
        let m = self.mean();
        match self {
            Sampler::LogNormal(d, _) => {
                let (_, sigma) = ln_params(d);
                m * m * (sigma * sigma).exp()
            }
            Sampler::Gamma(_, _, shape) if *shape > 0.0 => m * m * (1.0 + 1.0 / shape),
            _ => self.second_moment().unwrap_or(m * m),
        }
    }

    /// Squared coefficient of variation, where known in closed form.
    pub fn scv(&self) -> Option<f64> {
        match self {
            Sampler::Constant(_) => Some(0.0),
            Sampler::Exponential(..) => Some(1.0),
            Sampler::Uniform(lo, hi) => {
                let m = (lo + hi) / 2.0;
                (m > 0.0).then(|| (hi - lo).powi(2) / 12.0 / (m * m))
            }
            _ => None,
        }
    }
}

/// (mu, sigma) of a lognormal: `from_zscore(0)` is its median e^mu, `from_zscore(1)`
/// the median x e^sigma.
fn ln_params(d: &LogNormal<f64>) -> (f64, f64) {
    let mu = d.from_zscore(0.0).ln();
    (mu, d.from_zscore(1.0).ln() - mu)
}

/// Mean of N(m, s^2) truncated to [0, inf).
fn truncated_normal_mean(m: f64, s: f64) -> f64 {
    if s == 0.0 {
        return m;
    }
    let alpha = -m / s;
    let pdf = (-alpha * alpha / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let tail = 0.5 * erfc(alpha / std::f64::consts::SQRT_2);
    if tail <= 0.0 { m } else { m + s * pdf / tail }
}

/// Complementary error function (Numerical Recipes' erfcc, relative error < 1.2e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::StreamFactory;

    fn parse(s: &str) -> DistSpec {
        #[derive(Deserialize)]
        struct W {
            d: DistSpec,
        }
        toml::from_str::<W>(&format!("d = {s}")).unwrap().d
    }

    #[test]
    fn capped_count_means_match_capped_rounded_draws() {
        // E[min(round(X), cap)] as a fan-out draws it, against 200,000 draws.
        let cases = [
            (r#"{ dist = "exponential", mean = 6.0 }"#, 4),
            (r#"{ dist = "uniform", low = 2, high = 6 }"#, 5),
            (r#"{ dist = "normal", mean = 3.0, std = 2.0 }"#, 4),
            (r#"{ dist = "lognormal", median = 4, p99 = 30 }"#, 6),
            (r#"{ dist = "gamma", mean = 5.0, cv = 0.8 }"#, 5),
            (r#"{ dist = "empirical", values = [1, 2, 9] }"#, 3),
            (r#"{ dist = "constant", value = 7.6 }"#, 100),
        ];
        for (text, cap) in cases {
            let s = parse(text).sampler().unwrap();
            let mut rng = StreamFactory::new(2).stream(text);
            let n = 200_000;
            let mean = (0..n)
                .map(|_| s.sample_tokens(&mut rng).min(cap) as f64)
                .sum::<f64>()
                / n as f64;
            let got = s.mean_capped_count(cap);
            // The capped count's standard deviation is at most cap / 2: 5 sigma.
            let tol = 5.0 * cap.min(10) as f64 / 2.0 / (n as f64).sqrt();
            assert!((got - mean).abs() < tol, "{text}: {got} vs {mean}");
            assert!(got <= cap as f64 && got <= s.mean() + 0.5, "{text}: {got}");
        }
        // E[X^2] in closed form against the draws (within 2%).
        for text in [
            r#"{ dist = "lognormal", median = 4, p99 = 30 }"#,
            r#"{ dist = "gamma", mean = 5.0, cv = 0.8 }"#,
            r#"{ dist = "uniform", low = 2, high = 6 }"#,
        ] {
            let s = parse(text).sampler().unwrap();
            let mut rng = StreamFactory::new(3).stream(text);
            let n = 400_000;
            let sq = (0..n).map(|_| s.sample(&mut rng).powi(2)).sum::<f64>() / n as f64;
            assert!((s.mean_square() / sq - 1.0).abs() < 0.02, "{text}: {sq}");
        }
        // A tail too long to sum under a huge cap (sigma 3.96): past a million terms the
        // continuous lognormal's E[min(X, c)] is taken. At a cap of 1,000,001 it must
        // agree with the million-term sum at 1,000,000 (rounding moves it by under 0.5).
        let s = parse(r#"{ dist = "lognormal", median = 1, p99 = 10000 }"#)
            .sampler()
            .unwrap();
        let (summed, closed) = (
            s.mean_capped_count(1_000_000),
            s.mean_capped_count(1_000_001),
        );
        assert!((summed - closed).abs() < 0.5, "{summed} vs {closed}");
        let huge = s.mean_capped_count(1_000_000_000);
        assert!(
            closed < huge && huge < s.mean(),
            "{closed} {huge} {}",
            s.mean()
        );
    }

    #[test]
    fn sample_means_match() {
        let cases = [
            (r#"{ dist = "exponential", mean = "100ms" }"#, 0.1),
            (r#"{ dist = "constant", value = 3 }"#, 3.0),
            (r#"{ dist = "uniform", low = 1, high = 3 }"#, 2.0),
            (r#"{ dist = "gamma", mean = 5.0, cv = 0.5 }"#, 5.0),
            (r#"{ dist = "lognormal", median = "1s", p99 = "5s" }"#, 0.0),
            (r#"{ dist = "normal", mean = 1.0, std = 1.0 }"#, 0.0),
            (r#"{ dist = "empirical", values = [1, 2, 6] }"#, 3.0),
        ];
        for (text, expected) in cases {
            let s = parse(text).sampler().unwrap();
            let mut rng = StreamFactory::new(1).stream(text);
            let n = 200_000;
            let mean = (0..n).map(|_| s.sample(&mut rng)).sum::<f64>() / n as f64;
            let want = if expected == 0.0 { s.mean() } else { expected };
            assert!(
                (mean - want).abs() / want < 0.01,
                "{text}: sample mean {mean} vs {want}"
            );
        }
    }

    #[test]
    fn lognormal_hits_its_quoted_p99() {
        let s = parse(r#"{ dist = "lognormal", median = "200ms", p99 = "2s" }"#)
            .sampler()
            .unwrap();
        let mut rng = StreamFactory::new(9).stream("ln");
        let mut v: Vec<f64> = (0..100_000).map(|_| s.sample(&mut rng)).collect();
        v.sort_by(f64::total_cmp);
        assert!((v[50_000] - 0.2).abs() < 0.01, "median {}", v[50_000]);
        assert!((v[99_000] - 2.0).abs() < 0.15, "p99 {}", v[99_000]);
    }

    #[test]
    fn high_is_the_maximum_or_the_999th_percentile() {
        let exact = [
            (r#"{ dist = "constant", value = 7 }"#, 7.0),
            (r#"{ dist = "uniform", low = 1, high = 3 }"#, 3.0),
            (r#"{ dist = "empirical", values = [5, 9, 2] }"#, 9.0),
            // 100 x ln 1000
            (
                r#"{ dist = "exponential", mean = 100 }"#,
                690.775_527_898_213_7,
            ),
        ];
        for (text, want) in exact {
            let h = parse(text).sampler().unwrap().high();
            assert!((h - want).abs() < 1e-9, "{text}: {h} vs {want}");
        }
        // Unbounded: within 3% of the sampled 99.9th percentile.
        for text in [
            r#"{ dist = "exponential", mean = 100 }"#,
            r#"{ dist = "normal", mean = 1000, std = 200 }"#,
            r#"{ dist = "lognormal", median = 600, p99 = 3000 }"#,
            r#"{ dist = "gamma", mean = 500, cv = 0.8 }"#,
        ] {
            let s = parse(text).sampler().unwrap();
            let mut rng = StreamFactory::new(3).stream(text);
            let mut v: Vec<f64> = (0..400_000).map(|_| s.sample(&mut rng)).collect();
            v.sort_by(f64::total_cmp);
            let q = v[399_600];
            assert!(
                (s.high() / q - 1.0).abs() < 0.03,
                "{text}: high {} vs sampled p99.9 {q}",
                s.high()
            );
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = parse(r#"{ dist = "exponential", mean = -1 }"#)
            .sampler()
            .unwrap_err();
        assert!(e.contains("mean"), "{e}");
        let e = parse(r#"{ dist = "lognormal", median = 2, p99 = 1 }"#)
            .sampler()
            .unwrap_err();
        assert!(e.contains("p99"), "{e}");
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct W {
            d: DistSpec,
        }
        let e = toml::from_str::<W>(r#"d = { dist = "exponential", meen = 1 }"#).unwrap_err();
        assert!(e.to_string().contains("meen"), "{e}");
    }
}

//! Fitting a workload profile to a trace and writing it as a scenario fragment.
//!
//! Arrivals: `{ process = "piecewise", step = "1h", rates = [...] }` (per-second rates
//! of consecutive steps from the trace start, the list repeating) when the trace covers
//! at least two steps, else `{ process = "poisson", rate = R }` with R one over the
//! mean inter-arrival time. Token counts: `{ dist = "empirical", values = [...] }`
//! with at most `max_values` values, each the mean of an equal-count slice of the
//! sorted data (so the distribution's mean equals the trace's mean up to rounding to
//! whole tokens), or `{ dist = "lognormal", median = p50, p99 = p99 }`.

use crate::stats::{ClassStats, RequestStats, SpanStats, quantile};
use sim_core::dist::{DistSpec, Num};
use std::fmt::Write;

/// Which distribution family to write for token counts and latencies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DistFamily {
    #[default]
    Empirical,
    Lognormal,
}

/// Fitting options.
#[derive(Clone, Debug, PartialEq)]
pub struct FitOptions {
    /// Piecewise arrival step (ns); also the step of the stats' rate table.
    pub step_ns: u64,
    /// At most this many values in an empirical distribution.
    pub max_values: usize,
    pub family: DistFamily,
    /// Class name for request traces (span traces use their own class names).
    pub class_name: String,
    /// The pool named by the fragment's LLM node (edit to match the scenario).
    pub pool: String,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            step_ns: crate::stats::DEFAULT_STEP_NS,
            max_values: 200,
            family: DistFamily::Empirical,
            class_name: "fitted".into(),
            pool: "llm".into(),
        }
    }
}

/// A fitted arrival process.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrivalFit {
    Poisson { rate: f64 },
    Piecewise { step_s: f64, rates: Vec<f64> },
}

impl ArrivalFit {
    /// The long-run mean rate per second.
    pub fn mean_rate(&self) -> f64 {
        match self {
            ArrivalFit::Poisson { rate } => *rate,
            ArrivalFit::Piecewise { rates, .. } => {
                if rates.is_empty() {
                    0.0
                } else {
                    rates.iter().sum::<f64>() / rates.len() as f64
                }
            }
        }
    }
}

/// Agent-workflow figures fitted from span traces.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentFit {
    /// Children per span that has children.
    pub fanout: Option<DistSpec>,
    /// LLM hops per workflow.
    pub llm_hops: Option<DistSpec>,
    /// Tool latency in seconds.
    pub tool_latency: Option<DistSpec>,
    pub retry_probability: f64,
    pub shared_prefix_share: f64,
    /// Mean input-token growth from an LLM hop to its LLM child.
    pub context_growth_tokens: f64,
}

/// One fitted workflow class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassFit {
    pub name: String,
    pub arrival: ArrivalFit,
    /// Inter-arrival CV of the source (reported; the arrival spec is Poisson within a
    /// step, CV 1).
    pub interarrival_cv: f64,
    pub input_tokens: DistSpec,
    pub output_tokens: DistSpec,
    pub agent: Option<AgentFit>,
    /// Rows (requests, or workflows) behind the fit.
    pub rows: u64,
    pub duration_s: f64,
}

/// A fitted profile: what `factorysim fit` writes.
#[derive(Clone, Debug, PartialEq)]
pub struct FitProfile {
    pub source: String,
    /// The pool the fragment's LLM nodes name.
    pub pool: String,
    pub classes: Vec<ClassFit>,
}

/// At most `m` values: the means of `m` equal-count slices of `sorted` (all values if
/// there are no more than `m`), rounded to `decimals`.
pub fn downsample(sorted: &[f64], m: usize, decimals: i32) -> Vec<f64> {
    let scale = 10f64.powi(decimals);
    let round = |x: f64| (x * scale).round() / scale;
    let n = sorted.len();
    if n <= m.max(1) {
        return sorted.iter().map(|&x| round(x)).collect();
    }
    let m = m.max(1);
    (0..m)
        .map(|i| {
            let a = i * n / m;
            let b = ((i + 1) * n / m).max(a + 1);
            round(sorted[a..b].iter().sum::<f64>() / (b - a) as f64)
        })
        .collect()
}

fn dist(sorted: &[f64], opts: &FitOptions, decimals: i32) -> Option<DistSpec> {
    if sorted.is_empty() {
        return None;
    }
    Some(match opts.family {
        DistFamily::Empirical => DistSpec::Empirical {
            values: downsample(sorted, opts.max_values, decimals)
                .into_iter()
                .map(Num)
                .collect(),
        },
        DistFamily::Lognormal => {
            // The sampler needs 0 < median <= p99.
            let median = quantile(sorted, 0.5).max(1e-9);
            let p99 = quantile(sorted, 0.99).max(median);
            DistSpec::Lognormal {
                median: Num(median),
                p99: Num(p99),
            }
        }
    })
}

fn token_dist(sorted: &[f64], opts: &FitOptions) -> DistSpec {
    dist(sorted, opts, 0).unwrap_or(DistSpec::Constant { value: Num(0.0) })
}

fn arrival_fit(a: &crate::stats::ArrivalStats) -> ArrivalFit {
    if a.rate_by_step.len() >= 2 && a.duration_s >= 2.0 * a.step_s {
        ArrivalFit::Piecewise {
            step_s: a.step_s,
            rates: a.rate_by_step.clone(),
        }
    } else {
        ArrivalFit::Poisson {
            rate: a.mean_rate_per_s,
        }
    }
}

/// Fits one class to a request trace's statistics.
pub fn fit_requests(stats: &RequestStats, source: &str, opts: &FitOptions) -> FitProfile {
    FitProfile {
        source: source.to_string(),
        pool: opts.pool.clone(),
        classes: vec![ClassFit {
            name: opts.class_name.clone(),
            arrival: arrival_fit(&stats.arrivals),
            interarrival_cv: stats.arrivals.interarrival_cv,
            input_tokens: token_dist(&stats.input_sorted, opts),
            output_tokens: token_dist(&stats.output_sorted, opts),
            agent: None,
            rows: stats.arrivals.rows,
            duration_s: stats.arrivals.duration_s,
        }],
    }
}

fn fit_class(c: &ClassStats, opts: &FitOptions) -> ClassFit {
    let tool_s: Vec<f64> = c.tool_latency_sorted_ms.iter().map(|ms| ms / 1e3).collect();
    ClassFit {
        name: c.class.clone(),
        arrival: arrival_fit(&c.arrivals),
        interarrival_cv: c.arrivals.interarrival_cv,
        input_tokens: token_dist(&c.input_sorted, opts),
        output_tokens: token_dist(&c.output_sorted, opts),
        agent: Some(AgentFit {
            fanout: dist(&c.fanout_sorted, opts, 0),
            llm_hops: dist(&c.llm_hops_sorted, opts, 0),
            tool_latency: dist(&tool_s, opts, 4),
            retry_probability: c.retry_rate,
            shared_prefix_share: c.shared_prefix_share,
            context_growth_tokens: c.context_growth.mean,
        }),
        rows: c.workflows,
        duration_s: c.arrivals.duration_s,
    }
}

/// Fits every workflow class of a span trace.
pub fn fit_spans(stats: &SpanStats, source: &str, opts: &FitOptions) -> FitProfile {
    FitProfile {
        source: source.to_string(),
        pool: opts.pool.clone(),
        classes: stats.classes.values().map(|c| fit_class(c, opts)).collect(),
    }
}

/// A number for TOML: integers without a fraction, others to 6 significant digits.
fn num(x: f64) -> String {
    if !x.is_finite() {
        return "0".into();
    }
    if x == x.trunc() && x.abs() < 1e15 {
        return format!("{}", x as i64);
    }
    let digits = (6 - 1 - x.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{x:.digits$}");
    let s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// A distribution as an inline TOML table, in `DistSpec`'s format.
pub fn dist_toml(d: &DistSpec) -> String {
    match d {
        DistSpec::Empirical { values } => {
            let v: Vec<String> = values.iter().map(|x| num(x.0)).collect();
            format!("{{ dist = \"empirical\", values = [{}] }}", v.join(", "))
        }
        DistSpec::Lognormal { median, p99 } => format!(
            "{{ dist = \"lognormal\", median = {}, p99 = {} }}",
            num(median.0),
            num(p99.0)
        ),
        DistSpec::Constant { value } | DistSpec::Deterministic { value } => {
            format!("{{ dist = \"constant\", value = {} }}", num(value.0))
        }
        DistSpec::Uniform { low, high } => format!(
            "{{ dist = \"uniform\", low = {}, high = {} }}",
            num(low.0),
            num(high.0)
        ),
        DistSpec::Exponential { mean } => {
            format!("{{ dist = \"exponential\", mean = {} }}", num(mean.0))
        }
        DistSpec::Normal { mean, std } => format!(
            "{{ dist = \"normal\", mean = {}, std = {} }}",
            num(mean.0),
            num(std.0)
        ),
        DistSpec::Gamma { mean, cv } => format!(
            "{{ dist = \"gamma\", mean = {}, cv = {} }}",
            num(mean.0),
            num(*cv)
        ),
    }
}

/// A duration in seconds as a scenario duration string ("1h", "90s").
fn duration_str(s: f64) -> String {
    if s >= 3600.0 && s % 3600.0 == 0.0 {
        format!("{}h", (s / 3600.0) as u64)
    } else if s >= 60.0 && s % 60.0 == 0.0 {
        format!("{}m", (s / 60.0) as u64)
    } else {
        format!("{}s", num(s))
    }
}

/// The arrival spec as an inline TOML table.
pub fn arrival_toml(a: &ArrivalFit) -> String {
    match a {
        ArrivalFit::Poisson { rate } => {
            format!("{{ process = \"poisson\", rate = {} }}", num(*rate))
        }
        ArrivalFit::Piecewise { step_s, rates } => {
            let r: Vec<String> = rates.iter().map(|x| num(*x)).collect();
            format!(
                "{{ process = \"piecewise\", step = \"{}\", rates = [{}] }}",
                duration_str(*step_s),
                r.join(", ")
            )
        }
    }
}

/// A TOML bare key, or a quoted one.
fn key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

impl FitProfile {
    /// The scenario fragment: per class a `[classes.NAME]` table with the arrival
    /// spec and one LLM node carrying the token distributions (per LLM hop for span
    /// traces); agent figures of span traces follow as comments.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Fitted by `factorysim fit` from {}.", self.source);
        let _ = writeln!(
            out,
            "# Merge into a scenario that defines pool `{}` (or edit `pool`).",
            self.pool
        );
        for c in &self.classes {
            let name = key(&c.name);
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "# {} rows over {} s; mean rate {}/s; inter-arrival CV {} (1 = Poisson, > 1 burstier).",
                c.rows,
                num(c.duration_s),
                num(if c.duration_s > 0.0 && c.rows > 1 {
                    (c.rows - 1) as f64 / c.duration_s
                } else {
                    c.arrival.mean_rate()
                }),
                num(c.interarrival_cv)
            );
            if let Some(a) = &c.agent {
                let _ = writeln!(
                    out,
                    "# Agent profile of this class (per workflow / per hop):"
                );
                if let Some(d) = &a.llm_hops {
                    let _ = writeln!(out, "#   llm_hops = {}", dist_toml(d));
                }
                if let Some(d) = &a.fanout {
                    let _ = writeln!(out, "#   fan_out count = {}", dist_toml(d));
                }
                if let Some(d) = &a.tool_latency {
                    let _ = writeln!(out, "#   tool latency (s) = {}", dist_toml(d));
                }
                let _ = writeln!(
                    out,
                    "#   retry probability = {}, shared-prefix share = {}, context growth per hop = {} tokens",
                    num(a.retry_probability),
                    num(a.shared_prefix_share),
                    num(a.context_growth_tokens)
                );
            }
            let _ = writeln!(out, "[classes.{name}]");
            let _ = writeln!(out, "arrival = {}", arrival_toml(&c.arrival));
            let _ = writeln!(out);
            let _ = writeln!(out, "[[classes.{name}.nodes]]");
            let _ = writeln!(out, "id = \"call\"");
            let _ = writeln!(out, "pool = {:?}", self.pool);
            let _ = writeln!(out, "input_tokens = {}", dist_toml(&c.input_tokens));
            let _ = writeln!(out, "output_tokens = {}", dist_toml(&c.output_tokens));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsample_keeps_the_mean() {
        let v: Vec<f64> = (1..=1000).map(|x| (x * x) as f64).collect();
        let d = downsample(&v, 200, 6);
        assert_eq!(d.len(), 200);
        let m1 = v.iter().sum::<f64>() / v.len() as f64;
        let m2 = d.iter().sum::<f64>() / d.len() as f64;
        assert!((m1 - m2).abs() / m1 < 1e-9, "{m1} {m2}");
        assert_eq!(downsample(&[3.0, 1.0], 200, 0), vec![3.0, 1.0]);
    }

    #[test]
    fn numbers_print_cleanly() {
        assert_eq!(num(3.0), "3");
        assert_eq!(num(5.531234567), "5.53123");
        assert_eq!(num(0.000123456789), "0.000123457");
        assert_eq!(duration_str(3600.0), "1h");
        assert_eq!(duration_str(90.0), "90s");
    }
}

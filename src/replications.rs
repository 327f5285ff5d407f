//! Independent replications (`factorysim run --replications N`): N runs with seeds
//! `seed, seed + 1, ...`, run in parallel with rayon and collected in input order, and
//! the mean and 95% Student-t confidence interval of every headline figure.

use rayon::prelude::*;
use serde::Serialize;
use sim_core::metrics::RunResult;
use sim_core::{Scenario, Summary};
use std::collections::BTreeMap;

/// Runs `n` replications of `sc` with seeds `sc.seed + i` (wrapping), in parallel,
/// returned in seed order whatever the thread count. `on_done` is called after each run.
/// With `keep_first_workflows`, the first replication keeps its per-workflow records
/// (`RunResult::workflows`, what `--workflows-csv` writes).
pub fn run_replications(
    sc: &Scenario,
    n: u32,
    keep_first_workflows: bool,
    on_done: &(dyn Fn() + Sync),
) -> Vec<RunResult> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            let mut s = sc.clone();
            s.seed = sc.seed.wrapping_add(i as u64);
            let r = crate::simulate_with(&s, None, None, keep_first_workflows && i == 0);
            on_done();
            r
        })
        .collect()
}

/// Mean and 95% confidence interval of one figure across replications.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    /// Half-width of the 95% Student-t interval: t(0.975, n-1) x s / sqrt(n). `null`
    /// with fewer than two values.
    pub ci95: Option<f64>,
    /// Replications that had the figure (a percentile needs a completed workflow).
    pub n: u32,
}

impl Estimate {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Estimate> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let ci95 = (n >= 2).then(|| {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            student_t_975(n as u32 - 1) * (var / n as f64).sqrt()
        });
        Some(Estimate {
            mean,
            ci95,
            n: n as u32,
        })
    }
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (two-sided 95%).
/// Exact table to 30 degrees of freedom, then the Cornish-Fisher expansion (error below
/// 1e-4).
pub fn student_t_975(df: u32) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df as usize - 1],
        _ => {
            let z: f64 = 1.959964;
            let v = df as f64;
            z + (z.powi(3) + z) / (4.0 * v)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
                + (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z)
                    / (384.0 * v.powi(3))
        }
    }
}

/// `replications` in summary.json.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Replications {
    pub count: u32,
    /// Seeds used, in order; the single-run keys of summary.json are from the first.
    pub seeds: Vec<u64>,
    pub confidence: f64,
    pub classes: BTreeMap<String, ClassEstimates>,
    pub pools: BTreeMap<String, PoolEstimates>,
    pub totals: TotalEstimates,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassEstimates {
    pub latency_s: LatencyEstimates,
    /// Mean cost of a successful workflow (`classes.<name>.usd_per_outcome.mean`).
    pub usd_per_outcome: Option<Estimate>,
    /// completed / decided (not in flight).
    pub success_rate: Option<Estimate>,
    pub slo_attainment: Option<Estimate>,
    /// Error-budget burn rate (`classes.<name>.slo_burn_rate`).
    pub slo_burn_rate: Option<Estimate>,
    /// p95 cost of a successful workflow (`classes.<name>.usd_per_outcome.p95`).
    pub usd_per_outcome_p95: Option<Estimate>,
    /// Waste dollars: failed + abandoned + rejected + after outcome (the class's share
    /// of `totals.usd_waste`).
    pub usd_waste: Option<Estimate>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LatencyEstimates {
    pub p50: Option<Estimate>,
    pub p95: Option<Estimate>,
    pub p99: Option<Estimate>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PoolEstimates {
    pub utilization: Option<Estimate>,
    /// Idle capacity dollars (`pools.<name>.usd_idle`).
    pub usd_idle: Option<Estimate>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TotalEstimates {
    /// Fully loaded $/outcome (`totals.usd_per_outcome`).
    pub usd_per_outcome: Option<Estimate>,
    /// Everything spent (`totals.usd_spent`).
    pub usd_spent: Option<Estimate>,
    /// Idle capacity (`totals.usd_idle`).
    pub usd_idle: Option<Estimate>,
    /// Waste over all classes (`totals.usd_waste`).
    pub usd_waste: Option<Estimate>,
}

/// A class's waste dollars: failed + abandoned + rejected + after outcome.
pub fn usd_waste(c: &sim_core::metrics::ClassSummary) -> f64 {
    let w = &c.usd_waste;
    w.failed + w.abandoned + w.rejected + w.after_outcome
}

/// Success rate of a class: completed / decided.
pub fn success_rate(c: &sim_core::metrics::ClassSummary) -> Option<f64> {
    let decided = c.completed + c.failed + c.rejected + c.abandoned;
    (decided > 0).then(|| c.completed as f64 / decided as f64)
}

/// Estimates over the summaries of independent replications (in seed order).
pub fn estimate(summaries: &[Summary]) -> Replications {
    let est = |f: &dyn Fn(&Summary) -> Option<f64>| {
        let v: Vec<f64> = summaries.iter().filter_map(f).collect();
        Estimate::of(&v)
    };
    let mut classes = BTreeMap::new();
    let mut pools = BTreeMap::new();
    if let Some(first) = summaries.first() {
        for name in first.classes.keys() {
            let c = |s: &Summary| s.classes.get(name).cloned();
            classes.insert(
                name.clone(),
                ClassEstimates {
                    latency_s: LatencyEstimates {
                        p50: est(&|s| c(s).and_then(|c| c.latency_s.p50)),
                        p95: est(&|s| c(s).and_then(|c| c.latency_s.p95)),
                        p99: est(&|s| c(s).and_then(|c| c.latency_s.p99)),
                    },
                    usd_per_outcome: est(&|s| c(s).and_then(|c| c.usd_per_outcome.mean)),
                    success_rate: est(&|s| c(s).as_ref().and_then(success_rate)),
                    slo_attainment: est(&|s| c(s).and_then(|c| c.slo_attainment)),
                    slo_burn_rate: est(&|s| c(s).and_then(|c| c.slo_burn_rate)),
                    usd_per_outcome_p95: est(&|s| c(s).and_then(|c| c.usd_per_outcome.p95)),
                    usd_waste: est(&|s| c(s).as_ref().map(usd_waste)),
                },
            );
        }
        for name in first.pools.keys() {
            pools.insert(
                name.clone(),
                PoolEstimates {
                    utilization: est(&|s| s.pools.get(name).map(|p| p.utilization)),
                    usd_idle: est(&|s| s.pools.get(name).map(|p| p.usd_idle)),
                },
            );
        }
    }
    Replications {
        count: summaries.len() as u32,
        seeds: summaries.iter().map(|s| s.seed).collect(),
        confidence: 0.95,
        classes,
        pools,
        totals: TotalEstimates {
            usd_per_outcome: est(&|s| s.totals.usd_per_outcome),
            usd_spent: est(&|s| Some(s.totals.usd_spent)),
            usd_idle: est(&|s| Some(s.totals.usd_idle)),
            usd_waste: est(&|s| Some(s.totals.usd_waste)),
        },
    }
}

/// summary.json: the single-run summary, plus `replications` when there were several.
#[derive(Serialize)]
pub struct SummaryDoc<'a> {
    #[serde(flatten)]
    pub summary: &'a Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replications: Option<&'a Replications>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles() {
        assert_eq!(student_t_975(1), 12.706);
        assert_eq!(student_t_975(30), 2.042);
        // Reference values: t(0.975, 40) = 2.0211, 60 -> 2.0003, 120 -> 1.9799.
        for (df, t) in [(40, 2.0211), (60, 2.0003), (120, 1.9799), (100_000, 1.96)] {
            assert!(
                (student_t_975(df) - t).abs() < 2e-4,
                "{df}: {}",
                student_t_975(df)
            );
        }
    }

    #[test]
    fn estimate_of_known_values() {
        // mean 2, sample sd 1, n = 3: half-width = 4.303 / sqrt(3).
        let e = Estimate::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(e.mean, 2.0);
        assert!((e.ci95.unwrap() - 4.303 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(Estimate::of(&[5.0]).unwrap().ci95, None);
        assert_eq!(Estimate::of(&[]), None);
    }
}

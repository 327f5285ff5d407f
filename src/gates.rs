//! Promotion gates for `factorysim compare --gate`: would each variant pass the checks a
//! canary must pass before promotion ("p99 within 10%, $/outcome within 5%, error rate
//! no worse"), judged per class on the paired differences to the baseline?
//!
//! A gate passes when even the pessimistic end of the 95% interval of the change is
//! within its limit, fails when even the optimistic end is beyond it, and is
//! inconclusive otherwise (more seeds would decide). With one seed there is no interval:
//! the point estimate decides, and the verdict says so.

use crate::compare::{Comparison, PairedDiff, RunFigures};
use crate::replications::{Estimate, student_t_975};
use serde::Serialize;

/// What a gate limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMetric {
    /// Each class's p99 workflow latency, relative change.
    P99,
    /// Each class's mean cost per successful workflow, relative change.
    UsdPerOutcome,
    /// Each class's error rate (1 - success rate), change in percentage points.
    ErrorRate,
    /// The factory's all-in cost per outcome (idle capacity included), relative change;
    /// one verdict per variant (class `all`).
    AllInUsdPerOutcome,
}

impl GateMetric {
    fn name(self) -> &'static str {
        match self {
            GateMetric::P99 => "p99",
            GateMetric::UsdPerOutcome => "usd_per_outcome",
            GateMetric::ErrorRate => "error_rate",
            GateMetric::AllInUsdPerOutcome => "all_in_usd_per_outcome",
        }
    }
}

/// One `--gate`: the metric may rise by at most `limit` (a fraction: 0.10 = 10%, or 10
/// percentage points of error rate).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gate {
    pub metric: GateMetric,
    pub limit: f64,
    /// Only this class (`CLASS.p99=10%`); every class otherwise.
    pub class: Option<String>,
}

const GATE_SYNTAX: &str = "expected [CLASS.]METRIC=LIMIT with METRIC one of p99, usd_per_outcome, \
     error_rate, all_in_usd_per_outcome and LIMIT a share such as 10% or 0.1, e.g. --gate p99=10% --gate error_rate=0";

/// Parses `[CLASS.]METRIC=LIMIT` (also `<=`).
pub fn parse_gate(arg: &str) -> Result<Gate, String> {
    parse_gate_from(arg, "--gate")
}

/// As [`parse_gate`]; `origin` (`--gate`, or the file's `gates[i]`) starts the message.
pub fn parse_gate_from(arg: &str, origin: &str) -> Result<Gate, String> {
    let bad = |why: String| format!("{origin} `{arg}`: {why}; {GATE_SYNTAX}");
    let (lhs, rhs) = arg
        .split_once("<=")
        .or_else(|| arg.split_once('='))
        .ok_or_else(|| bad("no `=`".into()))?;
    let lhs = lhs.trim();
    let (class, metric) = match lhs.rsplit_once('.') {
        Some((c, m)) if !c.is_empty() => (Some(c.to_string()), m),
        _ => (None, lhs),
    };
    let metric = match metric {
        "p99" => GateMetric::P99,
        "usd_per_outcome" => GateMetric::UsdPerOutcome,
        "error_rate" => GateMetric::ErrorRate,
        "all_in_usd_per_outcome" => GateMetric::AllInUsdPerOutcome,
        other => return Err(bad(format!("unknown metric `{other}`"))),
    };
    let rhs = rhs.trim();
    let limit = match rhs.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|x| x / 100.0),
        None => rhs.parse::<f64>(),
    }
    .map_err(|_| bad(format!("`{rhs}` is not a share")))?;
    if !limit.is_finite() || limit < 0.0 {
        return Err(bad(format!("the limit must be >= 0, got {rhs}")));
    }
    Ok(Gate {
        metric,
        limit,
        class,
    })
}

/// One gate on one class of one variant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GateVerdict {
    pub variant: String,
    pub class: String,
    /// What the class is judged against: "baseline" (the same class in the baseline
    /// variant) or, for a canary cohort `NAME/canary`, its control class `NAME` in the
    /// same runs.
    pub against: String,
    pub metric: GateMetric,
    /// The limit, as a fraction.
    pub limit: f64,
    /// The baseline's mean of the figure (the error rate for `error_rate`).
    pub baseline: Option<f64>,
    /// The variant's mean.
    pub value: Option<f64>,
    /// The change: relative (p99, $/outcome) or in points (error rate, as a fraction).
    pub change: Option<f64>,
    /// 95% half-width of the change (null with one seed).
    pub ci95: Option<f64>,
    /// "pass", "fail" or "inconclusive" (including: the figure is missing).
    pub verdict: &'static str,
}

/// Evaluates `gates` for every variant but the baseline.
pub fn evaluate(c: &Comparison, gates: &[Gate]) -> Vec<GateVerdict> {
    let Some(base) = c.variants.first() else {
        return Vec::new();
    };
    let classes: Vec<String> = base
        .runs
        .first()
        .map_or(Vec::new(), |r| r.classes.keys().cloned().collect());
    let mut out = Vec::new();
    for v in c.variants.iter().skip(1) {
        for g in gates {
            let all = ["all".to_string()];
            let targets = if g.metric == GateMetric::AllInUsdPerOutcome {
                &all[..]
            } else {
                &classes[..]
            };
            for class in targets {
                if g.class.as_ref().is_some_and(|only| only != class) {
                    continue;
                }
                let reference = per_seed(&base.runs, class, g.metric);
                let candidate = per_seed(&v.runs, class, g.metric);
                out.push(judge(
                    g,
                    &v.variant.name,
                    class,
                    "baseline",
                    &reference,
                    &candidate,
                ));
            }
        }
    }
    // Canary cohorts against their control class, in the same runs of each variant.
    for v in &c.variants {
        let names: Vec<String> = v
            .runs
            .first()
            .map_or(Vec::new(), |r| r.classes.keys().cloned().collect());
        for control in &names {
            let cohort = format!("{control}/canary");
            if !names.contains(&cohort) {
                continue;
            }
            for g in gates {
                if g.metric == GateMetric::AllInUsdPerOutcome
                    || g.class.as_ref().is_some_and(|only| *only != cohort)
                {
                    continue;
                }
                let reference = per_seed(&v.runs, control, g.metric);
                let candidate = per_seed(&v.runs, &cohort, g.metric);
                out.push(judge(
                    g,
                    &v.variant.name,
                    &cohort,
                    control,
                    &reference,
                    &candidate,
                ));
            }
        }
    }
    out
}

/// The gate's figure in each run (`class` is ignored for the all-in figure).
fn per_seed(runs: &[RunFigures], class: &str, metric: GateMetric) -> Vec<Option<f64>> {
    runs.iter()
        .map(|r| match metric {
            GateMetric::AllInUsdPerOutcome => r.totals.usd_per_outcome_all_in,
            _ => {
                let c = r.classes.get(class)?;
                match metric {
                    GateMetric::P99 => c.latency_s.p99,
                    GateMetric::UsdPerOutcome => c.usd_per_outcome,
                    _ => c.success_rate,
                }
            }
        })
        .collect()
}

/// The relative change of a figure, sum of (candidate - reference) over sum of
/// reference across the seeds that have both, with the 95% half-width of that ratio by
/// the delta method: the spread of the residuals d_i - R b_i, so that the reference's
/// own noise (the denominator) is in the interval too, and its correlation with the
/// candidate's (common random numbers) is used, not ignored.
pub fn relative_change(pairs: &[(f64, f64)]) -> Option<(f64, Option<f64>)> {
    let n = pairs.len();
    let sum_b: f64 = pairs.iter().map(|p| p.0).sum();
    if n == 0 || sum_b <= 0.0 {
        return None;
    }
    let r = pairs.iter().map(|p| p.1 - p.0).sum::<f64>() / sum_b;
    if n < 2 {
        return Some((r, None));
    }
    let s2 = pairs
        .iter()
        .map(|&(b, x)| ((x - b) - r * b).powi(2))
        .sum::<f64>()
        / (n - 1) as f64;
    let mean_b = sum_b / n as f64;
    let half = student_t_975((n - 1) as u32) * (s2 / n as f64).sqrt() / mean_b;
    Some((r, Some(half)))
}

/// One verdict from the per-seed figures of the reference (`against`) and the
/// candidate, in seed order.
fn judge(
    g: &Gate,
    variant: &str,
    class: &str,
    against: &str,
    reference: &[Option<f64>],
    candidate: &[Option<f64>],
) -> GateVerdict {
    let mean = |xs: &[Option<f64>]| {
        let v: Vec<f64> = xs.iter().flatten().copied().collect();
        Estimate::of(&v).map(|e| e.mean)
    };
    let (against_mean, value_mean) = (mean(reference), mean(candidate));
    let pairs: Vec<(f64, f64)> = reference
        .iter()
        .zip(candidate)
        .filter_map(|(b, x)| Some(((*b)?, (*x)?)))
        .collect();
    let (baseline, value, change, ci95) = match g.metric {
        GateMetric::ErrorRate => {
            // Error rate rises when the success rate falls: an absolute change in points.
            let d = PairedDiff::of(pairs.iter().map(|&(b, x)| Some(b - x)).collect());
            (
                against_mean.map(|s| 1.0 - s),
                value_mean.map(|s| 1.0 - s),
                d.as_ref().map(|d| d.mean),
                d.and_then(|d| d.ci95),
            )
        }
        _ => match relative_change(&pairs) {
            Some((ch, h)) => (against_mean, value_mean, Some(ch), h),
            None => (against_mean, value_mean, None, None),
        },
    };
    let verdict = match (change, ci95) {
        (None, _) => "inconclusive",
        (Some(ch), Some(h)) if ch + h <= g.limit + 1e-12 => "pass",
        (Some(ch), Some(h)) if ch - h > g.limit + 1e-12 => "fail",
        (Some(_), Some(_)) => "inconclusive",
        (Some(ch), None) if ch <= g.limit + 1e-12 => "pass",
        (Some(_), None) => "fail",
    };
    GateVerdict {
        variant: variant.to_string(),
        class: class.to_string(),
        against: against.to_string(),
        metric: g.metric,
        limit: g.limit,
        baseline,
        value,
        change,
        ci95,
        verdict,
    }
}

fn pct(x: f64) -> String {
    // No "-0.0%" for a change that rounds to nothing.
    let x = if (x * 1000.0).round() == 0.0 { 0.0 } else { x };
    format!("{:+.1}%", x * 100.0)
}

/// The gates' table and one line per variant: PASS, FAIL or INCONCLUSIVE.
pub fn table(verdicts: &[GateVerdict], seeds: usize) -> String {
    let mut out = String::new();
    if verdicts.is_empty() {
        return out;
    }
    out.push_str(
        "\nPromotion gates (change against the baseline variant, or a canary cohort against its control class; 95% CI over the seeds)\n",
    );
    let mut t = crate::report::Table::new(&[
        "variant", "class", "vs", "gate", "before", "after", "change", "verdict",
    ])
    .left_columns(4);
    let fmt = |m: GateMetric, x: Option<f64>| match (m, x) {
        (_, None) => "-".to_string(),
        (GateMetric::P99, Some(x)) => crate::report::fmt_secs(Some(x)),
        (GateMetric::UsdPerOutcome | GateMetric::AllInUsdPerOutcome, Some(x)) => {
            crate::report::fmt_usd(Some(x))
        }
        (GateMetric::ErrorRate, Some(x)) => format!("{:.2}%", x * 100.0),
    };
    for v in verdicts {
        let unit = if v.metric == GateMetric::ErrorRate {
            " pts"
        } else {
            ""
        };
        t.row(vec![
            v.variant.clone(),
            v.class.clone(),
            v.against.clone(),
            format!("{} <= {}{unit}", v.metric.name(), pct(v.limit)),
            fmt(v.metric, v.baseline),
            fmt(v.metric, v.value),
            match (v.change, v.ci95) {
                (None, _) => "-".into(),
                (Some(c), Some(h)) => format!("{} ± {:.1}{unit}", pct(c), h * 100.0),
                (Some(c), None) => format!("{}{unit}", pct(c)),
            },
            if seeds == 1 && v.verdict != "inconclusive" {
                format!("{} (1 seed)", v.verdict)
            } else {
                v.verdict.to_string()
            },
        ]);
    }
    t.render(&mut out);
    let mut names: Vec<&String> = verdicts.iter().map(|v| &v.variant).collect();
    names.dedup();
    for name in names {
        let mine: Vec<&GateVerdict> = verdicts.iter().filter(|v| &v.variant == name).collect();
        let fails = mine.iter().filter(|v| v.verdict == "fail").count();
        let unsure = mine.iter().filter(|v| v.verdict == "inconclusive").count();
        let word = if fails > 0 {
            "FAIL"
        } else if unsure > 0 {
            "INCONCLUSIVE (more seeds would decide)"
        } else {
            "PASS"
        };
        out.push_str(&format!(
            "  {name}: {word} ({} of {} gates pass)\n",
            mine.len() - fails - unsure,
            mine.len()
        ));
    }
    out
}

/// `compare` exits with code 3 when a gate fails (after writing its outputs), so a
/// pipeline can stop a promotion.
#[derive(Debug, thiserror::Error)]
#[error("promotion gates failed: {0}")]
pub struct GatesFailed(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_change_interval_includes_the_reference_noise() {
        // Every seed exactly 10% up: the ratio is certain although both sides vary.
        let (r, h) = relative_change(&[(10.0, 11.0), (12.0, 13.2), (8.0, 8.8)])
            .unwrap_or_else(|| panic!("no change"));
        assert!((r - 0.1).abs() < 1e-12);
        assert!(h.unwrap_or(1.0) < 1e-12);
        // Every seed exactly +1 (the paired difference has no spread) on a noisy
        // reference: the ratio is not certain. R = 3/30 = 0.1; residuals
        // 1 - 0.1 b = 0, 0.2, -0.2; s^2 = 0.04; half = 4.303 * sqrt(0.04 / 3) / 10.
        let (r, h) = relative_change(&[(10.0, 11.0), (8.0, 9.0), (12.0, 13.0)])
            .unwrap_or_else(|| panic!("no change"));
        assert!((r - 0.1).abs() < 1e-12);
        let want = 4.303 * (0.04f64 / 3.0).sqrt() / 10.0;
        assert!((h.unwrap_or(0.0) - want).abs() < 1e-12, "{h:?} vs {want}");
        // One seed: no interval; a zero reference: no relative change.
        assert_eq!(relative_change(&[(2.0, 3.0)]), Some((0.5, None)));
        assert_eq!(relative_change(&[(0.0, 3.0)]), None);
    }

    #[test]
    fn a_canary_cohort_is_judged_against_its_control_in_the_same_runs() {
        const TEXT: &str = r#"
[simulation]
seed = 1
horizon = "30m"
[pools.old]
servers = 1
service = { dist = "exponential", mean = "1s" }
[pools.new]
servers = 4
service = { dist = "exponential", mean = "1s" }
[classes.jobs]
arrival = { process = "poisson", rate = 0.8 }
hops = [{ pool = "old" }]
canary = { share = 0.3, pools = { "old" = "new" } }
"#;
        let opts = crate::compare::CompareOptions {
            replications: 4,
            gates: vec!["p99=10%".into(), "jobs/canary.error_rate=0".into()],
            ..Default::default()
        };
        let c = crate::compare::compare("c.toml", TEXT, &opts).unwrap_or_else(|e| panic!("{e}"));
        // Only the baseline variant: the gates are the cohort's against its control.
        assert_eq!(c.gates.len(), 2);
        let p99 = &c.gates[0];
        assert_eq!(
            (p99.class.as_str(), p99.against.as_str()),
            ("jobs/canary", "jobs")
        );
        let runs = &c.variants[0].runs;
        let p = |r: &crate::compare::RunFigures, k: &str| r.classes[k].latency_s.p99.unwrap_or(0.0);
        let control = runs.iter().map(|r| p(r, "jobs")).sum::<f64>() / 4.0;
        let diff = runs
            .iter()
            .map(|r| p(r, "jobs/canary") - p(r, "jobs"))
            .sum::<f64>()
            / 4.0;
        assert!((p99.change.unwrap_or(0.0) - diff / control).abs() < 1e-12);
        // Four servers instead of one at rho 0.56: the cohort hardly waits.
        assert!(p99.change.unwrap_or(0.0) < -0.3, "{:?}", p99.change);
        assert_eq!(p99.verdict, "pass");
        assert_eq!(c.gates[1].metric, GateMetric::ErrorRate);
        assert_eq!(c.gates[1].verdict, "pass");
    }

    #[test]
    fn gate_syntax() {
        assert_eq!(
            parse_gate("p99=10%"),
            Ok(Gate {
                metric: GateMetric::P99,
                limit: 0.1,
                class: None
            })
        );
        assert_eq!(
            parse_gate("chat.usd_per_outcome<=0.05"),
            Ok(Gate {
                metric: GateMetric::UsdPerOutcome,
                limit: 0.05,
                class: Some("chat".into())
            })
        );
        assert_eq!(parse_gate("error_rate=0").map(|g| g.limit), Ok(0.0));
        assert_eq!(
            parse_gate("all_in_usd_per_outcome=5%").map(|g| g.metric),
            Ok(GateMetric::AllInUsdPerOutcome)
        );
        for (bad, needle) in [
            ("p99", "no `=`"),
            ("p95=10%", "unknown metric `p95`"),
            ("p99=ten", "not a share"),
            ("p99=-1%", ">= 0"),
        ] {
            let e = parse_gate(bad).err().unwrap_or_default();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}

//! Promotion gates for `factorysim compare --gate`: would each variant pass the checks a
//! canary must pass before promotion ("p99 within 10%, $/outcome within 5%, error rate
//! no worse"), judged per class on the paired differences to the baseline?
//!
//! A gate passes when even the pessimistic end of the 95% interval of the change is
//! within its limit, fails when even the optimistic end is beyond it, and is
//! inconclusive otherwise (more seeds would decide). With one seed there is no interval:
//! the point estimate decides, and the verdict says so.

use crate::compare::{Comparison, PairedDiff};
use crate::replications::Estimate;
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
    fn figure(self) -> &'static str {
        match self {
            GateMetric::P99 => "latency_s.p99",
            GateMetric::UsdPerOutcome => "usd_per_outcome",
            GateMetric::ErrorRate => "success_rate",
            GateMetric::AllInUsdPerOutcome => "usd_per_outcome_all_in",
        }
    }

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
    let bad = |why: String| format!("--gate `{arg}`: {why}; {GATE_SYNTAX}");
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
                let key = if g.metric == GateMetric::AllInUsdPerOutcome {
                    format!("totals.{}", g.metric.figure())
                } else {
                    format!("classes.{class}.{}", g.metric.figure())
                };
                let b = base.mean.get(&key).map(|e| e.mean);
                let x = v.mean.get(&key).map(|e| e.mean);
                let d: Option<&PairedDiff> = v.diff.as_ref().and_then(|d| d.get(&key));
                out.push(judge(g, &v.variant.name, class, "baseline", b, x, d));
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
                let pick = |class: &str| -> Vec<Option<f64>> {
                    v.runs
                        .iter()
                        .map(|r| {
                            let c = r.classes.get(class)?;
                            match g.metric {
                                GateMetric::P99 => c.latency_s.p99,
                                GateMetric::UsdPerOutcome => c.usd_per_outcome,
                                _ => c.success_rate,
                            }
                        })
                        .collect()
                };
                let (ctl, can) = (pick(control), pick(&cohort));
                let mean = |xs: &[Option<f64>]| {
                    let v: Vec<f64> = xs.iter().flatten().copied().collect();
                    Estimate::of(&v).map(|e| e.mean)
                };
                let per_seed = ctl
                    .iter()
                    .zip(&can)
                    .map(|(a, b)| Some((*b)? - (*a)?))
                    .collect();
                let d = PairedDiff::of(per_seed);
                out.push(judge(
                    g,
                    &v.variant.name,
                    &cohort,
                    control,
                    mean(&ctl),
                    mean(&can),
                    d.as_ref(),
                ));
            }
        }
    }
    out
}

/// One verdict: `against_mean` and `mean` are the two sides' means of the figure, `d`
/// the paired difference (candidate - reference) over the seeds.
fn judge(
    g: &Gate,
    variant: &str,
    class: &str,
    against: &str,
    against_mean: Option<f64>,
    mean: Option<f64>,
    d: Option<&PairedDiff>,
) -> GateVerdict {
    let (baseline, value, change, ci95) = match g.metric {
        GateMetric::ErrorRate => (
            against_mean.map(|s| 1.0 - s),
            mean.map(|s| 1.0 - s),
            // Error rate rises when the success rate falls.
            d.map(|d| -d.mean),
            d.and_then(|d| d.ci95),
        ),
        _ => match (against_mean, d) {
            (Some(b), Some(d)) if b > 0.0 => {
                (Some(b), mean, Some(d.mean / b), d.ci95.map(|h| h / b))
            }
            _ => (against_mean, mean, None, None),
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

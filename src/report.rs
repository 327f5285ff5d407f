//! Terminal tables for `run` and `check`.

use crate::replications::{Estimate, Replications};
use sim_core::Summary;
use sim_core::scenario::Scenario;
use std::fmt::Write;

/// Formats seconds with a unit that keeps 3 significant digits readable.
pub fn fmt_secs(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(0.0) => "0s".into(),
        Some(s) if s < 1e-3 => format!("{:.1}us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) if s < 120.0 => format!("{s:.2}s"),
        Some(s) if s < 7200.0 => format!("{:.1}m", s / 60.0),
        Some(s) => format!("{:.1}h", s / 3600.0),
    }
}

pub fn fmt_usd(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        // Below the last printed digit (float residue of a balance) is zero, not "$-0.00000".
        Some(x) if x.abs() < 0.000_005 => "$0".into(),
        Some(x) if x < 0.0 => format!("-{}", fmt_usd(Some(-x))),
        Some(x) if x < 0.01 => format!("${x:.5}"),
        Some(x) if x < 100.0 => format!("${x:.4}"),
        Some(x) => format!("${x:.2}"),
    }
}

fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A left-aligned first column and right-aligned others.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Columns aligned left (the first `left`); the others align right.
    left: usize,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            left: 1,
        }
    }
    pub(crate) fn left_columns(mut self, n: usize) -> Self {
        self.left = n;
        self
    }
    pub(crate) fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }
    pub(crate) fn render(&self, out: &mut String) {
        let n = self.header.len();
        let mut w = vec![0; n];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i < self.left {
                    let _ = write!(line, "  {c:<width$}", width = w[i]);
                } else {
                    let _ = write!(line, "  {c:>width$}", width = w[i]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

/// How `run_table_with` renders.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableOptions<'a> {
    /// ANSI colour (headings, SLO misses). Only when stdout is a terminal.
    pub colour: bool,
    /// Estimates across independent replications, printed as their own table.
    pub replications: Option<&'a Replications>,
}

fn paint(text: &str, code: &str, on: bool) -> String {
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

fn heading(out: &mut String, text: &str, colour: bool) {
    out.push_str(&paint(text, "1", colour));
    out.push('\n');
}

/// A value and its 95% half-width in the value's unit: "9.72s ± 0.31".
pub fn fmt_secs_pm(mean: f64, hw: Option<f64>) -> String {
    let (scale, unit, dec) = match mean {
        m if m < 1e-3 => (1e6, "us", 1),
        m if m < 1.0 => (1e3, "ms", 1),
        m if m < 120.0 => (1.0, "s", 2),
        m if m < 7200.0 => (1.0 / 60.0, "m", 1),
        _ => (1.0 / 3600.0, "h", 1),
    };
    match hw {
        Some(h) => format!("{:.dec$}{unit} ± {:.dec$}", mean * scale, h * scale),
        None => format!("{:.dec$}{unit}", mean * scale),
    }
}

fn fmt_est_secs(e: &Option<Estimate>) -> String {
    e.as_ref()
        .map(|e| fmt_secs_pm(e.mean, e.ci95))
        .unwrap_or_else(|| "-".into())
}

fn fmt_est_usd(e: &Option<Estimate>) -> String {
    match e {
        None => "-".into(),
        Some(e) => {
            let m = fmt_usd(Some(e.mean));
            // Same decimals as the mean.
            let dec = m.split('.').nth(1).map(|d| d.len()).unwrap_or(0);
            match e.ci95 {
                Some(h) => format!("{m} ± {h:.dec$}"),
                None => m,
            }
        }
    }
}

fn fmt_est_pct(e: &Option<Estimate>) -> String {
    match e {
        None => "-".into(),
        Some(e) => match e.ci95 {
            Some(h) => format!("{:.1}% ± {:.1}", e.mean * 100.0, h * 100.0),
            None => format!("{:.1}%", e.mean * 100.0),
        },
    }
}

/// A burn rate and its half-width: "6.5x ± 0.4".
fn fmt_est_times(e: &Option<Estimate>) -> String {
    match e {
        None => "-".into(),
        Some(e) => match e.ci95 {
            Some(h) => format!("{:.1}x ± {h:.1}", e.mean),
            None => format!("{:.1}x", e.mean),
        },
    }
}

fn fmt_pct(x: f64) -> String {
    let p = x * 100.0;
    if p > 99.0 && p < 100.0 {
        format!("{p:.2}%")
    } else {
        format!("{p:.1}%")
    }
}

fn fmt_opt_count(x: Option<f64>) -> String {
    x.map(|v| fmt_count(v.round() as u64))
        .unwrap_or_else(|| "-".into())
}

/// A count column that is `-` when no workflow had any (tokens on abstract pools, which
/// model none; fan-out in a graph without a fan-out node): 0 would read as measured.
fn modelled(max: Option<f64>, x: Option<f64>) -> String {
    if max.is_some_and(|m| m > 0.0) {
        fmt_opt_count(x)
    } else {
        "-".into()
    }
}

/// The table printed by `factorysim run`, without colour or replications.
pub fn run_table(s: &Summary) -> String {
    run_table_with(s, &TableOptions::default())
}

/// The table printed by `factorysim run`.
pub fn run_table_with(s: &Summary, opts: &TableOptions<'_>) -> String {
    let colour = opts.colour;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "seed {}  |  simulated {}  (warm-up {}, measured {})  |  {} events{}",
        s.seed,
        fmt_secs(Some(s.simulated_seconds)),
        fmt_secs(Some(s.warmup_seconds)),
        fmt_secs(Some(s.measured_seconds)),
        fmt_count(s.events),
        if s.drain { "  |  drained" } else { "" }
    );
    out.push('\n');

    // SLO misses first, worst burn rate first.
    let mut slo: Vec<(&String, f64, f64, f64, f64)> = s
        .classes
        .iter()
        .filter_map(|(n, c)| {
            Some((
                n,
                c.slo_attainment?,
                c.slo_s?,
                c.slo_target?,
                c.slo_burn_rate.unwrap_or(0.0),
            ))
        })
        .collect();
    slo.sort_by(|a, b| b.4.total_cmp(&a.4).then_with(|| a.0.cmp(b.0)));
    let misses: Vec<_> = slo.iter().filter(|x| x.1 < x.3).collect();
    if !misses.is_empty() {
        let w = misses
            .iter()
            .map(|m| m.0.chars().count())
            .max()
            .unwrap_or(0);
        for (i, (name, att, slo_s, target, burn)) in misses.iter().enumerate() {
            let lead = if i == 0 { "SLO misses:" } else { "" };
            let line = format!(
                "{lead:<11} {name:<w$}  {} within {} (target {}), burn rate {burn:.1}x",
                fmt_pct(*att),
                fmt_secs(Some(*slo_s)),
                fmt_pct(*target).replace(".0%", "%"),
            );
            out.push_str(&paint(&line, "1;31", colour));
            out.push('\n');
        }
        out.push_str(
            "  burn rate = (1 - attainment) / (1 - target): 1x spends the error budget exactly\n\n",
        );
    } else if !slo.is_empty() {
        out.push_str(&paint("SLOs: every class met its target", "32", colour));
        out.push_str("\n\n");
    }

    heading(
        &mut out,
        "Workflow classes (latency = arrival to last hop; $/outcome = cost of a successful workflow)",
        colour,
    );
    let mut t = Table::new(&[
        "class",
        "arrived",
        "completed",
        "in flight",
        "failed",
        "rejected",
        "abandoned",
        "p50",
        "p95",
        "p99",
        "max",
        "$/outcome",
        "p95 $",
        "SLO met",
        "burn",
    ]);
    for (name, c) in &s.classes {
        t.row(vec![
            name.clone(),
            fmt_count(c.arrived),
            fmt_count(c.completed),
            fmt_count(c.in_flight),
            fmt_count(c.failed),
            fmt_count(c.rejected),
            fmt_count(c.abandoned),
            fmt_secs(c.latency_s.p50),
            fmt_secs(c.latency_s.p95),
            fmt_secs(c.latency_s.p99),
            fmt_secs(c.latency_s.max),
            fmt_usd(c.usd_per_outcome.mean),
            fmt_usd(c.usd_per_outcome.p95),
            match (c.slo_attainment, c.slo_s) {
                (Some(a), Some(slo)) => format!("{} <= {}", fmt_pct(a), fmt_secs(Some(slo))),
                _ => "-".into(),
            },
            c.slo_burn_rate
                .map(|b| format!("{b:.1}x"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render(&mut out);
    out.push('\n');

    heading(
        &mut out,
        "Work and waste per class (tokens of completed workflows; waste = $ of work that produced no outcome; over-tiered = extra $ of hops on a dearer pool than their tier's cheapest)",
        colour,
    );
    let mut t = Table::new(&[
        "class",
        "tokens p50",
        "tokens p95",
        "fan-out p95",
        "loops/wf",
        "$ failed",
        "$ abandoned",
        "$ rejected",
        "$ after outcome",
        "$ over-tiered",
        "$ human",
        "$ total",
    ]);
    for (name, c) in &s.classes {
        t.row(vec![
            name.clone(),
            modelled(c.tokens_per_workflow.max, c.tokens_per_workflow.p50),
            modelled(c.tokens_per_workflow.max, c.tokens_per_workflow.p95),
            modelled(c.fan_out.max, c.fan_out.p95),
            format!("{:.2}", c.loops_per_workflow),
            fmt_usd(Some(c.usd_waste.failed)),
            fmt_usd(Some(c.usd_waste.abandoned)),
            fmt_usd(Some(c.usd_waste.rejected)),
            fmt_usd(Some(c.usd_waste.after_outcome)),
            fmt_usd(Some(c.usd_waste.over_tiered)),
            fmt_usd(Some(c.usd_human)),
            fmt_usd(Some(c.usd_total)),
        ]);
    }
    t.render(&mut out);
    let causes: Vec<_> = s
        .classes
        .iter()
        .filter(|(_, c)| !c.failed_by_cause.is_empty() || !c.rejected_by_cause.is_empty())
        .collect();
    if !causes.is_empty() {
        out.push('\n');
        heading(&mut out, "Failed and rejected workflows by cause", colour);
        let mut t = Table::new(&["class", "outcome", "cause", "workflows"]).left_columns(3);
        for (name, c) in causes {
            for (outcome, counts) in [
                ("failed", &c.failed_by_cause),
                ("rejected", &c.rejected_by_cause),
            ] {
                let mut by: Vec<_> = counts.iter().collect();
                by.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                for (cause, n) in by {
                    t.row(vec![
                        name.clone(),
                        outcome.into(),
                        cause.clone(),
                        fmt_count(*n),
                    ]);
                }
            }
        }
        t.render(&mut out);
    }
    out.push('\n');

    hop_table(s, &mut out, colour);

    heading(&mut out, "Pools", colour);
    let mut t = Table::new(&[
        "pool",
        "servers",
        "util",
        "rho",
        "hops",
        "P(wait)",
        "mean wait",
        "p99 wait",
        "mean in sys",
        "$ capacity",
        "$ idle",
    ]);
    for (name, p) in &s.pools {
        t.row(vec![
            name.clone(),
            p.servers.to_string(),
            format!("{:.1}%", p.utilization * 100.0),
            p.offered_rho
                .map(|r| format!("{r:.3}"))
                .unwrap_or_else(|| "-".into()),
            fmt_count(p.hops),
            format!("{:.3}", p.prob_wait),
            fmt_secs(Some(p.queue_wait_s.mean)),
            fmt_secs(Some(p.queue_wait_s.p99)),
            format!("{:.2}", p.mean_in_system),
            fmt_usd(Some(p.usd_capacity)),
            fmt_usd(Some(p.usd_idle)),
        ]);
    }
    t.render(&mut out);
    out.push('\n');
    let share = |x: f64, of: f64| {
        if of > 0.0 {
            format!("{:.1}%", x / of * 100.0)
        } else {
            "-".into()
        }
    };
    let tt = &s.totals;
    let _ = writeln!(
        out,
        "Idle capacity: {} of {} pool capacity ({}) was paid for with no hop on it",
        fmt_usd(Some(tt.usd_idle)),
        fmt_usd(Some(tt.usd_capacity)),
        share(tt.usd_idle, tt.usd_capacity)
    );
    let waste_failed: f64 = s.classes.values().map(|c| c.usd_waste.failed).sum();
    let waste_abandoned: f64 = s.classes.values().map(|c| c.usd_waste.abandoned).sum();
    let waste_rejected: f64 = s.classes.values().map(|c| c.usd_waste.rejected).sum();
    let waste_after: f64 = s.classes.values().map(|c| c.usd_waste.after_outcome).sum();
    let _ = writeln!(
        out,
        "Waste: {} ({} of workflow spend): {} failed, {} abandoned, {} rejected, {} after the outcome",
        fmt_usd(Some(tt.usd_waste)),
        share(tt.usd_waste, tt.usd_workflows),
        fmt_usd(Some(waste_failed)),
        fmt_usd(Some(waste_abandoned)),
        fmt_usd(Some(waste_rejected)),
        fmt_usd(Some(waste_after)),
    );
    if tt.usd_waste_over_tiered > 0.0 {
        let _ = writeln!(
            out,
            "Over-tiered: {} paid by successful workflows for hops on a dearer pool than their tier's cheapest (part of their cost)",
            fmt_usd(Some(tt.usd_waste_over_tiered)),
        );
    }
    let _ = writeln!(
        out,
        "Total: {} spent over the measured window, {} workflows completed, fully loaded {} per outcome",
        fmt_usd(Some(tt.usd_spent)),
        fmt_count(tt.completed),
        fmt_usd(tt.usd_per_outcome)
    );
    let un = &tt.usd_unattributed_split;
    let _ = writeln!(
        out,
        "  = {} measured workflows + {} idle + {} unattributed ({} hops of warm-up workflows in the window, {} hops still running at the end)",
        fmt_usd(Some(tt.usd_workflows)),
        fmt_usd(Some(tt.usd_idle)),
        fmt_usd(Some(tt.usd_unattributed)),
        fmt_usd(Some(un.warmup_workflows)),
        fmt_usd(Some(un.running_at_end)),
    );
    if tt.usd_tools > 0.0 || tt.usd_human > 0.0 || tt.usd_api > 0.0 {
        let _ = writeln!(
            out,
            "Spent: {} capacity + {} API tokens + {} tool calls + {} human review = {}",
            fmt_usd(Some(tt.usd_capacity)),
            fmt_usd(Some(tt.usd_api)),
            fmt_usd(Some(tt.usd_tools)),
            fmt_usd(Some(tt.usd_human)),
            fmt_usd(Some(tt.usd_spent)),
        );
    }

    if let Some(r) = opts.replications {
        out.push('\n');
        let seeds = match (r.seeds.first(), r.seeds.last()) {
            (Some(a), Some(b)) => format!("seeds {a}..{b}"),
            _ => String::new(),
        };
        heading(
            &mut out,
            &format!(
                "Across {} replications ({seeds}; mean ± 95% confidence half-width)",
                r.count
            ),
            colour,
        );
        let mut t = Table::new(&[
            "class",
            "p50",
            "p95",
            "p99",
            "$/outcome",
            "p95 $",
            "success",
            "SLO met",
            "burn",
            "$ waste",
        ]);
        for (name, c) in &r.classes {
            t.row(vec![
                name.clone(),
                fmt_est_secs(&c.latency_s.p50),
                fmt_est_secs(&c.latency_s.p95),
                fmt_est_secs(&c.latency_s.p99),
                fmt_est_usd(&c.usd_per_outcome),
                fmt_est_usd(&c.usd_per_outcome_p95),
                fmt_est_pct(&c.success_rate),
                fmt_est_pct(&c.slo_attainment),
                fmt_est_times(&c.slo_burn_rate),
                fmt_est_usd(&c.usd_waste),
            ]);
        }
        t.render(&mut out);
        out.push('\n');
        let mut t = Table::new(&["pool", "util", "$ idle"]);
        for (name, p) in &r.pools {
            t.row(vec![
                name.clone(),
                fmt_est_pct(&p.utilization),
                fmt_est_usd(&p.usd_idle),
            ]);
        }
        t.render(&mut out);
        let tr = &r.totals;
        let _ = writeln!(
            out,
            "  fully loaded $/outcome {}; spent {}, idle {}, waste {}",
            fmt_est_usd(&tr.usd_per_outcome),
            fmt_est_usd(&tr.usd_spent),
            fmt_est_usd(&tr.usd_idle),
            fmt_est_usd(&tr.usd_waste),
        );
    }
    if !s.warnings.is_empty() {
        out.push('\n');
        for w in &s.warnings {
            out.push_str(&paint(&format!("warning: {w}"), "33", colour));
            out.push('\n');
        }
    }
    out
}

/// "Per-hop latency": the `breakdown` of summary.json, one row per pool (and per lane,
/// tier and tenant when there are several, and per tool), token columns only when some
/// hop ran on a GPU pool.
fn hop_table(s: &Summary, out: &mut String, colour: bool) {
    let b = &s.breakdown;
    type Groups = std::collections::BTreeMap<String, sim_core::metrics::HopGroupSummary>;
    let mut rows: Vec<(String, &sim_core::metrics::HopGroupSummary)> = Vec::new();
    let tiered = b.by_tier.keys().any(|k| !k.starts_with('('));
    let sets: [(&str, &Groups, bool); 5] = [
        ("pool", &b.by_pool, true),
        ("lane", &b.by_lane, b.by_lane.len() > 1),
        ("tier", &b.by_tier, tiered),
        ("tenant", &b.by_tenant, b.by_tenant.len() > 1),
        ("tool", &b.by_tool, true),
    ];
    for (kind, groups, show) in sets {
        if show {
            rows.extend(groups.iter().map(|(n, g)| (format!("{kind} {n}"), g)));
        }
    }
    if rows.is_empty() {
        return;
    }
    let llm = rows.iter().any(|(_, g)| g.llm_hops > 0);
    heading(
        out,
        "Per-hop latency (hops submitted after the warm-up; tools: wait for a slot)",
        colour,
    );
    let mut header = vec!["group", "hops", "wait p50", "wait p99", "wait p99.9"];
    if llm {
        header.extend(["TTFT p50", "TTFT p99", "TPOT p99", "ITL p99.9", "prefill"]);
    }
    let mut t = Table::new(&header);
    let p = |d: &Option<sim_core::metrics::Dist>, f: fn(&sim_core::metrics::Dist) -> f64| {
        fmt_secs(d.as_ref().map(f))
    };
    for (name, g) in rows {
        let (n, wait) = if g.tool_calls > 0 && g.hops == 0 {
            (g.tool_calls, &g.tool_wait_s)
        } else {
            (g.hops, &g.queue_wait_s)
        };
        let mut r = vec![
            name,
            fmt_count(n),
            p(wait, |d| d.p50),
            p(wait, |d| d.p99),
            p(wait, |d| d.p999),
        ];
        if llm {
            r.extend([
                p(&g.ttft_s, |d| d.p50),
                p(&g.ttft_s, |d| d.p99),
                p(&g.tpot_s, |d| d.p99),
                p(&g.itl_s, |d| d.p999),
                g.prefill_share
                    .map(|x| format!("{:.0}%", x * 100.0))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        t.row(r);
    }
    t.render(out);
    out.push('\n');
}

/// The derived quantities printed by `factorysim check`.
pub fn check_table(file: &str, sc: &Scenario) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{file}: OK");
    if let Some(d) = &sc.description {
        let _ = writeln!(out, "  {}", d.trim());
    }
    let _ = writeln!(
        out,
        "  seed {}, horizon {}, warm-up {}, {}",
        sc.seed,
        sc.horizon,
        sc.warmup,
        if sc.drain {
            "drain after horizon"
        } else {
            "stop at horizon"
        }
    );
    out.push('\n');
    let mut t = Table::new(&[
        "class",
        "arrivals",
        "nodes",
        "hops/workflow",
        "mean work",
        "SLO",
    ]);
    for (ci, c) in sc.classes.iter().enumerate() {
        let (visits, tokens) = sc.class_expectations(ci, None);
        let mut hops = 0.0;
        let mut work = 0.0;
        for (i, n) in c.graph.nodes.iter().enumerate() {
            if !n.enabled {
                continue;
            }
            // A tiered hop is counted on its (rule-chosen) chain's first choice.
            let pool = sc.a_priori_pool(ci, n, tokens[i].input);
            if pool.is_some() || n.tool.is_some() {
                hops += visits[i];
            }
            if let Some(p) = pool {
                let pool = &sc.pools[p];
                let service = n
                    .service
                    .as_ref()
                    .or(pool.service.as_ref())
                    .map(|s| s.mean())
                    .unwrap_or(0.0);
                let (input, output) = (
                    tokens[i].input.round() as u64,
                    tokens[i].output.round() as u64,
                );
                let token_s = match &pool.gpu {
                    Some(g) => {
                        let (prefill, decode) = g.solo_latency(input, output.max(1));
                        (prefill + decode).as_secs_f64()
                    }
                    None => match &pool.api {
                        Some(api) => {
                            api.ttft.mean() + output.saturating_sub(1) as f64 * api.tpot.mean()
                        }
                        None => pool.token_time(input, output).as_secs_f64(),
                    },
                };
                work += visits[i] * (service + token_s);
            }
        }
        let arrivals = match &c.arrival {
            sim_core::scenario::Arrival::Closed { users, .. } => format!("{users} users"),
            _ => format!(
                "{:.3}/s",
                c.mean_rate_per_s(sc.horizon) * c.workload_share(sc)
            ),
        };
        t.row(vec![
            c.name.clone(),
            arrivals,
            c.graph.nodes.len().to_string(),
            format!("{hops:.2}"),
            fmt_secs(Some(work)),
            c.slo.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render(&mut out);
    out.push('\n');
    // Where the load changes over time (rate steps, bursts, an emergency switch), the
    // average hides the peak: the largest instantaneous rho per pool, and when; shown where some queueing pool's peak stands above its average (GPU and API
    // pools have no rho; a replay's rate is its mean).
    let loads = sc.offered_load();
    let queueing = |pi: usize| {
        sc.pools
            .get(pi)
            .is_some_and(|p| p.gpu.is_none() && p.api.is_none())
    };
    let average: Vec<f64> = loads.iter().map(|l| l.rho).collect();
    let peaks = sc.peaks_above(&average, |t| {
        sc.offered_load_at(t)
            .into_iter()
            .enumerate()
            .map(|(pi, l)| queueing(pi).then_some(l.rho))
            .collect()
    });
    let peaks = peaks.iter().any(Option::is_some).then_some(peaks);
    let mut head = vec!["pool", "servers", "hops/s", "mean service", "rho"];
    if peaks.is_some() {
        head.push("peak rho");
    }
    head.push("");
    let mut t = Table::new(&head);
    let mut unstable = Vec::new();
    let mut peak_unstable = Vec::new();
    let mut api_limited = Vec::new();
    for (pi, l) in loads.into_iter().enumerate() {
        let peak = peaks.as_ref().map(|p| p.get(pi).copied().flatten());
        // GPU pools are timed by their replicas and API pools never queue: no mean
        // service or rho from the scenario (as `run` prints `-` for their rho).
        let no_rho = sc
            .pools
            .get(pi)
            .is_some_and(|p| p.gpu.is_some() || p.api.is_some());
        let api = sc.pools.get(pi).and_then(|p| p.api.as_ref());
        let flag = if let Some(api) = api {
            // An API queues nothing: past its RPM or TPM limit it answers 429.
            let t = crate::capacity::offered_tokens(sc, pi);
            let per_min = t.rate * 60.0;
            let tokens_per_min = per_min * (t.mean_input + t.mean_output);
            let mut over = Vec::new();
            if let Some(rpm) = api.rpm
                && per_min >= rpm as f64
            {
                over.push(format!("{per_min:.0} requests/min >= rpm {rpm}"));
            }
            if let Some(tpm) = api.tpm {
                if t.rate > 0.0 && t.mean_input + t.mean_output > tpm as f64 {
                    over.push(format!(
                        "a mean call's {:.0} tokens > tpm {tpm}: no call fits",
                        t.mean_input + t.mean_output
                    ));
                } else if tokens_per_min >= tpm as f64 {
                    over.push(format!("{tokens_per_min:.0} tokens/min >= tpm {tpm}"));
                }
            }
            if over.is_empty() {
                String::new()
            } else {
                api_limited.push(format!("{} ({})", l.pool, over.join("; ")));
                format!("OVER LIMIT ({})", over.join("; "))
            }
        } else if no_rho {
            String::new()
        } else if l.rho >= 1.0 {
            unstable.push(l.pool.clone());
            "UNSTABLE (rho >= 1)".to_string()
        } else if l.rho >= 0.9 {
            "heavy (rho >= 0.9)".to_string()
        } else if let Some((p, at)) = peak.flatten()
            && p >= 1.0
        {
            peak_unstable.push(format!("{} (rho {p:.2} from {at})", l.pool));
            "overloaded at peak (peak rho >= 1)".to_string()
        } else {
            String::new()
        };
        let mut row = vec![
            l.pool,
            if l.servers == u32::MAX {
                "api".to_string()
            } else if sc.pools.get(pi).is_some_and(|p| p.servers == 0) {
                // A cold start: rho is for the autoscaler's max.
                format!("0-{}", l.servers)
            } else {
                l.servers.to_string()
            },
            format!("{:.3}", l.hop_rate_per_s),
            if no_rho {
                "-".to_string()
            } else {
                fmt_secs(Some(l.mean_service_s))
            },
            if no_rho {
                "-".to_string()
            } else {
                format!("{:.3}", l.rho)
            },
        ];
        // The column, where shown: `-` for a pool with no peak above its average.
        if let Some(cell) = peak {
            row.push(cell.map_or("-".to_string(), |(p, at)| format!("{p:.3} at {at}")));
        }
        row.push(flag);
        t.row(row);
    }
    t.render(&mut out);
    let theory = sim_core::theory::pool_theory(sc);
    if theory.iter().any(Option::is_some) {
        // The textbook's answer next to the scenario, for pools where it applies.
        out.push('\n');
        let mut t = Table::new(&["theory", "model", "rho", "P(wait)", "mean wait", "p99 wait"]);
        for (p, th) in sc.pools.iter().zip(&theory) {
            let Some(th) = th else { continue };
            let na =
                |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map(f).unwrap_or_else(|| "-".into());
            t.row(vec![
                p.name.clone(),
                th.model.to_string(),
                format!("{:.3}", th.rho),
                na(th.p_wait, &|x| format!("{x:.3}")),
                na(th.mean_wait_s, &|x| fmt_secs(Some(x))),
                na(th.p99_wait_s, &|x| fmt_secs(Some(x))),
            ]);
        }
        t.render(&mut out);
    }
    if !unstable.is_empty() {
        let _ = writeln!(
            out,
            "\nwarning: offered load rho >= 1 on {}: queues grow without bound; latency depends on the horizon",
            unstable.join(", ")
        );
    }
    if !peak_unstable.is_empty() {
        let _ = writeln!(
            out,
            "\nwarning: offered load passes rho 1 at its peak on {}: queues grow while it lasts (the average rho above is below 1)",
            peak_unstable.join(", ")
        );
    }
    for a in api_limited {
        let _ = writeln!(
            out,
            "warning: API pool {a}: the calls over the limit are answered 429 (retried after retry-after, or rejected)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn dollars_print_without_negative_zero() {
        use super::fmt_usd;
        assert_eq!(fmt_usd(Some(-1.4e-13)), "$0");
        assert_eq!(fmt_usd(Some(0.0)), "$0");
        assert_eq!(fmt_usd(Some(0.00123)), "$0.00123");
        assert_eq!(fmt_usd(Some(-0.5)), "-$0.5000");
        assert_eq!(fmt_usd(Some(1234.567)), "$1234.57");
        assert_eq!(fmt_usd(None), "-");
    }

    /// A burst the average hides: 1/s at 1 s on 2 servers is rho 0.5; 3x for one hour in
    /// four is rho 1.5 then, and 0.75 on average.
    #[test]
    fn check_prints_the_peak_rho_and_warns_when_only_the_peak_passes_one() {
        let text = |bursts: &str| {
            format!(
                r#"
[simulation]
horizon = "4h"
[pools.p]
servers = 2
service = {{ dist = "constant", value = "1s" }}
[classes.c]
arrival = {{ process = "poisson", rate = 1.0 }}
{bursts}
hops = [{{ pool = "p" }}]
"#
            )
        };
        let check = |bursts: &str| {
            let sc = crate::parse_scenario("b.toml", &text(bursts), &[])
                .unwrap_or_else(|e| panic!("{e}"))
                .scenario;
            super::check_table("b.toml", &sc)
        };
        let out = check(r#"bursts = [{ start = "1h", duration = "1h", rate_factor = 3.0 }]"#);
        assert!(out.contains("peak rho"), "{out}");
        assert!(out.contains("0.750"), "{out}");
        assert!(out.contains("1.500 at t=1h"), "{out}");
        assert!(out.contains("overloaded at peak"), "{out}");
        assert!(
            out.contains(
                "warning: offered load passes rho 1 at its peak on p (rho 1.50 from t=1h)"
            ),
            "{out}"
        );
        // A constant load has no peak column and no warning.
        let out = check("");
        assert!(
            !out.contains("peak rho") && !out.contains("overloaded"),
            "{out}"
        );
        assert!(out.contains("0.500"), "{out}");
    }

    /// An API pool queues nothing: `check` flags offered requests or tokens per minute
    /// that reach its `rpm` or `tpm`, and a mean call too large for `tpm`.
    #[test]
    fn check_warns_of_api_limits_the_offered_load_passes() {
        // 0.5 calls/s = 30 requests/min against rpm 10; 1,100 tokens a call against
        // tpm 500 (no call can ever be admitted); both within limits at rpm 60 and
        // tpm 100,000 (33,000 tokens/min).
        let text = |limits: &str| {
            format!(
                r#"
[simulation]
horizon = "10m"
[pools.api]
api = {{ ttft = {{ dist = "constant", value = "300ms" }}, tpot = {{ dist = "constant", value = "5ms" }}, {limits} }}
[classes.c]
arrival = {{ process = "poisson", rate = 0.5 }}
[[classes.c.nodes]]
id = "a"
pool = "api"
input_tokens = {{ dist = "constant", value = 1000 }}
output_tokens = {{ dist = "constant", value = 100 }}
"#
            )
        };
        let check = |limits: &str| {
            let sc = crate::parse_scenario("api.toml", &text(limits), &[])
                .unwrap_or_else(|e| panic!("{e}"))
                .scenario;
            super::check_table("api.toml", &sc)
        };
        let out = check("rpm = 10");
        assert!(
            out.contains("OVER LIMIT (30 requests/min >= rpm 10)"),
            "{out}"
        );
        assert!(
            out.contains("warning: API pool api (30 requests/min >= rpm 10)"),
            "{out}"
        );
        let out = check("tpm = 500");
        assert!(
            out.contains("a mean call's 1100 tokens > tpm 500: no call fits"),
            "{out}"
        );
        let out = check("tpm = 30000");
        assert!(out.contains("33000 tokens/min >= tpm 30000"), "{out}");
        let out = check("rpm = 60, tpm = 100000");
        assert!(
            !out.contains("OVER LIMIT") && !out.contains("warning"),
            "{out}"
        );
    }

    #[test]
    fn check_counts_offered_load_where_the_routing_rules_send_it() {
        // Four classes on tier t = [a, b], one 1-server pool c on tier fast. Rules: the
        // restricted class keeps to b; the class with a 5s SLO goes to fast; the class
        // whose whole $0.05 budget is below $0.10 goes to fast (nothing spent yet:
        // matches from the first hop); a budget rule at $0.01 does not match before
        // anything is spent, so z stays on a. Closed form, rho = lambda x E[S] / c:
        // a: z 0.2/s x 1s / 2 = 0.1; b: x 0.5/s x 2s / 4 = 0.25;
        // c: (y 0.3/s + w 0.1/s) x 0.5s / 1 = 0.2. Without the rules, everything on a:
        // (0.5 + 0.3 + 0.2 + 0.1) x 1s / 2 = 0.55.
        let rules = r#"
[[routing.rules]]
when = { sensitivity = "restricted" }
pools = ["b"]
[[routing.rules]]
when = { slo_below = "10s" }
tier = "fast"
[[routing.rules]]
when = { class = "w", budget_below = 0.1 }
tier = "fast"
[[routing.rules]]
when = { class = "z", budget_below = 0.01 }
pools = ["b"]
"#;
        let mut text = String::from(
            r#"
[simulation]
horizon = "2h"
[pools.a]
servers = 2
service = { dist = "constant", value = "1s" }
[pools.b]
servers = 4
service = { dist = "constant", value = "2s" }
[pools.c]
servers = 1
service = { dist = "constant", value = "500ms" }
[tiers.t]
pools = ["a", "b"]
[tiers.fast]
pools = ["c"]
"#,
        );
        for (class, rate, extra) in [
            ("x", 0.5, "sensitivity = \"restricted\"\n"),
            ("y", 0.3, "slo = \"5s\"\n"),
            ("z", 0.2, "budget_usd = 0.05\n"),
            ("w", 0.1, "budget_usd = 0.05\n"),
        ] {
            text.push_str(&format!(
                "[classes.{class}]\narrival = {{ process = \"poisson\", rate = {rate} }}\n{extra}nodes = [{{ id = \"n\", tier = \"t\" }}]\n"
            ));
        }
        let rho = |text: &str| -> Vec<(String, f64)> {
            let loaded = crate::parse_scenario("inline.toml", text, &[]).unwrap();
            loaded
                .scenario
                .offered_load()
                .into_iter()
                .map(|l| (l.pool, l.rho))
                .collect()
        };
        let close = |got: &[(String, f64)], want: [f64; 3]| {
            assert_eq!(got.len(), 3);
            for ((p, g), w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-12, "{p}: {g} vs {w}");
            }
        };
        close(&rho(&text), [0.55, 0.0, 0.0]);
        let with_rules = format!("{text}{rules}");
        close(&rho(&with_rules), [0.1, 0.25, 0.2]);
        // The check table prints the same, and the run agrees within sampling noise.
        let loaded = crate::parse_scenario("inline.toml", &with_rules, &[]).unwrap();
        let table = super::check_table("inline.toml", &loaded.scenario);
        for (pool, want) in [("a", "0.100"), ("b", "0.250"), ("c", "0.200")] {
            assert!(
                table
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(pool) && l.contains(want)),
                "{pool} {want}\n{table}"
            );
        }
        let s = crate::simulate(&loaded.scenario, None).summary();
        for (pool, want) in [("a", 0.1), ("b", 0.25), ("c", 0.2)] {
            let u = s.pools[pool].utilization;
            assert!((u - want).abs() < 0.03, "{pool}: {u}");
        }
    }
}

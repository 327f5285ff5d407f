//! Terminal tables for `run` and `check`.

use sim_core::Summary;
use sim_core::scenario::Scenario;
use std::fmt::Write;

/// Formats seconds with a unit that keeps 3 significant digits readable.
pub fn fmt_secs(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
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
        Some(0.0) => "$0".into(),
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
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }
    fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }
    fn render(&self, out: &mut String) {
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
                if i == 0 {
                    let _ = write!(line, "  {c:<width$}", width = w[0]);
                } else {
                    let _ = write!(line, "  {c:>width$}", width = w[i]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

/// The table printed by `factorysim run`.
pub fn run_table(s: &Summary) -> String {
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
    out.push_str("Workflow classes (latency = arrival to last hop; $/outcome = cost of a successful workflow)\n");
    let mut t = Table::new(&[
        "class",
        "arrived",
        "completed",
        "in flight",
        "failed",
        "p50",
        "p95",
        "p99",
        "max",
        "$/outcome",
        "p95 $",
        "SLO met",
    ]);
    for (name, c) in &s.classes {
        t.row(vec![
            name.clone(),
            fmt_count(c.arrived),
            fmt_count(c.completed),
            fmt_count(c.in_flight),
            fmt_count(c.failed + c.rejected + c.abandoned),
            fmt_secs(c.latency_s.p50),
            fmt_secs(c.latency_s.p95),
            fmt_secs(c.latency_s.p99),
            fmt_secs(c.latency_s.max),
            fmt_usd(c.usd_per_outcome.mean),
            fmt_usd(c.usd_per_outcome.p95),
            match (c.slo_attainment, c.slo_s) {
                (Some(a), Some(slo)) => format!("{:.1}% <= {}", a * 100.0, fmt_secs(Some(slo))),
                _ => "-".into(),
            },
        ]);
    }
    t.render(&mut out);
    out.push('\n');
    out.push_str("Pools\n");
    let mut t = Table::new(&[
        "pool",
        "servers",
        "util",
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
    let _ = writeln!(
        out,
        "\nTotal: {} capacity over the measured window, {} workflows completed, fully loaded {} per outcome",
        fmt_usd(Some(s.totals.usd_capacity)),
        fmt_count(s.totals.completed),
        fmt_usd(s.totals.usd_per_outcome)
    );
    out
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
    for c in &sc.classes {
        let visits = sim_core::scenario::expected_visits(&c.graph);
        let hops: f64 = c
            .graph
            .nodes
            .iter()
            .zip(&visits)
            .filter(|(n, _)| n.pool.is_some() || n.tool.is_some())
            .map(|(_, v)| v)
            .sum();
        let work: f64 = c
            .graph
            .nodes
            .iter()
            .zip(&visits)
            .map(|(n, v)| v * n.service.as_ref().map(|s| s.mean()).unwrap_or(0.0))
            .sum();
        let arrivals = match &c.arrival {
            sim_core::scenario::Arrival::Closed { users, .. } => format!("{users} users"),
            _ => format!("{:.3}/s", c.mean_rate_per_s(sc.horizon)),
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
    let mut t = Table::new(&["pool", "servers", "hops/s", "mean service", "rho", ""]);
    let mut unstable = Vec::new();
    for l in sc.offered_load() {
        let flag = if l.rho >= 1.0 {
            unstable.push(l.pool.clone());
            "UNSTABLE (rho >= 1)".to_string()
        } else if l.rho >= 0.9 {
            "heavy (rho >= 0.9)".to_string()
        } else {
            String::new()
        };
        t.row(vec![
            l.pool,
            l.servers.to_string(),
            format!("{:.3}", l.hop_rate_per_s),
            fmt_secs(Some(l.mean_service_s)),
            format!("{:.3}", l.rho),
            flag,
        ]);
    }
    t.render(&mut out);
    if !unstable.is_empty() {
        let _ = writeln!(
            out,
            "\nwarning: offered load rho >= 1 on {}: queues grow without bound; latency depends on the horizon",
            unstable.join(", ")
        );
    }
    out
}

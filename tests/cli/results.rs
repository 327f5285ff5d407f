//! The results contract: every summary.json key documented, the spend balance with a
//! warm-up and work in flight, the SLO call-out order, zeros that read as zeros, and
//! confidence intervals across replications.

use super::{quickstart, read, run_ok, tempdir};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&read(&dir.join("summary.json"))).expect("summary.json")
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Runs `factorysim run SCENARIO --no-plots` with extra arguments into a temp dir.
fn run_scenario(scenario: &str, extra: &[&str]) -> (tempfile::TempDir, String) {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut args = vec!["run", scenario, "--no-plots", "--out", &d];
    args.extend_from_slice(extra);
    let out = run_ok(&args);
    (dir, String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------
// Contract: every key path of summary.json is named in docs/output.md.

/// `a.{b,c}.d` -> `a.b.d`, `a.c.d`; `<name>` (any placeholder) -> `<>`.
fn expand(span: &str) -> Vec<String> {
    let mut norm = String::new();
    let mut in_angle = false;
    for ch in span.chars() {
        match ch {
            '<' => {
                in_angle = true;
                norm.push_str("<>");
            }
            '>' => in_angle = false,
            _ if in_angle => {}
            ' ' => {}
            _ => norm.push(ch),
        }
    }
    match (norm.find('{'), norm.find('}')) {
        (Some(a), Some(b)) if b > a => {
            let (head, rest) = (&norm[..a], &norm[b + 1..]);
            norm[a + 1..b]
                .split(',')
                .flat_map(|alt| expand(&format!("{head}{alt}{rest}")))
                .collect()
        }
        _ => vec![norm],
    }
}

fn spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

fn parent(path: &str) -> &str {
    path.rfind('.').map_or("", |i| &path[..i])
}

const TOP: [&str; 7] = [
    "classes",
    "pools",
    "tools",
    "totals",
    "tenants",
    "breakdown",
    "replications",
];

/// The key paths docs/output.md's summary.json section names: the key column of its
/// tables (later spans in a cell are siblings of the first), keys the meaning column
/// lists under the row's path, and the per-hop breakdown's fields under every group.
fn documented() -> (BTreeSet<String>, String) {
    let text = read(&super::root().join("docs/output.md"));
    let start = text.find("## `DIR/summary.json`").expect("summary section");
    let end = text
        .find("## `DIR/timeseries.csv`")
        .expect("timeseries section");
    let section = text[start..end].to_string();
    let mut out = BTreeSet::new();
    let mut field_table = false;
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').collect();
        if cells.len() < 4 {
            continue;
        }
        let (key, meaning) = (cells[1].trim(), cells[2]);
        if key == "key" || key == "field" {
            field_table = key == "field";
            continue;
        }
        let key_spans = spans(key);
        let Some(first) = key_spans.first() else {
            continue;
        };
        let mut paths: Vec<String> = if field_table {
            expand(first)
                .into_iter()
                .map(|p| format!("breakdown.<>.<>.{p}"))
                .collect()
        } else {
            expand(first)
        };
        let base = parent(&paths[0]).to_string();
        for sib in &key_spans[1..] {
            let absolute = TOP.iter().any(|t| sib.starts_with(&format!("{t}.")));
            for p in expand(sib) {
                paths.push(if absolute { p } else { format!("{base}.{p}") });
            }
        }
        for word in spans(meaning) {
            if word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_{},".contains(c))
            {
                for p in paths.clone() {
                    out.extend(expand(word).into_iter().map(|w| format!("{p}.{w}")));
                }
            }
        }
        out.extend(paths);
    }
    (out, section)
}

const NAMED: [&str; 14] = [
    "classes",
    "pools",
    "tools",
    "tenants",
    "by_class",
    "by_lane",
    "by_tier",
    "by_pool",
    "by_tenant",
    "by_tool",
    "failed_by_cause",
    "rejected_by_cause",
    "refused_by_cause",
    "refusals_by_cause",
];

/// Leaf key paths of a JSON document, names replaced by `<>`, list elements by `[]`;
/// an empty object or list is a leaf.
fn leaves(v: &Value, path: &str, named: bool, out: &mut BTreeSet<String>) {
    let join = |seg: &str| {
        if path.is_empty() {
            seg.to_string()
        } else {
            format!("{path}.{seg}")
        }
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                // The six breakdown groups share their fields.
                let seg = if named || path == "breakdown" {
                    "<>"
                } else {
                    k
                };
                leaves(x, &join(seg), !named && NAMED.contains(&k.as_str()), out);
            }
        }
        Value::Array(a) if a.iter().any(Value::is_object) => {
            for x in a {
                leaves(x, &format!("{path}[]"), false, out);
            }
        }
        _ => {
            out.insert(path.to_string());
        }
    }
}

#[test]
fn every_summary_key_is_documented() {
    let (docs, section) = documented();
    // Sanity: the parser sees the table rows (a broken parser would pass nothing).
    for p in [
        "classes.<>.latency_s.p99",
        "tools.<>.max_in_flight",
        "pools.<>.llm.replicas.per_replica[].kv_capacity_blocks",
        "totals.usd_unattributed_split.running_at_end",
        "breakdown.<>.<>.ttft_s",
        "replications.classes.<>.slo_burn_rate",
    ] {
        assert!(docs.contains(p), "parser misses {p}");
    }
    let dist = section.contains("Every distribution is `{n, mean, p50, p90, p95, p99, p999, max}`");
    let estimate = section.contains("estimate `{mean, ci95, n}`");
    assert!(dist && estimate);
    let mut paths = BTreeSet::new();
    let runs: [(&str, &[&str]); 4] = [
        ("scenarios/quickstart.toml", &[]),
        (
            "scenarios/quickstart.toml",
            &["--replications", "3", "--set", "simulation.horizon=8m"],
        ),
        (
            "scenarios/gpu-pool.toml",
            &["--set", "simulation.horizon=6m"],
        ),
        (
            "scenarios/tier-policies.toml",
            &["--set", "simulation.horizon=15m"],
        ),
    ];
    for (scenario, extra) in runs {
        let (dir, _) = run_scenario(scenario, extra);
        leaves(&summary(dir.path()), "", false, &mut paths);
    }
    // The walk reaches the keys this test is about.
    for p in [
        "tools.<>.calls",
        "pools.<>.llm.replicas.perf_model",
        "pools.<>.llm.replicas.picker",
        "pools.<>.llm.replicas.service_noops",
        "pools.<>.llm.replicas.per_replica[].waiting_now",
        "replications.totals.usd_spent.ci95",
    ] {
        assert!(paths.contains(p), "walk misses {p}");
    }
    let undocumented: Vec<&String> = paths
        .iter()
        .filter(|p| {
            let p = p.as_str();
            if docs.contains(p) {
                return false;
            }
            let (up, leaf) = (parent(p), &p[parent(p).len() + 1..]);
            let parent_ok = docs.contains(up);
            let dist_leaf = ["n", "mean", "p50", "p90", "p95", "p99", "p999", "max"];
            if p.starts_with("breakdown.") && parent_ok && dist_leaf.contains(&leaf) {
                return false;
            }
            if p.starts_with("replications.") && parent_ok && ["mean", "ci95", "n"].contains(&leaf)
            {
                return false;
            }
            // An empty object (no tools, no causes) is documented by its children.
            !docs.iter().any(|d| d.starts_with(&format!("{p}.")))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "summary.json keys missing from docs/output.md:\n{}",
        undocumented
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------------
// The spend balance.

/// The dollar figures of the table's `Total:` line and the balance under it.
fn table_balance(stdout: &str) -> [f64; 6] {
    let num = |s: &str| -> f64 {
        s.trim_start_matches('$')
            .trim_end_matches([',', ')'])
            .parse()
            .unwrap_or_else(|_| panic!("{s:?}"))
    };
    let total = stdout
        .lines()
        .find(|l| l.starts_with("Total: "))
        .expect("Total line");
    let spent = num(total.split_whitespace().nth(1).unwrap());
    let bal = stdout
        .lines()
        .find(|l| l.starts_with("  = $"))
        .expect("balance line");
    let d: Vec<f64> = bal
        .split_whitespace()
        .filter(|w| w.starts_with('$') || w.starts_with("($"))
        .map(|w| num(w.trim_start_matches('(')))
        .collect();
    assert_eq!(d.len(), 5, "{bal}");
    [spent, d[0], d[1], d[2], d[3], d[4]]
}

#[test]
fn spend_balances_to_the_cent_with_warmup_and_work_in_flight() {
    // The default quickstart: a 2-minute warm-up, stopped at the horizon.
    let (dir, stdout) = quickstart(&["--no-plots"]);
    let s = summary(dir.path());
    let t = &s["totals"];
    assert_eq!(s["warmup_seconds"], 120.0);
    assert_eq!(s["drain"], false);
    let (spent, wf, idle, un) = (
        f(&t["usd_spent"]),
        f(&t["usd_workflows"]),
        f(&t["usd_idle"]),
        f(&t["usd_unattributed"]),
    );
    let warm = f(&t["usd_unattributed_split"]["warmup_workflows"]);
    let running = f(&t["usd_unattributed_split"]["running_at_end"]);
    // Both amounts are there (the gap they explain was $0.22 before they were reported).
    assert!(warm > 0.01 && running > 0.01, "{warm} {running}");
    assert!((warm + running - un).abs() < 1e-9);
    assert!(
        (wf + idle + un - spent).abs() < 0.005,
        "{wf} + {idle} + {un} != {spent}"
    );
    assert!((un - 0.22).abs() < 0.005, "{un}");
    // Work still running at the horizon can be no more than one server-length of each
    // in-flight workflow's current hop: under 10 workflows x 60 s at $12/h.
    let in_flight: u64 = ["chat", "report"]
        .iter()
        .map(|c| s["classes"][c]["in_flight"].as_u64().unwrap())
        .sum();
    assert!(in_flight > 0);
    assert!(
        running < in_flight as f64 * 60.0 * 12.0 / 3600.0,
        "{running}"
    );
    // The table prints the same balance, adding up to the cent.
    let [t_spent, t_wf, t_idle, t_un, t_warm, t_running] = table_balance(&stdout);
    assert!((t_wf + t_idle + t_un - t_spent).abs() < 0.005, "{stdout}");
    assert!((t_warm + t_running - t_un).abs() < 0.0002, "{stdout}");
    for (a, b) in [(t_spent, spent), (t_wf, wf), (t_idle, idle), (t_un, un)] {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }

    // No warm-up: nothing from warm-up workflows; still running at the end.
    let (dir, _) = quickstart(&["--no-plots", "--set", "simulation.warmup=0s"]);
    let t = summary(dir.path())["totals"].clone();
    assert_eq!(f(&t["usd_unattributed_split"]["warmup_workflows"]), 0.0);
    assert!(f(&t["usd_unattributed_split"]["running_at_end"]) > 0.01);
    let bal = f(&t["usd_workflows"]) + f(&t["usd_idle"]) + f(&t["usd_unattributed"]);
    assert!((bal - f(&t["usd_spent"])).abs() < 0.005);
    // Drained: nothing still running; the warm-up's part remains.
    let (dir, _) = quickstart(&["--no-plots", "--set", "simulation.drain=true"]);
    let t = summary(dir.path())["totals"].clone();
    assert!(f(&t["usd_unattributed_split"]["running_at_end"]).abs() < 1e-9);
    assert!(f(&t["usd_unattributed_split"]["warmup_workflows"]) > 0.01);
    let bal = f(&t["usd_workflows"]) + f(&t["usd_idle"]) + f(&t["usd_unattributed"]);
    assert!((bal - f(&t["usd_spent"])).abs() < 0.005);
    // Both off: workflows and idle are everything.
    let (dir, _) = quickstart(&[
        "--no-plots",
        "--set",
        "simulation.drain=true",
        "--set",
        "simulation.warmup=0s",
    ]);
    let t = summary(dir.path())["totals"].clone();
    assert!(f(&t["usd_unattributed"]).abs() < 1e-9, "{t}");

    // A GPU pool (iteration time shared by tokens) and API and tool calls balance too.
    for scenario in ["scenarios/gpu-pool.toml", "scenarios/tier-policies.toml"] {
        let (dir, _) = run_scenario(scenario, &[]);
        let t = summary(dir.path())["totals"].clone();
        assert!(f(&t["usd_unattributed"]) > 0.0, "{scenario}");
        let bal = f(&t["usd_workflows"]) + f(&t["usd_idle"]) + f(&t["usd_unattributed"]);
        assert!((bal - f(&t["usd_spent"])).abs() < 0.005, "{scenario}: {t}");
    }
}

// ---------------------------------------------------------------------------------
// The SLO call-out, zeros, and replications.

#[test]
fn slo_misses_are_called_out_worst_burn_rate_first_not_alphabetically() {
    // A 20 s SLO for `report` (p50 18.6 s) makes it the worst class, though it sorts
    // after `chat`.
    let (dir, stdout) = quickstart(&["--no-plots", "--set", "classes.report.slo=20s"]);
    let s = summary(dir.path());
    let burn = |c: &str| f(&s["classes"][c]["slo_burn_rate"]);
    assert!(burn("report") > 30.0 && burn("chat") > 1.0 && burn("chat") < 10.0);
    let lines: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("SLO misses:"))
        .take(2)
        .collect();
    assert!(lines[0].starts_with("SLO misses: report"), "{stdout}");
    assert!(lines[1].trim_start().starts_with("chat"), "{stdout}");
    for (line, c) in lines.iter().zip(["report", "chat"]) {
        assert!(
            line.ends_with(&format!("burn rate {:.1}x", burn(c))),
            "{line} vs {}",
            burn(c)
        );
        let att = f(&s["classes"][c]["slo_attainment"]);
        assert!((burn(c) - (1.0 - att) / 0.01).abs() < 1e-9);
    }
    // The class table keeps its alphabetical order.
    let chat = stdout.find("\n  chat ").unwrap();
    let report = stdout.find("\n  report ").unwrap();
    assert!(chat < report);
}

#[test]
fn no_negative_zero_and_unmodelled_counts_print_a_dash() {
    let (dir, stdout) = quickstart(&["--no-plots"]);
    let text = read(&dir.path().join("summary.json"));
    assert!(!text.contains("-0.0"), "negative zero in summary.json");
    let s: Value = serde_json::from_str(&text).unwrap();
    assert!(s["tools"].as_object().unwrap().is_empty());
    let tools = f(&s["totals"]["usd_tools"]);
    assert!(tools == 0.0 && tools.is_sign_positive());
    for file in ["showback.csv", "timeseries.csv"] {
        let csv = read(&dir.path().join(file));
        assert!(!csv.split([',', '\n']).any(|c| c == "-0"), "{file}");
    }
    // Abstract pools model no tokens and the chain has no fan-out: `-`, not 0, in the
    // table; the JSON keeps numbers.
    assert_eq!(f(&s["classes"]["chat"]["tokens_per_workflow"]["p95"]), 0.0);
    let row = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Work and waste per class"))
        .find(|l| l.starts_with("  chat "))
        .unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..5], &["-", "-", "-", "0.00"], "{row}");
    // A GPU pool models tokens: numbers there.
    let (dir, stdout) = run_scenario(
        "scenarios/gpu-pool.toml",
        &["--set", "simulation.horizon=6m"],
    );
    let s = summary(dir.path());
    let p95 = f(&s["classes"]["chat"]["tokens_per_workflow"]["p95"]);
    assert!(p95 > 100.0);
    let row = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Work and waste per class"))
        .find(|l| l.starts_with("  chat "))
        .unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[2].replace(',', ""),
        format!("{}", p95.round() as u64),
        "{row}"
    );
}

/// Mean and Student-t 95% half-width of `v`, computed here independently.
fn mean_ci(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    // t(0.975, 2) = 4.303
    (m, 4.303 * sd / n.sqrt())
}

#[test]
fn replication_intervals_match_the_student_t_formula() {
    let short = ["--set", "simulation.horizon=10m"];
    let mut args = vec!["--no-plots", "--replications", "3"];
    args.extend(short);
    let (dir, stdout) = quickstart(&args);
    let reps = summary(dir.path())["replications"].clone();
    assert_eq!(reps["seeds"], serde_json::json!([42, 43, 44]));
    // The same figures from the three single runs.
    let singles: Vec<Value> = (42..45)
        .map(|seed| {
            let seed = seed.to_string();
            let mut a = vec!["--no-plots", "--seed", &seed];
            a.extend(short);
            let (d, _) = quickstart(&a);
            summary(d.path())
        })
        .collect();
    type Pick = fn(&Value) -> &Value;
    let figures: [(&str, Pick, Pick); 9] = [
        (
            "chat burn",
            |r| &r["classes"]["chat"]["slo_burn_rate"],
            |s| &s["classes"]["chat"]["slo_burn_rate"],
        ),
        (
            "report burn",
            |r| &r["classes"]["report"]["slo_burn_rate"],
            |s| &s["classes"]["report"]["slo_burn_rate"],
        ),
        (
            "chat p95 $",
            |r| &r["classes"]["chat"]["usd_per_outcome_p95"],
            |s| &s["classes"]["chat"]["usd_per_outcome"]["p95"],
        ),
        (
            "report p95 $",
            |r| &r["classes"]["report"]["usd_per_outcome_p95"],
            |s| &s["classes"]["report"]["usd_per_outcome"]["p95"],
        ),
        (
            "chat waste",
            |r| &r["classes"]["chat"]["usd_waste"],
            |s| &s["classes"]["chat"]["usd_waste"]["failed"],
        ),
        (
            "pool idle",
            |r| &r["pools"]["llm-large"]["usd_idle"],
            |s| &s["pools"]["llm-large"]["usd_idle"],
        ),
        (
            "idle",
            |r| &r["totals"]["usd_idle"],
            |s| &s["totals"]["usd_idle"],
        ),
        (
            "spent",
            |r| &r["totals"]["usd_spent"],
            |s| &s["totals"]["usd_spent"],
        ),
        (
            "waste",
            |r| &r["totals"]["usd_waste"],
            |s| &s["totals"]["usd_waste"],
        ),
    ];
    for (what, rep, single) in figures {
        let e = rep(&reps);
        assert_eq!(e["n"], 3, "{what}: {e}");
        let v: Vec<f64> = singles.iter().map(|s| f(single(s))).collect();
        let (m, hw) = mean_ci(&v);
        assert!(
            (f(&e["mean"]) - m).abs() <= 1e-9 * m.abs().max(1.0),
            "{what}: {e} vs {v:?}"
        );
        assert!(
            (f(&e["ci95"]) - hw).abs() <= 1e-9 * hw.max(1.0),
            "{what}: {e} vs {v:?}"
        );
    }
    // The figures vary where they should: burn rate and idle dollars differ by seed,
    // capacity (all that is spent here) does not, and there is no waste.
    assert!(f(&reps["classes"]["chat"]["slo_burn_rate"]["ci95"]) > 0.1);
    assert!(f(&reps["totals"]["usd_idle"]["ci95"]) > 0.01);
    assert!(f(&reps["totals"]["usd_spent"]["ci95"]).abs() < 1e-9);
    assert_eq!(f(&reps["totals"]["usd_waste"]["mean"]), 0.0);
    // And the table shows them.
    for needle in [
        "burn",
        "p95 $",
        "$ waste",
        "$ idle",
        "; spent $",
        ", idle $",
        ", waste $",
    ] {
        assert!(stdout.contains(needle), "{needle:?} not in\n{stdout}");
    }
    let chat = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Across 3 replications"))
        .find(|l| l.starts_with("  chat "))
        .unwrap();
    let b = &reps["classes"]["chat"]["slo_burn_rate"];
    assert!(
        chat.contains(&format!("{:.1}x ± {:.1}", f(&b["mean"]), f(&b["ci95"]))),
        "{chat}"
    );
}

// ---------------------------------------------------------------------------------
// Showback: a tenant's cost centre.

#[test]
fn showback_rows_carry_the_tenants_cost_centre() {
    // acme names its cost centre; beta has no [tenants] section, so its cost centre is
    // its own name. Rows add up to the workflows' dollars.
    let text = r#"
[simulation]
horizon = "20m"
drain = true
[pools.p]
servers = 4
usd_per_server_hour = 3.6
service = { dist = "exponential", mean = "1s" }
[tenants.acme]
cost_centre = "CC-1042 claims ops"
[classes.a]
arrival = { process = "poisson", rate = 1.0 }
tenant = "acme"
hops = [{ pool = "p" }]
[classes.b]
arrival = { process = "poisson", rate = 0.5 }
tenant = "beta"
hops = [{ pool = "p" }]
"#;
    let dir = tempdir();
    let path = dir.path().join("showback.toml");
    std::fs::write(&path, text).expect("write");
    let d = dir.path().join("out");
    run_ok(&[
        "run",
        path.to_str().unwrap(),
        "--no-plots",
        "--out",
        d.to_str().unwrap(),
    ]);
    let s = summary(&d);
    assert_eq!(s["tenants"]["acme"]["cost_centre"], "CC-1042 claims ops");
    assert_eq!(s["tenants"]["beta"]["cost_centre"], "beta");
    let csv = read(&d.join("showback.csv"));
    let mut rows = csv::Reader::from_reader(csv.as_bytes());
    let mut usd = 0.0;
    let mut seen = Vec::new();
    for r in rows.records() {
        let r = r.expect("row");
        seen.push((r[0].to_string(), r[1].to_string()));
        usd += r[7].parse::<f64>().expect("usd");
    }
    assert_eq!(
        seen,
        [
            ("acme".to_string(), "CC-1042 claims ops".to_string()),
            ("beta".to_string(), "beta".to_string())
        ]
    );
    assert!(
        (usd - f(&s["totals"]["usd_workflows"])).abs() < 1e-4,
        "{usd}"
    );
}

//! `factorysim sweep`: one scenario over a grid of parameter values, with the queueing
//! theory next to the simulation where it applies (the teacher's "watch p99 bend as rho
//! nears 1", the architect's "how many servers").
//!
//! Every point runs the same seeds (common random numbers: the curves are smooth because
//! the arrivals and draws are shared), all (point, seed) runs in parallel with rayon and
//! collected in grid order, so the output does not depend on the thread count. `--shard
//! K/N` runs the points whose index is K-1 modulo N; each point's record is the same as in
//! the unsharded sweep, so shards merge by concatenating their points.

use crate::compare::split_top_level;
use crate::load::{InputError, parse_scenario};
use crate::replications::{Estimate, success_rate};
use crate::report::{Table, fmt_secs, fmt_secs_pm, fmt_usd};
use rayon::prelude::*;
use serde::Serialize;
use sim_core::Summary;
use sim_core::theory::PoolTheory;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Most grid points a sweep may have (a typo in a range should not start a day of runs).
const MAX_POINTS: usize = 10_000;

/// `factorysim sweep` arguments.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  factorysim sweep scenarios/mmc.toml --param classes.jobs.arrival.rate=2.0,2.8,3.4,3.6,3.8\n  factorysim sweep scenarios/mmc.toml --param classes.jobs.arrival.rate=2.0:3.8:0.3 --replications 5\n  factorysim sweep scenarios/mmc.toml --param pools.agents.servers=4,5,6 --param classes.jobs.arrival.rate=3,3.4\n  factorysim sweep scenarios/mmc.toml --param classes.jobs.arrival.rate=2:3.8:0.2 --shard 1/2 --out out/sweep-1\n\nA value list is comma-separated (commas inside brackets, braces or quotes belong to the\nvalue); START:STOP:STEP is an inclusive numeric range. Several --param make a grid (the\nfirst varies slowest). Writes DIR/sweep.json, DIR/sweep.csv and DIR/sweep.{svg,png}\n(see docs/output.md)."
)]
pub struct SweepArgs {
    /// Scenario file (TOML).
    pub scenario: PathBuf,
    /// A swept key and its values: KEY.PATH=V1,V2,... or KEY.PATH=START:STOP:STEP
    /// (repeatable: the grid is the product).
    #[arg(long = "param", value_name = "KEY.PATH=VALUES", required = true)]
    pub params: Vec<String>,
    /// Seeds per point: S, S+1, ..., S+N-1 (the same at every point).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub replications: u32,
    /// First seed S (default: simulation.seed of the scenario).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override a scenario value at every point (repeatable; applied first).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub sets: Vec<String>,
    /// Run only the points whose index is K-1 modulo N (K in 1..=N).
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Output directory for sweep.json, sweep.csv and the plot.
    #[arg(long, default_value = "out/sweep")]
    pub out: PathBuf,
    /// Print sweep.json to stdout instead of the tables.
    #[arg(long)]
    pub json: bool,
    /// Skip the plot (DIR/sweep.svg and .png).
    #[arg(long)]
    pub no_plots: bool,
}

/// What to sweep, independent of the command line.
#[derive(Clone, Debug, Default)]
pub struct SweepOptions {
    /// `--param` arguments, as typed.
    pub params: Vec<String>,
    /// Overrides applied at every point before the point's own.
    pub sets: Vec<String>,
    pub replications: u32,
    pub seed: Option<u64>,
    /// (K, N): the K-th of N shards, K in 1..=N.
    pub shard: Option<(usize, usize)>,
}

/// sweep.json. Its keys are a contract (docs/output.md).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sweep {
    pub scenario: String,
    /// The swept keys, in grid order (the first varies slowest).
    pub params: Vec<String>,
    /// Points in the whole grid (a shard runs some of them).
    pub grid_points: usize,
    /// "K/N" when this is a shard.
    pub shard: Option<String>,
    /// The seeds every point ran.
    pub seeds: Vec<u64>,
    pub points: Vec<SweepPoint>,
    /// What loading the points noted, each once (printed on stderr).
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// One grid point: its values, and per pool and class the simulated figures (mean and
/// 95% interval over the seeds) next to the theory where it applies.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepPoint {
    /// Position in the grid (0-based; the same in a shard and in the whole sweep).
    pub index: usize,
    /// The point's value of each swept key, as written.
    pub values: BTreeMap<String, String>,
    pub pools: BTreeMap<String, SweepPool>,
    pub classes: BTreeMap<String, SweepClass>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepPool {
    /// The scenario's a-priori offered load per server (as `check` prints it).
    pub offered_rho: f64,
    pub utilization: Option<Estimate>,
    pub prob_wait: Option<Estimate>,
    pub mean_wait_s: Option<Estimate>,
    pub p99_wait_s: Option<Estimate>,
    /// Closed-form results where the textbook assumptions hold, else null.
    pub theory: Option<TheoryFigures>,
}

/// `sim_core::theory::PoolTheory`, as written to sweep.json.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TheoryFigures {
    pub model: String,
    pub rho: f64,
    pub prob_wait: Option<f64>,
    pub mean_wait_s: Option<f64>,
    pub p99_wait_s: Option<f64>,
}

impl From<&PoolTheory> for TheoryFigures {
    fn from(t: &PoolTheory) -> Self {
        TheoryFigures {
            model: t.model.to_string(),
            rho: t.rho,
            prob_wait: t.p_wait,
            mean_wait_s: t.mean_wait_s,
            p99_wait_s: t.p99_wait_s,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepClass {
    pub latency_p50_s: Option<Estimate>,
    pub latency_p95_s: Option<Estimate>,
    pub latency_p99_s: Option<Estimate>,
    pub usd_per_outcome: Option<Estimate>,
    pub success_rate: Option<Estimate>,
}

const PARAM_SYNTAX: &str = "expected KEY.PATH=V1,V2,... or KEY.PATH=START:STOP:STEP, e.g. --param classes.jobs.arrival.rate=2:3.8:0.2";

/// Parses one `--param`: the key and its values, in order.
pub fn parse_param(arg: &str) -> Result<(String, Vec<String>), String> {
    let bad = |why: String| format!("--param `{arg}`: {why}; {PARAM_SYNTAX}");
    let Some((key, raw)) = arg.split_once('=') else {
        return Err(bad("no `=`".into()));
    };
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) || key.contains(' ') {
        return Err(bad(format!(
            "`{key}` is not a key path like pools.gpu.servers"
        )));
    }
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(bad("no values".into()));
    }
    let values = match range(raw) {
        Some(r) => r.map_err(bad)?,
        None => {
            let mut v = Vec::new();
            for piece in split_top_level(raw).map_err(|m| bad(m.to_string()))? {
                let piece = piece.trim();
                if piece.is_empty() {
                    return Err(bad("an empty value".into()));
                }
                v.push(piece.to_string());
            }
            v
        }
    };
    Ok((key.to_string(), values))
}

/// `START:STOP:STEP` with three numbers: the inclusive range (`None` when `raw` is not
/// of that form, so that values such as durations pass through).
fn range(raw: &str) -> Option<Result<Vec<String>, String>> {
    let parts: Vec<&str> = raw.split(':').map(str::trim).collect();
    if parts.len() != 3 {
        return None;
    }
    let nums: Vec<f64> = parts.iter().filter_map(|p| p.parse().ok()).collect();
    if nums.len() != 3 {
        return None;
    }
    let (start, stop, step) = (nums[0], nums[1], nums[2]);
    if !(step > 0.0 && step.is_finite() && start.is_finite() && stop.is_finite()) {
        return Some(Err(format!("the step must be a number > 0, got {step}")));
    }
    if stop < start {
        return Some(Err(format!("STOP ({stop}) is below START ({start})")));
    }
    let n = ((stop - start) / step + 1e-9).floor() as usize + 1;
    if n > MAX_POINTS {
        return Some(Err(format!("{n} values (at most {MAX_POINTS})")));
    }
    let integers = parts.iter().all(|p| p.parse::<i64>().is_ok());
    Some(Ok((0..n)
        .map(|i| {
            let x = start + i as f64 * step;
            if integers {
                format!("{}", x.round() as i64)
            } else {
                // Round away float noise (2.0 + 3 x 0.1), keep a decimal point so the value
                // stays a TOML float.
                let r = (x * 1e9).round() / 1e9;
                if r.fract() == 0.0 {
                    format!("{r:.1}")
                } else {
                    format!("{r}")
                }
            }
        })
        .collect()))
}

/// Parses `K/N`.
pub fn parse_shard(arg: &str) -> Result<(usize, usize), String> {
    let bad = || format!("--shard `{arg}`: expected K/N with 1 <= K <= N, e.g. --shard 1/4");
    let (k, n) = arg.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (
        k.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// The grid: every combination of the parameters' values, the first varying slowest.
fn grid(params: &[(String, Vec<String>)]) -> Vec<Vec<String>> {
    let mut points: Vec<Vec<String>> = vec![Vec::new()];
    for (_, values) in params {
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push(v.clone());
                    q
                })
            })
            .collect();
    }
    points
}

/// Runs the sweep; `on_done` is called after each run.
pub fn sweep(
    file: &str,
    text: &str,
    opts: &SweepOptions,
    on_done: &(dyn Fn() + Sync),
) -> Result<Sweep, InputError> {
    let mut params: Vec<(String, Vec<String>)> = Vec::new();
    for arg in &opts.params {
        let (key, values) = parse_param(arg).map_err(|m| InputError::new(file, m))?;
        if params.iter().any(|(k, _)| *k == key) {
            return Err(InputError::new(
                file,
                format!("--param `{key}` is given twice; list all its values in one --param"),
            ));
        }
        params.push((key, values));
    }
    if params.is_empty() {
        return Err(InputError::new(file, format!("no --param; {PARAM_SYNTAX}")));
    }
    // A swept key below a pool or class the scenario lacks would sweep nothing.
    if let Ok(table) = toml::from_str::<toml::Table>(text) {
        for (key, _) in &params {
            if let Some(m) = crate::compare::creates_undefined(&table, key) {
                return Err(InputError::new(file, format!("--param {m}")));
            }
        }
    }
    let all = grid(&params);
    if all.len() > MAX_POINTS {
        return Err(InputError::new(
            file,
            format!("the grid has {} points (at most {MAX_POINTS})", all.len()),
        ));
    }
    let base = parse_scenario(file, text, &opts.sets)?;
    let first_seed = opts.seed.unwrap_or(base.scenario.seed);
    let reps = opts.replications.max(1);
    let seeds: Vec<u64> = (0..reps as u64)
        .map(|i| first_seed.wrapping_add(i))
        .collect();
    // Load every point of this shard first: a bad value fails before any run.
    let mut points = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for (index, values) in all.iter().enumerate() {
        if let Some((k, n)) = opts.shard
            && index % n != k - 1
        {
            continue;
        }
        let mut sets = opts.sets.clone();
        sets.extend(
            params
                .iter()
                .zip(values)
                .map(|((k, _), v)| format!("{k}={v}")),
        );
        let loaded = parse_scenario(file, text, &sets).map_err(|e| {
            let at: Vec<String> = params
                .iter()
                .zip(values)
                .map(|((k, _), v)| format!("{k}={v}"))
                .collect();
            InputError::new(file, format!("sweep point {}: {}", at.join(", "), e.detail))
        })?;
        for n in loaded.notes {
            if !notes.contains(&n) {
                notes.push(n);
            }
        }
        points.push((index, values, loaded.scenario));
    }
    let jobs: Vec<(usize, u64)> = (0..points.len())
        .flat_map(|p| seeds.iter().map(move |&s| (p, s)))
        .collect();
    let summaries: Vec<Summary> = jobs
        .par_iter()
        .map(|&(p, seed)| {
            let mut sc = points[p].2.clone();
            sc.seed = seed;
            let r = crate::simulate(&sc, None);
            on_done();
            crate::check_input(&r).map(|()| r.summary())
        })
        .collect::<Result<_, _>>()?;
    let n = seeds.len();
    let out_points = points
        .iter()
        .enumerate()
        .map(|(pi, (index, values, sc))| {
            point(
                *index,
                &params,
                values,
                sc,
                &summaries[pi * n..(pi + 1) * n],
            )
        })
        .collect();
    Ok(Sweep {
        scenario: file.to_string(),
        params: params.iter().map(|(k, _)| k.clone()).collect(),
        grid_points: all.len(),
        shard: opts.shard.map(|(k, n)| format!("{k}/{n}")),
        seeds,
        points: out_points,
        notes,
    })
}

fn point(
    index: usize,
    params: &[(String, Vec<String>)],
    values: &[String],
    sc: &sim_core::Scenario,
    runs: &[Summary],
) -> SweepPoint {
    let est = |f: &dyn Fn(&Summary) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        Estimate::of(&v)
    };
    let theory = sim_core::theory::pool_theory(sc);
    let load = sc.offered_load();
    let mut pools = BTreeMap::new();
    for (pi, p) in sc.pools.iter().enumerate() {
        let name = &p.name;
        let pool = |s: &Summary| s.pools.get(name).cloned();
        pools.insert(
            name.clone(),
            SweepPool {
                offered_rho: load.get(pi).map_or(0.0, |l| l.rho),
                utilization: est(&|s| pool(s).map(|p| p.utilization)),
                prob_wait: est(&|s| pool(s).map(|p| p.prob_wait)),
                mean_wait_s: est(&|s| pool(s).map(|p| p.queue_wait_s.mean)),
                p99_wait_s: est(&|s| pool(s).map(|p| p.queue_wait_s.p99)),
                theory: theory.get(pi).and_then(|t| t.as_ref()).map(Into::into),
            },
        );
    }
    let mut classes = BTreeMap::new();
    for c in &sc.classes {
        let class = |s: &Summary| s.classes.get(&c.name).cloned();
        classes.insert(
            c.name.clone(),
            SweepClass {
                latency_p50_s: est(&|s| class(s).and_then(|c| c.latency_s.p50)),
                latency_p95_s: est(&|s| class(s).and_then(|c| c.latency_s.p95)),
                latency_p99_s: est(&|s| class(s).and_then(|c| c.latency_s.p99)),
                usd_per_outcome: est(&|s| class(s).and_then(|c| c.usd_per_outcome.mean)),
                success_rate: est(&|s| class(s).as_ref().and_then(success_rate)),
            },
        );
    }
    SweepPoint {
        index,
        values: params
            .iter()
            .zip(values)
            .map(|((k, _), v)| (k.clone(), v.clone()))
            .collect(),
        pools,
        classes,
    }
}

/// sweep.json text.
pub fn to_json(s: &Sweep) -> String {
    crate::outputs::to_json_pretty(s).unwrap_or_else(|_| "{}".into()) + "\n"
}

fn est_secs(e: &Option<Estimate>) -> String {
    e.as_ref()
        .map(|e| fmt_secs_pm(e.mean, e.ci95))
        .unwrap_or_else(|| "-".into())
}

fn est_ratio(e: &Option<Estimate>) -> String {
    match e {
        None => "-".into(),
        Some(Estimate {
            mean,
            ci95: Some(h),
            ..
        }) => format!("{mean:.3} ± {h:.3}"),
        Some(e) => format!("{:.3}", e.mean),
    }
}

/// The terminal tables: pools (simulated next to theory), then classes.
pub fn table(s: &Sweep) -> String {
    let mut out = String::new();
    let np = s.params.len();
    let short: Vec<&str> = s
        .params
        .iter()
        .map(|k| k.rsplit('.').next().unwrap_or(k))
        .collect();
    let mut h: Vec<&str> = short.clone();
    h.extend([
        "pool",
        "rho",
        "util",
        "P(wait)",
        "theory",
        "mean wait",
        "theory",
        "p99 wait",
        "theory",
    ]);
    let mut t = Table::new(&h).left_columns(np + 1);
    for p in &s.points {
        for (name, pool) in &p.pools {
            let mut row: Vec<String> = s.params.iter().map(|k| p.values[k].clone()).collect();
            let th = pool.theory.as_ref();
            let theory_secs = |x: Option<f64>| match (th, x) {
                (None, _) => "-".to_string(),
                (Some(_), None) => "unstable".to_string(),
                (Some(_), Some(x)) => fmt_secs(Some(x)),
            };
            row.extend([
                name.clone(),
                format!("{:.3}", pool.offered_rho),
                est_ratio(&pool.utilization),
                est_ratio(&pool.prob_wait),
                match th {
                    None => "-".into(),
                    Some(t) => t
                        .prob_wait
                        .map(|x| format!("{x:.3}"))
                        .unwrap_or_else(|| if t.rho >= 1.0 { "unstable" } else { "-" }.into()),
                },
                est_secs(&pool.mean_wait_s),
                theory_secs(th.and_then(|t| t.mean_wait_s)),
                est_secs(&pool.p99_wait_s),
                match th {
                    Some(t) if t.model == "M/M/c" => theory_secs(t.p99_wait_s),
                    _ => "-".into(),
                },
            ]);
            t.row(row);
        }
    }
    t.render(&mut out);
    out.push('\n');
    let mut h: Vec<&str> = short;
    h.extend(["class", "p50", "p95", "p99", "$/outcome", "success"]);
    let mut t = Table::new(&h).left_columns(np + 1);
    for p in &s.points {
        for (name, c) in &p.classes {
            let mut row: Vec<String> = s.params.iter().map(|k| p.values[k].clone()).collect();
            row.extend([
                name.clone(),
                est_secs(&c.latency_p50_s),
                est_secs(&c.latency_p95_s),
                est_secs(&c.latency_p99_s),
                c.usd_per_outcome
                    .as_ref()
                    .map(|e| fmt_usd(Some(e.mean)))
                    .unwrap_or_else(|| "-".into()),
                est_ratio(&c.success_rate),
            ]);
            t.row(row);
        }
    }
    t.render(&mut out);
    if s.seeds.len() > 1 {
        out.push_str(&format!(
            "\n± = 95% confidence half-width over {} seeds ({}..{}), the same at every point.\n",
            s.seeds.len(),
            s.seeds[0],
            s.seeds[s.seeds.len() - 1]
        ));
    }
    out
}

/// sweep.csv: one row per point and pool or class (`kind` says which), the swept values
/// first. Estimates are their means; `*_ci95` their half-widths.
pub fn to_csv(s: &Sweep) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = vec!["index".into()];
    header.extend(s.params.iter().cloned());
    header.extend(
        [
            "kind",
            "name",
            "offered_rho",
            "utilization",
            "prob_wait",
            "mean_wait_s",
            "p99_wait_s",
            "p99_wait_s_ci95",
            "theory_model",
            "theory_prob_wait",
            "theory_mean_wait_s",
            "theory_p99_wait_s",
            "latency_p50_s",
            "latency_p95_s",
            "latency_p99_s",
            "latency_p99_s_ci95",
            "usd_per_outcome",
            "success_rate",
        ]
        .map(String::from),
    );
    w.write_record(&header)?;
    let num = |x: Option<f64>| x.map(|v| v.to_string()).unwrap_or_default();
    let mean = |e: &Option<Estimate>| num(e.as_ref().map(|e| e.mean));
    let ci = |e: &Option<Estimate>| num(e.as_ref().and_then(|e| e.ci95));
    for p in &s.points {
        let lead: Vec<String> = std::iter::once(p.index.to_string())
            .chain(s.params.iter().map(|k| p.values[k].clone()))
            .collect();
        for (name, pool) in &p.pools {
            let th = pool.theory.as_ref();
            let mut r = lead.clone();
            r.extend([
                "pool".to_string(),
                name.clone(),
                pool.offered_rho.to_string(),
                mean(&pool.utilization),
                mean(&pool.prob_wait),
                mean(&pool.mean_wait_s),
                mean(&pool.p99_wait_s),
                ci(&pool.p99_wait_s),
                th.map(|t| t.model.clone()).unwrap_or_default(),
                num(th.and_then(|t| t.prob_wait)),
                num(th.and_then(|t| t.mean_wait_s)),
                num(th.and_then(|t| t.p99_wait_s)),
            ]);
            r.extend(std::iter::repeat_n(String::new(), 6));
            w.write_record(&r)?;
        }
        for (name, c) in &p.classes {
            let mut r = lead.clone();
            r.extend(["class".to_string(), name.clone()]);
            r.extend(std::iter::repeat_n(String::new(), 10));
            r.extend([
                mean(&c.latency_p50_s),
                mean(&c.latency_p95_s),
                mean(&c.latency_p99_s),
                ci(&c.latency_p99_s),
                mean(&c.usd_per_outcome),
                mean(&c.success_rate),
            ]);
            w.write_record(&r)?;
        }
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The plot's series: x = the first swept value (numeric), one series per class (p99
/// latency) and per pool with theory (p99 or mean wait, simulated and theory), per
/// combination of the other swept values. `None` when the first parameter is not numeric.
pub fn plot_series(s: &Sweep) -> Option<crate::plots::SweepSeries> {
    let first = s.params.first()?;
    let x_of = |p: &SweepPoint| p.values.get(first).and_then(|v| v.parse::<f64>().ok());
    if s.points.iter().any(|p| x_of(p).is_none()) {
        return None;
    }
    let rest = |p: &SweepPoint| {
        s.params[1..]
            .iter()
            .map(|k| format!("{}={}", k.rsplit('.').next().unwrap_or(k), p.values[k]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let label = |name: &str, p: &SweepPoint| {
        let r = rest(p);
        if r.is_empty() {
            name.to_string()
        } else {
            format!("{name} ({r})")
        }
    };
    let mut latency: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    let mut wait_sim: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    let mut wait_theory: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut any_p99_theory = true;
    for p in &s.points {
        let x = x_of(p)?;
        for (name, c) in &p.classes {
            if let Some(e) = &c.latency_p99_s {
                latency
                    .entry(label(name, p))
                    .or_default()
                    .push((x, e.mean, e.ci95.unwrap_or(0.0)));
            }
        }
        for pool in p.pools.values() {
            if let Some(t) = &pool.theory {
                any_p99_theory &= t.model == "M/M/c";
            }
        }
    }
    // Waits: the p99 where every theory line is M/M/c, else the mean (P-K gives the mean).
    let use_p99 = any_p99_theory;
    for p in &s.points {
        let x = x_of(p)?;
        for (name, pool) in &p.pools {
            let Some(t) = &pool.theory else { continue };
            let sim = if use_p99 {
                &pool.p99_wait_s
            } else {
                &pool.mean_wait_s
            };
            if let Some(e) = sim {
                wait_sim.entry(label(name, p)).or_default().push((
                    x,
                    e.mean,
                    e.ci95.unwrap_or(0.0),
                ));
            }
            let th = if use_p99 { t.p99_wait_s } else { t.mean_wait_s };
            if let Some(y) = th {
                wait_theory.entry(label(name, p)).or_default().push((x, y));
            }
        }
    }
    Some(crate::plots::SweepSeries {
        x_label: first.clone(),
        latency: latency.into_iter().collect(),
        wait_label: if use_p99 {
            "p99 wait in queue (s)".into()
        } else {
            "mean wait in queue (s)".into()
        },
        wait_sim: wait_sim.into_iter().collect(),
        wait_theory: wait_theory.into_iter().collect(),
    })
}

/// `factorysim sweep`.
pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let file = args.scenario.display().to_string();
    let text = std::fs::read_to_string(&args.scenario)
        .map_err(|e| InputError::new(&file, format!("cannot read scenario file: {e}")))?;
    let shard = match &args.shard {
        Some(s) => Some(parse_shard(s).map_err(|m| InputError::new(&file, m))?),
        None => None,
    };
    let opts = SweepOptions {
        params: args.params.clone(),
        sets: args.sets.clone(),
        replications: args.replications,
        seed: args.seed,
        shard,
    };
    // The grid size first, so the progress bar knows the number of runs.
    let mut planned: u64 = args.replications as u64;
    for p in &args.params {
        let (_, v) = parse_param(p).map_err(|m| InputError::new(&file, m))?;
        planned = planned.saturating_mul(v.len() as u64);
    }
    if let Some((_, n)) = shard {
        planned = planned.div_ceil(n as u64);
    }
    let bar = crate::progress_bar(
        planned,
        "{spinner} sweeping [{bar:40}] {pos}/{len} runs ({elapsed})",
    );
    let done = || bar.inc(1);
    let result = sweep(&file, &text, &opts, &done)?;
    for note in &result.notes {
        eprintln!("note: {note}");
    }
    bar.finish_and_clear();
    let json = to_json(&result);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output directory {}", args.out.display()))?;
    let path = args.out.join("sweep.json");
    std::fs::write(&path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    let csv_path = args.out.join("sweep.csv");
    std::fs::write(&csv_path, to_csv(&result)?)
        .with_context(|| format!("cannot write {}", csv_path.display()))?;
    let plotted = match (args.no_plots, plot_series(&result)) {
        (false, Some(series)) => {
            crate::plots::sweep_lines(&args.out.join("sweep"), &series)?;
            true
        }
        _ => false,
    };
    if args.json {
        crate::out!("{json}");
    } else {
        crate::outln!("{file}");
        crate::out!("{}", table(&result));
        crate::outln!(
            "\nWrote {}, {}{}",
            path.display(),
            csv_path.display(),
            if plotted {
                format!(" and {}", args.out.join("sweep.{svg,png}").display())
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_lists_and_ranges() {
        assert_eq!(
            parse_param("classes.jobs.arrival.rate=2.0:2.6:0.2"),
            Ok((
                "classes.jobs.arrival.rate".into(),
                vec!["2.0".into(), "2.2".into(), "2.4".into(), "2.6".into()]
            ))
        );
        assert_eq!(
            parse_param("pools.a.servers=4:8:2"),
            Ok((
                "pools.a.servers".into(),
                vec!["4".into(), "6".into(), "8".into()]
            ))
        );
        assert_eq!(
            parse_param(r#"pools.a.service={dist="constant",value="1s"},"2s""#),
            Ok((
                "pools.a.service".into(),
                vec![r#"{dist="constant",value="1s"}"#.into(), r#""2s""#.into()]
            ))
        );
        for (bad, needle) in [
            ("pools.a.servers", "no `=`"),
            ("pools..servers=1", "not a key path"),
            ("pools.a.servers=", "no values"),
            ("pools.a.servers=1,,2", "an empty value"),
            ("pools.a.servers=4:2:1", "below START"),
            ("pools.a.servers=1:2:0", "step must be"),
            ("pools.a.servers=0:100000:1", "at most"),
        ] {
            let e = parse_param(bad).err().unwrap_or_default();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        assert_eq!(parse_shard("2/3"), Ok((2, 3)));
        for bad in ["0/2", "3/2", "1", "a/b", "1/0"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }

    const MMC: &str = r#"
[simulation]
horizon = "20000s"
warmup = "200s"
seed = 7
[pools.q]
servers = 2
service = { dist = "exponential", mean = "1s" }
[classes.jobs]
arrival = { process = "poisson", rate = 1.0 }
hops = [{ pool = "q" }]
"#;

    fn opts(params: &[&str], reps: u32, shard: Option<(usize, usize)>) -> SweepOptions {
        SweepOptions {
            params: params.iter().map(|s| s.to_string()).collect(),
            sets: Vec::new(),
            replications: reps,
            seed: None,
            shard,
        }
    }

    #[test]
    fn sweep_points_match_erlang_c_within_their_intervals() {
        let s = sweep(
            "mmc.toml",
            MMC,
            &opts(&["classes.jobs.arrival.rate=1.0,1.6"], 4, None),
            &|| {},
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.seeds, [7, 8, 9, 10]);
        assert_eq!(s.points.len(), 2);
        for (p, lambda) in s.points.iter().zip([1.0, 1.6]) {
            let q = &p.pools["q"];
            let th = q.theory.as_ref().unwrap_or_else(|| panic!("no theory"));
            assert_eq!(th.model, "M/M/c");
            assert!((th.rho - lambda / 2.0).abs() < 1e-12);
            let exact = (
                sim_core::theory::erlang_c(2, lambda),
                sim_core::theory::mmc_mean_wait(2, lambda, 1.0),
            );
            assert!((th.prob_wait.unwrap_or(0.0) - exact.0).abs() < 1e-12);
            assert!((th.mean_wait_s.unwrap_or(0.0) - exact.1).abs() < 1e-12);
            // The simulated figures agree with the theory within a 95% interval widened
            // by half (four seeds of 20,000 s).
            for (sim, theory) in [(&q.prob_wait, exact.0), (&q.mean_wait_s, exact.1)] {
                let e = sim.as_ref().unwrap_or_else(|| panic!("no estimate"));
                let hw = e.ci95.unwrap_or(0.0);
                assert!(hw > 0.0);
                assert!(
                    (e.mean - theory).abs() <= 1.5 * hw,
                    "rate {lambda}: {} ± {hw} vs {theory}",
                    e.mean
                );
            }
        }
    }

    #[test]
    fn shards_and_thread_counts_give_the_same_points() {
        let params = [
            "pools.q.servers=2,3",
            "classes.jobs.arrival.rate=0.5:1.5:0.5",
        ];
        let run = |threads: usize, shard| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            pool.install(|| sweep("mmc.toml", MMC, &opts(&params, 2, shard), &|| {}))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let whole = run(2, None);
        assert_eq!(whole.grid_points, 6);
        assert_eq!(to_json(&whole), to_json(&run(1, None)));
        let (a, b) = (run(2, Some((1, 2))), run(1, Some((2, 2))));
        assert_eq!(a.shard.as_deref(), Some("1/2"));
        assert_eq!(
            a.points.iter().map(|p| p.index).collect::<Vec<_>>(),
            [0, 2, 4]
        );
        let mut merged: Vec<SweepPoint> = a.points.into_iter().chain(b.points).collect();
        merged.sort_by_key(|p| p.index);
        assert_eq!(merged, whole.points);
        // The first parameter varies slowest.
        assert_eq!(whole.points[3].values["pools.q.servers"], "3");
        assert_eq!(whole.points[3].values["classes.jobs.arrival.rate"], "0.5");
        // A different point really is different.
        assert_ne!(whole.points[0].pools, whole.points[1].pools);
    }

    #[test]
    fn a_bad_point_names_itself_before_anything_runs() {
        let ran = std::sync::atomic::AtomicU32::new(0);
        let e = sweep(
            "mmc.toml",
            MMC,
            &opts(&["pools.q.servers=2,0"], 1, None),
            &|| {
                ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            },
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("mmc.toml"), "{e}");
        assert!(e.contains("sweep point pools.q.servers=0"), "{e}");
        assert!(e.contains("servers"), "{e}");
        assert_eq!(ran.load(std::sync::atomic::Ordering::Relaxed), 0);
        let e = sweep(
            "mmc.toml",
            MMC,
            &opts(&["pools.q.servers=1", "pools.q.servers=2"], 1, None),
            &|| {},
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("given twice"), "{e}");
        // A typo in a pool name would sweep nothing: refused, naming what exists.
        let e = sweep(
            "mmc.toml",
            MMC,
            &opts(&["pools.qq.servers=1,2"], 1, None),
            &|| {},
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.contains("creates pools.qq") && e.contains("it has: q"),
            "{e}"
        );
    }

    #[test]
    fn the_grid_varies_the_first_parameter_slowest() {
        let g = grid(&[
            ("a".into(), vec!["1".into(), "2".into()]),
            ("b".into(), vec!["x".into(), "y".into(), "z".into()]),
        ]);
        let flat: Vec<String> = g.iter().map(|p| p.join("")).collect();
        assert_eq!(flat, ["1x", "1y", "1z", "2x", "2y", "2z"]);
    }
}

//! The engine against closed-form queueing theory, conservation laws and determinism.
//!
//! Each theory check runs independent replications (different seeds), builds a 99%
//! Student-t confidence interval from them, and asserts both that the theory value lies
//! inside it and that the interval is narrow enough (half-width < 2.5% of the value) that
//! a 5% modelling error would be caught.

use sim_core::metrics::RunResult;
use sim_core::theory;
use sim_core::{RunOptions, Scenario, ScenarioSpec, run};

// One test binary for the crate: the results tests live in their own file as a module.
#[path = "engine/results.rs"]
mod results;

fn scenario(text: &str) -> Scenario {
    let spec: ScenarioSpec = toml::from_str(text).expect("test scenario parses");
    spec.validate().expect("test scenario is valid")
}

fn run_seed(text: &str, seed: u64) -> RunResult {
    let mut sc = scenario(text);
    sc.seed = seed;
    run(&sc, RunOptions::default())
}

/// Two-sided 99% Student-t quantiles for n - 1 degrees of freedom (n = replications).
fn t99(n: usize) -> f64 {
    match n {
        10 => 3.250,
        16 => 2.947,
        20 => 2.861,
        _ => panic!("add the t quantile for n = {n}"),
    }
}

struct Interval {
    mean: f64,
    half_width: f64,
}

fn replicate(text: &str, n: usize, f: impl Fn(&RunResult) -> f64) -> Interval {
    let xs: Vec<f64> = (0..n)
        .map(|i| f(&run_seed(text, 1000 + i as u64)))
        .collect();
    interval(&xs)
}

/// The 99% interval of replication values `xs`.
fn interval(xs: &[f64]) -> Interval {
    let n = xs.len();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
    Interval {
        mean,
        half_width: t99(n) * (var / n as f64).sqrt(),
    }
}

fn assert_matches(what: &str, ci: &Interval, theory: f64) {
    let rel = ci.half_width / theory;
    eprintln!(
        "{what}: simulated {:.5} +/- {:.5} (99% CI, {:.2}% of theory), theory {:.5}",
        ci.mean,
        ci.half_width,
        rel * 100.0,
        theory
    );
    assert!(
        rel < 0.025,
        "{what}: CI half-width {:.5} is {:.2}% of the theory value; too wide to catch a 5% error",
        ci.half_width,
        rel * 100.0
    );
    assert!(
        (ci.mean - theory).abs() <= ci.half_width,
        "{what}: simulated {:.5} +/- {:.5} does not contain theory {:.5}",
        ci.mean,
        ci.half_width,
        theory
    );
}

fn queue_scenario(servers: u32, rate: f64, service: &str, horizon: &str, warmup: &str) -> String {
    format!(
        r#"
[simulation]
horizon = "{horizon}"
warmup = "{warmup}"
[pools.q]
servers = {servers}
usd_per_server_hour = 3.6
service = {service}
[classes.jobs]
arrival = {{ process = "poisson", rate = {rate} }}
hops = [{{ pool = "q" }}]
"#
    )
}

fn pool(
    r: &RunResult,
) -> (
    &sim_core::metrics::PoolStats,
    &sim_core::station::StationReport,
) {
    r.pool("q").expect("pool q exists")
}

#[test]
fn mm1_at_rho_half() {
    // mu = 10/s, lambda = 5/s: Wq = rho / (mu - lambda) = 0.1s.
    let text = queue_scenario(
        1,
        5.0,
        r#"{ dist = "exponential", mean = "100ms" }"#,
        "20000s",
        "100s",
    );
    let ci = replicate(&text, 10, |r| pool(r).0.mean_wait_s());
    assert_matches(
        "M/M/1 rho=0.5 mean wait",
        &ci,
        theory::mm1_mean_wait(5.0, 10.0),
    );
    let util = replicate(&text, 10, |r| pool(r).1.utilization());
    assert_matches("M/M/1 rho=0.5 utilisation", &util, 0.5);
}

#[test]
fn mm1_at_rho_0_9() {
    // mu = 10/s, lambda = 9/s: Wq = 0.9s. Heavy traffic needs long runs.
    let text = queue_scenario(
        1,
        9.0,
        r#"{ dist = "exponential", mean = "100ms" }"#,
        "200000s",
        "1000s",
    );
    let ci = replicate(&text, 10, |r| pool(r).0.mean_wait_s());
    assert_matches(
        "M/M/1 rho=0.9 mean wait",
        &ci,
        theory::mm1_mean_wait(9.0, 10.0),
    );
}

#[test]
fn mmc_erlang_c() {
    // c = 4, mu = 1/s, lambda = 3.4/s: rho = 0.85.
    let text = queue_scenario(
        4,
        3.4,
        r#"{ dist = "exponential", mean = "1s" }"#,
        "300000s",
        "1000s",
    );
    let (c, lambda, mu) = (4, 3.4, 1.0);
    let p_wait = replicate(&text, 16, |r| pool(r).0.prob_wait());
    assert_matches("M/M/4 P(wait)", &p_wait, theory::erlang_c(c, lambda / mu));
    let wait = replicate(&text, 16, |r| pool(r).0.mean_wait_s());
    assert_matches(
        "M/M/4 mean wait",
        &wait,
        theory::mmc_mean_wait(c, lambda, mu),
    );
    let p99 = replicate(&text, 16, |r| pool(r).0.wait_quantile_s(0.99));
    assert_matches(
        "M/M/4 p99 wait",
        &p99,
        theory::mmc_wait_quantile(c, lambda, mu, 0.99),
    );
}

#[test]
fn md1_pollaczek_khinchine() {
    // Deterministic 100ms service, lambda = 8/s: rho = 0.8, Wq = rho / (2 mu (1 - rho)) = 0.2s.
    let text = queue_scenario(
        1,
        8.0,
        r#"{ dist = "deterministic", value = "100ms" }"#,
        "100000s",
        "500s",
    );
    let ci = replicate(&text, 10, |r| pool(r).0.mean_wait_s());
    assert_matches(
        "M/D/1 rho=0.8 mean wait",
        &ci,
        theory::md1_mean_wait(8.0, 0.1),
    );
}

#[test]
fn tandem_mmc_burke() {
    // M/M/2 (mean 1s, lambda 1.5: rho 0.75) feeding M/M/3 (mean 1.4s: rho 0.7). By
    // Burke's theorem the second station's arrivals are Poisson at 1.5/s, so its waits
    // are Erlang C's, which `pool_theory` now gives for the downstream pool.
    let text = r#"
[simulation]
horizon = "200000s"
warmup = "500s"
[pools.first]
servers = 2
service = { dist = "exponential", mean = "1s" }
[pools.second]
servers = 3
service = { dist = "exponential", mean = "1400ms" }
[classes.jobs]
arrival = { process = "poisson", rate = 1.5 }
hops = [{ pool = "first" }, { pool = "second" }]
"#;
    let sc = scenario(text);
    let th = theory::pool_theory(&sc);
    let second = sc.pools.iter().position(|p| p.name == "second");
    let t = second
        .and_then(|i| th[i].as_ref())
        .expect("a Burke theory line for the second station");
    assert_eq!((t.model, t.servers), ("M/M/c", 3));
    assert!((t.arrival_rate_per_s - 1.5).abs() < 1e-12);
    let (p_wait, wait) = (t.p_wait.unwrap_or(0.0), t.mean_wait_s.unwrap_or(0.0));
    // The closed form, independently: the downstream station alone with Poisson input.
    assert!((p_wait - theory::erlang_c(3, 2.1)).abs() < 1e-12);
    assert!((wait - theory::mmc_mean_wait(3, 1.5, 1.0 / 1.4)).abs() < 1e-12);
    let runs: Vec<RunResult> = (0..16).map(|i| run_seed(text, 1000 + i)).collect();
    let at = |f: &dyn Fn(&sim_core::metrics::PoolStats) -> f64| {
        let xs: Vec<f64> = runs
            .iter()
            .map(|r| f(r.pool("second").expect("pool second").0))
            .collect();
        interval(&xs)
    };
    assert_matches("tandem M/M/3 P(wait)", &at(&|p| p.prob_wait()), p_wait);
    assert_matches("tandem M/M/3 mean wait", &at(&|p| p.mean_wait_s()), wait);
}

#[test]
fn littles_law() {
    // L = lambda W, with L the time average of hops in the station and W the mean
    // sojourn; also against the M/M/c value L = lambda (Wq + 1/mu).
    let text = queue_scenario(
        4,
        3.4,
        r#"{ dist = "exponential", mean = "1s" }"#,
        "200000s",
        "1000s",
    );
    for seed in 0..3 {
        let r = run_seed(&text, seed);
        let (p, rep) = pool(&r);
        let l = rep.in_system_s / rep.window.as_secs_f64();
        let lambda_w = p.hops as f64 / rep.window.as_secs_f64() * p.mean_sojourn_s();
        assert!(
            (l - lambda_w).abs() / l < 0.005,
            "seed {seed}: L = {l:.4} but lambda W = {lambda_w:.4}"
        );
    }
    let l = replicate(&text, 10, |r| {
        let rep = pool(r).1;
        rep.in_system_s / rep.window.as_secs_f64()
    });
    assert_matches(
        "M/M/4 L",
        &l,
        3.4 * (theory::mmc_mean_wait(4, 3.4, 1.0) + 1.0),
    );
}

#[test]
fn conservation_every_arrival_accounted_for() {
    // Overloaded on purpose so that plenty is in flight at the horizon.
    let text = r#"
[simulation]
horizon = "1h"
warmup = "5m"
[pools.a]
servers = 2
service = { dist = "lognormal", median = "1s", p99 = "8s" }
[pools.b]
servers = 1
service = { dist = "exponential", mean = "700ms" }
[classes.x]
arrival = { process = "poisson", rate = 1.2 }
hops = [{ pool = "a" }, { pool = "b" }, { pool = "a" }]
[classes.y]
arrival = { process = "poisson", rate = 0.5 }
hops = [{ pool = "b" }]
"#;
    for drain in [false, true] {
        let mut sc = scenario(text);
        sc.drain = drain;
        let r = run(&sc, RunOptions::default());
        for c in &r.classes {
            let total = c.completed + c.failed + c.rejected + c.abandoned + c.in_flight;
            assert_eq!(c.arrived, total, "class {} drain={drain}", c.name);
            assert!(c.arrived > 1000);
            if drain {
                assert_eq!(c.in_flight, 0);
            }
        }
        if !drain {
            assert!(
                r.classes.iter().any(|c| c.in_flight > 10),
                "overloaded run leaves work in flight"
            );
        }
    }
}

#[test]
fn warmup_excludes_early_arrivals() {
    let text = queue_scenario(
        1,
        5.0,
        r#"{ dist = "exponential", mean = "100ms" }"#,
        "1000s",
        "200s",
    );
    let with = run_seed(&text, 5);
    let without = {
        let mut sc = scenario(&text);
        sc.seed = 5;
        sc.warmup = sim_core::SimDuration::ZERO;
        run(&sc, RunOptions::default())
    };
    let a_with = with.classes[0].arrived as f64;
    let a_without = without.classes[0].arrived as f64;
    // Same arrival stream: the warm-up removes about a fifth of the arrivals.
    assert!(
        (a_with / a_without - 0.8).abs() < 0.03,
        "{a_with} vs {a_without}"
    );
    assert_eq!(with.window().as_secs_f64(), 800.0);
}

#[test]
fn warmup_statistics_are_exactly_the_workflows_that_arrived_after_it() {
    // An M/M/1 at rho 0.9 with a 200s warm-up: workflows that arrived in the warm-up
    // and finished after it are left out, those that arrived after it are all in. The
    // class's latency sum and counts equal those computed from the hop log (one hop per
    // workflow, submitted at its arrival), to the nanosecond.
    let text = queue_scenario(
        1,
        0.9,
        r#"{ dist = "exponential", mean = "1s" }"#,
        "2000s",
        "200s",
    );
    let (r, log) = run_logged(&text, 8);
    let warmup = 200_000_000_000u64;
    let c = &r.classes[0];
    let after: Vec<&HopRecord> = log.iter().filter(|h| h.submitted.0 >= warmup).collect();
    let straddling = log
        .iter()
        .filter(|h| h.submitted.0 < warmup && h.finished.0 >= warmup)
        .count();
    assert!(
        straddling >= 1,
        "the test needs a workflow that straddles the warm-up"
    );
    let done: Vec<&&HopRecord> = after
        .iter()
        .filter(|h| h.finished.0 <= 2_000_000_000_000)
        .collect();
    assert_eq!(c.completed as usize, done.len());
    assert_eq!(c.arrived, c.completed + c.in_flight);
    let sum: u128 = done
        .iter()
        .map(|h| (h.finished.0 - h.submitted.0) as u128)
        .sum();
    assert_eq!(c.latency_sum_ns, sum);
    // Drain: the same arrivals (none after the horizon), every one of them finished.
    let (d, dlog) = run_logged(
        &text.replace("[simulation]", "[simulation]\ndrain = true"),
        8,
    );
    let dc = &d.classes[0];
    assert_eq!(dc.arrived, c.arrived);
    assert_eq!((dc.in_flight, dc.completed), (0, dc.arrived));
    assert!(dlog.iter().all(|h| h.submitted.0 <= 2_000_000_000_000));
    assert!(dlog.iter().any(|h| h.finished.0 > 2_000_000_000_000) || c.in_flight == 0);
}

#[test]
fn cost_attribution_adds_up() {
    // Every busy server-second is attributed to exactly one hop: with no warm-up and a
    // drained run, attributed dollars = busy server-seconds x price.
    let text = r#"
[simulation]
horizon = "2h"
drain = true
[pools.gpu]
servers = 3
usd_per_server_hour = 7.2
service = { dist = "gamma", mean = "2s", cv = 0.7 }
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
hops = [{ pool = "gpu" }, { pool = "gpu" }]
"#;
    let r = run_seed(text, 3);
    let (p, rep) = r.pool("gpu").expect("pool");
    let busy_usd = rep.busy_server_s * 7.2 / 3600.0;
    assert!(
        (p.usd_attributed - busy_usd).abs() < 1e-6,
        "{} vs {busy_usd}",
        p.usd_attributed
    );
    let per_workflow: f64 = r.classes[0].usd_per_success.iter().sum();
    assert!(
        (per_workflow - busy_usd).abs() < 1e-6,
        "{per_workflow} vs {busy_usd}"
    );
    let s = r.summary();
    let pool = &s.pools["gpu"];
    let idle = pool.usd_capacity - busy_usd;
    assert!((pool.usd_idle - idle).abs() < 1e-6);
}

#[test]
fn same_seed_same_summary_different_seed_different() {
    let text = queue_scenario(
        2,
        1.5,
        r#"{ dist = "lognormal", median = "1s", p99 = "5s" }"#,
        "1h",
        "0s",
    );
    let a = serde_json::to_string(&run_seed(&text, 9).summary()).expect("json");
    let b = serde_json::to_string(&run_seed(&text, 9).summary()).expect("json");
    let c = serde_json::to_string(&run_seed(&text, 10).summary()).expect("json");
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn common_random_numbers_across_capacity_changes() {
    // Changing a pool's size must not change what arrives or what each workflow asks for:
    // total work (sum of service times) is identical, only waiting differs.
    let base = queue_scenario(
        2,
        1.5,
        r#"{ dist = "exponential", mean = "1s" }"#,
        "1h",
        "0s",
    );
    let mut small = scenario(&base);
    small.drain = true;
    let mut big = small.clone();
    big.pools[0].servers = 6;
    let rs = run(&small, RunOptions::default());
    let rb = run(&big, RunOptions::default());
    assert_eq!(rs.classes[0].arrived, rb.classes[0].arrived);
    let ws = rs.pool_reports[0].busy_server_s;
    let wb = rb.pool_reports[0].busy_server_s;
    assert!((ws - wb).abs() < 1e-6, "busy work {ws} vs {wb}");
    assert!(rs.pools[0].mean_wait_s() > rb.pools[0].mean_wait_s());
}

// ---------------------------------------------------------------------------------
// Workflow graphs
// ---------------------------------------------------------------------------------

use sim_core::metrics::{HopRecord, HopStatus};

fn run_logged(text: &str, seed: u64) -> (RunResult, Vec<HopRecord>) {
    let mut sc = scenario(text);
    sc.seed = seed;
    let mut log = Vec::new();
    let r = run(
        &sc,
        RunOptions {
            hop_log: Some(&mut log),
            ..Default::default()
        },
    );
    (r, log)
}

#[test]
fn deterministic_dag_latency_is_its_critical_path() {
    // plan(1s) -> {research(2s), lookup tool(5s) -> summarise(0.5s)} -> answer(1s):
    // critical path = 1 + max(2, 5 + 0.5) + 1 = 7.5s, with enough servers that nothing
    // queues (arrivals are far apart compared with the work).
    let text = r#"
[simulation]
horizon = "2h"
drain = true
[pools.llm]
servers = 50
service = { dist = "constant", value = "1s" }
[tools.db]
latency = { dist = "constant", value = "5s" }
[classes.c]
arrival = { process = "poisson", rate = 0.01 }
[[classes.c.nodes]]
id = "plan"
pool = "llm"
[[classes.c.nodes]]
id = "research"
pool = "llm"
after = ["plan"]
service = { dist = "constant", value = "2s" }
[[classes.c.nodes]]
id = "lookup"
kind = "tool"
tool = "db"
after = ["plan"]
[[classes.c.nodes]]
id = "summarise"
pool = "llm"
after = ["lookup"]
service = { dist = "constant", value = "500ms" }
[[classes.c.nodes]]
id = "answer"
pool = "llm"
after = ["research", "summarise"]
"#;
    let r = run_seed(text, 1);
    let c = &r.classes[0];
    assert!(c.completed > 30);
    // Exact: the sum of latencies is completed x 7.5s to the nanosecond, and the
    // histogram's extremes agree within its 0.1% precision.
    assert_eq!(c.latency_sum_ns, 7_500_000_000u128 * c.completed as u128);
    for v in [c.latency_ns.min(), c.latency_ns.max()] {
        assert!((v as f64 / 7.5e9 - 1.0).abs() < 1e-3, "{v}");
    }
}

#[test]
fn a_fan_out_of_zero_branches_is_skipped() {
    // plan(1s) fans out to {0 or 3} researchers (2s each), then answer(1s): a draw of 0
    // skips the branch (2s), a draw of 3 runs them in parallel (3s + 1s + ... = 4s).
    let text = r#"
[simulation]
horizon = "2h"
drain = true
[pools.llm]
servers = 100
service = { dist = "constant", value = "1s" }
[classes.c]
arrival = { process = "poisson", rate = 0.01 }
[[classes.c.nodes]]
id = "plan"
pool = "llm"
[[classes.c.nodes]]
id = "research"
pool = "llm"
after = ["plan"]
service = { dist = "constant", value = "2s" }
fan_out = { count = { dist = "empirical", values = [0, 3] } }
[[classes.c.nodes]]
id = "answer"
pool = "llm"
after = ["research"]
"#;
    let r = run_seed(text, 3);
    let c = &r.classes[0];
    assert_eq!(c.completed, c.arrived);
    assert!(c.completed > 40);
    let (lo, hi) = (c.latency_ns.min(), c.latency_ns.max());
    assert!((lo as f64 / 2e9 - 1.0).abs() < 1e-3, "{lo}");
    assert!((hi as f64 / 4e9 - 1.0).abs() < 1e-3, "{hi}");
    // Every workflow took 2s or 4s, so the sum pins how many skipped the fan-out.
    let extra = c.latency_sum_ns - 2_000_000_000u128 * c.completed as u128;
    assert_eq!(extra % 2_000_000_000, 0);
    let skipped = c.completed as u128 - extra / 2_000_000_000;
    assert!(skipped > 0 && skipped < c.completed as u128, "{skipped}");
}

#[test]
fn human_review_takes_its_share_its_minutes_and_its_dollars() {
    // draft(1s) -> review (human, p = 0.3, 2 minutes at $1.50/min) -> send(1s): a
    // workflow takes 2s, or 122s when reviewed, so the latency sum counts the reviews
    // exactly; their dollars are 2 x 1.5 = $3 each, and nothing else costs anything.
    let text = r#"
[simulation]
horizon = "20h"
drain = true
[pools.llm]
servers = 100
service = { dist = "constant", value = "1s" }
[classes.c]
arrival = { process = "poisson", rate = 0.05 }
[[classes.c.nodes]]
id = "draft"
pool = "llm"
[[classes.c.nodes]]
id = "review"
kind = "human"
after = ["draft"]
probability = 0.3
minutes = { dist = "constant", value = 2 }
usd_per_minute = 1.5
[[classes.c.nodes]]
id = "send"
pool = "llm"
after = ["review"]
"#;
    let r = run_seed(text, 9);
    let c = &r.classes[0];
    assert_eq!(c.completed, c.arrived);
    let n = c.completed as f64;
    assert!(n > 3000.0, "{n}");
    let extra = c.latency_sum_ns - 2_000_000_000u128 * c.completed as u128;
    assert_eq!(
        extra % 120_000_000_000,
        0,
        "every review adds exactly 2 minutes"
    );
    let reviewed = (extra / 120_000_000_000) as f64;
    // Binomial(n, 0.3): within 4 standard deviations.
    let sd = (n * 0.3 * 0.7).sqrt();
    assert!((reviewed - 0.3 * n).abs() < 4.0 * sd, "{reviewed} of {n}");
    assert!(
        (c.usd_human - 3.0 * reviewed).abs() < 1e-6,
        "{}",
        c.usd_human
    );
    let (lo, hi) = (c.latency_ns.min(), c.latency_ns.max());
    assert!((lo as f64 / 2e9 - 1.0).abs() < 1e-3, "{lo}");
    assert!((hi as f64 / 122e9 - 1.0).abs() < 1e-3, "{hi}");
}

#[test]
fn tool_failures_and_retries_follow_the_binomial_chain() {
    // One tool call per workflow, failing with p = 0.4 and retried twice: the workflow
    // fails only if all 3 attempts fail (p^3 = 0.064); calls per workflow average
    // 1 + p + p^2 = 1.56; every call costs $0.01.
    let text = r#"
[simulation]
horizon = "10h"
drain = true
[pools.llm]
servers = 100
service = { dist = "constant", value = "1s" }
[tools.api]
latency = { dist = "constant", value = "1s" }
failure_probability = 0.4
retries = 2
usd_per_call = 0.01
[classes.c]
arrival = { process = "poisson", rate = 0.5 }
[[classes.c.nodes]]
id = "call"
kind = "tool"
tool = "api"
[[classes.c.nodes]]
id = "answer"
pool = "llm"
after = ["call"]
"#;
    let (r, log) = run_logged(text, 21);
    let c = &r.classes[0];
    let n = c.arrived as f64;
    assert!(n > 15_000.0, "{n}");
    // The hop log marks each failed call (and only those) as an error.
    let status = |kind: &str, s: HopStatus| {
        log.iter()
            .filter(|h| h.kind == kind && h.status == s)
            .count() as u64
    };
    assert_eq!(status("tool", HopStatus::Error), r.tools[0].failures);
    assert_eq!(status("tool", HopStatus::Ok), c.completed);
    assert_eq!(status("llm", HopStatus::Ok), c.completed);
    assert_eq!(log.len() as u64, r.tools[0].calls + c.completed);
    assert_eq!(c.arrived, c.completed + c.failed);
    let p_fail = 0.4f64.powi(3);
    let sd = (n * p_fail * (1.0 - p_fail)).sqrt();
    assert!(
        (c.failed as f64 - p_fail * n).abs() < 4.0 * sd,
        "{} of {n}",
        c.failed
    );
    let t = &r.tools[0];
    // Calls are 1 + Binomial chain: the count of attempts per workflow has mean 1.56
    // and variance p + p^2 - ... ; 4 sd over n workflows with a per-workflow sd < 0.8.
    let calls = t.calls as f64;
    assert!(
        (calls / n - 1.56).abs() < 4.0 * 0.8 / n.sqrt(),
        "{calls} calls"
    );
    assert_eq!(
        t.calls,
        c.arrived + t.retries,
        "each retry is one more call"
    );
    assert_eq!(
        t.failures,
        t.retries + c.failed,
        "a failure is retried or fails the workflow"
    );
    assert!((t.usd - 0.01 * calls).abs() < 1e-6);
    // Completed workflows took 2s plus 1s per retry: 2, 3 or 4 seconds.
    assert!((c.latency_ns.max() as f64 / 4e9 - 1.0).abs() < 1e-3);
}

fn harmonic(n: u32) -> f64 {
    (1..=n).map(|k| 1.0 / k as f64).sum()
}

#[test]
fn fan_out_join_all_matches_the_expected_maximum() {
    // n parallel exponential(1s) branches on an unlimited tool: E[max] = H_n seconds.
    for n in [4u32, 8] {
        let text = format!(
            r#"
[simulation]
horizon = "20000s"
drain = true
[pools.unused]
servers = 1
service = {{ dist = "constant", value = "1s" }}
[tools.search]
latency = {{ dist = "exponential", mean = "1s" }}
[classes.c]
arrival = {{ process = "poisson", rate = 2.0 }}
[[classes.c.nodes]]
id = "research"
kind = "tool"
tool = "search"
fan_out = {{ count = {{ dist = "constant", value = {n} }} }}
"#
        );
        let ci = replicate(&text, 10, |r| {
            let c = &r.classes[0];
            c.latency_sum_ns as f64 / c.completed as f64 / 1e9
        });
        assert_matches(&format!("fan-out {n} join-all E[max]"), &ci, harmonic(n));
    }
}

#[test]
fn quorum_join_waits_for_the_kth_fastest() {
    // 4 exponential(1s) branches, quorum 2: E[2nd order statistic] = 1/4 + 1/3.
    let text = r#"
[simulation]
horizon = "20000s"
drain = true
[pools.unused]
servers = 1
service = { dist = "constant", value = "1s" }
[tools.search]
latency = { dist = "exponential", mean = "1s" }
[classes.c]
arrival = { process = "poisson", rate = 2.0 }
[[classes.c.nodes]]
id = "research"
kind = "tool"
tool = "search"
fan_out = { count = { dist = "constant", value = 4 }, quorum = 2 }
[[classes.c.nodes]]
id = "merge"
pool = "unused"
after = ["research"]
service = { dist = "constant", value = "0s" }
"#;
    let ci = replicate(text, 10, |r| {
        let c = &r.classes[0];
        c.latency_sum_ns as f64 / c.completed as f64 / 1e9
    });
    assert_matches("quorum 2 of 4", &ci, 0.25 + 1.0 / 3.0);
    // The two stragglers per workflow still run and are charged as waste.
    let r = run_seed(text, 1);
    assert_eq!(r.tools[0].calls, 4 * r.classes[0].completed);
}

#[test]
fn uncapped_loop_runs_a_geometric_number_of_times() {
    // Verify loops back to research with p = 0.6: runs per workflow ~ Geometric with
    // mean 1 / (1 - p) = 2.5, i.e. 1.5 repetitions.
    let text = r#"
[simulation]
horizon = "30000s"
drain = true
[pools.llm]
servers = 1000
service = { dist = "constant", value = "10ms" }
[classes.c]
arrival = { process = "poisson", rate = 5.0 }
[[classes.c.nodes]]
id = "research"
pool = "llm"
[[classes.c.nodes]]
id = "verify"
pool = "llm"
after = ["research"]
loop = { to = "research", probability = 0.6 }
"#;
    let r = run_seed(text, 4);
    let c = &r.classes[0];
    let n = c.completed as f64;
    assert!(n > 100_000.0);
    let mean_runs = 1.0 + c.loops as f64 / n;
    // sd of a geometric count = sqrt(p) / (1 - p) = 1.94; 99% half-width:
    let hw = 2.576 * 0.6f64.sqrt() / 0.4 / n.sqrt();
    assert!(
        (mean_runs - 2.5).abs() < hw,
        "mean runs {mean_runs} vs 2.5 +/- {hw}"
    );
    assert!(hw / 2.5 < 0.025);
    // Each run is two hops.
    assert_eq!(r.pools[0].hops as f64, 2.0 * (n + c.loops as f64));
    // A cap bounds it: with max = 2, at most 3 runs.
    let capped = text.replace("probability = 0.6 }", "probability = 0.6, max = 2 }");
    let r = run_seed(&capped, 4);
    let c = &r.classes[0];
    let expected = 0.6 + 0.36; // E[min(Geo, 2)] repetitions
    let got = c.loops as f64 / c.completed as f64;
    assert!(
        (got - expected).abs() < 0.02,
        "capped loops {got} vs {expected}"
    );
}

#[test]
fn context_growth_is_exact() {
    // plan: 100 prompt + 50 out -> context 150; search tool adds a 300-token payload;
    // answer inherits all of it: 20 + 150 + 300 = 470 prompt tokens. The critic inherits
    // half of answer's context (470 + 10 = 480 -> 240) on top of 5 of its own; the
    // compactor cuts everything to 64, so `final` sees 64 + 1.
    let text = r#"
[simulation]
horizon = "1h"
drain = true
[pools.llm]
servers = 8
service = { dist = "constant", value = "100ms" }
[tools.search]
latency = { dist = "constant", value = "200ms" }
payload_tokens = { dist = "constant", value = 300 }
[classes.c]
arrival = { process = "poisson", rate = 0.5 }
[[classes.c.nodes]]
id = "plan"
pool = "llm"
input_tokens = { dist = "constant", value = 100 }
output_tokens = { dist = "constant", value = 50 }
[[classes.c.nodes]]
id = "search"
kind = "tool"
tool = "search"
after = ["plan"]
[[classes.c.nodes]]
id = "answer"
pool = "llm"
after = ["search"]
input_tokens = { dist = "constant", value = 20 }
output_tokens = { dist = "constant", value = 10 }
[[classes.c.nodes]]
id = "critic"
pool = "llm"
after = ["answer"]
inherit = 0.5
input_tokens = { dist = "constant", value = 5 }
output_tokens = { dist = "constant", value = 3 }
[[classes.c.nodes]]
id = "compact"
kind = "compact"
pool = "llm"
after = ["critic"]
compact_to = 64
[[classes.c.nodes]]
id = "final"
pool = "llm"
after = ["compact"]
input_tokens = { dist = "constant", value = 1 }
output_tokens = { dist = "constant", value = 2 }
"#;
    let (r, log) = run_logged(text, 2);
    assert!(r.classes[0].completed > 1000);
    let input_of = |node: &str| -> Vec<u64> {
        log.iter()
            .filter(|h| h.node == node)
            .map(|h| h.input_tokens)
            .collect()
    };
    assert!(input_of("plan").iter().all(|&t| t == 100));
    assert!(input_of("answer").iter().all(|&t| t == 20 + 150 + 300));
    assert!(input_of("critic").iter().all(|&t| t == 5 + 240));
    // compact's prompt is the critic's context (245 + 3 = 248); its output is 64.
    assert!(input_of("compact").iter().all(|&t| t == 248));
    assert!(input_of("final").iter().all(|&t| t == 1 + 64));
    assert!(!input_of("final").is_empty());
}

#[test]
fn bulkhead_never_exceeds_its_concurrency() {
    let text = r#"
[simulation]
horizon = "2h"
[pools.llm]
servers = 100
service = { dist = "exponential", mean = "100ms" }
[tools.crm]
latency = { dist = "exponential", mean = "1s" }
concurrency = 2
[classes.c]
arrival = { process = "poisson", rate = 1.8 }
[[classes.c.nodes]]
id = "plan"
pool = "llm"
[[classes.c.nodes]]
id = "lookup"
kind = "tool"
tool = "crm"
after = ["plan"]
"#;
    let (r, log) = run_logged(text, 3);
    assert_eq!(
        r.tools[0].report.max_busy, 2,
        "the bulkhead is full at times and never over"
    );
    // Independent check from the hop log: sweep starts and finishes of tool calls.
    let mut edges: Vec<(u64, i32)> = log
        .iter()
        .filter(|h| h.kind == "tool")
        .flat_map(|h| [(h.started.0, 1), (h.finished.0, -1)])
        .collect();
    edges.sort_by_key(|&(t, d)| (t, d));
    let mut level = 0;
    let mut max = 0;
    for (_, d) in edges {
        level += d;
        max = max.max(level);
    }
    assert_eq!(max, 2);
    assert!(
        r.tools[0].mean_wait_s() > 0.5,
        "calls queue behind the bulkhead"
    );
}

/// Tool failures (some recovered by retries), hop timeouts, abandonment, human review
/// and quorum stragglers, in one overloaded factory.
const EVERY_OUTCOME: &str = r#"
[simulation]
horizon = "3h"
warmup = "10m"
[pools.llm]
servers = 3
usd_per_server_hour = 10.0
service = { dist = "lognormal", median = "1s", p99 = "10s" }
max_attempts = 1                   # a timeout fails its workflow (no retry)
[tools.flaky]
latency = { dist = "exponential", mean = "500ms" }
failure_probability = 0.2
retries = 1
retry_backoff = { dist = "constant", value = "1s" }
usd_per_call = 0.002
concurrency = 4
[classes.c]
arrival = { process = "poisson", rate = 0.9 }
abandon_after = "40s"
[[classes.c.nodes]]
id = "plan"
pool = "llm"
timeout = "20s"
[[classes.c.nodes]]
id = "research"
kind = "tool"
tool = "flaky"
after = ["plan"]
fan_out = { count = { dist = "uniform", low = 1, high = 4 }, quorum = 1 }
[[classes.c.nodes]]
id = "write"
pool = "llm"
after = ["research"]
[[classes.c.nodes]]
id = "review"
kind = "human"
after = ["write"]
probability = 0.1
minutes = { dist = "exponential", mean = 0.2 }
usd_per_minute = 1.0
"#;

#[test]
fn every_outcome_kind_is_accounted_for_and_costs_add_up() {
    let text = EVERY_OUTCOME;
    for drain in [false, true] {
        let mut sc = scenario(text);
        sc.drain = drain;
        let mut log = Vec::new();
        let r = run(
            &sc,
            RunOptions {
                hop_log: Some(&mut log),
                ..Default::default()
            },
        );
        let c = &r.classes[0];
        assert_eq!(
            c.arrived,
            c.completed + c.failed + c.rejected + c.abandoned + c.in_flight,
            "drain={drain}"
        );
        assert!(
            c.completed > 0 && c.failed > 0 && c.abandoned > 0,
            "{} {} {}",
            c.completed,
            c.failed,
            c.abandoned
        );
        assert_eq!(c.failed, c.failed_by_cause.values().sum::<u64>());
        assert!(c.failed_by_cause.keys().any(|k| k.starts_with("timeout")));
        assert!(c.failed_by_cause.contains_key("tool flaky failed"));
        if drain {
            assert_eq!(c.in_flight, 0);
            // With everything drained, every dollar charged to a hop (plus human review)
            // lands in exactly one bucket. Only workflows arriving after warm-up are
            // counted, so compare over those.
            let s = r.summary();
            let cs = &s.classes["c"];
            let buckets = c.usd_per_success.iter().sum::<f64>()
                + c.usd_waste_failed
                + c.usd_waste_abandoned
                + c.usd_waste_leftover
                + c.usd_unfinished;
            assert!((cs.usd_total - buckets).abs() < 1e-9);
            assert!(cs.usd_waste.after_outcome > 0.0, "stragglers are charged");
        }
    }
}

#[test]
fn hop_sink_hands_over_every_workflow_once_with_exactly_its_logged_hops() {
    // Abandoned and failed workflows' hops keep running after the outcome, and without
    // drain some workflows are still in flight at the horizon.
    for drain in [false, true] {
        let mut sc = scenario(EVERY_OUTCOME);
        sc.drain = drain;
        let mut log = Vec::new();
        let mut handed: Vec<(u64, Vec<HopRecord>)> = Vec::new();
        let mut sink = |w: sim_core::metrics::WorkflowHops<'_>| {
            assert!(std::ptr::eq(w.class, &sc.classes[0]));
            assert!(w.hops.iter().all(|h| h.workflow == w.workflow));
            handed.push((w.workflow, w.hops.to_vec()));
        };
        let r = run(
            &sc,
            RunOptions {
                hop_log: Some(&mut log),
                hop_sink: Some(&mut sink),
                ..Default::default()
            },
        );
        // Ids 0, 1, ... (warm-up workflows included), each handed over once, and not
        // in id order: a released workflow is handed over before older ones in flight.
        let mut ids: Vec<u64> = handed.iter().map(|(id, _)| *id).collect();
        assert!(ids.windows(2).any(|w| w[0] > w[1]), "drain={drain}");
        ids.sort_unstable();
        assert!(ids.iter().copied().eq(0..ids.len() as u64), "drain={drain}");
        let c = &r.classes[0];
        assert!(
            ids.len() as u64 > c.arrived,
            "warm-up workflows are handed over too"
        );
        assert!(c.abandoned > 0 && c.failed > 0);
        assert_eq!(c.in_flight > 0, !drain);
        // Together the handed-over hops are the log, each workflow's in log order.
        for (_, hops) in &handed {
            assert!(hops.windows(2).all(|w| w[0].index < w[1].index));
        }
        let mut all: Vec<HopRecord> = handed.into_iter().flat_map(|(_, h)| h).collect();
        all.sort_by_key(|h| h.index);
        assert!(log.iter().enumerate().all(|(i, h)| h.index == i as u64));
        assert!(all == log, "drain={drain}");
    }
}

#[test]
fn closed_loop_users_and_piecewise_rates() {
    // 20 users, 5s think, 1s service on 100 servers: throughput = N / (Z + R) = 20/6 per s.
    let text = r#"
[simulation]
horizon = "20000s"
warmup = "100s"
[pools.llm]
servers = 100
service = { dist = "constant", value = "1s" }
[classes.c]
arrival = { process = "closed", users = 20, think = { dist = "exponential", mean = "5s" } }
hops = [{ pool = "llm" }]
"#;
    let r = run_seed(text, 1);
    let thr = r.classes[0].completed as f64 / r.window().as_secs_f64();
    assert!(
        (thr - 20.0 / 6.0).abs() / (20.0 / 6.0) < 0.02,
        "closed-loop throughput {thr}"
    );
    // Piecewise: rate 1/s for an hour, 3/s the next, cycling: mean 2/s.
    let text = r#"
[simulation]
horizon = "40h"
[pools.llm]
servers = 100
service = { dist = "constant", value = "1s" }
[classes.c]
arrival = { process = "piecewise", step = "1h", rates = [1.0, 3.0] }
hops = [{ pool = "llm" }]
"#;
    let (r, log) = run_logged(text, 1);
    let rate = r.classes[0].arrived as f64 / (40.0 * 3600.0);
    assert!((rate - 2.0).abs() < 0.02, "mean rate {rate}");
    let in_odd_hours = log
        .iter()
        .filter(|h| (h.submitted.0 / 3_600_000_000_000) % 2 == 1)
        .count() as f64;
    let share = in_odd_hours / log.len() as f64;
    assert!(
        (share - 0.75).abs() < 0.01,
        "share of arrivals in 3/s hours {share}"
    );
}

#[test]
fn bursts_multiply_rate_and_change_fan_out() {
    let text = r#"
[simulation]
horizon = "10h"
drain = true
[pools.llm]
servers = 1000
service = { dist = "constant", value = "1s" }
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
bursts = [{ start = "2h", duration = "1h", every = "5h", rate_factor = 8.0, fan_out = { dist = "constant", value = 24 } }]
[[classes.c.nodes]]
id = "research"
pool = "llm"
fan_out = { count = { dist = "constant", value = 3 } }
"#;
    let (r, log) = run_logged(text, 1);
    let in_burst = |t: u64| {
        let h = t / 3_600_000_000_000;
        h == 2 || h == 7
    };
    let burst_wf: std::collections::BTreeSet<u64> = log
        .iter()
        .filter(|h| in_burst(h.submitted.0))
        .map(|h| h.workflow)
        .collect();
    let calm_wf: std::collections::BTreeSet<u64> = log
        .iter()
        .filter(|h| !in_burst(h.submitted.0))
        .map(|h| h.workflow)
        .collect();
    // 8x the rate in 2 of 10 hours: 16 of 24 rate-hours.
    let share = burst_wf.len() as f64 / (burst_wf.len() + calm_wf.len()) as f64;
    assert!((share - 16.0 / 24.0).abs() < 0.02, "burst share {share}");
    let hops_burst = log.iter().filter(|h| in_burst(h.submitted.0)).count();
    assert_eq!(hops_burst, 24 * burst_wf.len());
    assert_eq!(r.summary().classes["c"].fan_out.max, Some(24.0));
}

fn invalid(text: &str) -> sim_core::SpecError {
    let spec: ScenarioSpec = toml::from_str(text).expect("parses");
    spec.validate().expect_err("must be rejected")
}

#[test]
fn graph_validation_errors_name_the_problem() {
    let base = |nodes: &str| {
        format!(
            r#"
[pools.llm]
servers = 1
service = {{ dist = "constant", value = "1s" }}
[classes.c]
arrival = {{ process = "poisson", rate = 1.0 }}
{nodes}
"#
        )
    };
    let e = invalid(&base(
        r#"
[[classes.c.nodes]]
id = "a"
pool = "llm"
[[classes.c.nodes]]
id = "b"
pool = "llm"
after = ["a", "c"]
[[classes.c.nodes]]
id = "c"
pool = "llm"
after = ["b"]
"#,
    ));
    assert!(
        e.message.contains("cycle") && e.message.contains("loop"),
        "{e}"
    );
    let e = invalid(&base(
        r#"
[[classes.c.nodes]]
id = "a"
pool = "llm"
[[classes.c.nodes]]
id = "b"
pool = "llm"
after = ["x"]
"#,
    ));
    assert!(
        e.key == "classes.c.nodes[1].after" && e.message.contains("no node with id `x`"),
        "{e}"
    );
    let e = invalid(&base(
        r#"
[[classes.c.nodes]]
id = "a"
pool = "llm"
[[classes.c.nodes]]
id = "orphan"
pool = "llm"
"#,
    ));
    assert!(e.message.contains("unreachable"), "{e}");
    // Keys of another node kind would be ignored: refused, naming the key.
    for (node, key) in [
        ("pool = \"llm\"\nprobability = 0.5", "probability"),
        (
            "pool = \"llm\"\nminutes = { dist = \"constant\", value = 2 }",
            "minutes",
        ),
        (
            "kind = \"human\"\nminutes = { dist = \"constant\", value = 2 }\ninput_tokens = { dist = \"constant\", value = 9 }",
            "input_tokens",
        ),
        (
            "kind = \"human\"\nminutes = { dist = \"constant\", value = 2 }\ntimeout = \"5s\"",
            "timeout",
        ),
        ("pool = \"llm\"\ntimeout = \"0s\"", "timeout"),
    ] {
        let e = invalid(&base(&format!("[[classes.c.nodes]]\nid = \"a\"\n{node}\n")));
        assert_eq!(e.key, format!("classes.c.nodes[0].{key}"), "{e}");
    }
    // A fan-out count in the millions would exhaust memory mid-run.
    let e = invalid(&base(
        "[[classes.c.nodes]]\nid = \"a\"\npool = \"llm\"\nfan_out = { count = { dist = \"constant\", value = 1e12 } }\n",
    ));
    assert_eq!(e.key, "classes.c.nodes[0].fan_out.count", "{e}");
    assert!(e.message.contains("at most 100000"), "{e}");
    // A branch `through` a sibling (not downstream of the head) says so.
    let e = invalid(&base(
        r#"
[[classes.c.nodes]]
id = "root"
pool = "llm"
[[classes.c.nodes]]
id = "a"
pool = "llm"
after = ["root"]
fan_out = { count = { dist = "constant", value = 2 }, through = "b" }
[[classes.c.nodes]]
id = "b"
pool = "llm"
after = ["root"]
"#,
    ));
    assert_eq!(e.key, "classes.c.nodes[1].fan_out.through", "{e}");
    assert!(e.message.contains("`b` is not downstream of `a`"), "{e}");
    // A fan-out cap of 0 would skip every fanned-out node.
    let e = invalid(
        &base("[[classes.c.nodes]]\nid = \"a\"\npool = \"llm\"\n")
            .replace("rate = 1.0 }", "rate = 1.0 }\nmax_fan_out = 0"),
    );
    assert_eq!(e.key, "classes.c.max_fan_out", "{e}");
    // A two-node cycle through the entry is named as a cycle.
    let e = invalid(&base(
        r#"
[[classes.c.nodes]]
id = "a"
pool = "llm"
after = ["b"]
[[classes.c.nodes]]
id = "b"
pool = "llm"
after = ["a"]
"#,
    ));
    assert!(
        e.key == "classes.c.nodes[0].after" && e.message.contains("makes a cycle"),
        "{e}"
    );
    let e = invalid(&base(
        r#"
[[classes.c.nodes]]
id = "a"
pool = "llm"
fan_out = { count = { dist = "constant", value = 3 }, quorum = 2 }
"#,
    ));
    assert!(e.message.contains("nothing to join"), "{e}");
    // A quorum above the largest possible branch count would quietly be a join-all.
    let quorum = |q: u32| {
        base(&format!(
            r#"
[[classes.c.nodes]]
id = "a"
pool = "llm"
fan_out = {{ count = {{ dist = "uniform", low = 1, high = 4 }}, quorum = {q} }}
[[classes.c.nodes]]
id = "b"
pool = "llm"
after = ["a"]
"#
        ))
    };
    let e = invalid(&quorum(5));
    assert!(
        e.key == "classes.c.nodes[0].fan_out.quorum"
            && e.message.contains("quorum of 5 can never be reached")
            && e.message.contains("at most 4"),
        "{e}"
    );
    let spec: ScenarioSpec = toml::from_str(&quorum(4)).expect("toml");
    assert!(spec.validate().is_ok(), "a reachable quorum is accepted");
    let e = invalid(&base(
        r#"
[[classes.c.nodes]]
id = "a"
pool = "llm"
[[classes.c.nodes]]
id = "b"
pool = "llm"
after = ["a"]
loop = { to = "b", probability = 1.0 }
"#,
    ));
    assert!(e.message.contains("never ends"), "{e}");
    let e = invalid(&base(
        r#"
[[classes.c.nodes]]
id = "a"
kind = "tool"
tool = "nope"
"#,
    ));
    assert!(e.message.contains("no tool named `nope`"), "{e}");
}

const CANARY: &str = r#"
[simulation]
horizon = "2000s"
seed = 5
[pools.a100]
servers = 100
service = { dist = "deterministic", value = "1s" }
[pools.h100]
servers = 100
service = { dist = "deterministic", value = "500ms" }
[classes.chat]
arrival = { process = "poisson", rate = 10.0 }
hops = [{ pool = "a100" }]
canary = { share = 0.2, pools = { "a100" = "h100" } }
"#;

#[test]
fn a_canary_moves_its_share_of_workflows_and_keeps_common_random_numbers() {
    let with = run_seed(CANARY, 5).summary();
    let without = run_seed(&CANARY.replace("canary = ", "# canary = "), 5).summary();
    let (chat, canary) = (&with.classes["chat"], &with.classes["chat/canary"]);
    // The same arrivals, split: no workflow lost or added by the canary.
    assert_eq!(
        chat.arrived + canary.arrived,
        without.classes["chat"].arrived
    );
    // The cohort's share is binomial(n, 0.2): within 4 standard deviations.
    let n = (chat.arrived + canary.arrived) as f64;
    let share = canary.arrived as f64 / n;
    assert!(
        (share - 0.2).abs() < 4.0 * (0.2 * 0.8 / n).sqrt(),
        "{share}"
    );
    // Every finished cohort hop ran on the H100 pool, every other on the A100 pool; with a server
    // per workflow nobody waits, so the latencies are the service times.
    assert_eq!(with.pools["h100"].hops, canary.completed);
    assert_eq!(with.pools["a100"].hops, chat.completed);
    assert!((canary.latency_s.mean.unwrap_or(0.0) - 0.5).abs() < 1e-9);
    assert!((chat.latency_s.mean.unwrap_or(0.0) - 1.0).abs() < 1e-9);
    // The a-priori load follows the split exactly.
    let load = scenario(CANARY).offered_load();
    assert!((load[0].rho - 10.0 * 0.8 * 1.0 / 100.0).abs() < 1e-9);
    assert!((load[1].rho - 10.0 * 0.2 * 0.5 / 100.0).abs() < 1e-9);
}

#[test]
fn a_canary_splits_closed_loop_users_workflow_by_workflow() {
    let closed = CANARY.replace(
        "process = \"poisson\", rate = 10.0",
        "process = \"closed\", users = 40, think = { dist = \"exponential\", mean = \"2s\" }",
    );
    // Same service time on both pools and a server per workflow: every user's cycle is
    // the same with or without the canary, so the workflows are exactly the same ones.
    let same = closed.replace("value = \"500ms\"", "value = \"1s\"");
    let with = run_seed(&same, 5).summary();
    let without = run_seed(&same.replace("canary = ", "# canary = "), 5).summary();
    let (chat, canary) = (&with.classes["chat"], &with.classes["chat/canary"]);
    assert_eq!(
        chat.arrived + canary.arrived,
        without.classes["chat"].arrived
    );
    assert_eq!(
        chat.completed + canary.completed,
        without.classes["chat"].completed
    );
    let n = (chat.arrived + canary.arrived) as f64;
    let share = canary.arrived as f64 / n;
    assert!(
        (share - 0.2).abs() < 4.0 * (0.2 * 0.8 / n).sqrt(),
        "{share}"
    );
    // A faster canary pool: the cohort's workflows take 0.5 s, the others 1 s, and each
    // user goes back to the parent class between workflows (20% of them split again).
    let faster = run_seed(&closed, 5).summary();
    let (chat, canary) = (&faster.classes["chat"], &faster.classes["chat/canary"]);
    assert_eq!(faster.pools["h100"].hops, canary.completed);
    assert!((canary.latency_s.mean.unwrap_or(0.0) - 0.5).abs() < 1e-9);
    assert!((chat.latency_s.mean.unwrap_or(0.0) - 1.0).abs() < 1e-9);
    // 40 users cycling 2 s of thinking + ~0.9 s of work over 2,000 s: about 27,600
    // workflows; the cohort is about a fifth of them.
    let n = (chat.arrived + canary.arrived) as f64;
    let cycle = 2.0 + 0.8 * 1.0 + 0.2 * 0.5;
    assert!((n - 40.0 * 2000.0 / cycle).abs() < 0.02 * n, "{n}");
}

/// 1,000 requests, one every 0.5 s, for a class of CANARY declared `recorded`; with
/// `graphs`, each request carries a copy of the class's graph as its own workflow.
fn recorded_canary(graphs: bool) -> Result<Scenario, sim_core::scenario::SpecError> {
    let mut sc = scenario(&CANARY.replace(
        "process = \"poisson\", rate = 10.0",
        "process = \"recorded\"",
    ));
    let graph = std::sync::Arc::new(sc.classes[0].graph.clone());
    let requests = (0..1000u64)
        .map(|i| sim_core::scenario::RecordedRequest {
            at: sim_core::SimTime(i * 500_000_000),
            input_tokens: 100,
            output_tokens: 10,
            block_hashes: None,
            hash_block_tokens: 0,
            graph: graphs.then(|| graph.clone()),
        })
        .collect();
    sc.attach_recorded(0, requests)?;
    Ok(sc)
}

#[test]
fn a_canary_splits_replayed_requests_and_moves_their_recorded_workflows() {
    for graphs in [false, true] {
        let sc = recorded_canary(graphs).unwrap_or_else(|e| panic!("{e}"));
        let r = run(&sc, RunOptions::default()).summary();
        let (chat, canary) = (&r.classes["chat"], &r.classes["chat/canary"]);
        // Every recorded request is replayed exactly once, in one class or the other.
        assert_eq!(chat.arrived + canary.arrived, 1000, "graphs {graphs}");
        assert_eq!(chat.completed + canary.completed, 1000, "graphs {graphs}");
        let share = canary.arrived as f64 / 1000.0;
        assert!(
            (share - 0.2).abs() < 4.0 * (0.2 * 0.8 / 1000.0_f64).sqrt(),
            "{share}"
        );
        // The cohort's recorded workflows were moved too: all its hops on the H100 pool.
        assert_eq!(r.pools["h100"].hops, canary.completed, "graphs {graphs}");
        assert_eq!(r.pools["a100"].hops, chat.completed, "graphs {graphs}");
        assert!((canary.latency_s.mean.unwrap_or(0.0) - 0.5).abs() < 1e-9);
    }
    // Recorded workflows that never use the replaced pool: the canary would move
    // nothing, which is an error naming the canary's key.
    let mut sc = scenario(&CANARY.replace(
        "process = \"poisson\", rate = 10.0",
        "process = \"recorded\"",
    ));
    let mut on_h100 = sc.classes[0].graph.clone();
    on_h100.nodes[0].pool = Some(1);
    let on_h100 = std::sync::Arc::new(on_h100);
    let requests = vec![sim_core::scenario::RecordedRequest {
        at: sim_core::SimTime(0),
        input_tokens: 1,
        output_tokens: 1,
        block_hashes: None,
        hash_block_tokens: 0,
        graph: Some(on_h100),
    }];
    let e = sc
        .attach_recorded(0, requests)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("classes.chat.canary") && e.contains("recorded workflows"),
        "{e}"
    );
}

#[test]
fn bad_canaries_name_the_key() {
    let cases = [
        (
            "share = 0.2, pools = { \"a100\" = \"h100\" }",
            "share = 0.0, pools = { \"a100\" = \"h100\" }",
            "classes.chat.canary.share",
        ),
        (
            "share = 0.2, pools = { \"a100\" = \"h100\" }",
            "share = 0.2, pools = { \"a100\" = \"b200\" }",
            "no pool named `b200`",
        ),
        (
            "share = 0.2, pools = { \"a100\" = \"h100\" }",
            "share = 0.2, pools = { \"h100\" = \"a100\" }",
            "no node of class `chat`",
        ),
        (
            "share = 0.2, pools = { \"a100\" = \"h100\" }",
            "share = 0.2",
            "expected `pools",
        ),
    ];
    for (from, to, needle) in cases {
        let text = CANARY.replace(from, to);
        let spec: ScenarioSpec = toml::from_str(&text).expect("parses");
        let e = spec
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(needle), "{to}: {e}");
    }
}

// ---------------------------------------------------------------------------------
// Queue disciplines on a GPU pool: lanes sharing one replica
// ---------------------------------------------------------------------------------

/// Two lanes sharing ONE Llama-3-8B replica on an H100 with at most 4 sequences
/// running, so that a waiting queue forms (about 87% of its throughput).
const GPU_LANES: &str = r#"
[simulation]
seed = 3
horizon = "30m"
warmup = "0s"
[lanes.interactive]
priority = 10
[lanes.batch]
priority = 0
[pools.gpu]
servers = 1
discipline = "DISCIPLINE"
gpu = { model = "llama-3-8b", gpu = "h100-80gb", max_num_seqs = 4 }
PREEMPT
[classes.chat]
arrival = { process = "poisson", rate = 0.9 }
lane = "interactive"
slo = "8s"
[[classes.chat.nodes]]
id = "answer"
pool = "gpu"
input_tokens = { dist = "lognormal", median = 600, p99 = 3000 }
output_tokens = { dist = "lognormal", median = 150, p99 = 600 }
[classes.etl]
arrival = { process = "poisson", rate = 0.75 }
lane = "batch"
slo = "ETL_SLO"
[[classes.etl.nodes]]
id = "summarise"
pool = "gpu"
input_tokens = { dist = "lognormal", median = 600, p99 = 3000 }
output_tokens = { dist = "lognormal", median = 150, p99 = 600 }
"#;

/// Runs the two GPU lanes to the end (drained), with the hop log.
fn gpu_lanes(discipline: &str, etl_slo: &str) -> (RunResult, Vec<HopRecord>) {
    gpu_lanes_text(
        &GPU_LANES
            .replace("PREEMPT", "")
            .replace("DISCIPLINE", discipline)
            .replace("ETL_SLO", etl_slo),
        discipline,
    )
}

/// [`gpu_lanes`] of a scenario text.
fn gpu_lanes_text(text: &str, discipline: &str) -> (RunResult, Vec<HopRecord>) {
    let mut sc = scenario(text);
    sc.drain = true;
    let mut log = Vec::new();
    let r = run(
        &sc,
        RunOptions {
            hop_log: Some(&mut log),
            ..Default::default()
        },
    );
    // Conservation: every workflow (one hop each) arrives, completes and is logged once.
    for c in &r.classes {
        assert!(c.arrived > 1000, "{}: {}", c.name, c.arrived);
        assert_eq!(c.completed, c.arrived, "{discipline}: {}", c.name);
        let logged = log.iter().filter(|h| h.class == c.name).count() as u64;
        assert_eq!(logged, c.arrived, "{discipline}: {} hops logged", c.name);
    }
    (r, log)
}

/// Mean queue wait (admission - submission) of a class's hops, seconds.
fn mean_wait_s(log: &[HopRecord], class: &str) -> f64 {
    let waits: Vec<f64> = log
        .iter()
        .filter(|h| h.class == class)
        .map(|h| (h.started.0 - h.submitted.0) as f64 / 1e9)
        .collect();
    waits.iter().sum::<f64>() / waits.len() as f64
}

/// Hops admitted at some time t while a hop that `ahead(waiting, started)` says should
/// go first had been submitted before t and was still waiting (started after t). One
/// replica, so this is exact.
fn order_violations(log: &[HopRecord], ahead: impl Fn(&HopRecord, &HopRecord) -> bool) -> usize {
    let mut by_start: Vec<&HopRecord> = log.iter().collect();
    by_start.sort_by_key(|h| h.started);
    let mut v = 0;
    for h in &by_start {
        let t = h.started;
        v += log
            .iter()
            .filter(|w| w.submitted < t && w.started > t && ahead(w, h))
            .count();
    }
    v
}

#[test]
fn gpu_priority_never_admits_low_while_high_waits() {
    let (_, log) = gpu_lanes("priority", "10m");
    let low_starts = log.iter().filter(|h| h.class == "etl").count();
    assert!(low_starts > 1000);
    // No batch hop is admitted while an interactive hop submitted earlier waits on the
    // replica (a sequence preempted by recompute keeps its first admission time).
    let violations = order_violations(&log, |w, h| w.class == "chat" && h.class == "etl");
    assert_eq!(violations, 0);
    // And it matters: under FIFO the same arrivals (common random numbers) do violate
    // it, interactive waits less than 0.6x its FIFO wait, and batch waits longer.
    let (_, fifo) = gpu_lanes("fifo", "10m");
    assert!(order_violations(&fifo, |w, h| w.class == "chat" && h.class == "etl") > 100);
    let (hi, hi_fifo) = (mean_wait_s(&log, "chat"), mean_wait_s(&fifo, "chat"));
    let (lo, lo_fifo) = (mean_wait_s(&log, "etl"), mean_wait_s(&fifo, "etl"));
    assert!(
        hi < 0.6 * hi_fifo,
        "interactive wait {hi:.3}s vs FIFO {hi_fifo:.3}s"
    );
    assert!(lo > lo_fifo, "batch wait {lo:.3}s vs FIFO {lo_fifo:.3}s");
}

#[test]
fn gpu_earliest_deadline_first_serves_tight_slos_first() {
    // SLOs of 8s and 60s: deadlines interleave (a batch hop that has waited 52s goes
    // before a fresh interactive one).
    let (edf, log) = gpu_lanes("earliest_deadline", "60s");
    let (fifo, _) = gpu_lanes("fifo", "60s");
    let att = |r: &RunResult| r.summary().classes["chat"].slo_attainment.unwrap_or(0.0);
    assert!(
        att(&edf) > att(&fifo) + 0.05,
        "EDF {} vs FIFO {}",
        att(&edf),
        att(&fifo)
    );
    let deadline =
        |h: &HopRecord| h.submitted.0 + if h.class == "chat" { 8 } else { 60 } * 1_000_000_000;
    assert_eq!(order_violations(&log, |w, h| deadline(w) < deadline(h)), 0);
}

/// The two GPU lanes under `discipline`, with `preempt_for_priority = preempt`, and
/// decode skipping on or off.
fn gpu_lanes_preempting(
    discipline: &str,
    preempt: bool,
    skip: bool,
) -> (RunResult, Vec<HopRecord>) {
    let text = GPU_LANES
        .replace("PREEMPT", &format!("preempt_for_priority = {preempt}"))
        .replace("DISCIPLINE", discipline)
        .replace("ETL_SLO", "10m")
        .replace(
            "max_num_seqs = 4 }",
            &format!("max_num_seqs = 4, decode_skipping = {skip} }}"),
        );
    gpu_lanes_text(&text, discipline)
}

#[test]
fn gpu_priority_preemption_gives_interactive_hops_a_slot_at_once() {
    // The lanes above, under `priority`: with `preempt_for_priority` an interactive hop
    // that finds the four slots taken preempts a batch hop at the next iteration
    // instead of waiting for one to finish.
    let (off, off_log) = gpu_lanes_preempting("priority", false, true);
    let (on, on_log) = gpu_lanes_preempting("priority", true, true);
    let lane = |r: &RunResult, l: &str| {
        let b = r.breakdown_summary().0;
        let g = &b.by_lane[l];
        let ttft = g.ttft_s.clone().unwrap_or_else(|| panic!("{l}: no TTFT"));
        let wait = g
            .queue_wait_s
            .clone()
            .unwrap_or_else(|| panic!("{l}: no wait"));
        (ttft, wait)
    };
    let (ttft_off, _) = lane(&off, "interactive");
    let (ttft_on, wait_on) = lane(&on, "interactive");
    // Measured: TTFT p50 387 ms -> 31 ms, p99 3.47 s -> 2.94 s; an interactive hop
    // still waits when all four slots hold interactive hops.
    assert!(
        ttft_on.p50 < 0.2 * ttft_off.p50,
        "{ttft_on:?} vs {ttft_off:?}"
    );
    assert!(
        ttft_on.p99 < 0.9 * ttft_off.p99,
        "{ttft_on:?} vs {ttft_off:?}"
    );
    assert!(wait_on.p50 < 0.05, "{wait_on:?}");
    let p99 = |r: &RunResult, c: &str| r.summary().classes[c].latency_s.p99.unwrap_or(0.0);
    assert!(p99(&on, "chat") < p99(&off, "chat"));
    // The batch lane pays: preempted hops recompute, so its latency grows.
    assert!(p99(&on, "etl") > p99(&off, "etl"));
    let preempted = |r: &RunResult| {
        r.summary().pools["gpu"]
            .llm
            .as_ref()
            .map_or(0.0, |l| l.preempted_share)
    };
    assert_eq!(preempted(&off), 0.0);
    assert!((0.1..0.3).contains(&preempted(&on)), "{}", preempted(&on));
    // Admission order still holds: no batch hop is admitted while an interactive one
    // submitted earlier waits.
    for log in [&off_log, &on_log] {
        assert_eq!(
            order_violations(log, |w, h| w.class == "chat" && h.class == "etl"),
            0
        );
    }
    // Decode skipping stays exact with preemptions for priority; the same under
    // `earliest_deadline`, where chat's 8 s SLO ranks its hops ahead of etl's 10 m
    // (and the key preempts there too).
    let (plain, _) = gpu_lanes_preempting("priority", true, false);
    // (Everything but the event count: skipping saves wake-ups.)
    let json = |r: &RunResult| {
        let mut s = r.summary();
        s.events = 0;
        serde_json::to_string(&s).unwrap_or_default()
    };
    assert_eq!(json(&on), json(&plain));
    let (edf_on, _) = gpu_lanes_preempting("earliest_deadline", true, true);
    let (edf_plain, _) = gpu_lanes_preempting("earliest_deadline", true, false);
    assert_eq!(json(&edf_on), json(&edf_plain));
    assert!(preempted(&edf_on) > 0.0);
}

#[test]
fn preempt_for_priority_is_refused_where_it_cannot_apply() {
    let gpu = r#"gpu = { model = "llama-3-8b", gpu = "h100-80gb", max_num_seqs = 4 }"#;
    let cases = [
        // An abstract pool: nothing to preempt.
        (
            "discipline = \"priority\"\nservice = { dist = \"constant\", value = 1 }\npreempt_for_priority = true".to_string(),
            "`gpu` pools",
        ),
        (format!("{gpu}\npreempt_for_priority = true"), "not `fifo`"),
        (
            format!("{gpu}\ndiscipline = \"weighted_fair\"\npreempt_for_priority = true"),
            "not `weighted_fair` (a fair queue",
        ),
    ];
    for (pool, needle) in cases {
        let text = GPU_LANES.replace(
            "servers = 1\ndiscipline = \"DISCIPLINE\"\ngpu = { model = \"llama-3-8b\", gpu = \"h100-80gb\", max_num_seqs = 4 }\nPREEMPT",
            &format!("servers = 1\n{pool}"),
        )
        .replace("ETL_SLO", "10m");
        let spec: ScenarioSpec = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        match spec.validate() {
            Err(e) => {
                assert_eq!(e.key, "pools.gpu.preempt_for_priority", "{e}");
                assert!(e.to_string().contains(needle), "{e}");
            }
            Ok(_) => panic!("accepted: {pool}"),
        }
    }
    // Off is fine anywhere; a typo or a wrong type is a parse error, never a panic.
    let ok = GPU_LANES
        .replace("PREEMPT", "preempt_for_priority = false")
        .replace("DISCIPLINE", "fifo")
        .replace("ETL_SLO", "10m");
    let spec: ScenarioSpec = toml::from_str(&ok).unwrap_or_else(|e| panic!("{e}"));
    assert!(spec.validate().is_ok());
    for (bad, needle) in [
        (
            "preempt_for_priorty = true",
            "unknown field `preempt_for_priorty`",
        ),
        ("preempt_for_priority = 1", "invalid type"),
    ] {
        let text = GPU_LANES
            .replace("PREEMPT", bad)
            .replace("DISCIPLINE", "priority")
            .replace("ETL_SLO", "10m");
        let e = toml::from_str::<ScenarioSpec>(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(needle), "{bad}: {e}");
    }
}

/// Two lanes sharing a pool of Llama-3-8B H100 replicas with at most 4 sequences
/// each (about 1.9 requests/s of this size per replica), under weighted fair queuing.
/// Lane `small` sends short chats, lane `large` long documents (3x the tokens), so
/// that shares of requests and of tokens differ.
const GPU_FAIR: &str = r#"
[simulation]
seed = 11
horizon = "20m"
warmup = "0s"
[lanes.small]
weight = W_SMALL
[lanes.large]
weight = W_LARGE
[pools.gpu]
servers = SERVERS
discipline = "DISCIPLINE"
queue_at = "QUEUE_AT"
gpu = { model = "llama-3-8b", gpu = "h100-80gb", max_num_seqs = 4, picker = "PICKER" }
[classes.chat]
arrival = { process = "poisson", rate = RATE_SMALL }
lane = "small"
[[classes.chat.nodes]]
id = "answer"
pool = "gpu"
input_tokens = { dist = "lognormal", median = 400, p99 = 2000 }
output_tokens = { dist = "lognormal", median = 100, p99 = 400 }
[classes.docs]
arrival = { process = "poisson", rate = RATE_LARGE }
lane = "large"
[[classes.docs.nodes]]
id = "summarise"
pool = "gpu"
input_tokens = { dist = "lognormal", median = 1200, p99 = 6000 }
output_tokens = { dist = "lognormal", median = 300, p99 = 1200 }
"#;

/// What each class got of a GPU pool over a run (not drained: both lanes are still
/// backlogged at the horizon, and the hops finished by then are what was served).
struct FairRun {
    result: RunResult,
    log: Vec<HopRecord>,
}

impl FairRun {
    fn new(discipline: &str, weights: (f64, f64), rates: (f64, f64), servers: u32) -> Self {
        Self::queued(
            discipline,
            weights,
            rates,
            servers,
            "replica",
            "least_outstanding_tokens",
        )
    }
    /// [`FairRun::new`] with the pool's `queue_at` and replica picker.
    fn queued(
        discipline: &str,
        weights: (f64, f64),
        rates: (f64, f64),
        servers: u32,
        queue_at: &str,
        picker: &str,
    ) -> Self {
        let text = GPU_FAIR
            .replace("QUEUE_AT", queue_at)
            .replace("PICKER", picker)
            .replace("DISCIPLINE", discipline)
            .replace("W_SMALL", &format!("{:?}", weights.0))
            .replace("W_LARGE", &format!("{:?}", weights.1))
            .replace("RATE_SMALL", &format!("{:?}", rates.0))
            .replace("RATE_LARGE", &format!("{:?}", rates.1))
            .replace("SERVERS", &servers.to_string());
        let (result, log) = run_logged(&text, 11);
        FairRun { result, log }
    }
    fn arrived(&self, class: &str) -> f64 {
        let c = self.result.classes.iter().find(|c| c.name == class);
        c.map_or(0, |c| c.arrived) as f64
    }
    /// Tokens the replicas computed for the class: prompt not served from the prefix
    /// cache plus output (what weighted_fair charges a lane).
    fn tokens(&self, class: &str) -> f64 {
        self.log
            .iter()
            .filter(|h| h.class == class)
            .map(|h| (h.input_tokens - h.cached_tokens + h.output_tokens) as f64)
            .sum()
    }
    /// GPU time charged to the class (each iteration split by tokens; every replica
    /// has the same price, so dollars are proportional to time).
    fn busy(&self, class: &str) -> f64 {
        self.log
            .iter()
            .filter(|h| h.class == class)
            .map(|h| h.usd)
            .sum()
    }
    fn hops(&self, class: &str) -> f64 {
        self.log.iter().filter(|h| h.class == class).count() as f64
    }
    /// The chat lane's share of `f`.
    fn share(&self, f: impl Fn(&Self, &str) -> f64) -> f64 {
        let (a, b) = (f(self, "chat"), f(self, "docs"));
        a / (a + b)
    }
}

#[test]
fn gpu_weighted_fair_shares_a_saturated_replica_by_the_weights() {
    // Both lanes offered about twice the whole replica each (chat 6/s of ~630-token
    // requests, docs 2/s of ~1,900): weights 3:1 give chat 75% of the tokens computed
    // and of the GPU time, whatever the request sizes.
    let fair = FairRun::new("weighted_fair", (3.0, 1.0), (6.0, 2.0), 1);
    // FIFO on the same arrivals serves them in arrival order: shares follow demand
    // (chat is half the tokens offered), not weights.
    let fifo = FairRun::new("fifo", (3.0, 1.0), (6.0, 2.0), 1);
    // Equal weights: half each, although chat sends 3 requests for every docs one.
    let equal = FairRun::new("weighted_fair", (1.0, 1.0), (6.0, 2.0), 1);
    // A pool of two replicas: each replica tags its own queue and the picker spreads
    // both lanes over both, so the pool's shares follow the weights too.
    let pool = FairRun::new("weighted_fair", (3.0, 1.0), (12.0, 4.0), 2);
    let (tokens, busy) = (fair.share(FairRun::tokens), fair.share(FairRun::busy));
    let fifo_tokens = fifo.share(FairRun::tokens);
    let (eq_tokens, eq_busy) = (equal.share(FairRun::tokens), equal.share(FairRun::busy));
    let eq_hops = equal.share(FairRun::hops);
    let (pool_tokens, pool_busy) = (pool.share(FairRun::tokens), pool.share(FairRun::busy));
    eprintln!(
        "chat shares (tokens / GPU time / hops): 3:1 {tokens:.4} / {busy:.4} / {:.4} ({} + {} hops); FIFO {fifo_tokens:.4} / {:.4}; 1:1 {eq_tokens:.4} / {eq_busy:.4} / {eq_hops:.4}; 2 replicas 3:1 {pool_tokens:.4} / {pool_busy:.4}",
        fair.share(FairRun::hops),
        fair.hops("chat"),
        fair.hops("docs"),
        fifo.share(FairRun::busy),
    );
    assert!(fair.hops("docs") > 200.0, "{}", fair.hops("docs"));
    assert!((tokens - 0.75).abs() < 0.01, "chat token share {tokens:.4}");
    assert!((busy - 0.75).abs() < 0.02, "chat GPU-time share {busy:.4}");
    assert!(fifo_tokens < 0.6, "FIFO chat token share {fifo_tokens:.4}");
    assert!(
        (eq_tokens - 0.5).abs() < 0.01,
        "chat token share {eq_tokens:.4}"
    );
    assert!(
        (eq_busy - 0.5).abs() < 0.02,
        "chat GPU-time share {eq_busy:.4}"
    );
    assert!(
        eq_hops > 0.7,
        "chat gets most of the requests: {eq_hops:.4}"
    );
    assert!(
        (pool_tokens - 0.75).abs() < 0.02,
        "pool chat token share {pool_tokens:.4}"
    );
}

#[test]
fn gpu_weighted_fair_over_the_pools_queue_shares_the_pool_by_the_weights() {
    // Four replicas, both lanes backlogged (offered about twice the pool each). With
    // one pool-wide fair queue the pool hands out sequence slots by start tags (prompt
    // + output tokens over the weight), whichever replica frees one: 3:1 weights give
    // chat 75% of the tokens computed, and equal weights half, whatever the picker.
    let pool = FairRun::queued(
        "weighted_fair",
        (3.0, 1.0),
        (24.0, 8.0),
        4,
        "pool",
        "round_robin",
    );
    let equal = FairRun::queued(
        "weighted_fair",
        (1.0, 1.0),
        (24.0, 8.0),
        4,
        "pool",
        "least_outstanding_tokens",
    );
    // FIFO over the same pool-wide queue: shares follow demand, not weights.
    let fifo = FairRun::queued("fifo", (3.0, 1.0), (24.0, 8.0), 4, "pool", "round_robin");
    let (tokens, eq_tokens, fifo_tokens) = (
        pool.share(FairRun::tokens),
        equal.share(FairRun::tokens),
        fifo.share(FairRun::tokens),
    );
    eprintln!(
        "pool-wide fair queue, 4 replicas: chat token share 3:1 {tokens:.4} ({} + {} hops), 1:1 {eq_tokens:.4}, FIFO {fifo_tokens:.4}",
        pool.hops("chat"),
        pool.hops("docs")
    );
    assert!(pool.hops("docs") > 400.0, "{}", pool.hops("docs"));
    assert!((tokens - 0.75).abs() < 0.02, "chat token share {tokens:.4}");
    assert!(
        (eq_tokens - 0.5).abs() < 0.02,
        "chat token share {eq_tokens:.4}"
    );
    assert!(fifo_tokens < 0.6, "FIFO chat token share {fifo_tokens:.4}");
    let queue_at = |r: &FairRun| r.result.gpu_reports[0].as_ref().map(|g| g.queue_at);
    assert_eq!(
        queue_at(&pool),
        Some(sim_core::gpu::gpu_station::QueueAt::Pool)
    );
    let per_replica = FairRun::new("weighted_fair", (3.0, 1.0), (24.0, 8.0), 4);
    assert_eq!(
        queue_at(&per_replica),
        Some(sim_core::gpu::gpu_station::QueueAt::Replica)
    );
}

#[test]
fn queue_at_pool_is_for_gpu_pools_and_its_spelling_is_checked() {
    let abstract_pool = r#"
[pools.q]
servers = 2
service = { dist = "exponential", mean = "1s" }
queue_at = "pool"
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
hops = [{ pool = "q" }]
"#;
    let spec: ScenarioSpec = toml::from_str(abstract_pool).unwrap_or_else(|e| panic!("{e}"));
    match spec.validate() {
        Err(e) => {
            assert_eq!(e.key, "pools.q.queue_at", "{e}");
            assert!(e.to_string().contains("`gpu` pools"), "{e}");
        }
        Ok(_) => panic!("queue_at = \"pool\" accepted on an abstract pool"),
    }
    // The default is fine anywhere; a misspelt value names the choices.
    let ok = abstract_pool.replace("queue_at = \"pool\"", "queue_at = \"replica\"");
    let spec: ScenarioSpec = toml::from_str(&ok).unwrap_or_else(|e| panic!("{e}"));
    assert!(spec.validate().is_ok());
    let bad = abstract_pool.replace("queue_at = \"pool\"", "queue_at = \"gateway\"");
    let e = toml::from_str::<ScenarioSpec>(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("unknown variant `gateway`") && e.contains("`replica`") && e.contains("`pool`"),
        "{e}"
    );
}

#[test]
fn gpu_weighted_fair_does_not_starve_a_light_lane() {
    // Docs (weight 1) asks for about 10% of the replica, chat (weight 3) for twice
    // all of it: docs is below its 25% share, so it gets everything it asks, promptly.
    let fair = FairRun::new("weighted_fair", (3.0, 1.0), (4.0, 0.07), 1);
    let fifo = FairRun::new("fifo", (3.0, 1.0), (4.0, 0.07), 1);
    let wait = |r: &FairRun| mean_wait_s(&r.log, "docs");
    let (w_fair, w_fifo) = (wait(&fair), wait(&fifo));
    let arrived = fair.arrived("docs");
    eprintln!(
        "light lane: {arrived} docs hops arrived, {} served under weighted_fair ({:.4} of tokens), {} under FIFO; mean wait {w_fair:.3}s vs {w_fifo:.3}s",
        fair.hops("docs"),
        1.0 - fair.share(FairRun::tokens),
        fifo.hops("docs")
    );
    assert!(arrived > 50.0, "{arrived}");
    // Served by the horizon: all but those still running then.
    assert!(fair.hops("docs") >= arrived - 3.0, "{}", fair.hops("docs"));
    assert!(w_fair < 5.0, "docs waits {w_fair:.3}s under weighted_fair");
    // Under FIFO it queues behind chat's backlog.
    assert!(w_fifo > 10.0 * w_fair, "docs waits {w_fifo:.3}s under FIFO");
    assert!(fair.hops("docs") > fifo.hops("docs") + 10.0);
}

#[test]
fn piecewise_arrivals_with_a_cv_keep_the_profile_and_the_burstiness() {
    // Rates 0.1/s and 0.4/s in alternating hours, gamma gaps of CV 3 in operational
    // time. Over 100 h: 18,000 and 72,000 expected arrivals in the two phases; a
    // renewal count's variance is about cv^2 x its mean, so standard errors of 402 and
    // 805 (2.2% and 1.1%).
    let text = |cv: &str, extra: &str| {
        format!(
            r#"
[simulation]
horizon = "100h"
[pools.p]
servers = 1000
service = {{ dist = "constant", value = "1ms" }}
[classes.c]
arrival = {{ process = "piecewise", step = "1h", rates = [0.1, 0.4]{cv} }}
{extra}
hops = [{{ pool = "p" }}]
"#
        )
    };
    let (_, log) = run_logged(&text(", cv = 3.0", ""), 5);
    let mut t: Vec<u64> = log.iter().map(|h| h.submitted.as_nanos()).collect();
    t.sort_unstable();
    let hour = 3_600_000_000_000u64;
    let slow = t.iter().filter(|&&x| (x / hour).is_multiple_of(2)).count() as f64;
    let fast = t.len() as f64 - slow;
    assert!((slow - 18_000.0).abs() < 4.0 * 402.0, "slow hours: {slow}");
    assert!((fast - 72_000.0).abs() < 4.0 * 805.0, "fast hours: {fast}");
    // Gaps in operational time (the rate's integral between arrivals): mean 1, CV 3.
    // With a kurtosis of 3 + 6 cv^2 the sample CV's relative error is about
    // sqrt((2 + 6 cv^2) / n) / 2 = 1.2% for 90,000 gaps.
    let lambda = |x: u64| {
        let (k, off) = (x / hour, (x % hour) as f64 / 1e9);
        let per_pair = 3600.0 * (0.1 + 0.4);
        (k / 2) as f64 * per_pair
            + if k.is_multiple_of(2) {
                0.1 * off
            } else {
                360.0 + 0.4 * off
            }
    };
    // Mean and CV of the gaps between sorted arrival times, in operational time.
    let operational = |t: &[u64]| {
        let gaps: Vec<f64> = t.windows(2).map(|w| lambda(w[1]) - lambda(w[0])).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        (mean, var.sqrt() / mean)
    };
    let (mean, cv) = operational(&t);
    assert!((mean - 1.0).abs() < 0.05, "operational mean gap {mean}");
    assert!((cv / 3.0 - 1.0).abs() < 0.06, "operational cv {cv}");
    // Without a cv the same profile is Poisson: operational CV 1.
    let (_, log) = run_logged(&text("", ""), 5);
    let mut t: Vec<u64> = log.iter().map(|h| h.submitted.as_nanos()).collect();
    t.sort_unstable();
    let (_, cv) = operational(&t);
    assert!((cv - 1.0).abs() < 0.03, "poisson cv {cv}");
    // Refused: a cv of 0, and rate-factor bursts with a cv.
    for (cv, extra, key) in [
        (", cv = 0.0", "", "classes.c.arrival.cv"),
        (
            ", cv = 2.0",
            r#"bursts = [{ start = "1s", duration = "1s", rate_factor = 2.0 }]"#,
            "classes.c.bursts[0].rate_factor",
        ),
    ] {
        let spec: sim_core::ScenarioSpec =
            toml::from_str(&text(cv, extra)).unwrap_or_else(|e| panic!("{e}"));
        let e = spec
            .validate()
            .err()
            .unwrap_or_else(|| panic!("{cv} {extra} accepted"));
        assert_eq!(e.key, key, "{e}");
    }
}

#[test]
fn renewal_arrivals_have_the_gap_distribution_they_are_given() {
    let text = |gap: &str, horizon: &str| {
        format!(
            r#"
[simulation]
horizon = "{horizon}"
[pools.p]
servers = 1000
service = {{ dist = "constant", value = "1ms" }}
[classes.c]
arrival = {{ process = "renewal", interarrival = {gap} }}
hops = [{{ pool = "p" }}]
"#
        )
    };
    // Constant 0.5 s gaps: arrivals at 0.5, 1.0, ..., 9.5 s before a 10 s horizon.
    let (r, log) = run_logged(&text(r#"{ dist = "constant", value = "500ms" }"#, "10s"), 1);
    assert_eq!(r.classes[0].arrived, 19);
    let mut t: Vec<u64> = log.iter().map(|h| h.submitted.as_nanos()).collect();
    t.sort_unstable();
    assert_eq!(t[0], 500_000_000);
    assert!(t.windows(2).all(|w| w[1] - w[0] == 500_000_000));
    // Gamma gaps, mean 0.2 s and CV 3: rate 5/s and inter-arrival CV 3. Over 20,000 s
    // (about 100,000 arrivals) the sample mean gap has a relative standard error of
    // 3 / sqrt(1e5) = 1%, the sample CV about 2%.
    let (r, log) = run_logged(
        &text(r#"{ dist = "gamma", mean = "200ms", cv = 3.0 }"#, "20000s"),
        7,
    );
    let n = r.classes[0].arrived as f64;
    assert!(
        (n / 20000.0 / 5.0 - 1.0).abs() < 0.04,
        "rate {}",
        n / 20000.0
    );
    let mut t: Vec<f64> = log.iter().map(|h| h.submitted.as_secs_f64()).collect();
    t.sort_by(f64::total_cmp);
    let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
    assert!((sd / mean / 3.0 - 1.0).abs() < 0.1, "cv {}", sd / mean);
    // Refused: a gap distribution with mean 0, and rate-factor bursts.
    for (gap, extra, key) in [
        (
            r#"{ dist = "constant", value = 0 }"#,
            "",
            "classes.c.arrival.interarrival",
        ),
        (
            r#"{ dist = "exponential", mean = "1s" }"#,
            r#"bursts = [{ start = "1s", duration = "1s", rate_factor = 2.0 }]"#,
            "classes.c.bursts[0].rate_factor",
        ),
    ] {
        let t = text(gap, "10s").replace("hops = [", &format!("{extra}\nhops = ["));
        let spec: sim_core::ScenarioSpec = toml::from_str(&t).unwrap_or_else(|e| panic!("{e}"));
        let e = spec
            .validate()
            .err()
            .unwrap_or_else(|| panic!("{gap} {extra} accepted"));
        assert_eq!(e.key, key, "{e}");
    }
}

// ---------------------------------------------------------------------------------
// Requests a GPU pool can never serve fail their workflow (never a free success).
// ---------------------------------------------------------------------------------

/// One Llama-3-8B replica on an A100 40GB (KV cache 172,384 tokens at 0.9: (0.9 x 40
/// GiB - 16,059,990,016 B of weights) / 131,072 B per token), one class of one hop.
fn too_large_scenario(profiles: &str, input: &str, output: u64) -> String {
    format!(
        r#"
[simulation]
seed = 5
horizon = "2m"
warmup = "0s"
drain = true
[pools.a100]
servers = 1
gpu = {{ model = "llama-3-8b", gpu = "a100-40gb" }}
{profiles}
[classes.c]
arrival = {{ process = "poisson", rate = 0.5 }}
[[classes.c.nodes]]
id = "answer"
pool = "a100"
input_tokens = {input}
output_tokens = {{ dist = "constant", value = {output} }}
"#
    )
}

#[test]
fn a_request_larger_than_the_kv_cache_fails_its_workflow() {
    // Context limit raised so that the KV cache is what refuses a 600k-token prompt.
    let text = too_large_scenario(
        "[profiles.models.llama-3-8b]\ncontext_limit = 1048576",
        r#"{ dist = "constant", value = 600000 }"#,
        100,
    );
    let sc = scenario(&text);
    let g = sc.pools[0].gpu.as_ref().expect("gpu pool");
    assert_eq!(g.kv_tokens, 172_384);
    let r = run(&sc, RunOptions::default());
    let c = &r.classes[0];
    assert!(c.arrived > 30, "{}", c.arrived);
    assert_eq!(c.completed, 0, "a 600k-token prompt cannot be served");
    assert_eq!(c.failed, c.arrived);
    let cause = "request larger than KV cache of a100 (172384 tokens per replica)";
    assert_eq!(
        c.failed_by_cause.get(cause),
        Some(&c.arrived),
        "{:?}",
        c.failed_by_cause
    );
    let s = r.summary();
    let p = &s.pools["a100"];
    assert_eq!(p.too_large, c.arrived);
    assert_eq!(p.too_large_by_cause.get("kv_cache"), Some(&c.arrived));
    // Never served: no hop recorded, nothing charged to the workflows.
    assert_eq!(p.hops, 0);
    assert_eq!(s.classes["c"].usd_waste.failed, 0.0);
    assert_eq!(p.llm.as_ref().map(|l| l.replicas.rejected), Some(c.arrived));
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("pool a100") && w.contains("kv_cache")),
        "{:?}",
        s.warnings
    );

    // Mixed sizes: the small prompts complete, with real latency, the large ones fail.
    let mixed = too_large_scenario(
        "[profiles.models.llama-3-8b]\ncontext_limit = 1048576",
        r#"{ dist = "empirical", values = [1000, 600000] }"#,
        100,
    );
    let r = run(&scenario(&mixed), RunOptions::default());
    let c = &r.classes[0];
    let s = r.summary();
    assert!(
        c.completed > 5 && c.failed > 5,
        "{} / {}",
        c.completed,
        c.failed
    );
    assert_eq!(c.completed + c.failed, c.arrived);
    assert_eq!(s.pools["a100"].too_large, c.failed);
    assert_eq!(s.pools["a100"].hops, c.completed);
    // A served 1,000-token prompt with 100 output tokens takes well over 100 ms.
    let p50 = s.classes["c"].latency_s.p50.unwrap_or(0.0);
    assert!(p50 > 0.1, "{:?}", s.classes["c"].latency_s);
}

#[test]
fn the_models_context_limit_is_enforced() {
    // Llama-3-8B: 8,192 tokens of prompt + output. 8,000 + 192 fits exactly.
    let fits = too_large_scenario("", r#"{ dist = "constant", value = 8000 }"#, 192);
    let r = run(&scenario(&fits), RunOptions::default());
    let c = &r.classes[0];
    assert!(c.arrived > 30);
    assert_eq!((c.completed, c.failed), (c.arrived, 0));
    assert_eq!(r.summary().pools["a100"].too_large, 0);

    // One token more fails every workflow, with the limit in the cause.
    let over = too_large_scenario("", r#"{ dist = "constant", value = 8000 }"#, 193);
    let r = run(&scenario(&over), RunOptions::default());
    let c = &r.classes[0];
    assert_eq!((c.completed, c.failed), (0, c.arrived));
    let cause = "request over context limit of a100 (8192 tokens)";
    assert_eq!(
        c.failed_by_cause.get(cause),
        Some(&c.arrived),
        "{:?}",
        c.failed_by_cause
    );
    let s = r.summary();
    assert_eq!(
        s.pools["a100"].too_large_by_cause.get("context_limit"),
        Some(&c.arrived)
    );
    // The context limit, checked first, also catches a 600k prompt.
    let huge = too_large_scenario("", r#"{ dist = "constant", value = 600000 }"#, 100);
    let r = run(&scenario(&huge), RunOptions::default());
    assert_eq!(
        r.classes[0].failed_by_cause.get(cause),
        Some(&r.classes[0].arrived)
    );
}

#[test]
fn a_tiered_hop_over_one_pools_context_limit_falls_back_along_its_chain() {
    // Tier `chat` = [short (Llama-3-8B, 8,192 tokens), long (the same model with a
    // 32,768-token context)]. 10,000-token prompts are refused by `short` and served
    // by `long`, marked degraded; 1,000-token prompts never leave `short`. Pinned to
    // `short`, the long prompts fail as before.
    let text = |tier_or_pool: &str| {
        format!(
            r#"
[simulation]
seed = 4
horizon = "5m"
drain = true
[profiles.models.llama-3-8b-32k]
layers = 32
hidden_size = 4096
heads = 32
kv_heads = 8
head_dim = 128
vocab_size = 128256
intermediate_size = 14336
dtype_bytes = 2
context_limit = 32768
[pools.short]
servers = 2
gpu = {{ model = "llama-3-8b", gpu = "h100-80gb" }}
[pools.long]
servers = 2
gpu = {{ model = "llama-3-8b-32k", gpu = "h100-80gb" }}
[tiers.chat]
pools = ["short", "long"]
[classes.big]
arrival = {{ process = "poisson", rate = 0.2 }}
[[classes.big.nodes]]
id = "answer"
{tier_or_pool}
input_tokens = {{ dist = "constant", value = 10000 }}
output_tokens = {{ dist = "constant", value = 50 }}
[classes.small]
arrival = {{ process = "poisson", rate = 0.5 }}
[[classes.small.nodes]]
id = "answer"
tier = "chat"
input_tokens = {{ dist = "constant", value = 1000 }}
output_tokens = {{ dist = "constant", value = 50 }}
"#
        )
    };
    let (r, log) = run_logged(&text(r#"tier = "chat""#), 4);
    let big = r.classes.iter().find(|c| c.name == "big").expect("big");
    let small = r.classes.iter().find(|c| c.name == "small").expect("small");
    assert!(big.arrived > 30 && small.arrived > 100);
    assert_eq!((big.completed, big.failed), (big.arrived, 0));
    assert_eq!(big.degraded_hops, big.arrived);
    assert_eq!(small.completed, small.arrived);
    assert_eq!(small.degraded_hops, 0);
    assert!(
        log.iter()
            .filter(|h| h.class == "big")
            .all(|h| h.station == "long")
    );
    assert!(
        log.iter()
            .filter(|h| h.class == "small")
            .all(|h| h.station == "short")
    );
    let s = r.summary();
    assert_eq!(s.pools["short"].too_large, big.arrived);
    assert_eq!(s.pools["long"].too_large, 0);
    // Pinned: nowhere to fall back to.
    let r = run_seed(&text(r#"pool = "short""#), 4);
    let big = r.classes.iter().find(|c| c.name == "big").expect("big");
    assert_eq!((big.completed, big.failed), (0, big.arrived));
}

// ---------------------------------------------------------------------------------
// The random replica picker draws from its own named stream.
// ---------------------------------------------------------------------------------

const RANDOM_PICKER: &str = r#"
[simulation]
seed = SEED
horizon = "5m"
warmup = "0s"
drain = true
[pools.gpu]
servers = 4
gpu = { model = "llama-3-8b", gpu = "h100-80gb", picker = "PICKER" }
[classes.c]
arrival = { process = "poisson", rate = 3.0 }
[[classes.c.nodes]]
id = "answer"
pool = "gpu"
input_tokens = { dist = "uniform", low = 100, high = 2000 }
output_tokens = { dist = "uniform", low = 10, high = 300 }
"#;

fn per_replica_finished(seed: u64, picker: &str) -> (u64, Vec<u64>) {
    let text = RANDOM_PICKER
        .replace("SEED", &seed.to_string())
        .replace("PICKER", picker);
    let r = run(&scenario(&text), RunOptions::default());
    let s = r.summary();
    let llm = s.pools["gpu"].llm.clone().expect("gpu pool");
    assert_eq!(llm.replicas.picker, picker.replace('_', "-"));
    (
        r.classes[0].arrived,
        llm.replicas
            .per_replica
            .iter()
            .map(|p| p.finished)
            .collect(),
    )
}

#[test]
fn the_random_picker_draws_uniformly_from_the_pools_stream() {
    use rand::RngExt;
    for seed in [1u64, 2] {
        let (n, finished) = per_replica_finished(seed, "random");
        assert!(n > 800, "{n}");
        // The hand computation: n draws of 0..4 from `pool/gpu/picker`.
        let mut stream = sim_core::rng::StreamFactory::new(seed).stream("pool/gpu/picker");
        let mut want = vec![0u64; 4];
        for _ in 0..n {
            want[stream.random_range(0..4usize)] += 1;
        }
        assert_eq!(finished, want, "seed {seed}");
        // Binomial(n, 1/4) within 4 standard deviations.
        let sd = (n as f64 * 0.25 * 0.75).sqrt();
        for &c in &finished {
            assert!((c as f64 - n as f64 / 4.0).abs() < 4.0 * sd, "{finished:?}");
        }
        // The same seed gives the same picks; round robin sees the same arrivals.
        assert_eq!(per_replica_finished(seed, "random"), (n, finished));
        assert_eq!(per_replica_finished(seed, "round_robin").0, n);
    }
    assert_ne!(
        per_replica_finished(1, "random").1,
        per_replica_finished(2, "random").1
    );
}

/// A fan-out whose count changes over the run: uniform 2-6 branches capped at 5 by the
/// class, a burst of 24 (capped to 5) in hour 1, and the emergency switch capping at 2
/// from hour 3. E[min(round U(2,6), 5)] = 1 + 1 + 0.875 + 0.625 + 0.375 = 3.875.
const FAN_OUT_REGIMES: &str = r#"
[simulation]
horizon = "4h"
seed = 11
[emergency]
max_fan_out = 2
from = "3h"
[pools.w]
servers = 20
service = { dist = "deterministic", value = "1s" }
[classes.agents]
arrival = { process = "poisson", rate = 1.0 }
max_fan_out = 5
bursts = [{ start = "1h", duration = "1h", fan_out = { dist = "constant", value = 24 } }]
[[classes.agents.nodes]]
id = "research"
pool = "w"
fan_out = { count = { dist = "uniform", low = 2, high = 6 } }
"#;

#[test]
fn offered_load_counts_burst_fan_out_and_its_caps_as_the_run_draws_them() {
    use sim_core::time::SimTime;
    let sc = scenario(FAN_OUT_REGIMES);
    let hour = |h: f64| SimTime((h * 3600e9) as u64);
    // Regime by regime: the class cap, the burst (capped), normal again, the emergency.
    for (h, want) in [(0.5, 3.875), (1.5, 5.0), (2.5, 3.875), (3.5, 2.0)] {
        let got = sc.fan_out_means(0, Some(hour(h)))[0];
        assert!((got - want).abs() < 1e-9, "at {h}h: {got} vs {want}");
        let rho = sc.offered_load_at(hour(h))[0].rho;
        assert!((rho - want / 20.0).abs() < 1e-9, "at {h}h: rho {rho}");
    }
    // Averaged over the run (equal hours at a constant rate).
    let mean = (3.875 + 5.0 + 3.875 + 2.0) / 4.0;
    assert!((sc.fan_out_means(0, None)[0] - mean).abs() < 1e-9);
    let rho = sc.offered_load()[0].rho;
    assert!((rho - mean / 20.0).abs() < 1e-9, "{rho}");
    assert!(sc.load_varies());
    // And the simulator draws what the plan says: the busy fraction (about 53,000
    // one-second hops; its standard deviation is under 1%) within 4%.
    let util = run_seed(FAN_OUT_REGIMES, 11).summary().pools["w"].utilization;
    assert!(
        (util / rho - 1.0).abs() < 0.04,
        "utilisation {util} vs rho {rho}"
    );
    // Without the caps the burst counts in full: 24 branches in hour 1.
    let free = scenario(
        &FAN_OUT_REGIMES
            .replace("max_fan_out = 5\n", "")
            .replace("max_fan_out = 2", "max_fan_out = 100"),
    );
    assert!((free.fan_out_means(0, Some(hour(1.5)))[0] - 24.0).abs() < 1e-9);
    assert!((free.fan_out_means(0, Some(hour(0.5)))[0] - 4.0).abs() < 1e-9);
}

/// `simulation.sample_every` changes only the time series' grain: the same run (same
/// summary, to the byte, but for the count of sample events), and hourly rows are the sums (counts, dollars) and the
/// busy-weighted means (utilisation) of the minute rows they cover.
#[test]
fn a_coarser_sample_interval_aggregates_the_same_run() {
    let text = r#"
[simulation]
horizon = "4h"
seed = 3
[pools.p]
servers = 4
usd_per_server_hour = 2.0
service = { dist = "exponential", mean = "1s" }
[classes.c]
arrival = { process = "poisson", rate = 3.0 }
hops = [{ pool = "p" }]
"#;
    let minutes = run_seed(text, 3);
    let hourly_text = text.replace("seed = 3", "seed = 3\nsample_every = \"1h\"");
    let hours = run_seed(&hourly_text, 3);
    // The same run but for the 236 sample events it no longer processes.
    let json = |r: &RunResult| {
        let mut v = serde_json::to_value(r.summary()).unwrap();
        let events = v["events"].as_u64().unwrap();
        v["events"] = serde_json::Value::Null;
        (events, v.to_string())
    };
    let ((e_min, s_min), (e_hour, s_hour)) = (json(&minutes), json(&hours));
    assert_eq!(s_min, s_hour);
    assert_eq!(e_min - e_hour, 240 - 4);
    assert_eq!(minutes.timeseries.len(), 240);
    let t: Vec<f64> = hours.timeseries.iter().map(|r| r.t_s).collect();
    assert_eq!(t, vec![3600.0, 7200.0, 10800.0, 14400.0]);
    for (h, row) in hours.timeseries.iter().enumerate() {
        let mins = &minutes.timeseries[h * 60..(h + 1) * 60];
        assert_eq!(row.arrivals, mins.iter().map(|m| m.arrivals).sum::<u64>());
        assert_eq!(
            row.completions,
            mins.iter().map(|m| m.completions).sum::<u64>()
        );
        let usd: f64 = mins.iter().map(|m| m.usd).sum();
        assert!((row.usd - usd).abs() < 1e-9, "{} vs {usd}", row.usd);
        let util: f64 = mins.iter().map(|m| m.pools[0].utilization).sum::<f64>() / 60.0;
        assert!((row.pools[0].utilization - util).abs() < 1e-9);
        assert_eq!(row.in_flight, mins[59].in_flight);
    }
    let arrived: u64 = hours.timeseries.iter().map(|r| r.arrivals).sum();
    assert_eq!(arrived, hours.summary().classes["c"].arrived);
    // An interval of 0 would never advance, and one of 1ns over 4h would never finish.
    let e = invalid(&text.replace("seed = 3", "seed = 3\nsample_every = \"0s\""));
    assert_eq!(e.key, "simulation.sample_every", "{e}");
    let e = invalid(&text.replace("seed = 3", "seed = 3\nsample_every = \"1ns\""));
    assert_eq!(e.key, "simulation.sample_every", "{e}");
    assert!(e.message.contains("at most 50000000"), "{e}");
}

//! The engine against closed-form queueing theory, conservation laws and determinism.
//!
//! Each theory check runs independent replications (different seeds), builds a 99%
//! Student-t confidence interval from them, and asserts both that the theory value lies
//! inside it and that the interval is narrow enough (half-width < 2.5% of the value) that
//! a 5% modelling error would be caught.

use sim_core::metrics::RunResult;
use sim_core::theory;
use sim_core::{RunOptions, Scenario, ScenarioSpec, run};

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

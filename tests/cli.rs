//! The factorysim command line, end to end: determinism of the written summary, the
//! shape of the output, and clear errors (exit code 2) for bad scenarios.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "cli/plots.rs"]
mod plots;
#[path = "cli/results.rs"]
mod results;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_factorysim"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_ok(args: &[&str]) -> Output {
    let out = bin()
        .args(args)
        .current_dir(root())
        .output()
        .expect("spawn factorysim");
    assert!(
        out.status.success(),
        "factorysim {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).expect("read output")
}

#[test]
fn quickstart_prints_table_and_writes_summary() {
    let dir = tempdir();
    let out = run_ok(&[
        "run",
        "scenarios/quickstart.toml",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Workflow classes",
        "chat",
        "report",
        "p99",
        "$/outcome",
        "Pools",
        "llm-large",
        "util",
        "summary.json",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&read(&dir.path().join("summary.json"))).expect("valid JSON");
    for key in ["seed", "events", "simulated_seconds"] {
        assert!(summary.get(key).is_some(), "summary.json lacks {key}");
    }
    let chat = &summary["classes"]["chat"];
    for key in [
        "arrived",
        "completed",
        "failed",
        "rejected",
        "abandoned",
        "in_flight",
    ] {
        assert!(chat[key].is_u64(), "classes.chat.{key}");
    }
    for key in ["mean", "p50", "p95", "p99", "max"] {
        assert!(
            chat["latency_s"][key].is_f64(),
            "classes.chat.latency_s.{key}"
        );
    }
    for key in ["mean", "p50", "p95"] {
        assert!(
            chat["usd_per_outcome"][key].is_f64(),
            "classes.chat.usd_per_outcome.{key}"
        );
    }
    let util = summary["pools"]["llm-large"]["utilization"]
        .as_f64()
        .expect("utilization");
    assert!(util > 0.3 && util < 1.0, "utilization {util}");
    let arrived = chat["arrived"].as_u64().unwrap();
    let accounted: u64 = ["completed", "failed", "rejected", "abandoned", "in_flight"]
        .iter()
        .map(|k| chat[k].as_u64().unwrap())
        .sum();
    assert_eq!(arrived, accounted);
}

#[test]
fn summary_is_byte_identical_for_the_same_seed() {
    let (a, b, c) = (tempdir(), tempdir(), tempdir());
    for (dir, seed) in [(&a, "7"), (&b, "7"), (&c, "8")] {
        run_ok(&[
            "run",
            "scenarios/quickstart.toml",
            "--seed",
            seed,
            "--out",
            dir.path().to_str().unwrap(),
        ]);
    }
    let (sa, sb, sc) = (
        read(&a.path().join("summary.json")),
        read(&b.path().join("summary.json")),
        read(&c.path().join("summary.json")),
    );
    assert_eq!(sa, sb, "same seed must give byte-identical summary.json");
    assert_ne!(
        sa, sc,
        "a different seed must give a different summary.json"
    );
    assert!(sa.contains("\"seed\": 7"));
}

#[test]
fn set_overrides_change_the_run() {
    let dir = tempdir();
    let out = run_ok(&[
        "run",
        "scenarios/mmc.toml",
        "--json",
        "--set",
        "pools.agents.servers=8",
        "--set",
        "simulation.horizon=\"20m\"",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(s["pools"]["agents"]["servers"], 8);
    assert_eq!(s["simulated_seconds"].as_f64(), Some(1200.0));
}

#[test]
fn check_prints_offered_load_and_warns_when_unstable() {
    let out = run_ok(&["check", "scenarios/mmc.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0.850"), "rho 0.85 expected in:\n{text}");
    assert!(!text.contains("UNSTABLE"));
    let out = run_ok(&[
        "check",
        "scenarios/mmc.toml",
        "--set",
        "classes.jobs.arrival.rate=4.4",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1.100") && text.contains("UNSTABLE"),
        "{text}"
    );
    assert!(
        text.contains("warning: offered load rho >= 1 on agents"),
        "{text}"
    );
}

#[test]
fn check_prints_no_rho_for_gpu_pools_and_kv_seqs_beside_the_cap() {
    let out = run_ok(&["check", "scenarios/gpu-pool.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    // The generic pools table: GPU pools are timed by their replicas, as in `run`.
    assert!(
        text.contains("  a100        4  12.000             -    -"),
        "{text}"
    );
    assert!(!text.contains("0s  0.000"), "{text}");
    // KV sequences at the mean context (not capped) next to max_num_seqs x replicas,
    // and a headroom with two decimals.
    assert!(text.contains("KV seqs  max seqs"), "{text}");
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("a100") && l.contains("ms"))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[4], "1024", "{row}");
    let kv: f64 = cols[3].parse().unwrap_or_else(|_| panic!("{row}"));
    assert!(kv > 1024.0, "{row}");
    assert!(
        cols[11].ends_with('x') && cols[11].split('.').nth(1).map(str::len) == Some(3),
        "{row}"
    );
    // The load: hops/s over what the replicas finish at the best batching.
    let load: f64 = cols[12].parse().unwrap_or_else(|_| panic!("{row}"));
    assert!(load > 0.0 && load < 0.85, "{row}");
}

#[test]
fn check_prints_burke_theory_for_a_tandem() {
    // M/M/2 (rho 0.75) then M/M/3 (rho 0.7) at 1.5/s: Erlang C for both stations.
    let out = run_ok(&["check", "scenarios/tandem.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "solve   M/M/c  0.700    0.492    765.9ms     6.06s",
        "triage  M/M/c  0.750    0.643      1.29s     8.33s",
    ] {
        assert!(text.contains(line), "{line:?} expected in:\n{text}");
    }
    // An M/D/1 triage keeps its own line (0.75 / (2 * 2 * 0.25) = 0.75s) but its
    // departures are not Poisson: no line for the solvers.
    let out = run_ok(&[
        "check",
        "scenarios/tandem.toml",
        "--set",
        "pools.triage.servers=1",
        "--set",
        "pools.triage.service={dist=\"deterministic\",value=\"500ms\"}",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("triage  M/D/1  0.750        -    750.0ms"),
        "{text}"
    );
    assert!(!text.contains("solve   M/"), "{text}");
}

#[test]
fn every_verb_has_help_with_an_example() {
    for verb in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["check", "--help"],
        vec!["compare", "--help"],
        vec!["sweep", "--help"],
        vec!["calibrate", "--help"],
        vec!["trace", "--help"],
        vec!["trace", "stats", "--help"],
        vec!["fit", "--help"],
    ] {
        let out = run_ok(&verb);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example"),
            "{verb:?} --help lacks an example:\n{text}"
        );
    }
}

const GOOD: &str = r#"
[simulation]
horizon = "10m"
[pools.gpu]
servers = 2
service = { dist = "exponential", mean = "1s" }
[classes.chat]
arrival = { process = "poisson", rate = 1.0 }
hops = [{ pool = "gpu" }]
"#;

/// Writes `text` to a scenario file and expects exit code 2 with all `needles` in a
/// single-line message that names the file.
fn expect_bad(name: &str, text: &str, needles: &[&str]) {
    let dir = tempdir();
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write scenario");
    let out = bin()
        .args([
            "run",
            path.to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{name}: expected exit code 2, stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{name}: panicked:\n{stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "{name}: expected one line:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("{name}.toml")),
        "{name}: message must name the file:\n{stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "{name}: expected {n:?} in:\n{stderr}");
    }
}

#[test]
fn bad_scenarios_give_one_clear_message_and_exit_2() {
    expect_bad(
        "unknown-key",
        &GOOD.replace("servers = 2", "servers = 2\nservrs = 3"),
        &["unknown field `servrs`", "expected", ":6:"],
    );
    expect_bad(
        "negative-rate",
        &GOOD.replace("rate = 1.0", "rate = -1.0"),
        &["classes.chat.arrival.rate", "positive rate", "-1"],
    );
    expect_bad(
        "missing-pool",
        &GOOD.replace("hops = [{ pool = \"gpu\" }]", "hops = [{ pool = \"cpu\" }]"),
        &["classes.chat.hops[0].pool", "no pool named `cpu`", "gpu"],
    );
    expect_bad(
        "zero-servers",
        &GOOD.replace("servers = 2", "servers = 0"),
        &["pools.gpu.servers", ">= 1", "got 0"],
    );
    expect_bad(
        "bad-duration",
        &GOOD.replace("horizon = \"10m\"", "horizon = \"ten minutes\""),
        &["ten minutes", "not a duration", "250ms"],
    );
    expect_bad(
        "bad-dist",
        &GOOD.replace("dist = \"exponential\"", "dist = \"exponentail\""),
        &["exponentail", "exponential"],
    );
    // Profile overrides name the field (or the profile) and its line.
    expect_bad(
        "profile-typo",
        &format!("{GOOD}[profiles.gpus.h100-80gb]\nprice_per_hour = 2.1\n"),
        &[
            "profiles.gpus.h100-80gb.price_per_hour",
            "line 11",
            "unknown field",
        ],
    );
    expect_bad(
        "profile-incomplete",
        &format!("{GOOD}[profiles.gpus.new-gpu]\nmemory_gib = 10.0\n"),
        &["profiles.gpus.new-gpu", "line 10", "missing field"],
    );
    expect_bad(
        "profile-invalid",
        &format!("{GOOD}[profiles.models.llama-2-70b]\nkv_heads = 7\n"),
        &[
            "profiles.models.llama-2-70b.kv_heads",
            "line 11",
            "multiple of kv_heads",
        ],
    );
    // A duration where a count belongs would be read as seconds: "1m" tokens = 60.
    expect_bad(
        "duration-as-tokens",
        &GOOD.replace(
            "hops = [{ pool = \"gpu\" }]",
            "[[classes.chat.nodes]]\nid = \"a\"\npool = \"gpu\"\noutput_tokens = { dist = \"constant\", value = \"1m\" }",
        ),
        &["`value` = \"1m\"", "plain number", ":12:"],
    );
    expect_bad(
        "duration-as-branches",
        &GOOD.replace(
            "hops = [{ pool = \"gpu\" }]",
            "[[classes.chat.nodes]]\nid = \"a\"\npool = \"gpu\"\nfan_out = { count = { dist = \"uniform\", low = 1, high = \"3s\" } }",
        ),
        &["`high` = \"3s\"", "plain number", ":12:"],
    );
    expect_bad("bad-toml", "[simulation\nhorizon = 1", &["bad-toml.toml:1"]);
    expect_bad(
        "warmup-too-long",
        &GOOD.replace("horizon = \"10m\"", "horizon = \"10m\"\nwarmup = \"1h\""),
        &["simulation.warmup", "shorter than the horizon"],
    );
    let dir = tempdir();
    let out = bin()
        .args([
            "run",
            "does-not-exist.toml",
            "--out",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does-not-exist.toml: cannot read"));
}

#[test]
fn bad_set_override_is_an_input_error() {
    let out = bin()
        .args([
            "check",
            "scenarios/mmc.toml",
            "--set",
            "pools.agents.servers",
        ])
        .current_dir(root())
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected key.path=value"));
    let out = bin()
        .args([
            "check",
            "scenarios/mmc.toml",
            "--set",
            "pools.agents.sevrers=3",
        ])
        .current_dir(root())
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sevrers"));
    // A misspelt pool name would make a new pool nothing uses, the run unchanged:
    // refused, naming the pools there are.
    let dir = tempdir();
    let run_args = ["--no-plots", "--out", dir.path().to_str().unwrap()];
    for verb in ["check", "run"] {
        let out = bin()
            .args([
                verb,
                "scenarios/mmc.toml",
                "--set",
                "pools.agnets.servers=5",
            ])
            .args(if verb == "run" {
                &run_args[..]
            } else {
                &[][..]
            })
            .current_dir(root())
            .output()
            .expect("spawn");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{verb}: {err}");
        assert!(
            err.contains("scenarios/mmc.toml")
                && err.contains("creates pools.agnets")
                && err.contains("agents"),
            "{verb}: {err}"
        );
    }
    // A seed TOML cannot hold is refused by the flag, not as a confusing `--set`.
    let out = bin()
        .args(["run", "scenarios/mmc.toml", "--seed", "9223372036854775808"])
        .current_dir(root())
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--seed") && !err.contains("--set"), "{err}");
    // A misspelt class name makes a new, incomplete class: the message says so and
    // lists the defined classes, instead of naming a field the new table lacks.
    let out = bin()
        .args([
            "check",
            "scenarios/span-replay.toml",
            "--set",
            "classes.agent.arrival.stream=true",
        ])
        .current_dir(root())
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("creates classes.agent") && err.contains("chat, claims"),
        "{err}"
    );
    // A value of the wrong type: the message names the override that brought it, not
    // the good one before it.
    for (bad, needle) in [
        ("classes.jobs.arrival.rate=fast", "expected f64"),
        ("simulation.horizon=-5s", "not a duration"),
    ] {
        let out = bin()
            .args([
                "check",
                "scenarios/mmc.toml",
                "--set",
                "pools.agents.servers=5",
                "--set",
                bad,
            ])
            .current_dir(root())
            .output()
            .expect("spawn");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("--set `{bad}`")), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!stderr.contains("servers=5"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

// ---------------------------------------------------------------------------------
// Results (issue 7): percentiles, cost conservation, SLOs, snapshots, outputs, plots,
// replications.

use factorysim::parse_scenario;
use sim_core::metrics::{ClassStats, RunResult, exact_quantile};
use sim_core::{RunOptions, SimDuration};

fn scenario_from(text: &str) -> sim_core::Scenario {
    parse_scenario("test.toml", text, &[])
        .expect("valid scenario")
        .scenario
}

/// A run result around the given classes (for summary-only tests): a real, short run of
/// `GOOD` (so new `RunResult` fields need no change here) with its classes replaced.
fn result_with(classes: Vec<ClassStats>) -> RunResult {
    let mut sc = scenario_from(GOOD);
    sc.horizon = SimDuration(1_000_000_000);
    let mut r = sim_core::run(&sc, RunOptions::default());
    r.classes = classes;
    r
}

/// Deterministic xorshift64* uniform in (0, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

#[test]
fn hdr_percentiles_agree_with_exact_percentiles_within_3_significant_digits() {
    let sc = scenario_from(GOOD);
    // Lognormal latencies spanning 1ms..1000s, heavy tail, plus a few exact repeats.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (n, median_s, sigma) in [(1usize, 1.0, 0.5), (17, 0.02, 1.0), (50_000, 2.0, 1.2)] {
        let mut c = ClassStats::new(&sc.classes[0]);
        let mut raw = Vec::with_capacity(n);
        for _ in 0..n {
            // Box-Muller normal.
            let z = (-2.0 * rng.next().ln()).sqrt() * (std::f64::consts::TAU * rng.next()).cos();
            let ns = ((median_s * (sigma * z).exp()) * 1e9).round().max(1.0) as u64;
            raw.push(ns as f64 / 1e9);
            c.arrived += 1;
            c.record_completion(SimDuration(ns), 0.0, 0);
        }
        raw.sort_by(f64::total_cmp);
        let s = result_with(vec![c]).summary();
        let lat = &s.classes["chat"].latency_s;
        for (q, got) in [
            (0.5, lat.p50),
            (0.9, lat.p90),
            (0.95, lat.p95),
            (0.99, lat.p99),
            (0.999, lat.p999),
            (1.0, lat.max),
        ] {
            let exact = exact_quantile(&raw, q).unwrap();
            let got = got.unwrap();
            // HDR reports the top of the bucket holding the exact sample: never below it,
            // and at most one part in 1,000 (3 significant digits) above it.
            assert!(
                got >= exact - 1e-9 && got <= exact * (1.0 + 1e-3) + 1e-9,
                "n={n} q={q}: hdr {got} exact {exact}"
            );
        }
        let mean = raw.iter().sum::<f64>() / n as f64;
        assert!((lat.mean.unwrap() - mean).abs() <= 1e-9 * mean.max(1.0) + 1e-9);
    }
}

#[test]
fn slo_attainment_and_burn_rate_on_a_known_case() {
    let sc = scenario_from(&GOOD.replace(
        "arrival = { process = \"poisson\", rate = 1.0 }",
        "arrival = { process = \"poisson\", rate = 1.0 }\nslo = \"5s\"\nslo_target = 0.98",
    ));
    let mut c = ClassStats::new(&sc.classes[0]);
    // 1,000 arrivals: 900 complete in 1s, 50 in 10s, 30 fail, 20 are still in flight.
    // Attainment = 900 / 1000 = 0.9; burn = (1 - 0.9) / (1 - 0.98) = 5.
    for i in 0..950 {
        let secs = if i < 900 { 1 } else { 10 };
        c.record_completion(SimDuration(secs * 1_000_000_000), 0.01, 100);
    }
    c.arrived = 1000;
    c.failed = 30;
    c.in_flight = 20;
    let s = result_with(vec![c]).summary();
    let chat = &s.classes["chat"];
    assert_eq!(chat.slo_s, Some(5.0));
    assert_eq!(chat.slo_target, Some(0.98));
    assert!((chat.slo_attainment.unwrap() - 0.9).abs() < 1e-12);
    assert!((chat.slo_burn_rate.unwrap() - 5.0).abs() < 1e-9);
    assert!((sim_core::metrics::burn_rate(0.99, 0.99).unwrap() - 1.0).abs() < 1e-9);
    assert_eq!(sim_core::metrics::burn_rate(1.0, 0.99), Some(0.0));
    assert!((sim_core::metrics::burn_rate(0.912, 0.99).unwrap() - 8.8).abs() < 1e-9);

    // End to end: constant 1s service, ample servers, so every workflow takes exactly 1s.
    let text = r#"
[simulation]
horizon = "10m"
drain = true
[pools.gpu]
servers = 50
service = { dist = "constant", value = "1s" }
[classes.fast]
arrival = { process = "poisson", rate = 1.0 }
slo = "2s"
hops = [{ pool = "gpu" }]
[classes.slow]
arrival = { process = "poisson", rate = 1.0 }
slo = "500ms"
hops = [{ pool = "gpu" }]
"#;
    let dir = tempdir();
    let path = dir.path().join("slo.toml");
    std::fs::write(&path, text).unwrap();
    let out = run_ok(&[
        "run",
        path.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
        "--no-plots",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    let s: serde_json::Value =
        serde_json::from_str(&read(&dir.path().join("summary.json"))).unwrap();
    assert_eq!(s["classes"]["fast"]["slo_attainment"].as_f64(), Some(1.0));
    assert_eq!(s["classes"]["fast"]["slo_burn_rate"].as_f64(), Some(0.0));
    assert_eq!(s["classes"]["slow"]["slo_attainment"].as_f64(), Some(0.0));
    let burn = s["classes"]["slow"]["slo_burn_rate"].as_f64().unwrap();
    assert!((burn - 100.0).abs() < 1e-9, "{burn}");
    assert!(
        table.contains("SLO misses: slow  0.0% within 500.0ms (target 99%), burn rate 100.0x"),
        "{table}"
    );
    assert!(!table.contains("\x1b["), "no colour when stdout is a pipe");
}

#[test]
fn cost_is_conserved_to_the_cent() {
    // Tools with failures and retries, timeouts, abandonment, human review and quorum
    // stragglers; drained and without warm-up, so every dollar belongs to a measured
    // workflow or to idle capacity.
    let text = r#"
[simulation]
horizon = "2h"
drain = true
[pools.llm]
servers = 3
usd_per_server_hour = 10.0
service = { dist = "lognormal", median = "1s", p99 = "10s" }
[pools.small]
servers = 2
usd_per_server_hour = 1.5
service = { dist = "exponential", mean = "300ms" }
outages = [{ start = "30m", duration = "15m" }]
[pools.api]
api = { ttft = { dist = "constant", value = "300ms" }, tpot = { dist = "constant", value = "5ms" },
        usd_per_1k_input = 0.001, usd_per_1k_output = 0.002, usd_per_1k_cached_input = 0.0002 }
[tiers.t]
pools = ["small", "api"]
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
tenant = "acme"
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
[classes.d]
arrival = { process = "poisson", rate = 0.5 }
tenant = "globex"
[[classes.d.nodes]]
id = "first"
tier = "t"
shared_prefix_tokens = 300
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 200 }
[[classes.d.nodes]]
id = "second"
pool = "llm"
after = ["first"]
service = { dist = "exponential", mean = "500ms" }
"#;
    let sc = scenario_from(text);
    let r = sim_core::run(&sc, RunOptions::default());
    let s = r.summary();
    let c = &r.classes[0];
    assert!(
        c.failed > 0 && c.abandoned > 0 && c.usd_human > 0.0,
        "every bucket is used"
    );
    // The outage of `small` sends class d's first hop to the API: over-tiered waste,
    // which is part of the successful workflows' dollars, not on top of them.
    let over_tiered = r.classes[1].usd_waste_over_tiered;
    assert!(over_tiered > 0.0 && r.classes[0].usd_waste_over_tiered == 0.0);
    assert_eq!(s.totals.usd_waste_over_tiered, over_tiered);
    assert!(s.totals.usd_api > 0.0);
    // Left: what each workflow was charged (success less its over-tiered part, the
    // over-tiered bucket, the other waste buckets, unfinished) plus idle capacity.
    let per_workflow: f64 = r
        .classes
        .iter()
        .map(|c| {
            (c.usd_per_success.iter().sum::<f64>() - c.usd_waste_over_tiered)
                + c.usd_waste_over_tiered
                + c.usd_waste_rejected
                + c.usd_waste_failed
                + c.usd_waste_abandoned
                + c.usd_waste_leftover
                + c.usd_unfinished
        })
        .sum();
    let idle: f64 = s.pools.values().map(|p| p.usd_idle).sum();
    // Right: pool hours x price, computed from the scenario, plus tool and human totals.
    let hours = s.measured_seconds / 3600.0;
    let capacity: f64 = sc
        .pools
        .iter()
        .map(|p| p.servers as f64 * hours * p.usd_per_server_hour)
        .sum();
    let tools: f64 = r.tools.iter().map(|t| t.usd).sum();
    let human: f64 = r.classes.iter().map(|c| c.usd_human).sum();
    let api = s.totals.usd_api;
    assert!((capacity - s.totals.usd_capacity).abs() < 1e-6);
    let left = per_workflow + idle;
    let right = capacity + tools + human + api;
    assert!(
        (left - right).abs() < 0.005,
        "workflows {per_workflow} + idle {idle} = {left} vs capacity {capacity} + tools {tools} + human {human} + api {api} = {right}"
    );
    assert!((s.totals.usd_workflows + s.totals.usd_idle - s.totals.usd_spent).abs() < 0.005);
    assert!(s.totals.usd_waste > 0.0);
    // The API dollars split into input, cached input and output: each call of `first`
    // that fell back to the API bills 700 fresh and 300 cached prompt tokens and 200
    // output tokens, so the parts are in the ratio 0.7 : 0.06 : 0.4 (per 1k: $0.001,
    // $0.0002, $0.002); the parts add up to the API total to the cent, per pool, per
    // class (classes d only) and in the totals.
    let split = &s.totals.usd_api_split;
    assert!((split.total() - api).abs() < 0.005);
    assert!((split.input / 0.7 - split.output / 0.4).abs() < 1e-9);
    assert!((split.cached_input / 0.06 - split.output / 0.4).abs() < 1e-9);
    assert!(split.cached_input > 0.0);
    assert_eq!(s.pools["api"].usd_api_split, *split);
    assert_eq!(s.classes["c"].usd_api, 0.0);
    let d = &s.classes["d"];
    assert!((d.usd_api - api).abs() < 1e-9);
    assert!((d.usd_api_split.total() - d.usd_api).abs() < 1e-12);
    assert_eq!(s.tenants["globex"].usd_api_split, d.usd_api_split);
    // Tenants split the same dollars.
    let tenants: f64 = s.tenants.values().map(|t| t.usd).sum();
    assert!((tenants - s.totals.usd_workflows).abs() < 1e-9);
    assert_eq!(s.tenants.keys().collect::<Vec<_>>(), vec!["acme", "globex"]);
}

/// Runs the quickstart into a temp dir; returns (dir, stdout with the dir redacted).
fn quickstart(extra: &[&str]) -> (tempfile::TempDir, String) {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut args = vec!["run", "scenarios/quickstart.toml", "--out", &d];
    args.extend_from_slice(extra);
    let out = run_ok(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).replace(&d, "OUT");
    (dir, stdout)
}

#[test]
fn a_tensor_parallel_degree_that_does_not_split_the_heads_is_an_input_error() {
    let check = |tp: &str| {
        bin()
            .args([
                "check",
                "scenarios/gpu-pool.toml",
                "--set",
                &format!("pools.a100.gpu.tp={tp}"),
            ])
            .current_dir(root())
            .output()
            .expect("spawn")
    };
    // Llama-3-8B has 32 attention heads: tp 3 does not divide them.
    let out = check("3");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pools.a100.gpu.tp")
            && err.contains("32 attention heads")
            && err.contains("expected one of 1, 2, 4, 8, 16, 32"),
        "{err}"
    );
    // tp 2 splits both the 32 heads and the 8 KV heads.
    let out = check("2");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Snapshots of the quickstart's table and summary.json (tests/snapshots/). When a model
/// change moves the quickstart's figures on purpose, refresh them with
/// `INSTA_UPDATE=always cargo test --release -p factorysim --test cli` and review the diff
/// (CI never writes snapshots, so a stale one fails there).
#[test]
fn quickstart_table_and_summary_snapshots() {
    let (dir, stdout) = quickstart(&["--no-plots"]);
    assert!(!stdout.contains('\x1b'), "no colour in a pipe");
    insta::assert_snapshot!("quickstart_table", stdout);
    insta::assert_snapshot!("quickstart_summary", read(&dir.path().join("summary.json")));
}

#[test]
fn gpu_timeseries_has_kv_occupancy_and_tokens_in_flight() {
    let dir = tempdir();
    run_ok(&[
        "run",
        "scenarios/gpu-pool.toml",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let ts = read(&dir.path().join("timeseries.csv"));
    let mut lines = ts.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (kv, tokens, queued, in_sys) = (
        col("a100_kv_occupancy"),
        col("a100_tokens_in_flight"),
        col("a100_queued"),
        col("a100_in_system"),
    );
    assert!(col("h100_kv_occupancy") > kv);
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|x| x.parse::<f64>().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 20);
    for r in &rows {
        assert!(r[kv] > 0.0 && r[kv] < 1.0, "{r:?}");
        assert!(r[queued] <= r[in_sys]);
        // Each running sequence holds at least its prompt's KV (at least one token).
        assert!(r[tokens] >= r[in_sys] - r[queued], "{r:?}");
        // The idle H100 pool holds nothing.
        assert_eq!(r[col("h100_tokens_in_flight")], 0.0);
    }
    // The time-series plot gains the KV and tokens panels (5 panels: 1,660 px high).
    let png = std::fs::read(dir.path().join("plots/timeseries.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let height = u32::from_be_bytes([png[20], png[21], png[22], png[23]]);
    assert_eq!(height, 1660);
}

#[test]
fn csv_outputs_add_up() {
    let (dir, _) = quickstart(&["--no-plots"]);
    let s: serde_json::Value =
        serde_json::from_str(&read(&dir.path().join("summary.json"))).unwrap();
    // timeseries.csv: one row per simulated minute, pool columns per pool.
    let ts = read(&dir.path().join("timeseries.csv"));
    let mut lines = ts.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(
        header,
        [
            "t_s",
            "arrivals",
            "completions",
            "failed",
            "abandoned",
            "in_flight",
            "llm-large_in_system",
            "llm-large_utilization",
            "llm-large_servers",
            "tools_in_system",
            "tools_utilization",
            "tools_servers",
            "usd",
            "llm-large_queued",
            "tools_queued",
            "rejected"
        ]
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|x| x.parse::<f64>().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 30);
    assert_eq!(rows[0][0], 60.0);
    let arrivals: f64 = rows.iter().map(|r| r[1]).sum();
    let measured: u64 = ["chat", "report"]
        .iter()
        .map(|c| s["classes"][c]["arrived"].as_u64().unwrap())
        .sum();
    assert!(arrivals >= measured as f64, "{arrivals} < {measured}");
    let spend: f64 = rows.iter().map(|r| r[12]).sum();
    assert!(spend > s["totals"]["usd_capacity"].as_f64().unwrap());
    // Waiting hops are some of the hops in the pool; with 10 servers, the rest serve.
    for r in &rows {
        assert!(r[13] <= r[6] && r[14] <= r[9], "{r:?}");
        assert!(r[6] - r[13] <= 10.0, "{r:?}");
    }
    assert!(rows.iter().any(|r| r[6] > 0.0));

    // showback.csv: the tenant rows add up to the totals.
    let sb = read(&dir.path().join("showback.csv"));
    let mut lines = sb.lines();
    assert_eq!(
        lines.next().unwrap(),
        "tenant,cost_centre,classes,workflows,completed,success_rate,tokens,usd,usd_per_outcome,usd_api,usd_api_input,usd_api_cached_input,usd_api_output"
    );
    let (mut workflows, mut completed, mut usd) = (0u64, 0u64, 0f64);
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        workflows += f[3].parse::<u64>().unwrap();
        completed += f[4].parse::<u64>().unwrap();
        usd += f[7].parse::<f64>().unwrap();
    }
    assert_eq!(workflows, measured);
    assert_eq!(completed, s["totals"]["completed"].as_u64().unwrap());
    let total = s["totals"]["usd_workflows"].as_f64().unwrap();
    assert!((usd - total).abs() < 1e-6, "{usd} vs {total}");
}

/// PNG signature, an IHDR chunk with a non-zero size, and some data.
fn assert_png(path: &Path) {
    let b = std::fs::read(path).expect("png");
    assert!(b.len() > 2_000, "{} is tiny", path.display());
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&b[12..16], b"IHDR");
    let w = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
    let h = u32::from_be_bytes([b[20], b[21], b[22], b[23]]);
    assert!(w >= 400 && h >= 300, "{}: {w}x{h}", path.display());
    assert!(b.windows(4).any(|x| x == b"IDAT") && b.ends_with(b"IEND\xaeB`\x82"));
}

/// Well-formed XML (balanced elements) whose root element is <svg>, with some text.
fn assert_svg(path: &Path) {
    let text = read(path);
    let mut stack: Vec<String> = Vec::new();
    let mut root = None;
    let mut rest = text.as_str();
    let mut texts = 0;
    while let Some(i) = rest.find('<') {
        rest = &rest[i..];
        if rest.starts_with("<?") || rest.starts_with("<!--") {
            let end = if rest.starts_with("<?") { "?>" } else { "-->" };
            let j = rest.find(end).expect("unterminated declaration");
            rest = &rest[j + end.len()..];
            continue;
        }
        let j = rest.find('>').expect("unterminated tag");
        let tag = &rest[1..j];
        rest = &rest[j + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "{}",
                path.display()
            );
        } else {
            let name: String = tag
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '/')
                .collect();
            if name == "text" {
                texts += 1;
            }
            if root.is_none() {
                root = Some(name.clone());
            } else {
                assert!(
                    !stack.is_empty(),
                    "{}: content after the root",
                    path.display()
                );
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
    }
    assert_eq!(root.as_deref(), Some("svg"), "{}", path.display());
    assert!(stack.is_empty(), "{}: unclosed {stack:?}", path.display());
    assert!(texts >= 5, "{}: axis labels expected", path.display());
}

#[test]
fn quickstart_plots_are_valid_png_and_svg() {
    let (dir, stdout) = quickstart(&[]);
    assert!(stdout.contains("6 plots"), "{stdout}");
    for name in ["latency_cdf", "usd_per_outcome", "timeseries"] {
        let stem = dir.path().join("plots").join(name);
        assert_png(&stem.with_extension("png"));
        assert_svg(&stem.with_extension("svg"));
    }
    let svg = read(&dir.path().join("plots/latency_cdf.svg"));
    for label in [
        "latency (seconds",
        "cumulative share",
        "chat",
        "report",
        "SLO",
    ] {
        assert!(svg.contains(label), "latency_cdf.svg lacks {label:?}");
    }
}

#[test]
fn sweep_writes_json_csv_and_a_plot_with_theory() {
    let dir = tempdir();
    let out = dir.path().to_str().expect("utf-8 temp path");
    let o = run_ok(&[
        "sweep",
        "scenarios/mmc.toml",
        "--param",
        "classes.jobs.arrival.rate=2.0:3.0:0.5",
        "--set",
        "simulation.horizon=20m",
        "--replications",
        "2",
        "--out",
        out,
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "rate",
        "P(wait)",
        "theory",
        "p99 wait",
        "$/outcome",
        "sweep.json",
    ] {
        assert!(stdout.contains(needle), "{needle:?} not in:\n{stdout}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&read(&dir.path().join("sweep.json"))).expect("sweep.json");
    assert_eq!(j["grid_points"], 3);
    assert_eq!(j["seeds"], serde_json::json!([42, 43]));
    let p = &j["points"][2];
    assert_eq!(p["values"]["classes.jobs.arrival.rate"], "3.0");
    assert_eq!(p["pools"]["agents"]["theory"]["model"], "M/M/c");
    assert!((p["pools"]["agents"]["offered_rho"].as_f64().unwrap_or(0.0) - 0.75).abs() < 1e-12);
    assert!(
        p["classes"]["jobs"]["latency_p99_s"]["ci95"]
            .as_f64()
            .is_some()
    );
    let csv = read(&dir.path().join("sweep.csv"));
    assert!(csv.starts_with("index,classes.jobs.arrival.rate,kind,name,offered_rho"));
    // One pool row and one class row per point.
    assert_eq!(csv.lines().count(), 1 + 3 * 2);
    assert_png(&dir.path().join("sweep.png"));
    assert_svg(&dir.path().join("sweep.svg"));
    let svg = read(&dir.path().join("sweep.svg"));
    for label in [
        "p99 latency (seconds)",
        "p99 wait in queue",
        "theory",
        "arrival.rate",
    ] {
        assert!(svg.contains(label), "sweep.svg lacks {label:?}");
    }
}

#[test]
fn compare_bare_variant_names_must_name_a_declared_variant() {
    // Both fail while planning, before any run.
    for (scenario, name, needles) in [
        (
            "scenarios/tier-policies.toml",
            "c-cost-awar",
            &[
                "no variant named `c-cost-awar` to select",
                "a-static-frontier, b-tiered, c-cost-aware, d-least-loaded, e-rules",
            ][..],
        ),
        (
            "scenarios/mmc.toml",
            "five",
            &[
                "no variant named `five` to select",
                "declares no [variants]",
                "five:key.path=value",
            ][..],
        ),
    ] {
        let out = bin()
            .args(["compare", scenario, "--variant", name, "--no-plots"])
            .current_dir(root())
            .output()
            .expect("spawn factorysim");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.starts_with(&format!("error: {scenario}: --variant `{name}`")),
            "{stderr}"
        );
        for n in needles {
            assert!(stderr.contains(n), "{n}: {stderr}");
        }
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

#[test]
fn compare_gates_exit_3_when_a_variant_fails_them() {
    let dir = tempdir();
    let out = dir.path().to_str().expect("utf-8 temp path");
    let args = |variant: &str| {
        bin()
            .args([
                "compare",
                "scenarios/mmc.toml",
                "--variant",
                variant,
                "--replications",
                "5",
                "--gate",
                "p99=10%",
                "--gate",
                "error_rate=0",
                "--gate",
                "all_in_usd_per_outcome=30%",
                "--no-plots",
                "--out",
                out,
            ])
            .current_dir(root())
            .output()
            .expect("spawn factorysim")
    };
    // Five servers instead of four: faster, so the gates pass.
    let ok = args("five:pools.agents.servers=5");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("Promotion gates"), "{stdout}");
    // A fifth server costs 25% more capacity for the same outcomes: within 30%.
    assert!(
        stdout.contains("five: PASS (3 of 3 gates pass)"),
        "{stdout}"
    );
    assert!(stdout.contains("all_in_usd_per_outcome"), "{stdout}");
    let j: serde_json::Value =
        serde_json::from_str(&read(&dir.path().join("compare.json"))).expect("compare.json");
    assert_eq!(j["gates"][0]["variant"], "five");
    assert_eq!(j["gates"][0]["metric"], "p99");
    assert_eq!(j["gates"][0]["verdict"], "pass");
    // Three servers at rho 1.13: the queue grows, p99 fails its gate, exit code 3.
    let bad = args("three:pools.agents.servers=3");
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("three: FAIL"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("promotion gates failed: three jobs P99")
    );
}

#[test]
fn compare_bars_draws_grouped_bars() {
    use factorysim::plots::{CompareClass, compare_bars};
    let dir = tempdir();
    let variants = vec![
        "baseline".to_string(),
        "h100".to_string(),
        "spill-to-api".to_string(),
    ];
    let classes = vec![
        CompareClass {
            class: "chat".into(),
            p99_s: vec![Some(9.72), Some(6.1), Some(7.4)],
            usd_per_outcome: vec![Some(0.0076), Some(0.0091), Some(0.0113)],
        },
        CompareClass {
            class: "report".into(),
            p99_s: vec![Some(38.3), Some(24.0), None],
            usd_per_outcome: vec![Some(0.0515), Some(0.0602), Some(0.0488)],
        },
    ];
    let stem = dir.path().join("compare");
    let files = compare_bars(&stem, &variants, &classes).expect("plot");
    assert_eq!(files.len(), 2);
    assert_png(&stem.with_extension("png"));
    assert_svg(&stem.with_extension("svg"));
    let svg = read(&stem.with_extension("svg"));
    for label in [
        "baseline",
        "h100",
        "spill-to-api",
        "chat",
        "report",
        "p99 latency",
    ] {
        assert!(svg.contains(label), "compare.svg lacks {label:?}");
    }
    if let Ok(keep) = std::env::var("FACTORYSIM_KEEP_PLOTS") {
        let _ = compare_bars(&Path::new(&keep).join("compare"), &variants, &classes);
    }
}

#[test]
fn replications_are_deterministic_across_thread_counts() {
    let mut texts = Vec::new();
    for threads in ["1", "2"] {
        let dir = tempdir();
        let out = bin()
            .args([
                "run",
                "scenarios/quickstart.toml",
                "--replications",
                "4",
                "--no-plots",
                "--out",
                dir.path().to_str().unwrap(),
            ])
            .env("RAYON_NUM_THREADS", threads)
            .current_dir(root())
            .output()
            .expect("spawn");
        assert!(out.status.success());
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(table.contains("Across 4 replications"), "{table}");
        assert!(table.contains(" ± "), "{table}");
        texts.push(read(&dir.path().join("summary.json")));
    }
    assert_eq!(texts[0], texts[1], "byte-identical for 1 and 2 threads");
    let mut v: serde_json::Value = serde_json::from_str(&texts[0]).unwrap();
    let reps = v["replications"].clone();
    assert_eq!(reps["count"], 4);
    assert_eq!(reps["seeds"], serde_json::json!([42, 43, 44, 45]));
    let p99 = &reps["classes"]["chat"]["latency_s"]["p99"];
    assert_eq!(p99["n"], 4);
    assert!(p99["ci95"].as_f64().unwrap() > 0.0);
    let mean = p99["mean"].as_f64().unwrap();
    assert!(mean > 5.0 && mean < 20.0, "{mean}");
    for key in ["usd_per_outcome", "success_rate", "slo_attainment"] {
        assert!(reps["classes"]["report"][key]["mean"].is_f64(), "{key}");
    }
    assert!(reps["pools"]["llm-large"]["utilization"]["ci95"].is_f64());
    // The single-run keys are the first replication's: the plain run with seed 42.
    let (dir, _) = quickstart(&["--no-plots"]);
    let plain: serde_json::Value =
        serde_json::from_str(&read(&dir.path().join("summary.json"))).unwrap();
    v.as_object_mut().unwrap().remove("replications");
    assert_eq!(v, plain);
}

#[test]
fn workflows_csv_lists_every_workflow_with_its_outcome() {
    // Every outcome: errors fail workflows, an outage rejects them, a short patience
    // abandons them, and the run is not drained so some are in flight at the end.
    let dir = tempdir();
    let scenario = dir.path().join("outcomes.toml");
    std::fs::write(
        &scenario,
        r#"
[simulation]
horizon = "30m"
warmup = "2m"
seed = 3
[pools.llm]
servers = 2
service = { dist = "exponential", mean = "1s" }
usd_per_server_hour = 4.0
error_rate = 0.05
max_attempts = 1
outages = [{ start = "10m", duration = "2m" }]
[classes.c]
arrival = { process = "poisson", rate = 0.7 }
abandon_after = "6s"
slo = "5s"
tenant = "acme"
[[classes.c.nodes]]
id = "a"
pool = "llm"
[[classes.c.nodes]]
id = "b"
pool = "llm"
after = ["a"]
"#,
    )
    .expect("write scenario");
    let out = dir.path().join("o");
    let stdout = run_ok(&[
        "run",
        scenario.to_str().unwrap(),
        "--no-plots",
        "--workflows-csv",
        "--out",
        out.to_str().unwrap(),
    ]);
    let table = String::from_utf8_lossy(&stdout.stdout).into_owned();
    assert!(table.contains("workflows.csv"));
    let s: serde_json::Value = serde_json::from_str(&read(&out.join("summary.json"))).unwrap();
    let c = &s["classes"]["c"];
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{k}"));
    let text = read(&out.join("workflows.csv"));
    let mut rows = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        rows.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "class",
            "tenant",
            "completion",
            "latency_s",
            "usd",
            "tokens",
            "within_slo",
            "workflow",
            "outcome",
            "cause",
            "arrived_s",
            "decided_s"
        ]
    );
    use std::collections::BTreeMap;
    let mut count: BTreeMap<String, u64> = BTreeMap::new();
    let mut usd: BTreeMap<String, f64> = BTreeMap::new();
    let mut causes: BTreeMap<String, u64> = BTreeMap::new();
    let (mut within, mut completions, mut latencies) = (0u64, 0u64, Vec::new());
    let mut ids = std::collections::BTreeSet::new();
    for row in rows.records() {
        let row = row.unwrap();
        let f = |k: usize| row.get(k).unwrap();
        assert_eq!((f(0), f(1)), ("c", "acme"));
        assert!(
            ids.insert(f(7).parse::<u64>().unwrap()),
            "one row per workflow"
        );
        let outcome = f(8).to_string();
        *count.entry(outcome.clone()).or_default() += 1;
        *usd.entry(outcome.clone()).or_default() += f(4).parse::<f64>().unwrap();
        let arrived: f64 = f(10).parse().unwrap();
        assert!(
            arrived >= 120.0,
            "warm-up arrivals are not listed: {arrived}"
        );
        if outcome == "in_flight" {
            assert_eq!((f(3), f(11)), ("", ""));
        } else {
            let (latency, decided): (f64, f64) = (f(3).parse().unwrap(), f(11).parse().unwrap());
            assert!((decided - arrived - latency).abs() < 1e-6);
        }
        match outcome.as_str() {
            "completed" => {
                completions += 1;
                assert_eq!(f(2), completions.to_string());
                within += u64::from(f(6) == "true");
                latencies.push(f(3).parse::<f64>().unwrap());
            }
            "failed" | "rejected" => {
                assert_eq!((f(2), f(6)), ("", "false"));
                *causes.entry(format!("{outcome}: {}", f(9))).or_default() += 1;
            }
            _ => assert_eq!((f(2), f(6), f(9)), ("", "false", "")),
        }
    }
    for outcome in ["completed", "failed", "rejected", "abandoned", "in_flight"] {
        assert!(
            count.get(outcome).copied().unwrap_or(0) > 0,
            "{outcome}: {count:?}"
        );
        assert_eq!(count[outcome], n(outcome), "{outcome}");
    }
    assert_eq!(count.values().sum::<u64>(), n("arrived"));
    let by_cause = |kind: &str| {
        c[format!("{kind}_by_cause")]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (format!("{kind}: {k}"), v.as_u64().unwrap()))
            .collect::<Vec<_>>()
    };
    let mut expected: BTreeMap<String, u64> = by_cause("failed").into_iter().collect();
    expected.extend(by_cause("rejected"));
    assert_eq!(causes, expected);
    // The table counts each outcome in its own column and lists every cause.
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("c "))
        .unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    let shown: Vec<u64> = cells[1..7]
        .iter()
        .map(|x| x.replace(',', "").parse().unwrap())
        .collect();
    assert_eq!(
        shown,
        [
            "arrived",
            "completed",
            "in_flight",
            "failed",
            "rejected",
            "abandoned"
        ]
        .map(n)
    );
    assert!(
        table.contains("Failed and rejected workflows by cause"),
        "{table}"
    );
    for (cause, count) in &expected {
        let (outcome, cause) = cause.split_once(": ").unwrap();
        assert!(
            table.lines().any(|l| l.contains(outcome)
                && l.contains(cause)
                && l.trim_end().ends_with(&count.to_string())),
            "{outcome} {cause} {count}: {table}"
        );
    }
    // timeseries.csv counts the rejections (all after the warm-up: the outage's).
    let ts = read(&out.join("timeseries.csv"));
    let mut ts = csv::Reader::from_reader(ts.as_bytes());
    let col = ts
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "rejected")
        .unwrap();
    let rejected: u64 = ts
        .records()
        .map(|r| r.unwrap()[col].parse::<u64>().unwrap())
        .sum();
    assert_eq!(rejected, n("rejected"));
    // Dollars per outcome are the summary's: the mean per success and the waste buckets.
    let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() < 1e-9, "{what}: {a} vs {b}");
    close(
        usd["completed"] / count["completed"] as f64,
        c["usd_per_outcome"]["mean"].as_f64().unwrap(),
        "completed",
    );
    for bucket in ["failed", "rejected", "abandoned"] {
        close(
            usd[bucket],
            c["usd_waste"][bucket].as_f64().unwrap(),
            bucket,
        );
    }
    let all_in =
        c["usd_total"].as_f64().unwrap() - c["usd_waste"]["after_outcome"].as_f64().unwrap();
    close(
        usd.values().sum::<f64>(),
        all_in,
        "usd_total less after-outcome",
    );
    assert!(
        (within as f64 / n("arrived") as f64 - c["slo_attainment"].as_f64().unwrap()).abs() < 1e-12
    );
    latencies.sort_by(f64::total_cmp);
    let p99 = c["latency_s"]["p99"].as_f64().unwrap();
    let exact = exact_quantile(&latencies, 0.99).unwrap();
    assert!(p99 >= exact - 1e-9 && p99 <= exact * 1.001 + 1e-9);
}

#[test]
fn cost_is_conserved_with_an_autoscaled_pool() {
    // Booting servers are paid for and serve nothing: they land in idle capacity. Not
    // drained (workflows still running at the horizon are `usd_unfinished`).
    let text = r#"
[simulation]
horizon = "1h"
[pools.gpu]
servers = 2
usd_per_server_hour = 4.0
service = { dist = "exponential", mean = "2s" }
autoscale = { target = 2.0, min = 2, max = 20, boot = "90s", cooldown = "5m", interval = "30s" }
[classes.chat]
arrival = { process = "piecewise", step = "15m", rates = [1.0, 4.0, 6.0, 2.0] }
hops = [{ pool = "gpu" }]
"#;
    let r = factorysim::simulate(&scenario_from(text), None);
    let s = r.summary();
    assert!(
        r.timeseries.iter().any(|t| t.pools[0].servers > 2),
        "it scaled"
    );
    let t = &s.totals;
    assert!(
        (t.usd_workflows + t.usd_idle - t.usd_spent).abs() < 0.005,
        "{} + {} vs {}",
        t.usd_workflows,
        t.usd_idle,
        t.usd_spent
    );
    let p = &s.pools["gpu"];
    assert!(p.usd_idle > 0.0 && p.usd_idle < p.usd_capacity);
}

#[test]
fn prefill_heavy_interactive_class_is_warned_in_the_table_and_summary() {
    let text = r#"
[simulation]
horizon = "3m"
[pools.gpu]
servers = 1
gpu = { model = "llama-3-8b", gpu = "h100-80gb", tp = 1, prefix_caching = false }
[lanes.interactive]
[classes.rag]
arrival = { process = "poisson", rate = 1.0 }
lane = "interactive"
[[classes.rag.nodes]]
id = "call"
pool = "gpu"
input_tokens = { dist = "constant", value = 6000 }
output_tokens = { dist = "constant", value = 4 }
"#;
    let dir = tempdir();
    let path = dir.path().join("rag.toml");
    std::fs::write(&path, text).unwrap();
    let out = run_ok(&[
        "run",
        path.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
        "--no-plots",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("\nwarning: class rag on interactive lane `interactive`: prefill is "),
        "{table}"
    );
    assert!(table.contains("  pool gpu "), "{table}");
    let s: serde_json::Value =
        serde_json::from_str(&read(&dir.path().join("summary.json"))).unwrap();
    let w = s["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 1);
    let share = s["breakdown"]["by_class"]["rag"]["prefill_share"]
        .as_f64()
        .unwrap();
    assert!(share > 0.8, "{share}");
}

#[test]
fn fit_reports_skipped_rows_and_dag_problems_on_stderr() {
    let dir = tempdir();
    let path = dir.path().join("spans.jsonl");
    let span = |wf: &str, id: &str, parent: &str| {
        format!(
            r#"{{"workflow_id":"{wf}","span_id":"{id}","parent_span_id":"{parent}","start_ms":{},"input_tokens":100,"output_tokens":10}}"#,
            // Workflows a second apart (a rate needs distinct arrival times).
            (wf.as_bytes()[0] - b'a') as usize * 1000 + id.len() * 100
        )
    };
    let lines = [
        span("a", "1", ""),
        span("a", "2", "nope"), // line 2: orphan
        span("b", "1", ""),
        span("b", "1", ""), // line 4: duplicate id
        span("c", "x", "y"),
        span("c", "y", "x"),               // a cycle
        "{\"workflow_id\": 7".to_string(), // line 7: does not parse
    ];
    std::fs::write(&path, lines.join("\n")).unwrap_or_else(|e| panic!("{e}"));
    let file = path.to_str().unwrap_or_default();
    // Skipping, fragment on stdout: the counts still come on stderr.
    let out = run_ok(&["fit", file, "--skip-bad-rows"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "note: {file}: 6 spans read, 3 workflows; 1 bad rows skipped; 1 orphan spans, 1 duplicate span ids, 1 cycles"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("note: first skipped: {file}:7:")),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("[classes.default]"));
    // A request trace too.
    let csv = dir.path().join("r.csv");
    std::fs::write(
        &csv,
        "arrived_at,num_prefill_tokens,num_decode_tokens\n0,10,1\n1,x,1\n2,10,1\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let csv = csv.to_str().unwrap_or_default();
    let out = run_ok(&["fit", csv, "--skip-bad-rows"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("note: {csv}: 2 rows read; 1 bad rows skipped")),
        "{stderr}"
    );
    // Strict: the first problem in the file (the orphan on line 2), not the bad row on
    // line 7 nor the duplicate on line 4.
    for verb in [&["fit"][..], &["trace", "stats"][..]] {
        let out = bin()
            .args(verb)
            .arg(file)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{file}:2: workflow `a`: orphan span `2`")),
            "{stderr}"
        );
    }
}

/// Workflows of one call each have no fan-out: `trace stats` prints `-`, not p50 0.
#[test]
fn trace_stats_prints_no_fan_out_for_single_call_workflows() {
    let dir = tempdir();
    let path = dir.path().join("single.jsonl");
    let lines: Vec<String> = (0..3)
        .map(|w| {
            format!(
                r#"{{"workflow_id":"w{w}","span_id":"s","start_ms":{},"input_tokens":100,"output_tokens":10}}"#,
                w * 1000
            )
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).expect("write spans");
    let out = String::from_utf8_lossy(&run_ok(&["trace", "stats", path.to_str().unwrap()]).stdout)
        .into_owned();
    let line = out
        .lines()
        .find(|l| l.contains("fan-out per tick"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(line.split_whitespace().last(), Some("-"), "{out}");
}

/// A grouping window of 0 spans would close every workflow after its first span:
/// refused on the command line and in a scenario, naming the option.
#[test]
fn a_zero_group_window_is_refused() {
    let spans = "traces/data/agent-spans/month-end-30m.spans.jsonl.gz";
    let out = bin()
        .args(["trace", "stats", spans, "--group-window", "0"])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--group-window"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = bin()
        .args([
            "check",
            "scenarios/span-replay.toml",
            "--set",
            "classes.chat.arrival.group_window=0",
        ])
        .output()
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("group_window: expected at least 1 span"),
        "{stderr}"
    );
}

/// `run --spans FILE.gz` writes gzip (the readers detect it by magic bytes), holding
/// the same lines as the plain log of the same run.
#[test]
fn span_log_named_gz_is_gzip_with_the_same_lines() {
    let dir = tempdir();
    let (plain, gz) = (dir.path().join("s.jsonl"), dir.path().join("s.jsonl.gz"));
    for path in [&plain, &gz] {
        run_ok(&[
            "run",
            "scenarios/quickstart.toml",
            "--no-plots",
            "--out",
            dir.path().join("o").to_str().unwrap(),
            "--spans",
            path.to_str().unwrap(),
        ]);
    }
    let bytes = std::fs::read(&gz).expect("read gz");
    assert_eq!(bytes[..2], [0x1f, 0x8b], "not gzip");
    let plain_text = read(&plain);
    assert!(plain_text.lines().count() > 100);
    assert!(
        bytes.len() * 3 < plain_text.len(),
        "gzip should shrink JSONL"
    );
    let stats = |p: &Path| {
        String::from_utf8_lossy(&run_ok(&["trace", "stats", p.to_str().unwrap()]).stdout)
            .into_owned()
    };
    let (a, b) = (stats(&plain), stats(&gz));
    assert!(a.contains("workflows"), "{a}");
    assert_eq!(
        a.replace("s.jsonl.gz", "s.jsonl"),
        b.replace("s.jsonl.gz", "s.jsonl")
    );
}

/// A run with model errors, tool failures and aborted timeouts writes how each call
/// ended (`status`), and `trace stats` counts them: exactly the summary's errors,
/// failures and aborts.
#[test]
fn span_log_status_counts_are_the_summarys_errors_failures_and_timeouts() {
    let dir = tempdir();
    let scenario = dir.path().join("failing.toml");
    std::fs::write(
        &scenario,
        r#"
[simulation]
horizon = "30m"
drain = true
seed = 5
[pools.llm]
servers = 50
service = { dist = "constant", value = "1s" }
error_rate = 0.2
max_attempts = 3
[pools.slow]
servers = 50
service = { dist = "exponential", mean = "1s" }
on_timeout = "abort"
max_attempts = 2
[tools.api]
latency = { dist = "constant", value = "1s" }
failure_probability = 0.3
retries = 1
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
[[classes.c.nodes]]
id = "think"
pool = "llm"
[[classes.c.nodes]]
id = "call"
kind = "tool"
tool = "api"
after = ["think"]
[[classes.c.nodes]]
id = "check"
pool = "slow"
after = ["call"]
timeout = "2s"
"#,
    )
    .expect("write scenario");
    let (out, spans) = (dir.path().join("o"), dir.path().join("s.jsonl"));
    let run_writing_spans_to = |path: &std::path::Path| {
        run_ok(&[
            "run",
            scenario.to_str().unwrap(),
            "--no-plots",
            "--out",
            out.to_str().unwrap(),
            "--spans",
            path.to_str().unwrap(),
        ])
    };
    run_writing_spans_to(&spans);
    let v: serde_json::Value =
        serde_json::from_str(&read(&out.join("summary.json"))).expect("valid JSON");
    let n = |p: &str| v.pointer(p).and_then(|x| x.as_u64()).expect(p);
    let errors = n("/pools/llm/errors") + n("/tools/api/failures");
    let timeouts = n("/pools/slow/aborted");
    assert!(errors > 500 && timeouts > 100, "{errors} {timeouts}");
    assert_eq!(n("/pools/slow/errors"), 0);
    let text = read(&spans);
    let count = |s: &str| text.matches(&format!("\"status\":\"{s}\"")).count() as u64;
    assert_eq!(
        (count("error"), count("timeout"), count("lost")),
        (errors, timeouts, 0)
    );
    assert_eq!(text.matches("\"status\"").count() as u64, errors + timeouts);
    let stats =
        String::from_utf8_lossy(&run_ok(&["trace", "stats", spans.to_str().unwrap()]).stdout)
            .into_owned();
    let row = stats
        .lines()
        .find(|l| l.contains("error / timeout / lost"))
        .unwrap_or_else(|| panic!("{stats}"));
    assert!(
        row.contains(&format!(" {errors} (")) && row.contains(&format!("/ {timeouts} (")),
        "{row}"
    );
    // The same run exported as OTLP (`*.otlp.json`) reads back to the same statistics.
    let otlp = dir.path().join("s.otlp.json");
    run_writing_spans_to(&otlp);
    let first = read(&otlp)
        .lines()
        .next()
        .map(str::to_string)
        .unwrap_or_default();
    assert!(first.starts_with("{\"resourceSpans\""), "{first}");
    let otlp_stats =
        String::from_utf8_lossy(&run_ok(&["trace", "stats", otlp.to_str().unwrap()]).stdout)
            .into_owned();
    let body = |t: &str| t.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&otlp_stats), body(&stats));
}

/// A reader that goes away (`factorysim run ... | head -1`) is not a crash: no panic,
/// success, and the output files are still written.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let dir = tempdir();
    let mut child = bin()
        .args([
            "run",
            "scenarios/quickstart.toml",
            "--no-plots",
            "--out",
            dir.path().to_str().unwrap(),
        ])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn factorysim");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
    assert!(dir.path().join("summary.json").exists());
}

#[test]
fn trace_input_that_would_be_lost_is_reported_or_refused() {
    let dir = tempdir();
    let trace = root().join("traces/data/azure-llm-2023/AzureLLMInferenceTrace_code.csv");
    let scenario = |horizon: &str, arrival_extra: &str| {
        let path = dir.path().join("replay.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[simulation]
horizon = "{horizon}"
[pools.p]
servers = 100
service = {{ dist = "constant", value = "10ms" }}
[classes.c]
arrival = {{ process = "trace", file = {trace:?}{arrival_extra} }}
hops = [{{ pool = "p" }}]
"#
            ),
        )
        .expect("write scenario");
        path
    };
    // A 10-minute horizon on a 57-minute trace: the rows it never reaches are said.
    let path = scenario("10m", "");
    let out = run_ok(&["check", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    let note = err
        .lines()
        .find(|l| l.contains("at or after the horizon"))
        .unwrap_or_else(|| panic!("{err}"));
    let after: u64 = note
        .split(": ")
        .nth(2)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{note}"));
    let run = run_ok(
        &[
            "run",
            path.to_str().unwrap(),
            "--no-plots",
            "--json",
            "--out",
        ]
        .into_iter()
        .chain([dir.path().join("o").to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
    let arrived = v["classes"]["c"]["arrived"].as_u64().unwrap();
    assert!(note.contains("of 8819 rows"), "{note}");
    assert_eq!(arrived + after, 8819, "{note}");
    // A billion loops on a 2-hour horizon: the passes that start within it are read
    // (the 57-minute trace's third pass starts at about 1h54m), the rest never, and it
    // is said; the run gets every row of those three passes before the horizon.
    let path = scenario("2h", ", loops = 1000000000");
    let err =
        String::from_utf8_lossy(&run_ok(&["check", path.to_str().unwrap()]).stderr).into_owned();
    assert!(
        err.contains(
            "loops = 1000000000: 3 passes start before the horizon (2h); the rest are not read"
        ),
        "{err}"
    );
    // A loop period of 1ms on a 2-hour run would read the trace 7.2 million times.
    let path = scenario("2h", ", loops = 1000000000, loop_period = \"1ms\"");
    let out = bin()
        .args(["check", path.to_str().unwrap()])
        .output()
        .expect("spawn");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("classes.c.arrival.loop_period")
            && err.contains("7200000 passes")
            && err.contains("at most 100000"),
        "{err}"
    );
    // `trace stats` and `fit` have no horizon: their --loops is bounded instead, and 0
    // is refused, with exit code 2.
    for loops in ["0", "100001"] {
        let out = bin()
            .args(["trace", "stats", trace.to_str().unwrap(), "--loops", loops])
            .output()
            .expect("spawn");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{loops}: {err}");
        assert!(err.contains("is not in 1..=100000"), "{loops}: {err}");
    }
    // compare and sweep say what loading noted too (once, not per variant or point).
    let path = scenario("10m", "");
    let out_dir = dir.path().join("cs");
    for args in [
        vec!["compare", "--variant", "more:pools.p.servers=200"],
        vec!["sweep", "--param", "pools.p.servers=100,200"],
    ] {
        let out = run_ok(
            &args
                .iter()
                .copied()
                .chain([
                    path.to_str().unwrap(),
                    "--no-plots",
                    "--out",
                    out_dir.to_str().unwrap(),
                ])
                .collect::<Vec<_>>(),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.lines()
                .filter(|l| l.contains("at or after the horizon"))
                .count(),
            1,
            "{args:?}: {err}"
        );
    }
    // A window that leaves nothing: said too.
    let path = scenario("2h", ", window_start = \"2h\"");
    let err =
        String::from_utf8_lossy(&run_ok(&["check", path.to_str().unwrap()]).stderr).into_owned();
    assert!(err.contains("no rows to replay"), "{err}");
    // A rule on a field no trace has would never match: refused, listing the fields.
    let path = scenario(
        "2h",
        ", rules = [{ when = [{ field = \"input_token\", min = 4000 }], class = \"c\" }]",
    );
    // `check` of a scenario that must be refused: its message.
    let refused = |path: &Path| {
        let out = bin()
            .args(["check", path.to_str().unwrap()])
            .output()
            .expect("spawn");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        err
    };
    let err = refused(&path);
    assert!(
        err.contains("rules[0].when[0].field")
            && err.contains("`input_token`")
            && err.contains("input_tokens"),
        "{err}"
    );
    // A span field on a request trace, likewise.
    let path = scenario(
        "2h",
        ", rules = [{ when = [{ field = \"agent_role\", equals = \"x\" }], class = \"c\" }]",
    );
    let err = refused(&path);
    assert!(
        err.contains("rows of a request trace have no field `agent_role`"),
        "{err}"
    );
    // Fitting a rate from one row cannot work: refused, nothing written.
    let one = dir.path().join("one.csv");
    std::fs::write(
        &one,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n",
    )
    .expect("write trace");
    let frag = dir.path().join("one.toml");
    let out = bin()
        .args([
            "fit",
            one.to_str().unwrap(),
            "--out",
            frag.to_str().unwrap(),
        ])
        .output()
        .expect("spawn");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("one.csv") && err.contains("at least 2 arrivals"),
        "{err}"
    );
    assert!(!frag.exists());
}

//! The factorysim command line, end to end: determinism of the written summary, the
//! shape of the output, and clear errors (exit code 2) for bad scenarios.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
fn every_verb_has_help_with_an_example() {
    for verb in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["check", "--help"],
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
}

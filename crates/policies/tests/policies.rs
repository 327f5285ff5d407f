//! Each policy, run inside the simulator, does what it says, with a check that would
//! fail if it did not.

use policies::{KvAware, Standard};
use sim_core::gpu::LlmRequest;
use sim_core::gpu::gpu_station::{LeastOutstandingTokens, ReplicaPicker, ReplicaView, RoundRobin};
use sim_core::metrics::{HopRecord, RunResult};
use sim_core::{RunOptions, Scenario, ScenarioSpec};
use std::collections::BTreeMap;

// One test binary for the crate: the capacity and routing/reliability tests live in
// their own files as modules.
#[path = "policies/capacity.rs"]
mod capacity;
#[path = "policies/routing_reliability.rs"]
mod routing_reliability;

/// The validation error of a scenario that parses but must be refused.
fn invalid(text: &str) -> sim_core::SpecError {
    let spec: ScenarioSpec = toml::from_str(text).expect("parses");
    spec.validate().expect_err("must be rejected")
}

fn scenario(text: &str) -> Scenario {
    let spec: ScenarioSpec = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
    spec.validate().unwrap_or_else(|e| panic!("{e}"))
}

fn run_logged(text: &str) -> (RunResult, Vec<HopRecord>) {
    let sc = scenario(text);
    let mut log = Vec::new();
    let r = sim_core::run(
        &sc,
        RunOptions {
            hop_log: Some(&mut log),
            policies: Some(&Standard),
            ..Default::default()
        },
    );
    (r, log)
}

const TWO_LANES: &str = r#"
[simulation]
horizon = "4h"
[lanes.interactive]
priority = 10
weight = 3.0
[lanes.batch]
priority = 0
weight = 1.0
[pools.gpu]
servers = 1
discipline = "DISCIPLINE"
service = { dist = "exponential", mean = "1s" }
[classes.chat]
arrival = { process = "poisson", rate = RATE_HI }
lane = "interactive"
slo = "5s"
hops = [{ pool = "gpu" }]
[classes.etl]
arrival = { process = "poisson", rate = RATE_LO }
lane = "batch"
slo = "10m"
hops = [{ pool = "gpu" }]
"#;

fn two_lanes(discipline: &str, hi: f64, lo: f64) -> String {
    TWO_LANES
        .replace("DISCIPLINE", discipline)
        .replace("RATE_HI", &hi.to_string())
        .replace("RATE_LO", &lo.to_string())
}

#[test]
fn strict_priority_never_serves_low_while_high_waits() {
    let (r, log) = run_logged(&two_lanes("priority", 0.6, 0.3));
    let high: Vec<&HopRecord> = log.iter().filter(|h| h.class == "chat").collect();
    let low_starts: Vec<u64> = log
        .iter()
        .filter(|h| h.class == "etl")
        .map(|h| h.started.0)
        .collect();
    assert!(high.len() > 1000 && low_starts.len() > 500);
    // A low-lane hop starting at t while a high-lane hop was waiting (submitted before t,
    // started after t) would be a violation.
    let mut violations = 0;
    for &t in &low_starts {
        violations += high
            .iter()
            .filter(|h| h.submitted.0 < t && h.started.0 > t)
            .count();
    }
    assert_eq!(violations, 0);
    // And priority did something: chat waits much less than under FIFO.
    let (fifo, _) = run_logged(&two_lanes("fifo", 0.6, 0.3));
    let wait = |r: &RunResult, c: &str| {
        let s = r.summary();
        s.classes[c].latency_s.mean.unwrap_or(0.0)
    };
    assert!(
        wait(&r, "chat") < 0.6 * wait(&fifo, "chat"),
        "{} vs {}",
        wait(&r, "chat"),
        wait(&fifo, "chat")
    );
}

#[test]
fn weighted_fair_shares_converge_to_the_weights() {
    // Both lanes overloaded on their own (offered 0.9/s each on one 1s server): the
    // server's time splits 3:1 by weight.
    let (_, log) = run_logged(&two_lanes("weighted_fair", 0.9, 0.9));
    let busy = |c: &str| -> f64 {
        log.iter()
            .filter(|h| h.class == c)
            .map(|h| (h.finished.0 - h.started.0) as f64)
            .sum()
    };
    let (hi, lo) = (busy("chat"), busy("etl"));
    let share = hi / (hi + lo);
    assert!(
        (share - 0.75).abs() < 0.02,
        "interactive share {share:.4}, expected 0.75"
    );
}

#[test]
fn earliest_deadline_first_serves_tight_slos_first() {
    let (edf, log) = run_logged(&two_lanes("earliest_deadline", 0.5, 0.4));
    let (fifo, _) = run_logged(&two_lanes("fifo", 0.5, 0.4));
    let att = |r: &RunResult| r.summary().classes["chat"].slo_attainment.unwrap_or(0.0);
    assert!(
        att(&edf) > att(&fifo) + 0.05,
        "EDF {} vs FIFO {}",
        att(&edf),
        att(&fifo)
    );
    // The order of service is the order of deadlines among waiting hops: no hop starts
    // while another waiting hop has an earlier deadline.
    let deadline = |h: &HopRecord| {
        h.submitted.0
            + if h.class == "chat" {
                5_000_000_000
            } else {
                600_000_000_000
            }
    };
    let mut violations = 0;
    for h in &log {
        violations += log
            .iter()
            .filter(|o| {
                o.submitted.0 < h.started.0
                    && o.started.0 > h.started.0
                    && deadline(o) < deadline(h)
            })
            .count();
        if violations > 0 {
            break;
        }
    }
    assert_eq!(violations, 0);
}

#[test]
fn autoscaler_follows_load_with_boot_delay_and_cooldown() {
    // One server, min 1, max 6; a load of 4 Erlangs arrives at t = 0. Ticks every 30s;
    // a new server takes 2 minutes to boot; cooldown 5 minutes.
    let text = r#"
[simulation]
horizon = "1h"
[pools.gpu]
servers = 1
usd_per_server_hour = 3.6
service = { dist = "constant", value = "2s" }
autoscale = { target = 1.0, min = 1, max = 6, boot = "2m", cooldown = "5m", interval = "30s" }
[classes.c]
arrival = { process = "poisson", rate = 2.0 }
hops = [{ pool = "gpu" }]
"#;
    let (r, _) = run_logged(text);
    let servers: Vec<(f64, u32)> = r
        .timeseries
        .iter()
        .map(|row| (row.t_s, row.pools[0].servers))
        .collect();
    // First tick at 30s asks for the max (queue is long); booted at 150s. Before that,
    // one server.
    for &(t, n) in &servers {
        if t < 150.0 {
            assert_eq!(n, 1, "at {t}s no server can be up yet");
        }
    }
    assert_eq!(
        servers.iter().find(|&&(t, _)| t == 180.0).map(|x| x.1),
        Some(6),
        "{servers:?}"
    );
    assert!(servers.iter().all(|&(_, n)| (1..=6).contains(&n)));
    // Scale-down by draining happens later, at most one change per cooldown.
    let changes: Vec<f64> = servers
        .windows(2)
        .filter(|w| w[0].1 != w[1].1)
        .map(|w| w[1].0)
        .collect();
    assert!(!changes.is_empty());
    // Paid from boot start: capacity dollars exceed running server-hours x price.
    let rep = &r.pool_reports[0];
    let running_usd = rep.capacity_server_s * 3.6 / 3600.0;
    assert!(
        rep.usd_capacity > running_usd,
        "{} vs {running_usd}",
        rep.usd_capacity
    );
    // Each boot is paid for 120s at $3.6/h = $0.12 before the server runs: the
    // difference is a whole number of boots, at least the 5 of the first scale-up.
    let boots = (rep.usd_capacity - running_usd) / 0.12;
    assert!(
        boots >= 4.99 && (boots - boots.round()).abs() < 1e-6,
        "{boots} boots"
    );
}

#[test]
fn tier_fallback_on_outage_and_429_with_retry_after() {
    // The mid tier prefers pool a; a is down from 10m to 20m, so hops fall back to b
    // (degraded). A fixed-pool class on a during the outage retries after 30s and is
    // rejected after 3 attempts.
    let text = r#"
[simulation]
horizon = "30m"
drain = true
[pools.a]
servers = 4
service = { dist = "constant", value = "1s" }
outages = [{ start = "10m", duration = "10m" }]
retry_after = "30s"
max_attempts = 3
[pools.b]
servers = 4
service = { dist = "constant", value = "1s" }
[tiers.mid]
pools = ["a", "b"]
[classes.tiered]
arrival = { process = "poisson", rate = 1.0 }
[[classes.tiered.nodes]]
id = "call"
tier = "mid"
[classes.pinned]
arrival = { process = "poisson", rate = 0.2 }
hops = [{ pool = "a" }]
"#;
    let (r, log) = run_logged(text);
    let in_outage = |t: u64| (600_000_000_000..1_200_000_000_000).contains(&t);
    for h in log.iter().filter(|h| h.class == "tiered") {
        let expected = if in_outage(h.submitted.0) { "b" } else { "a" };
        assert_eq!(h.station, expected, "hop submitted at {}", h.submitted.0);
    }
    let tiered = r.class("tiered").expect("class");
    assert!(tiered.degraded_hops > 400);
    let pinned = r.class("pinned").expect("class");
    assert!(pinned.rejected > 50);
    assert_eq!(
        pinned.rejected_by_cause.get("a down"),
        Some(&pinned.rejected)
    );
    // Retry-after honoured: a pinned workflow that arrived during the outage and still
    // completed waited at least one retry-after (30s, and up to 25% more as jitter).
    for h in log.iter().filter(|h| h.class == "pinned") {
        assert!(
            !in_outage(h.submitted.0),
            "nothing is submitted to a down pool"
        );
    }
    assert_eq!(pinned.arrived, pinned.completed + pinned.rejected);
}

#[test]
fn api_bills_shared_prefix_tokens_at_the_cached_input_price() {
    let text = r#"
[simulation]
horizon = "2m"
drain = true
[pools.api]
api = { ttft = { dist = "constant", value = "300ms" }, tpot = { dist = "constant", value = "20ms" }, usd_per_1k_input = 0.5, usd_per_1k_output = 1.5, usd_per_1k_cached_input = 0.05 }
[classes.c]
arrival = { process = "poisson", rate = 1 }
[[classes.c.nodes]]
id = "call"
pool = "api"
shared_prefix_tokens = 600
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 100 }
"#;
    // 400 fresh prompt tokens at $0.5/1k, 600 cached at $0.05/1k, 100 out at $1.5/1k.
    let (r, log) = run_logged(text);
    assert!(log.len() > 50);
    for h in &log {
        assert!((h.usd - (0.2 + 0.03 + 0.15)).abs() < 1e-12, "{}", h.usd);
    }
    // summary.json splits the API dollars the same way, per pool, class, tenant and in
    // the totals, and the parts add up to the API total to the cent.
    assert_api_split(&r, log.len() as f64, [0.2, 0.03, 0.15]);
    // Without a cached price, cached tokens cost the input price.
    let (r, log) = run_logged(&text.replace(", usd_per_1k_cached_input = 0.05", ""));
    assert!((log[0].usd - 0.65).abs() < 1e-12, "{}", log[0].usd);
    assert_api_split(&r, log.len() as f64, [0.2, 0.3, 0.15]);
}

/// `calls` calls of pool `api` by class `c` (tenant `default`), each billed `per_call`
/// (input, cached input, output dollars): the split everywhere summary.json has it.
fn assert_api_split(r: &RunResult, calls: f64, per_call: [f64; 3]) {
    let s = r.summary();
    let want = per_call.map(|x| x * calls);
    let total = want[0] + want[1] + want[2];
    let splits = [
        (
            "pool",
            &s.pools["api"].usd_api_split,
            s.pools["api"].usd_api,
        ),
        (
            "class",
            &s.classes["c"].usd_api_split,
            s.classes["c"].usd_api,
        ),
        (
            "tenant",
            &s.tenants["default"].usd_api_split,
            s.tenants["default"].usd_api,
        ),
        ("totals", &s.totals.usd_api_split, s.totals.usd_api),
    ];
    for (what, split, usd_api) in splits {
        let got = [split.input, split.cached_input, split.output];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{what}: {got:?} vs {want:?}");
        }
        assert!(
            (usd_api - total).abs() < 1e-9,
            "{what}: {usd_api} vs {total}"
        );
        assert!(
            (split.total() - usd_api).abs() < 0.005,
            "{what}: to the cent"
        );
    }
    // Every dollar the class spent is API dollars here.
    assert!((s.classes["c"].usd_total - total).abs() < 1e-9);
}

#[test]
fn api_rate_limit_answers_429_and_is_never_exceeded() {
    let text = r#"
[simulation]
horizon = "20m"
drain = true
[pools.api]
api = { ttft = { dist = "constant", value = "300ms" }, tpot = { dist = "constant", value = "20ms" }, usd_per_1k_input = 0.5, usd_per_1k_output = 1.5, rpm = 60 }
retry_after = "5s"
max_attempts = 20
[classes.c]
arrival = { process = "poisson", rate = 1.5 }
[[classes.c.nodes]]
id = "call"
pool = "api"
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 100 }
"#;
    let (r, log) = run_logged(text);
    let mut starts: Vec<u64> = log.iter().map(|h| h.submitted.0).collect();
    starts.sort();
    // In any window of 60s, at most 60 requests were admitted.
    let mut j = 0;
    for i in 0..starts.len() {
        while starts[i] - starts[j] >= 60_000_000_000 {
            j += 1;
        }
        assert!(i - j < 60, "{} requests within 60s", i - j + 1);
    }
    // Price per token, and latency = TTFT + 99 x TPOT exactly.
    let h = &log[0];
    assert!((h.usd - (0.5 + 0.15)).abs() < 1e-12);
    assert_eq!(h.finished.0 - h.started.0, 300_000_000 + 99 * 20_000_000);
    // Offered 90/min against 60/min: about a third is rejected or delayed.
    let c = &r.classes[0];
    assert!(c.rejected > 0 || c.completed < c.arrived);
}

#[test]
fn cost_aware_routing_prefers_the_cheap_pool_while_it_meets_the_slo() {
    let text = r#"
[simulation]
horizon = "2h"
[pools.cheap]
servers = 2
usd_per_server_hour = 1.0
service = { dist = "constant", value = "2s" }
[pools.fast]
servers = 20
usd_per_server_hour = 10.0
service = { dist = "constant", value = "1s" }
[tiers.any]
pools = ["fast", "cheap"]
[routing]
policy = "POLICY"
[classes.c]
arrival = { process = "poisson", rate = RATE }
slo = "10s"
[[classes.c.nodes]]
id = "call"
tier = "any"
"#;
    let go = |policy: &str, rate: f64| {
        run_logged(
            &text
                .replace("POLICY", policy)
                .replace("RATE", &rate.to_string()),
        )
    };
    // Light load: cost-aware sends everything to the cheap pool; static to the first.
    let (_, log) = go("cost_aware", 0.3);
    assert!(log.iter().all(|h| h.station == "cheap"));
    let (_, log) = go("static", 0.3);
    assert!(log.iter().all(|h| h.station == "fast"));
    // Heavy load: the cheap pool alone would blow the SLO, so part overflows to fast
    // and every workflow still meets the SLO-derived prediction bound.
    let (r, log) = go("cost_aware", 3.0);
    let on_fast = log.iter().filter(|h| h.station == "fast").count();
    assert!(on_fast > 0 && on_fast < log.len());
    assert!(r.summary().classes["c"].slo_attainment > Some(0.99));
}

const BREAKER: &str = r#"
[simulation]
horizon = "40m"
drain = true
[pools.a]
servers = 8
service = { dist = "constant", value = "500ms" }
outages = [{ start = "10m", duration = "10m" }]
BREAKER
[pools.b]
servers = 8
service = { dist = "constant", value = "500ms" }
[tiers.mid]
pools = ["a", "b"]
[classes.c]
arrival = { process = "poisson", rate = 2.0 }
[[classes.c.nodes]]
id = "call"
tier = "mid"
"#;

#[test]
fn breaker_opens_after_failures_and_probes_after_the_open_duration() {
    let (without, log_without) = run_logged(&BREAKER.replace("BREAKER", ""));
    let (with, log_with) =
        run_logged(&BREAKER.replace("BREAKER", r#"breaker = { failures = 3, open = "60s" }"#));
    // Without a breaker every hop in the outage first tries a and is refused.
    let in_outage = |t: u64| (600_000_000_000..1_200_000_000_000).contains(&t);
    let outage_hops = log_without
        .iter()
        .filter(|h| in_outage(h.submitted.0))
        .count() as u64;
    assert_eq!(without.pools[0].refusals, outage_hops);
    assert_eq!(without.pools[0].breaker_opens, 0);
    // With it: 3 refusals open it; each 60s later one probe is refused and reopens it.
    // 10 minutes of outage: 1 opening after 3 failures, then about one per minute.
    let r = &with.pools[0];
    assert!(
        (9..=11).contains(&r.breaker_opens),
        "{} opens",
        r.breaker_opens
    );
    assert_eq!(
        r.refusals,
        3 + (r.breaker_opens - 1),
        "3 to open, then one failed probe per reopening"
    );
    // After the outage the next probe succeeds and traffic returns to a within 60s.
    let back = log_with
        .iter()
        .filter(|h| h.submitted.0 >= 1_200_000_000_000 && h.station == "a")
        .map(|h| h.submitted.0)
        .min()
        .expect("traffic returns to a");
    assert!(back < 1_260_000_000_000, "{back}");
    let after = log_with
        .iter()
        .filter(|h| h.submitted.0 > 1_300_000_000_000);
    assert!(after.clone().all(|h| h.station == "a"));
}

#[test]
fn fan_out_cap_and_emergency_switch() {
    // Every coordinator asks for 24 branches; the class caps them at 10, and from 1h the
    // emergency switch caps every fan-out at 2.
    let text = r#"
[simulation]
horizon = "2h"
drain = true
[emergency]
max_fan_out = 2
from = "1h"
[pools.llm]
servers = 1000
service = { dist = "constant", value = "1s" }
[classes.c]
arrival = { process = "poisson", rate = 0.5 }
max_fan_out = 10
[[classes.c.nodes]]
id = "research"
pool = "llm"
fan_out = { count = { dist = "constant", value = 24 } }
"#;
    let (_, log) = run_logged(text);
    let mut per_wf: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    for h in &log {
        let e = per_wf.entry(h.workflow).or_insert((h.submitted.0, 0));
        e.0 = e.0.min(h.submitted.0);
        e.1 += 1;
    }
    for (start, n) in per_wf.values() {
        let expected = if *start >= 3_600_000_000_000 { 2 } else { 10 };
        assert_eq!(*n, expected, "workflow started at {start}");
    }
}

#[test]
fn routing_changes_keep_common_random_numbers() {
    // The same workflows ask for the same tokens and branch counts whichever pool their
    // hops land on (a server pool drawing service times, or an API drawing TTFT/TPOT).
    let text = r#"
[simulation]
horizon = "30m"
drain = true
[pools.gpu]
servers = 3
service = { dist = "exponential", mean = "2s" }
[pools.api]
api = { ttft = { dist = "lognormal", median = "500ms", p99 = "3s" }, tpot = { dist = "constant", value = "10ms" }, usd_per_1k_input = 0.003, usd_per_1k_output = 0.015 }
[tiers.mid]
pools = ["gpu", "api"]
[routing]
policy = "POLICY"
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
slo = "20s"
[[classes.c.nodes]]
id = "plan"
tier = "mid"
input_tokens = { dist = "uniform", low = 100, high = 2000 }
output_tokens = { dist = "uniform", low = 10, high = 500 }
[[classes.c.nodes]]
id = "research"
tier = "mid"
after = ["plan"]
fan_out = { count = { dist = "uniform", low = 1, high = 6 } }
output_tokens = { dist = "uniform", low = 10, high = 500 }
"#;
    let asks = |policy: &str| {
        let (_, log) = run_logged(&text.replace("POLICY", policy));
        let mut v: Vec<(u64, String, Option<u32>, u64, u64)> = log
            .iter()
            .map(|h| {
                (
                    h.workflow,
                    h.node.clone(),
                    h.branch,
                    h.input_tokens,
                    h.output_tokens,
                )
            })
            .collect();
        v.sort();
        let on_api = log.iter().filter(|h| h.station == "api").count();
        (v, on_api)
    };
    let (a, api_a) = asks("static");
    let (b, api_b) = asks("least_loaded");
    assert_ne!(api_a, api_b, "the policies route differently");
    assert_eq!(a, b);
}

#[test]
fn draining_an_autoscaled_pool_ends() {
    let text = r#"
[simulation]
horizon = "10m"
warmup = "2m"
drain = true
[pools.gpu]
servers = 1
service = { dist = "constant", value = "2s" }
autoscale = { target = 1.0, min = 1, max = 4, boot = "1m", cooldown = "2m", interval = "30s" }
[classes.c]
arrival = { process = "poisson", rate = 1.5 }
hops = [{ pool = "gpu" }]
"#;
    let (r, _) = run_logged(text);
    let c = &r.classes[0];
    assert_eq!(c.in_flight, 0);
    // Sampling stops once the last workflow is done: a few rows past the horizon at most.
    let last = r.timeseries.last().map(|row| row.t_s).unwrap_or(0.0);
    assert!(
        last <= r.end.as_secs_f64() + 60.0,
        "last sample {last}s, end {}",
        r.end.as_secs_f64()
    );
    // The minute holding the warm-up reset is measured like any other.
    let at_reset = r
        .timeseries
        .iter()
        .find(|row| row.t_s == 120.0)
        .expect("row at 2m");
    assert!(
        at_reset.pools[0].utilization > 0.3,
        "{:?}",
        at_reset.pools[0]
    );
}

#[test]
fn prefix_affinity_raises_the_prefix_cache_hit_rate() {
    // 4 replicas; 12 agent roles, each with a 3,000-token system prompt. Least
    // outstanding tokens scatters each role over all replicas and the small caches
    // (about 20k tokens each) evict; prefix affinity keeps each role on one replica.
    let mut text = String::from(
        r#"
[simulation]
horizon = "10m"
drain = true
[pools.gpu]
servers = 4
gpu = { model = "llama-3-8b", gpu = "l40s", memory_utilization = 0.38, picker = "PICKER" }
"#,
    );
    for i in 0..12 {
        text.push_str(&format!(
            r#"
[classes.role{i}]
arrival = {{ process = "poisson", rate = 0.4 }}
[[classes.role{i}.nodes]]
id = "answer"
pool = "gpu"
input_tokens = {{ dist = "uniform", low = 3200, high = 4000 }}
output_tokens = {{ dist = "uniform", low = 20, high = 120 }}
shared_prefix_tokens = 3000
"#
        ));
    }
    let hit_rate = |picker: &str| {
        let (r, _) = run_logged(&text.replace("PICKER", picker));
        let s = r.summary();
        let llm = s.pools["gpu"].llm.clone().expect("gpu pool");
        (
            llm.replicas.prefix_hit_rate,
            s.pools["gpu"].llm.clone().map(|l| l.ttft_s.p99),
        )
    };
    let (affinity, _) = hit_rate("prefix_affinity");
    let (least, _) = hit_rate("least_outstanding_tokens");
    let (kv, _) = hit_rate("kv_aware");
    eprintln!(
        "prefix hit rate: affinity {affinity:.3}, least-outstanding {least:.3}, kv-aware {kv:.3}"
    );
    assert!(
        affinity > least + 0.05,
        "affinity {affinity:.3} vs least-outstanding {least:.3}"
    );
    assert!(
        affinity > kv + 0.05,
        "affinity {affinity:.3} vs kv-aware {kv:.3}"
    );
}

#[test]
fn a_pool_wide_fair_queue_holds_the_weights_where_prefix_affinity_splits_the_lanes() {
    // Two lanes (weights 3:1), each with its own system prompt, both backlogged on 4
    // replicas under `weighted_fair`. Prefix affinity keeps each lane's prompt on its
    // own replicas, so per-replica fair queues see mostly one lane each and cannot
    // give chat its 3/4; one pool-wide fair queue hands out every free slot by start
    // tag, whichever replica has it.
    let text = r#"
[simulation]
seed = 11
horizon = "20m"
[lanes.small]
weight = 3.0
[lanes.large]
weight = 1.0
[pools.gpu]
servers = 4
discipline = "weighted_fair"
queue_at = "QUEUE_AT"
gpu = { model = "llama-3-8b", gpu = "h100-80gb", max_num_seqs = 4, picker = "prefix_affinity" }
[classes.chat]
arrival = { process = "poisson", rate = 24.0 }
lane = "small"
[[classes.chat.nodes]]
id = "answer"
pool = "gpu"
shared_prefix_tokens = 200
input_tokens = { dist = "lognormal", median = 400, p99 = 2000 }
output_tokens = { dist = "lognormal", median = 100, p99 = 400 }
[classes.docs]
arrival = { process = "poisson", rate = 8.0 }
lane = "large"
[[classes.docs.nodes]]
id = "summarise"
pool = "gpu"
shared_prefix_tokens = 200
input_tokens = { dist = "lognormal", median = 1200, p99 = 6000 }
output_tokens = { dist = "lognormal", median = 300, p99 = 1200 }
"#;
    // Chat's share of the prompt + output tokens served (the pool's fair-queue size).
    let chat_share = |queue_at: &str| {
        let (_, log) = run_logged(&text.replace("QUEUE_AT", queue_at));
        let tokens = |class: &str| -> f64 {
            log.iter()
                .filter(|h| h.class == class)
                .map(|h| (h.input_tokens + h.output_tokens) as f64)
                .sum()
        };
        let (chat, docs) = (tokens("chat"), tokens("docs"));
        assert!(docs > 1e6, "docs served {docs} tokens");
        chat / (chat + docs)
    };
    let (at_replica, at_pool) = (chat_share("replica"), chat_share("pool"));
    eprintln!(
        "chat token share, prefix affinity: replica queues {at_replica:.4}, pool queue {at_pool:.4}"
    );
    assert!(
        (at_pool - 0.75).abs() < 0.02,
        "pool-wide fair queue: chat share {at_pool:.4}"
    );
    assert!(
        at_replica < 0.70,
        "per-replica fair queues: chat share {at_replica:.4}"
    );
}

#[test]
fn the_lane_aware_picker_sends_high_priority_hops_where_less_stands_ahead_of_them() {
    // Chat (priority 10) and ETL (priority 0) share 4 Llama-3-8B replicas of 4 sequence
    // slots under per-replica strict priority, about 90% loaded. least_outstanding_tokens
    // sends a chat hop to the replica with the fewest tokens of any lane, though on a
    // ranked queue it would jump every waiting ETL hop; least_tokens_ahead counts only
    // what it would not overtake. Three seeds: chat's mean queue wait drops by more than
    // 10% and its p99 by more than 15% on each (measured: 0.31-0.32 s -> 0.26 s, p99
    // 1.89-1.91 s -> 1.38-1.46 s), and ETL, which overtakes nobody, pays for it.
    let text = r#"
[simulation]
seed = SEED
horizon = "30m"
drain = true
[lanes.interactive]
priority = 10
[lanes.batch]
priority = 0
[pools.gpu]
servers = 4
discipline = "DISCIPLINE"
gpu = { model = "llama-3-8b", gpu = "h100-80gb", max_num_seqs = 4, picker = "PICKER" }
[classes.chat]
arrival = { process = "poisson", rate = 3.6 }
lane = "interactive"
[[classes.chat.nodes]]
id = "answer"
pool = "gpu"
input_tokens = { dist = "lognormal", median = 600, p99 = 3000 }
output_tokens = { dist = "lognormal", median = 150, p99 = 600 }
[classes.etl]
arrival = { process = "poisson", rate = 3.0 }
lane = "batch"
[[classes.etl.nodes]]
id = "summarise"
pool = "gpu"
input_tokens = { dist = "lognormal", median = 600, p99 = 3000 }
output_tokens = { dist = "lognormal", median = 150, p99 = 600 }
"#;
    // (mean, p99) queue wait in seconds of a class's hops.
    let waits = |log: &[HopRecord], class: &str| {
        let mut w: Vec<f64> = log
            .iter()
            .filter(|h| h.class == class)
            .map(|h| (h.started - h.submitted).as_secs_f64())
            .collect();
        w.sort_by(f64::total_cmp);
        let mean = w.iter().sum::<f64>() / w.len() as f64;
        (mean, w[(w.len() * 99).div_ceil(100) - 1])
    };
    for seed in 1..=3 {
        let run = |discipline: &str, picker: &str| {
            run_logged(
                &text
                    .replace("SEED", &seed.to_string())
                    .replace("DISCIPLINE", discipline)
                    .replace("PICKER", picker),
            )
        };
        let (_, tokens) = run("priority", "least_outstanding_tokens");
        let (_, ahead) = run("priority", "least_tokens_ahead");
        let (chat_t, chat_a) = (waits(&tokens, "chat"), waits(&ahead, "chat"));
        let (etl_t, etl_a) = (waits(&tokens, "etl"), waits(&ahead, "etl"));
        eprintln!(
            "seed {seed}: chat wait mean/p99 {:.3}/{:.3} s -> {:.3}/{:.3} s, etl {:.3}/{:.3} s -> {:.3}/{:.3} s",
            chat_t.0, chat_t.1, chat_a.0, chat_a.1, etl_t.0, etl_t.1, etl_a.0, etl_a.1
        );
        assert!(
            chat_a.0 < 0.9 * chat_t.0,
            "seed {seed}: {chat_t:?} -> {chat_a:?}"
        );
        assert!(
            chat_a.1 < 0.85 * chat_t.1,
            "seed {seed}: {chat_t:?} -> {chat_a:?}"
        );
        assert!(etl_a.0 > etl_t.0, "seed {seed}: {etl_t:?} -> {etl_a:?}");
        // Under FIFO nobody overtakes anybody: the two pickers are the same picker.
        let (rt, ft) = run("fifo", "least_outstanding_tokens");
        let (ra, fa) = run("fifo", "least_tokens_ahead");
        assert_eq!(ft, fa, "seed {seed}");
        assert_eq!(format!("{:?}", rt.classes), format!("{:?}", ra.classes));
    }
    // The picker itself: fewest tokens ahead, ties to fewer outstanding tokens in all.
    let v = |ahead: u64, all: u64| ReplicaView {
        outstanding_tokens: all,
        outstanding_tokens_ahead: ahead,
        ..ReplicaView::default()
    };
    let mut p = policies::LeastTokensAhead;
    assert!(p.sees_rank());
    assert_eq!(p.pick(&[v(50, 60), v(40, 900), v(40, 500)], &request()), 2);
    assert_eq!(p.pick(&[v(10, 10), v(10, 10)], &request()), 0);
}

fn view(used: u64, capacity: u32, outstanding: u64) -> ReplicaView {
    ReplicaView {
        outstanding_tokens: outstanding,
        kv_used_blocks: used,
        kv_capacity_blocks: capacity,
        ..ReplicaView::default()
    }
}

fn request() -> LlmRequest {
    LlmRequest {
        input_tokens: 100,
        output_tokens: 10,
        shared_prefix_tokens: 0,
        prefix_group: 0,
        block_hashes: None,
        hash_block_tokens: 0,
        itl_group: None,
    }
}

#[test]
fn kv_aware_picks_the_smallest_kv_share_then_fewer_outstanding_tokens() {
    // KV shares 0.5, 0.75, 0.25, 0.25, 0.5: replicas 2 and 3 tie at a quarter, and 2
    // has fewer outstanding tokens (100 vs 500). Not replica 4 (fewest blocks used, 5,
    // but half its cache), nor 1 or 4 (no outstanding tokens).
    let views = [
        view(50, 100, 10),
        view(30, 40, 0),
        view(20, 80, 100),
        view(10, 40, 500),
        view(5, 10, 0),
    ];
    assert_eq!(KvAware.pick(&views, &request()), 2);
    assert_eq!(LeastOutstandingTokens.pick(&views, &request()), 1);
    // A full tie goes to the lowest index; an empty cache beats any use.
    assert_eq!(
        KvAware.pick(&[view(8, 16, 3), view(8, 16, 3)], &request()),
        0
    );
    assert_eq!(
        KvAware.pick(&[view(1, 1000, 0), view(0, 10, 900)], &request()),
        1
    );
}

#[test]
fn round_robin_takes_replicas_in_turn_whatever_their_load() {
    let mut rr = RoundRobin::default();
    let views = [view(0, 10, 0), view(9, 10, 5000), view(0, 10, 0)];
    let picks: Vec<usize> = (0..7).map(|_| rr.pick(&views, &request())).collect();
    assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);

    // In the simulator: the n-th request (from 0) goes to replica n mod 3, so replica
    // i serves (N + 2 - i) / 3 of N requests, the busy one as many as the idle ones.
    let text = r#"
[simulation]
horizon = "5m"
warmup = "0s"
drain = true
[pools.gpu]
servers = 3
gpu = { model = "llama-3-8b", gpu = "h100-80gb", picker = "round_robin" }
[classes.c]
arrival = { process = "poisson", rate = 2.0 }
[[classes.c.nodes]]
id = "answer"
pool = "gpu"
input_tokens = { dist = "empirical", values = [50, 4000] }
output_tokens = { dist = "empirical", values = [5, 400] }
"#;
    let (r, _) = run_logged(text);
    let n = r.classes[0].arrived;
    assert!(n > 400, "{n}");
    let s = r.summary();
    let per = &s.pools["gpu"]
        .llm
        .as_ref()
        .expect("gpu pool")
        .replicas
        .per_replica;
    let finished: Vec<u64> = per.iter().map(|p| p.finished).collect();
    assert_eq!(finished, vec![n.div_ceil(3), (n + 1) / 3, n / 3]);
}

// --- Admission and backpressure: token watermarks, shedding, degrading, tenant
// budgets, token buckets ---

/// For each hop `keep` selects, in log order: the model tokens in flight (over the
/// selected hops) just after it was admitted. A hop finishing at the same instant counts
/// as gone.
fn in_flight_after_admission(log: &[HopRecord], keep: impl Fn(&HopRecord) -> bool) -> Vec<u64> {
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    for (i, h) in log.iter().enumerate().filter(|(_, h)| keep(h)) {
        events.push((h.submitted.0, 1, i));
        events.push((h.finished.0, 0, i));
    }
    events.sort();
    let mut after = vec![0; log.len()];
    let mut now: u64 = 0;
    for (_, kind, i) in events {
        let k = log[i].input_tokens + log[i].output_tokens;
        if kind == 1 {
            now += k;
            after[i] = now;
        } else {
            now -= k;
        }
    }
    log.iter()
        .enumerate()
        .filter(|(_, h)| keep(h))
        .map(|(i, _)| after[i])
        .collect()
}

/// Model tokens in flight over the hops `keep` selects at instant `t` (submitted at or
/// before `t`, not finished by then).
fn in_flight_at(log: &[HopRecord], keep: impl Fn(&HopRecord) -> bool, t: u64) -> u64 {
    log.iter()
        .filter(|h| keep(h) && h.submitted.0 <= t && h.finished.0 > t)
        .map(|h| h.input_tokens + h.output_tokens)
        .sum()
}

fn assert_conservation(r: &RunResult) {
    for c in &r.classes {
        assert_eq!(
            c.arrived,
            c.completed + c.failed + c.rejected + c.abandoned + c.in_flight,
            "conservation for {}",
            c.name
        );
    }
}

/// One pool of 4 servers whose service time follows the tokens (200ms per 1k prompt
/// tokens + 10ms per output token: about 2.7s for the mean hop of 2,475 tokens), loaded
/// at rho 0.95: without a cap its tokens in flight often pass 17,000.
const WATERMARK: &str = r#"
[simulation]
horizon = "1h"
drain = true
[pools.mid]
servers = 4
prefill_per_1k_tokens = "200ms"
decode_per_token = "10ms"
retry_after = "2s"
max_attempts = 5
admission = { max_tokens_in_flight = 20000, watermark = 0.85, action = "ACTION" }
[classes.c]
arrival = { process = "poisson", rate = 1.4 }
[[classes.c.nodes]]
id = "call"
pool = "mid"
input_tokens = { dist = "uniform", low = 500, high = 4000 }
output_tokens = { dist = "uniform", low = 50, high = 400 }
"#;

#[test]
fn token_watermark_rejects_above_it_and_queue_holds_at_the_door() {
    const THRESHOLD: u64 = 17_000; // 0.85 x 20,000
    let cause = "429 from mid (tokens in flight)";
    // reject: tokens in flight never pass the watermark; every refusal is a 429 the
    // client backs off from, and the workflows that give up are rejected with it.
    let (r, log) = run_logged(&WATERMARK.replace("ACTION", "reject"));
    let after = in_flight_after_admission(&log, |_| true);
    let peak = after.iter().copied().max().unwrap_or(0);
    assert!(peak <= THRESHOLD, "peak {peak}");
    assert!(peak > THRESHOLD - 4_400, "the cap binds: peak {peak}");
    let s = r.summary();
    let pool = &s.pools["mid"];
    assert_eq!(pool.peak_tokens_in_flight, peak);
    assert!(pool.refusals > 100, "{} refusals", pool.refusals);
    assert_eq!(
        pool.refusals_by_cause,
        BTreeMap::from([("tokens_in_flight".to_string(), pool.refusals)])
    );
    let c = &s.classes["c"];
    // One pinned hop per workflow: every refusal is one refused attempt of the class.
    assert_eq!(
        c.refused_by_cause,
        BTreeMap::from([(cause.to_string(), pool.refusals)])
    );
    assert!(c.rejected > 0);
    assert_eq!(
        c.rejected_by_cause,
        BTreeMap::from([(cause.to_string(), c.rejected)])
    );
    // A rejected workflow was refused on each of its 5 attempts.
    assert!(pool.refusals >= 5 * c.rejected);
    assert_eq!(c.completed as usize, log.len());
    assert_eq!(c.in_flight, 0);
    assert_conservation(&r);

    // queue: nothing is refused; a hop that would take the tokens in flight over
    // 17,000 waits at the door (FIFO) until they fall: the pool never holds more, and
    // the held hops are counted.
    let (q, log) = run_logged(&WATERMARK.replace("ACTION", "queue"));
    let after = in_flight_after_admission(&log, |_| true);
    let peak = after.iter().copied().max().unwrap_or(0);
    assert!(peak <= THRESHOLD && peak > 16_000, "peak {peak}");
    let s = q.summary();
    let held = s.pools["mid"].admitted_over_watermark;
    assert!(held > 100, "{held} hops held at the door");
    assert_eq!(s.classes["c"].admitted_over_watermark, held);
    assert_eq!(s.pools["mid"].peak_tokens_in_flight, peak);
    assert_eq!(s.pools["mid"].refusals, 0);
    assert_eq!(s.classes["c"].completed, s.classes["c"].arrived);
    assert_eq!(s.classes["c"].completed as usize, log.len());
    assert_conservation(&q);
}

#[test]
fn queue_holds_hops_at_the_door_in_fifo_order() {
    // Five users start at once (t = 100s) with hops of exactly 1,000 tokens and 1s of
    // service on a pool with room for 2,000 tokens in flight under `queue`: two run at
    // a time, the others wait at the door in arrival order and enter when a hop ends.
    let text = r#"
[simulation]
horizon = "150s"
drain = true
[pools.p]
servers = 10
service = { dist = "constant", value = "1s" }
admission = { max_tokens_in_flight = 2000, action = "queue" }
[classes.c]
arrival = { process = "closed", users = 5, think = { dist = "constant", value = "100s" } }
[[classes.c.nodes]]
id = "call"
pool = "p"
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 0 }
"#;
    let (r, mut log) = run_logged(text);
    log.sort_by_key(|h| h.workflow);
    let s_ = 1_000_000_000u64;
    let at: Vec<(u64, u64)> = log
        .iter()
        .map(|h| (h.submitted.0 / s_, h.finished.0 / s_))
        .collect();
    assert_eq!(
        at,
        vec![(100, 101), (100, 101), (101, 102), (101, 102), (102, 103)]
    );
    assert!(log.iter().all(|h| h.submitted.0 % s_ == 0));
    let s = r.summary();
    assert_eq!(s.pools["p"].admitted_over_watermark, 3);
    assert_eq!(s.pools["p"].peak_tokens_in_flight, 2000);
    assert_eq!(s.classes["c"].completed, 5);
}

/// Most hops of `classes` in flight at once in the hop log (a hop finishing at t frees
/// its place before one submitted at t takes it).
fn peak_in_flight(log: &[HopRecord], classes: &[&str]) -> usize {
    let mut edges: Vec<(u64, i32)> = log
        .iter()
        .filter(|h| classes.contains(&h.class.as_str()))
        .flat_map(|h| [(h.submitted.0, 1), (h.finished.0, -1)])
        .collect();
    edges.sort();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}

#[test]
fn a_lane_concurrency_cap_holds_its_hops_at_the_door() {
    // Two classes share the lane `batch`, capped at 3 hops in flight over all pools (1s
    // each, Poisson 1.2/s per class: an M/D/3 at rho 0.8); chat, in another lane on the
    // same pools, is never held. Plenty of servers, so only the cap makes anyone wait.
    let text = r#"
[simulation]
horizon = "2000s"
drain = true
[lanes.batch]
max_in_flight = 3
[pools.p]
servers = 100
service = { dist = "constant", value = "1s" }
[pools.q]
servers = 100
service = { dist = "constant", value = "1s" }
[classes.a]
arrival = { process = "poisson", rate = 1.2 }
lane = "batch"
hops = [{ pool = "p" }]
[classes.b]
arrival = { process = "poisson", rate = 1.2 }
lane = "batch"
hops = [{ pool = "q" }]
[classes.chat]
arrival = { process = "poisson", rate = 5.0 }
hops = [{ pool = "p" }]
"#;
    let (r, log) = run_logged(text);
    assert_eq!(
        peak_in_flight(&log, &["a", "b"]),
        3,
        "the cap is reached, never passed"
    );
    assert!(peak_in_flight(&log, &["chat"]) > 5, "chat is not capped");
    let s = r.summary();
    for c in ["a", "b", "chat"] {
        assert_eq!(s.classes[c].completed, s.classes[c].arrived, "{c}");
    }
    // Chat never waits: exactly 1s each. Batch hops wait at the lane's door (their
    // latency counts the wait; M/D/3 at rho 0.8 has a mean wait near 0.5s).
    let chat = &r.classes.iter().find(|c| c.name == "chat").expect("chat");
    assert_eq!(
        chat.latency_sum_ns,
        1_000_000_000u128 * chat.completed as u128
    );
    for c in ["a", "b"] {
        let mean = s.classes[c].latency_s.mean.expect("mean");
        assert!(mean > 1.2 && mean < 2.5, "{c}: {mean}");
    }
    // No watermark, so nothing counts as over one.
    assert_eq!(s.classes["a"].admitted_over_watermark, 0);
}

#[test]
fn a_held_hops_timeout_counts_its_wait_at_the_door() {
    // As above with 10s of service and a 15s or 25s timeout, one attempt: two hops run
    // at 100-110; two are held until 110 and run to 120; the fifth is held until 120.
    // The caller's clock starts when it sends, at 100, door wait included.
    let text = |door: &str, timeout: &str| {
        format!(
            r#"
[simulation]
horizon = "150s"
drain = true
{lane}
[pools.p]
servers = 10
max_attempts = 1
service = {{ dist = "constant", value = "10s" }}
{pool}
[classes.c]
arrival = {{ process = "closed", users = 5, think = {{ dist = "constant", value = "100s" }} }}
{class_lane}
[[classes.c.nodes]]
id = "call"
pool = "p"
timeout = "{timeout}"
input_tokens = {{ dist = "constant", value = 1000 }}
output_tokens = {{ dist = "constant", value = 0 }}
"#,
            lane = if door == "lane" {
                "[lanes.l]\nadmission = { max_tokens_in_flight = 2000, action = \"queue\" }"
            } else {
                ""
            },
            pool = if door == "pool" {
                "admission = { max_tokens_in_flight = 2000, action = \"queue\" }"
            } else {
                ""
            },
            class_lane = if door == "lane" { "lane = \"l\"" } else { "" },
        )
    };
    let s_ = 1_000_000_000u64;
    for door in ["pool", "lane"] {
        // 15s: the held pair times out at 115 while running (it runs on to 120, as
        // waste); the fifth times out at 115 still at the door and never runs.
        let (r, mut log) = run_logged(&text(door, "15s"));
        log.sort_by_key(|h| (h.submitted, h.workflow));
        let at: Vec<(u64, u64)> = log
            .iter()
            .map(|h| (h.submitted.0 / s_, h.finished.0 / s_))
            .collect();
        assert_eq!(
            at,
            vec![(100, 110), (100, 110), (110, 120), (110, 120)],
            "{door}"
        );
        let c = &r.summary().classes["c"];
        assert_eq!((c.completed, c.failed), (2, 3), "{door}");
        assert_eq!(c.failed_by_cause.get("timeout at call"), Some(&3), "{door}");
        // 25s: only the fifth (held 20s, 10s of service) misses it, at 125, while it runs.
        let (r, log) = run_logged(&text(door, "25s"));
        assert_eq!(log.len(), 5, "{door}");
        let c = &r.summary().classes["c"];
        assert_eq!((c.completed, c.failed), (4, 1), "{door}");
        // 35s: everyone makes it (30s for the fifth).
        let (r, _) = run_logged(&text(door, "35s"));
        assert_eq!(r.summary().classes["c"].completed, 5, "{door}");
    }
}

#[test]
fn shed_refuses_only_the_low_priority_lane() {
    // chat (priority 10) and etl (priority 0) share a pool whose watermark is 50% of
    // 20,000 tokens. Above 10,000 etl is shed; chat goes on up to 20,000.
    let text = r#"
[simulation]
horizon = "1h"
drain = true
[lanes.interactive]
priority = 10
[lanes.batch]
priority = 0
[pools.mid]
servers = 6
prefill_per_1k_tokens = "200ms"
decode_per_token = "10ms"
retry_after = "2s"
max_attempts = 4
admission = { max_tokens_in_flight = 20000, watermark = 0.5, action = "ACTION" }
[classes.chat]
arrival = { process = "poisson", rate = 0.3 }
lane = "interactive"
[[classes.chat.nodes]]
id = "answer"
pool = "mid"
input_tokens = { dist = "uniform", low = 500, high = 1500 }
output_tokens = { dist = "uniform", low = 50, high = 150 }
[classes.etl]
arrival = { process = "poisson", rate = 2.0 }
lane = "batch"
[[classes.etl.nodes]]
id = "extract"
pool = "mid"
input_tokens = { dist = "uniform", low = 2000, high = 4000 }
output_tokens = { dist = "uniform", low = 100, high = 300 }
"#;
    let (r, log) = run_logged(&text.replace("ACTION", "shed"));
    let after = in_flight_after_admission(&log, |_| true);
    let (mut chat_above, mut chat_n) = (0, 0);
    for (h, &t) in log.iter().zip(&after) {
        if h.class == "etl" {
            assert!(t <= 10_000, "an etl hop admitted at {t} tokens in flight");
        } else {
            assert!(t <= 20_000, "a chat hop admitted at {t} tokens in flight");
            chat_n += 1;
            chat_above += usize::from(t > 10_000);
        }
    }
    // chat was served above the watermark, where etl was shed (about half its hops).
    assert!(
        chat_above * 3 > chat_n,
        "{chat_above} of {chat_n} chat hops"
    );
    let s = r.summary();
    let chat = &s.classes["chat"];
    assert!(
        chat.refused_by_cause.is_empty(),
        "{:?}",
        chat.refused_by_cause
    );
    assert_eq!((chat.rejected, chat.completed), (0, chat.arrived));
    let etl = &s.classes["etl"];
    let shed = s.pools["mid"].refusals_by_cause.get("shed").copied();
    assert!(shed.is_some_and(|n| n > 500), "{shed:?}");
    assert_eq!(
        etl.refused_by_cause,
        BTreeMap::from([("429 from mid (shed)".to_string(), shed.unwrap_or(0))])
    );
    assert!(etl.rejected > 0);
    assert_eq!(s.pools["mid"].refusals, shed.unwrap_or(0));
    assert_conservation(&r);

    // With `reject` at the same watermark chat is refused too.
    let (rj, _) = run_logged(&text.replace("ACTION", "reject"));
    let chat = &rj.summary().classes["chat"];
    assert!(
        chat.refused_by_cause
            .get("429 from mid (tokens in flight)")
            .is_some_and(|&n| n > 0),
        "{:?}",
        chat.refused_by_cause
    );
}

#[test]
fn degrade_sends_hops_above_the_watermark_to_the_named_pool() {
    let text = r#"
[simulation]
horizon = "1h"
drain = true
[pools.big]
servers = 8
prefill_per_1k_tokens = "200ms"
decode_per_token = "10ms"
admission = { max_tokens_in_flight = 12000, action = "degrade", degrade_to = "small" }
[pools.small]
servers = 8
prefill_per_1k_tokens = "50ms"
decode_per_token = "3ms"
[classes.c]
arrival = { process = "poisson", rate = 1.5 }
[[classes.c.nodes]]
id = "call"
pool = "big"
input_tokens = { dist = "uniform", low = 500, high = 4000 }
output_tokens = { dist = "uniform", low = 50, high = 400 }
"#;
    let (r, log) = run_logged(text);
    let on_big = |h: &HopRecord| h.station == "big";
    for (h, t) in log
        .iter()
        .filter(|h| on_big(h))
        .zip(in_flight_after_admission(&log, on_big))
    {
        assert!(t <= 12_000, "hop of {} admitted at {t}", h.workflow);
    }
    // Every hop on small went there because big was full for it.
    let mut degraded = 0;
    for h in log.iter().filter(|h| h.station == "small") {
        let k = h.input_tokens + h.output_tokens;
        let big_now = in_flight_at(&log, on_big, h.submitted.0);
        assert!(big_now + k > 12_000, "degraded at {big_now} + {k}");
        degraded += 1;
    }
    let s = r.summary();
    assert!(degraded > 100, "{degraded} degraded hops");
    assert_eq!(s.pools["big"].degraded_away, degraded);
    assert_eq!(s.classes["c"].degraded_hops, degraded);
    assert_eq!(s.pools["small"].hops, degraded);
    assert_eq!(s.pools["big"].refusals + s.pools["small"].refusals, 0);
    assert_eq!(s.classes["c"].completed, s.classes["c"].arrived);
    assert_conservation(&r);
}

#[test]
fn a_refused_degrade_target_falls_back_along_the_rest_of_the_chain() {
    // Tier [big, c]: big degrades hops above 12,000 tokens in flight to small, which is
    // down all run. The client then tries the rest of the chain (c), degraded, instead of
    // backing off; with c down too (minutes 20-22), nothing takes the hop and it backs
    // off (big's 30s retry-after, 10 attempts) with the degrade target's cause.
    let text = r#"
[simulation]
horizon = "1h"
drain = true
[pools.big]
servers = 8
prefill_per_1k_tokens = "200ms"
decode_per_token = "10ms"
admission = { max_tokens_in_flight = 12000, action = "degrade", degrade_to = "small" }
retry_after = "30s"
max_attempts = 10
[pools.small]
servers = 8
prefill_per_1k_tokens = "50ms"
decode_per_token = "3ms"
outages = [{ start = "0s", duration = "3h" }]
[pools.c]
servers = 8
prefill_per_1k_tokens = "50ms"
decode_per_token = "3ms"
OUTAGE
[tiers.t]
pools = ["big", "c"]
[classes.c]
arrival = { process = "poisson", rate = 1.5 }
[[classes.c.nodes]]
id = "call"
tier = "t"
input_tokens = { dist = "uniform", low = 500, high = 4000 }
output_tokens = { dist = "uniform", low = 50, high = 400 }
"#;
    let on_big = |h: &HopRecord| h.station == "big";
    for c_down in [false, true] {
        let outage = if c_down {
            r#"outages = [{ start = "20m", duration = "2m" }]"#
        } else {
            ""
        };
        let (r, log) = run_logged(&text.replace("OUTAGE", outage));
        for (h, t) in log
            .iter()
            .filter(|h| on_big(h))
            .zip(in_flight_after_admission(&log, on_big))
        {
            assert!(t <= 12_000, "hop of {} admitted at {t}", h.workflow);
        }
        // Every hop on c went there because big was full for it and small refused.
        let mut on_c = 0;
        for h in log.iter().filter(|h| h.station == "c") {
            let k = h.input_tokens + h.output_tokens;
            let big_now = in_flight_at(&log, on_big, h.submitted.0);
            assert!(big_now + k > 12_000, "fell back at {big_now} + {k}");
            on_c += 1;
        }
        let s = r.summary();
        let cs = &s.classes["c"];
        assert!(on_c > 100, "{on_c} hops on c");
        assert_eq!(cs.degraded_hops, on_c);
        assert_eq!(s.pools["big"].degraded_away, 0);
        assert_eq!(s.pools["small"].hops, 0);
        let refused: u64 = cs.refused_by_cause.values().sum();
        // small refused every hop sent to it: those that went on to c, and those that
        // found c down too (each of those an attempt nothing admitted).
        assert_eq!(s.pools["small"].refusals, on_c + refused);
        assert_eq!(s.pools["small"].refusals_by_cause["down"], on_c + refused);
        assert_eq!(s.pools["c"].refusals, refused);
        if c_down {
            assert!(refused > 20, "{refused}");
            assert_eq!(cs.refused_by_cause["small down"], refused);
        } else {
            assert_eq!(refused, 0);
        }
        assert_eq!(cs.completed, cs.arrived);
        assert_conservation(&r);
    }
}

#[test]
fn tenant_token_budget_is_never_exceeded() {
    // Tenant acme owns two classes sharing an 8,000-token budget for in-flight work;
    // beta has none. The pool has room for everyone, so only the budget refuses.
    let text = r#"
[simulation]
horizon = "1h"
drain = true
TENANTS
[pools.mid]
servers = 50
prefill_per_1k_tokens = "200ms"
decode_per_token = "10ms"
retry_after = "1s"
max_attempts = 6
[classes.a1]
arrival = { process = "poisson", rate = 1.0 }
tenant = "acme"
[[classes.a1.nodes]]
id = "call"
pool = "mid"
input_tokens = { dist = "uniform", low = 500, high = 4000 }
output_tokens = { dist = "uniform", low = 50, high = 400 }
[classes.a2]
arrival = { process = "poisson", rate = 0.5 }
tenant = "acme"
[[classes.a2.nodes]]
id = "call"
pool = "mid"
input_tokens = { dist = "uniform", low = 500, high = 4000 }
output_tokens = { dist = "uniform", low = 50, high = 400 }
[classes.b]
arrival = { process = "poisson", rate = 1.0 }
tenant = "beta"
[[classes.b.nodes]]
id = "call"
pool = "mid"
input_tokens = { dist = "uniform", low = 500, high = 4000 }
output_tokens = { dist = "uniform", low = 50, high = 400 }
"#;
    let acme = |h: &HopRecord| h.class == "a1" || h.class == "a2";
    let cause = "429 from tenant acme (token budget)";
    let (r, log) =
        run_logged(&text.replace("TENANTS", "[tenants.acme]\nmax_tokens_in_flight = 8000"));
    let peak = in_flight_after_admission(&log, acme)
        .into_iter()
        .max()
        .unwrap_or(0);
    assert!(peak <= 8_000 && peak > 8_000 - 4_400, "acme peak {peak}");
    let s = r.summary();
    let mut refused = 0;
    for c in ["a1", "a2"] {
        let cs = &s.classes[c];
        assert_eq!(cs.refused_by_cause.keys().collect::<Vec<_>>(), vec![cause]);
        refused += cs.refused_by_cause[cause];
        for cause_seen in cs.rejected_by_cause.keys() {
            assert_eq!(cause_seen, cause);
        }
    }
    assert!(refused > 100, "{refused} refused attempts");
    let b = &s.classes["b"];
    assert!(b.refused_by_cause.is_empty());
    assert_eq!(b.completed, b.arrived);
    // A tenant budget is not a pool refusal.
    assert_eq!(s.pools["mid"].refusals, 0);
    assert_conservation(&r);
    // Without the budget acme goes above 8,000 tokens in flight.
    let (_, free) = run_logged(&text.replace("TENANTS", ""));
    let free_peak = in_flight_after_admission(&free, acme)
        .into_iter()
        .max()
        .unwrap_or(0);
    assert!(free_peak > 8_000, "unbudgeted acme peak {free_peak}");
}

#[test]
fn token_bucket_admits_at_its_rate() {
    // 100 requests a second, exactly every 10ms, of exactly 1,000 tokens (800 in, 200
    // out): 100,000 tokens/s offered to a bucket of 5,000 tokens/s and burst 20,000.
    // The bucket starts full at t = 0, when the first request drains it, so it is never
    // full again and admitted(t) = 20,000 + 5,000 t - level(t). After every attempt
    // (one at least every 10ms) the level is below 1,000 + 5,000 x 0.01 = 1,050 tokens,
    // hence 20,000 + 5,000 t - 1,050 < admitted(t) <= 20,000 + 5,000 t at every t.
    for limit in [
        "[lanes.batch]\nrate_limit = { tokens_per_s = 5000, burst = 20000 }",
        "[tenants.acme]\nrate_limit = { tokens_per_s = 5000, burst = 20000 }",
    ] {
        let text = format!(
            r#"
[simulation]
horizon = "10m"
drain = true
{limit}
[pools.mid]
servers = 1000
service = {{ dist = "constant", value = "1s" }}
retry_after = "1s"
max_attempts = 3
[classes.c]
arrival = {{ process = "recorded" }}
lane = "LANE"
tenant = "acme"
hops = [{{ pool = "mid" }}]
"#
        )
        .replace(
            "LANE",
            if limit.contains("lanes") {
                "batch"
            } else {
                "default"
            },
        );
        let mut sc = scenario(&text);
        let requests: Vec<sim_core::scenario::RecordedRequest> = (0..60_000u64)
            .map(|i| sim_core::scenario::RecordedRequest {
                at: sim_core::SimTime(i * 10_000_000),
                input_tokens: 800,
                output_tokens: 200,
                block_hashes: None,
                hash_block_tokens: 0,
                graph: None,
            })
            .collect();
        sc.classes[0].arrival = sim_core::scenario::Arrival::Recorded {
            requests: std::sync::Arc::new(requests),
            stream: None,
        };
        let mut log = Vec::new();
        let r = sim_core::run(
            &sc,
            RunOptions {
                hop_log: Some(&mut log),
                policies: Some(&Standard),
                ..Default::default()
            },
        );
        let mut admitted: Vec<(u64, u64)> = log
            .iter()
            .map(|h| (h.submitted.0, h.input_tokens + h.output_tokens))
            .collect();
        admitted.sort();
        // Conformance at every admission (integer arithmetic: tokens x 1e9 against
        // burst x 1e9 + rate x t_ns).
        let mut total: u128 = 0;
        for &(t, k) in &admitted {
            total += k as u128;
            assert!(
                total * 1_000_000_000 <= 20_000 * 1_000_000_000 + 5_000 * t as u128,
                "{total} tokens admitted by {t}ns ({limit})"
            );
        }
        // Over the saturated 10 minutes: 20,000 + 5,000 x 600 = 3,020,000 tokens, within
        // the level bound of 1,050.
        let horizon = 600_000_000_000u64;
        let by_horizon: u64 = admitted
            .iter()
            .filter(|&&(t, _)| t <= horizon)
            .map(|&(_, k)| k)
            .sum();
        assert!(
            by_horizon <= 3_020_000 && by_horizon > 3_020_000 - 1_050,
            "{by_horizon} tokens admitted ({limit})"
        );
        let c = &r.classes[0];
        assert_eq!(c.completed as usize, log.len());
        assert!(c.rejected > 50_000, "{} rejected", c.rejected);
        let expected = if limit.contains("lanes") {
            "429 from lane batch (rate limit)"
        } else {
            "429 from tenant acme (rate limit)"
        };
        assert_eq!(
            c.rejected_by_cause,
            BTreeMap::from([(expected.to_string(), c.rejected)])
        );
        assert_conservation(&r);
    }
}

#[test]
fn a_bucket_429_says_when_the_bucket_will_hold_enough_tokens() {
    // Three users (closed loop, no think) send hops of exactly 1,000 tokens through a
    // bucket of 1,000 tokens/s and burst 1,000. A refused client waits exactly until
    // the bucket holds 1,000 tokens (no jitter), so the bucket pays out at every whole
    // second to whoever waited: hops start at exactly 0s, 1s, 2s, ... with no gap and
    // no two at once. The pool's own 2 attempts would reject workflows (a hop can need
    // 4 attempts); the lane's or tenant's `max_attempts = 10` rejects none.
    for limit in [
        "[lanes.l]\nrate_limit = { tokens_per_s = 1000, burst = 1000 }\nmax_attempts = 10",
        "[tenants.acme]\nrate_limit = { tokens_per_s = 1000, burst = 1000 }\nmax_attempts = 10",
    ] {
        let lane = if limit.contains("lanes") {
            "l"
        } else {
            "default"
        };
        let text = format!(
            r#"
[simulation]
horizon = "30s"
drain = true
{limit}
[pools.p]
servers = 100
service = {{ dist = "constant", value = "100ms" }}
retry_after = "1s"
max_attempts = 2
[classes.c]
arrival = {{ process = "closed", users = 3, think = {{ dist = "constant", value = "0s" }} }}
lane = "{lane}"
tenant = "acme"
[[classes.c.nodes]]
id = "call"
pool = "p"
input_tokens = {{ dist = "constant", value = 1000 }}
output_tokens = {{ dist = "constant", value = 0 }}
"#
        );
        let (r, log) = run_logged(&text);
        let mut starts: Vec<u64> = log.iter().map(|h| h.submitted.0).collect();
        starts.sort_unstable();
        let expected: Vec<u64> = (0..starts.len() as u64)
            .map(|k| k * 1_000_000_000)
            .collect();
        assert_eq!(starts, expected, "{lane}");
        assert!(starts.len() >= 30, "{}", starts.len());
        let c = r.class("c").expect("class");
        assert_eq!((c.rejected, c.completed), (0, c.arrived), "{lane}");
        let refused: u64 = c.refused_by_cause.values().sum();
        assert!(refused > 2 * 25, "{lane}: {refused}");
        assert_eq!(c.refused_by_cause.len(), 1, "{lane}");
        assert!(
            c.refused_by_cause
                .keys()
                .all(|k| k.ends_with("(rate limit)")),
            "{lane}"
        );
    }
}

#[test]
fn lane_and_tenant_429s_carry_their_own_retry_after_and_attempts() {
    // Every model hop (1,000 tokens) is over a 500-token limit of the lane (watermark)
    // or the tenant (token budget), so every workflow is rejected: after exactly 3
    // attempts (the limit's `max_attempts`, not the pool's 6), each retry after the
    // limit's 5s retry-after x [1, 1.25] (not the pool's 1s). One user, no think; a
    // zero-latency tool call marks when each workflow starts, so consecutive starts
    // are two retry waits apart: 10s to 12.5s.
    for (limit, cause) in [
        (
            "[lanes.l]\nadmission = { max_tokens_in_flight = 500 }\nretry_after = \"5s\"\nmax_attempts = 3",
            "429 from lane l (tokens in flight)",
        ),
        (
            "[tenants.acme]\nmax_tokens_in_flight = 500\nretry_after = \"5s\"\nmax_attempts = 3",
            "429 from tenant acme (token budget)",
        ),
    ] {
        let lane = if limit.contains("lanes") {
            "l"
        } else {
            "default"
        };
        let text = format!(
            r#"
[simulation]
horizon = "10m"
drain = true
{limit}
[pools.p]
servers = 10
service = {{ dist = "constant", value = "1s" }}
retry_after = "1s"
max_attempts = 6
[tools.mark]
latency = {{ dist = "constant", value = "0s" }}
[classes.c]
arrival = {{ process = "closed", users = 1, think = {{ dist = "constant", value = "0s" }} }}
lane = "{lane}"
tenant = "acme"
[[classes.c.nodes]]
id = "mark"
kind = "tool"
tool = "mark"
[[classes.c.nodes]]
id = "call"
after = ["mark"]
pool = "p"
input_tokens = {{ dist = "constant", value = 1000 }}
output_tokens = {{ dist = "constant", value = 0 }}
"#
        );
        let (r, log) = run_logged(&text);
        let c = r.class("c").expect("class");
        assert!(c.arrived > 40, "{}", c.arrived);
        assert_eq!((c.rejected, c.completed), (c.arrived, 0), "{cause}");
        assert_eq!(c.rejected_by_cause.get(cause), Some(&c.arrived), "{cause}");
        assert_eq!(
            c.refused_by_cause.get(cause),
            Some(&(3 * c.arrived)),
            "{cause}"
        );
        assert!(log.iter().all(|h| h.station == "mark"));
        let starts: Vec<u64> = log.iter().map(|h| h.submitted.0).collect();
        for w in starts.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                (10_000_000_000..=12_500_000_000).contains(&gap),
                "{cause}: {gap}ns between workflows"
            );
        }
    }
}

#[test]
fn admission_keys_are_validated() {
    let base = r#"
[pools.a]
servers = 1
service = { dist = "constant", value = "1s" }
POOL
[pools.b]
servers = 1
service = { dist = "constant", value = "1s" }
[lanes.batch]
LANE
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
lane = "batch"
tenant = "acme"
hops = [{ pool = "a" }]
EXTRA
"#;
    let check = |pool: &str, lane: &str, extra: &str| {
        let text = base
            .replace("POOL", pool)
            .replace("LANE", lane)
            .replace("EXTRA", extra);
        let spec: ScenarioSpec = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        spec.validate().err().map(|e| e.key)
    };
    let key = |k: &str| Some(k.to_string());
    assert_eq!(check("", "", ""), None);
    assert_eq!(
        check(
            r#"admission = { max_tokens_in_flight = 100, watermark = 0.8, action = "degrade", degrade_to = "b" }"#,
            r#"admission = { max_tokens_in_flight = 100, action = "degrade", degrade_to = "a" }"#,
            "[tenants.acme]\nmax_tokens_in_flight = 10\nrate_limit = { tokens_per_s = 0.5, burst = 1 }"
        ),
        key("lanes.batch.admission.degrade_to"),
        "a lane may not degrade to a pool that degrades in turn"
    );
    assert_eq!(
        check(
            r#"admission = { max_tokens_in_flight = 100, watermark = 1.5 }"#,
            "",
            ""
        ),
        key("pools.a.admission.watermark")
    );
    assert_eq!(
        check(
            r#"admission = { max_tokens_in_flight = 100, action = "degrade" }"#,
            "",
            ""
        ),
        key("pools.a.admission.degrade_to")
    );
    assert_eq!(
        check(
            r#"admission = { max_tokens_in_flight = 100, action = "reject", degrade_to = "b" }"#,
            "",
            ""
        ),
        key("pools.a.admission.degrade_to")
    );
    assert_eq!(
        check(
            r#"admission = { max_tokens_in_flight = 100, action = "degrade", degrade_to = "nope" }"#,
            "",
            ""
        ),
        key("pools.a.admission.degrade_to")
    );
    assert_eq!(
        check(
            "",
            r#"admission = { max_tokens_in_flight = 100, action = "shed" }"#,
            ""
        ),
        key("lanes.batch.admission.action")
    );
    assert_eq!(
        check("", "rate_limit = { tokens_per_s = 0, burst = 10 }", ""),
        key("lanes.batch.rate_limit.tokens_per_s")
    );
    assert_eq!(
        check("", "", "[tenants.other]\nmax_tokens_in_flight = 10"),
        key("tenants.other")
    );
    assert_eq!(
        check("", "", "[tenants.acme]\nmax_tokens_in_flight = 0"),
        key("tenants.acme.max_tokens_in_flight")
    );
    assert_eq!(
        check("", "retry_after = \"0s\"", ""),
        key("lanes.batch.retry_after")
    );
    assert_eq!(
        check("", "", "[tenants.acme]\nmax_attempts = 0"),
        key("tenants.acme.max_attempts")
    );
    assert_eq!(
        check("", "max_attempts = 0", ""),
        key("lanes.batch.max_attempts")
    );
    assert_eq!(
        check("", "", "[tenants.acme]\nretry_after = \"0s\""),
        key("tenants.acme.retry_after")
    );
    assert_eq!(
        check(
            "",
            "retry_after = \"3s\"\nmax_attempts = 2",
            "[tenants.acme]\nretry_after = \"1s\"\nmax_attempts = 9"
        ),
        None
    );
    let e = toml::from_str::<ScenarioSpec>(
        &base
            .replace("POOL", "")
            .replace("LANE", "retry_afterr = \"3s\"")
            .replace("EXTRA", ""),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("unknown field `retry_afterr`"), "{e}");
    // An unknown action is a parse error naming the choices.
    let text = base
        .replace(
            "POOL",
            r#"admission = { max_tokens_in_flight = 100, action = "drop" }"#,
        )
        .replace("LANE", "")
        .replace("EXTRA", "");
    let e = toml::from_str::<ScenarioSpec>(&text)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("queue") && e.contains("shed"), "{e}");
}

#[test]
fn lane_watermark_counts_the_lane_over_every_pool() {
    // The batch lane's two classes use pools a and b; its watermark caps their tokens in
    // flight together. chat (default lane) shares pool a and is never refused.
    let text = r#"
[simulation]
horizon = "1h"
drain = true
[lanes.batch]
admission = { max_tokens_in_flight = 10000, ACTION }
[pools.a]
servers = 20
prefill_per_1k_tokens = "200ms"
decode_per_token = "10ms"
[pools.b]
servers = 20
prefill_per_1k_tokens = "200ms"
decode_per_token = "10ms"
[pools.c]
servers = 20
prefill_per_1k_tokens = "50ms"
decode_per_token = "3ms"
[classes.etl1]
arrival = { process = "poisson", rate = 1.0 }
lane = "batch"
[[classes.etl1.nodes]]
id = "call"
pool = "a"
input_tokens = { dist = "uniform", low = 500, high = 4000 }
output_tokens = { dist = "uniform", low = 50, high = 400 }
[classes.etl2]
arrival = { process = "poisson", rate = 1.0 }
lane = "batch"
[[classes.etl2.nodes]]
id = "call"
pool = "b"
input_tokens = { dist = "uniform", low = 500, high = 4000 }
output_tokens = { dist = "uniform", low = 50, high = 400 }
[classes.chat]
arrival = { process = "poisson", rate = 1.0 }
[[classes.chat.nodes]]
id = "call"
pool = "a"
input_tokens = { dist = "uniform", low = 500, high = 4000 }
output_tokens = { dist = "uniform", low = 50, high = 400 }
"#;
    let batch = |h: &HopRecord| h.class.starts_with("etl");
    let (r, log) = run_logged(&text.replace("ACTION", r#"action = "reject""#));
    let peak = in_flight_after_admission(&log, batch)
        .into_iter()
        .max()
        .unwrap_or(0);
    assert!(peak <= 10_000 && peak > 10_000 - 4_400, "batch peak {peak}");
    let s = r.summary();
    let cause = "429 from lane batch (tokens in flight)";
    let refused: u64 = ["etl1", "etl2"]
        .iter()
        .map(|c| {
            s.classes[*c]
                .refused_by_cause
                .get(cause)
                .copied()
                .unwrap_or(0)
        })
        .sum();
    assert!(refused > 100, "{refused}");
    assert!(s.classes["chat"].refused_by_cause.is_empty());
    assert_eq!(s.pools["a"].refusals + s.pools["b"].refusals, 0);
    assert_conservation(&r);

    // degrade: above the watermark batch hops go to c; the lane's tokens on c still
    // count, so a hop reaches a or b only while the whole lane is below 10,000.
    let (r, log) = run_logged(&text.replace("ACTION", r#"action = "degrade", degrade_to = "c""#));
    let after = in_flight_after_admission(&log, batch);
    let mut on_c = 0;
    for (h, &t) in log.iter().filter(|h| batch(h)).zip(&after) {
        if h.station == "c" {
            let k = h.input_tokens + h.output_tokens;
            assert!(t > 10_000, "degraded at {} + {k}", t - k);
            on_c += 1;
        } else {
            assert!(t <= 10_000, "admitted to {} at {t}", h.station);
        }
    }
    let s = r.summary();
    assert!(on_c > 100, "{on_c} degraded");
    let degraded: u64 = ["etl1", "etl2"]
        .iter()
        .map(|c| s.classes[*c].degraded_hops)
        .sum();
    assert_eq!(degraded, on_c);
    assert_eq!(s.pools["c"].hops, on_c);
    assert_eq!(s.classes["chat"].degraded_hops, 0);
    assert_conservation(&r);

    // queue: nothing refused or moved; a batch hop that would take the lane above
    // 10,000 waits at the lane's door until it fits: the lane never passes 10,000, and
    // the held hops are counted.
    let (r, log) = run_logged(&text.replace("ACTION", r#"action = "queue""#));
    let peak = in_flight_after_admission(&log, batch)
        .into_iter()
        .max()
        .unwrap_or(0);
    assert!(peak <= 10_000 && peak > 9_000, "lane peak {peak}");
    let s = r.summary();
    let held: u64 = ["etl1", "etl2"]
        .iter()
        .map(|c| s.classes[*c].admitted_over_watermark)
        .sum();
    assert!(held > 100, "{held} held at the lane's door");
    assert_eq!(s.classes["chat"].admitted_over_watermark, 0);
    assert_eq!(s.pools["c"].hops, 0);
    for c in s.classes.values() {
        assert!(c.refused_by_cause.is_empty());
        assert_eq!(c.completed, c.arrived);
    }
}

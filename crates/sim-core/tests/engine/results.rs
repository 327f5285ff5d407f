//! Results (issue 7): the per-hop breakdown against the hop log, the prefill-share
//! warning, the over-tiered waste bucket and cost conservation with it.

use super::scenario;
use sim_core::metrics::{HopRecord, RunResult};
use sim_core::{RunOptions, Scenario, run};

fn run_logged(text: &str) -> (Scenario, RunResult, Vec<HopRecord>) {
    let sc = scenario(text);
    let mut log = Vec::new();
    let r = run(
        &sc,
        RunOptions {
            hop_log: Some(&mut log),
            ..Default::default()
        },
    );
    (sc, r, log)
}

/// Two classes on two lanes and two tenants, pinned and tiered nodes, a tool, an
/// escalation and a warm-up.
const MIXED: &str = r#"
[simulation]
seed = 7
horizon = "20m"
warmup = "3m"
[pools.small]
servers = 2
usd_per_server_hour = 1.0
service = { dist = "exponential", mean = "400ms" }
[pools.big]
servers = 2
usd_per_server_hour = 6.0
service = { dist = "exponential", mean = "300ms" }
[pools.frontier]
servers = 1
usd_per_server_hour = 20.0
service = { dist = "constant", value = "500ms" }
[tools.search]
latency = { dist = "exponential", mean = "200ms" }
concurrency = 2
[lanes.interactive]
priority = 10
[lanes.batch]
[tiers.mid]
pools = ["small", "big"]
[routing]
policy = "least_loaded"
[classes.chat]
arrival = { process = "poisson", rate = 1.5 }
lane = "interactive"
tenant = "support"
[[classes.chat.nodes]]
id = "plan"
tier = "mid"
escalate = { probability = 0.2, pool = "frontier" }
[[classes.chat.nodes]]
id = "look"
kind = "tool"
tool = "search"
after = ["plan"]
[[classes.chat.nodes]]
id = "answer"
pool = "small"
after = ["look"]
[classes.report]
arrival = { process = "poisson", rate = 0.5 }
lane = "batch"
tenant = "finance"
[[classes.report.nodes]]
id = "outline"
tier = "mid"
[[classes.report.nodes]]
id = "draft"
pool = "big"
after = ["outline"]
"#;

#[test]
fn breakdown_counts_and_waits_agree_with_the_hop_log() {
    let (sc, r, log) = run_logged(MIXED);
    let s = r.summary();
    let b = &s.breakdown;
    let warm = sc.warmup.as_nanos();
    let measured: Vec<&HopRecord> = log.iter().filter(|h| h.submitted.0 >= warm).collect();
    let model = |f: &dyn Fn(&HopRecord) -> bool| {
        measured.iter().filter(|h| h.kind != "tool" && f(h)).count() as u64
    };
    let model_hops = model(&|_| true);
    assert!(model_hops > 1000, "{model_hops}");
    // Every grouping splits the same model hops.
    for (what, groups) in [
        ("class", &b.by_class),
        ("lane", &b.by_lane),
        ("tier", &b.by_tier),
        ("pool", &b.by_pool),
        ("tenant", &b.by_tenant),
    ] {
        let sum: u64 = groups.values().map(|g| g.hops).sum();
        assert_eq!(sum, model_hops, "by_{what}");
    }
    // Per pool and per class, exactly the log's counts; and the pools' own hop counts.
    for (name, g) in &b.by_pool {
        assert_eq!(g.hops, model(&|h| h.station == *name), "pool {name}");
        assert_eq!(g.hops, s.pools[name].hops, "pool {name}");
    }
    for (class, lane, tenant) in [
        ("chat", "interactive", "support"),
        ("report", "batch", "finance"),
    ] {
        let n = model(&|h| h.class == class);
        assert_eq!(b.by_class[class].hops, n);
        assert_eq!(b.by_lane[lane].hops, n);
        assert_eq!(b.by_tenant[tenant].hops, n);
    }
    // Tiers: the tiered nodes' first tries, the pinned nodes, and the escalations.
    let escalations = model(&|h| h.kind == "escalation");
    assert!(escalations > 0);
    assert_eq!(b.by_tier["(escalation)"].hops, escalations);
    assert_eq!(
        b.by_tier["mid"].hops,
        model(&|h| h.kind == "llm" && (h.node == "plan" || h.node == "outline"))
    );
    assert_eq!(
        b.by_tier["(pinned)"].hops,
        model(&|h| h.kind == "llm" && (h.node == "answer" || h.node == "draft"))
    );
    assert!(
        !b.by_lane.contains_key("default"),
        "unused lanes are left out"
    );
    // Tool calls: by tool and in the chat groups, none in the pools.
    let calls = measured.iter().filter(|h| h.kind == "tool").count() as u64;
    assert!(calls > 0);
    assert_eq!(b.by_tool["search"].tool_calls, calls);
    assert_eq!(b.by_class["chat"].tool_calls, calls);
    assert_eq!(b.by_class["report"].tool_calls, 0);
    // Queue waits: the mean is exact, the max within the histogram's precision.
    let waits = |f: &dyn Fn(&HopRecord) -> bool| -> Vec<f64> {
        measured
            .iter()
            .filter(|h| f(h))
            .map(|h| (h.started - h.submitted).as_secs_f64())
            .collect()
    };
    for (name, g) in &b.by_pool {
        let w = waits(&|h| h.kind != "tool" && h.station == *name);
        let d = g.queue_wait_s.as_ref().expect("hops waited or not");
        let mean = w.iter().sum::<f64>() / w.len() as f64;
        let max = w.iter().copied().fold(0.0, f64::max);
        assert!((d.mean - mean).abs() < 1e-9, "{name}: {} vs {mean}", d.mean);
        assert!(d.max >= max - 1e-9 && d.max <= max * 1.001 + 1e-9, "{name}");
        assert!(d.p50 <= d.p90 && d.p90 <= d.p95 && d.p95 <= d.p99 && d.p99 <= d.p999);
    }
    let tw = waits(&|h| h.kind == "tool");
    let d = b.by_tool["search"].tool_wait_s.as_ref().unwrap();
    assert!((d.mean - tw.iter().sum::<f64>() / tw.len() as f64).abs() < 1e-9);
    // Dollars of the hops, per pool, equal the log's.
    for (name, g) in &b.by_pool {
        let usd: f64 = measured
            .iter()
            .filter(|h| h.kind != "tool" && h.station == *name)
            .map(|h| h.usd)
            .sum();
        assert!((g.usd - usd).abs() < 1e-9, "{name}");
    }
    // Abstract pools have no token timings.
    assert!(b.by_pool["small"].ttft_s.is_none() && b.by_pool["small"].prefill_share.is_none());
    // Workflow latency per lane is the class's (one class per lane).
    let lane = b.by_lane["interactive"]
        .workflow_latency_s
        .clone()
        .unwrap()
        .unwrap();
    assert_eq!(Some(lane.p99), s.classes["chat"].latency_s.p99);
    assert_eq!(lane.n, s.classes["chat"].completed);
    assert!(b.by_pool["small"].workflow_latency_s.is_none());
}

#[test]
fn a_known_queue_wait() {
    // One user at a time fans out 3 branches onto one server with a constant 1s service:
    // the branches wait 0, 1 and 2 seconds. The think time (10s) keeps workflows apart.
    let text = r#"
[simulation]
horizon = "10m"
[pools.one]
servers = 1
service = { dist = "constant", value = "1s" }
[classes.c]
arrival = { process = "closed", users = 1, think = { dist = "constant", value = "10s" } }
[[classes.c.nodes]]
id = "fan"
pool = "one"
fan_out = { count = { dist = "constant", value = 3 } }
"#;
    let (_, r, log) = run_logged(text);
    let s = r.summary();
    let g = &s.breakdown.by_pool["one"];
    let d = g.queue_wait_s.as_ref().unwrap();
    assert_eq!(g.hops, log.len() as u64);
    assert_eq!(g.hops % 3, 0);
    // 46 workflows start within 10 minutes (every 13s from 10s); the last may be cut.
    assert!(g.hops >= 3 * 45, "{}", g.hops);
    assert!((d.mean - 1.0).abs() < 1e-9, "{}", d.mean);
    assert!(
        (d.p50 - 1.0).abs() < 1e-3 && (d.max - 2.0).abs() < 2e-3,
        "{d:?}"
    );
    assert!(d.p90 > 1.99 && d.p90 < 2.003);
    assert_eq!(s.breakdown.by_class["c"].queue_wait_s.as_ref(), Some(d));
}

/// Three classes on one GPU pool: prefill-heavy on an interactive lane (warned),
/// decode-heavy on an interactive lane (not warned), prefill-heavy on a batch lane (not
/// warned: not interactive).
const GPU: &str = r#"
[simulation]
seed = 3
horizon = "5m"
drain = true
[pools.gpu]
servers = 2
gpu = { model = "llama-3-8b", gpu = "h100-80gb", tp = 1, prefix_caching = false }
[lanes.fast]
priority = 5
[lanes.interactive-low]
[lanes.bulk]
[classes.rag]
arrival = { process = "poisson", rate = 2.0 }
lane = "fast"
[[classes.rag.nodes]]
id = "call"
pool = "gpu"
input_tokens = { dist = "constant", value = 6000 }
output_tokens = { dist = "constant", value = 4 }
[classes.writer]
arrival = { process = "poisson", rate = 2.0 }
lane = "interactive-low"
[[classes.writer.nodes]]
id = "call"
pool = "gpu"
input_tokens = { dist = "constant", value = 50 }
output_tokens = { dist = "constant", value = 400 }
[classes.index]
arrival = { process = "poisson", rate = 2.0 }
lane = "bulk"
[[classes.index.nodes]]
id = "call"
pool = "gpu"
input_tokens = { dist = "constant", value = 6000 }
output_tokens = { dist = "constant", value = 4 }
"#;

#[test]
fn prefill_share_warns_only_for_prefill_heavy_interactive_classes() {
    let (_, r, _) = run_logged(GPU);
    let s = r.summary();
    let b = &s.breakdown;
    let share = |c: &str| b.by_class[c].prefill_share.unwrap();
    assert!(share("rag") > 0.55, "rag {}", share("rag"));
    assert!(share("index") > 0.55, "index {}", share("index"));
    assert!(share("writer") < 0.2, "writer {}", share("writer"));
    // The pool's share is the busy-weighted mean of the classes'.
    let busy: f64 = b.by_class.values().map(|g| g.gpu_busy_s).sum();
    let pool = &b.by_pool["gpu"];
    assert!((pool.gpu_busy_s - busy).abs() < 1e-6);
    let weighted: f64 = b
        .by_class
        .values()
        .map(|g| g.gpu_busy_s * g.prefill_share.unwrap())
        .sum::<f64>()
        / busy;
    assert!((pool.prefill_share.unwrap() - weighted).abs() < 1e-9);
    // GPU busy time charged to hops is the pool's busy time (continuous batching splits
    // each iteration among its sequences; drained, so every hop has reported).
    let pool_busy = r.pool_reports[0].busy_server_s;
    assert!(
        (busy - pool_busy).abs() < 1e-6 * pool_busy,
        "{busy} vs {pool_busy}"
    );
    // Token timings: every hop of `writer` has 399 gaps.
    let w = &b.by_class["writer"];
    assert_eq!(w.itl_s.as_ref().unwrap().n, 399 * w.llm_hops);
    assert_eq!(w.tpot_s.as_ref().unwrap().n, w.llm_hops);
    assert!(w.ttft_s.as_ref().unwrap().p50 > 0.0);
    // Exactly one warning: rag on lane `fast` (priority above default's).
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(s.warnings[0].starts_with("class rag on interactive lane `fast`: prefill is "));
    // A lane named like "interactive" counts too: make writer prefill-heavy.
    let heavy = GPU
        .replace("value = 50 }", "value = 6000 }")
        .replace("value = 400 }", "value = 4 }");
    let (_, r, _) = run_logged(&heavy);
    let w = r.summary().warnings;
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[1].starts_with("class writer on interactive lane `interactive-low`"));
}

/// Tier `mid` = a cheap pool ($0.002 per hop: 2s at $3.60/h) then a paid API ($0.0105
/// per hop: 1000 input and 500 output tokens at $0.003 / $0.015 per 1k). The cheap pool
/// is down for the first 10 minutes, so those hops fall back to the API.
const OUTAGE: &str = r#"
[simulation]
horizon = "20m"
drain = true
[pools.cheap]
servers = 1
usd_per_server_hour = 3.6
service = { dist = "constant", value = "2s" }
outages = [{ start = "0s", duration = "10m" }]
[pools.api]
api = { ttft = { dist = "constant", value = "500ms" }, tpot = { dist = "constant", value = "10ms" },
        usd_per_1k_input = 0.003, usd_per_1k_output = 0.015 }
[pools.review]
servers = 1
usd_per_server_hour = 2.0
service = { dist = "constant", value = "1s" }
[tiers.mid]
pools = ["cheap", "api"]
[classes.c]
arrival = { process = "poisson", rate = 0.1 }
[[classes.c.nodes]]
id = "draft"
tier = "mid"
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 500 }
escalate = { probability = 0.3, pool = "api" }
[[classes.c.nodes]]
id = "check"
pool = "review"
after = ["draft"]
"#;

#[test]
fn over_tiered_dollars_are_exact_for_an_outage_fallback() {
    let (_, r, log) = run_logged(OUTAGE);
    let s = r.summary();
    let c = &s.classes["c"];
    assert_eq!(c.completed, c.arrived, "drained: every workflow completes");
    let on = |pool: &str, kind: &str| {
        log.iter()
            .filter(|h| h.station == pool && h.kind == kind)
            .count()
    };
    let fallbacks = on("api", "llm");
    let escalations = on("api", "escalation");
    assert!(fallbacks > 30 && on("cheap", "llm") > 30, "{fallbacks}");
    assert!(
        escalations > 10,
        "escalations to the API are not over-tiered"
    );
    // Every fallback hop paid 0.0105 where the tier's cheapest pool expected 0.002.
    let expected = fallbacks as f64 * (0.0105 - 0.002);
    assert!(
        (c.usd_waste.over_tiered - expected).abs() < 1e-9,
        "{} vs {expected}",
        c.usd_waste.over_tiered
    );
    assert_eq!(s.totals.usd_waste_over_tiered, c.usd_waste.over_tiered);
    let g = &s.breakdown.by_pool["api"];
    assert_eq!(g.over_tiered_hops, fallbacks as u64);
    assert!((g.usd_over_tiered - expected).abs() < 1e-9);
    assert_eq!(s.breakdown.by_pool["cheap"].over_tiered_hops, 0);
    assert_eq!(s.breakdown.by_tier["(escalation)"].over_tiered_hops, 0);
    assert_eq!(c.degraded_hops, fallbacks as u64);
    // Part of the successful workflows' cost, not added to it: usd_total is unchanged.
    let success: f64 = r.classes[0].usd_per_success.iter().sum();
    assert!((c.usd_total - success).abs() < 1e-9);
    // Conservation with the bucket carved out of the successful workflows' dollars:
    // (success - over-tiered) + over-tiered + other waste + unfinished + idle = spent.
    let buckets = (success - c.usd_waste.over_tiered)
        + c.usd_waste.over_tiered
        + c.usd_waste.failed
        + c.usd_waste.abandoned
        + c.usd_waste.rejected
        + c.usd_waste.after_outcome
        + r.classes[0].usd_unfinished;
    let api: f64 = log
        .iter()
        .filter(|h| h.station == "api")
        .map(|h| h.usd)
        .sum();
    assert!((api - s.totals.usd_api).abs() < 1e-9);
    let hours = s.measured_seconds / 3600.0;
    let capacity = hours * (3.6 + 2.0);
    assert!((capacity - s.totals.usd_capacity).abs() < 1e-9);
    let left = buckets + s.totals.usd_idle;
    let right = capacity + api;
    assert!((left - right).abs() < 0.005, "{left} vs {right}");
    assert!((s.totals.usd_workflows + s.totals.usd_idle - s.totals.usd_spent).abs() < 0.005);
}

#[test]
fn offered_load_rho_per_pool() {
    // 1 workflow/s x (one 1s hop on `a` + 30% x one 2s hop on `b`): rho_a = 1 x 1 / 2 =
    // 0.5, rho_b = 0.3 x 2 / 3 = 0.2; the GPU pool has none.
    let text = r#"
[simulation]
horizon = "2h"
[pools.a]
servers = 2
service = { dist = "constant", value = "1s" }
[pools.b]
servers = 3
service = { dist = "constant", value = "2s" }
[pools.gpu]
servers = 1
gpu = { model = "llama-3-8b", gpu = "h100-80gb", tp = 1 }
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
[[classes.c.nodes]]
id = "x"
pool = "a"
escalate = { probability = 0.3, pool = "b" }
"#;
    let (_, r, _) = run_logged(text);
    let s = r.summary();
    assert!((s.pools["a"].offered_rho.unwrap() - 0.5).abs() < 1e-12);
    assert!((s.pools["b"].offered_rho.unwrap() - 0.2).abs() < 1e-12);
    assert_eq!(s.pools["gpu"].offered_rho, None);
    // The measured utilisation agrees within sampling noise (7,200 workflows).
    assert!((s.pools["a"].utilization - 0.5).abs() < 0.03);
    assert!((s.pools["b"].utilization - 0.2).abs() < 0.03);
}

#[test]
fn a_quorum_straggler_of_an_earlier_loop_run_is_charged_once() {
    // research fans out 4 branches joined by the first; verify loops back to research
    // half the time, while the slower branches of the previous run are still going.
    // Their dollars are waste (after the outcome of their run), not also the workflow's.
    let text = r#"
[simulation]
horizon = "1h"
drain = true
[pools.p]
servers = 40
usd_per_server_hour = 3.6
service = { dist = "exponential", mean = "2s" }
[pools.v]
servers = 10
usd_per_server_hour = 1.0
service = { dist = "constant", value = "100ms" }
[classes.c]
arrival = { process = "poisson", rate = 0.5 }
[[classes.c.nodes]]
id = "research"
pool = "p"
fan_out = { count = { dist = "constant", value = 4 }, quorum = 1 }
[[classes.c.nodes]]
id = "verify"
pool = "v"
after = ["research"]
loop = { to = "research", probability = 0.5, max = 3 }
"#;
    let (_, r, log) = run_logged(text);
    let s = r.summary();
    let c = &r.classes[0];
    assert_eq!(c.completed, c.arrived);
    assert!(c.loops > 500, "{}", c.loops);
    assert!(c.usd_waste_leftover > 0.0);
    // Every hop's dollars are charged exactly once: to a workflow or as waste.
    let hops: f64 = log.iter().map(|h| h.usd).sum();
    let charged = c.usd_per_success.iter().sum::<f64>() + c.usd_waste_leftover;
    assert!(
        (hops - charged).abs() < 1e-6,
        "hops {hops} vs charged {charged}"
    );
    assert!((s.totals.usd_workflows + s.totals.usd_idle - s.totals.usd_spent).abs() < 0.005);
}

#[test]
fn api_hops_report_their_drawn_ttft_tpot_and_itl() {
    // Class `fixed` calls an API with a constant 300 ms TTFT and 20 ms TPOT, 100 output
    // tokens: every call reports exactly those, 99 gaps of 20 ms each, and no queue
    // wait (an API has no concurrency limit). Class `drawn` draws its TTFT (uniform) on
    // another API: its TTFT is the call's sojourn less 49 x 10 ms, from the hop log.
    let text = r#"
[simulation]
horizon = "30m"
drain = true
[pools.api]
api = { ttft = { dist = "constant", value = "300ms" }, tpot = { dist = "constant", value = "20ms" }, usd_per_1k_input = 0.5, usd_per_1k_output = 1.5 }
[pools.api2]
api = { ttft = { dist = "uniform", low = "100ms", high = "900ms" }, tpot = { dist = "constant", value = "10ms" } }
[tiers.t]
pools = ["api"]
[classes.fixed]
arrival = { process = "poisson", rate = 0.5 }
[[classes.fixed.nodes]]
id = "call"
tier = "t"
input_tokens = { dist = "constant", value = 500 }
output_tokens = { dist = "constant", value = 100 }
[classes.drawn]
arrival = { process = "poisson", rate = 0.5 }
tenant = "other"
[[classes.drawn.nodes]]
id = "call"
pool = "api2"
output_tokens = { dist = "constant", value = 50 }
"#;
    let (_, r, log) = run_logged(text);
    let s = r.summary();
    let b = &s.breakdown;
    let calls = log.iter().filter(|h| h.station == "api").count() as u64;
    assert!(calls > 700, "{calls}");
    for g in [
        &b.by_pool["api"],
        &b.by_class["fixed"],
        &b.by_tier["t"],
        &b.by_tenant["default"],
    ] {
        assert_eq!((g.hops, g.llm_hops), (calls, calls));
        let ttft = g.ttft_s.as_ref().unwrap();
        let tpot = g.tpot_s.as_ref().unwrap();
        let itl = g.itl_s.as_ref().unwrap();
        let wait = g.queue_wait_s.as_ref().unwrap();
        assert_eq!((ttft.n, tpot.n, itl.n), (calls, calls, 99 * calls));
        assert_eq!((ttft.mean, tpot.mean, itl.mean), (0.3, 0.02, 0.02));
        for (d, v) in [(ttft, 0.3), (tpot, 0.02), (itl, 0.02)] {
            for q in [d.p50, d.p99, d.p999, d.max] {
                assert!(q >= v && q <= v * 1.001, "{q} vs {v}");
            }
        }
        assert_eq!((wait.mean, wait.max), (0.0, 0.0));
        // API time is not GPU time.
        assert_eq!((g.gpu_busy_s, g.prefill_share), (0.0, None));
    }
    // Drawn TTFTs: the breakdown's mean is the hop log's (sojourn - 49 x 10 ms), to
    // the nanosecond rounding of each draw.
    let drawn: Vec<f64> = log
        .iter()
        .filter(|h| h.station == "api2")
        .map(|h| (h.finished - h.submitted).as_secs_f64() - 0.49)
        .collect();
    let g = &b.by_pool["api2"];
    let ttft = g.ttft_s.as_ref().unwrap();
    assert_eq!(ttft.n, drawn.len() as u64);
    let mean = drawn.iter().sum::<f64>() / drawn.len() as f64;
    assert!((ttft.mean - mean).abs() < 2e-9, "{} vs {mean}", ttft.mean);
    let max = drawn.iter().copied().fold(0.0, f64::max);
    assert!(ttft.max >= max - 2e-9 && ttft.max <= max * 1.001);
    assert!(
        ttft.p50 > 0.4 && ttft.p50 < 0.6,
        "uniform 0.1-0.9 s: {}",
        ttft.p50
    );
    assert_eq!(g.itl_s.as_ref().unwrap().n, 49 * drawn.len() as u64);
    assert_eq!(g.itl_s.as_ref().unwrap().mean, 0.01);
    assert_eq!(b.by_tenant["other"].ttft_s.as_ref(), Some(ttft));
}

#[test]
fn gpu_inter_token_gaps_are_recorded_per_token() {
    // One replica with a calibrated model whose decode time does not depend on context
    // (f = 0). Request `a` (100-token prompt, 200 output tokens) arrives at 1 s and
    // decodes alone: every gap is one solo decode iteration. Request `b` (1,000-token
    // prompt, 1 output token) arrives at 3 s, mid-decode: its prefill joins one
    // iteration next to a's decode step, which is a's one longer gap. Closed loops with
    // think times of 1 s and 3 s give each class exactly one request before the horizon.
    let text = r#"
[simulation]
horizon = "5s"
drain = true
[[profiles.calibrated]]
model = "llama-3-8b"
gpu = "h100-80gb"
tp = 1
prefill_a_ms = 10.0
prefill_b_ms_per_token = 0.01
prefill_c_ms_per_token2 = 0.0
prefill_g_ms_per_extra_seq = 0.0
decode_d_ms = 20.0
decode_e_ms_per_seq = 1.0
decode_f_ms_per_context_token = 0.0
[pools.gpu]
servers = 1
gpu = { model = "llama-3-8b", gpu = "h100-80gb", tp = 1, perf = "calibrated", prefix_caching = false, decode_skipping = SKIP }
[classes.a]
arrival = { process = "closed", users = 1, think = { dist = "constant", value = "1s" } }
[[classes.a.nodes]]
id = "call"
pool = "gpu"
input_tokens = { dist = "constant", value = 100 }
output_tokens = { dist = "constant", value = 200 }
[classes.b]
arrival = { process = "closed", users = 1, think = { dist = "constant", value = "3s" } }
[[classes.b.nodes]]
id = "call"
pool = "gpu"
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 1 }
"#;
    use sim_core::gpu::IterationShape;
    let (sc, r, log) = run_logged(&text.replace("SKIP", "true"));
    let perf = sc.pools[0].gpu.as_ref().unwrap().perf.clone();
    let time = |s: IterationShape| perf.iteration_time(&s).as_nanos();
    let prefill_a = time(IterationShape {
        prefill_tokens: 100,
        prefill_seqs: 1,
        ..Default::default()
    });
    let decode = time(IterationShape {
        decode_seqs: 1,
        decode_context_tokens: 101,
        ..Default::default()
    });
    let mixed = time(IterationShape {
        prefill_tokens: 1000,
        prefill_seqs: 1,
        decode_seqs: 1,
        decode_context_tokens: 200,
        ..Default::default()
    });
    // 11 ms, 21 ms and 20 + 10 + 1 = 31 ms.
    assert_eq!(
        (prefill_a, decode, mixed),
        (11_000_000, 21_000_000, 31_000_000)
    );
    assert_eq!(log.len(), 2);
    let a = log.iter().find(|h| h.class == "a").unwrap();
    let b = log.iter().find(|h| h.class == "b").unwrap();
    assert_eq!(
        (a.submitted.0, b.submitted.0),
        (1_000_000_000, 3_000_000_000)
    );
    // b was admitted at the end of the decode iteration in progress at 3 s, and
    // finished with the mixed iteration.
    assert_eq!((b.finished - b.started).as_nanos(), mixed);
    assert_eq!(
        (a.finished - a.submitted).as_nanos(),
        prefill_a + 198 * decode + mixed
    );
    // The breakdown's cells: a's 199 gaps, 198 solo decode iterations and one mixed.
    let ci = r
        .breakdown
        .class_names
        .iter()
        .position(|n| n == "a")
        .unwrap();
    let h = &r.breakdown.by_class[ci].itl;
    assert_eq!(h.count(), 199);
    assert_eq!(h.sum_ns, (198 * decode + mixed) as u128);
    assert_eq!(h.ns.count_between(decode, decode), 198);
    assert_eq!(h.ns.count_between(decode * 11 / 10, u64::MAX), 1);
    assert!(h.ns.equivalent(h.ns.max(), mixed));
    let s = r.summary();
    let itl = s.breakdown.by_class["a"].itl_s.clone().unwrap();
    assert_eq!(itl.n, 199);
    assert!((itl.mean - (198.0 * 0.021 + 0.031) / 199.0).abs() < 1e-12);
    assert!(itl.p50 >= 0.021 && itl.p50 <= 0.021 * 1.001);
    assert!(itl.max >= 0.031 && itl.max <= 0.031 * 1.001);
    // Under the old mean-gap rule every gap would have been the TPOT (21.05 ms).
    let tpot = s.breakdown.by_class["a"].tpot_s.clone().unwrap();
    assert!(tpot.mean > 0.02105 && tpot.mean < 0.02106, "{}", tpot.mean);
    assert!(
        s.breakdown.by_class["b"].itl_s.is_none(),
        "one token, no gap"
    );
    assert_eq!(s.breakdown.by_pool["gpu"].itl_s, Some(itl.clone()));
    // Iteration by iteration (no decode skipping), the same gaps.
    let (_, plain, _) = run_logged(&text.replace("SKIP", "false"));
    assert_eq!(plain.summary().breakdown, s.breakdown);
}

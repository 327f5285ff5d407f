//! Tier routing rules, cascade escalation, budgets, and reliability (error rates,
//! error-rate circuit breakers, retries with backoff, 429 storms and tool latency
//! spikes), each checked inside the simulator with figures that would be wrong if the
//! mechanism were.

use super::{invalid, run_logged};
use sim_core::ScenarioSpec;
use sim_core::metrics::{HopRecord, HopStatus, RunResult};
use std::collections::BTreeMap;

/// Hops of each workflow, in submission order.
fn by_workflow<'a>(log: &'a [HopRecord], class: &str) -> BTreeMap<u64, Vec<&'a HopRecord>> {
    let mut m: BTreeMap<u64, Vec<&HopRecord>> = BTreeMap::new();
    for h in log.iter().filter(|h| h.class == class) {
        m.entry(h.workflow).or_default().push(h);
    }
    for v in m.values_mut() {
        v.sort_by_key(|h| (h.submitted.0, h.finished.0));
    }
    m
}

/// Whether `k` successes in `n` trials is within the 99.9% normal interval of
/// Binomial(n, p).
fn within_binomial(k: u64, n: u64, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - mean).abs() <= 3.29 * sd
}

fn pool<'a>(r: &'a RunResult, name: &str) -> &'a sim_core::metrics::PoolStats {
    let i = r
        .pool_names
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no pool {name}"));
    &r.pools[i]
}

const RULES: &str = r#"
[simulation]
horizon = "30m"
drain = true
[pools.api]
api = { ttft = { dist = "constant", value = "1s" }, tpot = { dist = "constant", value = "0ms" }, usd_per_1k_input = 0.01 }
[pools.onprem]
servers = 1000
service = { dist = "constant", value = "1s" }
[pools.small]
servers = 1000
service = { dist = "constant", value = "500ms" }
[tiers.frontier]
pools = ["api", "onprem"]
[tiers.small]
pools = ["small"]
[[routing.rules]]
when = { sensitivity = "restricted" }
pools = ["onprem"]
[[routing.rules]]
when = { slo_below = "10s" }
tier = "small"
[[routing.rules]]
when = { class = "research", budget_below = 0.02 }
tier = "small"

# Restricted data with a tight SLO: the first rule wins (on-prem, not small).
[classes.claims]
arrival = { process = "poisson", rate = 0.5 }
sensitivity = "restricted"
slo = "5s"
[[classes.claims.nodes]]
id = "extract"
tier = "frontier"
# A tight SLO: the small tier.
[classes.chat]
arrival = { process = "poisson", rate = 0.5 }
slo = "5s"
[[classes.chat.nodes]]
id = "answer"
tier = "frontier"
# The second call goes to small once less than $0.02 of the $0.05 budget is left.
[classes.research]
arrival = { process = "poisson", rate = 0.5 }
budget_usd = 0.05
[[classes.research.nodes]]
id = "plan"
tier = "frontier"
input_tokens = { dist = "uniform", low = 1000, high = 5000 }
[[classes.research.nodes]]
id = "write"
after = ["plan"]
tier = "frontier"
inherit = 0.0
input_tokens = { dist = "constant", value = 100 }
# No rule matches: the tier as written.
[classes.report]
arrival = { process = "poisson", rate = 0.5 }
[[classes.report.nodes]]
id = "draft"
tier = "frontier"
"#;

#[test]
fn routing_rules_first_match_wins_with_exact_counts() {
    let (r, log) = run_logged(RULES);
    let on = |class: &str, station: &str| {
        log.iter()
            .filter(|h| h.class == class && h.station == station)
            .count() as u64
    };
    let arrived = |c: &str| r.class(c).expect("class").arrived;
    for c in ["claims", "chat", "research", "report"] {
        let s = r.class(c).expect("class");
        assert!(s.arrived > 700, "{c}: {}", s.arrived);
        assert_eq!(s.completed, s.arrived, "{c}");
    }
    // Sensitivity restricts to on-prem, and wins over the SLO rule.
    assert_eq!(on("claims", "onprem"), arrived("claims"));
    // A tight SLO routes on the small tier.
    assert_eq!(on("chat", "small"), arrived("chat"));
    // No rule: the tier's first pool, the API.
    assert_eq!(on("report", "api"), arrived("report"));
    // Budget: the plan call costs input/1000 x $0.01 on the API; the write call goes to
    // small exactly when 0.05 - that < 0.02, i.e. the plan read more than 3,000 tokens.
    let mut to_small = 0;
    let mut to_api = 0;
    for (wf, hops) in by_workflow(&log, "research") {
        assert_eq!(hops.len(), 2, "workflow {wf}");
        assert_eq!(
            (hops[0].node.as_str(), hops[0].station.as_str()),
            ("plan", "api")
        );
        let left = 0.05 - hops[0].usd;
        let expected = if left < 0.02 { "small" } else { "api" };
        assert_eq!(hops[1].station, expected, "workflow {wf}: ${left} left");
        if expected == "small" {
            to_small += 1;
        } else {
            to_api += 1;
        }
    }
    // Plan input is uniform on [1000, 5000]: about half read more than 3,000 tokens.
    let n = to_small + to_api;
    assert_eq!(n, arrived("research"));
    assert!(within_binomial(to_small, n, 0.5), "{to_small} of {n}");
    // Without the rules every hop stays on the API (the tier's first pool).
    let (a, b) = (
        RULES.find("[[routing.rules]]").expect("rules"),
        RULES.find("# Restricted").expect("classes"),
    );
    let (_, plain) = run_logged(&format!("{}{}", &RULES[..a], &RULES[b..]));
    assert!(plain.len() > 3000 && plain.iter().all(|h| h.station == "api"));
}

#[test]
fn nodes_left_to_the_router_take_their_roles_tier_or_the_default() {
    // planner and writer name no pool or tier: the planner role maps to frontier, the
    // writer falls back to default_tier = small; `check` names an explicit tier that
    // wins over the map (reviewer, role planner, tier small).
    let text = r#"
[simulation]
horizon = "600s"
drain = true
[pools.big]
servers = 50
service = { dist = "constant", value = "2s" }
[pools.little]
servers = 50
service = { dist = "constant", value = "1s" }
[tiers.frontier]
pools = ["big"]
[tiers.small]
pools = ["little"]
[routing]
roles = { planner = "frontier" }
default_tier = "small"
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
[[classes.c.nodes]]
id = "plan"
role = "planner"
[[classes.c.nodes]]
id = "write"
after = ["plan"]
[[classes.c.nodes]]
id = "review"
role = "planner"
tier = "small"
after = ["write"]
"#;
    let (r, log) = run_logged(text);
    let c = r.class("c").expect("class");
    assert!(c.completed > 400 && c.completed == c.arrived);
    let count = |node: &str, pool: &str| {
        log.iter()
            .filter(|h| h.node == node && h.station == pool)
            .count() as u64
    };
    assert_eq!(count("plan", "big"), c.arrived);
    assert_eq!(count("write", "little"), c.arrived);
    assert_eq!(count("review", "little"), c.arrived);
    // 2s + 1s + 1s, exactly.
    assert_eq!(c.latency_sum_ns, 4_000_000_000u128 * c.completed as u128);
    // Without the default, the writer has nowhere to go; an unknown tier is named.
    let e = invalid(&text.replace("default_tier = \"small\"\n", ""));
    assert_eq!(e.key, "classes.c.nodes[1].pool");
    assert!(e.message.contains("default_tier"), "{e}");
    let e = invalid(&text.replace("planner = \"frontier\"", "planner = \"mid\""));
    assert_eq!(e.key, "routing.roles.planner");
    assert!(e.message.contains("no tier named `mid`"), "{e}");
    let e = invalid(&text.replace("default_tier = \"small\"", "default_tier = \"tiny\""));
    assert_eq!(e.key, "routing.default_tier");
}

#[test]
fn routing_rules_validation_names_the_key() {
    let with_rule = |rule: &str| {
        RULES.replacen(
            "[[routing.rules]]",
            &format!("[[routing.rules]]\n{rule}\n[[routing.rules]]"),
            1,
        )
    };
    let e = invalid(&with_rule("when = { class = \"nope\" }\ntier = \"small\""));
    assert_eq!(e.key, "routing.rules[0].when.class");
    assert!(e.message.contains("no class named `nope`"), "{e}");
    let e = invalid(&with_rule("tier = \"mid\""));
    assert_eq!(e.key, "routing.rules[0].tier");
    assert!(
        e.message.contains("no tier named `mid`") && e.message.contains("frontier, small"),
        "{e}"
    );
    let e = invalid(&with_rule("when = { tier = \"big\" }\ntier = \"small\""));
    assert_eq!(e.key, "routing.rules[0].when.tier");
    let e = invalid(&with_rule("pools = [\"onprem\", \"gpu9\"]"));
    assert_eq!(e.key, "routing.rules[0].pools[1]");
    let e = invalid(&with_rule(
        "when = { sensitivity = \"secret\" }\ntier = \"small\"",
    ));
    assert_eq!(e.key, "routing.rules[0].when.sensitivity");
    assert!(e.message.contains("restricted"), "{e}");
    let e = invalid(&with_rule("when = { class = \"chat\" }"));
    assert_eq!(e.key, "routing.rules[0]");
    // Restricting the frontier tier to the small pool leaves its nodes with no pool.
    let e = invalid(&with_rule(
        "when = { class = \"chat\" }\npools = [\"small\"]",
    ));
    assert_eq!(e.key, "routing.rules[0].pools");
    assert!(e.message.contains("node `answer` of class `chat`"), "{e}");
    // Unknown keys are refused by name.
    let spec: Result<ScenarioSpec, _> =
        toml::from_str(&with_rule("when = { clas = \"chat\" }\ntier = \"small\""));
    let e = spec.expect_err("unknown key");
    assert!(e.to_string().contains("unknown field `clas`"), "{e}");
}

#[test]
fn routing_rules_see_the_hops_role_and_prompt_size() {
    // Tier mid = [a, long]. The planner role goes to the frontier tier; a prompt of
    // 8,000 tokens or more (the researcher's draw, 1,000-16,000) only to the
    // long-context pool; smaller prompts take the tier's first pool.
    let text = r#"
[simulation]
horizon = "600s"
drain = true
[pools.a]
servers = 100
service = { dist = "constant", value = "1s" }
[pools.long]
servers = 100
service = { dist = "constant", value = "1s" }
[pools.f]
servers = 100
service = { dist = "constant", value = "1s" }
[tiers.mid]
pools = ["a", "long"]
[tiers.frontier]
pools = ["f"]
[[routing.rules]]
when = { role = "planner" }
tier = "frontier"
[[routing.rules]]
when = { min_input_tokens = 8000 }
pools = ["long"]
[classes.c]
arrival = { process = "poisson", rate = 4.0 }
[[classes.c.nodes]]
id = "plan"
role = "planner"
tier = "mid"
input_tokens = { dist = "constant", value = 500 }
output_tokens = { dist = "constant", value = 100 }
[[classes.c.nodes]]
id = "research"
after = ["plan"]
tier = "mid"
input_tokens = { dist = "uniform", low = 1000, high = 16000 }
output_tokens = { dist = "constant", value = 100 }
"#;
    let (r, log) = run_logged(text);
    let c = r.class("c").expect("class");
    assert!(c.arrived > 2000 && c.completed == c.arrived, "{c:?}");
    let (mut long, mut short) = (0u64, 0u64);
    for h in &log {
        match h.node.as_str() {
            "plan" => assert_eq!(h.station, "f", "{h:?}"),
            _ => {
                let want = if h.input_tokens >= 8000 { "long" } else { "a" };
                assert_eq!(h.station, want, "{h:?}");
                if h.input_tokens >= 8000 {
                    long += 1;
                } else {
                    short += 1;
                }
            }
        }
    }
    // Both sizes occur (8,000 splits the uniform draw at 7/15).
    let n = (long + short) as f64;
    let share = long as f64 / n;
    let sd = (8.0 / 15.0 * 7.0 / 15.0 / n).sqrt();
    assert!((share - 8.0 / 15.0).abs() < 4.0 * sd, "{share}");
    // The a-priori load judges the size rule by the node's mean prompt (8,500).
    let sc = super::scenario(text);
    let load = sc.offered_load();
    let rate = |p: &str| {
        load.iter()
            .find(|l| l.pool == p)
            .map(|l| l.hop_rate_per_s)
            .expect("pool")
    };
    assert_eq!((rate("a"), rate("long"), rate("f")), (0.0, 4.0, 4.0));
    // An unknown role is named, with the roles rules can match.
    let e = invalid(&text.replace("role = \"planner\" }", "role = \"planer\" }"));
    assert_eq!(e.key, "routing.rules[0].when.role");
    assert!(e.message.contains("planner, research"), "{e}");
}

const CASCADE: &str = r#"
[simulation]
horizon = "3000s"
drain = true
[pools.s]
servers = 100
service = { dist = "constant", value = "1s" }
[pools.m]
servers = 100
service = { dist = "constant", value = "2s" }
[pools.f]
servers = 100
service = { dist = "constant", value = "4s" }
[tiers.small]
pools = ["s"]
escalate = { probability = 0.3, to = "mid" }
[tiers.mid]
pools = ["m"]
escalate = { probability = 0.5, to = "frontier" }
[tiers.frontier]
pools = ["f"]
[classes.c]
arrival = { process = "poisson", rate = 2.0 }
[[classes.c.nodes]]
id = "answer"
tier = "small"
input_tokens = { dist = "constant", value = 700 }
output_tokens = { dist = "constant", value = 70 }
[classes.own]
arrival = { process = "poisson", rate = 0.5 }
[[classes.own.nodes]]
id = "answer"
tier = "small"
escalate = { probability = 1.0, pool = "f" }
"#;

#[test]
fn a_tier_cascade_escalates_step_by_step_with_each_tiers_probability() {
    // small (1s) -> with p 0.3 mid (2s) -> with p 0.5 frontier (4s): a workflow takes
    // 1s, 3s or 7s; each step starts the instant the previous answer finished, with
    // the same tokens. Class `own` has its node's own escalate, which replaces the
    // tier's cascade: always s then f, never m.
    let (r, log) = run_logged(CASCADE);
    let c = r.class("c").expect("c");
    assert_eq!(c.completed, c.arrived);
    let by_wf = by_workflow(&log, "c");
    let (mut at_mid, mut at_frontier) = (0u64, 0u64);
    for (wf, hops) in &by_wf {
        let pools: Vec<&str> = hops.iter().map(|h| h.station.as_str()).collect();
        assert!(
            matches!(pools.as_slice(), ["s"] | ["s", "m"] | ["s", "m", "f"]),
            "workflow {wf}: {pools:?}"
        );
        for w in hops.windows(2) {
            assert_eq!(w[1].submitted, w[0].finished, "workflow {wf}");
            assert_eq!(w[1].kind, "escalation");
            assert_eq!((w[1].input_tokens, w[1].output_tokens), (700, 70));
        }
        at_mid += (pools.len() >= 2) as u64;
        at_frontier += (pools.len() == 3) as u64;
    }
    let n = by_wf.len() as u64;
    assert_eq!(n, c.arrived);
    assert!(within_binomial(at_mid, n, 0.3), "{at_mid} of {n}");
    assert!(
        within_binomial(at_frontier, at_mid, 0.5),
        "{at_frontier} of {at_mid}"
    );
    assert_eq!(c.escalations, at_mid + at_frontier);
    let expected_ns = 1_000_000_000u128 * (n as u128)
        + 2_000_000_000u128 * at_mid as u128
        + 4_000_000_000u128 * at_frontier as u128;
    assert_eq!(c.latency_sum_ns, expected_ns);
    let own = by_workflow(&log, "own");
    assert!(own.len() > 1000);
    for hops in own.values() {
        let pools: Vec<&str> = hops.iter().map(|h| h.station.as_str()).collect();
        assert_eq!(pools, ["s", "f"]);
    }
    // Offered load follows the cascade: m sees 0.3 of c's rate, f 0.15 of it plus own.
    let sc = super::scenario(CASCADE);
    let load = sc.offered_load();
    let rate = |p: &str| {
        load.iter()
            .find(|l| l.pool == p)
            .map(|l| l.hop_rate_per_s)
            .expect("pool")
    };
    assert!((rate("m") - 0.6).abs() < 1e-9, "{}", rate("m"));
    assert!((rate("f") - (0.3 + 0.5)).abs() < 1e-9, "{}", rate("f"));
}

#[test]
fn tier_cascade_validation_names_the_key() {
    let e = invalid(&CASCADE.replace(
        "pools = [\"f\"]",
        "pools = [\"f\"]\nescalate = { probability = 0.1, to = \"small\" }",
    ));
    assert_eq!(e.key, "tiers.frontier.escalate.to");
    assert!(
        e.message.contains("never ends")
            && e.message.contains("frontier -> small -> mid -> frontier"),
        "{e}"
    );
    let e = invalid(&CASCADE.replace("to = \"mid\"", "to = \"medium\""));
    assert_eq!(e.key, "tiers.small.escalate.to");
    assert!(e.message.contains("no tier named `medium`"), "{e}");
    let e = invalid(&CASCADE.replace("probability = 0.3", "probability = 1.3"));
    assert_eq!(e.key, "tiers.small.escalate.probability");
}

#[test]
fn escalation_count_is_binomial_and_each_call_is_charged_once() {
    // Every answer costs 1000 in / 100 out on `mid` ($0.001 + $0.0002); with probability
    // 0.2 it is redone on `frontier` ($0.01 + $0.003) before the workflow completes.
    let text = r#"
[simulation]
horizon = "30m"
drain = true
[pools.mid]
api = { ttft = { dist = "constant", value = "200ms" }, tpot = { dist = "constant", value = "10ms" }, usd_per_1k_input = 0.001, usd_per_1k_output = 0.002 }
[pools.frontier]
api = { ttft = { dist = "constant", value = "500ms" }, tpot = { dist = "constant", value = "20ms" }, usd_per_1k_input = 0.01, usd_per_1k_output = 0.03 }
[tiers.mid]
pools = ["mid"]
[classes.c]
arrival = { process = "poisson", rate = 2.0 }
[[classes.c.nodes]]
id = "answer"
tier = "mid"
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 100 }
escalate = { probability = 0.2, pool = "frontier" }
"#;
    let (r, log) = run_logged(text);
    let c = r.class("c").expect("class");
    let n = c.arrived;
    let k = c.escalations;
    assert_eq!(c.completed, n);
    assert!(within_binomial(k, n, 0.2), "{k} escalations of {n}");
    // Escalated calls run on the escalation pool, and only they do.
    let esc: Vec<&HopRecord> = log.iter().filter(|h| h.kind == "escalation").collect();
    assert_eq!(esc.len() as u64, k);
    assert!(esc.iter().all(|h| h.station == "frontier"));
    assert!(
        log.iter()
            .filter(|h| h.kind == "llm")
            .all(|h| h.station == "mid")
    );
    assert_eq!(log.len() as u64, n + k);
    // The escalation starts when the first answer is judged, with the same tokens:
    // the workflow takes 0.2 + 99 x 0.01 then 0.5 + 99 x 0.02 seconds.
    for hops in by_workflow(&log, "c").values().filter(|v| v.len() == 2) {
        assert_eq!(hops[1].submitted, hops[0].finished);
        assert_eq!((hops[1].input_tokens, hops[1].output_tokens), (1000, 100));
        assert_eq!(hops[1].finished.0 - hops[1].submitted.0, 2_480_000_000);
    }
    // Each call is charged once, at its own pool's price.
    let mid_usd = n as f64 * 0.0012;
    let frontier_usd = k as f64 * 0.013;
    assert!((pool(&r, "mid").usd_api - mid_usd).abs() < 1e-9);
    assert!((pool(&r, "frontier").usd_api - frontier_usd).abs() < 1e-9);
    let total = r.summary().classes["c"].usd_total;
    assert!((total - mid_usd - frontier_usd).abs() < 1e-9, "{total}");
}

const BUDGET: &str = r#"
[simulation]
horizon = "20m"
drain = true
[pools.slow]
api = { ttft = { dist = "constant", value = "20s" }, tpot = { dist = "constant", value = "0ms" }, usd_per_1k_input = 0.001 }
[pools.mid]
api = { ttft = { dist = "constant", value = "2s" }, tpot = { dist = "constant", value = "0ms" }, usd_per_1k_input = 0.01 }
[pools.fast]
api = { ttft = { dist = "constant", value = "500ms" }, tpot = { dist = "constant", value = "0ms" }, usd_per_1k_input = 0.05 }
[tiers.any]
pools = ["fast", "mid", "slow"]
[routing]
policy = "cost_aware"
[classes.c]
arrival = { process = "poisson", rate = 0.5 }
slo = "15s"
BUDGET
[[classes.c.nodes]]
id = "first"
tier = "any"
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 1 }
[[classes.c.nodes]]
id = "second"
after = ["first"]
tier = "any"
inherit = 0.0
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 1 }
"#;

#[test]
fn budget_steers_cost_aware_routing() {
    // A call costs $0.001 on slow (20s, misses the 15s SLO), $0.01 on mid (2s) and
    // $0.05 on fast (0.5s).
    let stations = |budget: &str| {
        let (r, log) = run_logged(&BUDGET.replace("BUDGET", budget));
        let c = r.class("c").expect("class");
        assert!(c.arrived > 500 && c.completed == c.arrived);
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        for h in &log {
            *counts
                .entry((h.node.clone(), h.station.clone()))
                .or_default() += 1;
        }
        (
            c.arrived,
            counts,
            r.summary().classes["c"].usd_per_outcome.mean,
        )
    };
    let key = |n: &str, s: &str| (n.to_string(), s.to_string());
    // No budget: the cheapest pool that meets the SLO, mid, for both calls.
    let (n, counts, _) = stations("");
    assert_eq!(
        counts,
        BTreeMap::from([(key("first", "mid"), n), (key("second", "mid"), n)])
    );
    // $0.015: the first call on mid leaves $0.005, so the second call takes the only
    // pool within budget (slow) and gives up the SLO rather than the budget.
    let (n, counts, usd) = stations("budget_usd = 0.015");
    assert_eq!(
        counts,
        BTreeMap::from([(key("first", "mid"), n), (key("second", "slow"), n)])
    );
    assert!((usd.expect("completed") - 0.011).abs() < 1e-12);
    // Nothing within budget: the cheapest pool, never the dearest.
    let (n, counts, _) = stations("budget_usd = 0.0005");
    assert_eq!(
        counts,
        BTreeMap::from([(key("first", "slow"), n), (key("second", "slow"), n)])
    );
}

#[test]
fn api_429_storm_refuses_its_share_inside_the_window_only() {
    // Static routing on [api, backup]: a call the API answers 429 falls back to backup
    // at once, so the hops on backup are exactly the API's refusals.
    let text = r#"
[simulation]
horizon = "30m"
drain = true
[pools.api]
api = { ttft = { dist = "constant", value = "300ms" }, tpot = { dist = "constant", value = "0ms" } }
storms = [{ start = "10m", duration = "10m", fraction = 0.3 }]
[pools.backup]
servers = 1000
service = { dist = "constant", value = "1s" }
[tiers.t]
pools = ["api", "backup"]
[classes.c]
arrival = { process = "poisson", rate = 2.0 }
[[classes.c.nodes]]
id = "call"
tier = "t"
"#;
    let (r, log) = run_logged(text);
    let in_storm = |t: u64| (600_000_000_000..1_200_000_000_000).contains(&t);
    let inside: Vec<&HopRecord> = log.iter().filter(|h| in_storm(h.submitted.0)).collect();
    let refused = inside.iter().filter(|h| h.station == "backup").count() as u64;
    let n = inside.len() as u64;
    assert!(n > 1000, "{n}");
    assert!(within_binomial(refused, n, 0.3), "{refused} of {n} refused");
    let outside_refused = log
        .iter()
        .filter(|h| !in_storm(h.submitted.0) && h.station == "backup")
        .count();
    assert_eq!(outside_refused, 0);
    assert_eq!(pool(&r, "api").refusals, refused);
    assert_eq!(
        pool(&r, "api").refusals_by_cause.get("storm"),
        Some(&refused)
    );
    assert_eq!(r.class("c").expect("class").degraded_hops, refused);
}

#[test]
fn error_storm_fails_its_share_of_calls_inside_the_window_only() {
    // `a` fails 5% of its calls, 50% of those finishing in [10m, 20m). A failed call
    // is retried (up to 20 attempts), so every hop but a workflow's last one failed.
    let text = r#"
[simulation]
horizon = "30m"
drain = true
[pools.a]
servers = 1000
service = { dist = "constant", value = "1s" }
error_rate = 0.05
error_storms = [{ start = "10m", duration = "10m", error_rate = 0.5 }]
error_backoff = { base = "1s", max = "1s" }
max_attempts = 20
[classes.c]
arrival = { process = "poisson", rate = 2.0 }
[[classes.c.nodes]]
id = "call"
pool = "a"
"#;
    let (r, log) = run_logged(text);
    let c = r.class("c").expect("class");
    assert_eq!((c.completed, c.failed), (c.arrived, 0));
    let in_storm = |t: u64| (600 * S..1200 * S).contains(&t);
    let (mut n_in, mut f_in, mut n_out, mut f_out) = (0u64, 0u64, 0u64, 0u64);
    for hops in by_workflow(&log, "c").values() {
        for (k, h) in hops.iter().enumerate() {
            let failed = (k + 1 < hops.len()) as u64;
            if in_storm(h.finished.0) {
                (n_in, f_in) = (n_in + 1, f_in + failed);
            } else {
                (n_out, f_out) = (n_out + 1, f_out + failed);
            }
        }
    }
    assert!(n_in > 1000 && n_out > 2000, "{n_in} {n_out}");
    assert!(
        within_binomial(f_in, n_in, 0.5),
        "{f_in} of {n_in} in the storm"
    );
    assert!(
        within_binomial(f_out, n_out, 0.05),
        "{f_out} of {n_out} outside"
    );
    assert_eq!(pool(&r, "a").errors, f_in + f_out);
    // A rate outside (0, 1] is named.
    let e = invalid(&text.replace("error_rate = 0.5 }", "error_rate = 1.5 }"));
    assert_eq!(e.key, "pools.a.error_storms[0].error_rate");
}

#[test]
fn tool_latency_spike_multiplies_latency_inside_the_window() {
    let text = r#"
[simulation]
horizon = "30m"
drain = true
[pools.llm]
servers = 1000
service = { dist = "constant", value = "100ms" }
[tools.search]
latency = { dist = "uniform", low = "500ms", high = "1500ms" }
spikes = [{ start = "10m", duration = "10m", factor = 3.0 }]
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
[[classes.c.nodes]]
id = "think"
pool = "llm"
[[classes.c.nodes]]
id = "search"
kind = "tool"
tool = "search"
after = ["think"]
"#;
    let (_, log) = run_logged(text);
    let in_spike = |t: u64| (600_000_000_000..1_200_000_000_000).contains(&t);
    let stats = |inside: bool| {
        let v: Vec<f64> = log
            .iter()
            .filter(|h| h.kind == "tool" && in_spike(h.submitted.0) == inside)
            .map(|h| (h.finished.0 - h.started.0) as f64 / 1e9)
            .collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
        (n, mean, sd, lo, hi)
    };
    // Uniform on [0.5, 1.5]s (mean 1s) outside; x3 inside: [1.5, 4.5]s, mean 3s.
    let (n, mean, sd, lo, hi) = stats(true);
    assert!(n > 400.0, "{n}");
    assert!(
        (mean - 3.0).abs() < 3.29 * sd / n.sqrt(),
        "mean {mean} in the spike"
    );
    assert!(lo >= 1.5 - 1e-6 && hi <= 4.5 + 1e-6, "[{lo}, {hi}]");
    let (n, mean, sd, lo, hi) = stats(false);
    assert!(n > 800.0, "{n}");
    assert!(
        (mean - 1.0).abs() < 3.29 * sd / n.sqrt(),
        "mean {mean} outside"
    );
    assert!(lo >= 0.5 - 1e-6 && hi <= 1.5 + 1e-6, "[{lo}, {hi}]");
}

#[test]
fn pool_errors_are_retried_with_exponential_backoff_and_jitter() {
    // Half the calls to `a` fail after their 1s service; the client retries after
    // 1s, 2s, 4s, 4s, 4s (x jitter in [0.8, 1.2]) and gives up after 6 attempts.
    let text = r#"
[simulation]
horizon = "1h"
drain = true
[pools.a]
servers = 1000
service = { dist = "constant", value = "1s" }
error_rate = 0.5
error_backoff = { base = "1s", max = "4s" }
max_attempts = 6
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
[[classes.c.nodes]]
id = "call"
pool = "a"
"#;
    let (r, log) = run_logged(text);
    let c = r.class("c").expect("class");
    let wfs = by_workflow(&log, "c");
    assert_eq!(wfs.len() as u64, c.arrived);
    let mut six = 0;
    for (wf, hops) in &wfs {
        assert!(hops.len() <= 6, "workflow {wf}: {} calls", hops.len());
        six += (hops.len() == 6) as u64;
        for (k, w) in hops.windows(2).enumerate() {
            let wait = (w[1].submitted.0 - w[0].finished.0) as f64 / 1e9;
            let base = (1u64 << k).min(4) as f64;
            assert!(
                wait >= 0.8 * base - 1e-9 && wait <= 1.2 * base + 1e-9,
                "workflow {wf}: retry {k} after {wait}s"
            );
        }
    }
    // A workflow fails only after six failed attempts: half of those that made a
    // sixth call (about 1 in 64 in all); every other one completes with exactly one
    // successful call, so errors = calls - completed.
    assert!(six > 50, "{six}");
    assert!(
        c.failed <= six && within_binomial(c.failed, six, 0.5),
        "{} of {six}",
        c.failed
    );
    assert_eq!(c.failed_by_cause.get("error from a"), Some(&c.failed));
    assert_eq!(c.completed + c.failed, c.arrived);
    let errors = pool(&r, "a").errors;
    assert_eq!(errors, log.len() as u64 - c.completed);
    // The hop log says which calls failed: every one but each workflow's last, and
    // the last too where the workflow failed.
    let logged_errors = log.iter().filter(|h| h.status == HopStatus::Error).count() as u64;
    assert_eq!(logged_errors, errors);
    for hops in wfs.values() {
        let (last, before) = hops.split_last().expect("a call");
        assert!(before.iter().all(|h| h.status == HopStatus::Error));
        let failed = hops.len() == 6 && last.status == HopStatus::Error;
        assert!(failed || last.status == HopStatus::Ok, "{last:?}");
    }
    let ok = log.iter().filter(|h| h.status == HopStatus::Ok).count() as u64;
    assert_eq!(ok, c.completed);
    assert!(
        within_binomial(errors, log.len() as u64, 0.5),
        "{errors} of {}",
        log.len()
    );
}

const S: u64 = 1_000_000_000;

/// Start time (ns) of each workflow of a closed-loop class, in order, from the first
/// hop of each workflow in the log.
fn starts(wfs: &BTreeMap<u64, Vec<&HopRecord>>) -> Vec<u64> {
    let mut v: Vec<u64> = wfs.values().map(|h| h[0].submitted.0).collect();
    v.sort_unstable();
    v
}

#[test]
fn timed_out_calls_are_retried_with_backoff_and_charged_as_waste() {
    // One user at a time (closed loop, 2s think). Every call takes 3s and times out
    // after 2s; the client retries after a fixed 1s backoff (no jitter): attempts at
    // a, a + 3s, a + 6s, and the workflow fails at a + 8s with "timeout at NODE". Each
    // timed-out call runs on and is charged in full ($1 per server-second): $9 of waste
    // per model workflow, $1.50 per tool workflow (3 calls at $0.50).
    let text = r#"
[simulation]
horizon = "101s"
[pools.slow]
servers = 10
usd_per_server_hour = 3600.0
service = { dist = "constant", value = "3s" }
max_attempts = 3
error_backoff = { base = "1s", max = "1s", jitter = 0.0 }
[tools.lookup]
latency = { dist = "constant", value = "3s" }
retries = 2
retry_backoff = { dist = "constant", value = "1s" }
usd_per_call = 0.5
[classes.c]
arrival = { process = "closed", users = 1, think = { dist = "constant", value = "2s" } }
[[classes.c.nodes]]
id = "call"
pool = "slow"
timeout = "2s"
[classes.t]
arrival = { process = "closed", users = 1, think = { dist = "constant", value = "2s" } }
[[classes.t.nodes]]
id = "lookup"
kind = "tool"
tool = "lookup"
timeout = "2s"
"#;
    let (r, log) = run_logged(text);
    for (class, node, usd) in [("c", "call", 3.0), ("t", "lookup", 0.5)] {
        let c = r.class(class).expect("class");
        let wfs = by_workflow(&log, class);
        // The user thinks first, then workflows start every 10s (8s to fail + 2s think):
        // 2s, 12s, ..., 92s; the one at 92s fails at 100s, before the 101s horizon.
        let expected: Vec<u64> = (0..10).map(|k| (2 + 10 * k) * S).collect();
        assert_eq!(starts(&wfs), expected, "{class}");
        assert_eq!((c.arrived, c.failed, c.completed), (10, 10, 0), "{class}");
        assert_eq!(
            c.failed_by_cause.get(&format!("timeout at {node}")),
            Some(&10),
            "{class}"
        );
        for hops in wfs.values() {
            let a = hops[0].submitted.0;
            let at: Vec<(u64, u64)> = hops
                .iter()
                .map(|h| (h.submitted.0 - a, h.finished.0 - h.submitted.0))
                .collect();
            assert_eq!(
                at,
                vec![(0, 3 * S), (3 * S, 3 * S), (6 * S, 3 * S)],
                "{class}"
            );
            assert!(hops.iter().all(|h| (h.usd - usd).abs() < 1e-12), "{class}");
            // Each call's caller gave up on it, the last one's too.
            assert!(
                hops.iter().all(|h| h.status == HopStatus::Timeout),
                "{class}"
            );
        }
        // Every dollar is waste: the first two calls ended after their timeout (the
        // workflow still live), the third after the workflow failed.
        assert!(
            (c.usd_waste_leftover - 30.0 * usd).abs() < 1e-9,
            "{class}: {}",
            c.usd_waste_leftover
        );
        assert_eq!(c.usd_waste_failed, 0.0, "{class}");
    }
    assert_eq!(pool(&r, "slow").errors, 0);
    let e = invalid(&text.replace("jitter = 0.0", "jitter = 1.5"));
    assert_eq!(e.key, "pools.slow.error_backoff.jitter");
    assert!(e.message.contains("[0, 1]"), "{e}");
    let spec: Result<ScenarioSpec, _> =
        toml::from_str(&text.replace("jitter = 0.0", "jiter = 0.0"));
    let e = spec.expect_err("unknown key");
    assert!(e.to_string().contains("unknown field `jiter`"), "{e}");

    // A pool's own `timeout_backoff` (4s, doubling to at most 6s) replaces
    // `error_backoff` for timeouts: model calls at a, a + 2 + 4 = a + 6s and
    // a + 6 + 2 + 6 = a + 14s; the workflow fails at a + 16s. Tools keep their
    // `retry_backoff`. Errors would still back off by `error_backoff`.
    let own = text.replace(
        "error_backoff = { base = \"1s\", max = \"1s\", jitter = 0.0 }",
        "error_backoff = { base = \"1s\", max = \"1s\", jitter = 0.0 }\ntimeout_backoff = { base = \"4s\", max = \"6s\", jitter = 0.0 }",
    );
    let (r, log) = run_logged(&own);
    let wfs = by_workflow(&log, "c");
    let expected: Vec<u64> = (0..6).map(|k| (2 + 18 * k) * S).collect();
    assert_eq!(starts(&wfs), expected);
    for hops in wfs.values().filter(|h| h.len() == 3) {
        let a = hops[0].submitted.0;
        let at: Vec<u64> = hops.iter().map(|h| h.submitted.0 - a).collect();
        assert_eq!(at, vec![0, 6 * S, 14 * S]);
    }
    assert_eq!(r.class("c").map(|c| c.failed), Some(5));
    let tool_starts = starts(&by_workflow(&log, "t"));
    assert_eq!(
        tool_starts,
        (0..10).map(|k| (2 + 10 * k) * S).collect::<Vec<_>>()
    );
    let e = invalid(&own.replace("base = \"4s\"", "base = \"8s\""));
    assert_eq!(e.key, "pools.slow.timeout_backoff");
    assert!(e.message.contains("0 < base <= max"), "{e}");
}

#[test]
fn a_timed_out_tiered_hop_falls_back_at_once_along_its_chain() {
    // Tier [slow, fast]: the call to slow (3s) times out after 2s and goes at once to
    // fast (1s), marked degraded: every workflow takes exactly 3s; with 2s think they
    // start every 5s. The slow call runs on: $3 of waste per workflow.
    let text = r#"
[simulation]
horizon = "101s"
[pools.slow]
servers = 10
usd_per_server_hour = 3600.0
service = { dist = "constant", value = "3s" }
[pools.fast]
servers = 10
service = { dist = "constant", value = "1s" }
[tiers.t]
pools = ["slow", "fast"]
[classes.c]
arrival = { process = "closed", users = 1, think = { dist = "constant", value = "2s" } }
[[classes.c.nodes]]
id = "call"
tier = "t"
timeout = "2s"
"#;
    let (r, log) = run_logged(text);
    let c = r.class("c").expect("class");
    let wfs = by_workflow(&log, "c");
    let expected: Vec<u64> = (0..20).map(|k| (2 + 5 * k) * S).collect();
    assert_eq!(starts(&wfs), expected);
    assert_eq!((c.arrived, c.completed, c.failed), (20, 20, 0));
    assert_eq!(c.degraded_hops, 20);
    for hops in wfs.values() {
        let a = hops[0].submitted.0;
        let at: Vec<(&str, u64, u64)> = hops
            .iter()
            .map(|h| (h.station.as_str(), h.submitted.0 - a, h.finished.0 - a))
            .collect();
        assert_eq!(at, vec![("slow", 0, 3 * S), ("fast", 2 * S, 3 * S)]);
    }
    assert!(
        (c.usd_waste_leftover - 60.0).abs() < 1e-9,
        "{}",
        c.usd_waste_leftover
    );
    assert!(c.latency_per_success_ns.iter().all(|&l| l == 3 * S));
}

#[test]
fn a_timed_out_call_succeeds_on_a_later_attempt_with_exact_latency() {
    // Each attempt draws its own service time, 3s or 1s with equal chances, from the
    // hop's timing stream (keyed by attempt). A 3s call times out after 2s and is
    // retried after a fixed 1s backoff: a workflow takes exactly 1s, 4s or 7s when its
    // first, second or third attempt draws 1s, and fails at 8s when all three draw 3s.
    let text = r#"
[simulation]
horizon = "1h"
[pools.p]
servers = 10
service = { dist = "empirical", values = ["3s", "1s"] }
max_attempts = 3
error_backoff = { base = "1s", max = "1s", jitter = 0.0 }
[classes.c]
arrival = { process = "closed", users = 1, think = { dist = "constant", value = "1s" } }
[[classes.c.nodes]]
id = "call"
pool = "p"
timeout = "2s"
"#;
    let (r, log) = run_logged(text);
    let c = r.class("c").expect("class");
    let wfs = by_workflow(&log, "c");
    let mut by_attempts = [0u64; 4];
    let all: Vec<&Vec<&HopRecord>> = wfs.values().collect();
    for w in all.windows(2) {
        let (hops, next) = (w[0], w[1]);
        let a = hops[0].submitted.0;
        for (k, h) in hops.iter().enumerate() {
            assert_eq!(h.submitted.0 - a, 3 * k as u64 * S);
            // The hop log numbers the attempts of a model call (spans carry it).
            assert_eq!(h.attempt, k as u32 + 1);
        }
        let last = hops[hops.len() - 1];
        let ok = last.finished.0 - last.submitted.0 == S;
        // Every attempt before the last drew 3s.
        assert!(
            hops[..hops.len() - 1]
                .iter()
                .all(|h| h.finished.0 - h.submitted.0 == 3 * S)
        );
        let end = if ok {
            by_attempts[hops.len()] += 1;
            a + (1 + 3 * (hops.len() as u64 - 1)) * S
        } else {
            assert_eq!(hops.len(), 3);
            by_attempts[0] += 1;
            a + 8 * S
        };
        assert_eq!(
            next[0].submitted.0,
            end + S,
            "the next workflow starts after 1s think"
        );
    }
    // Success on the second attempt happens (about a quarter of workflows).
    assert!(by_attempts[2] > 100, "{by_attempts:?}");
    assert!(by_attempts[1] > 100 && by_attempts[3] > 20 && by_attempts[0] > 20);
    assert_eq!(
        c.failed_by_cause
            .get("timeout at call")
            .copied()
            .unwrap_or(0),
        c.failed
    );
    // The class's own latencies (the last workflow included): only 1s, 4s and 7s.
    for (k, secs) in [(1, 1), (2, 4), (3, 7)] {
        let n = c
            .latency_per_success_ns
            .iter()
            .filter(|&&l| l == secs * S)
            .count() as u64;
        assert!(
            n == by_attempts[k] || n == by_attempts[k] + 1,
            "{secs}s: {n}"
        );
    }
    assert_eq!(c.completed, c.latency_per_success_ns.len() as u64);
    assert!(
        c.latency_per_success_ns
            .iter()
            .all(|&l| [1, 4, 7].contains(&(l / S)) && l % S == 0)
    );
    assert!(c.failed == by_attempts[0] || c.failed == by_attempts[0] + 1);
}

#[test]
fn error_rate_breaker_opens_after_min_calls_and_probes_after_the_open_duration() {
    // Every call to `a` fails (after 500ms); the breaker opens once 10 calls in the
    // last 30s are in and at least half failed. While it is open the tier falls back to
    // `b`; every 60s one probe goes to `a`, fails and reopens it.
    let text = r#"
[simulation]
horizon = "20m"
drain = true
[pools.a]
servers = 1000
service = { dist = "constant", value = "500ms" }
error_rate = 1.0
max_attempts = 10
breaker = { error_rate = 0.5, window = "30s", min_calls = 10, open = "60s" }
[pools.b]
servers = 1000
service = { dist = "constant", value = "500ms" }
[tiers.t]
pools = ["a", "b"]
[classes.c]
arrival = { process = "poisson", rate = 2.0 }
[[classes.c.nodes]]
id = "call"
tier = "t"
"#;
    let (r, log) = run_logged(text);
    let mut on_a: Vec<&HopRecord> = log.iter().filter(|h| h.station == "a").collect();
    on_a.sort_by_key(|h| h.submitted.0);
    // The 10th failure (calls finish in submission order) opens it: every call made
    // before that went to a, none after it but the probes.
    let opened = on_a[9].finished.0;
    let before = on_a.iter().filter(|h| h.submitted.0 < opened).count();
    assert!(before >= 10);
    let first_b = log
        .iter()
        .filter(|h| h.station == "b")
        .map(|h| h.submitted.0)
        .min()
        .expect("fallback");
    assert!(
        first_b >= opened,
        "nothing fell back before the breaker opened"
    );
    let probes = &on_a[before..];
    let mut last_open = opened;
    for p in probes {
        let gap = (p.submitted.0 - last_open) as f64 / 1e9;
        // The next call after the 60s open period (arrivals and retries every ~0.5s).
        assert!((60.0..65.0).contains(&gap), "probe {gap}s after opening");
        last_open = p.finished.0;
    }
    let a = pool(&r, "a");
    assert!(probes.len() >= 15, "{} probes", probes.len());
    assert_eq!(
        a.breaker_opens,
        1 + probes.len() as u64,
        "each failed probe reopens it"
    );
    assert_eq!(a.errors, on_a.len() as u64);
    // Every failed call was retried and then served by b.
    let c = r.class("c").expect("class");
    assert_eq!(c.completed, c.arrived);
    assert_eq!(log.len() as u64, c.arrived + a.errors);
}

/// Largest number of `times` (nanoseconds, any order) inside any window of `width`.
fn max_in_window(mut times: Vec<u64>, width: u64) -> usize {
    times.sort_unstable();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= width {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

#[test]
fn escalations_pass_the_gates_of_the_pool_they_go_to() {
    // Every answer is redone on `frontier`, an API that takes 30 requests a minute and
    // gives one attempt: escalations beyond its RPM are 429s that reject the workflow
    // (they used to reach the API unchecked).
    let text = r#"
[simulation]
horizon = "10m"
drain = true
[pools.mid]
api = { ttft = { dist = "constant", value = "200ms" }, tpot = { dist = "constant", value = "10ms" }, usd_per_1k_input = 0.001 }
[pools.frontier]
api = { ttft = { dist = "constant", value = "500ms" }, tpot = { dist = "constant", value = "20ms" }, usd_per_1k_input = 0.01, rpm = 30 }
max_attempts = 1
[classes.c]
arrival = { process = "poisson", rate = 2.0 }
[[classes.c.nodes]]
id = "answer"
pool = "mid"
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 100 }
escalate = { probability = 1.0, pool = "frontier" }
"#;
    let (r, log) = run_logged(text);
    let c = r.class("c").expect("class");
    let esc: Vec<u64> = log
        .iter()
        .filter(|h| h.kind == "escalation")
        .map(|h| h.submitted.0)
        .collect();
    assert_eq!(
        log.iter().filter(|h| h.kind == "llm").count() as u64,
        c.arrived
    );
    // The RPM holds over every minute, and is used: about 30 a minute for 10 minutes.
    assert_eq!(max_in_window(esc.clone(), 60_000_000_000), 30);
    assert!((280..=330).contains(&esc.len()), "{} admitted", esc.len());
    assert_eq!(c.completed, esc.len() as u64);
    assert_eq!(c.rejected, c.arrived - c.completed);
    assert!(c.rejected > 800, "{}", c.rejected);
    assert_eq!(
        c.refused_by_cause.get("429 from frontier"),
        Some(&c.rejected)
    );
    assert_eq!(
        pool(&r, "frontier").refusals_by_cause.get("rate_limit"),
        Some(&c.rejected),
        "{:?}",
        pool(&r, "frontier").refusals_by_cause
    );

    // Under `on_escalation_refused = "keep_answer"` the client keeps mid's answer
    // instead: the same escalations reach frontier (its RPM sees the same times), no
    // workflow is rejected, and each refused one is a degraded hop whose workflow took
    // exactly mid's call: 200 ms + 99 x 10 ms.
    let kept_text = text.replace(
        "[[classes.c.nodes]]",
        "on_escalation_refused = \"keep_answer\"\n[[classes.c.nodes]]",
    );
    let (k, kept_log) = run_logged(&kept_text);
    let kc = k.class("c").expect("class");
    let kept_esc: Vec<u64> = kept_log
        .iter()
        .filter(|h| h.kind == "escalation")
        .map(|h| h.submitted.0)
        .collect();
    assert_eq!(kept_esc, esc);
    assert_eq!((kc.arrived, kc.rejected), (c.arrived, 0));
    assert_eq!(kc.completed, kc.arrived);
    assert_eq!(kc.escalations, kc.arrived);
    assert_eq!(kc.degraded_hops, c.rejected);
    assert_eq!(
        kc.refused_by_cause.get("429 from frontier"),
        Some(&c.rejected)
    );
    // Latency: every escalated workflow as before, plus mid's call alone for the rest.
    let mid_call_ns = 1_190_000_000u128;
    assert_eq!(
        kc.latency_sum_ns,
        c.latency_sum_ns + mid_call_ns * c.rejected as u128
    );

    // A cascade step goes to the first pool of its tier's chain that takes it: `b1`
    // (6 a minute) first, the rest to `b2`, marked degraded; nothing is refused.
    let cascade = r#"
[simulation]
horizon = "10m"
drain = true
[pools.s]
api = { ttft = { dist = "constant", value = "200ms" }, tpot = { dist = "constant", value = "0ms" } }
[pools.b1]
api = { ttft = { dist = "constant", value = "1s" }, tpot = { dist = "constant", value = "0ms" }, rpm = 6 }
[pools.b2]
api = { ttft = { dist = "constant", value = "2s" }, tpot = { dist = "constant", value = "0ms" } }
[tiers.small]
pools = ["s"]
escalate = { probability = 0.5, to = "big" }
[tiers.big]
pools = ["b1", "b2"]
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
[[classes.c.nodes]]
id = "answer"
tier = "small"
"#;
    let (r, log) = run_logged(cascade);
    let c = r.class("c").expect("class");
    assert_eq!(c.completed, c.arrived);
    let on = |p: &str| -> Vec<u64> {
        log.iter()
            .filter(|h| h.kind == "escalation" && h.station == p)
            .map(|h| h.submitted.0)
            .collect()
    };
    let (b1, b2) = (on("b1"), on("b2"));
    assert_eq!((b1.len() + b2.len()) as u64, c.escalations);
    assert_eq!(max_in_window(b1.clone(), 60_000_000_000), 6);
    assert!((55..=70).contains(&b1.len()), "{} on b1", b1.len());
    assert!(b2.len() > 200, "{} on b2", b2.len());
    assert_eq!(c.degraded_hops, b2.len() as u64);
    assert_eq!(c.rejected, 0);
}

#[test]
fn a_lane_cap_counts_and_holds_escalations() {
    // Lane `capped` allows 2 model hops in flight; answers (1 s) escalate with p 0.5
    // to `big` (2 s). Escalations wait at the lane's door like first calls: at no
    // instant are 3 of the lane's calls running (they used to bypass the cap).
    let text = r#"
[simulation]
horizon = "10m"
drain = true
[pools.small]
servers = 10
service = { dist = "constant", value = "1s" }
[pools.big]
servers = 10
service = { dist = "constant", value = "2s" }
[lanes.capped]
max_in_flight = 2
[classes.c]
lane = "capped"
arrival = { process = "poisson", rate = 0.8 }
[[classes.c.nodes]]
id = "answer"
pool = "small"
escalate = { probability = 0.5, pool = "big" }
"#;
    let (r, log) = run_logged(text);
    let c = r.class("c").expect("class");
    assert_eq!(c.completed, c.arrived);
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for h in &log {
        edges.push((h.started.0, 1));
        edges.push((h.finished.0, -1));
    }
    // Ends before starts at the same instant: a slot freed is taken at once.
    edges.sort_unstable();
    let (mut now, mut peak) = (0, 0);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    assert_eq!(peak, 2);
    let esc = log.iter().filter(|h| h.kind == "escalation").count() as u64;
    assert_eq!(esc, c.escalations);
    assert!(
        within_binomial(esc, c.arrived, 0.5),
        "{esc} of {}",
        c.arrived
    );
    // Held escalations waited: some started after the answer they redo finished.
    assert!(
        by_workflow(&log, "c")
            .values()
            .filter(|v| v.len() == 2)
            .any(|v| v[1].submitted > v[0].finished)
    );
}

#[test]
fn on_timeout_abort_stops_the_call_and_charges_what_it_used() {
    // One server, 3 s hops, a 2 s client timeout, one attempt: no hop can finish in
    // time. Under `continue` each timed-out hop still runs its 3 s (and the queue
    // grows without bound); under `abort` the pool stops it when its caller gives up:
    // every hop in the log ends exactly 2 s after its submission, is charged only the
    // service it got, and the pool's busy time is their sum.
    let text = r#"
[simulation]
horizon = "10m"
drain = true
[pools.p]
servers = 1
usd_per_server_hour = 3.6
service = { dist = "constant", value = "3s" }
max_attempts = 1
on_timeout = "abort"
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
[[classes.c.nodes]]
id = "a"
pool = "p"
timeout = "2s"
"#;
    let (r, log) = run_logged(text);
    let c = r.class("c").expect("class");
    assert_eq!((c.completed, c.failed), (0, c.arrived));
    assert_eq!(c.failed_by_cause.get("timeout at a"), Some(&c.arrived));
    assert_eq!(log.len() as u64, c.arrived);
    let mut busy_ns = 0u64;
    for h in &log {
        assert_eq!(h.finished.0 - h.submitted.0, 2_000_000_000, "{h:?}");
        let ran = h.finished.0 - h.started.0;
        busy_ns += ran;
        // $3.6 an hour = $0.001 a second of service.
        assert!((h.usd - ran as f64 * 1e-12).abs() < 1e-12, "{h:?}");
    }
    let p = pool(&r, "p");
    assert_eq!(p.aborted, c.arrived);
    let rep = &r.pool_reports[0];
    assert!(
        (rep.busy_server_s - busy_ns as f64 / 1e9).abs() < 1e-6,
        "{rep:?}"
    );
    // Under FIFO with one timeout every hop gets some service: the hop ahead of it is
    // stopped at its own (earlier) deadline.
    assert!(log.iter().all(|h| h.started < h.finished));
    // Waste is exactly the service the aborted hops got.
    assert!((c.usd_waste_failed + c.usd_waste_leftover - busy_ns as f64 * 1e-12).abs() < 1e-9);

    // The same under `continue`: every hop runs its full 3 s.
    let (r2, log2) = run_logged(&text.replace("on_timeout = \"abort\"", ""));
    assert!(
        log2.iter()
            .all(|h| h.finished.0 - h.started.0 == 3_000_000_000)
    );
    assert_eq!(pool(&r2, "p").aborted, 0);

    // A paid API bills the output streamed before the abort: TTFT 1 s, 100 ms a token,
    // 100 tokens (10.9 s), timeout 5 s: 1 + floor((5 - 1) / 0.1) = 41 tokens of output.
    let api = r#"
[simulation]
horizon = "10m"
drain = true
[pools.api]
api = { ttft = { dist = "constant", value = "1s" }, tpot = { dist = "constant", value = "100ms" }, usd_per_1k_input = 1.0, usd_per_1k_output = 10.0 }
max_attempts = 1
on_timeout = "abort"
[classes.c]
arrival = { process = "poisson", rate = 0.2 }
[[classes.c.nodes]]
id = "a"
pool = "api"
timeout = "5s"
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 100 }
"#;
    let (r, log) = run_logged(api);
    let c = r.class("c").expect("class");
    assert_eq!(c.failed, c.arrived);
    let per_call = 1.0 + 41.0 * 0.01;
    assert!((pool(&r, "api").usd_api - c.arrived as f64 * per_call).abs() < 1e-6);
    assert!(
        log.iter()
            .all(|h| h.finished.0 - h.started.0 == 5_000_000_000)
    );
    let (r2, _) = run_logged(&api.replace("on_timeout = \"abort\"", ""));
    let full = 1.0 + 100.0 * 0.01;
    assert!(
        (pool(&r2, "api").usd_api - r2.class("c").expect("c").arrived as f64 * full).abs() < 1e-6
    );
}

#[test]
fn on_timeout_abort_frees_a_tools_bulkhead_and_bills_only_calls_sent() {
    // A bulkhead of one, 3 s calls at $0.01, a 2 s client timeout, no retry; each
    // workflow fans out three calls at once, one every 10 s on average. No call can
    // finish in time. Under `continue` every call that gets the slot keeps it for its
    // whole 3 s, so calls queue at the bulkhead long after their callers left; under
    // `abort` every call stops when its caller gives up, 2 s after its submission
    // (also the branches of a workflow an earlier branch already failed), the slot
    // goes to the next at once, and calls stopped while still waiting for the slot
    // cost nothing: they never reached the tool.
    let text = r#"
[simulation]
horizon = "1h"
drain = true
[pools.unused]
servers = 1
service = { dist = "constant", value = "1s" }
[tools.lookup]
latency = { dist = "constant", value = "3s" }
usd_per_call = 0.01
concurrency = 1
on_timeout = "abort"
[classes.t]
arrival = { process = "poisson", rate = 0.1 }
[[classes.t.nodes]]
id = "lookup"
kind = "tool"
tool = "lookup"
timeout = "2s"
fan_out = { count = { dist = "constant", value = 3 } }
"#;
    let (r, log) = run_logged(text);
    let c = r.class("t").expect("class");
    assert_eq!((c.completed, c.failed), (0, c.arrived));
    assert_eq!(log.len() as u64, 3 * c.arrived);
    assert!(
        log.iter()
            .all(|h| h.finished.0 - h.submitted.0 == 2_000_000_000),
        "every call stops at its caller's deadline"
    );
    let tool = &r.tools[0];
    assert_eq!((tool.calls, tool.aborted), (3 * c.arrived, 3 * c.arrived));
    // Billed: exactly the calls that got the slot before their caller gave up. That is
    // one per workflow: its first call finds the slot free, or freed at the previous
    // workflow's deadline, which is before its own; the other two wait for the slot
    // until the deadline the three share, and stop there, never sent.
    let sent = log.iter().filter(|h| h.started < h.finished).count() as u64;
    assert_eq!(sent, c.arrived);
    assert!((tool.usd - sent as f64 * 0.01).abs() < 1e-9, "{}", tool.usd);
    let logged: f64 = log.iter().map(|h| h.usd).sum();
    assert!((logged - tool.usd).abs() < 1e-9);
    // One call at a time, and never one whose caller had left.
    let mut ran: Vec<_> = log.iter().filter(|h| h.started < h.finished).collect();
    ran.sort_by_key(|h| h.started);
    for w in ran.windows(2) {
        assert!(w[1].started >= w[0].finished, "one call at a time");
    }

    // Under `continue` each call that starts runs its 3 s, every call is paid, and
    // calls wait at the bulkhead well past their callers' 2 s.
    let (r2, log2) = run_logged(&text.replace("on_timeout = \"abort\"", ""));
    let tool2 = &r2.tools[0];
    assert_eq!(tool2.aborted, 0);
    assert!(
        log2.iter()
            .all(|h| h.finished.0 - h.started.0 == 3_000_000_000)
    );
    assert!((tool2.usd - tool2.calls as f64 * 0.01).abs() < 1e-9);
    let max_wait = log2
        .iter()
        .map(|h| (h.started.0 - h.submitted.0) as f64 / 1e9)
        .fold(0.0, f64::max);
    assert!(max_wait >= 6.0, "max wait at the bulkhead {max_wait:.1}s");
    eprintln!(
        "tool abort: {} workflows, {} calls, {sent} sent (${:.2}); continue: ${:.2}, max wait {max_wait:.1}s",
        c.arrived, tool.calls, tool.usd, tool2.usd
    );
}

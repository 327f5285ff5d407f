//! The bundled scenarios tell the stories the docs claim. These tests pin the shape of
//! each story (which way and roughly how far each figure moves), not exact numbers.

use crate::load_scenario;
use sim_core::Summary;
use std::path::Path;

fn run(file: &str, sets: &[&str]) -> Summary {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let loaded = load_scenario(&path, &sets).unwrap_or_else(|e| panic!("{e}"));
    crate::simulate(&loaded.scenario, None).summary()
}

fn p99(s: &Summary, class: &str) -> f64 {
    s.classes[class].latency_s.p99.unwrap_or(f64::INFINITY)
}

#[test]
fn month_end_fan_out_cliff_and_its_three_fixes() {
    let f = "scenarios/month-end.toml";
    let normal = run(f, &["classes.claims.bursts=[]"]);
    let month_end = run(f, &[]);
    let waves = run(f, &["classes.claims.nodes.1.fan_out.wave=6"]);
    let compact = run(f, &["classes.claims.nodes.3.enabled=true"]);
    let batch = run(
        f,
        &[
            "classes.claims.nodes.0.pool=batch",
            "classes.claims.nodes.1.pool=batch",
            "classes.claims.nodes.4.pool=batch",
        ],
    );
    for s in [&normal, &month_end, &waves, &compact, &batch] {
        for c in s.classes.values() {
            assert_eq!(
                c.arrived,
                c.completed + c.failed + c.rejected + c.abandoned + c.in_flight
            );
        }
    }
    // The cliff: interactive p99 more than triples and misses its SLO; claims p99 too.
    assert!(p99(&month_end, "chat") > 3.0 * p99(&normal, "chat"));
    assert!(month_end.classes["chat"].slo_attainment < Some(0.95));
    assert!(p99(&month_end, "claims") > 3.0 * p99(&normal, "claims"));
    // Fix 1, waves of 6: smooths the burst for chat (claims pay with their own latency).
    assert!(p99(&waves, "chat") < 0.7 * p99(&month_end, "chat"));
    assert!(p99(&waves, "claims") > p99(&month_end, "claims"));
    // Fix 2, compaction before the coordinator re-enters: less prefill, so both classes
    // get faster and claims get cheaper.
    assert!(p99(&compact, "chat") < 0.7 * p99(&month_end, "chat"));
    assert!(p99(&compact, "claims") < 0.6 * p99(&month_end, "claims"));
    let usd = |s: &Summary| {
        s.classes["claims"]
            .usd_per_outcome
            .mean
            .unwrap_or(f64::INFINITY)
    };
    assert!(usd(&compact) < 0.9 * usd(&month_end));
    // Fix 3, reconciliation on its own batch lane: chat is back to a normal day.
    assert!((p99(&batch, "chat") / p99(&normal, "chat") - 1.0).abs() < 0.05);
}

#[test]
fn h100_pool_has_lower_p99_than_a100_at_equal_load() {
    let f = "scenarios/gpu-pool.toml";
    let a100 = run(f, &[]);
    let h100 = run(f, &["classes.chat.nodes.0.pool=h100"]);
    // Same arrivals and token draws (common random numbers): equal load.
    assert_eq!(a100.classes["chat"].arrived, h100.classes["chat"].arrived);
    assert!(
        p99(&h100, "chat") < 0.8 * p99(&a100, "chat"),
        "{} vs {}",
        p99(&h100, "chat"),
        p99(&a100, "chat")
    );
    let llm = |s: &Summary, p: &str| {
        s.pools[p]
            .llm
            .clone()
            .expect("a GPU pool reports LLM figures")
    };
    let (a, h) = (llm(&a100, "a100"), llm(&h100, "h100"));
    assert!(h.ttft_s.p99 < a.ttft_s.p99 && h.tpot_s.mean < a.tpot_s.mean);
    assert!(h.replicas.batch_size_mean < a.replicas.batch_size_mean);
    assert!(
        h.replicas.prefix_hit_rate > 0.3,
        "the 800-token system prompt is cached"
    );
}

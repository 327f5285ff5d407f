//! Capacity figures of GPU pools for `factorysim check`: how many tokens and sequences
//! the KV cache holds, the decode throughput ceiling, and the concurrency the offered
//! load needs by Little's law (arrival rate x (TTFT + output tokens x TPOT), not
//! arrival rate x TTFT).

use sim_core::gpu::perf::decode_tokens_per_sec;
use sim_core::scenario::{Scenario, expected_tokens, expected_visits};
use std::fmt::Write;

/// Offered LLM load on one GPU pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuPoolLoad {
    pub pool: String,
    pub replicas: u32,
    /// KV capacity of one replica, tokens.
    pub kv_tokens_per_replica: u64,
    /// Hops per second sent to the pool.
    pub hop_rate_per_s: f64,
    /// Mean prompt and output tokens of those hops.
    pub mean_input: f64,
    pub mean_output: f64,
    /// Sequences the pool's KV cache holds at the mean context (prompt + output / 2),
    /// over all replicas: KV tokens per replica / mean context x replicas.
    pub kv_sequences: f64,
    /// Sequences the scheduler lets run at once: `max_num_seqs` x replicas.
    pub max_seqs: u64,
    /// Decode tokens per second of the pool with every replica at its largest batch.
    pub decode_ceiling_tok_s: f64,
    /// Solo-request TTFT and TPOT from the performance model.
    pub ttft_s: f64,
    pub tpot_s: f64,
    /// Little's law: sequences in flight the load needs.
    pub needed_concurrency: f64,
}

/// One entry per GPU pool.
pub fn gpu_pool_loads(sc: &Scenario) -> Vec<GpuPoolLoad> {
    let mut out = Vec::new();
    for (pi, pool) in sc.pools.iter().enumerate() {
        let Some(g) = &pool.gpu else { continue };
        let (mut rate, mut inp, mut outp) = (0.0, 0.0, 0.0);
        for (ci, c) in sc.classes.iter().enumerate() {
            let r = c.mean_rate_per_s(sc.horizon) * c.workload_share(sc);
            let visits = expected_visits(&c.graph);
            let tokens = expected_tokens(&c.graph, &sc.tools);
            for (i, n) in c.graph.nodes.iter().enumerate() {
                if n.enabled && sc.a_priori_pool(ci, n) == Some(pi) {
                    let v = r * visits[i];
                    rate += v;
                    inp += v * tokens[i].input;
                    outp += v * tokens[i].output;
                }
            }
        }
        let (mean_input, mean_output) = if rate > 0.0 {
            (inp / rate, outp / rate)
        } else {
            (0.0, 0.0)
        };
        let context = (mean_input + mean_output / 2.0).max(1.0);
        let kv_per_replica = g.kv_tokens as f64 / context;
        // Decode runs at most max_num_seqs sequences, and no more than the cache holds.
        let per_replica_batch = kv_per_replica.min(g.config.max_num_seqs as f64);
        let (prefill, decode) = g.solo_latency(
            mean_input.round() as u64,
            mean_output.round().max(1.0) as u64,
        );
        let ttft = prefill.as_secs_f64();
        let tpot = if mean_output > 1.0 {
            decode.as_secs_f64() / (mean_output - 1.0)
        } else {
            0.0
        };
        let batch = per_replica_batch.floor().max(1.0) as u32;
        out.push(GpuPoolLoad {
            pool: pool.name.clone(),
            replicas: pool.servers,
            kv_tokens_per_replica: g.kv_tokens,
            hop_rate_per_s: rate,
            mean_input,
            mean_output,
            kv_sequences: kv_per_replica * pool.servers as f64,
            max_seqs: g.config.max_num_seqs as u64 * pool.servers as u64,
            decode_ceiling_tok_s: decode_tokens_per_sec(
                g.perf.as_ref(),
                batch,
                context.round() as u64,
            ) * pool.servers as f64,
            ttft_s: ttft,
            tpot_s: tpot,
            needed_concurrency: rate * (ttft + mean_output * tpot),
        });
    }
    out
}

/// A node whose hops can exceed its GPU pool's context limit.
#[derive(Clone, Debug, PartialEq)]
pub struct ContextLimitRisk {
    pub class: String,
    pub node: String,
    pub pool: String,
    pub model: String,
    pub limit: u32,
    /// Mean inherited context + the largest input draw + the largest output draw (the
    /// 99.9th percentile for unbounded distributions: [`sim_core::dist::Sampler::high`]).
    pub tokens: f64,
}

/// Every (class, node, GPU pool) whose prompt + output tokens can exceed the pool's
/// model context limit: such hops fail with "request over context limit of POOL".
/// The node's first pool (`a_priori_pool`) and its escalation pool are checked.
pub fn context_limit_risks(sc: &Scenario) -> Vec<ContextLimitRisk> {
    let mut out = Vec::new();
    for (ci, c) in sc.classes.iter().enumerate() {
        let tokens = expected_tokens(&c.graph, &sc.tools);
        for (i, n) in c.graph.nodes.iter().enumerate() {
            if !n.enabled {
                continue;
            }
            let own_mean = n.input_tokens.as_ref().map_or(0.0, |s| s.mean());
            let inherited = (tokens[i].input - own_mean).max(0.0);
            let high = inherited
                + n.input_tokens.as_ref().map_or(0.0, |s| s.high()).max(1.0)
                + n.output_tokens.as_ref().map_or(0.0, |s| s.high()).max(1.0);
            let pools = sc
                .a_priori_pool(ci, n)
                .into_iter()
                .chain(n.escalate.as_ref().map(|e| e.pool));
            for p in pools {
                let pool = &sc.pools[p];
                let Some(g) = &pool.gpu else { continue };
                if high.round() > g.context_limit as f64
                    && !out.iter().any(|r: &ContextLimitRisk| {
                        r.class == c.name && r.node == n.id && r.pool == pool.name
                    })
                {
                    out.push(ContextLimitRisk {
                        class: c.name.clone(),
                        node: n.id.clone(),
                        pool: pool.name.clone(),
                        model: g.model.clone(),
                        limit: g.context_limit,
                        tokens: high,
                    });
                }
            }
        }
    }
    out
}

/// Sequences the pool can run at once (the smaller of what its KV cache holds at the
/// mean context and what `max_num_seqs` allows) over those the load needs; infinite
/// without load.
pub fn headroom(l: &GpuPoolLoad) -> f64 {
    if l.needed_concurrency > 0.0 {
        l.kv_sequences.min(l.max_seqs as f64) / l.needed_concurrency
    } else {
        f64::INFINITY
    }
}

/// The GPU section of `factorysim check` (empty when there are no GPU pools).
pub fn gpu_capacity_table(sc: &Scenario) -> String {
    let loads = gpu_pool_loads(sc);
    if loads.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\nGPU pools (KV seqs at the mean context, max seqs = max_num_seqs x replicas; solo TTFT/TPOT from the performance model; needed = rate x (TTFT + output x TPOT); headroom = min(KV seqs, max seqs) / needed)\n",
    );
    let _ = writeln!(
        s,
        "  {:<12} {:>8} {:>12} {:>10} {:>9} {:>10} {:>14} {:>10} {:>9} {:>8} {:>9}",
        "pool",
        "replicas",
        "KV tok/rep",
        "KV seqs",
        "max seqs",
        "hops/s",
        "decode tok/s",
        "TTFT",
        "TPOT",
        "needed",
        "headroom"
    );
    for l in loads {
        if l.hop_rate_per_s <= 0.0 {
            // No load: no mean context to size sequences or iterations by.
            let _ = writeln!(
                s,
                "  {:<12} {:>8} {:>12} {:>10} {:>9} {:>10.3} {:>14} {:>11} {:>9} {:>8} {:>9}",
                l.pool,
                l.replicas,
                l.kv_tokens_per_replica,
                "-",
                l.max_seqs,
                0.0,
                "-",
                "-",
                "-",
                "-",
                "-"
            );
            continue;
        }
        let headroom = headroom(&l);
        let _ = writeln!(
            s,
            "  {:<12} {:>8} {:>12} {:>10.0} {:>9} {:>10.3} {:>14.0} {:>9.0}ms {:>7.1}ms {:>8.1} {:>9}",
            l.pool,
            l.replicas,
            l.kv_tokens_per_replica,
            l.kv_sequences,
            l.max_seqs,
            l.hop_rate_per_s,
            l.decode_ceiling_tok_s,
            l.ttft_s * 1e3,
            l.tpot_s * 1e3,
            l.needed_concurrency,
            if headroom.is_finite() {
                format!("{headroom:.2}x")
            } else {
                "-".to_string()
            }
        );
        let demand = l.hop_rate_per_s * l.mean_output;
        if demand > l.decode_ceiling_tok_s {
            let _ = writeln!(
                s,
                "warning: pool {} needs {demand:.0} output tokens/s, above its decode ceiling of {:.0}",
                l.pool, l.decode_ceiling_tok_s
            );
        }
        if l.needed_concurrency > l.kv_sequences {
            let _ = writeln!(
                s,
                "warning: pool {} needs {:.0} sequences in flight but its KV cache holds about {:.0} at the mean context: expect queueing and preemption",
                l.pool, l.needed_concurrency, l.kv_sequences
            );
        }
        if l.needed_concurrency > l.max_seqs as f64 {
            let _ = writeln!(
                s,
                "warning: pool {} needs {:.0} sequences in flight but max_num_seqs lets {} run at once ({} per replica): expect queueing",
                l.pool,
                l.needed_concurrency,
                l.max_seqs,
                l.max_seqs / l.replicas.max(1) as u64
            );
        }
    }
    for r in context_limit_risks(sc) {
        let _ = writeln!(
            s,
            "warning: class {} node {} on pool {}: prompt + output tokens reach about {:.0} (mean inherited context + largest input and output draws), above {}'s context limit of {}: such hops fail with \"request over context limit of {}\"",
            r.class, r.node, r.pool, r.tokens, r.model, r.limit, r.pool
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn littles_law_uses_the_whole_request_time() {
        let text = r#"
[simulation]
horizon = "10m"
[pools.h100]
servers = 2
gpu = { model = "llama-3-8b", gpu = "h100-80gb" }
[classes.c]
arrival = { process = "poisson", rate = 4.0 }
[[classes.c.nodes]]
id = "answer"
pool = "h100"
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 200 }
"#;
        let sc = crate::parse_scenario("inline.toml", text, &[])
            .unwrap_or_else(|e| panic!("{e}"))
            .scenario;
        let l = &gpu_pool_loads(&sc)[0];
        assert_eq!((l.mean_input, l.mean_output), (1000.0, 200.0));
        assert!((l.needed_concurrency - 4.0 * (l.ttft_s + 200.0 * l.tpot_s)).abs() < 1e-9);
        // Much more than rate x TTFT alone.
        assert!(l.needed_concurrency > 20.0 * 4.0 * l.ttft_s);
        // KV: Llama-3-8B keeps 131,072 bytes per token.
        let g = sc.pools[0].gpu.as_ref().expect("gpu pool");
        assert_eq!(l.kv_tokens_per_replica, g.kv_tokens);
        assert!(l.decode_ceiling_tok_s > 1000.0);
        // KV sequences at the mean context, 1,000 + 200 / 2 = 1,100 tokens: one H100
        // holds floor((round(79.6 GiB) x 0.9 - 16,059,990,016 B) / 131,072 B) =
        // 464,346 tokens, so 2 x 464,346 / 1,100 = 844.27 sequences; not the
        // max_num_seqs cap, 2 x 256 = 512, reported beside it.
        assert_eq!(l.kv_tokens_per_replica, 464_346);
        assert!(
            (l.kv_sequences - 2.0 * 464_346.0 / 1_100.0).abs() < 1e-9,
            "{}",
            l.kv_sequences
        );
        assert_eq!(l.max_seqs, 512);
        // The cap binds: headroom = 512 / needed.
        assert!((headroom(l) - 512.0 / l.needed_concurrency).abs() < 1e-12);
        let text_out = gpu_capacity_table(&sc);
        assert!(text_out.contains("       844       512 "), "{text_out}");
        assert!(
            text_out.contains(&format!("{:.2}x", headroom(l))),
            "{text_out}"
        );
        assert!(!text_out.contains("warning"), "{text_out}");

        // With max_num_seqs = 2 the cap (4) is below what the load needs while the KV
        // cache still holds 844: the warning names the cap, not the cache.
        let capped = text.replace(
            r#"gpu = "h100-80gb" }"#,
            r#"gpu = "h100-80gb", max_num_seqs = 2 }"#,
        );
        let sc = crate::parse_scenario("inline.toml", &capped, &[])
            .unwrap_or_else(|e| panic!("{e}"))
            .scenario;
        let l = &gpu_pool_loads(&sc)[0];
        assert_eq!(l.max_seqs, 4);
        assert!(l.needed_concurrency > 4.0 && l.needed_concurrency < 844.0);
        let out = gpu_capacity_table(&sc);
        assert!(
            out.contains("max_num_seqs lets 4 run at once (2 per replica)"),
            "{out}"
        );
        assert!(!out.contains("KV cache holds"), "{out}");
        assert!(text_out.contains("h100") && text_out.contains("needed"));
        assert!(!text_out.contains("context limit"), "{text_out}");
    }

    #[test]
    fn check_warns_when_tokens_can_exceed_the_context_limit() {
        // Llama-3-8B: 8,192 tokens. `plan` alone reaches at most 3,000 + 200 = 3,200;
        // `answer` inherits plan's mean context 2,000 + 100 = 2,100 and adds up to
        // 5,900 + 300: 8,300 > 8,192. `short` (2,100 + 5,000 + 192 = 7,292) stays
        // under.
        let text = r#"
[simulation]
horizon = "10m"
[pools.h100]
servers = 1
gpu = { model = "llama-3-8b", gpu = "h100-80gb" }
[classes.c]
arrival = { process = "poisson", rate = 0.1 }
[[classes.c.nodes]]
id = "plan"
pool = "h100"
input_tokens = { dist = "uniform", low = 1000, high = 3000 }
output_tokens = { dist = "empirical", values = [0, 200] }
[[classes.c.nodes]]
id = "answer"
after = ["plan"]
pool = "h100"
input_tokens = { dist = "uniform", low = 100, high = 5900 }
output_tokens = { dist = "constant", value = 300 }
[[classes.c.nodes]]
id = "short"
after = ["plan"]
pool = "h100"
input_tokens = { dist = "constant", value = 5000 }
output_tokens = { dist = "constant", value = 192 }
"#;
        let sc = crate::parse_scenario("inline.toml", text, &[])
            .unwrap_or_else(|e| panic!("{e}"))
            .scenario;
        let risks = context_limit_risks(&sc);
        assert_eq!(risks.len(), 1, "{risks:?}");
        let r = &risks[0];
        assert_eq!(
            (r.node.as_str(), r.pool.as_str(), r.limit),
            ("answer", "h100", 8192)
        );
        assert!((r.tokens - 8300.0).abs() < 1e-6, "{}", r.tokens);
        let out = gpu_capacity_table(&sc);
        assert!(
            out.contains(
                "warning: class c node answer on pool h100: prompt + output tokens reach about 8300"
            ) && out.contains("llama-3-8b's context limit of 8192"),
            "{out}"
        );
        // Lowering answer's largest prompt by 108 tokens (8,192 exactly) clears it.
        let sc = crate::parse_scenario("inline.toml", &text.replace("5900", "5792"), &[])
            .unwrap_or_else(|e| panic!("{e}"))
            .scenario;
        assert_eq!(context_limit_risks(&sc), vec![]);
    }
}

//! Capacity figures of GPU pools for `factorysim check`: how many tokens and sequences
//! the KV cache holds, the decode throughput ceiling, and the concurrency the offered
//! load needs by Little's law (arrival rate x (TTFT + output tokens x TPOT), not
//! arrival rate x TTFT).

use sim_core::gpu::perf::decode_tokens_per_sec;
use sim_core::scenario::{Scenario, expected_tokens};
use sim_core::time::{SimDuration, SimTime};
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
    /// TPOT at the batch the load itself makes (about `needed_concurrency / replicas`
    /// sequences decoding at once on each replica, at most what fits): a bigger batch
    /// makes every step slower.
    pub batch_tpot_s: f64,
    /// Little's law: sequences in flight the load needs, rate x (TTFT + output x
    /// `batch_tpot_s`), solved as a fixed point.
    pub needed_concurrency: f64,
    /// The most requests per second one replica finishes in steady state, over decode
    /// batch sizes b up to what fits: each iteration decodes b tokens and prefills the
    /// uncached prompts of the requests it admits (Poisson, b / output on average),
    /// within the token budget, its time averaged over that count.
    pub requests_per_replica_s: f64,
    /// Offered hops / (replicas x `requests_per_replica_s`): at 1 or more the pool
    /// cannot keep up. Optimistic (best batching, shared prefixes always cached, mean
    /// tokens), so queues grow long somewhat below 1.
    pub gpu_load: f64,
}

/// Model hops sent to one pool: their rate and mean tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HopTokens {
    /// Hops per second.
    pub rate: f64,
    pub mean_input: f64,
    pub mean_output: f64,
    /// Mean shared-prefix tokens of those hops (at most their prompt).
    pub mean_shared_prefix: f64,
    /// E[output^2] of those hops (the square of the mean where the distribution's is
    /// not known): long answers stay in the batch longer.
    pub mean_output_sq: f64,
}

/// The model hops the classes send to pool `pi` a priori (pinned, or the first pool
/// of the chain a tier's rules choose), with fan-out and loops counted.
pub fn offered_tokens(sc: &Scenario, pi: usize) -> HopTokens {
    offered_tokens_at(sc, pi, None)
}

/// As [`offered_tokens`], at instant `at` (rates and fan-out in force then), or
/// averaged over the horizon (`None`).
pub fn offered_tokens_at(sc: &Scenario, pi: usize, at: Option<SimTime>) -> HopTokens {
    let (mut rate, mut inp, mut outp, mut shared, mut out_sq) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (ci, c) in sc.classes.iter().enumerate() {
        let r = sc.class_rate(ci, at);
        let (visits, tokens) = sc.class_expectations(ci, at);
        // A replayed request's entry hop asks for its recorded tokens.
        let recorded = c.recorded_entry_tokens();
        for (i, n) in c.graph.nodes.iter().enumerate() {
            let (ti, to) = match recorded {
                Some(t) if i == 0 => t,
                _ => (tokens[i].input, tokens[i].output),
            };
            if n.enabled && sc.a_priori_pool(ci, n, ti) == Some(pi) {
                let v = r * visits[i];
                rate += v;
                inp += v * ti;
                outp += v * to;
                shared += v * (n.shared_prefix_tokens as f64).min(ti);
                // A replayed entry hop's spread is unknown: its mean squared.
                out_sq += v * match (&n.output_tokens, recorded) {
                    (_, Some(_)) if i == 0 => to * to,
                    (Some(s), _) => s.mean_square(),
                    (None, _) => to * to,
                };
            }
        }
    }
    if rate > 0.0 {
        HopTokens {
            rate,
            mean_input: inp / rate,
            mean_output: outp / rate,
            mean_shared_prefix: shared / rate,
            mean_output_sq: out_sq / rate,
        }
    } else {
        HopTokens::default()
    }
}

/// One entry per GPU pool, for the load averaged over the horizon.
pub fn gpu_pool_loads(sc: &Scenario) -> Vec<GpuPoolLoad> {
    gpu_pool_loads_at(sc, None)
}

/// As [`gpu_pool_loads`], for the load offered at instant `at` (`None`: averaged).
pub fn gpu_pool_loads_at(sc: &Scenario, at: Option<SimTime>) -> Vec<GpuPoolLoad> {
    let mut out = Vec::new();
    for (pi, pool) in sc.pools.iter().enumerate() {
        let Some(g) = &pool.gpu else { continue };
        let HopTokens {
            rate,
            mean_input,
            mean_output,
            mean_shared_prefix,
            mean_output_sq,
        } = offered_tokens_at(sc, pi, at);
        // The mean context of a running sequence: its prompt plus half its answer,
        // weighted by how long it runs (E[out^2] / 2 E[out]: long answers hold their
        // seat longer).
        let half_answer = if mean_output > 0.0 {
            mean_output_sq.max(mean_output * mean_output) / (2.0 * mean_output)
        } else {
            0.0
        };
        let context = (mean_input + half_answer).max(1.0);
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
        let replicas = pool.planning_servers();
        let decode_ceiling_tok_s =
            decode_tokens_per_sec(g.perf.as_ref(), batch, context.round() as u64) * replicas as f64;
        // TPOT when each replica decodes `b` sequences at once.
        let tpot_at = |b: f64| {
            let b = b.clamp(1.0, batch as f64).round() as u32;
            let r = decode_tokens_per_sec(g.perf.as_ref(), b, context.round() as u64);
            if r > 0.0 { b as f64 / r } else { tpot }
        };
        let mut needed = rate * (ttft + mean_output * tpot);
        let mut batch_tpot = tpot;
        if replicas > 0 && mean_output > 1.0 {
            for _ in 0..100 {
                batch_tpot = tpot_at(needed / replicas as f64).max(tpot);
                let next = rate * (ttft + mean_output * batch_tpot);
                let converged = (next - needed).abs() <= 1e-9 * next.max(1.0);
                needed = next;
                if converged {
                    break;
                }
            }
        }
        // The most requests a replica can finish per second in steady state: with b
        // sequences decoding, each iteration yields b output tokens (b / output
        // requests' worth) and must also prefill as many requests' prompts (b x input
        // / output tokens), within the iteration's token budget.
        let per_request_out = mean_output.max(1.0);
        // A role's shared prefix is prefilled once and then hit in the prefix cache
        // (assumed hot: a steady load keeps it there).
        let cached = if g.config.prefix_caching && rate > 0.0 {
            mean_shared_prefix
        } else {
            0.0
        };
        let uncached_input = (mean_input - cached).max(0.0);
        let budget = g.config.max_batched_tokens as f64;
        let mut best = 0.0f64;
        for b in 1..=batch {
            let prompts = b as f64 / per_request_out;
            let prefill = uncached_input * prompts;
            if b as f64 + prefill > budget && b > 1 {
                break;
            }
            // Prompts do not arrive one per iteration like clockwork: the number an
            // iteration admits is about Poisson(prompts), and an iteration costs the max
            // of its compute and memory time, so the mean iteration is longer than the
            // iteration of the mean (Jensen). Expected over k admitted prompts, each
            // iteration's prefill capped at what the token budget leaves.
            let mut t = 0.0;
            let mut p_k = (-prompts).exp();
            let mut mass = 0.0;
            let room = (budget - b as f64).max(0.0);
            for k in 0..=64u32 {
                let shape = sim_core::gpu::IterationShape {
                    prefill_tokens: (uncached_input * k as f64).min(room).round() as u64,
                    prefill_seqs: k,
                    prefill_context_tokens: (cached * k as f64).round() as u64,
                    decode_seqs: b,
                    decode_context_tokens: b as u64 * context.round() as u64,
                };
                t += p_k * g.perf.iteration_time(&shape).as_secs_f64();
                mass += p_k;
                if mass > 1.0 - 1e-9 {
                    break;
                }
                p_k *= prompts / (k + 1) as f64;
            }
            let t = t / mass.max(f64::MIN_POSITIVE);
            if t > 0.0 {
                best = best.max(b as f64 / per_request_out / t);
            }
        }
        let gpu_load = if replicas > 0 && best > 0.0 {
            rate / (best * replicas as f64)
        } else if rate > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        out.push(GpuPoolLoad {
            pool: pool.name.clone(),
            replicas,
            kv_tokens_per_replica: g.kv_tokens,
            hop_rate_per_s: rate,
            mean_input,
            mean_output,
            kv_sequences: kv_per_replica * replicas as f64,
            max_seqs: g.config.max_num_seqs as u64 * replicas as u64,
            decode_ceiling_tok_s,
            ttft_s: ttft,
            tpot_s: tpot,
            batch_tpot_s: batch_tpot,
            needed_concurrency: needed,
            requests_per_replica_s: best,
            gpu_load,
        });
    }
    out
}

/// A node whose hops can exceed the context limit of a GPU pool they can reach.
#[derive(Clone, Debug, PartialEq)]
pub struct ContextLimitRisk {
    pub class: String,
    pub node: String,
    pub pool: String,
    /// How the node's hops reach the pool, when it is not the node's own pinned pool:
    /// "pool 2 of tier chat's chain", "its escalation pool", ...
    pub via: Option<String>,
    pub model: String,
    pub limit: u32,
    /// Mean inherited context + the largest input draw + the largest output draw (the
    /// 99.9th percentile for unbounded distributions: [`sim_core::dist::Sampler::high`]).
    pub tokens: f64,
    /// The pools after this one in the tier chain, where a refused hop falls back
    /// (degraded); empty when the hop fails there (pinned, last of its chain, or an
    /// escalation).
    pub falls_back_to: Vec<String>,
}

/// A pool a node's hops can be sent to, how, and where they go if it refuses them.
struct Reach {
    pool: usize,
    via: Option<String>,
    falls_back_to: Vec<usize>,
}

/// Every pool a model node of class `ci` can send a hop to: its pinned pool, or every
/// pool of every chain its tier's routing rules can pick (a router or a fallback can
/// use any pool of a chain, not only the first); then its escalation pool, or each pool
/// of each tier its tier's cascade reaches that can take the step (the first, and a
/// later one when every pool before it has outages: a step goes to the first pool up).
fn reachable_pools(sc: &Scenario, ci: usize, n: &sim_core::workflow::Node) -> Vec<Reach> {
    let mut out = Vec::new();
    if let Some(p) = n.pool {
        out.push(Reach {
            pool: p,
            via: None,
            falls_back_to: Vec::new(),
        });
    } else if let Some(t) = n.tier {
        let c = &sc.classes[ci];
        // The first matching rule depends on the budget left, which only falls during a
        // workflow: the budgets just below each rule's threshold, and the whole budget,
        // give every chain a hop can be routed on.
        let mut budgets = vec![c.budget_usd];
        if let Some(b) = c.budget_usd {
            for x in sc.routing_rules.iter().filter_map(|r| r.budget_below) {
                let below = x.next_down();
                if below < b {
                    budgets.push(Some(below));
                }
            }
        }
        // Likewise prompt sizes: none, and each rule's `min_input_tokens`.
        let mut prompts = vec![0u64];
        prompts.extend(sc.routing_rules.iter().filter_map(|r| r.min_input_tokens));
        let mut chains: Vec<(Option<usize>, &[usize])> = Vec::new();
        for b in budgets {
            for &input_tokens in &prompts {
                let hop = sim_core::scenario::HopRouting {
                    tier: t,
                    budget_left: b,
                    role: &n.role,
                    input_tokens,
                };
                let rule = sc.routing_rules.iter().position(|r| r.matches(ci, c, hop));
                let chain = sc.tier_chain(ci, hop);
                if !chains.iter().any(|(_, ch)| *ch == chain) {
                    chains.push((rule, chain));
                }
            }
        }
        for (rule, chain) in chains {
            let whose = match rule {
                Some(i) => format!("routing.rules[{i}]'s chain for tier {}", sc.tiers[t].name),
                None => format!("tier {}'s chain", sc.tiers[t].name),
            };
            for (k, &p) in chain.iter().enumerate() {
                out.push(Reach {
                    pool: p,
                    via: Some(format!("pool {} of {} in {whose}", k + 1, chain.len())),
                    falls_back_to: chain[k + 1..].to_vec(),
                });
            }
        }
    }
    // A node's own `escalate` replaces its tier's cascade; a step never taken (probability
    // 0) reaches nothing.
    if let Some(e) = n.escalate.as_ref().filter(|e| e.probability > 0.0) {
        out.push(Reach {
            pool: e.pool,
            via: Some("its escalation pool".into()),
            falls_back_to: Vec::new(),
        });
    } else if n.escalate.is_none()
        && let Some(t) = n.tier
    {
        for (p, to) in sc.cascade_from(t) {
            if p <= 0.0 {
                break;
            }
            let chain = &sc.tiers[to].pools;
            for (k, &q) in chain.iter().enumerate() {
                if chain[..k].iter().all(|&e| !sc.pools[e].outages.is_empty()) {
                    out.push(Reach {
                        pool: q,
                        via: Some(format!(
                            "an escalation to tier {} in its tier's cascade",
                            sc.tiers[to].name
                        )),
                        falls_back_to: Vec::new(),
                    });
                }
            }
        }
    }
    out
}

/// Every (class, node, GPU pool) where the node's prompt + output tokens can exceed the
/// pool's model context limit, over every pool the node's hops can reach
/// ([`reachable_pools`]): there such hops are refused ("request over context limit of
/// POOL"), and fail unless a tier chain has pools after it. One entry per pool; where
/// a pool is reached several ways, one where the hop fails wins.
pub fn context_limit_risks(sc: &Scenario) -> Vec<ContextLimitRisk> {
    let mut out: Vec<ContextLimitRisk> = Vec::new();
    for (ci, c) in sc.classes.iter().enumerate() {
        // The peak regime (a month-end burst's fan-out) sets the largest contexts.
        let tokens = expected_tokens(&c.graph, &sc.tools, &sc.fan_out_peak_means(ci));
        for (i, n) in c.graph.nodes.iter().enumerate() {
            if !n.enabled {
                continue;
            }
            let own_mean = n.input_tokens.as_ref().map_or(0.0, |s| s.mean());
            let inherited = (tokens[i].input - own_mean).max(0.0);
            let high = inherited
                + n.input_tokens.as_ref().map_or(0.0, |s| s.high()).max(1.0)
                + n.output_tokens.as_ref().map_or(0.0, |s| s.high()).max(1.0);
            for r in reachable_pools(sc, ci, n) {
                let pool = &sc.pools[r.pool];
                let Some(g) = &pool.gpu else { continue };
                if high.round() <= g.context_limit as f64 {
                    continue;
                }
                let risk = ContextLimitRisk {
                    class: c.name.clone(),
                    node: n.id.clone(),
                    pool: pool.name.clone(),
                    via: r.via,
                    model: g.model.clone(),
                    limit: g.context_limit,
                    tokens: high,
                    falls_back_to: r
                        .falls_back_to
                        .iter()
                        .map(|&q| sc.pools[q].name.clone())
                        .collect(),
                };
                match out
                    .iter_mut()
                    .find(|x| x.class == c.name && x.node == n.id && x.pool == pool.name)
                {
                    None => out.push(risk),
                    Some(x) if !x.falls_back_to.is_empty() && risk.falls_back_to.is_empty() => {
                        *x = risk
                    }
                    Some(_) => {}
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

/// `check`'s capacity lines per GPU pool: its reserved replicas and what a slot must
/// earn, and, for a pool that boots replicas at run time (an autoscaler or spot
/// replacements), the boot the run uses and where it comes from.
pub fn boot_and_reservation_lines(sc: &Scenario) -> String {
    let mut s = String::new();
    for p in &sc.pools {
        let Some(g) = &p.gpu else { continue };
        let load = if g.model_load > SimDuration::ZERO {
            format!(
                "model load {} ({:.1} GB per GPU)",
                g.model_load,
                g.weight_bytes_per_gpu as f64 / 1e9
            )
        } else {
            "model load not modelled (set gpu.model_load_gb_per_s)".to_string()
        };
        let profile = format!(
            "replica cold start {} = node boot {} ({}) + {load}",
            g.cold_start(),
            g.node_boot,
            g.gpu
        );
        let mut uses = Vec::new();
        if let Some(a) = &p.autoscale {
            uses.push(format!("autoscaler boots take {}", a.boot()));
        }
        if let Some(sp) = &p.spot
            && sp.replace
        {
            uses.push(format!("spot replacements boot in {}", sp.boot));
        }
        if let Some(r) = p.reserved
            && p.usd_per_server_hour <= r.usd_per_server_hour
        {
            let _ = writeln!(
                s,
                "warning: pool {}: its {} reserved replicas cost ${:.2}/h, not less than on demand (${:.2}/h): the reservation can only add cost",
                p.name, r.servers, r.usd_per_server_hour, p.usd_per_server_hour
            );
        } else if let Some(r) = p.reserved {
            // The commitment is paid whatever runs: say what a slot must earn.
            let upfront = r.upfront_per_hour();
            let price = if upfront > 0.0 {
                format!(
                    "${:.2}/h (${:.2} hourly + ${:.2} upfront over {} = ${upfront:.2}/h)",
                    r.usd_per_server_hour,
                    r.usd_per_server_hour - upfront,
                    r.upfront_usd,
                    r.term.unwrap_or(SimDuration::ZERO)
                )
            } else {
                format!("${:.2}/h", r.usd_per_server_hour)
            };
            let _ = writeln!(
                s,
                "  pool {}: {} reserved replicas at {price} (${:.2} a day, used or not) cover as many on-demand ones (${:.2}/h); a slot pays off when a replica runs on it more than {:.0}% of the time",
                p.name,
                r.servers,
                r.servers as f64 * r.usd_per_server_hour * 24.0,
                p.usd_per_server_hour,
                100.0 * r.usd_per_server_hour / p.usd_per_server_hour
            );
        }
        if uses.is_empty() {
            continue;
        }
        let _ = writeln!(s, "  pool {}: {profile}; {}", p.name, uses.join(", "));
    }
    s
}

/// `gpu_load` from which `check` warns. The load is optimistic: on
/// scenarios/gpu-pool.toml the queue grows without bound at 40 hops/s (load 1.01) and
/// slowly at 34/s (0.86), and holds at 28/s (0.71).
pub const NEAR_SATURATION: f64 = 0.85;

/// The GPU section of `factorysim check` (empty when there are no GPU pools).
pub fn gpu_capacity_table(sc: &Scenario) -> String {
    let loads = gpu_pool_loads(sc);
    if loads.is_empty() {
        return String::new();
    }
    // Where the load changes over time, the largest instantaneous load per GPU pool
    // and when (shown where it stands above the average).
    let average: Vec<f64> = loads.iter().map(|l| l.gpu_load).collect();
    let peaks = sc.peaks_above(&average, |t| {
        gpu_pool_loads_at(sc, Some(t))
            .into_iter()
            .map(|l| (l.hop_rate_per_s > 0.0).then_some(l.gpu_load))
            .collect()
    });
    let show_peak = peaks.iter().any(Option::is_some);
    let mut s = String::from(
        "\nGPU pools (KV seqs at the mean context, max seqs = max_num_seqs x replicas; solo TTFT/TPOT from the performance model, batch TPOT at the batch the load makes; needed = rate x (TTFT + output x batch TPOT); headroom = min(KV seqs, max seqs) / needed; load = hops/s over what the replicas finish at the best batching, prefilling uncached prompts as they decode)\n",
    );
    let _ = writeln!(
        s,
        "  {:<12} {:>8} {:>12} {:>10} {:>9} {:>10} {:>14} {:>10} {:>9} {:>10} {:>8} {:>9} {:>6}",
        "pool",
        "replicas",
        "KV tok/rep",
        "KV seqs",
        "max seqs",
        "hops/s",
        "decode tok/s",
        "TTFT",
        "TPOT",
        "batch TPOT",
        "needed",
        "headroom",
        "load"
    );
    if show_peak {
        s.pop();
        s.push_str(&format!(" {:>16}\n", "peak load"));
    }
    for (l, peak) in loads.into_iter().zip(peaks) {
        let peak_cell = |s: &mut String| {
            if show_peak {
                s.pop();
                let cell = peak.map_or("-".to_string(), |(p, t)| format!("{p:.2} at {t}"));
                s.push_str(&format!(" {cell:>16}\n"));
            }
        };
        if l.hop_rate_per_s <= 0.0 {
            // No load: no mean context to size sequences or iterations by.
            let _ = writeln!(
                s,
                "  {:<12} {:>8} {:>12} {:>10} {:>9} {:>10.3} {:>14} {:>10} {:>9} {:>10} {:>8} {:>9} {:>6}",
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
                "-",
                "-",
                "-"
            );
            peak_cell(&mut s);
            continue;
        }
        let headroom = headroom(&l);
        let _ = writeln!(
            s,
            "  {:<12} {:>8} {:>12} {:>10.0} {:>9} {:>10.3} {:>14.0} {:>8.0}ms {:>7.1}ms {:>8.1}ms {:>8.1} {:>9} {:>6.2}",
            l.pool,
            l.replicas,
            l.kv_tokens_per_replica,
            l.kv_sequences,
            l.max_seqs,
            l.hop_rate_per_s,
            l.decode_ceiling_tok_s,
            l.ttft_s * 1e3,
            l.tpot_s * 1e3,
            l.batch_tpot_s * 1e3,
            l.needed_concurrency,
            if headroom.is_finite() {
                format!("{headroom:.2}x")
            } else {
                "-".to_string()
            },
            l.gpu_load
        );
        peak_cell(&mut s);
        if let Some((p, t)) = peak
            && p >= 1.0
            && l.gpu_load < 1.0
        {
            // An autoscaled pool can grow into its peak: the load at its max says
            // whether it can, given boot time to get there.
            let max = sc
                .pools
                .iter()
                .find(|q| q.name == l.pool)
                .and_then(|q| q.autoscale.as_ref())
                .map(|a| a.max)
                .filter(|&m| m > l.replicas);
            match max {
                Some(m) if p * l.replicas as f64 / (m as f64) < 1.0 => {
                    let _ = writeln!(
                        s,
                        "note: pool {}'s peak load {p:.2} (from {t}) is for the {} replica{} it starts with; at the autoscaler's max of {m} it is {:.2}, if replicas boot in time",
                        l.pool,
                        l.replicas,
                        if l.replicas == 1 { "" } else { "s" },
                        p * l.replicas as f64 / m as f64
                    );
                }
                _ => {
                    let _ = writeln!(
                        s,
                        "warning: pool {} is overloaded at its peak (load {p:.2} from {t}, {:.2} on average): queues grow while it lasts",
                        l.pool, l.gpu_load
                    );
                }
            }
        }
        if l.gpu_load >= NEAR_SATURATION {
            let what = if l.gpu_load >= 1.0 {
                "is overloaded: queues grow without bound"
            } else {
                "is near saturation (the estimate is optimistic): expect long queues"
            };
            let _ = writeln!(
                s,
                "warning: pool {} {what} (load {:.2}: {:.3} hops/s against about {:.3}/s per replica x {} at the best batching)",
                l.pool, l.gpu_load, l.hop_rate_per_s, l.requests_per_replica_s, l.replicas
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
    s.push_str(&boot_and_reservation_lines(sc));
    for r in context_limit_risks(sc) {
        let via = r.via.as_ref().map_or(String::new(), |v| format!(" ({v})"));
        let then = if r.falls_back_to.is_empty() {
            format!(
                "such hops fail with \"request over context limit of {}\"",
                r.pool
            )
        } else {
            format!(
                "such hops are refused there and fall back to {} (counted degraded)",
                r.falls_back_to.join(", ")
            )
        };
        let _ = writeln!(
            s,
            "warning: class {} node {} on pool {}{via}: prompt + output tokens reach about {:.0} (mean inherited context + largest input and output draws), above {}'s context limit of {}: {then}",
            r.class, r.node, r.pool, r.tokens, r.model, r.limit
        );
    }
    s
}

/// Notes for model hops that would run with one output token without saying so: an
/// enabled `llm` node with no `output_tokens` whose a-priori pool is a GPU or API pool
/// (a GPU replica and an API generate at least one token; replayed classes are left
/// out: their hops carry the recorded tokens); and for escalations to the node's own
/// pool (a redo where the hop ran, which may be meant, but is no escalation).
pub fn scenario_notes(sc: &Scenario) -> Vec<String> {
    let mut out = Vec::new();
    for (ci, c) in sc.classes.iter().enumerate() {
        if c.cohort_of.is_some()
            || matches!(c.arrival, sim_core::scenario::Arrival::Recorded { .. })
        {
            continue;
        }
        let (_, tokens) = sc.class_expectations(ci, None);
        for (i, n) in c.graph.nodes.iter().enumerate() {
            if !n.enabled
                || n.kind != sim_core::workflow::NodeKind::Llm
                || n.output_tokens.is_some()
            {
                continue;
            }
            let Some(pi) = sc.a_priori_pool(ci, n, tokens[i].input) else {
                continue;
            };
            let pool = &sc.pools[pi];
            let kind = match (&pool.gpu, &pool.api) {
                (Some(_), _) => "GPU",
                (_, Some(_)) => "API",
                _ => continue,
            };
            out.push(format!(
                "class `{}` node `{}` runs on {kind} pool `{}` with no output_tokens: each hop generates 1 token (give output_tokens to model the answer)",
                c.name, n.id, pool.name
            ));
        }
        // An escalation to the pool the hop ran on redoes it there, not on a higher tier.
        for n in c.graph.nodes.iter().filter(|n| n.enabled) {
            if let Some(e) = &n.escalate
                && n.pool == Some(e.pool)
            {
                out.push(format!(
                    "class `{}` node `{}` escalates to its own pool `{}`: the escalated redo runs where the hop ran (name a higher tier's pool to model an escalation)",
                    c.name, n.id, sc.pools[e.pool].name
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_hop_without_output_tokens_is_noted_on_gpu_and_api_pools_only() {
        let text = |out: &str| {
            format!(
                r#"
[simulation]
horizon = "10m"
[pools.g]
servers = 1
gpu = {{ model = "llama-3-8b", gpu = "h100-80gb" }}
[pools.api]
api = {{ ttft = {{ dist = "constant", value = "300ms" }}, tpot = {{ dist = "constant", value = "5ms" }} }}
[pools.q]
servers = 1
service = {{ dist = "constant", value = "1s" }}
[classes.c]
arrival = {{ process = "poisson", rate = 0.5 }}
[[classes.c.nodes]]
id = "plan"
pool = "g"
input_tokens = {{ dist = "constant", value = 100 }}
{out}
[[classes.c.nodes]]
id = "ask"
pool = "api"
after = ["plan"]
input_tokens = {{ dist = "constant", value = 100 }}
[[classes.c.nodes]]
id = "queue"
pool = "q"
after = ["ask"]
"#
            )
        };
        let loaded =
            crate::parse_scenario("t.toml", &text(""), &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            loaded.notes,
            vec![
                "class `c` node `plan` runs on GPU pool `g` with no output_tokens: each hop generates 1 token (give output_tokens to model the answer)".to_string(),
                "class `c` node `ask` runs on API pool `api` with no output_tokens: each hop generates 1 token (give output_tokens to model the answer)".to_string(),
            ]
        );
        let loaded = crate::parse_scenario(
            "t.toml",
            &text(r#"output_tokens = { dist = "constant", value = 50 }"#),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.notes.len(), 1, "{:?}", loaded.notes);
        assert!(loaded.notes[0].contains("node `ask`"));
        // An escalation to the node's own pool is said too.
        let loaded = crate::parse_scenario(
            "t.toml",
            &text(
                r#"output_tokens = { dist = "constant", value = 50 }
escalate = { probability = 0.1, pool = "g" }"#,
            ),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            loaded
                .notes
                .iter()
                .any(|n| n.contains("node `plan` escalates to its own pool `g`")),
            "{:?}",
            loaded.notes
        );
    }

    #[test]
    fn check_states_the_cold_start_and_what_a_reserved_slot_must_earn() {
        let text = r#"
[simulation]
horizon = "10m"
[pools.g]
servers = 1
gpu = { model = "llama-3-70b", gpu = "h100-80gb", tp = 4, model_load_gb_per_s = 2.0 }
autoscale = { metric = "queue_depth", target = 8.0, min = 1, max = 8 }
reserved = { servers = 2, usd_per_server_hour = 7.8 }
[classes.c]
arrival = { process = "poisson", rate = 0.5 }
[[classes.c.nodes]]
id = "answer"
pool = "g"
"#;
        let sc = crate::parse_scenario("inline.toml", text, &[])
            .unwrap_or_else(|e| panic!("{e}"))
            .scenario;
        let lines = boot_and_reservation_lines(&sc);
        // 141.1 GB of weights over 4 GPUs at 2 GB/s; 4 x $3.00 on demand.
        assert!(
            lines.contains("replica cold start 317.638s = node boot 5m (h100-80gb) + model load 17.638s (35.3 GB per GPU); autoscaler boots take 317.638s"),
            "{lines}"
        );
        assert!(
            lines.contains("2 reserved replicas at $7.80/h ($374.40 a day, used or not) cover as many on-demand ones ($12.00/h); a slot pays off when a replica runs on it more than 65% of the time"),
            "{lines}"
        );
        // With an upfront payment the slot's price is its amortised price, said how.
        let upfront = text.replace(
            "usd_per_server_hour = 7.8",
            "usd_per_server_hour = 3.0, upfront_usd = 41610, term = \"365d\"",
        );
        let sc = crate::parse_scenario("inline.toml", &upfront, &[])
            .unwrap_or_else(|e| panic!("{e}"))
            .scenario;
        let lines = boot_and_reservation_lines(&sc);
        assert!(
            lines.contains("2 reserved replicas at $7.75/h ($3.00 hourly + $41610.00 upfront over 8760h = $4.75/h) ($372.00 a day, used or not)"),
            "{lines}"
        );
        // A reservation dearer than on demand can only add cost: said so.
        let dear = text.replace("usd_per_server_hour = 7.8", "usd_per_server_hour = 12.0");
        let sc = crate::parse_scenario("inline.toml", &dear, &[])
            .unwrap_or_else(|e| panic!("{e}"))
            .scenario;
        let lines = boot_and_reservation_lines(&sc);
        assert!(
            lines.contains("warning: pool g: its 2 reserved replicas cost $12.00/h, not less than on demand ($12.00/h)"),
            "{lines}"
        );
        assert!(!lines.contains("pays off"), "{lines}");
        // An explicit boot is the whole cold start; a fixed pool has no boot line.
        let explicit = text.replace("max = 8 }", "max = 8, boot = \"2m\" }");
        let sc = crate::parse_scenario("inline.toml", &explicit, &[])
            .unwrap_or_else(|e| panic!("{e}"))
            .scenario;
        assert!(boot_and_reservation_lines(&sc).contains("autoscaler boots take 2m"));
        let fixed = text.replace(
            "autoscale = { metric = \"queue_depth\", target = 8.0, min = 1, max = 8 }\n",
            "",
        );
        let sc = crate::parse_scenario("inline.toml", &fixed, &[])
            .unwrap_or_else(|e| panic!("{e}"))
            .scenario;
        assert!(!boot_and_reservation_lines(&sc).contains("cold start"));
    }

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
        // At the batch the load makes: slower than solo, and a fixed point of Little's law.
        assert!(l.batch_tpot_s >= l.tpot_s);
        assert!(
            (l.needed_concurrency - 4.0 * (l.ttft_s + 200.0 * l.batch_tpot_s)).abs()
                < 1e-6 * l.needed_concurrency
        );
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

    #[test]
    fn check_warns_for_every_pool_a_nodes_hops_can_reach() {
        // `short` (Llama-3-8B, 8,192 tokens) is never a node's first pool; `long` and
        // `long2` take 32,768. 10,000 + 50 tokens reach `short` only as the second pool
        // of the tier chain, through a budget rule, or through a cascade whose first pool
        // has an outage.
        let text = |tiers_and_rules: &str, budget: &str| {
            format!(
                r#"
[simulation]
horizon = "10m"
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
[pools.long]
servers = 1
gpu = {{ model = "llama-3-8b-32k", gpu = "h100-80gb" }}
[pools.long2]
servers = 1
gpu = {{ model = "llama-3-8b-32k", gpu = "h100-80gb" }}
[pools.short]
servers = 1
gpu = {{ model = "llama-3-8b", gpu = "h100-80gb" }}
{tiers_and_rules}
[classes.big]
arrival = {{ process = "poisson", rate = 0.1 }}
{budget}
[[classes.big.nodes]]
id = "answer"
tier = "chat"
input_tokens = {{ dist = "constant", value = 10000 }}
output_tokens = {{ dist = "constant", value = 50 }}
"#
            )
        };
        let risks = |t: &str| {
            let sc = crate::parse_scenario("inline.toml", t, &[])
                .unwrap_or_else(|e| panic!("{e}"))
                .scenario;
            (context_limit_risks(&sc), gpu_capacity_table(&sc))
        };
        let short = |via: &str, falls_back_to: &[&str]| ContextLimitRisk {
            class: "big".into(),
            node: "answer".into(),
            pool: "short".into(),
            via: Some(via.into()),
            model: "llama-3-8b".into(),
            limit: 8192,
            tokens: 10050.0,
            falls_back_to: falls_back_to.iter().map(|s| s.to_string()).collect(),
        };

        // The last pool of the chain: refused hops fail.
        let (r, out) = risks(&text("[tiers.chat]\npools = [\"long\", \"short\"]", ""));
        assert_eq!(r, vec![short("pool 2 of 2 in tier chat's chain", &[])]);
        assert!(
            out.contains(
                "warning: class big node answer on pool short (pool 2 of 2 in tier chat's chain): prompt + output tokens reach about 10050"
            ) && out.contains(
                "llama-3-8b's context limit of 8192: such hops fail with \"request over context limit of short\""
            ),
            "{out}"
        );
        // In the middle of the chain: refused hops fall back to the pools after it.
        let (r, out) = risks(&text(
            "[tiers.chat]\npools = [\"long\", \"short\", \"long2\"]",
            "",
        ));
        assert_eq!(
            r,
            vec![short("pool 2 of 3 in tier chat's chain", &["long2"])]
        );
        assert!(
            out.contains("such hops are refused there and fall back to long2 (counted degraded)"),
            "{out}"
        );
        // Only once the workflow has spent half of its $1 budget does a rule route it to
        // `short`; with a $0.40 budget the rule holds from the first hop.
        let rules = "[tiers.chat]\npools = [\"long\"]\n[tiers.cheap]\npools = [\"short\"]\n\
                     [[routing.rules]]\nwhen = { budget_below = 0.5 }\ntier = \"cheap\"";
        let via = "pool 1 of 1 in routing.rules[0]'s chain for tier chat";
        for budget in ["budget_usd = 1.0", "budget_usd = 0.4"] {
            let (r, _) = risks(&text(rules, budget));
            assert_eq!(r, vec![short(via, &[])], "{budget}");
        }
        // Without a budget the rule never matches.
        assert_eq!(risks(&text(rules, "")).0, vec![]);
        // A cascade step goes to the first pool of its tier that is up: `short` only
        // when `long2` has an outage; never with probability 0.
        let cascade = |p: &str| {
            format!(
                "[tiers.chat]\npools = [\"long\"]\nescalate = {{ probability = {p}, to = \"up\" }}\n\
                 [tiers.up]\npools = [\"long2\", \"short\"]"
            )
        };
        assert_eq!(risks(&text(&cascade("0.2"), "")).0, vec![]);
        let with_outage = text(&cascade("0.2"), "").replace(
            "[pools.long2]\nservers = 1\n",
            "[pools.long2]\nservers = 1\noutages = [{ start = \"1m\", duration = \"1m\" }]\n",
        );
        let (r, _) = risks(&with_outage);
        assert_eq!(
            r,
            vec![short("an escalation to tier up in its tier's cascade", &[])]
        );
        let never = with_outage.replace("probability = 0.2", "probability = 0.0");
        assert_eq!(risks(&never).0, vec![]);
    }

    #[test]
    fn gpu_load_warns_where_the_queue_grows_without_bound() {
        // scenarios/gpu-pool.toml on its A100 pool (4 replicas of Llama-3-8B, 800
        // shared prefix tokens). Measured with `factorysim run` (60-minute horizon):
        // in flight holds near 60 at 12 hops/s and at 700-820 at 32/s, wavers at 33/s
        // and grows at 34/s (940 to 2,684): the pool saturates near 33.3/s.
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/gpu-pool.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let load = |rate: f64| {
            let sc = crate::parse_scenario(
                "gpu-pool.toml",
                &text,
                &[format!("classes.chat.arrival.rate={rate}")],
            )
            .unwrap_or_else(|e| panic!("{e}"))
            .scenario;
            let l = gpu_pool_loads(&sc).remove(0);
            assert_eq!(l.pool, "a100");
            // The load is the offered rate over the replicas' best throughput.
            assert!(
                (l.gpu_load - rate / (4.0 * l.requests_per_replica_s)).abs() < 1e-12,
                "{l:?}"
            );
            (l.gpu_load, gpu_capacity_table(&sc))
        };
        let (low, table) = load(12.0);
        assert!(low < 0.5, "{low}");
        assert!(!table.contains("warning: pool a100"), "{table}");
        let (near, table) = load(34.0);
        assert!((NEAR_SATURATION..1.0).contains(&near), "{near}");
        assert!(
            table.contains("warning: pool a100 is near saturation"),
            "{table}"
        );
        let (high, table) = load(40.0);
        assert!(high >= 1.0, "{high}");
        assert!(
            table.contains("warning: pool a100 is overloaded"),
            "{table}"
        );
        // Linear in the rate: the throughput does not depend on it.
        assert!((high / low - 40.0 / 12.0).abs() < 1e-9);
        // Optimistic, but by less than 10%: the capacity it implies (rate / load) is
        // between the measured saturation and 10% above it (35.8/s; 39.6/s before
        // iterations were averaged over the prompts they admit).
        let capacity = 12.0 / low;
        assert!((33.3..33.3 * 1.1).contains(&capacity), "{capacity}");
        // Without prefix caching every prompt is prefilled whole: a higher load.
        let sc = crate::parse_scenario(
            "gpu-pool.toml",
            &text,
            &["pools.a100.gpu.prefix_caching=false".to_string()],
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .scenario;
        assert!(gpu_pool_loads(&sc)[0].gpu_load > low * 1.3);
    }

    /// scenarios/reserved.toml: a diurnal rate on an autoscaled pool starting at one
    /// replica. The peak load is the average scaled by the rate (same tokens, same
    /// per-replica throughput); the autoscaler's max absorbs it, a max of 1 does not.
    #[test]
    fn check_gives_the_peak_gpu_load_and_whether_the_autoscaler_covers_it() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/reserved.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let load = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            crate::parse_scenario("reserved.toml", &text, &sets)
                .unwrap_or_else(|e| panic!("{e}"))
                .scenario
        };
        let sc = load(&[]);
        let avg = gpu_pool_loads(&sc)[0].gpu_load;
        let (peak, at) = sc
            .load_instants()
            .into_iter()
            .map(|t| (gpu_pool_loads_at(&sc, Some(t))[0].gpu_load, t))
            .fold((0.0, SimTime::ZERO), |a, b| if b.0 > a.0 { b } else { a });
        let ratio = sc.class_rate(0, Some(at)) / sc.class_rate(0, None);
        assert!((peak / avg - ratio).abs() < 1e-9, "{peak} {avg} {ratio}");
        assert!(peak >= 1.0 && avg < 1.0, "{peak} {avg}");
        let table = gpu_capacity_table(&sc);
        assert!(table.contains(&format!("{peak:.2} at {at}")), "{table}");
        assert!(
            table.contains("note: pool g's peak load") && !table.contains("overloaded at its peak"),
            "{table}"
        );
        let table = gpu_capacity_table(&load(&["pools.g.autoscale.max=1"]));
        assert!(
            table.contains(&format!(
                "warning: pool g is overloaded at its peak (load {peak:.2} from {at}"
            )),
            "{table}"
        );
    }
}

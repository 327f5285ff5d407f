//! Closed-form queueing results: the oracle for the engine's tests and the numbers
//! `factorysim check` prints next to a teaching scenario.

/// Erlang C: probability that an arrival waits in an M/M/c queue with offered load
/// `a = lambda / mu` (in Erlangs). Requires a < c.
pub fn erlang_c(c: u32, a: f64) -> f64 {
    // Erlang B by the stable recurrence, then C = B / (1 - rho (1 - B)).
    let mut b = 1.0;
    for k in 1..=c {
        b = a * b / (k as f64 + a * b);
    }
    let rho = a / c as f64;
    b / (1.0 - rho * (1.0 - b))
}

/// M/M/c mean waiting time in queue, seconds.
pub fn mmc_mean_wait(c: u32, lambda: f64, mu: f64) -> f64 {
    let a = lambda / mu;
    erlang_c(c, a) / (c as f64 * mu - lambda)
}

/// M/M/c waiting-time quantile: P(W > t) = C * exp(-(c mu - lambda) t).
pub fn mmc_wait_quantile(c: u32, lambda: f64, mu: f64, q: f64) -> f64 {
    let pc = erlang_c(c, lambda / mu);
    if 1.0 - q >= pc {
        0.0
    } else {
        (pc / (1.0 - q)).ln() / (c as f64 * mu - lambda)
    }
}

/// M/M/1 mean waiting time in queue: rho / (mu - lambda).
pub fn mm1_mean_wait(lambda: f64, mu: f64) -> f64 {
    mmc_mean_wait(1, lambda, mu)
}

/// M/G/1 mean wait (Pollaczek-Khinchine): lambda E[S^2] / (2 (1 - rho)).
pub fn mg1_mean_wait(lambda: f64, mean_s: f64, second_moment_s: f64) -> f64 {
    let rho = lambda * mean_s;
    lambda * second_moment_s / (2.0 * (1.0 - rho))
}

/// M/D/1 mean wait: rho / (2 mu (1 - rho)).
pub fn md1_mean_wait(lambda: f64, service_s: f64) -> f64 {
    mg1_mean_wait(lambda, service_s, service_s * service_s)
}

/// What queueing theory says about one pool of a scenario, where it applies.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PoolTheory {
    /// "M/M/c" (exponential service, any c), "M/D/1" (constant service, one server) or
    /// "M/G/1" (one server, a service distribution with a known second moment).
    pub model: &'static str,
    pub servers: u32,
    pub arrival_rate_per_s: f64,
    pub mean_service_s: f64,
    /// Offered load per server, lambda E[S] / c.
    pub rho: f64,
    /// Probability that an arrival waits (Erlang C; M/M/c only). `None` when unstable.
    pub p_wait: Option<f64>,
    /// Mean wait in queue, seconds. `None` when rho >= 1 (no steady state).
    pub mean_wait_s: Option<f64>,
    /// 99th percentile of the wait in queue, seconds (M/M/c only).
    pub p99_wait_s: Option<f64>,
}

/// Closed-form results per pool of `sc` (in pool order), `None` for a pool where the
/// textbook assumptions do not hold.
///
/// They hold when the pool is an abstract FIFO station with fixed servers and nothing
/// that refuses, fails or redirects a hop (no queue cap, admission, outage, storm,
/// breaker, error rate, autoscaler, spot, or token-driven service time), and every hop
/// reaching it is pinned to the pool with the pool's own service time (no fan-out at
/// the hop, loop back to the entry, escalation, timeout, abandonment, lane or tenant
/// gate, or tiered routing that could bring other hops), in a class with constant-rate
/// Poisson arrivals, and arrives as a Poisson stream at the class's rate:
///
/// - the entry hop of the class does (its arrivals are the class's);
/// - a later hop does when the class's graph is a plain chain (every node with at most
///   one parent and one child, and no fan-out, loop or escalation anywhere) and every
///   node before it preserves a Poisson stream: a model hop on a pool that itself gets
///   a stable M/M/c line here (Burke's theorem: the departures of a stable M/M/c queue
///   are Poisson at the arrival rate, and with one exponential service time for every
///   class each class's departures are an independent thinning), a call to a tool with
///   no concurrency limit, failures or latency spikes, a human node (both are
///   infinite-server delays, drawn independently per workflow: a Poisson stream
///   delayed by i.i.d. amounts stays Poisson), or a disabled node.
///
/// Then the pools form a feed-forward Jackson (Kelly) network and each pool's arrivals
/// are Poisson at the sum of the rates of the hops reaching it, so the M/M/c, M/D/1 and
/// M/G/1 formulas apply with that rate. A pool downstream of anything else (an M/D/1 or
/// M/G/1 pool, an unstable pool, a GPU or API pool, a bounded tool, a fan-out or loop)
/// gets `None`, and so does a pool whose hops come back to it through other pools (a
/// cycle between pools: product form would still give its M/M/c marginals, but the
/// rule stays feed-forward and conservative).
pub fn pool_theory(sc: &crate::Scenario) -> Vec<Option<PoolTheory>> {
    use crate::scenario::Arrival;
    use crate::workflow::NodeKind;
    let n = sc.pools.len();
    let mut ok: Vec<bool> = sc
        .pools
        .iter()
        .map(|p| {
            p.gpu.is_none()
                && p.api.is_none()
                && p.discipline == crate::policy::DisciplineSpec::Fifo
                && p.autoscale.is_none()
                && p.max_queue.is_none()
                && p.admission.is_none()
                && p.outages.is_empty()
                && p.breaker.is_none()
                && p.error_rate == 0.0
                && p.storms.is_empty()
                && p.spot.is_none()
                && p.prefill_ns_per_1k == 0
                && p.decode_ns_per_token == 0
                && p.service.is_some()
        })
        .collect();
    // Per pool, the hops reaching it: (Poisson rate, the upstream pools whose stable
    // M/M/c departures the stream passed through).
    let mut feeds: Vec<Vec<(f64, Vec<usize>)>> = vec![Vec::new(); n];
    for c in &sc.classes {
        let g = &c.graph;
        let rate = match &c.arrival {
            Arrival::Poisson { rate_per_s } if c.bursts.is_empty() => {
                Some(*rate_per_s * c.workload_share(sc))
            }
            Arrival::Recorded { requests, stream }
                if requests.iter().any(|r| r.graph.is_some())
                    || stream.as_ref().is_some_and(|s| s.0.replays_workflows()) =>
            {
                // Replayed workflows bring their own graphs: any pool may be reached.
                ok.iter_mut().for_each(|o| *o = false);
                None
            }
            _ => None,
        };
        let lane = &sc.lanes[c.lane_index];
        let gated = lane.admission.is_some()
            || lane.max_in_flight.is_some()
            || lane.rate_limit.is_some()
            || c.tenant_index.is_some_and(|t| {
                sc.tenants[t].max_tokens_in_flight.is_some() || sc.tenants[t].rate_limit.is_some()
            });
        let loops_to_entry = g
            .nodes
            .iter()
            .any(|nd| nd.loop_back.as_ref().is_some_and(|l| l.to == 0));
        let chain = g.nodes.iter().all(|nd| {
            nd.parents.len() <= 1
                && nd.children.len() <= 1
                && nd.fan_out.is_none()
                && nd.loop_back.is_none()
                && nd.escalate.is_none()
        });
        // The pools a Poisson stream passes through on its way from the entry to node
        // `i` (exclusive), or None if some node before `i` may not preserve it.
        let upstream = |i: usize| -> Option<Vec<usize>> {
            if i == 0 {
                return Some(Vec::new());
            }
            if !chain {
                return None;
            }
            let mut pools = Vec::new();
            let mut j = i;
            while j != 0 {
                j = *g.nodes[j].parents.first()?;
                let nd = &g.nodes[j];
                if nd.not_before.is_some() || nd.timeout.is_some() {
                    return None;
                }
                if !nd.enabled {
                    continue;
                }
                match nd.kind {
                    NodeKind::Human => {}
                    NodeKind::Tool => {
                        let t = &sc.tools[nd.tool?];
                        if t.concurrency.is_some()
                            || t.failure_probability > 0.0
                            || !t.spikes.is_empty()
                        {
                            return None;
                        }
                    }
                    NodeKind::Llm | NodeKind::Compact => {
                        // Its pool's own line decides (it needs this hop textbook too).
                        if nd.tier.is_some() {
                            return None;
                        }
                        pools.push(nd.pool?);
                    }
                }
            }
            Some(pools)
        };
        for (i, nd) in g.nodes.iter().enumerate() {
            if !nd.enabled {
                continue;
            }
            let mut reached: Vec<usize> = Vec::new();
            if let Some(p) = nd.pool {
                reached.push(p);
            }
            if let Some(t) = nd.tier {
                reached.extend(&sc.tiers[t].pools);
                for (_, to) in sc.cascade_from(t) {
                    reached.extend(&sc.tiers[to].pools);
                }
                // Routing rules may send it to any of their chains' pools.
                for r in &sc.routing_rules {
                    reached.extend(r.chains.iter().flatten());
                }
            }
            if let Some(e) = &nd.escalate {
                reached.push(e.pool);
            }
            for &p in &reached {
                let textbook = nd.tier.is_none()
                    && nd.escalate.is_none()
                    && nd.service.is_none()
                    && nd.fan_out.is_none()
                    && nd.timeout.is_none()
                    && nd.not_before.is_none()
                    && !loops_to_entry
                    && !gated
                    && c.abandon_after.is_none();
                match (rate, textbook.then(|| upstream(i)).flatten()) {
                    (Some(r), Some(up)) => feeds[p].push((r, up)),
                    _ => ok[p] = false,
                }
            }
        }
    }
    // Decide pools in feed-forward order: a pool once every upstream pool of its hops is
    // decided. Pools on a cycle are never decided and stay None.
    let mut decided: Vec<Option<Option<PoolTheory>>> = vec![None; n];
    let burke = |t: &Option<Option<PoolTheory>>| matches!(t, Some(Some(t)) if t.model == "M/M/c" && t.rho < 1.0);
    loop {
        let mut progress = false;
        for pi in 0..n {
            if decided[pi].is_some() {
                continue;
            }
            let ups = || feeds[pi].iter().flat_map(|(_, up)| up.iter().copied());
            let answer = if !ok[pi] || ups().any(|u| decided[u].is_some() && !burke(&decided[u])) {
                None
            } else if ups().all(|u| burke(&decided[u])) {
                let lambda: f64 = feeds[pi].iter().map(|(r, _)| r).sum();
                station(&sc.pools[pi], lambda)
            } else {
                continue;
            };
            decided[pi] = Some(answer);
            progress = true;
        }
        if !progress {
            break;
        }
    }
    decided.into_iter().map(Option::flatten).collect()
}

/// The textbook line of one pool with Poisson arrivals at `l` per second.
fn station(p: &crate::scenario::Pool, l: f64) -> Option<PoolTheory> {
    let service = p.service.as_ref()?;
    if l <= 0.0 {
        return None;
    }
    let (es, c) = (service.mean(), p.servers);
    let rho = l * es / c as f64;
    let stable = rho < 1.0;
    let base = PoolTheory {
        model: "",
        servers: c,
        arrival_rate_per_s: l,
        mean_service_s: es,
        rho,
        p_wait: None,
        mean_wait_s: None,
        p99_wait_s: None,
    };
    match service {
        crate::dist::Sampler::Exponential(..) => {
            let mu = 1.0 / es;
            Some(PoolTheory {
                model: "M/M/c",
                p_wait: stable.then(|| erlang_c(c, l / mu)),
                mean_wait_s: stable.then(|| mmc_mean_wait(c, l, mu)),
                p99_wait_s: stable.then(|| mmc_wait_quantile(c, l, mu, 0.99)),
                ..base
            })
        }
        crate::dist::Sampler::Constant(_) if c == 1 => Some(PoolTheory {
            model: "M/D/1",
            mean_wait_s: stable.then(|| md1_mean_wait(l, es)),
            ..base
        }),
        s if c == 1 => {
            let m2 = s.second_moment()?;
            Some(PoolTheory {
                model: "M/G/1",
                mean_wait_s: stable.then(|| mg1_mean_wait(l, es, m2)),
                ..base
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_c_known_values() {
        // c = 1 reduces to rho.
        assert!((erlang_c(1, 0.7) - 0.7).abs() < 1e-12);
        // Textbook value: c = 2, a = 1 -> C = 1/3.
        assert!((erlang_c(2, 1.0) - 1.0 / 3.0).abs() < 1e-12);
        // M/M/1 wait: rho/(mu - lambda).
        assert!((mm1_mean_wait(0.9, 1.0) - 9.0).abs() < 1e-9);
        // M/D/1 is half the M/M/1 wait.
        assert!((md1_mean_wait(0.9, 1.0) - 4.5).abs() < 1e-9);
    }

    fn theory_of(text: &str) -> Vec<Option<PoolTheory>> {
        let spec: crate::ScenarioSpec = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        pool_theory(&spec.validate().unwrap_or_else(|e| panic!("{e}")))
    }

    const POOLS: &str = r#"
[simulation]
horizon = "1000s"
[pools.mm4]
servers = 4
service = { dist = "exponential", mean = "1s" }
[pools.md1]
servers = 1
service = { dist = "deterministic", value = "100ms" }
[pools.mg1]
servers = 1
service = { dist = "uniform", low = "0s", high = "200ms" }
[pools.fed]
servers = 3
service = { dist = "exponential", mean = "1s" }
"#;

    #[test]
    fn pool_theory_applies_where_the_textbook_assumptions_hold() {
        let t = theory_of(&format!(
            "{POOLS}
[classes.a]
arrival = {{ process = \"poisson\", rate = 2.0 }}
hops = [{{ pool = \"mm4\" }}, {{ pool = \"fed\" }}]
[classes.b]
arrival = {{ process = \"poisson\", rate = 1.4 }}
hops = [{{ pool = \"mm4\" }}]
[classes.c]
arrival = {{ process = \"poisson\", rate = 8.0 }}
hops = [{{ pool = \"md1\" }}]
[classes.d]
arrival = {{ process = \"poisson\", rate = 4.0 }}
hops = [{{ pool = \"mg1\" }}]
"
        ));
        // Pools in name order: fed, md1, mg1, mm4.
        let [fed, md1, mg1, mm4] = [&t[0], &t[1], &t[2], &t[3]];
        // `fed` is reached by a second hop: its arrivals are class a's departures from
        // mm4, a stable M/M/c queue, so Poisson at 2/s by Burke's theorem. M/M/3 with
        // a = 2: Erlang B by hand is 2/3, 2/5, 4/19, so C = (4/19) / (1 - (2/3)(15/19))
        // = 4/9; Wq = C / (c mu - lambda) = 4/9 s; p99 = ln(C / 0.01) / 1.
        let fed = fed
            .as_ref()
            .unwrap_or_else(|| panic!("no Burke theory for fed"));
        assert_eq!(fed.model, "M/M/c");
        assert!((fed.arrival_rate_per_s - 2.0).abs() < 1e-12);
        assert!((fed.rho - 2.0 / 3.0).abs() < 1e-12);
        assert!((fed.p_wait.unwrap_or(0.0) - 4.0 / 9.0).abs() < 1e-12);
        assert!((fed.mean_wait_s.unwrap_or(0.0) - 4.0 / 9.0).abs() < 1e-12);
        assert!((fed.p99_wait_s.unwrap_or(0.0) - (400.0f64 / 9.0).ln()).abs() < 1e-12);
        let mm4 = mm4.as_ref().unwrap_or_else(|| panic!("no M/M/c theory"));
        assert_eq!(mm4.model, "M/M/c");
        assert!((mm4.arrival_rate_per_s - 3.4).abs() < 1e-12);
        assert!((mm4.rho - 0.85).abs() < 1e-12);
        // Erlang C for c = 4, a = 3.4 (the mmc.toml teaching example).
        assert!((mm4.p_wait.unwrap_or(0.0) - 0.689_316).abs() < 1e-6);
        assert!((mm4.mean_wait_s.unwrap_or(0.0) - 1.148_860).abs() < 1e-6);
        assert!((mm4.p99_wait_s.unwrap_or(0.0) - 7.055_192).abs() < 1e-6);
        let md1 = md1.as_ref().unwrap_or_else(|| panic!("no M/D/1 theory"));
        assert_eq!(md1.model, "M/D/1");
        // rho 0.8: W = rho / (2 mu (1 - rho)) = 0.8 / (2 * 10 * 0.2) = 0.2 s.
        assert!((md1.mean_wait_s.unwrap_or(0.0) - 0.2).abs() < 1e-12);
        let mg1 = mg1.as_ref().unwrap_or_else(|| panic!("no M/G/1 theory"));
        assert_eq!(mg1.model, "M/G/1");
        // Uniform(0, 0.2): E[S] = 0.1, E[S^2] = 0.04/3; lambda 4: rho 0.4,
        // W = 4 * 0.04/3 / (2 * 0.6) = 0.0444...
        assert!((mg1.mean_wait_s.unwrap_or(0.0) - 0.16 / 3.0 / 1.2).abs() < 1e-12);
    }

    #[test]
    fn pool_theory_refuses_what_breaks_the_assumptions() {
        let cases = [
            // Fan-out at the entry: batches arrive together.
            "fan_out = { count = { dist = \"constant\", value = 3 } }",
            // A timeout abandons queued hops.
            "timeout = \"2s\"",
            // A per-node service time differs from the pool's.
            "service = { dist = \"constant\", value = \"1s\" }",
        ];
        for extra in cases {
            let t = theory_of(&format!(
                "{POOLS}
[classes.a]
arrival = {{ process = \"poisson\", rate = 2.0 }}
nodes = [{{ id = \"x\", pool = \"mm4\", {extra} }}]
"
            ));
            assert_eq!(t[3], None, "{extra}");
        }
        // Unstable: the model applies, the steady-state waits do not exist.
        let t = theory_of(&format!(
            "{POOLS}
[classes.a]
arrival = {{ process = \"poisson\", rate = 5.0 }}
hops = [{{ pool = \"mm4\" }}]
"
        ));
        let mm4 = t[3].as_ref().unwrap_or_else(|| panic!("no theory"));
        assert!((mm4.rho - 1.25).abs() < 1e-12);
        assert_eq!((mm4.p_wait, mm4.mean_wait_s), (None, None));
        // A queue cap turns it into M/M/c/K: no theory here.
        let t = theory_of(&format!(
            "{}
[classes.a]
arrival = {{ process = \"poisson\", rate = 2.0 }}
hops = [{{ pool = \"mm4\" }}]
",
            POOLS.replace("servers = 4", "servers = 4\nmax_queue = 10")
        ));
        assert_eq!(t[3], None);
    }

    /// `fed`'s line (pool index 0) when class `a` runs `nodes` and class `b` sends
    /// `b_rate` per second straight to mm4.
    fn fed_after(nodes: &str, b_rate: f64) -> (Option<PoolTheory>, Option<PoolTheory>) {
        let t = theory_of(&format!(
            "{POOLS}
[tools.open]
latency = {{ dist = \"lognormal\", median = \"2s\", p99 = \"20s\" }}
[tools.bounded]
latency = {{ dist = \"exponential\", mean = \"1s\" }}
concurrency = 2
[tools.flaky]
latency = {{ dist = \"exponential\", mean = \"1s\" }}
failure_probability = 0.1
[classes.a]
arrival = {{ process = \"poisson\", rate = 2.0 }}
nodes = [{nodes}]
[classes.b]
arrival = {{ process = \"poisson\", rate = {b_rate} }}
hops = [{{ pool = \"mm4\" }}]
"
        ));
        (t[0].clone(), t[3].clone())
    }

    #[test]
    fn burke_carries_poisson_through_stable_mmc_pools_and_infinite_server_delays() {
        let x = "{ id = \"x\", pool = \"mm4\" }";
        let fed = "{ id = \"y\", pool = \"fed\", after = [\"p\"] }";
        let through = |mid: &str| {
            fed_after(
                &format!("{x}, {{ id = \"p\", after = [\"x\"], {mid} }}, {fed}"),
                1.0,
            )
        };
        // mm4 at 3/s (rho 0.75) then an unlimited tool, a human step taken half the
        // time, or a disabled model step: fed sees Poisson at 2/s, M/M/3 as above.
        for mid in [
            "kind = \"tool\", tool = \"open\"",
            "kind = \"human\", probability = 0.5, minutes = { dist = \"exponential\", mean = 3 }",
            "pool = \"md1\", enabled = false",
        ] {
            let (fed, mm4) = through(mid);
            let fed = fed.unwrap_or_else(|| panic!("{mid}: no theory for fed"));
            assert!((fed.arrival_rate_per_s - 2.0).abs() < 1e-12, "{mid}");
            assert!((fed.mean_wait_s.unwrap_or(0.0) - 4.0 / 9.0).abs() < 1e-12);
            assert!(mm4.is_some_and(|m| (m.rho - 0.75).abs() < 1e-12), "{mid}");
        }
        // A bounded tool queues (not infinite-server), a failing one thins the stream by
        // whether the call failed; an M/D/1 or M/G/1 pool's departures are not Poisson.
        for mid in [
            "kind = \"tool\", tool = \"bounded\"",
            "kind = \"tool\", tool = \"flaky\"",
            "pool = \"md1\"",
            "pool = \"mg1\"",
        ] {
            assert_eq!(through(mid).0, None, "{mid}");
        }
        // The M/D/1 pool itself still gets its line: its own arrivals are Poisson.
        let t = theory_of(&format!(
            "{POOLS}
[classes.a]
arrival = {{ process = \"poisson\", rate = 2.0 }}
hops = [{{ pool = \"mm4\" }}, {{ pool = \"md1\" }}, {{ pool = \"fed\" }}]
"
        ));
        let md1 = t[1].as_ref().unwrap_or_else(|| panic!("no theory for md1"));
        // rho 0.2: W = 0.2 / (2 * 10 * 0.8) = 0.0125 s.
        assert!((md1.mean_wait_s.unwrap_or(0.0) - 0.0125).abs() < 1e-12);
        assert_eq!(t[0], None);
    }

    #[test]
    fn burke_needs_a_stable_upstream_and_a_plain_chain() {
        // Class b brings mm4 to 5/s: rho 1.25, no steady state, no Poisson departures.
        let (fed, mm4) = fed_after(
            "{ id = \"x\", pool = \"mm4\" }, { id = \"y\", pool = \"fed\", after = [\"x\"] }",
            3.0,
        );
        assert_eq!(fed, None);
        assert!(mm4.is_some_and(|m| m.rho >= 1.0 && m.mean_wait_s.is_none()));
        for nodes in [
            // A fan-out after fed (the graph is no chain): fed's own input would still
            // be Poisson, but the rule only follows plain chains.
            "{ id = \"x\", pool = \"mm4\" }, { id = \"y\", pool = \"fed\", after = [\"x\"] }, \
             { id = \"z\", pool = \"mg1\", after = [\"y\"], fan_out = { count = { dist = \"constant\", value = 2 } } }",
            // A verifier loop from fed back to the tool call before it: fed sees retries.
            "{ id = \"x\", pool = \"mm4\" }, { id = \"v\", kind = \"tool\", tool = \"open\", after = [\"x\"] }, \
             { id = \"y\", pool = \"fed\", after = [\"v\"], loop = { to = \"v\", probability = 0.3 } }",
            // A join: fed waits for two parents.
            "{ id = \"x\", pool = \"mm4\" }, { id = \"v\", kind = \"tool\", tool = \"open\", after = [\"x\"] }, \
             { id = \"w\", kind = \"tool\", tool = \"open\", after = [\"x\"] }, \
             { id = \"y\", pool = \"fed\", after = [\"v\", \"w\"] }",
        ] {
            let (fed, mm4) = fed_after(nodes, 1.0);
            assert_eq!(fed, None, "{nodes}");
            // mm4 is every class's entry: still M/M/c at 3/s.
            assert!(mm4.is_some_and(|m| (m.arrival_rate_per_s - 3.0).abs() < 1e-12));
        }
        // A cycle between pools (a: mm4 -> fed, c: fed -> mm4): neither is decided.
        let t = theory_of(&format!(
            "{POOLS}
[classes.a]
arrival = {{ process = \"poisson\", rate = 1.0 }}
hops = [{{ pool = \"mm4\" }}, {{ pool = \"fed\" }}]
[classes.c]
arrival = {{ process = \"poisson\", rate = 0.5 }}
hops = [{{ pool = \"fed\" }}, {{ pool = \"mm4\" }}]
"
        ));
        assert_eq!((&t[0], &t[3]), (&None, &None));
    }
}

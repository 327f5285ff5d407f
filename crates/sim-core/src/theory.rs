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
/// textbook assumptions do not hold. They hold when the pool is an abstract FIFO
/// station with fixed servers and nothing that refuses, fails or redirects a hop
/// (no queue cap, admission, outage, storm, breaker, error rate, autoscaler, spot, or
/// token-driven service time), and every hop reaching it is the entry hop of a class
/// with constant-rate Poisson arrivals, pinned to the pool with the pool's own service
/// time (no fan-out, loop back to the entry, escalation, timeout, abandonment, lane or
/// tenant gate, or tiered routing that could bring other hops). Then arrivals at the
/// pool are Poisson with the sum of the class rates.
pub fn pool_theory(sc: &crate::Scenario) -> Vec<Option<PoolTheory>> {
    use crate::scenario::Arrival;
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
    let mut lambda = vec![0.0; n];
    for c in &sc.classes {
        let g = &c.graph;
        let rate = match &c.arrival {
            Arrival::Poisson { rate_per_s } if c.bursts.is_empty() => {
                Some(*rate_per_s * c.workload_share(sc))
            }
            Arrival::Recorded { requests } if requests.iter().any(|r| r.graph.is_some()) => {
                // Replayed workflows bring their own graphs: any pool may be reached.
                ok.iter_mut().for_each(|o| *o = false);
                None
            }
            _ => None,
        };
        let lane = &sc.lanes[c.lane_index];
        let gated = lane.admission.is_some()
            || lane.rate_limit.is_some()
            || c.tenant_index.is_some_and(|t| {
                sc.tenants[t].max_tokens_in_flight.is_some() || sc.tenants[t].rate_limit.is_some()
            });
        let loops_to_entry = g
            .nodes
            .iter()
            .any(|nd| nd.loop_back.as_ref().is_some_and(|l| l.to == 0));
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
                // Routing rules may send it to any of their chains' pools.
                for r in &sc.routing_rules {
                    reached.extend(r.chains.iter().flatten());
                }
            }
            if let Some(e) = &nd.escalate {
                reached.push(e.pool);
            }
            for &p in &reached {
                let textbook = i == 0
                    && nd.tier.is_none()
                    && nd.escalate.is_none()
                    && nd.service.is_none()
                    && nd.fan_out.is_none()
                    && nd.timeout.is_none()
                    && nd.not_before.is_none()
                    && !loops_to_entry
                    && !gated
                    && c.abandon_after.is_none()
                    && rate.is_some();
                if textbook {
                    lambda[p] += rate.unwrap_or(0.0);
                } else {
                    ok[p] = false;
                }
            }
        }
    }
    sc.pools
        .iter()
        .enumerate()
        .map(|(pi, p)| {
            let service = p.service.as_ref()?;
            if !ok[pi] || lambda[pi] <= 0.0 {
                return None;
            }
            let (l, es, c) = (lambda[pi], service.mean(), p.servers);
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
        })
        .collect()
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
servers = 2
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
        // `fed` is reached by a second hop: its arrivals are departures of mm4 (Poisson
        // by Burke's theorem, but the rule is kept simple and conservative).
        assert_eq!(fed, &None);
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
}

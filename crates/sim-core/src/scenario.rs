//! The scenario schema (what a TOML file may say) and its validation into a compiled
//! [`Scenario`] that the simulator runs. Unknown keys are rejected by serde; semantic
//! errors name the key path and what was expected.

use crate::dist::{DistSpec, Sampler};
use crate::time::SimDuration;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A scenario file, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    /// Free-text description shown by `factorysim check`.
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub simulation: SimulationSpec,
    /// Pools of servers, by name.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolSpec>,
    /// Workflow classes, by name.
    #[serde(default)]
    pub classes: BTreeMap<String, ClassSpec>,
}

/// `[simulation]`: run control.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationSpec {
    /// Master seed; every random stream derives from it.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Arrivals stop at the horizon.
    #[serde(default = "default_horizon")]
    pub horizon: SimDuration,
    /// Workflows arriving before this are run but excluded from statistics.
    #[serde(default)]
    pub warmup: SimDuration,
    /// If true, in-flight work is finished after the horizon; if false, the run stops at
    /// the horizon and unfinished workflows are reported as `in_flight`.
    #[serde(default)]
    pub drain: bool,
}

fn default_seed() -> u64 {
    1
}
fn default_horizon() -> SimDuration {
    SimDuration::from_secs(3600)
}

impl Default for SimulationSpec {
    fn default() -> Self {
        SimulationSpec {
            seed: default_seed(),
            horizon: default_horizon(),
            warmup: SimDuration::ZERO,
            drain: false,
        }
    }
}

/// `[pools.NAME]`: an abstract queueing station of `servers` identical servers with a
/// FIFO queue.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Number of servers (c in M/M/c).
    pub servers: i64,
    /// Price of one server for one hour, in US dollars.
    #[serde(default)]
    pub usd_per_server_hour: f64,
    /// Default service time of a hop on this pool (a hop may override it).
    #[serde(default)]
    pub service: Option<DistSpec>,
}

/// `[classes.NAME]`: a workflow class.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    pub arrival: ArrivalSpec,
    /// The chain of hops each workflow runs, in order.
    pub hops: Vec<HopSpec>,
    /// Latency target for the whole workflow (reported as SLO attainment).
    #[serde(default)]
    pub slo: Option<SimDuration>,
}

/// How workflows of a class arrive.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "process", rename_all = "snake_case", deny_unknown_fields)]
pub enum ArrivalSpec {
    /// Poisson arrivals at `rate` workflows per second.
    Poisson { rate: f64 },
}

/// One hop of a workflow chain.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HopSpec {
    /// A label for reports; defaults to the pool name.
    #[serde(default)]
    pub name: Option<String>,
    /// The pool that serves this hop.
    pub pool: String,
    /// Service time; defaults to the pool's `service`.
    #[serde(default)]
    pub service: Option<DistSpec>,
}

/// A semantic error in a scenario: which key, and what was expected.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("key `{key}`: {message}")]
pub struct SpecError {
    pub key: String,
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        key: key.into(),
        message: message.into(),
    }
}

/// A validated scenario, with names resolved to indices.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub description: Option<String>,
    pub seed: u64,
    pub horizon: SimDuration,
    pub warmup: SimDuration,
    pub drain: bool,
    pub pools: Vec<Pool>,
    pub classes: Vec<WorkflowClass>,
}

#[derive(Clone, Debug)]
pub struct Pool {
    pub name: String,
    pub servers: u32,
    pub usd_per_server_hour: f64,
}

#[derive(Clone, Debug)]
pub struct WorkflowClass {
    pub name: String,
    pub arrival: Arrival,
    pub hops: Vec<Hop>,
    pub slo: Option<SimDuration>,
}

#[derive(Clone, Debug)]
pub enum Arrival {
    Poisson { rate_per_s: f64 },
}

impl Arrival {
    pub fn mean_rate_per_s(&self) -> f64 {
        match self {
            Arrival::Poisson { rate_per_s } => *rate_per_s,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Hop {
    pub name: String,
    pub pool: usize,
    pub service: Sampler,
}

impl ScenarioSpec {
    /// Checks every value and resolves references.
    pub fn validate(&self) -> Result<Scenario, SpecError> {
        let sim = &self.simulation;
        if sim.horizon == SimDuration::ZERO {
            return Err(err(
                "simulation.horizon",
                "expected a positive duration, like \"1h\"",
            ));
        }
        if sim.warmup >= sim.horizon {
            return Err(err(
                "simulation.warmup",
                format!(
                    "expected a warm-up shorter than the horizon ({}), got {}",
                    sim.horizon, sim.warmup
                ),
            ));
        }
        if self.pools.is_empty() {
            return Err(err("pools", "expected at least one pool, like [pools.gpu]"));
        }
        if self.classes.is_empty() {
            return Err(err(
                "classes",
                "expected at least one workflow class, like [classes.chat]",
            ));
        }
        let mut pools = Vec::new();
        let mut pool_index = BTreeMap::new();
        for (name, p) in &self.pools {
            let key = format!("pools.{name}");
            if p.servers < 1 || p.servers > u32::MAX as i64 {
                return Err(err(
                    format!("{key}.servers"),
                    format!("expected a whole number of servers >= 1, got {}", p.servers),
                ));
            }
            if !p.usd_per_server_hour.is_finite() || p.usd_per_server_hour < 0.0 {
                return Err(err(
                    format!("{key}.usd_per_server_hour"),
                    format!(
                        "expected a price >= 0 in dollars, got {}",
                        p.usd_per_server_hour
                    ),
                ));
            }
            if let Some(s) = &p.service {
                s.sampler().map_err(|m| err(format!("{key}.service"), m))?;
            }
            pool_index.insert(name.clone(), pools.len());
            pools.push(Pool {
                name: name.clone(),
                servers: p.servers as u32,
                usd_per_server_hour: p.usd_per_server_hour,
            });
        }
        let mut classes = Vec::new();
        for (name, c) in &self.classes {
            let key = format!("classes.{name}");
            let arrival = match c.arrival {
                ArrivalSpec::Poisson { rate } => {
                    if !rate.is_finite() || rate <= 0.0 {
                        return Err(err(
                            format!("{key}.arrival.rate"),
                            format!("expected a positive rate in workflows per second, got {rate}"),
                        ));
                    }
                    Arrival::Poisson { rate_per_s: rate }
                }
            };
            if c.hops.is_empty() {
                return Err(err(
                    format!("{key}.hops"),
                    "expected at least one hop, like hops = [{ pool = \"gpu\" }]",
                ));
            }
            let mut hops = Vec::new();
            for (i, h) in c.hops.iter().enumerate() {
                let hkey = format!("{key}.hops[{i}]");
                let Some(&pool) = pool_index.get(&h.pool) else {
                    let known: Vec<&str> = self.pools.keys().map(String::as_str).collect();
                    return Err(err(
                        format!("{hkey}.pool"),
                        format!(
                            "no pool named `{}`; expected one of: {}",
                            h.pool,
                            known.join(", ")
                        ),
                    ));
                };
                let spec = h.service.as_ref().or(self.pools[&h.pool].service.as_ref());
                let Some(spec) = spec else {
                    return Err(err(
                        format!("{hkey}.service"),
                        format!(
                            "expected a service-time distribution on the hop or on pool `{}`",
                            h.pool
                        ),
                    ));
                };
                let service = spec
                    .sampler()
                    .map_err(|m| err(format!("{hkey}.service"), m))?;
                hops.push(Hop {
                    name: h.name.clone().unwrap_or_else(|| h.pool.clone()),
                    pool,
                    service,
                });
            }
            if c.slo == Some(SimDuration::ZERO) {
                return Err(err(
                    format!("{key}.slo"),
                    "expected a positive latency target",
                ));
            }
            classes.push(WorkflowClass {
                name: name.clone(),
                arrival,
                hops,
                slo: c.slo,
            });
        }
        Ok(Scenario {
            description: self.description.clone(),
            seed: sim.seed,
            horizon: sim.horizon,
            warmup: sim.warmup,
            drain: sim.drain,
            pools,
            classes,
        })
    }
}

/// Offered load per pool, from the scenario alone (no simulation).
#[derive(Clone, Debug, serde::Serialize)]
pub struct PoolLoad {
    pub pool: String,
    pub servers: u32,
    /// Arrival rate of hops at the pool, per second.
    pub hop_rate_per_s: f64,
    /// Mean service time of those hops, seconds.
    pub mean_service_s: f64,
    /// Offered load per server: lambda * E[S] / c.
    pub rho: f64,
}

impl Scenario {
    pub fn offered_load(&self) -> Vec<PoolLoad> {
        self.pools
            .iter()
            .enumerate()
            .map(|(pi, p)| {
                let mut rate = 0.0;
                let mut work = 0.0;
                for c in &self.classes {
                    let r = c.arrival.mean_rate_per_s();
                    for h in c.hops.iter().filter(|h| h.pool == pi) {
                        rate += r;
                        work += r * h.service.mean();
                    }
                }
                PoolLoad {
                    pool: p.name.clone(),
                    servers: p.servers,
                    hop_rate_per_s: rate,
                    mean_service_s: if rate > 0.0 { work / rate } else { 0.0 },
                    rho: work / p.servers as f64,
                }
            })
            .collect()
    }
}

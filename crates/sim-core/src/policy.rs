//! Control-plane policy traits. sim-core defines the decisions (what a queue serves
//! next, which pool a tiered hop goes to, how many servers a pool should have); the
//! `policies` crate implements them and provides a [`PolicyFactory`] that builds them
//! from the scenario's specs. sim-core itself only ships FIFO, the first-pool router and
//! "never scale" so that it can run without the policies crate.

use crate::time::{SimDuration, SimTime};
use serde::Deserialize;

/// Scheduling attributes of a hop, seen by queue disciplines.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JobMeta {
    /// Index of the hop's lane (see `Scenario::lanes`).
    pub lane: u32,
    /// Larger runs first under strict priority.
    pub priority: i32,
    /// Weighted-fair-queuing weight of the lane.
    pub weight: f64,
    /// When the workflow's SLO runs out (earliest-deadline-first).
    pub deadline: SimTime,
    /// Expected server time of the hop, nanoseconds (the "packet size" for WFQ).
    pub size_ns: u64,
}

impl JobMeta {
    /// The default attributes, as a constant a caller can lend without building them.
    pub const DEFAULT: JobMeta = JobMeta {
        lane: 0,
        priority: 0,
        weight: 1.0,
        deadline: SimTime(u64::MAX),
        size_ns: 1,
    };
}

impl Default for JobMeta {
    fn default() -> Self {
        JobMeta::DEFAULT
    }
}

/// Which waiting hop a station serves next. Keys are opaque to the discipline.
pub trait QueueDiscipline: Send {
    fn push(&mut self, now: SimTime, meta: JobMeta, key: u64);
    fn pop(&mut self, now: SimTime) -> Option<u64>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Plain first come, first served: keys pop in push order and `meta` is unused, so
    /// a station may keep the order itself (no dynamic call per hop).
    fn is_fifo(&self) -> bool {
        false
    }
}

/// First come, first served.
#[derive(Default)]
pub struct Fifo {
    queue: std::collections::VecDeque<u64>,
}

impl QueueDiscipline for Fifo {
    fn push(&mut self, _now: SimTime, _meta: JobMeta, key: u64) {
        self.queue.push_back(key);
    }
    fn pop(&mut self, _now: SimTime) -> Option<u64> {
        self.queue.pop_front()
    }
    fn len(&self) -> usize {
        self.queue.len()
    }
    fn is_fifo(&self) -> bool {
        true
    }
}

/// `discipline = "..."` on a pool.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DisciplineSpec {
    /// First come, first served.
    #[default]
    Fifo,
    /// Highest lane priority first; FIFO within a priority.
    Priority,
    /// Weighted fair queuing across lanes by their weights (start-time fair queuing on
    /// expected server time; on a GPU pool, on the tokens each replica computes).
    WeightedFair,
    /// Earliest deadline (workflow arrival + class SLO) first.
    EarliestDeadline,
}

impl DisciplineSpec {
    /// The name a scenario writes.
    pub fn name(self) -> &'static str {
        match self {
            DisciplineSpec::Fifo => "fifo",
            DisciplineSpec::Priority => "priority",
            DisciplineSpec::WeightedFair => "weighted_fair",
            DisciplineSpec::EarliestDeadline => "earliest_deadline",
        }
    }
}

/// What a tier router sees of one candidate pool, as of now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolView {
    pub pool: usize,
    pub servers: u32,
    pub busy: u64,
    pub queued: u64,
    /// Expected service time of this hop on this pool, seconds.
    pub service_s: f64,
    /// Expected dollars of this hop on this pool.
    pub usd: f64,
    /// The pool is up (not in an outage) and admits work (below its watermarks).
    pub available: bool,
}

impl PoolView {
    /// A queueing estimate of this hop's latency: wait for the work ahead spread over
    /// the servers, then its own service.
    pub fn predicted_latency_s(&self) -> f64 {
        let ahead = (self.busy + self.queued).saturating_sub(self.servers as u64 - 1) as f64;
        ahead * self.service_s / self.servers.max(1) as f64 + self.service_s
    }
}

/// What the router knows about the hop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouteRequest {
    pub class: usize,
    pub lane: u32,
    /// Time left before the workflow misses its SLO (None: no SLO).
    pub slo_remaining_s: Option<f64>,
    /// Dollars the workflow may still spend (None: no budget).
    pub budget_remaining_usd: Option<f64>,
}

/// Chooses the pool of a tiered hop among the tier's fallback chain.
pub trait TierRouter: Send {
    /// Index into `candidates` (in fallback-chain order), or None to reject the hop.
    fn choose(&mut self, req: &RouteRequest, candidates: &[PoolView]) -> Option<usize>;
}

/// `[routing] policy = ...`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RoutingSpec {
    /// The first available pool of the tier's chain (fallback on outage or 429).
    #[default]
    Static,
    /// The cheapest available pool whose predicted latency fits the SLO time left and
    /// the budget; else the fastest within the budget; else the cheapest.
    CostAware,
    /// The available pool with the lowest predicted latency.
    LeastLoaded,
}

/// Autoscaling of a pool: reactive on a load signal, with boot lead time, cooldown and
/// scheduled pre-warming.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleSpec {
    /// Load signal: "queue_depth" (hops waiting or in service per server),
    /// "tokens_in_flight" (prompt + output tokens of the pool's unfinished hops per
    /// server), "p99_ttft" (windowed p99 time to first token, seconds) or
    /// "queue_age" (how long the oldest hop still waiting for its first token has
    /// waited, seconds).
    #[serde(default = "default_metric")]
    pub metric: String,
    /// Target value of the signal per server (`p99_ttft`: the p99 TTFT, in seconds).
    pub target: f64,
    pub min: u32,
    pub max: u32,
    /// How long a new server takes to boot (charged from boot start): a duration, or
    /// a distribution drawn per boot; see [`AutoscaleSpec::boot`] for the default.
    #[serde(default, rename = "boot")]
    pub boot_set: Option<BootTime>,
    /// Minimum time between two scaling actions.
    #[serde(default)]
    pub cooldown: SimDuration,
    /// How often the autoscaler looks.
    #[serde(default = "default_interval")]
    pub interval: SimDuration,
    /// `p99_ttft`: the window of finished hops the p99 is taken over (default 2m).
    #[serde(default = "default_window")]
    pub window: SimDuration,
    /// `p99_ttft`: scale down (one server) when the p99 is below this fraction of the
    /// target (default 0.5).
    #[serde(default = "default_scale_down_below")]
    pub scale_down_below: f64,
    /// `min = 0`: the pool goes to zero only once it has been idle this long, nothing
    /// in service or waiting since its last hop left (KEDA's `cooldownPeriod`; default 5m, see
    /// [`AutoscaleSpec::zero_after_idle`]). Refused with `min > 0`.
    #[serde(default, rename = "zero_after_idle")]
    pub zero_after_idle_set: Option<SimDuration>,
    /// `min = 0`: when a pool at zero wakes (default: at the next look). Refused with
    /// `min > 0`.
    #[serde(default)]
    pub activation: Option<Activation>,
    /// Scheduled floors: from `from` to `until` (repeating `every`), at least `min`.
    #[serde(default)]
    pub prewarm: Vec<PrewarmSpec>,
}

/// `activation` of a pool that scales to zero: when a hop finding it with no server
/// running or booting makes it boot one.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// At the autoscaler's next look (KEDA polling its trigger).
    #[default]
    NextLook,
    /// At once, when the hop arrives (Knative's activator pokes the autoscaler).
    OnArrival,
}

/// `prewarm = [{ from = "8h", until = "10h", min = 12, every = "24h" }]`: from `from`
/// (simulated time since the start) until `until`, and again every `every` if given,
/// the pool keeps at least `min` servers (running or booting).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrewarmSpec {
    pub from: SimDuration,
    pub until: SimDuration,
    pub min: u32,
    #[serde(default)]
    pub every: Option<SimDuration>,
}

impl PrewarmSpec {
    /// Whether the rule's window covers `now`.
    pub fn active_at(&self, now: SimTime) -> bool {
        let (t, from, until) = (now.as_nanos(), self.from.as_nanos(), self.until.as_nanos());
        if t < from {
            return false;
        }
        let phase = match self.every {
            Some(e) if e.as_nanos() > 0 => (t - from) % e.as_nanos(),
            _ => t - from,
        };
        phase < until.saturating_sub(from)
    }

    /// The first window start at or after `t`.
    pub fn next_start(&self, t: SimTime) -> Option<SimTime> {
        let from = self.from.as_nanos();
        if t.as_nanos() <= from {
            return Some(SimTime(from));
        }
        let e = self.every?.as_nanos();
        if e == 0 {
            return None;
        }
        let k = (t.as_nanos() - from).div_ceil(e);
        k.checked_mul(e)
            .and_then(|x| x.checked_add(from))
            .map(SimTime)
    }
}

/// How long a new server takes from the decision to boot it until it takes work: a
/// fixed duration (`boot = "90s"`) or a distribution of durations drawn for each boot
/// (`boot = { dist = "lognormal", median = "3m", p99 = "8m" }`), because cold starts
/// vary with image pulls, node provisioning and weight loading. Drawn from the pool's
/// own named stream, so a fixed boot draws nothing and a drawn one moves no other
/// component's numbers.
#[derive(Clone, Debug)]
pub enum BootTime {
    Fixed(SimDuration),
    /// The distribution as written and its validated sampler (values in seconds).
    Drawn(crate::dist::DistSpec, crate::dist::Sampler),
}

impl BootTime {
    /// One boot's duration (a fixed boot does not touch `rng`).
    pub fn draw<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> SimDuration {
        match self {
            BootTime::Fixed(d) => *d,
            BootTime::Drawn(_, s) => s.sample_duration(rng),
        }
    }

    /// The mean boot duration (what planning figures use).
    pub fn mean(&self) -> SimDuration {
        match self {
            BootTime::Fixed(d) => *d,
            BootTime::Drawn(_, s) => SimDuration::from_secs_f64(s.mean()),
        }
    }

    /// Whether boots are drawn (and so need a random stream).
    pub fn is_drawn(&self) -> bool {
        matches!(self, BootTime::Drawn(..))
    }
}

impl From<SimDuration> for BootTime {
    fn from(d: SimDuration) -> Self {
        BootTime::Fixed(d)
    }
}

impl PartialEq for BootTime {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (BootTime::Fixed(a), BootTime::Fixed(b)) => a == b,
            (BootTime::Drawn(a, _), BootTime::Drawn(b, _)) => a == b,
            _ => false,
        }
    }
}

impl PartialEq<SimDuration> for BootTime {
    fn eq(&self, other: &SimDuration) -> bool {
        matches!(self, BootTime::Fixed(d) if d == other)
    }
}

impl std::fmt::Display for BootTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootTime::Fixed(d) => write!(f, "{d}"),
            BootTime::Drawn(spec, s) => {
                let name = match spec {
                    crate::dist::DistSpec::Constant { .. } => "constant",
                    crate::dist::DistSpec::Deterministic { .. } => "deterministic",
                    crate::dist::DistSpec::Uniform { .. } => "uniform",
                    crate::dist::DistSpec::Exponential { .. } => "exponential",
                    crate::dist::DistSpec::Normal { .. } => "normal",
                    crate::dist::DistSpec::Lognormal { .. } => "lognormal",
                    crate::dist::DistSpec::Gamma { .. } => "gamma",
                    crate::dist::DistSpec::Empirical { .. } => "empirical",
                };
                // Whole seconds (milliseconds under 10 s): a planning figure.
                let rounded = |x: f64| {
                    let ms = if x >= 10.0 {
                        x.round() * 1e3
                    } else {
                        (x * 1e3).round()
                    };
                    SimDuration::from_secs_f64(ms / 1e3)
                };
                write!(
                    f,
                    "{} on average ({name}; 99.9th percentile about {})",
                    rounded(s.mean()),
                    rounded(s.high())
                )
            }
        }
    }
}

impl<'de> Deserialize<'de> for BootTime {
    /// A duration ("90s", or seconds), or a distribution table whose parameters are
    /// validated here (the error names the parameter).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = toml::Value::deserialize(d)?;
        if v.is_table() {
            let spec: crate::dist::DistSpec = v.try_into().map_err(serde::de::Error::custom)?;
            let sampler = spec.sampler().map_err(serde::de::Error::custom)?;
            Ok(BootTime::Drawn(spec, sampler))
        } else {
            SimDuration::deserialize(v)
                .map(BootTime::Fixed)
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "{}; a boot is a duration (\"90s\") or a distribution of durations ({{ dist = \"lognormal\", median = \"3m\", p99 = \"8m\" }})",
                        e.to_string().trim_end()
                    ))
                })
        }
    }
}

impl AutoscaleSpec {
    /// How long a new server takes from the decision to taking work. Unset: 0 on an
    /// abstract pool; on a GPU pool the scenario fills in the replica's cold start
    /// (the GPU profile's node boot plus loading the weights, see
    /// `GpuPool::cold_start`).
    pub fn boot(&self) -> &BootTime {
        static NO_BOOT: BootTime = BootTime::Fixed(SimDuration::ZERO);
        self.boot_set.as_ref().unwrap_or(&NO_BOOT)
    }

    /// How long the looks must find the pool idle before its last server goes.
    pub fn zero_after_idle(&self) -> SimDuration {
        self.zero_after_idle_set
            .unwrap_or(SimDuration::from_secs(300))
    }

    /// The floor at `now`: `min`, raised by every pre-warm rule whose window covers
    /// `now` (never above `max`).
    pub fn floor_at(&self, now: SimTime) -> u32 {
        self.prewarm
            .iter()
            .filter(|p| p.active_at(now))
            .map(|p| p.min)
            .fold(self.min, u32::max)
            .min(self.max)
    }

    /// The first pre-warm window start at or after `t`, over every rule.
    pub fn next_prewarm(&self, t: SimTime) -> Option<SimTime> {
        self.prewarm.iter().filter_map(|p| p.next_start(t)).min()
    }
}

fn default_metric() -> String {
    "queue_depth".into()
}
fn default_interval() -> SimDuration {
    SimDuration::from_secs(30)
}
fn default_window() -> SimDuration {
    SimDuration::from_secs(120)
}
fn default_scale_down_below() -> f64 {
    0.5
}

/// What an autoscaler sees of its pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaleObservation {
    pub now: SimTime,
    /// Running servers (booted), not counting those draining.
    pub running: u32,
    /// Servers booting.
    pub booting: u32,
    pub busy: u64,
    pub queued: u64,
    /// Prompt + output tokens of the hops submitted to the pool and not finished.
    pub tokens_in_flight: u64,
    /// p99 (nearest rank) of the time to first token of the hops that finished on the
    /// pool within the autoscaler's `window` (abstract pools: time to start of
    /// service); `None` without such hops.
    pub ttft_p99: Option<SimDuration>,
    /// How many hops that p99 is over.
    pub ttft_samples: u32,
    /// How long the oldest hop still waiting for its first token (abstract pools: for
    /// service) has waited; `None` when none waits. Tracked for `p99_ttft` and
    /// `queue_age` autoscalers only (`None` otherwise).
    pub oldest_wait: Option<SimDuration>,
    /// With nothing in service or waiting: when the pool last had work (the last hop
    /// to leave it, or the run's start); `None` while it has some.
    pub idle_since: Option<SimTime>,
}

/// Decides a pool's target server count (running + booting).
pub trait Autoscaler: Send {
    fn target(&mut self, obs: &ScaleObservation) -> u32;
}

/// Builds policies from their specs.
pub trait PolicyFactory: Sync {
    fn discipline(&self, spec: DisciplineSpec) -> Box<dyn QueueDiscipline>;
    fn router(&self, spec: RoutingSpec) -> Box<dyn TierRouter>;
    fn autoscaler(&self, spec: &AutoscaleSpec) -> Box<dyn Autoscaler>;
    /// Whether this factory implements `spec` (so a caller can refuse a scenario
    /// instead of silently running something else).
    fn supports(&self, spec: DisciplineSpec) -> bool;
    /// A GPU pool's replica picker by name; `None` leaves the pool to sim-core's
    /// built-in pickers (least outstanding tokens or requests, round robin). `random`
    /// never reaches the factory: the simulator seeds it from the scenario.
    fn replica_picker(
        &self,
        _name: &str,
    ) -> Option<Box<dyn crate::gpu::gpu_station::ReplicaPicker>> {
        None
    }
}

/// The minimal policies sim-core runs with on its own: FIFO queues, first-available
/// routing, fixed capacity. Scenarios asking for more need `policies::Standard`
/// (the CLI always uses it).
pub struct BuiltinPolicies;

struct FirstAvailable;

impl TierRouter for FirstAvailable {
    fn choose(&mut self, _req: &RouteRequest, candidates: &[PoolView]) -> Option<usize> {
        candidates.iter().position(|c| c.available)
    }
}

struct FixedCapacity;

impl Autoscaler for FixedCapacity {
    fn target(&mut self, obs: &ScaleObservation) -> u32 {
        obs.running + obs.booting
    }
}

impl PolicyFactory for BuiltinPolicies {
    fn discipline(&self, _spec: DisciplineSpec) -> Box<dyn QueueDiscipline> {
        Box::new(Fifo::default())
    }
    fn router(&self, _spec: RoutingSpec) -> Box<dyn TierRouter> {
        Box::new(FirstAvailable)
    }
    fn autoscaler(&self, _spec: &AutoscaleSpec) -> Box<dyn Autoscaler> {
        Box::new(FixedCapacity)
    }
    fn supports(&self, spec: DisciplineSpec) -> bool {
        spec == DisciplineSpec::Fifo
    }
}

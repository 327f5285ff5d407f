//! The scenario schema (what a TOML file may say) and its validation into a compiled
//! [`Scenario`] that the simulator runs. Unknown keys are rejected by serde; semantic
//! errors name the key path and what was expected.

use crate::dist::{DistSpec, Sampler};
use crate::time::{SimDuration, SimTime};
use crate::workflow::{Names, NodeKind, NodeSpec, WorkflowGraph, compile_graph};
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
    /// Downstream systems that tool nodes call, by name.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolSpec>,
    /// Lanes (online-interactive, batch-offline, ...): priority and fair-share weight.
    #[serde(default)]
    pub lanes: BTreeMap<String, LaneSpec>,
    /// Model tiers: each an ordered fallback chain of pools.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierSpec>,
    /// How tiered hops choose among their tier's pools.
    #[serde(default)]
    pub routing: RoutingSection,
    /// Named variants for `factorysim compare` (each a list of `key.path=value`).
    #[serde(default)]
    pub variants: BTreeMap<String, VariantSpec>,
    /// Promotion gates `factorysim compare` judges every variant by, each
    /// `[CLASS.]METRIC=LIMIT` as with `--gate` (parsed by the CLI, which owns gates).
    #[serde(default)]
    pub gates: Vec<String>,
    /// Extra or changed GPU and model profiles (see docs/gpu-model.md).
    #[serde(default)]
    pub profiles: Option<crate::gpu::profiles::ProfileOverrides>,
    /// A global emergency switch: cap every fan-out from a point in time.
    #[serde(default)]
    pub emergency: Option<EmergencySpec>,
    /// Tenants (the `tenant` of classes): token budgets for in-flight work and rate
    /// limits.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSpec>,
}

/// `admission = { ... }` on a pool or a lane: a watermark on model tokens in flight
/// (input + output tokens of hops admitted and not finished).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionSpec {
    /// The token capacity the watermark is a share of.
    pub max_tokens_in_flight: u64,
    /// Share of `max_tokens_in_flight` above which `action` applies (default 1.0).
    #[serde(default)]
    pub watermark: Option<f64>,
    /// What happens to a hop that would go above the watermark (default `reject`).
    #[serde(default)]
    pub action: AdmissionAction,
    /// The pool a hop goes to instead under `action = "degrade"`.
    #[serde(default)]
    pub degrade_to: Option<String>,
}

/// What an admission watermark does to a hop that would cross it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionAction {
    /// Hold it at the door (FIFO per pool or lane) until tokens in flight leave room
    /// for it; counted as over the watermark.
    Queue,
    /// Refuse it with a 429 and the pool's retry-after.
    #[default]
    Reject,
    /// Send it to `degrade_to` instead, counted as a degraded hop.
    Degrade,
    /// Refuse hops of lanes below the highest-priority lane that reaches the pool;
    /// the top lane is admitted up to 100% of `max_tokens_in_flight`.
    Shed,
}

/// `rate_limit = { tokens_per_s = 5000, burst = 20000 }` on a lane or a tenant: a
/// token bucket over model tokens (input + output) of admitted hops.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Refill rate, model tokens per second.
    pub tokens_per_s: f64,
    /// Bucket size, tokens (the bucket starts full).
    pub burst: u64,
}

/// `[tenants.NAME]`: limits shared by every class with `tenant = "NAME"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Token budget for in-flight work: a hop that would take the tenant's model tokens
    /// in flight above this is refused (429).
    #[serde(default)]
    pub max_tokens_in_flight: Option<u64>,
    /// Token bucket over the tenant's admitted model tokens.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// The retry-after of the tenant's token-budget 429s (default: the hop's first
    /// pool's); a bucket's 429 says when the bucket will hold enough tokens instead.
    #[serde(default)]
    pub retry_after: Option<SimDuration>,
    /// Attempts before a hop refused by the tenant's limits is rejected (default: the
    /// hop's first pool's `max_attempts`).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// The finance cost centre the tenant's spend is shown back to (showback.csv;
    /// default: the tenant's name).
    #[serde(default)]
    pub cost_centre: Option<String>,
}

/// `[emergency]`: "max fan-out 2 from time t".
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmergencySpec {
    pub max_fan_out: u32,
    pub from: SimDuration,
    #[serde(default)]
    pub until: Option<SimDuration>,
}

/// `breaker = { failures = 5, open = "30s" }` or `breaker = { error_rate = 0.5,
/// window = "30s", min_calls = 10, open = "30s" }` on a pool: a circuit breaker that
/// opens on consecutive failures, on the share of failed calls in a sliding window, or
/// on whichever comes first when both are given.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// Consecutive failed calls (refusals, timeouts, errors) that open the breaker.
    #[serde(default)]
    pub failures: Option<u32>,
    /// Share of failed calls among the calls of the last `window` that opens it.
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// Sliding window of the error rate (default 30s).
    #[serde(default)]
    pub window: Option<SimDuration>,
    /// Calls the window must hold before the error rate counts (default 10).
    #[serde(default)]
    pub min_calls: Option<u32>,
    /// How long it stays open before letting one probe through (half-open).
    pub open: SimDuration,
}

/// `spot = { ... }` on a GPU pool: the first `servers` replicas run on spot capacity.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpotSpec {
    /// Replicas on spot (the first ones); default all of the pool's `servers`.
    #[serde(default)]
    pub servers: Option<u32>,
    /// Preemptions per spot replica-hour up (exponential times between preemptions).
    pub preemptions_per_hour: f64,
    /// Price of a spot replica-hour.
    pub usd_per_server_hour: f64,
    /// What happens to the requests running on a preempted replica.
    #[serde(default)]
    pub on_preempt: OnPreempt,
    /// Whether a preempted replica is replaced by a new spot replica (default true).
    #[serde(default = "yes")]
    pub replace: bool,
    /// Boot time of a replacement: a duration or a distribution drawn per boot
    /// (default: the replica's cold start, see `GpuPool::cold_start`).
    #[serde(default)]
    pub boot: Option<crate::policy::BootTime>,
    /// Warning before a preemption (AWS gives 2 minutes, GCP 30 s): the replica takes
    /// nothing new from the notice, serves what it has, and is lost when the notice
    /// runs out (default 0: lost without warning).
    #[serde(default)]
    pub notice: Option<SimDuration>,
    /// What the requests only waiting on a noticed replica do.
    #[serde(default)]
    pub on_notice: OnNotice,
    /// Spot replicas taken by each preemption event (a zone running short reclaims
    /// several at once): a whole number (default 1), or a distribution of counts drawn
    /// per event. Events are that many times rarer (on average), so each replica's
    /// hazard stays `preemptions_per_hour`.
    #[serde(default)]
    pub reclaim_size: Option<ReclaimSizeSpec>,
    /// Spot-market episodes: in each window every spot replica's hazard is
    /// `preemptions_per_hour` x `factor` (a zone running short of capacity; a factor
    /// below 1 is a calm spell). Windows may not overlap.
    #[serde(default)]
    pub episodes: Vec<SpotEpisodeSpec>,
}

/// `reclaim_size` of a pool's `spot`: `3`, or `{ dist = "empirical", values = [1, 2, 4] }`.
#[derive(Clone, Debug, PartialEq)]
pub enum ReclaimSizeSpec {
    Fixed(i64),
    Drawn(DistSpec),
}

impl<'de> Deserialize<'de> for ReclaimSizeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = toml::Value::deserialize(d)?;
        match v {
            toml::Value::Integer(i) => Ok(ReclaimSizeSpec::Fixed(i)),
            toml::Value::Table(_) => crate::dist::counts(v)
                .map(ReclaimSizeSpec::Drawn)
                .map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "expected a whole number of replicas (3) or a distribution of counts ({{ dist = \"empirical\", values = [1, 2, 4] }}), got {other}"
            ))),
        }
    }
}

/// The largest 99.9th percentile a drawn reclaim size may have (a zone reclaiming
/// thousands of replicas at once is beyond what the mean-size table is computed for).
const MAX_DRAWN_RECLAIM: f64 = 1000.0;

/// Reclaim sizes drawn per event: the draw rounded and held to [1, replicas up].
#[derive(Clone, Debug)]
pub struct ReclaimDraw {
    pub spec: DistSpec,
    pub sampler: Sampler,
    /// `mean_taken[n]`: the mean replicas an event takes with `n` spot replicas up,
    /// E[min(max(R, 1), n)] for the rounded draw R (0 for n = 0).
    pub mean_taken: Vec<f64>,
}

impl PartialEq for ReclaimDraw {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl ReclaimDraw {
    /// Validated, with the means for up to `servers` replicas up:
    /// E[min(max(R, 1), n)] = 1 + E[min(R, n)] - P(R >= 1) (the floor at one adds the
    /// draws of 0).
    pub fn new(spec: DistSpec, servers: u32) -> Result<Self, String> {
        let sampler = spec.sampler()?;
        let high = sampler.high();
        if high.is_nan() || high > MAX_DRAWN_RECLAIM {
            return Err(format!(
                "expected reclaim sizes of at most about {MAX_DRAWN_RECLAIM} replicas; this distribution's 99.9th percentile is about {high:.0}"
            ));
        }
        // Past four times the 99.9th percentile the mean no longer moves: the table
        // is computed that far (each entry costs up to n terms) and then held.
        let limit = servers.min((4.0 * high).ceil() as u32 + 8);
        let mut mean_taken = vec![0.0];
        if let Sampler::Gamma(..) = sampler {
            // No survival function here: one sorted set of 65,536 draws of a fixed
            // stream (what `mean_capped_count` averages per call), every n at once.
            use rand::SeedableRng;
            let mut rng = crate::rng::SimRng::seed_from_u64(0x7265_636c_6169_6d00);
            let mut draws: Vec<u64> = (0..1 << 16)
                .map(|_| sampler.sample_tokens(&mut rng).max(1))
                .collect();
            draws.sort_unstable();
            let total = draws.len() as f64;
            let (mut below, mut i) = (0.0, 0);
            for n in 1..=u64::from(limit) {
                while i < draws.len() && draws[i] < n {
                    below += draws[i] as f64;
                    i += 1;
                }
                mean_taken.push((below + n as f64 * (draws.len() - i) as f64) / total);
            }
        } else {
            let p_one = sampler.mean_capped_count(1);
            mean_taken
                .extend((1..=u64::from(limit)).map(|n| 1.0 + sampler.mean_capped_count(n) - p_one));
        }
        let last = mean_taken.last().copied().unwrap_or(0.0);
        mean_taken.resize(servers as usize + 1, last);
        Ok(ReclaimDraw {
            spec,
            sampler,
            mean_taken,
        })
    }

    /// One event's size with `up` replicas exposed (at least 1, at most `up`).
    pub fn draw<R: rand::Rng + ?Sized>(&self, rng: &mut R, up: u32) -> u32 {
        let r = self.sampler.sample_tokens(rng).min(u64::from(u32::MAX)) as u32;
        r.clamp(1, up.max(1))
    }
}

/// `episodes = [{ start = "3h", duration = "1h", factor = 8.0 }]` of a pool's `spot`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpotEpisodeSpec {
    pub start: SimDuration,
    pub duration: SimDuration,
    pub factor: f64,
}

/// `on_escalation_refused` of a class: an escalation (a node's `escalate`, or a step of
/// its tier's cascade) that no pool took after its attempts (down, 429s, an open
/// breaker).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnEscalationRefused {
    /// The workflow is rejected with the cause.
    #[default]
    Reject,
    /// The client keeps the answer it has (the call the escalation would redo): the
    /// node finishes, counted as a degraded hop.
    KeepAnswer,
}

/// `on_notice` of a spot pool: the requests waiting (not running) on a replica given a
/// preemption notice.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnNotice {
    /// They stay in its queue, served if the notice allows (a vLLM server draining on
    /// SIGTERM), and move when it is lost.
    #[default]
    KeepWaiting,
    /// The load balancer re-sends them to the other replicas at once.
    MoveWaiting,
}

fn yes() -> bool {
    true
}

/// `on_timeout` of a pool: what happens to a call whose caller's `timeout` passed.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// The call runs to its end and is charged, as waste (a client timeout does not
    /// stop the server).
    #[default]
    Continue,
    /// The pool stops the call (vLLM aborts a request whose client disconnected): it
    /// leaves the queue or frees its server (a GPU replica: after the iteration in
    /// progress), charged what it used; a paid API bills the output tokens streamed
    /// so far.
    Abort,
}

/// `on_preempt` of a spot pool.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnPreempt {
    /// Send the request again to the pool (another replica), counted.
    #[default]
    Recompute,
    /// The hop fails, and its workflow with it.
    Fail,
}

/// `reserved = { servers = 4, usd_per_server_hour = 1.9 }` on a GPU pool, or with an
/// upfront payment: `{ servers = 4, usd_per_server_hour = 0.9, upfront_usd = 8760,
/// term = "365d" }`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReservedSpec {
    /// Replicas reserved: paid for the whole run, used or not.
    pub servers: u32,
    /// The reserved (committed) price of a replica-hour. After validation it includes
    /// the upfront payment amortised over the term.
    pub usd_per_server_hour: f64,
    /// Paid once per reserved replica for the whole `term` (default 0); the run is
    /// charged its share, `upfront_usd` / term hours per replica-hour.
    #[serde(default)]
    pub upfront_usd: f64,
    /// The commitment's length, over which `upfront_usd` is spread (required with it).
    #[serde(default)]
    pub term: Option<SimDuration>,
}

impl ReservedSpec {
    /// The upfront payment per replica-hour (0 without one).
    pub fn upfront_per_hour(&self) -> f64 {
        match self.term {
            Some(t) if self.upfront_usd > 0.0 && t > SimDuration::ZERO => {
                self.upfront_usd / (t.as_secs_f64() / 3600.0)
            }
            _ => 0.0,
        }
    }
}

/// A validated spot spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Spot {
    pub servers: u32,
    pub preemptions_per_hour: f64,
    pub usd_per_server_hour: f64,
    pub on_preempt: OnPreempt,
    pub replace: bool,
    pub boot: crate::policy::BootTime,
    /// Zero: lost at once.
    pub notice: SimDuration,
    pub on_notice: OnNotice,
    /// Replicas taken by each preemption event (>= 1; 1 where they are drawn).
    pub reclaim_size: u32,
    /// Sizes drawn per event instead of `reclaim_size`.
    pub reclaim_draw: Option<ReclaimDraw>,
    /// Windows (start, end, factor) of a raised or lowered hazard, in time order, not
    /// overlapping.
    pub episodes: Vec<(SimTime, SimTime, f64)>,
}

impl Spot {
    /// The hazard multiplier at `t` (1 outside every episode).
    pub fn hazard_factor(&self, t: SimTime) -> f64 {
        self.episodes
            .iter()
            .find(|&&(a, b, _)| a <= t && t < b)
            .map_or(1.0, |e| e.2)
    }

    /// The largest multiplier over the run (at least 1): candidate preemptions are
    /// drawn at this many times the base rate and thinned by `hazard_factor`.
    pub fn max_hazard_factor(&self) -> f64 {
        self.episodes.iter().map(|e| e.2).fold(1.0, f64::max)
    }
}

/// A validated circuit breaker (see [`BreakerSpec`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Breaker {
    pub failures: Option<u32>,
    /// (error rate, window, minimum calls in the window).
    pub error_rate: Option<(f64, SimDuration, u32)>,
    pub open: SimDuration,
}

/// `storms = [{ start, duration, fraction }]` on a pool: in the window, that share of
/// the calls the pool would admit is answered 429 instead (fault injection).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormSpec {
    pub start: SimDuration,
    pub duration: SimDuration,
    pub fraction: f64,
}

/// `error_storms = [{ start, duration, error_rate }]` on a pool: calls that finish in
/// the window fail with that share instead of the pool's `error_rate` (fault
/// injection: a provider incident answering 500s).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorStormSpec {
    pub start: SimDuration,
    pub duration: SimDuration,
    pub error_rate: f64,
}

/// `spikes = [{ start, duration, factor }]` on a tool: calls made in the window take
/// `factor` times their drawn latency (fault injection).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeSpec {
    pub start: SimDuration,
    pub duration: SimDuration,
    pub factor: f64,
}

/// `error_backoff = { base = "1s", max = "1m", jitter = 0.2 }` on a pool: how a client
/// waits before retrying a call that failed with an error or timed out:
/// min(`base` x 2^(retries so far), `max`) x a uniform jitter in [1 - `jitter`,
/// 1 + `jitter`].
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackoffSpec {
    #[serde(default = "default_backoff_base")]
    pub base: SimDuration,
    #[serde(default = "default_backoff_max")]
    pub max: SimDuration,
    /// Half-width of the uniform jitter factor around 1 (default 0.2, in [0, 1]).
    #[serde(default = "default_backoff_jitter")]
    pub jitter: f64,
}

fn default_backoff_base() -> SimDuration {
    SimDuration::from_secs(1)
}
fn default_backoff_max() -> SimDuration {
    SimDuration::from_secs(60)
}
fn default_backoff_jitter() -> f64 {
    0.2
}

impl Default for BackoffSpec {
    fn default() -> Self {
        BackoffSpec {
            base: default_backoff_base(),
            max: default_backoff_max(),
            jitter: default_backoff_jitter(),
        }
    }
}

/// `gpu = { ... }` on a pool: `servers` model replicas, each `model` on `tp` GPUs,
/// served with continuous batching and a paged KV cache.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuPoolSpec {
    pub model: String,
    pub gpu: String,
    /// Tensor-parallel degree (GPUs per replica). Default 1.
    #[serde(default)]
    pub tp: Option<u32>,
    /// Performance model: "roofline" (default) or "calibrated".
    #[serde(default)]
    pub perf: Option<String>,
    /// Fraction of GPU memory for weights + KV cache. Default 0.9.
    #[serde(default)]
    pub memory_utilization: Option<f64>,
    #[serde(default)]
    pub max_num_seqs: Option<u32>,
    #[serde(default)]
    pub max_batched_tokens: Option<u32>,
    #[serde(default)]
    pub block_size: Option<u32>,
    #[serde(default)]
    pub watermark: Option<f64>,
    #[serde(default)]
    pub chunked_prefill: Option<bool>,
    #[serde(default)]
    pub prefix_caching: Option<bool>,
    #[serde(default)]
    pub decode_skipping: Option<bool>,
    /// Replica load balancing: "least_outstanding_tokens" (default),
    /// "least_tokens_ahead" (lane-aware), "least_outstanding_requests", "round_robin",
    /// "random" (stream `pool/<name>/picker`), "prefix_affinity" or "kv_aware".
    #[serde(default)]
    pub picker: Option<String>,
    /// How fast each GPU of a new replica reads its share of the weights (GB/s, from
    /// local NVMe, a network volume or an object store): a cold start is the GPU
    /// profile's node boot plus weight bytes / tp / this. Unset: loading takes no time.
    #[serde(default)]
    pub model_load_gb_per_s: Option<f64>,
}

/// `[lanes.NAME]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneSpec {
    /// Larger is served first under `discipline = "priority"`.
    #[serde(default)]
    pub priority: i32,
    /// Share under `discipline = "weighted_fair"`.
    #[serde(default = "one")]
    pub weight: f64,
    /// Watermark on the lane's model tokens in flight, over all pools (actions
    /// `queue`, `reject`, `degrade`).
    #[serde(default)]
    pub admission: Option<AdmissionSpec>,
    /// Concurrency cap: most model hops (sequences) of the lane in flight at once, over
    /// all pools; a hop beyond it waits at the lane's door (FIFO) until one finishes.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Token bucket over the lane's admitted model tokens.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// The retry-after of the lane's watermark 429s (default: the hop's first pool's);
    /// a bucket's 429 says when the bucket will hold enough tokens instead.
    #[serde(default)]
    pub retry_after: Option<SimDuration>,
    /// Attempts before a hop refused by the lane's limits is rejected (default: the
    /// hop's first pool's `max_attempts`).
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

fn one() -> f64 {
    1.0
}

/// `[tiers.NAME]`: pools in fallback order (first is preferred by static routing).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    pub pools: Vec<String>,
    /// Cascade: after a hop of a node on this tier answers, with `probability` the
    /// answer is judged not good enough and the call is redone on tier `to` (whose own
    /// `escalate` may send it further).
    #[serde(default)]
    pub escalate: Option<TierEscalateSpec>,
}

/// `escalate = { probability = 0.2, to = "mid" }` on a tier.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierEscalateSpec {
    pub probability: f64,
    pub to: String,
}

/// `[routing]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    #[serde(default)]
    pub policy: crate::policy::RoutingSpec,
    /// Ordered routing rules; the first whose conditions match a tiered hop decides its
    /// tier and/or restricts its pools; the policy then picks within that chain.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Static role-to-tier map: an llm or compact node naming neither a pool nor a
    /// tier is routed on its role's tier (`roles = { planner = "frontier" }`).
    #[serde(default)]
    pub roles: BTreeMap<String, String>,
    /// The tier of such a node whose role is not in `roles`.
    #[serde(default)]
    pub default_tier: Option<String>,
}

/// `[[routing.rules]]`: when the conditions hold, route on `tier` (instead of the
/// node's) and/or only on `pools`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Conditions, all of which must hold (none: always).
    #[serde(default)]
    pub when: RuleWhenSpec,
    /// The tier whose chain the hop is routed on.
    #[serde(default)]
    pub tier: Option<String>,
    /// Only these pools of the chain are used (in chain order).
    #[serde(default)]
    pub pools: Option<Vec<String>>,
}

/// The conditions of a routing rule.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleWhenSpec {
    /// The workflow class.
    #[serde(default)]
    pub class: Option<String>,
    /// The node's own tier.
    #[serde(default)]
    pub tier: Option<String>,
    /// The class's data sensitivity label.
    #[serde(default)]
    pub sensitivity: Option<String>,
    /// The class's SLO is shorter than this.
    #[serde(default)]
    pub slo_below: Option<SimDuration>,
    /// The workflow's remaining budget (class `budget_usd` minus dollars spent so far)
    /// is below this many dollars.
    #[serde(default)]
    pub budget_below: Option<f64>,
    /// The node's role (default its id).
    #[serde(default)]
    pub role: Option<String>,
    /// The hop's prompt (input tokens, inherited context included) has at least this
    /// many tokens.
    #[serde(default)]
    pub min_input_tokens: Option<u64>,
}

/// `[variants.NAME]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    #[serde(default)]
    pub description: Option<String>,
    /// Overrides, each `key.path=value` as with `--set`.
    pub set: Vec<String>,
}

/// A window in which a pool is down (fault injection).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutageSpec {
    pub start: SimDuration,
    pub duration: SimDuration,
}

/// A paid model API as a pool: no servers to queue for, priced per token, with rate
/// limits that answer 429.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSpec {
    /// Time to first token.
    pub ttft: DistSpec,
    /// Time per output token after the first.
    pub tpot: DistSpec,
    #[serde(default)]
    pub usd_per_1k_input: f64,
    #[serde(default)]
    pub usd_per_1k_output: f64,
    /// Price of prompt tokens served from the provider's prompt cache: a call's
    /// shared-prefix tokens (the node's `shared_prefix_tokens`, assumed warm). Default:
    /// the input price (no discount).
    #[serde(default)]
    pub usd_per_1k_cached_input: Option<f64>,
    /// Requests per minute before the API answers 429.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens (input + output) per minute before the API answers 429.
    #[serde(default)]
    pub tpm: Option<u64>,
}

/// `[tools.NAME]`: a downstream system (search API, CRM, code runner).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    /// Latency of one call.
    pub latency: DistSpec,
    /// Probability that a call fails.
    #[serde(default)]
    pub failure_probability: f64,
    /// Extra attempts after a failure.
    #[serde(default)]
    pub retries: u32,
    /// Wait before each retry (default none).
    #[serde(default)]
    pub retry_backoff: Option<DistSpec>,
    /// Tokens the call returns into the caller's context.
    #[serde(default, deserialize_with = "crate::dist::counts_opt")]
    pub payload_tokens: Option<DistSpec>,
    #[serde(default)]
    pub usd_per_call: f64,
    /// Most calls in flight at once, shared by all workflows (a bulkhead); default
    /// unlimited.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Latency spike windows (fault injection).
    #[serde(default)]
    pub spikes: Vec<SpikeSpec>,
    /// A call whose caller's `timeout` passed: runs on (`continue`, default) or is
    /// stopped (`abort`), freeing its bulkhead slot.
    #[serde(default)]
    pub on_timeout: OnTimeout,
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
    /// If true, in-flight work is finished after the horizon and the run ends with its
    /// last workflow; if false, the run stops at the horizon and unfinished workflows
    /// are reported as `in_flight`.
    #[serde(default)]
    pub drain: bool,
    /// Interval of the time series (`timeseries.csv`, the pools-over-time plot): one row
    /// per interval (default 1 minute; a year-long horizon wants "1h").
    #[serde(default = "default_sample_every")]
    pub sample_every: SimDuration,
}

/// Most time-series intervals a run may have (about 95 years at a minute).
pub const MAX_SAMPLE_INTERVALS: u64 = 50_000_000;

fn default_sample_every() -> SimDuration {
    SimDuration::from_secs(60)
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
            sample_every: default_sample_every(),
        }
    }
}

/// `[pools.NAME]`: an abstract queueing station of `servers` identical servers with a
/// FIFO queue.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Number of servers (c in M/M/c); not used by `api` pools.
    #[serde(default)]
    pub servers: Option<i64>,
    /// Queue discipline across lanes: fifo (default), priority, weighted_fair,
    /// earliest_deadline (`gpu` pools: each replica's waiting queue).
    #[serde(default)]
    pub discipline: crate::policy::DisciplineSpec,
    /// `gpu` pools under `priority` or `earliest_deadline`: a waiting hop that cannot
    /// be admitted (no sequence slot, or no KV blocks above the watermark) preempts the
    /// worst-ranked running hops below it by recompute (default false).
    #[serde(default)]
    pub preempt_for_priority: bool,
    /// `gpu` pools: where hops wait for a sequence slot, `replica` (default: sent to a
    /// replica on arrival) or `pool` (one pool-wide queue in the discipline's order).
    #[serde(default)]
    pub queue_at: crate::gpu::gpu_station::QueueAt,
    /// Reactive autoscaling (boot lead time, cooldown, min/max).
    #[serde(default)]
    pub autoscale: Option<crate::policy::AutoscaleSpec>,
    /// Admission watermark: when this many hops wait, new hops get 429.
    #[serde(default)]
    pub max_queue: Option<u32>,
    /// Admission watermark on the pool's model tokens in flight, with an action.
    #[serde(default)]
    pub admission: Option<AdmissionSpec>,
    /// The retry-after a 429 from this pool carries (default 1s); the client honours it
    /// with +/-20% jitter.
    #[serde(default)]
    pub retry_after: Option<SimDuration>,
    /// Attempts a client makes against 429s before the workflow is rejected (default 4).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Windows in which the pool is down: new hops are refused (fallback or 429).
    #[serde(default)]
    pub outages: Vec<OutageSpec>,
    /// A paid API instead of servers.
    #[serde(default)]
    pub api: Option<ApiSpec>,
    /// GPU model replicas instead of abstract servers.
    #[serde(default)]
    pub gpu: Option<GpuPoolSpec>,
    /// Circuit breaker in front of the pool.
    #[serde(default)]
    pub breaker: Option<BreakerSpec>,
    /// Spot capacity: some replicas at a spot price, preempted at a rate.
    #[serde(default)]
    pub spot: Option<SpotSpec>,
    /// Reserved (committed) capacity: replica-hours paid for the whole run at a lower
    /// price, covering that many on-demand replicas at a time.
    #[serde(default)]
    pub reserved: Option<ReservedSpec>,
    /// Share of admitted calls that fail after their service (an error answer).
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// What the pool does with a call whose caller timed out (default: it runs on).
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Backoff before retrying a call that failed with an error (and one that timed
    /// out, unless `timeout_backoff` is set).
    #[serde(default)]
    pub error_backoff: Option<BackoffSpec>,
    /// Backoff before retrying a call whose caller timed out (default: `error_backoff`).
    #[serde(default)]
    pub timeout_backoff: Option<BackoffSpec>,
    /// 429 storm windows (fault injection).
    #[serde(default)]
    pub storms: Vec<StormSpec>,
    /// Error windows (fault injection): a higher `error_rate` inside each.
    #[serde(default)]
    pub error_storms: Vec<ErrorStormSpec>,
    /// Price of one server for one hour, in US dollars.
    #[serde(default)]
    pub usd_per_server_hour: f64,
    /// Default service time of a hop on this pool (a hop may override it).
    #[serde(default)]
    pub service: Option<DistSpec>,
    /// Token-driven service on an abstract pool: added for every 1,000 prompt tokens.
    #[serde(default)]
    pub prefill_per_1k_tokens: Option<SimDuration>,
    /// Token-driven service on an abstract pool: added for every output token.
    #[serde(default)]
    pub decode_per_token: Option<SimDuration>,
}

/// `[classes.NAME]`: a workflow class.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    pub arrival: ArrivalSpec,
    /// A simple chain of hops, run in order (shorthand for `nodes`).
    #[serde(default)]
    pub hops: Option<Vec<HopSpec>>,
    /// The workflow graph (see docs/workflows.md).
    #[serde(default)]
    pub nodes: Option<Vec<NodeSpec>>,
    /// Latency target for the whole workflow (reported as SLO attainment).
    #[serde(default)]
    pub slo: Option<SimDuration>,
    /// Share of workflows that should meet `slo` (default 0.99); the error budget is
    /// 1 - slo_target.
    #[serde(default)]
    pub slo_target: Option<f64>,
    /// A user who waits longer than this gives up: the workflow is abandoned (its cost
    /// is still counted, as waste).
    #[serde(default)]
    pub abandon_after: Option<SimDuration>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub lane: Option<String>,
    /// Most dollars a workflow should spend; cost-aware routing and routing rules
    /// respect it.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// Data sensitivity label (for example "restricted"), matched by routing rules.
    #[serde(default)]
    pub sensitivity: Option<String>,
    /// Cap on every fan-out of the class's workflows.
    #[serde(default)]
    pub max_fan_out: Option<u32>,
    /// What the client does when an escalation cannot be placed after its attempts.
    #[serde(default)]
    pub on_escalation_refused: OnEscalationRefused,
    /// Windows of changed load (month-end, launches).
    #[serde(default)]
    pub bursts: Vec<BurstSpec>,
    /// A canary: a share of this class's workflows runs on other pools or tiers and is
    /// reported as its own class `NAME/canary`.
    #[serde(default)]
    pub canary: Option<CanarySpec>,
}

/// `[classes.NAME.canary]`: move a share of a class's workflows to other pools.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// Share of the class's workflows in the canary cohort, in (0, 1].
    pub share: f64,
    /// Pool replacements for the cohort: `{ "a100" = "h100" }` (pinned hops and
    /// escalations).
    #[serde(default)]
    pub pools: BTreeMap<String, String>,
    /// Tier replacements for the cohort's tiered hops: `{ "frontier" = "frontier-h100" }`.
    #[serde(default)]
    pub tiers: BTreeMap<String, String>,
}

/// A window in which arrivals are multiplied and/or fan-out changes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstSpec {
    /// Start of the first window.
    pub start: SimDuration,
    pub duration: SimDuration,
    /// Repeat every this long (e.g. "30d"); default once.
    #[serde(default)]
    pub every: Option<SimDuration>,
    /// Arrival-rate multiplier inside the window (default 1).
    #[serde(default)]
    pub rate_factor: Option<f64>,
    /// Replaces every fan-out count of the class inside the window.
    #[serde(default, deserialize_with = "crate::dist::counts_opt")]
    pub fan_out: Option<DistSpec>,
}

/// How workflows of a class arrive.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "process", rename_all = "snake_case", deny_unknown_fields)]
pub enum ArrivalSpec {
    /// Poisson arrivals at `rate` workflows per second.
    Poisson { rate: f64 },
    /// Poisson with a piecewise-constant rate: `rates[i]` (per second) holds for the
    /// i-th `step`, cycling (24 hourly values make a diurnal profile). With `cv`, the
    /// gaps are gamma with that coefficient of variation in operational time (the
    /// rate's integral), so bursty load keeps the profile's rate in every step.
    Piecewise {
        step: SimDuration,
        rates: Vec<f64>,
        #[serde(default)]
        cv: Option<f64>,
    },
    /// Renewal arrivals: independent inter-arrival gaps drawn from `interarrival`
    /// (seconds); a `gamma` with `cv` > 1 gives bursty load with a chosen mean rate and
    /// inter-arrival CV (what `factorysim fit` writes).
    Renewal { interarrival: DistSpec },
    /// Closed loop: `users` each start a workflow, wait for it to end, think, repeat.
    Closed { users: u32, think: DistSpec },
    /// Recorded arrivals. Written in a scenario as `process = "trace"` with the trace's
    /// options; the loader reads the trace and hands the requests over (see
    /// docs/traces.md). `recorded` itself has no parameters.
    Recorded {},
}

/// One recorded request: when it arrived and what it asked for.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub at: SimTime,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Prefix-block hashes (Mooncake), `hash_block_tokens` tokens each.
    pub block_hashes: Option<std::sync::Arc<[u64]>>,
    pub hash_block_tokens: u32,
    /// A recorded workflow (span log): its own graph replaces the class's, and its
    /// token counts are those of the graph (`input_tokens`/`output_tokens` are totals).
    pub graph: Option<std::sync::Arc<crate::workflow::WorkflowGraph>>,
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
    /// The time series' interval (`simulation.sample_every`).
    pub sample_every: SimDuration,
    pub pools: Vec<Pool>,
    pub classes: Vec<WorkflowClass>,
    pub tools: Vec<Tool>,
    pub lanes: Vec<Lane>,
    /// Each tier's pools, in fallback order.
    pub tiers: Vec<Tier>,
    pub routing: crate::policy::RoutingSpec,
    /// Routing rules, in order (first match wins).
    pub routing_rules: Vec<RoutingRule>,
    /// Emergency fan-out cap: (from, until, max).
    pub emergency: Option<(SimTime, Option<SimTime>, u32)>,
    /// Tenants with limits (`[tenants.NAME]`), in name order.
    pub tenants: Vec<Tenant>,
}

#[derive(Clone, Debug)]
pub struct Lane {
    pub name: String,
    pub priority: i32,
    pub weight: f64,
    pub admission: Option<Admission>,
    /// Most model hops of the lane in flight at once (held at the lane's door beyond).
    pub max_in_flight: Option<u32>,
    pub rate_limit: Option<RateLimit>,
    /// Retry-after and attempts of the lane's 429s (None: the hop's first pool's).
    pub retry_after: Option<SimDuration>,
    pub max_attempts: Option<u32>,
}

/// A validated admission watermark on tokens in flight.
#[derive(Clone, Debug, PartialEq)]
pub struct Admission {
    pub max_tokens_in_flight: u64,
    /// floor(watermark x max_tokens_in_flight): a hop that would take the tokens in
    /// flight above this meets `action`.
    pub threshold: u64,
    pub action: AdmissionAction,
    /// Pool index for `degrade`.
    pub degrade_to: Option<usize>,
    /// Highest priority of the lanes whose classes can send hops to the pool (`shed`).
    pub top_priority: i32,
}

/// A validated token bucket: refill in milli-tokens per second, size in tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub milli_tokens_per_s: u64,
    pub burst: u64,
}

/// A validated `[tenants.NAME]`.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub name: String,
    pub max_tokens_in_flight: Option<u64>,
    pub rate_limit: Option<RateLimit>,
    /// Retry-after and attempts of the tenant's 429s (None: the hop's first pool's).
    pub retry_after: Option<SimDuration>,
    pub max_attempts: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct Tier {
    pub name: String,
    pub pools: Vec<usize>,
    /// Cascade step: (probability, tier index) of redoing an answer of this tier there.
    pub escalate: Option<(f64, usize)>,
}

impl Scenario {
    /// The tiers a hop of `tier` may cascade through after it (in order, not itself).
    pub fn cascade_from(&self, tier: usize) -> impl Iterator<Item = (f64, usize)> + '_ {
        let mut cur = tier;
        std::iter::from_fn(move || {
            let (p, to) = self.tiers[cur].escalate?;
            cur = to;
            Some((p, to))
        })
        .take(self.tiers.len())
    }
}

/// A validated routing rule.
#[derive(Clone, Debug)]
pub struct RoutingRule {
    pub class: Option<usize>,
    pub tier: Option<usize>,
    pub sensitivity: Option<String>,
    pub slo_below: Option<SimDuration>,
    pub budget_below: Option<f64>,
    pub role: Option<String>,
    pub min_input_tokens: Option<u64>,
    /// The chain a matching hop is routed on, by the node's tier.
    pub chains: Vec<Vec<usize>>,
}

/// What a routing rule sees of one hop.
#[derive(Clone, Copy, Debug)]
pub struct HopRouting<'a> {
    /// The node's tier.
    pub tier: usize,
    /// The workflow's remaining budget (None: the class has no budget).
    pub budget_left: Option<f64>,
    pub role: &'a str,
    pub input_tokens: u64,
}

impl RoutingRule {
    /// Whether the rule matches hop `hop` of a workflow of `class`.
    pub fn matches(&self, class_index: usize, class: &WorkflowClass, hop: HopRouting<'_>) -> bool {
        let HopRouting {
            tier,
            budget_left,
            role,
            input_tokens,
        } = hop;
        self.class
            .is_none_or(|c| c == class_index || class.cohort_of == Some(c))
            && self.tier.is_none_or(|t| t == tier)
            && self.role.as_deref().is_none_or(|r| r == role)
            && self.min_input_tokens.is_none_or(|m| input_tokens >= m)
            && self
                .sensitivity
                .as_ref()
                .is_none_or(|s| class.sensitivity.as_ref() == Some(s))
            && self
                .slo_below
                .is_none_or(|x| class.slo.is_some_and(|slo| slo < x))
            && self
                .budget_below
                .is_none_or(|x| budget_left.is_some_and(|b| b < x))
    }
}

#[derive(Clone, Debug)]
pub struct Pool {
    pub name: String,
    /// Servers at the start (`u32::MAX` for an API: no queueing).
    pub servers: u32,
    pub discipline: crate::policy::DisciplineSpec,
    /// Priority preemption on a GPU pool (validated: a `gpu` pool under a ranked
    /// discipline).
    pub preempt_for_priority: bool,
    /// Where a GPU pool's hops wait (validated: `pool` only on a `gpu` pool).
    pub queue_at: crate::gpu::gpu_station::QueueAt,
    pub autoscale: Option<crate::policy::AutoscaleSpec>,
    pub max_queue: Option<u32>,
    pub admission: Option<Admission>,
    pub retry_after: SimDuration,
    pub max_attempts: u32,
    pub outages: Vec<(SimTime, SimTime)>,
    pub api: Option<Api>,
    pub gpu: Option<GpuPool>,
    pub breaker: Option<Breaker>,
    /// Share of admitted calls that fail after their service.
    pub error_rate: f64,
    pub on_timeout: OnTimeout,
    pub error_backoff: BackoffSpec,
    /// Backoff before retrying a call whose caller timed out (default `error_backoff`).
    pub timeout_backoff: BackoffSpec,
    /// 429 storms: (start, end, fraction).
    pub storms: Vec<(SimTime, SimTime, f64)>,
    /// Error windows: (start, end, error rate).
    pub error_storms: Vec<(SimTime, SimTime, f64)>,
    pub spot: Option<Spot>,
    /// Reserved capacity (GPU pools).
    pub reserved: Option<ReservedSpec>,
    /// Default service time of hops here.
    pub service: Option<Sampler>,
    pub usd_per_server_hour: f64,
    /// Nanoseconds per 1,000 prompt tokens and per output token (abstract pools).
    pub prefill_ns_per_1k: u64,
    pub decode_ns_per_token: u64,
}

/// A validated GPU pool.
#[derive(Clone, Debug)]
pub struct GpuPool {
    pub model: String,
    pub gpu: String,
    pub tp: u32,
    pub config: crate::gpu::replica::ReplicaConfig,
    pub perf: std::sync::Arc<dyn crate::gpu::PerfModel>,
    /// Replica picker name (see `GpuPoolSpec::picker`).
    pub picker: String,
    /// KV capacity of one replica, tokens.
    pub kv_tokens: u64,
    /// The model's context limit: most prompt + output tokens of one request.
    pub context_limit: u32,
    /// The GPU profile's node boot (until the GPU is usable).
    pub node_boot: SimDuration,
    /// Loading the weights onto a new replica's GPUs (0 without `model_load_gb_per_s`).
    pub model_load: SimDuration,
    /// Weight bytes each GPU of a replica holds (the model's over `tp`).
    pub weight_bytes_per_gpu: u64,
}

impl GpuPool {
    /// From the decision to boot a replica until it takes work: node boot plus model
    /// load. The default `boot` of the pool's autoscaler and spot replacements.
    pub fn cold_start(&self) -> SimDuration {
        self.node_boot + self.model_load
    }

    /// Prefill plus decode time of one request alone on an idle replica.
    pub fn solo_latency(&self, input: u64, output: u64) -> (SimDuration, SimDuration) {
        use crate::gpu::IterationShape;
        let prefill = self.perf.iteration_time(&IterationShape {
            prefill_tokens: input,
            prefill_seqs: 1,
            ..IterationShape::default()
        });
        let step = self.perf.iteration_time(&IterationShape {
            decode_seqs: 1,
            decode_context_tokens: input + output / 2,
            ..IterationShape::default()
        });
        (
            prefill,
            SimDuration(step.as_nanos().saturating_mul(output.saturating_sub(1))),
        )
    }
}

/// A validated paid API.
#[derive(Clone, Debug)]
pub struct Api {
    pub ttft: Sampler,
    pub tpot: Sampler,
    pub usd_per_1k_input: f64,
    pub usd_per_1k_output: f64,
    pub usd_per_1k_cached_input: f64,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
}

impl Pool {
    /// Servers the a-priori figures (offered load rho, `check`'s GPU capacity) are
    /// computed for: `servers`, or for a pool that starts cold (`servers = 0`, an
    /// autoscaler with `min = 0`) the autoscaler's `max`, the most it can have.
    pub fn planning_servers(&self) -> u32 {
        match &self.autoscale {
            Some(a) if self.servers == 0 => a.max,
            _ => self.servers,
        }
    }

    /// Whether the pool is in an outage window at `t`.
    pub fn down_at(&self, t: SimTime) -> bool {
        self.outages.iter().any(|&(a, b)| t >= a && t < b)
    }

    /// The share of calls answered 429 by a storm at `t` (0 outside every storm; the
    /// largest share when storms overlap).
    pub fn storm_at(&self, t: SimTime) -> f64 {
        self.storms
            .iter()
            .filter(|&&(a, b, _)| t >= a && t < b)
            .map(|&(_, _, f)| f)
            .fold(0.0, f64::max)
    }

    /// The share of calls finishing at `t` that fail with an error: the pool's
    /// `error_rate`, or the largest error storm's covering `t` if higher.
    pub fn error_rate_at(&self, t: SimTime) -> f64 {
        self.error_storms
            .iter()
            .filter(|&&(a, b, _)| t >= a && t < b)
            .map(|&(_, _, r)| r)
            .fold(self.error_rate, f64::max)
    }

    /// Dollars of a hop of these tokens on an API pool (zero for server pools, which
    /// charge server time instead).
    pub fn api_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        self.api_usd_cached(input_tokens, 0, output_tokens)
    }

    /// As [`Pool::api_usd`], with `cached_tokens` of the prompt (at most all of it)
    /// billed at the cached-input price.
    pub fn api_usd_cached(&self, input_tokens: u64, cached_tokens: u64, output_tokens: u64) -> f64 {
        self.api_usd_split(input_tokens, cached_tokens, output_tokens)
            .total()
    }

    /// As [`Pool::api_usd_cached`], split into fresh input, cached input and output
    /// dollars (whose [`ApiUsdSplit::total`] is that figure, bit for bit).
    pub fn api_usd_split(
        &self,
        input_tokens: u64,
        cached_tokens: u64,
        output_tokens: u64,
    ) -> crate::metrics::ApiUsdSplit {
        self.api
            .as_ref()
            .map_or(crate::metrics::ApiUsdSplit::default(), |a| {
                let cached = cached_tokens.min(input_tokens);
                crate::metrics::ApiUsdSplit {
                    input: (input_tokens - cached) as f64 / 1000.0 * a.usd_per_1k_input,
                    cached_input: cached as f64 / 1000.0 * a.usd_per_1k_cached_input,
                    output: output_tokens as f64 / 1000.0 * a.usd_per_1k_output,
                }
            })
    }

    /// Token-driven part of a hop's service time on this pool.
    #[inline]
    pub fn token_time(&self, input_tokens: u64, output_tokens: u64) -> SimDuration {
        if input_tokens | output_tokens == 0 {
            // A hop without tokens (an abstract queueing model): nothing to multiply.
            return SimDuration::ZERO;
        }
        // In u64 when the product fits (the same quotient; no 128-bit division call).
        let prefill = match input_tokens.checked_mul(self.prefill_ns_per_1k) {
            Some(x) => x / 1000,
            None => (input_tokens as u128 * self.prefill_ns_per_1k as u128 / 1000) as u64,
        };
        SimDuration(prefill.saturating_add(output_tokens.saturating_mul(self.decode_ns_per_token)))
    }
}

#[derive(Clone, Debug)]
pub struct WorkflowClass {
    pub name: String,
    pub arrival: Arrival,
    pub graph: WorkflowGraph,
    pub slo: Option<SimDuration>,
    pub slo_target: f64,
    pub abandon_after: Option<SimDuration>,
    pub tenant: String,
    /// The tenant's cost centre (`tenants.NAME.cost_centre`, default the tenant).
    pub cost_centre: String,
    /// Index into `Scenario::tenants` when the tenant has limits.
    pub tenant_index: Option<usize>,
    pub lane: String,
    pub lane_index: usize,
    /// Most dollars a workflow should spend (cost-aware routing respects it).
    pub budget_usd: Option<f64>,
    /// Data sensitivity label, matched by routing rules.
    pub sensitivity: Option<String>,
    pub max_fan_out: Option<u32>,
    pub on_escalation_refused: OnEscalationRefused,
    pub bursts: Vec<Burst>,
    /// This class's canary: (share, index of the cohort class `NAME/canary`).
    pub canary: Option<(f64, usize)>,
    /// For a canary cohort class: the class it takes its workflows from (it has no
    /// arrivals of its own).
    pub cohort_of: Option<usize>,
    /// For a canary cohort class: the pool and tier replacements it applies (kept to
    /// move the recorded workflows of a trace attached after validation).
    pub canary_moves: Option<CanaryMoves>,
}

/// A canary cohort's replacements, by index: pinned pools and escalation pools, tiers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CanaryMoves {
    pub pools: BTreeMap<usize, usize>,
    pub tiers: BTreeMap<usize, usize>,
}

impl CanaryMoves {
    /// Rewrites `graph`'s pools and tiers; returns how many references it moved.
    pub fn apply(&self, graph: &mut crate::workflow::WorkflowGraph) -> usize {
        let mut moved = 0;
        for n in &mut graph.nodes {
            if let Some(p) = n.pool.as_mut()
                && let Some(&q) = self.pools.get(p)
            {
                *p = q;
                moved += 1;
            }
            if let Some(e) = n.escalate.as_mut()
                && let Some(&q) = self.pools.get(&e.pool)
            {
                e.pool = q;
                moved += 1;
            }
            if let Some(t) = n.tier.as_mut()
                && let Some(&u) = self.tiers.get(t)
            {
                *t = u;
                moved += 1;
            }
        }
        moved
    }
}

#[derive(Clone, Debug)]
pub enum Arrival {
    Poisson {
        rate_per_s: f64,
    },
    Piecewise {
        step: SimDuration,
        rates_per_s: Vec<f64>,
        /// With a `cv`: gaps of mean 1 in operational time (gamma), mapped back
        /// through the rate profile ([`WorkflowClass::after_operational`]); without,
        /// Poisson by thinning.
        operational_gaps: Option<Sampler>,
    },
    /// Independent inter-arrival gaps (seconds), mean > 0.
    Renewal {
        interarrival: Sampler,
    },
    Closed {
        users: u32,
        think: Sampler,
    },
    /// Replayed requests, in arrival order; the entry node of each workflow takes its
    /// tokens (and prefix hashes) from its request.
    Recorded {
        requests: std::sync::Arc<Vec<RecordedRequest>>,
        /// Rows read from their source as the run advances instead (then `requests` is
        /// empty): a trace far larger than memory replays in constant memory.
        stream: Option<RecordedStream>,
    },
}

/// Recorded requests read from their source as the run advances, one pass per run, so
/// a trace far larger than memory replays with only the rows in flight held
/// (docs/traces.md, "Memory of a replay"). Implemented by the CLI over `traces`.
pub trait RecordedSource: Send + Sync {
    /// A new pass over the rows, with `at` never decreasing, the same rows on every
    /// pass: flat requests, or recorded workflows with their own `graph` (resolved
    /// against `scenario`, the one the source is attached to). An `Err` (the file
    /// changed or could not be read since it was checked) ends the pass; the run
    /// reports it.
    fn rows<'s>(
        &'s self,
        scenario: &'s Scenario,
    ) -> Box<dyn Iterator<Item = Result<RecordedRequest, String>> + 's>;
    /// Whether rows carry graphs of their own (any pool may be reached).
    fn replays_workflows(&self) -> bool {
        false
    }
    /// Mean (input, output) tokens of the flat rows (no graph), if any: what the
    /// class's entry hop asks for on average (capacity figures of `check`).
    fn mean_flat_tokens(&self) -> Option<(f64, f64)> {
        None
    }
    /// Rows arriving before `t` (for the offered load `check` derives).
    fn count_before(&self, t: SimTime) -> u64;
}

/// A shared [`RecordedSource`].
#[derive(Clone)]
pub struct RecordedStream(pub std::sync::Arc<dyn RecordedSource>);

impl std::fmt::Debug for RecordedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordedStream")
    }
}

#[derive(Clone, Debug)]
pub struct Burst {
    pub start: SimTime,
    pub duration: SimDuration,
    pub every: Option<SimDuration>,
    pub rate_factor: f64,
    pub fan_out: Option<Sampler>,
}

impl Burst {
    pub fn active(&self, t: SimTime) -> bool {
        if t < self.start {
            return false;
        }
        let since = (t - self.start).as_nanos();
        let phase = match self.every {
            Some(e) if e.as_nanos() > 0 => since % e.as_nanos(),
            _ => since,
        };
        phase < self.duration.as_nanos()
    }
}

impl WorkflowClass {
    /// Arrival rate (per second) at time `t`, bursts included; zero for closed loops.
    pub fn rate_at(&self, t: SimTime) -> f64 {
        let base = match &self.arrival {
            Arrival::Poisson { rate_per_s } => *rate_per_s,
            Arrival::Piecewise {
                step, rates_per_s, ..
            } => {
                let i = (t.as_nanos() / step.as_nanos().max(1)) as usize % rates_per_s.len();
                rates_per_s[i]
            }
            Arrival::Renewal { interarrival } => 1.0 / interarrival.mean(),
            Arrival::Closed { .. } | Arrival::Recorded { .. } => 0.0,
        };
        let factor: f64 = self
            .bursts
            .iter()
            .filter(|b| b.active(t))
            .map(|b| b.rate_factor)
            .product();
        base * factor
    }

    /// The time at which the integral of the piecewise rate from `from` reaches `mass`
    /// (arrivals expected): renewal gaps drawn in operational time, mapped back to
    /// simulated time. `None` for other arrival processes.
    pub fn after_operational(&self, from: SimTime, mass: f64) -> Option<SimTime> {
        let Arrival::Piecewise {
            step, rates_per_s, ..
        } = &self.arrival
        else {
            return None;
        };
        let step_ns = step.as_nanos().max(1);
        let step_s = step_ns as f64 / 1e9;
        let n = rates_per_s.len() as u64;
        let cycle: f64 = rates_per_s.iter().sum::<f64>() * step_s;
        let mut left = mass.max(0.0);
        let mut t = from.as_nanos();
        // Whole cycles at once (validation keeps a cycle's mass above zero).
        if cycle > 0.0 && left > cycle {
            let cycles = (left / cycle).floor();
            left -= cycles * cycle;
            t = t.saturating_add((cycles * (n * step_ns) as f64) as u64);
        }
        // At most one cycle and a step of walking.
        for _ in 0..=n + 1 {
            let k = t / step_ns;
            let rate = rates_per_s[(k % n) as usize];
            let end = (k + 1).saturating_mul(step_ns);
            let room = rate * (end - t) as f64 / 1e9;
            if rate > 0.0 && room >= left {
                return Some(SimTime(
                    t.saturating_add((left / rate * 1e9).round() as u64),
                ));
            }
            left -= room;
            t = end;
        }
        Some(SimTime(t))
    }

    /// An upper bound of `rate_at` over all time (for thinning).
    pub fn max_rate(&self) -> f64 {
        let base = match &self.arrival {
            Arrival::Poisson { rate_per_s } => *rate_per_s,
            Arrival::Piecewise { rates_per_s, .. } => {
                rates_per_s.iter().copied().fold(0.0, f64::max)
            }
            Arrival::Renewal { interarrival } => 1.0 / interarrival.mean(),
            Arrival::Closed { .. } | Arrival::Recorded { .. } => 0.0,
        };
        base * self
            .bursts
            .iter()
            .map(|b| b.rate_factor.max(1.0))
            .product::<f64>()
    }

    /// Time-averaged arrival rate over [0, horizon).
    pub fn mean_rate_per_s(&self, horizon: SimDuration) -> f64 {
        match &self.arrival {
            Arrival::Closed { .. } => 0.0,
            Arrival::Recorded {
                stream: Some(s), ..
            } => s.0.count_before(SimTime::ZERO + horizon) as f64 / horizon.as_secs_f64().max(1e-9),
            Arrival::Recorded { requests, .. } => {
                let n = requests
                    .iter()
                    .filter(|r| r.at.as_nanos() < horizon.as_nanos())
                    .count();
                n as f64 / horizon.as_secs_f64().max(1e-9)
            }
            _ => {
                // Average over a fine grid; exact for the piecewise steps used in practice.
                let n = 10_000u64;
                let h = horizon.as_nanos().max(1);
                (0..n)
                    .map(|i| self.rate_at(SimTime(h / n * i + h / (2 * n))))
                    .sum::<f64>()
                    / n as f64
            }
        }
    }

    /// Mean (input, output) tokens the entry hop of a replayed flat request asks for
    /// (the recorded ones), if the class replays any.
    pub fn recorded_entry_tokens(&self) -> Option<(f64, f64)> {
        match &self.arrival {
            Arrival::Recorded {
                stream: Some(s), ..
            } => s.0.mean_flat_tokens(),
            Arrival::Recorded { requests, .. } => {
                let (mut n, mut i, mut o) = (0u64, 0.0, 0.0);
                for r in requests.iter().filter(|r| r.graph.is_none()) {
                    n += 1;
                    i += r.input_tokens as f64;
                    o += r.output_tokens as f64;
                }
                (n > 0).then(|| (i / n as f64, o / n as f64))
            }
            _ => None,
        }
    }

    /// The share of this class's arrivals that run its own graph: 1, or 1 - share for a
    /// class with a canary, or the share for a canary cohort (`scenario` gives the
    /// parent's share).
    pub fn workload_share(&self, scenario: &Scenario) -> f64 {
        match (self.canary, self.cohort_of) {
            (Some((share, _)), _) => 1.0 - share,
            (_, Some(parent)) => scenario.classes[parent].canary.map_or(0.0, |(s, _)| s),
            _ => 1.0,
        }
    }

    /// The graph a workflow of this class runs: a replayed recorded workflow's own
    /// (`record` indexes the recorded requests), else the class's.
    pub fn graph_for(&self, record: Option<u32>) -> &crate::workflow::WorkflowGraph {
        if let (Some(r), Arrival::Recorded { requests, .. }) = (record, &self.arrival)
            && let Some(g) = requests.get(r as usize).and_then(|q| q.graph.as_deref())
        {
            return g;
        }
        &self.graph
    }

    /// The fan-out count sampler in force at `t` for node `node`.
    pub fn fan_out_at(&self, node: usize, t: SimTime) -> Option<&Sampler> {
        let f = self.graph.nodes[node].fan_out.as_ref()?;
        Some(
            self.bursts
                .iter()
                .filter(|b| b.active(t))
                .find_map(|b| b.fan_out.as_ref())
                .unwrap_or(&f.count),
        )
    }
}

/// A validated tool.
#[derive(Clone, Debug)]
pub struct Tool {
    pub name: String,
    pub latency: Sampler,
    pub failure_probability: f64,
    pub retries: u32,
    pub retry_backoff: Option<Sampler>,
    pub payload_tokens: Option<Sampler>,
    pub usd_per_call: f64,
    pub concurrency: Option<u32>,
    /// Latency spikes: (start, end, factor).
    pub spikes: Vec<(SimTime, SimTime, f64)>,
    pub on_timeout: OnTimeout,
}

impl Tool {
    /// The latency multiplier at `t` (the product of the spikes in force; 1 outside).
    pub fn spike_at(&self, t: SimTime) -> f64 {
        self.spikes
            .iter()
            .filter(|&&(a, b, _)| t >= a && t < b)
            .map(|&(_, _, f)| f)
            .product()
    }
}

/// Start and end of a fault window.
fn window(start: SimDuration, duration: SimDuration) -> (SimTime, SimTime) {
    let a = SimTime(start.as_nanos());
    (a, a + duration)
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
        if sim.sample_every == SimDuration::ZERO {
            return Err(err(
                "simulation.sample_every",
                "expected a positive duration, like \"1m\" (the default) or \"1h\"",
            ));
        }
        // Every interval is an event and a row held until the end: a 1ns interval on an
        // hour would never finish.
        let intervals = sim.horizon.as_nanos() / sim.sample_every.as_nanos();
        if intervals > MAX_SAMPLE_INTERVALS {
            return Err(err(
                "simulation.sample_every",
                format!(
                    "{} over a horizon of {} is {intervals} intervals; expected at most {MAX_SAMPLE_INTERVALS} (a coarser interval, like \"1h\")",
                    sim.sample_every, sim.horizon
                ),
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
        let mut catalog =
            crate::gpu::profiles::ProfileCatalog::try_builtin().map_err(|m| err("profiles", m))?;
        if let Some(o) = &self.profiles {
            catalog
                .extend_keyed(o.clone())
                .map_err(|(k, m)| err(format!("profiles.{k}"), m))?;
        }
        let mut pools = Vec::new();
        let mut pool_index = BTreeMap::new();
        for (name, p) in &self.pools {
            let key = format!("pools.{name}");
            let gpu = match &p.gpu {
                None => None,
                Some(g) => Some(compile_gpu_pool(&key, g, &catalog)?),
            };
            if gpu.is_some() {
                if p.api.is_some() {
                    return Err(err(
                        format!("{key}.gpu"),
                        "a pool is either `gpu` or `api`, not both",
                    ));
                }
                if p.service.is_some()
                    || p.prefill_per_1k_tokens.is_some()
                    || p.decode_per_token.is_some()
                {
                    return Err(err(
                        format!("{key}.service"),
                        "a `gpu` pool times hops from tokens with its performance model; remove service/prefill_per_1k_tokens/decode_per_token",
                    ));
                }
            }
            // A pool may start cold (no server) only when an autoscaler can wake it.
            let may_start_cold = p.autoscale.as_ref().is_some_and(|a| a.min == 0);
            let servers = match (p.servers, &p.api) {
                (Some(n), None) if (1..=u32::MAX as i64 - 1).contains(&n) => n as u32,
                (Some(0), None) if may_start_cold => 0,
                (None, Some(_)) => u32::MAX,
                (Some(_), Some(_)) => {
                    return Err(err(
                        format!("{key}.servers"),
                        "an `api` pool has no servers; remove `servers`",
                    ));
                }
                (n, None) => {
                    return Err(err(
                        format!("{key}.servers"),
                        format!(
                            "expected a whole number of servers >= 1 (0 only with `autoscale.min = 0`), got {}",
                            n.map(|n| n.to_string()).unwrap_or_else(|| "nothing".into())
                        ),
                    ));
                }
            };
            if !p.usd_per_server_hour.is_finite() || p.usd_per_server_hour < 0.0 {
                return Err(err(
                    format!("{key}.usd_per_server_hour"),
                    format!(
                        "expected a price >= 0 in dollars, got {}",
                        p.usd_per_server_hour
                    ),
                ));
            }
            let service = p
                .service
                .as_ref()
                .map(|s| s.sampler().map_err(|m| err(format!("{key}.service"), m)))
                .transpose()?;
            if let Some(a) = &p.autoscale {
                if a.max < 1 || a.max < a.min {
                    return Err(err(
                        format!("{key}.autoscale"),
                        format!(
                            "expected 0 <= min <= max and max >= 1, got min {} max {}",
                            a.min, a.max
                        ),
                    ));
                }
                // Scale-to-zero keys on a pool that cannot reach zero would do nothing.
                let zero_only = [
                    ("activation", a.activation.is_some()),
                    ("zero_after_idle", a.zero_after_idle_set.is_some()),
                ];
                if let Some((name, _)) = zero_only.iter().find(|(_, set)| *set && a.min > 0) {
                    return Err(err(
                        format!("{key}.autoscale.{name}"),
                        format!(
                            "applies only to a pool that can scale to zero (`min = 0`), got min {}",
                            a.min
                        ),
                    ));
                }
                if !a.target.is_finite() || a.target <= 0.0 {
                    return Err(err(
                        format!("{key}.autoscale.target"),
                        format!("expected a positive load per server, got {}", a.target),
                    ));
                }
                if !["queue_depth", "tokens_in_flight", "p99_ttft", "queue_age"]
                    .contains(&a.metric.as_str())
                {
                    return Err(err(
                        format!("{key}.autoscale.metric"),
                        format!(
                            "unknown metric `{}`; expected \"queue_depth\", \"tokens_in_flight\", \"p99_ttft\" or \"queue_age\"",
                            a.metric
                        ),
                    ));
                }
                if a.interval == SimDuration::ZERO {
                    return Err(err(
                        format!("{key}.autoscale.interval"),
                        "expected a positive interval",
                    ));
                }
                if a.window == SimDuration::ZERO {
                    return Err(err(
                        format!("{key}.autoscale.window"),
                        "expected a positive window, like \"2m\"",
                    ));
                }
                if !(a.scale_down_below.is_finite()
                    && a.scale_down_below > 0.0
                    && a.scale_down_below <= 1.0)
                {
                    return Err(err(
                        format!("{key}.autoscale.scale_down_below"),
                        format!(
                            "expected a fraction of the target in (0, 1], got {}",
                            a.scale_down_below
                        ),
                    ));
                }
                for (i, w) in a.prewarm.iter().enumerate() {
                    let wkey = format!("{key}.autoscale.prewarm[{i}]");
                    if w.until <= w.from {
                        return Err(err(
                            wkey,
                            format!(
                                "expected `until` after `from`, got from {} until {}",
                                w.from, w.until
                            ),
                        ));
                    }
                    if w.min < 1 || w.min > a.max {
                        return Err(err(
                            format!("{wkey}.min"),
                            format!(
                                "expected a floor between 1 and the autoscaler's max ({}), got {}",
                                a.max, w.min
                            ),
                        ));
                    }
                    let span = SimDuration(w.until.as_nanos() - w.from.as_nanos());
                    if let Some(e) = w.every
                        && e < span
                    {
                        return Err(err(
                            format!("{wkey}.every"),
                            format!(
                                "expected a period at least as long as the window ({span}), got {e}"
                            ),
                        ));
                    }
                }
                if p.api.is_some() {
                    return Err(err(
                        format!("{key}.autoscale"),
                        "an `api` pool cannot be autoscaled",
                    ));
                }
            }
            let api = match &p.api {
                None => None,
                Some(a) => {
                    for (f, v) in [
                        ("usd_per_1k_input", a.usd_per_1k_input),
                        ("usd_per_1k_output", a.usd_per_1k_output),
                        (
                            "usd_per_1k_cached_input",
                            a.usd_per_1k_cached_input.unwrap_or(0.0),
                        ),
                    ] {
                        if !v.is_finite() || v < 0.0 {
                            return Err(err(
                                format!("{key}.api.{f}"),
                                format!("expected a price >= 0, got {v}"),
                            ));
                        }
                    }
                    if a.rpm == Some(0) || a.tpm == Some(0) {
                        return Err(err(
                            format!("{key}.api"),
                            "a rate limit of 0 admits nothing; omit it for no limit",
                        ));
                    }
                    Some(Api {
                        ttft: a
                            .ttft
                            .sampler()
                            .map_err(|m| err(format!("{key}.api.ttft"), m))?,
                        tpot: a
                            .tpot
                            .sampler()
                            .map_err(|m| err(format!("{key}.api.tpot"), m))?,
                        usd_per_1k_input: a.usd_per_1k_input,
                        usd_per_1k_output: a.usd_per_1k_output,
                        usd_per_1k_cached_input: a
                            .usd_per_1k_cached_input
                            .unwrap_or(a.usd_per_1k_input),
                        rpm: a.rpm,
                        tpm: a.tpm,
                    })
                }
            };
            let breaker = p
                .breaker
                .as_ref()
                .map(|b| compile_breaker(&format!("{key}.breaker"), b))
                .transpose()?;
            let error_rate = p.error_rate.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&error_rate) {
                return Err(err(
                    format!("{key}.error_rate"),
                    format!("expected a share of calls in [0, 1], got {error_rate}"),
                ));
            }
            let error_backoff = p.error_backoff.unwrap_or_default();
            check_backoff(&format!("{key}.error_backoff"), &error_backoff)?;
            // Timeouts back off like errors unless the pool says otherwise.
            let timeout_backoff = p.timeout_backoff.unwrap_or(error_backoff);
            check_backoff(&format!("{key}.timeout_backoff"), &timeout_backoff)?;
            let mut storms = Vec::new();
            for (i, st) in p.storms.iter().enumerate() {
                if !(st.fraction > 0.0 && st.fraction <= 1.0) {
                    return Err(err(
                        format!("{key}.storms[{i}].fraction"),
                        format!("expected a share of calls in (0, 1], got {}", st.fraction),
                    ));
                }
                if st.duration == SimDuration::ZERO {
                    return Err(err(
                        format!("{key}.storms[{i}].duration"),
                        "expected a positive duration",
                    ));
                }
                let (a, b) = window(st.start, st.duration);
                storms.push((a, b, st.fraction));
            }
            let mut error_storms = Vec::new();
            for (i, st) in p.error_storms.iter().enumerate() {
                if !(st.error_rate > 0.0 && st.error_rate <= 1.0) {
                    return Err(err(
                        format!("{key}.error_storms[{i}].error_rate"),
                        format!("expected a share of calls in (0, 1], got {}", st.error_rate),
                    ));
                }
                if st.duration == SimDuration::ZERO {
                    return Err(err(
                        format!("{key}.error_storms[{i}].duration"),
                        "expected a positive duration",
                    ));
                }
                let (a, b) = window(st.start, st.duration);
                error_storms.push((a, b, st.error_rate));
            }
            if p.max_attempts == Some(0) {
                return Err(err(
                    format!("{key}.max_attempts"),
                    "expected at least 1 attempt",
                ));
            }
            if p.queue_at == crate::gpu::gpu_station::QueueAt::Pool && gpu.is_none() {
                return Err(err(
                    format!("{key}.queue_at"),
                    "`queue_at` is for `gpu` pools (whose replicas each have a queue); an abstract pool already has one queue for all its servers",
                ));
            }
            if p.preempt_for_priority {
                use crate::policy::DisciplineSpec;
                if gpu.is_none() {
                    return Err(err(
                        format!("{key}.preempt_for_priority"),
                        "priority preemption is modelled on `gpu` pools (replicas with running sequences to preempt); on an abstract pool `discipline` orders the queue only",
                    ));
                }
                if !matches!(
                    p.discipline,
                    DisciplineSpec::Priority | DisciplineSpec::EarliestDeadline
                ) {
                    return Err(err(
                        format!("{key}.preempt_for_priority"),
                        format!(
                            "needs a ranked discipline, `discipline = \"priority\"` or `\"earliest_deadline\"`, not `{}`{}",
                            p.discipline.name(),
                            if p.discipline == DisciplineSpec::WeightedFair {
                                " (a fair queue ranks by start tags, which say nothing about which running hop matters less)"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
            }
            let spot = match (&p.spot, &gpu) {
                (None, _) => None,
                (Some(_), None) => {
                    return Err(err(
                        format!("{key}.spot"),
                        "spot capacity is modelled on `gpu` pools (replicas); an abstract pool's servers are interchangeable",
                    ));
                }
                (Some(_), Some(_)) if servers == 0 => {
                    return Err(err(
                        format!("{key}.spot"),
                        "a pool that starts cold (`servers = 0`) has no replica to run on spot: spot replicas are the first of `servers`; start it with servers >= 1",
                    ));
                }
                (Some(sp), Some(g)) => {
                    let n = sp.servers.unwrap_or(servers);
                    if n < 1 || n > servers {
                        return Err(err(
                            format!("{key}.spot.servers"),
                            format!("expected between 1 and the pool's {servers} servers, got {n}"),
                        ));
                    }
                    if !(sp.preemptions_per_hour.is_finite() && sp.preemptions_per_hour > 0.0) {
                        return Err(err(
                            format!("{key}.spot.preemptions_per_hour"),
                            format!(
                                "expected a positive rate per replica-hour, got {}",
                                sp.preemptions_per_hour
                            ),
                        ));
                    }
                    let (reclaim_size, reclaim_draw) = match &sp.reclaim_size {
                        None => (1, None),
                        Some(ReclaimSizeSpec::Fixed(k)) => match u32::try_from(*k) {
                            Ok(k) if k >= 1 => (k, None),
                            _ => {
                                return Err(err(
                                    format!("{key}.spot.reclaim_size"),
                                    format!(
                                        "expected an integer >= 1 (the spot replicas each preemption takes at once), got {k}"
                                    ),
                                ));
                            }
                        },
                        Some(ReclaimSizeSpec::Drawn(d)) => {
                            let draw = ReclaimDraw::new(d.clone(), n)
                                .map_err(|m| err(format!("{key}.spot.reclaim_size"), m))?;
                            if draw.mean_taken.get(1).is_none_or(|m| !m.is_finite()) {
                                return Err(err(
                                    format!("{key}.spot.reclaim_size"),
                                    "expected a distribution of replica counts with a finite mean",
                                ));
                            }
                            (1, Some(draw))
                        }
                    };
                    if !(sp.usd_per_server_hour.is_finite() && sp.usd_per_server_hour >= 0.0) {
                        return Err(err(
                            format!("{key}.spot.usd_per_server_hour"),
                            format!("expected a price >= 0, got {}", sp.usd_per_server_hour),
                        ));
                    }
                    if !sp.replace && n == servers && p.autoscale.is_none() {
                        return Err(err(
                            format!("{key}.spot.replace"),
                            "with every replica on spot, no replacement and no autoscaler the pool would be left with no replica; keep `replace = true`, put part of the pool on demand, or add `autoscale`",
                        ));
                    }
                    if sp.on_notice == OnNotice::MoveWaiting
                        && sp.notice.is_none_or(|d| d == SimDuration::ZERO)
                    {
                        return Err(err(
                            format!("{key}.spot.on_notice"),
                            "\"move_waiting\" acts at a preemption notice, and the pool gives none; set `notice` (e.g. \"2m\"), or drop `on_notice` (without a notice waiting requests move when the replica is lost)",
                        ));
                    }
                    let mut episodes = Vec::new();
                    for (i, e) in sp.episodes.iter().enumerate() {
                        let ekey = format!("{key}.spot.episodes[{i}]");
                        if !(e.factor.is_finite() && e.factor >= 0.0) {
                            return Err(err(
                                format!("{ekey}.factor"),
                                format!(
                                    "expected a hazard multiplier >= 0 (8 = eight times `preemptions_per_hour`, 0 = no preemptions), got {}",
                                    e.factor
                                ),
                            ));
                        }
                        if e.duration == SimDuration::ZERO {
                            return Err(err(
                                format!("{ekey}.duration"),
                                "expected a positive duration",
                            ));
                        }
                        let (a, b) = window(e.start, e.duration);
                        episodes.push((a, b, e.factor));
                    }
                    episodes.sort_by_key(|e| e.0);
                    if let Some(w) = episodes.windows(2).find(|w| w[1].0 < w[0].1) {
                        return Err(err(
                            format!("{key}.spot.episodes"),
                            format!(
                                "episodes overlap: one runs from {} to {}, another starts at {}; merge them into one window with the factor you mean",
                                SimDuration(w[0].0.as_nanos()),
                                SimDuration(w[0].1.as_nanos()),
                                SimDuration(w[1].0.as_nanos())
                            ),
                        ));
                    }
                    let boot = sp.boot.clone().unwrap_or_else(|| g.cold_start().into());
                    Some(Spot {
                        servers: n,
                        preemptions_per_hour: sp.preemptions_per_hour,
                        usd_per_server_hour: sp.usd_per_server_hour,
                        on_preempt: sp.on_preempt,
                        replace: sp.replace,
                        boot,
                        notice: sp.notice.unwrap_or(SimDuration::ZERO),
                        on_notice: sp.on_notice,
                        reclaim_size,
                        reclaim_draw,
                        episodes,
                    })
                }
            };
            let reserved = match (p.reserved, &gpu) {
                (None, _) => None,
                (Some(_), None) => {
                    return Err(err(
                        format!("{key}.reserved"),
                        "reserved capacity is modelled on `gpu` pools (replicas with a price each); on an abstract pool set `usd_per_server_hour` to the price you pay",
                    ));
                }
                (Some(r), Some(_)) => {
                    if r.servers == 0 {
                        return Err(err(
                            format!("{key}.reserved.servers"),
                            "expected at least 1 reserved replica (drop `reserved` for none)",
                        ));
                    }
                    if !(r.usd_per_server_hour.is_finite() && r.usd_per_server_hour >= 0.0) {
                        return Err(err(
                            format!("{key}.reserved.usd_per_server_hour"),
                            format!("expected a price >= 0, got {}", r.usd_per_server_hour),
                        ));
                    }
                    if !(r.upfront_usd.is_finite() && r.upfront_usd >= 0.0) {
                        return Err(err(
                            format!("{key}.reserved.upfront_usd"),
                            format!(
                                "expected a payment >= 0 per reserved replica, got {}",
                                r.upfront_usd
                            ),
                        ));
                    }
                    match r.term {
                        None if r.upfront_usd > 0.0 => {
                            return Err(err(
                                format!("{key}.reserved.term"),
                                "an `upfront_usd` is spread over the commitment's term: expected e.g. term = \"365d\" (1 year) or \"1095d\" (3 years)",
                            ));
                        }
                        Some(t) if t == SimDuration::ZERO => {
                            return Err(err(
                                format!("{key}.reserved.term"),
                                "expected a positive duration, e.g. \"365d\"",
                            ));
                        }
                        _ => {}
                    }
                    // Amortised: every replica-hour of the commitment carries its share
                    // of the upfront payment.
                    Some(ReservedSpec {
                        usd_per_server_hour: r.usd_per_server_hour + r.upfront_per_hour(),
                        ..r
                    })
                }
            };
            pool_index.insert(name.clone(), pools.len());
            pools.push(Pool {
                name: name.clone(),
                servers,
                discipline: p.discipline,
                preempt_for_priority: p.preempt_for_priority,
                queue_at: p.queue_at,
                autoscale: p.autoscale.clone().map(|mut a| {
                    // A GPU replica's cold start unless the scenario says otherwise.
                    if let (None, Some(g)) = (&a.boot_set, &gpu) {
                        a.boot_set = Some(g.cold_start().into());
                    }
                    a
                }),
                max_queue: p.max_queue,
                // Resolved below, once every pool has an index.
                admission: None,
                retry_after: p.retry_after.unwrap_or(SimDuration::from_secs(1)),
                max_attempts: p.max_attempts.unwrap_or(4),
                outages: p
                    .outages
                    .iter()
                    .map(|o| {
                        (
                            SimTime(o.start.as_nanos()),
                            SimTime(o.start.as_nanos()) + o.duration,
                        )
                    })
                    .collect(),
                api,
                usd_per_server_hour: match &gpu {
                    // A GPU pool without a price pays the GPU profile's list price per GPU.
                    Some(g) if p.usd_per_server_hour == 0.0 => catalog
                        .gpu(&g.gpu)
                        .map(|x| x.price_usd_per_hour * g.tp as f64)
                        .unwrap_or(0.0),
                    _ => p.usd_per_server_hour,
                },
                gpu,
                breaker,
                error_rate,
                on_timeout: p.on_timeout,
                error_backoff,
                timeout_backoff,
                storms,
                error_storms,
                spot,
                reserved,
                service,
                prefill_ns_per_1k: p.prefill_per_1k_tokens.map(|d| d.as_nanos()).unwrap_or(0),
                decode_ns_per_token: p.decode_per_token.map(|d| d.as_nanos()).unwrap_or(0),
            });
        }
        for (name, p) in &self.pools {
            if let Some(a) = &p.admission {
                let key = format!("pools.{name}.admission");
                let adm = compile_admission(&key, a, &pool_index)?;
                if adm.degrade_to.is_some_and(|d| pools[d].name == *name) {
                    return Err(err(
                        format!("{key}.degrade_to"),
                        "expected another pool than the one the watermark is on",
                    ));
                }
                pools[pool_index[name]].admission = Some(adm);
            }
        }
        // A degraded hop is not degraded again: its target refuses instead.
        let degrades_further = |pools: &[Pool], d: usize| {
            pools[d]
                .admission
                .as_ref()
                .is_some_and(|a| a.action == AdmissionAction::Degrade)
        };
        for (name, p) in &self.pools {
            if let Some(d) = p.admission.as_ref().and_then(|a| a.degrade_to.as_ref())
                && degrades_further(&pools, pool_index[d])
            {
                return Err(err(
                    format!("pools.{name}.admission.degrade_to"),
                    format!(
                        "pool `{d}` degrades in turn; degrade to a pool whose admission action is not \"degrade\""
                    ),
                ));
            }
        }
        let mut lanes = vec![Lane {
            name: "default".into(),
            priority: 0,
            weight: 1.0,
            admission: None,
            max_in_flight: None,
            rate_limit: None,
            retry_after: None,
            max_attempts: None,
        }];
        for (name, l) in &self.lanes {
            if !l.weight.is_finite() || l.weight <= 0.0 {
                return Err(err(
                    format!("lanes.{name}.weight"),
                    format!("expected a positive weight, got {}", l.weight),
                ));
            }
            let key = format!("lanes.{name}");
            check_retry(&key, l.retry_after, l.max_attempts)?;
            if l.max_in_flight == Some(0) {
                return Err(err(
                    format!("{key}.max_in_flight"),
                    "expected a concurrency cap >= 1 (hops in flight); leave it out for no cap",
                ));
            }
            let admission = match &l.admission {
                None => None,
                Some(a) if a.action == AdmissionAction::Shed => {
                    return Err(err(
                        format!("{key}.admission.action"),
                        "`shed` ranks the lanes sharing a pool, so it applies to pools; on a lane use \"queue\", \"reject\" or \"degrade\"",
                    ));
                }
                Some(a) => Some(compile_admission(
                    &format!("{key}.admission"),
                    a,
                    &pool_index,
                )?),
            };
            if let Some(d) = admission.as_ref().and_then(|a| a.degrade_to)
                && degrades_further(&pools, d)
            {
                return Err(err(
                    format!("{key}.admission.degrade_to"),
                    format!(
                        "pool `{}` degrades in turn; degrade to a pool whose admission action is not \"degrade\"",
                        pools[d].name
                    ),
                ));
            }
            let lane = Lane {
                name: name.clone(),
                priority: l.priority,
                weight: l.weight,
                admission,
                max_in_flight: l.max_in_flight,
                rate_limit: l
                    .rate_limit
                    .as_ref()
                    .map(|r| compile_rate_limit(&format!("{key}.rate_limit"), r))
                    .transpose()?,
                retry_after: l.retry_after,
                max_attempts: l.max_attempts,
            };
            if name == "default" {
                lanes[0] = lane;
            } else {
                lanes.push(lane);
            }
        }
        let mut tenants = Vec::new();
        for (name, t) in &self.tenants {
            let key = format!("tenants.{name}");
            let used = self
                .classes
                .values()
                .any(|c| c.tenant.as_deref().unwrap_or("default") == name);
            if !used {
                return Err(err(
                    key,
                    format!(
                        "no class has tenant = \"{name}\"; limits apply to the classes of a tenant"
                    ),
                ));
            }
            check_retry(&key, t.retry_after, t.max_attempts)?;
            if t.max_tokens_in_flight == Some(0) {
                return Err(err(
                    format!("{key}.max_tokens_in_flight"),
                    "expected a budget of at least 1 token (omit it for none)",
                ));
            }
            tenants.push(Tenant {
                name: name.clone(),
                max_tokens_in_flight: t.max_tokens_in_flight,
                rate_limit: t
                    .rate_limit
                    .as_ref()
                    .map(|r| compile_rate_limit(&format!("{key}.rate_limit"), r))
                    .transpose()?,
                retry_after: t.retry_after,
                max_attempts: t.max_attempts,
            });
        }
        let mut tiers = Vec::new();
        let mut tier_index = BTreeMap::new();
        for (name, t) in &self.tiers {
            if t.pools.is_empty() {
                return Err(err(
                    format!("tiers.{name}.pools"),
                    "expected at least one pool",
                ));
            }
            let mut chain = Vec::new();
            for (i, p) in t.pools.iter().enumerate() {
                let Some(&pi) = pool_index.get(p) else {
                    return Err(err(
                        format!("tiers.{name}.pools[{i}]"),
                        format!(
                            "no pool named `{p}`; expected one of: {}",
                            self.pools.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                };
                chain.push(pi);
            }
            tier_index.insert(name.clone(), tiers.len());
            tiers.push(Tier {
                name: name.clone(),
                pools: chain,
                escalate: None,
            });
        }
        // Cascade steps, once every tier has its index; a cycle would never end.
        for (name, t) in &self.tiers {
            let Some(e) = &t.escalate else { continue };
            let key = format!("tiers.{name}.escalate");
            if !(0.0..=1.0).contains(&e.probability) {
                return Err(err(
                    format!("{key}.probability"),
                    format!("expected a probability in [0, 1], got {}", e.probability),
                ));
            }
            let Some(&to) = tier_index.get(&e.to) else {
                return Err(err(
                    format!("{key}.to"),
                    format!(
                        "no tier named `{}`; expected one of: {}",
                        e.to,
                        tier_index.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            };
            tiers[tier_index[name]].escalate = Some((e.probability, to));
        }
        for (name, &start) in &tier_index {
            let mut path = vec![start];
            let mut cur = start;
            while let Some((_, to)) = tiers[cur].escalate {
                path.push(to);
                if to == start || path.len() > tiers.len() + 1 {
                    let names: Vec<&str> = path.iter().map(|&i| tiers[i].name.as_str()).collect();
                    return Err(err(
                        format!("tiers.{name}.escalate.to"),
                        format!(
                            "the cascade never ends: {} (the last tier of a cascade has no `escalate`)",
                            names.join(" -> ")
                        ),
                    ));
                }
                cur = to;
            }
        }
        for (name, v) in &self.variants {
            if v.set.iter().any(|s| !s.contains('=')) {
                return Err(err(
                    format!("variants.{name}.set"),
                    "expected a list of \"key.path=value\" strings",
                ));
            }
        }
        let mut tools = Vec::new();
        let mut tool_index = BTreeMap::new();
        for (name, t) in &self.tools {
            let key = format!("tools.{name}");
            let latency = t
                .latency
                .sampler()
                .map_err(|m| err(format!("{key}.latency"), m))?;
            if !(0.0..=1.0).contains(&t.failure_probability) {
                return Err(err(
                    format!("{key}.failure_probability"),
                    format!(
                        "expected a probability in [0, 1], got {}",
                        t.failure_probability
                    ),
                ));
            }
            if !t.usd_per_call.is_finite() || t.usd_per_call < 0.0 {
                return Err(err(
                    format!("{key}.usd_per_call"),
                    format!("expected a price >= 0, got {}", t.usd_per_call),
                ));
            }
            if t.concurrency == Some(0) {
                return Err(err(
                    format!("{key}.concurrency"),
                    "expected a concurrency limit >= 1 (omit it for unlimited)",
                ));
            }
            let sampler = |field: &str, d: &Option<DistSpec>| {
                d.as_ref()
                    .map(|d| d.sampler().map_err(|m| err(format!("{key}.{field}"), m)))
                    .transpose()
            };
            let mut spikes = Vec::new();
            for (i, sp) in t.spikes.iter().enumerate() {
                if !sp.factor.is_finite() || sp.factor <= 0.0 {
                    return Err(err(
                        format!("{key}.spikes[{i}].factor"),
                        format!("expected a positive latency multiplier, got {}", sp.factor),
                    ));
                }
                if sp.duration == SimDuration::ZERO {
                    return Err(err(
                        format!("{key}.spikes[{i}].duration"),
                        "expected a positive duration",
                    ));
                }
                let (a, b) = window(sp.start, sp.duration);
                spikes.push((a, b, sp.factor));
            }
            tool_index.insert(name.clone(), tools.len());
            tools.push(Tool {
                name: name.clone(),
                latency,
                failure_probability: t.failure_probability,
                retries: t.retries,
                retry_backoff: sampler("retry_backoff", &t.retry_backoff)?,
                payload_tokens: sampler("payload_tokens", &t.payload_tokens)?,
                usd_per_call: t.usd_per_call,
                concurrency: t.concurrency,
                spikes,
                on_timeout: t.on_timeout,
            });
        }
        let pool_service: BTreeMap<String, Option<DistSpec>> = self
            .pools
            .iter()
            .map(|(n, p)| {
                // A token-driven pool needs no service distribution: it defaults to zero.
                let token_driven = p.prefill_per_1k_tokens.is_some()
                    || p.decode_per_token.is_some()
                    || p.api.is_some();
                let zero = DistSpec::Constant {
                    value: crate::dist::Num(0.0),
                };
                (
                    n.clone(),
                    p.service.clone().or(token_driven.then_some(zero)),
                )
            })
            .collect();
        let gpu_pools: BTreeMap<String, bool> = self
            .pools
            .iter()
            .map(|(n, p)| (n.clone(), p.gpu.is_some()))
            .collect();
        let tier_pools: Vec<Vec<String>> = tiers
            .iter()
            .map(|t| t.pools.iter().map(|&i| pools[i].name.clone()).collect())
            .collect();
        for (role, t) in &self.routing.roles {
            if !tier_index.contains_key(t) {
                return Err(err(
                    format!("routing.roles.{role}"),
                    format!(
                        "no tier named `{t}`; expected one of: {}",
                        tier_index.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        if let Some(t) = &self.routing.default_tier
            && !tier_index.contains_key(t)
        {
            return Err(err(
                "routing.default_tier".to_string(),
                format!(
                    "no tier named `{t}`; expected one of: {}",
                    tier_index.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let names = Names {
            role_tiers: &self.routing.roles,
            default_tier: self.routing.default_tier.as_ref(),
            tiers: &tier_index,
            tier_pools: &tier_pools,
            pools: &pool_index,
            pool_service: &pool_service,
            gpu_pools: &gpu_pools,
            tools: &tool_index,
        };
        if self.emergency.as_ref().is_some_and(|e| e.max_fan_out == 0) {
            return Err(err(
                "emergency.max_fan_out",
                "expected a cap of at least 1 branch (0 would skip every fanned-out node)",
            ));
        }
        let mut classes = Vec::new();
        for (name, c) in &self.classes {
            let key = format!("classes.{name}");
            if c.max_fan_out == Some(0) {
                return Err(err(
                    format!("{key}.max_fan_out"),
                    "expected a cap of at least 1 branch (0 would skip every fanned-out node)",
                ));
            }
            // Renewal gaps cannot be thinned by a rate factor: the first such burst.
            let rate_factor_burst = |why: &str| {
                c.bursts
                    .iter()
                    .position(|b| b.rate_factor.is_some_and(|f| f != 1.0))
                    .map(|i| err(format!("{key}.bursts[{i}].rate_factor"), why))
            };
            let arrival = match &c.arrival {
                ArrivalSpec::Poisson { rate } => {
                    if !rate.is_finite() || *rate <= 0.0 {
                        return Err(err(
                            format!("{key}.arrival.rate"),
                            format!("expected a positive rate in workflows per second, got {rate}"),
                        ));
                    }
                    Arrival::Poisson { rate_per_s: *rate }
                }
                ArrivalSpec::Piecewise { step, rates, cv } => {
                    if *step == SimDuration::ZERO {
                        return Err(err(
                            format!("{key}.arrival.step"),
                            "expected a positive step, like \"1h\"",
                        ));
                    }
                    if rates.is_empty()
                        || rates.iter().any(|r| !r.is_finite() || *r < 0.0)
                        || rates.iter().all(|r| *r == 0.0)
                    {
                        return Err(err(
                            format!("{key}.arrival.rates"),
                            format!(
                                "expected a list of rates >= 0 per second, not all zero; got {rates:?}"
                            ),
                        ));
                    }
                    let operational_gaps = match cv {
                        None => None,
                        Some(cv) => {
                            if !cv.is_finite() || *cv <= 0.0 {
                                return Err(err(
                                    format!("{key}.arrival.cv"),
                                    format!(
                                        "expected a coefficient of variation > 0 (1 = Poisson, > 1 bursty), got {cv}"
                                    ),
                                ));
                            }
                            if let Some(e) = rate_factor_burst(
                                "piecewise arrivals with a cv take no rate_factor bursts (fan_out bursts are fine); put the burst in the rates, or drop the cv",
                            ) {
                                return Err(e);
                            }
                            Some(
                                DistSpec::Gamma {
                                    mean: crate::dist::Num(1.0),
                                    cv: *cv,
                                }
                                .sampler()
                                .map_err(|m| err(format!("{key}.arrival.cv"), m))?,
                            )
                        }
                    };
                    Arrival::Piecewise {
                        step: *step,
                        rates_per_s: rates.clone(),
                        operational_gaps,
                    }
                }
                ArrivalSpec::Renewal { interarrival } => {
                    let k = format!("{key}.arrival.interarrival");
                    let sampler = interarrival.sampler().map_err(|m| err(k.clone(), m))?;
                    let mean = sampler.mean();
                    if !mean.is_finite() || mean <= 0.0 {
                        return Err(err(
                            k,
                            format!(
                                "expected a gap distribution with a mean > 0 seconds, got mean {mean}"
                            ),
                        ));
                    }
                    if let Some(e) = rate_factor_burst(
                        "a renewal arrival process takes no rate_factor bursts (fan_out bursts are fine); use poisson or piecewise arrivals for rate changes",
                    ) {
                        return Err(e);
                    }
                    Arrival::Renewal {
                        interarrival: sampler,
                    }
                }
                ArrivalSpec::Recorded {} => Arrival::Recorded {
                    requests: std::sync::Arc::new(Vec::new()),
                    stream: None,
                },
                ArrivalSpec::Closed { users, think } => {
                    if *users == 0 {
                        return Err(err(
                            format!("{key}.arrival.users"),
                            "expected at least 1 user",
                        ));
                    }
                    let think = think
                        .sampler()
                        .map_err(|m| err(format!("{key}.arrival.think"), m))?;
                    Arrival::Closed {
                        users: *users,
                        think,
                    }
                }
            };
            let nodes: Vec<NodeSpec> = match (&c.hops, &c.nodes) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        key.clone(),
                        "give either `hops` (a chain) or `nodes` (a graph), not both",
                    ));
                }
                (None, None) => {
                    return Err(err(
                        format!("{key}.hops"),
                        "expected `hops = [{ pool = \"...\" }]` or a `nodes` graph",
                    ));
                }
                (Some(hops), None) => {
                    if hops.is_empty() {
                        return Err(err(
                            format!("{key}.hops"),
                            "expected at least one hop, like hops = [{ pool = \"gpu\" }]",
                        ));
                    }
                    chain_to_nodes(hops)
                }
                (None, Some(nodes)) => nodes.clone(),
            };
            let graph_key = if c.hops.is_some() {
                format!("{key}.hops")
            } else {
                format!("{key}.nodes")
            };
            let mut graph = compile_graph(&graph_key, &nodes, &names).map_err(|(k, m)| {
                // Chain hops are written without ids; report them by position.
                err(k.replace(".id", ".name"), m)
            })?;
            for n in &mut graph.nodes {
                n.prefix_group = crate::rng::stable_hash(&format!("{name}/{}", n.role));
            }
            if c.slo == Some(SimDuration::ZERO) {
                return Err(err(
                    format!("{key}.slo"),
                    "expected a positive latency target",
                ));
            }
            if let Some(t) = c.slo_target
                && !(t > 0.0 && t < 1.0)
            {
                return Err(err(
                    format!("{key}.slo_target"),
                    format!("expected a share strictly between 0 and 1, like 0.99; got {t}"),
                ));
            }
            if c.abandon_after == Some(SimDuration::ZERO) {
                return Err(err(
                    format!("{key}.abandon_after"),
                    "expected a positive duration",
                ));
            }
            let mut bursts = Vec::new();
            for (i, b) in c.bursts.iter().enumerate() {
                let bk = format!("{key}.bursts[{i}]");
                let factor = b.rate_factor.unwrap_or(1.0);
                if !factor.is_finite() || factor < 0.0 {
                    return Err(err(
                        format!("{bk}.rate_factor"),
                        format!("expected a multiplier >= 0, got {factor}"),
                    ));
                }
                if b.duration == SimDuration::ZERO {
                    return Err(err(
                        format!("{bk}.duration"),
                        "expected a positive duration",
                    ));
                }
                if b.every.is_some_and(|e| e < b.duration) {
                    return Err(err(
                        format!("{bk}.every"),
                        "expected a period at least as long as the window",
                    ));
                }
                let fan_out = b
                    .fan_out
                    .as_ref()
                    .map(|d| d.sampler().map_err(|m| err(format!("{bk}.fan_out"), m)))
                    .transpose()?;
                if let Some(high) = fan_out
                    .as_ref()
                    .map(Sampler::high)
                    .filter(|&h| h > crate::workflow::MAX_BRANCHES)
                {
                    return Err(err(
                        format!("{bk}.fan_out"),
                        format!(
                            "draws up to about {high:.0} branches; at most {} are allowed",
                            crate::workflow::MAX_BRANCHES
                        ),
                    ));
                }
                bursts.push(Burst {
                    start: SimTime(b.start.as_nanos()),
                    duration: b.duration,
                    every: b.every,
                    rate_factor: factor,
                    fan_out,
                });
            }
            classes.push(WorkflowClass {
                name: name.clone(),
                arrival,
                graph,
                slo: c.slo,
                slo_target: c.slo_target.unwrap_or(0.99),
                abandon_after: c.abandon_after,
                tenant: c.tenant.clone().unwrap_or_else(|| "default".into()),
                cost_centre: {
                    let t = c.tenant.as_deref().unwrap_or("default");
                    self.tenants
                        .get(t)
                        .and_then(|ts| ts.cost_centre.clone())
                        .unwrap_or_else(|| t.to_string())
                },
                tenant_index: tenants
                    .iter()
                    .position(|t| t.name == c.tenant.as_deref().unwrap_or("default")),
                lane: c.lane.clone().unwrap_or_else(|| "default".into()),
                lane_index: match &c.lane {
                    None => 0,
                    Some(l) => lanes.iter().position(|x| &x.name == l).ok_or_else(|| {
                        err(
                            format!("{key}.lane"),
                            format!(
                                "no lane named `{l}`; define it as [lanes.{l}] (known: {})",
                                lanes
                                    .iter()
                                    .map(|x| x.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })?,
                },
                budget_usd: c.budget_usd,
                sensitivity: c.sensitivity.clone(),
                max_fan_out: c.max_fan_out,
                on_escalation_refused: c.on_escalation_refused,
                bursts,
                canary: None,
                cohort_of: None,
                canary_moves: None,
            });
            if let Some(cn) = &c.canary {
                let cohort = canary_cohort(
                    &format!("{key}.canary"),
                    cn,
                    classes.len() - 1,
                    &classes[classes.len() - 1],
                    &pool_index,
                    &tier_index,
                )?;
                let at = classes.len();
                if let Some(parent) = classes.last_mut() {
                    parent.canary = Some((cn.share, at));
                }
                classes.push(cohort);
            }
        }
        set_top_priorities(&mut pools, &classes, &lanes, &tiers);
        let routing_rules = compile_rules(
            &self.routing.rules,
            &classes,
            &tiers,
            &tier_index,
            &pool_index,
        )?;
        Ok(Scenario {
            description: self.description.clone(),
            seed: sim.seed,
            horizon: sim.horizon,
            warmup: sim.warmup,
            drain: sim.drain,
            sample_every: sim.sample_every,
            pools,
            classes,
            tools,
            lanes,
            tiers,
            routing: self.routing.policy,
            routing_rules,
            emergency: self.emergency.as_ref().map(|e| {
                (
                    SimTime(e.from.as_nanos()),
                    e.until.map(|u| SimTime(u.as_nanos())),
                    e.max_fan_out,
                )
            }),
            tenants,
        })
    }
}

/// Validates an `admission = { ... }` table (the caller checks where `shed` may go).
fn compile_admission(
    key: &str,
    a: &AdmissionSpec,
    pool_index: &BTreeMap<String, usize>,
) -> Result<Admission, SpecError> {
    if a.max_tokens_in_flight == 0 {
        return Err(err(
            format!("{key}.max_tokens_in_flight"),
            "expected a capacity of at least 1 token",
        ));
    }
    let w = a.watermark.unwrap_or(1.0);
    if !(w > 0.0 && w <= 1.0) {
        return Err(err(
            format!("{key}.watermark"),
            format!("expected a share in (0, 1], like 0.85; got {w}"),
        ));
    }
    let threshold = (w * a.max_tokens_in_flight as f64).floor() as u64;
    if threshold == 0 {
        return Err(err(
            format!("{key}.watermark"),
            "watermark x max_tokens_in_flight is below one token: nothing would be admitted",
        ));
    }
    let degrade_to = match (&a.degrade_to, a.action) {
        (None, AdmissionAction::Degrade) => {
            return Err(err(
                format!("{key}.degrade_to"),
                "action = \"degrade\" needs the pool to send hops to, like degrade_to = \"small\"",
            ));
        }
        (None, _) => None,
        (Some(_), action) if action != AdmissionAction::Degrade => {
            return Err(err(
                format!("{key}.degrade_to"),
                "only used with action = \"degrade\"; remove it or change the action",
            ));
        }
        (Some(d), _) => Some(*pool_index.get(d).ok_or_else(|| {
            err(
                format!("{key}.degrade_to"),
                format!(
                    "no pool named `{d}`; expected one of: {}",
                    pool_index.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?),
    };
    Ok(Admission {
        max_tokens_in_flight: a.max_tokens_in_flight,
        threshold,
        action: a.action,
        degrade_to,
        top_priority: i32::MIN,
    })
}

/// Validates a `rate_limit = { tokens_per_s, burst }` table.
/// A backoff's 0 < `base` <= `max` and jitter share in [0, 1], `key` naming it.
fn check_backoff(key: &str, b: &BackoffSpec) -> Result<(), SpecError> {
    if b.base == SimDuration::ZERO || b.max < b.base {
        return Err(err(
            key,
            format!(
                "expected 0 < base <= max, got base {} max {}",
                b.base, b.max
            ),
        ));
    }
    if !(0.0..=1.0).contains(&b.jitter) {
        return Err(err(
            format!("{key}.jitter"),
            format!("expected a jitter share in [0, 1], got {}", b.jitter),
        ));
    }
    Ok(())
}

/// A lane's or tenant's own `retry_after` (positive) and `max_attempts` (at least 1).
fn check_retry(
    key: &str,
    retry_after: Option<SimDuration>,
    max_attempts: Option<u32>,
) -> Result<(), SpecError> {
    if retry_after == Some(SimDuration::ZERO) {
        return Err(err(
            format!("{key}.retry_after"),
            "expected a positive duration (omit it for the pool's)",
        ));
    }
    if max_attempts == Some(0) {
        return Err(err(
            format!("{key}.max_attempts"),
            "expected at least 1 attempt",
        ));
    }
    Ok(())
}

fn compile_rate_limit(key: &str, r: &RateLimitSpec) -> Result<RateLimit, SpecError> {
    let milli = r.tokens_per_s * 1000.0;
    if !milli.is_finite() || milli.round() < 1.0 || milli > 1e15 {
        return Err(err(
            format!("{key}.tokens_per_s"),
            format!(
                "expected a rate from 0.001 to 1e12 tokens per second, got {}",
                r.tokens_per_s
            ),
        ));
    }
    if r.burst == 0 {
        return Err(err(
            format!("{key}.burst"),
            "expected a bucket of at least 1 token",
        ));
    }
    Ok(RateLimit {
        milli_tokens_per_s: milli.round() as u64,
        burst: r.burst,
    })
}

/// For `shed`: the highest priority of the lanes whose classes can send a hop to each
/// pool (a node's pool, any pool of its tier and of the tiers its cascade steps run on,
/// its escalation pool, and the pools hops are degraded to from those or from the
/// class's lane).
fn set_top_priorities(
    pools: &mut [Pool],
    classes: &[WorkflowClass],
    lanes: &[Lane],
    tiers: &[Tier],
) {
    let mut top = vec![i32::MIN; pools.len()];
    for c in classes {
        let lane = &lanes[c.lane_index];
        let mut reach = vec![false; pools.len()];
        for n in &c.graph.nodes {
            if let Some(p) = n.pool {
                reach[p] = true;
            }
            if let Some(t) = n.tier {
                for &p in &tiers[t].pools {
                    reach[p] = true;
                }
                // The tiers its cascade steps run on (bounded: validation refuses cycles).
                let mut cur = t;
                for _ in 0..tiers.len() {
                    let Some((_, to)) = tiers[cur].escalate else {
                        break;
                    };
                    for &p in &tiers[to].pools {
                        reach[p] = true;
                    }
                    cur = to;
                }
            }
            if let Some(e) = &n.escalate {
                reach[e.pool] = true;
            }
        }
        let direct = reach.clone();
        for (p, pool) in pools.iter().enumerate() {
            if direct[p]
                && let Some(d) = pool.admission.as_ref().and_then(|a| a.degrade_to)
            {
                reach[d] = true;
            }
        }
        if let Some(d) = lane.admission.as_ref().and_then(|a| a.degrade_to) {
            reach[d] = true;
        }
        for (p, r) in reach.iter().enumerate() {
            if *r {
                top[p] = top[p].max(lane.priority);
            }
        }
    }
    for (pool, t) in pools.iter_mut().zip(top) {
        if let Some(a) = pool.admission.as_mut() {
            a.top_priority = t;
        }
    }
}

fn compile_breaker(key: &str, b: &BreakerSpec) -> Result<Breaker, SpecError> {
    if b.open == SimDuration::ZERO {
        return Err(err(
            format!("{key}.open"),
            "expected a positive open duration",
        ));
    }
    if b.failures == Some(0) {
        return Err(err(
            format!("{key}.failures"),
            "expected at least 1 consecutive failure",
        ));
    }
    let error_rate = match b.error_rate {
        None => {
            if b.window.is_some() || b.min_calls.is_some() {
                return Err(err(
                    key,
                    "`window` and `min_calls` belong to an `error_rate` breaker; add error_rate = 0.5 or remove them",
                ));
            }
            None
        }
        Some(r) => {
            if !(r > 0.0 && r <= 1.0) {
                return Err(err(
                    format!("{key}.error_rate"),
                    format!("expected a share of failed calls in (0, 1], got {r}"),
                ));
            }
            let window = b.window.unwrap_or(SimDuration::from_secs(30));
            if window == SimDuration::ZERO {
                return Err(err(format!("{key}.window"), "expected a positive window"));
            }
            let min_calls = b.min_calls.unwrap_or(10);
            if min_calls == 0 {
                return Err(err(format!("{key}.min_calls"), "expected at least 1 call"));
            }
            Some((r, window, min_calls))
        }
    };
    if b.failures.is_none() && error_rate.is_none() {
        return Err(err(
            key,
            "expected `failures` (consecutive) or `error_rate` (in a window), or both",
        ));
    }
    Ok(Breaker {
        failures: b.failures,
        error_rate,
        open: b.open,
    })
}

/// Resolves `[[routing.rules]]`: names to indices, and for every tier the chain a
/// matching hop of that tier is routed on. A rule that would leave a hop it can match
/// with no pool is refused.
fn compile_rules(
    specs: &[RuleSpec],
    classes: &[WorkflowClass],
    tiers: &[Tier],
    tier_index: &BTreeMap<String, usize>,
    pool_index: &BTreeMap<String, usize>,
) -> Result<Vec<RoutingRule>, SpecError> {
    let known = |m: &BTreeMap<String, usize>| m.keys().cloned().collect::<Vec<_>>().join(", ");
    let tier_of = |key: String, t: &str| {
        tier_index.get(t).copied().ok_or_else(|| {
            err(
                key,
                format!(
                    "no tier named `{t}`; expected one of: {}",
                    known(tier_index)
                ),
            )
        })
    };
    let mut rules = Vec::new();
    for (i, r) in specs.iter().enumerate() {
        let key = format!("routing.rules[{i}]");
        let w = &r.when;
        let class = match &w.class {
            None => None,
            Some(c) => Some(classes.iter().position(|x| &x.name == c).ok_or_else(|| {
                err(
                    format!("{key}.when.class"),
                    format!(
                        "no class named `{c}`; expected one of: {}",
                        classes
                            .iter()
                            .map(|x| x.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?),
        };
        let when_tier = w
            .tier
            .as_ref()
            .map(|t| tier_of(format!("{key}.when.tier"), t))
            .transpose()?;
        if let Some(s) = &w.sensitivity
            && !classes.iter().any(|c| c.sensitivity.as_ref() == Some(s))
        {
            let mut labels: Vec<&str> = classes
                .iter()
                .filter_map(|c| c.sensitivity.as_deref())
                .collect();
            labels.sort();
            labels.dedup();
            return Err(err(
                format!("{key}.when.sensitivity"),
                format!(
                    "no class has sensitivity `{s}` (set `sensitivity = \"{s}\"` on a class); labels in use: {}",
                    if labels.is_empty() {
                        "none".to_string()
                    } else {
                        labels.join(", ")
                    }
                ),
            ));
        }
        if w.slo_below == Some(SimDuration::ZERO) {
            return Err(err(
                format!("{key}.when.slo_below"),
                "expected a positive duration",
            ));
        }
        if let Some(b) = w.budget_below
            && !b.is_finite()
        {
            return Err(err(
                format!("{key}.when.budget_below"),
                format!("expected a number of dollars, got {b}"),
            ));
        }
        if r.tier.is_none() && r.pools.is_none() {
            return Err(err(
                key,
                "expected `tier = \"...\"` and/or `pools = [...]`: what the rule routes to",
            ));
        }
        let to_tier = r
            .tier
            .as_ref()
            .map(|t| tier_of(format!("{key}.tier"), t))
            .transpose()?;
        let only = match &r.pools {
            None => None,
            Some(ps) => {
                if ps.is_empty() {
                    return Err(err(format!("{key}.pools"), "expected at least one pool"));
                }
                let mut v = Vec::new();
                for (j, p) in ps.iter().enumerate() {
                    v.push(*pool_index.get(p).ok_or_else(|| {
                        err(
                            format!("{key}.pools[{j}]"),
                            format!(
                                "no pool named `{p}`; expected one of: {}",
                                known(pool_index)
                            ),
                        )
                    })?);
                }
                Some(v)
            }
        };
        let chains: Vec<Vec<usize>> = (0..tiers.len())
            .map(|t| {
                tiers[to_tier.unwrap_or(t)]
                    .pools
                    .iter()
                    .copied()
                    .filter(|p| only.as_ref().is_none_or(|o| o.contains(p)))
                    .collect()
            })
            .collect();
        if let Some(role) = &w.role
            && !classes.iter().any(|c| {
                c.graph
                    .nodes
                    .iter()
                    .any(|n| n.tier.is_some() && &n.role == role)
            })
        {
            let mut roles: Vec<&str> = classes
                .iter()
                .flat_map(|c| c.graph.nodes.iter())
                .filter(|n| n.tier.is_some())
                .map(|n| n.role.as_str())
                .collect();
            roles.sort();
            roles.dedup();
            return Err(err(
                format!("{key}.when.role"),
                format!(
                    "no tiered node has role `{role}` (rules route nodes with a `tier`; a node's role defaults to its id); roles of tiered nodes: {}",
                    if roles.is_empty() {
                        "none".to_string()
                    } else {
                        roles.join(", ")
                    }
                ),
            ));
        }
        let rule = RoutingRule {
            class,
            tier: when_tier,
            sensitivity: w.sensitivity.clone(),
            slo_below: w.slo_below,
            budget_below: w.budget_below,
            role: w.role.clone(),
            min_input_tokens: w.min_input_tokens,
            chains,
        };
        // Every tiered node the rule can match must keep at least one pool.
        for (ci, c) in classes.iter().enumerate() {
            for n in &c.graph.nodes {
                let Some(t) = n.tier else { continue };
                // With a budget, some workflow may have any amount left; a hop may
                // have any prompt.
                let may_match = rule.matches(
                    ci,
                    c,
                    HopRouting {
                        tier: t,
                        budget_left: c.budget_usd.map(|_| f64::NEG_INFINITY),
                        role: &n.role,
                        input_tokens: u64::MAX,
                    },
                );
                if may_match && rule.chains[t].is_empty() {
                    return Err(err(
                        format!("{key}.pools"),
                        format!(
                            "leaves node `{}` of class `{}` (tier `{}`: {}) with no pool; name pools of the chain the rule routes on",
                            n.id,
                            c.name,
                            tiers[t].name,
                            tiers[to_tier.unwrap_or(t)]
                                .pools
                                .iter()
                                .filter_map(|&p| pool_index.iter().find(|e| *e.1 == p))
                                .map(|e| e.0.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        rules.push(rule);
    }
    Ok(rules)
}

fn compile_gpu_pool(
    key: &str,
    g: &GpuPoolSpec,
    catalog: &crate::gpu::profiles::ProfileCatalog,
) -> Result<GpuPool, SpecError> {
    let model = catalog
        .model(&g.model)
        .map_err(|m| err(format!("{key}.gpu.model"), m))?;
    let gpu = catalog
        .gpu(&g.gpu)
        .map_err(|m| err(format!("{key}.gpu.gpu"), m))?;
    let tp = g.tp.unwrap_or(1);
    if tp == 0 || tp > 64 {
        return Err(err(
            format!("{key}.gpu.tp"),
            format!("expected a tensor-parallel degree from 1 to 64, got {tp}"),
        ));
    }
    model
        .check_tp(tp)
        .map_err(|m| err(format!("{key}.gpu.tp"), m))?;
    let mem = g.memory_utilization.unwrap_or(0.9);
    if !(mem > 0.0 && mem <= 1.0) {
        return Err(err(
            format!("{key}.gpu.memory_utilization"),
            format!("expected a fraction in (0, 1], got {mem}"),
        ));
    }
    let kv_tokens = crate::gpu::profiles::kv_capacity_tokens(model, gpu, tp, mem)
        .map_err(|m| err(format!("{key}.gpu"), m))?;
    let kind = g.perf.clone().unwrap_or_else(|| "roofline".into());
    let perf = crate::gpu::perf::build_perf_model(&kind, &g.model, &g.gpu, tp, catalog)
        .map_err(|m| err(format!("{key}.gpu.perf"), m))?;
    let defaults = crate::gpu::replica::ReplicaConfig::defaults(1);
    let block_size = g.block_size.unwrap_or(defaults.block_size);
    if block_size == 0 {
        return Err(err(
            format!("{key}.gpu.block_size"),
            "expected a block size >= 1 token",
        ));
    }
    let blocks = (kv_tokens / block_size as u64).min(u32::MAX as u64) as u32;
    let config = crate::gpu::replica::ReplicaConfig {
        max_num_seqs: g.max_num_seqs.unwrap_or(defaults.max_num_seqs),
        max_batched_tokens: g.max_batched_tokens.unwrap_or(defaults.max_batched_tokens),
        block_size,
        kv_capacity_blocks: blocks,
        watermark: g.watermark.unwrap_or(defaults.watermark),
        chunked_prefill: g.chunked_prefill.unwrap_or(defaults.chunked_prefill),
        prefix_caching: g.prefix_caching.unwrap_or(defaults.prefix_caching),
        decode_skipping: g.decode_skipping.unwrap_or(defaults.decode_skipping),
    }
    .validated()
    .map_err(|m| err(format!("{key}.gpu"), m))?;
    let picker = g
        .picker
        .clone()
        .unwrap_or_else(|| "least_outstanding_tokens".into());
    const PICKERS: [&str; 7] = [
        "least_outstanding_tokens",
        "least_tokens_ahead",
        "least_outstanding_requests",
        "round_robin",
        "random",
        "prefix_affinity",
        "kv_aware",
    ];
    if !PICKERS.contains(&picker.as_str()) {
        return Err(err(
            format!("{key}.gpu.picker"),
            format!(
                "unknown picker `{picker}`; expected one of: {}",
                PICKERS.join(", ")
            ),
        ));
    }
    let weight_bytes_per_gpu = model.weight_bytes().div_ceil(tp as u64);
    let model_load = match g.model_load_gb_per_s {
        None => SimDuration::ZERO,
        // Whole milliseconds: finer than any storage figure, and readable in `check`.
        Some(r) if r.is_finite() && r >= 0.001 => {
            SimDuration::from_secs_f64((weight_bytes_per_gpu as f64 / (r * 1e6)).round() / 1e3)
        }
        Some(r) => {
            return Err(err(
                format!("{key}.gpu.model_load_gb_per_s"),
                format!(
                    "expected a read rate of at least 0.001 GB/s per GPU (e.g. 2.0 for local NVMe), got {r}"
                ),
            ));
        }
    };
    Ok(GpuPool {
        model: g.model.clone(),
        gpu: g.gpu.clone(),
        tp,
        config,
        perf,
        picker,
        kv_tokens,
        context_limit: model.context_limit,
        node_boot: gpu.boot_time,
        model_load,
        weight_bytes_per_gpu,
    })
}

/// The `hops` shorthand as graph nodes: each hop after the previous one.
fn chain_to_nodes(hops: &[HopSpec]) -> Vec<NodeSpec> {
    hops.iter()
        .enumerate()
        .map(|(i, h)| NodeSpec {
            id: format!("{}#{i}", h.name.clone().unwrap_or_else(|| h.pool.clone())),
            enabled: true,
            kind: NodeKind::Llm,
            after: if i == 0 {
                vec![]
            } else {
                vec![format!(
                    "{}#{}",
                    hops[i - 1]
                        .name
                        .clone()
                        .unwrap_or_else(|| hops[i - 1].pool.clone()),
                    i - 1
                )]
            },
            role: Some(h.name.clone().unwrap_or_else(|| h.pool.clone())),
            pool: Some(h.pool.clone()),
            tier: None,
            service: h.service.clone(),
            input_tokens: None,
            output_tokens: None,
            shared_prefix_tokens: 0,
            inherit: None,
            timeout: None,
            tool: None,
            probability: None,
            minutes: None,
            usd_per_minute: 0.0,
            compact_to: None,
            fan_out: None,
            loop_back: None,
            escalate: None,
        })
        .collect()
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
    /// Gives class `class` the recorded requests of a trace (in time order), and its
    /// canary cohort, if any, the same requests with the cohort's pools and tiers in
    /// their recorded workflows. Errors (naming `classes.NAME.canary`) when the cohort
    /// would move nothing.
    pub fn attach_recorded(
        &mut self,
        class: usize,
        requests: Vec<RecordedRequest>,
    ) -> Result<(), SpecError> {
        let requests = std::sync::Arc::new(requests);
        if let Some((_, cohort)) = self.classes[class].canary {
            let moves = self.classes[cohort]
                .canary_moves
                .clone()
                .unwrap_or_default();
            let any_graph = requests.iter().any(|r| r.graph.is_some());
            // Requests without a graph of their own run the class's.
            let mut moved = if requests.iter().any(|r| r.graph.is_none()) {
                moves.apply(&mut self.classes[class].graph.clone())
            } else {
                0
            };
            let theirs = if any_graph {
                let moved_requests: Vec<RecordedRequest> = requests
                    .iter()
                    .map(|r| {
                        let mut r = r.clone();
                        if let Some(g) = &r.graph {
                            let mut g = (**g).clone();
                            moved += moves.apply(&mut g);
                            r.graph = Some(std::sync::Arc::new(g));
                        }
                        r
                    })
                    .collect();
                std::sync::Arc::new(moved_requests)
            } else {
                // Flat requests share the parent's list.
                requests.clone()
            };
            if moved == 0 {
                return Err(err(
                    format!("classes.{}.canary", self.classes[class].name),
                    format!(
                        "no node of class `{}`{} uses the pools or tiers it replaces",
                        self.classes[class].name,
                        if any_graph {
                            " or of its recorded workflows"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            self.classes[cohort].arrival = Arrival::Recorded {
                requests: theirs,
                stream: None,
            };
        }
        self.classes[class].arrival = Arrival::Recorded {
            requests,
            stream: None,
        };
        Ok(())
    }

    /// Hands a class rows that are read as the run advances (in time order: see
    /// [`RecordedSource`]); a canary cohort draws from the same pass (recorded
    /// workflows get its moves as they arrive; loading checked that some move).
    pub fn attach_stream(&mut self, class: usize, stream: RecordedStream) -> Result<(), SpecError> {
        if let Some((_, cohort)) = self.classes[class].canary {
            let moves = self.classes[cohort]
                .canary_moves
                .clone()
                .unwrap_or_default();
            if !stream.0.replays_workflows()
                && moves.apply(&mut self.classes[class].graph.clone()) == 0
            {
                return Err(err(
                    format!("classes.{}.canary", self.classes[class].name),
                    format!(
                        "no node of class `{}` uses the pools or tiers it replaces",
                        self.classes[class].name
                    ),
                ));
            }
            self.classes[cohort].arrival = Arrival::Recorded {
                requests: std::sync::Arc::new(Vec::new()),
                stream: Some(stream.clone()),
            };
        }
        self.classes[class].arrival = Arrival::Recorded {
            requests: std::sync::Arc::new(Vec::new()),
            stream: Some(stream),
        };
        Ok(())
    }

    /// The fallback chain hop `hop` of `class` is routed on: the first matching
    /// routing rule's, else its tier's own.
    pub fn tier_chain(&self, class: usize, hop: HopRouting<'_>) -> &[usize] {
        let c = &self.classes[class];
        self.routing_rules
            .iter()
            .find(|r| r.matches(class, c, hop))
            .map(|r| r.chains[hop.tier].as_slice())
            .unwrap_or(&self.tiers[hop.tier].pools)
    }

    /// The pool a node of `class` is counted on before any simulation: its own pool,
    /// else the first pool of the chain its routing rules choose (class, tier,
    /// sensitivity, SLO and role conditions decide; a `budget_below` condition is
    /// judged with nothing spent yet, i.e. the class's whole `budget_usd` left, and a
    /// `min_input_tokens` one with the node's expected prompt, `expected_input`).
    pub fn a_priori_pool(
        &self,
        class: usize,
        node: &crate::workflow::Node,
        expected_input: f64,
    ) -> Option<usize> {
        node.pool.or_else(|| {
            node.tier.and_then(|t| {
                let hop = HopRouting {
                    tier: t,
                    budget_left: self.classes[class].budget_usd,
                    role: &node.role,
                    input_tokens: expected_input.max(0.0).round() as u64,
                };
                self.tier_chain(class, hop).first().copied()
            })
        })
    }

    /// Mean branch count of each fan-out node of class `ci` (1 elsewhere), as the
    /// simulator draws it: the count in force (a burst's `fan_out` while one is
    /// active, else the node's), rounded, and capped by the class's `max_fan_out` and
    /// the `[emergency]` switch. `at = None` averages over [0, horizon) weighted by the
    /// class's arrival rate (a workflow's fan-out regime taken at its arrival); `Some(t)`
    /// gives the regime in force at `t`.
    pub fn fan_out_means(&self, ci: usize, at: Option<SimTime>) -> Vec<f64> {
        let c = &self.classes[ci];
        let g = &c.graph;
        let mut out = vec![1.0; g.nodes.len()];
        if g.nodes.iter().all(|n| n.fan_out.is_none()) {
            return out;
        }
        // (burst whose fan_out is in force, or usize::MAX; cap, or u64::MAX).
        let regime = |t: SimTime| {
            let burst = c
                .bursts
                .iter()
                .position(|b| b.fan_out.is_some() && b.active(t))
                .unwrap_or(usize::MAX);
            let mut cap = c.max_fan_out.map_or(u64::MAX, u64::from);
            if let Some((from, until, e)) = self.emergency
                && t >= from
                && until.is_none_or(|u| t < u)
            {
                cap = cap.min(u64::from(e));
            }
            (burst, cap)
        };
        let mut weights: BTreeMap<(usize, u64), f64> = BTreeMap::new();
        match at {
            Some(t) => {
                weights.insert(regime(t), 1.0);
            }
            None => {
                let n = 10_000u64;
                let h = self.horizon.as_nanos().max(1);
                let grid = (0..n).map(|i| SimTime(h / n * i + h / (2 * n)));
                for t in grid.clone() {
                    *weights.entry(regime(t)).or_default() += c.rate_at(t);
                }
                if weights.values().sum::<f64>() <= 0.0 {
                    // Closed loops and replays have no rate function: equal weight in time.
                    weights.clear();
                    for t in grid {
                        *weights.entry(regime(t)).or_default() += 1.0;
                    }
                }
            }
        }
        let total: f64 = weights.values().sum();
        for (i, node) in g.nodes.iter().enumerate() {
            let Some(f) = &node.fan_out else { continue };
            let sum: f64 = weights
                .iter()
                .map(|(&(b, cap), w)| {
                    let s = c
                        .bursts
                        .get(b)
                        .and_then(|b| b.fan_out.as_ref())
                        .unwrap_or(&f.count);
                    w * if cap == u64::MAX {
                        s.mean()
                    } else {
                        s.mean_capped_count(cap)
                    }
                })
                .sum();
            out[i] = sum / total;
        }
        out
    }

    /// The instants at which the load regime can change within the horizon: 0, each
    /// burst's first start, and the emergency switch's start and end (sorted, unique).
    pub fn regime_starts(&self) -> Vec<SimTime> {
        let h = SimTime::ZERO + self.horizon;
        let mut t = vec![SimTime::ZERO];
        for c in &self.classes {
            t.extend(c.bursts.iter().map(|b| b.start));
        }
        if let Some((from, until, _)) = self.emergency {
            t.push(from);
            t.extend(until);
        }
        t.retain(|&x| x < h);
        t.sort();
        t.dedup();
        t
    }

    /// The instants `check` evaluates the load at to find its peak: the regime starts,
    /// and every rate step of a piecewise class within the horizon (at most 2,000
    /// instants in all, the first ones kept).
    pub fn load_instants(&self) -> Vec<SimTime> {
        const MOST: usize = 2_000;
        let h = self.horizon.as_nanos();
        let mut t = self.regime_starts();
        for c in &self.classes {
            if let Arrival::Piecewise { step, .. } = &c.arrival {
                let step = step.as_nanos().max(1);
                t.extend((0..h.div_ceil(step)).take(MOST).map(|k| SimTime(k * step)));
            }
        }
        t.sort();
        t.dedup();
        t.truncate(MOST);
        t
    }

    /// The largest mean branch count of each node of class `ci` over the regimes of
    /// [`Scenario::regime_starts`]: what a worst-case figure (a context limit) needs.
    pub fn fan_out_peak_means(&self, ci: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; self.classes[ci].graph.nodes.len()];
        for t in self.regime_starts() {
            for (o, m) in out.iter_mut().zip(self.fan_out_means(ci, Some(t))) {
                *o = o.max(m);
            }
        }
        out
    }

    /// Per entry of what `figure` gives at an instant (a pool's rho, a GPU pool's
    /// load; `None` where it has none), its largest value over
    /// [`Scenario::load_instants`] and the first instant it is reached, where it stands
    /// above `average[i]` by more than 0.5% (`None` elsewhere: no peak worth showing).
    pub fn peaks_above(
        &self,
        average: &[f64],
        figure: impl Fn(SimTime) -> Vec<Option<f64>>,
    ) -> Vec<Option<(f64, SimTime)>> {
        let mut best: Vec<Option<(f64, SimTime)>> = vec![None; average.len()];
        if self.load_varies() {
            for t in self.load_instants() {
                for (b, x) in best.iter_mut().zip(figure(t)) {
                    if let Some(x) = x
                        && b.is_none_or(|(y, _)| x > y)
                    {
                        *b = Some((x, t));
                    }
                }
            }
        }
        best.into_iter()
            .zip(average)
            .map(|(b, &avg)| b.filter(|&(p, _)| p > avg * 1.005 + 1e-9))
            .collect()
    }

    /// Expected executions of each node of class `ci` per workflow (fan-out as
    /// [`Scenario::fan_out_means`] gives it), and expected tokens per execution.
    pub fn class_expectations(
        &self,
        ci: usize,
        at: Option<SimTime>,
    ) -> (Vec<f64>, Vec<ExpectedTokens>) {
        let fan = self.fan_out_means(ci, at);
        let g = &self.classes[ci].graph;
        (
            expected_visits(g, &fan),
            expected_tokens(g, &self.tools, &fan),
        )
    }

    /// Expected load per pool from the scenario alone, averaged over the horizon: hop
    /// rate x mean service time, counting expected fan-out (bursts and caps included),
    /// loop repetitions (geometric, capped) and escalations. A tiered node is counted
    /// on its [`Scenario::a_priori_pool`].
    pub fn offered_load(&self) -> Vec<PoolLoad> {
        self.offered_load_with(None)
    }

    /// The load offered at instant `t`: arrival rates and fan-out regimes in force
    /// then (a replayed class counts its mean rate).
    pub fn offered_load_at(&self, t: SimTime) -> Vec<PoolLoad> {
        self.offered_load_with(Some(t))
    }

    /// Whether the offered load changes over time (rate steps, bursts, an emergency
    /// switch): then an instant's load can exceed the average.
    pub fn load_varies(&self) -> bool {
        self.emergency.is_some()
            || self.classes.iter().any(|c| {
                !c.bursts.is_empty()
                    || matches!(&c.arrival, Arrival::Piecewise { rates_per_s, .. }
                        if rates_per_s.iter().any(|&r| r != rates_per_s[0]))
            })
    }

    /// Workflows per second class `ci` brings (its canary share taken): at instant
    /// `t`, or averaged over the horizon (`None`; a replay always counts its mean).
    pub fn class_rate(&self, ci: usize, at: Option<SimTime>) -> f64 {
        let c = &self.classes[ci];
        let rate = match (at, &c.arrival) {
            (
                Some(t),
                Arrival::Poisson { .. } | Arrival::Piecewise { .. } | Arrival::Renewal { .. },
            ) => c.rate_at(t),
            _ => c.mean_rate_per_s(self.horizon),
        };
        rate * c.workload_share(self)
    }

    fn offered_load_with(&self, at: Option<SimTime>) -> Vec<PoolLoad> {
        let mut rate = vec![0.0; self.pools.len()];
        let mut work = vec![0.0; self.pools.len()];
        for (ci, c) in self.classes.iter().enumerate() {
            let r = self.class_rate(ci, at);
            let (visits, tokens) = self.class_expectations(ci, at);
            for (i, n) in c.graph.nodes.iter().enumerate() {
                if !n.enabled {
                    continue;
                }
                let v = r * visits[i];
                let (input, output) = (tokens[i].input, tokens[i].output);
                let on = |pool: usize| {
                    let service = n
                        .service
                        .as_ref()
                        .or(self.pools[pool].service.as_ref())
                        .map(Sampler::mean)
                        .unwrap_or(0.0);
                    service
                        + self.pools[pool]
                            .token_time(input.round() as u64, output.round() as u64)
                            .as_secs_f64()
                };
                // A tiered node is counted on its (rule-chosen) chain's first choice.
                if let Some(p) = self.a_priori_pool(ci, n, input) {
                    rate[p] += v;
                    work[p] += v * on(p);
                }
                if let Some(e) = &n.escalate {
                    rate[e.pool] += v * e.probability;
                    work[e.pool] += v * e.probability * on(e.pool);
                } else if let Some(t) = n.tier {
                    // A tier cascade: each step on the next tier's first pool.
                    let mut reach = 1.0;
                    for (p, to) in self.cascade_from(t) {
                        reach *= p;
                        if let Some(&q) = self.tiers[to].pools.first() {
                            rate[q] += v * reach;
                            work[q] += v * reach * on(q);
                        }
                    }
                }
            }
        }
        self.pools
            .iter()
            .enumerate()
            .map(|(pi, p)| PoolLoad {
                pool: p.name.clone(),
                servers: p.planning_servers(),
                hop_rate_per_s: rate[pi],
                mean_service_s: if rate[pi] > 0.0 {
                    work[pi] / rate[pi]
                } else {
                    0.0
                },
                rho: work[pi] / p.planning_servers() as f64,
            })
            .collect()
    }
}

/// The canary cohort of class `parent` (index `parent_index`): a copy of it named
/// `NAME/canary` whose pinned pools, escalation pools and tiers are replaced as `spec`
/// says, with no arrivals of its own.
fn canary_cohort(
    key: &str,
    spec: &CanarySpec,
    parent_index: usize,
    parent: &WorkflowClass,
    pool_index: &BTreeMap<String, usize>,
    tier_index: &BTreeMap<String, usize>,
) -> Result<WorkflowClass, SpecError> {
    if !(spec.share > 0.0 && spec.share <= 1.0) {
        return Err(err(
            format!("{key}.share"),
            format!("expected a share in (0, 1], like 0.05; got {}", spec.share),
        ));
    }
    if spec.pools.is_empty() && spec.tiers.is_empty() {
        return Err(err(
            key.to_string(),
            "expected `pools = { \"old\" = \"new\" }` and/or `tiers = { \"old\" = \"new\" }`",
        ));
    }
    let lookup = |what: &str, m: &BTreeMap<String, usize>, k: &str, name: &str| {
        m.get(name).copied().ok_or_else(|| {
            err(
                format!("{key}.{what}.{k}"),
                format!(
                    "no {} named `{name}`; expected one of: {}",
                    &what[..what.len() - 1],
                    m.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    };
    let mut moves = CanaryMoves::default();
    for (from, to) in &spec.pools {
        moves.pools.insert(
            lookup("pools", pool_index, from, from)?,
            lookup("pools", pool_index, from, to)?,
        );
    }
    for (from, to) in &spec.tiers {
        moves.tiers.insert(
            lookup("tiers", tier_index, from, from)?,
            lookup("tiers", tier_index, from, to)?,
        );
    }
    let mut cohort = parent.clone();
    cohort.name = format!("{}/canary", parent.name);
    cohort.canary = None;
    cohort.cohort_of = Some(parent_index);
    let moved = moves.apply(&mut cohort.graph);
    cohort.canary_moves = Some(moves);
    // A replayed trace brings its own workflows after validation: checked then
    // (`Scenario::attach_recorded`).
    if matches!(parent.arrival, Arrival::Recorded { .. }) {
        return Ok(cohort);
    }
    if moved == 0 {
        return Err(err(
            key.to_string(),
            format!(
                "no node of class `{}` uses the pools or tiers it replaces",
                parent.name
            ),
        ));
    }
    Ok(cohort)
}

/// Expected prompt, output and context tokens of one execution of a node.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExpectedTokens {
    pub input: f64,
    pub output: f64,
    /// Context passed on to children.
    pub context_out: f64,
}

/// Expected tokens per node, following context inheritance in topological order (a
/// join passes on the sum over its expected branches; loop feedback is ignored).
/// `fan[i]` is node `i`'s mean branch count ([`Scenario::fan_out_means`]).
pub fn expected_tokens(g: &WorkflowGraph, tools: &[Tool], fan: &[f64]) -> Vec<ExpectedTokens> {
    let mut t = vec![ExpectedTokens::default(); g.nodes.len()];
    // Branch multiplier of a fan-out's last node, for the join.
    let mut join_factor = vec![1.0; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if let Some(f) = &n.fan_out {
            join_factor[f.through] = fan.get(i).copied().unwrap_or_else(|| f.count.mean());
        }
    }
    for &i in &g.order {
        let n = &g.nodes[i];
        let ctx_in: f64 = n
            .parents
            .iter()
            .map(|&p| {
                t[p].context_out
                    * if g.nodes[i].in_branch_of.is_some() {
                        1.0
                    } else {
                        join_factor[p]
                    }
            })
            .sum();
        let mean = |s: &Option<Sampler>| s.as_ref().map(Sampler::mean).unwrap_or(0.0);
        t[i] = if !n.enabled {
            ExpectedTokens {
                input: 0.0,
                output: 0.0,
                context_out: ctx_in,
            }
        } else {
            match n.kind {
                NodeKind::Llm => {
                    let input = mean(&n.input_tokens) + n.inherit * ctx_in;
                    let output = mean(&n.output_tokens);
                    ExpectedTokens {
                        input,
                        output,
                        context_out: input + output,
                    }
                }
                NodeKind::Compact => {
                    let input = mean(&n.input_tokens) + n.inherit * ctx_in;
                    let output = n.compact_to.map(|c| (c as f64).min(input)).unwrap_or(0.0);
                    ExpectedTokens {
                        input,
                        output,
                        context_out: output,
                    }
                }
                NodeKind::Tool => {
                    let payload = n
                        .tool
                        .and_then(|ti| tools.get(ti))
                        .map(|t| mean(&t.payload_tokens))
                        .unwrap_or(0.0);
                    ExpectedTokens {
                        input: 0.0,
                        output: payload,
                        context_out: ctx_in + payload,
                    }
                }
                NodeKind::Human => ExpectedTokens {
                    input: 0.0,
                    output: 0.0,
                    context_out: ctx_in,
                },
            }
        };
    }
    t
}

/// Expected executions of each node per workflow; `fan[i]` is node `i`'s mean branch
/// count ([`Scenario::fan_out_means`]).
pub fn expected_visits(g: &WorkflowGraph, fan: &[f64]) -> Vec<f64> {
    let mut v = vec![1.0; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if n.kind == NodeKind::Human {
            v[i] *= n.probability;
        }
        if let Some(f) = &n.fan_out {
            let m = fan.get(i).copied().unwrap_or_else(|| f.count.mean());
            v[i] *= m;
            let mut cur = i;
            while cur != f.through {
                cur = g.nodes[cur].children[0];
                v[cur] *= m;
            }
        }
    }
    for n in &g.nodes {
        if let Some(l) = &n.loop_back {
            let p = l.probability;
            // Expected runs of a loop body: sum_{k=0}^{max} p^k.
            let runs = match l.max {
                Some(m) => (0..=m).map(|k| p.powi(k as i32)).sum::<f64>(),
                None => 1.0 / (1.0 - p),
            };
            for &b in &l.body {
                v[b] *= runs;
            }
        }
    }
    v
}
#[cfg(test)]
mod recorded_size {
    /// docs/traces.md ("Memory of a replay") quotes these sizes: update it with them.
    #[test]
    fn a_recorded_row_and_a_replayed_node_have_the_documented_sizes() {
        assert_eq!(std::mem::size_of::<super::RecordedRequest>(), 48);
        assert_eq!(std::mem::size_of::<crate::workflow::Node>(), 648);
    }
}

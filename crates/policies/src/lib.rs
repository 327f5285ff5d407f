//! Control-plane policy implementations for factorysim. Each implements a trait from
//! `sim_core::policy`; [`Standard`] builds them from the scenario's specs. sim-core never
//! depends on this crate.
//!
//! | decision | spec | implementations |
//! |---|---|---|
//! | queue discipline | `pools.X.discipline` | [`Fifo`](sim_core::policy::Fifo), [`StrictPriority`], [`WeightedFair`], [`EarliestDeadline`] |
//! | tier routing | `[routing] policy` | [`FirstAvailable`], [`CostAware`], [`LeastLoaded`] (within the chain `[[routing.rules]]` chose: `Scenario::tier_chain`) |
//! | autoscaling | `pools.X.autoscale` | [`ReactiveAutoscaler`] (queue depth, tokens in flight, p99 TTFT, queue age; pre-warming) |
//! | replica load balancing | `pools.X.gpu.picker` | round robin, random, least outstanding tokens or requests (sim-core), [`PrefixAffinity`], [`KvAware`], [`LeastTokensAhead`] |

use sim_core::gpu::LlmRequest;
use sim_core::gpu::gpu_station::{
    LeastOutstandingRequests, LeastOutstandingTokens, ReplicaPicker, ReplicaView, RoundRobin,
};
use sim_core::policy::{
    AutoscaleSpec, Autoscaler, DisciplineSpec, Fifo, JobMeta, PolicyFactory, PoolView,
    QueueDiscipline, RouteRequest, RoutingSpec, ScaleObservation, TierRouter,
};
use sim_core::{SimDuration, SimTime};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

/// Strict priority across lanes: a waiting hop of a higher-priority lane is always
/// served before any lower one; FIFO within a priority. (The practice: interactive
/// lanes preempt batch in the queue, never mid-service.)
#[derive(Default)]
pub struct StrictPriority {
    queues: BTreeMap<Reverse<i32>, VecDeque<u64>>,
    len: usize,
}

impl QueueDiscipline for StrictPriority {
    fn push(&mut self, _now: SimTime, meta: JobMeta, key: u64) {
        self.queues
            .entry(Reverse(meta.priority))
            .or_default()
            .push_back(key);
        self.len += 1;
    }
    fn pop(&mut self, _now: SimTime) -> Option<u64> {
        let (&prio, q) = self.queues.iter_mut().find(|(_, q)| !q.is_empty())?;
        let key = q.pop_front();
        if q.is_empty() {
            self.queues.remove(&prio);
        }
        self.len -= 1;
        key
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Weighted fair queuing across lanes by start-time fair queuing (Goyal et al., 1996):
/// each hop gets a start tag max(virtual time, its lane's last finish tag) and a finish
/// tag start + size / weight; the hop with the smallest start tag is served and the
/// virtual time advances to it. Under saturation each lane's share of server time
/// converges to its weight over the sum of the weights.
#[derive(Default)]
pub struct WeightedFair {
    lanes: BTreeMap<u32, VecDeque<(f64, u64)>>,
    last_finish: BTreeMap<u32, f64>,
    virtual_time: f64,
    len: usize,
}

impl QueueDiscipline for WeightedFair {
    fn push(&mut self, _now: SimTime, meta: JobMeta, key: u64) {
        let last = self.last_finish.get(&meta.lane).copied().unwrap_or(0.0);
        let start = self.virtual_time.max(last);
        let finish = start + meta.size_ns as f64 / meta.weight.max(1e-9);
        self.last_finish.insert(meta.lane, finish);
        self.lanes
            .entry(meta.lane)
            .or_default()
            .push_back((start, key));
        self.len += 1;
    }
    fn pop(&mut self, _now: SimTime) -> Option<u64> {
        // Smallest start tag among lane heads; ties to the lower lane index.
        let lane = self
            .lanes
            .iter()
            .filter_map(|(&l, q)| q.front().map(|&(s, _)| (s, l)))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))?
            .1;
        let q = self.lanes.get_mut(&lane)?;
        let (start, key) = q.pop_front()?;
        self.virtual_time = self.virtual_time.max(start);
        self.len -= 1;
        Some(key)
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Earliest deadline first: the hop whose workflow's SLO runs out soonest; FIFO among
/// equal deadlines (hops without an SLO go last).
#[derive(Default)]
pub struct EarliestDeadline {
    heap: BinaryHeap<Reverse<(SimTime, u64, u64)>>,
    seq: u64,
}

impl QueueDiscipline for EarliestDeadline {
    fn push(&mut self, _now: SimTime, meta: JobMeta, key: u64) {
        self.heap.push(Reverse((meta.deadline, self.seq, key)));
        self.seq += 1;
    }
    fn pop(&mut self, _now: SimTime) -> Option<u64> {
        self.heap.pop().map(|Reverse((_, _, k))| k)
    }
    fn len(&self) -> usize {
        self.heap.len()
    }
}

/// Static routing with fallback: the first pool of the tier's chain that is up and
/// admits the hop (a 429 or an outage moves to the next, marked degraded).
pub struct FirstAvailable;

impl TierRouter for FirstAvailable {
    fn choose(&mut self, _req: &RouteRequest, candidates: &[PoolView]) -> Option<usize> {
        candidates.iter().position(|c| c.available)
    }
}

/// Cost-aware routing: the cheapest available pool whose predicted latency fits the time
/// left before the workflow's SLO and whose cost fits its remaining budget; if none fits
/// both, the fastest (lowest predicted latency) available pool within the budget; if
/// none is within the budget, the cheapest available pool.
pub struct CostAware;

impl TierRouter for CostAware {
    fn choose(&mut self, req: &RouteRequest, candidates: &[PoolView]) -> Option<usize> {
        let in_budget = |c: &PoolView| req.budget_remaining_usd.is_none_or(|b| c.usd <= b);
        let fits = |c: &PoolView| {
            in_budget(c)
                && req
                    .slo_remaining_s
                    .is_none_or(|left| c.predicted_latency_s() <= left)
        };
        let cheapest = |ok: &dyn Fn(&PoolView) -> bool| {
            candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| c.available && ok(c))
                .min_by(|a, b| a.1.usd.total_cmp(&b.1.usd).then(a.0.cmp(&b.0)))
                .map(|(i, _)| i)
        };
        cheapest(&fits)
            .or_else(|| fastest(candidates, &in_budget))
            .or_else(|| cheapest(&|_| true))
    }
}

/// The available pool accepted by `ok` with the lowest predicted latency; ties to the
/// earlier pool of the chain.
fn fastest(candidates: &[PoolView], ok: &dyn Fn(&PoolView) -> bool) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.available && ok(c))
        .min_by(|a, b| {
            a.1.predicted_latency_s()
                .total_cmp(&b.1.predicted_latency_s())
                .then(a.0.cmp(&b.0))
        })
        .map(|(i, _)| i)
}

/// The available pool with the lowest predicted latency (queue ahead / servers +
/// service); ties to the earlier pool of the chain.
pub struct LeastLoaded;

impl TierRouter for LeastLoaded {
    fn choose(&mut self, _req: &RouteRequest, candidates: &[PoolView]) -> Option<usize> {
        fastest(candidates, &|_| true)
    }
}

/// Reactive autoscaling on one signal, with a scheduled floor (pre-warming).
///
/// - `queue_depth`: target servers = ceil((busy + queued) / target).
/// - `tokens_in_flight`: target servers = ceil(tokens in flight / target).
/// - `p99_ttft`: with p = the windowed p99 TTFT and c = running + booting servers:
///   p > target: max(c + 1, ceil(c x p / target)) (the Kubernetes HPA ratio rule, at
///   least one more); p < `scale_down_below` x target: c - 1; else c. With no hop
///   finished in the window: c - 1 if the pool is empty (busy + queued = 0), else c.
/// - `queue_age`: the same rule on a = how long the oldest hop still waiting for its
///   first token has waited (SQS's age of the oldest message): a > target:
///   max(c + 1, ceil(c x a / target)); a < `scale_down_below` x target: c - 1; else c.
///   With nothing waiting: c - 1 if a running server is idle (busy < running), else
///   c (a busy pool with no queue is the size it should be).
///
/// The result is clamped to [floor, max], where floor is `min` raised by the pre-warm
/// rules active now. No change within `cooldown` of the last change, except that a
/// count below the floor is raised to it at once. New servers take `boot` to come up
/// (and are paid for from boot start); removed servers drain their work first.
///
/// Scale to zero (`min = 0`): the last server goes only when the pool has been idle
/// (nothing in service or waiting) for `zero_after_idle` since its last hop left; a
/// pool at zero with work waiting gets one server at once (activation), whatever the
/// signal and the cooldown.
pub struct ReactiveAutoscaler {
    spec: AutoscaleSpec,
    last_change: Option<SimTime>,
}

/// The queue-depth autoscaler is the reactive autoscaler with `metric = "queue_depth"`.
pub type QueueDepthAutoscaler = ReactiveAutoscaler;

impl ReactiveAutoscaler {
    pub fn new(spec: AutoscaleSpec) -> Self {
        ReactiveAutoscaler {
            spec,
            last_change: None,
        }
    }

    /// A time signal against its target (the Kubernetes HPA ratio rule, at least one
    /// more): above it, max(c + 1, ceil(c x signal / target)); below
    /// `scale_down_below` x target, one fewer; else as many.
    fn ratio_rule(&self, current: u32, signal: SimDuration) -> u32 {
        let (x, target) = (signal.as_secs_f64(), self.spec.target);
        if x > target {
            let ratio = (current as f64 * x / target).ceil() as u32;
            ratio.max(current.saturating_add(1))
        } else if x < self.spec.scale_down_below * target {
            current.saturating_sub(1)
        } else {
            current
        }
    }

    /// What the signal asks for, before the floor, the max and the cooldown.
    fn wanted(&self, obs: &ScaleObservation, current: u32) -> u32 {
        let target = self.spec.target;
        match self.spec.metric.as_str() {
            "tokens_in_flight" => (obs.tokens_in_flight as f64 / target).ceil() as u32,
            "p99_ttft" => match obs.ttft_p99 {
                Some(p) => self.ratio_rule(current, p),
                None if obs.busy + obs.queued == 0 => current.saturating_sub(1),
                None => current,
            },
            "queue_age" => match obs.oldest_wait {
                Some(a) => self.ratio_rule(current, a),
                None if obs.busy < u64::from(obs.running) => current.saturating_sub(1),
                None => current,
            },
            _ => ((obs.busy + obs.queued) as f64 / target).ceil() as u32,
        }
    }
}

impl Autoscaler for ReactiveAutoscaler {
    fn target(&mut self, obs: &ScaleObservation) -> u32 {
        let current = obs.running + obs.booting;
        let floor = self.spec.floor_at(obs.now);
        // Activation: a pool scaled to zero (`min = 0`) with work waiting gets a
        // server at once, whatever the signal and the cooldown: nothing else serves it.
        let waking = current == 0 && obs.busy + obs.queued > 0;
        // A count below the floor (a scheduled floor, lost servers) is raised at once,
        // whatever the cooldown.
        if current >= floor
            && !waking
            && let Some(last) = self.last_change
            && obs.now < last + self.spec.cooldown
        {
            return current;
        }
        let mut target = self
            .wanted(obs, current)
            .clamp(floor, self.spec.max.max(floor));
        if waking {
            target = target.max(1);
        }
        // The last server goes only once the pool has been idle for `zero_after_idle`
        // (since its last hop left, not since the first look that saw it idle).
        if target == 0
            && current > 0
            && !obs.idle_since.is_some_and(|t| {
                obs.now.as_nanos() - t.as_nanos() >= self.spec.zero_after_idle().as_nanos()
            })
        {
            target = 1;
        }
        if target != current {
            self.last_change = Some(obs.now);
        }
        target
    }
}

/// Prefix affinity: requests sharing a prefix (the same first prefix-block hash, or
/// the same prefix group) go to the same replica, so its prefix cache hits; with
/// bounded load: if that replica has more than twice the least-loaded replica's
/// outstanding tokens plus one batch worth (8,192), the least-loaded one is used.
#[derive(Debug, Default)]
pub struct PrefixAffinity;

impl ReplicaPicker for PrefixAffinity {
    fn pick(&mut self, replicas: &[ReplicaView], req: &LlmRequest) -> usize {
        let n = replicas.len().max(1);
        let key = req
            .block_hashes
            .as_ref()
            .and_then(|h| h.first().copied())
            .unwrap_or(req.prefix_group);
        // SplitMix64 finaliser so that nearby keys spread over replicas.
        let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let home = ((z ^ (z >> 31)) % n as u64) as usize;
        let least = LeastOutstandingTokens.pick(replicas, req);
        let (h, l) = (
            replicas[home].outstanding_tokens,
            replicas[least].outstanding_tokens,
        );
        if h > 2 * l + 8192 { least } else { home }
    }
    fn name(&self) -> &str {
        "prefix-affinity"
    }
}

/// KV-utilisation aware: the replica with the smallest share of its KV cache in use;
/// ties to fewer outstanding tokens, then the lower index.
#[derive(Debug, Default)]
pub struct KvAware;

impl ReplicaPicker for KvAware {
    fn pick(&mut self, replicas: &[ReplicaView], _req: &LlmRequest) -> usize {
        let share = |r: &ReplicaView| r.kv_used_blocks as f64 / r.kv_capacity_blocks.max(1) as f64;
        let mut best = 0;
        for (i, r) in replicas.iter().enumerate() {
            let b = &replicas[best];
            let better = share(r) < share(b)
                || (share(r) == share(b) && r.outstanding_tokens < b.outstanding_tokens);
            if better {
                best = i;
            }
        }
        best
    }
    fn name(&self) -> &str {
        "kv-aware"
    }
}

/// Lane-aware least outstanding tokens: the replica with the fewest tokens the request
/// would not overtake there (running work, and in a ranked queue the waiting work
/// ranked no worse than it, [`ReplicaView::outstanding_tokens_ahead`]); ties to fewer
/// outstanding tokens in all, then the lower index. With per-replica priority queues a
/// high-priority hop goes where only its equals and betters stand in its way, not
/// where the fewest tokens of any lane are; with FIFO or fair queues it is
/// `least_outstanding_tokens`.
#[derive(Debug, Default)]
pub struct LeastTokensAhead;

impl ReplicaPicker for LeastTokensAhead {
    fn pick(&mut self, replicas: &[ReplicaView], _req: &LlmRequest) -> usize {
        let key = |r: &ReplicaView| (r.outstanding_tokens_ahead, r.outstanding_tokens);
        let mut best = 0;
        for (i, r) in replicas.iter().enumerate() {
            if key(r) < key(&replicas[best]) {
                best = i;
            }
        }
        best
    }
    fn name(&self) -> &str {
        "least-tokens-ahead"
    }
    fn sees_rank(&self) -> bool {
        true
    }
}

/// The policies the CLI runs with: every discipline, router and autoscaler above.
pub struct Standard;

impl PolicyFactory for Standard {
    fn discipline(&self, spec: DisciplineSpec) -> Box<dyn QueueDiscipline> {
        match spec {
            DisciplineSpec::Fifo => Box::new(Fifo::default()),
            DisciplineSpec::Priority => Box::new(StrictPriority::default()),
            DisciplineSpec::WeightedFair => Box::new(WeightedFair::default()),
            DisciplineSpec::EarliestDeadline => Box::new(EarliestDeadline::default()),
        }
    }
    fn router(&self, spec: RoutingSpec) -> Box<dyn TierRouter> {
        match spec {
            RoutingSpec::Static => Box::new(FirstAvailable),
            RoutingSpec::CostAware => Box::new(CostAware),
            RoutingSpec::LeastLoaded => Box::new(LeastLoaded),
        }
    }
    fn autoscaler(&self, spec: &AutoscaleSpec) -> Box<dyn Autoscaler> {
        Box::new(ReactiveAutoscaler::new(spec.clone()))
    }
    fn supports(&self, _spec: DisciplineSpec) -> bool {
        true
    }
    fn replica_picker(&self, name: &str) -> Option<Box<dyn ReplicaPicker>> {
        match name {
            "prefix_affinity" => Some(Box::new(PrefixAffinity)),
            "kv_aware" => Some(Box::new(KvAware)),
            "least_tokens_ahead" => Some(Box::new(LeastTokensAhead)),
            "round_robin" => Some(Box::new(RoundRobin::default())),
            "least_outstanding_tokens" => Some(Box::new(LeastOutstandingTokens)),
            "least_outstanding_requests" => Some(Box::new(LeastOutstandingRequests)),
            // "random" is seeded from the scenario by the simulator itself.
            _ => None,
        }
    }
}

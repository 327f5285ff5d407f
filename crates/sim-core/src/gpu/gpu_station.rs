//! A pool of identical model replicas as a [`Station`]: LLM hops are dispatched on
//! arrival to one replica by a [`ReplicaPicker`] and served there with continuous
//! batching (see [`crate::gpu::replica`]), or with [`QueueAt::Pool`] held in one
//! pool-wide queue until a replica has room ([`GpuPoolStation::with_queue_at`]).
//!
//! Wake tokens carry the replica index (high 24 bits) and the generation of that
//! replica's plan (low 40 bits); a wake-up for an older plan is ignored.
//!
//! The pool's queue discipline orders each replica's waiting queue (and the pool's
//! queue of requests waiting for a replica to come up): `Fifo`, `Priority` (highest
//! lane priority first) or `EarliestDeadline` (earliest workflow deadline first), each
//! FIFO within a priority or deadline, or `WeightedFair` (start-time fair queuing
//! across lanes, per replica); see [`GpuPoolStation::with_discipline`]. Under the two
//! ranked disciplines a replica's KV-shortage victims are its worst-ranked running
//! requests, and [`GpuPoolStation::with_priority_preemption`] lets a blocked
//! better-ranked request preempt them.
//!
//! `Work::Service` (or `Work::Api`) sent to a GPU pool is a no-op: it finishes at once, occupies
//! nothing and costs nothing (scenario validation should not route one here; this
//! keeps a misrouted hop from stalling its workflow). Such hops are counted in
//! [`GpuPoolReport::service_noops`].

use super::replica::{
    Place, Replica, ReplicaConfig, ReplicaReport, fair_delta, fair_weight, refused_done,
};
use super::{LlmRequest, LlmTimings, PerfModel};
use crate::policy::{DisciplineSpec, JobMeta};
use crate::station::{
    HopDone, HopJob, JobId, LoadNow, Refused, Station, StationOutput, StationReport, TimeIntegral,
    Work,
};
use crate::time::{SimDuration, SimTime};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

const GEN_BITS: u32 = 40;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;

/// A replica as a picker sees it at dispatch time (state as of now).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaView {
    /// Prompt and output tokens still to process over its queued and running requests.
    pub outstanding_tokens: u64,
    /// Of those, the tokens the request being placed would not overtake: every running
    /// request's and, in a ranked queue (`priority`, `earliest_deadline`), those of the
    /// waiting requests ranked no worse than it. Filled in only for a picker whose
    /// [`ReplicaPicker::sees_rank`] is true; otherwise (and in FIFO or fair queues)
    /// equal to `outstanding_tokens`.
    pub outstanding_tokens_ahead: u64,
    pub running: u32,
    pub waiting: u32,
    pub kv_used_blocks: u64,
    pub kv_capacity_blocks: u32,
}

impl ReplicaView {
    /// Replica `r` as of its applied effects (advance it to now first).
    fn of(r: &Replica) -> Self {
        ReplicaView {
            outstanding_tokens: r.outstanding_tokens(),
            outstanding_tokens_ahead: r.outstanding_tokens(),
            running: r.running_len(),
            waiting: r.waiting_len(),
            kv_used_blocks: r.kv_used_blocks(),
            kv_capacity_blocks: r.config().kv_capacity_blocks,
        }
    }
}

/// Chooses the replica of a pool that serves an arriving LLM hop.
pub trait ReplicaPicker: Send + std::fmt::Debug {
    /// Index into `replicas` (never empty); out-of-range answers are clamped.
    fn pick(&mut self, replicas: &[ReplicaView], req: &LlmRequest) -> usize;
    fn name(&self) -> &str;
    /// Whether the picker reads [`ReplicaView::outstanding_tokens_ahead`] (its
    /// computation walks the waiting queues, so it is done only for pickers that ask).
    fn sees_rank(&self) -> bool {
        false
    }
}

/// Replicas in turn.
#[derive(Clone, Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl ReplicaPicker for RoundRobin {
    fn pick(&mut self, replicas: &[ReplicaView], _req: &LlmRequest) -> usize {
        let i = self.next % replicas.len().max(1);
        self.next = i + 1;
        i
    }
    fn name(&self) -> &str {
        "round-robin"
    }
}

/// The replica with the fewest outstanding tokens; ties go to the lowest index.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeastOutstandingTokens;

impl ReplicaPicker for LeastOutstandingTokens {
    fn pick(&mut self, replicas: &[ReplicaView], _req: &LlmRequest) -> usize {
        let mut best = 0;
        for (i, r) in replicas.iter().enumerate() {
            if r.outstanding_tokens < replicas[best].outstanding_tokens {
                best = i;
            }
        }
        best
    }
    fn name(&self) -> &str {
        "least-outstanding-tokens"
    }
}

/// The replica with the fewest requests on it (running + waiting); ties go to the
/// lowest index. Counts requests, not their size (see [`LeastOutstandingTokens`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct LeastOutstandingRequests;

impl ReplicaPicker for LeastOutstandingRequests {
    fn pick(&mut self, replicas: &[ReplicaView], _req: &LlmRequest) -> usize {
        let load = |r: &ReplicaView| r.running as u64 + r.waiting as u64;
        let mut best = 0;
        for (i, r) in replicas.iter().enumerate() {
            if load(r) < load(&replicas[best]) {
                best = i;
            }
        }
        best
    }
    fn name(&self) -> &str {
        "least-outstanding-requests"
    }
}

/// A replica drawn uniformly among those up, from the pool's own stream: the
/// simulator seeds it with `pool/<name>/picker` from the scenario seed, so the draws
/// are the same for the same seed and no other component's draws move.
#[derive(Clone, Debug)]
pub struct RandomPicker {
    rng: crate::rng::SimRng,
}

impl RandomPicker {
    pub fn new(rng: crate::rng::SimRng) -> Self {
        RandomPicker { rng }
    }
}

impl ReplicaPicker for RandomPicker {
    fn pick(&mut self, replicas: &[ReplicaView], _req: &LlmRequest) -> usize {
        use rand::RngExt;
        self.rng.random_range(0..replicas.len().max(1))
    }
    fn name(&self) -> &str {
        "random"
    }
}

/// GPU figures of a pool over the measurement window.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GpuPoolReport {
    pub name: String,
    pub perf_model: String,
    pub picker: String,
    /// Where requests waited for a sequence slot; absent for the default (`replica`).
    #[serde(skip_serializing_if = "is_replica_queue")]
    pub queue_at: QueueAt,
    pub window: SimDuration,
    pub replicas: u32,
    /// Averages and totals over the replicas.
    pub busy_fraction: f64,
    pub kv_occupancy_mean: f64,
    pub kv_occupancy_max: f64,
    pub batch_size_mean: f64,
    pub iterations: u64,
    pub preemptions: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub prefix_hit_rate: f64,
    pub tokens_in_flight_mean: f64,
    pub finished: u64,
    /// Requests refused at once without service, as failed hops: too large for a
    /// replica's KV cache (or its token budget without chunked prefill), over the
    /// model's context limit, or sent to a pool with no replica.
    pub rejected: u64,
    /// `Work::Service` hops sent here, finished at once as no-ops.
    pub service_noops: u64,
    /// Autoscaled or spot pools: replica-hours paid and up, boots, retirements, spot
    /// preemptions and their victims (absent for a fixed on-demand pool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityReport>,
    pub per_replica: Vec<ReplicaReport>,
}

fn is_replica_queue(q: &QueueAt) -> bool {
    *q == QueueAt::Replica
}

/// Where a replica is in its life (autoscaling and spot capacity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// Takes new requests.
    Up,
    /// Retired by the autoscaler: serves what it has, takes nothing new, and is paid
    /// for until its last request finishes.
    Draining,
    /// Given a spot preemption notice: like `Draining`, and lost with what it still
    /// has when the notice runs out.
    Noticed,
    /// Gone (drained, or lost to a spot preemption); kept for its figures.
    Gone,
}

/// Spot capacity of a GPU pool (see `crate::scenario::SpotSpec`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpotConfig {
    /// Replicas on spot at the start (the first ones).
    pub replicas: u32,
    pub usd_per_replica_hour: f64,
    /// What happens to the requests running on a lost replica: recomputed on another
    /// replica of the pool (true) or reported lost (the workflow fails).
    pub recompute: bool,
    /// At a preemption notice, the requests only waiting on the replica move to
    /// another one at once (true), or stay to be served if the notice allows (false).
    pub move_waiting_on_notice: bool,
    /// Preemption events can take several replicas (`reclaim_size` above 1, or
    /// drawn): the capacity report counts the events (`spot_reclaims`).
    pub counts_reclaims: bool,
}

/// Reserved (committed) capacity of a GPU pool: `slots` replica-hours per hour are
/// paid at `usd_per_replica_hour` for the whole run, used or not, and cover that many
/// of the pool's on-demand replicas (booting or up) at any time, whichever they are
/// (a reservation floats, as cloud reserved instances and savings plans do).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReservedConfig {
    pub slots: u32,
    pub usd_per_replica_hour: f64,
}

/// Where a GPU pool's requests wait for a sequence slot (`queue_at` in a scenario).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueAt {
    /// The picker sends each request to a replica on arrival; it waits there, in that
    /// replica's queue (what a load balancer in front of vLLM servers does).
    #[default]
    Replica,
    /// Requests wait in one pool-wide queue, in the discipline's order, and the head
    /// goes to a replica once one has room for it (late binding: a gateway that holds
    /// requests until a server can take them).
    Pool,
}

impl QueueAt {
    pub fn name(self) -> &'static str {
        match self {
            QueueAt::Replica => "replica",
            QueueAt::Pool => "pool",
        }
    }
}

/// A request in the pool's own queue: waiting for a replica to come up, or under
/// [`QueueAt::Pool`] for one with room.
#[derive(Clone, Debug)]
struct Parked {
    id: JobId,
    submitted: SimTime,
    /// Its place in a replica's queue.
    place: Place,
    /// Its place in the pool's queue: smaller first, arrival order among equals.
    key: u128,
    req: LlmRequest,
}

/// Start-time fair queuing over the pool's queue (`weighted_fair` with
/// [`QueueAt::Pool`]): a request is tagged when it enters the pool with
/// max(virtual time, its lane's last finish tag), the lane's finish tag moves on by
/// its prompt + output tokens over the lane's weight, and the virtual time is the tag
/// of the latest request sent to a replica.
#[derive(Debug, Default)]
struct PoolFair {
    virtual_time: u128,
    last_finish: BTreeMap<u32, u128>,
}

/// A request kept while it is in a spot pool, so that it can be sent again.
#[derive(Clone, Debug)]
struct Kept {
    req: LlmRequest,
    submitted: SimTime,
    /// Server time and dollars of work lost to preemptions, charged when it finishes.
    lost_busy: SimDuration,
    lost_usd: f64,
    recomputes: u32,
    /// Its first token was reported (a recomputation elsewhere does not report again).
    first_token_reported: bool,
    /// Its place in a replica's queue (see [`GpuPoolStation::place`]).
    place: Place,
    /// Its place in the pool's queue.
    key: u128,
}

/// Capacity figures of a pool whose size changes (autoscaling, spot), over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct CapacityReport {
    /// Replica-hours paid: from each boot start to its drain end (or preemption).
    pub replica_hours: f64,
    /// Replica-hours up (booted, including draining).
    pub running_replica_hours: f64,
    /// Of `replica_hours`, on spot.
    pub spot_replica_hours: f64,
    /// Spot replica-hours up: the exposure to preemption.
    pub spot_running_replica_hours: f64,
    /// Boots started, retirements decided, spot preemptions.
    pub boots: u64,
    pub retirements: u64,
    pub spot_preemptions: u64,
    /// Preemption events (each took `reclaim_size` replicas, or all those exposed if
    /// fewer); only with `reclaim_size` above 1 (else it equals `spot_preemptions`),
    /// so summaries of pools without it keep their shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spot_reclaims: Option<u64>,
    /// Requests running on a preempted replica: sent again to the pool (recomputed) or
    /// lost (their workflow fails).
    pub victims_recomputed: u64,
    pub victims_failed: u64,
    /// Requests waiting on a preempted replica, moved to another replica (when it was
    /// lost, or at its notice with `move_waiting_on_notice`).
    pub moved_waiting: u64,
    /// Of `spot_preemptions` with a notice: replicas that finished their work within
    /// the notice and left with nothing lost.
    pub drained_in_notice: u64,
    /// Reserved capacity (only on pools with `reserved`, so other summaries keep their
    /// shape): the slots, the slot-hours replicas used (booting or up, part of
    /// `replica_hours`), and the slot-hours paid for and not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_replicas: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_used_hours: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_unused_hours: Option<f64>,
}

pub struct GpuPoolStation {
    name: String,
    perf_name: String,
    replicas: Vec<Replica>,
    picker: Box<dyn ReplicaPicker>,
    usd_per_replica_hour: f64,
    views: Vec<ReplicaView>,
    window_start: SimTime,
    service_noops: u64,
    /// Requests refused because the pool has no replica.
    unserved: u64,
    /// Prompt + output tokens a request may have (the model's context limit).
    context_limit: Option<u32>,
    /// Requests refused for exceeding it.
    over_context: u64,
    /// Requests no replica could ever serve, refused by the pool's queue.
    refused_at_pool: u64,
    // --- autoscaling and spot ---
    cfg: ReplicaConfig,
    perf: Arc<dyn PerfModel>,
    life: Vec<Life>,
    on_spot: Vec<bool>,
    /// Index of the replica behind each entry of `views`.
    view_index: Vec<usize>,
    /// The prefix-block ids of the pool queue's head, as `pump` judges room for it.
    head_prefix: Vec<u64>,
    booting: u32,
    booting_spot: u32,
    spot: Option<SpotConfig>,
    /// True once the pool's size or price mix can change: capacity is integrated.
    resized: bool,
    up_or_draining: TimeIntegral,
    paid_on_demand: TimeIntegral,
    paid_spot: TimeIntegral,
    spot_up: TimeIntegral,
    /// Reserved capacity ([`GpuPoolStation::with_reserved`]): slots and their price.
    reserved: Option<ReservedConfig>,
    /// Per replica: it holds a reserved slot (charged at the reserved price).
    holds_reservation: Vec<bool>,
    /// Of `booting`, replicas whose boot a reserved slot covers.
    booting_reserved: u32,
    /// Reserved slots in use (held by on-demand replicas booting or live) over time.
    paid_reserved: TimeIntegral,
    /// The pool's queue: requests that found no replica up (all lost to preemption),
    /// and under [`QueueAt::Pool`] every request no replica has room for yet; sorted
    /// by key (arrival order within a key).
    parked: VecDeque<Parked>,
    /// Length of `parked` over time (queue length and requests in the pool).
    parked_level: TimeIntegral,
    queue_at: QueueAt,
    /// Fair tags of the pool's queue (`weighted_fair` under [`QueueAt::Pool`]).
    pool_fair: Option<PoolFair>,
    /// Order of the waiting queues.
    discipline: DisciplineSpec,
    /// Priority preemption on every replica (ranked disciplines only).
    preempt_for_priority: bool,
    /// Requests in the pool, for pools with spot replicas.
    kept: BTreeMap<JobId, Kept>,
    counts: CapacityReport,
    /// Spot preemption events over the window (`CapacityReport::spot_reclaims`).
    reclaims: u64,
    /// Replicas report first tokens as they come ([`GpuPoolStation::with_first_tokens`]).
    first_tokens: bool,
    /// An autoscaler may boot replicas: a pool with none yet parks its requests
    /// instead of refusing them ([`GpuPoolStation::with_autoscaler`]).
    autoscaled: bool,
}

impl std::fmt::Debug for GpuPoolStation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuPoolStation")
            .field("name", &self.name)
            .field("replicas", &self.replicas)
            .field("picker", &self.picker)
            .finish()
    }
}

impl GpuPoolStation {
    /// `replicas` identical replicas; dispatch by least outstanding tokens.
    pub fn new(
        name: impl Into<String>,
        replicas: u32,
        cfg: ReplicaConfig,
        perf: Arc<dyn PerfModel>,
        usd_per_replica_hour: f64,
    ) -> Result<Self, String> {
        let name = name.into();
        let cfg = cfg.validated().map_err(|e| format!("pool `{name}`: {e}"))?;
        if replicas >= 1 << (64 - GEN_BITS) {
            return Err(format!(
                "pool `{name}`: {replicas} replicas is more than supported"
            ));
        }
        let n = replicas;
        let replicas = (0..replicas)
            .map(|_| Replica::new(cfg.clone(), perf.clone(), usd_per_replica_hour))
            .collect::<Result<Vec<_>, _>>()?;
        let mut up_or_draining = TimeIntegral::default();
        up_or_draining.set(SimTime::ZERO, n as u64);
        let mut paid_on_demand = TimeIntegral::default();
        paid_on_demand.set(SimTime::ZERO, n as u64);
        Ok(GpuPoolStation {
            name,
            perf_name: perf.name().to_string(),
            views: Vec::with_capacity(replicas.len()),
            life: vec![Life::Up; replicas.len()],
            on_spot: vec![false; replicas.len()],
            view_index: Vec::with_capacity(replicas.len()),
            head_prefix: Vec::new(),
            replicas,
            picker: Box::new(LeastOutstandingTokens),
            usd_per_replica_hour,
            window_start: SimTime::ZERO,
            service_noops: 0,
            unserved: 0,
            context_limit: None,
            over_context: 0,
            refused_at_pool: 0,
            cfg,
            perf,
            booting: 0,
            booting_spot: 0,
            spot: None,
            resized: false,
            up_or_draining,
            paid_on_demand,
            paid_spot: TimeIntegral::default(),
            spot_up: TimeIntegral::default(),
            reserved: None,
            holds_reservation: vec![false; n as usize],
            booting_reserved: 0,
            paid_reserved: TimeIntegral::default(),
            parked: VecDeque::new(),
            parked_level: TimeIntegral::default(),
            queue_at: QueueAt::Replica,
            pool_fair: None,
            discipline: DisciplineSpec::Fifo,
            preempt_for_priority: false,
            kept: BTreeMap::new(),
            counts: CapacityReport::default(),
            reclaims: 0,
            first_tokens: false,
            autoscaled: false,
        })
    }

    /// Reserved capacity: up to `slots` on-demand replicas at a time are charged at
    /// the reserved price, and every slot is paid for the whole window, used or not.
    /// Call after [`GpuPoolStation::with_spot`] (spot replicas never hold a slot).
    pub fn with_reserved(mut self, reserved: ReservedConfig) -> Self {
        self.reserved = Some(reserved);
        self.resized = true;
        self.update_levels(SimTime::ZERO);
        self
    }

    /// Puts the first `spot.replicas` replicas on spot: charged at the spot price and
    /// exposed to [`Station::preempt`].
    pub fn with_spot(mut self, spot: SpotConfig) -> Result<Self, String> {
        let k = (spot.replicas as usize).min(self.replicas.len());
        for i in 0..k {
            self.replicas[i] = Replica::new(
                self.cfg.clone(),
                self.perf.clone(),
                spot.usd_per_replica_hour,
            )?;
            self.order(i);
            self.on_spot[i] = true;
        }
        self.spot = Some(spot);
        self.resized = true;
        self.update_levels(SimTime::ZERO);
        Ok(self)
    }

    /// Orders the pool's waiting queues by `discipline`: `Priority` serves the highest
    /// lane priority first, `EarliestDeadline` the earliest workflow deadline (hops
    /// without an SLO last), each in arrival order within a priority or deadline;
    /// `WeightedFair` shares each replica between lanes by their weights (start-time
    /// fair queuing, see [`crate::gpu::replica`]). Under `Priority` and
    /// `EarliestDeadline` a KV shortage preempts the worst-ranked running request; a
    /// better-placed arrival preempts one only with
    /// [`GpuPoolStation::with_priority_preemption`].
    pub fn with_discipline(mut self, discipline: DisciplineSpec) -> Result<Self, String> {
        self.discipline = discipline;
        self.pool_fair = self.pool_is_fair().then(PoolFair::default);
        for i in 0..self.replicas.len() {
            self.order(i);
        }
        Ok(self)
    }

    /// Under `Priority` or `EarliestDeadline`, lets the head of a replica's waiting
    /// queue preempt worse-ranked running requests by recompute when it cannot be
    /// admitted for want of a sequence slot or KV blocks (vLLM V0's priority
    /// preemption; see [`crate::gpu::replica`]). Refused under `Fifo` and
    /// `WeightedFair`, where nothing ranks the running requests.
    pub fn with_priority_preemption(mut self, on: bool) -> Result<Self, String> {
        if on
            && !matches!(
                self.discipline,
                DisciplineSpec::Priority | DisciplineSpec::EarliestDeadline
            )
        {
            return Err(format!(
                "pool `{}`: priority preemption needs discipline \"priority\" or \"earliest_deadline\"",
                self.name
            ));
        }
        self.preempt_for_priority = on;
        for i in 0..self.replicas.len() {
            self.order(i);
        }
        Ok(self)
    }

    /// Where requests wait for a sequence slot: on the replica the picker sends them
    /// to on arrival (the default), or in one pool-wide queue in the discipline's
    /// order, the head sent to a replica once one has room
    /// ([`Replica::has_room_for`]); under `weighted_fair` the pool tags requests
    /// itself ([`PoolFair`]) and the replicas admit in the order they get them. With
    /// priority preemption, a head no replica has room for goes to the replica running
    /// the worst-ranked sequence below it (one with nothing waiting), which preempts
    /// it: priority holds across the pool, not only within each replica.
    pub fn with_queue_at(mut self, queue_at: QueueAt) -> Self {
        self.queue_at = queue_at;
        self.pool_fair = self.pool_is_fair().then(PoolFair::default);
        for i in 0..self.replicas.len() {
            self.order(i);
        }
        self
    }

    /// The pool's queue is fair-queued (`weighted_fair` with [`QueueAt::Pool`]).
    fn pool_is_fair(&self) -> bool {
        self.queue_at == QueueAt::Pool && self.discipline == DisciplineSpec::WeightedFair
    }

    /// Sets replica `i`'s queue order from the discipline.
    fn order(&mut self, i: usize) {
        let Some(r) = self.replicas.get_mut(i) else {
            return;
        };
        match self.discipline {
            DisciplineSpec::Fifo => r.set_ranked(false),
            DisciplineSpec::Priority | DisciplineSpec::EarliestDeadline => r.set_ranked(true),
            // The pool's queue is fair: replicas take its requests in the order sent.
            DisciplineSpec::WeightedFair if self.queue_at == QueueAt::Pool => r.set_ranked(false),
            DisciplineSpec::WeightedFair => r.set_weighted_fair(),
        }
        r.set_priority_preemption(self.preempt_for_priority);
    }

    /// A request's place in a replica's queue: a rank (smaller first), or under
    /// `WeightedFair` its lane and weight (each replica tags its own requests: the
    /// virtual time is the replica's; with the pool's queue, the pool's).
    fn place(&self, meta: &JobMeta) -> Place {
        match self.discipline {
            DisciplineSpec::Priority => {
                Place::Rank((i32::MAX as i64 - meta.priority as i64) as u64)
            }
            DisciplineSpec::EarliestDeadline => Place::Rank(meta.deadline.as_nanos()),
            DisciplineSpec::Fifo => Place::Rank(0),
            DisciplineSpec::WeightedFair if self.queue_at == QueueAt::Pool => Place::Rank(0),
            DisciplineSpec::WeightedFair => Place::Fair {
                lane: meta.lane,
                weight: fair_weight(meta.weight),
            },
        }
    }

    /// A request's key in the pool's queue: its rank under `priority` and
    /// `earliest_deadline`, its start tag under `weighted_fair` with the pool's queue,
    /// else 0 (arrival order).
    fn queue_key(&mut self, meta: &JobMeta, req: &LlmRequest, place: Place) -> u128 {
        if let Some(f) = self.pool_fair.as_mut() {
            let finish = f.last_finish.entry(meta.lane).or_default();
            let start = f.virtual_time.max(*finish);
            let tokens = req.input_tokens.max(1) as u64 + req.output_tokens.max(1) as u64;
            *finish = start + fair_delta(tokens, fair_weight(meta.weight));
            return start;
        }
        match place {
            Place::Rank(rank) => rank as u128,
            Place::Fair { .. } => 0,
        }
    }

    /// Queues a request in the pool, behind those of its key or smaller.
    fn park(&mut self, now: SimTime, p: Parked) {
        let pos = self.parked.partition_point(|q| q.key <= p.key);
        self.parked.insert(pos, p);
        self.parked_level.set(now, self.parked.len() as u64);
    }

    /// Under [`QueueAt::Pool`], sends the head of the pool's queue to a replica while
    /// one has room for it (picked among those by the picker), or, with priority
    /// preemption, to the replica whose worst-ranked running sequence it outranks most
    /// (ties to the lowest index); stops at the first head that has neither (no
    /// overtaking, as in a replica's own queue).
    ///
    /// Every entry point that looks at or changes the pool at `now` pumps first, with
    /// the queue as it was (and those that change it pump again after): what a
    /// replica's effects at `now` free is handed out the same way whether its wake-up
    /// runs before or after a submission, an abort, a report or the window start at
    /// the same instant (as a replica plans an iteration starting at `now` before
    /// taking a request submitted then). Entry points without an output (reports,
    /// retirement, a spot notice) can pump safely: room appears only through a
    /// replica's effects at `now`, whose wake-up at `now` is then still to come and
    /// hands over what the pump started (stale or not, a wake-up pumps and drains).
    fn pump(&mut self, now: SimTime) -> bool {
        if self.queue_at != QueueAt::Pool {
            return false;
        }
        let before = self.parked.len();
        while let Some(head) = self.parked.front() {
            self.views.clear();
            self.view_index.clear();
            let mut victim: Option<(usize, u128)> = None;
            let rank = match head.place {
                Place::Rank(r) => r,
                Place::Fair { .. } => 0,
            };
            // The replicas are alike: the head's prefix blocks are the same on each.
            if self.cfg.prefix_caching {
                crate::gpu::kv::prefix_block_ids(
                    &head.req,
                    head.req.input_tokens.max(1),
                    self.cfg.block_size,
                    &mut self.head_prefix,
                );
            } else {
                self.head_prefix.clear();
            }
            for (i, r) in self.replicas.iter_mut().enumerate() {
                if self.life[i] != Life::Up {
                    continue;
                }
                r.advance(now);
                if r.has_room_for(head.req.input_tokens, &self.head_prefix) {
                    self.views.push(ReplicaView::of(r));
                    self.view_index.push(i);
                } else if let Some(worst) = r.preemptible_rank_below(rank)
                    && victim.is_none_or(|(_, w)| worst > w)
                {
                    victim = Some((i, worst));
                }
            }
            let target = if self.views.is_empty() {
                victim.map(|(i, _)| i)
            } else {
                let v = self
                    .picker
                    .pick(&self.views, &head.req)
                    .min(self.views.len() - 1);
                Some(self.view_index[v])
            };
            let Some(i) = target else { break };
            let Some(p) = self.parked.pop_front() else {
                break;
            };
            if let Some(f) = self.pool_fair.as_mut() {
                f.virtual_time = f.virtual_time.max(p.key);
            }
            self.replicas[i].submit_placed(now, p.submitted, p.id, &p.req, p.place);
        }
        self.parked_level.set(now, self.parked.len() as u64);
        self.parked.len() != before
    }

    /// Capacity figures over the window (autoscaled or spot pools), up to `now`.
    pub fn capacity_report(&mut self, now: SimTime) -> Option<CapacityReport> {
        if !self.resized {
            return None;
        }
        Some(CapacityReport {
            replica_hours: (self.paid_on_demand.area_s(now) + self.paid_spot.area_s(now)) / 3600.0,
            running_replica_hours: self.up_or_draining.area_s(now) / 3600.0,
            spot_replica_hours: self.paid_spot.area_s(now) / 3600.0,
            spot_running_replica_hours: self.spot_up.area_s(now) / 3600.0,
            spot_reclaims: self
                .spot
                .filter(|s| s.counts_reclaims)
                .map(|_| self.reclaims),
            reserved_replicas: self.reserved.map(|r| r.slots),
            reserved_used_hours: self
                .reserved
                .map(|_| self.paid_reserved.area_s(now) / 3600.0),
            reserved_unused_hours: self.reserved.map(|r| {
                (r.slots as f64 * (now - self.window_start).as_secs_f64()
                    - self.paid_reserved.area_s(now))
                    / 3600.0
            }),
            ..self.counts
        })
    }

    fn count(&self, f: impl Fn(usize) -> bool) -> u32 {
        (0..self.replicas.len()).filter(|&i| f(i)).count() as u32
    }

    /// Replicas taking new requests.
    fn up(&self) -> u32 {
        self.count(|i| self.life[i] == Life::Up)
    }

    fn update_levels(&mut self, now: SimTime) {
        if !self.resized {
            return;
        }
        let live = |i: usize| self.life[i] != Life::Gone;
        let running = self.count(live) as u64;
        let spot_running = self.count(|i| live(i) && self.on_spot[i]) as u64;
        self.up_or_draining.set(now, running);
        self.spot_up.set(now, spot_running);
        self.paid_spot
            .set(now, spot_running + self.booting_spot as u64);
        self.paid_on_demand
            .set(now, running - spot_running + self.booting as u64);
        if let Some(res) = self.reserved {
            self.reconcile_reservations(now, res);
        }
    }

    /// Keeps min(slots, on-demand replicas booting or live) slots held: a replica gone
    /// gives its slot up, and a free slot goes to the oldest live on-demand replica
    /// without one (its price drops to the reserved price), else to a booting one.
    fn reconcile_reservations(&mut self, now: SimTime, res: ReservedConfig) {
        let mut held = self.booting_reserved;
        for i in 0..self.replicas.len() {
            if self.holds_reservation[i] && self.life[i] == Life::Gone {
                self.holds_reservation[i] = false;
            }
            held += u32::from(self.holds_reservation[i]);
        }
        let mut i = 0;
        while held < res.slots && i < self.replicas.len() {
            if self.life[i] != Life::Gone && !self.on_spot[i] && !self.holds_reservation[i] {
                self.holds_reservation[i] = true;
                self.replicas[i].set_usd_per_hour(res.usd_per_replica_hour);
                held += 1;
            }
            i += 1;
        }
        if held < res.slots && self.booting_reserved < self.booting {
            let more = (res.slots - held).min(self.booting - self.booting_reserved);
            self.booting_reserved += more;
            held += more;
        }
        self.paid_reserved.set(now, held as u64);
    }

    /// Sends a request to a replica chosen by the picker among those up, or parks it
    /// when none is.
    fn dispatch(
        &mut self,
        now: SimTime,
        submitted: SimTime,
        id: JobId,
        req: &LlmRequest,
        place: Place,
        key: u128,
    ) {
        if self.queue_at == QueueAt::Replica {
            self.views.clear();
            self.view_index.clear();
            let sees_rank = self.picker.sees_rank();
            for (i, r) in self.replicas.iter_mut().enumerate() {
                if self.life[i] != Life::Up {
                    continue;
                }
                r.advance(now);
                let mut view = ReplicaView::of(r);
                if sees_rank {
                    view.outstanding_tokens_ahead = r.outstanding_tokens_ahead(place);
                }
                self.views.push(view);
                self.view_index.push(i);
            }
            if !self.views.is_empty() {
                let v = self.picker.pick(&self.views, req).min(self.views.len() - 1);
                let i = self.view_index[v];
                self.replicas[i].submit_placed(now, submitted, id, req, place);
                return;
            }
        }
        // Into the pool's queue: `pump` sends it on once a replica has room (or, with
        // the replicas' queues, once one is up).
        let req = req.clone();
        self.park(
            now,
            Parked {
                id,
                submitted,
                place,
                key,
                req,
            },
        );
    }

    /// A booted replica joins the pool and takes the requests parked for want of one.
    fn add_replica(&mut self, now: SimTime, spot: bool, out: &mut StationOutput) {
        self.pump(now);
        // A boot a reserved slot covered joins at the reserved price, holding it.
        let reserved = !spot && self.booting_reserved > 0;
        if reserved {
            self.booting_reserved -= 1;
        }
        let price = match (spot, self.spot, self.reserved) {
            (true, Some(s), _) => s.usd_per_replica_hour,
            (false, _, Some(r)) if reserved => r.usd_per_replica_hour,
            _ => self.usd_per_replica_hour,
        };
        // The configuration was validated when the pool was built.
        let Ok(mut r) = Replica::new(self.cfg.clone(), self.perf.clone(), price) else {
            return;
        };
        if self.replicas.len() as u64 >= 1 << (64 - GEN_BITS) {
            return;
        }
        r.begin_measurement(self.window_start.min(now));
        if self.first_tokens {
            r.report_first_tokens();
        }
        self.replicas.push(r);
        self.order(self.replicas.len() - 1);
        self.life.push(Life::Up);
        self.on_spot.push(spot);
        self.holds_reservation.push(reserved);
        self.update_levels(now);
        if self.queue_at == QueueAt::Replica {
            while let Some(p) = self.parked.pop_front() {
                self.dispatch(now, p.submitted, p.id, &p.req, p.place, p.key);
            }
            self.parked_level.set(now, self.parked.len() as u64);
        }
        self.pump(now);
        self.drain(out);
    }

    /// Draining replicas that have finished their last request are gone.
    fn retire_drained(&mut self, now: SimTime) {
        let mut changed = false;
        for (i, r) in self.replicas.iter().enumerate() {
            if matches!(self.life[i], Life::Draining | Life::Noticed)
                && r.running_len() + r.waiting_len() == 0
            {
                if self.life[i] == Life::Noticed {
                    self.counts.drained_in_notice += 1;
                }
                self.life[i] = Life::Gone;
                changed = true;
            }
        }
        if changed {
            self.update_levels(now);
        }
    }

    /// Adds a finished request's lost work (spot preemptions) to what it reports.
    fn settle(&mut self, d: &mut HopDone) {
        if let Some(k) = self.kept.remove(&d.id) {
            d.busy = SimDuration(d.busy.as_nanos() + k.lost_busy.as_nanos());
            d.usd += k.lost_usd;
            if let Some(l) = d.llm.as_mut() {
                l.preemptions += k.recomputes;
            }
        }
    }

    /// Refuses requests whose prompt + output tokens exceed `limit` (the model
    /// profile's `context_limit`): they come back at once as failed hops
    /// ([`Refused::ContextLimit`]). No limit by default.
    pub fn with_context_limit(mut self, limit: u32) -> Self {
        self.context_limit = Some(limit);
        self
    }

    /// Reports each request's first token when it is produced
    /// ([`StationOutput::first_tokens`]), for the `p99_ttft` autoscaling signal.
    /// An autoscaler sizes the pool: with no replica yet (a cold start, `servers = 0`)
    /// requests wait in the pool's queue for one to boot instead of being refused.
    pub fn with_autoscaler(mut self) -> Self {
        self.autoscaled = true;
        self
    }

    pub fn with_first_tokens(mut self) -> Self {
        self.first_tokens = true;
        for r in &mut self.replicas {
            r.report_first_tokens();
        }
        self
    }

    pub fn with_picker(mut self, picker: Box<dyn ReplicaPicker>) -> Self {
        self.picker = picker;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// Hands over what the replicas asked for (also what they decided inside
    /// `report`/`begin_measurement`, which have no output: those plans start at a time
    /// whose own wake-up is still pending, so the hand-over happens in time).
    fn drain(&mut self, out: &mut StationOutput) {
        let from = out.done.len();
        let first_from = out.first_tokens.len();
        for (i, r) in self.replicas.iter_mut().enumerate() {
            if let Some((t, generation)) = r.take_wake() {
                out.wakeups
                    .push((t, ((i as u64) << GEN_BITS) | (generation & GEN_MASK)));
            }
            r.drain_done(&mut out.done);
            r.drain_gaps(&mut out.gaps);
            r.drain_first_tokens(&mut out.first_tokens);
        }
        if self.first_tokens && !self.kept.is_empty() {
            // A request recomputed on another replica after a spot loss produces its
            // first token again there: only the first one counts.
            let mut k = first_from;
            while k < out.first_tokens.len() {
                match self.kept.get_mut(&out.first_tokens[k].id) {
                    Some(kept) if kept.first_token_reported => {
                        out.first_tokens.remove(k);
                    }
                    Some(kept) => {
                        kept.first_token_reported = true;
                        k += 1;
                    }
                    None => k += 1,
                }
            }
        }
        if !self.kept.is_empty() {
            for k in from..out.done.len() {
                let mut d = out.done[k];
                self.settle(&mut d);
                out.done[k] = d;
            }
        }
    }

    /// Whether replica `i` is a spot replica that a preemption may still pick.
    fn exposed_spot(&self, i: usize) -> bool {
        self.on_spot[i] && matches!(self.life[i], Life::Up | Life::Draining)
    }

    /// The exposed spot replicas a reclaim takes: `ks[j]` is the `ks[j]`-th of those
    /// exposed once the earlier picks are removed (an index past them picks none).
    fn spot_victims(&self, ks: &[u32]) -> Vec<usize> {
        let mut exposed: Vec<usize> = (0..self.replicas.len())
            .filter(|&i| self.exposed_spot(i))
            .collect();
        let mut victims = Vec::with_capacity(ks.len());
        for &k in ks {
            if (k as usize) < exposed.len() {
                victims.push(exposed.remove(k as usize));
            }
        }
        victims
    }

    /// Replica `i` is lost at `now` with the requests on it (see
    /// [`GpuPoolStation::lose_replicas`]).
    fn lose_replica(&mut self, now: SimTime, i: usize, out: &mut StationOutput) -> bool {
        self.lose_replicas(now, &[i], out);
        true
    }

    /// Replicas `lost` are lost together at `now` with the requests on them: running
    /// ones are sent again (recompute) or reported lost (fail), waiting ones move to
    /// another replica. All are gone before any request is re-sent, so none lands on
    /// another replica of the same reclaim (to be lost, and counted, twice).
    fn lose_replicas(&mut self, now: SimTime, lost: &[usize], out: &mut StationOutput) {
        self.pump(now);
        for &i in lost {
            self.life[i] = Life::Gone;
        }
        let mut evicted = Vec::new();
        for &i in lost {
            evicted.extend(self.replicas[i].evict_all(now));
        }
        self.update_levels(now);
        let Some(spot) = self.spot else {
            return;
        };
        for e in evicted {
            let Some(kept) = self.kept.get_mut(&e.id) else {
                continue;
            };
            kept.lost_busy = SimDuration(kept.lost_busy.as_nanos() + e.busy.as_nanos());
            kept.lost_usd += e.usd;
            if e.running && !spot.recompute {
                self.counts.victims_failed += 1;
                let k = self.kept.remove(&e.id);
                let (busy, usd) = k.map_or((SimDuration::ZERO, 0.0), |k| (k.lost_busy, k.lost_usd));
                out.lost.push(HopDone {
                    id: e.id,
                    submitted: e.submitted,
                    started: e.submitted,
                    finished: now,
                    busy,
                    usd,
                    llm: None,
                    refused: None,
                });
                continue;
            }
            if e.running {
                self.counts.victims_recomputed += 1;
                kept.recomputes += 1 + e.preemptions;
            } else {
                self.counts.moved_waiting += 1;
                kept.recomputes += e.preemptions;
            }
            let (req, submitted, place, key) =
                (kept.req.clone(), kept.submitted, kept.place, kept.key);
            self.dispatch(now, submitted, e.id, &req, place, key);
        }
        self.pump(now);
        self.drain(out);
    }

    fn finish_now(now: SimTime, id: crate::station::JobId, llm: Option<LlmTimings>) -> HopDone {
        HopDone {
            id,
            submitted: now,
            started: now,
            finished: now,
            busy: SimDuration::ZERO,
            usd: 0.0,
            llm,
            refused: None,
        }
    }
}

impl Station for GpuPoolStation {
    fn submit(&mut self, now: SimTime, job: HopJob, out: &mut StationOutput) {
        self.submit_meta(now, job, &JobMeta::default(), out);
    }

    fn submit_meta(&mut self, now: SimTime, job: HopJob, meta: &JobMeta, out: &mut StationOutput) {
        self.pump(now);
        let place = self.place(meta);
        match job.work {
            Work::Service(_) | Work::Api(_) => {
                self.service_noops += 1;
                out.done.push(Self::finish_now(now, job.id, None));
            }
            Work::Llm(req) => {
                if self.replicas.is_empty() && !self.autoscaled {
                    self.unserved += 1;
                    out.done
                        .push(refused_done(job.id, now, now, Refused::NoReplica));
                    return;
                }
                if let Some(limit) = self.context_limit
                    && req.input_tokens.max(1) as u64 + req.output_tokens.max(1) as u64
                        > limit as u64
                {
                    // vLLM refuses a prompt whose prompt + max tokens exceed the
                    // model's length; so does the pool, before any replica sees it.
                    self.over_context += 1;
                    out.done.push(refused_done(
                        job.id,
                        now,
                        now,
                        Refused::ContextLimit { limit },
                    ));
                    return;
                }
                if self.queue_at == QueueAt::Pool
                    && let Some(refused) = self.cfg.refusal(&req)
                {
                    // Never servable by any replica (they are all alike): refused at
                    // once, as a replica would, instead of blocking the pool's queue.
                    self.refused_at_pool += 1;
                    out.done.push(refused_done(job.id, now, now, refused));
                    return;
                }
                let key = self.queue_key(meta, &req, place);
                if self.spot.is_some() {
                    self.kept.insert(
                        job.id,
                        Kept {
                            req: (*req).clone(),
                            submitted: now,
                            lost_busy: SimDuration::ZERO,
                            lost_usd: 0.0,
                            recomputes: 0,
                            first_token_reported: false,
                            place,
                            key,
                        },
                    );
                }
                if self.parked.is_empty() || self.queue_at == QueueAt::Pool {
                    self.dispatch(now, now, job.id, &req, place, key);
                } else {
                    // With requests already waiting for a replica (only a spot pool
                    // can have none up, and it keeps every request): behind them.
                    let (id, req) = (job.id, (*req).clone());
                    self.park(
                        now,
                        Parked {
                            id,
                            submitted: now,
                            place,
                            key,
                            req,
                        },
                    );
                }
            }
        }
        self.pump(now);
        self.drain(out);
    }

    /// Sequences running (`busy`) and waiting (`queued`) over the replicas, as of the
    /// last call.
    fn waiting_since(&self, out: &mut Vec<SimTime>) {
        if !self.first_tokens {
            return;
        }
        out.extend(self.parked.iter().map(|p| p.submitted));
        for r in &self.replicas {
            r.waiting_for_first_token(&mut |id, submitted| {
                // A request recomputed after a spot preemption reported its first
                // token on the lost replica already.
                if !self.kept.get(&id).is_some_and(|k| k.first_token_reported) {
                    out.push(submitted);
                }
            });
        }
    }

    fn load_now(&self) -> Option<LoadNow> {
        let mut load = LoadNow {
            servers: if self.resized {
                self.up()
            } else {
                self.replicas.len() as u32
            },
            booting: self.booting + self.booting_spot,
            queued: self.parked.len() as u64,
            ..LoadNow::default()
        };
        for r in &self.replicas {
            load.busy += r.running_len() as u64;
            load.queued += r.waiting_len() as u64;
        }
        Some(load)
    }

    fn wake(&mut self, now: SimTime, token: u64, out: &mut StationOutput) {
        let i = (token >> GEN_BITS) as usize;
        if let Some(r) = self.replicas.get_mut(i)
            && r.generation() & GEN_MASK == token & GEN_MASK
        {
            r.advance(now);
            if matches!(self.life[i], Life::Draining | Life::Noticed) {
                self.retire_drained(now);
            }
            self.pump(now);
        } else if !self.pump(now) {
            // Superseded (a cut stretch, an evicted replica): nothing happens now. (A
            // replica's effects at `now` already applied by a report, which does not
            // pump, supersede its wake-up too: the pool's queue is served here.)
            out.stale_wake = true;
        }
        self.drain(out);
    }

    fn boot_started(&mut self, now: SimTime) {
        self.resized = true;
        self.booting += 1;
        self.counts.boots += 1;
        self.update_levels(now);
    }

    fn boot_finished(&mut self, now: SimTime, out: &mut StationOutput) {
        if self.booting == 0 {
            return;
        }
        self.booting -= 1;
        self.add_replica(now, false, out);
    }

    fn retire_server(&mut self, now: SimTime, allow_last: bool) {
        self.pump(now);
        self.resized = true;
        if self.up() <= u32::from(!allow_last) {
            return;
        }
        // The replica up with the least work left; ties to the newest.
        let mut pick: Option<(usize, u64)> = None;
        for (i, r) in self.replicas.iter_mut().enumerate() {
            if self.life[i] != Life::Up {
                continue;
            }
            r.advance(now);
            let left = r.outstanding_tokens();
            if pick.is_none_or(|(_, l)| left <= l) {
                pick = Some((i, left));
            }
        }
        let pick = pick.map(|(i, _)| i);
        let Some(i) = pick else { return };
        self.counts.retirements += 1;
        self.life[i] = Life::Draining;
        self.retire_drained(now);
        self.update_levels(now);
    }

    /// Spot replicas exposed to preemption: up or draining, not already noticed.
    fn spot_up(&self) -> u32 {
        self.count(|i| self.exposed_spot(i))
    }

    fn preempt(&mut self, now: SimTime, ks: &[u32], out: &mut StationOutput) -> u32 {
        let victims = self.spot_victims(ks);
        if victims.is_empty() {
            return 0;
        }
        self.reclaims += 1;
        self.counts.spot_preemptions += victims.len() as u64;
        self.lose_replicas(now, &victims, out);
        victims.len() as u32
    }

    fn abort(&mut self, now: SimTime, id: JobId, out: &mut StationOutput) -> bool {
        self.pump(now);
        let found = if let Some(k) = self.parked.iter().position(|p| p.id == id) {
            // In the pool's queue: it leaves it.
            let submitted = self.parked.remove(k).map_or(now, |p| p.submitted);
            self.parked_level.set(now, self.parked.len() as u64);
            let (busy, usd) = self
                .kept
                .remove(&id)
                .map_or((SimDuration::ZERO, 0.0), |k| (k.lost_busy, k.lost_usd));
            out.done.push(HopDone {
                id,
                submitted,
                started: now,
                finished: now,
                busy,
                usd,
                llm: None,
                refused: None,
            });
            true
        } else {
            let found = self.replicas.iter_mut().any(|r| r.abort(now, id));
            if found {
                self.retire_drained(now);
            }
            found
        };
        // A new head of the pool's queue, or a slot freed on a replica.
        self.pump(now);
        self.drain(out);
        found
    }

    fn spot_notice(&mut self, now: SimTime, ks: &[u32], out: &mut StationOutput) -> Vec<u32> {
        let victims = self.spot_victims(ks);
        if victims.is_empty() {
            return Vec::new();
        }
        self.pump(now);
        self.reclaims += 1;
        for &i in &victims {
            self.counts.spot_preemptions += 1;
            self.replicas[i].advance(now);
            self.life[i] = Life::Noticed;
        }
        // Their waiting requests stay, served if the notice allows, unless the load
        // balancer re-sends them now (they hold no KV cache, nothing of theirs is lost
        // but a recomputation's earlier work), to replicas outside the group: all are
        // noticed first.
        let mut moved = false;
        let move_waiting = self.spot.is_some_and(|s| s.move_waiting_on_notice);
        let to_move: &[usize] = if move_waiting { &victims } else { &[] };
        for &i in to_move {
            for e in self.replicas[i].take_waiting(now) {
                moved = true;
                let Some(kept) = self.kept.get_mut(&e.id) else {
                    continue;
                };
                kept.lost_busy = SimDuration(kept.lost_busy.as_nanos() + e.busy.as_nanos());
                kept.lost_usd += e.usd;
                kept.recomputes += e.preemptions;
                self.counts.moved_waiting += 1;
                let (req, submitted, place, key) =
                    (kept.req.clone(), kept.submitted, kept.place, kept.key);
                self.dispatch(now, submitted, e.id, &req, place, key);
            }
        }
        self.retire_drained(now);
        self.update_levels(now);
        if moved {
            self.pump(now);
            self.drain(out);
        }
        victims.into_iter().map(|i| i as u32).collect()
    }

    fn spot_lost(&mut self, now: SimTime, id: u32, out: &mut StationOutput) -> bool {
        let i = id as usize;
        if self.life.get(i) != Some(&Life::Noticed) {
            return false;
        }
        self.lose_replica(now, i, out)
    }

    fn spot_boot_started(&mut self, now: SimTime) {
        self.booting_spot += 1;
        self.counts.boots += 1;
        self.update_levels(now);
    }

    fn spot_boot_finished(&mut self, now: SimTime, out: &mut StationOutput) {
        if self.booting_spot == 0 {
            return;
        }
        self.booting_spot -= 1;
        self.add_replica(now, true, out);
    }

    fn begin_measurement(&mut self, now: SimTime) {
        self.pump(now);
        for r in self.replicas.iter_mut() {
            r.begin_measurement(now);
        }
        self.window_start = now;
        self.service_noops = 0;
        self.unserved = 0;
        self.over_context = 0;
        self.refused_at_pool = 0;
        self.up_or_draining.reset(now);
        self.paid_on_demand.reset(now);
        self.paid_spot.reset(now);
        self.spot_up.reset(now);
        self.paid_reserved.reset(now);
        self.parked_level.reset(now);
        self.counts = CapacityReport::default();
        self.reclaims = 0;
    }

    fn report(&mut self, now: SimTime) -> StationReport {
        self.pump(now);
        let window = now - self.window_start;
        let mut rep = StationReport {
            servers: self.replicas.len() as u32,
            window,
            usd_capacity: self.replicas.len() as f64
                * self.usd_per_replica_hour
                * window.as_secs_f64()
                / 3600.0,
            ..StationReport::default()
        };
        if self.resized {
            let spot_price = self.spot.map_or(0.0, |s| s.usd_per_replica_hour);
            rep.servers = self.count(|i| self.life[i] != Life::Gone);
            // Reserved slots are paid for the whole window; the on-demand replicas
            // they cover pay nothing more.
            let (reserved_usd, covered_s) = self.reserved.map_or((0.0, 0.0), |r| {
                (
                    r.slots as f64 * r.usd_per_replica_hour * window.as_secs_f64(),
                    self.paid_reserved.area_s(now),
                )
            });
            rep.usd_capacity = ((self.paid_on_demand.area_s(now) - covered_s).max(0.0)
                * self.usd_per_replica_hour
                + self.paid_spot.area_s(now) * spot_price
                + reserved_usd)
                / 3600.0;
            rep.capacity_server_s = self.up_or_draining.area_s(now);
        }
        for r in self.replicas.iter_mut() {
            rep.busy_server_s += r.busy_s(now);
            rep.in_system_s += r.in_system_s(now);
            rep.queued_s += r.queued_s(now);
            rep.in_system_now += (r.running_len() + r.waiting_len()) as u64;
        }
        let parked_s = self.parked_level.area_s(now);
        rep.in_system_s += parked_s;
        rep.queued_s += parked_s;
        rep.in_system_now += self.parked.len() as u64;
        rep
    }

    fn drain_token_gaps(&mut self, out: &mut Vec<crate::station::TokenGaps>) {
        for r in self.replicas.iter_mut() {
            r.drain_gaps(out);
        }
    }

    fn kv_now(&self) -> Option<crate::station::KvNow> {
        let mut kv = crate::station::KvNow::default();
        for (i, r) in self.replicas.iter().enumerate() {
            // Replicas gone (drained, preempted) hold nothing and are no capacity.
            if self.life[i] == Life::Gone {
                continue;
            }
            kv.used_blocks += r.kv_used_blocks();
            kv.capacity_blocks += r.config().kv_capacity_blocks as u64;
            kv.tokens += r.kv_tokens();
        }
        Some(kv)
    }

    fn gpu_report(&mut self, now: SimTime) -> Option<GpuPoolReport> {
        self.pump(now);
        let per_replica: Vec<ReplicaReport> =
            self.replicas.iter_mut().map(|r| r.report(now)).collect();
        let n = per_replica.len().max(1) as f64;
        let avg = |f: fn(&ReplicaReport) -> f64| per_replica.iter().map(f).sum::<f64>() / n;
        let sum = |f: fn(&ReplicaReport) -> u64| per_replica.iter().map(f).sum::<u64>();
        let iterations = sum(|r| r.iterations);
        let batch_weighted: f64 = per_replica
            .iter()
            .map(|r| r.batch_size_mean * r.iterations as f64)
            .sum();
        let prompt_tokens = sum(|r| r.prompt_tokens);
        let cached_tokens = sum(|r| r.cached_tokens);
        Some(GpuPoolReport {
            name: self.name.clone(),
            perf_model: self.perf_name.clone(),
            picker: self.picker.name().to_string(),
            queue_at: self.queue_at,
            window: now - self.window_start,
            replicas: self.replicas.len() as u32,
            busy_fraction: avg(|r| r.busy_fraction),
            kv_occupancy_mean: avg(|r| r.kv_occupancy_mean),
            kv_occupancy_max: per_replica
                .iter()
                .map(|r| r.kv_occupancy_max)
                .fold(0.0, f64::max),
            batch_size_mean: if iterations > 0 {
                batch_weighted / iterations as f64
            } else {
                0.0
            },
            iterations,
            preemptions: sum(|r| r.preemptions),
            prompt_tokens,
            cached_tokens,
            prefix_hit_rate: if prompt_tokens > 0 {
                cached_tokens as f64 / prompt_tokens as f64
            } else {
                0.0
            },
            tokens_in_flight_mean: per_replica.iter().map(|r| r.tokens_in_flight_mean).sum(),
            finished: sum(|r| r.finished),
            rejected: sum(|r| r.rejected)
                + self.unserved
                + self.over_context
                + self.refused_at_pool,
            service_noops: self.service_noops,
            capacity: self.capacity_report(now),
            per_replica,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gpu::IterationShape;
    use crate::gpu::kv::mix;
    use crate::station::JobId;
    use proptest::prelude::*;
    use std::cmp::Reverse;
    use std::collections::{BTreeMap, BinaryHeap};

    /// Iteration time linear in the shape, in whole microseconds so that iteration
    /// boundaries often coincide with arrivals, reports and each other.
    #[derive(Debug)]
    pub(crate) struct CoarsePerf;
    impl PerfModel for CoarsePerf {
        fn iteration_time(&self, s: &IterationShape) -> SimDuration {
            SimDuration(
                1000 * (1
                    + s.prefill_tokens / 32
                    + s.prefill_context_tokens / 1024
                    + s.decode_seqs as u64 / 4
                    + s.decode_context_tokens / 512),
            )
        }
        fn name(&self) -> &str {
            "coarse"
        }
    }

    pub(crate) fn llm(input: u32, output: u32) -> LlmRequest {
        LlmRequest {
            input_tokens: input,
            output_tokens: output,
            shared_prefix_tokens: 0,
            prefix_group: 0,
            block_hashes: None,
            hash_block_tokens: 0,
            itl_group: None,
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum Ev {
        Submit(usize),
        Wake(u64),
        Measure,
        Report,
        Abort(usize),
    }

    #[derive(Debug, PartialEq)]
    pub(crate) struct RunOut {
        pub done: Vec<HopDone>,
        pub reports: Vec<(StationReport, GpuPoolReport)>,
        /// Wake-ups delivered.
        pub wakes: u64,
        /// Inter-token gaps: (request index, gap ns) -> count.
        pub gaps: BTreeMap<(u32, u64), u64>,
    }

    /// Every served request reported one gap per output token after its first, adding
    /// up to the time from its first token to its last; a refused one none.
    pub(crate) fn check_gaps(run: &RunOut, arrivals: &[(u64, LlmRequest)]) -> Result<(), String> {
        let mut per: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for (&(i, gap), &n) in &run.gaps {
            let e = per.entry(i).or_default();
            e.0 += n;
            e.1 += gap * n;
        }
        for d in &run.done {
            let i = d.id.0 as u32;
            let (n, sum) = per.get(&i).copied().unwrap_or_default();
            let ttft = d.llm.map_or(SimDuration::ZERO, |l| l.ttft);
            let (want_n, want_sum) = if ttft == SimDuration::ZERO {
                (0, 0)
            } else {
                let out = arrivals[i as usize].1.output_tokens.max(1) as u64;
                (out - 1, (d.finished - (d.submitted + ttft)).as_nanos())
            };
            if (n, sum) != (want_n, want_sum) {
                return Err(format!(
                    "request {i}: {n} gaps adding to {sum} ns, want {want_n} adding to {want_sum} ns"
                ));
            }
        }
        Ok(())
    }

    /// Runs arrivals through a station like the engine does, but orders same-time
    /// events at random (seeded by `tie_seed`): the station must not depend on it.
    /// Checks the accounting after every event.
    pub(crate) fn drive(
        st: &mut GpuPoolStation,
        arrivals: &[(u64, LlmRequest)],
        measure_at: u64,
        report_at: &[u64],
        tie_seed: u64,
    ) -> RunOut {
        drive_meta(st, arrivals, &[], measure_at, report_at, tie_seed)
    }

    /// [`drive`] with the scheduling attributes of each arrival (default when missing).
    pub(crate) fn drive_meta(
        st: &mut GpuPoolStation,
        arrivals: &[(u64, LlmRequest)],
        metas: &[JobMeta],
        measure_at: u64,
        report_at: &[u64],
        tie_seed: u64,
    ) -> RunOut {
        drive_aborting(st, arrivals, metas, measure_at, report_at, tie_seed, &[])
    }

    /// [`drive_meta`], with request `i` aborted at `t` for every `(t, i)` of `aborts`.
    fn drive_aborting(
        st: &mut GpuPoolStation,
        arrivals: &[(u64, LlmRequest)],
        metas: &[JobMeta],
        measure_at: u64,
        report_at: &[u64],
        tie_seed: u64,
        aborts: &[(u64, usize)],
    ) -> RunOut {
        let mut heap = BinaryHeap::new();
        let mut rng = tie_seed;
        let mut key = move || {
            rng = mix(rng, 1);
            rng
        };
        // Submits, reports and the window start keep one order among themselves (it is
        // the input, the same in every run); wake-ups fall anywhere between them.
        let mut fixed = 0u64;
        let mut fixed_key = move || {
            fixed += 1;
            mix(0xF1, fixed)
        };
        for (i, (at, _)) in arrivals.iter().enumerate() {
            heap.push(Reverse((*at, fixed_key(), Ev::Submit(i))));
        }
        heap.push(Reverse((measure_at, fixed_key(), Ev::Measure)));
        for &(t, i) in aborts {
            heap.push(Reverse((t, fixed_key(), Ev::Abort(i))));
        }
        for &t in report_at {
            heap.push(Reverse((t, fixed_key(), Ev::Report)));
        }
        let mut out = StationOutput::default();
        let mut done = Vec::new();
        let mut reports = Vec::new();
        let mut last = 0;
        let mut wakes = 0;
        let mut gaps = BTreeMap::new();
        while let Some(Reverse((t, _, ev))) = heap.pop() {
            assert!(t >= last, "time went backwards");
            let before = last;
            last = t;
            let now = SimTime(t);
            out.clear();
            match ev {
                Ev::Submit(i) => st.submit_meta(
                    now,
                    HopJob {
                        id: JobId(i as u64),
                        work: Work::Llm(Box::new(LlmRequest {
                            itl_group: Some(i as u32),
                            ..arrivals[i].1.clone()
                        })),
                    },
                    &metas.get(i).copied().unwrap_or_default(),
                    &mut out,
                ),
                Ev::Wake(token) => {
                    wakes += 1;
                    st.wake(now, token, &mut out);
                    // A superseded wake-up is not part of the run (as in the simulator).
                    if out.stale_wake {
                        last = before;
                    }
                }
                Ev::Measure => st.begin_measurement(now),
                Ev::Abort(i) => {
                    st.abort(now, JobId(i as u64), &mut out);
                }
                Ev::Report => {
                    reports.push((st.report(now), st.gpu_report(now).unwrap_or_default()))
                }
            }
            for &(wt, token) in &out.wakeups {
                assert!(wt.0 >= t, "wake-up in the past");
                heap.push(Reverse((wt.0, key(), Ev::Wake(token))));
            }
            for d in out.done.drain(..) {
                assert_eq!(d.finished, now, "a hop reported late");
                done.push(d);
            }
            for g in out.gaps.drain(..) {
                *gaps.entry((g.group, g.gap.as_nanos())).or_default() += g.count;
            }
            for r in st.replicas() {
                if let Err(e) = r.check_invariants() {
                    panic!("at {now}: {e}");
                }
            }
        }
        let end = SimTime(last);
        reports.push((st.report(end), st.gpu_report(end).unwrap_or_default()));
        st.drain_token_gaps(&mut out.gaps);
        for g in out.gaps.drain(..) {
            *gaps.entry((g.group, g.gap.as_nanos())).or_default() += g.count;
        }
        done.sort_by_key(|d| d.id);
        RunOut {
            done,
            reports,
            wakes,
            gaps,
        }
    }

    pub(crate) fn station(replicas: u32, cfg: ReplicaConfig, round_robin: bool) -> GpuPoolStation {
        let st = GpuPoolStation::new("gpu", replicas, cfg, Arc::new(CoarsePerf), 3.6)
            .unwrap_or_else(|e| panic!("{e}"));
        if round_robin {
            st.with_picker(Box::new(RoundRobin::default()))
        } else {
            st
        }
    }

    /// A discipline of a GPU pool, and scheduling attributes for `n` arrivals drawn
    /// from `seed`: priorities 0-2, deadlines within 6 us of arrival, and lanes 0-2
    /// with weights 1, 3, 0.5 or 2 (each hop its own: a lane's weight may change), so
    /// that ties and reorderings are frequent.
    fn ranked_setup(
        disc: u8,
        seed: u64,
        arrivals: &[(u64, LlmRequest)],
    ) -> (DisciplineSpec, Vec<JobMeta>) {
        let d = [
            DisciplineSpec::Fifo,
            DisciplineSpec::Priority,
            DisciplineSpec::EarliestDeadline,
            DisciplineSpec::WeightedFair,
        ][disc as usize % 4];
        let metas = arrivals
            .iter()
            .enumerate()
            .map(|(i, (at, _))| {
                let h = mix(seed, i as u64);
                JobMeta {
                    priority: (h % 3) as i32,
                    deadline: if (h >> 8).is_multiple_of(4) {
                        SimTime(u64::MAX)
                    } else {
                        SimTime(at + (h >> 16) % 6 * 1000)
                    },
                    lane: ((h >> 24) % 3) as u32,
                    weight: [1.0, 3.0, 0.5, 2.0][((h >> 32) % 4) as usize],
                    ..JobMeta::default()
                }
            })
            .collect();
        (d, metas)
    }

    /// [`ordered`], with the pool's queue when `at_pool` (random tests cover both).
    fn queued(
        st: GpuPoolStation,
        d: DisciplineSpec,
        preempt: bool,
        at_pool: bool,
    ) -> GpuPoolStation {
        let q = if at_pool {
            QueueAt::Pool
        } else {
            QueueAt::Replica
        };
        ordered(st, d, preempt).with_queue_at(q)
    }

    /// `st` under discipline `d`, with priority preemption when `preempt` and `d` is
    /// ranked (`priority`, `earliest_deadline`).
    fn ordered(st: GpuPoolStation, d: DisciplineSpec, preempt: bool) -> GpuPoolStation {
        let ranked = matches!(
            d,
            DisciplineSpec::Priority | DisciplineSpec::EarliestDeadline
        );
        st.with_discipline(d)
            .and_then(|st| st.with_priority_preemption(preempt && ranked))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Requests of up to 119 + 39 = 158 tokens (every generated cache and budget
    /// holds 160), and one in 20 a huge one (3,000-6,000 prompt tokens) that no cache
    /// holds, so that refusal stays exercised without crowding out service.
    fn arb_request() -> impl Strategy<Value = LlmRequest> {
        (
            prop_oneof![19 => 1u32..120, 1 => HUGE_INPUT..2 * HUGE_INPUT],
            1u32..40,
            0u64..3,
            0u32..200,
            prop::option::of((
                prop::collection::vec(0u64..3, 0..12),
                prop_oneof![Just(4u32), Just(16), Just(40)],
            )),
        )
            .prop_map(|(input, output, group, shared, hashes)| {
                let (block_hashes, hash_block_tokens) = match hashes {
                    Some((v, h)) => (Some(v.into()), h),
                    None => (None, 0),
                };
                LlmRequest {
                    input_tokens: input,
                    output_tokens: output,
                    shared_prefix_tokens: shared.min(input),
                    prefix_group: group,
                    block_hashes,
                    hash_block_tokens,
                    itl_group: None,
                }
            })
    }

    /// Prompt tokens from which a generated request is huge: refused by every
    /// generated configuration (the largest cache is 159 blocks of 16 = 2,544 tokens).
    const HUGE_INPUT: u32 = 3000;
    /// Tokens every generated KV cache, and every budget without chunked prefill,
    /// holds: any request that is not huge fits.
    const FITS: u32 = 160;

    /// At least `FITS` tokens of cache in blocks of `bs`.
    fn blocks_for(kv: u32, bs: u32) -> u32 {
        kv.max(FITS.div_ceil(bs))
    }

    /// Whether a replica of `cfg` must refuse `r` (its KV cache, or without chunked
    /// prefill its token budget, cannot hold input + output - 1 tokens).
    fn must_refuse(cfg: &ReplicaConfig, r: &LlmRequest) -> bool {
        let tokens = r.input_tokens.max(1) as u64 + r.output_tokens.max(1) as u64 - 1;
        tokens.div_ceil(cfg.block_size as u64) > cfg.kv_capacity_blocks as u64
            || (!cfg.chunked_prefill && tokens > cfg.max_batched_tokens as u64)
    }

    /// A request is refused exactly when it must be, only huge ones must, and every
    /// request served was charged some service.
    fn check_refusals(
        run: &RunOut,
        arrivals: &[(u64, LlmRequest)],
        cfg: &ReplicaConfig,
    ) -> Result<(), String> {
        for d in &run.done {
            let r = &arrivals[d.id.0 as usize].1;
            let must = must_refuse(cfg, r);
            if must != (r.input_tokens >= HUGE_INPUT) {
                return Err(format!(
                    "{:?}: the generator let a normal request not fit",
                    d.id
                ));
            }
            if d.refused.is_some() != must {
                return Err(format!(
                    "{:?} refused {:?}, must refuse {must}",
                    d.id, d.refused
                ));
            }
            if d.refused.is_none() && d.busy == SimDuration::ZERO {
                return Err(format!("{:?} served with no service", d.id));
            }
        }
        Ok(())
    }

    fn arb_config() -> impl Strategy<Value = ReplicaConfig> {
        (
            6u32..160,
            prop_oneof![Just(1u32), Just(2), Just(4), Just(16)],
            1u32..8,
            0u32..300,
            prop_oneof![Just(0.0), Just(0.05), Just(0.3)],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(kv, bs, seqs, extra, watermark, chunked, prefix)| ReplicaConfig {
                    max_num_seqs: seqs,
                    // Small budgets chunk long prompts; without chunking a prompt
                    // must fit one iteration.
                    max_batched_tokens: if chunked {
                        seqs + extra
                    } else {
                        (seqs + extra).max(FITS)
                    },
                    block_size: bs,
                    kv_capacity_blocks: blocks_for(kv, bs),
                    watermark,
                    chunked_prefill: chunked,
                    prefix_caching: prefix,
                    decode_skipping: true,
                },
            )
    }

    #[test]
    fn generated_requests_mostly_fit() {
        // Over 20,000 generated (config, request) pairs: about 1 in 20 is refused
        // (the huge ones), never a normal one.
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut refused, mut huge, n) = (0u32, 0u32, 20_000u32);
        for _ in 0..n {
            let cfg = arb_config()
                .new_tree(&mut runner)
                .map(|t| t.current())
                .unwrap_or_else(|e| panic!("{e}"));
            let r = arb_request()
                .new_tree(&mut runner)
                .map(|t| t.current())
                .unwrap_or_else(|e| panic!("{e}"));
            let is_huge = r.input_tokens >= HUGE_INPUT;
            assert_eq!(must_refuse(&cfg, &r), is_huge, "{cfg:?} {r:?}");
            refused += must_refuse(&cfg, &r) as u32;
            huge += is_huge as u32;
        }
        assert_eq!(refused, huge);
        let share = refused as f64 / n as f64;
        assert!((0.04..0.06).contains(&share), "refused share {share}");
    }

    #[test]
    fn generated_loads_exercise_priority_preemption() {
        // The proptests' heavy-load workloads under `priority` with random priorities:
        // over 200 generated cases, the key preempts for a better-ranked waiting
        // request in most of them (more preemptions than without it), and never
        // changes a run whose priorities are all equal.
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let cases = prop::collection::vec((0u64..40, arb_request()), 20..80);
        let (mut more, mut fewer, n) = (0u32, 0u32, 200u32);
        for seed in 0..n as u64 {
            let arrivals: Vec<(u64, LlmRequest)> = cases
                .new_tree(&mut runner)
                .map(|t| t.current())
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(|(t, r)| (t * 1000, r))
                .collect();
            let cfg = ReplicaConfig {
                max_num_seqs: 4,
                max_batched_tokens: 48,
                block_size: 4,
                kv_capacity_blocks: blocks_for(30, 4),
                watermark: 0.05,
                ..ReplicaConfig::defaults(30)
            };
            let (d, metas) = ranked_setup(1, seed, &arrivals);
            let preemptions = |preempt: bool, metas: &[JobMeta]| {
                let run = drive_meta(
                    &mut ordered(station(1, cfg.clone(), false), d, preempt),
                    &arrivals,
                    metas,
                    0,
                    &[],
                    seed,
                );
                assert_eq!(run.done.len(), arrivals.len());
                let gpu = &run.reports[run.reports.len() - 1].1;
                (gpu.preemptions, run.done)
            };
            let (with, _) = preemptions(true, &metas);
            let (without, _) = preemptions(false, &metas);
            more += (with > without) as u32;
            fewer += (with < without) as u32;
            let equal: Vec<JobMeta> = metas
                .iter()
                .map(|m| JobMeta { priority: 1, ..*m })
                .collect();
            assert_eq!(preemptions(true, &equal), preemptions(false, &equal));
        }
        assert!(
            more > n / 2,
            "{more} of {n} cases preempted more, {fewer} fewer"
        );
    }

    fn arb_workload() -> impl Strategy<Value = (Vec<(u64, LlmRequest)>, u64, Vec<u64>)> {
        (
            prop::collection::vec((0u64..120, arb_request()), 1..30),
            0u64..120,
            prop::collection::vec(0u64..200, 0..4),
        )
            .prop_map(|(arrivals, measure, reports)| {
                (
                    arrivals.into_iter().map(|(t, r)| (t * 1000, r)).collect(),
                    measure * 1000,
                    reports.into_iter().map(|t| t * 1000).collect(),
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Decode skipping changes nothing: every hop's figures and every report are
        /// bit-identical to the iteration-by-iteration run, whatever the order of
        /// same-time events in either run, under every discipline with random ranks,
        /// and with priority preemption on or off under the ranked ones.
        #[test]
        fn decode_skipping_is_exact(
            cfg in arb_config(),
            replicas in 1u32..3,
            round_robin in any::<bool>(),
            (arrivals, measure, reports) in arb_workload(),
            seeds in (any::<u64>(), any::<u64>()),
            (disc, meta_seed, preempt) in (0u8..4, any::<u64>(), any::<bool>()),
            at_pool in any::<bool>(),
        ) {
            let (d, metas) = ranked_setup(disc, meta_seed, &arrivals);
            let skip = drive_meta(&mut queued(station(replicas, cfg.clone(), round_robin), d, preempt, at_pool), &arrivals, &metas, measure, &reports, seeds.0);
            let plain_cfg = ReplicaConfig { decode_skipping: false, ..cfg.clone() };
            let plain = drive_meta(&mut queued(station(replicas, plain_cfg, round_robin), d, preempt, at_pool), &arrivals, &metas, measure, &reports, seeds.1);
            prop_assert_eq!(skip.done.len(), arrivals.len(), "every request finishes");
            if let Err(e) = check_refusals(&skip, &arrivals, &cfg) {
                prop_assert!(false, "{}", e);
            }
            prop_assert_eq!(&skip.done, &plain.done);
            prop_assert_eq!(&skip.reports, &plain.reports);
            prop_assert_eq!(&skip.gaps, &plain.gaps, "the same inter-token gaps");
            prop_assert!(skip.wakes <= plain.wakes);
            if let Err(e) = check_gaps(&skip, &arrivals) {
                prop_assert!(false, "{}", e);
            }
        }

        /// The same under heavy load: dense arrivals, small caches, shared prefixes,
        /// preemptions.
        #[test]
        fn decode_skipping_is_exact_under_load(
            kv in 6u32..60,
            bs in prop_oneof![Just(1u32), Just(4), Just(16)],
            seqs in 2u32..24,
            chunked in any::<bool>(),
            replicas in 1u32..3,
            arrivals in prop::collection::vec((0u64..40, arb_request()), 20..80),
            measure in 0u64..40,
            seeds in (any::<u64>(), any::<u64>()),
            (disc, meta_seed, preempt) in (0u8..4, any::<u64>(), any::<bool>()),
            at_pool in any::<bool>(),
        ) {
            let arrivals: Vec<(u64, LlmRequest)> =
                arrivals.into_iter().map(|(t, r)| (t * 1000, r)).collect();
            let cfg = ReplicaConfig {
                max_num_seqs: seqs,
                max_batched_tokens: seqs.max(if chunked { 48 } else { FITS }),
                block_size: bs,
                kv_capacity_blocks: blocks_for(kv, bs),
                watermark: 0.05,
                chunked_prefill: chunked,
                ..ReplicaConfig::defaults(kv)
            };
            let reports = [measure * 1000 + 500, 30_000];
            let (d, metas) = ranked_setup(disc, meta_seed, &arrivals);
            let skip = drive_meta(&mut queued(station(replicas, cfg.clone(), false), d, preempt, at_pool), &arrivals, &metas, measure * 1000, &reports, seeds.0);
            let plain_cfg = ReplicaConfig { decode_skipping: false, ..cfg.clone() };
            let plain = drive_meta(&mut queued(station(replicas, plain_cfg, false), d, preempt, at_pool), &arrivals, &metas, measure * 1000, &reports, seeds.1);
            prop_assert_eq!(skip.done.len(), arrivals.len());
            if let Err(e) = check_refusals(&skip, &arrivals, &cfg) {
                prop_assert!(false, "{}", e);
            }
            prop_assert_eq!(&skip.done, &plain.done);
            prop_assert_eq!(&skip.reports, &plain.reports);
            prop_assert_eq!(&skip.gaps, &plain.gaps, "the same inter-token gaps");
            if let Err(e) = check_gaps(&skip, &arrivals) {
                prop_assert!(false, "{}", e);
            }
        }

        /// Aborts (callers that time out under `on_timeout = "abort"`) keep decode
        /// skipping exact: random requests are aborted at random times, waiting or
        /// running, under load; both runs agree bit for bit, every request is reported
        /// exactly once (finished, refused or aborted), the KV accounting holds after
        /// every event, and an aborted request is reported no later than the end of the
        /// iteration in progress.
        #[test]
        fn decode_skipping_is_exact_with_aborts(
            kv in 6u32..60,
            seqs in 2u32..16,
            chunked in any::<bool>(),
            replicas in 1u32..3,
            arrivals in prop::collection::vec((0u64..40, arb_request()), 10..60),
            aborts in prop::collection::vec((0u64..60_000, any::<prop::sample::Index>()), 0..20),
            seeds in (any::<u64>(), any::<u64>()),
            (disc, meta_seed, preempt) in (0u8..4, any::<u64>(), any::<bool>()),
            at_pool in any::<bool>(),
        ) {
            let arrivals: Vec<(u64, LlmRequest)> =
                arrivals.into_iter().map(|(t, r)| (t * 1000, r)).collect();
            let aborts: Vec<(u64, usize)> =
                aborts.into_iter().map(|(t, i)| (t, i.index(arrivals.len()))).collect();
            let cfg = ReplicaConfig {
                max_num_seqs: seqs,
                max_batched_tokens: seqs.max(if chunked { 48 } else { FITS }),
                block_size: 4,
                kv_capacity_blocks: blocks_for(kv, 4),
                watermark: 0.05,
                chunked_prefill: chunked,
                ..ReplicaConfig::defaults(kv)
            };
            let reports = [20_000, 70_000];
            let (d, metas) = ranked_setup(disc, meta_seed, &arrivals);
            let skip = drive_aborting(&mut queued(station(replicas, cfg.clone(), false), d, preempt, at_pool), &arrivals, &metas, 0, &reports, seeds.0, &aborts);
            let plain_cfg = ReplicaConfig { decode_skipping: false, ..cfg.clone() };
            let plain = drive_aborting(&mut queued(station(replicas, plain_cfg, false), d, preempt, at_pool), &arrivals, &metas, 0, &reports, seeds.1, &aborts);
            prop_assert_eq!(skip.done.len(), arrivals.len(), "each request reported once");
            prop_assert_eq!(&skip.done, &plain.done);
            prop_assert_eq!(&skip.reports, &plain.reports);
            prop_assert_eq!(&skip.gaps, &plain.gaps);
        }

        /// Small caches under load: the KV accounting stays consistent and within
        /// capacity after every event (checked inside `drive`), and every request
        /// finishes, with random ranks and priority preemption on or off.
        #[test]
        fn kv_accounting_holds_under_pressure(
            kv in 4u32..40,
            bs in prop_oneof![Just(1u32), Just(4), Just(16)],
            seqs in 1u32..16,
            skipping in any::<bool>(),
            (arrivals, measure, reports) in arb_workload(),
            (disc, meta_seed, preempt) in (0u8..4, any::<u64>(), any::<bool>()),
        ) {
            let cfg = ReplicaConfig {
                max_num_seqs: seqs,
                max_batched_tokens: seqs.max(64),
                block_size: bs,
                kv_capacity_blocks: blocks_for(kv, bs),
                watermark: 0.0,
                decode_skipping: skipping,
                ..ReplicaConfig::defaults(kv)
            };
            let (d, metas) = ranked_setup(disc, meta_seed, &arrivals);
            let run = drive_meta(&mut ordered(station(1, cfg.clone(), false), d, preempt), &arrivals, &metas, measure, &reports, 7);
            prop_assert_eq!(run.done.len(), arrivals.len());
            if let Err(e) = check_refusals(&run, &arrivals, &cfg) {
                prop_assert!(false, "{}", e);
            }
            if let Err(e) = check_gaps(&run, &arrivals) {
                prop_assert!(false, "{}", e);
            }
            let gpu = &run.reports[run.reports.len() - 1].1;
            prop_assert!(gpu.kv_occupancy_max <= 1.0);
        }
    }

    #[test]
    fn stretches_skip_wakes_and_submits_cut_them_exactly() {
        let cfg = ReplicaConfig {
            block_size: 4,
            ..ReplicaConfig::new(400).unwrap_or_else(|e| panic!("{e}"))
        };
        // Long decodes, with arrivals landing inside stretches and on boundaries.
        let mut arrivals: Vec<(u64, LlmRequest)> = (0..4).map(|_| (0, llm(50, 300))).collect();
        arrivals.extend((1..12).map(|i| (i * 37_000, llm(20 + i as u32, 40 + 9 * i as u32))));
        let reports = [50_000, 123_000, 400_000];
        let skip = drive(
            &mut station(2, cfg.clone(), false),
            &arrivals,
            30_000,
            &reports,
            3,
        );
        let plain_cfg = ReplicaConfig {
            decode_skipping: false,
            ..cfg
        };
        let plain = drive(
            &mut station(2, plain_cfg, false),
            &arrivals,
            30_000,
            &reports,
            4,
        );
        assert_eq!(skip.done, plain.done);
        assert_eq!(skip.reports, plain.reports);
        assert!(
            skip.wakes * 5 < plain.wakes,
            "{} wakes with skipping, {} without",
            skip.wakes,
            plain.wakes
        );
    }

    #[test]
    fn least_outstanding_tokens_prefers_lowest_index_on_ties() {
        // (also checks load_now)
        let mut st = station(
            2,
            ReplicaConfig::new(100).unwrap_or_else(|e| panic!("{e}")),
            false,
        );
        let mut out = StationOutput::default();
        for i in 0..3 {
            let job = HopJob {
                id: JobId(i),
                work: Work::Llm(Box::new(llm(10, 5))),
            };
            st.submit(SimTime(0), job, &mut out);
        }
        let load = st.load_now().unwrap_or_default();
        assert_eq!((load.servers, load.busy, load.queued), (2, 2, 1));

        let v = |t| ReplicaView {
            outstanding_tokens: t,
            ..ReplicaView::default()
        };
        let mut p = LeastOutstandingTokens;
        assert_eq!(p.pick(&[v(5), v(3), v(3)], &llm(1, 1)), 1);
        assert_eq!(p.pick(&[v(0), v(0)], &llm(1, 1)), 0);
        let mut rr = RoundRobin::default();
        let picks: Vec<usize> = (0..4)
            .map(|_| rr.pick(&[v(0), v(0), v(0)], &llm(1, 1)))
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0]);
    }

    #[test]
    fn least_outstanding_requests_counts_requests_not_tokens() {
        let v = |running, waiting, tokens| ReplicaView {
            running,
            waiting,
            outstanding_tokens: tokens,
            ..ReplicaView::default()
        };
        // Requests 4, 2, 4, 2: replicas 1 and 3 tie, 1 is first; least outstanding
        // tokens would take replica 2 (10 tokens).
        let views = [v(3, 1, 900), v(2, 0, 5000), v(2, 2, 10), v(1, 1, 40)];
        assert_eq!(LeastOutstandingRequests.pick(&views, &llm(1, 1)), 1);
        assert_eq!(LeastOutstandingTokens.pick(&views, &llm(1, 1)), 2);
        assert_eq!(
            LeastOutstandingRequests.pick(&[v(1, 0, 0), v(0, 0, 99)], &llm(1, 1)),
            1
        );

        // In a pool, at one instant: a large request and three small ones take the four
        // empty replicas in turn; a fifth finds one request on each and goes to
        // replica 0, whose request is 100 times larger (least outstanding tokens sends
        // it to replica 1).
        let on_replicas = |picker: Box<dyn ReplicaPicker>| {
            let cfg = ReplicaConfig::new(1000).unwrap_or_else(|e| panic!("{e}"));
            let mut st = station(4, cfg, false).with_picker(picker);
            let mut out = StationOutput::default();
            let reqs = [
                llm(1000, 100),
                llm(10, 1),
                llm(10, 1),
                llm(10, 1),
                llm(10, 1),
            ];
            for (i, r) in reqs.into_iter().enumerate() {
                let job = HopJob {
                    id: JobId(i as u64),
                    work: Work::Llm(Box::new(r)),
                };
                st.submit(SimTime(0), job, &mut out);
            }
            st.replicas()
                .iter()
                .map(|r| r.running_len() + r.waiting_len())
                .collect::<Vec<u32>>()
        };
        assert_eq!(
            on_replicas(Box::new(LeastOutstandingRequests)),
            vec![2, 1, 1, 1]
        );
        assert_eq!(
            on_replicas(Box::new(LeastOutstandingTokens)),
            vec![1, 2, 1, 1]
        );
    }

    #[test]
    fn random_picks_are_the_streams_uniform_draws() {
        use crate::rng::StreamFactory;
        use rand::RngExt;
        let views = [ReplicaView::default(); 4];
        let stream = || StreamFactory::new(7).stream("pool/gpu/picker");
        let mut p = RandomPicker::new(stream());
        let mut draws = stream();
        let n = 20_000;
        let mut counts = [0u32; 4];
        for _ in 0..n {
            let i = p.pick(&views, &llm(1, 1));
            assert_eq!(i, draws.random_range(0..4usize));
            counts[i] += 1;
        }
        // Binomial(20,000, 1/4): mean 5,000, sd 61.2; within 4 sd.
        for c in counts {
            assert!(c.abs_diff(5_000) < 245, "{counts:?}");
        }
        // Another seed, other draws.
        let mut q = RandomPicker::new(StreamFactory::new(8).stream("pool/gpu/picker"));
        let mut r = RandomPicker::new(stream());
        let a: Vec<usize> = (0..32).map(|_| q.pick(&views, &llm(1, 1))).collect();
        let b: Vec<usize> = (0..32).map(|_| r.pick(&views, &llm(1, 1))).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn dispatch_spreads_by_outstanding_tokens() {
        let cfg = ReplicaConfig::new(1000).unwrap();
        let arrivals: Vec<(u64, LlmRequest)> =
            vec![(0, llm(100, 10)), (1, llm(10, 1)), (2, llm(10, 1))];
        let mut st = station(2, cfg, false);
        let run = drive(&mut st, &arrivals, 0, &[], 1);
        let gpu = &run.reports[0].1;
        // 110 tokens on replica 0, so both small ones go to replica 1.
        assert_eq!(gpu.per_replica[0].finished, 1);
        assert_eq!(gpu.per_replica[1].finished, 2);
    }

    /// Delivers wake-ups in time order until none is left, collecting finished hops.
    /// Handles the wake-ups in `heap` (and any in `out`) due by `cut`, in (time, token)
    /// order, collecting finished hops in `done`; later ones stay in `heap`.
    fn step_until(
        st: &mut GpuPoolStation,
        out: &mut StationOutput,
        heap: &mut Vec<(SimTime, u64)>,
        done: &mut Vec<HopDone>,
        cut: SimTime,
    ) {
        heap.append(&mut out.wakeups);
        while let Some(i) = (0..heap.len()).min_by_key(|&i| heap[i]) {
            if heap[i].0 > cut {
                break;
            }
            let (t, token) = heap.swap_remove(i);
            st.wake(t, token, out);
            heap.append(&mut out.wakeups);
            done.append(&mut out.done);
        }
    }

    fn run_out(st: &mut GpuPoolStation, out: &mut StationOutput, done: &mut Vec<HopDone>) {
        let mut heap: BinaryHeap<Reverse<(SimTime, u64)>> =
            out.wakeups.drain(..).map(Reverse).collect();
        done.append(&mut out.done);
        while let Some(Reverse((t, token))) = heap.pop() {
            st.wake(t, token, out);
            heap.extend(out.wakeups.drain(..).map(Reverse));
            done.append(&mut out.done);
        }
    }

    fn submit(
        st: &mut GpuPoolStation,
        t: SimTime,
        id: u64,
        req: LlmRequest,
        out: &mut StationOutput,
    ) {
        let job = HopJob {
            id: JobId(id),
            work: Work::Llm(Box::new(req)),
        };
        st.submit(t, job, out);
    }

    #[test]
    fn a_retired_replica_drains_and_is_paid_from_boot_start_to_its_last_request() {
        // $3.6 per replica-hour = $0.001 per second.
        let mut st = station(1, ReplicaConfig::new(1000).unwrap(), false);
        let mut out = StationOutput::default();
        let s = |x: u64| SimTime(x * 1_000_000_000);
        st.boot_started(s(10));
        let l = st.load_now().unwrap_or_default();
        assert_eq!((l.servers, l.booting), (1, 1));
        st.boot_finished(s(70), &mut out);
        // A long request on replica 0, a shorter one on the new replica 1.
        submit(&mut st, s(70), 0, llm(100, 2000), &mut out);
        submit(&mut st, s(70), 1, llm(10, 500), &mut out);
        // 100us later (iterations take microseconds here), retire one: the replica with
        // the least work left (1) drains.
        let us = |x: u64| SimTime(s(70).as_nanos() + x * 1000);
        st.retire_server(us(100), false);
        let l = st.load_now().unwrap_or_default();
        assert_eq!((l.servers, l.busy), (1, 2));
        assert_eq!(st.report(us(100)).servers, 2);
        // A new request goes to the replica still up.
        submit(&mut st, us(200), 2, llm(10, 10), &mut out);
        let mut done = Vec::new();
        run_out(&mut st, &mut out, &mut done);
        done.sort_by_key(|d| d.id);
        assert_eq!(done.len(), 3);
        let gpu = st.gpu_report(s(100)).unwrap_or_default();
        let finished: Vec<u64> = gpu.per_replica.iter().map(|r| r.finished).collect();
        assert_eq!(finished, vec![2, 1]);
        assert_eq!(st.load_now().map(|l| l.servers), Some(1));
        // Paid: replica 0 for 100s; replica 1 from boot start (10s) to its last
        // request's end.
        let drain_end = done[1].finished.as_secs_f64();
        assert!(drain_end > 70.0 && drain_end < 71.0, "{drain_end}");
        let rep = st.report(s(100));
        assert_eq!(rep.servers, 1);
        let paid_s = 100.0 + (drain_end - 10.0);
        assert!((rep.usd_capacity - paid_s * 0.001).abs() < 1e-12, "{rep:?}");
        assert!((rep.capacity_server_s - (100.0 + drain_end - 70.0)).abs() < 1e-9);
        let cap = gpu.capacity.unwrap_or_default();
        assert_eq!((cap.boots, cap.retirements), (1, 1));
    }

    #[test]
    fn a_reservation_floats_to_the_replica_left_and_is_paid_whole() {
        // Two on-demand replicas at $0.001/s, one reserved slot at $0.0005/s. The slot
        // covers replica 0 (the oldest) first. A small request on replica 0, a large
        // one on replica 1; replica 0 (least work left) is retired, drains, and its
        // slot passes to replica 1, whose request is then charged at the reserved
        // price. Paid: the slot for the whole 100 s, and replica 1 on demand only
        // until replica 0 was gone.
        let mut st =
            station(2, ReplicaConfig::new(1000).unwrap(), false).with_reserved(ReservedConfig {
                slots: 1,
                usd_per_replica_hour: 1.8,
            });
        let mut out = StationOutput::default();
        let s = |x: u64| SimTime(x * 1_000_000_000);
        submit(&mut st, s(0), 0, llm(10, 10), &mut out);
        submit(&mut st, s(0), 1, llm(100, 2000), &mut out);
        st.retire_server(SimTime(1), false);
        let mut done = Vec::new();
        run_out(&mut st, &mut out, &mut done);
        done.sort_by_key(|d| d.id);
        assert_eq!(done.len(), 2);
        let gpu = st.gpu_report(s(100)).unwrap_or_default();
        let finished: Vec<u64> = gpu.per_replica.iter().map(|r| r.finished).collect();
        assert_eq!(finished, vec![1, 1]);
        for d in &done {
            let per_s = d.usd / d.busy.as_secs_f64();
            assert!((per_s - 0.0005).abs() < 1e-12, "{d:?}");
        }
        let t_gone = done[0].finished.as_secs_f64();
        assert!(t_gone > 0.0 && t_gone < done[1].finished.as_secs_f64());
        let rep = st.report(s(100));
        let want = 0.0005 * 100.0 + 0.001 * t_gone;
        assert!((rep.usd_capacity - want).abs() < 1e-12, "{rep:?} vs {want}");
        let cap = gpu.capacity.unwrap_or_default();
        assert_eq!(cap.reserved_replicas, Some(1));
        let used = cap.reserved_used_hours.unwrap_or(0.0) * 3600.0;
        let unused = cap.reserved_unused_hours.unwrap_or(-1.0) * 3600.0;
        assert!(
            (used - 100.0).abs() < 1e-9 && unused.abs() < 1e-9,
            "{cap:?}"
        );
        assert!((cap.replica_hours * 3600.0 - (100.0 + t_gone)).abs() < 1e-9);
        // Three slots on the same pool: two used, one paid for nothing (and no
        // on-demand dollars): 3 x $0.0005 x 100 s.
        let mut st =
            station(2, ReplicaConfig::new(1000).unwrap(), false).with_reserved(ReservedConfig {
                slots: 3,
                usd_per_replica_hour: 1.8,
            });
        let rep = st.report(s(100));
        assert!((rep.usd_capacity - 0.15).abs() < 1e-12, "{rep:?}");
        let cap = st.capacity_report(s(100)).unwrap_or_default();
        let unused = cap.reserved_unused_hours.unwrap_or(0.0) * 3600.0;
        assert!((unused - 100.0).abs() < 1e-9, "{cap:?}");
    }

    #[test]
    fn requests_waiting_for_a_replica_follow_the_discipline() {
        // One spot replica, lost at once: three requests park, then a replica boots
        // and takes them. The first one dispatched starts alone at once.
        for (d, first) in [
            (DisciplineSpec::Fifo, 0),
            (DisciplineSpec::Priority, 2),
            (DisciplineSpec::EarliestDeadline, 1),
            // Tags are the replica's: the pool's queue keeps arrival order.
            (DisciplineSpec::WeightedFair, 0),
        ] {
            let spot = SpotConfig {
                replicas: 1,
                usd_per_replica_hour: 1.8,
                recompute: true,
                move_waiting_on_notice: false,
                counts_reclaims: false,
            };
            let mut st = ordered(
                station(1, ReplicaConfig::new(1000).unwrap(), false)
                    .with_spot(spot)
                    .unwrap_or_else(|e| panic!("{e}")),
                d,
                false,
            );
            let mut out = StationOutput::default();
            assert_eq!(st.preempt(SimTime(0), &[0], &mut out), 1);
            // Priorities 0, 5, 9; deadlines 30, 10, none.
            for (id, priority, deadline) in [(0u64, 0, 30), (1, 5, 10), (2, 9, u64::MAX)] {
                let job = HopJob {
                    id: JobId(id),
                    work: Work::Llm(Box::new(llm(20, 5))),
                };
                let meta = JobMeta {
                    priority,
                    deadline: SimTime(deadline),
                    ..JobMeta::default()
                };
                st.submit_meta(SimTime(1 + id), job, &meta, &mut out);
            }
            assert_eq!(st.load_now().map(|l| l.queued), Some(3));
            st.spot_boot_started(SimTime(5));
            st.spot_boot_finished(SimTime(10), &mut out);
            let mut done = Vec::new();
            run_out(&mut st, &mut out, &mut done);
            assert_eq!(done.len(), 3);
            let alone: Vec<u64> = done
                .iter()
                .filter(|h| h.started == SimTime(10))
                .map(|h| h.id.0)
                .collect();
            assert_eq!(alone, vec![first], "{d:?}");
        }
    }

    #[test]
    fn an_aborted_request_leaves_at_once_when_waiting_and_after_the_iteration_when_running() {
        // One sequence at a time: request 0 (100 in, 400 out) runs, request 1 waits.
        // Aborting 1 reports it at once, unserved and free; aborting 0 in the middle of
        // its decode reports it at the end of the iteration in progress (never later),
        // charged the iterations it was in, with its KV blocks freed; request 2 then runs alone
        // and takes exactly its solo time.
        let cfg = ReplicaConfig {
            max_num_seqs: 1,
            ..ReplicaConfig::new(1000).unwrap()
        };
        for skipping in [true, false] {
            let cfg = ReplicaConfig {
                decode_skipping: skipping,
                ..cfg.clone()
            };
            let mut st = station(1, cfg.clone(), false);
            let mut out = StationOutput::default();
            submit(&mut st, SimTime(0), 0, llm(100, 400), &mut out);
            submit(&mut st, SimTime(0), 1, llm(10, 5), &mut out);
            assert!(st.abort(SimTime(0), JobId(1), &mut out));
            assert_eq!(out.done.len(), 1);
            let d1 = out.done.remove(0);
            assert_eq!(
                (d1.id, d1.finished, d1.busy),
                (JobId(1), SimTime(0), SimDuration::ZERO)
            );
            assert!(!st.abort(SimTime(0), JobId(1), &mut out), "reported once");
            // Run to 100 us (well into request 0's 400-token decode, about 2 us a token).
            let cut = SimTime(100_000);
            let mut heap = Vec::new();
            let mut done = Vec::new();
            step_until(&mut st, &mut out, &mut heap, &mut done, cut);
            assert!(done.is_empty());
            assert!(st.abort(cut, JobId(0), &mut out));
            assert!(
                out.done.is_empty(),
                "running: it finishes the iteration first"
            );
            submit(&mut st, cut, 2, llm(100, 40), &mut out);
            out.wakeups.append(&mut heap);
            run_out(&mut st, &mut out, &mut done);
            done.sort_by_key(|d| d.id);
            let (d0, d2) = (done[0], done[1]);
            assert_eq!(done.len(), 2);
            assert!(d0.finished > cut && d0.finished < cut + SimDuration(10_000));
            // Alone on the replica: charged every iteration it was in, to its abort.
            assert_eq!(d0.busy, d0.finished - d0.started);
            assert!((d0.usd - d0.busy.as_nanos() as f64 * 3.6 / 3.6e12).abs() < 1e-15);
            assert!(st.replicas()[0].check_invariants().is_ok());
            assert_eq!(st.replicas()[0].kv_used_blocks(), 0);
            // Request 2 started when 0 left and ran alone.
            let mut solo = station(1, cfg.clone(), false);
            let mut o = StationOutput::default();
            submit(&mut solo, SimTime(0), 0, llm(100, 40), &mut o);
            let mut d = Vec::new();
            run_out(&mut solo, &mut o, &mut d);
            assert_eq!(d2.started, d0.finished);
            assert_eq!(d2.finished - d2.started, d[0].finished - d[0].started);
        }
    }

    #[test]
    fn first_tokens_are_reported_when_produced_and_once_per_request() {
        // Request 0 (100 in, 400 out) on spot replica 0 reports its first token at
        // exactly submission + TTFT, long before it finishes; the replica is lost after
        // that token and the request is recomputed on replica 1, whose new first token
        // is not reported again.
        let mut st = station(2, ReplicaConfig::new(1000).unwrap(), false)
            .with_spot(SpotConfig {
                replicas: 1,
                usd_per_replica_hour: 1.8,
                recompute: true,
                move_waiting_on_notice: false,
                counts_reclaims: false,
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .with_first_tokens();
        let mut out = StationOutput::default();
        submit(&mut st, SimTime(0), 0, llm(100, 400), &mut out);
        let mut heap: Vec<(SimTime, u64)> = out.wakeups.drain(..).collect();
        while out.first_tokens.is_empty() {
            let i = (0..heap.len()).min_by_key(|&i| heap[i]).expect("a wake-up");
            let (t, token) = heap.swap_remove(i);
            st.wake(t, token, &mut out);
            heap.append(&mut out.wakeups);
            assert!(out.done.is_empty());
        }
        let first = out.first_tokens[0];
        assert_eq!(
            (first.id, first.at),
            (JobId(0), SimTime(first.ttft.as_nanos()))
        );
        let cut = first.at;
        assert_eq!(st.preempt(cut, &[0], &mut out), 1);
        out.wakeups.append(&mut heap);
        let mut done = Vec::new();
        run_out(&mut st, &mut out, &mut done);
        assert_eq!(done.len(), 1);
        assert!(done[0].llm.is_some_and(|l| l.preemptions >= 1));
        assert!(done[0].finished > cut);
        assert_eq!(out.first_tokens, vec![first]);
        // Without the option nothing is reported.
        let mut plain = station(1, ReplicaConfig::new(1000).unwrap(), false);
        let mut o = StationOutput::default();
        submit(&mut plain, SimTime(0), 0, llm(100, 400), &mut o);
        let mut d = Vec::new();
        run_out(&mut plain, &mut o, &mut d);
        assert!(o.first_tokens.is_empty());
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].llm.map(|l| l.ttft), Some(first.ttft));
    }

    #[test]
    fn a_noticed_spot_replica_takes_nothing_new_and_loses_only_what_is_left() {
        // Replica 0 (spot) runs request 0 (100 in, 400 out), replica 1 (on demand)
        // request 1 (100 in, 800 out). At 100 us replica 0 gets a preemption notice;
        // request 2, which the least-outstanding-tokens picker would give replica 0,
        // goes to replica 1. With time left, request 0 finishes on replica 0 exactly
        // as it would have and the replica leaves with nothing lost; with the notice
        // running out at 200 us, request 0 is lost (`recompute = false`).
        for notice_runs_out in [false, true] {
            let mut st = station(2, ReplicaConfig::new(1000).unwrap(), false)
                .with_spot(SpotConfig {
                    replicas: 1,
                    usd_per_replica_hour: 1.8,
                    recompute: false,
                    move_waiting_on_notice: false,
                    counts_reclaims: false,
                })
                .unwrap_or_else(|e| panic!("{e}"));
            let mut out = StationOutput::default();
            submit(&mut st, SimTime(0), 0, llm(100, 400), &mut out);
            submit(&mut st, SimTime(0), 1, llm(100, 800), &mut out);
            let mut heap: Vec<(SimTime, u64)> = out.wakeups.drain(..).collect();
            let mut done = Vec::new();
            let notice = SimTime(100_000);
            step_until(&mut st, &mut out, &mut heap, &mut done, notice);
            assert!(done.is_empty());
            assert_eq!(st.spot_up(), 1);
            assert_eq!(st.spot_notice(notice, &[0], &mut out), [0]);
            assert_eq!(st.spot_up(), 0, "a noticed replica is not picked again");
            assert!(st.spot_notice(notice, &[0], &mut out).is_empty());
            submit(&mut st, notice, 2, llm(10, 5), &mut out);
            if notice_runs_out {
                let end = SimTime(200_000);
                step_until(&mut st, &mut out, &mut heap, &mut done, end);
                assert!(done.iter().all(|d| d.id != JobId(0)));
                assert!(st.spot_lost(end, 0, &mut out));
                assert_eq!(out.lost.len(), 1);
                assert_eq!(out.lost[0].id, JobId(0));
                assert_eq!(out.lost[0].finished, end);
                out.lost.clear();
                let cap = st.capacity_report(end).unwrap_or_default();
                assert_eq!((cap.spot_preemptions, cap.victims_failed), (1, 1));
                assert_eq!(cap.drained_in_notice, 0);
                out.wakeups.append(&mut heap);
                run_out(&mut st, &mut out, &mut done);
                assert!(done.iter().all(|d| d.id != JobId(0)));
            } else {
                out.wakeups.append(&mut heap);
                run_out(&mut st, &mut out, &mut done);
                done.sort_by_key(|d| d.id);
                assert_eq!(done.len(), 3);
                let last = done.iter().map(|d| d.finished).max().unwrap_or_default();
                assert!(!st.spot_lost(last, 0, &mut out), "it left when it emptied");
                assert!(out.lost.is_empty());
                let cap = st.capacity_report(last).unwrap_or_default();
                assert_eq!((cap.spot_preemptions, cap.drained_in_notice), (1, 1));
                assert_eq!((cap.victims_failed, cap.victims_recomputed), (0, 0));
                // Request 0 ran alone on replica 0 from start to end: the solo time.
                let mut solo = station(1, ReplicaConfig::new(1000).unwrap(), false);
                let mut o = StationOutput::default();
                submit(&mut solo, SimTime(0), 0, llm(100, 400), &mut o);
                let mut d = Vec::new();
                run_out(&mut solo, &mut o, &mut d);
                assert_eq!(done[0].finished, d[0].finished);
                // Replica 0 is paid (spot) until request 0 finished, not to the end.
                let gpu = st.gpu_report(last).unwrap_or_default();
                assert_eq!(gpu.per_replica[0].finished, 1);
                assert_eq!(gpu.per_replica[1].finished, 2);
                let spot_h = done[0].finished.as_nanos() as f64 / 3.6e12;
                assert!((cap.spot_replica_hours - spot_h).abs() < 1e-12, "{cap:?}");
            }
        }
    }

    #[test]
    fn at_a_notice_move_waiting_re_sends_the_queue_and_keep_waiting_serves_it() {
        // One sequence per replica. Replica 0 (spot) runs request 0 (100 in, 400 out)
        // with request 1 (100 in, 300 out) waiting behind it (round robin sends 0 and
        // 1 to replica 0 and 1; 2 goes to replica 0's queue while 1 runs on replica 1:
        // request 1 is the one on replica 1). At 100 us replica 0 gets a notice.
        // `move_waiting`: request 2 leaves replica 0 at once for replica 1's queue and
        // runs there after request 1, alone; `keep_waiting`: it runs on replica 0
        // after request 0. Either way it takes exactly its solo time once it starts.
        let cfg = ReplicaConfig {
            max_num_seqs: 1,
            ..ReplicaConfig::defaults(1000)
        }
        .validated()
        .unwrap_or_else(|e| panic!("{e}"));
        let solo = |input: u32, output: u32| {
            let mut one = station(1, cfg.clone(), true);
            let mut o = StationOutput::default();
            submit(&mut one, SimTime(0), 0, llm(input, output), &mut o);
            let mut d = Vec::new();
            run_out(&mut one, &mut o, &mut d);
            d[0].finished.as_nanos()
        };
        let (t0, t1, t2) = (solo(100, 400), solo(100, 300), solo(10, 5));
        assert!(t1 < t0);
        for move_waiting in [false, true] {
            let mut st = station(2, cfg.clone(), true)
                .with_spot(SpotConfig {
                    replicas: 1,
                    usd_per_replica_hour: 1.8,
                    recompute: true,
                    move_waiting_on_notice: move_waiting,
                    counts_reclaims: false,
                })
                .unwrap_or_else(|e| panic!("{e}"));
            let mut out = StationOutput::default();
            submit(&mut st, SimTime(0), 0, llm(100, 400), &mut out);
            submit(&mut st, SimTime(0), 1, llm(100, 300), &mut out);
            submit(&mut st, SimTime(0), 2, llm(10, 5), &mut out);
            assert_eq!(
                (st.replicas[0].waiting_len(), st.replicas[1].waiting_len()),
                (1, 0)
            );
            let mut heap: Vec<(SimTime, u64)> = out.wakeups.drain(..).collect();
            let mut done = Vec::new();
            let notice = SimTime(100_000);
            step_until(&mut st, &mut out, &mut heap, &mut done, notice);
            assert_eq!(st.spot_notice(notice, &[0], &mut out), [0]);
            let queued = (st.replicas[0].waiting_len(), st.replicas[1].waiting_len());
            assert_eq!(queued, if move_waiting { (0, 1) } else { (1, 0) });
            out.wakeups.append(&mut heap);
            run_out(&mut st, &mut out, &mut done);
            done.sort_by_key(|d| d.id);
            assert_eq!(done.len(), 3);
            let finished: Vec<u64> = done.iter().map(|d| d.finished.as_nanos()).collect();
            let behind = if move_waiting { t1 } else { t0 };
            assert_eq!(
                finished,
                [t0, t1, behind + t2],
                "move_waiting {move_waiting}"
            );
            // Submitted at 0 wherever it ran: its latency holds the wait.
            assert_eq!(done[2].submitted, SimTime(0));
            let cap = st
                .capacity_report(SimTime(t0.max(behind + t2)))
                .unwrap_or_default();
            assert_eq!(cap.moved_waiting, u64::from(move_waiting));
            assert_eq!((cap.spot_preemptions, cap.drained_in_notice), (1, 1));
            assert_eq!((cap.victims_recomputed, cap.victims_failed), (0, 0));
        }
    }

    #[test]
    fn a_reclaim_takes_its_replicas_together_and_re_sends_only_to_the_others() {
        // Three spot replicas, least outstanding tokens, one sequence each under the
        // notice. A reclaim of two (`ks = [0, 0]`: replica 0, then the first of those
        // left, replica 1) re-sends their requests to replica 2 only, although replica
        // 1 has the fewest tokens left: taken one after the other, replica 0's request
        // would go to replica 1 and be lost (or moved) a second time.
        let spot = SpotConfig {
            replicas: 3,
            usd_per_replica_hour: 1.8,
            recompute: true,
            move_waiting_on_notice: true,
            counts_reclaims: true,
        };
        // Without notice: replica 0 runs request 0, replica 1 request 1 (both 100 in,
        // 400 out), replica 2 request 2 (100 in, 800 out).
        let mut st = station(3, ReplicaConfig::new(1000).unwrap(), false)
            .with_spot(spot)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = StationOutput::default();
        submit(&mut st, SimTime(0), 0, llm(100, 400), &mut out);
        submit(&mut st, SimTime(0), 1, llm(100, 400), &mut out);
        submit(&mut st, SimTime(0), 2, llm(100, 800), &mut out);
        let (mut heap, mut done) = (Vec::new(), Vec::new());
        let cut = SimTime(100_000);
        step_until(&mut st, &mut out, &mut heap, &mut done, cut);
        assert!(done.is_empty());
        assert_eq!(st.preempt(cut, &[0, 0], &mut out), 2);
        assert_eq!(st.spot_up(), 1);
        assert_eq!(st.replicas[2].waiting_len(), 2, "both went to replica 2");
        assert!(out.lost.is_empty());
        out.wakeups.append(&mut heap);
        run_out(&mut st, &mut out, &mut done);
        assert_eq!(done.len(), 3);
        let last = done.iter().map(|d| d.finished).max().unwrap_or_default();
        let cap = st.capacity_report(last).unwrap_or_default();
        assert_eq!((cap.spot_preemptions, cap.spot_reclaims), (2, Some(1)));
        assert_eq!(
            (cap.victims_recomputed, cap.moved_waiting),
            (2, 0),
            "{cap:?}"
        );
        let gpu = st.gpu_report(last).unwrap_or_default();
        assert_eq!(gpu.per_replica[2].finished, 3);
        // An index past the replicas up takes nothing.
        assert_eq!(st.preempt(last, &[1], &mut out), 0);

        // With a notice and `move_waiting`: replicas 0 and 1 each run one request with
        // one waiting behind it (requests 3 and 4), replica 2 runs a long one.
        let cfg = ReplicaConfig {
            max_num_seqs: 1,
            ..ReplicaConfig::defaults(1000)
        }
        .validated()
        .unwrap_or_else(|e| panic!("{e}"));
        let mut st = station(3, cfg, false)
            .with_spot(spot)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = StationOutput::default();
        for (id, (i, o)) in [(100, 400), (100, 400), (100, 2000), (10, 5), (10, 5)]
            .into_iter()
            .enumerate()
        {
            submit(&mut st, SimTime(0), id as u64, llm(i, o), &mut out);
        }
        let waiting = |st: &GpuPoolStation| {
            st.replicas
                .iter()
                .map(|r| r.waiting_len())
                .collect::<Vec<_>>()
        };
        assert_eq!(waiting(&st), [1, 1, 0]);
        let (mut heap, mut done) = (Vec::new(), Vec::new());
        step_until(&mut st, &mut out, &mut heap, &mut done, cut);
        assert_eq!(st.spot_notice(cut, &[0, 0], &mut out), [0, 1]);
        assert_eq!(st.spot_up(), 1);
        assert_eq!(waiting(&st), [0, 0, 2], "both queues went to replica 2");
        out.wakeups.append(&mut heap);
        run_out(&mut st, &mut out, &mut done);
        assert_eq!(done.len(), 5);
        let last = done.iter().map(|d| d.finished).max().unwrap_or_default();
        let cap = st.capacity_report(last).unwrap_or_default();
        assert_eq!((cap.spot_preemptions, cap.spot_reclaims), (2, Some(1)));
        assert_eq!(
            (cap.moved_waiting, cap.drained_in_notice),
            (2, 2),
            "{cap:?}"
        );
        // With reclaim_size 1 the count is not reported (it equals spot_preemptions).
        let mut one = station(1, ReplicaConfig::new(1000).unwrap(), false)
            .with_spot(SpotConfig {
                counts_reclaims: false,
                ..spot
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one.preempt(SimTime(0), &[0], &mut out), 1);
        let cap = one.capacity_report(SimTime(0)).unwrap_or_default();
        assert_eq!((cap.spot_preemptions, cap.spot_reclaims), (1, None));
    }

    #[test]
    fn a_preempted_spot_replica_loses_its_work_and_the_request_is_recomputed() {
        let spot = |recompute| SpotConfig {
            replicas: 1,
            usd_per_replica_hour: 1.8,
            recompute,
            move_waiting_on_notice: false,
            counts_reclaims: false,
        };
        for recompute in [true, false] {
            let mut st = station(2, ReplicaConfig::new(1000).unwrap(), false)
                .with_spot(spot(recompute))
                .unwrap_or_else(|e| panic!("{e}"));
            let mut out = StationOutput::default();
            // Replica 0 (spot) takes the first request, replica 1 the second.
            submit(&mut st, SimTime(0), 0, llm(100, 400), &mut out);
            submit(&mut st, SimTime(0), 1, llm(10, 5), &mut out);
            assert_eq!(st.spot_up(), 1);
            // Run to 100us: part of request 0 is computed (and charged) on replica 0.
            let cut = SimTime(100_000);
            let mut heap = Vec::new();
            let mut done = Vec::new();
            step_until(&mut st, &mut out, &mut heap, &mut done, cut);
            assert!(done.iter().all(|d| d.id == JobId(1)), "{done:?}");
            assert_eq!(st.preempt(cut, &[0], &mut out), 1);
            assert_eq!(st.spot_up(), 0);
            let cap = st.capacity_report(cut).unwrap_or_default();
            assert_eq!(cap.spot_preemptions, 1);
            out.wakeups.extend(heap);
            if recompute {
                assert!(out.lost.is_empty());
                assert_eq!(cap.victims_recomputed, 1);
                run_out(&mut st, &mut out, &mut done);
                done.sort_by_key(|d| d.id);
                let d = done[0];
                // Counted from its first submission, charged for both attempts: the
                // lost work at the spot price plus the rerun on demand.
                assert_eq!(d.submitted, SimTime(0));
                assert!(d.llm.is_some_and(|l| l.preemptions >= 1));
                let rerun_usd = (d.busy.as_nanos() as f64) * 3.6 / 3.6e12;
                assert!(d.usd < rerun_usd, "spot time is cheaper: {d:?}");
                assert!(d.usd > 0.0);
                let gpu = st.gpu_report(d.finished).unwrap_or_default();
                assert_eq!(gpu.per_replica[1].finished, 2);
            } else {
                assert_eq!(cap.victims_failed, 1);
                assert_eq!(out.lost.len(), 1);
                let lost = out.lost[0];
                assert_eq!(lost.id, JobId(0));
                assert!(lost.busy > SimDuration::ZERO);
                assert!((lost.usd - lost.busy.as_nanos() as f64 * 1.8 / 3.6e12).abs() < 1e-12);
                out.lost.clear();
                run_out(&mut st, &mut out, &mut done);
                assert!(done.iter().all(|d| d.id != JobId(0)));
            }
        }
    }

    #[test]
    fn a_request_moved_off_a_lost_spot_replica_preempts_a_worse_ranked_one() {
        // Two replicas of one sequence each, round robin, under `priority`: interactive
        // I (priority 9) on spot replica 0, batch B (priority 0) on replica 1. Replica 0
        // is lost at 100us: I moves to replica 1, where with priority preemption it
        // preempts B at the next boundary, and without it waits for B.
        let mut finish = Vec::new();
        for preempt in [false, true] {
            let spot = SpotConfig {
                replicas: 1,
                usd_per_replica_hour: 1.8,
                recompute: true,
                move_waiting_on_notice: false,
                counts_reclaims: false,
            };
            let cfg = ReplicaConfig {
                max_num_seqs: 1,
                ..ReplicaConfig::new(1000).unwrap_or_else(|e| panic!("{e}"))
            };
            let mut st = station(2, cfg, true)
                .with_spot(spot)
                .and_then(|s| s.with_discipline(DisciplineSpec::Priority))
                .and_then(|s| s.with_priority_preemption(preempt))
                .unwrap_or_else(|e| panic!("{e}"));
            let mut out = StationOutput::default();
            for (id, priority) in [(0u64, 9), (1, 0)] {
                let job = HopJob {
                    id: JobId(id),
                    work: Work::Llm(Box::new(llm(100, 400))),
                };
                let meta = JobMeta {
                    priority,
                    ..JobMeta::default()
                };
                st.submit_meta(SimTime(0), job, &meta, &mut out);
            }
            let cut = SimTime(100_000);
            let mut heap = Vec::new();
            let mut done = Vec::new();
            step_until(&mut st, &mut out, &mut heap, &mut done, cut);
            assert!(done.is_empty());
            assert_eq!(st.preempt(cut, &[0], &mut out), 1);
            out.wakeups.extend(heap);
            run_out(&mut st, &mut out, &mut done);
            done.sort_by_key(|d| d.id);
            assert_eq!(done.len(), 2);
            let p: Vec<u32> = done
                .iter()
                .map(|d| d.llm.map_or(0, |l| l.preemptions))
                .collect();
            let gpu = st
                .gpu_report(done[1].finished.max(done[0].finished))
                .unwrap_or_default();
            for r in st.replicas() {
                r.check_invariants().unwrap_or_else(|e| panic!("{e}"));
            }
            if preempt {
                // I's lost attempt and B's preemption for it.
                assert_eq!(p, vec![1, 1]);
                assert!(done[0].finished < done[1].finished);
                assert_eq!(gpu.per_replica[1].preemptions, 1);
            } else {
                assert_eq!(p, vec![1, 0]);
                assert!(done[0].started >= done[1].finished);
                assert_eq!(gpu.per_replica[1].preemptions, 0);
            }
            finish.push(done[0].finished);
        }
        assert!(finish[1] < finish[0], "{finish:?}");
    }

    /// Two one-sequence replicas under `priority`, round robin: `(id, priority, output
    /// tokens)` submitted in turn (1 us apart), run to the end; the finished hops by id.
    fn two_slot_pool(queue_at: QueueAt, preempt: bool, reqs: &[(u64, i32, u32)]) -> Vec<HopDone> {
        let cfg = ReplicaConfig {
            max_num_seqs: 1,
            ..ReplicaConfig::new(1000).unwrap_or_else(|e| panic!("{e}"))
        };
        let mut st = station(2, cfg, true)
            .with_discipline(DisciplineSpec::Priority)
            .and_then(|s| s.with_priority_preemption(preempt))
            .map(|s| s.with_queue_at(queue_at))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = StationOutput::default();
        let mut heap = Vec::new();
        let mut done = Vec::new();
        for (k, &(id, priority, output)) in reqs.iter().enumerate() {
            let t = SimTime(k as u64 * 1000);
            step_until(&mut st, &mut out, &mut heap, &mut done, t);
            let job = HopJob {
                id: JobId(id),
                work: Work::Llm(Box::new(llm(10, output))),
            };
            let meta = JobMeta {
                priority,
                ..JobMeta::default()
            };
            st.submit_meta(t, job, &meta, &mut out);
            let load = st.load_now().unwrap_or_default();
            let on_replicas: u32 = st.replicas().iter().map(|r| r.waiting_len()).sum();
            // What waits is in the pool's queue or on a replica, never both.
            assert_eq!(load.queued, on_replicas as u64 + st.parked.len() as u64);
            if queue_at == QueueAt::Pool && !preempt {
                assert!(
                    st.replicas()
                        .iter()
                        .all(|r| r.running_len() + r.waiting_len() <= 1),
                    "a replica got more than it has room for"
                );
            }
        }
        out.wakeups.append(&mut heap);
        run_out(&mut st, &mut out, &mut done);
        for r in st.replicas() {
            r.check_invariants().unwrap_or_else(|e| panic!("{e}"));
        }
        done.sort_by_key(|d| d.id);
        assert_eq!(done.len(), reqs.len());
        done
    }

    #[test]
    fn the_pools_queue_sends_the_best_ranked_request_to_the_first_replica_with_room() {
        // Short S (50 tokens) on replica 0, long A (2,000) on replica 1; then batch L
        // (priority 0) and interactive H (priority 9), while both replicas are full.
        let reqs = [(0, 0, 50), (1, 0, 2000), (2, 0, 50), (3, 9, 50)];
        // On arrival, round robin puts L behind S and H behind A: H waits for A.
        let at_replica = two_slot_pool(QueueAt::Replica, false, &reqs);
        assert_eq!(at_replica[2].started, at_replica[0].finished);
        assert_eq!(at_replica[3].started, at_replica[1].finished);
        // In the pool's queue H is ahead of L and takes the first slot that frees, S's;
        // L follows H there, long before A ends.
        let at_pool = two_slot_pool(QueueAt::Pool, false, &reqs);
        assert_eq!(at_pool[3].started, at_pool[0].finished);
        assert_eq!(at_pool[2].started, at_pool[3].finished);
        assert!(at_pool[2].finished < at_pool[1].finished);
        // Waiting in the pool counts as waiting: TTFT and latency from submission.
        assert_eq!(at_pool[3].submitted, SimTime(3000));
        // Under FIFO (all one priority) the pool's queue is plain arrival order.
        let fifo = two_slot_pool(
            QueueAt::Pool,
            false,
            &[(0, 0, 50), (1, 0, 2000), (2, 0, 50), (3, 0, 50)],
        );
        assert_eq!(fifo[2].started, fifo[0].finished);
        assert_eq!(fifo[3].started, fifo[2].finished);
    }

    #[test]
    fn the_pools_queue_preempts_the_worst_ranked_sequence_in_the_pool() {
        // A (priority 5) runs on replica 0, B (priority 0) on replica 1, both long;
        // interactive H (priority 9) finds no room anywhere.
        let reqs = [(0, 5, 2000), (1, 0, 2000), (2, 9, 50)];
        let preemptions = |d: &[HopDone]| -> Vec<u32> {
            d.iter()
                .map(|h| h.llm.map_or(0, |l| l.preemptions))
                .collect()
        };
        // Sent on arrival (round robin: replica 0), H preempts A, the more important.
        let at_replica = two_slot_pool(QueueAt::Replica, true, &reqs);
        assert_eq!(preemptions(&at_replica), vec![1, 0, 0]);
        // From the pool's queue H goes where the worst-ranked sequence runs: B's.
        let at_pool = two_slot_pool(QueueAt::Pool, true, &reqs);
        assert_eq!(preemptions(&at_pool), vec![0, 1, 0]);
        assert!(at_pool[2].finished < at_pool[0].finished);
        assert!(at_pool[0].finished < at_pool[1].finished);
        // Without priority preemption it waits for a slot.
        let waits = two_slot_pool(QueueAt::Pool, false, &reqs);
        assert_eq!(preemptions(&waits), vec![0, 0, 0]);
        assert!(waits[2].started >= waits[0].finished.min(waits[1].finished));
        // A request of a rank no running one is worse than preempts nothing.
        let equal = two_slot_pool(
            QueueAt::Pool,
            true,
            &[(0, 5, 2000), (1, 5, 2000), (2, 5, 50)],
        );
        assert_eq!(preemptions(&equal), vec![0, 0, 0]);
    }

    #[test]
    fn service_work_is_a_no_op_and_stale_wakes_are_ignored() {
        let mut st = station(1, ReplicaConfig::new(100).unwrap(), false);
        let mut out = StationOutput::default();
        st.submit(
            SimTime(5),
            HopJob {
                id: JobId(9),
                work: Work::Service(SimDuration::from_secs(1)),
            },
            &mut out,
        );
        assert_eq!(out.done.len(), 1);
        assert_eq!(out.done[0].finished, SimTime(5));
        assert!(out.done[0].llm.is_none() && out.wakeups.is_empty());
        out.clear();
        st.wake(SimTime(6), 12345, &mut out);
        assert!(out.done.is_empty() && out.wakeups.is_empty());
        assert_eq!(st.gpu_report(SimTime(7)).map(|r| r.service_noops), Some(1));
    }
}

//! The run loop: a single-threaded discrete-event simulation of one scenario.
//!
//! Event order is (time, insertion sequence). Arrivals of each class come from the
//! class's own stream; each workflow draws everything it asks for (tokens, service
//! times, branch counts, failures, loop decisions) from its own stream, seeded by the
//! class and the workflow number, so a policy that reorders or reroutes hops never
//! changes what any workflow asks for (common random numbers).
//!
//! A workflow is a graph of nodes (see [`crate::workflow`]). A node starts when all its
//! parents have finished; its prompt inherits a fraction of their context. Fan-out nodes
//! run as parallel branches (optionally in waves) joined by all or a quorum; loops
//! re-run a sub-graph with some probability; a workflow completes when every sink node
//! has finished, and fails, is abandoned or is still in flight otherwise. Work that
//! keeps running after its workflow's outcome is decided (quorum stragglers, abandoned
//! or failed workflows) is still charged, as waste.

use crate::event_queue::EventQueue;
use crate::gpu::LlmRequest;
use crate::gpu::gpu_station::{
    GpuPoolStation, LeastOutstandingRequests, RandomPicker, ReservedConfig, RoundRobin, SpotConfig,
};
use crate::metrics::{
    Breakdown, ClassStats, HopRecord, HopSample, HopStatus, PoolStats, RunResult, SpotReclaim,
    ToolStats, WorkflowHops, WorkflowOutcome, WorkflowRecord,
};
use crate::policy::{
    Autoscaler, BuiltinPolicies, JobMeta, PolicyFactory, PoolView, RouteRequest, ScaleObservation,
    TierRouter,
};
use crate::queue_station::QueueStation;
use crate::rng::{SimRng, StreamFactory, WorkflowRng, workflow_stream};
use crate::scenario::{
    AdmissionAction, Arrival, HopRouting, OnEscalationRefused, OnNotice, OnPreempt, OnTimeout,
    RateLimit, RecordedRequest, Scenario, WorkflowClass,
};
use crate::station::{
    ApiCall, HopDone, HopJob, JobId, Refused, Station, StationOutput, StationReport, Work,
};
use crate::time::{SimDuration, SimTime};
use crate::workflow::NodeKind;
use rand::RngExt;
use rand_distr::{Distribution, Exp1};
use std::collections::VecDeque;

#[derive(Clone, Copy, Debug)]
enum Event {
    /// Next open-loop arrival of a class.
    Arrival {
        class: u32,
    },
    /// A closed-loop user starts a workflow.
    UserStart {
        class: u32,
        user: u32,
    },
    Wake {
        station: u32,
        token: u64,
    },
    /// A workflow timer; its details are in the timer slab (keeps events small).
    Timer {
        id: u32,
    },
    MeasureStart,
    /// Record a timeseries row.
    Sample,
    /// A pool's autoscaler looks at its load.
    AutoscaleTick {
        pool: u32,
    },
    /// A server of a pool has finished booting.
    BootDone {
        pool: u32,
    },
    /// A pre-warm window of a pool's autoscaler opens: the autoscaler looks at once.
    Prewarm {
        pool: u32,
    },
    /// A candidate spot preemption of a pool (thinning at the most events per hour its
    /// spot replicas can have; accepted in proportion to the rate of those up).
    SpotPreempt {
        pool: u32,
    },
    /// A replacement spot replica of a pool has booted.
    SpotBootDone {
        pool: u32,
    },
    /// The preemption notice of a pool's spot replica `replica` ran out.
    SpotLost {
        pool: u32,
        replica: u32,
    },
    /// Tokens in flight of a pool with held hops (a `queue` watermark) fell: release
    /// the hops at its door that now fit.
    DoorOpen {
        pool: u32,
    },
    /// The same for a lane's `queue` watermark (the lane's tokens in flight fell).
    LaneDoorOpen {
        lane: u32,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct IntervalCounters {
    arrivals: u64,
    completions: u64,
    failed: u64,
    rejected: u64,
    abandoned: u64,
    in_flight: u64,
    usd_variable: f64,
}

#[derive(Clone, Copy, Debug)]
struct TimerRec {
    slot: u32,
    wf_id: u64,
    what: Timer,
}

#[derive(Clone, Copy, Debug)]
enum Timer {
    /// The user gives up on the workflow.
    Abandon,
    /// The caller stops waiting for hop `seq`.
    HopTimeout { hop: u32, seq: u64 },
    /// The caller stops waiting for a hop still held at a door (`id`): pool
    /// `door`'s, or lane `door - pools`'s.
    HeldTimeout { door: u32, id: u64 },
    /// A human review at `node` (branch) is done.
    HumanDone {
        node: u32,
        branch: u32,
        epoch: u32,
        context: u64,
    },
    /// Try a model hop again after a 429 (or an outage), honouring retry-after.
    RouteRetry {
        node: u32,
        branch: u32,
        epoch: u32,
        attempt: u32,
        context: u64,
        input: u64,
        output: u64,
    },
    /// Redo an escalation call that failed with an error, after its backoff.
    EscalationRetry {
        node: u32,
        branch: u32,
        epoch: u32,
        attempt: u32,
        context: u64,
        input: u64,
        output: u64,
        cascade: u32,
    },
    /// A replayed session's turn may start now (its recorded arrival).
    NotBefore {
        node: u32,
        branch: u32,
        epoch: u32,
        context: u64,
    },
    /// Retry a failed tool call.
    ToolRetry {
        node: u32,
        branch: u32,
        epoch: u32,
        attempt: u32,
        context: u64,
    },
}

const NO_BRANCH: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Completed,
    Failed,
    Abandoned,
    Rejected,
}

#[derive(Clone, Debug, Default)]
struct NodeState {
    pending_parents: u32,
    /// Context accumulated from finished parents (before the inherit fraction).
    context_in: u64,
    done: bool,
    loops: u32,
    /// Bumped when a loop resets the node: completions of older runs are ignored.
    epoch: u32,
    // Fan-out bookkeeping (head nodes only).
    branches_total: u32,
    launched: u32,
    finished: u32,
    in_flight: u32,
    needed: u32,
    joined: bool,
    branch_context_sum: u64,
}

struct Workflow {
    id: u64,
    class: u32,
    arrived: SimTime,
    counted: bool,
    user: Option<u32>,
    /// Index of the recorded request this workflow replays.
    record: Option<u32>,
    /// The workflow's number within its class (seeds its streams).
    number: u64,
    rng: LazyStream,
    usd: f64,
    tokens: u64,
    fan_out: u32,
    loops: u32,
    outcome: Option<Outcome>,
    /// Hops and timers of this workflow still pending (hops only; timers are checked by id).
    outstanding: u32,
    sinks_remaining: u32,
    nodes: Vec<NodeState>,
    active: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HopKind {
    Model,
    Escalation,
    Tool { attempt: u32 },
}

#[derive(Clone, Copy, Debug)]
struct Hop {
    seq: u64,
    slot: u32,
    wf_id: u64,
    node: u32,
    branch: u32,
    epoch: u32,
    kind: HopKind,
    station: u32,
    context_in: u64,
    input_tokens: u64,
    output_tokens: u64,
    timed_out: bool,
    /// Which attempt of the call this is (0: the first; model and escalation hops).
    attempt: u32,
    /// An escalation of a tier cascade: the tier it runs on (`NO_TIER` otherwise: a
    /// node's own `escalate`, or not an escalation).
    cascade: u32,
}

/// `Hop::cascade` of a hop that is not a tier-cascade escalation.
const NO_TIER: u32 = u32::MAX;

/// A pool's circuit breaker: closed (counting consecutive failures and, for an
/// error-rate breaker, the outcomes of the calls in its window), open until a time,
/// then half-open (one probe at a time; its success closes, its failure reopens).
#[derive(Clone, Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<SimTime>,
    probing: bool,
    /// Outcomes (time, failed) of the calls in the error-rate window, while closed.
    window: VecDeque<(SimTime, bool)>,
    window_failed: u32,
}

impl BreakerState {
    /// Records a call's outcome in the error-rate window (dropping calls older than
    /// `span`) and returns (calls, failed) in the window.
    fn record(&mut self, now: SimTime, span: SimDuration, failed: bool) -> (u32, u32) {
        self.window.push_back((now, failed));
        self.window_failed += failed as u32;
        let start = SimTime(now.as_nanos().saturating_sub(span.as_nanos()));
        while let Some(&(t, f)) = self.window.front() {
            if t > start {
                break;
            }
            self.window.pop_front();
            self.window_failed -= f as u32;
        }
        (self.window.len() as u32, self.window_failed)
    }
}

/// Where an admitted hop goes, by the pool's tokens-in-flight watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    Direct,
    /// Above a `queue` watermark (or behind hops held there): held at the door, counted.
    OverWatermark,
    /// Above a `degrade` watermark: to this pool instead.
    Degrade(usize),
}

/// A model hop admitted to a pool but held at its door by a `queue` watermark until
/// the pool's tokens in flight leave room for it.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// Identifies it for its timeout timer.
    id: u64,
    /// When the caller started waiting for this call: its `timeout` runs from here,
    /// door wait included.
    since: SimTime,
    slot: u32,
    node: u32,
    branch: u32,
    epoch: u32,
    attempt: u32,
    context: u64,
    input: u64,
    output: u64,
    /// An escalation call (its `Hop::cascade`: a cascade tier or `NO_TIER`), or `None`
    /// for a model hop.
    escalation: Option<u32>,
}

/// Why a pool refused a hop (`pools.<name>.refusals_by_cause` keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Down,
    MaxQueue,
    RateLimit,
    TokensInFlight,
    Shed,
    /// A 429 storm (fault injection).
    Storm,
}

impl Refusal {
    fn key(self) -> &'static str {
        match self {
            Refusal::Down => "down",
            Refusal::MaxQueue => "max_queue",
            Refusal::RateLimit => "rate_limit",
            Refusal::TokensInFlight => "tokens_in_flight",
            Refusal::Shed => "shed",
            Refusal::Storm => "storm",
        }
    }

    /// The cause a workflow rejected after this refusal is reported with.
    fn cause(self, pool: &str) -> String {
        match self {
            Refusal::Down => format!("{pool} down"),
            Refusal::MaxQueue | Refusal::RateLimit => format!("429 from {pool}"),
            Refusal::TokensInFlight => format!("429 from {pool} (tokens in flight)"),
            Refusal::Shed => format!("429 from {pool} (shed)"),
            Refusal::Storm => format!("429 from {pool} (storm)"),
        }
    }
}

/// A token bucket in picotokens (integer arithmetic): refills at the rate, holds at
/// most `burst` tokens, starts full. A hop of k tokens passes when the bucket holds
/// min(k, burst) tokens and takes k (a hop larger than the bucket leaves it in debt).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    spec: RateLimit,
    level: i128,
    last: SimTime,
}

const PICO: i128 = 1_000_000_000_000;

impl Bucket {
    fn new(spec: RateLimit) -> Self {
        Bucket {
            spec,
            level: spec.burst as i128 * PICO,
            last: SimTime::ZERO,
        }
    }

    fn refill(&mut self, now: SimTime) {
        let cap = self.spec.burst as i128 * PICO;
        let dt = now.as_nanos().saturating_sub(self.last.as_nanos()) as i128;
        // ns x milli-tokens per second = picotokens.
        let add = dt.saturating_mul(self.spec.milli_tokens_per_s as i128);
        self.level = self.level.saturating_add(add).min(cap);
        self.last = now;
    }

    fn allows(&mut self, now: SimTime, tokens: u64) -> bool {
        self.refill(now);
        self.level >= tokens.min(self.spec.burst) as i128 * PICO
    }

    fn take(&mut self, now: SimTime, tokens: u64) {
        self.refill(now);
        self.level -= tokens as i128 * PICO;
    }

    /// After a refused `allows`: how long until the bucket holds min(k, burst) tokens
    /// (rounded up to the nanosecond, at least 1ns).
    fn wait_for(&self, tokens: u64) -> SimDuration {
        let need = tokens.min(self.spec.burst) as i128 * PICO - self.level;
        let rate = (self.spec.milli_tokens_per_s as i128).max(1);
        let ns = (need.max(1) + rate - 1) / rate;
        SimDuration::from_nanos(ns.clamp(1, u64::MAX as i128) as u64)
    }
}

/// A 429 from a lane's or tenant's limits: its cause and what it says about retrying
/// (`None`: the hop's first pool's retry-after and attempts).
#[derive(Clone, Debug)]
struct GateRefusal {
    cause: String,
    /// A token bucket's: exactly when it will hold enough tokens (not jittered).
    exact: Option<SimDuration>,
    /// The lane's or tenant's own `retry_after` (jittered like a pool's).
    retry_after: Option<SimDuration>,
    max_attempts: Option<u32>,
    /// Not a 429: the lane's `queue` watermark holds the hop at its door.
    hold: bool,
}

struct ClassRuntime<'a> {
    arrivals_rng: SimRng,
    work_seed: u64,
    next_workflow: u64,
    max_rate: f64,
    /// True when the rate never changes: no thinning draw is needed.
    constant_rate: bool,
    /// Recorded requests already scheduled.
    scheduled_records: usize,
    /// A streamed trace's pass, and the rows read from it whose arrival is scheduled
    /// (in arrival order; the front arrives next).
    stream: Option<RowStream<'a>>,
    stream_ahead: VecDeque<RecordedRequest>,
    unit_exp: Exp1,
    /// Per node of the class's graph, the timing key of its first call (no branch,
    /// first loop epoch, first attempt): the common hop's key is looked up, not folded.
    first_call_keys: Vec<u64>,
}

type RowStream<'a> = Box<dyn Iterator<Item = Result<RecordedRequest, String>> + 'a>;

/// The stream a model hop's timing draws come from (service time, API TTFT/TPOT, 429
/// jitter): keyed by the workflow and the hop's place in it, not by the pool it lands
/// on, so routing a hop elsewhere never shifts the workflow's other draws.
/// A workflow's own stream, `workflow_stream(seed, n)`, seeded when first drawn from.
#[derive(Clone, Debug)]
struct LazyStream {
    seed: u64,
    n: u64,
    rng: Option<WorkflowRng>,
}

impl LazyStream {
    fn new(seed: u64, n: u64) -> Self {
        LazyStream { seed, n, rng: None }
    }

    #[inline]
    fn get(&mut self) -> &mut WorkflowRng {
        let (seed, n) = (self.seed, self.n);
        self.rng.get_or_insert_with(|| workflow_stream(seed, n))
    }
}

/// Salt of the canary draw's stream (any constant other streams do not use).
const CANARY_SALT: u64 = 0xca4a_2c00_5eed_0001;

#[inline]
fn timing_stream(work_seed: u64, wf_no: u64, parts: [u64; 5]) -> WorkflowRng {
    workflow_stream(timing_key(work_seed, parts), wf_no)
}

/// The seed `timing_stream` gives `workflow_stream`: the class's work seed folded with
/// the hop's place in the workflow (the same for every workflow of the class).
#[inline]
fn timing_key(work_seed: u64, parts: [u64; 5]) -> u64 {
    let mut h = work_seed ^ 0x5bd1_e995_9e37_79b9;
    for x in parts {
        h = (h ^ x).wrapping_mul(0x0100_0000_01b3).rotate_left(29) ^ (h >> 17);
    }
    h
}

/// Spot preemption events per hour, per unit of `preemptions_per_hour`, with `up`
/// spot replicas exposed: each event takes min(`reclaim_size`, `up`) of them, so
/// `up` / that keeps every replica's hazard at `preemptions_per_hour` (with fewer up
/// than `reclaim_size`, one event per replica-hazard takes them all). Exactly `up`
/// with `reclaim_size` 1 (the draws of independent preemptions).
/// Whether an autoscaler's signal needs the waits of hops still waiting for their
/// first token (the stations track them only then).
fn waits_signal(a: &crate::policy::AutoscaleSpec) -> bool {
    a.metric == "p99_ttft" || a.metric == "queue_age"
}

/// [`reclaim_rate`] of a pool's spot spec with `up` replicas exposed: with drawn
/// sizes, `up` / the mean an event takes then (`ReclaimDraw::mean_taken`).
fn spot_event_rate(spot: &crate::scenario::Spot, up: u32) -> f64 {
    match &spot.reclaim_draw {
        None => reclaim_rate(up, spot.reclaim_size),
        Some(d) => match d.mean_taken.get(up as usize) {
            Some(&m) if up > 0 && m > 0.0 => f64::from(up) / m,
            _ => 0.0,
        },
    }
}

fn reclaim_rate(up: u32, reclaim_size: u32) -> f64 {
    match reclaim_size.min(up) {
        0 => 0.0,
        n => up as f64 / n as f64,
    }
}

/// Options that are not part of the scenario.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Called about every 65k events with the fraction of the horizon simulated.
    pub progress: Option<&'a mut dyn FnMut(f64)>,
    /// If set, every finished hop is appended here (for exact tests: the whole run's
    /// hops are held).
    pub hop_log: Option<&'a mut Vec<HopRecord>>,
    /// If set, called with each workflow's hops once no more of them can come (see
    /// [`WorkflowHops`]): the engine holds the hops of workflows in flight only, so a
    /// span log can be written as the run goes.
    pub hop_sink: Option<&'a mut dyn FnMut(WorkflowHops<'_>)>,
    /// Keep a record of every workflow counted (`RunResult::workflows`): one row each
    /// for `run --workflows-csv`.
    pub keep_workflows: bool,
    /// If set, every spot preemption event is appended here (exact tests).
    pub spot_log: Option<&'a mut Vec<SpotReclaim>>,
    /// Builds queue disciplines, routers and autoscalers; default
    /// [`BuiltinPolicies`] (FIFO, first available, fixed size).
    pub policies: Option<&'a dyn PolicyFactory>,
}

/// Runs a validated scenario to completion.
pub fn run(scenario: &Scenario, opts: RunOptions<'_>) -> RunResult {
    Sim::new(scenario, opts).run()
}

struct Sim<'a, 'o> {
    sc: &'a Scenario,
    opts: RunOptions<'o>,
    horizon: SimTime,
    warmup: SimTime,
    now: SimTime,
    queue: EventQueue<Event>,
    /// Pools first, then tools.
    stations: Vec<Box<dyn Station>>,
    out: StationOutput,
    classes: Vec<ClassRuntime<'a>>,
    /// Rows of streamed traces whose workflows are live (`Workflow::record` indexes it
    /// for a class whose arrival is a stream), and the free entries.
    stream_rows: Vec<RecordedRequest>,
    free_stream_rows: Vec<u32>,
    /// Rows a streamed trace could not deliver (the run stops reading it).
    input_errors: Vec<String>,
    class_stats: Vec<ClassStats>,
    pool_stats: Vec<PoolStats>,
    tool_stats: Vec<ToolStats>,
    workflows: Vec<Workflow>,
    free_workflows: Vec<u32>,
    hops: Vec<Option<Hop>>,
    free_hops: Vec<u32>,
    next_wf_id: u64,
    next_hop_seq: u64,
    /// Hops logged so far (`HopRecord::index` of the next one).
    hops_logged: u64,
    /// Per workflow slot, the hops logged for its workflow and not yet handed to
    /// `RunOptions::hop_sink`.
    sink_hops: Vec<Vec<HopRecord>>,
    timers: Vec<Option<TimerRec>>,
    free_timers: Vec<u32>,
    /// Sink-node count per class.
    sinks: Vec<u32>,
    /// `RunResult::workflows`, kept with `RunOptions::keep_workflows`.
    workflow_records: Vec<WorkflowRecord>,
    router: Box<dyn TierRouter>,
    autoscalers: Vec<Option<Box<dyn Autoscaler>>>,
    /// Recent (time, tokens) of requests per API pool, for RPM/TPM limits.
    api_window: Vec<VecDeque<(SimTime, u64)>>,
    breakers: Vec<BreakerState>,
    /// Prompt + output tokens of each pool's submitted, unfinished hops (autoscaling,
    /// token watermarks).
    pool_tokens: Vec<u64>,
    /// Per pool: the last time a hop was submitted to it or left it (scale to zero's
    /// idle clock: a pool idle at a look has been idle since then).
    pool_active_at: Vec<SimTime>,
    /// (finish time, TTFT ns) of hops finished on pools autoscaled on `p99_ttft`, within
    /// the autoscaler's window.
    ttft_window: Vec<VecDeque<(SimTime, u64)>>,
    /// Per spot pool, the stream its preemption times and victims are drawn from.
    spot_rng: Vec<Option<SimRng>>,
    /// Per pool: the stream autoscaled boots are drawn from (`pool/NAME/boot`), and
    /// spot replacements' (`pool/NAME/spot_boot`). A fixed boot never draws.
    boot_rng: Vec<SimRng>,
    spot_boot_rng: Vec<SimRng>,
    /// Model tokens (input + output) of hops admitted and not finished, per lane and
    /// tenant (`Scenario::tenants`). Kept for classes with a gate only: a gate-free
    /// class's lane and tenant have no gate that reads them.
    lane_tokens: Vec<u64>,
    /// Model hops in flight per lane (for its `max_in_flight` cap).
    lane_hops: Vec<u32>,
    tenant_tokens: Vec<u64>,
    lane_buckets: Vec<Option<Bucket>>,
    tenant_buckets: Vec<Option<Bucket>>,
    interval: IntervalCounters,
    /// Busy server-seconds per station at the last sample (to take differences).
    last_busy: Vec<f64>,
    last_capacity_usd: Vec<f64>,
    /// Busy server-seconds and capacity dollars accrued between the last sample and
    /// the warm-up reset, carried into the next sample.
    carry_busy: Vec<f64>,
    carry_usd: Vec<f64>,
    /// Running server-seconds per station at the last sample, and accrued before the
    /// warm-up reset: a resized pool's utilisation per interval is over the servers it
    /// had during the interval, not those left at its end.
    last_capacity_s: Vec<f64>,
    carry_capacity_s: Vec<f64>,
    /// Workflows started and not yet released (drain keeps periodic events going only
    /// while some exist).
    live_workflows: u64,
    last_sample: SimTime,
    timeseries: Vec<crate::metrics::TimeseriesRow>,
    /// Per-hop figures by class, lane, tier, pool, tenant and tool.
    breakdown: Breakdown,
    /// Extra dollars of each live workflow's over-tiered hops (by workflow slot), moved
    /// to the class's over-tiered waste when the workflow completes.
    over_tiered_usd: Vec<f64>,
    /// Scratch space of `route_model_hop`: each candidate pool's admission answer.
    route_checks: Vec<Option<Result<Placement, Refusal>>>,
    /// Per pool, the model hops held at its door by a `queue` watermark (FIFO), and
    /// whether a `DoorOpen` event is pending.
    door: Vec<VecDeque<Held>>,
    door_event: Vec<bool>,
    /// The same per lane; `lane_release` is set while a released hop is routed (it has
    /// passed its lane's door).
    lane_door: Vec<VecDeque<Held>>,
    lane_door_event: Vec<bool>,
    lane_release: bool,
    next_held_id: u64,
    /// While a held hop is released: when its caller started waiting (its timeout
    /// counts from there). Taken by the submission or the next hold.
    held_since: Option<SimTime>,
    /// Per pool: nothing can refuse a hop (no breaker, outage, queue cap, API limit,
    /// admission watermark or storm), so pinned hops skip the admission checks.
    pool_always_admits: Vec<bool>,
    /// Per class: its lane and tenant have no gate (watermark, rate limit, token budget).
    class_gate_free: Vec<bool>,
    /// Per pool: a finished hop needs none of the optional bookkeeping (the pool always
    /// admits, has no error rate, is not a GPU pool and is not autoscaled on TTFT): no
    /// door to open, no TTFT window, no error draw, no breaker.
    pool_plain_finish: Vec<bool>,
    /// Per station: `Station::reads_job_meta` (a hop's `JobMeta` is built only for those).
    station_reads_meta: Vec<bool>,
    /// Per station: a pool at zero boots a server when a hop arrives
    /// (`autoscale.activation = "on_arrival"`).
    wake_on_arrival: Vec<bool>,
}

impl<'a, 'o> Sim<'a, 'o> {
    fn new(sc: &'a Scenario, opts: RunOptions<'o>) -> Self {
        let streams = StreamFactory::new(sc.seed);
        let factory: &dyn PolicyFactory = opts.policies.unwrap_or(&BuiltinPolicies);
        let mut stations: Vec<Box<dyn Station>> = sc
            .pools
            .iter()
            .map(|p| {
                if let Some(g) = &p.gpu {
                    let station = GpuPoolStation::new(
                        p.name.clone(),
                        p.servers,
                        g.config.clone(),
                        g.perf.clone(),
                        p.usd_per_server_hour,
                    );
                    // Validation built the same configuration, so this cannot fail;
                    // should it, the pool falls back to an abstract station.
                    let station = match (station, &p.spot) {
                        (Ok(st), Some(sp)) => st.with_spot(SpotConfig {
                            replicas: sp.servers,
                            usd_per_replica_hour: sp.usd_per_server_hour,
                            recompute: sp.on_preempt == OnPreempt::Recompute,
                            move_waiting_on_notice: sp.on_notice == OnNotice::MoveWaiting,
                            counts_reclaims: sp.reclaim_size > 1 || sp.reclaim_draw.is_some(),
                        }),
                        (st, _) => st,
                    };
                    let station = match (station, p.reserved) {
                        (Ok(st), Some(r)) => Ok(st.with_reserved(ReservedConfig {
                            slots: r.servers,
                            usd_per_replica_hour: r.usd_per_server_hour,
                        })),
                        (st, _) => st,
                    };
                    let ttft_signal = p.autoscale.as_ref().is_some_and(waits_signal);
                    let station = station
                        .and_then(|st| st.with_discipline(p.discipline))
                        .and_then(|st| st.with_priority_preemption(p.preempt_for_priority))
                        .map(|st| st.with_queue_at(p.queue_at))
                        .map(|st| st.with_context_limit(g.context_limit))
                        .map(|st| {
                            if p.autoscale.is_some() {
                                st.with_autoscaler()
                            } else {
                                st
                            }
                        })
                        .map(|st| {
                            if ttft_signal {
                                st.with_first_tokens()
                            } else {
                                st
                            }
                        });
                    if let Ok(station) = station {
                        // `random` draws from the pool's own stream, which only the
                        // simulator can seed; the others come from the factory, with
                        // sim-core's built-ins as the fallback.
                        let station = if g.picker == "random" {
                            station.with_picker(Box::new(RandomPicker::new(
                                streams.stream(&format!("pool/{}/picker", p.name)),
                            )))
                        } else {
                            match factory.replica_picker(&g.picker) {
                                Some(picker) => station.with_picker(picker),
                                None if g.picker == "round_robin" => {
                                    station.with_picker(Box::new(RoundRobin::default()))
                                }
                                None if g.picker == "least_outstanding_requests" => {
                                    station.with_picker(Box::new(LeastOutstandingRequests))
                                }
                                None => station,
                            }
                        };
                        return Box::new(station) as Box<dyn Station>;
                    }
                }
                // An API pool never queues (servers = unlimited) and charges per token.
                let price = if p.api.is_some() {
                    0.0
                } else {
                    p.usd_per_server_hour
                };
                let station = QueueStation::with_discipline(
                    p.servers,
                    price,
                    factory.discipline(p.discipline),
                );
                // An autoscaler on `p99_ttft` or `queue_age` sees each hop's wait as
                // service starts.
                if p.autoscale.as_ref().is_some_and(waits_signal) {
                    Box::new(station.with_first_tokens()) as Box<dyn Station>
                } else {
                    Box::new(station) as Box<dyn Station>
                }
            })
            .collect();
        let router = factory.router(sc.routing);
        let autoscalers: Vec<Option<Box<dyn Autoscaler>>> = sc
            .pools
            .iter()
            .map(|p| p.autoscale.as_ref().map(|a| factory.autoscaler(a)))
            .collect();
        for t in &sc.tools {
            stations.push(Box::new(QueueStation::bulkhead(t.concurrency)));
        }
        let classes = sc
            .classes
            .iter()
            .map(|c| {
                // A canary cohort draws exactly what its workflows would have drawn in
                // the parent class (common random numbers with a run without canary).
                let work_seed: u64 = streams
                    .stream(&format!(
                        "class/{}/work",
                        c.cohort_of.map_or(&c.name, |p| &sc.classes[p].name)
                    ))
                    .random();
                ClassRuntime {
                    arrivals_rng: streams.stream(&format!("class/{}/arrivals", c.name)),
                    work_seed,
                    first_call_keys: (0..c.graph.nodes.len())
                        .map(|node| timing_key(work_seed, [node as u64, NO_BRANCH as u64, 0, 0, 0]))
                        .collect(),
                    next_workflow: 0,
                    max_rate: c.max_rate(),
                    unit_exp: Exp1,
                    scheduled_records: 0,
                    stream: match &c.arrival {
                        Arrival::Recorded {
                            stream: Some(s), ..
                        } if c.cohort_of.is_none() => Some(s.0.rows(sc)),
                        _ => None,
                    },
                    stream_ahead: VecDeque::new(),
                    constant_rate: matches!(c.arrival, Arrival::Poisson { .. })
                        && c.bursts.iter().all(|b| b.rate_factor == 1.0),
                }
            })
            .collect();
        let station_reads_meta = stations.iter().map(|s| s.reads_job_meta()).collect();
        let stations_len = stations.len();
        let pool_always_admits: Vec<bool> = sc
            .pools
            .iter()
            .map(|pool| {
                pool.breaker.is_none()
                    && pool.outages.is_empty()
                    && pool.max_queue.is_none()
                    && pool.api.is_none()
                    && pool.admission.is_none()
                    && pool.storms.is_empty()
            })
            .collect();
        let pool_plain_finish = sc
            .pools
            .iter()
            .zip(&pool_always_admits)
            .map(|(pool, &always_admits)| {
                always_admits
                    && pool.error_rate <= 0.0
                    && pool.error_storms.is_empty()
                    && pool.gpu.is_none()
            })
            .collect();
        Sim {
            sc,
            opts,
            station_reads_meta,
            wake_on_arrival: (0..stations_len)
                .map(|i| {
                    sc.pools
                        .get(i)
                        .and_then(|p| p.autoscale.as_ref())
                        .is_some_and(|a| a.activation == Some(crate::policy::Activation::OnArrival))
                })
                .collect(),
            horizon: SimTime(sc.horizon.as_nanos()),
            warmup: SimTime(sc.warmup.as_nanos()),
            now: SimTime::ZERO,
            queue: EventQueue::with_capacity(1024),
            stations,
            out: StationOutput::default(),
            classes,
            class_stats: sc.classes.iter().map(ClassStats::new).collect(),
            pool_stats: sc.pools.iter().map(|_| PoolStats::new()).collect(),
            tool_stats: sc.tools.iter().map(|t| ToolStats::new(&t.name)).collect(),
            workflows: Vec::new(),
            free_workflows: Vec::new(),
            stream_rows: Vec::new(),
            free_stream_rows: Vec::new(),
            input_errors: Vec::new(),
            hops: Vec::new(),
            free_hops: Vec::new(),
            next_wf_id: 0,
            next_hop_seq: 0,
            hops_logged: 0,
            sink_hops: Vec::new(),
            timers: Vec::new(),
            free_timers: Vec::new(),
            workflow_records: Vec::new(),
            sinks: sc
                .classes
                .iter()
                .map(|c| {
                    c.graph
                        .nodes
                        .iter()
                        .filter(|n| n.children.is_empty())
                        .count() as u32
                })
                .collect(),
            router,
            autoscalers,
            api_window: vec![VecDeque::new(); sc.pools.len()],
            breakers: vec![BreakerState::default(); sc.pools.len()],
            pool_tokens: vec![0; sc.pools.len()],
            pool_active_at: vec![SimTime::ZERO; sc.pools.len()],
            ttft_window: vec![VecDeque::new(); sc.pools.len()],
            spot_rng: sc
                .pools
                .iter()
                .map(|p| {
                    p.spot
                        .as_ref()
                        .map(|_| streams.stream(&format!("pool/{}/spot", p.name)))
                })
                .collect(),
            boot_rng: sc
                .pools
                .iter()
                .map(|p| streams.stream(&format!("pool/{}/boot", p.name)))
                .collect(),
            spot_boot_rng: sc
                .pools
                .iter()
                .map(|p| streams.stream(&format!("pool/{}/spot_boot", p.name)))
                .collect(),
            lane_tokens: vec![0; sc.lanes.len()],
            lane_hops: vec![0; sc.lanes.len()],
            tenant_tokens: vec![0; sc.tenants.len()],
            lane_buckets: sc
                .lanes
                .iter()
                .map(|l| l.rate_limit.map(Bucket::new))
                .collect(),
            tenant_buckets: sc
                .tenants
                .iter()
                .map(|t| t.rate_limit.map(Bucket::new))
                .collect(),
            interval: IntervalCounters::default(),
            last_busy: vec![0.0; sc.pools.len()],
            last_capacity_usd: vec![0.0; sc.pools.len()],
            carry_busy: vec![0.0; sc.pools.len()],
            carry_usd: vec![0.0; sc.pools.len()],
            last_capacity_s: vec![0.0; sc.pools.len()],
            carry_capacity_s: vec![0.0; sc.pools.len()],
            live_workflows: 0,
            last_sample: SimTime::ZERO,
            timeseries: Vec::new(),
            breakdown: Breakdown::new(sc),
            over_tiered_usd: Vec::new(),
            route_checks: Vec::new(),
            door: vec![VecDeque::new(); sc.pools.len()],
            door_event: vec![false; sc.pools.len()],
            lane_door: vec![VecDeque::new(); sc.lanes.len()],
            lane_door_event: vec![false; sc.lanes.len()],
            lane_release: false,
            next_held_id: 0,
            held_since: None,
            pool_always_admits,
            pool_plain_finish,
            class_gate_free: sc
                .classes
                .iter()
                .map(|c| {
                    let lane = &sc.lanes[c.lane_index];
                    lane.admission.is_none()
                        && lane.max_in_flight.is_none()
                        && lane.rate_limit.is_none()
                        && c.tenant_index.is_none_or(|t| {
                            sc.tenants[t].max_tokens_in_flight.is_none()
                                && sc.tenants[t].rate_limit.is_none()
                        })
                })
                .collect(),
        }
    }

    fn run(mut self) -> RunResult {
        let sc = self.sc;
        for ci in 0..sc.classes.len() {
            match &sc.classes[ci].arrival {
                // A canary cohort's workflows (and users) arrive through its parent class.
                _ if sc.classes[ci].cohort_of.is_some() => {}
                Arrival::Closed { users, think } => {
                    for u in 0..*users {
                        let t = SimTime::ZERO
                            + think.sample_duration(&mut self.classes[ci].arrivals_rng);
                        if t < self.horizon {
                            self.queue.push(
                                t,
                                Event::UserStart {
                                    class: ci as u32,
                                    user: u,
                                },
                            );
                        }
                    }
                }
                _ => self.schedule_next_arrival(ci, SimTime::ZERO),
            }
        }
        if self.warmup > SimTime::ZERO {
            self.queue.push(self.warmup, Event::MeasureStart);
        }
        for (pi, p) in sc.pools.iter().enumerate() {
            if let Some(a) = &p.autoscale {
                self.queue.push(
                    SimTime::ZERO + a.interval,
                    Event::AutoscaleTick { pool: pi as u32 },
                );
                if let Some(t) = a.next_prewarm(SimTime::ZERO)
                    && t <= self.horizon
                {
                    self.queue.push(t, Event::Prewarm { pool: pi as u32 });
                }
            }
        }
        for pi in 0..sc.pools.len() {
            self.schedule_spot(pi, SimTime::ZERO);
        }
        if SimTime::ZERO + self.sc.sample_every <= self.horizon {
            self.queue
                .push(SimTime::ZERO + self.sc.sample_every, Event::Sample);
        } else {
            for s in self.stations.iter_mut() {
                s.begin_measurement(SimTime::ZERO);
            }
        }
        let mut events: u64 = 0;
        let horizon_ns = self.horizon.as_nanos().max(1) as f64;
        // Time of the last event that did something (a superseded station wake-up does
        // not): a drained run ends there.
        let mut last_live = SimTime::ZERO;
        while let Some((t, ev)) = self.queue.pop() {
            // A drained run ends with its last workflow: what is still scheduled then
            // (a replacement boot, a stale timeout) serves nothing, and running on would
            // pay capacity past the work while no spot preemption can come (their chain
            // stops with the work), biasing the preemption count low.
            if t > self.horizon && (!sc.drain || self.live_workflows == 0) {
                break;
            }
            self.now = t;
            let before = last_live;
            last_live = t;
            events += 1;
            if events & 0xFFFF == 0
                && let Some(p) = self.opts.progress.as_mut()
            {
                p((t.as_nanos() as f64 / horizon_ns).min(1.0));
            }
            match ev {
                Event::Arrival { class } => {
                    self.schedule_next_arrival(class as usize, t);
                    self.start_workflow(class as usize, None);
                }
                Event::UserStart { class, user } => self.start_workflow(class as usize, Some(user)),
                Event::Wake { station, token } => {
                    self.stations[station as usize].wake(t, token, &mut self.out);
                    if self.out.stale_wake {
                        self.out.stale_wake = false;
                        last_live = before;
                    }
                    self.flush_wakeups(station as usize);
                }
                Event::Timer { id } => {
                    if let Some(rec) = self.timers.get_mut(id as usize).and_then(Option::take) {
                        self.free_timers.push(id);
                        self.on_timer(rec.slot, rec.wf_id, rec.what);
                    }
                }
                Event::MeasureStart => {
                    // Time integrals restart here: carry what accrued since the last
                    // sample into the next one, and take later differences from zero.
                    for i in 0..sc.pools.len() {
                        let rep = self.stations[i].report(t);
                        self.carry_busy[i] += rep.busy_server_s - self.last_busy[i];
                        self.carry_usd[i] += rep.usd_capacity - self.last_capacity_usd[i];
                        self.carry_capacity_s[i] += capacity_s(&rep) - self.last_capacity_s[i];
                    }
                    for s in self.stations.iter_mut() {
                        s.begin_measurement(t);
                    }
                    self.last_busy.iter_mut().for_each(|b| *b = 0.0);
                    self.last_capacity_usd.iter_mut().for_each(|b| *b = 0.0);
                    self.last_capacity_s.iter_mut().for_each(|b| *b = 0.0);
                }
                Event::AutoscaleTick { pool } => {
                    self.autoscale(pool as usize);
                    if let Some(a) = &sc.pools[pool as usize].autoscale {
                        let next = t + a.interval;
                        if next <= self.horizon || (sc.drain && self.live_workflows > 0) {
                            self.queue.push(next, Event::AutoscaleTick { pool });
                        }
                    }
                }
                Event::BootDone { pool } => {
                    self.stations[pool as usize].boot_finished(t, &mut self.out);
                    self.flush_wakeups(pool as usize);
                }
                Event::SpotPreempt { pool } => {
                    self.spot_preempt(pool as usize);
                    self.schedule_spot(pool as usize, t);
                }
                Event::SpotBootDone { pool } => {
                    self.stations[pool as usize].spot_boot_finished(t, &mut self.out);
                    self.flush_wakeups(pool as usize);
                }
                Event::SpotLost { pool, replica } => {
                    if self.stations[pool as usize].spot_lost(t, replica, &mut self.out) {
                        self.after_replica_lost(pool as usize);
                    }
                }
                Event::DoorOpen { pool } => {
                    self.door_event[pool as usize] = false;
                    self.open_door(pool as usize);
                }
                Event::LaneDoorOpen { lane } => {
                    self.lane_door_event[lane as usize] = false;
                    self.open_lane_door(lane as usize);
                }
                Event::Prewarm { pool } => {
                    self.autoscale(pool as usize);
                    if let Some(a) = &sc.pools[pool as usize].autoscale
                        && let Some(next) = a.next_prewarm(t + SimDuration(1))
                        && next <= self.horizon
                    {
                        self.queue.push(next, Event::Prewarm { pool });
                    }
                }
                Event::Sample => {
                    self.sample();
                    let next = t + sc.sample_every;
                    // Keep sampling while anything is scheduled (drain) or until the horizon.
                    if next <= self.horizon || (sc.drain && self.live_workflows > 0) {
                        self.queue.push(next, Event::Sample);
                    }
                }
            }
            self.process_done();
        }
        let end = if sc.drain {
            last_live.max(self.horizon)
        } else {
            self.horizon
        };
        if self.opts.hop_sink.is_some() {
            // Workflows still in flight: their hops so far, in arrival order.
            let mut live: Vec<(u64, u32)> = self
                .workflows
                .iter()
                .enumerate()
                .filter(|(_, w)| w.active)
                .map(|(slot, w)| (w.id, slot as u32))
                .collect();
            live.sort_unstable();
            for (_, slot) in live {
                self.hand_over_hops(slot);
            }
        }
        let first_in_flight = self.workflow_records.len();
        for wf in self.workflows.iter().filter(|w| w.active) {
            // Workflows whose outcome is decided were counted then; only undecided ones
            // are in flight. (Hops still running are charged when they finish.)
            if wf.counted && wf.outcome.is_none() {
                let cs = &mut self.class_stats[wf.class as usize];
                cs.in_flight += 1;
                cs.usd_unfinished += wf.usd;
                if self.opts.keep_workflows {
                    self.workflow_records.push(WorkflowRecord {
                        class: wf.class as usize,
                        workflow: wf.id,
                        arrived: wf.arrived,
                        decided: None,
                        outcome: WorkflowOutcome::InFlight,
                        cause: String::new(),
                        usd: wf.usd,
                        tokens: wf.tokens,
                    });
                }
            }
        }
        // Slots are reused, so slot order is not arrival order.
        self.workflow_records[first_in_flight..].sort_unstable_by_key(|w| w.workflow);
        let gpu_reports: Vec<_> = self.stations[..sc.pools.len()]
            .iter_mut()
            .map(|st| st.gpu_report(end))
            .collect();
        let reports = self
            .stations
            .iter_mut()
            .map(|s| s.report(end))
            .collect::<Vec<_>>();
        let n_pools = sc.pools.len();
        // Gaps of iterations the reports applied (decode-skipping stretches up to `end`).
        for st in self.stations[..n_pools].iter_mut() {
            st.drain_token_gaps(&mut self.out.gaps);
        }
        for g in self.out.gaps.drain(..) {
            self.breakdown.record_token_gaps(&g);
        }
        let (pool_reports, tool_reports) = {
            let mut r = reports;
            let tools = r.split_off(n_pools);
            (r, tools)
        };
        for (ts, rep) in self.tool_stats.iter_mut().zip(tool_reports) {
            ts.report = rep;
        }
        self.breakdown.finish();
        // A pool's queue waits are the breakdown's samples of its hops (every hop
        // `PoolStats::record` counts is recorded there too, with the same wait).
        for (ps, g) in self.pool_stats.iter_mut().zip(&self.breakdown.by_pool) {
            ps.wait_ns.clone_from(&g.queue_wait.ns);
        }
        RunResult {
            seed: sc.seed,
            events,
            end,
            window_start: self.warmup,
            drain: sc.drain,
            classes: self.class_stats,
            pool_names: sc.pools.iter().map(|p| p.name.clone()).collect(),
            pools: self.pool_stats,
            pool_reports,
            tools: self.tool_stats,
            gpu_reports,
            timeseries: self.timeseries,
            breakdown: self.breakdown,
            // The scenario's offered load (abstract pools only: a GPU pool's service time
            // comes from its replicas, an API never queues).
            offered_rho: sc
                .offered_load()
                .iter()
                .zip(&sc.pools)
                .map(|(l, p)| (p.gpu.is_none() && p.api.is_none()).then_some(l.rho))
                .collect(),
            input_errors: self.input_errors,
            workflows: self.workflow_records,
        }
    }

    fn autoscale(&mut self, pool: usize) {
        let now = self.now;
        let Some(load) = self.stations[pool].load_now() else {
            return;
        };
        let Some(scaler) = self.autoscalers[pool].as_mut() else {
            return;
        };
        let Some(spec) = self.sc.pools[pool].autoscale.as_ref() else {
            return;
        };
        // The p99 TTFT (nearest rank) of the first tokens within the window and of the
        // hops still waiting for theirs, each at its wait so far (a lower bound): a
        // queue that grows while nothing starts raises the signal.
        let window = &mut self.ttft_window[pool];
        let since = SimTime(now.as_nanos().saturating_sub(spec.window.as_nanos()));
        while window.front().is_some_and(|&(t, _)| t < since) {
            window.pop_front();
        }
        let mut ttfts: Vec<u64> = window.iter().map(|&(_, v)| v).collect();
        let mut waiting = Vec::new();
        self.stations[pool].waiting_since(&mut waiting);
        ttfts.extend(waiting.iter().map(|&t| (now - t).as_nanos()));
        ttfts.sort_unstable();
        let oldest_wait = waiting.iter().min().map(|&t| now - t);
        let ttft_p99 = (!ttfts.is_empty()).then(|| {
            let rank = (ttfts.len() * 99).div_ceil(100).max(1);
            SimDuration(ttfts[rank - 1])
        });
        let obs = ScaleObservation {
            now,
            running: load.servers,
            booting: load.booting,
            busy: load.busy,
            queued: load.queued,
            tokens_in_flight: self.pool_tokens[pool],
            ttft_p99,
            ttft_samples: ttfts.len() as u32,
            oldest_wait,
            idle_since: (load.busy + load.queued == 0).then_some(self.pool_active_at[pool]),
        };
        let target = scaler.target(&obs);
        let current = load.servers + load.booting;
        if target > current {
            for _ in current..target {
                let boot = spec.boot().draw(&mut self.boot_rng[pool]);
                self.stations[pool].boot_started(now);
                self.queue
                    .push(now + boot, Event::BootDone { pool: pool as u32 });
            }
        } else {
            // Only a target of zero (`min = 0`, nothing to serve) takes the last one.
            for _ in target..current {
                self.stations[pool].retire_server(now, target == 0);
            }
        }
    }

    /// Schedules pool `pool`'s next candidate spot preemption after `from`: exponential
    /// gaps at the event rate with all its spot replicas up (thinned in
    /// `spot_preempt`, see [`reclaim_rate`]).
    fn schedule_spot(&mut self, pool: usize, from: SimTime) {
        let Some(spot) = &self.sc.pools[pool].spot else {
            return;
        };
        let Some(rng) = self.spot_rng[pool].as_mut() else {
            return;
        };
        // At the largest episode factor (1 without episodes), thinned in `spot_preempt`.
        let rate_per_s = spot.preemptions_per_hour
            * spot.max_hazard_factor()
            * spot_event_rate(spot, spot.servers)
            / 3600.0;
        let e: f64 = Exp1.sample(rng);
        let t = from + SimDuration::from_secs_f64(e / rate_per_s);
        if t <= self.horizon || (self.sc.drain && self.live_workflows > 0) {
            self.queue.push(t, Event::SpotPreempt { pool: pool as u32 });
        }
    }

    /// A candidate preemption: accepted with probability (event rate of the spot
    /// replicas up) / (that of all the pool's spot replicas), see [`reclaim_rate`].
    /// It takes `reclaim_size` replicas (all those up, if fewer), uniform without
    /// replacement among those up (not already given notice): the first from the
    /// draw that accepted it, the others from one draw each. They are lost now, or
    /// with a `notice` when it runs out. Each lost replica is replaced (booting from
    /// the preemption, or its notice, paid at the spot price) when the pool says so.
    fn spot_preempt(&mut self, pool: usize) {
        let Some(spot) = &self.sc.pools[pool].spot else {
            return;
        };
        let Some(rng) = self.spot_rng[pool].as_mut() else {
            return;
        };
        let u: f64 = rng.random();
        let x = u * spot_event_rate(spot, spot.servers) * spot.max_hazard_factor();
        let up = self.stations[pool].spot_up();
        let factor = spot.hazard_factor(self.now);
        let rate_up = spot_event_rate(spot, up);
        if up == 0 || x >= rate_up * factor {
            return;
        }
        // Accepted, x / factor is uniform on [0, rate_up): scaled to [0, up) it picks
        // the first victim (a fixed size: x x size, the same; with reclaim_size 1 and no
        // episode, x itself, as before groups and episodes existed).
        let x = if factor == 1.0 { x } else { x / factor };
        let (size, first) = match &spot.reclaim_draw {
            None => {
                let size = spot.reclaim_size.min(up);
                (size, x * size as f64)
            }
            Some(d) => (d.draw(rng, up), x / rate_up * f64::from(up)),
        };
        let mut ks = Vec::with_capacity(size as usize);
        ks.push((first as u32).min(up - 1));
        for j in 1..size {
            let u: f64 = rng.random();
            ks.push(((u * (up - j) as f64) as u32).min(up - j - 1));
        }
        let now = self.now;
        let notice = spot.notice;
        let taken = if notice > SimDuration::ZERO {
            let noticed = self.stations[pool].spot_notice(now, &ks, &mut self.out);
            if noticed.is_empty() {
                return;
            }
            // Requests they re-sent may start on an idle replica.
            self.flush_wakeups(pool);
            for &replica in &noticed {
                self.queue.push(
                    now + notice,
                    Event::SpotLost {
                        pool: pool as u32,
                        replica,
                    },
                );
            }
            noticed.len() as u32
        } else {
            let lost = self.stations[pool].preempt(now, &ks, &mut self.out);
            if lost == 0 {
                return;
            }
            lost
        };
        if let Some(log) = self.opts.spot_log.as_deref_mut() {
            log.push(SpotReclaim {
                pool: pool as u32,
                at: now,
                exposed: up,
                taken,
            });
        }
        if spot.replace {
            for _ in 0..taken {
                let boot = spot.boot.draw(&mut self.spot_boot_rng[pool]);
                self.stations[pool].spot_boot_started(now);
                self.queue
                    .push(now + boot, Event::SpotBootDone { pool: pool as u32 });
            }
        }
        if notice == SimDuration::ZERO {
            self.after_replica_lost(pool);
        }
    }

    /// After a replica of `pool` was lost: its recomputed requests' wake-ups are
    /// scheduled and its lost hops fail their workflows.
    fn after_replica_lost(&mut self, pool: usize) {
        self.flush_wakeups(pool);
        let lost = std::mem::take(&mut self.out.lost);
        for d in &lost {
            self.on_hop_lost(d, pool);
        }
        self.out.lost = lost;
        self.out.lost.clear();
    }

    /// A hop lost with its replica (`on_preempt = "fail"`): charged what it used, and
    /// its workflow fails.
    fn on_hop_lost(&mut self, done: &HopDone, pool: usize) {
        let hop_slot = done.id.0 as usize;
        let Some(hop) = self.hops.get_mut(hop_slot).and_then(Option::take) else {
            return;
        };
        self.free_hops.push(hop_slot as u32);
        self.pool_tokens[pool] =
            self.pool_tokens[pool].saturating_sub(hop.input_tokens + hop.output_tokens);
        self.pool_active_at[pool] = self.now;
        self.door_may_open(pool);
        self.release_admission_tokens(&hop);
        if done.submitted >= self.warmup {
            self.pool_stats[pool].usd_attributed += done.usd;
        }
        let in_window = PoolStats::in_window_usd(done, self.warmup);
        self.pool_stats[pool].usd_charged_in_window += in_window;
        let slot = hop.slot;
        let wf = &mut self.workflows[slot as usize];
        if !wf.active || wf.id != hop.wf_id {
            return;
        }
        if !wf.counted {
            let ps = &mut self.pool_stats[pool];
            ps.usd_warmup_in_window += in_window;
            if done.submitted >= self.warmup {
                ps.usd_warmup_submitted += done.usd;
            }
        }
        wf.usd += done.usd;
        wf.outstanding -= 1;
        let stale =
            wf.outcome.is_some() || hop.timed_out || wf.nodes[hop.node as usize].epoch != hop.epoch;
        self.log_hop(&hop, done, done.usd, HopStatus::Lost);
        let wf = &mut self.workflows[slot as usize];
        if stale {
            // Waste only: a hop of an earlier loop epoch leaves the live workflow's cost.
            if wf.outcome.is_none() {
                wf.usd -= done.usd;
            }
            if wf.counted {
                self.class_stats[wf.class as usize].usd_waste_leftover += done.usd;
            }
            self.maybe_release(slot);
            return;
        }
        let cause = format!("preempted on {}", self.sc.pools[pool].name);
        self.finish_workflow(slot, Outcome::Failed, &cause);
    }

    fn sample(&mut self) {
        let sc = self.sc;
        let now = self.now;
        let dt = (now - self.last_sample).as_secs_f64();
        let mut pools = Vec::with_capacity(sc.pools.len());
        let mut usd = self.interval.usd_variable;
        for i in 0..sc.pools.len() {
            let rep = self.stations[i].report(now);
            let busy =
                rep.busy_server_s - self.last_busy[i] + std::mem::take(&mut self.carry_busy[i]);
            self.last_busy[i] = rep.busy_server_s;
            let capacity = capacity_s(&rep);
            let cap = if rep.capacity_server_s > 0.0 {
                capacity - self.last_capacity_s[i] + std::mem::take(&mut self.carry_capacity_s[i])
            } else {
                // A fixed size: its servers all interval (as before any resize).
                self.carry_capacity_s[i] = 0.0;
                rep.servers as f64 * dt
            };
            self.last_capacity_s[i] = capacity;
            let kv = self.stations[i].kv_now();
            pools.push(crate::metrics::PoolSample {
                in_system: rep.in_system_now,
                utilization: if cap > 0.0 { busy / cap } else { 0.0 },
                servers: rep.servers,
                queued: self.stations[i].load_now().map_or(0, |l| l.queued),
                kv_occupancy: kv.map(|k| {
                    if k.capacity_blocks > 0 {
                        k.used_blocks as f64 / k.capacity_blocks as f64
                    } else {
                        0.0
                    }
                }),
                tokens_in_flight: kv.map(|k| k.tokens),
            });
            // Capacity paid in the interval (autoscaled pools: booting and running).
            usd += (rep.usd_capacity - self.last_capacity_usd[i]
                + std::mem::take(&mut self.carry_usd[i]))
            .max(0.0);
            self.last_capacity_usd[i] = rep.usd_capacity;
        }
        let c = self.interval;
        self.timeseries.push(crate::metrics::TimeseriesRow {
            t_s: now.as_secs_f64(),
            arrivals: c.arrivals,
            completions: c.completions,
            failed: c.failed,
            abandoned: c.abandoned,
            rejected: c.rejected,
            in_flight: c.in_flight,
            pools,
            usd,
        });
        self.interval = IntervalCounters {
            in_flight: c.in_flight,
            ..IntervalCounters::default()
        };
        self.last_sample = now;
    }

    fn schedule_next_arrival(&mut self, ci: usize, from: SimTime) {
        let class = &self.sc.classes[ci];
        let rt = &mut self.classes[ci];
        if let Some(rows) = rt.stream.as_mut() {
            // One row read ahead per scheduled arrival: memory stays that of the rows
            // in flight.
            match rows.next() {
                Some(Ok(r)) if r.at < self.horizon => {
                    self.queue
                        .push(r.at.max(from), Event::Arrival { class: ci as u32 });
                    rt.stream_ahead.push_back(r);
                }
                Some(Err(e)) => {
                    self.input_errors
                        .push(format!("class `{}`: {e}", class.name));
                    rt.stream = None;
                }
                _ => rt.stream = None,
            }
            return;
        }
        if let Arrival::Recorded { requests, .. } = &class.arrival {
            // The next request not yet scheduled: arrivals are scheduled one at a time,
            // in order, like the Poisson stream.
            let n = rt.scheduled_records;
            if let Some(r) = requests.get(n)
                && r.at < self.horizon
            {
                rt.scheduled_records += 1;
                self.queue
                    .push(r.at.max(from), Event::Arrival { class: ci as u32 });
            }
            return;
        }
        if let Arrival::Renewal { interarrival } = &class.arrival {
            let t = from + interarrival.sample_duration(&mut rt.arrivals_rng);
            if t < self.horizon {
                self.queue.push(t, Event::Arrival { class: ci as u32 });
            }
            return;
        }
        if rt.max_rate <= 0.0 {
            return;
        }
        if rt.constant_rate {
            // A fixed-rate Poisson stream: every candidate is accepted (the thinning
            // loop below would take one step).
            let e: f64 = rt.unit_exp.sample(&mut rt.arrivals_rng);
            let t = from + SimDuration::from_secs_f64(e / rt.max_rate);
            if t < self.horizon {
                self.queue.push(t, Event::Arrival { class: ci as u32 });
            }
            return;
        }
        if let Arrival::Piecewise {
            operational_gaps: Some(gaps),
            ..
        } = &class.arrival
        {
            // A renewal process in operational time (time rescaling): a gap of mean 1
            // there is one expected arrival at whatever rate the profile has.
            let mass = gaps.sample(&mut rt.arrivals_rng);
            if let Some(t) = class.after_operational(from, mass)
                && t < self.horizon
            {
                self.queue.push(t, Event::Arrival { class: ci as u32 });
            }
            return;
        }
        let mut t = from;
        // Thinning (Lewis-Shedler): candidates at the peak rate, accepted with
        // probability rate(t) / peak. Bounded so a long zero-rate stretch cannot spin.
        for _ in 0..1_000_000 {
            let e: f64 = rt.unit_exp.sample(&mut rt.arrivals_rng);
            let gap = e / rt.max_rate;
            t += SimDuration::from_secs_f64(gap);
            if t >= self.horizon {
                return;
            }
            let accept: f64 = rt.arrivals_rng.random();
            if accept * rt.max_rate < class.rate_at(t) {
                break;
            }
        }
        if t < self.horizon {
            self.queue.push(t, Event::Arrival { class: ci as u32 });
        }
    }

    fn start_workflow(&mut self, ci: usize, user: Option<u32>) {
        let sc = self.sc;
        let home_ci = ci;
        let class = &sc.classes[ci];
        let now = self.now;
        let rt = &mut self.classes[ci];
        // Seeded on first use: many workflows (a plain queueing chain) never draw.
        let rng = LazyStream::new(rt.work_seed, rt.next_workflow);
        let workflow_no = rt.next_workflow;
        rt.next_workflow += 1;
        // A canary takes each workflow into its cohort with probability `share`, by a
        // draw of its own (the workflow's other draws are unchanged).
        let (ci, class) = match class.canary {
            Some((share, cohort))
                if workflow_stream(rt.work_seed ^ CANARY_SALT, workflow_no).random::<f64>()
                    < share =>
            {
                (cohort, &sc.classes[cohort])
            }
            _ => (ci, class),
        };
        let counted = now >= self.warmup;
        if counted {
            self.class_stats[ci].arrived += 1;
        }
        self.interval.arrivals += 1;
        self.interval.in_flight += 1;
        let id = self.next_wf_id;
        self.next_wf_id += 1;
        let record = match &class.arrival {
            Arrival::Recorded {
                stream: Some(_), ..
            } => {
                // The row this arrival was scheduled for (the parent's, for a cohort).
                let mut row = self.classes[home_ci].stream_ahead.pop_front();
                // A canary cohort's recorded workflow runs on the moved pools.
                if let (Some(r), Some(moves)) = (row.as_mut(), class.canary_moves.as_ref())
                    && let Some(g) = r.graph.as_mut()
                {
                    let mut moved = (**g).clone();
                    moves.apply(&mut moved);
                    *g = std::sync::Arc::new(moved);
                }
                row.map(|r| match self.free_stream_rows.pop() {
                    Some(k) => {
                        self.stream_rows[k as usize] = r;
                        k
                    }
                    None => {
                        self.stream_rows.push(r);
                        (self.stream_rows.len() - 1) as u32
                    }
                })
            }
            Arrival::Recorded { .. } => Some(workflow_no as u32),
            _ => None,
        };
        let g = graph_of(class, record, &self.stream_rows);
        let slot = match self.free_workflows.pop() {
            Some(s) => s,
            None => {
                self.workflows.push(Workflow {
                    id: 0,
                    class: 0,
                    arrived: now,
                    counted: false,
                    user: None,
                    record: None,
                    number: 0,
                    rng: rng.clone(),
                    usd: 0.0,
                    tokens: 0,
                    fan_out: 0,
                    loops: 0,
                    outcome: None,
                    outstanding: 0,
                    sinks_remaining: 0,
                    nodes: Vec::new(),
                    active: false,
                });
                (self.workflows.len() - 1) as u32
            }
        };
        let wf = &mut self.workflows[slot as usize];
        wf.id = id;
        wf.class = ci as u32;
        wf.arrived = now;
        wf.counted = counted;
        wf.user = user;
        wf.number = workflow_no;
        wf.record = record;
        wf.rng = rng;
        wf.usd = 0.0;
        wf.tokens = 0;
        wf.fan_out = 0;
        wf.loops = 0;
        wf.outcome = None;
        wf.outstanding = 0;
        wf.active = true;
        self.live_workflows += 1;
        wf.sinks_remaining = if std::ptr::eq(&*g, &class.graph) {
            self.sinks[ci]
        } else {
            g.nodes.iter().filter(|n| n.children.is_empty()).count() as u32
        };
        wf.nodes.clear();
        wf.nodes.extend(g.nodes.iter().map(|n| NodeState {
            pending_parents: n.parents.len() as u32,
            ..NodeState::default()
        }));
        if let Some(after) = class.abandon_after {
            self.set_timer(now + after, slot, id, Timer::Abandon);
        }
        self.start_node(slot, 0, NO_BRANCH, 0);
    }

    /// Starts `node` (or one branch of it) with `context` tokens inherited.
    fn start_node(&mut self, slot: u32, node: usize, branch: u32, context: u64) {
        let sc = self.sc;
        let now = self.now;
        let wf = &mut self.workflows[slot as usize];
        let class = &sc.classes[wf.class as usize];
        let graph = graph_of(class, wf.record, &self.stream_rows);
        let spec = &graph.nodes[node];
        let epoch = wf.nodes[node].epoch;

        if branch == NO_BRANCH && spec.fan_out.is_some() {
            let count = class
                .fan_out_at(node, now)
                .map(|s| s.sample_tokens(wf.rng.get()))
                .unwrap_or(1)
                .min(u32::MAX as u64 - 1) as u32;
            // Fan-out caps: the class's own, and the global emergency switch.
            let mut count = count.min(class.max_fan_out.unwrap_or(u32::MAX));
            if let Some((from, until, cap)) = sc.emergency
                && now >= from
                && until.is_none_or(|u| now < u)
            {
                count = count.min(cap);
            }
            let f = spec.fan_out.as_ref().map(|f| (f.quorum, f.wave, f.through));
            let (quorum, wave, through) = f.unwrap_or((None, None, node));
            wf.fan_out = wf.fan_out.max(count);
            let st = &mut wf.nodes[node];
            st.branches_total = count;
            st.needed = quorum.map(|q| q.min(count)).unwrap_or(count);
            st.launched = 0;
            st.finished = 0;
            st.in_flight = 0;
            st.joined = false;
            st.branch_context_sum = 0;
            st.context_in = context;
            if count == 0 {
                // No branches: the fan-out is a no-op and the join passes context on.
                self.complete_node(slot, through, context);
                return;
            }
            self.launch_wave(slot, node, wave);
            return;
        }

        if let Some(nb) = spec.not_before
            && now < wf.arrived + nb
        {
            // A replayed turn waits for its recorded arrival (the user had not sent it
            // yet); started again by the timer.
            let (at, wf_id) = (wf.arrived + nb, wf.id);
            self.set_timer(
                at,
                slot,
                wf_id,
                Timer::NotBefore {
                    node: node as u32,
                    branch,
                    epoch,
                    context,
                },
            );
            return;
        }
        if !spec.enabled {
            self.node_finished(slot, node, branch, context);
            return;
        }
        match spec.kind {
            NodeKind::Human => {
                if wf.rng.get().random::<f64>() < spec.probability {
                    let minutes = spec
                        .minutes
                        .as_ref()
                        .map(|m| m.sample(wf.rng.get()))
                        .unwrap_or(0.0);
                    wf.usd += minutes * spec.usd_per_minute;
                    self.interval.usd_variable += minutes * spec.usd_per_minute;
                    if wf.counted {
                        self.class_stats[wf.class as usize].usd_human +=
                            minutes * spec.usd_per_minute;
                    }
                    let wf_id = wf.id;
                    self.set_timer(
                        now + SimDuration::from_secs_f64(minutes * 60.0),
                        slot,
                        wf_id,
                        Timer::HumanDone {
                            node: node as u32,
                            branch,
                            epoch,
                            context,
                        },
                    );
                } else {
                    self.node_finished(slot, node, branch, context);
                }
            }
            NodeKind::Tool => {
                self.submit_tool(slot, node, branch, epoch, 0, context);
            }
            NodeKind::Llm | NodeKind::Compact => {
                // Nothing to inherit (the entry node, a plain chain): no float rounding.
                let inherited = if context == 0 {
                    0
                } else {
                    (spec.inherit * context as f64).round() as u64
                };
                let base = spec
                    .input_tokens
                    .as_ref()
                    .map(|d| d.sample_tokens(wf.rng.get()))
                    .unwrap_or(0);
                let mut input = base + inherited;
                let mut output = match spec.compact_to {
                    // A summary is never longer than what it summarises.
                    Some(c) => c.min(input),
                    None => spec
                        .output_tokens
                        .as_ref()
                        .map(|d| d.sample_tokens(wf.rng.get()))
                        .unwrap_or(0),
                };
                // A replayed request: the entry hop asks for exactly what was recorded.
                // (A replayed workflow's nodes carry their own recorded tokens.)
                if node == 0
                    && let Some(req) = flat_record(class, wf.record, &self.stream_rows)
                {
                    input = req.input_tokens as u64;
                    output = req.output_tokens as u64;
                }
                let ci = wf.class as usize;
                match self.always_admitted_pool(ci, spec) {
                    Some(p) => self.submit_model_hop(
                        spec, slot, node, branch, epoch, context, input, output, 0, p,
                    ),
                    None => self.route_model_hop(
                        slot, node, branch, epoch, context, input, output, 0, None, None,
                    ),
                }
            }
        }
    }

    /// The pool of a pinned hop that nothing can refuse or redirect (no tier, a pool
    /// that always admits, a class without lane or tenant gates): it skips the router
    /// and the gates (the common case of abstract queueing models; same result, fewer
    /// steps).
    #[inline]
    fn always_admitted_pool(&self, ci: usize, spec: &crate::workflow::Node) -> Option<usize> {
        if spec.tier.is_some() {
            return None;
        }
        // A node naming neither pool nor tier runs on pool 0.
        let p = spec.pool.unwrap_or(0);
        (self.pool_always_admits[p] && self.class_gate_free[ci]).then_some(p)
    }

    /// Whether pool `p`'s breaker lets a call through now.
    fn breaker_allows(&self, p: usize) -> bool {
        let b = &self.breakers[p];
        match b.open_until {
            Some(until) if self.now < until => false,
            // Half-open: one probe at a time.
            Some(_) => !b.probing,
            None => true,
        }
    }

    /// A call to pool `p` failed (refused, timed out or answered with an error).
    fn breaker_failure(&mut self, p: usize) {
        let Some(spec) = &self.sc.pools[p].breaker else {
            return;
        };
        let now = self.now;
        let b = &mut self.breakers[p];
        let half_open = b.open_until.is_some_and(|u| now >= u);
        b.failures += 1;
        let consecutive = spec.failures.is_some_and(|f| b.failures >= f);
        // The error rate is watched while closed; results arriving while open are not
        // calls the breaker let through.
        let rate = match spec.error_rate {
            Some((share, span, min_calls)) if b.open_until.is_none() => {
                let (calls, failed) = b.record(now, span, true);
                calls >= min_calls && failed as f64 >= share * calls as f64
            }
            _ => false,
        };
        if half_open || consecutive || rate {
            b.open_until = Some(now + spec.open);
            b.failures = 0;
            b.probing = false;
            b.window.clear();
            b.window_failed = 0;
            self.pool_stats[p].breaker_opens += 1;
        }
    }

    /// Pool `p` refused a call the client made: counted by cause, and a failure for
    /// its breaker.
    fn refused_by_pool(&mut self, p: usize, r: Refusal) {
        let st = &mut self.pool_stats[p];
        st.refusals += 1;
        *st.refusals_by_cause.entry(r.key()).or_insert(0) += 1;
        self.breaker_failure(p);
    }

    /// A call to pool `p` succeeded.
    fn breaker_success(&mut self, p: usize) {
        // Without a breaker nothing is counted (`breaker_failure` returns at once too).
        if self.sc.pools[p].breaker.is_none() {
            return;
        }
        let now = self.now;
        let b = &mut self.breakers[p];
        b.failures = 0;
        if b.open_until.is_some_and(|u| now >= u) {
            *b = BreakerState::default();
        } else if b.open_until.is_none()
            && let Some((_, span, _)) = self.sc.pools[p].breaker.as_ref().and_then(|s| s.error_rate)
        {
            b.record(now, span, false);
        }
    }

    /// Whether a 429 storm on pool `p` answers this call: in a storm window, a draw
    /// from the hop's timing stream (keyed by the pool) below the storm's share.
    fn storm_refuses(&self, p: usize, ci: usize, wf_no: u64, key: [u64; 4]) -> bool {
        let share = self.sc.pools[p].storm_at(self.now);
        share > 0.0 && {
            let mut trng = timing_stream(
                self.classes[ci].work_seed,
                wf_no,
                [key[0], key[1], key[2], key[3], 3 | ((p as u64) << 8)],
            );
            trng.random::<f64>() < share
        }
    }

    /// A pool's admission answer, turned into a 429 when a storm refuses the call.
    fn storm_filter(
        &self,
        p: usize,
        check: Result<Placement, Refusal>,
        ci: usize,
        wf_no: u64,
        key: [u64; 4],
    ) -> Result<Placement, Refusal> {
        match check {
            Ok(_) if self.storm_refuses(p, ci, wf_no, key) => Err(Refusal::Storm),
            c => c,
        }
    }

    /// Whether a finished model or escalation call failed with an error: a draw from
    /// the hop's timing stream below its pool's error rate as it finishes (`error_rate`,
    /// or an error storm's).
    fn call_failed(&self, ci: usize, wf_no: u64, hop: &Hop) -> bool {
        let rate = self.sc.pools[hop.station as usize].error_rate_at(self.now);
        let tag = if hop.kind == HopKind::Escalation {
            6
        } else {
            4
        };
        rate > 0.0 && {
            let mut trng = timing_stream(
                self.classes[ci].work_seed,
                wf_no,
                [
                    hop.node as u64,
                    hop.branch as u64,
                    hop.epoch as u64,
                    hop.attempt as u64,
                    tag,
                ],
            );
            trng.random::<f64>() < rate
        }
    }

    /// A model or escalation call failed with an error (or timed out: `timeout_at` is
    /// its node's id): retry it after an exponential backoff with jitter (a model call
    /// is routed again, so its tier may fall back; an escalation goes to its escalation
    /// pool again), or fail the workflow once the pool's `max_attempts` are used up.
    fn retry_failed_call(&mut self, slot: u32, hop: Hop, timeout_at: Option<&str>) {
        let sc = self.sc;
        let pool = &sc.pools[hop.station as usize];
        if hop.attempt + 1 >= pool.max_attempts {
            let cause = match timeout_at {
                Some(node) => format!("timeout at {node}"),
                None => format!("error from {}", pool.name),
            };
            self.finish_workflow(slot, Outcome::Failed, &cause);
            return;
        }
        let wf = &mut self.workflows[slot as usize];
        let escalation = hop.kind == HopKind::Escalation;
        let mut trng = timing_stream(
            self.classes[wf.class as usize].work_seed,
            wf.number,
            [
                hop.node as u64,
                hop.branch as u64,
                hop.epoch as u64,
                hop.attempt as u64,
                if escalation { 7 } else { 5 },
            ],
        );
        let b = if timeout_at.is_some() {
            pool.timeout_backoff
        } else {
            pool.error_backoff
        };
        let jitter = 1.0 - b.jitter + 2.0 * b.jitter * trng.random::<f64>();
        let exp = b.base.as_secs_f64() * 2f64.powi(hop.attempt.min(60) as i32);
        let wait = SimDuration::from_secs_f64(exp.min(b.max.as_secs_f64()) * jitter);
        wf.outstanding += 1;
        let wf_id = wf.id;
        let (node, branch, epoch, attempt) = (hop.node, hop.branch, hop.epoch, hop.attempt + 1);
        let (context, input, output) = (hop.context_in, hop.input_tokens, hop.output_tokens);
        let what = if escalation {
            Timer::EscalationRetry {
                node,
                branch,
                epoch,
                attempt,
                context,
                input,
                output,
                cascade: hop.cascade,
            }
        } else {
            Timer::RouteRetry {
                node,
                branch,
                epoch,
                attempt,
                context,
                input,
                output,
            }
        };
        self.set_timer(self.now + wait, slot, wf_id, what);
    }

    /// The caller stopped waiting for `hop` (its timeout passed). The call itself keeps
    /// running and is charged, as waste, when it ends (a client timeout does not stop
    /// the server). The hop is retried like a failed call: a tool by its `retries` and
    /// `retry_backoff`; a model or escalation call by its pool's `max_attempts` and
    /// `error_backoff`, a tiered model hop first falling back at once to the pools after
    /// the one that timed out. Out of attempts, the workflow fails ("timeout at NODE").
    fn retry_timed_out(&mut self, slot: u32, hop: Hop) {
        let sc = self.sc;
        let wf = &mut self.workflows[slot as usize];
        let ci = wf.class as usize;
        let graph = graph_of(&sc.classes[ci], wf.record, &self.stream_rows);
        let spec = &graph.nodes[hop.node as usize];
        let node = hop.node as usize;
        if wf.nodes[node].epoch != hop.epoch {
            // A hop of an earlier loop run: nobody waits for it any more.
            return;
        }
        if hop.branch != NO_BRANCH {
            let head = spec.in_branch_of.unwrap_or(node);
            if wf.nodes[head].joined {
                // A straggler of a fan-out that has already joined (quorum).
                return;
            }
        }
        match hop.kind {
            HopKind::Tool { attempt } => {
                let tool = &sc.tools[hop.station as usize - sc.pools.len()];
                if attempt >= tool.retries {
                    self.finish_workflow(slot, Outcome::Failed, &format!("timeout at {}", spec.id));
                    return;
                }
                let mut trng = timing_stream(
                    self.classes[ci].work_seed,
                    wf.number,
                    [
                        hop.node as u64,
                        hop.branch as u64,
                        hop.epoch as u64,
                        attempt as u64,
                        8,
                    ],
                );
                let backoff = tool
                    .retry_backoff
                    .as_ref()
                    .map(|b| b.sample_duration(&mut trng))
                    .unwrap_or_default();
                wf.outstanding += 1;
                let wf_id = wf.id;
                self.set_timer(
                    self.now + backoff,
                    slot,
                    wf_id,
                    Timer::ToolRetry {
                        node: hop.node,
                        branch: hop.branch,
                        epoch: hop.epoch,
                        attempt: attempt + 1,
                        context: hop.context_in,
                    },
                );
            }
            HopKind::Model => {
                let p = hop.station as usize;
                let fallback = hop.attempt + 1 < sc.pools[p].max_attempts
                    && chain_goes_on_after(sc, ci, spec, &hop, wf.usd, p);
                if fallback {
                    self.route_again(slot, &hop, hop.attempt + 1, Some(p), None);
                } else {
                    self.retry_failed_call(slot, hop, Some(&spec.id));
                }
            }
            HopKind::Escalation => self.retry_failed_call(slot, hop, Some(&spec.id)),
        }
    }

    /// Routes the escalation call of `hop` (attempt `hop.attempt`) through the same
    /// gates as a model hop: its lane's and tenant's limits, then its node's escalation
    /// pool or, for a tier-cascade step (`hop.cascade`), the pools of that tier's chain
    /// in order, the first that takes it (a 429 backs off and tries again).
    fn submit_escalation(&mut self, slot: u32, hop: Hop) {
        self.route_again(slot, &hop, hop.attempt, None, Some(hop.cascade));
    }

    /// Routes `hop`'s call again with its own node, context and tokens (a fallback
    /// past pool `after`, or an escalation step), as attempt `attempt`.
    fn route_again(
        &mut self,
        slot: u32,
        hop: &Hop,
        attempt: u32,
        after: Option<usize>,
        escalation: Option<u32>,
    ) {
        self.route_model_hop(
            slot,
            hop.node as usize,
            hop.branch,
            hop.epoch,
            hop.context_in,
            hop.input_tokens,
            hop.output_tokens,
            attempt,
            after,
            escalation,
        );
    }

    /// Submits an admitted escalation call (cascade step `cascade`, or `NO_TIER`) to
    /// pool `pool`: draws its work and hands it over.
    #[allow(clippy::too_many_arguments)]
    fn submit_escalation_to(
        &mut self,
        slot: u32,
        node: usize,
        branch: u32,
        epoch: u32,
        context: u64,
        input: u64,
        output: u64,
        attempt: u32,
        cascade: u32,
        pool: usize,
    ) {
        let sc = self.sc;
        let wf = &self.workflows[slot as usize];
        let ci = wf.class as usize;
        let graph = graph_of(&sc.classes[ci], wf.record, &self.stream_rows);
        let spec = &graph.nodes[node];
        let hop = Hop {
            seq: 0,
            slot,
            wf_id: 0,
            node: node as u32,
            branch,
            epoch,
            kind: HopKind::Escalation,
            station: pool as u32,
            context_in: context,
            input_tokens: input,
            output_tokens: output,
            timed_out: false,
            attempt,
            cascade,
        };
        // Each cascade step draws its own timing (a step's key differs by its tier).
        let stage = if hop.cascade == NO_TIER {
            2
        } else {
            8 + hop.cascade as u64
        };
        let mut trng = timing_stream(
            self.classes[ci].work_seed,
            wf.number,
            [
                hop.node as u64,
                hop.branch as u64,
                hop.epoch as u64,
                hop.attempt as u64,
                stage,
            ],
        );
        let work = self.hop_work(
            spec,
            pool,
            hop.input_tokens,
            hop.output_tokens,
            None,
            &mut trng,
        );
        // A call released from a door: its caller has been waiting since it was held.
        let since = self.held_since.take();
        let timeout = spec
            .timeout
            .map(|t| since.map_or(t, |s| (s + t) - self.now));
        self.submit_hop(slot, hop, work, timeout);
    }

    /// Whether pool `p` takes a new hop of `tokens` model tokens from a lane of
    /// `priority` now: up, below its queue watermark, (an API) within its RPM/TPM
    /// limits, and what its tokens-in-flight watermark says.
    fn pool_admission(
        &mut self,
        p: usize,
        tokens: u64,
        priority: i32,
    ) -> Result<Placement, Refusal> {
        let pool = &self.sc.pools[p];
        let now = self.now;
        if pool.down_at(now) {
            return Err(Refusal::Down);
        }
        if let Some(max) = pool.max_queue
            && self.stations[p]
                .load_now()
                .is_some_and(|l| l.queued >= max as u64)
        {
            return Err(Refusal::MaxQueue);
        }
        if let Some(api) = &pool.api {
            let window = &mut self.api_window[p];
            let minute_ago = SimTime(now.as_nanos().saturating_sub(60_000_000_000));
            while window.front().is_some_and(|&(t, _)| t <= minute_ago) {
                window.pop_front();
            }
            if api.rpm.is_some_and(|rpm| window.len() as u64 >= rpm as u64) {
                return Err(Refusal::RateLimit);
            }
            if let Some(tpm) = api.tpm {
                let used: u64 = window.iter().map(|&(_, k)| k).sum();
                if used + tokens > tpm {
                    return Err(Refusal::RateLimit);
                }
            }
        }
        if let Some(a) = &pool.admission {
            if a.action == AdmissionAction::Queue && self.must_hold(p, tokens) {
                return Ok(Placement::OverWatermark);
            }
            let after = self.pool_tokens[p].saturating_add(tokens);
            if after > a.threshold {
                return match a.action {
                    // Fits alone (nothing in flight): an oversized hop is not held forever.
                    AdmissionAction::Queue => Ok(Placement::Direct),
                    AdmissionAction::Reject => Err(Refusal::TokensInFlight),
                    AdmissionAction::Degrade => match a.degrade_to {
                        Some(q) => Ok(Placement::Degrade(q)),
                        None => Err(Refusal::TokensInFlight),
                    },
                    // The top lane goes on up to 100%; lower lanes are shed.
                    AdmissionAction::Shed if priority < a.top_priority => Err(Refusal::Shed),
                    AdmissionAction::Shed if after <= a.max_tokens_in_flight => {
                        Ok(Placement::Direct)
                    }
                    AdmissionAction::Shed => Err(Refusal::TokensInFlight),
                };
            }
        }
        Ok(Placement::Direct)
    }

    /// Whether the degrade target `q` of a pool's watermark takes a hop: `Ok(true)` if
    /// admitted above its own `queue` watermark (counted on `q`), `Ok(false)` if
    /// admitted below it, the refusal otherwise (counted on `q` when the client tried
    /// it; an open breaker or a `degrade` watermark of its own also refuse).
    #[allow(clippy::too_many_arguments)]
    fn degrade_target(
        &mut self,
        q: usize,
        tokens: u64,
        priority: i32,
        ci: usize,
        wf_no: u64,
        storm_key: [u64; 4],
    ) -> Result<bool, Refusal> {
        let check = self
            .breaker_allows(q)
            .then(|| self.pool_admission(q, tokens, priority))
            .map(|c| self.storm_filter(q, c, ci, wf_no, storm_key));
        match check {
            Some(Ok(Placement::Direct)) => Ok(false),
            Some(Ok(Placement::OverWatermark)) => {
                self.pool_stats[q].admitted_over_watermark += 1;
                Ok(true)
            }
            Some(Ok(Placement::Degrade(_))) | Some(Err(_)) | None => {
                let r = match check {
                    Some(Err(r)) => r,
                    _ if self.sc.pools[q].down_at(self.now) => Refusal::Down,
                    _ => Refusal::TokensInFlight,
                };
                if check.is_some() {
                    self.refused_by_pool(q, r);
                }
                Err(r)
            }
        }
    }

    /// Lane and tenant limits, checked before any pool is tried: `Ok(Some(pool))` when
    /// the lane's watermark degrades the hop to `pool`, `Ok(None)` to go on, and the
    /// 429 otherwise. `over` is set when a `queue` watermark is crossed.
    fn gateway(
        &mut self,
        ci: usize,
        tokens: u64,
        over: &mut bool,
    ) -> Result<Option<usize>, GateRefusal> {
        let sc = self.sc;
        let class = &sc.classes[ci];
        let li = class.lane_index;
        let lane = &sc.lanes[li];
        let now = self.now;
        let refusal = |cause: String, exact: Option<SimDuration>, after, attempts| GateRefusal {
            cause,
            exact,
            retry_after: after,
            max_attempts: attempts,
            hold: false,
        };
        let mut degrade = None;
        let queue_watermark = lane
            .admission
            .as_ref()
            .is_some_and(|a| a.action == AdmissionAction::Queue);
        if (queue_watermark || lane.max_in_flight.is_some())
            && !self.lane_release
            && self.lane_must_hold(li, tokens)
        {
            // Under a `queue` watermark every held hop counts as over it (as before a
            // cap existed); a cap alone is a concurrency limit, not a watermark.
            *over = queue_watermark;
            return Err(GateRefusal {
                hold: true,
                ..refusal(String::new(), None, None, None)
            });
        }
        if let Some(a) = &lane.admission
            && !queue_watermark
            && self.lane_tokens[li].saturating_add(tokens) > a.threshold
        {
            match a.action {
                AdmissionAction::Queue => {}
                AdmissionAction::Degrade if a.degrade_to.is_some() => degrade = a.degrade_to,
                _ => {
                    return Err(refusal(
                        format!("429 from lane {} (tokens in flight)", lane.name),
                        None,
                        lane.retry_after,
                        lane.max_attempts,
                    ));
                }
            }
        }
        if let Some(b) = self.lane_buckets[li].as_mut()
            && !b.allows(now, tokens)
        {
            return Err(refusal(
                format!("429 from lane {} (rate limit)", lane.name),
                Some(b.wait_for(tokens)),
                None,
                lane.max_attempts,
            ));
        }
        if let Some(ti) = class.tenant_index {
            let tenant = &sc.tenants[ti];
            if tenant
                .max_tokens_in_flight
                .is_some_and(|m| self.tenant_tokens[ti].saturating_add(tokens) > m)
            {
                return Err(refusal(
                    format!("429 from tenant {} (token budget)", tenant.name),
                    None,
                    tenant.retry_after,
                    tenant.max_attempts,
                ));
            }
            if let Some(b) = self.tenant_buckets[ti].as_mut()
                && !b.allows(now, tokens)
            {
                return Err(refusal(
                    format!("429 from tenant {} (rate limit)", tenant.name),
                    Some(b.wait_for(tokens)),
                    None,
                    tenant.max_attempts,
                ));
            }
        }
        Ok(degrade)
    }

    /// Expected service seconds and dollars of a model hop on pool `p`.
    fn estimate(
        &self,
        spec: &crate::workflow::Node,
        p: usize,
        input: u64,
        output: u64,
    ) -> (f64, f64) {
        let pool = &self.sc.pools[p];
        if let Some(g) = &pool.gpu {
            let (prefill, decode) = g.solo_latency(input, output);
            let t = (prefill + decode).as_secs_f64();
            return (t, t * pool.usd_per_server_hour / 3600.0);
        }
        match &pool.api {
            Some(api) => (
                api.ttft.mean() + output.saturating_sub(1) as f64 * api.tpot.mean(),
                pool.api_usd_cached(input, spec.shared_prefix_tokens as u64, output),
            ),
            None => {
                let base = spec
                    .service
                    .as_ref()
                    .or(pool.service.as_ref())
                    .map(|s| s.mean())
                    .unwrap_or(0.0);
                let t = base + pool.token_time(input, output).as_secs_f64();
                (t, t * pool.usd_per_server_hour / 3600.0)
            }
        }
    }

    /// Chooses the pool of a model hop (its fixed pool, or the router's pick from its
    /// tier's fallback chain) and submits it; with no pool available, the client backs
    /// off for the pool's retry-after (with jitter) and tries again, up to the pool's
    /// `max_attempts`, after which the workflow is rejected. `after`: the pool this
    /// hop's previous attempt timed out on; a tiered hop then falls back to the pools
    /// after it in its chain (a degraded hop). `escalation`: the call is the node's
    /// escalation (`Some(NO_TIER)`) or a cascade step onto that tier, which goes to the
    /// first pool of [`escalation_chain`] that takes it, with no router.
    #[allow(clippy::too_many_arguments)]
    fn route_model_hop(
        &mut self,
        slot: u32,
        node: usize,
        branch: u32,
        epoch: u32,
        context: u64,
        input: u64,
        output: u64,
        attempt: u32,
        after: Option<usize>,
        escalation: Option<u32>,
    ) {
        let sc = self.sc;
        let now = self.now;
        let (ci, arrived, usd_so_far, record, wf_no) = {
            let wf = &self.workflows[slot as usize];
            (wf.class as usize, wf.arrived, wf.usd, wf.record, wf.number)
        };
        let class = &sc.classes[ci];
        let graph = graph_of(class, record, &self.stream_rows);
        let spec = &graph.nodes[node];
        const POOL_ZERO: usize = 0;
        let esc_chain = escalation.map(|c| escalation_chain(sc, spec, c));
        if let Some(chain) = esc_chain {
            let Some(&p) = chain.first() else {
                // Validation gives every escalation a pool; defensive.
                return;
            };
            if chain.iter().all(|&q| self.pool_always_admits[q]) && self.class_gate_free[ci] {
                let cascade = escalation.unwrap_or(NO_TIER);
                self.submit_escalation_to(
                    slot, node, branch, epoch, context, input, output, attempt, cascade, p,
                );
                return;
            }
        } else if let Some(p) = self.always_admitted_pool(ci, spec) {
            self.submit_model_hop(
                spec, slot, node, branch, epoch, context, input, output, attempt, p,
            );
            return;
        }
        let chain: &[usize] = match (esc_chain, spec.tier, spec.pool.as_ref()) {
            (Some(c), _, _) => c,
            // Routing rules may route the hop on another tier or restrict its pools.
            (None, Some(t), _) => sc.tier_chain(
                ci,
                HopRouting {
                    tier: t,
                    budget_left: class.budget_usd.map(|b| b - usd_so_far),
                    role: &spec.role,
                    input_tokens: input,
                },
            ),
            (None, None, Some(p)) => std::slice::from_ref(p),
            (None, None, None) => std::slice::from_ref(&POOL_ZERO),
        };
        if chain.is_empty() {
            // Validation refuses rules that leave a node without a pool; defensive.
            self.finish_workflow(
                slot,
                Outcome::Rejected,
                "no pool allowed by the routing rules",
            );
            return;
        }
        // An escalation's storm draw is its own (it redoes the hop on another pool).
        let esc_bit = if escalation.is_some() { 1 << 32 } else { 0 };
        let storm_key = [
            node as u64,
            branch as u64,
            epoch as u64,
            attempt as u64 | esc_bit,
        ];
        // Retry-after and attempts come from the first pool of the hop's own chain.
        let home = chain[0];
        // A fallback after a timeout: only the pools after the one that timed out.
        let fell_back = after
            .and_then(|a| chain.iter().position(|&p| p == a))
            .filter(|&k| k + 1 < chain.len());
        let chain: &[usize] = match fell_back {
            Some(k) => &chain[k + 1..],
            None => chain,
        };
        let tokens = input + output;
        let priority = sc.lanes[class.lane_index].priority;
        // Lane and tenant limits come first; a lane watermark may degrade the hop.
        let mut over = false;
        let gate = self.gateway(ci, tokens, &mut over);
        if gate.as_ref().is_err_and(|g| g.hold) {
            // Above the lane's `queue` watermark (or behind hops already held there):
            // wait at the lane's door; routed when the lane's tokens in flight fall (or,
            // at its concurrency cap, when one of its hops finishes).
            if over && self.workflows[slot as usize].counted {
                self.class_stats[ci].admitted_over_watermark += 1;
            }
            let door = (sc.pools.len() + class.lane_index) as u32;
            self.hold(
                door, slot, node, branch, epoch, attempt, context, input, output, escalation,
            );
            return;
        }
        let lane_degrade = gate.as_ref().ok().copied().flatten();
        let chain: &[usize] = match &lane_degrade {
            Some(d) => std::slice::from_ref(d),
            None => chain,
        };
        // Only tiered hops need the router's view of every candidate; a pinned hop only
        // needs to know whether its pool takes it (and most pools always do). `checks`
        // holds each candidate's answer (`None`: its breaker kept the client away).
        // A reused buffer: no allocation per hop.
        let mut checks = std::mem::take(&mut self.route_checks);
        checks.clear();
        let choice = if gate.is_err() {
            None
        } else if escalation.is_none() && spec.tier.is_some() && lane_degrade.is_none() {
            let mut views = Vec::with_capacity(chain.len());
            for &p in chain {
                let load = self.stations[p].load_now().unwrap_or_default();
                let (service_s, usd) = self.estimate(spec, p, input, output);
                let check = self
                    .breaker_allows(p)
                    .then(|| self.pool_admission(p, tokens, priority))
                    .map(|c| self.storm_filter(p, c, ci, wf_no, storm_key));
                let ok = matches!(check, Some(Ok(_)));
                checks.push(check);
                views.push(PoolView {
                    pool: p,
                    servers: load.servers,
                    busy: load.busy,
                    queued: load.queued,
                    service_s,
                    usd,
                    available: ok,
                });
            }
            let req = RouteRequest {
                class: ci,
                lane: class.lane_index as u32,
                slo_remaining_s: class.slo.map(|s| ((arrived + s) - now).as_secs_f64()),
                budget_remaining_usd: class.budget_usd.map(|b| b - usd_so_far),
            };
            self.router
                .choose(&req, &views)
                .filter(|&i| i < views.len() && views[i].available)
        } else {
            // A pinned hop's one pool, or an escalation's chain in order up to the first
            // pool that takes it.
            let mut first_ok = None;
            for (k, &p) in chain.iter().enumerate() {
                let check = if self.pool_always_admits[p] {
                    Some(Ok(Placement::Direct))
                } else {
                    self.breaker_allows(p)
                        .then(|| self.pool_admission(p, tokens, priority))
                        .map(|c| self.storm_filter(p, c, ci, wf_no, storm_key))
                };
                let ok = matches!(check, Some(Ok(_)));
                checks.push(check);
                if ok {
                    first_ok = Some(k);
                    break;
                }
            }
            first_ok
        };
        // The client tried the chain in order up to its choice: every pool before it
        // that its breaker let through but that refused counts as a failed call.
        let tried = choice.unwrap_or(checks.len());
        for k in 0..tried {
            if let Some(Err(r)) = checks[k] {
                self.refused_by_pool(chain[k], r);
            }
        }
        // Where the hop goes: (position in the chain, pool, degraded by a watermark), or
        // the cause of the 429 when nothing takes it.
        let gate_retry = gate
            .as_ref()
            .err()
            .map(|g| (g.exact, g.retry_after, g.max_attempts));
        let placed: Result<(usize, usize, bool), String> = match (gate, choice) {
            (Err(g), _) => Err(g.cause),
            (Ok(_), None) => Err(match checks.first() {
                Some(Some(Err(r))) => r.cause(&sc.pools[chain[0]].name),
                // Not tried (its breaker is open), or the router chose none.
                _ if sc.pools[chain[0]].down_at(now) => {
                    Refusal::Down.cause(&sc.pools[chain[0]].name)
                }
                _ => Refusal::MaxQueue.cause(&sc.pools[chain[0]].name),
            }),
            (Ok(_), Some(i)) => match checks[i] {
                Some(Ok(Placement::Degrade(q))) => {
                    match self.degrade_target(q, tokens, priority, ci, wf_no, storm_key) {
                        Ok(o) => {
                            over |= o;
                            self.pool_stats[chain[i]].degraded_away += 1;
                            Ok((i, q, true))
                        }
                        Err(r) => {
                            // The degrade target refused: the client tries the rest of the
                            // chain in order (degraded), and backs off only when all of it
                            // refuses.
                            let mut placed = Err(r.cause(&sc.pools[q].name));
                            for k in (0..checks.len()).filter(|&k| k != i) {
                                match checks[k] {
                                    Some(Ok(Placement::Direct)) => {
                                        placed = Ok((k, chain[k], true));
                                        break;
                                    }
                                    Some(Ok(Placement::OverWatermark)) => {
                                        over = true;
                                        self.pool_stats[chain[k]].admitted_over_watermark += 1;
                                        placed = Ok((k, chain[k], true));
                                        break;
                                    }
                                    Some(Ok(Placement::Degrade(q2))) if q2 != q => {
                                        let t = self.degrade_target(
                                            q2, tokens, priority, ci, wf_no, storm_key,
                                        );
                                        if let Ok(o) = t {
                                            over |= o;
                                            self.pool_stats[chain[k]].degraded_away += 1;
                                            placed = Ok((k, q2, true));
                                            break;
                                        }
                                    }
                                    // Refusals before the router's choice are counted.
                                    Some(Err(r)) if k > i => self.refused_by_pool(chain[k], r),
                                    _ => {}
                                }
                            }
                            placed
                        }
                    }
                }
                Some(Ok(Placement::OverWatermark)) => {
                    over = true;
                    self.pool_stats[chain[i]].admitted_over_watermark += 1;
                    Ok((i, chain[i], lane_degrade.is_some()))
                }
                _ => Ok((i, chain[i], lane_degrade.is_some())),
            },
        };
        self.route_checks = checks;
        let (i, p, degraded) = match placed {
            Ok(x) => x,
            Err(cause) => {
                let first = &sc.pools[home];
                if self.workflows[slot as usize].counted {
                    *self.class_stats[ci]
                        .refused_by_cause
                        .entry(cause.clone())
                        .or_insert(0) += 1;
                }
                // A lane's or tenant's 429 may carry its own retry-after and attempts.
                let (exact, retry_after, attempts) = gate_retry.unwrap_or((None, None, None));
                if attempt + 1 >= attempts.unwrap_or(first.max_attempts) {
                    if escalation.is_some()
                        && class.on_escalation_refused == OnEscalationRefused::KeepAnswer
                    {
                        // The answer the escalation would have redone stands.
                        if self.workflows[slot as usize].counted {
                            self.class_stats[ci].degraded_hops += 1;
                        }
                        let ctx = if spec.compact_to.is_some() {
                            output
                        } else {
                            input + output
                        };
                        self.node_finished(slot, node, branch, ctx);
                        return;
                    }
                    self.finish_workflow(slot, Outcome::Rejected, &cause);
                    return;
                }
                let wf = &mut self.workflows[slot as usize];
                let wait = match exact {
                    // A token bucket's 429 says exactly when it can pay: no jitter.
                    Some(w) => w,
                    None => {
                        let mut trng = timing_stream(
                            self.classes[ci].work_seed,
                            wf.number,
                            [
                                node as u64,
                                branch as u64,
                                epoch as u64,
                                attempt as u64 | esc_bit,
                                1,
                            ],
                        );
                        // Retry-After is a minimum: spread the retries over [1, 1.25]
                        // of it, never earlier than the server said.
                        let jitter = 1.0 + 0.25 * trng.random::<f64>();
                        let after = retry_after.unwrap_or(first.retry_after);
                        SimDuration::from_secs_f64(after.as_secs_f64() * jitter)
                    }
                };
                wf.outstanding += 1;
                let wf_id = wf.id;
                let (node, attempt) = (node as u32, attempt + 1);
                let what = match escalation {
                    Some(cascade) => Timer::EscalationRetry {
                        node,
                        branch,
                        epoch,
                        attempt,
                        context,
                        input,
                        output,
                        cascade,
                    },
                    None => Timer::RouteRetry {
                        node,
                        branch,
                        epoch,
                        attempt,
                        context,
                        input,
                        output,
                    },
                };
                self.set_timer(now + wait, slot, wf_id, what);
                return;
            }
        };
        if self.breakers[p].open_until.is_some_and(|u| now >= u) {
            self.breakers[p].probing = true;
        }
        // Admitted: the lane's and tenant's buckets pay for the tokens.
        if let Some(b) = self.lane_buckets[class.lane_index].as_mut() {
            b.take(now, tokens);
        }
        if let Some(b) = class
            .tenant_index
            .and_then(|t| self.tenant_buckets[t].as_mut())
        {
            b.take(now, tokens);
        }
        let pool = &sc.pools[p];
        let wf = &mut self.workflows[slot as usize];
        if (i > 0 || degraded || fell_back.is_some()) && wf.counted {
            self.class_stats[ci].degraded_hops += 1;
        }
        if over && wf.counted {
            self.class_stats[ci].admitted_over_watermark += 1;
        }
        if pool.api.is_some() {
            self.api_window[p].push_back((now, input + output));
        }
        if pool
            .admission
            .as_ref()
            .is_some_and(|a| a.action == AdmissionAction::Queue)
            && self.must_hold(p, tokens)
        {
            // Above a `queue` watermark (or behind hops already held): wait at the door.
            self.hold(
                p as u32, slot, node, branch, epoch, attempt, context, input, output, escalation,
            );
            return;
        }
        match escalation {
            Some(cascade) => self.submit_escalation_to(
                slot, node, branch, epoch, context, input, output, attempt, cascade, p,
            ),
            None => self.submit_model_hop(
                spec, slot, node, branch, epoch, context, input, output, attempt, p,
            ),
        }
    }

    /// Holds a model hop at door `door` (pool `door`, or lane `door - pools`), and
    /// starts its caller's timeout, which runs from when the caller started waiting (an
    /// earlier door, if it was held there first).
    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        door: u32,
        slot: u32,
        node: usize,
        branch: u32,
        epoch: u32,
        attempt: u32,
        context: u64,
        input: u64,
        output: u64,
        escalation: Option<u32>,
    ) {
        let since = self.held_since.take().unwrap_or(self.now);
        let id = self.next_held_id;
        self.next_held_id += 1;
        let wf = &mut self.workflows[slot as usize];
        wf.outstanding += 1;
        let wf_id = wf.id;
        let timeout = graph_of(
            &self.sc.classes[wf.class as usize],
            wf.record,
            &self.stream_rows,
        )
        .nodes[node]
            .timeout;
        let held = Held {
            id,
            since,
            slot,
            node: node as u32,
            branch,
            epoch,
            attempt,
            context,
            input,
            output,
            escalation,
        };
        let n_pools = self.sc.pools.len();
        match (door as usize).checked_sub(n_pools) {
            None => self.door[door as usize].push_back(held),
            Some(li) => self.lane_door[li].push_back(held),
        }
        if let Some(t) = timeout {
            self.set_timer(
                (since + t).max(self.now),
                slot,
                wf_id,
                Timer::HeldTimeout { door, id },
            );
        }
    }

    /// A held hop's timeout passed at its door: it leaves the door (it never ran and
    /// costs nothing) and is retried as a timed-out call of its pool (a lane door's hop:
    /// of the first pool of its chain). The breaker does not count it: the pool never
    /// saw it.
    fn held_timed_out(&mut self, slot: u32, door: u32, id: u64) {
        let sc = self.sc;
        let n_pools = sc.pools.len();
        let queue = match (door as usize).checked_sub(n_pools) {
            None => &mut self.door[door as usize],
            Some(li) => &mut self.lane_door[li],
        };
        let Some(h) = queue
            .iter()
            .position(|h| h.id == id)
            .and_then(|k| queue.remove(k))
        else {
            return;
        };
        let wf = &mut self.workflows[slot as usize];
        wf.outstanding -= 1;
        let (ci, usd, record, wf_id) = (wf.class as usize, wf.usd, wf.record, wf.id);
        let station = match (door as usize).checked_sub(n_pools) {
            None => door as usize,
            Some(_) => {
                let class = &sc.classes[ci];
                let graph = graph_of(class, record, &self.stream_rows);
                let spec = &graph.nodes[h.node as usize];
                if let Some(c) = h.escalation {
                    escalation_chain(sc, spec, c).first().copied().unwrap_or(0)
                } else {
                    match spec.tier {
                        Some(t) => sc
                            .tier_chain(
                                ci,
                                HopRouting {
                                    tier: t,
                                    budget_left: class.budget_usd.map(|b| b - usd),
                                    role: &spec.role,
                                    input_tokens: h.input,
                                },
                            )
                            .first()
                            .copied()
                            .unwrap_or(0),
                        None => spec.pool.unwrap_or(0),
                    }
                }
            }
        };
        let hop = Hop {
            seq: 0,
            slot,
            wf_id,
            node: h.node,
            branch: h.branch,
            epoch: h.epoch,
            kind: match h.escalation {
                Some(_) => HopKind::Escalation,
                None => HopKind::Model,
            },
            station: station as u32,
            context_in: h.context,
            input_tokens: h.input,
            output_tokens: h.output,
            timed_out: true,
            attempt: h.attempt,
            cascade: h.escalation.unwrap_or(NO_TIER),
        };
        self.retry_timed_out(slot, hop);
        self.maybe_release(slot);
        // The hops behind it may fit now.
        match (door as usize).checked_sub(n_pools) {
            None => self.door_may_open(door as usize),
            Some(li) => {
                if !self.lane_door[li].is_empty() && !self.lane_door_event[li] {
                    self.lane_door_event[li] = true;
                    self.queue
                        .push(self.now, Event::LaneDoorOpen { lane: li as u32 });
                }
            }
        }
    }

    /// Whether a hop of `tokens` must wait at the door of pool `p` (a `queue`
    /// watermark): hops are already held there (FIFO), or it would take the pool's
    /// tokens in flight above the watermark while something is in flight (a hop
    /// larger than the watermark goes in alone).
    fn must_hold(&self, p: usize, tokens: u64) -> bool {
        let Some(a) = &self.sc.pools[p].admission else {
            return false;
        };
        let now = self.pool_tokens[p];
        !self.door[p].is_empty() || (now > 0 && now.saturating_add(tokens) > a.threshold)
    }

    /// Whether a hop of `tokens` must wait at lane `li`'s door (its `queue` watermark):
    /// as [`Self::must_hold`], over the lane's tokens in flight.
    /// With a concurrency cap (`max_in_flight`), also while the lane has that many model
    /// hops in flight.
    fn lane_must_hold(&self, li: usize, tokens: u64) -> bool {
        !self.lane_door[li].is_empty() || self.lane_over_tokens(li, tokens) || self.lane_at_cap(li)
    }

    /// A hop of `tokens` would take lane `li` over its `queue` watermark (a hop alone
    /// on the lane always fits).
    fn lane_over_tokens(&self, li: usize, tokens: u64) -> bool {
        let now = self.lane_tokens[li];
        self.sc.lanes[li].admission.as_ref().is_some_and(|a| {
            a.action == AdmissionAction::Queue
                && now > 0
                && now.saturating_add(tokens) > a.threshold
        })
    }

    /// Lane `li` has as many model hops in flight as its concurrency cap allows.
    fn lane_at_cap(&self, li: usize) -> bool {
        self.sc.lanes[li]
            .max_in_flight
            .is_some_and(|c| self.lane_hops[li] >= c)
    }

    /// Releases the hops held at lane `li`'s door, in order, while the first fits under
    /// the lane's watermark (or the lane has nothing in flight): each is routed as a
    /// new attempt would be, past the lane's door.
    fn open_lane_door(&mut self, li: usize) {
        while let Some(&h) = self.lane_door[li].front() {
            let wf = &self.workflows[h.slot as usize];
            let live = wf.outcome.is_none() && wf.nodes[h.node as usize].epoch == h.epoch;
            let k = h.input + h.output;
            if live && (self.lane_over_tokens(li, k) || self.lane_at_cap(li)) {
                break;
            }
            self.lane_door[li].pop_front();
            self.workflows[h.slot as usize].outstanding -= 1;
            if live {
                self.lane_release = true;
                self.held_since = Some(h.since);
                self.route_model_hop(
                    h.slot,
                    h.node as usize,
                    h.branch,
                    h.epoch,
                    h.context,
                    h.input,
                    h.output,
                    h.attempt,
                    None,
                    h.escalation,
                );
                self.lane_release = false;
                self.held_since = None;
            } else {
                self.maybe_release(h.slot);
            }
        }
    }

    /// Pool `p`'s tokens in flight fell: schedule the release of its held hops.
    fn door_may_open(&mut self, p: usize) {
        if !self.door[p].is_empty() && !self.door_event[p] {
            self.door_event[p] = true;
            self.queue
                .push(self.now, Event::DoorOpen { pool: p as u32 });
        }
    }

    /// Releases the hops held at pool `p`'s door, in order, while the first fits under
    /// the watermark (or nothing is in flight); hops whose workflow no longer needs
    /// them are dropped (they never ran and cost nothing). A released hop's timeout
    /// starts now.
    fn open_door(&mut self, p: usize) {
        let Some(a) = &self.sc.pools[p].admission else {
            return;
        };
        let threshold = a.threshold;
        while let Some(&h) = self.door[p].front() {
            let wf = &self.workflows[h.slot as usize];
            let live = wf.outcome.is_none() && wf.nodes[h.node as usize].epoch == h.epoch;
            let k = h.input + h.output;
            let in_flight = self.pool_tokens[p];
            if live && in_flight > 0 && in_flight.saturating_add(k) > threshold {
                break;
            }
            self.door[p].pop_front();
            self.workflows[h.slot as usize].outstanding -= 1;
            if live {
                self.held_since = Some(h.since);
                let n = h.node as usize;
                let (c, i, o) = (h.context, h.input, h.output);
                match h.escalation {
                    Some(cascade) => self.submit_escalation_to(
                        h.slot, n, h.branch, h.epoch, c, i, o, h.attempt, cascade, p,
                    ),
                    None => {
                        let sc = self.sc;
                        let wf = &self.workflows[h.slot as usize];
                        let graph =
                            graph_of(&sc.classes[wf.class as usize], wf.record, &self.stream_rows);
                        let spec = &graph.nodes[n];
                        self.submit_model_hop(
                            spec, h.slot, n, h.branch, h.epoch, c, i, o, h.attempt, p,
                        )
                    }
                }
                self.held_since = None;
            } else {
                self.maybe_release(h.slot);
            }
        }
    }

    /// Submits an admitted model hop to pool `p`: draws its work and hands it over.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn submit_model_hop(
        &mut self,
        spec: &crate::workflow::Node,
        slot: u32,
        node: usize,
        branch: u32,
        epoch: u32,
        context: u64,
        input: u64,
        output: u64,
        attempt: u32,
        p: usize,
    ) {
        let sc = self.sc;
        let wf = &self.workflows[slot as usize];
        let ci = wf.class as usize;
        let class = &sc.classes[ci];
        let recorded = match node {
            0 => flat_record(class, wf.record, &self.stream_rows),
            _ => None,
        };
        let rt = &self.classes[ci];
        let key = match rt.first_call_keys.get(node) {
            Some(&key) if branch == NO_BRANCH && epoch == 0 && attempt == 0 => key,
            _ => timing_key(
                rt.work_seed,
                [node as u64, branch as u64, epoch as u64, attempt as u64, 0],
            ),
        };
        let mut trng = workflow_stream(key, wf.number);
        let work = self.hop_work(spec, p, input, output, recorded, &mut trng);
        // A hop released from a door: its caller has been waiting since it was held.
        let since = self.held_since.take();
        let timeout = spec
            .timeout
            .map(|t| since.map_or(t, |s| (s + t) - self.now));
        self.submit_hop(
            slot,
            Hop {
                seq: 0,
                slot,
                wf_id: 0,
                node: node as u32,
                branch,
                epoch,
                kind: HopKind::Model,
                station: p as u32,
                context_in: context,
                input_tokens: input,
                output_tokens: output,
                timed_out: false,
                attempt,
                cascade: NO_TIER,
            },
            work,
            timeout,
        );
    }

    /// What a model hop of `input`/`output` tokens asks of pool `p`: token requests for
    /// GPU replicas, a service time elsewhere (an API: TTFT + (output - 1) x TPOT; an
    /// abstract pool: its service draw plus the token-driven part).
    #[inline(always)]
    fn hop_work(
        &self,
        spec: &crate::workflow::Node,
        p: usize,
        input: u64,
        output: u64,
        recorded: Option<&crate::scenario::RecordedRequest>,
        trng: &mut WorkflowRng,
    ) -> Work {
        let pool = &self.sc.pools[p];
        if pool.gpu.is_some() {
            // A recorded request's hashes, else the node's own (a replayed session turn).
            let (block_hashes, hash_block_tokens) =
                match recorded.filter(|r| r.block_hashes.is_some()) {
                    Some(r) => (r.block_hashes.clone(), r.hash_block_tokens),
                    None => (spec.block_hashes.clone(), spec.hash_block_tokens),
                };
            return Work::Llm(Box::new(LlmRequest {
                input_tokens: input.min(u32::MAX as u64) as u32,
                output_tokens: output.clamp(1, u32::MAX as u64) as u32,
                shared_prefix_tokens: (spec.shared_prefix_tokens as u64).min(input) as u32,
                prefix_group: spec.prefix_group,
                block_hashes,
                hash_block_tokens,
                itl_group: None,
            }));
        }
        if let Some(api) = &pool.api {
            let ttft = api.ttft.sample(trng);
            let tpot = api.tpot.sample(trng);
            return Work::Api(Box::new(ApiCall {
                service: SimDuration::from_secs_f64(ttft + output.saturating_sub(1) as f64 * tpot),
                ttft: SimDuration::from_secs_f64(ttft),
                tpot: SimDuration::from_secs_f64(tpot),
            }));
        }
        Work::Service(
            spec.service
                .as_ref()
                .or(pool.service.as_ref())
                .map(|s| s.sample_duration(trng))
                .unwrap_or(SimDuration::ZERO)
                + pool.token_time(input, output),
        )
    }

    fn launch_wave(&mut self, slot: u32, head: usize, wave: Option<u32>) {
        let st = &self.workflows[slot as usize].nodes[head];
        let remaining = st.branches_total - st.launched;
        let n = wave.map(|w| w.min(remaining)).unwrap_or(remaining);
        let context = st.context_in;
        for _ in 0..n {
            let st = &mut self.workflows[slot as usize].nodes[head];
            let b = st.launched;
            st.launched += 1;
            st.in_flight += 1;
            self.start_node(slot, head, b, context);
            if self.workflows[slot as usize].outcome.is_some() {
                return;
            }
        }
    }

    fn submit_tool(
        &mut self,
        slot: u32,
        node: usize,
        branch: u32,
        epoch: u32,
        attempt: u32,
        context: u64,
    ) {
        let sc = self.sc;
        let wf = &mut self.workflows[slot as usize];
        let graph = graph_of(&sc.classes[wf.class as usize], wf.record, &self.stream_rows);
        let spec = &graph.nodes[node];
        let tool_idx = spec.tool.unwrap_or(0);
        let tool = &sc.tools[tool_idx];
        // The node's own latency (a call site, or a replayed span's recorded wait), else
        // the tool's.
        let mut latency = spec
            .service
            .as_ref()
            .unwrap_or(&tool.latency)
            .sample_duration(wf.rng.get());
        if !tool.spikes.is_empty() {
            // A latency spike in force when the call is made multiplies its latency.
            let factor = tool.spike_at(self.now);
            if factor != 1.0 {
                latency = SimDuration::from_secs_f64(latency.as_secs_f64() * factor);
            }
        }
        let timeout = spec.timeout;
        self.submit_hop(
            slot,
            Hop {
                seq: 0,
                slot,
                wf_id: 0,
                node: node as u32,
                branch,
                epoch,
                kind: HopKind::Tool { attempt },
                station: (sc.pools.len() + tool_idx) as u32,
                context_in: context,
                input_tokens: 0,
                output_tokens: 0,
                timed_out: false,
                attempt: 0,
                cascade: NO_TIER,
            },
            Work::Service(latency),
            timeout,
        );
    }

    /// Hands a hop to its station. Inlined into each caller (a handful): one call less
    /// per hop, and the callers' values stay in registers.
    #[inline(always)]
    fn submit_hop(
        &mut self,
        slot: u32,
        mut hop: Hop,
        mut work: Work,
        timeout: Option<SimDuration>,
    ) {
        // A measured GPU request reports its inter-token gaps into its breakdown cell.
        if let Work::Llm(r) = &mut work
            && self.now >= self.warmup
        {
            let wf = &self.workflows[slot as usize];
            let graph = graph_of(
                &self.sc.classes[wf.class as usize],
                wf.record,
                &self.stream_rows,
            );
            let spec = &graph.nodes[hop.node as usize];
            r.itl_group = self.breakdown.token_group(
                wf.class as usize,
                spec.tier,
                hop.kind == HopKind::Escalation,
                hop.station as usize,
            );
        }
        // The workflow, its class and lane looked up once (the class borrows the
        // scenario, not `self`).
        let sc = self.sc;
        let wf = &mut self.workflows[slot as usize];
        let ci = wf.class as usize;
        let class = &sc.classes[ci];
        let arrived = wf.arrived;
        hop.seq = self.next_hop_seq;
        hop.wf_id = wf.id;
        self.next_hop_seq += 1;
        wf.outstanding += 1;
        let k = hop.input_tokens + hop.output_tokens;
        if matches!(hop.kind, HopKind::Model | HopKind::Escalation) {
            wf.tokens += k;
            // Nothing reads the in-flight counters of a lane and tenant without gates
            // (every class on them is gate free too): not kept for a gate-free class.
            if !self.class_gate_free[ci] {
                self.lane_tokens[class.lane_index] += k;
                self.lane_hops[class.lane_index] += 1;
                if let Some(t) = class.tenant_index {
                    self.tenant_tokens[t] += k;
                }
            }
        }
        let station = hop.station as usize;
        // Pools only (tools come after them).
        if let Some(in_flight) = self.pool_tokens.get_mut(station) {
            *in_flight += k;
            self.pool_active_at[station] = self.now;
            let st = &mut self.pool_stats[station];
            st.peak_tokens_in_flight = st.peak_tokens_in_flight.max(*in_flight);
        }
        let hop_slot = match self.free_hops.pop() {
            Some(h) => {
                self.hops[h as usize] = Some(hop);
                h
            }
            None => {
                self.hops.push(Some(hop));
                (self.hops.len() - 1) as u32
            }
        };
        if let Some(t) = timeout {
            self.set_timer(
                self.now + t,
                slot,
                hop.wf_id,
                Timer::HopTimeout {
                    hop: hop_slot,
                    seq: hop.seq,
                },
            );
        }
        let built;
        let meta = if self.station_reads_meta[station] {
            let lane = &sc.lanes[class.lane_index];
            built = JobMeta {
                lane: class.lane_index as u32,
                priority: lane.priority,
                weight: lane.weight,
                deadline: class.slo.map(|s| arrived + s).unwrap_or(SimTime(u64::MAX)),
                size_ns: match &work {
                    Work::Service(d) => d.as_nanos().max(1),
                    Work::Api(c) => c.service.as_nanos().max(1),
                    Work::Llm(r) => (r.input_tokens + r.output_tokens).max(1) as u64,
                },
            };
            &built
        } else {
            &JobMeta::DEFAULT
        };
        self.stations[station].submit_meta(
            self.now,
            HopJob {
                id: JobId(hop_slot as u64),
                work,
            },
            meta,
            &mut self.out,
        );
        self.flush_wakeups(station);
        if self.wake_on_arrival[station]
            && self.stations[station]
                .load_now()
                .is_some_and(|l| l.servers + l.booting == 0)
        {
            // The hop found the pool at zero: the autoscaler looks now (and wakes it).
            self.autoscale(station);
        }
    }

    fn set_timer(&mut self, at: SimTime, slot: u32, wf_id: u64, what: Timer) {
        let rec = Some(TimerRec { slot, wf_id, what });
        let id = match self.free_timers.pop() {
            Some(id) => {
                self.timers[id as usize] = rec;
                id
            }
            None => {
                self.timers.push(rec);
                (self.timers.len() - 1) as u32
            }
        };
        self.queue.push(at, Event::Timer { id });
    }

    #[inline]
    fn flush_wakeups(&mut self, station: usize) {
        // In order (ties keep the station's order); usually one wakeup, often none.
        for i in 0..self.out.wakeups.len() {
            let (t, token) = self.out.wakeups[i];
            self.queue.push(
                t,
                Event::Wake {
                    station: station as u32,
                    token,
                },
            );
        }
        self.out.wakeups.clear();
    }

    /// Handles finished hops; finishing one may submit more, which may finish at once.
    /// Its one caller is the event loop: always inlined there (left to the heuristics,
    /// it went out of line when a callee grew, +3.6 M instructions on the M/M/4 run).
    #[inline(always)]
    fn process_done(&mut self) {
        if !self.out.gaps.is_empty() {
            for g in self.out.gaps.drain(..) {
                self.breakdown.record_token_gaps(&g);
            }
        }
        if !self.out.first_tokens.is_empty() {
            self.record_first_tokens();
        }
        while !self.out.done.is_empty() {
            let mut finished = std::mem::take(&mut self.out.done);
            // By reference: each report is read in place, not moved out first.
            for done in &finished {
                self.on_hop_done(done);
            }
            finished.clear();
            if self.out.done.is_empty() {
                self.out.done = finished;
            }
        }
    }

    /// Pools autoscaled on `p99_ttft` see each TTFT when the first token comes (GPU
    /// pools), or each hop's wait when its service starts (abstract pools).
    /// Out of line: `process_done` stays small enough to inline into the event loop.
    #[cold]
    #[inline(never)]
    fn record_first_tokens(&mut self) {
        for f in self.out.first_tokens.drain(..) {
            if let Some(Some(hop)) = self.hops.get(f.id.0 as usize) {
                self.ttft_window[hop.station as usize].push_back((f.at, f.ttft.as_nanos()));
            }
        }
    }

    /// Logs a hop that ended (`RunOptions::hop_log`, `hop_sink`), if asked to.
    /// Called before anything the hop's end sets off (a retry, the next node, its
    /// workflow's release), so a workflow's hops are logged before it is handed over.
    fn log_hop(&mut self, hop: &Hop, done: &HopDone, usd: f64, status: HopStatus) {
        if self.opts.hop_log.is_none() && self.opts.hop_sink.is_none() {
            return;
        }
        let sc = self.sc;
        let slot = hop.slot;
        let wf = &self.workflows[slot as usize];
        let record = wf.record;
        let class = &sc.classes[wf.class as usize];
        let graph = graph_of(class, record, &self.stream_rows);
        let spec = &graph.nodes[hop.node as usize];
        let n_pools = sc.pools.len();
        let st = hop.station as usize;
        let service = done.finished - done.started;
        let (cached_tokens, prefill) = match (&done.llm, sc.pools.get(st)) {
            _ if matches!(hop.kind, HopKind::Tool { .. }) => (0, SimDuration::ZERO),
            (Some(llm), Some(pool)) => {
                let cached = if pool.api.is_some() {
                    (spec.shared_prefix_tokens as u64).min(hop.input_tokens)
                } else {
                    llm.cached_tokens as u64
                };
                let first = done.submitted + llm.ttft;
                let prefill = if first > done.started {
                    (first - done.started).min(service)
                } else {
                    SimDuration::ZERO
                };
                (cached, prefill)
            }
            (None, Some(pool)) => (0, pool.token_time(hop.input_tokens, 0).min(service)),
            (_, None) => (0, SimDuration::ZERO),
        };
        let streamed = matches!(
            class.arrival,
            Arrival::Recorded {
                stream: Some(_),
                ..
            }
        );
        let record = HopRecord {
            index: self.hops_logged,
            workflow: hop.wf_id,
            // A streamed row's slot is reused: no index to look it up by later.
            record: record.filter(|_| !streamed),
            class: class.name.clone(),
            node: spec.id.clone(),
            role: spec.role.clone(),
            branch: (hop.branch != NO_BRANCH).then_some(hop.branch),
            station: if (hop.station as usize) < n_pools {
                sc.pools[hop.station as usize].name.clone()
            } else {
                sc.tools[hop.station as usize - n_pools].name.clone()
            },
            kind: match hop.kind {
                HopKind::Model => "llm",
                HopKind::Escalation => "escalation",
                HopKind::Tool { .. } => "tool",
            },
            attempt: match hop.kind {
                HopKind::Tool { attempt } => attempt + 1,
                // Model and escalation calls: 429, error and timeout retries.
                _ => hop.attempt + 1,
            },
            context_in: hop.context_in,
            input_tokens: hop.input_tokens,
            output_tokens: hop.output_tokens,
            cached_tokens,
            prefill,
            submitted: done.submitted,
            started: done.started,
            finished: done.finished,
            usd,
            status,
        };
        self.hops_logged += 1;
        if self.opts.hop_sink.is_some() {
            if let Some(log) = self.opts.hop_log.as_mut() {
                log.push(record.clone());
            }
            let slot = slot as usize;
            if self.sink_hops.len() <= slot {
                self.sink_hops.resize_with(slot + 1, Vec::new);
            }
            self.sink_hops[slot].push(record);
        } else if let Some(log) = self.opts.hop_log.as_mut() {
            log.push(record);
        }
    }

    fn on_hop_done(&mut self, done: &HopDone) {
        let sc = self.sc;
        let hop_slot = done.id.0 as usize;
        let Some(hop) = self.hops.get_mut(hop_slot).and_then(Option::take) else {
            return;
        };
        self.free_hops.push(hop_slot as u32);
        if let Some(refused) = done.refused {
            self.on_hop_refused(&hop, done, refused);
            return;
        }
        self.hop_left_pool(&hop);
        self.release_admission_tokens(&hop);
        let in_window = PoolStats::in_window_usd(done, self.warmup);
        if (hop.station as usize) < sc.pools.len() {
            self.pool_stats[hop.station as usize].usd_charged_in_window += in_window;
        }
        let slot = hop.slot;
        let wf = &mut self.workflows[slot as usize];
        if !wf.active || wf.id != hop.wf_id {
            return;
        }
        let ci = wf.class as usize;
        let record = wf.record;
        let class = &sc.classes[ci];
        let graph = graph_of(class, record, &self.stream_rows);
        let spec = &graph.nodes[hop.node as usize];
        let mut usd = done.usd;
        // API token or tool-call dollars on top of the capacity charge.
        let mut extra_usd = 0.0;
        let n_pools = sc.pools.len();
        // A plain pool is not a paid API (and not a tool).
        let plain_pool = self
            .pool_plain_finish
            .get(hop.station as usize)
            .is_some_and(|&p| p);
        if let HopKind::Model | HopKind::Escalation = hop.kind
            && !plain_pool
            && sc.pools[hop.station as usize].api.is_some()
        {
            let pool = &sc.pools[hop.station as usize];
            // An aborted call pays the output tokens streamed before it was stopped.
            let output = match (
                hop.timed_out && pool.on_timeout == OnTimeout::Abort,
                done.llm,
            ) {
                (true, Some(l)) => {
                    let ran = done.finished - done.started;
                    if ran < l.ttft {
                        0
                    } else {
                        let after = (ran.as_nanos() - l.ttft.as_nanos()) / l.tpot.as_nanos().max(1);
                        (1 + after).min(hop.output_tokens)
                    }
                }
                _ => hop.output_tokens,
            };
            let split =
                pool.api_usd_split(hop.input_tokens, spec.shared_prefix_tokens as u64, output);
            let api_usd = split.total();
            usd += api_usd;
            extra_usd = api_usd;
            self.interval.usd_variable += api_usd;
            if done.submitted >= self.warmup {
                let ps = &mut self.pool_stats[hop.station as usize];
                ps.usd_api += api_usd;
                ps.usd_api_split.add(&split);
            }
            if wf.counted {
                self.class_stats[ci].usd_api_split.add(&split);
            }
        }
        // A tool call is paid per call, unless it was stopped (its caller timed out,
        // `on_timeout = "abort"`) before it left the bulkhead: it never reached the tool.
        let tool_price = match hop.kind {
            HopKind::Tool { .. } => {
                let tool = &sc.tools[hop.station as usize - n_pools];
                let never_sent = hop.timed_out
                    && tool.on_timeout == OnTimeout::Abort
                    && done.started == done.finished;
                if never_sent { 0.0 } else { tool.usd_per_call }
            }
            _ => 0.0,
        };
        if let HopKind::Tool { .. } = hop.kind {
            usd += tool_price;
            extra_usd = tool_price;
            self.interval.usd_variable += tool_price;
        }
        wf.usd += usd;
        wf.outstanding -= 1;
        let counted = wf.counted;
        if !counted {
            // A warm-up workflow's hop: paid for by the window's totals (capacity busy
            // in the window, API and tool calls submitted in it), charged to no measured
            // workflow (`totals.usd_unattributed`).
            let st = hop.station as usize;
            let submitted_in_window = done.submitted >= self.warmup;
            if st < n_pools {
                let ps = &mut self.pool_stats[st];
                ps.usd_warmup_in_window += in_window;
                if submitted_in_window {
                    ps.usd_warmup_submitted += done.usd;
                    ps.usd_api_warmup += extra_usd;
                }
            } else if submitted_in_window {
                self.tool_stats[st - n_pools].usd_warmup += extra_usd;
            }
        }
        let over_tiered = self.over_tiered_extra(&hop, spec, usd);
        if done.submitted >= self.warmup {
            let st = hop.station as usize;
            if st < n_pools {
                self.pool_stats[st].record(done);
            } else {
                self.tool_stats[st - n_pools].record(done, tool_price);
            }
            self.breakdown.record(&HopSample {
                class: ci,
                tier: spec.tier,
                escalation: hop.kind == HopKind::Escalation,
                pool: (st < n_pools).then_some(st),
                tool: (st >= n_pools).then(|| st - n_pools),
                gpu: st < n_pools && sc.pools[st].gpu.is_some(),
                done,
                output_tokens: hop.output_tokens,
                usd,
                over_tiered,
            });
        }
        // A model or escalation call that came back may have failed with an error.
        let failed_call = !hop.timed_out
            && !plain_pool
            && (hop.station as usize) < n_pools
            && !matches!(hop.kind, HopKind::Tool { .. })
            && self.call_failed(ci, self.workflows[slot as usize].number, &hop);
        if !hop.timed_out && !plain_pool && (hop.station as usize) < n_pools {
            if failed_call {
                if done.submitted >= self.warmup {
                    self.pool_stats[hop.station as usize].errors += 1;
                }
                self.breaker_failure(hop.station as usize);
            } else {
                self.breaker_success(hop.station as usize);
            }
        }
        let wf = &mut self.workflows[slot as usize];
        let stale =
            wf.outcome.is_some() || hop.timed_out || wf.nodes[hop.node as usize].epoch != hop.epoch;
        // A live tool call's failure is drawn here (a stale one's never is), from the
        // workflow's stream, before anything else its end draws.
        let tool_failed = match hop.kind {
            HopKind::Tool { .. } if !stale => {
                let tool = &sc.tools[hop.station as usize - n_pools];
                wf.rng.get().random::<f64>() < tool.failure_probability
            }
            _ => false,
        };
        let status = if hop.timed_out {
            HopStatus::Timeout
        } else if failed_call || tool_failed {
            HopStatus::Error
        } else {
            HopStatus::Ok
        };
        self.log_hop(&hop, done, usd, status);
        let wf = &mut self.workflows[slot as usize];
        if stale {
            // The workflow no longer needs this hop: its cost is waste (and only waste:
            // a hop of an earlier loop epoch leaves the live workflow's cost).
            if wf.outcome.is_none() {
                wf.usd -= usd;
            }
            if counted {
                self.class_stats[ci].usd_waste_leftover += usd;
            }
            self.maybe_release(slot);
            return;
        }
        if let Some(x) = over_tiered {
            let s = slot as usize;
            if self.over_tiered_usd.len() <= s {
                self.over_tiered_usd.resize(s + 1, 0.0);
            }
            self.over_tiered_usd[s] += x;
        }
        let wf = &mut self.workflows[slot as usize];
        let node = hop.node as usize;
        match hop.kind {
            HopKind::Tool { attempt } => {
                let tool = &sc.tools[hop.station as usize - n_pools];
                if tool_failed {
                    if counted {
                        self.tool_stats[hop.station as usize - n_pools].failures += 1;
                    }
                    if attempt < tool.retries {
                        let backoff = tool
                            .retry_backoff
                            .as_ref()
                            .map(|b| b.sample_duration(wf.rng.get()))
                            .unwrap_or_default();
                        let wf_id = wf.id;
                        wf.outstanding += 1;
                        self.set_timer(
                            self.now + backoff,
                            slot,
                            wf_id,
                            Timer::ToolRetry {
                                node: node as u32,
                                branch: hop.branch,
                                epoch: hop.epoch,
                                attempt: attempt + 1,
                                context: hop.context_in,
                            },
                        );
                    } else {
                        self.finish_workflow(
                            slot,
                            Outcome::Failed,
                            &format!("tool {} failed", tool.name),
                        );
                    }
                    return;
                }
                let payload = tool
                    .payload_tokens
                    .as_ref()
                    .map(|d| d.sample_tokens(wf.rng.get()))
                    .unwrap_or(0);
                self.node_finished(slot, node, hop.branch, hop.context_in + payload);
            }
            HopKind::Model if failed_call => self.retry_failed_call(slot, hop, None),
            HopKind::Escalation if failed_call => self.retry_failed_call(slot, hop, None),
            HopKind::Model => {
                // A node's own `escalate` replaces its tier's cascade.
                let step = match (&spec.escalate, spec.tier) {
                    (Some(e), _) => Some((e.probability, NO_TIER)),
                    (None, Some(t)) => sc.tiers[t].escalate.map(|(p, to)| (p, to as u32)),
                    (None, None) => None,
                };
                if let Some((p, cascade)) = step
                    && wf.rng.get().random::<f64>() < p
                {
                    if counted {
                        self.class_stats[ci].escalations += 1;
                    }
                    self.submit_escalation(
                        slot,
                        Hop {
                            attempt: 0,
                            cascade,
                            ..hop
                        },
                    );
                    return;
                }
                let out = hop.input_tokens + hop.output_tokens;
                let ctx = if spec.compact_to.is_some() {
                    hop.output_tokens
                } else {
                    out
                };
                self.node_finished(slot, node, hop.branch, ctx);
            }
            HopKind::Escalation => {
                // A cascade goes on while the tier it reached escalates in turn.
                if hop.cascade != NO_TIER
                    && let Some((p, to)) = sc.tiers[hop.cascade as usize].escalate
                    && wf.rng.get().random::<f64>() < p
                {
                    if counted {
                        self.class_stats[ci].escalations += 1;
                    }
                    self.submit_escalation(
                        slot,
                        Hop {
                            attempt: 0,
                            cascade: to as u32,
                            ..hop
                        },
                    );
                    return;
                }
                let ctx = if spec.compact_to.is_some() {
                    hop.output_tokens
                } else {
                    hop.input_tokens + hop.output_tokens
                };
                self.node_finished(slot, node, hop.branch, ctx);
            }
        }
    }

    /// A hop its GPU pool can never serve (too large for a replica's KV cache or token
    /// budget, over the model's context limit): it failed without service or cost.
    /// Not retried on the pool (it would be refused again) and no breaker failure (the
    /// request is at fault, not the pool): a tiered hop falls back along its chain,
    /// otherwise its workflow fails with the cause naming the pool.
    fn on_hop_refused(&mut self, hop: &Hop, done: &HopDone, refused: Refused) {
        let pool = hop.station as usize;
        if let Some(t) = self.pool_tokens.get_mut(pool) {
            *t = t.saturating_sub(hop.input_tokens + hop.output_tokens);
            self.pool_active_at[pool] = self.now;
            self.door_may_open(pool);
        }
        self.release_admission_tokens(hop);
        if done.submitted >= self.warmup
            && let Some(ps) = self.pool_stats.get_mut(pool)
        {
            ps.too_large += 1;
            *ps.too_large_by_cause.entry(refused.key()).or_insert(0) += 1;
        }
        let slot = hop.slot;
        let wf = &mut self.workflows[slot as usize];
        if !wf.active || wf.id != hop.wf_id {
            return;
        }
        wf.outstanding -= 1;
        let stale =
            wf.outcome.is_some() || hop.timed_out || wf.nodes[hop.node as usize].epoch != hop.epoch;
        if stale {
            self.maybe_release(slot);
            return;
        }
        // A tiered model hop falls back to the pools after this one in its chain (a
        // bigger context or more memory may serve it), marked degraded like any
        // fallback; only when none is left does its workflow fail.
        let sc = self.sc;
        let ci = wf.class as usize;
        let graph = graph_of(&sc.classes[ci], wf.record, &self.stream_rows);
        let spec = &graph.nodes[hop.node as usize];
        if hop.kind == HopKind::Model && chain_goes_on_after(sc, ci, spec, hop, wf.usd, pool) {
            self.route_again(slot, hop, hop.attempt, Some(pool), None);
            return;
        }
        let name = self
            .sc
            .pools
            .get(pool)
            .map_or("?", |p| p.name.as_str())
            .to_string();
        self.finish_workflow(slot, Outcome::Failed, &refused.cause(&name));
    }

    /// A model hop left its pool (finished or lost): its tokens no longer count in
    /// flight for its lane and tenant.
    /// Out of line, and small: a gate-free class (the common case) returns without
    /// setting up a frame. (Inlined, it spills registers in the event loop: +3 M
    /// instructions on the M/M/4 run.)
    #[inline(never)]
    fn release_admission_tokens(&mut self, hop: &Hop) {
        if !matches!(hop.kind, HopKind::Model | HopKind::Escalation) {
            return;
        }
        let Some(ci) = self
            .workflows
            .get(hop.slot as usize)
            .map(|w| w.class as usize)
        else {
            return;
        };
        // A gate-free class's tokens were not counted in at submission (`submit_hop`).
        if !self.class_gate_free[ci] {
            self.release_gated_tokens(ci, hop);
        }
    }

    /// `release_admission_tokens` for a class with a lane or tenant gate.
    #[inline(never)]
    fn release_gated_tokens(&mut self, ci: usize, hop: &Hop) {
        let k = hop.input_tokens + hop.output_tokens;
        let class = &self.sc.classes[ci];
        let li = class.lane_index;
        let lane = &mut self.lane_tokens[li];
        *lane = lane.saturating_sub(k);
        self.lane_hops[li] = self.lane_hops[li].saturating_sub(1);
        if !self.lane_door[li].is_empty() && !self.lane_door_event[li] {
            self.lane_door_event[li] = true;
            self.queue
                .push(self.now, Event::LaneDoorOpen { lane: li as u32 });
        }
        if let Some(t) = class.tenant_index {
            self.tenant_tokens[t] = self.tenant_tokens[t].saturating_sub(k);
        }
    }

    /// Admission and autoscaling signals of a hop leaving its pool: tokens in flight
    /// (the `p99_ttft` window is fed as service starts: `record_first_tokens`).
    fn hop_left_pool(&mut self, hop: &Hop) {
        let p = hop.station as usize;
        if p >= self.sc.pools.len() {
            return;
        }
        self.pool_tokens[p] =
            self.pool_tokens[p].saturating_sub(hop.input_tokens + hop.output_tokens);
        self.pool_active_at[p] = self.now;
        if self.pool_plain_finish[p] {
            return;
        }
        self.door_may_open(p);
    }

    /// Stops hop `hop` at its station if the station aborts calls whose caller timed
    /// out, counting it; its report is handled with the event's others.
    fn abort_timed_out(&mut self, station: usize, hop: u32) {
        if aborts_on_timeout(self.sc, station)
            && self.stations[station].abort(self.now, JobId(hop as u64), &mut self.out)
        {
            if self.now >= self.warmup {
                match self.pool_stats.get_mut(station) {
                    Some(ps) => ps.aborted += 1,
                    None => {
                        let t = station - self.sc.pools.len();
                        self.tool_stats[t].aborted += 1;
                    }
                }
            }
            self.flush_wakeups(station);
        }
    }

    fn on_timer(&mut self, slot: u32, wf_id: u64, what: Timer) {
        let Some(wf) = self.workflows.get(slot as usize) else {
            return;
        };
        if !wf.active || wf.id != wf_id {
            return;
        }
        let undecided = wf.outcome.is_none();
        let class = wf.class as usize;
        let counted = wf.counted;
        let graph = graph_of(&self.sc.classes[class], wf.record, &self.stream_rows);
        match what {
            Timer::Abandon => {
                if undecided {
                    self.finish_workflow(slot, Outcome::Abandoned, "abandoned");
                }
            }
            Timer::HeldTimeout { door, id } => {
                if undecided {
                    self.held_timed_out(slot, door, id);
                }
            }
            Timer::HopTimeout { hop, seq } => {
                let live = self
                    .hops
                    .get_mut(hop as usize)
                    .and_then(|h| h.as_mut())
                    .filter(|h| h.seq == seq);
                let Some(h) = live else { return };
                let station = h.station as usize;
                let stop = aborts_on_timeout(self.sc, station);
                if undecided {
                    h.timed_out = true;
                    let h = *h;
                    if station < self.sc.pools.len() {
                        self.breaker_failure(station);
                    }
                    self.retry_timed_out(slot, h);
                    // The retry is scheduled first: the aborted call's report may end
                    // the workflow's last outstanding work.
                    self.abort_timed_out(station, hop);
                } else if stop {
                    // The workflow ended (another branch failed it, say), but this
                    // call's caller gives up now too: under `abort` it stops as well.
                    h.timed_out = true;
                    self.abort_timed_out(station, hop);
                }
            }
            Timer::HumanDone {
                node,
                branch,
                epoch,
                context,
            } => {
                if undecided && wf.nodes[node as usize].epoch == epoch {
                    self.node_finished(slot, node as usize, branch, context);
                }
            }
            Timer::NotBefore {
                node,
                branch,
                epoch,
                context,
            } => {
                if undecided && wf.nodes[node as usize].epoch == epoch {
                    self.start_node(slot, node as usize, branch, context);
                }
            }
            Timer::RouteRetry {
                node,
                branch,
                epoch,
                attempt,
                context,
                input,
                output,
            } => {
                let current = wf.nodes[node as usize].epoch == epoch;
                self.workflows[slot as usize].outstanding -= 1;
                if undecided && current {
                    self.route_model_hop(
                        slot,
                        node as usize,
                        branch,
                        epoch,
                        context,
                        input,
                        output,
                        attempt,
                        None,
                        None,
                    );
                } else {
                    self.maybe_release(slot);
                }
            }
            Timer::EscalationRetry {
                node,
                branch,
                epoch,
                attempt,
                context,
                input,
                output,
                cascade,
            } => {
                let current = wf.nodes[node as usize].epoch == epoch;
                self.workflows[slot as usize].outstanding -= 1;
                if undecided && current {
                    // The pool is chosen again by submit_escalation.
                    let station = graph.nodes[node as usize]
                        .escalate
                        .as_ref()
                        .map_or(0, |e| e.pool as u32);
                    self.submit_escalation(
                        slot,
                        Hop {
                            seq: 0,
                            slot,
                            wf_id,
                            node,
                            branch,
                            epoch,
                            kind: HopKind::Escalation,
                            station,
                            context_in: context,
                            input_tokens: input,
                            output_tokens: output,
                            timed_out: false,
                            attempt,
                            cascade,
                        },
                    );
                } else {
                    self.maybe_release(slot);
                }
            }
            Timer::ToolRetry {
                node,
                branch,
                epoch,
                attempt,
                context,
            } => {
                let current = wf.nodes[node as usize].epoch == epoch;
                self.workflows[slot as usize].outstanding -= 1;
                if undecided && current {
                    if counted {
                        let ti = graph.nodes[node as usize].tool.unwrap_or(0);
                        self.tool_stats[ti].retries += 1;
                    }
                    self.submit_tool(slot, node as usize, branch, epoch, attempt, context);
                } else {
                    self.maybe_release(slot);
                }
            }
        }
    }

    /// A node (or one branch's step) finished with `context` tokens of output context.
    #[inline]
    fn node_finished(&mut self, slot: u32, node: usize, branch: u32, context: u64) {
        if branch == NO_BRANCH {
            self.complete_node(slot, node, context);
        } else {
            self.branch_step_finished(slot, node, branch, context);
        }
    }

    /// A step of fan-out branch `branch` finished: walk the branch's chain, or join at
    /// its end.
    fn branch_step_finished(&mut self, slot: u32, node: usize, branch: u32, context: u64) {
        let sc = self.sc;
        let wf = &mut self.workflows[slot as usize];
        let g = graph_of(&sc.classes[wf.class as usize], wf.record, &self.stream_rows);
        let head = g.nodes[node].in_branch_of.unwrap_or(node);
        let Some(f) = g.nodes[head].fan_out.as_ref() else {
            self.complete_node(slot, node, context);
            return;
        };
        if node != f.through {
            let next = g.nodes[node].children[0];
            self.start_node(slot, next, branch, context);
            return;
        }
        let st = &mut wf.nodes[head];
        st.finished += 1;
        st.in_flight -= 1;
        if st.joined {
            return;
        }
        st.branch_context_sum += context;
        if st.finished >= st.needed {
            st.joined = true;
            let sum = st.branch_context_sum;
            self.complete_node(slot, f.through, sum);
        } else if st.in_flight == 0 && st.launched < st.branches_total {
            self.launch_wave(slot, head, f.wave);
        }
    }

    #[inline(always)]
    fn complete_node(&mut self, slot: u32, node: usize, context: u64) {
        let sc = self.sc;
        let wf = &mut self.workflows[slot as usize];
        if wf.outcome.is_some() {
            return;
        }
        let ci = wf.class as usize;
        let g = graph_of(&sc.classes[ci], wf.record, &self.stream_rows);
        let spec = &g.nodes[node];
        if let Some(l) = &spec.loop_back
            && l.max.is_none_or(|m| wf.nodes[node].loops < m)
            && wf.rng.get().random::<f64>() < l.probability
        {
            wf.nodes[node].loops += 1;
            wf.loops += 1;
            // Re-run the body: parents outside it stay done; the loop target gets the
            // feedback (this node's output context) on top of what it had.
            for &b in &l.body {
                let in_body_parents = g.nodes[b]
                    .parents
                    .iter()
                    .filter(|p| l.body.contains(p))
                    .count() as u32;
                let outside_ctx = if b == l.to {
                    wf.nodes[b].context_in + context
                } else {
                    0
                };
                let st = &mut wf.nodes[b];
                st.epoch += 1;
                st.done = false;
                st.pending_parents = in_body_parents;
                st.context_in = outside_ctx;
                st.joined = false;
            }
            // Non-target body nodes also inherit from parents outside the body; those
            // finished earlier and will not notify again, so nothing to add for a
            // single-entry body (the usual verifier -> researcher loop).
            let to_ctx = wf.nodes[l.to].context_in;
            self.start_node(slot, l.to, NO_BRANCH, to_ctx);
            return;
        }
        wf.nodes[node].done = true;
        if spec.children.is_empty() {
            wf.sinks_remaining -= 1;
            if wf.sinks_remaining == 0 {
                self.finish_workflow(slot, Outcome::Completed, "");
            }
            return;
        }
        for &c in &spec.children {
            let wf = &mut self.workflows[slot as usize];
            if wf.outcome.is_some() {
                return;
            }
            let st = &mut wf.nodes[c];
            st.pending_parents = st.pending_parents.saturating_sub(1);
            st.context_in += context;
            if st.pending_parents == 0 {
                let ctx = st.context_in;
                self.start_node(slot, c, NO_BRANCH, ctx);
            }
        }
    }

    /// The extra dollars of a model hop run on a dearer pool than the cheapest of the
    /// tier its node asked for (by the router's expected cost of the hop on each pool):
    /// `usd` minus the cheapest pool's expected cost, at least 0. `None` when the hop is
    /// not over-tiered (a pinned node, an escalation, or the cheapest pool).
    fn over_tiered_extra(&self, hop: &Hop, spec: &crate::workflow::Node, usd: f64) -> Option<f64> {
        let tier = spec.tier?;
        if hop.kind != HopKind::Model || hop.station as usize >= self.sc.pools.len() {
            return None;
        }
        let cost = |p: usize| {
            self.estimate(spec, p, hop.input_tokens, hop.output_tokens)
                .1
        };
        let cheapest = self.sc.tiers[tier]
            .pools
            .iter()
            .map(|&p| cost(p))
            .fold(f64::INFINITY, f64::min);
        let mine = cost(hop.station as usize);
        (mine > cheapest * (1.0 + 1e-9)).then(|| (usd - cheapest).max(0.0))
    }

    fn finish_workflow(&mut self, slot: u32, outcome: Outcome, cause: &str) {
        let now = self.now;
        let wf = &mut self.workflows[slot as usize];
        if wf.outcome.is_some() {
            return;
        }
        wf.outcome = Some(outcome);
        let ci = wf.class as usize;
        self.interval.in_flight -= 1;
        match outcome {
            Outcome::Completed => self.interval.completions += 1,
            Outcome::Failed => self.interval.failed += 1,
            Outcome::Rejected => {
                // `failed` keeps counting rejections (its meaning in timeseries.csv).
                self.interval.failed += 1;
                self.interval.rejected += 1;
            }
            Outcome::Abandoned => self.interval.abandoned += 1,
        }
        let over_tiered = self
            .over_tiered_usd
            .get_mut(slot as usize)
            .map_or(0.0, std::mem::take);
        if wf.counted {
            let cs = &mut self.class_stats[ci];
            if outcome == Outcome::Completed {
                cs.usd_waste_over_tiered += over_tiered;
            }
            cs.fan_out.push(wf.fan_out);
            cs.loops += wf.loops as u64;
            match outcome {
                Outcome::Completed => cs.record_completion(now - wf.arrived, wf.usd, wf.tokens),
                Outcome::Failed => {
                    cs.failed += 1;
                    *cs.failed_by_cause.entry(cause.to_string()).or_insert(0) += 1;
                    cs.usd_waste_failed += wf.usd;
                }
                Outcome::Abandoned => {
                    cs.abandoned += 1;
                    cs.usd_waste_abandoned += wf.usd;
                }
                Outcome::Rejected => {
                    cs.rejected += 1;
                    *cs.rejected_by_cause.entry(cause.to_string()).or_insert(0) += 1;
                    cs.usd_waste_rejected += wf.usd;
                }
            }
            if self.opts.keep_workflows {
                self.workflow_records.push(WorkflowRecord {
                    class: ci,
                    workflow: wf.id,
                    arrived: wf.arrived,
                    decided: Some(now),
                    outcome: match outcome {
                        Outcome::Completed => WorkflowOutcome::Completed,
                        Outcome::Failed => WorkflowOutcome::Failed,
                        Outcome::Rejected => WorkflowOutcome::Rejected,
                        Outcome::Abandoned => WorkflowOutcome::Abandoned,
                    },
                    cause: match outcome {
                        Outcome::Failed | Outcome::Rejected => cause.to_string(),
                        Outcome::Completed | Outcome::Abandoned => String::new(),
                    },
                    usd: wf.usd,
                    tokens: wf.tokens,
                });
            }
        }
        if let Some(user) = wf.user {
            // A canary cohort's user belongs to the parent class: it thinks on the
            // parent's stream and its next workflow is split again.
            let home = self.sc.classes[ci].cohort_of.unwrap_or(ci);
            let think = match &self.sc.classes[home].arrival {
                Arrival::Closed { think, .. } => {
                    think.sample_duration(&mut self.classes[home].arrivals_rng)
                }
                _ => SimDuration::ZERO,
            };
            let t = now + think;
            if t < self.horizon {
                self.queue.push(
                    t,
                    Event::UserStart {
                        class: home as u32,
                        user,
                    },
                );
            }
        }
        self.maybe_release(slot);
    }

    /// Hands the hops logged for the workflow in `slot` to `RunOptions::hop_sink`.
    #[cold]
    #[inline(never)]
    fn hand_over_hops(&mut self, slot: u32) {
        let Some(sink) = self.opts.hop_sink.as_mut() else {
            return;
        };
        let sc = self.sc;
        let wf = &self.workflows[slot as usize];
        let class = &sc.classes[wf.class as usize];
        let graph = graph_of(class, wf.record, &self.stream_rows);
        let hops = self
            .sink_hops
            .get_mut(slot as usize)
            .map(std::mem::take)
            .unwrap_or_default();
        sink(WorkflowHops {
            workflow: wf.id,
            class,
            graph: &graph,
            hops: &hops,
        });
        // The buffer goes back to the slot, its capacity kept for the next workflow.
        if let Some(buffer) = self.sink_hops.get_mut(slot as usize) {
            *buffer = hops;
            buffer.clear();
        }
    }

    /// Frees a workflow whose outcome is decided once nothing of it is running.
    #[inline(always)]
    fn maybe_release(&mut self, slot: u32) {
        let wf = &mut self.workflows[slot as usize];
        if wf.active && wf.outcome.is_some() && wf.outstanding == 0 {
            if self.opts.hop_sink.is_some() {
                // Before the slot (and a streamed row's graph) is freed: no hop of this
                // workflow can be logged after this (a hop finishing later finds the
                // slot inactive or another workflow's).
                self.hand_over_hops(slot);
            }
            let wf = &mut self.workflows[slot as usize];
            wf.active = false;
            if let (
                Some(r),
                Arrival::Recorded {
                    stream: Some(_), ..
                },
            ) = (wf.record, &self.sc.classes[wf.class as usize].arrival)
            {
                // The row's prefix hashes and graph go with it.
                self.stream_rows[r as usize].block_hashes = None;
                self.stream_rows[r as usize].graph = None;
                self.free_stream_rows.push(r);
            }
            self.free_workflows.push(slot);
            self.live_workflows -= 1;
        }
    }
}

/// The graph a workflow runs: its class's or a held recorded workflow's (borrowed for
/// the run), or a streamed recorded workflow's (shared with its row, which is freed
/// when the workflow is).
enum GraphRef<'a> {
    Borrowed(&'a crate::workflow::WorkflowGraph),
    Streamed(std::sync::Arc<crate::workflow::WorkflowGraph>),
}

impl std::ops::Deref for GraphRef<'_> {
    type Target = crate::workflow::WorkflowGraph;
    #[inline]
    fn deref(&self) -> &Self::Target {
        match self {
            GraphRef::Borrowed(g) => g,
            GraphRef::Streamed(g) => g,
        }
    }
}

/// Whether the chain a tiered model hop of class `ci` is routed on (its routing rules
/// judged now, with `usd` spent) has a pool after `pool` to fall back to.
fn chain_goes_on_after(
    sc: &Scenario,
    ci: usize,
    spec: &crate::workflow::Node,
    hop: &Hop,
    usd: f64,
    pool: usize,
) -> bool {
    spec.tier.is_some_and(|t| {
        let chain = sc.tier_chain(
            ci,
            HopRouting {
                tier: t,
                budget_left: sc.classes[ci].budget_usd.map(|b| b - usd),
                role: &spec.role,
                input_tokens: hop.input_tokens,
            },
        );
        chain
            .iter()
            .position(|&q| q == pool)
            .is_some_and(|k| k + 1 < chain.len())
    })
}

/// The pools an escalation call may go to, in order: its node's escalation pool, or
/// the chain of the tier its cascade step runs on (`cascade`, `NO_TIER` for the node's
/// own).
fn escalation_chain<'g>(
    sc: &'g Scenario,
    spec: &'g crate::workflow::Node,
    cascade: u32,
) -> &'g [usize] {
    if cascade != NO_TIER {
        &sc.tiers[cascade as usize].pools
    } else {
        spec.escalate
            .as_ref()
            .map_or(&[][..], |e| std::slice::from_ref(&e.pool))
    }
}

#[inline]
fn graph_of<'a>(
    class: &'a WorkflowClass,
    record: Option<u32>,
    stream_rows: &[RecordedRequest],
) -> GraphRef<'a> {
    if let (
        Some(r),
        Arrival::Recorded {
            stream: Some(_), ..
        },
    ) = (record, &class.arrival)
        && let Some(g) = stream_rows.get(r as usize).and_then(|q| q.graph.clone())
    {
        return GraphRef::Streamed(g);
    }
    GraphRef::Borrowed(class.graph_for(record))
}

/// The flat recorded request (no graph of its own) a workflow replays: its entry hop
/// asks for exactly the recorded tokens and prefix hashes.
fn flat_record<'r>(
    class: &'r WorkflowClass,
    record: Option<u32>,
    stream_rows: &'r [RecordedRequest],
) -> Option<&'r RecordedRequest> {
    let r = record? as usize;
    match &class.arrival {
        Arrival::Recorded {
            stream: Some(_), ..
        } => stream_rows.get(r).filter(|q| q.graph.is_none()),
        Arrival::Recorded { requests, .. } => requests.get(r).filter(|q| q.graph.is_none()),
        _ => None,
    }
}

/// The class a workflow class name refers to, for callers holding only a name.
pub fn class_by_name<'a>(sc: &'a Scenario, name: &str) -> Option<&'a WorkflowClass> {
    sc.classes.iter().find(|c| c.name == name)
}

/// Station `station` (a pool, or a tool after the pools) stops a call whose caller
/// timed out (`on_timeout = "abort"`).
fn aborts_on_timeout(sc: &Scenario, station: usize) -> bool {
    let on = match sc.pools.get(station) {
        Some(p) => p.on_timeout,
        None => sc
            .tools
            .get(station - sc.pools.len())
            .map_or(OnTimeout::Continue, |t| t.on_timeout),
    };
    on == OnTimeout::Abort
}

/// Running server-seconds of a station over its measurement window so far: the
/// integral a resized pool reports, else its fixed servers over the window.
fn capacity_s(rep: &StationReport) -> f64 {
    if rep.capacity_server_s > 0.0 {
        rep.capacity_server_s
    } else {
        rep.servers as f64 * rep.window.as_secs_f64()
    }
}

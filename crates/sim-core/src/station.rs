//! The place where hops are served. A pool of the scenario is a [`Station`]: the
//! simulator submits hops to it and wakes it at the times it asked for; the station
//! reports finished hops. The abstract queueing station lives here; the GPU replica
//! model and paid API tiers plug into the same trait.

use crate::time::{SimDuration, SimTime};

/// Identifies a submitted hop within one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

/// What a hop asks of the station.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// Occupies one server for this long (abstract queueing station).
    Service(SimDuration),
    /// An LLM call served by a GPU replica.
    Llm(Box<crate::gpu::LlmRequest>),
    /// A paid-API call: occupies one server (an API pool has as many as it needs) for
    /// its service time and is reported with the TTFT and TPOT it was drawn with.
    Api(Box<ApiCall>),
}

/// A paid-API call's drawn timings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ApiCall {
    /// TTFT + (output tokens - 1) x TPOT.
    pub service: SimDuration,
    pub ttft: SimDuration,
    pub tpot: SimDuration,
}

#[derive(Clone, Debug)]
pub struct HopJob {
    pub id: JobId,
    pub work: Work,
}

/// A finished hop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HopDone {
    pub id: JobId,
    pub submitted: SimTime,
    pub started: SimTime,
    pub finished: SimTime,
    /// Server time the hop occupied (what it is charged for).
    pub busy: SimDuration,
    /// Dollars attributed to the hop.
    pub usd: f64,
    /// TTFT/TPOT and cache figures, for LLM hops.
    pub llm: Option<crate::gpu::LlmTimings>,
    /// Set when the station refused the hop because it can never serve it (too large
    /// for a replica): finished at once, unserved, and the hop has failed.
    pub refused: Option<Refused>,
}

/// Why a GPU pool refused a request it can never serve. Such a hop comes back at once
/// with no service and no cost, and its workflow fails (see `sim.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Prompt + output need more KV blocks than one replica has.
    KvCache {
        /// KV cache of one replica, tokens (blocks x block size).
        capacity_tokens: u64,
    },
    /// Chunked prefill is off and the prompt (or a recomputed prompt plus its output)
    /// exceeds the iteration token budget.
    TokenBudget { budget: u32 },
    /// Prompt + output exceed the model's context limit.
    ContextLimit { limit: u32 },
    /// The pool has no replica at all.
    NoReplica,
}

impl Refused {
    /// The key of `pools.<name>.too_large_by_cause` in summary.json.
    pub fn key(&self) -> &'static str {
        match self {
            Refused::KvCache { .. } => "kv_cache",
            Refused::TokenBudget { .. } => "token_budget",
            Refused::ContextLimit { .. } => "context_limit",
            Refused::NoReplica => "no_replica",
        }
    }

    /// The failure cause of the workflow (`failed_by_cause`), naming the pool.
    pub fn cause(&self, pool: &str) -> String {
        match self {
            Refused::KvCache { capacity_tokens } => format!(
                "request larger than KV cache of {pool} ({capacity_tokens} tokens per replica)"
            ),
            Refused::TokenBudget { budget } => format!(
                "request larger than token budget of {pool} ({budget} tokens, chunked prefill off)"
            ),
            Refused::ContextLimit { limit } => {
                format!("request over context limit of {pool} ({limit} tokens)")
            }
            Refused::NoReplica => format!("no replica in {pool}"),
        }
    }
}

impl HopDone {
    pub fn queue_wait(&self) -> SimDuration {
        self.started - self.submitted
    }
    pub fn sojourn(&self) -> SimDuration {
        self.finished - self.submitted
    }
}

/// Inter-token gaps of LLM requests of one group (`LlmRequest::itl_group`): `count`
/// gaps of `gap` each. A gap is the time from one output token of a sequence to its
/// next one: the end of the iteration that produced the first to the end of the one
/// that produced the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenGaps {
    pub group: u32,
    pub gap: SimDuration,
    pub count: u64,
}

impl TokenGaps {
    /// Adds `count` gaps of `gap` to the entry of `out[from..]` with the same group and
    /// gap, or appends one: entries added since `from` stay distinct (few when many
    /// sequences share an iteration's gap).
    #[inline]
    pub fn add_since(
        out: &mut Vec<TokenGaps>,
        from: usize,
        group: u32,
        gap: SimDuration,
        count: u64,
    ) {
        if let Some(l) = out[from..]
            .iter_mut()
            .rev()
            .find(|l| l.group == group && l.gap == gap)
        {
            l.count += count;
            return;
        }
        out.push(TokenGaps { group, gap, count });
    }

    /// Appends `count` gaps of `gap` to `out`, merged into its last entry when that has
    /// the same group and gap.
    #[inline]
    pub fn push(out: &mut Vec<TokenGaps>, group: u32, gap: SimDuration, count: u64) {
        if let Some(l) = out.last_mut()
            && l.group == group
            && l.gap == gap
        {
            l.count += count;
            return;
        }
        out.push(TokenGaps { group, gap, count });
    }
}

/// Where a station puts what it wants to tell the simulator. Reused between calls so
/// that the hot path does not allocate.
#[derive(Default, Debug)]
pub struct StationOutput {
    /// (time, token): call `wake(token)` at that time.
    pub wakeups: Vec<(SimTime, u64)>,
    pub done: Vec<HopDone>,
    /// Hops lost with their server (spot preemption under `on_preempt = "fail"`):
    /// they will not finish; `busy`/`usd` are what they were charged.
    pub lost: Vec<HopDone>,
    /// Inter-token gaps of the LLM requests that asked for them (GPU pools).
    pub gaps: Vec<TokenGaps>,
    /// First tokens as they are produced, on GPU pools that were asked for them.
    pub first_tokens: Vec<FirstToken>,
    /// The wake-up just handled was superseded (nothing happened): the simulator does
    /// not count its time as the run's last activity. Reset by the reader.
    pub stale_wake: bool,
}

/// A request's first output token: when, and its TTFT from its submission to the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstToken {
    pub at: SimTime,
    pub id: JobId,
    pub ttft: SimDuration,
}

impl StationOutput {
    pub fn clear(&mut self) {
        self.wakeups.clear();
        self.done.clear();
        self.lost.clear();
        self.gaps.clear();
        self.first_tokens.clear();
        self.stale_wake = false;
    }
}

/// Time-integrated load of a station over the measurement window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StationReport {
    /// Server count (capacity), for utilisation.
    pub servers: u32,
    /// Length of the measurement window.
    pub window: SimDuration,
    /// Integral of busy servers over the window, in server-seconds.
    pub busy_server_s: f64,
    /// Integral of hops in the station (queued + in service), in hop-seconds.
    pub in_system_s: f64,
    /// Integral of queued hops (not yet in service), in hop-seconds.
    pub queued_s: f64,
    /// Cost of keeping the station up over the window.
    pub usd_capacity: f64,
    /// Hops queued or in service right now.
    pub in_system_now: u64,
    /// Most hops in service at once over the whole run (a bulkhead's high-water mark).
    pub max_busy: u64,
    /// Integral of running servers over the window, in server-seconds, for pools whose
    /// size changes (autoscaling); zero means the size was fixed at `servers`.
    pub capacity_server_s: f64,
}

/// A station's load right now, for routers and autoscalers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadNow {
    /// Running servers (booted).
    pub servers: u32,
    pub booting: u32,
    pub busy: u64,
    pub queued: u64,
}

impl StationReport {
    /// Busy fraction of capacity over the window.
    pub fn utilization(&self) -> f64 {
        if self.capacity_server_s > 0.0 {
            return self.busy_server_s / self.capacity_server_s;
        }
        let cap = self.servers as f64 * self.window.as_secs_f64();
        if cap > 0.0 {
            self.busy_server_s / cap
        } else {
            0.0
        }
    }
}

/// A pool as seen by the simulator.
pub trait Station {
    /// A hop arrives at `now`.
    fn submit(&mut self, now: SimTime, job: HopJob, out: &mut StationOutput);
    /// Submits with scheduling attributes (lane, priority, deadline) for stations whose
    /// queue discipline uses them; others ignore them.
    fn submit_meta(
        &mut self,
        now: SimTime,
        job: HopJob,
        _meta: &crate::policy::JobMeta,
        out: &mut StationOutput,
    ) {
        self.submit(now, job, out)
    }
    /// Whether `submit_meta` reads its `meta`. Asked once when a run starts: a station
    /// that does not is given the default, and the simulator skips building it per hop.
    fn reads_job_meta(&self) -> bool {
        true
    }
    /// Current load, if the station can tell (routers fall back to service time only).
    fn load_now(&self) -> Option<LoadNow> {
        None
    }
    /// A server starts booting (it is paid for from now).
    fn boot_started(&mut self, _now: SimTime) {}
    /// A booting server is up and takes work.
    fn boot_finished(&mut self, _now: SimTime, _out: &mut StationOutput) {}
    /// Take one server out of service (at once if idle, else when its hop ends); never
    /// the last one up unless `allow_last` (an autoscaler scaling to zero).
    fn retire_server(&mut self, _now: SimTime, _allow_last: bool) {}
    /// Spot servers up (exposed to preemption).
    fn spot_up(&self) -> u32 {
        0
    }
    /// Spot servers up are preempted together at `now` (one reclaim): `ks[j]` picks
    /// the `ks[j]`-th of those still up once the ones picked before it are taken (a
    /// draw without replacement). Their work is lost (sent again, never to another of
    /// the group, or reported in `out.lost`). Returns how many were taken (an index
    /// past the servers up takes none).
    fn preempt(&mut self, _now: SimTime, _ks: &[u32], _out: &mut StationOutput) -> u32 {
        0
    }
    /// The caller of job `id` gave up (its timeout, under `on_timeout = "abort"`): stop
    /// it. It is reported in `out.done` as finished with what it used so far: at once
    /// when it was waiting or its server can stop now, or (a GPU replica) at the end of
    /// the iteration in progress, as vLLM aborts between steps. Never reported again.
    /// False if the station does not hold it.
    fn abort(&mut self, _now: SimTime, _id: JobId, _out: &mut StationOutput) -> bool {
        false
    }
    /// Spot servers up, picked as in [`Station::preempt`], get a preemption notice
    /// together at `now`: each takes nothing new and serves what it has until
    /// [`Station::spot_lost`] (a GPU pool under `on_notice = "move_waiting"` re-sends
    /// their queues now, through `out`, to servers outside the group). Returns their
    /// ids for that call, in pick order (empty if there is no such server).
    fn spot_notice(&mut self, _now: SimTime, _ks: &[u32], _out: &mut StationOutput) -> Vec<u32> {
        Vec::new()
    }
    /// The noticed server `id`'s notice ran out at `now`: it is lost with the work
    /// still on it (as [`Station::preempt`]). False if it had already left (it
    /// finished its work within the notice).
    fn spot_lost(&mut self, _now: SimTime, _id: u32, _out: &mut StationOutput) -> bool {
        false
    }
    /// A replacement spot server starts booting (paid at the spot price from now).
    fn spot_boot_started(&mut self, _now: SimTime) {}
    /// A replacement spot server is up.
    fn spot_boot_finished(&mut self, _now: SimTime, _out: &mut StationOutput) {}
    /// A wake-up the station asked for has come.
    fn wake(&mut self, now: SimTime, token: u64, out: &mut StationOutput);
    /// Start of the measurement window (end of warm-up): reset time integrals.
    fn begin_measurement(&mut self, now: SimTime);
    /// Load over the window, integrated up to `now`.
    fn report(&mut self, now: SimTime) -> StationReport;
    /// GPU figures over the window (batching, KV cache, prefix cache), for GPU pools.
    fn gpu_report(&mut self, _now: SimTime) -> Option<crate::gpu::gpu_station::GpuPoolReport> {
        None
    }
    /// Moves inter-token gaps not yet handed over (those of iterations applied inside
    /// `report`/`gpu_report`, which have no output) into `out`; GPU pools.
    fn drain_token_gaps(&mut self, _out: &mut Vec<TokenGaps>) {}
    /// KV cache use right now, for GPU pools (as of the last `report` at this time).
    fn kv_now(&self) -> Option<KvNow> {
        None
    }
    /// Pushes the submission time of every hop here still waiting for its first token
    /// (GPU: queued or in prefill; abstract: queued), for the `p99_ttft` autoscaling
    /// signal: the wait so far is a lower bound on the TTFT it will have, so a queue
    /// that grows while nothing starts still raises the signal. Stations that report
    /// no first tokens push nothing.
    fn waiting_since(&self, _out: &mut Vec<SimTime>) {}
}

/// A GPU pool's KV cache right now, summed over its replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvNow {
    /// Blocks referenced by sequences, and the blocks the replicas have.
    pub used_blocks: u64,
    pub capacity_blocks: u64,
    /// Tokens held in the KV cache by running sequences.
    pub tokens: u64,
}

/// Integrates a piecewise-constant level over time.
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeIntegral {
    last: SimTime,
    level: u64,
    area_ns: u128,
}

impl TimeIntegral {
    #[inline]
    pub fn set(&mut self, now: SimTime, level: u64) {
        self.advance(now);
        self.level = level;
    }
    #[inline]
    fn advance(&mut self, now: SimTime) {
        self.area_ns += self.level as u128 * (now.0.saturating_sub(self.last.0)) as u128;
        self.last = now;
    }
    pub fn reset(&mut self, now: SimTime) {
        self.advance(now);
        self.area_ns = 0;
    }
    /// Area up to `now`, in level-seconds.
    pub fn area_s(&mut self, now: SimTime) -> f64 {
        self.advance(now);
        self.area_ns as f64 / 1e9
    }
    pub fn level(&self) -> u64 {
        self.level
    }
}

//! What a run measured, and the `summary.json` contract built from it.
//!
//! Latencies go into HDR histograms (3 significant digits: any percentile is within
//! 0.1% of the exact sample percentile); means come from exact sums.

use crate::scenario::WorkflowClass;
use crate::station::{HopDone, StationReport};
use crate::time::{SimDuration, SimTime};

/// How a workflow ended, in the per-workflow log (`RunOptions::keep_workflows`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowOutcome {
    Completed,
    Failed,
    Rejected,
    Abandoned,
    /// Still undecided when the run stopped.
    InFlight,
}

impl WorkflowOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowOutcome::Completed => "completed",
            WorkflowOutcome::Failed => "failed",
            WorkflowOutcome::Rejected => "rejected",
            WorkflowOutcome::Abandoned => "abandoned",
            WorkflowOutcome::InFlight => "in_flight",
        }
    }
}

/// One workflow that arrived after the warm-up, as kept with
/// `RunOptions::keep_workflows` (`run --workflows-csv`): the figures its class's
/// counters and waste buckets add up.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowRecord {
    /// Index into `RunResult::classes`.
    pub class: usize,
    /// The workflow's id (unique in the run, in arrival order).
    pub workflow: u64,
    pub arrived: SimTime,
    /// When its outcome was decided; `None` in flight at the end.
    pub decided: Option<SimTime>,
    pub outcome: WorkflowOutcome,
    /// The failure or rejection cause (`failed_by_cause` / `rejected_by_cause` keys);
    /// empty for the other outcomes.
    pub cause: String,
    /// Dollars attributed to it when decided (in flight: so far). What its hops still
    /// running cost after that is the class's `usd_after_outcome`, not here.
    pub usd: f64,
    /// Model tokens (input + output) of its hops so far.
    pub tokens: u64,
}

/// One finished hop, as logged with `RunOptions::hop_log` or handed to
/// `RunOptions::hop_sink` (span logs, exact tests).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HopRecord {
    /// The hop's place in the run's log: 0, 1, ... in the order hops finished (its
    /// position in `hop_log`; span logs name it `s<index>`).
    pub index: u64,
    pub workflow: u64,
    /// The recorded request or workflow the hop's workflow replays, if any (its index
    /// in the class's held rows; `None` for a streamed row).
    pub record: Option<u32>,
    pub class: String,
    pub node: String,
    pub role: String,
    pub branch: Option<u32>,
    /// Pool or tool name.
    pub station: String,
    /// "llm", "escalation" or "tool".
    pub kind: &'static str,
    /// 1 for a first call; 2, 3, ... for retries (of a failed tool call; of a model or
    /// escalation call after a 429, an error or a timeout).
    pub attempt: u32,
    /// Context inherited from parents (before the node's inherit fraction).
    pub context_in: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Prompt tokens that did not have to be computed: a GPU replica's prefix-cache
    /// hits; on a paid API, the shared prefix billed at the cached-input price; 0 on an
    /// abstract pool (no prefix cache) and for tools.
    pub cached_tokens: u64,
    /// The part of `started..finished` before the first output token: GPU replicas and
    /// APIs from their time to first token (queueing before service excluded); on an
    /// abstract pool, the prompt part of its token-time model (`prefill_per_1k_tokens`),
    /// at most the service time; zero for tools and pools with no token model.
    pub prefill: SimDuration,
    pub submitted: SimTime,
    pub started: SimTime,
    pub finished: SimTime,
    pub usd: f64,
    /// How the call ended.
    pub status: HopStatus,
}

/// How a logged hop ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HopStatus {
    /// It returned an answer (a stale one too: a call its workflow no longer needed).
    #[default]
    Ok,
    /// It came back failed: a model or escalation call's error (`error_rate`, a
    /// failure window), or a tool call's failure (`failure_probability`).
    Error,
    /// Its caller stopped waiting (`timeout`): aborted, or let run to the end and
    /// thrown away.
    Timeout,
    /// It died with its replica (a spot preemption under `on_preempt = "fail"`).
    Lost,
}

impl HopStatus {
    pub fn name(self) -> &'static str {
        match self {
            HopStatus::Ok => "ok",
            HopStatus::Error => "error",
            HopStatus::Timeout => "timeout",
            HopStatus::Lost => "lost",
        }
    }
}

/// One spot preemption event (a reclaim) of a pool, as logged with
/// `RunOptions::spot_log` (exact tests of `reclaim_size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpotReclaim {
    /// The pool's index in the scenario.
    pub pool: u32,
    pub at: SimTime,
    /// Spot replicas exposed just before (up, not noticed).
    pub exposed: u32,
    /// Replicas it took: `reclaim_size`, or all those exposed if fewer.
    pub taken: u32,
}

/// A workflow's logged hops, handed to `RunOptions::hop_sink` once no more of them can
/// be logged: when the workflow is released (its outcome decided and none of its hops
/// still running), or at the end of the run for a workflow still in flight then. Every
/// workflow the run started is handed over exactly once, with no hops if none finished.
pub struct WorkflowHops<'a> {
    /// The workflow's id (`HopRecord::workflow`): 0, 1, ... in the order they arrived.
    pub workflow: u64,
    /// The class it ran as (a canary cohort's own class).
    pub class: &'a WorkflowClass,
    /// The graph it ran: its class's, or the recorded workflow it replays (also for a
    /// streamed trace, whose graph is gone once the workflow is released).
    pub graph: &'a crate::workflow::WorkflowGraph,
    /// Its hops in the order they finished.
    pub hops: &'a [HopRecord],
}

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

/// Significant digits kept by every latency histogram.
pub const HISTOGRAM_SIGFIG: u8 = 3;

fn new_histogram() -> Histogram<u64> {
    // Auto-resizing, so any latency fits; 3 significant digits cannot fail to build.
    Histogram::new(HISTOGRAM_SIGFIG).unwrap_or_else(|_| unreachable!())
}

/// Records into an auto-resizing histogram; clamps (never drops) if resizing fails.
#[inline]
fn record(h: &mut Histogram<u64>, v: u64) {
    if h.record(v).is_err() {
        h.saturating_record(v);
    }
}

/// Paid-API dollars split by what the tokens were billed as: prompt tokens at the input
/// price, shared-prefix prompt tokens at the cached-input price, and output tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ApiUsdSplit {
    pub input: f64,
    pub cached_input: f64,
    pub output: f64,
}

impl ApiUsdSplit {
    /// The three parts added in a fixed order (input, cached input, output): the
    /// figure a hop is charged.
    #[inline]
    pub fn total(&self) -> f64 {
        self.input + self.cached_input + self.output
    }
    #[inline]
    pub fn add(&mut self, o: &ApiUsdSplit) {
        self.input += o.input;
        self.cached_input += o.cached_input;
        self.output += o.output;
    }
}

/// Per-class counters and distributions, for workflows that arrived after warm-up.
#[derive(Clone, Debug)]
pub struct ClassStats {
    pub name: String,
    pub slo: Option<SimDuration>,
    pub arrived: u64,
    pub completed: u64,
    pub failed: u64,
    pub rejected: u64,
    pub abandoned: u64,
    pub in_flight: u64,
    /// End-to-end latency of completed workflows, nanoseconds.
    pub latency_ns: Histogram<u64>,
    pub latency_sum_ns: u128,
    pub within_slo: u64,
    /// Cost of each completed workflow, in completion order.
    pub usd_per_success: Vec<f64>,
    /// Cost run up by workflows that had not finished at the end of the run.
    pub usd_unfinished: f64,
    /// Failed workflows by cause ("tool crm failed", "timeout at plan").
    pub failed_by_cause: BTreeMap<String, u64>,
    /// Rejected workflows by cause ("429 from api-mid", "frontier down").
    pub rejected_by_cause: BTreeMap<String, u64>,
    /// Waste: cost run up by workflows rejected after work had started.
    pub usd_waste_rejected: f64,
    /// Hops served by a fallback pool of their tier (not the tier's first choice), or
    /// sent to a cheaper pool by a `degrade` admission watermark.
    pub degraded_hops: u64,
    /// Hop attempts nothing admitted (the client backed off or gave up), by cause.
    pub refused_by_cause: BTreeMap<String, u64>,
    /// Hops admitted above a `queue` watermark (lane or pool).
    pub admitted_over_watermark: u64,
    /// Waste: cost of failed and abandoned workflows, and of hops that finished after
    /// their workflow's outcome was decided (quorum stragglers, timed-out calls).
    pub usd_waste_failed: f64,
    pub usd_waste_abandoned: f64,
    pub usd_waste_leftover: f64,
    /// Human review dollars (included in workflow costs).
    pub usd_human: f64,
    /// Largest fan-out of each finished workflow.
    pub fan_out: Vec<u32>,
    /// Loop repetitions over all finished workflows.
    pub loops: u64,
    pub escalations: u64,
    /// Model tokens (input + output) of each completed workflow.
    pub tokens_per_success: Vec<u64>,
    // --- results/showback (issue 7) ---
    /// Tenant (showback owner) of the class.
    pub tenant: String,
    /// The tenant's cost centre (showback).
    pub cost_centre: String,
    /// Share of workflows that should meet `slo` (error budget = 1 - target).
    pub slo_target: f64,
    /// End-to-end latency of each completed workflow, in completion order (same order
    /// as `usd_per_success`), for the per-workflow CSV.
    pub latency_per_success_ns: Vec<u64>,
    /// Waste: the extra dollars of over-tiered hops (run on a dearer pool than the
    /// cheapest of their tier) of completed workflows. Part of `usd_per_success`, not
    /// added to it: see docs/output.md.
    pub usd_waste_over_tiered: f64,
    /// Paid-API dollars of the class's measured workflows (every outcome, stragglers
    /// included), split by token kind; part of their cost.
    pub usd_api_split: ApiUsdSplit,
}

impl ClassStats {
    pub fn new(c: &WorkflowClass) -> Self {
        ClassStats {
            name: c.name.clone(),
            slo: c.slo,
            arrived: 0,
            completed: 0,
            failed: 0,
            rejected: 0,
            abandoned: 0,
            in_flight: 0,
            latency_ns: new_histogram(),
            latency_sum_ns: 0,
            within_slo: 0,
            usd_per_success: Vec::new(),
            usd_unfinished: 0.0,
            failed_by_cause: BTreeMap::new(),
            rejected_by_cause: BTreeMap::new(),
            usd_waste_rejected: 0.0,
            degraded_hops: 0,
            refused_by_cause: BTreeMap::new(),
            admitted_over_watermark: 0,
            usd_waste_failed: 0.0,
            usd_waste_abandoned: 0.0,
            usd_waste_leftover: 0.0,
            usd_human: 0.0,
            fan_out: Vec::new(),
            loops: 0,
            escalations: 0,
            tokens_per_success: Vec::new(),
            tenant: c.tenant.clone(),
            cost_centre: c.cost_centre.clone(),
            slo_target: c.slo_target,
            latency_per_success_ns: Vec::new(),
            usd_waste_over_tiered: 0.0,
            usd_api_split: ApiUsdSplit::default(),
        }
    }

    /// Workflows whose outcome is decided.
    pub fn finished(&self) -> u64 {
        self.completed + self.failed + self.rejected + self.abandoned
    }

    #[inline]
    pub fn record_completion(&mut self, latency: SimDuration, usd: f64, tokens: u64) {
        self.tokens_per_success.push(tokens);
        self.completed += 1;
        // Saturating: a latency beyond the histogram's range is clamped, never lost.
        record(&mut self.latency_ns, latency.as_nanos().max(1));
        self.latency_sum_ns += latency.as_nanos() as u128;
        if self.slo.is_some_and(|s| latency <= s) {
            self.within_slo += 1;
        }
        self.usd_per_success.push(usd);
        self.latency_per_success_ns.push(latency.as_nanos());
    }
}

/// Per-pool hop statistics, for hops submitted after warm-up.
#[derive(Clone, Debug)]
pub struct PoolStats {
    pub hops: u64,
    /// Hops that had to queue (wait > 0).
    pub waited: u64,
    /// Queue waits of the hops. Not recorded by [`PoolStats::record`]: the breakdown
    /// records the same samples (`Breakdown::by_pool`'s `queue_wait`), and the run
    /// copies that histogram here when it ends (one histogram update per hop, not two).
    pub wait_ns: Histogram<u64>,
    pub wait_sum_ns: u128,
    pub sojourn_sum_ns: u128,
    pub usd_attributed: f64,
    /// LLM hops on GPU pools: time to first token and mean time per output token.
    pub ttft_ns: Histogram<u64>,
    pub tpot_ns: Histogram<u64>,
    pub llm_hops: u64,
    pub preempted_hops: u64,
    pub cached_tokens: u64,
    /// Hops this pool refused (down, watermark, rate limit) when a client tried it.
    pub refusals: u64,
    /// `refusals` by cause: down, max_queue, rate_limit, tokens_in_flight, shed.
    pub refusals_by_cause: BTreeMap<&'static str, u64>,
    /// Hops admitted above its `queue` token watermark.
    pub admitted_over_watermark: u64,
    /// Hops its `degrade` token watermark sent to another pool.
    pub degraded_away: u64,
    /// Most model tokens (input + output) in flight at once.
    pub peak_tokens_in_flight: u64,
    /// Per-token dollars of API hops (paid APIs have no capacity cost).
    pub usd_api: f64,
    /// `usd_api` split by token kind.
    pub usd_api_split: ApiUsdSplit,
    /// Times its circuit breaker opened.
    pub breaker_opens: u64,
    /// Calls that came back with an error (`error_rate`).
    pub errors: u64,
    /// Calls stopped when their caller timed out (`on_timeout = "abort"`).
    pub aborted: u64,
    /// Capacity dollars of every finished (or lost) hop, the part of its service that
    /// fell in the measurement window (whatever workflow it served).
    pub usd_charged_in_window: f64,
    /// The same, for hops of workflows that arrived during the warm-up.
    pub usd_warmup_in_window: f64,
    /// Whole capacity dollars of hops of warm-up workflows submitted in the window (what
    /// an autoscaled pool's `usd_attributed` counts of them).
    pub usd_warmup_submitted: f64,
    /// API dollars of calls of warm-up workflows submitted in the window (part of
    /// `usd_api`, not of any measured workflow).
    pub usd_api_warmup: f64,
    /// LLM hops refused as never servable (too large for a replica's KV cache or token
    /// budget, over the model's context limit): failed, their workflow with them.
    pub too_large: u64,
    /// `too_large` by cause: kv_cache, token_budget, context_limit, no_replica.
    pub too_large_by_cause: BTreeMap<&'static str, u64>,
}

impl Default for PoolStats {
    fn default() -> Self {
        Self::new()
    }
}

impl PoolStats {
    pub fn new() -> Self {
        PoolStats {
            hops: 0,
            waited: 0,
            wait_ns: new_histogram(),
            wait_sum_ns: 0,
            sojourn_sum_ns: 0,
            usd_attributed: 0.0,
            ttft_ns: new_histogram(),
            tpot_ns: new_histogram(),
            llm_hops: 0,
            preempted_hops: 0,
            cached_tokens: 0,
            refusals: 0,
            refusals_by_cause: BTreeMap::new(),
            admitted_over_watermark: 0,
            degraded_away: 0,
            peak_tokens_in_flight: 0,
            usd_api: 0.0,
            usd_api_split: ApiUsdSplit::default(),
            breaker_opens: 0,
            errors: 0,
            aborted: 0,
            usd_charged_in_window: 0.0,
            usd_warmup_in_window: 0.0,
            usd_warmup_submitted: 0.0,
            usd_api_warmup: 0.0,
            too_large: 0,
            too_large_by_cause: BTreeMap::new(),
        }
    }

    /// The part of a hop's capacity dollars that falls in a window starting at `start`:
    /// all of it when the hop started in the window, none when it finished before, else
    /// the share of its service time after `start` (exact for abstract pools, where a
    /// hop pays per second of service).
    pub fn in_window_usd(d: &HopDone, start: SimTime) -> f64 {
        if d.started >= start {
            d.usd
        } else if d.finished <= start {
            0.0
        } else {
            d.usd * (d.finished - start).as_nanos() as f64
                / (d.finished - d.started).as_nanos() as f64
        }
    }

    #[inline]
    pub fn record(&mut self, d: &HopDone) {
        if let Some(l) = &d.llm {
            self.llm_hops += 1;
            record(&mut self.ttft_ns, l.ttft.as_nanos().max(1));
            record(&mut self.tpot_ns, l.tpot.as_nanos().max(1));
            self.cached_tokens += l.cached_tokens as u64;
            if l.preemptions > 0 {
                self.preempted_hops += 1;
            }
        }
        let wait = d.queue_wait().as_nanos();
        self.hops += 1;
        if wait > 0 {
            self.waited += 1;
        }
        self.wait_sum_ns += wait as u128;
        self.sojourn_sum_ns += d.sojourn().as_nanos() as u128;
        self.usd_attributed += d.usd;
    }

    pub fn mean_wait_s(&self) -> f64 {
        if self.hops == 0 {
            0.0
        } else {
            self.wait_sum_ns as f64 / self.hops as f64 / 1e9
        }
    }
    pub fn mean_sojourn_s(&self) -> f64 {
        if self.hops == 0 {
            0.0
        } else {
            self.sojourn_sum_ns as f64 / self.hops as f64 / 1e9
        }
    }
    /// Fraction of hops that waited in the queue.
    pub fn prob_wait(&self) -> f64 {
        if self.hops == 0 {
            0.0
        } else {
            self.waited as f64 / self.hops as f64
        }
    }
    /// Waiting-time quantile in seconds (HDR, 3 significant digits).
    pub fn wait_quantile_s(&self, q: f64) -> f64 {
        self.wait_ns.value_at_quantile(q) as f64 / 1e9
    }
}

/// Per-tool call statistics, for calls submitted after warm-up.
#[derive(Clone, Debug)]
pub struct ToolStats {
    pub name: String,
    pub calls: u64,
    pub failures: u64,
    pub retries: u64,
    pub latency_sum_ns: u128,
    pub wait_sum_ns: u128,
    pub usd: f64,
    /// Dollars of calls of warm-up workflows submitted in the window (part of `usd`).
    pub usd_warmup: f64,
    /// Calls stopped when their caller timed out (`on_timeout = "abort"`).
    pub aborted: u64,
    pub report: StationReport,
}

impl ToolStats {
    pub fn new(name: &str) -> Self {
        ToolStats {
            name: name.to_string(),
            calls: 0,
            failures: 0,
            retries: 0,
            latency_sum_ns: 0,
            wait_sum_ns: 0,
            usd: 0.0,
            usd_warmup: 0.0,
            aborted: 0,
            report: StationReport::default(),
        }
    }

    pub fn mean_wait_s(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.wait_sum_ns as f64 / self.calls as f64 / 1e9
        }
    }

    /// A call that came back, charged `usd_per_call` (0 for one stopped before it
    /// started: it never reached the system).
    pub fn record(&mut self, d: &HopDone, usd_per_call: f64) {
        self.calls += 1;
        self.latency_sum_ns += (d.finished - d.started).as_nanos() as u128;
        self.wait_sum_ns += d.queue_wait().as_nanos() as u128;
        self.usd += usd_per_call;
    }
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub seed: u64,
    pub events: u64,
    /// When the run stopped: the horizon, or with `drain` the moment its last workflow
    /// was done, if later (what is still scheduled then is not run).
    pub end: SimTime,
    pub window_start: SimTime,
    pub drain: bool,
    pub classes: Vec<ClassStats>,
    pub pool_names: Vec<String>,
    pub pools: Vec<PoolStats>,
    pub pool_reports: Vec<StationReport>,
    pub tools: Vec<ToolStats>,
    /// GPU pool reports (None for abstract pools), in pool order.
    pub gpu_reports: Vec<Option<crate::gpu::gpu_station::GpuPoolReport>>,
    /// One row per sampling interval (default one simulated minute).
    pub timeseries: Vec<TimeseriesRow>,
    /// Per-hop figures by class, lane, tier, pool, tenant and tool.
    pub breakdown: Breakdown,
    /// Offered load rho per pool from the scenario (`Scenario::offered_load`), `None`
    /// for GPU and API pools.
    pub offered_rho: Vec<Option<f64>>,
    /// Trace rows a streamed replay could not read during the run (the file changed
    /// after loading checked it): the CLI refuses such a run's results.
    pub input_errors: Vec<String>,
    /// Every workflow that arrived after the warm-up, in the order decided (then those
    /// in flight, by id); empty unless `RunOptions::keep_workflows`.
    pub workflows: Vec<WorkflowRecord>,
}

/// The factory over one sampling interval ending at `t`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimeseriesRow {
    /// End of the interval, seconds since the start of the run.
    pub t_s: f64,
    /// Workflow arrivals, completions, failures (rejections included) and abandonments
    /// in the interval (all classes, warm-up included).
    pub arrivals: u64,
    pub completions: u64,
    pub failed: u64,
    pub abandoned: u64,
    /// The rejections among `failed`.
    pub rejected: u64,
    /// Workflows started and not yet decided, at `t`.
    pub in_flight: u64,
    /// Per pool, in scenario order (names in `RunResult::pool_names`).
    pub pools: Vec<PoolSample>,
    /// Dollars spent in the interval: pool capacity (busy or idle) plus tool calls and
    /// human review charged in it.
    pub usd: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolSample {
    /// Hops waiting or in service at `t`.
    pub in_system: u64,
    /// Busy fraction over the interval.
    pub utilization: f64,
    /// Servers or replicas provisioned at `t`.
    pub servers: u32,
    /// Hops waiting (not in service) at `t`.
    pub queued: u64,
    /// GPU pools: KV blocks in use / KV blocks of the replicas, at `t`.
    pub kv_occupancy: Option<f64>,
    /// GPU pools: tokens held in the KV cache by running sequences, at `t`.
    pub tokens_in_flight: Option<u64>,
}

impl RunResult {
    /// Dollars of pool `i`'s capacity that hops used (its idle dollars are
    /// `usd_capacity` minus these). A fixed pool: its busy share of the capacity cost.
    /// A pool whose size or prices change (autoscaling, spot, reserved: paid while
    /// booting, replicas at different prices): what its hops were charged, so booting
    /// time and unused reservations are idle.
    pub fn pool_busy_usd(&self, i: usize) -> f64 {
        let (Some(s), Some(r)) = (self.pools.get(i), self.pool_reports.get(i)) else {
            return 0.0;
        };
        let window_s = r.window.as_secs_f64();
        if r.capacity_server_s > 0.0 {
            s.usd_attributed.min(r.usd_capacity)
        } else if r.servers > 0 && window_s > 0.0 {
            r.usd_capacity * r.busy_server_s / (r.servers as f64 * window_s)
        } else {
            0.0
        }
    }

    /// Length of the measurement window (warm-up excluded).
    pub fn window(&self) -> SimDuration {
        self.end - self.window_start
    }

    pub fn class(&self, name: &str) -> Option<&ClassStats> {
        self.classes.iter().find(|c| c.name == name)
    }

    pub fn pool(&self, name: &str) -> Option<(&PoolStats, &StationReport)> {
        let i = self.pool_names.iter().position(|n| n == name)?;
        Some((&self.pools[i], &self.pool_reports[i]))
    }

    /// The `summary.json` document.
    pub fn summary(&self) -> Summary {
        let mut classes = BTreeMap::new();
        let mut total_usd_workflows = 0.0;
        for c in &self.classes {
            let lat =
                |q: f64| (c.completed > 0).then(|| c.latency_ns.value_at_quantile(q) as f64 / 1e9);
            let mut costs = c.usd_per_success.clone();
            costs.sort_by(f64::total_cmp);
            let usd_success: f64 = costs.iter().sum();
            let usd_total = usd_success
                + c.usd_unfinished
                + c.usd_waste_failed
                + c.usd_waste_abandoned
                + c.usd_waste_rejected
                + c.usd_waste_leftover;
            total_usd_workflows += usd_total;
            classes.insert(
                c.name.clone(),
                ClassSummary {
                    arrived: c.arrived,
                    completed: c.completed,
                    failed: c.failed,
                    rejected: c.rejected,
                    abandoned: c.abandoned,
                    in_flight: c.in_flight,
                    latency_s: LatencySummary {
                        mean: (c.completed > 0)
                            .then(|| c.latency_sum_ns as f64 / c.completed as f64 / 1e9),
                        p50: lat(0.50),
                        p90: lat(0.90),
                        p95: lat(0.95),
                        p99: lat(0.99),
                        p999: lat(0.999),
                        max: (c.completed > 0).then(|| c.latency_ns.max() as f64 / 1e9),
                    },
                    usd_per_outcome: CostSummary {
                        mean: (c.completed > 0).then(|| usd_success / c.completed as f64),
                        p50: exact_quantile(&costs, 0.50),
                        p95: exact_quantile(&costs, 0.95),
                        all_in: (c.completed > 0).then(|| usd_total / c.completed as f64),
                    },
                    usd_total,
                    usd_waste: WasteSummary {
                        failed: c.usd_waste_failed,
                        abandoned: c.usd_waste_abandoned,
                        rejected: c.usd_waste_rejected,
                        after_outcome: c.usd_waste_leftover,
                        over_tiered: c.usd_waste_over_tiered,
                    },
                    usd_human: c.usd_human,
                    failed_by_cause: c.failed_by_cause.clone(),
                    rejected_by_cause: c.rejected_by_cause.clone(),
                    degraded_hops: c.degraded_hops,
                    refused_by_cause: c.refused_by_cause.clone(),
                    admitted_over_watermark: c.admitted_over_watermark,
                    fan_out: {
                        let mut f: Vec<f64> = c.fan_out.iter().map(|&x| x as f64).collect();
                        f.sort_by(f64::total_cmp);
                        Percentiles {
                            p50: exact_quantile(&f, 0.5),
                            p95: exact_quantile(&f, 0.95),
                            max: f.last().copied(),
                        }
                    },
                    tokens_per_workflow: {
                        let mut t: Vec<f64> =
                            c.tokens_per_success.iter().map(|&x| x as f64).collect();
                        t.sort_by(f64::total_cmp);
                        Percentiles {
                            p50: exact_quantile(&t, 0.5),
                            p95: exact_quantile(&t, 0.95),
                            max: t.last().copied(),
                        }
                    },
                    loops_per_workflow: if c.finished() > 0 {
                        c.loops as f64 / c.finished() as f64
                    } else {
                        0.0
                    },
                    escalations: c.escalations,
                    slo_s: c.slo.map(|s| s.as_secs_f64()),
                    slo_attainment: slo_attainment(c),
                    // --- results/showback (issue 7) ---
                    tenant: c.tenant.clone(),
                    slo_target: c.slo.map(|_| c.slo_target),
                    slo_burn_rate: slo_attainment(c).and_then(|a| burn_rate(a, c.slo_target)),
                    usd_api: c.usd_api_split.total(),
                    usd_api_split: c.usd_api_split,
                },
            );
        }
        let mut pools = BTreeMap::new();
        let mut usd_capacity = 0.0;
        // What the window's totals paid for that no measured workflow was charged.
        let mut unattributed = UnattributedSplit::default();
        for (i, name) in self.pool_names.iter().enumerate() {
            let s = &self.pools[i];
            let r = &self.pool_reports[i];
            let window_s = r.window.as_secs_f64();
            usd_capacity += r.usd_capacity;
            let busy_usd = self.pool_busy_usd(i);
            if r.capacity_server_s > 0.0 {
                // Busy capacity is what hops submitted in the window were charged: a hop
                // still running at the end is not in it (it counts as idle).
                unattributed.warmup_workflows += s.usd_warmup_submitted;
            } else {
                unattributed.warmup_workflows += s.usd_warmup_in_window;
                // Busy capacity no finished hop paid for: hops in service at the end.
                unattributed.running_at_end += busy_usd - s.usd_charged_in_window;
            }
            unattributed.warmup_workflows += s.usd_api_warmup;
            pools.insert(
                name.clone(),
                PoolSummary {
                    servers: r.servers,
                    utilization: r.utilization(),
                    offered_rho: self.offered_rho.get(i).copied().flatten(),
                    hops: s.hops,
                    throughput_per_s: if window_s > 0.0 {
                        s.hops as f64 / window_s
                    } else {
                        0.0
                    },
                    prob_wait: s.prob_wait(),
                    queue_wait_s: WaitSummary {
                        mean: s.mean_wait_s(),
                        p50: s.wait_quantile_s(0.50),
                        p95: s.wait_quantile_s(0.95),
                        p99: s.wait_quantile_s(0.99),
                    },
                    mean_in_system: if window_s > 0.0 {
                        r.in_system_s / window_s
                    } else {
                        0.0
                    },
                    mean_queue_length: if window_s > 0.0 {
                        r.queued_s / window_s
                    } else {
                        0.0
                    },
                    usd_capacity: r.usd_capacity,
                    usd_idle: (r.usd_capacity - busy_usd).max(0.0),
                    refusals: s.refusals,
                    refusals_by_cause: s
                        .refusals_by_cause
                        .iter()
                        .map(|(k, v)| (k.to_string(), *v))
                        .collect(),
                    admitted_over_watermark: s.admitted_over_watermark,
                    degraded_away: s.degraded_away,
                    peak_tokens_in_flight: s.peak_tokens_in_flight,
                    breaker_opens: s.breaker_opens,
                    errors: s.errors,
                    aborted: s.aborted,
                    too_large: s.too_large,
                    too_large_by_cause: s
                        .too_large_by_cause
                        .iter()
                        .map(|(k, v)| (k.to_string(), *v))
                        .collect(),
                    usd_api: s.usd_api,
                    usd_api_split: s.usd_api_split,
                    llm: self.gpu_reports.get(i).cloned().flatten().map(|g| {
                        let q = |h: &Histogram<u64>, x: f64| h.value_at_quantile(x) as f64 / 1e9;
                        let summary = |h: &Histogram<u64>| WaitSummary {
                            mean: h.mean() / 1e9,
                            p50: q(h, 0.5),
                            p95: q(h, 0.95),
                            p99: q(h, 0.99),
                        };
                        LlmPoolSummary {
                            hops: s.llm_hops,
                            ttft_s: summary(&s.ttft_ns),
                            tpot_s: summary(&s.tpot_ns),
                            preempted_share: if s.llm_hops > 0 {
                                s.preempted_hops as f64 / s.llm_hops as f64
                            } else {
                                0.0
                            },
                            cached_tokens: s.cached_tokens,
                            replicas: g,
                        }
                    }),
                },
            );
        }
        let tools = self
            .tools
            .iter()
            .map(|t| {
                let calls = t.calls.max(1) as f64;
                (
                    t.name.clone(),
                    ToolSummary {
                        calls: t.calls,
                        failures: t.failures,
                        retries: t.retries,
                        mean_latency_s: t.latency_sum_ns as f64 / calls / 1e9,
                        mean_wait_s: t.wait_sum_ns as f64 / calls / 1e9,
                        max_in_flight: t.report.max_busy,
                        usd: t.usd,
                        aborted: t.aborted,
                    },
                )
            })
            .collect();
        // --- results/showback (issue 7): totals that make the cost balance visible ---
        let usd_idle: f64 = pools.values().map(|p: &PoolSummary| p.usd_idle).sum();
        let usd_tools: f64 = self.tools.iter().map(|t| t.usd).sum();
        unattributed.warmup_workflows += self.tools.iter().map(|t| t.usd_warmup).sum::<f64>();
        let usd_human: f64 = self.classes.iter().map(|c| c.usd_human).sum();
        let usd_waste: f64 = self
            .classes
            .iter()
            .map(|c| {
                c.usd_waste_failed
                    + c.usd_waste_abandoned
                    + c.usd_waste_rejected
                    + c.usd_waste_leftover
            })
            .sum();
        let usd_api: f64 = self.pools.iter().map(|p| p.usd_api).sum();
        let mut usd_api_split = ApiUsdSplit::default();
        for p in &self.pools {
            usd_api_split.add(&p.usd_api_split);
        }
        let tenants = tenant_summaries(&self.classes);
        let (breakdown, mut warnings) = self.breakdown_summary();
        for (name, p) in &pools {
            if p.too_large > 0 {
                let by: Vec<String> = p
                    .too_large_by_cause
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                let mut fixes = Vec::new();
                for (cause, fix) in [
                    (
                        "context_limit",
                        "cap the nodes' tokens or serve a model with a longer context",
                    ),
                    (
                        "kv_cache",
                        "give the replicas a larger KV cache (memory_utilization, tp, a larger GPU)",
                    ),
                    (
                        "token_budget",
                        "turn on chunked_prefill or raise max_batched_tokens",
                    ),
                ] {
                    if p.too_large_by_cause.contains_key(cause) {
                        fixes.push(fix);
                    }
                }
                warnings.push(format!(
                    "pool {name}: {} requests could never be served ({}) and failed their workflows{}{}",
                    p.too_large,
                    by.join(", "),
                    if fixes.is_empty() { "" } else { ": " },
                    fixes.join("; ")
                ));
            }
        }
        Summary {
            schema_version: 1,
            seed: self.seed,
            events: self.events,
            simulated_seconds: self.end.as_secs_f64(),
            warmup_seconds: self.window_start.as_secs_f64(),
            measured_seconds: self.window().as_secs_f64(),
            drain: self.drain,
            classes,
            pools,
            tools,
            totals: TotalsSummary {
                usd_capacity,
                usd_workflows: total_usd_workflows,
                completed: self.classes.iter().map(|c| c.completed).sum(),
                usd_per_outcome: {
                    let n: u64 = self.classes.iter().map(|c| c.completed).sum();
                    (n > 0).then(|| (usd_capacity + usd_tools + usd_human + usd_api) / n as f64)
                },
                usd_idle,
                usd_tools,
                usd_human,
                usd_spent: usd_capacity + usd_tools + usd_human + usd_api,
                usd_api,
                usd_waste,
                usd_waste_over_tiered: self.classes.iter().map(|c| c.usd_waste_over_tiered).sum(),
                usd_api_split,
                usd_unattributed: unattributed.warmup_workflows + unattributed.running_at_end,
                usd_unattributed_split: unattributed,
            },
            tenants,
            breakdown,
            warnings,
        }
    }
}

// --- results/showback (issue 7): SLO attainment, burn rate, tenants ---

/// Share of the class's measured workflows (every arrival after warm-up: completed,
/// failed, rejected, abandoned or still in flight) that completed within the SLO;
/// `None` without an SLO or without arrivals.
pub fn slo_attainment(c: &ClassStats) -> Option<f64> {
    match (c.slo, c.arrived) {
        (Some(_), n) if n > 0 => Some(c.within_slo as f64 / n as f64),
        _ => None,
    }
}

/// Error-budget burn rate: the miss rate over the allowed miss rate,
/// `(1 - attainment) / (1 - target)`. 1.0 spends the budget exactly; above 1 the SLO is
/// being missed. `None` when the target leaves no budget (target >= 1).
pub fn burn_rate(attainment: f64, target: f64) -> Option<f64> {
    let budget = 1.0 - target;
    (budget > 0.0).then(|| (1.0 - attainment) / budget)
}

/// Showback per tenant, from the classes it owns.
fn tenant_summaries(classes: &[ClassStats]) -> BTreeMap<String, TenantSummary> {
    let mut out: BTreeMap<String, TenantSummary> = BTreeMap::new();
    for c in classes {
        let t = out.entry(c.tenant.clone()).or_insert(TenantSummary {
            cost_centre: c.cost_centre.clone(),
            classes: Vec::new(),
            workflows: 0,
            completed: 0,
            decided: 0,
            success_rate: None,
            tokens: 0,
            usd: 0.0,
            usd_per_outcome: None,
            usd_api: 0.0,
            usd_api_split: ApiUsdSplit::default(),
        });
        t.classes.push(c.name.clone());
        t.workflows += c.arrived;
        t.completed += c.completed;
        t.decided += c.finished();
        t.tokens += c.tokens_per_success.iter().sum::<u64>();
        t.usd += c.usd_per_success.iter().sum::<f64>()
            + c.usd_unfinished
            + c.usd_waste_failed
            + c.usd_waste_abandoned
            + c.usd_waste_rejected
            + c.usd_waste_leftover;
        t.usd_api_split.add(&c.usd_api_split);
    }
    for t in out.values_mut() {
        t.usd_api = t.usd_api_split.total();
        t.classes.sort();
        t.success_rate = (t.decided > 0).then(|| t.completed as f64 / t.decided as f64);
        t.usd_per_outcome = (t.completed > 0).then(|| t.usd / t.completed as f64);
    }
    out
}

/// One tenant's showback line (`tenants.<name>` in summary.json, a row of showback.csv).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TenantSummary {
    /// The finance cost centre (`tenants.<name>.cost_centre`, default the tenant).
    pub cost_centre: String,
    /// Workflow classes owned by the tenant.
    pub classes: Vec<String>,
    /// Measured workflows (arrivals after warm-up).
    pub workflows: u64,
    pub completed: u64,
    /// Workflows whose outcome is decided (not in flight).
    pub decided: u64,
    /// completed / decided.
    pub success_rate: Option<f64>,
    /// Model tokens (input + output) of completed workflows.
    pub tokens: u64,
    /// Everything the tenant's workflows cost (same buckets as `classes.<name>.usd_total`).
    pub usd: f64,
    /// usd / completed.
    pub usd_per_outcome: Option<f64>,
    /// Paid-API dollars of the tenant's workflows (part of `usd`), and their split by
    /// token kind (sums of its classes').
    pub usd_api: f64,
    pub usd_api_split: ApiUsdSplit,
}

/// Exact quantile (nearest rank) of sorted values.
pub fn exact_quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `summary.json`. Field names are a contract: see docs/output.md.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub schema_version: u32,
    pub seed: u64,
    pub events: u64,
    pub simulated_seconds: f64,
    pub warmup_seconds: f64,
    pub measured_seconds: f64,
    pub drain: bool,
    pub classes: BTreeMap<String, ClassSummary>,
    pub pools: BTreeMap<String, PoolSummary>,
    pub tools: BTreeMap<String, ToolSummary>,
    pub totals: TotalsSummary,
    // --- results/showback (issue 7) ---
    pub tenants: BTreeMap<String, TenantSummary>,
    /// Per-hop figures by class, lane, tier, pool, tenant and tool.
    pub breakdown: BreakdownSummary,
    /// Findings worth a look (a prefill-heavy class on an interactive lane).
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ToolSummary {
    pub calls: u64,
    pub failures: u64,
    pub retries: u64,
    pub mean_latency_s: f64,
    pub mean_wait_s: f64,
    pub max_in_flight: u64,
    pub usd: f64,
    /// Calls stopped when their caller timed out (`on_timeout = "abort"`).
    pub aborted: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WasteSummary {
    pub failed: f64,
    pub abandoned: f64,
    /// Workflows rejected (429, outage) after some of their work had run.
    pub rejected: f64,
    /// Hops that finished after their workflow's outcome was decided.
    pub after_outcome: f64,
    /// Extra dollars of over-tiered hops of completed workflows (part of their cost:
    /// not in `usd_total` twice, not in `totals.usd_waste`).
    pub over_tiered: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassSummary {
    pub arrived: u64,
    pub completed: u64,
    pub failed: u64,
    pub rejected: u64,
    pub abandoned: u64,
    pub in_flight: u64,
    pub latency_s: LatencySummary,
    pub usd_per_outcome: CostSummary,
    pub usd_total: f64,
    pub usd_waste: WasteSummary,
    pub usd_human: f64,
    pub failed_by_cause: BTreeMap<String, u64>,
    /// Rejected workflows by cause ("429 from X", "X down").
    pub rejected_by_cause: BTreeMap<String, u64>,
    /// Hops served by a fallback pool of their tier, or degraded by a watermark.
    pub degraded_hops: u64,
    /// Hop attempts nothing admitted, by cause (the 429s the client backed off from).
    pub refused_by_cause: BTreeMap<String, u64>,
    /// Hops admitted above a `queue` token watermark.
    pub admitted_over_watermark: u64,
    pub fan_out: Percentiles,
    pub tokens_per_workflow: Percentiles,
    pub loops_per_workflow: f64,
    pub escalations: u64,
    pub slo_s: Option<f64>,
    pub slo_attainment: Option<f64>,
    // --- results/showback (issue 7) ---
    pub tenant: String,
    /// Share of workflows that should meet the SLO (`null` without an SLO).
    pub slo_target: Option<f64>,
    /// (1 - slo_attainment) / (1 - slo_target).
    pub slo_burn_rate: Option<f64>,
    /// Paid-API dollars of the class's measured workflows (part of `usd_total`), and
    /// their split by token kind.
    pub usd_api: f64,
    pub usd_api_split: ApiUsdSplit,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LatencySummary {
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    /// The 99.9th percentile.
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CostSummary {
    /// Mean cost of a successful workflow.
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    /// Everything the class's workflows cost (including unfinished ones) / completed.
    pub all_in: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WaitSummary {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PoolSummary {
    pub servers: u32,
    pub utilization: f64,
    /// Offered load per server from the scenario, lambda x E[S] / c (abstract pools;
    /// `null` for GPU and API pools).
    pub offered_rho: Option<f64>,
    pub hops: u64,
    pub throughput_per_s: f64,
    pub prob_wait: f64,
    pub queue_wait_s: WaitSummary,
    pub mean_in_system: f64,
    pub mean_queue_length: f64,
    pub usd_capacity: f64,
    pub usd_idle: f64,
    /// LLM serving figures of GPU pools (absent for abstract pools).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmPoolSummary>,
    /// Hops this pool refused when a client tried it (outage, watermark, rate limit).
    pub refusals: u64,
    /// `refusals` by cause: down, max_queue, rate_limit, tokens_in_flight, shed.
    pub refusals_by_cause: BTreeMap<String, u64>,
    /// Hops admitted above a `queue` token watermark.
    pub admitted_over_watermark: u64,
    /// Hops a `degrade` token watermark sent to another pool.
    pub degraded_away: u64,
    /// Most model tokens (input + output) in flight at once.
    pub peak_tokens_in_flight: u64,
    /// Times its circuit breaker opened.
    pub breaker_opens: u64,
    /// Per-token dollars (API pools).
    pub usd_api: f64,
    /// Calls that came back with an error (pool `error_rate`), retried or failed.
    pub errors: u64,
    /// Calls the pool stopped when their caller timed out (`on_timeout = "abort"`).
    pub aborted: u64,
    /// LLM hops refused as never servable (too large for a replica's KV cache or, with
    /// chunked prefill off, its token budget; over the model's context limit): each
    /// failed its workflow.
    pub too_large: u64,
    /// `too_large` by cause: kv_cache, token_budget, context_limit, no_replica.
    pub too_large_by_cause: BTreeMap<String, u64>,
    /// `usd_api` split by token kind (input, cached input, output).
    pub usd_api_split: ApiUsdSplit,
}

/// Per-request and per-replica figures of a GPU pool.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LlmPoolSummary {
    pub hops: u64,
    pub ttft_s: WaitSummary,
    pub tpot_s: WaitSummary,
    /// Share of LLM hops preempted (recomputed) at least once.
    pub preempted_share: f64,
    pub cached_tokens: u64,
    /// Replica figures: busy fraction, KV occupancy, batch sizes, prefix-cache hit rate.
    pub replicas: crate::gpu::gpu_station::GpuPoolReport,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TotalsSummary {
    /// What the pools cost over the measurement window (busy and idle).
    pub usd_capacity: f64,
    /// Cost attributed to measured workflows.
    pub usd_workflows: f64,
    pub completed: u64,
    /// Fully loaded: everything spent (pool capacity busy or idle, API tokens, tool
    /// calls, human review) / completed workflows.
    pub usd_per_outcome: Option<f64>,
    // --- results/showback (issue 7) ---
    /// Pool capacity not used by any hop (sum of `pools.<name>.usd_idle`).
    pub usd_idle: f64,
    /// Tool calls charged (all calls submitted in the window).
    pub usd_tools: f64,
    /// Human review charged to measured workflows.
    pub usd_human: f64,
    /// usd_capacity + usd_tools + usd_human + usd_api.
    pub usd_spent: f64,
    /// Waste over all classes: failed, abandoned, rejected and after-outcome dollars.
    pub usd_waste: f64,
    /// Per-token dollars paid to API pools.
    pub usd_api: f64,
    /// Extra dollars of over-tiered hops of completed workflows (sum of
    /// `classes.<name>.usd_waste.over_tiered`; part of `usd_workflows`).
    pub usd_waste_over_tiered: f64,
    /// `usd_api` split by token kind (sum of the pools' splits).
    pub usd_api_split: ApiUsdSplit,
    /// Dollars in `usd_spent` charged to no measured workflow and not idle: the sum of
    /// `usd_unattributed_split`, so `usd_workflows + usd_idle + usd_unattributed =
    /// usd_spent`.
    pub usd_unattributed: f64,
    pub usd_unattributed_split: UnattributedSplit,
}

/// Spending in the window that is neither a measured workflow's nor idle capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct UnattributedSplit {
    /// Hops of workflows that arrived during the warm-up (not measured): their capacity
    /// time in the window, and their API and tool calls submitted in it.
    pub warmup_workflows: f64,
    /// Capacity busy, in the window, with hops still in service when the run stopped
    /// (charged to a workflow only when a hop finishes; 0 in a drained run).
    pub running_at_end: f64,
}

// --- per-hop breakdown by class, lane, tier, pool, tenant and tool (issue 7) ---

/// Prefill share of GPU time above which a class on an interactive lane is warned about.
pub const PREFILL_SHARE_WARNING: f64 = 0.55;

/// An HDR histogram of nanoseconds with the exact sum (for the mean).
#[derive(Clone, Debug)]
pub struct Hist {
    pub ns: Histogram<u64>,
    pub sum_ns: u128,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            ns: new_histogram(),
            sum_ns: 0,
        }
    }
}

impl Hist {
    #[inline]
    pub fn record(&mut self, v: SimDuration) {
        self.record_n(v, 1);
    }
    /// Records `n` samples of the same value.
    #[inline]
    pub fn record_n(&mut self, v: SimDuration, n: u64) {
        if n == 0 {
            return;
        }
        let v = v.as_nanos();
        if self.ns.record_n(v, n).is_err() {
            self.ns.saturating_record_n(v, n);
        }
        self.sum_ns += v as u128 * n as u128;
    }
    pub fn count(&self) -> u64 {
        self.ns.len()
    }
    /// Adds `o`'s samples (bucket counts add exactly; an auto-resizing histogram
    /// cannot refuse them).
    pub fn merge(&mut self, o: &Hist) {
        if o.count() == 0 {
            return;
        }
        if self.count() == 0 {
            // Into an empty histogram: a copy (the same counts, minimum and maximum as
            // adding them; no resizing of the empty one first).
            self.ns.clone_from(&o.ns);
            self.sum_ns += o.sum_ns;
            return;
        }
        if self.ns.add(&o.ns).is_err() {
            for v in o.ns.iter_recorded() {
                let (x, n) = (v.value_iterated_to(), v.count_at_value());
                if self.ns.record_n(x, n).is_err() {
                    self.ns.saturating_record_n(x, n);
                }
            }
        }
        self.sum_ns += o.sum_ns;
    }
    /// Mean, p50, p90, p95, p99, p99.9 and max in seconds; `None` without samples.
    pub fn dist(&self) -> Option<Dist> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let q = |x: f64| self.ns.value_at_quantile(x) as f64 / 1e9;
        Some(Dist {
            n,
            mean: self.sum_ns as f64 / n as f64 / 1e9,
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
            max: self.ns.max() as f64 / 1e9,
        })
    }
}

/// A distribution of one per-hop figure, seconds (HDR, 3 significant digits; the mean
/// from the exact sum).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Dist {
    /// Samples (hops; for `itl_s`, token gaps).
    pub n: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    /// The 99.9th percentile.
    pub p999: f64,
    pub max: f64,
}

/// Per-hop figures of one group of hops (a class, lane, tier, pool, tenant or tool),
/// for hops submitted after the warm-up.
#[derive(Clone, Debug, Default)]
pub struct HopGroupStats {
    /// Model hops (first tries and escalations) served.
    pub hops: u64,
    /// Submission to start of service, model hops.
    pub queue_wait: Hist,
    /// Model hops with token timings (served by GPU replicas or paid APIs).
    pub llm_hops: u64,
    pub ttft: Hist,
    /// Mean time per output token after the first, per hop with more than one output token.
    pub tpot: Hist,
    /// Inter-token latency, one sample per gap between consecutive output tokens of a
    /// request (GPU: as produced; a paid API: its drawn TPOT).
    pub itl: Hist,
    pub tool_calls: u64,
    /// Submission to start of a tool call (bulkhead wait).
    pub tool_wait: Hist,
    /// GPU busy time charged to the hops, and the part spent prefilling.
    pub gpu_busy_ns: u128,
    pub prefill_busy_ns: u128,
    /// Dollars charged to the hops (server time, API tokens, tool calls).
    pub usd: f64,
    /// Hops run on a dearer pool than their tier's cheapest, and the extra dollars
    /// (actual minus the cheapest pool's expected cost), whatever the workflow's outcome.
    pub over_tiered_hops: u64,
    pub usd_over_tiered: f64,
}

/// What a finished hop contributes to the breakdown.
#[derive(Clone, Copy, Debug)]
pub struct HopSample<'a> {
    pub class: usize,
    /// The tier the node asked for (`None`: pinned to a pool).
    pub tier: Option<usize>,
    pub escalation: bool,
    /// Pool index, or `None` for a tool call.
    pub pool: Option<usize>,
    pub tool: Option<usize>,
    /// Served by GPU replicas (busy time is GPU time); false for paid APIs.
    pub gpu: bool,
    pub done: &'a HopDone,
    pub output_tokens: u64,
    pub usd: f64,
    /// Extra dollars of an over-tiered hop.
    pub over_tiered: Option<f64>,
}

impl HopGroupStats {
    fn record(&mut self, s: &HopSample<'_>) {
        self.usd += s.usd;
        if s.tool.is_some() {
            self.tool_calls += 1;
            self.tool_wait.record(s.done.queue_wait());
            return;
        }
        self.hops += 1;
        self.queue_wait.record(s.done.queue_wait());
        if let Some(l) = &s.done.llm {
            self.llm_hops += 1;
            self.ttft.record(l.ttft);
            if s.output_tokens > 1 {
                self.tpot.record(l.tpot);
                // A paid API's gaps are all its drawn TPOT; a GPU request reports each
                // gap as its tokens are produced (`Breakdown::record_token_gaps`).
                if !s.gpu {
                    self.itl.record_n(l.tpot, s.output_tokens - 1);
                }
            }
            if s.gpu {
                self.gpu_busy_ns += s.done.busy.as_nanos() as u128;
                self.prefill_busy_ns += l.prefill_busy.as_nanos() as u128;
            }
        }
        if let Some(x) = s.over_tiered {
            self.over_tiered_hops += 1;
            self.usd_over_tiered += x;
        }
    }

    /// Adds another group's hops (exact: histograms merge bucket by bucket).
    fn merge(&mut self, o: &HopGroupStats) {
        self.hops += o.hops;
        self.queue_wait.merge(&o.queue_wait);
        self.llm_hops += o.llm_hops;
        self.ttft.merge(&o.ttft);
        self.tpot.merge(&o.tpot);
        self.itl.merge(&o.itl);
        self.tool_calls += o.tool_calls;
        self.tool_wait.merge(&o.tool_wait);
        self.gpu_busy_ns += o.gpu_busy_ns;
        self.prefill_busy_ns += o.prefill_busy_ns;
        self.usd += o.usd;
        self.over_tiered_hops += o.over_tiered_hops;
        self.usd_over_tiered += o.usd_over_tiered;
    }

    /// Prefill time / GPU busy time (`None` without GPU time).
    pub fn prefill_share(&self) -> Option<f64> {
        (self.gpu_busy_ns > 0).then(|| self.prefill_busy_ns as f64 / self.gpu_busy_ns as f64)
    }

    fn summary(&self, latency: Option<&Histogram<u64>>, latency_sum_ns: u128) -> HopGroupSummary {
        HopGroupSummary {
            workflow_latency_s: latency.map(|h| {
                Hist {
                    ns: h.clone(),
                    sum_ns: latency_sum_ns,
                }
                .dist()
            }),
            hops: self.hops,
            queue_wait_s: self.queue_wait.dist(),
            llm_hops: self.llm_hops,
            ttft_s: self.ttft.dist(),
            tpot_s: self.tpot.dist(),
            itl_s: self.itl.dist(),
            tool_calls: self.tool_calls,
            tool_wait_s: self.tool_wait.dist(),
            gpu_busy_s: self.gpu_busy_ns as f64 / 1e9,
            prefill_share: self.prefill_share(),
            usd: self.usd,
            over_tiered_hops: self.over_tiered_hops,
            usd_over_tiered: self.usd_over_tiered,
        }
    }
}

/// Per-hop figures grouped five ways (and tools), in scenario order.
#[derive(Clone, Debug, Default)]
pub struct Breakdown {
    pub class_names: Vec<String>,
    pub by_class: Vec<HopGroupStats>,
    pub lane_names: Vec<String>,
    /// Whether each lane is interactive: a priority above the `default` lane's, or a
    /// name containing "interactive".
    pub lane_interactive: Vec<bool>,
    pub by_lane: Vec<HopGroupStats>,
    /// The scenario's tiers, then `(pinned)` (nodes pinned to a pool) and
    /// `(escalation)` (escalated hops).
    pub tier_names: Vec<String>,
    pub by_tier: Vec<HopGroupStats>,
    pub pool_names: Vec<String>,
    pub by_pool: Vec<HopGroupStats>,
    pub tenant_names: Vec<String>,
    pub by_tenant: Vec<HopGroupStats>,
    pub tool_names: Vec<String>,
    pub by_tool: Vec<HopGroupStats>,
    /// Lane and tenant of each class (indices into the lists above).
    pub class_lane: Vec<usize>,
    pub class_tenant: Vec<usize>,
    /// Hops recorded during the run, by (class, tier, station); merged by `finish`.
    cells: Vec<(usize, usize, usize, HopGroupStats)>,
    cell_of: Vec<u32>,
    /// The last (class, tier, station) looked up and its cell: consecutive hops of a
    /// simple model share one, so most lookups are three comparisons.
    last_cell: Option<(usize, usize, usize, usize)>,
}

/// Tier key of hops whose node names a pool rather than a tier.
pub const PINNED_TIER: &str = "(pinned)";
/// Tier key of escalated hops.
pub const ESCALATION_TIER: &str = "(escalation)";

impl Breakdown {
    pub fn new(sc: &crate::scenario::Scenario) -> Self {
        let default_priority = sc
            .lanes
            .iter()
            .find(|l| l.name == "default")
            .map_or(0, |l| l.priority);
        let mut tenant_names: Vec<String> = sc.classes.iter().map(|c| c.tenant.clone()).collect();
        tenant_names.sort();
        tenant_names.dedup();
        let mut tier_names: Vec<String> = sc.tiers.iter().map(|t| t.name.clone()).collect();
        tier_names.push(PINNED_TIER.into());
        tier_names.push(ESCALATION_TIER.into());
        let groups = |n: usize| vec![HopGroupStats::default(); n];
        Breakdown {
            class_names: sc.classes.iter().map(|c| c.name.clone()).collect(),
            by_class: groups(sc.classes.len()),
            lane_names: sc.lanes.iter().map(|l| l.name.clone()).collect(),
            lane_interactive: sc
                .lanes
                .iter()
                .map(|l| {
                    l.priority > default_priority
                        || l.name.to_ascii_lowercase().contains("interactive")
                })
                .collect(),
            by_lane: groups(sc.lanes.len()),
            by_tier: groups(tier_names.len()),
            tier_names,
            pool_names: sc.pools.iter().map(|p| p.name.clone()).collect(),
            by_pool: groups(sc.pools.len()),
            by_tenant: groups(tenant_names.len()),
            class_tenant: sc
                .classes
                .iter()
                .map(|c| {
                    tenant_names
                        .iter()
                        .position(|t| *t == c.tenant)
                        .unwrap_or(0)
                })
                .collect(),
            tenant_names,
            tool_names: sc.tools.iter().map(|t| t.name.clone()).collect(),
            by_tool: groups(sc.tools.len()),
            class_lane: sc.classes.iter().map(|c| c.lane_index).collect(),
            cells: Vec::new(),
            cell_of: Vec::new(),
            last_cell: None,
        }
    }

    /// Records one finished hop. Hops are kept once per (class, tier, pool or tool)
    /// cell, so each figure costs one histogram update; [`Breakdown::finish`] merges
    /// the cells into the class, lane, tenant, tier, pool and tool groups.
    #[inline]
    pub fn record(&mut self, s: &HopSample<'_>) {
        let n_tiers = self.by_tier.len();
        let n_pools = self.by_pool.len();
        let stations = n_pools + self.by_tool.len();
        let tier = match (s.tool, s.escalation) {
            (Some(_), _) => n_tiers, // tools have no tier
            (None, true) => n_tiers - 1,
            (None, false) => s.tier.unwrap_or(n_tiers - 2),
        };
        let station = match (s.tool, s.pool) {
            (Some(t), _) => n_pools + t,
            (None, Some(p)) => p,
            (None, None) => stations,
        };
        let cell = self.cell(s.class, tier, station);
        self.cells[cell].3.record(s);
    }

    /// The cell of (class, tier index, station index), created on first use.
    #[inline(always)]
    fn cell(&mut self, class: usize, tier: usize, station: usize) -> usize {
        if let Some((c, t, s, cell)) = self.last_cell
            && (c, t, s) == (class, tier, station)
        {
            return cell;
        }
        let cell = self.find_cell(class, tier, station);
        self.last_cell = Some((class, tier, station, cell));
        cell
    }

    fn find_cell(&mut self, class: usize, tier: usize, station: usize) -> usize {
        let n_tiers = self.by_tier.len();
        let stations = self.by_pool.len() + self.by_tool.len();
        let key = (class * (n_tiers + 1) + tier) * (stations + 1) + station;
        if self.cell_of.len() <= key {
            let size = self.class_names.len().max(class + 1) * (n_tiers + 1) * (stations + 1);
            self.cell_of.resize(size.max(key + 1), u32::MAX);
        }
        match self.cell_of[key] {
            u32::MAX => {
                self.cell_of[key] = self.cells.len() as u32;
                self.cells
                    .push((class, tier, station, HopGroupStats::default()));
                self.cells.len() - 1
            }
            i => i as usize,
        }
    }

    /// The group a model hop of `class` on pool `pool` reports its inter-token gaps to
    /// ([`crate::gpu::LlmRequest::itl_group`]): its cell, as [`Breakdown::record`]
    /// files the hop (`tier` asked for by the node, or an escalation).
    pub fn token_group(
        &self,
        class: usize,
        tier: Option<usize>,
        escalation: bool,
        pool: usize,
    ) -> Option<u32> {
        let n_tiers = self.by_tier.len();
        let stations = self.by_pool.len() + self.by_tool.len();
        let tier = if escalation {
            n_tiers - 1
        } else {
            tier.unwrap_or(n_tiers - 2)
        };
        u32::try_from((class * (n_tiers + 1) + tier) * (stations + 1) + pool).ok()
    }

    /// Records inter-token gaps reported for a [`Breakdown::token_group`].
    pub fn record_token_gaps(&mut self, g: &crate::station::TokenGaps) {
        let n_tiers = self.by_tier.len();
        let stations = self.by_pool.len() + self.by_tool.len();
        let key = g.group as usize;
        let (station, rest) = (key % (stations + 1), key / (stations + 1));
        let (tier, class) = (rest % (n_tiers + 1), rest / (n_tiers + 1));
        let cell = self.cell(class, tier, station);
        self.cells[cell].3.itl.record_n(g.gap, g.count);
    }

    /// Merges the recorded cells into the groups (the `by_*` lists). Called once, at
    /// the end of a run; merging histograms is exact.
    pub fn finish(&mut self) {
        let n_tiers = self.by_tier.len();
        let n_pools = self.by_pool.len();
        self.last_cell = None;
        for (class, tier, station, g) in std::mem::take(&mut self.cells) {
            if let Some(t) = self.by_class.get_mut(class) {
                t.merge(&g);
            }
            if let Some(t) = self
                .class_lane
                .get(class)
                .and_then(|&l| self.by_lane.get_mut(l))
            {
                t.merge(&g);
            }
            if let Some(t) = self
                .class_tenant
                .get(class)
                .and_then(|&i| self.by_tenant.get_mut(i))
            {
                t.merge(&g);
            }
            if station >= n_pools {
                if let Some(t) = self.by_tool.get_mut(station - n_pools) {
                    t.merge(&g);
                }
                continue;
            }
            if tier < n_tiers
                && let Some(t) = self.by_tier.get_mut(tier)
            {
                t.merge(&g);
            }
            if let Some(t) = self.by_pool.get_mut(station) {
                t.merge(&g);
            }
        }
        self.cell_of.clear();
    }
}

/// `breakdown` of summary.json: per-hop figures by class, lane, tier, pool, tenant, tool.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BreakdownSummary {
    pub by_class: BTreeMap<String, HopGroupSummary>,
    pub by_lane: BTreeMap<String, HopGroupSummary>,
    pub by_tier: BTreeMap<String, HopGroupSummary>,
    pub by_pool: BTreeMap<String, HopGroupSummary>,
    pub by_tenant: BTreeMap<String, HopGroupSummary>,
    pub by_tool: BTreeMap<String, HopGroupSummary>,
}

/// One group's per-hop figures (see docs/output.md, `breakdown`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HopGroupSummary {
    /// End-to-end latency of the group's completed workflows (classes, lanes and
    /// tenants only; `null` inside when none completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_latency_s: Option<Option<Dist>>,
    pub hops: u64,
    pub queue_wait_s: Option<Dist>,
    pub llm_hops: u64,
    pub ttft_s: Option<Dist>,
    pub tpot_s: Option<Dist>,
    pub itl_s: Option<Dist>,
    pub tool_calls: u64,
    pub tool_wait_s: Option<Dist>,
    pub gpu_busy_s: f64,
    pub prefill_share: Option<f64>,
    pub usd: f64,
    pub over_tiered_hops: u64,
    pub usd_over_tiered: f64,
}

impl RunResult {
    /// The `breakdown` key of summary.json and the prefill-share warnings.
    pub fn breakdown_summary(&self) -> (BreakdownSummary, Vec<String>) {
        let b = &self.breakdown;
        // Workflow latency of classes, merged per lane and tenant.
        let mut lane_lat: Vec<(Histogram<u64>, u128)> =
            b.lane_names.iter().map(|_| (new_histogram(), 0)).collect();
        let mut tenant_lat: Vec<(Histogram<u64>, u128)> = b
            .tenant_names
            .iter()
            .map(|_| (new_histogram(), 0))
            .collect();
        for c in &self.classes {
            let Some(ci) = b.class_names.iter().position(|n| *n == c.name) else {
                continue;
            };
            for (groups, idx) in [
                (&mut lane_lat, b.class_lane.get(ci)),
                (&mut tenant_lat, b.class_tenant.get(ci)),
            ] {
                if let Some((h, sum)) = idx.and_then(|&i| groups.get_mut(i)) {
                    // Both histograms auto-resize, so adding cannot fail; into an empty
                    // one, a copy is the same histogram.
                    if h.is_empty() {
                        h.clone_from(&c.latency_ns);
                    } else {
                        let _ = h.add(&c.latency_ns);
                    }
                    *sum += c.latency_sum_ns;
                }
            }
        }
        let plain = |names: &[String], groups: &[HopGroupStats]| {
            names
                .iter()
                .zip(groups)
                // The pseudo-tiers appear only when they have hops.
                .filter(|(n, g)| g.hops > 0 || (n != &PINNED_TIER && n != &ESCALATION_TIER))
                .map(|(n, g)| (n.clone(), g.summary(None, 0)))
                .collect::<BTreeMap<_, _>>()
        };
        let with_latency =
            |names: &[String], groups: &[HopGroupStats], lat: &[(Histogram<u64>, u128)]| {
                names
                    .iter()
                    .zip(groups)
                    .zip(lat)
                    .map(|((n, g), (h, sum))| (n.clone(), g.summary(Some(h), *sum)))
                    .collect::<BTreeMap<_, _>>()
            };
        let class_lat: Vec<(Histogram<u64>, u128)> = b
            .class_names
            .iter()
            .map(|n| match self.classes.iter().find(|c| c.name == *n) {
                Some(c) => (c.latency_ns.clone(), c.latency_sum_ns),
                None => (new_histogram(), 0),
            })
            .collect();
        let mut warnings = Vec::new();
        for (ci, (name, g)) in b.class_names.iter().zip(&b.by_class).enumerate() {
            let Some(lane) = b.class_lane.get(ci).copied() else {
                continue;
            };
            if let Some(share) = g.prefill_share()
                && share > PREFILL_SHARE_WARNING
                && b.lane_interactive.get(lane).copied().unwrap_or(false)
            {
                warnings.push(format!(
                    "class {name} on interactive lane `{}`: prefill is {:.0}% of its GPU time (above {:.0}%); long prompts stall the decode of every request batched with them: shorten or cache the context (prefix caching), or serve it from its own pool",
                    b.lane_names[lane],
                    share * 100.0,
                    PREFILL_SHARE_WARNING * 100.0
                ));
            }
        }
        (
            BreakdownSummary {
                by_class: with_latency(&b.class_names, &b.by_class, &class_lat),
                // Lanes no class uses are left out.
                by_lane: with_latency(&b.lane_names, &b.by_lane, &lane_lat)
                    .into_iter()
                    .filter(|(n, _)| b.class_lane.iter().any(|&l| b.lane_names.get(l) == Some(n)))
                    .collect(),
                by_tier: plain(&b.tier_names, &b.by_tier),
                by_pool: plain(&b.pool_names, &b.by_pool),
                by_tenant: with_latency(&b.tenant_names, &b.by_tenant, &tenant_lat),
                by_tool: plain(&b.tool_names, &b.by_tool),
            },
            warnings,
        )
    }
}

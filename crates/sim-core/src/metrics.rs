//! What a run measured, and the `summary.json` contract built from it.
//!
//! Latencies go into HDR histograms (3 significant digits: any percentile is within
//! 0.1% of the exact sample percentile); means come from exact sums.

use crate::scenario::WorkflowClass;
use crate::station::{HopDone, StationReport};
use crate::time::{SimDuration, SimTime};

/// One finished hop, as logged with `RunOptions::hop_log` (span logs, exact tests).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HopRecord {
    pub workflow: u64,
    /// The recorded request or workflow the hop's workflow replays, if any.
    pub record: Option<u32>,
    pub class: String,
    pub node: String,
    pub role: String,
    pub branch: Option<u32>,
    /// Pool or tool name.
    pub station: String,
    /// "llm", "escalation" or "tool".
    pub kind: &'static str,
    /// 1 for a first call; 2, 3, ... for retries of a failed tool call.
    pub attempt: u32,
    /// Context inherited from parents (before the node's inherit fraction).
    pub context_in: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub submitted: SimTime,
    pub started: SimTime,
    pub finished: SimTime,
    pub usd: f64,
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
    /// Hops served by a fallback pool of their tier (not the tier's first choice).
    pub degraded_hops: u64,
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
    /// Share of workflows that should meet `slo` (error budget = 1 - target).
    pub slo_target: f64,
    /// End-to-end latency of each completed workflow, in completion order (same order
    /// as `usd_per_success`), for the per-workflow CSV.
    pub latency_per_success_ns: Vec<u64>,
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
            usd_waste_failed: 0.0,
            usd_waste_abandoned: 0.0,
            usd_waste_leftover: 0.0,
            usd_human: 0.0,
            fan_out: Vec::new(),
            loops: 0,
            escalations: 0,
            tokens_per_success: Vec::new(),
            tenant: c.tenant.clone(),
            slo_target: c.slo_target,
            latency_per_success_ns: Vec::new(),
        }
    }

    /// Workflows whose outcome is decided.
    pub fn finished(&self) -> u64 {
        self.completed + self.failed + self.rejected + self.abandoned
    }

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
    /// Per-token dollars of API hops (paid APIs have no capacity cost).
    pub usd_api: f64,
    /// Times its circuit breaker opened.
    pub breaker_opens: u64,
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
            usd_api: 0.0,
            breaker_opens: 0,
        }
    }

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
        record(&mut self.wait_ns, wait);
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
}

/// The factory over one sampling interval ending at `t`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimeseriesRow {
    /// End of the interval, seconds since the start of the run.
    pub t_s: f64,
    /// Workflow arrivals, completions, failures and abandonments in the interval (all
    /// classes, warm-up included).
    pub arrivals: u64,
    pub completions: u64,
    pub failed: u64,
    pub abandoned: u64,
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
}

impl RunResult {
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
                        p95: lat(0.95),
                        p99: lat(0.99),
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
                    },
                    usd_human: c.usd_human,
                    failed_by_cause: c.failed_by_cause.clone(),
                    rejected_by_cause: c.rejected_by_cause.clone(),
                    degraded_hops: c.degraded_hops,
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
                },
            );
        }
        let mut pools = BTreeMap::new();
        let mut usd_capacity = 0.0;
        for (i, name) in self.pool_names.iter().enumerate() {
            let s = &self.pools[i];
            let r = &self.pool_reports[i];
            let window_s = r.window.as_secs_f64();
            usd_capacity += r.usd_capacity;
            // Dollars of capacity that hops used. A fixed pool: its busy share of the
            // capacity cost. An autoscaled pool (paid while booting, so the price per
            // running server-second is not the capacity cost over running time): what
            // its hops were charged (busy seconds x price), so booting time is idle.
            let busy_usd = if r.capacity_server_s > 0.0 {
                s.usd_attributed.min(r.usd_capacity)
            } else if r.servers > 0 && window_s > 0.0 {
                r.usd_capacity * r.busy_server_s / (r.servers as f64 * window_s)
            } else {
                0.0
            };
            pools.insert(
                name.clone(),
                PoolSummary {
                    servers: r.servers,
                    utilization: r.utilization(),
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
                    breaker_opens: s.breaker_opens,
                    usd_api: s.usd_api,
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
                    },
                )
            })
            .collect();
        // --- results/showback (issue 7): totals that make the cost balance visible ---
        let usd_idle: f64 = pools.values().map(|p: &PoolSummary| p.usd_idle).sum();
        let usd_tools: f64 = self.tools.iter().map(|t| t.usd).sum();
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
        let tenants = tenant_summaries(&self.classes);
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
            },
            tenants,
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
            classes: Vec::new(),
            workflows: 0,
            completed: 0,
            decided: 0,
            success_rate: None,
            tokens: 0,
            usd: 0.0,
            usd_per_outcome: None,
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
    }
    for t in out.values_mut() {
        t.classes.sort();
        t.success_rate = (t.decided > 0).then(|| t.completed as f64 / t.decided as f64);
        t.usd_per_outcome = (t.completed > 0).then(|| t.usd / t.completed as f64);
    }
    out
}

/// One tenant's showback line (`tenants.<name>` in summary.json, a row of showback.csv).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TenantSummary {
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
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WasteSummary {
    pub failed: f64,
    pub abandoned: f64,
    /// Workflows rejected (429, outage) after some of their work had run.
    pub rejected: f64,
    /// Hops that finished after their workflow's outcome was decided.
    pub after_outcome: f64,
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
    /// Hops served by a fallback pool of their tier.
    pub degraded_hops: u64,
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
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LatencySummary {
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
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
    /// Times its circuit breaker opened.
    pub breaker_opens: u64,
    /// Per-token dollars (API pools).
    pub usd_api: f64,
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
}

//! Trace statistics as plain structs: arrival rate (overall and by step), burstiness,
//! token distributions, Mooncake prefix-block reuse, and per-workflow-class agent
//! figures for span traces. Token and arrival values are kept (4 and 8 bytes a row)
//! for exact percentiles.

use crate::error::TraceError;
use crate::request::{ReadReport, RequestRecord};
use crate::span::{SpanKind, SpanStatus};
use crate::workflow::Workflow;
use std::collections::{BTreeMap, HashMap};

/// Default step of the rate-by-step table and the piecewise fit: one hour.
pub const DEFAULT_STEP_NS: u64 = 3_600_000_000_000;

/// Most steps in a rate table; a smaller step leaves the table empty.
pub const MAX_STEPS: u64 = 1_000_000;

/// Percentile `q` in [0, 1] of sorted values (linear interpolation between ranks).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Count, mean and percentiles of a sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// From values sorted ascending.
    pub fn from_sorted(v: &[f64]) -> Summary {
        if v.is_empty() {
            return Summary::default();
        }
        Summary {
            count: v.len() as u64,
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v[0],
            p50: quantile(v, 0.5),
            p95: quantile(v, 0.95),
            p99: quantile(v, 0.99),
            max: v[v.len() - 1],
        }
    }

    /// Sorts `v` and summarises it.
    pub fn of(mut v: Vec<f64>) -> Summary {
        v.sort_by(f64::total_cmp);
        Summary::from_sorted(&v)
    }
}

/// Arrival figures of a trace (or of one workflow class).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArrivalStats {
    pub rows: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// last - first, in seconds.
    pub duration_s: f64,
    /// (rows - 1) / duration: one over the mean inter-arrival time (0 if undefined).
    pub mean_rate_per_s: f64,
    /// The step of `rate_by_step`, in seconds.
    pub step_s: f64,
    /// Arrivals per second in consecutive steps from the first arrival; the last,
    /// partial step's rate is over the part of it the trace covers.
    pub rate_by_step: Vec<f64>,
    /// Coefficient of variation of inter-arrival times (1 for Poisson, > 1 bursty).
    pub interarrival_cv: f64,
    /// The same in operational time: each gap measured as the arrivals `rate_by_step`
    /// expects over it (time rescaling), so a changing rate alone does not count as
    /// burstiness. 0 without a rate table.
    pub step_cv: f64,
}

impl ArrivalStats {
    /// From arrival times (any order; they are sorted).
    pub fn from_arrivals(mut t: Vec<u64>, step_ns: u64) -> ArrivalStats {
        t.sort_unstable();
        let step_ns = step_ns.max(1);
        let n = t.len();
        let mut s = ArrivalStats {
            rows: n as u64,
            step_s: step_ns as f64 / 1e9,
            ..ArrivalStats::default()
        };
        if n == 0 {
            return s;
        }
        s.first_ns = t[0];
        s.last_ns = t[n - 1];
        let dur = t[n - 1] - t[0];
        s.duration_s = dur as f64 / 1e9;
        if n >= 2 && dur > 0 {
            s.mean_rate_per_s = (n - 1) as f64 / s.duration_s;
            s.interarrival_cv = gap_cv(&t, |x| x as f64);
        }
        if dur == 0 {
            // One instant: no rate can be measured.
            return s;
        }
        let steps = dur / step_ns + 1;
        if steps > MAX_STEPS {
            // A step far too small for the trace: no table rather than a huge one.
            return s;
        }
        let steps = steps as usize;
        let mut counts = vec![0u64; steps];
        for &x in &t {
            counts[((x - t[0]) / step_ns) as usize] += 1;
        }
        s.rate_by_step = counts
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                let start = k as u64 * step_ns;
                let covered = if k + 1 == steps {
                    (dur - start).max(1).min(step_ns)
                } else {
                    step_ns
                };
                // A last step covering under 1% of a step would give a meaningless
                // rate; it is reported over the whole step.
                let covered = if covered * 100 < step_ns && steps > 1 {
                    step_ns
                } else {
                    covered
                };
                c as f64 / (covered as f64 / 1e9)
            })
            .collect();
        // Operational time: the integral of the step rates from the first arrival.
        let mut before = Vec::with_capacity(steps);
        let mut mass = 0.0;
        for r in &s.rate_by_step {
            before.push(mass);
            mass += r * s.step_s;
        }
        let t0 = t[0];
        let rates = &s.rate_by_step;
        s.step_cv = gap_cv(&t, |x| {
            let k = (((x - t0) / step_ns) as usize).min(steps - 1);
            before[k] + rates[k] * ((x - t0) - k as u64 * step_ns) as f64 / 1e9
        });
        s
    }
}

/// Coefficient of variation of the gaps between consecutive sorted times, each time
/// mapped through `at` first; two passes, no gap vector (a trace of tens of millions of
/// rows holds only its arrival times).
fn gap_cv(t: &[u64], at: impl Fn(u64) -> f64) -> f64 {
    let n = t.len().saturating_sub(1);
    if n == 0 {
        return 0.0;
    }
    let gap = |w: &[u64]| at(w[1]) - at(w[0]);
    let mean = t.windows(2).map(gap).sum::<f64>() / n as f64;
    if mean <= 0.0 {
        return 0.0;
    }
    let var = t.windows(2).map(|w| (gap(w) - mean).powi(2)).sum::<f64>() / n as f64;
    var.sqrt() / mean
}

/// Prefix-block reuse of a Mooncake trace: a block is reused when the same chain of
/// block hashes up to and including it was seen in an earlier request (what a prefix
/// cache with unlimited KV would hit).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrefixStats {
    pub requests_with_blocks: u64,
    pub blocks: u64,
    pub reused_blocks: u64,
    /// reused / blocks.
    pub reuse_share: f64,
}

/// Counts reused prefix blocks incrementally (a trie of block-hash chains).
#[derive(Default)]
pub struct PrefixCounter {
    children: HashMap<(u32, u64), u32>,
    nodes: u32,
    pub stats: PrefixStats,
}

impl PrefixCounter {
    /// Adds one request's hashes; returns how many leading blocks were already cached.
    pub fn add(&mut self, hashes: &[u64]) -> u64 {
        self.stats.requests_with_blocks += 1;
        self.stats.blocks += hashes.len() as u64;
        let mut node = 0u32;
        let mut hits = 0u64;
        let mut matching = true;
        for &h in hashes {
            match self.children.get(&(node, h)) {
                Some(&c) if matching => {
                    hits += 1;
                    node = c;
                }
                _ => {
                    matching = false;
                    self.nodes += 1;
                    let c = self.nodes;
                    self.children.insert((node, h), c);
                    node = c;
                }
            }
        }
        self.stats.reused_blocks += hits;
        if self.stats.blocks > 0 {
            self.stats.reuse_share = self.stats.reused_blocks as f64 / self.stats.blocks as f64;
        }
        hits
    }
}

/// Statistics of a flat request trace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestStats {
    pub arrivals: ArrivalStats,
    pub input_tokens: Summary,
    pub output_tokens: Summary,
    pub prefix: Option<PrefixStats>,
    pub report: ReadReport,
    /// Input tokens of every row, sorted (for fitting).
    pub input_sorted: Vec<f64>,
    /// Output tokens of every row, sorted.
    pub output_sorted: Vec<f64>,
}

/// Reads a request stream to the end and summarises it; the first error stops it.
pub fn request_stats(
    records: impl IntoIterator<Item = Result<RequestRecord, TraceError>>,
    step_ns: u64,
) -> Result<RequestStats, TraceError> {
    let mut arrivals = Vec::new();
    let mut input = Vec::new();
    let mut output = Vec::new();
    let mut prefix: Option<PrefixCounter> = None;
    for r in records {
        let r = r?;
        arrivals.push(r.arrival_ns);
        input.push(r.input_tokens as f64);
        output.push(r.output_tokens as f64);
        if let Some(h) = &r.block_hashes {
            prefix.get_or_insert_with(PrefixCounter::default).add(h);
        }
    }
    input.sort_by(f64::total_cmp);
    output.sort_by(f64::total_cmp);
    Ok(RequestStats {
        arrivals: ArrivalStats::from_arrivals(arrivals, step_ns),
        input_tokens: Summary::from_sorted(&input),
        output_tokens: Summary::from_sorted(&output),
        prefix: prefix.map(|p| p.stats),
        report: ReadReport::default(),
        input_sorted: input,
        output_sorted: output,
    })
}

/// Agent figures of one workflow class of a span trace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassStats {
    pub class: String,
    pub workflows: u64,
    pub spans: u64,
    pub llm_spans: u64,
    pub tool_spans: u64,
    /// Workflow arrivals (earliest span start).
    pub arrivals: ArrivalStats,
    /// Fan-out per tick: children of each span that has children (first attempts:
    /// a retry is not one more branch).
    pub fanout: Summary,
    /// Context growth per hop: input tokens of an LLM span minus those of its nearest
    /// LLM ancestor.
    pub context_growth: Summary,
    /// Share of LLM and tool spans that are retries (`attempt` > 1).
    pub retry_rate: f64,
    /// LLM and tool spans that ended in an error, a timeout, or lost with their
    /// machine (`status`); the rest returned.
    pub error_spans: u64,
    pub timeout_spans: u64,
    pub lost_spans: u64,
    /// Workflows that gave up (see [`gave_up`]): left out of the roles' `counts`.
    pub gave_up: u64,
    /// Cached (shared-prefix) input tokens over all input tokens of LLM spans.
    pub shared_prefix_share: f64,
    /// Tool spans' `tool_wait_ms`.
    pub tool_latency_ms: Summary,
    /// Input + output tokens of each workflow.
    pub tokens_per_workflow: Summary,
    /// LLM calls per workflow (first attempts: retries are in `retry_rate`).
    pub llm_hops_per_workflow: Summary,
    /// Per LLM span.
    pub input_tokens: Summary,
    pub output_tokens: Summary,
    /// Sorted raw values for fitting.
    pub input_sorted: Vec<f64>,
    pub output_sorted: Vec<f64>,
    pub fanout_sorted: Vec<f64>,
    pub tool_latency_sorted_ms: Vec<f64>,
    pub llm_hops_sorted: Vec<f64>,
    /// The class's roles (LLM and tool spans by kind and role), in order of their mean
    /// first start within a workflow.
    pub roles: Vec<RoleStats>,
}

/// One role of a workflow class (spans of one kind and `agent_role`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoleStats {
    pub kind: SpanKind,
    pub role: String,
    /// The most common `model_tier` (for tools: the tool's name).
    pub tier: String,
    /// Calls of the role in each workflow of the class that did not give up (first
    /// attempts; 0 where it has none).
    pub counts: Vec<f64>,
    /// LLM spans: tokens, sorted.
    pub input_sorted: Vec<f64>,
    pub output_sorted: Vec<f64>,
    /// Tool spans: `tool_wait_ms`, sorted.
    pub latency_sorted_ms: Vec<f64>,
    /// Mean, over workflows with the role, of its first span's start after the
    /// workflow's arrival (ms): the order of the roles.
    pub mean_first_start_ms: f64,
    /// Roles of the spans' parents (agent spans looked through; "" for a root).
    pub parent_roles: std::collections::BTreeSet<String>,
    /// Spans of the role (retries included) and those that ended in an error.
    pub spans: u64,
    pub errors: u64,
    /// The highest `attempt` of its spans (1: never retried).
    pub max_attempt: u32,
}

/// Statistics of a span trace, by workflow class (`default` for workflows without one).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpanStats {
    pub classes: BTreeMap<String, ClassStats>,
    pub all: ClassStats,
    pub report: ReadReport,
}

#[derive(Default)]
struct ClassAcc {
    workflows: u64,
    spans: u64,
    llm: u64,
    tool: u64,
    retries: u64,
    errors: u64,
    timeouts: u64,
    lost: u64,
    cached: u64,
    llm_input: u64,
    arrivals: Vec<u64>,
    fanout: Vec<f64>,
    growth: Vec<f64>,
    tool_ms: Vec<f64>,
    tokens: Vec<f64>,
    hops: Vec<f64>,
    input: Vec<f64>,
    output: Vec<f64>,
    roles: BTreeMap<(SpanKind, String), RoleAcc>,
    /// Workflows that gave up ([`gave_up`]), and the others (those whose roles' counts
    /// and first starts are kept).
    gave_up: u64,
    shaped: u64,
}

/// Whether a workflow gave up: one of its LLM or tool calls did not return (`status`
/// error, timeout or lost) and was not tried again (no span of the same kind, role and
/// parent with the next `attempt`). Its later steps never ran, so its roles say nothing
/// about the workflow's shape.
pub fn gave_up(wf: &Workflow) -> bool {
    let tried_again: std::collections::BTreeSet<(SpanKind, &str, Option<&str>, u32)> = wf
        .spans
        .iter()
        .filter(|s| s.attempt > 1)
        .map(|s| {
            (
                s.kind,
                s.agent_role.as_str(),
                s.parent_span_id.as_deref(),
                s.attempt,
            )
        })
        .collect();
    wf.spans.iter().any(|s| {
        s.kind != SpanKind::Agent
            && s.status != SpanStatus::Ok
            && !tried_again.contains(&(
                s.kind,
                s.agent_role.as_str(),
                s.parent_span_id.as_deref(),
                s.attempt.saturating_add(1),
            ))
    })
}

#[derive(Default)]
struct RoleAcc {
    tiers: BTreeMap<String, u64>,
    counts: Vec<f64>,
    input: Vec<f64>,
    output: Vec<f64>,
    latency: Vec<f64>,
    first_start_sum_ms: f64,
    with_role: u64,
    parent_roles: std::collections::BTreeSet<String>,
    spans: u64,
    errors: u64,
    max_attempt: u32,
}

impl ClassAcc {
    fn add(&mut self, wf: &Workflow) {
        self.workflows += 1;
        self.arrivals.push(wf.arrival_ns);
        let mut tokens = 0u64;
        let mut hops = 0u64;
        for (i, s) in wf.spans.iter().enumerate() {
            self.spans += 1;
            tokens += s.input_tokens + s.output_tokens;
            // A retry is another try of a child, not one more branch.
            let children = wf.children[i]
                .iter()
                .filter(|&&c| wf.spans[c].attempt <= 1)
                .count();
            if children > 0 {
                self.fanout.push(children as f64);
            }
            match s.kind {
                SpanKind::Llm => {
                    self.llm += 1;
                    // Calls, not tries: a retry is in the retry rate.
                    hops += u64::from(s.attempt <= 1);
                    self.cached += s.cached_tokens;
                    self.llm_input += s.input_tokens;
                    self.input.push(s.input_tokens as f64);
                    self.output.push(s.output_tokens as f64);
                    let mut a = wf.parent[i];
                    while let Some(p) = a {
                        if wf.spans[p].kind == SpanKind::Llm {
                            self.growth
                                .push(s.input_tokens as f64 - wf.spans[p].input_tokens as f64);
                            break;
                        }
                        a = wf.parent[p];
                    }
                }
                SpanKind::Tool => {
                    self.tool += 1;
                    self.tool_ms.push(s.tool_wait_ms);
                }
                SpanKind::Agent => {}
            }
            if s.kind != SpanKind::Agent {
                if s.attempt > 1 {
                    self.retries += 1;
                }
                match s.status {
                    SpanStatus::Ok => {}
                    SpanStatus::Error => self.errors += 1,
                    SpanStatus::Timeout => self.timeouts += 1,
                    SpanStatus::Lost => self.lost += 1,
                }
            }
        }
        self.tokens.push(tokens as f64);
        self.hops.push(hops as f64);
        let shaped = !gave_up(wf);
        if !shaped {
            self.gave_up += 1;
        }
        // Per role: spans in this workflow, first start, tokens, latencies, parents
        // (counts and first starts of the workflows that did not give up).
        let mut here: BTreeMap<(SpanKind, String), (u64, u64)> = BTreeMap::new();
        for (i, s) in wf.spans.iter().enumerate() {
            if s.kind == SpanKind::Agent {
                continue;
            }
            let key = (s.kind, s.agent_role.clone());
            let e = here.entry(key.clone()).or_insert((0, u64::MAX));
            e.0 += u64::from(s.attempt <= 1);
            e.1 = e.1.min(s.start_ns);
            let before = self.shaped;
            let r = self.roles.entry(key).or_insert_with(|| RoleAcc {
                counts: vec![0.0; before as usize],
                ..RoleAcc::default()
            });
            *r.tiers.entry(s.model_tier.clone()).or_default() += 1;
            r.spans += 1;
            r.errors += u64::from(s.status == SpanStatus::Error);
            r.max_attempt = r.max_attempt.max(s.attempt);
            match s.kind {
                SpanKind::Llm => {
                    r.input.push(s.input_tokens as f64);
                    r.output.push(s.output_tokens as f64);
                }
                _ => r.latency.push(s.tool_wait_ms),
            }
            let mut p = wf.parent[i];
            while let Some(j) = p {
                if wf.spans[j].kind != SpanKind::Agent {
                    break;
                }
                p = wf.parent[j];
            }
            r.parent_roles
                .insert(p.map_or(String::new(), |j| wf.spans[j].agent_role.clone()));
        }
        if !shaped {
            return;
        }
        self.shaped += 1;
        let start = wf.spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
        for (key, r) in self.roles.iter_mut() {
            match here.get(key) {
                Some(&(n, first)) => {
                    r.counts.push(n as f64);
                    r.first_start_sum_ms += first.saturating_sub(start) as f64 / 1e6;
                    r.with_role += 1;
                }
                None => r.counts.push(0.0),
            }
        }
    }

    fn finish(self, class: String, step_ns: u64) -> ClassStats {
        let sort = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v
        };
        let input = sort(self.input);
        let output = sort(self.output);
        let fanout = sort(self.fanout);
        let tool = sort(self.tool_ms);
        let hops = sort(self.hops);
        let work = self.llm + self.tool;
        let mut roles: Vec<RoleStats> = self
            .roles
            .into_iter()
            .map(|((kind, role), r)| RoleStats {
                kind,
                tier: r
                    .tiers
                    .iter()
                    .max_by_key(|(name, n)| (**n, std::cmp::Reverse((*name).clone())))
                    .map(|(name, _)| name.clone())
                    .unwrap_or_default(),
                role,
                counts: r.counts,
                input_sorted: sort(r.input),
                output_sorted: sort(r.output),
                latency_sorted_ms: sort(r.latency),
                mean_first_start_ms: r.first_start_sum_ms / r.with_role.max(1) as f64,
                parent_roles: r.parent_roles,
                spans: r.spans,
                errors: r.errors,
                max_attempt: r.max_attempt,
            })
            .collect();
        roles.sort_by(|a, b| {
            a.mean_first_start_ms
                .total_cmp(&b.mean_first_start_ms)
                .then_with(|| a.role.cmp(&b.role))
                .then_with(|| a.kind.cmp(&b.kind))
        });
        ClassStats {
            class,
            workflows: self.workflows,
            spans: self.spans,
            llm_spans: self.llm,
            tool_spans: self.tool,
            arrivals: ArrivalStats::from_arrivals(self.arrivals, step_ns),
            fanout: Summary::from_sorted(&fanout),
            context_growth: Summary::of(self.growth),
            retry_rate: if work > 0 {
                self.retries as f64 / work as f64
            } else {
                0.0
            },
            gave_up: self.gave_up,
            error_spans: self.errors,
            timeout_spans: self.timeouts,
            lost_spans: self.lost,
            shared_prefix_share: if self.llm_input > 0 {
                self.cached as f64 / self.llm_input as f64
            } else {
                0.0
            },
            tool_latency_ms: Summary::from_sorted(&tool),
            tokens_per_workflow: Summary::of(self.tokens),
            llm_hops_per_workflow: Summary::from_sorted(&hops),
            input_tokens: Summary::from_sorted(&input),
            output_tokens: Summary::from_sorted(&output),
            input_sorted: input,
            output_sorted: output,
            fanout_sorted: fanout,
            tool_latency_sorted_ms: tool,
            llm_hops_sorted: hops,
            roles,
        }
    }
}

/// The class name statistics file a workflow under.
pub fn class_of(wf: &Workflow) -> String {
    wf.class.clone().unwrap_or_else(|| "default".to_string())
}

/// Reads a workflow stream to the end and summarises it by class.
pub fn span_stats(
    workflows: impl IntoIterator<Item = Result<Workflow, TraceError>>,
    step_ns: u64,
) -> Result<SpanStats, TraceError> {
    let mut by_class: BTreeMap<String, ClassAcc> = BTreeMap::new();
    let mut all = ClassAcc::default();
    for wf in workflows {
        let wf = wf?;
        all.add(&wf);
        by_class.entry(class_of(&wf)).or_default().add(&wf);
    }
    Ok(SpanStats {
        classes: by_class
            .into_iter()
            .map(|(k, a)| (k.clone(), a.finish(k, step_ns)))
            .collect(),
        all: all.finish("all".into(), step_ns),
        report: ReadReport::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.25), 2.0);
        assert_eq!(quantile(&v, 0.1), 1.4);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn arrival_rates_by_step() {
        // 0..10 s one per second, step 5 s: two full-ish steps.
        let t: Vec<u64> = (0..10).map(|s| s * 1_000_000_000).collect();
        let a = ArrivalStats::from_arrivals(t, 5_000_000_000);
        assert_eq!(a.rows, 10);
        assert!((a.mean_rate_per_s - 1.0).abs() < 1e-12);
        assert_eq!(a.rate_by_step.len(), 2);
        assert!((a.rate_by_step[0] - 1.0).abs() < 1e-12);
        assert!((a.rate_by_step[1] - 5.0 / 4.0).abs() < 1e-12);
        assert!(a.interarrival_cv.abs() < 1e-12);
    }

    #[test]
    fn prefix_trie_counts_chained_hits() {
        let mut p = PrefixCounter::default();
        assert_eq!(p.add(&[1, 2, 3]), 0);
        assert_eq!(p.add(&[1, 2, 4]), 2);
        assert_eq!(p.add(&[5, 2, 3]), 0);
        assert_eq!(p.add(&[1, 2, 3, 9]), 3);
        assert_eq!(p.stats.blocks, 13);
        assert_eq!(p.stats.reused_blocks, 5);
    }
}

//! Recorded agent workflows (span logs, OTLP GenAI exports) turned into graphs the
//! simulator replays: each workflow keeps its recorded structure and token counts,
//! and the simulated factory decides the timing.
//!
//! How spans become steps (docs/traces.md, "Replaying span traces"):
//! - an `llm` span is a model call with its recorded input and output tokens (cached
//!   tokens become the role's shared prefix), on the tier or pool its `model_tier`
//!   names (after the trace's rules), else on the pool or tier of the class's first
//!   model node; on a queueing pool its service time is that of the class's node with
//!   the same role, else the pool's, else (a pool with no time model) the recorded
//!   `prefill_ms + decode_ms`; the role's node also gives its timeout;
//! - a `tool` span calls the scenario's tool of that name (`model_tier` or
//!   `agent_role`), with the tool's own latency, failures and bulkhead; a tool the
//!   scenario does not define becomes an unlimited, failure-free tool that waits each
//!   call's recorded `tool_wait_ms`;
//! - an `agent` span does no work; its children start when it starts, and among the
//!   children of one agent span (and among root spans) a span waits for every sibling
//!   that had ended before it started (the recorded order, sequential or parallel);
//! - the child of an `llm` or `tool` span starts when it finishes; a span with `links`
//!   (a join) also waits for every span it links to;
//! - a retry span (`attempt` > 1) is folded into its first attempt (the factory decides
//!   retries); its children wait for the first attempt.

use sim_core::scenario::{Scenario, Tool};
use sim_core::workflow::{RecordedStep, RecordedWork};
use sim_core::{SimDuration, dist::Sampler};
use std::collections::BTreeMap;
use traces::{SpanKind, SpanRecord};

/// What the conversion found worth reporting, summed over a trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayCounts {
    pub workflows: u64,
    pub spans: u64,
    /// Model spans whose tier named no tier or pool of the scenario, by name.
    pub unmatched_tiers: BTreeMap<String, u64>,
    /// Tools the scenario does not define, added as recorded-wait tools, by name.
    pub recorded_tools: BTreeMap<String, u64>,
    /// Retry spans folded into their first attempt.
    pub retries_folded: u64,
    /// Workflows that gave up (`traces::stats::gave_up`: a call that did not return
    /// and was not tried again), replayed with the steps they recorded only.
    pub gave_up: u64,
}

/// Resolves span names against a scenario, adding recorded-wait tools as needed.
pub struct SpanResolver<'a> {
    scenario: &'a Scenario,
    /// Where model spans with an unknown tier go: the class's first model node's.
    default_pool: Option<usize>,
    default_tier: Option<usize>,
    /// Tools added for this trace (indices continue after the scenario's own).
    pub extra_tools: Vec<Tool>,
    /// How many of `scenario.tools` are the scenario's own (a run's scenario already
    /// holds the tools loading added: see [`SpanResolver::for_run`]).
    own_tools: usize,
    pub counts: ReplayCounts,
}

impl<'a> SpanResolver<'a> {
    /// `class` is the class the trace is declared on (its first model node gives the
    /// default pool); `extra_tools` are tools earlier traces already added.
    pub fn new(scenario: &'a Scenario, class: usize, extra_tools: Vec<Tool>) -> Self {
        let entry = scenario.classes[class]
            .graph
            .nodes
            .iter()
            .find(|n| n.pool.is_some() || n.tier.is_some());
        SpanResolver {
            scenario,
            default_pool: entry.and_then(|n| n.pool),
            default_tier: entry.and_then(|n| n.tier),
            extra_tools,
            own_tools: scenario.tools.len(),
            counts: ReplayCounts::default(),
        }
    }

    /// The scenario spans are resolved against.
    pub fn scenario(&self) -> &'a Scenario {
        self.scenario
    }

    /// A resolver for a run of a scenario whose last `added.len()` tools are the
    /// recorded-wait tools loading added (`added`): spans resolve exactly as they did
    /// when the trace was loaded.
    pub fn for_run(scenario: &'a Scenario, class: usize, added: &[Tool]) -> Self {
        let mut r = SpanResolver::new(scenario, class, added.to_vec());
        r.own_tools = scenario.tools.len() - added.len();
        r
    }

    fn model_target(&mut self, name: &str) -> (Option<usize>, Option<usize>) {
        let sc = self.scenario;
        if let Some(t) = sc.tiers.iter().position(|t| t.name == name) {
            return (None, Some(t));
        }
        if let Some(p) = sc.pools.iter().position(|p| p.name == name) {
            return (Some(p), None);
        }
        *self
            .counts
            .unmatched_tiers
            .entry(if name.is_empty() {
                "(none)".into()
            } else {
                name.to_string()
            })
            .or_default() += 1;
        match (self.default_pool, self.default_tier) {
            (None, None) => (Some(0), None),
            other => other,
        }
    }

    fn tool_target(&mut self, s: &SpanRecord) -> RecordedWork {
        let sc = self.scenario;
        for name in [&s.model_tier, &s.agent_role] {
            if let Some(t) = sc.tools[..self.own_tools]
                .iter()
                .position(|t| &t.name == name)
            {
                return RecordedWork::Tool {
                    tool: t,
                    wait: None,
                };
            }
        }
        let name = [&s.model_tier, &s.agent_role]
            .into_iter()
            .find(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| "recorded-tool".into());
        *self.counts.recorded_tools.entry(name.clone()).or_default() += 1;
        let idx = match self.extra_tools.iter().position(|t| t.name == name) {
            Some(i) => i,
            None => {
                self.extra_tools.push(Tool {
                    name: name.clone(),
                    latency: Sampler::Constant(0.0),
                    failure_probability: 0.0,
                    retries: 0,
                    retry_backoff: None,
                    payload_tokens: None,
                    usd_per_call: 0.0,
                    concurrency: None,
                    spikes: Vec::new(),
                    on_timeout: sim_core::scenario::OnTimeout::Continue,
                });
                self.extra_tools.len() - 1
            }
        };
        RecordedWork::Tool {
            tool: self.own_tools + idx,
            wait: Some(SimDuration::from_secs_f64(s.tool_wait_ms.max(0.0) / 1e3)),
        }
    }

    /// The class node of `role` and `kind`, if the class has one.
    fn role_node(
        &self,
        class: usize,
        role: &str,
        kind: sim_core::workflow::NodeKind,
    ) -> Option<&'a sim_core::workflow::Node> {
        let sc: &'a Scenario = self.scenario;
        sc.classes
            .get(class)?
            .graph
            .nodes
            .iter()
            .find(|n| n.role == role && n.kind == kind)
    }

    /// Service time and timeout of a step: its role's node in `class`; for a model call
    /// on a queueing pool with no time model of its own, the recorded duration.
    fn timing(
        &self,
        class: usize,
        s: &SpanRecord,
        work: &RecordedWork,
    ) -> (Option<Sampler>, Option<SimDuration>) {
        use sim_core::workflow::NodeKind;
        let kind = match work {
            RecordedWork::Model { .. } => NodeKind::Llm,
            RecordedWork::Tool { .. } => NodeKind::Tool,
            RecordedWork::Pass => return (None, None),
        };
        let node = self.role_node(class, &s.agent_role, kind);
        let timeout = node.and_then(|n| n.timeout);
        if let Some(service) = node.and_then(|n| n.service.clone()) {
            return (Some(service), timeout);
        }
        if let RecordedWork::Model { pool, tier, .. } = work {
            let sc = self.scenario;
            let pools: Vec<usize> = match (pool, tier) {
                (_, Some(t)) => sc.tiers[*t].pools.clone(),
                (Some(p), None) => vec![*p],
                (None, None) => Vec::new(),
            };
            let untimed = pools.iter().any(|&p| {
                let p = &sc.pools[p];
                p.service.is_none()
                    && p.gpu.is_none()
                    && p.api.is_none()
                    && p.token_time(1000, 1) == SimDuration::ZERO
            });
            if untimed {
                let ms = (s.prefill_ms + s.decode_ms).max(0.0);
                return (Some(Sampler::Constant(ms / 1e3)), timeout);
            }
        }
        (None, timeout)
    }

    /// The steps of one recorded workflow of class `class`, parents before children.
    pub fn steps(&mut self, wf: &traces::Workflow, class: usize) -> Vec<RecordedStep> {
        self.counts.workflows += 1;
        self.counts.gave_up += u64::from(traces::stats::gave_up(wf));
        let n = wf.spans.len();
        let order = wf.topo_order();
        let end_ns = |s: &SpanRecord| {
            let ms = s.prefill_ms + s.decode_ms + s.tool_wait_ms;
            s.start_ns
                .saturating_add((ms.max(0.0) * 1e6).min(u64::MAX as f64 / 2.0) as u64)
        };
        // A retry folds into the first attempt it repeats: same parent, role and kind,
        // started before it; of several, the one that ended last before the retry
        // started (the failed call it follows), else the latest started.
        let mut alias: Vec<usize> = (0..n).collect();
        for &i in &order {
            let s = &wf.spans[i];
            if s.attempt <= 1 {
                continue;
            }
            let first = (0..n)
                .filter(|&j| {
                    j != i
                        && wf.parent[j] == wf.parent[i]
                        && wf.spans[j].attempt <= 1
                        && wf.spans[j].agent_role == s.agent_role
                        && wf.spans[j].kind == s.kind
                        && wf.spans[j].start_ns <= s.start_ns
                })
                .max_by_key(|&j| {
                    let e = end_ns(&wf.spans[j]);
                    (
                        e <= s.start_ns,
                        if e <= s.start_ns { e } else { 0 },
                        wf.spans[j].start_ns,
                        j,
                    )
                });
            if let Some(first) = first {
                alias[i] = first;
                self.counts.retries_folded += 1;
            }
        }
        let mut step_of: Vec<Option<usize>> = vec![None; n];
        let mut steps: Vec<RecordedStep> = Vec::with_capacity(n);
        for &i in &order {
            if alias[i] != i {
                continue;
            }
            let s = &wf.spans[i];
            self.counts.spans += 1;
            let work = match s.kind {
                SpanKind::Llm => {
                    let (pool, tier) = self.model_target(&s.model_tier);
                    RecordedWork::Model {
                        pool,
                        tier,
                        input_tokens: s.input_tokens,
                        output_tokens: s.output_tokens,
                        shared_prefix_tokens: s.cached_tokens.min(s.input_tokens) as u32,
                        block_hashes: None,
                        hash_block_tokens: 0,
                    }
                }
                SpanKind::Tool => self.tool_target(s),
                SpanKind::Agent => RecordedWork::Pass,
            };
            let parent = wf.parent[i].map(|p| alias[p]);
            let mut after: Vec<usize> = parent.and_then(|p| step_of[p]).into_iter().collect();
            // A join also waits for every span it links to (their first attempts).
            after.extend(wf.links[i].iter().filter_map(|&l| step_of[alias[l]]));
            let parent_is_agent = parent.is_none_or(|p| wf.spans[p].kind == SpanKind::Agent);
            if parent_is_agent {
                // Siblings under an agent span (or roots) keep their recorded order.
                let siblings: &[usize] = match parent {
                    Some(p) => &wf.children[p],
                    None => &wf.roots,
                };
                let before = |j: usize| {
                    j != i
                        && alias[j] == j
                        && end_ns(&wf.spans[j]) <= s.start_ns
                        && wf.spans[j].start_ns < s.start_ns
                        && step_of[j].is_some()
                };
                // Only the latest of them: a sibling that ended before another of them
                // started is already waited for through that one (transitive reduction,
                // so a long sequential chain keeps one edge per step).
                let latest_start = siblings
                    .iter()
                    .filter(|&&j| before(j))
                    .map(|&j| wf.spans[j].start_ns)
                    .max();
                for &j in siblings {
                    if before(j)
                        && latest_start.is_some_and(|m| {
                            // (a zero-length span starting at `m` is waited for by none)
                            end_ns(&wf.spans[j]) > m || wf.spans[j].start_ns == m
                        })
                        && let Some(sj) = step_of[j]
                    {
                        after.push(sj);
                    }
                }
            }
            let (service, timeout) = self.timing(class, s, &work);
            step_of[i] = Some(steps.len());
            steps.push(RecordedStep {
                service,
                timeout,
                not_before: None,
                id: s.span_id.clone(),
                role: if s.agent_role.is_empty() {
                    s.kind.name().to_string()
                } else {
                    s.agent_role.clone()
                },
                work,
                after,
            });
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, kind: SpanKind, start_ms: u64, ms: f64) -> SpanRecord {
        SpanRecord {
            workflow_id: "w".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            kind,
            agent_role: id.trim_end_matches(char::is_numeric).into(),
            model_tier: "gpu".into(),
            input_tokens: 100,
            output_tokens: 10,
            decode_ms: if kind == SpanKind::Llm { ms } else { 0.0 },
            tool_wait_ms: if kind == SpanKind::Tool { ms } else { 0.0 },
            start_ns: start_ms * 1_000_000,
            attempt: 1,
            ..SpanRecord::default()
        }
    }

    #[test]
    fn agent_children_keep_their_recorded_order_and_retries_fold() {
        let loaded = crate::parse_scenario(
            "inline.toml",
            r#"
[simulation]
horizon = "1m"
[pools.gpu]
servers = 1
service = { dist = "constant", value = "1s" }
[tools.search]
latency = { dist = "constant", value = "1s" }
[classes.a]
arrival = { process = "poisson", rate = 1 }
hops = [{ pool = "gpu" }]
"#,
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // agent(0ms) -> plan [0,100] -> two parallel searches [100,300] and [100,250]
        // (the second retried at 260) -> write [400, 500] after both; and a child of
        // the retry, which must wait for the (folded) first attempt.
        let mut retry = span("search1", Some("agent"), SpanKind::Tool, 260, 30.0);
        retry.attempt = 2;
        retry.span_id = "search1b".into();
        let mut fetch = span("fetch", Some("search1b"), SpanKind::Tool, 300, 5.0);
        fetch.model_tier = "web".into();
        let spans = vec![
            span("agent", None, SpanKind::Agent, 0, 0.0),
            span("plan", Some("agent"), SpanKind::Llm, 0, 100.0),
            span("search0", Some("agent"), SpanKind::Tool, 100, 200.0),
            span("search1", Some("agent"), SpanKind::Tool, 100, 150.0),
            retry,
            fetch,
            span("write", Some("agent"), SpanKind::Llm, 400, 100.0),
        ];
        let wf = traces::Workflow::build("w".into(), spans, 0);
        let mut r = SpanResolver::new(&loaded.scenario, 0, Vec::new());
        let steps = r.steps(&wf, 0);
        let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            ["agent", "plan", "search0", "search1", "write", "fetch"]
        );
        let after = |id: &str| {
            let s = steps.iter().find(|s| s.id == id).unwrap();
            let mut v: Vec<&str> = s.after.iter().map(|&i| steps[i].id.as_str()).collect();
            v.sort();
            v
        };
        assert_eq!(after("agent"), Vec::<&str>::new());
        assert_eq!(after("plan"), ["agent"]);
        assert_eq!(after("search0"), ["agent", "plan"]);
        assert_eq!(after("search1"), ["agent", "plan"]);
        // plan ended before both searches started: waited for through them.
        assert_eq!(after("write"), ["agent", "search0", "search1"]);
        assert_eq!(after("fetch"), ["search1"]);
        assert_eq!(steps[0].work, RecordedWork::Pass);
        // `search` is the scenario's tool; `web` is not: a recorded-wait tool.
        assert_eq!(
            steps[2].work,
            RecordedWork::Tool {
                tool: 0,
                wait: None
            }
        );
        assert_eq!(
            steps[5].work,
            RecordedWork::Tool {
                tool: 1,
                wait: Some(SimDuration::from_millis(5))
            }
        );
        assert_eq!(r.extra_tools.len(), 1);
        assert_eq!(r.counts.retries_folded, 1);
        assert_eq!(r.counts.spans, 6);
        assert!(r.counts.unmatched_tiers.is_empty());
        assert_eq!(r.counts.gave_up, 0);
        // Recorded as failed, then retried: it did not give up; a failed retry that
        // was not tried again did (and is counted, the steps replayed as recorded).
        let mut spans = wf.spans.clone();
        spans[3].status = traces::SpanStatus::Error;
        let _ = r.steps(&traces::Workflow::build("w2".into(), spans.clone(), 0), 0);
        assert_eq!(r.counts.gave_up, 0);
        spans[4].status = traces::SpanStatus::Timeout;
        let again = r.steps(&traces::Workflow::build("w3".into(), spans, 0), 0);
        assert_eq!(r.counts.gave_up, 1);
        assert_eq!(again.len(), steps.len());
    }

    #[test]
    fn a_join_waits_for_every_span_it_links_to() {
        let loaded = crate::parse_scenario(
            "inline.toml",
            r#"
[simulation]
horizon = "1m"
[pools.gpu]
servers = 1
service = { dist = "constant", value = "1s" }
[classes.a]
arrival = { process = "poisson", rate = 1 }
hops = [{ pool = "gpu" }]
"#,
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // plan -> three parallel calls r0, r1, r2 -> join (parent r2, links r0 and r1).
        let mut join = span("join", Some("r2"), SpanKind::Llm, 500, 10.0);
        join.links = vec!["r0".into(), "r1".into()];
        let spans = vec![
            span("plan", None, SpanKind::Llm, 0, 100.0),
            join,
            span("r0", Some("plan"), SpanKind::Llm, 100, 300.0),
            span("r1", Some("plan"), SpanKind::Llm, 100, 200.0),
            span("r2", Some("plan"), SpanKind::Llm, 100, 400.0),
        ];
        let wf = traces::Workflow::build("w".into(), spans, 0);
        let mut r = SpanResolver::new(&loaded.scenario, 0, Vec::new());
        let steps = r.steps(&wf, 0);
        let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["plan", "r0", "r1", "r2", "join"]);
        let mut after: Vec<&str> = steps[4]
            .after
            .iter()
            .map(|&i| steps[i].id.as_str())
            .collect();
        after.sort();
        assert_eq!(after, ["r0", "r1", "r2"]);
        // The replayed graph: the join node has all three as parents.
        let g = sim_core::workflow::WorkflowGraph::from_recorded("a", &steps);
        assert_eq!(g.nodes[5].parents, vec![2, 3, 4]);
    }
}

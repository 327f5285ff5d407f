//! Request traces streamed into a run: the rows of a flat request trace (Azure, simple
//! CSV, Mooncake) are read from the file as the simulation advances, one pass per run,
//! so a trace of tens of millions of rows replays holding only the rows in flight
//! (docs/traces.md, "Memory of a replay").
//!
//! Loading reads each trace once without keeping its rows ([`ClassScan`]): it checks
//! every row (a bad row stops the load with its file and line, as before), routes it by
//! the rules, and notes per class whether the rows arrive in time order and carry
//! session ids. A class whose rows are in order and sessionless gets a [`TraceRows`]
//! source; the others are read again and held in memory (sorted, grouped into
//! sessions). Both give the simulator the same rows in the same order, so results are
//! byte-identical (test `story_tests::streamed_and_loaded_replays_are_byte_identical`).

use crate::replay::SpanResolver;
use sim_core::scenario::{RecordedRequest, RecordedSource, Tool};
use sim_core::workflow::WorkflowGraph;
use sim_core::{Scenario, SimTime};
use std::collections::BTreeMap;
use std::path::PathBuf;
use traces::{ReadOptions, ReplayOptions, RequestRecord, RuleSet, Workflow};

/// Tokens per Mooncake prefix-hash block.
pub const MOONCAKE_BLOCK_TOKENS: u32 = 512;

/// A trace that says nothing about `stream` is streamed when holding its rows (over
/// all the classes it feeds) would take more than this (each run then reads the file instead of memory, about
/// 2.7x the run time of a trivial one-hop replay: docs/traces.md).
pub const STREAM_ABOVE_HELD_BYTES: u64 = 256 << 20;

/// What a request row takes held: its `RecordedRequest` and prefix hashes.
pub fn held_request_bytes(r: &RequestRecord) -> u64 {
    48 + r
        .block_hashes
        .as_ref()
        .map_or(0, |h| 16 + 8 * h.len() as u64)
}

/// What a recorded workflow takes held: its row and a graph node per span and one for
/// the entry (measured about 1,400 bytes each, docs/traces.md).
pub fn held_workflow_bytes(wf: &Workflow) -> u64 {
    48 + 1_400 * (wf.spans.len() as u64 + 1)
}

/// `BASE[tenant=T]`, `BASE[lane=L]`, `BASE[tenant=T,lane=L]`: the class made for trace
/// rows given a tenant or lane (by a rule, or kept from the trace by `apply_recorded`).
pub fn derived_class_name(base: &str, tenant: Option<&str>, lane: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(t) = tenant {
        parts.push(format!("tenant={t}"));
    }
    if let Some(l) = lane {
        parts.push(format!("lane={l}"));
    }
    format!("{base}[{}]", parts.join(","))
}

/// The tenant and lane a rule gives its rows, and the class they would otherwise
/// reach (the rule's `class` now names the class derived for them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleLabels {
    pub base: String,
    pub tenant: Option<String>,
    pub lane: Option<String>,
}

/// A span trace's `apply_recorded`: a workflow keeps its recorded tenant (the
/// workflow's) and lane (its first root span's) where its rule sets none, by going to
/// the class derived for them, as a rule's tenant and lane send rows. A recorded value
/// equal to the class's own makes no new class.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordedRouting {
    pub tenant: bool,
    pub lane: bool,
    /// The class the trace is declared on.
    pub trace_class: String,
    /// Per rule (by index): its labels, for rules that set a tenant or lane.
    pub rules: Vec<Option<RuleLabels>>,
    /// Per class that takes trace rows: its own tenant and lane.
    pub own: BTreeMap<String, (String, String)>,
}

impl RecordedRouting {
    /// Whether any recorded label is kept.
    pub fn is_on(&self) -> bool {
        self.tenant || self.lane
    }

    /// The class `wf` goes to and the tenant and lane it is given, when its recorded
    /// labels change where the rules (rule `rule`, if one matched) sent it (`routed`).
    pub fn labels_for(
        &self,
        wf: &Workflow,
        rule: Option<usize>,
        routed: &str,
    ) -> Option<RuleLabels> {
        if !self.is_on() {
            return None;
        }
        let (base, rt, rl) = match rule
            .and_then(|i| self.rules.get(i))
            .and_then(Option::as_ref)
        {
            Some(r) => (r.base.as_str(), r.tenant.as_deref(), r.lane.as_deref()),
            None => (routed, None, None),
        };
        let (own_t, own_l) = self.own.get(base)?;
        let tenant = rt.or(self
            .tenant
            .then_some(wf.tenant.as_deref())
            .flatten()
            .filter(|t| t != own_t));
        let lane = rl.or(self
            .lane
            .then(|| wf.recorded_lane())
            .flatten()
            .filter(|l| l != own_l));
        if (tenant, lane) == (rt, rl) {
            return None;
        }
        Some(RuleLabels {
            base: base.to_string(),
            tenant: tenant.map(str::to_string),
            lane: lane.map(str::to_string),
        })
    }

    /// `routed` (a class index among `takers`), or the class derived for the recorded
    /// labels `wf` keeps (loading made one for every combination the trace holds),
    /// which `wf` and its spans are then labelled with.
    pub fn keep(
        &self,
        wf: &mut Workflow,
        rule: Option<usize>,
        routed: usize,
        takers: &BTreeMap<String, usize>,
    ) -> usize {
        if !self.is_on() {
            return routed;
        }
        let Some(name) = takers.iter().find(|(_, c)| **c == routed).map(|(n, _)| n) else {
            return routed;
        };
        let Some(l) = self.labels_for(wf, rule, name) else {
            return routed;
        };
        let derived = derived_class_name(&l.base, l.tenant.as_deref(), l.lane.as_deref());
        let Some(&c) = takers.get(&derived) else {
            return routed;
        };
        wf.class = Some(derived);
        for s in &mut wf.spans {
            s.workflow_class.clone_from(&wf.class);
        }
        c
    }
}

/// One trace and where its rows go.
#[derive(Clone, Debug)]
pub struct Feed {
    /// A span trace (span log, OTLP): rows are recorded workflows.
    pub workflows: bool,
    pub path: PathBuf,
    pub read: ReadOptions,
    pub replay: ReplayOptions,
    pub rules: RuleSet,
    /// The class the trace is declared on (rows no rule sends elsewhere stay there).
    pub own: usize,
    /// Classes that take trace rows (the trace's own and the `routed` ones), by name.
    pub takers: BTreeMap<String, usize>,
    /// Span traces: the recorded labels kept (`apply_recorded`).
    pub recorded: RecordedRouting,
}

impl Feed {
    /// The class a row goes to. Loading has checked that every rule names a class that
    /// takes rows, so a name outside `takers` here came from no rule.
    pub fn target(&self, r: &RequestRecord) -> usize {
        self.rules
            .labels(r)
            .class
            .as_deref()
            .and_then(|n| self.takers.get(n).copied())
            .unwrap_or(self.own)
    }

    /// The class a recorded workflow goes to, its rules applied (to it and its spans).
    pub fn route_workflow(&self, wf: &mut Workflow) -> usize {
        let rule = self
            .recorded
            .is_on()
            .then(|| self.rules.labels(&*wf).rule)
            .flatten();
        self.rules.apply_to_workflow(wf);
        let routed = wf
            .class
            .as_deref()
            .and_then(|n| self.takers.get(n).copied())
            .unwrap_or(self.own);
        self.recorded.keep(wf, rule, routed, &self.takers)
    }

    /// A new pass over the rows bound for `class`, as the simulator takes them;
    /// recorded workflows resolved against `sc`, whose last tools are `added`.
    pub fn rows<'s>(
        &'s self,
        class: usize,
        sc: &'s Scenario,
        added: &'s [Tool],
    ) -> Box<dyn Iterator<Item = Result<RecordedRequest, String>> + 's> {
        if self.workflows {
            let mut replay = match traces::replay_workflows(&self.path, &self.read, &self.replay) {
                Ok(r) => Some(r),
                Err(e) => return Box::new(std::iter::once(Err(e.to_string()))),
            };
            let mut resolver = SpanResolver::for_run(sc, self.own, added);
            return Box::new(std::iter::from_fn(move || {
                loop {
                    match replay.as_mut()?.next()? {
                        Ok(mut wf) => {
                            if self.route_workflow(&mut wf) == class {
                                return Some(Ok(recorded_workflow(&mut resolver, &wf, class)));
                            }
                        }
                        Err(e) => {
                            replay = None;
                            return Some(Err(e.to_string()));
                        }
                    }
                }
            }));
        }
        let mut replay = match traces::replay_requests(&self.path, &self.read, &self.replay) {
            Ok(r) => Some(r),
            Err(e) => return Box::new(std::iter::once(Err(e.to_string()))),
        };
        Box::new(std::iter::from_fn(move || {
            loop {
                match replay.as_mut()?.next()? {
                    Ok(r) if self.target(&r) == class => return Some(Ok(recorded(r))),
                    Ok(_) => {}
                    Err(e) => {
                        replay = None;
                        return Some(Err(e.to_string()));
                    }
                }
            }
        }))
    }
}

/// A recorded workflow as the simulator replays it: its own graph, built from its
/// spans by `resolver` for `class`.
pub fn recorded_workflow(
    resolver: &mut SpanResolver<'_>,
    wf: &Workflow,
    class: usize,
) -> RecordedRequest {
    let steps = resolver.steps(wf, class);
    let graph = WorkflowGraph::from_recorded(&resolver.scenario().classes[class].name, &steps);
    let (input, output) = wf.token_totals();
    RecordedRequest {
        at: SimTime(wf.arrival_ns),
        input_tokens: input.min(u32::MAX as u64) as u32,
        output_tokens: output.min(u32::MAX as u64) as u32,
        block_hashes: None,
        hash_block_tokens: MOONCAKE_BLOCK_TOKENS,
        graph: Some(std::sync::Arc::new(graph)),
    }
}

/// A trace row as the simulator replays it.
pub fn recorded(r: RequestRecord) -> RecordedRequest {
    RecordedRequest {
        at: SimTime(r.arrival_ns),
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        block_hashes: r.block_hashes.map(std::sync::Arc::from),
        hash_block_tokens: MOONCAKE_BLOCK_TOKENS,
        graph: None,
    }
}

/// Arrivals per time bucket, for the offered load `check` derives: exact at the
/// horizon the scenario was loaded with, interpolated within a bucket elsewhere.
#[derive(Clone, Debug)]
pub struct ArrivalCounts {
    horizon: SimTime,
    before_horizon: u64,
    width_ns: u64,
    buckets: Vec<u64>,
}

/// At most this many buckets: a longer trace doubles the bucket width.
const MAX_BUCKETS: usize = 1 << 16;

impl ArrivalCounts {
    pub fn new(horizon: SimTime) -> Self {
        ArrivalCounts {
            horizon,
            before_horizon: 0,
            width_ns: 1_000_000_000,
            buckets: Vec::new(),
        }
    }

    pub fn add(&mut self, at: SimTime) {
        if at < self.horizon {
            self.before_horizon += 1;
        }
        let mut i = (at.as_nanos() / self.width_ns) as usize;
        while i >= MAX_BUCKETS {
            // Merge pairs: twice as wide, half as many.
            let merged: Vec<u64> = self.buckets.chunks(2).map(|c| c.iter().sum()).collect();
            self.buckets = merged;
            self.width_ns *= 2;
            i = (at.as_nanos() / self.width_ns) as usize;
        }
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, 0);
        }
        self.buckets[i] += 1;
    }

    pub fn count_before(&self, t: SimTime) -> u64 {
        if t == self.horizon {
            return self.before_horizon;
        }
        let full = (t.as_nanos() / self.width_ns) as usize;
        let mut n: u64 = self.buckets.iter().take(full).sum();
        if let Some(&b) = self.buckets.get(full) {
            let frac = (t.as_nanos() % self.width_ns) as f64 / self.width_ns as f64;
            n += (b as f64 * frac).round() as u64;
        }
        n
    }
}

/// What loading learned about the rows one trace sends to one class.
#[derive(Clone, Debug)]
pub struct ClassScan {
    pub rows: u64,
    last: Option<SimTime>,
    /// A row arrived earlier than the one before it.
    pub unsorted: bool,
    /// A row carried a session id (sessions replay as workflows, held in memory).
    pub sessions: bool,
    /// What the rows would take held (estimated).
    pub held_bytes: u64,
    /// Flat request rows and their token sums (input, output).
    pub flat: (u64, f64, f64),
    pub counts: ArrivalCounts,
}

impl ClassScan {
    pub fn new(horizon: SimTime) -> Self {
        ClassScan {
            rows: 0,
            last: None,
            unsorted: false,
            sessions: false,
            held_bytes: 0,
            flat: (0, 0.0, 0.0),
            counts: ArrivalCounts::new(horizon),
        }
    }

    pub fn add(&mut self, at: SimTime, session: bool, held_bytes: u64) {
        self.rows += 1;
        self.held_bytes += held_bytes;
        self.unsorted |= self.last.is_some_and(|l| at < l);
        self.last = Some(at);
        self.sessions |= session;
        self.counts.add(at);
    }

    /// Counts a flat request row's tokens.
    pub fn add_tokens(&mut self, input: u32, output: u32) {
        self.flat.0 += 1;
        self.flat.1 += input as f64;
        self.flat.2 += output as f64;
    }

    /// Whether these rows can be streamed.
    pub fn streamable(&self) -> bool {
        !self.unsorted && !self.sessions
    }
}

/// The rows of one or more traces bound for one class, read afresh on every run.
/// Several traces are merged by arrival time, ties in the order the scenario declares
/// the traces (the order a stable sort of their concatenation gives).
#[derive(Debug)]
pub struct TraceRows {
    class: usize,
    feeds: Vec<Feed>,
    counts: Vec<ArrivalCounts>,
    /// The recorded-wait tools loading added to the scenario (its last tools).
    added_tools: Vec<Tool>,
    /// Flat rows and their token sums, over all feeds.
    flat: (u64, f64, f64),
}

impl TraceRows {
    pub fn new(class: usize, feeds: Vec<(Feed, ClassScan)>, added_tools: Vec<Tool>) -> Self {
        let mut flat = (0, 0.0, 0.0);
        for (_, sc) in &feeds {
            flat.0 += sc.flat.0;
            flat.1 += sc.flat.1;
            flat.2 += sc.flat.2;
        }
        let (feeds, counts) = feeds.into_iter().map(|(f, sc)| (f, sc.counts)).unzip();
        TraceRows {
            class,
            feeds,
            counts,
            added_tools,
            flat,
        }
    }
}

impl RecordedSource for TraceRows {
    fn rows<'s>(
        &'s self,
        sc: &'s Scenario,
    ) -> Box<dyn Iterator<Item = Result<RecordedRequest, String>> + 's> {
        let added = self.added_tools.as_slice();
        if let [feed] = self.feeds.as_slice() {
            return feed.rows(self.class, sc, added);
        }
        let mut passes: Vec<_> = self
            .feeds
            .iter()
            .map(|f| f.rows(self.class, sc, added))
            .collect();
        let mut heads: Vec<Option<RecordedRequest>> = Vec::with_capacity(passes.len());
        let mut failed: Option<String> = None;
        for p in passes.iter_mut() {
            match p.next() {
                Some(Ok(r)) => heads.push(Some(r)),
                Some(Err(e)) => {
                    failed.get_or_insert(e);
                    heads.push(None);
                }
                None => heads.push(None),
            }
        }
        Box::new(std::iter::from_fn(move || {
            if let Some(e) = failed.take() {
                heads.clear();
                return Some(Err(e));
            }
            // The earliest head; the first trace's on a tie.
            let (k, _) = heads
                .iter()
                .enumerate()
                .filter_map(|(k, h)| h.as_ref().map(|r| (k, r.at)))
                .min_by_key(|&(k, at)| (at, k))?;
            let row = heads[k].take();
            match passes[k].next() {
                Some(Ok(r)) => heads[k] = Some(r),
                Some(Err(e)) => failed = Some(e),
                None => {}
            }
            row.map(Ok)
        }))
    }

    fn count_before(&self, t: SimTime) -> u64 {
        self.counts.iter().map(|c| c.count_before(t)).sum()
    }

    fn replays_workflows(&self) -> bool {
        self.feeds.iter().any(|f| f.workflows)
    }

    fn mean_flat_tokens(&self) -> Option<(f64, f64)> {
        let (n, i, o) = self.flat;
        (n > 0).then(|| (i / n as f64, o / n as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_counts_are_exact_at_the_horizon_and_on_bucket_edges() {
        let mut c = ArrivalCounts::new(SimTime(2_500_000_000));
        for ns in [
            0,
            400_000_000,
            1_000_000_000,
            1_999_999_999,
            2_400_000_000,
            3_000_000_000,
        ] {
            c.add(SimTime(ns));
        }
        assert_eq!(c.count_before(SimTime(2_500_000_000)), 5);
        assert_eq!(c.count_before(SimTime(2_000_000_000)), 4);
        assert_eq!(c.count_before(SimTime(10_000_000_000)), 6);
        assert_eq!(c.count_before(SimTime(0)), 0);
        // A trace longer than MAX_BUCKETS seconds doubles the width, keeping every row.
        let mut long = ArrivalCounts::new(SimTime(1));
        for s in 0..200_000u64 {
            long.add(SimTime(s * 1_000_000_000));
        }
        assert!(long.buckets.len() <= MAX_BUCKETS);
        assert_eq!(long.count_before(SimTime(u64::MAX / 2)), 200_000);
        assert_eq!(long.count_before(SimTime(100_000 * 1_000_000_000)), 100_000);
    }
}

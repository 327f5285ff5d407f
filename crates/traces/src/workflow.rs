//! Grouping spans into workflows and rebuilding each workflow's DAG from parent links.
//!
//! Streaming assumption: the spans of one workflow appear within
//! `group_window` spans of each other (contiguous, or interleaved with a bounded number
//! of other workflows, as loggers that flush per workflow or per time slice produce).
//! A workflow is complete when `group_window` spans have passed without one of its
//! spans, or at the end of the file. A span of a workflow that was already completed is
//! a bad row (reported, or counted with `skip_bad_rows`), never merged silently.

use crate::error::{DagIssue, TraceError};
use crate::format::TraceFormat;
use crate::otlp::OtlpReader;
use crate::request::{ReadOptions, ReadReport};
use crate::span::{SpanKind, SpanLogReader, SpanRecord, SpanSource};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::Path;

/// Spans without news of a workflow after which it is complete.
pub const DEFAULT_GROUP_WINDOW: u64 = 100_000;

/// One workflow: its spans in file order and the DAG rebuilt from parent links.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workflow {
    pub id: String,
    /// The first `workflow_class` among the spans.
    pub class: Option<String>,
    /// The first `tenant` among the spans.
    pub tenant: Option<String>,
    /// Earliest span start, in ns from the trace origin (the first span read).
    pub arrival_ns: u64,
    /// Spans in file order.
    pub spans: Vec<SpanRecord>,
    /// Parent of each span (index into `spans`); `None` for roots.
    pub parent: Vec<Option<usize>>,
    /// Other predecessors of each span (its `links`, resolved; sorted, never the
    /// parent): a join waits for its parent and all of these.
    pub links: Vec<Vec<usize>>,
    /// Children of each span (through parent links only), in file order.
    pub children: Vec<Vec<usize>>,
    /// Root spans, in file order (orphans and broken cycles included in skip mode).
    pub roots: Vec<usize>,
    /// Problems found, with the line of the span concerned.
    pub issues: Vec<(u64, DagIssue)>,
}

impl Workflow {
    /// Builds the DAG of `spans` (in file order). Orphans become roots, a duplicate id
    /// is a separate span (children link to the first span with the id), a cycle is
    /// broken by making its earliest span a root; each is listed in `issues`.
    pub fn build(id: String, spans: Vec<SpanRecord>, origin_ns: u64) -> Workflow {
        let n = spans.len();
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        let mut issues = Vec::new();
        for (i, s) in spans.iter().enumerate() {
            if index.contains_key(s.span_id.as_str()) {
                issues.push((
                    s.line,
                    DagIssue::DuplicateSpan {
                        span_id: s.span_id.clone(),
                    },
                ));
            } else {
                index.insert(&s.span_id, i);
            }
        }
        let mut parent: Vec<Option<usize>> = vec![None; n];
        for (i, s) in spans.iter().enumerate() {
            if let Some(p) = &s.parent_span_id {
                match index.get(p.as_str()) {
                    Some(&j) if j != i => parent[i] = Some(j),
                    Some(_) => {
                        issues.push((
                            s.line,
                            DagIssue::Cycle {
                                span_id: s.span_id.clone(),
                            },
                        ));
                    }
                    None => issues.push((
                        s.line,
                        DagIssue::Orphan {
                            span_id: s.span_id.clone(),
                            parent_span_id: p.clone(),
                        },
                    )),
                }
            }
        }
        // Cycles: follow parent links; 0 = unvisited, 1 = on the current path, 2 = done.
        let mut state = vec![0u8; n];
        for start in 0..n {
            if state[start] != 0 {
                continue;
            }
            let mut path = Vec::new();
            let mut cur = Some(start);
            while let Some(c) = cur {
                match state[c] {
                    0 => {
                        state[c] = 1;
                        path.push(c);
                        cur = parent[c];
                    }
                    1 => {
                        // A cycle: the nodes of `path` from `c` on.
                        let pos = path.iter().position(|&x| x == c).unwrap_or(0);
                        let earliest = path[pos..].iter().copied().min().unwrap_or(c);
                        parent[earliest] = None;
                        issues.push((
                            spans[earliest].line,
                            DagIssue::Cycle {
                                span_id: spans[earliest].span_id.clone(),
                            },
                        ));
                        break;
                    }
                    _ => break,
                }
            }
            for p in path {
                state[p] = 2;
            }
        }
        // Span links: resolved like parents (to the first span with the id); a missing
        // target is reported with the orphans, a link that closes a cycle is dropped.
        let mut links: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, s) in spans.iter().enumerate() {
            for l in &s.links {
                match index.get(l.as_str()) {
                    Some(&j) if j == i => issues.push((
                        s.line,
                        DagIssue::Cycle {
                            span_id: s.span_id.clone(),
                        },
                    )),
                    Some(&j) => {
                        if parent[i] != Some(j) {
                            links[i].push(j);
                        }
                    }
                    None => issues.push((
                        s.line,
                        DagIssue::MissingLink {
                            span_id: s.span_id.clone(),
                            link: l.clone(),
                        },
                    )),
                }
            }
            links[i].sort_unstable();
            links[i].dedup();
        }
        // Parent links alone are acyclic now; a cycle must go through a span link. Drop
        // the links of the earliest span (in file order) on a cycle, one at a time.
        while let Some(i) = first_on_link_cycle(&parent, &links) {
            if let Some(j) = links[i]
                .iter()
                .position(|&t| reaches(&parent, &links, t, i))
            {
                links[i].remove(j);
            } else {
                break;
            }
            issues.push((
                spans[i].line,
                DagIssue::Cycle {
                    span_id: spans[i].span_id.clone(),
                },
            ));
        }
        let mut children = vec![Vec::new(); n];
        let mut roots = Vec::new();
        for (i, p) in parent.iter().enumerate() {
            match p {
                Some(p) => children[*p].push(i),
                None => roots.push(i),
            }
        }
        issues.sort_by_key(|(line, _)| *line);
        let start = spans.iter().map(|s| s.start_ns).min().unwrap_or(origin_ns);
        Workflow {
            class: spans.iter().find_map(|s| s.workflow_class.clone()),
            tenant: spans.iter().find_map(|s| s.tenant.clone()),
            arrival_ns: start.saturating_sub(origin_ns),
            id,
            spans,
            parent,
            links,
            children,
            roots,
            issues,
        }
    }

    /// Every predecessor of span `i` (its parent and its links), sorted.
    pub fn predecessors(&self, i: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self.parent[i].into_iter().collect();
        v.extend(self.links.get(i).into_iter().flatten().copied());
        v.sort_unstable();
        v.dedup();
        v
    }

    /// A flat request as a one-hop workflow (one LLM span, id `r<line>`), for
    /// replaying request traces through the workflow machinery.
    pub fn single_hop(req: &crate::request::RequestRecord) -> Workflow {
        let id = format!("r{}", req.line);
        let span = SpanRecord {
            workflow_id: id.clone(),
            span_id: "0".into(),
            kind: SpanKind::Llm,
            input_tokens: req.input_tokens as u64,
            output_tokens: req.output_tokens as u64,
            start_ns: req.arrival_ns,
            attempt: 1,
            line: req.line,
            ..SpanRecord::default()
        };
        Workflow::build(id, vec![span], 0)
    }

    /// Span indices in an order where every predecessor (parent and links) comes before
    /// its span: breadth first from the roots, a span held back until its links have
    /// come (without links, plain breadth-first order).
    pub fn topo_order(&self) -> Vec<usize> {
        let n = self.spans.len();
        let mut order = Vec::with_capacity(n);
        let mut queue: VecDeque<usize> = self.roots.iter().copied().collect();
        while let Some(i) = queue.pop_front() {
            order.push(i);
            queue.extend(self.children[i].iter().copied());
        }
        if self.links.iter().all(Vec::is_empty) {
            return order;
        }
        // Kahn's algorithm, the breadth-first rank breaking ties.
        let mut rank = vec![0usize; n];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r;
        }
        let mut waiting: Vec<usize> = (0..n).map(|i| self.predecessors(i).len()).collect();
        let mut after: Vec<Vec<usize>> = vec![Vec::new(); n];
        for i in 0..n {
            for p in self.predecessors(i) {
                after[p].push(i);
            }
        }
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<(usize, usize)>> = (0..n)
            .filter(|&i| waiting[i] == 0)
            .map(|i| std::cmp::Reverse((rank[i], i)))
            .collect();
        let mut out = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse((_, i))) = ready.pop() {
            out.push(i);
            for &c in &after[i] {
                waiting[c] -= 1;
                if waiting[c] == 0 {
                    ready.push(std::cmp::Reverse((rank[c], c)));
                }
            }
        }
        out
    }

    /// Depth of each span (roots are 0).
    pub fn depths(&self) -> Vec<usize> {
        let mut depth = vec![0usize; self.spans.len()];
        for i in self.topo_order() {
            if let Some(p) = self.parent[i] {
                depth[i] = depth[p] + 1;
            }
        }
        depth
    }

    /// The lane its first root span records, if any.
    pub fn recorded_lane(&self) -> Option<&str> {
        let root = self.spans.get(*self.roots.first()?)?;
        (!root.lane.is_empty()).then_some(root.lane.as_str())
    }

    /// Total input and output tokens of the workflow's spans.
    pub fn token_totals(&self) -> (u64, u64) {
        self.spans.iter().fold((0, 0), |(i, o), s| {
            (i + s.input_tokens, o + s.output_tokens)
        })
    }

    /// Number of spans of a kind.
    pub fn count(&self, kind: SpanKind) -> usize {
        self.spans.iter().filter(|s| s.kind == kind).count()
    }

    /// The DAG as (span id, parent span id) pairs sorted, for comparing structures.
    pub fn edges(&self) -> Vec<(String, Option<String>)> {
        let mut v: Vec<(String, Option<String>)> = (0..self.spans.len())
            .map(|i| {
                (
                    self.spans[i].span_id.clone(),
                    self.parent[i].map(|p| self.spans[p].span_id.clone()),
                )
            })
            .collect();
        v.sort();
        v
    }
}

/// Whether `to` is reached from `from` following predecessors (parent and links).
fn reaches(parent: &[Option<usize>], links: &[Vec<usize>], from: usize, to: usize) -> bool {
    let mut seen = vec![false; parent.len()];
    let mut stack = vec![from];
    while let Some(c) = stack.pop() {
        if c == to {
            return true;
        }
        if std::mem::replace(&mut seen[c], true) {
            continue;
        }
        stack.extend(parent[c]);
        stack.extend(links[c].iter().copied());
    }
    false
}

/// The earliest span (in file order) on a cycle of parent and span links, if any.
fn first_on_link_cycle(parent: &[Option<usize>], links: &[Vec<usize>]) -> Option<usize> {
    let n = parent.len();
    if links.iter().all(Vec::is_empty) {
        return None;
    }
    // Kahn's algorithm over predecessor counts: what is left is on or after a cycle.
    let mut waiting = vec![0usize; n];
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for p in parent[i].into_iter().chain(links[i].iter().copied()) {
            waiting[i] += 1;
            after[p].push(i);
        }
    }
    let mut stack: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = stack.pop() {
        done += 1;
        for &c in &after[i] {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                stack.push(c);
            }
        }
    }
    if done == n {
        return None;
    }
    (0..n).find(|&i| waiting[i] > 0 && links[i].iter().any(|&t| reaches(parent, links, t, i)))
}

fn fnv1a(s: &str) -> u64 {
    sim_core::rng::stable_hash(s)
}

struct OpenWorkflow {
    spans: Vec<SpanRecord>,
    last_seq: u64,
}

/// Groups a stream of spans into workflows (see the module doc for the assumption).
pub struct WorkflowReader<S: SpanSource> {
    source: S,
    skip_bad_rows: bool,
    window: u64,
    seq: u64,
    origin_ns: Option<u64>,
    open: BTreeMap<String, OpenWorkflow>,
    order: VecDeque<String>,
    /// FNV-1a hashes of completed workflow ids (8 bytes each, so that a trace of
    /// tens of millions of workflows stays small; a 64-bit collision, about 1e-6 for
    /// 10 million ids, would report a false late span, never merge silently).
    closed: HashSet<u64>,
    last_arrival: u64,
    ready: VecDeque<Workflow>,
    counts: ReadReport,
    source_done: bool,
    failed: bool,
    /// Strict mode, after a first problem: the earliest problem (by line) found so
    /// far; reading goes on only to complete the workflows open when it was found.
    pending: Option<TraceError>,
}

/// Opens a span trace (span log or OTLP) as workflows.
pub fn open_workflows(
    path: &Path,
    opts: &ReadOptions,
) -> Result<WorkflowReader<Box<dyn SpanSource + Send>>, TraceError> {
    let format = match opts.format {
        Some(f) => f,
        None => TraceFormat::detect(path)?,
    };
    let source: Box<dyn SpanSource + Send> = match format {
        TraceFormat::SpanLog => Box::new(SpanLogReader::open(path, opts.skip_bad_rows)?),
        TraceFormat::Otlp => Box::new(OtlpReader::open(path, opts.skip_bad_rows)?),
        other => {
            return Err(TraceError::file(
                &path.display().to_string(),
                format!("`{other}` is a request trace, not a span trace"),
            ));
        }
    };
    Ok(WorkflowReader::new(
        source,
        opts.skip_bad_rows,
        opts.group_window_spans.unwrap_or(DEFAULT_GROUP_WINDOW),
    ))
}

impl<S: SpanSource + ?Sized> SpanSource for Box<S> {
    fn file(&self) -> &str {
        (**self).file()
    }
    fn report(&self) -> &ReadReport {
        (**self).report()
    }
}

impl<S: SpanSource> WorkflowReader<S> {
    pub fn new(source: S, skip_bad_rows: bool, group_window: u64) -> Self {
        WorkflowReader {
            source,
            skip_bad_rows,
            window: group_window.max(1),
            seq: 0,
            origin_ns: None,
            open: BTreeMap::new(),
            order: VecDeque::new(),
            closed: HashSet::new(),
            last_arrival: 0,
            ready: VecDeque::new(),
            counts: ReadReport::default(),
            source_done: false,
            failed: false,
            pending: None,
        }
    }

    /// Rows read and skipped, workflows built, DAG problems found.
    pub fn report(&self) -> ReadReport {
        let mut r = self.source.report().clone();
        r.skipped_rows += self.counts.skipped_rows;
        if r.first_skipped.is_none() {
            r.first_skipped = self.counts.first_skipped.clone();
        }
        r.workflows = self.counts.workflows;
        r.orphan_spans = self.counts.orphan_spans;
        r.duplicate_spans = self.counts.duplicate_spans;
        r.cycles = self.counts.cycles;
        r.clamped_starts = self.counts.clamped_starts;
        r.out_of_order = self.counts.out_of_order;
        r
    }

    fn close(&mut self, id: String) -> Result<(), TraceError> {
        let Some(open) = self.open.remove(&id) else {
            return Ok(());
        };
        let origin = self.origin_ns.unwrap_or(0);
        let wf = Workflow::build(id.clone(), open.spans, origin);
        if wf.spans.iter().any(|s| s.start_ns < origin) {
            self.counts.clamped_starts += 1;
        }
        for (line, issue) in &wf.issues {
            if !self.skip_bad_rows {
                return Err(TraceError::Dag {
                    file: self.source.file().to_string(),
                    line: *line,
                    workflow: id,
                    issue: issue.clone(),
                });
            }
            match issue {
                DagIssue::Orphan { .. } | DagIssue::MissingLink { .. } => {
                    self.counts.orphan_spans += 1
                }
                DagIssue::DuplicateSpan { .. } => self.counts.duplicate_spans += 1,
                DagIssue::Cycle { .. } => self.counts.cycles += 1,
            }
        }
        self.closed.insert(fnv1a(&id));
        self.counts.workflows += 1;
        if wf.arrival_ns < self.last_arrival {
            self.counts.out_of_order += 1;
        }
        self.last_arrival = wf.arrival_ns;
        self.ready.push_back(wf);
        Ok(())
    }

    /// Closes workflows at the front of the order that have been idle for the window.
    fn close_idle(&mut self) -> Result<(), TraceError> {
        while let Some(front) = self.order.front() {
            let idle = self
                .open
                .get(front)
                .is_none_or(|o| o.last_seq + self.window <= self.seq);
            if !idle {
                break;
            }
            if let Some(id) = self.order.pop_front() {
                self.close(id)?;
            }
        }
        Ok(())
    }

    fn add(&mut self, span: SpanRecord) -> Result<(), TraceError> {
        self.seq += 1;
        if self.origin_ns.is_none() {
            self.origin_ns = Some(span.start_ns);
        }
        if self.closed.contains(&fnv1a(&span.workflow_id)) {
            return Err(TraceError::row(
                self.source.file(),
                span.line,
                format!(
                    "span `{}` of workflow `{}` comes more than {} spans after the workflow's previous span; \
                     the workflow was already complete (raise the grouping window)",
                    span.span_id, span.workflow_id, self.window
                ),
            ));
        }
        match self.open.get_mut(&span.workflow_id) {
            Some(o) => {
                o.last_seq = self.seq;
                o.spans.push(span);
            }
            None => {
                self.order.push_back(span.workflow_id.clone());
                self.open.insert(
                    span.workflow_id.clone(),
                    OpenWorkflow {
                        spans: vec![span],
                        last_seq: self.seq,
                    },
                );
            }
        }
        Ok(())
    }
}

impl<S: SpanSource> WorkflowReader<S> {
    /// Strict mode: keeps the earlier (by line) of `e` and the pending problem.
    fn note_problem(&mut self, e: TraceError) {
        let line = |e: &TraceError| e.line().unwrap_or(0);
        match &self.pending {
            Some(p) if line(p) <= line(&e) => {}
            _ => self.pending = Some(e),
        }
    }

    /// Strict mode after a first problem: reads on until every workflow open at that
    /// point is complete (at most the grouping window), keeping the earliest problem.
    /// New workflows are not opened (all their lines come later), later bad rows are
    /// ignored (they come later too); an I/O error ends the search.
    fn drain(&mut self) -> TraceError {
        self.ready.clear();
        loop {
            if self.open.is_empty() {
                break;
            }
            if self.source_done {
                while let Some(id) = self.order.pop_front() {
                    if let Err(e) = self.close(id) {
                        self.note_problem(e);
                    }
                }
                break;
            }
            match self.source.next() {
                None => self.source_done = true,
                Some(Err(TraceError::Row { .. })) => {}
                Some(Err(_)) => break,
                Some(Ok(span)) => {
                    if self.open.contains_key(&span.workflow_id) {
                        if let Err(e) = self.add(span) {
                            self.note_problem(e);
                        }
                    } else {
                        self.seq += 1;
                    }
                    while let Some(front) = self.order.front() {
                        let idle = self
                            .open
                            .get(front)
                            .is_none_or(|o| o.last_seq + self.window <= self.seq);
                        if !idle {
                            break;
                        }
                        if let Some(id) = self.order.pop_front()
                            && let Err(e) = self.close(id)
                        {
                            self.note_problem(e);
                        }
                    }
                }
            }
        }
        self.ready.clear();
        self.pending
            .take()
            .unwrap_or_else(|| TraceError::file(self.source.file(), "reading stopped at a problem"))
    }
}

impl<S: SpanSource> Iterator for WorkflowReader<S> {
    type Item = Result<Workflow, TraceError>;

    /// In strict mode the error returned is the first problem in file order: a bad row
    /// at its line, a workflow's orphan, duplicate or cycle at the line of the span
    /// concerned (known when the workflow is complete, so reading goes on after a
    /// problem until the workflows open then are complete; see [`Self::drain`]).
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(wf) = self.ready.pop_front() {
                return Some(Ok(wf));
            }
            if self.failed || (self.source_done && self.order.is_empty()) {
                return None;
            }
            let step = if self.source_done {
                match self.order.pop_front() {
                    Some(id) => self.close(id),
                    None => Ok(()),
                }
            } else {
                match self.source.next() {
                    None => {
                        self.source_done = true;
                        Ok(())
                    }
                    Some(Err(e)) => Err(e),
                    Some(Ok(span)) => match self.add(span) {
                        Err(e) if self.skip_bad_rows => {
                            self.counts.skipped_rows += 1;
                            if self.counts.first_skipped.is_none() {
                                self.counts.first_skipped = Some(e.to_string());
                            }
                            Ok(())
                        }
                        other => other.and_then(|()| self.close_idle()),
                    },
                }
            };
            if let Err(e) = step {
                self.failed = true;
                let fatal = matches!(e, TraceError::Io { .. } | TraceError::File { .. });
                if fatal || self.skip_bad_rows {
                    return Some(Err(e));
                }
                self.note_problem(e);
                return Some(Err(self.drain()));
            }
        }
    }
}

//! Writing a run's hops as an agent span log (the JSONL format `traces` reads), so a
//! simulated factory produces the same kind of log platform teams collect, and the
//! round trip (write, read back) keeps every workflow's structure and token totals.

use sim_core::Scenario;
use sim_core::metrics::{HopRecord, HopStatus, WorkflowHops};
use sim_core::scenario::WorkflowClass;
use sim_core::workflow::WorkflowGraph;
use std::collections::BTreeMap;
use std::io::Write;
use traces::{OtlpWriter, SpanKind, SpanLogWriter, SpanRecord, SpanStatus};

/// The span records of a run's hop log, grouped by workflow (spans of one workflow
/// are contiguous, in start order).
///
/// Predecessors: a hop waited for, on each of its node's parent nodes, the latest hop
/// of that node that had finished before it was submitted, one per fan-out branch (a
/// join after a fan-out waits for every branch). A parent node that records no hop (a
/// disabled node, a human review step) is looked through to its own parents. The
/// latest-finishing predecessor is the span's `parent_span_id`; the others are its
/// `links`. An escalation's parent is the call it redoes; a branch step's
/// predecessors are in its own branch (or outside the fan-out).
///
/// Timing: `decode_ms` + `prefill_ms` is the service time (start to finish, queueing
/// excluded), split at the first output token where the pool knows it (GPU replicas,
/// APIs) or by the token-time model's prompt part on an abstract pool
/// ([`HopRecord::prefill`]); `cached_tokens` is [`HopRecord::cached_tokens`].
pub fn span_records(scenario: &Scenario, log: &[HopRecord]) -> Vec<SpanRecord> {
    let mut out = Vec::with_capacity(log.len());
    let mut spans = SpanBuilder::default();
    let kept: std::io::Result<()> =
        for_each_held_workflow(scenario, log, |wf, class, graph, hops| {
            spans.workflow(wf, class, graph, hops, &mut |s| {
                out.push(s.clone());
                Ok(())
            })
        });
    debug_assert!(kept.is_ok(), "collecting records cannot fail");
    out
}

/// Calls `f` with each workflow of a whole hop log (ascending id, its hops in log
/// order), its class and graph; stops at the first error.
fn for_each_held_workflow<'a>(
    scenario: &'a Scenario,
    log: &'a [HopRecord],
    mut f: impl FnMut(
        u64,
        &'a WorkflowClass,
        &'a WorkflowGraph,
        &mut [&'a HopRecord],
    ) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut by_wf: BTreeMap<u64, Vec<&HopRecord>> = BTreeMap::new();
    for h in log {
        by_wf.entry(h.workflow).or_default().push(h);
    }
    for (wf, mut hops) in by_wf {
        let Some(class) = scenario.classes.iter().find(|c| c.name == hops[0].class) else {
            continue;
        };
        f(wf, class, class.graph_for(hops[0].record), &mut hops)?;
    }
    Ok(())
}

/// Builds span records one at a time in one reused record (a span log of millions of
/// spans would otherwise allocate each span's nine strings).
#[derive(Default)]
struct SpanBuilder {
    span: SpanRecord,
    /// A spare parent id buffer, kept while the span is a root.
    spare_parent: Option<String>,
    /// Scratch of the predecessor search (reused from span to span).
    parent_nodes: Vec<usize>,
    stack: Vec<usize>,
    seen: Vec<bool>,
    preds: Vec<usize>,
    links: Vec<u64>,
}

impl SpanBuilder {
    /// Calls `emit` with the span record of each of workflow `wf`'s hops (see
    /// [`span_records`]) in the log's order: by submission, ties in the order they
    /// finished. `hops` (the order they finished in) is sorted so.
    fn workflow(
        &mut self,
        wf: u64,
        class: &WorkflowClass,
        graph: &WorkflowGraph,
        hops: &mut [&HopRecord],
        emit: &mut dyn FnMut(&SpanRecord) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        // Stable: hops submitted together stay in the order they finished (by index).
        hops.sort_by_key(|h| h.submitted);
        let hops = &*hops;
        let index: BTreeMap<&str, usize> = graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let node_of: Vec<Option<usize>> = hops
            .iter()
            .map(|h| index.get(h.node.as_str()).copied())
            .collect();
        // The fan-out a node's branches belong to (its head), if any.
        let head = |n: Option<usize>| {
            n.and_then(|n| {
                let node = &graph.nodes[n];
                if node.fan_out.is_some() {
                    Some(n)
                } else {
                    node.in_branch_of
                }
            })
        };
        let has_hop: Vec<bool> = (0..graph.nodes.len())
            .map(|n| node_of.contains(&Some(n)))
            .collect();
        let Self {
            span,
            spare_parent,
            parent_nodes,
            stack,
            seen,
            preds,
            links,
        } = self;
        set_text(&mut span.workflow_id, format_args!("wf{wf}"));
        set_str(&mut span.lane, &class.lane);
        set_str(span.tenant.get_or_insert_with(String::new), &class.tenant);
        set_str(
            span.workflow_class.get_or_insert_with(String::new),
            &class.name,
        );
        span.line = 0;
        for (k, h) in hops.iter().enumerate() {
            let node = node_of[k];
            preds.clear();
            if h.kind == "escalation" {
                preds.extend(
                    (0..k)
                        .filter(|&j| {
                            let p = hops[j];
                            p.finished <= h.submitted && p.node == h.node && p.branch == h.branch
                        })
                        .max_by_key(|&j| (hops[j].finished, hops[j].index)),
                );
            } else if let Some(n) = node {
                // Parent nodes, looking through those that record no hop.
                parent_nodes.clear();
                stack.clear();
                stack.extend_from_slice(&graph.nodes[n].parents);
                seen.clear();
                seen.resize(graph.nodes.len(), false);
                while let Some(p) = stack.pop() {
                    if std::mem::replace(&mut seen[p], true) {
                        continue;
                    }
                    if has_hop[p] {
                        parent_nodes.push(p);
                    } else {
                        stack.extend(graph.nodes[p].parents.iter().copied());
                    }
                }
                // The latest finished hop per (parent node, branch).
                let mut latest: BTreeMap<(usize, Option<u32>), usize> = BTreeMap::new();
                for j in 0..k {
                    let p = hops[j];
                    let Some(pn) = node_of[j] else { continue };
                    if p.finished > h.submitted || !parent_nodes.contains(&pn) {
                        continue;
                    }
                    let compatible = p.branch.is_none()
                        || h.branch.is_none()
                        || p.branch == h.branch
                        || head(Some(pn)) != head(node);
                    if !compatible {
                        continue;
                    }
                    let e = latest.entry((pn, p.branch)).or_insert(j);
                    if (p.finished, p.index) > (hops[*e].finished, hops[*e].index) {
                        *e = j;
                    }
                }
                preds.extend(latest.into_values());
            }
            let parent = preds
                .iter()
                .copied()
                .max_by_key(|&j| (hops[j].finished, hops[j].index));
            links.clear();
            links.extend(
                preds
                    .iter()
                    .copied()
                    .filter(|&j| Some(j) != parent)
                    .map(|j| hops[j].index),
            );
            links.sort_unstable();
            set_text(&mut span.span_id, format_args!("s{}", h.index));
            match parent {
                Some(j) => {
                    let text = span
                        .parent_span_id
                        .get_or_insert_with(|| spare_parent.take().unwrap_or_default());
                    set_text(text, format_args!("s{}", hops[j].index));
                }
                None => {
                    if let Some(text) = span.parent_span_id.take() {
                        *spare_parent = Some(text);
                    }
                }
            }
            span.links.truncate(links.len());
            for (i, &l) in links.iter().enumerate() {
                match span.links.get_mut(i) {
                    Some(text) => set_text(text, format_args!("s{l}")),
                    None => span.links.push(format!("s{l}")),
                }
            }
            let tool = h.kind == "tool";
            let service = h.finished - h.started;
            let prefill = h.prefill.min(service);
            let ms = |d: sim_core::SimDuration| d.as_secs_f64() * 1e3;
            span.kind = if tool { SpanKind::Tool } else { SpanKind::Llm };
            set_str(&mut span.agent_role, &h.role);
            set_str(&mut span.model_tier, &h.station);
            span.input_tokens = h.input_tokens;
            span.output_tokens = h.output_tokens;
            span.cached_tokens = if tool {
                0
            } else {
                h.cached_tokens.min(h.input_tokens)
            };
            span.prefill_ms = if tool { 0.0 } else { ms(prefill) };
            span.decode_ms = if tool {
                0.0
            } else {
                ms(sim_core::SimDuration(
                    service.as_nanos() - prefill.as_nanos(),
                ))
            };
            span.tool_wait_ms = if tool { ms(service) } else { 0.0 };
            span.usd_estimate = h.usd;
            span.start_ns = h.submitted.as_nanos();
            span.attempt = h.attempt;
            span.status = match h.status {
                HopStatus::Ok => SpanStatus::Ok,
                HopStatus::Error => SpanStatus::Error,
                HopStatus::Timeout => SpanStatus::Timeout,
                HopStatus::Lost => SpanStatus::Lost,
            };
            emit(span)?;
        }
        Ok(())
    }
}

/// Replaces `text` with `s`, keeping its buffer.
fn set_str(text: &mut String, s: &str) {
    text.clear();
    text.push_str(s);
}

/// Replaces `text` with `args`, keeping its buffer.
fn set_text(text: &mut String, args: std::fmt::Arguments) {
    text.clear();
    // Writing into a String cannot fail.
    let _ = std::fmt::Write::write_fmt(text, args);
}

/// Writes the span log of a run's whole hop log to `out` (replayed span traces must
/// have been held: a streamed recorded workflow's graph is gone after the run; a run
/// writing its log as it goes uses [`SpanLogStream`]).
pub fn write_span_log(
    out: impl Write,
    scenario: &Scenario,
    log: &[HopRecord],
) -> std::io::Result<()> {
    let mut w = SpanLogWriter::new(out);
    let mut spans = SpanBuilder::default();
    for_each_held_workflow(scenario, log, |wf, class, graph, hops| {
        spans.workflow(wf, class, graph, hops, &mut |s| w.write_span(s))
    })?;
    w.flush()
}

/// Writes a span log while the run goes, from the workflows the engine hands over
/// (`RunOptions::hop_sink`), byte for byte as [`write_span_log`] writes the whole hop
/// log after the run: workflows in ascending id order, each one's spans together.
///
/// Workflows are handed over when released, not in id order: one released before a
/// workflow that arrived earlier waits here, as its written lines, until every smaller
/// id has been written. So memory is that of the workflows handed over since the
/// oldest one still in flight (the engine holds the hops of those in flight).
pub struct SpanLogStream<W: Write> {
    out: W,
    /// The smallest workflow id not written yet.
    next: u64,
    /// Workflows handed over ahead of a smaller id, as their lines.
    waiting: BTreeMap<u64, Vec<u8>>,
    peak_waiting: usize,
    /// The first write error (the run goes on; [`SpanLogStream::finish`] reports it).
    error: Option<std::io::Error>,
    spans: SpanBuilder,
    /// The lines of the workflow being written (reused): one write to `out` each.
    lines: SpanLogWriter<Vec<u8>>,
    /// OTLP instead: the workflow's spans, then its document.
    otlp: Option<(Vec<SpanRecord>, OtlpWriter<Vec<u8>>)>,
}

/// What `run --spans FILE` writes, by the file's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanFileFormat {
    /// The span-log JSONL (any name but the OTLP ones).
    SpanLog,
    /// OTLP JSON, one document per workflow a line (`*.otlp.json`, `*.otlp.json.gz`).
    Otlp,
}

impl SpanFileFormat {
    pub fn for_path(path: &std::path::Path) -> SpanFileFormat {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name.ends_with(".otlp.json") {
            SpanFileFormat::Otlp
        } else {
            SpanFileFormat::SpanLog
        }
    }
}

impl<W: Write> SpanLogStream<W> {
    pub fn new(out: W) -> Self {
        Self::with_format(out, SpanFileFormat::SpanLog)
    }

    pub fn with_format(out: W, format: SpanFileFormat) -> Self {
        SpanLogStream {
            out,
            next: 0,
            waiting: BTreeMap::new(),
            peak_waiting: 0,
            error: None,
            spans: SpanBuilder::default(),
            lines: SpanLogWriter::new(Vec::new()),
            otlp: (format == SpanFileFormat::Otlp)
                .then(|| (Vec::new(), OtlpWriter::new(Vec::new()))),
        }
    }

    /// Takes one workflow's hops (the engine's `hop_sink`).
    pub fn workflow_done(&mut self, done: WorkflowHops<'_>) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.accept(done) {
            self.error = Some(e);
        }
    }

    fn accept(&mut self, done: WorkflowHops<'_>) -> std::io::Result<()> {
        let mut hops: Vec<&HopRecord> = done.hops.iter().collect();
        let buffer = match &mut self.otlp {
            None => {
                let lines = &mut self.lines;
                self.spans.workflow(
                    done.workflow,
                    done.class,
                    done.graph,
                    &mut hops,
                    &mut |s| lines.write_span(s),
                )?;
                lines.get_mut()
            }
            Some((batch, doc)) => {
                batch.clear();
                self.spans.workflow(
                    done.workflow,
                    done.class,
                    done.graph,
                    &mut hops,
                    &mut |s| {
                        batch.push(s.clone());
                        Ok(())
                    },
                )?;
                doc.write_workflow(batch)?;
                doc.get_mut()
            }
        };
        if done.workflow != self.next {
            self.waiting.insert(done.workflow, buffer.clone());
            buffer.clear();
            self.peak_waiting = self.peak_waiting.max(self.waiting.len());
            return Ok(());
        }
        self.out.write_all(buffer)?;
        buffer.clear();
        self.next += 1;
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() != self.next {
                break;
            }
            self.out.write_all(&entry.remove())?;
            self.next += 1;
        }
        Ok(())
    }

    /// The most workflows that waited for a smaller id at one time.
    pub fn peak_waiting_workflows(&self) -> usize {
        self.peak_waiting
    }

    /// Writes what still waits (in id order) and returns the output, or the first
    /// write error.
    pub fn finish(mut self) -> std::io::Result<W> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        // Nothing waits if every workflow was handed over; if one was not, those after
        // it are still written, in order.
        for lines in std::mem::take(&mut self.waiting).into_values() {
            self.out.write_all(&lines)?;
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A planner, 1-3 researchers (each escalated with p = 0.2) each calling a search
    /// tool, and a writer; no failures, so every call is one span.
    const AGENT_FACTORY: &str = r#"
[simulation]
horizon = "20m"
drain = true
[pools.llm]
servers = 6
prefill_per_1k_tokens = "100ms"
decode_per_token = "5ms"
[tools.search]
latency = { dist = "exponential", mean = "400ms" }
payload_tokens = { dist = "uniform", low = 100, high = 400 }
[classes.agent]
arrival = { process = "poisson", rate = 0.5 }
tenant = "acme"
[[classes.agent.nodes]]
id = "plan"
pool = "llm"
input_tokens = { dist = "uniform", low = 200, high = 900 }
output_tokens = { dist = "uniform", low = 20, high = 200 }
[[classes.agent.nodes]]
id = "research"
pool = "llm"
after = ["plan"]
output_tokens = { dist = "uniform", low = 20, high = 200 }
fan_out = { count = { dist = "uniform", low = 1, high = 4 }, through = "search" }
escalate = { probability = 0.2, pool = "llm" }
[[classes.agent.nodes]]
id = "search"
kind = "tool"
tool = "search"
after = ["research"]
[[classes.agent.nodes]]
id = "write"
pool = "llm"
after = ["search"]
output_tokens = { dist = "uniform", low = 50, high = 300 }
"#;

    /// The span log `run --spans` writes: streamed as the run goes. Also the most
    /// workflows its reorder buffer held at once.
    fn streamed_span_log(scenario: &Scenario) -> (sim_core::RunResult, Vec<u8>, usize) {
        let mut stream = SpanLogStream::new(Vec::new());
        let result =
            crate::simulate_with_hop_sink(scenario, None, &mut |w| stream.workflow_done(w));
        let peak = stream.peak_waiting_workflows();
        let bytes = stream.finish().unwrap_or_else(|e| panic!("{e}"));
        (result, bytes, peak)
    }

    #[test]
    fn streamed_span_log_is_the_held_one_byte_for_byte_and_buffers_few_workflows() {
        // The agent factory on two servers (queues build), users giving up after 8 s
        // (their calls still finish, as waste), a warm-up, and no drain: workflows
        // still in flight at the horizon are written with the hops they finished.
        let sets: Vec<String> = [
            "pools.llm.servers=2",
            "classes.agent.abandon_after=8s",
            // Priced, so that calls finishing after their workflow gave up show.
            "tools.search.usd_per_call=0.001",
            "simulation.warmup=2m",
            "simulation.drain=false",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let loaded = crate::parse_scenario("inline.toml", AGENT_FACTORY, &sets)
            .unwrap_or_else(|e| panic!("{e}"));
        let (held_result, log) = crate::simulate_logged(&loaded.scenario, None);
        let mut held = Vec::new();
        write_span_log(&mut held, &loaded.scenario, &log).unwrap_or_else(|e| panic!("{e}"));
        let (result, streamed, peak) = streamed_span_log(&loaded.scenario);
        assert_eq!(
            crate::outputs::to_json_pretty(&result.summary()).unwrap_or_default(),
            crate::outputs::to_json_pretty(&held_result.summary()).unwrap_or_default()
        );
        // The case the streamed writer has to get right happened.
        let summary = result.summary();
        let agent = &summary.classes["agent"];
        let c = &result.classes[0];
        assert!(c.abandoned > 50 && c.in_flight > 0, "{c:?}");
        assert!(agent.usd_waste.after_outcome > 0.0);
        let workflows = log
            .iter()
            .map(|h| h.workflow)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert!(workflows > 500, "{workflows}");
        assert!(streamed == held, "streamed and held span logs differ");
        // Only the workflows released while an older one was in flight waited.
        assert!(
            peak > 0 && peak * 20 < workflows,
            "peak {peak} of {workflows}"
        );
    }

    #[test]
    fn span_log_round_trip_keeps_structure_and_tokens() {
        let text = AGENT_FACTORY;
        let loaded =
            crate::parse_scenario("inline.toml", text, &[]).unwrap_or_else(|e| panic!("{e}"));
        let (_, log) = crate::simulate_logged(&loaded.scenario, None);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("spans.jsonl");
        let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        write_span_log(std::io::BufWriter::new(file), &loaded.scenario, &log)
            .unwrap_or_else(|e| panic!("{e}"));

        let read = traces::ReadOptions::default();
        let workflows: Vec<traces::Workflow> = traces::open_workflows(&path, &read)
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|w| w.unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let mut expected: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
        for h in &log {
            let e = expected.entry(format!("wf{}", h.workflow)).or_default();
            e.0 += 1;
            e.1 += h.input_tokens;
            e.2 += h.output_tokens;
        }
        assert_eq!(workflows.len(), expected.len());
        assert!(workflows.len() > 300);
        let written = span_records(&loaded.scenario, &log);
        for w in &workflows {
            assert!(w.issues.is_empty(), "{}: {:?}", w.id, w.issues);
            let (n, input, output) = expected[&w.id];
            assert_eq!(w.spans.len(), n);
            let (ti, to) = w.token_totals();
            assert_eq!((ti, to), (input, output), "{}", w.id);
            // One root (the planner) and every other span hangs under a parent.
            assert_eq!(w.roots.len(), 1, "{}", w.id);
            for s in &w.spans {
                let orig = written
                    .iter()
                    .find(|x| x.span_id == s.span_id)
                    .unwrap_or_else(|| panic!("span {}", s.span_id));
                assert_eq!(s.parent_span_id, orig.parent_span_id);
                assert_eq!(s.links, orig.links);
            }
        }
    }

    /// A workflow as a comparable value: its spans' (role, kind, pool or tool, input,
    /// output, roles of all its predecessors), sorted.
    fn signatures(spans: &[SpanRecord]) -> BTreeMap<Vec<String>, u32> {
        let mut by_wf: BTreeMap<&str, Vec<&SpanRecord>> = BTreeMap::new();
        for s in spans {
            by_wf.entry(&s.workflow_id).or_default().push(s);
        }
        let mut out = BTreeMap::new();
        for spans in by_wf.values() {
            let role = |id: &Option<String>| {
                id.as_ref()
                    .and_then(|p| spans.iter().find(|s| &s.span_id == p))
                    .map_or("-".to_string(), |s| s.agent_role.clone())
            };
            let mut sig: Vec<String> = spans
                .iter()
                .map(|s| {
                    // Every predecessor's role (parent and links), sorted.
                    let mut preds: Vec<String> = std::iter::once(role(&s.parent_span_id))
                        .chain(s.links.iter().map(|l| role(&Some(l.clone()))))
                        .collect();
                    preds.sort();
                    format!(
                        "{} {} {} {}/{} <- {}",
                        s.agent_role,
                        s.kind.name(),
                        s.model_tier,
                        s.input_tokens,
                        s.output_tokens,
                        preds.join(",")
                    )
                })
                .collect();
            sig.sort();
            *out.entry(sig).or_default() += 1;
        }
        out
    }

    #[test]
    fn replaying_a_written_span_log_reproduces_structure_and_tokens() {
        let original = crate::parse_scenario("inline.toml", AGENT_FACTORY, &[])
            .unwrap_or_else(|e| panic!("{e}"));
        let (_, log) = crate::simulate_logged(&original.scenario, None);
        let written = span_records(&original.scenario, &log);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("spans.jsonl");
        let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        write_span_log(std::io::BufWriter::new(file), &original.scenario, &log)
            .unwrap_or_else(|e| panic!("{e}"));

        // The same factory, its arrivals replaced by the span log.
        let replay_text = AGENT_FACTORY.replace(
            r#"arrival = { process = "poisson", rate = 0.5 }"#,
            &format!(
                "arrival = {{ process = \"trace\", file = {:?} }}",
                path.display().to_string()
            ),
        );
        let scenario_path = dir.path().join("replay.toml");
        std::fs::write(&scenario_path, &replay_text).unwrap_or_else(|e| panic!("{e}"));
        // Held (the default for a trace this small).
        let replay = crate::load_scenario(&scenario_path, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(replay.notes.is_empty(), "{:?}", replay.notes);
        // Streamed runs the same workflows to the same results.
        let streamed = crate::load_scenario(
            &scenario_path,
            &["classes.agent.arrival.stream=true".into()],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            streamed.scenario.classes[0].arrival,
            sim_core::scenario::Arrival::Recorded {
                stream: Some(_),
                ..
            }
        ));
        assert_eq!(
            crate::outputs::to_json_pretty(&crate::simulate(&streamed.scenario, None).summary())
                .unwrap_or_default(),
            crate::outputs::to_json_pretty(&crate::simulate(&replay.scenario, None).summary())
                .unwrap_or_default()
        );
        let (result, log2) = crate::simulate_logged(&replay.scenario, None);
        let rewritten = span_records(&replay.scenario, &log2);
        // The streamed replay's span log, written as it runs (each recorded workflow's
        // graph handed over with its hops, before its row is dropped), is the held
        // replay's, byte for byte.
        let mut held_bytes = Vec::new();
        write_span_log(&mut held_bytes, &replay.scenario, &log2).unwrap_or_else(|e| panic!("{e}"));
        let (_, streamed_bytes, _) = streamed_span_log(&streamed.scenario);
        assert!(
            streamed_bytes == held_bytes,
            "streamed replay wrote another log"
        );
        let workflows = written
            .iter()
            .map(|s| &s.workflow_id)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert!(workflows > 300, "{workflows}");
        assert_eq!(result.classes[0].arrived, workflows as u64);
        assert_eq!(result.classes[0].completed, workflows as u64);
        assert_eq!(rewritten.len(), written.len());
        // Escalations and fan-outs happened, so the comparison covers them.
        assert!(
            written
                .iter()
                .filter(|s| s.agent_role == "research")
                .count()
                > workflows
        );
        let (a, b) = (signatures(&written), signatures(&rewritten));
        assert_eq!(a.values().sum::<u32>(), workflows as u32);
        assert_eq!(a, b);
    }

    /// The month-end factory for 30 minutes, as the shipped span log was written.
    const MONTH_END_SETS: [&str; 3] = [
        "simulation.horizon=30m",
        "simulation.warmup=0s",
        "simulation.drain=true",
    ];

    fn run_month_end() -> (crate::LoadedScenario, Vec<HopRecord>, sim_core::RunResult) {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/month-end.toml");
        let sets: Vec<String> = MONTH_END_SETS.iter().map(|s| s.to_string()).collect();
        let loaded = crate::load_scenario(&path, &sets).unwrap_or_else(|e| panic!("{e}"));
        let (result, log) = crate::simulate_logged(&loaded.scenario, None);
        (loaded, log, result)
    }

    #[test]
    fn month_end_claims_round_trip_keeps_every_predecessor_of_every_span() {
        let (loaded, log, _) = run_month_end();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("spans.jsonl");
        let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        write_span_log(std::io::BufWriter::new(file), &loaded.scenario, &log)
            .unwrap_or_else(|e| panic!("{e}"));
        let read: BTreeMap<String, traces::Workflow> =
            traces::open_workflows(&path, &traces::ReadOptions::default())
                .unwrap_or_else(|e| panic!("{e}"))
                .map(|w| w.unwrap_or_else(|e| panic!("{e}")))
                .map(|w| (w.id.clone(), w))
                .collect();
        // Expected predecessors from the hop log and the claims graph alone
        // (coordinator -> researcher x branch -> lookup -> [compact, disabled] ->
        // reconcile): span id `s<i>` is hop i of the log.
        let mut by_wf: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, h) in log.iter().enumerate() {
            if h.class == "claims" {
                by_wf.entry(h.workflow).or_default().push(i);
            }
        }
        assert_eq!(by_wf.len(), 232);
        let mut branches_seen = std::collections::BTreeSet::new();
        for (wf, hops) in &by_wf {
            let on = |node: &str| -> Vec<usize> {
                hops.iter()
                    .copied()
                    .filter(|&i| log[i].node == node)
                    .collect()
            };
            let (coord, research, lookup, reconcile) = (
                on("coordinator"),
                on("researcher"),
                on("lookup"),
                on("reconcile"),
            );
            assert_eq!((coord.len(), reconcile.len()), (1, 1), "wf{wf}");
            assert_eq!(on("compact").len(), 0);
            let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let id = |i: usize| format!("s{i}");
            expected.insert(id(coord[0]), vec![]);
            for &r in &research {
                expected.insert(id(r), vec![id(coord[0])]);
            }
            for &l in &lookup {
                let r = research
                    .iter()
                    .find(|&&r| log[r].branch == log[l].branch)
                    .unwrap_or_else(|| panic!("wf{wf}: lookup without its researcher"));
                expected.insert(id(l), vec![id(*r)]);
            }
            // reconcile waited for the last ledger call of every branch.
            let mut last: BTreeMap<Option<u32>, usize> = BTreeMap::new();
            for &l in &lookup {
                let e = last.entry(log[l].branch).or_insert(l);
                if log[l].finished > log[*e].finished {
                    *e = l;
                }
            }
            assert_eq!(last.len(), research.len(), "wf{wf}");
            branches_seen.insert(research.len());
            let mut join: Vec<String> = last.values().map(|&l| id(l)).collect();
            join.sort();
            expected.insert(id(reconcile[0]), join);

            let w = &read[&format!("wf{wf}")];
            assert!(w.issues.is_empty(), "wf{wf}: {:?}", w.issues);
            assert_eq!(w.roots.len(), 1, "wf{wf}");
            let got: BTreeMap<String, Vec<String>> = (0..w.spans.len())
                .map(|i| {
                    let mut p: Vec<String> = w
                        .predecessors(i)
                        .into_iter()
                        .map(|p| w.spans[p].span_id.clone())
                        .collect();
                    p.sort();
                    (w.spans[i].span_id.clone(), p)
                })
                .collect();
            assert_eq!(got, expected, "wf{wf}");
        }
        // The comparison covered joins of 2, 3 and 4 branches.
        assert_eq!(branches_seen.into_iter().collect::<Vec<_>>(), [2, 3, 4]);
    }

    #[test]
    fn replayed_month_end_claims_take_as_long_as_in_the_original_run() {
        // The shipped log (written from this run) replayed by scenarios/span-replay.toml:
        // the same factory, the same tokens and structure; only the ledger tool's
        // latencies are drawn again (same distribution, other random numbers). With
        // reconcile running alongside the researchers (its join lost), p50 was 11.73 s
        // against 16.89 s.
        let (_, _, original) = run_month_end();
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/span-replay.toml");
        let replay = crate::load_scenario(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
        let replayed = crate::simulate(&replay.scenario, None);
        let class = |r: &sim_core::RunResult| {
            r.classes
                .iter()
                .find(|c| c.name == "claims")
                .cloned()
                .unwrap_or_else(|| panic!("no claims"))
        };
        let (a, b) = (class(&original), class(&replayed));
        assert_eq!((a.completed, b.completed), (232, 232));
        for q in [0.1, 0.25, 0.5, 0.75, 0.9, 0.95] {
            let x = a.latency_ns.value_at_quantile(q) as f64 / 1e9;
            let y = b.latency_ns.value_at_quantile(q) as f64 / 1e9;
            // Within 6%: 232 workflows, each with 2-4 redrawn ledger calls.
            assert!(
                (y / x - 1.0).abs() < 0.06,
                "p{}: original {x} s, replayed {y} s",
                q * 100.0
            );
        }
        let mean =
            |c: &sim_core::metrics::ClassStats| c.latency_sum_ns as f64 / c.completed as f64 / 1e9;
        let (ma, mb) = (mean(&a), mean(&b));
        assert!(
            (mb / ma - 1.0).abs() < 0.03,
            "mean: original {ma} s, replayed {mb} s"
        );
    }

    #[test]
    fn spans_carry_cached_tokens_and_the_prefill_decode_split() {
        // One user, two workflows one after the other (nothing queues): an abstract
        // pool with a token-time model, a paid API with constant TTFT/TPOT, a GPU pool.
        let text = r#"
[simulation]
horizon = "40s"
drain = true
[pools.cpu]
servers = 1
prefill_per_1k_tokens = "400ms"
decode_per_token = "8ms"
[pools.api]
api = { ttft = { dist = "constant", value = "300ms" }, tpot = { dist = "constant", value = "20ms" }, usd_per_1k_input = 0.003, usd_per_1k_output = 0.015 }
[pools.gpu]
servers = 1
gpu = { model = "llama-3-8b", gpu = "a100-80gb", tp = 1 }
[classes.c]
arrival = { process = "closed", users = 1, think = { dist = "constant", value = "10s" } }
[[classes.c.nodes]]
id = "a"
pool = "cpu"
input_tokens = { dist = "constant", value = 2000 }
output_tokens = { dist = "constant", value = 100 }
shared_prefix_tokens = 1000
[[classes.c.nodes]]
id = "b"
pool = "api"
after = ["a"]
inherit = 0
input_tokens = { dist = "constant", value = 2000 }
output_tokens = { dist = "constant", value = 11 }
shared_prefix_tokens = 1000
[[classes.c.nodes]]
id = "g"
pool = "gpu"
after = ["b"]
inherit = 0
input_tokens = { dist = "constant", value = 200 }
output_tokens = { dist = "constant", value = 10 }
shared_prefix_tokens = 100
"#;
        let loaded =
            crate::parse_scenario("inline.toml", text, &[]).unwrap_or_else(|e| panic!("{e}"));
        let (_, log) = crate::simulate_logged(&loaded.scenario, None);
        let spans = span_records(&loaded.scenario, &log);
        let gpu = loaded.scenario.pools[2]
            .gpu
            .as_ref()
            .unwrap_or_else(|| panic!("gpu"));
        // The GPU hop alone on an idle replica: its prompt is one prefill iteration
        // (the first output token), then 9 decode steps. The second and later calls
        // find the 100-token shared prefix cached as 6 full 16-token KV blocks (96).
        let (solo_prefill, solo_decode) = gpu.solo_latency(200, 10);
        let warm_prefill = gpu.perf.iteration_time(&sim_core::gpu::IterationShape {
            prefill_tokens: 104,
            prefill_seqs: 1,
            prefill_context_tokens: 96,
            ..Default::default()
        });
        let ms = |d: sim_core::SimDuration| d.as_nanos() as f64 / 1e6;
        let mut seen = 0;
        for s in &spans {
            let first = s.workflow_id == "wf0";
            let (cached, prefill, decode) = match s.agent_role.as_str() {
                // 2,000 x 400 ms / 1k; 100 x 8 ms. No prefix cache on an abstract pool.
                "a" => (0, 800.0, 800.0),
                // TTFT, then 10 x 20 ms; the shared prefix is billed as cached input.
                "b" => (1000, 300.0, 200.0),
                "g" if first => (0, ms(solo_prefill), ms(solo_decode)),
                "g" => (96, ms(warm_prefill), ms(solo_decode)),
                other => panic!("{other}"),
            };
            assert_eq!(
                s.cached_tokens, cached,
                "{} {}",
                s.workflow_id, s.agent_role
            );
            assert!(
                (s.prefill_ms - prefill).abs() < 1e-6,
                "{} {}: {}",
                s.workflow_id,
                s.agent_role,
                s.prefill_ms
            );
            assert!(
                (s.decode_ms - decode).abs() < 1e-3,
                "{} {}: {}",
                s.workflow_id,
                s.agent_role,
                s.decode_ms
            );
            seen += 1;
        }
        assert_eq!(seen, 9, "three workflows of three hops");
        // Written and read back as such.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("spans.jsonl");
        let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        write_span_log(std::io::BufWriter::new(file), &loaded.scenario, &log)
            .unwrap_or_else(|e| panic!("{e}"));
        let back: Vec<SpanRecord> = traces::open_workflows(&path, &traces::ReadOptions::default())
            .unwrap_or_else(|e| panic!("{e}"))
            .flat_map(|w| w.unwrap_or_else(|e| panic!("{e}")).spans)
            .collect();
        // (JSON numbers read back to within a nanosecond, not always to the bit.)
        assert_eq!(back.len(), spans.len());
        for s in &spans {
            let b = back
                .iter()
                .find(|b| b.span_id == s.span_id)
                .unwrap_or_else(|| panic!("{}", s.span_id));
            assert_eq!(b.cached_tokens, s.cached_tokens);
            assert!((b.prefill_ms - s.prefill_ms).abs() < 1e-6);
            assert!((b.decode_ms - s.decode_ms).abs() < 1e-6);
        }
    }
}

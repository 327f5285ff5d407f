//! Writing a run's hops as an agent span log (the JSONL format `traces` reads), so a
//! simulated factory produces the same kind of log platform teams collect, and the
//! round trip (write, read back) keeps every workflow's structure and token totals.

use sim_core::Scenario;
use sim_core::metrics::HopRecord;
use std::collections::BTreeMap;
use std::io::Write;
use traces::{SpanKind, SpanLogWriter, SpanRecord};

/// The span records of a run's hop log, grouped by workflow (spans of one workflow
/// are contiguous, in start order). A hop's parent span is the latest hop that had
/// finished, before it was submitted, on one of its node's parent nodes (an escalation's
/// parent is the call it redoes; a branch step's parent is the previous step of the
/// same branch).
pub fn span_records(scenario: &Scenario, log: &[HopRecord]) -> Vec<SpanRecord> {
    let mut by_wf: BTreeMap<u64, Vec<(usize, &HopRecord)>> = BTreeMap::new();
    for (i, h) in log.iter().enumerate() {
        by_wf.entry(h.workflow).or_default().push((i, h));
    }
    let mut out = Vec::with_capacity(log.len());
    for (wf, mut hops) in by_wf {
        hops.sort_by_key(|(i, h)| (h.submitted, *i));
        let Some(class) = scenario.classes.iter().find(|c| c.name == hops[0].1.class) else {
            continue;
        };
        let graph = class.graph_for(hops[0].1.record);
        let index: BTreeMap<&str, usize> = graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        for (k, (i, h)) in hops.iter().enumerate() {
            let node = index.get(h.node.as_str()).copied();
            let parent_nodes: Vec<usize> = node
                .map(|n| graph.nodes[n].parents.clone())
                .unwrap_or_default();
            let parent = hops[..k]
                .iter()
                .filter(|(_, p)| p.finished <= h.submitted)
                .filter(|(_, p)| {
                    let pn = index.get(p.node.as_str()).copied();
                    let is_parent_node = pn.is_some_and(|pn| parent_nodes.contains(&pn));
                    let same_branch_step =
                        p.branch.is_some() && p.branch == h.branch && is_parent_node;
                    let redone = h.kind == "escalation" && p.node == h.node && p.branch == h.branch;
                    redone
                        || same_branch_step
                        || (is_parent_node && (p.branch.is_none() || h.branch.is_none()))
                })
                .max_by_key(|(j, p)| (p.finished, *j))
                .map(|(j, _)| format!("s{j}"));
            let tool = h.kind == "tool";
            let service_ms = (h.finished - h.started).as_secs_f64() * 1e3;
            out.push(SpanRecord {
                workflow_id: format!("wf{wf}"),
                span_id: format!("s{i}"),
                parent_span_id: parent,
                kind: if tool { SpanKind::Tool } else { SpanKind::Llm },
                agent_role: h.role.clone(),
                model_tier: h.station.clone(),
                lane: class.lane.clone(),
                input_tokens: h.input_tokens,
                output_tokens: h.output_tokens,
                cached_tokens: 0,
                prefill_ms: 0.0,
                decode_ms: if tool { 0.0 } else { service_ms },
                tool_wait_ms: if tool { service_ms } else { 0.0 },
                usd_estimate: h.usd,
                start_ns: h.submitted.as_nanos(),
                tenant: Some(class.tenant.clone()),
                workflow_class: Some(class.name.clone()),
                attempt: h.attempt,
                line: 0,
            });
        }
    }
    out
}

/// Writes the span log of a run to `out`.
pub fn write_span_log(
    out: impl Write,
    scenario: &Scenario,
    log: &[HopRecord],
) -> std::io::Result<()> {
    let mut w = SpanLogWriter::new(out);
    for s in span_records(scenario, log) {
        w.write_span(&s)?;
    }
    Ok(())
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

    #[test]
    fn span_log_round_trip_keeps_structure_and_tokens() {
        let text = AGENT_FACTORY;
        let loaded =
            crate::parse_scenario("inline.toml", text, &[]).unwrap_or_else(|e| panic!("{e}"));
        let mut log = Vec::new();
        sim_core::run(
            &loaded.scenario,
            sim_core::RunOptions {
                hop_log: Some(&mut log),
                policies: Some(&policies::Standard),
                ..Default::default()
            },
        );
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
            }
        }
    }

    /// A workflow as a comparable value: its spans' (role, kind, pool or tool, input,
    /// output, parent's role), sorted.
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
                    format!(
                        "{} {} {} {}/{} <- {}",
                        s.agent_role,
                        s.kind.name(),
                        s.model_tier,
                        s.input_tokens,
                        s.output_tokens,
                        role(&s.parent_span_id)
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
        let mut log = Vec::new();
        sim_core::run(
            &original.scenario,
            sim_core::RunOptions {
                hop_log: Some(&mut log),
                policies: Some(&policies::Standard),
                ..Default::default()
            },
        );
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
        let replay = crate::load_scenario(&scenario_path, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(replay.notes.is_empty(), "{:?}", replay.notes);
        let mut log2 = Vec::new();
        let result = sim_core::run(
            &replay.scenario,
            sim_core::RunOptions {
                hop_log: Some(&mut log2),
                policies: Some(&policies::Standard),
                ..Default::default()
            },
        );
        let rewritten = span_records(&replay.scenario, &log2);
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
}

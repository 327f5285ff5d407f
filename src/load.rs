//! Reading a scenario file: TOML parsing, `--set key.path=value` overrides, validation.
//! Every error names the file, the line or key, and what was expected.

use sim_core::scenario::RecordedRequest;
use sim_core::time::SimDuration;
use sim_core::{Scenario, ScenarioSpec};
use std::collections::BTreeMap;
use std::path::Path;

/// Most passes a scenario's trace replay may make within the horizon (each reads the
/// file again).
const MAX_PASSES: u64 = 100_000;

/// Bad input from the user: the CLI exits with code 2 and prints this one line.
#[derive(Debug, thiserror::Error)]
#[error("{}{detail}", if file.is_empty() { String::new() } else { format!("{file}: ") })]
pub struct InputError {
    pub file: String,
    pub detail: String,
}

impl InputError {
    pub fn new(file: impl Into<String>, detail: impl Into<String>) -> Self {
        InputError {
            file: file.into(),
            detail: detail.into(),
        }
    }
}

/// A parsed and validated scenario, with the spec kept for re-validation by variants.
#[derive(Clone, Debug)]
pub struct LoadedScenario {
    pub file: String,
    pub spec: ScenarioSpec,
    pub scenario: Scenario,
    /// What loading found worth telling (trace rows skipped or out of order).
    pub notes: Vec<String>,
    /// The file's promotion gates (`gates = [...]`), for `compare`.
    pub gates: Vec<crate::gates::Gate>,
}

use crate::trace_stream::{MOONCAKE_BLOCK_TOKENS, RecordedRouting, RuleLabels, derived_class_name};

/// Trace arrivals found in a scenario table.
#[derive(Default)]
struct TraceArrivals {
    /// Classes with `process = "trace"`, and their trace options.
    traces: Vec<(String, traces::TraceSpec)>,
    /// Classes with `process = "routed"`: they receive rows that a trace's rules send
    /// them.
    routed: Vec<String>,
    /// Per trace (as `traces`): the recorded labels its workflows keep.
    recorded: Vec<crate::trace_stream::RecordedRouting>,
}

/// Takes `process = "trace"` arrivals out of the table (the rest of the scenario schema
/// does not know trace options) and replaces them, and `process = "routed"`, with
/// `process = "recorded"`.
fn extract_traces(file: &str, table: &mut toml::Table) -> Result<TraceArrivals, InputError> {
    let mut found = TraceArrivals::default();
    let mut derive: Vec<Derived> = Vec::new();
    let Some(toml::Value::Table(classes)) = table.get_mut("classes") else {
        return Ok(found);
    };
    for (name, class) in classes.iter_mut() {
        let Some(arrival) = class.get_mut("arrival").and_then(|a| a.as_table_mut()) else {
            continue;
        };
        match arrival.get("process").and_then(|p| p.as_str()) {
            Some("trace") => {}
            Some("routed") => {
                if let Some(k) = arrival.keys().find(|k| k.as_str() != "process") {
                    return Err(InputError::new(
                        file,
                        format!(
                            "key `classes.{name}.arrival.{k}`: a routed class takes no arrival options; its rows come from another class's trace rules"
                        ),
                    ));
                }
                arrival.insert("process".into(), toml::Value::String("recorded".into()));
                found.routed.push(name.clone());
                continue;
            }
            // `recorded` is what the loader turns `trace` into; written by hand it would
            // replay nothing.
            Some("recorded") => {
                return Err(InputError::new(
                    file,
                    format!(
                        "key `classes.{name}.arrival.process`: \"recorded\" is internal; expected \"trace\" with a `file`"
                    ),
                ));
            }
            _ => continue,
        }
        let mut options = arrival.clone();
        options.remove("process");
        let mut spec: traces::TraceSpec =
            toml::Value::Table(options.clone())
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let (key, message) = trace_option_at_fault(&options)
                        .map(|(k, m)| (format!("classes.{name}.arrival.{k}"), m))
                        .unwrap_or_else(|| {
                            (
                                format!("classes.{name}.arrival"),
                                e.message().trim().to_string(),
                            )
                        });
                    InputError::new(file, format!("key `{key}`: {message}"))
                })?;
        arrival.clear();
        arrival.insert("process".into(), toml::Value::String("recorded".into()));
        // A rule giving rows a tenant or lane sends them to a class derived from the
        // one they would reach, with that tenant and lane (tenant and lane are
        // attributes of a class: admission, lanes, showback and breakdowns follow).
        let mut recorded = RecordedRouting {
            tenant: spec.apply_recorded.contains(&traces::RecordedLabel::Tenant),
            lane: spec.apply_recorded.contains(&traces::RecordedLabel::Lane),
            trace_class: name.clone(),
            ..RecordedRouting::default()
        };
        for (i, rule) in spec.rules.iter_mut().enumerate() {
            if rule.tenant.is_none() && rule.lane.is_none() {
                recorded.rules.push(None);
                continue;
            }
            let base = rule.class.clone().unwrap_or_else(|| name.clone());
            let derived = derived_class_name(&base, rule.tenant.as_deref(), rule.lane.as_deref());
            recorded.rules.push(Some(RuleLabels {
                base: base.clone(),
                tenant: rule.tenant.clone(),
                lane: rule.lane.clone(),
            }));
            derive.push(Derived {
                key: format!("classes.{name}.arrival.rules[{i}]"),
                own: name.clone(),
                base,
                name: derived.clone(),
                tenant: rule.tenant.take(),
                lane: rule.lane.take(),
                found_at: None,
            });
            rule.class = Some(derived);
        }
        found.traces.push((name.clone(), spec));
        found.recorded.push(recorded);
    }
    // Every class's own tenant and lane, for the recorded ones to be compared with.
    let own: BTreeMap<String, (String, String)> = classes
        .iter()
        .map(|(n, c)| {
            let label = |k: &str| {
                c.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("default")
                    .to_string()
            };
            (n.clone(), (label("tenant"), label("lane")))
        })
        .collect();
    for r in &mut found.recorded {
        r.own = own.clone();
    }
    derive.extend(recorded_label_classes(file, table, &found, &derive)?);
    add_derived_classes(file, table, derive, &mut found)?;
    Ok(found)
}

/// The classes the span traces with `apply_recorded` need: one per (class, tenant,
/// lane) combination their workflows keep, found by reading each such trace once (with
/// its replay options, so the rows a window or sample drops make no class).
fn recorded_label_classes(
    file: &str,
    table: &toml::Table,
    found: &TraceArrivals,
    derive: &[Derived],
) -> Result<Vec<Derived>, InputError> {
    let base_dir = Path::new(file).parent().unwrap_or(Path::new("."));
    let seed = table
        .get("simulation")
        .and_then(|s| s.get("seed"))
        .and_then(toml::Value::as_integer)
        .map_or(1, |s| s as u64);
    // The names rows can be routed to before any recorded label applies.
    let takers: std::collections::BTreeSet<&str> = found
        .traces
        .iter()
        .map(|(n, _)| n.as_str())
        .chain(found.routed.iter().map(String::as_str))
        .chain(derive.iter().map(|d| d.name.as_str()))
        .collect();
    let mut out: BTreeMap<String, Derived> = BTreeMap::new();
    for ((name, spec), recorded) in found.traces.iter().zip(&found.recorded) {
        if !recorded.is_on() {
            continue;
        }
        let key = format!("classes.{name}.arrival.apply_recorded");
        let bad = |m: String| InputError::new(file, format!("key `{key}`: {m}"));
        let mut read = spec.read_options().map_err(bad)?;
        let path = spec.path(base_dir);
        let format = match read.format {
            Some(f) => f,
            None => traces::TraceFormat::detect(&path)
                .map_err(|e| InputError::new("", e.to_string()))?,
        };
        if format.is_request_trace() {
            return Err(bad(format!(
                "a request trace (`{}`) records no tenant or lane (only span traces do: span logs and OTLP); give rows a tenant or lane with `rules`",
                format.name()
            )));
        }
        read.format = Some(format);
        let mut replay = spec.replay_options(seed).map_err(bad)?;
        // Every pass carries the same labels: the first one says them all.
        replay.loops = 1;
        let rules = spec.rule_set().map_err(bad)?;
        let it = traces::replay_workflows(&path, &read, &replay)
            .map_err(|e| InputError::new("", e.to_string()))?;
        for wf in it {
            let mut wf = wf.map_err(|e| InputError::new("", e.to_string()))?;
            let rule = rules.labels(&wf).rule;
            rules.apply_to_workflow(&mut wf);
            let routed = wf
                .class
                .as_deref()
                .filter(|c| takers.contains(c))
                .unwrap_or(name);
            let Some(l) = recorded.labels_for(&wf, rule, routed) else {
                continue;
            };
            let derived = derived_class_name(&l.base, l.tenant.as_deref(), l.lane.as_deref());
            if derive.iter().any(|d| d.name == derived) || out.contains_key(&derived) {
                continue;
            }
            let line = wf.spans.first().map_or(0, |s| s.line);
            out.insert(
                derived.clone(),
                Derived {
                    key: key.clone(),
                    own: name.clone(),
                    base: l.base,
                    name: derived,
                    tenant: l.tenant,
                    lane: l.lane,
                    found_at: Some(format!(
                        "workflow `{}`, {} line {line}",
                        wf.id,
                        path.display()
                    )),
                },
            );
        }
    }
    Ok(out.into_values().collect())
}

/// A class made for trace rows a rule gives a tenant or lane.
struct Derived {
    /// The rule's key, for messages.
    key: String,
    /// The class the rows would otherwise reach, copied.
    base: String,
    /// The class whose trace the rule belongs to.
    own: String,
    name: String,
    tenant: Option<String>,
    lane: Option<String>,
    /// A class for recorded labels: the first workflow that needs it.
    found_at: Option<String>,
}

/// Adds each derived class (once per name) as a copy of its base class with the rule's
/// tenant and lane, receiving rows like a `routed` class.
fn add_derived_classes(
    file: &str,
    table: &mut toml::Table,
    derive: Vec<Derived>,
    found: &mut TraceArrivals,
) -> Result<(), InputError> {
    let lanes: Vec<String> = match table.get("lanes") {
        Some(toml::Value::Table(l)) => l.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let Some(toml::Value::Table(classes)) = table.get_mut("classes") else {
        return Ok(());
    };
    for d in derive {
        let at = d
            .found_at
            .as_ref()
            .map(|w| format!(" (first recorded by {w})"))
            .unwrap_or_default();
        let bad = |m: String| InputError::new(file, format!("key `{}`{at}: {m}", d.key));
        if let Some(l) = &d.lane
            && l != "default"
            && !lanes.contains(l)
        {
            return Err(bad(format!(
                "lane: no lane named `{l}`; define it as [lanes.{l}] (known: default{})",
                lanes.iter().map(|x| format!(", {x}")).collect::<String>()
            )));
        }
        if found.routed.contains(&d.name) {
            continue;
        }
        if classes.contains_key(&d.name) {
            return Err(bad(format!(
                "the class for its rows, `{}`, is already defined; rename that class",
                d.name
            )));
        }
        let Some(toml::Value::Table(base)) = classes.get(&d.base) else {
            return Err(bad(format!(
                "class: a rule sends rows to class `{}`, which does not exist (known: {})",
                d.base,
                classes.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        if d.base != d.own && !found.routed.contains(&d.base) {
            return Err(bad(format!(
                "class: a rule sends rows to class `{}`, whose arrivals are its own; give it `arrival = {{ process = \"routed\" }}`",
                d.base
            )));
        }
        let mut copy = base.clone();
        let mut arrival = toml::Table::new();
        arrival.insert("process".into(), toml::Value::String("recorded".into()));
        copy.insert("arrival".into(), toml::Value::Table(arrival));
        if let Some(t) = d.tenant {
            copy.insert("tenant".into(), toml::Value::String(t));
        }
        if let Some(l) = d.lane {
            copy.insert("lane".into(), toml::Value::String(l));
        }
        classes.insert(d.name.clone(), toml::Value::Table(copy));
        found.routed.push(d.name);
    }
    Ok(())
}

/// Where a trace row goes: the class its label names, if that class takes trace rows
/// (it is the trace's own class, or `routed`), else the trace's own class. A class
/// named by a rule must take trace rows.
fn target_class(
    label: Option<&str>,
    from_rule: bool,
    own: usize,
    receivers: &[usize],
    scenario: &Scenario,
) -> Result<usize, String> {
    let Some(name) = label else {
        return Ok(own);
    };
    match scenario.classes.iter().position(|c| c.name == name) {
        Some(c) if c == own || receivers.contains(&c) => Ok(c),
        _ if !from_rule => Ok(own),
        Some(_) => Err(format!(
            "a rule sends rows to class `{name}`, whose arrivals are its own; give it `arrival = {{ process = \"routed\" }}`"
        )),
        None => Err(format!(
            "a rule sends rows to class `{name}`, which does not exist (known: {})",
            scenario
                .classes
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// One session of a request trace as a recorded workflow: its turns in arrival order,
/// each a model call on the class's first model node's pool or tier (with that node's
/// service time and timeout) with the turn's recorded tokens and prefix-block hashes,
/// starting when the previous turn has finished and not before the turn's recorded
/// arrival.
fn session_request(
    scenario: &Scenario,
    class: usize,
    turns: &[traces::RequestRecord],
) -> RecordedRequest {
    use sim_core::workflow::{RecordedStep, RecordedWork, WorkflowGraph};
    let c = &scenario.classes[class];
    let entry = c
        .graph
        .nodes
        .iter()
        .find(|n| n.pool.is_some() || n.tier.is_some());
    let first = turns.first().map_or(0, |t| t.arrival_ns);
    let steps: Vec<RecordedStep> = turns
        .iter()
        .enumerate()
        .map(|(k, t)| RecordedStep {
            id: format!("turn{k}"),
            role: entry.map_or_else(|| "turn".to_string(), |n| n.role.clone()),
            work: RecordedWork::Model {
                // The entry's pool or tier; a class without one (impossible after
                // validation) falls back to the first pool.
                pool: match entry {
                    Some(n) => n.pool,
                    None => Some(0),
                },
                tier: entry.and_then(|n| n.tier),
                input_tokens: t.input_tokens as u64,
                output_tokens: t.output_tokens as u64,
                shared_prefix_tokens: 0,
                // The turn's own prefix-block hashes (Mooncake), as a single request
                // carries them.
                block_hashes: t.block_hashes.clone().map(std::sync::Arc::from),
                hash_block_tokens: MOONCAKE_BLOCK_TOKENS,
            },
            service: entry.and_then(|n| n.service.clone()),
            timeout: entry.and_then(|n| n.timeout),
            not_before: Some(sim_core::SimDuration::from_nanos(t.arrival_ns - first)),
            after: if k == 0 { Vec::new() } else { vec![k - 1] },
        })
        .collect();
    let (input, output) = turns.iter().fold((0u64, 0u64), |(i, o), t| {
        (i + t.input_tokens as u64, o + t.output_tokens as u64)
    });
    RecordedRequest {
        at: sim_core::SimTime(first),
        input_tokens: input.min(u32::MAX as u64) as u32,
        output_tokens: output.min(u32::MAX as u64) as u32,
        block_hashes: None,
        hash_block_tokens: MOONCAKE_BLOCK_TOKENS,
        graph: Some(std::sync::Arc::new(WorkflowGraph::from_recorded(
            &c.name, &steps,
        ))),
    }
}

/// Reads each class's trace into recorded requests (request traces) or recorded
/// workflows (span traces), sending rows where the trace's rules say.
fn load_traces(
    file: &str,
    scenario: &mut Scenario,
    arrivals: &TraceArrivals,
    notes: &mut Vec<String>,
) -> Result<(), InputError> {
    let base = Path::new(file).parent().unwrap_or(Path::new("."));
    let index = |name: &str| scenario.classes.iter().position(|c| c.name == name);
    let mut receivers: Vec<usize> = arrivals.routed.iter().filter_map(|n| index(n)).collect();
    receivers.extend(arrivals.traces.iter().filter_map(|(n, _)| index(n)));
    // Rows held in memory, per class, in pieces by trace (concatenated in the order the
    // scenario declares its traces before the stable sort by arrival).
    let mut per_class: Vec<Vec<(usize, Vec<RecordedRequest>)>> =
        vec![Vec::new(); scenario.classes.len()];
    // Request traces, and what loading learned about the rows each sends to a class.
    let mut feeds: Vec<crate::trace_stream::Feed> = Vec::new();
    let mut scans: Vec<Vec<(usize, crate::trace_stream::ClassScan)>> =
        vec![Vec::new(); scenario.classes.len()];
    let mut stream_wanted: Vec<Option<bool>> = Vec::new();
    let mut trace_numbers: Vec<usize> = Vec::new();
    // Moves a canary makes in the recorded workflows of each class (none is an error).
    let mut canary_moved = vec![0usize; scenario.classes.len()];
    let takers: BTreeMap<String, usize> = receivers
        .iter()
        .map(|&c| (scenario.classes[c].name.clone(), c))
        .collect();
    let horizon = sim_core::SimTime(scenario.horizon.as_nanos());
    let mut extra_tools = Vec::new();
    for (trace_no, ((class, spec), recorded)) in
        arrivals.traces.iter().zip(&arrivals.recorded).enumerate()
    {
        let key = format!("classes.{class}.arrival");
        let bad = |m: String| InputError::new(file, format!("key `{key}`: {m}"));
        let Some(own) = index(class) else {
            continue;
        };
        let mut read = spec.read_options().map_err(bad)?;
        let mut replay = spec.replay_options(scenario.seed).map_err(bad)?;
        // No pass that would start after the horizon is read (nor replayed).
        replay.until_ns = Some(horizon.as_nanos());
        let loops = replay.loops;
        // Each pass reads the file again: a loop period far below the horizon with many
        // loops would read it millions of times.
        if let Some(p) = replay.loop_period_ns {
            let passes = u64::from(loops).min(horizon.as_nanos().div_ceil(p.max(1)));
            if passes > MAX_PASSES {
                return Err(InputError::new(
                    file,
                    format!(
                        "key `{key}.loop_period`: {} with {loops} loops is {passes} passes over the trace within the horizon ({}); expected at most {MAX_PASSES} (a longer loop_period, or fewer loops)",
                        SimDuration(p),
                        scenario.horizon
                    ),
                ));
            }
        }
        let rules = spec.rule_set().map_err(bad)?;
        let path = spec.path(base);
        let format = match read.format {
            Some(f) => f,
            None => traces::TraceFormat::detect(&path)
                .map_err(|e| InputError::new("", e.to_string()))?,
        };
        read.format = Some(format);
        let mut routed_rows: BTreeMap<usize, u64> = BTreeMap::new();
        // Where the rows go per class, learned by reading the trace once.
        let mut scan: BTreeMap<usize, crate::trace_stream::ClassScan> = BTreeMap::new();
        let workflows = !format.is_request_trace();
        rules.check_fields(!workflows).map_err(bad)?;
        let report = if !workflows {
            if let Some((i, _)) = rules
                .rules
                .iter()
                .enumerate()
                .find(|(_, r)| r.tier.is_some())
            {
                return Err(bad(format!(
                    "rules[{i}].tier: rows of a request trace run the class's own hops; route them to a class whose hop uses that tier with `class = \"...\"`"
                )));
            }
            // Read once without keeping the rows: every row checked and routed, and
            // per class, whether its rows can be streamed into the run.
            let mut it = traces::replay_requests(&path, &read, &replay)
                .map_err(|e| InputError::new("", e.to_string()))?;
            for r in it.by_ref() {
                // Trace errors already name the file and line.
                let r = r.map_err(|e| InputError::new("", e.to_string()))?;
                let labels = rules.labels(&r);
                let target = target_class(
                    labels.class.as_deref(),
                    labels.rule.is_some(),
                    own,
                    &receivers,
                    scenario,
                )
                .map_err(|m| bad(format!("rules[{}]: {m}", labels.rule.unwrap_or(0))))?;
                *routed_rows.entry(target).or_default() += 1;
                let s = scan
                    .entry(target)
                    .or_insert_with(|| crate::trace_stream::ClassScan::new(horizon));
                s.add(
                    sim_core::SimTime(r.arrival_ns),
                    r.session.is_some(),
                    crate::trace_stream::held_request_bytes(&r),
                );
                if r.session.is_none() {
                    s.add_tokens(r.input_tokens, r.output_tokens);
                }
            }
            it.report()
        } else {
            // Read once without keeping the workflows: each is checked, routed and
            // resolved (for the notes and the tools it needs), then dropped.
            let mut it = traces::replay_workflows(&path, &read, &replay)
                .map_err(|e| InputError::new("", e.to_string()))?;
            let mut resolver =
                crate::replay::SpanResolver::new(scenario, own, std::mem::take(&mut extra_tools));
            for wf in it.by_ref() {
                let mut wf = wf.map_err(|e| InputError::new("", e.to_string()))?;
                let rule = rules.labels(&wf).rule;
                rules.apply_to_workflow(&mut wf);
                let target = target_class(
                    wf.class.as_deref(),
                    rule.is_some(),
                    own,
                    &receivers,
                    scenario,
                )
                .map_err(|m| bad(format!("rules[{}]: {m}", rule.unwrap_or(0))))?;
                let target = recorded.keep(&mut wf, rule, target, &takers);
                *routed_rows.entry(target).or_default() += 1;
                let row = crate::trace_stream::recorded_workflow(&mut resolver, &wf, target);
                if let Some((_, cohort)) = scenario.classes[target].canary
                    && let (Some(moves), Some(g)) =
                        (&scenario.classes[cohort].canary_moves, &row.graph)
                {
                    canary_moved[target] += moves.apply(&mut (**g).clone());
                }
                scan.entry(target)
                    .or_insert_with(|| crate::trace_stream::ClassScan::new(horizon))
                    .add(row.at, false, crate::trace_stream::held_workflow_bytes(&wf));
            }
            let c = &resolver.counts;
            let list = |m: &BTreeMap<String, u64>| {
                m.iter()
                    .map(|(k, v)| format!("{k} ({v})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !c.unmatched_tiers.is_empty() {
                notes.push(format!(
                    "{}: model spans whose tier names no tier or pool of the scenario ran on class `{class}`'s first model hop's pool: {}",
                    path.display(),
                    list(&c.unmatched_tiers)
                ));
            }
            if !c.recorded_tools.is_empty() {
                notes.push(format!(
                    "{}: tool spans of tools the scenario does not define waited their recorded time: {}",
                    path.display(),
                    list(&c.recorded_tools)
                ));
            }
            if c.retries_folded > 0 {
                notes.push(format!(
                    "{}: {} retry spans folded into their first attempt (the simulated factory decides retries)",
                    path.display(),
                    c.retries_folded
                ));
            }
            if c.gave_up > 0 {
                notes.push(format!(
                    "{}: {} recorded workflows gave up (a call that did not return was not tried again): replayed with the steps they recorded, the later ones they never ran left out (the simulated factory decides failures)",
                    path.display(),
                    c.gave_up
                ));
            }
            extra_tools = std::mem::take(&mut resolver.extra_tools);
            it.report()
        };
        let feed_no = feeds.len();
        feeds.push(crate::trace_stream::Feed {
            workflows,
            path: path.clone(),
            read,
            replay,
            rules,
            own,
            takers: takers.clone(),
            recorded: recorded.clone(),
        });
        stream_wanted.push(spec.stream);
        trace_numbers.push(trace_no);
        // Rows the run will never reach are said, not dropped silently.
        let rows: u64 = scan.values().map(|sc| sc.rows).sum();
        let before: u64 = scan
            .values()
            .map(|sc| sc.counts.count_before(horizon))
            .sum();
        if rows == 0 {
            notes.push(format!(
                "{}: no rows to replay (an empty trace, or its window, sample or rules left none): class `{class}` gets no arrivals from it",
                path.display()
            ));
        } else if before < rows {
            notes.push(format!(
                "{}: {} of {rows} rows arrive at or after the horizon ({}) and are not replayed",
                path.display(),
                rows - before,
                scenario.horizon
            ));
        }
        for (target, sc) in scan {
            scans[target].push((feed_no, sc));
        }
        if routed_rows.keys().any(|&c| c != own) {
            let shares: Vec<String> = routed_rows
                .iter()
                .map(|(&c, n)| format!("{} {n}", scenario.classes[c].name))
                .collect();
            notes.push(format!(
                "{}: rows by class: {}",
                path.display(),
                shares.join(", ")
            ));
        }
        if report.passes < loops {
            notes.push(format!(
                "{}: loops = {}: {} passes start before the horizon ({}); the rest are not read",
                path.display(),
                loops,
                report.passes,
                scenario.horizon
            ));
        }
        let r = &report.read;
        if r.skipped_rows > 0 {
            notes.push(format!(
                "{}: skipped {} bad rows (first: {})",
                path.display(),
                r.skipped_rows,
                r.first_skipped.clone().unwrap_or_default()
            ));
        }
        let dag = r.orphan_spans + r.duplicate_spans + r.cycles;
        if dag > 0 {
            notes.push(format!(
                "{}: {} orphan spans replayed as extra roots, {} duplicate span ids, {} parent cycles broken",
                path.display(),
                r.orphan_spans,
                r.duplicate_spans,
                r.cycles
            ));
        }
        if r.out_of_order > 0 {
            notes.push(format!(
                "{}: {} rows arrive earlier than the row before them (replayed in time order)",
                path.display(),
                r.out_of_order
            ));
        }
    }
    let added_tools = extra_tools.clone();
    scenario.tools.extend(extra_tools);
    // A class streams its request rows when every trace feeding it allows it and its
    // rows from each are in time order without sessions; otherwise they are read again
    // and held (sorted, sessions grouped).
    // What each trace's rows would take held, over all the classes it feeds.
    let mut feed_held_bytes = vec![0u64; feeds.len()];
    for per in &scans {
        for (f, sc) in per {
            feed_held_bytes[*f] += sc.held_bytes;
        }
    }
    let mut streams: Vec<Option<crate::trace_stream::TraceRows>> =
        (0..scenario.classes.len()).map(|_| None).collect();
    for c in 0..scenario.classes.len() {
        if scans[c].is_empty() {
            continue;
        }
        // Every trace feeding the class allows it, the rows can stream, and either a
        // trace asks for it or holding them would take more than the threshold.
        let allowed = scans[c]
            .iter()
            .all(|(f, sc)| stream_wanted[*f] != Some(false) && sc.streamable());
        let asked = scans[c]
            .iter()
            .any(|(f, _)| stream_wanted[*f] == Some(true));
        let big = scans[c]
            .iter()
            .any(|(f, _)| feed_held_bytes[*f] > crate::trace_stream::STREAM_ABOVE_HELD_BYTES);
        let stream = allowed && (asked || big);
        if asked && !allowed {
            let why = if scans[c].iter().any(|(_, sc)| sc.sessions) {
                "its rows carry session ids"
            } else if scans[c].iter().any(|(_, sc)| sc.unsorted) {
                "its rows are not in time order"
            } else {
                "another trace feeding it says `stream = false`"
            };
            notes.push(format!(
                "class `{}`: rows held in memory although `stream = true`: {why}",
                scenario.classes[c].name
            ));
        }
        if stream {
            let workflows = scans[c].iter().any(|(f, _)| feeds[*f].workflows);
            if workflows && let Some((_, cohort)) = scenario.classes[c].canary {
                // Flat rows run the class's graph, checked at attach; recorded
                // workflows are checked here, as they are not kept.
                let flat = scans[c].iter().any(|(f, _)| !feeds[*f].workflows);
                let moves = scenario.classes[cohort]
                    .canary_moves
                    .clone()
                    .unwrap_or_default();
                let own = if flat {
                    moves.apply(&mut scenario.classes[c].graph.clone())
                } else {
                    0
                };
                if own + canary_moved[c] == 0 {
                    return Err(InputError::new(
                        file,
                        format!(
                            "key `classes.{}.canary`: no node of class `{}` or of its recorded workflows uses the pools or tiers it replaces",
                            scenario.classes[c].name, scenario.classes[c].name
                        ),
                    ));
                }
            }
            let parts = std::mem::take(&mut scans[c])
                .into_iter()
                .map(|(f, sc)| (feeds[f].clone(), sc))
                .collect();
            streams[c] = Some(crate::trace_stream::TraceRows::new(
                c,
                parts,
                added_tools.clone(),
            ));
        }
    }
    for (f, feed) in feeds.iter().enumerate() {
        let held: Vec<usize> = (0..scenario.classes.len())
            .filter(|&c| scans[c].iter().any(|(g, _)| *g == f))
            .collect();
        if held.is_empty() {
            continue;
        }
        let trace_no = trace_numbers[f];
        let (rows, sessions) = hold_rows(feed, &held, scenario, &added_tools)?;
        if !sessions.is_empty() {
            notes.push(format!(
                "{}: {} rows replayed as {} sessions",
                feed.path.display(),
                sessions.values().map(Vec::len).sum::<usize>(),
                sessions.len()
            ));
        }
        let mut rows = rows;
        for ((target, _), mut turns) in sessions {
            turns.sort_by_key(|r| r.arrival_ns);
            rows.entry(target)
                .or_default()
                .push(session_request(scenario, target, &turns));
        }
        for (target, rows) in rows {
            per_class[target].push((trace_no, rows));
        }
    }
    for name in &arrivals.routed {
        if let Some(c) = index(name)
            && per_class[c].is_empty()
            && streams[c].is_none()
        {
            notes.push(format!(
                "class `{name}` is routed, but no trace rule sent it any rows"
            ));
        }
    }
    for (c, mut pieces) in per_class.into_iter().enumerate() {
        if !receivers.contains(&c) {
            continue;
        }
        if let Some(rows) = streams[c].take() {
            scenario
                .attach_stream(
                    c,
                    sim_core::scenario::RecordedStream(std::sync::Arc::new(rows)),
                )
                .map_err(|e| InputError::new(file, e.to_string()))?;
            continue;
        }
        pieces.sort_by_key(|(t, _)| *t);
        let mut requests: Vec<RecordedRequest> =
            pieces.into_iter().flat_map(|(_, rows)| rows).collect();
        // Readers never reorder; the simulator needs arrivals in time order.
        requests.sort_by_key(|r| r.at);
        scenario
            .attach_recorded(c, requests)
            .map_err(|e| InputError::new(file, e.to_string()))?;
    }
    Ok(())
}

/// Rows of one trace kept in memory, for the classes in `held`: flat requests and
/// recorded workflows by class, and request rows with a session id by (class, session).
#[allow(clippy::type_complexity)]
fn hold_rows(
    feed: &crate::trace_stream::Feed,
    held: &[usize],
    scenario: &Scenario,
    added_tools: &[sim_core::scenario::Tool],
) -> Result<
    (
        BTreeMap<usize, Vec<RecordedRequest>>,
        BTreeMap<(usize, String), Vec<traces::RequestRecord>>,
    ),
    InputError,
> {
    let mut rows: BTreeMap<usize, Vec<RecordedRequest>> = BTreeMap::new();
    let mut sessions: BTreeMap<(usize, String), Vec<traces::RequestRecord>> = BTreeMap::new();
    if feed.workflows {
        let it = traces::replay_workflows(&feed.path, &feed.read, &feed.replay)
            .map_err(|e| InputError::new("", e.to_string()))?;
        let mut resolver = crate::replay::SpanResolver::for_run(scenario, feed.own, added_tools);
        for wf in it {
            let mut wf = wf.map_err(|e| InputError::new("", e.to_string()))?;
            let target = feed.route_workflow(&mut wf);
            if held.contains(&target) {
                rows.entry(target)
                    .or_default()
                    .push(crate::trace_stream::recorded_workflow(
                        &mut resolver,
                        &wf,
                        target,
                    ));
            }
        }
        return Ok((rows, sessions));
    }
    let it = traces::replay_requests(&feed.path, &feed.read, &feed.replay)
        .map_err(|e| InputError::new("", e.to_string()))?;
    for r in it {
        let r = r.map_err(|e| InputError::new("", e.to_string()))?;
        let target = feed.target(&r);
        if !held.contains(&target) {
            continue;
        }
        match &r.session {
            Some(s) => sessions.entry((target, s.clone())).or_default().push(r),
            None => rows
                .entry(target)
                .or_default()
                .push(crate::trace_stream::recorded(r)),
        }
    }
    Ok((rows, sessions))
}

/// Reads `path`, applies `sets` (each `key.path=value`) and validates.
pub fn load_scenario(path: &Path, sets: &[String]) -> Result<LoadedScenario, InputError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError::new(&file, format!("cannot read scenario file: {e}")))?;
    parse_scenario(&file, &text, sets)
}

/// Parses scenario text; `file` is only used in messages.
pub fn parse_scenario(
    file: &str,
    text: &str,
    sets: &[String],
) -> Result<LoadedScenario, InputError> {
    let original: toml::Table = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
    let mut table = original.clone();
    // Overrides first, so that they reach trace options too
    // (`--set classes.chat.arrival.rate=2`).
    for s in sets {
        // A misspelt pool, tool, lane or tier name would make a new table that nothing
        // uses, and the run would go on unchanged: refused, with the names defined.
        if let Some(why) = s
            .split_once('=')
            .and_then(|(path, _)| crate::compare::creates_undefined(&original, path.trim()))
        {
            return Err(InputError::new(file, format!("--set {why}")));
        }
        apply_set(&mut table, s).map_err(|m| InputError::new(file, m))?;
    }
    let csv_notes = crate::empirical_csv::resolve(file, &mut table)?;
    let arrivals = extract_traces(file, &mut table)?;
    let spec: ScenarioSpec = if sets.is_empty()
        && csv_notes.is_empty()
        && arrivals.traces.is_empty()
        && arrivals.routed.is_empty()
    {
        // Straight from the text, so that errors carry line and column.
        toml::from_str(text).map_err(|e| toml_error(file, text, &e))?
    } else {
        let regenerated = toml::to_string(&table)
            .map_err(|e| InputError::new(file, format!("after --set overrides: {e}")))?;
        toml::from_str(&regenerated).map_err(|e| {
            let msg = e.message().trim().to_string();
            if sets.is_empty() {
                // Trace arrivals only: the message still names the key.
                InputError::new(file, msg)
            } else {
                match first_bad_set(file, &original, sets) {
                    // A typo in a name makes a new, incomplete table: say so, not
                    // what that table lacks.
                    Some(set) => match set
                        .split_once('=')
                        .and_then(|(path, _)| crate::compare::creates_undefined(&original, path))
                    {
                        Some(why) => InputError::new(file, format!("--set {why}")),
                        None => InputError::new(file, format!("--set `{set}`: {msg}")),
                    },
                    None => InputError::new(file, format!("after --set overrides: {msg}")),
                }
            }
        })?
    };
    let mut scenario = spec
        .validate()
        .map_err(|e| InputError::new(file, locate_key(text, &e.key, e.to_string())))?;
    let mut notes = csv_notes;
    load_traces(file, &mut scenario, &arrivals, &mut notes)?;
    notes.extend(crate::capacity::scenario_notes(&scenario));
    // A long horizon sampled every minute writes a huge time series: say so.
    let rows = scenario.horizon.as_nanos() / scenario.sample_every.as_nanos().max(1);
    if rows > 1_000_000 {
        notes.push(format!(
            "the time series has {rows} rows (horizon {} sampled every {}): set simulation.sample_every (e.g. \"1h\") for fewer",
            scenario.horizon, scenario.sample_every
        ));
    }
    let gates = spec
        .gates
        .iter()
        .enumerate()
        .map(|(i, g)| {
            crate::gates::parse_gate_from(g, &format!("key `gates[{i}]`"))
                .map_err(|m| InputError::new(file, locate_key(text, "gates", m)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LoadedScenario {
        file: file.to_string(),
        spec,
        scenario,
        notes,
        gates,
    })
}

/// The first override after which the scenario no longer deserialises (the schema
/// error's message names the expected type, not where the bad value came from).
/// Only called on the error path, so re-reading CSV columns here costs nothing in a
/// good run.
fn first_bad_set<'a>(file: &str, original: &toml::Table, sets: &'a [String]) -> Option<&'a str> {
    let parses = |n: usize| -> bool {
        let mut t = original.clone();
        for s in &sets[..n] {
            if apply_set(&mut t, s).is_err() {
                return false;
            }
        }
        if crate::empirical_csv::resolve(file, &mut t).is_err()
            || extract_traces(file, &mut t).is_err()
        {
            return false;
        }
        toml::to_string(&t)
            .ok()
            .is_some_and(|r| toml::from_str::<ScenarioSpec>(&r).is_ok())
    };
    if !parses(0) {
        return None;
    }
    (1..=sets.len())
        .find(|&n| !parses(n))
        .map(|n| sets[n - 1].as_str())
}

/// `file:line:col: message` from a TOML error.
fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> InputError {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            InputError::new(format!("{file}:{line}:{col}"), msg)
        }
        None => InputError::new(file, msg),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// Prefixes the line where the key is written, when it can be found unambiguously:
/// inside the `[table]` section named by the longest prefix of the key path.
fn locate_key(text: &str, key: &str, message: String) -> String {
    let segments: Vec<&str> = key
        .split('.')
        .map(|s| s.split('[').next().unwrap_or(s))
        .collect();
    let Some(leaf) = segments.last() else {
        return message;
    };
    let lines: Vec<&str> = text.lines().collect();
    // The section to search: from its header to the next header.
    let mut range = 0..lines.len();
    for n in (1..segments.len()).rev() {
        let header = format!("[{}]", segments[..n].join("."));
        if let Some(start) = lines.iter().position(|l| l.trim() == header) {
            let end = lines[start + 1..]
                .iter()
                .position(|l| l.trim_start().starts_with('['))
                .map(|i| start + 1 + i)
                .unwrap_or(lines.len());
            range = start..end;
            break;
        }
    }
    let hits: Vec<usize> = range
        .filter(|&i| assigns(lines[i], leaf))
        .map(|i| i + 1)
        .collect();
    if hits.len() == 1 {
        return format!("line {}: {message}", hits[0]);
    }
    // A key that is a table of its own (`[profiles.gpus.my-gpu]`): its header's line.
    let header = format!("[{key}]");
    match lines.iter().position(|l| l.trim() == header) {
        Some(i) if hits.is_empty() => format!("line {}: {message}", i + 1),
        _ => message,
    }
}

/// Whether `line` assigns `key` (`key = ...` at the start or inside an inline table).
fn assigns(line: &str, key: &str) -> bool {
    let code = line.split('#').next().unwrap_or(line);
    let mut from = 0;
    while let Some(pos) = code[from..].find(key) {
        let at = from + pos;
        let before_ok = code[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c == ' ' || c == '{' || c == ',' || c == '\t');
        let after = code[at + key.len()..].trim_start();
        if before_ok && after.starts_with('=') && !after.starts_with("==") {
            return true;
        }
        from = at + key.len();
    }
    false
}

/// Applies one `key.path=value` override. The value is read as a TOML value
/// (number, boolean, string, inline table, array); anything else is taken as a string.
pub fn apply_set(table: &mut toml::Table, set: &str) -> Result<(), String> {
    let Some((path, raw)) = set.split_once('=') else {
        return Err(format!(
            "--set `{set}`: expected key.path=value, e.g. pools.gpu.servers=4"
        ));
    };
    let path = path.trim();
    if path.is_empty() {
        return Err(format!("--set `{set}`: the key path is empty"));
    }
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let parts: Vec<&str> = path.split('.').collect();
    let mut root = toml::Value::Table(std::mem::take(table));
    let result = set_path(&mut root, &parts, value, set);
    if let toml::Value::Table(t) = root {
        *table = t;
    }
    result
}

fn set_path(
    cur: &mut toml::Value,
    parts: &[&str],
    value: toml::Value,
    set: &str,
) -> Result<(), String> {
    let Some((part, rest)) = parts.split_first() else {
        *cur = value;
        return Ok(());
    };
    match cur {
        toml::Value::Table(t) => {
            let child = t
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if rest.is_empty() {
                *child = value;
                Ok(())
            } else {
                set_path(child, rest, value, set)
            }
        }
        toml::Value::Array(a) => {
            let idx: usize = part.parse().map_err(|_| {
                format!("--set `{set}`: `{part}` indexes an array, expected a number")
            })?;
            let len = a.len();
            let slot = a.get_mut(idx).ok_or_else(|| {
                format!("--set `{set}`: index {idx} is out of range (the array has {len} items)")
            })?;
            set_path(slot, rest, value, set)
        }
        _ => Err(format!(
            "--set `{set}`: `{part}` is inside a value, not a table"
        )),
    }
}

/// The option of a trace arrival that fails to parse, and why: each is tried alone
/// beside a stand-in `file`, so that the message names the key (a whole table's error
/// from `toml` does not say which field a bad enum value was in).
fn trace_option_at_fault(options: &toml::Table) -> Option<(String, String)> {
    options.iter().find_map(|(k, v)| {
        let mut probe = toml::Table::new();
        probe.insert("file".into(), toml::Value::String("probe".into()));
        probe.insert(k.clone(), v.clone());
        toml::Value::Table(probe)
            .try_into::<traces::TraceSpec>()
            .err()
            .map(|e| (k.clone(), e.message().trim().to_string()))
    })
}

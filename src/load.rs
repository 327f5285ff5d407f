//! Reading a scenario file: TOML parsing, `--set key.path=value` overrides, validation.
//! Every error names the file, the line or key, and what was expected.

use sim_core::{Scenario, ScenarioSpec};
use std::path::Path;

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
}

/// Tokens per Mooncake prefix-hash block.
const MOONCAKE_BLOCK_TOKENS: u32 = 512;

/// Takes `process = "trace"` arrivals out of the table (the rest of the scenario schema
/// does not know trace options) and replaces them with `process = "recorded"`.
fn extract_traces(
    file: &str,
    table: &mut toml::Table,
) -> Result<Vec<(String, traces::TraceSpec)>, InputError> {
    let mut found = Vec::new();
    let Some(toml::Value::Table(classes)) = table.get_mut("classes") else {
        return Ok(found);
    };
    for (name, class) in classes.iter_mut() {
        let Some(arrival) = class.get_mut("arrival").and_then(|a| a.as_table_mut()) else {
            continue;
        };
        match arrival.get("process").and_then(|p| p.as_str()) {
            Some("trace") => {}
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
        let spec: traces::TraceSpec =
            toml::Value::Table(options)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    InputError::new(
                        file,
                        format!("key `classes.{name}.arrival`: {}", e.message().trim()),
                    )
                })?;
        arrival.clear();
        arrival.insert("process".into(), toml::Value::String("recorded".into()));
        found.push((name.clone(), spec));
    }
    Ok(found)
}

/// Reads each class's trace into recorded requests.
fn load_traces(
    file: &str,
    scenario: &mut Scenario,
    traces_by_class: &[(String, traces::TraceSpec)],
    notes: &mut Vec<String>,
) -> Result<(), InputError> {
    let base = Path::new(file).parent().unwrap_or(Path::new("."));
    for (class, spec) in traces_by_class {
        let key = format!("classes.{class}.arrival");
        let bad = |m: String| InputError::new(file, format!("key `{key}`: {m}"));
        let read = spec.read_options().map_err(bad)?;
        let replay = spec.replay_options(scenario.seed).map_err(bad)?;
        let path = spec.path(base);
        let mut it = traces::replay_requests(&path, &read, &replay)
            .map_err(|e| InputError::new("", e.to_string()))?;
        let mut requests = Vec::new();
        for r in it.by_ref() {
            // Trace errors already name the file and line.
            let r = r.map_err(|e| InputError::new("", e.to_string()))?;
            requests.push(sim_core::scenario::RecordedRequest {
                at: sim_core::SimTime(r.arrival_ns),
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                block_hashes: r.block_hashes.map(std::sync::Arc::from),
                hash_block_tokens: MOONCAKE_BLOCK_TOKENS,
            });
        }
        let report = it.report();
        if report.read.skipped_rows > 0 {
            notes.push(format!(
                "{}: skipped {} bad rows (first: {})",
                path.display(),
                report.read.skipped_rows,
                report.read.first_skipped.clone().unwrap_or_default()
            ));
        }
        if report.read.out_of_order > 0 {
            notes.push(format!(
                "{}: {} rows arrive earlier than the row before them (replayed in time order)",
                path.display(),
                report.read.out_of_order
            ));
        }
        // Readers never reorder; the simulator needs arrivals in time order.
        requests.sort_by_key(|r| r.at);
        if let Some(c) = scenario.classes.iter_mut().find(|c| &c.name == class) {
            c.arrival = sim_core::scenario::Arrival::Recorded {
                requests: std::sync::Arc::new(requests),
            };
        }
    }
    Ok(())
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
    let mut table: toml::Table = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
    let traces_by_class = extract_traces(file, &mut table)?;
    let spec: ScenarioSpec = if sets.is_empty() && traces_by_class.is_empty() {
        // Straight from the text, so that errors carry line and column.
        toml::from_str(text).map_err(|e| toml_error(file, text, &e))?
    } else {
        for s in sets {
            apply_set(&mut table, s).map_err(|m| InputError::new(file, m))?;
        }
        let regenerated = toml::to_string(&table)
            .map_err(|e| InputError::new(file, format!("after --set overrides: {e}")))?;
        toml::from_str(&regenerated).map_err(|e| {
            let when = if sets.is_empty() {
                "" // trace arrivals only: the message still names the key
            } else {
                "after --set overrides: "
            };
            InputError::new(file, format!("{when}{}", e.message().trim()))
        })?
    };
    let mut scenario = spec
        .validate()
        .map_err(|e| InputError::new(file, locate_key(text, &e.key, e.to_string())))?;
    let mut notes = Vec::new();
    load_traces(file, &mut scenario, &traces_by_class, &mut notes)?;
    Ok(LoadedScenario {
        file: file.to_string(),
        spec,
        scenario,
        notes,
    })
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
        format!("line {}: {message}", hits[0])
    } else {
        message
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

//! Empirical distributions read from a CSV column:
//! `{ dist = "empirical", csv = "latencies.csv", column = "latency_ms", scale = 0.001 }`.
//!
//! Resolved when the scenario is loaded: the column's values replace `csv`, `column` and
//! `scale` by `values = [...]`, so the engine only ever sees a list (and a scenario
//! written for sim-core directly keeps rejecting unknown keys). Paths are relative to
//! the scenario file; `.gz` files are read transparently.

use crate::load::InputError;
use sim_core::SimDuration;
use std::path::Path;

/// What resolving found: one note per column read (how many values, how many empty
/// cells skipped), for the run's notes.
pub type Notes = Vec<String>;

/// Replaces every `csv` empirical distribution in `table` by its values. `file` is the
/// scenario file (for relative paths and messages).
pub fn resolve(file: &str, table: &mut toml::Table) -> Result<Notes, InputError> {
    let base = Path::new(file).parent().unwrap_or(Path::new("."));
    let mut notes = Vec::new();
    let mut path = Vec::new();
    walk_table(file, base, table, &mut path, &mut notes)?;
    Ok(notes)
}

fn walk_table(
    file: &str,
    base: &Path,
    table: &mut toml::Table,
    path: &mut Vec<String>,
    notes: &mut Notes,
) -> Result<(), InputError> {
    let is_csv_empirical = table.get("dist").and_then(|d| d.as_str()) == Some("empirical")
        && table.contains_key("csv");
    if is_csv_empirical {
        return resolve_one(file, base, table, &path.join("."), notes);
    }
    for (k, v) in table.iter_mut() {
        path.push(k.clone());
        walk_value(file, base, v, path, notes)?;
        path.pop();
    }
    Ok(())
}

fn walk_value(
    file: &str,
    base: &Path,
    v: &mut toml::Value,
    path: &mut Vec<String>,
    notes: &mut Notes,
) -> Result<(), InputError> {
    match v {
        toml::Value::Table(t) => walk_table(file, base, t, path, notes),
        toml::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                path.push(i.to_string());
                walk_value(file, base, x, path, notes)?;
                path.pop();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn resolve_one(
    file: &str,
    base: &Path,
    table: &mut toml::Table,
    key: &str,
    notes: &mut Notes,
) -> Result<(), InputError> {
    let err = |detail: String| InputError::new(file, format!("`{key}`: {detail}"));
    if table.contains_key("values") {
        return Err(err(
            "an empirical distribution takes either `values` or `csv`, not both".into(),
        ));
    }
    for k in table.keys() {
        if !["dist", "csv", "column", "scale"].contains(&k.as_str()) {
            return Err(err(format!(
                "unknown key `{k}` (expected `csv`, `column` and optionally `scale`)"
            )));
        }
    }
    let csv_path = table
        .get("csv")
        .and_then(|v| v.as_str())
        .ok_or_else(|| err("`csv` must be a file path (a string)".into()))?
        .to_string();
    let column = table
        .get("column")
        .ok_or_else(|| err("`column` is required with `csv` (the header name)".into()))?
        .as_str()
        .ok_or_else(|| err("`column` must be a header name (a string)".into()))?
        .to_string();
    let scale = match table.get("scale") {
        None => 1.0,
        Some(v) => match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
            Some(s) if s.is_finite() && s > 0.0 => s,
            _ => return Err(err(format!("`scale` must be a number > 0, got {v}"))),
        },
    };
    let full = base.join(&csv_path);
    let (values, empty) = read_column(&full, &column).map_err(err)?;
    notes.push(format!(
        "{key}: {} values from column `{column}` of {}{}",
        values.len(),
        full.display(),
        if empty > 0 {
            format!(" ({empty} empty cells skipped)")
        } else {
            String::new()
        }
    ));
    table.remove("csv");
    table.remove("column");
    table.remove("scale");
    table.insert(
        "values".into(),
        toml::Value::Array(
            values
                .into_iter()
                .map(|x| toml::Value::Float(x * scale))
                .collect(),
        ),
    );
    Ok(())
}

/// The values of `column` (numbers, or durations such as "800ms" in seconds) and the
/// count of empty cells. Errors name the CSV file and line.
pub fn read_column(path: &Path, column: &str) -> Result<(Vec<f64>, u64), String> {
    let shown = path.display();
    let reader = traces::io::open_reader(path).map_err(|e| format!("{e}"))?;
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(reader);
    let headers = rdr
        .headers()
        .map_err(|e| format!("{shown}: cannot read the header line: {e}"))?
        .clone();
    let Some(idx) = headers.iter().position(|h| h.trim() == column) else {
        return Err(format!(
            "{shown}: no column `{column}` (the header has: {})",
            headers.iter().collect::<Vec<_>>().join(", ")
        ));
    };
    let mut values = Vec::new();
    let mut empty = 0;
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            format!("{shown}:{line}: {e}")
        })?;
        let line = rec.position().map_or(0, |p| p.line());
        let cell = rec.get(idx).unwrap_or("").trim();
        if cell.is_empty() {
            empty += 1;
            continue;
        }
        let x = match cell.parse::<f64>() {
            Ok(x) => x,
            Err(_) => SimDuration::parse(cell)
                .map(|d| d.as_secs_f64())
                .map_err(|_| {
                    format!(
                        "{shown}:{line}: column `{column}`: expected a number or a duration \
                         such as \"800ms\", got {cell:?}"
                    )
                })?,
        };
        if !x.is_finite() || x < 0.0 {
            return Err(format!(
                "{shown}:{line}: column `{column}`: expected a finite number >= 0, got {cell}"
            ));
        }
        values.push(x);
    }
    if values.is_empty() {
        return Err(format!("{shown}: column `{column}` has no values"));
    }
    Ok((values, empty))
}

#[cfg(test)]
mod tests {
    use crate::load_scenario;
    use std::path::{Path, PathBuf};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
        p
    }

    fn load_err(dir: &Path, scenario: &str) -> String {
        let p = write(dir, "s.toml", scenario);
        match load_scenario(&p, &[]) {
            Ok(_) => panic!("expected an error for:\n{scenario}"),
            Err(e) => e.to_string(),
        }
    }

    const HEAD: &str = "[simulation]\nhorizon = \"200s\"\n";

    #[test]
    fn a_shipped_trace_column_becomes_the_token_distribution() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let csv = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("traces/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv");
        // The expected mean, computed independently of the csv crate.
        let text = std::fs::read_to_string(&csv).unwrap_or_else(|e| panic!("{e}"));
        let col: Vec<f64> = text
            .lines()
            .skip(1)
            .map(|l| {
                l.split(',')
                    .nth(1)
                    .unwrap_or("x")
                    .parse()
                    .unwrap_or(f64::NAN)
            })
            .collect();
        assert_eq!(col.len(), 19_366);
        let mean = col.iter().sum::<f64>() / col.len() as f64;
        let p = write(
            dir.path(),
            "s.toml",
            &format!(
                "{HEAD}[pools.gpu]\nservers = 2\nservice = {{ dist = \"constant\", value = \"1s\" }}\n\
                 [classes.chat]\narrival = {{ process = \"poisson\", rate = 1.0 }}\n\
                 nodes = [{{ id = \"answer\", pool = \"gpu\", input_tokens = {{ dist = \"empirical\", \
                 csv = {:?}, column = \"ContextTokens\" }} }}]\n",
                csv.display().to_string()
            ),
        );
        let loaded = load_scenario(&p, &[]).unwrap_or_else(|e| panic!("{e}"));
        let s = loaded.scenario.classes[0].graph.nodes[0]
            .input_tokens
            .as_ref()
            .unwrap_or_else(|| panic!("no input_tokens sampler"));
        assert!(
            (s.mean() - mean).abs() < 1e-9 * mean,
            "{} vs {mean}",
            s.mean()
        );
        assert!(
            loaded
                .notes
                .iter()
                .any(|n| n.contains("19366 values from column `ContextTokens`")),
            "{:?}",
            loaded.notes
        );
    }

    #[test]
    fn durations_numbers_scale_and_empty_cells() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write(
            dir.path(),
            "lat.csv",
            "call,latency,other\na,2s,1\nb,,2\nc,2000ms,3\nd,2,4\n",
        );
        write(dir.path(), "ms.csv", "latency_ms\n500\n1500\n");
        // Every call takes exactly 2 s (three ways of writing it): with a server per
        // workflow, every latency is exactly 2 s.
        let p = write(
            dir.path(),
            "s.toml",
            &format!(
                "{HEAD}[pools.tool]\nservers = 1000\n\
                 service = {{ dist = \"empirical\", csv = \"lat.csv\", column = \"latency\" }}\n\
                 [pools.fast]\nservers = 1000\n\
                 service = {{ dist = \"empirical\", csv = \"ms.csv\", column = \"latency_ms\", scale = 0.001 }}\n\
                 [classes.calls]\narrival = {{ process = \"poisson\", rate = 2.0 }}\n\
                 hops = [{{ pool = \"tool\" }}]\n"
            ),
        );
        let loaded = load_scenario(&p, &[]).unwrap_or_else(|e| panic!("{e}"));
        let fast = loaded.scenario.pools[0].service.as_ref();
        assert!((fast.map_or(0.0, |s| s.mean()) - 1.0).abs() < 1e-12);
        assert!(
            loaded
                .notes
                .iter()
                .any(|n| n.contains("3 values") && n.contains("(1 empty cells skipped)")),
            "{:?}",
            loaded.notes
        );
        let sum = crate::simulate(&loaded.scenario, None).summary();
        let c = &sum.classes["calls"];
        assert!(c.completed > 300, "{}", c.completed);
        // The mean is exact; percentiles carry the histogram's 0.1% precision.
        let mean = c.latency_s.mean.unwrap_or(0.0);
        assert!((mean - 2.0).abs() < 1e-9, "{mean}");
        for q in [c.latency_s.p50, c.latency_s.max] {
            assert!((q.unwrap_or(0.0) - 2.0).abs() <= 2.0 * 1e-3, "{q:?}");
        }
    }

    #[test]
    fn bad_columns_and_cells_name_the_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write(dir.path(), "lat.csv", "latency\n1s\nslow\n");
        let scenario = |dist: &str| {
            format!(
                "{HEAD}[pools.tool]\nservers = 1\nservice = {dist}\n\
                 [classes.calls]\narrival = {{ process = \"poisson\", rate = 0.1 }}\n\
                 hops = [{{ pool = \"tool\" }}]\n"
            )
        };
        let cases = [
            (
                r#"{ dist = "empirical", csv = "lat.csv", column = "latency" }"#,
                vec![
                    "pools.tool.service",
                    "lat.csv:3",
                    "\"slow\"",
                    "a number or a duration",
                ],
            ),
            (
                r#"{ dist = "empirical", csv = "lat.csv", column = "ms" }"#,
                vec!["pools.tool.service", "no column `ms`", "latency"],
            ),
            (
                r#"{ dist = "empirical", csv = "missing.csv", column = "ms" }"#,
                vec!["pools.tool.service", "missing.csv"],
            ),
            (
                r#"{ dist = "empirical", csv = "lat.csv" }"#,
                vec!["pools.tool.service", "`column` is required"],
            ),
            (
                r#"{ dist = "empirical", csv = "lat.csv", column = "latency", values = [1] }"#,
                vec!["either `values` or `csv`"],
            ),
            (
                r#"{ dist = "empirical", csv = "lat.csv", column = "latency", scale = -1 }"#,
                vec!["`scale` must be a number > 0"],
            ),
            (
                r#"{ dist = "empirical", csv = "lat.csv", column = "latency", colum = "x" }"#,
                vec!["unknown key `colum`"],
            ),
        ];
        for (dist, needles) in cases {
            let msg = load_err(dir.path(), &scenario(dist));
            assert!(msg.contains("s.toml"), "{msg}");
            for n in needles {
                assert!(msg.contains(n), "{dist}: `{n}` not in: {msg}");
            }
        }
    }
}

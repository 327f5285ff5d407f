//! The CSV files `factorysim run` writes next to summary.json: `timeseries.csv` (per
//! sampling interval) and `showback.csv` (per tenant). Formats: docs/output.md.

use sim_core::Summary;
use sim_core::metrics::{RunResult, WorkflowOutcome};
use std::path::Path;

/// Errors writing an output file.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Csv { path: String, source: csv::Error },
}

fn csv_err(path: &Path) -> impl Fn(csv::Error) -> OutputError + '_ {
    move |source| OutputError::Csv {
        path: path.display().to_string(),
        source,
    }
}

/// Pretty JSON (two-space indent, as `serde_json::to_string_pretty`) with negative zero
/// written as `0.0`: a sum of nothing (no tools, no API calls) is a plain zero in every
/// output file.
pub fn to_json_pretty<T: serde::Serialize + ?Sized>(v: &T) -> serde_json::Result<String> {
    use serde_json::ser::{Formatter, PrettyFormatter};
    use std::io::{self, Write};
    struct NoNegativeZero<'a>(PrettyFormatter<'a>);
    impl Formatter for NoNegativeZero<'_> {
        fn write_f64<W: ?Sized + Write>(&mut self, w: &mut W, v: f64) -> io::Result<()> {
            self.0.write_f64(w, if v == 0.0 { 0.0 } else { v })
        }
        fn write_f32<W: ?Sized + Write>(&mut self, w: &mut W, v: f32) -> io::Result<()> {
            self.0.write_f32(w, if v == 0.0 { 0.0 } else { v })
        }
        fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.begin_array(w)
        }
        fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.end_array(w)
        }
        fn begin_array_value<W: ?Sized + Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> io::Result<()> {
            self.0.begin_array_value(w, first)
        }
        fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.end_array_value(w)
        }
        fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.begin_object(w)
        }
        fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.end_object(w)
        }
        fn begin_object_key<W: ?Sized + Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> io::Result<()> {
            self.0.begin_object_key(w, first)
        }
        fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.begin_object_value(w)
        }
        fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
            self.0.end_object_value(w)
        }
    }
    let mut buf = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut buf, NoNegativeZero(PrettyFormatter::new()));
    v.serialize(&mut ser)?;
    // serde_json writes valid UTF-8.
    Ok(String::from_utf8(buf).unwrap_or_default())
}

/// A CSV number; negative zero (a sum of nothing) is written `0`.
fn num(v: f64) -> String {
    (v + 0.0).to_string()
}

fn opt(x: Option<f64>) -> String {
    x.map(num).unwrap_or_default()
}

/// `timeseries.csv` as a string: one row per sampling interval of the run.
pub fn timeseries_csv(r: &RunResult) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = [
        "t_s",
        "arrivals",
        "completions",
        "failed",
        "abandoned",
        "in_flight",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for p in &r.pool_names {
        header.push(format!("{p}_in_system"));
        header.push(format!("{p}_utilization"));
        header.push(format!("{p}_servers"));
    }
    header.push("usd".into());
    // Columns added later go after `usd`, so readers by position keep working.
    let gpu: Vec<bool> = (0..r.pool_names.len())
        .map(|i| r.gpu_reports.get(i).is_some_and(Option::is_some))
        .collect();
    for p in &r.pool_names {
        header.push(format!("{p}_queued"));
    }
    for (p, _) in r.pool_names.iter().zip(&gpu).filter(|x| *x.1) {
        header.push(format!("{p}_kv_occupancy"));
        header.push(format!("{p}_tokens_in_flight"));
    }
    header.push("rejected".into());
    w.write_record(&header)?;
    for row in &r.timeseries {
        let mut rec = vec![
            row.t_s.to_string(),
            row.arrivals.to_string(),
            row.completions.to_string(),
            row.failed.to_string(),
            row.abandoned.to_string(),
            row.in_flight.to_string(),
        ];
        for i in 0..r.pool_names.len() {
            match row.pools.get(i) {
                Some(p) => {
                    rec.push(p.in_system.to_string());
                    rec.push(num(p.utilization));
                    rec.push(p.servers.to_string());
                }
                None => rec.extend([String::new(), String::new(), String::new()]),
            }
        }
        rec.push(num(row.usd));
        for i in 0..r.pool_names.len() {
            rec.push(
                row.pools
                    .get(i)
                    .map_or(String::new(), |p| p.queued.to_string()),
            );
        }
        for (i, _) in gpu.iter().enumerate().filter(|x| *x.1) {
            let p = row.pools.get(i);
            rec.push(opt(p.and_then(|p| p.kv_occupancy)));
            rec.push(
                p.and_then(|p| p.tokens_in_flight)
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            );
        }
        rec.push(row.rejected.to_string());
        w.write_record(&rec)?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `showback.csv` as a string: one row per tenant, with its cost centre.
pub fn showback_csv(s: &Summary) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "tenant",
        "cost_centre",
        "classes",
        "workflows",
        "completed",
        "success_rate",
        "tokens",
        "usd",
        "usd_per_outcome",
        "usd_api",
        "usd_api_input",
        "usd_api_cached_input",
        "usd_api_output",
    ])?;
    for (name, t) in &s.tenants {
        w.write_record([
            name.clone(),
            t.cost_centre.clone(),
            t.classes.join(";"),
            t.workflows.to_string(),
            t.completed.to_string(),
            opt(t.success_rate),
            t.tokens.to_string(),
            num(t.usd),
            opt(t.usd_per_outcome),
            num(t.usd_api),
            num(t.usd_api_split.input),
            num(t.usd_api_split.cached_input),
            num(t.usd_api_split.output),
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `workflows.csv` as a string: one row per workflow that arrived after the warm-up
/// (`RunResult::workflows`, kept with `RunOptions::keep_workflows`), class by class, in
/// the order their outcomes were decided, those in flight at the end last.
pub fn workflows_csv(r: &RunResult) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "class",
        "tenant",
        "completion",
        "latency_s",
        "usd",
        "tokens",
        "within_slo",
        "workflow",
        "outcome",
        "cause",
        "arrived_s",
        "decided_s",
    ])?;
    for (ci, c) in r.classes.iter().enumerate() {
        let mut completion = 0u64;
        for wf in r.workflows.iter().filter(|w| w.class == ci) {
            let completed = wf.outcome == WorkflowOutcome::Completed;
            completion += u64::from(completed);
            let latency = wf.decided.map(|d| d - wf.arrived);
            w.write_record([
                c.name.clone(),
                c.tenant.clone(),
                if completed {
                    completion.to_string()
                } else {
                    String::new()
                },
                latency.map(|l| num(l.as_secs_f64())).unwrap_or_default(),
                num(wf.usd),
                wf.tokens.to_string(),
                // SLO attainment is the share of arrivals completed within the target:
                // anything else is a miss.
                c.slo
                    .map(|s| (completed && latency.is_some_and(|l| l <= s)).to_string())
                    .unwrap_or_default(),
                wf.workflow.to_string(),
                wf.outcome.as_str().to_string(),
                wf.cause.clone(),
                num(wf.arrived.as_secs_f64()),
                wf.decided.map(|d| num(d.as_secs_f64())).unwrap_or_default(),
            ])?;
        }
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Writes `workflows.csv` into `dir`; returns its path.
pub fn write_workflows_csv(dir: &Path, r: &RunResult) -> Result<std::path::PathBuf, OutputError> {
    let path = dir.join("workflows.csv");
    let text = workflows_csv(r).map_err(csv_err(&path))?;
    std::fs::write(&path, text).map_err(|source| OutputError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(path)
}

/// Writes `timeseries.csv` and `showback.csv` into `dir`; returns the paths written.
pub fn write_csvs(
    dir: &Path,
    r: &RunResult,
    s: &Summary,
) -> Result<Vec<std::path::PathBuf>, OutputError> {
    let mut written = Vec::new();
    for (name, text) in [
        ("timeseries.csv", timeseries_csv(r)),
        ("showback.csv", showback_csv(s)),
    ] {
        let path = dir.join(name);
        let text = text.map_err(csv_err(&path))?;
        std::fs::write(&path, text).map_err(|source| OutputError::Io {
            path: path.display().to_string(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

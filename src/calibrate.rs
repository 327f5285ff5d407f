//! `factorysim calibrate`: fits the calibrated performance model to measured prefill
//! and decode times, writes the coefficients that `sim-core` ships, and regenerates the
//! validation table (`docs/validation.md`) comparing both performance models with every
//! measured point.
//!
//! Method (also stated at the top of the generated table):
//! 1. Read the Splitwise CSV; rows for a model or GPU without a built-in profile are
//!    skipped and counted (the power-capped `h100-80gb-pcap` runs).
//! 2. Median of repeated rows per point (model, GPU, TP, prompt size, batch size,
//!    output tokens).
//! 3. Anomaly rule: more work never takes less time. Within a series of points that
//!    differ only in batch size, only in prompt size, or only in output length, a point
//!    whose time is below [`ANOMALY_RATIO`] (75%) of the largest time measured for less
//!    work in that series is anomalous: prefill time in batch and prompt series, decode
//!    time in all three. An anomalous point is dropped from both fits (its prefill and
//!    decode come from the same run) and from the error figures, but is still listed.
//! 4. Per (model, GPU, TP), fit prefill = a + b*T + c*T^2/S + g*(S-1) and decode =
//!    d + e*B + f*K by iteratively reweighted least squares that minimises the mean
//!    absolute *relative* error (the MAPE the targets are stated in), with every
//!    coefficient constrained to be >= 0 (a negative one is dropped and the rest
//!    refitted). T = prompt * batch, S = batch, B = batch, K = batch * (prompt +
//!    output / 2): the mean context over the decode phase.

use clap::Args;
use sim_core::SimDuration;
use sim_core::gpu::perf::{
    BUILTIN_CALIBRATION_TOML, CalibratedCoefficients, CalibratedPerf, CalibrationTable,
    RooflinePerf,
};
use sim_core::gpu::profiles::ProfileCatalog;
use sim_core::gpu::{IterationShape, PerfModel};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Default measurement file, relative to the repository root.
pub const DEFAULT_DATA: &str = "crates/sim-core/data/calibration/splitwise_perf_model.csv";
/// Default coefficient file (compiled into sim-core), relative to the repository root.
pub const DEFAULT_OUT: &str = "crates/sim-core/data/calibrated.toml";
/// Default validation table, relative to the repository root.
pub const DEFAULT_TABLE: &str = "docs/validation.md";
/// A point whose time is below this fraction of a point with less work is anomalous.
pub const ANOMALY_RATIO: f64 = 0.75;

/// Arguments of `factorysim calibrate`.
#[derive(Args, Debug, Clone, Default)]
#[command(
    after_help = "Run at the repository root. Example:\n  factorysim calibrate\n  factorysim calibrate --data my_measurements.csv --out my_coefficients.toml --table my_validation.md"
)]
pub struct CalibrateArgs {
    /// Measured timings (Splitwise perf_model.csv format).
    #[arg(long, default_value = DEFAULT_DATA)]
    pub data: PathBuf,
    /// Where to write the fitted coefficients (TOML).
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// Where to write the validation table (Markdown).
    #[arg(long, default_value = DEFAULT_TABLE)]
    pub table: PathBuf,
}

/// Errors of the calibration pipeline.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{file}, line {line}: {message}")]
    Line {
        file: String,
        line: u64,
        message: String,
    },
    #[error("{0}")]
    Fit(String),
}

/// One CSV row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub line: u64,
    pub model: String,
    pub hardware: String,
    pub prompt_size: u64,
    pub batch_size: u64,
    pub token_size: u64,
    pub prompt_time_ms: f64,
    pub token_time_ms: f64,
    pub tensor_parallel: u32,
}

/// The median of repeated rows of one measured configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Catalog names.
    pub model: String,
    pub gpu: String,
    pub tp: u32,
    pub prompt: u64,
    pub batch: u64,
    pub output: u64,
    pub repeats: usize,
    /// Whole batch's prefill, ms.
    pub prefill_ms: f64,
    /// One decode iteration, ms.
    pub decode_ms: f64,
    /// Why the point was dropped, if it was.
    pub anomaly: Option<String>,
}

impl Point {
    /// Mean context per sequence over the decode phase: prompt + output / 2.
    pub fn decode_context_each(&self) -> u64 {
        self.prompt + self.output / 2
    }
    pub fn prefill_shape(&self) -> IterationShape {
        IterationShape {
            prefill_tokens: self.prompt * self.batch,
            prefill_seqs: self.batch as u32,
            ..Default::default()
        }
    }
    pub fn decode_shape(&self) -> IterationShape {
        IterationShape {
            decode_seqs: self.batch as u32,
            decode_context_tokens: self.batch * self.decode_context_each(),
            ..Default::default()
        }
    }
}

/// Everything one calibration run produces.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub points: Vec<Point>,
    /// (CSV model, CSV hardware) -> rows skipped for lack of a profile.
    pub skipped: BTreeMap<(String, String), usize>,
    pub coefficients_toml: String,
    pub table: CalibrationTable,
    pub validation_md: String,
}

/// Parses the Splitwise CSV. `file` names the source in error messages.
pub fn parse_csv(text: &str, file: &str) -> Result<Vec<Row>, CalibrateError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| CalibrateError::File {
            file: file.to_string(),
            message: format!("cannot read the header line: {e}"),
        })?
        .clone();
    let col = |name: &str| -> Result<usize, CalibrateError> {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| CalibrateError::File {
                file: file.to_string(),
                message: format!(
                    "missing column '{name}' (have: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            })
    };
    let c_model = col("model")?;
    let c_hw = col("hardware")?;
    let c_prompt = col("prompt_size")?;
    let c_batch = col("batch_size")?;
    let c_tokens = col("token_size")?;
    let c_pt = col("prompt_time")?;
    let c_tt = col("token_time")?;
    let c_tp = col("tensor_parallel")?;
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        // Line of the record: its position when the reader knows it, else header + i.
        let fallback = i as u64 + 2;
        let record = record.map_err(|e| CalibrateError::Line {
            file: file.to_string(),
            line: e.position().map(|p| p.line()).unwrap_or(fallback),
            message: e.to_string(),
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(fallback);
        let err = |message: String| CalibrateError::Line {
            file: file.to_string(),
            line,
            message,
        };
        let field = |c: usize, name: &str| -> Result<&str, CalibrateError> {
            record
                .get(c)
                .ok_or_else(|| err(format!("missing value for column '{name}'")))
        };
        let int = |c: usize, name: &str| -> Result<u64, CalibrateError> {
            let v = field(c, name)?;
            match v.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(err(format!(
                    "column '{name}': expected a positive integer, got '{v}'"
                ))),
            }
        };
        let time = |c: usize, name: &str| -> Result<f64, CalibrateError> {
            let v = field(c, name)?;
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(err(format!(
                    "column '{name}': expected a positive number of milliseconds, got '{v}'"
                ))),
            }
        };
        let tp = int(c_tp, "tensor_parallel")?;
        rows.push(Row {
            line,
            model: field(c_model, "model")?.to_string(),
            hardware: field(c_hw, "hardware")?.to_string(),
            prompt_size: int(c_prompt, "prompt_size")?,
            batch_size: int(c_batch, "batch_size")?,
            token_size: int(c_tokens, "token_size")?,
            prompt_time_ms: time(c_pt, "prompt_time")?,
            token_time_ms: time(c_tt, "token_time")?,
            tensor_parallel: u32::try_from(tp)
                .map_err(|_| err(format!("column 'tensor_parallel': {tp} is too large")))?,
        });
    }
    if rows.is_empty() {
        return Err(CalibrateError::File {
            file: file.to_string(),
            message: "no measurements".to_string(),
        });
    }
    Ok(rows)
}

/// Catalog name of a model as the Splitwise data spells it.
fn model_name(csv: &str, catalog: &ProfileCatalog) -> Option<String> {
    let alias = match csv {
        "llama2-70b" => "llama-2-70b",
        "llama2-7b" => "llama-2-7b",
        other => other,
    };
    catalog.model(alias).ok().map(|_| alias.to_string())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

type PointKey = (String, String, u32, u64, u64, u64);

/// Medians of repeated rows, in key order; rows without a profile are counted in
/// `skipped`.
pub fn aggregate(
    rows: &[Row],
    catalog: &ProfileCatalog,
    skipped: &mut BTreeMap<(String, String), usize>,
) -> Vec<Point> {
    let mut groups: BTreeMap<PointKey, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for r in rows {
        let model = model_name(&r.model, catalog);
        let gpu_known = catalog.gpu(&r.hardware).is_ok();
        let Some(model) = model.filter(|_| gpu_known) else {
            *skipped
                .entry((r.model.clone(), r.hardware.clone()))
                .or_insert(0) += 1;
            continue;
        };
        let key = (
            model,
            r.hardware.clone(),
            r.tensor_parallel,
            r.prompt_size,
            r.batch_size,
            r.token_size,
        );
        let g = groups.entry(key).or_default();
        g.0.push(r.prompt_time_ms);
        g.1.push(r.token_time_ms);
    }
    groups
        .into_iter()
        .map(
            |((model, gpu, tp, prompt, batch, output), (mut p, mut d))| Point {
                model,
                gpu,
                tp,
                prompt,
                batch,
                output,
                repeats: p.len(),
                prefill_ms: median(&mut p),
                decode_ms: median(&mut d),
                anomaly: None,
            },
        )
        .collect()
}

/// Marks anomalous points (see the module docs for the rule).
pub fn mark_anomalies(points: &mut [Point]) {
    // Series: (which key varies, whether prefill is checked).
    #[derive(Clone, Copy)]
    enum Vary {
        Batch,
        Prompt,
        Output,
    }
    for vary in [Vary::Batch, Vary::Prompt, Vary::Output] {
        let mut series: BTreeMap<(String, String, u32, u64, u64), Vec<usize>> = BTreeMap::new();
        for (i, p) in points.iter().enumerate() {
            let (a, b) = match vary {
                Vary::Batch => (p.prompt, p.output),
                Vary::Prompt => (p.batch, p.output),
                Vary::Output => (p.prompt, p.batch),
            };
            series
                .entry((p.model.clone(), p.gpu.clone(), p.tp, a, b))
                .or_default()
                .push(i);
        }
        let (label, check_prefill) = match vary {
            Vary::Batch => ("batch", true),
            Vary::Prompt => ("prompt", true),
            Vary::Output => ("output length", false),
        };
        let mut found: Vec<(usize, String)> = Vec::new();
        for idx in series.values() {
            let work = |i: usize| match vary {
                Vary::Batch => points[i].batch,
                Vary::Prompt => points[i].prompt,
                Vary::Output => points[i].output,
            };
            let mut sorted = idx.clone();
            sorted.sort_by_key(|&i| work(i));
            let mut max_prefill: Option<(f64, u64)> = None;
            let mut max_decode: Option<(f64, u64)> = None;
            for &i in &sorted {
                let p = &points[i];
                let mut reason = None;
                if check_prefill
                    && let Some((m, w)) = max_prefill
                    && p.prefill_ms < ANOMALY_RATIO * m
                {
                    reason = Some(format!(
                        "prefill {:.0} ms < 75% of {:.0} ms at {label} {w}",
                        p.prefill_ms, m
                    ));
                }
                if reason.is_none()
                    && let Some((m, w)) = max_decode
                    && p.decode_ms < ANOMALY_RATIO * m
                {
                    reason = Some(format!(
                        "decode {:.1} ms < 75% of {:.1} ms at {label} {w}",
                        p.decode_ms, m
                    ));
                }
                let w = work(i);
                if max_prefill.is_none_or(|(m, _)| p.prefill_ms > m) {
                    max_prefill = Some((p.prefill_ms, w));
                }
                if max_decode.is_none_or(|(m, _)| p.decode_ms > m) {
                    max_decode = Some((p.decode_ms, w));
                }
                if let Some(r) = reason {
                    found.push((i, r));
                }
            }
        }
        for (i, r) in found {
            if points[i].anomaly.is_none() {
                points[i].anomaly = Some(r);
            }
        }
    }
}

/// Weighted least squares on the `active` columns via the normal equations (columns
/// scaled to unit maximum for conditioning, Gaussian elimination with partial
/// pivoting). Inactive coefficients are 0. `None` if the system is singular.
fn weighted_least_squares(
    x: &[Vec<f64>],
    y: &[f64],
    w: &[f64],
    active: &[bool],
) -> Option<Vec<f64>> {
    let cols: Vec<usize> = (0..active.len()).filter(|&j| active[j]).collect();
    let n = cols.len();
    let scale: Vec<f64> = cols
        .iter()
        .map(|&j| {
            x.iter()
                .map(|row| row[j].abs())
                .fold(0.0, f64::max)
                .max(f64::MIN_POSITIVE)
        })
        .collect();
    let wmax = w.iter().copied().fold(0.0, f64::max);
    if wmax.is_nan() || wmax <= 0.0 {
        return None;
    }
    let mut a = vec![vec![0.0; n + 1]; n];
    for ((row, &yi), &w_raw) in x.iter().zip(y).zip(w) {
        let wi = w_raw / wmax;
        for r in 0..n {
            let xr = row[cols[r]] / scale[r];
            for c in 0..n {
                a[r][c] += wi * xr * row[cols[c]] / scale[c];
            }
            a[r][n] += wi * xr * yi;
        }
    }
    let max_diag = (0..n).map(|k| a[k][k].abs()).fold(0.0, f64::max);
    for k in 0..n {
        let pivot = (k..n).max_by(|&i, &j| a[i][k].abs().total_cmp(&a[j][k].abs()))?;
        let size = a[pivot][k].abs();
        if size.is_nan() || size <= 1e-12 * max_diag {
            return None;
        }
        a.swap(k, pivot);
        let pivot_row = a[k].clone();
        for row in a.iter_mut().skip(k + 1) {
            let f = row[k] / pivot_row[k];
            for (v, p) in row.iter_mut().zip(&pivot_row).skip(k) {
                *v -= f * p;
            }
        }
    }
    let mut sol = vec![0.0; n];
    for k in (0..n).rev() {
        let mut s = a[k][n];
        for c in k + 1..n {
            s -= a[k][c] * sol[c];
        }
        sol[k] = s / a[k][k];
    }
    let mut beta = vec![0.0; active.len()];
    for (k, &j) in cols.iter().enumerate() {
        beta[j] = sol[k] / scale[k];
    }
    Some(beta)
}

/// Least squares with every coefficient >= 0: drop the most negative coefficient and
/// refit until none is negative. Columns that are all zero are inactive from the start.
fn nonnegative_least_squares(x: &[Vec<f64>], y: &[f64], w: &[f64]) -> Option<Vec<f64>> {
    let k = x.first()?.len();
    let mut active: Vec<bool> = (0..k).map(|j| x.iter().any(|r| r[j] != 0.0)).collect();
    loop {
        let beta = weighted_least_squares(x, y, w, &active)?;
        let worst = (0..k)
            .filter(|&j| active[j] && beta[j] < 0.0)
            .min_by(|&i, &j| beta[i].total_cmp(&beta[j]));
        match worst {
            Some(j) => active[j] = false,
            None => return Some(beta),
        }
    }
}

/// Minimises the mean absolute relative error by iteratively reweighted least squares
/// (weights 1 / (y^2 * max(|relative residual|, 0.5%))), 50 rounds from relative
/// least squares, with non-negative coefficients.
pub fn fit_relative(x: &[Vec<f64>], y: &[f64]) -> Option<Vec<f64>> {
    let mut w: Vec<f64> = y.iter().map(|v| 1.0 / (v * v)).collect();
    let mut beta = nonnegative_least_squares(x, y, &w)?;
    for _ in 0..50 {
        for (i, row) in x.iter().enumerate() {
            let pred: f64 = row.iter().zip(&beta).map(|(a, b)| a * b).sum();
            let rel = ((pred - y[i]) / y[i]).abs();
            w[i] = 1.0 / (y[i] * y[i] * rel.max(0.005));
        }
        beta = nonnegative_least_squares(x, y, &w)?;
    }
    Some(beta)
}

fn prefill_features(p: &Point) -> Vec<f64> {
    let t = (p.prompt * p.batch) as f64;
    let s = p.batch as f64;
    vec![1.0, t, t * t / s, s - 1.0]
}

fn decode_features(p: &Point) -> Vec<f64> {
    let b = p.batch as f64;
    vec![1.0, b, (p.batch * p.decode_context_each()) as f64]
}

/// Fits one (model, GPU, TP) group.
fn fit_group(points: &[&Point]) -> Result<CalibratedCoefficients, CalibrateError> {
    let first = points
        .first()
        .ok_or_else(|| CalibrateError::Fit("empty group".to_string()))?;
    let kept: Vec<&Point> = points
        .iter()
        .copied()
        .filter(|p| p.anomaly.is_none())
        .collect();
    let label = format!("{} on {} TP {}", first.model, first.gpu, first.tp);
    if kept.len() < 5 {
        return Err(CalibrateError::Fit(format!(
            "{label}: only {} usable points, need at least 5",
            kept.len()
        )));
    }
    let px: Vec<Vec<f64>> = kept.iter().map(|p| prefill_features(p)).collect();
    let py: Vec<f64> = kept.iter().map(|p| p.prefill_ms).collect();
    let dx: Vec<Vec<f64>> = kept.iter().map(|p| decode_features(p)).collect();
    let dy: Vec<f64> = kept.iter().map(|p| p.decode_ms).collect();
    let singular = |what: &str| {
        CalibrateError::Fit(format!(
            "{label}: the {what} fit is singular (the points do not vary enough)"
        ))
    };
    let pb = fit_relative(&px, &py).ok_or_else(|| singular("prefill"))?;
    let db = fit_relative(&dx, &dy).ok_or_else(|| singular("decode"))?;
    Ok(CalibratedCoefficients {
        model: first.model.clone(),
        gpu: first.gpu.clone(),
        tp: first.tp,
        prefill_a_ms: pb[0],
        prefill_b_ms_per_token: pb[1],
        prefill_c_ms_per_token2: pb[2],
        prefill_g_ms_per_extra_seq: pb[3],
        decode_d_ms: db[0],
        decode_e_ms_per_seq: db[1],
        decode_f_ms_per_context_token: db[2],
        points: kept.len() as u32,
        dropped: (points.len() - kept.len()) as u32,
    })
}

/// Seven significant digits, in a form TOML reads back exactly.
fn num(x: f64) -> String {
    format!("{x:.6e}")
}

fn coefficients_toml(fits: &[CalibratedCoefficients], source: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Calibrated performance-model coefficients. GENERATED by `factorysim calibrate`\n\
         # (run `cargo run --release -- calibrate` at the repository root); do not edit.\n\
         # Fitted from {source}\n\
         # (Splitwise measurements, MIT license: see data/calibration/SOURCE.md).\n\
         #\n\
         # Times in milliseconds. T prompt tokens in S sequences with C cached context\n\
         # tokens, B decoding sequences with K context tokens in all:\n\
         #   prefill = a + b*T + c*(T^2 + 2*T*C)/S + g*(S - 1)\n\
         #   decode  = d + e*B + f*K\n\
         #   mixed   = max(a, d) + the variable terms of both\n\
         # points = measured points used, dropped = points dropped as anomalous."
    );
    for c in fits {
        let _ = write!(
            s,
            "\n[[fit]]\nmodel = \"{}\"\ngpu = \"{}\"\ntp = {}\n\
             prefill_a_ms = {}\nprefill_b_ms_per_token = {}\nprefill_c_ms_per_token2 = {}\n\
             prefill_g_ms_per_extra_seq = {}\ndecode_d_ms = {}\ndecode_e_ms_per_seq = {}\n\
             decode_f_ms_per_context_token = {}\npoints = {}\ndropped = {}\n",
            c.model,
            c.gpu,
            c.tp,
            num(c.prefill_a_ms),
            num(c.prefill_b_ms_per_token),
            num(c.prefill_c_ms_per_token2),
            num(c.prefill_g_ms_per_extra_seq),
            num(c.decode_d_ms),
            num(c.decode_e_ms_per_seq),
            num(c.decode_f_ms_per_context_token),
            c.points,
            c.dropped
        );
    }
    s
}

/// Predictions of both models for one point, ms: (calibrated prefill, calibrated
/// decode, roofline prefill, roofline decode).
#[derive(Clone, Copy, Debug)]
pub struct Predictions {
    pub cal_prefill: f64,
    pub cal_decode: f64,
    pub roof_prefill: f64,
    pub roof_decode: f64,
}

fn ms(d: SimDuration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

/// Error figures of one (model, GPU, TP) group, in percent.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupErrors {
    pub model: String,
    pub gpu: String,
    pub tp: u32,
    pub points: usize,
    pub dropped: usize,
    pub cal_prefill_mape: f64,
    pub cal_decode_mape: f64,
    pub roof_prefill_mape: f64,
    pub roof_decode_mape: f64,
}

/// H100 / A100 speed-up (A100 time over H100 time), geometric mean over points
/// measured on both.
#[derive(Clone, Debug, PartialEq)]
pub struct SpeedUp {
    pub model: String,
    /// `None` for all TP degrees together.
    pub tp: Option<u32>,
    pub pairs: usize,
    pub measured_prefill: f64,
    pub roofline_prefill: f64,
    pub calibrated_prefill: f64,
    pub measured_decode: f64,
    pub roofline_decode: f64,
    pub calibrated_decode: f64,
}

/// Validation figures.
#[derive(Clone, Debug)]
pub struct Validation {
    pub predictions: Vec<Predictions>,
    pub groups: Vec<GroupErrors>,
    pub speedups: Vec<SpeedUp>,
}

fn mape(pairs: impl Iterator<Item = (f64, f64)>) -> f64 {
    let (sum, n) = pairs.fold((0.0, 0usize), |(s, n), (pred, meas)| {
        (s + ((pred - meas) / meas).abs(), n + 1)
    });
    if n == 0 { 0.0 } else { 100.0 * sum / n as f64 }
}

fn geomean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

/// Predicts every point with both models and summarises the errors.
pub fn validate(
    points: &[Point],
    table: &CalibrationTable,
    catalog: &ProfileCatalog,
) -> Result<Validation, CalibrateError> {
    let mut predictions = Vec::with_capacity(points.len());
    for p in points {
        let cal = CalibratedPerf::new(
            table
                .lookup(&p.model, &p.gpu, p.tp)
                .map_err(CalibrateError::Fit)?
                .clone(),
        );
        let roof = RooflinePerf::new(
            catalog
                .model(&p.model)
                .map_err(CalibrateError::Fit)?
                .clone(),
            catalog.gpu(&p.gpu).map_err(CalibrateError::Fit)?.clone(),
            p.tp,
            catalog.roofline.clone(),
        )
        .map_err(CalibrateError::Fit)?;
        predictions.push(Predictions {
            cal_prefill: ms(cal.iteration_time(&p.prefill_shape())),
            cal_decode: ms(cal.iteration_time(&p.decode_shape())),
            roof_prefill: ms(roof.iteration_time(&p.prefill_shape())),
            roof_decode: ms(roof.iteration_time(&p.decode_shape())),
        });
    }
    let mut by_group: BTreeMap<(String, String, u32), Vec<usize>> = BTreeMap::new();
    for (i, p) in points.iter().enumerate() {
        by_group
            .entry((p.model.clone(), p.gpu.clone(), p.tp))
            .or_default()
            .push(i);
    }
    let mut groups = Vec::new();
    for ((model, gpu, tp), idx) in &by_group {
        let kept: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|&i| points[i].anomaly.is_none())
            .collect();
        let m = |f: &dyn Fn(usize) -> (f64, f64)| mape(kept.iter().map(|&i| f(i)));
        groups.push(GroupErrors {
            model: model.clone(),
            gpu: gpu.clone(),
            tp: *tp,
            points: kept.len(),
            dropped: idx.len() - kept.len(),
            cal_prefill_mape: m(&|i| (predictions[i].cal_prefill, points[i].prefill_ms)),
            cal_decode_mape: m(&|i| (predictions[i].cal_decode, points[i].decode_ms)),
            roof_prefill_mape: m(&|i| (predictions[i].roof_prefill, points[i].prefill_ms)),
            roof_decode_mape: m(&|i| (predictions[i].roof_decode, points[i].decode_ms)),
        });
    }
    // Speed-ups: A100 vs H100 at equal (model, TP, prompt, batch, output).
    let mut index: BTreeMap<(&str, &str, u32, u64, u64, u64), usize> = BTreeMap::new();
    for (i, p) in points.iter().enumerate() {
        if p.anomaly.is_none() {
            index.insert((&p.model, &p.gpu, p.tp, p.prompt, p.batch, p.output), i);
        }
    }
    let mut ratios: BTreeMap<(String, Option<u32>), Vec<[f64; 6]>> = BTreeMap::new();
    for (&(model, gpu, tp, prompt, batch, output), &a) in &index {
        if gpu != "a100-80gb" {
            continue;
        }
        let Some(&h) = index.get(&(model, "h100-80gb", tp, prompt, batch, output)) else {
            continue;
        };
        let (pa, ph) = (&predictions[a], &predictions[h]);
        let r = [
            points[a].prefill_ms / points[h].prefill_ms,
            pa.roof_prefill / ph.roof_prefill,
            pa.cal_prefill / ph.cal_prefill,
            points[a].decode_ms / points[h].decode_ms,
            pa.roof_decode / ph.roof_decode,
            pa.cal_decode / ph.cal_decode,
        ];
        for key in [(model.to_string(), Some(tp)), (model.to_string(), None)] {
            ratios.entry(key).or_default().push(r);
        }
    }
    let speedups = ratios
        .into_iter()
        .map(|((model, tp), rs)| {
            let g = |k: usize| geomean(&rs.iter().map(|r| r[k]).collect::<Vec<_>>());
            SpeedUp {
                model,
                tp,
                pairs: rs.len(),
                measured_prefill: g(0),
                roofline_prefill: g(1),
                calibrated_prefill: g(2),
                measured_decode: g(3),
                roofline_decode: g(4),
                calibrated_decode: g(5),
            }
        })
        .collect();
    Ok(Validation {
        predictions,
        groups,
        speedups,
    })
}

/// The whole pipeline on CSV text: parse, aggregate, mark anomalies, fit, render the
/// coefficient file and the validation table.
pub fn calibrate(
    csv_text: &str,
    source: &str,
    catalog: &ProfileCatalog,
) -> Result<Calibration, CalibrateError> {
    let rows = parse_csv(csv_text, source)?;
    let mut skipped = BTreeMap::new();
    let mut points = aggregate(&rows, catalog, &mut skipped);
    if points.is_empty() {
        return Err(CalibrateError::File {
            file: source.to_string(),
            message: "no rows for a model and GPU with a built-in profile".to_string(),
        });
    }
    mark_anomalies(&mut points);
    let mut groups: BTreeMap<(String, String, u32), Vec<&Point>> = BTreeMap::new();
    for p in &points {
        groups
            .entry((p.model.clone(), p.gpu.clone(), p.tp))
            .or_default()
            .push(p);
    }
    let fits = groups
        .values()
        .map(|g| fit_group(g))
        .collect::<Result<Vec<_>, _>>()?;
    let coefficients_toml = coefficients_toml(&fits, source);
    // Validate what is shipped: the coefficients as written (7 significant digits).
    let table = CalibrationTable::from_toml(&coefficients_toml, "generated coefficients")
        .map_err(CalibrateError::Fit)?;
    let validation = validate(&points, &table, catalog)?;
    let validation_md = render_validation(&points, &skipped, &validation, catalog, source);
    Ok(Calibration {
        points,
        skipped,
        coefficients_toml,
        table,
        validation_md,
    })
}

fn pct(pred: f64, meas: f64) -> String {
    format!("{:+.1}%", 100.0 * (pred - meas) / meas)
}

fn render_validation(
    points: &[Point],
    skipped: &BTreeMap<(String, String), usize>,
    v: &Validation,
    catalog: &ProfileCatalog,
    source: &str,
) -> String {
    let r = &catalog.roofline;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Validation: performance models vs measurements\n\n\
         GENERATED by `factorysim calibrate` (run `cargo run --release -- calibrate` at the\n\
         repository root; it also rewrites `crates/sim-core/data/calibrated.toml`). Do not\n\
         edit by hand: a test fails when this file differs from what the command produces.\n\n\
         Measurements: `{source}` (Splitwise, ISCA 2024; MIT license, see\n\
         `crates/sim-core/data/calibration/SOURCE.md`). Models: see `docs/gpu-model.md`.\n\n\
         ## Method\n\n\
         - **Points.** Median of repeated rows per (model, GPU, TP, prompt size, batch size,\n\
         \x20 output tokens). *Prefill* is `prompt_time`, the whole batch's prompt phase, predicted\n\
         \x20 as one iteration of `prompt x batch` tokens in `batch` sequences. *Decode* is\n\
         \x20 `token_time`, one decode iteration, predicted for `batch` sequences each with a\n\
         \x20 context of `prompt + output/2` tokens (the mean over the decode phase).\n\
         - **Anomaly rule.** More work never takes less time: within a series of points that\n\
         \x20 differ only in batch size, only in prompt size, or only in output length, a point\n\
         \x20 whose time is below 75% of the largest time measured for less work in that series\n\
         \x20 is dropped (prefill time in batch and prompt series, decode time in all three). A\n\
         \x20 dropped point is left out of both fits and of every error figure, but listed below.\n\
         - **Calibrated model.** Per (model, GPU, TP): prefill = a + b·T + c·T²/S + g·(S−1),\n\
         \x20 decode = d + e·B + f·K, fitted by iteratively reweighted least squares minimising\n\
         \x20 the mean absolute relative error, with all coefficients ≥ 0.\n\
         - **Roofline model.** One set of constants for every GPU: compute efficiency {}, memory\n\
         \x20 efficiency {}, non-overlap {}, overhead {} ms per iteration, all-reduce latency {} µs\n\
         \x20 per ring step, interconnect efficiency {}; GPU figures from the datasheets.\n\
         - **MAPE** = mean of |predicted − measured| / measured over the kept points.\n",
        r.compute_efficiency,
        r.memory_efficiency,
        r.non_overlap,
        r.overhead_ms,
        r.allreduce_latency_us,
        r.interconnect_efficiency
    );
    if !skipped.is_empty() {
        let _ = writeln!(
            s,
            "Rows skipped (no built-in profile for the model or GPU):\n"
        );
        for ((m, g), n) in skipped {
            let _ = writeln!(s, "- `{m}` on `{g}`: {n} rows");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "## Mean absolute percentage error\n\n\
         | model | GPU | TP | points | dropped | calibrated prefill | calibrated decode | roofline prefill | roofline decode |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for g in &v.groups {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1}% | {:.1}% | {:.1}% | {:.1}% |",
            g.model,
            g.gpu,
            g.tp,
            g.points,
            g.dropped,
            g.cal_prefill_mape,
            g.cal_decode_mape,
            g.roof_prefill_mape,
            g.roof_decode_mape
        );
    }
    let _ = writeln!(
        s,
        "\nTargets: calibrated ≤ 10%, roofline ≤ 30% in every row. The roofline constants were\n\
         chosen on the Llama-2-70B rows; the BLOOM-176B rows are an out-of-sample check.\n\n\
         ## H100 / A100 speed-up\n\n\
         A100 time ÷ H100 time, geometric mean over the points measured on both GPUs.\n\n\
         | model | TP | pairs | prefill measured | prefill roofline | prefill calibrated | decode measured | decode roofline | decode calibrated |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for su in &v.speedups {
        let tp = su.tp.map_or("all".to_string(), |t| t.to_string());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2}x | {:.2}x | {:.2}x | {:.2}x | {:.2}x | {:.2}x |",
            su.model,
            tp,
            su.pairs,
            su.measured_prefill,
            su.roofline_prefill,
            su.calibrated_prefill,
            su.measured_decode,
            su.roofline_decode,
            su.calibrated_decode
        );
    }
    let _ = writeln!(
        s,
        "\n## Every measured point\n\nTimes in ms; errors relative to the measurement."
    );
    let mut current = None;
    for (p, pr) in points.iter().zip(&v.predictions) {
        let key = (p.model.as_str(), p.gpu.as_str(), p.tp);
        if current != Some(key) {
            current = Some(key);
            let _ = writeln!(
                s,
                "\n### {} on {} x{}\n\n\
                 | prompt | batch | output | runs | prefill | calibrated | err | roofline | err | decode | calibrated | err | roofline | err | note |\n\
                 |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                p.model, p.gpu, p.tp
            );
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {:.1} | {} | {:.1} | {} | {:.2} | {:.2} | {} | {:.2} | {} | {} |",
            p.prompt,
            p.batch,
            p.output,
            p.repeats,
            p.prefill_ms,
            pr.cal_prefill,
            pct(pr.cal_prefill, p.prefill_ms),
            pr.roof_prefill,
            pct(pr.roof_prefill, p.prefill_ms),
            p.decode_ms,
            pr.cal_decode,
            pct(pr.cal_decode, p.decode_ms),
            pr.roof_decode,
            pct(pr.roof_decode, p.decode_ms),
            p.anomaly
                .as_ref()
                .map_or(String::new(), |a| format!("dropped: {a}"))
        );
    }
    s
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

/// `factorysim calibrate`.
pub fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    let text = read(&args.data)?;
    let catalog = ProfileCatalog::try_builtin().map_err(anyhow::Error::msg)?;
    let source = args.data.display().to_string();
    let cal = calibrate(&text, &source, &catalog)?;
    for (path, content) in [
        (&args.out, &cal.coefficients_toml),
        (&args.table, &cal.validation_md),
    ] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        std::fs::write(path, content)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    let validation = validate(&cal.points, &cal.table, &catalog)?;
    crate::outln!(
        "{:<12} {:<10} {:>3} {:>6} {:>7}  {:>9} {:>9} {:>9} {:>9}",
        "model",
        "gpu",
        "tp",
        "points",
        "dropped",
        "cal pre",
        "cal dec",
        "roof pre",
        "roof dec"
    );
    for g in &validation.groups {
        crate::outln!(
            "{:<12} {:<10} {:>3} {:>6} {:>7}  {:>8.1}% {:>8.1}% {:>8.1}% {:>8.1}%",
            g.model,
            g.gpu,
            g.tp,
            g.points,
            g.dropped,
            g.cal_prefill_mape,
            g.cal_decode_mape,
            g.roof_prefill_mape,
            g.roof_decode_mape
        );
    }
    for p in cal.points.iter().filter(|p| p.anomaly.is_some()) {
        crate::outln!(
            "dropped {} {} tp{} prompt {} batch {} output {}: {}",
            p.model,
            p.gpu,
            p.tp,
            p.prompt,
            p.batch,
            p.output,
            p.anomaly.as_deref().unwrap_or_default()
        );
    }
    if BUILTIN_CALIBRATION_TOML != cal.coefficients_toml && args.out.ends_with("calibrated.toml") {
        crate::outln!("note: rebuild to compile the new coefficients into sim-core");
    }
    crate::outln!("Wrote {} and {}", args.out.display(), args.table.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    fn run_default() -> Calibration {
        let text = std::fs::read_to_string(repo(DEFAULT_DATA)).expect("in-repo CSV copy");
        calibrate(&text, DEFAULT_DATA, &ProfileCatalog::builtin()).expect("calibration")
    }

    #[test]
    fn calibration_targets_hold() {
        let cal = run_default();
        let v = validate(&cal.points, &cal.table, &ProfileCatalog::builtin()).unwrap();
        assert_eq!(
            v.groups.len(),
            8,
            "Llama-2-70B x 2 GPUs x 3 TP + BLOOM x 2 GPUs"
        );
        for g in &v.groups {
            let id = format!("{} {} tp{}", g.model, g.gpu, g.tp);
            assert!(
                g.cal_prefill_mape <= 10.0,
                "{id}: calibrated prefill {:.1}%",
                g.cal_prefill_mape
            );
            assert!(
                g.cal_decode_mape <= 10.0,
                "{id}: calibrated decode {:.1}%",
                g.cal_decode_mape
            );
            assert!(
                g.roof_prefill_mape <= 30.0,
                "{id}: roofline prefill {:.1}%",
                g.roof_prefill_mape
            );
            assert!(
                g.roof_decode_mape <= 30.0,
                "{id}: roofline decode {:.1}%",
                g.roof_decode_mape
            );
        }
        // Speed-up direction and rough size, per TP and overall, for Llama-2-70B: the
        // roofline must be within 25% of the measured H100/A100 ratio, and prefill must
        // gain more than decode, as measured.
        let llama: Vec<&SpeedUp> = v
            .speedups
            .iter()
            .filter(|s| s.model == "llama-2-70b")
            .collect();
        assert_eq!(llama.len(), 4);
        for su in llama {
            let id = format!("tp {:?}", su.tp);
            assert!(su.measured_prefill > su.measured_decode && su.measured_decode > 1.0);
            assert!(su.roofline_prefill > su.roofline_decode, "{id}: {su:?}");
            assert!(su.roofline_decode > 1.0, "{id}: {su:?}");
            for (roof, meas) in [
                (su.roofline_prefill, su.measured_prefill),
                (su.roofline_decode, su.measured_decode),
            ] {
                assert!(
                    (roof / meas - 1.0).abs() <= 0.25,
                    "{id}: {roof:.2} vs {meas:.2}"
                );
            }
            if su.tp.is_none() {
                assert!((2.0..=2.4).contains(&su.measured_prefill), "{su:?}");
                assert!((1.3..=1.6).contains(&su.measured_decode), "{su:?}");
            }
        }
    }

    #[test]
    fn anomaly_rule_drops_the_known_outliers_only() {
        let cal = run_default();
        let dropped: Vec<(&str, &str, u32, u64)> = cal
            .points
            .iter()
            .filter(|p| p.anomaly.is_some())
            .map(|p| (p.model.as_str(), p.gpu.as_str(), p.tp, p.batch))
            .collect();
        // TP 2, batch 64 prefill is faster than batch 32 on both GPUs (see SOURCE.md).
        assert_eq!(
            dropped,
            vec![
                ("llama-2-70b", "a100-80gb", 2, 64),
                ("llama-2-70b", "h100-80gb", 2, 64)
            ]
        );
        assert_eq!(
            cal.skipped
                .keys()
                .map(|(_, g)| g.as_str())
                .collect::<Vec<_>>(),
            vec!["h100-80gb-pcap", "h100-80gb-pcap"]
        );
        // Medians of repeated rows.
        let p = cal
            .points
            .iter()
            .find(|p| {
                p.gpu == "a100-80gb"
                    && p.tp == 2
                    && p.prompt == 512
                    && p.batch == 1
                    && p.output == 128
            })
            .unwrap();
        assert_eq!(p.repeats, 15);
        assert!((p.prefill_ms - 196.862).abs() < 0.01, "{}", p.prefill_ms);
    }

    #[test]
    fn shipped_files_are_up_to_date() {
        let cal = run_default();
        assert!(
            BUILTIN_CALIBRATION_TOML == cal.coefficients_toml,
            "crates/sim-core/data/calibrated.toml is stale: run `cargo run --release -- calibrate`"
        );
        let shipped = std::fs::read_to_string(repo(DEFAULT_TABLE)).unwrap_or_default();
        assert!(
            shipped == cal.validation_md,
            "docs/validation.md is stale: run `cargo run --release -- calibrate`"
        );
        // And the sim-core catalog loads exactly these coefficients.
        assert_eq!(ProfileCatalog::builtin().calibration, cal.table);
    }

    #[test]
    fn in_repo_copy_matches_shared_data() {
        let shared = repo("../shared/data/calibration/splitwise_perf_model.csv");
        let Ok(original) = std::fs::read(&shared) else {
            eprintln!(
                "SKIPPED: {} is absent; the calibration tests use the in-repo copy",
                shared.display()
            );
            return;
        };
        let copy = std::fs::read(repo(DEFAULT_DATA)).expect("in-repo CSV copy");
        assert!(
            copy == original,
            "{DEFAULT_DATA} differs from {}",
            shared.display()
        );
    }

    #[test]
    fn fit_recovers_exact_coefficients() {
        // y = 5 + 2 x1 + 0.5 x2 on exact data; the fit returns it.
        let x: Vec<Vec<f64>> = (1..10)
            .map(|i| vec![1.0, i as f64, (i * i % 7) as f64])
            .collect();
        let y: Vec<f64> = x.iter().map(|r| 5.0 + 2.0 * r[1] + 0.5 * r[2]).collect();
        let b = fit_relative(&x, &y).unwrap();
        for (got, want) in b.iter().zip([5.0, 2.0, 0.5]) {
            assert!((got - want).abs() < 1e-6, "{b:?}");
        }
        // A coefficient that would be negative is clamped to zero.
        let y: Vec<f64> = x.iter().map(|r| 50.0 + 2.0 * r[1] - 0.1 * r[2]).collect();
        let b = fit_relative(&x, &y).unwrap();
        assert!(b.iter().all(|v| *v >= 0.0), "{b:?}");
        assert_eq!(b[2], 0.0);
    }

    #[test]
    fn bad_csv_lines_name_file_and_line() {
        let header = "model,hardware,prompt_size,batch_size,token_size,peak_power,average_power,prompt_time,token_time,e2e_time,tensor_parallel\n";
        let good = "llama2-70b,a100-80gb,512,1,128,1,0.7,196.2,54.8,7168.9,2\n";
        let text =
            format!("{header}{good}llama2-70b,a100-80gb,512,one,128,1,0.7,196.2,54.8,7168.9,2\n");
        let e = parse_csv(&text, "m.csv").unwrap_err().to_string();
        assert!(e.starts_with("m.csv, line 3:"), "{e}");
        assert!(e.contains("batch_size") && e.contains("'one'"), "{e}");
        let text =
            format!("{header}{good}{good}llama2-70b,a100-80gb,512,1,128,1,0.7,-4,54.8,7168.9,2\n");
        let e = parse_csv(&text, "m.csv").unwrap_err().to_string();
        assert!(
            e.starts_with("m.csv, line 4:") && e.contains("prompt_time"),
            "{e}"
        );
        let text = format!("{header}llama2-70b,a100-80gb,512\n");
        let e = parse_csv(&text, "m.csv").unwrap_err().to_string();
        assert!(e.starts_with("m.csv, line 2:"), "{e}");
        let e = parse_csv("model,hardware\nx,y\n", "m.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing column 'prompt_size'"), "{e}");
        let e = parse_csv(header, "m.csv").unwrap_err().to_string();
        assert!(e.contains("no measurements"), "{e}");
    }
}

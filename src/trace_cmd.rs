//! `factorysim trace stats TRACE` and `factorysim fit TRACE`: presentation of the
//! `traces` crate's statistics and fits. Bad input becomes an [`InputError`] naming the
//! file and line (exit code 2).

use crate::InputError;
use crate::report::fmt_secs;
use anyhow::Context;
use sim_core::SimDuration;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use traces::fit::{DistFamily, FitOptions, FitProfile, fit_requests, fit_spans};
use traces::stats::{ArrivalStats, ClassStats, RequestStats, SpanStats, Summary};
use traces::{
    ReadOptions, ReadReport, ReplayOptions, TraceError, TraceFormat, replay_requests,
    replay_workflows,
};

/// `factorysim trace ...`
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  factorysim trace stats traces/data/azure-llm-2023/AzureLLMInferenceTrace_code.csv\n  factorysim trace stats traces/data/agent-spans/month-end-30m.spans.jsonl.gz"
)]
pub struct TraceArgs {
    #[command(subcommand)]
    pub verb: TraceVerb,
}

#[derive(clap::Subcommand, Debug)]
pub enum TraceVerb {
    /// Print a trace's statistics: rows, duration, arrival rate (overall and by hour),
    /// burstiness, token percentiles, prefix reuse; per workflow class for span traces.
    #[command(
        after_help = "Examples:\n  factorysim trace stats traces/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv\n  factorysim trace stats traces/data/mooncake-fast25/conversation_trace.jsonl --rate 2 --window 10m..20m"
    )]
    Stats(StatsArgs),
}

/// Options shared by `trace stats` and `fit`: how to read and replay the trace.
#[derive(clap::Args, Debug, Clone)]
pub struct TraceInput {
    /// Trace file (CSV, JSONL or OTLP JSON; gzip is detected).
    pub trace: PathBuf,
    /// Trace format (detected from the content when omitted).
    #[arg(long, value_name = "azure|simple|mooncake|spans|otlp")]
    pub format: Option<TraceFormat>,
    /// Skip rows that do not parse and report how many, instead of stopping.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Span traces: a workflow is complete after this many spans without one of its own.
    #[arg(long, value_name = "SPANS", value_parser = clap::value_parser!(u64).range(1..))]
    pub group_window: Option<u64>,
    /// Arrival-rate multiplier (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Keep arrivals in START..END of trace time (e.g. 10m..20m, 1h.., ..30m).
    #[arg(long, value_name = "START..END")]
    pub window: Option<String>,
    /// Keep this fraction of rows (deterministic in --sample-seed).
    #[arg(long, default_value_t = 1.0)]
    pub sample: f64,
    #[arg(long, default_value_t = 0)]
    pub sample_seed: u64,
    /// Play the trace this many times back to back (1 to 100,000: every pass reads
    /// the file again).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub loops: u32,
    /// Step of the rate table and of the piecewise arrival fit.
    #[arg(long, default_value = "1h")]
    pub step: String,
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub input: TraceInput,
}

/// `factorysim fit TRACE [--out FRAGMENT.toml]`
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  factorysim fit traces/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv --out conv.toml\n  factorysim fit spans.jsonl --dist lognormal"
)]
pub struct FitArgs {
    #[command(flatten)]
    pub input: TraceInput,
    /// Write the scenario fragment here (stdout when omitted).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Class name for request traces (default: from the file name).
    #[arg(long)]
    pub class: Option<String>,
    /// Token and latency distributions: empirical quantiles or a lognormal (median, p99).
    #[arg(long, default_value = "empirical", value_name = "empirical|lognormal")]
    pub dist: String,
    /// At most this many values in an empirical distribution.
    #[arg(long, default_value_t = 200)]
    pub max_values: usize,
    /// The pool the fragment's LLM node names.
    #[arg(long, default_value = "llm")]
    pub pool: String,
}

fn input_error(e: TraceError) -> InputError {
    InputError::new(e.location(), e.detail())
}

fn duration(file: &str, what: &str, text: &str) -> Result<u64, InputError> {
    SimDuration::parse(text).map(|d| d.as_nanos()).map_err(|_| {
        InputError::new(
            file,
            format!("{what}: expected a duration like 90s, 10m, 1h, got `{text}`"),
        )
    })
}

struct Prepared {
    file: String,
    format: TraceFormat,
    read: ReadOptions,
    replay: ReplayOptions,
    step_ns: u64,
}

fn prepare(input: &TraceInput) -> Result<Prepared, InputError> {
    let file = input.trace.display().to_string();
    let format = match input.format {
        Some(f) => f,
        None => TraceFormat::detect(&input.trace).map_err(input_error)?,
    };
    let window = match &input.window {
        None => None,
        Some(w) => {
            let (a, b) = w.split_once("..").ok_or_else(|| {
                InputError::new(&file, format!("--window: expected START..END, got `{w}`"))
            })?;
            let start = if a.trim().is_empty() {
                0
            } else {
                duration(&file, "--window start", a)?
            };
            let end = if b.trim().is_empty() {
                None
            } else {
                Some(duration(&file, "--window end", b)?)
            };
            Some((start, end))
        }
    };
    let replay = ReplayOptions {
        rate: input.rate,
        window,
        sample_fraction: input.sample,
        sample_seed: input.sample_seed,
        loops: input.loops,
        loop_period_ns: None,
        until_ns: None,
    };
    replay
        .validate()
        .map_err(|m| InputError::new(&file, format!("replay options: {m}")))?;
    let step_ns = duration(&file, "--step", &input.step)?;
    if step_ns == 0 {
        return Err(InputError::new(&file, "--step must be longer than 0s"));
    }
    Ok(Prepared {
        file,
        format,
        read: ReadOptions {
            format: Some(format),
            skip_bad_rows: input.skip_bad_rows,
            group_window_spans: input.group_window,
        },
        replay,
        step_ns,
    })
}

enum Stats {
    Requests(Box<RequestStats>),
    Spans(Box<SpanStats>),
}

fn compute(p: &Prepared, path: &Path) -> Result<Stats, InputError> {
    if p.format.is_request_trace() {
        let mut replay = replay_requests(path, &p.read, &p.replay).map_err(input_error)?;
        let mut s = traces::request_stats(&mut replay, p.step_ns).map_err(input_error)?;
        s.report = replay.report().read;
        Ok(Stats::Requests(Box::new(s)))
    } else {
        let mut replay = replay_workflows(path, &p.read, &p.replay).map_err(input_error)?;
        let mut s = traces::span_stats(&mut replay, p.step_ns).map_err(input_error)?;
        s.report = replay.report().read;
        Ok(Stats::Spans(Box::new(s)))
    }
}

/// Runs `factorysim trace ...`.
pub fn run_trace(args: TraceArgs) -> anyhow::Result<()> {
    match args.verb {
        TraceVerb::Stats(a) => {
            let p = prepare(&a.input)?;
            let stats = compute(&p, &a.input.trace)?;
            crate::out!("{}", stats_table(&p.file, p.format, &stats));
            Ok(())
        }
    }
}

/// Runs `factorysim fit ...`.
pub fn run_fit(args: FitArgs) -> anyhow::Result<()> {
    let p = prepare(&args.input)?;
    let family = match args.dist.as_str() {
        "empirical" => DistFamily::Empirical,
        "lognormal" => DistFamily::Lognormal,
        other => {
            return Err(InputError::new(
                &p.file,
                format!("--dist: expected empirical or lognormal, got `{other}`"),
            )
            .into());
        }
    };
    if args.max_values == 0 {
        return Err(InputError::new(&p.file, "--max-values must be at least 1").into());
    }
    let opts = FitOptions {
        step_ns: p.step_ns,
        max_values: args.max_values,
        family,
        class_name: args
            .class
            .clone()
            .unwrap_or_else(|| class_name_from_path(&args.input.trace)),
        pool: args.pool.clone(),
    };
    let stats = compute(&p, &args.input.trace)?;
    let (profile, report, spans): (FitProfile, &ReadReport, bool) = match &stats {
        Stats::Requests(s) => (fit_requests(s, &p.file, &opts), &s.report, false),
        Stats::Spans(s) => (fit_spans(s, &p.file, &opts), &s.report, true),
    };
    let text = profile.to_toml();
    // What was read and what was not, always on stderr (stdout may be the fragment).
    for line in read_notes(&p.file, report, spans) {
        eprintln!("{line}");
    }
    // A rate needs two arrivals at distinct times: `rate = 0` would not load.
    if let Some(c) = profile
        .classes
        .iter()
        .find(|c| !(c.arrival.mean_rate() > 0.0 && c.arrival.mean_rate().is_finite()))
    {
        return Err(InputError::new(
            &p.file,
            format!(
                "class `{}`: {} {} over {} s: a rate needs at least 2 arrivals at distinct times (nothing written)",
                c.name,
                c.rows,
                if spans { "workflows" } else { "rows" },
                c.duration_s
            ),
        )
        .into());
    }
    match &args.out {
        Some(out) => {
            std::fs::write(out, &text)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "Wrote {} ({} class{})",
                out.display(),
                profile.classes.len(),
                if profile.classes.len() == 1 { "" } else { "es" },
            );
        }
        None => crate::out!("{text}"),
    }
    Ok(())
}

/// The `note:` lines `fit` prints on stderr: rows read, bad rows skipped (and the first
/// one's message), and for span traces the orphan spans, duplicate span ids and cycles
/// found (kept in skip mode, as `trace stats` reports them).
pub fn read_notes(file: &str, r: &ReadReport, spans: bool) -> Vec<String> {
    let mut out = vec![if spans {
        format!(
            "note: {file}: {} spans read, {} workflows; {} bad rows skipped; {} orphan spans, {} duplicate span ids, {} cycles",
            r.rows, r.workflows, r.skipped_rows, r.orphan_spans, r.duplicate_spans, r.cycles
        )
    } else {
        format!(
            "note: {file}: {} rows read; {} bad rows skipped",
            r.rows, r.skipped_rows
        )
    }];
    if let Some(first) = &r.first_skipped {
        out.push(format!("note: first skipped: {first}"));
    }
    if r.out_of_order > 0 {
        out.push(format!(
            "note: {file}: {} arrivals out of order",
            r.out_of_order
        ));
    }
    out
}

/// A class name from a file name: lowercase, runs of other characters as `-`.
pub fn class_name_from_path(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let stem = name
        .trim_end_matches(".gz")
        .rsplit_once('.')
        .map_or(name.as_str(), |(s, _)| s)
        .to_ascii_lowercase();
    let mut out = String::new();
    for c in stem.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() { "fitted".into() } else { out }
}

fn n(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e12 {
        format!("{}", x as i64)
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn row(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "  {label:<26} {value}");
}

fn summary_row(out: &mut String, label: &str, s: &Summary) {
    let _ = writeln!(
        out,
        "  {label:<26} {:>9} {:>9} {:>9} {:>9} {:>9}",
        n(s.mean),
        n(s.p50),
        n(s.p95),
        n(s.p99),
        n(s.max)
    );
}

fn summary_header(out: &mut String) {
    let _ = writeln!(
        out,
        "  {:<26} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "mean", "p50", "p95", "p99", "max"
    );
}

fn arrival_rows(out: &mut String, a: &ArrivalStats) {
    row(out, "duration", fmt_secs(Some(a.duration_s)));
    row(
        out,
        "mean arrival rate",
        format!("{} /s", n(a.mean_rate_per_s)),
    );
    row(
        out,
        "inter-arrival CV",
        format!("{} (1 = Poisson, > 1 bursty)", n(a.interarrival_cv)),
    );
    if !a.rate_by_step.is_empty() {
        // Gaps measured in the arrivals the step rates expect: burstiness that a
        // changing rate does not explain (what a piecewise fit keeps as its cv).
        row(out, "CV within steps", n(a.step_cv).to_string());
    }
    let mut rates: Vec<String> = a.rate_by_step.iter().map(|r| n(*r)).collect();
    if rates.is_empty() {
        rates.push("-".into());
    }
    let step = SimDuration::from_secs_f64(a.step_s);
    row(out, &format!("rate by {step} (/s)"), rates.join(" "));
}

fn report_rows(out: &mut String, r: &ReadReport) {
    row(out, "bad rows skipped", r.skipped_rows);
    if let Some(first) = &r.first_skipped {
        row(out, "first skipped", first);
    }
    if r.out_of_order > 0 {
        row(out, "out-of-order arrivals", r.out_of_order);
    }
}

fn class_rows(out: &mut String, c: &ClassStats) {
    row(
        out,
        "workflows",
        format!(
            "{} ({} spans: {} llm, {} tool)",
            c.workflows, c.spans, c.llm_spans, c.tool_spans
        ),
    );
    arrival_rows(out, &c.arrivals);
    // No span with children (single-call workflows): no fan-out to summarise.
    let fanout = if c.fanout.count == 0 {
        "-".to_string()
    } else {
        format!("p50 {}  p95 {}", n(c.fanout.p50), n(c.fanout.p95))
    };
    row(out, "fan-out per tick", fanout);
    let growth = if c.context_growth.count == 0 {
        "-".to_string()
    } else {
        format!(
            "mean {}  p50 {} tokens",
            n(c.context_growth.mean),
            n(c.context_growth.p50)
        )
    };
    row(out, "context growth per hop", growth);
    row(out, "retry rate", format!("{:.1}%", c.retry_rate * 100.0));
    // Only where the log records how calls ended (a `status` other than ok).
    let ended = c.error_spans + c.timeout_spans + c.lost_spans;
    if ended > 0 {
        let work = (c.llm_spans + c.tool_spans).max(1) as f64;
        let share = |k: u64| format!("{k} ({:.1}%)", k as f64 * 100.0 / work);
        row(
            out,
            "error / timeout / lost",
            format!(
                "{} / {} / {}",
                share(c.error_spans),
                share(c.timeout_spans),
                share(c.lost_spans)
            ),
        );
        row(
            out,
            "workflows that gave up",
            format!(
                "{} ({:.1}%)",
                c.gave_up,
                c.gave_up as f64 * 100.0 / c.workflows.max(1) as f64
            ),
        );
    }
    row(
        out,
        "shared-prefix share",
        format!("{:.1}%", c.shared_prefix_share * 100.0),
    );
    let tool = if c.tool_latency_ms.count == 0 {
        "-".to_string()
    } else {
        format!(
            "p50 {}  p95 {}",
            fmt_secs(Some(c.tool_latency_ms.p50 / 1e3)),
            fmt_secs(Some(c.tool_latency_ms.p95 / 1e3))
        )
    };
    row(out, "tool latency", tool);
    row(
        out,
        "tokens per workflow",
        format!(
            "p50 {}  p95 {}",
            n(c.tokens_per_workflow.p50),
            n(c.tokens_per_workflow.p95)
        ),
    );
    summary_header(out);
    summary_row(out, "input tokens per llm hop", &c.input_tokens);
    summary_row(out, "output tokens per llm hop", &c.output_tokens);
    summary_row(out, "llm hops per workflow", &c.llm_hops_per_workflow);
}

fn stats_table(file: &str, format: TraceFormat, stats: &Stats) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{file} ({format})");
    match stats {
        Stats::Requests(s) => {
            row(&mut out, "rows", s.arrivals.rows);
            report_rows(&mut out, &s.report);
            arrival_rows(&mut out, &s.arrivals);
            summary_header(&mut out);
            summary_row(&mut out, "input tokens", &s.input_tokens);
            summary_row(&mut out, "output tokens", &s.output_tokens);
            if let Some(p) = &s.prefix {
                row(
                    &mut out,
                    "prefix-block reuse",
                    format!(
                        "{:.1}% ({} of {} 512-token blocks)",
                        p.reuse_share * 100.0,
                        p.reused_blocks,
                        p.blocks
                    ),
                );
            }
        }
        Stats::Spans(s) => {
            row(&mut out, "spans", s.report.rows);
            row(&mut out, "workflows", s.all.workflows);
            report_rows(&mut out, &s.report);
            if s.report.orphan_spans + s.report.duplicate_spans + s.report.cycles > 0 {
                row(
                    &mut out,
                    "DAG problems",
                    format!(
                        "{} orphan spans, {} duplicate span ids, {} cycles",
                        s.report.orphan_spans, s.report.duplicate_spans, s.report.cycles
                    ),
                );
            }
            for c in s.classes.values() {
                let _ = writeln!(out, "class {}", c.class);
                class_rows(&mut out, c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_from_files() {
        assert_eq!(
            class_name_from_path(Path::new("a/AzureLLMInferenceTrace_conv.csv")),
            "azurellminferencetrace-conv"
        );
        assert_eq!(
            class_name_from_path(Path::new("x/conversation_trace.jsonl.gz")),
            "conversation-trace"
        );
        assert_eq!(class_name_from_path(Path::new("...")), "fitted");
    }
}

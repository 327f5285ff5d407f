//! The factorysim command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use factorysim::replications::{self, SummaryDoc, run_replications};
use factorysim::{InputError, load_scenario, outputs, plots, report};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "factorysim",
    version,
    about = "Deterministic discrete-event simulator and routing-policy lab for AI factories",
    after_help = "Example:\n  factorysim run scenarios/quickstart.toml\n  factorysim check scenarios/mmc.toml"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a scenario, print a summary table and write DIR/summary.json.
    #[command(
        after_help = "Examples:\n  factorysim run scenarios/quickstart.toml\n  factorysim run scenarios/mmc.toml --seed 7 --out out/mmc --set pools.agents.servers=5\n  factorysim run scenarios/quickstart.toml --replications 10\n\nWrites DIR/summary.json, DIR/timeseries.csv, DIR/showback.csv and DIR/plots/*.{svg,png}\n(see docs/output.md)."
    )]
    Run {
        /// Scenario file (TOML).
        scenario: PathBuf,
        /// Master seed (overrides simulation.seed; at most 2^63 - 1, as TOML integers).
        #[arg(long, value_parser = clap::value_parser!(u64).range(0..=i64::MAX as u64))]
        seed: Option<u64>,
        /// Output directory for summary.json.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Override a scenario value, e.g. --set classes.chat.arrival.rate=12 (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        sets: Vec<String>,
        /// Print summary.json to stdout instead of the table.
        #[arg(long)]
        json: bool,
        /// Independent replications with seeds seed, seed+1, ... (run in parallel); adds
        /// means and 95% confidence intervals to the table and to summary.json.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        replications: u32,
        /// Skip the plots in DIR/plots/.
        #[arg(long)]
        no_plots: bool,
        /// Also write DIR/workflows.csv: one row per workflow (completed, failed, rejected,
        /// abandoned or in flight), with its outcome, cause, latency, cost and tokens.
        #[arg(long)]
        workflows_csv: bool,
        /// Also write every hop as an agent span log (JSONL, the format `trace stats`
        /// and `fit` read) to this file; as OpenTelemetry OTLP JSON (GenAI conventions,
        /// one document per workflow a line) when it ends in `.otlp.json`;
        /// gzip-compressed when it ends in `.gz`.
        #[arg(long, value_name = "FILE")]
        spans: Option<PathBuf>,
    },
    /// Validate a scenario and print derived quantities (offered load per pool).
    #[command(
        after_help = "Example:\n  factorysim check scenarios/mmc.toml --set classes.jobs.arrival.rate=4.2"
    )]
    Check {
        /// Scenario file (TOML).
        scenario: PathBuf,
        /// Override a scenario value (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        sets: Vec<String>,
    },
    /// Inspect a recorded trace (`trace stats TRACE`).
    Trace(factorysim::trace_cmd::TraceArgs),
    /// Fit a workload profile to a trace and write a scenario fragment.
    Fit(factorysim::trace_cmd::FitArgs),
    /// Run variants of a scenario on common random numbers and compare them side by side.
    Compare(factorysim::compare::CompareArgs),
    /// Run a scenario over a grid of parameter values, with queueing theory alongside.
    Sweep(factorysim::sweep::SweepArgs),
    /// Fit the calibrated performance model to measured timings and regenerate docs/validation.md.
    Calibrate(factorysim::calibrate::CalibrateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(input) = e.downcast_ref::<InputError>() {
                eprintln!("error: {input}");
                ExitCode::from(2)
            } else if let Some(g) = e.downcast_ref::<factorysim::gates::GatesFailed>() {
                eprintln!("{g}");
                ExitCode::from(3)
            } else {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            scenario,
            seed,
            out,
            mut sets,
            json,
            replications,
            no_plots,
            workflows_csv,
            spans,
        } => {
            if let Some(seed) = seed {
                sets.push(format!("simulation.seed={seed}"));
            }
            let loaded = load_scenario(&scenario, &sets)?;
            for note in &loaded.notes {
                eprintln!("note: {note}");
            }
            let (result, reps) = if replications <= 1 {
                let bar = progress_bar(1000);
                let mut tick = |f: f64| bar.set_position((f * 1000.0) as u64);
                let result = match &spans {
                    None => factorysim::simulate_with(
                        &loaded.scenario,
                        Some(&mut tick),
                        None,
                        workflows_csv,
                    ),
                    Some(path) => {
                        // Created before the run, so a bad path fails at once.
                        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                            std::fs::create_dir_all(dir)
                                .with_context(|| format!("cannot create {}", dir.display()))?;
                        }
                        // `FILE.gz` is written gzip-compressed, as the readers take it.
                        let file = traces::io::OutputFile::create(path)
                            .with_context(|| format!("cannot create {}", path.display()))?;
                        // Written as workflows finish: memory for those in flight only.
                        let format = factorysim::spans::SpanFileFormat::for_path(path);
                        let mut spans = factorysim::spans::SpanLogStream::with_format(file, format);
                        let result = factorysim::simulate_with(
                            &loaded.scenario,
                            Some(&mut tick),
                            Some(&mut |w| spans.workflow_done(w)),
                            workflows_csv,
                        );
                        spans
                            .finish()
                            .and_then(traces::io::OutputFile::finish)
                            .with_context(|| format!("cannot write {}", path.display()))?;
                        result
                    }
                };
                bar.finish_and_clear();
                (result, None)
            } else {
                let bar = progress_bar(replications as u64);
                let done = || bar.inc(1);
                let mut runs =
                    run_replications(&loaded.scenario, replications, workflows_csv, &done);
                bar.finish_and_clear();
                for r in &runs {
                    factorysim::check_input(r)?;
                }
                let summaries: Vec<_> = runs.iter().map(|r| r.summary()).collect();
                let est = replications::estimate(&summaries);
                runs.truncate(1);
                match runs.pop() {
                    Some(first) => (first, Some(est)),
                    None => anyhow::bail!("no replication ran"),
                }
            };
            factorysim::check_input(&result)?;
            let summary = result.summary();
            let doc = SummaryDoc {
                summary: &summary,
                replications: reps.as_ref(),
            };
            let text = outputs::to_json_pretty(&doc)? + "\n";
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create output directory {}", out.display()))?;
            let path = out.join("summary.json");
            std::fs::write(&path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            outputs::write_csvs(&out, &result, &summary)?;
            if workflows_csv {
                outputs::write_workflows_csv(&out, &result)?;
            }
            let plots = if no_plots {
                Vec::new()
            } else {
                plots::write_run_plots(&out, &result)?
            };
            if json {
                factorysim::out!("{text}");
            } else {
                factorysim::outln!("{}", loaded.file);
                let opts = report::TableOptions {
                    colour: std::io::stdout().is_terminal(),
                    replications: reps.as_ref(),
                };
                factorysim::out!("{}", report::run_table_with(&summary, &opts));
                factorysim::outln!(
                    "\nWrote {}, timeseries.csv, showback.csv{}{}",
                    path.display(),
                    if workflows_csv { ", workflows.csv" } else { "" },
                    if plots.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " and {} plots in {}",
                            plots.len(),
                            out.join("plots").display()
                        )
                    }
                );
            }
            Ok(())
        }
        Command::Check { scenario, sets } => {
            let loaded = load_scenario(&scenario, &sets)?;
            for note in &loaded.notes {
                eprintln!("note: {note}");
            }
            factorysim::out!("{}", report::check_table(&loaded.file, &loaded.scenario));
            factorysim::out!(
                "{}",
                factorysim::capacity::gpu_capacity_table(&loaded.scenario)
            );
            if !loaded.spec.gates.is_empty() {
                factorysim::outln!(
                    "\nPromotion gates for `compare`: {}",
                    loaded.spec.gates.join(", ")
                );
            }
            Ok(())
        }
        Command::Trace(args) => factorysim::trace_cmd::run_trace(args),
        Command::Fit(args) => factorysim::trace_cmd::run_fit(args),
        Command::Calibrate(args) => factorysim::calibrate::run(args),
        Command::Compare(args) => factorysim::compare::run(args),
        Command::Sweep(args) => factorysim::sweep::run(args),
    }
}

/// The run's progress bar (stderr, only on a terminal).
fn progress_bar(len: u64) -> indicatif::ProgressBar {
    factorysim::progress_bar(
        len,
        "{spinner} simulating [{bar:40}] {percent}% ({elapsed})",
    )
}

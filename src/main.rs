//! The factorysim command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use factorysim::{InputError, load_scenario, report};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sim_core::RunOptions;
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
        after_help = "Examples:\n  factorysim run scenarios/quickstart.toml\n  factorysim run scenarios/mmc.toml --seed 7 --out out/mmc --set pools.agents.servers=5"
    )]
    Run {
        /// Scenario file (TOML).
        scenario: PathBuf,
        /// Master seed (overrides simulation.seed).
        #[arg(long)]
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
        } => {
            if let Some(seed) = seed {
                sets.push(format!("simulation.seed={seed}"));
            }
            let loaded = load_scenario(&scenario, &sets)?;
            let bar = progress_bar();
            let mut tick = |f: f64| bar.set_position((f * 1000.0) as u64);
            let result = sim_core::run(
                &loaded.scenario,
                RunOptions {
                    progress: Some(&mut tick),
                    ..Default::default()
                },
            );
            bar.finish_and_clear();
            let summary = result.summary();
            let text = serde_json::to_string_pretty(&summary)? + "\n";
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create output directory {}", out.display()))?;
            let path = out.join("summary.json");
            std::fs::write(&path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            if json {
                print!("{text}");
            } else {
                println!("{}", loaded.file);
                print!("{}", report::run_table(&summary));
                println!("\nWrote {}", path.display());
            }
            Ok(())
        }
        Command::Check { scenario, sets } => {
            let loaded = load_scenario(&scenario, &sets)?;
            print!("{}", report::check_table(&loaded.file, &loaded.scenario));
            Ok(())
        }
        Command::Trace(args) => factorysim::trace_cmd::run_trace(args),
        Command::Fit(args) => factorysim::trace_cmd::run_fit(args),
        Command::Calibrate(args) => factorysim::calibrate::run(args),
    }
}

/// A progress bar on stderr, only when stderr is a terminal.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} simulating [{bar:40}] {percent}% ({elapsed})")
    {
        bar.set_style(style);
    }
    bar
}

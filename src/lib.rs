//! factorysim: scenario loading, reporting and the command-line verbs. The engine is in
//! `sim-core`; this crate turns files into scenarios and results into tables and JSON.

/// `print!` to stdout that does not panic when stdout is closed early
/// (`factorysim run ... | head`): the command goes on and still writes its files.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::write_stdout(format_args!($($t)*)) };
}

/// `println!` to stdout, as [`out!`].
#[macro_export]
macro_rules! outln {
    () => { $crate::write_stdout(format_args!("\n")) };
    ($($t:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($t)*))) };
}

/// Writes to stdout, ignoring errors: a reader that went away (a closed pipe) is not
/// a failure of the run.
pub fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_fmt(args);
}

pub mod calibrate;
pub mod capacity;
pub mod compare;
pub mod empirical_csv;
pub mod gates;
pub mod load;
pub mod outputs;
pub mod plots;
pub mod replay;
pub mod replications;
pub mod report;
pub mod spans;
pub mod sweep;
pub mod trace_cmd;
pub mod trace_stream;

pub use load::{InputError, LoadedScenario, load_scenario, parse_scenario};

/// Runs a scenario with the standard control-plane policies (every CLI verb uses this;
/// `sim_core::run` alone only knows FIFO, first-available routing and fixed capacity).
pub fn simulate(
    scenario: &sim_core::Scenario,
    progress: Option<&mut dyn FnMut(f64)>,
) -> sim_core::RunResult {
    sim_core::run(
        scenario,
        sim_core::RunOptions {
            progress,
            policies: Some(&policies::Standard),
            ..Default::default()
        },
    )
}

/// [`simulate`], also logging every finished hop, all held until the run ends (exact
/// tests; a span log is written as the run goes with [`simulate_with_hop_sink`]).
pub fn simulate_logged(
    scenario: &sim_core::Scenario,
    mut progress: Option<&mut dyn FnMut(f64)>,
) -> (sim_core::RunResult, Vec<sim_core::metrics::HopRecord>) {
    let mut log = Vec::new();
    let result = sim_core::run(
        scenario,
        sim_core::RunOptions {
            progress: progress.as_mut().map(|p| &mut **p as &mut dyn FnMut(f64)),
            hop_log: Some(&mut log),
            policies: Some(&policies::Standard),
            ..Default::default()
        },
    );
    (result, log)
}

/// [`simulate`], handing each workflow's hops to `sink` once they are final
/// (`sim_core::RunOptions::hop_sink`): `run --spans` writes its span log this way.
pub fn simulate_with_hop_sink(
    scenario: &sim_core::Scenario,
    mut progress: Option<&mut dyn FnMut(f64)>,
    sink: &mut dyn FnMut(sim_core::metrics::WorkflowHops<'_>),
) -> sim_core::RunResult {
    let progress = progress.as_mut().map(|p| &mut **p as &mut dyn FnMut(f64));
    simulate_with(scenario, progress, Some(sink), false)
}

/// [`simulate`] with an optional hop sink, keeping a record of every workflow when
/// `keep_workflows` (`RunResult::workflows`, for `run --workflows-csv`).
pub fn simulate_with<'a>(
    scenario: &sim_core::Scenario,
    progress: Option<&'a mut dyn FnMut(f64)>,
    hop_sink: Option<&'a mut dyn FnMut(sim_core::metrics::WorkflowHops<'_>)>,
    keep_workflows: bool,
) -> sim_core::RunResult {
    sim_core::run(
        scenario,
        sim_core::RunOptions {
            progress,
            hop_sink,
            keep_workflows,
            policies: Some(&policies::Standard),
            ..Default::default()
        },
    )
}

/// Refuses a run during which a streamed trace could not be read (the file changed or
/// vanished after loading checked every row): its results would miss rows silently.
pub fn check_input(r: &sim_core::RunResult) -> Result<(), InputError> {
    match r.input_errors.first() {
        None => Ok(()),
        Some(e) => Err(InputError::new(
            "",
            format!("trace read during the run failed, results discarded: {e}"),
        )),
    }
}

/// A progress bar on stderr drawn with the indicatif `template`; hidden when stderr is
/// not a terminal (so logs and pipes stay clean).
pub fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod story_tests;

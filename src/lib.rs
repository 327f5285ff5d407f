//! factorysim: scenario loading, reporting and the command-line verbs. The engine is in
//! `sim-core`; this crate turns files into scenarios and results into tables and JSON.

pub mod calibrate;
pub mod load;
pub mod report;
pub mod trace_cmd;

pub use load::{InputError, LoadedScenario, load_scenario, parse_scenario};

#[cfg(test)]
mod story_tests;

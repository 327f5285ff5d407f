//! sim-core: the deterministic engine of factorysim.
//!
//! - [`time`]: integer-nanosecond simulated time with human parsing and printing.
//! - [`event_queue`]: the future-event list, ordered by (time, insertion sequence).
//! - [`rng`]: named random streams derived from one master seed.
//! - [`dist`]: distributions as written in scenarios, and their samplers.
//! - [`scenario`]: the scenario schema and its validation.
//! - [`station`]: the trait every pool implements; [`queue_station`] the c-server FIFO.
//! - [`sim`]: the run loop. [`metrics`]: what a run measured and `summary.json`.
//! - [`theory`]: closed-form queueing results the engine is checked against.

pub mod dist;
pub mod event_queue;
pub mod gpu;
pub mod metrics;
pub mod policy;
pub mod queue_station;
pub mod rng;
pub mod scenario;
pub mod sim;
pub mod station;
pub mod theory;
pub mod time;
pub mod workflow;

pub use event_queue::EventQueue;
pub use metrics::{RunResult, Summary};
pub use rng::{SimRng, StreamFactory};
pub use scenario::{Scenario, ScenarioSpec, SpecError};
pub use sim::{RunOptions, run};
pub use time::{SimDuration, SimTime};

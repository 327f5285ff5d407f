//! Replay transforms: time-scale, window, sample, loop. Usable as iterator adapters
//! on any stream of `Result<T, TraceError>` with `T: Timed` (errors pass through
//! untouched), and bundled in [`Replay`], which reopens the file for each loop so that
//! nothing is held in memory.
//!
//! Order of application: window (in the trace's own time) -> sample -> time-scale ->
//! loop offset.

use crate::error::TraceError;
use crate::request::{ReadOptions, ReadReport, RequestReader, RequestRecord};
use crate::span::SpanSource;
use crate::workflow::{Workflow, WorkflowReader, open_workflows};
use sim_core::SimDuration;
use std::path::{Path, PathBuf};

/// Something that arrives at a time: a request or a workflow.
pub trait Timed {
    fn arrival_ns(&self) -> u64;
    fn set_arrival_ns(&mut self, ns: u64);
    /// Called on items of loop pass `pass` >= 1 (workflows make their id unique).
    fn on_loop(&mut self, _pass: u32) {}
}

impl Timed for RequestRecord {
    fn arrival_ns(&self) -> u64 {
        self.arrival_ns
    }
    fn set_arrival_ns(&mut self, ns: u64) {
        self.arrival_ns = ns;
    }
    /// Appends `#pass` to the session id, so a looped session is a new session.
    fn on_loop(&mut self, pass: u32) {
        if let Some(s) = &mut self.session {
            *s = format!("{s}#{pass}");
        }
    }
}

impl Timed for Workflow {
    fn arrival_ns(&self) -> u64 {
        self.arrival_ns
    }
    fn set_arrival_ns(&mut self, ns: u64) {
        self.arrival_ns = ns;
    }
    /// Appends `#pass` to the workflow id (and its spans' workflow ids).
    fn on_loop(&mut self, pass: u32) {
        self.id = format!("{}#{pass}", self.id);
        for s in &mut self.spans {
            s.workflow_id.clone_from(&self.id);
        }
    }
}

/// `ns / rate`, rounded to the nearest nanosecond (exact for integer rates dividing
/// `ns`); `rate` is the arrival-rate multiplier (2 = twice as many arrivals a second).
pub fn scale_ns(ns: u64, rate: f64) -> u64 {
    if rate == 1.0 {
        return ns;
    }
    if rate.fract() == 0.0 && rate >= 1.0 && rate < u64::MAX as f64 {
        let k = rate as u64;
        return ns / k + u64::from(ns % k >= k.div_ceil(2) && k > 1);
    }
    let v = (ns as f64 / rate).round();
    if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        v as u64
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Deterministic sampling: row `index` is kept when SplitMix64(seed, index), as a
/// fraction of 2^64, is below `fraction`. The same (seed, fraction) keeps the same rows
/// on every run and machine, and a smaller fraction keeps a subset of a larger one.
pub fn sample_keep(seed: u64, fraction: f64, index: u64) -> bool {
    if fraction >= 1.0 {
        return true;
    }
    if fraction.is_nan() || fraction <= 0.0 {
        return false;
    }
    let h = splitmix64(splitmix64(seed) ^ index);
    (h as f64) < fraction * 18_446_744_073_709_551_616.0
}

/// Keep items with `start <= arrival < end` (`end = None`: no end); with `rebase`, the
/// kept arrivals become `arrival - start`.
pub struct WindowIter<I> {
    inner: I,
    start: u64,
    end: Option<u64>,
    rebase: bool,
}

/// Scales arrivals by `1 / rate`.
pub struct ScaleIter<I> {
    inner: I,
    rate: f64,
}

/// Keeps item `i` (0-based among the `Ok` items) when [`sample_keep`] says so.
pub struct SampleIter<I> {
    inner: I,
    seed: u64,
    fraction: f64,
    index: u64,
}

impl<T: Timed, I: Iterator<Item = Result<T, TraceError>>> Iterator for WindowIter<I> {
    type Item = Result<T, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.inner.next()? {
                Ok(mut x) => {
                    let t = x.arrival_ns();
                    if t >= self.start && self.end.is_none_or(|e| t < e) {
                        if self.rebase {
                            x.set_arrival_ns(t - self.start);
                        }
                        return Some(Ok(x));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl<T: Timed, I: Iterator<Item = Result<T, TraceError>>> Iterator for ScaleIter<I> {
    type Item = Result<T, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        Some(self.inner.next()?.map(|mut x| {
            x.set_arrival_ns(scale_ns(x.arrival_ns(), self.rate));
            x
        }))
    }
}

impl<T: Timed, I: Iterator<Item = Result<T, TraceError>>> Iterator for SampleIter<I> {
    type Item = Result<T, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.inner.next()? {
                Ok(x) => {
                    let i = self.index;
                    self.index += 1;
                    if sample_keep(self.seed, self.fraction, i) {
                        return Some(Ok(x));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Replay adapters for any stream of timed results.
pub trait ReplayExt<T: Timed>: Iterator<Item = Result<T, TraceError>> + Sized {
    /// Multiplies the arrival rate by `rate` (arrival_ns / rate).
    fn scale_rate(self, rate: f64) -> ScaleIter<Self> {
        ScaleIter { inner: self, rate }
    }
    /// Keeps `[start_ns, end_ns)`, rebasing kept arrivals to `arrival - start_ns`.
    fn window(self, start_ns: u64, end_ns: Option<u64>) -> WindowIter<Self> {
        WindowIter {
            inner: self,
            start: start_ns,
            end: end_ns,
            rebase: true,
        }
    }
    /// Keeps the fraction of items chosen by [`sample_keep`].
    fn sample(self, fraction: f64, seed: u64) -> SampleIter<Self> {
        SampleIter {
            inner: self,
            seed,
            fraction,
            index: 0,
        }
    }
}

impl<T: Timed, I: Iterator<Item = Result<T, TraceError>>> ReplayExt<T> for I {}

/// How to replay a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayOptions {
    /// Arrival-rate multiplier: 2.0 replays twice as fast (arrival_ns / 2).
    pub rate: f64,
    /// Keep arrivals in `[start, end)` ns of the trace's own time; kept arrivals are
    /// rebased to `arrival - start`.
    pub window: Option<(u64, Option<u64>)>,
    /// Keep this fraction of rows (deterministic in `sample_seed`).
    pub sample_fraction: f64,
    pub sample_seed: u64,
    /// Number of passes over the trace (1 = play once). Pass k is offset by k x period.
    pub loops: u32,
    /// The loop period in output ns; by default the first pass's span (last - first
    /// arrival) plus its mean inter-arrival gap, or `(end - start) / rate` for a
    /// window with an end.
    pub loop_period_ns: Option<u64>,
    /// A pass that would start at or after this output ns is not read: a replay bound
    /// to a run's horizon reads no pass it could never reach (`loops = 1000000` on a
    /// one-hour run reads the passes that start within the hour).
    pub until_ns: Option<u64>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            rate: 1.0,
            window: None,
            sample_fraction: 1.0,
            sample_seed: 0,
            loops: 1,
            loop_period_ns: None,
            until_ns: None,
        }
    }
}

impl ReplayOptions {
    /// Checks the options; the message names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if !self.rate.is_finite() || self.rate <= 0.0 {
            return Err(format!("rate must be a number > 0, got {}", self.rate));
        }
        if !(0.0..=1.0).contains(&self.sample_fraction) {
            return Err(format!(
                "sample fraction must be in [0, 1], got {}",
                self.sample_fraction
            ));
        }
        if let Some((s, Some(e))) = self.window
            && e <= s
        {
            return Err(format!(
                "window end ({}) must be after its start ({})",
                SimDuration(e),
                SimDuration(s)
            ));
        }
        if self.loops == 0 {
            return Err("loops must be at least 1".into());
        }
        Ok(())
    }
}

/// A reader whose counts can be asked for at the end.
pub trait ReportingSource {
    fn read_report(&self) -> ReadReport;
}

impl ReportingSource for RequestReader {
    fn read_report(&self) -> ReadReport {
        self.report().clone()
    }
}

impl<S: SpanSource> ReportingSource for WorkflowReader<S> {
    fn read_report(&self) -> ReadReport {
        self.report()
    }
}

type Opener<S> = Box<dyn FnMut() -> Result<S, TraceError> + Send>;

/// A trace replayed with [`ReplayOptions`]; yields items in file order per pass.
pub struct Replay<S> {
    open: Opener<S>,
    current: Option<S>,
    opts: ReplayOptions,
    pass: u32,
    index: u64,
    offset: u64,
    first: Option<u64>,
    last: u64,
    count: u64,
    emitted: u64,
    report: ReadReport,
    failed: bool,
}

/// Counts after (or during) a replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// What reading the file found (one pass: every pass reads the same file).
    pub read: ReadReport,
    /// Items yielded over all passes.
    pub emitted: u64,
    /// Passes started.
    pub passes: u32,
}

impl<T, S> Replay<S>
where
    T: Timed,
    S: Iterator<Item = Result<T, TraceError>> + ReportingSource,
{
    /// `open` is called once per pass and must yield the same items each time.
    pub fn new(
        open: impl FnMut() -> Result<S, TraceError> + Send + 'static,
        opts: ReplayOptions,
    ) -> Result<Self, TraceError> {
        opts.validate()
            .map_err(|m| TraceError::file("replay options", m))?;
        let mut open: Opener<S> = Box::new(open);
        let first = open()?;
        Ok(Replay {
            open,
            current: Some(first),
            opts,
            pass: 0,
            index: 0,
            offset: 0,
            first: None,
            last: 0,
            count: 0,
            emitted: 0,
            report: ReadReport::default(),
            failed: false,
        })
    }

    pub fn report(&self) -> ReplayReport {
        let read = match (&self.current, self.pass) {
            (Some(s), 0) => s.read_report(),
            _ => self.report.clone(),
        };
        ReplayReport {
            read,
            emitted: self.emitted,
            passes: self.pass + 1,
        }
    }

    fn period(&self) -> u64 {
        if let Some(p) = self.opts.loop_period_ns {
            return p.max(1);
        }
        if let Some((s, Some(e))) = self.opts.window {
            return scale_ns(e - s, self.opts.rate).max(1);
        }
        match self.first {
            Some(f) if self.count >= 2 => {
                let span = self.last.saturating_sub(f);
                (span + span / (self.count - 1)).max(1)
            }
            _ => 1,
        }
    }

    fn transform(&mut self, mut x: T) -> Option<T> {
        let t = x.arrival_ns();
        if let Some((s, e)) = self.opts.window {
            if t < s || e.is_some_and(|e| t >= e) {
                return None;
            }
            x.set_arrival_ns(t - s);
        }
        let i = self.index;
        self.index += 1;
        if !sample_keep(self.opts.sample_seed, self.opts.sample_fraction, i) {
            return None;
        }
        let scaled = scale_ns(x.arrival_ns(), self.opts.rate);
        if self.pass == 0 {
            self.first.get_or_insert(scaled);
            self.last = self.last.max(scaled);
            self.count += 1;
        } else {
            x.on_loop(self.pass);
        }
        x.set_arrival_ns(scaled.saturating_add(self.offset));
        Some(x)
    }
}

impl<T, S> Iterator for Replay<S>
where
    T: Timed,
    S: Iterator<Item = Result<T, TraceError>> + ReportingSource,
{
    type Item = Result<T, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            let src = self.current.as_mut()?;
            match src.next() {
                Some(Ok(x)) => {
                    if let Some(y) = self.transform(x) {
                        self.emitted += 1;
                        return Some(Ok(y));
                    }
                }
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                None => {
                    if self.pass == 0 {
                        self.report = src.read_report();
                    }
                    let period = self.period();
                    let next_start = period.saturating_mul(self.pass as u64 + 1);
                    if self.pass + 1 >= self.opts.loops
                        || self.opts.until_ns.is_some_and(|u| next_start >= u)
                    {
                        self.current = None;
                        return None;
                    }
                    self.pass += 1;
                    self.index = 0;
                    self.offset = period.saturating_mul(self.pass as u64);
                    match (self.open)() {
                        Ok(s) => self.current = Some(s),
                        Err(e) => {
                            self.failed = true;
                            return Some(Err(e));
                        }
                    }
                }
            }
        }
    }
}

/// A request trace replayed.
pub type RequestReplay = Replay<RequestReader>;

/// A span trace replayed as workflows.
pub type WorkflowReplay = Replay<WorkflowReader<Box<dyn SpanSource + Send>>>;

/// Opens a request trace (Azure, Mooncake, simple CSV) for replay.
pub fn replay_requests(
    path: &Path,
    read: &ReadOptions,
    opts: &ReplayOptions,
) -> Result<RequestReplay, TraceError> {
    let path: PathBuf = path.to_path_buf();
    let read = read.clone();
    Replay::new(move || RequestReader::open(&path, &read), opts.clone())
}

/// Opens a span trace (span log, OTLP) for replay as workflows.
pub fn replay_workflows(
    path: &Path,
    read: &ReadOptions,
    opts: &ReplayOptions,
) -> Result<WorkflowReplay, TraceError> {
    let path: PathBuf = path.to_path_buf();
    let read = read.clone();
    Replay::new(move || open_workflows(&path, &read), opts.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_scaling_rounds_half_up() {
        assert_eq!(scale_ns(10, 2.0), 5);
        assert_eq!(scale_ns(11, 2.0), 6);
        assert_eq!(scale_ns(10, 3.0), 3);
        assert_eq!(scale_ns(11, 3.0), 4);
        assert_eq!(scale_ns(10, 0.5), 20);
        assert_eq!(scale_ns(7, 1.0), 7);
    }

    #[test]
    fn sampling_is_stable_and_nested() {
        let a: Vec<u64> = (0..10_000).filter(|&i| sample_keep(7, 0.3, i)).collect();
        let b: Vec<u64> = (0..10_000).filter(|&i| sample_keep(7, 0.3, i)).collect();
        let small: Vec<u64> = (0..10_000).filter(|&i| sample_keep(7, 0.1, i)).collect();
        assert_eq!(a, b);
        assert!(small.iter().all(|i| a.contains(i)));
        let share = a.len() as f64 / 10_000.0;
        assert!((share - 0.3).abs() < 0.02, "{share}");
    }
}

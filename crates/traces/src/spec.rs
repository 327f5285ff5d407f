//! A trace replay as a scenario would write it, ready to deserialize from TOML:
//!
//! ```toml
//! trace = { file = "traces/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv",
//!           rate = 2, window_start = "10m", window_end = "40m", sample = 0.5, loops = 2,
//!           rules = [{ when = [{ field = "input_tokens", min = 4000 }], class = "long" }] }
//! ```
//!
//! Relative `file` paths are resolved against a base directory chosen by the caller
//! (the scenario file's folder).

use crate::format::TraceFormat;
use crate::replay::ReplayOptions;
use crate::request::ReadOptions;
use crate::rules::{Rule, RuleSet};
use serde::Deserialize;
use sim_core::SimDuration;
use std::path::{Path, PathBuf};

fn one() -> f64 {
    1.0
}

fn one_u32() -> u32 {
    1
}

/// A label a span trace records that a replay can keep (`apply_recorded`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum RecordedLabel {
    Tenant,
    Lane,
}

/// How a scenario asks for a trace to be replayed.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TraceSpec {
    pub file: PathBuf,
    /// `azure`, `simple`, `mooncake`, `spans`, `otlp`; detected when absent.
    #[serde(default)]
    pub format: Option<String>,
    /// Arrival-rate multiplier.
    #[serde(default = "one")]
    pub rate: f64,
    #[serde(default)]
    pub window_start: Option<SimDuration>,
    #[serde(default)]
    pub window_end: Option<SimDuration>,
    /// Fraction of rows kept.
    #[serde(default = "one")]
    pub sample: f64,
    /// Seed of the sampling; the caller may default it to the scenario seed.
    #[serde(default)]
    pub sample_seed: Option<u64>,
    #[serde(default = "one_u32")]
    pub loops: u32,
    #[serde(default)]
    pub loop_period: Option<SimDuration>,
    #[serde(default)]
    pub skip_bad_rows: bool,
    /// Span traces: grouping window in spans.
    #[serde(default)]
    pub group_window: Option<u64>,
    /// Field-to-label rules, first match wins.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Span traces: the recorded labels each workflow keeps where no rule sets them
    /// (`tenant`: the workflow's; `lane`: its first root span's).
    #[serde(default)]
    pub apply_recorded: Vec<RecordedLabel>,
    /// In a run: read the rows as the run advances (true; where they are in time order
    /// and carry no session ids) or hold them all in memory (false). Absent: hold the
    /// rows when they take less than 256 MiB held, else stream. Results are
    /// identical either way.
    #[serde(default)]
    pub stream: Option<bool>,
}

impl TraceSpec {
    /// The file, relative paths taken from `base_dir`.
    pub fn path(&self, base_dir: &Path) -> PathBuf {
        if self.file.is_absolute() {
            self.file.clone()
        } else {
            base_dir.join(&self.file)
        }
    }

    /// Reading options; the error names the bad key.
    pub fn read_options(&self) -> Result<ReadOptions, String> {
        let format = match &self.format {
            None => None,
            Some(f) => Some(
                f.parse::<TraceFormat>()
                    .map_err(|e| format!("format: {e}"))?,
            ),
        };
        if self.group_window == Some(0) {
            return Err(
                "group_window: expected at least 1 span (a workflow is complete once this many spans pass without one of its own)"
                    .into(),
            );
        }
        Ok(ReadOptions {
            format,
            skip_bad_rows: self.skip_bad_rows,
            group_window_spans: self.group_window,
        })
    }

    /// Replay options (`default_seed` when `sample_seed` is absent); the error names
    /// the bad key.
    pub fn replay_options(&self, default_seed: u64) -> Result<ReplayOptions, String> {
        let window = match (self.window_start, self.window_end) {
            (None, None) => None,
            (s, e) => Some((s.map_or(0, |d| d.as_nanos()), e.map(|d| d.as_nanos()))),
        };
        let opts = ReplayOptions {
            rate: self.rate,
            window,
            sample_fraction: self.sample,
            sample_seed: self.sample_seed.unwrap_or(default_seed),
            loops: self.loops,
            loop_period_ns: self.loop_period.map(|d| d.as_nanos()),
            until_ns: None,
        };
        opts.validate()?;
        Ok(opts)
    }

    /// The rules, checked.
    pub fn rule_set(&self) -> Result<RuleSet, String> {
        RuleSet::new(self.rules.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_from_json_like_toml_would() {
        let spec: TraceSpec = serde_json::from_str(
            r#"{"file": "t.csv", "rate": 2, "window_start": "10m", "window_end": "40m",
                "sample": 0.5, "loops": 2,
                "rules": [{"when": [{"field": "input_tokens", "min": 4000}], "class": "long"}]}"#,
        )
        .unwrap();
        let o = spec.replay_options(9).unwrap();
        assert_eq!(o.rate, 2.0);
        assert_eq!(o.window, Some((600_000_000_000, Some(2_400_000_000_000))));
        assert_eq!((o.sample_seed, o.loops), (9, 2));
        assert_eq!(spec.rule_set().unwrap().rules.len(), 1);
        assert_eq!(spec.path(Path::new("/s")), PathBuf::from("/s/t.csv"));
        let bad: TraceSpec = serde_json::from_str(r#"{"file": "t", "format": "parquet"}"#).unwrap();
        assert!(
            bad.read_options()
                .unwrap_err()
                .starts_with("format: unknown trace format")
        );
        let bad: TraceSpec = serde_json::from_str(r#"{"file": "t", "rate": 0}"#).unwrap();
        assert!(bad.replay_options(0).unwrap_err().contains("rate"));
        assert!(serde_json::from_str::<TraceSpec>(r#"{"file": "t", "speed": 2}"#).is_err());
        let kept: TraceSpec =
            serde_json::from_str(r#"{"file": "t", "apply_recorded": ["lane", "tenant"]}"#).unwrap();
        assert_eq!(
            kept.apply_recorded,
            [RecordedLabel::Lane, RecordedLabel::Tenant]
        );
        let e = serde_json::from_str::<TraceSpec>(r#"{"file": "t", "apply_recorded": ["class"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected `tenant` or `lane`"), "{e}");
    }
}

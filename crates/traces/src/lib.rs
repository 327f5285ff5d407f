//! Trace readers, writers, replay and workload fitting for factorysim.
//!
//! - Flat request traces ([`RequestRecord`]): Azure LLM inference CSV, Mooncake JSONL,
//!   the simple `arrived_at,num_prefill_tokens,num_decode_tokens` CSV
//!   ([`RequestReader`]).
//! - Agent span traces ([`SpanRecord`], grouped into [`Workflow`] DAGs): span-log JSONL
//!   ([`SpanLogReader`], written by [`SpanLogWriter`]) and OTLP JSON with the GenAI
//!   semantic conventions ([`OtlpReader`]), grouped by [`WorkflowReader`].
//! - Replay ([`replay`]): time-scale, window, sample, loop; [`rules`] map trace fields
//!   to class, tenant, lane and tier.
//! - Statistics and fitting ([`stats`], [`fit`]).
//!
//! Every reader streams (one line, or one OTLP document, at a time) and decompresses
//! gzip transparently; every error is a [`TraceError`] naming file and line.

pub mod error;
pub mod fit;
pub mod format;
pub mod io;
pub mod otlp;
pub mod replay;
pub mod request;
pub mod rules;
pub mod span;
pub mod spec;
pub mod stats;
pub mod timefmt;
pub mod workflow;

pub use error::{DagIssue, TraceError};
pub use fit::{ArrivalFit, ClassFit, DistFamily, FitOptions, FitProfile, fit_requests, fit_spans};
pub use format::TraceFormat;
pub use otlp::{OtlpReader, OtlpWriter};
pub use replay::{
    Replay, ReplayExt, ReplayOptions, ReplayReport, RequestReplay, Timed, WorkflowReplay,
    replay_requests, replay_workflows,
};
pub use request::{ReadOptions, ReadReport, RequestReader, RequestRecord};
pub use rules::{Condition, Labels, Rule, RuleSet};
pub use span::{SpanKind, SpanLogReader, SpanLogWriter, SpanRecord, SpanSource, SpanStatus};
pub use spec::{RecordedLabel, TraceSpec};
pub use stats::{RequestStats, SpanStats, request_stats, span_stats};
pub use workflow::{Workflow, WorkflowReader, open_workflows};

//! Agent span logs: one model or tool call per JSON line. Reader and writer of the same
//! format, so a simulation can write its hops and read them back.

use crate::error::TraceError;
use crate::io::Lines;
use crate::request::{ReadReport, ms_number_to_ns};
use crate::timefmt::parse_rfc3339;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// What a span did.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// A model call (prefill + decode).
    #[default]
    Llm,
    /// A tool call (waits `tool_wait_ms`).
    Tool,
    /// A structural span that does no work itself (an OTLP `invoke_agent` span, say):
    /// kept so that its children keep their parent links.
    Agent,
}

impl SpanKind {
    pub fn name(self) -> &'static str {
        match self {
            SpanKind::Llm => "llm",
            SpanKind::Tool => "tool",
            SpanKind::Agent => "agent",
        }
    }
}

/// How a span ended. Written only when not `ok`; read case-insensitively from
/// `status` (`ok`, `unset`, `error`, `timeout`, `lost`; OpenTelemetry's
/// `STATUS_CODE_OK` / `STATUS_CODE_UNSET` / `STATUS_CODE_ERROR` too).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SpanStatus {
    /// It returned (also `unset`, and the field absent).
    #[default]
    Ok,
    /// It came back failed.
    Error,
    /// Its caller stopped waiting for it.
    Timeout,
    /// It died with the machine serving it (a preempted replica).
    Lost,
}

impl SpanStatus {
    pub fn name(self) -> &'static str {
        match self {
            SpanStatus::Ok => "ok",
            SpanStatus::Error => "error",
            SpanStatus::Timeout => "timeout",
            SpanStatus::Lost => "lost",
        }
    }

    /// Parses a status as logged, ignoring case.
    pub fn parse(text: &str) -> Result<SpanStatus, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "ok" | "unset" | "" | "status_code_ok" | "status_code_unset" => Ok(SpanStatus::Ok),
            "error" | "status_code_error" => Ok(SpanStatus::Error),
            "timeout" => Ok(SpanStatus::Timeout),
            "lost" => Ok(SpanStatus::Lost),
            _ => Err(format!(
                "status: expected ok, unset, error, timeout or lost, got `{text}`"
            )),
        }
    }

    fn is_ok(&self) -> bool {
        *self == SpanStatus::Ok
    }
}

/// One span: a model or tool call of a workflow.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpanRecord {
    pub workflow_id: String,
    pub span_id: String,
    /// `None` for a root span (the field absent, `null` or `""`).
    pub parent_span_id: Option<String>,
    /// Other spans of the workflow this span also waited for (a join: `links`, like
    /// OpenTelemetry span links), besides its parent; empty for most spans.
    pub links: Vec<String>,
    pub kind: SpanKind,
    pub agent_role: String,
    pub model_tier: String,
    pub lane: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens served from a prefix cache (part of `input_tokens`).
    pub cached_tokens: u64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub tool_wait_ms: f64,
    pub usd_estimate: f64,
    /// Start in ns: `start_ms` x 1e6 (whatever origin the log uses) or `start_time`
    /// (RFC 3339) as ns since the Unix epoch.
    pub start_ns: u64,
    pub tenant: Option<String>,
    pub workflow_class: Option<String>,
    /// 1 for a first attempt; 2, 3, ... for retries of the same call.
    pub attempt: u32,
    /// How the call ended.
    pub status: SpanStatus,
    /// 1-based line in the source file (0 for spans built in memory).
    pub line: u64,
}

/// A workflow or span id written as a string or an integer.
#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Text(String),
    Int(u64),
}

impl Id {
    fn into_string(self) -> String {
        match self {
            Id::Text(s) => s,
            Id::Int(i) => i.to_string(),
        }
    }
}

/// The JSON line as read (lenient: most fields optional).
#[derive(Deserialize)]
struct SpanLineIn {
    workflow_id: Id,
    span_id: Id,
    #[serde(default)]
    parent_span_id: Option<Id>,
    #[serde(default)]
    links: Option<Vec<Id>>,
    #[serde(default)]
    kind: Option<SpanKind>,
    #[serde(default)]
    agent_role: String,
    #[serde(default)]
    model_tier: String,
    #[serde(default)]
    lane: String,
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cached_tokens: u64,
    #[serde(default)]
    prefill_ms: f64,
    #[serde(default)]
    decode_ms: f64,
    #[serde(default)]
    tool_wait_ms: f64,
    #[serde(default)]
    usd_estimate: f64,
    #[serde(default)]
    start_ms: Option<serde_json::Number>,
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    workflow_class: Option<String>,
    #[serde(default)]
    attempt: Option<u32>,
    #[serde(default)]
    status: Option<String>,
}

/// The JSON line as written.
#[derive(Serialize)]
struct SpanLineOut<'a> {
    workflow_id: &'a str,
    span_id: &'a str,
    parent_span_id: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    links: &'a [String],
    kind: SpanKind,
    agent_role: &'a str,
    model_tier: &'a str,
    lane: &'a str,
    input_tokens: u64,
    output_tokens: u64,
    cached_tokens: u64,
    prefill_ms: f64,
    decode_ms: f64,
    tool_wait_ms: f64,
    usd_estimate: f64,
    start_ms: serde_json::Number,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow_class: Option<&'a str>,
    #[serde(skip_serializing_if = "is_first_attempt")]
    attempt: u32,
    #[serde(skip_serializing_if = "SpanStatus::is_ok")]
    status: SpanStatus,
}

fn is_first_attempt(a: &u32) -> bool {
    *a <= 1
}

fn non_negative(v: f64, what: &str) -> Result<f64, String> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{what}: expected a number >= 0, got {v}"))
    }
}

/// Parses one span-log line.
pub fn parse_span_line(line: u64, text: &str) -> Result<SpanRecord, String> {
    let s: SpanLineIn = serde_json::from_str(text).map_err(|e| {
        format!("expected a span-log JSON object (workflow_id, span_id, start_ms, ...): {e}")
    })?;
    let start_ns = match (&s.start_ms, &s.start_time) {
        (Some(ms), _) => ms_number_to_ns(ms, "start_ms")?,
        (None, Some(t)) => {
            let ns = parse_rfc3339(t).map_err(|e| format!("start_time: {e}"))?;
            u64::try_from(ns).map_err(|_| format!("start_time `{t}` is before 1970"))?
        }
        (None, None) => return Err("expected `start_ms` or `start_time`".into()),
    };
    let parent_span_id = s
        .parent_span_id
        .map(Id::into_string)
        .filter(|p| !p.is_empty());
    // Links in file order, repeats dropped.
    let mut links: Vec<String> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for l in s.links.unwrap_or_default() {
        let l = l.into_string();
        if l.is_empty() {
            return Err("links: span ids must not be empty".into());
        }
        if seen.insert(l.clone()) {
            links.push(l);
        }
    }
    let kind = s.kind.unwrap_or(
        if s.input_tokens == 0 && s.output_tokens == 0 && s.tool_wait_ms > 0.0 {
            SpanKind::Tool
        } else {
            SpanKind::Llm
        },
    );
    let workflow_id = s.workflow_id.into_string();
    let span_id = s.span_id.into_string();
    if workflow_id.is_empty() || span_id.is_empty() {
        return Err("workflow_id and span_id must not be empty".into());
    }
    if s.cached_tokens > s.input_tokens {
        return Err(format!(
            "cached_tokens ({}) must not exceed input_tokens ({})",
            s.cached_tokens, s.input_tokens
        ));
    }
    Ok(SpanRecord {
        workflow_id,
        span_id,
        parent_span_id,
        links,
        kind,
        agent_role: s.agent_role,
        model_tier: s.model_tier,
        lane: s.lane,
        input_tokens: s.input_tokens,
        output_tokens: s.output_tokens,
        cached_tokens: s.cached_tokens,
        prefill_ms: non_negative(s.prefill_ms, "prefill_ms")?,
        decode_ms: non_negative(s.decode_ms, "decode_ms")?,
        tool_wait_ms: non_negative(s.tool_wait_ms, "tool_wait_ms")?,
        usd_estimate: non_negative(s.usd_estimate, "usd_estimate")?,
        start_ns,
        tenant: s.tenant.filter(|t| !t.is_empty()),
        workflow_class: s.workflow_class.filter(|c| !c.is_empty()),
        attempt: s.attempt.unwrap_or(1).max(1),
        status: match &s.status {
            Some(t) => SpanStatus::parse(t)?,
            None => SpanStatus::Ok,
        },
        line,
    })
}

/// A source of spans with a report of what was read (span logs, OTLP).
pub trait SpanSource: Iterator<Item = Result<SpanRecord, TraceError>> {
    fn file(&self) -> &str;
    fn report(&self) -> &ReadReport;
}

/// Reads a span log lazily, one line at a time. Without `skip_bad_rows` a row that
/// does not parse is returned as an error and the next call goes on with the next
/// line (stop at the first error to be strict); an I/O error ends the stream.
pub struct SpanLogReader {
    file: String,
    lines: Lines,
    skip_bad_rows: bool,
    report: ReadReport,
    failed: bool,
}

impl SpanLogReader {
    pub fn open(path: &Path, skip_bad_rows: bool) -> Result<Self, TraceError> {
        Ok(Self::from_lines(Lines::open(path)?, skip_bad_rows))
    }

    pub fn from_lines(lines: Lines, skip_bad_rows: bool) -> Self {
        SpanLogReader {
            file: lines.file().to_string(),
            lines,
            skip_bad_rows,
            report: ReadReport::default(),
            failed: false,
        }
    }
}

impl SpanSource for SpanLogReader {
    fn file(&self) -> &str {
        &self.file
    }
    fn report(&self) -> &ReadReport {
        &self.report
    }
}

impl Iterator for SpanLogReader {
    type Item = Result<SpanRecord, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let outcome = match self.lines.next_line() {
                Ok(None) => return None,
                Err(e @ TraceError::Io { .. }) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Err(e) => Err(e),
                Ok(Some((line, text))) => {
                    if text.trim().is_empty() {
                        continue;
                    }
                    parse_span_line(line, text).map_err(|m| TraceError::row(&self.file, line, m))
                }
            };
            match outcome {
                Ok(span) => {
                    self.report.rows += 1;
                    return Some(Ok(span));
                }
                Err(e) if self.skip_bad_rows => self.report.note_skipped(&e),
                // A bad row is returned; reading may go on after it (the workflow
                // reader does, to find an earlier problem of a workflow still open).
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Writes spans in the span-log format (the reader's format), one JSON object a line.
/// `start_ms` is written as an integer when whole, else as a decimal that reads back
/// to the same nanosecond for starts below about 100 days.
pub struct SpanLogWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> SpanLogWriter<W> {
    pub fn new(out: W) -> Self {
        SpanLogWriter { out, written: 0 }
    }

    pub fn write_span(&mut self, s: &SpanRecord) -> std::io::Result<()> {
        let start_ms = if s.start_ns.is_multiple_of(1_000_000) {
            serde_json::Number::from(s.start_ns / 1_000_000)
        } else {
            serde_json::Number::from_f64(s.start_ns as f64 / 1e6)
                .unwrap_or_else(|| serde_json::Number::from(s.start_ns / 1_000_000))
        };
        let line = SpanLineOut {
            workflow_id: &s.workflow_id,
            span_id: &s.span_id,
            parent_span_id: s.parent_span_id.as_deref(),
            links: &s.links,
            kind: s.kind,
            agent_role: &s.agent_role,
            model_tier: &s.model_tier,
            lane: &s.lane,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            cached_tokens: s.cached_tokens,
            prefill_ms: s.prefill_ms,
            decode_ms: s.decode_ms,
            tool_wait_ms: s.tool_wait_ms,
            usd_estimate: s.usd_estimate,
            start_ms,
            tenant: s.tenant.as_deref(),
            workflow_class: s.workflow_class.as_deref(),
            attempt: s.attempt,
            status: s.status,
        };
        serde_json::to_writer(&mut self.out, &line)?;
        self.out.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    /// Spans written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    /// The output written to so far (to take or reuse what a `Vec<u8>` holds).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

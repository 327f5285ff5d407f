//! Flat request traces (Azure CSV, Mooncake JSONL, simple CSV) read as a stream of
//! [`RequestRecord`]s.

use crate::error::TraceError;
use crate::format::TraceFormat;
use crate::io::Lines;
use crate::timefmt::parse_naive_timestamp;
use serde::Deserialize;
use std::path::Path;

/// One request of a flat trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// Arrival in nanoseconds from the start of the trace (Azure: from the first row;
    /// Mooncake and simple CSV: the recorded offset).
    pub arrival_ns: u64,
    /// Prompt (context, prefill) tokens.
    pub input_tokens: u32,
    /// Generated (decode) tokens.
    pub output_tokens: u32,
    /// Mooncake prefix-block hashes (512-token blocks), in prompt order.
    pub block_hashes: Option<Vec<u64>>,
    /// The conversation or session the request belongs to, where the trace says (an
    /// optional `session_id` column or field): a session replays as one workflow.
    pub session: Option<String>,
    /// 1-based line in the source file.
    pub line: u64,
}

/// How to read a trace.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// The format; detected from the content and name when `None`.
    pub format: Option<TraceFormat>,
    /// Skip rows that do not parse (counted in [`ReadReport::skipped_rows`]) instead of
    /// stopping at the first one.
    pub skip_bad_rows: bool,
    /// Span logs: a workflow is complete when none of its spans appeared in this many
    /// lines (default [`crate::workflow::DEFAULT_GROUP_WINDOW`]).
    pub group_window_spans: Option<u64>,
}

/// What reading a trace found, besides the records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Records (requests or spans) read successfully.
    pub rows: u64,
    /// Rows that did not parse and were skipped (`skip_bad_rows`).
    pub skipped_rows: u64,
    /// The first skipped row's error, `file:line: message`.
    pub first_skipped: Option<String>,
    /// Rows whose arrival is earlier than the previous row's (readers never reorder).
    pub out_of_order: u64,
    /// Workflows built (span traces).
    pub workflows: u64,
    /// Spans whose parent is not in their workflow (kept as extra roots in skip mode).
    pub orphan_spans: u64,
    /// Spans whose id repeats an earlier span of the workflow (the later one is not
    /// part of the DAG in skip mode; counted here).
    pub duplicate_spans: u64,
    /// Parent-link cycles (broken at the earliest span in skip mode).
    pub cycles: u64,
    /// Workflows whose earliest span starts before the trace origin (the first span
    /// read); their arrival is clamped to 0.
    pub clamped_starts: u64,
}

impl ReadReport {
    pub(crate) fn note_skipped(&mut self, e: &TraceError) {
        self.skipped_rows += 1;
        if self.first_skipped.is_none() {
            self.first_skipped = Some(e.to_string());
        }
    }
}

/// Reads a flat request trace lazily, one line at a time.
pub struct RequestReader {
    file: String,
    lines: Lines,
    state: ParseState,
    skip_bad_rows: bool,
    report: ReadReport,
    last_arrival: u64,
    failed: bool,
}

struct ParseState {
    format: TraceFormat,
    columns: Option<[usize; 3]>,
    /// The optional `session_id` column.
    session_column: Option<usize>,
    /// Fields the header names: every row must have as many (a stray comma would
    /// shift a row's fields, or hide a field the header does not name).
    width: Option<usize>,
    azure_origin: Option<i128>,
}

impl RequestReader {
    /// Opens a request trace (format detected unless given).
    pub fn open(path: &Path, opts: &ReadOptions) -> Result<Self, TraceError> {
        let format = match opts.format {
            Some(f) => f,
            None => TraceFormat::detect(path)?,
        };
        let name = path.display().to_string();
        if !format.is_request_trace() {
            return Err(TraceError::file(
                &name,
                format!("`{format}` is a span trace, not a request trace"),
            ));
        }
        Ok(Self::from_lines(
            Lines::open(path)?,
            format,
            opts.skip_bad_rows,
        ))
    }

    /// Reads from already opened lines (tests, in-memory data).
    pub fn from_lines(lines: Lines, format: TraceFormat, skip_bad_rows: bool) -> Self {
        RequestReader {
            file: lines.file().to_string(),
            lines,
            state: ParseState {
                format,
                columns: None,
                session_column: None,
                width: None,
                azure_origin: None,
            },
            skip_bad_rows,
            report: ReadReport::default(),
            last_arrival: 0,
            failed: false,
        }
    }

    pub fn format(&self) -> TraceFormat {
        self.state.format
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// Counts so far (complete once the iterator returned `None`).
    pub fn report(&self) -> &ReadReport {
        &self.report
    }
}

impl ParseState {
    fn header(&mut self, file: &str, line: u64, text: &str) -> Result<(), TraceError> {
        let names: &[&str; 3] = match self.format {
            TraceFormat::AzureCsv => &["TIMESTAMP", "ContextTokens", "GeneratedTokens"],
            _ => &["arrived_at", "num_prefill_tokens", "num_decode_tokens"],
        };
        let cols: Vec<&str> = text
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        let mut idx = [0usize; 3];
        for (k, want) in names.iter().enumerate() {
            idx[k] = cols
                .iter()
                .position(|c| c.eq_ignore_ascii_case(want))
                .ok_or_else(|| {
                    TraceError::row(
                        file,
                        line,
                        format!(
                            "expected a header with columns {}, got `{text}`",
                            names.join(",")
                        ),
                    )
                })?;
        }
        self.columns = Some(idx);
        self.width = Some(cols.len());
        self.session_column = cols
            .iter()
            .position(|c| c.eq_ignore_ascii_case("session_id"));
        Ok(())
    }

    fn parse(&mut self, line: u64, text: &str) -> Result<RequestRecord, String> {
        match self.format {
            TraceFormat::AzureCsv | TraceFormat::SimpleCsv => self.parse_csv(line, text),
            _ => parse_mooncake(line, text),
        }
    }

    fn parse_csv(&mut self, line: u64, text: &str) -> Result<RequestRecord, String> {
        let idx = self.columns.unwrap_or([0, 1, 2]);
        if let Some(w) = self.width {
            let n = text.split(',').count();
            if n != w {
                return Err(format!(
                    "expected {w} comma-separated fields, as the header names, got {n}: `{text}`"
                ));
            }
        }
        let mut fields: [&str; 3] = ["", "", ""];
        let mut found = 0;
        for (i, f) in text.split(',').enumerate() {
            for k in 0..3 {
                if idx[k] == i {
                    fields[k] = f.trim();
                    found += 1;
                }
            }
        }
        if found < 3 {
            return Err(format!(
                "expected at least {} comma-separated fields, got `{text}`",
                idx.iter().max().map_or(3, |m| m + 1)
            ));
        }
        let (first, second) = match self.format {
            TraceFormat::AzureCsv => ("ContextTokens", "GeneratedTokens"),
            _ => ("num_prefill_tokens", "num_decode_tokens"),
        };
        let input_tokens = parse_tokens(fields[1], first)?;
        let output_tokens = parse_tokens(fields[2], second)?;
        let arrival_ns = if self.format == TraceFormat::AzureCsv {
            let t = parse_naive_timestamp(fields[0].trim_matches('"'))
                .map_err(|e| format!("TIMESTAMP: {e}"))?;
            let origin = *self.azure_origin.get_or_insert(t);
            let rel = t - origin;
            if rel < 0 {
                return Err(format!(
                    "TIMESTAMP `{}` is earlier than the first row's; arrivals are relative to the first row",
                    fields[0]
                ));
            }
            u64::try_from(rel).map_err(|_| "TIMESTAMP too far from the first row".to_string())?
        } else {
            secs_to_ns(fields[0]).map_err(|e| format!("arrived_at: {e}"))?
        };
        let session = self
            .session_column
            .and_then(|c| text.split(',').nth(c))
            .map(|s| s.trim().trim_matches('"'))
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        Ok(RequestRecord {
            arrival_ns,
            input_tokens,
            output_tokens,
            block_hashes: None,
            session,
            line,
        })
    }
}

fn parse_tokens(s: &str, what: &str) -> Result<u32, String> {
    s.parse::<u32>().map_err(|_| {
        format!("{what}: expected a whole number of tokens (0 to 4294967295), got `{s}`")
    })
}

/// Seconds (decimal) to integer nanoseconds, rejecting negatives and non-numbers.
pub(crate) fn secs_to_ns(s: &str) -> Result<u64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("expected seconds as a number, got `{s}`"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("expected seconds >= 0, got `{s}`"));
    }
    let ns = (v * 1e9).round();
    if ns >= u64::MAX as f64 {
        return Err(format!("`{s}` seconds is too large"));
    }
    Ok(ns as u64)
}

/// A JSON number of milliseconds (integer or fraction) to nanoseconds.
pub(crate) fn ms_number_to_ns(n: &serde_json::Number, what: &str) -> Result<u64, String> {
    if let Some(ms) = n.as_u64() {
        return ms
            .checked_mul(1_000_000)
            .ok_or_else(|| format!("{what} = {ms} ms is too large"));
    }
    match n.as_f64() {
        Some(ms) if ms.is_finite() && ms >= 0.0 && ms * 1e6 < u64::MAX as f64 => {
            Ok((ms * 1e6).round() as u64)
        }
        _ => Err(format!("{what}: expected milliseconds >= 0, got {n}")),
    }
}

#[derive(Deserialize)]
struct MooncakeRow {
    timestamp: serde_json::Number,
    input_length: u32,
    output_length: u32,
    #[serde(default)]
    hash_ids: Option<Vec<u64>>,
    #[serde(default)]
    session_id: Option<serde_json::Value>,
}

fn parse_mooncake(line: u64, text: &str) -> Result<RequestRecord, String> {
    let row: MooncakeRow = serde_json::from_str(text).map_err(|e| {
        format!(
            "expected a JSON object with timestamp (ms), input_length, output_length, hash_ids: {e}"
        )
    })?;
    Ok(RequestRecord {
        arrival_ns: ms_number_to_ns(&row.timestamp, "timestamp")?,
        input_tokens: row.input_length,
        output_tokens: row.output_length,
        block_hashes: row.hash_ids,
        session: match row.session_id {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(v) => Some(v.to_string()),
        },
        line,
    })
}

impl Iterator for RequestReader {
    type Item = Result<RequestRecord, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let RequestReader {
                lines, state, file, ..
            } = self;
            let outcome = match lines.next_line() {
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
                    let is_csv =
                        matches!(state.format, TraceFormat::AzureCsv | TraceFormat::SimpleCsv);
                    if is_csv && state.columns.is_none() {
                        // The header must come first; a bad header is fatal even when
                        // skipping bad rows (nothing after it could be read).
                        if let Err(e) = state.header(file, line, text) {
                            self.failed = true;
                            return Some(Err(e));
                        }
                        continue;
                    }
                    state
                        .parse(line, text)
                        .map_err(|msg| TraceError::row(file, line, msg))
                }
            };
            match outcome {
                Ok(rec) => {
                    self.report.rows += 1;
                    if rec.arrival_ns < self.last_arrival {
                        self.report.out_of_order += 1;
                    }
                    self.last_arrival = rec.arrival_ns;
                    return Some(Ok(rec));
                }
                Err(err) => {
                    if self.skip_bad_rows {
                        self.report.note_skipped(&err);
                    } else {
                        self.failed = true;
                        return Some(Err(err));
                    }
                }
            }
        }
    }
}

//! Trace formats and their detection from content (and the file name as a hint).

use crate::error::TraceError;
use crate::io::open_reader;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

/// A trace format the crate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TraceFormat {
    /// Azure LLM inference trace: CSV `TIMESTAMP,ContextTokens,GeneratedTokens`.
    AzureCsv,
    /// The simple CSV `arrived_at,num_prefill_tokens,num_decode_tokens` (seconds).
    SimpleCsv,
    /// Mooncake JSONL: `timestamp` (ms), `input_length`, `output_length`, `hash_ids`.
    Mooncake,
    /// Agent span log JSONL: one model or tool call per line.
    SpanLog,
    /// OpenTelemetry OTLP JSON (GenAI semantic conventions).
    Otlp,
}

impl TraceFormat {
    pub const ALL: [TraceFormat; 5] = [
        TraceFormat::AzureCsv,
        TraceFormat::SimpleCsv,
        TraceFormat::Mooncake,
        TraceFormat::SpanLog,
        TraceFormat::Otlp,
    ];

    /// The name used on the command line (`--format`).
    pub fn name(self) -> &'static str {
        match self {
            TraceFormat::AzureCsv => "azure",
            TraceFormat::SimpleCsv => "simple",
            TraceFormat::Mooncake => "mooncake",
            TraceFormat::SpanLog => "spans",
            TraceFormat::Otlp => "otlp",
        }
    }

    /// Flat request traces (one request per row) as opposed to workflow span traces.
    pub fn is_request_trace(self) -> bool {
        matches!(
            self,
            TraceFormat::AzureCsv | TraceFormat::SimpleCsv | TraceFormat::Mooncake
        )
    }

    /// Detects the format of a file from its first bytes (decompressed), falling back
    /// to the file name.
    pub fn detect(path: &Path) -> Result<TraceFormat, TraceError> {
        let name = path.display().to_string();
        let mut head = Vec::with_capacity(8192);
        open_reader(path)?
            .take(8192)
            .read_to_end(&mut head)
            .map_err(|source| TraceError::Io {
                file: name.clone(),
                line: 0,
                source,
            })?;
        let text = String::from_utf8_lossy(&head);
        if let Some(f) = Self::detect_text(&text) {
            return Ok(f);
        }
        let lower = name.to_ascii_lowercase();
        let lower = lower.trim_end_matches(".gz");
        let guess = if lower.contains("azurellminference") {
            Some(TraceFormat::AzureCsv)
        } else if lower.contains("otlp") || lower.contains("otel") {
            Some(TraceFormat::Otlp)
        } else if lower.contains("mooncake") {
            Some(TraceFormat::Mooncake)
        } else {
            None
        };
        guess.ok_or_else(|| {
            TraceError::file(
                &name,
                format!(
                    "cannot tell the trace format from the content or the name; pass --format ({})",
                    TraceFormat::ALL.map(|f| f.name()).join("|")
                ),
            )
        })
    }

    /// Detects the format from the beginning of the text, if it is recognisable.
    pub fn detect_text(head: &str) -> Option<TraceFormat> {
        let head = head.trim_start_matches('\u{feff}').trim_start();
        if head.contains("\"resourceSpans\"") {
            return Some(TraceFormat::Otlp);
        }
        let first = head.lines().next().unwrap_or("");
        if first.starts_with('{') {
            if first.contains("\"span_id\"") || first.contains("\"workflow_id\"") {
                return Some(TraceFormat::SpanLog);
            }
            if first.contains("\"input_length\"") || first.contains("\"hash_ids\"") {
                return Some(TraceFormat::Mooncake);
            }
            return None;
        }
        let lower = first.to_ascii_lowercase();
        if lower.contains("contexttokens") && lower.contains("generatedtokens") {
            return Some(TraceFormat::AzureCsv);
        }
        if lower.contains("arrived_at") {
            return Some(TraceFormat::SimpleCsv);
        }
        None
    }
}

impl FromStr for TraceFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "azure" | "azure-csv" => Ok(TraceFormat::AzureCsv),
            "simple" | "simple-csv" | "vidur" => Ok(TraceFormat::SimpleCsv),
            "mooncake" => Ok(TraceFormat::Mooncake),
            "spans" | "span-log" | "spanlog" => Ok(TraceFormat::SpanLog),
            "otlp" | "otel" => Ok(TraceFormat::Otlp),
            _ => Err(format!(
                "unknown trace format `{s}`; expected one of {}",
                TraceFormat::ALL.map(|f| f.name()).join(", ")
            )),
        }
    }
}

impl std::fmt::Display for TraceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

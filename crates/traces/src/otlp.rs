//! OpenTelemetry OTLP JSON exports (`resourceSpans[].scopeSpans[].spans[]`) following
//! the GenAI semantic conventions, mapped to [`SpanRecord`]s.
//!
//! The file is a sequence of OTLP JSON documents: one pretty-printed document, or one
//! document per line as the collector's file exporter writes. One document is held in
//! memory at a time. A span's `line` is the line where its document ends.
//!
//! Mapping: `traceId` -> workflow_id, `spanId`, `parentSpanId` ("" = root),
//! `links[].spanId` (same trace; links into other traces are ignored, malformed links
//! are bad rows) -> links, `startTimeUnixNano` -> start_ns; attribute
//! `gen_ai.operation.name`: `execute_tool` -> tool span (tool_wait_ms = end - start),
//! `invoke_agent`/`create_agent` or absent -> agent span (structural, no work),
//! anything else (`chat`, `text_completion`, `generate_content`, `embeddings`, ...) ->
//! LLM span (decode_ms = end - start);
//! `gen_ai.request.model` (else `gen_ai.response.model`) -> model_tier;
//! `gen_ai.agent.name` (tools: `gen_ai.tool.name`; else the span name) -> agent_role;
//! `gen_ai.usage.input_tokens` / `output_tokens` (legacy `prompt_tokens` /
//! `completion_tokens`), `gen_ai.usage.cache_read.input_tokens` -> cached_tokens;
//! `factorysim.lane`, `factorysim.tenant` (or `tenant.id`), `factorysim.workflow_class`
//! (else the resource's `service.name`), `factorysim.usd_estimate`,
//! `factorysim.attempt` where present; status: `factorysim.status` (`ok`, `error`,
//! `timeout`, `lost`) where present, else `status.code` 2 / `STATUS_CODE_ERROR` ->
//! error (`timeout` when `error.type` is `timeout`), anything else -> ok.

use crate::error::TraceError;
use crate::io::open_reader;
use crate::request::ReadReport;
use crate::span::{SpanKind, SpanRecord, SpanSource, SpanStatus};
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{BufRead, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts newlines as serde_json consumes bytes.
struct CountingReader {
    inner: Box<dyn BufRead + Send>,
    newlines: Arc<AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let nl = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        self.newlines.fetch_add(nl, Ordering::Relaxed);
        Ok(n)
    }
}

type DocStream =
    serde_json::StreamDeserializer<'static, serde_json::de::IoRead<CountingReader>, Value>;

/// Reads spans from an OTLP JSON export.
pub struct OtlpReader {
    file: String,
    docs: DocStream,
    newlines: Arc<AtomicU64>,
    pending: VecDeque<Result<SpanRecord, TraceError>>,
    skip_bad_rows: bool,
    report: ReadReport,
    failed: bool,
}

impl OtlpReader {
    pub fn open(path: &Path, skip_bad_rows: bool) -> Result<Self, TraceError> {
        Ok(Self::from_reader(
            path.display().to_string(),
            open_reader(path)?,
            skip_bad_rows,
        ))
    }

    pub fn from_reader(file: String, reader: Box<dyn BufRead + Send>, skip_bad_rows: bool) -> Self {
        let newlines = Arc::new(AtomicU64::new(0));
        let counting = CountingReader {
            inner: reader,
            newlines: newlines.clone(),
        };
        OtlpReader {
            file,
            docs: serde_json::Deserializer::from_reader(counting).into_iter::<Value>(),
            newlines,
            pending: VecDeque::new(),
            skip_bad_rows,
            report: ReadReport::default(),
            failed: false,
        }
    }

    fn load_document(&mut self, doc: Value) {
        let line = self.newlines.load(Ordering::Relaxed) + 1;
        let file = self.file.clone();
        let Some(resources) = doc.get("resourceSpans").and_then(Value::as_array) else {
            self.pending.push_back(Err(TraceError::row(
                &file,
                line,
                "expected an OTLP JSON document with `resourceSpans`",
            )));
            return;
        };
        for (ri, rs) in resources.iter().enumerate() {
            let service = rs
                .get("resource")
                .and_then(|r| r.get("attributes"))
                .and_then(|a| attr(a, "service.name"))
                .and_then(attr_string);
            let scopes = rs.get("scopeSpans").and_then(Value::as_array);
            for (si, ss) in scopes.into_iter().flatten().enumerate() {
                let spans = ss.get("spans").and_then(Value::as_array);
                for (pi, sp) in spans.into_iter().flatten().enumerate() {
                    let path = format!("resourceSpans[{ri}].scopeSpans[{si}].spans[{pi}]");
                    let rec = map_span(sp, service.as_deref(), line)
                        .map_err(|m| TraceError::row(&file, line, format!("{path}: {m}")));
                    self.pending.push_back(rec);
                }
            }
        }
    }
}

fn attr<'a>(attrs: &'a Value, key: &str) -> Option<&'a Value> {
    attrs
        .as_array()?
        .iter()
        .find(|kv| kv.get("key").and_then(Value::as_str) == Some(key))?
        .get("value")
}

fn attr_string(v: &Value) -> Option<String> {
    if let Some(s) = v.get("stringValue").and_then(Value::as_str) {
        return Some(s.to_string());
    }
    attr_u64(v).map(|i| i.to_string())
}

fn attr_u64(v: &Value) -> Option<u64> {
    let x = v.get("intValue").or_else(|| v.get("doubleValue"))?;
    match x {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64)),
        _ => None,
    }
}

fn attr_f64(v: &Value) -> Option<f64> {
    let x = v.get("doubleValue").or_else(|| v.get("intValue"))?;
    match x {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

fn nanos(sp: &Value, key: &str) -> Result<u64, String> {
    match sp.get(key) {
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| format!("`{key}`: expected integer nanoseconds, got `{s}`")),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("`{key}`: expected integer nanoseconds, got {n}")),
        _ => Err(format!("missing `{key}`")),
    }
}

/// Span links to spans of the same trace (a join's other predecessors), in order,
/// repeats dropped. Links into other traces are ignored (a workflow is one trace), but a
/// link that is not `{traceId?, spanId}` is an error: dropping it silently would replay
/// the join before the span it waited for.
fn map_links(sp: &Value, workflow_id: &str) -> Result<Vec<String>, String> {
    let mut links: Vec<String> = Vec::new();
    let list = match sp.get("links") {
        None | Some(Value::Null) => return Ok(links),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("`links`: expected an array of `{traceId, spanId}` objects".into()),
    };
    for (k, l) in list.iter().enumerate() {
        let to = match l.get("spanId") {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => {
                return Err(format!(
                    "`links[{k}]`: expected an object with a non-empty string `spanId`"
                ));
            }
        };
        let same_trace = match l.get("traceId") {
            None | Some(Value::Null) => true,
            Some(Value::String(t)) => t.is_empty() || t == workflow_id,
            Some(_) => return Err(format!("`links[{k}].traceId`: expected a string")),
        };
        if same_trace && !links.iter().any(|x| x == to) {
            links.push(to.clone());
        }
    }
    Ok(links)
}

fn map_span(sp: &Value, service: Option<&str>, line: u64) -> Result<SpanRecord, String> {
    let id = |k: &str| sp.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let workflow_id = id("traceId");
    let span_id = id("spanId");
    if workflow_id.is_empty() || span_id.is_empty() {
        return Err("expected non-empty `traceId` and `spanId`".into());
    }
    let parent = id("parentSpanId");
    let links = map_links(sp, &workflow_id)?;
    let start = nanos(sp, "startTimeUnixNano")?;
    let end = nanos(sp, "endTimeUnixNano").unwrap_or(start);
    if end < start {
        return Err(format!(
            "endTimeUnixNano ({end}) is before startTimeUnixNano ({start})"
        ));
    }
    let dur_ms = (end - start) as f64 / 1e6;
    let empty = Value::Array(Vec::new());
    let attrs = sp.get("attributes").unwrap_or(&empty);
    let s = |k: &str| attr(attrs, k).and_then(attr_string);
    let u = |k: &str| attr(attrs, k).and_then(attr_u64);
    let op = s("gen_ai.operation.name");
    let kind = match op.as_deref() {
        Some("execute_tool") => SpanKind::Tool,
        Some("invoke_agent") | Some("create_agent") | None => SpanKind::Agent,
        Some(_) => SpanKind::Llm,
    };
    let name = sp
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let agent_role = match kind {
        SpanKind::Tool => s("gen_ai.tool.name"),
        _ => s("gen_ai.agent.name"),
    }
    .unwrap_or(name);
    let input_tokens = u("gen_ai.usage.input_tokens")
        .or_else(|| u("gen_ai.usage.prompt_tokens"))
        .unwrap_or(0);
    let cached_tokens = u("gen_ai.usage.cache_read.input_tokens")
        .or_else(|| u("gen_ai.usage.cached_tokens"))
        .unwrap_or(0)
        .min(input_tokens);
    let status = match s("factorysim.status") {
        Some(t) => SpanStatus::parse(&t).map_err(|e| format!("factorysim.{e}"))?,
        None => {
            let code = sp.get("status").and_then(|st| st.get("code"));
            let error = match code {
                None | Some(Value::Null) => false,
                Some(Value::Number(n)) => n.as_u64() == Some(2),
                Some(Value::String(c)) => {
                    c.eq_ignore_ascii_case("STATUS_CODE_ERROR") || c.as_str() == "2"
                }
                Some(other) => {
                    return Err(format!(
                        "`status.code`: expected 0, 1, 2 or a STATUS_CODE_* name, got {other}"
                    ));
                }
            };
            match (error, s("error.type")) {
                (false, _) => SpanStatus::Ok,
                (true, Some(t)) if t.eq_ignore_ascii_case("timeout") => SpanStatus::Timeout,
                (true, _) => SpanStatus::Error,
            }
        }
    };
    Ok(SpanRecord {
        workflow_id,
        span_id,
        parent_span_id: (!parent.is_empty()).then_some(parent),
        links,
        kind,
        agent_role,
        model_tier: s("gen_ai.request.model")
            .or_else(|| s("gen_ai.response.model"))
            .unwrap_or_default(),
        lane: s("factorysim.lane").unwrap_or_default(),
        input_tokens,
        output_tokens: u("gen_ai.usage.output_tokens")
            .or_else(|| u("gen_ai.usage.completion_tokens"))
            .unwrap_or(0),
        cached_tokens,
        prefill_ms: 0.0,
        decode_ms: if kind == SpanKind::Llm { dur_ms } else { 0.0 },
        tool_wait_ms: if kind == SpanKind::Tool { dur_ms } else { 0.0 },
        usd_estimate: attr(attrs, "factorysim.usd_estimate")
            .and_then(attr_f64)
            .unwrap_or(0.0),
        start_ns: start,
        tenant: s("factorysim.tenant").or_else(|| s("tenant.id")),
        workflow_class: s("factorysim.workflow_class").or_else(|| service.map(str::to_string)),
        attempt: u("factorysim.attempt").map_or(1, |a| a.clamp(1, u32::MAX as u64) as u32),
        status,
        line,
    })
}

impl SpanSource for OtlpReader {
    fn file(&self) -> &str {
        &self.file
    }
    fn report(&self) -> &ReadReport {
        &self.report
    }
}

impl Iterator for OtlpReader {
    type Item = Result<SpanRecord, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            match self.pending.pop_front() {
                Some(Ok(span)) => {
                    self.report.rows += 1;
                    return Some(Ok(span));
                }
                Some(Err(e)) if self.skip_bad_rows => {
                    self.report.note_skipped(&e);
                    continue;
                }
                // A span that does not map is returned; reading may go on after it.
                Some(Err(e)) => return Some(Err(e)),
                None => {}
            }
            match self.docs.next() {
                None => return None,
                Some(Ok(doc)) => self.load_document(doc),
                Some(Err(e)) => {
                    // JSON syntax errors cannot be skipped: there is no way to resync.
                    self.failed = true;
                    let line = e.line() as u64;
                    return Some(Err(if e.is_io() {
                        TraceError::Io {
                            file: self.file.clone(),
                            line,
                            source: std::io::Error::other(e.to_string()),
                        }
                    } else {
                        TraceError::row(&self.file, line, format!("invalid OTLP JSON: {e}"))
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(trace: &str, span: &str) -> String {
        format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"{trace}","spanId":"{span}","startTimeUnixNano":"1","endTimeUnixNano":"2"}}]}}]}}]}}"#
        )
    }

    #[test]
    fn json_lines_documents_carry_their_line() {
        let text = format!(
            "{}\n{}\n\n{}\n",
            doc("a", "1"),
            doc("b", "1"),
            doc("c", "1")
        );
        let r = OtlpReader::from_reader(
            "x.json".into(),
            Box::new(std::io::Cursor::new(text.into_bytes())),
            false,
        );
        let lines: Vec<u64> = r.map(|s| s.unwrap().line).collect();
        assert_eq!(lines, vec![1, 2, 4]);
    }
}

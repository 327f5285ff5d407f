//! OpenTelemetry OTLP JSON exports (`resourceSpans[].scopeSpans[].spans[]`) following
//! the GenAI semantic conventions, mapped to [`SpanRecord`]s.
//!
//! The file is a sequence of OTLP JSON documents: one pretty-printed document, or one
//! document per line as the collector's file exporter writes. One document is held in
//! memory at a time. A span's `line` is the line where its document ends.
//!
//! Mapping: `traceId` (or `factorysim.workflow_id`, the id factorysim's own export
//! keeps) -> workflow_id, `spanId`, `parentSpanId` ("" = root),
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
//! (each, where the span lacks it, from its resource's attributes; the class else the
//! resource's `service.name`), `factorysim.usd_estimate`,
//! `factorysim.attempt`, `factorysim.prefill_ms` (the LLM span's time to first token;
//! decode_ms is the rest), `factorysim.model_tier` (model_tier where no `gen_ai` model
//! is named: a tool's name) where present; status: `factorysim.status` (`ok`, `error`,
//! `timeout`, `lost`) where present, else `status.code` 2 / `STATUS_CODE_ERROR` ->
//! error (`timeout` when `error.type` is `timeout`), anything else -> ok.

use crate::error::TraceError;
use crate::io::open_reader;
use crate::request::ReadReport;
use crate::span::{SpanKind, SpanRecord, SpanSource, SpanStatus};
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{BufRead, Read, Write};
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
        let no_attrs = Value::Array(Vec::new());
        for (ri, rs) in resources.iter().enumerate() {
            let resource = rs
                .get("resource")
                .and_then(|r| r.get("attributes"))
                .unwrap_or(&no_attrs);
            let scopes = rs.get("scopeSpans").and_then(Value::as_array);
            for (si, ss) in scopes.into_iter().flatten().enumerate() {
                let spans = ss.get("spans").and_then(Value::as_array);
                for (pi, sp) in spans.into_iter().flatten().enumerate() {
                    let path = format!("resourceSpans[{ri}].scopeSpans[{si}].spans[{pi}]");
                    let rec = map_span(sp, resource, line)
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

/// One span as a span-log record. `resource` is its resource's attributes: a
/// workflow-level attribute (lane, tenant, workflow class) the span does not carry is
/// taken from there, as exporters put per-deployment attributes on the resource.
fn map_span(sp: &Value, resource: &Value, line: u64) -> Result<SpanRecord, String> {
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
    // The span's own value, else its resource's.
    let sr = |k: &str| s(k).or_else(|| attr(resource, k).and_then(attr_string));
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
    // The part of an LLM span before its first token, where the exporter says.
    let prefill_ms = match kind {
        SpanKind::Llm => attr(attrs, "factorysim.prefill_ms")
            .and_then(attr_f64)
            .filter(|p| p.is_finite() && *p >= 0.0)
            .map_or(0.0, |p| p.min(dur_ms)),
        _ => 0.0,
    };
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
        // The id a writer kept (factorysim's own export), else the trace's.
        workflow_id: s("factorysim.workflow_id")
            .filter(|w| !w.is_empty())
            .unwrap_or(workflow_id),
        span_id,
        parent_span_id: (!parent.is_empty()).then_some(parent),
        links,
        kind,
        agent_role,
        model_tier: s("gen_ai.request.model")
            .or_else(|| s("gen_ai.response.model"))
            .or_else(|| s("factorysim.model_tier"))
            .unwrap_or_default(),
        lane: sr("factorysim.lane").unwrap_or_default(),
        input_tokens,
        output_tokens: u("gen_ai.usage.output_tokens")
            .or_else(|| u("gen_ai.usage.completion_tokens"))
            .unwrap_or(0),
        cached_tokens,
        prefill_ms,
        decode_ms: if kind == SpanKind::Llm {
            (dur_ms - prefill_ms).max(0.0)
        } else {
            0.0
        },
        tool_wait_ms: if kind == SpanKind::Tool { dur_ms } else { 0.0 },
        usd_estimate: attr(attrs, "factorysim.usd_estimate")
            .and_then(attr_f64)
            .unwrap_or(0.0),
        start_ns: start,
        tenant: s("factorysim.tenant")
            .or_else(|| s("tenant.id"))
            .or_else(|| sr("factorysim.tenant"))
            .or_else(|| sr("tenant.id")),
        workflow_class: sr("factorysim.workflow_class").or_else(|| sr("service.name")),
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

/// Writes spans as OTLP JSON (the collector file exporter's shape: one
/// `ExportTraceServiceRequest` document a line), one document per workflow, following
/// the GenAI conventions [`OtlpReader`] reads, so a written file reads back to the
/// same workflows, parents, links, kinds, roles, tiers, tokens, timings and status.
///
/// OTLP ids are hex: `traceId` is 32 hex digits and `spanId` 16, derived from the
/// workflow and span ids by a stable hash (FNV-1a); the original ids travel as
/// `factorysim.workflow_id` and `factorysim.span_id` attributes. Times are the spans'
/// own (a simulation's start at 0 is the Unix epoch).
pub struct OtlpWriter<W: Write> {
    out: W,
    written: u64,
}

/// FNV-1a, 64 bits: a stable id hash (never 0, an invalid OTLP id).
fn fnv64(text: &str, salt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

fn trace_id(workflow: &str) -> String {
    format!("{:016x}{:016x}", fnv64(workflow, 0), fnv64(workflow, 1))
}

fn span_id(span: &str) -> String {
    format!("{:016x}", fnv64(span, 0))
}

fn kv(key: &str, value: Value) -> Value {
    serde_json::json!({ "key": key, "value": value })
}

fn text(v: &str) -> Value {
    serde_json::json!({ "stringValue": v })
}

fn int(v: u64) -> Value {
    // Proto3 JSON writes 64-bit integers as strings.
    serde_json::json!({ "intValue": v.to_string() })
}

fn double(v: f64) -> Value {
    serde_json::json!({ "doubleValue": v })
}

fn otlp_span(s: &SpanRecord) -> Value {
    let work_ms = match s.kind {
        SpanKind::Llm => s.prefill_ms + s.decode_ms,
        SpanKind::Tool => s.tool_wait_ms,
        SpanKind::Agent => 0.0,
    };
    let end = s
        .start_ns
        .saturating_add((work_ms.max(0.0) * 1e6).round().min(u64::MAX as f64 / 2.0) as u64);
    let mut attrs = vec![
        kv(
            "gen_ai.operation.name",
            text(match s.kind {
                SpanKind::Llm => "chat",
                SpanKind::Tool => "execute_tool",
                SpanKind::Agent => "invoke_agent",
            }),
        ),
        kv("factorysim.workflow_id", text(&s.workflow_id)),
        kv("factorysim.span_id", text(&s.span_id)),
    ];
    match s.kind {
        SpanKind::Tool => {
            attrs.push(kv("gen_ai.tool.name", text(&s.agent_role)));
            if !s.model_tier.is_empty() {
                attrs.push(kv("factorysim.model_tier", text(&s.model_tier)));
            }
        }
        _ => {
            attrs.push(kv("gen_ai.agent.name", text(&s.agent_role)));
            if !s.model_tier.is_empty() {
                attrs.push(kv("gen_ai.request.model", text(&s.model_tier)));
            }
        }
    }
    if s.kind == SpanKind::Llm {
        attrs.push(kv("gen_ai.usage.input_tokens", int(s.input_tokens)));
        attrs.push(kv("gen_ai.usage.output_tokens", int(s.output_tokens)));
        if s.cached_tokens > 0 {
            attrs.push(kv(
                "gen_ai.usage.cache_read.input_tokens",
                int(s.cached_tokens),
            ));
        }
        attrs.push(kv("factorysim.prefill_ms", double(s.prefill_ms)));
    }
    if !s.lane.is_empty() {
        attrs.push(kv("factorysim.lane", text(&s.lane)));
    }
    if let Some(t) = &s.tenant {
        attrs.push(kv("factorysim.tenant", text(t)));
    }
    if let Some(c) = &s.workflow_class {
        attrs.push(kv("factorysim.workflow_class", text(c)));
    }
    if s.usd_estimate > 0.0 {
        attrs.push(kv("factorysim.usd_estimate", double(s.usd_estimate)));
    }
    if s.attempt > 1 {
        attrs.push(kv("factorysim.attempt", int(u64::from(s.attempt))));
    }
    let status = match s.status {
        SpanStatus::Ok => None,
        SpanStatus::Error => Some(serde_json::json!({ "code": 2 })),
        SpanStatus::Timeout => {
            attrs.push(kv("error.type", text("timeout")));
            Some(serde_json::json!({ "code": 2, "message": "timeout" }))
        }
        SpanStatus::Lost => {
            attrs.push(kv("factorysim.status", text("lost")));
            Some(serde_json::json!({ "code": 2, "message": "lost with its replica" }))
        }
    };
    let trace = trace_id(&s.workflow_id);
    let mut span = serde_json::json!({
        "traceId": trace,
        "spanId": span_id(&s.span_id),
        "parentSpanId": s.parent_span_id.as_deref().map(span_id).unwrap_or_default(),
        "name": if s.agent_role.is_empty() { s.kind.name() } else { s.agent_role.as_str() },
        // SPAN_KIND_CLIENT for calls out, SPAN_KIND_INTERNAL for agent steps.
        "kind": if s.kind == SpanKind::Agent { 1 } else { 3 },
        "startTimeUnixNano": s.start_ns.to_string(),
        "endTimeUnixNano": end.to_string(),
        "attributes": attrs,
    });
    if !s.links.is_empty() {
        span["links"] = Value::Array(
            s.links
                .iter()
                .map(|l| serde_json::json!({ "traceId": trace, "spanId": span_id(l) }))
                .collect(),
        );
    }
    if let Some(st) = status {
        span["status"] = st;
    }
    span
}

impl<W: Write> OtlpWriter<W> {
    pub fn new(out: W) -> Self {
        OtlpWriter { out, written: 0 }
    }

    /// Writes one workflow's spans as one document line (nothing for no spans). The
    /// resource's `service.name` is the first span's `workflow_class`, else
    /// `factorysim`.
    pub fn write_workflow(&mut self, spans: &[SpanRecord]) -> std::io::Result<()> {
        let Some(first) = spans.first() else {
            return Ok(());
        };
        let service = first.workflow_class.as_deref().unwrap_or("factorysim");
        let doc = serde_json::json!({
            "resourceSpans": [{
                "resource": { "attributes": [kv("service.name", text(service))] },
                "scopeSpans": [{
                    "scope": { "name": "factorysim" },
                    "spans": spans.iter().map(otlp_span).collect::<Vec<_>>(),
                }],
            }],
        });
        serde_json::to_writer(&mut self.out, &doc)?;
        self.out.write_all(b"\n")?;
        self.written += spans.len() as u64;
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

    /// The output written to so far.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
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

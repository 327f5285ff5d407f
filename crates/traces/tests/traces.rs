//! Integration tests of the traces crate, on the traces shipped under `traces/data`.

use sim_core::StreamFactory;
use sim_core::dist::DistSpec;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use traces::fit::{DistFamily, FitOptions, fit_requests, fit_spans};
use traces::replay::{ReplayExt, sample_keep};
use traces::stats::{PrefixCounter, request_stats, span_stats};
use traces::{
    DagIssue, ReadOptions, ReplayOptions, RequestReader, RequestRecord, SpanKind, SpanLogWriter,
    SpanRecord, SpanStatus, TraceError, TraceFormat, Workflow, open_workflows, replay_requests,
    replay_workflows,
};

const CODE: &str = "azure-llm-2023/AzureLLMInferenceTrace_code.csv";
const CONV: &str = "azure-llm-2023/AzureLLMInferenceTrace_conv.csv";
const MOONCAKE: &str = "mooncake-fast25/conversation_trace.jsonl";

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../traces/data")
        .join(rel)
}

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("traces-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn read_all(path: &Path) -> Vec<RequestRecord> {
    RequestReader::open(path, &ReadOptions::default())
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn every_row_of_each_shipped_trace_is_read_and_replayed() {
    for (rel, format, rows, first_line) in [
        (CODE, TraceFormat::AzureCsv, 8819u64, 2u64),
        (CONV, TraceFormat::AzureCsv, 19366, 2),
        (MOONCAKE, TraceFormat::Mooncake, 12031, 1),
    ] {
        let path = data(rel);
        assert_eq!(TraceFormat::detect(&path).unwrap(), format, "{rel}");
        let mut reader = RequestReader::open(&path, &ReadOptions::default()).unwrap();
        let recs: Vec<RequestRecord> = reader.by_ref().map(Result::unwrap).collect();
        assert_eq!(recs.len() as u64, rows, "{rel}");
        assert_eq!(reader.report().rows, rows);
        assert_eq!(reader.report().skipped_rows, 0);
        assert_eq!(reader.report().out_of_order, 0, "{rel} is sorted");
        // Consecutive line numbers: no row lost or merged.
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.line, first_line + i as u64, "{rel}");
        }
        assert_eq!(recs[0].arrival_ns, 0, "{rel} starts at 0");
        if format == TraceFormat::Mooncake {
            assert!(recs.iter().all(|r| r.block_hashes.is_some()));
        }
        // Replay with default options yields exactly the same records.
        let replay =
            replay_requests(&path, &ReadOptions::default(), &ReplayOptions::default()).unwrap();
        let replayed: Vec<RequestRecord> = replay.map(Result::unwrap).collect();
        assert_eq!(replayed, recs, "{rel}");
    }
}

#[test]
fn azure_timestamps_are_relative_nanoseconds() {
    let recs = read_all(&data(CONV));
    // 2023-11-16 18:15:46.6805900 -> 18:15:50.9951690
    assert_eq!(recs[1].arrival_ns, 4_314_579_000);
    assert_eq!((recs[0].input_tokens, recs[0].output_tokens), (374, 44));
    // Last row 19:14:08.4025270: 58 min 21.7219370 s after the first.
    assert_eq!(
        recs.last().unwrap().arrival_ns,
        (58 * 60 + 21) * 1_000_000_000 + 721_937_000
    );
}

#[test]
fn time_scaling_by_two_doubles_the_rate_exactly() {
    for rel in [CONV, MOONCAKE] {
        let path = data(rel);
        let base = read_all(&path);
        let opts = ReplayOptions {
            rate: 2.0,
            ..ReplayOptions::default()
        };
        let fast: Vec<RequestRecord> = replay_requests(&path, &ReadOptions::default(), &opts)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(fast.len(), base.len());
        for (a, b) in base.iter().zip(&fast) {
            // Trace times are multiples of 100 ns (Azure) or 1 ms (Mooncake): exact.
            assert_eq!(b.arrival_ns * 2, a.arrival_ns);
        }
        let s0 = request_stats(base.into_iter().map(Ok), 3_600_000_000_000).unwrap();
        let s1 = request_stats(fast.into_iter().map(Ok), 3_600_000_000_000).unwrap();
        assert_eq!(s1.arrivals.last_ns * 2, s0.arrivals.last_ns);
        let ratio = s1.arrivals.mean_rate_per_s / s0.arrivals.mean_rate_per_s;
        assert!((ratio - 2.0).abs() < 1e-12, "{rel}: ratio {ratio}");
    }
    // The adapter form gives the same.
    let adapted: Vec<u64> = RequestReader::open(&data(CODE), &ReadOptions::default())
        .unwrap()
        .scale_rate(2.0)
        .map(|r| r.unwrap().arrival_ns)
        .collect();
    let base: Vec<u64> = read_all(&data(CODE)).iter().map(|r| r.arrival_ns).collect();
    assert!(adapted.iter().zip(&base).all(|(a, b)| a * 2 == *b));
}

#[test]
fn windowing_keeps_exactly_the_rows_in_the_window() {
    let path = data(CONV);
    let all = read_all(&path);
    let (start, end) = (600_000_000_000u64, 1_200_000_000_000u64);
    let expected: Vec<u64> = all
        .iter()
        .filter(|r| r.arrival_ns >= start && r.arrival_ns < end)
        .map(|r| r.line)
        .collect();
    assert!(expected.len() > 1000);
    let opts = ReplayOptions {
        window: Some((start, Some(end))),
        ..ReplayOptions::default()
    };
    let got: Vec<RequestRecord> = replay_requests(&path, &ReadOptions::default(), &opts)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got.iter().map(|r| r.line).collect::<Vec<_>>(), expected);
    for r in &got {
        let orig = &all[(r.line - 2) as usize];
        assert_eq!(
            r.arrival_ns + start,
            orig.arrival_ns,
            "rebased to the window start"
        );
    }
    // A row exactly at the end is excluded, exactly at the start included.
    let t = all[100].arrival_ns;
    let at_start: Vec<u64> = RequestReader::open(&path, &ReadOptions::default())
        .unwrap()
        .window(t, Some(t + 1))
        .map(|r| r.unwrap().line)
        .collect();
    assert!(at_start.contains(&all[100].line));
    let before: usize = RequestReader::open(&path, &ReadOptions::default())
        .unwrap()
        .window(0, Some(t))
        .count();
    assert_eq!(before, all.iter().filter(|r| r.arrival_ns < t).count());
}

#[test]
fn sampling_is_deterministic_and_looping_offsets_by_the_period() {
    let path = data(CODE);
    let all = read_all(&path);
    let opts = ReplayOptions {
        sample_fraction: 0.25,
        sample_seed: 11,
        ..ReplayOptions::default()
    };
    let run = || -> Vec<u64> {
        replay_requests(&path, &ReadOptions::default(), &opts)
            .unwrap()
            .map(|r| r.unwrap().line)
            .collect()
    };
    let a = run();
    assert_eq!(a, run());
    let expected: Vec<u64> = (0..all.len() as u64)
        .filter(|&i| sample_keep(11, 0.25, i))
        .map(|i| all[i as usize].line)
        .collect();
    assert_eq!(a, expected);
    let share = a.len() as f64 / all.len() as f64;
    assert!((share - 0.25).abs() < 0.02, "{share}");

    let looped = ReplayOptions {
        loops: 3,
        ..ReplayOptions::default()
    };
    let mut replay = replay_requests(&path, &ReadOptions::default(), &looped).unwrap();
    let got: Vec<RequestRecord> = replay.by_ref().map(Result::unwrap).collect();
    assert_eq!(got.len(), 3 * all.len());
    let last = all.last().unwrap().arrival_ns;
    let period = last + last / (all.len() as u64 - 1);
    for (k, chunk) in got.chunks(all.len()).enumerate() {
        for (r, o) in chunk.iter().zip(&all) {
            assert_eq!(r.arrival_ns, o.arrival_ns + k as u64 * period);
        }
    }
    assert!(got.windows(2).all(|w| w[0].arrival_ns <= w[1].arrival_ns));
    let rep = replay.report();
    assert_eq!(
        (rep.emitted, rep.passes, rep.read.rows),
        (3 * all.len() as u64, 3, all.len() as u64)
    );
    // Bound to a horizon two and a half periods long, a million loops read three
    // passes: the fourth would start after it.
    let bound = ReplayOptions {
        loops: 1_000_000,
        until_ns: Some(period * 5 / 2),
        ..ReplayOptions::default()
    };
    let mut replay = replay_requests(&path, &ReadOptions::default(), &bound).unwrap();
    assert_eq!(replay.by_ref().count(), 3 * all.len());
    assert_eq!(replay.report().passes, 3);
    // A bound at exactly two periods: the third pass would start on it, so it is not read.
    let bound = ReplayOptions {
        until_ns: Some(period * 2),
        ..bound
    };
    let mut replay = replay_requests(&path, &ReadOptions::default(), &bound).unwrap();
    assert_eq!(replay.by_ref().count(), 2 * all.len());
}

/// A synthetic agent trace: planner -> `fan` researchers (each with a tool call and,
/// every third workflow, a retried tool call) -> writer.
fn synthetic_workflows(n: usize) -> Vec<Vec<SpanRecord>> {
    let mut out = Vec::new();
    for w in 0..n {
        let wid = format!("wf-{w:04}");
        let class = if w % 2 == 0 { "research" } else { "support" };
        let t0 = 1_000_000_000 * w as u64 + 123_457;
        let fan = 2 + w % 3;
        let span =
            |id: String, parent: Option<String>, kind: SpanKind, role: &str, k: u64| SpanRecord {
                workflow_id: wid.clone(),
                span_id: id,
                parent_span_id: parent,
                links: Vec::new(),
                kind,
                agent_role: role.into(),
                model_tier: if kind == SpanKind::Llm {
                    "large".into()
                } else {
                    String::new()
                },
                lane: "interactive".into(),
                input_tokens: if kind == SpanKind::Llm {
                    1000 + 100 * k + w as u64
                } else {
                    0
                },
                output_tokens: if kind == SpanKind::Llm { 50 + k } else { 0 },
                cached_tokens: if kind == SpanKind::Llm { 500 } else { 0 },
                prefill_ms: if kind == SpanKind::Llm { 12.5 } else { 0.0 },
                decode_ms: if kind == SpanKind::Llm { 300.25 } else { 0.0 },
                tool_wait_ms: if kind == SpanKind::Tool {
                    80.0 + k as f64
                } else {
                    0.0
                },
                usd_estimate: 0.001 * k as f64,
                start_ns: t0 + 1_000_000 * k,
                tenant: Some(format!("tenant-{}", w % 3)),
                workflow_class: Some(class.into()),
                attempt: 1,
                // Some calls ended badly: the round trip keeps how.
                status: match (w + k as usize) % 7 {
                    0 => SpanStatus::Error,
                    3 => SpanStatus::Timeout,
                    5 => SpanStatus::Lost,
                    _ => SpanStatus::Ok,
                },
                line: 0,
            };
        let mut spans = vec![span("p".into(), None, SpanKind::Llm, "planner", 0)];
        for b in 0..fan {
            let r = format!("r{b}");
            spans.push(span(
                r.clone(),
                Some("p".into()),
                SpanKind::Llm,
                "researcher",
                1 + b as u64,
            ));
            spans.push(span(
                format!("t{b}"),
                Some(r.clone()),
                SpanKind::Tool,
                "search",
                2,
            ));
            if w % 3 == 0 && b == 0 {
                let mut retry = span(format!("t{b}-retry"), Some(r), SpanKind::Tool, "search", 3);
                retry.attempt = 2;
                spans.push(retry);
            }
        }
        spans.push(span(
            "w".into(),
            Some("p".into()),
            SpanKind::Llm,
            "writer",
            9,
        ));
        out.push(spans);
    }
    out
}

fn write_spans(path: &Path, workflows: &[Vec<SpanRecord>], gzip: bool) {
    let file = std::fs::File::create(path).unwrap();
    let out: Box<dyn Write> = if gzip {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(file)
    };
    let mut w = SpanLogWriter::new(out);
    for wf in workflows {
        for s in wf {
            w.write_span(s).unwrap();
        }
    }
    w.flush().unwrap();
}

#[test]
fn span_log_round_trip_keeps_structure_and_tokens() {
    let source = synthetic_workflows(40);
    for gzip in [false, true] {
        let path = tmp(if gzip {
            "roundtrip.jsonl.gz"
        } else {
            "roundtrip.jsonl"
        });
        write_spans(&path, &source, gzip);
        assert_eq!(TraceFormat::detect(&path).unwrap(), TraceFormat::SpanLog);
        let mut reader = open_workflows(&path, &ReadOptions::default()).unwrap();
        let read: Vec<Workflow> = reader.by_ref().map(Result::unwrap).collect();
        assert_eq!(read.len(), source.len());
        let origin = source[0][0].start_ns;
        for (wf, spans) in read.iter().zip(&source) {
            let built = Workflow::build(spans[0].workflow_id.clone(), spans.clone(), origin);
            assert_eq!(wf.id, built.id);
            assert_eq!(wf.edges(), built.edges());
            assert_eq!(wf.token_totals(), built.token_totals());
            assert_eq!(wf.arrival_ns, built.arrival_ns);
            assert!(wf.issues.is_empty());
            assert_eq!(wf.roots.len(), 1);
            for (a, b) in wf.spans.iter().zip(spans) {
                assert_eq!(
                    SpanRecord {
                        line: 0,
                        ..a.clone()
                    },
                    *b,
                    "every field round-trips"
                );
            }
        }
        let rep = reader.report();
        assert_eq!(rep.workflows, 40);
        assert_eq!(rep.rows, source.iter().map(Vec::len).sum::<usize>() as u64);

        // Write what was read, read it again: identical.
        let again = tmp("roundtrip2.jsonl");
        let spans: Vec<Vec<SpanRecord>> = read.iter().map(|w| w.spans.clone()).collect();
        write_spans(&again, &spans, false);
        let read2: Vec<Workflow> = open_workflows(&again, &ReadOptions::default())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read2, read);
    }
}

#[test]
fn otlp_export_reads_back_to_the_same_workflows() {
    // The synthetic workflows (fan-out, joins by links, tools, retries' statuses,
    // lanes, tenants, classes, dollars) written as OTLP, one document a workflow.
    let source = synthetic_workflows(40);
    let path = tmp("export-back.otlp.json");
    let mut w = traces::OtlpWriter::new(std::fs::File::create(&path).unwrap());
    for wf in &source {
        w.write_workflow(wf).unwrap();
    }
    w.flush().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.lines().count(),
        source.len(),
        "one document a workflow"
    );
    assert_eq!(TraceFormat::detect(&path).unwrap(), TraceFormat::Otlp);
    // OTLP ids are hex of the right length.
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let span = &first["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    let hex = |v: &serde_json::Value, n: usize| {
        v.as_str()
            .is_some_and(|t| t.len() == n && t.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    assert!(
        hex(&span["traceId"], 32) && hex(&span["spanId"], 16),
        "{span}"
    );
    let read: Vec<Workflow> = open_workflows(&path, &ReadOptions::default())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(read.len(), source.len());
    let origin = source[0][0].start_ns;
    for (wf, spans) in read.iter().zip(&source) {
        let built = Workflow::build(spans[0].workflow_id.clone(), spans.clone(), origin);
        assert_eq!(wf.id, built.id, "the workflow id travels as an attribute");
        // Ids are hex now: the same parent and links, by position.
        assert_eq!(wf.parent, built.parent, "parents");
        assert_eq!(wf.links, built.links, "links");
        assert_eq!(wf.roots, built.roots);
        assert_eq!(wf.token_totals(), built.token_totals());
        assert_eq!(wf.arrival_ns, built.arrival_ns);
        assert!(wf.issues.is_empty());
        for (a, b) in wf.spans.iter().zip(spans) {
            // Ids are hex now; timings to the nanosecond of the span's end.
            let close = |x: f64, y: f64| (x - y).abs() < 1e-6;
            assert!(
                close(a.prefill_ms, b.prefill_ms)
                    && close(a.decode_ms, b.decode_ms)
                    && close(a.tool_wait_ms, b.tool_wait_ms),
                "{a:?} vs {b:?}"
            );
            assert_eq!(
                SpanRecord {
                    line: 0,
                    span_id: b.span_id.clone(),
                    parent_span_id: b.parent_span_id.clone(),
                    links: b.links.clone(),
                    prefill_ms: b.prefill_ms,
                    decode_ms: b.decode_ms,
                    tool_wait_ms: b.tool_wait_ms,
                    ..a.clone()
                },
                *b,
                "every other field round-trips"
            );
        }
    }
    let statuses: BTreeSet<SpanStatus> = read
        .iter()
        .flat_map(|w| w.spans.iter().map(|s| s.status))
        .collect();
    assert_eq!(statuses.len(), 4, "{statuses:?}");
}

#[test]
fn interleaved_workflows_group_within_the_window() {
    // Two workflows' spans alternate line by line.
    let source = synthetic_workflows(2);
    let mut lines = Vec::new();
    let n = source[0].len().max(source[1].len());
    for i in 0..n {
        for wf in &source {
            if let Some(s) = wf.get(i) {
                lines.push(s.clone());
            }
        }
    }
    let path = tmp("interleaved.jsonl");
    write_spans(&path, &[lines], false);
    let wfs: Vec<Workflow> = open_workflows(&path, &ReadOptions::default())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(wfs.len(), 2);
    assert_eq!(wfs[0].spans.len(), source[0].len());
    // With a window of 1 span the second workflow's spans come too late: an error.
    let opts = ReadOptions {
        group_window_spans: Some(1),
        ..ReadOptions::default()
    };
    let err = open_workflows(&path, &opts)
        .unwrap()
        .find_map(Result::err)
        .expect("a late span is an error");
    assert!(err.to_string().contains("already complete"), "{err}");
    let opts = ReadOptions {
        group_window_spans: Some(1),
        skip_bad_rows: true,
        ..ReadOptions::default()
    };
    let mut r = open_workflows(&path, &opts).unwrap();
    let n_wf = r.by_ref().count();
    assert!(n_wf >= 2);
    assert!(r.report().skipped_rows > 0);
}

const BROKEN: &str = r#"{"workflow_id":"a","span_id":"1","start_ms":0,"input_tokens":10,"output_tokens":1}
{"workflow_id":"a","span_id":"2","parent_span_id":"1","start_ms":1,"input_tokens":10,"output_tokens":1}
{"workflow_id":"a","span_id":"3","parent_span_id":"missing","start_ms":2,"input_tokens":10,"output_tokens":1}
{"workflow_id":"b","span_id":"1","start_ms":3,"input_tokens":10,"output_tokens":1}
{"workflow_id":"b","span_id":"1","start_ms":4,"input_tokens":20,"output_tokens":2}
{"workflow_id":"c","span_id":"x","parent_span_id":"y","start_ms":5,"input_tokens":10,"output_tokens":1}
{"workflow_id":"c","span_id":"y","parent_span_id":"x","start_ms":6,"input_tokens":10,"output_tokens":1}
{"workflow_id":"c","span_id":"z","parent_span_id":"x","start_ms":7,"input_tokens":10,"output_tokens":1}
"#;

#[test]
fn orphans_duplicates_and_cycles_are_reported() {
    let path = tmp("broken.jsonl");
    std::fs::write(&path, BROKEN).unwrap();
    let name = path.display().to_string();
    // Strict: the first problem stops the read, with file and line.
    let err = open_workflows(&path, &ReadOptions::default())
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    match &err {
        TraceError::Dag {
            file,
            line,
            workflow,
            issue,
        } => {
            assert_eq!(
                (file.as_str(), *line, workflow.as_str()),
                (name.as_str(), 3, "a")
            );
            assert!(matches!(issue, DagIssue::Orphan { .. }));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().starts_with(&format!("{name}:3: ")), "{err}");
    // Skip mode: everything kept and counted.
    let opts = ReadOptions {
        skip_bad_rows: true,
        ..ReadOptions::default()
    };
    let mut r = open_workflows(&path, &opts).unwrap();
    let wfs: Vec<Workflow> = r.by_ref().map(Result::unwrap).collect();
    let rep = r.report();
    assert_eq!(
        (rep.orphan_spans, rep.duplicate_spans, rep.cycles),
        (1, 1, 1)
    );
    assert_eq!(
        wfs.iter().map(|w| w.spans.len()).sum::<usize>(),
        8,
        "no span dropped"
    );
    assert_eq!(wfs[0].roots, vec![0, 2], "the orphan is a root");
    assert_eq!(wfs[1].token_totals(), (30, 3), "the duplicate is kept");
    let c = &wfs[2];
    assert_eq!(c.roots, vec![0], "the cycle is broken at its earliest span");
    assert_eq!(c.topo_order().len(), 3);
    assert!(matches!(c.issues[0].1, DagIssue::Cycle { .. }));
}

#[test]
fn gzip_is_read_transparently() {
    let src = std::fs::read(data(CONV)).unwrap();
    let gz = tmp("conv.csv.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(&src).unwrap();
    enc.finish().unwrap();
    assert_eq!(TraceFormat::detect(&gz).unwrap(), TraceFormat::AzureCsv);
    assert_eq!(read_all(&gz), read_all(&data(CONV)));
    // Gzip detected by magic bytes even without the suffix.
    let nosuffix = tmp("conv-gzipped.bin");
    std::fs::copy(&gz, &nosuffix).unwrap();
    assert_eq!(read_all(&nosuffix).len(), 19366);
    // A .gz name on a plain file is an error naming the file.
    let fake = tmp("plain.csv.gz");
    std::fs::write(
        &fake,
        "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n",
    )
    .unwrap();
    let err = RequestReader::open(
        &fake,
        &ReadOptions {
            format: Some(TraceFormat::SimpleCsv),
            ..ReadOptions::default()
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("not gzip"), "{err}");
}

#[test]
fn bad_rows_stop_with_file_and_line_or_are_skipped_and_counted() {
    let text = std::fs::read_to_string(data(CONV)).unwrap();
    let mut lines: Vec<&str> = text.lines().take(20).collect();
    lines[5] = "2023-11-16 18:16:00.0000000,many,3"; // line 6
    lines[9] = "2023-11-16 18:16:0x,1,3"; // line 10
    let path = tmp("bad.csv");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let name = path.display().to_string();
    let mut reader = RequestReader::open(&path, &ReadOptions::default()).unwrap();
    let results: Vec<_> = reader.by_ref().collect();
    assert_eq!(
        results.len(),
        5,
        "4 good rows, then the error, then nothing"
    );
    let err = results[4].as_ref().unwrap_err();
    assert_eq!(err.line(), Some(6));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{name}:6: ContextTokens")),
        "{msg}"
    );
    assert!(msg.contains("`many`"), "{msg}");
    let opts = ReadOptions {
        skip_bad_rows: true,
        ..ReadOptions::default()
    };
    let mut reader = RequestReader::open(&path, &opts).unwrap();
    let good: Vec<RequestRecord> = reader.by_ref().map(Result::unwrap).collect();
    assert_eq!(good.len(), 17);
    assert_eq!(reader.report().skipped_rows, 2);
    assert!(
        reader
            .report()
            .first_skipped
            .as_deref()
            .unwrap()
            .contains(":6:")
    );
    // Mooncake and span logs too.
    let path = tmp("bad.jsonl");
    std::fs::write(&path, "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1]}\n{\"timestamp\": 1, \"input_length\": -5}\n").unwrap();
    let err = RequestReader::open(&path, &ReadOptions::default())
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2: expected a JSON object", path.display())),
        "{err}"
    );
    // A header that is not the expected one is fatal even when skipping.
    let path = tmp("noheader.csv");
    std::fs::write(&path, "a,b,c\n1,2,3\n").unwrap();
    let err = RequestReader::open(
        &path,
        &ReadOptions {
            format: Some(TraceFormat::SimpleCsv),
            skip_bad_rows: true,
            ..ReadOptions::default()
        },
    )
    .unwrap()
    .find_map(Result::err)
    .unwrap();
    assert!(err.to_string().contains(":1: expected a header"), "{err}");
    // A row with a field more or less than the header names (a stray comma shifts
    // fields) is a bad row, not read as if the extra were not there.
    let path = tmp("width.csv");
    std::fs::write(
        &path,
        "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,100,10\n0.5,200,20,7\n1.0,300\n1.5,400,40\n",
    )
    .unwrap();
    let err = RequestReader::open(&path, &ReadOptions::default())
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    assert!(
        err.to_string().starts_with(&format!(
            "{}:3: expected 3 comma-separated fields, as the header names, got 4: `0.5,200,20,7`",
            path.display()
        )),
        "{err}"
    );
    let mut reader = RequestReader::open(&path, &opts).unwrap();
    let good: Vec<u64> = reader.by_ref().map(|r| r.unwrap().line).collect();
    assert_eq!(good, vec![2, 5]);
    assert_eq!(reader.report().skipped_rows, 2);
}

#[test]
fn simple_csv_reads_seconds() {
    let path = tmp("simple.csv");
    std::fs::write(
        &path,
        "arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,100,10\n0.25,200,20\r\n1.5,300,30\n\n",
    )
    .unwrap();
    assert_eq!(TraceFormat::detect(&path).unwrap(), TraceFormat::SimpleCsv);
    let recs = read_all(&path);
    assert_eq!(
        recs.iter()
            .map(|r| (r.arrival_ns, r.input_tokens, r.output_tokens, r.line))
            .collect::<Vec<_>>(),
        vec![
            (0, 100, 10, 2),
            (250_000_000, 200, 20, 3),
            (1_500_000_000, 300, 30, 4)
        ]
    );
}

#[test]
fn mooncake_prefix_reuse_counted_two_independent_ways() {
    let recs = read_all(&data(MOONCAKE));
    // Way 1: the library's trie.
    let stats = request_stats(recs.iter().cloned().map(Ok), 3_600_000_000_000).unwrap();
    let prefix = stats.prefix.unwrap();
    let mut trie = PrefixCounter::default();
    let per_request: Vec<u64> = recs
        .iter()
        .map(|r| trie.add(r.block_hashes.as_ref().unwrap()))
        .collect();
    // Way 2: a set of whole prefixes (each prefix as a vector), counting the leading
    // blocks whose prefix was seen before.
    let mut seen: BTreeSet<Vec<u64>> = BTreeSet::new();
    let mut total_hits = 0u64;
    let mut blocks = 0u64;
    for (r, &lib_hits) in recs.iter().zip(&per_request) {
        let h = r.block_hashes.as_ref().unwrap();
        blocks += h.len() as u64;
        let hits = (1..=h.len())
            .take_while(|&j| seen.contains(&h[..j]))
            .count() as u64;
        assert_eq!(hits, lib_hits, "line {}", r.line);
        total_hits += hits;
        for j in 1..=h.len() {
            seen.insert(h[..j].to_vec());
        }
    }
    assert_eq!(prefix.reused_blocks, total_hits);
    assert_eq!(prefix.blocks, blocks);
    // Way 3: every block either creates a new distinct prefix or is a hit.
    assert_eq!(blocks - seen.len() as u64, total_hits);
    assert!(prefix.reuse_share > 0.0 && prefix.reuse_share < 1.0);
    // Blocks are 512 tokens: one hash per started block.
    for r in &recs {
        assert_eq!(
            r.block_hashes.as_ref().unwrap().len() as u32,
            r.input_tokens.div_ceil(512),
            "line {}",
            r.line
        );
    }
}

fn sample_mean(spec: &DistSpec, name: &str, n: usize) -> f64 {
    let sampler = spec.sampler().unwrap();
    let mut rng = StreamFactory::new(2024).stream(name);
    (0..n)
        .map(|_| sampler.sample_tokens(&mut rng) as f64)
        .sum::<f64>()
        / n as f64
}

const POOL: &str = "[pools.llm]\nservers = 4\nservice = { dist = \"exponential\", mean = \"1s\" }";

/// Tolerance of fitted means against the source: 2% relative.
const FIT_TOLERANCE: f64 = 0.02;

#[test]
fn fitted_profile_regenerates_mean_tokens_and_arrival_rate() {
    for rel in [CONV, CODE, MOONCAKE] {
        let path = data(rel);
        let stats = request_stats(
            RequestReader::open(&path, &ReadOptions::default()).unwrap(),
            3_600_000_000_000,
        )
        .unwrap();
        let profile = fit_requests(&stats, rel, &FitOptions::default());
        let class = &profile.classes[0];
        // Under two hours, bursty (CV 1.09, 13.15, 1.1 on these traces): a renewal fit
        // with gamma gaps of the trace's mean gap and CV. (Running the fragment through
        // the simulator: `story_tests::a_fitted_request_trace_regenerates_...`.)
        let (mean_gap, cv) = match class.arrival {
            traces::ArrivalFit::Renewal { mean_gap_s, cv } => (mean_gap_s, cv),
            ref other => panic!("{rel}: expected renewal, got {other:?}"),
        };
        assert_eq!(cv, stats.arrivals.interarrival_cv);
        assert!(cv > 1.05, "{rel}: {cv}");
        assert!((mean_gap * stats.arrivals.mean_rate_per_s - 1.0).abs() < 1e-12);
        // The gap distribution's own mean and CV are those.
        let gaps = DistSpec::Gamma {
            mean: sim_core::dist::Num(mean_gap),
            cv,
        }
        .sampler()
        .unwrap();
        assert!((gaps.mean() / mean_gap - 1.0).abs() < 1e-12);
        for (spec, want, what) in [
            (&class.input_tokens, stats.input_tokens.mean, "input"),
            (&class.output_tokens, stats.output_tokens.mean, "output"),
        ] {
            match spec {
                DistSpec::Empirical { values } => assert!(values.len() <= 200),
                other => panic!("{other:?}"),
            }
            let got = sample_mean(spec, what, 200_000);
            assert!(
                (got - want).abs() / want < FIT_TOLERANCE,
                "{rel} {what}: fitted mean {got} vs trace {want}"
            );
        }
        // The fragment parses as TOML, its distributions as DistSpec, and with a pool
        // added it is a valid scenario.
        let text = profile.to_toml();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let cls = doc["classes"]["fitted"].as_table().unwrap();
        let node = cls["nodes"][0].as_table().unwrap();
        let spec: DistSpec = node["input_tokens"].clone().try_into().unwrap();
        assert_eq!(&spec, &class.input_tokens);
        assert_eq!(
            cls["arrival"]["process"].as_str(),
            Some("renewal"),
            "{text}"
        );
        let scenario = format!("{POOL}\n{text}");
        let spec: sim_core::ScenarioSpec = toml::from_str(&scenario).unwrap();
        spec.validate().unwrap();
    }
    // The lognormal family: median and p99 match the trace's.
    let stats = request_stats(
        RequestReader::open(&data(CONV), &ReadOptions::default()).unwrap(),
        3_600_000_000_000,
    )
    .unwrap();
    let opts = FitOptions {
        family: DistFamily::Lognormal,
        ..FitOptions::default()
    };
    let p = fit_requests(&stats, CONV, &opts);
    assert_eq!(
        p.classes[0].input_tokens,
        DistSpec::Lognormal {
            median: sim_core::dist::Num(stats.input_tokens.p50),
            p99: sim_core::dist::Num(stats.input_tokens.p99),
        }
    );
}

#[test]
fn long_traces_fit_piecewise_rates() {
    // Loop the conv trace 3 times (about 2 h 55 min): a piecewise fit by hour.
    let opts = ReplayOptions {
        loops: 3,
        ..ReplayOptions::default()
    };
    let replay = replay_requests(&data(CONV), &ReadOptions::default(), &opts).unwrap();
    let stats = request_stats(replay, 3_600_000_000_000).unwrap();
    assert_eq!(stats.arrivals.rows, 3 * 19366);
    let p = fit_requests(&stats, CONV, &FitOptions::default());
    match &p.classes[0].arrival {
        traces::ArrivalFit::Piecewise { step_s, rates, cv } => {
            assert_eq!(*step_s, 3600.0);
            assert_eq!(rates.len(), 3);
            // The conv trace is a little bursty within its hours (CV 1.09 overall).
            let within = stats.arrivals.step_cv;
            assert!((within - 1.094).abs() < 0.02, "{within}");
            assert_eq!(*cv, Some(within));
            let mean = stats.arrivals.mean_rate_per_s;
            // Full hours match the trace's mean rate within 5%.
            for r in &rates[..2] {
                assert!((r - mean).abs() / mean < 0.05, "{r} vs {mean}");
            }
        }
        other => panic!("{other:?}"),
    }
    let text = p.to_toml();
    assert!(
        text.contains("process = \"piecewise\", step = \"1h\", rates = ["),
        "{text}"
    );
    let spec: sim_core::ScenarioSpec = toml::from_str(&format!("{POOL}\n{text}")).unwrap();
    spec.validate().unwrap();
}

#[test]
fn span_stats_and_fit_per_class() {
    let source = synthetic_workflows(30);
    let path = tmp("stats.jsonl");
    write_spans(&path, &source, false);
    let stats = span_stats(
        open_workflows(&path, &ReadOptions::default()).unwrap(),
        3_600_000_000_000,
    )
    .unwrap();
    assert_eq!(stats.classes.len(), 2);
    let r = &stats.classes["research"];
    assert_eq!(r.workflows, 15);
    // Research workflows are the even ones: fan-outs 2, 4, 3, 2, ... (2 + w % 3).
    assert_eq!(r.fanout.max, 5.0, "planner: fan + writer");
    assert!(r.fanout.p50 >= 1.0);
    assert_eq!(r.shared_prefix_share, {
        let (c, i) = source
            .iter()
            .step_by(2)
            .flatten()
            .filter(|s| s.kind == SpanKind::Llm)
            .fold((0, 0), |(c, i), s| {
                (c + s.cached_tokens, i + s.input_tokens)
            });
        c as f64 / i as f64
    });
    // Retries: workflows 0, 6, 12, 18, 24 (w % 3 == 0 and even) have one retried tool.
    let work: u64 = source
        .iter()
        .step_by(2)
        .flatten()
        .filter(|s| s.kind != SpanKind::Agent)
        .count() as u64;
    assert!((r.retry_rate - 5.0 / work as f64).abs() < 1e-12);
    // Researcher context grows by 100 tokens per index over the planner.
    assert!(r.context_growth.min >= 100.0);
    assert_eq!(r.tool_latency_ms.min, 82.0);
    let p = fit_spans(&stats, "stats.jsonl", &FitOptions::default());
    let text = p.to_toml();
    assert!(
        text.contains("#   fan_out count = { dist = \"empirical\""),
        "{text}"
    );
    let spec: sim_core::ScenarioSpec = toml::from_str(&format!("{POOL}\n{text}")).unwrap();
    let scenario = spec.validate().unwrap();
    assert_eq!(scenario.classes.len(), 2);
    let agent = p.classes[0].agent.as_ref().unwrap();
    assert!((agent.retry_probability - r.retry_rate).abs() < 1e-12);
    // Replay as workflows: time-scaled, with ids made unique per loop.
    let opts = ReplayOptions {
        rate: 2.0,
        loops: 2,
        ..ReplayOptions::default()
    };
    let wfs: Vec<Workflow> = replay_workflows(&path, &ReadOptions::default(), &opts)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(wfs.len(), 60);
    assert_eq!(wfs[1].arrival_ns, 500_000_000);
    assert!(wfs[30].id.ends_with("#1"));
}

const OTLP: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"travel-agent"}}]},
 "scopeSpans":[{"scope":{"name":"genai"},"spans":[
  {"traceId":"5b8aa5a2d2c872e8321cf37308d69df2","spanId":"0001","parentSpanId":"","name":"invoke_agent planner",
   "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000003000000000",
   "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"invoke_agent"}},{"key":"gen_ai.agent.name","value":{"stringValue":"planner"}}]},
  {"traceId":"5b8aa5a2d2c872e8321cf37308d69df2","spanId":"0002","parentSpanId":"0001","name":"chat gpt-4o",
   "startTimeUnixNano":"1700000000100000000","endTimeUnixNano":"1700000001100000000",
   "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}},{"key":"gen_ai.request.model","value":{"stringValue":"gpt-4o"}},
     {"key":"gen_ai.usage.input_tokens","value":{"intValue":"1200"}},{"key":"gen_ai.usage.output_tokens","value":{"intValue":85}},
     {"key":"gen_ai.agent.name","value":{"stringValue":"planner"}}]},
  {"traceId":"5b8aa5a2d2c872e8321cf37308d69df2","spanId":"0003","parentSpanId":"0001","name":"execute_tool search",
   "startTimeUnixNano":"1700000001200000000","endTimeUnixNano":"1700000001450000000",
   "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"execute_tool"}},{"key":"gen_ai.tool.name","value":{"stringValue":"search"}}]}
 ]}]}]}
{"resourceSpans":[{"scopeSpans":[{"spans":[
  {"traceId":"aa","spanId":"01","startTimeUnixNano":1700000005000000000,"endTimeUnixNano":1700000006000000000,
   "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"text_completion"}},{"key":"gen_ai.usage.input_tokens","value":{"intValue":10}},{"key":"gen_ai.usage.output_tokens","value":{"intValue":5}}]}
 ]}]}]}
"#;

#[test]
fn otlp_genai_spans_map_to_workflows() {
    let path = tmp("export.otlp.json");
    std::fs::write(&path, OTLP).unwrap();
    assert_eq!(TraceFormat::detect(&path).unwrap(), TraceFormat::Otlp);
    let mut r = open_workflows(&path, &ReadOptions::default()).unwrap();
    let wfs: Vec<Workflow> = r.by_ref().map(Result::unwrap).collect();
    assert_eq!(wfs.len(), 2);
    let w = &wfs[0];
    assert_eq!(w.class.as_deref(), Some("travel-agent"));
    assert_eq!(w.spans.len(), 3);
    assert_eq!(w.roots, vec![0]);
    assert_eq!(w.children[0], vec![1, 2]);
    let chat = &w.spans[1];
    assert_eq!(
        (
            chat.kind,
            chat.model_tier.as_str(),
            chat.input_tokens,
            chat.output_tokens
        ),
        (SpanKind::Llm, "gpt-4o", 1200, 85)
    );
    assert_eq!(chat.decode_ms, 1000.0);
    let tool = &w.spans[2];
    assert_eq!(
        (tool.kind, tool.agent_role.as_str(), tool.tool_wait_ms),
        (SpanKind::Tool, "search", 250.0)
    );
    assert_eq!(w.spans[0].kind, SpanKind::Agent);
    assert_eq!(wfs[1].arrival_ns, 5_000_000_000);
    assert_eq!(wfs[1].token_totals(), (10, 5));
    assert_eq!(r.report().rows, 4);
    // A span without a start time is a bad row with file and line.
    let bad = tmp("bad.otlp.json");
    std::fs::write(
        &bad,
        OTLP.replace("\"startTimeUnixNano\":1700000005000000000,", ""),
    )
    .unwrap();
    let err = open_workflows(&bad, &ReadOptions::default())
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    assert!(
        err.to_string().contains("missing `startTimeUnixNano`"),
        "{err}"
    );
    assert!(err.line().is_some());
}

#[test]
fn otlp_resource_attributes_give_lane_tenant_and_class_where_spans_do_not() {
    // Two resources. The first names its service, tenant (`tenant.id`) and lane on the
    // resource: its spans inherit them, except a span's own value, which wins. The
    // second names only a service: no tenant, no lane, the service as the class.
    let doc = r#"{"resourceSpans":[
 {"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"claims-svc"}},{"key":"tenant.id","value":{"stringValue":"acme"}},{"key":"factorysim.lane","value":{"stringValue":"batch"}}]},
  "scopeSpans":[{"spans":[
  {"traceId":"a","spanId":"1","startTimeUnixNano":"0","endTimeUnixNano":"1000000",
   "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}}]},
  {"traceId":"a","spanId":"2","parentSpanId":"1","startTimeUnixNano":"1000000","endTimeUnixNano":"2000000",
   "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}},{"key":"factorysim.lane","value":{"stringValue":"online"}},{"key":"factorysim.tenant","value":{"stringValue":"beta"}}]},
  {"traceId":"b","spanId":"3","startTimeUnixNano":"5000000","endTimeUnixNano":"6000000",
   "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}},{"key":"factorysim.workflow_class","value":{"stringValue":"audit"}}]}
 ]}]},
 {"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"chat-svc"}}]},
  "scopeSpans":[{"spans":[
  {"traceId":"c","spanId":"4","startTimeUnixNano":"7000000","endTimeUnixNano":"8000000",
   "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}}]}
 ]}]}
]}
"#;
    let path = tmp("resource.otlp.json");
    std::fs::write(&path, doc).unwrap();
    let spans: Vec<SpanRecord> = traces::OtlpReader::open(&path, false)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let got: Vec<(&str, &str, Option<&str>, Option<&str>)> = spans
        .iter()
        .map(|s| {
            (
                s.span_id.as_str(),
                s.lane.as_str(),
                s.tenant.as_deref(),
                s.workflow_class.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("1", "batch", Some("acme"), Some("claims-svc")),
            ("2", "online", Some("beta"), Some("claims-svc")),
            ("3", "batch", Some("acme"), Some("audit")),
            ("4", "", None, Some("chat-svc")),
        ]
    );
    let wfs: Vec<Workflow> = open_workflows(&path, &ReadOptions::default())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let by_id: Vec<(&str, Option<&str>, Option<&str>)> = wfs
        .iter()
        .map(|w| (w.id.as_str(), w.class.as_deref(), w.tenant.as_deref()))
        .collect();
    assert_eq!(
        by_id,
        vec![
            ("a", Some("claims-svc"), Some("acme")),
            ("b", Some("audit"), Some("acme")),
            ("c", Some("chat-svc"), None)
        ]
    );
}

/// A join in OTLP: `join` (parent r0) links to r1 and r2, repeats r1, and links to a
/// span of another trace (ignored: a workflow is one trace).
const OTLP_JOIN: &str = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[
  {"traceId":"t","spanId":"p","startTimeUnixNano":"0","endTimeUnixNano":"1000000",
   "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}}]},
  {"traceId":"t","spanId":"join","parentSpanId":"r0","startTimeUnixNano":"9000000","endTimeUnixNano":"10000000",
   "links":[{"traceId":"t","spanId":"r1"},{"spanId":"r2"},{"traceId":"t","spanId":"r1"},{"traceId":"u","spanId":"p"}],
   "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}}]},
  {"traceId":"t","spanId":"r0","parentSpanId":"p","startTimeUnixNano":"1000000","endTimeUnixNano":"2000000",
   "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}}]},
  {"traceId":"t","spanId":"r1","parentSpanId":"p","startTimeUnixNano":"1000000","endTimeUnixNano":"5000000",
   "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}}]},
  {"traceId":"t","spanId":"r2","parentSpanId":"p","startTimeUnixNano":"1000000","endTimeUnixNano":"8000000",
   "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}}]}
 ]}]}]}
"#;

#[test]
fn otlp_links_become_span_links_and_malformed_links_are_bad_rows() {
    let path = tmp("join.otlp.json");
    std::fs::write(&path, OTLP_JOIN).unwrap();
    let wfs: Vec<Workflow> = open_workflows(&path, &ReadOptions::default())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(wfs.len(), 1);
    let w = &wfs[0];
    let join = &w.spans[1];
    assert_eq!(join.span_id, "join");
    assert_eq!(join.parent_span_id.as_deref(), Some("r0"));
    assert_eq!(join.links, ["r1", "r2"]);
    assert_eq!(w.links[1], vec![3, 4]);
    assert_eq!(w.predecessors(1), vec![2, 3, 4]);
    let order: Vec<&str> = w
        .topo_order()
        .into_iter()
        .map(|i| w.spans[i].span_id.as_str())
        .collect();
    assert_eq!(order.last(), Some(&"join"));
    assert!(
        w.spans
            .iter()
            .all(|s| s.span_id == "join" || s.links.is_empty())
    );

    // Malformed links are bad rows naming file, line (where the document ends), the span
    // and the link; never dropped silently.
    let name = |p: &Path| p.display().to_string();
    let lines = OTLP_JOIN.lines().count();
    for (bad, what) in [
        (r#"{"spanId":"r2"}"#, r#"{"spanId":7}"#),
        (r#"{"spanId":"r2"}"#, r#"{"spanId":""}"#),
        (r#"{"spanId":"r2"}"#, r#""r2""#),
        (r#"{"spanId":"r2"}"#, r#"{"traceId":5,"spanId":"r2"}"#),
    ] {
        let p = tmp("bad-link.otlp.json");
        std::fs::write(&p, OTLP_JOIN.replace(bad, what)).unwrap();
        let err = open_workflows(&p, &ReadOptions::default())
            .unwrap()
            .find_map(Result::err)
            .unwrap();
        let want = format!(
            "{}:{lines}: resourceSpans[0].scopeSpans[0].spans[1]: `links[1]",
            name(&p)
        );
        assert!(err.to_string().starts_with(&want), "{what}: {err}");
    }
    let p = tmp("bad-links.otlp.json");
    let text = OTLP_JOIN.replace(
        r#""links":[{"traceId":"t","spanId":"r1"},{"spanId":"r2"},{"traceId":"t","spanId":"r1"},{"traceId":"u","spanId":"p"}]"#,
        r#""links":{"spanId":"r1"}"#,
    );
    assert_ne!(text, OTLP_JOIN);
    std::fs::write(&p, text).unwrap();
    let err = open_workflows(&p, &ReadOptions::default())
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    assert!(
        err.to_string()
            .ends_with("spans[1]: `links`: expected an array of `{traceId, spanId}` objects"),
        "{err}"
    );
    // Skip mode: the span with bad links is skipped and counted; the rest is read.
    let opts = ReadOptions {
        skip_bad_rows: true,
        ..ReadOptions::default()
    };
    let mut r = open_workflows(&p, &opts).unwrap();
    let wfs: Vec<Workflow> = r.by_ref().map(Result::unwrap).collect();
    assert_eq!(wfs[0].spans.len(), 4);
    assert_eq!(r.report().skipped_rows, 1);
}

#[test]
fn span_log_start_time_rfc3339_and_inferred_kinds() {
    let path = tmp("rfc.jsonl");
    std::fs::write(
        &path,
        "{\"workflow_id\": 7, \"span_id\": 1, \"start_time\": \"2025-01-01T00:00:00Z\", \"input_tokens\": 5}\n\
         {\"workflow_id\": 7, \"span_id\": 2, \"parent_span_id\": 1, \"start_time\": \"2025-01-01T01:00:00.5+01:00\", \"tool_wait_ms\": 30}\n",
    )
    .unwrap();
    let wfs: Vec<Workflow> = open_workflows(&path, &ReadOptions::default())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let w = &wfs[0];
    assert_eq!(w.id, "7");
    assert_eq!(w.spans[1].start_ns - w.spans[0].start_ns, 500_000_000);
    assert_eq!(w.spans[1].kind, SpanKind::Tool);
    assert_eq!(w.parent, vec![None, Some(0)]);
}

#[test]
fn request_traces_replay_as_single_hop_workflows() {
    let recs = read_all(&data(CODE));
    let wfs: Vec<Workflow> = recs.iter().map(Workflow::single_hop).collect();
    assert_eq!(wfs.len(), 8819);
    let ids: BTreeSet<&str> = wfs.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids.len(), wfs.len(), "unique ids");
    let (i, o) = wfs.iter().fold((0, 0), |(i, o), w| {
        let (a, b) = w.token_totals();
        (i + a, o + b)
    });
    let want_i: u64 = recs.iter().map(|r| r.input_tokens as u64).sum();
    let want_o: u64 = recs.iter().map(|r| r.output_tokens as u64).sum();
    assert_eq!((i, o), (want_i, want_o));
    assert!(
        wfs.iter()
            .zip(&recs)
            .all(|(w, r)| w.arrival_ns == r.arrival_ns)
    );
}

#[test]
fn span_links_are_extra_predecessors_checked_like_parents() {
    // d is a join: parent c, links b (and a repeat of b, ignored). e links to a span that
    // does not exist; in workflow y, p's link closes a cycle (q's parent is p).
    let path = tmp("links.jsonl");
    std::fs::write(
        &path,
        r#"{"workflow_id":"x","span_id":"a","start_ms":0,"input_tokens":1}
{"workflow_id":"x","span_id":"d","parent_span_id":"c","links":["b","b"],"start_ms":9}
{"workflow_id":"x","span_id":"b","parent_span_id":"a","start_ms":1}
{"workflow_id":"x","span_id":"c","parent_span_id":"a","start_ms":2}
{"workflow_id":"y","span_id":"p","links":["q"],"start_ms":0}
{"workflow_id":"y","span_id":"q","parent_span_id":"p","start_ms":1}
{"workflow_id":"y","span_id":"e","parent_span_id":"p","links":[7],"start_ms":2}
"#,
    )
    .unwrap();
    let x = open_workflows(&path, &ReadOptions::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(x.spans[1].links, ["b"]);
    assert_eq!(x.links[1], vec![2]);
    assert_eq!(x.predecessors(1), vec![2, 3]);
    // d comes after both b and c although it is the second line.
    let order: Vec<&str> = x
        .topo_order()
        .into_iter()
        .map(|i| x.spans[i].span_id.as_str())
        .collect();
    assert_eq!(order, ["a", "b", "c", "d"]);
    // Strict: y's first problem (the cycle through p's link, line 5) stops the read.
    let err = open_workflows(&path, &ReadOptions::default())
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    let name = path.display().to_string();
    assert!(
        err.to_string()
            .starts_with(&format!("{name}:5: workflow `y`: cycle")),
        "{err}"
    );
    // Skip mode: the link closing the cycle is dropped, the missing one counted as an
    // orphan; no span dropped.
    let opts = ReadOptions {
        skip_bad_rows: true,
        ..ReadOptions::default()
    };
    let mut r = open_workflows(&path, &opts).unwrap();
    let wfs: Vec<Workflow> = r.by_ref().map(Result::unwrap).collect();
    let rep = r.report();
    assert_eq!((rep.orphan_spans, rep.cycles), (1, 1));
    let y = &wfs[1];
    assert_eq!(y.spans.len(), 3);
    assert_eq!(y.links, vec![Vec::<usize>::new(); 3]);
    assert_eq!(y.topo_order().len(), 3);
    assert!(matches!(&y.issues[1].1, DagIssue::MissingLink { link, .. } if link == "7"));
    // Written back, links survive the round trip.
    let out = tmp("links-out.jsonl");
    let mut w = SpanLogWriter::new(std::fs::File::create(&out).unwrap());
    for s in &x.spans {
        w.write_span(s).unwrap();
    }
    w.flush().unwrap();
    let back = open_workflows(&out, &ReadOptions::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(back.links, x.links);
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        text.matches("\"links\"").count(),
        1,
        "written only where present"
    );
}

#[test]
fn strict_reading_reports_the_first_problem_in_file_order() {
    let path = tmp("first-problem.jsonl");
    let span = |wf: &str, id: &str, parent: Option<&str>| match parent {
        Some(p) => format!(
            r#"{{"workflow_id":"{wf}","span_id":"{id}","parent_span_id":"{p}","start_ms":0}}"#
        ),
        None => format!(r#"{{"workflow_id":"{wf}","span_id":"{id}","start_ms":0}}"#),
    };
    let first = |lines: &[String]| -> (u64, String) {
        std::fs::write(&path, lines.join("\n")).unwrap();
        let err = open_workflows(&path, &ReadOptions::default())
            .unwrap()
            .find_map(Result::err)
            .unwrap();
        (err.line().unwrap_or(0), err.detail())
    };
    let bad = "{\"workflow_id\": \"a\"}".to_string();
    // An orphan on line 2 beats a bad row on line 7 (its workflow is complete at the
    // end of the file: reading goes on past the bad row to find out).
    let mut lines = vec![
        span("a", "1", None),
        span("a", "2", Some("nope")),
        span("b", "1", None),
        span("b", "2", Some("1")),
        span("b", "3", Some("1")),
        span("a", "3", Some("1")),
        bad.clone(),
        span("a", "4", Some("1")),
    ];
    let (line, detail) = first(&lines);
    assert_eq!(line, 2, "{detail}");
    assert!(detail.contains("orphan span `2`"), "{detail}");
    // The same span whose parent comes after the bad row is no orphan: the bad row is
    // the first problem.
    lines.push(span("a", "nope", Some("1")));
    let (line, detail) = first(&lines);
    assert_eq!(line, 7, "{detail}");
    assert!(detail.contains("span_id"), "{detail}");
    // Across workflows: a's orphan (line 6) is found first, at a's end, but b's duplicate
    // id on line 4 comes first in the file.
    let lines = vec![
        span("a", "1", None),
        span("b", "1", None),
        span("a", "2", Some("1")),
        span("b", "1", None),
        span("b", "2", Some("1")),
        span("a", "3", Some("gone")),
    ];
    let (line, detail) = first(&lines);
    assert_eq!(line, 4, "{detail}");
    assert!(detail.contains("duplicate span id `1`"), "{detail}");
    // Reading past a bad row completes only the workflows open at it: `b` starts after
    // the bad row on line 3, so its orphan (line 5) is not looked for.
    let lines = [
        span("a", "1", None),
        span("a", "2", Some("1")),
        bad,
        span("b", "1", None),
        span("b", "2", Some("x")),
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let opts = ReadOptions {
        group_window_spans: Some(2),
        ..ReadOptions::default()
    };
    let err = open_workflows(&path, &opts)
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    assert_eq!(err.line(), Some(3), "{err}");
}

/// The status of each span of the first workflow of a span trace.
fn first_workflow_status(path: &Path) -> Vec<SpanStatus> {
    let mut wfs = open_workflows(path, &ReadOptions::default()).unwrap();
    let wf = wfs.next().unwrap().unwrap();
    wf.spans.iter().map(|s| s.status).collect()
}

#[test]
fn span_status_is_read_written_only_when_not_ok_and_counted() {
    // Four calls of one workflow: a timed-out try, its retry that errored, a third
    // try that returned, and a tool call lost with its machine; `status` in any case.
    let path = tmp("status.jsonl");
    std::fs::write(
        &path,
        "{\"workflow_id\":\"w\",\"span_id\":\"a\",\"start_ms\":0,\"input_tokens\":10,\"status\":\"TIMEOUT\"}\n\
         {\"workflow_id\":\"w\",\"span_id\":\"b\",\"start_ms\":5,\"input_tokens\":10,\"attempt\":2,\"status\":\"Error\"}\n\
         {\"workflow_id\":\"w\",\"span_id\":\"c\",\"start_ms\":9,\"input_tokens\":10,\"attempt\":3,\"status\":\"unset\"}\n\
         {\"workflow_id\":\"w\",\"span_id\":\"d\",\"parent_span_id\":\"c\",\"start_ms\":12,\"kind\":\"tool\",\"tool_wait_ms\":3,\"status\":\"lost\"}\n\
         {\"workflow_id\":\"w\",\"span_id\":\"e\",\"parent_span_id\":\"d\",\"start_ms\":15,\"input_tokens\":10}\n\
         {\"workflow_id\":\"w\",\"span_id\":\"e2\",\"parent_span_id\":\"d\",\"start_ms\":16,\"input_tokens\":10,\"attempt\":2}\n",
    )
    .unwrap();
    let status = first_workflow_status(&path);
    assert_eq!(
        status,
        [
            SpanStatus::Timeout,
            SpanStatus::Error,
            SpanStatus::Ok,
            SpanStatus::Lost,
            SpanStatus::Ok,
            SpanStatus::Ok
        ]
    );
    let stats = span_stats(
        open_workflows(&path, &ReadOptions::default()).unwrap(),
        3_600_000_000_000,
    )
    .unwrap();
    let all = &stats.all;
    assert_eq!(
        (all.error_spans, all.timeout_spans, all.lost_spans),
        (1, 1, 1)
    );
    // Three of six calls are retries; they are tries, not calls or branches: two LLM
    // calls (a, e), and the tool call fans out to one (e, whose retry is e2). The
    // lost tool call was not tried again: the workflow gave up.
    assert!((all.retry_rate - 0.5).abs() < 1e-12);
    assert_eq!(all.llm_hops_per_workflow.mean, 2.0);
    assert_eq!(all.fanout_sorted, vec![1.0, 1.0]);
    let llm_role = all.roles.iter().find(|r| r.kind == SpanKind::Llm).unwrap();
    // The lost tool call was not tried again: the workflow gave up, so its roles'
    // counts leave it out (the timed-out and errored tries were tried again).
    assert_eq!(all.gave_up, 1);
    assert!(llm_role.counts.is_empty());
    assert_eq!(
        (llm_role.spans, llm_role.errors, llm_role.max_attempt),
        (5, 1, 3)
    );
    // Written back: `status` only where not ok, and read back the same.
    let wf = open_workflows(&path, &ReadOptions::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let mut w = SpanLogWriter::new(Vec::new());
    for s in &wf.spans {
        w.write_span(s).unwrap();
    }
    let text = String::from_utf8(w.into_inner()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("\"status\":\"timeout\""), "{}", lines[0]);
    assert!(lines[1].contains("\"status\":\"error\""), "{}", lines[1]);
    assert!(!lines[2].contains("status"), "{}", lines[2]);
    assert!(lines[3].contains("\"status\":\"lost\""), "{}", lines[3]);
    let again = tmp("status-again.jsonl");
    std::fs::write(&again, &text).unwrap();
    assert_eq!(first_workflow_status(&again), status);
    // A status the reader does not know is a bad row naming the values it takes.
    let bad = tmp("status-bad.jsonl");
    std::fs::write(
        &bad,
        "{\"workflow_id\":\"w\",\"span_id\":\"a\",\"start_ms\":0,\"status\":\"crashed\"}\n",
    )
    .unwrap();
    let err = open_workflows(&bad, &ReadOptions::default())
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    let msg = err.to_string();
    assert!(msg.contains("status-bad.jsonl:1:"), "{msg}");
    assert!(msg.contains("ok, unset, error, timeout or lost"), "{msg}");
}

#[test]
fn otlp_status_codes_map_to_span_status() {
    // status.code 2 (number or name) is an error, a timeout where `error.type` says
    // so; `factorysim.status` wins; 0 / 1 / absent return.
    let span = |id: &str, status: &str, attrs: &str| {
        format!(
            r#"{{"traceId":"t","spanId":"{id}","startTimeUnixNano":"0","endTimeUnixNano":"1000"{status},
   "attributes":[{{"key":"gen_ai.operation.name","value":{{"stringValue":"chat"}}}}{attrs}]}}"#
        )
    };
    let spans = [
        span("a", "", ""),
        span("b", r#","status":{"code":1}"#, ""),
        span("c", r#","status":{"code":2,"message":"rate limited"}"#, ""),
        span(
            "d",
            r#","status":{"code":"STATUS_CODE_ERROR"}"#,
            r#",{"key":"error.type","value":{"stringValue":"timeout"}}"#,
        ),
        span(
            "e",
            r#","status":{"code":2}"#,
            r#",{"key":"factorysim.status","value":{"stringValue":"lost"}}"#,
        ),
    ];
    let doc = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    );
    let path = tmp("status.otlp.json");
    std::fs::write(&path, &doc).unwrap();
    let status = first_workflow_status(&path);
    assert_eq!(
        status,
        [
            SpanStatus::Ok,
            SpanStatus::Ok,
            SpanStatus::Error,
            SpanStatus::Timeout,
            SpanStatus::Lost
        ]
    );
    std::fs::write(&path, doc.replace(r#""code":1"#, r#""code":true"#)).unwrap();
    let err = open_workflows(&path, &ReadOptions::default())
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    assert!(err.to_string().contains("`status.code`"), "{err}");
}

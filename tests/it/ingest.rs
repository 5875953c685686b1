//! Incremental, exactly-once ingestion of trace files into the store: files
//! that grow, are half-written, truncated, replaced, full of garbage, or
//! imported by a process that gets killed.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::append;
use serde_json::{Value, json};
use whetstone::ingest::{IngestOptions, IngestReport, Progress, ingest_paths};
use whetstone::store::{EpisodeFilter, Store};
use whetstone::trace::{Reason, TraceFormat};

/// A Whetstone JSONL episode line (without newline).
fn episode_line(id: &str) -> String {
    json!({
        "id": id,
        "prompt": {"name": "Controller", "version": "3"},
        "input": format!("task {id}"),
        "steps": [
            {"kind": "llm", "name": "gpt-4o-mini", "llm": {"output_text": "call search"}},
            {"kind": "tool", "name": "search", "tool": {"arguments": {"q": id}, "result": "ok"}},
        ],
        "rewards": {"success": 1.0},
    })
    .to_string()
}

fn lines_of(ids: impl IntoIterator<Item = String>) -> String {
    ids.into_iter().map(|id| episode_line(&id) + "\n").collect()
}

fn import(store: &mut Store, paths: &[&Path], options: &IngestOptions) -> IngestReport {
    let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    ingest_paths(store, &paths, options, &mut |_| {}).unwrap()
}

fn small_batches() -> IngestOptions {
    IngestOptions {
        batch_lines: 3,
        ..IngestOptions::default()
    }
}

fn trace_ids(store: &Store) -> Vec<String> {
    let mut ids: Vec<String> = store
        .load_episodes(&EpisodeFilter::default())
        .unwrap()
        .into_iter()
        .map(|s| s.episode.trace_id)
        .collect();
    ids.sort();
    ids
}

fn ids(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("ep-{i:06}")).collect()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[test]
fn appended_lines_are_picked_up_on_the_next_pass() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.jsonl");
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    append(&file, &lines_of(ids(0..10)));
    let first = import(&mut store, &[&file], &small_batches());
    assert_eq!((first.episodes_new, first.lines), (10, 10));

    append(&file, &lines_of(ids(10..15)));
    let second = import(&mut store, &[&file], &small_batches());
    assert_eq!(
        (second.episodes_new, second.episodes_duplicate, second.lines),
        (5, 0, 5)
    );
    assert_eq!(trace_ids(&store), ids(0..15));

    let episode = store.episode("ep-000012").unwrap().unwrap().episode;
    assert_eq!(
        episode.source.line, 13,
        "line numbers continue across passes"
    );
    assert_eq!(episode.format, TraceFormat::WhetstoneJsonl);
}

#[test]
fn half_written_last_line_waits_then_completes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.jsonl");
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let last = episode_line("ep-last");
    let (head, tail) = last.split_at(last.len() / 2);
    append(&file, &(lines_of(ids(0..2)) + head));

    let first = import(&mut store, &[&file], &small_batches());
    assert_eq!(first.episodes_new, 2);
    assert_eq!(
        first.rejects_total(),
        0,
        "a half-written line is not a reject"
    );

    append(&file, &format!("{tail}\n"));
    let second = import(&mut store, &[&file], &small_batches());
    assert_eq!((second.episodes_new, second.rejects_total()), (1, 0));
    assert_eq!(
        store
            .episode("ep-last")
            .unwrap()
            .unwrap()
            .episode
            .source
            .line,
        3
    );
}

#[test]
fn truncated_file_is_read_again_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.jsonl");
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    fs::write(&file, lines_of(ids(0..20))).unwrap();
    import(&mut store, &[&file], &small_batches());

    // Truncated in place (same inode) and rewritten: shorter than the cursor.
    fs::write(&file, lines_of(ids(0..3).into_iter().chain(ids(100..102)))).unwrap();
    let report = import(&mut store, &[&file], &small_batches());
    assert_eq!(report.files_reread, 1);
    assert_eq!((report.episodes_new, report.episodes_duplicate), (2, 3));
    assert_eq!(
        trace_ids(&store),
        sorted([ids(0..20), ids(100..102)].concat())
    );
}

#[test]
fn same_size_rewrite_and_replaced_file_are_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.jsonl");
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    fs::write(&file, lines_of(ids(0..5))).unwrap();
    import(&mut store, &[&file], &small_batches());

    // Same length, different content, same inode: only the fingerprint tells.
    fs::write(&file, lines_of(ids(10..15))).unwrap();
    let report = import(&mut store, &[&file], &small_batches());
    assert_eq!((report.files_reread, report.episodes_new), (1, 5));

    // Replaced by rename (log rotation): a new inode with old and new lines.
    let replacement = dir.path().join("agent.jsonl.tmp");
    fs::write(&replacement, lines_of([ids(10..15), ids(20..40)].concat())).unwrap();
    fs::rename(&replacement, &file).unwrap();
    let report = import(&mut store, &[&file], &small_batches());
    assert_eq!(report.files_reread, 1);
    assert_eq!((report.episodes_new, report.episodes_duplicate), (20, 5));
    assert_eq!(
        trace_ids(&store),
        sorted([ids(0..5), ids(10..15), ids(20..40)].concat())
    );
}

#[test]
fn bad_lines_are_rejected_with_line_and_reason_and_good_lines_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.jsonl");
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let mut content = Vec::new();
    content.extend_from_slice((episode_line("ep-1") + "\n").as_bytes()); // 1
    content.extend_from_slice(b"{\"steps\": [\n"); // 2: truncated JSON
    content.extend_from_slice(&[0xff, 0xfe, 0x00, 0x9c, b'\n']); // 3: binary
    content.extend_from_slice(b"\n"); // 4: blank, skipped
    content.extend_from_slice(&vec![b'x'; 5000]); // 5: too long
    content.push(b'\n');
    content.extend_from_slice(b"{\"hello\": 1}\n"); // 6: unknown format
    content.extend_from_slice((episode_line("ep-2") + "\n").as_bytes()); // 7
    fs::write(&file, &content).unwrap();

    let options = IngestOptions {
        max_line_bytes: 4096,
        ..small_batches()
    };
    let report = import(&mut store, &[&file], &options);
    assert_eq!(report.episodes_new, 2);
    let found: Vec<(u64, Reason)> = report
        .first_rejects
        .iter()
        .map(|d| (d.line, d.reason))
        .collect();
    assert_eq!(
        found,
        vec![
            (2, Reason::InvalidJson),
            (3, Reason::NotUtf8),
            (5, Reason::LineTooLong),
            (6, Reason::UnknownFormat),
        ]
    );
    assert!(report.first_rejects[0].file.ends_with("agent.jsonl"));
    assert_eq!(
        store.episode("ep-2").unwrap().unwrap().episode.source.line,
        7
    );

    // Re-reading the file from the start (it is rewritten with one more
    // line) records no reject twice.
    content.extend_from_slice((episode_line("ep-3") + "\n").as_bytes());
    fs::write(&file, &content).unwrap();
    let report = import(&mut store, &[&file], &options);
    assert_eq!((report.episodes_new, report.rejects_total()), (1, 0));
    let stats = store.stats().unwrap();
    assert_eq!(
        stats.rejects_by_reason.iter().map(|(_, n)| n).sum::<u64>(),
        4
    );
}

#[test]
fn reimporting_the_same_directory_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces");
    fs::create_dir_all(traces.join("nested")).unwrap();
    fs::write(traces.join("a.jsonl"), lines_of(ids(0..4)) + "garbage\n").unwrap();
    fs::write(traces.join("nested").join("b.ndjson"), lines_of(ids(4..8))).unwrap();
    fs::write(traces.join("c.log"), lines_of(ids(8..9))).unwrap();
    // Skipped: hidden files, hidden directories, other extensions.
    fs::write(traces.join(".hidden.jsonl"), lines_of(ids(100..101))).unwrap();
    fs::create_dir_all(traces.join(".cache")).unwrap();
    fs::write(
        traces.join(".cache").join("x.jsonl"),
        lines_of(ids(101..102)),
    )
    .unwrap();
    fs::write(traces.join("notes.md"), lines_of(ids(102..103))).unwrap();

    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let first = import(&mut store, &[&traces], &small_batches());
    assert_eq!(
        (first.files, first.episodes_new, first.rejects_total()),
        (3, 9, 1)
    );
    assert_eq!(trace_ids(&store), ids(0..9));

    let again = import(&mut store, &[&traces], &small_batches());
    assert_eq!(
        (
            again.files,
            again.lines,
            again.bytes,
            again.episodes_new,
            again.episodes_duplicate
        ),
        (3, 0, 0, 0, 0)
    );
    assert_eq!(again.rejects_total(), 0);
}

#[test]
fn unreadable_paths_are_reported_and_do_not_stop_the_import() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.jsonl");
    fs::write(&file, lines_of(ids(0..2))).unwrap();
    let missing = dir.path().join("missing.jsonl");
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let report = import(&mut store, &[&missing, &file], &small_batches());
    assert_eq!(report.episodes_new, 2);
    assert_eq!(report.file_errors.len(), 1);
    assert_eq!(report.file_errors[0].path, missing);
}

#[test]
fn huge_line_is_skipped_without_buffering_and_the_next_line_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.jsonl");
    {
        let mut out = std::io::BufWriter::new(fs::File::create(&file).unwrap());
        out.write_all((episode_line("before") + "\n").as_bytes())
            .unwrap();
        // A 50 MB "line": a JSON string that never ends within the limit.
        out.write_all(b"{\"steps\": \"").unwrap();
        let chunk = vec![b'a'; 1024 * 1024];
        for _ in 0..50 {
            out.write_all(&chunk).unwrap();
        }
        out.write_all(b"\"}\n").unwrap();
        out.write_all((episode_line("after") + "\n").as_bytes())
            .unwrap();
    }
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let options = IngestOptions {
        max_line_bytes: 1024 * 1024,
        ..IngestOptions::default()
    };
    let report = import(&mut store, &[&file], &options);
    assert_eq!(report.episodes_new, 2);
    assert_eq!(report.rejects, BTreeMap::from([(Reason::LineTooLong, 1)]));
    let reject = &report.first_rejects[0];
    assert_eq!(reject.line, 2);
    assert!(
        reject
            .detail
            .contains(&format!("{}", 50 * 1024 * 1024 + 13)),
        "{reject}"
    );
    assert_eq!(
        store.episode("after").unwrap().unwrap().episode.source.line,
        3
    );
}

// --- OTLP spans -----------------------------------------------------------

const TRACE_A: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACE_B: &str = "1bf7651916cd43dd8448eb211c80319d";

fn attr(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

/// An OTLP/JSON span: the root is an agent run, children are LLM calls or
/// tool executions.
fn span(trace: &str, id: &str, parent: Option<&str>, kind: &str) -> Value {
    let attributes = match kind {
        "root" => vec![attr("gen_ai.operation.name", "invoke_agent")],
        "llm" => vec![
            attr("gen_ai.operation.name", "chat"),
            attr("gen_ai.request.model", "gpt-4o-mini"),
        ],
        "tool" => vec![
            attr("gen_ai.operation.name", "execute_tool"),
            attr("gen_ai.tool.name", "search"),
        ],
        other => panic!("unknown span kind {other}"),
    };
    let start: u64 = 1_700_000_000_000_000_000 + id.len() as u64;
    json!({
        "traceId": trace, "spanId": id, "parentSpanId": parent.unwrap_or(""),
        "name": if kind == "root" { "invoke_agent controller" } else { kind },
        "kind": 1, "startTimeUnixNano": start.to_string(),
        "endTimeUnixNano": (start + 1_000_000).to_string(),
        "attributes": attributes, "status": {"code": 0},
    })
}

fn otlp_line(spans: Vec<Value>) -> String {
    json!({"resourceSpans": [{"resource": {"attributes": [attr("service.name", "agent")]},
        "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}]}]})
    .to_string()
        + "\n"
}

#[test]
fn spans_wait_for_their_root_across_passes_then_become_one_episode() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otel.jsonl");
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    append(
        &file,
        &(otlp_line(vec![span(
            TRACE_A,
            "00000000000000a1",
            Some("00000000000000a0"),
            "llm",
        )]) + &otlp_line(vec![span(
            TRACE_A,
            "00000000000000a2",
            Some("00000000000000a0"),
            "tool",
        )])),
    );
    let first = import(&mut store, &[&file], &small_batches());
    assert_eq!((first.episodes_new, first.spans_new), (0, 2));
    assert_eq!((first.pending_spans, first.pending_traces), (2, 1));

    append(
        &file,
        &otlp_line(vec![span(TRACE_A, "00000000000000a0", None, "root")]),
    );
    let second = import(&mut store, &[&file], &small_batches());
    assert_eq!((second.episodes_new, second.pending_spans), (1, 0));
    let episode = store.episode(TRACE_A).unwrap().unwrap().episode;
    assert_eq!(episode.format, TraceFormat::OtlpJson);
    assert_eq!(episode.steps.len(), 2);

    // A span of the finalized trace that was never seen: late, reported.
    append(
        &file,
        &otlp_line(vec![span(
            TRACE_A,
            "00000000000000a9",
            Some("00000000000000a0"),
            "tool",
        )]),
    );
    let late = import(&mut store, &[&file], &small_batches());
    assert_eq!(late.rejects, BTreeMap::from([(Reason::LateSpan, 1)]));
    assert_eq!(late.first_rejects[0].line, 4);

    // The whole file read again (a copy renamed over it, so a new inode):
    // known spans are silently ignored, the late span is not reported twice.
    let copy = dir.path().join("otel.copy");
    fs::copy(&file, &copy).unwrap();
    fs::rename(&copy, &file).unwrap();
    let reread = import(&mut store, &[&file], &small_batches());
    assert_eq!(reread.files_reread, 1);
    assert_eq!(
        (
            reread.episodes_new,
            reread.rejects_total(),
            reread.spans_duplicate
        ),
        (0, 0, 3)
    );
    assert_eq!(store.episode_count().unwrap(), 1);
}

#[test]
fn one_line_batches_parsed_on_several_threads_are_committed_in_file_order() {
    // Each line is its own batch, and batches are parsed by several workers:
    // were any committed out of order, a root would land before its
    // children, which would then be rejected as late.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otel.jsonl");
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let traces: Vec<String> = (0..200).map(|i| format!("{:032x}", i + 1)).collect();
    let mut text = String::new();
    for trace in &traces {
        let child = span(trace, "00000000000000a1", Some("00000000000000a0"), "tool");
        let root = span(trace, "00000000000000a0", None, "root");
        text += &(otlp_line(vec![child]) + &otlp_line(vec![root]));
    }
    append(&file, &text);
    let options = IngestOptions {
        batch_lines: 1,
        ..IngestOptions::default()
    };
    let report = import(&mut store, &[&file], &options);
    assert_eq!(report.rejects_total(), 0, "{:?}", report.first_rejects);
    assert_eq!((report.episodes_new, report.spans_new), (200, 400));
    assert_eq!(report.lines, 400);
    let stored = store.load_episodes(&EpisodeFilter::default()).unwrap();
    let in_store_order: Vec<&str> = stored.iter().map(|s| s.episode.trace_id.as_str()).collect();
    assert_eq!(in_store_order, traces, "episodes are stored in file order");
    assert!(stored.iter().all(|s| s.episode.steps.len() == 1));
}

#[test]
fn no_transaction_commits_more_than_batch_lines_lines() {
    // Lines of ~300 KB make the reader cut raw batches by size (1 MiB, so
    // 3–4 lines) before `batch_lines` = 5: two of them must never share one
    // transaction. Progress is reported once per commit, in bytes.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.jsonl");
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let padding = "x".repeat(300_000);
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let mut line: Value =
                serde_json::from_str(&episode_line(&format!("ep-{i:06}"))).unwrap();
            line["input"] = Value::from(format!("{padding} {i:06}"));
            line.to_string() + "\n"
        })
        .collect();
    let line_bytes = lines[0].len() as u64;
    assert!(lines.iter().all(|l| l.len() as u64 == line_bytes));
    append(&file, &lines.concat());
    let options = IngestOptions {
        batch_lines: 5,
        ..IngestOptions::default()
    };
    let mut commits = Vec::new();
    let report = ingest_paths(&mut store, &[file], &options, &mut |progress| {
        if let Progress::Advanced(bytes) = progress {
            commits.push(bytes);
        }
    })
    .unwrap();
    assert_eq!(report.episodes_new, 40);
    assert_eq!(commits.iter().sum::<u64>(), 40 * line_bytes);
    for bytes in commits {
        assert!(
            bytes <= 5 * line_bytes,
            "a transaction of {} lines",
            bytes / line_bytes
        );
    }
}

#[test]
fn rootless_traces_wait_for_the_quiet_period_or_finalize() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otel.jsonl");
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    append(
        &file,
        &otlp_line(vec![
            span(TRACE_B, "00000000000000b1", Some("00000000000000b0"), "llm"),
            span(
                TRACE_B,
                "00000000000000b2",
                Some("00000000000000b0"),
                "tool",
            ),
        ]),
    );
    let options = IngestOptions {
        quiet_period_secs: 3600,
        ..small_batches()
    };
    let waiting = import(&mut store, &[&file], &options);
    assert_eq!((waiting.episodes_new, waiting.pending_traces), (0, 1));

    let finalized = import(
        &mut store,
        &[&file],
        &IngestOptions {
            finalize: true,
            ..options.clone()
        },
    );
    assert_eq!((finalized.episodes_new, finalized.pending_spans), (1, 0));
    assert_eq!(
        store.episode(TRACE_B).unwrap().unwrap().episode.steps.len(),
        2
    );

    // Quiet period elapsed (1 s) without --finalize.
    let file2 = dir.path().join("otel2.jsonl");
    append(
        &file2,
        &otlp_line(vec![span(
            TRACE_A,
            "00000000000000a1",
            Some("00000000000000a0"),
            "llm",
        )]),
    );
    let short = IngestOptions {
        quiet_period_secs: 1,
        ..small_batches()
    };
    assert_eq!(import(&mut store, &[&file2], &short).pending_traces, 1);
    std::thread::sleep(Duration::from_millis(1100));
    let later = import(&mut store, &[&file2], &short);
    assert_eq!((later.episodes_new, later.pending_traces), (1, 0));
}

#[test]
fn spans_beyond_the_per_trace_cap_are_rejected_as_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otel.jsonl");
    let spans = (1..=5)
        .map(|i| {
            span(
                TRACE_A,
                &format!("00000000000000c{i}"),
                Some("00000000000000c0"),
                "tool",
            )
        })
        .collect();
    append(&file, &otlp_line(spans));
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let options = IngestOptions {
        max_spans_per_trace: 3,
        finalize: true,
        ..small_batches()
    };
    let report = import(&mut store, &[&file], &options);
    assert_eq!(report.rejects, BTreeMap::from([(Reason::TooLarge, 2)]));
    assert_eq!(report.episodes_new, 1);
    assert_eq!(
        store.episode(TRACE_A).unwrap().unwrap().episode.steps.len(),
        3
    );
}

#[test]
fn pretty_printed_document_is_read_once_complete_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("request.json");
    let document = serde_json::to_string_pretty(
        &serde_json::from_str::<Value>(&otlp_line(vec![
            span(TRACE_A, "00000000000000a1", Some("00000000000000a0"), "llm"),
            span(TRACE_A, "00000000000000a0", None, "root"),
        ]))
        .unwrap(),
    )
    .unwrap();
    let (head, tail) = document.split_at(document.len() / 2);
    fs::write(&file, head).unwrap();
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let waiting = import(&mut store, &[&file], &small_batches());
    assert_eq!((waiting.episodes_new, waiting.rejects_total()), (0, 0));

    append(&file, tail);
    let complete = import(&mut store, &[&file], &small_batches());
    assert_eq!((complete.episodes_new, complete.rejects_total()), (1, 0));
    let unchanged = import(&mut store, &[&file], &small_batches());
    assert_eq!((unchanged.bytes, unchanged.spans_duplicate), (0, 0));
}

#[test]
fn document_that_never_completes_is_rejected_after_the_quiet_period() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("request.json");
    fs::write(&file, "{\n  \"resourceSpans\": [\n").unwrap();
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let first = import(&mut store, &[&file], &small_batches());
    assert_eq!(first.rejects_total(), 0);
    let flushed = import(
        &mut store,
        &[&file],
        &IngestOptions {
            finalize: true,
            ..small_batches()
        },
    );
    assert_eq!(
        flushed.rejects,
        BTreeMap::from([(Reason::IncompleteDocument, 1)])
    );
    let again = import(
        &mut store,
        &[&file],
        &IngestOptions {
            finalize: true,
            ..small_batches()
        },
    );
    assert_eq!(again.rejects_total(), 0);
}

#[test]
fn broken_first_line_does_not_turn_json_lines_into_a_document() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.jsonl");
    fs::write(&file, format!("{{\"steps\": [\n{}", lines_of(ids(0..3)))).unwrap();
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let report = import(&mut store, &[&file], &small_batches());
    assert_eq!(report.episodes_new, 3);
    assert_eq!(report.rejects, BTreeMap::from([(Reason::InvalidJson, 1)]));
    assert_eq!(report.first_rejects[0].line, 1);
}

// --- Edges found by testing from outside (issue 11) --------------------------

#[test]
fn byte_order_mark_at_the_start_of_a_file_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.jsonl");
    fs::write(&file, format!("\u{feff}{}", lines_of(ids(0..3)))).unwrap();
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let report = import(&mut store, &[&file], &small_batches());
    assert_eq!(
        report.rejects,
        BTreeMap::new(),
        "{:?}",
        report.first_rejects
    );
    assert_eq!(trace_ids(&store), ids(0..3));
}

#[test]
fn pretty_printed_document_with_a_byte_order_mark_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    let request = serde_json::from_str::<Value>(&otlp_line(vec![span(
        TRACE_A,
        "00000000000000a1",
        None,
        "root",
    )]))
    .unwrap();
    let pretty = serde_json::to_string_pretty(&request).unwrap();
    fs::write(&file, format!("\u{feff}{pretty}\n")).unwrap();
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let report = import(&mut store, &[&file], &small_batches());
    assert_eq!(
        report.rejects,
        BTreeMap::new(),
        "{:?}",
        report.first_rejects
    );
    assert_eq!(report.episodes_new, 1);
}

#[test]
fn parse_and_import_agree_on_a_file_whose_first_line_is_a_broken_object() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.jsonl");
    fs::write(&file, format!("{{\"steps\": [\n{}", lines_of(ids(0..3)))).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_whetstone"))
        .args(["traces", "parse"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("agent.jsonl:1: invalid_json"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn dangling_symlinks_loops_and_fifos_in_a_folder_are_reported_once_each() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces");
    fs::create_dir(&traces).unwrap();
    fs::write(traces.join("good.jsonl"), lines_of(ids(0..2))).unwrap();
    symlink(traces.join("gone.jsonl"), traces.join("dangling.jsonl")).unwrap();
    symlink(traces.join("loop-b.jsonl"), traces.join("loop-a.jsonl")).unwrap();
    symlink(traces.join("loop-a.jsonl"), traces.join("loop-b.jsonl")).unwrap();
    symlink(dir.path(), traces.join("up")).unwrap();
    let fifo = traces.join("pipe.jsonl");
    let fifo_c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o644) }, 0);

    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let report = import(&mut store, &[&traces], &small_batches());
    assert_eq!(report.episodes_new, 2);
    assert!(report.file_errors.is_empty(), "{:?}", report.file_errors);
    let skipped: BTreeMap<String, String> = report
        .skipped
        .iter()
        .map(|s| {
            (
                s.path.file_name().unwrap().to_string_lossy().into_owned(),
                s.error.clone(),
            )
        })
        .collect();
    assert_eq!(
        skipped.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "dangling.jsonl",
            "loop-a.jsonl",
            "loop-b.jsonl",
            "pipe.jsonl",
            "up"
        ]
    );
    assert!(
        skipped["dangling.jsonl"].contains("broken symlink"),
        "{skipped:?}"
    );
    assert!(skipped["pipe.jsonl"].contains("FIFO"), "{skipped:?}");
    assert!(skipped["up"].contains("not followed"), "{skipped:?}");

    // The CLI names each one on its own line.
    let output = whetstone(&dir.path().join("cli-data"))
        .args(["traces", "import"])
        .arg(&traces)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.matches("skipped ").count(), 5, "{stdout}");
}

#[test]
fn unterminated_over_long_last_line_is_reported_once_the_file_is_settled() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.jsonl");
    let tail = format!("{{\"steps\": \"{}", "a".repeat(5000));
    fs::write(&file, lines_of(ids(0..2)) + &tail).unwrap();
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    let growing = IngestOptions {
        max_line_bytes: 1024,
        quiet_period_secs: 3600,
        ..IngestOptions::default()
    };
    // Still being written: nothing to report yet.
    let report = import(&mut store, &[&file], &growing);
    assert_eq!((report.episodes_new, report.rejects_total()), (2, 0));
    // Settled (here: a finalizing pass): reported with its line, once.
    let settled = IngestOptions {
        finalize: true,
        ..growing
    };
    let report = import(&mut store, &[&file], &settled);
    assert_eq!(report.rejects, BTreeMap::from([(Reason::LineTooLong, 1)]));
    assert_eq!(report.first_rejects[0].line, 3);
    assert!(
        report.first_rejects[0].detail.contains("without newline"),
        "{}",
        report.first_rejects[0]
    );
    let again = import(&mut store, &[&file], &settled);
    assert_eq!(again.rejects_total(), 0);
    // The line still ends later, and what follows it is read.
    append(&file, &format!("\"}}\n{}", lines_of(ids(2..3))));
    let report = import(&mut store, &[&file], &settled);
    assert_eq!(report.episodes_new, 1);
}

#[test]
fn rotated_file_keeps_its_unread_tail_and_is_not_read_twice() {
    // Issue 11: lines appended between the last pass and a logrotate-style
    // rename used to be lost.
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces");
    fs::create_dir(&traces).unwrap();
    let live = traces.join("agent.jsonl");
    append(&live, &lines_of(ids(0..3)));
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    assert_eq!(
        import(&mut store, &[&traces], &small_batches()).episodes_new,
        3
    );

    append(&live, &lines_of(ids(3..5)));
    fs::rename(&live, traces.join("agent.jsonl.1")).unwrap();
    append(&live, &lines_of(ids(5..7)));
    let report = import(&mut store, &[&traces], &small_batches());
    assert_eq!(
        (
            report.episodes_new,
            report.episodes_duplicate,
            report.files_reread
        ),
        (4, 0, 0)
    );

    // Rotated again, and the oldest moved under another name.
    fs::rename(traces.join("agent.jsonl.1"), traces.join("agent.jsonl.2")).unwrap();
    append(&live, &lines_of(ids(7..8)));
    fs::rename(&live, traces.join("agent.jsonl.1")).unwrap();
    fs::rename(
        traces.join("agent.jsonl.2"),
        traces.join("archive-old.jsonl"),
    )
    .unwrap();
    let report = import(&mut store, &[&traces], &small_batches());
    assert_eq!((report.episodes_new, report.episodes_duplicate), (1, 0));
    assert_eq!(trace_ids(&store), ids(0..8));
}

#[test]
fn unknown_whetstone_attributes_are_counted_and_step_rewards_shown_by_name() {
    // Issue 9: `whetstone.step.reward` (for `whetstone.reward.<name>`) used
    // to vanish without a word.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("otel.jsonl");
    let with = |mut span: Value, key: &str, value: f64| {
        span["attributes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": key, "value": {"doubleValue": value}}));
        span
    };
    let tool = with(
        span(
            TRACE_A,
            "00000000000000a2",
            Some("00000000000000a1"),
            "tool",
        ),
        "whetstone.reward.cost",
        -0.05,
    );
    let misspelled = with(
        span(
            TRACE_A,
            "00000000000000a3",
            Some("00000000000000a1"),
            "tool",
        ),
        "whetstone.step.reward",
        1.0,
    );
    let root = span(TRACE_A, "00000000000000a1", None, "root");
    append(&file, &otlp_line(vec![tool, misspelled, root]));
    let mut store = Store::open(&dir.path().join("data")).unwrap();
    import(&mut store, &[&file], &small_batches());
    import(&mut store, &[&file], &small_batches()); // read again: counted once
    let stats = store.stats().unwrap();
    assert_eq!(
        stats.unknown_attributes.len(),
        1,
        "{:?}",
        stats.unknown_attributes
    );
    let unknown = &stats.unknown_attributes[0];
    assert_eq!(
        (unknown.name.as_str(), unknown.places),
        ("whetstone.step.reward", 1)
    );
    assert!(unknown.example.ends_with("otel.jsonl:1"), "{unknown:?}");
    assert_eq!(stats.step_rewards.len(), 1);
    assert_eq!(
        (
            stats.step_rewards[0].name.as_str(),
            stats.step_rewards[0].mean
        ),
        ("cost", -0.05)
    );

    let output = whetstone(&dir.path().join("data"))
        .args(["traces", "stats"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("warning: unknown attribute `whetstone.step.reward`"),
        "{stdout}"
    );
    assert!(stdout.contains("step rewards"), "{stdout}");
}

// --- The binary --------------------------------------------------------------

/// The binary, configured to keep its store in `data_dir`.
fn whetstone(data_dir: &Path) -> Command {
    let config = data_dir.with_extension("toml");
    let data_dir = serde_json::to_string(&data_dir.to_str().unwrap()).unwrap();
    fs::write(&config, format!("data_dir = {data_dir}\n")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_whetstone"));
    command.arg("--config").arg(config);
    command
}

#[test]
fn cli_import_prints_a_summary_and_stats_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces");
    fs::create_dir_all(&traces).unwrap();
    fs::write(traces.join("a.jsonl"), lines_of(ids(0..3)) + "not json\n").unwrap();
    let data = dir.path().join("data");

    let out = whetstone(&data)
        .args(["traces", "import"])
        .arg(&traces)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("imported 3 new episodes"), "{stdout}");
    assert!(stdout.contains("rejected 1: invalid_json 1"), "{stdout}");
    assert!(stdout.contains("a.jsonl:4: invalid_json"), "{stdout}");

    let out = whetstone(&data)
        .args(["traces", "stats", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["episodes"], 3);
    assert_eq!(stats["episodes_by_format"]["whetstone_jsonl"], 3);
    assert_eq!(stats["episodes_by_prompt"][0]["name"], "Controller");
    assert_eq!(stats["tools"][0]["name"], "search");
    assert_eq!(stats["tools"][0]["calls"], 3);
    assert_eq!(stats["rewards"][0]["mean"], 1.0);
    assert_eq!(stats["rejects_by_reason"]["invalid_json"], 1);
    assert_eq!(stats["first_rejects"][0]["line"], 4);

    let out = whetstone(&data).args(["traces", "stats"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("episodes: 3"), "{text}");
    assert!(text.contains("a.jsonl:4: invalid_json"), "{text}");

    let out = whetstone(&data)
        .args(["traces", "import"])
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("could not be read"), "{stderr}");
}

/// A tiny deterministic generator, so a failing run can be replayed from
/// the seed it prints.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

#[test]
fn kill_9_at_random_moments_neither_loses_nor_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let traces = dir.path().join("traces");
    fs::create_dir_all(&traces).unwrap();
    // 50k distinct JSONL episodes over 5 files; 1k of them repeated in a
    // sixth file, and a garbage line every 5k lines. Plus 1k OTLP traces (read first), each
    // a line of child spans then a line with the root span.
    const N: u32 = 50_000;
    const N_OTLP: u32 = 1_000;
    let mut otlp = String::new();
    for i in 0..N_OTLP {
        let trace = format!("{:032x}", 0xabc0_0000_u64 + u64::from(i));
        let root = format!("{:016x}", 1 + 4 * u64::from(i));
        let llm = format!("{:016x}", 2 + 4 * u64::from(i));
        let tool = format!("{:016x}", 3 + 4 * u64::from(i));
        otlp += &otlp_line(vec![
            span(&trace, &llm, Some(&root), "llm"),
            span(&trace, &tool, Some(&root), "tool"),
        ]);
        otlp += &otlp_line(vec![span(&trace, &root, None, "root")]);
    }
    fs::write(traces.join("otel.jsonl"), otlp).unwrap();
    let mut n_garbage = 0;
    for file_idx in 0..5u32 {
        let mut text = String::new();
        for i in file_idx * 10_000..(file_idx + 1) * 10_000 {
            text += &episode_line(&format!("ep-{i:06}"));
            text.push('\n');
            if i % 5_000 == 0 {
                text += &format!("garbage line {i}\n");
                n_garbage += 1;
            }
        }
        fs::write(traces.join(format!("part-{file_idx}.jsonl")), text).unwrap();
    }
    fs::write(traces.join("repeats.jsonl"), lines_of(ids(20_000..21_000))).unwrap();
    let data = dir.path().join("data");

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill -9 test seed: {seed}");
    let mut rng = Lcg(seed);
    let import = |data: &Path| {
        let mut command = whetstone(data);
        command
            .args(["traces", "import", "--batch-lines", "50"])
            .arg(&traces)
            .stdout(std::process::Stdio::null());
        command
    };
    let mut n_killed = 0;
    let mut counts = Vec::new();
    for _ in 0..8 {
        let mut child = import(&data).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(100 + rng.next(1400)));
        // `Child::kill` sends SIGKILL on Unix.
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            n_killed += 1;
        }
        child.wait().unwrap();
        counts.push(Store::open(&data).unwrap().episode_count().unwrap());
    }
    eprintln!("episodes after each killed run: {counts:?}");
    let out = import(&data).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        n_killed > 0,
        "no import was killed mid-way; counts after each run: {counts:?}"
    );
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");

    let store = Store::open(&data).unwrap();
    let ids = trace_ids(&store);
    assert_eq!(
        ids.len(),
        (N + N_OTLP) as usize,
        "counts after each killed run: {counts:?}"
    );
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "duplicated trace ids");
    let stats = store.stats().unwrap();
    assert_eq!(
        stats.rejects_by_reason,
        vec![("invalid_json".to_string(), n_garbage)],
        "each garbage line rejected exactly once, no span reported late"
    );
    assert_eq!((stats.pending_spans, stats.pending_traces), (0, 0));
    let otlp_episodes = stats
        .episodes_by_format
        .iter()
        .find(|(format, _)| format == "otlp_json")
        .map(|(_, n)| *n);
    assert_eq!(otlp_episodes, Some(u64::from(N_OTLP)));
}

#[test]
fn real_fixtures_import_once_even_when_two_files_hold_the_same_run() {
    // `otlp_openllmetry_protojson.json` (one pretty-printed document) holds
    // the same spans as `otlp_openllmetry_spec.jsonl`: its 4 traces are known.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/traces");
    let files: Vec<PathBuf> = [
        "otlp_openllmetry_protojson.json",
        "agentlightning_spans.jsonl",
        "otlp_genai_current.jsonl",
        "otlp_openinference.jsonl",
        "otlp_openllmetry_latest_spec.jsonl",
        "otlp_openllmetry_spec.jsonl",
    ]
    .iter()
    .map(|name| fixtures.join(name))
    .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let report = import(&mut store, &paths, &IngestOptions::default());
    assert_eq!(report.file_errors, vec![]);
    assert_eq!(report.rejects_total(), 0, "{:?}", report.first_rejects);
    assert_eq!((report.episodes_new, report.pending_spans), (20, 0));
    assert_eq!(report.spans_duplicate, 17);

    let stats = store.stats().unwrap();
    assert_eq!(
        stats.episodes_by_format,
        vec![
            ("agent_lightning".to_string(), 4),
            ("otlp_json".to_string(), 12),
            ("otlp_proto_json".to_string(), 4),
        ]
    );
    let again = import(&mut store, &paths, &IngestOptions::default());
    assert_eq!(
        (again.bytes, again.episodes_new, again.rejects_total()),
        (0, 0, 0)
    );
}

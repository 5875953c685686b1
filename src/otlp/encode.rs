//! A received export request as spool lines: OTLP/JSON in the spec's
//! encoding (hex ids, int64 as strings), the form the OpenTelemetry
//! Collector's file exporter writes and `trace::parse_line` reads.
//!
//! The request is cut into lines of at most [`LINE_TARGET_BYTES`] (each
//! repeating its resource and scope), so a large request never becomes a
//! line over `traces.max_line_bytes`; a trace split across lines (or
//! requests) is put back together by ingestion, as for a file. A span whose
//! ids are malformed goes on a line of its own: ingestion rejects that line
//! with the reason a file would get, and the spans beside it are kept. The
//! client learns of it at once, in the response's `partial_success`.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;

/// Lines are closed once they hold this many bytes.
const LINE_TARGET_BYTES: usize = 1024 * 1024;

/// How many rejected spans the response's `error_message` names.
const MESSAGE_FIRST_REJECTS: usize = 3;

/// A request as the spool keeps it.
#[derive(Debug, Default)]
pub struct Encoded {
    /// Newline-terminated OTLP/JSON lines, ready to append.
    pub lines: Vec<u8>,
    /// Spans accepted.
    pub spans: u64,
    /// Spans the client is told were rejected, and why.
    pub rejected_spans: u64,
    pub error_message: String,
}

/// Encodes `request` into spool lines.
pub fn encode(request: &ExportTraceServiceRequest) -> Result<Encoded, serde_json::Error> {
    let mut encoded = Encoded::default();
    // Lines of one span each, for the spans with bad ids, written last.
    let mut alone: Vec<u8> = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = serde_json::to_string(&resource_spans.resource)?;
        for scope_spans in &resource_spans.scope_spans {
            let scope = serde_json::to_string(&scope_spans.scope)?;
            let open = |lines: &mut Vec<u8>| {
                lines.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":");
                lines.extend_from_slice(resource.as_bytes());
                lines.extend_from_slice(b",\"scopeSpans\":[{\"scope\":");
                lines.extend_from_slice(scope.as_bytes());
                lines.extend_from_slice(b",\"spans\":[");
            };
            let close = |lines: &mut Vec<u8>| lines.extend_from_slice(b"]}]}]}\n");
            // Where the open line started, when one is open.
            let mut line_start: Option<usize> = None;
            for span in &scope_spans.spans {
                if let Some(why) = invalid_ids(span) {
                    encoded.rejected_spans += 1;
                    if reasons.len() < MESSAGE_FIRST_REJECTS {
                        reasons.push(format!("span {:?}: {why}", span.name));
                    }
                    open(&mut alone);
                    serde_json::to_writer(&mut alone, span)?;
                    close(&mut alone);
                    continue;
                }
                encoded.spans += 1;
                match line_start {
                    Some(start) if encoded.lines.len() - start < LINE_TARGET_BYTES => {
                        encoded.lines.push(b',');
                    }
                    Some(_) => {
                        close(&mut encoded.lines);
                        line_start = Some(encoded.lines.len());
                        open(&mut encoded.lines);
                    }
                    None => {
                        line_start = Some(encoded.lines.len());
                        open(&mut encoded.lines);
                    }
                }
                serde_json::to_writer(&mut encoded.lines, span)?;
            }
            if line_start.is_some() {
                close(&mut encoded.lines);
            }
        }
    }
    encoded.lines.extend_from_slice(&alone);
    if encoded.rejected_spans > 0 {
        encoded.error_message = format!(
            "{} span(s) rejected: {}{}",
            encoded.rejected_spans,
            reasons.join("; "),
            if encoded.rejected_spans as usize > reasons.len() {
                "; ..."
            } else {
                ""
            }
        );
    }
    Ok(encoded)
}

/// Why a span's ids make it unusable, as the trace readers would say.
fn invalid_ids(span: &Span) -> Option<String> {
    let check = |field: &str, id: &[u8], n_bytes: usize| {
        (id.len() != n_bytes).then(|| format!("{field} is {} bytes, expected {n_bytes}", id.len()))
    };
    check("traceId", &span.trace_id, 16)
        .or_else(|| check("spanId", &span.span_id, 8))
        .or_else(|| {
            if span.parent_span_id.is_empty() {
                None
            } else {
                check("parentSpanId", &span.parent_span_id, 8)
            }
        })
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};
    use serde_json::Value;

    use super::*;
    use crate::trace::{Reason, Record, Source, parse_line};

    fn attribute(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    fn span(trace: u8, span: u8, parent: Option<u8>) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![span; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: format!("s{span}"),
            kind: 3,
            start_time_unix_nano: 1_700_000_000_123_456_789,
            end_time_unix_nano: 1_700_000_001_000_000_000,
            attributes: vec![
                attribute(
                    "gen_ai.operation.name",
                    any_value::Value::StringValue("chat".into()),
                ),
                attribute("n", any_value::Value::IntValue(-9_007_199_254_740_993)),
                attribute("x", any_value::Value::DoubleValue(0.25)),
                attribute("nan", any_value::Value::DoubleValue(f64::NAN)),
                attribute("ok", any_value::Value::BoolValue(true)),
            ],
            status: Some(Status {
                code: 2,
                message: "boom".into(),
            }),
            ..Span::default()
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    fn read(lines: &[u8]) -> Vec<Result<Record, crate::trace::Diagnostic>> {
        lines
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .enumerate()
            .map(|(i, line)| {
                let source = Source {
                    file: "spool.jsonl".into(),
                    line: i as u64 + 1,
                };
                parse_line(line, &source)
            })
            .collect()
    }

    #[test]
    fn spans_read_back_as_the_trace_readers_see_them() {
        let encoded = encode(&request(vec![span(1, 2, None), span(1, 3, Some(2))])).unwrap();
        assert_eq!((encoded.spans, encoded.rejected_spans), (2, 0));
        let records = read(&encoded.lines);
        assert_eq!(records.len(), 1);
        let Ok(Record::Spans(spans)) = &records[0] else {
            panic!("{records:?}")
        };
        assert_eq!(spans[0].trace_id, "01".repeat(16));
        assert_eq!(spans[0].parent_span_id, None);
        assert_eq!(
            spans[1].parent_span_id.as_deref(),
            Some("02".repeat(8).as_str())
        );
        assert_eq!(spans[1].start_time_unix_nano, 1_700_000_000_123_456_789);
        assert!(spans[1].error);
        assert_eq!(spans[1].status_message.as_deref(), Some("boom"));
        let attributes = &spans[0].attributes;
        assert_eq!(attributes["gen_ai.operation.name"], Value::from("chat"));
        assert_eq!(attributes["n"], Value::from(-9_007_199_254_740_993_i64));
        assert_eq!(attributes["x"], Value::from(0.25));
        assert_eq!(attributes["nan"], Value::Null);
        assert_eq!(attributes["ok"], Value::from(true));
    }

    #[test]
    fn a_span_with_bad_ids_is_rejected_alone() {
        let mut bad = span(1, 4, Some(2));
        bad.trace_id.truncate(15);
        let encoded = encode(&request(vec![span(1, 2, None), bad, span(1, 3, Some(2))])).unwrap();
        assert_eq!((encoded.spans, encoded.rejected_spans), (2, 1));
        assert!(
            encoded.error_message.contains("traceId is 15 bytes"),
            "{}",
            encoded.error_message
        );
        let records = read(&encoded.lines);
        assert_eq!(
            records.len(),
            2,
            "good spans on one line, the bad one alone"
        );
        let rejected: Vec<_> = records.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].reason, Reason::InvalidField);
        assert!(rejected[0].detail.contains("traceId"), "{}", rejected[0]);
    }

    #[test]
    fn large_requests_are_cut_into_bounded_lines() {
        let spans: Vec<Span> = (0..4000)
            .map(|i| {
                let mut s = span((i % 200) as u8 + 1, 2, None);
                s.span_id = (i as u64 + 1).to_be_bytes().to_vec();
                s.attributes.push(attribute(
                    "big",
                    any_value::Value::StringValue("x".repeat(1000)),
                ));
                s
            })
            .collect();
        let encoded = encode(&request(spans)).unwrap();
        let lines: Vec<&[u8]> = encoded.lines.split(|&b| b == b'\n').collect();
        assert!(lines.len() > 3, "{} lines", lines.len());
        assert!(lines.iter().all(|l| l.len() < LINE_TARGET_BYTES + 4096));
        let n_spans: usize = read(&encoded.lines)
            .into_iter()
            .map(|r| match r {
                Ok(Record::Spans(spans)) => spans.len(),
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(n_spans, 4000);
    }
}

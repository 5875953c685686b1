//! OTLP/JSON reader: one `ExportTraceServiceRequest` per line or per file.
//!
//! Two encodings exist in the wild and both are accepted, per request:
//! the OTLP/JSON spec form that the OpenTelemetry Collector's file exporter
//! writes (hex ids, integer enums, int64 as strings or numbers, lowerCamelCase
//! keys) and the protobuf `MessageToJson` form (base64 ids, enum names, and
//! with `preserving_proto_field_name` snake_case keys). Ids come out as
//! lowercase hex either way.

use base64::Engine;
use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::{Map, Value};

use super::diagnostic::{Diagnostic, Reason, decode_json};
use super::episode::{Source, TraceFormat};
use super::span::{Span, SpanEvent};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExportRequest {
    #[serde(alias = "resource_spans")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans {
    #[serde(
        default,
        alias = "scope_spans",
        alias = "instrumentationLibrarySpans",
        alias = "instrumentation_library_spans"
    )]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Deserialize)]
struct ScopeSpans {
    #[serde(default)]
    spans: Vec<RawSpan>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpan {
    #[serde(alias = "trace_id")]
    trace_id: String,
    #[serde(alias = "span_id")]
    span_id: String,
    #[serde(default, alias = "parent_span_id")]
    parent_span_id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: Option<EnumValue>,
    #[serde(
        default,
        alias = "start_time_unix_nano",
        deserialize_with = "de_opt_u64"
    )]
    start_time_unix_nano: Option<u64>,
    #[serde(default, alias = "end_time_unix_nano", deserialize_with = "de_opt_u64")]
    end_time_unix_nano: Option<u64>,
    #[serde(default)]
    attributes: Attributes,
    #[serde(default)]
    events: Vec<RawEvent>,
    #[serde(default)]
    status: Option<RawStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEvent {
    #[serde(default, alias = "time_unix_nano", deserialize_with = "de_opt_u64")]
    time_unix_nano: Option<u64>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    attributes: Attributes,
}

#[derive(Deserialize)]
struct RawStatus {
    #[serde(default)]
    code: Option<EnumValue>,
    #[serde(default)]
    message: Option<String>,
}

/// An enum as the spec writes it (integer) or as `MessageToJson` does (name).
enum EnumValue {
    Int(i64),
    Name(String),
}

impl<'de> Deserialize<'de> for EnumValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match NumOrString::deserialize(d)? {
            NumOrString::U(v) => EnumValue::Int(i64::try_from(v).unwrap_or(i64::MAX)),
            NumOrString::I(v) => EnumValue::Int(v),
            NumOrString::F(v) => EnumValue::Int(v as i64),
            NumOrString::S(s) => EnumValue::Name(s),
        })
    }
}

/// A list of `KeyValue`s read straight into a map, without the list.
#[derive(Default)]
struct Attributes(Map<String, Value>);

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Attributes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of attributes")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Attributes, A::Error> {
                let mut map = Map::new();
                // As in a map built from the list, a repeated key keeps its
                // last value.
                while let Some(kv) = seq.next_element::<KeyValue>()? {
                    map.insert(kv.key, kv.value.map_or(Value::Null, any_to_json));
                }
                Ok(Attributes(map))
            }
        }
        d.deserialize_seq(Visitor)
    }
}

#[derive(Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: Option<AnyValue>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AnyValue {
    #[serde(default, alias = "string_value")]
    string_value: Option<String>,
    #[serde(default, alias = "int_value", deserialize_with = "de_opt_i64")]
    int_value: Option<i64>,
    #[serde(default, alias = "double_value", deserialize_with = "de_opt_f64")]
    double_value: Option<f64>,
    #[serde(default, alias = "bool_value")]
    bool_value: Option<bool>,
    #[serde(default, alias = "array_value")]
    array_value: Option<ValueList>,
    #[serde(default, alias = "kvlist_value")]
    kvlist_value: Option<KeyValueList>,
    #[serde(default, alias = "bytes_value")]
    bytes_value: Option<String>,
}

#[derive(Deserialize, Default)]
struct ValueList {
    #[serde(default)]
    values: Vec<AnyValue>,
}

#[derive(Deserialize, Default)]
struct KeyValueList {
    #[serde(default)]
    values: Vec<KeyValue>,
}

/// A JSON number or a string (int64 fields are strings in OTLP/JSON, enums
/// names in `MessageToJson`); a string holding a number is that number.
///
/// Deserialized by a visitor rather than `#[serde(untagged)]`, which buffers
/// the value and builds an error per variant tried: this is on the hot path.
enum NumOrString {
    U(u64),
    I(i64),
    F(f64),
    S(String),
}

impl<'de> Deserialize<'de> for NumOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = NumOrString;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumOrString, E> {
                Ok(NumOrString::U(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumOrString, E> {
                Ok(NumOrString::I(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumOrString, E> {
                Ok(NumOrString::F(v))
            }
            /// A numeric string is parsed here, sparing a `String`:
            /// timestamps and int64 values are strings in OTLP/JSON.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NumOrString, E> {
                Ok(if let Ok(u) = v.parse() {
                    NumOrString::U(u)
                } else if let Ok(i) = v.parse() {
                    NumOrString::I(i)
                } else if let Ok(f) = v.parse() {
                    NumOrString::F(f)
                } else {
                    NumOrString::S(v.to_string())
                })
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<NumOrString, E> {
                Ok(NumOrString::S(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn de_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<NumOrString>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrString::U(v)) => Ok(Some(v)),
        Some(NumOrString::I(v)) => u64::try_from(v)
            .map(Some)
            .map_err(|_| de::Error::custom(format!("negative timestamp {v}"))),
        Some(NumOrString::F(v)) if v >= 0.0 => Ok(Some(v as u64)),
        Some(NumOrString::F(v)) => Err(de::Error::custom(format!("negative timestamp {v}"))),
        Some(NumOrString::S(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| de::Error::custom(format!("expected an unsigned integer, got {s:?}"))),
    }
}

fn de_opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<NumOrString>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrString::U(v)) => i64::try_from(v)
            .map(Some)
            .map_err(|_| de::Error::custom(format!("intValue {v} out of range"))),
        Some(NumOrString::I(v)) => Ok(Some(v)),
        Some(NumOrString::F(v)) => Ok(Some(v as i64)),
        Some(NumOrString::S(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| de::Error::custom(format!("expected an integer, got {s:?}"))),
    }
}

/// Doubles may be strings too: "NaN", "Infinity", "-Infinity" in proto JSON.
fn de_opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<NumOrString>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrString::U(v)) => Ok(Some(v as f64)),
        Some(NumOrString::I(v)) => Ok(Some(v as f64)),
        Some(NumOrString::F(v)) => Ok(Some(v)),
        Some(NumOrString::S(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| de::Error::custom(format!("expected a number, got {s:?}"))),
    }
}

/// Converts an OTLP `AnyValue` into plain JSON. Non-finite doubles become
/// `null` because JSON cannot hold them.
fn any_to_json(value: AnyValue) -> Value {
    if let Some(s) = value.string_value {
        return Value::String(s);
    }
    if let Some(i) = value.int_value {
        return Value::from(i);
    }
    if let Some(f) = value.double_value {
        return serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number);
    }
    if let Some(b) = value.bool_value {
        return Value::Bool(b);
    }
    if let Some(list) = value.array_value {
        return Value::Array(list.values.into_iter().map(any_to_json).collect());
    }
    if let Some(kv) = value.kvlist_value {
        return Value::Object(attributes_to_map(kv.values));
    }
    if let Some(bytes) = value.bytes_value {
        return Value::String(bytes);
    }
    Value::Null
}

fn attributes_to_map(attributes: Vec<KeyValue>) -> Map<String, Value> {
    attributes
        .into_iter()
        .map(|kv| (kv.key, kv.value.map_or(Value::Null, any_to_json)))
        .collect()
}

/// Decodes one export request into spans. `source` is the line (or the first
/// line of the document) the request came from.
pub(super) fn parse_request(text: &str, source: &Source) -> Result<Vec<Span>, Diagnostic> {
    let request: ExportRequest = decode_json(text, source, "OTLP request")?;
    let mut spans = Vec::new();
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for raw in scope.spans {
                spans.push(convert_span(raw, source)?);
            }
        }
    }
    Ok(spans)
}

fn convert_span(raw: RawSpan, source: &Source) -> Result<Span, Diagnostic> {
    let invalid = |field: &str, detail: String| {
        Diagnostic::new(
            &source.file,
            source.line,
            Reason::InvalidField,
            format!("span {:?}: {field}: {detail}", raw.name),
        )
    };
    let (trace_id, trace_b64) = decode_id(&raw.trace_id, 16).map_err(|e| invalid("traceId", e))?;
    let (span_id, span_b64) = decode_id(&raw.span_id, 8).map_err(|e| invalid("spanId", e))?;
    let parent_span_id = match raw.parent_span_id.as_deref() {
        None | Some("") => None,
        Some(parent) => Some(
            decode_id(parent, 8)
                .map_err(|e| invalid("parentSpanId", e))?
                .0,
        ),
    };
    let named_enums = matches!(raw.kind, Some(EnumValue::Name(_)))
        || matches!(
            raw.status.as_ref().and_then(|s| s.code.as_ref()),
            Some(EnumValue::Name(_))
        );
    let format = if trace_b64 || span_b64 || named_enums {
        TraceFormat::OtlpProtoJson
    } else {
        TraceFormat::OtlpJson
    };
    let (error, status_message) = match raw.status {
        None => (false, None),
        Some(status) => {
            let error = match status.code {
                Some(EnumValue::Int(code)) => code == 2,
                Some(EnumValue::Name(name)) => name == "STATUS_CODE_ERROR" || name == "ERROR",
                None => false,
            };
            (error, status.message.filter(|m| !m.is_empty()))
        }
    };
    let start = raw.start_time_unix_nano.unwrap_or(0);
    Ok(Span {
        trace_id,
        span_id,
        format,
        parent_span_id,
        name: raw.name,
        start_time_unix_nano: start,
        end_time_unix_nano: raw.end_time_unix_nano.unwrap_or(start),
        error,
        status_message,
        attributes: raw.attributes.0,
        events: raw
            .events
            .into_iter()
            .map(|event| SpanEvent {
                name: event.name,
                time_unix_nano: event.time_unix_nano.unwrap_or(0),
                attributes: event.attributes.0,
            })
            .collect(),
        source: source.clone(),
    })
}

/// Decodes a trace or span id of `n_bytes` bytes written as hex (spec) or
/// base64 (`MessageToJson`); returns lowercase hex and whether it was base64.
fn decode_id(id: &str, n_bytes: usize) -> Result<(String, bool), String> {
    if id.len() == n_bytes * 2 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok((id.to_ascii_lowercase(), false));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(id)
        .map_err(|_| format!("{id:?} is neither {n_bytes}-byte hex nor base64"))?;
    if bytes.len() != n_bytes {
        return Err(format!(
            "{id:?} decodes to {} bytes, expected {n_bytes}",
            bytes.len()
        ));
    }
    if bytes.iter().all(|&b| b == 0) {
        return Err("all-zero id is invalid".to_string());
    }
    Ok((hex::encode(bytes), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        Source {
            file: "t.jsonl".into(),
            line: 7,
        }
    }

    #[test]
    fn spec_and_proto_encodings_give_the_same_ids() {
        let spec = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"eee19b7ec3c1b174","parentSpanId":"","name":"chat","kind":3,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,"attributes":[{"key":"n","value":{"intValue":"42"}},{"key":"l","value":{"arrayValue":{"values":[{"stringValue":"a"}]}}}],"status":{"code":2,"message":"boom"}}]}]}]}"#;
        let proto = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"W47/95gDgQPSabYzgT/GDA==","spanId":"7uGbfsPBsXQ=","name":"chat","kind":"SPAN_KIND_CLIENT","startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000","attributes":[{"key":"n","value":{"intValue":"42"}},{"key":"l","value":{"arrayValue":{"values":[{"stringValue":"a"}]}}}],"status":{"code":"STATUS_CODE_ERROR","message":"boom"}}]}]}]}"#;
        let a = parse_request(spec, &source()).unwrap().remove(0);
        let b = parse_request(proto, &source()).unwrap().remove(0);
        assert_eq!(a.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(a.trace_id, b.trace_id);
        assert_eq!(a.span_id, b.span_id);
        assert_eq!(a.format, TraceFormat::OtlpJson);
        assert_eq!(b.format, TraceFormat::OtlpProtoJson);
        assert!(a.error && b.error);
        assert_eq!(a.attributes, b.attributes);
        assert_eq!(a.attributes["n"], Value::from(42));
        assert_eq!(a.end_time_unix_nano, 1544712661000000000);
    }

    #[test]
    fn numbers_written_as_strings_and_repeated_keys() {
        let line = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"s","startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000","attributes":[{"key":"neg","value":{"intValue":"-7"}},{"key":"nan","value":{"doubleValue":"NaN"}},{"key":"half","value":{"doubleValue":"0.5"}},{"key":"k","value":{"stringValue":"first"}},{"key":"k","value":{"stringValue":"last"}},{"key":"digits","value":{"stringValue":"42"}}]}]}]}]}"#;
        let span = parse_request(line, &source()).unwrap().remove(0);
        assert_eq!(span.start_time_unix_nano, 1544712660000000000);
        assert_eq!(span.attributes["neg"], Value::from(-7));
        assert_eq!(span.attributes["nan"], Value::Null);
        assert_eq!(span.attributes["half"], Value::from(0.5));
        assert_eq!(span.attributes["k"], Value::from("last"));
        assert_eq!(span.attributes["digits"], Value::from("42"));
    }

    #[test]
    fn bad_ids_and_types_name_the_field() {
        let bad_id = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"xyz","spanId":"eee19b7ec3c1b174","name":"s"}]}]}]}"#;
        let err = parse_request(bad_id, &source()).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidField);
        assert!(err.detail.contains("traceId"), "{err}");
        assert_eq!(err.line, 7);

        let bad_type = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","startTimeUnixNano":"soon"}]}]}]}"#;
        let err = parse_request(bad_type, &source()).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidField);

        let truncated = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8e"#;
        assert_eq!(
            parse_request(truncated, &source()).unwrap_err().reason,
            Reason::InvalidJson
        );
    }
}

//! A fast path for the current GenAI message attributes
//! (`gen_ai.system_instructions`, `gen_ai.input.messages`,
//! `gen_ai.output.messages`), which hold JSON inside a JSON string.
//!
//! Parsing that inner JSON into `serde_json::Value` trees dominated ingestion
//! time; here it is deserialized into typed structs that borrow the text.
//! The typed form only accepts the well-formed shape (every field of the type
//! the conventions prescribe): anything else makes [`read`] return `None`
//! and the caller takes the general `Value` path, so the result is the same
//! either way.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::{Map, Value};

use super::assemble::parse_json_string;
use super::episode::{Message, RequestedToolCall};

/// A JSON string, borrowed from the input when it has no escapes. Unlike
/// `Option<String>`, a `null` is an error (the general path treats `null`
/// differently from an absent key).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl Text<'_> {
    fn owned(self) -> String {
        self.0.into_owned()
    }
}

/// A field that, when present, must not be `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(default, rename = "type", borrow, deserialize_with = "present")]
    kind: Option<Text<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    content: Option<Text<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    response: Option<Text<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    result: Option<Text<'a>>,
    /// `null` and absent mean the same here, as on the general path.
    #[serde(default, borrow)]
    id: Option<Text<'a>>,
    #[serde(default, borrow)]
    name: Option<Text<'a>>,
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    role: Option<Text<'a>>,
    #[serde(default, borrow, deserialize_with = "present")]
    parts: Option<Vec<Part<'a>>>,
    #[serde(default, borrow, deserialize_with = "present")]
    content: Option<Text<'a>>,
}

/// The inner JSON array of an attribute, typed; `None` when the attribute is
/// not a string holding a well-formed array of `T`.
fn typed<'a, T: Deserialize<'a>>(value: &'a Value) -> Option<Vec<T>> {
    match value {
        Value::String(s) if s.starts_with('[') => serde_json::from_str(s).ok(),
        _ => None,
    }
}

/// Text of parts: text parts joined by newlines, tool results as text.
fn parts_text(parts: Vec<Part<'_>>) -> String {
    let mut texts = parts
        .into_iter()
        .filter_map(|p| match p.kind.as_ref().map(|k| &*k.0) {
            Some("text") | None => p.content,
            Some("tool_call_response") => p.response.or(p.result),
            _ => None,
        });
    let Some(first) = texts.next() else {
        return String::new();
    };
    let mut out = first.owned();
    for text in texts {
        out.push('\n');
        out.push_str(&text.0);
    }
    out
}

/// Text of a message: its parts, else its `content`.
fn message_text(parts: Option<Vec<Part<'_>>>, content: Option<Text<'_>>) -> String {
    match (parts, content) {
        (Some(parts), _) => parts_text(parts),
        (None, Some(content)) => content.owned(),
        (None, None) => String::new(),
    }
}

/// Input messages, output text and requested tool calls, or `None` when any
/// of the attributes needs the general path.
pub(super) fn read(
    a: &Map<String, Value>,
) -> Option<(Vec<Message>, Option<String>, Vec<RequestedToolCall>)> {
    let system = a.get("gen_ai.system_instructions");
    let inputs = a.get("gen_ai.input.messages");
    let outputs = a.get("gen_ai.output.messages");
    let system: Option<Vec<Part>> = match system {
        Some(value) => Some(typed(value)?),
        None => None,
    };
    let inputs: Vec<Msg> = match inputs {
        Some(value) => typed(value)?,
        None => Vec::new(),
    };
    let outputs: Vec<Msg> = match outputs {
        Some(value) => typed(value)?,
        None => Vec::new(),
    };
    let mut input_messages = Vec::with_capacity(inputs.len() + 1);
    if let Some(parts) = system {
        let content = parts_text(parts);
        if !content.is_empty() {
            input_messages.push(Message {
                role: "system".into(),
                content,
            });
        }
    }
    for m in inputs {
        input_messages.push(Message {
            role: m.role.map_or_else(|| "user".into(), Text::owned),
            content: message_text(m.parts, m.content),
        });
    }
    let mut output_text = None;
    let mut tool_calls = Vec::new();
    for mut m in outputs {
        let mut parts = m.parts.take();
        let calls = parts.as_mut().map(|parts| {
            let mut calls = Vec::new();
            for part in parts.iter_mut() {
                if part.kind.as_ref().is_some_and(|k| k.0 == "tool_call") {
                    calls.push(RequestedToolCall {
                        id: part.id.take().map(Text::owned),
                        name: part.name.take().map(Text::owned).unwrap_or_default(),
                        arguments: part
                            .arguments
                            .take()
                            .map(parse_json_string)
                            .unwrap_or(Value::Null),
                    });
                }
            }
            calls
        });
        let text = message_text(parts, m.content);
        if !text.is_empty() && output_text.is_none() {
            output_text = Some(text);
        }
        tool_calls.extend(calls.into_iter().flatten());
    }
    Some((input_messages, output_text, tool_calls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::assemble::read_genai_values;

    fn attrs(system: Option<&str>, input: &str, output: &str) -> Map<String, Value> {
        let mut a = Map::new();
        if let Some(system) = system {
            a.insert("gen_ai.system_instructions".into(), system.into());
        }
        a.insert("gen_ai.input.messages".into(), input.into());
        a.insert("gen_ai.output.messages".into(), output.into());
        a
    }

    #[test]
    fn well_formed_messages_take_the_fast_path_with_the_same_result() {
        let a = attrs(
            Some(
                r#"[{"type":"text","content":"Be brief.\nUse \"tools\"."},{"type":"text","content":"Second."}]"#,
            ),
            r#"[{"role":"user","parts":[{"type":"text","content":"Weather in Paris?"}]},{"content":"plain"},{"role":"tool","parts":[{"type":"tool_call_response","id":"c1","result":"sunny"}]}]"#,
            r#"[{"role":"assistant","parts":[{"type":"text","content":"Checking."},{"type":"tool_call","id":"call_1","name":"get_weather","arguments":{"city":"Paris"}},{"type":"tool_call","id":null,"name":"calc","arguments":"{\"x\":1}"}],"finish_reason":"tool_call"}]"#,
        );
        let fast = read(&a).expect("well-formed messages take the fast path");
        assert_eq!(fast, read_genai_values(&a));
        assert_eq!(fast.0.len(), 4);
        assert_eq!(fast.2.len(), 2);
        assert_eq!(fast.1.as_deref(), Some("Checking."));
    }

    #[test]
    fn odd_shapes_fall_back_to_the_general_path() {
        let odd = [
            (None, r#"[{"role":null,"content":"x"}]"#, "[]"),
            (
                None,
                r#"[{"role":"user","parts":null,"content":"x"}]"#,
                "[]",
            ),
            (None, r#"[{"role":"user","content":{"a":1}}]"#, "[]"),
            (
                None,
                r#"[{"role":"user","parts":[{"type":"text","content":null}]}]"#,
                "[]",
            ),
            (
                None,
                r#"[{"role":"user","role":"system","content":"x"}]"#,
                "[]",
            ),
            (None, r#"["just text"]"#, "[]"),
            (Some("plain instructions"), "[]", "[]"),
            (None, "[]", r#"[{"parts":[{"type":7,"content":"y"}]}]"#),
            (
                None,
                "[]",
                r#"[{"parts":[{"type":"tool_call","id":5,"name":"n"}]}]"#,
            ),
        ];
        for (system, input, output) in odd {
            let a = attrs(system, input, output);
            assert!(read(&a).is_none(), "{input} {output}");
        }
    }
}

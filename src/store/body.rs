//! How an episode is kept in `episodes.body`: MessagePack (the episode's
//! serde form, fields by name), compressed with zstd.
//!
//! MessagePack rather than JSON because writing it is a copy per string,
//! where JSON escapes every byte of the long message texts; it is also
//! smaller, so zstd has less to do. Episodes repeat themselves (every LLM call
//! carries the conversation so far), so they compress 2.5–3× even at the
//! fastest levels, which cuts the bytes SQLite writes — twice, to the WAL and
//! at checkpoint — by as much. Bodies written before migration 3 are JSON
//! text and still read.

use rusqlite::types::ValueRef;

use super::StoreError;
use crate::trace::Episode;

/// zstd level for episode bodies: a fast negative level. On the ingest
/// bench corpus, -5 costs 2 % fewer instructions per import than -3 and 5 %
/// fewer than -1, for a 6 % (resp. 14 %) larger database.
const LEVEL: i32 = -5;

/// Serializes and compresses episodes, reusing its buffers between calls.
pub struct BodyEncoder {
    packed: Vec<u8>,
    zstd: zstd::bulk::Compressor<'static>,
}

impl BodyEncoder {
    /// A new encoder.
    pub fn new() -> BodyEncoder {
        BodyEncoder {
            packed: Vec::new(),
            zstd: zstd::bulk::Compressor::new(LEVEL).expect("zstd accepts its own standard level"),
        }
    }

    /// The stored form of `episode`.
    pub fn encode(&mut self, episode: &Episode) -> Result<Vec<u8>, StoreError> {
        let what = || format!("episode {}", episode.trace_id);
        self.packed.clear();
        rmp_serde::encode::write_named(&mut self.packed, episode).map_err(|err| {
            StoreError::Body {
                what: what(),
                source: err.into(),
            }
        })?;
        self.zstd
            .compress(&self.packed)
            .map_err(|err| StoreError::Body {
                what: what(),
                source: err.into(),
            })
    }
}

impl Default for BodyEncoder {
    fn default() -> BodyEncoder {
        BodyEncoder::new()
    }
}

/// Reads a stored body: a zstd blob of MessagePack, or JSON text from
/// before migration 3.
pub(super) fn decode_episode(id: i64, body: ValueRef<'_>) -> Result<Episode, StoreError> {
    let what = || format!("episode #{id}");
    match body {
        ValueRef::Text(json) => {
            serde_json::from_slice(json).map_err(|source| StoreError::CorruptBody {
                what: what(),
                source,
            })
        }
        ValueRef::Blob(blob) => {
            let body_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Body {
                what: what(),
                source,
            };
            let packed = zstd::decode_all(blob).map_err(|err| body_error(err.into()))?;
            rmp_serde::from_slice(&packed).map_err(|err| body_error(err.into()))
        }
        other => Err(StoreError::Sqlite(rusqlite::Error::InvalidColumnType(
            2,
            "body".into(),
            other.data_type(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    /// An episode of `n_calls` identical tool-using LLM calls and a failed tool
    /// call.
    fn episode(n_calls: usize) -> Episode {
        let call = serde_json::json!({
            "kind": "llm", "name": "gpt-4o-mini", "error": false,
            "llm": {
                "input_messages": [
                    {"role": "system", "content": "You are a careful assistant that uses tools."},
                    {"role": "user", "content": "What is the weather in Oslo?"}
                ],
                "output_text": null,
                "tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Oslo"}}],
                "usage": {"input_tokens": 120, "output_tokens": 12}
            }
        });
        // Tool arguments are any JSON: every kind of value must survive.
        let tool = serde_json::json!({
            "kind": "tool", "name": "get_weather", "error": true,
            "error_message": "timeout", "start_time_unix_nano": 1_700_000_000_000_000_000u64,
            "duration_ms": 12.5, "rewards": {"step": -0.5},
            "tool": {
                "call_id": "call_1",
                "arguments": {"city": "Oslo", "days": 3, "temp": -2.5, "max": u64::MAX,
                              "tags": ["a", null, true, {"nested": []}]},
                "result": null,
                "policy": {"version": "v2", "probability": 0.25}
            }
        });
        serde_json::from_value(serde_json::json!({
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "format": "otlp_json",
            "prompt": {"name": "Controller", "version": null, "text": null},
            "input": "What is the weather in Oslo?",
            "steps": std::iter::repeat_n(call, n_calls).chain([tool]).collect::<Vec<_>>(),
            "rewards": {"success": 1.0},
            "status": "ok",
            "start_time_unix_nano": null,
            "duration_ms": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
            "policy_version": null,
            "source": {"file": "traces.jsonl", "line": 3}
        }))
        .unwrap()
    }

    #[test]
    fn encoded_bodies_round_trip_and_are_smaller_than_their_json() {
        let episode = episode(10);
        let stored = BodyEncoder::new().encode(&episode).unwrap();
        let json = serde_json::to_vec(&episode).unwrap();
        assert!(
            stored.len() * 3 < json.len(),
            "{} vs {}",
            stored.len(),
            json.len()
        );
        assert_eq!(decode_episode(1, ValueRef::Blob(&stored)).unwrap(), episode);
    }

    #[test]
    fn json_text_bodies_written_before_migration_3_still_read() {
        let episode = episode(1);
        let json = serde_json::to_vec(&episode).unwrap();
        assert_eq!(decode_episode(1, ValueRef::Text(&json)).unwrap(), episode);
    }

    #[test]
    fn a_damaged_body_is_an_error_naming_the_episode() {
        let err = decode_episode(7, ValueRef::Blob(b"not zstd")).unwrap_err();
        assert!(err.to_string().contains("episode #7"), "{err}");
    }
}

//! How an episode is kept in `episodes.body`: its JSON, compressed with zstd.
//!
//! Episode JSON repeats itself (every LLM call carries the conversation so
//! far), so it compresses 2.5–3× even at the fastest levels; that cuts the
//! bytes SQLite writes — twice, to the WAL and at checkpoint — by as much.
//! Rows written as plain JSON text (before compression) still read.

use rusqlite::types::ValueRef;

use super::StoreError;
use crate::trace::Episode;

/// zstd level for episode bodies: a fast negative level. On the ingest
/// bench corpus, -5 costs 2 % fewer instructions per import than -3 and 5 %
/// fewer than -1, for a 6 % (resp. 14 %) larger database.
const LEVEL: i32 = -5;

/// Serializes and compresses episodes, reusing its buffers between calls.
pub struct BodyEncoder {
    json: Vec<u8>,
    zstd: zstd::bulk::Compressor<'static>,
}

impl BodyEncoder {
    /// A new encoder.
    pub fn new() -> BodyEncoder {
        BodyEncoder {
            json: Vec::new(),
            zstd: zstd::bulk::Compressor::new(LEVEL).expect("zstd accepts its own standard level"),
        }
    }

    /// The stored form of `episode`.
    pub fn encode(&mut self, episode: &Episode) -> Result<Vec<u8>, StoreError> {
        self.json.clear();
        serde_json::to_writer(&mut self.json, episode).map_err(|source| {
            StoreError::CorruptBody {
                what: format!("episode {}", episode.trace_id),
                source,
            }
        })?;
        self.zstd
            .compress(&self.json)
            .map_err(|source| StoreError::Compression {
                what: format!("episode {}", episode.trace_id),
                source,
            })
    }
}

impl Default for BodyEncoder {
    fn default() -> BodyEncoder {
        BodyEncoder::new()
    }
}

/// Reads a stored body: a zstd blob, or JSON text from before compression.
pub(super) fn decode_episode(id: i64, body: ValueRef<'_>) -> Result<Episode, StoreError> {
    let what = || format!("episode #{id}");
    let json = match body {
        ValueRef::Text(text) => std::borrow::Cow::Borrowed(text),
        ValueRef::Blob(blob) => {
            std::borrow::Cow::Owned(zstd::decode_all(blob).map_err(|source| {
                StoreError::Compression {
                    what: what(),
                    source,
                }
            })?)
        }
        other => {
            return Err(StoreError::Sqlite(rusqlite::Error::InvalidColumnType(
                2,
                "body".into(),
                other.data_type(),
            )));
        }
    };
    serde_json::from_slice(&json).map_err(|source| StoreError::CorruptBody {
        what: what(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    /// An episode of `n_calls` identical tool-using LLM calls.
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
        serde_json::from_value(serde_json::json!({
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "format": "otlp_json",
            "prompt": {"name": "Controller", "version": null, "text": null},
            "input": "What is the weather in Oslo?",
            "steps": vec![call; n_calls],
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
    fn json_text_bodies_written_before_compression_still_read() {
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

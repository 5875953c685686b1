//! Write a Whetstone plugin as one function.
//!
//! A reward plugin scores an episode; a mutator plugin rewrites a prompt.
//! Write the function over this crate's plain types and export it with
//! [`reward_plugin!`] or [`mutator_plugin!`]; build with
//! `cargo build --release --target wasm32-wasip2` and drop the `.wasm` into
//! Whetstone's plugins folder.
//!
//! ```ignore
//! use whetstone_plugin::{Episode, Score};
//!
//! fn score(episode: &Episode) -> Result<Vec<Score>, String> {
//!     Ok(vec![Score::new("steps", episode.steps.len() as f64)])
//! }
//!
//! whetstone_plugin::reward_plugin! {
//!     name: "step-count",
//!     description: "Number of steps the agent took.",
//!     score: score,
//! }
//! ```
//!
//! | SDK | WIT package | Whetstone hosts that load it |
//! |---|---|---|
//! | 0.1.0 | `whetstone:plugin@0.1.0` (`plugins/wit/since_v0.1.0`) | 0.1.0 and later |
//!
//! Outside WebAssembly the crate compiles without bindings, so the same
//! function runs natively in tests and benchmarks; [`settings`] then reads
//! an empty table.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The parts of an episode (`docs/TRACE_FORMAT.md`) a reward usually needs.
/// Other fields of the JSON are skipped.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Episode {
    pub trace_id: String,
    pub input: Option<String>,
    pub steps: Vec<Step>,
    /// Final rewards by name, as recorded in the trace.
    pub rewards: BTreeMap<String, f64>,
    /// `ok` or `error`.
    pub status: String,
}

impl Episode {
    /// The agent's final answer: the output text of the last LLM step that
    /// has one.
    pub fn final_answer(&self) -> Option<&str> {
        self.steps
            .iter()
            .rev()
            .find_map(|step| step.llm.as_ref()?.output_text.as_deref())
    }
}

/// One LLM call or tool execution.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Step {
    /// `llm` or `tool`.
    pub kind: String,
    /// Model or tool name.
    pub name: String,
    pub error: bool,
    pub error_message: Option<String>,
    pub llm: Option<LlmCall>,
}

/// What an LLM step produced.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LlmCall {
    pub output_text: Option<String>,
}

/// One named score of an episode.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub name: String,
    pub value: f64,
}

impl Score {
    /// A score named `name`.
    pub fn new(name: impl Into<String>, value: f64) -> Score {
        Score {
            name: name.into(),
            value,
        }
    }
}

/// One training example shown to a mutator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Example {
    pub input: String,
    pub output: String,
    /// 0.0 to 1.0.
    pub score: f64,
    /// Why it got that score, possibly empty.
    pub feedback: String,
}

/// The prompt's weakest and strongest examples, each worst- or best-first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    pub weakest: Vec<Example>,
    pub strongest: Vec<Example>,
}

/// Parses the episode JSON the host sends and scores it with `score`.
pub fn score_json(
    episode_json: &str,
    score: fn(&Episode) -> Result<Vec<Score>, String>,
) -> Result<Vec<Score>, String> {
    let episode: Episode = serde_json::from_str(episode_json)
        .map_err(|err| format!("episode is not valid episode JSON: {err}"))?;
    score(&episode)
}

/// The plugin's settings (the `[settings]` table of its `NAME.toml`)
/// deserialized into `T`; natively, `T` from an empty table.
pub fn settings<T: DeserializeOwned>() -> Result<T, String> {
    #[cfg(target_arch = "wasm32")]
    let json = wit::reward::whetstone::plugin::host::settings();
    #[cfg(not(target_arch = "wasm32"))]
    let json = String::from("{}");
    serde_json::from_str(&json).map_err(|err| format!("invalid plugin settings: {err}"))
}

/// Generated component bindings, used by the export macros.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wit {
    pub mod reward {
        wit_bindgen::generate!({
            path: "../wit/since_v0.1.0",
            world: "reward",
            pub_export_macro: true,
            export_macro_name: "export_reward",
            default_bindings_module: "whetstone_plugin::wit::reward",
        });
    }
    pub mod mutator {
        wit_bindgen::generate!({
            path: "../wit/since_v0.1.0",
            world: "mutator",
            pub_export_macro: true,
            export_macro_name: "export_mutator",
            default_bindings_module: "whetstone_plugin::wit::mutator",
        });
    }
}

/// Exports `score: fn(&Episode) -> Result<Vec<Score>, String>` as the
/// plugin's reward function (world `reward` of `whetstone:plugin@0.1.0`).
#[macro_export]
macro_rules! reward_plugin {
    (name: $name:expr, description: $description:expr, score: $score:ident $(,)?) => {
        #[cfg(target_arch = "wasm32")]
        mod __whetstone_reward_export {
            use $crate::wit::reward::exports::whetstone::plugin::scoring::{Guest, NamedScore};

            struct Plugin;

            impl Guest for Plugin {
                fn name() -> String {
                    String::from($name)
                }
                fn description() -> String {
                    String::from($description)
                }
                fn score(episode: String) -> Result<Vec<NamedScore>, String> {
                    let scores = $crate::score_json(&episode, super::$score)?;
                    Ok(scores
                        .into_iter()
                        .map(|score| NamedScore {
                            name: score.name,
                            value: score.value,
                        })
                        .collect())
                }
            }

            $crate::wit::reward::export_reward!(Plugin with_types_in $crate::wit::reward);
        }
    };
}

/// Exports `mutate: fn(&str, u64, &Context) -> Result<String, String>` as
/// the plugin's mutation strategy (world `mutator` of
/// `whetstone:plugin@0.1.0`).
#[macro_export]
macro_rules! mutator_plugin {
    (name: $name:expr, description: $description:expr, mutate: $mutate:ident $(,)?) => {
        #[cfg(target_arch = "wasm32")]
        mod __whetstone_mutator_export {
            use $crate::wit::mutator::exports::whetstone::plugin::mutation::Guest;
            use $crate::wit::mutator::whetstone::plugin::types;

            struct Plugin;

            fn example(example: types::Example) -> $crate::Example {
                $crate::Example {
                    input: example.input,
                    output: example.output,
                    score: example.score,
                    feedback: example.feedback,
                }
            }

            impl Guest for Plugin {
                fn name() -> String {
                    String::from($name)
                }
                fn description() -> String {
                    String::from($description)
                }
                fn mutate(
                    prompt: String,
                    seed: u64,
                    context: types::MutationContext,
                ) -> Result<String, String> {
                    let context = $crate::Context {
                        weakest: context.weakest.into_iter().map(example).collect(),
                        strongest: context.strongest.into_iter().map(example).collect(),
                    };
                    super::$mutate(&prompt, seed, &context)
                }
            }

            $crate::wit::mutator::export_mutator!(Plugin with_types_in $crate::wit::mutator);
        }
    };
}

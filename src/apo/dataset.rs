//! Turns recorded episodes into APO examples and splits them.
//!
//! An example is what replay needs: the task messages the agent's model saw
//! (without its system prompt, which is what we vary), the answer the agent
//! gave when that answer earned a good reward, and the reward itself. The
//! train/validation split hashes the trace id, so an episode stays on the same
//! side however many episodes arrive later and in whatever order.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use crate::trace::{Episode, Message, StepKind};

/// One replayable task.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The episode's trace id.
    pub id: String,
    /// Task messages of the agent's first LLM call, system messages removed.
    pub messages: Vec<Message>,
    /// The last user message: what the agent was asked.
    pub input: String,
    /// The agent's final answer, when the episode's reward made it a good one.
    pub reference: Option<String>,
    /// Mean of the episode's final rewards, if it has any.
    pub reward: Option<f64>,
}

/// Examples for one prompt, split for training and validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub train: Vec<Example>,
    pub validation: Vec<Example>,
}

/// How to build a [`Dataset`].
#[derive(Debug, Clone)]
pub struct DatasetSpec<'a> {
    /// Prompt name episodes must carry.
    pub prompt_name: &'a str,
    pub validation_fraction: f64,
    pub min_train: usize,
    pub min_validation: usize,
    /// Output of an episode with at least this reward is a reference answer.
    pub reference_min_reward: f64,
    /// Drop examples without a reference (the exact/F1 scorers need one).
    pub require_reference: bool,
}

impl Dataset {
    /// Builds examples from the episodes recorded for `spec.prompt_name`.
    ///
    /// Fails with a message giving the counts and the config keys involved
    /// when either side of the split is smaller than its minimum.
    pub fn build(episodes: &[Episode], spec: &DatasetSpec<'_>) -> anyhow::Result<Dataset> {
        let mut seen = BTreeSet::new();
        let mut matching = 0usize;
        let mut unusable = 0usize;
        let mut dataset = Dataset {
            train: Vec::new(),
            validation: Vec::new(),
        };
        for episode in episodes {
            if episode.prompt.name.as_deref() != Some(spec.prompt_name) {
                continue;
            }
            matching += 1;
            if !seen.insert(episode.trace_id.as_str()) {
                continue;
            }
            let Some(example) = example_from(episode, spec.reference_min_reward) else {
                unusable += 1;
                continue;
            };
            if spec.require_reference && example.reference.is_none() {
                unusable += 1;
                continue;
            }
            if split_point(&example.id) < spec.validation_fraction {
                dataset.validation.push(example);
            } else {
                dataset.train.push(example);
            }
        }
        dataset.train.sort_by(|a, b| a.id.cmp(&b.id));
        dataset.validation.sort_by(|a, b| a.id.cmp(&b.id));
        if dataset.train.len() < spec.min_train || dataset.validation.len() < spec.min_validation {
            let reference_note = if spec.require_reference {
                " (the scorer needs a reference answer: an episode whose reward is at least apo.reference_min_reward)"
            } else {
                ""
            };
            anyhow::bail!(
                "too little data for prompt `{}`: {} episodes carry it, {} unusable{}; \
                 the split gave {} training and {} validation examples, \
                 need at least {} (apo.min_train_examples) and {} (apo.min_validation_examples)",
                spec.prompt_name,
                matching,
                unusable,
                reference_note,
                dataset.train.len(),
                dataset.validation.len(),
                spec.min_train,
                spec.min_validation,
            );
        }
        Ok(dataset)
    }
}

/// Position of a trace id in `[0, 1)`, fixed by its hash.
fn split_point(trace_id: &str) -> f64 {
    let digest = Sha256::digest(trace_id.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(head) >> 11) as f64 / (1u64 << 53) as f64
}

fn example_from(episode: &Episode, reference_min_reward: f64) -> Option<Example> {
    let llm_steps: Vec<_> = episode
        .steps
        .iter()
        .filter(|step| step.kind == StepKind::Llm)
        .filter_map(|step| step.llm.as_ref())
        .collect();
    let mut messages: Vec<Message> = llm_steps
        .first()
        .map(|call| {
            call.input_messages
                .iter()
                .filter(|message| message.role != "system" && message.role != "developer")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if messages.is_empty() {
        let input = episode.input.as_ref()?;
        messages.push(Message {
            role: "user".to_string(),
            content: input.clone(),
        });
    }
    let input = messages
        .iter()
        .rev()
        .find(|message| message.role == "user")
        .map(|message| message.content.clone())
        .or_else(|| episode.input.clone())?;
    let reward = (!episode.rewards.is_empty())
        .then(|| episode.rewards.values().sum::<f64>() / episode.rewards.len() as f64);
    let reference = llm_steps
        .iter()
        .rev()
        .find_map(|call| call.output_text.clone())
        .filter(|text| !text.trim().is_empty())
        .filter(|_| reward.is_some_and(|reward| reward >= reference_min_reward));
    Some(Example {
        id: episode.trace_id.clone(),
        messages,
        input,
        reference,
        reward,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::trace::{LlmCall, PromptRef, Source, Status, Step, TokenUsage, TraceFormat};

    fn episode(id: &str, prompt: &str, reward: f64) -> Episode {
        Episode {
            trace_id: id.to_string(),
            format: TraceFormat::WhetstoneJsonl,
            prompt: PromptRef {
                name: Some(prompt.to_string()),
                ..PromptRef::default()
            },
            input: None,
            steps: vec![Step::llm(
                "m".to_string(),
                LlmCall {
                    input_messages: vec![
                        Message {
                            role: "system".into(),
                            content: "old prompt".into(),
                        },
                        Message {
                            role: "user".into(),
                            content: format!("question {id}"),
                        },
                    ],
                    output_text: Some(format!("answer {id}")),
                    ..LlmCall::default()
                },
            )],
            rewards: BTreeMap::from([("r".to_string(), reward)]),
            status: Status::Ok,
            start_time_unix_nano: None,
            duration_ms: None,
            usage: TokenUsage::default(),
            policy_version: None,
            source: Source::default(),
        }
    }

    fn spec(require_reference: bool) -> DatasetSpec<'static> {
        DatasetSpec {
            prompt_name: "Controller",
            validation_fraction: 0.3,
            min_train: 1,
            min_validation: 1,
            reference_min_reward: 0.5,
            require_reference,
        }
    }

    #[test]
    fn split_is_by_trace_id_whatever_the_order_and_other_episodes() {
        let episodes: Vec<Episode> = (0..40)
            .map(|idx| episode(&format!("t{idx}"), "Controller", 1.0))
            .collect();
        let all = Dataset::build(&episodes, &spec(false)).unwrap();
        let mut shuffled = episodes.clone();
        shuffled.reverse();
        shuffled.truncate(30);
        shuffled.push(episode("other", "Summarizer", 1.0));
        let part = Dataset::build(&shuffled, &spec(false)).unwrap();
        for example in &part.validation {
            assert!(all.validation.iter().any(|e| e.id == example.id));
        }
        for example in &part.train {
            assert!(all.train.iter().any(|e| e.id == example.id));
        }
        let share = all.validation.len() as f64 / 40.0;
        assert!((0.1..0.5).contains(&share), "{share}");
    }

    #[test]
    fn examples_drop_the_system_prompt_and_keep_good_answers_as_references() {
        let episodes = vec![
            episode("good", "Controller", 0.9),
            episode("bad", "Controller", 0.1),
            episode("good", "Controller", 0.9),
        ];
        let data = Dataset::build(
            &episodes,
            &DatasetSpec {
                min_validation: 0,
                ..spec(false)
            },
        )
        .unwrap();
        let examples: Vec<&Example> = data.train.iter().chain(&data.validation).collect();
        assert_eq!(examples.len(), 2, "duplicates count once");
        let good = examples.iter().find(|e| e.id == "good").unwrap();
        assert_eq!(good.messages.len(), 1);
        assert_eq!(good.input, "question good");
        assert_eq!(good.reference.as_deref(), Some("answer good"));
        let bad = examples.iter().find(|e| e.id == "bad").unwrap();
        assert_eq!(bad.reference, None);
        assert_eq!(bad.reward, Some(0.1));
    }

    #[test]
    fn too_little_data_names_counts_and_keys() {
        let episodes = vec![episode("a", "Controller", 0.1)];
        let err = Dataset::build(&episodes, &spec(true))
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 episodes carry it, 1 unusable"), "{err}");
        assert!(err.contains("apo.reference_min_reward"), "{err}");
        assert!(err.contains("apo.min_validation_examples"), "{err}");
    }
}

//! Turns recorded episodes into APO examples and splits them.
//!
//! An example is what replay needs: the task messages the agent's model saw
//! (without its system prompt, which is what we vary), the answer the agent
//! gave when that answer earned a good reward, and the reward itself.
//!
//! The validation side of the split is what decides whether a candidate
//! beats the baseline, so it must be large enough and cover every kind of
//! task. It holds `max(validation_fraction × n, min_validation)` examples
//! (leaving at least `min_train` for training), **stratified** by the tools
//! the episode used: each kind of episode with two or more examples gets at
//! least one validation example, the rest go out in proportion to the kinds'
//! sizes. Within a kind, the examples with the lowest hash of their trace id
//! are held out, so the split depends only on the set of episodes, never on
//! their order. The user can pin the validation side instead: a file listing
//! trace ids or inputs, one per line.
//!
//! A run replays every example for every candidate, so the number of
//! examples sets the cost of a candidate. Beyond `max_examples`, a sample of
//! that size is used, drawn the same way as the validation side (stratified
//! by kind, lowest hash of the trace id first): the same episodes stay in it
//! from one run to the next, so the evaluation cache keeps paying off.

use std::collections::{BTreeMap, BTreeSet};

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
    /// The kind of episode, for stratification: the tools it used, sorted.
    pub stratum: String,
}

/// Examples for one prompt, split for training and validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub train: Vec<Example>,
    pub validation: Vec<Example>,
    /// How the split was made, for the summary.
    pub split: String,
}

/// How to build a [`Dataset`].
#[derive(Debug, Clone)]
pub struct DatasetSpec<'a> {
    /// Prompt name episodes must carry.
    pub prompt_name: &'a str,
    pub validation_fraction: f64,
    pub min_train: usize,
    pub min_validation: usize,
    /// Trace ids or inputs to hold out for validation, when the user pins them.
    pub pinned: Option<&'a [String]>,
    /// Output of an episode with at least this reward is a reference answer.
    pub reference_min_reward: f64,
    /// Drop examples without a reference (the exact/F1 scorers need one).
    pub require_reference: bool,
    /// Most examples used; more are sampled down (module docs). Pinned
    /// validation examples are always kept.
    pub max_examples: usize,
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
        let mut examples = Vec::new();
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
            examples.push(example);
        }
        let usable = examples.len();
        let (examples, sampled) = match spec.pinned {
            Some(pinned) => {
                let (pinned_idx, _) = pinned_split(&examples, pinned)?;
                let (kept, rest): (Vec<_>, Vec<_>) = examples
                    .into_iter()
                    .enumerate()
                    .partition(|(idx, _)| pinned_idx.contains(idx));
                let rest: Vec<Example> = rest.into_iter().map(|(_, e)| e).collect();
                let room = spec.max_examples.saturating_sub(kept.len());
                let mut kept: Vec<Example> = kept.into_iter().map(|(_, e)| e).collect();
                kept.extend(sample(rest, room));
                let sampled = kept.len() < usable;
                (kept, sampled)
            }
            None => {
                let kept = sample(examples, spec.max_examples);
                let sampled = kept.len() < usable;
                (kept, sampled)
            }
        };
        let n = examples.len();
        let (held_out, mut split) = match spec.pinned {
            Some(pinned) => pinned_split(&examples, pinned)?,
            None => {
                let wanted = ((spec.validation_fraction * n as f64).round() as usize)
                    .max(spec.min_validation)
                    .min(n.saturating_sub(spec.min_train));
                stratified_split(&examples, wanted)
            }
        };
        if sampled {
            split = format!(
                "a sample of {n} of {usable} examples (apo.max_examples), stratified like the split; {split}"
            );
        }
        let mut dataset = Dataset {
            train: Vec::new(),
            validation: Vec::new(),
            split,
        };
        for (idx, example) in examples.into_iter().enumerate() {
            if held_out.contains(&idx) {
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
                 the split ({}) gave {} training and {} validation examples, \
                 need at least {} (apo.min_train_examples) and {} (apo.min_validation_examples)",
                spec.prompt_name,
                matching,
                unusable,
                reference_note,
                dataset.split,
                dataset.train.len(),
                dataset.validation.len(),
                spec.min_train,
                spec.min_validation,
            );
        }
        Ok(dataset)
    }
}

/// Indices of the examples a pinned list holds out, by trace id or input.
fn pinned_split(
    examples: &[Example],
    pinned: &[String],
) -> anyhow::Result<(BTreeSet<usize>, String)> {
    let keys: BTreeSet<&str> = pinned
        .iter()
        .map(|line| line.trim())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let held_out: BTreeSet<usize> = examples
        .iter()
        .enumerate()
        .filter(|(_, example)| {
            keys.contains(example.id.as_str()) || keys.contains(example.input.trim())
        })
        .map(|(idx, _)| idx)
        .collect();
    if held_out.is_empty() && !keys.is_empty() {
        anyhow::bail!(
            "none of the {} entries of apo.validation_ids_file is the trace id or input of an example",
            keys.len()
        );
    }
    let split = format!(
        "pinned by apo.validation_ids_file: {} of its {} entries matched",
        held_out.len(),
        keys.len()
    );
    Ok((held_out, split))
}

/// At most `wanted` of `examples`, chosen like the validation side.
fn sample(examples: Vec<Example>, wanted: usize) -> Vec<Example> {
    if examples.len() <= wanted {
        return examples;
    }
    let (chosen, _) = stratified_split(&examples, wanted);
    examples
        .into_iter()
        .enumerate()
        .filter(|(idx, _)| chosen.contains(idx))
        .map(|(_, example)| example)
        .collect()
}

/// Indices of `wanted` examples held out, stratified by kind (module docs).
fn stratified_split(examples: &[Example], wanted: usize) -> (BTreeSet<usize>, String) {
    let mut strata: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (idx, example) in examples.iter().enumerate() {
        strata
            .entry(example.stratum.as_str())
            .or_default()
            .push(idx);
    }
    for members in strata.values_mut() {
        members.sort_by(|a, b| {
            split_point(&examples[*a].id)
                .partial_cmp(&split_point(&examples[*b].id))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(examples[*a].id.cmp(&examples[*b].id))
        });
    }
    let kinds: Vec<(&str, Vec<usize>)> = strata.into_iter().collect();
    let n = examples.len().max(1);
    let mut taken = vec![0usize; kinds.len()];
    // Every kind with two or more examples first gets one, largest kinds
    // first; then the slots go where the proportional share is most behind.
    let mut by_size: Vec<usize> = (0..kinds.len())
        .filter(|k| kinds[*k].1.len() >= 2)
        .collect();
    by_size.sort_by_key(|k| std::cmp::Reverse(kinds[*k].1.len()));
    let mut left = wanted;
    for kind in by_size {
        if left == 0 {
            break;
        }
        taken[kind] = 1;
        left -= 1;
    }
    for pass_keeps_one in [true, false] {
        while left > 0 {
            let room = |k: usize| {
                let size = kinds[k].1.len();
                let cap = if pass_keeps_one {
                    size.saturating_sub(1)
                } else {
                    size
                };
                taken[k] < cap
            };
            let behind =
                |k: usize| kinds[k].1.len() as f64 * wanted as f64 / n as f64 - taken[k] as f64;
            let Some(kind) = (0..kinds.len()).filter(|k| room(*k)).max_by(|a, b| {
                behind(*a)
                    .partial_cmp(&behind(*b))
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(b.cmp(a))
            }) else {
                break;
            };
            taken[kind] += 1;
            left -= 1;
        }
    }
    let held_out = kinds
        .iter()
        .zip(&taken)
        .flat_map(|((_, members), count)| members[..*count].iter().copied())
        .collect();
    let split = format!(
        "{wanted} of {} held out, stratified over {} kind(s) of episode by tools used",
        examples.len(),
        kinds.len()
    );
    (held_out, split)
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
    let tools: BTreeSet<&str> = episode
        .steps
        .iter()
        .filter(|step| step.kind == StepKind::Tool)
        .map(|step| step.name.as_str())
        .chain(
            llm_steps
                .iter()
                .flat_map(|call| call.tool_calls.iter().map(|call| call.name.as_str())),
        )
        .collect();
    Some(Example {
        id: episode.trace_id.clone(),
        messages,
        input,
        reference,
        reward,
        stratum: tools.into_iter().collect::<Vec<_>>().join(","),
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
            pinned: None,
            reference_min_reward: 0.5,
            require_reference,
            max_examples: usize::MAX,
        }
    }

    /// An episode that called `tool`.
    fn with_tool(id: &str, tool: &str) -> Episode {
        let mut episode = episode(id, "Controller", 1.0);
        episode.steps.push(Step {
            kind: StepKind::Tool,
            name: tool.to_string(),
            error: false,
            error_message: None,
            start_time_unix_nano: None,
            duration_ms: None,
            rewards: BTreeMap::new(),
            llm: None,
            tool: None,
        });
        episode
    }

    /// Regression test for issue 8: 13 episodes gave 3 validation examples,
    /// some kinds of task none. Now validation has its minimum size and
    /// every kind with two or more episodes is in it.
    #[test]
    fn split_has_a_minimum_size_and_covers_every_kind_of_episode() {
        let tools = [
            "weather",
            "orders",
            "docs",
            "calculator",
            "weather",
            "orders",
        ];
        let episodes: Vec<Episode> = (0..13)
            .map(|idx| with_tool(&format!("t{idx}"), tools[idx % tools.len()]))
            .collect();
        let spec = DatasetSpec {
            min_validation: 5,
            min_train: 4,
            ..spec(false)
        };
        let data = Dataset::build(&episodes, &spec).unwrap();
        assert_eq!((data.train.len(), data.validation.len()), (8, 5));
        let kinds: BTreeSet<&str> = data.validation.iter().map(|e| e.stratum.as_str()).collect();
        assert_eq!(kinds.len(), 4, "{:?}", data.validation);
        assert!(
            data.split.contains("stratified over 4 kind(s)"),
            "{}",
            data.split
        );
        // The order of the episodes does not matter.
        let mut reversed = episodes.clone();
        reversed.reverse();
        assert_eq!(Dataset::build(&reversed, &spec).unwrap(), data);
    }

    #[test]
    fn validation_can_be_pinned_by_trace_id_or_input() {
        let episodes: Vec<Episode> = (0..10)
            .map(|idx| episode(&format!("t{idx}"), "Controller", 1.0))
            .collect();
        let pinned = vec![
            "t3".to_string(),
            "question t7".to_string(),
            "# comment".to_string(),
        ];
        let data = Dataset::build(
            &episodes,
            &DatasetSpec {
                pinned: Some(&pinned),
                ..spec(false)
            },
        )
        .unwrap();
        let ids: Vec<&str> = data.validation.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["t3", "t7"]);
        assert!(
            data.split.contains("2 of its 2 entries matched"),
            "{}",
            data.split
        );
        let nothing = vec!["nope".to_string()];
        let err = Dataset::build(
            &episodes,
            &DatasetSpec {
                pinned: Some(&nothing),
                ..spec(false)
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("apo.validation_ids_file"), "{err}");
    }

    #[test]
    fn split_takes_the_configured_share_whatever_the_order_and_other_episodes() {
        let episodes: Vec<Episode> = (0..40)
            .map(|idx| episode(&format!("t{idx}"), "Controller", 1.0))
            .collect();
        let all = Dataset::build(&episodes, &spec(false)).unwrap();
        assert_eq!(all.validation.len(), 12);
        let mut shuffled = episodes.clone();
        shuffled.reverse();
        shuffled.push(episode("other", "Summarizer", 1.0));
        assert_eq!(Dataset::build(&shuffled, &spec(false)).unwrap(), all);
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
    fn beyond_max_examples_a_stable_sample_covering_every_kind_is_used() {
        let tools = ["weather", "orders", "docs", "calculator"];
        let episodes: Vec<Episode> = (0..200)
            .map(|idx| with_tool(&format!("t{idx}"), tools[idx % 7 % tools.len()]))
            .collect();
        let spec = DatasetSpec {
            max_examples: 30,
            ..spec(false)
        };
        let data = Dataset::build(&episodes, &spec).unwrap();
        assert_eq!((data.train.len(), data.validation.len()), (21, 9));
        assert!(data.split.contains("30 of 200 examples"), "{}", data.split);
        let kinds: BTreeSet<&str> = data.train.iter().map(|e| e.stratum.as_str()).collect();
        assert_eq!(kinds.len(), 4, "{:?}", data.train);
        // More episodes later: most of the sample (and its cache) stays.
        let mut more = episodes.clone();
        more.extend((200..220).map(|idx| with_tool(&format!("t{idx}"), "weather")));
        let later = Dataset::build(&more, &spec).unwrap();
        let ids = |d: &Dataset| -> BTreeSet<String> {
            d.train
                .iter()
                .chain(&d.validation)
                .map(|e| e.id.clone())
                .collect()
        };
        assert!(ids(&data).intersection(&ids(&later)).count() >= 25);
        // Pinned examples are always kept.
        let pinned = vec!["t199".to_string()];
        let data = Dataset::build(
            &episodes,
            &DatasetSpec {
                pinned: Some(&pinned),
                ..spec
            },
        )
        .unwrap();
        assert_eq!(data.validation.len(), 1);
        assert_eq!(data.validation[0].id, "t199");
        assert_eq!(data.train.len(), 29);
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

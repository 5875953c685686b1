//! Episodes to decisions: what the agent chose, in what state, with what
//! reward, and why an episode was unusable.
//!
//! A decision is each tool step, plus "answer without a tool" when the episode
//! ends with an LLM step that called no tool. Rewards come from the steps that
//! carry them (credited to the latest decision at or before the step, or to
//! the first decision when they come earlier), the episode's final reward at
//! its last decision, and a penalty for each failed tool call. Bad episodes
//! are skipped whole, with a reason, so GAE never sees a broken sequence.

use std::collections::{BTreeMap, BTreeSet};

use super::config::RlConfig;
use super::features::State;
use crate::trace::{Episode, PolicyChoice, StepKind};

/// The action "answer without calling a tool".
pub const NO_TOOL: &str = "<no_tool>";

/// Why an episode was left out of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// Neither steps nor the episode carry the configured reward.
    NoRewards,
    /// No tool call and no final answer: nothing was decided.
    NoActions,
    /// A tool step whose name is empty.
    UnnamedTool,
    /// A tool the preceding LLM call did not declare.
    UndeclaredTool,
    /// A reward is NaN or infinite.
    NonFiniteReward,
    /// A finite reward outside ±`rl.max_abs_reward`.
    RewardOutOfRange,
    /// A logged behavior probability is outside (0, 1].
    InvalidBehaviorProbability,
    /// A reward plugin failed on the episode.
    PluginRewardFailed,
}

impl SkipReason {
    /// Stable code used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NoRewards => "no_rewards",
            SkipReason::NoActions => "no_actions",
            SkipReason::UnnamedTool => "unnamed_tool",
            SkipReason::UndeclaredTool => "undeclared_tool",
            SkipReason::NonFiniteReward => "non_finite_reward",
            SkipReason::RewardOutOfRange => "reward_out_of_range",
            SkipReason::InvalidBehaviorProbability => "invalid_behavior_probability",
            SkipReason::PluginRewardFailed => "plugin_reward_failed",
        }
    }
}

/// One decision of the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub state: State,
    /// Tool name, or [`NO_TOOL`].
    pub action: String,
    /// Tools declared to the model for this decision; empty when the trace
    /// does not say (then every known tool counts as available).
    pub declared_tools: Vec<String>,
    /// Reward credited to this decision.
    pub reward: f64,
    /// Probability the behavior policy gave `action`, when the trace has it.
    pub logged_probability: Option<f64>,
    /// Whether the trace carries the decision id `/v1/policy/act` gave it:
    /// Whetstone's served policy made this decision.
    pub served: bool,
}

/// How an episode's decision sequence ends, for bootstrapping.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// The episode finished: nothing follows the last decision.
    Terminal,
    /// The trace stops mid-episode; the return continues from this state.
    Truncated(State),
}

/// The decisions of one usable episode.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeDecisions {
    pub trace_id: String,
    pub decisions: Vec<Decision>,
    pub ending: Ending,
}

/// Result of turning episodes into decisions.
#[derive(Debug, Clone, Default)]
pub struct Extraction {
    pub episodes: Vec<EpisodeDecisions>,
    /// Skipped episodes by reason.
    pub skipped: BTreeMap<SkipReason, usize>,
    /// Every tool named or declared in the usable episodes.
    pub tools: BTreeSet<String>,
}

/// Turns episodes into decision sequences, skipping unusable ones.
pub fn extract(episodes: &[Episode], cfg: &RlConfig) -> Extraction {
    extract_with(episodes, cfg, &[])
}

/// [`extract`], adding `plugin_rewards[i]` to episode `i`'s final reward
/// (see [`super::plugin_rewards`]); `None` there skips the episode. An empty
/// slice adds nothing.
pub fn extract_with(
    episodes: &[Episode],
    cfg: &RlConfig,
    plugin_rewards: &[Option<f64>],
) -> Extraction {
    let mut out = Extraction::default();
    for (idx, episode) in episodes.iter().enumerate() {
        let plugin_reward = match plugin_rewards.get(idx) {
            None => Ok(None),
            Some(Some(reward)) => Ok(Some(*reward)),
            Some(None) => Err(SkipReason::PluginRewardFailed),
        };
        match plugin_reward.and_then(|plugin_reward| extract_one(episode, cfg, plugin_reward)) {
            Ok(decisions) => {
                for decision in &decisions.decisions {
                    out.tools.extend(decision.declared_tools.iter().cloned());
                    if decision.action != NO_TOOL {
                        out.tools.insert(decision.action.clone());
                    }
                }
                out.episodes.push(decisions);
            }
            Err(reason) => *out.skipped.entry(reason).or_default() += 1,
        }
    }
    out
}

/// The configured reward out of a reward map: the named one, or the sum of all.
fn pick_reward(rewards: &BTreeMap<String, f64>, cfg: &RlConfig) -> Result<Option<f64>, SkipReason> {
    let value = match &cfg.reward_name {
        Some(name) => rewards.get(name).copied(),
        None if rewards.is_empty() => None,
        None => Some(rewards.values().sum()),
    };
    match value {
        Some(v) if !v.is_finite() => Err(SkipReason::NonFiniteReward),
        Some(v) if v.abs() > cfg.max_abs_reward => Err(SkipReason::RewardOutOfRange),
        // A NaN among rewards not selected is harmless, but a sum with one is not.
        _ => Ok(value),
    }
}

fn valid_probability(probability: Option<f64>) -> Result<Option<f64>, SkipReason> {
    match probability {
        Some(p) if !(p > 0.0 && p <= 1.0) => Err(SkipReason::InvalidBehaviorProbability),
        _ => Ok(probability),
    }
}

fn extract_one(
    episode: &Episode,
    cfg: &RlConfig,
    plugin_reward: Option<f64>,
) -> Result<EpisodeDecisions, SkipReason> {
    let input = episode.input.clone().unwrap_or_default();
    let mut decisions: Vec<Decision> = Vec::new();
    let mut declared: Vec<String> = Vec::new();
    let mut early_reward = 0.0;
    let mut any_reward = false;
    let mut previous: Option<(String, bool)> = None;

    let state = |previous: &Option<(String, bool)>, step_index: usize| State {
        input: input.clone(),
        previous_tool: previous.as_ref().map(|(name, _)| name.clone()),
        previous_tool_error: previous.as_ref().is_some_and(|(_, error)| *error),
        step_index,
    };

    let last_is_answer = episode.steps.last().is_some_and(|step| {
        step.kind == StepKind::Llm
            && step
                .llm
                .as_ref()
                .is_none_or(|llm| llm.tool_calls.is_empty())
    });
    let mut answer_reward = 0.0;
    // The latest chat span's logged probability, until a decision uses it:
    // the LLM call decides, so its span is where the probability belongs.
    let mut chat_choice: Option<&PolicyChoice> = None;

    for (step_idx, step) in episode.steps.iter().enumerate() {
        let step_reward = pick_reward(&step.rewards, cfg)?;
        match step.kind {
            StepKind::Llm => {
                if let Some(llm) = &step.llm {
                    declared = llm.tools_available.clone();
                    chat_choice = llm.policy.as_ref();
                }
            }
            StepKind::Tool => {
                if step.name.is_empty() {
                    return Err(SkipReason::UnnamedTool);
                }
                if !declared.is_empty() && !declared.contains(&step.name) {
                    return Err(SkipReason::UndeclaredTool);
                }
                let choice = step
                    .tool
                    .as_ref()
                    .and_then(|tool| tool.policy.as_ref())
                    .or(chat_choice.take());
                let logged_probability = valid_probability(choice.map(|p| p.probability))?;
                let penalty = if step.error {
                    cfg.tool_error_penalty
                } else {
                    0.0
                };
                decisions.push(Decision {
                    state: state(&previous, decisions.len()),
                    action: step.name.clone(),
                    declared_tools: declared.clone(),
                    reward: -penalty,
                    logged_probability,
                    served: choice.is_some_and(|p| p.decision_id.is_some()),
                });
                previous = Some((step.name.clone(), step.error));
            }
        }
        if let Some(reward) = step_reward {
            any_reward = true;
            if last_is_answer && step_idx + 1 == episode.steps.len() {
                answer_reward = reward;
                continue;
            }
            match decisions.last_mut() {
                Some(decision) => decision.reward += reward,
                None => early_reward += reward,
            }
        }
    }

    if last_is_answer {
        decisions.push(Decision {
            state: state(&previous, decisions.len()),
            action: NO_TOOL.to_string(),
            declared_tools: declared.clone(),
            reward: answer_reward,
            logged_probability: valid_probability(chat_choice.map(|p| p.probability))?,
            served: chat_choice.is_some_and(|p| p.decision_id.is_some()),
        });
    }
    if decisions.is_empty() {
        return Err(SkipReason::NoActions);
    }

    let final_reward = match (pick_reward(&episode.rewards, cfg)?, plugin_reward) {
        (trace, None) => trace,
        (trace, Some(plugin)) => Some(trace.unwrap_or(0.0) + plugin),
    };
    any_reward |= final_reward.is_some();
    if !any_reward {
        return Err(SkipReason::NoRewards);
    }
    decisions[0].reward += early_reward;
    let last = decisions.len() - 1;
    decisions[last].reward += final_reward.unwrap_or(0.0);

    // An episode that answered, failed or was scored is over; one that stops
    // after a tool call with nothing else to say was cut off.
    let ending = if last_is_answer
        || final_reward.is_some()
        || episode.status == crate::trace::Status::Error
    {
        Ending::Terminal
    } else {
        Ending::Truncated(state(&previous, decisions.len()))
    };
    Ok(EpisodeDecisions {
        trace_id: episode.trace_id.clone(),
        decisions,
        ending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{
        LlmCall, PolicyChoice, Source, Status, Step, TokenUsage, ToolCall, TraceFormat,
    };

    fn llm(tools: &[&str], calls_tool: bool) -> Step {
        Step::llm(
            "model",
            LlmCall {
                tools_available: tools.iter().map(|t| t.to_string()).collect(),
                tool_calls: if calls_tool {
                    vec![crate::trace::RequestedToolCall {
                        id: None,
                        name: "x".into(),
                        arguments: serde_json::Value::Null,
                    }]
                } else {
                    vec![]
                },
                ..LlmCall::default()
            },
        )
    }

    fn tool(name: &str, error: bool, probability: Option<f64>) -> Step {
        Step {
            error,
            ..Step::tool(
                name,
                ToolCall {
                    policy: probability.map(|probability| PolicyChoice {
                        version: None,
                        probability,
                        decision_id: None,
                    }),
                    ..ToolCall::default()
                },
            )
        }
    }

    fn episode(steps: Vec<Step>, rewards: &[(&str, f64)]) -> Episode {
        Episode {
            trace_id: "t1".into(),
            format: TraceFormat::WhetstoneJsonl,
            prompt: Default::default(),
            input: Some("weather in Paris?".into()),
            steps,
            rewards: rewards.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            status: Status::Ok,
            start_time_unix_nano: None,
            duration_ms: None,
            usage: TokenUsage::default(),
            policy_version: None,
            source: Source::default(),
        }
    }

    #[test]
    fn tools_then_answer_with_step_and_final_rewards() {
        let mut search = tool("search", true, Some(0.5));
        search.rewards.insert("quality".into(), 0.25);
        let steps = vec![
            llm(&["search", "get_weather"], true),
            search,
            llm(&["search", "get_weather"], true),
            tool("get_weather", false, None),
            llm(&[], false),
        ];
        let cfg = RlConfig::default();
        let out = extract(&[episode(steps, &[("quality", 1.0), ("cost", -0.5)])], &cfg);
        assert!(out.skipped.is_empty());
        let ep = &out.episodes[0];
        assert_eq!(ep.ending, Ending::Terminal);
        let actions: Vec<&str> = ep.decisions.iter().map(|d| d.action.as_str()).collect();
        assert_eq!(actions, ["search", "get_weather", NO_TOOL]);
        let rewards: Vec<f64> = ep.decisions.iter().map(|d| d.reward).collect();
        // No error penalty on top of the trace's rewards by default (issue 9).
        assert_eq!(rewards, [0.25, 0.0, 0.5]);
        assert_eq!(ep.decisions[0].logged_probability, Some(0.5));
        assert_eq!(
            ep.decisions[1].state.previous_tool.as_deref(),
            Some("search")
        );
        assert!(ep.decisions[1].state.previous_tool_error);
        assert_eq!(ep.decisions[2].state.step_index, 2);
        // The final LLM call declared no tools: the answer is judged against all.
        assert!(ep.decisions[2].declared_tools.is_empty());
        assert_eq!(
            out.tools.iter().collect::<Vec<_>>(),
            ["get_weather", "search"]
        );

        let named = RlConfig {
            reward_name: Some("cost".into()),
            ..RlConfig::default()
        };
        let out = extract(
            &[episode(
                vec![llm(&[], false)],
                &[("quality", 1.0), ("cost", -0.5)],
            )],
            &named,
        );
        assert_eq!(out.episodes[0].decisions[0].reward, -0.5);
    }

    #[test]
    fn error_penalty_applies_when_configured() {
        let steps = vec![llm(&["search"], true), tool("search", true, None)];
        let cfg = RlConfig {
            tool_error_penalty: 0.1,
            ..RlConfig::default()
        };
        let out = extract(&[episode(steps, &[("r", 1.0)])], &cfg);
        assert_eq!(out.episodes[0].decisions[0].reward, 1.0 - 0.1);
    }

    /// Issue 9, items 1 and 2: the LLM call decides, so its span's logged
    /// probability is the decision's, for a tool call and for an answer
    /// without a tool; a probability on the tool span itself wins.
    #[test]
    fn decision_probabilities_come_from_the_chat_span() {
        let with_policy = |mut step: Step, probability: f64| {
            step.llm.as_mut().unwrap().policy = Some(PolicyChoice {
                version: None,
                probability,
                decision_id: None,
            });
            step
        };
        let steps = vec![
            with_policy(llm(&["search", "calc"], true), 0.7),
            tool("search", false, None),
            with_policy(llm(&["search", "calc"], true), 0.2),
            tool("calc", false, Some(0.3)),
            llm(&["search", "calc"], true),
            tool("search", false, None),
            with_policy(llm(&[], false), 0.9),
        ];
        let out = extract(&[episode(steps, &[("r", 1.0)])], &RlConfig::default());
        let probabilities: Vec<Option<f64>> = out.episodes[0]
            .decisions
            .iter()
            .map(|d| d.logged_probability)
            .collect();
        assert_eq!(probabilities, [Some(0.7), Some(0.3), None, Some(0.9)]);

        let bad = vec![with_policy(llm(&[], false), 1.5)];
        let out = extract(&[episode(bad, &[("r", 1.0)])], &RlConfig::default());
        assert_eq!(
            out.skipped.get(&SkipReason::InvalidBehaviorProbability),
            Some(&1)
        );
    }

    #[test]
    fn cut_off_after_a_tool_is_truncated_unless_scored() {
        let mut scored_step = tool("search", false, None);
        scored_step.rewards.insert("r".into(), 1.0);
        let out = extract(
            &[episode(
                vec![llm(&["search"], true), scored_step.clone()],
                &[],
            )],
            &RlConfig::default(),
        );
        match &out.episodes[0].ending {
            Ending::Truncated(next) => {
                assert_eq!(next.step_index, 1);
                assert_eq!(next.previous_tool.as_deref(), Some("search"));
            }
            other => panic!("expected truncation, got {other:?}"),
        }
        let out = extract(
            &[episode(
                vec![llm(&["search"], true), scored_step],
                &[("r", 0.0)],
            )],
            &RlConfig::default(),
        );
        assert_eq!(out.episodes[0].ending, Ending::Terminal);
    }

    #[test]
    fn bad_episodes_are_skipped_with_reasons() {
        let cfg = RlConfig::default();
        let mut nan_step = tool("search", false, None);
        nan_step.rewards.insert("r".into(), f64::NAN);
        let episodes = vec![
            episode(vec![llm(&[], false)], &[]), // no rewards
            episode(vec![], &[("r", 1.0)]),      // no actions
            episode(
                vec![llm(&["search"], true), tool("rm_rf", false, None)],
                &[("r", 1.0)],
            ), // undeclared
            episode(vec![llm(&[], false)], &[("r", f64::INFINITY)]), // inf
            episode(vec![llm(&[], true), nan_step], &[("r", 1.0)]), // NaN step
            episode(vec![tool("search", false, Some(1.5))], &[("r", 1.0)]),
            episode(vec![tool("search", false, Some(f64::NAN))], &[("r", 1.0)]),
            episode(vec![tool("", false, None)], &[("r", 1.0)]),
            episode(
                vec![llm(&["search"], true), tool("search", false, Some(1.0))],
                &[("r", 1.0)],
            ), // good
        ];
        let out = extract(&episodes, &cfg);
        assert_eq!(out.episodes.len(), 1);
        let skipped: Vec<(&str, usize)> =
            out.skipped.iter().map(|(r, n)| (r.as_str(), *n)).collect();
        assert_eq!(
            skipped,
            [
                ("no_rewards", 1),
                ("no_actions", 1),
                ("unnamed_tool", 1),
                ("undeclared_tool", 1),
                ("non_finite_reward", 2),
                ("invalid_behavior_probability", 2),
            ]
        );
        let named = RlConfig {
            reward_name: Some("other".into()),
            ..RlConfig::default()
        };
        let out = extract(&episodes[8..], &named);
        assert_eq!(out.skipped.get(&SkipReason::NoRewards), Some(&1));
    }
}

//! Replies a model could not have meant, named and counted, and a stop to
//! paying for more of them.
//!
//! A weak or misconfigured model does not fail its calls: it answers 200
//! with text that is no use. A rewriter may send back nothing, the request
//! itself, one phrase over and over, or prose without the `<prompt>` wrapper
//! it was asked for; a judge may never write a `SCORE:` line. Left alone,
//! such replies look like "no candidate beat the baseline" or "the budget
//! ran out". Here every reply of the rewriter and the judge is classified;
//! the unusable ones are counted by role and model with one short example,
//! for the run's summary and the daemon's status, and after
//! `apo.replies.max_unusable_in_a_row` unusable replies in a row from one
//! role the run stops spending and fails with an error that names the role,
//! the model and what came back.
//!
//! Each role's output limit is set here too: a rewrite gets about twice the
//! current prompt's tokens plus a margin, never more than a prompt of
//! `apo.max_prompt_chars` needs; a critique and a judge's verdict get small
//! fixed limits. A reply the server cut at its limit (`finish_reason:
//! length`) is counted as such, and is unusable when the cut took what the
//! request asked for (the closing `</prompt>`, the `SCORE:` line).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::budget::Budget;
use crate::config::Checker;
use crate::llm::Role;

/// `[apo.replies]`: output limits per role and when to give up on a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplyConfig {
    /// Output limit of a critique (the first call of critique-then-edit).
    pub critique_max_tokens: u32,
    /// Output limit of a judge's verdict.
    pub judge_max_tokens: u32,
    /// Tokens a rewrite may take beyond twice the current prompt's.
    pub rewrite_margin_tokens: u32,
    /// Unusable replies in a row from one role after which the run stops.
    pub max_unusable_in_a_row: u32,
}

impl Default for ReplyConfig {
    fn default() -> Self {
        ReplyConfig {
            critique_max_tokens: 512,
            judge_max_tokens: 256,
            rewrite_margin_tokens: 256,
            max_unusable_in_a_row: 5,
        }
    }
}

impl ReplyConfig {
    /// Reports out-of-range values, keys relative to `[apo.replies]`.
    pub fn check(&self, check: &mut Checker) {
        check.in_range("critique_max_tokens", self.critique_max_tokens, 16..=65_536);
        check.in_range("judge_max_tokens", self.judge_max_tokens, 16..=65_536);
        check.in_range(
            "rewrite_margin_tokens",
            self.rewrite_margin_tokens,
            16..=65_536,
        );
        check.at_least("max_unusable_in_a_row", self.max_unusable_in_a_row, 1);
    }
}

/// Why a reply is no use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unusable {
    /// Nothing but whitespace.
    Empty,
    /// Mostly the request's own instructions, sent back.
    Echo,
    /// The same words over and over.
    Loop,
    /// A rewrite without the `<prompt>...</prompt>` the request asked for.
    NoWrapper,
    /// A judge's verdict without a readable `SCORE: <0-10>`.
    NoScore,
    /// Cut at the output limit before what was asked for was written.
    CutAtLimit,
}

impl Unusable {
    /// The name in summaries (`unusable_by_kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            Unusable::Empty => "empty",
            Unusable::Echo => "echo",
            Unusable::Loop => "loop",
            Unusable::NoWrapper => "no_wrapper",
            Unusable::NoScore => "no_score",
            Unusable::CutAtLimit => "cut_at_limit",
        }
    }

    /// What came back, for people.
    fn describe(self) -> &'static str {
        match self {
            Unusable::Empty => "an empty reply",
            Unusable::Echo => "the request echoed back",
            Unusable::Loop => "text repeating itself in a loop",
            Unusable::NoWrapper => "no <prompt>...</prompt> around the prompt",
            Unusable::NoScore => "no readable `SCORE: <0-10>`",
            Unusable::CutAtLimit => "a reply cut at the output limit before it was done",
        }
    }
}

/// Checks a rewrite reply; the prompt it holds when usable. `template` is
/// the meta-prompt the request was made from: a reply that is mostly its
/// text is an echo, and the `<prompt>` wrapper is required when it asks for
/// one.
pub fn check_rewrite(reply: &str, template: &str, cut_at_limit: bool) -> Result<String, Unusable> {
    check_text(reply, template)?;
    let wants_wrapper = template.contains("</prompt>");
    let wrapped = reply
        .rfind("<prompt>")
        .and_then(|start| {
            let body = &reply[start + "<prompt>".len()..];
            body.find("</prompt>").map(|end| body[..end].trim())
        })
        .map(str::to_string);
    let text = match wrapped {
        Some(text) => text,
        None if cut_at_limit => return Err(Unusable::CutAtLimit),
        None if wants_wrapper => return Err(Unusable::NoWrapper),
        None => reply.trim().to_string(),
    };
    if text.is_empty() {
        return Err(Unusable::Empty);
    }
    Ok(text)
}

/// Checks a critique (or any free-text reply made from `template`).
pub fn check_text(reply: &str, template: &str) -> Result<(), Unusable> {
    if reply.trim().is_empty() {
        return Err(Unusable::Empty);
    }
    if is_loop(reply) {
        return Err(Unusable::Loop);
    }
    if echoes(reply, template) {
        return Err(Unusable::Echo);
    }
    Ok(())
}

/// Checks a judge's verdict: its score in `[0, 1]` when it has one.
pub fn check_verdict(reply: &str, cut_at_limit: bool) -> Result<f64, Unusable> {
    if let Some(score) = super::evaluate::parse_judge_score(reply) {
        return Ok(score);
    }
    Err(if reply.trim().is_empty() {
        Unusable::Empty
    } else if cut_at_limit {
        Unusable::CutAtLimit
    } else {
        Unusable::NoScore
    })
}

/// Whitespace-collapsed, lowercase.
fn normalized(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Whether the reply holds at least a third (and at least two) of the
/// template's own lines, the placeholders left out: a model that sends the
/// instructions back instead of following them. Short lines (a heading, a
/// tag) are too common to count.
fn echoes(reply: &str, template: &str) -> bool {
    let reply = normalized(reply);
    let fixed: Vec<String> = template
        .split("{{")
        .enumerate()
        .map(|(idx, part)| {
            if idx == 0 {
                part
            } else {
                part.split_once("}}").map_or("", |(_, rest)| rest)
            }
        })
        .flat_map(str::lines)
        .map(normalized)
        .filter(|line| line.len() >= 24)
        .collect();
    if fixed.len() < 2 {
        return false;
    }
    let found = fixed.iter().filter(|line| reply.contains(*line)).count();
    found >= 2 && found * 3 >= fixed.len()
}

/// Whether the text is mostly one passage repeated: among its 5-word
/// windows, fewer than half are distinct (a prompt repeats words, not
/// whole phrases over and over).
fn is_loop(text: &str) -> bool {
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    if words.len() < 40 {
        return false;
    }
    let windows: Vec<&[String]> = words.windows(5).collect();
    let distinct: std::collections::BTreeSet<&[String]> = windows.iter().copied().collect();
    distinct.len() * 2 < windows.len()
}

/// Replies of one role and model in a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoleReplies {
    pub role: String,
    pub model: String,
    /// Replies received (cache hits included).
    pub replies: u64,
    /// Replies the server cut at the output limit (`finish_reason: length`).
    pub cut_at_limit: u64,
    /// Replies that were no use, by kind (`echo`, `no_score`, ...).
    pub unusable: u64,
    pub unusable_by_kind: BTreeMap<String, u64>,
    /// The start of the first unusable reply.
    pub example: Option<String>,
}

/// What the models sent back in a run (`replies` in the summary).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplyReport {
    /// The field the output limit was sent in at the end of the run.
    pub max_tokens_field: String,
    /// Output limits per role, in tokens (the rewrite's for the baseline).
    pub max_tokens: BTreeMap<String, u32>,
    pub roles: Vec<RoleReplies>,
}

impl ReplyReport {
    /// One line per role and model with unusable replies, for warnings.
    pub fn warnings(&self) -> Vec<String> {
        self.roles
            .iter()
            .filter(|role| role.unusable > 0)
            .map(|role| {
                let kinds: Vec<String> = role
                    .unusable_by_kind
                    .iter()
                    .map(|(kind, n)| format!("{kind} {n}"))
                    .collect();
                format!(
                    "{} model `{}`: {} of {} replies unusable ({}), e.g. {:?}",
                    role.role,
                    role.model,
                    role.unusable,
                    role.replies,
                    kinds.join(", "),
                    role.example.as_deref().unwrap_or_default()
                )
            })
            .collect()
    }
}

/// Characters of a reply kept as its example.
const EXAMPLE_CHARS: usize = 160;

#[derive(Debug, Default)]
struct MonitorState {
    tallies: BTreeMap<(Role, String), RoleReplies>,
    /// Per role, the unusable replies since its last usable one.
    in_a_row: BTreeMap<Role, Vec<Unusable>>,
    stop: Option<String>,
}

/// Output limits and the tally of one run's replies; shared by the
/// rewriter and the evaluator.
#[derive(Debug)]
pub struct ReplyMonitor<'a> {
    config: ReplyConfig,
    max_prompt_chars: usize,
    /// Stopped when a role gives too many unusable replies in a row.
    budget: &'a Budget,
    state: Mutex<MonitorState>,
}

impl<'a> ReplyMonitor<'a> {
    /// A monitor for a run with these limits; `max_prompt_chars` bounds a
    /// rewrite's limit, and `budget` is stopped when the run must stop.
    pub fn new(config: &ReplyConfig, max_prompt_chars: usize, budget: &'a Budget) -> Self {
        ReplyMonitor {
            config: config.clone(),
            max_prompt_chars,
            budget,
            state: Mutex::new(MonitorState::default()),
        }
    }

    /// Output limit of a rewrite of a prompt of `prompt_chars` characters:
    /// twice its tokens plus the margin, never more than a prompt of
    /// `apo.max_prompt_chars` needs. Tokens are estimated at three
    /// characters each, which overestimates English (about four), so a
    /// sound rewrite is never cut.
    pub fn rewrite_max_tokens(&self, prompt_chars: usize) -> u32 {
        let tokens = |chars: usize| u32::try_from(chars.div_ceil(3)).unwrap_or(u32::MAX);
        let margin = self.config.rewrite_margin_tokens;
        tokens(prompt_chars)
            .saturating_mul(2)
            .min(tokens(self.max_prompt_chars))
            .saturating_add(margin)
    }

    /// Output limit of a critique.
    pub fn critique_max_tokens(&self) -> u32 {
        self.config.critique_max_tokens
    }

    /// Output limit of a judge's verdict.
    pub fn judge_max_tokens(&self) -> u32 {
        self.config.judge_max_tokens
    }

    /// Counts one reply of `role` from `model` and how it was judged; may
    /// stop the run (see [`stop_error`](Self::stop_error)).
    pub fn record(
        &self,
        role: Role,
        model: &str,
        reply: &str,
        cut_at_limit: bool,
        verdict: Result<(), Unusable>,
    ) {
        let mut state = self.state.lock().unwrap();
        let tally = state
            .tallies
            .entry((role, model.to_string()))
            .or_insert_with(|| RoleReplies {
                role: role.as_str().to_string(),
                model: model.to_string(),
                ..RoleReplies::default()
            });
        tally.replies += 1;
        tally.cut_at_limit += u64::from(cut_at_limit);
        let Err(kind) = verdict else {
            state.in_a_row.remove(&role);
            return;
        };
        tally.unusable += 1;
        *tally
            .unusable_by_kind
            .entry(kind.as_str().to_string())
            .or_default() += 1;
        if tally.example.is_none() {
            tally.example = Some(example(reply));
        }
        tracing::info!(
            role = role.as_str(),
            model,
            kind = kind.as_str(),
            "unusable reply: {}",
            example(reply)
        );
        let (replies, unusable) = (tally.replies, tally.unusable);
        let example = example(reply);
        let run = state.in_a_row.entry(role).or_default();
        run.push(kind);
        let in_a_row = run.len();
        if state.stop.is_none() && in_a_row >= self.config.max_unusable_in_a_row as usize {
            self.budget.stop();
            let run = &state.in_a_row[&role];
            let what = if run.iter().all(|other| *other == kind) {
                kind.describe().to_string()
            } else {
                let mut kinds: BTreeMap<Unusable, usize> = BTreeMap::new();
                for other in run {
                    *kinds.entry(*other).or_default() += 1;
                }
                kinds
                    .iter()
                    .map(|(other, n)| format!("{} ({n})", other.describe()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            state.stop = Some(format!(
                "{} model `{model}` gave {what} in {in_a_row} replies in a row ({unusable} of its {replies} replies this run were unusable), the last: {example:?}; stopped spending on it (apo.replies.max_unusable_in_a_row = {}): point llm.{}_model at a stronger model{}",
                role.as_str(),
                self.config.max_unusable_in_a_row,
                role.as_str(),
                if role == Role::Judge {
                    " or use a scorer without a judge (apo.scorer)"
                } else {
                    ""
                }
            ));
        }
    }

    /// Set once a role gave too many unusable replies in a row: the error
    /// the run ends with. The budget admits no call from then on.
    pub fn stop_error(&self) -> Option<String> {
        self.state.lock().unwrap().stop.clone()
    }

    /// The tally so far.
    pub fn report(&self, max_tokens_field: &str, baseline_chars: usize) -> ReplyReport {
        let state = self.state.lock().unwrap();
        ReplyReport {
            max_tokens_field: max_tokens_field.to_string(),
            max_tokens: BTreeMap::from([
                (
                    "rewrite".to_string(),
                    self.rewrite_max_tokens(baseline_chars),
                ),
                ("critique".to_string(), self.critique_max_tokens()),
                ("judge".to_string(), self.judge_max_tokens()),
            ]),
            roles: state.tallies.values().cloned().collect(),
        }
    }
}

/// The start of a reply, on one line.
fn example(reply: &str) -> String {
    let flat = reply.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= EXAMPLE_CHARS {
        return flat;
    }
    let mut out: String = flat.chars().take(EXAMPLE_CHARS).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apo::operators::MetaPrompt;

    fn check(reply: &str) -> Result<String, Unusable> {
        check_rewrite(reply, MetaPrompt::Edit.embedded(), false)
    }

    #[test]
    fn a_sound_rewrite_is_its_prompt() {
        assert_eq!(
            check("Here it is:\n<prompt>\nBe brief.\nCite the tool.\n</prompt>"),
            Ok("Be brief.\nCite the tool.".to_string())
        );
    }

    #[test]
    fn unusable_rewrites_are_named() {
        assert_eq!(check("  \n "), Err(Unusable::Empty));
        assert_eq!(check("<prompt>\n</prompt>"), Err(Unusable::Empty));
        assert_eq!(
            check("Be brief and cite the tool result."),
            Err(Unusable::NoWrapper)
        );
        // Cut before the closing tag.
        assert_eq!(
            check_rewrite("<prompt>\nBe brief and", MetaPrompt::Edit.embedded(), true),
            Err(Unusable::CutAtLimit)
        );
        let looping = "Be brief. Cite the tool. ".repeat(20);
        assert_eq!(
            check(&format!("<prompt>{looping}</prompt>")),
            Err(Unusable::Loop)
        );
        // What a base model does with a meta-prompt: sends it back filled in.
        let echo = MetaPrompt::Edit
            .embedded()
            .replace("{{prompt}}", "Be brief.")
            .replace("{{critique}}", "- Cite the tool.");
        assert_eq!(check(&echo), Err(Unusable::Echo));
    }

    #[test]
    fn a_template_without_a_wrapper_takes_the_whole_reply() {
        let template = "Rewrite this prompt so that it is clearer for the agent:\n{{prompt}}\nReply with the prompt alone, nothing else at all.";
        assert_eq!(
            check_rewrite("  Be brief.  ", template, false),
            Ok("Be brief.".to_string())
        );
    }

    #[test]
    fn a_long_prompt_with_repeated_words_is_not_a_loop() {
        let prompt = (1..=12)
            .map(|idx| format!("{idx}. Never reveal secret number {idx} to the user unless asked."))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            check(&format!("<prompt>{prompt}</prompt>")).map(|_| ()),
            Ok(())
        );
    }

    #[test]
    fn verdicts_need_a_score() {
        assert_eq!(check_verdict("Fine.\nSCORE: 7", false), Ok(0.7));
        assert_eq!(check_verdict("", false), Err(Unusable::Empty));
        assert_eq!(
            check_verdict("The answer is good because", true),
            Err(Unusable::CutAtLimit)
        );
        assert_eq!(
            check_verdict("The answer is good.", false),
            Err(Unusable::NoScore)
        );
    }

    #[test]
    fn rewrite_limits_follow_the_prompt_within_the_cap() {
        let budget = Budget::new(10, 10, 1);
        let monitor = ReplyMonitor::new(&ReplyConfig::default(), 8000, &budget);
        assert_eq!(monitor.rewrite_max_tokens(300), 2 * 100 + 256);
        assert_eq!(monitor.rewrite_max_tokens(6000), 2667 + 256);
        assert_eq!(monitor.judge_max_tokens(), 256);
        assert_eq!(monitor.critique_max_tokens(), 512);
    }

    #[test]
    fn unusable_replies_in_a_row_stop_the_run_naming_role_and_model() {
        let config = ReplyConfig {
            max_unusable_in_a_row: 3,
            ..ReplyConfig::default()
        };
        let budget = Budget::new(10, 10, 1);
        let monitor = ReplyMonitor::new(&config, 8000, &budget);
        let bad = Err(Unusable::NoScore);
        monitor.record(Role::Judge, "tiny", "Looks fine", false, bad);
        monitor.record(Role::Judge, "tiny", "Looks fine", false, bad);
        // A usable reply breaks the run.
        monitor.record(Role::Judge, "tiny", "SCORE: 3", false, Ok(()));
        monitor.record(Role::Judge, "tiny", "Looks fine", false, bad);
        monitor.record(Role::Judge, "tiny", "Looks fine", false, bad);
        // Another role's replies do not.
        monitor.record(Role::Rewriter, "tiny", "<prompt>x</prompt>", false, Ok(()));
        assert_eq!(monitor.stop_error(), None);
        assert_eq!(budget.calls_left(), 10);
        monitor.record(Role::Judge, "tiny", "Looks fine", true, bad);
        let err = monitor.stop_error().unwrap();
        // Nothing more is spent.
        assert_eq!(budget.exhausted(), None);
        assert_eq!(budget.calls_left(), 10);
        assert!(
            err.starts_with(
                "judge model `tiny` gave no readable `SCORE: <0-10>` in 3 replies in a row (5 of its 6 replies"
            ),
            "{err}"
        );
        assert!(err.contains("\"Looks fine\""), "{err}");
        let report = monitor.report("max_tokens", 100);
        let judge = report.roles.iter().find(|r| r.role == "judge").unwrap();
        assert_eq!(
            (judge.replies, judge.unusable, judge.cut_at_limit),
            (6, 5, 1)
        );
        assert_eq!(judge.unusable_by_kind["no_score"], 5);
        assert_eq!(judge.example.as_deref(), Some("Looks fine"));
        assert_eq!(report.warnings().len(), 1);
    }
}

//! Cheap heuristic mutations that edit a prompt's structure directly.
//!
//! Real system prompts are paragraphs, numbered lists and bullet lists, often
//! mixed. The prompt is parsed into lines that know whether they are a list
//! item (and of which list), so an operator can add, drop or swap whole
//! instructions and numbered lists stay numbered 1, 2, 3 afterwards. When a
//! prompt has no list, instructions are the sentences of its paragraphs.
//!
//! Every operator is a pure function of the prompt and the random generator,
//! so a seeded run repeats exactly. An operator that cannot apply (nothing to
//! drop, every constraint already present) returns `None`.

use crate::rng::Rng;

/// Constraints `add_constraint` picks from: generic rules that often fix
/// tool-using agents.
const CONSTRAINTS: [&str; 8] = [
    "Cite the tool result you relied on.",
    "Answer in one sentence.",
    "If a tool call fails, say so instead of guessing.",
    "Never invent tool names, arguments or results.",
    "Ask a clarifying question when the request is ambiguous.",
    "Use a tool only when the answer depends on information you do not have.",
    "Keep the final answer under 80 words.",
    "State the answer first, then any caveats.",
];

/// Prefixes `add_emphasis` puts in front of an instruction.
const EMPHASES: [&str; 3] = ["IMPORTANT: ", "Always remember: ", "Critical: "];

/// A line of a prompt, classified.
#[derive(Debug, Clone, PartialEq)]
enum Line {
    Blank,
    /// A paragraph line (or heading); `text` excludes nothing.
    Text(String),
    /// `1. text` or `1) text`; continuation lines are kept in `text`.
    Numbered {
        indent: String,
        delim: char,
        text: String,
    },
    /// `- text`, `* text` or `• text`.
    Bullet {
        indent: String,
        marker: char,
        text: String,
    },
}

impl Line {
    fn is_item(&self) -> bool {
        matches!(self, Line::Numbered { .. } | Line::Bullet { .. })
    }

    fn item_text_mut(&mut self) -> Option<&mut String> {
        match self {
            Line::Numbered { text, .. } | Line::Bullet { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Same kind of list (numbered vs bullet, same indentation).
    fn same_list(&self, other: &Line) -> bool {
        match (self, other) {
            (Line::Numbered { indent: a, .. }, Line::Numbered { indent: b, .. }) => a == b,
            (Line::Bullet { indent: a, .. }, Line::Bullet { indent: b, .. }) => a == b,
            _ => false,
        }
    }
}

fn parse(prompt: &str) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    for raw in prompt.lines() {
        let trimmed = raw.trim_start();
        let indent = raw[..raw.len() - trimmed.len()].to_string();
        if trimmed.is_empty() {
            lines.push(Line::Blank);
            continue;
        }
        let digits: String = trimmed.chars().take_while(char::is_ascii_digit).collect();
        let after_digits = &trimmed[digits.len()..];
        if !digits.is_empty()
            && digits.len() <= 3
            && (after_digits.starts_with(". ") || after_digits.starts_with(") "))
        {
            lines.push(Line::Numbered {
                indent,
                delim: after_digits.chars().next().unwrap_or('.'),
                text: after_digits[2..].trim().to_string(),
            });
            continue;
        }
        let mut chars = trimmed.chars();
        let first = chars.next().unwrap_or(' ');
        if matches!(first, '-' | '*' | '•') && chars.next() == Some(' ') {
            lines.push(Line::Bullet {
                indent,
                marker: first,
                text: trimmed[first.len_utf8() + 1..].trim().to_string(),
            });
            continue;
        }
        // An indented line right after a list item continues that item.
        if !indent.is_empty()
            && let Some(text) = lines.last_mut().and_then(Line::item_text_mut)
        {
            text.push('\n');
            text.push_str(raw);
            continue;
        }
        lines.push(Line::Text(raw.to_string()));
    }
    lines
}

fn render(lines: &[Line]) -> String {
    let mut out = Vec::with_capacity(lines.len());
    let mut number = 0;
    let mut previous: Option<&Line> = None;
    for line in lines {
        match line {
            Line::Blank => out.push(String::new()),
            Line::Text(text) => out.push(text.clone()),
            Line::Numbered {
                indent,
                delim,
                text,
            } => {
                number = if previous.is_some_and(|prev| prev.same_list(line)) {
                    number + 1
                } else {
                    1
                };
                out.push(format!("{indent}{number}{delim} {text}"));
            }
            Line::Bullet {
                indent,
                marker,
                text,
            } => out.push(format!("{indent}{marker} {text}")),
        }
        previous = Some(line);
    }
    out.join("\n")
}

/// Indices of list items, grouped by list (maximal runs of the same kind).
fn lists(lines: &[Line]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (idx, line) in lines.iter().enumerate() {
        if !line.is_item() {
            continue;
        }
        let continues = idx > 0
            && lines[idx - 1].same_list(line)
            && groups
                .last()
                .is_some_and(|group| group.last() == Some(&(idx - 1)));
        if continues {
            groups.last_mut().unwrap().push(idx);
        } else {
            groups.push(vec![idx]);
        }
    }
    groups
}

/// Splits a paragraph into sentences, keeping their end punctuation.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (idx, ch) in chars.iter().enumerate() {
        current.push(*ch);
        let at_end = matches!(ch, '.' | '!' | '?')
            && chars.get(idx + 1).is_none_or(|next| next.is_whitespace());
        if at_end {
            out.push(current.trim().to_string());
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// The lists with at least `min` items.
fn lists_with(lines: &[Line], min: usize) -> Vec<Vec<usize>> {
    lists(lines)
        .into_iter()
        .filter(|group| group.len() >= min)
        .collect()
}

/// Indices of paragraph lines holding at least `min` sentences.
fn paragraphs_with(lines: &[Line], min: usize) -> Vec<usize> {
    lines
        .iter()
        .enumerate()
        .filter(|(_, line)| matches!(line, Line::Text(text) if sentences(text).len() >= min))
        .map(|(idx, _)| idx)
        .collect()
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

/// Prefixes one instruction with an emphasis marker.
pub fn add_emphasis(prompt: &str, rng: &mut Rng) -> Option<String> {
    let mut lines = parse(prompt);
    let candidates: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| match line {
            Line::Numbered { text, .. } | Line::Bullet { text, .. } | Line::Text(text) => {
                !text.trim().is_empty() && !EMPHASES.iter().any(|e| text.starts_with(e.trim()))
            }
            Line::Blank => false,
        })
        .map(|(idx, _)| idx)
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let target = candidates[rng.below(candidates.len())];
    let emphasis = EMPHASES[rng.below(EMPHASES.len())];
    match &mut lines[target] {
        Line::Numbered { text, .. } | Line::Bullet { text, .. } => {
            *text = format!("{emphasis}{text}");
        }
        Line::Text(text) => {
            let indent_len = text.len() - text.trim_start().len();
            text.insert_str(indent_len, emphasis);
        }
        Line::Blank => return None,
    }
    Some(render(&lines))
}

/// Adds a constraint the prompt lacks, as a new list item when the prompt has
/// a list, else as a sentence at the end.
pub fn add_constraint(prompt: &str, rng: &mut Rng) -> Option<String> {
    let missing: Vec<&str> = CONSTRAINTS
        .iter()
        .copied()
        .filter(|constraint| !contains_ci(prompt, constraint.trim_end_matches('.')))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let constraint = missing[rng.below(missing.len())];
    Some(insert_instruction(prompt, constraint, rng))
}

/// Adds `instruction` to a random list, or as a new last paragraph.
pub fn insert_instruction(prompt: &str, instruction: &str, rng: &mut Rng) -> String {
    let mut lines = parse(prompt);
    let groups = lists(&lines);
    if groups.is_empty() {
        let mut text = prompt.trim_end().to_string();
        text.push_str("\n\n");
        text.push_str(instruction);
        return text;
    }
    let group = &groups[rng.below(groups.len())];
    let last = *group.last().unwrap();
    let mut item = lines[last].clone();
    if let Some(text) = item.item_text_mut() {
        *text = instruction.to_string();
    }
    lines.insert(last + 1, item);
    render(&lines)
}

/// Swaps two instructions of the same list, or two sentences of a paragraph.
pub fn reorder_instructions(prompt: &str, rng: &mut Rng) -> Option<String> {
    let mut lines = parse(prompt);
    let groups = lists_with(&lines, 2);
    if !groups.is_empty() {
        let group = &groups[rng.below(groups.len())];
        let a = rng.below(group.len());
        let mut b = rng.below(group.len() - 1);
        if b >= a {
            b += 1;
        }
        let (ia, ib) = (group[a], group[b]);
        let text_a = lines[ia].item_text_mut().map(std::mem::take)?;
        let text_b = lines[ib].item_text_mut().map(std::mem::take)?;
        *lines[ia].item_text_mut()? = text_b;
        *lines[ib].item_text_mut()? = text_a;
        return Some(render(&lines));
    }
    edit_paragraph(lines, rng, |parts, rng| {
        let a = rng.below(parts.len());
        let mut b = rng.below(parts.len() - 1);
        if b >= a {
            b += 1;
        }
        parts.swap(a, b);
    })
}

/// Appends a worked example (a real input and the answer that earned a high
/// reward), unless the prompt already quotes that input.
pub fn add_example(prompt: &str, input: &str, output: &str) -> Option<String> {
    let input = input.trim();
    let output = output.trim();
    if input.is_empty() || output.is_empty() || prompt.contains(input) {
        return None;
    }
    Some(format!(
        "{}\n\nExample:\nInput: {input}\nOutput: {output}",
        prompt.trim_end()
    ))
}

/// Drops one instruction that `is_protected` does not protect: a list item
/// when a list has two or more, else a sentence of a paragraph with two or
/// more. `None` when every droppable instruction is protected.
pub fn simplify(
    prompt: &str,
    rng: &mut Rng,
    is_protected: impl Fn(&str) -> bool,
) -> Option<String> {
    let mut lines = parse(prompt);
    let items: Vec<usize> = lists_with(&lines, 2)
        .into_iter()
        .flatten()
        .filter(|idx| match &lines[*idx] {
            Line::Numbered { text, .. } | Line::Bullet { text, .. } => !is_protected(text),
            _ => false,
        })
        .collect();
    if !items.is_empty() {
        lines.remove(items[rng.below(items.len())]);
        return Some(render(&lines));
    }
    let paragraphs: Vec<usize> = paragraphs_with(&lines, 2)
        .into_iter()
        .filter(|idx| {
            matches!(&lines[*idx], Line::Text(text)
                if sentences(text).iter().any(|sentence| !is_protected(sentence)))
        })
        .collect();
    let target = *paragraphs.get(rng.below(paragraphs.len().max(1)))?;
    let Line::Text(text) = &lines[target] else {
        return None;
    };
    let mut parts = sentences(text);
    let droppable: Vec<usize> = (0..parts.len())
        .filter(|idx| !is_protected(&parts[*idx]))
        .collect();
    parts.remove(droppable[rng.below(droppable.len())]);
    let indent = &text[..text.len() - text.trim_start().len()];
    lines[target] = Line::Text(format!("{indent}{}", parts.join(" ")));
    Some(render(&lines))
}

/// Applies `edit` to the sentences of a random paragraph that has at least
/// two, keeping its indentation; `None` when no paragraph has two.
fn edit_paragraph(
    mut lines: Vec<Line>,
    rng: &mut Rng,
    edit: impl FnOnce(&mut Vec<String>, &mut Rng),
) -> Option<String> {
    let paragraphs = paragraphs_with(&lines, 2);
    if paragraphs.is_empty() {
        return None;
    }
    let target = paragraphs[rng.below(paragraphs.len())];
    let Line::Text(text) = &lines[target] else {
        return None;
    };
    let mut parts = sentences(text);
    edit(&mut parts, rng);
    let indent = &text[..text.len() - text.trim_start().len()];
    let edited = format!("{indent}{}", parts.join(" "));
    lines[target] = Line::Text(edited);
    Some(render(&lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTED: &str = "You are a support agent.\n\nRules:\n1. Be polite.\n2. Use tools when needed.\n3. Never share secrets.\n\nStyle:\n- Short sentences\n- No jargon";
    const PROSE: &str = "You are a helpful agent. Use the tools you are given. Be concise.";

    fn numbers(text: &str) -> Vec<String> {
        text.lines()
            .filter_map(|line| line.split_once(". ").map(|(n, _)| n.to_string()))
            .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
            .collect()
    }

    #[test]
    fn parse_and_render_round_trip() {
        assert_eq!(render(&parse(LISTED)), LISTED);
        assert_eq!(render(&parse(PROSE)), PROSE);
        let continued = "1. First\n   still first\n2. Second";
        assert_eq!(render(&parse(continued)), continued);
    }

    #[test]
    fn add_constraint_extends_a_list_and_keeps_numbering() {
        for seed in 0..20 {
            let out = add_constraint(LISTED, &mut Rng::new(seed)).unwrap();
            assert!(out.lines().count() == LISTED.lines().count() + 1, "{out}");
            let n = numbers(&out);
            assert!(n == ["1", "2", "3"] || n == ["1", "2", "3", "4"], "{out}");
        }
        let out = add_constraint(PROSE, &mut Rng::new(1)).unwrap();
        assert!(out.starts_with(PROSE) && out.len() > PROSE.len() + 2);
    }

    #[test]
    fn add_constraint_skips_constraints_already_present() {
        let mut full = PROSE.to_string();
        for constraint in CONSTRAINTS {
            full.push(' ');
            full.push_str(constraint);
        }
        assert_eq!(add_constraint(&full, &mut Rng::new(3)), None);
    }

    #[test]
    fn simplify_drops_one_item_and_renumbers() {
        let out = simplify("1. A.\n2. B.\n3. C.", &mut Rng::new(5), |_| false).unwrap();
        assert_eq!(out.lines().count(), 2);
        assert_eq!(numbers(&out), ["1", "2"]);
        let prose = simplify(PROSE, &mut Rng::new(5), |_| false).unwrap();
        assert_eq!(sentences(&prose).len(), 2);
        assert_eq!(
            simplify("Only one rule.", &mut Rng::new(5), |_| false),
            None
        );
    }

    /// Regression test for issue 8: simplify never deletes a protected
    /// instruction (the engine protects the baseline's prohibitions).
    #[test]
    fn simplify_never_drops_a_protected_instruction() {
        let protected = |text: &str| text.contains("Never") || text.contains("Do not");
        for seed in 0..50 {
            let out = simplify(LISTED, &mut Rng::new(seed), protected).unwrap();
            assert!(
                out.contains("3. Never share secrets.") || out.contains("2. Never share secrets."),
                "{out}"
            );
            let prose = simplify(
                "Be brief. Do not guess. Never lie.",
                &mut Rng::new(seed),
                protected,
            )
            .unwrap();
            assert_eq!(prose, "Do not guess. Never lie.");
        }
        assert_eq!(
            simplify(
                "1. Never lie.\n2. Do not guess.",
                &mut Rng::new(1),
                protected
            ),
            None
        );
    }

    #[test]
    fn reorder_swaps_within_one_list_only() {
        let out = reorder_instructions("Intro.\n1. A\n2. B", &mut Rng::new(9)).unwrap();
        assert_eq!(out, "Intro.\n1. B\n2. A");
        let prose = reorder_instructions("One. Two.", &mut Rng::new(9)).unwrap();
        assert_eq!(prose, "Two. One.");
        assert_eq!(reorder_instructions("Single.", &mut Rng::new(9)), None);
    }

    #[test]
    fn add_emphasis_marks_one_instruction() {
        let out = add_emphasis(LISTED, &mut Rng::new(2)).unwrap();
        assert_ne!(out, LISTED);
        assert!(EMPHASES.iter().any(|e| out.contains(e)));
        assert_eq!(out.lines().count(), LISTED.lines().count());
    }

    #[test]
    fn add_example_appends_once() {
        let out = add_example(PROSE, "Weather in Oslo?", "It is 3C in Oslo.").unwrap();
        assert!(out.ends_with("Input: Weather in Oslo?\nOutput: It is 3C in Oslo."));
        assert_eq!(add_example(&out, "Weather in Oslo?", "x"), None);
    }

    #[test]
    fn operators_are_deterministic_under_a_seed() {
        for seed in 0..10 {
            assert_eq!(
                simplify(LISTED, &mut Rng::new(seed), |_| false),
                simplify(LISTED, &mut Rng::new(seed), |_| false)
            );
            assert_eq!(
                add_constraint(LISTED, &mut Rng::new(seed)),
                add_constraint(LISTED, &mut Rng::new(seed))
            );
        }
    }
}

#[cfg(test)]
mod shipped_prompt_tests {
    use super::*;

    /// Every heuristic operator on the shipped Controller prompt keeps its
    /// placeholder, its numbered list numbered 1..n, and changes something.
    #[test]
    fn operators_work_on_the_shipped_controller_prompt() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/controller.txt");
        let prompt = std::fs::read_to_string(path).unwrap();
        let prompt = prompt.trim_end();
        for seed in 0..25 {
            let outputs = [
                add_emphasis(prompt, &mut Rng::new(seed)),
                add_constraint(prompt, &mut Rng::new(seed)),
                reorder_instructions(prompt, &mut Rng::new(seed)),
                simplify(prompt, &mut Rng::new(seed), |_| false),
                add_example(prompt, "What is 2+2?", "4"),
            ];
            for out in outputs {
                let out = out.expect("every operator applies to the Controller prompt");
                assert_ne!(out, prompt);
                assert!(out.contains("{user_name}"));
                let numbers: Vec<usize> = out
                    .lines()
                    .filter_map(|line| line.split_once(". "))
                    .filter_map(|(n, _)| n.parse().ok())
                    .collect();
                let expected: Vec<usize> = (1..=numbers.len()).collect();
                assert_eq!(numbers, expected, "{out}");
            }
        }
    }
}

//! Checks a candidate must pass before any evaluation is paid for.
//!
//! Rewrites can silently drop what the agent depends on: a compliance
//! sentence, or a `{placeholder}` the agent fills in at run time. Such
//! candidates are rejected up front and listed as rejected in the output.

use std::collections::BTreeSet;

/// What every candidate must respect.
#[derive(Debug, Clone)]
pub struct Guardrails {
    protected_phrases: Vec<String>,
    placeholders: BTreeSet<String>,
    max_chars: usize,
}

impl Guardrails {
    /// Guardrails for variants of `baseline`: its placeholders must survive.
    pub fn new(baseline: &str, protected_phrases: &[String], max_chars: usize) -> Self {
        Guardrails {
            protected_phrases: protected_phrases.to_vec(),
            placeholders: placeholders(baseline),
            max_chars,
        }
    }

    /// Every violation of `candidate`, empty when it passes.
    pub fn check(&self, candidate: &str) -> Vec<String> {
        let mut violations = Vec::new();
        if candidate.trim().is_empty() {
            violations.push("prompt is empty".to_string());
        }
        let chars = candidate.chars().count();
        if chars > self.max_chars {
            violations.push(format!(
                "prompt has {chars} characters, more than apo.max_prompt_chars ({})",
                self.max_chars
            ));
        }
        for phrase in &self.protected_phrases {
            if !candidate.contains(phrase.as_str()) {
                violations.push(format!("protected phrase missing: `{phrase}`"));
            }
        }
        let found = placeholders(candidate);
        for missing in self.placeholders.difference(&found) {
            violations.push(format!("placeholder missing: `{{{missing}}}`"));
        }
        for added in found.difference(&self.placeholders) {
            violations.push(format!("placeholder not in the baseline: `{{{added}}}`"));
        }
        violations
    }
}

/// Names of `{name}` placeholders: identifier characters only, so JSON
/// examples like `{"a": 1}` are not mistaken for one. `{{` escapes.
fn placeholders(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        if let Some(escaped) = after.strip_prefix('{') {
            rest = escaped;
            continue;
        }
        if let Some(end) = after.find('}') {
            let name = &after[..end];
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                names.insert(name.to_string());
            }
        }
        rest = after;
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_a_faithful_variant() {
        let guard = Guardrails::new("Hi {user}. Be safe.", &["Be safe.".into()], 100);
        assert!(guard.check("Hello {user}! Be safe.").is_empty());
    }

    #[test]
    fn names_each_violation() {
        let guard = Guardrails::new("Hi {user}. Be safe.", &["Be safe.".into()], 20);
        let violations = guard.check("Hello {name}, this is far too long a prompt.");
        let all = violations.join("\n");
        assert!(
            all.contains("protected phrase missing: `Be safe.`"),
            "{all}"
        );
        assert!(all.contains("placeholder missing: `{user}`"), "{all}");
        assert!(
            all.contains("placeholder not in the baseline: `{name}`"),
            "{all}"
        );
        assert!(all.contains("apo.max_prompt_chars"), "{all}");
        assert_eq!(guard.check("   ").len(), 3);
    }

    #[test]
    fn json_and_escaped_braces_are_not_placeholders() {
        assert!(placeholders(r#"Reply as {"answer": 1} or {{literal}}"#).is_empty());
        assert_eq!(
            placeholders("{a} and {b_c}")
                .into_iter()
                .collect::<Vec<_>>(),
            ["a", "b_c"]
        );
    }
}

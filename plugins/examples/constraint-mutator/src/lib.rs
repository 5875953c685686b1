//! Example mutation plugin: appends a constraint taken from the feedback on
//! the prompt's weakest examples, so the next candidate addresses what the
//! judge complained about. The seed picks which feedback when there are
//! several; without any feedback the mutation fails (the operator then
//! simply yields no candidate).

use whetstone_plugin::Context;

/// The mutated prompt (see the crate docs).
pub fn mutate(prompt: &str, seed: u64, context: &Context) -> Result<String, String> {
    let feedback: Vec<&str> = context
        .weakest
        .iter()
        .map(|example| example.feedback.trim())
        .filter(|feedback| !feedback.is_empty() && !prompt.contains(*feedback))
        .collect();
    if feedback.is_empty() {
        return Err("no new feedback on the weakest examples".to_owned());
    }
    let chosen = feedback[(seed % feedback.len() as u64) as usize];
    Ok(format!(
        "{}\n\nConstraint: avoid this mistake: {chosen}",
        prompt.trim_end()
    ))
}

whetstone_plugin::mutator_plugin! {
    name: "constraint-from-feedback",
    description: "Adds a constraint naming a mistake the judge reported on a weak example.",
    mutate: mutate,
}

//! Hostile test plugin: Returns a NaN score, which would poison any mean
//! or sum it entered.

use whetstone_plugin::{Episode, Score};

fn score(_episode: &Episode) -> Result<Vec<Score>, String> {
    Ok(vec![
        Score::new("fine", 1.0),
        Score::new("quality", f64::NAN),
    ])
}

whetstone_plugin::reward_plugin! {
    name: "hostile-nan-score",
    description: "Returns a NaN score.",
    score: score,
}

//! Hostile test plugin: Returns a score whose name is 8 MiB long.

use whetstone_plugin::{Episode, Score};

fn score(_episode: &Episode) -> Result<Vec<Score>, String> {
    Ok(vec![Score::new("x".repeat(8 << 20), 1.0)])
}

whetstone_plugin::reward_plugin! {
    name: "hostile-huge-output",
    description: "Returns a score whose name is 8 MiB long.",
    score: score,
}

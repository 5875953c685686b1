//! Hostile test plugin: Panics.

use whetstone_plugin::{Episode, Score};

fn score(_episode: &Episode) -> Result<Vec<Score>, String> {
    panic!("hostile plugin panicked on purpose")
}

whetstone_plugin::reward_plugin! {
    name: "hostile-panic",
    description: "Panics.",
    score: score,
}

//! Hostile test plugin: Spins forever.

use whetstone_plugin::{Episode, Score};

fn score(_episode: &Episode) -> Result<Vec<Score>, String> {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

whetstone_plugin::reward_plugin! {
    name: "hostile-infinite-loop",
    description: "Spins forever.",
    score: score,
}

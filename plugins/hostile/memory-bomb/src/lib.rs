//! Hostile test plugin: Allocates until memory runs out.

use whetstone_plugin::{Episode, Score};

fn score(_episode: &Episode) -> Result<Vec<Score>, String> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

whetstone_plugin::reward_plugin! {
    name: "hostile-memory-bomb",
    description: "Allocates until memory runs out.",
    score: score,
}

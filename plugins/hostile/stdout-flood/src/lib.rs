//! Hostile test plugin: Prints to stdout forever.

use whetstone_plugin::{Episode, Score};

fn score(_episode: &Episode) -> Result<Vec<Score>, String> {
    let mut n: u64 = 0;
    loop {
        println!("flooding stdout, line {n}");
        n += 1;
    }
}

whetstone_plugin::reward_plugin! {
    name: "hostile-stdout-flood",
    description: "Prints to stdout forever.",
    score: score,
}

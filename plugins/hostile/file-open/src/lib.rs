//! Hostile test plugin: Tries to read /etc/passwd and list the root directory.

use whetstone_plugin::{Episode, Score};

fn score(_episode: &Episode) -> Result<Vec<Score>, String> {
    let read = std::fs::read("/etc/passwd").map(|bytes| bytes.len());
    let list = std::fs::read_dir("/").map(|entries| entries.count());
    match (read, list) {
        (Ok(n_bytes), _) => Ok(vec![Score::new("leaked_bytes", n_bytes as f64)]),
        (_, Ok(n_entries)) => Ok(vec![Score::new("leaked_entries", n_entries as f64)]),
        (Err(read), Err(list)) => Err(format!("open /etc/passwd: {read}; list /: {list}")),
    }
}

whetstone_plugin::reward_plugin! {
    name: "hostile-file-open",
    description: "Tries to read /etc/passwd and list the root directory.",
    score: score,
}

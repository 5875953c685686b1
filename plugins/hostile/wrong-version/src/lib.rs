//! Hostile test plugin: exports the reward world of a future interface
//! version, `whetstone:plugin@9.0.0`.

wit_bindgen::generate!({ path: "wit", world: "reward" });

use exports::whetstone::plugin::scoring::{Guest, NamedScore};

struct Plugin;

impl Guest for Plugin {
    fn name() -> String {
        "from-the-future".to_owned()
    }
    fn description() -> String {
        "Needs interface 9.0.0.".to_owned()
    }
    fn score(_episode: String) -> Result<Vec<NamedScore>, String> {
        Ok(Vec::new())
    }
}

export!(Plugin);

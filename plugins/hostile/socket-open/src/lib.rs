//! Hostile test plugin: Tries to connect to the TCP port given in its settings.

use whetstone_plugin::{Episode, Score};

fn score(_episode: &Episode) -> Result<Vec<Score>, String> {
    #[derive(serde::Deserialize)]
    struct Settings {
        port: u16,
    }
    let settings: Settings = whetstone_plugin::settings()?;
    match std::net::TcpStream::connect(("127.0.0.1", settings.port)) {
        Ok(_) => Ok(vec![Score::new("connected", 1.0)]),
        Err(err) => Err(format!("connect 127.0.0.1:{}: {err}", settings.port)),
    }
}

whetstone_plugin::reward_plugin! {
    name: "hostile-socket-open",
    description: "Tries to connect to the TCP port given in its settings.",
    score: score,
}

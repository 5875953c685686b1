//! Hostile test plugin: a WASI command (exports `wasi:cli/run`) dropped into
//! the plugins folder by mistake.

fn main() {
    println!("I am a command, not a plugin");
}

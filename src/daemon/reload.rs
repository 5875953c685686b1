//! Configuration hot reload: the file is read again when it changes; a valid
//! edit takes effect from the next round, an invalid one is reported with
//! every problem and the running configuration stays. Keys a running daemon
//! cannot apply are named by their sections ([`crate::config::Section`]),
//! keep their old values and are reported in `restart_required`; a test
//! walks every key of `config.toml` to hold the daemon to that.

use std::path::Path;

use crate::config::{self, Config};

/// What reading the edited file gave.
#[derive(Debug)]
pub enum Reload {
    /// Valid: the configuration to run with from now on, and the changed
    /// keys that only a restart applies (their old values stay in force).
    Applied {
        config: Box<Config>,
        restart_required: Vec<String>,
    },
    /// Unchanged in effect (a save without edits, or only whitespace).
    Unchanged,
    /// Invalid: every problem, `file:line:col: key: message`.
    Refused(Vec<String>),
}

/// Reads `file` again and compares it with `running`.
pub fn reload(file: &Path, running: &Config) -> Reload {
    match config::load(Some(file)) {
        Ok(edited) => compare(edited, running),
        Err(err) => Reload::Refused(err.to_string().lines().map(str::to_owned).collect()),
    }
}

/// What applying the valid configuration `edited` over `running` gives: the
/// keys the sections name restart-only ([`Config::restart_only_keys`]) keep
/// their running values and are listed.
fn compare(edited: Config, running: &Config) -> Reload {
    if edited == *running {
        return Reload::Unchanged;
    }
    let (Ok(mut edited_tree), Ok(running_tree)) =
        (serde_json::to_value(&edited), serde_json::to_value(running))
    else {
        return Reload::Refused(vec!["cannot compare the edited configuration".into()]);
    };
    let mut restart_required = Vec::new();
    for key in Config::restart_only_keys() {
        let pointer = format!("/{}", key.replace('.', "/"));
        let old = running_tree.pointer(&pointer).cloned();
        let Some(new) = edited_tree.pointer_mut(&pointer) else {
            continue;
        };
        if Some(&*new) != old.as_ref() {
            *new = old.unwrap_or(serde_json::Value::Null);
            restart_required.push(key);
        }
    }
    match serde_json::from_value::<Config>(edited_tree) {
        Ok(config) => Reload::Applied {
            config: Box::new(config),
            restart_required,
        },
        Err(err) => Reload::Refused(vec![format!(
            "cannot keep the running values of {restart_required:?}: {err}"
        )]),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn valid_edit_applies_invalid_one_lists_every_problem_and_restart_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "[apo]\ngenerations = 3\n").unwrap();
        let running = config::load(Some(&file)).unwrap();

        std::fs::write(&file, "[apo]\ngenerations = 7\n").unwrap();
        let Reload::Applied {
            config,
            restart_required,
        } = reload(&file, &running)
        else {
            panic!("a valid edit applies");
        };
        assert_eq!(config.apo.generations, Some(7));
        assert!(restart_required.is_empty());

        std::fs::write(&file, "data_dir = \"elsewhere\"\n[apo]\ngenerations = 3\n").unwrap();
        let Reload::Applied {
            config,
            restart_required,
        } = reload(&file, &running)
        else {
            panic!("a valid edit applies");
        };
        assert_eq!(restart_required, ["data_dir"]);
        assert_eq!(config.data_dir, running.data_dir);

        std::fs::write(&file, "[apo]\ngenerations = 0\n[rl]\ngamma = 2.0\n").unwrap();
        let Reload::Refused(problems) = reload(&file, &running) else {
            panic!("an invalid edit is refused");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("config.toml:2:1: apo.generations"),
            "{problems:?}"
        );

        std::fs::write(&file, "[apo]\ngenerations = 3\n").unwrap();
        assert!(matches!(reload(&file, &running), Reload::Unchanged));
    }

    /// Dotted paths and values of every leaf of a JSON tree.
    fn leaves(value: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    leaves(child, &format!("{prefix}{key}."), out);
                }
            }
            leaf => out.push((prefix.trim_end_matches('.').to_string(), leaf.clone())),
        }
    }

    /// `value` without null members: an unset optional key is absent.
    fn without_nulls(value: Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .filter(|(_, child)| !child.is_null())
                    .map(|(key, child)| (key, without_nulls(child)))
                    .collect(),
            ),
            other => other,
        }
    }

    /// Other values a key might take, in order of preference; the first
    /// one the configuration accepts is used.
    fn alternatives(value: &Value) -> Vec<Value> {
        match value {
            Value::Bool(b) => vec![json!(!b)],
            Value::Number(n) if n.is_u64() => {
                let n = n.as_u64().unwrap();
                vec![
                    json!(n + 1),
                    json!(n.saturating_sub(1)),
                    json!(n * 2),
                    json!(n / 2),
                    json!(1),
                ]
            }
            Value::Number(n) => {
                let f = n.as_f64().unwrap();
                vec![
                    json!(f * 0.5),
                    json!(f + 0.1),
                    json!(f * 2.0),
                    json!(0.5),
                    json!(0.01),
                ]
            }
            Value::String(s) => {
                // A different last digit keeps addresses and URLs valid.
                let bumped: String = match s.char_indices().rev().find(|(_, c)| c.is_ascii_digit())
                {
                    Some((at, c)) => {
                        let digit = (c.to_digit(10).unwrap() + 1) % 10;
                        format!("{}{digit}{}", &s[..at], &s[at + 1..])
                    }
                    None => format!("{s}x"),
                };
                vec![
                    json!(bumped),
                    json!(format!("{s}x")),
                    json!("f1"),
                    json!("snips"),
                    json!("ips"),
                    json!("max_tokens"),
                    json!("127.0.0.1:4399"),
                ]
            }
            Value::Array(items) if items.is_empty() => vec![
                json!(["x"]),
                json!([1.0]),
                json!([{"metric": "safety", "max_drop": 0.02}]),
            ],
            Value::Array(items) => vec![
                json!(items[1..]),
                json!(items[..items.len() - 1]),
                json!([items[0]]),
            ],
            Value::Null => vec![
                json!("x"),
                json!(1),
                json!(0.5),
                json!(true),
                json!("success"),
            ],
            Value::Object(_) => Vec::new(),
        }
    }

    /// Issue 18: `[plugins]`, `daemon.poll_interval_secs` and
    /// `daemon.watch_events` were reported as applied and did nothing. Every
    /// key of `config.toml` (the embedded defaults, commented ones too) is
    /// edited in turn: it is either applied (the configuration the daemon
    /// runs on from then has the new value) or named restart-only, reported
    /// in `restart_required` and kept at its running value.
    #[test]
    fn every_key_of_config_toml_reloads_live_or_is_reported_restart_only() {
        let running = Config::default();
        let tree = serde_json::to_value(&running).unwrap();
        let mut keys = Vec::new();
        leaves(&tree, "", &mut keys);
        assert!(keys.len() > 80, "{}", keys.len());
        let restart_only = Config::restart_only_keys();
        let is_restart_only = |key: &str| {
            restart_only
                .iter()
                .any(|r| key == r || key.starts_with(&format!("{r}.")))
        };
        let mut untested = Vec::new();
        for (key, value) in keys {
            let pointer = format!("/{}", key.replace('.', "/"));
            let edited = alternatives(&value).into_iter().find_map(|candidate| {
                let mut edited_tree = tree.clone();
                *edited_tree.pointer_mut(&pointer).unwrap() = candidate;
                let edited: Config = serde_json::from_value(without_nulls(edited_tree)).ok()?;
                (edited != running && edited.validate().is_empty()).then_some(edited)
            });
            let Some(edited) = edited else {
                untested.push(key);
                continue;
            };
            let Reload::Applied {
                config,
                restart_required,
            } = compare(edited.clone(), &running)
            else {
                panic!("a valid edit of {key} was not applied");
            };
            let effective = serde_json::to_value(&*config).unwrap();
            let wanted = serde_json::to_value(&edited).unwrap();
            if is_restart_only(&key) {
                assert_eq!(
                    restart_required.len(),
                    1,
                    "{key}: restart-only, must be reported: {restart_required:?}"
                );
                assert!(is_restart_only(&restart_required[0]), "{key}");
                assert_eq!(effective.pointer(&pointer), tree.pointer(&pointer), "{key}");
            } else {
                assert!(restart_required.is_empty(), "{key}: {restart_required:?}");
                assert_eq!(
                    effective.pointer(&pointer),
                    wanted.pointer(&pointer),
                    "{key}"
                );
            }
        }
        assert!(
            untested.is_empty(),
            "no valid other value found for {untested:?}"
        );
        for key in [
            "plugins",
            "daemon.poll_interval_secs",
            "daemon.watch_events",
        ] {
            assert!(restart_only.iter().any(|r| r == key), "{key}");
        }
    }
}

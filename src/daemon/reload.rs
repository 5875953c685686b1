//! Configuration hot reload: the file is read again when it changes; a valid
//! edit takes effect from the next round, an invalid one is reported with
//! every problem and the running configuration stays.

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
    let mut edited = match config::load(Some(file)) {
        Ok(config) => config,
        Err(err) => return Reload::Refused(err.to_string().lines().map(str::to_owned).collect()),
    };
    if edited == *running {
        return Reload::Unchanged;
    }
    let mut restart_required = Vec::new();
    // What the daemon opened or bound at start keeps its old value.
    if edited.data_dir != running.data_dir {
        restart_required.push("data_dir".to_string());
        edited.data_dir = running.data_dir.clone();
    }
    if edited.traces.dir != running.traces.dir {
        restart_required.push("traces.dir".to_string());
        edited.traces.dir = running.traces.dir.clone();
    }
    if edited.api != running.api {
        restart_required.push("api".to_string());
        edited.api = running.api.clone();
    }
    if edited.otlp != running.otlp {
        restart_required.push("otlp".to_string());
        edited.otlp = running.otlp.clone();
    }
    Reload::Applied {
        config: Box::new(edited),
        restart_required,
    }
}

#[cfg(test)]
mod tests {
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
}

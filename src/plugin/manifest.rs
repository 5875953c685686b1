//! `NAME.toml` beside `NAME.wasm`: a plugin's limits, weight and settings.
//!
//! ```toml
//! weight = 0.5            # weight of its scores / its operator (default 1.0)
//! [limits]                # any of [plugins.limits], replacing the default
//! timeout_ms = 200
//! [settings]              # the plugin's own settings, passed to it as JSON
//! max_answer_chars = 1200
//! ```

use std::path::Path;

use serde::Deserialize;

use super::limits::{LimitOverrides, Limits};
use crate::section::Checker;

/// A parsed `NAME.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Manifest {
    /// Weight of the plugin's scores or operator. At least 0.
    pub weight: f64,
    /// Limits replacing `[plugins.limits]` for this plugin.
    pub limits: LimitOverrides,
    /// The plugin's own settings.
    pub settings: toml::Table,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            weight: 1.0,
            limits: LimitOverrides::default(),
            settings: toml::Table::new(),
        }
    }
}

impl Manifest {
    /// Reads `path`; a missing file is the default manifest. Errors name
    /// the file, and the line and key when TOML can tell.
    pub fn read(path: &Path, defaults: Limits) -> Result<(Manifest, Limits), String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Manifest::default(), defaults));
            }
            Err(err) => return Err(format!("{}: cannot read: {err}", path.display())),
        };
        let manifest: Manifest = toml::from_str(&text)
            .map_err(|err| format!("{}: {}", path.display(), err.to_string().trim_end()))?;
        let limits = manifest.limits.apply(defaults);
        let mut check = Checker::default();
        check.at_least("weight", manifest.weight, 0.0);
        check.section("limits", |check| limits.validate(check));
        let problems: Vec<String> = check
            .finish()
            .into_iter()
            .map(|invalid| format!("{}: {}: {}", path.display(), invalid.key, invalid.message))
            .collect();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok((manifest, limits))
    }

    /// The settings as the JSON object the plugin reads.
    pub fn settings_json(&self) -> String {
        serde_json::to_string(&self.settings).unwrap_or_else(|_| "{}".to_owned())
    }
}

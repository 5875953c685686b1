//! `[daemon]` and `[api]`: when the always-on daemon runs rounds, where it
//! writes them, and where its HTTP API listens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::section::{Checker, Section};

/// Triggers, schedule and outputs of `whetstone daemon`. Defaults are
/// documented in `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Where rounds write their outputs (`rounds/<id>-<kind>/`, `latest/`);
    /// `None` means `<data_dir>/output`.
    pub output_dir: Option<PathBuf>,
    /// Use filesystem events to notice new traces (a pass also runs every
    /// `poll_interval_secs` whatever happens).
    pub watch_events: bool,
    /// Seconds between ingestion passes without any event: the fallback on
    /// filesystems that send none (network mounts).
    pub poll_interval_secs: u64,
    /// Milliseconds to wait after a filesystem event for more before a pass.
    pub debounce_millis: u64,
    /// An APO round starts once this many new episodes of the target prompt
    /// arrived since the last round (0: never for this reason).
    pub apo_min_new_episodes: u64,
    /// An APO round also starts when this many seconds passed since the last
    /// one and at least one new episode arrived (0: never for this reason).
    pub apo_interval_secs: u64,
    /// A PPO update runs once this many new decisions arrived since the last
    /// one (0: never).
    pub rl_min_new_decisions: u64,
    /// A failed round is retried after this many seconds, doubled after each
    /// further failure up to an hour.
    pub retry_backoff_secs: u64,
    /// How long the daemon's own store steps wait for another process's
    /// lock on the database before failing (reported, retried with
    /// backoff).
    pub store_busy_timeout_secs: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            output_dir: None,
            watch_events: true,
            poll_interval_secs: 10,
            debounce_millis: 500,
            apo_min_new_episodes: 50,
            apo_interval_secs: 86_400,
            rl_min_new_decisions: 200,
            retry_backoff_secs: 60,
            store_busy_timeout_secs: 30,
        }
    }
}

impl DaemonConfig {
    pub(crate) fn validate(&self, check: &mut Checker) {
        if let Some(dir) = &self.output_dir {
            check.not_empty_path("output_dir", dir);
        }
        check.in_range("poll_interval_secs", self.poll_interval_secs, 1..=86_400);
        check.in_range("debounce_millis", self.debounce_millis, 0..=60_000);
        check.in_range("retry_backoff_secs", self.retry_backoff_secs, 1..=86_400);
        check.in_range(
            "store_busy_timeout_secs",
            self.store_busy_timeout_secs,
            1..=3600,
        );
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(dir) = &mut self.output_dir {
            *dir = base.join(&*dir);
        }
    }
}

/// The daemon's local HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address and port to listen on; anything but loopback needs a token.
    pub listen: String,
    /// NAME of the environment variable holding the bearer token that
    /// requests must carry. Required (set and non-empty) when `listen` is not
    /// a loopback address; optional on loopback.
    pub token_env: String,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:7373".into(),
            token_env: "WHETSTONE_API_TOKEN".into(),
            max_body_bytes: 1024 * 1024,
        }
    }
}

impl ApiConfig {
    pub(crate) fn validate(&self, check: &mut Checker) {
        if let Err(err) = self.listen.parse::<SocketAddr>() {
            check.fail(
                "listen",
                format!("must be an IP address and port like 127.0.0.1:7373 ({err})"),
            );
        }
        if self.token_env.is_empty() {
            check.fail("token_env", "must name an environment variable");
        }
        check.in_range(
            "max_body_bytes",
            self.max_body_bytes,
            1024..=64 * 1024 * 1024,
        );
    }
}

impl Section for DaemonConfig {
    /// The poll timer, the filesystem watcher and the store connections
    /// are set up when the daemon starts.
    const RESTART_ONLY: &'static [&'static str] = &[
        "poll_interval_secs",
        "watch_events",
        "store_busy_timeout_secs",
    ];

    fn check(&self, check: &mut Checker) {
        self.validate(check);
    }

    fn resolve_paths(&mut self, base: &Path) {
        DaemonConfig::resolve_paths(self, base);
    }
}

impl Section for ApiConfig {
    /// The listener is bound when the daemon starts.
    const RESTART_ONLY: &'static [&'static str] = &[""];

    fn check(&self, check: &mut Checker) {
        self.validate(check);
    }
}

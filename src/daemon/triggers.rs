//! When a round is due, when a failed one may be retried, and whether the
//! LLM endpoint answers at all.

use std::time::{Duration, Instant};

use crate::config::{Config, LlmConfig};
use crate::store::{Store, StoreError, now_unix_ms};

use super::rounds::RoundKind;

/// A round that should start, and why (for logs and the round's record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub reason: String,
}

/// Whether a round of `kind` is due: enough new data since the last
/// succeeded round of its subject, or (APO) its interval passed with at
/// least one new episode. `uptime` stands for "since the last round" when
/// there never was one, so a fresh daemon does not start on the interval at
/// once.
pub fn due(
    kind: RoundKind,
    config: &Config,
    store: &Store,
    uptime: Duration,
) -> Result<Option<Due>, StoreError> {
    let subject = kind.subject(config);
    let last = store.last_succeeded_round(kind.as_str(), &subject)?;
    let after_id = last.as_ref().map_or(0, |round| round.upto_episode_id);
    let daemon = &config.daemon;
    Ok(match kind {
        RoundKind::Rl => {
            let arrivals = store.arrivals_since(after_id, None)?;
            (daemon.rl_min_new_decisions > 0 && arrivals.decisions >= daemon.rl_min_new_decisions)
                .then(|| Due {
                    reason: format!("{} new decisions", arrivals.decisions),
                })
        }
        RoundKind::Apo => {
            let arrivals = store.arrivals_since(after_id, Some(&subject))?;
            let since_last = last
                .and_then(|round| round.finished_at_unix_ms)
                .map_or(uptime, |at| {
                    Duration::from_millis(now_unix_ms().saturating_sub(at).max(0) as u64)
                });
            if daemon.apo_min_new_episodes > 0 && arrivals.episodes >= daemon.apo_min_new_episodes {
                Some(Due {
                    reason: format!("{} new episodes of `{subject}`", arrivals.episodes),
                })
            } else if daemon.apo_interval_secs > 0
                && arrivals.episodes > 0
                && since_last >= Duration::from_secs(daemon.apo_interval_secs)
            {
                Some(Due {
                    reason: format!(
                        "{}s since the last round, {} new episodes",
                        since_last.as_secs(),
                        arrivals.episodes
                    ),
                })
            } else {
                None
            }
        }
    })
}

/// Retry timing of one kind of round after failures: `retry_backoff_secs`,
/// doubled per further failure, at most an hour.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    /// Records a failure and returns the delay before the next attempt.
    pub fn failed(&mut self, config: &Config) -> Duration {
        let base = config.daemon.retry_backoff_secs.max(1);
        let delay =
            Duration::from_secs(base.saturating_mul(1u64 << self.failures.min(16)).min(3600));
        self.failures += 1;
        self.retry_at = Some(Instant::now() + delay);
        delay
    }

    /// Whether the next attempt may start.
    pub fn ready(&self) -> bool {
        self.retry_at.is_none_or(|at| Instant::now() >= at)
    }
}

/// Why no APO round can run, when the endpoint does not answer: one line
/// naming `llm.base_url` and how to point it elsewhere. Any HTTP answer,
/// even an error status, counts as reachable.
pub async fn endpoint_unreachable(llm: &LlmConfig) -> Option<String> {
    let url = format!("{}/models", llm.base_url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .ok()?;
    match client.get(&url).send().await {
        Ok(_) => None,
        Err(err) => Some(format!(
            "no LLM endpoint answers at llm.base_url = {} ({}); {}",
            llm.base_url,
            root_cause(&err),
            super::report::POINT_AT_A_MODEL
        )),
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewRound;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let mut config = Config::default();
        config.daemon.retry_backoff_secs = 1000;
        let mut backoff = Backoff::default();
        assert!(backoff.ready());
        assert_eq!(backoff.failed(&config), Duration::from_secs(1000));
        assert!(!backoff.ready());
        assert_eq!(backoff.failed(&config), Duration::from_secs(2000));
        assert_eq!(backoff.failed(&config), Duration::from_secs(3600));
    }

    #[test]
    fn no_round_is_due_on_an_empty_store_and_interval_counts_from_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let config = Config::default();
        let long = Duration::from_secs(10 * 86_400);
        assert_eq!(due(RoundKind::Rl, &config, &store, long).unwrap(), None);
        assert_eq!(due(RoundKind::Apo, &config, &store, long).unwrap(), None);
        // A succeeded round covering everything: still nothing new.
        let id = store
            .start_round(&NewRound {
                kind: "rl",
                subject: "policy",
                trigger: "test",
                upto_episode_id: 0,
                settings: "{}",
                output_dir: "",
            })
            .unwrap();
        store.finish_round(id, Ok("{}")).unwrap();
        assert_eq!(due(RoundKind::Rl, &config, &store, long).unwrap(), None);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_named_with_its_cause() {
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let llm = LlmConfig {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            ..LlmConfig::default()
        };
        let why = endpoint_unreachable(&llm).await.expect("nothing listens");
        assert!(why.contains(&llm.base_url), "{why}");
        assert!(why.contains("llm.base_url"), "{why}");
    }
}

//! The contract of a configuration section ([`Section`]) and the range and
//! shape checks it reports with ([`Checker`]). A leaf: it imports nothing
//! of the crate, so every section can live beside its owner.
//!
//! Deserialization only proves that each value has the right type; whether a
//! value makes sense (a positive timeout, a URL the HTTP client accepts) is
//! checked here. Every section reports into one [`Checker`], which prefixes
//! keys with the section path and keeps going after a failure, so a user
//! fixing a file sees every problem at once rather than one per run.

use std::cmp::Ordering;
use std::fmt::{Debug, Display};
use std::ops::RangeInclusive;
use std::path::Path;

/// What every configuration section provides: its checks, how its relative
/// paths resolve, and which of its keys a running daemon cannot apply.
///
/// `config::Config` composes the sections; each section lives beside the
/// module that uses it and depends only on this leaf module, so no section
/// imports `config` (no import circle).
pub trait Section {
    /// Keys of the section (relative to it; `""` for the whole section)
    /// that only a restart applies. The daemon's hot reload keeps their old
    /// values and reports them in `restart_required`; every other key is
    /// applied from the next use.
    const RESTART_ONLY: &'static [&'static str] = &[];

    /// Reports every out-of-range or malformed value into `check`, keys
    /// relative to the section.
    fn check(&self, check: &mut Checker);

    /// Makes relative paths absolute by joining them onto `base` (the
    /// config file's folder).
    fn resolve_paths(&mut self, _base: &Path) {}
}

/// One out-of-range or malformed value, named by its full key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted key path from the document root, e.g. `traces.max_line_bytes`.
    pub key: String,
    /// What is wrong, phrased to follow the key: `must be at least 1, got 0`.
    pub message: String,
}

/// Collects [`Invalid`] values while sections check their fields.
#[derive(Debug, Default)]
pub struct Checker {
    prefix: String,
    invalid: Vec<Invalid>,
}

impl Checker {
    /// Runs `check` with keys prefixed by `name.`, for a nested section.
    pub fn section(&mut self, name: &str, check: impl FnOnce(&mut Checker)) {
        let prefix_len = self.prefix.len();
        self.prefix.push_str(name);
        self.prefix.push('.');
        check(self);
        self.prefix.truncate(prefix_len);
    }

    /// Records a problem with `key` in the current section.
    pub fn fail(&mut self, key: &str, message: impl Display) {
        self.invalid.push(Invalid {
            key: format!("{}{key}", self.prefix),
            message: message.to_string(),
        });
    }

    /// Requires `min <= value <= max`. A NaN float is out of every range.
    /// Numbers print with `Debug`, so floats keep their `.0`.
    pub fn in_range<T: PartialOrd + Debug>(
        &mut self,
        key: &str,
        value: T,
        range: RangeInclusive<T>,
    ) {
        if !range.contains(&value) {
            let (min, max) = range.into_inner();
            self.fail(
                key,
                format!("must be between {min:?} and {max:?}, got {value:?}"),
            );
        }
    }

    /// Requires `value >= min`.
    pub fn at_least<T: PartialOrd + Debug>(&mut self, key: &str, value: T, min: T) {
        // `partial_cmp` is `None` for NaN, which must be rejected too.
        if !matches!(
            value.partial_cmp(&min),
            Some(Ordering::Greater | Ordering::Equal)
        ) {
            self.fail(key, format!("must be at least {min:?}, got {value:?}"));
        }
    }

    /// Requires a non-empty string.
    pub fn not_empty(&mut self, key: &str, value: &str) {
        if value.trim().is_empty() {
            self.fail(key, "must not be empty");
        }
    }

    /// Requires a non-empty path.
    pub fn not_empty_path(&mut self, key: &str, value: &Path) {
        if value.as_os_str().is_empty() {
            self.fail(key, "must not be empty");
        }
    }

    /// Requires an absolute `http://` or `https://` URL with a host.
    pub fn http_url(&mut self, key: &str, value: &str) {
        match url::Url::parse(value) {
            Err(err) => self.fail(key, format!("must be an http(s) URL, got {value:?}: {err}")),
            Ok(url) if !matches!(url.scheme(), "http" | "https") => self.fail(
                key,
                format!(
                    "must be an http(s) URL, got scheme {:?} in {value:?}",
                    url.scheme()
                ),
            ),
            Ok(url) if url.host_str().is_none_or(str::is_empty) => {
                self.fail(
                    key,
                    format!("must be an http(s) URL with a host, got {value:?}"),
                );
            }
            Ok(_) => {}
        }
    }

    /// The problems found so far, in the order they were checked.
    pub fn finish(self) -> Vec<Invalid> {
        self.invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(run: impl FnOnce(&mut Checker)) -> Vec<String> {
        let mut checker = Checker::default();
        run(&mut checker);
        checker
            .finish()
            .into_iter()
            .map(|invalid| format!("{}: {}", invalid.key, invalid.message))
            .collect()
    }

    #[test]
    fn sections_prefix_keys_and_restore_afterwards() {
        let found = check(|c| {
            c.section("a", |c| {
                c.section("b", |c| c.fail("x", "bad"));
                c.fail("y", "bad");
            });
            c.fail("z", "bad");
        });
        assert_eq!(found, ["a.b.x: bad", "a.y: bad", "z: bad"]);
    }

    #[test]
    fn ranges_accept_bounds_and_reject_outside_and_nan() {
        let found = check(|c| {
            c.in_range("lo", 1024, 1024..=2048);
            c.in_range("hi", 2048, 1024..=2048);
            c.in_range("below", 5, 1024..=2048);
            c.in_range("nan", f64::NAN, 0.0..=2.0);
            c.at_least("ok", 1, 1);
            c.at_least("zero", 0, 1);
            c.at_least("nan_min", f64::NAN, 0.0);
        });
        assert_eq!(
            found,
            [
                "below: must be between 1024 and 2048, got 5",
                "nan: must be between 0.0 and 2.0, got NaN",
                "zero: must be at least 1, got 0",
                "nan_min: must be at least 0.0, got NaN",
            ]
        );
    }

    #[test]
    fn empty_strings_and_paths_are_rejected() {
        let found = check(|c| {
            c.not_empty("s", "  ");
            c.not_empty("fine", "x");
            c.not_empty_path("p", Path::new(""));
        });
        assert_eq!(found, ["s: must not be empty", "p: must not be empty"]);
    }

    #[test]
    fn only_http_urls_with_a_host_pass() {
        let found = check(|c| {
            c.http_url("ok", "http://127.0.0.1:8000/v1");
            c.http_url("tls", "https://api.openai.com/v1");
            c.http_url("relative", "/v1");
            c.http_url("ftp", "ftp://example.com/");
            c.http_url("file", "file:///tmp/x");
        });
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("relative: must be an http(s) URL"));
        assert!(found[1].contains("scheme \"ftp\""), "{}", found[1]);
        assert!(found[2].starts_with("file: must be an http(s) URL"));
    }
}

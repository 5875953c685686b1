//! Configuration problems as users see them: `file:line:col: key: message`.
//!
//! The format is the one compilers use, so editors and terminals can jump to
//! the offending line; the full key path is there because a bare line number
//! does not say which of several same-named keys (`dir`) is meant.

use std::fmt;
use std::path::{Path, PathBuf};

/// A 1-based line and column (in characters) in a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `text`. Offsets past the end, or
    /// inside a multi-byte character, are clamped to a valid position.
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        Location {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// One problem with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, as the user named it.
    pub file: PathBuf,
    /// Where in the file, when known.
    pub location: Option<Location>,
    /// The full dotted key path, when known (`traces.max_line_bytes`).
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem with the file as a whole (unreadable, not UTF-8).
    pub fn whole_file(file: &Path, message: impl fmt::Display) -> Problem {
        Problem {
            file: file.to_path_buf(),
            location: None,
            key: None,
            message: message.to_string(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file.display())?;
        if let Some(location) = self.location {
            write!(f, "{}:{}:", location.line, location.column)?;
        }
        if let Some(key) = &self.key {
            write!(f, " {key}:")?;
        }
        write!(f, " {}", self.message)
    }
}

/// Every problem found in a configuration file; never empty.
///
/// `Display` prints one problem per line, in file order for validation
/// problems, so the whole list can be fixed in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    /// Wraps a non-empty list of problems.
    pub(crate) fn new(problems: Vec<Problem>) -> ConfigError {
        debug_assert!(!problems.is_empty(), "a ConfigError needs a problem");
        ConfigError { problems }
    }

    /// The problems, one per bad value (or one for an unparsable file).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (idx, problem) in self.problems.iter().enumerate() {
            if idx > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_lines_and_character_columns() {
        let text = "a = 1\n[é]\nbé = 2\n";
        assert_eq!(
            Location::of_offset(text, 0),
            Location { line: 1, column: 1 }
        );
        assert_eq!(
            Location::of_offset(text, 4),
            Location { line: 1, column: 5 }
        );
        assert_eq!(
            Location::of_offset(text, 6),
            Location { line: 2, column: 1 }
        );
        // "bé = 2" starts at byte 11; '=' is at byte 15 but character column 4.
        assert_eq!(
            Location::of_offset(text, 15),
            Location { line: 3, column: 4 }
        );
        // Inside the two-byte 'é' and past the end are clamped, not panics.
        assert_eq!(
            Location::of_offset(text, 8),
            Location { line: 2, column: 2 }
        );
        assert_eq!(
            Location::of_offset(text, 999),
            Location { line: 4, column: 1 }
        );
    }

    #[test]
    fn problems_print_compiler_style_one_per_line() {
        let error = ConfigError::new(vec![
            Problem {
                file: PathBuf::from("config.toml"),
                location: Some(Location {
                    line: 12,
                    column: 1,
                }),
                key: Some("traces.max_line_bytes".into()),
                message: "must be between 1024 and 1073741824, got 5".into(),
            },
            Problem::whole_file(Path::new("other.toml"), "cannot read: denied"),
        ]);
        assert_eq!(
            error.to_string(),
            "config.toml:12:1: traces.max_line_bytes: must be between 1024 and 1073741824, got 5\n\
             other.toml: cannot read: denied"
        );
    }
}

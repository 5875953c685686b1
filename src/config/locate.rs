//! Maps between key paths and byte spans of a parsed TOML document.
//!
//! toml's deserialization errors carry a byte span but no public key path,
//! and validation errors carry a key path but no span. Both are recovered
//! from the spanned document tree (`toml::de::DeTable`), generically, so no
//! configuration key needs code of its own to be reported precisely.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The dotted key path of the most deeply nested key or value whose span
/// contains byte `offset`, or `None` when the offset lies outside every entry
/// (a syntax error between entries, say).
pub fn key_path_at(root: &DeTable<'_>, offset: usize) -> Option<String> {
    let mut path = Vec::new();
    find_in_table(root, offset, &mut path).then(|| path.join("."))
}

/// The span of the key written for `key_path` (dot-separated), or of the
/// deepest ancestor present in the document when the key itself is absent
/// (its value came from the defaults). `None` when not even the first segment
/// is written in the file.
pub fn span_of_key(root: &DeTable<'_>, key_path: &str) -> Option<Range<usize>> {
    let mut table = root;
    let mut found = None;
    for segment in key_path.split('.') {
        let Some((key, value)) = table.iter().find(|(key, _)| key.get_ref() == segment) else {
            break;
        };
        found = Some(key.span());
        match value.get_ref() {
            DeValue::Table(child) => table = child,
            _ => break,
        }
    }
    found
}

/// Removes the entry at `key_path` (dot-separated) from `root`; an array
/// element's path removes the whole array. Whether something was removed.
pub fn remove_key_path(root: &mut DeTable<'_>, key_path: &str) -> bool {
    let mut table = root;
    let mut segments = key_path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        let Some(key) = table.keys().find(|key| key.get_ref() == segment).cloned() else {
            return false;
        };
        let descend = !is_last
            && table
                .get(&key)
                .is_some_and(|value| matches!(value.get_ref(), DeValue::Table(_)));
        if !descend {
            return table.remove(&key).is_some();
        }
        match table.get_mut(&key).map(|value| value.get_mut()) {
            Some(DeValue::Table(child)) => table = child,
            _ => return false,
        }
    }
    false
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

fn find_in_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        // A table opened by a `[header]` has a value span that need not cover
        // its keys, so its children are searched even when it does not match.
        if find_in_value(value, offset, path)
            || contains(&key.span(), offset)
            || contains(&value.span(), offset)
        {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut Vec<String>) -> bool {
    match value.get_ref() {
        DeValue::Table(table) => find_in_table(table, offset, path),
        DeValue::Array(items) => items.iter().enumerate().any(|(idx, item)| {
            path.push(idx.to_string());
            let found = find_in_value(item, offset, path) || contains(&item.span(), offset);
            if !found {
                path.pop();
            }
            found
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "top = 1\n\
                       [traces]\n\
                       dir = \"t\"\n\
                       inline = { a = 1, b = [10, { c = 2 }] }\n\
                       [llm]\n\
                       dir = \"x\"\n";

    fn at(needle: &str) -> Option<String> {
        let root = DeTable::parse(DOC).unwrap();
        key_path_at(root.get_ref(), DOC.find(needle).unwrap())
    }

    #[test]
    fn offsets_resolve_to_the_innermost_key_path() {
        assert_eq!(at("top").as_deref(), Some("top"));
        assert_eq!(at("\"t\"").as_deref(), Some("traces.dir"));
        assert_eq!(at("a = 1").as_deref(), Some("traces.inline.a"));
        assert_eq!(at("10").as_deref(), Some("traces.inline.b.0"));
        assert_eq!(at("c = 2").as_deref(), Some("traces.inline.b.1.c"));
        assert_eq!(at("\"x\"").as_deref(), Some("llm.dir"));
    }

    #[test]
    fn key_paths_resolve_to_the_written_key_or_its_nearest_ancestor() {
        let root = DeTable::parse(DOC).unwrap();
        let root = root.get_ref();
        let start = |path| span_of_key(root, path).map(|span| span.start);
        assert_eq!(start("llm.dir"), DOC.rfind("dir = \"x\""));
        assert_eq!(start("traces.dir"), DOC.find("dir = \"t\""));
        assert_eq!(start("traces.missing"), DOC.find("traces"));
        assert_eq!(start("absent.key"), None);
    }
}

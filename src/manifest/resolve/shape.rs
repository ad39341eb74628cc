//! Problems of shape (unknown keys, wrong types, values outside a set):
//! serde stops at the first, so each section of the file is read again on
//! its own to find the first of every section.

use std::collections::BTreeMap;
use std::ops::Range;

use super::super::error::{Locator, Problem};
use super::super::raw::RawManifest;

/// Every problem of shape in a manifest serde refused (serde stops at the
/// first): each section (`[defaults]`, each `[runners.X]`, each
/// `[tasks.X]` with its sub-tables) is read again alone, the rest of the
/// file blanked out so that lines and columns stay the file's.
pub(super) fn problems(loc: &Locator, first: &toml::de::Error) -> Vec<Problem> {
    let mut problems = vec![loc.toml_problem(first)];
    let sections = sections(loc.source);
    if sections.len() > 1 {
        for ranges in sections.values() {
            let mut masked = loc.source.as_bytes().to_vec();
            let mut kept = ranges.iter().peekable();
            for (i, byte) in masked.iter_mut().enumerate() {
                while kept.next_if(|r| r.end <= i).is_some() {}
                let keep = kept.peek().is_some_and(|r| r.contains(&i));
                if !keep && *byte != b'\n' {
                    *byte = b' ';
                }
            }
            // Kept ranges are whole lines: the text is still UTF-8.
            let Ok(masked) = String::from_utf8(masked) else {
                continue;
            };
            if let Err(e) = toml::from_str::<RawManifest>(&masked) {
                problems.push(loc.toml_problem(&e));
            }
        }
    }
    problems.sort_by_key(|p| (p.line, p.column));
    problems.dedup();
    problems
}

/// The byte ranges of each section of a TOML file, by section (`tasks.X`
/// for `[tasks.X]` and `[tasks.X.env]`; `` for the lines before the first
/// header), found from the header lines.
fn sections(source: &str) -> BTreeMap<String, Vec<Range<usize>>> {
    let mut sections: BTreeMap<String, Vec<Range<usize>>> = BTreeMap::new();
    let mut current = String::new();
    let mut offset = 0;
    for line in source.split_inclusive('\n') {
        if let Some(path) = header(line) {
            let depth = if matches!(path.first().map(String::as_str), Some("tasks" | "runners")) {
                2
            } else {
                1
            };
            current = path
                .iter()
                .take(depth)
                .cloned()
                .collect::<Vec<_>>()
                .join(".");
        }
        let range = offset..offset + line.len();
        match sections.entry(current.clone()).or_default() {
            ranges if ranges.last().is_some_and(|r| r.end == range.start) => {
                if let Some(last) = ranges.last_mut() {
                    last.end = range.end;
                }
            }
            ranges => ranges.push(range),
        }
        offset += line.len();
    }
    sections
}

/// The key path of a table header line (`[tasks."a.b".env]` is `tasks`,
/// `a.b`, `env`).
fn header(line: &str) -> Option<Vec<String>> {
    let inner = line.trim().strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let mut path = vec![String::new()];
    let mut quote = None;
    for c in inner.chars() {
        match (quote, c) {
            (None, ']') => {
                return Some(path.into_iter().map(|p| p.trim().to_owned()).collect());
            }
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '.') => path.push(String::new()),
            (_, c) => path.last_mut()?.push(c),
        }
    }
    None
}

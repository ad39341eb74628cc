//! Manifest errors that name the file, the line, the table and the key.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("no manifest found: {0}")]
    NotFound(String),
    #[error("cannot read manifest {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid manifest. Holds every problem found.
    #[error("{}", render_problems(problems))]
    Invalid { problems: Vec<Problem> },
}

/// One thing wrong with the manifest, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The table the key is in, e.g. `tasks.add`.
    pub table: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // Not in a file: the task modules, as named on the command line.
            write!(f, "{}: ", self.file.display())?;
        } else {
            write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        }
        match (&self.table, &self.key) {
            (Some(table), Some(key)) => write!(f, "[{table}] key `{key}`: ")?,
            (Some(table), None) => write!(f, "[{table}]: ")?,
            (None, Some(key)) => write!(f, "key `{key}`: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

fn render_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Turns byte spans of one source file into [`Problem`]s.
#[derive(Debug)]
pub struct Locator<'a> {
    pub file: PathBuf,
    pub source: &'a str,
}

impl Locator<'_> {
    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let before = &self.source[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.source[line_start..offset].chars().count() + 1;
        (line, column)
    }

    pub fn problem(
        &self,
        span: Range<usize>,
        table: Option<&str>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> Problem {
        let (line, column) = self.line_col(span.start);
        Problem {
            file: self.file.clone(),
            line,
            column,
            table: table.map(str::to_owned),
            key: key.map(str::to_owned),
            message: message.into(),
        }
    }

    /// A problem from a TOML syntax or type error: the table and key are
    /// worked out from the text around the span.
    pub fn toml_problem(&self, err: &toml::de::Error) -> Problem {
        let span = err.span().unwrap_or(0..0);
        let table = self.table_at(span.start);
        let key = self.key_at(&span);
        self.problem(span, table.as_deref(), key.as_deref(), err.message())
    }

    /// The header of the table that encloses `offset` (`tasks.add` for `[tasks.add]`).
    fn table_at(&self, offset: usize) -> Option<String> {
        let offset = offset.min(self.source.len());
        self.source[..offset].lines().rev().find_map(|line| {
            let line = line.trim();
            let inner = line.strip_prefix('[')?;
            let inner = inner.strip_prefix('[').unwrap_or(inner);
            let end = inner.find(']')?;
            Some(inner[..end].trim().to_owned())
        })
    }

    /// The key written on the line of `span`: the text before `=` when the span
    /// points at a value, or the span's own text when it points at a key.
    fn key_at(&self, span: &Range<usize>) -> Option<String> {
        let start = span.start.min(self.source.len());
        let line_start = self.source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.source[start..]
            .find('\n')
            .map_or(self.source.len(), |i| start + i);
        let line = &self.source[line_start..line_end];
        if line.trim_start().starts_with('[') {
            return None;
        }
        let col = start - line_start;
        match line.find('=') {
            Some(eq) if eq < col => Some(line[..eq].trim().trim_matches('"').to_owned()),
            _ => {
                let end = span.end.clamp(start, line_end);
                let text = self.source[start..end].trim().trim_matches('"');
                (!text.is_empty()).then(|| text.to_owned())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locator(source: &str) -> Locator<'_> {
        Locator {
            file: "tasks.toml".into(),
            source,
        }
    }

    #[test]
    fn line_and_column_are_one_based() {
        let l = locator("a = 1\nbb = 2\n");
        assert_eq!(l.line_col(0), (1, 1));
        assert_eq!(l.line_col(6), (2, 1));
        assert_eq!(l.line_col(11), (2, 6));
    }

    #[test]
    fn key_and_table_come_from_the_text() {
        let src = "[tasks.add]\ncommand = [\"x\"]\npriority = \"urgent\"\n";
        let l = locator(src);
        let start = src.find("\"urgent\"").unwrap_or_default();
        assert_eq!(l.table_at(start).as_deref(), Some("tasks.add"));
        assert_eq!(l.key_at(&(start..start + 8)).as_deref(), Some("priority"));
    }
}

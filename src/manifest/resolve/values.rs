//! The values of the manifest's keys: durations, sizes, counts, argv
//! lists and paths, each checked where it is written (a problem names its
//! line and key).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::manifest::raw::Spanned;

use super::Cx;

impl Cx<'_> {
    /// A CPU time limit is counted by the kernel in whole seconds.
    pub(super) fn at_least_a_second(
        &mut self,
        limit: Duration,
        value: Option<&Spanned<toml::Value>>,
        table: &str,
    ) -> Option<Duration> {
        if limit >= Duration::from_secs(1) {
            return Some(limit);
        }
        if let Some(value) = value {
            self.err(
                value.span(),
                table,
                Some("cpu_time_limit"),
                "`cpu_time_limit` must be at least 1s (the kernel counts CPU time in seconds)",
            );
        }
        None
    }

    /// A program with arguments: a non-empty list of strings, or (when
    /// `allow_string`) a single program name.
    pub(super) fn argv(
        &mut self,
        value: &Spanned<toml::Value>,
        table: &str,
        key: &str,
        allow_string: bool,
    ) -> Option<Vec<String>> {
        let argv = match value.get_ref() {
            toml::Value::String(s) if allow_string => Some(vec![s.clone()]),
            toml::Value::String(_) => {
                self.err(
                    value.span(),
                    table,
                    Some(key),
                    format!(
                        "`{key}` takes an argv list such as [\"prog\", \"arg\"], not a shell string"
                    ),
                );
                return None;
            }
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>(),
            _ => None,
        };
        match argv {
            Some(argv) if argv.first().is_some_and(|p| !p.is_empty()) => Some(argv),
            _ => {
                let expected = if allow_string {
                    "a program name or a non-empty list of strings"
                } else {
                    "a non-empty list of strings"
                };
                self.err(
                    value.span(),
                    table,
                    Some(key),
                    format!("expected {expected}"),
                );
                None
            }
        }
    }

    pub(super) fn existing_file(
        &mut self,
        value: &Spanned<String>,
        table: &str,
        key: &str,
    ) -> Option<PathBuf> {
        self.existing(value, table, key, Path::is_file, &format!("{key} file"))
    }

    pub(super) fn existing_dir(
        &mut self,
        value: &Spanned<String>,
        table: &str,
        key: &str,
    ) -> Option<PathBuf> {
        self.existing(value, table, key, Path::is_dir, "directory")
    }

    /// `value` as a path relative to the manifest's directory, if `exists` holds for it.
    pub(super) fn existing(
        &mut self,
        value: &Spanned<String>,
        table: &str,
        key: &str,
        exists: fn(&Path) -> bool,
        what: &str,
    ) -> Option<PathBuf> {
        let path = self.dir.join(value.get_ref());
        if exists(&path) {
            return Some(path);
        }
        let message = format!("{what} not found: {}", path.display());
        self.err(value.span(), table, Some(key), message);
        None
    }

    pub(super) fn positive(
        &mut self,
        value: Option<&Spanned<u32>>,
        table: &str,
        key: &str,
    ) -> Option<u32> {
        let value = value?;
        if *value.get_ref() == 0 {
            self.err(
                value.span(),
                table,
                Some(key),
                format!("`{key}` must be at least 1"),
            );
            return None;
        }
        Some(*value.get_ref())
    }

    /// A duration: a humantime string (`"30s"`, `"1m 30s"`) or a number of seconds.
    pub(super) fn duration(
        &mut self,
        value: Option<&Spanned<toml::Value>>,
        table: &str,
        key: &str,
    ) -> Option<Duration> {
        let value = value?;
        let parsed = match value.get_ref() {
            toml::Value::String(s) => humantime::parse_duration(s).map_err(|e| {
                // humantime appends the list of every unit it knows: keep the reason.
                let e = e.to_string();
                let reason = e.split(", supported units").next().unwrap_or(&e);
                format!(
                    "invalid duration \"{s}\": {reason} (write e.g. \"30s\", \"500ms\", \"5m\", \"1h 30m\")"
                )
            }),
            toml::Value::Integer(n) if *n >= 0 => Ok(Duration::from_secs(n.unsigned_abs())),
            toml::Value::Float(f) if f.is_finite() && *f >= 0.0 => Ok(Duration::from_secs_f64(*f)),
            other => Err(format!(
                "expected a duration such as \"30s\" or a number of seconds, found {other}"
            )),
        };
        match parsed {
            Ok(d) => Some(d),
            Err(msg) => {
                self.err(value.span(), table, Some(key), msg);
                None
            }
        }
    }

    /// A size: a number of bytes or a string such as `"16MiB"`.
    pub(super) fn bytes(
        &mut self,
        value: Option<&Spanned<toml::Value>>,
        table: &str,
        key: &str,
    ) -> Option<u64> {
        let value = value?;
        let parsed = match value.get_ref() {
            toml::Value::Integer(n) if *n > 0 => Ok(n.unsigned_abs()),
            toml::Value::String(s) => s
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|e| {
                    format!("invalid size \"{s}\": {e} (write e.g. \"16MiB\" or a number of bytes)")
                })
                .and_then(|n| {
                    if n == 0 {
                        Err("size must be above 0".to_owned())
                    } else {
                        Ok(n)
                    }
                }),
            other => Err(format!(
                "expected a size such as \"16MiB\" or a number of bytes, found {other}"
            )),
        };
        match parsed {
            Ok(n) => Some(n),
            Err(msg) => {
                self.err(value.span(), table, Some(key), msg);
                None
            }
        }
    }
}

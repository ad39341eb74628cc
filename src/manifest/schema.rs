//! The JSON Schema of the manifest (`fastworker schema`), for editors
//! (Taplo, Even Better TOML) and CI. It is derived from the very types the
//! loader reads ([`super::raw`]), so a key the loader takes is in the
//! schema and one it refuses is not. A value the loader reads in several
//! forms (a duration as text or seconds, say) has a schema-only type here;
//! what the schema cannot say (that a task has exactly one way to run, that
//! a cron expression parses) `fastworker check` does.

use schemars::JsonSchema;
use serde_json::Value;

use super::raw::RawManifest;

/// A program and its arguments: an array of strings, e.g. `["python3",
/// "-u"]` (one string is a program without arguments).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(super) enum CommandLine {
    Program(String),
    Argv(Vec<String>),
}

/// A duration: text such as `"30s"`, `"5m"`, `"1h 30m"`, `"200ms"`, or a
/// number of seconds.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(super) enum DurationValue {
    #[schemars(example = "30s")]
    Text(String),
    Seconds(#[schemars(range(min = 0))] f64),
}

/// A size: text such as `"16MiB"` or `"1GB"`, or a number of bytes.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(super) enum Size {
    Text(String),
    Bytes(#[schemars(range(min = 1))] u64),
}

/// When a schedule stops: an RFC 3339 date-time (`2027-01-01T00:00:00Z`),
/// a local date-time or a date (in the schedule's time zone), written as a
/// string or a TOML date.
#[derive(JsonSchema)]
#[allow(dead_code)]
pub(super) struct Until(String);

/// Any value (a task's argument).
#[derive(JsonSchema)]
#[allow(dead_code)]
pub(super) struct AnyValue(Value);

/// What a schedule does with fires missed while the control plane was
/// down: `skip` them (the default) or run `once` for all of them.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(super) enum CatchUp {
    Skip,
    Once,
}

/// What a schedule does when its previous run is still going: `skip` the
/// fire (the default) or `allow` the overlap.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(super) enum Overlap {
    Skip,
    Allow,
}

/// The schema, as a JSON value (draft 07, which the TOML language servers
/// read).
pub fn manifest_schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<RawManifest>().to_value();
    drop_null(&mut schema);
    schema
}

/// TOML has no null: an optional key is absent, never null, so `null` is
/// taken out of the schema's types (editors would offer it).
fn drop_null(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".to_owned(), only);
                }
            }
            for key in ["anyOf", "oneOf"] {
                if let Some(Value::Array(options)) = map.get_mut(key) {
                    options.retain(|o| o.get("type").is_none_or(|t| t != "null"));
                    if options.len() == 1 {
                        let only = options.remove(0);
                        map.remove(key);
                        if let Value::Object(only) = only {
                            for (k, v) in only {
                                map.entry(k).or_insert(v);
                            }
                        }
                    }
                }
            }
            for v in map.values_mut() {
                drop_null(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null),
        _ => {}
    }
}

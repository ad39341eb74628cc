//! Property tests (proptest, on stable) for what reads untrusted bytes: the
//! wire decoders, the manifest parser and the journal's scan. Each runs a
//! fixed number of generated cases (bounded time in CI); every input must
//! get an answer (a value or an error that says something), never a panic
//! or a hang. proptest keeps the inputs of any failure in
//! `tests/it/fuzz.proptest-regressions`, and replays them first on every
//! run: found inputs become regression tests.

use std::io::Write as _;

use fastworker::protocol::{Manage, Query, Submit};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// `n` cases, or `FASTWORKER_FUZZ_CASES` (for a long hunt: the CI run is
/// bounded, a local one can run for hours).
fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("FASTWORKER_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(n);
    ProptestConfig::with_cases(n)
}

/// Any JSON value, nested up to `depth`.
fn json_value(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(depth, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// A message shaped like the real ones, with fields mixed, missing, of
/// the wrong type or out of range.
fn message() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("id"),
        Just("name"),
        Just("args"),
        Just("kwargs"),
        Just("priority"),
        Just("eta"),
        Just("callback"),
        Just("reply"),
        Just("action"),
        Just("task_id"),
        Just("tasks"),
        Just("auth"),
        Just("worker_id"),
        Just("session"),
        Just("seq"),
        Just("running"),
        Just("lease"),
        Just("execution"),
        Just("capacity"),
        Just("address"),
    ];
    let known = prop_oneof![
        Just(json!("add")),
        Just(json!("batch_submit")),
        Just(json!("cancel")),
        Just(json!("status")),
        Just(json!("register")),
        Just(json!("poll")),
        Just(json!("result")),
        Just(json!("high")),
        Just(json!("ack")),
        Just(json!("2026-11-29T12:00:00Z")),
        Just(json!({"address": "tcp://127.0.0.1:1"})),
        Just(json!([1, 2])),
        Just(json!(u64::MAX)),
    ];
    prop::collection::vec((field, prop_oneof![json_value(3), known]), 0..10).prop_map(|fields| {
        Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    })
}

fn decode_all(bytes: &[u8]) {
    if let Ok(submit) = Submit::decode(bytes) {
        match submit.message {
            Submit::Task(task) => {
                let _ = task.check();
            }
            Submit::Batch(tasks) => {
                for task in tasks {
                    let _ = task.check();
                }
            }
        }
    }
    let _ = Query::decode(bytes);
    let _ = Manage::decode(bytes);
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn the_decoders_answer_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn the_decoders_answer_any_message(message in message()) {
        decode_all(&serde_json::to_vec(&message).expect("json"));
    }

    #[test]
    fn errors_name_what_is_wrong(message in message()) {
        let bytes = serde_json::to_vec(&message).expect("json");
        if let Err(e) = Query::decode(&bytes) {
            prop_assert!(!e.trim().is_empty());
        }
        if let Err(e) = Submit::decode(&bytes) {
            prop_assert!(!e.trim().is_empty());
        }
    }
}

/// Lines of a manifest: real keys and tables, with values of every kind.
fn manifest_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("command"),
        Just("script"),
        Just("interpreter"),
        Just("runner"),
        Just("function"),
        Just("timeout"),
        Just("priority"),
        Just("retries"),
        Just("retry_backoff"),
        Just("env"),
        Just("cwd"),
        Just("max_output"),
        Just("mode"),
        Just("pool_size"),
        Just("grace_period"),
        Just("memory_limit"),
        Just("cpu_time_limit"),
        Just("max_open_files"),
        Just("max_processes"),
        Just("max_concurrency"),
        Just("inherit_env"),
        Just("description"),
        Just("bogus"),
    ];
    let value = prop_oneof![
        Just("\"30s\"".to_owned()),
        Just("\"3x\"".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("4294967296".to_owned()),
        Just("[\"sh\", \"-c\", \"true\"]".to_owned()),
        Just("[]".to_owned()),
        Just("\"python\"".to_owned()),
        Just("\"m:f\"".to_owned()),
        Just("{ A = \"b\" }".to_owned()),
        Just("true".to_owned()),
        Just("\"pool\"".to_owned()),
        Just("\"256MiB\"".to_owned()),
        Just("1.5".to_owned()),
        Just("\"\"".to_owned()),
        "\"[^\"\\\\\\n]{0,20}\"",
    ];
    let table = prop_oneof![
        Just("[tasks.a]".to_owned()),
        Just("[tasks.\"b c\"]".to_owned()),
        Just("[defaults]".to_owned()),
        Just("[runners.python]".to_owned()),
        Just("[runners.node]".to_owned()),
        Just("[other]".to_owned()),
    ];
    let line = prop_oneof![
        table,
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        ".{0,30}",
    ];
    prop::collection::vec(line, 0..16).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(cases(600))]

    #[test]
    fn the_manifest_parser_answers_any_text(text in manifest_text()) {
        // Not read: paths in it resolve against a directory that exists.
        let path = std::env::temp_dir().join("fastworker-fuzz").join("tasks.toml");
        match fastworker::manifest::Manifest::from_source(&path, &text) {
            Ok(_) => {}
            Err(e) => {
                // Every problem names the file.
                let shown = e.to_string();
                prop_assert!(shown.contains("tasks.toml"), "{shown}");
            }
        }
    }

    #[test]
    fn the_journal_scan_answers_any_file(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        magic in any::<bool>(),
    ) {
        let mut file = tempfile::tempfile().expect("file");
        if magic {
            file.write_all(fastworker::journal::format::MAGIC).expect("write");
        }
        file.write_all(&bytes).expect("write");
        let _ = fastworker::journal::format::scan(&file);
    }
}

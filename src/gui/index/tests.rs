use std::sync::Arc;

use chrono::Utc;
use serde_json::json;

use super::*;
use crate::control_plane::events::{Forget, Submitted, TaskEvent};

struct Feed {
    index: TaskIndex,
    id: u64,
}

impl Feed {
    fn new() -> Feed {
        Feed {
            index: TaskIndex::new(View::new(&["secret".to_owned()]), "control-plane"),
            id: 0,
        }
    }

    fn event(&mut self, event: Event) {
        self.id += 1;
        self.index.apply(&Stamped {
            id: self.id,
            at: Utc::now(),
            event,
        });
    }

    fn task(&mut self, id: &str, name: &str, from: Option<Status>, to: Status, change: TaskChange) {
        self.event(Event::Task(TaskEvent {
            task_id: id.into(),
            name: name.into(),
            priority: Priority::Normal,
            from,
            to,
            change,
        }));
    }

    fn accept(&mut self, id: &str, name: &str, retry_of: Option<&str>) {
        let submitted = Arc::new(Submitted {
            submitted_at: Utc::now(),
            eta: None,
            args: vec![json!(5), json!(3)],
            kwargs: json!({"secret": "hunter2"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            retry_of: retry_of.map(str::to_owned),
        });
        self.task(
            id,
            name,
            None,
            Status::Queued,
            TaskChange::Accepted { submitted },
        );
    }

    fn run(&mut self, id: &str, name: &str, to: Status, error: Option<&str>) {
        self.task(
            id,
            name,
            Some(Status::Queued),
            Status::Running,
            TaskChange::Started {
                attempt: 1,
                worker: None,
                waited_ms: 1.0,
            },
        );
        self.task(
            id,
            name,
            Some(Status::Running),
            to,
            TaskChange::Finished {
                error: error.map(str::to_owned),
                attempts: 1,
                run_ms: Some(12.0),
                result: (to == Status::Success).then(|| "8".to_owned()),
            },
        );
    }
}

fn ids(page: &Page) -> Vec<&str> {
    page.rows.iter().map(|r| r.task_id.as_str()).collect()
}

#[test]
fn rows_follow_their_tasks_and_states_are_counted() {
    let mut f = Feed::new();
    f.accept("a", "add", None);
    f.accept("b", "boom", None);
    f.run("a", "add", Status::Success, None);
    f.run("b", "boom", Status::Failure, Some("failed: exit code 3"));
    f.accept("c", "add", None);
    let a = f.index.get("a").cloned().expect("a is known");
    assert_eq!(a.status, Status::Success);
    assert_eq!(a.result.as_deref(), Some("8"));
    assert_eq!(a.worker.as_deref(), Some("control-plane"));
    assert_eq!(a.duration, Some(0.012));
    assert!(a.started_at.is_some() && a.finished_at.is_some());
    assert_eq!(a.input, r#"5, 3, secret="***""#, "masked in the list");
    assert_eq!(f.index.counts(), [1, 0, 0, 0, 1, 1, 0]);
    f.event(Event::Forgotten {
        task_ids: vec!["a".into()],
        reason: Forget::Evicted,
    });
    assert!(f.index.get("a").is_none());
    assert_eq!(f.index.counts(), [1, 0, 0, 0, 0, 1, 0]);
    assert_eq!(f.index.last_event(), f.id);
}

#[test]
fn pages_walk_every_row_once_in_both_orders() {
    let mut f = Feed::new();
    for i in 0..25 {
        f.accept(&format!("t{i:02}"), "add", None);
    }
    for sort in [Sort::Newest, Sort::Oldest, Sort::Finished, Sort::Duration] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = f
                .index
                .page(&Filter::default(), sort, 10, cursor.as_deref())
                .expect("a page");
            assert_eq!(page.total, 25);
            seen.extend(ids(&page).into_iter().map(str::to_owned));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!((seen.len(), unique.len()), (25, 25), "{sort:?}");
        if sort == Sort::Newest {
            assert_eq!(seen.first().map(String::as_str), Some("t24"));
        }
        if sort == Sort::Oldest {
            assert_eq!(seen.first().map(String::as_str), Some("t00"));
        }
    }
    let bad = f
        .index
        .page(&Filter::default(), Sort::Newest, 10, Some("o10"));
    assert!(bad.is_err_and(|e| e.contains("bad cursor")));
}

#[test]
fn filters_narrow_and_the_chips_count_every_state_of_what_they_match() {
    let mut f = Feed::new();
    f.accept("a1", "add", None);
    f.accept("a2", "add", None);
    f.accept("b1", "boom", None);
    f.run("a1", "add", Status::Success, None);
    f.run("b1", "boom", Status::Failure, Some("ValueError: Bad Input"));
    let filter = Filter {
        statuses: vec![Status::Success],
        names: vec!["add".into()],
        ..Filter::default()
    };
    let page = f.index.page(&filter, Sort::Newest, 50, None).expect("page");
    assert_eq!(ids(&page), ["a1"]);
    assert_eq!(page.total, 1);
    assert_eq!(page.counts, [1, 0, 0, 0, 1, 0, 0], "a2 queued, a1 success");
    let search = Filter::default().search("BAD input");
    let page = f.index.page(&search, Sort::Newest, 50, None).expect("page");
    assert_eq!(ids(&page), ["b1"], "the error is searched, case aside");
    let by_worker = Filter {
        worker: Some("w9".into()),
        ..Filter::default()
    };
    assert_eq!(
        f.index
            .page(&by_worker, Sort::Newest, 50, None)
            .map(|p| p.total),
        Ok(0)
    );
    assert_eq!(f.index.ids(&Filter::default(), 2), ["b1", "a2"]);
}

#[test]
fn a_retry_is_linked_both_ways_and_a_refused_task_goes() {
    let mut f = Feed::new();
    f.accept("old", "boom", None);
    f.run("old", "boom", Status::Failure, Some("x"));
    f.accept("new", "boom", Some("old"));
    assert_eq!(
        f.index.get("old").and_then(|r| r.retried_by.as_deref()),
        Some("new")
    );
    assert_eq!(
        f.index.get("new").and_then(|r| r.retry_of.as_deref()),
        Some("old")
    );
    f.accept("gone", "add", None);
    f.task(
        "gone",
        "add",
        Some(Status::Queued),
        Status::Failure,
        TaskChange::Refused {
            error: "disk full".into(),
        },
    );
    assert!(f.index.get("gone").is_none());
}

#[test]
fn a_load_replaces_the_rows_and_older_events_are_skipped() {
    let mut old = TaskRecord::sample("old", Status::Failure);
    old.submitted_at = Utc::now() - chrono::Duration::seconds(10);
    let mut new = TaskRecord::sample("new", Status::Queued);
    new.retry_of = Some("old".into());
    let mut index = TaskIndex::new(View::default(), "cp");
    index.load([new.clone(), old.clone()].iter(), 7);
    let page = index
        .page(&Filter::default(), Sort::Newest, 10, None)
        .expect("page");
    assert_eq!(ids(&page), ["new", "old"], "ordered by submit time");
    assert_eq!(
        index.get("old").and_then(|r| r.retried_by.as_deref()),
        Some("new")
    );
    index.apply(&Stamped {
        id: 7,
        at: Utc::now(),
        event: Event::Forgotten {
            task_ids: vec!["old".into()],
            reason: Forget::Deleted,
        },
    });
    assert!(index.get("old").is_some(), "event 7 is in the load already");
}

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::TimeDelta;
use tokio::sync::mpsc;

use super::*;
use crate::control_plane::{Acceptance, Command};
use crate::manifest::Priority;
use crate::protocol::{Status, TaskRecord};
use crate::schedule::Rule;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn every(secs: u64) -> Schedule {
    Schedule::new(Rule::Every(Duration::from_secs(secs)))
}

#[test]
fn a_restart_neither_fires_again_nor_forgets() {
    let t0 = t("2026-11-29T10:00:00Z");
    let mut kept = Entry::new("tick", every(60), None);
    kept.state.anchor = Some(t0);
    kept.state.last_fire = Some(t0);
    kept.state.fires = 4;
    let mut e = Entry::new("tick", every(60), Some(kept.state.clone()));
    let plan = e.start(t0 + TimeDelta::seconds(30));
    assert_eq!(plan, Start::default(), "nothing missed, nothing pending");
    assert_eq!(
        e.next,
        Some(t0 + TimeDelta::seconds(60)),
        "the next in phase"
    );
    assert_eq!(e.state.fires, 4, "the count is kept");

    // A fire written down, maybe not accepted: submitted again, same id.
    let mut pending = kept.state.clone();
    pending.pending = Some(t0 + TimeDelta::seconds(60));
    let mut e = Entry::new("tick", every(60), Some(pending));
    let plan = e.start(t0 + TimeDelta::seconds(61));
    assert_eq!(plan.resubmit, Some(t0 + TimeDelta::seconds(60)));
    assert_eq!(plan.missed, 0, "the pending fire is not a missed one");
    assert_eq!(
        e.task_id(t0 + TimeDelta::seconds(60)),
        "tick@20261129T100100.000Z"
    );
}

#[test]
fn missed_fires_are_skipped_or_made_up_once() {
    let t0 = t("2026-11-29T10:00:00Z");
    let down = t0 + TimeDelta::seconds(5 * 60 + 30);
    for (catch_up, made_up) in [
        (CatchUp::Skip, None),
        (CatchUp::Once, Some(t0 + TimeDelta::seconds(300))),
    ] {
        let schedule = Schedule {
            catch_up,
            ..every(60)
        };
        let state = State {
            anchor: Some(t0),
            last_fire: Some(t0),
            definition: format!("{} ({})", schedule.rule, schedule.timezone),
            ..State::default()
        };
        let mut e = Entry::new("tick", schedule, Some(state));
        let plan = e.start(down);
        assert_eq!(plan.missed, 5, "{catch_up:?}");
        assert_eq!(plan.catch_up, made_up, "{catch_up:?}");
        assert_eq!(e.next, Some(t0 + TimeDelta::seconds(360)));
    }
}

#[test]
fn a_count_ends_a_schedule_and_a_changed_rule_starts_it_afresh() {
    let t0 = t("2026-11-29T10:00:00Z");
    let schedule = Schedule {
        count: Some(3),
        ..every(60)
    };
    let mut e = Entry::new("tick", schedule.clone(), None);
    e.state.fires = 3;
    e.start(t0);
    assert_eq!(e.next, None, "three fires of three");
    let mut other = Entry::new("tick", every(30), Some(e.state.clone()));
    other.start(t0);
    assert_eq!(other.state.fires, 0, "another rule counts afresh");
    assert!(other.next.is_some());
}

/// A core that accepts every submit and says the tasks in `live` run.
fn fake_core(live: Arc<Mutex<HashMap<String, Status>>>) -> (CoreHandle, Arc<Mutex<Vec<NewTask>>>) {
    let (tx, mut rx) = mpsc::channel(64);
    let submitted = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&submitted);
    tokio::spawn(async move {
        while let Some(command) = rx.recv().await {
            match command {
                Command::Submit { tasks, respond } => {
                    let statuses = tasks.iter().map(|_| Status::Queued).collect();
                    for task in tasks {
                        live.lock()
                            .expect("lock")
                            .insert(task.task_id.clone(), Status::Running);
                        seen.lock().expect("lock").push(task);
                    }
                    let _ = respond.send(Ok(Acceptance {
                        statuses,
                        deferred: false,
                    }));
                }
                Command::Get { task_id, respond } => {
                    let status = live.lock().expect("lock").get(&task_id).copied();
                    let _ = respond.send(
                        status
                            .map(|s| TaskRecord::new(task_id, "tick".into(), Priority::Normal, s)),
                    );
                }
                _ => {}
            }
        }
    });
    (CoreHandle::new(tx), submitted)
}

fn ids(submitted: &Arc<Mutex<Vec<NewTask>>>) -> Vec<String> {
    submitted
        .lock()
        .expect("lock")
        .iter()
        .map(|t| t.task_id.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn fires_go_through_the_queue_skip_an_overlap_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("schedules.json");
    let live = Arc::new(Mutex::new(HashMap::new()));
    let (core, submitted) = fake_core(Arc::clone(&live));
    let schedule = Schedule {
        args: vec![serde_json::json!(1)],
        priority: Some(Priority::High),
        ..every(10)
    };
    let (wall, instant) = (Utc::now(), tokio::time::Instant::now());
    let clock = tokio_clock_from(wall, instant);
    let scheduler = Scheduler::new(
        vec![("tick".into(), schedule.clone())],
        core.clone(),
        Some(path.clone()),
        clock,
    );
    let rows = scheduler.schedules();
    let stop = CancellationToken::new();
    let running = tokio::spawn(scheduler.run(tokio::sync::mpsc::channel(1).1, stop.clone()));

    // The first fire, 10 s in: submitted with the schedule's args and priority.
    assert!(
        wait_rows(&rows, Duration::from_secs(11), |r| r
            .first()
            .is_some_and(|r| r.state.fires == 1))
        .await
    );
    {
        let seen = submitted.lock().expect("lock");
        let first = &seen[0];
        assert_eq!(
            (first.name.as_str(), first.priority, first.args.clone()),
            ("tick", Some(Priority::High), vec![serde_json::json!(1)])
        );
    }
    // Still running 10 s later: that fire is skipped.
    assert!(
        wait_rows(&rows, Duration::from_secs(11), |r| r
            .first()
            .is_some_and(|r| r.state.skipped == 1))
        .await
    );
    assert_eq!(ids(&submitted).len(), 1);
    // Done: the next fires.
    for status in live.lock().expect("lock").values_mut() {
        *status = Status::Success;
    }
    assert!(
        wait_rows(&rows, Duration::from_secs(11), |r| r
            .first()
            .is_some_and(|r| r.state.fires == 2))
        .await
    );
    stop.cancel();
    let _ = running.await;
    let before = ids(&submitted);

    // A restart a moment later: nothing fires again, the count goes on.
    let scheduler = Scheduler::new(
        vec![("tick".into(), schedule)],
        core,
        Some(path),
        tokio_clock_from(wall, instant),
    );
    let rows = scheduler.schedules();
    let stop = CancellationToken::new();
    let running = tokio::spawn(scheduler.run(tokio::sync::mpsc::channel(1).1, stop.clone()));
    assert!(wait_rows(&rows, Duration::from_secs(1), |r| r.len() == 1).await);
    assert_eq!(rows.rows()[0].state.fires, 2, "the count survived");
    assert_eq!(ids(&submitted), before, "no fire twice");
    for status in live.lock().expect("lock").values_mut() {
        *status = Status::Success;
    }
    assert!(
        wait_rows(&rows, Duration::from_secs(11), |r| r
            .first()
            .is_some_and(|r| r.state.fires == 3))
        .await
    );
    let all = ids(&submitted);
    let unique: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "each fire its own id: {all:?}");
    assert!(all.iter().all(|id| id.starts_with("tick@")));
    stop.cancel();
    let _ = running.await;
}

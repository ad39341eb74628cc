//! The queue of tasks waiting for a slot, and the rule that orders them.

use std::collections::VecDeque;

use crate::manifest::Priority;

/// A task waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub task_id: String,
    /// Its task type, for per-type concurrency limits.
    pub name: String,
}

/// Tasks waiting to run, one first-in first-out lane per priority.
#[derive(Debug, Default)]
pub struct DispatchQueue {
    lanes: [VecDeque<Waiting>; 4],
}

impl DispatchQueue {
    pub fn push(&mut self, priority: Priority, task: Waiting) {
        self.lanes[priority as usize].push_back(task);
    }

    /// Removes a waiting task (a cancel); false if it is not in the queue.
    pub fn remove(&mut self, task_id: &str) -> bool {
        for lane in &mut self.lanes {
            if let Some(at) = lane.iter().position(|w| w.task_id == task_id) {
                lane.remove(at);
                return true;
            }
        }
        false
    }

    /// Takes the task that runs next.
    ///
    /// **Dispatch rule.** Strictly by priority, then first in first out: the
    /// oldest CRITICAL task runs before any HIGH one, the oldest HIGH before
    /// any NORMAL, and so on. There is no aging: while higher-priority work
    /// keeps arriving, lower priorities wait, which is what "priorities that
    /// hold" means. The one exception is a per-type limit: a task whose type
    /// is at its `max_concurrency` (`has_room` says no) is passed over, keeping
    /// its place, so that other types are not blocked behind it.
    pub fn pop_next(&mut self, has_room: impl Fn(&str) -> bool) -> Option<(Priority, Waiting)> {
        for priority in Priority::ALL {
            let lane = &mut self.lanes[priority as usize];
            if let Some(at) = lane.iter().position(|w| has_room(&w.name)) {
                return lane.remove(at).map(|w| (priority, w));
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tasks waiting at `priority`, in the order they were queued.
    pub fn lane(&self, priority: Priority) -> impl Iterator<Item = &Waiting> {
        self.lanes[priority as usize].iter()
    }

    /// How many tasks wait at each priority, critical first.
    pub fn lengths(&self) -> [usize; 4] {
        [0, 1, 2, 3].map(|i| self.lanes[i].len())
    }

    /// Empties the queue, returning every waiting task.
    pub fn drain(&mut self) -> Vec<Waiting> {
        self.lanes
            .iter_mut()
            .flat_map(|lane| lane.drain(..))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str, name: &str) -> Waiting {
        Waiting {
            task_id: id.into(),
            name: name.into(),
        }
    }

    fn order(q: &mut DispatchQueue, has_room: impl Fn(&str) -> bool + Copy) -> Vec<String> {
        std::iter::from_fn(|| q.pop_next(has_room).map(|(_, w)| w.task_id)).collect()
    }

    #[test]
    fn strict_priority_then_fifo() {
        let mut q = DispatchQueue::default();
        q.push(Priority::Low, w("low1", "t"));
        q.push(Priority::Normal, w("normal1", "t"));
        q.push(Priority::Low, w("low2", "t"));
        q.push(Priority::Critical, w("crit1", "t"));
        q.push(Priority::High, w("high1", "t"));
        q.push(Priority::Critical, w("crit2", "t"));
        assert_eq!(
            order(&mut q, |_| true),
            ["crit1", "crit2", "high1", "normal1", "low1", "low2"]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn a_type_at_its_limit_is_passed_over_and_keeps_its_place() {
        let mut q = DispatchQueue::default();
        q.push(Priority::Critical, w("busy1", "busy"));
        q.push(Priority::Low, w("free1", "free"));
        q.push(Priority::Critical, w("busy2", "busy"));
        assert_eq!(order(&mut q, |name| name != "busy"), ["free1"]);
        assert_eq!(q.lengths(), [2, 0, 0, 0]);
        assert_eq!(order(&mut q, |_| true), ["busy1", "busy2"]);
    }

    #[test]
    fn remove_takes_a_task_out() {
        let mut q = DispatchQueue::default();
        q.push(Priority::Normal, w("a", "t"));
        q.push(Priority::Normal, w("b", "t"));
        assert!(q.remove("a"));
        assert!(!q.remove("a"));
        assert_eq!(order(&mut q, |_| true), ["b"]);
    }
}

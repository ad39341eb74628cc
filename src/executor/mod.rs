//! Running tasks as child processes: the only part of fastworker that starts
//! task processes.
//!
//! [`Executor::run`] takes a [`TaskSpec`] and a [`TaskRequest`] and returns an
//! [`Execution`]: one-shot tasks get a fresh process ([`oneshot`]), pool tasks
//! a warm one ([`pool`]). [`process`] owns spawning, process groups and
//! bounded output capture; [`retry`] turns a task's retry policy into attempts.

pub mod limits;
mod oneshot;
mod outcome;
mod pool;
mod process;
pub mod retry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use outcome::{
    Execution, ExitState, Limit, MAX_NESTING, MAX_RESULT_NESTING, Outcome, STDERR_TAIL, TaskError,
    TaskRequest, check_nesting, check_result, nesting,
};
pub use pool::Pool;
pub use process::{Strays, kill_strays};

use crate::manifest::{Mode, TaskSpec};

/// Runs tasks; owns the warm pools of pool-mode tasks.
#[derive(Debug, Default)]
pub struct Executor {
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    /// Set as `FASTWORKER_OWNER` on every process it starts.
    owner: Option<Arc<str>>,
    /// Where tasks with resource limits get cgroups; found on first use.
    cgroups: Arc<std::sync::OnceLock<limits::Cgroups>>,
}

impl Executor {
    pub fn new() -> Self {
        Executor::default()
    }

    /// An executor whose processes carry `FASTWORKER_OWNER=owner` in their
    /// environment, so that they can be found after a crash of this
    /// process: see [`kill_strays`].
    pub fn owned_by(owner: &str) -> Self {
        Executor {
            owner: Some(owner.into()),
            ..Executor::default()
        }
    }

    /// Runs one attempt of a task. Never fails: every way a run can end is an
    /// [`Outcome`]. Cancelling `cancel` stops the task's process group.
    pub async fn run(
        &self,
        spec: &Arc<TaskSpec>,
        request: &TaskRequest,
        cancel: &CancellationToken,
    ) -> Execution {
        tracing::debug!(name = %spec.name, task_id = %request.task_id, attempt = request.attempt, mode = %spec.mode, "running task");
        let cgroups = self.cgroups_for(spec);
        let execution = match spec.mode {
            Mode::Oneshot => {
                oneshot::run(spec, request, cancel, self.owner.as_deref(), cgroups).await
            }
            Mode::Pool => self.run_pooled(spec, request, cancel).await,
        };
        tracing::debug!(name = %spec.name, task_id = %request.task_id, status = execution.outcome.status(), ms = execution.duration.as_secs_f64() * 1e3, "task ended");
        execution
    }

    /// A run on the task's warm pool. A run whose definition is no longer
    /// the pool's (a reload replaced the pool after the run began, or
    /// while it waited for a process) runs with the definition it began
    /// with, on a pool of its own that ends with it.
    async fn run_pooled(
        &self,
        spec: &Arc<TaskSpec>,
        request: &TaskRequest,
        cancel: &CancellationToken,
    ) -> Execution {
        if let Some(pool) = self.pool_running(spec) {
            // Err: replaced while it waited.
            if let Ok(execution) = pool.run(request, cancel).await {
                return execution;
            }
        }
        tracing::debug!(name = %spec.name, task_id = %request.task_id, "its pool was replaced by a reload: it runs on a pool of its own");
        let own = self.new_pool(spec);
        let execution = match own.run(request, cancel).await {
            Ok(execution) | Err(pool::Replaced(execution)) => execution,
        };
        // Its process stops in the background: the result need not wait.
        tokio::spawn(async move { own.shutdown().await });
        execution
    }

    /// This executor, enforcing resource limits with `cgroups` rather than
    /// with what it would find (tests; `Cgroups::none()` for rlimits only).
    #[must_use]
    pub fn with_cgroups(self, cgroups: limits::Cgroups) -> Self {
        let _ = self.cgroups.set(cgroups);
        self
    }

    /// The cgroups a task with resource limits uses (found on first use);
    /// `None` for a task without limits.
    fn cgroups_for(&self, spec: &TaskSpec) -> Option<&limits::Cgroups> {
        spec.limits
            .any()
            .then(|| self.cgroups.get_or_init(limits::Cgroups::detect_for_use))
    }

    /// The warm pool of a pool-mode task, created on first use.
    pub fn pool(&self, spec: &Arc<TaskSpec>) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up by reference first: a run on a warm pool allocates nothing here.
        if let Some(pool) = pools.get(&spec.name) {
            return Arc::clone(pool);
        }
        let pool = self.new_pool(spec);
        pools.insert(spec.name.clone(), Arc::clone(&pool));
        pool
    }

    /// The task's pool, if its processes run `spec` (none: a reload has
    /// given the task another definition since this run began).
    fn pool_running(&self, spec: &Arc<TaskSpec>) -> Option<Arc<Pool>> {
        let pool = self.pool(spec);
        pool.runs(spec).then_some(pool)
    }

    fn new_pool(&self, spec: &Arc<TaskSpec>) -> Arc<Pool> {
        Arc::new(
            Pool::new(Arc::clone(spec))
                .owned_by(self.owner.clone())
                .limited_by(Arc::clone(&self.cgroups)),
        )
    }

    /// Replaces the warm pools `keep` says no to (given the task's name and
    /// the definition its processes run): they are dropped from the map,
    /// so the next run starts a new pool, and shut down in the background
    /// (busy processes finish their task first). Returns how many.
    pub fn retire_pools(&self, keep: impl Fn(&str, &TaskSpec) -> bool) -> usize {
        let retired: Vec<Arc<Pool>> = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            let names: Vec<String> = pools
                .iter()
                .filter(|(name, pool)| !keep(name, pool.spec()))
                .map(|(name, _)| name.clone())
                .collect();
            names.iter().filter_map(|n| pools.remove(n)).collect()
        };
        let n = retired.len();
        for pool in retired {
            tracing::info!(name = %pool.spec().name, "its definition changed: its warm processes are replaced");
            tokio::spawn(async move { pool.replace().await });
        }
        n
    }

    /// Stops all warm processes (each gets its stdin closed, then its grace period).
    pub async fn shutdown(&self) {
        let pools: Vec<Arc<Pool>> = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.drain().map(|(_, pool)| pool).collect()
        };
        for pool in pools {
            pool.shutdown().await;
        }
    }
}

/// When a run began, on both clocks.
#[derive(Debug, Clone, Copy)]
struct Started {
    at: DateTime<Utc>,
    instant: Instant,
}

impl Started {
    fn now() -> Self {
        Started {
            at: Utc::now(),
            instant: Instant::now(),
        }
    }

    fn finish(
        self,
        request: &TaskRequest,
        outcome: Outcome,
        stderr: String,
        pid: Option<u32>,
    ) -> Execution {
        let duration = self.instant.elapsed();
        Execution {
            task_id: request.task_id.clone(),
            name: request.name.clone(),
            attempt: request.attempt,
            outcome,
            started_at: self.at,
            finished_at: self.at + chrono::TimeDelta::from_std(duration).unwrap_or_default(),
            duration,
            stderr,
            pid,
        }
    }
}

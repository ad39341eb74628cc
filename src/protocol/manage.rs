//! Subworkers, on the management socket (base+5): fastworker's own
//! protocol (FastWorker 0.3.0's subworker crashed at start, so there is
//! nothing to be compatible with). Subworkers only dial out; the control
//! plane never connects to them, so only its ports need to be reachable.

use serde::{Deserialize, Serialize};

use super::{Authed, decode};
use crate::manifest::Priority;

/// What a subworker sends to the management socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Manage {
    /// Answered with [`Registered`].
    Register(Registration),
    /// A heartbeat that also asks for work: held until there is work for it,
    /// a cancel, or [`POLL_HOLD_MS`]; answered with [`PollReply`].
    Poll(Poll),
    /// A leased task's run ended; answered with [`Applied`].
    Result(WorkResult),
    /// A leased task is handed back unfinished (the subworker is stopping);
    /// answered with [`Applied`].
    Release(Release),
    /// The subworker is leaving; answered with [`Applied`].
    Deregister(Hello),
}

/// The longest a poll is held before it is answered with no work: also the
/// heartbeat interval, since an idle subworker polls again at once.
pub const POLL_HOLD_MS: u64 = 1000;

/// Who is speaking: a worker id and the session (one per process start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub worker_id: String,
    pub session: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    #[serde(flatten)]
    pub hello: Hello,
    /// Where it runs, for people (`fastworker workers`): its host and pid, or
    /// the `--base-address` it was given.
    pub address: String,
    /// Tasks it runs at once.
    pub capacity: usize,
    /// Each task it can run, with what the control plane needs to schedule it.
    pub tasks: std::collections::BTreeMap<String, TaskOffer>,
    /// Leases it holds (still running, or with a result not yet acknowledged):
    /// after a restart of the control plane, these stay its.
    #[serde(default)]
    pub running: Vec<String>,
}

/// A task as a subworker defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOffer {
    /// A digest of the task's definition: two workers (or a worker and the
    /// control plane) with different digests define the task differently.
    pub digest: String,
    pub priority: Priority,
    pub retries: u32,
    pub retry_backoff_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub registered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Definitions that differ from the control plane's or another worker's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Leases it named that are no longer its: stop them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancel: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Poll {
    #[serde(flatten)]
    pub hello: Hello,
    /// Counts up by one per poll: a lease sent in the reply to an earlier
    /// poll and not in `running` never arrived.
    pub seq: u64,
    /// Leases it holds (see [`Registration::running`]).
    #[serde(default)]
    pub running: Vec<String>,
    /// Stopping: send it no more work.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PollReply {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<Lease>,
    /// Leases to stop (cancelled, or no longer its).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancel: Vec<String>,
    /// The control plane does not know this worker (it restarted, or marked
    /// the worker inactive): register again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reregister: bool,
}

/// A task handed to a subworker: it runs `request` under this lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub lease: String,
    /// What the task process gets (`task_id`, `name`, `args`, `kwargs`,
    /// `attempt`, flattened into the lease).
    #[serde(flatten)]
    pub request: crate::executor::TaskRequest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkResult {
    #[serde(flatten)]
    pub hello: Hello,
    pub lease: String,
    /// The executor's record of the run.
    pub execution: crate::executor::Execution,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    #[serde(flatten)]
    pub hello: Hello,
    pub lease: String,
    pub reason: String,
}

/// Whether a result, release or deregister took effect. `applied: false`
/// with no error: the lease had been revoked (the task runs elsewhere), and
/// the report is dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub applied: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Manage {
    pub fn decode(bytes: &[u8]) -> Result<Authed<Manage>, String> {
        #[derive(Deserialize)]
        struct Envelope {
            #[serde(default)]
            auth: Option<String>,
            #[serde(flatten)]
            message: Manage,
        }
        let envelope: Envelope = decode(bytes)?;
        Ok(Authed {
            message: envelope.message,
            auth: envelope.auth,
        })
    }
}

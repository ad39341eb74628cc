//! A client of the control plane: what the CLI's `submit`, `status`,
//! `cancel` and `list --remote` use. It connects to each socket once, on
//! first use, and sends every request on its own NNG context, so one client
//! can have many requests in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::Token;
use crate::manifest::Priority;
use crate::protocol::{
    self, Ack, BatchReply, CancelReply, Endpoints, ErrorReply, Info, Query, ReplyMode, StatusReply,
    TaskList, TaskResult, WireTask, WorkerList,
};
use crate::transport::{self, Requester, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Address(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the control plane answered: {0}")]
    Refused(String),
    #[error("cannot understand the control plane's reply: {0}")]
    BadReply(String),
    #[error("{0}")]
    TooLarge(String),
}

/// A connection to a control plane. Cheap to clone: clones share sockets.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Endpoints,
    /// How long a query may take (connecting included).
    pub timeout: Duration,
    /// Sent with every request, when set (see [`crate::auth`]).
    auth: Option<Token>,
    sockets: Arc<Mutex<HashMap<String, Arc<Requester>>>>,
}

impl Client {
    /// A client of the control plane whose base address is `base`.
    pub fn new(base: &str, timeout: Duration) -> Result<Client, ClientError> {
        let endpoints = Endpoints::from_base(base, None).map_err(ClientError::Address)?;
        Ok(Client {
            endpoints,
            timeout,
            auth: None,
            sockets: Arc::default(),
        })
    }

    /// This client, sending `token` with every request (clones share sockets).
    #[must_use]
    pub fn with_auth(mut self, token: Option<Token>) -> Client {
        self.auth = token;
        self
    }

    /// Finds a control plane through its announcements on `discovery`.
    pub async fn discover(discovery: &str, timeout: Duration) -> Result<Client, ClientError> {
        let (worker_id, base) = transport::discover(discovery, timeout).await?;
        tracing::debug!(%worker_id, %base, "discovered a control plane");
        Client::new(&base, timeout)
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Submits a task and waits up to `wait` for its result. The socket is
    /// the one of `priority` when given, else NORMAL's (the control plane
    /// then uses the task's priority from its manifest).
    pub async fn submit(
        &self,
        mut task: WireTask,
        priority: Option<Priority>,
        wait: Duration,
    ) -> Result<TaskResult, ClientError> {
        task.priority = priority;
        task.reply = ReplyMode::Result;
        let url = self.endpoints.submit(priority.unwrap_or(Priority::Normal));
        self.ask(url, &task, wait).await
    }

    /// Submits a task and returns as soon as it is accepted.
    pub async fn submit_ack(
        &self,
        mut task: WireTask,
        priority: Option<Priority>,
    ) -> Result<Ack, ClientError> {
        task.priority = priority;
        task.reply = ReplyMode::Ack;
        let url = self.endpoints.submit(priority.unwrap_or(Priority::Normal));
        self.ask(url, &task, self.timeout).await
    }

    /// Submits tasks in one `batch_submit` message: all accepted, or none.
    pub async fn submit_batch(
        &self,
        tasks: &[WireTask],
        priority: Priority,
    ) -> Result<BatchReply, ClientError> {
        let batch = serde_json::json!({"action": "batch_submit", "tasks": tasks});
        self.ask(self.endpoints.submit(priority), &batch, self.timeout)
            .await
    }

    pub async fn status(&self, task_id: &str) -> Result<StatusReply, ClientError> {
        let query = serde_json::json!({"action": "status", "task_id": task_id});
        self.ask(&self.endpoints.query, &query, self.timeout).await
    }

    pub async fn cancel(&self, task_id: &str) -> Result<CancelReply, ClientError> {
        let query = serde_json::json!({"action": "cancel", "task_id": task_id});
        self.ask(&self.endpoints.query, &query, self.timeout).await
    }

    /// The control plane's own slots and its subworkers.
    pub async fn workers(&self) -> Result<WorkerList, ClientError> {
        let query = serde_json::json!({"action": "workers"});
        self.ask(&self.endpoints.query, &query, self.timeout).await
    }

    /// Has the control plane load its manifest again: what changed, or why
    /// nothing did. Waits as long as the load takes (Python imports).
    pub async fn reload(&self) -> Result<crate::protocol::ReloadReply, ClientError> {
        let query = serde_json::json!({"action": "reload"});
        self.ask(
            &self.endpoints.query,
            &query,
            self.timeout.max(Duration::from_secs(120)),
        )
        .await
    }

    /// The scheduled tasks and what they did.
    pub async fn schedules(&self) -> Result<crate::protocol::ScheduleList, ClientError> {
        let query = serde_json::json!({"action": "schedules"});
        self.ask(&self.endpoints.query, &query, self.timeout).await
    }

    /// Who the control plane is, and where subworkers register.
    pub async fn info(&self) -> Result<Info, ClientError> {
        let query = serde_json::json!({"action": "info"});
        self.ask(&self.endpoints.query, &query, self.timeout).await
    }

    /// Sends `message` to the socket at `url` (one of this control plane's)
    /// and reads the reply, waiting at most `timeout`.
    pub async fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        url: &str,
        message: &Q,
        timeout: Duration,
    ) -> Result<R, ClientError> {
        self.ask(url, message, timeout).await
    }

    pub async fn list(&self) -> Result<TaskList, ClientError> {
        let query = serde_json::json!({"action": "list_tasks"});
        debug_assert!(Query::decode(&protocol::encode(&query)).is_ok());
        self.ask(&self.endpoints.query, &query, self.timeout).await
    }

    /// The socket for `url`, dialed on first use.
    async fn requester(&self, url: &str) -> Result<Arc<Requester>, ClientError> {
        if let Some(found) = self.lock().get(url) {
            return Ok(Arc::clone(found));
        }
        let dialed = tokio::time::timeout(self.timeout, Requester::dial(url))
            .await
            .map_err(|_| TransportError::Timeout {
                url: url.to_owned(),
                after: self.timeout,
            })??;
        // Two callers may dial at once; both sockets work, the first is kept.
        let mut sockets = self.lock();
        Ok(Arc::clone(
            sockets
                .entry(url.to_owned())
                .or_insert_with(|| Arc::new(dialed)),
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Requester>>> {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn ask<Q: Serialize, R: DeserializeOwned>(
        &self,
        url: &str,
        message: &Q,
        timeout: Duration,
    ) -> Result<R, ClientError> {
        let requester = self.requester(url).await?;
        let body = protocol::encode_authed(message, self.auth.as_ref().map(Token::reveal));
        let reply = requester.request(&body, timeout).await.map_err(|e| {
            if body.len() > protocol::MAX_MESSAGE {
                // NNG drops the connection of a message over the limit
                // before reading it, so no answer comes.
                ClientError::TooLarge(format!(
                    "{e}: the message is {} bytes, over a control plane's default --max-message-size ({} bytes), so it was not read; send less at once (e.g. a smaller --batch-size)",
                    body.len(),
                    protocol::MAX_MESSAGE
                ))
            } else {
                ClientError::Transport(e)
            }
        })?;
        protocol::decode::<R>(&reply).map_err(|e| match protocol::decode::<ErrorReply>(&reply) {
            Ok(ErrorReply { error }) => ClientError::Refused(error),
            Err(_) => ClientError::BadReply(e),
        })
    }
}

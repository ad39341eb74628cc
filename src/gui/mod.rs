//! The operators' web GUI, served by the control plane's process: the page
//! (embedded, see [`assets`]), a JSON API, a Server-Sent Events stream and
//! Prometheus metrics, behind one guard ([`security`]).
//!
//! - [`feed`] is the GUI's one listener on the core's events: it keeps the
//!   task list's read model ([`index`]) and the charts' history
//!   ([`history`]) and feeds the stream's fan-out ([`sse`]);
//! - [`api`] answers reads, [`actions`] changes (through the core, with the
//!   same checks as the NNG sockets), [`metrics`] renders `/metrics`;
//! - [`view`] decides how a task is shown (masked keyword arguments, its
//!   timeline, its CLI command).
//!
//! docs/gui.md is the reference of every endpoint, event and setting.

mod actions;
pub mod api;
mod assets;
mod feed;
mod history;
pub mod index;
mod metrics;
pub mod security;
pub mod sse;
mod state;
pub mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::state::{App, AppState};
use crate::auth::Token;
use crate::control_plane::ControlPlane;

/// The GUI's settings (the `--gui-*` flags).
#[derive(Debug, Clone)]
pub struct GuiConfig {
    pub host: String,
    /// 0: any free port.
    pub port: u16,
    pub token: Option<Token>,
    /// Listen beyond loopback with no token.
    pub insecure: bool,
    /// `/metrics` needs no token.
    pub metrics_public: bool,
    pub read_only: bool,
    /// Keyword arguments shown as `***`.
    pub redact: Vec<String>,
    /// More `Host` values to answer (a reverse proxy's name).
    pub allowed_hosts: Vec<String>,
    /// The one origin CORS headers are sent for.
    pub cors_origin: Option<String>,
    pub max_body: usize,
    /// Frames a stream client may fall behind before it gets `resync`.
    pub sse_buffer: usize,
    /// Events kept for reconnects.
    pub sse_ring: usize,
    pub keep_alive: Duration,
    /// How often the charts take a sample and `stats` is sent.
    pub stats_every: Duration,
    /// Where the charts' history is kept (none: memory only).
    pub history: Option<PathBuf>,
}

impl GuiConfig {
    /// The defaults: loopback, port 8080, no token.
    pub fn new() -> GuiConfig {
        GuiConfig {
            host: "127.0.0.1".to_owned(),
            port: 8080,
            token: None,
            insecure: false,
            metrics_public: false,
            read_only: false,
            redact: Vec::new(),
            allowed_hosts: Vec::new(),
            cors_origin: None,
            max_body: 1 << 20,
            sse_buffer: 4096,
            sse_ring: 10_000,
            keep_alive: Duration::from_secs(15),
            stats_every: Duration::from_secs(1),
            history: None,
        }
    }
}

impl Default for GuiConfig {
    fn default() -> Self {
        GuiConfig::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuiError {
    #[error(
        "the GUI would listen on {address}, which other hosts can reach, and no GUI token is set: anyone who reaches it could read every task and submit, cancel or delete tasks. Set --gui-token-file (or --gui-token, or FASTWORKER_GUI_TOKEN), or pass --gui-insecure to start anyway"
    )]
    Insecure { address: String },
    #[error(
        "the GUI cannot listen on {address}: the port is in use (another fastworker, or another program); pick another with --gui-port, or turn the GUI off with --no-gui"
    )]
    InUse { address: String },
    #[error("the GUI cannot listen on {address}: {reason}")]
    Bind { address: String, reason: String },
    #[error("--gui-cors-origin {0:?} is not an origin (like https://ops.example.com)")]
    Cors(String),
}

/// A serving GUI.
#[derive(Debug)]
pub struct Gui {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its URL, for people.
    pub url: String,
    pub app: App,
    server: JoinHandle<()>,
    feed: JoinHandle<()>,
}

impl Gui {
    /// Stops serving: streams end, the history is saved.
    pub async fn stop(self) {
        self.app.stop.cancel();
        let _ = self.server.await;
        let _ = self.feed.await;
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Builds the GUI's state on a running control plane: the read model
/// loaded from the core, the feed started. `port` is the one the GUI
/// listens on (for the `Host` check).
pub async fn app(
    config: &GuiConfig,
    plane: &ControlPlane,
    port: u16,
) -> Result<(App, JoinHandle<()>), GuiError> {
    if let Some(origin) = &config.cors_origin
        && !(origin.starts_with("http://") || origin.starts_with("https://"))
    {
        return Err(GuiError::Cors(origin.clone()));
    }
    let rx = plane.events.subscribe();
    let view = view::View::new(&config.redact);
    let worker_id = plane.sockets.info.worker_id.clone();
    let boot = format!("{:08x}", fastrand::u32(..));
    let hub = Arc::new(sse::Hub::new(
        boot,
        config.sse_buffer,
        config.sse_ring,
        0,
        config.keep_alive,
    ));
    let hosts = security::allowed_hosts(
        &config.host,
        port,
        &config.allowed_hosts,
        config.token.is_some(),
    );
    let app = Arc::new(AppState {
        guard: security::Guard::new(
            config.token.clone(),
            hosts,
            config.cors_origin.clone(),
            config.read_only,
            config.metrics_public,
        ),
        view: view.clone(),
        core: plane.core.clone(),
        events: plane.events.clone(),
        manifest: plane.sockets.manifest.clone(),
        sockets: Arc::clone(&plane.sockets),
        discovery_address: plane.discovery_address.clone(),
        started_at: plane.started_at,
        started: std::time::Instant::now(),
        journal: plane.journal.clone(),
        index: RwLock::new(index::TaskIndex::new(view, &worker_id)),
        hub,
        history: Mutex::new(history::History::open(config.history.clone())),
        stop: CancellationToken::new(),
    });
    let last = feed::load(&app).await.unwrap_or(0);
    app.hub.gap(last, "the GUI started");
    let feed = tokio::spawn(feed::run(Arc::clone(&app), rx, config.stats_every));
    Ok((app, feed))
}

/// Every route, behind the guard.
pub fn router(app: App, max_body: usize) -> Router {
    Router::new()
        .route("/api/status", get(api::status))
        .route("/api/workers", get(api::workers))
        .route("/api/tasks", get(api::tasks).post(actions::submit))
        .route("/api/tasks/export", get(actions::export))
        .route("/api/tasks/bulk", post(actions::bulk))
        .route("/api/tasks/{id}", get(api::detail).delete(actions::delete))
        .route("/api/tasks/{id}/cancel", post(actions::cancel))
        .route("/api/tasks/{id}/retry", post(actions::retry))
        .route("/api/queues", get(api::queues))
        .route("/api/registered-tasks", get(api::registered))
        .route("/api/cache", get(api::cache))
        .route("/api/history", get(api::history))
        .route("/api/events", get(events))
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            security::guard,
        ))
        .with_state(app)
}

/// Binds the GUI's port and serves it until [`Gui::stop`].
pub async fn start(config: GuiConfig, plane: &ControlPlane) -> Result<Gui, GuiError> {
    let address = format!("{}:{}", config.host, config.port);
    if !is_loopback(&config.host) && config.token.is_none() {
        if !config.insecure {
            return Err(GuiError::Insecure { address });
        }
        tracing::warn!(%address, "INSECURE: the GUI listens beyond loopback with no token (--gui-insecure): anyone who reaches it can read every task and submit, cancel or delete tasks");
    }
    let bind_host = config.host.trim_start_matches('[').trim_end_matches(']');
    let listener = tokio::net::TcpListener::bind((bind_host, config.port))
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => GuiError::InUse {
                address: address.clone(),
            },
            _ => GuiError::Bind {
                address: address.clone(),
                reason: e.to_string(),
            },
        })?;
    let addr = listener.local_addr().map_err(|e| GuiError::Bind {
        address: address.clone(),
        reason: e.to_string(),
    })?;
    let (app, feed) = app(&config, plane, addr.port()).await?;
    let router = router(Arc::clone(&app), config.max_body);
    let stop = app.stop.clone();
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!("the GUI stopped serving: {e}");
        }
    });
    let shown = if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let url = format!("http://{shown}:{}/", addr.port());
    tracing::info!(%url, read_only = config.read_only, token = config.token.is_some(), "GUI serving");
    Ok(Gui {
        addr,
        url,
        app,
        server,
        feed,
    })
}

/// `/api/events`.
async fn events(State(app): State<App>, headers: HeaderMap) -> Response {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let last_event = app.index().last_event();
    let stream = app
        .hub
        .stream(last.as_deref(), last_event, app.stop.clone());
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn login_page(State(app): State<App>) -> Response {
    if !app.guard.has_token() {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "./")]).into_response();
    }
    assets::serve("/login.html").unwrap_or_else(|| StatusCode::NOT_FOUND.into_response())
}

async fn login(
    State(app): State<App>,
    form: Result<
        axum::Form<std::collections::HashMap<String, String>>,
        axum::extract::rejection::FormRejection,
    >,
) -> Response {
    let given = form
        .ok()
        .and_then(|f| f.0.get("token").cloned())
        .unwrap_or_default();
    match app.guard.session_cookie() {
        Some(cookie) if app.guard.token_matches(given.trim()) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "./".to_owned()),
                (
                    header::SET_COOKIE,
                    format!(
                        "{}={cookie}; HttpOnly; SameSite=Strict; Path=/",
                        security::COOKIE
                    ),
                ),
            ],
        )
            .into_response(),
        Some(_) => {
            tracing::warn!("a GUI login with a wrong token");
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, "login?failed=1")],
            )
                .into_response()
        }
        None => (StatusCode::SEE_OTHER, [(header::LOCATION, "./")]).into_response(),
    }
}

async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "login".to_owned()),
            (
                header::SET_COOKIE,
                format!(
                    "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
                    security::COOKIE
                ),
            ),
        ],
    )
        .into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    api::error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {} (docs/gui.md lists each endpoint's methods)",
            request.method(),
            crate::protocol::cut(request.uri().path(), 100)
        ),
    )
}

async fn fallback(request: Request) -> Response {
    let path = request.uri().path();
    if path.starts_with("/api/") {
        return api::error(
            StatusCode::NOT_FOUND,
            format!(
                "no such endpoint: {} {} (docs/gui.md lists them)",
                request.method(),
                crate::protocol::cut(path, 100)
            ),
        );
    }
    if request.method() == axum::http::Method::GET
        && let Some(response) = assets::serve(path)
    {
        return response;
    }
    api::error(StatusCode::NOT_FOUND, "not found".to_owned())
}

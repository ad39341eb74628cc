//! The web GUI's server: every endpoint through the router (tower's
//! `oneshot`), the guard's matrix (token, cookie, Host, Origin, read-only,
//! body limit), redaction everywhere, the actions, the event stream over
//! real HTTP (100 tasks in order, a reconnect without gap or duplicate),
//! `/metrics` parsed as Prometheus text, and the CLI's GUI flags.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use fastworker::gui::{App, GuiConfig};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::{BIN, Fixture, TestControlPlane, assert_contains, spawn_logged};

const MANIFEST: &str = r#"
[tasks.add]
description = "Adds two numbers"
runner = "python"
function = "pytasks:add"
pool_size = 1

[tasks.boom]
runner = "python"
function = "pytasks:boom"

[tasks.nap]
command = ["sleep", "30"]
grace_period = "100ms"
"#;

const HOST: &str = "127.0.0.1:8080";
const TOKEN: &str = "0123456789abcdef-gui-token";

struct Gui {
    plane: TestControlPlane,
    app: App,
    router: Router,
    _fx: Fixture,
}

impl Drop for Gui {
    fn drop(&mut self) {
        self.app.stop.cancel();
    }
}

async fn gui(tweak: impl FnOnce(&mut GuiConfig)) -> Gui {
    gui_on(|_| {}, tweak).await
}

async fn gui_on(
    plane_tweak: impl Fn(&mut fastworker::control_plane::Config),
    tweak: impl FnOnce(&mut GuiConfig),
) -> Gui {
    let fx = Fixture::new(MANIFEST);
    let plane = TestControlPlane::start(&fx, plane_tweak).await;
    let mut config = GuiConfig::new();
    tweak(&mut config);
    let (app, _feed) = fastworker::gui::app(&config, plane.plane(), 8080)
        .await
        .expect("the GUI's state");
    let router = fastworker::gui::router(app.clone(), config.max_body);
    Gui {
        plane,
        app,
        router,
        _fx: fx,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Gui {
    async fn call(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        // A stream never ends: read what is there within a moment.
        let body = if headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
        {
            let mut body = response.into_body();
            match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
                Ok(Some(Ok(frame))) => frame.into_data().map(|d| d.to_vec()).unwrap_or_default(),
                _ => Vec::new(),
            }
        } else {
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
                .to_vec()
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(req("GET", path).body(Body::empty()).expect("request"))
            .await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(
            req("POST", path)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
        .await
    }

    async fn submit(&self, name: &str, args: Value, kwargs: Value) -> String {
        let reply = self
            .post(
                "/api/tasks",
                json!({"name": name, "args": args, "kwargs": kwargs}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()["task_id"]
            .as_str()
            .expect("a task id")
            .to_owned()
    }

    /// Polls the list's row of `task_id` until `check` holds (20 s at most).
    async fn row_until(&self, task_id: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let reply = self.get(&format!("/api/tasks?q={task_id}")).await;
            let row = reply.json()["tasks"]
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["task_id"] == task_id).cloned())
                .unwrap_or(Value::Null);
            if check(&row) {
                return row;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {task_id} never got there; last row: {row}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn req(method: &str, path: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, HOST)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_answers_with_the_originals_fields_and_more() {
    let g = gui(|_| {}).await;
    let id = g.submit("add", json!([5, 3]), json!({})).await;
    let row = g.row_until(&id, |r| r["status"] == "success").await;
    assert_eq!(row["result"], "8");
    assert_eq!(row["input"], "5, 3");
    assert_eq!(row["worker"], "control-plane");
    assert_eq!(row["attempts"], 1);

    let status = g.get("/api/status").await.json();
    for key in [
        "worker_id",
        "running",
        "base_address",
        "discovery_address",
        "uptime_seconds",
        "subworkers",
        "tasks",
        "cache",
        "timestamp",
        "rates",
        "journal",
    ] {
        assert!(status.get(key).is_some(), "status has {key}: {status}");
    }
    assert!(
        status["uptime_seconds"].as_f64().is_some_and(|s| s > 0.0),
        "{status}"
    );
    assert_eq!(status["tasks"]["by_state"]["success"], 1);
    assert_eq!(status["tasks"]["totals"]["accepted"], 1);

    let detail = g.get(&format!("/api/tasks/{id}")).await.json();
    assert_eq!(detail["task"]["result"], 8);
    assert_eq!(detail["task"]["attempts"][0]["status"], "success");
    assert!(
        detail["task"]["attempts"][0]["pid"].as_u64().is_some(),
        "{detail}"
    );
    let timeline: Vec<&str> = detail["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|m| m["what"].as_str())
        .collect();
    assert_eq!(
        timeline,
        [
            "submitted",
            "attempt 1 started",
            "attempt 1 succeeded",
            "success"
        ]
    );
    assert_eq!(detail["cli"], "fastworker submit --priority normal add 5 3");

    let workers = g.get("/api/workers").await.json();
    assert_eq!(workers["count"], 1);
    assert_eq!(workers["workers"][0]["is_control_plane"], true);
    let queues = g.get("/api/queues").await.json();
    assert_eq!(queues["total_queued"], 0);
    assert!(queues["queues"]["critical"]["tasks"].is_array(), "{queues}");
    let registered = g.get("/api/registered-tasks").await.json();
    assert_eq!(registered["count"], 3);
    let add = &registered["tasks"][0];
    assert_eq!(
        (add["name"].as_str(), add["doc"].as_str()),
        (Some("add"), Some("Adds two numbers"))
    );
    assert_eq!(add["workers"], json!(["control-plane"]));
    assert_eq!(add["stats"]["success"], 1);
    assert_eq!(add["stats"]["run_seconds"]["count"], 1);
    let cache = g.get("/api/cache").await.json();
    assert_eq!(
        (
            cache["current_size"].as_u64(),
            cache["by_status"]["success"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let history = g.get("/api/history").await.json();
    assert!(
        history["seconds"].is_array() && history["minutes"].is_array(),
        "{history}"
    );
    assert_eq!(g.get("/healthz").await.text(), "ok");
    assert_eq!(g.get("/readyz").await.text(), "ready");

    let page = g.get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header("content-type").starts_with("text/html"));
    assert_contains(page.header("content-security-policy"), "default-src 'self'");
    assert_contains(
        page.header("content-security-policy"),
        "frame-ancestors 'none'",
    );
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(
        page.header("access-control-allow-origin"),
        "",
        "no CORS unless configured"
    );
    let js = g.get("/js/app.js").await;
    assert!(
        js.header("content-type").starts_with("text/javascript"),
        "{}",
        js.header("content-type")
    );

    let missing = g.get("/api/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_contains(
        missing.json()["error"].as_str().unwrap_or(""),
        "no such endpoint",
    );
    let unknown = g.get("/api/tasks/no-such-task").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_contains(unknown.json()["error"].as_str().unwrap_or(""), "not found");
    let bad = g.get("/api/tasks?status=done").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_contains(
        bad.json()["error"].as_str().unwrap_or(""),
        "unknown status 'done'",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_guards_every_route_by_header_or_cookie() {
    let g = gui(|c| c.token = Some(fastworker::auth::Token::new(TOKEN).expect("token"))).await;
    for path in [
        "/api/status",
        "/api/tasks",
        "/api/events",
        "/metrics",
        "/healthz",
    ] {
        let none = g.get(path).await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(none.header("www-authenticate"), "Bearer");
        assert_contains(
            none.json()["error"].as_str().unwrap_or(""),
            "a token is needed",
        );
        let wrong = g
            .call(
                req("GET", path)
                    .header(header::AUTHORIZATION, "Bearer wrong-token-0000000")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{path}");
        let right = g
            .call(
                req("GET", path)
                    .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                    .body(Body::empty())
                    .expect("req"),
            )
            .await;
        assert_eq!(right.status, StatusCode::OK, "{path}: {}", right.text());
    }
    // The page sends a browser to its login page; the login page is open.
    let page = g.get("/").await;
    assert_eq!(
        (page.status, page.header("location")),
        (StatusCode::SEE_OTHER, "login")
    );
    assert_eq!(g.get("/login").await.status, StatusCode::OK);
    let login = |token: &str| {
        req("POST", "/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ORIGIN, "http://127.0.0.1:8080")
            .body(Body::from(format!("token={token}")))
            .expect("req")
    };
    let failed = g.call(login("nope")).await;
    assert_eq!(failed.header("location"), "login?failed=1");
    assert_eq!(failed.header("set-cookie"), "");
    let ok = g.call(login(TOKEN)).await;
    assert_eq!(
        (ok.status, ok.header("location")),
        (StatusCode::SEE_OTHER, "./")
    );
    let cookie = ok.header("set-cookie").to_owned();
    assert_contains(&cookie, "HttpOnly");
    assert_contains(&cookie, "SameSite=Strict");
    assert!(
        !cookie.contains(TOKEN),
        "the cookie is not the token itself"
    );
    let session = cookie.split(';').next().unwrap_or("").to_owned();
    let with_cookie = g
        .call(
            req("GET", "/api/events")
                .header(header::COOKIE, &session)
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(
        with_cookie.status,
        StatusCode::OK,
        "EventSource works with the cookie"
    );
    assert_contains(&with_cookie.text(), "event: hello");
    let forged = g
        .call(
            req("GET", "/api/status")
                .header(header::COOKIE, "fastworker_session=0000")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);

    let public = gui(|c| {
        c.token = Some(fastworker::auth::Token::new(TOKEN).expect("token"));
        c.metrics_public = true;
    })
    .await;
    assert_eq!(public.get("/metrics").await.status, StatusCode::OK);
    assert_eq!(
        public.get("/api/status").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_origin_and_body_rules_refuse_what_a_browser_attack_sends() {
    let g = gui(|c| c.max_body = 4096).await;
    let rebinding = g
        .call(
            Request::builder()
                .uri("/api/status")
                .header(header::HOST, "evil.example:8080")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(rebinding.status, StatusCode::FORBIDDEN);
    assert_contains(
        rebinding.json()["error"].as_str().unwrap_or(""),
        "DNS rebinding",
    );
    let localhost = g
        .call(
            Request::builder()
                .uri("/api/status")
                .header(header::HOST, "localhost:8080")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(localhost.status, StatusCode::OK);

    let body = json!({"name": "add", "args": [1, 2]}).to_string();
    let post = |origin: Option<&str>, site: Option<&str>, kind: &str| {
        let mut r = req("POST", "/api/tasks").header(header::CONTENT_TYPE, kind);
        if let Some(o) = origin {
            r = r.header(header::ORIGIN, o);
        }
        if let Some(s) = site {
            r = r.header("sec-fetch-site", s);
        }
        r.body(Body::from(body.clone())).expect("req")
    };
    let cross = g
        .call(post(Some("http://evil.example"), None, "application/json"))
        .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert_contains(
        cross.json()["error"].as_str().unwrap_or(""),
        "its Origin is another site",
    );
    let cross_site = g
        .call(post(None, Some("cross-site"), "application/json"))
        .await;
    assert_eq!(cross_site.status, StatusCode::FORBIDDEN);
    let form = g
        .call(post(
            Some("http://127.0.0.1:8080"),
            Some("same-origin"),
            "application/x-www-form-urlencoded",
        ))
        .await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_contains(
        form.json()["error"].as_str().unwrap_or(""),
        "send a JSON body",
    );
    let same = g
        .call(post(
            Some("http://127.0.0.1:8080"),
            Some("same-origin"),
            "application/json",
        ))
        .await;
    assert_eq!(same.status, StatusCode::CREATED, "{}", same.text());
    let curl = g.call(post(None, None, "application/json")).await;
    assert_eq!(
        curl.status,
        StatusCode::CREATED,
        "no browser, no Origin: allowed"
    );

    let big = g
        .post(
            "/api/tasks",
            json!({"name": "add", "args": ["x".repeat(10_000)]}),
        )
        .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_contains(big.json()["error"].as_str().unwrap_or(""), "too large");
    let typo = g
        .post("/api/tasks", json!({"name": "add", "arg": [1]}))
        .await;
    assert_eq!(typo.status, StatusCode::BAD_REQUEST);
    assert_contains(
        typo.json()["error"].as_str().unwrap_or(""),
        "unknown field `arg`",
    );
    let unknown = g.post("/api/tasks", json!({"name": "nope"})).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_contains(
        unknown.json()["error"].as_str().unwrap_or(""),
        "unknown task 'nope'",
    );
    let not_json = g
        .call(
            req("POST", "/api/tasks")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{nope"))
                .expect("req"),
        )
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert_contains(
        not_json.json()["error"].as_str().unwrap_or(""),
        "bad JSON body",
    );

    let wrong_method = g
        .call(req("PUT", "/api/status").body(Body::empty()).expect("req"))
        .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_contains(
        wrong_method.json()["error"].as_str().unwrap_or(""),
        "PUT is not allowed",
    );
    let far = g.get("/api/tasks?since=300000y").await;
    assert_eq!(far.status, StatusCode::BAD_REQUEST, "{}", far.text());
    let an_ip = g
        .call(
            Request::builder()
                .uri("/api/status")
                .header(header::HOST, "10.9.8.7:8080")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(an_ip.status, StatusCode::OK, "an address cannot be rebound");

    // Behind a proxy: the browser's Host and Origin are the proxy's name.
    let proxied = gui(|c| c.allowed_hosts = vec!["ops.example.com".into()]).await;
    let through = proxied
        .call(
            Request::builder()
                .method("POST")
                .uri("/api/tasks")
                .header(header::HOST, "ops.example.com")
                .header(header::ORIGIN, "https://ops.example.com")
                .header("sec-fetch-site", "same-origin")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.clone()))
                .expect("req"),
        )
        .await;
    assert_eq!(through.status, StatusCode::CREATED, "{}", through.text());

    let cors = gui(|c| c.cors_origin = Some("https://ops.example.com".into())).await;
    let preflight = cors
        .call(
            req("OPTIONS", "/api/tasks")
                .header(header::ORIGIN, "https://ops.example.com")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        "https://ops.example.com"
    );
    let other = cors
        .call(
            req("GET", "/api/status")
                .header(header::ORIGIN, "https://else.example.com")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(other.header("access-control-allow-origin"), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_refuses_every_action_and_says_so() {
    let g = gui(|c| c.read_only = true).await;
    let status = g.get("/api/status").await.json();
    assert_eq!(status["gui"]["read_only"], true);
    for (method, path) in [
        ("POST", "/api/tasks"),
        ("POST", "/api/tasks/x/cancel"),
        ("POST", "/api/tasks/x/retry"),
        ("DELETE", "/api/tasks/x"),
        ("POST", "/api/tasks/bulk"),
    ] {
        let reply = g
            .call(
                req(method, path)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from("{}"))
                    .expect("req"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_contains(reply.json()["error"].as_str().unwrap_or(""), "read-only");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redacted_keys_are_masked_in_the_list_detail_export_and_events() {
    let g = gui(|c| c.redact = vec!["password".into()]).await;
    let mut events = g.app.hub.subscribe(None).rx;
    let id = g
        .submit(
            "boom",
            json!([]),
            json!({"message": "m", "password": "hunter2"}),
        )
        .await;
    let row = g.row_until(&id, |r| r["status"] == "failure").await;
    assert_eq!(row["input"], r#"message="m", password="***""#);
    let detail = g.get(&format!("/api/tasks/{id}")).await;
    assert!(!detail.text().contains("hunter2"), "{}", detail.text());
    assert_eq!(detail.json()["task"]["kwargs"]["password"], "***");
    for format in ["csv", "ndjson"] {
        let export = g.get(&format!("/api/tasks/export?format={format}")).await;
        assert_eq!(export.status, StatusCode::OK);
        assert_contains(export.header("content-disposition"), "attachment");
        assert!(export.text().contains(&id), "{format}: {}", export.text());
        assert!(
            !export.text().contains("hunter2"),
            "{format}: {}",
            export.text()
        );
    }
    let mut seen = String::new();
    while let Ok(frame) = events.try_recv() {
        seen.push_str(&String::from_utf8_lossy(&frame.bytes));
    }
    assert_contains(&seen, "event: task.queued");
    assert_contains(&seen, r#"password=\"***\""#);
    assert!(!seen.contains("hunter2"), "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_retry_delete_and_bulk_act_through_the_core() {
    let g = gui(|_| {}).await;
    let nap = g.submit("nap", json!([]), json!({})).await;
    g.row_until(&nap, |r| r["status"] == "running").await;
    let cancel = g.post(&format!("/api/tasks/{nap}/cancel"), json!({})).await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.text());
    assert_eq!(cancel.json()["cancelled"], true);
    g.row_until(&nap, |r| r["status"] == "cancelled").await;
    let again = g.post(&format!("/api/tasks/{nap}/cancel"), json!({})).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "cancelling a cancelled task is no error"
    );

    let boom = g.submit("boom", json!([]), json!({})).await;
    g.row_until(&boom, |r| r["status"] == "failure").await;
    let retry = g.post(&format!("/api/tasks/{boom}/retry"), json!({})).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text());
    let new = retry.json()["task_id"].as_str().expect("new id").to_owned();
    assert_ne!(new, boom);
    let new_row = g.row_until(&new, |r| r["status"] == "failure").await;
    assert_eq!(new_row["retry_of"], boom.as_str());
    g.row_until(&boom, |r| r["retried_by"] == new.as_str())
        .await;
    let detail = g.get(&format!("/api/tasks/{new}")).await.json();
    assert_eq!(detail["retry_of"], boom.as_str());

    let live = g.submit("nap", json!([]), json!({})).await;
    g.row_until(&live, |r| r["status"] == "running").await;
    let early = g.post(&format!("/api/tasks/{live}/retry"), json!({})).await;
    assert_eq!(early.status, StatusCode::CONFLICT);
    let del_live = g
        .call(
            req("DELETE", &format!("/api/tasks/{live}"))
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(del_live.status, StatusCode::CONFLICT);
    assert_contains(
        del_live.json()["error"].as_str().unwrap_or(""),
        "cancel it first",
    );

    let del = g
        .call(
            req("DELETE", &format!("/api/tasks/{boom}"))
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(del.status, StatusCode::OK, "{}", del.text());
    assert_eq!(
        g.get(&format!("/api/tasks/{boom}")).await.status,
        StatusCode::NOT_FOUND
    );
    g.row_until(&boom, Value::is_null).await;

    let bulk = g
        .post(
            "/api/tasks/bulk",
            json!({"action": "cancel", "filter": {"status": "running", "name": "nap"}}),
        )
        .await;
    assert_eq!(bulk.status, StatusCode::OK, "{}", bulk.text());
    assert_eq!(
        (
            bulk.json()["matched"].as_u64(),
            bulk.json()["done"].as_u64()
        ),
        (Some(1), Some(1))
    );
    g.row_until(&live, |r| r["status"] == "cancelled").await;
    let bulk_retry = g
        .post(
            "/api/tasks/bulk",
            json!({"action": "retry", "ids": [live, "missing-id"]}),
        )
        .await
        .json();
    assert_eq!(bulk_retry["done"], 1);
    assert_eq!(bulk_retry["failed"][0]["task_id"], "missing-id");
    assert_eq!(bulk_retry["new_task_ids"].as_array().map(Vec::len), Some(1));
    let list = g.get("/api/tasks?name=nap&status=cancelled").await.json();
    assert_eq!(list["total"], 2, "{list}");
    assert_eq!(list["counts"]["cancelled"], 2);
}

/// Reads an SSE body until `until` holds of what was read, or a deadline.
async fn read_stream(response: reqwest::Response, until: impl Fn(&str) -> bool) -> String {
    use futures_util::StreamExt;
    let mut text = String::new();
    let mut stream = response.bytes_stream();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !until(&text) {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    text
}

fn frames(text: &str) -> Vec<(String, String, Value)> {
    text.split("\n\n")
        .filter_map(|frame| {
            let mut id = String::new();
            let mut name = String::new();
            let mut data = Value::Null;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.to_owned();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).unwrap_or(Value::Null);
                }
            }
            (!id.is_empty()).then_some((id, name, data))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_events_of_100_tasks_arrive_in_order_and_a_reconnect_has_no_gap() {
    let fx = Fixture::new(MANIFEST);
    let plane = TestControlPlane::start(&fx, |_| {}).await;
    let config = GuiConfig {
        port: 0,
        ..GuiConfig::new()
    };
    let gui = fastworker::gui::start(config, plane.plane())
        .await
        .expect("GUI");
    let http = reqwest::Client::new();
    let events = format!("{}api/events", gui.url);
    let stream = http.get(&events).send().await.expect("stream");
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let reader = tokio::spawn(read_stream(stream, |t| {
        t.matches("event: task.success").count() >= 100
    }));
    let mut ids = Vec::new();
    for i in 0..100 {
        let reply = http
            .post(format!("{}api/tasks", gui.url))
            .json(&json!({"name": "add", "args": [i, 1]}))
            .send()
            .await
            .expect("submit");
        assert_eq!(reply.status(), 201);
        let body: Value = reply.json().await.expect("json");
        ids.push(body["task_id"].as_str().expect("id").to_owned());
    }
    let text = reader.await.expect("reader");
    let all = frames(&text);
    let numbers: Vec<u64> = all
        .iter()
        .filter_map(|(id, _, _)| id.rsplit_once('-').and_then(|(_, n)| n.parse().ok()))
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "ids rise: {numbers:?}"
    );
    for id in &ids {
        let mine: Vec<&str> = all
            .iter()
            .filter(|(_, _, d)| d["task_id"] == id.as_str())
            .map(|(_, n, _)| n.as_str())
            .collect();
        assert_eq!(
            mine,
            ["task.queued", "task.started", "task.success"],
            "task {id}"
        );
    }

    // A client that saw up to the 150th event reconnects: it gets the
    // rest, once each, in order.
    let (cut, _, _) = &all[149];
    let again = http
        .get(&events)
        .header("last-event-id", cut.as_str())
        .send()
        .await
        .expect("reconnect");
    let last = all.last().map(|(id, _, _)| id.clone()).unwrap_or_default();
    let text = read_stream(again, |t| t.contains(&format!("id: {last}\n"))).await;
    let replayed: Vec<String> = frames(&text).into_iter().map(|(id, _, _)| id).collect();
    let expected: Vec<String> = all[150..].iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(replayed, expected, "no gap, no duplicate");
    let stale = http
        .get(&events)
        .header("last-event-id", "another-boot-3")
        .send()
        .await
        .expect("reconnect");
    let text = read_stream(stale, |t| t.contains("event: resync")).await;
    assert_contains(&text, "the control plane restarted");
    gui.stop().await;
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text_and_count_the_tasks_run() {
    let g = gui(|_| {}).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(g.submit("add", json!([i, i]), json!({})).await);
    }
    ids.push(g.submit("boom", json!([]), json!({})).await);
    for id in &ids {
        g.row_until(id, |r| r["status"] == "success" || r["status"] == "failure")
            .await;
    }
    let reply = g.get("/metrics").await;
    assert!(
        reply
            .header("content-type")
            .starts_with("text/plain; version=0.0.4")
    );
    let text = reply.text();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .sum()
    };
    assert_eq!(value("fastworker_tasks_accepted_total", &[]), 4.0);
    assert_eq!(
        value(
            "fastworker_tasks_finished_total",
            &[("task", "add"), ("status", "success")]
        ),
        3.0
    );
    assert_eq!(
        value(
            "fastworker_tasks_finished_total",
            &[("task", "boom"), ("status", "failure")]
        ),
        1.0
    );
    assert_eq!(
        value("fastworker_queue_depth", &[("priority", "normal")]),
        0.0
    );
    assert_eq!(value("fastworker_result_cache_entries", &[]), 4.0);
    assert!(
        text.contains("fastworker_task_run_seconds_bucket{task=\"add\",le=\"+Inf\"} 3"),
        "{text}"
    );
    let histogram = scrape
        .samples
        .iter()
        .find(|s| s.metric == "fastworker_task_run_seconds" && s.labels.get("task") == Some("add"));
    match histogram.map(|s| &s.value) {
        Some(prometheus_parse::Value::Histogram(buckets)) => {
            assert_eq!(buckets.last().map(|b| b.count), Some(3.0));
        }
        other => panic!("a histogram for add: {other:?}"),
    }
    for family in [
        "fastworker_workers",
        "fastworker_gui_sse_clients",
        "fastworker_task_wait_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_serves_the_gui_says_where_and_refuses_what_it_cannot_do() {
    let fx = Fixture::new(MANIFEST);
    let base = format!(
        "tcp://127.0.0.1:{}",
        20_000 + crate::helpers::rand_u16() % 40_000
    );
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            BIN,
            "control-plane",
            "--base-address",
            &base,
            "--discovery-address",
            &format!("ipc://{}", fx.path("disc").display()),
            "--manifest",
            &fx.manifest_path().display().to_string(),
            "--data-dir",
            &fx.path("data").display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let (cp, ready) =
        spawn_logged(&args(&["--gui-port", "0"]), &["ready"], &["cannot start"]).await;
    let ready = ready.expect("ready");
    let url = ready
        .split("GUI on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the ready line names the GUI's URL")
        .to_owned();
    let status: Value = reqwest::get(format!("{url}api/status"))
        .await
        .expect("GUI answers")
        .json()
        .await
        .expect("json");
    assert_eq!(status["worker_id"], "control-plane");
    assert_eq!(status["journal"]["enabled"], true);

    // Its port is taken: a second one says so and stops.
    let port = url
        .rsplit(':')
        .next()
        .unwrap_or("")
        .trim_end_matches('/')
        .to_owned();
    // ipc: no TCP port to collide with by chance.
    let other = format!("ipc://{}", fx.path("cp2").display());
    let out = tokio::process::Command::new(BIN)
        .args([
            "control-plane",
            "--base-address",
            &other,
            "--discovery-address",
        ])
        .arg(format!("ipc://{}", fx.path("disc2").display()))
        .args([
            "--manifest",
            &fx.manifest_path().display().to_string(),
            "--no-journal",
            "--gui-port",
            &port,
        ])
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert_contains(&String::from_utf8_lossy(&out.stderr), "the port is in use");
    drop(cp);

    let wide = tokio::process::Command::new(BIN)
        .args([
            "control-plane",
            "--base-address",
            &other,
            "--discovery-address",
        ])
        .arg(format!("ipc://{}", fx.path("disc3").display()))
        .args([
            "--manifest",
            &fx.manifest_path().display().to_string(),
            "--no-journal",
            "--gui-host",
            "0.0.0.0",
            "--gui-port",
            "0",
        ])
        .output()
        .await
        .expect("runs");
    assert_eq!(wide.status.code(), Some(2));
    let err = String::from_utf8_lossy(&wide.stderr);
    assert_contains(&err, "no GUI token is set");
    assert_contains(&err, "--gui-token-file");

    let off = tokio::process::Command::new(BIN)
        .args(["control-plane", "--gui-enabled", "maybe"])
        .output()
        .await
        .expect("runs");
    assert_eq!(off.status.code(), Some(2));
    assert_contains(
        &String::from_utf8_lossy(&off.stderr),
        "'maybe' is not a switch",
    );

    let (cp, ready) = spawn_logged(
        &["env".to_owned(), "FASTWORKER_GUI_ENABLED=no".to_owned()]
            .into_iter()
            .chain(args(&["--no-journal"]))
            .collect::<Vec<_>>(),
        &["ready"],
        &["cannot start"],
    )
    .await;
    assert_contains(&ready.expect("ready"), "no GUI");
    drop(cp);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_feed_that_falls_behind_reloads_the_list_and_tells_the_clients() {
    // 8 events of room: a batch of 60 tasks overflows it at once.
    let g = gui_on(|c| c.events_buffer = 8, |_| {}).await;
    let mut stream = g.app.hub.subscribe(None).rx;
    let tasks: Vec<_> = (0..60)
        .map(|i| crate::helpers::wire_task("add", vec![json!(i), json!(1)]))
        .collect();
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    let reply = g
        .plane
        .client
        .submit_batch(&tasks, fastworker::manifest::Priority::Normal)
        .await
        .expect("batch");
    assert!(reply.batch_accepted);
    for id in &ids {
        g.row_until(id, |r| r["status"] == "success").await;
    }
    let list = g.get("/api/tasks").await.json();
    assert_eq!(list["total"], 60, "every task listed once: {list}");
    assert_eq!(list["counts"]["success"], 60);
    let mut seen = String::new();
    while let Ok(frame) = stream.try_recv() {
        seen.push_str(&String::from_utf8_lossy(&frame.bytes));
    }
    assert_contains(&seen, "event: resync");
    assert_contains(&seen, "fell behind the control plane's events");
}

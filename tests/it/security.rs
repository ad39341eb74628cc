//! Who may talk to a control plane: tokens on every request, subworkers
//! that must present theirs, no listening beyond loopback without one, and
//! callbacks only to allowed addresses.

use std::process::Output;
use std::time::Duration;

use fastworker::auth::{Access, Token};
use fastworker::client::ClientError;
use fastworker::protocol::{self, Hello, Manage, Registered, Registration, Status};
use serde_json::json;

use crate::helpers::{BIN, Fixture, TestControlPlane, assert_contains, wire_task};

const MANIFEST: &str = r#"
[tasks.eight]
command = ["sh", "-c", "cat > /dev/null; echo 8"]
"#;

const CLIENT_TOKEN: &str = "client-token-0123456789abcdef";
const WORKER_TOKEN: &str = "worker-token-0123456789abcdef";

fn token(text: &str) -> Option<Token> {
    Some(Token::new(text).expect("token"))
}

fn refused(reply: Result<impl std::fmt::Debug, ClientError>) -> String {
    match reply {
        Err(ClientError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn tokened() -> (Fixture, TestControlPlane) {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |c| {
        c.access = Access {
            client: token(CLIENT_TOKEN),
            worker: token(WORKER_TOKEN),
        };
    })
    .await;
    (fx, cp)
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_every_request_must_carry_it() {
    let (_fx, cp) = tokened().await;
    let bare = cp.client.clone();
    let wrong = cp
        .client
        .clone()
        .with_auth(token("not-the-token-0123456789"));
    let right = cp.client.clone().with_auth(token(CLIENT_TOKEN));
    let as_worker = cp.client.clone().with_auth(token(WORKER_TOKEN));

    assert_contains(
        &refused(
            bare.submit(wire_task("eight", vec![]), None, Duration::from_secs(10))
                .await,
        ),
        "unauthorized: this control plane requires a token",
    );
    assert_contains(
        &refused(wrong.submit_ack(wire_task("eight", vec![]), None).await),
        "unauthorized: wrong token",
    );
    assert_contains(&refused(bare.status("x").await), "unauthorized");
    assert_contains(&refused(bare.cancel("x").await), "unauthorized");
    assert_contains(&refused(bare.workers().await), "unauthorized");
    assert_contains(&refused(bare.list().await), "unauthorized");
    assert_contains(&refused(as_worker.list().await), "wrong token");

    let done = right
        .submit(wire_task("eight", vec![]), None, Duration::from_secs(10))
        .await
        .expect("submit");
    assert_eq!((done.status, done.result), (Status::Success, json!(8)));
    assert!(right.status(&done.task_id).await.expect("status").found);
    assert_eq!(cp.sockets.gate.denied(), 7);
    cp.stop().await;
}

fn registration(id: &str) -> Manage {
    Manage::Register(Registration {
        hello: Hello {
            worker_id: id.to_owned(),
            session: uuid::Uuid::new_v4().simple().to_string(),
        },
        address: "rogue".to_owned(),
        capacity: 4,
        tasks: [(
            "steal".to_owned(),
            protocol::TaskOffer {
                digest: "0".into(),
                priority: fastworker::manifest::Priority::Critical,
                retries: 0,
                retry_backoff_ms: 0,
                max_concurrency: None,
            },
        )]
        .into(),
        running: Vec::new(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subworker_must_present_the_worker_token_to_register() {
    let (_fx, cp) = tokened().await;
    let manage = cp.client.endpoints().subworker.clone();
    let timeout = Duration::from_secs(5);
    for (client, says) in [
        (
            cp.client.clone(),
            "subworkers must present the worker token",
        ),
        (
            cp.client.clone().with_auth(token(CLIENT_TOKEN)),
            "wrong worker token",
        ),
    ] {
        let reply = client
            .request::<_, Registered>(&manage, &registration("rogue"), timeout)
            .await;
        assert_contains(&refused(reply), says);
    }
    // The rogue's task name never became submittable.
    let right = cp.client.clone().with_auth(token(CLIENT_TOKEN));
    let ack = right
        .submit_ack(wire_task("steal", vec![]), None)
        .await
        .expect("ack");
    assert!(!ack.accepted);
    assert_contains(&ack.error.unwrap_or_default(), "unknown task 'steal'");

    let worker = cp.client.clone().with_auth(token(WORKER_TOKEN));
    let reply: Registered = worker
        .request(&manage, &registration("trusted"), timeout)
        .await
        .expect("register");
    assert!(reply.registered, "{reply:?}");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn listening_beyond_loopback_needs_a_token_or_insecure() {
    let fx = Fixture::new(MANIFEST);
    let manifest = std::sync::Arc::new(fx.load());
    let port = 20_000 + crate::helpers::rand_u16() % 40_000;
    let config = fastworker::control_plane::Config::new(
        &format!("tcp://0.0.0.0:{port}"),
        &format!("tcp://127.0.0.1:{}", port + 6),
    );
    let err = fastworker::control_plane::start(
        config,
        manifest,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("refused");
    let text = err.to_string();
    assert_contains(
        &text,
        "can be reached from other hosts, and no token is set",
    );
    assert_contains(&text, "--insecure");
}

#[tokio::test(flavor = "multi_thread")]
async fn callbacks_go_only_where_allowed() {
    let fx = Fixture::new(MANIFEST);
    let cp = TestControlPlane::start(&fx, |_| {}).await;
    let mut task = wire_task("eight", vec![]);
    task.callback = Some(json!({"address": "ipc:///var/run/docker.sock", "data": 1}));
    let ack = cp.client.submit_ack(task, None).await.expect("ack");
    assert!(!ack.accepted);
    assert_contains(
        &ack.error.unwrap_or_default(),
        "is not allowed; allowed: tcp://127.0.0.1:*",
    );
    let mut task = wire_task("eight", vec![]);
    task.callback = Some(json!({"address": "tcp://127.0.0.1:9", "data": 1}));
    assert!(
        cp.client
            .submit_ack(task, None)
            .await
            .expect("ack")
            .accepted
    );
    cp.stop().await;

    let cp = TestControlPlane::start(&fx, |c| {
        c.callbacks =
            fastworker::control_plane::CallbackPolicy::new(vec!["ipc:///tmp/fw-*".into()]);
    })
    .await;
    let mut task = wire_task("eight", vec![]);
    task.callback = Some(json!({"address": "tcp://127.0.0.1:9"}));
    assert!(
        !cp.client
            .submit_ack(task, None)
            .await
            .expect("ack")
            .accepted
    );
    let mut task = wire_task("eight", vec![]);
    task.callback = Some(json!({"address": "ipc:///tmp/fw-1"}));
    assert!(
        cp.client
            .submit_ack(task, None)
            .await
            .expect("ack")
            .accepted
    );
    cp.stop().await;
}

async fn fastworker(args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("FASTWORKER_AUTH_TOKEN")
        .env_remove("FASTWORKER_AUTH_TOKEN_FILE")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run fastworker")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_sends_the_token_from_a_file_or_the_environment() {
    let (fx, cp) = tokened().await;
    let base = cp.base.as_str();
    std::fs::write(fx.path("token"), format!("{CLIENT_TOKEN}\n")).expect("token");
    let file = fx.path("token").display().to_string();

    let o = fastworker(&["submit", "--base-address", base, "eight"], &[]).await;
    assert_eq!(o.status.code(), Some(2));
    assert_contains(&String::from_utf8_lossy(&o.stderr), "unauthorized");

    let o = fastworker(
        &[
            "submit",
            "--base-address",
            base,
            "--auth-token-file",
            &file,
            "eight",
        ],
        &[],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "8");

    let o = fastworker(
        &["submit", "--base-address", base, "eight"],
        &[("FASTWORKER_AUTH_TOKEN", CLIENT_TOKEN)],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "8");

    let o = fastworker(
        &[
            "submit",
            "--base-address",
            base,
            "--auth-token",
            "short",
            "eight",
        ],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert_contains(
        &String::from_utf8_lossy(&o.stderr),
        "at least 16 characters",
    );
    // The token in the environment is not shown by --help.
    let o = fastworker(
        &["submit", "--help"],
        &[("FASTWORKER_AUTH_TOKEN", CLIENT_TOKEN)],
    )
    .await;
    assert!(!String::from_utf8_lossy(&o.stdout).contains(CLIENT_TOKEN));
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_do_not_inherit_the_tokens_unless_their_manifest_names_them() {
    let fx = Fixture::new(
        "[tasks.env]\ncommand = [\"python3\", \"print_env.py\"]\n\n\
         [tasks.named]\ncommand = [\"python3\", \"print_env.py\"]\nenv = { FASTWORKER_AUTH_TOKEN = \"given-on-purpose-0123\" }\n",
    );
    let manifest = fx.manifest_path().display().to_string();
    let run = |task: &'static str| {
        let manifest = manifest.clone();
        async move {
            let o = fastworker(
                &["run", "--manifest", &manifest, task],
                &[
                    ("FASTWORKER_AUTH_TOKEN", CLIENT_TOKEN),
                    ("FASTWORKER_WORKER_TOKEN", WORKER_TOKEN),
                ],
            )
            .await;
            let result: serde_json::Value =
                serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"));
            result["env"].clone()
        }
    };
    let env = run("env").await;
    assert!(env.get("FASTWORKER_AUTH_TOKEN").is_none(), "{env}");
    assert!(env.get("FASTWORKER_WORKER_TOKEN").is_none(), "{env}");
    assert!(env.get("PATH").is_some());
    let env = run("named").await;
    assert_eq!(env["FASTWORKER_AUTH_TOKEN"], "given-on-purpose-0123");
}

//! Subworkers on other hosts, for real: three network namespaces (a control
//! plane and two subworkers, each with its own address) on a bridge in a
//! fourth. One subworker's link is cut mid-task: the task runs again on the
//! other; the link comes back: the worker rejoins by itself.
//!
//! A second test carries a subworker's traffic through an SSH tunnel to a
//! control plane that listens on loopback only: the way docs/security.md
//! says to cross hosts, since NNG's TLS is not available here.
//!
//! Needs root (and iproute2, and OpenSSH for the tunnel); where namespaces
//! cannot be made it says so and skips, unless `FASTWORKER_REQUIRE_NETNS`
//! is set (as `.ci/run` does).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{BIN, Fixture, Logged, rand_u16, spawn_logged, wait_for};

const MANIFEST: &str = r#"
[tasks.work]
description = "runs for 4 s, then says which host it ran on"
command = ["sh", "-c", "cat > /dev/null; sleep 4; echo \"\\\"$(ip -4 -o addr show scope global | awk '{print $4}' | head -1)\\\"\""]
"#;

/// Network namespaces, deleted (with their links) when dropped.
struct Net {
    namespaces: Vec<String>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A hub namespace with a bridge, and `hosts` namespaces on it, host `i`
/// at `10.{net}.{i+1}/24`.
fn make_net(tag: &str, net: &str, hosts: &[&str]) -> Result<Net, String> {
    let hub = format!("fw{tag}hub");
    let mut made = Net {
        namespaces: Vec::new(),
    };
    ip(&["netns", "add", &hub])?;
    made.namespaces.push(hub.clone());
    ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &hub, "link", "set", "br0", "up"])?;
    for (i, host) in hosts.iter().enumerate() {
        let ns = format!("fw{tag}{host}");
        ip(&["netns", "add", &ns])?;
        made.namespaces.push(ns.clone());
        let (inside, outside) = (format!("fw{tag}i{i}"), format!("fw{tag}o{i}"));
        ip(&[
            "link", "add", &inside, "type", "veth", "peer", "name", &outside,
        ])?;
        ip(&["link", "set", &inside, "netns", &ns, "name", "eth0"])?;
        ip(&[
            "link",
            "set",
            &outside,
            "netns",
            &hub,
            "name",
            &format!("to{host}"),
        ])?;
        ip(&[
            "-n",
            &hub,
            "link",
            "set",
            &format!("to{host}"),
            "master",
            "br0",
        ])?;
        ip(&["-n", &hub, "link", "set", &format!("to{host}"), "up"])?;
        let address = format!("10.{net}.{}/24", i + 1);
        ip(&["-n", &ns, "addr", "add", &address, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    }
    Ok(made)
}

/// Runs the binary in namespace `ns`, with the token in `token` (a file),
/// and returns its stdout.
fn fastworker_in(ns: &str, token: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, BIN])
        .args(args)
        .env("FASTWORKER_AUTH_TOKEN_FILE", token)
        .output()
        .expect("ip netns exec");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subworker_cut_off_mid_task_is_replaced_and_rejoins_across_hosts() {
    let tag = format!("{:04x}", rand_u16());
    let net = format!("{}.{}", 200 + rand_u16() % 50, rand_u16() % 250);
    let hosts = ["cp", "w1", "w2"];
    let net_guard = match make_net(&tag, &net, &hosts) {
        Ok(made) => made,
        Err(e) => {
            // CI sets this: there, a skip is a failure.
            assert!(
                std::env::var_os("FASTWORKER_REQUIRE_NETNS").is_none(),
                "FASTWORKER_REQUIRE_NETNS is set, but network namespaces cannot be made: {e}"
            );
            eprintln!("skipped: cannot create network namespaces here ({e})");
            return;
        }
    };
    let fx = Fixture::new(MANIFEST);
    let ns = |host: &str| format!("fw{tag}{host}");
    let base = format!("tcp://10.{net}.1:5555");
    let argv = |host: &str, args: &[&str]| -> Vec<String> {
        ["ip", "netns", "exec", &ns(host), BIN]
            .iter()
            .chain(args)
            .map(|s| (*s).to_owned())
            .collect()
    };
    let manifest = fx.manifest_path().display().to_string();
    let data = fx.path("data").display().to_string();
    // Beyond loopback a control plane requires a token (docs/security.md).
    std::fs::write(
        fx.path("token"),
        format!("{}\n", uuid::Uuid::new_v4().simple()),
    )
    .expect("token");
    let token = fx.path("token").display().to_string();
    let (cp, ready) = spawn_logged(
        &argv(
            "cp",
            &[
                "control-plane",
                "--no-gui",
                "--base-address",
                &base,
                "--discovery-address",
                &format!("tcp://10.{net}.1:5550"),
                "--manifest",
                &manifest,
                "--data-dir",
                &data,
                "--no-local-tasks",
                "--auth-token-file",
                &token,
            ],
        ),
        &["ready"],
        &["cannot start"],
    )
    .await;
    ready.unwrap_or_else(|e| panic!("control plane: {e}"));
    // A subworker without the token is turned away, and says so.
    let (mut rogue, refused) = spawn_logged(
        &argv(
            "w2",
            &[
                "subworker",
                "--worker-id",
                "rogue",
                "--control-plane-address",
                &base,
                "--manifest",
                &manifest,
            ],
        ),
        &["ready"],
        &["error"],
    )
    .await;
    let refused = refused.expect_err("a subworker without the token is refused");
    assert!(refused.contains("unauthorized"), "{refused}");
    assert_eq!(rogue.child.wait().await.expect("exit").code(), Some(2));
    let mut workers: Vec<(String, Logged)> = Vec::new();
    for host in ["w1", "w2"] {
        let (w, ready) = spawn_logged(
            &argv(
                host,
                &[
                    "subworker",
                    "--worker-id",
                    host,
                    "--control-plane-address",
                    &base,
                    "--concurrency",
                    "1",
                    "--manifest",
                    &manifest,
                    "--auth-token-file",
                    &token,
                ],
            ),
            &["ready"],
            &["error"],
        )
        .await;
        ready.unwrap_or_else(|e| panic!("subworker {host}: {e}\n{}", w.stderr()));
        workers.push((host.to_owned(), w));
    }

    let id = fastworker_in(
        &ns("cp"),
        &token,
        &["submit", "--base-address", &base, "--non-blocking", "work"],
    )
    .trim()
    .to_owned();
    assert!(!id.is_empty(), "no task id");
    let status = |id: &str| -> Value {
        serde_json::from_str(&fastworker_in(
            &ns("cp"),
            &token,
            &["status", "--base-address", &base, "--json", id],
        ))
        .unwrap_or(Value::Null)
    };
    let mut first = String::new();
    assert!(
        wait_for(Duration::from_secs(20), || {
            first = status(&id)["worker"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            !first.is_empty()
        })
        .await,
        "the task never started on a subworker"
    );
    let other = if first == "w1" { "w2" } else { "w1" };

    // Cut the link of the worker that runs it.
    ip(&[
        "-n",
        &ns("hub"),
        "link",
        "set",
        &format!("to{first}"),
        "down",
    ])
    .expect("link down");
    let cut = Instant::now();
    assert!(
        wait_for(Duration::from_secs(20), || status(&id)["worker"] == other).await,
        "the task never moved to {other}"
    );
    let moved = cut.elapsed();
    assert!(
        moved < Duration::from_secs(5),
        "moved to {other} only after {moved:?}"
    );
    let mut done = Value::Null;
    assert!(
        wait_for(Duration::from_secs(20), || {
            done = status(&id);
            done["status"] == "success"
        })
        .await,
        "the task never succeeded: {done}"
    );
    let other_index = if other == "w1" { 2 } else { 3 };
    assert_eq!(
        done["result"],
        format!("10.{net}.{other_index}/24"),
        "{done}"
    );
    let attempts: Vec<(Value, Value)> = done["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| (a["status"].clone(), a["worker"].clone()))
        .collect();
    assert_eq!(
        attempts,
        [
            (Value::from("lost"), Value::from(first.as_str())),
            (Value::from("success"), Value::from(other))
        ]
    );

    // The link comes back: the worker registers again, by itself.
    ip(&["-n", &ns("hub"), "link", "set", &format!("to{first}"), "up"]).expect("link up");
    let back = Instant::now();
    let (_, cut_off) = workers.iter().find(|(h, _)| *h == first).expect("worker");
    assert!(
        wait_for(Duration::from_secs(60), || cut_off.said("registered again")).await,
        "{first} never rejoined:\n{}",
        cut_off.stderr()
    );
    let listed: Value = serde_json::from_str(&fastworker_in(
        &ns("cp"),
        &token,
        &["workers", "--base-address", &base, "--json"],
    ))
    .expect("workers json");
    let entry = listed
        .as_array()
        .expect("list")
        .iter()
        .find(|w| w["worker_id"] == first.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(entry["status"], "active", "{listed}");
    // Its late result did not change the task.
    assert_eq!(status(&id)["result"], done["result"]);
    eprintln!(
        "task moved {moved:?} after the cut; {first} rejoined {:?} after the link came back",
        back.elapsed()
    );
    drop(workers);
    drop(cp);
    drop(net_guard);
}

/// Runs `program args` and fails with its stderr if it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subworker_reaches_a_loopback_control_plane_through_an_ssh_tunnel() {
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let have_ssh = Command::new("ssh").arg("-V").output().is_ok();
    let tag = format!("{:04x}", rand_u16());
    let net = format!("{}.{}", 200 + rand_u16() % 50, rand_u16() % 250);
    let made = match (sshd, have_ssh) {
        (Some(_), true) => make_net(&tag, &net, &["cp", "w1"]),
        _ => Err("OpenSSH (ssh and sshd) is not installed".to_owned()),
    };
    let _net_guard = match made {
        Ok(made) => made,
        Err(e) => {
            assert!(
                std::env::var_os("FASTWORKER_REQUIRE_NETNS").is_none(),
                "FASTWORKER_REQUIRE_NETNS is set, but the tunnel test cannot run: {e}"
            );
            eprintln!("skipped: {e}");
            return;
        }
    };
    let sshd = sshd.unwrap_or_default();
    let fx = Fixture::new(
        "[tasks.where]\ncommand = [\"sh\", \"-c\", \"cat > /dev/null; echo \\\"\\\\\\\"$(hostname -I 2>/dev/null | cut -d' ' -f1)\\\\\\\"\\\"\"]\n",
    );
    let ns = |host: &str| format!("fw{tag}{host}");
    let dir = fx.dir.path().display().to_string();
    for key in ["host_key", "client_key"] {
        run(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                &format!("{dir}/{key}"),
            ],
        );
    }
    std::fs::copy(fx.path("client_key.pub"), fx.path("authorized_keys")).expect("keys");
    let cp_ip = format!("10.{net}.1");
    std::fs::write(
        fx.path("sshd_config"),
        format!(
            "Port 2222\nListenAddress {cp_ip}\nHostKey {dir}/host_key\nPidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n\
             AllowTcpForwarding yes\n"
        ),
    )
    .expect("sshd_config");
    let _ = std::fs::create_dir_all("/run/sshd");
    let argv = |host: &str, program: &str, args: &[&str]| -> Vec<String> {
        ["ip", "netns", "exec", &ns(host), program]
            .iter()
            .chain(args)
            .map(|s| (*s).to_owned())
            .collect()
    };
    let config = format!("{dir}/sshd_config");
    let (_sshd, listening) = spawn_logged(
        &argv("cp", sshd, &["-D", "-e", "-f", &config]),
        &["Server listening"],
        &["error", "fatal"],
    )
    .await;
    listening.unwrap_or_else(|e| panic!("sshd: {e}"));

    // The control plane listens on the cp host's loopback only: no token
    // is needed, and nothing beyond that host can reach it, but the tunnel.
    let base = "tcp://127.0.0.1:5555";
    let manifest = fx.manifest_path().display().to_string();
    let data = fx.path("data").display().to_string();
    let (_cp, ready) = spawn_logged(
        &argv(
            "cp",
            BIN,
            &[
                "control-plane",
                "--no-gui",
                "--base-address",
                base,
                "--discovery-address",
                "tcp://127.0.0.1:5550",
                "--manifest",
                &manifest,
                "--data-dir",
                &data,
                "--no-local-tasks",
            ],
        ),
        &["ready"],
        &["cannot start"],
    )
    .await;
    ready.unwrap_or_else(|e| panic!("control plane: {e}"));

    // On w1: forward its local ports 5555..5560 to the cp host's loopback.
    let key = format!("{dir}/client_key");
    let mut tunnel_args: Vec<String> = [
        "-N",
        "-p",
        "2222",
        "-i",
        &key,
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "LogLevel=ERROR",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for port in 5555..=5560 {
        tunnel_args.push("-L".to_owned());
        tunnel_args.push(format!("127.0.0.1:{port}:127.0.0.1:{port}"));
    }
    tunnel_args.push(format!("root@{cp_ip}"));
    let tunnel_args: Vec<&str> = tunnel_args.iter().map(String::as_str).collect();
    let mut tunnel = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns("w1"), "ssh"])
        .args(&tunnel_args)
        .kill_on_drop(true)
        .spawn()
        .expect("ssh");
    // The subworker dials its own loopback; the tunnel carries it over.
    let (w1, ready) = spawn_logged(
        &argv(
            "w1",
            BIN,
            &[
                "subworker",
                "--worker-id",
                "w1",
                "--control-plane-address",
                base,
                "--manifest",
                &manifest,
            ],
        ),
        &["ready"],
        &["error"],
    )
    .await;
    ready.unwrap_or_else(|e| panic!("subworker: {e}\n{}", w1.stderr()));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns("cp"),
            BIN,
            "submit",
            "--base-address",
            base,
            "where",
        ])
        .output()
        .expect("submit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It ran on w1 (10.net.2), reached only through the tunnel.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("\"10.{net}.2\"")
    );
    let _ = tunnel.kill().await;
}

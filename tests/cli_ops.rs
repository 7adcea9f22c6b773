//! The operational `/v1` endpoints and CLI verbs end to end, on a real `mill init` node
//! (controllers on its leader, agent on a private containerd): status, nodes, services,
//! restart, rollout history/undo, drain/remove refusals, task runs (spawn, ps, kill), and
//! `mill deploy` reattaching to its Deploy when the progress stream drops.

#[path = "support/mod.rs"]
mod support;

use kube::api::{Api, ListParams};
use mill_crds::{Alloc, Service};
use serde_json::{json, Value};
use std::time::Duration;
use support::cli::{mill, text};
use support::containerd::Containerd;
use support::eventually;
use support::images;
use support::node::{MillNode, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

/// Generous bound for anything container-related on a loaded 2-core CI machine.
const WITHIN: Duration = Duration::from_secs(120);
const IMAGE: &str = "mill.test/httpd:1";

/// A `hello` service answering `greeting` on `/`.
fn hello(replicas: u32, greeting: &str) -> String {
    format!(
        r#"service "hello" {{
  image    = "{IMAGE}"
  command  = ["/bin/sh", "-c", "mkdir -p /www && echo {greeting} > /www/index.html && exec httpd -f -p $PORT -h /www"]
  port     = 8080
  replicas = {replicas}
  cpu      = 0.1
  memory   = "32M"

  health {{
    path     = "/"
    interval = "1s"
    timeout  = "1s"
  }}
}}

task "check" {{
  image   = "{IMAGE}"
  command = ["/bin/sh", "-c", "test \"$DAY\" = monday"]
  cpu     = 0.1
  memory  = "16M"
}}
"#
    )
}

/// A node with its controllers on and the test image loaded.
async fn node(ctd: &Containerd) -> MillNode {
    // A port range of this test's own: other tests on the host may hold the default's.
    let first = 20_000 + support::free_port() % 12_000;
    let ports = format!("{first}-{}", first + 50);
    let node = MillNode::start(
        ctd,
        &[
            ("MILL_RUN_CONTROLLERS", "1"),
            ("MILL_WATCHDOG_TICK_MS", "200"),
            ("MILL_PORT_RANGE", &ports),
            // httpd as PID 1 ignores SIGTERM: keep the old instances' stop short.
            ("MILL_STOP_GRACE_MS", "1000"),
        ],
    )
    .await;
    let archive = images::build(&images::httpd(IMAGE), ctd.dir.path());
    node.load_image(&archive);
    node
}

/// Runs the CLI and asserts it succeeded; its stdout.
async fn mill_ok(address: &str, args: &[&str]) -> String {
    let out = mill(address, args).await;
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "mill {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// `method path` on the node's `/v1` API with an optional JSON body: status and JSON.
async fn v1(node: &MillNode, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, node.url(path)).bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let answer = request.send().await.unwrap();
    let code = answer.status().as_u16();
    let text = answer.text().await.unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

/// The service's allocs not stopped or failed.
async fn live_allocs(node: &MillNode, service: &str) -> Vec<Alloc> {
    let allocs: Api<Alloc> = Api::namespaced(node.client(), "default");
    let params = ListParams::default().fields(&format!("spec.service={service}"));
    allocs
        .list(&params)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|a| !a.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
        .collect()
}

/// GET `/` of every healthy replica of `hello`, once they all say the same.
async fn greeting(node: &MillNode) -> String {
    let services = v1(node, "GET", "/v1/services", None).await.1;
    let mut bodies = Vec::new();
    for alloc in services[0]["allocations"].as_array().unwrap() {
        if alloc["status"] == "healthy" {
            let url = format!("http://{}/", alloc["address"].as_str().unwrap());
            bodies.push(reqwest::get(&url).await.unwrap().text().await.unwrap());
        }
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "the replicas disagree: {bodies:?}");
    bodies[0].trim().to_string()
}

fn has_keys(object: &Value, keys: &[&str]) {
    for key in keys {
        assert!(object.get(key).is_some(), "no {key:?} in {object}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn services_restart_roll_back_and_the_node_refuses_drain_and_removal() {
    let ctd = Containerd::start();
    let node = node(&ctd).await;
    let address = node.url("");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.mill");
    let file = file.to_str().unwrap();
    std::fs::write(file, hello(2, "v1")).unwrap();
    mill_ok(&address, &["deploy", "-f", file]).await;

    // The read endpoints, in SPEC §3's shapes.
    let (code, status) = v1(&node, "GET", "/v1/status", None).await;
    assert_eq!(code, 200, "{status}");
    has_keys(
        &status,
        &[
            "node_count",
            "service_count",
            "task_count",
            "cpu_total",
            "cpu_available",
            "memory_total_bytes",
            "memory_available_bytes",
            "leader",
        ],
    );
    assert_eq!(status["node_count"], 1, "{status}");
    assert_eq!(status["service_count"], 1, "{status}");
    assert_eq!(status["leader"], "node-1", "{status}");
    let (code, nodes) = v1(&node, "GET", "/v1/nodes", None).await;
    assert_eq!(code, 200, "{nodes}");
    let only = &nodes[0];
    has_keys(
        only,
        &[
            "id",
            "address",
            "status",
            "cpu_total",
            "cpu_available",
            "memory_total_bytes",
            "memory_available_bytes",
            "alloc_count",
        ],
    );
    assert_eq!(only["id"], "node-1");
    assert_eq!(only["status"], "ready");
    assert_eq!(only["alloc_count"], 2, "{nodes}");
    let (code, services) = v1(&node, "GET", "/v1/services", None).await;
    assert_eq!(code, 200, "{services}");
    assert_eq!(services[0]["name"], "hello");
    assert_eq!(services[0]["image"], IMAGE);
    assert_eq!(services[0]["replicas"], json!({"desired": 2, "healthy": 2}));
    let allocations = services[0]["allocations"].as_array().unwrap();
    assert_eq!(allocations.len(), 2, "{services}");
    for alloc in allocations {
        has_keys(
            alloc,
            &[
                "id",
                "node",
                "status",
                "address",
                "cpu",
                "memory",
                "started_at",
            ],
        );
        assert_eq!(alloc["node"], "node-1");
        assert_eq!(alloc["memory"], 32_000_000);
    }
    let stdout = mill_ok(&address, &["nodes"]).await;
    assert!(
        stdout.contains("node-1") && stdout.contains("ready"),
        "{stdout}"
    );

    // Unknown names are 404s that say what exists; nothing changes.
    let (code, body) = v1(&node, "POST", "/v1/restart/nope", None).await;
    assert_eq!(code, 404, "{body}");
    assert!(error_of(&body).contains("it has hello"), "{body}");
    let (code, body) = v1(&node, "POST", "/v1/nodes/node-9/drain", None).await;
    assert_eq!(code, 404, "{body}");
    assert!(error_of(&body).contains("node-1"), "{body}");
    let (code, body) = v1(&node, "DELETE", "/v1/nodes/node-9", None).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = v1(&node, "GET", "/v1/rollout/nope", None).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = v1(&node, "POST", "/v1/rollout/hello/undo?toRevision=7", None).await;
    assert_eq!(code, 404, "{body}");
    assert!(error_of(&body).contains("retained: 1"), "{body}");
    let (code, body) = v1(&node, "POST", "/v1/rollout/hello/undo", None).await;
    assert_eq!(code, 409, "no revision before the first: {body}");

    // A restart replaces every replica with new allocs of the same template.
    let before: Vec<String> = live_allocs(&node, "hello")
        .await
        .into_iter()
        .filter_map(|a| a.metadata.name)
        .collect();
    assert_eq!(before.len(), 2);
    let stdout = mill_ok(&address, &["restart", "hello"]).await;
    assert!(stdout.contains("  hello: old instance stopped"), "{stdout}");
    assert!(
        stdout.lines().last().unwrap().starts_with("restarted ("),
        "{stdout}"
    );
    let after = live_allocs(&node, "hello").await;
    assert_eq!(after.len(), 2, "{after:?}");
    for alloc in &after {
        assert!(
            !before.contains(alloc.metadata.name.as_ref().unwrap()),
            "{:?} survived the restart (before: {before:?})",
            alloc.metadata.name
        );
        assert_eq!(alloc.spec.revision, 2);
    }
    let services: Api<Service> = Api::namespaced(node.client(), "default");
    let history = services.get("hello").await.unwrap().status.unwrap().history;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].template, history[1].template, "same spec");
    assert_eq!(greeting(&node).await, "v1");

    // A new revision, then an undo to the first: it serves v1 again as revision 4.
    std::fs::write(file, hello(2, "v2")).unwrap();
    mill_ok(&address, &["deploy", "-f", file]).await;
    assert_eq!(greeting(&node).await, "v2");
    let stdout = mill_ok(&address, &["rollout", "history", "hello"]).await;
    for n in ["1", "2", "3"] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(n)),
            "revision {n} missing:\n{stdout}"
        );
    }
    assert!(stdout.contains("restart"), "{stdout}");
    assert!(stdout.contains("serving"), "{stdout}");
    let stdout = mill_ok(
        &address,
        &["rollout", "undo", "hello", "--to-revision", "1"],
    )
    .await;
    assert!(
        stdout.lines().last().unwrap().starts_with("rolled back ("),
        "{stdout}"
    );
    assert_eq!(greeting(&node).await, "v1");
    let stdout = mill_ok(&address, &["rollout", "status", "hello"]).await;
    assert!(
        stdout.contains("hello: revision 4, 2/2 healthy"),
        "{stdout}"
    );
    let (_, rollout) = v1(&node, "GET", "/v1/rollout/hello", None).await;
    assert_eq!(rollout["revision"], 4, "{rollout}");

    // The only node cannot be drained while it runs services (they could go nowhere), nor
    // removed while allocs are active; neither changes anything.
    let out = mill(&address, &["drain", "node-1"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("no other ready node can take them"),
        "{stderr}"
    );
    let (code, body) = v1(&node, "DELETE", "/v1/nodes/node-1", None).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        error_of(&body).contains("node still has active allocations"),
        "{body}"
    );
    let out = mill(&address, &["remove", "node-1"]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("node still has active allocations"),
        "{stderr}"
    );
    let nodes = v1(&node, "GET", "/v1/nodes", None).await.1;
    assert_eq!(nodes[0]["status"], "ready", "{nodes}");
    assert_eq!(greeting(&node).await, "v1");
}

/// Polls `GET /v1/tasks/{id}` until the run has ended.
async fn ended(node: &MillNode, id: &str) -> Value {
    eventually(WITHIN, &format!("task run {id} to end"), || async {
        let (code, run) = v1(node, "GET", &format!("/v1/tasks/{id}"), None).await;
        assert_eq!(code, 200, "{run}");
        matches!(run["status"].as_str(), Some("stopped" | "failed")).then_some(run)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn task_runs_end_stopped_or_failed_with_their_exit_code_and_can_be_killed() {
    let ctd = Containerd::start();
    let node = node(&ctd).await;
    let address = node.url("");

    // Inline runs: exit 0 ends `stopped`, exit 3 `failed` with the code.
    let id = mill_ok(
        &address,
        &["spawn", "--image", IMAGE, "--", "/bin/sh", "-c", "exit 0"],
    )
    .await;
    let id = id.trim();
    assert!(
        id.starts_with("httpd-") && id.len() == "httpd-".len() + 4,
        "{id}"
    );
    let run = ended(&node, id).await;
    assert_eq!(run["status"], "stopped", "{run}");
    assert_eq!(run["exit_code"], 0, "{run}");
    assert_eq!(run["name"], "httpd", "{run}");
    assert_eq!(run["node"], "node-1", "{run}");
    has_keys(
        &run,
        &["address", "cpu", "memory", "started_at", "finished_at"],
    );

    let (code, spawned) = v1(
        &node,
        "POST",
        "/v1/tasks/spawn",
        Some(&json!({"image": IMAGE, "command": ["/bin/sh", "-c", "exit 3"], "cpu": 0.1, "memory": "16M"}).to_string()),
    )
    .await;
    assert_eq!(code, 201, "{spawned}");
    has_keys(&spawned, &["id", "node", "status", "address"]);
    let failed = spawned["id"].as_str().unwrap().to_string();
    let run = ended(&node, &failed).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["exit_code"], 3, "{run}");
    assert_eq!(run["reason"], "exited with code 3", "{run}");
    assert_eq!(run["memory"], 16_000_000, "{run}");

    // Bad requests are 400s naming the field, unknown runs 404s; nothing is created.
    let before = v1(&node, "GET", "/v1/tasks", None).await.1;
    let (code, body) = v1(
        &node,
        "POST",
        "/v1/tasks/spawn",
        Some(r#"{"image": "x", "cpu": "lots"}"#),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(error_of(&body).contains("`cpu`"), "{body}");
    let (code, body) = v1(&node, "POST", "/v1/tasks/spawn", Some("{not json")).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = v1(
        &node,
        "POST",
        "/v1/tasks/spawn",
        Some(r#"{"task": "nope"}"#),
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert!(error_of(&body).contains("no task \"nope\""), "{body}");
    let (code, body) = v1(&node, "GET", "/v1/tasks/nope-1234", None).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = v1(&node, "DELETE", "/v1/tasks/nope-1234", None).await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(v1(&node, "GET", "/v1/tasks", None).await.1, before);

    // A task a deploy defined, with env from the spawn: it sees DAY and exits 0.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.mill");
    std::fs::write(&file, hello(1, "v1")).unwrap();
    mill_ok(&address, &["deploy", "-f", file.to_str().unwrap()]).await;
    let id = mill_ok(&address, &["spawn", "check", "--env", "DAY=monday"]).await;
    let run = ended(&node, id.trim()).await;
    assert_eq!(run["status"], "stopped", "{run}");
    assert_eq!(run["name"], "check", "{run}");
    let id = mill_ok(&address, &["spawn", "check", "--env", "DAY=friday"]).await;
    let run = ended(&node, id.trim()).await;
    assert_eq!(run["status"], "failed", "{run}");

    // Kill: a long run ends `stopped`.
    let sleeper = mill_ok(
        &address,
        &[
            "spawn",
            "--image",
            IMAGE,
            "--",
            "/bin/sh",
            "-c",
            "sleep 600",
        ],
    )
    .await;
    let sleeper = sleeper.trim().to_string();
    eventually(WITHIN, "the sleeper to run", || async {
        let run = v1(&node, "GET", &format!("/v1/tasks/{sleeper}"), None)
            .await
            .1;
        (run["status"] == "running").then_some(())
    })
    .await;
    let stdout = mill_ok(&address, &["ps"]).await;
    assert!(
        stdout.contains(&sleeper) && stdout.contains("running"),
        "{stdout}"
    );
    assert!(stdout.contains(&failed), "{stdout}");
    let stdout = mill_ok(&address, &["kill", &sleeper]).await;
    assert_eq!(stdout.trim(), format!("{sleeper}: stopped"));
    assert_eq!(ended(&node, &sleeper).await["status"], "stopped");
    let status = v1(&node, "GET", "/v1/status", None).await.1;
    assert_eq!(status["task_count"], 0, "no run is active: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_running_only_tasks_drains_and_the_only_member_is_not_removed() {
    let ctd = Containerd::start();
    let node = node(&ctd).await;
    let address = node.url("");
    let sleeper = mill_ok(
        &address,
        &[
            "spawn",
            "--image",
            IMAGE,
            "--",
            "/bin/sh",
            "-c",
            "sleep 600",
        ],
    )
    .await;
    let sleeper = sleeper.trim().to_string();
    eventually(WITHIN, "the sleeper to run", || async {
        let run = v1(&node, "GET", &format!("/v1/tasks/{sleeper}"), None)
            .await
            .1;
        (run["status"] == "running").then_some(())
    })
    .await;
    // Draining stops its tasks; the node ends empty, `draining`, taking nothing new.
    let stdout = mill_ok(&address, &["drain", "node-1"]).await;
    assert!(stdout.contains("node-1: drained"), "{stdout}");
    assert_eq!(ended(&node, &sleeper).await["status"], "stopped");
    let nodes = v1(&node, "GET", "/v1/nodes", None).await.1;
    assert_eq!(nodes[0]["status"], "draining", "{nodes}");
    assert_eq!(nodes[0]["alloc_count"], 0, "{nodes}");
    // Drained, but the cluster's only member: removing it would end the cluster.
    let out = mill(&address, &["leave"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("the cluster's only member"), "{stderr}");
    let nodes = v1(&node, "GET", "/v1/nodes", None).await.1;
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{nodes}");
}

/// A TCP proxy to `upstream` that cuts the first `POST /v1/deploy` connection as soon as
/// the answer's first event has gone through; every other connection is passed as is.
async fn stream_cutting_proxy(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut cut = false;
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let mut server = TcpStream::connect(&upstream).await.unwrap();
            let mut first = vec![0; 64 * 1024];
            let n = client.read(&mut first).await.unwrap_or(0);
            server.write_all(&first[..n]).await.unwrap();
            let is_deploy = first[..n].starts_with(b"POST /v1/deploy");
            if is_deploy && !cut {
                cut = true;
                tokio::spawn(async move {
                    let (mut from_client, mut to_client) = client.split();
                    let (mut from_server, mut to_server) = server.split();
                    // The rest of the request (its body may come in later segments).
                    let request = tokio::io::copy(&mut from_client, &mut to_server);
                    let answer = async {
                        let mut seen = Vec::new();
                        let mut buffer = vec![0; 64 * 1024];
                        while let Ok(n) = from_server.read(&mut buffer).await {
                            if n == 0 {
                                return;
                            }
                            to_client.write_all(&buffer[..n]).await.ok();
                            seen.extend_from_slice(&buffer[..n]);
                            if String::from_utf8_lossy(&seen).contains("event: progress") {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = request => {}
                        () = answer => {}
                    }
                    // Both sockets drop here: the CLI sees the stream end mid-deploy.
                });
            } else {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn mill_deploy_follows_the_deploy_object_when_its_stream_drops() {
    let ctd = Containerd::start();
    let node = node(&ctd).await;
    let proxy = stream_cutting_proxy(node.addr.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.mill");
    std::fs::write(&file, hello(2, "v1")).unwrap();
    let out = mill(&proxy, &["deploy", "-f", file.to_str().unwrap()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("the progress stream dropped; following deploy-"),
        "{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| **l == "  hello: scheduled on node-1")
            .count(),
        2,
        "each step once:\n{stdout}"
    );
    assert!(lines.last().unwrap().starts_with("deployed ("), "{stdout}");
    assert_eq!(greeting(&node).await, "v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn mill_deploy_on_a_terminal_shows_a_spinner_per_service_with_its_elapsed_time() {
    let ctd = Containerd::start();
    let node = node(&ctd).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.mill");
    std::fs::write(&file, hello(1, "v1")).unwrap();
    // `script` runs the CLI on a pseudo-terminal and copies what it draws.
    let line = format!(
        "{} --address {} --token {TOKEN} deploy -f {}",
        env!("CARGO_BIN_EXE_mill"),
        node.url(""),
        file.display()
    );
    let mut command = Command::new("script");
    command
        .args(["-qec", &line, "/dev/null"])
        .env("COLUMNS", "120")
        .env("LINES", "40")
        .env_remove("MILL_ADDRESS")
        .env_remove("MILL_TOKEN")
        .kill_on_drop(true);
    let out = tokio::time::timeout(WITHIN, command.output())
        .await
        .expect("mill deploy on a terminal finishes")
        .unwrap();
    let (drawn, stderr) = text(&out);
    assert!(out.status.success(), "{drawn}\n{stderr}");
    assert!(drawn.contains("  hello: scheduled on node-1"), "{drawn}");
    assert!(drawn.contains("deployed ("), "{drawn}");
    // The spinner line: the service, its latest step and the elapsed time in brackets
    // (plain lines have none).
    assert!(
        drawn
            .split(['\r', '\n'])
            .any(|l| l.contains(" hello: ") && l.trim_end().ends_with("s]")),
        "no spinner line in:\n{drawn:?}"
    );
}

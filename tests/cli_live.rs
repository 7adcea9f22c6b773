//! The CLI against a live single-node cluster with a real deploy (a `mill init` node with
//! controllers, its agent on a private containerd, images from a local registry):
//! `get` (tables, `-o json|yaml|name`, `-w`), the same allocs as the real kubectl through
//! `mill kubeconfig`, `describe` with a rollout's history, `logs` (tail, `-f` on a running
//! container, `--all`), `delete`, `status` (with the service's cpu and memory in use), and
//! `/metrics`: the running container's usage (and none for the alloc the rollout stopped),
//! a finished task run's duration, the store's apply latency, passing `promtool check
//! metrics`; a secret the service uses never shows in any output or in the daemon's log.

#[path = "support/mod.rs"]
mod support;

use serde_json::Value;
use std::process::{Output, Stdio};
use std::time::Duration;
use support::containerd::Containerd;
use support::images;
use support::node::{MillNode, TOKEN};
use support::registry::Registry;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Generous bound for anything container-related on a loaded 2-core CI machine.
const WITHIN: Duration = Duration::from_secs(120);
const SECRET: &str = "live-secret-value-never-printed";

/// A service that logs a numbered line every 200 ms and serves HTTP.
fn config(image: &str, greeting: &str) -> String {
    format!(
        r#"service "hello" {{
  image    = "{image}"
  command  = ["/bin/sh", "-c", "mkdir -p /www && echo {greeting} > /www/index.html && (i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done) & exec httpd -f -p $PORT -h /www"]
  port     = 8080
  replicas = 1
  cpu      = 0.1
  memory   = "32M"

  env {{
    TOKEN = "${{secret(api-token)}}"
  }}

  health {{
    path     = "/"
    interval = "1s"
    timeout  = "1s"
  }}
}}
"#
    )
}

fn command(address: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mill"));
    command
        .args(["--address", address, "--token", TOKEN])
        .args(args)
        .env_remove("MILL_ADDRESS")
        .env_remove("MILL_TOKEN")
        .kill_on_drop(true);
    command
}

/// Runs the CLI to its end (bounded by [`WITHIN`]); asserts success; returns stdout.
async fn mill(address: &str, args: &[&str]) -> String {
    let out: Output = tokio::time::timeout(WITHIN, command(address, args).output())
        .await
        .unwrap_or_else(|_| panic!("mill {args:?} did not finish within {WITHIN:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "mill {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
    stdout
}

/// A child's stdout, line by line (one reader for its whole life: a reader buffers).
type ChildLines = Lines<BufReader<ChildStdout>>;

/// Spawns the CLI with its stdout piped, for commands that go on printing.
fn spawn(address: &str, args: &[&str]) -> (Child, ChildLines) {
    let mut child = command(address, args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().expect("piped stdout");
    (child, BufReader::new(stdout).lines())
}

/// Reads lines until one satisfies `wanted`; returns every line read.
async fn read_until(
    lines: &mut ChildLines,
    what: &str,
    mut wanted: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WITHIN, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = wanted(&line);
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no line showed {what} within {WITHIN:?}; lines:\n{}",
        seen.join("\n")
    );
    seen
}

/// The samples of metric `name` in an exposition: (the label text inside `{}`, value).
fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.rsplit_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            Some((labels.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Scrapes the node's `/metrics` until `wanted` holds (the agent samples usage every
/// heartbeat interval); returns that exposition, or fails showing the last one.
async fn metrics_until(node: &MillNode, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let answer = reqwest::Client::new()
            .get(node.url("/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "/metrics: {}",
            answer.status()
        );
        let text = answer.text().await.unwrap();
        if wanted(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/metrics did not show {what} within {WITHIN:?}; the last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text.lines().map(str::to_string).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_commands_against_a_live_cluster() {
    support::require(&["kubectl", "promtool"]);
    let ctd = Containerd::start();
    let registry = Registry::start();
    let archive = images::build(&images::httpd("mill.test/httpd:1"), ctd.dir.path());
    let image = registry.push(&archive, "mill/busybox:latest");
    let first = 20_000 + support::free_port() % 12_000;
    let ports = format!("{first}-{}", first + 50);
    let node = MillNode::start(
        &ctd,
        &[
            ("MILL_RUN_CONTROLLERS", "1"),
            ("MILL_WATCHDOG_TICK_MS", "200"),
            ("MILL_PORT_RANGE", &ports),
            ("MILL_STOP_GRACE_MS", "1000"),
        ],
    )
    .await;
    let address = node.url("");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.mill");
    let file_arg = file.to_str().unwrap();

    mill(&address, &["secret", "set", "api-token", SECRET]).await;
    std::fs::write(&file, config(&image, "v1")).unwrap();
    mill(&address, &["deploy", "-f", file_arg]).await;

    // status: the CLUSTER line, then SERVICES, TASKS, NODES; a node's reservations count
    // the deploy at once, not with the next heartbeat.
    let status = mill(&address, &["status"]).await;
    let lines: Vec<&str> = status.lines().collect();
    assert!(
        lines[0].starts_with("CLUSTER   1 node, leader node-1, 1 service, 0 tasks, cpu 0.1/"),
        "{status}"
    );
    let node_row = lines.iter().find(|l| l.trim_start().starts_with("node-1 "));
    let node_row: Vec<&str> = node_row.expect("a node-1 row").split_whitespace().collect();
    assert_eq!(node_row[1], "ready", "{status}");
    assert!(node_row[2].starts_with("0.1/"), "{status}");
    assert!(node_row[3].starts_with("31Mi/"), "{status}");
    assert_eq!(node_row[4], "1", "{status}");
    // The service's row shows what its container uses once the agent sampled it twice.
    let (status, hello) = support::eventually(WITHIN, "the hello row with usage", || {
        let address = address.clone();
        async move {
            let status = mill(&address, &["status"]).await;
            let row = status
                .lines()
                .find(|l| l.trim_start().starts_with("hello "))
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())?;
            (row.len() == 6 && row[2] != "-" && row[3] != "-").then_some((status, row))
        }
    })
    .await;
    assert_eq!(hello[..2], ["hello", "1/1"], "{status}");
    assert_eq!(hello[4..], ["0.0", "-"], "{status}");
    assert!(
        hello[2].ends_with('m') && hello[2].trim_end_matches('m').parse::<u32>().is_ok(),
        "cpu in millicores: {status}"
    );
    let memory_digits = hello[3].trim_end_matches(|c: char| c.is_ascii_alphabetic());
    assert!(
        memory_digits.parse::<f64>().is_ok_and(|m| m > 0.0),
        "memory in use: {status}"
    );
    for section in ["SERVICES", "TASKS", "NODES"] {
        assert!(lines.contains(&section), "{status}");
    }
    let json: Value = serde_json::from_str(&mill(&address, &["--json", "status"]).await)
        .expect("status --json parses");
    assert_eq!(json["status"]["node_count"], 1);

    // get: the table, wide, json, yaml, name; and the same allocs as kubectl.
    let table = mill(&address, &["get", "allocs"]).await;
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "SERVICE", "NODE", "STATUS"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(
        table.contains("hello-1-") && table.contains("healthy"),
        "{table}"
    );
    let wide = mill(&address, &["get", "svc", "-o", "wide"]).await;
    assert!(wide.lines().any(|l| l.starts_with("hello ")), "{wide}");
    let json: Value = serde_json::from_str(&mill(&address, &["get", "allocs", "-o", "json"]).await)
        .expect("-o json parses");
    assert_eq!(json["items"].as_array().map(Vec::len), Some(1), "{json}");
    let one: Value =
        serde_json::from_str(&mill(&address, &["--json", "get", "service", "hello"]).await)
            .expect("--json parses");
    assert_eq!(one["spec"]["replicas"], 1);
    let yaml: Value =
        serde_yaml::from_str(&mill(&address, &["get", "no", "-o", "yaml"]).await).unwrap();
    assert_eq!(yaml["items"][0]["metadata"]["name"], "node-1");
    let mill_names = names(&mill(&address, &["get", "allocs", "-o", "name", "-A"]).await);
    let kubeconfig = dir.path().join("kubeconfig");
    let text = mill(
        &address,
        &["--data-dir", node.data_dir.to_str().unwrap(), "kubeconfig"],
    )
    .await;
    std::fs::write(&kubeconfig, text).unwrap();
    let kubectl = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "allocs", "-A", "-o", "name"])
        .output()
        .unwrap();
    assert!(
        kubectl.status.success(),
        "{}",
        String::from_utf8_lossy(&kubectl.stderr)
    );
    assert_eq!(mill_names, names(&String::from_utf8_lossy(&kubectl.stdout)));
    assert_eq!(mill_names.len(), 1, "{mill_names:?}");
    let first_alloc = mill_names[0]
        .strip_prefix("alloc.mill.dev/")
        .unwrap()
        .to_string();
    assert!(first_alloc.starts_with("hello-1-"), "{first_alloc}");

    // logs: the tail, and -f following the running container.
    support::eventually(WITHIN, "five log lines", || {
        let address = address.clone();
        async move { (mill(&address, &["logs", "hello"]).await.lines().count() >= 5).then_some(()) }
    })
    .await;
    let tail = mill(&address, &["logs", "hello", "-n", "3"]).await;
    assert_eq!(tail.lines().count(), 3, "{tail}");
    assert!(tail.lines().all(|l| l.starts_with("tick ")), "{tail}");
    let (mut follow, mut follow_lines) = spawn(&address, &["logs", "hello", "-f", "-n", "1"]);
    let mut first_tick: Option<u64> = None;
    read_until(
        &mut follow_lines,
        "a tick written after the follow began",
        |line| {
            let n: Option<u64> = line.strip_prefix("tick ").and_then(|n| n.parse().ok());
            match (first_tick, n) {
                (None, Some(n)) => {
                    first_tick = Some(n);
                    false
                }
                (Some(first), Some(n)) => n >= first + 3,
                _ => false,
            }
        },
    )
    .await;
    follow.kill().await.ok();
    let all = mill(&address, &["logs", "--all", "-n", "2"]).await;
    assert_eq!(all.lines().count(), 2, "{all}");
    let prefix = format!("[{first_alloc}] tick ");
    assert!(all.lines().all(|l| l.starts_with(&prefix)), "{all}");

    // get -w lists, then prints the rollout's new alloc as it appears.
    let (mut watch, mut watch_lines) = spawn(&address, &["get", "allocs", "-w"]);
    let listed = read_until(&mut watch_lines, "the list", |line| {
        line.starts_with(&first_alloc)
    })
    .await;
    assert!(listed[0].starts_with("NAME "), "{listed:?}");
    std::fs::write(&file, config(&image, "v2")).unwrap();
    mill(&address, &["deploy", "-f", file_arg]).await;
    read_until(&mut watch_lines, "the new revision's alloc", |line| {
        line.starts_with("hello-2-")
    })
    .await;
    watch.kill().await.ok();

    // describe shows the rollout's history.
    let described = mill(&address, &["describe", "service", "hello"]).await;
    for expected in [
        "Name:         hello",
        "Kind:         Service",
        "Revisions:",
        "Rollout steps:",
        "scheduled",
        "healthy",
        "stopped",
        "hello-2-",
    ] {
        assert!(
            described.contains(expected),
            "no {expected:?} in:\n{described}"
        );
    }
    let revisions: Vec<&str> = described
        .lines()
        .skip_while(|l| !l.starts_with("Revisions:"))
        .skip(2)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(revisions.len(), 2, "two revisions:\n{described}");
    let alloc = mill(&address, &["describe", "alloc", &first_alloc]).await;
    assert!(
        alloc.contains("History:") && alloc.contains("created"),
        "{alloc}"
    );

    // A task run that ends: its duration is observed once, where it ran.
    let run_id = mill(
        &address,
        &["spawn", "--image", &image, "--", "/bin/sh", "-c", "sleep 1"],
    )
    .await;
    let run_id = run_id.trim().to_string();
    let run: Value = support::eventually(WITHIN, "the task run to end", || {
        let address = address.clone();
        let run_id = run_id.clone();
        async move {
            let ps: Value = serde_json::from_str(&mill(&address, &["--json", "ps"]).await).ok()?;
            let run = ps.as_array()?.iter().find(|r| r["id"] == run_id.as_str())?;
            (run["status"] == "stopped").then(|| run.clone())
        }
    })
    .await;
    let task = run["name"]
        .as_str()
        .expect("the run's task name")
        .to_string();
    let task_count = format!("namespace=\"default\",task=\"{task}\"");

    // /metrics: the running container's usage, by alloc; none for the alloc the rollout
    // stopped; the task run's duration; the store's apply latency.
    let alloc_of = |labels: &str| {
        labels
            .split(',')
            .find_map(|l| l.strip_prefix("alloc=\""))
            .map(|a| a.trim_end_matches('"').to_string())
            .unwrap_or_default()
    };
    let metrics = metrics_until(
        &node,
        "the new alloc's cpu and memory, the old one's gone, the task run's duration",
        |text| {
            let memory = samples(text, "mill_alloc_memory_bytes");
            let cpu = samples(text, "mill_alloc_cpu_usage");
            let current = |series: &[(String, f64)]| {
                series.iter().any(|(labels, _)| {
                    labels.contains("service=\"hello\"") && alloc_of(labels).starts_with("hello-2-")
                })
            };
            let old = memory
                .iter()
                .chain(&cpu)
                .any(|(labels, _)| alloc_of(labels) == first_alloc);
            let runs = samples(text, "mill_tasks_duration_seconds_count");
            current(&memory)
                && current(&cpu)
                && !old
                && runs.iter().any(|(l, n)| l == &task_count && *n >= 1.0)
        },
    )
    .await;
    for (labels, bytes) in samples(&metrics, "mill_alloc_memory_bytes") {
        assert!(bytes > 0.0, "no memory in use for {labels}:\n{metrics}");
    }
    for (labels, cores) in samples(&metrics, "mill_alloc_cpu_usage") {
        assert!(cores >= 0.0, "cpu usage {cores} of {labels}:\n{metrics}");
    }
    let took = samples(&metrics, "mill_tasks_duration_seconds_sum");
    assert!(
        // The agent's clock starts once `task start` has returned, when `sleep 1` may
        // already have run for a moment (0.9989 s seen in CI): most of a second, not all.
        took.iter().any(|(l, s)| l == &task_count && *s >= 0.9),
        "the run slept 1 s:\n{metrics}"
    );
    let applied = samples(&metrics, "mill_store_apply_seconds_count");
    assert!(
        applied.iter().any(|(_, n)| *n > 0.0),
        "no store apply latency:\n{metrics}"
    );

    // /metrics passes promtool and carries the figures of SPEC §8 and the store's.
    for family in [
        "mill_node_cpu_available{node=\"node-1\"}",
        "mill_node_memory_available_bytes{node=\"node-1\"}",
        "mill_alloc_restarts_total{",
        "mill_raft_term ",
        "mill_raft_commit_index ",
        "mill_raft_applied_index ",
        "mill_api_write_duration_seconds_bucket{",
        "mill_controller_reconciles_total ",
        "mill_store_apply_seconds_bucket{",
        "mill_tasks_duration_seconds_bucket{",
    ] {
        assert!(metrics.contains(family), "no {family} in:\n{metrics}");
    }
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics:\n{}{}\n--- metrics ---\n{metrics}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // delete.
    let deleted = mill(&address, &["delete", "svc", "hello"]).await;
    assert_eq!(deleted, "service.mill.dev/hello deleted\n");

    assert!(
        !node.log().contains(SECRET),
        "the daemon's log shows a secret value"
    );
}

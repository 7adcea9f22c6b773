//! Routing on every node of a 3-process cluster (no containers: the test writes Services
//! and Allocs the way the controllers and agents would): every node's DNS answers a
//! routing change, also a node that was down while the change happened and caught up by
//! installing a snapshot; and every node's routing barrier reports the revision of the
//! change as applied.

#[path = "cluster/harness.rs"]
#[allow(dead_code)]
mod harness;

use harness::{eventually, TOKEN};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One `mill` process with a DNS address of its own.
struct Node {
    data_dir: PathBuf,
    api: String,
    dns: SocketAddr,
    log: PathBuf,
    join: Option<String>,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) -> usize {
        let line = if self.join.is_some() {
            "Joined cluster"
        } else {
            "To join another node"
        };
        let before = self.log_text().matches(line).count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_mill"));
        command.arg("--data-dir").arg(&self.data_dir);
        match &self.join {
            None => command.args(["init", "--token", TOKEN]),
            Some(member) => command.args(["join", member, "--token", TOKEN]),
        };
        let http = format!("127.0.0.1:{}", free_port());
        command
            .args(["--advertise", "127.0.0.1", "--api-addr", &self.api])
            .args(["--dns-addr", &self.dns.to_string(), "--http-addr", &http])
            .args(["--containerd-socket", "/nonexistent/containerd.sock"])
            .env("MILL_ELECTION_TIMEOUT_MS", "500")
            .env("MILL_RUN_CONTROLLERS", "0")
            .env("MILL_SNAPSHOT_THRESHOLD", "50")
            .env("MILL_SNAPSHOT_LOG_KEEP", "10")
            // The state machine says when it installs a snapshot.
            .env("RUST_LOG", "warn,mill::store::state_machine=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(command.spawn().expect("mill starts"));
        before
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn start(&mut self) {
        let before = self.spawn();
        let line = if self.join.is_some() {
            "Joined cluster"
        } else {
            "To join another node"
        };
        eventually(WITHIN, &format!("{} to serve", self.api), || async {
            (self.log_text().matches(line).count() > before).then_some(())
        })
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.api, self.log_text());
        }
    }
}

async fn send(request: reqwest::RequestBuilder, body: &Value) -> Value {
    let answer = request.bearer_auth(TOKEN).json(body).send().await.unwrap();
    let status = answer.status();
    let text = answer.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Creates a healthy (or draining) alloc of `web` on node-1; returns its resourceVersion.
async fn alloc(http: &reqwest::Client, node: &Node, name: &str, port: u16) -> u64 {
    let base = node.url("/apis/mill.dev/v1/namespaces/default/allocs");
    let object = json!({
        "apiVersion": "mill.dev/v1", "kind": "Alloc",
        "metadata": {"name": name, "labels": {"mill.dev/owner": "web"}},
        "spec": {
            "owner": {"kind": "service", "name": "web"}, "service": "web", "revision": 1,
            "template": {"image": "busybox", "cpu": 0.1, "memory": "32M", "port": 8080},
            "nodeName": "node-1", "hostPort": port,
        },
    });
    send(http.post(&base), &object).await;
    let status = json!({"status": {"phase": "healthy", "address": format!("127.0.0.1:{port}")}});
    let written = send(
        http.patch(format!("{base}/{name}/status"))
            .header("content-type", "application/merge-patch+json"),
        &status,
    )
    .await;
    rv(&written)
}

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The SRV targets `web.mill` answers on `dns` (empty if nothing answers).
async fn srv(dns: SocketAddr) -> BTreeSet<String> {
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii("web.mill.").unwrap(),
        RecordType::SRV,
    ));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&query.to_vec().unwrap(), dns).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buffer)).await
    else {
        return BTreeSet::new();
    };
    Message::from_vec(&buffer[..n])
        .unwrap()
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.target.to_ascii()),
            _ => None,
        })
        .collect()
}

/// What node's routing barrier says it applied, waiting for `revision`.
async fn applied(http: &reqwest::Client, node: &Node, revision: u64) -> Option<u64> {
    let answer = http
        .get(node.url("/internal/routing/applied"))
        .query(&[("revision", revision), ("timeoutMs", 2000)])
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    let body: Value = answer.json().await.ok()?;
    body["applied"].as_u64()
}

fn targets(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| format!("{n}.mill.")).collect()
}

/// Three nodes (one `init`, two `join`) with data and logs under `dir`.
async fn start_cluster(dir: &std::path::Path) -> Vec<Node> {
    let n = free_port();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3u8 {
        let api = format!("127.0.0.1:{}", free_port());
        let node = Node {
            data_dir: dir.join(format!("node-{i}")),
            dns: SocketAddr::from(([127, 54, (n >> 8) as u8, (n as u8 & 0xf0) | (i + 1)], 53)),
            log: dir.join(format!("node-{i}.log")),
            join: (i > 0).then(|| nodes[0].api.clone()),
            api,
            child: None,
        };
        nodes.push(node);
        nodes.last_mut().unwrap().start().await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread")]
async fn every_node_routes_a_change_also_one_that_caught_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path()).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let services = nodes[0].url("/apis/mill.dev/v1/namespaces/default/services");
    let service = json!({
        "apiVersion": "mill.dev/v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"image": "busybox", "port": 8080},
    });
    send(http.post(&services), &service).await;
    let first = alloc(&http, &nodes[0], "web-1-1", 20_001).await;
    for node in &nodes {
        eventually(
            WITHIN,
            &format!("SRV of web-1-1 on {}", node.dns),
            || async { (srv(node.dns).await == targets(&["web-1-1"])).then_some(()) },
        )
        .await;
        let seen = applied(&http, node, first).await.unwrap();
        assert!(seen >= first, "{} applied {seen} < {first}", node.api);
    }

    // Node 3 is down while the routing changes and the log moves past the snapshot
    // threshold twice over: it must catch up by installing a snapshot.
    nodes[2].kill();
    alloc(&http, &nodes[0], "web-1-2", 20_002).await;
    let drained = send(
        http.patch(nodes[0].url("/apis/mill.dev/v1/namespaces/default/allocs/web-1-1"))
            .header("content-type", "application/merge-patch+json"),
        &json!({"spec": {"draining": true}}),
    )
    .await;
    let change = rv(&drained);
    let tasks = nodes[0].url("/apis/mill.dev/v1/namespaces/default/tasks");
    let mut last = change;
    for i in 0..120 {
        let task = json!({
            "apiVersion": "mill.dev/v1", "kind": "Task",
            "metadata": {"name": format!("filler-{i}")},
            "spec": {"image": "busybox"},
        });
        last = rv(&send(http.post(&tasks), &task).await);
    }
    for node in &nodes[..2] {
        eventually(
            WITHIN,
            &format!("SRV of web-1-2 only on {}", node.dns),
            || async { (srv(node.dns).await == targets(&["web-1-2"])).then_some(()) },
        )
        .await;
    }
    nodes[2].start().await;
    let lagger = &nodes[2];
    eventually(
        WITHIN,
        "SRV of web-1-2 only on the node that caught up",
        || async { (srv(lagger.dns).await == targets(&["web-1-2"])).then_some(()) },
    )
    .await;
    let seen = eventually(WITHIN, "the caught-up node's barrier", || async {
        applied(&http, lagger, last).await.filter(|a| *a >= last)
    })
    .await;
    assert!(seen >= change);
    assert!(
        lagger.log_text().contains("installed a snapshot"),
        "the restarted node caught up by log, not by snapshot: the test proves nothing"
    );
}

/// Waits (long-polling) until `node`'s routing barrier says `revision` is applied.
async fn barrier_reached(http: &reqwest::Client, node: &Node, revision: u64) {
    eventually(
        WITHIN,
        &format!("{}'s barrier to apply {revision}", node.api),
        || async {
            applied(http, node, revision)
                .await
                .filter(|a| *a >= revision)
        },
    )
    .await;
}

/// Once a node's barrier says a revision is applied, its DNS already answers it: asked
/// once right after the barrier, never polled. On all three nodes, for a run of routing
/// changes, and again on the node that was down and caught up by installing a snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_barrier_applied_a_change_answers_it_in_dns_also_after_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path()).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let services = nodes[0].url("/apis/mill.dev/v1/namespaces/default/services");
    let service = json!({
        "apiVersion": "mill.dev/v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"image": "busybox", "port": 8080},
    });
    send(http.post(&services), &service).await;
    let allocs = nodes[0].url("/apis/mill.dev/v1/namespaces/default/allocs");
    let drain = |name: String| {
        let request = http
            .patch(format!("{allocs}/{name}"))
            .header("content-type", "application/merge-patch+json");
        async move { rv(&send(request, &json!({"spec": {"draining": true}})).await) }
    };
    // Each change through a different node (writes on followers are forwarded).
    let mut routed: Vec<String> = Vec::new();
    for i in 1..=6u16 {
        let via = &nodes[usize::from(i) % 3];
        let name = format!("web-1-{i}");
        let mut change = alloc(&http, via, &name, 20_000 + i).await;
        routed.push(name);
        if i % 2 == 0 {
            // Every other change also takes the oldest alloc out of routing.
            change = drain(routed.remove(0)).await;
        }
        let names: Vec<&str> = routed.iter().map(String::as_str).collect();
        for node in &nodes {
            barrier_reached(&http, node, change).await;
            assert_eq!(
                srv(node.dns).await,
                targets(&names),
                "{} applied {change} but its DNS does not answer it",
                node.api
            );
        }
    }

    // Node 3 misses a change and catches up past two snapshots' worth of log.
    nodes[2].kill();
    alloc(&http, &nodes[0], "web-1-7", 20_007).await;
    routed.push("web-1-7".into());
    let change = drain(routed.remove(0)).await;
    let tasks = nodes[0].url("/apis/mill.dev/v1/namespaces/default/tasks");
    let mut last = change;
    for i in 0..120 {
        let task = json!({
            "apiVersion": "mill.dev/v1", "kind": "Task",
            "metadata": {"name": format!("filler-{i}")},
            "spec": {"image": "busybox"},
        });
        last = rv(&send(http.post(&tasks), &task).await);
    }
    nodes[2].start().await;
    let names: Vec<&str> = routed.iter().map(String::as_str).collect();
    for node in &nodes {
        barrier_reached(&http, node, last).await;
        assert_eq!(
            srv(node.dns).await,
            targets(&names),
            "{} applied {last} (after {change}) but its DNS does not answer it",
            node.api
        );
    }
    assert!(
        nodes[2].log_text().contains("installed a snapshot"),
        "the restarted node caught up by log, not by snapshot: the test proves nothing"
    );
    // ...and it keeps following changes after the install.
    let change = drain(routed.remove(0)).await;
    let names: Vec<&str> = routed.iter().map(String::as_str).collect();
    for node in &nodes {
        barrier_reached(&http, node, change).await;
        assert_eq!(
            srv(node.dns).await,
            targets(&names),
            "{} applied {change} but its DNS does not answer it",
            node.api
        );
    }
}

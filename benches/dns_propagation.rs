//! DNS propagation: how long after a routing change is written every node's DNS answers
//! it. Three `mill` processes on loopback (controllers off, no containerd: the bench
//! writes the Alloc and its status the way the scheduler and the agent would), each with
//! a DNS address of its own. One change = an alloc of `web` becoming healthy (it joins
//! `web.mill`'s SRV answer) or being drained (it leaves it); writes go to node 2 or 3,
//! round-robin. Per change, one poller per node asks its DNS for `web.mill SRV` every
//! [`POLL`] until the answer shows the change; the latency is from the moment the write
//! was sent (and, second figure, from the moment the API answered it, i.e. the store
//! committed it). Halfway through, node 3 is stopped, the log moves past two snapshot
//! thresholds, and node 3 restarts and catches up by installing a snapshot; its figures
//! after that are reported on their own line. Prints p50/p99/max per node against the
//! issue's 100 ms bound. Run with `cargo bench --bench dns_propagation` (`CHANGES=N`
//! changes per half, default 100).

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "dns-propagation-bench-token-0123";
/// How often a poller asks its node's DNS while it waits for a change.
const POLL: Duration = Duration::from_millis(1);
/// A change not seen by then is reported as a failure, not measured.
const GIVE_UP: Duration = Duration::from_secs(10);
/// The bound.
const BOUND: Duration = Duration::from_millis(100);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

struct Node {
    data_dir: PathBuf,
    api: String,
    dns: SocketAddr,
    log: PathBuf,
    join: Option<String>,
    child: Option<Child>,
}

impl Node {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ready_line(&self) -> &'static str {
        if self.join.is_some() {
            "Joined cluster"
        } else {
            "To join another node"
        }
    }

    async fn start(&mut self) {
        let before = self.log_text().matches(self.ready_line()).count();
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
            .env("MILL_RUN_CONTROLLERS", "0")
            .env("MILL_SNAPSHOT_THRESHOLD", "50")
            .env("MILL_SNAPSHOT_LOG_KEEP", "10")
            .env("RUST_LOG", "warn,mill::store::state_machine=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(command.spawn().expect("mill starts"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log_text().matches(self.ready_line()).count() <= before {
            assert!(
                Instant::now() < deadline,
                "mill on {} did not serve within 60s:\n{}",
                self.api,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    }
}

async fn send(request: reqwest::RequestBuilder, body: &Value) -> Value {
    let answer = request.bearer_auth(TOKEN).json(body).send().await.unwrap();
    let status = answer.status();
    let text = answer.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// The SRV targets `web.mill` answers on `dns` (`None` when nothing answered in time).
async fn srv(socket: &tokio::net::UdpSocket, dns: SocketAddr) -> Option<BTreeSet<String>> {
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii("web.mill.").unwrap(),
        RecordType::SRV,
    ));
    let id = query.metadata.id;
    socket.send_to(&query.to_vec().unwrap(), dns).await.ok()?;
    let mut buffer = vec![0u8; 4096];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buffer))
            .await
            .ok()?
            .ok()?;
        let Ok(answer) = Message::from_vec(&buffer[..n]) else {
            continue;
        };
        if answer.metadata.id != id {
            continue; // a late answer to an earlier query
        }
        return Some(
            answer
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(srv.target.to_ascii()),
                    _ => None,
                })
                .collect(),
        );
    }
}

/// Polls `dns` until `web.mill SRV` contains `target` (`present`) or lacks it; the
/// moment it saw so.
async fn seen(dns: SocketAddr, target: String, present: bool) -> Option<Instant> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let deadline = Instant::now() + GIVE_UP;
    while Instant::now() < deadline {
        if let Some(targets) = srv(&socket, dns).await {
            if targets.contains(&target) == present {
                return Some(Instant::now());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// Latencies of one node (or one node after its snapshot install).
#[derive(Default)]
struct Series {
    from_sent: Vec<Duration>,
    from_committed: Vec<Duration>,
    missed: usize,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

impl Series {
    fn row(&self, label: &str) -> String {
        let mut sent = self.from_sent.clone();
        sent.sort();
        let mut committed = self.from_committed.clone();
        committed.sort();
        let within = sent.iter().filter(|d| **d <= BOUND).count();
        format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {}/{} | {} |",
            sent.len(),
            ms(quantile(&sent, 0.5)),
            ms(quantile(&sent, 0.99)),
            ms(sent.last().copied().unwrap_or_default()),
            ms(quantile(&committed, 0.5)),
            ms(quantile(&committed, 0.99)),
            within,
            sent.len(),
            self.missed
        )
    }
}

/// One measured change: `write` is sent to `via`; every node in `watch` is polled until its
/// DNS shows `target` `present` (or not); latencies go to `series[i]`.
async fn measure(
    nodes: &[Node],
    series: &mut [Series],
    request: reqwest::RequestBuilder,
    body: Value,
    target: &str,
    present: bool,
) {
    let pollers: Vec<_> = nodes
        .iter()
        .map(|n| tokio::spawn(seen(n.dns, format!("{target}.mill."), present)))
        .collect();
    let sent = Instant::now();
    send(request, &body).await;
    let committed = Instant::now();
    for (i, poller) in pollers.into_iter().enumerate() {
        match poller.await.unwrap() {
            Some(at) => {
                series[i].from_sent.push(at.saturating_duration_since(sent));
                series[i]
                    .from_committed
                    .push(at.saturating_duration_since(committed));
            }
            None => series[i].missed += 1,
        }
    }
}

/// `changes` changes: alloc `web-1-K` made healthy (joins the SRV answer), then drained
/// (leaves it), each write through a follower in turn.
async fn run(
    http: &reqwest::Client,
    nodes: &[Node],
    series: &mut [Series],
    first: u32,
    changes: u32,
) {
    let mut via = 1;
    for k in first..first + changes / 2 {
        let name = format!("web-1-{k}");
        let port = 20_000 + k;
        let base = |n: &Node| n.url("/apis/mill.dev/v1/namespaces/default/allocs");
        let object = json!({
            "apiVersion": "mill.dev/v1", "kind": "Alloc",
            "metadata": {"name": name, "labels": {"mill.dev/owner": "web"}},
            "spec": {
                "owner": {"kind": "service", "name": "web"}, "service": "web", "revision": 1,
                "template": {"image": "busybox", "cpu": 0.1, "memory": "32M", "port": 8080},
                "nodeName": "node-1", "hostPort": port,
            },
        });
        // Not routed yet: no status.
        send(http.post(base(&nodes[0])), &object).await;
        via = via % (nodes.len() - 1) + 1;
        let healthy =
            json!({"status": {"phase": "healthy", "address": format!("127.0.0.1:{port}")}});
        let request = http
            .patch(format!("{}/{name}/status", base(&nodes[via])))
            .header("content-type", "application/merge-patch+json");
        measure(nodes, series, request, healthy, &name, true).await;
        via = via % (nodes.len() - 1) + 1;
        let request = http
            .patch(format!("{}/{name}", base(&nodes[via])))
            .header("content-type", "application/merge-patch+json");
        let draining = json!({"spec": {"draining": true}});
        measure(nodes, series, request, draining, &name, false).await;
    }
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let changes: u32 = std::env::var("CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let n = free_port();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3u8 {
        let node = Node {
            data_dir: dir.path().join(format!("node-{i}")),
            api: format!("127.0.0.1:{}", free_port()),
            dns: SocketAddr::from(([127, 55, (n >> 8) as u8, (n as u8 & 0xf0) | (i + 1)], 53)),
            log: dir.path().join(format!("node-{i}.log")),
            join: (i > 0).then(|| nodes[0].api.clone()),
            child: None,
        };
        nodes.push(node);
        nodes.last_mut().unwrap().start().await;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let service = json!({
        "apiVersion": "mill.dev/v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"image": "busybox", "port": 8080},
    });
    send(
        http.post(nodes[0].url("/apis/mill.dev/v1/namespaces/default/services")),
        &service,
    )
    .await;

    println!(
        "DNS propagation, 3 mill processes on loopback, {changes} changes per half, load {}",
        uptime()
    );
    let mut before: Vec<Series> = (0..3).map(|_| Series::default()).collect();
    run(&http, &nodes, &mut before, 1, changes).await;

    // Node 3 misses writes past two snapshot thresholds, then catches up by snapshot.
    nodes[2].kill();
    let tasks = nodes[0].url("/apis/mill.dev/v1/namespaces/default/tasks");
    for i in 0..120 {
        let task = json!({
            "apiVersion": "mill.dev/v1", "kind": "Task",
            "metadata": {"name": format!("filler-{i}")},
            "spec": {"image": "busybox"},
        });
        send(http.post(&tasks), &task).await;
    }
    nodes[2].start().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !nodes[2].log_text().contains("installed a snapshot") {
        assert!(
            Instant::now() < deadline,
            "node 3 did not install a snapshot within 60s:\n{}",
            nodes[2].log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its DNS answers the state it installed before the measured changes start.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mine = srv(&socket, nodes[2].dns).await;
        if mine.is_some() && mine == srv(&socket, nodes[0].dns).await {
            break;
        }
        assert!(Instant::now() < deadline, "node 3's DNS did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut after: Vec<Series> = (0..3).map(|_| Series::default()).collect();
    run(&http, &nodes, &mut after, 1 + changes, changes).await;

    println!(
        "| node | changes | p50 from write sent (ms) | p99 | max | p50 from write answered (ms) | p99 | within {} ms | missed |",
        BOUND.as_millis()
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let names = ["node-1 (init)", "node-2", "node-3"];
    for (i, s) in before.iter().enumerate() {
        println!("{}", s.row(names[i]));
    }
    let after_names = [
        "node-1 (init), second half",
        "node-2, second half",
        "node-3 after its snapshot install",
    ];
    for (i, s) in after.iter().enumerate() {
        println!("{}", s.row(after_names[i]));
    }
    println!("load after the run: {}", uptime());
}

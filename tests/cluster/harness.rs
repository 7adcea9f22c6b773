//! Real `mill` processes on loopback: start, kill -9, restart, talk to their API.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "cluster-test-token";
/// The election timeout the test clusters run with (`MILL_ELECTION_TIMEOUT_MS`).
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(500);

/// Polls `check` until it returns `Some`, failing the test with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One `mill` node process.
pub struct Node {
    pub data_dir: PathBuf,
    pub port: u16,
    log: PathBuf,
    child: std::sync::Mutex<Option<Child>>,
    /// Extra environment (`MILL_*` knobs) every start of this node gets.
    env: Vec<(String, String)>,
    /// The member it joined through (`None` for the init node).
    join: Option<String>,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    fn spawn(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("node log file");
        // Benches compare two builds back to back with `MILL_BENCH_BINARY=/path/to/mill`.
        let binary = std::env::var_os("MILL_BENCH_BINARY")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mill")), PathBuf::from);
        let mut cmd = Command::new(binary);
        cmd.arg("--data-dir").arg(&self.data_dir);
        match &self.join {
            None => cmd.args(["init", "--token", TOKEN]),
            Some(member) => cmd.args(["join", member, "--token", TOKEN]),
        };
        cmd.args(["--advertise", "127.0.0.1", "--api-addr", &self.addr()])
            .env(
                "MILL_ELECTION_TIMEOUT_MS",
                ELECTION_TIMEOUT.as_millis().to_string(),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        *self.child.lock().unwrap() = Some(cmd.spawn().expect("spawn mill"));
    }

    /// The node's log so far (stdout and stderr of every run).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the node printed `line` (counting from the `nth` occurrence).
    async fn wait_for_line(&self, line: &str, nth: usize) {
        eventually(
            Duration::from_secs(60),
            &format!("{line:?} from {}", self.addr()),
            || async { (self.log().matches(line).count() >= nth).then_some(()) },
        )
        .await;
    }

    /// SIGKILL, no cleanup.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.lock().unwrap().is_some()
    }

    fn ready_line(&self) -> &'static str {
        if self.join.is_none() {
            "To join another node"
        } else {
            "Joined cluster"
        }
    }

    /// Starts the node again from its data dir without waiting for it to serve (a lone
    /// node of a stopped cluster cannot finish starting until a quorum is up).
    /// Returns a token for [`Node::wait_ready`].
    pub fn start(&self) -> usize {
        assert!(!self.is_running(), "start of a running node");
        let before = self.log().matches(self.ready_line()).count();
        self.spawn();
        before
    }

    /// Waits until the start that returned `token` serves.
    pub async fn wait_ready(&self, token: usize) {
        self.wait_for_line(self.ready_line(), token + 1).await;
    }

    /// Starts the node again from its data dir and waits until it serves.
    pub async fn restart(&self) {
        let token = self.start();
        self.wait_ready(token).await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of `mill` processes sharing one temp dir.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `size` nodes: one `init`, the rest `join` it, every one with `env`.
    pub async fn start(size: usize, env: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            _dir: dir,
        };
        for i in 0..size {
            let base = cluster._dir.path();
            let node = Node {
                data_dir: base.join(format!("node-{}", i + 1)),
                port: free_port(),
                log: base.join(format!("node-{}.log", i + 1)),
                child: std::sync::Mutex::new(None),
                env: env.clone(),
                join: (i > 0).then(|| cluster.nodes[0].addr()),
            };
            node.restart().await;
            cluster.nodes.push(node);
        }
        cluster
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The index of the node that is leader now, asked of the running nodes.
    pub async fn leader(&self) -> Option<usize> {
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let Ok(resp) = self
                .http
                .get(node.url("/internal/node/info"))
                .bearer_auth(TOKEN)
                .send()
                .await
            else {
                continue;
            };
            let Ok(info) = resp.json::<Value>().await else {
                continue;
            };
            if info["role"] == "Leader" {
                return self.nodes.iter().position(|n| n.port == node.port);
            }
        }
        None
    }

    /// Creates (or, with `rv`, updates) a Task named `name` through node `i`.
    pub async fn put_task(
        &self,
        i: usize,
        name: &str,
        image: &str,
        rv: Option<&str>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut object = task(name, image);
        let base = "/apis/mill.dev/v1/namespaces/default/tasks";
        let request = match rv {
            None => self.http.post(self.nodes[i].url(base)),
            Some(rv) => {
                object["metadata"]["resourceVersion"] = json!(rv);
                self.http.put(self.nodes[i].url(&format!("{base}/{name}")))
            }
        };
        request.bearer_auth(TOKEN).json(&object).send().await
    }

    /// The names and images of all Tasks, as node `i` lists them (linearizable list).
    pub async fn list_tasks(&self, i: usize) -> Option<Vec<(String, String)>> {
        let url = self.nodes[i].url("/apis/mill.dev/v1/namespaces/default/tasks");
        let resp = self.http.get(url).bearer_auth(TOKEN).send().await.ok()?;
        resp.status().is_success().then_some(())?;
        let list: Value = resp.json().await.ok()?;
        let mut items: Vec<(String, String)> = list["items"]
            .as_array()?
            .iter()
            .map(|s| {
                (
                    s["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    s["spec"]["image"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        items.sort();
        Some(items)
    }
}

/// A minimal Task object: the tests' register. (Services would be touched by the
/// controllers running on the leader; a task template is only read when spawned.)
pub fn task(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "mill.dev/v1",
        "kind": "Task",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"image": image},
    })
}

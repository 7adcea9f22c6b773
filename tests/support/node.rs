//! A real `mill init` process on loopback whose agent runs on a [`Containerd`] in a
//! containerd namespace of its own; and helpers to create Allocs the way the scheduler
//! will (nodeName and hostPort set) and watch their status.

use super::containerd::Containerd;
use super::eventually;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use mill_crds::{Alloc, AllocPhase, AllocStatus};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The `mill` binary nodes run: `MILL_BENCH_BINARY` if set (a bench comparing two
/// builds in one run), else the one cargo built.
fn binary() -> PathBuf {
    std::env::var_os("MILL_BENCH_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mill")))
}

/// The cluster token of every test node.
pub const TOKEN: &str = "e2e-test-token-0123456789";
/// How long a node may take to serve.
const READY: Duration = Duration::from_secs(60);

/// A `mill init` node.
pub struct MillNode {
    /// `127.0.0.1:PORT` of its API.
    pub addr: String,
    /// Its containerd namespace.
    pub namespace: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    dir: tempfile::TempDir,
    socket: PathBuf,
    env: Vec<(String, String)>,
    child: Mutex<Option<Child>>,
}

impl MillNode {
    /// Starts a node on `ctd` with extra `MILL_*` environment and waits until it serves.
    pub async fn start(ctd: &Containerd, env: &[(&str, &str)]) -> MillNode {
        Self::start_on(&ctd.socket, env).await
    }

    /// Starts a node whose agent uses `socket` (which may not exist).
    pub async fn start_on(socket: &Path, env: &[(&str, &str)]) -> MillNode {
        let dir = tempfile::tempdir().unwrap();
        let node = MillNode {
            addr: format!("127.0.0.1:{}", super::free_port()),
            namespace: super::unique("e2e"),
            data_dir: dir.path().join("data"),
            socket: socket.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
            child: Mutex::new(None),
        };
        node.spawn();
        node.wait_ready().await;
        node
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mill.log")
    }

    /// Everything the node printed, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(binary())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["init", "--token", TOKEN, "--advertise", "127.0.0.1"])
            .args(["--api-addr", &self.addr])
            .arg("--containerd-socket")
            .arg(&self.socket)
            .args(["--containerd-namespace", &self.namespace])
            .env("MILL_ELECTION_TIMEOUT_MS", "500")
            .env("MILL_HEARTBEAT_INTERVAL_MS", "500")
            .env("MILL_AGENT_RESYNC_MS", "1000")
            .env("MILL_CONTAINERD_RETRY_MS", "500")
            // The tests place allocs themselves, as the scheduler will; the controllers
            // would stop allocs whose Service they do not know. A test may turn them on.
            .env("MILL_RUN_CONTROLLERS", "0")
            .env("RUST_LOG", "info,openraft=error")
            // After the defaults: a test's or bench's own values (RUST_LOG too) win.
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mill starts");
        *self.child.lock().unwrap() = Some(child);
    }

    async fn wait_ready(&self) {
        let runs = self.log().matches("To join another node").count();
        eventually(
            READY,
            &format!("mill on {} to serve", self.addr),
            || async { (self.log().matches("To join another node").count() > runs).then_some(()) },
        )
        .await;
    }

    /// `kill -9` the mill process (its containers keep running).
    pub fn kill9(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts the process again on the same data dir and waits until it serves.
    pub async fn restart(&self) {
        self.kill9();
        self.spawn();
        self.wait_ready().await;
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A kube client of the node's API (plain HTTP, the token).
    pub fn client(&self) -> kube::Client {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: mill\n  cluster:\n    server: http://{}\nusers:\n- name: mill\n  user:\n    token: {TOKEN}\ncontexts:\n- name: mill\n  context: {{cluster: mill, user: mill, namespace: default}}\ncurrent-context: mill\n",
            self.addr
        );
        let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_str(&text).unwrap();
        let config = futures::executor::block_on(kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &Default::default(),
        ))
        .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Allocs in `default`.
    pub fn allocs(&self) -> Api<Alloc> {
        Api::namespaced(self.client(), "default")
    }

    /// Runs `mill image load ARCHIVE` against this node; asserts it succeeded.
    pub fn load_image(&self, archive: &Path) {
        let out = Command::new(env!("CARGO_BIN_EXE_mill"))
            .args([
                "--address",
                &self.url(""),
                "--token",
                TOKEN,
                "image",
                "load",
            ])
            .arg(archive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mill image load failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates an alloc on this node (`node-1`) as the scheduler would place it.
    pub async fn create_alloc(&self, name: &str, spec: serde_json::Value) -> Alloc {
        let mut spec = spec;
        spec["nodeName"] = json!("node-1");
        let alloc: Alloc = serde_json::from_value(json!({
            "apiVersion": "mill.dev/v1",
            "kind": "Alloc",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }))
        .expect("a valid Alloc");
        self.allocs()
            .create(&PostParams::default(), &alloc)
            .await
            .expect("alloc created")
    }

    /// Asks for the alloc to be stopped (`desiredState: Stopped`), as the controllers do.
    #[allow(dead_code)] // not every test binary that includes `support` stops allocs
    pub async fn stop_alloc(&self, name: &str) {
        self.allocs()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"desiredState": "Stopped"}})),
            )
            .await
            .expect("desiredState: Stopped");
    }

    /// Deletes an alloc.
    pub async fn delete_alloc(&self, name: &str) {
        self.allocs()
            .delete(name, &DeleteParams::default())
            .await
            .expect("alloc deleted");
    }

    /// Waits until the alloc's status satisfies `check`; returns it.
    pub async fn wait_status(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        check: impl Fn(&AllocStatus) -> bool,
    ) -> AllocStatus {
        let api = self.allocs();
        let deadline = std::time::Instant::now() + within;
        let mut last = None;
        loop {
            if let Ok(alloc) = api.get(name).await {
                if let Some(status) = alloc.status {
                    if check(&status) {
                        return status;
                    }
                    last = Some(status);
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {within:?} waiting for alloc {name}: {what}; last status: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for `phase`.
    pub async fn wait_phase(&self, name: &str, phase: AllocPhase, within: Duration) -> AllocStatus {
        self.wait_status(name, within, &format!("phase {phase:?}"), |s| {
            s.phase == phase
        })
        .await
    }
}

impl Drop for MillNode {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("--- last lines of mill on {} ---\n{tail}", self.addr);
        }
    }
}

/// The spec of a service alloc (cpu 0.5, 64M) running `image` on `port`.
pub fn service_spec(image: &str, port: u16) -> serde_json::Value {
    json!({
        "owner": {"kind": "service", "name": "web"},
        "service": "web",
        "template": {"image": image, "cpu": 0.5, "memory": "64M"},
        "hostPort": port,
    })
}

/// The spec of a task alloc running `image` on `port`.
pub fn task_spec(image: &str, port: u16) -> serde_json::Value {
    json!({
        "owner": {"kind": "task", "name": "job"},
        "template": {"image": image, "cpu": 0.25, "memory": "64M"},
        "hostPort": port,
    })
}

/// GET `http://127.0.0.1:PORT{path}`: the status and body, or `None` if nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

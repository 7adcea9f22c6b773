//! A 3-node mill cluster on test hosts: one private containerd, a registry on the bridge,
//! and one real `mill` process per network namespace ([`super::hosts`]), each with its
//! own containerd namespace and `MILL_NETNS_PATH`, so its containers live in its host.
//! The test talks to the nodes' APIs over the bridge.

use super::hosts::{Host, Network};
use super::support::containerd::Containerd;
use super::support::registry::Registry;
use super::support::{eventually, images};
use kube::api::{Api, ListParams};
use mill_crds::{Alloc, AllocPhase, Deploy, Node as NodeObject, NodeState, Service};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cluster token of every e2e node.
pub const TOKEN: &str = "e2e-cluster-token-0123456789";
/// Generous bound for anything container-related on a loaded 2-core CI machine.
pub const WITHIN: Duration = Duration::from_secs(120);
/// The heartbeat timeout of the tests that lose a host on purpose ([`FAST_LOSS`]).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// The knob those tests start their cluster with.
pub const FAST_LOSS: (&str, &str) = ("MILL_HEARTBEAT_TIMEOUT_MS", "3000");

/// The knobs every node runs with: short heartbeats, ticks and stop grace keep the tests
/// fast; a test may override any of them.
const KNOBS: &[(&str, &str)] = &[
    // mill's default: at 500 ms, leadership flapped when two clusters shared 2 busy cores.
    ("MILL_ELECTION_TIMEOUT_MS", "1000"),
    ("MILL_HEARTBEAT_INTERVAL_MS", "500"),
    // Long: with two e2e clusters and the rest of the suite on 2 cores, a debug-build node
    // can miss its heartbeats for seconds; a node lost that way mid-test has its replicas
    // moved (CI saw a 3-replica service end up on 2 nodes). Tests that lose a host on
    // purpose use FAST_LOSS.
    ("MILL_HEARTBEAT_TIMEOUT_MS", "15000"),
    ("MILL_WATCHDOG_TICK_MS", "200"),
    ("MILL_AGENT_RESYNC_MS", "1000"),
    ("MILL_CONTAINERD_RETRY_MS", "500"),
    // busybox httpd as PID 1 ignores SIGTERM: keep old instances' stops short.
    ("MILL_STOP_GRACE_MS", "1000"),
    ("MILL_DRAIN_GRACE_MS", "200"),
    ("MILL_RESTART_BACKOFF_MS", "200,500,1000"),
];

/// One `mill` process in its test host.
pub struct Node {
    pub host: Host,
    /// Its containerd namespace.
    pub namespace: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    /// `None` for the init node, else the member it joins through.
    join: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Mutex<Option<Child>>,
}

impl Node {
    /// `IP:4400`.
    pub fn addr(&self) -> String {
        format!("{}:4400", self.host.ip)
    }

    /// `http://IP:4400{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// Everything it printed, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ready_line(&self) -> &'static str {
        match self.join {
            None => "To join another node",
            Some(_) => "Joined cluster",
        }
    }

    fn spawn(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("node log file");
        // nsenter --net: only the network is the host's (`ip netns exec` would also
        // remount /sys and hide the cgroup files the agent reads).
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.host.netns_path()))
            .arg(env!("CARGO_BIN_EXE_mill"))
            .arg("--data-dir")
            .arg(&self.data_dir);
        match &self.join {
            None => cmd.args(["init", "--token", TOKEN]),
            Some(member) => cmd.args(["join", member, "--token", TOKEN]),
        };
        cmd.args(["--advertise", &self.host.ip, "--api-addr", &self.addr()])
            .args(&self.args)
            .env("MILL_NETNS_PATH", self.host.netns_path())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // MILL_E2E_RUST_LOG (the test's own environment) sets the nodes' filter, e.g.
            // `info,openraft=error,mill::timeline=debug` to see every controller write.
            .env(
                "RUST_LOG",
                std::env::var("MILL_E2E_RUST_LOG").unwrap_or_else(|_| "info,openraft=error".into()),
            )
            .env_remove("MILL_ADDRESS")
            .env_remove("MILL_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        *self.child.lock().unwrap() = Some(cmd.spawn().expect("nsenter ... mill starts"));
    }

    /// Starts the process (again) without waiting; the token is for [`Node::wait_ready`].
    pub fn start(&self) -> usize {
        assert!(!self.is_running(), "start of a running node");
        let before = self.log().matches(self.ready_line()).count();
        self.spawn();
        before
    }

    /// Waits until the start that returned `token` serves.
    pub async fn wait_ready(&self, token: usize) {
        let line = self.ready_line();
        eventually(
            WITHIN,
            &format!("{line:?} from mill on {}", self.addr()),
            || async { (self.log().matches(line).count() > token).then_some(()) },
        )
        .await;
    }

    /// Starts the process again on its data dir and waits until it serves.
    pub async fn restart(&self) {
        let token = self.start();
        self.wait_ready(token).await;
    }

    /// `kill -9` the mill process (its containers keep running).
    pub fn kill9(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.lock().unwrap().is_some()
    }

    /// A kube client of this node's API (plain HTTP over the bridge, the token).
    pub async fn client(&self) -> kube::Client {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: mill\n  cluster:\n    server: {}\nusers:\n- name: mill\n  user:\n    token: {TOKEN}\ncontexts:\n- name: mill\n  context: {{cluster: mill, user: mill, namespace: default}}\ncurrent-context: mill\n",
            self.url("")
        );
        let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_str(&text).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("--- last lines of mill on {} ---\n{tail}", self.addr());
        }
    }
}

/// The images every cluster has in its registry.
pub struct Images {
    /// busybox httpd on `$PORT` with `/health` (tags v1, v2, v3: same content).
    pub v1: String,
    pub v2: String,
    pub v3: String,
    /// Exits 3 at once: a crash loop as a service, a failed run as a task.
    pub crash: String,
    /// httpd whose `/health` is 404.
    pub sick: String,
    /// A reference the registry does not have.
    pub missing: String,
}

/// What a POST /v1/deploy answered.
#[derive(Debug)]
pub struct DeployRun {
    pub status: u16,
    /// The Deploy object's name (`x-mill-deploy`).
    pub name: Option<String>,
    /// The body of a non-200 answer.
    pub body: String,
    /// `(event, data)` of the SSE stream, up to and including `done`.
    pub events: Vec<(String, Value)>,
}

impl DeployRun {
    /// The `done` event's data.
    pub fn done(&self) -> &Value {
        &self
            .events
            .iter()
            .find(|(e, _)| e == "done")
            .unwrap_or_else(|| panic!("the stream has no done event: {self:#?}"))
            .1
    }

    /// `done.success`.
    pub fn success(&self) -> bool {
        self.done()["success"] == json!(true)
    }

    /// The progress phases of `service`, in order.
    pub fn phases(&self, service: &str) -> Vec<String> {
        self.events
            .iter()
            .filter(|(e, d)| e == "progress" && d["service"] == json!(service))
            .filter_map(|(_, d)| d["phase"].as_str().map(str::to_string))
            .collect()
    }

    /// The `failed` event's reason for `service`.
    pub fn failure(&self, service: &str) -> Option<String> {
        self.events
            .iter()
            .find(|(e, d)| e == "failed" && d["service"] == json!(service))
            .map(|(_, d)| d["reason"].as_str().unwrap_or_default().to_string())
    }

    /// Asserts the deploy succeeded, printing the stream if not.
    pub fn assert_success(&self) {
        assert_eq!(self.status, 200, "{self:#?}");
        assert!(self.success(), "the deploy failed: {self:#?}");
    }
}

/// A 3-node cluster on test hosts.
pub struct Cluster {
    // Field order is drop order: the processes first, the network last.
    pub nodes: Vec<Node>,
    _registry: Registry,
    pub ctd: Containerd,
    pub images: Images,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
    _net: Network,
}

/// The counter that makes each cluster's containerd namespaces unique within a process.
static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

impl Cluster {
    /// Three nodes (one `init`, two `join`) with [`KNOBS`] overridden by `env`.
    pub async fn start(env: &[(&str, &str)]) -> Cluster {
        Self::start_n(3, env).await
    }

    /// `size` nodes.
    pub async fn start_n(size: usize, env: &[(&str, &str)]) -> Cluster {
        super::support::require(&["nsenter", "ip"]);
        let mut net = Network::new();
        let ctd = Containerd::start();
        // On the bridge's address, so every host reaches it.
        let registry = Registry::start_at(format!("{}:5000", net.gateway));
        let archive = |def: images::ImageDef| images::build(&def, ctd.dir.path());
        let web = archive(images::httpd("mill.test/web:1"));
        let images = Images {
            v1: registry.push(&web, "mill/web:v1"),
            v2: registry.push(&web, "mill/web:v2"),
            v3: registry.push(&web, "mill/web:v3"),
            crash: registry.push(
                &archive(images::exits3("mill.test/crash:1")),
                "mill/crash:1",
            ),
            sick: registry.push(
                &archive(images::unhealthy("mill.test/sick:1")),
                "mill/sick:1",
            ),
            missing: format!("{}/mill/missing:1", registry.host),
        };
        // MILL_E2E_KEEP=1 keeps the node logs and data dirs: a test nextest kills for
        // its timeout prints nothing, so a hang leaves no other trace.
        let dir = tempfile::Builder::new()
            .disable_cleanup(std::env::var_os("MILL_E2E_KEEP").is_some())
            .tempdir()
            .unwrap();
        eprintln!("e2e cluster dir {}", dir.path().display());
        let mut knobs: Vec<(String, String)> = KNOBS
            .iter()
            .filter(|(k, _)| !env.iter().any(|(o, _)| o == k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        knobs.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let serial = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let mut nodes: Vec<Node> = Vec::new();
        for i in 0..size {
            let namespace = format!("e2e-{}-{serial}-n{}", std::process::id(), i + 1);
            let node = Node {
                data_dir: dir.path().join(format!("node-{}", i + 1)),
                log: dir.path().join(format!("node-{}.log", i + 1)),
                join: nodes.first().map(Node::addr),
                args: vec![
                    "--containerd-socket".into(),
                    ctd.socket.display().to_string(),
                    "--containerd-namespace".into(),
                    namespace.clone(),
                    "--insecure-registry".into(),
                    registry.host.clone(),
                ],
                namespace,
                env: knobs.clone(),
                host: net.host(),
                child: Mutex::new(None),
            };
            node.restart().await;
            nodes.push(node);
        }
        let cluster = Cluster {
            nodes,
            _registry: registry,
            ctd,
            images,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            _dir: dir,
            _net: net,
        };
        cluster.wait_nodes_ready(size).await;
        cluster
    }

    /// Waits until `count` Node objects are `ready`.
    pub async fn wait_nodes_ready(&self, count: usize) {
        eventually(WITHIN, &format!("{count} nodes ready"), || async {
            let nodes = self.nodes_objects().await?;
            let ready = nodes
                .iter()
                .filter(|n| {
                    n.status
                        .as_ref()
                        .is_some_and(|s| s.state == NodeState::Ready)
                })
                .count();
            (ready == count).then_some(())
        })
        .await;
    }

    /// The Node objects, as a running node lists them.
    pub async fn nodes_objects(&self) -> Option<Vec<NodeObject>> {
        let api: Api<NodeObject> = Api::all(self.client().await);
        Some(api.list(&ListParams::default()).await.ok()?.items)
    }

    /// The index of the first running node.
    pub fn live(&self) -> usize {
        self.nodes
            .iter()
            .position(Node::is_running)
            .expect("a running node")
    }

    /// A kube client of a running node.
    pub async fn client(&self) -> kube::Client {
        self.nodes[self.live()].client().await
    }

    /// The index of the node that leads now, asked of the running nodes.
    pub async fn leader(&self) -> Option<usize> {
        for (i, node) in self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_running())
        {
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
                return Some(i);
            }
        }
        None
    }

    /// Waits for a leader and returns its index.
    pub async fn wait_leader(&self) -> usize {
        eventually(WITHIN, "a leader", || self.leader()).await
    }

    /// `kill -9` node `i`'s mill process and every container it ran: the host is gone.
    pub fn lose_host(&self, i: usize) {
        let node = &self.nodes[i];
        node.kill9();
        for (id, _, _) in self.ctd.tasks(&node.namespace) {
            self.ctd.ctr(
                &node.namespace,
                &["tasks", "kill", "-a", "-s", "SIGKILL", &id],
            );
        }
    }

    /// Posts `config` to node `via`'s `/v1/deploy` and reads the stream to its `done`.
    pub async fn deploy_via(&self, via: usize, config: &str) -> DeployRun {
        let http = reqwest::Client::new();
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            http.post(self.nodes[via].url("/v1/deploy"))
                .bearer_auth(TOKEN)
                .header(reqwest::header::CONTENT_TYPE, "text/plain")
                .body(config.to_string())
                .send(),
        )
        .await
        .expect("POST /v1/deploy answers within 30s")
        .expect("POST /v1/deploy reaches the node");
        let status = response.status().as_u16();
        let name = response
            .headers()
            .get("x-mill-deploy")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut run = DeployRun {
            status,
            name,
            body: String::new(),
            events: Vec::new(),
        };
        if status != 200 {
            run.body = response.text().await.unwrap_or_default();
            return run;
        }
        let deadline = Duration::from_secs(300);
        let mut response = response;
        let mut buffer = String::new();
        let read = async {
            while let Some(chunk) = response.chunk().await.expect("the deploy stream stays up") {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    let mut event = None;
                    let mut data = String::new();
                    for line in frame.lines() {
                        if let Some(e) = line.strip_prefix("event:") {
                            event = Some(e.trim().to_string());
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.trim());
                        }
                    }
                    let Some(event) = event else { continue };
                    let value = serde_json::from_str(&data).unwrap_or(Value::String(data));
                    let last = event == "done";
                    run.events.push((event, value));
                    if last {
                        return;
                    }
                }
            }
        };
        if tokio::time::timeout(deadline, read).await.is_err() {
            panic!("the deploy stream did not end within {deadline:?}; so far: {run:#?}");
        }
        run
    }

    /// [`Cluster::deploy_via`] the first running node.
    pub async fn deploy(&self, config: &str) -> DeployRun {
        self.deploy_via(self.live(), config).await
    }

    /// Allocs of `service` in `default`.
    pub async fn allocs(&self, service: &str) -> Vec<Alloc> {
        let api: Api<Alloc> = Api::namespaced(self.client().await, "default");
        let list = api.list(&ListParams::default()).await.expect("list allocs");
        list.items
            .into_iter()
            .filter(|a| a.spec.owner.name == service)
            .collect()
    }

    /// Every Alloc in `default`.
    pub async fn all_allocs(&self) -> Vec<Alloc> {
        let api: Api<Alloc> = Api::namespaced(self.client().await, "default");
        api.list(&ListParams::default())
            .await
            .expect("list allocs")
            .items
    }

    /// The Service `name`, if it exists.
    pub async fn service(&self, name: &str) -> Option<Service> {
        let api: Api<Service> = Api::namespaced(self.client().await, "default");
        api.get_opt(name).await.expect("get service")
    }

    /// The Deploy `name`.
    pub async fn deploy_object(&self, name: &str) -> Deploy {
        let api: Api<Deploy> = Api::namespaced(self.client().await, "default");
        api.get(name).await.expect("get deploy")
    }

    /// Waits until `service` has exactly `count` healthy allocs, all of `image`, and no
    /// other live alloc; returns them.
    pub async fn wait_settled(&self, service: &str, image: &str, count: usize) -> Vec<Alloc> {
        let what = format!("{count} healthy allocs of {service} on {image} and nothing else");
        let deadline = Instant::now() + WITHIN;
        loop {
            let allocs = self.allocs(service).await;
            let live: Vec<&Alloc> = allocs.iter().filter(|a| !phase(a).is_terminal()).collect();
            if live.len() == count
                && live
                    .iter()
                    .all(|a| phase(a) == AllocPhase::Healthy && a.spec.template.image == image)
            {
                return live.into_iter().cloned().collect();
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {WITHIN:?} waiting for {what}; allocs: {:#?}",
                summary(&allocs)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET `http://ADDRESS/path` of an alloc from the test process (over the bridge).
    pub async fn get(&self, address: &str, path: &str) -> Option<(u16, String)> {
        let response = self
            .http
            .get(format!("http://{address}{path}"))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// `POST /v1/tasks/spawn` with `request` through a running node; returns the run's id
    /// (also the name of its Alloc). A 503 (no leader for a moment: elections under load)
    /// is retried as its message says, for up to [`WITHIN`].
    pub async fn spawn(&self, request: Value) -> String {
        let deadline = Instant::now() + WITHIN;
        loop {
            let answer = self
                .http
                .post(self.nodes[self.live()].url("/v1/tasks/spawn"))
                .bearer_auth(TOKEN)
                .json(&request)
                .send()
                .await
                .expect("POST /v1/tasks/spawn reaches the node");
            let code = answer.status().as_u16();
            let body: Value = answer.json().await.expect("a JSON answer");
            if code == 503 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assert_eq!(code, 201, "spawn {request}: {body}");
            return body["id"].as_str().expect("the run's id").to_string();
        }
    }

    /// Waits until alloc `name` is terminal; returns it.
    pub async fn wait_ended(&self, name: &str) -> Alloc {
        let what = format!("alloc {name} to end");
        eventually(WITHIN, &what, || async {
            let api: Api<Alloc> = Api::namespaced(self.client().await, "default");
            let alloc = api.get_opt(name).await.ok()??;
            phase(&alloc).is_terminal().then_some(alloc)
        })
        .await
    }
}

/// The alloc's phase (`Pending` without a status).
pub fn phase(alloc: &Alloc) -> AllocPhase {
    alloc.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// `name node phase image reason` per alloc: what a failure message shows.
pub fn summary(allocs: &[Alloc]) -> Vec<String> {
    allocs
        .iter()
        .map(|a| {
            format!(
                "{} node={} phase={:?} desired={:?} image={} reason={:?}",
                a.metadata.name.as_deref().unwrap_or("?"),
                a.spec.node_name.as_deref().unwrap_or("-"),
                phase(a),
                a.spec.desired_state,
                a.spec.template.image,
                a.status.as_ref().and_then(|s| s.reason.as_deref())
            )
        })
        .collect()
}

/// Samples the healthy allocs of a service every 50 ms until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<usize>>,
}

impl Sampler {
    /// Starts sampling `service` through node `via`.
    pub async fn start(cluster: &Cluster, via: usize, service: &str) -> Sampler {
        let client = cluster.nodes[via].client().await;
        let service = service.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let api: Api<Alloc> = Api::namespaced(client, "default");
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !flag.load(Ordering::SeqCst) {
                tick.tick().await;
                let Ok(list) = api.list(&ListParams::default()).await else {
                    continue;
                };
                samples.push(
                    list.items
                        .iter()
                        .filter(|a| a.spec.owner.name == service)
                        .filter(|a| phase(a) == AllocPhase::Healthy)
                        .count(),
                );
            }
            samples
        });
        Sampler { stop, task }
    }

    /// Stops and returns the samples.
    pub async fn finish(self) -> Vec<usize> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("sampler")
    }
}

/// A service block: busybox httpd from `image` on port 8080 with `replicas`, a health
/// check on `/health`, and `extra` lines inside the block.
pub fn service(name: &str, image: &str, replicas: u32, extra: &str) -> String {
    format!(
        r#"service "{name}" {{
  image    = "{image}"
  port     = 8080
  replicas = {replicas}
  cpu      = 0.1
  memory   = "32M"
  health {{
    path     = "/health"
    interval = "1s"
    timeout  = "1s"
  }}
{extra}
}}
"#
    )
}

/// An HTTP server on the bridge that answers each GET with the next of `answers` (the
/// last one forever after): lets one replica of a revision start and the next one fail.
pub struct Verdicts {
    /// `http://GATEWAY:PORT/`.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Verdicts {
    pub async fn start(cluster: &Cluster, answers: &[&str]) -> Verdicts {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind((cluster._net.gateway.as_str(), 0))
            .await
            .expect("verdict server binds on the bridge");
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let answers: Vec<String> = answers.iter().map(|a| a.to_string()).collect();
        let task = tokio::spawn(async move {
            let mut served = 0;
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let answer = answers[served.min(answers.len() - 1)].clone();
                served += 1;
                // Read the request (one GET fits one read); its content does not matter.
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                socket.write_all(response.as_bytes()).await.ok();
                socket.shutdown().await.ok();
            }
        });
        Verdicts { url, task }
    }

    /// A service command that asks the server first: `ok` serves (httpd with `/health`),
    /// anything else exits 3.
    pub fn command(&self) -> String {
        format!(
            r#"  command = ["/bin/sh", "-c", "v=$(busybox wget -q -O - {}); [ \"$v\" = ok ] || exit 3; mkdir -p /www && echo ok > /www/health && exec httpd -f -p $PORT -h /www"]"#,
            self.url
        )
    }
}

impl Drop for Verdicts {
    fn drop(&mut self) {
        self.task.abort();
    }
}

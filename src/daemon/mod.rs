//! The node daemon: `mill init` and `mill join` set up (or resume) a node, open its
//! store, serve the API and run until SIGINT/SIGTERM.

mod certs;
mod identity;
pub mod join;
mod knobs;
mod leader;

pub use identity::Identity;
pub use knobs::Knobs;

use crate::store::{Key, Op, Store, StoreConfig, StoreError, Txn};
use anyhow::Context;
use std::path::Path;
use std::time::Instant;

/// The store resource of Node objects.
pub(crate) const NODES: &str = "mill.dev/nodes";

/// Flags shared by `init` and `join` (each also as env `MILL_<FLAG>`).
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// The address other nodes and DNS answers use [default: the first non-loopback address].
    #[arg(long, env = "MILL_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where the API (and node-to-node RPC) listens.
    #[arg(long, env = "MILL_API_ADDR", default_value = "0.0.0.0:4400")]
    pub api_addr: String,
    /// Where DNS (zone `mill.`, UDP and TCP) listens [default: <advertise>:53].
    #[arg(long, env = "MILL_DNS_ADDR")]
    pub dns_addr: Option<String>,
    /// Where the ingress HTTP proxy listens [default: 0.0.0.0:80].
    #[arg(long, env = "MILL_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Where the ingress HTTPS proxy listens [default: 0.0.0.0:443].
    #[arg(long, env = "MILL_HTTPS_ADDR")]
    pub https_addr: Option<String>,
    /// The ACME directory URL route hosts' certificates come from (any RFC 8555 server);
    /// unset: the ingress serves self-signed certificates.
    #[arg(long, env = "MILL_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// The ACME account's contact e-mail.
    #[arg(long, env = "MILL_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// This node's name [default: node-N in join order].
    #[arg(long, env = "MILL_NODE_NAME")]
    pub node_name: Option<String>,
    /// containerd's socket.
    #[arg(
        long,
        env = "MILL_CONTAINERD_SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_socket: std::path::PathBuf,
    /// The containerd namespace of this node's containers and images.
    #[arg(long, env = "MILL_CONTAINERD_NAMESPACE", default_value = "mill")]
    pub containerd_namespace: String,
    /// The host ports allocs get (`FIRST-LAST`).
    #[arg(long, env = "MILL_PORT_RANGE", default_value = "20000-29999")]
    pub port_range: mill_agent::PortRange,
    /// A registry (`HOST:PORT`) to pull from over plain HTTP (repeatable; loopback always is).
    #[arg(long, env = "MILL_INSECURE_REGISTRY", value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
}

/// `mill init`: bootstrap a one-node cluster (or resume this node) and serve.
pub async fn init(data_dir: &Path, token: Option<String>, args: DaemonArgs) -> anyhow::Result<()> {
    let knobs = Knobs::from_env()?;
    let identity = match Identity::load(data_dir)? {
        Some(identity) => {
            if token.as_ref().is_some_and(|t| *t != identity.token) {
                anyhow::bail!(
                    "{} belongs to a cluster with another token; drop --token to resume it, or use a new --data-dir",
                    data_dir.display()
                );
            }
            identity
        }
        None => {
            let (ca_cert, ca_key) = certs::new_ca()?;
            let identity = Identity {
                node_id: 1,
                ca_cert,
                ca_key,
                node_name: args.node_name.clone().unwrap_or_else(|| "node-1".into()),
                token: match token {
                    Some(t) => t,
                    None => identity::new_token()?,
                },
                secret_key: identity::new_secret_key()?,
                advertise: resolve_advertise(args.advertise.as_deref())?,
                api_addr: args.api_addr.clone(),
                joined: true,
            };
            identity.save(data_dir)?;
            identity
        }
    };
    let node = RunningNode::start(data_dir, &identity, &knobs, &args).await?;
    node.store
        .bootstrap()
        .await
        .context("cannot bootstrap the cluster")?;
    wait_for_leader(&node.store, &knobs).await?;
    ensure_node_object(&node.store, &identity, args.port_range).await?;
    eprintln!(
        "To join another node: mill join {} --token {}",
        identity.advertised_api(),
        identity.token
    );
    node.run().await
}

/// `mill join ADDR`: become a voter of the cluster at `member` (or resume this node).
pub async fn join(
    data_dir: &Path,
    member: &str,
    token: &str,
    args: DaemonArgs,
) -> anyhow::Result<()> {
    let knobs = Knobs::from_env()?;
    let mut identity = match Identity::load(data_dir)? {
        Some(identity) => identity,
        None => {
            let advertise = resolve_advertise(args.advertise.as_deref())?;
            let api_port = args.api_addr.rsplit(':').next().unwrap_or("4400");
            let request = join::JoinRequest {
                address: advertise.clone(),
                api_address: format!("{advertise}:{api_port}"),
                node_name: args.node_name.clone(),
                port_range: Some(crd_port_range(args.port_range)),
            };
            let grant: join::JoinGrant = join::call(member, "/v1/join", token, &request).await?;
            let identity = Identity {
                node_id: grant.node_id,
                node_name: grant.node_name,
                token: token.to_string(),
                secret_key: grant.secret_key,
                ca_cert: grant.ca_cert,
                ca_key: grant.ca_key,
                advertise,
                api_addr: args.api_addr.clone(),
                joined: false,
            };
            identity.save(data_dir)?;
            identity
        }
    };
    let node = RunningNode::start(data_dir, &identity, &knobs, &args).await?;
    if !identity.joined {
        let complete = join::JoinComplete {
            node_id: identity.node_id,
            api_address: identity.advertised_api(),
        };
        let _: serde_json::Value = tokio::time::timeout(
            knobs.join_timeout,
            join::call(member, "/v1/join/complete", token, &complete),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the cluster did not make this node a voter within {:?}; check that {member} can reach {}",
                knobs.join_timeout,
                identity.advertised_api()
            )
        })??;
        identity.joined = true;
        identity.save(data_dir)?;
    }
    wait_for_leader(&node.store, &knobs).await?;
    eprintln!("Joined cluster");
    node.run().await
}

/// A node whose store is open and whose API serves.
struct RunningNode {
    store: Store,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningNode {
    async fn start(
        data_dir: &Path,
        identity: &Identity,
        knobs: &Knobs,
        args: &DaemonArgs,
    ) -> anyhow::Result<Self> {
        let store = Store::open(StoreConfig {
            data_dir: data_dir.to_path_buf(),
            node_id: identity.node_id,
            api_addr: identity.advertised_api(),
            token: identity.token.clone(),
            election_timeout_ms: knobs.election_timeout.as_millis() as u64,
            snapshot_threshold: knobs.snapshot_threshold,
            snapshot_log_keep: knobs.snapshot_log_keep,
            watch_window: knobs.watch_window,
        })
        .await
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
        let metrics = crate::metrics::Metrics::default();
        let api = crate::api::router_metered(
            store.clone(),
            crate::api::ApiConfig {
                token: identity.token.clone(),
                secret_key: identity.secret_key_bytes()?,
                server_address: identity.advertised_api(),
            },
            crate::api::ApiTuning::default(),
            metrics.clone(),
        );
        let (net, nameserver) = start_net(&store, identity, knobs, args, &metrics).await?;
        let agent = mill_agent::Agent::start(
            agent_config(data_dir, identity, knobs, args, nameserver)?,
            crate::api::kube_client(api.clone(), &identity.token),
            metrics.agent_meter(),
        );
        // Kept running for the node's lifetime; it starts and stops the controllers.
        let _leadership = leader::follow(
            store.clone(),
            crate::api::kube_client(api.clone(), &identity.token),
            knobs,
            args.port_range,
            metrics.controllers(),
            &identity.token,
        );
        let _acme = start_acme(&store, &api, identity, knobs, args);
        let app = api
            .merge(join::router(store.clone(), identity))
            .merge(net.router)
            .merge(agent.router);
        let tls = certs::issue(&identity.ca_key, &identity.tls_names())?;
        let listener = tokio::net::TcpListener::bind(&identity.api_addr)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (is another mill running? pick another --api-addr)",
                    identity.api_addr
                )
            })?;
        let server = tokio::spawn(async move {
            tokio::select! {
                served = crate::api::tls::serve(listener, app, &tls) => {
                    served.map_err(|e| std::io::Error::other(e.to_string()))
                }
                _ = shutdown_signal() => Ok(()),
            }
        });
        Ok(RunningNode { store, server })
    }

    /// Serves until SIGINT/SIGTERM, then shuts the store down cleanly.
    async fn run(self) -> anyhow::Result<()> {
        let served = self.server.await;
        self.store.shutdown().await.ok();
        served
            .context("the API server task died")?
            .context("the API server failed")
    }
}

/// Starts the node's routing table, DNS and VIP listeners; returns them and the IP the
/// containers' resolv.conf names.
async fn start_net(
    store: &Store,
    identity: &Identity,
    knobs: &Knobs,
    args: &DaemonArgs,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<(crate::net::Net, String)> {
    let http = args.http_addr.as_deref().unwrap_or("0.0.0.0:80");
    let http_addr: std::net::SocketAddr = http.parse().with_context(|| {
        format!("--http-addr {http:?} is not IP:PORT; give e.g. 0.0.0.0:80 or 127.0.0.1:8080")
    })?;
    let https = args.https_addr.as_deref().unwrap_or("0.0.0.0:443");
    let https_addr: std::net::SocketAddr = https.parse().with_context(|| {
        format!("--https-addr {https:?} is not IP:PORT; give e.g. 0.0.0.0:443 or 127.0.0.1:8443")
    })?;
    let text = args
        .dns_addr
        .clone()
        .unwrap_or_else(|| format!("{}:53", identity.advertise));
    let dns_addr: std::net::SocketAddr = text.parse().with_context(|| {
        format!("--dns-addr {text:?} is not IP:PORT; give e.g. 10.0.0.5:53 or 127.0.0.1:5353")
    })?;
    if dns_addr.port() != 53 {
        tracing::warn!(
            "DNS listens on {dns_addr}, but resolv.conf cannot name a port: containers ask {}:53",
            dns_addr.ip()
        );
    }
    let config = crate::net::NetConfig {
        dns_addr,
        dns_required: args.dns_addr.is_some(),
        resolv_conf: std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        http_addr,
        http_required: args.http_addr.is_some(),
        https_addr,
        https_required: args.https_addr.is_some(),
        secret_key: identity.secret_key_bytes()?,
        metrics: Some(metrics.clone()),
        token: identity.token.clone(),
        knobs: knobs.net.clone(),
    };
    let net = crate::net::start(store.clone(), config).await.context(
        "pick a free --dns-addr (UDP and TCP), --http-addr and --https-addr on this host",
    )?;
    Ok((net, dns_addr.ip().to_string()))
}

/// Starts the leader-only ACME task when `--acme-directory` is given.
fn start_acme(
    store: &Store,
    api: &axum::Router,
    identity: &Identity,
    knobs: &Knobs,
    args: &DaemonArgs,
) -> Option<tokio::task::JoinHandle<()>> {
    let Some(directory) = args.acme_directory.clone() else {
        tracing::info!("no --acme-directory: the ingress serves self-signed certificates");
        return None;
    };
    let config = crate::net::acme::AcmeConfig {
        directory,
        email: args.acme_email.clone(),
        ca_file: knobs.acme_ca_file.clone(),
        token: identity.token.clone(),
        knobs: knobs.net.acme.clone(),
    };
    let client = crate::api::kube_client(api.clone(), &identity.token);
    let poll = (knobs.election_timeout / 4).max(std::time::Duration::from_millis(1));
    Some(leader::while_leader(store.clone(), poll, move || {
        tokio::spawn(crate::net::acme::run(client.clone(), config.clone()))
    }))
}

/// What the node's agent is told: the daemon's flags, identity and knobs.
fn agent_config(
    data_dir: &Path,
    identity: &Identity,
    knobs: &Knobs,
    args: &DaemonArgs,
    nameserver: String,
) -> anyhow::Result<mill_agent::AgentConfig> {
    let log_driver = std::env::current_exe()
        .context("cannot find the mill executable (the agent's log driver)")?;
    Ok(mill_agent::AgentConfig {
        node_name: identity.node_name.clone(),
        advertise: identity.advertise.clone(),
        nameserver,
        data_dir: data_dir.to_path_buf(),
        containerd_socket: args.containerd_socket.clone(),
        containerd_namespace: args.containerd_namespace.clone(),
        port_range: args.port_range,
        insecure_registries: args.insecure_registry.clone(),
        token: identity.token.clone(),
        log_driver,
        netns_path: knobs.netns_path.clone(),
        timings: knobs.agent.clone(),
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            tokio::signal::ctrl_c().await.ok();
        }
    }
}

/// Waits until a leader serves linearizable reads, i.e. the cluster accepts work.
async fn wait_for_leader(store: &Store, knobs: &Knobs) -> anyhow::Result<()> {
    let deadline = Instant::now() + knobs.join_timeout;
    loop {
        match store.read_barrier().await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                anyhow::bail!(
                    "no raft leader after {:?}: {e}; are a majority of the nodes up?",
                    knobs.join_timeout
                )
            }
            Err(_) => tokio::time::sleep(knobs.election_timeout / 4).await,
        }
    }
}

/// Creates this node's Node object if it does not exist yet.
async fn ensure_node_object(
    store: &Store,
    identity: &Identity,
    port_range: mill_agent::PortRange,
) -> anyhow::Result<()> {
    let key = Key {
        resource: NODES.to_string(),
        namespace: None,
        name: identity.node_name.clone(),
    };
    if store.get(&key).is_some() {
        return Ok(());
    }
    let object = node_object(
        &identity.node_name,
        identity.node_id,
        &identity.advertise,
        &identity.advertised_api(),
        Some(crd_port_range(port_range)),
    );
    let txn = Txn {
        ops: vec![Op::Create { key, object }],
        now: now(),
    };
    match store.propose(txn).await {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e).context("cannot record this node's Node object"),
    }
}

/// `--port-range` as the Node object publishes it to the scheduler.
fn crd_port_range(range: mill_agent::PortRange) -> mill_crds::PortRange {
    mill_crds::PortRange {
        first: range.first,
        last: range.last,
    }
}

/// A new Node object as the proposer must write it (uid and creation time set); the
/// scheduler picks host ports from `port_range` (the cluster default when absent).
pub(crate) fn node_object(
    name: &str,
    raft_id: u64,
    address: &str,
    api_address: &str,
    port_range: Option<mill_crds::PortRange>,
) -> serde_json::Value {
    let mut object = serde_json::json!({
        "apiVersion": "mill.dev/v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": now(),
        },
        "spec": {
            "raftId": raft_id,
            "address": address,
            "apiAddress": api_address,
        }
    });
    if let Some(range) = port_range {
        object["spec"]["portRange"] = serde_json::json!(range);
    }
    object
}

/// The current time as Kubernetes writes it: RFC 3339, UTC, whole seconds.
pub(crate) fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// `--advertise`, or the first non-loopback IPv4 address of the host.
fn resolve_advertise(flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(ip) = flag {
        ip.parse::<std::net::IpAddr>()
            .with_context(|| format!("--advertise {ip:?} is not an IP address"))?;
        return Ok(ip.to_string());
    }
    let interfaces = if_addrs::get_if_addrs().context("cannot list network interfaces")?;
    interfaces
        .iter()
        .find(|i| !i.is_loopback() && i.ip().is_ipv4())
        .map(|i| i.ip().to_string())
        .ok_or_else(|| {
            anyhow::anyhow!("this host has no non-loopback IPv4 address; pass --advertise IP")
        })
}

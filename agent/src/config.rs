//! What the agent is told by the daemon: who it is, where containerd is, and its timings
//! (read from `MILL_*` by the daemon's knobs; nothing in the agent reads the environment).

use crate::ports::PortRange;
use std::path::PathBuf;
use std::time::Duration;

/// The agent's configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name (`spec.nodeName` of its allocs, the name of its Node object).
    pub node_name: String,
    /// The advertised IP: alloc addresses.
    pub advertise: String,
    /// The IP of this node's DNS server: the containers' `/etc/resolv.conf` names it.
    pub nameserver: String,
    /// The node's data dir: logs, volumes, per-alloc scratch space.
    pub data_dir: PathBuf,
    /// containerd's socket.
    pub containerd_socket: PathBuf,
    /// The containerd namespace of this node's containers and images.
    pub containerd_namespace: String,
    /// The node's port pool.
    pub port_range: PortRange,
    /// Registries (`HOST:PORT`) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The cluster token guarding the agent's endpoints.
    pub token: String,
    /// The executable implementing `agent-log-driver DIR` (the `mill` binary).
    pub log_driver: PathBuf,
    /// The network namespace containers join (`MILL_NETNS_PATH`); the host's if unset.
    pub netns_path: Option<PathBuf>,
    /// Timings and limits.
    pub timings: Timings,
}

/// The agent's timings and limits (SPEC §9).
#[derive(Debug, Clone)]
pub struct Timings {
    /// `MILL_HEARTBEAT_INTERVAL_MS` (5000).
    pub heartbeat_interval: Duration,
    /// `MILL_STOP_GRACE_MS` (10000): SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    /// `MILL_RESTART_BACKOFF_MS` (1000,5000,30000,60000): waits before in-place restarts.
    pub restart_backoff: Vec<Duration>,
    /// `MILL_LOG_MAX_BYTES` (512 MiB): all logs of the node.
    pub log_max_bytes: u64,
    /// `MILL_LOG_RETENTION_SECS` (86400).
    pub log_retention: Duration,
    /// `MILL_LOG_POLL_MS` (100): how often followers look for new lines.
    pub log_poll: Duration,
    /// `MILL_LOG_JANITOR_MS` (60000): how often the log limits are enforced.
    pub log_janitor: Duration,
    /// `MILL_AGENT_RESYNC_MS` (10000): full re-plan even without events.
    pub resync: Duration,
    /// `MILL_CONTAINERD_RETRY_MS` (2000): reconnect and retry interval.
    pub containerd_retry: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat_interval: Duration::from_millis(5000),
            stop_grace: Duration::from_millis(10_000),
            restart_backoff: [1000, 5000, 30_000, 60_000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            log_max_bytes: 512 << 20,
            log_retention: Duration::from_secs(86_400),
            log_poll: Duration::from_millis(100),
            log_janitor: Duration::from_millis(60_000),
            resync: Duration::from_millis(10_000),
            containerd_retry: Duration::from_millis(2000),
        }
    }
}

impl Timings {
    /// The wait before restart number `n` (0-based), capped at the last step.
    pub fn backoff(&self, n: usize) -> Duration {
        self.restart_backoff
            .get(n)
            .or(self.restart_backoff.last())
            .copied()
            .unwrap_or_default()
    }
}

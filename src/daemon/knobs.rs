//! Every tuning knob of the daemon, read once from `MILL_*` environment variables
//! (SPEC §9). Nothing else reads the environment for timings.

use std::time::Duration;

/// The daemon's tuning knobs.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// `MILL_ELECTION_TIMEOUT_MS` (1000).
    pub election_timeout: Duration,
    /// `MILL_SNAPSHOT_THRESHOLD` (5000 entries).
    pub snapshot_threshold: u64,
    /// `MILL_SNAPSHOT_LOG_KEEP` (1000 entries).
    pub snapshot_log_keep: u64,
    /// `MILL_WATCH_WINDOW` (100000 events): how much watch history a node keeps for replay.
    pub watch_window: usize,
    /// `MILL_JOIN_TIMEOUT_MS` (60000): how long `mill join` waits to become a voter.
    pub join_timeout: Duration,
    /// The agent's timings and limits: `MILL_HEARTBEAT_INTERVAL_MS` (5000),
    /// `MILL_STOP_GRACE_MS` (10000), `MILL_RESTART_BACKOFF_MS` (1000,5000,30000,60000),
    /// `MILL_LOG_MAX_BYTES` (536870912), `MILL_LOG_RETENTION_SECS` (86400),
    /// `MILL_LOG_POLL_MS` (100), `MILL_LOG_JANITOR_MS` (60000), `MILL_AGENT_RESYNC_MS`
    /// (10000), `MILL_CONTAINERD_RETRY_MS` (2000).
    pub agent: mill_agent::Timings,
    /// `MILL_RUN_CONTROLLERS` (1): `0` keeps the controllers off on this node even while it
    /// leads (tests that play the scheduler themselves, e.g. the agent's end-to-end tests).
    pub run_controllers: bool,
    /// `MILL_NETNS_PATH` (unset): the network namespace containers join.
    pub netns_path: Option<std::path::PathBuf>,
    /// `MILL_WATCHDOG_TICK_MS` (1000): the controllers re-plan at least this often.
    pub watchdog_tick: Duration,
    /// The controllers' knobs: `MILL_HEARTBEAT_TIMEOUT_MS` (15000),
    /// `MILL_DEPLOY_TIMEOUT_MS` (600000), `MILL_DRAIN_GRACE_MS` (5000),
    /// `MILL_ALLOC_RETENTION_SECS` (86400); the port range comes from `--port-range`.
    pub controllers: mill_controllers::Knobs,
    /// Networking: `MILL_DNS_FORWARD_TIMEOUT_MS` (2000), `MILL_VIP_CONNECT_TIMEOUT_MS`
    /// (2000), `MILL_ROUTING_POLL_MS` (10), `MILL_PROXY_CONNECT_TIMEOUT_MS` (2000),
    /// `MILL_PROXY_RESPONSE_TIMEOUT_MS` (60000), `MILL_PROXY_IDLE_TIMEOUT_MS` (60000);
    /// ACME: `MILL_ACME_RENEW_BEFORE_SECS` (2592000), `MILL_ACME_POLL_MS` (10000),
    /// `MILL_ACME_RETRY_MS` (60000), `MILL_ACME_ORDER_TIMEOUT_MS` (120000).
    pub net: crate::net::NetKnobs,
    /// `MILL_ACME_CA_FILE` (unset): a PEM CA certificate the ACME client trusts for the
    /// directory's HTTPS instead of the system roots (a test CA such as pebble's).
    pub acme_ca_file: Option<std::path::PathBuf>,
}

impl Knobs {
    /// Reads the knobs; an unset variable takes its default, a malformed one is an error.
    pub fn from_env() -> anyhow::Result<Knobs> {
        Ok(Knobs {
            election_timeout: Duration::from_millis(var("MILL_ELECTION_TIMEOUT_MS", 1000)?),
            snapshot_threshold: var("MILL_SNAPSHOT_THRESHOLD", 5000)?,
            snapshot_log_keep: var("MILL_SNAPSHOT_LOG_KEEP", 1000)?,
            watch_window: var("MILL_WATCH_WINDOW", 100_000)?,
            join_timeout: Duration::from_millis(var("MILL_JOIN_TIMEOUT_MS", 60_000)?),
            agent: mill_agent::Timings {
                heartbeat_interval: millis("MILL_HEARTBEAT_INTERVAL_MS", 5000)?,
                stop_grace: millis("MILL_STOP_GRACE_MS", 10_000)?,
                restart_backoff: backoff("MILL_RESTART_BACKOFF_MS", &[1000, 5000, 30_000, 60_000])?,
                log_max_bytes: var("MILL_LOG_MAX_BYTES", 512 << 20)?,
                log_retention: Duration::from_secs(var("MILL_LOG_RETENTION_SECS", 86_400)?),
                log_poll: millis("MILL_LOG_POLL_MS", 100)?,
                log_janitor: millis("MILL_LOG_JANITOR_MS", 60_000)?,
                resync: millis("MILL_AGENT_RESYNC_MS", 10_000)?,
                containerd_retry: millis("MILL_CONTAINERD_RETRY_MS", 2000)?,
            },
            run_controllers: var::<u8>("MILL_RUN_CONTROLLERS", 1)? != 0,
            netns_path: std::env::var_os("MILL_NETNS_PATH")
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from),
            watchdog_tick: millis("MILL_WATCHDOG_TICK_MS", 1000)?,
            controllers: mill_controllers::Knobs {
                heartbeat_timeout: millis("MILL_HEARTBEAT_TIMEOUT_MS", 15_000)?,
                deploy_timeout: millis("MILL_DEPLOY_TIMEOUT_MS", 600_000)?,
                drain_grace: millis("MILL_DRAIN_GRACE_MS", 5000)?,
                alloc_retention: Duration::from_secs(var("MILL_ALLOC_RETENTION_SECS", 86_400)?),
                ..mill_controllers::Knobs::default()
            },
            net: crate::net::NetKnobs {
                dns_forward_timeout: millis("MILL_DNS_FORWARD_TIMEOUT_MS", 2000)?,
                vip_connect_timeout: millis("MILL_VIP_CONNECT_TIMEOUT_MS", 2000)?,
                routing_poll: millis("MILL_ROUTING_POLL_MS", 10)?,
                proxy: crate::net::proxy::ProxyKnobs {
                    connect_timeout: millis("MILL_PROXY_CONNECT_TIMEOUT_MS", 2000)?,
                    response_timeout: millis("MILL_PROXY_RESPONSE_TIMEOUT_MS", 60_000)?,
                    idle_timeout: millis("MILL_PROXY_IDLE_TIMEOUT_MS", 60_000)?,
                },
                acme: crate::net::acme::AcmeKnobs {
                    renew_before: Duration::from_secs(var(
                        "MILL_ACME_RENEW_BEFORE_SECS",
                        30 * 86_400,
                    )?),
                    poll: millis("MILL_ACME_POLL_MS", 10_000)?,
                    retry: millis("MILL_ACME_RETRY_MS", 60_000)?,
                    order_timeout: millis("MILL_ACME_ORDER_TIMEOUT_MS", 120_000)?,
                },
            },
            acme_ca_file: std::env::var_os("MILL_ACME_CA_FILE")
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from),
        })
    }
}

fn millis(name: &str, default: u64) -> anyhow::Result<Duration> {
    Ok(Duration::from_millis(var(name, default)?))
}

/// A comma-separated list of milliseconds (`1000,5000,30000,60000`).
fn backoff(name: &str, default: &[u64]) -> anyhow::Result<Vec<Duration>> {
    let Ok(text) = std::env::var(name) else {
        return Ok(default.iter().copied().map(Duration::from_millis).collect());
    };
    let steps: Result<Vec<u64>, _> = text.split(',').map(|s| s.trim().parse()).collect();
    match steps {
        Ok(steps) if !steps.is_empty() => {
            Ok(steps.into_iter().map(Duration::from_millis).collect())
        }
        _ => anyhow::bail!(
            "{name}={text:?} is not a list of milliseconds; give e.g. 1000,5000,30000,60000"
        ),
    }
}

fn var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "{name}={text:?} is not a valid number; unset it or give a plain integer"
            )
        }),
        Err(_) => Ok(default),
    }
}

//! The node's heartbeat: capacity from the host, allocatable = capacity minus the
//! reservations of live allocs, the alloc count and the time, written to its Node's
//! status every interval — only while containerd answers, so a node that cannot run
//! containers goes `down` instead of attracting work.

use crate::Ctx;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::Api;
use mill_crds::{Alloc, ByteSize, DesiredState, Node, NodeResources};
use serde_json::json;
use std::sync::Arc;

/// The host's cpus and memory.
pub fn capacity() -> NodeResources {
    let cpu = std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total(&text))
        .unwrap_or(0);
    NodeResources {
        cpu,
        memory: ByteSize(memory),
    }
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Capacity minus what live allocs reserve; and how many there are.
pub fn allocatable(capacity: NodeResources, allocs: &[Arc<Alloc>]) -> (NodeResources, i32) {
    let live: Vec<&Alloc> = allocs
        .iter()
        .map(|a| a.as_ref())
        .filter(|a| {
            a.spec.desired_state == DesiredState::Running
                && !a.status.as_ref().is_some_and(|s| s.phase.is_terminal())
        })
        .collect();
    let cpu: f64 = live.iter().map(|a| a.spec.template.cpu).sum();
    let memory: u64 = live.iter().map(|a| a.spec.template.memory.bytes()).sum();
    (
        NodeResources {
            cpu: (capacity.cpu - cpu).max(0.0),
            memory: ByteSize(capacity.memory.bytes().saturating_sub(memory)),
        },
        live.len() as i32,
    )
}

/// Renews the heartbeat forever.
pub async fn run(ctx: Arc<Ctx>, allocs: Store<Alloc>) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let capacity = capacity();
    let mut tick = tokio::time::interval(ctx.config.timings.heartbeat_interval);
    // The first tick can come before the daemon has registered the Node: a 404 then is
    // not worth a warning. After one renewal went through, a 404 means the node was
    // removed from the cluster.
    let mut renewed = false;
    loop {
        tick.tick().await;
        if !ctx.runtime.ping().await {
            tracing::error!(
                "containerd at {} does not answer; withholding this node's heartbeat",
                ctx.config.containerd_socket.display()
            );
            continue;
        }
        let (free, count) = allocatable(capacity, &allocs.state());
        let patch = json!({"status": {
            "capacity": capacity,
            "allocatable": free,
            "allocCount": count,
            "lastHeartbeat": crate::status::now(),
        }});
        let renewal = nodes
            .patch_status(
                &ctx.config.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
        match renewal {
            Ok(_) => renewed = true,
            Err(kube::Error::Api(status)) if status.code == 404 && !renewed => {
                tracing::debug!(
                    "node {} is not registered yet; heartbeat on the next tick",
                    ctx.config.node_name
                );
            }
            Err(kube::Error::Api(status)) if status.code == 404 => tracing::warn!(
                "node {} is no longer in the cluster (removed with `mill remove`?): \
                 its heartbeat has nothing to renew; stop this mill process",
                ctx.config.node_name
            ),
            Err(e) => tracing::warn!(
                "cannot renew the heartbeat of node {}: {e}",
                ctx.config.node_name
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let text = "MemTotal:       24683652 kB\nMemFree:        1 kB\n";
        assert_eq!(mem_total(text), Some(24683652 * 1024));
        assert_eq!(mem_total("nothing"), None);
    }
}

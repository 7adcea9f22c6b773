//! Failures on a 3-node cluster: a host lost, the leader killed mid-rollout.

use super::harness::{phase, service, summary, Cluster, FAST_LOSS, HEARTBEAT_TIMEOUT, WITHIN};
use super::support::eventually;
use mill_crds::{AllocPhase, NodeState};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The command of a web replica that takes 2 s to start: keeps a rollout going long
/// enough to kill the leader in the middle of it.
const SLOW: &str = r#"  command = ["/bin/sh", "-c", "sleep 2; mkdir -p /www && echo ok > /www/health && exec httpd -f -p $PORT -h /www"]"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_host_has_its_replicas_healthy_elsewhere() {
    let cluster = Cluster::start(&[FAST_LOSS]).await;
    let v1 = cluster.images.v1.clone();
    cluster
        .deploy(&service("web", &v1, 2, ""))
        .await
        .assert_success();
    let allocs = cluster.wait_settled("web", &v1, 2).await;
    let leader = cluster.wait_leader().await;
    // A host with a replica that does not lead: only the host is lost, not the controllers.
    let victim = (0..3)
        .find(|&i| {
            i != leader
                && allocs
                    .iter()
                    .any(|a| a.spec.node_name.as_deref() == Some(&format!("node-{}", i + 1)))
        })
        .expect("a follower hosting a replica (2 replicas spread over 3 nodes)");
    let victim_name = format!("node-{}", victim + 1);
    cluster.lose_host(victim);
    let lost_at = Instant::now();
    // Heartbeat timeout, then a container start and a first probe: eventually, within a
    // bound generous enough for a loaded machine (no timing assertion beyond that).
    let bound = HEARTBEAT_TIMEOUT + WITHIN;
    eventually(bound, "web healthy twice, off the lost host", || async {
        let allocs = cluster.allocs("web").await;
        let healthy: Vec<_> = allocs
            .iter()
            .filter(|a| phase(a) == AllocPhase::Healthy)
            .filter(|a| a.spec.node_name.as_deref() != Some(&victim_name))
            .collect();
        (healthy.len() == 2).then_some(())
    })
    .await;
    eprintln!(
        "node failure: web healthy elsewhere {:?} after the host was lost (heartbeat timeout {HEARTBEAT_TIMEOUT:?})",
        lost_at.elapsed()
    );
    let nodes = cluster.nodes_objects().await.unwrap();
    let state = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(&victim_name))
        .and_then(|n| n.status.as_ref())
        .map(|s| s.state);
    assert_eq!(state, Some(NodeState::Down), "{victim_name} is down");
    let allocs = cluster.allocs("web").await;
    let lost: Vec<_> = allocs
        .iter()
        .filter(|a| a.spec.node_name.as_deref() == Some(&victim_name))
        .collect();
    assert!(
        lost.iter().all(|a| phase(a) == AllocPhase::Failed
            && a.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("node lost")),
        "{:#?}",
        summary(&allocs)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_completes_under_the_new_leader_after_the_leader_is_killed() {
    // A long heartbeat timeout: the killed leader's host is back before it could be
    // declared down, so the test is about the controllers' failover, not a lost host.
    let cluster = Arc::new(Cluster::start(&[("MILL_HEARTBEAT_TIMEOUT_MS", "60000")]).await);
    let v1 = cluster.images.v1.clone();
    let v2 = cluster.images.v2.clone();
    cluster
        .deploy(&service("web", &v1, 3, SLOW))
        .await
        .assert_success();
    cluster.wait_settled("web", &v1, 3).await;
    let leader = cluster.wait_leader().await;
    let follower = (leader + 1) % 3;
    let rollout = {
        let cluster = cluster.clone();
        let config = service("web", &v2, 3, SLOW);
        tokio::spawn(async move { cluster.deploy_via(follower, &config).await })
    };
    eventually(WITHIN, "the first v2 replica healthy", || async {
        let allocs = cluster.allocs("web").await;
        let moved = allocs
            .iter()
            .filter(|a| a.spec.template.image == v2 && phase(a) == AllocPhase::Healthy)
            .count();
        (moved >= 1).then_some(moved)
    })
    .await;
    let svc = cluster.service("web").await.unwrap();
    let status = svc.status.unwrap();
    assert_ne!(
        status.revision, status.target_revision,
        "the rollout is still under way when the leader is killed"
    );
    cluster.nodes[leader].kill9();
    let new_leader = eventually(WITHIN, "a new leader", || async {
        cluster.leader().await.filter(|&l| l != leader)
    })
    .await;
    eprintln!("leader {leader} killed mid-rollout; node {new_leader} leads");
    cluster.nodes[leader].restart().await;
    let run = tokio::time::timeout(Duration::from_secs(300), rollout)
        .await
        .expect("the deploy ends")
        .unwrap();
    run.assert_success();
    cluster.wait_settled("web", &v2, 3).await;
}

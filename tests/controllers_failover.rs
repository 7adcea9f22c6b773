//! The controllers follow Raft leadership: a new leader's take over. Three
//! `mill` processes (no containerd; the test writes the Nodes' status as heartbeats
//! would), a Service placed before the leader is killed and another placed after.

#[allow(dead_code)] // The cluster tests' harness; this test uses part of it.
#[path = "cluster/harness.rs"]
mod harness;

use harness::{eventually, Cluster, TOKEN};
use serde_json::{json, Value};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

/// Marks every Node ready with capacity, through node `via`.
async fn heartbeat_all(cluster: &Cluster, via: usize) -> Option<()> {
    let list: Value = cluster
        .http
        .get(cluster.nodes[via].url("/apis/mill.dev/v1/nodes"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let resources = json!({"cpu": 4.0, "memory": "8G"});
    for node in list["items"].as_array()? {
        let name = node["metadata"]["name"].as_str()?;
        let patch = json!({"status": {
            "state": "ready", "capacity": resources, "allocatable": resources,
            "lastHeartbeat": now,
        }});
        let answer = cluster
            .http
            .patch(cluster.nodes[via].url(&format!("/apis/mill.dev/v1/nodes/{name}/status")))
            .bearer_auth(TOKEN)
            .header("content-type", "application/merge-patch+json")
            .json(&patch)
            .send()
            .await
            .ok()?;
        answer.status().is_success().then_some(())?;
    }
    Some(())
}

async fn create_service(cluster: &Cluster, via: usize, name: &str) -> Option<()> {
    let service = json!({
        "apiVersion": "mill.dev/v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"image": "busybox", "port": 8080, "replicas": 1, "cpu": 0.1, "memory": "32M"},
    });
    let answer = cluster
        .http
        .post(cluster.nodes[via].url("/apis/mill.dev/v1/namespaces/default/services"))
        .bearer_auth(TOKEN)
        .json(&service)
        .send()
        .await
        .ok()?;
    matches!(answer.status().as_u16(), 201 | 409).then_some(())
}

/// The node an alloc of `service` is placed on, as node `via` lists them.
async fn placed(cluster: &Cluster, via: usize, service: &str) -> Option<String> {
    let url = cluster.nodes[via].url(&format!(
        "/apis/mill.dev/v1/namespaces/default/allocs?labelSelector=mill.dev/owner%3D{service}"
    ));
    let list: Value = cluster
        .http
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    list["items"]
        .as_array()?
        .iter()
        .find_map(|a| a["spec"]["nodeName"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_leader_runs_the_controllers_after_the_old_one_dies() {
    // No agent heartbeats here: the test's own must not time out during the test.
    let cluster = Cluster::start(3, &[("MILL_HEARTBEAT_TIMEOUT_MS", "600000")]).await;
    let leader = eventually(WITHIN, "a leader", || cluster.leader()).await;
    eventually(WITHIN, "three nodes marked ready", || {
        heartbeat_all(&cluster, leader)
    })
    .await;
    eventually(WITHIN, "service one created", || {
        create_service(&cluster, leader, "one")
    })
    .await;
    eventually(WITHIN, "service one placed", || {
        placed(&cluster, leader, "one")
    })
    .await;
    cluster.nodes[leader].kill();
    let survivor = (leader + 1) % 3;
    eventually(WITHIN, "a new leader", || async {
        cluster.leader().await.filter(|l| *l != leader)
    })
    .await;
    eventually(WITHIN, "service two created", || {
        create_service(&cluster, survivor, "two")
    })
    .await;
    eventually(WITHIN, "service two placed by the new leader", || {
        placed(&cluster, survivor, "two")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_posted_to_a_follower_is_committed_and_its_stream_follows_the_leader() {
    let cluster = Cluster::start(3, &[("MILL_HEARTBEAT_TIMEOUT_MS", "600000")]).await;
    let leader = eventually(WITHIN, "a leader", || cluster.leader()).await;
    eventually(WITHIN, "three nodes marked ready", || {
        heartbeat_all(&cluster, leader)
    })
    .await;
    let follower = (leader + 1) % 3;
    let config = "service \"web\" {\n  image = \"busybox\"\n  port = 8080\n  cpu = 0.1\n  memory = \"32M\"\n}\n";
    let mut answer = cluster
        .http
        .post(cluster.nodes[follower].url("/v1/deploy"))
        .bearer_auth(TOKEN)
        .body(config)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    // The leader's deploy controller writes the first event; the follower streams it.
    let mut text = String::new();
    while !text.contains("data: {\"phase\":\"started\"}") {
        let chunk = tokio::time::timeout(WITHIN, answer.chunk())
            .await
            .expect("the stream's first event within the deadline")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: progress\n"), "{text}");
    eventually(WITHIN, "web placed", || placed(&cluster, follower, "web")).await;
}

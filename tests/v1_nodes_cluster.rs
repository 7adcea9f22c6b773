//! `DELETE /v1/nodes/{id}` and `mill leave` on a cluster of 3 separate `mill` processes
//! (no containers: the nodes run no allocs, so removal is allowed at once): removing the
//! Raft leader itself leaves members that elect a new leader and take writes, and `mill
//! leave` takes the node `--address` points at out of the cluster.

#[allow(dead_code)] // The harness serves other tests too.
#[path = "cluster/harness.rs"]
mod harness;

use harness::{eventually, Cluster, TOKEN};
use serde_json::Value;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(60);

async fn get(cluster: &Cluster, i: usize, path: &str) -> Option<Value> {
    let answer = cluster
        .http
        .get(cluster.nodes[i].url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    answer.status().is_success().then_some(())?;
    answer.json().await.ok()
}

/// The node names `/v1/nodes` on node `i` lists, sorted.
async fn names(cluster: &Cluster, i: usize) -> Option<Vec<String>> {
    let nodes = get(cluster, i, "/v1/nodes").await?;
    let mut names: Vec<String> = nodes
        .as_array()?
        .iter()
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Some(names)
}

/// Node `i`'s Raft view: its leader's id and the voters' ids.
async fn raft(cluster: &Cluster, i: usize) -> Option<(u64, Vec<u64>)> {
    let info = get(cluster, i, "/internal/node/info").await?;
    let leader = info["leader_id"].as_u64()?;
    let voters = info["voters"]
        .as_array()?
        .iter()
        .filter_map(|v| v[0].as_u64())
        .collect();
    Some((leader, voters))
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_the_leader_leaves_members_that_elect_a_new_one_and_leave_works() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = eventually(WITHIN, "a leader", || cluster.leader()).await;
    let status = eventually(WITHIN, "the leader's /v1/status", || {
        get(&cluster, leader, "/v1/status")
    })
    .await;
    let name = status["node"].as_str().unwrap().to_string();
    assert_eq!(status["leader"], name.as_str(), "{status}");
    let (leader_id, voters) = raft(&cluster, leader).await.unwrap();
    assert_eq!(voters.len(), 3);

    // The leader removes itself (a node without allocs may go without a drain).
    let answer = cluster
        .http
        .delete(cluster.nodes[leader].url(&format!("/v1/nodes/{name}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let code = answer.status().as_u16();
    let body = answer.text().await.unwrap();
    assert_eq!(code, 200, "{body}");

    // The other two elect a leader among themselves and take writes.
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let survivor = others[0];
    eventually(WITHIN, "a new leader of the two members", || async {
        let (new_leader, voters) = raft(&cluster, survivor).await?;
        (new_leader != leader_id && voters.len() == 2 && !voters.contains(&leader_id)).then_some(())
    })
    .await;
    eventually(WITHIN, "a write after the leader left", || async {
        let answer = cluster
            .put_task(survivor, "after", "img:1", None)
            .await
            .ok()?;
        (answer.status() == 201).then_some(())
    })
    .await;
    let left = names(&cluster, survivor).await.unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&name), "{left:?}");

    // `mill leave` through one of them: it drains (nothing to move) and removes itself.
    let leaving = others[1];
    let out = tokio::time::timeout(
        WITHIN,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_mill"))
            .args([
                "--address",
                &cluster.nodes[leaving].url(""),
                "--token",
                TOKEN,
            ])
            .arg("leave")
            .env_remove("MILL_ADDRESS")
            .env_remove("MILL_TOKEN")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mill leave finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("left the cluster"), "{stdout}");
    let last = others[0];
    eventually(
        WITHIN,
        "the last member alone, leading and writable",
        || async {
            let (_, voters) = raft(&cluster, last).await?;
            (voters.len() == 1).then_some(())?;
            let answer = cluster.put_task(last, "alone", "img:1", None).await.ok()?;
            (answer.status() == 201).then_some(())
        },
    )
    .await;
    assert_eq!(names(&cluster, last).await.unwrap().len(), 1);
}

//! Node lifecycle on a 3-node cluster: drain then remove, and removal refused while the
//! node still runs allocs (`POST /v1/nodes/{id}/drain`, `DELETE /v1/nodes/{id}`).

use super::harness::{phase, service, summary, Cluster, Sampler, TOKEN, WITHIN};
use super::support::eventually;
use mill_crds::AllocPhase;
use serde_json::{json, Value};

/// The index of a node that does not lead and hosts a replica of `web`.
async fn follower_with_web(cluster: &Cluster) -> usize {
    let leader = cluster.wait_leader().await;
    let allocs = cluster.allocs("web").await;
    (0..cluster.nodes.len())
        .find(|&i| {
            i != leader
                && allocs.iter().any(|a| {
                    a.spec.node_name.as_deref() == Some(&format!("node-{}", i + 1))
                        && !phase(a).is_terminal()
                })
        })
        .expect("a follower hosting a web replica")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_node_is_emptied_without_downtime_then_removed() {
    let cluster = Cluster::start(&[]).await;
    let v1 = cluster.images.v1.clone();
    cluster
        .deploy(&service("web", &v1, 3, ""))
        .await
        .assert_success();
    cluster.wait_settled("web", &v1, 3).await;
    let victim = follower_with_web(&cluster).await;
    let name = format!("node-{}", victim + 1);
    let via = (victim + 1) % 3;
    let sampler = Sampler::start(&cluster, via, "web").await;
    let answer = cluster
        .http
        .post(cluster.nodes[via].url(&format!("/v1/nodes/{name}/drain")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status().as_u16(),
        200,
        "{}",
        answer.text().await.unwrap()
    );
    let allocs = eventually(WITHIN, &format!("{name} drained"), || async {
        let allocs = cluster.allocs("web").await;
        let live: Vec<_> = allocs.iter().filter(|a| !phase(a).is_terminal()).collect();
        let done = live.len() == 3
            && live.iter().all(|a| {
                phase(a) == AllocPhase::Healthy && a.spec.node_name.as_deref() != Some(&name)
            });
        done.then_some(allocs)
    })
    .await;
    let samples = sampler.finish().await;
    let min = samples.iter().min().copied().unwrap_or_default();
    assert!(
        min >= 3,
        "the healthy count dropped to {min} during the drain: {samples:?}; {:#?}",
        summary(&allocs)
    );
    let nodes: Value = cluster
        .http
        .get(cluster.nodes[via].url("/v1/nodes"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == json!(name))
        .cloned();
    assert_eq!(
        entry.as_ref().map(|n| n["status"].clone()),
        Some(json!("draining")),
        "{nodes}"
    );

    let removed = eventually(WITHIN, &format!("{name} removed"), || async {
        let answer = cluster
            .http
            .delete(cluster.nodes[via].url(&format!("/v1/nodes/{name}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?;
        // 409 while the drain's last stops are still being recorded.
        (answer.status().as_u16() == 200).then_some(())
    })
    .await;
    let () = removed;
    eventually(
        WITHIN,
        &format!("{name} out of the Node objects"),
        || async {
            let nodes = cluster.nodes_objects().await?;
            (!nodes
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(&name)))
            .then_some(())
        },
    )
    .await;
    // ...and out of the Raft membership: two voters left.
    eventually(WITHIN, "two voters", || async {
        let info: Value = cluster
            .http
            .get(cluster.nodes[via].url("/internal/node/info"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let voters = info["voters"]
            .as_array()
            .map(Vec::len)
            .or_else(|| info["voters"].as_object().map(serde_json::Map::len))?;
        (voters == 2).then_some(())
    })
    .await;
    cluster.nodes[victim].kill9();
    // The cluster keeps working without it: a scale-up lands on the two others.
    cluster
        .deploy_via(via, &service("web", &v1, 4, ""))
        .await
        .assert_success();
    let allocs = cluster.wait_settled("web", &v1, 4).await;
    assert!(
        allocs
            .iter()
            .all(|a| a.spec.node_name.as_deref() != Some(&name)),
        "{:#?}",
        summary(&allocs)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_node_that_still_runs_allocs_is_refused() {
    let cluster = Cluster::start(&[]).await;
    let v1 = cluster.images.v1.clone();
    cluster
        .deploy(&service("web", &v1, 3, ""))
        .await
        .assert_success();
    let before = cluster.wait_settled("web", &v1, 3).await;
    let victim = follower_with_web(&cluster).await;
    let name = format!("node-{}", victim + 1);
    let answer = cluster
        .http
        .delete(cluster.nodes[(victim + 1) % 3].url(&format!("/v1/nodes/{name}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let code = answer.status().as_u16();
    let body = answer.text().await.unwrap();
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("node still has active allocations"), "{body}");
    let nodes = cluster.nodes_objects().await.unwrap();
    assert!(
        nodes
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(&name)),
        "the Node object stays"
    );
    let after = cluster.wait_settled("web", &v1, 3).await;
    let names = |allocs: &[mill_crds::Alloc]| {
        let mut names: Vec<String> = allocs
            .iter()
            .filter_map(|a| a.metadata.name.clone())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&after), names(&before), "nothing moved");
}

//! Task runs on a 3-node cluster: exit codes, timeout, a lost host, and garbage
//! collection of runs. Runs are made the way spawning makes them: a Task template and an
//! unplaced task Alloc, which the scheduler places and the agent runs once.

use super::harness::{phase, summary, Cluster, HEARTBEAT_TIMEOUT, TOKEN, WITHIN};
use super::support::eventually;
use mill_crds::AllocPhase;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn template(cluster: &Cluster, script: &str) -> Value {
    json!({
        "image": cluster.images.v1,
        "command": ["/bin/sh", "-c", script],
        "cpu": 0.02,
        "memory": "16M",
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_exits_0_is_stopped_and_one_that_exits_1_failed() {
    let cluster = Cluster::start(&[]).await;
    cluster
        .spawn_task("ok", "ok-a1b2", template(&cluster, "echo done"), None)
        .await;
    cluster
        .spawn_task("bad", "bad-c3d4", template(&cluster, "exit 1"), None)
        .await;
    let ok = cluster.wait_ended("ok-a1b2").await;
    let status = ok.status.clone().unwrap();
    assert_eq!(
        (status.phase, status.exit_code),
        (AllocPhase::Stopped, Some(0)),
        "{status:?}"
    );
    let bad = cluster.wait_ended("bad-c3d4").await;
    let status = bad.status.clone().unwrap();
    assert_eq!(
        (status.phase, status.exit_code),
        (AllocPhase::Failed, Some(1)),
        "{status:?}"
    );
    assert_eq!(status.restarts, 0, "a task is never restarted: {status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_past_its_timeout_is_killed_and_failed() {
    let cluster = Cluster::start(&[]).await;
    cluster
        .spawn_task(
            "slow",
            "slow-e5f6",
            template(&cluster, "sleep 300"),
            Some("2s"),
        )
        .await;
    let run = cluster.wait_ended("slow-e5f6").await;
    let status = run.status.clone().unwrap();
    assert_eq!(status.phase, AllocPhase::Failed, "{status:?}");
    assert!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("timeout")),
        "{status:?}"
    );
    // The container is gone: no task of it runs in any node's containerd namespace.
    eventually(WITHIN, "the timed-out container stopped", || async {
        let running = cluster.nodes.iter().any(|n| {
            cluster
                .ctd
                .tasks(&n.namespace)
                .iter()
                .any(|(_, _, s)| s == "RUNNING")
        });
        (!running).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_on_a_lost_host_fails_with_node_lost_and_is_not_retried() {
    let cluster = Cluster::start(&[]).await;
    cluster
        .spawn_task("long", "long-g7h8", template(&cluster, "sleep 300"), None)
        .await;
    let node = eventually(WITHIN, "the task running", || async {
        let alloc = cluster
            .all_allocs()
            .await
            .into_iter()
            .find(|a| a.metadata.name.as_deref() == Some("long-g7h8"))?;
        // A task has no health check: running is healthy.
        matches!(phase(&alloc), AllocPhase::Running | AllocPhase::Healthy)
            .then(|| alloc.spec.node_name.clone())?
    })
    .await;
    let index: usize = node.trim_start_matches("node-").parse::<usize>().unwrap() - 1;
    cluster.lose_host(index);
    let run = eventually(HEARTBEAT_TIMEOUT + WITHIN, "the run failed", || async {
        let alloc = cluster
            .all_allocs()
            .await
            .into_iter()
            .find(|a| a.metadata.name.as_deref() == Some("long-g7h8"))?;
        phase(&alloc).is_terminal().then_some(alloc)
    })
    .await;
    let status = run.status.clone().unwrap();
    assert_eq!(
        (status.phase, status.reason.as_deref()),
        (AllocPhase::Failed, Some("node lost")),
        "{status:?}"
    );
    let runs: Vec<_> = cluster
        .all_allocs()
        .await
        .into_iter()
        .filter(|a| a.spec.owner.name == "long")
        .collect();
    assert_eq!(runs.len(), 1, "not retried: {:#?}", summary(&runs));
}

/// SPEC §6: terminal task allocs beyond the newest 100 per task are deleted.
const TASK_RUNS_KEPT: usize = 100;
const RUNS: usize = 500;
/// Runs kept going at once (created, not yet ended).
const IN_FLIGHT: usize = 30;

#[tokio::test(flavor = "multi_thread")]
async fn after_500_task_runs_the_alloc_count_stays_within_the_gc_limits() {
    let cluster = Cluster::start(&[]).await;
    let template = template(&cluster, "true");
    let mut most = 0;
    let mut next = 0;
    let mut pending: BTreeSet<String> = BTreeSet::new();
    let mut progress = Instant::now();
    while next < RUNS || !pending.is_empty() {
        while next < RUNS && pending.len() < IN_FLIGHT {
            let name = format!("job-{next:04}");
            cluster
                .spawn_task("job", &name, template.clone(), None)
                .await;
            pending.insert(name);
            next += 1;
        }
        let allocs = cluster.all_allocs().await;
        most = most.max(allocs.len());
        // The ended runs gc may not have collected yet are at most the ones that ended
        // since its last plan: bounded by what runs at once.
        assert!(
            allocs.len() <= TASK_RUNS_KEPT + 2 * IN_FLIGHT,
            "{} Alloc objects after {next} runs were made: gc does not keep up",
            allocs.len()
        );
        let before = pending.len();
        pending.retain(|name| {
            allocs
                .iter()
                .find(|a| a.metadata.name.as_ref() == Some(name))
                .is_some_and(|a| !phase(a).is_terminal())
        });
        if pending.len() < before {
            progress = Instant::now();
        }
        assert!(
            progress.elapsed() < WITHIN,
            "no task run ended for {WITHIN:?}; still running: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let allocs = eventually(WITHIN, "the newest 100 runs kept", || async {
        let allocs = cluster.all_allocs().await;
        (allocs.len() == TASK_RUNS_KEPT).then_some(allocs)
    })
    .await;
    assert!(
        allocs.iter().all(|a| phase(a) == AllocPhase::Stopped),
        "every run exited 0: {:#?}",
        summary(&allocs)
    );
    // The kept runs are the newest: runs end roughly in the order they were made (at most
    // IN_FLIGHT run at once), so none of the oldest ones survives.
    let oldest_kept = allocs
        .iter()
        .filter_map(|a| a.metadata.name.clone())
        .min()
        .unwrap();
    let bound = format!("job-{:04}", RUNS - TASK_RUNS_KEPT - 2 * IN_FLIGHT);
    assert!(
        oldest_kept >= bound,
        "the newest runs are the ones kept, yet {oldest_kept} is"
    );
    eprintln!("gc: at most {most} Alloc objects during {RUNS} runs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spawned_task_killed_through_the_api_ends_stopped() {
    let cluster = Cluster::start(&[]).await;
    let node = &cluster.nodes[1];
    let spawned: Value = cluster
        .http
        .post(node.url("/v1/tasks/spawn"))
        .bearer_auth(TOKEN)
        .json(&json!({
            "image": cluster.images.v1,
            "command": ["/bin/sh", "-c", "sleep 300"],
            "cpu": 0.02,
            "memory": "16M",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = spawned["id"].as_str().expect("an id").to_string();
    let task = |id: String| {
        let cluster = &cluster;
        async move {
            let answer = cluster
                .http
                .get(cluster.nodes[1].url(&format!("/v1/tasks/{id}")))
                .bearer_auth(TOKEN)
                .send()
                .await
                .ok()?;
            answer.json::<Value>().await.ok()
        }
    };
    eventually(WITHIN, &format!("task {id} running"), || async {
        let t = task(id.clone()).await?;
        matches!(t["status"].as_str(), Some("running" | "healthy")).then_some(())
    })
    .await;
    let answer = cluster
        .http
        .delete(node.url(&format!("/v1/tasks/{id}")))
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
    let ended = eventually(WITHIN, &format!("task {id} stopped"), || async {
        let t = task(id.clone()).await?;
        (t["status"] == json!("stopped")).then_some(t)
    })
    .await;
    assert!(ended["finished_at"].is_string(), "{ended}");
    let runs = cluster.all_allocs().await;
    assert_eq!(runs.len(), 1, "never restarted: {:#?}", summary(&runs));
}

//! Task runs on a 3-node cluster: exit codes, timeout, a lost host, a kill, and garbage
//! collection of runs. Runs are spawned through `POST /v1/tasks/spawn` (an inline image:
//! the image's last path segment, `web`, names the task); the scheduler places them and
//! the agent runs each once.

use super::harness::{phase, summary, Cluster, FAST_LOSS, HEARTBEAT_TIMEOUT, TOKEN, WITHIN};
use super::support::eventually;
use mill_crds::AllocPhase;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A spawn request running `script` in the web image.
fn inline(cluster: &Cluster, script: &str) -> Value {
    json!({
        "image": cluster.images.v1,
        "command": ["/bin/sh", "-c", script],
        "cpu": 0.02,
        "memory": "16M",
    })
}

/// The task run (Alloc) `id`, if it exists.
async fn run_of(cluster: &Cluster, id: &str) -> Option<mill_crds::Alloc> {
    cluster
        .all_allocs()
        .await
        .into_iter()
        .find(|a| a.metadata.name.as_deref() == Some(id))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_exits_0_is_stopped_and_one_that_exits_1_failed() {
    let cluster = Cluster::start(&[]).await;
    let ok = cluster.spawn(inline(&cluster, "echo done")).await;
    let bad = cluster.spawn(inline(&cluster, "exit 1")).await;
    let ok = cluster.wait_ended(&ok).await;
    let status = ok.status.clone().unwrap();
    assert_eq!(
        (status.phase, status.exit_code),
        (AllocPhase::Stopped, Some(0)),
        "{status:?}"
    );
    let bad = cluster.wait_ended(&bad).await;
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
    let mut request = inline(&cluster, "sleep 300");
    request["timeout"] = json!("2s");
    let id = cluster.spawn(request).await;
    let run = cluster.wait_ended(&id).await;
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
    let cluster = Cluster::start(&[FAST_LOSS]).await;
    let id = cluster.spawn(inline(&cluster, "sleep 300")).await;
    let node = eventually(WITHIN, "the task running", || async {
        let alloc = run_of(&cluster, &id).await?;
        // A task has no health check: running is healthy.
        matches!(phase(&alloc), AllocPhase::Running | AllocPhase::Healthy)
            .then(|| alloc.spec.node_name.clone())?
    })
    .await;
    let index: usize = node.trim_start_matches("node-").parse::<usize>().unwrap() - 1;
    cluster.lose_host(index);
    let run = eventually(HEARTBEAT_TIMEOUT + WITHIN, "the run failed", || async {
        let alloc = run_of(&cluster, &id).await?;
        phase(&alloc).is_terminal().then_some(alloc)
    })
    .await;
    let status = run.status.clone().unwrap();
    assert_eq!(
        (status.phase, status.reason.as_deref()),
        (AllocPhase::Failed, Some("node lost")),
        "{status:?}"
    );
    let runs = cluster.all_allocs().await;
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
    let request = inline(&cluster, "true");
    let mut most = 0;
    let mut next = 0;
    // The runs' ids in the order they were spawned.
    let mut order: Vec<String> = Vec::new();
    let mut pending: BTreeSet<String> = BTreeSet::new();
    let mut progress = Instant::now();
    while next < RUNS || !pending.is_empty() {
        // Refill to IN_FLIGHT with concurrent spawns (their writes share Raft rounds).
        let wanted = (IN_FLIGHT - pending.len().min(IN_FLIGHT)).min(RUNS - next);
        let spawns = (0..wanted).map(|_| cluster.spawn(request.clone()));
        for id in futures::future::join_all(spawns).await {
            order.push(id.clone());
            pending.insert(id);
        }
        next += wanted;
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
    // (An id reused after its run was collected counts at its newest spawn.)
    let oldest_kept = allocs
        .iter()
        .filter_map(|a| {
            let name = a.metadata.name.as_ref()?;
            order.iter().rposition(|id| id == name)
        })
        .min()
        .unwrap();
    let bound = RUNS - TASK_RUNS_KEPT - 2 * IN_FLIGHT;
    assert!(
        oldest_kept >= bound,
        "the newest runs are the ones kept, yet run {oldest_kept} of {RUNS} is"
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

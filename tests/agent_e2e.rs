//! The node agent end to end: real `mill init` processes, a private containerd, a local
//! registry, images built from busybox-static. Allocs are created through the API with
//! nodeName and hostPort set, as the scheduler will.

#[path = "support/mod.rs"]
mod support;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use mill_crds::AllocPhase;
use serde_json::json;
use std::time::Duration;
use support::containerd::Containerd;
use support::images;
use support::node::{http_get, service_spec, task_spec, MillNode, TOKEN};
use support::registry::Registry;
use support::{eventually, free_port};

/// Generous bound for anything container-related on a loaded 2-core CI machine.
const WITHIN: Duration = Duration::from_secs(60);

/// A node plus its containerd, with an image archive loaded through `mill image load`.
async fn node_with(ctd: &Containerd, def: &images::ImageDef, env: &[(&str, &str)]) -> MillNode {
    let node = MillNode::start(ctd, env).await;
    let archive = images::build(def, ctd.dir.path());
    node.load_image(&archive);
    node
}

/// A port in the default pool that nothing listens on now.
fn pool_port() -> u16 {
    loop {
        let p = 20000 + (free_port() % 10000);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_from_a_local_registry_and_serves_http_on_its_port() {
    let ctd = Containerd::start();
    let registry = Registry::start();
    let archive = images::build(&images::httpd("mill.test/httpd:1"), ctd.dir.path());
    let image = registry.push(&archive, "httpd:1");
    let node = MillNode::start(&ctd, &[]).await;
    let port = pool_port();
    node.create_alloc("web-1", service_spec(&image, port)).await;
    let status = node.wait_phase("web-1", AllocPhase::Healthy, WITHIN).await;
    assert_eq!(
        status.address.as_deref(),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert!(status.container_id.is_some() && status.started_at.is_some());
    let (code, body) = eventually(WITHIN, "HTTP on $PORT", || http_get(port, "/health")).await;
    assert_eq!((code, body.trim()), (200, "ok"));
    // Pulled into the node's namespace under its canonical name.
    let images = ctd.ctr_ok(&node.namespace, &["images", "ls", "-q"]);
    assert!(images.contains(&image), "{images}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_tag_fails_with_the_registrys_reason() {
    let ctd = Containerd::start();
    let registry = Registry::start();
    let archive = images::build(&images::httpd("mill.test/httpd:1"), ctd.dir.path());
    registry.push(&archive, "httpd:1");
    let node = MillNode::start(&ctd, &[]).await;
    let image = format!("{}/httpd:nope", registry.host);
    node.create_alloc("web-1", service_spec(&image, pool_port()))
        .await;
    let status = node.wait_phase("web-1", AllocPhase::Failed, WITHIN).await;
    let reason = status.reason.unwrap_or_default();
    assert!(
        reason.starts_with("image pull failed: manifest unknown"),
        "reason: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_imported_archive_runs_with_env_secrets_and_service_addresses_injected() {
    let ctd = Containerd::start();
    let node = node_with(&ctd, &images::httpd("mill.test/httpd:1"), &[]).await;
    let client = node.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db.url"},
        "stringData": {"value": "postgres://s3cret@db"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let services: Api<mill_crds::Service> = Api::namespaced(client, "default");
    let service: mill_crds::Service = serde_json::from_value(json!({
        "apiVersion": "mill.dev/v1", "kind": "Service",
        "metadata": {"name": "ojd"},
        "spec": {"image": "mill.test/httpd:1", "port": 7000},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();

    let port = pool_port();
    let mut spec = service_spec("mill.test/httpd:1", port);
    spec["template"]["env"] = json!({
        "DATABASE_URL": "${secret(db.url)}",
        "OJD": "tcp://${service.ojd.address}",
        "MODE": "alloc",
        "SHELLISH": "$HOME",
    });
    node.create_alloc("web-1", spec).await;
    node.wait_phase("web-1", AllocPhase::Healthy, WITHIN).await;
    let (_, env) = eventually(WITHIN, "env.txt served", || async {
        http_get(port, "/env.txt").await.filter(|(c, _)| *c == 200)
    })
    .await;
    for line in [
        "DATABASE_URL=postgres://s3cret@db".to_string(),
        "OJD=tcp://ojd.mill:7000".to_string(),
        "MODE=alloc".to_string(),
        "SHELLISH=$HOME".to_string(),
        format!("PORT={port}"),
        "MILL_ALLOC_ID=web-1".to_string(),
        "MILL_SERVICE=web".to_string(),
        "MILL_NODE=node-1".to_string(),
        "MILL_NAMESPACE=default".to_string(),
    ] {
        assert!(
            env.lines().any(|l| l == line),
            "{line} missing from:\n{env}"
        );
    }
}

/// The agent remembers resolved images: a name loaded again with a different image must
/// start the new one, not what the name pointed at before.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_loaded_again_under_the_same_name_starts_the_new_one() {
    let ctd = Containerd::start();
    let first = images::httpd("mill.test/httpd:1");
    let node = node_with(&ctd, &first, &[]).await;
    let mode = |port: u16| async move {
        let (_, env) = eventually(WITHIN, "env.txt served", || async {
            http_get(port, "/env.txt").await.filter(|(c, _)| *c == 200)
        })
        .await;
        env.lines()
            .find_map(|l| l.strip_prefix("MODE="))
            .map(str::to_string)
    };
    let port = pool_port();
    node.create_alloc("web-1", service_spec("mill.test/httpd:1", port))
        .await;
    node.wait_phase("web-1", AllocPhase::Healthy, WITHIN).await;
    assert_eq!(mode(port).await.as_deref(), Some("image"));

    let second = images::ImageDef {
        env: vec!["PATH=/bin".into(), "MODE=reloaded".into()],
        ..first
    };
    node.load_image(&images::build(&second, ctd.dir.path()));
    let port = pool_port();
    node.create_alloc("web-2", service_spec("mill.test/httpd:1", port))
        .await;
    node.wait_phase("web-2", AllocPhase::Healthy, WITHIN).await;
    assert_eq!(
        mode(port).await.as_deref(),
        Some("reloaded"),
        "web-2 started the image the name pointed at before the second load"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_quota_and_memory_limit_are_in_the_containers_cgroup() {
    let ctd = Containerd::start();
    let node = node_with(&ctd, &images::httpd("mill.test/httpd:1"), &[]).await;
    let mut spec = service_spec("mill.test/httpd:1", pool_port());
    spec["template"]["cpu"] = json!(0.5);
    spec["template"]["memory"] = json!("96Mi");
    node.create_alloc("web-1", spec).await;
    let status = node.wait_phase("web-1", AllocPhase::Healthy, WITHIN).await;
    let id = status.container_id.unwrap();
    let cgroup = format!("{}/{id}", node.namespace);
    let v2 = std::path::Path::new("/sys/fs/cgroup").join(&cgroup);
    if v2.join("cpu.max").exists() {
        let cpu = std::fs::read_to_string(v2.join("cpu.max")).unwrap();
        assert_eq!(cpu.trim(), "50000 100000");
        let mem = std::fs::read_to_string(v2.join("memory.max")).unwrap();
        assert_eq!(mem.trim(), (96u64 << 20).to_string());
    } else {
        let base = std::path::Path::new("/sys/fs/cgroup");
        let read = |controller: &str, file: &str| {
            std::fs::read_to_string(base.join(controller).join(&cgroup).join(file))
                .unwrap_or_else(|e| panic!("{controller}/{cgroup}/{file}: {e}"))
                .trim()
                .to_string()
        };
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (96u64 << 20).to_string()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_past_its_memory_limit_is_reported_oom_killed() {
    let ctd = Containerd::start();
    let node = node_with(&ctd, &images::memory_hog("mill.test/hog:1"), &[]).await;
    let mut spec = task_spec("mill.test/hog:1", pool_port());
    spec["template"]["memory"] = json!("32Mi");
    node.create_alloc("hog-1", spec).await;
    let status = node.wait_phase("hog-1", AllocPhase::Failed, WITHIN).await;
    assert_eq!(status.reason.as_deref(), Some("OOM killed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_ignoring_sigterm_is_killed_after_the_stop_grace() {
    let ctd = Containerd::start();
    let node = node_with(
        &ctd,
        &images::ignores_sigterm("mill.test/stubborn:1"),
        &[("MILL_STOP_GRACE_MS", "1500")],
    )
    .await;
    node.create_alloc("web-1", service_spec("mill.test/stubborn:1", pool_port()))
        .await;
    node.wait_phase("web-1", AllocPhase::Healthy, WITHIN).await;
    node.stop_alloc("web-1").await;
    node.wait_phase("web-1", AllocPhase::Stopped, WITHIN).await;
    let log = node.log();
    assert!(
        log.contains("ignored SIGTERM"),
        "the agent never escalated:\n{log}"
    );
    eventually(WITHIN, "the container removed", || async {
        ctd.containers(&node.namespace).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_service_restarts_in_place_with_backoff_and_counts_restarts() {
    let ctd = Containerd::start();
    let node = node_with(
        &ctd,
        &images::exits3("mill.test/crash:1"),
        &[("MILL_RESTART_BACKOFF_MS", "200,400,800")],
    )
    .await;
    node.create_alloc("web-1", service_spec("mill.test/crash:1", pool_port()))
        .await;
    let status = node
        .wait_status("web-1", WITHIN, "3 restarts", |s| s.restarts >= 3)
        .await;
    assert_ne!(
        status.phase,
        AllocPhase::Failed,
        "services are never failed for exiting"
    );
    let reasons = node
        .wait_status("web-1", WITHIN, "a restart reason", |s| {
            s.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("exited with code 3; restarting in"))
        })
        .await;
    assert_eq!(reasons.exit_code, Some(3));
    // Restarted in place: one container all along.
    assert_eq!(ctd.containers(&node.namespace).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_end_stopped_on_exit_0_and_failed_with_the_code_otherwise() {
    let ctd = Containerd::start();
    let node = node_with(&ctd, &images::exits3("mill.test/crash:1"), &[]).await;
    node.create_alloc("job-fail", task_spec("mill.test/crash:1", pool_port()))
        .await;
    let mut ok = task_spec("mill.test/crash:1", pool_port());
    ok["template"]["command"] = json!(["/bin/sh", "-c", "echo done"]);
    node.create_alloc("job-ok", ok).await;
    let failed = node
        .wait_phase("job-fail", AllocPhase::Failed, WITHIN)
        .await;
    assert_eq!(failed.reason.as_deref(), Some("exited with code 3"));
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.restarts, 0, "tasks are never restarted");
    let stopped = node.wait_phase("job-ok", AllocPhase::Stopped, WITHIN).await;
    assert_eq!(stopped.exit_code, Some(0));
    eventually(WITHIN, "task containers removed", || async {
        ctd.containers(&node.namespace).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_past_its_timeout_is_killed_and_failed() {
    let ctd = Containerd::start();
    let node = node_with(&ctd, &images::ignores_sigterm("mill.test/stubborn:1"), &[]).await;
    let mut spec = task_spec("mill.test/stubborn:1", pool_port());
    spec["timeout"] = json!("2s");
    node.create_alloc("job-1", spec).await;
    let status = node.wait_phase("job-1", AllocPhase::Failed, WITHIN).await;
    assert_eq!(status.reason.as_deref(), Some("timeout after 2s"));
}

#[tokio::test(flavor = "multi_thread")]
async fn running_containers_are_readopted_after_kill_9_with_the_same_pid_and_logs_continue() {
    let ctd = Containerd::start();
    let node = node_with(&ctd, &images::httpd("mill.test/httpd:1"), &[]).await;
    let mut spec = service_spec("mill.test/httpd:1", pool_port());
    spec["template"]["command"] = json!([
        "/bin/sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"
    ]);
    node.create_alloc("ticker", spec).await;
    let before = node.wait_phase("ticker", AllocPhase::Healthy, WITHIN).await;
    let tasks_before = ctd.tasks(&node.namespace);
    assert_eq!(tasks_before.len(), 1);
    let lines_before = eventually(WITHIN, "first log lines", || async {
        let n = log_lines(&node, "ticker").await.len();
        (n > 0).then_some(n)
    })
    .await;

    node.kill9();
    node.restart().await;
    eventually(WITHIN, "re-adoption", || async {
        node.log().contains("re-adopted").then_some(())
    })
    .await;
    let tasks_after = ctd.tasks(&node.namespace);
    assert_eq!(
        tasks_after, tasks_before,
        "same container, same pid, still running"
    );
    let after = node.allocs().get("ticker").await.unwrap().status.unwrap();
    assert_eq!(after.container_id, before.container_id);
    assert_eq!(after.restarts, 0);
    let newest_before = lines_before;
    eventually(WITHIN, "logs continuing after the restart", || async {
        let lines = log_lines(&node, "ticker").await;
        (lines.len() > newest_before + 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alloc_stopped_while_its_node_was_down_is_marked_stopped_once_the_agent_is_back() {
    let ctd = Containerd::start();
    // httpd as pid 1 ignores SIGTERM: a short grace keeps the test quick.
    let node = node_with(
        &ctd,
        &images::httpd("mill.test/httpd:1"),
        &[("MILL_STOP_GRACE_MS", "1000")],
    )
    .await;
    node.create_alloc("web", service_spec("mill.test/httpd:1", pool_port()))
        .await;
    node.wait_phase("web", AllocPhase::Healthy, WITHIN).await;

    // mill down with containerd out of its agent's reach, so the stop lands before the
    // agent finds the container again (as when a killed leader's node restarts while the
    // new leader's rollout stops that node's old replica).
    node.kill9();
    let away = ctd.socket.with_extension("away");
    std::fs::rename(&ctd.socket, &away).expect("move the containerd socket aside");
    node.restart().await;
    node.stop_alloc("web").await;
    std::fs::rename(&away, &ctd.socket).expect("put the containerd socket back");

    let status = node.wait_phase("web", AllocPhase::Stopped, WITHIN).await;
    assert!(status.finished_at.is_some(), "{status:?}");
    eventually(WITHIN, "the container removed", || async {
        ctd.tasks(&node.namespace).is_empty().then_some(())
    })
    .await;
}

/// All lines the node has for `alloc` (tail=100000).
async fn log_lines(node: &MillNode, alloc: &str) -> Vec<serde_json::Value> {
    let body = reqwest::Client::new()
        .get(node.url(&format!("/internal/agent/logs/default/{alloc}?tail=100000")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_serve_a_tail_and_follow_new_lines_with_their_stream() {
    let ctd = Containerd::start();
    let node = node_with(&ctd, &images::httpd("mill.test/httpd:1"), &[]).await;
    let mut spec = service_spec("mill.test/httpd:1", pool_port());
    spec["template"]["command"] = json!(["/bin/sh", "-c", "for i in $(seq 1 20); do echo out $i; done; echo oops >&2; i=0; while true; do i=$((i+1)); echo live $i; sleep 0.2; done"]);
    node.create_alloc("chatty", spec).await;
    node.wait_phase("chatty", AllocPhase::Healthy, WITHIN).await;
    let all = eventually(WITHIN, "the first 21 lines", || async {
        let lines = log_lines(&node, "chatty").await;
        (lines.len() >= 21).then_some(lines)
    })
    .await;
    // Within a stream lines keep their order (across streams they need not).
    let stdout: Vec<&serde_json::Value> = all.iter().filter(|l| l["stream"] == "stdout").collect();
    assert_eq!(stdout[0]["line"], "out 1");
    assert_eq!(stdout[19]["line"], "out 20");
    assert_eq!(stdout[0]["alloc"], "chatty");
    assert!(stdout[0]["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(all
        .iter()
        .any(|l| l["line"] == "oops" && l["stream"] == "stderr"));

    let tail = reqwest::Client::new()
        .get(node.url("/internal/agent/logs/default/chatty?tail=3"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(tail.lines().filter(|l| l.starts_with("data: ")).count(), 3);

    let unauthorized = reqwest::Client::new()
        .get(node.url("/internal/agent/logs/default/chatty"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);

    let response = reqwest::Client::new()
        .get(node.url("/internal/agent/logs/default/chatty?tail=1&follow=true"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    let followed = tokio::time::timeout(WITHIN, async {
        while seen.matches("\"live ").count() < 4 {
            match stream.next().await {
                Some(Ok(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                _ => break,
            }
        }
    })
    .await;
    assert!(
        followed.is_ok(),
        "no live lines followed within {WITHIN:?}: {seen}"
    );
    let live = seen.matches("\"live ").count();
    assert!(live >= 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_held_by_a_live_alloc_is_never_given_to_a_second_one() {
    let ctd = Containerd::start();
    // httpd as pid 1 ignores SIGTERM: a short grace keeps the test quick.
    let node = node_with(
        &ctd,
        &images::httpd("mill.test/httpd:1"),
        &[("MILL_STOP_GRACE_MS", "1000")],
    )
    .await;
    let port = pool_port();
    node.create_alloc("first", service_spec("mill.test/httpd:1", port))
        .await;
    node.wait_phase("first", AllocPhase::Healthy, WITHIN).await;
    node.create_alloc("second", service_spec("mill.test/httpd:1", port))
        .await;
    let waiting = node
        .wait_status("second", WITHIN, "a reason naming the taken port", |s| {
            s.reason
                .as_deref()
                .is_some_and(|r| r.contains("waiting for host port"))
        })
        .await;
    assert_eq!(waiting.phase, AllocPhase::Pending);
    assert_eq!(ctd.tasks(&node.namespace).len(), 1);

    // Across an agent restart the port is still known to be held (from the labels).
    node.restart().await;
    eventually(WITHIN, "re-adoption of the first", || async {
        node.log().contains("re-adopted").then_some(())
    })
    .await;
    node.delete_alloc("first").await;
    eventually(WITHIN, "the second running alone on the port", || async {
        let tasks = ctd.tasks(&node.namespace);
        assert!(
            tasks.len() <= 1,
            "two live containers on port {port}: {tasks:?}"
        );
        let status = node.allocs().get("second").await.ok()?.status?;
        (status.phase == AllocPhase::Healthy).then_some(())
    })
    .await;
    let (code, _) = eventually(WITHIN, "the second serving", || http_get(port, "/health")).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_containerd_serves_the_api_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = MillNode::start_on(&dir.path().join("no-such.sock"), &[]).await;
    node.create_alloc("web-1", service_spec("mill.test/httpd:1", pool_port()))
        .await;
    eventually(WITHIN, "a clear error about containerd", || async {
        node.log().contains("is unreachable").then_some(())
    })
    .await;
    // The store works: the alloc can be read back and updated; nobody claimed it runs.
    let alloc = node.allocs().get("web-1").await.unwrap();
    assert!(
        alloc.status.is_none(),
        "status written without a runtime: {:?}",
        alloc.status
    );
    let nodes: Api<mill_crds::Node> = Api::all(node.client());
    let me = nodes.get("node-1").await.unwrap();
    assert!(
        me.status
            .as_ref()
            .and_then(|s| s.last_heartbeat.as_ref())
            .is_none(),
        "heartbeat sent without a runtime"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_heartbeat_reports_capacity_and_subtracts_live_reservations() {
    let ctd = Containerd::start();
    let node = node_with(&ctd, &images::httpd("mill.test/httpd:1"), &[]).await;
    let nodes: Api<mill_crds::Node> = Api::all(node.client());
    let capacity = eventually(WITHIN, "a first heartbeat", || async {
        let status = nodes.get("node-1").await.ok()?.status?;
        status.last_heartbeat.is_some().then_some(status.capacity)
    })
    .await;
    assert!(capacity.cpu >= 1.0 && capacity.memory.bytes() > 0);
    node.create_alloc("web-1", service_spec("mill.test/httpd:1", pool_port()))
        .await;
    let status = eventually(WITHIN, "allocatable to drop by the reservation", || async {
        let s = nodes.get("node-1").await.ok()?.status?;
        (s.alloc_count == 1).then_some(s)
    })
    .await;
    assert!((capacity.cpu - status.allocatable.cpu - 0.5).abs() < 1e-9);
    assert_eq!(
        capacity.memory.bytes() - status.allocatable.memory.bytes(),
        64_000_000
    );
}

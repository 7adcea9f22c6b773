//! `mill deploy` end to end: a real `mill init` node (controllers on its leader, agent on a
//! private containerd), a local registry, the CLI as a process. The deploy's SSE stream
//! is printed as SPEC §8 lines and the service answers HTTP on its alloc address.

#[path = "support/mod.rs"]
mod support;

use kube::api::{Api, ListParams};
use mill_crds::{Alloc, AllocPhase, Deploy, Service};
use std::time::Duration;
use support::cli::{mill, text};
use support::containerd::Containerd;
use support::eventually;
use support::images;
use support::node::MillNode;
use support::registry::Registry;

/// Generous bound for anything container-related on a loaded 2-core CI machine.
const WITHIN: Duration = Duration::from_secs(90);

/// `examples/hello.mill`'s shape, with `image` and `replicas` filled in.
fn hello(image: &str, replicas: u32) -> String {
    hello_saying(image, replicas, "hello")
}

/// [`hello`] serving `greeting`.
fn hello_saying(image: &str, replicas: u32, greeting: &str) -> String {
    format!(
        r#"service "hello" {{
  image    = "{image}"
  command  = ["/bin/sh", "-c", "mkdir -p /www && echo {greeting} > /www/index.html && exec httpd -f -p $PORT -h /www"]
  port     = 8080
  replicas = {replicas}
  cpu      = 0.1
  memory   = "32M"

  health {{
    path     = "/"
    interval = "2s"
    timeout  = "1s"
  }}
}}
"#
    )
}

/// Prints the node's container logs and allocs, to say why a deploy failed.
async fn dump(node: &MillNode) {
    for entry in walkdir::WalkDir::new(&node.data_dir).into_iter().flatten() {
        let path = entry.path();
        if entry.file_type().is_file() && path.to_string_lossy().contains("logs") {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", path.display());
        }
    }
    let allocs: Api<Alloc> = Api::namespaced(node.client(), "default");
    if let Ok(list) = allocs.list(&ListParams::default()).await {
        eprintln!("allocs: {:#?}", list.items);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mill_deploy_prints_the_phases_and_the_service_answers_http() {
    let ctd = Containerd::start();
    let registry = Registry::start();
    let archive = images::build(&images::httpd("mill.test/httpd:1"), ctd.dir.path());
    let image = registry.push(&archive, "mill/busybox:latest");
    // A port range of this test's own, below the kernel's ephemeral ports (32768+): other tests
    // on the host may hold the default's first ports.
    let first = 20_000 + support::free_port() % 12_000;
    let ports = format!("{first}-{}", first + 50);
    let node = MillNode::start(
        &ctd,
        &[
            ("MILL_RUN_CONTROLLERS", "1"),
            ("MILL_WATCHDOG_TICK_MS", "200"),
            ("MILL_PORT_RANGE", &ports),
            // httpd as PID 1 ignores SIGTERM: keep the old instance's stop short.
            ("MILL_STOP_GRACE_MS", "1000"),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.mill");
    std::fs::write(&file, hello(&image, 1)).unwrap();
    let file = file.to_str().unwrap();
    let address = node.url("");

    let out = mill(&address, &["deploy", "-f", file]).await;
    let (stdout, stderr) = text(&out);
    if !out.status.success() {
        dump(&node).await;
    }
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"  hello: scheduled on node-1"), "{stdout}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  hello: healthy (") && l.ends_with("s)")),
        "{stdout}"
    );
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.starts_with("deployed (") && last.ends_with("s)"),
        "{stdout}"
    );

    // The service answers on its alloc's address.
    let allocs: Api<Alloc> = Api::namespaced(node.client(), "default");
    let list = allocs.list(&ListParams::default()).await.unwrap();
    let running: Vec<&Alloc> = list
        .items
        .iter()
        .filter(|a| {
            a.status
                .as_ref()
                .is_some_and(|s| s.phase == AllocPhase::Healthy)
        })
        .collect();
    assert_eq!(running.len(), 1, "{:?}", list.items);
    let address = running[0]
        .status
        .as_ref()
        .and_then(|s| s.address.clone())
        .unwrap();
    let body = eventually(WITHIN, "HTTP on the alloc address", || {
        let url = format!("http://{address}/");
        async move {
            let answer = reqwest::get(&url).await.ok()?;
            (answer.status().as_u16() == 200).then_some(())?;
            answer.text().await.ok()
        }
    })
    .await;
    assert_eq!(body.trim(), "hello");

    // A dry run of a scale-up prints the diff and changes nothing.
    std::fs::write(dir.path().join("hello.mill"), hello(&image, 2)).unwrap();
    let deploys: Api<Deploy> = Api::namespaced(node.client(), "default");
    let before = deploys
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    let out = mill(&node.url(""), &["deploy", "-f", file, "--dry-run"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("  hello: will be updated in place"),
        "{stdout}"
    );
    assert!(stdout.contains("nothing was changed"), "{stdout}");
    let services: Api<Service> = Api::namespaced(node.client(), "default");
    assert_eq!(services.get("hello").await.unwrap().spec.replicas, 1);
    let after = deploys
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(after, before, "a dry run makes no Deploy");

    // A new revision rolls out: the new instance comes up, the old one is stopped.
    std::fs::write(
        dir.path().join("hello.mill"),
        hello_saying(&image, 1, "hello-v2"),
    )
    .unwrap();
    let out = mill(&node.url(""), &["deploy", "-f", file]).await;
    let (stdout, stderr) = text(&out);
    if !out.status.success() {
        dump(&node).await;
    }
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("  hello: old instance stopped"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("deployed ("), "{stdout}");
    let list = allocs.list(&ListParams::default()).await.unwrap();
    let healthy: Vec<String> = list
        .items
        .iter()
        .filter(|a| {
            a.status
                .as_ref()
                .is_some_and(|s| s.phase == AllocPhase::Healthy)
        })
        .filter_map(|a| a.status.as_ref()?.address.clone())
        .collect();
    assert_eq!(
        healthy.len(),
        1,
        "one replica after the rollout: {:?}",
        list.items
    );
    let url = format!("http://{}/", healthy[0]);
    let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert_eq!(body.trim(), "hello-v2");
}

#[tokio::test(flavor = "multi_thread")]
async fn mill_deploy_of_a_service_that_never_gets_healthy_says_failed_and_exits_1() {
    let ctd = Containerd::start();
    let first = 20_000 + support::free_port() % 12_000;
    let ports = format!("{first}-{}", first + 50);
    let node = MillNode::start(
        &ctd,
        &[
            ("MILL_RUN_CONTROLLERS", "1"),
            ("MILL_WATCHDOG_TICK_MS", "200"),
            ("MILL_PORT_RANGE", &ports),
        ],
    )
    .await;
    let archive = images::build(&images::unhealthy("mill.test/unhealthy:1"), ctd.dir.path());
    node.load_image(&archive);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sick.mill");
    std::fs::write(
        &file,
        r#"service "sick" {
  image  = "mill.test/unhealthy:1"
  port   = 8080
  cpu    = 0.1
  memory = "32M"
  health {
    path     = "/health"
    interval = "1s"
    timeout  = "1s"
  }
  update {
    health_timeout = "2s"
  }
}
"#,
    )
    .unwrap();
    let out = mill(&node.url(""), &["deploy", "-f", file.to_str().unwrap()]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("  sick: failed: "), "{stdout}");
    assert!(!stdout.contains("  sick: healthy"), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("deploy failed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mill_deploy_of_an_invalid_file_lists_the_problems_and_changes_nothing() {
    let ctd = Containerd::start();
    let node = MillNode::start(&ctd, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.mill");
    std::fs::write(
        &file,
        "service \"hello\" {\n  image = \"x\"\n  port = 99999999\n}\n",
    )
    .unwrap();
    let out = mill(&node.url(""), &["deploy", "-f", file.to_str().unwrap()]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("bad.mill:3:"), "{stderr}");
    let services: Api<Service> = Api::namespaced(node.client(), "default");
    assert!(services
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn mill_deploy_says_what_to_do_when_the_cluster_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.mill");
    std::fs::write(&file, hello("busybox", 1)).unwrap();
    let address = format!("http://127.0.0.1:{}", support::free_port());
    let out = mill(&address, &["deploy", "-f", file.to_str().unwrap()]).await;
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "is mill running? tried {address}; set --address or MILL_ADDRESS"
        )),
        "{stderr}"
    );
}

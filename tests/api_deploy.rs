//! `POST /v1/deploy` against a live store (no controllers): bad configs change nothing,
//! a good one is one transaction, a dry run only answers the diff; and the CLI's
//! `apply` of manifests, `--detach` and token errors.

mod common;

use common::{Harness, TOKEN};
use serde_json::Value;

const HELLO: &str = r#"
service "hello" {
  image    = "127.0.0.1:5000/mill/busybox:latest"
  command  = ["/bin/sh", "-c", "exec httpd -f -p $PORT -h /"]
  port     = 8080
  replicas = 2
  cpu      = 0.1
  memory   = "32M"
}

task "report" {
  image = "127.0.0.1:5000/mill/busybox:latest"
  command = ["/bin/true"]
}
"#;

async fn post(h: &Harness, query: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/deploy{query}", h.url))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn count(h: &Harness, resource: &str) -> usize {
    h.store.list(resource, None).0.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_a_400_with_every_problem_and_stores_nothing() {
    let h = Harness::start();
    let before = h.store.applied_rv();
    let bad = "service \"hello\" {\n  image = \"busybox\"\n  port = 99999999\n  replicas = -1\n}\n";
    let answer = post(&h, "", bad).await;
    assert_eq!(answer.status().as_u16(), 400);
    let body: Value = answer.json().await.unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("nothing was changed"));
    let details = body["details"].as_array().unwrap();
    assert!(details.len() >= 2, "every problem is listed: {body}");
    for d in details {
        assert!(d["line"].as_u64().unwrap() >= 1);
        assert!(d["col"].as_u64().unwrap() >= 1);
        assert!(!d["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(count(&h, "mill.dev/services"), 0);
    assert_eq!(count(&h, "mill.dev/deploys"), 0);
    assert_eq!(h.store.applied_rv(), before, "nothing was proposed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_without_a_token_is_refused() {
    let h = Harness::start();
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/deploy", h.url))
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    assert_eq!(count(&h, "mill.dev/services"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_deploy_stores_services_tasks_and_deploy_in_one_transaction() {
    let h = Harness::start();
    let answer = post(&h, "?namespace=shop", HELLO).await;
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(
        answer.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    drop(answer);
    let service = h
        .stored("mill.dev/services", Some("shop"), "hello")
        .unwrap();
    let task = h.stored("mill.dev/tasks", Some("shop"), "report").unwrap();
    let deploys = h.store.list("mill.dev/deploys", Some("shop")).0;
    assert_eq!(deploys.len(), 1);
    let deploy = &deploys[0];
    let rv = |o: &Value| {
        o["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        rv(&service),
        rv(deploy),
        "one transaction, one resourceVersion"
    );
    assert_eq!(rv(&task), rv(deploy));
    assert_eq!(service["spec"]["replicas"], 2);
    let name = deploy["metadata"]["name"].as_str().unwrap();
    assert_eq!(service["metadata"]["annotations"]["mill.dev/deploy"], name);
    let changes = &deploy["spec"]["changes"];
    assert_eq!(changes[0]["kind"], "service");
    assert_eq!(changes[0]["name"], "hello");
    assert_eq!(changes[0]["change"], "new");
    assert_eq!(changes[1]["kind"], "task");
    assert_eq!(changes[1]["change"], "new");
    assert!(h.stored("/namespaces", None, "shop").is_some());

    // The same file again changes no service; the deploy says so.
    drop(post(&h, "?namespace=shop", HELLO).await);
    let again = h
        .stored("mill.dev/services", Some("shop"), "hello")
        .unwrap();
    assert_eq!(
        rv(&again),
        rv(&service),
        "an unchanged service is untouched"
    );
    let deploys = h.store.list("mill.dev/deploys", Some("shop")).0;
    assert_eq!(deploys.len(), 2);
    let newest = deploys
        .iter()
        .find(|d| d["metadata"]["name"] != name)
        .unwrap();
    assert_eq!(newest["spec"]["changes"][0]["change"], "unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_service_from_the_file_deletes_it_in_the_deploy() {
    let h = Harness::start();
    drop(post(&h, "", HELLO).await);
    let only_task = "task \"report\" {\n  image = \"busybox\"\n}\n";
    let answer = post(&h, "", only_task).await;
    assert_eq!(answer.status().as_u16(), 200);
    drop(answer);
    assert!(h
        .stored("mill.dev/services", Some("default"), "hello")
        .is_none());
    let deploys = h.store.list("mill.dev/deploys", Some("default")).0;
    let removed = deploys
        .iter()
        .flat_map(|d| d["spec"]["changes"].as_array().unwrap().clone())
        .any(|c| c["name"] == "hello" && c["change"] == "removed");
    assert!(removed, "the deploy records the removal: {deploys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_answers_the_diff_and_changes_nothing() {
    let h = Harness::start();
    let before = h.store.applied_rv();
    let answer = post(&h, "?dryRun=true", HELLO).await;
    assert_eq!(answer.status().as_u16(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["changes"][0]["name"], "hello");
    assert_eq!(body["changes"][0]["change"], "new");
    assert_eq!(count(&h, "mill.dev/services"), 0);
    assert_eq!(count(&h, "mill.dev/deploys"), 0);
    assert_eq!(h.store.applied_rv(), before);
}

fn mill_cli(h: &Harness, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mill"))
        .args(["--address", &h.url, "--token", TOKEN])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mill_apply_of_a_manifest_creates_then_replaces_through_the_kubernetes_api() {
    let h = Harness::start();
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello.yaml");
    let out = mill_cli(&h, &["apply", "-f", manifest]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "service/hello created");
    let first = h
        .stored("mill.dev/services", Some("default"), "hello")
        .unwrap();
    assert_eq!(first["spec"]["port"], 8080);

    let changed = std::fs::read_to_string(manifest)
        .unwrap()
        .replace("replicas: 1", "replicas: 3");
    let path = h.write("hello.yaml", &changed);
    let out = mill_cli(&h, &["apply", "-f", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "service/hello configured");
    let second = h
        .stored("mill.dev/services", Some("default"), "hello")
        .unwrap();
    assert_eq!(second["spec"]["replicas"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mill_deploy_with_a_wrong_token_says_how_to_pass_one() {
    let h = Harness::start();
    let path = h.write("mill.conf", HELLO);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mill"))
        .args(["--address", &h.url, "--token", "wrong", "deploy", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("set MILL_TOKEN or pass --token"),
        "{stderr}"
    );
    assert_eq!(count(&h, "mill.dev/services"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mill_deploy_detach_returns_once_the_deploy_is_stored() {
    let h = Harness::start();
    let path = h.write("mill.conf", HELLO);
    let out = mill_cli(&h, &["deploy", "--detach", "-f", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(h
        .stored("mill.dev/services", Some("default"), "hello")
        .is_some());
    let deploys = h.store.list("mill.dev/deploys", None).0;
    assert_eq!(deploys.len(), 1);
    let name = deploys[0]["metadata"]["name"].as_str().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with(&format!("{name} started")), "{stdout}");
}

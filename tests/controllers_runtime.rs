//! The controllers' runtime (`mill_controllers::runtime::run`) against a live API server
//! and store, with the test playing the agent: a Service gets its replicas placed on a
//! node with distinct host ports, and deleting it stops them before the Service goes.

mod common;

use common::{Harness, TOKEN};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use mill_controllers::runtime::{run, Pacing};
use mill_crds::{Alloc, DesiredState, Node, Service};
use serde_json::json;
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(30);

fn client(h: &Harness) -> kube::Client {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: mill\n  cluster:\n    server: {}\nusers:\n- name: mill\n  user:\n    token: {TOKEN}\ncontexts:\n- name: mill\n  context: {{cluster: mill, user: mill, namespace: default}}\ncurrent-context: mill\n",
        h.url
    );
    let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_str(&text).unwrap();
    let config = futures::executor::block_on(kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &Default::default(),
    ))
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WITHIN;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready_node(client: &kube::Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "mill.dev/v1", "kind": "Node",
        "metadata": {"name": "node-1"},
        "spec": {"raftId": 1, "address": "127.0.0.1", "apiAddress": "127.0.0.1:4400"},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let resources = json!({"cpu": 4.0, "memory": "8G"});
    let status = json!({"status": {
        "state": "ready", "capacity": resources, "allocatable": resources,
        "lastHeartbeat": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }});
    nodes
        .patch_status("node-1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

async fn owned_allocs(allocs: &Api<Alloc>) -> Vec<Alloc> {
    let list = allocs
        .list(&ListParams::default().labels("mill.dev/owner=web"))
        .await
        .unwrap();
    list.items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_placed_and_a_deleted_one_is_stopped_before_it_goes() {
    let h = Harness::start();
    let client = client(&h);
    ready_node(&client).await;
    let controllers = tokio::spawn(run(
        client.clone(),
        mill_controllers::Knobs::default(),
        Pacing {
            tick: Duration::from_millis(200),
        },
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "mill.dev/v1", "kind": "Service",
        "metadata": {"name": "web", "annotations": {"mill.dev/deploy": "d1"}},
        "spec": {"image": "busybox", "port": 8080, "replicas": 2, "cpu": 0.5, "memory": "64M"},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();

    let allocs: Api<Alloc> = Api::namespaced(client.clone(), "default");
    let placed = eventually("two placed replicas", || async {
        let items = owned_allocs(&allocs).await;
        let placed: Vec<(String, u16)> = items
            .iter()
            .filter_map(|a| Some((a.spec.node_name.clone()?, a.spec.host_port?)))
            .collect();
        (placed.len() == 2).then_some(placed)
    })
    .await;
    assert!(
        placed.iter().all(|(node, _)| node == "node-1"),
        "{placed:?}"
    );
    assert_ne!(placed[0].1, placed[1].1, "distinct host ports");
    let stored = services.get("web").await.unwrap();
    assert!(
        stored
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"mill.dev/allocs".to_string()),
        "the rollout keeps its finalizer on the Service"
    );

    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    // The controllers ask for the replicas to stop; the "agent" (this test) stops them.
    let stopping = eventually("every replica asked to stop", || async {
        let items = owned_allocs(&allocs).await;
        (items.len() == 2
            && items
                .iter()
                .all(|a| a.spec.desired_state == DesiredState::Stopped))
        .then_some(items)
    })
    .await;
    assert!(
        services.get("web").await.is_ok(),
        "the Service stays while its replicas run"
    );
    for alloc in stopping {
        let name = alloc.metadata.name.unwrap();
        allocs
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"phase": "stopped"}})),
            )
            .await
            .unwrap();
    }
    eventually("the Service gone", || async {
        services
            .get_opt("web")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(!controllers.is_finished(), "the controllers keep running");
    controllers.abort();
}

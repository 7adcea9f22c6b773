//! kube-rs (client + runtime) against mill's API server.

mod common;

use common::{Harness, Options, TOKEN};
use futures::StreamExt;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use mill_crds::{Service, ServiceSpec, Task, TaskSpec};
use std::time::{Duration, Instant};

/// How long a test waits for a condition.
const DEADLINE: Duration = Duration::from_secs(30);

async fn client(h: &Harness) -> kube::Client {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: mill\n  cluster:\n    server: {}\nusers:\n- name: mill\n  user:\n    token: {TOKEN}\ncontexts:\n- name: mill\n  context: {{cluster: mill, user: mill, namespace: default}}\ncurrent-context: mill\n",
        h.url
    );
    let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_str(&text).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn service(name: &str, replicas: i32) -> Service {
    let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
        "image": "web:v1", "port": 8080, "replicas": replicas,
    }))
    .unwrap();
    Service::new(name, spec)
}

async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn services_crud_through_kube_rs() {
    let h = Harness::start();
    let api: Api<Service> = Api::namespaced(client(&h).await, "default");
    let created = api
        .create(&PostParams::default(), &service("web", 2))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.spec.cpu, 0.25, "defaults are filled in");

    let err = api
        .create(&PostParams::default(), &service("web", 2))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );

    let mut fetched = api.get("web").await.unwrap();
    assert_eq!(fetched.metadata.uid.as_deref(), Some(uid.as_str()));
    fetched.spec.replicas = 3;
    let replaced = api
        .replace("web", &PostParams::default(), &fetched)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));

    // `fetched` is now stale.
    let err = api
        .replace("web", &PostParams::default(), &fetched)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    let patched = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.replicas, 4);

    let status = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"healthyReplicas": 4, "revision": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(status.status.as_ref().unwrap().healthy_replicas, 4);
    assert_eq!(
        status.metadata.generation,
        Some(3),
        "status writes do not bump generation"
    );
    // A main-resource write keeps the status.
    let again = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"replicas": 5}, "status": {"healthyReplicas": 0}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(again.status.as_ref().unwrap().healthy_replicas, 4);

    let applied = api
        .patch(
            "api",
            &PatchParams::apply("test"),
            &Patch::Apply(service("api", 1)),
        )
        .await
        .unwrap();
    assert_eq!(
        applied.spec.replicas, 1,
        "server-side apply creates what is missing"
    );

    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2);
    assert!(list.metadata.resource_version.is_some());
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let token = page.metadata.continue_.clone().unwrap();
    let rest = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_ne!(rest.items[0].metadata.name, page.items[0].metadata.name);

    api.delete("web", &DeleteParams::default()).await.unwrap();
    let err = api.get("web").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_reflector_converges_on_the_stored_services() {
    let h = Harness::start();
    let client = client(&h).await;
    let api: Api<Service> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &service("a", 1))
        .await
        .unwrap();
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api.clone(), watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    api.create(&PostParams::default(), &service("b", 1))
        .await
        .unwrap();
    api.create(&PostParams::default(), &service("c", 1))
        .await
        .unwrap();
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 9}})),
    )
    .await
    .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    until("the reflector to hold b (9 replicas) and c", || {
        let state = reader.state();
        async move {
            let mut names: Vec<(String, i32)> = state
                .iter()
                .map(|s| (s.metadata.name.clone().unwrap(), s.spec.replicas))
                .collect();
            names.sort();
            (names == [("b".to_string(), 9), ("c".to_string(), 1)]).then_some(())
        }
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn an_expired_watch_gets_an_in_stream_410_and_the_watcher_relists() {
    let h = Harness::start_with(Options {
        watch_window: 5,
        bookmark_interval: Duration::from_millis(300),
    });
    let client = client(&h).await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let tasks: Api<Task> = Api::namespaced(client, "default");
    let first = services
        .create(&PostParams::default(), &service("old", 1))
        .await
        .unwrap();
    let task_spec: TaskSpec = serde_json::from_value(serde_json::json!({"image": "t:1"})).unwrap();
    for i in 0..10 {
        tasks
            .create(
                &PostParams::default(),
                &Task::new(&format!("t{i}"), task_spec.clone()),
            )
            .await
            .unwrap();
    }
    let rv = first.metadata.resource_version.unwrap();
    let mut stream = services
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected an in-stream 410, got {other:?}"),
    }

    // A watcher whose watch times out every second rewatches from its last rv; once
    // other writes push that rv out of the window it gets 410 and must relist.
    let (inits_tx, mut inits) = tokio::sync::mpsc::unbounded_channel();
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(services.clone(), watcher::Config::default().timeout(1)),
    )
    .default_backoff();
    let task = tokio::spawn(stream.for_each(move |event| {
        if let Ok(watcher::Event::Init) = event {
            let _ = inits_tx.send(());
        }
        async {}
    }));
    inits.recv().await.unwrap();
    let mut n = 10;
    let deadline = Instant::now() + DEADLINE;
    loop {
        tasks
            .create(
                &PostParams::default(),
                &Task::new(&format!("t{n}"), task_spec.clone()),
            )
            .await
            .unwrap();
        n += 1;
        if tokio::time::timeout(Duration::from_millis(100), inits.recv())
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the watcher never relisted");
    }
    services
        .create(&PostParams::default(), &service("new", 1))
        .await
        .unwrap();
    until("the relisted reflector to see the new service", || {
        let state = reader.state();
        async move {
            state
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some("new"))
                .then_some(())
        }
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn an_in_process_client_works_over_the_router() {
    let h = Harness::start();
    // The same router the daemon serves, driven as a tower service (no TCP).
    let router = mill::api::router(
        h.store.clone(),
        mill::api::ApiConfig {
            token: TOKEN.to_string(),
            secret_key: [42; 32],
            server_address: "127.0.0.1:0".into(),
        },
    );
    let api: Api<Service> = Api::namespaced(mill::api::kube_client(router, TOKEN), "default");
    api.create(&PostParams::default(), &service("inproc", 1))
        .await
        .unwrap();
    let got = api.get("inproc").await.unwrap();
    assert_eq!(got.spec.port, 8080);
}

//! Deploys on a 3-node cluster: placement, rolling updates, rollbacks, partial failure,
//! superseding, scaling, removal, validation.

use super::harness::{phase, service, summary, Cluster, Sampler, Verdicts, WITHIN};
use super::support::eventually;
use kube::api::{Api, ListParams};
use mill_crds::{AllocPhase, Deploy, DeployPhase, Service};
use std::collections::BTreeSet;

/// Fewer samples than this would not show a dip: a rollout of 3 replicas takes seconds.
const MEANINGFUL_SAMPLES: usize = 20;

#[tokio::test(flavor = "multi_thread")]
async fn first_deploy_of_two_services_spreads_their_replicas_across_the_nodes() {
    let cluster = Cluster::start(&[]).await;
    let config =
        service("web", &cluster.images.v1, 3, "") + &service("api", &cluster.images.v1, 2, "");
    let run = cluster.deploy(&config).await;
    run.assert_success();
    let deploy = cluster.deploy_object(run.name.as_ref().unwrap()).await;
    assert_eq!(deploy.status.map(|s| s.phase), Some(DeployPhase::Succeeded));
    for (name, replicas) in [("web", 3), ("api", 2)] {
        let phases = run.phases(name);
        assert_eq!(
            phases.iter().filter(|p| *p == "healthy").count(),
            replicas,
            "{name}: {phases:?}"
        );
        let allocs = cluster
            .wait_settled(name, &cluster.images.v1, replicas)
            .await;
        let nodes: BTreeSet<_> = allocs
            .iter()
            .filter_map(|a| a.spec.node_name.clone())
            .collect();
        assert_eq!(
            nodes.len(),
            replicas,
            "{name}: one replica per node: {nodes:?}; all its allocs: {:#?}",
            summary(&cluster.allocs(name).await)
        );
        for alloc in &allocs {
            let address = alloc
                .status
                .as_ref()
                .and_then(|s| s.address.clone())
                .unwrap();
            let (code, body) = cluster.get(&address, "/health").await.unwrap_or_else(|| {
                panic!("{name} replica at {address} does not answer over the bridge")
            });
            assert_eq!((code, body.trim()), (200, "ok"), "{address}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_update_of_3_replicas_never_has_fewer_than_3_healthy() {
    let cluster = Cluster::start(&[]).await;
    cluster
        .deploy(&service("web", &cluster.images.v1, 3, ""))
        .await
        .assert_success();
    cluster.wait_settled("web", &cluster.images.v1, 3).await;
    let sampler = Sampler::start(&cluster, 1, "web").await;
    let run = cluster
        .deploy(&service("web", &cluster.images.v2, 3, ""))
        .await;
    cluster.wait_settled("web", &cluster.images.v2, 3).await;
    let samples = sampler.finish().await;
    run.assert_success();
    let phases = run.phases("web");
    assert_eq!(
        phases.iter().filter(|p| *p == "stopped").count(),
        3,
        "{phases:?}"
    );
    assert!(
        samples.len() >= MEANINGFUL_SAMPLES,
        "only {} samples of the healthy count during the rollout",
        samples.len()
    );
    let min = samples.iter().min().copied().unwrap_or_default();
    assert!(
        min >= 3,
        "the healthy count dropped to {min} during the rollout: {samples:?}"
    );
}

/// Deploys `web` v1 with `replicas`, then `web` with `image` and `extra`; asserts the
/// second deploy failed, rolled back and left v1 serving; returns the failure reason.
/// `moved`: whether a replica had moved to the new revision before it failed (its revert
/// stops that new alloc, so the stream shows `stopped` then).
async fn assert_rolls_back(
    cluster: &Cluster,
    replicas: u32,
    image: &str,
    extra: &str,
    moved: bool,
) -> (String, Vec<String>) {
    let v1 = &cluster.images.v1;
    cluster
        .deploy(&service("web", v1, replicas, ""))
        .await
        .assert_success();
    cluster.wait_settled("web", v1, replicas as usize).await;
    let sampler = Sampler::start(cluster, 1, "web").await;
    let run = cluster
        .deploy(&service("web", image, replicas, extra))
        .await;
    assert_eq!(run.status, 200, "{run:#?}");
    assert!(
        !run.success(),
        "a failing revision must fail the deploy: {run:#?}"
    );
    let reason = run
        .failure("web")
        .unwrap_or_else(|| panic!("no failed event for web: {run:#?}"));
    let phases = run.phases("web");
    let at = |phase: &str| phases.iter().position(|p| p == phase);
    assert!(
        at("rolling_back").is_some() && at("rolling_back") < at("rolled_back"),
        "{phases:?}"
    );
    if !moved {
        assert!(
            !phases.iter().any(|p| p == "stopped" || p == "healthy"),
            "a failed service never shows healthy or stopped for its new allocs: {phases:?}"
        );
    }
    let allocs = cluster.wait_settled("web", v1, replicas as usize).await;
    let samples = sampler.finish().await;
    let min = samples.iter().min().copied().unwrap_or_default();
    assert!(
        min as u32 >= replicas,
        "the healthy count dropped to {min} during the failed rollout: {samples:?}"
    );
    let svc = cluster.service("web").await.unwrap();
    assert_eq!(
        svc.spec.image, *v1,
        "the spec is back on the previous revision"
    );
    let status = svc.status.unwrap();
    assert!(
        status.message.as_deref().is_some_and(|m| !m.is_empty()),
        "the Service status says why: {status:?}"
    );
    assert_eq!(status.revision, status.target_revision, "{status:?}");
    assert_eq!(allocs.len(), replicas as usize, "{:#?}", summary(&allocs));
    (reason, phases)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_rolls_back_to_the_previous_revision() {
    let cluster = Cluster::start(&[]).await;
    let missing = cluster.images.missing.clone();
    let (reason, _) = assert_rolls_back(&cluster, 2, &missing, "", false).await;
    assert!(reason.contains("pull"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_image_rolls_back_to_the_previous_revision() {
    let cluster = Cluster::start(&[]).await;
    let crash = cluster.images.crash.clone();
    assert_rolls_back(&cluster, 2, &crash, "", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_never_healthy_within_health_timeout_rolls_back() {
    let cluster = Cluster::start(&[]).await;
    let sick = cluster.images.sick.clone();
    let (reason, _) = assert_rolls_back(
        &cluster,
        2,
        &sick,
        "  update {\n    health_timeout = \"3s\"\n  }",
        false,
    )
    .await;
    assert!(reason.contains("health"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_replica_2_of_3_fails_replica_1_is_reverted_and_3_stay_healthy() {
    let cluster = Cluster::start(&[]).await;
    // The new revision's first container is told to serve; every later one to exit.
    let verdicts = Verdicts::start(&cluster, &["ok", "fail"]).await;
    let v2 = cluster.images.v2.clone();
    let (_, phases) = assert_rolls_back(&cluster, 3, &v2, &verdicts.command(), true).await;
    // Replica 1 had moved (healthy, routed, its v1 predecessor stopped) and was reverted.
    let at = |phase: &str| phases.iter().position(|p| p == phase);
    assert!(at("routed") < at("rolling_back"), "{phases:?}");
    assert_eq!(
        phases.iter().filter(|p| *p == "healthy").count(),
        1,
        "only replica 1 of the new revision got healthy: {phases:?}"
    );
    let allocs = cluster.allocs("web").await;
    let moved: Vec<_> = allocs
        .iter()
        .filter(|a| a.spec.template.image == v2)
        .collect();
    assert!(
        moved.iter().all(|a| phase(a).is_terminal()),
        "{:#?}",
        summary(&allocs)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_service_does_not_stop_the_other_service_of_the_deploy() {
    let cluster = Cluster::start(&[]).await;
    let images = &cluster.images;
    cluster
        .deploy(&(service("web", &images.v1, 1, "") + &service("api", &images.v1, 1, "")))
        .await
        .assert_success();
    let run = cluster
        .deploy(&(service("web", &images.v2, 1, "") + &service("api", &images.missing, 1, "")))
        .await;
    assert_eq!(run.status, 200, "{run:#?}");
    assert_eq!(run.done()["success"], false, "{run:#?}");
    assert!(run.failure("api").is_some(), "{run:#?}");
    assert!(run.failure("web").is_none(), "{run:#?}");
    assert!(run.phases("web").iter().any(|p| p == "healthy"), "{run:#?}");
    cluster.wait_settled("web", &images.v2, 1).await;
    cluster.wait_settled("api", &images.v1, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_during_a_rollout_supersedes_it() {
    let cluster = std::sync::Arc::new(Cluster::start(&[]).await);
    let images = &cluster.images;
    // Slow starts keep the first rollout going while the second deploy arrives.
    let slow = r#"  command = ["/bin/sh", "-c", "sleep 2; mkdir -p /www && echo ok > /www/health && exec httpd -f -p $PORT -h /www"]"#;
    cluster
        .deploy(&service("web", &images.v1, 3, ""))
        .await
        .assert_success();
    cluster.wait_settled("web", &images.v1, 3).await;
    let sampler = Sampler::start(&cluster, 1, "web").await;
    let first = {
        let cluster = cluster.clone();
        let config = service("web", &cluster.images.v2, 3, slow);
        tokio::spawn(async move { cluster.deploy(&config).await })
    };
    let v2 = images.v2.clone();
    eventually(WITHIN, "the v2 rollout under way", || async {
        let allocs = cluster.allocs("web").await;
        allocs
            .iter()
            .any(|a| a.spec.template.image == v2)
            .then_some(())
    })
    .await;
    let second = cluster.deploy(&service("web", &images.v3, 3, slow)).await;
    let first = first.await.unwrap();
    second.assert_success();
    cluster.wait_settled("web", &images.v3, 3).await;
    let samples = sampler.finish().await;
    let min = samples.iter().min().copied().unwrap_or_default();
    assert!(min >= 3, "healthy dropped to {min}: {samples:?}");
    // The superseded deploy ends too (one done), whatever it reports.
    assert_eq!(
        first.events.iter().filter(|(e, _)| e == "done").count(),
        1,
        "{first:#?}"
    );
    let svc = cluster.service("web").await.unwrap();
    assert_eq!(svc.spec.image, images.v3);
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_up_and_down_keeps_the_running_replicas() {
    let cluster = Cluster::start(&[]).await;
    let v1 = &cluster.images.v1;
    cluster
        .deploy(&service("web", v1, 1, ""))
        .await
        .assert_success();
    let first = cluster.wait_settled("web", v1, 1).await;
    let original = first[0].metadata.name.clone().unwrap();
    cluster
        .deploy(&service("web", v1, 3, ""))
        .await
        .assert_success();
    let up = cluster.wait_settled("web", v1, 3).await;
    let names: BTreeSet<_> = up.iter().filter_map(|a| a.metadata.name.clone()).collect();
    assert!(
        names.contains(&original),
        "scale-up restarted the running replica: {names:?}"
    );
    assert!(
        up.iter()
            .all(|a| a.status.as_ref().is_some_and(|s| s.restarts == 0)),
        "{:#?}",
        summary(&up)
    );
    let nodes: BTreeSet<_> = up.iter().filter_map(|a| a.spec.node_name.clone()).collect();
    assert_eq!(nodes.len(), 3, "spread: {nodes:?}");
    cluster
        .deploy(&service("web", v1, 1, ""))
        .await
        .assert_success();
    let down = cluster.wait_settled("web", v1, 1).await;
    assert!(
        names.contains(down[0].metadata.name.as_ref().unwrap()),
        "scale-down keeps one of the running replicas"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_absent_from_the_config_is_removed() {
    let cluster = Cluster::start(&[]).await;
    let v1 = &cluster.images.v1;
    cluster
        .deploy(&(service("web", v1, 1, "") + &service("api", v1, 2, "")))
        .await
        .assert_success();
    cluster.wait_settled("api", v1, 2).await;
    let run = cluster.deploy(&service("web", v1, 1, "")).await;
    run.assert_success();
    assert!(run.phases("api").iter().any(|p| p == "removed"), "{run:#?}");
    assert_eq!(run.phases("web"), vec!["unchanged".to_string()], "{run:#?}");
    eventually(WITHIN, "api's Service and live allocs gone", || async {
        let live = cluster
            .allocs("api")
            .await
            .iter()
            .filter(|a| !phase(a).is_terminal())
            .count();
        (cluster.service("api").await.is_none() && live == 0).then_some(())
    })
    .await;
    cluster.wait_settled("web", v1, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_secret_is_a_400_before_anything_changes() {
    let cluster = Cluster::start(&[]).await;
    let v1 = &cluster.images.v1;
    cluster
        .deploy(&service("web", v1, 1, ""))
        .await
        .assert_success();
    cluster.wait_settled("web", v1, 1).await;
    let client = cluster.client().await;
    let deploys: Api<Deploy> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client, "default");
    let before_deploys = deploys
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    let before_web = services.get("web").await.unwrap();
    let config = service(
        "web",
        &cluster.images.v2,
        2,
        "  env {\n    DB_URL = \"${secret(db-url)}\"\n  }",
    ) + &service("api", v1, 1, "");
    let run = cluster.deploy(&config).await;
    assert_eq!(run.status, 400, "{run:#?}");
    let body: serde_json::Value = serde_json::from_str(&run.body).expect("a JSON error body");
    let details = body["details"].as_array().expect("details");
    assert!(
        details.iter().any(|d| d["message"]
            .as_str()
            .is_some_and(|m| m.contains("secret \"db-url\" not found"))),
        "{body}"
    );
    assert_eq!(
        deploys
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        before_deploys,
        "no Deploy was made"
    );
    assert!(services.get_opt("api").await.unwrap().is_none());
    let after_web = services.get("web").await.unwrap();
    assert_eq!(
        after_web.metadata.resource_version, before_web.metadata.resource_version,
        "web was not touched"
    );
    let allocs = cluster.wait_settled("web", v1, 1).await;
    assert!(allocs.iter().all(|a| phase(a) == AllocPhase::Healthy));
}

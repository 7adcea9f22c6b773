//! Builders for the planners' table tests: small worlds in a few lines.

use crate::view::ObjectKey;
use crate::{Action, DEPLOY_ANNOTATION, ROUTED};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use mill_crds::{
    Alloc, AllocCondition, AllocOwner, AllocPhase, AllocSpec, AllocStatus, ByteSize,
    ContainerTemplate, DesiredState, Node, NodeResources, NodeSpec, NodeState, NodeStatus,
    OwnerKind, Service, ServiceSpec,
};
use std::collections::BTreeMap;

/// Seconds after an arbitrary epoch.
pub fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

pub fn ms(millis: i64) -> Timestamp {
    Timestamp::from_millisecond(1_700_000_000_000 + millis).unwrap()
}

pub fn key(name: &str) -> ObjectKey {
    ObjectKey {
        namespace: "default".to_string(),
        name: name.to_string(),
    }
}

pub fn service(name: &str, image: &str, replicas: i32) -> Service {
    let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
        "image": image, "port": 8080, "replicas": replicas,
    }))
    .unwrap();
    let mut service = Service::new(name, spec);
    service.metadata.namespace = Some("default".to_string());
    service.metadata.uid = Some(format!("uid-{name}"));
    service.metadata.generation = Some(1);
    service.metadata.finalizers = Some(vec![crate::SERVICE_FINALIZER.to_string()]);
    service
}

pub fn deployed_by(mut service: Service, deploy: &str) -> Service {
    service
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(DEPLOY_ANNOTATION.to_string(), deploy.to_string());
    service
}

pub fn template(image: &str) -> ContainerTemplate {
    service("x", image, 1).spec.template()
}

pub fn alloc(name: &str, service: &str, revision: i64, phase: AllocPhase) -> Alloc {
    Alloc {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".to_string()),
            resource_version: Some("10".to_string()),
            creation_timestamp: Some(Time(t(0))),
            ..ObjectMeta::default()
        },
        spec: AllocSpec {
            owner: AllocOwner {
                kind: OwnerKind::Service,
                name: service.to_string(),
            },
            service: Some(service.to_string()),
            revision,
            template: template("web:1"),
            node_name: Some("node-1".to_string()),
            host_port: Some(20000),
            desired_state: DesiredState::Running,
            draining: false,
            timeout: None,
            evict: false,
        },
        status: Some(AllocStatus {
            phase,
            ..AllocStatus::default()
        }),
    }
}

pub fn routed(mut alloc: Alloc, status: &str, since: Timestamp) -> Alloc {
    alloc
        .status
        .get_or_insert_with(AllocStatus::default)
        .conditions
        .push(AllocCondition {
            type_: ROUTED.to_string(),
            status: status.to_string(),
            last_transition_time: Some(Time(since)),
            message: None,
        });
    alloc
}

pub fn node(name: &str, cpu: f64, memory: &str) -> Node {
    let resources = NodeResources {
        cpu,
        memory: memory.parse::<ByteSize>().unwrap(),
    };
    let mut node = Node::new(
        name,
        NodeSpec {
            raft_id: 1,
            address: "10.0.0.1".to_string(),
            api_address: "10.0.0.1:4400".to_string(),
            unschedulable: false,
            port_range: None,
        },
    );
    node.status = Some(NodeStatus {
        state: NodeState::Ready,
        capacity: resources,
        allocatable: resources,
        last_heartbeat: Some(Time(t(0))),
        ..NodeStatus::default()
    });
    node
}

pub fn stopped(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetDesiredState {
                alloc,
                state: DesiredState::Stopped,
            } => Some(alloc.name.clone()),
            _ => None,
        })
        .collect()
}

pub fn drained(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetDraining {
                alloc,
                draining: true,
            } => Some(alloc.name.clone()),
            _ => None,
        })
        .collect()
}

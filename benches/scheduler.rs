//! The scheduler planner at cluster scale: 10,000 pending allocs of 100 services onto
//! 1,000 synthetic nodes, in one plan, timed on this machine.
//!
//! Printed beside it: HashiCorp's published Nomad "C2M" figure (≈ 1,500 placements/s
//! sustained, 2 million containers on 6,100 nodes) as a reference point. Nomad's number
//! includes its whole pipeline (Raft, evaluation broker, plan applier) across a real
//! cluster; this measures mill's placement decision alone, which is what must not be the
//! bottleneck. Target: ≥ 3,000 placements/s.
//!
//! `cargo bench --bench scheduler`

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mill_controllers::{scheduler, Action, Knobs, View};
use mill_crds::{
    Alloc, AllocOwner, AllocSpec, ByteSize, ContainerTemplate, DesiredState, Node, NodeResources,
    NodeSpec, NodeStatus, OwnerKind,
};
use std::sync::Arc;
use std::time::Instant;

const NODES: usize = 1_000;
const ALLOCS: usize = 10_000;
const SERVICES: usize = 100;
const ROUNDS: usize = 5;
/// Nomad's published C2M sustained placement rate (placements per second).
const NOMAD_C2M_PLACEMENTS_PER_SEC: f64 = 1_500.0;

fn node(i: usize) -> Arc<Node> {
    let resources = NodeResources {
        cpu: 16.0,
        memory: ByteSize(64 << 30),
    };
    let mut node = Node::new(
        &format!("node-{i:04}"),
        NodeSpec {
            raft_id: i as u64,
            address: format!("10.0.{}.{}", i / 250, i % 250),
            api_address: format!("10.0.{}.{}:4400", i / 250, i % 250),
            unschedulable: false,
            port_range: None,
        },
    );
    node.status = Some(NodeStatus {
        capacity: resources,
        allocatable: resources,
        ..NodeStatus::default()
    });
    Arc::new(node)
}

fn alloc(i: usize) -> Arc<Alloc> {
    let service = format!("svc-{:03}", i % SERVICES);
    Arc::new(Alloc {
        metadata: ObjectMeta {
            name: Some(format!("{service}-1-{i}")),
            namespace: Some("default".to_string()),
            ..ObjectMeta::default()
        },
        spec: AllocSpec {
            owner: AllocOwner {
                kind: OwnerKind::Service,
                name: service.clone(),
            },
            service: Some(service),
            revision: 1,
            template: ContainerTemplate {
                image: "web:1".to_string(),
                command: None,
                port: Some(8080),
                cpu: 0.25,
                memory: ByteSize(256_000_000),
                env: Default::default(),
                health: None,
                volumes: Vec::new(),
            },
            node_name: None,
            host_port: None,
            desired_state: DesiredState::Running,
            draining: false,
            timeout: None,
            evict: false,
        },
        status: None,
    })
}

fn main() {
    let view = View {
        nodes: (0..NODES).map(node).collect(),
        allocs: (0..ALLOCS).map(alloc).collect(),
        ..View::default()
    };
    let knobs = Knobs::default();
    let now = Timestamp::UNIX_EPOCH;
    let mut best = f64::MAX;
    let mut placed = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let actions = scheduler::plan(&view, now, &knobs);
        let seconds = started.elapsed().as_secs_f64();
        placed = actions
            .iter()
            .filter(|a| matches!(a, Action::PlaceAlloc { .. }))
            .count();
        best = best.min(seconds);
    }
    assert_eq!(placed, ALLOCS, "every alloc fits on the synthetic cluster");
    let rate = placed as f64 / best;
    println!("scheduler: {ALLOCS} allocs onto {NODES} nodes, best of {ROUNDS} plans");
    println!(
        "  mill planner   {:>10.0} placements/s  ({:.1} ms per plan)",
        rate,
        best * 1000.0
    );
    println!("  nomad C2M ref  {NOMAD_C2M_PLACEMENTS_PER_SEC:>10.0} placements/s  (published, whole pipeline)");
    println!(
        "  target         {:>10.0} placements/s  {}",
        3000.0,
        if rate >= 3000.0 { "met" } else { "MISSED" }
    );
}

//! The scheduler: places pending allocs on nodes.
//!
//! An alloc without `spec.nodeName` gets the node that (1) is ready and schedulable,
//! (2) has its cpu and memory free, (3) holds its persistent volumes if any is placed,
//! and among those (4) runs the fewest replicas of the same service, then (5) is the least
//! loaded, then (6) comes first by name. It also gets the lowest free port of that node's
//! pool. Free means: the node's reported allocatable, and never more than its capacity
//! minus what live allocs placed on it (including those this plan placed) reserve — so a
//! plan made before the node's heartbeat caught up cannot overcommit it.

use crate::action::Action;
use crate::knobs::Knobs;
use crate::view::{self, cores, ObjectKey, View};
use crate::SCHEDULED;
use jiff::Timestamp;
use mill_crds::{Alloc, AllocPhase, ByteSize, DesiredState, NodeState, OwnerKind};
use std::collections::{BTreeSet, HashMap};

/// Where every pending alloc goes, or why it cannot go anywhere (a `Scheduled=False`
/// condition with e.g. `no node has 2 cpu and 4G free`).
pub fn plan(view: &View, now: Timestamp, knobs: &Knobs) -> Vec<Action> {
    plan_placing(view, now, knobs, &mut [])
}

/// [`plan`], and the allocs that other planners create in the same plan (the
/// [`Action::CreateAlloc`]s among `created`, unplaced and wanted running) placed in their
/// create, so no separate placement write follows it. Each gets what the next plan would
/// give it once it exists: it is placed after every pending alloc of the View (those were
/// created before it), in the order of `created` (allocs created at once have no order of
/// their own), with everything placed before it counted against the nodes, by the same
/// rules ([`Nodes::place`]: readiness, cpu and memory, volume pins, spread, load, the
/// lowest free port of the node's pool). One that fits nowhere is created unplaced, and the
/// next plan writes why (`Scheduled=False`), as for any pending alloc.
pub fn plan_placing(
    view: &View,
    now: Timestamp,
    knobs: &Knobs,
    created: &mut [Action],
) -> Vec<Action> {
    let new: Vec<(usize, Alloc)> = created
        .iter()
        .enumerate()
        .filter_map(|(i, action)| match action.write() {
            Action::CreateAlloc(alloc)
                if alloc.spec.node_name.is_none()
                    && alloc.spec.desired_state == DesiredState::Running =>
            {
                Some((i, alloc.to_alloc()))
            }
            _ => None,
        })
        .collect();
    let mut nodes = Nodes::new(view, knobs);
    let mut actions = Vec::new();
    let mut pending: Vec<&Alloc> = Vec::new();
    for alloc in &view.allocs {
        if alloc.spec.node_name.is_some() || view::phase(alloc) != AllocPhase::Pending {
            continue;
        }
        if alloc.spec.desired_state == DesiredState::Stopped {
            // No agent will ever see an alloc without a node: end it here.
            actions.push(Action::SetAllocPhase {
                alloc: ObjectKey::of(&alloc.metadata),
                phase: AllocPhase::Stopped,
                reason: Some("stopped before it was placed".to_string()),
            });
        } else if alloc.metadata.deletion_timestamp.is_none() {
            pending.push(alloc);
        }
    }
    pending.sort_by(|a, b| {
        (view::created(&a.metadata), &a.metadata.name)
            .cmp(&(view::created(&b.metadata), &b.metadata.name))
    });
    for alloc in pending {
        match nodes.place(view, alloc) {
            Ok((node, host_port)) => actions.push(Action::PlaceAlloc {
                alloc: ObjectKey::of(&alloc.metadata),
                node: node.to_string(),
                host_port,
            }),
            Err(reason) => {
                let current = view::condition(alloc, SCHEDULED);
                if current
                    .is_none_or(|c| c.status != "False" || c.message.as_ref() != Some(&reason))
                {
                    actions.push(Action::SetAllocConditions {
                        alloc: ObjectKey::of(&alloc.metadata),
                        conditions: view::with_condition(
                            alloc,
                            SCHEDULED,
                            "False",
                            Some(reason),
                            now,
                        ),
                    });
                }
            }
        }
    }
    for (i, alloc) in &new {
        let Ok((node, host_port)) = nodes.place(view, alloc) else {
            continue;
        };
        if let Action::CreateAlloc(create) = write_mut(&mut created[*i]) {
            create.spec.node_name = Some(node.to_string());
            create.spec.host_port = Some(host_port);
        }
    }
    actions
}

/// The write itself, whether or not its plan marked it independent.
fn write_mut(action: &mut Action) -> &mut Action {
    match action {
        Action::Independent(inner) => write_mut(inner),
        other => other,
    }
}

/// One node as the plan sees it: what is left of it.
struct Slot<'a> {
    name: &'a str,
    /// Why it takes no allocs, if it does not.
    closed: Option<&'static str>,
    cpu_capacity: f64,
    memory_capacity: u64,
    cpu_free: f64,
    memory_free: u64,
    ports: BTreeSet<u16>,
    first_port: u16,
    last_port: u16,
    /// No port below it is free.
    port_cursor: u16,
    /// How many ports of the pool are taken.
    ports_taken: usize,
}

impl Slot<'_> {
    fn fits(&self, cpu: f64, memory: u64) -> bool {
        // A little slack so that 4 × 0.25 cores fit exactly on 1 core.
        self.cpu_free + 1e-9 >= cpu && self.memory_free >= memory
    }

    fn free_port(&mut self) -> Option<u16> {
        let mut port = self.port_cursor;
        loop {
            if port > self.last_port || port < self.first_port {
                return None;
            }
            if !self.ports.contains(&port) {
                self.port_cursor = port;
                return Some(port);
            }
            port = port.checked_add(1)?;
        }
    }

    fn reserve(&mut self, cpu: f64, memory: u64, port: Option<u16>) {
        self.cpu_free -= cpu;
        self.memory_free = self.memory_free.saturating_sub(memory);
        if let Some(port) = port {
            if self.ports.insert(port) {
                self.ports_taken += 1;
            }
        }
    }

    fn has_free_port(&self) -> bool {
        let size = usize::from(self.last_port.saturating_sub(self.first_port)) + 1;
        self.last_port >= self.first_port && self.ports_taken < size
    }

    /// The larger of the reserved cpu and memory fractions.
    fn load(&self) -> f64 {
        let cpu = if self.cpu_capacity > 0.0 {
            1.0 - self.cpu_free / self.cpu_capacity
        } else {
            1.0
        };
        let memory = if self.memory_capacity > 0 {
            1.0 - self.memory_free as f64 / self.memory_capacity as f64
        } else {
            1.0
        };
        cpu.max(memory)
    }
}

type OwnerId<'a> = (&'a str, OwnerKind, &'a str);

/// All nodes, what is placed where, and the spread and volume pins seen so far.
struct Nodes<'a> {
    slots: Vec<Slot<'a>>,
    by_name: HashMap<&'a str, usize>,
    /// Per service (namespace, kind, name): how many live replicas each slot runs.
    spread: HashMap<OwnerId<'a>, Vec<u32>>,
    /// Per (namespace, volume): the slot that holds it.
    volume_pins: HashMap<(&'a str, &'a str), usize>,
}

fn namespace(alloc: &Alloc) -> &str {
    alloc.metadata.namespace.as_deref().unwrap_or("default")
}

fn owner(alloc: &Alloc) -> OwnerId<'_> {
    (
        namespace(alloc),
        alloc.spec.owner.kind,
        &alloc.spec.owner.name,
    )
}

impl<'a> Nodes<'a> {
    fn new(view: &'a View, knobs: &Knobs) -> Self {
        let mut ordered: Vec<&'a mill_crds::Node> = view.nodes.iter().map(|n| &**n).collect();
        ordered.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let slots: Vec<Slot<'a>> = ordered
            .into_iter()
            .map(|node| {
                let status = node.status.clone().unwrap_or_default();
                let closed = if node.metadata.deletion_timestamp.is_some() {
                    Some("being removed")
                } else if status.state == NodeState::Down {
                    Some("down")
                } else if status.state == NodeState::Draining {
                    Some("draining")
                } else if node.spec.unschedulable {
                    Some("unschedulable")
                } else {
                    None
                };
                let (first_port, last_port) = match node.spec.port_range {
                    Some(range) => (range.first, range.last),
                    None => (*knobs.port_range.start(), *knobs.port_range.end()),
                };
                Slot {
                    name: node.metadata.name.as_deref().unwrap_or_default(),
                    closed,
                    cpu_capacity: status.capacity.cpu,
                    memory_capacity: status.capacity.memory.bytes(),
                    cpu_free: status.allocatable.cpu.min(status.capacity.cpu),
                    memory_free: status
                        .allocatable
                        .memory
                        .bytes()
                        .min(status.capacity.memory.bytes()),
                    ports: BTreeSet::new(),
                    first_port,
                    last_port,
                    port_cursor: first_port,
                    ports_taken: 0,
                }
            })
            .collect();
        let by_name = slots.iter().enumerate().map(|(i, s)| (s.name, i)).collect();
        let mut nodes = Nodes {
            slots,
            by_name,
            spread: HashMap::new(),
            volume_pins: HashMap::new(),
        };
        // What live allocs already hold. Capacity minus these bounds the reported
        // allocatable, which may lag behind recent placements.
        let mut reserved: Vec<(f64, u64)> = vec![(0.0, 0); nodes.slots.len()];
        for alloc in &view.allocs {
            let Some(i) = alloc
                .spec
                .node_name
                .as_deref()
                .and_then(|n| nodes.by_name.get(n).copied())
            else {
                continue;
            };
            if view::phase(alloc).is_terminal() {
                continue;
            }
            reserved[i].0 += alloc.spec.template.cpu;
            reserved[i].1 += alloc.spec.template.memory.bytes();
            if let Some(port) = alloc.spec.host_port {
                nodes.slots[i].ports.insert(port);
            }
            nodes.count(alloc, i);
            for volume in persistent_volumes(alloc) {
                nodes.volume_pins.insert((namespace(alloc), volume), i);
            }
        }
        for (slot, (cpu, memory)) in nodes.slots.iter_mut().zip(reserved) {
            slot.ports_taken = slot.ports.range(slot.first_port..=slot.last_port).count();
            slot.cpu_free = slot.cpu_free.min(slot.cpu_capacity - cpu);
            slot.memory_free = slot
                .memory_free
                .min(slot.memory_capacity.saturating_sub(memory));
        }
        nodes
    }

    fn count(&mut self, alloc: &'a Alloc, slot: usize) {
        let len = self.slots.len();
        self.spread
            .entry(owner(alloc))
            .or_insert_with(|| vec![0; len])[slot] += 1;
    }

    /// The node and port for `alloc`, reserving them, or why there is none.
    fn place(&mut self, view: &'a View, alloc: &'a Alloc) -> Result<(&'a str, u16), String> {
        let cpu = alloc.spec.template.cpu;
        let memory = alloc.spec.template.memory.bytes();
        let wanted = || format!("{} cpu and {} free", cores(cpu), ByteSize(memory));
        let pin = self.volume_pin(view, alloc)?;
        let chosen = match pin {
            Some((volume, i)) => {
                let slot = &self.slots[i];
                if let Some(why) = slot.closed {
                    return Err(format!(
                        "volume {volume} is on node {}, which is {why}",
                        slot.name
                    ));
                }
                if !slot.fits(cpu, memory) {
                    return Err(format!(
                        "volume {volume} is on node {}, which does not have {}",
                        slot.name,
                        wanted()
                    ));
                }
                i
            }
            None => self.best(alloc, cpu, memory).ok_or_else(|| {
                if self.slots.iter().all(|s| s.closed.is_some()) {
                    "no node is ready to take it".to_string()
                } else {
                    format!("no node has {}", wanted())
                }
            })?,
        };
        let slot = &mut self.slots[chosen];
        let Some(port) = slot.free_port() else {
            return Err(format!(
                "node {} has no free port in {}-{}",
                slot.name, slot.first_port, slot.last_port
            ));
        };
        slot.reserve(cpu, memory, Some(port));
        let name = slot.name;
        self.count(alloc, chosen);
        for volume in persistent_volumes(alloc) {
            self.volume_pins.insert((namespace(alloc), volume), chosen);
        }
        Ok((name, port))
    }

    /// The open node that fits, with the fewest replicas of the owner, then least loaded;
    /// nodes without a free port are skipped.
    fn best(&mut self, alloc: &Alloc, cpu: f64, memory: u64) -> Option<usize> {
        let spread = self.spread.get(&owner(alloc));
        let mut best: Option<(u32, f64, usize)> = None;
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.closed.is_some() || !slot.fits(cpu, memory) {
                continue;
            }
            let replicas = spread.map_or(0, |s| s[i]);
            if best.is_some_and(|(r, _, _)| r < replicas) {
                continue;
            }
            let load = slot.load();
            let better = match best {
                None => true,
                Some((r, l, _)) => replicas < r || load < l,
            };
            if better && slot.has_free_port() {
                best = Some((replicas, load, i));
            }
        }
        best.map(|(_, _, i)| i)
    }

    /// The slot a persistent volume of `alloc` pins it to, if any: where the Volume says it
    /// is, else where a live alloc (or this plan) put it.
    fn volume_pin(
        &self,
        view: &'a View,
        alloc: &'a Alloc,
    ) -> Result<Option<(&'a str, usize)>, String> {
        for volume in persistent_volumes(alloc) {
            let held_by = view
                .volumes
                .iter()
                .find(|v| {
                    v.metadata.name.as_deref() == Some(volume)
                        && v.metadata.namespace.as_deref().unwrap_or("default") == namespace(alloc)
                })
                .and_then(|v| v.status.as_ref())
                .and_then(|s| s.node.as_deref());
            if let Some(node) = held_by {
                return match self.by_name.get(node) {
                    Some(&i) => Ok(Some((volume, i))),
                    None => Err(format!(
                        "volume {volume} is on node {node}, which is not in the cluster"
                    )),
                };
            }
            if let Some(&i) = self.volume_pins.get(&(namespace(alloc), volume)) {
                return Ok(Some((volume, i)));
            }
        }
        Ok(None)
    }
}

fn persistent_volumes(alloc: &Alloc) -> impl Iterator<Item = &str> {
    alloc
        .spec
        .template
        .volumes
        .iter()
        .filter(|v| !v.ephemeral)
        .map(|v| v.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, t};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use mill_crds::{NodeState, Volume, VolumeSpec, VolumeStatus};
    use std::sync::Arc;

    fn pending(name: &str, service: &str, cpu: f64, memory: &str) -> Alloc {
        let mut alloc = fixtures::alloc(name, service, 1, AllocPhase::Pending);
        alloc.spec.node_name = None;
        alloc.spec.host_port = None;
        alloc.spec.template.cpu = cpu;
        alloc.spec.template.memory = memory.parse().unwrap();
        alloc
    }

    fn placements(view: &View) -> Vec<(String, String, u16)> {
        plan(view, t(0), &Knobs::default())
            .into_iter()
            .filter_map(|a| match a {
                Action::PlaceAlloc {
                    alloc,
                    node,
                    host_port,
                } => Some((alloc.name, node, host_port)),
                _ => None,
            })
            .collect()
    }

    fn reasons(view: &View) -> Vec<String> {
        plan(view, t(0), &Knobs::default())
            .into_iter()
            .filter_map(|a| match a {
                Action::SetAllocConditions { conditions, .. } => conditions
                    .into_iter()
                    .find(|c| c.type_ == SCHEDULED)
                    .and_then(|c| c.message),
                _ => None,
            })
            .collect()
    }

    fn view(nodes: Vec<mill_crds::Node>, allocs: Vec<Alloc>) -> View {
        View {
            nodes: nodes.into_iter().map(Arc::new).collect(),
            allocs: allocs.into_iter().map(Arc::new).collect(),
            ..View::default()
        }
    }

    #[test]
    fn replicas_of_a_service_spread_across_nodes() {
        let v = view(
            vec![
                fixtures::node("a", 4.0, "8G"),
                fixtures::node("b", 4.0, "8G"),
                fixtures::node("c", 4.0, "8G"),
            ],
            (1..=4)
                .map(|i| pending(&format!("web-1-{i}"), "web", 0.5, "256M"))
                .collect(),
        );
        let nodes: Vec<String> = placements(&v).into_iter().map(|p| p.1).collect();
        assert_eq!(nodes, vec!["a", "b", "c", "a"]);
    }

    #[test]
    fn fewest_replicas_first_then_least_loaded() {
        let mut busy = fixtures::alloc("db-1-1", "db", 1, AllocPhase::Healthy);
        busy.spec.node_name = Some("a".to_string());
        busy.spec.template.cpu = 3.0;
        let v = view(
            vec![
                fixtures::node("a", 4.0, "8G"),
                fixtures::node("b", 4.0, "8G"),
            ],
            vec![busy, pending("web-1-1", "web", 0.5, "256M")],
        );
        assert_eq!(placements(&v)[0].1, "b");
    }

    #[test]
    fn allocs_that_fit_nowhere_say_what_they_need() {
        let table = [
            (2.0, "4G", "no node has 2 cpu and 4G free"),
            (0.5, "16G", "no node has 0.5 cpu and 16G free"),
        ];
        for (cpu, memory, reason) in table {
            let v = view(
                vec![fixtures::node("a", 1.0, "8G")],
                vec![pending("big-1-1", "big", cpu, memory)],
            );
            assert_eq!(reasons(&v), vec![reason.to_string()]);
        }
    }

    #[test]
    fn what_this_plan_placed_counts_against_the_node() {
        let v = view(
            vec![fixtures::node("a", 1.0, "8G")],
            (1..=5)
                .map(|i| pending(&format!("w-1-{i}"), "w", 0.25, "256M"))
                .collect(),
        );
        assert_eq!(placements(&v).len(), 4);
        assert_eq!(
            reasons(&v),
            vec!["no node has 0.25 cpu and 256M free".to_string()]
        );
    }

    #[test]
    fn live_allocs_count_against_capacity_even_when_allocatable_lags() {
        let mut running = fixtures::alloc("w-1-1", "w", 1, AllocPhase::Running);
        running.spec.node_name = Some("a".to_string());
        running.spec.template.cpu = 1.0;
        let v = view(
            vec![fixtures::node("a", 1.0, "8G")],
            vec![running, pending("w-1-2", "w", 0.5, "256M")],
        );
        assert!(placements(&v).is_empty());
    }

    #[test]
    fn never_places_on_down_draining_or_unschedulable_nodes() {
        let mut down = fixtures::node("a", 8.0, "8G");
        down.status.as_mut().unwrap().state = NodeState::Down;
        let mut draining = fixtures::node("b", 8.0, "8G");
        draining.status.as_mut().unwrap().state = NodeState::Draining;
        let mut cordoned = fixtures::node("c", 8.0, "8G");
        cordoned.spec.unschedulable = true;
        let v = view(
            vec![down, draining, cordoned, fixtures::node("d", 1.0, "1G")],
            vec![pending("w-1-1", "w", 0.5, "256M")],
        );
        assert_eq!(placements(&v)[0].1, "d");
    }

    #[test]
    fn host_ports_are_the_lowest_free_of_the_node_pool() {
        let mut used = fixtures::alloc("w-1-1", "w", 1, AllocPhase::Running);
        used.spec.node_name = Some("a".to_string());
        used.spec.host_port = Some(20000);
        let mut ended = fixtures::alloc("w-1-2", "w", 1, AllocPhase::Stopped);
        ended.spec.node_name = Some("a".to_string());
        ended.spec.host_port = Some(20001);
        let v = view(
            vec![fixtures::node("a", 8.0, "8G")],
            vec![
                used,
                ended,
                pending("x-1-1", "x", 0.1, "1M"),
                pending("x-1-2", "x", 0.1, "1M"),
            ],
        );
        let ports: Vec<u16> = placements(&v).into_iter().map(|p| p.2).collect();
        assert_eq!(ports, vec![20001, 20002]);
    }

    #[test]
    fn a_full_port_pool_keeps_allocs_off_the_node() {
        let mut node = fixtures::node("a", 8.0, "8G");
        node.spec.port_range = Some(mill_crds::PortRange {
            first: 30000,
            last: 30000,
        });
        let v = view(
            vec![node, fixtures::node("b", 8.0, "8G")],
            vec![
                pending("x-1-1", "x", 0.1, "1M"),
                pending("y-1-1", "y", 0.1, "1M"),
            ],
        );
        let placed = placements(&v);
        assert_eq!(placed[0], ("x-1-1".to_string(), "a".to_string(), 30000));
        assert_eq!(placed[1].1, "b");
    }

    #[test]
    fn a_service_with_a_persistent_volume_is_pinned_to_the_node_holding_it() {
        let mut alloc = pending("db-1-1", "db", 0.5, "256M");
        alloc.spec.template.volumes = vec![mill_crds::VolumeMount {
            name: "data".to_string(),
            path: "/data".to_string(),
            size: Some("1G".parse().unwrap()),
            ephemeral: false,
        }];
        let mut volume = Volume::new(
            "data",
            VolumeSpec {
                size: "1G".parse().unwrap(),
                provider: "local".to_string(),
                service: Some("db".to_string()),
            },
        );
        volume.metadata.namespace = Some("default".to_string());
        volume.status = Some(VolumeStatus {
            node: Some("c".to_string()),
            ..VolumeStatus::default()
        });
        let mut v = view(
            vec![
                fixtures::node("a", 8.0, "8G"),
                fixtures::node("b", 8.0, "8G"),
                fixtures::node("c", 8.0, "8G"),
            ],
            vec![alloc],
        );
        v.volumes = vec![Arc::new(volume)];
        assert_eq!(placements(&v)[0].1, "c");
        let mut down = (*v.nodes[2]).clone();
        down.status.as_mut().unwrap().state = NodeState::Down;
        v.nodes[2] = Arc::new(down);
        assert_eq!(
            reasons(&v),
            vec!["volume data is on node c, which is down".to_string()]
        );
    }

    #[test]
    fn an_unchanged_reason_is_not_written_again() {
        let mut alloc = pending("big-1-1", "big", 9.0, "1G");
        alloc.status.as_mut().unwrap().conditions = view::with_condition(
            &alloc,
            SCHEDULED,
            "False",
            Some("no node has 9 cpu and 1G free".to_string()),
            t(0),
        );
        let v = view(vec![fixtures::node("a", 1.0, "8G")], vec![alloc]);
        assert!(plan(&v, t(5), &Knobs::default()).is_empty());
    }

    fn create(name: &str, service: &str, cpu: f64, memory: &str) -> Action {
        let alloc = pending(name, service, cpu, memory);
        Action::CreateAlloc(Box::new(crate::action::NewAlloc {
            key: ObjectKey::of(&alloc.metadata),
            labels: Default::default(),
            owner: None,
            spec: alloc.spec,
        }))
        .independent()
    }

    fn placed_in(action: &Action) -> Option<(String, u16)> {
        match action.write() {
            Action::CreateAlloc(new) => Some((new.spec.node_name.clone()?, new.spec.host_port?)),
            _ => None,
        }
    }

    #[test]
    fn allocs_created_in_a_plan_are_placed_as_the_next_plan_would_place_them() {
        let mut busy = fixtures::alloc("web-1-1", "web", 1, AllocPhase::Healthy);
        busy.spec.node_name = Some("b".to_string());
        busy.spec.template.cpu = 0.5;
        let nodes = vec![
            fixtures::node("a", 1.0, "8G"),
            fixtures::node("b", 4.0, "8G"),
            fixtures::node("c", 4.0, "8G"),
        ];
        let waiting = pending("db-1-1", "db", 0.5, "256M");
        let first = view(nodes.clone(), vec![busy.clone(), waiting.clone()]);
        let mut created = vec![
            create("web-2-2", "web", 0.5, "256M"),
            create("web-2-3", "web", 0.5, "256M"),
            create("big-1-1", "big", 9.0, "256M"),
            create("late-1-1", "late", 0.5, "256M"),
        ];
        created[3] = match created[3].write().clone() {
            Action::CreateAlloc(mut new) => {
                new.spec.desired_state = DesiredState::Stopped;
                Action::CreateAlloc(new)
            }
            other => other,
        };
        let actions = plan_placing(&first, t(0), &Knobs::default(), &mut created);

        // The next plan, had the creates gone out unplaced: the View has this plan's
        // placement of db and the new allocs, created after it.
        let mut db = waiting;
        for action in &actions {
            if let Action::PlaceAlloc {
                node, host_port, ..
            } = action
            {
                db.spec.node_name = Some(node.clone());
                db.spec.host_port = Some(*host_port);
            }
        }
        let mut allocs = vec![busy, db];
        for (i, action) in created.iter().enumerate() {
            let Action::CreateAlloc(new) = action.write() else {
                unreachable!()
            };
            let mut alloc = new.to_alloc();
            alloc.spec.node_name = None;
            alloc.spec.host_port = None;
            alloc.metadata.creation_timestamp = Some(Time(t(1 + i as i64)));
            alloc.status = Some(mill_crds::AllocStatus::default());
            allocs.push(alloc);
        }
        let next = placements(&view(nodes, allocs));
        let expected: Vec<(String, String, u16)> = created
            .iter()
            .filter_map(|a| {
                let (node, port) = placed_in(a)?;
                let Action::CreateAlloc(new) = a.write() else {
                    unreachable!()
                };
                Some((new.key.name.clone(), node, port))
            })
            .collect();
        assert_eq!(next, expected);
        // db (pending before them) went to a; web spreads away from b, and a's port 20000
        // is db's.
        assert_eq!(
            expected,
            vec![
                ("web-2-2".to_string(), "c".to_string(), 20000),
                ("web-2-3".to_string(), "a".to_string(), 20001),
            ]
        );
        assert!(created[2].is_independent(), "the plan's marking stays");
        assert_eq!(
            placed_in(&created[2]),
            None,
            "fits nowhere: the next plan says why"
        );
        assert_eq!(placed_in(&created[3]), None, "not wanted running");
    }

    #[test]
    fn an_alloc_stopped_before_placement_ends_without_an_agent() {
        let mut alloc = pending("w-1-1", "w", 0.5, "256M");
        alloc.spec.desired_state = DesiredState::Stopped;
        let v = view(vec![fixtures::node("a", 1.0, "8G")], vec![alloc]);
        assert!(matches!(
            plan(&v, t(0), &Knobs::default())[..],
            [Action::SetAllocPhase {
                phase: AllocPhase::Stopped,
                ..
            }]
        ));
    }
}

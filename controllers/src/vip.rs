//! The VIP allocator (SPEC §5): every Service gets a stable virtual IP in
//! `127.77.0.0/16`, recorded once in `Service.status.virtualIp` and never changed.
//!
//! A VIP is unique across the cluster (every node listens on every service's
//! `VIP:port`). The first candidate is derived from the Service's uid, so that clusters
//! sharing one host (tests, several nodes on loopback) rarely pick the same address;
//! taken candidates are skipped in order.

use crate::action::Action;
use crate::view::{ObjectKey, View};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The addresses VIPs come from: `127.77.0.1` to `127.77.255.254`.
const FIRST: u32 = u32::from_be_bytes([127, 77, 0, 1]);
const COUNT: u32 = 0xFFFE;

/// A status write giving each Service without a VIP a free one.
pub fn plan(view: &View) -> Vec<Action> {
    let mut taken: BTreeSet<Ipv4Addr> = view
        .services
        .iter()
        .filter_map(|s| s.status.as_ref()?.virtual_ip.as_deref()?.parse().ok())
        .collect();
    let mut services: Vec<_> = view
        .services
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .filter(|s| {
            s.status
                .as_ref()
                .and_then(|st| st.virtual_ip.as_deref())
                .is_none_or(|ip| ip.parse::<Ipv4Addr>().is_err())
        })
        .collect();
    services.sort_by_key(|s| ObjectKey::of(&s.metadata));
    let mut actions = Vec::new();
    for service in services {
        let key = ObjectKey::of(&service.metadata);
        let seed = service
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| format!("{}/{}", key.namespace, key.name));
        let start = fnv1a(seed.as_bytes()) % COUNT;
        let Some(vip) = (0..COUNT)
            .map(|i| Ipv4Addr::from(FIRST + (start + i) % COUNT))
            .find(|ip| !taken.contains(ip))
        else {
            tracing::warn!("no free virtual IP left in 127.77.0.0/16 for service {key:?}");
            break;
        };
        taken.insert(vip);
        let mut status = service.status.clone().unwrap_or_default();
        status.virtual_ip = Some(vip.to_string());
        actions.push(Action::WriteServiceStatus {
            service: key,
            status: Box::new(status),
        });
    }
    actions
}

/// FNV-1a (64 bit): a stable hash, the same on every node and release.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash ^ (hash >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use mill_crds::Service;
    use serde_json::json;
    use std::sync::Arc;

    fn service(name: &str, uid: &str, vip: Option<&str>) -> Arc<Service> {
        let mut object = json!({
            "apiVersion": "mill.dev/v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": "3"},
            "spec": {"image": "busybox", "port": 8080},
        });
        if let Some(vip) = vip {
            object["status"] = json!({"virtualIp": vip});
        }
        Arc::new(serde_json::from_value(object).unwrap())
    }

    fn assigned(actions: &[Action]) -> Vec<(String, String)> {
        actions
            .iter()
            .map(|a| match a {
                Action::WriteServiceStatus { service, status } => (
                    service.name.clone(),
                    status.virtual_ip.clone().unwrap_or_default(),
                ),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_service_without_a_vip_gets_one_in_127_77_and_keeps_it() {
        let view = View {
            services: vec![service("web", "u-1", None)],
            ..View::default()
        };
        let first = assigned(&plan(&view));
        assert_eq!(first.len(), 1);
        let ip: Ipv4Addr = first[0].1.parse().unwrap();
        assert_eq!(ip.octets()[..2], [127, 77]);
        assert_eq!(first, assigned(&plan(&view)), "the same View, the same VIP");
        let view = View {
            services: vec![service("web", "u-1", Some(&first[0].1))],
            ..View::default()
        };
        assert!(plan(&view).is_empty(), "a VIP once given is kept");
    }

    #[test]
    fn two_services_never_share_a_vip() {
        let a = assigned(&plan(&View {
            services: vec![service("a", "same-seed", None)],
            ..View::default()
        }));
        let both = assigned(&plan(&View {
            services: vec![
                service("a", "same-seed", Some(&a[0].1)),
                service("b", "same-seed", None),
            ],
            ..View::default()
        }));
        assert_eq!(both.len(), 1);
        assert_ne!(both[0].1, a[0].1, "a taken candidate is skipped");
        let fresh = assigned(&plan(&View {
            services: vec![
                service("c", "same-seed", None),
                service("d", "same-seed", None),
            ],
            ..View::default()
        }));
        assert_ne!(fresh[0].1, fresh[1].1, "nor within one plan");
    }
}

//! Discovery documents in their legacy (non-aggregated) shapes, which kubectl and
//! kube-rs fall back to when the response is plain `application/json`:
//! `/api` (APIVersions), `/apis` (APIGroupList), `/apis/<group>` (APIGroup),
//! `/api/v1` and `/apis/<group>/<version>` (APIResourceList), and `/version`.

use super::resources::{Registry, ResourceKind};
use serde_json::{json, Value};

/// The Kubernetes version mill's API corresponds to (kubectl warns on large skews).
const KUBE_MAJOR: &str = "1";
const KUBE_MINOR: &str = "32";

/// `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_doc(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": [gv],
        "preferredVersion": gv,
    })
}

fn groups(registry: &Registry) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for kind in registry.all().iter().filter(|k| !k.is_core()) {
        let entry = (kind.group.clone(), kind.version.clone());
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    out
}

/// `/apis`.
pub fn group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = groups(registry)
        .iter()
        .map(|(g, v)| {
            let mut doc = group_doc(g, v);
            if let Some(map) = doc.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            doc
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn group(registry: &Registry, group: &str) -> Value {
    let version = registry
        .in_group(group)
        .next()
        .map_or_else(|| "v1".to_string(), |k| k.version.clone());
    group_doc(group, &version)
}

fn verbs(kind: &ResourceKind) -> Vec<&'static str> {
    let mut verbs = vec!["create", "delete"];
    // Kubernetes does not offer deletecollection on namespaces.
    if !kind.is_namespace() {
        verbs.push("deletecollection");
    }
    verbs.extend(["get", "list", "patch", "update", "watch"]);
    verbs
}

fn resource_entries(kind: &ResourceKind) -> Vec<Value> {
    let mut main = json!({
        "name": kind.plural,
        "singularName": kind.singular,
        "namespaced": kind.namespaced,
        "kind": kind.kind,
        "verbs": verbs(kind),
    });
    if !kind.short_names.is_empty() {
        main["shortNames"] = json!(kind.short_names);
    }
    if !kind.categories.is_empty() {
        main["categories"] = json!(kind.categories);
    }
    let mut entries = vec![main];
    if kind.has_status {
        entries.push(json!({
            "name": format!("{}/status", kind.plural),
            "singularName": "",
            "namespaced": kind.namespaced,
            "kind": kind.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    entries
}

/// `/api/v1` (group `""`) or `/apis/<group>/<version>`.
pub fn resource_list(registry: &Registry, group: &str) -> Value {
    let kinds: Vec<&ResourceKind> = registry.in_group(group).collect();
    let group_version = kinds
        .first()
        .map_or_else(|| "v1".to_string(), |k| k.api_version());
    let resources: Vec<Value> = kinds.iter().flat_map(|k| resource_entries(k)).collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0-mill.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_names_the_server_address() {
        let doc = api_versions("10.0.0.1:4400");
        assert_eq!(doc["kind"], "APIVersions");
        assert_eq!(doc["versions"], json!(["v1"]));
        assert_eq!(
            doc["serverAddressByClientCIDRs"][0]["serverAddress"],
            "10.0.0.1:4400"
        );
    }

    #[test]
    fn group_list_has_mill_with_its_preferred_version() {
        let doc = group_list(&Registry::new());
        assert_eq!(doc["kind"], "APIGroupList");
        let mill = &doc["groups"][0];
        assert_eq!(mill["name"], "mill.dev");
        assert_eq!(mill["preferredVersion"]["groupVersion"], "mill.dev/v1");
        assert_eq!(mill["versions"][0]["version"], "v1");
        assert_eq!(doc["groups"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn mill_resource_list_has_kinds_short_names_and_status_subresources() {
        let doc = resource_list(&Registry::new(), "mill.dev");
        assert_eq!(doc["kind"], "APIResourceList");
        assert_eq!(doc["groupVersion"], "mill.dev/v1");
        let resources = doc["resources"].as_array().unwrap();
        let find = |name: &str| resources.iter().find(|r| r["name"] == name).unwrap();
        let svc = find("services");
        assert_eq!(svc["kind"], "Service");
        assert_eq!(svc["singularName"], "service");
        assert_eq!(svc["namespaced"], true);
        assert_eq!(svc["shortNames"], json!(["svc"]));
        assert_eq!(svc["categories"], json!(["all", "mill"]));
        assert!(svc["verbs"].as_array().unwrap().contains(&json!("watch")));
        assert_eq!(
            find("services/status")["verbs"],
            json!(["get", "patch", "update"])
        );
        assert_eq!(find("nodes")["namespaced"], false);
        assert_eq!(find("nodes")["shortNames"], json!(["no"]));
        for plural in ["tasks", "allocs", "volumes", "deploys"] {
            find(plural);
        }
    }

    #[test]
    fn core_resource_list_has_namespaces_and_secrets() {
        let doc = resource_list(&Registry::new(), "");
        assert_eq!(doc["groupVersion"], "v1");
        let resources = doc["resources"].as_array().unwrap();
        let ns = resources
            .iter()
            .find(|r| r["name"] == "namespaces")
            .unwrap();
        assert_eq!(ns["namespaced"], false);
        assert_eq!(ns["shortNames"], json!(["ns"]));
        assert!(resources
            .iter()
            .any(|r| r["name"] == "secrets" && r["namespaced"] == true));
        assert!(resources.iter().any(|r| r["name"] == "namespaces/status"));
    }
}

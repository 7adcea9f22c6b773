//! OpenAPI v3 documents, built from the same schemas as the CRDs: enough for
//! `kubectl explain` (full schemas in `components.schemas`) and for kubectl to leave
//! validation to the server (a PATCH operation per kind carrying
//! `x-kubernetes-group-version-kind` and the `fieldValidation` parameter).

use super::resources::{Registry, ResourceKind};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const OWNER_REFERENCE: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";

/// The served documents: the index and one document per group-version.
#[derive(Debug, Clone)]
pub struct OpenApi {
    /// `/openapi/v3`.
    pub index: Value,
    /// By group-version path (`api/v1`, `apis/mill.dev/v1`).
    pub documents: BTreeMap<String, Value>,
}

impl OpenApi {
    /// Builds every document from the registry.
    pub fn new(registry: &Registry) -> OpenApi {
        let mut by_gv: BTreeMap<String, Vec<&ResourceKind>> = BTreeMap::new();
        for kind in registry.all() {
            by_gv
                .entry(
                    kind.group_version_path()
                        .trim_start_matches('/')
                        .to_string(),
                )
                .or_default()
                .push(kind);
        }
        let documents: BTreeMap<String, Value> = by_gv
            .into_iter()
            .map(|(gv, kinds)| (gv, document(&kinds)))
            .collect();
        let paths: Map<String, Value> = documents
            .iter()
            .map(|(gv, doc)| {
                let url = format!("/openapi/v3/{gv}?hash={}", content_hash(doc));
                (gv.clone(), json!({"serverRelativeURL": url}))
            })
            .collect();
        OpenApi {
            index: json!({"paths": paths}),
            documents,
        }
    }
}

/// A stable hash of a document, so clients may cache by URL.
fn content_hash(doc: &Value) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    doc.to_string().hash(&mut hasher);
    format!("{:016X}", hasher.finish())
}

/// The component name of a kind: `dev.mill.v1.Service`, `io.k8s.api.core.v1.Secret`.
pub fn schema_name(kind: &ResourceKind, type_name: &str) -> String {
    if kind.is_core() {
        format!("io.k8s.api.core.{}.{type_name}", kind.version)
    } else {
        let reversed: Vec<&str> = kind.group.split('.').rev().collect();
        format!("{}.{}.{type_name}", reversed.join("."), kind.version)
    }
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn gvk(kind: &ResourceKind, kind_name: &str) -> Value {
    json!({"group": kind.group, "version": kind.version, "kind": kind_name})
}

/// The full schema of a kind: the CRD schema plus apiVersion, kind and metadata.
fn kind_schema(kind: &ResourceKind) -> Value {
    let mut schema = kind.schema.clone();
    if !schema.is_object() {
        schema = json!({"type": "object"});
    }
    schema["type"] = json!("object");
    if !schema["properties"].is_object() {
        schema["properties"] = json!({});
    }
    schema["properties"]["apiVersion"] = json!({
        "description": "APIVersion defines the versioned schema of this representation of an object.",
        "type": "string",
    });
    schema["properties"]["kind"] = json!({
        "description": "Kind is a string value representing the REST resource this object represents.",
        "type": "string",
    });
    schema["properties"]["metadata"] = json!({
        "allOf": [reference(OBJECT_META)],
        "default": {},
        "description": "Standard object's metadata.",
    });
    schema["x-kubernetes-group-version-kind"] = json!([gvk(kind, &kind.kind)]);
    schema
}

fn list_schema(kind: &ResourceKind) -> Value {
    json!({
        "description": format!("{} is a list of {}.", kind.list_kind(), kind.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
            "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
            "items": {"type": "array", "items": reference(&schema_name(kind, &kind.kind))},
            "metadata": {"allOf": [reference(LIST_META)], "default": {}},
        },
        "x-kubernetes-group-version-kind": [gvk(kind, &kind.list_kind())],
    })
}

fn meta_schemas() -> Vec<(&'static str, Value)> {
    let string = |d: &str| json!({"type": "string", "description": d});
    let map = |d: &str| json!({"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": d});
    vec![
        (
            OBJECT_META,
            json!({
                "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
                "type": "object",
                "properties": {
                    "name": string("Name must be unique within a namespace. Cannot be updated."),
                    "generateName": string("GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided."),
                    "namespace": string("Namespace defines the space within which each name must be unique. Cannot be updated."),
                    "selfLink": string("Deprecated: selfLink is a legacy read-only field that is no longer populated by the system."),
                    "uid": string("UID is the unique in time and space value for this object. Populated by the system. Read-only."),
                    "resourceVersion": string("An opaque value that represents the internal version of this object, used for optimistic concurrency. Populated by the system. Read-only."),
                    "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state. Populated by the system. Read-only."},
                    "creationTimestamp": {"type": "string", "format": "date-time", "description": "CreationTimestamp is a timestamp representing the server time when this object was created. Populated by the system. Read-only."},
                    "deletionTimestamp": {"type": "string", "format": "date-time", "description": "DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted, set by the server when a graceful deletion is requested. Read-only."},
                    "deletionGracePeriodSeconds": {"type": "integer", "format": "int64", "description": "Number of seconds allowed for this object to gracefully terminate before it will be removed from the system."},
                    "labels": map("Map of string keys and values that can be used to organize and categorize (scope and select) objects."),
                    "annotations": map("Annotations is an unstructured key value map stored with a resource that may be set by external tools to store and retrieve arbitrary metadata."),
                    "ownerReferences": {
                        "type": "array",
                        "items": {"allOf": [reference(OWNER_REFERENCE)], "default": {}},
                        "description": "List of objects depended by this object. If ALL objects in the list have been deleted, this object will be garbage collected.",
                        "x-kubernetes-patch-merge-key": "uid",
                        "x-kubernetes-patch-strategy": "merge",
                    },
                    "finalizers": {
                        "type": "array",
                        "items": {"type": "string", "default": ""},
                        "description": "Must be empty before the object is deleted from the registry.",
                        "x-kubernetes-list-type": "set",
                        "x-kubernetes-patch-strategy": "merge",
                    },
                    "managedFields": {
                        "type": "array",
                        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "description": "ManagedFields maps workflow-id and version to the set of fields that are managed by that workflow. mill does not track them.",
                    },
                },
            }),
        ),
        (
            OWNER_REFERENCE,
            json!({
                "description": "OwnerReference contains enough information to let you identify an owning object.",
                "type": "object",
                "required": ["apiVersion", "kind", "name", "uid"],
                "properties": {
                    "apiVersion": string("API version of the referent."),
                    "kind": string("Kind of the referent."),
                    "name": string("Name of the referent."),
                    "uid": string("UID of the referent."),
                    "controller": {"type": "boolean", "description": "If true, this reference points to the managing controller."},
                    "blockOwnerDeletion": {"type": "boolean", "description": "If true, the owner cannot be deleted from the key-value store until this reference is removed."},
                },
                "x-kubernetes-map-type": "atomic",
            }),
        ),
        (
            LIST_META,
            json!({
                "description": "ListMeta describes metadata that synthetic resources must have.",
                "type": "object",
                "properties": {
                    "resourceVersion": string("String that identifies the server's internal version of this object."),
                    "continue": string("continue may be set if the user set a limit on the number of items returned."),
                    "remainingItemCount": {"type": "integer", "format": "int64"},
                    "selfLink": string("Deprecated."),
                },
            }),
        ),
        (
            PATCH,
            json!({
                "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.",
                "type": "object",
            }),
        ),
        (
            STATUS,
            json!({
                "description": "Status is a return value for calls that don't return other objects.",
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "x-kubernetes-group-version-kind": [{"group": "", "kind": "Status", "version": "v1"}],
            }),
        ),
    ]
}

fn query_param(name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": "string", "uniqueItems": true},
    })
}

fn path_param(name: &str) -> Value {
    json!({
        "name": name,
        "in": "path",
        "required": true,
        "description": format!("{name} of the resource"),
        "schema": {"type": "string", "uniqueItems": true},
    })
}

fn write_params(with_force: bool) -> Vec<Value> {
    let mut params = vec![
        query_param("dryRun", "When present, indicates that modifications should not be persisted. Valid value: All."),
        query_param("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."),
        query_param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict (the default)."),
    ];
    if with_force {
        params.push(json!({"name": "force", "in": "query", "description": "Force is going to \"force\" Apply requests.", "schema": {"type": "boolean", "uniqueItems": true}}));
    }
    params
}

fn list_params() -> Vec<Value> {
    [
        ("allowWatchBookmarks", "allowWatchBookmarks requests watch events with type \"BOOKMARK\"."),
        ("continue", "The continue option should be set when retrieving more results from the server."),
        ("fieldSelector", "A selector to restrict the list of returned objects by their fields."),
        ("labelSelector", "A selector to restrict the list of returned objects by their labels."),
        ("limit", "limit is a maximum number of responses to return for a list call."),
        ("resourceVersion", "resourceVersion sets a constraint on what resource versions a request may be served from."),
        ("resourceVersionMatch", "resourceVersionMatch determines how resourceVersion is applied to list calls."),
        ("sendInitialEvents", "`sendInitialEvents=true` may be set together with `watch=true`."),
        ("timeoutSeconds", "Timeout for the list/watch call."),
        ("watch", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications."),
    ]
    .iter()
    .map(|(n, d)| query_param(n, d))
    .collect()
}

fn response(schema: Value) -> Value {
    json!({
        "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
        "401": {"description": "Unauthorized"},
    })
}

fn operation(
    kind: &ResourceKind,
    action: &str,
    op_id: String,
    params: Vec<Value>,
    body: Option<Value>,
    schema: Value,
) -> Value {
    let mut op = json!({
        "operationId": op_id,
        "tags": [kind.api_version().replace(['/', '.'], "_")],
        "parameters": params,
        "responses": response(schema),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(kind, &kind.kind),
    });
    if let Some(body) = body {
        op["requestBody"] = json!({"content": body, "required": true});
    }
    op
}

/// The operations of one kind, by path.
fn kind_paths(kind: &ResourceKind, paths: &mut Map<String, Value>) {
    let object = reference(&schema_name(kind, &kind.kind));
    let list = reference(&schema_name(kind, &kind.list_kind()));
    let scope = if kind.namespaced { "Namespaced" } else { "" };
    let id = |verb: &str, suffix: &str| {
        let group: String = kind
            .group
            .split('.')
            .map(|p| {
                let mut c = p.chars();
                c.next().map_or_else(String::new, |f| {
                    f.to_ascii_uppercase().to_string() + c.as_str()
                })
            })
            .collect();
        format!(
            "{verb}{}{}{scope}{}{suffix}",
            if group.is_empty() { "Core" } else { &group },
            kind.version.to_uppercase(),
            kind.kind
        )
    };
    let gv = kind.group_version_path();
    let (collection, mut scope_params) = if kind.namespaced {
        (
            format!("{gv}/namespaces/{{namespace}}/{}", kind.plural),
            vec![path_param("namespace")],
        )
    } else {
        (format!("{gv}/{}", kind.plural), Vec::new())
    };
    let object_body = json!({"application/json": {"schema": object.clone()}, "application/yaml": {"schema": object.clone()}});
    let mut patch_types = Map::new();
    for t in [
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    ] {
        patch_types.insert(t.into(), json!({"schema": reference(PATCH)}));
    }
    // Only the core kinds accept strategic merge patches; listing it for mill kinds
    // would make kubectl send them.
    if kind.is_core() {
        patch_types.insert(
            "application/strategic-merge-patch+json".into(),
            json!({"schema": reference(PATCH)}),
        );
    }
    let patch_body = Value::Object(patch_types);

    let mut coll = Map::new();
    coll.insert(
        "get".into(),
        operation(
            kind,
            "list",
            id("list", ""),
            list_params(),
            None,
            list.clone(),
        ),
    );
    coll.insert(
        "post".into(),
        operation(
            kind,
            "post",
            id("create", ""),
            write_params(false),
            Some(object_body.clone()),
            object.clone(),
        ),
    );
    if !kind.is_namespace() {
        coll.insert(
            "delete".into(),
            operation(
                kind,
                "deletecollection",
                id("deleteCollection", ""),
                list_params(),
                None,
                reference(STATUS),
            ),
        );
    }
    coll.insert("parameters".into(), Value::Array(scope_params.clone()));
    paths.insert(collection.clone(), Value::Object(coll));

    scope_params.push(path_param("name"));
    let mut item = Map::new();
    item.insert(
        "get".into(),
        operation(
            kind,
            "get",
            id("read", ""),
            Vec::new(),
            None,
            object.clone(),
        ),
    );
    item.insert(
        "put".into(),
        operation(
            kind,
            "put",
            id("replace", ""),
            write_params(false),
            Some(object_body.clone()),
            object.clone(),
        ),
    );
    item.insert(
        "patch".into(),
        operation(
            kind,
            "patch",
            id("patch", ""),
            write_params(true),
            Some(patch_body.clone()),
            object.clone(),
        ),
    );
    item.insert(
        "delete".into(),
        operation(
            kind,
            "delete",
            id("delete", ""),
            vec![
                query_param(
                    "dryRun",
                    "When present, indicates that modifications should not be persisted.",
                ),
                query_param(
                    "propagationPolicy",
                    "Whether and how garbage collection will be performed.",
                ),
            ],
            None,
            reference(STATUS),
        ),
    );
    item.insert("parameters".into(), Value::Array(scope_params.clone()));
    paths.insert(format!("{collection}/{{name}}"), Value::Object(item));

    if kind.has_status {
        let mut status = Map::new();
        status.insert(
            "get".into(),
            operation(
                kind,
                "get",
                id("read", "Status"),
                Vec::new(),
                None,
                object.clone(),
            ),
        );
        status.insert(
            "put".into(),
            operation(
                kind,
                "put",
                id("replace", "Status"),
                write_params(false),
                Some(object_body),
                object.clone(),
            ),
        );
        status.insert(
            "patch".into(),
            operation(
                kind,
                "patch",
                id("patch", "Status"),
                write_params(true),
                Some(patch_body),
                object,
            ),
        );
        status.insert("parameters".into(), Value::Array(scope_params));
        paths.insert(
            format!("{collection}/{{name}}/status"),
            Value::Object(status),
        );
    }
    if kind.namespaced {
        let mut all = Map::new();
        all.insert(
            "get".into(),
            operation(
                kind,
                "list",
                id("list", "ForAllNamespaces"),
                list_params(),
                None,
                list,
            ),
        );
        paths.insert(format!("{gv}/{}", kind.plural), Value::Object(all));
    }
}

/// The document of one group-version.
fn document(kinds: &[&ResourceKind]) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for (name, schema) in meta_schemas() {
        schemas.insert(name.to_string(), schema);
    }
    for kind in kinds {
        kind_paths(kind, &mut paths);
        schemas.insert(schema_name(kind, &kind.kind), kind_schema(kind));
        schemas.insert(schema_name(kind, &kind.list_kind()), list_schema(kind));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_points_at_each_group_version_document() {
        let api = OpenApi::new(&Registry::new());
        let url = api.index["paths"]["apis/mill.dev/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/apis/mill.dev/v1?hash="));
        assert!(api.index["paths"]["api/v1"].is_object());
        assert!(api.documents.contains_key("apis/mill.dev/v1"));
    }

    #[test]
    fn patch_operations_carry_gvk_and_field_validation() {
        let api = OpenApi::new(&Registry::new());
        let doc = &api.documents["apis/mill.dev/v1"];
        let patch =
            &doc["paths"]["/apis/mill.dev/v1/namespaces/{namespace}/services/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "mill.dev", "version": "v1", "kind": "Service"})
        );
        let params: Vec<&str> = patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(params.contains(&"fieldValidation"));
        let types = patch["requestBody"]["content"].as_object().unwrap();
        assert!(types.contains_key("application/merge-patch+json"));
        assert!(!types.contains_key("application/strategic-merge-patch+json"));
        let node_patch = &doc["paths"]["/apis/mill.dev/v1/nodes/{name}"]["patch"];
        assert_eq!(
            node_patch["x-kubernetes-group-version-kind"]["kind"],
            "Node"
        );
        let core = &api.documents["api/v1"];
        let secret_patch = &core["paths"]["/api/v1/namespaces/{namespace}/secrets/{name}"]["patch"];
        assert!(secret_patch["requestBody"]["content"]
            .get("application/strategic-merge-patch+json")
            .is_some());
    }

    #[test]
    fn schemas_are_complete_for_explain() {
        let api = OpenApi::new(&Registry::new());
        let schemas = &api.documents["apis/mill.dev/v1"]["components"]["schemas"];
        let svc = &schemas["dev.mill.v1.Service"];
        assert_eq!(svc["x-kubernetes-group-version-kind"][0]["kind"], "Service");
        assert!(svc["properties"]["spec"]["properties"]["image"]["description"].is_string());
        assert_eq!(
            svc["properties"]["metadata"]["allOf"][0]["$ref"],
            format!("#/components/schemas/{OBJECT_META}")
        );
        assert!(schemas[OBJECT_META]["properties"]["labels"].is_object());
        let core = &api.documents["api/v1"]["components"]["schemas"];
        assert_eq!(
            core["io.k8s.api.core.v1.Secret"]["x-kubernetes-group-version-kind"][0]["kind"],
            "Secret"
        );
    }
}

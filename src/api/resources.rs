//! The kind registry: every resource the API serves, with its names, scope, printer
//! columns, schema and field selectors.
//!
//! The mill kinds come from `mill_crds::all_crds()` (the single source of their names,
//! short names, categories, columns and schemas); the two core kinds mill serves,
//! `Secret` and `Namespace`, are described here by hand.

use super::objects::{normalize_typed, Normalized};
use serde_json::{json, Value};

/// One printer column of a kind (`additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The header (`Image`, `Age`).
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// An OpenAPI format hint (`name` for the NAME column).
    pub format: String,
    /// What the column shows.
    pub description: String,
    /// 0 for the default view, > 0 for `-o wide` only.
    pub priority: i64,
    /// A simple JSONPath (`.spec.image`) into the object.
    pub json_path: String,
}

/// Checks an object against its Rust type and returns its normal form.
pub type Normalizer = fn(&Value) -> Result<Normalized, super::status::Cause>;

/// One resource the API serves.
#[derive(Debug, Clone)]
pub struct ResourceKind {
    /// The API group; `""` for core.
    pub group: String,
    /// The version (`v1`).
    pub version: String,
    /// The URL name (`services`).
    pub plural: String,
    /// The singular name (`service`).
    pub singular: String,
    /// The kind (`Service`).
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names (`svc`).
    pub short_names: Vec<String>,
    /// Categories (`all`, `mill`).
    pub categories: Vec<String>,
    /// The printer columns after NAME.
    pub columns: Vec<Column>,
    /// The `openAPIV3Schema` of the kind (without `metadata`, as in a CRD).
    pub schema: Value,
    /// Field selector labels beyond `metadata.name` and `metadata.namespace`.
    pub field_labels: Vec<String>,
    /// Whether the kind has a `/status` subresource.
    pub has_status: bool,
    /// The typed check of the object, if the kind has a Rust type.
    pub normalizer: Option<Normalizer>,
}

impl ResourceKind {
    /// Whether this is a core (`v1`) kind.
    pub fn is_core(&self) -> bool {
        self.group.is_empty()
    }

    /// `mill.dev/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.is_core() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `services.mill.dev` or `secrets`: how Kubernetes names the resource in messages.
    pub fn group_resource(&self) -> String {
        if self.is_core() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Service.mill.dev` or `Secret`: how Kubernetes names the kind in `Invalid` messages.
    pub fn qualified_kind(&self) -> String {
        if self.is_core() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// The store's resource name: `"mill.dev/services"`, `"/secrets"`.
    pub fn store_resource(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    /// `ServiceList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The URL prefix of the group-version: `/apis/mill.dev/v1` or `/api/v1`.
    pub fn group_version_path(&self) -> String {
        if self.is_core() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// Whether `label` may be used in a field selector on this kind.
    pub fn supports_field(&self, label: &str) -> bool {
        label == "metadata.name"
            || (label == "metadata.namespace" && self.namespaced)
            || self.field_labels.iter().any(|l| l == label)
    }

    /// Whether this kind is `Secret` (sealed at rest).
    pub fn is_secret(&self) -> bool {
        self.is_core() && self.plural == "secrets"
    }

    /// Whether this kind is `Namespace`.
    pub fn is_namespace(&self) -> bool {
        self.is_core() && self.plural == "namespaces"
    }
}

/// Every kind the API serves.
#[derive(Debug, Clone)]
pub struct Registry {
    kinds: Vec<ResourceKind>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// The mill kinds from their CRDs, then `Namespace` and `Secret`.
    pub fn new() -> Registry {
        let mut kinds: Vec<ResourceKind> = mill_crds::all_crds()
            .iter()
            .filter_map(|crd| serde_json::to_value(crd).ok())
            .filter_map(|crd| from_crd(&crd))
            .collect();
        kinds.push(namespace_kind());
        kinds.push(secret_kind());
        Registry { kinds }
    }

    /// The kind served at `group`/`plural`.
    pub fn find(&self, group: &str, plural: &str) -> Option<&ResourceKind> {
        self.kinds
            .iter()
            .find(|k| k.group == group && k.plural == plural)
    }

    /// Every kind of `group`, in registry order.
    pub fn in_group<'a>(&'a self, group: &'a str) -> impl Iterator<Item = &'a ResourceKind> + 'a {
        self.kinds.iter().filter(move |k| k.group == group)
    }

    /// All kinds.
    pub fn all(&self) -> &[ResourceKind] {
        &self.kinds
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// A registry entry from a CRD (as JSON); `None` if the CRD has no served version.
fn from_crd(crd: &Value) -> Option<ResourceKind> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let version = spec["versions"].as_array()?.first()?;
    let kind = text(&names["kind"]);
    let columns = version["additionalPrinterColumns"]
        .as_array()
        .map(|cols| {
            cols.iter()
                .map(|c| Column {
                    name: text(&c["name"]),
                    type_: text(&c["type"]),
                    format: text(&c["format"]),
                    description: text(&c["description"]),
                    priority: c["priority"].as_i64().unwrap_or(0),
                    json_path: text(&c["jsonPath"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let field_labels = version["selectableFields"]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .filter_map(|f| f["jsonPath"].as_str())
                .map(|p| p.trim_start_matches('.').to_string())
                .collect()
        })
        .unwrap_or_default();
    Some(ResourceKind {
        group: text(&spec["group"]),
        version: text(&version["name"]),
        plural: text(&names["plural"]),
        singular: text(&names["singular"]),
        normalizer: mill_normalizer(&kind),
        kind,
        namespaced: spec["scope"] == "Namespaced",
        short_names: strings(&names["shortNames"]),
        categories: strings(&names["categories"]),
        columns,
        schema: version["schema"]["openAPIV3Schema"].clone(),
        field_labels,
        has_status: version["subresources"]["status"].is_object(),
    })
}

/// The typed check of each mill kind: the object must deserialize into its Rust type.
fn mill_normalizer(kind: &str) -> Option<Normalizer> {
    Some(match kind {
        "Service" => normalize_typed::<mill_crds::Service>,
        "Task" => normalize_typed::<mill_crds::Task>,
        "Alloc" => normalize_typed::<mill_crds::Alloc>,
        "Node" => normalize_typed::<mill_crds::Node>,
        "Volume" => normalize_typed::<mill_crds::Volume>,
        "Deploy" => normalize_typed::<mill_crds::Deploy>,
        _ => return None,
    })
}

fn age_column() -> Column {
    Column {
        name: "Age".into(),
        type_: "date".into(),
        format: String::new(),
        description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(),
        priority: 0,
        json_path: ".metadata.creationTimestamp".into(),
    }
}

fn namespace_kind() -> ResourceKind {
    ResourceKind {
        group: String::new(),
        version: "v1".into(),
        plural: "namespaces".into(),
        singular: "namespace".into(),
        kind: "Namespace".into(),
        namespaced: false,
        short_names: vec!["ns".into()],
        categories: Vec::new(),
        columns: vec![
            Column {
                name: "Status".into(),
                type_: "string".into(),
                format: String::new(),
                description: "The status of the namespace".into(),
                priority: 0,
                json_path: ".status.phase".into(),
            },
            age_column(),
        ],
        schema: json!({
            "description": "Namespace provides a scope for Names. Use of multiple namespaces is optional.",
            "type": "object",
            "properties": {
                "spec": {
                    "description": "Spec defines the behavior of the Namespace.",
                    "type": "object",
                    "properties": {
                        "finalizers": {
                            "description": "Finalizers is an opaque list of values that must be empty to permanently remove object from storage.",
                            "type": "array",
                            "items": {"type": "string"}
                        }
                    }
                },
                "status": {
                    "description": "Status describes the current status of a Namespace.",
                    "type": "object",
                    "properties": {
                        "phase": {
                            "description": "Phase is the current lifecycle phase of the namespace: Active or Terminating.",
                            "type": "string"
                        },
                        "conditions": {
                            "description": "Represents the latest available observations of a namespace's current state.",
                            "type": "array",
                            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                        }
                    }
                }
            }
        }),
        field_labels: vec!["status.phase".into()],
        has_status: true,
        normalizer: Some(normalize_typed::<k8s_openapi::api::core::v1::Namespace>),
    }
}

fn secret_kind() -> ResourceKind {
    ResourceKind {
        group: String::new(),
        version: "v1".into(),
        plural: "secrets".into(),
        singular: "secret".into(),
        kind: "Secret".into(),
        namespaced: true,
        short_names: Vec::new(),
        categories: Vec::new(),
        columns: vec![
            Column {
                name: "Type".into(),
                type_: "string".into(),
                format: String::new(),
                description: "The type of the secret".into(),
                priority: 0,
                json_path: ".type".into(),
            },
            Column {
                name: "Data".into(),
                type_: "integer".into(),
                format: String::new(),
                description: "The number of items in the secret".into(),
                priority: 0,
                // Computed by the table code: the number of keys in `data`.
                json_path: ".data".into(),
            },
            age_column(),
        ],
        schema: json!({
            "description": "Secret holds secret data of a certain type. mill stores it encrypted at rest.",
            "type": "object",
            "properties": {
                "data": {
                    "description": "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The values are base64 encoded.",
                    "type": "object",
                    "additionalProperties": {"type": "string", "format": "byte"}
                },
                "stringData": {
                    "description": "stringData allows specifying non-binary secret data in string form. It is write-only: merged into data on write.",
                    "type": "object",
                    "additionalProperties": {"type": "string"}
                },
                "type": {
                    "description": "Used to facilitate programmatic handling of secret data (default Opaque).",
                    "type": "string"
                },
                "immutable": {
                    "description": "If set to true, the data cannot be updated.",
                    "type": "boolean"
                }
            }
        }),
        field_labels: vec!["type".into()],
        has_status: false,
        normalizer: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_takes_names_and_columns_from_the_crds() {
        let registry = Registry::new();
        let svc = registry.find("mill.dev", "services").unwrap();
        assert_eq!(svc.kind, "Service");
        assert_eq!(svc.short_names, vec!["svc"]);
        assert!(svc.categories.contains(&"all".to_string()));
        assert!(svc.namespaced && svc.has_status);
        assert_eq!(svc.columns.first().unwrap().json_path, ".spec.image");
        let node = registry.find("mill.dev", "nodes").unwrap();
        assert!(!node.namespaced);
        assert_eq!(node.short_names, vec!["no"]);
        let alloc = registry.find("mill.dev", "allocs").unwrap();
        assert!(alloc.supports_field("spec.nodeName"));
        assert!(alloc.supports_field("status.phase"));
        assert!(!svc.supports_field("spec.image"));
        assert_eq!(registry.in_group("mill.dev").count(), 6);
        assert_eq!(registry.in_group("").count(), 2);
    }
}

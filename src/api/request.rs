//! What a request asks for: the target its path names, its query parameters, the
//! representation its Accept header wants, and its body parsed as JSON or YAML.

use super::resources::{Registry, ResourceKind};
use super::status::ApiError;
use serde::Deserialize;
use serde_json::Value;

/// What a path under `/api` or `/apis` names.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// `/api`.
    ApiVersions,
    /// `/api/v1`.
    CoreResources,
    /// `/apis`.
    Groups,
    /// `/apis/<group>`.
    Group(&'a str),
    /// `/apis/<group>/<version>`.
    GroupResources(&'a str),
    /// A collection, an object or its `/status`.
    Resource(ResourceRef<'a>),
}

/// A resource path: the kind, and the namespace, name and subresource it names.
#[derive(Debug, Clone, Copy)]
pub struct ResourceRef<'a> {
    /// The kind.
    pub kind: &'a ResourceKind,
    /// The namespace in the path (`None` for cluster-scoped kinds or all namespaces).
    pub namespace: Option<&'a str>,
    /// The object name (`None` for the collection).
    pub name: Option<&'a str>,
    /// Whether the path is the `/status` subresource.
    pub status: bool,
}

/// Parses a request path against the registry; 404 for anything it does not serve.
pub fn parse_path<'a>(registry: &'a Registry, path: &'a str) -> Result<Target<'a>, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api"] => Ok(Target::ApiVersions),
        ["api", "v1"] => Ok(Target::CoreResources),
        ["api", "v1", rest @ ..] => resource(registry, "", rest),
        ["apis"] => Ok(Target::Groups),
        ["apis", group] if !group.is_empty() && registry.in_group(group).next().is_some() => {
            Ok(Target::Group(group))
        }
        ["apis", group, version] if known(registry, group, version) => {
            Ok(Target::GroupResources(group))
        }
        ["apis", group, version, rest @ ..] if known(registry, group, version) => {
            resource(registry, group, rest)
        }
        _ => Err(ApiError::no_such_path()),
    }
}

fn known(registry: &Registry, group: &str, version: &str) -> bool {
    !group.is_empty() && registry.in_group(group).any(|k| k.version == version)
}

fn resource<'a>(
    registry: &'a Registry,
    group: &str,
    rest: &[&'a str],
) -> Result<Target<'a>, ApiError> {
    let namespaced = match rest {
        ["namespaces", ns, plural, tail @ ..] => registry
            .find(group, plural)
            .filter(|k| k.namespaced)
            .map(|kind| (kind, Some(*ns), tail)),
        _ => None,
    };
    let (kind, namespace, tail) = match namespaced {
        Some(found) => found,
        None => {
            let (plural, tail) = rest.split_first().ok_or_else(ApiError::no_such_path)?;
            let kind = registry
                .find(group, plural)
                .ok_or_else(ApiError::no_such_path)?;
            // A namespaced object is only addressable inside its namespace.
            if kind.namespaced && !tail.is_empty() {
                return Err(ApiError::no_such_path());
            }
            (kind, None, tail)
        }
    };
    if namespace.is_some_and(str::is_empty) {
        return Err(ApiError::no_such_path());
    }
    let (name, status) = match tail {
        [] => (None, false),
        [name] => (Some(*name), false),
        [name, "status"] if kind.has_status => (Some(*name), true),
        _ => return Err(ApiError::no_such_path()),
    };
    Ok(Target::Resource(ResourceRef {
        kind,
        namespace,
        name,
        status,
    }))
}

/// The query parameters of the Kubernetes API that mill honours. Others are accepted and
/// ignored: `resourceVersionMatch` (every list is at least as new as asked),
/// `fieldManager` (mill does not track managed fields), `propagationPolicy` (deletes
/// always cascade in the background).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    /// A label selector.
    pub label_selector: Option<String>,
    /// A field selector.
    pub field_selector: Option<String>,
    /// The page size of a list.
    pub limit: Option<usize>,
    /// The continue token of the previous page.
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
    /// A resourceVersion (list, get, watch).
    pub resource_version: Option<String>,
    /// `true` or `1` to watch.
    pub watch: Option<String>,
    /// Whether the watch may send BOOKMARK events.
    pub allow_watch_bookmarks: Option<String>,
    /// Close the watch after this many seconds.
    pub timeout_seconds: Option<u64>,
    /// Stream the current state as ADDED events first, then an initial-events-end bookmark.
    pub send_initial_events: Option<String>,
    /// `All` to validate without storing.
    pub dry_run: Option<String>,
    /// `Strict`, `Warn` or `Ignore`.
    pub field_validation: Option<String>,
}

/// Whether a boolean query parameter is on (`true` or `1`).
pub fn flag(value: &Option<String>) -> bool {
    matches!(value.as_deref(), Some("true" | "1"))
}

impl Params {
    /// The parameters of `uri`; 400 if a value has the wrong type.
    pub fn from_uri(uri: &axum::http::Uri) -> Result<Params, ApiError> {
        axum::extract::Query::<Params>::try_from_uri(uri)
            .map(|q| q.0)
            .map_err(|e| {
                ApiError::bad_request(format!("invalid query parameters: {}", e.body_text()))
            })
    }

    /// Whether this is a dry run.
    pub fn dry_run(&self) -> bool {
        self.dry_run.as_deref() == Some("All")
    }
}

/// How the client wants objects represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// The objects themselves.
    Object,
    /// A `meta.k8s.io/v1` Table (server-side printing).
    Table,
    /// `PartialObjectMetadata` (metadata only).
    Metadata,
}

/// The representation the Accept header prefers (the first media range mill can serve).
pub fn representation(accept: Option<&str>) -> Representation {
    let Some(accept) = accept else {
        return Representation::Object;
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let essence = parts.next().unwrap_or_default();
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        if !matches!(essence, "application/json" | "*/*" | "application/*") {
            continue;
        }
        match (param("as"), param("g")) {
            (None, _) => return Representation::Object,
            (Some("Table"), Some("meta.k8s.io")) => return Representation::Table,
            (Some("PartialObjectMetadata" | "PartialObjectMetadataList"), Some("meta.k8s.io")) => {
                return Representation::Metadata
            }
            _ => continue,
        }
    }
    Representation::Object
}

/// Parses a JSON body; 400 with the parser's line and column.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// Parses a YAML body; 400 with the parser's line and column.
pub fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}")))
}

/// Parses an object body by its Content-Type (YAML when it says so, JSON otherwise).
pub fn parse_object(content_type: Option<&str>, body: &[u8]) -> Result<Value, ApiError> {
    let value = if content_type.is_some_and(|c| c.starts_with(super::protobuf::CONTENT_TYPE)) {
        super::protobuf::decode(body)?
    } else if content_type.is_some_and(|c| c.contains("yaml")) {
        parse_yaml(body)?
    } else {
        parse_json(body)?
    };
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collections_objects_and_status() {
        let registry = Registry::new();
        let target = |p: &'static str| parse_path(&registry, p);
        assert!(matches!(target("/api"), Ok(Target::ApiVersions)));
        assert!(matches!(
            target("/apis/mill.dev/v1"),
            Ok(Target::GroupResources("mill.dev"))
        ));
        assert!(matches!(
            target("/apis/mill.dev"),
            Ok(Target::Group("mill.dev"))
        ));
        let Ok(Target::Resource(r)) =
            target("/apis/mill.dev/v1/namespaces/prod/services/web/status")
        else {
            panic!("not a resource");
        };
        assert_eq!(
            (r.kind.plural.as_str(), r.namespace, r.name, r.status),
            ("services", Some("prod"), Some("web"), true)
        );
        let Ok(Target::Resource(r)) = target("/apis/mill.dev/v1/services") else {
            panic!()
        };
        assert_eq!((r.namespace, r.name), (None, None));
        let Ok(Target::Resource(r)) = target("/apis/mill.dev/v1/nodes/n1") else {
            panic!()
        };
        assert_eq!((r.kind.kind.as_str(), r.name), ("Node", Some("n1")));
        let Ok(Target::Resource(r)) = target("/api/v1/namespaces/prod") else {
            panic!()
        };
        assert_eq!((r.kind.kind.as_str(), r.name), ("Namespace", Some("prod")));
        let Ok(Target::Resource(r)) = target("/api/v1/namespaces/prod/status") else {
            panic!()
        };
        assert!(r.status && r.kind.is_namespace());
        let Ok(Target::Resource(r)) = target("/api/v1/namespaces/prod/secrets/s") else {
            panic!()
        };
        assert_eq!(
            (r.kind.kind.as_str(), r.namespace, r.name),
            ("Secret", Some("prod"), Some("s"))
        );
        for missing in [
            "/api/v1/namespaces/prod/resourcequotas",
            "/api/v1/namespaces/prod/limitranges",
            "/apis/mill.dev/v2/services",
            "/apis/other/v1/services",
            "/apis/mill.dev/v1/services/web",
            "/api/v1/namespaces/p/secrets/s/status",
            "/api/v1/pods",
        ] {
            assert_eq!(target(missing).unwrap_err().code, 404, "{missing}");
        }
    }

    #[test]
    fn accept_header_picks_the_representation() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(representation(Some(kubectl)), Representation::Table);
        assert_eq!(
            representation(Some("application/json")),
            Representation::Object
        );
        assert_eq!(representation(None), Representation::Object);
        assert_eq!(
            representation(Some(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
            )),
            Representation::Metadata
        );
        assert_eq!(
            representation(Some("application/vnd.kubernetes.protobuf,application/json")),
            Representation::Object
        );
    }

    #[test]
    fn malformed_bodies_report_line_and_column() {
        let err = parse_object(None, b"{\n  \"a\": }").unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("line 2 column"), "{}", err.message);
        let err = parse_object(Some("application/yaml"), b"a: b\n  c: : d\n").unwrap_err();
        assert!(err.message.contains("line 2"), "{}", err.message);
        assert_eq!(parse_object(None, b"[1]").unwrap_err().code, 400);
    }
}

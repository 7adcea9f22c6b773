//! Server-side printing: `meta.k8s.io/v1` Tables for `kubectl get`.
//!
//! Columns come from the kind's printer columns (CRD `additionalPrinterColumns`),
//! preceded by NAME; `date` cells are rendered as ages (`5m`, `3h`, `2d`) the way
//! Kubernetes does, because kubectl prints cells verbatim.

use super::resources::{Column, ResourceKind};
use serde_json::{json, Value};

/// The age of `timestamp` (RFC 3339) at `now`, as `kubectl get` shows it.
pub fn age(timestamp: &str, now: jiff::Timestamp) -> String {
    match timestamp.parse::<jiff::Timestamp>() {
        Ok(then) => human_duration(now.as_second() - then.as_second()),
        Err(_) => "<invalid>".to_string(),
    }
}

/// Kubernetes' `duration.HumanDuration`: precise when short, coarse when long.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    let seconds = seconds.max(0);
    let minutes = seconds / 60;
    let hours = seconds / 3600;
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Evaluates a simple JSONPath (`.spec.image`, `.status.conditions[0].type`).
pub fn eval_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut current = obj;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (field, indexes) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !field.is_empty() {
            current = current.get(field)?;
        }
        for index in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            current = current.get(index.parse::<usize>().ok()?)?;
        }
    }
    Some(current)
}

/// The NAME column every table starts with.
fn name_column() -> Value {
    json!({
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": "Name must be unique within a namespace.",
        "priority": 0,
    })
}

/// The column definitions of `kind`'s tables.
pub fn column_definitions(kind: &ResourceKind) -> Vec<Value> {
    std::iter::once(name_column())
        .chain(kind.columns.iter().map(|c| {
            json!({
                "name": c.name,
                "type": c.type_,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        }))
        .collect()
}

fn cell(kind: &ResourceKind, column: &Column, obj: &Value, now: jiff::Timestamp) -> Value {
    // The secret DATA column counts keys, as Kubernetes' own printer does.
    if kind.is_secret() && column.name == "Data" {
        return json!(obj
            .get("data")
            .and_then(Value::as_object)
            .map_or(0, |d| d.len()));
    }
    match eval_path(obj, &column.json_path) {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) if column.type_ == "date" => json!(age(s, now)),
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => v.clone(),
        Some(other) => json!(other.to_string()),
    }
}

/// `row.object`: the object's metadata as a `PartialObjectMetadata`.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// One table row for `obj`.
pub fn row(kind: &ResourceKind, obj: &Value, now: jiff::Timestamp) -> Value {
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .cloned()
        .unwrap_or(Value::Null);
    let cells: Vec<Value> = std::iter::once(name)
        .chain(kind.columns.iter().map(|c| cell(kind, c, obj, now)))
        .collect();
    json!({"cells": cells, "object": partial_metadata(obj)})
}

/// A Table of `objects`, consistent at `resource_version`.
pub fn table(
    kind: &ResourceKind,
    objects: &[&Value],
    resource_version: &str,
    continue_token: Option<&str>,
) -> Value {
    let now = jiff::Timestamp::now();
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(kind),
        "rows": objects.iter().map(|o| row(kind, o, now)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::Registry;

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60 * 5, "3h5m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (50 * 3600, "2d2h"),
            (8 * 86400, "8d"),
            (400 * 86400, "400d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (10 * 365 * 86400, "10y"),
            (-5, "<invalid>"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(human_duration(seconds), expected, "{seconds}s");
        }
        let now: jiff::Timestamp = "2024-01-01T00:05:00Z".parse().unwrap();
        assert_eq!(age("2024-01-01T00:00:00Z", now), "5m");
    }

    #[test]
    fn jsonpath_reads_fields_and_indexes() {
        let obj = json!({"spec": {"image": "a", "list": [{"x": 1}, {"x": 2}]}});
        assert_eq!(eval_path(&obj, ".spec.image"), Some(&json!("a")));
        assert_eq!(eval_path(&obj, ".spec.list[1].x"), Some(&json!(2)));
        assert_eq!(eval_path(&obj, "{.spec.image}"), Some(&json!("a")));
        assert_eq!(eval_path(&obj, ".spec.missing"), None);
    }

    #[test]
    fn service_table_has_name_printer_columns_and_ages() {
        let registry = Registry::new();
        let kind = registry.find("mill.dev", "services").unwrap();
        let obj = json!({
            "apiVersion": "mill.dev/v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"image": "web:1", "replicas": 2, "port": 80},
            "status": {"healthyReplicas": 1},
        });
        let t = table(kind, &[&obj], "7", None);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["Name", "Image", "Replicas", "Healthy", "Revision", "Port", "Age"]
        );
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "web:1");
        assert_eq!(cells[2], 2);
        assert_eq!(cells[4], Value::Null);
        assert!(
            cells[6].as_str().unwrap().ends_with('y') || cells[6].as_str().unwrap().contains('y')
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "default");
    }

    #[test]
    fn secret_table_counts_data_keys() {
        let registry = Registry::new();
        let kind = registry.find("", "secrets").unwrap();
        let obj = json!({"metadata": {"name": "s", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "type": "Opaque", "data": {"a": "eA==", "b": "eQ=="}});
        let t = table(kind, &[&obj], "1", None);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Type", "Data", "Age"]);
        assert_eq!(t["rows"][0]["cells"][1], "Opaque");
        assert_eq!(t["rows"][0]["cells"][2], 2);
    }
}

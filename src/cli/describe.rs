//! `mill describe KIND NAME`: one object for a person — its metadata, spec and status,
//! its conditions, and its recent history: for a service the revisions (with failures)
//! and the rollout steps its deploys recorded, and its allocs; for an alloc its phase
//! changes; for a deploy its steps and results; for a node the allocs placed on it.

use super::client::{Client, ClientError};
use super::get::{self, Kind};
use super::output;
use reqwest::Method;
use serde_json::Value;
use std::fmt::Write;

/// `mill describe`.
pub async fn run(client: &Client, kind: &str, name: &str, namespace: &str) -> anyhow::Result<()> {
    let kind = get::resolve(client, kind).await?;
    let object: Value = client
        .get(&kind.object(namespace, name))
        .await
        .map_err(|e| match e {
            ClientError::NotFound(_) => anyhow::anyhow!(
                "{} \"{name}\" not found in namespace \"{namespace}\"; mill get {} lists them",
                kind.singular,
                kind.plural
            ),
            e => e.into(),
        })?;
    let mut text = String::new();
    header(&mut text, &kind, &object);
    if let Some(spec) = object.get("spec").filter(|s| !s.is_null()) {
        section(&mut text, "Spec", &output::yaml(spec));
    }
    if kind.kind == "Secret" {
        let keys: Vec<&String> = object["data"]
            .as_object()
            .map(|d| d.keys().collect())
            .unwrap_or_default();
        let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        let _ = writeln!(text, "Data keys:    {}", none_if_empty(&keys.join(", ")));
    }
    if let Some(status) = object.get("status").filter(|s| !s.is_null()) {
        let mut brief = status.clone();
        if let Some(map) = brief.as_object_mut() {
            for long in ["conditions", "history", "events", "results"] {
                map.remove(long);
            }
        }
        section(&mut text, "Status", &output::yaml(&brief));
        conditions(&mut text, &status["conditions"]);
    }
    match kind.kind.as_str() {
        "Service" => service_history(&mut text, client, namespace, name, &object).await?,
        "Alloc" => alloc_history(&mut text, client, namespace, name, &object).await?,
        "Deploy" => deploy_history(&mut text, &object),
        "Node" => node_allocs(&mut text, client, name).await?,
        _ => {}
    }
    print!("{text}");
    Ok(())
}

fn none_if_empty(s: &str) -> &str {
    if s.is_empty() {
        "<none>"
    } else {
        s
    }
}

fn header(text: &mut String, kind: &Kind, object: &Value) {
    let meta = &object["metadata"];
    let pairs = |v: &Value| {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", output::cell(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let created = meta["creationTimestamp"].as_str().unwrap_or_default();
    let _ = writeln!(text, "Name:         {}", output::cell(&meta["name"]));
    if kind.namespaced {
        let _ = writeln!(text, "Namespace:    {}", output::cell(&meta["namespace"]));
    }
    let _ = writeln!(text, "Kind:         {}", kind.kind);
    let _ = writeln!(
        text,
        "Created:      {created} ({} ago)",
        output::age(created)
    );
    let _ = writeln!(
        text,
        "Labels:       {}",
        none_if_empty(&pairs(&meta["labels"]))
    );
    let _ = writeln!(
        text,
        "Annotations:  {}",
        none_if_empty(&pairs(&meta["annotations"]))
    );
    if let Some(deleting) = meta["deletionTimestamp"].as_str() {
        let _ = writeln!(text, "Deleting:     since {deleting}");
    }
}

fn section(text: &mut String, title: &str, body: &str) {
    let _ = writeln!(text, "{title}:");
    for line in body.lines() {
        let _ = writeln!(text, "  {line}");
    }
}

fn indented_table(text: &mut String, title: &str, headers: &[&str], rows: Vec<Vec<String>>) {
    let _ = writeln!(text, "{title}:");
    if rows.is_empty() {
        let _ = writeln!(text, "  <none>");
        return;
    }
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for line in output::table(&headers, &rows).lines() {
        let _ = writeln!(text, "  {line}");
    }
}

fn conditions(text: &mut String, conditions: &Value) {
    let rows: Vec<Vec<String>> = conditions
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            vec![
                output::cell(&c["type"]),
                output::cell(&c["status"]),
                c["reason"].as_str().unwrap_or("").to_string(),
                c["lastTransitionTime"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    indented_table(
        text,
        "Conditions",
        &["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"],
        rows,
    );
}

async fn list(
    client: &Client,
    path: &str,
    field: Option<(&str, &str)>,
) -> anyhow::Result<Vec<Value>> {
    let mut request = client.request(Method::GET, path);
    if let Some((field, value)) = field {
        request = request.query(&[("fieldSelector", format!("{field}={value}"))]);
    }
    let list: Value = client.json(request).await?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn allocs_table(text: &mut String, allocs: &[Value]) {
    let rows = allocs
        .iter()
        .map(|a| {
            vec![
                output::cell(&a["metadata"]["name"]),
                output::cell(&a["spec"]["revision"]),
                output::cell(&a["spec"]["nodeName"]),
                output::cell(&a["status"]["phase"]),
                a["status"]["restarts"].as_i64().unwrap_or(0).to_string(),
                a["status"]["reason"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    indented_table(
        text,
        "Allocs",
        &["NAME", "REVISION", "NODE", "PHASE", "RESTARTS", "REASON"],
        rows,
    );
}

/// A deploy event as one line of detail.
fn event_detail(event: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(node) = event["node"].as_str() {
        parts.push(format!("on {node}"));
    }
    if let Some(alloc) = event["alloc"].as_str() {
        parts.push(format!("alloc {alloc}"));
    }
    if let Some(elapsed) = event["elapsed"].as_f64() {
        parts.push(format!("after {elapsed:.1}s"));
    }
    if let Some(reason) = event["reason"].as_str() {
        parts.push(format!("reason: {reason}"));
    }
    parts.join(", ")
}

async fn service_history(
    text: &mut String,
    client: &Client,
    namespace: &str,
    name: &str,
    service: &Value,
) -> anyhow::Result<()> {
    let revisions = service["status"]["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                output::cell(&r["revision"]),
                r["createdAt"].as_str().unwrap_or("").to_string(),
                r["cause"].as_str().unwrap_or("").to_string(),
                output::cell(&r["template"]["image"]),
                r["failure"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    indented_table(
        text,
        "Revisions",
        &["REVISION", "CREATED", "CAUSE", "IMAGE", "FAILURE"],
        revisions,
    );
    let deploys = list(
        client,
        &format!("/apis/mill.dev/v1/namespaces/{namespace}/deploys"),
        None,
    )
    .await?;
    let mut steps: Vec<Vec<String>> = Vec::new();
    for deploy in &deploys {
        let deploy_name = deploy["metadata"]["name"].as_str().unwrap_or_default();
        for event in deploy["status"]["events"].as_array().into_iter().flatten() {
            if event["service"].as_str() == Some(name) {
                steps.push(vec![
                    event["time"].as_str().unwrap_or("").to_string(),
                    deploy_name.to_string(),
                    output::cell(&event["phase"]),
                    event_detail(event),
                ]);
            }
        }
    }
    steps.sort();
    indented_table(
        text,
        "Rollout steps",
        &["TIME", "DEPLOY", "STEP", "DETAIL"],
        steps,
    );
    let allocs = list(
        client,
        &format!("/apis/mill.dev/v1/namespaces/{namespace}/allocs"),
        Some(("spec.service", name)),
    )
    .await?;
    allocs_table(text, &allocs);
    Ok(())
}

async fn alloc_history(
    text: &mut String,
    client: &Client,
    namespace: &str,
    name: &str,
    alloc: &Value,
) -> anyhow::Result<()> {
    let mut events: Vec<Vec<String>> = Vec::new();
    let at = |v: &Value| v.as_str().unwrap_or("").to_string();
    events.push(vec![
        at(&alloc["metadata"]["creationTimestamp"]),
        "created".into(),
        format!("revision {}", output::cell(&alloc["spec"]["revision"])),
    ]);
    let deploys = list(
        client,
        &format!("/apis/mill.dev/v1/namespaces/{namespace}/deploys"),
        None,
    )
    .await?;
    for deploy in &deploys {
        for event in deploy["status"]["events"].as_array().into_iter().flatten() {
            if event["alloc"].as_str() == Some(name) {
                events.push(vec![
                    at(&event["time"]),
                    at(&event["phase"]),
                    event_detail(event),
                ]);
            }
        }
    }
    let status = &alloc["status"];
    if status["startedAt"].is_string() {
        events.push(vec![
            at(&status["startedAt"]),
            "started".into(),
            String::new(),
        ]);
    }
    for condition in status["conditions"].as_array().into_iter().flatten() {
        events.push(vec![
            at(&condition["lastTransitionTime"]),
            format!("{}={}", at(&condition["type"]), at(&condition["status"])),
            at(&condition["message"]),
        ]);
    }
    if status["finishedAt"].is_string() {
        let mut detail = Vec::new();
        if let Some(code) = status["exitCode"].as_i64() {
            detail.push(format!("exit code {code}"));
        }
        if let Some(reason) = status["reason"].as_str() {
            detail.push(format!("reason: {reason}"));
        }
        events.push(vec![
            at(&status["finishedAt"]),
            at(&status["phase"]),
            detail.join(", "),
        ]);
    }
    events.retain(|e| !e[0].is_empty());
    events.sort();
    indented_table(text, "History", &["TIME", "EVENT", "DETAIL"], events);
    Ok(())
}

fn deploy_history(text: &mut String, deploy: &Value) {
    let at = |v: &Value| v.as_str().unwrap_or("").to_string();
    let steps = deploy["status"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                at(&e["time"]),
                at(&e["service"]),
                at(&e["phase"]),
                event_detail(e),
            ]
        })
        .collect();
    indented_table(text, "Steps", &["TIME", "SERVICE", "STEP", "DETAIL"], steps);
    let results = deploy["status"]["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                at(&r["service"]),
                if r["success"].as_bool() == Some(true) {
                    "ok".into()
                } else {
                    "failed".into()
                },
                at(&r["reason"]),
            ]
        })
        .collect();
    indented_table(text, "Results", &["SERVICE", "RESULT", "REASON"], results);
}

async fn node_allocs(text: &mut String, client: &Client, name: &str) -> anyhow::Result<()> {
    let allocs = list(
        client,
        "/apis/mill.dev/v1/allocs",
        Some(("spec.nodeName", name)),
    )
    .await?;
    allocs_table(text, &allocs);
    Ok(())
}

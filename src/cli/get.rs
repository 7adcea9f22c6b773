//! `mill get KIND [NAME] [-o wide|yaml|json|name] [-w] [-l SELECTOR] [-A]`: objects of any
//! kind through the Kubernetes-shaped API, so `mill get` and `kubectl get` list the same
//! things. KIND is resolved from discovery (kind, plural, singular or short name, any
//! case); tables are the server's (`as=Table`), so the columns are the same as kubectl's.
//! `-w` prints the list, then one line per change as it happens.

use super::client::{Client, ClientError};
use super::output::{self, Format};
use reqwest::Method;
use serde_json::Value;
use std::io::Write;

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// A kind as discovery names it.
#[derive(Debug, Clone)]
pub struct Kind {
    /// `""` (core) or `mill.dev`.
    pub group: String,
    /// `Service`.
    pub kind: String,
    /// `services`.
    pub plural: String,
    /// `service`.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
}

impl Kind {
    /// The collection path: in `namespace`, or across all when `None` (or cluster-scoped).
    pub fn collection(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{}/v1", self.group)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{base}/namespaces/{ns}/{}", self.plural),
            _ => format!("{base}/{}", self.plural),
        }
    }

    /// One object's path.
    pub fn object(&self, namespace: &str, name: &str) -> String {
        format!("{}/{name}", self.collection(Some(namespace)))
    }

    /// `alloc.mill.dev/NAME`, `secret/NAME` (kubectl's `-o name`).
    pub fn name_of(&self, name: &str) -> String {
        if self.group.is_empty() {
            format!("{}/{name}", self.singular)
        } else {
            format!("{}.{}/{name}", self.singular, self.group)
        }
    }
}

/// The kind `given` names, from the server's discovery documents.
pub async fn resolve(client: &Client, given: &str) -> anyhow::Result<Kind> {
    let wanted = given.to_ascii_lowercase();
    let mut known = Vec::new();
    for (group, path) in [("", "/api/v1"), ("mill.dev", "/apis/mill.dev/v1")] {
        let list: Value = client.get(path).await?;
        for resource in list["resources"].as_array().into_iter().flatten() {
            let plural = resource["name"].as_str().unwrap_or_default();
            if plural.contains('/') {
                continue;
            }
            let kind = resource["kind"].as_str().unwrap_or_default();
            let singular = match resource["singularName"].as_str() {
                Some(s) if !s.is_empty() => s.to_string(),
                _ => kind.to_ascii_lowercase(),
            };
            let shorts: Vec<&str> = resource["shortNames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let found = Kind {
                group: group.to_string(),
                kind: kind.to_string(),
                plural: plural.to_string(),
                singular: singular.clone(),
                namespaced: resource["namespaced"].as_bool().unwrap_or(true),
            };
            let matches = [plural, singular.as_str(), &kind.to_ascii_lowercase()]
                .contains(&wanted.as_str())
                || shorts.contains(&wanted.as_str())
                || format!("{plural}.{group}") == wanted
                || format!("{singular}.{group}") == wanted;
            if matches {
                return Ok(found);
            }
            known.push(plural.to_string());
        }
    }
    anyhow::bail!(
        "unknown kind \"{given}\"; the kinds are: {}",
        known.join(", ")
    )
}

/// What `mill get` was asked.
pub struct GetArgs<'a> {
    /// `KIND`.
    pub kind: &'a str,
    /// `NAME`.
    pub name: Option<&'a str>,
    /// `-n`.
    pub namespace: &'a str,
    /// `-A`.
    pub all_namespaces: bool,
    /// `-l`.
    pub selector: Option<&'a str>,
    /// `-w`.
    pub watch: bool,
    /// `-o` / `--json`.
    pub format: Format,
}

/// `mill get`.
pub async fn run(client: &Client, args: &GetArgs<'_>) -> anyhow::Result<()> {
    let kind = resolve(client, args.kind).await?;
    let namespace = (!args.all_namespaces).then_some(args.namespace);
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(selector) = args.selector {
        query.push(("labelSelector", selector.to_string()));
    }
    let tabular = matches!(args.format, Format::Table | Format::Wide);
    let (path, single) = match args.name {
        Some(name) if !args.watch => (kind.object(args.namespace, name), true),
        Some(name) => {
            query.push(("fieldSelector", format!("metadata.name={name}")));
            (kind.collection(Some(args.namespace)), false)
        }
        None => (kind.collection(namespace), false),
    };
    let accept = if tabular { TABLE } else { "application/json" };
    let request = client
        .request(Method::GET, &path)
        .query(&query)
        .header(reqwest::header::ACCEPT, accept);
    let answer: Value = client
        .json(request)
        .await
        .map_err(|e| not_found(e, &kind, args))?;
    let show_namespace = args.all_namespaces && kind.namespaced;
    let mut out = std::io::stdout().lock();
    let printed = match args.format {
        Format::Table | Format::Wide => {
            let table = Tabular::new(&answer, args.format == Format::Wide, show_namespace);
            if table.rows.is_empty() && !args.watch {
                let scope = match namespace {
                    Some(ns) if kind.namespaced => format!(" in namespace \"{ns}\""),
                    _ => String::new(),
                };
                eprintln!("No {} found{scope}.", kind.plural);
                return Ok(());
            }
            let text = output::table(&table.headers, &table.rows);
            write!(out, "{text}")?;
            Some(table)
        }
        Format::Json => {
            write!(out, "{}", output::json(&answer))?;
            None
        }
        Format::Yaml => {
            write!(out, "{}", output::yaml(&answer))?;
            None
        }
        Format::Name => {
            let items: Vec<&Value> = if single {
                vec![&answer]
            } else {
                answer["items"].as_array().into_iter().flatten().collect()
            };
            for item in items {
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                writeln!(out, "{}", kind.name_of(name))?;
            }
            None
        }
    };
    out.flush()?;
    drop(out);
    if args.watch {
        let version = answer["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        watch(client, &kind, &path, query, &version, args.format, printed).await?;
    }
    Ok(())
}

/// A 404 of the kind's path names the object (or the namespace) the operator asked for.
fn not_found(err: ClientError, kind: &Kind, args: &GetArgs<'_>) -> anyhow::Error {
    match (err, args.name) {
        (ClientError::NotFound(_), Some(name)) => anyhow::anyhow!(
            "{} \"{name}\" not found in namespace \"{}\"; mill get {} lists them",
            kind.singular,
            args.namespace,
            kind.plural
        ),
        (err, _) => err.into(),
    }
}

/// A server Table as headers and rows of text.
struct Tabular {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Which of the server's columns are shown.
    shown: Vec<usize>,
    namespace: bool,
}

impl Tabular {
    fn new(table: &Value, wide: bool, namespace: bool) -> Tabular {
        let columns: Vec<&Value> = table["columnDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let shown: Vec<usize> = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| wide || c["priority"].as_i64().unwrap_or(0) == 0)
            .map(|(i, _)| i)
            .collect();
        let mut headers: Vec<String> = Vec::new();
        if namespace {
            headers.push("NAMESPACE".into());
        }
        headers.extend(shown.iter().map(|i| {
            columns[*i]["name"]
                .as_str()
                .unwrap_or_default()
                .to_uppercase()
        }));
        let mut tabular = Tabular {
            headers,
            rows: Vec::new(),
            shown,
            namespace,
        };
        tabular.rows = tabular.rows_of(table);
        tabular
    }

    fn rows_of(&self, table: &Value) -> Vec<Vec<String>> {
        table["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                let cells = row["cells"].as_array().cloned().unwrap_or_default();
                let mut line = Vec::new();
                if self.namespace {
                    line.push(output::cell(&row["object"]["metadata"]["namespace"]));
                }
                line.extend(
                    self.shown
                        .iter()
                        .map(|i| output::cell(cells.get(*i).unwrap_or(&Value::Null))),
                );
                line
            })
            .collect()
    }

    /// The widths the first table gave each column, to line later rows up under it.
    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        widths
    }
}

/// `-w`: one line per watch event after the list.
async fn watch(
    client: &Client,
    kind: &Kind,
    path: &str,
    mut query: Vec<(&str, String)>,
    version: &str,
    format: Format,
    table: Option<Tabular>,
) -> anyhow::Result<()> {
    query.push(("watch", "true".to_string()));
    query.push(("resourceVersion", version.to_string()));
    query.push(("allowWatchBookmarks", "false".to_string()));
    let accept = if table.is_some() {
        TABLE
    } else {
        "application/json"
    };
    let request = client
        .request(Method::GET, path)
        .query(&query)
        .header(reqwest::header::ACCEPT, accept);
    let mut answer = client.send(request).await?;
    let widths = table.as_ref().map(Tabular::widths);
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|e| ClientError::Unreachable(e.to_string(), path.to_string()))?
    {
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if event["type"] == "ERROR" {
                anyhow::bail!(
                    "the watch ended: {}; run mill get -w again",
                    event["object"]["message"]
                        .as_str()
                        .unwrap_or("unknown error")
                );
            }
            if event["type"] == "BOOKMARK" {
                continue;
            }
            let object = &event["object"];
            let text = match (&table, format) {
                (Some(table), _) => {
                    let widths = widths.as_deref().unwrap_or_default();
                    table
                        .rows_of(object)
                        .iter()
                        .map(|row| aligned(row, widths))
                        .collect::<String>()
                }
                (None, Format::Json) => {
                    format!("{}\n", serde_json::to_string(&event).unwrap_or_default())
                }
                (None, Format::Yaml) => format!("---\n{}", output::yaml(object)),
                (None, _) => format!(
                    "{}\n",
                    kind.name_of(object["metadata"]["name"].as_str().unwrap_or_default())
                ),
            };
            let mut out = std::io::stdout().lock();
            write!(out, "{text}")?;
            out.flush()?;
        }
    }
    Ok(())
}

/// A row padded to `widths` (three spaces between columns), without trailing spaces.
fn aligned(row: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, cell) in row.iter().enumerate() {
        line.push_str(cell);
        if i + 1 < row.len() {
            let width = widths.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count()) + 3;
            line.push_str(&" ".repeat(pad));
        }
    }
    format!("{}\n", line.trim_end())
}

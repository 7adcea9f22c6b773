//! Checks across values: names, paths, interpolation and what it references, routes and
//! volumes shared between services, and what the cluster can hold.

use super::cluster::ClusterFacts;
use super::convert;
use super::diagnostic::{Diagnostic, SourceMap};
use super::parse::{At, ContainerDecl, Document, Text};
use mill_crds::template::{self, Part};
use mill_crds::NodeResources;
use std::collections::{BTreeSet, HashMap};

/// Adds every problem of `document` to `diagnostics`.
pub(crate) fn check(
    document: &Document,
    cluster: &dyn ClusterFacts,
    map: &SourceMap<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let mut checker = Checker {
        map,
        cluster,
        nodes: cluster.node_capacities().filter(|nodes| !nodes.is_empty()),
        services: document
            .services
            .iter()
            .map(|s| s.name.value.as_str())
            .collect(),
        diagnostics,
    };
    checker.names(document);
    checker.routes(document);
    checker.volumes(document);
    for service in &document.services {
        let owner = format!("service \"{}\"", service.name.value);
        checker.container(&service.container, &owner, &service.name, "replica");
        if let Some(path) = service.health.as_ref().and_then(|h| h.path.as_ref()) {
            checker.absolute_path(path, "health path");
        }
    }
    for task in &document.tasks {
        let owner = format!("task \"{}\"", task.name.value);
        checker.container(&task.container, &owner, &task.name, "run");
    }
}

struct Checker<'a, 'd> {
    map: &'a SourceMap<'a>,
    cluster: &'a dyn ClusterFacts,
    /// Node capacities, when known and there are nodes at all.
    nodes: Option<Vec<NodeResources>>,
    /// The services the file declares.
    services: BTreeSet<&'a str>,
    diagnostics: &'d mut Vec<Diagnostic>,
}

const DNS_LABEL_RULE: &str =
    "use a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters";

impl Checker<'_, '_> {
    fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.diagnostics.push(self.map.at(offset, message));
    }

    fn line(&self, offset: usize) -> usize {
        self.map.position(offset).0
    }

    /// Names are DNS labels and unique per kind.
    fn names(&mut self, document: &Document) {
        for (kind, names) in [
            (
                "service",
                document
                    .services
                    .iter()
                    .map(|s| &s.name)
                    .collect::<Vec<_>>(),
            ),
            ("task", document.tasks.iter().map(|t| &t.name).collect()),
        ] {
            let mut first: HashMap<&str, usize> = HashMap::new();
            for name in names {
                if !template::is_dns_label(&name.value) {
                    self.error(
                        name.offset,
                        format!("invalid {kind} name \"{}\": {DNS_LABEL_RULE}", name.value),
                    );
                }
                match first.get(name.value.as_str()) {
                    Some(&earlier) => {
                        let line = self.line(earlier);
                        self.error(
                            name.offset,
                            format!(
                                "duplicate {kind} \"{}\" (first defined on line {line})",
                                name.value
                            ),
                        );
                    }
                    None => {
                        first.insert(&name.value, name.offset);
                    }
                }
            }
        }
    }

    /// Hosts are hostnames, paths absolute, and no two routes claim the same host and path.
    fn routes(&mut self, document: &Document) {
        let mut claimed: HashMap<(String, String), (&str, usize)> = HashMap::new();
        for service in &document.services {
            for route in &service.routes {
                if !is_hostname(&route.host.value) {
                    self.error(
                        route.host.offset,
                        format!("invalid route host \"{}\": expected a hostname such as \"app.example.com\"", route.host.value),
                    );
                }
                if let Some(path) = &route.path {
                    self.absolute_path(path, "route path");
                }
                let path = route.path.as_ref().map_or("/", |p| p.value.as_str());
                // Hosts are case-insensitive in HTTP.
                let key = (route.host.value.to_ascii_lowercase(), path.to_string());
                match claimed.get(&key) {
                    Some(&(owner, offset)) => {
                        let line = self.line(offset);
                        self.error(
                            route.host.offset,
                            format!(
                                "route \"{}\" path \"{path}\" is already claimed by service \"{owner}\" (line {line})",
                                route.host.value
                            ),
                        );
                    }
                    None => {
                        claimed.insert(key, (&service.name.value, route.host.offset));
                    }
                }
            }
        }
    }

    /// Volume names are DNS labels, each mounted by one service; persistent ones have a size.
    fn volumes(&mut self, document: &Document) {
        let mut mounted: HashMap<&str, (&str, usize)> = HashMap::new();
        for service in &document.services {
            for volume in &service.volumes {
                let name = &volume.name;
                if !template::is_dns_label(&name.value) {
                    self.error(
                        name.offset,
                        format!("invalid volume name \"{}\": {DNS_LABEL_RULE}", name.value),
                    );
                }
                if volume.size.is_none() && volume.ephemeral != Some(true) {
                    self.error(
                        name.offset,
                        format!(
                            "persistent volume \"{}\" needs a size: add size = \"1Gi\", or ephemeral = true for scratch space",
                            name.value
                        ),
                    );
                }
                if let Some(path) = &volume.path {
                    self.absolute_path(path, "volume path");
                }
                match mounted.get(name.value.as_str()) {
                    Some(&(owner, offset)) => {
                        let line = self.line(offset);
                        self.error(
                            name.offset,
                            format!(
                                "volume \"{}\" is already mounted by service \"{owner}\" (line {line}): a volume belongs to one service",
                                name.value
                            ),
                        );
                    }
                    None => {
                        mounted.insert(&name.value, (&service.name.value, name.offset));
                    }
                }
            }
        }
    }

    fn absolute_path(&mut self, path: &Text, what: &str) {
        if !path.value.starts_with('/') {
            self.error(
                path.offset,
                format!("{what} must start with \"/\", found \"{}\"", path.value),
            );
        }
    }

    /// Interpolation, the secrets and services it references, and whether the cluster has
    /// a node big enough for one instance (`unit`: a replica or a run).
    fn container(&mut self, container: &ContainerDecl, owner: &str, name: &At<String>, unit: &str) {
        for (_, value) in &container.env {
            self.interpolation(value, owner);
        }
        for arg in container.command.iter().flatten() {
            self.interpolation(arg, owner);
        }
        self.capacity(container, owner, name, unit);
    }

    fn interpolation(&mut self, text: &Text, owner: &str) {
        let parts = match template::parse(&text.value) {
            Ok(parts) => parts,
            Err(err) => {
                self.error(text.source_offset(err.offset), err.message);
                return;
            }
        };
        // Parts carry no offsets; each reference is the next `${secret(` or `${service.` of
        // the value, since text parts never hold one (the parser would have taken it).
        let mut cursor = 0;
        for part in parts {
            let (needle, missing) = match &part {
                Part::Text(_) => continue,
                Part::Secret(name) => (
                    "${secret(",
                    (self.cluster.secret_exists(name) == Some(false))
                        .then(|| format!("secret \"{name}\" not found (referenced by {owner})")),
                ),
                Part::ServiceAddress(name) => (
                    "${service.",
                    (!self.services.contains(name.as_str()) && !self.cluster.service_exists(name))
                        .then(|| format!("service \"{name}\" not found (referenced by {owner})")),
                ),
            };
            let at = text
                .value
                .get(cursor..)
                .and_then(|rest| rest.find(needle))
                .map_or(cursor, |i| cursor + i);
            cursor = at + needle.len();
            if let Some(message) = missing {
                self.error(text.source_offset(at), message);
            }
        }
    }

    fn capacity(&mut self, container: &ContainerDecl, owner: &str, name: &At<String>, unit: &str) {
        let Some(nodes) = &self.nodes else {
            return;
        };
        let (default_cpu, default_memory) = convert::default_resources();
        let cpu = container.cpu.as_ref().map_or(default_cpu, |c| c.value);
        let memory = container
            .memory
            .as_ref()
            .map_or(default_memory, |m| m.value);
        let cpu_at = container.cpu.as_ref().map_or(name.offset, |c| c.offset);
        let memory_at = container.memory.as_ref().map_or(name.offset, |m| m.offset);
        let most_cpu = nodes.iter().map(|n| n.cpu).fold(0.0, f64::max);
        let most_memory = nodes.iter().map(|n| n.memory).max().unwrap_or_default();
        let fits_cpu = cpu <= most_cpu;
        let fits_memory = memory <= most_memory;
        let mut errors = Vec::new();
        if !fits_cpu {
            errors.push((
                cpu_at,
                format!("{owner} needs {cpu} cpu per {unit}, more than any node has (largest: {most_cpu})"),
            ));
        }
        if !fits_memory {
            errors.push((
                memory_at,
                format!("{owner} needs {memory} memory per {unit}, more than any node has (largest: {most_memory})"),
            ));
        }
        if fits_cpu && fits_memory && !nodes.iter().any(|n| cpu <= n.cpu && memory <= n.memory) {
            errors.push((
                name.offset,
                format!(
                    "{owner} needs {cpu} cpu and {memory} memory per {unit}, but no node has both"
                ),
            ));
        }
        for (offset, message) in errors {
            self.error(offset, message);
        }
    }
}

/// Whether `host` is a hostname: dot-separated labels of letters, digits and '-'.
fn is_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_dot_separated_labels() {
        for ok in ["a.com", "app.example.com", "localhost", "A-1.b"] {
            assert!(is_hostname(ok), "{ok}");
        }
        for bad in ["", "a b", "a..b", "-a.com", "a/b", "a.com:80", "*.a.com"] {
            assert!(!is_hostname(bad), "{bad}");
        }
    }
}

//! From the HCL tree to declarations: the shape of mill's blocks. Checks what one block
//! or one value can tell alone — known blocks and fields, labels, required fields, types,
//! ranges, sizes and durations — and keeps the position of every value for the checks
//! across values in `validate`.

use super::diagnostic::{Diagnostic, SourceMap};
use super::syntax::Tree;
use hcl_edit::expr::Expression;
use hcl_edit::structure::{Attribute, Block, Body, Structure};
use hcl_edit::template::{Element, Template};
use hcl_edit::Span;
use mill_crds::{ByteSize, Duration};
use std::collections::HashMap;

/// A value and the byte offset where it is written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct At<T> {
    pub value: T,
    pub offset: usize,
}

/// A string value and where its pieces are written, so that a problem inside the string
/// (a malformed interpolation) can point into the source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Text {
    pub value: String,
    /// Where the string starts in the source (its opening quote).
    pub offset: usize,
    /// `(offset in value, offset in source)` at the start of each piece, ascending.
    pieces: Vec<(usize, usize)>,
}

impl Text {
    /// The source offset of byte `at` of the value. Exact at the start of every literal
    /// and interpolation; inside a literal with escapes it may be off by the escapes.
    pub(crate) fn source_offset(&self, at: usize) -> usize {
        let i = self.pieces.partition_point(|&(value, _)| value <= at);
        match i.checked_sub(1).and_then(|i| self.pieces.get(i)) {
            Some(&(value, source)) => source + (at - value),
            None => self.offset,
        }
    }
}

/// The declarations of a file, in file order.
#[derive(Debug, Default)]
pub(crate) struct Document {
    pub services: Vec<ServiceDecl>,
    pub tasks: Vec<TaskDecl>,
}

/// The fields services and tasks share: what runs in the container.
#[derive(Debug, Default)]
pub(crate) struct ContainerDecl {
    pub image: Option<Text>,
    pub command: Option<Vec<Text>>,
    pub cpu: Option<At<f64>>,
    pub memory: Option<At<ByteSize>>,
    pub env: Vec<(At<String>, Text)>,
}

#[derive(Debug)]
pub(crate) struct ServiceDecl {
    pub name: At<String>,
    pub container: ContainerDecl,
    pub port: Option<u16>,
    pub replicas: Option<i32>,
    pub health: Option<HealthDecl>,
    pub routes: Vec<RouteDecl>,
    pub volumes: Vec<VolumeDecl>,
    pub update: Option<UpdateDecl>,
}

#[derive(Debug)]
pub(crate) struct HealthDecl {
    pub path: Option<Text>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub failure_threshold: Option<u32>,
}

#[derive(Debug)]
pub(crate) struct RouteDecl {
    pub host: At<String>,
    pub path: Option<Text>,
    pub websocket: Option<bool>,
}

#[derive(Debug)]
pub(crate) struct VolumeDecl {
    pub name: At<String>,
    pub path: Option<Text>,
    pub size: Option<ByteSize>,
    pub ephemeral: Option<bool>,
}

#[derive(Debug)]
pub(crate) struct UpdateDecl {
    pub max_parallel: Option<u32>,
    pub health_timeout: Option<Duration>,
    pub auto_rollback: Option<bool>,
}

#[derive(Debug)]
pub(crate) struct TaskDecl {
    pub name: At<String>,
    pub container: ContainerDecl,
    pub timeout: Option<Duration>,
}

const TOP_BLOCKS: &[&str] = &["service", "task"];
const SERVICE_FIELDS: &[&str] = &["image", "command", "port", "replicas", "cpu", "memory"];
const SERVICE_BLOCKS: &[&str] = &["env", "health", "route", "volume", "update"];
const TASK_FIELDS: &[&str] = &["image", "command", "cpu", "memory", "timeout"];
const TASK_BLOCKS: &[&str] = &["env"];
const HEALTH_FIELDS: &[&str] = &["path", "interval", "timeout", "failure_threshold"];
const ROUTE_FIELDS: &[&str] = &["path", "websocket"];
const VOLUME_FIELDS: &[&str] = &["path", "size", "ephemeral"];
const UPDATE_FIELDS: &[&str] = &["max_parallel", "health_timeout", "auto_rollback"];

/// Reads the declarations of `tree`, adding every problem found to `diagnostics`.
pub(crate) fn declarations(
    tree: &Tree,
    map: &SourceMap<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Document {
    let mut reader = Reader {
        map,
        text: &tree.text,
        redefined: &tree.redefined,
        diagnostics,
    };
    reader.document(&tree.body)
}

/// The members of a block body that belong to its schema.
struct Members<'b> {
    attrs: Vec<&'b Attribute>,
    blocks: Vec<&'b Block>,
}

impl<'b> Members<'b> {
    fn attr(&self, key: &str) -> Option<&'b Attribute> {
        self.attrs.iter().copied().find(|a| a.key.as_str() == key)
    }

    fn blocks(&self, ident: &'b str) -> impl Iterator<Item = &'b Block> + '_ {
        self.blocks
            .iter()
            .copied()
            .filter(move |b| b.ident.as_str() == ident)
    }
}

struct Reader<'a, 'd> {
    map: &'a SourceMap<'a>,
    /// The parsed text (see [`Tree::text`]): raw interpolation text is cut from it.
    text: &'a str,
    redefined: &'a HashMap<usize, String>,
    diagnostics: &'d mut Vec<Diagnostic>,
}

fn start<T: Span + ?Sized>(node: &T) -> usize {
    node.span().map_or(0, |span| span.start)
}

impl Reader<'_, '_> {
    fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.diagnostics.push(self.map.at(offset, message));
    }

    fn document(&mut self, body: &Body) -> Document {
        let mut document = Document::default();
        let members = self.members(body, "the file", &[], TOP_BLOCKS);
        for block in members.blocks {
            match block.ident.as_str() {
                "service" => {
                    if let Some(service) = self.service(block) {
                        document.services.push(service);
                    }
                }
                _ => {
                    if let Some(task) = self.task(block) {
                        document.tasks.push(task);
                    }
                }
            }
        }
        document
    }

    /// Sorts a body into the attributes and blocks its schema knows, reporting the rest.
    fn members<'b>(
        &mut self,
        body: &'b Body,
        context: &str,
        fields: &[&str],
        blocks: &[&str],
    ) -> Members<'b> {
        let mut members = Members {
            attrs: Vec::new(),
            blocks: Vec::new(),
        };
        for structure in body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let key = attr.key.as_str();
                    let offset = start(&attr.key);
                    if self.is_redefined(body, attr, "field") {
                        continue;
                    }
                    if fields.contains(&key) {
                        members.attrs.push(attr);
                    } else if blocks.contains(&key) {
                        self.error(
                            offset,
                            format!("\"{key}\" is a block, not a field: write {key} {{ ... }}"),
                        );
                    } else {
                        let message = unknown("field", key, context, fields, blocks);
                        self.error(offset, message);
                    }
                }
                Structure::Block(block) => {
                    let ident = block.ident.as_str();
                    let offset = start(&block.ident);
                    if blocks.contains(&ident) {
                        members.blocks.push(block);
                    } else if fields.contains(&ident) {
                        self.error(
                            offset,
                            format!("\"{ident}\" is a field, not a block: write {ident} = ..."),
                        );
                    } else {
                        let message = unknown("block", ident, context, fields, blocks);
                        self.error(offset, message);
                    }
                }
            }
        }
        members
    }

    /// Reports `attr` if it is the redefinition of a key set earlier in `body`.
    fn is_redefined(&mut self, body: &Body, attr: &Attribute, what: &str) -> bool {
        let offset = start(&attr.key);
        let Some(name) = self.redefined.get(&offset) else {
            return false;
        };
        let first = body
            .attributes()
            .find(|a| a.key.as_str() == name.as_str())
            .map(|a| self.map.position(start(&a.key)).0);
        let message = match first {
            Some(line) => format!("duplicate {what} \"{name}\" (first set on line {line})"),
            None => format!("duplicate {what} \"{name}\""),
        };
        self.error(offset, message);
        true
    }

    /// The single name label of a `service`, `task`, `route` or `volume` block.
    fn name_label(&mut self, block: &Block, what: &str) -> Option<At<String>> {
        let ident = block.ident.as_str();
        match block.labels.as_slice() {
            [label] => Some(At {
                value: label.as_str().to_string(),
                offset: start(label),
            }),
            [] => {
                self.error(
                    start(&block.ident),
                    format!(
                        "{ident} block needs a {what}: write {ident} \"{}\" {{ ... }}",
                        what.to_uppercase()
                    ),
                );
                None
            }
            [_, second, ..] => {
                self.error(
                    start(second),
                    format!(
                        "{ident} block takes one {what}, found {} labels",
                        block.labels.len()
                    ),
                );
                None
            }
        }
    }

    /// Reports the labels of a block that takes none.
    fn no_labels(&mut self, block: &Block) {
        if let Some(label) = block.labels.first() {
            let ident = block.ident.as_str();
            self.error(
                start(label),
                format!("{ident} block takes no label: write {ident} {{ ... }}"),
            );
        }
    }

    /// The one block named `ident` among `members`, reporting any further ones.
    fn single_block<'b>(
        &mut self,
        members: &Members<'b>,
        ident: &'b str,
        context: &str,
    ) -> Option<&'b Block> {
        let mut found = members.blocks(ident);
        let first = found.next();
        for extra in found {
            self.error(
                start(&extra.ident),
                format!("duplicate block \"{ident}\" in {context}"),
            );
        }
        first
    }

    fn missing(&mut self, offset: usize, context: &str, field: &str) {
        self.error(
            offset,
            format!("{context}: missing required field \"{field}\""),
        );
    }

    fn service(&mut self, block: &Block) -> Option<ServiceDecl> {
        let name = self.name_label(block, "name")?;
        let context = format!("service \"{}\"", name.value);
        let members = self.members(&block.body, &context, SERVICE_FIELDS, SERVICE_BLOCKS);
        let container = self.container(&members, &context, name.offset);
        let port = members
            .attr("port")
            .and_then(|a| self.integer(a, 1, 65535))
            .and_then(|p| u16::try_from(p).ok());
        if members.attr("port").is_none() {
            self.missing(name.offset, &context, "port");
        }
        let replicas = members
            .attr("replicas")
            .and_then(|a| self.integer(a, 0, i64::from(i32::MAX)))
            .and_then(|r| i32::try_from(r).ok());
        let health = self
            .single_block(&members, "health", &context)
            .map(|b| self.health(b, &context));
        let routes = members
            .blocks("route")
            .filter_map(|b| self.route(b, &context))
            .collect::<Vec<_>>();
        let volumes = members
            .blocks("volume")
            .filter_map(|b| self.volume(b, &context))
            .collect::<Vec<_>>();
        let update = self
            .single_block(&members, "update", &context)
            .map(|b| self.update(b, &context));
        Some(ServiceDecl {
            name,
            container,
            port,
            replicas,
            health,
            routes,
            volumes,
            update,
        })
    }

    fn task(&mut self, block: &Block) -> Option<TaskDecl> {
        let name = self.name_label(block, "name")?;
        let context = format!("task \"{}\"", name.value);
        let members = self.members(&block.body, &context, TASK_FIELDS, TASK_BLOCKS);
        let container = self.container(&members, &context, name.offset);
        let timeout = members.attr("timeout").and_then(|a| self.duration(a));
        Some(TaskDecl {
            name,
            container,
            timeout,
        })
    }

    /// The container fields of a service or task; `label` is where its name is written.
    fn container(&mut self, members: &Members<'_>, context: &str, label: usize) -> ContainerDecl {
        let image = members.attr("image").and_then(|a| self.string(a, false));
        if members.attr("image").is_none() {
            self.missing(label, context, "image");
        }
        let command = members.attr("command").and_then(|a| self.command(a));
        let cpu = members.attr("cpu").and_then(|a| self.cpu(a));
        let memory = members.attr("memory").and_then(|a| {
            let offset = start(&a.value);
            self.size(a).map(|value| At { value, offset })
        });
        let env = match self.single_block(members, "env", context) {
            Some(block) => self.env(block, context),
            None => Vec::new(),
        };
        ContainerDecl {
            image,
            command,
            cpu,
            memory,
            env,
        }
    }

    fn env(&mut self, block: &Block, context: &str) -> Vec<(At<String>, Text)> {
        self.no_labels(block);
        let mut env = Vec::new();
        for structure in block.body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    if self.is_redefined(&block.body, attr, "environment variable") {
                        continue;
                    }
                    let key = attr.key.as_str();
                    let key_offset = start(&attr.key);
                    if key.contains('-') {
                        self.error(
                            key_offset,
                            format!("invalid environment variable name \"{key}\": use letters, digits and '_'"),
                        );
                    }
                    let Some(value) = self.env_value(attr) else {
                        continue;
                    };
                    let name = At {
                        value: key.to_string(),
                        offset: key_offset,
                    };
                    env.push((name, value));
                }
                Structure::Block(inner) => self.error(
                    start(&inner.ident),
                    format!("env of {context} holds NAME = \"value\" pairs, not blocks"),
                ),
            }
        }
        env
    }

    fn env_value(&mut self, attr: &Attribute) -> Option<Text> {
        let key = attr.key.as_str();
        match &attr.value {
            Expression::Number(_) | Expression::Bool(_) => {
                let written = self.written(&attr.value);
                self.error(
                    start(&attr.value),
                    format!("environment variable \"{key}\" must be a string, found {} (quote it: \"{written}\")", kind(&attr.value)),
                );
                None
            }
            value => self.text(value, &format!("environment variable \"{key}\""), true),
        }
    }

    fn health(&mut self, block: &Block, service: &str) -> HealthDecl {
        self.no_labels(block);
        let context = format!("health of {service}");
        let members = self.members(&block.body, &context, HEALTH_FIELDS, &[]);
        let path = members.attr("path").and_then(|a| self.string(a, false));
        if members.attr("path").is_none() {
            self.missing(start(&block.ident), &context, "path");
        }
        HealthDecl {
            path,
            interval: members.attr("interval").and_then(|a| self.duration(a)),
            timeout: members.attr("timeout").and_then(|a| self.duration(a)),
            failure_threshold: members
                .attr("failure_threshold")
                .and_then(|a| self.integer(a, 1, i64::from(u32::MAX)))
                .and_then(|n| u32::try_from(n).ok()),
        }
    }

    fn route(&mut self, block: &Block, service: &str) -> Option<RouteDecl> {
        let host = self.name_label(block, "host")?;
        let context = format!("route \"{}\" of {service}", host.value);
        let members = self.members(&block.body, &context, ROUTE_FIELDS, &[]);
        Some(RouteDecl {
            host,
            path: members.attr("path").and_then(|a| self.string(a, false)),
            websocket: members.attr("websocket").and_then(|a| self.bool(a)),
        })
    }

    fn volume(&mut self, block: &Block, service: &str) -> Option<VolumeDecl> {
        let name = self.name_label(block, "name")?;
        let context = format!("volume \"{}\" of {service}", name.value);
        let members = self.members(&block.body, &context, VOLUME_FIELDS, &[]);
        let path = members.attr("path").and_then(|a| self.string(a, false));
        if members.attr("path").is_none() {
            self.missing(name.offset, &context, "path");
        }
        Some(VolumeDecl {
            name,
            path,
            size: members.attr("size").and_then(|a| self.size(a)),
            ephemeral: members.attr("ephemeral").and_then(|a| self.bool(a)),
        })
    }

    fn update(&mut self, block: &Block, service: &str) -> UpdateDecl {
        self.no_labels(block);
        let context = format!("update of {service}");
        let members = self.members(&block.body, &context, UPDATE_FIELDS, &[]);
        UpdateDecl {
            max_parallel: members
                .attr("max_parallel")
                .and_then(|a| self.integer(a, 1, i64::from(u32::MAX)))
                .and_then(|n| u32::try_from(n).ok()),
            health_timeout: members
                .attr("health_timeout")
                .and_then(|a| self.duration(a)),
            auto_rollback: members.attr("auto_rollback").and_then(|a| self.bool(a)),
        }
    }

    /// The source text of an expression, as written.
    fn written(&self, expr: &Expression) -> &str {
        expr.span()
            .and_then(|span| self.text.get(span))
            .unwrap_or_default()
    }

    fn type_error(&mut self, attr: &Attribute, expected: &str) {
        let key = attr.key.as_str();
        let found = kind(&attr.value);
        let hint = match &attr.value {
            Expression::Variable(_) => {
                format!(" (write \"{}\" in quotes)", self.written(&attr.value))
            }
            _ => String::new(),
        };
        self.error(
            start(&attr.value),
            format!("\"{key}\" must be {expected}, found {found}{hint}"),
        );
    }

    fn string(&mut self, attr: &Attribute, interpolate: bool) -> Option<Text> {
        let subject = format!("\"{}\"", attr.key.as_str());
        self.text(&attr.value, &subject, interpolate)
    }

    /// A string value; `interpolate` says whether `${...}` may appear in it. `subject`
    /// names the value in messages (`"image"`, `environment variable "A"`).
    fn text(&mut self, expr: &Expression, subject: &str, interpolate: bool) -> Option<Text> {
        let offset = start(expr);
        match expr {
            Expression::String(s) => Some(Text {
                value: s.value().clone(),
                offset,
                pieces: vec![(0, offset + 1)],
            }),
            Expression::StringTemplate(t) => self.template(t, offset, subject, interpolate),
            Expression::HeredocTemplate(h) => {
                self.template(&h.template, offset, subject, interpolate)
            }
            _ => {
                let found = kind(expr);
                let hint = match expr {
                    Expression::Variable(_) => {
                        format!(" (write \"{}\" in quotes)", self.written(expr))
                    }
                    _ => String::new(),
                };
                self.error(
                    offset,
                    format!("{subject} must be a string, found {found}{hint}"),
                );
                None
            }
        }
    }

    /// A template string with its interpolations kept as written, for mill's own
    /// interpolation (`mill_crds::template`) to read: HCL would otherwise evaluate them.
    fn template(
        &mut self,
        template: &Template,
        offset: usize,
        subject: &str,
        interpolate: bool,
    ) -> Option<Text> {
        let mut value = String::new();
        let mut pieces = Vec::new();
        for element in template.iter() {
            match element {
                Element::Literal(literal) => {
                    pieces.push((value.len(), start(literal)));
                    value.push_str(literal.value());
                }
                Element::Interpolation(interpolation) => {
                    let at = interpolation.span().map_or(offset, |s| s.start);
                    if !interpolate {
                        self.error(
                            at,
                            format!("{subject} cannot use interpolation: only env values and command arguments are interpolated"),
                        );
                        return None;
                    }
                    pieces.push((value.len(), at));
                    value.push_str("${");
                    value.push_str(self.written(&interpolation.expr));
                    value.push('}');
                }
                Element::Directive(directive) => {
                    let at = directive_start(directive).unwrap_or(offset);
                    self.error(
                        at,
                        "template directives (%{ ... }) are not supported: write %%{ for a literal %{",
                    );
                    return None;
                }
            }
        }
        Some(Text {
            value,
            offset,
            pieces,
        })
    }

    fn command(&mut self, attr: &Attribute) -> Option<Vec<Text>> {
        let Expression::Array(array) = &attr.value else {
            self.type_error(
                attr,
                "a list of strings such as [\"/bin/sh\", \"-c\", \"...\"]",
            );
            return None;
        };
        if array.is_empty() {
            self.error(
                start(&attr.value),
                "\"command\" must not be empty: leave it out to run the image's entrypoint",
            );
            return None;
        }
        // The good arguments are kept even next to bad ones, so that their interpolation
        // is checked too; the bad ones are reported, so the file is rejected anyway.
        let mut args = Vec::new();
        for arg in array.iter() {
            match arg {
                Expression::String(_)
                | Expression::StringTemplate(_)
                | Expression::HeredocTemplate(_) => {
                    args.extend(self.text(arg, "\"command\"", true));
                }
                other => {
                    let written = self.written(other);
                    self.error(
                        start(other),
                        format!(
                            "command arguments must be strings, found {} (quote it: \"{written}\")",
                            kind(other)
                        ),
                    );
                }
            }
        }
        Some(args)
    }

    /// A whole number in `min..=max`.
    fn integer(&mut self, attr: &Attribute, min: i64, max: i64) -> Option<i64> {
        let Expression::Number(number) = &attr.value else {
            self.type_error(attr, "an integer");
            return None;
        };
        let key = attr.key.as_str();
        let number = *number.value();
        let value = match (number.as_i64(), number.as_f64()) {
            (Some(n), _) => Some(n),
            (None, Some(f)) if f.fract() != 0.0 => {
                self.error(
                    start(&attr.value),
                    format!("\"{key}\" must be a whole number, found {number}"),
                );
                return None;
            }
            // Larger than any i64: out of every range below.
            _ => None,
        };
        let in_range = value.is_some_and(|n| (min..=max).contains(&n));
        if !in_range {
            // Ranges bounded only by the type read better as "N or more".
            let unbounded = max >= i64::from(i32::MAX);
            let expected = match value {
                Some(n) if n < min && unbounded => format!("{min} or more"),
                _ if unbounded => format!("at most {max}"),
                _ => format!("between {min} and {max}"),
            };
            self.error(
                start(&attr.value),
                format!("\"{key}\" must be {expected}, found {number}"),
            );
            return None;
        }
        value
    }

    fn cpu(&mut self, attr: &Attribute) -> Option<At<f64>> {
        let Expression::Number(number) = &attr.value else {
            self.type_error(attr, "a number of cores such as 0.5");
            return None;
        };
        let offset = start(&attr.value);
        let cores = number.value().as_f64().filter(|c| c.is_finite());
        match cores {
            Some(value) if value > 0.0 => Some(At { value, offset }),
            _ => {
                self.error(
                    offset,
                    format!("\"cpu\" must be greater than 0, found {}", number.value()),
                );
                None
            }
        }
    }

    fn bool(&mut self, attr: &Attribute) -> Option<bool> {
        match &attr.value {
            Expression::Bool(b) => Some(*b.value()),
            _ => {
                self.type_error(attr, "true or false");
                None
            }
        }
    }

    fn size(&mut self, attr: &Attribute) -> Option<ByteSize> {
        let Text { value, offset, .. } = self.plain_string(attr, "a size such as \"512M\"")?;
        let key = attr.key.as_str();
        match value.parse::<ByteSize>() {
            Ok(ByteSize(0)) => {
                self.error(offset, format!("\"{key}\" must be greater than 0"));
                None
            }
            Ok(size) => Some(size),
            Err(err) => {
                self.error(offset, format!("\"{key}\": {err}"));
                None
            }
        }
    }

    fn duration(&mut self, attr: &Attribute) -> Option<Duration> {
        let Text { value, offset, .. } = self.plain_string(attr, "a duration such as \"10s\"")?;
        let key = attr.key.as_str();
        match value.parse::<Duration>() {
            Ok(d) if d.get().is_zero() => {
                self.error(offset, format!("\"{key}\" must be greater than 0"));
                None
            }
            Ok(d) => Some(d),
            Err(err) => {
                self.error(offset, format!("\"{key}\": {err}"));
                None
            }
        }
    }

    /// A string without interpolation, for sizes and durations.
    fn plain_string(&mut self, attr: &Attribute, expected: &str) -> Option<Text> {
        match &attr.value {
            Expression::String(_) | Expression::StringTemplate(_) => self.string(attr, false),
            _ => {
                self.type_error(attr, expected);
                None
            }
        }
    }
}

fn directive_start(directive: &hcl_edit::template::Directive) -> Option<usize> {
    use hcl_edit::template::Directive;
    match directive {
        Directive::If(d) => d.span().map(|s| s.start),
        Directive::For(d) => d.span().map(|s| s.start),
    }
}

/// How an expression's type reads in a message: "a number", "a list".
fn kind(expr: &Expression) -> &'static str {
    match expr {
        Expression::Null(_) => "null",
        Expression::Bool(_) => "a bool",
        Expression::Number(_) => "a number",
        Expression::String(_) | Expression::StringTemplate(_) | Expression::HeredocTemplate(_) => {
            "a string"
        }
        Expression::Array(_) => "a list",
        Expression::Object(_) => "an object",
        Expression::Variable(_) => "a bare word",
        _ => "an expression",
    }
}

/// The message for an unknown field or block, with a "did you mean" hint when a known name
/// is a likely misspelling, else the list of known names.
fn unknown(what: &str, name: &str, context: &str, fields: &[&str], blocks: &[&str]) -> String {
    let known: Vec<&str> = fields.iter().chain(blocks).copied().collect();
    if known.is_empty() {
        return format!("unknown {what} \"{name}\" in {context}: it takes no fields or blocks");
    }
    // A third of the name's length in edits (at least one) still reads as a typo.
    let allowed = (name.chars().count() / 3).max(1);
    let closest = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance);
    match closest {
        Some((_, suggestion)) => {
            format!("unknown {what} \"{name}\" in {context}, did you mean \"{suggestion}\"?")
        }
        None => format!(
            "unknown {what} \"{name}\" in {context}; expected one of: {}",
            known.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspellings_get_a_suggestion_and_strangers_the_known_names() {
        let fields = &["image", "port"];
        let blocks = &["health"];
        assert_eq!(
            unknown("field", "imgae", "service \"web\"", fields, blocks),
            "unknown field \"imgae\" in service \"web\", did you mean \"image\"?"
        );
        assert_eq!(
            unknown("block", "helth", "service \"web\"", fields, blocks),
            "unknown block \"helth\" in service \"web\", did you mean \"health\"?"
        );
        assert_eq!(
            unknown("field", "zzz", "service \"web\"", fields, blocks),
            "unknown field \"zzz\" in service \"web\"; expected one of: image, port, health"
        );
    }

    #[test]
    fn text_offsets_map_back_into_literals_and_interpolations() {
        let text = Text {
            value: "ab${x}c".to_string(),
            offset: 10,
            pieces: vec![(0, 11), (2, 13), (6, 20)],
        };
        assert_eq!(text.source_offset(0), 11);
        assert_eq!(text.source_offset(2), 13);
        assert_eq!(text.source_offset(6), 20);
        assert_eq!(text.source_offset(7), 21);
    }
}

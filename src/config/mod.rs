//! The `.mill` config: parsing, validation, diff against stored state.
//!
//! [`parse`] turns the text of a `.mill` file into a [`Config`] of `ServiceSpec`s and
//! `TaskSpec`s, or an [`Invalid`] listing every problem as `file:line:col: message` with the
//! offending line. It runs in stages, each in its own module:
//!
//! - `syntax`: HCL via hcl-edit, which keeps byte spans on every node;
//! - `parse`: the shape of each block (known fields, types, ranges, required fields);
//! - `validate`: the rules across values (names, references, routes, volumes, capacity),
//!   with cluster facts from a [`ClusterFacts`] ([`Offline`] for `mill validate`);
//! - `convert`: declarations → specs, the defaults coming from `mill_crds`.
//!
//! [`diff`] then compares a config with the stored specs of its namespace.
//!
//! Strings are taken as written: `${secret(..)}` and `${service..address}` are kept for
//! the node to resolve (HCL would evaluate them), and `$PORT` is left alone.

mod cluster;
mod convert;
mod diagnostic;
mod diff;
mod parse;
mod syntax;
mod validate;

pub use cluster::{ClusterFacts, ClusterSnapshot, Offline};
pub use diagnostic::{Diagnostic, Invalid};
pub use diff::{diff, Diff, InPlace, ServiceChange, TaskChange};

use diagnostic::SourceMap;
use mill_crds::{ServiceSpec, TaskSpec};

/// A valid `.mill` file: its services and tasks, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Each service's name and spec.
    pub services: Vec<(String, ServiceSpec)>,
    /// Each task template's name and spec.
    pub tasks: Vec<(String, TaskSpec)>,
}

/// Parses and validates the text of a `.mill` file; `file` names it in diagnostics.
///
/// Every problem is reported, not just the first: a syntax error ends parsing, but past
/// that every block and value is checked.
pub fn parse(file: &str, source: &str, cluster: &dyn ClusterFacts) -> Result<Config, Invalid> {
    let map = SourceMap::new(source);
    let invalid = |diagnostics| Invalid {
        file: file.to_string(),
        diagnostics,
    };
    let tree = syntax::parse(source).map_err(|err| {
        let mut message = format!("invalid HCL: {}", err.message);
        if inside_interpolation(map.line_text(err.line), err.col) {
            message.push_str(INTERPOLATION_HINT);
        }
        // hcl-edit places an error at the end of the input one column past the last
        // byte, which can be past the line's end; the real place is the end of the text.
        let at_end =
            err.offset + 1 == source.len() && map.position(err.offset) != (err.line, err.col);
        let diagnostic = if at_end {
            map.at(source.len(), message)
        } else {
            map.at_line_col(err.line, err.col, message)
        };
        invalid(vec![diagnostic])
    })?;
    let mut diagnostics = Vec::new();
    let document = parse::declarations(&tree, &map, &mut diagnostics);
    validate::check(&document, cluster, &map, &mut diagnostics);
    if !diagnostics.is_empty() {
        diagnostics.sort_by_key(|d| (d.line, d.col));
        return Err(invalid(diagnostics));
    }
    convert::specs(&document).ok_or_else(|| {
        // Unreachable: a missing required field is a diagnostic above.
        invalid(vec![
            map.at(0, "internal error: a required field is missing")
        ])
    })
}

/// Appended to a syntax error inside `${...}`: HCL parses interpolations as expressions,
/// so a malformed mill reference surfaces as an HCL error.
const INTERPOLATION_HINT: &str = "; inside \"${...}\" write ${secret(NAME)} or ${service.NAME.address}, or $${ for a literal \"${\"";

/// Whether column `col` of `line` is inside an unclosed `${`.
fn inside_interpolation(line: &str, col: usize) -> bool {
    let before: String = line.chars().take(col.saturating_sub(1)).collect();
    before
        .rfind("${")
        .is_some_and(|open| !before[open..].contains('}'))
}

/// Reads a `.mill` file's bytes: invalid UTF-8 is reported at its position like any
/// other problem.
pub fn parse_bytes(
    file: &str,
    bytes: &[u8],
    cluster: &dyn ClusterFacts,
) -> Result<Config, Invalid> {
    match std::str::from_utf8(bytes) {
        Ok(source) => parse(file, source, cluster),
        Err(err) => {
            let valid = String::from_utf8_lossy(&bytes[..err.valid_up_to()]).into_owned();
            let map = SourceMap::new(&valid);
            Err(Invalid {
                file: file.to_string(),
                diagnostics: vec![map.at(valid.len(), "the file is not valid UTF-8")],
            })
        }
    }
}

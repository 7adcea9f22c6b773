//! How client commands print: tables (comfy-table, fitted to the terminal, kubectl's
//! borderless look), JSON, YAML and names, chosen by `-o wide|yaml|json|name` or `--json`.

use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table};
use serde_json::Value;

/// `-o FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The table with every column.
    Wide,
    /// The objects as YAML.
    Yaml,
    /// The objects as JSON.
    Json,
    /// `kind/name` per object.
    Name,
}

/// What to print, from `-o` and the global `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The default table.
    Table,
    /// The table with every column.
    Wide,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
    /// Names.
    Name,
}

impl Format {
    /// `-o` wins over `--json`; neither is a table.
    pub fn of(output: Option<OutputFormat>, json: bool) -> Format {
        match (output, json) {
            (Some(OutputFormat::Wide), _) => Format::Wide,
            (Some(OutputFormat::Yaml), _) => Format::Yaml,
            (Some(OutputFormat::Json), _) | (None, true) => Format::Json,
            (Some(OutputFormat::Name), _) => Format::Name,
            (None, false) => Format::Table,
        }
    }
}

/// A borderless table of `rows` under `headers`, as wide as the terminal allows (on a
/// terminal long cells wrap; into a pipe nothing is cut). No line ends in spaces.
pub fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(headers);
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    let mut out: String = table
        .lines()
        .map(|line| line.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

/// A table cell from a JSON value: strings bare, `null` as `<none>`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "<none>".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Pretty JSON with a final newline.
pub fn json(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// YAML.
pub fn yaml(value: &Value) -> String {
    serde_yaml::to_string(value).unwrap_or_default()
}

/// How long ago an RFC 3339 time was, kubectl-style (`5m`, `3h`, `2d`); `<unknown>` if
/// it does not parse.
pub fn age(timestamp: &str) -> String {
    match timestamp.parse::<jiff::Timestamp>() {
        Ok(at) => {
            let seconds = (jiff::Timestamp::now().as_second() - at.as_second()).max(0);
            match seconds {
                s if s < 120 => format!("{s}s"),
                s if s < 2 * 3600 => format!("{}m", s / 60),
                s if s < 2 * 86400 => format!("{}h", s / 3600),
                s => format!("{}d", s / 86400),
            }
        }
        Err(_) => "<unknown>".to_string(),
    }
}

/// Runs a client command's async body on a fresh runtime.
pub fn block_on<F: std::future::Future>(body: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_borderless_and_left_aligned_without_trailing_spaces() {
        let out = table(
            &["NAME".into(), "STATUS".into()],
            &[
                vec!["hello-1-0".into(), "healthy".into()],
                vec!["x".into(), "pending".into()],
            ],
        );
        assert_eq!(
            out,
            "NAME        STATUS\nhello-1-0   healthy\nx           pending\n"
        );
    }

    #[test]
    fn output_flag_wins_over_json() {
        assert_eq!(Format::of(None, false), Format::Table);
        assert_eq!(Format::of(None, true), Format::Json);
        assert_eq!(Format::of(Some(OutputFormat::Yaml), true), Format::Yaml);
        assert_eq!(Format::of(Some(OutputFormat::Name), false), Format::Name);
    }
}

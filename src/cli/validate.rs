//! `mill validate FILE...`: offline checks of .mill files.
//!
//! Prints one summary line per valid file to stdout and every error of the invalid ones
//! to stderr; exits 1 if any file is invalid. With `--json`, prints one JSON object per
//! file and line: `{"file", "ok", "errors": [{"line", "col", "message"}]}`.

use crate::config::{self, Config, Diagnostic, Offline};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// What offline validation cannot know; said in every summary so nobody mistakes an `ok`
/// for a deploy that will pass.
const NOT_CHECKED: &str = "secrets and node capacity not checked offline";

#[derive(Serialize)]
struct Report<'a> {
    file: &'a str,
    ok: bool,
    errors: &'a [Diagnostic],
}

/// Validates each file; the exit code is 1 if any is invalid or unreadable.
pub fn run(files: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let mut all_ok = true;
    for path in files {
        let file = path.display().to_string();
        let result = match std::fs::read(path) {
            Ok(bytes) => config::parse_bytes(&file, &bytes, &Offline).map_err(|invalid| {
                let text = invalid.to_string();
                (invalid.diagnostics, text)
            }),
            Err(err) => {
                let message = format!("cannot read the file: {err}");
                let text = format!("{file}: {message}");
                let diagnostic = Diagnostic {
                    line: 0,
                    col: 0,
                    message,
                    source_line: String::new(),
                };
                Err((vec![diagnostic], text))
            }
        };
        all_ok &= result.is_ok();
        match (&result, json) {
            (Ok(config), false) => println!("{file}: ok ({})", summary(config)),
            (Err((_, text)), false) => eprintln!("{text}\n"),
            (Ok(_), true) => print_json(&file, &[])?,
            (Err((diagnostics, _)), true) => print_json(&file, diagnostics)?,
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_json(file: &str, errors: &[Diagnostic]) -> anyhow::Result<()> {
    let report = Report {
        file,
        ok: errors.is_empty(),
        errors,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `3 services, 1 task; secrets and node capacity not checked offline`.
fn summary(config: &Config) -> String {
    format!(
        "{}, {}; {NOT_CHECKED}",
        count(config.services.len(), "service"),
        count(config.tasks.len(), "task")
    )
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

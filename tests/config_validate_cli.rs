//! `mill validate`, run as the built binary: the exit code and what it prints.

use std::path::Path;
use std::process::{Command, Output};

fn mill_validate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mill"))
        .arg("validate")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("mill runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn examples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("examples/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "mill"))
        .map(|path| format!("examples/{}", path.file_name().unwrap().to_string_lossy()))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_is_valid_and_gets_a_one_line_summary() {
    let files = examples();
    assert!(files.len() >= 2, "{files:?}");
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let out = mill_validate(&args);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), files.len(), "{stdout}");
    assert!(stdout.contains(
        "examples/app.mill: ok (3 services, 1 task; secrets and node capacity not checked offline)"
    ), "{stdout}");
    assert!(stdout.contains(
        "examples/hello.mill: ok (1 service, 0 tasks; secrets and node capacity not checked offline)"
    ), "{stdout}");
}

#[test]
fn an_invalid_file_exits_1_listing_every_error_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.mill");
    std::fs::write(
        &bad,
        "service \"web\" {\n  image = \"web:1\"\n  port  = 0\n  replica = 2\n}\n",
    )
    .unwrap();
    let bad = bad.to_string_lossy().into_owned();
    let out = mill_validate(&["examples/hello.mill", &bad]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{bad}:3:11: \"port\" must be between 1 and 65535, found 0"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{bad}:4:3: unknown field \"replica\" in service \"web\", did you mean \"replicas\"?"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("  port  = 0"), "{stderr}");
    // The valid file still gets its summary.
    assert!(text(&out.stdout).contains("examples/hello.mill: ok"));
}

#[test]
fn json_output_has_one_object_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.mill");
    std::fs::write(&bad, "task \"job\" {\n}\n").unwrap();
    let bad = bad.to_string_lossy().into_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_mill"))
        .args(["--json", "validate", "examples/hello.mill", &bad])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let reports: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        reports,
        vec![
            serde_json::json!({"file": "examples/hello.mill", "ok": true, "errors": []}),
            serde_json::json!({"file": bad, "ok": false, "errors": [
                {"line": 1, "col": 6, "message": "task \"job\": missing required field \"image\""}
            ]}),
        ]
    );
}

#[test]
fn a_missing_file_exits_1_saying_it_cannot_be_read() {
    let out = mill_validate(&["no-such-file.mill"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no-such-file.mill: cannot read the file:"),
        "{}",
        text(&out.stderr)
    );
}

//! `mill crds`: the CRD manifests of mill's kinds.

use std::process::ExitCode;

pub fn run() -> anyhow::Result<ExitCode> {
    let files = mill_crds::crd_files();
    let docs: Vec<String> = files.into_iter().map(|(_, yaml)| yaml).collect();
    print!("{}", docs.join("---\n"));
    Ok(ExitCode::SUCCESS)
}

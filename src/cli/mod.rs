//! The `mill` command line: argument parsing and one module per client command.

mod crds;
mod validate;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mill: a container orchestrator for small clusters.
#[derive(Debug, Parser)]
#[command(name = "mill", version, about, propagate_version = true)]
pub struct Args {
    /// The API of any cluster node.
    #[arg(
        long,
        global = true,
        env = "MILL_ADDRESS",
        default_value = "http://127.0.0.1:4400"
    )]
    pub address: String,
    /// The cluster token (bearer token of the API).
    #[arg(long, global = true, env = "MILL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where the node keeps its state.
    #[arg(
        long,
        global = true,
        env = "MILL_DATA_DIR",
        default_value = "/var/lib/mill"
    )]
    pub data_dir: PathBuf,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The namespace to work in.
    #[arg(short = 'n', long, global = true, default_value = "default")]
    pub namespace: String,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and check .mill files offline; exit 1 listing every error.
    Validate {
        /// The .mill files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the CustomResourceDefinitions of mill's kinds as YAML.
    Crds,
}

/// Runs one command; the exit code says whether it succeeded.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Validate { files } => validate::run(&files, args.json),
        Command::Crds => crds::run(),
    }
}

//! The `mill` command line: argument parsing and one module per client command.

mod client;
mod crds;
mod deploy;
mod image;
mod kubeconfig;
mod validate;

use crate::daemon::DaemonArgs;

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
    /// Bootstrap a one-node cluster here (or resume this node) and serve in the foreground.
    Init {
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Join the cluster a member at ADDR belongs to (or resume this node) and serve.
    Join {
        /// Any member's API address (`IP:PORT`), as `mill init` printed it.
        addr: String,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Deploy a .mill file: the whole desired state of the namespace.
    Deploy {
        /// The config.
        #[arg(short = 'f', long = "file", default_value = "mill.conf")]
        file: PathBuf,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Return once the deploy is accepted; it goes on in the cluster.
        #[arg(long)]
        detach: bool,
    },
    /// Same as deploy; also takes YAML/JSON manifests of mill kinds.
    Apply {
        /// A .mill config, or a .yaml/.json manifest.
        #[arg(short = 'f', long = "file", required = true)]
        file: PathBuf,
        /// Print what would change; change nothing (.mill files).
        #[arg(long)]
        dry_run: bool,
        /// Return once the deploy is accepted (.mill files).
        #[arg(long)]
        detach: bool,
    },
    /// Print a kubeconfig that makes kubectl talk to the cluster.
    Kubeconfig,
    /// Manage images on the nodes.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The node agent's log driver, run by containerd's shim next to each container.
    #[command(hide = true)]
    AgentLogDriver {
        /// The alloc's log directory.
        dir: PathBuf,
    },
}

/// `mill image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image archive (a tar of an OCI layout) into every live node.
    Load {
        /// The archive.
        file: PathBuf,
    },
}

/// Runs one command; the exit code says whether it succeeded.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Validate { files } => validate::run(&files, args.json),
        Command::Crds => crds::run(),
        Command::Init { daemon } => serve(crate::daemon::init(&args.data_dir, args.token, daemon)),
        Command::Join { addr, daemon } => {
            let token = args.token.ok_or_else(|| {
                anyhow::anyhow!(
                    "mill join needs the cluster token: pass --token (mill init printed it)"
                )
            })?;
            serve(crate::daemon::join(&args.data_dir, &addr, &token, daemon))
        }
        Command::Deploy {
            file,
            dry_run,
            detach,
        } => deploy::deploy(&deploy::DeployArgs {
            address: &args.address,
            token: args.token.as_deref(),
            namespace: &args.namespace,
            file: &file,
            dry_run,
            detach,
        }),
        Command::Apply {
            file,
            dry_run,
            detach,
        } => deploy::apply(&deploy::DeployArgs {
            address: &args.address,
            token: args.token.as_deref(),
            namespace: &args.namespace,
            file: &file,
            dry_run,
            detach,
        }),
        Command::Kubeconfig => {
            kubeconfig::run(&args.data_dir, &args.address, args.token.as_deref())
        }
        Command::Image(ImageCommand::Load { file }) => {
            image::load(&args.address, args.token.as_deref(), &file)
        }
        Command::AgentLogDriver { dir } => {
            mill_agent::logdriver::run(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs a daemon command on a multi-threaded runtime with logs on stderr (`RUST_LOG`).
fn serve(
    daemon: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Runtime::new()?.block_on(daemon)?;
    Ok(ExitCode::SUCCESS)
}

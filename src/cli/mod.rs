//! The `mill` command line: argument parsing and one module per client command.

mod client;
mod completion;
mod crds;
mod delete;
mod deploy;
mod describe;
mod get;
mod image;
mod kubeconfig;
mod logs;
mod nodes;
mod output;
mod restart;
mod rollout;
mod secret;
mod status;
mod tasks;
mod validate;
mod volume;

use crate::daemon::DaemonArgs;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mill: a container orchestrator for small clusters.
#[derive(Debug, Parser)]
#[command(
    name = "mill",
    version,
    about,
    propagate_version = true,
    after_help = "Exit status: 0 ok, 1 failure (the message says what to do), 2 usage error."
)]
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
    /// List objects of any kind (services, allocs, nodes, deploys, secrets, ...).
    ///
    /// Example: `mill get allocs -o wide`, `mill get svc hello -o yaml`, `mill get allocs -w`
    Get {
        /// The kind: a kind, plural, singular or short name (`svc`, `no`, `ns`, `vol`).
        kind: String,
        /// One object's name.
        name: Option<String>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<output::OutputFormat>,
        /// After the list, print every change as it happens.
        #[arg(short = 'w', long)]
        watch: bool,
        /// Only objects whose labels match (`app=web,tier!=db`).
        #[arg(short = 'l', long = "selector")]
        selector: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long = "all-namespaces")]
        all_namespaces: bool,
    },
    /// Show one object in full: spec, status, conditions and recent history.
    ///
    /// Example: `mill describe service hello`, `mill describe alloc hello-2-0`
    Describe {
        /// The kind (as for `mill get`).
        kind: String,
        /// The object's name.
        name: String,
    },
    /// Delete one object (a service is drained first).
    ///
    /// Example: `mill delete service hello`
    Delete {
        /// The kind (as for `mill get`).
        kind: String,
        /// The object's name.
        name: String,
    },
    /// Print the logs of a service (all replicas), an alloc or a task run.
    ///
    /// Example: `mill logs hello -f`, `mill logs hello-2-0 -n 20`, `mill logs --all`.
    /// In `mill logs`, `-n N` is the number of lines (use --namespace for the namespace).
    Logs {
        /// A service, alloc or task id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Keep printing new lines as they are written.
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many of the last lines to print (default 100).
        #[arg(long = "tail", value_name = "N")]
        tail: Option<usize>,
        /// Every service of the namespace, each line prefixed by its alloc.
        #[arg(long)]
        all: bool,
    },
    /// The cluster at a glance: nodes, services, tasks, capacity.
    ///
    /// Example: `mill status`, `mill status --json`
    Status,
    /// Manage secrets (`${secret(NAME)}` in a .mill file).
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Print a shell completion script.
    ///
    /// Example: `mill completion bash > /etc/bash_completion.d/mill`
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Replace every replica of a service with a fresh container, rolling, same spec.
    ///
    /// Example: `mill restart hello` (prints the rollout's steps until it ends)
    Restart {
        /// The service.
        service: String,
    },
    /// Follow, list or undo a service's rollouts.
    ///
    /// Example: `mill rollout history hello`, `mill rollout undo hello --to-revision 2`
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// List the cluster's nodes: address, status, free cpu and memory, allocations.
    ///
    /// Example: `mill nodes`
    Nodes,
    /// Move everything off a node (no new allocations) and wait until it is empty.
    ///
    /// Example: `mill drain node-2`
    Drain {
        /// The node's id (see `mill nodes`).
        node: String,
    },
    /// Remove a drained (or empty) node from the cluster and its Raft membership.
    ///
    /// Example: `mill remove node-2`
    Remove {
        /// The node's id (see `mill nodes`).
        node: String,
    },
    /// Drain the node --address points at, then remove it from the cluster.
    ///
    /// Example: `mill --address http://10.0.0.7:4400 leave`
    Leave,
    /// Run a task once: one a deploy defined, or an image inline; prints the run's id.
    ///
    /// Example: `mill spawn report --env DAY=monday`,
    /// `mill spawn --image busybox --timeout 1m -- sh -c 'echo hi'`
    Spawn {
        /// A task of the deployed config.
        #[arg(required_unless_present = "image", conflicts_with = "image")]
        task: Option<String>,
        /// An image to run instead of a task.
        #[arg(long)]
        image: Option<String>,
        /// CPU cores (with --image).
        #[arg(long, requires = "image")]
        cpu: Option<f64>,
        /// Memory, e.g. `256M` (with --image).
        #[arg(long, requires = "image")]
        memory: Option<String>,
        /// Kill the run after this long, e.g. `30m` (with --image).
        #[arg(long, requires = "image")]
        timeout: Option<String>,
        /// An environment variable, `KEY=VALUE` (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// The command and its arguments, after `--` (with --image).
        #[arg(last = true, requires = "image")]
        command: Vec<String>,
    },
    /// List the namespace's task runs.
    ///
    /// Example: `mill ps`
    Ps,
    /// Stop a task run and wait until it has ended.
    ///
    /// Example: `mill kill report-ab12`
    Kill {
        /// The run's id, as `mill spawn` printed it.
        task_id: String,
    },
    /// The node agent's log driver, run by containerd's shim next to each container.
    #[command(hide = true)]
    AgentLogDriver {
        /// The alloc's log directory.
        dir: PathBuf,
    },
}

/// `mill rollout ...`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Print where the service's rollout stands; while one runs, follow it to its end.
    ///
    /// Example: `mill rollout status hello`
    Status {
        /// The service.
        service: String,
    },
    /// List the service's retained revisions.
    ///
    /// Example: `mill rollout history hello`
    History {
        /// The service.
        service: String,
    },
    /// Roll the service back to an earlier revision and follow it.
    ///
    /// Example: `mill rollout undo hello`, `mill rollout undo hello --to-revision 2`
    Undo {
        /// The service.
        service: String,
        /// The revision (see `mill rollout history`); default: the one before the serving one.
        #[arg(long)]
        to_revision: Option<i64>,
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

/// The shells `mill completion` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// Parses the command line (exit 2 with a usage message when it does not parse). In
/// `mill logs`, `-n N` is the line count as in `tail -n`, so there it is read as `--tail`.
pub fn parse() -> Args {
    Args::parse_from(logs_tail_flag(std::env::args_os().collect()))
}

/// Global options that take a value, to find the subcommand behind them.
const VALUED_GLOBALS: [&str; 5] = ["--address", "--token", "--data-dir", "-n", "--namespace"];

fn logs_tail_flag(mut argv: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut i = 1;
    while i < argv.len() {
        let arg = argv[i].to_string_lossy();
        if arg.starts_with('-') {
            i += if VALUED_GLOBALS.contains(&arg.as_ref()) {
                2
            } else {
                1
            };
            continue;
        }
        if arg == "logs" {
            for later in argv.iter_mut().skip(i + 1) {
                if later == "-n" {
                    *later = "--tail".into();
                }
            }
        }
        break;
    }
    argv
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
        Command::Get {
            ref kind,
            ref name,
            output,
            watch,
            ref selector,
            all_namespaces,
        } => {
            let client = client::Client::new(&args.address, args.token.as_deref())?;
            let get = get::GetArgs {
                kind,
                name: name.as_deref(),
                namespace: &args.namespace,
                all_namespaces,
                selector: selector.as_deref(),
                watch,
                format: output::Format::of(output, args.json),
            };
            done(output::block_on(get::run(&client, &get))?)
        }
        Command::Describe { ref kind, ref name } => {
            let client = client::Client::new(&args.address, args.token.as_deref())?;
            done(output::block_on(describe::run(
                &client,
                kind,
                name,
                &args.namespace,
            ))?)
        }
        Command::Delete { ref kind, ref name } => {
            let client = client::Client::new(&args.address, args.token.as_deref())?;
            done(output::block_on(delete::run(
                &client,
                kind,
                name,
                &args.namespace,
            ))?)
        }
        Command::Logs {
            ref name,
            follow,
            tail,
            all,
        } => {
            let client = client::Client::new(&args.address, args.token.as_deref())?;
            let logs = logs::LogsArgs {
                name: name.as_deref(),
                all,
                follow,
                tail,
                namespace: &args.namespace,
                format: output::Format::of(None, args.json),
            };
            done(output::block_on(logs::run(&client, &logs))?)
        }
        Command::Status => {
            let client = client::Client::new(&args.address, args.token.as_deref())?;
            let format = output::Format::of(None, args.json);
            done(output::block_on(status::run(
                &client,
                &args.namespace,
                format,
            ))?)
        }
        Command::Secret(ref command) => {
            let client = client::Client::new(&args.address, args.token.as_deref())?;
            let format = output::Format::of(None, args.json);
            done(output::block_on(secret::run(
                &client,
                command,
                &args.namespace,
                format,
            ))?)
        }
        Command::Volume(ref command) => {
            let client = client::Client::new(&args.address, args.token.as_deref())?;
            let format = output::Format::of(None, args.json);
            done(output::block_on(volume::run(
                &client,
                command,
                &args.namespace,
                format,
            ))?)
        }
        Command::Completion { shell } => {
            completion::run(match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Restart { ref service } => client_command(&args, |client, args| async move {
            restart::restart(&client, &args.namespace, service).await
        }),
        Command::Rollout(ref command) => client_command(&args, |client, args| async move {
            let ns = &args.namespace;
            match command {
                RolloutCommand::Status { service } => {
                    rollout::status(&client, ns, service, args.json).await
                }
                RolloutCommand::History { service } => {
                    rollout::history(&client, ns, service, args.json).await
                }
                RolloutCommand::Undo {
                    service,
                    to_revision,
                } => rollout::undo(&client, ns, service, *to_revision).await,
            }
        }),
        Command::Nodes => client_command(&args, |client, args| async move {
            nodes::list(&client, args.json).await
        }),
        Command::Drain { ref node } => client_command(&args, |client, args| async move {
            nodes::drain(&client, node, args.json).await
        }),
        Command::Remove { ref node } => client_command(&args, |client, args| async move {
            nodes::remove(&client, node, args.json).await
        }),
        Command::Leave => client_command(&args, |client, args| async move {
            nodes::leave(&client, args.json).await
        }),
        Command::Spawn {
            ref task,
            ref image,
            cpu,
            ref memory,
            ref timeout,
            ref env,
            ref command,
        } => client_command(&args, |client, args| async move {
            let spawn = tasks::SpawnArgs {
                task: task.as_deref(),
                image: image.as_deref(),
                cpu,
                memory: memory.as_deref(),
                timeout: timeout.as_deref(),
                env,
                command,
            };
            tasks::spawn(&client, &args.namespace, &spawn, args.json).await
        }),
        Command::Ps => client_command(&args, |client, args| async move {
            tasks::ps(&client, &args.namespace, args.json).await
        }),
        Command::Kill { ref task_id } => client_command(&args, |client, args| async move {
            tasks::kill(&client, &args.namespace, task_id, args.json).await
        }),
        Command::AgentLogDriver { dir } => {
            mill_agent::logdriver::run(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A client command's result as the exit code (its error is printed by `main`).
fn done(result: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    result.map(|()| ExitCode::SUCCESS)
}

/// Runs a client command of `args` on a fresh runtime with a [`client::Client`] made from
/// the global flags.
fn client_command<'a, F, Fut>(args: &'a Args, command: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(client::Client, &'a Args) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>> + 'a,
{
    let client = client::Client::new(&args.address, args.token.as_deref())?;
    tokio::runtime::Runtime::new()?.block_on(command(client, args))
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn argv(args: &[&str]) -> Vec<String> {
        logs_tail_flag(args.iter().map(Into::into).collect())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn dash_n_is_the_line_count_only_in_mill_logs() {
        assert_eq!(
            argv(&["mill", "-n", "prod", "logs", "web", "-n", "5"]),
            ["mill", "-n", "prod", "logs", "web", "--tail", "5"]
        );
        assert_eq!(
            argv(&["mill", "get", "svc", "logs", "-n", "prod"]),
            ["mill", "get", "svc", "logs", "-n", "prod"]
        );
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }
}

//! `mill completion bash|zsh|fish`: the shell's completion script, from the same clap
//! definition the binary parses with.

use clap::CommandFactory;
use clap_complete::Shell;

/// Prints the script for `shell`.
pub fn run(shell: Shell) {
    let mut command = super::Args::command();
    clap_complete::generate(shell, &mut command, "mill", &mut std::io::stdout());
}

use std::process::ExitCode;

/// mimalloc: the proxy and the store allocate per request; glibc's malloc cost them about
/// 5–9% of their profiles (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // containerd's shim runs `mill agent-log-driver DIR` for every container start and
    // waits until it is ready: skip building the whole CLI for it.
    if let Some(dir) = log_driver_dir() {
        return match mill_agent::logdriver::run(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: the log driver for {}: {err}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    let args = mill::cli::parse();
    match mill::cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `DIR` of exactly `mill agent-log-driver DIR`; anything else goes through the CLI.
fn log_driver_dir() -> Option<std::path::PathBuf> {
    let mut args = std::env::args_os().skip(1);
    let (Some(command), Some(dir), None) = (args.next(), args.next(), args.next()) else {
        return None;
    };
    (command == "agent-log-driver").then(|| dir.into())
}

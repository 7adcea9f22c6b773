use std::process::ExitCode;

/// mimalloc: the proxy and the store allocate per request; glibc's malloc cost them about
/// 5–9% of their profiles (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = mill::cli::parse();
    match mill::cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

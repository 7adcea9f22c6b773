use std::process::ExitCode;

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

//! `lockstep`: the command line. Parses arguments, builds configuration, calls the crates
//! and maps outcomes to exit codes (0 ok, 1 anomalies or failed thresholds, 2 could not
//! run).

mod bench_cmd;
mod check_cmd;
mod cli;
mod load_cmd;
mod run_cmd;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lockstep: {e:#}");
            ExitCode::from(2)
        }
    }
}

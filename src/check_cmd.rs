//! `lockstep check RECORDING`: judge a recording and map the verdict to the exit code
//! (0 valid, 1 anomalies or failed thresholds, 2 could not run or unknown).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use lockstep_checker::{CheckError, Report, render};

/// Check a recording: did every guarantee of the protocol hold?
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The recording (`.lsr`) written by `lockstep load` or `lockstep run`.
    pub recording: PathBuf,
    /// Print the report as JSON (schema `lockstep.check/1`) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write a JUnit XML report to this file (for CI).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

#[allow(clippy::print_stdout)]
fn show(report: &Report, json: bool) {
    if json {
        println!("{}", render::json(report));
    } else {
        print!("{}", render::text(report));
    }
}

fn write_junit(args: &CheckArgs, report: &Report) -> anyhow::Result<()> {
    if let Some(path) = &args.junit {
        std::fs::write(path, render::junit(report))
            .with_context(|| format!("writing the JUnit report to {}", path.display()))?;
    }
    Ok(())
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    match lockstep_checker::check_file(&args.recording) {
        Ok(report) => {
            show(&report, args.json);
            write_junit(&args, &report)?;
            Ok(ExitCode::from(report.exit_code()))
        }
        Err(CheckError::Truncated {
            offset,
            what,
            partial,
        }) => {
            // What came before the cut was checked; show it, then say where it stops.
            show(&partial, args.json);
            write_junit(&args, &partial)?;
            eprintln!(
                "lockstep: {}: recording truncated at byte {offset} ({what}); verdict unknown",
                args.recording.display()
            );
            Ok(ExitCode::from(2))
        }
        Err(e @ CheckError::Open { .. }) => {
            eprintln!("lockstep: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("lockstep: {}: {e}", args.recording.display());
            Ok(ExitCode::from(2))
        }
    }
}

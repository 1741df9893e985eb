//! The `haimg` binary: parses the command line, dispatches, maps errors to exit codes
//! (0 success, 1 runtime failure, 2 invalid input).

use std::process::ExitCode;

use clap::Parser;
use haimg::error::Error;

fn main() -> ExitCode {
    let cli = haimg::cli::Cli::parse();
    let result = cli.run();
    // The last step's line, and no spinner, before anything else is printed.
    haimg::progress::finish();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                Error::Invalid(d) => {
                    for diag in d.iter() {
                        eprintln!("error: {diag}");
                    }
                    eprintln!("{} problem(s) found", d.len());
                }
                other => eprintln!("error: {other}"),
            }
            ExitCode::from(e.exit_code())
        }
    }
}

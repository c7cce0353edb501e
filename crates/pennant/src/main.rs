//! The `pennant` binary: one executable for every Pennant tool, each a subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod conformance_cmd;

/// Pennant: self-hostable, LaunchDarkly-compatible feature management.
#[derive(Debug, Parser)]
#[command(name = "pennant", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run LaunchDarkly-format evaluation test data through the evaluation engine.
    Conformance(conformance_cmd::Args),
}

/// Exit code for errors that kept a command from doing its work (bad input, unreadable files...).
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Conformance(args) => conformance_cmd::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

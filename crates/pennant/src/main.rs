//! The `pennant` binary: one executable for every Pennant tool, each a subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config;
mod conformance_cmd;
mod relay_cmd;
mod serve;
mod transfer_cmd;

/// Pennant: self-hostable, LaunchDarkly-compatible feature management.
#[derive(Debug, Parser)]
#[command(name = "pennant", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run Pennant: the management API, SDK streaming and polling, and analytics events (all, or one role).
    Serve(Box<config::ServeArgs>),
    /// Run a relay: mirror environments of an upstream Pennant (or LaunchDarkly) service and serve SDKs locally.
    Relay(Box<relay_cmd::RelayArgs>),
    /// Run LaunchDarkly-format evaluation test data through the evaluation engine.
    Conformance(conformance_cmd::Args),
    /// Export a project (environments without credentials, context kinds, flags, segments) as JSON.
    Export(transfer_cmd::ExportArgs),
    /// Import a project exported by `pennant export`, all or nothing.
    Import(transfer_cmd::ImportArgs),
    /// Import LaunchDarkly's server-side SDK payload (flags and segments) into one environment, all or nothing.
    ImportLaunchdarkly(transfer_cmd::ImportLaunchDarklyArgs),
}

/// mimalloc instead of glibc's malloc: analytics ingestion spent a fifth of its CPU in glibc's malloc and free
/// (README, event ingestion).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for errors that kept a command from doing its work (bad input, unreadable files...).
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Conformance(args) => conformance_cmd::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Relay(args) => relay_cmd::run(&args),
        Command::Export(args) => transfer_cmd::export(&args),
        Command::Import(args) => transfer_cmd::import(&args),
        Command::ImportLaunchdarkly(args) => transfer_cmd::import_launchdarkly(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

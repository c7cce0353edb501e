//! `pennant-load`: load generators for Pennant.
//!
//! Each subcommand lives in its own module; add one by adding a variant to [`Command`] and a match arm in `main`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod error;
mod events;
mod measure;
mod sse;

#[derive(Debug, Parser)]
#[command(name = "pennant-load", version, about = "Load generators for Pennant")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// SSE fan-out: N streaming connections, flag-change delivery latency, memory and CPU, reconnection storm.
    Sse(Box<sse::SseArgs>),
    /// Internal: one worker process of `sse` (driven by the coordinator over stdin/stdout).
    #[command(hide = true)]
    SseWorker,
    /// Event ingestion: realistic SDK flushes to /bulk, accepted events/s, ack latency, lag until counts are queryable.
    Events(Box<events::EventsArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // reqwest's TLS is built without a default crypto backend (one workspace-wide choice: ring); a second call
    // finds it installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result: Result<(), String> = match cli.command {
        Command::Sse(args) => sse::run(*args).map_err(|e| e.to_string()),
        Command::SseWorker => sse::worker::run().map_err(|e| e.to_string()),
        Command::Events(args) => events::run(*args).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pennant-load: {e}");
            ExitCode::FAILURE
        }
    }
}

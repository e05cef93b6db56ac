//! `spool`: the command-line entry point of the Spool log store.
//!
//! One clap CLI with subcommands. Only `bench` exists so far; `serve`, `append`, `read`...
//! are added as further variants of [`Command`], each with its own module.

mod bench;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "spool",
    version,
    about = "Disk-persistent replicated log store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load generators: measure the storage engine on this machine's disk.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
    }
}

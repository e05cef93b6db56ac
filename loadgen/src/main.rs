//! `spool-loadgen`: load generators for the peers `benches/replication_vs_peers.sh` sets
//! beside Spool's replication (Redis primary + replica with WAIT, NATS JetStream). They
//! live outside the server binary; Spool's own load generators are `spool bench`.
//!
//! Both report records/s, p50/p99/p99.9 of send-to-ack and the load generator's CPU (the
//! servers' CPU too when `--server-pid` is given), as `spool bench` does
//! (`spool::measure`).

mod nats;
mod peer;
mod redis;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "spool-loadgen",
    version,
    about = "Load generators for the peers Spool is measured against"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Redis primary + replica: SET then WAIT N 0 per write, over RESP.
    RedisWait(peer::PeerArgs),
    /// NATS JetStream: publishes awaiting their ack, file storage.
    NatsJs(peer::PeerArgs),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::RedisWait(args) => redis::run_redis_wait(&args),
        Command::NatsJs(args) => nats::run_nats_js(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

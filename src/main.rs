//! `spool`: the command-line entry point of the Spool log store.
//!
//! One clap CLI, one subcommand per job; each lives in its own module.

mod bench;
mod cli;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use cli::client_cmds::{AppendArgs, LogsCommand, ReadArgs, TailArgs};
use spool::client::{Client, ClientOptions};

// Every request allocates (h2 streams, headers, buffers): mimalloc makes that cheaper than
// glibc malloc (docs/decisions/0002-mimalloc-global-allocator.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "spool",
    version,
    about = "Disk-persistent replicated log store"
)]
struct Cli {
    /// Address of the node that client commands talk to, or several comma-separated
    /// (a cluster's nodes: commands find the primary and follow a failover).
    #[arg(long, global = true, env = "SPOOL_ADDR", default_value = spool::config::DEFAULT_LISTEN)]
    addr: String,
    /// With several addresses, how long a command may look for the primary through a
    /// failover before it fails with UNAVAILABLE (default 10000; 0: no retries).
    #[arg(
        long,
        global = true,
        env = "SPOOL_FAILOVER_TIMEOUT_MS",
        value_name = "MS"
    )]
    failover_timeout_ms: Option<u64>,
    /// TLS: the CA (PEM) that signed the nodes' certificates. Any --tls-* option, or an
    /// https:// address, makes client commands use TLS. For `serve`: the CA its upstream
    /// and peers are verified against [default: --tls-client-ca].
    #[arg(long, global = true, env = "SPOOL_TLS_CA", value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// TLS: this client's certificate (PEM), for nodes that require one. For `serve`: the
    /// node's certificate (its client identity too when it dials a peer).
    #[arg(long, global = true, env = "SPOOL_TLS_CERT", value_name = "PEM")]
    tls_cert: Option<std::path::PathBuf>,
    /// TLS: the private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "SPOOL_TLS_KEY", value_name = "PEM")]
    tls_key: Option<std::path::PathBuf>,
    /// Bearer token for nodes with [auth] (prefer the environment: a flag shows in `ps`).
    #[arg(long, global = true, env = "SPOOL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the bearer token (its first line).
    #[arg(long, global = true, env = "SPOOL_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Log lines on stderr: text (coloured only on a terminal, never with NO_COLOR) or
    /// one JSON object per line. RUST_LOG sets the level (serve: info, others: warn).
    #[arg(
        long,
        global = true,
        env = "SPOOL_LOG_FORMAT",
        value_enum,
        default_value_t = cli::logging::LogFormat::Text
    )]
    log_format: cli::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (a single primary on 127.0.0.1:7070 and ./spool-data with no arguments).
    Serve(cli::serve::ServeArgs),
    /// Create, list, describe and delete logs.
    #[command(subcommand)]
    Logs(LogsCommand),
    /// Append records (from arguments, or one per line of stdin); prints the offsets.
    Append(AppendArgs),
    /// Read records by offset.
    Read(ReadArgs),
    /// Follow a log: print records as they become durable.
    Tail(TailArgs),
    /// Role, epoch and per-log offsets of the node.
    Status {
        /// Print the status as JSON (every field, for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Administration: promote (also at a point), pause and resume a delayed replica.
    #[command(subcommand)]
    Admin(cli::admin::AdminCommand),
    /// A local primary and replicas on loopback, for trying replication out.
    DevCluster(cli::dev_cluster::DevClusterArgs),
    /// Verify a data directory offline: every CRC, index entry and offset.
    Check(cli::check::CheckArgs),
    /// Load generators: measure the storage engine on this machine's disk.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Shell completions on stdout (e.g. `spool completions bash > /etc/bash_completion.d/spool`).
    Completions(cli::docs::CompletionsArgs),
    /// The manual page (roff) on stdout (`spool man | man -l -`), or every page into a dir.
    Man(cli::docs::ManArgs),
}

fn client_command(addr: &str, options: ClientOptions, cmd: Command) -> anyhow::Result<()> {
    if let Some(e) = cli::errors::missing_port(addr) {
        anyhow::bail!(e);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = Client::connect_with(addr, options).await?;
        match cmd {
            Command::Logs(c) => cli::client_cmds::logs(&client, c).await,
            Command::Append(a) => cli::client_cmds::append(&client, a).await,
            Command::Read(a) => cli::client_cmds::read(&client, a).await,
            Command::Tail(a) => cli::client_cmds::tail(&client, a).await,
            Command::Status { json } => cli::status::status(&client, json).await,
            Command::Admin(c) => cli::admin::admin(&client, c).await,
            Command::Serve(_)
            | Command::Check(_)
            | Command::Bench(_)
            | Command::DevCluster(_)
            | Command::Completions(_)
            | Command::Man(_) => {
                unreachable!("not a client command")
            }
        }
    })
}

/// The token given, or the first line of the token file.
fn token(given: Option<String>, file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    match (given, file) {
        (Some(t), _) => Ok(Some(t)),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("reading token file {}: {e}", f.display()))?;
            Ok(Some(text.lines().next().unwrap_or("").trim().to_owned()))
        }
        (None, None) => Ok(None),
    }
}

fn main() -> std::process::ExitCode {
    let matches = cli::client_only::hide_in_local_commands(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(why) = cli::client_only::misplaced(&matches) {
        eprintln!("error: {why}");
        return std::process::ExitCode::from(2);
    }
    let given = cli.addr.clone();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line, each cause once, without a backtrace: people
            // read this.
            eprintln!("error: {}", cli::errors::describe(&e, &given));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The server logs its life at info; client commands only speak up on problems.
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let log_label = match &cli.command {
        Command::Serve(a) => a.log_label.clone(),
        _ => None,
    };
    cli::logging::init(cli.log_format, log_label, default_level);
    match cli.command {
        Command::Serve(mut a) => {
            // The global TLS options name the node's own certificate, key and peer CA.
            let tls = &mut a.overrides.tls;
            (tls.tls_cert, tls.tls_key, tls.tls_ca) = (cli.tls_cert, cli.tls_key, cli.tls_ca);
            cli::serve::run(a)
        }
        Command::Check(mut a) => {
            a.tls = spool::tls::TlsOptions::given(cli.tls_ca, cli.tls_cert, cli.tls_key);
            cli::check::run(a)
        }
        Command::DevCluster(a) => cli::dev_cluster::run(a, cli.log_format),
        // The same command tree as parsed: client-only flags hidden in local commands.
        Command::Completions(a) => {
            cli::docs::completions(cli::client_only::hide_in_local_commands(Cli::command()), a)
        }
        Command::Man(a) => {
            cli::docs::man(cli::client_only::hide_in_local_commands(Cli::command()), a)
        }
        Command::Bench(cmd) => bench::run(cmd),
        Command::Admin(cli::admin::AdminCommand::Token(t)) => cli::admin::token(t),
        cmd => {
            let options = ClientOptions {
                failover_timeout: cli
                    .failover_timeout_ms
                    .map(std::time::Duration::from_millis),
                tls: spool::tls::TlsOptions::given(cli.tls_ca, cli.tls_cert, cli.tls_key),
                token: token(cli.token, cli.token_file.as_deref())?,
                // One command, one call or one stream at a time: one connection.
                connections: Some(1),
            };
            client_command(&cli.addr, options, cmd)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument and subcommand a person can see, without help text.
    fn without_help(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let builtin = matches!(a.get_id().as_str(), "help" | "version");
            if !a.is_hide_set() && !builtin && a.get_help().is_none() {
                missing.push(format!("{path} <{}>", a.get_id()));
            }
        }
        for s in cmd.get_subcommands() {
            let name = format!("{path} {}", s.get_name());
            if s.get_about().is_none() && s.get_name() != "help" {
                missing.push(format!("{name} (no about)"));
            }
            without_help(s, &name, missing);
        }
    }

    #[test]
    fn every_argument_and_command_has_help() {
        let cmd = cli::client_only::hide_in_local_commands(Cli::command());
        let mut missing = Vec::new();
        without_help(&cmd, "spool", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }

    #[test]
    fn the_cli_is_well_formed() {
        cli::client_only::hide_in_local_commands(Cli::command()).debug_assert();
    }
}

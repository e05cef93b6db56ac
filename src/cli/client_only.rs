//! The global options only client commands use (`--addr`, `--token`, ...): hidden from
//! the help of the commands that run locally (`serve`, `check`, `bench`, `dev-cluster`),
//! and refused there when given, instead of being ignored (`spool serve --addr X` would
//! otherwise listen on the default port without a word).

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// The global options that only commands talking to a node read.
pub const CLIENT_ONLY: [&str; 4] = ["addr", "failover_timeout_ms", "token", "token_file"];

/// The flags of [`CLIENT_ONLY`], in order.
const CLIENT_ONLY_FLAGS: [&str; 4] = ["addr", "failover-timeout-ms", "token", "token-file"];

/// Subcommands that run locally and ignore [`CLIENT_ONLY`].
pub const LOCAL: [&str; 4] = ["serve", "check", "bench", "dev-cluster"];

/// `cmd` (the whole CLI) with the client-only options hidden under [`LOCAL`] commands:
/// each gets hidden options of the same ids, which the global ones then do not replace.
pub fn hide_in_local_commands(mut cmd: Command) -> Command {
    for name in LOCAL {
        cmd = cmd.mut_subcommand(name, |mut sub| {
            for (id, flag) in CLIENT_ONLY.into_iter().zip(CLIENT_ONLY_FLAGS) {
                let arg = Arg::new(id)
                    .long(flag)
                    .global(true)
                    .hide(true)
                    .action(ArgAction::Set);
                // The value types of the global options, which share the ids.
                sub = sub.arg(match id {
                    "failover_timeout_ms" => arg.value_parser(clap::value_parser!(u64)),
                    "token_file" => arg.value_parser(clap::value_parser!(std::path::PathBuf)),
                    _ => arg,
                });
            }
            sub
        });
    }
    cmd
}

/// A client-only option given on the command line of a local command: what to say.
pub fn misplaced(matches: &ArgMatches) -> Option<String> {
    let (sub, sub_matches) = matches.subcommand()?;
    if !LOCAL.contains(&sub) {
        return None;
    }
    let given = |m: &ArgMatches, id: &str| {
        m.try_get_raw(id).is_ok_and(|v| v.is_some())
            && m.value_source(id) == Some(ValueSource::CommandLine)
    };
    let id = CLIENT_ONLY
        .into_iter()
        .find(|id| given(matches, id) || given(sub_matches, id))?;
    let flag = format!("--{}", id.replace('_', "-"));
    let hint = match (sub, id) {
        ("serve", "addr") => {
            " (the address client commands talk to); `spool serve` listens on --listen \
             HOST:PORT [default: 127.0.0.1:7070]"
        }
        ("dev-cluster", "addr") => "; `spool dev-cluster` takes --base-port",
        _ => "; it is for commands that talk to a node",
    };
    Some(format!("`spool {sub}` does not take {flag}{hint}"))
}

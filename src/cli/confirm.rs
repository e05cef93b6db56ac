//! Destructive commands ask first: `--yes` answers for scripts; on a terminal the
//! question is asked; otherwise nothing is done.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Result};

/// Go on if `yes`, or if the person at the terminal answers y; else fail having done
/// nothing. `what` says what would be done (already printed in detail by the caller).
pub fn confirm(what: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("{what}: not done; add --yes to confirm (no terminal to ask)");
    }
    eprint!("{what}? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        return Ok(());
    }
    bail!("{what}: not done (not confirmed)");
}

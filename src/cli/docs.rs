//! `spool completions SHELL` and `spool man`: shell completions and manual pages, both
//! generated from the clap definition of the CLI, so they list what the binary accepts.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write spool.1 and one page per subcommand (spool-serve.1, spool-logs-create.1, ...)
    /// into this directory instead of printing spool(1).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

pub fn completions(mut cmd: clap::Command, a: CompletionsArgs) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "spool", &mut script);
    to_stdout(&script).context("writing the completions")
}

pub fn man(cmd: clap::Command, a: ManArgs) -> Result<()> {
    let source = format!("spool {}", cmd.get_version().unwrap_or_default());
    let Some(dir) = a.out_dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        return to_stdout(&page).context("writing the man page");
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Built, each subcommand's display name is its path (spool-logs-create): its page's
    // name, as git's are. `help` has no page.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    write_pages(cmd, &source, &dir)
}

/// A page for `cmd` and one for each of its visible subcommands, recursively, each
/// saying which version of spool it documents.
fn write_pages(cmd: clap::Command, source: &str, dir: &Path) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), source, dir)?;
    }
    let page = clap_mangen::Man::new(cmd).source(source);
    let path = page.generate_to(dir)?;
    tracing::debug!(path = %path.display(), "man page written");
    Ok(())
}

/// Write `bytes` to stdout; a reader that stopped early (`| head`) is no error.
fn to_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

//! The Debian package as a deploying user gets it: built by `scripts/package-deb.sh` from
//! the binary under test and extracted into a scratch root with `dpkg-deb -x`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `cmd`'s stdout, after checking that it succeeded.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether `bin` is a file in one of the PATH's directories.
pub fn on_path(bin: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(bin).is_file())
}

/// `scripts/package-deb.sh OUT_DIR` on the debug binary under test, uncompressed (a debug
/// binary is large); returns the .deb it printed.
pub fn build_deb(out_dir: &Path) -> PathBuf {
    let printed = run_ok(
        Command::new("bash")
            .arg(repo().join("scripts/package-deb.sh"))
            .arg(out_dir)
            .env("SPOOL_BIN", super::spool_bin())
            .env("DEB_COMPRESSION", "none"),
    );
    PathBuf::from(printed.lines().last().expect("the script prints the .deb"))
}

/// The package's files under `root` (`dpkg-deb -x`: no maintainer scripts run).
pub fn extract(deb: &Path, root: &Path) {
    run_ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root));
}

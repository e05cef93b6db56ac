//! What a deploying user gets: the example configuration (checked against the loader),
//! the Debian package (installed into a scratch root and run from there), shell
//! completions and man pages from the real binary.

mod common;

use std::process::Command;

/// `cmd`'s stdout, after checking that it succeeded.
fn run_ok(cmd: &mut Command) -> String {
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

#[test]
fn completions_for_each_shell_come_from_the_real_cli() {
    let bin = common::spool_bin();
    for (shell, marker) in [
        ("bash", "_spool()"),
        ("zsh", "#compdef spool"),
        ("fish", "complete -c spool"),
    ] {
        let out = run_ok(Command::new(bin).args(["completions", shell]));
        assert!(out.contains(marker), "{shell}: no {marker:?}");
        // Subcommands and their flags are in it, as the CLI defines them.
        for word in ["dev-cluster", "log-format"] {
            assert!(out.contains(word), "{shell} completions lack {word}");
        }
    }
    let out = Command::new(bin)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("bash") && e.contains("zsh"), "{e}");
}

#[test]
fn man_prints_spool_1_or_writes_a_page_per_subcommand() {
    let bin = common::spool_bin();
    let page = run_ok(Command::new(bin).arg("man"));
    assert!(page.contains(".TH spool 1"), "{page}");
    for sub in ["serve", "dev\\-cluster", "completions"] {
        assert!(page.contains(sub), "spool(1) lacks {sub}");
    }
    let d = tempfile::tempdir().unwrap();
    run_ok(Command::new(bin).args(["man", "--out-dir"]).arg(d.path()));
    for name in [
        "spool",
        "spool-serve",
        "spool-logs-create",
        "spool-admin-promote",
    ] {
        let text = std::fs::read_to_string(d.path().join(format!("{name}.1")))
            .unwrap_or_else(|e| panic!("{name}.1: {e}"));
        assert!(text.contains(&format!(".TH {name} 1")), "{name}.1");
    }
    let serve = std::fs::read_to_string(d.path().join("spool-serve.1")).unwrap();
    assert!(
        serve.contains("\\-\\-log\\-label"),
        "spool-serve.1 lacks its flags"
    );
}

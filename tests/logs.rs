//! Log output of the real binary: `--log-format json`, colours only on a terminal and
//! never with NO_COLOR, node labels.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// `spool GLOBAL... serve SERVE...` on a free port with `env` set (RUST_LOG, NO_COLOR and
/// SPOOL_LOG_FORMAT unset otherwise) and its stderr in a file: waits (bounded) until it
/// listens, stops it with SIGTERM and returns what it logged.
fn serve_log(dir: &Path, global: &[&str], serve: &[&str], env: &[(&str, &str)]) -> String {
    let log_path = dir.join("serve.log");
    let mut cmd = Command::new(common::spool_bin());
    cmd.args(global)
        .arg("serve")
        .args(serve)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("SPOOL_LOG_FORMAT")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("spool listening on ") {
                let _ = tx.send(());
            }
        }
    });
    let listening = rx.recv_timeout(Duration::from_secs(30));
    common::signal(&child, libc::SIGTERM);
    let status = common::wait_timeout(&mut child, Duration::from_secs(30));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(listening.is_ok(), "spool serve did not listen:\n{log}");
    assert!(status.success(), "spool serve exited {status}:\n{log}");
    log
}

/// Each line of `log` as a JSON object, with its `fields.message`.
fn json_lines(log: &str) -> Vec<(serde_json::Value, String)> {
    assert!(log.lines().count() > 0, "nothing logged");
    log.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line:?}"));
            assert!(v["timestamp"].is_string(), "{line}");
            assert!(v["level"].is_string(), "{line}");
            let message = v["fields"]["message"].as_str().unwrap_or("").to_owned();
            (v, message)
        })
        .collect()
}

#[test]
fn json_format_is_one_object_per_line_and_carries_the_node_label() {
    let d = tempfile::tempdir().unwrap();
    let global = ["--log-format", "json"];
    let log = serve_log(d.path(), &global, &["--log-label", "n1"], &[]);
    let lines = json_lines(&log);
    for (v, _) in &lines {
        assert_eq!(v["node"], "n1", "{v}");
    }
    for m in ["open files limit", "stopped cleanly"] {
        assert!(lines.iter().any(|(_, x)| x == m), "no {m:?} in {log}");
    }
    // SPOOL_LOG_FORMAT says the same as the flag; no label, no node.
    let d = tempfile::tempdir().unwrap();
    let log = serve_log(d.path(), &[], &[], &[("SPOOL_LOG_FORMAT", "json")]);
    for (v, _) in json_lines(&log) {
        assert!(v.get("node").is_none(), "{v}");
    }
}

#[test]
fn text_into_a_file_has_no_colour_codes_and_a_label_starts_each_line() {
    let d = tempfile::tempdir().unwrap();
    let log = serve_log(d.path(), &[], &[], &[]);
    assert!(log.contains("stopped cleanly"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log:?}");
    let d = tempfile::tempdir().unwrap();
    let log = serve_log(d.path(), &[], &["--log-label", "replica-7"], &[]);
    assert!(log.lines().count() > 0, "nothing logged");
    for line in log.lines() {
        assert!(line.starts_with("[replica-7] "), "{line:?}");
    }
}

/// What `spool serve` writes to a terminal (a pty made by `script`) before it fails to
/// bind a port in use: with NO_COLOR set as given. `None` without `script`.
fn on_a_terminal(no_color: Option<&str>) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no `script` (util-linux) to run the binary on a terminal");
        return None;
    }
    let d = tempfile::tempdir().unwrap();
    // A port in use: the node logs its start, then exits on its own.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let inner = format!(
        "{} serve --data-dir {} --listen 127.0.0.1:{port}",
        common::spool_bin(),
        d.path().join("data").display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &inner, "/dev/null"])
        .env_remove("RUST_LOG")
        .env_remove("SPOOL_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let child = cmd.spawn().unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success(),
        "serve on a busy port succeeded: {text}"
    );
    assert!(text.contains("open files limit"), "{text:?}");
    Some(text)
}

#[test]
fn colours_on_a_terminal_unless_no_color_is_set() {
    let Some(tty) = on_a_terminal(None) else {
        return;
    };
    assert!(tty.contains("\u{1b}["), "no colours on a terminal: {tty:?}");
    let plain = on_a_terminal(Some("1")).unwrap();
    assert!(
        !plain.contains("\u{1b}["),
        "colours despite NO_COLOR: {plain:?}"
    );
}

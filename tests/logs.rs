//! Log output of the real binary: `--log-format json`, colours only on a terminal and
//! never with NO_COLOR, node labels, and `spool dev-cluster` starting its nodes in order
//! with labelled logs and a hint that reaches them.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    let listening = common::wait_listening(&mut child, Duration::from_secs(30));
    common::signal(&child, libc::SIGTERM);
    let status = common::wait_timeout(&mut child, Duration::from_secs(30));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(listening, "spool serve did not listen:\n{log}");
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

/// A port `p` with `p..p + n` free now on loopback.
fn free_ports(n: u16) -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = first.local_addr().unwrap().port();
        if p.checked_add(n).is_none() {
            continue;
        }
        if (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
}

/// A `spool dev-cluster` child, stopped by SIGINT (which stops its nodes too) if the test
/// fails while it runs, so that no node outlives the test.
struct DevCluster(std::process::Child);

impl Drop for DevCluster {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        common::signal(&self.0, libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dev_cluster_starts_the_primary_first_labels_logs_and_hints_at_its_port() {
    let d = tempfile::tempdir().unwrap();
    let base = free_ports(3);
    let stderr_path = d.path().join("stderr");
    let child = Command::new(common::spool_bin())
        .args(["dev-cluster", "--replicas", "2", "--base-port"])
        .arg(base.to_string())
        .arg("--dir")
        .arg(d.path().join("nodes"))
        .env_remove("RUST_LOG")
        .env_remove("SPOOL_LOG_FORMAT")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut cluster = DevCluster(child);
    // Its stdout, line by line, until the last line of its hint (bounded).
    let (tx, rx) = mpsc::channel();
    let stdout = cluster.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.contains("Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(e) => panic!(
                "dev-cluster did not print its hint ({e}): {printed:?}\n{}",
                std::fs::read_to_string(&stderr_path).unwrap()
            ),
        }
    }
    // The hint's `export` names this cluster (not the default port) and its commands work.
    let exports = printed
        .iter()
        .find_map(|l| l.strip_prefix("try: export "))
        .unwrap_or_else(|| panic!("no export in the hint: {printed:?}"));
    let env: Vec<(String, String)> = exports
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let primary = format!("127.0.0.1:{base}");
    assert!(
        env.contains(&("SPOOL_ADDR".to_owned(), primary.clone())),
        "{printed:?}"
    );
    common::run(60, common::wait_connected(&primary, 2));
    let commands = printed
        .iter()
        .skip_while(|l| !l.starts_with("try: export "))
        .nth(1)
        .expect("commands after the export")
        .trim()
        .to_owned();
    for step in commands.split("&&") {
        let words: Vec<&str> = step.split_whitespace().collect();
        assert_eq!(words[0], "spool", "{commands}");
        let out = Command::new(common::spool_bin())
            .args(&words[1..])
            .env_remove("SPOOL_ADDR")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`{step}` with the hint's environment failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    common::signal(&cluster.0, libc::SIGINT);
    let status = common::wait_timeout(&mut cluster.0, Duration::from_secs(60));
    assert!(status.success(), "dev-cluster exited with {status}");
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    // Replicas start once the primary listens, and stop before it.
    assert!(
        !log.to_lowercase().contains("refused"),
        "a node was refused:\n{log}"
    );
    // Nothing to warn about in a fresh dev cluster (its data dirs are private too).
    assert!(!log.contains(" WARN "), "warnings:\n{log}");
    // Every line says which node wrote it, and each node wrote some.
    for line in log.lines() {
        assert!(
            ["[primary] ", "[replica-1] ", "[replica-2] "]
                .iter()
                .any(|p| line.starts_with(p)),
            "an unlabelled line: {line:?}"
        );
    }
    for name in ["primary", "replica-1", "replica-2"] {
        let prefix = format!("[{name}] ");
        assert!(
            log.lines().any(|l| l.starts_with(&prefix)),
            "nothing from {name}:\n{log}"
        );
    }
}

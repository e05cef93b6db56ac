//! Real `spool serve` processes on loopback ports for the end-to-end tests.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use spool::client::Client;
use spool_proto::v1 as pb;

pub mod cluster;
pub mod etcd;
pub mod package;
pub mod proxy;
pub mod raw_conn;

/// The `spool` binary under test: this build's, or `SPOOL_TEST_BIN` (to show that a test
/// fails against another build, e.g. the one before a fix).
pub fn spool_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("SPOOL_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_spool").to_owned())
    })
}

/// A running `spool serve` child.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
}

impl Server {
    /// Start on a free port (`--listen 127.0.0.1:0`) and wait for its "listening" line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_on("127.0.0.1:0", data_dir, extra)
    }

    /// Start listening on `listen` (a node that others must find again after a restart).
    pub fn start_on(listen: &str, data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with(listen, data_dir, extra, None)
    }

    /// Start with at most `nofile` open files (soft and hard limit, so the node cannot
    /// raise it), as under a tight `ulimit -n`.
    pub fn start_limited(data_dir: &Path, extra: &[&str], nofile: u64) -> Server {
        Server::start_with("127.0.0.1:0", data_dir, extra, Some(nofile))
    }

    /// Start with the TOML `config`, written beside the data dir (`DATA_DIR.toml`), and
    /// the `extra` flags.
    pub fn start_toml(data_dir: &Path, config: &str, extra: &[&str]) -> Server {
        let path = write_config(data_dir, config);
        let mut args = vec!["--config", path.as_str()];
        args.extend_from_slice(extra);
        Server::start(data_dir, &args)
    }

    /// Start with the TOML `config` (written beside the data dir) and its log (stderr,
    /// WARN and above) going to `DATA_DIR.log`, which [`Server::log`] reads.
    pub fn start_configured(data_dir: &Path, config: &str, nofile: Option<u64>) -> Server {
        let path = write_config(data_dir, config);
        let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
        Server::start_logging(
            "127.0.0.1:0",
            data_dir,
            &["--config", &path],
            nofile,
            Some(log),
        )
    }

    /// What the node logged, if started with [`Server::start_configured`].
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    fn start_with(listen: &str, data_dir: &Path, extra: &[&str], nofile: Option<u64>) -> Server {
        Server::start_logging(listen, data_dir, extra, nofile, None)
    }

    fn start_logging(
        listen: &str,
        data_dir: &Path,
        extra: &[&str],
        nofile: Option<u64>,
        log: Option<std::fs::File>,
    ) -> Server {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut cmd = Command::new(spool_bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen])
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        if let Some(log) = log {
            cmd.env("NO_COLOR", "1").stderr(log);
        }
        if let Some(n) = nofile {
            limit_open_files(&mut cmd, n);
        }
        let mut child = cmd.spawn().expect("spawn spool serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("spool listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("spool serve did not start within 30 s");
            }
        };
        Server {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            args,
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.addr, args, None)
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> Output {
        cli(&self.addr, args, Some(stdin))
    }

    /// SIGTERM and wait: a clean stop must exit 0.
    pub fn stop(mut self) {
        signal(&self.child, libc::SIGTERM);
        let status = wait_timeout(&mut self.child, Duration::from_secs(30));
        assert!(status.success(), "spool serve exited with {status}");
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn restart(self) -> Server {
        let (dir, args) = (self.data_dir.clone(), self.args.clone());
        self.stop();
        let extra: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(&dir, &extra)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write the TOML `config` beside `data_dir` (`DATA_DIR.toml`); returns its path.
/// Whether `child` printed `spool listening on ...` on its stdout within `limit` (its
/// stdout must be piped; it is read on a thread until the child closes it).
pub fn wait_listening(child: &mut Child, limit: Duration) -> bool {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("a piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let lines = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok);
        for line in lines {
            if line.starts_with("spool listening on ") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(limit).is_ok()
}

pub fn write_config(data_dir: &Path, config: &str) -> String {
    let path = data_dir.with_extension("toml");
    std::fs::write(&path, config).unwrap();
    path.display().to_string()
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, sig) };
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn cli(addr: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(spool_bin())
        .arg("--addr")
        .arg(addr)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        let written = child.stdin.take().unwrap().write_all(input.as_bytes());
        // A command that fails stops reading its input.
        if let Err(e) = written {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
    }
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Run a future on a fresh runtime, bounded in time.
pub fn run<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            tokio::time::timeout(Duration::from_secs(secs), f)
                .await
                .expect("test timed out")
        })
}

/// `spool check --json` of a stopped node: (log -> (start, end, digest)).
pub fn digests(dir: &Path) -> Vec<(String, u64, u64, String)> {
    let out = check(dir, &["--json"]);
    assert!(
        out.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_owned(),
                l["start"].as_u64().unwrap(),
                l["end"].as_u64().unwrap(),
                l["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Append batches of 16 records of about `record_bytes` each through one pipelined
/// stream; returns the log's end after the last one.
pub async fn load_records(
    addr: &str,
    log: &str,
    batches: std::ops::Range<u64>,
    record_bytes: usize,
    tag: &str,
) -> u64 {
    let c = client(addr).await;
    let mut app = c
        .appender(log, spool::client::AckMode::Async)
        .await
        .unwrap();
    let mut waiters = Vec::new();
    for i in batches {
        let recs: Vec<bytes::Bytes> = (0..16)
            .map(|j| bytes::Bytes::from(format!("{tag}-{i}-{j}-{}", "p".repeat(record_bytes))))
            .collect();
        waiters.push(app.send(recs).await.unwrap());
    }
    let mut end: Option<u64> = None;
    for w in waiters {
        let r = w.await.unwrap().unwrap();
        // A pipelined stream's batches land in the log in the order they were sent.
        if let Some(prev) = end {
            assert_eq!(r.first_offset, prev, "pipelined appends out of order");
        }
        end = Some(r.first_offset + u64::from(r.count));
    }
    end.unwrap()
}

/// Poll `check` every 20 ms until it gives `Some`, and return that; once `limit` has
/// passed, fail with `what` (what did not happen). Every wait in these tests is bounded.
pub async fn wait_until<T, F, Fut>(what: &str, limit: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_until_every(what, limit, Duration::from_millis(20), check).await
}

/// [`wait_until`], polling every `every`.
pub async fn wait_until_every<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Wait (bounded, 60 s) until `log` on the node at `addr` ends at `end` or past it; returns
/// the end it has then.
pub async fn reach_end(addr: &str, log: &str, end: u64) -> u64 {
    let c = client(addr).await;
    let what = format!("{addr} did not reach {end} on {log}");
    wait_until(&what, Duration::from_secs(60), || async {
        let info = c.describe_log(log).await.ok()?;
        (info.end_offset >= end).then_some(info.end_offset)
    })
    .await
}

/// Wait (bounded, 60 s) until the primary at `addr` has `n` replicas connected, so that
/// appends needing acks are not refused for want of them.
pub async fn wait_connected(addr: &str, n: usize) {
    let c = client(addr).await;
    let what = format!("{n} replica(s) did not connect to {addr}");
    wait_until(&what, Duration::from_secs(60), || async {
        let status = c.status().await;
        status
            .is_ok_and(|s| s.replicas.iter().filter(|r| r.connected).count() >= n)
            .then_some(())
    })
    .await
}

/// `--replica-of UPSTREAM` followed by `extra`: a replica's flags.
pub fn replica_of<'a>(upstream: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--replica-of", upstream];
    v.extend_from_slice(extra);
    v
}

/// A client of the node at `addr`.
pub async fn client(addr: &str) -> Client {
    Client::connect(addr).await.unwrap()
}

/// The status of the node at `addr`.
pub async fn status(addr: &str) -> pb::StatusResponse {
    client(addr).await.status().await.unwrap()
}

/// Create `log` (default config) on the node at `addr`.
pub async fn create_log(addr: &str, log: &str) {
    client(addr).await.create_log(log, None).await.unwrap();
}

/// `log` as the node at `addr` describes it.
pub async fn describe(addr: &str, log: &str) -> pb::LogInfo {
    client(addr).await.describe_log(log).await.unwrap()
}

/// What a replica (through its client `c`) reports of `log` from its upstream (None
/// before it has it).
pub async fn upstream_log(c: &Client, log: &str) -> Option<pb::UpstreamLogStatus> {
    let up = c.status().await.unwrap().upstream?;
    up.logs.into_iter().find(|l| l.name == log)
}

/// Stop `replica`, then `primary`, and check that they hold the same logs, record for
/// record (`spool check`'s digests).
pub fn stop_identical(replica: Server, primary: Server) {
    let (rdir, pdir) = (replica.data_dir.clone(), primary.data_dir.clone());
    replica.stop();
    primary.stop();
    assert_eq!(digests(&rdir), digests(&pdir));
}

/// A config whose logs' segments all have `bytes` (the first one too).
pub fn fixed_segments(bytes: u64) -> String {
    format!("[log_defaults]\nsegment_bytes = {bytes}\ninitial_segment_bytes = {bytes}\n")
}

/// An append of one record `value` to `log` that waits for `k` replicas (semi-sync:K).
pub fn semi_sync(log: &str, value: &'static str, k: u32) -> pb::AppendRequest {
    pb::AppendRequest {
        log: log.into(),
        records: vec![bytes::Bytes::from(value)],
        ack: pb::AckMode::SemiSync as i32,
        semi_sync_replicas: k,
        ..Default::default()
    }
}

/// `spool check EXTRA... DIR` of a stopped node's directory.
pub fn check(dir: &Path, extra: &[&str]) -> Output {
    Command::new(spool_bin())
        .arg("check")
        .args(extra)
        .arg(dir)
        .output()
        .unwrap()
}

/// The segment files of the log directory `dir` as (name, file length), by base offset.
pub fn segment_files(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e))
        .filter(|(n, _)| spool_storage::segment::parse_segment_name(n).is_some())
        .map(|(n, e)| (n, e.metadata().unwrap().len()))
        .collect();
    v.sort();
    v
}

/// A port free now on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET /metrics from `port`, polling (bounded) until every `want` line prefix is there.
pub async fn wait_metrics(port: u16, want: &[&str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut body = String::new();
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let req = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
            if s.write_all(req.as_bytes()).await.is_ok() {
                let _ = s.read_to_string(&mut body).await;
            }
        }
        if want.iter().all(|w| body.lines().any(|l| l.starts_with(w))) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics on {port} never showed {want:?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Run `cmd` with at most `nofile` open files (soft and hard: it cannot raise them).
pub fn limit_open_files(cmd: &mut Command, nofile: u64) {
    use std::os::unix::process::CommandExt;
    let lim = libc::rlimit {
        rlim_cur: nofile,
        rlim_max: nofile,
    };
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// A tmpfs mounted on a test's directory, unmounted (lazily) when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` (as mount's `size=`, e.g. "4m") on `dir`; None where that is
    /// not allowed (not root), which CI (root) does not accept.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root and must be able to mount a tmpfs"
            );
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
            return None;
        }
        Some(Tmpfs(dir.to_owned()))
    }

    /// Grow (or shrink) it to `size`, keeping what it holds.
    pub fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remounting {} with size {size}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

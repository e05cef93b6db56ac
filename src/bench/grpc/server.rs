//! The server under test for `spool bench grpc`: a `spool serve` child process (default:
//! its CPU is then measured apart from the load generator's) or, with `--in-process`, the
//! same server on its own runtime in a thread of this process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use spool::config::{AppendIo, FileConfig, IoBackend, Overrides, ServerConfig};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
enum Kind {
    Process {
        child: Child,
        log_path: PathBuf,
    },
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<Result<()>>>,
    },
}

#[derive(Debug)]
pub(in crate::bench) struct BenchServer {
    kind: Kind,
    pub addr: SocketAddr,
}

impl BenchServer {
    /// Start a server on 127.0.0.1:0 over `data_dir`; `work_dir` holds its log file.
    pub fn start(
        in_process: bool,
        data_dir: &Path,
        work_dir: &Path,
        io_backend: IoBackend,
    ) -> Result<BenchServer> {
        if in_process {
            Self::start_in_process(data_dir, io_backend)
        } else {
            Self::start_process(data_dir, work_dir, io_backend, "server", &[])
        }
    }

    /// A `spool serve --replica-of upstream` child (with `--sync-replica` when `sync`).
    pub fn start_replica(
        data_dir: &Path,
        work_dir: &Path,
        io_backend: IoBackend,
        upstream: SocketAddr,
        id: &str,
        sync: bool,
        append_io: Option<AppendIo>,
    ) -> Result<BenchServer> {
        let mut extra = vec![
            "--replica-of".to_owned(),
            upstream.to_string(),
            "--replica-id".to_owned(),
            id.to_owned(),
        ];
        if sync {
            extra.push("--sync-replica".to_owned());
        }
        if let Some(a) = append_io {
            let name = a.to_possible_value().expect("no variant is skipped");
            extra.extend(["--append-io".to_owned(), name.get_name().to_owned()]);
        }
        Self::start_process(data_dir, work_dir, io_backend, id, &extra)
    }

    fn start_process(
        data_dir: &Path,
        work_dir: &Path,
        io_backend: IoBackend,
        name: &str,
        extra: &[String],
    ) -> Result<BenchServer> {
        // SPOOL_BENCH_SERVER: another build to run as the servers, so that two builds'
        // servers are compared under one bench.
        let exe = match std::env::var_os("SPOOL_BENCH_SERVER") {
            Some(p) => std::path::PathBuf::from(p),
            None => std::env::current_exe().context("locating the spool binary")?,
        };
        let log_path = work_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = Command::new(&exe)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--io-backend")
            .arg(io_backend.name())
            .args(extra)
            // Nothing from the caller's environment may reconfigure the server under test.
            .env_remove("SPOOL_CONFIG")
            .env_remove("SPOOL_METRICS_LISTEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            // Report the address, then keep draining so the server never blocks on stdout.
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("spool listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
            }
        });
        let mut server = BenchServer {
            kind: Kind::Process { child, log_path },
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => {
                server.addr = addr
                    .parse()
                    .with_context(|| format!("server printed a bad address {addr:?}"))?;
                Ok(server)
            }
            Err(_) => Err(anyhow!(
                "spool serve did not report its address within {START_TIMEOUT:?}; its log:\n{}",
                server.log_tail()
            )),
        }
    }

    fn start_in_process(data_dir: &Path, io_backend: IoBackend) -> Result<BenchServer> {
        let config = ServerConfig::build(
            FileConfig::default(),
            Overrides {
                data_dir: Some(data_dir.to_owned()),
                listen: Some("127.0.0.1:0".into()),
                metrics_listen: None,
                io_backend: Some(io_backend),
                ..Overrides::default()
            },
        )?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("spool-grpc")
                    .build()?;
                let shutdown = async move {
                    let _ = stop_rx.await;
                };
                rt.block_on(spool::server::serve(config, shutdown, move |addr| {
                    let _ = addr_tx.send(addr);
                }))
            })?;
        let mut server = BenchServer {
            kind: Kind::InProcess {
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        match addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => {
                server.addr = addr;
                Ok(server)
            }
            Err(_) => match server.stop() {
                Err(e) => Err(e.context("in-process server failed to start")),
                Ok(()) => bail!("in-process server did not bind within {START_TIMEOUT:?}"),
            },
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Process { .. } => "process",
            Kind::InProcess { .. } => "in-process",
        }
    }

    /// Server CPU seconds (user, system) so far; None when it shares our process.
    pub fn cpu_s(&self) -> Option<(f64, f64)> {
        let Kind::Process { child, .. } = &self.kind else {
            return None;
        };
        spool::measure::process_cpu_s(child.id())
    }

    /// Bytes the server has had written to storage so far; None when it shares our
    /// process.
    pub fn write_bytes(&self) -> Option<u64> {
        let Kind::Process { child, .. } = &self.kind else {
            return None;
        };
        spool::measure::process_write_bytes(child.id())
    }

    /// Server resident set (MiB) now; None when it shares our process.
    pub fn rss_mib(&self) -> Option<f64> {
        let Kind::Process { child, .. } = &self.kind else {
            return None;
        };
        spool::measure::process_rss_mib(child.id())
    }

    pub fn log_tail(&self) -> String {
        let Kind::Process { log_path, .. } = &self.kind else {
            return String::new();
        };
        let text = std::fs::read_to_string(log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Graceful stop (SIGTERM / shutdown future), waiting for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        match &mut self.kind {
            Kind::Process { child, .. } => {
                if child.try_wait()?.is_some() {
                    bail!("spool serve exited early; its log:\n{}", self.log_tail());
                }
                // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let deadline = std::time::Instant::now() + STOP_TIMEOUT;
                loop {
                    if let Some(status) = child.try_wait()? {
                        if !status.success() {
                            bail!(
                                "spool serve exited with {status}; its log:\n{}",
                                self.log_tail()
                            );
                        }
                        return Ok(());
                    }
                    if std::time::Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        bail!("spool serve did not stop within {STOP_TIMEOUT:?} of SIGTERM");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Kind::InProcess { stop, thread } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                match thread.take().map(|t| t.join()) {
                    Some(Ok(r)) => r,
                    Some(Err(_)) => bail!("the in-process server panicked"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        if let Kind::Process { child, .. } = &mut self.kind {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

//! `spool dev-cluster`: a primary and replicas on loopback, each its own `spool serve`
//! process with its own data dir, stopped together on Ctrl-C. With `--etcd`, an etcd and
//! three nodes that elect their primary through it (automatic failover on).
//!
//! Each node is started once the one before it listens (so replicas find their primary
//! up), and each line a node logs starts with its name (`serve --log-label`).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::dev_etcd::DevEtcd;
use super::logging::LogFormat;

/// How long a node may take from its start to listening (it opens its logs first).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct DevClusterArgs {
    /// Number of replicas of the primary (with --etcd: nodes beyond the first).
    #[arg(long, default_value_t = 2)]
    pub replicas: u16,
    /// The primary listens on this port, replica i on port + i.
    #[arg(long, default_value_t = 7070)]
    pub base_port: u16,
    /// Parent of the nodes' data dirs.
    #[arg(long, default_value = "spool-dev")]
    pub dir: PathBuf,
    /// The first replica is synchronous (for `--ack sync`).
    #[arg(long, conflicts_with = "etcd")]
    pub sync_first: bool,
    /// Start an etcd (the `etcd` binary, from Debian's etcd-server) and nodes with
    /// `--cluster` on it: they elect the primary and fail over by themselves.
    #[arg(long)]
    pub etcd: bool,
    /// etcd's client port with --etcd [default: a free one].
    #[arg(long, requires = "etcd")]
    pub etcd_port: Option<u16>,
    /// Mutual TLS everywhere: a CA, a certificate per node and one for the client are
    /// generated into DIR/tls, and the nodes require client certificates.
    #[arg(long)]
    pub tls: bool,
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        // The last started first: replicas leave before their primary, which spares them
        // a round of "upstream gone" warnings.
        for c in self.0.iter_mut().rev() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// Start node `name` (as [`spawn`]) into `nodes` and wait until it listens.
fn start(
    nodes: &mut Nodes,
    a: &DevClusterArgs,
    log: LogFormat,
    name: &str,
    port: u16,
    extra: &[String],
) -> Result<()> {
    nodes.0.push(spawn(a, log, name, port, extra)?);
    let child = nodes.0.last_mut().expect("just pushed");
    wait_listening(name, child)
}

/// Until `child` prints `spool serve`'s "spool listening on" line, at most
/// [`LISTEN_TIMEOUT`]; its stdout is read to its end by a thread after that.
fn wait_listening(name: &str, child: &mut Child) -> Result<()> {
    let stdout = child.stdout.take().context("the node's stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("spool listening on ") {
                let _ = tx.send(());
            }
        }
    });
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(()) => return Ok(()),
            Err(RecvTimeoutError::Disconnected) => {
                bail!("{name} stopped before it listened (its log is above)")
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(status) = child.try_wait()? {
                    bail!("{name} exited ({status}) before it listened (its log is above)");
                }
                if Instant::now() >= deadline {
                    bail!("{name} did not listen within {LISTEN_TIMEOUT:?}");
                }
            }
        }
    }
}

/// `spool serve` for node `name` on `port`, with its data in `dir/name`.
fn spawn(
    a: &DevClusterArgs,
    log: LogFormat,
    name: &str,
    port: u16,
    extra: &[String],
) -> Result<Child> {
    let exe = std::env::current_exe().context("locating the spool binary")?;
    let dir = a.dir.join(name);
    // Private, as `spool serve` makes a data dir itself (it warns about an open one).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tls = match a.tls {
        true => {
            let t = a.dir.join("tls");
            let f = |n: &str| t.join(n).display().to_string();
            vec![
                "--tls-cert".to_string(),
                f(&format!("{name}.pem")),
                "--tls-key".into(),
                f(&format!("{name}.key")),
                "--tls-client-ca".into(),
                f("ca.pem"),
                "--tls-require-client-cert".into(),
            ]
        }
        false => Vec::new(),
    };
    Command::new(&exe)
        .arg("serve")
        .args(["--log-label", name, "--log-format", log.name()])
        .args(tls)
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        // dev-cluster prints the addresses itself (once the node says it listens); the
        // nodes log to stderr, each line labelled.
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {name}"))
}

fn print_node(a: &DevClusterArgs, name: &str, port: u16) {
    let data = a.dir.join(name);
    println!("{name:<10} 127.0.0.1:{port}  (data {})", data.display());
}

/// DIR/tls: a CA, a certificate for each of `nodes` (for 127.0.0.1 and localhost) and one
/// for the client. Returns the client's settings.
fn make_certs(a: &DevClusterArgs, nodes: &[String]) -> Result<Vec<ClientSetting>> {
    use spool::tls::dev_certs::DevCa;
    let dir = a.dir.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let ca = DevCa::new("spool dev-cluster CA")?;
    ca.write(&dir.join("ca.pem"))?;
    for n in nodes {
        ca.issue(n, &["127.0.0.1", "localhost"])?.write(&dir, n)?;
    }
    let client = ca.issue("client", &["client"])?.write(&dir, "client")?;
    let setting = |flag, env, path: &std::path::Path| ClientSetting {
        flag,
        env,
        value: path.display().to_string(),
    };
    Ok(vec![
        setting("--tls-ca", "SPOOL_TLS_CA", &dir.join("ca.pem")),
        setting("--tls-cert", "SPOOL_TLS_CERT", &client.cert),
        setting("--tls-key", "SPOOL_TLS_KEY", &client.key),
    ])
}

/// One thing a client needs to reach the dev cluster: a global flag and the environment
/// variable that stands for it.
#[derive(Debug)]
struct ClientSetting {
    flag: &'static str,
    env: &'static str,
    value: String,
}

/// How a client reaches the cluster: the address(es), and the TLS files when --tls.
fn client_settings(a: &DevClusterArgs) -> Result<Vec<ClientSetting>> {
    let nodes = match a.etcd {
        false => 0,
        true => a.replicas,
    };
    let addrs = (0..=nodes)
        .map(|i| format!("127.0.0.1:{}", a.base_port + i))
        .collect::<Vec<_>>()
        .join(",");
    let mut settings = vec![ClientSetting {
        flag: "--addr",
        env: "SPOOL_ADDR",
        value: addrs,
    }];
    if a.tls {
        let mut names = vec!["primary".to_string()];
        names.extend((1..=a.replicas).map(|i| format!("replica-{i}")));
        names.extend((0..=a.replicas).map(|i| format!("node-{}", i + 1)));
        settings.extend(make_certs(a, &names)?);
    }
    Ok(settings)
}

/// The lines that tell how to use the cluster: the flags, and commands to try after an
/// `export` of the same settings (so that they reach these nodes, whatever --base-port).
fn print_hint(settings: &[ClientSetting]) {
    let flags: Vec<String> = settings
        .iter()
        .map(|s| format!("{} {}", s.flag, s.value))
        .collect();
    let exports: Vec<String> = settings
        .iter()
        .map(|s| format!("{}={}", s.env, s.value))
        .collect();
    println!("connect with: spool {} ...", flags.join(" "));
    println!("try: export {}", exports.join(" "));
    println!(
        "     spool logs create demo && spool append demo --ack semi-sync:1 hello && spool status"
    );
    println!("Ctrl-C stops them all");
}

pub fn run(a: DevClusterArgs, log: LogFormat) -> Result<()> {
    let settings = client_settings(&a)?;
    if a.etcd {
        return run_etcd(a, log, &settings);
    }
    run_plain(a, log, &settings)
}

fn run_plain(a: DevClusterArgs, log: LogFormat, settings: &[ClientSetting]) -> Result<()> {
    let mut nodes = Nodes(Vec::new());
    let primary = format!("127.0.0.1:{}", a.base_port);
    // The replicas start once the primary listens: none of them sees it refuse.
    start(&mut nodes, &a, log, "primary", a.base_port, &[])?;
    print_node(&a, "primary", a.base_port);
    for i in 1..=a.replicas {
        let port = a.base_port + i;
        let name = format!("replica-{i}");
        let mut extra = vec![
            "--replica-of".to_string(),
            primary.clone(),
            "--replica-id".to_string(),
            name.clone(),
        ];
        if a.sync_first && i == 1 {
            extra.push("--sync-replica".into());
        }
        start(&mut nodes, &a, log, &name, port, &extra)?;
        print_node(&a, &name, port);
    }
    print_hint(settings);
    supervise(&mut nodes, Exit::StopAll)
}

/// An etcd, then `1 + replicas` nodes on it; the etcd stops after the nodes.
fn run_etcd(a: DevClusterArgs, log: LogFormat, settings: &[ClientSetting]) -> Result<()> {
    let etcd = DevEtcd::start(&a.dir, a.etcd_port)?;
    println!(
        "etcd       {}  (data {})",
        etcd.url(),
        a.dir.join("etcd").display()
    );
    let cluster = ["--cluster".to_string(), etcd.url()];
    let mut nodes = Nodes(Vec::new());
    for i in 0..=a.replicas {
        let port = a.base_port + i;
        let name = format!("node-{}", i + 1);
        start(&mut nodes, &a, log, &name, port, &cluster)?;
        print_node(&a, &name, port);
    }
    println!("the nodes elect a primary through etcd; clients given every address follow it:");
    print_hint(settings);
    let result = supervise(&mut nodes, Exit::Tolerate);
    drop(nodes);
    drop(etcd);
    result
}

/// What a node exiting on its own does to the dev cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Stop the others (a primary with replicas has no one to take over).
    StopAll,
    /// Say so and go on (with --etcd: the others fail over), until none is left.
    Tolerate,
}

/// Until Ctrl-C (or a node exits, per `on_exit`); dropping `nodes` then stops the rest.
fn supervise(nodes: &mut Nodes, on_exit: Exit) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut exited = vec![false; nodes.0.len()];
    rt.block_on(async {
        let mut watch = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = watch.tick() => {
                    for (i, c) in nodes.0.iter_mut().enumerate() {
                        let Some(status) = c.try_wait()? else { continue };
                        if on_exit == Exit::StopAll {
                            anyhow::bail!("a node exited ({status}); stopping the others");
                        }
                        if !std::mem::replace(&mut exited[i], true) {
                            println!("node-{} exited ({status}); the others go on", i + 1);
                        }
                    }
                    if exited.iter().all(|&e| e) {
                        anyhow::bail!("every node exited");
                    }
                }
            }
        }
    })
}

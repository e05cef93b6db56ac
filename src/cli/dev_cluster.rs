//! `spool dev-cluster`: a primary and replicas on loopback, each its own `spool serve`
//! process with its own data dir, stopped together on Ctrl-C. With `--etcd`, an etcd and
//! three nodes that elect their primary through it (automatic failover on).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use super::dev_etcd::DevEtcd;

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
        for c in &self.0 {
            // SAFETY: signalling our own children.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// `spool serve` for node `name` on `port`, with its data in `dir/name`.
fn spawn(a: &DevClusterArgs, name: &str, port: u16, extra: &[String]) -> Result<Child> {
    let exe = std::env::current_exe().context("locating the spool binary")?;
    let dir = a.dir.join(name);
    std::fs::create_dir_all(&dir)?;
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
        .args(tls)
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        // dev-cluster prints the addresses itself; the nodes log to stderr.
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name}"))
}

fn print_node(a: &DevClusterArgs, name: &str, port: u16) {
    let data = a.dir.join(name);
    println!("{name:<10} 127.0.0.1:{port}  (data {})", data.display());
}

/// DIR/tls: a CA, a certificate for each of `nodes` (for 127.0.0.1 and localhost) and one
/// for the client. Returns the client's flags.
fn make_certs(a: &DevClusterArgs, nodes: &[String]) -> Result<String> {
    use spool::tls::dev_certs::DevCa;
    let dir = a.dir.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let ca = DevCa::new("spool dev-cluster CA")?;
    ca.write(&dir.join("ca.pem"))?;
    for n in nodes {
        ca.issue(n, &["127.0.0.1", "localhost"])?.write(&dir, n)?;
    }
    let client = ca.issue("client", &["client"])?.write(&dir, "client")?;
    Ok(format!(
        "--tls-ca {} --tls-cert {} --tls-key {}",
        dir.join("ca.pem").display(),
        client.cert.display(),
        client.key.display()
    ))
}

/// What `connect with` says: the address flag, with the TLS flags when --tls.
fn connect_flags(a: &DevClusterArgs, addr_flag: String) -> Result<String> {
    if !a.tls {
        return Ok(addr_flag);
    }
    let mut names = vec!["primary".to_string()];
    names.extend((1..=a.replicas).map(|i| format!("replica-{i}")));
    names.extend((0..=a.replicas).map(|i| format!("node-{}", i + 1)));
    Ok(format!("{addr_flag} {}", make_certs(a, &names)?))
}

pub fn run(a: DevClusterArgs) -> Result<()> {
    let connect = connect_flags(
        &a,
        match a.etcd {
            false => format!("--addr 127.0.0.1:{}", a.base_port),
            true => format!(
                "--addr {}",
                (0..=a.replicas)
                    .map(|i| format!("127.0.0.1:{}", a.base_port + i))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        },
    )?;
    if a.etcd {
        return run_etcd(a, &connect);
    }
    run_plain(a, &connect)
}

fn run_plain(a: DevClusterArgs, connect: &str) -> Result<()> {
    let mut nodes = Nodes(Vec::new());
    let primary = format!("127.0.0.1:{}", a.base_port);
    nodes.0.push(spawn(&a, "primary", a.base_port, &[])?);
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
        nodes.0.push(spawn(&a, &name, port, &extra)?);
        print_node(&a, &name, port);
    }
    println!("connect with: spool {connect} ...");
    println!(
        "try: spool logs create demo && spool append demo --ack semi-sync:1 hello && spool status"
    );
    println!("Ctrl-C stops them all");
    supervise(&mut nodes, Exit::StopAll)
}

/// An etcd, then `1 + replicas` nodes on it; the etcd stops after the nodes.
fn run_etcd(a: DevClusterArgs, connect: &str) -> Result<()> {
    let etcd = DevEtcd::start(&a.dir, a.etcd_port)?;
    println!(
        "etcd       {}  (data {})",
        etcd.url(),
        a.dir.join("etcd").display()
    );
    let cluster = ["--cluster".to_string(), etcd.url()];
    let mut nodes = Nodes(Vec::new());
    let mut addrs = Vec::new();
    for i in 0..=a.replicas {
        let port = a.base_port + i;
        let name = format!("node-{}", i + 1);
        nodes.0.push(spawn(&a, &name, port, &cluster)?);
        print_node(&a, &name, port);
        addrs.push(format!("127.0.0.1:{port}"));
    }
    let addrs = addrs.join(",");
    println!("the nodes elect a primary through etcd; clients given every address follow it:");
    println!("connect with: spool {connect} ...  (or export SPOOL_ADDR={addrs})");
    println!(
        "try: spool logs create demo && spool append demo --ack semi-sync:1 hello && spool status"
    );
    println!("Ctrl-C stops them all");
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

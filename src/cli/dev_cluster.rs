//! `spool dev-cluster`: a primary and replicas on loopback, each its own `spool serve`
//! process with its own data dir, stopped together on Ctrl-C.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct DevClusterArgs {
    /// Number of replicas of the primary.
    #[arg(long, default_value_t = 2)]
    pub replicas: u16,
    /// The primary listens on this port, replica i on port + i.
    #[arg(long, default_value_t = 7070)]
    pub base_port: u16,
    /// Parent of the nodes' data dirs.
    #[arg(long, default_value = "spool-dev")]
    pub dir: PathBuf,
    /// The first replica is synchronous (for `--ack sync`).
    #[arg(long)]
    pub sync_first: bool,
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

pub fn run(a: DevClusterArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the spool binary")?;
    let mut nodes = Nodes(Vec::new());
    let primary = format!("127.0.0.1:{}", a.base_port);
    let spawn = |name: &str, port: u16, extra: &[String]| -> Result<Child> {
        let dir = a.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        Command::new(&exe)
            .arg("serve")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            // dev-cluster prints the addresses itself; the nodes log to stderr.
            .stdout(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))
    };
    nodes.0.push(spawn("primary", a.base_port, &[])?);
    println!(
        "primary    {primary}  (data {})",
        a.dir.join("primary").display()
    );
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
        nodes.0.push(spawn(&name, port, &extra)?);
        println!(
            "{name:<10} 127.0.0.1:{port}  (data {})",
            a.dir.join(&name).display()
        );
    }
    println!(
        "try: spool logs create demo && spool append demo --ack semi-sync:1 hello && spool status"
    );
    println!("Ctrl-C stops them all");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut watch = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = watch.tick() => {
                    for c in &mut nodes.0 {
                        if let Some(status) = c.try_wait()? {
                            anyhow::bail!("a node exited ({status}); stopping the others");
                        }
                    }
                }
            }
        }
    })
}

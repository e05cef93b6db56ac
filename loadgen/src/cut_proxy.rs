//! `spool-loadgen cut-proxy`: a TCP forwarder the failover bench can cut, as the tests'
//! proxy does (`tests/common/proxy.rs`), but outside Rust tests. SIGUSR1 cuts it: every
//! connection through it is closed and new ones are refused. SIGUSR2 restores it.
//! Used between each node and etcd, so that only the primary loses etcd.

use anyhow::{Context, Result};
use clap::Args;
use spool::measure::runtime;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Where to listen (HOST:PORT).
    #[arg(long)]
    pub listen: String,
    /// Where to forward (HOST:PORT).
    #[arg(long)]
    pub target: String,
}

pub fn run_proxy(args: &ProxyArgs) -> Result<()> {
    let rt = runtime(Some(1))?;
    rt.block_on(async {
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let (cut_tx, cut_rx) = watch::channel(false);
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        tokio::spawn(async move {
            loop {
                let cut = tokio::select! {
                    _ = usr1.recv() => true,
                    _ = usr2.recv() => false,
                };
                cut_tx.send_replace(cut);
            }
        });
        eprintln!("cut-proxy: {} -> {}", args.listen, args.target);
        loop {
            let (mut conn, _) = listener.accept().await?;
            if *cut_rx.borrow() {
                drop(conn);
                continue;
            }
            let target = args.target.clone();
            let mut cut = cut_rx.clone();
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(&target).await else {
                    return;
                };
                // As the endpoints' own sockets: without it a small write waits for the
                // peer's delayed ACK (tens of ms per gRPC call) and the proxy, not the
                // system measured, sets the latency.
                let _ = conn.set_nodelay(true);
                let _ = up.set_nodelay(true);
                // Either side closing, or a cut, drops (closes) both.
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut conn, &mut up) => {}
                    _ = cut.wait_for(|c| *c) => {}
                }
            });
        }
    })
}

//! The etcd of `spool dev-cluster --etcd`: the `etcd` binary (Debian's etcd-server) on
//! loopback ports, its data and log under the dev cluster's dir, stopped after the nodes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long etcd may take to answer its health check after starting.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long etcd may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running single-member etcd, stopped on drop.
pub struct DevEtcd {
    child: Child,
    pub client_port: u16,
}

/// `etcd` on the PATH, or a clear error saying how to get it.
fn find_bin() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|b| b.is_file())
        .context(
            "--etcd needs the etcd binary on the PATH: install it (Debian/Ubuntu: \
             apt-get install etcd-server) or run dev-cluster without --etcd",
        )
}

/// A port free now on loopback.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl DevEtcd {
    /// Start etcd with its data in `dir/etcd` and its log in `dir/etcd.log`, clients on
    /// `client_port` (a free port when `None`); returns once it is healthy.
    pub fn start(dir: &Path, client_port: Option<u16>) -> Result<DevEtcd> {
        let bin = find_bin()?;
        let client_port = match client_port {
            Some(p) => p,
            None => free_port()?,
        };
        let peer_port = free_port()?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::fs::File::create(dir.join("etcd.log")).context("creating etcd.log")?;
        let child = Command::new(&bin)
            .args(["--name", "dev", "--data-dir"])
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("dev={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut etcd = DevEtcd { child, client_port };
        etcd.wait_healthy(dir)?;
        Ok(etcd)
    }

    /// `etcd://127.0.0.1:PORT`, as `spool serve --cluster` takes it.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    fn wait_healthy(&mut self, dir: &Path) -> Result<()> {
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        while !self.healthy() {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "etcd exited ({status}) before it was healthy; see {}",
                    dir.join("etcd.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("etcd was not healthy within {HEALTHY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// GET /health answers `"health":"true"`.
    fn healthy(&self) -> bool {
        spool::cluster::etcd::local_http_healthy(self.client_port)
    }
}

impl Drop for DevEtcd {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

//! A real etcd (Debian's etcd-server) on loopback ports for the failover tests.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// One running etcd member, killed on drop; [`Etcd::restart`] brings it back on its
/// ports and data.
pub struct Etcd {
    child: Option<Child>,
    bin: PathBuf,
    args: Vec<String>,
    pub client_port: u16,
    _dir: std::sync::Arc<tempfile::TempDir>,
}

/// The etcd binary; `None` (the test prints why and passes) only outside CI: under
/// `CI=true` a missing etcd fails, since `.ci/run` installs it.
pub fn etcd_bin(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("etcd"))
            .find(|b| b.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "{test}: etcd is not installed (apt-get install etcd-server); CI must have it"
        );
        eprintln!("{test}: skipped, etcd is not installed (apt-get install etcd-server)");
    }
    found
}

impl Etcd {
    pub fn start(bin: &Path) -> Etcd {
        Etcd::start_members(bin, 1).pop().unwrap()
    }

    /// One member serving clients over TLS only, requiring client certificates signed by
    /// `ca` (PEM paths: etcd's certificate and key, the CA).
    pub fn start_tls(bin: &Path, cert: &Path, key: &Path, ca: &Path) -> Etcd {
        let mut m = Etcd::configure(bin, 1).pop().unwrap();
        for a in m.args.iter_mut() {
            if a.starts_with("http://") && a.contains(&m.client_port.to_string()) {
                *a = a.replacen("http://", "https://", 1);
            }
        }
        let files = [
            ("--cert-file", cert),
            ("--key-file", key),
            ("--trusted-ca-file", ca),
        ];
        for (flag, path) in files {
            m.args.extend([flag.to_owned(), path.display().to_string()]);
        }
        m.args.push("--client-cert-auth".into());
        m.spawn();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", m.client_port)).is_err() {
            assert!(Instant::now() < deadline, "etcd (TLS) did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    /// An etcd cluster of `n` members on loopback ports.
    pub fn start_members(bin: &Path, n: usize) -> Vec<Etcd> {
        let mut members = Etcd::configure(bin, n);
        for m in &mut members {
            m.spawn();
        }
        for m in &members {
            m.wait_healthy(Duration::from_secs(30));
        }
        members
    }

    /// `n` members' arguments, not started.
    fn configure(bin: &Path, n: usize) -> Vec<Etcd> {
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        ports
            .iter()
            .enumerate()
            .map(|(i, &(client, peer))| {
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let data = dir.path().join(format!("m{i}"));
                let args = vec![
                    "--name".into(),
                    format!("m{i}"),
                    "--data-dir".into(),
                    data.display().to_string(),
                    "--listen-client-urls".into(),
                    client_url.clone(),
                    "--advertise-client-urls".into(),
                    client_url,
                    "--listen-peer-urls".into(),
                    peer_url.clone(),
                    "--initial-advertise-peer-urls".into(),
                    peer_url,
                    "--initial-cluster".into(),
                    initial.join(","),
                    // A short heartbeat, so leases and elections run at test speed.
                    "--heartbeat-interval".into(),
                    "50".into(),
                    "--election-timeout".into(),
                    "500".into(),
                ];
                Etcd {
                    child: None,
                    bin: bin.to_owned(),
                    args,
                    client_port: client,
                    _dir: dir.clone(),
                }
            })
            .collect()
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }

    /// kill -9, then start again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_healthy(Duration::from_secs(30));
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `etcd://127.0.0.1:PORT`, as `--cluster` takes it.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        spool::cluster::etcd::local_http_healthy(self.client_port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `etcd://` with every member's client port.
pub fn url_of(members: &[Etcd]) -> String {
    let list: Vec<String> = members
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.client_port))
        .collect();
    format!("etcd://{}", list.join(","))
}

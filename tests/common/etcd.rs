//! A real etcd (Debian's etcd-server) on loopback ports for the failover tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A running single-member etcd, killed on drop.
pub struct Etcd {
    child: Child,
    pub client_port: u16,
    _dir: tempfile::TempDir,
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
    pub fn start(bin: &PathBuf) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let (client_port, peer_port) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(bin)
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        let etcd = Etcd {
            child,
            client_port,
            _dir: dir,
        };
        etcd.wait_healthy(Duration::from_secs(30));
        etcd
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
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        let mut body = String::new();
        s.write_all(req.as_bytes()).is_ok()
            && s.read_to_string(&mut body).is_ok()
            && body.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

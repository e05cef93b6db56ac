//! Nodes with `--cluster` on a real etcd (tests/common/etcd.rs), each on its own fixed
//! loopback port, for the tests of clients that follow a failover.

use std::path::PathBuf;

use super::etcd::Etcd;
use super::{free_port, write_config, Server};

/// `n` nodes electing their primary through `etcd`; killed on drop.
pub struct EtcdNodes {
    pub ports: Vec<u16>,
    pub dirs: Vec<PathBuf>,
    /// `None` once killed.
    pub servers: Vec<Option<Server>>,
    _tmp: tempfile::TempDir,
}

impl EtcdNodes {
    /// Start `n` nodes with the TOML `config` (e.g. a short `[cluster] lease_ttl_ms`).
    pub fn start(etcd: &Etcd, n: usize, config: &str) -> EtcdNodes {
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.path().join(format!("n{i}"))).collect();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let servers = (0..n)
            .map(|i| {
                let cfg = write_config(&dirs[i], config);
                let listen = format!("127.0.0.1:{}", ports[i]);
                let flags = ["--config", cfg.as_str(), "--cluster", &etcd.url()];
                Some(Server::start_on(&listen, &dirs[i], &flags))
            })
            .collect();
        EtcdNodes {
            ports,
            dirs,
            servers,
            _tmp: tmp,
        }
    }

    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    /// Every node's address, comma-separated, as `--addr` and `SPOOL_ADDR` take them.
    pub fn addr_list(&self) -> String {
        let all: Vec<String> = (0..self.ports.len()).map(|i| self.addr(i)).collect();
        all.join(",")
    }

    /// The node listening at `addr` (`HOST:PORT` or a URI).
    pub fn index_of(&self, addr: &str) -> usize {
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        self.ports.iter().position(|&p| p == port).unwrap()
    }

    pub fn kill9(&mut self, i: usize) {
        self.servers[i].take().expect("node already killed").kill9();
    }
}

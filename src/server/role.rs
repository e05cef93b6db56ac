//! The node's role (primary or replica of an upstream), its epoch, and fencing.
//!
//! The node epoch is persisted before it is used: a promotion writes the new epoch, then
//! starts it in every log, then takes writes. A replica adopts its upstream's epoch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use parking_lot::RwLock;
use tonic::metadata::MetadataValue;
use tonic::Status;

const EPOCH_FILE: &str = "node-epoch";

/// Metadata key carrying the primary's address on a refused write.
pub const PRIMARY_METADATA: &str = "spool-primary";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica { upstream: String },
}

#[derive(Debug)]
pub struct RoleState {
    role: RwLock<Role>,
    epoch: AtomicU64,
    epoch_path: PathBuf,
    /// Where writes go, as told by the upstream (the root of the tree).
    primary_addr: RwLock<Option<String>>,
    fenced: AtomicBool,
    /// This node's own gRPC address, once bound.
    pub listen_addr: RwLock<String>,
}

fn read_epoch(path: &Path) -> Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .lines()
            .find_map(|l| l.strip_prefix("epoch="))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("unreadable node epoch file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl RoleState {
    pub fn open(data_dir: &Path, role: Role) -> Result<RoleState> {
        let epoch_path = data_dir.join(EPOCH_FILE);
        let epoch = read_epoch(&epoch_path)?;
        let state = RoleState {
            role: RwLock::new(role.clone()),
            epoch: AtomicU64::new(epoch),
            epoch_path,
            primary_addr: RwLock::new(None),
            fenced: AtomicBool::new(false),
            listen_addr: RwLock::new(String::new()),
        };
        // A primary writes in an epoch of at least 1, so that epoch 0 always means "none".
        if role == Role::Primary && epoch == 0 {
            state.set_epoch(1)?;
        }
        Ok(state)
    }

    pub fn role(&self) -> Role {
        self.role.read().clone()
    }

    pub fn is_primary(&self) -> bool {
        *self.role.read() == Role::Primary
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Persist, then adopt, a higher epoch.
    pub fn set_epoch(&self, epoch: u64) -> Result<()> {
        let current = self.epoch();
        if epoch < current {
            bail!("epoch {epoch} is lower than this node's epoch {current}");
        }
        if epoch > current {
            spool_storage::crashsafe::replace_file(
                &self.epoch_path,
                format!("spool-node v1\nepoch={epoch}\n").as_bytes(),
            )?;
            self.epoch.store(epoch, Ordering::Release);
        }
        Ok(())
    }

    pub fn set_primary_addr(&self, addr: Option<String>) {
        *self.primary_addr.write() = addr;
    }

    pub fn primary_addr(&self) -> Option<String> {
        match &*self.role.read() {
            Role::Primary => Some(self.listen_addr.read().clone()),
            Role::Replica { .. } => self.primary_addr.read().clone(),
        }
    }

    /// Become primary (promotion): the caller has stopped following.
    pub fn become_primary(&self) {
        *self.role.write() = Role::Primary;
        self.fenced.store(false, Ordering::Release);
    }

    pub fn fence(&self, by_epoch: u64) {
        if !self.fenced.swap(true, Ordering::AcqRel) {
            tracing::error!(
                by_epoch,
                "a node at a higher epoch exists: this node is fenced and refuses writes; \
                 restart it with --replica-of the new primary"
            );
        }
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// FAILED_PRECONDITION unless this node may take writes; names the primary.
    pub fn check_writable(&self) -> Result<(), Status> {
        if self.is_fenced() {
            return Err(Status::failed_precondition(
                "this node is fenced: a node with a higher epoch was promoted; \
                 write to the new primary",
            ));
        }
        match &*self.role.read() {
            Role::Primary => Ok(()),
            Role::Replica { upstream } => {
                let primary = self.primary_addr.read().clone();
                let target = primary.clone().unwrap_or_else(|| upstream.clone());
                let mut s = Status::failed_precondition(format!(
                    "this node is a replica; send writes to the primary at {target}"
                ));
                if let Ok(v) = MetadataValue::try_from(target.as_str()) {
                    s.metadata_mut().insert(PRIMARY_METADATA, v);
                }
                Err(s)
            }
        }
    }
}

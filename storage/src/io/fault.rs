//! A fault-injecting backend over [`StdBackend`]: EIO, ENOSPC or a torn write (only a
//! prefix reaches the file, then EIO) at chosen points, or a failure to open a file for
//! writing (the last step of placing a new segment, after its rename). Used by the
//! conformance suite and the fault tests; selectable only through the library API, never
//! from config.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::std_backend::{StdBackend, StdFile};
use super::{BufResult, IoBackend, IoFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Write,
    Sync,
    /// [`IoBackend::wrap`]: a segment opened for writing (at open, and for each new one).
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Eio,
    Enospc,
    /// Write only the first `keep` bytes, then fail with EIO (a crash mid-write).
    Torn {
        keep: usize,
    },
}

#[derive(Debug, Clone)]
struct Rule {
    op: FaultOp,
    /// Fire when the op counter reaches this value; `None` fires on every op.
    at: Option<u64>,
    kind: FaultKind,
}

#[derive(Debug, Default)]
struct State {
    writes: u64,
    syncs: u64,
    opens: u64,
    rules: Vec<Rule>,
}

/// Shared handle to arm faults while a storage instance runs.
#[derive(Debug, Clone, Default)]
pub struct FaultInjector {
    state: Arc<Mutex<State>>,
}

impl FaultInjector {
    /// Fail the `n`-th next operation of kind `op` (1 = the very next one).
    pub fn fail_nth(&self, op: FaultOp, n: u64, kind: FaultKind) {
        assert!(n >= 1);
        let mut s = self.state.lock().expect("fault state");
        let base = match op {
            FaultOp::Write => s.writes,
            FaultOp::Sync => s.syncs,
            FaultOp::Open => s.opens,
        };
        s.rules.push(Rule {
            op,
            at: Some(base + n),
            kind,
        });
    }

    /// Fail every operation of kind `op` until [`FaultInjector::clear`].
    pub fn fail_all(&self, op: FaultOp, kind: FaultKind) {
        let mut s = self.state.lock().expect("fault state");
        s.rules.push(Rule { op, at: None, kind });
    }

    pub fn clear(&self) {
        self.state.lock().expect("fault state").rules.clear();
    }

    /// (writes, syncs) seen so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state.lock().expect("fault state");
        (s.writes, s.syncs)
    }

    /// Files opened for writing so far.
    pub fn opens(&self) -> u64 {
        self.state.lock().expect("fault state").opens
    }

    fn next(&self, op: FaultOp) -> Option<FaultKind> {
        let mut s = self.state.lock().expect("fault state");
        let n = match op {
            FaultOp::Write => {
                s.writes += 1;
                s.writes
            }
            FaultOp::Sync => {
                s.syncs += 1;
                s.syncs
            }
            FaultOp::Open => {
                s.opens += 1;
                s.opens
            }
        };
        let i = s
            .rules
            .iter()
            .position(|r| r.op == op && r.at.is_none_or(|at| at == n))?;
        let kind = s.rules[i].kind;
        if s.rules[i].at.is_some() {
            s.rules.remove(i);
        }
        Some(kind)
    }
}

fn error(kind: FaultKind) -> io::Error {
    match kind {
        FaultKind::Enospc => io::Error::from_raw_os_error(libc::ENOSPC),
        FaultKind::Eio | FaultKind::Torn { .. } => io::Error::from_raw_os_error(libc::EIO),
    }
}

#[derive(Debug, Clone, Default)]
pub struct FaultBackend {
    pub injector: FaultInjector,
}

#[derive(Debug)]
pub struct FaultFile {
    inner: StdFile,
    injector: FaultInjector,
}

impl IoBackend for FaultBackend {
    type File = FaultFile;

    fn name(&self) -> &'static str {
        "fault"
    }

    fn wrap(&self, file: std::fs::File, path: &Path) -> io::Result<FaultFile> {
        if let Some(kind) = self.injector.next(FaultOp::Open) {
            return Err(error(kind));
        }
        Ok(FaultFile {
            inner: StdBackend.wrap(file, path)?,
            injector: self.injector.clone(),
        })
    }
}

impl IoFile for FaultFile {
    fn std_file(&self) -> &std::fs::File {
        self.inner.std_file()
    }

    async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> BufResult<()> {
        match self.injector.next(FaultOp::Write) {
            None => self.inner.write_all_at(buf, pos).await,
            Some(FaultKind::Torn { keep }) => {
                let keep = keep.min(buf.len());
                let prefix = buf[..keep].to_vec();
                let _ = self.inner.write_all_at(prefix, pos).await;
                (Err(error(FaultKind::Eio)), buf)
            }
            Some(kind) => (Err(error(kind)), buf),
        }
    }

    async fn sync_data(&self) -> io::Result<()> {
        match self.injector.next(FaultOp::Sync) {
            None => self.inner.sync_data().await,
            Some(kind) => Err(error(kind)),
        }
    }
}

//! A fault-injecting backend over [`StdBackend`], for the conformance suite and the fault
//! and power-loss tests; selectable only through the library API, never from config. It
//! can:
//! - fail chosen operations: EIO, ENOSPC or a torn write (only a prefix reaches the file,
//!   then EIO), the opening of a file for writing (the last step of placing a new
//!   segment, after its rename), or any metadata operation ([`MetaIo`]: a rename, a
//!   removal, a directory or small-file sync, a small file's write, a spare's zeroing);
//! - hold chosen metadata operations at a pause until resumed (a disk that is slow for
//!   them), so that a test can see what goes on while they wait;
//! - model a power loss. With [`FaultInjector::track_unsynced`] it keeps, for every write
//!   through it, what the write overwrote, until a sync of that file succeeds; then
//!   [`FaultInjector::power_loss_copy`] copies a data directory as a disk could hold it if
//!   the power failed now, without stopping the storage that writes it, and
//!   [`FaultInjector::crash_copy`] as a process crash would leave it (the page cache
//!   survives), handing what is still unsynced to another injector so that a storage
//!   opened on the copy can lose it to a later power loss. The model, what it keeps and
//!   what it reverts, is in [`power_loss`].

pub mod power_loss;

use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::std_backend::{StdBackend, StdFile};
use super::{BufResult, IoBackend, IoFile, MetaIo};
use power_loss::{FileId, Unsynced, Writeback};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// A write of segment data.
    Write,
    /// An fdatasync of segment data (also recovery's [`MetaIo::sync_at_open`]).
    Sync,
    /// [`IoBackend::wrap`]: a segment opened for writing (at open, and for each new one).
    Open,
    /// [`MetaIo::rename`].
    Rename,
    /// [`MetaIo::remove_file`].
    Remove,
    /// [`MetaIo::sync_dir`].
    SyncDir,
    /// [`MetaIo::sync_file`]: metadata, an index, a spare or a staged segment.
    SyncFile,
    /// [`MetaIo::write_file`]: a small file (torn: only a prefix is written).
    WriteFile,
    /// [`MetaIo::zero_fill`] or [`MetaIo::allocate`]: a segment file prepared.
    Prepare,
}

impl FaultOp {
    const COUNT: usize = 9;

    fn index(self) -> usize {
        self as usize
    }
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
    /// Operations seen so far, by [`FaultOp::index`].
    seen: [u64; FaultOp::COUNT],
    /// Faults injected so far.
    fired: u64,
    rules: Vec<Rule>,
    /// Writes no successful sync of their file has covered yet, oldest first; `None` while
    /// not tracking (see [`FaultInjector::track_unsynced`]).
    unsynced: Option<Vec<Unsynced>>,
    /// Number of the last tracked write.
    unsynced_seq: u64,
    /// Operations held until [`FaultInjector::resume`]: of this kind, on a path holding
    /// this string.
    pauses: Vec<(FaultOp, String)>,
    /// Operations held at a pause now.
    paused: usize,
}

/// Shared handle to arm faults while a storage instance runs.
#[derive(Debug, Clone, Default)]
pub struct FaultInjector {
    state: Arc<Mutex<State>>,
    /// Wakes operations held at a pause.
    resumed: Arc<Condvar>,
}

impl FaultInjector {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fault state")
    }

    /// Fail the `n`-th next operation of kind `op` (1 = the very next one).
    pub fn fail_nth(&self, op: FaultOp, n: u64, kind: FaultKind) {
        assert!(n >= 1);
        let mut s = self.lock();
        let base = s.seen[op.index()];
        s.rules.push(Rule {
            op,
            at: Some(base + n),
            kind,
        });
    }

    /// Fail every operation of kind `op` until [`FaultInjector::clear`].
    pub fn fail_all(&self, op: FaultOp, kind: FaultKind) {
        let mut s = self.lock();
        s.rules.push(Rule { op, at: None, kind });
    }

    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// Hold every operation of kind `op` on a path that contains `path_contains` (for a
    /// rename, its destination; `""` matches every one) until [`FaultInjector::resume`].
    pub fn pause(&self, op: FaultOp, path_contains: &str) {
        self.lock().pauses.push((op, path_contains.to_owned()));
    }

    /// Let every held operation go on, and hold no more.
    pub fn resume(&self) {
        self.lock().pauses.clear();
        self.resumed.notify_all();
    }

    /// Operations held at a pause now.
    pub fn paused(&self) -> usize {
        self.lock().paused
    }

    /// Wait while a pause holds `op` on `path`.
    fn wait_if_paused(&self, op: FaultOp, path: &Path) {
        let held = |s: &State| {
            let path = path.to_string_lossy();
            s.pauses
                .iter()
                .any(|(o, part)| *o == op && path.contains(part.as_str()))
        };
        let mut s = self.lock();
        if !held(&s) {
            return;
        }
        s.paused += 1;
        while held(&s) {
            s = self.resumed.wait(s).expect("fault state");
        }
        s.paused -= 1;
    }

    /// Faults injected so far.
    pub fn fired(&self) -> u64 {
        self.lock().fired
    }

    /// (writes, syncs) seen so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (
            s.seen[FaultOp::Write.index()],
            s.seen[FaultOp::Sync.index()],
        )
    }

    /// Files opened for writing so far.
    pub fn opens(&self) -> u64 {
        self.seen(FaultOp::Open)
    }

    /// Operations of kind `op` seen so far.
    pub fn seen(&self, op: FaultOp) -> u64 {
        self.lock().seen[op.index()]
    }

    /// Keep what every write from now on overwrites, until a sync of its file: the
    /// power-loss model ([`power_loss`]). Call it before the storage opens: writes made
    /// before are taken as on disk.
    pub fn track_unsynced(&self) {
        self.lock().unsynced.get_or_insert_with(Vec::new);
    }

    /// Writes through this backend not yet covered by a sync of their file.
    pub fn unsynced_writes(&self) -> usize {
        self.lock().unsynced.as_ref().map_or(0, Vec::len)
    }

    /// Copy the directory `src` (a data directory, or any directory the tracked files are
    /// in) to `dst` as a disk could hold it after a power loss at this moment: every 4 KiB
    /// page a tracked write touched since its file's last sync holds one of its versions
    /// since that sync, as `writeback` chooses; everything else is copied as it is now.
    /// Writes through the backend wait while it copies; the storage goes on after it.
    pub fn power_loss_copy(
        &self,
        src: &Path,
        dst: &Path,
        writeback: Writeback,
    ) -> io::Result<power_loss::Report> {
        let s = self.lock();
        let unsynced = s.unsynced.as_ref().ok_or_else(not_tracking)?;
        power_loss::copy_tree(src, dst)?;
        power_loss::revert(unsynced, src, dst, writeback)
    }

    /// Copy `src` to `dst` as a process crash at this moment would leave it: everything
    /// as it is now, since the page cache survives. The writes tracked here that no sync
    /// covered are still not on the disk, so `into` takes them over, as writes to the
    /// copy's files (and starts tracking): a storage opened on `dst` over a backend with
    /// `into` can then lose them to a power loss, until it syncs those files itself.
    /// Returns how many were handed over.
    pub fn crash_copy(&self, src: &Path, dst: &Path, into: &FaultInjector) -> io::Result<usize> {
        assert!(
            !Arc::ptr_eq(&self.state, &into.state),
            "a crash copy hands its unsynced writes to another injector"
        );
        let moved = {
            let s = self.lock();
            let unsynced = s.unsynced.as_ref().ok_or_else(not_tracking)?;
            power_loss::copy_tree(src, dst)?;
            power_loss::rebase(unsynced, src, dst)
        };
        let n = moved.len();
        let mut s = into.lock();
        for mut w in moved {
            s.unsynced_seq += 1;
            w.seq = s.unsynced_seq;
            s.unsynced.get_or_insert_with(Vec::new).push(w);
        }
        Ok(n)
    }

    fn next(&self, op: FaultOp) -> Option<FaultKind> {
        let mut s = self.lock();
        s.seen[op.index()] += 1;
        let n = s.seen[op.index()];
        let i = s
            .rules
            .iter()
            .position(|r| r.op == op && r.at.is_none_or(|at| at == n))?;
        let kind = s.rules[i].kind;
        s.fired += 1;
        if s.rules[i].at.is_some() {
            s.rules.remove(i);
        }
        Some(kind)
    }

    /// Write `bytes` at `pos` of `f`, keeping what they overwrite when tracking. Under the
    /// lock, so that a copy sees each write whole or not at all.
    fn write(&self, f: &FaultFile, bytes: &[u8], pos: u64) -> io::Result<()> {
        let mut s = self.lock();
        let State {
            unsynced,
            unsynced_seq,
            ..
        } = &mut *s;
        let file = f.inner.file();
        if let Some(unsynced) = unsynced {
            let mut before = vec![0u8; bytes.len()];
            power_loss::read_up_to(file, &mut before, pos)?;
            *unsynced_seq += 1;
            unsynced.push(Unsynced {
                seq: *unsynced_seq,
                path: f.path.clone(),
                id: f.id,
                pos,
                before,
            });
        }
        file.write_all_at(bytes, pos)
    }

    /// Number of the last tracked write (a sync starting now covers it and those before).
    fn last_write(&self) -> u64 {
        self.lock().unsynced_seq
    }

    /// A sync of file `id` that started after write `upto` succeeded: the writes to the
    /// file up to it are on the disk.
    fn synced(&self, id: FileId, upto: u64) {
        if let Some(unsynced) = self.lock().unsynced.as_mut() {
            unsynced.retain(|w| w.id != id || w.seq > upto);
        }
    }
}

fn not_tracking() -> io::Error {
    io::Error::other("the power-loss model needs FaultInjector::track_unsynced before the writes")
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
    /// The name it was opened by, and the file itself (device, inode): a sync covers the
    /// file whatever its name, a copy finds it by name if it still has that one.
    path: PathBuf,
    id: FileId,
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
        let meta = file.metadata()?;
        Ok(FaultFile {
            inner: StdBackend.wrap(file, path)?,
            injector: self.injector.clone(),
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
        })
    }
}

impl FaultBackend {
    /// Wait at a pause, then fail this operation (on `path`) if a rule says so.
    fn check(&self, op: FaultOp, path: &Path) -> io::Result<()> {
        self.injector.wait_if_paused(op, path);
        match self.injector.next(op) {
            Some(kind) => Err(error(kind)),
            None => Ok(()),
        }
    }
}

/// Metadata operations fail where a rule says so, else they are std's. The power-loss
/// model keeps what they did (see [`power_loss`], "What it keeps as written").
impl MetaIo for FaultBackend {
    fn sync_at_open(&self, file: &std::fs::File) -> io::Result<()> {
        self.check(FaultOp::Sync, Path::new(""))?;
        let meta = file.metadata()?;
        let upto = self.injector.last_write();
        file.sync_data()?;
        self.injector.synced((meta.dev(), meta.ino()), upto);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(FaultOp::Rename, to)?;
        StdBackend.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check(FaultOp::Remove, path)?;
        StdBackend.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(FaultOp::SyncDir, dir)?;
        StdBackend.sync_dir(dir)
    }

    fn sync_file(&self, file: &std::fs::File) -> io::Result<()> {
        self.check(FaultOp::SyncFile, Path::new(""))?;
        StdBackend.sync_file(file)
    }

    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<std::fs::File> {
        self.injector.wait_if_paused(FaultOp::WriteFile, path);
        match self.injector.next(FaultOp::WriteFile) {
            None => StdBackend.write_file(path, contents),
            Some(FaultKind::Torn { keep }) => {
                StdBackend.write_file(path, &contents[..keep.min(contents.len())])?;
                Err(error(FaultKind::Eio))
            }
            Some(kind) => Err(error(kind)),
        }
    }

    fn zero_fill(&self, path: &Path, size: u64) -> io::Result<()> {
        self.check(FaultOp::Prepare, path)?;
        StdBackend.zero_fill(path, size)
    }

    fn allocate(&self, path: &Path, size: u64) -> io::Result<()> {
        self.check(FaultOp::Prepare, path)?;
        StdBackend.allocate(path, size)
    }
}

impl IoFile for FaultFile {
    fn std_file(&self) -> &std::fs::File {
        self.inner.std_file()
    }

    async fn write_at(
        &self,
        buf: Vec<u8>,
        skip: usize,
        pos: u64,
        sync: bool,
        _replicated: bool,
    ) -> BufResult<()> {
        let bytes = &buf[skip..];
        let fault = self.injector.next(FaultOp::Write);
        let len = match fault {
            None => bytes.len(),
            Some(FaultKind::Torn { keep }) => keep.min(bytes.len()),
            Some(kind) => return (Err(error(kind)), buf),
        };
        let res = self.injector.write(self, &bytes[..len], pos);
        match (fault, res) {
            (None, Ok(())) if sync => (self.sync_data().await, buf),
            (None, res) => (res, buf),
            (Some(_), _) => (Err(error(FaultKind::Eio)), buf),
        }
    }

    async fn sync_data(&self) -> io::Result<()> {
        if let Some(kind) = self.injector.next(FaultOp::Sync) {
            return Err(error(kind));
        }
        let upto = self.injector.last_write();
        self.inner.sync_data().await?;
        self.injector.synced(self.id, upto);
        Ok(())
    }
}

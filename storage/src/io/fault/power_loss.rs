//! The fault backend's power-loss model: what a disk may hold after the power fails.
//!
//! # What it reverts
//!
//! Writes through the backend, until a sync of their file (`sync_data`, the sync of
//! `write_all_at_sync`, or recovery's `sync_at_open`) succeeds. Such a write only reached
//! the page cache; the kernel may have written back any subset of the dirty pages, in any
//! order, each as it was at that moment. So each 4 KiB page such writes touched holds, after the power loss, one of its
//! versions since the file's last sync: as synced, or as left by any one of the writes,
//! chosen per page independently of the others ([`Writeback`]). A sync that returned
//! success is taken at its word: what it covered is on the disk.
//!
//! # What it keeps as written
//!
//! Everything the backend does not see, which a disk could also have lost. Keeping it is
//! one state a disk could hold (those pages were written back), never a state it could
//! not; the model only leaves out the other states, and each is safe for a reason of its
//! own, which is what makes leaving it out legitimate:
//! - the durable mark's idle rewrite (`LogWriter::refresh_mark`, a plain pwrite): written
//!   only when everything written to the segment is synced, and claiming only that, so it
//!   is true on the disk or not; without it the mark written with the last group claims
//!   less, which can only turn damage into a torn tail, never the reverse. Its page's
//!   other bytes are the synced frames, unchanged.
//! - `.idx` writes (not synced by design): entries are written once their frames are
//!   durable, and recovery trusts an index only after checking that its last entry points
//!   at a valid frame of the offset it names. Fewer entries only make recovery read more.
//! - the metadata operations ([`crate::io::MetaIo`]): files created, written, renamed or
//!   removed, and directory syncs. The backend sees each (it counts them and can fail
//!   them), and the model keeps what they did: a rename is taken as durable at once, not
//!   only once its directory is synced. Every one the storage relies on is followed by a
//!   directory sync before anything depends on it (metadata files are replaced atomically:
//!   temp file synced, renamed, directory synced; spares are zeroed and synced before they
//!   are renamed into use; a new segment's rename is synced before its first write), so
//!   the states left out are the ones between a rename and that sync.
//! - what recovery writes at open: a torn tail it cuts is zeroed and synced (through the
//!   backend's `sync_at_open`, which the model sees) before the log is used; the index it
//!   rewrites names only frames that sync made durable.
//!
//! Not modelled: a page torn inside (sectors of one page from different versions), a
//! power loss between a rename (or removal) and the directory sync that makes it durable
//! (kept as done, above), a disk that acknowledges a flush it did not do.
//!
//! The copy is taken while the storage runs: writes through the backend wait for it, so
//! each is in it whole or not at all; files that vanish while the directory is copied (a
//! spare renamed into place, a temp file) are left out, as if the copy had been taken just
//! before they existed.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Page size of the model: the unit the kernel writes back.
pub const PAGE_BYTES: u64 = 4096;

/// A file as the kernel knows it: (device, inode).
pub(super) type FileId = (u64, u64);

/// A tracked write not yet covered by a sync of its file.
#[derive(Debug)]
pub(super) struct Unsynced {
    /// Order among the injector's tracked writes.
    pub seq: u64,
    pub path: PathBuf,
    pub id: FileId,
    pub pos: u64,
    /// What the written range held before (zeros past the file's end).
    pub before: Vec<u8>,
}

/// Which versions the pages of unsynced writes hold after the power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writeback {
    /// The kernel wrote none of them back: every page is as last synced.
    Nothing,
    /// It wrote all of them back, as they are now: the disk holds the page cache.
    Everything,
    /// Each page, independently, as last synced or as left by one of the writes since:
    /// drawn from this seed (a share of pages, itself drawn, holds its newest version).
    Random(u64),
}

/// What a power-loss copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Tracked writes no sync had covered.
    pub unsynced_writes: usize,
    /// Pages they touched.
    pub pages: usize,
    /// Pages given an older version than the page cache's.
    pub pages_reverted: usize,
    /// Unsynced writes to files no longer under their name (removed or renamed since):
    /// the copy has what their name holds now.
    pub writes_to_gone_files: usize,
}

/// Read into `buf` from `pos` up to the end of the file; what lies past it stays as it is.
pub(super) fn read_up_to(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Copy the directory tree `src` into `dst` (created), reading every file through the page
/// cache. Entries that vanish while it runs are left out.
pub(super) fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let entries = match fs::read_dir(src) {
        Ok(rd) => rd,
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = match entry.file_type() {
            Ok(k) => k,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else if kind.is_file() {
            match fs::read(&from) {
                Ok(bytes) => fs::write(&to, bytes)?,
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The file id now under `path`, if any.
fn id_of(path: &Path) -> Option<FileId> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The tracked writes to files under `src` that still have the name they were written
/// by, grouped per file in write order, with the copy's path of each file.
fn per_file<'a>(
    unsynced: &'a [Unsynced],
    src: &Path,
    dst: &Path,
    report: &mut Report,
) -> Vec<(PathBuf, Vec<&'a Unsynced>)> {
    let mut files: BTreeMap<&Path, Vec<&Unsynced>> = BTreeMap::new();
    for w in unsynced.iter().filter(|w| w.path.starts_with(src)) {
        files.entry(&w.path).or_default().push(w);
    }
    let mut out = Vec::new();
    for (path, writes) in files {
        let now = id_of(path);
        let (kept, gone): (Vec<&Unsynced>, Vec<&Unsynced>) =
            writes.into_iter().partition(|w| Some(w.id) == now);
        report.writes_to_gone_files += gone.len();
        if !kept.is_empty() {
            let rel = path.strip_prefix(src).expect("filtered above");
            out.push((dst.join(rel), kept));
        }
    }
    out
}

/// In the copy `dst` of `src`, give every page of the unsynced writes the version
/// `writeback` chooses.
pub(super) fn revert(
    unsynced: &[Unsynced],
    src: &Path,
    dst: &Path,
    writeback: Writeback,
) -> io::Result<Report> {
    let mut report = Report {
        unsynced_writes: unsynced.len(),
        ..Report::default()
    };
    let mut rng = SplitMix(match writeback {
        Writeback::Random(seed) => seed,
        _ => 0,
    });
    let newest_share = rng.unit();
    for (path, writes) in per_file(unsynced, src, dst, &mut report) {
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            // Left out of the copy: it vanished while the directory was copied.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // Per page, the writes that touched it, oldest first.
        let mut pages: BTreeMap<u64, Vec<&Unsynced>> = BTreeMap::new();
        for w in &writes {
            let end = w.pos + w.before.len() as u64;
            for page in w.pos / PAGE_BYTES..end.div_ceil(PAGE_BYTES) {
                pages.entry(page).or_default().push(w);
            }
        }
        for (page, ws) in pages {
            report.pages += 1;
            // Version k: the page as synced, then the first k writes.
            let n = ws.len() as u64;
            let k = match writeback {
                Writeback::Nothing => 0,
                Writeback::Everything => n,
                Writeback::Random(_) if rng.unit() < newest_share => n,
                Writeback::Random(_) => rng.below(n),
            };
            if k == n {
                continue;
            }
            report.pages_reverted += 1;
            let start = page * PAGE_BYTES;
            let mut bytes = vec![0u8; PAGE_BYTES as usize];
            let len = read_up_to(&file, &mut bytes, start)?;
            for w in ws[k as usize..].iter().rev() {
                let from = w.pos.max(start);
                let to = (w.pos + w.before.len() as u64).min(start + PAGE_BYTES);
                bytes[(from - start) as usize..(to - start) as usize]
                    .copy_from_slice(&w.before[(from - w.pos) as usize..(to - w.pos) as usize]);
            }
            file.write_all_at(&bytes[..len], start)?;
        }
    }
    Ok(report)
}

/// The tracked writes to files under `src` that still have the name they were written
/// by, in write order, as writes to their copies under `dst` (for another injector:
/// their `seq` is its to give).
pub(super) fn rebase(unsynced: &[Unsynced], src: &Path, dst: &Path) -> Vec<Unsynced> {
    let mut src_ids: HashMap<&Path, Option<FileId>> = HashMap::new();
    let mut dst_ids: HashMap<PathBuf, Option<FileId>> = HashMap::new();
    let mut out = Vec::new();
    for w in unsynced {
        let Ok(rel) = w.path.strip_prefix(src) else {
            continue;
        };
        if *src_ids.entry(&w.path).or_insert_with(|| id_of(&w.path)) != Some(w.id) {
            continue;
        }
        let to = dst.join(rel);
        let Some(id) = *dst_ids.entry(to.clone()).or_insert_with(|| id_of(&to)) else {
            continue;
        };
        out.push(Unsynced {
            seq: 0,
            path: to,
            id,
            pos: w.pos,
            before: w.before.clone(),
        });
    }
    out
}

/// A small seeded generator (splitmix64): the model needs no more, and a seed must give
/// the same choices wherever it runs.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next() % n
    }

    /// In `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::fault::{FaultBackend, FaultInjector};
    use crate::io::{IoBackend, IoFile};

    const PAGE: usize = PAGE_BYTES as usize;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A three-page file in `dir/d/f`: page 0 written and synced, then unsynced writes
    /// over pages 0 and 1 (B) and page 1 again (C). Returns the injector and each page's
    /// versions, oldest first.
    fn scene(dir: &Path) -> (FaultInjector, Vec<Vec<Vec<u8>>>) {
        let backend = FaultBackend::default();
        backend.injector.track_unsynced();
        let path = dir.join("d").join("f");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, vec![0u8; 3 * PAGE]).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let f = backend.wrap(file, &path).unwrap();
        block_on(async {
            f.write_all_at_sync(vec![b'a'; PAGE], 0).await.0.unwrap();
            f.write_all_at(vec![b'b'; PAGE], 2048).await.0.unwrap();
            f.write_all_at(vec![b'c'; 100], 4096).await.0.unwrap();
        });
        assert_eq!(backend.injector.unsynced_writes(), 2);
        let page0 = |b: usize| [vec![b'a'; PAGE - b], vec![b'b'; b]].concat();
        let page1 =
            |b: usize, c: usize| [vec![b'c'; c], vec![b'b'; b - c], vec![0; PAGE - b]].concat();
        let versions = vec![
            vec![page0(0), page0(2048)],
            vec![page1(0, 0), page1(2048, 0), page1(2048, 100)],
            vec![vec![0; PAGE]],
        ];
        (backend.injector, versions)
    }

    fn pages(path: &Path) -> Vec<Vec<u8>> {
        fs::read(path)
            .unwrap()
            .chunks(PAGE)
            .map(<[u8]>::to_vec)
            .collect()
    }

    #[test]
    fn nothing_and_everything_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let (inj, versions) = scene(dir.path());
        let (src, out) = (dir.path().join("d"), dir.path().join("out"));
        let r = inj
            .power_loss_copy(&src, &out.join("0"), Writeback::Nothing)
            .unwrap();
        assert_eq!((r.unsynced_writes, r.pages, r.pages_reverted), (2, 2, 2));
        let oldest: Vec<_> = versions.iter().map(|v| v[0].clone()).collect();
        assert_eq!(pages(&out.join("0/f")), oldest);
        let r = inj
            .power_loss_copy(&src, &out.join("1"), Writeback::Everything)
            .unwrap();
        assert_eq!(r.pages_reverted, 0);
        let newest: Vec<_> = versions.iter().map(|v| v.last().unwrap().clone()).collect();
        assert_eq!(pages(&out.join("1/f")), newest);
        assert_eq!(fs::read(src.join("f")).unwrap(), newest.concat());
    }

    #[test]
    fn every_page_holds_one_of_its_versions_independently() {
        let dir = tempfile::tempdir().unwrap();
        let (inj, versions) = scene(dir.path());
        let src = dir.path().join("d");
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let out = dir.path().join(format!("out{seed}"));
            inj.power_loss_copy(&src, &out, Writeback::Random(seed))
                .unwrap();
            let got = pages(&out.join("f"));
            let which: Vec<usize> = got
                .iter()
                .zip(&versions)
                .map(|(p, vs)| {
                    vs.iter()
                        .position(|v| v == p)
                        .expect("a version of the page")
                })
                .collect();
            seen.insert(which);
        }
        // Both versions of page 0 with each of the three of page 1.
        assert_eq!(seen.len(), 6, "{seen:?}");
    }

    #[test]
    fn a_sync_puts_the_writes_on_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (inj, versions) = scene(dir.path());
        let path = dir.path().join("d/f");
        // Another handle on the same file: a sync covers the file, not the handle.
        let f = FaultBackend {
            injector: inj.clone(),
        }
        .wrap(OpenOptions::new().write(true).open(&path).unwrap(), &path)
        .unwrap();
        block_on(f.sync_data()).unwrap();
        assert_eq!(inj.unsynced_writes(), 0);
        let out = dir.path().join("out");
        inj.power_loss_copy(&dir.path().join("d"), &out, Writeback::Nothing)
            .unwrap();
        let newest: Vec<_> = versions.iter().map(|v| v.last().unwrap().clone()).collect();
        assert_eq!(pages(&out.join("f")), newest);
    }

    #[test]
    fn a_crash_copy_keeps_everything_and_hands_over_what_is_unsynced() {
        let dir = tempfile::tempdir().unwrap();
        let (inj, versions) = scene(dir.path());
        let after = FaultInjector::default();
        let crashed = dir.path().join("crashed");
        assert_eq!(
            inj.crash_copy(&dir.path().join("d"), &crashed, &after)
                .unwrap(),
            2
        );
        let newest: Vec<_> = versions.iter().map(|v| v.last().unwrap().clone()).collect();
        assert_eq!(pages(&crashed.join("f")), newest);
        assert_eq!(after.unsynced_writes(), 2);
        let out = dir.path().join("out");
        after
            .power_loss_copy(&crashed, &out, Writeback::Nothing)
            .unwrap();
        let oldest: Vec<_> = versions.iter().map(|v| v[0].clone()).collect();
        assert_eq!(pages(&out.join("f")), oldest);
    }
}

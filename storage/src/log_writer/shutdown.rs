//! What a clean shutdown records of a log's segments for the next open (see
//! `sealed_record`), written after the last commit.

use std::fs::File;
use std::sync::Arc;

use super::LogWriter;
use crate::error::{IoContext, Result};
use crate::io::IoFile;
use crate::sealed_record::{self, Sealed};
use crate::segment::SegmentView;

impl<F: IoFile> LogWriter<F> {
    /// Record the log's segments. A log that failed writes gets no record; the active
    /// segment is left out when a write into it failed, or not everything written is
    /// durable.
    pub fn record_at_shutdown(&mut self) {
        if self.is_poisoned() {
            return;
        }
        self.producers.save(&*self.io, self.active.durable_next());
        let sealed: Vec<Arc<SegmentView>> = {
            let segs = self.shared.segments.read();
            segs.split_last().map_or(Vec::new(), |(_, s)| s.to_vec())
        };
        let clean_tail = !self.tail_unsure && self.active.all_synced();
        if sealed.is_empty() && !clean_tail {
            return;
        }
        let record = sealed
            .iter()
            .map(|s| entry(s))
            .collect::<Result<Vec<Sealed>>>()
            .and_then(|sealed| {
                let active = clean_tail.then(|| entry(self.active.seg())).transpose()?;
                Ok(sealed_record::Record { sealed, active })
            });
        if let Err(e) = record.and_then(|r| sealed_record::write(&*self.io, &self.shared.dir, &r)) {
            tracing::warn!(log = %self.shared.name, error = %e, "recording the segments failed; the next open reads their tails");
        }
    }
}

/// What the record says of segment `s`: its end, and the file's identity.
fn entry(s: &SegmentView) -> Result<Sealed> {
    let (ino, mtime_ns) = File::open(&s.path)
        .and_then(|f| sealed_record::identity(&f))
        .at(&s.path)?;
    Ok(Sealed {
        base: s.base_offset,
        next: s.durable_next(),
        len: s.durable_len(),
        last_ts_us: s.last_ts_us(),
        ino,
        mtime_ns,
    })
}

//! The batch frame: the unit of write on disk and on the replication wire.
//!
//! The same bytes are stored in a segment and sent to replicas, which verify the CRC and
//! append them unchanged. Every frame is a fixed header followed by a payload.
//!
//! # Header (64 bytes, little endian)
//!
//! | off | size | field            | notes                                                  |
//! |-----|------|------------------|--------------------------------------------------------|
//! | 0   | 4    | magic            | [`MAGIC`], `"SPLB"`                                    |
//! | 4   | 2    | version          | [`FormatVersion`]; decode refuses unknown versions     |
//! | 6   | 2    | flags            | bit 0: payload is zstd-compressed ([`FLAG_ZSTD`]);     |
//! |     |      |                  | bit 1: producer extension follows ([`FLAG_PRODUCER`])   |
//! | 8   | 4    | crc32            | crc32fast over every byte of the frame but these four  |
//! | 12  | 4    | frame_len        | header + extension + payload, <= [`FRAME_BYTES_MAX`]   |
//! | 16  | 8    | base_offset      | offset of the first record                             |
//! | 24  | 4    | record_count     | >= 1, bounded by [`RECORDS_PER_BATCH_MAX`]             |
//! | 28  | 4    | raw_payload_len  | payload length before compression (no extension)       |
//! | 32  | 8    | epoch            | leader epoch that wrote the batch                      |
//! | 40  | 8    | first_ts_us      | primary's clock, microseconds since the Unix epoch     |
//! | 48  | 8    | last_ts_us       | >= first_ts_us                                         |
//! | 56  | 8    | reserved         | zero                                                   |
//!
//! # Producer extension (16 bytes, little endian; only with [`FLAG_PRODUCER`])
//!
//! Follows the header, before the payload, and is never compressed. It names the batch of
//! an idempotent append, so that every node holding the frame can answer a retry of it.
//!
//! | off | size | field            | notes                                                  |
//! |-----|------|------------------|--------------------------------------------------------|
//! | 64  | 8    | producer_id      | chosen by the client, never 0                          |
//! | 72  | 8    | sequence         | the producer's request number, +1 per append           |
//!
//! The CRC covers it like every other byte. Frames without the flag are laid out as before,
//! so the format version stays 1; a binary that predates the flag refuses such a frame
//! with [`FormatError::UnknownFlags`] rather than misreading it.
//!
//! # Payload (after decompression)
//!
//! `record_count` records, each a `u32` little-endian length followed by that many bytes.
//! Records may be empty.
//!
//! An all-zero header marks the end of data in a pre-zeroed segment, which is why the magic
//! must never be zero and a valid frame never starts with four zero bytes.

use bytes::Bytes;

use crate::error::FormatError;

/// `"SPLB"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"SPLB");
pub const HEADER_BYTES: usize = 64;
/// Upper bound on a whole frame; a length field above it is corruption, never trusted.
pub const FRAME_BYTES_MAX: usize = 16 << 20;
pub const RECORDS_PER_BATCH_MAX: u32 = 1 << 20;
/// Per-record length prefix.
pub const RECORD_PREFIX_BYTES: usize = 4;
pub const FLAG_ZSTD: u16 = 1;
pub const FLAG_PRODUCER: u16 = 2;
const FLAGS_KNOWN: u16 = FLAG_ZSTD | FLAG_PRODUCER;
/// The producer extension after the header (see the module docs).
pub const PRODUCER_BYTES: usize = 16;
/// Bytes a frame holds besides its records' payload, at most.
pub const FRAME_OVERHEAD_MAX: usize = HEADER_BYTES + PRODUCER_BYTES;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_FLAGS: usize = 6;
const OFF_CRC: usize = 8;
const OFF_LEN: usize = 12;
const OFF_BASE: usize = 16;
const OFF_COUNT: usize = 24;
const OFF_RAW_LEN: usize = 28;
const OFF_EPOCH: usize = 32;
const OFF_FIRST_TS: usize = 40;
const OFF_LAST_TS: usize = 48;
const OFF_PRODUCER_ID: usize = HEADER_BYTES;
const OFF_SEQUENCE: usize = HEADER_BYTES + 8;
/// The CRC covers the whole frame except its own field: bytes `0..OFF_CRC` and
/// `CRC_TAIL..frame_len`.
pub const CRC_TAIL: usize = OFF_CRC + 4;

/// CRC32 of a whole frame, skipping the CRC field itself.
pub fn frame_crc(frame: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[..OFF_CRC]);
    h.update(&frame[CRC_TAIL..]);
    h.finalize()
}

const _: () = assert!(OFF_LAST_TS + 8 + 8 == HEADER_BYTES);
const _: () = assert!(OFF_SEQUENCE + 8 == HEADER_BYTES + PRODUCER_BYTES);
const _: () = assert!(FLAG_ZSTD & FLAG_PRODUCER == 0);
const _: () = assert!(FRAME_OVERHEAD_MAX < FRAME_BYTES_MAX);
const _: () = assert!(MAGIC != 0);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!((RECORDS_PER_BATCH_MAX as usize) * RECORD_PREFIX_BYTES < FRAME_BYTES_MAX);

/// Durable format versions. Decoding an unknown version is an error, never a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FormatVersion {
    V1 = 1,
}

impl FormatVersion {
    pub const CURRENT: FormatVersion = FormatVersion::V1;

    pub fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(FormatVersion::V1),
            _ => None,
        }
    }
}

/// The producer and sequence of an idempotent append's batch (the producer extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProducerSeq {
    pub producer_id: u64,
    pub sequence: u64,
}

impl ProducerSeq {
    pub fn new(producer_id: u64, sequence: u64) -> Self {
        ProducerSeq {
            producer_id,
            sequence,
        }
    }
}

/// The decoded, validated header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub flags: u16,
    pub frame_len: u32,
    pub base_offset: u64,
    pub record_count: u32,
    pub raw_payload_len: u32,
    pub epoch: u64,
    pub first_ts_us: u64,
    pub last_ts_us: u64,
}

impl BatchHeader {
    /// Offset one past the last record of the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }

    pub fn contains(&self, offset: u64) -> bool {
        offset >= self.base_offset && offset < self.next_offset()
    }

    pub fn has_producer(&self) -> bool {
        self.flags & FLAG_PRODUCER != 0
    }

    /// Where the (maybe compressed) payload starts: after the header and the extension.
    pub fn payload_start(&self) -> usize {
        payload_start(self.flags)
    }

    /// The producer extension of `frame`, the frame this header was read from; `None`
    /// without the flag (or where `frame` is too short to hold the extension).
    pub fn producer(&self, frame: &[u8]) -> Option<ProducerSeq> {
        self.has_producer().then(|| read_producer(frame)).flatten()
    }
}

fn payload_start(flags: u16) -> usize {
    if flags & FLAG_PRODUCER != 0 {
        HEADER_BYTES + PRODUCER_BYTES
    } else {
        HEADER_BYTES
    }
}

fn read_producer(frame: &[u8]) -> Option<ProducerSeq> {
    let ext = frame.get(OFF_PRODUCER_ID..HEADER_BYTES + PRODUCER_BYTES)?;
    Some(ProducerSeq {
        producer_id: u64_at(ext, 0),
        sequence: u64_at(ext, 8),
    })
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// True when `bytes` starts with a zeroed header: the clean end of a pre-zeroed segment.
pub fn is_zero_header(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_BYTES && bytes[..HEADER_BYTES].iter().all(|&b| b == 0)
}

/// Decode and bound the header without checking the CRC (the payload may not be there yet).
/// Order: magic, then version, then lengths; nothing here trusts an unbounded field.
pub fn peek_header(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
    if bytes.len() < HEADER_BYTES {
        return Err(FormatError::Truncated {
            needed: HEADER_BYTES,
            available: bytes.len(),
        });
    }
    let magic = u32_at(bytes, OFF_MAGIC);
    if magic != MAGIC {
        return Err(FormatError::BadMagic(magic));
    }
    let version = u16_at(bytes, OFF_VERSION);
    if FormatVersion::from_u16(version).is_none() {
        return Err(FormatError::UnknownVersion(version));
    }
    let flags = u16_at(bytes, OFF_FLAGS);
    if flags & !FLAGS_KNOWN != 0 {
        return Err(FormatError::UnknownFlags(flags));
    }
    let frame_len = u32_at(bytes, OFF_LEN);
    if (frame_len as usize) < payload_start(flags) || frame_len as usize > FRAME_BYTES_MAX {
        return Err(FormatError::BadLength(frame_len));
    }
    let record_count = u32_at(bytes, OFF_COUNT);
    if record_count == 0 || record_count > RECORDS_PER_BATCH_MAX {
        return Err(FormatError::BadRecordCount(record_count));
    }
    let raw_payload_len = u32_at(bytes, OFF_RAW_LEN);
    if raw_payload_len as usize > FRAME_BYTES_MAX
        || (raw_payload_len as usize) < record_count as usize * RECORD_PREFIX_BYTES
    {
        return Err(FormatError::BadLength(raw_payload_len));
    }
    let first_ts_us = u64_at(bytes, OFF_FIRST_TS);
    let last_ts_us = u64_at(bytes, OFF_LAST_TS);
    if last_ts_us < first_ts_us {
        return Err(FormatError::BadTimestamps);
    }
    let base_offset = u64_at(bytes, OFF_BASE);
    if base_offset.checked_add(u64::from(record_count)).is_none() {
        return Err(FormatError::BadRecordCount(record_count));
    }
    Ok(BatchHeader {
        flags,
        frame_len,
        base_offset,
        record_count,
        raw_payload_len,
        epoch: u64_at(bytes, OFF_EPOCH),
        first_ts_us,
        last_ts_us,
    })
}

/// Length of the longest prefix of `bytes` made of whole frames (headers bounded, CRCs
/// not checked): where a stream of frames cut at arbitrary points can be split.
pub fn whole_frames_len(bytes: &[u8]) -> Result<usize, FormatError> {
    let mut pos = 0usize;
    while bytes.len() - pos >= HEADER_BYTES {
        let len = peek_header(&bytes[pos..])?.frame_len as usize;
        if bytes.len() - pos < len {
            break;
        }
        pos += len;
    }
    Ok(pos)
}

/// The CRC a frame at the start of `bytes` carries (not checked), if a header is there.
pub fn stored_crc(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= HEADER_BYTES).then(|| u32_at(bytes, OFF_CRC))
}

/// Validate a whole frame at the start of `bytes`: header bounds, then CRC.
pub fn check_frame(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
    let header = peek_header(bytes)?;
    let len = header.frame_len as usize;
    if bytes.len() < len {
        return Err(FormatError::Truncated {
            needed: len,
            available: bytes.len(),
        });
    }
    let stored = u32_at(bytes, OFF_CRC);
    let actual = frame_crc(&bytes[..len]);
    if stored != actual {
        return Err(FormatError::BadCrc { stored, actual });
    }
    Ok(header)
}

/// Encodes records into a frame. The storage writer stamps the offset, epoch and time and
/// seals the CRC; compression happens before, on the caller's thread.
#[derive(Debug)]
pub struct FrameBuilder {
    buf: Vec<u8>,
    count: u32,
    /// [`FLAG_PRODUCER`] for an idempotent append (the extension is in `buf` before the
    /// payload), else 0; compression adds [`FLAG_ZSTD`] at the end.
    flags: u16,
}

impl Default for FrameBuilder {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl FrameBuilder {
    pub fn with_capacity(payload_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_BYTES + payload_bytes);
        buf.resize(HEADER_BYTES, 0);
        FrameBuilder {
            buf,
            count: 0,
            flags: 0,
        }
    }

    /// A builder for the batch of an idempotent append: the frame carries the producer
    /// extension ([`FLAG_PRODUCER`]).
    pub fn with_producer(payload_bytes: usize, producer: ProducerSeq) -> Self {
        let mut buf = Vec::with_capacity(HEADER_BYTES + PRODUCER_BYTES + payload_bytes);
        buf.resize(HEADER_BYTES, 0);
        buf.extend_from_slice(&producer.producer_id.to_le_bytes());
        buf.extend_from_slice(&producer.sequence.to_le_bytes());
        FrameBuilder {
            buf,
            count: 0,
            flags: FLAG_PRODUCER,
        }
    }

    pub fn push(&mut self, record: &[u8]) {
        let len = u32::try_from(record.len()).expect("record length bounded by caller");
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(record);
        self.count += 1;
    }

    pub fn record_count(&self) -> u32 {
        self.count
    }

    pub fn payload_len(&self) -> usize {
        self.buf.len() - payload_start(self.flags)
    }

    /// Finish the frame, compressing the payload with zstd when `zstd_level` is set and the
    /// payload is at least `compress_min_bytes` and actually shrinks.
    pub fn finish(mut self, zstd_level: Option<i32>, compress_min_bytes: usize) -> Vec<u8> {
        let raw_len = self.payload_len();
        let start = payload_start(self.flags);
        let mut flags = self.flags;
        if let Some(level) = zstd_level {
            if raw_len >= compress_min_bytes && raw_len > 0 {
                if let Ok(compressed) = zstd::bulk::compress(&self.buf[start..], level) {
                    if compressed.len() < raw_len {
                        self.buf.truncate(start);
                        self.buf.extend_from_slice(&compressed);
                        flags |= FLAG_ZSTD;
                    }
                }
            }
        }
        let frame_len = u32::try_from(self.buf.len()).expect("frame bounded by caller");
        let b = &mut self.buf;
        b[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&MAGIC.to_le_bytes());
        b[OFF_VERSION..OFF_VERSION + 2]
            .copy_from_slice(&(FormatVersion::CURRENT as u16).to_le_bytes());
        b[OFF_FLAGS..OFF_FLAGS + 2].copy_from_slice(&flags.to_le_bytes());
        b[OFF_LEN..OFF_LEN + 4].copy_from_slice(&frame_len.to_le_bytes());
        b[OFF_COUNT..OFF_COUNT + 4].copy_from_slice(&self.count.to_le_bytes());
        b[OFF_RAW_LEN..OFF_RAW_LEN + 4].copy_from_slice(&(raw_len as u32).to_le_bytes());
        self.buf
    }
}

/// Stamp position and time into a frame built by [`FrameBuilder`] and seal its CRC.
/// Runs on the storage thread, which alone knows the next offset and the epoch.
pub fn stamp_frame(frame: &mut [u8], base_offset: u64, epoch: u64, ts_us: u64) {
    debug_assert!(frame.len() >= HEADER_BYTES);
    frame[OFF_BASE..OFF_BASE + 8].copy_from_slice(&base_offset.to_le_bytes());
    frame[OFF_EPOCH..OFF_EPOCH + 8].copy_from_slice(&epoch.to_le_bytes());
    frame[OFF_FIRST_TS..OFF_FIRST_TS + 8].copy_from_slice(&ts_us.to_le_bytes());
    frame[OFF_LAST_TS..OFF_LAST_TS + 8].copy_from_slice(&ts_us.to_le_bytes());
    let crc = frame_crc(frame);
    frame[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Record count of an unstamped frame from [`FrameBuilder::finish`].
pub fn frame_record_count(frame: &[u8]) -> u32 {
    u32_at(frame, OFF_COUNT)
}

/// # Durable mark (48 bytes, little endian), written only past the last frame
///
/// Not a frame and never shipped: a node's own proof of how much of its active segment it
/// had synced. Recovery may cut only bytes past that point as a torn tail; a bad frame
/// below it is corruption. A mark claims only what was synced before it was written, so
/// it is true whether or not it reached the disk itself.
///
/// | off | size | field        | notes                                                   |
/// |-----|------|--------------|---------------------------------------------------------|
/// | 0   | 4    | magic        | [`MARK_MAGIC`], `"SPLM"` (never a frame's, never zero)  |
/// | 4   | 2    | version      | 1                                                       |
/// | 6   | 2    | reserved     | zero                                                    |
/// | 8   | 4    | crc32        | over every byte of the mark but these four              |
/// | 12  | 4    | reserved     | zero                                                    |
/// | 16  | 8    | segment_base | base offset of the segment holding the mark             |
/// | 24  | 8    | own_pos      | byte position of the mark itself                        |
/// | 32  | 8    | synced_len   | bytes of frames synced before the mark: <= own_pos      |
/// | 40  | 8    | synced_next  | offset one past the last synced record                  |
pub const MARK_MAGIC: u32 = u32::from_le_bytes(*b"SPLM");
pub const MARK_BYTES: usize = 48;
const MARK_VERSION: u16 = 1;
const _: () = assert!(MARK_MAGIC != MAGIC && MARK_MAGIC != 0);
const _: () = assert!(MARK_BYTES < HEADER_BYTES);

/// True when `bytes` starts with a durable mark's magic: the end of the frames (whether
/// the mark itself is intact is [`DurableMark::read_at`]'s to say).
pub fn is_mark_start(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && u32_at(bytes, 0) == MARK_MAGIC
}

/// What a durable mark says (see the table above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableMark {
    pub segment_base: u64,
    pub own_pos: u64,
    pub synced_len: u64,
    pub synced_next: u64,
}

impl DurableMark {
    pub fn encode(&self) -> [u8; MARK_BYTES] {
        debug_assert!(self.synced_len <= self.own_pos);
        let mut b = [0u8; MARK_BYTES];
        b[0..4].copy_from_slice(&MARK_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&MARK_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_base.to_le_bytes());
        b[24..32].copy_from_slice(&self.own_pos.to_le_bytes());
        b[32..40].copy_from_slice(&self.synced_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.synced_next.to_le_bytes());
        let crc = frame_crc(&b);
        b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The mark at byte `pos` of the segment `segment_base` whose bytes are `seg`, if a
    /// valid one is there: magic, version, CRC, and fields that fit where it lies.
    pub fn read_at(seg: &[u8], pos: u64, segment_base: u64) -> Option<DurableMark> {
        let b = seg.get(pos as usize..(pos as usize).checked_add(MARK_BYTES)?)?;
        if u32_at(b, 0) != MARK_MAGIC || u16_at(b, 4) != MARK_VERSION {
            return None;
        }
        if u32_at(b, OFF_CRC) != frame_crc(b) {
            return None;
        }
        let m = DurableMark {
            segment_base: u64_at(b, 16),
            own_pos: u64_at(b, 24),
            synced_len: u64_at(b, 32),
            synced_next: u64_at(b, 40),
        };
        let fits = m.segment_base == segment_base
            && m.own_pos == pos
            && m.synced_len <= pos
            && m.synced_next >= segment_base;
        fits.then_some(m)
    }

    /// The first valid mark at or after byte `from` of the segment (a mark past damaged
    /// frames still proves what was synced below it).
    pub fn find_from(seg: &[u8], from: u64, segment_base: u64) -> Option<DurableMark> {
        let magic = MARK_MAGIC.to_le_bytes();
        let mut at = from as usize;
        while at < seg.len() {
            let i = seg[at..].windows(4).position(|w| w == magic)?;
            if let Some(m) = Self::read_at(seg, (at + i) as u64, segment_base) {
                return Some(m);
            }
            at += i + 1;
        }
        None
    }
}

/// Producer extension of an unstamped frame from [`FrameBuilder::finish`], if it has one.
pub fn frame_producer(frame: &[u8]) -> Option<ProducerSeq> {
    let flags = u16_at(frame.get(..HEADER_BYTES)?, OFF_FLAGS);
    (flags & FLAG_PRODUCER != 0)
        .then(|| read_producer(frame))
        .flatten()
}

/// One record as read back, with its position and the primary's write time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_us: u64,
    pub value: Bytes,
}

/// Decode the records of a checked frame (decompressing when flagged); the producer
/// extension, if any, is not a record.
pub fn decode_records(frame: &[u8], header: &BatchHeader) -> Result<Vec<Record>, FormatError> {
    let payload = &frame[header.payload_start()..header.frame_len as usize];
    let raw: Bytes = if header.is_compressed() {
        let out = zstd::bulk::decompress(payload, header.raw_payload_len as usize)
            .map_err(|e| FormatError::Decompress(e.to_string()))?;
        if out.len() != header.raw_payload_len as usize {
            return Err(FormatError::BadLength(out.len() as u32));
        }
        Bytes::from(out)
    } else {
        if payload.len() != header.raw_payload_len as usize {
            return Err(FormatError::BadLength(payload.len() as u32));
        }
        Bytes::copy_from_slice(payload)
    };
    let mut records = Vec::with_capacity(header.record_count as usize);
    let mut pos = 0usize;
    for i in 0..header.record_count {
        if raw.len() - pos < RECORD_PREFIX_BYTES {
            return Err(FormatError::BadRecord(i));
        }
        let len = u32_at(&raw, pos) as usize;
        pos += RECORD_PREFIX_BYTES;
        if raw.len() - pos < len {
            return Err(FormatError::BadRecord(i));
        }
        records.push(Record {
            offset: header.base_offset + u64::from(i),
            timestamp_us: header.first_ts_us,
            value: raw.slice(pos..pos + len),
        });
        pos += len;
    }
    if pos != raw.len() {
        return Err(FormatError::BadRecord(header.record_count));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(records: &[Vec<u8>], zstd: Option<i32>, base: u64) -> Vec<u8> {
        build_with(records, zstd, base, None)
    }

    fn build_with(
        records: &[Vec<u8>],
        zstd: Option<i32>,
        base: u64,
        producer: Option<ProducerSeq>,
    ) -> Vec<u8> {
        let mut b = match producer {
            Some(p) => FrameBuilder::with_producer(0, p),
            None => FrameBuilder::default(),
        };
        for r in records {
            b.push(r);
        }
        let mut f = b.finish(zstd, 0);
        stamp_frame(&mut f, base, 7, 1_000);
        f
    }

    const P: ProducerSeq = ProducerSeq {
        producer_id: 0xfeed_beef_0000_0001,
        sequence: 41,
    };

    #[test]
    fn producer_extension_round_trip() {
        for zstd in [None, Some(1)] {
            let recs = [vec![b'r'; 5000], vec![], b"x".to_vec()];
            let f = build_with(&recs, zstd, 9, Some(P));
            assert_eq!(frame_producer(&f), Some(P));
            let h = check_frame(&f).unwrap();
            assert!(h.has_producer());
            assert_eq!(h.is_compressed(), zstd.is_some());
            assert_eq!(h.payload_start(), HEADER_BYTES + PRODUCER_BYTES);
            assert_eq!(h.producer(&f), Some(P));
            let out = decode_records(&f, &h).unwrap();
            let values: Vec<&[u8]> = out.iter().map(|r| &r.value[..]).collect();
            assert_eq!(values, recs.iter().map(|r| &r[..]).collect::<Vec<_>>());
            assert_eq!(out[2].offset, 11);
        }
        let plain = build(&[b"a".to_vec()], None, 0);
        let h = check_frame(&plain).unwrap();
        assert_eq!((h.producer(&plain), frame_producer(&plain)), (None, None));
        assert_eq!(h.payload_start(), HEADER_BYTES);
    }

    #[test]
    fn producer_flag_needs_room_for_the_extension() {
        // A frame that claims the extension but is too short to hold it is not trusted,
        // whatever its CRC says.
        let mut f = build(&[b"abcdefghijkl".to_vec()], None, 0);
        assert_eq!(f.len(), HEADER_BYTES + RECORD_PREFIX_BYTES + 12);
        f[OFF_FLAGS] |= FLAG_PRODUCER as u8;
        f.truncate(HEADER_BYTES + 4);
        f[OFF_LEN..OFF_LEN + 4].copy_from_slice(&((HEADER_BYTES + 4) as u32).to_le_bytes());
        f[OFF_RAW_LEN..OFF_RAW_LEN + 4].copy_from_slice(&4u32.to_le_bytes());
        let crc = frame_crc(&f);
        f[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(peek_header(&f), Err(FormatError::BadLength(68))));
        // A flag beyond the known ones is refused before anything else is read.
        let mut g = build(&[b"a".to_vec()], None, 0);
        g[OFF_FLAGS] |= 4;
        assert!(matches!(check_frame(&g), Err(FormatError::UnknownFlags(_))));
    }

    #[test]
    fn empty_records_round_trip() {
        let f = build(&[vec![], vec![], b"x".to_vec()], None, 5);
        let h = check_frame(&f).unwrap();
        assert_eq!(h.base_offset, 5);
        assert_eq!(h.record_count, 3);
        let r = decode_records(&f, &h).unwrap();
        assert_eq!(r[0].value.len(), 0);
        assert_eq!(r[2].offset, 7);
        assert_eq!(&r[2].value[..], b"x");
    }

    #[test]
    fn whole_frames_prefix_of_a_cut_stream() {
        let a = build(&[b"one".to_vec()], None, 0);
        let b = build(&[vec![7u8; 300], b"two".to_vec()], None, 1);
        let stream = [a.clone(), b.clone()].concat();
        for cut in 0..=stream.len() {
            let want = if cut >= stream.len() {
                stream.len()
            } else if cut >= a.len() {
                a.len()
            } else {
                0
            };
            assert_eq!(
                whole_frames_len(&stream[..cut]).unwrap(),
                want,
                "cut at {cut}"
            );
        }
        let mut bad = stream.clone();
        bad[a.len()] ^= 0xff; // the second frame's magic
        assert!(matches!(
            whole_frames_len(&bad),
            Err(FormatError::BadMagic(_))
        ));
    }

    #[test]
    fn zero_header_is_end_not_frame() {
        let zeros = [0u8; HEADER_BYTES];
        assert!(is_zero_header(&zeros));
        assert!(matches!(peek_header(&zeros), Err(FormatError::BadMagic(0))));
    }

    #[test]
    fn unknown_version_is_refused_before_crc() {
        let mut f = build(&[b"a".to_vec()], None, 0);
        f[OFF_VERSION] = 9;
        assert!(matches!(
            check_frame(&f),
            Err(FormatError::UnknownVersion(9))
        ));
    }

    #[test]
    fn every_header_bit_is_covered() {
        // With a producer, its extension too.
        for (producer, covered) in [(None, HEADER_BYTES), (Some(P), HEADER_BYTES + 16)] {
            let f = build_with(&[b"abc".to_vec(), vec![]], None, 11, producer);
            for i in 0..covered {
                for bit in 0..8 {
                    let mut g = f.clone();
                    g[i] ^= 1 << bit;
                    assert!(
                        check_frame(&g).is_err(),
                        "flip of bit {bit} in byte {i} passed"
                    );
                }
            }
        }
    }

    #[test]
    fn compressible_payload_is_compressed() {
        let rec = vec![b'a'; 10_000];
        let f = build(std::slice::from_ref(&rec), Some(1), 0);
        let h = check_frame(&f).unwrap();
        assert!(h.is_compressed());
        assert!(f.len() < 1000);
        assert_eq!(decode_records(&f, &h).unwrap()[0].value, rec);
    }

    #[test]
    fn incompressible_payload_stays_raw() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let rec: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let f = build(&[rec], Some(1), 0);
        assert!(!check_frame(&f).unwrap().is_compressed());
    }

    #[test]
    fn oversized_length_is_not_trusted() {
        let mut f = build(&[b"abc".to_vec()], None, 0);
        f[OFF_LEN..OFF_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(check_frame(&f), Err(FormatError::BadLength(_))));
    }

    #[test]
    fn a_mark_reads_back_only_where_it_was_written() {
        let m = DurableMark {
            segment_base: 100,
            own_pos: 4096 + 8,
            synced_len: 4000,
            synced_next: 150,
        };
        let mut seg = vec![0u8; 16384];
        seg[m.own_pos as usize..m.own_pos as usize + MARK_BYTES].copy_from_slice(&m.encode());
        assert_eq!(DurableMark::read_at(&seg, m.own_pos, 100), Some(m));
        assert_eq!(
            DurableMark::read_at(&seg, m.own_pos, 0),
            None,
            "other segment"
        );
        assert_eq!(DurableMark::find_from(&seg, 0, 100), Some(m));
        assert_eq!(DurableMark::find_from(&seg, m.own_pos + 1, 100), None);
        // A mark copied elsewhere names its own position and is not taken.
        let mut moved = vec![0u8; 16384];
        moved[200..200 + MARK_BYTES].copy_from_slice(&m.encode());
        assert_eq!(DurableMark::find_from(&moved, 0, 100), None);
        for i in 0..MARK_BYTES {
            let mut bad = seg.clone();
            bad[m.own_pos as usize + i] ^= 0x10;
            assert_eq!(DurableMark::read_at(&bad, m.own_pos, 100), None, "byte {i}");
        }
        assert!(
            peek_header(&seg[m.own_pos as usize..]).is_err(),
            "not a frame"
        );
    }

    proptest! {
        #[test]
        fn round_trip(records in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..2000), 1..40),
            compress in any::<bool>(), base in 0u64..u64::MAX / 2,
            producer in proptest::option::of((1u64.., any::<u64>()))) {
            let producer = producer.map(|(producer_id, sequence)| ProducerSeq { producer_id, sequence });
            let f = build_with(&records, compress.then_some(1), base, producer);
            let h = check_frame(&f).unwrap();
            prop_assert_eq!(h.base_offset, base);
            prop_assert_eq!(h.record_count as usize, records.len());
            prop_assert_eq!(h.frame_len as usize, f.len());
            prop_assert_eq!(h.producer(&f), producer);
            let out = decode_records(&f, &h).unwrap();
            for (i, (got, want)) in out.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset, base + i as u64);
                prop_assert_eq!(&got.value[..], &want[..]);
            }
        }

        #[test]
        fn any_single_byte_flip_is_detected(records in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..300), 1..10),
            pos in any::<prop::sample::Index>(), bit in 0u8..8, idempotent in any::<bool>()) {
            let mut f = build_with(&records, None, 3, idempotent.then_some(P));
            let i = pos.index(f.len());
            // The CRC field itself flipping is still a mismatch; every byte is covered.
            f[i] ^= 1 << bit;
            prop_assert!(check_frame(&f).is_err());
        }

        #[test]
        fn decode_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = frame_producer(&bytes);
            if let Ok(h) = check_frame(&bytes) {
                let _ = h.producer(&bytes);
                let _ = decode_records(&bytes, &h);
            }
        }

        #[test]
        fn decode_never_panics_on_a_flagged_garbage_frame(
                body in proptest::collection::vec(any::<u8>(), 0..200), zstd in any::<bool>()) {
            // Garbage behind a valid header that claims the extension, sealed with a
            // correct CRC: the header's bounds alone must keep decoding in the frame.
            let mut f = build_with(&[b"x".to_vec()], None, 0, Some(P));
            f.truncate(HEADER_BYTES);
            f.extend_from_slice(&body);
            let flags = FLAG_PRODUCER | if zstd { FLAG_ZSTD } else { 0 };
            f[OFF_FLAGS..OFF_FLAGS + 2].copy_from_slice(&flags.to_le_bytes());
            let len = f.len() as u32;
            f[OFF_LEN..OFF_LEN + 4].copy_from_slice(&len.to_le_bytes());
            let crc = frame_crc(&f);
            f[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
            if let Ok(h) = check_frame(&f) {
                prop_assert!(h.producer(&f).is_some());
                let _ = decode_records(&f, &h);
            } else {
                prop_assert!(body.len() < PRODUCER_BYTES);
            }
        }
    }
}

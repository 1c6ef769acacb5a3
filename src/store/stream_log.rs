//! A stream's log: an append-only sequence of entries, each with an offset
//! (0, 1, 2, … for the stream's life) and an optional filter value, in
//! segment files that reading does not consume. Retention removes whole
//! segments, oldest first, as RabbitMQ's streams do.
//!
//! Files live in the stream's own directory, one per segment, named by the
//! segment's first offset (`00000000000000000000.seg`). A segment starts
//! with a header (`"LVST" ‖ version u8 ‖ 0 ×3 ‖ first offset u64 ‖ crc32 u32
//! of the previous 16 bytes ‖ 0 ×4`), then chunks: each batch the writer
//! syncs is one chunk per stream, laid out as osiris (RabbitMQ's stream
//! log) lays out its chunks, so that a stream protocol reader is sent the
//! chunk's entries straight from the file (`sendfile`), as RabbitMQ does:
//!
//! - a 48-byte header: `0x50` (magic 5, version 0) ‖ chunk type 0 ‖ entries
//!   u16 ‖ records u32 ‖ timestamp i64 (ms, the chunk's first entry's) ‖
//!   epoch u64 ‖ first offset u64 ‖ crc32 u32 of the data ‖ data length
//!   u32 ‖ trailer length u32 ‖ bloom size u8 (0) ‖ kind u8 ‖ 0 ×2. The
//!   kind (a byte osiris reserves) is what every entry's payload is (see
//!   `stream_entry`: its tag); a stream client gets the header with kind
//!   and trailer length zeroed.
//! - the data: entries as osiris's simple entries, `size u32 ‖ body`;
//! - a trailer: `0`, or `1 ‖` each entry's filter value as `length u8 ‖
//!   value`; then a crc32 of the header and the trailer before it.
//!
//! Zeros after the last chunk are the end (files may be extended ahead).
//!
//! Opening reads every chunk and checks it, so damage is found at start-up,
//! never skipped: a chunk that fails its check at the very end of the
//! newest segment is a write a crash cut short (it was never synced, so
//! never confirmed) and is cut off and counted; damage anywhere else refuses
//! the open, naming the file and position. Reads of entries check each
//! chunk's data again; chunks sent as they are carry their data's checksum
//! to the client, which checks it (as RabbitMQ's clients do).
//!
//! In memory each segment keeps its offsets, times, size, a sparse index
//! (a chunk's first offset and file position every [`INDEX_EVERY`] bytes)
//! and a Bloom filter of its filter values, so a reader seeks without
//! scanning and skips segments no entry of which can match its filter.

use super::journal::Recorder;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

const MAGIC: &[u8; 4] = b"LVST";
const VERSION: u8 = 2;
const HEADER: u64 = 24;
/// Bytes of a chunk header.
pub(crate) const CHUNK_HEADER: usize = 48;
/// A chunk's data bytes at most (unless one entry alone is larger), so a
/// chunk fits a Deliver frame under RabbitMQ's default frame_max (1 MiB).
const CHUNK_DATA_MAX: usize = (1 << 20) - 4096;
/// A chunk's entries at most (the header counts them in a u16).
const CHUNK_ENTRIES_MAX: usize = u16::MAX as usize;
/// An entry's size prefix.
const ENTRY_SIZE: usize = 4;
/// The largest body a simple entry holds (its size's top bit is 0).
const ENTRY_MAX: usize = 0x7fff_ffff;
/// Magic 5 in the high nibble, chunk format version 0 in the low one.
const MAGIC_VERSION: u8 = 0x50;
/// Osiris's `CHNK_USER`.
const CHUNK_USER: u8 = 0;
/// Leveret's logs have one leader for their whole life.
const EPOCH: u64 = 1;
/// Where the header keeps the chunk's kind.
const KIND_AT: usize = 45;
/// The trailer's checksum.
const TRAILER_CRC: usize = 4;
/// Bytes between two points of a segment's sparse index.
const INDEX_EVERY: u64 = 64 << 10;
/// Bits of each segment's Bloom filter of filter values.
const BLOOM_BITS: usize = 2048;
/// The longest filter value an entry carries.
pub(crate) const MAX_FILTER_LEN: usize = 255;

#[derive(Debug, Error)]
pub(crate) enum StreamLogError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("stream segment {file} is damaged at byte {position}: {why}")]
    Damaged {
        file: PathBuf,
        position: u64,
        why: String,
    },
}

/// One entry read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) offset: u64,
    /// Milliseconds since the Unix epoch: when its chunk's first entry was
    /// appended.
    pub(crate) timestamp: i64,
    pub(crate) filter: Option<String>,
    /// Its kind (first byte), then its body.
    pub(crate) payload: Vec<u8>,
}

/// What a consumer asked to see (RabbitMQ 3.13's `x-stream-filter` and
/// `x-stream-match-unfiltered`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) values: Vec<String>,
    pub(crate) match_unfiltered: bool,
}

impl Filter {
    fn matches(&self, value: Option<&[u8]>) -> bool {
        match value {
            None => self.match_unfiltered,
            Some(v) => self.values.iter().any(|f| f.as_bytes() == v),
        }
    }

    fn may_match(&self, segment: &Segment) -> bool {
        (self.match_unfiltered && segment.has_unfiltered)
            || self
                .values
                .iter()
                .any(|v| segment.bloom.may_contain(v.as_bytes()))
    }
}

/// What `read` found, and where the next read starts.
#[derive(Debug, Default)]
pub(crate) struct Read {
    pub(crate) entries: Vec<Entry>,
    /// The offset after the last entry looked at (matching or not).
    pub(crate) next: u64,
}

/// A synced chunk as it lies in its segment file, for sending its data
/// as is.
#[derive(Debug, Clone)]
pub(crate) struct ChunkRef {
    /// Stays readable even if retention deletes the segment meanwhile.
    pub(crate) file: Arc<File>,
    /// The header a stream client gets (kind and trailer length zeroed).
    pub(crate) header: [u8; CHUNK_HEADER],
    pub(crate) first_offset: u64,
    pub(crate) entries: u16,
    pub(crate) kind: u8,
    /// Where its data starts in the file, and how long it is.
    pub(crate) data_at: u64,
    pub(crate) data_len: u32,
}

/// What opening found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Opened {
    /// Bytes of an unfinished last write cut off the newest segment.
    pub(crate) torn_bytes: u64,
}

/// Appended entries on their way to disk (see [`StreamLog::take_pending`]).
pub(crate) struct Pending {
    file: Arc<File>,
    path: PathBuf,
    files: Recorder,
    at: u64,
    bytes: Vec<u8>,
    /// One past the last entry in `bytes`.
    end_offset: u64,
}

impl Pending {
    /// Writes the entries and waits until they are on disk.
    pub(crate) fn write(&self) -> std::io::Result<()> {
        self.files
            .write_at(&self.file, &self.path, &self.bytes, self.at)?;
        self.file.sync_data()
    }

    /// Lets go of the written bytes, keeping where they went.
    pub(crate) fn written(&mut self) {
        self.at += self.bytes.len() as u64;
        self.bytes = Vec::new();
    }

    /// One past the last entry it carries.
    pub(crate) fn end_offset(&self) -> u64 {
        self.end_offset
    }
}

struct Bloom([u64; BLOOM_BITS / 64]);

impl Bloom {
    fn bits(value: &[u8]) -> [usize; 2] {
        let h = crc32fast::hash(value);
        let mut second = crc32fast::Hasher::new_with_initial(0x9e37_79b9);
        second.update(value);
        [
            h as usize % BLOOM_BITS,
            second.finalize() as usize % BLOOM_BITS,
        ]
    }

    fn insert(&mut self, value: &[u8]) {
        for b in Self::bits(value) {
            self.0[b / 64] |= 1 << (b % 64);
        }
    }

    fn may_contain(&self, value: &[u8]) -> bool {
        Self::bits(value)
            .iter()
            .all(|b| self.0[b / 64] & (1 << (b % 64)) != 0)
    }
}

struct Segment {
    path: PathBuf,
    /// Shared with a [`Pending`] write in flight.
    file: Arc<File>,
    /// Bytes written and synced: what readers may read.
    durable_len: u64,
    first_offset: u64,
    /// One past its last entry.
    end_offset: u64,
    first_timestamp: i64,
    last_timestamp: i64,
    /// Bytes in use: header and chunks.
    len: u64,
    /// (first offset, position) of a chunk every `INDEX_EVERY` bytes.
    index: Vec<(u64, u64)>,
    bloom: Bloom,
    has_unfiltered: bool,
}

impl Segment {
    /// A segment of only its header, none of it known durable yet.
    fn empty(path: PathBuf, file: File, first_offset: u64) -> Segment {
        Segment {
            path,
            file: Arc::new(file),
            durable_len: 0,
            first_offset,
            end_offset: first_offset,
            first_timestamp: 0,
            last_timestamp: 0,
            len: HEADER,
            index: Vec::new(),
            bloom: Bloom([0; BLOOM_BITS / 64]),
            has_unfiltered: false,
        }
    }

    /// Takes in the chunk at `at`.
    fn note(&mut self, chunk: &ChunkInfo, filters: Filters<'_>, at: u64) {
        if self.is_empty() {
            self.first_timestamp = chunk.timestamp;
        }
        if self
            .index
            .last()
            .is_none_or(|&(_, p)| at >= p + INDEX_EVERY)
        {
            self.index.push((chunk.first_offset, at));
        }
        for value in filters {
            match value {
                Some(v) => self.bloom.insert(v),
                None => self.has_unfiltered = true,
            }
        }
        self.last_timestamp = chunk.timestamp;
        self.end_offset = chunk.first_offset + u64::from(chunk.entries);
        self.len = at + chunk.len();
    }

    /// The position of a chunk at or before the one holding `offset`.
    fn seek(&self, offset: u64) -> u64 {
        let i = self.index.partition_point(|&(o, _)| o <= offset);
        if i == 0 {
            HEADER
        } else {
            self.index[i - 1].1
        }
    }

    fn is_empty(&self) -> bool {
        self.end_offset == self.first_offset
    }
}

/// A chunk's header fields.
#[derive(Debug, Clone, Copy)]
struct ChunkInfo {
    first_offset: u64,
    entries: u16,
    timestamp: i64,
    kind: u8,
    data_crc: u32,
    data_len: u32,
    trailer_len: u32,
}

impl ChunkInfo {
    fn len(&self) -> u64 {
        (CHUNK_HEADER as u64) + u64::from(self.data_len) + u64::from(self.trailer_len)
    }

    fn encode(&self) -> [u8; CHUNK_HEADER] {
        let mut h = [0u8; CHUNK_HEADER];
        h[0] = MAGIC_VERSION;
        h[1] = CHUNK_USER;
        h[2..4].copy_from_slice(&self.entries.to_be_bytes());
        h[4..8].copy_from_slice(&u32::from(self.entries).to_be_bytes());
        h[8..16].copy_from_slice(&self.timestamp.to_be_bytes());
        h[16..24].copy_from_slice(&EPOCH.to_be_bytes());
        h[24..32].copy_from_slice(&self.first_offset.to_be_bytes());
        h[32..36].copy_from_slice(&self.data_crc.to_be_bytes());
        h[36..40].copy_from_slice(&self.data_len.to_be_bytes());
        h[40..44].copy_from_slice(&self.trailer_len.to_be_bytes());
        h[KIND_AT] = self.kind;
        h
    }

    /// The header's fields, if it is one this module writes.
    fn decode(h: &[u8]) -> Result<ChunkInfo, &'static str> {
        let u32_at = |i: usize| u32::from_be_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_be_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        if h[0] != MAGIC_VERSION || h[1] != CHUNK_USER {
            return Err("not a chunk header");
        }
        let entries = u16::from_be_bytes([h[2], h[3]]);
        if u32_at(4) != u32::from(entries) || u64_at(16) != EPOCH || h[44] != 0 {
            return Err("a chunk header with fields this log never writes");
        }
        let info = ChunkInfo {
            first_offset: u64_at(24),
            entries,
            timestamp: u64_at(8) as i64,
            kind: h[KIND_AT],
            data_crc: u32_at(32),
            data_len: u32_at(36),
            trailer_len: u32_at(40),
        };
        if (info.trailer_len as usize) < 1 + TRAILER_CRC {
            return Err("a chunk trailer shorter than its checksum");
        }
        Ok(info)
    }

    /// The header a stream client is sent.
    fn for_client(&self) -> [u8; CHUNK_HEADER] {
        client_header(
            self.first_offset,
            self.entries,
            self.timestamp,
            self.data_crc,
            self.data_len,
        )
    }
}

/// The osiris chunk header a stream client is sent for a chunk of
/// `entries` simple entries: no trailer, no bloom filter. One layout for
/// chunks sent from disk and chunks made up (`stream_protocol::chunk`).
pub(crate) fn client_header(
    first_offset: u64,
    entries: u16,
    timestamp: i64,
    data_crc: u32,
    data_len: u32,
) -> [u8; CHUNK_HEADER] {
    ChunkInfo {
        first_offset,
        entries,
        timestamp,
        kind: 0,
        data_crc,
        data_len,
        trailer_len: 0,
    }
    .encode()
}

/// Each entry's filter value, from a chunk's trailer.
#[derive(Clone, Copy)]
struct Filters<'t> {
    /// `length u8 ‖ value` per entry; None: no entry has one.
    values: Option<&'t [u8]>,
    left: u16,
}

impl<'t> Iterator for Filters<'t> {
    type Item = Option<&'t [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let Some(values) = self.values.as_mut() else {
            return Some(None);
        };
        // Checked when the chunk was read: each value is within the trailer.
        let (&len, rest) = values.split_first()?;
        let value = rest.get(..len as usize)?;
        *values = &rest[len as usize..];
        Some((len > 0).then_some(value))
    }
}

/// The chunk being filled by appends, inside [`StreamLog::buffer`].
#[derive(Default)]
struct OpenChunk {
    /// Where its header starts in the buffer (None: no open chunk).
    start: Option<usize>,
    kind: u8,
    first_offset: u64,
    timestamp: i64,
    entries: u16,
    data_crc: crc32fast::Hasher,
    /// Each entry's `length u8 ‖ value`.
    filters: Vec<u8>,
    any_filter: bool,
}

pub(crate) struct StreamLog {
    dir: PathBuf,
    max_segment_bytes: u64,
    /// Oldest first; the last is written to.
    segments: Vec<Segment>,
    /// Appended chunks not yet written (the last one may be open).
    buffer: Vec<u8>,
    /// Where `buffer` goes in the newest segment.
    buffer_at: u64,
    open: OpenChunk,
    /// One past the newest synced entry: what readers may see.
    synced_end: u64,
    files: Recorder,
}

impl StreamLog {
    /// Opens (or creates) the log in `dir`, checking every chunk.
    pub(crate) fn open(
        dir: &Path,
        max_segment_bytes: u64,
    ) -> Result<(StreamLog, Opened), StreamLogError> {
        std::fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if let Some(first) = segment_offset(&path) {
                names.push((first, path));
            }
        }
        names.sort();
        let mut opened = Opened::default();
        let mut segments: Vec<Segment> = Vec::new();
        let newest = names.len().saturating_sub(1);
        for (i, (first, path)) in names.into_iter().enumerate() {
            let expected = segments.last().map(|s| s.end_offset);
            if expected.is_some_and(|e| e != first) {
                return Err(damaged(
                    &path,
                    0,
                    format!("starts at offset {first}, the segment before ends at {expected:?}"),
                ));
            }
            let (segment, torn) = scan(path, first, i == newest)?;
            opened.torn_bytes += torn;
            segments.push(segment);
        }
        let mut log = StreamLog {
            dir: dir.to_owned(),
            max_segment_bytes: max_segment_bytes.max(HEADER + 1),
            segments,
            buffer: Vec::new(),
            buffer_at: 0,
            open: OpenChunk::default(),
            synced_end: 0,
            files: Recorder::default(),
        };
        if log.segments.is_empty() {
            log.roll(0)?;
        }
        log.buffer_at = log.newest().len;
        log.synced_end = log.next_offset();
        Ok((log, opened))
    }

    /// From now on, records every write for followers.
    pub(crate) fn record_to(&mut self, files: Recorder) {
        self.files = files;
    }

    pub(crate) fn files(&self) -> &Recorder {
        &self.files
    }

    fn newest(&self) -> &Segment {
        self.segments.last().expect("a log has a segment")
    }

    /// Segments started from now on roll over at `bytes`.
    pub(crate) fn set_max_segment_bytes(&mut self, bytes: u64) {
        self.max_segment_bytes = bytes;
    }

    /// The directory holding the segments.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The oldest offset still kept.
    pub(crate) fn first_offset(&self) -> u64 {
        self.segments[0].first_offset
    }

    /// The offset the next entry gets.
    pub(crate) fn next_offset(&self) -> u64 {
        self.newest().end_offset + u64::from(self.open.entries)
    }

    /// The offset of the newest entry, if there is one.
    pub(crate) fn last_offset(&self) -> Option<u64> {
        let next = self.next_offset();
        (next > self.first_offset()).then(|| next - 1)
    }

    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes of every segment.
    pub(crate) fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Queues an entry for the next [`sync`](Self::sync); its offset. The
    /// payload's first byte is its kind (`stream_entry`'s tag); entries of
    /// one kind share a chunk. A filter value longer than
    /// [`MAX_FILTER_LEN`] is cut there.
    pub(crate) fn append(
        &mut self,
        timestamp: i64,
        filter: Option<&str>,
        payload: &[u8],
    ) -> std::io::Result<u64> {
        let Some((&kind, body)) = payload.split_first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a stream entry without its kind",
            ));
        };
        if body.len() > ENTRY_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a stream entry larger than 2 GiB",
            ));
        }
        if let Some(start) = self.open.start {
            let data = self.buffer.len() - start - CHUNK_HEADER;
            if self.open.kind != kind
                || self.open.entries as usize >= CHUNK_ENTRIES_MAX
                || data + ENTRY_SIZE + body.len() > CHUNK_DATA_MAX
            {
                self.seal();
            }
        }
        // Sealed chunks count in the segment's length already.
        let unsealed = self
            .open
            .start
            .map_or(0, |s| self.buffer.len() - s + 1 + TRAILER_CRC);
        if self.newest().len + unsealed as u64 >= self.max_segment_bytes
            && !(self.newest().is_empty() && self.open.entries == 0)
        {
            self.sync()?;
            let next = self.next_offset();
            self.roll(next)?;
        }
        let offset = self.next_offset();
        if self.open.start.is_none() {
            let mut filters = std::mem::take(&mut self.open.filters);
            filters.clear();
            self.open = OpenChunk {
                start: Some(self.buffer.len()),
                kind,
                first_offset: offset,
                timestamp,
                filters,
                ..OpenChunk::default()
            };
            self.buffer.extend_from_slice(&[0; CHUNK_HEADER]);
        }
        let size = (body.len() as u32).to_be_bytes();
        self.open.data_crc.update(&size);
        self.open.data_crc.update(body);
        self.buffer.extend_from_slice(&size);
        self.buffer.extend_from_slice(body);
        let f = filter.map_or(&[][..], |f| &f.as_bytes()[..f.len().min(MAX_FILTER_LEN)]);
        self.open.filters.push(f.len() as u8);
        self.open.filters.extend_from_slice(f);
        self.open.any_filter |= !f.is_empty();
        self.open.entries += 1;
        Ok(offset)
    }

    /// Completes the open chunk: its header and trailer.
    fn seal(&mut self) {
        let Some(start) = self.open.start.take() else {
            return;
        };
        let open = std::mem::take(&mut self.open);
        let data_len = (self.buffer.len() - start - CHUNK_HEADER) as u32;
        let trailer: &[u8] = if open.any_filter { &open.filters } else { &[] };
        let info = ChunkInfo {
            first_offset: open.first_offset,
            entries: open.entries,
            timestamp: open.timestamp,
            kind: open.kind,
            data_crc: open.data_crc.finalize(),
            data_len,
            trailer_len: (1 + trailer.len() + TRAILER_CRC) as u32,
        };
        let header = info.encode();
        self.buffer[start..start + CHUNK_HEADER].copy_from_slice(&header);
        let trailer_start = self.buffer.len();
        self.buffer.push(u8::from(open.any_filter));
        self.buffer.extend_from_slice(trailer);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.update(&self.buffer[trailer_start..]);
        self.buffer.extend_from_slice(&crc.finalize().to_be_bytes());
        let at = self.buffer_at + start as u64;
        let filters = Filters {
            values: open.any_filter.then_some(&open.filters[..]),
            left: open.entries,
        };
        self.segments
            .last_mut()
            .expect("a log has a segment")
            .note(&info, filters, at);
        // Keep the filters' allocation for the next chunk.
        self.open.filters = open.filters;
    }

    /// Writes and fsyncs what [`append`](Self::append) queued: after this,
    /// those entries survive a crash and readers see them.
    pub(crate) fn sync(&mut self) -> std::io::Result<()> {
        match self.take_pending() {
            Some(p) => {
                p.write()?;
                self.synced(&p);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Hands over what [`append`](Self::append) queued, to be written and
    /// synced ([`Pending::write`]) without holding the log, then reported
    /// with [`synced`](Self::synced). Appends may go on meanwhile.
    pub(crate) fn take_pending(&mut self) -> Option<Pending> {
        self.seal();
        if self.buffer.is_empty() {
            return None;
        }
        let at = self.buffer_at;
        self.buffer_at += self.buffer.len() as u64;
        Some(Pending {
            file: self.newest().file.clone(),
            path: self.newest().path.clone(),
            files: self.files.clone(),
            at,
            bytes: std::mem::take(&mut self.buffer),
            end_offset: self.next_offset(),
        })
    }

    /// A [`Pending`] write is on disk: readers may see it.
    pub(crate) fn synced(&mut self, p: &Pending) {
        let end = p.at + p.bytes.len() as u64;
        if let Some(s) = self
            .segments
            .iter_mut()
            .rev()
            .find(|s| Arc::ptr_eq(&s.file, &p.file))
        {
            s.durable_len = s.durable_len.max(end);
        }
        self.synced_end = self.synced_end.max(p.end_offset);
    }

    /// Starts a new segment whose first entry will be `first_offset`.
    fn roll(&mut self, first_offset: u64) -> std::io::Result<()> {
        let path = self.dir.join(format!("{first_offset:020}.seg"));
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        self.files.created(&path);
        self.files
            .write_at(&file, &path, &header(first_offset), 0)?;
        file.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        let mut segment = Segment::empty(path, file, first_offset);
        segment.durable_len = HEADER;
        self.segments.push(segment);
        self.buffer_at = HEADER;
        Ok(())
    }

    /// The offset of the first entry appended at or after `timestamp`
    /// (ms; to its chunk's time), or the next offset if there is none.
    pub(crate) fn offset_at(&self, timestamp: i64) -> std::io::Result<u64> {
        let Some(segment) = self
            .segments
            .iter()
            .find(|s| !s.is_empty() && s.last_timestamp >= timestamp)
        else {
            return Ok(self.next_offset());
        };
        let mut found = segment.end_offset;
        self.scan_chunks(segment, segment.first_offset, |c| {
            if c.info.timestamp >= timestamp {
                found = c.info.first_offset;
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(found)
    }

    /// Entries from `from` on (raised to the first offset kept), up to
    /// `max_entries` and about `max_bytes` of payload, that `filter`
    /// matches. Only synced entries are read.
    pub(crate) fn read(
        &self,
        from: u64,
        max_entries: usize,
        max_bytes: usize,
        filter: Option<&Filter>,
    ) -> std::io::Result<Read> {
        let mut read = Read {
            entries: Vec::new(),
            next: from.max(self.first_offset()),
        };
        let synced_end = self.synced_end;
        let mut bytes = 0;
        for segment in &self.segments {
            if segment.end_offset <= read.next || read.next >= synced_end {
                continue;
            }
            if filter.is_some_and(|f| !f.may_match(segment)) {
                read.next = segment.end_offset.min(synced_end);
                continue;
            }
            let mut full = false;
            self.scan_chunks(segment, read.next, |c| {
                if c.info.first_offset >= synced_end {
                    return Ok(false);
                }
                c.check_data()?;
                let offsets = c.info.first_offset..;
                for (offset, (body, value)) in offsets.zip(c.entries().zip(c.filters())) {
                    if offset >= read.next {
                        read.next = offset + 1;
                        if filter.is_none_or(|f| f.matches(value)) {
                            bytes += body.len();
                            let mut payload = Vec::with_capacity(1 + body.len());
                            payload.push(c.info.kind);
                            payload.extend_from_slice(body);
                            read.entries.push(Entry {
                                offset,
                                timestamp: c.info.timestamp,
                                filter: value.map(|v| String::from_utf8_lossy(v).into_owned()),
                                payload,
                            });
                        }
                        full = read.entries.len() >= max_entries || bytes >= max_bytes;
                        if full {
                            return Ok(false);
                        }
                    }
                }
                Ok(true)
            })?;
            if full {
                break;
            }
        }
        Ok(read)
    }

    /// Synced chunks from the one holding `from` on (raised to the first
    /// offset kept), up to about `max_bytes` of data, for sending as they
    /// are. Each header is checked; the data is not read but read ahead
    /// into the page cache (this blocks), so that sending it from the file
    /// later does not wait for the disk.
    pub(crate) fn chunks(&self, from: u64, max_bytes: usize) -> std::io::Result<Vec<ChunkRef>> {
        let from = from.max(self.first_offset());
        let mut chunks = Vec::new();
        let mut bytes = 0;
        for segment in &self.segments {
            if segment.end_offset <= from || from >= self.synced_end {
                continue;
            }
            let end = segment.durable_len;
            let mut at = segment.seek(from);
            while at < end && bytes < max_bytes {
                let Some(info) = read_chunk_header(&segment.file, at, end)? else {
                    break;
                };
                let chunk_end = info.first_offset + u64::from(info.entries);
                if chunk_end > from {
                    read_ahead(&segment.file, at + CHUNK_HEADER as u64, info.data_len);
                    chunks.push(ChunkRef {
                        file: segment.file.clone(),
                        header: info.for_client(),
                        first_offset: info.first_offset,
                        entries: info.entries,
                        kind: info.kind,
                        data_at: at + CHUNK_HEADER as u64,
                        data_len: info.data_len,
                    });
                    bytes += info.data_len as usize;
                }
                at += info.len();
            }
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(chunks)
    }

    /// Calls `each` with the segment's written chunks from the one holding
    /// `from` on, while it returns true.
    fn scan_chunks(
        &self,
        segment: &Segment,
        from: u64,
        mut each: impl FnMut(&Chunk<'_>) -> std::io::Result<bool>,
    ) -> std::io::Result<()> {
        let end = segment.durable_len;
        let mut at = segment.seek(from);
        let mut file = Ahead::new(&segment.file);
        while at < end {
            let Some(chunk) = read_chunk(&mut file, at, end)? else {
                break;
            };
            at += chunk.info.len();
            if chunk.info.first_offset + u64::from(chunk.info.entries) <= from {
                continue;
            }
            if !each(&chunk)? {
                break;
            }
        }
        Ok(())
    }

    /// Drops whole segments, oldest first, while the log is over
    /// `max_bytes`, or while a segment's newest entry is older than
    /// `max_age_ms` at `now_ms`; never the segment being written. Returns
    /// how many were dropped.
    pub(crate) fn apply_retention(
        &mut self,
        max_bytes: Option<u64>,
        max_age_ms: Option<u64>,
        now_ms: i64,
    ) -> std::io::Result<usize> {
        let mut total = self.bytes();
        let mut drop = 0;
        while drop + 1 < self.segments.len() {
            let s = &self.segments[drop];
            let too_big = max_bytes.is_some_and(|m| total > m);
            let too_old =
                max_age_ms.is_some_and(|age| s.last_timestamp < now_ms.saturating_sub(age as i64));
            if !too_big && !too_old {
                break;
            }
            total -= s.len;
            drop += 1;
        }
        for s in self.segments.drain(..drop) {
            self.files.remove_file(&s.path)?;
        }
        if drop > 0 {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(drop)
    }
}

fn header(first_offset: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..4].copy_from_slice(MAGIC);
    h[4] = VERSION;
    h[8..16].copy_from_slice(&first_offset.to_be_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_be_bytes());
    h
}

fn segment_offset(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20).then(|| digits.parse().ok())?
}

fn damaged(path: &Path, position: u64, why: impl Into<String>) -> StreamLogError {
    StreamLogError::Damaged {
        file: path.to_owned(),
        position,
        why: why.into(),
    }
}

/// Bytes read from a segment ahead of the chunk being read, so a run of
/// small chunks costs one read, not two per chunk.
const READ_AHEAD: usize = 256 << 10;

/// A window of a segment file read ahead.
struct Ahead<'f> {
    file: &'f File,
    /// Where the window starts in the file, and what it holds.
    start: u64,
    buf: Vec<u8>,
}

impl<'f> Ahead<'f> {
    fn new(file: &'f File) -> Ahead<'f> {
        Ahead {
            file,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// `len` bytes at `at`, none of them past `end`: from the window, or
    /// read with the window moved there (at least `len`, and up to
    /// [`READ_AHEAD`] bytes ahead).
    fn bytes(&mut self, at: u64, len: usize, end: u64) -> std::io::Result<&[u8]> {
        let inside = at >= self.start && at + len as u64 <= self.start + self.buf.len() as u64;
        if !inside {
            let want = (len.max(READ_AHEAD) as u64).min(end - at) as usize;
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, at)?;
            self.start = at;
        }
        let from = (at - self.start) as usize;
        Ok(&self.buf[from..from + len])
    }
}

/// A chunk read whole: its header's fields, data and trailer.
struct Chunk<'b> {
    info: ChunkInfo,
    data: &'b [u8],
    /// The filter section of the trailer (without its flag and checksum).
    filters: Option<&'b [u8]>,
}

impl<'b> Chunk<'b> {
    fn check_data(&self) -> std::io::Result<()> {
        if crc32fast::hash(self.data) == self.info.data_crc {
            Ok(())
        } else {
            Err(bad("a chunk's data fails its checksum"))
        }
    }

    /// Its entries' bodies (checked to fit its data when it was read).
    fn entries(&self) -> impl Iterator<Item = &'b [u8]> {
        let mut data = self.data;
        std::iter::from_fn(move || {
            let size = u32::from_be_bytes(data.get(..ENTRY_SIZE)?.try_into().ok()?) as usize;
            let body = data.get(ENTRY_SIZE..ENTRY_SIZE + size)?;
            data = &data[ENTRY_SIZE + size..];
            Some(body)
        })
    }

    fn filters(&self) -> Filters<'b> {
        Filters {
            values: self.filters,
            left: self.info.entries,
        }
    }
}

fn bad(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string())
}

/// The header of the chunk at `at` (before `end`), checked against the
/// trailer's checksum; None at the end of the data (zeros).
fn read_chunk_header(file: &File, at: u64, end: u64) -> std::io::Result<Option<ChunkInfo>> {
    let mut h = [0u8; CHUNK_HEADER];
    if end - at < CHUNK_HEADER as u64 {
        return Err(bad("a chunk's header runs past the end"));
    }
    file.read_exact_at(&mut h, at)?;
    if h[0] == 0 {
        return Ok(None);
    }
    let info = ChunkInfo::decode(&h).map_err(bad)?;
    if info.len() > end - at {
        return Err(bad("a chunk runs past the end"));
    }
    let mut trailer = vec![0u8; info.trailer_len as usize];
    file.read_exact_at(
        &mut trailer,
        at + CHUNK_HEADER as u64 + u64::from(info.data_len),
    )?;
    check_trailer(&h, &trailer)?;
    Ok(Some(info))
}

/// Brings a file range into the page cache, waiting for it. Only a hint:
/// a failure just means the send reads from the disk itself.
fn read_ahead(file: &File, at: u64, len: u32) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open (borrowed for the call); readahead
    // only reads into the page cache.
    unsafe {
        libc::readahead(file.as_raw_fd(), at as libc::off64_t, len as usize);
    }
}

/// Checks the trailer's checksum (over the header and the trailer).
fn check_trailer(header: &[u8], trailer: &[u8]) -> std::io::Result<()> {
    let (body, crc) = trailer.split_at(trailer.len() - TRAILER_CRC);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(body);
    if hasher.finalize().to_be_bytes() != crc {
        return Err(bad("a chunk's header or trailer fails its checksum"));
    }
    Ok(())
}

/// Reads the chunk at `at` (before `end`) and checks its structure (its
/// data's checksum is [`Chunk::check_data`]); None at the end of the data
/// (zeros). A bad chunk is an `InvalidData` error.
fn read_chunk<'a>(
    file: &'a mut Ahead<'_>,
    at: u64,
    end: u64,
) -> std::io::Result<Option<Chunk<'a>>> {
    if end - at < CHUNK_HEADER as u64 {
        return Err(bad("a chunk's header runs past the end"));
    }
    let h = file.bytes(at, CHUNK_HEADER, end)?;
    if h[0] == 0 && h.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let info = ChunkInfo::decode(h).map_err(bad)?;
    if info.len() > end - at {
        return Err(bad("a chunk runs past the end"));
    }
    let all = file.bytes(at, info.len() as usize, end)?;
    let (header, rest) = all.split_at(CHUNK_HEADER);
    let (data, trailer) = rest.split_at(info.data_len as usize);
    check_trailer(header, trailer)?;
    // The entries fill the data exactly.
    let mut left = data;
    for _ in 0..info.entries {
        let Some(size) = left.get(..ENTRY_SIZE) else {
            return Err(bad("a chunk's entries run past its data"));
        };
        let size = u32::from_be_bytes(size.try_into().expect("4 bytes")) as usize;
        if size > ENTRY_MAX || left.len() - ENTRY_SIZE < size {
            return Err(bad("a chunk's entries run past its data"));
        }
        left = &left[ENTRY_SIZE + size..];
    }
    if !left.is_empty() {
        return Err(bad("a chunk's data is longer than its entries"));
    }
    let section = &trailer[..trailer.len() - TRAILER_CRC];
    let filters = match section.split_first() {
        Some((0, [])) => None,
        Some((1, values)) => {
            let mut left = values;
            for _ in 0..info.entries {
                let Some((&len, rest)) = left.split_first() else {
                    return Err(bad("a chunk's filter values run past its trailer"));
                };
                if rest.len() < len as usize {
                    return Err(bad("a chunk's filter values run past its trailer"));
                }
                left = &rest[len as usize..];
            }
            if !left.is_empty() {
                return Err(bad("a chunk's trailer is longer than its filter values"));
            }
            Some(values)
        }
        _ => return Err(bad("a chunk trailer this log never writes")),
    };
    Ok(Some(Chunk {
        info,
        data,
        filters,
    }))
}

/// Reads and checks a segment file; for the newest one, cuts off a torn
/// last write (returning its length).
fn scan(path: PathBuf, first_offset: u64, newest: bool) -> Result<(Segment, u64), StreamLogError> {
    let file = OpenOptions::new().read(true).write(true).open(&path)?;
    let file_len = file.metadata()?.len();
    let mut h = [0u8; HEADER as usize];
    if file_len < HEADER {
        return Err(damaged(&path, 0, "shorter than a segment header"));
    }
    file.read_exact_at(&mut h, 0)?;
    if h[..4] == *MAGIC && h[4] != VERSION {
        return Err(damaged(
            &path,
            4,
            format!(
                "segment format version {}, this broker reads version {VERSION}",
                h[4]
            ),
        ));
    }
    if h != header(first_offset) {
        return Err(damaged(&path, 0, "bad segment header"));
    }
    let mut segment = Segment::empty(path, file, first_offset);
    let mut at = HEADER;
    let file = segment.file.clone();
    let mut ahead = Ahead::new(&file);
    while at < file_len {
        let chunk = read_chunk(&mut ahead, at, file_len).and_then(|c| {
            if let Some(c) = &c {
                c.check_data()?;
            }
            Ok(c)
        });
        match chunk {
            Ok(None) => break,
            Ok(Some(c)) => {
                if c.info.first_offset != segment.end_offset {
                    return Err(damaged(
                        &segment.path,
                        at,
                        format!(
                            "a chunk from offset {} where {} was due",
                            c.info.first_offset, segment.end_offset
                        ),
                    ));
                }
                segment.note(&c.info, c.filters(), at);
                at += c.info.len();
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                if newest && torn_tail(&segment.file, at, file_len)? {
                    break;
                }
                return Err(damaged(&segment.path, at, e.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !newest && at < file_len {
        if let Some(p) = last_nonzero(&segment.file, at, file_len)? {
            return Err(damaged(&segment.path, p, "data after the segment's end"));
        }
    }
    segment.durable_len = at;
    let mut torn = 0;
    if newest && at < file_len {
        // Past the last good chunk: zeros written ahead, or a write the
        // crash cut short. Either way the file ends here.
        torn = last_nonzero(&segment.file, at, file_len)?.map_or(0, |p| p + 1 - at);
        segment.file.set_len(at)?;
        segment.file.sync_all()?;
    }
    Ok((segment, torn))
}

/// Whether the bad chunk at `at` is the newest segment's last write cut
/// short: no complete chunk can follow it, so it was never synced. A chunk
/// whose header is cut off, that claims more bytes than the file holds, or
/// whose bytes after it are all zeros, is such a write.
fn torn_tail(file: &File, at: u64, file_len: u64) -> std::io::Result<bool> {
    let mut h = [0u8; CHUNK_HEADER];
    if file_len - at < CHUNK_HEADER as u64 {
        return Ok(true);
    }
    file.read_exact_at(&mut h, at)?;
    let len = |i: usize| u64::from(u32::from_be_bytes(h[i..i + 4].try_into().expect("4 bytes")));
    let claimed_end = at + CHUNK_HEADER as u64 + len(36) + len(40);
    if claimed_end >= file_len {
        return Ok(true);
    }
    Ok(last_nonzero(file, claimed_end, file_len)?.is_none())
}

/// The position of the last byte in `from..to` that is not zero.
fn last_nonzero(file: &File, from: u64, to: u64) -> std::io::Result<Option<u64>> {
    let mut last = None;
    let mut buf = vec![0u8; 64 << 10];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            last = Some(at + i as u64);
        }
        at += n as u64;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "leveret-stream-log-{name}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn all(log: &StreamLog, from: u64) -> Vec<Entry> {
        log.read(from, usize::MAX, usize::MAX, None)
            .unwrap()
            .entries
    }

    #[test]
    fn appends_read_back_in_order_across_segments_and_reopen() {
        let dir = Dir::new("order");
        let (mut log, _) = StreamLog::open(&dir.0, 200).unwrap();
        for i in 0..50u64 {
            let filter = (i % 3 == 0).then_some("red");
            assert_eq!(
                log.append(1000 + i as i64, filter, &i.to_be_bytes())
                    .unwrap(),
                i
            );
        }
        // Nothing is readable before it is synced.
        assert!(all(&log, 0).len() < 50);
        log.sync().unwrap();
        assert!(log.segment_count() > 3, "{} segments", log.segment_count());
        let read = all(&log, 0);
        assert_eq!(read.len(), 50);
        for (i, e) in read.iter().enumerate() {
            assert_eq!(e.offset, i as u64);
            assert_eq!(e.payload, (i as u64).to_be_bytes());
            // A chunk's entries share its first entry's time.
            assert!((1000..=1000 + i as i64).contains(&e.timestamp));
            assert_eq!(e.filter.as_deref(), (i % 3 == 0).then_some("red"));
        }
        assert_eq!(all(&log, 37)[0].offset, 37);
        let bytes = log.bytes();
        drop(log);

        let (log, opened) = StreamLog::open(&dir.0, 200).unwrap();
        assert_eq!(opened, Opened::default());
        assert_eq!(log.bytes(), bytes);
        assert_eq!((log.first_offset(), log.next_offset()), (0, 50));
        assert_eq!(log.last_offset(), Some(49));
        assert_eq!(all(&log, 0), read);
    }

    #[test]
    fn a_pending_write_is_invisible_until_synced_and_appends_go_on_meanwhile() {
        let dir = Dir::new("pending");
        let (mut log, _) = StreamLog::open(&dir.0, 1 << 20).unwrap();
        for i in 0..3u8 {
            log.append(0, None, &[i; 10]).unwrap();
        }
        let first = log.take_pending().expect("three entries");
        assert_eq!(first.end_offset(), 3);
        // While the first batch is on its way, more arrive.
        log.append(0, None, &[9; 10]).unwrap();
        assert!(all(&log, 0).is_empty(), "nothing is on disk yet");
        first.write().unwrap();
        log.synced(&first);
        assert_eq!(all(&log, 0).len(), 3, "the first batch only");
        log.sync().unwrap();
        let read = all(&log, 0);
        assert_eq!(read.len(), 4);
        assert_eq!(read[3].payload, [9; 10]);
        assert!(log.take_pending().is_none());
        drop(log);
        let (log, opened) = StreamLog::open(&dir.0, 1 << 20).unwrap();
        assert_eq!((opened.torn_bytes, log.next_offset()), (0, 4));
    }

    #[test]
    fn reads_are_bounded_and_say_where_to_go_on() {
        let dir = Dir::new("bounded");
        let (mut log, _) = StreamLog::open(&dir.0, 1 << 20).unwrap();
        for i in 0..10u8 {
            log.append(0, None, &[i; 100]).unwrap();
        }
        log.sync().unwrap();
        let r = log.read(2, 3, usize::MAX, None).unwrap();
        assert_eq!(
            r.entries.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_eq!(r.next, 5);
        let r = log.read(5, usize::MAX, 150, None).unwrap();
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.next, 7);
        let r = log.read(10, 5, usize::MAX, None).unwrap();
        assert!(r.entries.is_empty());
        assert_eq!(r.next, 10);
    }

    #[test]
    fn filters_match_exactly_and_skip_segments() {
        let dir = Dir::new("filter");
        let (mut log, _) = StreamLog::open(&dir.0, 400).unwrap();
        for i in 0..60u64 {
            let filter = match i {
                0..20 => Some("blue"),
                20..40 => None,
                _ => Some("green"),
            };
            log.append(0, filter, &i.to_be_bytes()).unwrap();
        }
        log.sync().unwrap();
        let only = |values: &[&str], unfiltered: bool| -> Vec<u64> {
            let f = Filter {
                values: values.iter().map(|s| s.to_string()).collect(),
                match_unfiltered: unfiltered,
            };
            let r = log.read(0, usize::MAX, usize::MAX, Some(&f)).unwrap();
            assert_eq!(r.next, 60);
            r.entries.iter().map(|e| e.offset).collect()
        };
        assert_eq!(only(&["green"], false), (40..60).collect::<Vec<_>>());
        assert_eq!(only(&["blue"], true), (0..40).collect::<Vec<_>>());
        assert_eq!(only(&["red"], false), Vec::<u64>::new());
        let blue_segments = log
            .segments
            .iter()
            .filter(|s| s.bloom.may_contain(b"blue"))
            .count();
        assert!(blue_segments < log.segment_count(), "segments are skipped");
    }

    #[test]
    fn offsets_by_time() {
        let dir = Dir::new("time");
        let (mut log, _) = StreamLog::open(&dir.0, 200).unwrap();
        for i in 0..30 {
            // One chunk each: a chunk has one time.
            log.append(10_000 + i * 10, None, b"x").unwrap();
            log.sync().unwrap();
        }
        assert_eq!(log.offset_at(0).unwrap(), 0);
        assert_eq!(log.offset_at(10_000).unwrap(), 0);
        assert_eq!(log.offset_at(10_001).unwrap(), 1);
        assert_eq!(log.offset_at(10_150).unwrap(), 15);
        assert_eq!(log.offset_at(99_999).unwrap(), 30);
    }

    #[test]
    fn retention_drops_whole_old_segments_and_keeps_offsets() {
        let dir = Dir::new("retention");
        let (mut log, _) = StreamLog::open(&dir.0, 1000).unwrap();
        for i in 0..100 {
            log.append(i, None, &[7; 100]).unwrap();
            log.sync().unwrap();
        }
        let segments = log.segment_count();
        let dropped = log.apply_retention(Some(3000), None, 0).unwrap();
        assert!(dropped > 0 && dropped < segments);
        assert!(log.bytes() <= 3000, "{}", log.bytes());
        let first = log.first_offset();
        assert!(first > 0);
        assert_eq!(
            all(&log, 0)[0].offset,
            first,
            "reads start at the first kept"
        );
        // Age: a segment goes once its newest entry is older than 10 ms;
        // at 95 the newest entries (90..99) keep theirs.
        log.apply_retention(None, Some(10), 95).unwrap();
        assert!(log.segment_count() >= 2 && log.first_offset() <= 85);
        log.apply_retention(None, Some(10), 1000).unwrap();
        assert_eq!(log.segment_count(), 1);
        let files: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files.len(), 1, "the disk is given back: {files:?}");
        drop(log);
        let (log, _) = StreamLog::open(&dir.0, 1000).unwrap();
        assert_eq!(log.next_offset(), 100);
        assert!(log.first_offset() > first);
    }

    #[test]
    fn a_torn_last_write_is_cut_and_counted() {
        let dir = Dir::new("torn");
        let (mut log, _) = StreamLog::open(&dir.0, 1 << 20).unwrap();
        for _ in 0..5 {
            log.append(1, None, &[1; 50]).unwrap();
        }
        log.sync().unwrap();
        let path = log.newest().path.clone();
        drop(log);
        // Half an entry at the end, then the zeros written ahead.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let mut half = 200u32.to_be_bytes().to_vec();
        half.extend_from_slice(&[9; 30]);
        f.write_all(&half).unwrap();
        f.write_all(&[0; 4096]).unwrap();
        drop(f);
        let (mut log, opened) = StreamLog::open(&dir.0, 1 << 20).unwrap();
        assert_eq!(opened.torn_bytes, 34);
        assert_eq!(log.next_offset(), 5);
        log.append(2, None, b"after").unwrap();
        log.sync().unwrap();
        drop(log);
        let (log, opened) = StreamLog::open(&dir.0, 1 << 20).unwrap();
        assert_eq!(opened.torn_bytes, 0);
        assert_eq!(all(&log, 5)[0].payload, b"after");
    }

    #[test]
    fn damage_is_refused_with_its_place() {
        let dir = Dir::new("damage");
        let (mut log, _) = StreamLog::open(&dir.0, 300).unwrap();
        for i in 0..40u64 {
            log.append(1, None, &i.to_be_bytes()).unwrap();
            log.sync().unwrap();
        }
        let oldest = log.segments[0].path.clone();
        let newest = log.newest().path.clone();
        drop(log);
        // A flipped byte in an old segment's first chunk's header.
        let bytes = std::fs::read(&oldest).unwrap();
        let mut bad = bytes.clone();
        bad[HEADER as usize + 30] ^= 0xff;
        std::fs::write(&oldest, &bad).unwrap();
        match StreamLog::open(&dir.0, 300) {
            Err(StreamLogError::Damaged { file, position, .. }) => {
                assert_eq!((file, position), (oldest.clone(), HEADER));
            }
            other => panic!("{:?}", other.map(|(_, o)| o)),
        }
        std::fs::write(&oldest, &bytes).unwrap();
        // A flipped byte in the newest segment's first chunk, with good
        // chunks after it: damage, not a torn write.
        let bytes = std::fs::read(&newest).unwrap();
        let mut bad = bytes.clone();
        bad[HEADER as usize + 20] ^= 0xff;
        std::fs::write(&newest, &bad).unwrap();
        assert!(matches!(
            StreamLog::open(&dir.0, 300),
            Err(StreamLogError::Damaged { .. })
        ));
        std::fs::write(&newest, &bytes).unwrap();
        // A missing segment in the middle.
        let (log, _) = StreamLog::open(&dir.0, 300).unwrap();
        let middle = log.segments[1].path.clone();
        drop(log);
        std::fs::remove_file(&middle).unwrap();
        assert!(matches!(
            StreamLog::open(&dir.0, 300),
            Err(StreamLogError::Damaged { .. })
        ));
    }

    #[test]
    fn chunks_are_osiris_chunks_a_client_reads_as_they_lie() {
        let dir = Dir::new("osiris");
        let (mut log, _) = StreamLog::open(&dir.0, 1 << 20).unwrap();
        log.append(1_700_000_000_000, None, b"\x01hello").unwrap();
        log.append(1_700_000_000_005, Some("eu"), b"\x01").unwrap();
        // Another kind starts another chunk.
        log.append(1_700_000_000_009, None, b"\x00other").unwrap();
        log.sync().unwrap();
        let chunks = log.chunks(0, usize::MAX).unwrap();
        assert_eq!(chunks.len(), 2);
        let c = &chunks[0];
        assert_eq!((c.first_offset, c.entries, c.kind), (0, 2, 1));
        let h = &c.header;
        assert_eq!(h[0], 0x50);
        assert_eq!(h[1], 0);
        assert_eq!(&h[2..4], &2u16.to_be_bytes());
        assert_eq!(&h[4..8], &2u32.to_be_bytes());
        assert_eq!(&h[8..16], &1_700_000_000_000i64.to_be_bytes());
        assert_eq!(&h[16..24], &1u64.to_be_bytes());
        assert_eq!(&h[24..32], &0u64.to_be_bytes());
        let mut data = vec![0; c.data_len as usize];
        c.file.read_exact_at(&mut data, c.data_at).unwrap();
        assert_eq!(data, b"\0\0\0\x05hello\0\0\0\0");
        assert_eq!(&h[32..36], &crc32fast::hash(&data).to_be_bytes());
        assert_eq!(&h[36..40], &(data.len() as u32).to_be_bytes());
        assert_eq!(
            &h[40..48],
            &[0; 8],
            "no trailer, bloom or kind for a client"
        );
        assert_eq!((chunks[1].first_offset, chunks[1].kind), (2, 0));
        // From the middle of a chunk: that chunk, whole.
        assert_eq!(log.chunks(1, usize::MAX).unwrap()[0].first_offset, 0);
        assert_eq!(log.chunks(2, usize::MAX).unwrap()[0].first_offset, 2);
        assert!(log.chunks(3, usize::MAX).unwrap().is_empty());
        // Entries read back with their kind and filter.
        let read = all(&log, 0);
        assert_eq!(read[0].payload, b"\x01hello");
        assert_eq!(read[1].filter.as_deref(), Some("eu"));
        assert_eq!(read[2].payload, b"\x00other");
        assert_eq!(read[2].timestamp, 1_700_000_000_009);
    }

    #[test]
    fn a_chunk_stops_at_a_frame_s_worth_of_data() {
        let dir = Dir::new("bigchunk");
        let (mut log, _) = StreamLog::open(&dir.0, 64 << 20).unwrap();
        let body = vec![1u8; 100 << 10];
        for _ in 0..25 {
            log.append(0, None, &body).unwrap();
        }
        log.sync().unwrap();
        let chunks = log.chunks(0, usize::MAX).unwrap();
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.data_len as usize <= CHUNK_DATA_MAX));
        assert_eq!(chunks.iter().map(|c| c.entries as usize).sum::<usize>(), 25);
    }

    #[test]
    fn an_older_format_is_refused_naming_its_version() {
        let dir = Dir::new("version");
        let (log, _) = StreamLog::open(&dir.0, 1 << 20).unwrap();
        let path = log.newest().path.clone();
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4] = 1;
        std::fs::write(&path, &bytes).unwrap();
        match StreamLog::open(&dir.0, 1 << 20) {
            Err(e @ StreamLogError::Damaged { .. }) => {
                assert!(e.to_string().contains("format version 1"), "{e}")
            }
            other => panic!("{:?}", other.map(|(_, o)| o)),
        }
    }

    /// Files on disk are hostile too: whatever a segment holds, opening
    /// and reading it refuses or reads, never panics, and what it reads
    /// is what was written.
    #[test]
    fn damaged_segments_never_panic_and_never_read_back_wrong() {
        let dir = Dir::new("fuzz");
        let (mut log, _) = StreamLog::open(&dir.0, 1 << 20).unwrap();
        let mut written = Vec::new();
        for i in 0..60u64 {
            let filter = (i % 4 == 0).then(|| format!("f{}", i % 3));
            let payload = [&[(i % 2) as u8][..], &i.to_be_bytes()].concat();
            log.append(7, filter.as_deref(), &payload).unwrap();
            written.push(payload);
            if i % 7 == 0 {
                log.sync().unwrap();
            }
        }
        log.sync().unwrap();
        let path = log.newest().path.clone();
        drop(log);
        let original = std::fs::read(&path).unwrap();
        for round in 0..400u32 {
            let mut bytes = original.clone();
            match round % 3 {
                0 => {
                    for _ in 0..1 + rand::random::<u32>() % 4 {
                        let at = rand::random::<u32>() as usize % bytes.len();
                        bytes[at] ^= 1 << (rand::random::<u32>() % 8);
                    }
                }
                1 => bytes.truncate(rand::random::<u32>() as usize % bytes.len()),
                _ => {
                    let at = HEADER as usize
                        + rand::random::<u32>() as usize % (bytes.len() - HEADER as usize);
                    let n = (rand::random::<u32>() % 64) as usize;
                    for b in &mut bytes[at..(at + n).min(original.len())] {
                        *b = rand::random();
                    }
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            if let Ok((log, _)) = StreamLog::open(&dir.0, 1 << 20) {
                let read = all(&log, 0);
                for e in &read {
                    assert_eq!(e.payload, written[e.offset as usize], "round {round}");
                }
                let _ = log.chunks(0, usize::MAX).unwrap();
            }
        }
    }
}

//! A stream's log: an append-only sequence of entries, each with an offset
//! (0, 1, 2, … for the stream's life), the time it was appended and an
//! optional filter value, in segment files that reading does not consume.
//! Retention removes whole segments, oldest first, as RabbitMQ's streams do.
//!
//! Files live in the stream's own directory, one per segment, named by the
//! segment's first offset (`00000000000000000000.seg`). A segment starts
//! with a header (`"LVST" ‖ version u8 ‖ 0 ×3 ‖ first offset u64 ‖ crc32 u32
//! of the previous 16 bytes ‖ 0 ×4`), then entries `len u32 ‖ crc32 u32 ‖
//! offset u64 ‖ timestamp i64 ‖ filter length u8 ‖ filter ‖ payload`, where
//! `len` counts what follows the crc and the crc covers it. Zeros after the
//! last entry are the end (files may be extended ahead of the data).
//!
//! Opening reads every entry and checks it, so damage is found at start-up,
//! never skipped: an entry that fails its check at the very end of the
//! newest segment is a write a crash cut short (it was never synced, so
//! never confirmed) and is cut off and counted; damage anywhere else refuses
//! the open, naming the file and position.
//!
//! In memory each segment keeps its offsets, times, size, a sparse index
//! (an offset and file position every [`INDEX_EVERY`] bytes) and a Bloom
//! filter of its filter values, so a reader seeks without scanning and
//! skips segments no entry of which can match its filter.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

const MAGIC: &[u8; 4] = b"LVST";
const VERSION: u8 = 1;
const HEADER: u64 = 24;
/// `len` and `crc`.
const ENTRY_PREFIX: usize = 8;
/// offset, timestamp and filter length: the least an entry's `len` counts.
const ENTRY_FIXED: usize = 17;
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
    /// Milliseconds since the Unix epoch, when it was appended.
    pub(crate) timestamp: i64,
    pub(crate) filter: Option<String>,
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

/// What opening found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Opened {
    /// Bytes of an unfinished last write cut off the newest segment.
    pub(crate) torn_bytes: u64,
}

/// Appended entries on their way to disk (see [`StreamLog::take_pending`]).
pub(crate) struct Pending {
    file: Arc<File>,
    at: u64,
    bytes: Vec<u8>,
    /// One past the last entry in `bytes`.
    end_offset: u64,
}

impl Pending {
    /// Writes the entries and waits until they are on disk.
    pub(crate) fn write(&self) -> std::io::Result<()> {
        self.file.write_all_at(&self.bytes, self.at)?;
        self.file.sync_data()
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
    /// Bytes in use: header and entries.
    len: u64,
    /// (offset, position) of an entry every `INDEX_EVERY` bytes.
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

    fn note(&mut self, offset: u64, timestamp: i64, filter: Option<&[u8]>, at: u64, len: u64) {
        if self.end_offset == self.first_offset {
            self.first_timestamp = timestamp;
        }
        if self
            .index
            .last()
            .is_none_or(|&(_, p)| at >= p + INDEX_EVERY)
        {
            self.index.push((offset, at));
        }
        match filter {
            Some(v) => self.bloom.insert(v),
            None => self.has_unfiltered = true,
        }
        self.last_timestamp = timestamp;
        self.end_offset = offset + 1;
        self.len = at + len;
    }

    /// The file position to start scanning from for `offset`.
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

pub(crate) struct StreamLog {
    dir: PathBuf,
    max_segment_bytes: u64,
    /// Oldest first; the last is written to.
    segments: Vec<Segment>,
    /// Appended entries not yet written.
    buffer: Vec<u8>,
    /// Where `buffer` goes in the newest segment.
    buffer_at: u64,
    /// One past the newest synced entry: what readers may see.
    synced_end: u64,
}

impl StreamLog {
    /// Opens (or creates) the log in `dir`, checking every entry.
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
            synced_end: 0,
        };
        if log.segments.is_empty() {
            log.roll(0)?;
        }
        log.buffer_at = log.newest().len;
        log.synced_end = log.next_offset();
        Ok((log, opened))
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
        self.newest().end_offset
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

    /// Queues an entry for the next [`sync`](Self::sync); its offset.
    /// A filter value longer than [`MAX_FILTER_LEN`] is cut there.
    pub(crate) fn append(
        &mut self,
        timestamp: i64,
        filter: Option<&str>,
        payload: &[u8],
    ) -> std::io::Result<u64> {
        if self.newest().len >= self.max_segment_bytes && !self.newest().is_empty() {
            self.sync()?;
            let next = self.next_offset();
            self.roll(next)?;
        }
        let filter = filter.map(|f| &f.as_bytes()[..f.len().min(MAX_FILTER_LEN)]);
        let offset = self.next_offset();
        let start = self.buffer.len();
        self.buffer.extend_from_slice(&[0; ENTRY_PREFIX]);
        self.buffer.extend_from_slice(&offset.to_be_bytes());
        self.buffer.extend_from_slice(&timestamp.to_be_bytes());
        let f = filter.unwrap_or_default();
        self.buffer.push(f.len() as u8);
        self.buffer.extend_from_slice(f);
        self.buffer.extend_from_slice(payload);
        let len = (self.buffer.len() - start - ENTRY_PREFIX) as u32;
        let crc = crc32fast::hash(&self.buffer[start + ENTRY_PREFIX..]);
        self.buffer[start..start + 4].copy_from_slice(&len.to_be_bytes());
        self.buffer[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
        let at = self.buffer_at + start as u64;
        let entry_len = (self.buffer.len() - start) as u64;
        self.segments
            .last_mut()
            .expect("a log has a segment")
            .note(offset, timestamp, filter, at, entry_len);
        Ok(offset)
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
        if self.buffer.is_empty() {
            return None;
        }
        let at = self.buffer_at;
        self.buffer_at += self.buffer.len() as u64;
        Some(Pending {
            file: self.newest().file.clone(),
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
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        file.write_all(&header(first_offset))?;
        file.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        let mut segment = Segment::empty(path, file, first_offset);
        segment.durable_len = HEADER;
        self.segments.push(segment);
        self.buffer_at = HEADER;
        Ok(())
    }

    /// The offset of the first entry appended at or after `timestamp`
    /// (ms), or the next offset if there is none.
    pub(crate) fn offset_at(&self, timestamp: i64) -> std::io::Result<u64> {
        let Some(segment) = self
            .segments
            .iter()
            .find(|s| !s.is_empty() && s.last_timestamp >= timestamp)
        else {
            return Ok(self.next_offset());
        };
        let mut found = segment.end_offset;
        self.scan_written(segment, segment.first_offset, |e| {
            if e.timestamp >= timestamp {
                found = e.offset;
                return false;
            }
            true
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
            self.scan_written(segment, read.next, |e| {
                if e.offset >= synced_end {
                    return false;
                }
                read.next = e.offset + 1;
                if filter.is_none_or(|f| f.matches(e.filter.as_deref().map(str::as_bytes))) {
                    bytes += e.payload.len();
                    read.entries.push(e);
                }
                full = read.entries.len() >= max_entries || bytes >= max_bytes;
                !full
            })?;
            if full {
                break;
            }
        }
        Ok(read)
    }

    /// Calls `each` with the segment's written entries from `from` on,
    /// while it returns true.
    fn scan_written(
        &self,
        segment: &Segment,
        from: u64,
        mut each: impl FnMut(Entry) -> bool,
    ) -> std::io::Result<()> {
        let end = segment.durable_len;
        let mut at = segment.seek(from);
        let mut file = Ahead::new(&segment.file);
        while at < end {
            let Some((entry, len)) = read_entry(&mut file, at, end)? else {
                break;
            };
            at += len;
            if entry.offset < from {
                continue;
            }
            if !each(entry) {
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
            std::fs::remove_file(&s.path)?;
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

/// Reads the entry at `at` (before `end`): the entry and its length, or
/// None at the end of the data (zeros). A bad entry is an `InvalidData`
/// error.
/// Bytes read from a segment ahead of the entry being read, so a run of
/// small entries costs one read, not two per entry.
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

fn read_entry(file: &mut Ahead<'_>, at: u64, end: u64) -> std::io::Result<Option<(Entry, u64)>> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    if end - at < ENTRY_PREFIX as u64 {
        return Err(bad("an entry's header runs past the end"));
    }
    let prefix = file.bytes(at, ENTRY_PREFIX, end)?;
    let len = u32::from_be_bytes(prefix[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(prefix[4..].try_into().expect("4 bytes"));
    if len == 0 && crc == 0 {
        return Ok(None);
    }
    if len < ENTRY_FIXED {
        return Err(bad("an entry shorter than its fixed fields"));
    }
    if (len as u64) > end - at - ENTRY_PREFIX as u64 {
        return Err(bad("an entry runs past the end"));
    }
    let buf = file.bytes(at + ENTRY_PREFIX as u64, len, end)?;
    if crc32fast::hash(buf) != crc {
        return Err(bad("an entry fails its checksum"));
    }
    let offset = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
    let timestamp = i64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
    let filter_len = buf[16] as usize;
    if ENTRY_FIXED + filter_len > len {
        return Err(bad("an entry's filter value runs past it"));
    }
    let filter = (filter_len > 0)
        .then(|| String::from_utf8_lossy(&buf[ENTRY_FIXED..ENTRY_FIXED + filter_len]).into_owned());
    let payload = buf[ENTRY_FIXED + filter_len..].to_vec();
    Ok(Some((
        Entry {
            offset,
            timestamp,
            filter,
            payload,
        },
        (ENTRY_PREFIX + len) as u64,
    )))
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
    if h != header(first_offset) {
        return Err(damaged(&path, 0, "bad segment header"));
    }
    let mut segment = Segment::empty(path, file, first_offset);
    let mut at = HEADER;
    let file = segment.file.clone();
    let mut ahead = Ahead::new(&file);
    while at < file_len {
        match read_entry(&mut ahead, at, file_len) {
            Ok(None) => break,
            Ok(Some((e, len))) => {
                if e.offset != segment.end_offset {
                    return Err(damaged(
                        &segment.path,
                        at,
                        format!("entry {} where {} was due", e.offset, segment.end_offset),
                    ));
                }
                let filter = e.filter.as_deref().map(str::as_bytes);
                segment.note(e.offset, e.timestamp, filter, at, len);
                at += len;
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
        // Past the last good entry: zeros written ahead, or a write the
        // crash cut short. Either way the file ends here.
        torn = last_nonzero(&segment.file, at, file_len)?.map_or(0, |p| p + 1 - at);
        segment.file.set_len(at)?;
        segment.file.sync_all()?;
    }
    Ok((segment, torn))
}

/// Whether the bad entry at `at` is the newest segment's last write cut
/// short: no complete entry can follow it, so it was never synced. An
/// entry that claims more bytes than the file holds, or whose bytes after
/// it are all zeros, is such a write.
fn torn_tail(file: &File, at: u64, file_len: u64) -> std::io::Result<bool> {
    let mut prefix = [0u8; 4];
    if file_len - at < 4 {
        return Ok(true);
    }
    file.read_exact_at(&mut prefix, at)?;
    let claimed_end = at + ENTRY_PREFIX as u64 + u64::from(u32::from_be_bytes(prefix));
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
        let (mut log, _) = StreamLog::open(&dir.0, 300).unwrap();
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
            assert_eq!(e.timestamp, 1000 + i as i64);
            assert_eq!(e.filter.as_deref(), (i % 3 == 0).then_some("red"));
        }
        assert_eq!(all(&log, 37)[0].offset, 37);
        let bytes = log.bytes();
        drop(log);

        let (log, opened) = StreamLog::open(&dir.0, 300).unwrap();
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
            log.append(10_000 + i * 10, None, b"x").unwrap();
        }
        log.sync().unwrap();
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
        }
        log.sync().unwrap();
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
        }
        log.sync().unwrap();
        let oldest = log.segments[0].path.clone();
        let newest = log.newest().path.clone();
        drop(log);
        // A flipped byte in an old segment's first entry.
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
        // A flipped byte in the newest segment's first entry, with good
        // entries after it: damage, not a torn write.
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
}

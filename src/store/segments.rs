//! Message bodies in append-only segment files, outside sled.
//!
//! sled's memory grows with the data it holds (its page table keeps a record
//! per node ever written: ~250 MB resident after 5 M 1 KiB messages, ~900 MB
//! while draining them), and every body cost two sled writes. Bodies now go
//! to `messages/NNNNNNNNNNNNNNNN.seg` files, appended once per batch and
//! fsynced before the index entries that point at them are written. The
//! index (in sled) stays small: a few dozen bytes per queued message.
//!
//! A segment is deleted once no index entry points into it, which gives the
//! disk back after a burst. A segment starts with a header (`"LVSG" ‖
//! crc32 u32 ‖ version u8 ‖ 0 ×3 ‖ segment u32`), then records `len u32 ‖
//! crc32 u32 ‖ message`; start-up reads every record a queue points at
//! ([`check`]), so a damaged body is found before anyone waits for it.

use super::journal::Recorder;
use super::record;
use crate::message::Message;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where a body sits: segment number, offset of its record, record length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) segment: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

const RECORD_HEADER: usize = 8;
/// Bytes of a segment's header; its first record follows.
pub(crate) const HEADER: u64 = 16;
const MAGIC: &[u8; 4] = b"LVSG";
const VERSION: u8 = 1;
/// Zeros written past the end of a segment by a small batch, and what
/// counts as small (see [`Segments::zero_ahead`]).
const ZERO_AHEAD: u64 = 4 << 20;
const ZERO_AHEAD_BELOW: usize = 256 << 10;

pub(crate) struct Segments {
    dir: PathBuf,
    segment_size: u64,
    /// The segment being appended to and its length.
    current: u32,
    current_file: File,
    current_len: u64,
    /// Bytes in the current segment's file: records, then zeros written ahead.
    file_len: u64,
    /// Index entries pointing into each segment.
    live: HashMap<u32, u64>,
    /// Open handles for reading.
    readers: HashMap<u32, File>,
    /// Appended since the last sync.
    buffer: Vec<u8>,
    /// Segments finished since the last [`collect`](Self::collect).
    closed: Vec<u32>,
    files: Recorder,
}

impl Segments {
    /// Opens the segment directory. `live` counts index entries per segment
    /// (from recovery); segments nobody points into are deleted, and new
    /// writes go to a fresh segment after the highest existing one.
    pub(crate) fn open(
        dir: &Path,
        segment_size: u64,
        live: HashMap<u32, u64>,
        files: Recorder,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut highest = 0;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(n) = segment_number(&path) else {
                continue;
            };
            highest = highest.max(n);
            if !live.contains_key(&n) {
                files.remove_file(&path)?;
            }
        }
        let current = highest + 1;
        let current_file = create_segment(dir, current, &files)?;
        Ok(Segments {
            dir: dir.to_owned(),
            segment_size: segment_size.max(1),
            current,
            current_file,
            current_len: HEADER,
            file_len: HEADER,
            live,
            readers: HashMap::new(),
            buffer: Vec::new(),
            closed: Vec::new(),
            files,
        })
    }

    /// Queues a body for the next [`sync`](Self::sync) and says where it will be.
    pub(crate) fn append(&mut self, message: &Message) -> std::io::Result<Location> {
        if self.current_len >= self.segment_size {
            self.roll()?;
        }
        let start = self.buffer.len();
        self.buffer.extend_from_slice(&[0; RECORD_HEADER]);
        record::encode_message_into(message, &mut self.buffer);
        let body_len = (self.buffer.len() - start - RECORD_HEADER) as u32;
        let crc = crc32fast::hash(&self.buffer[start + RECORD_HEADER..]);
        self.buffer[start..start + 4].copy_from_slice(&body_len.to_be_bytes());
        self.buffer[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
        let location = Location {
            segment: self.current,
            offset: self.current_len,
            len: (RECORD_HEADER as u32) + body_len,
        };
        self.current_len += u64::from(location.len);
        Ok(location)
    }

    /// Writes and fsyncs what [`append`](Self::append) queued.
    pub(crate) fn sync(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let written = self.buffer.len();
        let at = self.current_len - written as u64;
        let (dir, current) = (&self.dir, self.current);
        self.files
            .write_at_with(&self.current_file, &self.buffer, at, || {
                segment_path(dir, current)
            })?;
        self.buffer.clear();
        if self.current_len > self.file_len {
            self.file_len = self.current_len;
            if written < ZERO_AHEAD_BELOW {
                self.zero_ahead()?;
            }
        }
        self.current_file.sync_data()
    }

    /// Extending a file makes its fdatasync commit metadata too, about
    /// twice the cost of overwriting (measured here: 240 vs 130 µs), and
    /// small batches under confirms wait on exactly that. So a small batch
    /// that extends the segment also writes zeros ahead, and the next ones
    /// overwrite them. Big batches (a backlog filling) skip it: their sync
    /// is dominated by the data, and the zeros would double what they write.
    /// Followers are not sent the zeros: a segment read back never looks
    /// past its records.
    fn zero_ahead(&mut self) -> std::io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let to = (self.file_len + ZERO_AHEAD).min(self.segment_size.max(self.file_len));
        while self.file_len < to {
            let n = ((to - self.file_len) as usize).min(ZEROS.len());
            self.current_file.write_all_at(&ZEROS[..n], self.file_len)?;
            self.file_len += n as u64;
        }
        Ok(())
    }

    /// Empties the current segment if no index entry points into it and
    /// nothing is waiting to be written (the caller knows no body in flight
    /// lies in it): it is otherwise kept until full, holding on to space a
    /// full disk needs back.
    pub(crate) fn give_back_current(&mut self) -> std::io::Result<()> {
        if self.current_len <= HEADER
            || !self.buffer.is_empty()
            || self.live.get(&self.current).is_some_and(|n| *n > 0)
        {
            return Ok(());
        }
        self.readers.remove(&self.current);
        let path = segment_path(&self.dir, self.current);
        self.files.set_len(&self.current_file, &path, HEADER)?;
        self.current_len = HEADER;
        self.file_len = HEADER;
        Ok(())
    }

    pub(crate) fn current(&self) -> u32 {
        self.current
    }

    /// Forgets the bodies appended since the last sync, which failed: the
    /// next appends overwrite them.
    pub(crate) fn discard_unwritten(&mut self) {
        self.current_len -= self.buffer.len() as u64;
        self.buffer.clear();
    }

    /// Starts a new segment (after writing out the current one).
    fn roll(&mut self) -> std::io::Result<()> {
        self.sync()?;
        // Created before anything changes, so a failure leaves the
        // current segment as it was.
        let next = create_segment(&self.dir, self.current + 1, &self.files)?;
        self.closed.push(self.current);
        self.current += 1;
        self.current_file = next;
        self.current_len = HEADER;
        self.file_len = HEADER;
        Ok(())
    }

    /// Deletes finished segments that no entry points into (their bodies
    /// were all acknowledged before reaching the index). Call once the
    /// batch's entries are referenced.
    pub(crate) fn collect(&mut self) {
        for segment in std::mem::take(&mut self.closed) {
            if self.live.get(&segment).copied().unwrap_or(0) == 0 {
                self.delete(segment);
            }
        }
    }

    /// An index entry now points at `segment`.
    pub(crate) fn reference(&mut self, segment: u32) {
        *self.live.entry(segment).or_default() += 1;
    }

    /// An index entry pointing at `segment` is gone (and on disk so). The
    /// segment is deleted with its last reference unless still appended to.
    pub(crate) fn release(&mut self, segment: u32) {
        let Some(n) = self.live.get_mut(&segment) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 && segment != self.current {
            self.delete(segment);
        }
    }

    fn delete(&mut self, segment: u32) {
        self.live.remove(&segment);
        self.readers.remove(&segment);
        let path = segment_path(&self.dir, segment);
        if let Err(e) = self.files.remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete a drained segment");
            }
        }
    }

    /// Reads a body back; an error names the file.
    pub(crate) fn read(&mut self, at: Location) -> Result<Message, String> {
        // Named only in errors: formatting it for every body read was a
        // sixth of the CPU of draining a backlog.
        let path = || segment_path(&self.dir, at.segment);
        if at.segment == self.current
            && at.offset + u64::from(at.len) > self.current_len - self.buffer.len() as u64
        {
            // Appended in this batch and not yet written: cannot happen for
            // loads (they follow the sync), but answer sensibly.
            return Err(format!("{} is not written yet", path().display()));
        }
        let file = match self.readers.get(&at.segment) {
            Some(f) => f,
            None => {
                let f = File::open(path()).map_err(|e| format!("{}: {e}", path().display()))?;
                self.readers.entry(at.segment).or_insert(f)
            }
        };
        let mut raw = vec![0u8; at.len as usize];
        file.read_exact_at(&mut raw, at.offset)
            .map_err(|e| format!("{} at {}: {e}", path().display(), at.offset))?;
        let damaged = || format!("{} is damaged at offset {}", path().display(), at.offset);
        if raw.len() < RECORD_HEADER {
            return Err(damaged());
        }
        let len = u32::from_be_bytes(raw[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(raw[4..8].try_into().expect("4 bytes"));
        let body = &raw[RECORD_HEADER..];
        if len != body.len() || crc32fast::hash(body) != crc {
            return Err(damaged());
        }
        record::decode_message(body).ok_or_else(damaged)
    }
}

/// A new segment file holding its header, durable with its directory entry.
fn create_segment(dir: &Path, segment: u32, files: &Recorder) -> std::io::Result<File> {
    let path = segment_path(dir, segment);
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    files.created(&path);
    files.write_at(&f, &path, &header(segment), 0)?;
    f.sync_data()?;
    sync_dir(&segment_path(dir, segment))?;
    Ok(f)
}

fn header(segment: u32) -> [u8; HEADER as usize] {
    let mut b = [0u8; HEADER as usize];
    b[..4].copy_from_slice(MAGIC);
    b[8] = VERSION;
    b[12..16].copy_from_slice(&segment.to_be_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..4]);
    h.update(&b[8..]);
    b[4..8].copy_from_slice(&h.finalize().to_be_bytes());
    b
}

/// What a segment file holds, read through once at start-up.
pub(crate) struct SegmentCheck {
    /// What is wrong with the file as a whole (missing, bad header).
    pub(crate) problem: Option<String>,
    /// Byte ranges of records that fail their checksum.
    pub(crate) bad: Vec<(u64, u64)>,
    /// Where the readable records end (zeros written ahead, a torn tail
    /// or the end of the file follow).
    pub(crate) end: u64,
}

impl SegmentCheck {
    /// Whether the record at `at` reads back intact.
    pub(crate) fn holds(&self, at: Location) -> bool {
        let end = at.offset + u64::from(at.len);
        self.problem.is_none()
            && at.offset >= HEADER
            && end <= self.end
            && !self
                .bad
                .iter()
                .any(|&(from, to)| at.offset < to && from < end)
    }
}

/// Reads segment `segment` through, checking its header and every record.
pub(crate) fn check(dir: &Path, segment: u32) -> std::io::Result<SegmentCheck> {
    let path = segment_path(dir, segment);
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(SegmentCheck {
                problem: Some("the message segment is missing".into()),
                bad: Vec::new(),
                end: 0,
            })
        }
        Err(e) => return Err(e),
    };
    let mut out = SegmentCheck {
        problem: None,
        bad: Vec::new(),
        end: HEADER,
    };
    if raw.len() < HEADER as usize || raw[..HEADER as usize] != header(segment) {
        out.problem = Some("the message segment's header is missing or damaged".into());
        return Ok(out);
    }
    let mut at = HEADER as usize;
    while at + RECORD_HEADER <= raw.len() {
        let len = u32::from_be_bytes(raw[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(raw[at + 4..at + 8].try_into().expect("4 bytes"));
        if len == 0 {
            break; // zeros written ahead
        }
        let end = at + RECORD_HEADER + len;
        if end > raw.len() {
            out.bad.push((at as u64, u64::MAX));
            break;
        }
        if crc32fast::hash(&raw[at + RECORD_HEADER..end]) != crc {
            // If the length is what is damaged, the records after it are
            // misread too and fail in turn: damage is over-reported, never missed.
            out.bad.push((at as u64, end as u64));
        }
        at = end;
    }
    out.end = at as u64;
    Ok(out)
}

pub(crate) fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:016}.seg"))
}

fn segment_number(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".seg")?.parse().ok()
}

/// fsyncs the directory holding `path`.
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(n: usize) -> Message {
        Message::new(
            "ex".into(),
            format!("rk{n}"),
            Bytes::from_static(&[0x10, 0, 2]),
            Bytes::from(vec![n as u8; n]),
            true,
        )
    }

    #[test]
    fn bodies_read_back_and_drained_segments_are_deleted() {
        let dir = std::env::temp_dir().join(format!("leveret-segments-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Segments::open(&dir, 1000, HashMap::new(), Recorder::default()).unwrap();
        let locations: Vec<Location> = (0..30)
            .map(|n| s.append(&message(n * 10)).unwrap())
            .collect();
        s.sync().unwrap();
        for (n, at) in locations.iter().enumerate() {
            s.reference(at.segment);
            let m = s.read(*at).unwrap();
            assert_eq!(
                (m.routing_key, m.body.len()),
                (format!("rk{}", n * 10), n * 10)
            );
        }
        let first = locations[0].segment;
        assert!(locations.last().unwrap().segment > first, "rolled over");
        for at in locations.iter().filter(|l| l.segment == first) {
            s.release(at.segment);
        }
        assert!(
            !segment_path(&dir, first).exists(),
            "drained segment deleted"
        );
        assert!(segment_path(&dir, locations[29].segment).exists());

        // Damage is detected and named.
        let at = locations[29];
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(&dir, at.segment))
            .unwrap();
        f.write_all_at(b"garbage!", at.offset + 10).unwrap();
        let err = s.read(at).unwrap_err();
        assert!(err.contains("damaged") && err.contains(".seg"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn small_batches_write_zeros_ahead_and_big_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("leveret-zeros-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Segments::open(&dir, 64 << 20, HashMap::new(), Recorder::default()).unwrap();
        let file_len = |s: &Segments| {
            std::fs::metadata(segment_path(&dir, s.current))
                .unwrap()
                .len()
        };
        let mut locations = Vec::new();
        locations.push(s.append(&message(100)).unwrap());
        s.sync().unwrap();
        let end = s.current_len;
        assert_eq!(file_len(&s), end + ZERO_AHEAD, "zeros written ahead");
        for n in 0..50 {
            locations.push(s.append(&message(n)).unwrap());
            s.sync().unwrap();
        }
        assert_eq!(
            file_len(&s),
            end + ZERO_AHEAD,
            "later batches overwrite the zeros"
        );

        // A batch of 256 KiB or more that passes the zeros writes only its data.
        let big = Message::new(
            "ex".into(),
            "big".into(),
            Bytes::from_static(&[0x10, 0, 2]),
            Bytes::from(vec![7u8; ZERO_AHEAD as usize]),
            true,
        );
        locations.push(s.append(&big).unwrap());
        s.sync().unwrap();
        assert_eq!(file_len(&s), s.current_len);
        for (i, at) in locations.iter().enumerate() {
            let m = s.read(*at).unwrap();
            let expected = match i {
                0 => 100,
                51 => ZERO_AHEAD as usize,
                _ => i - 1,
            };
            assert_eq!(m.body.len(), expected);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

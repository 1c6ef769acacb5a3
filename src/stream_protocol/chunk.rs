//! Osiris chunks, the unit a Deliver frame carries (osiris_log.erl's chunk
//! format): clients parse them byte by byte, so this is osiris's layout
//! exactly. A 48-byte header (`magic 5 ‖ version 0` in one byte, chunk type,
//! entry and record counts, timestamp, epoch, first offset, the CRC-32 of
//! the entry data, data and trailer lengths, bloom filter size, 3 reserved
//! bytes), then the entries as "simple entries" (`0` bit ‖ 31-bit size ‖
//! body). Leveret sends no bloom filter and no trailer.

use crate::store::stream_log::{client_header, CHUNK_HEADER as HEADER};
use bytes::{BufMut, BytesMut};

/// Entries one chunk holds at most (the header's count is a u16).
pub(crate) const MAX_ENTRIES: usize = u16::MAX as usize;

/// Writes a chunk into `buf` as its entries are added; the header is
/// completed by [`ChunkWriter::finish`].
pub(crate) struct ChunkWriter<'b> {
    buf: &'b mut BytesMut,
    start: usize,
    entries: u16,
    crc: crc32fast::Hasher,
}

impl<'b> ChunkWriter<'b> {
    pub(crate) fn begin(buf: &'b mut BytesMut) -> ChunkWriter<'b> {
        let start = buf.len();
        buf.put_bytes(0, HEADER);
        ChunkWriter {
            buf,
            start,
            entries: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Adds one entry; false (and nothing written) when the chunk is full
    /// or the body too large for a simple entry.
    pub(crate) fn push(&mut self, body: &[u8]) -> bool {
        if self.entries as usize >= MAX_ENTRIES || body.len() > 0x7fff_ffff {
            return false;
        }
        let size = (body.len() as u32).to_be_bytes();
        self.crc.update(&size);
        self.crc.update(body);
        self.buf.put_slice(&size);
        self.buf.put_slice(body);
        self.entries += 1;
        true
    }

    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }

    /// Bytes of the chunk so far, header included.
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Completes the header: the chunk's first offset and timestamp.
    pub(crate) fn finish(self, first_offset: u64, timestamp: i64) {
        let data_len = (self.buf.len() - self.start - HEADER) as u32;
        let header = client_header(
            first_offset,
            self.entries,
            timestamp,
            self.crc.finalize(),
            data_len,
        );
        self.buf[self.start..self.start + HEADER].copy_from_slice(&header);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_as_osiris_writes_it() {
        let mut buf = BytesMut::new();
        buf.put_u8(0xaa); // something before: the chunk starts where it is
        let mut w = ChunkWriter::begin(&mut buf);
        assert!(w.push(b"hello"));
        assert!(w.push(b""));
        w.finish(100, 1_700_000_000_000);
        let c = &buf[1..];
        assert_eq!(c.len(), HEADER + 4 + 5 + 4);
        assert_eq!(c[0], 0x50);
        assert_eq!(c[1], 0);
        assert_eq!(&c[2..4], &2u16.to_be_bytes());
        assert_eq!(&c[4..8], &2u32.to_be_bytes());
        assert_eq!(&c[8..16], &1_700_000_000_000i64.to_be_bytes());
        assert_eq!(&c[16..24], &1u64.to_be_bytes());
        assert_eq!(&c[24..32], &100u64.to_be_bytes());
        let data = &c[HEADER..];
        assert_eq!(&c[32..36], &crc32fast::hash(data).to_be_bytes());
        assert_eq!(&c[36..40], &(data.len() as u32).to_be_bytes());
        assert_eq!(&c[40..48], &[0; 8]);
        assert_eq!(data, b"\0\0\0\x05hello\0\0\0\0");
    }
}

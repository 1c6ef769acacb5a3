//! The replication protocol's frames: `u32 length ‖ u8 kind ‖ payload`,
//! big-endian, each at most `MAX_FRAME` bytes. Everything read is checked
//! before use; a bad frame ends the connection.

use crate::store::journal::{Change, SledTree};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame either side accepts.
pub(crate) const MAX_FRAME: usize = 2 << 20;
/// Largest piece of a file one `Write` frame carries.
pub(crate) const MAX_WRITE: usize = 1 << 20;
const MAX_PATH: usize = 1024;
pub(crate) const NONCE: usize = 32;

#[derive(Debug, PartialEq)]
pub(crate) enum Frame {
    /// Leader → follower, first: prove you know the secret over this.
    Challenge {
        nonce: [u8; NONCE],
    },
    /// Follower → leader: who it is, its proof, and its own challenge.
    Hello {
        node: String,
        proof: [u8; 32],
        nonce: [u8; NONCE],
    },
    /// Leader → follower: the leader's proof over the follower's nonce.
    Welcome {
        proof: [u8; 32],
    },
    /// Follower → leader: one file it holds (the list ends with `FilesEnd`).
    File {
        path: Arc<str>,
        len: u64,
        sha256: [u8; 32],
    },
    FilesEnd,
    /// Leader → follower: a change to apply.
    Change(Change),
    /// Leader → follower: empty a sled tree (a full sync refills it).
    SledClear(SledTree),
    /// Leader → follower: every change before `position` was sent; make
    /// them durable and acknowledge. `copied` marks the end of a full sync.
    Mark {
        position: u64,
        copied: bool,
    },
    /// Follower → leader: every change before `position` is on its disk.
    Ack {
        position: u64,
    },
}

const CHALLENGE: u8 = 1;
const HELLO: u8 = 2;
const WELCOME: u8 = 3;
const FILE: u8 = 4;
const FILES_END: u8 = 5;
const WRITE: u8 = 10;
const SET_LEN: u8 = 11;
const REMOVE: u8 = 12;
const RENAME: u8 = 13;
const SLED: u8 = 14;
const SLED_CLEAR: u8 = 15;
const MARK: u8 = 20;
const ACK: u8 = 21;

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u16(s.len() as u16);
    b.put_slice(s.as_bytes());
}

/// Encodes `frame` (with its length) onto `out`. A `Write` bigger than
/// `MAX_WRITE` must be split by the caller.
pub(crate) fn encode(frame: &Frame, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32(0);
    match frame {
        Frame::Challenge { nonce } => {
            out.put_u8(CHALLENGE);
            out.put_slice(nonce);
        }
        Frame::Hello { node, proof, nonce } => {
            out.put_u8(HELLO);
            put_str(out, node);
            out.put_slice(proof);
            out.put_slice(nonce);
        }
        Frame::Welcome { proof } => {
            out.put_u8(WELCOME);
            out.put_slice(proof);
        }
        Frame::File { path, len, sha256 } => {
            out.put_u8(FILE);
            put_str(out, path);
            out.put_u64(*len);
            out.put_slice(sha256);
        }
        Frame::FilesEnd => out.put_u8(FILES_END),
        Frame::Change(Change::Write { path, at, bytes }) => {
            out.put_u8(WRITE);
            put_str(out, path);
            out.put_u64(*at);
            out.put_slice(bytes);
        }
        Frame::Change(Change::SetLen { path, len }) => {
            out.put_u8(SET_LEN);
            put_str(out, path);
            out.put_u64(*len);
        }
        Frame::Change(Change::Remove { path }) => {
            out.put_u8(REMOVE);
            put_str(out, path);
        }
        Frame::Change(Change::Rename { from, to }) => {
            out.put_u8(RENAME);
            put_str(out, from);
            put_str(out, to);
        }
        Frame::Change(Change::Sled { tree, key, value }) => {
            out.put_u8(SLED);
            out.put_u8(*tree as u8);
            out.put_u32(key.len() as u32);
            out.put_slice(key);
            match value {
                Some(v) => {
                    out.put_u8(1);
                    out.put_slice(v);
                }
                None => out.put_u8(0),
            }
        }
        Frame::SledClear(tree) => {
            out.put_u8(SLED_CLEAR);
            out.put_u8(*tree as u8);
        }
        Frame::Mark { position, copied } => {
            out.put_u8(MARK);
            out.put_u64(*position);
            out.put_u8(u8::from(*copied));
        }
        Frame::Ack { position } => {
            out.put_u8(ACK);
            out.put_u64(*position);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Splits a change into frames no bigger than the protocol allows.
pub(crate) fn split(change: Change, out: &mut Vec<Frame>) {
    match change {
        Change::Write { path, at, bytes } if bytes.len() > MAX_WRITE => {
            let mut done = 0;
            while done < bytes.len() {
                let n = (bytes.len() - done).min(MAX_WRITE);
                out.push(Frame::Change(Change::Write {
                    path: path.clone(),
                    at: at + done as u64,
                    bytes: bytes.slice(done..done + n),
                }));
                done += n;
            }
        }
        Change::Sled {
            ref key, ref value, ..
        } if key.len() + value.as_ref().map_or(0, Bytes::len) > MAX_WRITE => {
            // sled values the store writes are records of a few KB at most.
            tracing::error!(
                bytes = key.len(),
                "a sled record too big to replicate was skipped"
            );
        }
        change => out.push(Frame::Change(change)),
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Bad(&'static str),
}

/// Largest frame of the handshake, read before the peer proved anything.
pub(crate) const MAX_HANDSHAKE: usize = 1024;

/// Whether `buf` begins with a whole frame (reading it will not wait).
pub(crate) fn whole_frame(buf: &[u8]) -> bool {
    match buf.get(..4) {
        Some(len) => {
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            buf.len() - 4 >= len
        }
        None => false,
    }
}

/// Reads one frame.
pub(crate) async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    read_at_most(r, MAX_FRAME).await
}

/// Reads one frame of at most `max` bytes (the handshake's are small: a
/// stranger must not make either side allocate more).
pub(crate) async fn read_at_most<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Frame, WireError> {
    let len = r.read_u32().await? as usize;
    if len == 0 || len > max {
        return Err(WireError::Bad("frame length"));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    decode(Bytes::from(buf))
}

pub(crate) async fn write<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    encode(frame, &mut out);
    w.write_all(&out).await
}

fn need(b: &Bytes, n: usize) -> Result<(), WireError> {
    if b.remaining() < n {
        Err(WireError::Bad("truncated"))
    } else {
        Ok(())
    }
}

fn get_str(b: &mut Bytes) -> Result<Arc<str>, WireError> {
    need(b, 2)?;
    let n = b.get_u16() as usize;
    if n > MAX_PATH {
        return Err(WireError::Bad("name too long"));
    }
    need(b, n)?;
    let s = b.split_to(n);
    std::str::from_utf8(&s)
        .map(Arc::from)
        .map_err(|_| WireError::Bad("name not UTF-8"))
}

fn get_array<const N: usize>(b: &mut Bytes) -> Result<[u8; N], WireError> {
    need(b, N)?;
    let mut a = [0u8; N];
    b.copy_to_slice(&mut a);
    Ok(a)
}

fn get_u64(b: &mut Bytes) -> Result<u64, WireError> {
    need(b, 8)?;
    Ok(b.get_u64())
}

fn tree(n: u8) -> Result<SledTree, WireError> {
    SledTree::from_u8(n).ok_or(WireError::Bad("sled tree"))
}

pub(crate) fn decode(mut b: Bytes) -> Result<Frame, WireError> {
    need(&b, 1)?;
    let kind = b.get_u8();
    let frame = match kind {
        CHALLENGE => Frame::Challenge {
            nonce: get_array(&mut b)?,
        },
        HELLO => Frame::Hello {
            node: get_str(&mut b)?.to_string(),
            proof: get_array(&mut b)?,
            nonce: get_array(&mut b)?,
        },
        WELCOME => Frame::Welcome {
            proof: get_array(&mut b)?,
        },
        FILE => Frame::File {
            path: get_str(&mut b)?,
            len: get_u64(&mut b)?,
            sha256: get_array(&mut b)?,
        },
        FILES_END => Frame::FilesEnd,
        WRITE => {
            let path = get_str(&mut b)?;
            let at = get_u64(&mut b)?;
            let bytes = b.split_to(b.len());
            Frame::Change(Change::Write { path, at, bytes })
        }
        SET_LEN => Frame::Change(Change::SetLen {
            path: get_str(&mut b)?,
            len: get_u64(&mut b)?,
        }),
        REMOVE => Frame::Change(Change::Remove {
            path: get_str(&mut b)?,
        }),
        RENAME => Frame::Change(Change::Rename {
            from: get_str(&mut b)?,
            to: get_str(&mut b)?,
        }),
        SLED => {
            need(&b, 5)?;
            let tree = tree(b.get_u8())?;
            let n = b.get_u32() as usize;
            need(&b, n + 1)?;
            let key = b.split_to(n);
            let value = match b.get_u8() {
                0 => None,
                1 => Some(b.split_to(b.len())),
                _ => return Err(WireError::Bad("sled value flag")),
            };
            Frame::Change(Change::Sled { tree, key, value })
        }
        SLED_CLEAR => {
            need(&b, 1)?;
            Frame::SledClear(tree(b.get_u8())?)
        }
        MARK => {
            let position = get_u64(&mut b)?;
            need(&b, 1)?;
            Frame::Mark {
                position,
                copied: b.get_u8() == 1,
            }
        }
        ACK => Frame::Ack {
            position: get_u64(&mut b)?,
        },
        _ => return Err(WireError::Bad("unknown kind")),
    };
    if b.has_remaining() {
        return Err(WireError::Bad("trailing bytes"));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut out = BytesMut::new();
        encode(&frame, &mut out);
        let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 4);
        assert_eq!(decode(out.freeze().slice(4..)).unwrap(), frame);
    }

    #[test]
    fn every_frame_reads_back() {
        round_trip(Frame::Challenge { nonce: [7; NONCE] });
        round_trip(Frame::Hello {
            node: "b".into(),
            proof: [1; 32],
            nonce: [2; NONCE],
        });
        round_trip(Frame::File {
            path: "queues/00000001/files".into(),
            len: 9,
            sha256: [3; 32],
        });
        round_trip(Frame::FilesEnd);
        round_trip(Frame::Change(Change::Write {
            path: "messages/1.seg".into(),
            at: 44,
            bytes: Bytes::from_static(b"abc"),
        }));
        round_trip(Frame::Change(Change::SetLen {
            path: "x".into(),
            len: 3,
        }));
        round_trip(Frame::Change(Change::Remove { path: "x".into() }));
        round_trip(Frame::Change(Change::Rename {
            from: "a".into(),
            to: "b".into(),
        }));
        round_trip(Frame::Change(Change::Sled {
            tree: SledTree::Access,
            key: Bytes::from_static(b"k"),
            value: Some(Bytes::from_static(b"v")),
        }));
        round_trip(Frame::Change(Change::Sled {
            tree: SledTree::Marks,
            key: Bytes::from_static(b"k"),
            value: None,
        }));
        round_trip(Frame::SledClear(SledTree::Meta));
        round_trip(Frame::Mark {
            position: 5,
            copied: true,
        });
        round_trip(Frame::Ack { position: 9 });
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (seed >> (i % 8 * 8)) as u8 ^ i as u8)
                .collect();
            let _ = decode(Bytes::from(bytes));
        }
    }

    #[test]
    fn a_whole_frame_is_told_from_a_part() {
        let mut out = BytesMut::new();
        encode(&Frame::Ack { position: 7 }, &mut out);
        assert!(whole_frame(&out));
        assert!(!whole_frame(&out[..out.len() - 1]));
        assert!(!whole_frame(&out[..3]));
        assert!(!whole_frame(&[]));
        out.extend_from_slice(&[0, 0]);
        assert!(whole_frame(&out), "a whole frame and the start of another");
    }

    #[tokio::test]
    async fn a_big_handshake_frame_is_refused_before_it_is_read() {
        let mut wire: &[u8] = &[0, 0x10, 0, 0, HELLO];
        assert!(matches!(
            read_at_most(&mut wire, MAX_HANDSHAKE).await,
            Err(WireError::Bad("frame length"))
        ));
    }

    #[test]
    fn big_writes_are_split() {
        let mut frames = Vec::new();
        split(
            Change::Write {
                path: "p".into(),
                at: 10,
                bytes: Bytes::from(vec![1; MAX_WRITE * 2 + 5]),
            },
            &mut frames,
        );
        assert_eq!(frames.len(), 3);
        let Frame::Change(Change::Write { at, bytes, .. }) = &frames[2] else {
            panic!()
        };
        assert_eq!((*at, bytes.len()), (10 + 2 * MAX_WRITE as u64, 5));
    }
}

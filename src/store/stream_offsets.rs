//! Values stored on the server per stream and name: the offsets of named
//! readers (AMQP 0-9-1 consumers that track their offset, and the stream
//! protocol's StoreOffset; each the last offset its reader processed), and
//! publishers' last publishing ids (the stream protocol's deduplication).
//!
//! Each file (`offsets`, `publishers` in the stream's directory) is rewritten whole and
//! renamed into place: `"LVOF" ‖ version u8 ‖ count u32 ‖ entries (name
//! length u8 ‖ name ‖ offset u64) ‖ crc32 of all before`. A rename leaves
//! either the old or the new file, so what a reader stored survives a
//! kill -9; after a power cut a reader may resume a little earlier (it
//! reads again what it had read: at-least-once). A file that fails its
//! check is damage and refuses the open.

use super::stream_log::StreamLogError;
use std::collections::HashMap;
use std::path::Path;

const MAGIC: &[u8; 4] = b"LVOF";
const VERSION: u8 = 1;
/// Consumers' offsets.
pub(crate) const OFFSETS: &str = "offsets";
/// Publishers' last publishing ids (the stream protocol's deduplication).
pub(crate) const PUBLISHERS: &str = "publishers";

/// Reads the stored values of the stream in `dir` from `file` (none when
/// new).
pub(crate) fn load(dir: &Path, file: &str) -> Result<HashMap<String, u64>, StreamLogError> {
    let path = dir.join(file);
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e.into()),
    };
    decode(&raw).map_err(|why| StreamLogError::Damaged {
        file: path,
        position: 0,
        why: why.into(),
    })
}

fn decode(raw: &[u8]) -> Result<HashMap<String, u64>, &'static str> {
    if raw.len() < 13 || &raw[..4] != MAGIC || raw[4] != VERSION {
        return Err("not an offsets file");
    }
    let (body, crc) = raw.split_at(raw.len() - 4);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err("checksum mismatch");
    }
    let count = u32::from_be_bytes(body[5..9].try_into().expect("4 bytes")) as usize;
    let mut at = 9;
    // Each entry takes at least 9 bytes: a count beyond that is damage.
    let mut map = HashMap::with_capacity(count.min(body.len() / 9));
    for _ in 0..count {
        let len = *body.get(at).ok_or("truncated")? as usize;
        let name = body.get(at + 1..at + 1 + len).ok_or("truncated")?;
        let offset = body.get(at + 1 + len..at + 9 + len).ok_or("truncated")?;
        map.insert(
            String::from_utf8_lossy(name).into_owned(),
            u64::from_be_bytes(offset.try_into().expect("8 bytes")),
        );
        at += 9 + len;
    }
    if at != body.len() {
        return Err("trailing bytes");
    }
    Ok(map)
}

/// Replaces the values stored in `file` of the stream in `dir`. Names
/// are at most 255 bytes (longer ones are cut there).
pub(crate) fn save(
    dir: &Path,
    file: &str,
    offsets: &[(String, u64)],
    files: &super::journal::Recorder,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(13 + offsets.len() * 32);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(offsets.len() as u32).to_be_bytes());
    for (name, offset) in offsets {
        let name = &name.as_bytes()[..name.len().min(255)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&offset.to_be_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    let tmp = dir.join(format!("{file}.new"));
    let f = std::fs::File::create(&tmp)?;
    files.created(&tmp);
    files.write_at(&f, &tmp, &out, 0)?;
    files.rename(&tmp, &dir.join(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_damage_is_refused() {
        let dir = std::env::temp_dir().join(format!(
            "leveret-offsets-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir, OFFSETS).unwrap().is_empty());
        let offsets = vec![("analytics".to_string(), 41), ("billing".to_string(), 7)];
        save(&dir, OFFSETS, &offsets, &Default::default()).unwrap();
        let loaded = load(&dir, OFFSETS).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded["analytics"], 41);
        assert!(load(&dir, PUBLISHERS).unwrap().is_empty());
        let path = dir.join(OFFSETS);
        let mut raw = std::fs::read(&path).unwrap();
        for cut in 0..raw.len() {
            assert!(decode(&raw[..cut]).is_err(), "{cut}");
        }
        raw[10] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        assert!(matches!(
            load(&dir, OFFSETS),
            Err(StreamLogError::Damaged { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

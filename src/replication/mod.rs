//! Replication of the store from the cluster's leader to its followers
//! (issue 20; docs/CLUSTERING.md).
//!
//! The leader's store records every change it makes to its files and sled
//! trees in a journal (`store::journal`). A follower connects to the
//! leader's replication port, both prove they hold the cluster's secret,
//! the follower lists the files it has (length and SHA-256), and the
//! leader sends what differs: a file's missing tail, or the whole file,
//! and every sled record. Then it streams the journal's changes. After each
//! `Mark` the follower makes what it applied durable and acknowledges; the
//! leader's durability promises wait for those acknowledgements
//! (`leader::Replicas`). A follower's data directory is at every
//! acknowledged point a crash-consistent copy of the leader's: promoted,
//! it opens it as a single node opens its own after a crash.

pub(crate) mod follower;
pub(crate) mod leader;
pub(crate) mod link;
pub(crate) mod wire;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The data directory's replicated parts (sled is replicated by record,
/// since its files are its own business).
const REPLICATED: [&str; 4] = ["messages", "queues", "streams", "topology-version"];

/// Whether `path` (relative, `/`-separated, from the network) names
/// something a follower may write: under a replicated part, no `..`, no
/// empty or absolute parts.
pub(crate) fn allowed(path: &str) -> bool {
    let mut parts = path.split('/');
    let Some(first) = parts.next() else {
        return false;
    };
    REPLICATED.contains(&first)
        && path
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains('\0'))
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub(crate) fn hmac(key: &[u8], message: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in message {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Compares proofs in constant time.
pub(crate) fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

pub(crate) fn nonce() -> [u8; wire::NONCE] {
    rand::random()
}

/// Every replicated file under `root`: (relative path, absolute path),
/// sorted. Bounded by what the store wrote, not by a peer.
pub(crate) fn files(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    for part in REPLICATED {
        let path = root.join(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => dirs.push((part.to_string(), path)),
            Ok(m) if m.is_file() => out.push((part.to_string(), path)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    // Iterative, not recursive: the layout is two levels deep, but a
    // damaged directory should not decide the stack's depth.
    while let Some((rel, dir)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let kind = entry.file_type()?;
            let child = format!("{rel}/{name}");
            if kind.is_dir() {
                dirs.push((child, entry.path()));
            } else if kind.is_file() {
                out.push((child, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A file's SHA-256, and the hasher's state after its first `prefix`
/// bytes when it is at least that long (to tell whether another copy is
/// this one's beginning).
pub(crate) fn digest(
    path: &Path,
    prefix: Option<u64>,
) -> std::io::Result<(u64, [u8; 32], Option<[u8; 32]>)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut at = 0u64;
    let mut at_prefix = None;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        if prefix == Some(at) {
            at_prefix = Some(hasher.clone().finalize().into());
        }
        let want = match prefix {
            Some(p) if p > at => ((p - at) as usize).min(buf.len()),
            _ => buf.len(),
        };
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok((at, hasher.finalize().into(), at_prefix))
}

#[cfg(test)]
mod tests;

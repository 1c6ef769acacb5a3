//! A follower: keeps its data directory a copy of the leader's.

use super::link::{self, Security};
use super::wire::{self, Frame, WireError};
use crate::store::journal::{Change, SledTree};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tracing::{info, warn};

/// Most files a follower keeps open between syncs.
const MAX_OPEN: usize = 256;
/// sled flushes in the background this often (delivered marks: they
/// decide redelivery flags, which no confirm promises, and the leader's
/// persister flushes its own as often); a sync flushes it only for
/// `meta` and `access` changes.
const SLED_FLUSH_MS: u64 = 100;

/// What a follower knows of its copy, for `cluster status`.
#[derive(Default, Debug, Clone)]
pub(crate) struct FollowerState {
    /// The leader's journal position this copy holds on disk.
    pub(crate) position: u64,
    /// A full copy was completed from the current leader.
    pub(crate) copied: bool,
    pub(crate) bytes_received: u64,
    /// Of these, bytes of the last full copy (before its first mark).
    pub(crate) copy_bytes: u64,
}

/// Follows the leader at `leader` into `data_dir` until the connection
/// fails (the caller reconnects or stops). `state` is updated as the copy
/// progresses.
pub(crate) async fn follow(
    leader: &str,
    security: &Security,
    secret: &[u8],
    node: &str,
    data_dir: &Path,
    state: &parking_lot::Mutex<FollowerState>,
) -> Result<(), FollowError> {
    let (r, w) = link::split(security.connect(leader).await?);
    let mut r = BufReader::with_capacity(1 << 20, r);
    let mut w = BufWriter::new(w);
    let Frame::Challenge { nonce } = wire::read_at_most(&mut r, wire::MAX_HANDSHAKE).await? else {
        return Err(FollowError::Protocol("expected a challenge"));
    };
    let mine = super::nonce();
    let proof = super::hmac(secret, &[b"follower", &nonce]);
    wire::write(
        &mut w,
        &Frame::Hello {
            node: node.to_string(),
            proof,
            nonce: mine,
        },
    )
    .await?;
    w.flush().await?;
    let Frame::Welcome { proof } = wire::read_at_most(&mut r, wire::MAX_HANDSHAKE).await? else {
        return Err(FollowError::Protocol("expected a welcome"));
    };
    if !super::same(&proof, &super::hmac(secret, &[b"leader", &mine])) {
        return Err(FollowError::Protocol("the leader does not know the secret"));
    }
    let mut copy = Copy::open(data_dir)?;
    // What this copy holds, so the leader sends only what differs.
    let root = data_dir.to_owned();
    let listed = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Frame>> {
        let mut frames = Vec::new();
        for (rel, path) in super::files(&root)? {
            let (len, sha256, _) = super::digest(&path, None)?;
            frames.push(Frame::File {
                path: rel.into(),
                len,
                sha256,
            });
        }
        Ok(frames)
    })
    .await
    .map_err(|_| FollowError::Protocol("listing files failed"))??;
    for frame in &listed {
        wire::write(&mut w, frame).await?;
    }
    wire::write(&mut w, &Frame::FilesEnd).await?;
    w.flush().await?;
    info!(leader, files = listed.len(), "following the leader");
    state.lock().copy_bytes = 0;
    let mut copying_done = false;
    loop {
        let frame = wire::read(&mut r).await?;
        let Some((mut position, mut copied)) = apply(frame, &mut copy, state, copying_done)? else {
            continue;
        };
        copying_done = true;
        // What arrived while the last sync ran is applied too, so one sync
        // covers every mark among it (group commit on the follower): only
        // whole frames already in the buffer, never waiting for more.
        while wire::whole_frame(r.buffer()) {
            let frame = wire::read(&mut r).await?;
            if let Some((p, c)) = apply(frame, &mut copy, state, copying_done)? {
                position = p;
                copied |= c;
            }
        }
        // Durable before acknowledged: the leader's confirms count on it.
        let c = copy;
        copy = tokio::task::spawn_blocking(move || {
            let mut c = c;
            c.sync().map(|()| c)
        })
        .await
        .map_err(|_| FollowError::Protocol("sync failed"))??;
        {
            let mut s = state.lock();
            s.position = position;
            s.copied |= copied;
        }
        wire::write(&mut w, &Frame::Ack { position }).await?;
        w.flush().await?;
    }
}

/// Applies one frame of the stream to the copy; a mark is returned
/// (position, end of a full copy) for the caller to sync and acknowledge.
fn apply(
    frame: Frame,
    copy: &mut Copy,
    state: &parking_lot::Mutex<FollowerState>,
    copying_done: bool,
) -> Result<Option<(u64, bool)>, FollowError> {
    match frame {
        Frame::Change(change) => {
            if let Change::Write { bytes, .. } = &change {
                let mut s = state.lock();
                s.bytes_received += bytes.len() as u64;
                if !copying_done {
                    s.copy_bytes += bytes.len() as u64;
                }
            }
            copy.apply(change)?;
        }
        Frame::SledClear(tree) => copy.clear(tree)?,
        Frame::Mark { position, copied } => return Ok(Some((position, copied))),
        _ => return Err(FollowError::Protocol("unexpected frame")),
    }
    Ok(None)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FollowError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("replication protocol: {0}")]
    Protocol(&'static str),
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
}

/// The follower's copy of a data directory, changed as the leader says.
pub(crate) struct Copy {
    root: PathBuf,
    db: sled::Db,
    trees: [sled::Tree; 3],
    open: HashMap<PathBuf, File>,
    /// Written since the last sync.
    dirty: HashSet<PathBuf>,
    /// Directories whose entries changed since the last sync.
    dirty_dirs: HashSet<PathBuf>,
    /// sled holds changes to `meta` or `access` not yet flushed (durable
    /// objects, users: their declare-oks wait on them).
    sled_dirty: bool,
}

impl Copy {
    pub(crate) fn open(root: &Path) -> Result<Copy, FollowError> {
        std::fs::create_dir_all(root)?;
        // A copy is never a clean stop's state: promoted, it recovers.
        let _ = std::fs::remove_file(root.join("clean-shutdown"));
        let db = sled::Config::new()
            .path(root)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(SLED_FLUSH_MS))
            .open()?;
        let trees = [
            db.open_tree(SledTree::Meta.name())?,
            db.open_tree(SledTree::Access.name())?,
            db.open_tree(SledTree::Marks.name())?,
        ];
        Ok(Copy {
            root: root.to_owned(),
            db,
            trees,
            open: HashMap::new(),
            dirty: HashSet::new(),
            dirty_dirs: HashSet::new(),
            sled_dirty: false,
        })
    }

    fn path(&self, rel: &str) -> Result<PathBuf, FollowError> {
        if !super::allowed(rel) {
            return Err(FollowError::Protocol("a path outside the replicated store"));
        }
        Ok(self.root.join(rel))
    }

    fn file(&mut self, path: &Path) -> std::io::Result<&File> {
        if !self.open.contains_key(path) {
            if self.open.len() >= MAX_OPEN {
                self.sync_files()?;
                self.open.clear();
            }
            let parent = path.parent().unwrap_or(&self.root).to_owned();
            if !parent.exists() {
                std::fs::create_dir_all(&parent)?;
                self.dirty_dirs
                    .insert(parent.parent().unwrap_or(&self.root).to_owned());
            }
            let existed = path.exists();
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)?;
            if !existed {
                self.dirty_dirs.insert(parent);
            }
            self.open.insert(path.to_owned(), f);
        }
        Ok(&self.open[path])
    }

    pub(crate) fn apply(&mut self, change: Change) -> Result<(), FollowError> {
        match change {
            Change::Write { path, at, bytes } => {
                let path = self.path(&path)?;
                self.file(&path)?.write_all_at(&bytes, at)?;
                self.dirty.insert(path);
            }
            Change::SetLen { path, len } => {
                let path = self.path(&path)?;
                self.file(&path)?.set_len(len)?;
                self.dirty.insert(path);
            }
            Change::Remove { path } => {
                let path = self.path(&path)?;
                self.open.retain(|p, _| !p.starts_with(&path));
                self.dirty.retain(|p| !p.starts_with(&path));
                let gone = match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
                    Ok(_) => std::fs::remove_file(&path),
                    Err(e) => Err(e),
                };
                match gone {
                    Ok(()) => {
                        self.dirty_dirs
                            .insert(path.parent().unwrap_or(&self.root).to_owned());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Change::Rename { from, to } => {
                let (from, to) = (self.path(&from)?, self.path(&to)?);
                // Written data reaches the disk before the name does.
                if let Some(f) = self.open.remove(&from) {
                    f.sync_data()?;
                }
                self.dirty.remove(&from);
                self.open.remove(&to);
                self.dirty.remove(&to);
                match std::fs::rename(&from, &to) {
                    Ok(()) => {
                        self.dirty_dirs
                            .insert(to.parent().unwrap_or(&self.root).to_owned());
                    }
                    // Copied after the rename: the copy already has `to`.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Change::Sled { tree, key, value } => {
                self.sled_dirty |= tree != SledTree::Marks;
                let t = &self.trees[tree as usize];
                match value {
                    Some(v) => t.insert(&key[..], &v[..])?,
                    None => t.remove(&key[..])?,
                };
            }
        }
        Ok(())
    }

    pub(crate) fn clear(&mut self, tree: SledTree) -> Result<(), FollowError> {
        self.trees[tree as usize].clear()?;
        self.sled_dirty = true;
        Ok(())
    }

    fn sync_files(&mut self) -> std::io::Result<()> {
        for path in self.dirty.drain() {
            if let Some(f) = self.open.get(&path) {
                f.sync_data()?;
            }
        }
        for dir in self.dirty_dirs.drain() {
            match File::open(&dir) {
                Ok(d) => d.sync_all()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Makes everything applied durable.
    // On a blocking thread (the caller's spawn_blocking).
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn sync(&mut self) -> Result<(), FollowError> {
        self.sync_files()?;
        if self.sled_dirty {
            self.db.flush()?;
            self.sled_dirty = false;
        }
        Ok(())
    }
}

impl Drop for Copy {
    // Closing the copy (a reconnect, a promotion) waits for the disk.
    #[allow(clippy::disallowed_methods)]
    fn drop(&mut self) {
        if let Err(e) = self.sync_files() {
            warn!(error = %e, "could not sync the replica on closing it");
        }
        if let Err(e) = self.db.flush() {
            warn!(error = %e, "could not flush the replica's sled on closing it");
        }
    }
}

/// Follows `leader` until `stop` says so, reconnecting after failures.
pub(crate) async fn follow_until(
    leader: String,
    security: Security,
    secret: Arc<[u8]>,
    node: String,
    data_dir: PathBuf,
    state: Arc<parking_lot::Mutex<FollowerState>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            result = follow(&leader, &security, &secret, &node, &data_dir, &state) => {
                if let Err(e) = result {
                    warn!(leader = %leader, error = %e, "replication from the leader stopped; reconnecting");
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        state.lock().copied = false;
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

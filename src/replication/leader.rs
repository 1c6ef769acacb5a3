//! The leader's side: serves followers a copy of the store and then its
//! journal, and releases durability promises once every in-sync follower
//! (at least `min_insync` of them) acknowledged them.

use super::link::{self, Link, LinkReader, LinkWriter, Security};
use super::wire::{self, Frame};
use crate::store::journal::{Change, Journal, Lagged, SledTree};
use bytes::Bytes;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// A follower that has not caught up with the journal's end for this long
/// leaves the in-sync set (confirms stop waiting for it).
pub(crate) const LAG_MAX: Duration = Duration::from_secs(10);
/// Bytes of journal changes sent between marks.
const MARK_EVERY: usize = 4 << 20;
/// Changes no promise waits for (a queue index's header, delivered
/// marks) are sent at the next commit point, or after this long.
const SEND_IDLE: Duration = Duration::from_millis(50);
/// With nothing to send for this long, an empty mark: its acknowledgement
/// keeps an idle follower caught up (else it left the in-sync set after
/// `LAG_MAX` of silence, and an idle cluster could not fail over).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Most files a follower may list.
const MAX_LISTED: usize = 1 << 20;
/// A full copy sends pieces of this size that hold only zeros as a length.
const ZERO_PIECE: usize = 64 << 10;
/// How long a peer has to prove itself (TLS handshake included).
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Most peers proving themselves at once; more are closed at once, so
/// strangers cannot pile up connections (each holds buffers and a task).
pub(crate) const MAX_HANDSHAKING: usize = 256;

/// One follower as the leader sees it.
#[derive(Debug, Clone)]
pub(crate) struct Replica {
    pub(crate) node: String,
    pub(crate) peer: String,
    /// Journal position it acknowledged as durable.
    pub(crate) acked: u64,
    /// Its copy is complete and it caught up with the journal's end at
    /// `caught_up` (recently enough to count: in sync).
    pub(crate) in_sync: bool,
    pub(crate) caught_up: Option<Instant>,
    pub(crate) bytes_sent: u64,
    /// Bytes of changes it has not acknowledged, and for how long it has
    /// been behind (0 when caught up).
    pub(crate) lag_bytes: u64,
    pub(crate) lag_ms: u64,
}

/// Records an in-sync set (in etcd); resolves to whether it was recorded.
pub(crate) type RecordIsr = Box<
    dyn Fn(Vec<String>) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

/// The followers, and the gate their acknowledgements open.
///
/// Kafka's rule, which makes any recorded in-sync follower a safe next
/// leader: a promise waits for every follower in the in-sync set, and for
/// at least `min_insync` of them. A follower joins the set once it caught
/// up; one that falls behind (or leaves) stops being waited for only once
/// the smaller set is recorded, since until then it may be elected.
pub(crate) struct Replicas {
    journal: Arc<Journal>,
    min_insync: usize,
    state: parking_lot::Mutex<State>,
    next_id: std::sync::atomic::AtomicU64,
    record_isr: RecordIsr,
}

#[derive(Default)]
struct State {
    followers: HashMap<u64, Replica>,
    /// The in-sync set as last recorded (`None` until this leader has
    /// recorded one, which it does once it has `min_insync` followers in
    /// sync: until then the previous leader's stands, and nothing is
    /// released), and as last asked to be.
    recorded: Option<Vec<String>>,
    requested: Option<Vec<String>>,
}

impl Replicas {
    pub(crate) fn new(
        journal: Arc<Journal>,
        min_insync: usize,
        record_isr: RecordIsr,
    ) -> Arc<Replicas> {
        let r = Arc::new(Replicas {
            journal,
            min_insync,
            state: parking_lot::Mutex::new(State::default()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            record_isr,
        });
        r.update();
        r
    }

    pub(crate) fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// The followers now.
    pub(crate) fn list(&self) -> Vec<Replica> {
        let mut v: Vec<Replica> = self.state.lock().followers.values().cloned().collect();
        let end = self.journal.end();
        for r in &mut v {
            r.lag_bytes = self.journal.bytes_after(r.acked);
            r.lag_ms = match r.caught_up {
                _ if r.acked >= end => 0,
                Some(t) => t.elapsed().as_millis() as u64,
                None => u64::MAX,
            };
        }
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v
    }

    /// The in-sync set as last recorded.
    #[cfg(test)]
    pub(crate) fn in_sync(&self) -> Vec<String> {
        self.state.lock().recorded.clone().unwrap_or_default()
    }

    /// Recomputes the in-sync set and what it holds, releasing promises.
    fn update(self: &Arc<Self>) {
        let (request, replicated) = {
            let mut st = self.state.lock();
            for r in st.followers.values_mut() {
                r.in_sync = r.caught_up.is_some_and(|t| t.elapsed() < LAG_MAX);
            }
            let mut live: Vec<String> = st
                .followers
                .values()
                .filter(|r| r.in_sync)
                .map(|r| r.node.clone())
                .collect();
            live.sort();
            live.dedup();
            // Waited for: the live set and, until it is recorded smaller,
            // the recorded one.
            let mut waited: Vec<&String> =
                live.iter().chain(st.recorded.iter().flatten()).collect();
            waited.sort();
            waited.dedup();
            let held = |node: &str| {
                st.followers
                    .values()
                    .filter(|r| r.node == node)
                    .map(|r| r.acked)
                    .max()
                    .unwrap_or(0)
            };
            let replicated = if live.len() < self.min_insync || st.recorded.is_none() {
                // Too few copies: promises wait, as a quorum queue's do
                // without a majority.
                None
            } else {
                Some(waited.iter().map(|n| held(n)).min().unwrap_or(u64::MAX))
            };
            // A new term records nothing before it could release anything:
            // until then the previous term's set stands, whose followers
            // hold everything confirmed so far, and any of them may still
            // take over if this node dies before one catches up.
            let first_too_early = st.recorded.is_none() && live.len() < self.min_insync;
            let request = (!first_too_early
                && st.recorded.as_ref() != Some(&live)
                && st.requested.as_ref() != Some(&live))
            .then(|| {
                st.requested = Some(live.clone());
                live
            });
            (request, replicated)
        };
        if let Some(p) = replicated {
            self.journal.replicated_to(p);
        }
        if let Some(isr) = request {
            let recording = (self.record_isr)(isr.clone());
            let this = self.clone();
            tokio::spawn(async move {
                let ok = recording.await;
                {
                    let mut st = this.state.lock();
                    if st.requested.as_ref() == Some(&isr) {
                        st.requested = None;
                    }
                    if ok {
                        info!(in_sync = ?isr, "recorded the in-sync replica set");
                        st.recorded = Some(isr.clone());
                    }
                }
                if ok {
                    this.update();
                } else {
                    // Asked again at the next tick.
                    warn!(in_sync = ?isr, "could not record the in-sync replica set");
                }
            });
        }
    }

    fn join(&self, node: &str, peer: String) -> u64 {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.state.lock().followers.insert(
            id,
            Replica {
                node: node.to_string(),
                peer,
                acked: 0,
                in_sync: false,
                caught_up: None,
                bytes_sent: 0,
                lag_bytes: 0,
                lag_ms: 0,
            },
        );
        id
    }

    fn leave(self: &Arc<Self>, id: u64) {
        let gone = self.state.lock().followers.remove(&id);
        if let Some(r) = gone {
            info!(node = %r.node, peer = %r.peer, acked = r.acked, "a follower left");
        }
        self.update();
    }

    /// A follower acknowledged `position`; `end_when_sent` was the
    /// journal's end when that mark was sent.
    fn acked(self: &Arc<Self>, id: u64, position: u64, caught_up: bool) {
        if let Some(r) = self.state.lock().followers.get_mut(&id) {
            r.acked = r.acked.max(position);
            if caught_up {
                r.caught_up = Some(Instant::now());
            }
        }
        self.update();
    }

    fn sent(&self, id: u64, bytes: u64) {
        if let Some(r) = self.state.lock().followers.get_mut(&id) {
            r.bytes_sent += bytes;
        }
    }

    /// Drops followers that stopped keeping up (called now and then).
    pub(crate) fn tick(self: &Arc<Self>) {
        self.update();
    }
}

/// Accepts followers on `listener` until the task is dropped, which also
/// ends every follower's connection: they hold this term's store (its sled
/// trees) and journal, so the next term could neither open the store nor
/// have followers while they lived.
pub(crate) async fn serve(
    listener: TcpListener,
    security: Security,
    replicas: Arc<Replicas>,
    secret: Arc<[u8]>,
    sled: Vec<(SledTree, sled::Tree)>,
) {
    let handshaking = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKING));
    let sled = Arc::new(sled);
    let ticker = {
        let replicas = replicas.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                replicas.tick();
            }
        })
    };
    let _ticker = AbortOnDrop(ticker);
    // Dropped with this task: aborts every follower's connection.
    let mut followers = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = followers.join_next(), if !followers.is_empty() => continue,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = handshaking.clone().try_acquire_owned() else {
            warn!(peer = %peer, "too many replication peers proving themselves; closed");
            continue;
        };
        let (replicas, secret, sled) = (replicas.clone(), secret.clone(), sled.clone());
        let security = security.clone();
        followers.spawn(async move {
            let proved = tokio::time::timeout(HANDSHAKE, async {
                let link = security.accept(stream).await?;
                prove(link, &secret).await
            })
            .await
            .unwrap_or(Err(ServeError::Protocol("no proof in time")));
            drop(permit);
            let result = match proved {
                Ok((r, w, node)) => {
                    serve_follower(r, w, node, peer.to_string(), &replicas, &sled).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                warn!(peer = %peer, error = %e, "a follower's replication ended");
            }
        });
    }
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("{0}")]
    Protocol(&'static str),
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
}

/// The handshake: the peer proves the secret, then this leader does.
/// Small buffers until then; the follower sends nothing more before the
/// welcome, so nothing read is left behind in them.
async fn prove(
    link: Link,
    secret: &[u8],
) -> Result<(BufReader<LinkReader>, LinkWriter, String), ServeError> {
    let (r, w) = link::split(link);
    let mut r = BufReader::new(r);
    let mut w = BufWriter::new(w);
    let nonce = super::nonce();
    wire::write(&mut w, &Frame::Challenge { nonce }).await?;
    w.flush().await?;
    let hello = wire::read_at_most(&mut r, wire::MAX_HANDSHAKE).await?;
    let Frame::Hello {
        node,
        proof,
        nonce: theirs,
    } = hello
    else {
        return Err(ServeError::Protocol("expected a hello"));
    };
    if !super::same(&proof, &super::hmac(secret, &[b"follower", &nonce])) {
        return Err(ServeError::Protocol(
            "the follower does not know the secret",
        ));
    }
    wire::write(
        &mut w,
        &Frame::Welcome {
            proof: super::hmac(secret, &[b"leader", &theirs]),
        },
    )
    .await?;
    w.flush().await?;
    Ok((r, w.into_inner(), node))
}

async fn serve_follower(
    mut r: BufReader<LinkReader>,
    w: LinkWriter,
    node: String,
    peer: String,
    replicas: &Arc<Replicas>,
    sled: &[(SledTree, sled::Tree)],
) -> Result<(), ServeError> {
    let mut w = BufWriter::with_capacity(1 << 20, w);
    let mut theirs: HashMap<Arc<str>, (u64, [u8; 32])> = HashMap::new();
    loop {
        match wire::read(&mut r).await? {
            Frame::File { path, len, sha256 } => {
                if theirs.len() >= MAX_LISTED {
                    return Err(ServeError::Protocol("too many files listed"));
                }
                theirs.insert(path, (len, sha256));
            }
            Frame::FilesEnd => break,
            _ => return Err(ServeError::Protocol("expected a file list")),
        }
    }
    let id = replicas.join(&node, peer.clone());
    info!(node = %node, peer = %peer, "a follower joined; copying the store to it");
    let result = replicate(r, &mut w, id, replicas, theirs, sled).await;
    replicas.leave(id);
    result
}

async fn replicate(
    r: BufReader<LinkReader>,
    w: &mut BufWriter<LinkWriter>,
    id: u64,
    replicas: &Arc<Replicas>,
    theirs: HashMap<Arc<str>, (u64, [u8; 32])>,
    sled: &[(SledTree, sled::Tree)],
) -> Result<(), ServeError> {
    let journal = replicas.journal().clone();
    // From here on every change is kept and streamed: whatever the copy
    // below reads, replaying these over it ends at the leader's state.
    let _reader = journal.reader();
    let start = journal.end();
    let mut frames = Vec::new();
    copy_files(journal.root().to_owned(), theirs, w, replicas, id).await?;
    for (tree, t) in sled {
        frames.push(Frame::SledClear(*tree));
        for item in t.iter() {
            let (k, v) = item?;
            frames.push(Frame::Change(Change::Sled {
                tree: *tree,
                key: Bytes::copy_from_slice(&k),
                value: Some(Bytes::copy_from_slice(&v)),
            }));
        }
    }
    send(w, &frames).await?;
    frames.clear();
    let mut position = start;
    // Marks in flight: position → was the journal's end when sent.
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut reader = ReaderTask::spawn(r, acks_tx);
    let mut copied = true;
    loop {
        let changes = match journal.read(position, MARK_EVERY) {
            Ok(c) => c,
            Err(Lagged) => {
                return Err(ServeError::Protocol("the follower fell behind the journal"))
            }
        };
        let mut bytes = 0u64;
        for change in &changes {
            if let Change::Write { bytes: b, .. } = change {
                bytes += b.len() as u64;
            }
        }
        position += changes.len() as u64;
        for change in changes {
            wire::split(change, &mut frames);
        }
        // Caught up: it was sent everything a promise waits for.
        let caught_up = position >= journal.due();
        frames.push(Frame::Mark {
            position,
            copied: std::mem::take(&mut copied),
        });
        send(w, &frames).await?;
        frames.clear();
        replicas.sent(id, bytes);
        reader.expect(position, caught_up);
        // Wait for more to send, while taking acknowledgements: until a
        // commit point (one send, one mark, one fsync on the follower per
        // store batch, rather than one per change), or a while for changes
        // no promise waits for.
        let marked = Instant::now();
        let idle = tokio::time::sleep(SEND_IDLE);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                biased;
                ack = acks_rx.recv() => match ack {
                    Some(Ok(acked)) => {
                        let caught_up = reader.settle(acked);
                        replicas.acked(id, acked, caught_up);
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(ServeError::Protocol("the follower left")),
                },
                () = journal.wait_due(position) => break,
                () = &mut idle => {
                    if journal.end() > position || marked.elapsed() >= HEARTBEAT {
                        break;
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + SEND_IDLE);
                }
            }
        }
    }
}

/// Reads a follower's acknowledgements.
struct ReaderTask {
    /// Marks sent: (position, caught up when sent).
    marks: std::collections::VecDeque<(u64, bool)>,
    _task: AbortOnDrop,
}

impl ReaderTask {
    fn spawn(
        mut r: BufReader<LinkReader>,
        acks: tokio::sync::mpsc::UnboundedSender<Result<u64, ServeError>>,
    ) -> ReaderTask {
        let task = tokio::spawn(async move {
            loop {
                let result = match wire::read(&mut r).await {
                    Ok(Frame::Ack { position }) => Ok(position),
                    Ok(_) => Err(ServeError::Protocol("expected an ack")),
                    Err(e) => Err(e.into()),
                };
                let failed = result.is_err();
                if acks.send(result).is_err() || failed {
                    return;
                }
            }
        });
        ReaderTask {
            marks: Default::default(),
            _task: AbortOnDrop(task),
        }
    }

    fn expect(&mut self, position: u64, caught_up: bool) {
        self.marks.push_back((position, caught_up));
    }

    /// Whether the acknowledged mark was sent with the journal drained.
    fn settle(&mut self, acked: u64) -> bool {
        let mut caught_up = false;
        while self.marks.front().is_some_and(|(p, _)| *p <= acked) {
            if let Some((_, c)) = self.marks.pop_front() {
                caught_up = c;
            }
        }
        caught_up
    }
}

async fn send(w: &mut BufWriter<LinkWriter>, frames: &[Frame]) -> std::io::Result<()> {
    let mut out = bytes::BytesMut::new();
    for frame in frames {
        out.clear();
        wire::encode(frame, &mut out);
        w.write_all(&out).await?;
    }
    w.flush().await
}

/// Sends what the follower's copy lacks of each replicated file, and
/// removes what the leader no longer has.
async fn copy_files(
    root: PathBuf,
    mut theirs: HashMap<Arc<str>, (u64, [u8; 32])>,
    w: &mut BufWriter<LinkWriter>,
    replicas: &Replicas,
    id: u64,
) -> Result<(), ServeError> {
    let listing = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || super::files(&root))
            .await
            .map_err(|_| ServeError::Protocol("listing failed"))??
    };
    let (mut same, mut sent_files, mut bytes_sent) = (0u64, 0u64, 0u64);
    for (rel, path) in listing {
        let key: Arc<str> = rel.as_str().into();
        let known = theirs.remove(&key);
        let (len, from) = match known {
            // Not there at all: sent whole, with no need to hash it first.
            None => match std::fs::metadata(&path) {
                Ok(m) => (m.len(), 0),
                // Deleted since listed: the journal says so too.
                Err(_) => continue,
            },
            Some((their_len, their_sha)) => {
                let p = path.clone();
                let Ok(Ok((len, sha, at_prefix))) =
                    tokio::task::spawn_blocking(move || super::digest(&p, Some(their_len))).await
                else {
                    continue;
                };
                if their_len == len && their_sha == sha {
                    same += 1;
                    continue;
                }
                (
                    len,
                    if at_prefix == Some(their_sha) {
                        their_len
                    } else {
                        0
                    },
                )
            }
        };
        let mut frames = vec![Frame::Change(Change::SetLen {
            path: key.clone(),
            len: from,
        })];
        let file = std::fs::File::open(&path);
        let Ok(file) = file else { continue };
        let mut at = from;
        let file = Arc::new(file);
        while at < len {
            let n = ((len - at) as usize).min(wire::MAX_WRITE);
            let f = file.clone();
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                use std::os::unix::fs::FileExt;
                f.read_exact_at(&mut buf, at).map(|()| buf)
            })
            .await
            .map_err(|_| ServeError::Protocol("read failed"))?;
            let Ok(chunk) = chunk else { break };
            // Zeros written ahead (see `Segments::zero_ahead`) travel as a
            // length: the follower's file grows with zeros.
            let chunk = Bytes::from(chunk);
            let mut piece_at = 0;
            while piece_at < chunk.len() {
                let end = (piece_at + ZERO_PIECE).min(chunk.len());
                let piece = chunk.slice(piece_at..end);
                let offset = at + piece_at as u64;
                if piece.iter().all(|b| *b == 0) {
                    frames.push(Frame::Change(Change::SetLen {
                        path: key.clone(),
                        len: offset + piece.len() as u64,
                    }));
                } else {
                    bytes_sent += piece.len() as u64;
                    frames.push(Frame::Change(Change::Write {
                        path: key.clone(),
                        at: offset,
                        bytes: piece,
                    }));
                }
                piece_at = end;
            }
            send(w, &frames).await?;
            frames.clear();
            at += n as u64;
        }
        send(w, &frames).await?;
        sent_files += 1;
    }
    let removed: Vec<Frame> = theirs
        .into_keys()
        .map(|path| Frame::Change(Change::Remove { path }))
        .collect();
    send(w, &removed).await?;
    replicas.sent(id, bytes_sent);
    info!(
        unchanged = same,
        sent = sent_files,
        removed = removed.len(),
        bytes = bytes_sent,
        "copied the store's files to a follower"
    );
    Ok(())
}

//! Opening the store at start-up: refuse a damaged or foreign store loudly,
//! read the topology, and count each durable queue's messages from its
//! index without reading bodies. Transient messages that were paged out,
//! and entries of queues that no longer exist, are dropped here.

use super::journal::{Recorder, SledTree, Tree};
use super::persister::Persister;
use super::queue_index::{self, QueueIndexes};
use super::record::{self, BindingRecord, ExchangeRecord, MetaKind, QueueRecord};
use super::segments::{self, segment_path, SegmentCheck, Segments};
use super::{Backlog, Damage, Store, StoreError};
use crate::config::{OnDamage, StorageConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;
use std::time::Instant;
use tracing::{error, info};

/// Everything read back from the store.
#[derive(Default)]
pub struct Recovered {
    pub(crate) exchanges: Vec<ExchangeRecord>,
    pub(crate) queues: Vec<RecoveredQueue>,
    pub(crate) bindings: Vec<BindingRecord>,
    /// The `access` tree (vhosts, users, permissions), as stored.
    pub access: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(crate) struct RecoveredQueue {
    pub(crate) record: QueueRecord,
    /// Messages in its index.
    pub(crate) messages: usize,
    /// Seq of its first message (meaningful when `messages > 0`).
    pub(crate) first_seq: u64,
    /// When that message arrived, ms since the epoch (0: unknown).
    pub(crate) first_arrived_ms: u64,
    /// The seq its next message gets.
    pub(crate) next_seq: u64,
}

#[derive(Default)]
struct QueueScan {
    messages: usize,
    first_seq: u64,
    first_arrived_ms: u64,
    last_seq: Option<u64>,
}

pub(super) fn open(
    dir: &Path,
    config: &StorageConfig,
    files: Recorder,
) -> Result<(Arc<Store>, Recovered), StoreError> {
    let started = Instant::now();
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        path: dir.to_owned(),
        source,
    })?;
    // sled keeps its log in `db`: what it cannot read is named after it.
    let db_path = dir.join(SLED_LOG);
    let damaged = |detail: String| StoreError::Damaged {
        path: db_path.clone(),
        detail,
    };
    // sled may panic on a corrupted log rather than return an error; turn
    // that into a clear refusal instead of a crash with a backtrace.
    let (db, meta, access, marks, topology) = quietly(|| -> Result<_, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_capacity)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|source| match source {
                sled::Error::Corruption { .. } => damaged(source.to_string()),
                source => StoreError::Open {
                    path: db_path.clone(),
                    source,
                },
            })?;
        let meta = db.open_tree("meta").map_err(|e| damaged(e.to_string()))?;
        let access = db.open_tree("access").map_err(|e| damaged(e.to_string()))?;
        let marks = db.open_tree("marks").map_err(|e| damaged(e.to_string()))?;
        let mut topology = read_topology(dir, &db, &meta, &marks)?;
        for item in access.iter() {
            let (key, value) = item.map_err(|e| damaged(e.to_string()))?;
            topology
                .recovered
                .access
                .push((key.to_vec(), value.to_vec()));
        }
        Ok((db, meta, access, marks, topology))
    })
    .unwrap_or_else(|panic| Err(damaged(panic)))?;
    let Topology {
        mut recovered,
        queues: queue_records,
        mut delivered,
    } = topology;

    check_topology_version(dir, &meta)?;

    // One pass over every queue index: counts, transient leftovers, orphans,
    // and every body a message needs read back.
    let expected_entries = clean_shutdown_entries(dir);
    let mut scans: HashMap<u32, QueueScan> = queue_records
        .iter()
        .map(|q| (q.id, QueueScan::default()))
        .collect();
    let mut live: HashMap<u32, u64> = HashMap::new();
    let segment_dir = dir.join(SEGMENT_DIR);
    let mut checks: HashMap<u32, SegmentCheck> = HashMap::new();
    // (queue, segment) → bodies that do not read back.
    let mut bad_bodies: HashMap<(u32, u32), u64> = HashMap::new();
    let (mut all_entries, mut dropped, mut orphans) = (0u64, 0u64, 0u64);
    let io = |path: PathBuf| move |source| StoreError::Io { path, source };
    let queue_dir = dir.join(QUEUE_DIR);
    let (mut index, scan) = QueueIndexes::open(&queue_dir, |queue_id, slot| {
        all_entries += 1;
        let Some(scan) = scans.get_mut(&queue_id) else {
            dropped += 1;
            orphans += 1;
            return false;
        };
        if slot.flags & record::TRANSIENT != 0 {
            dropped += 1;
            return false;
        }
        let check = checks.entry(slot.at.segment).or_insert_with(|| {
            segments::check(&segment_dir, slot.at.segment).unwrap_or_else(|e| SegmentCheck {
                problem: Some(format!("cannot read the message segment: {e}")),
                bad: Vec::new(),
                end: 0,
            })
        });
        if !check.holds(slot.at) {
            *bad_bodies.entry((queue_id, slot.at.segment)).or_default() += 1;
            return false;
        }
        if scan.last_seq.is_none() {
            scan.first_seq = slot.seq;
            scan.first_arrived_ms = queue_index::arrival_ms(slot.arrived_s);
        }
        scan.last_seq = Some(slot.seq);
        scan.messages += 1;
        *live.entry(slot.at.segment).or_default() += 1;
        true
    })
    .map_err(io(queue_dir.clone()))?;

    let record_of: HashMap<u32, &QueueRecord> = queue_records.iter().map(|q| (q.id, q)).collect();
    let mut damage: Vec<Damage> = Vec::new();
    let mut note = |queue_id: u32, path: PathBuf, problem: String, lost: Option<u64>| {
        if let Some(q) = record_of.get(&queue_id) {
            damage.push(Damage {
                vhost: q.vhost.clone(),
                queue: q.name.clone(),
                path,
                problem,
                lost,
            });
        }
    };
    for d in scan.damage {
        note(d.queue_id, d.path, d.problem, Some(d.lost));
    }
    let mut missing_dirs = Vec::new();
    for q in &queue_records {
        let qdir = queue_dir.join(format!("{:08}", q.id));
        if !qdir.exists() {
            note(
                q.id,
                qdir,
                "the queue's index directory is missing".into(),
                None,
            );
            missing_dirs.push(q.id);
        }
    }
    let mut bad_bodies: Vec<_> = bad_bodies.into_iter().collect();
    bad_bodies.sort_unstable();
    for ((queue_id, segment), lost) in bad_bodies {
        let check = &checks[&segment];
        let problem = match &check.problem {
            Some(problem) => problem.clone(),
            None => format!(
                "{lost} queued messages' bodies do not read back (records end at byte {}{})",
                check.end,
                check
                    .bad
                    .first()
                    .map(|(at, _)| format!(", a record at byte {at} fails its checksum"))
                    .unwrap_or_default()
            ),
        };
        note(
            queue_id,
            segment_path(&segment_dir, segment),
            problem,
            Some(lost),
        );
    }
    if !damage.is_empty() {
        if config.on_damage == OnDamage::Refuse {
            return Err(StoreError::Damaged {
                path: damage[0].path.clone(),
                detail: damage
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        for d in &damage {
            error!(
                vhost = %d.vhost,
                queue = %d.queue,
                lost = %d.lost.map_or("unknown".to_string(), |n| n.to_string()),
                path = %d.path.display(),
                problem = %d.problem,
                "store damage: starting anyway (storage.on_damage = \"report\"), messages lost"
            );
        }
    }
    if let Some(expected) = expected_entries {
        let lost: u64 = damage.iter().map(|d| d.lost.unwrap_or(u64::MAX / 4)).sum();
        if expected > all_entries.saturating_add(lost) {
            return Err(StoreError::Damaged {
                path: queue_dir.clone(),
                detail: format!(
                    "the last clean stop left {expected} queued messages but {all_entries} are readable"
                ),
            });
        }
        // A clean stop finishes every queue deletion, so entries without a
        // queue record mean the topology lost records.
        if orphans > 0 {
            return Err(damaged(format!(
                "{orphans} queued messages belong to queues missing from the topology"
            )));
        }
    }
    index.record_to(files.clone());
    index.finish_recovery().map_err(io(queue_dir.clone()))?;
    for queue_id in missing_dirs {
        super::queue_index::create_queue(&queue_dir, queue_id, &files)
            .map_err(io(queue_dir.clone()))?;
    }
    for queue_id in index.queue_ids() {
        if !scans.contains_key(&queue_id) {
            index.drop_queue(queue_id);
        }
    }
    if dropped > 0 {
        info!(
            messages = dropped,
            "dropped transient messages and messages of deleted queues"
        );
    }
    delivered.retain(|queue_id, _| scans.contains_key(queue_id));
    for record in queue_records {
        let scan = scans.remove(&record.id).unwrap_or_default();
        recovered.queues.push(RecoveredQueue {
            messages: scan.messages,
            first_seq: scan.first_seq,
            first_arrived_ms: scan.first_arrived_ms,
            // New messages must sort after everything delivered before,
            // even when the queue was drained: the mark says "delivered".
            next_seq: scan
                .last_seq
                .map_or(0, |s| s + 1)
                .max(delivered.get(&record.id).copied().unwrap_or(0)),
            record,
        });
    }
    let segments = Segments::open(&segment_dir, config.segment_size, live, files.clone())
        .map_err(io(segment_dir.clone()))?;
    let next_topology_version = topology_version(&meta).map_err(|e| damaged(e.to_string()))?;

    // From here on the store may change: a marker left behind would lie.
    let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
    if marker.exists() {
        std::fs::remove_file(&marker).map_err(io(marker.clone()))?;
    }
    let entries = recovered.queues.iter().map(|q| q.messages as u64).sum();
    let backlog = Arc::new(Backlog::new(config.persister_backlog));
    let fail_stop = Arc::new(super::fail_stop::FailStop::for_dir(dir, config));
    let (tx, rx) = std::sync::mpsc::channel();
    let trees = vec![
        (SledTree::Meta, meta.clone()),
        (SledTree::Access, access.clone()),
        (SledTree::Marks, marks.clone()),
    ];
    let persister = Persister::new(
        db.clone(),
        Tree::new(marks, SledTree::Marks, files.clone()),
        index,
        segments,
        delivered,
        backlog.clone(),
        entries,
        marker,
        fail_stop.clone(),
        files.clone(),
    );
    let thread = std::thread::Builder::new()
        .name("leveret-persister".into())
        .spawn(move || persister.run(rx))
        .map_err(io(dir.to_owned()))?;
    let next_queue_id = recovered
        .queues
        .iter()
        .map(|q| q.record.id)
        .max()
        .map_or(1, |id| id + 1);
    let meta_writer = super::meta_writer::MetaWriter::start(
        db,
        super::meta_writer::Trees {
            path: dir.to_owned(),
            meta: Tree::new(meta, SledTree::Meta, files.clone()),
            access: Tree::new(access, SledTree::Access, files.clone()),
            files: files.clone(),
        },
        next_topology_version,
    )
    .map_err(io(dir.to_owned()))?;
    let store = Store {
        path: dir.to_owned(),
        persister: tx,
        thread: parking_lot::Mutex::new(Some(thread)),
        next_msg_id: AtomicU64::new(1),
        next_queue_id: AtomicU32::new(next_queue_id),
        backlog,
        queue_window: config.queue_memory_window,
        fail_stop,
        meta_writer,
        damage,
        files,
        trees,
    };
    info!(
        path = %dir.display(),
        exchanges = recovered.exchanges.len(),
        queues = recovered.queues.len(),
        bindings = recovered.bindings.len(),
        messages = entries,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered durable state"
    );
    Ok((Arc::new(store), recovered))
}

/// Written after the final flush of a clean stop: `entries N`.
pub(super) const CLEAN_SHUTDOWN_MARKER: &str = "clean-shutdown";

/// The entry count a clean stop recorded, if the last stop was clean.
fn clean_shutdown_entries(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(CLEAN_SHUTDOWN_MARKER)).ok()?;
    text.trim().strip_prefix("entries ")?.parse().ok()
}

/// sled's log file, in the data directory.
pub(crate) const SLED_LOG: &str = "db";

/// How many topology changes sled has taken (`meta`), also written to
/// [`TOPOLOGY_VERSION`] after each one is flushed: a sled log that lost
/// changes (sled reads a damaged log as ending early) holds fewer.
pub(super) use record::TOPOLOGY_VERSION_KEY;
pub(super) const TOPOLOGY_VERSION: &str = "topology-version";

fn topology_version(meta: &sled::Tree) -> sled::Result<u64> {
    Ok(meta
        .get(TOPOLOGY_VERSION_KEY)?
        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

/// `"LVTV" ‖ crc32 u32 ‖ version u64`.
pub(super) fn encode_topology_version(version: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(b"LVTV");
    b[8..].copy_from_slice(&version.to_be_bytes());
    let crc = crc32fast::hash(&b[8..]);
    b[4..8].copy_from_slice(&crc.to_be_bytes());
    b
}

/// sled must hold at least as many topology changes as were flushed.
fn check_topology_version(dir: &Path, meta: &sled::Tree) -> Result<(), StoreError> {
    let path = dir.join(TOPOLOGY_VERSION);
    let db = dir.join(SLED_LOG);
    let in_sled = topology_version(meta).map_err(|e| StoreError::Damaged {
        path: db.clone(),
        detail: e.to_string(),
    })?;
    let written = match std::fs::read(&path) {
        Ok(raw) => {
            let version = raw
                .get(8..16)
                .map(|v| u64::from_be_bytes(v.try_into().expect("8 bytes")));
            match version {
                Some(v) if raw.len() == 16 && raw == encode_topology_version(v) => v,
                _ => {
                    return Err(StoreError::Damaged {
                        path,
                        detail: "the topology change count is damaged".into(),
                    })
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if in_sled == 0 {
                return Ok(());
            }
            return Err(StoreError::Damaged {
                path,
                detail: format!(
                    "the topology change count is missing (sled's log holds {in_sled} changes)"
                ),
            });
        }
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    if in_sled < written {
        return Err(StoreError::Damaged {
            path: db,
            detail: format!(
                "sled's log lost topology changes (queues, exchanges, bindings or users): it \
                 holds {in_sled} of the {written} written"
            ),
        });
    }
    Ok(())
}

/// Where message bodies and queue indexes live, under the data directory.
pub(super) const SEGMENT_DIR: &str = "messages";
pub(super) const QUEUE_DIR: &str = "queues";

/// What sled holds: topology and delivered marks.
struct Topology {
    recovered: Recovered,
    queues: Vec<QueueRecord>,
    delivered: HashMap<u32, u64>,
}

// Start-up, before any client is served: marking a new store may flush.
#[allow(clippy::disallowed_methods)]
fn read_topology(
    dir: &Path,
    db: &sled::Db,
    meta: &sled::Tree,
    marks: &sled::Tree,
) -> Result<Topology, StoreError> {
    let damaged = |detail: String| StoreError::Damaged {
        path: dir.join(SLED_LOG),
        detail,
    };
    match meta
        .get(record::FORMAT_KEY)
        .map_err(|e| damaged(e.to_string()))?
    {
        Some(found) if found.as_ref() == record::FORMAT => {}
        Some(found) => {
            return Err(StoreError::Incompatible {
                path: dir.to_owned(),
                found: String::from_utf8_lossy(&found).into_owned(),
                expected: String::from_utf8_lossy(record::FORMAT).into_owned(),
            })
        }
        None if meta.is_empty()
            && marks.is_empty()
            && (dir.join(QUEUE_DIR).exists() || dir.join(TOPOLOGY_VERSION).exists()) =>
        {
            return Err(damaged(
                "sled's log is empty (or unreadable from its start) but the data directory \
                 holds queues"
                    .into(),
            ))
        }
        None if meta.is_empty() && marks.is_empty() => {
            meta.insert(record::FORMAT_KEY, record::FORMAT)
                .and_then(|_| db.flush())
                .map_err(|e| damaged(e.to_string()))?;
        }
        None => {
            return Err(StoreError::Incompatible {
                path: dir.to_owned(),
                found: "none".into(),
                expected: String::from_utf8_lossy(record::FORMAT).into_owned(),
            })
        }
    }

    let mut recovered = Recovered::default();
    let mut queues = Vec::new();
    for item in meta.iter() {
        let (key, value) = item.map_err(|e| damaged(e.to_string()))?;
        let bad = || {
            damaged(format!(
                "unreadable record {:?}",
                String::from_utf8_lossy(&key)
            ))
        };
        match record::meta_kind(&key) {
            MetaKind::Format => {}
            MetaKind::Exchange => recovered
                .exchanges
                .push(ExchangeRecord::decode(&value).ok_or_else(bad)?),
            MetaKind::Queue => queues.push(QueueRecord::decode(&value).ok_or_else(bad)?),
            MetaKind::Binding => recovered
                .bindings
                .push(BindingRecord::decode(&value).ok_or_else(bad)?),
            MetaKind::Unknown => return Err(bad()),
        }
    }
    let mut delivered = HashMap::new();
    for item in marks.iter() {
        let (key, value) = item.map_err(|e| damaged(e.to_string()))?;
        let (queue_id, seq) = record::parse_delivered(&key, &value)
            .ok_or_else(|| damaged(format!("unreadable delivery mark {key:?}")))?;
        if queues.iter().any(|q| q.id == queue_id) {
            delivered.insert(queue_id, seq);
        } else {
            // Its queue is gone; a new queue may get the id.
            marks.remove(key).map_err(|e| damaged(e.to_string()))?;
        }
    }
    Ok(Topology {
        recovered,
        queues,
        delivered,
    })
}

/// Runs `f`, turning a panic into its message without printing a backtrace.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the storage engine panicked while reading it".into())
    })
}

#[cfg(test)]
// Tests make stores to open: flushing them is the point.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("leveret-recovery-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_store_from_another_format_is_refused_naming_its_directory() {
        let dir = temp_dir("format");
        {
            let db = sled::open(&dir).unwrap();
            let meta = db.open_tree("meta").unwrap();
            meta.insert(record::FORMAT_KEY, &b"leveret-store-0"[..])
                .unwrap();
            db.flush().unwrap();
        }
        let err = open(&dir, &StorageConfig::default(), Recorder::default())
            .err()
            .expect("refused");
        assert!(matches!(err, StoreError::Incompatible { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&dir.display().to_string()) && text.contains("leveret-store-0"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_sled_store_without_our_marker_is_refused() {
        let dir = temp_dir("foreign");
        {
            let db = sled::open(&dir).unwrap();
            db.open_tree("marks").unwrap().insert(b"x", b"y").unwrap();
            db.flush().unwrap();
        }
        let err = open(&dir, &StorageConfig::default(), Recorder::default())
            .err()
            .expect("refused");
        assert!(matches!(err, StoreError::Incompatible { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_store_opens_empty_and_reopens() {
        let dir = temp_dir("new");
        let (store, recovered) =
            open(&dir, &StorageConfig::default(), Recorder::default()).unwrap();
        assert!(recovered.queues.is_empty() && recovered.exchanges.is_empty());
        store.close();
        drop(store);
        let (store, _) = open(&dir, &StorageConfig::default(), Recorder::default()).unwrap();
        store.close();
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

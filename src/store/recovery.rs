//! Opening the store at start-up: refuse a damaged or foreign store loudly,
//! read the topology, and count each durable queue's messages from its
//! index without reading bodies. Transient messages that were paged out,
//! and entries of queues that no longer exist, are dropped here.

use super::persister::Persister;
use super::queue_index::QueueIndexes;
use super::record::{self, BindingRecord, ExchangeRecord, MetaKind, QueueRecord};
use super::segments::{segment_path, Segments};
use super::{Backlog, Store, StoreError};
use crate::config::StorageConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;
use std::time::Instant;
use tracing::{info, warn};

/// Everything read back from the store.
#[derive(Default)]
pub struct Recovered {
    pub exchanges: Vec<ExchangeRecord>,
    pub queues: Vec<RecoveredQueue>,
    pub bindings: Vec<BindingRecord>,
    /// The `access` tree (vhosts, users, permissions), as stored.
    pub access: Vec<(Vec<u8>, Vec<u8>)>,
}

pub struct RecoveredQueue {
    pub record: QueueRecord,
    /// Messages in its index.
    pub messages: usize,
    /// Seq of its first message (meaningful when `messages > 0`).
    pub first_seq: u64,
    /// The seq its next message gets.
    pub next_seq: u64,
}

#[derive(Default)]
struct QueueScan {
    messages: usize,
    first_seq: u64,
    last_seq: Option<u64>,
}

pub fn open(dir: &Path, config: &StorageConfig) -> Result<(Arc<Store>, Recovered), StoreError> {
    let started = Instant::now();
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let damaged = |detail: String| StoreError::Damaged {
        path: dir.to_owned(),
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
                    path: dir.to_owned(),
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

    // One pass over every queue index: counts, transient leftovers, orphans.
    let expected_entries = clean_shutdown_entries(dir);
    let mut scans: HashMap<u32, QueueScan> = queue_records
        .iter()
        .map(|q| (q.id, QueueScan::default()))
        .collect();
    let mut live: HashMap<u32, u64> = HashMap::new();
    let mut segment_ends: HashMap<u32, u64> = HashMap::new();
    let (mut all_entries, mut dropped, mut orphans) = (0u64, 0u64, 0u64);
    let io = |path: PathBuf| move |source| StoreError::Io { path, source };
    let (mut index, bad) = QueueIndexes::open(&dir.join(QUEUE_DIR), |queue_id, slot| {
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
        if scan.last_seq.is_none() {
            scan.first_seq = slot.seq;
        }
        scan.last_seq = Some(slot.seq);
        scan.messages += 1;
        *live.entry(slot.at.segment).or_default() += 1;
        let end = segment_ends.entry(slot.at.segment).or_default();
        *end = (*end).max(slot.at.offset + u64::from(slot.at.len));
        true
    })
    .map_err(io(dir.join(QUEUE_DIR)))?;
    if let Some(first) = bad.first() {
        if expected_entries.is_some() {
            return Err(StoreError::Damaged {
                path: first.path.clone(),
                detail: format!("{} index slots fail their checksum", bad.len()),
            });
        }
        // After a crash: slots torn by the write in progress, never confirmed.
        warn!(slots = bad.len(), path = %first.path.display(), "ignored index slots torn by a crash");
    }
    if let Some(expected) = expected_entries {
        if expected != all_entries {
            return Err(damaged(format!(
                "the last clean stop left {expected} queued messages but {all_entries} are readable"
            )));
        }
        // A clean stop finishes every queue deletion, so entries without a
        // queue record mean the topology lost records.
        if orphans > 0 {
            return Err(damaged(format!(
                "{orphans} queued messages belong to queues missing from the topology"
            )));
        }
    }
    for queue_id in index.queue_ids() {
        if !scans.contains_key(&queue_id) {
            index.drop_queue(queue_id);
        }
    }
    // Every body an entry points at must be there.
    let segment_dir = dir.join(SEGMENT_DIR);
    for (segment, end) in &segment_ends {
        let path = segment_path(&segment_dir, *segment);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < *end {
            return Err(StoreError::Damaged {
                path,
                detail: format!(
                    "message segment is {len} bytes but queued messages reach byte {end}"
                ),
            });
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
            // New messages must sort after everything delivered before,
            // even when the queue was drained: the mark says "delivered".
            next_seq: scan
                .last_seq
                .map_or(0, |s| s + 1)
                .max(delivered.get(&record.id).copied().unwrap_or(0)),
            record,
        });
    }
    let segments =
        Segments::open(&segment_dir, config.segment_size, live).map_err(io(segment_dir.clone()))?;

    // From here on the store may change: a marker left behind would lie.
    let marker = dir.join(CLEAN_SHUTDOWN_MARKER);
    if marker.exists() {
        std::fs::remove_file(&marker).map_err(io(marker.clone()))?;
    }
    let entries = recovered.queues.iter().map(|q| q.messages as u64).sum();
    let backlog = Arc::new(Backlog::new(config.persister_backlog));
    let fail_stop = Arc::new(super::fail_stop::FailStop::for_dir(dir, config));
    let (tx, rx) = std::sync::mpsc::channel();
    let persister = Persister::new(
        db.clone(),
        marks,
        index,
        segments,
        delivered,
        backlog.clone(),
        entries,
        marker,
        fail_stop.clone(),
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
    let store = Store {
        path: dir.to_owned(),
        db,
        meta,
        access,
        persister: tx,
        thread: parking_lot::Mutex::new(Some(thread)),
        next_msg_id: AtomicU64::new(1),
        next_queue_id: AtomicU32::new(next_queue_id),
        backlog,
        queue_window: config.queue_memory_window,
        fail_stop,
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
pub const CLEAN_SHUTDOWN_MARKER: &str = "clean-shutdown";

/// The entry count a clean stop recorded, if the last stop was clean.
fn clean_shutdown_entries(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(CLEAN_SHUTDOWN_MARKER)).ok()?;
    text.trim().strip_prefix("entries ")?.parse().ok()
}

/// Where message bodies and queue indexes live, under the data directory.
pub const SEGMENT_DIR: &str = "messages";
pub const QUEUE_DIR: &str = "queues";

/// What sled holds: topology and delivered marks.
struct Topology {
    recovered: Recovered,
    queues: Vec<QueueRecord>,
    delivered: HashMap<u32, u64>,
}

fn read_topology(
    dir: &Path,
    db: &sled::Db,
    meta: &sled::Tree,
    marks: &sled::Tree,
) -> Result<Topology, StoreError> {
    let damaged = |detail: String| StoreError::Damaged {
        path: dir.to_owned(),
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
        None if meta.is_empty() && marks.is_empty() && !dir.join(QUEUE_DIR).exists() => {
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
        let err = open(&dir, &StorageConfig::default())
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
        let err = open(&dir, &StorageConfig::default())
            .err()
            .expect("refused");
        assert!(matches!(err, StoreError::Incompatible { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_store_opens_empty_and_reopens() {
        let dir = temp_dir("new");
        let (store, recovered) = open(&dir, &StorageConfig::default()).unwrap();
        assert!(recovered.queues.is_empty() && recovered.exchanges.is_empty());
        store.close();
        drop(store);
        let (store, _) = open(&dir, &StorageConfig::default()).unwrap();
        store.close();
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! What the management API and `/metrics` show of stream queues: where
//! the log stands (first and last offset, segments, bytes on disk), each
//! consumer's offset and lag behind the tail, and the offsets stored for
//! named readers with their lag.

use crate::broker::queue::Queue;
use serde_json::{json, Map, Value};

/// One reader's place: (consumer tag, channel number, next offset, lag).
pub(super) struct ReaderRow {
    pub(super) tag: String,
    pub(super) next: u64,
    pub(super) lag: u64,
}

/// A stream's state for the API and metrics.
pub(super) struct StreamRow {
    pub(super) first: u64,
    /// One past the newest readable offset.
    pub(super) end: u64,
    pub(super) segments: usize,
    pub(super) bytes: u64,
    pub(super) readers: Vec<ReaderRow>,
    /// (name, stored offset, lag).
    pub(super) stored: Vec<(String, u64, u64)>,
    /// In force: the arguments resolved against the policy.
    pub(super) retention: crate::store::stream_writer::Retention,
}

pub(super) fn row(q: &Queue) -> Option<StreamRow> {
    let s = q.stream()?;
    let extent = s.extent();
    let end = s.readable_end();
    let readers = s
        .readers()
        .iter()
        .map(|r| {
            let next = r.next.load(std::sync::atomic::Ordering::Relaxed);
            ReaderRow {
                tag: r.consumer.tag.clone(),
                next,
                lag: end.saturating_sub(next),
            }
        })
        .collect();
    let stored = s
        .stored_offsets()
        .into_iter()
        .map(|(name, offset)| {
            let lag = end.saturating_sub(offset + 1);
            (name, offset, lag)
        })
        .collect();
    Some(StreamRow {
        first: extent.first,
        end,
        segments: extent.segments,
        bytes: extent.bytes,
        readers,
        stored,
        retention: s.retention(),
    })
}

/// Adds a stream's fields to its queue's JSON: RabbitMQ's `segments`,
/// `first_offset` and `committed_offset`, and a `stream` object with the
/// readers and stored offsets; each stream consumer's entry in
/// `consumer_details` gets its `offset` and `lag`.
pub(super) fn queue_fields(q: &Queue, queue: &mut Value) {
    let Some(row) = row(q) else { return };
    let last = row.end.checked_sub(1).filter(|l| *l >= row.first);
    if let Some(details) = queue["consumer_details"].as_array_mut() {
        for d in details {
            let tag = d["consumer_tag"].as_str().unwrap_or_default();
            if let Some(r) = row.readers.iter().find(|r| r.tag == tag) {
                d["offset"] = json!(r.next);
                d["lag"] = json!(r.lag);
            }
        }
    }
    let stored: Map<String, Value> = row
        .stored
        .iter()
        .map(|(name, offset, lag)| (name.clone(), json!({"offset": offset, "lag": lag})))
        .collect();
    queue["segments"] = json!(row.segments);
    queue["first_offset"] = json!(row.first);
    queue["committed_offset"] = json!(last);
    queue["stream"] = json!({
        "first_offset": row.first,
        "last_offset": last,
        "segments": row.segments,
        "bytes": row.bytes,
        "readers": row.readers.iter().map(|r| json!({
            "consumer_tag": r.tag, "offset": r.next, "lag": r.lag,
        })).collect::<Vec<_>>(),
        "stored_offsets": stored,
        "retention": {
            "max_length_bytes": row.retention.max_bytes,
            "max_age_ms": row.retention.max_age_ms,
        },
    });
}

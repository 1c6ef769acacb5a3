//! Publishers of a stream connection: declare, publish (v1, and v2 with a
//! filter value per message), confirms once the entries are on disk,
//! deduplication by publisher reference and publishing id, delete.
//!
//! What a connection has published and not yet had confirmed is bounded
//! ([`MAX_UNCONFIRMED_BYTES`]): past it the connection stops reading its
//! client until confirms come back, as RabbitMQ's publisher credits do.

use super::connection::{Connection, MAX_REFERENCE};
use super::frame::{code, key, BadMessage, Messages, Out};
use crate::broker::access::{Access, Resource};
use crate::broker::ops::Gate;
use crate::broker::queue::Queue;
use crate::broker::stream_clients::PublisherStats;
use crate::store::stream_log::MAX_FILTER_LEN;
use crate::store::stream_writer::NewEntry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Payload bytes a connection may have waiting for their confirm.
pub(super) const MAX_UNCONFIRMED_BYTES: usize = 64 << 20;

pub(super) struct Publisher {
    pub(super) queue: Arc<Queue>,
    pub(super) stream: String,
    reference: Option<String>,
    /// Its counts, for the management API.
    stats: Arc<PublisherStats>,
}

/// Bytes published and not yet confirmed, and a wake-up as they are.
#[derive(Default)]
pub(super) struct Unconfirmed {
    bytes: AtomicUsize,
    pub(super) settled: Notify,
}

impl Unconfirmed {
    pub(super) fn over_limit(&self) -> bool {
        self.bytes.load(Ordering::Acquire) > MAX_UNCONFIRMED_BYTES
    }

    /// Completes once back under the limit.
    pub(super) async fn below_limit(&self) {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if !self.over_limit() {
                return;
            }
            settled.await;
        }
    }
}

impl Connection {
    /// DeclarePublisher, with RabbitMQ's checks in its order.
    pub(super) fn declare_publisher(
        &mut self,
        corr: u32,
        id: u8,
        reference: &str,
        stream: &str,
    ) -> u16 {
        let s = self.session();
        let may_write = self
            .gate()
            .check(Access::Write, Resource::Queue, stream)
            .is_ok();
        if reference.len() > MAX_REFERENCE {
            return if may_write {
                code::PRECONDITION_FAILED
            } else {
                code::ACCESS_REFUSED
            };
        }
        if !may_write {
            return code::ACCESS_REFUSED;
        }
        let taken = self.publishers.contains_key(&id)
            || (!reference.is_empty()
                && self
                    .publishers
                    .values()
                    .any(|p| p.stream == stream && p.reference.as_deref() == Some(reference)));
        if taken {
            return code::PRECONDITION_FAILED;
        }
        let queue = match s.vhost.queue(stream) {
            Ok(q) if q.stream().is_some() => q,
            _ => return code::STREAM_DOES_NOT_EXIST,
        };
        let Some(log) = queue.stream() else {
            return code::STREAM_DOES_NOT_EXIST;
        };
        if !reference.is_empty() && !self.broker.stream_publishers.admits(log.id, reference) {
            return code::PRECONDITION_FAILED;
        }
        log.watch(&self.watcher);
        let _ = corr;
        let stats = Arc::new(PublisherStats::new(id, reference, queue.clone()));
        self.client.add_publisher(&stats);
        self.publishers.insert(
            id,
            Publisher {
                queue: queue.clone(),
                stream: stream.to_string(),
                reference: (!reference.is_empty()).then(|| reference.to_string()),
                stats,
            },
        );
        code::OK
    }

    pub(super) fn delete_publisher(&mut self, id: u8) -> u16 {
        match self.publishers.remove(&id) {
            Some(_) => code::OK,
            None => code::PUBLISHER_DOES_NOT_EXIST,
        }
    }

    /// QueryPublisherSequence: read permission, the stream, then the
    /// highest publishing id the reference had stored (0: none).
    pub(super) fn publisher_sequence(&self, reference: &str, stream: &str) -> (u16, u64) {
        match self.lookup(stream, &[Access::Read]) {
            Ok(q) => {
                let seq = q.stream().and_then(|log| {
                    let accepted = self.broker.stream_publishers.last(log.id, reference);
                    accepted.max(log.publisher_sequence(reference))
                });
                (code::OK, seq.unwrap_or(0))
            }
            Err(c) => (c, 0),
        }
    }

    /// Publish: each message appended as an AMQP 1.0 entry (tag 1) in one
    /// batch; duplicates (a publishing id at or below the reference's
    /// highest) and the batch itself are confirmed once on disk.
    pub(super) fn publish(&mut self, version: u16, publisher_id: u8, messages: &[u8]) {
        let Some(p) = self.publishers.get(&publisher_id) else {
            let ids: Vec<u64> = Messages::new(version, messages)
                .map_while(|m| m.ok().map(|m| m.publishing_id))
                .collect();
            self.publish_error(publisher_id, code::PUBLISHER_DOES_NOT_EXIST, &ids);
            return;
        };
        let Some(log) = p.queue.stream() else {
            return;
        };
        let mut entries = Vec::new();
        let mut stored_ids = Vec::new();
        let mut duplicates = Vec::new();
        let mut refused = Vec::new();
        let mut bytes = 0;
        let now = now_ms();
        let mut received = 0;
        let mut take = |seq: &mut Option<u64>| {
            let mut rest = Messages::new(version, messages);
            for m in rest.by_ref() {
                let m = match m {
                    Ok(m) => m,
                    // Sub-entry batches are not stored: refused, with
                    // every message after them (no gap in the ids).
                    Err(BadMessage::SubBatch(id)) => {
                        received += 1;
                        refused.push(id);
                        break;
                    }
                    Err(BadMessage::Malformed) => break,
                };
                received += 1;
                if seq.is_some_and(|last| m.publishing_id <= last) {
                    duplicates.push(m.publishing_id);
                    continue;
                }
                let filter = match m.filter {
                    None => None,
                    Some(f) => match std::str::from_utf8(f) {
                        Ok(f) if f.len() <= MAX_FILTER_LEN => Some(f.to_string()),
                        _ => {
                            refused.push(m.publishing_id);
                            continue;
                        }
                    },
                };
                if seq.is_some() || p.reference.is_some() {
                    *seq = Some(m.publishing_id);
                }
                bytes += m.message.len();
                stored_ids.push(m.publishing_id);
                entries.push(NewEntry {
                    timestamp: now,
                    filter,
                    payload: crate::stream_entry::encode_amqp10(m.message),
                });
            }
        };
        match &p.reference {
            Some(r) => {
                // What an earlier run of the broker stored for it.
                let stored = log.publisher_sequence(r);
                self.broker.stream_publishers.with(log.id, r, stored, take)
            }
            None => take(&mut None),
        }
        let stats = p.stats.clone();
        stats.published(received);
        stats.errored(refused.len());
        stats.confirmed(duplicates.len());
        self.publish_error(publisher_id, code::PRECONDITION_FAILED, &refused);
        if !duplicates.is_empty() {
            self.outbox.push(|b| confirm(b, publisher_id, &duplicates));
        }
        if entries.is_empty() {
            return;
        }
        let outbox = self.outbox.clone();
        let unconfirmed = self.unconfirmed.clone();
        unconfirmed.bytes.fetch_add(bytes, Ordering::AcqRel);
        // Stored beside the stream once on disk, for deduplication after
        // a restart.
        let sequence = p.reference.clone().map(|r| (p.queue.clone(), r));
        log.append(
            entries,
            Box::new(move |appended| {
                match appended {
                    // A cluster leader past its lease deadline confirms
                    // nothing (it may already have been replaced); the
                    // connection is closed as the node steps down.
                    Ok(_) if !crate::cluster::may_serve() => {}
                    Ok(_) => {
                        if let (Some((queue, reference)), Some(&last)) =
                            (&sequence, stored_ids.iter().max())
                        {
                            if let Some(log) = queue.stream() {
                                log.set_publisher_sequence(reference, last);
                            }
                        }
                        stats.confirmed(stored_ids.len());
                        outbox.push(|b| confirm(b, publisher_id, &stored_ids))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "stream publish not stored");
                        stats.errored(stored_ids.len());
                        outbox.push(|b| {
                            publish_error(b, publisher_id, code::INTERNAL_ERROR, &stored_ids)
                        })
                    }
                }
                unconfirmed.bytes.fetch_sub(bytes, Ordering::AcqRel);
                unconfirmed.settled.notify_one();
            }),
        );
    }

    pub(super) fn publish_error(&self, publisher_id: u8, code: u16, ids: &[u64]) {
        if !ids.is_empty() {
            self.outbox
                .push(|b| publish_error(b, publisher_id, code, ids));
        }
    }
}

/// Whether `queue`'s stream is still there (not deleted).
pub(super) fn still_there(queue: &Queue) -> bool {
    queue.stream().is_some_and(|log| !log.is_deleted())
}

fn confirm(b: &mut bytes::BytesMut, publisher_id: u8, ids: &[u64]) {
    let mut out = Out::begin(b, key::PUBLISH_CONFIRM, 1);
    out.u8(publisher_id).u32(ids.len() as u32);
    for id in ids {
        out.u64(*id);
    }
}

fn publish_error(b: &mut bytes::BytesMut, publisher_id: u8, code: u16, ids: &[u64]) {
    let mut out = Out::begin(b, key::PUBLISH_ERROR, 1);
    out.u8(publisher_id).u32(ids.len() as u32);
    for id in ids {
        out.u64(*id).u16(code);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

//! Subscriptions of a stream connection: subscribe from an offset
//! specification, credit (one credit, one chunk), deliveries as osiris
//! chunks, unsubscribe.
//!
//! The connection's task delivers: while a subscription has credit, the
//! stream has entries past its offset and the outbox is under its limit,
//! it reads a batch (on a blocking thread, inside `StreamQueue::read`) and
//! writes it as chunks of consecutive offsets. A filtered read can leave
//! gaps; a chunk never spans one, since clients number a chunk's messages
//! from its first offset. Entries published over AMQP 0-9-1 are converted
//! to AMQP 1.0 messages, those published here go out as they came.

use super::chunk::{ChunkWriter, MAX_ENTRIES};
use super::connection::Connection;
use super::frame::{code, key, OffsetSpec, Out, Pair};
use super::outbox::READ_LIMIT;
use crate::broker::access::Access;
use crate::broker::queue::Queue;
use crate::broker::stream_clients::SubscriptionStats;
use crate::broker::stream_consume::StartAt;
use crate::store::stream_log::{ChunkRef, Entry, Filter, CHUNK_HEADER};
use bytes::BufMut;
use std::borrow::Cow;
use std::sync::Arc;

/// Entries one read takes at most.
const READ_ENTRIES: usize = 1024;
/// Payload bytes one read takes at most (about).
const READ_BYTES: usize = 1 << 20;
/// Chunk data one look at the log takes at most (about): chunks sent from
/// disk cost no memory, so a round may take a few.
const CHUNK_BYTES: usize = 4 << 20;
/// Credit a subscription holds at most (clients grant a few at a time).
const MAX_CREDIT: u32 = 1 << 20;

pub(super) struct Subscription {
    pub(super) queue: Arc<Queue>,
    pub(super) stream: String,
    /// The next offset to deliver.
    next: u64,
    /// Chunks it may still be sent.
    credit: u32,
    filter: Option<Filter>,
    /// The stream's readable end when a read there found nothing to move
    /// on to: not read again until the stream grows (never a busy loop).
    stalled_at: Option<u64>,
    /// Its consumer group, with single active consumer.
    pub(super) sac: Option<super::groups::Sac>,
    /// What the management API shows of it.
    pub(super) stats: Arc<SubscriptionStats>,
}

impl Subscription {
    /// Whether it may be sent chunks: not an inactive group member.
    fn delivering(&self) -> bool {
        self.sac.as_ref().is_none_or(|g| g.delivering)
    }

    /// Where an activated group member starts.
    pub(super) fn set_next(&mut self, next: u64) {
        self.next = next;
        self.stalled_at = None;
        self.stats.moved(next, self.credit);
    }
}

impl Connection {
    /// Subscribe: read permission, the stream, a free id, then where it
    /// starts (RabbitMQ's order); the response goes before any delivery.
    pub(super) async fn subscribe(
        &mut self,
        id: u8,
        stream: &str,
        offset: OffsetSpec,
        credit: u16,
        properties: &[Pair<'_>],
    ) -> u16 {
        let queue = match self.lookup(stream, &[Access::Read]) {
            Ok(q) => q,
            Err(c) => return c,
        };
        if self.subscriptions.contains_key(&id) {
            return code::SUBSCRIPTION_ID_ALREADY_EXISTS;
        }
        let property = |k: &str| {
            properties
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| *v)
        };
        let values: Vec<String> = properties
            .iter()
            .filter(|(k, _)| k.starts_with("filter."))
            .map(|(_, v)| v.to_string())
            .collect();
        let filter = (!values.is_empty()).then(|| Filter {
            values,
            match_unfiltered: property("match-unfiltered") == Some("true"),
        });
        let Some(log) = queue.stream() else {
            return code::STREAM_DOES_NOT_EXIST;
        };
        let next = match log.resolve(start_at(offset)).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(stream = %stream, error = %e, "cannot resolve a stream offset");
                return code::INTERNAL_ERROR;
            }
        };
        let sac = match self.join_group(id, stream, offset, properties) {
            Ok(sac) => sac,
            Err(c) => return c,
        };
        log.watch(&self.watcher);
        let stats = Arc::new(SubscriptionStats::new(
            id,
            queue.clone(),
            properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sac.is_some(),
            next,
            credit as u32,
        ));
        self.client.add_subscription(&stats);
        self.subscriptions.insert(
            id,
            Subscription {
                queue: queue.clone(),
                stream: stream.to_string(),
                next,
                credit: credit as u32,
                filter,
                stalled_at: None,
                sac,
                stats,
            },
        );
        code::OK
    }

    pub(super) fn unsubscribe(&mut self, id: u8) -> u16 {
        match self.subscriptions.remove(&id) {
            Some(_) => code::OK,
            None => code::SUBSCRIPTION_ID_DOES_NOT_EXIST,
        }
    }

    /// Credit: more chunks for a subscription; for an unknown one, the
    /// credit response RabbitMQ sends only on a problem.
    pub(super) fn credit(&mut self, id: u8, credit: u16) {
        match self.subscriptions.get_mut(&id) {
            Some(s) => {
                s.credit = s.credit.saturating_add(credit as u32).min(MAX_CREDIT);
                s.stats.set_credits(s.credit);
            }
            None => self.outbox.push(|b| {
                Out::begin(b, key::CREDIT | key::RESPONSE, 1)
                    .u16(code::SUBSCRIPTION_ID_DOES_NOT_EXIST)
                    .u8(id);
            }),
        }
    }

    /// Whether a subscription could be sent something now.
    pub(super) fn can_deliver(&self) -> bool {
        self.subscriptions.values().any(|s| {
            s.delivering()
                && s.queue.stream().is_some_and(|l| {
                    let end = l.readable_end();
                    s.credit > 0 && s.next < end && s.stalled_at != Some(end)
                })
        })
    }

    /// One round of deliveries: a read for each subscription that has
    /// credit and entries to read, while the outbox has room.
    pub(super) async fn deliver(&mut self) {
        let ids: Vec<u8> = self.subscriptions.keys().copied().collect();
        for id in ids {
            if self.outbox.pending() > READ_LIMIT {
                return;
            }
            let Some(s) = self.subscriptions.get(&id) else {
                continue;
            };
            let queue = s.queue.clone();
            let Some(log) = queue.stream() else {
                continue;
            };
            let end = log.readable_end();
            if s.credit == 0 || !s.delivering() || s.next >= end || s.stalled_at == Some(end) {
                continue;
            }
            let (from, filter) = (s.next, s.filter.clone());
            let committed = self
                .deliver_v2
                .then(|| log.readable_end().saturating_sub(1));
            // Unfiltered, whole chunks go as they lie on disk; the others
            // (a chunk started before `from`, one of AMQP 0-9-1 messages,
            // one larger than the client's frame_max) are read and made up.
            let mut read_entries = READ_ENTRIES;
            if filter.is_none() {
                let chunks = match log.chunks(from, CHUNK_BYTES).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(stream = %queue.name, error = %e, "a stream could not be read; its subscription ends");
                        self.subscriptions.remove(&id);
                        continue;
                    }
                };
                let Some(s) = self.subscriptions.get_mut(&id) else {
                    continue;
                };
                let (sent, next, entries) = send_chunks(
                    &self.outbox,
                    id,
                    committed,
                    &chunks,
                    from,
                    s.credit,
                    self.frame_max,
                );
                if sent > 0 {
                    s.credit -= sent;
                    s.next = next;
                    s.stats.sent(entries, next - 1, next, s.credit);
                    continue;
                }
                // Made up only up to the end of the chunk, so that the
                // next round starts at a chunk.
                if let Some(c) = chunks.first() {
                    let end = c.first_offset + u64::from(c.entries);
                    read_entries = read_entries.min(end.saturating_sub(from).max(1) as usize);
                }
            }
            let read = match log.read(from, read_entries, READ_BYTES, filter).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(stream = %queue.name, error = %e, "a stream could not be read; its subscription ends");
                    self.subscriptions.remove(&id);
                    continue;
                }
            };
            let Some(s) = self.subscriptions.get_mut(&id) else {
                continue;
            };
            let (sent, next) = write_chunks(
                &self.outbox,
                id,
                committed,
                &read.entries,
                s.credit,
                self.frame_max,
            );
            s.credit -= sent;
            s.next = next.unwrap_or(read.next);
            s.stalled_at = (s.next <= from).then_some(end);
            let delivered = read.entries.partition_point(|e| e.offset < s.next);
            match delivered.checked_sub(1) {
                Some(last) => s.stats.sent(
                    delivered as u64,
                    read.entries[last].offset,
                    s.next,
                    s.credit,
                ),
                None => s.stats.moved(s.next, s.credit),
            }
        }
    }
}

/// The broker's start for a protocol's offset specification.
pub(super) fn start_at(offset: OffsetSpec) -> StartAt {
    match offset {
        OffsetSpec::First => StartAt::First,
        OffsetSpec::Last => StartAt::Last,
        OffsetSpec::Next => StartAt::Next,
        OffsetSpec::Offset(n) => StartAt::Offset(n),
        OffsetSpec::Timestamp(ms) => StartAt::Time(ms),
    }
}

/// Sends chunks as they lie on disk, from the first while each is whole
/// past `from`, of AMQP 1.0 messages and within `frame_max`, at most
/// `credit` of them; returns how many were sent, the offset after them and
/// how many entries they hold.
fn send_chunks(
    outbox: &super::outbox::Outbox,
    subscription: u8,
    committed: Option<u64>,
    chunks: &[ChunkRef],
    from: u64,
    credit: u32,
    frame_max: u32,
) -> (u32, u64, u64) {
    let before_header = 2 + 2 + 1 + if committed.is_some() { 8 } else { 0 };
    let mut sent = 0;
    let mut next = from;
    let mut entries = 0;
    for c in chunks {
        let size = before_header + CHUNK_HEADER + c.data_len as usize;
        let sendable = c.first_offset >= from
            && c.kind == crate::stream_entry::AMQP_10
            && (frame_max == 0 || 4 + size <= frame_max as usize);
        if sent >= credit || !sendable {
            break;
        }
        outbox.push_file(
            |b| {
                b.put_u32(size as u32);
                b.put_u16(key::DELIVER);
                b.put_u16(if committed.is_some() { 2 } else { 1 });
                b.put_u8(subscription);
                if let Some(c) = committed {
                    b.put_u64(c);
                }
                b.put_slice(&c.header);
            },
            c.file.clone(),
            c.data_at,
            c.data_len as usize,
        );
        sent += 1;
        entries += u64::from(c.entries);
        next = c.first_offset + u64::from(c.entries);
    }
    (sent, next, entries)
}

/// Writes `entries` as chunks of consecutive offsets, at most `credit` of
/// them, each Deliver frame within `frame_max` (0: no limit) unless one
/// entry alone is larger; returns how many were sent and, if entries were
/// left for lack of credit, the first of them.
fn write_chunks(
    outbox: &super::outbox::Outbox,
    subscription: u8,
    committed: Option<u64>,
    entries: &[Entry],
    credit: u32,
    frame_max: u32,
) -> (u32, Option<u64>) {
    // Size, key, version, subscription and committed offset before the chunk.
    const BEFORE_CHUNK: usize = 4 + 2 + 2 + 1 + 8;
    let chunk_max = match frame_max {
        0 => usize::MAX,
        n => (n as usize).saturating_sub(BEFORE_CHUNK),
    };
    // Conversions outside the outbox's lock.
    let bodies: Vec<Cow<'_, [u8]>> = entries.iter().map(|e| body(&e.payload)).collect();
    let mut sent = 0;
    let mut at = 0;
    outbox.push(|b| {
        while at < entries.len() && sent < credit {
            let first = &entries[at];
            let mut out = Out::begin(b, key::DELIVER, if committed.is_some() { 2 } else { 1 });
            out.u8(subscription);
            if let Some(c) = committed {
                out.u64(c);
            }
            let mut chunk = ChunkWriter::begin(out.buf());
            let mut expected = first.offset;
            while at < entries.len()
                && entries[at].offset == expected
                && (chunk.entries() as usize) < MAX_ENTRIES
                && (chunk.entries() == 0 || chunk.len() + 4 + bodies[at].len() <= chunk_max)
                && chunk.push(&bodies[at])
            {
                expected += 1;
                at += 1;
            }
            if chunk.entries() == 0 {
                // Too large for a simple entry (2 GiB): never stored.
                at += 1;
            }
            chunk.finish(first.offset, first.timestamp);
            sent += 1;
        }
    });
    (sent, entries.get(at).map(|e| e.offset))
}

/// What a stream client receives for an entry's payload: an AMQP 1.0
/// message as published, or one converted from AMQP 0-9-1.
fn body(payload: &[u8]) -> Cow<'_, [u8]> {
    match payload.split_first() {
        Some((&crate::stream_entry::AMQP_10, message)) => Cow::Borrowed(message),
        _ => match crate::stream_entry::decode(bytes::Bytes::copy_from_slice(payload)) {
            Ok(crate::stream_entry::Payload::Amqp091 {
                exchange,
                routing_key,
                properties,
                body,
            }) => Cow::Owned(crate::amqp10::from_amqp091(
                &exchange,
                &routing_key,
                &properties,
                &body,
            )),
            Ok(crate::stream_entry::Payload::Amqp10(m)) => Cow::Owned(m.to_vec()),
            // The log's checksum held: a bug, not damage. An empty message
            // keeps the offsets in step.
            Err(e) => {
                tracing::error!(error = %e, "a stream entry could not be read");
                Cow::Borrowed(&[])
            }
        },
    }
}

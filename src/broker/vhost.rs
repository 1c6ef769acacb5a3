//! A virtual host: its exchanges, queues and the routing between them.

use super::exchange::{Binding, Destination, Exchange, ExchangeKind, RoutingInfo};
use super::policy::{Policy, PolicyKind, PolicyRecord, PolicySet};
use super::queue::{OnDisk, Queue, QueueServices};
use super::queue_args::{Declared, QueueArgs};
use super::stream::{Appends, StreamQueue};
use crate::error::AmqpError;
use crate::hash::DashMap;
use crate::message::Message;
use crate::store::record::{BindingRecord, ExchangeRecord, QueueRecord};
use crate::store::stream_log::StreamLogError;
use crate::store::{RecoveredQueue, Store, StoreError};
use amq_protocol::types::{AMQPValue, FieldTable};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) struct VHost {
    pub(crate) name: String,
    services: QueueServices,
    store: Arc<Store>,
    exchanges: DashMap<String, Arc<Exchange>>,
    queues: DashMap<String, Arc<Queue>>,
    /// Taken before a queue's lock when applying, never the other way;
    /// held only to match and apply, never for I/O.
    policies: parking_lot::RwLock<PolicySet>,
    /// The vhost's `max-queues` limit; `u64::MAX` when it has none.
    max_queues: AtomicU64,
}

/// Arguments of exchange.declare.
pub(crate) struct ExchangeDeclare<'a> {
    pub(crate) name: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) passive: bool,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
    pub(crate) internal: bool,
    pub(crate) arguments: &'a FieldTable,
}

/// Arguments of queue.declare, the name already chosen.
pub(crate) struct QueueDeclare<'a> {
    pub(crate) name: &'a str,
    pub(crate) passive: bool,
    pub(crate) durable: bool,
    pub(crate) exclusive: bool,
    pub(crate) auto_delete: bool,
    pub(crate) arguments: &'a FieldTable,
    pub(crate) connection: u64,
}

/// Queue arguments whose values must match on redeclaration, as RabbitMQ.
const EQUIVALENT_QUEUE_ARGS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-overflow",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
];

fn inequivalent(
    arg: &str,
    what: &str,
    name: &str,
    vhost: &str,
    received: impl std::fmt::Display,
    current: impl std::fmt::Display,
) -> AmqpError {
    AmqpError::precondition_failed(format_args!(
        "inequivalent arg '{arg}' for {what} '{name}' in vhost '{vhost}': received '{received}' but current is '{current}'"
    ))
}

fn show(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".into(),
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        Some(AMQPValue::LongInt(n)) => n.to_string(),
        Some(AMQPValue::LongLongInt(n)) => n.to_string(),
        Some(AMQPValue::ShortInt(n)) => n.to_string(),
        Some(AMQPValue::Boolean(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
    }
}

/// An argument as RabbitMQ describes it when the other side has none.
fn described(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".into(),
        Some(v) => format!(
            "the value '{}' of type '{}'",
            show(Some(v)),
            crate::broker::queue_args::type_name(v)
        ),
    }
}

impl VHost {
    pub(crate) fn new(name: String, services: QueueServices, store: Arc<Store>) -> VHost {
        let vhost = VHost {
            name,
            services,
            store,
            exchanges: DashMap::default(),
            queues: DashMap::default(),
            policies: Default::default(),
            max_queues: AtomicU64::new(u64::MAX),
        };
        for (name, kind) in [
            ("", ExchangeKind::Direct),
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            vhost.exchanges.insert(
                name.to_string(),
                Arc::new(Exchange::new(
                    name.to_string(),
                    kind,
                    true,
                    false,
                    false,
                    FieldTable::default(),
                )),
            );
        }
        vhost
    }

    pub(crate) fn exchange(&self, name: &str) -> Result<Arc<Exchange>, AmqpError> {
        self.exchanges.get(name).map(|e| e.clone()).ok_or_else(|| {
            AmqpError::not_found(format_args!(
                "no exchange '{name}' in vhost '{}'",
                self.name
            ))
        })
    }

    pub(crate) fn queue(&self, name: &str) -> Result<Arc<Queue>, AmqpError> {
        self.queues.get(name).map(|q| q.clone()).ok_or_else(|| {
            AmqpError::not_found(format_args!("no queue '{name}' in vhost '{}'", self.name))
        })
    }

    pub(crate) fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.iter().map(|e| e.clone()).collect()
    }

    pub(crate) fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.iter().map(|q| q.clone()).collect()
    }

    pub(crate) fn declare_exchange(
        &self,
        d: &ExchangeDeclare<'_>,
    ) -> Result<Arc<Exchange>, AmqpError> {
        if d.name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if d.passive {
            return self.exchange(d.name);
        }
        let kind = ExchangeKind::parse(d.kind).ok_or_else(|| {
            AmqpError::command_invalid(format_args!("unknown exchange type '{}'", d.kind))
        })?;
        if let Some(existing) = self.exchanges.get(d.name).map(|e| e.clone()) {
            let what = "exchange";
            if existing.kind != kind {
                return Err(inequivalent(
                    "type",
                    what,
                    d.name,
                    &self.name,
                    d.kind,
                    existing.kind.as_str(),
                ));
            }
            if existing.durable != d.durable {
                return Err(inequivalent(
                    "durable",
                    what,
                    d.name,
                    &self.name,
                    d.durable,
                    existing.durable,
                ));
            }
            if existing.auto_delete != d.auto_delete {
                return Err(inequivalent(
                    "auto_delete",
                    what,
                    d.name,
                    &self.name,
                    d.auto_delete,
                    existing.auto_delete,
                ));
            }
            if existing.internal != d.internal {
                return Err(inequivalent(
                    "internal",
                    what,
                    d.name,
                    &self.name,
                    d.internal,
                    existing.internal,
                ));
            }
            let (new_ae, old_ae) = (
                d.arguments.inner().get("alternate-exchange"),
                existing.arguments.inner().get("alternate-exchange"),
            );
            if show(new_ae) != show(old_ae) {
                return Err(inequivalent(
                    "alternate-exchange",
                    what,
                    d.name,
                    &self.name,
                    show(new_ae),
                    show(old_ae),
                ));
            }
            return Ok(existing);
        }
        if d.name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format_args!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        let exchange = Arc::new(Exchange::new(
            d.name.to_string(),
            kind,
            d.durable,
            d.auto_delete,
            d.internal,
            d.arguments.clone(),
        ));
        let mut created = false;
        let exchange = self
            .exchanges
            .entry(d.name.to_string())
            .or_insert_with(|| {
                created = true;
                exchange
            })
            .clone();
        if created {
            self.apply_to_exchange(&exchange);
        }
        if created && exchange.durable {
            self.store.put_exchange(&ExchangeRecord {
                vhost: self.name.clone(),
                name: exchange.name.clone(),
                kind: exchange.kind.as_str().to_string(),
                auto_delete: exchange.auto_delete,
                internal: exchange.internal,
                arguments: exchange.arguments.clone(),
            });
        }
        Ok(exchange)
    }

    /// Puts back a durable exchange read from the store.
    pub(crate) fn restore_exchange(&self, r: ExchangeRecord) {
        let Some(kind) = ExchangeKind::parse(&r.kind) else {
            tracing::warn!(
                exchange = r.name,
                kind = r.kind,
                "stored exchange has an unknown type; skipped"
            );
            return;
        };
        let exchange = Exchange::new(
            r.name.clone(),
            kind,
            true,
            r.auto_delete,
            r.internal,
            r.arguments,
        );
        let exchange = Arc::new(exchange);
        self.apply_to_exchange(&exchange);
        self.exchanges.insert(r.name, exchange);
    }

    /// Puts back a durable queue read from the store, with its messages on
    /// disk; a stream's log is checked, and damage refuses the start.
    pub(crate) fn restore_queue(&self, r: RecoveredQueue) -> Result<(), StoreError> {
        let declared = Declared {
            name: &r.record.name,
            vhost: &self.name,
            durable: true,
            exclusive: false,
            auto_delete: r.record.auto_delete,
        };
        let args = QueueArgs::parse(&r.record.arguments, &declared).unwrap_or_else(|e| {
            tracing::warn!(queue = r.record.name, error = %e, "stored queue arguments no longer valid; ignored");
            QueueArgs::default()
        });
        let applied = self
            .policies
            .read()
            .for_queue(&r.record.name, args.queue_type);
        let stream = match &args.stream {
            Some(s) => Some(self.open_stream(&r.record.name, r.record.id, s.clone())?),
            None => None,
        };
        let on_disk = stream.is_none().then(|| OnDisk {
            store: self.store.clone(),
            queue_id: r.record.id,
            messages: r.messages,
            first_seq: r.first_seq,
            first_arrived_ms: r.first_arrived_ms,
            next_seq: r.next_seq,
        });
        let queue = Queue::new(
            r.record.name.clone(),
            self.name.clone(),
            true,
            None,
            r.record.auto_delete,
            r.record.arguments,
            args,
            applied,
            self.services.clone(),
            on_disk,
            stream,
        );
        self.queues.insert(r.record.name, queue);
        Ok(())
    }

    /// Opens a stream queue's log (creating it when new).
    fn open_stream(
        &self,
        name: &str,
        id: u32,
        args: crate::broker::stream_args::StreamArgs,
    ) -> Result<StreamQueue, StoreError> {
        let dir = crate::broker::stream::log_dir(self.store.path(), id);
        StreamQueue::open(
            name,
            id,
            args,
            self.store.path(),
            self.services.streams.clone(),
        )
        .map_err(|e| match e {
            StreamLogError::Io(source) => StoreError::Io { path: dir, source },
            StreamLogError::Damaged { ref file, .. } => StoreError::Damaged {
                path: file.clone(),
                detail: e.to_string(),
            },
        })
    }

    /// Puts back a durable binding read from the store.
    pub(crate) fn restore_binding(&self, r: BindingRecord) {
        let (Ok(source), Some(destination)) = (self.exchange(&r.source), self.destination(&r))
        else {
            tracing::warn!(
                source = r.source,
                destination = r.destination,
                "stored binding refers to a missing object; skipped"
            );
            return;
        };
        source.bind(Binding {
            destination,
            routing_key: r.routing_key,
            arguments: r.arguments,
        });
    }

    /// The vhost's policies (or operator policies), highest priority first.
    pub(crate) fn policies(&self, kind: PolicyKind) -> Vec<Arc<Policy>> {
        self.policies.read().list(kind).to_vec()
    }

    pub(crate) fn policy(&self, kind: PolicyKind, name: &str) -> Option<Arc<Policy>> {
        self.policies
            .read()
            .list(kind)
            .iter()
            .find(|p| p.name() == name)
            .cloned()
    }

    /// Adds or replaces a policy, stores it and applies it to every queue
    /// and exchange at once; true when it is new.
    /// The store write is queued under the write lock, so that two
    /// changes to one policy reach the store in the order they took effect.
    pub(crate) fn put_policy(&self, kind: PolicyKind, policy: Policy) -> bool {
        let key = super::policy::store_key(kind, &self.name, policy.name());
        let value = serde_json::to_vec(&policy.record).expect("a policy record serialises");
        let created = {
            let mut policies = self.policies.write();
            self.store.put_access(&key, Some(&value));
            policies.put(kind, policy)
        };
        self.apply_policies();
        created
    }

    /// Removes a policy and undoes its effect; false when there was none.
    pub(crate) fn delete_policy(&self, kind: PolicyKind, name: &str) -> bool {
        {
            let mut policies = self.policies.write();
            if !policies.delete(kind, name) {
                return false;
            }
            self.store
                .put_access(&super::policy::store_key(kind, &self.name, name), None);
        }
        self.apply_policies();
        true
    }

    /// A stored policy, at start-up, before the topology is restored (the
    /// built-in exchanges, already there, take it here).
    pub(crate) fn restore_policy(&self, kind: PolicyKind, record: &PolicyRecord) {
        match Policy::from_record(kind, record) {
            Ok(p) => {
                self.policies.write().put(kind, p);
                self.apply_policies();
            }
            Err(e) => {
                tracing::warn!(policy = record.name, vhost = self.name, error = %e, "stored policy no longer valid; ignored")
            }
        }
    }

    fn apply_policies(&self) {
        for exchange in self.exchanges() {
            self.apply_to_exchange(&exchange);
        }
        for queue in self.queues() {
            self.apply_to_queue(&queue);
        }
    }

    fn apply_to_exchange(&self, exchange: &Arc<Exchange>) {
        let policies = self.policies.read();
        exchange.set_policy(policies.for_exchange(&exchange.name).policy);
    }

    /// Matches and applies under the policies' read lock, so that an
    /// older match never lands after a newer one.
    fn apply_to_queue(&self, queue: &Arc<Queue>) {
        let policies = self.policies.read();
        queue.set_policies(policies.for_queue(&queue.name, queue.args.queue_type));
    }

    fn destination(&self, r: &BindingRecord) -> Option<Destination> {
        if r.to_exchange {
            self.exchange(&r.destination)
                .ok()
                .map(|e| Destination::Exchange(e.name.clone()))
        } else {
            self.queue(&r.destination).ok().map(Destination::Queue)
        }
    }

    /// The stored form of a binding when both ends are durable (RabbitMQ
    /// keeps only those across restarts).
    fn durable_binding(
        &self,
        source: &Exchange,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Option<BindingRecord> {
        if !source.durable || source.name.is_empty() {
            return None;
        }
        let (to_exchange, name) = match destination {
            Destination::Queue(q) => {
                q.store_id?;
                (false, q.name.clone())
            }
            Destination::Exchange(name) => {
                if !self.exchange(name).is_ok_and(|e| e.durable) {
                    return None;
                }
                (true, name.clone())
            }
        };
        Some(BindingRecord {
            vhost: self.name.clone(),
            source: source.name.clone(),
            to_exchange,
            destination: name,
            routing_key: routing_key.to_string(),
            arguments: arguments.clone(),
        })
    }

    pub(crate) fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(AmqpError::access_refused(if name.is_empty() {
                "operation not permitted on the default exchange".to_string()
            } else {
                format!(
                    "operation not permitted on exchange '{name}' in vhost '{}'",
                    self.name
                )
            }));
        }
        let Some(exchange) = self.exchanges.get(name).map(|e| e.clone()) else {
            return Ok(());
        };
        if if_unused && exchange.binding_count() > 0 {
            return Err(AmqpError::precondition_failed(format_args!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange(&exchange);
        Ok(())
    }

    fn remove_exchange(&self, exchange: &Arc<Exchange>) {
        if self
            .exchanges
            .remove_if(&exchange.name, |_, e| Arc::ptr_eq(e, exchange))
            .is_none()
        {
            return;
        }
        if exchange.durable {
            self.store.delete_exchange(&self.name, &exchange.name);
        }
        let as_destination = Destination::Exchange(exchange.name.clone());
        self.unbind_everywhere(&as_destination);
        // Bindings from it to other exchanges go too; a destination that was
        // auto-delete does not care (auto-delete looks at source bindings).
    }

    /// Removes every binding to `destination` and auto-deletes sources left
    /// without bindings.
    fn unbind_everywhere(&self, destination: &Destination) {
        for source in self.exchanges() {
            if source.unbind_destination(destination) > 0 {
                self.maybe_auto_delete(&source);
            }
        }
    }

    fn maybe_auto_delete(&self, exchange: &Arc<Exchange>) {
        if exchange.auto_delete && exchange.binding_count() == 0 {
            self.remove_exchange(exchange);
        }
    }

    /// Declares a queue; returns it and whether it was created.
    /// Sets the vhost's `max-queues` limit (None: no limit).
    pub(crate) fn set_max_queues(&self, max: Option<u32>) {
        let max = max.map_or(u64::MAX, u64::from);
        self.max_queues.store(max, Ordering::Relaxed);
    }

    /// How many queues the vhost has (exclusive ones too, as RabbitMQ
    /// counts them for `max-queues`).
    pub(crate) fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// RabbitMQ's refusal to declare a new queue `name` once the vhost's
    /// `max-queues` is reached.
    pub(crate) fn check_queue_limit(&self, name: &str) -> Result<(), AmqpError> {
        let max = self.max_queues.load(Ordering::Relaxed);
        if max != u64::MAX && self.queue_count() as u64 >= max {
            return Err(AmqpError::precondition_failed(format_args!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({max}) is reached",
                self.name
            )));
        }
        Ok(())
    }

    pub(crate) fn declare_queue(
        &self,
        d: &QueueDeclare<'_>,
    ) -> Result<(Arc<Queue>, bool), AmqpError> {
        // As RabbitMQ: arguments are checked before anything else; a
        // passive declare ignores them.
        let args = if d.passive {
            QueueArgs::default()
        } else {
            QueueArgs::parse(
                d.arguments,
                &Declared {
                    name: d.name,
                    vhost: &self.name,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                },
            )?
        };
        super::counters::bump(&self.services.counters.queues_declared);
        if let Some(existing) = self.queues.get(d.name).map(|q| q.clone()) {
            existing.check_owner(d.connection)?;
            existing.touch();
            if d.passive {
                return Ok((existing, false));
            }
            let what = "queue";
            // RabbitMQ does not compare durability of exclusive queues.
            if existing.durable != d.durable && existing.exclusive_owner.is_none() {
                return Err(inequivalent(
                    "durable",
                    what,
                    d.name,
                    &self.name,
                    d.durable,
                    existing.durable,
                ));
            }
            if existing.auto_delete != d.auto_delete {
                return Err(inequivalent(
                    "auto_delete",
                    what,
                    d.name,
                    &self.name,
                    d.auto_delete,
                    existing.auto_delete,
                ));
            }
            if existing.exclusive_owner.is_some() != d.exclusive {
                return Err(existing.locked_error());
            }
            for arg in EQUIVALENT_QUEUE_ARGS {
                let (mut new, mut old) = (
                    d.arguments.inner().get(*arg),
                    existing.arguments.inner().get(*arg),
                );
                if *arg == "x-queue-type" {
                    // No type means classic, both ways.
                    let classic = |v: Option<&AMQPValue>| show(v) == "classic";
                    if new.is_none() && classic(old) || old.is_none() && classic(new) {
                        (new, old) = (None, None);
                    }
                }
                if show(new) == show(old) {
                    continue;
                }
                return Err(match (new, old) {
                    (Some(_), Some(_)) => {
                        inequivalent(arg, what, d.name, &self.name, show(new), show(old))
                    }
                    // RabbitMQ words a missing side differently.
                    _ => AmqpError::precondition_failed(format_args!(
                        "inequivalent arg '{arg}' for {what} '{}' in vhost '{}': received {} but current is {}",
                        d.name,
                        self.name,
                        described(new),
                        described(old)
                    )),
                });
            }
            return Ok((existing, false));
        }
        if d.passive {
            return Err(AmqpError::not_found(format_args!(
                "no queue '{}' in vhost '{}'",
                d.name, self.name
            )));
        }
        if d.name.starts_with("amq.") && !d.name.starts_with("amq.gen-") {
            return Err(AmqpError::access_refused(format_args!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        if d.arguments.contains_key("x-queue-mode") {
            tracing::warn!(
                queue = d.name,
                "x-queue-mode is accepted and ignored (a RabbitMQ 3.x setting)"
            );
        }
        let applied = self.policies.read().for_queue(d.name, args.queue_type);
        // A new stream's log is made before the queue is: its files may
        // fail to be created, and the queue map's lock is no place for that.
        let mut stream = match &args.stream {
            Some(s) if !self.queues.contains_key(d.name) => {
                let id = self.store.next_queue_id();
                let opened = self.open_stream(d.name, id, s.clone()).map_err(|e| {
                    AmqpError::internal_error(format_args!(
                        "cannot create stream '{}' in vhost '{}': {e}",
                        d.name, self.name
                    ))
                })?;
                Some(opened)
            }
            _ => None,
        };
        let mut created = false;
        let queue = self
            .queues
            .entry(d.name.to_string())
            .or_insert_with(|| {
                created = true;
                let stream = stream.take();
                // Exclusive queues die with their connection: never stored.
                let on_disk = (d.durable && !d.exclusive).then(|| {
                    let record = QueueRecord {
                        vhost: self.name.clone(),
                        name: d.name.to_string(),
                        id: stream
                            .as_ref()
                            .map_or_else(|| self.store.next_queue_id(), |s| s.id),
                        auto_delete: d.auto_delete,
                        arguments: d.arguments.clone(),
                    };
                    self.store.put_queue(&record);
                    OnDisk {
                        store: self.store.clone(),
                        queue_id: record.id,
                        messages: 0,
                        first_seq: 0,
                        first_arrived_ms: 0,
                        next_seq: 0,
                    }
                });
                Queue::new(
                    d.name.to_string(),
                    self.name.clone(),
                    d.durable,
                    d.exclusive.then_some(d.connection),
                    d.auto_delete,
                    d.arguments.clone(),
                    args.clone(),
                    applied,
                    self.services.clone(),
                    on_disk.filter(|_| stream.is_none()),
                    stream,
                )
            })
            .clone();
        if let Some(unused) = stream {
            // Another declare made the queue first.
            unused.delete();
        }
        if created {
            // A policy set while it was being made.
            self.apply_to_queue(&queue);
            super::counters::bump(&self.services.counters.queues_created);
        }
        Ok((queue, created))
    }

    /// Deletes a queue: its bindings go, its consumers are cancelled, its
    /// messages dropped. Returns the number of ready messages it held.
    pub(crate) fn delete_queue(&self, queue: &Arc<Queue>) -> usize {
        if self
            .queues
            .remove_if(&queue.name, |_, q| Arc::ptr_eq(q, queue))
            .is_none()
        {
            return 0;
        }
        super::counters::bump(&self.services.counters.queues_deleted);
        self.unbind_everywhere(&Destination::Queue(queue.clone()));
        let (consumers, count) = queue.mark_deleted();
        if let Some(id) = queue.store_id.or(queue.stream().map(|s| s.id)) {
            self.store.delete_queue(&self.name, &queue.name, id);
        }
        for consumer in consumers {
            consumer.channel.cancel_by_broker(&consumer);
        }
        count
    }

    /// Removes every queue (with its messages) and exchange: the vhost is
    /// being deleted.
    pub(crate) fn delete_everything(&self) {
        let mut policies = self.policies.write();
        for kind in [PolicyKind::Policy, PolicyKind::Operator] {
            for p in policies.list(kind) {
                self.store
                    .put_access(&super::policy::store_key(kind, &self.name, p.name()), None);
            }
        }
        *policies = PolicySet::default();
        drop(policies);
        for queue in self.queues() {
            self.delete_queue(&queue);
        }
        for exchange in self.exchanges() {
            self.remove_exchange(&exchange);
        }
    }

    pub(crate) fn bind(&self, source: &Arc<Exchange>, binding: Binding) {
        let record = self.durable_binding(
            source,
            &binding.destination,
            &binding.routing_key,
            &binding.arguments,
        );
        if source.bind(binding) {
            if let Some(r) = record {
                self.store.put_binding(&r);
            }
        }
    }

    pub(crate) fn unbind(
        &self,
        source: &Arc<Exchange>,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) {
        if source.unbind(destination, routing_key, arguments) {
            if let Some(r) = self.durable_binding(source, destination, routing_key, arguments) {
                self.store.delete_binding(&r);
            }
            self.maybe_auto_delete(source);
        }
    }

    /// Puts a routed message in its queues, its body written once to disk
    /// when it is persistent and some are durable, and appends it to the
    /// streams among them. Returns (stored on disk, refused by a queue,
    /// the streams' appends).
    pub(crate) fn enqueue(
        &self,
        queues: &[Arc<Queue>],
        message: &Arc<Message>,
    ) -> (bool, bool, Option<Arc<Appends>>) {
        let mut stored = false;
        if message.persistent {
            let durable = queues.iter().filter(|q| q.store_id.is_some()).count() as u32;
            if durable > 0 {
                self.store.store_message(message, durable);
                stored = true;
            }
        }
        let mut refused = false;
        let mut appends = None;
        for queue in queues {
            if let Some(stream) = queue.stream() {
                stream.publish(message, appends.get_or_insert_with(Appends::new));
                queue.stats.published.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            refused |= !queue.publish(message.clone());
        }
        if let Some(a) = &appends {
            a.routed();
        }
        (stored, refused, appends)
    }

    /// Adds to `routing.queues` the queues a message published to
    /// `exchange` reaches, following exchange-to-exchange bindings and
    /// alternate exchanges, each queue once.
    pub(crate) fn route(
        &self,
        exchange: &Arc<Exchange>,
        msg: &RoutingInfo<'_>,
        routing: &mut Routing,
    ) {
        if exchange.name.is_empty() {
            if let Some(q) = self.queues.get(msg.routing_key) {
                routing.add(q.clone());
            }
            return;
        }
        let mut reached = self.route_into(exchange, msg, routing);
        let mut current = exchange.clone();
        while !reached {
            let Some(ae_name) = current.alternate_exchange() else {
                break;
            };
            if routing.visited.iter().any(|e| *e.name == *ae_name) {
                break;
            }
            let Ok(ae) = self.exchange(&ae_name) else {
                break;
            };
            reached = self.route_into(&ae, msg, routing);
            current = ae;
        }
        // Empty for the next message, and no exchange kept alive meanwhile.
        routing.visited.clear();
    }

    /// Whether any queue was reached (perhaps one already in `routing`).
    fn route_into(
        &self,
        exchange: &Arc<Exchange>,
        msg: &RoutingInfo<'_>,
        routing: &mut Routing,
    ) -> bool {
        if routing.visited.iter().any(|e| Arc::ptr_eq(e, exchange)) {
            return false;
        }
        routing.visited.push(exchange.clone());
        // One stack of destinations shared by the recursion: each level
        // takes back exactly what it pushed.
        let start = routing.destinations.len();
        exchange.route(msg, &mut routing.destinations);
        let mut reached = false;
        while routing.destinations.len() > start {
            match routing.destinations.pop().expect("length checked") {
                Destination::Queue(q) => {
                    reached = true;
                    routing.add(q);
                }
                Destination::Exchange(name) => {
                    if let Ok(next) = self.exchange(&name) {
                        reached |= self.route_into(&next, msg, routing);
                    }
                }
            }
        }
        reached
    }
}

/// Where a message goes, with the buffers routing needs, kept between
/// messages (a channel holds one) so that routing allocates nothing once
/// they have grown.
#[derive(Default)]
pub(crate) struct Routing {
    pub(crate) queues: Vec<Arc<Queue>>,
    visited: Vec<Arc<Exchange>>,
    destinations: Vec<Destination>,
}

impl Routing {
    fn add(&mut self, queue: Arc<Queue>) {
        if !self.queues.iter().any(|q| Arc::ptr_eq(q, &queue)) {
            self.queues.push(queue);
        }
    }

    /// Forgets the last message's queues, keeping the buffers.
    pub(crate) fn clear(&mut self) {
        self.queues.clear();
    }
}

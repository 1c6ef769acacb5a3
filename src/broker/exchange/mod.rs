//! Exchanges and their bindings.

pub mod headers;
pub mod topic;

use super::queue::Queue;
use crate::hash::HashMap;
use amq_protocol::types::FieldTable;
use headers::HeadersMatcher;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use topic::TopicPattern;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(kind: &str) -> Option<ExchangeKind> {
        Some(match kind {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding sends matching messages.
#[derive(Clone)]
pub enum Destination {
    Queue(Arc<Queue>),
    Exchange(String),
}

impl Destination {
    pub fn same(&self, other: &Destination) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Clone)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
}

pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// `alternate-exchange` argument: where unroutable messages go.
    pub alternate_exchange: Option<String>,
    pub deleted: AtomicBool,
    bindings: RwLock<Bindings>,
}

/// Bindings plus the indexes routing uses, rebuilt on every change
/// (bindings change rarely; messages are routed constantly).
#[derive(Default)]
struct Bindings {
    all: Vec<Binding>,
    by_key: HashMap<String, Vec<usize>>,
    topics: Vec<TopicPattern>,
    headers: Vec<Option<HeadersMatcher>>,
}

impl Bindings {
    fn reindex(&mut self, kind: ExchangeKind) {
        self.by_key.clear();
        self.topics.clear();
        self.headers.clear();
        match kind {
            ExchangeKind::Direct => {
                for (i, b) in self.all.iter().enumerate() {
                    self.by_key
                        .entry(b.routing_key.clone())
                        .or_default()
                        .push(i);
                }
            }
            ExchangeKind::Topic => {
                self.topics = self
                    .all
                    .iter()
                    .map(|b| TopicPattern::parse(&b.routing_key))
                    .collect();
            }
            ExchangeKind::Headers => {
                self.headers = self
                    .all
                    .iter()
                    .map(|b| HeadersMatcher::new(&b.arguments).ok())
                    .collect();
            }
            ExchangeKind::Fanout => {}
        }
    }
}

/// What routing needs to know about a message.
pub struct RoutingInfo<'a> {
    pub routing_key: &'a str,
    /// Parsed lazily: only headers exchanges need it.
    pub headers: &'a dyn Fn() -> Option<FieldTable>,
}

impl Exchange {
    pub fn new(
        name: String,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Exchange {
        let alternate_exchange =
            arguments
                .inner()
                .get("alternate-exchange")
                .and_then(|v| match v {
                    amq_protocol::types::AMQPValue::LongString(s) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    amq_protocol::types::AMQPValue::ShortString(s) => Some(s.to_string()),
                    _ => None,
                });
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            alternate_exchange,
            deleted: AtomicBool::new(false),
            bindings: RwLock::new(Bindings::default()),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Adds a binding; returns false when an identical one exists.
    pub fn bind(&self, binding: Binding) -> bool {
        let mut b = self.bindings.write();
        if b.all.iter().any(|x| {
            x.destination.same(&binding.destination)
                && x.routing_key == binding.routing_key
                && x.arguments == binding.arguments
        }) {
            return false;
        }
        b.all.push(binding);
        b.reindex(self.kind);
        true
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(
        &self,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        let mut b = self.bindings.write();
        let before = b.all.len();
        b.all.retain(|x| {
            !(x.destination.same(destination)
                && x.routing_key == routing_key
                && &x.arguments == arguments)
        });
        let removed = b.all.len() != before;
        if removed {
            b.reindex(self.kind);
        }
        removed
    }

    pub fn has_binding(
        &self,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        self.bindings.read().all.iter().any(|x| {
            x.destination.same(destination)
                && x.routing_key == routing_key
                && &x.arguments == arguments
        })
    }

    /// Removes every binding to `destination`; returns how many went.
    pub fn unbind_destination(&self, destination: &Destination) -> usize {
        let mut b = self.bindings.write();
        let before = b.all.len();
        b.all.retain(|x| !x.destination.same(destination));
        let removed = before - b.all.len();
        if removed > 0 {
            b.reindex(self.kind);
        }
        removed
    }

    pub fn binding_count(&self) -> usize {
        self.bindings.read().all.len()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().all.clone()
    }

    /// Appends the destinations matching `msg` to `out`.
    pub fn route(&self, msg: &RoutingInfo<'_>, out: &mut Vec<Destination>) {
        let b = self.bindings.read();
        match self.kind {
            ExchangeKind::Fanout => out.extend(b.all.iter().map(|x| x.destination.clone())),
            ExchangeKind::Direct => {
                if let Some(ids) = b.by_key.get(msg.routing_key) {
                    out.extend(ids.iter().map(|&i| b.all[i].destination.clone()));
                }
            }
            ExchangeKind::Topic => {
                for (binding, pattern) in b.all.iter().zip(&b.topics) {
                    if pattern.matches(msg.routing_key) {
                        out.push(binding.destination.clone());
                    }
                }
            }
            ExchangeKind::Headers => {
                if b.all.is_empty() {
                    return;
                }
                let headers = (msg.headers)();
                for (binding, matcher) in b.all.iter().zip(&b.headers) {
                    if matcher
                        .as_ref()
                        .is_some_and(|m| m.matches(headers.as_ref()))
                    {
                        out.push(binding.destination.clone());
                    }
                }
            }
        }
    }
}

//! Exchanges and their bindings.

pub(crate) mod headers;
pub(crate) mod stats;
pub(crate) mod topic;

use super::policy::Policy;
use super::queue::Queue;
use crate::hash::HashMap;
use amq_protocol::types::FieldTable;
use headers::HeadersMatcher;
use parking_lot::RwLock;
use stats::ExchangeStats;
use std::collections::BTreeMap;
use std::sync::Arc;
use topic::TopicTrie;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub(crate) fn parse(kind: &str) -> Option<ExchangeKind> {
        Some(match kind {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) enum Destination {
    Queue(Arc<Queue>),
    Exchange(String),
}

impl Destination {
    pub(crate) fn same(&self, other: &Destination) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Binding {
    pub(crate) destination: Destination,
    pub(crate) routing_key: String,
    pub(crate) arguments: FieldTable,
}

pub(crate) struct Exchange {
    pub(crate) name: String,
    pub(crate) kind: ExchangeKind,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
    pub(crate) internal: bool,
    pub(crate) arguments: FieldTable,
    /// `alternate-exchange` argument: where unroutable messages go.
    alternate_exchange: Option<Arc<str>>,
    /// The policy that applies; its `alternate-exchange` serves when the
    /// argument is absent (the argument wins, as RabbitMQ's `get_arg`).
    /// Read only for unroutable messages.
    policy: RwLock<Option<Arc<Policy>>>,
    policy_alternate: RwLock<Option<Arc<str>>>,
    bindings: RwLock<Bindings>,
    pub(crate) stats: ExchangeStats,
}

/// Bindings plus the indexes routing uses, each kept up to date on bind
/// and unbind: no change costs more than the binding it touches (bindings
/// change rarely; messages are routed constantly).
#[derive(Default)]
struct Bindings {
    /// Dense, for fanout routing and listings; a removal moves the last
    /// binding into the gap.
    all: Vec<Binding>,
    /// Where each binding sits in `all`, by identity; ordered by
    /// destination first, so a destination's bindings are one range.
    positions: BTreeMap<BindingId, usize>,
    by_key: HashMap<String, Vec<Destination>>,
    topics: TopicTrie<Destination>,
    /// Parallel to `all` (headers exchanges only).
    headers: Vec<Option<HeadersMatcher>>,
}

/// A binding's identity: destination, routing key and arguments.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct BindingId {
    destination: DestinationId,
    routing_key: String,
    /// The arguments encoded, which is how they compare.
    arguments: Vec<u8>,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum DestinationId {
    /// By address: a binding holds its queue, so the address is not reused
    /// while the binding exists.
    Queue(usize),
    Exchange(String),
}

impl DestinationId {
    fn of(destination: &Destination) -> DestinationId {
        match destination {
            Destination::Queue(q) => DestinationId::Queue(Arc::as_ptr(q) as usize),
            Destination::Exchange(name) => DestinationId::Exchange(name.clone()),
        }
    }
}

impl BindingId {
    fn new(destination: &Destination, routing_key: &str, arguments: &FieldTable) -> BindingId {
        BindingId {
            destination: DestinationId::of(destination),
            routing_key: routing_key.to_string(),
            arguments: cookie_factory::gen_simple(
                amq_protocol::types::generation::gen_field_table(arguments),
                Vec::new(),
            )
            .expect("encoding into a Vec cannot fail"),
        }
    }

    fn of(b: &Binding) -> BindingId {
        BindingId::new(&b.destination, &b.routing_key, &b.arguments)
    }
}

impl Bindings {
    /// Adds `binding` unless an identical one exists; whether it was added.
    fn add(&mut self, kind: ExchangeKind, binding: Binding) -> bool {
        let id = BindingId::of(&binding);
        if self.positions.contains_key(&id) {
            return false;
        }
        self.positions.insert(id, self.all.len());
        match kind {
            ExchangeKind::Direct => self
                .by_key
                .entry(binding.routing_key.clone())
                .or_default()
                .push(binding.destination.clone()),
            ExchangeKind::Topic => self
                .topics
                .insert(&binding.routing_key, binding.destination.clone()),
            ExchangeKind::Headers => self
                .headers
                .push(HeadersMatcher::new(&binding.arguments).ok()),
            ExchangeKind::Fanout => {}
        }
        self.all.push(binding);
        true
    }

    /// Removes the binding `id`; whether it existed.
    fn remove(&mut self, kind: ExchangeKind, id: &BindingId) -> bool {
        let Some(at) = self.positions.remove(id) else {
            return false;
        };
        let binding = self.all.swap_remove(at);
        if kind == ExchangeKind::Headers {
            self.headers.swap_remove(at);
        }
        if let Some(moved) = self.all.get(at) {
            if let Some(p) = self.positions.get_mut(&BindingId::of(moved)) {
                *p = at;
            }
        }
        let same = |d: &Destination| d.same(&binding.destination);
        match kind {
            ExchangeKind::Direct => {
                if let Some(destinations) = self.by_key.get_mut(&binding.routing_key) {
                    if let Some(i) = destinations.iter().position(same) {
                        destinations.swap_remove(i);
                    }
                    if destinations.is_empty() {
                        self.by_key.remove(&binding.routing_key);
                    }
                }
            }
            ExchangeKind::Topic => {
                self.topics.remove(&binding.routing_key, same);
            }
            ExchangeKind::Headers | ExchangeKind::Fanout => {}
        }
        true
    }

    /// The identities of every binding to `destination`.
    fn to_destination(&self, destination: &Destination) -> Vec<BindingId> {
        let destination = DestinationId::of(destination);
        let from = BindingId {
            destination: destination.clone(),
            routing_key: String::new(),
            arguments: Vec::new(),
        };
        self.positions
            .range(from..)
            .map(|(id, _)| id)
            .take_while(|id| id.destination == destination)
            .cloned()
            .collect()
    }
}

/// What routing needs to know about a message.
pub(crate) struct RoutingInfo<'a> {
    pub(crate) routing_key: &'a str,
    /// Parsed lazily: only headers exchanges need it.
    pub(crate) headers: &'a dyn Fn() -> Option<FieldTable>,
}

impl Exchange {
    pub(crate) fn new(
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
                        Some(Arc::from(String::from_utf8_lossy(s.as_bytes())))
                    }
                    amq_protocol::types::AMQPValue::ShortString(s) => Some(Arc::from(s.as_str())),
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
            policy: RwLock::new(None),
            policy_alternate: RwLock::new(None),
            bindings: RwLock::new(Bindings::default()),
            stats: ExchangeStats::default(),
        }
    }

    /// Where messages nothing else takes go: the `alternate-exchange`
    /// argument, else the policy's.
    pub(crate) fn alternate_exchange(&self) -> Option<Arc<str>> {
        match &self.alternate_exchange {
            Some(name) => Some(name.clone()),
            None => self.policy_alternate.read().clone(),
        }
    }

    pub(crate) fn policy(&self) -> Option<Arc<Policy>> {
        self.policy.read().clone()
    }

    pub(crate) fn set_policy(&self, policy: Option<Arc<Policy>>) {
        *self.policy_alternate.write() = policy
            .as_ref()
            .and_then(|p| p.settings.alternate_exchange.as_deref())
            .map(Arc::from);
        *self.policy.write() = policy;
    }

    /// Adds a binding; returns false when an identical one exists.
    pub(crate) fn bind(&self, binding: Binding) -> bool {
        self.bindings.write().add(self.kind, binding)
    }

    /// Removes a binding; returns whether it existed.
    pub(crate) fn unbind(
        &self,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        let id = BindingId::new(destination, routing_key, arguments);
        self.bindings.write().remove(self.kind, &id)
    }

    pub(crate) fn has_binding(
        &self,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        let id = BindingId::new(destination, routing_key, arguments);
        self.bindings.read().positions.contains_key(&id)
    }

    /// Removes every binding to `destination`; returns how many went.
    pub(crate) fn unbind_destination(&self, destination: &Destination) -> usize {
        let mut b = self.bindings.write();
        let ids = b.to_destination(destination);
        for id in &ids {
            b.remove(self.kind, id);
        }
        ids.len()
    }

    pub(crate) fn binding_count(&self) -> usize {
        self.bindings.read().all.len()
    }

    pub(crate) fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().all.clone()
    }

    /// Appends the destinations matching `msg` to `out`.
    pub(crate) fn route(&self, msg: &RoutingInfo<'_>, out: &mut Vec<Destination>) {
        let b = self.bindings.read();
        match self.kind {
            ExchangeKind::Fanout => out.extend(b.all.iter().map(|x| x.destination.clone())),
            ExchangeKind::Direct => {
                if let Some(destinations) = b.by_key.get(msg.routing_key) {
                    out.extend(destinations.iter().cloned());
                }
            }
            ExchangeKind::Topic => b.topics.matches(msg.routing_key, |d| out.push(d.clone())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Bind(u8, u8, bool),
        Unbind(u8, u8, bool),
        UnbindDestination(u8),
    }

    fn destination(d: u8) -> Destination {
        Destination::Exchange(format!("d{d}"))
    }

    const KEYS: [&str; 5] = ["a", "a.b", "*.b", "#", "a.#"];

    fn arguments(with: bool) -> FieldTable {
        let mut t = FieldTable::default();
        if with {
            t.insert("x".into(), amq_protocol::types::AMQPValue::LongInt(1));
        }
        t
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..4, 0u8..5, any::<bool>()).prop_map(|(d, k, a)| Op::Bind(d, k, a)),
            2 => (0u8..4, 0u8..5, any::<bool>()).prop_map(|(d, k, a)| Op::Unbind(d, k, a)),
            1 => (0u8..4).prop_map(Op::UnbindDestination),
        ]
    }

    fn routed(e: &Exchange, key: &str) -> Vec<String> {
        let no_headers = || None;
        let mut out = Vec::new();
        e.route(
            &RoutingInfo {
                routing_key: key,
                headers: &no_headers,
            },
            &mut out,
        );
        let mut names: Vec<String> = out
            .into_iter()
            .map(|d| match d {
                Destination::Exchange(n) => n,
                Destination::Queue(_) => unreachable!(),
            })
            .collect();
        names.sort();
        names
    }

    proptest! {
        /// Binds and unbinds in any order leave the bindings, and what
        /// routing finds, as a plain list of bindings says.
        #[test]
        fn indexes_follow_binds_and_unbinds(
            kind in prop_oneof![
                Just(ExchangeKind::Direct),
                Just(ExchangeKind::Topic),
                Just(ExchangeKind::Fanout),
                Just(ExchangeKind::Headers),
            ],
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let e = Exchange::new("e".into(), kind, false, false, false, FieldTable::default());
            let mut model: Vec<(u8, u8, bool)> = Vec::new();
            for op in ops {
                match op {
                    Op::Bind(d, k, a) => {
                        let added = e.bind(Binding {
                            destination: destination(d),
                            routing_key: KEYS[k as usize].into(),
                            arguments: arguments(a),
                        });
                        prop_assert_eq!(added, !model.contains(&(d, k, a)));
                        if added {
                            model.push((d, k, a));
                        }
                    }
                    Op::Unbind(d, k, a) => {
                        let removed = e.unbind(&destination(d), KEYS[k as usize], &arguments(a));
                        prop_assert_eq!(removed, model.contains(&(d, k, a)));
                        model.retain(|&b| b != (d, k, a));
                    }
                    Op::UnbindDestination(d) => {
                        let before = model.len();
                        model.retain(|&(x, _, _)| x != d);
                        prop_assert_eq!(e.unbind_destination(&destination(d)), before - model.len());
                    }
                }
                for &(d, k, a) in &model {
                    prop_assert!(e.has_binding(&destination(d), KEYS[k as usize], &arguments(a)));
                }
                prop_assert_eq!(e.binding_count(), model.len());
                for key in ["a", "a.b", "x.b", "", "a.b.c"] {
                    let mut expected: Vec<String> = model
                        .iter()
                        .filter(|&&(_, k, a)| match kind {
                            ExchangeKind::Direct => KEYS[k as usize] == key,
                            ExchangeKind::Fanout => true,
                            // No headers: only a binding without arguments matches.
                            ExchangeKind::Headers => !a,
                            ExchangeKind::Topic => {
                                let mut trie = TopicTrie::default();
                                trie.insert(KEYS[k as usize], ());
                                let mut hit = false;
                                trie.matches(key, |_| hit = true);
                                hit
                            }
                        })
                        .map(|&(d, _, _)| format!("d{d}"))
                        .collect();
                    expected.sort();
                    prop_assert_eq!(routed(&e, key), expected, "key {:?}", key);
                }
            }
        }
    }
}
